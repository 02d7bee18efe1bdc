//! The group manager against the real server: operations, typed errors, `GroupChanged`
//! events, and the local cache of joined groups and members on every device concerned.
//!
//! A module of the `e2e` binary (see there), so it reuses its helpers.

use magpie_sdk::proto::group::{
    CreateGroupRequest, GroupOptionsPatch, InviteOutcome, MembersPage, MembersRequest,
    UpdateGroupRequest,
};
use magpie_sdk::{
    ConversationKind, GroupChange, GroupId, GroupInfo, GroupManager, GroupMember, GroupNoticeKind,
    GroupReadEvent, GroupRole, JoinPolicy, Mentions, Peer, ReadReceiptsRequest,
};

use super::*;

fn gid(id: &str) -> GroupId {
    GroupId::new(id).expect("group id")
}

fn create_request(id: &str, members: &[&str]) -> CreateGroupRequest {
    CreateGroupRequest {
        group_id: Some(gid(id)),
        name: format!("group {id}"),
        avatar_url: None,
        introduction: None,
        ext: None,
        options: GroupOptionsPatch {
            join_policy: Some(JoinPolicy::Open),
            ..GroupOptionsPatch::default()
        },
        members: members.iter().map(|m| user(m)).collect(),
        owner: None,
    }
}

fn all_members(group: &str) -> MembersRequest {
    MembersRequest {
        group_id: gid(group),
        role: None,
        after: None,
        limit: None,
    }
}

/// Waits for a `GroupChanged` event of one group whose change matches.
async fn group_event(
    device: &mut Device,
    group: &str,
    what: &str,
    matches: impl Fn(&GroupChange) -> bool,
) -> magpie_sdk::GroupEvent {
    let event = wait_for(&mut device.events, what, |e| {
        matches!(e, ClientEvent::GroupChanged(g) if g.group_id.as_str() == group && matches(&g.change))
    })
    .await;
    match event {
        ClientEvent::GroupChanged(event) => *event,
        _ => unreachable!(),
    }
}

/// Signs `users` up (see [`sign_up`]); the first creates group `id` with the others as
/// members. Returns each user's device and token, in order.
async fn in_a_group<const N: usize>(
    server: &TestServer,
    id: &str,
    users: [&str; N],
) -> [(Device, String); N] {
    let mut signed_up = Vec::with_capacity(N);
    for name in users {
        signed_up.push(sign_up(server, name).await);
    }
    signed_up[0].0.create_group(id, &users[1..]).await;
    match signed_up.try_into() {
        Ok(all) => all,
        Err(_) => unreachable!("one per user"),
    }
}

/// [`in_a_group`], once every member has received the group's "created" notice (seq 1).
async fn in_a_notified_group<const N: usize>(
    server: &TestServer,
    id: &str,
    users: [&str; N],
) -> [(Device, String); N] {
    let mut all = in_a_group(server, id, users).await;
    for (member, _) in &mut all[1..] {
        member.receive_exactly(1).await;
    }
    all
}

impl Device {
    fn groups(&self) -> GroupManager {
        self.client.groups()
    }

    async fn create_group(&self, id: &str, members: &[&str]) -> GroupInfo {
        self.groups()
            .create(create_request(id, members))
            .await
            .expect("create")
    }

    /// Fetches a group's members from the server.
    async fn fetch_members(&self, group: &str) -> MembersPage {
        self.groups()
            .members(all_members(group))
            .await
            .expect("members")
    }

    async fn cached_members(&self, group: &str) -> Vec<GroupMember> {
        self.groups()
            .cached_members(&gid(group))
            .await
            .expect("cache")
    }

    /// Mutes `member` for `seconds` (0 unmutes).
    async fn mute(&self, group: &str, member: &str, seconds: u64) {
        self.groups()
            .mute(&gid(group), vec![user(member)], seconds)
            .await
            .expect("mute");
    }

    /// Waits for a `GroupRead` event.
    async fn group_read(&mut self) -> GroupReadEvent {
        let event = wait_for(&mut self.events, "group_read", |e| {
            matches!(e, ClientEvent::GroupRead(_))
        })
        .await;
        let ClientEvent::GroupRead(event) = event else {
            unreachable!("matched above")
        };
        event
    }

    async fn cached(&self, group: &str) -> Option<GroupInfo> {
        self.groups()
            .cached_group(&gid(group))
            .await
            .expect("cache")
    }

    async fn member_count(&self, group: &str) -> Option<u32> {
        self.cached(group).await.map(|g| g.member_count)
    }

