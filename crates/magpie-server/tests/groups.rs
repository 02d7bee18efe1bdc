//! Group management over the WebSocket and the REST API: every permission rule, the events
//! each change sends to the right people, and the bad inputs.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use magpie_testkit::{RawClient, TestServer};
use serde_json::{Value, json};

/// A server and logged-in clients for the named users.
async fn setup(users: &[&str]) -> (TestServer, Vec<RawClient>) {
    let server = TestServer::start_without_rate_limits().await;
    let clients = server.log_in_all(users).await;
    (server, clients)
}

/// Waits for the `group` event with this change.
async fn change(client: &mut RawClient, kind: &str) -> Value {
    loop {
        let event = client.event("group").await;
        if event["change"] == kind {
            return event;
        }
    }
}

/// No `group` event of this change within a short while.
async fn no_change(client: &mut RawClient, kind: &str) {
    let frames = client.frames_within(Duration::from_millis(300)).await;
    assert!(
        !frames
            .iter()
            .any(|f| f["event"] == "group" && f["data"]["change"] == kind),
        "unexpected {kind}: {frames:?}"
    );
}

async fn create(owner: &mut RawClient, id: &str, members: &[&str], options: Value) -> Value {
    owner.ok("group_create",
        json!({"group_id": id, "name": format!("Group {id}"), "members": members, "options": options}),
    )
    .await
}

