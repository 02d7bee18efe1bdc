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
use magpie_proto::message::Peer;
use magpie_proto::rest::UpdateUser;
use magpie_proto::{ConversationId, Message, MessageContent, MessageId, UserId};
use serde_json::json;

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

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1_000);

fn new_message(from: &str, to: &str, client_msg_id: &str, text: &str, time: i64) -> NewMessage {
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
            server_time: time,
        },
        participants: vec![from, to],
    }
}

async fn create_users<S: Store>(store: &S, ids: &[&str]) {
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
