//! The group manager against the real server: operations, typed errors, `GroupChanged`
//! events, and the local cache of joined groups and members on every device concerned.
//!
//! A module of the `e2e` binary (see there), so it reuses its helpers.

use magpie_sdk::proto::group::{
    CreateGroupRequest, GroupOptionsPatch, InviteOutcome, MembersRequest, UpdateGroupRequest,
};
use magpie_sdk::{GroupChange, GroupId, GroupInfo, GroupManager, GroupRole, JoinPolicy};

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

impl Device {
    fn groups(&self) -> GroupManager {
        self.client.groups()
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
        self.groups()
            .cached_members(&gid(group))
            .await
            .expect("cache")
            .into_iter()
            .map(|m| m.user_id.as_str().to_owned())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_operations_keep_every_members_cache_in_step() {
    let server = fast_server().await;
    let alice_token = server.user_with_token("alice").await;
    let bob_token = server.user_with_token("bob").await;
    let cat_token = server.user_with_token("cat").await;
    let mut alice = DeviceSpec::new(&server, "alice-1")
        .login("alice", &alice_token)
        .await;
    let mut bob = DeviceSpec::new(&server, "bob-1")
        .codec(Codec::MsgPack)
        .login("bob", &bob_token)
        .await;
    let mut cat = DeviceSpec::new(&server, "cat-1")
        .login("cat", &cat_token)
        .await;

    // Create with a member: both caches hold the group, the member hears `created`.
    let info = alice
        .groups()
        .create(create_request("g1", &["bob"]))
        .await
        .expect("create");
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
    let page = alice
        .groups()
        .members(all_members("g1"))
        .await
        .expect("members");
    assert_eq!(page.members.len(), 2);
    assert_eq!(alice.cached_member_ids("g1").await, ["alice", "bob"]);
    bob.groups()
        .members(all_members("g1"))
        .await
        .expect("members");

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
    alice
        .groups()
        .mute(&gid("g1"), vec![user("bob")], 600)
        .await
        .expect("mute");
    for device in [&mut alice, &mut bob] {
        group_event(device, "g1", "mute_changed", |c| {
            matches!(c, GroupChange::MuteChanged { .. })
        })
        .await;
        let members = device
            .groups()
            .cached_members(&gid("g1"))
            .await
            .expect("cache");
        let bob_row = members
            .iter()
            .find(|m| m.user_id == user("bob"))
            .expect("bob");
        assert!(bob_row.muted_until.is_some(), "{bob_row:?}");
    }
    alice
        .groups()
        .mute(&gid("g1"), vec![user("bob")], 0)
        .await
        .expect("unmute");
    group_event(&mut bob, "g1", "unmuted", |c| {
        matches!(c, GroupChange::MuteChanged { until: None, .. })
    })
    .await;
    let members = bob
        .groups()
        .cached_members(&gid("g1"))
        .await
        .expect("cache");
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
        let members = device
            .groups()
            .cached_members(&gid("g1"))
            .await
            .expect("cache");
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
    let alice_token = server.user_with_token("alice").await;
    let bob_token = server.user_with_token("bob").await;
    let cat_token = server.user_with_token("cat").await;
    let alice = DeviceSpec::new(&server, "alice-1")
        .login("alice", &alice_token)
        .await;
    let bob = DeviceSpec::new(&server, "bob-1")
        .login("bob", &bob_token)
        .await;
    let cat = DeviceSpec::new(&server, "cat-1")
        .login("cat", &cat_token)
        .await;
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
    let alice_token = server.user_with_token("alice").await;
    let bob_token = server.user_with_token("bob").await;
    let mut alice = DeviceSpec::new(&server, "alice-1")
        .login("alice", &alice_token)
        .await;
    let bob = DeviceSpec::new(&server, "bob-1")
        .login("bob", &bob_token)
        .await;
    alice
        .groups()
        .create(create_request("keep", &["bob"]))
        .await
        .expect("create");
    alice
        .groups()
        .create(create_request("doomed", &["bob"]))
        .await
        .expect("create");
    alice
        .groups()
        .members(all_members("keep"))
        .await
        .expect("members");
    let before = alice.groups().cached_groups().await.expect("cache");
    assert_eq!(before.len(), 2);

    // A new client on the same data directory: the cache is there, and reads it without the
    // network (the server is down).
    alice
        .restart(DeviceSpec::new(&server, "alice-1"), "alice", &alice_token)
        .await;
    server.stop().await;
    wait_for(&mut alice.events, "the disconnect", |e| {
        matches!(
            e,
            ClientEvent::ConnectionStateChanged(ConnectionState::Disconnected { .. })
        )
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
    wait_for(&mut alice.events, "the logout", |e| {
        matches!(
            e,
            ClientEvent::ConnectionStateChanged(ConnectionState::Disconnected {
                reason: DisconnectReason::LoggedOut
            })
        )
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

    let dir = alice.dir.path().to_owned();
    let client = DeviceSpec::new(&server, "alice-1").client(&dir);
    let mut events = client.events();
    client
        .login(user("alice"), &alice_token)
        .await
        .expect("login");
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
