//! The store conformance suite: one set of tests every backend must pass.
//!
//! A backend crate implements [`Backend`] and calls [`store_test_suite!`](crate::store_test_suite)
//! once; the macro expands into one `#[tokio::test]` per check below.

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use magpie_proto::frame::Direction;
use magpie_proto::group::{
    ApplicationKind, ApplicationState, GroupApplication, GroupId, GroupMember, GroupOptions,
    GroupRole, JoinPolicy,
};
use magpie_proto::message::{Mentions, Peer};
use magpie_proto::rest::UpdateUser;
use magpie_proto::{ConversationId, Message, MessageContent, MessageId, UserId};
use serde_json::{Map, json};

use crate::groups::{
    ApplicationFilter, GroupInfoUpdate, GroupRecord, GroupStore, GroupWrite, MemberUpdate,
    NewApplication, NewGroup,
};
use crate::{Anchor, MAX_NODE_ID, MessageQuery, NewMessage, NewUser, Store, StoreErrorKind};

/// A way to get fresh stores of one backend.
#[allow(async_fn_in_trait)]
pub trait Backend: Sized {
    /// The store type.
    type Store: Store;
    /// Prepares an empty backend, or `None` to skip (the reason is printed by the backend).
    async fn new() -> Option<Self>;
    /// Opens a store on the backend; opening again after `close` sees the same data.
    async fn open(&self) -> Self::Store;
}

/// Expands into the whole suite for one [`Backend`].
#[macro_export]
macro_rules! store_test_suite {
    ($backend:ty) => {
        $crate::store_test_suite!(@tests $backend;
            users_can_be_created_read_updated_and_deleted,
            revoking_tokens_bumps_the_generation,
            appends_get_gap_free_seqs_per_conversation,
            retries_return_the_original_message,
            concurrent_appends_to_one_conversation_are_gap_free,
            own_messages_never_count_as_unread,
            history_pages_by_seq_and_time_in_both_directions,
            sync_pages_through_changed_conversations,
            mark_read_only_moves_forward_and_clamps,
            acked_writes_survive_a_reopen,
            deleting_a_user_keeps_the_peers_history,
            a_closed_store_refuses_work,
            appends_to_missing_users_fail_without_using_a_seq,
            commit_hooks_see_each_durable_append_once,
            a_recreated_user_starts_fresh_but_keeps_its_counters,
            server_times_never_decrease_along_seqs,
            appends_take_seqs_in_call_order_not_poll_order,
            a_read_right_behind_appends_sees_them,
            node_ids_are_distinct_per_holder,
            only_the_holder_renews_a_node_id,
            an_expired_node_lease_goes_to_the_next_claimer,
            a_released_node_id_is_reused,
            claims_fail_once_every_node_id_is_leased,
            groups_are_created_and_updated_under_versions,
            adding_members_stops_at_max_members,
            blocked_users_cannot_join_until_the_block_expires,
            the_owner_cannot_be_removed_blocked_or_demoted,
            roles_ownership_and_member_updates,
            members_page_by_user_id_and_role,
            joined_groups_and_the_directory_page_by_id,
            group_attributes_compare_and_set_and_counters,
            applications_are_deduped_handled_once_and_listed,
            destroying_a_group_removes_everything_and_frees_its_id,
            member_count_stays_exact_under_concurrent_adds,
            group_writes_do_not_disturb_batched_appends,
            group_messages_are_stored_once_and_found_through_the_activity_clock,
            new_members_start_at_their_join_point,
            mentions_mark_the_mentioned_until_they_read,
            former_members_lose_the_group_conversation,
        );
    };
    (@tests $backend:ty; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(backend) = <$backend as $crate::testsuite::Backend>::new().await else {
                    return;
                };
                $crate::testsuite::$name(&backend).await;
            }
        )*
    };
}

pub(crate) fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1_000);

pub(crate) fn new_message(
    from: &str,
    to: &str,
    client_msg_id: &str,
    text: &str,
    time: i64,
) -> NewMessage {
    let (from, to) = (uid(from), uid(to));
    NewMessage {
        message: Message {
            id: MessageId(NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            conversation_id: ConversationId::c2c(&from, &to),
            seq: 0,
            from: from.clone(),
            to: Peer::User(to.clone()),
            client_msg_id: client_msg_id.to_owned(),
            content: MessageContent::text(text),
            ext: None,
            mentions: None,
            server_time: time,
        },
        participants: vec![from, to],
        mentioned: Vec::new(),
    }
}

/// A group message from `from`; `mentioned` by id, or everyone with `all`.
fn group_message(
    from: &str,
    group: &str,
    client_msg_id: &str,
    mentioned: &[&str],
    all: bool,
) -> NewMessage {
    let from = uid(from);
    let mentioned: Vec<UserId> = mentioned.iter().map(|u| uid(u)).collect();
    let mut participants = vec![from.clone()];
    participants.extend(mentioned.iter().cloned());
    let mentions = Mentions {
        user_ids: mentioned.clone(),
        all,
    };
    NewMessage {
        message: Message {
            id: MessageId(NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            conversation_id: ConversationId::group(&gid(group)),
            seq: 0,
            from,
            to: Peer::Group(gid(group)),
            client_msg_id: client_msg_id.to_owned(),
            content: MessageContent::text("hi all"),
            ext: None,
            mentions: (!mentions.is_empty()).then_some(mentions),
            server_time: 100,
        },
        participants,
        mentioned,
    }
}

pub(crate) async fn create_users<S: Store>(store: &S, ids: &[&str]) {
    for id in ids {
        store
            .create_user(NewUser {
                id: uid(id),
                nickname: None,
                avatar_url: None,
                ext: None,
                now: 1,
            })
            .await
            .unwrap();
    }
}

fn c2c(a: &str, b: &str) -> ConversationId {
    ConversationId::c2c(&uid(a), &uid(b))
}

/// The first `limit` messages between `a` and `b`, oldest first.
#[cfg(test)]
pub(crate) async fn first_messages<S: Store>(
    store: &S,
    a: &str,
    b: &str,
    limit: u32,
) -> crate::MessagePage {
    store
        .get_messages(MessageQuery {
            conversation_id: c2c(a, b),
            direction: Direction::Forward,
            anchor: Anchor::None,
            limit,
            min_seq: 1,
        })
        .await
        .unwrap()
}

pub async fn users_can_be_created_read_updated_and_deleted<B: Backend>(b: &B) {
    let store = b.open().await;
    let created = store
        .create_user(NewUser {
            id: uid("alice"),
            nickname: Some("Alice".into()),
            avatar_url: Some("https://a/x.png".into()),
            ext: Some(json!({"team": 1}).as_object().unwrap().clone()),
            now: 10,
        })
        .await
        .unwrap();
    assert_eq!(created.nickname.as_deref(), Some("Alice"));
    let again = store
        .create_user(NewUser {
            id: uid("alice"),
            nickname: None,
            avatar_url: None,
            ext: None,
            now: 11,
        })
        .await
        .unwrap_err();
    assert_eq!(again.kind(), StoreErrorKind::Conflict);
    let record = store.get_user(&uid("alice")).await.unwrap().unwrap();
    assert_eq!(
        record.user, created,
        "a failed create must not alter the stored user"
    );
    assert_eq!(record.token_generation, 0);

    let updated = store
        .update_user(
            &uid("alice"),
            UpdateUser {
                nickname: Some(Some("Al".into())),
                avatar_url: Some(None),
                ext: None,
            },
            20,
        )
        .await
        .unwrap();
    assert_eq!(updated.nickname.as_deref(), Some("Al"));
    assert_eq!(updated.avatar_url, None);
    assert_eq!(updated.ext, created.ext, "absent fields stay");
    assert_eq!((updated.created_at, updated.updated_at), (10, 20));
    assert_eq!(
        store.get_user(&uid("alice")).await.unwrap().unwrap().user,
        updated
    );

    let missing = store
        .update_user(&uid("nobody"), UpdateUser::default(), 1)
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), StoreErrorKind::UserNotFound);
    assert!(store.delete_user(&uid("alice")).await.unwrap());
    assert!(!store.delete_user(&uid("alice")).await.unwrap());
    assert!(store.get_user(&uid("alice")).await.unwrap().is_none());
}

pub async fn revoking_tokens_bumps_the_generation<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice"]).await;
    assert_eq!(store.revoke_tokens(&uid("alice")).await.unwrap(), 1);
    assert_eq!(store.revoke_tokens(&uid("alice")).await.unwrap(), 2);
    assert_eq!(
        store
            .get_user(&uid("alice"))
            .await
            .unwrap()
            .unwrap()
            .token_generation,
        2
    );
    let err = store.revoke_tokens(&uid("nobody")).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::UserNotFound);
}

pub async fn appends_get_gap_free_seqs_per_conversation<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob", "carol"]).await;
    for (i, (from, to)) in [("alice", "bob"), ("bob", "alice"), ("alice", "bob")]
        .iter()
        .enumerate()
    {
        let appended = store
            .append_message(new_message(from, to, &format!("ab-{i}"), "hi", 100), None)
            .await
            .unwrap();
        assert_eq!(appended.message.seq, i as u64 + 1);
        assert!(!appended.duplicate);
    }
    let first = store
        .append_message(new_message("alice", "carol", "ac-0", "hi", 100), None)
        .await
        .unwrap();
    assert_eq!(first.message.seq, 1, "each conversation has its own seq");
    assert_eq!(store.max_message_id().await.unwrap(), first.message.id.0);
}

