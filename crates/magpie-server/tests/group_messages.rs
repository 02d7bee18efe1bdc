//! Group messaging over the WebSocket: one stored copy, fan-out to every member once and in
//! order, sync through the group cursor, join points, who may post, mentions, read receipts,
//! blocking a group's messages, timeline notices, and a 3,000-member group.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use magpie_testkit::{RawClient, TestServer};
use serde_json::{Value, json};

async fn setup(users: &[&str]) -> (TestServer, Vec<RawClient>) {
    setup_with(users, |_| {}).await
}

async fn setup_with(
    users: &[&str],
    tweak: impl FnOnce(&mut magpie_server::config::Config),
) -> (TestServer, Vec<RawClient>) {
    let server = TestServer::start_without_rate_limits_and(tweak).await;
    let clients = server.log_in_all(users).await;
    (server, clients)
}

fn text_to_group(group: &str, client_msg_id: &str, text: &str) -> Value {
    json!({
        "to": {"kind": "group", "id": group},
        "client_msg_id": client_msg_id,
        "content": {"type": "text", "body": {"text": text}}
    })
}

async fn send(client: &mut RawClient, group: &str, client_msg_id: &str, text: &str) -> Value {
    client
        .ok("send", text_to_group(group, client_msg_id, text))
        .await["message"]
        .clone()
}

async fn create(owner: &mut RawClient, id: &str, members: &[&str], options: Value) {
    owner
        .ok(
            "group_create",
            json!({"group_id": id, "name": id, "members": members, "options": options}),
        )
        .await;
}

/// The `message` events that arrive within `wait`, in arrival order.
async fn messages_within(client: &mut RawClient, wait: Duration) -> Vec<Value> {
    client
        .frames_within(wait)
        .await
        .into_iter()
        .filter(|f| f["event"] == "message")
        .map(|f| f["data"].clone())
        .collect()
}

/// The next `message` event whose content type is `kind`.
async fn next_message_of(client: &mut RawClient, kind: &str) -> Value {
    loop {
        let message = client.event("message").await;
        if message["content"]["type"] == kind {
            return message;
        }
    }
}

fn texts(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["content"]["type"] == "text")
        .map(|m| m["content"]["body"]["text"].as_str().unwrap().to_owned())
        .collect()
}

fn seqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

/// The group conversation's state in a sync answer.
fn group_state<'a>(sync: &'a Value, group: &str) -> Option<&'a Value> {
    sync["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversation_id"] == format!("grp:{group}"))
}

