//! Messaging over the gateway: sends and their rules, dedupe of retries, transient commands,
//! delivery to devices, seq order, sync, history paging, read state, and the MessagePack
//! encoding.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use magpie_proto::codec::SUBPROTOCOL_MSGPACK;
use magpie_testkit::{RawClient, TestServer};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const AB: &str = "c2c:alice:bob";

/// Logs a device of an existing user in with a fresh token.
async fn online(server: &TestServer, user: &str, device: &str, platform: &str) -> RawClient {
    let token = server.token(user).await;
    server.raw_login(user, &token, device, platform).await
}

/// Creates the users and logs one device of each in.
async fn users_online<const N: usize>(server: &TestServer, users: [&str; N]) -> [RawClient; N] {
    let mut clients = Vec::new();
    for user in users {
        server.create_user(user).await;
        clients.push(online(server, user, &format!("{user}-phone"), "ios").await);
    }
    clients.try_into().ok().unwrap()
}

fn send_data(to: &str, client_msg_id: &str, content: Value) -> Value {
    json!({"to": {"kind": "user", "id": to}, "client_msg_id": client_msg_id, "content": content})
}

fn text(body: &str) -> Value {
    json!({"type": "text", "body": {"text": body}})
}

/// Sends a text and returns the stored message.
async fn send_ok(client: &mut RawClient, to: &str, client_msg_id: &str, body: &str) -> Value {
    let answer = client.send_text_message(to, client_msg_id, body).await;
    assert_eq!(answer["type"], "response", "{answer}");
    assert_eq!(answer["data"]["duplicate"], false, "{answer}");
    answer["data"]["message"].clone()
}

async fn get_messages(client: &mut RawClient, query: Value) -> Value {
    let answer = client.request("get_messages", query).await;
    assert_eq!(answer["type"], "response", "{answer}");
    answer["data"].clone()
}

/// The whole history of a conversation, oldest first.
async fn history(client: &mut RawClient, conversation: &str) -> Vec<Value> {
    let page = get_messages(
        client,
        json!({"conversation_id": conversation, "direction": "forward", "limit": 200}),
    )
    .await;
    page["messages"].as_array().unwrap().clone()
}

fn seqs(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

async fn sync(client: &mut RawClient, since: u64, limit: Option<u32>) -> Value {
    let mut data = json!({"since": since});
    if let Some(limit) = limit {
        data["limit"] = json!(limit);
    }
    let answer = client.request("sync", data).await;
    assert_eq!(answer["type"], "response", "{answer}");
    answer["data"].clone()
}

async fn error_code(client: &mut RawClient, op: &str, data: Value) -> Value {
    let answer = client.request(op, data).await;
    assert_eq!(answer["type"], "error", "{op} should fail: {answer}");
    assert_eq!(answer["op"], op);
    answer["error"]["code"].clone()
}

/// Every `message` event that arrives within `wait`.
async fn message_events(client: &mut RawClient, wait: Duration) -> Vec<Value> {
    client
        .frames_within(wait)
        .await
        .into_iter()
        .filter(|f| f["type"] == "event" && f["event"] == "message")
        .map(|f| f["data"].clone())
        .collect()
}

#[tokio::test]
async fn a_message_to_a_user_that_does_not_exist_is_user_not_found_and_stores_nothing() {
    let server = TestServer::start().await;
    let [mut alice] = users_online(&server, ["alice"]).await;
    let code = error_code(
        &mut alice,
        "send",
        send_data("ghost", "m1", text("anyone there?")),
    )
    .await;
    assert_eq!(code, 3001);
    assert!(history(&mut alice, "c2c:alice:ghost").await.is_empty());
    assert_eq!(sync(&mut alice, 0, None).await["conversations"], json!([]));
    // The client_msg_id was not consumed: a real send with it later is stored normally.
    server.create_user("ghost").await;
    let stored = send_ok(&mut alice, "ghost", "m1", "now you exist").await;
    assert_eq!(stored["seq"], 1);
}

#[tokio::test]
async fn a_message_to_yourself_is_a_bad_request() {
    let server = TestServer::start().await;
    let [mut alice] = users_online(&server, ["alice"]).await;
    let code = error_code(&mut alice, "send", send_data("alice", "m1", text("me"))).await;
    assert_eq!(code, 1000);
    assert_eq!(sync(&mut alice, 0, None).await["conversations"], json!([]));
}

#[tokio::test]
async fn a_retried_send_returns_the_original_message_marked_duplicate() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users_online(&server, ["alice", "bob"]).await;
    let original = send_ok(&mut alice, "bob", "retry-me", "once").await;
    // The retry carries different text (as a buggy client might): the original still wins.
    let retry = alice.send_text_message("bob", "retry-me", "twice").await;
    assert_eq!(retry["type"], "response", "{retry}");
    assert_eq!(retry["data"]["duplicate"], true);
    assert_eq!(retry["data"]["message"], original);

    let stored = history(&mut alice, AB).await;
    assert_eq!(stored, vec![original.clone()]);
    assert_eq!(bob.event("message").await, original);
    let again = message_events(&mut bob, Duration::from_millis(200)).await;
    assert!(again.is_empty(), "bob got the message twice: {again:?}");
    let next = send_ok(&mut alice, "bob", "another", "next").await;
    assert_eq!(next["seq"], 2, "the retry took no seq");
}