pub async fn retries_return_the_original_message<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob", "carol"]).await;
    let original = store
        .append_message(new_message("alice", "bob", "same", "first", 100), None)
        .await
        .unwrap();
    let retry = store
        .append_message(new_message("alice", "bob", "same", "second", 200), None)
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        retry.message, original.message,
        "the retry gets the original, content included"
    );
    let other_sender = store
        .append_message(new_message("bob", "alice", "same", "bob's", 300), None)
        .await
        .unwrap();
    assert!(!other_sender.duplicate, "dedupe is per sender");
    let other_conversation = store
        .append_message(new_message("alice", "carol", "same", "to carol", 400), None)
        .await
        .unwrap();
    assert!(!other_conversation.duplicate, "dedupe is per conversation");
    assert_eq!(other_sender.message.seq, 2, "the retry consumed no seq");
    let page = store
        .get_messages(MessageQuery {
            conversation_id: c2c("alice", "bob"),
            direction: Direction::Forward,
            anchor: Anchor::None,
            limit: 10,
            min_seq: 1,
        })
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 2);
}

pub async fn concurrent_appends_to_one_conversation_are_gap_free<B: Backend>(b: &B) {
    let store = Arc::new(b.open().await);
    create_users(store.as_ref(), &["alice", "bob"]).await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            let (from, to) = if i % 2 == 0 {
                ("alice", "bob")
            } else {
                ("bob", "alice")
            };
            tokio::spawn(async move {
                store
                    .append_message(new_message(from, to, &format!("c-{i}"), "x", 100), None)
                    .await
                    .unwrap()
                    .message
                    .seq
            })
        })
        .collect();
    let mut seqs = BTreeSet::new();
    for task in tasks {
        assert!(
            seqs.insert(task.await.unwrap()),
            "a seq was handed out twice"
        );
    }
    assert_eq!(seqs, (1..=200).collect::<BTreeSet<u64>>());
}

pub async fn own_messages_never_count_as_unread<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob"]).await;
    store
        .append_message(new_message("alice", "bob", "1", "a", 1), None)
        .await
        .unwrap();
    store
        .append_message(new_message("alice", "bob", "2", "b", 2), None)
        .await
        .unwrap();
    let conv = c2c("alice", "bob");
    let alice = store
        .conversation_state(&uid("alice"), &conv)
        .await
        .unwrap()
        .unwrap();
    let bob = store
        .conversation_state(&uid("bob"), &conv)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (alice.last_seq, alice.read_seq, alice.unread_count),
        (2, 2, 0)
    );
    assert_eq!((bob.last_seq, bob.read_seq, bob.unread_count), (2, 0, 2));
    assert_eq!(bob.peer, Some(uid("alice")));
    assert_eq!(bob.last_message.as_ref().map(|m| m.seq), Some(2));
    store
        .append_message(new_message("bob", "alice", "3", "c", 3), None)
        .await
        .unwrap();
    let bob = store
        .conversation_state(&uid("bob"), &conv)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (bob.read_seq, bob.unread_count),
        (3, 0),
        "replying reads the conversation"
    );
    let alice = store
        .conversation_state(&uid("alice"), &conv)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alice.unread_count, 1);
    assert!(
        store
            .conversation_state(&uid("carol"), &conv)
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn history_pages_by_seq_and_time_in_both_directions<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob"]).await;
    for i in 1..=10 {
        store
            .append_message(
                new_message("alice", "bob", &format!("h{i}"), &format!("m{i}"), i * 1000),
                None,
            )
            .await
            .unwrap();
    }
    let conv = c2c("alice", "bob");
    let page = |direction, anchor, limit| {
        let store = &store;
        let conv = conv.clone();
        async move {
            let page = store
                .get_messages(MessageQuery {
                    conversation_id: conv,
                    direction,
                    anchor,
                    limit,
                    min_seq: 1,
                })
                .await
                .unwrap();
            (
                page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
                page.has_more,
            )
        }
    };
    assert_eq!(
        page(Direction::Backward, Anchor::None, 3).await,
        (vec![8, 9, 10], true)
    );
    assert_eq!(
        page(Direction::Backward, Anchor::Seq(4), 3).await,
        (vec![1, 2, 3], false)
    );
    assert_eq!(
        page(Direction::Backward, Anchor::Seq(5), 3).await,
        (vec![2, 3, 4], true)
    );
    assert_eq!(
        page(Direction::Forward, Anchor::None, 4).await,
        (vec![1, 2, 3, 4], true)
    );
    assert_eq!(
        page(Direction::Forward, Anchor::Seq(7), 5).await,
        (vec![8, 9, 10], false)
    );
    assert_eq!(
        page(Direction::Forward, Anchor::Seq(10), 5).await,
        (vec![], false)
    );
    assert_eq!(
        page(Direction::Forward, Anchor::Time(5000), 2).await,
        (vec![5, 6], true)
    );
    assert_eq!(
        page(Direction::Backward, Anchor::Time(5000), 2).await,
        (vec![3, 4], true)
    );
    let other = store
        .get_messages(MessageQuery {
            conversation_id: c2c("alice", "carol"),
            direction: Direction::Backward,
            anchor: Anchor::None,
            limit: 5,
            min_seq: 1,
        })
        .await
        .unwrap();
    assert!(other.messages.is_empty() && !other.has_more);
}

pub async fn sync_pages_through_changed_conversations<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob", "carol", "dave"]).await;
    for peer in ["bob", "carol", "dave"] {
        store
            .append_message(
                new_message(peer, "alice", &format!("to-alice-{peer}"), "hi", 1),
                None,
            )
            .await
            .unwrap();
    }
    let first = store
        .changed_conversations(&uid("alice"), 0, 2)
        .await
        .unwrap();
    assert_eq!(first.conversations.len(), 2);
    assert!(first.has_more);
    let second = store
        .changed_conversations(&uid("alice"), first.version, 2)
        .await
        .unwrap();
    assert_eq!(second.conversations.len(), 1);
    assert!(!second.has_more);
    let peers: Vec<_> = first
        .conversations
        .iter()
        .chain(&second.conversations)
        .map(|c| c.peer.clone().unwrap())
        .collect();
    assert_eq!(
        peers,
        vec![uid("bob"), uid("carol"), uid("dave")],
        "oldest change first"
    );
    let idle = store
        .changed_conversations(&uid("alice"), second.version, 10)
        .await
        .unwrap();
    assert!(idle.conversations.is_empty());
    assert_eq!(idle.version, second.version);

    store
        .append_message(new_message("bob", "alice", "again", "hi", 2), None)
        .await
        .unwrap();
    let next = store
        .changed_conversations(&uid("alice"), second.version, 10)
        .await
        .unwrap();
    assert_eq!(next.conversations.len(), 1, "only what changed");
    assert_eq!(next.conversations[0].last_seq, 2);
    assert_eq!(next.conversations[0].unread_count, 2);

    let future = store
        .changed_conversations(&uid("alice"), 1_000_000, 10)
        .await
        .unwrap();
    assert_eq!(
        future.conversations.len(),
        3,
        "a cursor from the future starts over"
    );
    let nobody = store
        .changed_conversations(&uid("nobody"), 0, 10)
        .await
        .unwrap();
    assert!(nobody.conversations.is_empty());
}

pub async fn mark_read_only_moves_forward_and_clamps<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob"]).await;
    for i in 0..5 {
        store
            .append_message(new_message("alice", "bob", &format!("r{i}"), "x", 1), None)
            .await
            .unwrap();
    }
    let conv = c2c("alice", "bob");
    let read = store.mark_read(&uid("bob"), &conv, 3, 50).await.unwrap();
    assert!(read.changed);
    assert_eq!((read.state.read_seq, read.state.unread_count), (3, 2));
    let back = store.mark_read(&uid("bob"), &conv, 1, 51).await.unwrap();
    assert!(!back.changed);
    assert_eq!(back.state.read_seq, 3);
    assert_eq!(
        back.state.version, read.state.version,
        "no change, no new version"
    );
    let beyond = store.mark_read(&uid("bob"), &conv, 99, 52).await.unwrap();
    assert_eq!((beyond.state.read_seq, beyond.state.unread_count), (5, 0));
    let err = store
        .mark_read(&uid("carol"), &conv, 1, 53)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::ConversationNotFound);
    let synced = store
        .changed_conversations(&uid("bob"), read.state.version - 1, 10)
        .await
        .unwrap();
    assert_eq!(
        synced.conversations[0].read_seq, 5,
        "read state changes are synced"
    );
}

pub async fn acked_writes_survive_a_reopen<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob"]).await;
    for i in 0..3 {
        store
            .append_message(new_message("alice", "bob", &format!("d{i}"), "x", 1), None)
            .await
            .unwrap();
    }
    store.close().await.unwrap();
    drop(store);
    let store = b.open().await;
    let next = store
        .append_message(new_message("bob", "alice", "d3", "x", 2), None)
        .await
        .unwrap();
    assert_eq!(next.message.seq, 4, "seq continues after a restart");
    let retry = store
        .append_message(new_message("alice", "bob", "d1", "x", 3), None)
        .await
        .unwrap();
    assert!(retry.duplicate, "dedupe survives a restart");
    assert_eq!(retry.message.seq, 2);
}

pub async fn deleting_a_user_keeps_the_peers_history<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob"]).await;
    store
        .append_message(new_message("alice", "bob", "k1", "x", 1), None)
        .await
        .unwrap();
    assert!(store.delete_user(&uid("bob")).await.unwrap());
    let conv = c2c("alice", "bob");
    assert!(
        store
            .conversation_state(&uid("bob"), &conv)
            .await
            .unwrap()
            .is_none()
    );
    let alice = store
        .conversation_state(&uid("alice"), &conv)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alice.last_seq, 1);
}

pub async fn a_closed_store_refuses_work<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice"]).await;
    store.close().await.unwrap();
    let err = store.get_user(&uid("alice")).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    let err = store
        .append_message(new_message("alice", "bob", "z", "x", 1), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
}