    async fn cached_member_ids(&self, group: &str) -> Vec<String> {
        self.cached_members(group)
            .await
            .into_iter()
            .map(|m| m.user_id.as_str().to_owned())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_operations_keep_every_members_cache_in_step() {
    let server = fast_server().await;
    let (mut alice, _) = sign_up(&server, "alice").await;
    let (mut bob, _) = sign_up_with(&server, "bob", |spec| spec.codec(Codec::MsgPack)).await;
    let (mut cat, _) = sign_up(&server, "cat").await;

    // Create with a member: both caches hold the group, the member hears `created`.
    let info = alice.create_group("g1", &["bob"]).await;
    assert_eq!((info.member_count, info.owner.as_str()), (2, "alice"));
    assert_eq!(
        alice.groups().cached_groups().await.expect("cache"),
        std::slice::from_ref(&info)
    );
    let created = group_event(&mut bob, "g1", "created", |c| {
        matches!(c, GroupChange::Created { .. })
    })
    .await;
    assert_eq!(created.actor, Some(user("alice")));
    assert_eq!(bob.cached("g1").await, Some(info.clone()));
    assert_eq!(cat.cached("g1").await, None, "not a member");

    // Fetched members are cached.
    let page = alice.fetch_members("g1").await;
    assert_eq!(page.members.len(), 2);
    assert_eq!(alice.cached_member_ids("g1").await, ["alice", "bob"]);
    bob.fetch_members("g1").await;

    // Invite: added at once; every member's cache counts and lists the newcomer, and the
    // newcomer's cache gains the group.
    let invited = alice
        .groups()
        .invite(&gid("g1"), vec![user("cat")], None)
        .await
        .expect("invite");
    assert_eq!(invited.results[0].outcome, InviteOutcome::Added);
    for device in [&mut alice, &mut bob] {
        group_event(device, "g1", "members_joined", |c| {
            matches!(c, GroupChange::MembersJoined { .. })
        })
        .await;
        assert_eq!(device.member_count("g1").await, Some(3));
        assert_eq!(
            device.cached_member_ids("g1").await,
            ["alice", "bob", "cat"]
        );
    }
    group_event(&mut cat, "g1", "members_joined", |c| {
        matches!(c, GroupChange::MembersJoined { .. })
    })
    .await;
    assert_eq!(cat.member_count("g1").await, Some(3));

    // Mute: the muted member's row shows it everywhere it is cached.
    alice.mute("g1", "bob", 600).await;
    for device in [&mut alice, &mut bob] {
        group_event(device, "g1", "mute_changed", |c| {
            matches!(c, GroupChange::MuteChanged { .. })
        })
        .await;
        let members = device.cached_members("g1").await;
        let bob_row = members
            .iter()
            .find(|m| m.user_id == user("bob"))
            .expect("bob");
        assert!(bob_row.muted_until.is_some(), "{bob_row:?}");
    }
    alice.mute("g1", "bob", 0).await;
    group_event(&mut bob, "g1", "unmuted", |c| {
        matches!(c, GroupChange::MuteChanged { until: None, .. })
    })
    .await;
    let members = bob.cached_members("g1").await;
    assert!(
        members.iter().all(|m| m.muted_until.is_none()),
        "{members:?}"
    );

    // Roles: an admin row everywhere.
    alice
        .groups()
        .set_role(&gid("g1"), vec![user("bob")], GroupRole::Admin)
        .await
        .expect("set role");
    group_event(&mut bob, "g1", "admin_added", |c| {
        matches!(c, GroupChange::AdminAdded { .. })
    })
    .await;
    for device in [&alice, &bob] {
        let members = device.cached_members("g1").await;
        assert_eq!(members[1].role, GroupRole::Admin, "{members:?}");
    }

    // Kick: the kicked member forgets the group, the others forget the member.
    alice
        .groups()
        .kick(&gid("g1"), vec![user("cat")], None)
        .await
        .expect("kick");
    group_event(&mut cat, "g1", "members_kicked", |c| {
        matches!(c, GroupChange::MembersKicked { .. })
    })
    .await;
    assert_eq!(cat.cached("g1").await, None);
    for device in [&mut alice, &mut bob] {
        group_event(device, "g1", "members_kicked", |c| {
            matches!(c, GroupChange::MembersKicked { .. })
        })
        .await;
        assert_eq!(device.member_count("g1").await, Some(2));
        assert_eq!(device.cached_member_ids("g1").await, ["alice", "bob"]);
    }

    // Join an open group: cached when the call returns; the others see the newcomer.
    let joined = cat.groups().join(&gid("g1"), None).await.expect("join");
    assert!(joined.joined);
    assert_eq!(cat.member_count("g1").await, Some(3));
    group_event(&mut alice, "g1", "members_joined", |c| {
        matches!(c, GroupChange::MembersJoined { .. })
    })
    .await;
    assert_eq!(alice.member_count("g1").await, Some(3));

    // Leave: gone from the leaver's cache at once, and from the others' member lists.
    cat.groups().leave(&gid("g1")).await.expect("leave");
    assert_eq!(cat.cached("g1").await, None);
    assert!(
        cat.groups()
            .cached_groups()
            .await
            .expect("cache")
            .is_empty()
    );
    group_event(&mut alice, "g1", "member_left", |c| {
        matches!(c, GroupChange::MemberLeft { .. })
    })
    .await;
    assert_eq!(alice.member_count("g1").await, Some(2));
    assert_eq!(alice.cached_member_ids("g1").await, ["alice", "bob"]);

    // Info changes reach every cache.
    let update = UpdateGroupRequest {
        name: Some("renamed".into()),
        announcement: Some(Some("hello all".into())),
        ..UpdateGroupRequest::default()
    };
    let updated = alice
        .groups()
        .update(&gid("g1"), update)
        .await
        .expect("update");
    assert_eq!(updated.name, "renamed");
    group_event(&mut bob, "g1", "announcement_changed", |c| {
        matches!(c, GroupChange::AnnouncementChanged { .. })
    })
    .await;
    let bobs = bob.cached("g1").await.expect("cached");
    assert_eq!(bobs.name, "renamed");
    assert_eq!(bobs.announcement.as_deref(), Some("hello all"));

    // Destroy: gone everywhere.
    alice.groups().destroy(&gid("g1")).await.expect("destroy");
    assert_eq!(alice.cached("g1").await, None);
    group_event(&mut bob, "g1", "destroyed", |c| {
        matches!(c, GroupChange::Destroyed)
    })
    .await;
    assert_eq!(bob.cached("g1").await, None);
    assert!(bob.cached_member_ids("g1").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refusals_come_back_with_their_error_codes() {
    let server = fast_server().await;
    let (alice, _) = sign_up(&server, "alice").await;
    let (bob, _) = sign_up(&server, "bob").await;
    let (cat, _) = sign_up(&server, "cat").await;
    let mut request = create_request("small", &["bob"]);
    request.options.max_members = Some(2);
    alice.groups().create(request).await.expect("create");

    let update = UpdateGroupRequest {
        name: Some("mine now".into()),
        ..UpdateGroupRequest::default()
    };
    let err = bob
        .groups()
        .update(&gid("small"), update)
        .await
        .expect_err("a member may not update");
    assert_eq!(err.kind(), ErrorKind::Server(ErrorCode::Forbidden), "{err}");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    assert_eq!(
        err.server_error().map(|b| b.code),
        Some(ErrorCode::Forbidden)
    );

    let err = cat
        .groups()
        .members(all_members("small"))
        .await
        .expect_err("an outsider may not list members");
    assert_eq!(err.code(), Some(ErrorCode::NotGroupMember), "{err}");

    let err = cat
        .groups()
        .join(&gid("small"), None)
        .await
        .expect_err("full");
    assert_eq!(err.code(), Some(ErrorCode::GroupFull), "{err}");
    assert_eq!(cat.cached("small").await, None);

    let err = alice
        .groups()
        .leave(&gid("small"))
        .await
        .expect_err("the owner cannot leave");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    assert!(
        alice.cached("small").await.is_some(),
        "a refusal changes nothing"
    );

    let err = alice
        .groups()
        .info(vec![gid("nope")])
        .await
        .map(|groups| groups.len());
    assert_eq!(err.expect("unknown groups are left out"), 0);
    let err = alice
        .groups()
        .destroy(&gid("nope"))
        .await
        .expect_err("no such group");
    assert_eq!(err.code(), Some(ErrorCode::GroupNotFound), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_cache_survives_a_restart_and_catches_up_after_one() {
    let mut server = fast_server().await;
    let (mut alice, alice_token) = sign_up(&server, "alice").await;
    let (bob, _) = sign_up(&server, "bob").await;
    alice.create_group("keep", &["bob"]).await;
    alice.create_group("doomed", &["bob"]).await;
    alice.fetch_members("keep").await;
    let before = alice.groups().cached_groups().await.expect("cache");
    assert_eq!(before.len(), 2);

    // A new client on the same data directory: the cache is there, and reads it without the
    // network (the server is down).
    alice
        .restart(DeviceSpec::new(&server, "alice-1"), "alice", &alice_token)
        .await;
    server.stop().await;
    alice
        .wait_state("the disconnect", |s| {
            matches!(s, ConnectionState::Disconnected { .. })
        })
        .await;
    assert_eq!(alice.groups().cached_groups().await.expect("cache"), before);
    assert_eq!(alice.cached_member_ids("keep").await, ["alice", "bob"]);
    let err = alice
        .groups()
        .members(all_members("keep"))
        .await
        .expect_err("offline");
    assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");

    // Changes made while this device is away (events it never got) are picked up after the
    // next login: a group that moved on is re-read and its member rows dropped, a destroyed
    // one forgotten.
    server.restart().await;
    alice.client.logout().await.expect("logout");
    alice
        .wait_state("the logout", |s| {
            *s == ConnectionState::Disconnected {
                reason: DisconnectReason::LoggedOut,
            }
        })
        .await;
    let bob = {
        // Bob's client reconnected to the restarted server by itself.
        let mut bob = bob;
        wait_for(&mut bob.events, "bob back", |e| {
            matches!(e, ClientEvent::SyncFinished)
        })
        .await;
        bob
    };
    bob.groups().leave(&gid("keep")).await.expect("leave");
    let (status, _) = server.rest("DELETE", "/v1/groups/doomed", None).await;
    assert_eq!(status, 200);

    let (client, mut events) = DeviceSpec::new(&server, "alice-1")
        .start(alice.dir.path(), "alice", &alice_token)
        .await;
    wait_for(&mut events, "sync", |e| {
        matches!(e, ClientEvent::SyncFinished)
    })
    .await;
    let groups = client.groups().cached_groups().await.expect("cache");
    let ids: Vec<&str> = groups.iter().map(|g| g.group_id.as_str()).collect();
    assert_eq!(ids, ["keep"]);
    assert_eq!(groups[0].member_count, 1);
    assert!(groups[0].version > before[1].version);
    let members = client
        .groups()
        .cached_members(&gid("keep"))
        .await
        .expect("cache");
    assert!(
        members.is_empty(),
        "rows from before a missed change are dropped: {members:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Group messages
// ---------------------------------------------------------------------------------------------

fn group_conv(id: &str) -> ConversationId {
    ConversationId::group(&gid(id))
}

fn mentions(users: &[&str], all: bool) -> Option<Mentions> {
    Some(Mentions {
        user_ids: users.iter().map(|u| user(u)).collect(),
        all,
    })
}

/// A timeline notice's kind and the users it names; `None` for other messages.
fn notice(message: &Message) -> Option<(GroupNoticeKind, Vec<String>)> {
    match &message.content {
        MessageContent::GroupNotice(body) => Some((
            body.kind,
            body.user_ids
                .iter()
                .map(|u| u.as_str().to_owned())
                .collect(),
        )),
        _ => None,
    }
}

impl Device {
    async fn send_group(&self, group: &str, text: &str, mentioned: Option<Mentions>) -> Message {
        self.chat()
            .send_group(gid(group), MessageContent::text(text), mentioned, None)
            .await
            .expect("group send")
    }

    /// The cached conversation (which must be known).
    async fn conversation(&self, id: &ConversationId) -> magpie_sdk::Conversation {
        self.chat()
            .conversation(id)
            .await
            .expect("cache")
            .unwrap_or_else(|| panic!("{id} is not cached"))
    }

    /// Seqs of the cached messages of a conversation.
    async fn cached_seqs(&self, id: &ConversationId) -> Vec<u64> {
        let page = self
            .chat()
            .load_messages(id, None, 200)
            .await
            .expect("page");
        page.messages.iter().filter_map(|m| m.seq).collect()
    }
}

/// The sync cursors kept in a device's local database (`meta`), read from the file.
fn stored_cursors(device: &Device, user_id: &str) -> (u64, u64) {
    let path = device.dir.path().join(user_id).join("magpie.db");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the local database");
    let read = |key: &str| -> u64 {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
            row.get::<_, String>(0)
        })
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(0)
    };
    (read("sync_version"), read("groups_sync_version"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_reach_every_member_once_in_order_live_and_through_sync() {
    let server = fast_server().await;
    let alice_token = server.user_with_token("alice").await;
    let carol_token = server.user_with_token("carol").await;
    let alice = DeviceSpec::new(&server, "alice-phone")
        .platform(Platform::Ios)
        .login("alice", &alice_token)
        .await;
    let mut alice_desk = DeviceSpec::new(&server, "alice-desk")
        .login("alice", &alice_token)
        .await;
    let (mut bob, _) = sign_up_with(&server, "bob", |spec| spec.codec(Codec::MsgPack)).await;
    // Carol is a member but offline throughout.
    alice.create_group("g", &["bob", "carol"]).await;
    let g = group_conv("g");

    let mut sent = Vec::new();
    for i in 1..=5 {
        sent.push(alice.send_group("g", &format!("hello {i}"), None).await);
    }
    // Seq 1 is the server's "created" notice.
    assert_eq!(seqs(&sent), vec![2, 3, 4, 5, 6]);
    assert!(sent.iter().all(|m| m.conversation_id == g));
    assert!(sent.iter().all(|m| m.to == Peer::Group(gid("g"))));

    let at_bob = bob.receive_exactly(6).await;
    assert_eq!(seqs(&at_bob), (1..=6).collect::<Vec<_>>());
    assert_eq!(notice(&at_bob[0]), Some((GroupNoticeKind::Created, vec![])));
    assert_eq!(at_bob[0].from, user("alice"));
    assert_eq!(
        &at_bob[1..],
        &sent[..],
        "every message once, in order, as stored"
    );
    let at_desk = alice_desk.receive_exactly(6).await;
    assert_eq!(&at_desk[1..], &sent[..], "the sender's other device too");

    let bobs = bob.conversation(&g).await;
    assert_eq!(bobs.kind, ConversationKind::Group);
    assert_eq!(bobs.peer, None);
    assert_eq!(bobs.group_id(), Some(gid("g")));
    assert_eq!(bobs.target(), Some(Peer::Group(gid("g"))));
    assert_eq!((bobs.last_seq, bobs.read_seq, bobs.unread_count), (6, 0, 6));
    assert_eq!(bobs.last_message.as_ref().map(text), Some("hello 5".into()));
    assert!(!bobs.mentioned);
    let alices = alice.conversation(&g).await;
    assert_eq!(
        (alices.read_seq, alices.unread_count),
        (6, 0),
        "one's own sends read the conversation"
    );
    assert_eq!(bob.cached_seqs(&g).await, (1..=6).collect::<Vec<_>>());

    // Carol's first login: the group conversation comes through sync with its unread count.
    let mut carol = DeviceSpec::new(&server, "carol-1")
        .login("carol", &carol_token)
        .await;
    assert_eq!(seqs(&carol.synced), (1..=6).collect::<Vec<_>>());
    assert_eq!(&carol.synced[1..], &sent[..]);
    let carols = carol.conversation(&g).await;
    assert_eq!(
        (carols.last_seq, carols.read_seq, carols.unread_count),
        (6, 0, 6)
    );
    assert_eq!(carol.chat().total_unread().await.expect("total"), 6);
    let (own_cursor, groups_cursor) = stored_cursors(&carol, "carol");
    assert!(groups_cursor > 0, "the group cursor is kept");

    // Offline again: a group message and a one-to-one message wait on the two sides of sync.
    carol.client.logout().await.expect("logout");
    let from_bob = bob.send_group("g", "while you were out", None).await;
    assert_eq!(from_bob.seq, 7);
    let direct = alice.send_text("carol", "psst").await;
    carol
        .restart(DeviceSpec::new(&server, "carol-1"), "carol", &carol_token)
        .await;
    // The two conversations come in either order; each message once.
    assert_eq!(carol.synced.len(), 2, "only the news: {:?}", carol.synced);
    assert!(carol.synced.contains(&from_bob) && carol.synced.contains(&direct));
    let carols = carol.conversation(&g).await;
    assert_eq!((carols.last_seq, carols.unread_count), (7, 7));
    let (own_after, groups_after) = stored_cursors(&carol, "carol");
    assert!(own_after > own_cursor, "{own_after} > {own_cursor}");
    assert!(
        groups_after > groups_cursor,
        "{groups_after} > {groups_cursor}"
    );

    // The group cursor is passed back: a sync with nothing new in the group leaves it out.
    carol.client.logout().await.expect("logout");
    alice.send_text("carol", "again").await;
    let (client, mut events) = DeviceSpec::new(&server, "carol-1")
        .start(carol.dir.path(), "carol", &carol_token)
        .await;
    let mut updated = Vec::new();
    while let ClientEvent::ConversationUpdated(c) = wait_for(&mut events, "sync", |e| {
        matches!(
            e,
            ClientEvent::ConversationUpdated(_) | ClientEvent::SyncFinished
        )
    })
    .await
    {
        updated.push(c.conversation_id);
    }
    assert!(updated.contains(&direct.conversation_id), "{updated:?}");
    assert!(!updated.contains(&g), "{updated:?}");
    carol.client = client;
    carol.events = events;

    // A read reaches the server: a fresh device of carol's sees it read.
    let read = carol.chat().mark_read(&g, Some(5)).await.expect("read");
    assert_eq!((read.read_seq, read.unread_count), (5, 2));
    let fresh = DeviceSpec::new(&server, "carol-2")
        .platform(Platform::Android)
        .login("carol", &carol_token)
        .await;
    let fresh_row = fresh.conversation(&g).await;
    assert_eq!((fresh_row.read_seq, fresh_row.unread_count), (5, 2));
    assert_eq!(fresh.cached_seqs(&g).await, (1..=7).collect::<Vec<_>>());
    bob.receive_exactly(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_joins_later_sees_history_from_their_join_notice_on() {
    let server = fast_server().await;
    let (alice, _) = sign_up(&server, "alice").await;
    let (mut dan, dan_token) = sign_up(&server, "dan").await;
    alice.create_group("late", &[]).await;
    for i in 1..=3 {
        alice.send_group("late", &format!("before {i}"), None).await;
    }

    let joined = dan.groups().join(&gid("late"), None).await.expect("join");
    assert!(joined.joined);
    let after = alice.send_group("late", "welcome", None).await;
    assert_eq!(after.seq, 6);

    // Live: the join notice (seq 5) and what follows; nothing before it.
    let got = dan.receive_exactly(2).await;
    assert_eq!(seqs(&got), vec![5, 6]);
    assert_eq!(
        notice(&got[0]),
        Some((GroupNoticeKind::MemberJoined, vec!["dan".to_owned()]))
    );
    assert_eq!(got[1], after);
    let g = group_conv("late");
    let row = dan.conversation(&g).await;
    assert_eq!(
        (row.last_seq, row.read_seq, row.unread_count),
        (6, 4, 2),
        "what was sent before the join is not unread"
    );
    assert_eq!(dan.cached_seqs(&g).await, vec![5, 6]);
    let history = dan
        .chat()
        .fetch_history(&g, HistoryQuery::before_seq(5, 50))
        .await
        .expect("history");
    assert!(history.messages.is_empty(), "{:?}", history.messages);
    assert!(!history.has_more);
    let page = dan
        .chat()
        .fetch_history(&g, HistoryQuery::default())
        .await
        .expect("history");
    assert_eq!(seqs(&page.messages), vec![5, 6]);

    // A new device of dan's gets the same through sync.
    let fresh = DeviceSpec::new(&server, "dan-2")
        .platform(Platform::Web)
        .login("dan", &dan_token)
        .await;
    assert_eq!(seqs(&fresh.synced), vec![5, 6]);
    let row = fresh.conversation(&g).await;
    assert_eq!((row.last_seq, row.read_seq, row.unread_count), (6, 4, 2));

    // The others' timelines show the join too.
    let page = alice
        .chat()
        .load_messages(&g, None, 50)
        .await
        .expect("page");
    let kinds: Vec<_> = page
        .messages
        .iter()
        .map(|m| m.to_message().as_ref().and_then(notice).map(|n| n.0))
        .collect();
    assert_eq!(
        kinds,
        [
            Some(GroupNoticeKind::Created),
            None,
            None,
            None,
            Some(GroupNoticeKind::MemberJoined),
            None
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_marks_the_mentioned_members_conversation_until_read() {
    let server = fast_server().await;
    let [(alice, _), (mut bob, bob_token), (mut carol, carol_token)] =
        in_a_notified_group(&server, "m", ["alice", "bob", "carol"]).await;
    let g = group_conv("m");

    // By id: bob is marked, carol is not; a non-member named is dropped by the server.
    let sent = alice
        .send_group("m", "@bob look", mentions(&["bob", "nobody"], false))
        .await;
    assert_eq!(sent.mentions, mentions(&["bob"], false));
    let got = bob.receive_exactly(1).await;
    assert_eq!(got[0].mentions, mentions(&["bob"], false));
    carol.receive_exactly(1).await;
    assert!(bob.conversation(&g).await.mentioned);
    assert!(!carol.conversation(&g).await.mentioned);
    assert!(!alice.conversation(&g).await.mentioned);
    let local = bob
        .chat()
        .load_messages(&g, None, 10)
        .await
        .expect("page")
        .messages;
    assert_eq!(local[1].mentions, mentions(&["bob"], false));

    // A later message does not clear it; reading past the mention does.
    alice.send_group("m", "more", None).await;
    bob.receive_exactly(1).await;
    carol.receive_exactly(1).await;
    let row = bob.chat().mark_read(&g, Some(1)).await.expect("read");
    assert!(row.mentioned, "the mention (seq 2) is still unread");
    let row = bob.chat().mark_read(&g, None).await.expect("read");
    assert!(!row.mentioned);
    assert_eq!((row.read_seq, row.unread_count), (3, 0));

    // @all while carol is offline: her next sync says so, and so does the server to a new
    // device of bob's after he read it.
    carol.client.logout().await.expect("logout");
    alice
        .send_group("m", "@all meeting", mentions(&[], true))
        .await;
    assert!(
        bob.receive_exactly(1).await[0]
            .mentions
            .as_ref()
            .is_some_and(|m| m.all)
    );
    assert!(bob.conversation(&g).await.mentioned);
    carol
        .restart(DeviceSpec::new(&server, "carol-1"), "carol", &carol_token)
        .await;
    assert_eq!(seqs(&carol.synced), vec![4]);
    let row = carol.conversation(&g).await;
    assert!(row.mentioned);
    assert_eq!(row.unread_count, 4);
    let row = carol.chat().mark_read(&g, None).await.expect("read");
    assert!(!row.mentioned);

    // New devices that pull no history (a window of 0): only sync's marker can tell them.
    let carol_again = DeviceSpec::new(&server, "carol-2")
        .platform(Platform::Web)
        .window(0)
        .login("carol", &carol_token)
        .await;
    assert!(carol_again.synced.is_empty());
    assert!(
        !carol_again.conversation(&g).await.mentioned,
        "read on the server"
    );
    let bob_again = DeviceSpec::new(&server, "bob-2")
        .platform(Platform::Web)
        .window(0)
        .login("bob", &bob_token)
        .await;
    assert!(bob_again.synced.is_empty());
    let row = bob_again.conversation(&g).await;
    assert!(row.mentioned, "the server's sync marks it: {row:?}");
    assert_eq!((row.read_seq, row.unread_count), (3, 1));

    // Mentions are for groups only, and bounded.
    let err = alice
        .chat()
        .send_to(
            Peer::User(user("bob")),
            MessageContent::text("hi"),
            None,
            mentions(&["bob"], false),
        )
        .await
        .expect_err("mentions in a one-to-one message");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let many: Vec<String> = (0..31).map(|i| format!("u{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let err = alice
        .chat()
        .send_group(
            gid("m"),
            MessageContent::text("hi"),
            mentions(&many, false),
            None,
        )
        .await
        .expect_err("31 mentions");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_group_sends_fail_with_typed_errors() {
    let server = fast_server().await;
    let [(alice, _), (mut bob, _)] = in_a_group(&server, "quiet", ["alice", "bob"]).await;
    let (dan, _) = sign_up(&server, "dan").await;
    alice.mute("quiet", "bob", 600).await;

    let err = bob
        .chat()
        .send_group(
            gid("quiet"),
            MessageContent::text("let me talk"),
            None,
            None,
        )
        .await
        .expect_err("muted");
    assert_eq!(err.kind(), ErrorKind::Server(ErrorCode::Muted), "{err}");
    let (conversation_id, client_msg_id, error) = bob.wait_failed().await;
    assert_eq!(conversation_id, group_conv("quiet"));
    assert_eq!(error.map(|e| e.code), Some(ErrorCode::Muted));
    let local = bob.local_message(&client_msg_id).await;
    assert_eq!(local.status, MessageStatus::Failed);
    assert_eq!(local.to, Peer::Group(gid("quiet")));

    // Unmuted, the failed message can be sent again with its id.
    alice.mute("quiet", "bob", 0).await;
    let resent = bob.chat().resend(&client_msg_id).await.expect("resend");
    assert_eq!(
        (resent.seq, resent.client_msg_id.as_str()),
        (2, client_msg_id.as_str())
    );

    // Everyone muted: members are refused, the owner is not.
    alice
        .groups()
        .mute_all(&gid("quiet"), true)
        .await
        .expect("mute all");
    let err = bob
        .chat()
        .send_group(gid("quiet"), MessageContent::text("?"), None, None)
        .await
        .expect_err("all muted");
    assert_eq!(err.code(), Some(ErrorCode::Muted), "{err}");
    assert_eq!(alice.send_group("quiet", "owners speak", None).await.seq, 3);

    let err = dan
        .chat()
        .send_group(gid("quiet"), MessageContent::text("hi"), None, None)
        .await
        .expect_err("not a member");
    assert_eq!(err.code(), Some(ErrorCode::NotGroupMember), "{err}");
    let err = dan
        .chat()
        .send_group(gid("nowhere"), MessageContent::text("hi"), None, None)
        .await
        .expect_err("no such group");
    assert_eq!(err.code(), Some(ErrorCode::GroupNotFound), "{err}");
    assert_eq!(dan.chat().pending_sends().await.expect("count"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_learn_who_read_their_group_messages() {
    let server = fast_server().await;
    let [(mut alice, _), (mut bob, _), (mut carol, _)] =
        in_a_group(&server, "r", ["alice", "bob", "carol"]).await;
    let g = group_conv("r");
    let first = alice.send_group("r", "one", None).await;
    let second = alice.send_group("r", "two", None).await;
    assert_eq!((first.seq, second.seq), (2, 3));
    bob.receive_exactly(3).await;
    carol.receive_exactly(3).await;

    bob.chat().mark_read(&g, None).await.expect("read");
    let event = alice.group_read().await;
    assert_eq!(event.conversation_id, g);
    assert_eq!(event.reader, Some(user("bob")));
    assert_eq!(event.read_seq, 3);
    let counts = read_counts(&event);
    assert_eq!(
        counts,
        [(2, 1, 1), (3, 1, 1)],
        "the notice is not alice's message"
    );

    let receipts = |seq, read, after: Option<&str>, limit| ReadReceiptsRequest {
        conversation_id: g.clone(),
        seq,
        read,
        after: after.map(user),
        limit,
    };
    let answer = alice
        .groups()
        .read_receipts(receipts(3, true, None, None))
        .await
        .expect("receipts");
    assert_eq!(
        (answer.seq, answer.read_count, answer.unread_count),
        (3, 1, 1)
    );
    assert_eq!(answer.user_ids, Some(vec![user("bob")]));
    assert_eq!(answer.next_after, None);
    let answer = alice
        .groups()
        .read_receipts(receipts(3, false, None, None))
        .await
        .expect("receipts");
    assert_eq!(answer.user_ids, Some(vec![user("carol")]));

    // Carol reads only the first message: one event, for seq 2.
    carol.chat().mark_read(&g, Some(2)).await.expect("read");
    let event = alice.group_read().await;
    assert_eq!(
        (event.reader.as_ref().map(|r| r.as_str()), event.read_seq),
        (Some("carol"), 2)
    );
    let counts = read_counts(&event);
    assert_eq!(counts, [(2, 2, 0)]);

    // Paging the readers of seq 2, one at a time.
    let page = alice
        .groups()
        .read_receipts(receipts(2, true, None, Some(1)))
        .await
        .expect("receipts");
    assert_eq!((page.read_count, page.unread_count), (2, 0));
    assert_eq!(page.user_ids, Some(vec![user("bob")]));
    assert_eq!(page.next_after, Some(user("bob")));
    let page = alice
        .groups()
        .read_receipts(receipts(2, true, Some("bob"), Some(1)))
        .await
        .expect("receipts");
    assert_eq!(page.user_ids, Some(vec![user("carol")]));
    assert_eq!(page.next_after, None);

    // Bob did not send anything: no event for him; asking about a c2c conversation is refused.
    assert_quiet(&mut bob.events, Duration::from_millis(300), |e| {
        matches!(e, ClientEvent::GroupRead(_))
    })
    .await;
    let mut c2c = receipts(1, true, None, None);
    c2c.conversation_id = ConversationId::c2c(&user("alice"), &user("bob"));
    let err = alice
        .groups()
        .read_receipts(c2c)
        .await
        .expect_err("not a group");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = alice
        .groups()
        .read_receipts(receipts(99, true, None, None))
        .await
        .expect_err("no such message");
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_blocks_a_groups_messages_gets_no_pushes_but_sync_counts_them() {
    let server = fast_server().await;
    let [(alice, _), (mut bob, _), (mut carol, carol_token)] =
        in_a_notified_group(&server, "noisy", ["alice", "bob", "carol"]).await;
    let g = group_conv("noisy");
    carol.fetch_members("noisy").await;

    carol
        .groups()
        .set_receive(&gid("noisy"), false)
        .await
        .expect("block messages");
    let me = carol
        .cached_members("noisy")
        .await
        .into_iter()
        .find(|m| m.user_id == user("carol"))
        .expect("carol's row");
    assert!(!me.receive_messages);
    let members = alice.fetch_members("noisy").await;
    let carol_row = members
        .members
        .iter()
        .find(|m| m.user_id == user("carol"))
        .expect("still a member");
    assert!(!carol_row.receive_messages);

    let sent = [
        alice.send_group("noisy", "one", None).await,
        alice.send_group("noisy", "two", None).await,
    ];
    assert_eq!(bob.receive_exactly(2).await, sent, "others still get them");
    carol.receive_exactly(0).await;
    let row = carol.conversation(&g).await;
    assert_eq!((row.last_seq, row.unread_count), (1, 1), "nothing pushed");

    // The next sync brings them, counted as unread.
    carol
        .restart(DeviceSpec::new(&server, "carol-1"), "carol", &carol_token)
        .await;
    assert_eq!(carol.synced, sent);
    let row = carol.conversation(&g).await;
    assert_eq!((row.last_seq, row.unread_count), (3, 3));

    // Receiving again.
    carol
        .groups()
        .set_receive(&gid("noisy"), true)
        .await
        .expect("receive again");
    let third = alice.send_group("noisy", "three", None).await;
    assert_eq!(carol.receive_exactly(1).await, [third]);
    let err = server_outsider_set_receive(&server).await;
    assert_eq!(err, Some(ErrorCode::NotGroupMember));
}

/// Each message of a `GroupRead` event: its seq, read count and unread count.
fn read_counts(event: &GroupReadEvent) -> Vec<(u64, u32, u32)> {
    event
        .messages
        .iter()
        .map(|m| (m.seq, m.read_count, m.unread_count))
        .collect()
}

/// `group_set_receive` by a user who is not a member of the group.
async fn server_outsider_set_receive(server: &TestServer) -> Option<ErrorCode> {
    let (eve, _) = sign_up(server, "eve").await;
    eve.groups()
        .set_receive(&gid("noisy"), false)
        .await
        .err()
        .and_then(|e| e.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_left_behind_does_not_stall_a_new_devices_sync() {
    let server = fast_server().await;
    let [(alice, _), (bob, bob_token)] = in_a_group(&server, "left", ["alice", "bob"]).await;
    let mine = bob.send_group("left", "bye", None).await;
    assert_eq!(mine.seq, 2);
    bob.groups().leave(&gid("left")).await.expect("leave");
    alice.send_group("left", "after bob", None).await;
    let direct = alice.send_text("bob", "still friends").await;

    // A new device of bob's: sync finishes (login waits for it) and brings the rest.
    let fresh = DeviceSpec::new(&server, "bob-2")
        .platform(Platform::Web)
        .login("bob", &bob_token)
        .await;
    assert_eq!(
        fresh.synced,
        [direct],
        "the group's messages are not shown any more"
    );
    // The server forgets a former member's row of the group: nothing of it, and nothing sent
    // after bob left, reaches the new device.
    let row = fresh
        .chat()
        .conversation(&group_conv("left"))
        .await
        .expect("cache");
    assert_eq!(row, None, "a group left behind is not listed");
}