#[tokio::test]
async fn commands_reach_online_devices_with_seq_0_and_never_enter_history_or_unread() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users_online(&server, ["alice", "bob"]).await;
    let mut alice_web = online(&server, "alice", "alice-web", "web").await;
    let command = json!({"type": "command", "body": {"name": "typing", "data": {"on": true}}});

    let first = send_ok(&mut alice, "bob", "t1", "before").await;
    let answer = alice
        .request("send", send_data("bob", "c1", command.clone()))
        .await;
    assert_eq!(answer["type"], "response", "{answer}");
    let sent = &answer["data"]["message"];
    assert_eq!(sent["seq"], 0);
    assert_eq!(sent["content"], command);
    let second = send_ok(&mut alice, "bob", "t2", "after").await;
    assert_eq!(second["seq"], 2, "a command takes no seq");

    for device in [&mut bob, &mut alice_web] {
        let mut events = Vec::new();
        for _ in 0..3 {
            events.push(device.event("message").await);
        }
        let seqs: Vec<_> = events.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [1, 0, 2], "{events:?}");
        assert_eq!(events[1]["content"], command);
        assert_eq!(events[1]["id"], sent["id"]);
    }
    assert_eq!(history(&mut bob, AB).await, vec![first, second]);
    let state = &sync(&mut bob, 0, None).await["conversations"][0];
    assert_eq!(state["last_seq"], 2);
    assert_eq!(state["unread_count"], 2);
    assert_eq!(state["last_message"]["client_msg_id"], "t2");
}

#[tokio::test]
async fn commands_are_not_delivered_to_offline_users_later() {
    let server = TestServer::start().await;
    let [mut alice] = users_online(&server, ["alice"]).await;
    server.create_user("bob").await;
    let command = json!({"type": "command", "body": {"name": "ring"}});
    let answer = alice.request("send", send_data("bob", "c1", command)).await;
    assert_eq!(answer["type"], "response", "{answer}");
    assert_eq!(answer["data"]["message"]["seq"], 0);

    let mut bob = online(&server, "bob", "bob-phone", "ios").await;
    assert!(
        message_events(&mut bob, Duration::from_millis(200))
            .await
            .is_empty()
    );
    assert_eq!(sync(&mut bob, 0, None).await["conversations"], json!([]));
    assert!(history(&mut bob, AB).await.is_empty());
}

#[tokio::test]
async fn a_command_to_a_user_that_does_not_exist_is_user_not_found() {
    let server = TestServer::start().await;
    let [mut alice] = users_online(&server, ["alice"]).await;
    let command = json!({"type": "command", "body": {"name": "ring"}});
    let code = error_code(&mut alice, "send", send_data("ghost", "c1", command)).await;
    assert_eq!(code, 3001);
}

#[tokio::test]
async fn a_message_reaches_the_recipient_and_the_senders_other_devices_but_not_the_sending_one() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users_online(&server, ["alice", "bob"]).await;
    let mut bob_web = online(&server, "bob", "bob-web", "web").await;
    let mut alice_mac = online(&server, "alice", "alice-mac", "macos").await;

    let sent = send_ok(&mut alice, "bob", "m1", "to all of you").await;
    for device in [&mut bob, &mut bob_web, &mut alice_mac] {
        assert_eq!(device.event("message").await, sent);
    }
    let echoed = message_events(&mut alice, Duration::from_millis(200)).await;
    assert!(
        echoed.is_empty(),
        "the sending device got its own message: {echoed:?}"
    );
}