pub async fn appends_to_missing_users_fail_without_using_a_seq<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob"]).await;
    let err = store
        .append_message(new_message("alice", "ghost", "g1", "x", 1), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::UserNotFound);
    store
        .append_message(new_message("alice", "bob", "g2", "x", 1), None)
        .await
        .unwrap();
    store.delete_user(&uid("bob")).await.unwrap();
    let err = store
        .append_message(new_message("alice", "bob", "g3", "x", 1), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::UserNotFound);
    let retry = store
        .append_message(new_message("alice", "bob", "g2", "x", 1), None)
        .await
        .unwrap();
    assert!(
        retry.duplicate,
        "a retry of a stored message still gets its original"
    );
    create_users(&store, &["bob"]).await;
    let next = store
        .append_message(new_message("alice", "bob", "g4", "x", 1), None)
        .await
        .unwrap();
    assert_eq!(next.message.seq, 2, "failed appends used no seq");
}

pub async fn commit_hooks_see_each_durable_append_once<B: Backend>(b: &B) {
    let store = Arc::new(b.open().await);
    create_users(store.as_ref(), &["alice", "bob"]).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (store, seen) = (store.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let hook: crate::OnCommit = Box::new(move |a: &crate::Appended| {
                seen.lock().unwrap().push((a.message.seq, a.duplicate));
            });
            store
                .append_message(
                    new_message("alice", "bob", &format!("h{}", i % 40), "x", 1),
                    Some(hook),
                )
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let hook: crate::OnCommit = Box::new(|_| panic!("hooks must not run for failed appends"));
    let _ = store
        .append_message(new_message("alice", "ghost", "h-x", "x", 1), Some(hook))
        .await
        .unwrap_err();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 50);
    let fresh: BTreeSet<u64> = seen
        .iter()
        .filter(|(_, dup)| !dup)
        .map(|(seq, _)| *seq)
        .collect();
    assert_eq!(fresh, (1..=40).collect::<BTreeSet<u64>>());
    assert_eq!(seen.iter().filter(|(_, dup)| *dup).count(), 10);
}

pub async fn a_recreated_user_starts_fresh_but_keeps_its_counters<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob"]).await;
    store.revoke_tokens(&uid("alice")).await.unwrap();
    store
        .append_message(new_message("alice", "bob", "r1", "x", 1), None)
        .await
        .unwrap();
    let before = store
        .changed_conversations(&uid("alice"), 0, 10)
        .await
        .unwrap();
    let generation = store
        .get_user(&uid("alice"))
        .await
        .unwrap()
        .unwrap()
        .token_generation;

    assert!(store.delete_user(&uid("alice")).await.unwrap());
    let err = store.revoke_tokens(&uid("alice")).await.unwrap_err();
    assert_eq!(
        err.kind(),
        StoreErrorKind::UserNotFound,
        "a deleted user is gone"
    );
    store
        .create_user(NewUser {
            id: uid("alice"),
            nickname: Some("Alice II".into()),
            avatar_url: None,
            ext: None,
            now: 99,
        })
        .await
        .unwrap();
    let again = store.get_user(&uid("alice")).await.unwrap().unwrap();
    assert_eq!(again.user.nickname.as_deref(), Some("Alice II"));
    assert_eq!(again.user.created_at, 99);
    assert!(
        again.token_generation > generation,
        "tokens of the deleted user stay revoked"
    );
    let fresh = store
        .changed_conversations(&uid("alice"), 0, 10)
        .await
        .unwrap();
    assert!(
        fresh.conversations.is_empty(),
        "the new user has no conversations yet"
    );

    store
        .append_message(new_message("bob", "alice", "r2", "x", 2), None)
        .await
        .unwrap();
    let after = store
        .changed_conversations(&uid("alice"), before.version, 10)
        .await
        .unwrap();
    assert_eq!(
        after.conversations.len(),
        1,
        "the change counter kept counting up"
    );
    assert_eq!(after.conversations[0].last_seq, 2);
    assert_eq!(
        after.conversations[0].unread_count, 2,
        "the new user has read nothing"
    );
}

pub async fn server_times_never_decrease_along_seqs<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob"]).await;
    // A clock that steps back (or two senders racing) must not put a later seq earlier in time.
    let times = [5_000, 3_000, 5_000, 9_000, 8_000];
    let mut stored = Vec::new();
    for (i, time) in times.iter().enumerate() {
        let appended = store
            .append_message(
                new_message("alice", "bob", &format!("t{i}"), "x", *time),
                None,
            )
            .await
            .unwrap();
        stored.push(appended.message.server_time);
    }
    assert_eq!(
        stored,
        vec![5_000, 5_000, 5_000, 9_000, 9_000],
        "the acked times"
    );
    let page = store
        .get_messages(MessageQuery {
            conversation_id: c2c("alice", "bob"),
            direction: Direction::Forward,
            anchor: Anchor::Time(5_000),
            limit: 10,
            min_seq: 1,
        })
        .await
        .unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4, 5],
        "equal times are all at or after the anchor"
    );
    let page = store
        .get_messages(MessageQuery {
            conversation_id: c2c("alice", "bob"),
            direction: Direction::Backward,
            anchor: Anchor::Time(9_000),
            limit: 10,
            min_seq: 1,
        })
        .await
        .unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3], "strictly before the anchor");
}

pub async fn appends_take_seqs_in_call_order_not_poll_order<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob"]).await;
    let appending: Vec<_> = (0..20)
        .map(|i| store.append_message(new_message("alice", "bob", &format!("o{i}"), "x", 1), None))
        .collect();
    let mut seqs = Vec::new();
    // Await them last first: the order they were called in must decide the seqs.
    for future in appending.into_iter().rev() {
        seqs.push(future.await.unwrap().message.seq);
    }
    seqs.reverse();
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
}

pub async fn a_read_right_behind_appends_sees_them<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob"]).await;
    // Queued back to back, these usually share one write batch with the mark_read below.
    let appending: Vec<_> = (0..5)
        .map(|i| store.append_message(new_message("alice", "bob", &format!("b{i}"), "x", 1), None))
        .collect();
    let read = store
        .mark_read(&uid("bob"), &c2c("alice", "bob"), 5, 2)
        .await
        .unwrap();
    for future in appending {
        future.await.unwrap();
    }
    assert_eq!(
        (
            read.state.last_seq,
            read.state.read_seq,
            read.state.unread_count
        ),
        (5, 5, 0)
    );
    let alice = store
        .conversation_state(&uid("alice"), &c2c("alice", "bob"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((alice.read_seq, alice.unread_count), (5, 0));
    let synced = store
        .changed_conversations(&uid("bob"), 0, 10)
        .await
        .unwrap();
    assert_eq!(synced.conversations[0].read_seq, 5);
    assert_eq!(
        synced.conversations[0].version, read.state.version,
        "the read is bob's last change"
    );
}

const LONG_LEASE: Duration = Duration::from_secs(600);

pub async fn node_ids_are_distinct_per_holder<B: Backend>(b: &B) {
    let store = b.open().await;
    let a = store.claim_node_id("node-a", LONG_LEASE).await.unwrap();
    let b = store.claim_node_id("node-b", LONG_LEASE).await.unwrap();
    assert_eq!((a, b), (0, 1), "each claim takes the lowest free id");
}

pub async fn only_the_holder_renews_a_node_id<B: Backend>(b: &B) {
    let store = b.open().await;
    let node = store.claim_node_id("node-a", LONG_LEASE).await.unwrap();
    assert!(
        store
            .renew_node_id(node, "node-a", LONG_LEASE)
            .await
            .unwrap()
    );
    assert!(
        !store
            .renew_node_id(node, "node-b", LONG_LEASE)
            .await
            .unwrap(),
        "another holder cannot renew it"
    );
    assert!(
        !store
            .renew_node_id(node + 1, "node-a", LONG_LEASE)
            .await
            .unwrap(),
        "nor can anyone renew an id never claimed"
    );
    assert_eq!(
        store.claim_node_id("node-b", LONG_LEASE).await.unwrap(),
        node + 1,
        "the renewed id stays taken"
    );
}

pub async fn an_expired_node_lease_goes_to_the_next_claimer<B: Backend>(b: &B) {
    let store = b.open().await;
    let node = store
        .claim_node_id("old", Duration::from_millis(50))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let taken = store.claim_node_id("new", LONG_LEASE).await.unwrap();
    assert_eq!(taken, node, "an expired lease is free again");
    assert!(
        !store.renew_node_id(node, "old", LONG_LEASE).await.unwrap(),
        "the old holder lost it"
    );
    assert!(store.renew_node_id(node, "new", LONG_LEASE).await.unwrap());
}

pub async fn a_released_node_id_is_reused<B: Backend>(b: &B) {
    let store = b.open().await;
    let a = store.claim_node_id("a", LONG_LEASE).await.unwrap();
    let b = store.claim_node_id("b", LONG_LEASE).await.unwrap();
    store.release_node_id(b, "a").await.unwrap();
    assert!(
        store.renew_node_id(b, "b", LONG_LEASE).await.unwrap(),
        "only the holder can release an id"
    );
    store.release_node_id(a, "a").await.unwrap();
    assert!(!store.renew_node_id(a, "a", LONG_LEASE).await.unwrap());
    assert_eq!(store.claim_node_id("c", LONG_LEASE).await.unwrap(), a);
    assert_eq!(store.claim_node_id("d", LONG_LEASE).await.unwrap(), b + 1);
}

pub async fn claims_fail_once_every_node_id_is_leased<B: Backend>(b: &B) {
    let store = Arc::new(b.open().await);
    // Claimed from several tasks at once: racing claims must still get distinct ids.
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut claims = Vec::new();
                for i in 0..128 {
                    let holder = format!("holder-{t}-{i}");
                    let id = store.claim_node_id(&holder, LONG_LEASE).await.unwrap();
                    claims.push((id, holder));
                }
                claims
            })
        })
        .collect();
    let mut holders = std::collections::BTreeMap::new();
    for task in tasks {
        for (id, holder) in task.await.unwrap() {
            assert!(
                holders.insert(id, holder).is_none(),
                "node id {id} was handed out twice"
            );
        }
    }
    assert_eq!(
        holders.keys().copied().collect::<BTreeSet<u16>>(),
        (0..=MAX_NODE_ID).collect::<BTreeSet<u16>>()
    );
    let err = store.claim_node_id("late", LONG_LEASE).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    store.release_node_id(700, &holders[&700]).await.unwrap();
    assert_eq!(store.claim_node_id("late", LONG_LEASE).await.unwrap(), 700);
}