fn member_ids(page: &Value) -> Vec<String> {
    page["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_group_has_its_owner_and_members_and_everyone_is_told() {
    let (_server, mut c) = setup(&["alice", "bob", "carol"]).await;
    let info = create(&mut c[0], "team", &["bob"], json!({})).await;
    assert_eq!(info["owner"], "alice");
    assert_eq!(info["member_count"], 2);
    assert_eq!(info["version"], 1);
    assert_eq!(info["options"]["max_members"], 3000, "the server default");
    let created = change(&mut c[1], "created").await;
    assert_eq!(created["group"]["group_id"], "team");
    assert_eq!(created["actor"], "alice");
    no_change(&mut c[2], "created").await;

    let page = c[1].ok("group_members", json!({"group_id": "team"})).await;
    assert_eq!(member_ids(&page), ["alice", "bob"]);
    assert_eq!(page["members"][0]["role"], "owner");
    let joined = c[1].ok("group_joined", json!({})).await;
    assert_eq!(joined["groups"][0]["group_id"], "team");
    assert_eq!(
        c[2].refused("group_members", json!({"group_id": "team"}))
            .await,
        "not_group_member"
    );
    // A generated id when none is given; a taken id is refused.
    let generated = c[2].ok("group_create", json!({"name": "mine"})).await;
    assert!(generated["group_id"].as_str().unwrap().starts_with('g'));
    assert_eq!(
        c[2].refused("group_create", json!({"group_id": "team", "name": "x"}))
            .await,
        "conflict"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_clear_errors() {
    let (server, mut c) = setup(&["alice", "bob", "carol"]).await;
    assert_eq!(
        c[0].refused("group_create", json!({"name": "  "})).await,
        "bad_request"
    );
    assert_eq!(
        c[0].refused("group_create", json!({"name": "x".repeat(101)}))
            .await,
        "too_large"
    );
    assert_eq!(
        c[0].refused("group_create", json!({"name": "x", "members": ["nobody"]}))
            .await,
        "user_not_found"
    );
    assert_eq!(
        c[0].refused(
            "group_create",
            json!({"name": "x", "options": {"max_members": 1}})
        )
        .await,
        "bad_request"
    );
    assert_eq!(
        c[0].refused("group_create", json!({"name": "x", "group_id": "bad id!"}))
            .await,
        "bad_request"
    );
    assert_eq!(
        c[0].refused("group_join", json!({"group_id": "ghost"}))
            .await,
        "group_not_found"
    );
    create(&mut c[0], "g1", &["bob"], json!({})).await;
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    assert_eq!(
        c[0].refused("group_invite", json!({"group_id": "g1", "user_ids": many}))
            .await,
        "too_large"
    );
    assert_eq!(
        c[0].refused(
            "group_set_role",
            json!({"group_id": "g1", "user_ids": ["bob"], "role": "owner"})
        )
        .await,
        "bad_request"
    );
    assert_eq!(
        c[0].refused("group_update", json!({"name": "no id"})).await,
        "bad_request"
    );
    // Paging, per-op limits and unknown ids.
    let cases = [
        (
            "group_members",
            json!({"group_id": "g1", "limit": 0}),
            "bad_request",
        ),
        ("group_joined", json!({"limit": 201}), "bad_request"),
        ("group_applications", json!({"box": "nope"}), "bad_request"),
        (
            "group_handle_application",
            json!({"application_id": "999", "accept": true}),
            "not_found",
        ),
        (
            "group_add_counter",
            json!({"group_id": "g1", "key": "k".repeat(33), "delta": 1}),
            "too_large",
        ),
        (
            "group_set_member",
            json!({"group_id": "g1", "nickname": "n".repeat(101)}),
            "too_large",
        ),
        ("group_allow_list", json!({"group_id": "g1"}), "bad_request"),
        (
            "group_block_list",
            json!({"group_id": "g1", "add": [], "remove": []}),
            "bad_request",
        ),
        (
            "group_mute",
            json!({"group_id": "g1", "user_ids": [], "seconds": 1}),
            "bad_request",
        ),
        (
            "group_kick",
            json!({"group_id": "g1", "user_ids": ["alice"]}),
            "bad_request",
        ),
        (
            "group_set_attributes",
            json!({"group_id": "g1", "set": {"k": null}}),
            "bad_request",
        ),
        (
            "group_transfer",
            json!({"group_id": "g1", "to": "nobody"}),
            "not_group_member",
        ),
        (
            "group_counters",
            json!({"group_id": "ghost"}),
            "group_not_found",
        ),
    ];
    for (op, data, want) in cases {
        assert_eq!(c[0].refused(op, data.clone()).await, want, "{op} {data}");
    }
    // Outsiders may not read members' views; members may not read managers' views.
    for op in ["group_attributes", "group_counters", "group_members"] {
        let data = json!({"group_id": "g1"});
        assert_eq!(
            c[2].refused(op, data.clone()).await,
            "not_group_member",
            "{op}"
        );
        c[1].ok(op, data).await;
    }
    assert_eq!(
        c[2].refused(
            "group_members_info",
            json!({"group_id": "g1", "user_ids": ["alice"]})
        )
        .await,
        "not_group_member"
    );
    assert_eq!(
        c[1].refused("group_blocks", json!({"group_id": "g1"}))
            .await,
        "forbidden",
        "members may not read the block list"
    );

    // The REST API refuses the same bad inputs.
    let (status, body) = server
        .rest(
            "POST",
            "/v1/groups/g1/members",
            Some(json!({"user_ids": []})),
        )
        .await;
    assert_eq!((status, body["code"].clone()), (400, json!(1000)), "{body}");
    let (status, body) = server
        .rest("GET", "/v1/groups/g1/members?limit=0", None)
        .await;
    assert_eq!((status, body["code"].clone()), (400, json!(1000)), "{body}");
    let (status, body) = server
        .rest("PATCH", "/v1/groups/g1", Some(json!({"group_id": "other"})))
        .await;
    assert_eq!((status, body["code"].clone()), (400, json!(1000)), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_admins_and_members_each_may_do_what_their_role_allows() {
    let (_server, mut c) = setup(&["owner", "admin", "m1", "m2"]).await;
    create(&mut c[0], "g", &["admin", "m1", "m2"], json!({})).await;
    // Members may not manage.
    assert_eq!(
        c[2].refused("group_update", json!({"group_id": "g", "name": "new"}))
            .await,
        "forbidden"
    );
    assert_eq!(
        c[2].refused("group_kick", json!({"group_id": "g", "user_ids": ["m2"]}))
            .await,
        "forbidden"
    );
    assert_eq!(
        c[1].refused(
            "group_set_role",
            json!({"group_id": "g", "user_ids": ["m1"], "role": "admin"})
        )
        .await,
        "forbidden",
        "only the owner appoints admins"
    );
    c[0].ok(
        "group_set_role",
        json!({"group_id": "g", "user_ids": ["admin"], "role": "admin"}),
    )
    .await;
    let added = change(&mut c[2], "admin_added").await;
    assert_eq!(added["user_id"], "admin");

    // Admins manage members, not admins or the owner.
    c[1].ok(
        "group_update",
        json!({"group_id": "g", "name": "renamed", "announcement": "hello"}),
    )
    .await;
    assert_eq!(
        change(&mut c[2], "info_changed").await["group"]["name"],
        "renamed"
    );
    assert_eq!(
        change(&mut c[3], "announcement_changed").await["announcement"],
        "hello"
    );
    assert_eq!(
        c[1].refused(
            "group_kick",
            json!({"group_id": "g", "user_ids": ["owner"]})
        )
        .await,
        "forbidden"
    );
    c[0].ok(
        "group_set_role",
        json!({"group_id": "g", "user_ids": ["m1"], "role": "admin"}),
    )
    .await;
    assert_eq!(
        c[1].refused(
            "group_mute",
            json!({"group_id": "g", "user_ids": ["m1"], "seconds": 60})
        )
        .await,
        "forbidden",
        "an admin cannot mute another admin"
    );
    c[1].ok(
        "group_mute",
        json!({"group_id": "g", "user_ids": ["m2"], "seconds": 60}),
    )
    .await;
    let muted = change(&mut c[3], "mute_changed").await;
    assert!(muted["until"].as_i64().unwrap() > magpie_testkit::now_ms());
    c[1].ok("group_mute_all", json!({"group_id": "g", "muted": true}))
        .await;
    assert_eq!(
        change(&mut c[3], "all_muted_changed").await["all_muted"],
        true
    );
    c[1].ok("group_allow_list", json!({"group_id": "g", "add": ["m2"]}))
        .await;
    assert_eq!(
        change(&mut c[3], "allow_list_changed").await["added"],
        json!(["m2"])
    );
    let info = c[3]
        .ok(
            "group_members_info",
            json!({"group_id": "g", "user_ids": ["m2"]}),
        )
        .await;
    assert_eq!(info["members"][0]["allowed_when_all_muted"], true);

    // Members set their own info, not others'.
    c[3].ok(
        "group_set_member",
        json!({"group_id": "g", "nickname": "Emm", "attributes": {"title": "dev"}}),
    )
    .await;
    let changed = change(&mut c[0], "member_info_changed").await;
    assert_eq!(changed["member"]["nickname"], "Emm");
    assert_eq!(
        c[3].refused(
            "group_set_member",
            json!({"group_id": "g", "user_id": "admin", "nickname": "x"})
        )
        .await,
        "forbidden"
    );

    // Only the owner destroys; the owner cannot leave.
    assert_eq!(
        c[1].refused("group_destroy", json!({"group_id": "g"}))
            .await,
        "forbidden"
    );
    assert_eq!(
        c[0].refused("group_leave", json!({"group_id": "g"})).await,
        "forbidden"
    );
    c[3].ok("group_leave", json!({"group_id": "g"})).await;
    assert_eq!(change(&mut c[2], "member_left").await["user_id"], "m2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_policies_open_approval_and_invite_only() {
    let (_server, mut c) = setup(&["owner", "admin", "joiner", "other"]).await;
    create(&mut c[0], "open", &[], json!({"join_policy": "open"})).await;
    create(
        &mut c[0],
        "closed",
        &["admin"],
        json!({"join_policy": "approval"}),
    )
    .await;
    create(
        &mut c[0],
        "secret",
        &[],
        json!({"join_policy": "invite_only"}),
    )
    .await;
    c[0].ok(
        "group_set_role",
        json!({"group_id": "closed", "user_ids": ["admin"], "role": "admin"}),
    )
    .await;

    let joined = c[2].ok("group_join", json!({"group_id": "open"})).await;
    assert_eq!(joined["joined"], true);
    assert_eq!(
        change(&mut c[0], "members_joined").await["members"][0]["user_id"],
        "joiner"
    );

    assert_eq!(
        c[2].refused("group_join", json!({"group_id": "secret"}))
            .await,
        "forbidden"
    );
    let directory = c[3].ok("group_directory", json!({"query": "GROUP"})).await;
    let ids: Vec<&str> = directory["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["closed", "open"], "invite-only groups are not listed");

    let pending = c[2]
        .ok(
            "group_join",
            json!({"group_id": "closed", "message": "let me in"}),
        )
        .await;
    assert_eq!(pending["joined"], false);
    let application_id = pending["application"]["application_id"].clone();
    let received = change(&mut c[1], "application_received").await;
    assert_eq!(received["application"]["message"], "let me in");
    // Asking twice gives the same pending application.
    let again = c[2].ok("group_join", json!({"group_id": "closed"})).await;
    assert_eq!(again["application"]["application_id"], application_id);
    let inbox = c[1]
        .ok("group_applications", json!({"box": "received"}))
        .await;
    assert_eq!(inbox["applications"][0]["application_id"], application_id);
    let sent = c[2].ok("group_applications", json!({"box": "sent"})).await;
    assert_eq!(sent["applications"][0]["application_id"], application_id);

    assert_eq!(
        c[3].refused(
            "group_handle_application",
            json!({"application_id": application_id, "accept": true})
        )
        .await,
        "not_group_member"
    );
    let handled = c[1]
        .ok(
            "group_handle_application",
            json!({"application_id": application_id, "accept": true, "reason": "welcome"}),
        )
        .await;
    assert_eq!(handled["state"], "accepted");
    assert_eq!(
        change(&mut c[2], "application_handled").await["application"]["reason"],
        "welcome"
    );
    assert_eq!(
        c[1].refused(
            "group_handle_application",
            json!({"application_id": application_id, "accept": false})
        )
        .await,
        "conflict"
    );
    let page = c[2]
        .ok("group_members", json!({"group_id": "closed"}))
        .await;
    assert!(member_ids(&page).contains(&"joiner".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitations_needing_acceptance_are_answered_by_the_invitee_only() {
    let (_server, mut c) = setup(&["owner", "member", "guest", "stranger"]).await;
    create(
        &mut c[0],
        "g",
        &["member"],
        json!({"invite_needs_accept": true, "members_can_invite": false}),
    )
    .await;
    assert_eq!(
        c[1].refused(
            "group_invite",
            json!({"group_id": "g", "user_ids": ["guest"]})
        )
        .await,
        "forbidden",
        "members may not invite here"
    );
    let results = c[0]
        .ok(
            "group_invite",
            json!({"group_id": "g", "user_ids": ["guest", "member", "nobody"]}),
        )
        .await;
    let outcomes: Vec<&str> = results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["invited", "already_member", "user_not_found"]);
    let invitation = change(&mut c[2], "invitation_received").await;
    let id = invitation["application"]["application_id"].clone();
    assert_eq!(
        c[3].refused(
            "group_handle_application",
            json!({"application_id": id, "accept": true})
        )
        .await,
        "forbidden"
    );
    c[2].ok(
        "group_handle_application",
        json!({"application_id": id, "accept": true}),
    )
    .await;
    assert_eq!(
        change(&mut c[1], "members_joined").await["members"][0]["user_id"],
        "guest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicked_with_a_ban_and_blocked_users_cannot_come_back() {
    let (_server, mut c) = setup(&["owner", "bad", "worse"]).await;
    create(
        &mut c[0],
        "g",
        &["bad", "worse"],
        json!({"join_policy": "open"}),
    )
    .await;
    c[0].ok(
        "group_kick",
        json!({"group_id": "g", "user_ids": ["bad"], "ban_seconds": 3600}),
    )
    .await;
    let kicked = change(&mut c[1], "members_kicked").await;
    assert_eq!(kicked["user_ids"], json!(["bad"]));
    assert!(kicked["banned_until"].as_i64().is_some());
    assert_eq!(
        c[1].refused("group_join", json!({"group_id": "g"})).await,
        "blocked_from_group"
    );

    c[0].ok(
        "group_block_list",
        json!({"group_id": "g", "add": ["worse"]}),
    )
    .await;
    assert_eq!(
        change(&mut c[2], "block_list_changed").await["added"],
        json!(["worse"])
    );
    assert_eq!(
        c[2].refused("group_join", json!({"group_id": "g"})).await,
        "blocked_from_group"
    );
    let blocks = c[0].ok("group_blocks", json!({"group_id": "g"})).await;
    assert_eq!(blocks["blocked"].as_array().unwrap().len(), 2);
    c[0].ok(
        "group_block_list",
        json!({"group_id": "g", "remove": ["worse"]}),
    )
    .await;
    assert_eq!(
        c[2].ok("group_join", json!({"group_id": "g"})).await["joined"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_group_takes_no_one_more() {
    let (_server, mut c) = setup(&["a", "b", "c", "d"]).await;
    create(
        &mut c[0],
        "small",
        &["b"],
        json!({"join_policy": "open", "max_members": 3}),
    )
    .await;
    c[2].ok("group_join", json!({"group_id": "small"})).await;
    assert_eq!(
        c[3].refused("group_join", json!({"group_id": "small"}))
            .await,
        "group_full"
    );
    assert_eq!(
        c[0].refused(
            "group_update",
            json!({"group_id": "small", "options": {"max_members": 2}})
        )
        .await,
        "bad_request",
        "below the current count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_moves_and_destroying_tells_everyone() {
    let (_server, mut c) = setup(&["alice", "bob", "carol"]).await;
    create(&mut c[0], "g", &["bob", "carol"], json!({})).await;
    assert_eq!(
        c[1].refused("group_transfer", json!({"group_id": "g", "to": "bob"}))
            .await,
        "forbidden"
    );
    let info = c[0]
        .ok("group_transfer", json!({"group_id": "g", "to": "bob"}))
        .await;
    assert_eq!(info["owner"], "bob");
    let moved = change(&mut c[2], "owner_changed").await;
    assert_eq!(
        (moved["from"].clone(), moved["to"].clone()),
        (json!("alice"), json!("bob"))
    );
    let roles = c[2]
        .ok("group_members", json!({"group_id": "g", "role": "admin"}))
        .await;
    assert_eq!(
        member_ids(&roles),
        ["alice"],
        "the old owner is an admin now"
    );

    assert_eq!(
        c[0].refused("group_destroy", json!({"group_id": "g"}))
            .await,
        "forbidden"
    );
    c[1].ok("group_destroy", json!({"group_id": "g"})).await;
    change(&mut c[0], "destroyed").await;
    change(&mut c[2], "destroyed").await;
    let info = c[2].ok("group_info", json!({"group_ids": ["g"]})).await;
    assert_eq!(info["groups"], json!([]));
    assert_eq!(
        c[2].refused("group_leave", json!({"group_id": "g"})).await,
        "group_not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_are_limited_and_guarded_and_counters_add_up() {
    let (_server, mut c) = setup(&["owner", "member"]).await;
    create(&mut c[0], "g", &["member"], json!({})).await;
    let set = c[0]
        .ok(
            "group_set_attributes",
            json!({"group_id": "g", "set": {"topic": "rust"}}),
        )
        .await;
    assert_eq!(set["attributes"], json!({"topic": "rust"}));
    let version = set["version"].clone();
    assert_eq!(
        change(&mut c[1], "attributes_changed").await["attributes"]["topic"],
        "rust"
    );
    assert_eq!(
        c[1].refused(
            "group_set_attributes",
            json!({"group_id": "g", "set": {"x": 1}})
        )
        .await,
        "forbidden"
    );
    let stale = json!({"group_id": "g", "set": {"topic": "go"}, "expected_version": 0});
    assert_eq!(
        c[0].refused("group_set_attributes", stale).await,
        "conflict"
    );
    let fresh = json!({"group_id": "g", "set": {"topic": "go"}, "expected_version": version});
    c[0].ok("group_set_attributes", fresh).await;

    let mut many = serde_json::Map::new();
    for i in 0..16 {
        many.insert(format!("k{i}"), json!(i));
    }
    assert_eq!(
        c[0].refused(
            "group_set_attributes",
            json!({"group_id": "g", "set": many})
        )
        .await,
        "too_large",
        "17 keys with the existing one"
    );
    assert_eq!(
        c[0].refused(
            "group_set_attributes",
            json!({"group_id": "g", "set": {"k".repeat(33): 1}})
        )
        .await,
        "too_large"
    );
    assert_eq!(
        c[0].refused(
            "group_set_attributes",
            json!({"group_id": "g", "set": {"big": "v".repeat(5000)}})
        )
        .await,
        "too_large"
    );
    let mut big = serde_json::Map::new();
    for i in 0..5 {
        big.insert(format!("b{i}"), json!("v".repeat(4000)));
    }
    assert_eq!(
        c[0].refused("group_set_attributes", json!({"group_id": "g", "set": big}))
            .await,
        "too_large",
        "over 16 KiB in total"
    );
    let read = c[1].ok("group_attributes", json!({"group_id": "g"})).await;
    assert_eq!(read["attributes"], json!({"topic": "go"}));

    for delta in [5, -2, 10] {
        c[1].ok(
            "group_add_counter",
            json!({"group_id": "g", "key": "likes", "delta": delta}),
        )
        .await;
    }
    let counters = c[0].ok("group_counters", json!({"group_id": "g"})).await;
    assert_eq!(counters["counters"]["likes"], 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_backend_manages_groups_over_rest() {
    let (server, mut c) = setup(&["alice", "bob"]).await;
    let (status, body) = server
        .rest(
            "POST",
            "/v1/groups",
            Some(json!({"group_id": "hq", "name": "HQ", "owner": "alice"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["owner"], "alice");
    let (status, body) = server
        .rest("POST", "/v1/groups", Some(json!({"name": "no owner"})))
        .await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = server
        .rest(
            "POST",
            "/v1/groups/hq/members",
            Some(json!({"user_ids": ["bob"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["outcome"], "added");
    assert_eq!(
        change(&mut c[1], "members_joined").await["actor"],
        Value::Null
    );

    let (status, body) = server
        .rest("GET", "/v1/groups/hq/members?role=member", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(member_ids(&body), ["bob"]);
    let (status, body) = server.rest("GET", "/v1/users/bob/groups", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["groups"][0]["group_id"], "hq");

    let (status, _) = server
        .rest("DELETE", "/v1/groups/hq/members/bob", None)
        .await;
    assert_eq!(status, 200);
    change(&mut c[1], "members_kicked").await;
    let (status, body) = server.rest("GET", "/v1/groups/nope", None).await;
    assert_eq!((status, body["code"].clone()), (404, json!(3004)));
    let (status, _) = server.rest("DELETE", "/v1/groups/hq", None).await;
    assert_eq!(status, 200);
    let (status, _) = server.rest("GET", "/v1/groups/hq", None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_user_leaves_every_group_and_an_owner_hands_groups_on() {
    let (server, mut c) = setup(&["boss", "deputy", "member", "loner"]).await;
    create(&mut c[0], "led", &["deputy", "member"], json!({})).await;
    c[0].ok(
        "group_set_role",
        json!({"group_id": "led", "user_ids": ["deputy"], "role": "admin"}),
    )
    .await;
    create(&mut c[1], "other", &["boss"], json!({})).await;
    create(&mut c[0], "alone", &[], json!({})).await;

    let (status, body) = server.rest("DELETE", "/v1/users/boss", None).await;
    assert_eq!(status, 200, "{body}");
    let moved = change(&mut c[2], "owner_changed").await;
    assert_eq!(
        (moved["from"].clone(), moved["to"].clone()),
        (json!("boss"), json!("deputy"))
    );
    assert_eq!(change(&mut c[2], "member_left").await["user_id"], "boss");

    let led = c[2].ok("group_members", json!({"group_id": "led"})).await;
    assert_eq!(member_ids(&led), ["deputy", "member"]);
    assert_eq!(led["members"][0]["role"], "owner");
    let other = c[1].ok("group_members", json!({"group_id": "other"})).await;
    assert_eq!(member_ids(&other), ["deputy"]);
    let alone = c[3].ok("group_info", json!({"group_ids": ["alone"]})).await;
    assert_eq!(
        alone["groups"],
        json!([]),
        "a group with nobody left is destroyed"
    );
    let (status, body) = server.rest("GET", "/v1/users/boss/groups", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["groups"], json!([]));
}