#[tokio::test]
async fn pipelined_sends_get_increasing_seqs_in_send_order_and_all_answers() {
    let server = TestServer::start_with(|config| {
        config.limits.send_burst = 100;
        config.limits.send_rate_per_sec = 1000.0;
    })
    .await;
    let [mut alice, mut bob] = users_online(&server, ["alice", "bob"]).await;
    let mut ids = Vec::new();
    for n in 0..50 {
        let data = send_data("bob", &format!("p{n}"), text(&format!("message {n}")));
        ids.push(alice.send("send", data).await);
    }
    let mut seq_of = std::collections::HashMap::new();
    let mut answered = Vec::new();
    while seq_of.len() < ids.len() {
        let frame = alice.next_frame().await;
        if frame["type"] == "event" {
            continue;
        }
        assert_eq!(frame["type"], "response", "{frame}");
        let message = &frame["data"]["message"];
        let n: u64 = frame["id"].as_u64().unwrap();
        assert!(seq_of.insert(n, message["seq"].as_u64().unwrap()).is_none());
        answered.push(n);
    }
    // Answers finish a commit at a time and go out several per socket write; still in the
    // order the requests came.
    assert_eq!(answered, ids, "answers in request order");
    let seqs: Vec<u64> = ids.iter().map(|id| seq_of[id]).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<u64>>());

    let mut pushed = Vec::new();
    while pushed.len() < 50 {
        let message = bob.event("message").await;
        pushed.push((
            message["seq"].as_u64().unwrap(),
            message["client_msg_id"].as_str().unwrap().to_owned(),
        ));
    }
    let expected: Vec<_> = (0..50).map(|n| (n + 1, format!("p{n}"))).collect();
    assert_eq!(pushed, expected, "bob sees them in seq order");
}