// ---------------------------------------------------------------------------------------------
// Groups

fn gid(s: &str) -> GroupId {
    GroupId::new(s).unwrap()
}

fn member(user: &str, role: GroupRole, now: i64) -> GroupMember {
    GroupMember {
        user_id: uid(user),
        role,
        joined_at: now,
        nickname: None,
        attributes: Map::new(),
        muted_until: None,
        allowed_when_all_muted: false,
        visible_from_seq: 1,
        receive_messages: true,
    }
}

fn members(users: &[&str], now: i64) -> Vec<GroupMember> {
    users
        .iter()
        .map(|u| member(u, GroupRole::Member, now))
        .collect()
}

fn new_group(id: &str, owner: &str, others: &[&str], options: GroupOptions) -> NewGroup {
    let mut first = vec![member(owner, GroupRole::Owner, 10)];
    first.extend(members(others, 10));
    NewGroup {
        group_id: gid(id),
        name: format!("Group {id}"),
        avatar_url: None,
        introduction: None,
        ext: None,
        options,
        owner: uid(owner),
        members: first,
    }
}

fn object(value: serde_json::Value) -> Map<String, serde_json::Value> {
    value.as_object().unwrap().clone()
}

fn user_ids(members: &[GroupMember]) -> Vec<String> {
    members.iter().map(|m| m.user_id.to_string()).collect()
}

fn group_ids(groups: &[GroupRecord]) -> Vec<String> {
    groups.iter().map(|g| g.info.group_id.to_string()).collect()
}

async fn write<S: Store>(store: &S, group: &str, write: GroupWrite) -> GroupRecord {
    store
        .write_group(&gid(group), None, write, 100)
        .await
        .unwrap()
}

async fn refused<S: Store>(store: &S, group: &str, write: GroupWrite) -> StoreErrorKind {
    store
        .write_group(&gid(group), None, write, 100)
        .await
        .unwrap_err()
        .kind()
}

async fn count_members<S: Store>(store: &S, group: &str) -> usize {
    store
        .group_members(&gid(group), None, None, 10_000)
        .await
        .unwrap()
        .len()
}

pub async fn groups_are_created_and_updated_under_versions<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob"]).await;
    let mut group = new_group("g1", "alice", &["bob"], GroupOptions::default());
    group.introduction = Some("hello".into());
    group.ext = Some(object(json!({"k": 1})));
    let created = store.create_group(group.clone(), 50).await.unwrap();
    assert_eq!(created.info.version, 1);
    assert_eq!(created.info.member_count, 2);
    assert_eq!((created.info.created_at, created.info.updated_at), (50, 50));
    assert_eq!(created.info.owner, uid("alice"));
    assert_eq!(created.attributes_version, 0);
    assert!(created.attributes.is_empty() && created.counters.is_empty());
    assert_eq!(
        store.get_groups(&[gid("g1")]).await.unwrap(),
        vec![created.clone()]
    );

    let again = store.create_group(group.clone(), 60).await.unwrap_err();
    assert_eq!(again.kind(), StoreErrorKind::Conflict, "the id is taken");
    let mut unknown = new_group("g2", "alice", &["nobody"], GroupOptions::default());
    unknown.name = "x".into();
    let err = store.create_group(unknown, 60).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::UserNotFound);
    assert!(store.get_groups(&[gid("g2")]).await.unwrap().is_empty());

    let updated = store
        .write_group(
            &gid("g1"),
            Some(1),
            GroupWrite::UpdateInfo(GroupInfoUpdate {
                name: Some("Renamed".into()),
                introduction: Some(None),
                announcement: Some(Some("news".into())),
                all_muted: Some(true),
                options: Some(GroupOptions {
                    join_policy: JoinPolicy::Open,
                    ..GroupOptions::default()
                }),
                ..GroupInfoUpdate::default()
            }),
            70,
        )
        .await
        .unwrap();
    assert_eq!(updated.info.version, 2);
    assert_eq!(updated.info.updated_at, 70);
    assert_eq!(updated.info.created_at, 50);
    assert_eq!(updated.info.name, "Renamed");
    assert_eq!(updated.info.introduction, None);
    assert_eq!(updated.info.announcement.as_deref(), Some("news"));
    assert_eq!(updated.info.ext, group.ext, "absent fields stay");
    assert!(updated.info.all_muted);
    assert_eq!(updated.info.options.join_policy, JoinPolicy::Open);

    let stale = store
        .write_group(
            &gid("g1"),
            Some(1),
            GroupWrite::UpdateInfo(GroupInfoUpdate {
                name: Some("Lost".into()),
                ..GroupInfoUpdate::default()
            }),
            80,
        )
        .await
        .unwrap_err();
    assert_eq!(stale.kind(), StoreErrorKind::Conflict);
    let missing = store
        .write_group(
            &gid("nope"),
            None,
            GroupWrite::UpdateInfo(GroupInfoUpdate::default()),
            80,
        )
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), StoreErrorKind::GroupNotFound);
    let stored = store.get_groups(&[gid("nope"), gid("g1")]).await.unwrap();
    assert_eq!(stored, vec![updated], "refused writes change nothing");

    // Every write bumps the version by one, even one that changes nothing else.
    let noop = write(&store, "g1", GroupWrite::RemoveMembers(vec![uid("carol")])).await;
    assert_eq!(noop.info.version, 3);
    assert_eq!(noop.info.member_count, 2);
}

pub async fn adding_members_stops_at_max_members<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["o", "a", "b", "c", "d", "e"]).await;
    let options = GroupOptions {
        max_members: 4,
        ..GroupOptions::default()
    };
    store
        .create_group(new_group("g", "o", &["a"], options.clone()), 1)
        .await
        .unwrap();
    // Existing members are skipped, duplicates count once.
    let added = write(
        &store,
        "g",
        GroupWrite::AddMembers(members(&["a", "b", "b", "c"], 5)),
    )
    .await;
    assert_eq!(added.info.member_count, 4);
    assert_eq!(count_members(&store, "g").await, 4);
    let full = refused(&store, "g", GroupWrite::AddMembers(members(&["d"], 6))).await;
    assert_eq!(full, StoreErrorKind::GroupFull);
    let again = write(&store, "g", GroupWrite::AddMembers(members(&["a"], 6))).await;
    assert_eq!(
        again.info.member_count, 4,
        "re-adding a member is not growth"
    );
    write(&store, "g", GroupWrite::RemoveMembers(vec![uid("c")])).await;
    // The whole write is refused: nobody of it joins.
    let full = refused(&store, "g", GroupWrite::AddMembers(members(&["d", "e"], 7))).await;
    assert_eq!(full, StoreErrorKind::GroupFull);
    let unknown = refused(
        &store,
        "g",
        GroupWrite::AddMembers(members(&["d", "ghost"], 7)),
    )
    .await;
    assert_eq!(unknown, StoreErrorKind::UserNotFound);
    store.delete_user(&uid("e")).await.unwrap();
    let deleted = refused(&store, "g", GroupWrite::AddMembers(members(&["e"], 7))).await;
    assert_eq!(
        deleted,
        StoreErrorKind::UserNotFound,
        "a deleted user is gone"
    );
    let record = write(&store, "g", GroupWrite::AddMembers(members(&["d"], 8))).await;
    assert_eq!(record.info.member_count, 4);
    assert_eq!(
        user_ids(
            &store
                .group_members(&gid("g"), None, None, 10)
                .await
                .unwrap()
        ),
        ["a", "b", "d", "o"]
    );
    let too_many = store
        .create_group(new_group("g2", "o", &["a", "b", "c", "d"], options), 1)
        .await
        .unwrap_err();
    assert_eq!(too_many.kind(), StoreErrorKind::GroupFull);
    let missing = store
        .write_group(
            &gid("none"),
            None,
            GroupWrite::AddMembers(members(&["a"], 1)),
            1,
        )
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), StoreErrorKind::GroupNotFound);
}