async fn history(client: &mut RawClient, group: &str) -> Vec<Value> {
    let page = client.ok("get_messages",
        json!({"conversation_id": format!("grp:{group}"), "direction": "forward", "limit": 200}),
    )
    .await;
    page["messages"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_message_is_stored_once_and_reaches_every_member_once_in_order() {
    let (_server, mut c) = setup(&["alice", "bob", "carol"]).await;
    create(&mut c[0], "team", &["bob", "carol"], json!({})).await;
    // The group's first line is the server's "created" notice.
    let created = next_message_of(&mut c[1], "group_notice").await;
    assert_eq!(created["seq"], 1);
    assert_eq!(created["content"]["body"]["kind"], "created");
    assert_eq!(created["to"], json!({"kind": "group", "id": "team"}));

    // Twenty sends issued back to back, without waiting for answers.
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            c[0].send(
                "send",
                text_to_group("team", &format!("m{i}"), &format!("hello {i}")),
            )
            .await,
        );
    }
    let mut acked = Vec::new();
    for id in ids {
        let answer = c[0].answer(id).await;
        assert_eq!(answer["type"], "response", "{answer}");
        acked.push(answer["data"]["message"]["seq"].as_u64().unwrap());
    }
    assert_eq!(
        acked,
        (2..=21).collect::<Vec<_>>(),
        "seqs follow the issue order"
    );

    let expected: Vec<String> = (0..20).map(|i| format!("hello {i}")).collect();
    for member in &mut c[1..] {
        let got: Vec<Value> = messages_within(member, Duration::from_millis(800))
            .await
            .into_iter()
            .filter(|m| m["content"]["type"] == "text")
            .collect();
        assert_eq!(texts(&got), expected, "each message once, in order");
        assert_eq!(seqs(&got), (2..=21).collect::<Vec<_>>());
        assert!(got.iter().all(|m| m["conversation_id"] == "grp:team"));
    }
    // The sender's own device gets no echo (the "created" notice may still be on its way to it).
    let echoes = messages_within(&mut c[0], Duration::from_millis(200)).await;
    assert!(
        !echoes.iter().any(|m| m["content"]["type"] == "text"),
        "{echoes:?}"
    );
    // Stored once, with the notice first.
    let stored = history(&mut c[2], "team").await;
    assert_eq!(seqs(&stored), (1..=21).collect::<Vec<_>>());
    assert_eq!(texts(&stored), expected);
    // A retry is deduped.
    let again = c[0]
        .ok("send", text_to_group("team", "m3", "hello 3"))
        .await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["message"]["seq"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_members_find_group_messages_through_the_group_cursor() {
    let (server, mut c) = setup(&["alice"]).await;
    server.create_user("bob").await;
    create(&mut c[0], "team", &["bob"], json!({})).await;
    for i in 0..3 {
        send(&mut c[0], "team", &format!("m{i}"), "hi").await;
    }
    let token = server.token("bob").await;
    let mut bob = server.raw_login("bob", &token, "phone", "ios").await;
    let first = bob.ok("sync", json!({})).await;
    let state = group_state(&first, "team").expect("the group conversation");
    assert_eq!(state["kind"], "group");
    assert_eq!(
        state["last_seq"], 4,
        "the created notice and three messages"
    );
    assert_eq!(state["unread_count"], 4);
    assert_eq!(state["last_message"]["seq"], 4);
    assert_eq!(first["has_more"], false);
    let cursors = json!({"since": first["version"], "groups_since": first["groups_version"]});
    let quiet = bob.ok("sync", cursors.clone()).await;
    assert!(
        group_state(&quiet, "team").is_none(),
        "nothing new: {quiet}"
    );
    // Read state comes back through the user's own cursor.
    bob.ok(
        "mark_read",
        json!({"conversation_id": "grp:team", "seq": 3}),
    )
    .await;
    let read = bob.ok("sync", cursors.clone()).await;
    assert_eq!(group_state(&read, "team").unwrap()["unread_count"], 1);
    // A new message moves the group above the group cursor.
    send(&mut c[0], "team", "m9", "again").await;
    let moved = bob.ok("sync", cursors).await;
    let state = group_state(&moved, "team").unwrap();
    assert_eq!(
        (state["last_seq"].as_u64(), state["unread_count"].as_u64()),
        (Some(5), Some(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_who_are_not_muted_may_post() {
    let (_server, mut c) = setup(&["alice", "bob", "carol", "dave"]).await;
    create(&mut c[0], "team", &["bob", "carol"], json!({})).await;
    c[0].ok(
        "group_set_role",
        json!({"group_id": "team", "user_ids": ["carol"], "role": "admin"}),
    )
    .await;
    let code = |name: &str| name.to_owned();
    assert_eq!(
        c[3].refused("send", text_to_group("team", "x1", "let me in"))
            .await,
        code("not_group_member")
    );
    assert_eq!(
        c[3].refused("send", text_to_group("nope", "x2", "?")).await,
        code("group_not_found")
    );
    // A muted member cannot post; an admin can even while muted; the mute runs out.
    c[0].ok(
        "group_mute",
        json!({"group_id": "team", "user_ids": ["bob"], "seconds": 60}),
    )
    .await;
    assert_eq!(
        c[1].refused("send", text_to_group("team", "b1", "hi"))
            .await,
        code("muted")
    );
    c[0].ok(
        "group_mute",
        json!({"group_id": "team", "user_ids": ["bob"], "seconds": 0}),
    )
    .await;
    send(&mut c[1], "team", "b2", "unmuted").await;
    // Everyone muted: owner, admins and the allow list still speak.
    c[0].ok("group_mute_all", json!({"group_id": "team", "muted": true}))
        .await;
    assert_eq!(
        c[1].refused("send", text_to_group("team", "b3", "hi"))
            .await,
        code("muted")
    );
    send(&mut c[2], "team", "c1", "admin speaking").await;
    send(&mut c[0], "team", "a1", "owner speaking").await;
    c[0].ok(
        "group_allow_list",
        json!({"group_id": "team", "add": ["bob"]}),
    )
    .await;
    send(&mut c[1], "team", "b4", "allowed").await;
    // A refused send used no seq: the history has no gap.
    let stored = history(&mut c[0], "team").await;
    let seqs = seqs(&stored);
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    // Bad inputs.
    let mut notice = text_to_group("team", "n1", "x");
    notice["content"] = json!({"type": "group_notice", "body": {"kind": "created"}});
    assert_eq!(c[0].refused("send", notice).await, code("bad_request"));
    let mut c2c_mention = text_to_group("team", "n2", "x");
    c2c_mention["to"] = json!({"kind": "user", "id": "bob"});
    c2c_mention["mentions"] = json!({"user_ids": ["bob"]});
    assert_eq!(c[0].refused("send", c2c_mention).await, code("bad_request"));
    let mut too_many = text_to_group("team", "n3", "x");
    let ids: Vec<String> = (0..31).map(|i| format!("u{i}")).collect();
    too_many["mentions"] = json!({"user_ids": ids});
    assert_eq!(c[0].refused("send", too_many).await, code("bad_request"));
    assert_eq!(
        c[3].refused("get_messages", json!({"conversation_id": "grp:team"}))
            .await,
        code("not_group_member")
    );
    assert_eq!(
        c[3].refused(
            "mark_read",
            json!({"conversation_id": "grp:team", "seq": 1})
        )
        .await,
        code("not_group_member")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_members_read_from_their_join_point_unless_history_is_shown() {
    let (_server, mut c) = setup(&["alice", "bob", "carol"]).await;
    create(&mut c[0], "team", &[], json!({"join_policy": "open"})).await;
    send(&mut c[0], "team", "m1", "before bob").await;
    send(&mut c[0], "team", "m2", "also before bob").await;
    c[1].ok("group_join", json!({"group_id": "team"})).await;
    // The owner hears of it with Bob's membership as stored: his join point is after seq 3.
    let event = c[0].event("group").await;
    assert_eq!(event["change"], "members_joined");
    assert_eq!(event["members"][0]["visible_from_seq"], 4);
    // Bob's first line is the notice of his own joining (pushed to him before his answer).
    let joined = history(&mut c[1], "team").await.remove(0);
    assert_eq!(joined["content"]["body"]["kind"], "member_joined");
    assert_eq!(joined["content"]["body"]["user_ids"], json!(["bob"]));
    send(&mut c[0], "team", "m3", "after bob").await;
    let live = next_message_of(&mut c[1], "text").await;
    assert_eq!(live["content"]["body"]["text"], "after bob");
    let seen = history(&mut c[1], "team").await;
    assert_eq!(texts(&seen), ["after bob"]);
    assert_eq!(seen[0]["seq"], joined["seq"], "history starts at the join");
    let sync = c[1].ok("sync", json!({})).await;
    assert_eq!(
        group_state(&sync, "team").unwrap()["unread_count"],
        2,
        "the notice and m3"
    );

    // With history shown to new members, Carol sees everything.
    c[0].ok("group_update",
        json!({"group_id": "team", "options": {"join_policy": "open", "history_visible_to_new_members": true}}),
    )
    .await;
    c[2].ok("group_join", json!({"group_id": "team"})).await;
    let all = history(&mut c[2], "team").await;
    assert_eq!(texts(&all), ["before bob", "also before bob", "after bob"]);
    assert_eq!(all[0]["seq"], 1);
    // Leaving ends reading.
    c[1].ok("group_leave", json!({"group_id": "team"})).await;
    assert_eq!(
        c[1].refused("get_messages", json!({"conversation_id": "grp:team"}))
            .await,
        "not_group_member"
    );
    let left = next_message_of(&mut c[0], "group_notice").await;
    let kinds: Vec<Value> = history(&mut c[0], "team")
        .await
        .iter()
        .filter(|m| m["content"]["type"] == "group_notice")
        .map(|m| m["content"]["body"]["kind"].clone())
        .collect();
    assert!(kinds.contains(&json!("member_left")), "{kinds:?} / {left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_mark_the_conversation_until_read() {
    let (_server, mut c) = setup(&["alice", "bob", "carol"]).await;
    create(&mut c[0], "team", &["bob", "carol"], json!({})).await;
    let mut request = text_to_group("team", "m1", "@bob look");
    request["mentions"] = json!({"user_ids": ["bob", "stranger"]});
    let sent = c[0].ok("send", request).await["message"].clone();
    assert_eq!(
        sent["mentions"],
        json!({"user_ids": ["bob"]}),
        "non-members are dropped"
    );
    let delivered = next_message_of(&mut c[1], "text").await;
    assert_eq!(delivered["mentions"]["user_ids"], json!(["bob"]));
    let bob = c[1].ok("sync", json!({})).await;
    assert_eq!(group_state(&bob, "team").unwrap()["mentioned"], true);
    let carol = c[2].ok("sync", json!({})).await;
    assert!(
        group_state(&carol, "team")
            .unwrap()
            .get("mentioned")
            .is_none()
    );
    let read = c[1]
        .ok(
            "mark_read",
            json!({"conversation_id": "grp:team", "seq": 2}),
        )
        .await;
    assert!(read.get("mentioned").is_none(), "{read}");
    // "@all" marks every member.
    let mut everyone = text_to_group("team", "m2", "@all meeting");
    everyone["mentions"] = json!({"all": true});
    c[0].ok("send", everyone).await;
    let carol = c[2].ok("sync", json!({})).await;
    assert_eq!(group_state(&carol, "team").unwrap()["mentioned"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_learn_who_read_their_group_messages() {
    let (_server, mut c) = setup(&["alice", "bob", "carol"]).await;
    create(&mut c[0], "team", &["bob", "carol"], json!({})).await;
    let first = send(&mut c[0], "team", "m1", "one").await;
    let second = send(&mut c[0], "team", "m2", "two").await;
    let seq = second["seq"].as_u64().unwrap();
    c[1].ok(
        "mark_read",
        json!({"conversation_id": "grp:team", "seq": seq}),
    )
    .await;
    let event = c[0].event("group_read").await;
    assert_eq!(event["reader"], "bob");
    assert_eq!(event["read_seq"], seq);
    assert_eq!(
        event["messages"],
        json!([
            {"seq": first["seq"], "read_count": 1, "unread_count": 1},
            {"seq": seq, "read_count": 1, "unread_count": 1}
        ])
    );
    let readers = c[0]
        .ok(
            "group_read_receipts",
            json!({"conversation_id": "grp:team", "seq": seq}),
        )
        .await;
    assert_eq!(readers["read_count"], 1);
    assert_eq!(readers["unread_count"], 1);
    assert_eq!(readers["user_ids"], json!(["bob"]));
    let unread = c[0]
        .ok(
            "group_read_receipts",
            json!({"conversation_id": "grp:team", "seq": seq, "read": false}),
        )
        .await;
    assert_eq!(unread["user_ids"], json!(["carol"]));
    // Paging.
    c[2].ok(
        "mark_read",
        json!({"conversation_id": "grp:team", "seq": seq}),
    )
    .await;
    let page = c[0]
        .ok(
            "group_read_receipts",
            json!({"conversation_id": "grp:team", "seq": seq, "limit": 1}),
        )
        .await;
    assert_eq!(
        (page["user_ids"].clone(), page["next_after"].clone()),
        (json!(["bob"]), json!("bob"))
    );
    let rest = c[0]
        .ok(
            "group_read_receipts",
            json!({"conversation_id": "grp:team", "seq": seq, "limit": 1, "after": "bob"}),
        )
        .await;
    assert_eq!(rest["user_ids"], json!(["carol"]));
    assert!(rest.get("next_after").is_none());
    // Bad inputs.
    assert_eq!(
        c[0].refused(
            "group_read_receipts",
            json!({"conversation_id": "grp:team", "seq": 999})
        )
        .await,
        "not_found"
    );
    assert_eq!(
        c[0].refused(
            "group_read_receipts",
            json!({"conversation_id": "c2c:alice:bob", "seq": 1})
        )
        .await,
        "bad_request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_groups_answer_read_counts_only_and_sum_up_reads_once_a_second() {
    let (_server, mut c) = setup_with(&["alice", "bob", "carol"], |config| {
        config.groups.read_receipt_members = 2;
    })
    .await;
    create(&mut c[0], "team", &["bob", "carol"], json!({})).await;
    let sent = send(&mut c[0], "team", "m1", "one").await;
    let read = json!({"conversation_id": "grp:team", "seq": sent["seq"]});
    c[1].ok("mark_read", read.clone()).await;
    c[2].ok("mark_read", read).await;
    // One event for both reads, naming no reader.
    let frames = c[0].frames_within(Duration::from_millis(2_500)).await;
    let events: Vec<&Value> = frames
        .iter()
        .filter(|f| f["event"] == "group_read")
        .map(|f| &f["data"])
        .collect();
    assert_eq!(events.len(), 1, "{frames:?}");
    assert!(events[0].get("reader").is_none(), "{}", events[0]);
    assert_eq!(
        events[0]["messages"],
        json!([{"seq": sent["seq"], "read_count": 2, "unread_count": 0}])
    );
    let answer = c[0]
        .ok(
            "group_read_receipts",
            json!({"conversation_id": "grp:team", "seq": sent["seq"]}),
        )
        .await;
    assert_eq!(
        (
            answer["read_count"].as_u64(),
            answer["unread_count"].as_u64()
        ),
        (Some(2), Some(0))
    );
    assert!(answer.get("user_ids").is_none(), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_blocks_a_groups_messages_gets_no_pushes_but_keeps_the_count() {
    let (server, mut c) = setup(&["alice", "bob"]).await;
    let token = server.token("bob").await;
    let mut bob_desk = server.raw_login("bob", &token, "desk", "linux").await;
    create(&mut c[0], "team", &["bob"], json!({})).await;
    next_message_of(&mut c[1], "group_notice").await;
    c[1].ok(
        "group_set_receive",
        json!({"group_id": "team", "receive": false}),
    )
    .await;
    // Bob's other device is told; nobody else is.
    let mut event = bob_desk.event("group").await;
    if event["change"] == "created" {
        event = bob_desk.event("group").await;
    }
    assert_eq!(event["change"], "member_info_changed", "{event}");
    assert_eq!(event["member"]["receive_messages"], false);
    // Alice may still be receiving the group's "created" event; she must not hear of Bob's setting.
    let others = c[0].frames_within(Duration::from_millis(300)).await;
    assert!(
        !others
            .iter()
            .any(|f| f["event"] == "group" && f["data"]["change"] == "member_info_changed"),
        "{others:?}"
    );
    send(&mut c[0], "team", "m1", "quiet please").await;
    assert!(
        messages_within(&mut c[1], Duration::from_millis(400))
            .await
            .is_empty()
    );
    let sync = c[1].ok("sync", json!({})).await;
    assert_eq!(group_state(&sync, "team").unwrap()["unread_count"], 2);
    c[1].ok(
        "group_set_receive",
        json!({"group_id": "team", "receive": true}),
    )
    .await;
    send(&mut c[0], "team", "m2", "back").await;
    let back = next_message_of(&mut c[1], "text").await;
    assert_eq!(back["content"]["body"]["text"], "back");
    assert_eq!(
        c[0].refused(
            "group_set_receive",
            json!({"group_id": "nope", "receive": false})
        )
        .await,
        "group_not_found"
    );
    let mut outsider = server.log_in_all(&["mallory"]).await.remove(0);
    assert_eq!(
        outsider
            .refused(
                "group_set_receive",
                json!({"group_id": "team", "receive": false})
            )
            .await,
        "not_group_member"
    );
    assert_eq!(
        outsider
            .refused(
                "group_read_receipts",
                json!({"conversation_id": "grp:team", "seq": 1})
            )
            .await,
        "not_group_member"
    );
    assert_eq!(
        outsider
            .refused("group_set_receive", json!({"group_id": "team"}))
            .await,
        "bad_request"
    );
}

/// 3,000 members, every one online: each message reaches each member exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_thousand_member_group_fans_out_to_everyone_once_in_order() {
    const MEMBERS: usize = 3_000;
    const MESSAGES: u64 = 5;
    let (server, mut owner) = setup(&["owner"]).await;
    let mut owner = owner.remove(0);
    create(&mut owner, "big", &[], json!({})).await;
    let names: Vec<String> = (0..MEMBERS - 1).map(|i| format!("m{i:04}")).collect();
    for chunk in names.chunks(100) {
        for name in chunk {
            server.create_user(name).await;
        }
        let (status, body) = server
            .rest(
                "POST",
                "/v1/groups/big/members",
                Some(json!({"user_ids": chunk})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let info = owner.ok("group_info", json!({"group_ids": ["big"]})).await;
    assert_eq!(info["groups"][0]["member_count"], MEMBERS);

    let mut clients = Vec::with_capacity(names.len());
    for name in &names {
        let token = server.token(name).await;
        clients.push(server.raw_login(name, &token, "phone", "ios").await);
    }
    let before = history(&mut owner, "big").await.len() as u64;
    for i in 0..MESSAGES {
        send(
            &mut owner,
            "big",
            &format!("b{i}"),
            &format!("broadcast {i}"),
        )
        .await;
    }
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("broadcast {i}")).collect();
    let expected_seqs: Vec<u64> = (before + 1..=before + MESSAGES).collect();
    for (name, client) in names.iter().zip(clients.iter_mut()) {
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let message = client.event("message").await;
            if message["content"]["type"] == "text" {
                got.push(message);
            }
        }
        assert_eq!(texts(&got), expected, "{name}");
        assert_eq!(seqs(&got), expected_seqs, "{name}");
    }
    // Nothing twice.
    for (name, client) in names.iter().zip(clients.iter_mut()).take(50) {
        let extra = messages_within(client, Duration::from_millis(20)).await;
        assert!(texts(&extra).is_empty(), "{name} got {extra:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_posts_to_a_group_on_behalf_of_a_member() {
    let (server, mut c) = setup(&["alice", "bob"]).await;
    server.create_user("carol").await;
    create(&mut c[0], "team", &["bob"], json!({})).await;
    let post = |from: &str, id: &str| json!({"from": from, "client_msg_id": id, "content": {"type": "text", "body": {"text": "from the backend"}}});
    let (status, sent) = server
        .rest(
            "POST",
            "/v1/groups/team/messages",
            Some(post("alice", "b1")),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["message"]["from"], "alice");
    // Every device of the sender gets it too: none of them sent it.
    for client in &mut c {
        let got = next_message_of(client, "text").await;
        assert_eq!(got["id"], sent["message"]["id"]);
    }
    let (status, again) = server
        .rest(
            "POST",
            "/v1/groups/team/messages",
            Some(post("alice", "b1")),
        )
        .await;
    assert_eq!((status, again["duplicate"].clone()), (200, json!(true)));
    let refusals = [
        ("/v1/groups/team/messages", post("carol", "b2"), 403, 2005),
        ("/v1/groups/nope/messages", post("alice", "b3"), 404, 3004),
        (
            "/v1/groups/team/messages",
            json!({"from": "alice", "client_msg_id": "b4", "content": {"type": "text", "body": {"text": ""}}}),
            400,
            1000,
        ),
        (
            "/v1/groups/team/messages",
            json!({"from": "alice", "client_msg_id": "b5", "oops": 1, "content": {"type": "text", "body": {"text": "x"}}}),
            400,
            1000,
        ),
    ];
    for (path, body, status, code) in refusals {
        let (got, answer) = server.rest("POST", path, Some(body.clone())).await;
        assert_eq!(
            (got, answer["code"].as_u64()),
            (status, Some(code)),
            "{body}: {answer}"
        );
    }
}