#[tokio::test]
async fn sync_returns_changed_conversations_with_unread_counts_and_pages_by_limit() {
    let server = TestServer::start().await;
    let [mut bob, mut carol] = users_online(&server, ["bob", "carol"]).await;
    server.create_user("alice").await;
    for n in 0..3 {
        send_ok(&mut bob, "alice", &format!("b{n}"), "from bob").await;
    }
    for n in 0..2 {
        send_ok(&mut carol, "alice", &format!("c{n}"), "from carol").await;
    }
    let mut alice = online(&server, "alice", "alice-phone", "ios").await;

    let all = sync(&mut alice, 0, None).await;
    assert_eq!(all["has_more"], false);
    let rows = all["conversations"].as_array().unwrap();
    let summary: Vec<_> = rows
        .iter()
        .map(|c| {
            (
                c["conversation_id"].as_str().unwrap(),
                c["peer"].as_str().unwrap(),
                c["last_seq"].as_u64().unwrap(),
                c["read_seq"].as_u64().unwrap(),
                c["unread_count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("c2c:alice:bob", "bob", 3, 0, 3),
            ("c2c:alice:carol", "carol", 2, 0, 2)
        ]
    );
    assert_eq!(rows[0]["kind"], "c2c");
    assert_eq!(rows[0]["last_message"]["client_msg_id"], "b2");
    assert_eq!(all["version"], rows[1]["version"]);

    let first = sync(&mut alice, 0, Some(1)).await;
    assert_eq!(first["has_more"], true);
    assert_eq!(first["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(
        first["conversations"][0]["conversation_id"],
        "c2c:alice:bob"
    );
    let second = sync(&mut alice, first["version"].as_u64().unwrap(), Some(1)).await;
    assert_eq!(second["has_more"], false);
    assert_eq!(
        second["conversations"][0]["conversation_id"],
        "c2c:alice:carol"
    );
    assert_eq!(second["version"], all["version"]);

    // Nothing changed since: an empty page at the same version.
    let version = all["version"].as_u64().unwrap();
    let idle = sync(&mut alice, version, None).await;
    assert_eq!(idle["conversations"], json!([]));
    assert_eq!(idle["version"], version);

    // Alice replies to bob: only that conversation changed, and her own message is not unread.
    send_ok(&mut alice, "bob", "a0", "hi bob").await;
    let changed = sync(&mut alice, version, None).await;
    let rows = changed["conversations"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{changed}");
    assert_eq!(rows[0]["conversation_id"], "c2c:alice:bob");
    assert_eq!(
        (
            &rows[0]["last_seq"],
            &rows[0]["read_seq"],
            &rows[0]["unread_count"]
        ),
        (&json!(4), &json!(4), &json!(0))
    );
    let bobs = sync(&mut bob, 0, None).await;
    assert_eq!(bobs["conversations"][0]["unread_count"], 1);
    assert_eq!(bobs["conversations"][0]["read_seq"], 3);
}

#[tokio::test]
async fn sync_limits_outside_1_to_500_are_bad_requests() {
    let server = TestServer::start().await;
    let [mut alice] = users_online(&server, ["alice"]).await;
    for limit in [0, 501] {
        let code = error_code(&mut alice, "sync", json!({"since": 0, "limit": limit})).await;
        assert_eq!(code, 1000, "limit {limit}");
    }
    assert_eq!(sync(&mut alice, 0, Some(500)).await["has_more"], false);
}

/// alice and bob with five messages between them, alternating senders.
async fn five_messages(server: &TestServer) -> (RawClient, Vec<Value>) {
    let [mut alice, mut bob] = users_online(server, ["alice", "bob"]).await;
    let mut sent = Vec::new();
    for n in 0..5 {
        let (from, to) = if n % 2 == 0 {
            (&mut alice, "bob")
        } else {
            (&mut bob, "alice")
        };
        sent.push(send_ok(from, to, &format!("m{n}"), &format!("message {n}")).await);
        // Distinct server times, for the time anchors.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    (alice, sent)
}

#[tokio::test]
async fn get_messages_pages_backward_and_forward_by_seq_with_has_more() {
    let server = TestServer::start().await;
    let (mut alice, sent) = five_messages(&server).await;
    let page = |direction: &str, seq: Option<u64>, limit: u32| {
        let mut query = json!({"conversation_id": AB, "direction": direction, "limit": limit});
        if let Some(seq) = seq {
            query["seq"] = json!(seq);
        }
        query
    };
    let cases: [(Value, Vec<u64>, bool); 8] = [
        (page("backward", None, 2), vec![4, 5], true),
        (page("backward", Some(4), 2), vec![2, 3], true),
        (page("backward", Some(2), 2), vec![1], false),
        (page("backward", Some(1), 2), vec![], false),
        (page("forward", None, 2), vec![1, 2], true),
        (page("forward", Some(2), 2), vec![3, 4], true),
        (page("forward", Some(3), 2), vec![4, 5], false),
        (page("forward", Some(5), 2), vec![], false),
    ];
    for (query, expected, has_more) in cases {
        let result = get_messages(&mut alice, query.clone()).await;
        assert_eq!(seqs(&result), expected, "{query}");
        assert_eq!(result["has_more"], has_more, "{query}");
    }
    // Backward is the default direction and 50 the default limit.
    let default = get_messages(&mut alice, json!({"conversation_id": AB})).await;
    assert_eq!(default["messages"], json!(sent));
    assert_eq!(default["has_more"], false);
}

#[tokio::test]
async fn get_messages_pages_backward_and_forward_by_time() {
    let server = TestServer::start().await;
    let (mut alice, sent) = five_messages(&server).await;
    let t: Vec<i64> = sent
        .iter()
        .map(|m| m["server_time"].as_i64().unwrap())
        .collect();
    assert!(t.windows(2).all(|w| w[0] < w[1]), "{t:?}");
    let page = |direction: &str, time: i64, limit: u32| json!({"conversation_id": AB, "direction": direction, "time": time, "limit": limit});
    let cases: [(Value, Vec<u64>, bool); 5] = [
        (page("forward", t[2], 10), vec![3, 4, 5], false),
        (page("forward", t[1], 2), vec![2, 3], true),
        (page("backward", t[2], 10), vec![1, 2], false),
        (page("backward", t[3], 1), vec![3], true),
        (page("backward", t[0], 10), vec![], false),
    ];
    for (query, expected, has_more) in cases {
        let result = get_messages(&mut alice, query.clone()).await;
        assert_eq!(seqs(&result), expected, "{query}");
        assert_eq!(result["has_more"], has_more, "{query}");
    }
}

#[tokio::test]
async fn get_messages_with_both_seq_and_time_or_a_bad_limit_is_a_bad_request() {
    let server = TestServer::start().await;
    let (mut alice, _) = five_messages(&server).await;
    let bad = [
        json!({"conversation_id": AB, "seq": 2, "time": 1}),
        json!({"conversation_id": AB, "limit": 0}),
        json!({"conversation_id": AB, "limit": 201}),
        json!({"conversation_id": AB, "limit": 1000}),
        json!({"conversation_id": "c2c:bob:alice"}),
        json!({"conversation_id": "nonsense"}),
    ];
    for query in bad {
        assert_eq!(
            error_code(&mut alice, "get_messages", query.clone()).await,
            1000,
            "{query}"
        );
    }
    let max = get_messages(&mut alice, json!({"conversation_id": AB, "limit": 200})).await;
    assert_eq!(seqs(&max).len(), 5);
}

#[tokio::test]
async fn conversations_of_other_users_cannot_be_read_or_marked() {
    let server = TestServer::start().await;
    let (_alice, sent) = five_messages(&server).await;
    server.create_user("carol").await;
    let mut carol = online(&server, "carol", "carol-phone", "ios").await;
    // Someone else's one-to-one conversation; a group that does not exist.
    for (conversation, expected) in [(AB, 3002), ("grp:team", 3004)] {
        let code = error_code(
            &mut carol,
            "get_messages",
            json!({"conversation_id": conversation}),
        )
        .await;
        assert_eq!(code, expected, "{conversation}");
        let code = error_code(
            &mut carol,
            "mark_read",
            json!({"conversation_id": conversation, "seq": 5}),
        )
        .await;
        assert_eq!(code, expected, "{conversation}");
    }
    // A conversation carol could have but has no message in yet.
    let code = error_code(
        &mut carol,
        "mark_read",
        json!({"conversation_id": "c2c:alice:carol", "seq": 1}),
    )
    .await;
    assert_eq!(code, 3002);
    // Nothing changed for the participants.
    let mut bob = online(&server, "bob", "bob-web", "web").await;
    assert_eq!(history(&mut bob, AB).await, sent);
    let state = &sync(&mut bob, 0, None).await["conversations"][0];
    assert_eq!(state["read_seq"], 4);
}

#[tokio::test]
async fn mark_read_updates_other_devices_and_clamps_to_the_last_seq() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users_online(&server, ["alice", "bob"]).await;
    let mut alice_web = online(&server, "alice", "alice-web", "web").await;
    for n in 0..3 {
        send_ok(&mut bob, "alice", &format!("m{n}"), "unread").await;
    }

    let answer = alice
        .request("mark_read", json!({"conversation_id": AB, "seq": 2}))
        .await;
    assert_eq!(answer["type"], "response", "{answer}");
    let state = &answer["data"];
    assert_eq!(
        (&state["read_seq"], &state["unread_count"]),
        (&json!(2), &json!(1))
    );
    assert_eq!(state["last_seq"], 3);
    assert!(state.get("last_message").is_none(), "{state}");

    let read = alice_web.event("conversation_read").await;
    assert_eq!(
        read,
        json!({"conversation_id": AB, "read_seq": 2, "unread_count": 1, "version": state["version"]})
    );

    let clamped = alice
        .request("mark_read", json!({"conversation_id": AB, "seq": 1000}))
        .await;
    assert_eq!(clamped["data"]["read_seq"], 3);
    assert_eq!(clamped["data"]["unread_count"], 0);
    assert_eq!(alice_web.event("conversation_read").await["read_seq"], 3);

    // Going backwards changes nothing and tells no one.
    let back = alice
        .request("mark_read", json!({"conversation_id": AB, "seq": 1}))
        .await;
    assert_eq!(back["data"]["read_seq"], 3);
    assert_eq!(back["data"]["version"], clamped["data"]["version"]);
    let frames = alice_web.frames_within(Duration::from_millis(150)).await;
    assert!(frames.is_empty(), "{frames:?}");
    let own = alice.frames_within(Duration::from_millis(50)).await;
    assert!(
        !own.iter().any(|f| f["event"] == "conversation_read"),
        "the marking device is not told: {own:?}"
    );
    assert_eq!(
        sync(&mut alice_web, 0, None).await["conversations"][0]["unread_count"],
        0
    );
}

#[tokio::test]
async fn every_stored_message_type_is_stored_and_delivered_as_sent() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users_online(&server, ["alice", "bob"]).await;
    let contents = [
        json!({"type": "image", "body": {"url": "https://x/i.png", "size": 10, "width": 2, "height": 3, "thumbnail_url": "https://x/t.png", "file_name": "i.png"}}),
        json!({"type": "voice", "body": {"url": "https://x/v.ogg", "size": 5, "duration_ms": 1500}}),
        json!({"type": "video", "body": {"url": "https://x/v.mp4", "duration_ms": 9000, "width": 640, "height": 480}}),
        json!({"type": "file", "body": {"url": "https://x/f.pdf", "size": 99, "file_name": "f.pdf"}}),
        json!({"type": "location", "body": {"latitude": -33.5, "longitude": 151.25, "description": "Sydney"}}),
        json!({"type": "custom", "body": {"data": {"card": [1, 2]}, "description": "a card"}}),
        json!({"type": "text", "body": {"text": "ünïcödé ✓ 🐦"}}),
    ];
    let mut stored = Vec::new();
    for (n, content) in contents.iter().enumerate() {
        let mut data = send_data("bob", &format!("t{n}"), content.clone());
        data["ext"] = json!({"n": n, "nested": {"ok": true}});
        let answer = alice.request("send", data).await;
        assert_eq!(answer["type"], "response", "{content}: {answer}");
        let message = answer["data"]["message"].clone();
        assert_eq!(message["content"], *content);
        assert_eq!(message["ext"]["n"], n);
        assert_eq!(message["from"], "alice");
        assert_eq!(message["to"], json!({"kind": "user", "id": "bob"}));
        assert!(
            message["id"].as_str().unwrap().parse::<u64>().is_ok(),
            "{message}"
        );
        assert_eq!(bob.event("message").await, message);
        stored.push(message);
    }
    assert_eq!(history(&mut bob, AB).await, stored);
}

#[tokio::test]
async fn messagepack_and_json_clients_talk_to_each_other() {
    let server = TestServer::start().await;
    let alice_token = server.user_with_token("alice").await;
    let [mut bob] = users_online(&server, ["bob"]).await;
    let mut alice = server.raw_with(SUBPROTOCOL_MSGPACK).await;
    let login = alice
        .login("alice", &alice_token, "alice-phone", "android")
        .await;
    assert_eq!(login["type"], "response", "{login}");

    let mut data = send_data("bob", "mp1", text("packed"));
    data["ext"] = json!({"list": [1, "two", null], "big": 9_007_199_254_740_991_u64});
    let answer = alice.request("send", data).await;
    assert_eq!(answer["type"], "response", "{answer}");
    let sent = answer["data"]["message"].clone();
    assert!(sent["id"].is_string(), "ids travel as strings: {sent}");
    assert_eq!(bob.event("message").await, sent);

    let reply = send_ok(&mut bob, "alice", "js1", "got it").await;
    assert_eq!(alice.event("message").await, reply);
    assert_eq!(history(&mut alice, AB).await, vec![sent, reply]);
    let state = &sync(&mut alice, 0, None).await["conversations"][0];
    assert_eq!(state["unread_count"], 1);
}

#[tokio::test]
async fn an_unsupported_subprotocol_is_refused_at_upgrade_with_400_and_code_1002() {
    let server = TestServer::start().await;
    let refused = RawClient::connect(&server.ws_endpoint(), Some("magpie.v2.json"))
        .await
        .err()
        .expect("the upgrade must be refused");
    let tungstenite::Error::Http(response) = refused else {
        panic!("expected an HTTP refusal, got {refused:?}");
    };
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["code"], 1002, "{body}");
}

#[tokio::test]
async fn the_first_supported_subprotocol_the_client_offers_is_chosen() {
    let server = TestServer::start().await;
    let offer = |protocols: Option<&'static str>| {
        let mut request = server.ws_endpoint().into_client_request().unwrap();
        if let Some(protocols) = protocols {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
        }
        request
    };
    let cases = [
        (
            Some("magpie.v9.json, magpie.v1.msgpack, magpie.v1.json"),
            Some("magpie.v1.msgpack"),
        ),
        (
            Some("magpie.v1.json, magpie.v1.msgpack"),
            Some("magpie.v1.json"),
        ),
        (None, None),
    ];
    for (offered, chosen) in cases {
        let (_ws, response) = tokio_tungstenite::connect_async(offer(offered))
            .await
            .unwrap();
        let selected = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(selected.as_deref(), chosen, "offered {offered:?}");
    }
}