pub async fn blocked_users_cannot_join_until_the_block_expires<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["o", "a", "b", "c"]).await;
    store
        .create_group(new_group("g", "o", &["a", "b"], GroupOptions::default()), 1)
        .await
        .unwrap();
    // Blocking a member removes them.
    let blocked = store
        .write_group(
            &gid("g"),
            None,
            GroupWrite::Block {
                user_ids: vec![uid("a"), uid("c")],
                until: Some(1_000),
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(blocked.info.member_count, 2);
    assert_eq!(
        user_ids(
            &store
                .group_members(&gid("g"), None, None, 10)
                .await
                .unwrap()
        ),
        ["b", "o"]
    );
    assert_eq!(
        store.group_block(&gid("g"), &uid("a"), 500).await.unwrap(),
        Some(Some(1_000))
    );
    assert_eq!(
        store.group_block(&gid("g"), &uid("b"), 500).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .group_block(&gid("g"), &uid("a"), 1_000)
            .await
            .unwrap(),
        None,
        "a block ends at its time"
    );
    let g = gid("g");
    let add_a =
        |now| store.write_group(&g, None, GroupWrite::AddMembers(members(&["a"], now)), now);
    assert_eq!(
        add_a(999).await.unwrap_err().kind(),
        StoreErrorKind::Blocked
    );
    assert_eq!(count_members(&store, "g").await, 2);
    assert_eq!(add_a(1_000).await.unwrap().info.member_count, 3);

    // Indefinite blocks, the list, and unblocking.
    store
        .write_group(
            &gid("g"),
            None,
            GroupWrite::Block {
                user_ids: vec![uid("b")],
                until: None,
            },
            2_000,
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .group_block(&gid("g"), &uid("b"), i64::MAX)
            .await
            .unwrap(),
        Some(None)
    );
    assert_eq!(
        store.group_blocks(&gid("g"), 500, None, 10).await.unwrap(),
        vec![
            (uid("a"), Some(1_000)),
            (uid("b"), None),
            (uid("c"), Some(1_000))
        ]
    );
    assert_eq!(
        store
            .group_blocks(&gid("g"), 2_000, None, 10)
            .await
            .unwrap(),
        vec![(uid("b"), None)],
        "expired entries are left out"
    );
    assert_eq!(
        store
            .group_blocks(&gid("g"), 500, Some(&uid("a")), 1)
            .await
            .unwrap(),
        vec![(uid("b"), None)]
    );
    let refused_b = refused(&store, "g", GroupWrite::AddMembers(members(&["b"], 3_000))).await;
    assert_eq!(refused_b, StoreErrorKind::Blocked);
    write(&store, "g", GroupWrite::Unblock(vec![uid("b")])).await;
    assert_eq!(
        store
            .group_block(&gid("g"), &uid("b"), 3_000)
            .await
            .unwrap(),
        None
    );
    let record = write(&store, "g", GroupWrite::AddMembers(members(&["b"], 3_000))).await;
    assert_eq!(record.info.member_count, 3);
}

pub async fn the_owner_cannot_be_removed_blocked_or_demoted<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["o", "a", "b", "zed"]).await;
    let created = store
        .create_group(new_group("g", "o", &["a", "b"], GroupOptions::default()), 1)
        .await
        .unwrap();
    for w in [
        GroupWrite::RemoveMembers(vec![uid("a"), uid("o")]),
        GroupWrite::Block {
            user_ids: vec![uid("o")],
            until: None,
        },
        GroupWrite::SetRole {
            user_ids: vec![uid("o")],
            role: GroupRole::Member,
        },
        GroupWrite::SetRole {
            user_ids: vec![uid("a")],
            role: GroupRole::Owner,
        },
        GroupWrite::AddMembers(vec![member("zed", GroupRole::Owner, 1)]),
    ] {
        let kind = refused(&store, "g", w.clone()).await;
        assert_eq!(kind, StoreErrorKind::Conflict, "{w:?}");
    }
    assert_eq!(
        store.get_groups(&[gid("g")]).await.unwrap(),
        vec![created],
        "nothing changed"
    );
    assert_eq!(count_members(&store, "g").await, 3);
    let kicked = write(
        &store,
        "g",
        GroupWrite::RemoveMembers(vec![uid("a"), uid("x")]),
    )
    .await;
    assert_eq!(kicked.info.member_count, 2);
}

pub async fn roles_ownership_and_member_updates<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["o", "a", "b", "c"]).await;
    store
        .create_group(new_group("g", "o", &["a", "b"], GroupOptions::default()), 1)
        .await
        .unwrap();
    write(
        &store,
        "g",
        GroupWrite::SetRole {
            user_ids: vec![uid("a"), uid("b")],
            role: GroupRole::Admin,
        },
    )
    .await;
    let not_member = refused(
        &store,
        "g",
        GroupWrite::SetRole {
            user_ids: vec![uid("a"), uid("c")],
            role: GroupRole::Member,
        },
    )
    .await;
    assert_eq!(not_member, StoreErrorKind::NotMember);
    let roles = store
        .group_members_by_id(&gid("g"), &[uid("b"), uid("c"), uid("a"), uid("o")])
        .await
        .unwrap();
    assert_eq!(user_ids(&roles), ["b", "a", "o"], "in the order asked");
    assert_eq!(
        roles.iter().map(|m| m.role).collect::<Vec<_>>(),
        [GroupRole::Admin, GroupRole::Admin, GroupRole::Owner],
        "a refused SetRole changed nobody"
    );

    let to_c = refused(&store, "g", GroupWrite::TransferOwner { to: uid("c") }).await;
    assert_eq!(to_c, StoreErrorKind::NotMember);
    let transferred = write(&store, "g", GroupWrite::TransferOwner { to: uid("b") }).await;
    assert_eq!(transferred.info.owner, uid("b"));
    let roles = store
        .group_members_by_id(&gid("g"), &[uid("o"), uid("b")])
        .await
        .unwrap();
    assert_eq!(
        roles.iter().map(|m| m.role).collect::<Vec<_>>(),
        [GroupRole::Admin, GroupRole::Owner]
    );
    // The old owner may now leave; the new one may not.
    write(&store, "g", GroupWrite::RemoveMembers(vec![uid("o")])).await;
    let kind = refused(&store, "g", GroupWrite::RemoveMembers(vec![uid("b")])).await;
    assert_eq!(kind, StoreErrorKind::Conflict);

    // Member updates: nickname, attributes merged (null deletes), mute, allow list.
    write(
        &store,
        "g",
        GroupWrite::UpdateMembers {
            user_ids: vec![uid("a")],
            update: MemberUpdate {
                nickname: Some(Some("Ay".into())),
                attributes: Some(object(json!({"x": 1, "y": "two"}))),
                muted_until: Some(Some(5_000)),
                allowed_when_all_muted: Some(true),
                receive_messages: None,
            },
        },
    )
    .await;
    write(
        &store,
        "g",
        GroupWrite::UpdateMembers {
            user_ids: vec![uid("a")],
            update: MemberUpdate {
                attributes: Some(object(json!({"x": null, "z": [1]}))),
                muted_until: Some(None),
                ..MemberUpdate::default()
            },
        },
    )
    .await;
    let a = &store
        .group_members_by_id(&gid("g"), &[uid("a")])
        .await
        .unwrap()[0];
    assert_eq!(a.nickname.as_deref(), Some("Ay"));
    assert_eq!(a.attributes, object(json!({"y": "two", "z": [1]})));
    assert_eq!(a.muted_until, None);
    assert!(a.allowed_when_all_muted);
    assert_eq!(a.role, GroupRole::Admin);
    assert_eq!(a.joined_at, 10);
    let kind = refused(
        &store,
        "g",
        GroupWrite::UpdateMembers {
            user_ids: vec![uid("a"), uid("o")],
            update: MemberUpdate {
                nickname: Some(None),
                ..MemberUpdate::default()
            },
        },
    )
    .await;
    assert_eq!(kind, StoreErrorKind::NotMember);
    let a = &store
        .group_members_by_id(&gid("g"), &[uid("a")])
        .await
        .unwrap()[0];
    assert_eq!(
        a.nickname.as_deref(),
        Some("Ay"),
        "a refused update changed nobody"
    );
}

pub async fn members_page_by_user_id_and_role<B: Backend>(b: &B) {
    let store = b.open().await;
    let users: Vec<String> = (0..25).map(|i| format!("u{i:02}")).collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    create_users(&store, &refs).await;
    store
        .create_group(new_group("g", "u13", &refs, GroupOptions::default()), 1)
        .await
        .unwrap();
    let admins: Vec<UserId> = ["u03", "u07", "u20"].iter().map(|u| uid(u)).collect();
    write(
        &store,
        "g",
        GroupWrite::SetRole {
            user_ids: admins.clone(),
            role: GroupRole::Admin,
        },
    )
    .await;
    let mut all = Vec::new();
    let mut after: Option<UserId> = None;
    loop {
        let page = store
            .group_members(&gid("g"), None, after.as_ref(), 10)
            .await
            .unwrap();
        assert!(page.len() <= 10);
        if page.is_empty() {
            break;
        }
        after = page.last().map(|m| m.user_id.clone());
        all.extend(page);
    }
    assert_eq!(user_ids(&all), users, "every member once, by user id");
    let admin_page = store
        .group_members(&gid("g"), Some(GroupRole::Admin), None, 2)
        .await
        .unwrap();
    assert_eq!(user_ids(&admin_page), ["u03", "u07"]);
    let rest = store
        .group_members(&gid("g"), Some(GroupRole::Admin), Some(&uid("u07")), 2)
        .await
        .unwrap();
    assert_eq!(user_ids(&rest), ["u20"]);
    let owner = store
        .group_members(&gid("g"), Some(GroupRole::Owner), None, 10)
        .await
        .unwrap();
    assert_eq!(user_ids(&owner), ["u13"]);
    let plain = store
        .group_members(&gid("g"), Some(GroupRole::Member), None, 100)
        .await
        .unwrap();
    assert_eq!(plain.len(), 21);
    assert!(
        store
            .group_members(&gid("none"), None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn joined_groups_and_the_directory_page_by_id<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob"]).await;
    let policies = [
        ("cats", "Cat Lovers", JoinPolicy::Open),
        ("dogs", "DOG people", JoinPolicy::Approval),
        ("secret-cats", "Hidden", JoinPolicy::InviteOnly),
        ("birds", "Birdwatch", JoinPolicy::Open),
        ("catalog", "Index", JoinPolicy::Approval),
    ];
    for (id, name, policy) in policies {
        let mut group = new_group(
            id,
            "alice",
            &[],
            GroupOptions {
                join_policy: policy,
                ..GroupOptions::default()
            },
        );
        group.name = name.into();
        store.create_group(group, 1).await.unwrap();
    }
    for id in ["dogs", "secret-cats", "birds"] {
        write(&store, id, GroupWrite::AddMembers(members(&["bob"], 2))).await;
    }
    let joined = store.joined_groups(&uid("bob"), None, 2).await.unwrap();
    assert_eq!(group_ids(&joined), ["birds", "dogs"]);
    assert_eq!(joined[1].info.member_count, 2);
    let more = store
        .joined_groups(&uid("bob"), Some(&gid("dogs")), 2)
        .await
        .unwrap();
    assert_eq!(group_ids(&more), ["secret-cats"]);
    assert_eq!(
        store
            .joined_groups(&uid("alice"), None, 10)
            .await
            .unwrap()
            .len(),
        5
    );

    let directory = store.public_groups(None, None, 3).await.unwrap();
    assert_eq!(group_ids(&directory), ["birds", "catalog", "cats"]);
    let rest = store
        .public_groups(None, Some(&gid("cats")), 3)
        .await
        .unwrap();
    assert_eq!(
        group_ids(&rest),
        ["dogs"],
        "invite-only groups are not listed"
    );
    let cats = store.public_groups(Some("CAT"), None, 10).await.unwrap();
    assert_eq!(
        group_ids(&cats),
        ["catalog", "cats"],
        "id or name, any case"
    );
    let people = store.public_groups(Some("people"), None, 10).await.unwrap();
    assert_eq!(group_ids(&people), ["dogs"]);
    let cats_after = store
        .public_groups(Some("cat"), Some(&gid("catalog")), 10)
        .await
        .unwrap();
    assert_eq!(group_ids(&cats_after), ["cats"]);
    let wildcard = store.public_groups(Some("%"), None, 10).await.unwrap();
    assert!(wildcard.is_empty(), "the query is literal");
}

pub async fn group_attributes_compare_and_set_and_counters<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["o"]).await;
    store
        .create_group(new_group("g", "o", &[], GroupOptions::default()), 1)
        .await
        .unwrap();
    let set = |set: serde_json::Value, delete: &[&str], expected| GroupWrite::SetAttributes {
        set: object(set),
        delete: delete.iter().map(|k| (*k).to_owned()).collect(),
        expected_attributes_version: expected,
    };
    let first = write(
        &store,
        "g",
        set(json!({"a": 1, "b": {"c": true}}), &[], Some(0)),
    )
    .await;
    assert_eq!(first.attributes_version, 1);
    assert_eq!(first.info.version, 2);
    assert_eq!(first.attributes, object(json!({"a": 1, "b": {"c": true}})));
    let stale = refused(&store, "g", set(json!({"a": 2}), &[], Some(0))).await;
    assert_eq!(stale, StoreErrorKind::Conflict);
    let second = write(
        &store,
        "g",
        set(json!({"c": "x", "d": null}), &["a", "missing"], Some(1)),
    )
    .await;
    assert_eq!(second.attributes_version, 2);
    assert_eq!(
        second.attributes,
        object(json!({"b": {"c": true}, "c": "x"}))
    );
    let unguarded = write(&store, "g", set(json!({"b": null}), &[], None)).await;
    assert_eq!(unguarded.attributes_version, 3);
    assert_eq!(unguarded.attributes, object(json!({"c": "x"})));

    let counter = |key: &str, delta| GroupWrite::IncrementCounter {
        key: key.into(),
        delta,
    };
    write(&store, "g", counter("likes", 5)).await;
    write(&store, "g", counter("likes", -7)).await;
    let counted = write(&store, "g", counter("views", 1)).await;
    assert_eq!(counted.counters, object(json!({"likes": -2, "views": 1})));
    write(&store, "g", counter("big", i64::MAX)).await;
    let overflow = refused(&store, "g", counter("big", 1)).await;
    assert_eq!(overflow, StoreErrorKind::Conflict);
    let stored = &store.get_groups(&[gid("g")]).await.unwrap()[0];
    assert_eq!(
        stored.counters,
        object(json!({"likes": -2, "views": 1, "big": i64::MAX}))
    );
    assert_eq!(stored.attributes, object(json!({"c": "x"})));
    assert_eq!(
        stored.attributes_version, 3,
        "counters leave the attributes alone"
    );
    assert_eq!(stored.info.version, 8);
}

pub async fn applications_are_deduped_handled_once_and_listed<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["o", "a", "b", "c"]).await;
    for id in ["g1", "g2", "g3"] {
        store
            .create_group(new_group(id, "o", &[], GroupOptions::default()), 1)
            .await
            .unwrap();
    }
    let apply = |group: &str, kind, from: &str, user: &str, message: &str, now| NewApplication {
        group_id: gid(group),
        kind,
        from: uid(from),
        user_id: uid(user),
        message: Some(message.into()),
        now,
    };
    let join_a = store
        .create_application(apply(
            "g1",
            ApplicationKind::Join,
            "a",
            "a",
            "let me in",
            10,
        ))
        .await
        .unwrap();
    assert_eq!(join_a.state, ApplicationState::Pending);
    assert_eq!(join_a.created_at, 10);
    let repeat = store
        .create_application(apply("g1", ApplicationKind::Join, "a", "a", "please", 11))
        .await
        .unwrap();
    assert_eq!(
        repeat, join_a,
        "the pending one is returned, message and all"
    );
    assert_eq!(
        store.get_application(&join_a.application_id).await.unwrap(),
        Some(join_a.clone())
    );
    assert_eq!(store.get_application("999999").await.unwrap(), None);
    assert_eq!(store.get_application("x").await.unwrap(), None);
    let missing = store
        .create_application(apply("nope", ApplicationKind::Join, "a", "a", "", 12))
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), StoreErrorKind::GroupNotFound);
    let ghost = store
        .create_application(apply("g1", ApplicationKind::Join, "ghost", "ghost", "", 12))
        .await
        .unwrap_err();
    assert_eq!(ghost.kind(), StoreErrorKind::UserNotFound);

    // An invitation of the same user is another kind: not a repeat.
    let invite_a = store
        .create_application(apply(
            "g1",
            ApplicationKind::Invite,
            "o",
            "a",
            "join us",
            13,
        ))
        .await
        .unwrap();
    assert_ne!(invite_a.application_id, join_a.application_id);

    let handled = store
        .handle_application(
            &join_a.application_id,
            true,
            Some(&uid("o")),
            Some("ok".into()),
            20,
        )
        .await
        .unwrap();
    assert_eq!(handled.state, ApplicationState::Accepted);
    assert_eq!(handled.handled_by, Some(uid("o")));
    assert_eq!(handled.reason.as_deref(), Some("ok"));
    assert_eq!(handled.handled_at, Some(20));
    assert_eq!(handled.message.as_deref(), Some("let me in"));
    assert_eq!(
        store.get_application(&join_a.application_id).await.unwrap(),
        Some(handled.clone())
    );
    let twice = store
        .handle_application(&join_a.application_id, false, None, None, 21)
        .await
        .unwrap_err();
    assert_eq!(twice.kind(), StoreErrorKind::Conflict);
    let unknown = store
        .handle_application("424242", false, None, None, 21)
        .await
        .unwrap_err();
    assert_eq!(unknown.kind(), StoreErrorKind::Conflict);
    // Once decided, a new application may be made.
    let join_a2 = store
        .create_application(apply("g1", ApplicationKind::Join, "a", "a", "again", 22))
        .await
        .unwrap();
    assert_ne!(join_a2.application_id, join_a.application_id);
    let declined = store
        .handle_application(&join_a2.application_id, false, None, None, 23)
        .await
        .unwrap();
    assert_eq!(declined.state, ApplicationState::Declined);
    assert_eq!(declined.handled_by, None);

    let join_b2 = store
        .create_application(apply("g2", ApplicationKind::Join, "b", "b", "b2", 30))
        .await
        .unwrap();
    let join_b3 = store
        .create_application(apply("g3", ApplicationKind::Join, "b", "b", "b3", 31))
        .await
        .unwrap();
    let invite_c = store
        .create_application(apply("g2", ApplicationKind::Invite, "a", "c", "c2", 32))
        .await
        .unwrap();
    let join_c1 = store
        .create_application(apply("g1", ApplicationKind::Join, "c", "c", "c1", 33))
        .await
        .unwrap();
    let ids = |apps: Vec<GroupApplication>| -> Vec<String> {
        apps.into_iter().map(|a| a.application_id).collect()
    };
    let id_numbers: Vec<u64> = [
        &join_a, &invite_a, &join_a2, &join_b2, &join_b3, &invite_c, &join_c1,
    ]
    .iter()
    .map(|a| a.application_id.parse().unwrap())
    .collect();
    assert!(id_numbers.windows(2).all(|w| w[0] < w[1]), "ids grow");

    // Joins to the groups a manager manages, newest first, paged.
    let to_g1_g2 = ApplicationFilter::JoinsTo(vec![gid("g1"), gid("g2")]);
    let page = store
        .list_applications(to_g1_g2.clone(), None, 2)
        .await
        .unwrap();
    assert_eq!(
        ids(page.clone()),
        [
            join_c1.application_id.clone(),
            join_b2.application_id.clone()
        ]
    );
    let next = store
        .list_applications(to_g1_g2.clone(), Some(&page[1].application_id), 10)
        .await
        .unwrap();
    assert_eq!(
        ids(next),
        [
            join_a2.application_id.clone(),
            join_a.application_id.clone()
        ]
    );
    assert!(
        store
            .list_applications(ApplicationFilter::JoinsTo(vec![]), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Joins to every group a user manages, found by the store (however many groups).
    let all_joins = store
        .list_applications(
            ApplicationFilter::JoinsTo(vec![gid("g1"), gid("g2"), gid("g3")]),
            None,
            100,
        )
        .await
        .unwrap();
    let managed = store
        .list_applications(ApplicationFilter::JoinsManagedBy(uid("o")), None, 100)
        .await
        .unwrap();
    assert!(!managed.is_empty());
    assert_eq!(ids(managed), ids(all_joins));
    assert!(
        store
            .list_applications(ApplicationFilter::JoinsManagedBy(uid("c")), None, 100)
            .await
            .unwrap()
            .is_empty(),
        "c manages nothing"
    );
    // Invitations addressed to a user.
    let for_a = store
        .list_applications(ApplicationFilter::InvitationsFor(uid("a")), None, 10)
        .await
        .unwrap();
    assert_eq!(ids(for_a), vec![invite_a.application_id.clone()]);
    // What a user sent: their join applications and the invitations they made.
    let by_a = store
        .list_applications(ApplicationFilter::SentBy(uid("a")), None, 10)
        .await
        .unwrap();
    assert_eq!(
        ids(by_a),
        [
            invite_c.application_id.clone(),
            join_a2.application_id.clone(),
            join_a.application_id.clone()
        ]
    );
    let by_a_older = store
        .list_applications(
            ApplicationFilter::SentBy(uid("a")),
            Some(&invite_c.application_id),
            1,
        )
        .await
        .unwrap();
    assert_eq!(ids(by_a_older), vec![join_a2.application_id.clone()]);
    let by_b = store
        .list_applications(ApplicationFilter::SentBy(uid("b")), None, 10)
        .await
        .unwrap();
    assert_eq!(by_b, vec![join_b3, join_b2]);
}

pub async fn destroying_a_group_removes_everything_and_frees_its_id<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["o", "a", "b", "c"]).await;
    store
        .create_group(new_group("g", "o", &["a"], GroupOptions::default()), 1)
        .await
        .unwrap();
    write(
        &store,
        "g",
        GroupWrite::Block {
            user_ids: vec![uid("b")],
            until: None,
        },
    )
    .await;
    write(
        &store,
        "g",
        GroupWrite::SetAttributes {
            set: object(json!({"k": 1})),
            delete: vec![],
            expected_attributes_version: None,
        },
    )
    .await;
    let pending = store
        .create_application(NewApplication {
            group_id: gid("g"),
            kind: ApplicationKind::Join,
            from: uid("c"),
            user_id: uid("c"),
            message: None,
            now: 5,
        })
        .await
        .unwrap();
    let stale = store
        .write_group(&gid("g"), Some(1), GroupWrite::Destroy, 100)
        .await
        .unwrap_err();
    assert_eq!(stale.kind(), StoreErrorKind::Conflict);
    let destroyed = store
        .write_group(&gid("g"), Some(3), GroupWrite::Destroy, 100)
        .await
        .unwrap();
    assert_eq!(destroyed.info.version, 4);
    assert!(store.get_groups(&[gid("g")]).await.unwrap().is_empty());
    assert_eq!(count_members(&store, "g").await, 0);
    assert!(
        store
            .joined_groups(&uid("a"), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .public_groups(None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.group_block(&gid("g"), &uid("b"), 0).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .get_application(&pending.application_id)
            .await
            .unwrap(),
        None
    );
    let gone = store
        .write_group(&gid("g"), None, GroupWrite::Destroy, 101)
        .await
        .unwrap_err();
    assert_eq!(gone.kind(), StoreErrorKind::GroupNotFound);

    // The id is free again: a new group starts from scratch.
    let reborn = store
        .create_group(new_group("g", "b", &["c"], GroupOptions::default()), 200)
        .await
        .unwrap();
    assert_eq!(reborn.info.version, 1);
    assert_eq!(reborn.info.member_count, 2);
    assert!(reborn.attributes.is_empty());
    assert_eq!(
        user_ids(
            &store
                .group_members(&gid("g"), None, None, 10)
                .await
                .unwrap()
        ),
        ["b", "c"]
    );
    let fresh = store
        .create_application(NewApplication {
            group_id: gid("g"),
            kind: ApplicationKind::Join,
            from: uid("c"),
            user_id: uid("c"),
            message: None,
            now: 201,
        })
        .await
        .unwrap();
    assert_ne!(
        fresh.application_id, pending.application_id,
        "application ids are never reused"
    );
}

pub async fn member_count_stays_exact_under_concurrent_adds<B: Backend>(b: &B) {
    let store = Arc::new(b.open().await);
    let users: Vec<String> = (0..60).map(|i| format!("m{i:02}")).collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    create_users(store.as_ref(), &refs).await;
    create_users(store.as_ref(), &["owner"]).await;
    store
        .create_group(
            new_group(
                "g",
                "owner",
                &[],
                GroupOptions {
                    max_members: 41,
                    ..GroupOptions::default()
                },
            ),
            1,
        )
        .await
        .unwrap();
    // Eight tasks add overlapping sets of users (each user in three tasks' sets) and kick
    // some; the group fills up to its maximum.
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            let users = users.clone();
            tokio::spawn(async move {
                let mut full = 0;
                for round in 0..10 {
                    let picked: Vec<&str> = (0..3)
                        .map(|k| users[(t * 7 + round * 3 + k * 20) % users.len()].as_str())
                        .collect();
                    let result = store
                        .write_group(
                            &gid("g"),
                            None,
                            GroupWrite::AddMembers(members(&picked, 5)),
                            5,
                        )
                        .await;
                    match result {
                        Ok(_) => {}
                        Err(e) if e.kind() == StoreErrorKind::GroupFull => full += 1,
                        Err(e) => panic!("{e}"),
                    }
                    if round % 4 == 3 {
                        store
                            .write_group(
                                &gid("g"),
                                None,
                                GroupWrite::RemoveMembers(vec![uid(picked[0])]),
                                6,
                            )
                            .await
                            .unwrap();
                    }
                }
                full
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let record = store.get_groups(&[gid("g")]).await.unwrap().remove(0);
    let counted = count_members(store.as_ref(), "g").await;
    assert_eq!(record.info.member_count as usize, counted);
    assert!(counted <= 41);
    let adds_and_removes = 8 * 10 + 8 * 2;
    assert!(
        record.info.version <= 1 + adds_and_removes,
        "one version per successful write"
    );
}

pub async fn group_writes_do_not_disturb_batched_appends<B: Backend>(b: &B) {
    let store = Arc::new(b.open().await);
    create_users(store.as_ref(), &["alice", "bob", "carol"]).await;
    store
        .create_group(new_group("g", "alice", &[], GroupOptions::default()), 1)
        .await
        .unwrap();
    // Appends and group writes queued together, some group writes refused: every append
    // still commits with its seq in call order.
    let mut appends = Vec::new();
    let mut writes = Vec::new();
    for i in 0..50 {
        appends.push(store.append_message(
            new_message("alice", "bob", &format!("b-{i}"), "x", 100),
            None,
        ));
        let store = store.clone();
        writes.push(tokio::spawn(async move {
            let w = if i % 2 == 0 {
                GroupWrite::AddMembers(members(&["ghost"], 1))
            } else {
                GroupWrite::IncrementCounter {
                    key: "n".into(),
                    delta: 1,
                }
            };
            store.write_group(&gid("g"), None, w, 2).await
        }));
    }
    for (i, append) in appends.into_iter().enumerate() {
        assert_eq!(append.await.unwrap().message.seq, i as u64 + 1);
    }
    let mut ok = 0;
    for w in writes {
        match w.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.kind(), StoreErrorKind::UserNotFound),
        }
    }
    assert_eq!(ok, 25);
    let record = store.get_groups(&[gid("g")]).await.unwrap().remove(0);
    assert_eq!(record.counters, object(json!({"n": 25})));
    assert_eq!(record.info.version, 26);
    let state = store
        .conversation_state(&uid("bob"), &c2c("alice", "bob"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.last_seq, 50);
}

/// A user's group conversations changed since `since`: (conversation → state, next cursor).
async fn group_sync<S: Store>(
    store: &S,
    user: &str,
    since: u64,
) -> (Vec<magpie_proto::ConversationState>, u64) {
    let page = store
        .changed_group_conversations(&uid(user), since, 100)
        .await
        .unwrap();
    assert!(!page.has_more);
    (page.conversations, page.version)
}

async fn append_ok<S: Store>(store: &S, message: NewMessage) -> Message {
    let appended = store.append_message(message, None).await.unwrap();
    assert!(!appended.duplicate);
    appended.message
}

pub async fn group_messages_are_stored_once_and_found_through_the_activity_clock<B: Backend>(
    b: &B,
) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob", "carol"]).await;
    let grp = ConversationId::group(&gid("g"));
    // A new group shows up in its members' sync at once, empty.
    store
        .create_group(
            new_group("g", "alice", &["bob"], GroupOptions::default()),
            1,
        )
        .await
        .unwrap();
    let (states, bob_cursor) = group_sync(&store, "bob", 0).await;
    assert_eq!(states.len(), 1);
    assert_eq!(
        (states[0].conversation_id.clone(), states[0].last_seq),
        (grp.clone(), 0)
    );
    assert!(group_sync(&store, "carol", 0).await.0.is_empty());

    for i in 1..=3 {
        let m = append_ok(
            &store,
            group_message("alice", "g", &format!("m{i}"), &[], false),
        )
        .await;
        assert_eq!(m.seq, i);
        assert_eq!(m.to, Peer::Group(gid("g")));
    }
    // A retry is deduped like any message.
    let retry = store
        .append_message(group_message("alice", "g", "m2", &[], false), None)
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.message.seq, 2);

    // Bob has no row of his own, yet sync finds the conversation with three unread.
    let (states, cursor) = group_sync(&store, "bob", bob_cursor).await;
    assert_eq!(states.len(), 1);
    let bob = &states[0];
    assert_eq!((bob.last_seq, bob.read_seq, bob.unread_count), (3, 0, 3));
    assert_eq!(bob.last_message.as_ref().map(|m| m.seq), Some(3));
    assert!(cursor > bob_cursor);
    assert!(group_sync(&store, "bob", cursor).await.0.is_empty());
    // The sender's own messages are read: their row moved with each send.
    let alice = store
        .conversation_state(&uid("alice"), &grp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((alice.read_seq, alice.unread_count), (3, 0));
    // One more message: the conversation comes back above the cursor.
    append_ok(&store, group_message("alice", "g", "m4", &[], false)).await;
    let (states, _) = group_sync(&store, "bob", cursor).await;
    assert_eq!(
        states.iter().map(|s| s.unread_count).collect::<Vec<_>>(),
        [4]
    );

    // Bob reads without ever having had a row: the read creates it.
    let read = store.mark_read(&uid("bob"), &grp, 2, 200).await.unwrap();
    assert!(read.changed);
    assert_eq!((read.state.read_seq, read.state.unread_count), (2, 2));
    assert_eq!(read.previous_read_seq, 0, "the read covers (0, 2]");
    let again = store.mark_read(&uid("bob"), &grp, 1, 201).await.unwrap();
    assert!(!again.changed);
    assert_eq!(again.previous_read_seq, 2);
    assert_eq!(
        store.group_read_positions(&gid("g")).await.unwrap(),
        vec![(uid("alice"), 4), (uid("bob"), 2)]
    );
    // A non-member has nothing to read.
    let err = store
        .mark_read(&uid("carol"), &grp, 1, 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::ConversationNotFound);

    // Pages of the group sync follow the stamps; a cursor from the future starts over.
    for g in ["h1", "h2", "h3"] {
        store
            .create_group(new_group(g, "carol", &[], GroupOptions::default()), 1)
            .await
            .unwrap();
    }
    let first = store
        .changed_group_conversations(&uid("carol"), 0, 2)
        .await
        .unwrap();
    assert!(first.has_more);
    assert_eq!(first.conversations.len(), 2);
    let rest = store
        .changed_group_conversations(&uid("carol"), first.version, 2)
        .await
        .unwrap();
    assert!(!rest.has_more);
    let seen: BTreeSet<String> = first
        .conversations
        .iter()
        .chain(&rest.conversations)
        .map(|s| s.conversation_id.to_string())
        .collect();
    assert_eq!(seen.len(), 3);
    let restarted = store
        .changed_group_conversations(&uid("carol"), rest.version + 1_000, 10)
        .await
        .unwrap();
    assert_eq!(restarted.conversations.len(), 3);

    // History holds each message once, addressed to the group.
    let page = store
        .get_messages(MessageQuery {
            conversation_id: grp,
            direction: Direction::Forward,
            anchor: Anchor::None,
            limit: 10,
            min_seq: 1,
        })
        .await
        .unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
}

pub async fn new_members_start_at_their_join_point<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob", "carol", "dave"]).await;
    let grp = ConversationId::group(&gid("g"));
    store
        .create_group(new_group("g", "alice", &[], GroupOptions::default()), 1)
        .await
        .unwrap();
    for i in 1..=3 {
        append_ok(
            &store,
            group_message("alice", "g", &format!("m{i}"), &[], false),
        )
        .await;
    }
    write(&store, "g", GroupWrite::AddMembers(members(&["bob"], 5))).await;
    let bob = store
        .group_members_by_id(&gid("g"), &[uid("bob")])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(bob.visible_from_seq, 4);
    // Nothing from before the join is unread or shown.
    let (states, _) = group_sync(&store, "bob", 0).await;
    let state = &states[0];
    assert_eq!(
        (state.last_seq, state.read_seq, state.unread_count),
        (3, 3, 0)
    );
    assert_eq!(state.last_message, None);
    append_ok(&store, group_message("alice", "g", "m4", &[], false)).await;
    let state = store
        .conversation_state(&uid("bob"), &grp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((state.read_seq, state.unread_count), (3, 1));
    assert_eq!(state.last_message.map(|m| m.seq), Some(4));
    // Reading below the join point changes nothing.
    assert!(
        !store
            .mark_read(&uid("bob"), &grp, 2, 9)
            .await
            .unwrap()
            .changed
    );
    let page = store
        .get_messages(MessageQuery {
            conversation_id: grp.clone(),
            direction: Direction::Backward,
            anchor: Anchor::None,
            limit: 10,
            min_seq: bob.visible_from_seq,
        })
        .await
        .unwrap();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [4]);
    assert!(!page.has_more);

    // With history shown to new members, a newcomer starts at 1.
    write(
        &store,
        "g",
        GroupWrite::UpdateInfo(GroupInfoUpdate {
            options: Some(GroupOptions {
                history_visible_to_new_members: true,
                ..GroupOptions::default()
            }),
            ..GroupInfoUpdate::default()
        }),
    )
    .await;
    write(&store, "g", GroupWrite::AddMembers(members(&["carol"], 6))).await;
    let carol = store
        .conversation_state(&uid("carol"), &grp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((carol.read_seq, carol.unread_count), (0, 4));
    // Blocking the group's messages is kept on the membership.
    let updated = write(
        &store,
        "g",
        GroupWrite::UpdateMembers {
            user_ids: vec![uid("carol")],
            update: MemberUpdate {
                receive_messages: Some(false),
                ..MemberUpdate::default()
            },
        },
    )
    .await;
    assert!(updated.info.version > 1);
    let carol = store
        .group_members_by_id(&gid("g"), &[uid("carol")])
        .await
        .unwrap()
        .remove(0);
    assert!(!carol.receive_messages);
    assert_eq!(carol.visible_from_seq, 1);
}

pub async fn mentions_mark_the_mentioned_until_they_read<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob", "carol"]).await;
    let grp = ConversationId::group(&gid("g"));
    store
        .create_group(
            new_group("g", "alice", &["bob", "carol"], GroupOptions::default()),
            1,
        )
        .await
        .unwrap();
    let state = |user: &'static str| {
        let (store, grp) = (&store, grp.clone());
        async move {
            store
                .conversation_state(&uid(user), &grp)
                .await
                .unwrap()
                .unwrap()
        }
    };
    let before = store
        .changed_conversations(&uid("bob"), 0, 100)
        .await
        .unwrap()
        .version;
    let sent = append_ok(&store, group_message("alice", "g", "m1", &["bob"], false)).await;
    assert_eq!(
        sent.mentions.as_ref().map(|m| m.user_ids.clone()),
        Some(vec![uid("bob")])
    );
    // The mention is a change of Bob's own: his sync by version sees it.
    let page = store
        .changed_conversations(&uid("bob"), before, 100)
        .await
        .unwrap();
    assert_eq!(page.conversations.len(), 1);
    assert!(page.conversations[0].mentioned);
    assert!(state("bob").await.mentioned);
    assert!(!state("carol").await.mentioned);
    append_ok(&store, group_message("alice", "g", "m2", &[], false)).await;
    assert!(state("bob").await.mentioned);
    // Reading past the mention clears it; reading up to just before keeps it.
    let read = store.mark_read(&uid("bob"), &grp, 0, 5).await.unwrap();
    assert!(!read.changed);
    assert!(read.state.mentioned);
    let read = store.mark_read(&uid("bob"), &grp, 1, 5).await.unwrap();
    assert!(!read.state.mentioned);
    // "@all" marks everyone, without a row per member.
    append_ok(&store, group_message("alice", "g", "m3", &[], true)).await;
    let (states, _) = group_sync(&store, "carol", 0).await;
    assert!(states[0].mentioned);
    assert!(state("bob").await.mentioned);
    assert!(
        !state("alice").await.mentioned,
        "the sender read their own message"
    );
    let history = store
        .get_messages(MessageQuery {
            conversation_id: grp.clone(),
            direction: Direction::Forward,
            anchor: Anchor::None,
            limit: 10,
            min_seq: 1,
        })
        .await
        .unwrap();
    assert_eq!(
        history.messages[2].mentions.as_ref().map(|m| m.all),
        Some(true)
    );
    assert_eq!(history.messages[1].mentions, None);
    let read = store.mark_read(&uid("carol"), &grp, 3, 6).await.unwrap();
    assert!(!read.state.mentioned);
}

pub async fn former_members_lose_the_group_conversation<B: Backend>(b: &B) {
    let store = b.open().await;
    create_users(&store, &["alice", "bob"]).await;
    let grp = ConversationId::group(&gid("g"));
    store
        .create_group(
            new_group("g", "alice", &["bob"], GroupOptions::default()),
            1,
        )
        .await
        .unwrap();
    append_ok(&store, group_message("alice", "g", "m1", &["bob"], false)).await;
    store.mark_read(&uid("bob"), &grp, 1, 5).await.unwrap();
    let before = store
        .changed_conversations(&uid("bob"), 0, 100)
        .await
        .unwrap();
    assert_eq!(before.conversations.len(), 1);
    write(&store, "g", GroupWrite::RemoveMembers(vec![uid("bob")])).await;
    append_ok(&store, group_message("alice", "g", "m2", &[], false)).await;
    // Nothing of the group is visible to Bob any more, neither by row nor by membership.
    assert_eq!(
        store.conversation_state(&uid("bob"), &grp).await.unwrap(),
        None
    );
    assert!(group_sync(&store, "bob", 0).await.0.is_empty());
    let after = store
        .changed_conversations(&uid("bob"), 0, 100)
        .await
        .unwrap();
    assert!(after.conversations.is_empty());
    // His change counter never goes back: the next change is above every cursor he was given.
    assert!(after.version >= before.version);
    append_ok(&store, new_message("alice", "bob", "c1", "hi", 100)).await;
    let next = store
        .changed_conversations(&uid("bob"), before.version, 100)
        .await
        .unwrap();
    assert_eq!(
        next.conversations.len(),
        1,
        "a change after the removal is seen"
    );
    // Destroying a group forgets every member's row.
    append_ok(&store, group_message("alice", "g", "m3", &[], false)).await;
    write(&store, "g", GroupWrite::Destroy).await;
    assert_eq!(
        store.conversation_state(&uid("alice"), &grp).await.unwrap(),
        None
    );
}
