//! Limits: oversized messages and frames, the hard frame limit, send and request rates, and
//! the in-flight window. Limits are made small through the config so the tests stay fast.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use magpie_testkit::{Closed, RawClient, TestServer, metric};
use serde_json::{Value, json};

const AB: &str = "c2c:alice:bob";
const MAX_MESSAGE: usize = 1_000;
const MAX_FRAME: usize = 4_000;
const HARD_FRAME: usize = 16_000;

async fn small_limits_server() -> TestServer {
    TestServer::start_with(|config| {
        config.limits.max_message_bytes = MAX_MESSAGE;
        config.gateway.max_frame_bytes = MAX_FRAME;
        config.gateway.hard_frame_bytes = HARD_FRAME;
    })
    .await
}

/// alice (logged in) has sent bob one message; returns her connection and the history.
async fn alice_with_history(server: &TestServer) -> (RawClient, Value) {
    let token = server.user_with_token("alice").await;
    server.create_user("bob").await;
    let mut alice = server.raw_login("alice", &token, "phone", "ios").await;
    let sent = alice.send_text_message("bob", "first", "hello").await;
    assert_eq!(sent["type"], "response", "{sent}");
    let history = history(&mut alice).await;
    assert_eq!(history.as_array().unwrap().len(), 1);
    (alice, history)
}

async fn history(client: &mut RawClient) -> Value {
    let page = client
        .request("get_messages", json!({"conversation_id": AB, "limit": 200}))
        .await;
    assert_eq!(page["type"], "response", "{page}");
    page["data"]["messages"].clone()
}

/// The answers to `ids`, in that order, whatever order they arrive in.
async fn answers(client: &mut RawClient, ids: &[u64]) -> Vec<Value> {
    let mut by_id = std::collections::HashMap::new();
    while by_id.len() < ids.len() {
        let frame = client.next_frame().await;
        if frame["type"] != "event" {
            by_id.insert(frame["id"].as_u64().unwrap(), frame);
        }
    }
    ids.iter().map(|id| by_id.remove(id).unwrap()).collect()
}

/// The request's answer is a `too_large` error naming it.
fn assert_too_large(answer: &Value, id: u64, op: &str) {
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["error"]["code"], 4000, "{answer}");
    assert_eq!((&answer["id"], &answer["op"]), (&json!(id), &json!(op)));
}

fn send_data(client_msg_id: &str, text: &str, ext: Option<Value>) -> Value {
    let mut data = json!({"to": {"kind": "user", "id": "bob"}, "client_msg_id": client_msg_id,
                          "content": {"type": "text", "body": {"text": text}}});
    if let Some(ext) = ext {
        data["ext"] = ext;
    }
    data
}

#[tokio::test]
async fn a_message_over_max_message_bytes_is_too_large_and_not_stored() {
    let server = small_limits_server().await;
    let (mut alice, before) = alice_with_history(&server).await;

    let id = alice
        .send("send", send_data("big", &"x".repeat(MAX_MESSAGE), None))
        .await;
    assert_too_large(&alice.answer(id).await, id, "send");
    // Content and ext count together: each is under the limit alone, not both.
    let ext = json!({"blob": "y".repeat(MAX_MESSAGE - 20)});
    let id = alice
        .send("send", send_data("big-ext", "small", Some(ext)))
        .await;
    assert_too_large(&alice.answer(id).await, id, "send");

    assert_eq!(history(&mut alice).await, before);
    // The connection survives and a message within the limit goes through.
    let ok = alice
        .request(
            "send",
            send_data("fits", &"z".repeat(MAX_MESSAGE / 2), None),
        )
        .await;
    assert_eq!(ok["type"], "response", "{ok}");
    assert_eq!(ok["data"]["message"]["seq"], 2);
}

#[tokio::test]
async fn a_frame_over_max_frame_bytes_is_too_large_and_the_connection_survives() {
    let server = small_limits_server().await;
    let (mut alice, before) = alice_with_history(&server).await;

    // A valid request padded past the frame limit with an unknown field.
    let frame = json!({"id": 900, "op": "ping", "padding": "p".repeat(MAX_FRAME)});
    alice.send_text(frame.to_string()).await;
    assert_too_large(&alice.next_frame().await, 900, "ping");
    // Even when it is not valid JSON at all.
    alice.send_text("{".repeat(MAX_FRAME + 1)).await;
    let answer = alice.next_frame().await;
    assert_eq!(answer["error"]["code"], 4000, "{answer}");
    assert_eq!(answer["id"], Value::Null);

    let pong = alice.request("ping", json!({})).await;
    assert_eq!(pong["type"], "response", "{pong}");
    assert_eq!(history(&mut alice).await, before);
}

#[tokio::test]
async fn a_frame_over_the_hard_limit_closes_the_connection_with_1009() {
    let server = small_limits_server().await;
    let (mut alice, before) = alice_with_history(&server).await;
    let frame = json!({"id": 901, "op": "send",
        "data": send_data("huge", &"h".repeat(HARD_FRAME), None)});
    alice.send_text(frame.to_string()).await;
    assert_eq!(alice.closed().await, Closed::Code(1009));

    let token = server.token("alice").await;
    let mut again = server.raw_login("alice", &token, "phone", "ios").await;
    assert_eq!(history(&mut again).await, before);
}

#[tokio::test]
async fn sends_over_the_rate_are_rate_limited_and_not_stored_until_the_bucket_refills() {
    // Production defaults: 5 sends per second, bursts of 10.
    let server = TestServer::start().await;
    let (mut alice, _) = alice_with_history(&server).await;
    // One token went to the first message; pipeline 11 more.
    let mut ids = Vec::new();
    for n in 0..11 {
        let data = send_data(&format!("r{n}"), "burst", None);
        ids.push(alice.send("send", data).await);
    }
    let answers = answers(&mut alice, &ids).await;
    let accepted = answers.iter().filter(|a| a["type"] == "response").count();
    assert_eq!(accepted, 9, "{answers:?}");
    let limited = &answers[9..];
    for answer in limited {
        assert_eq!(answer["error"]["code"], 4001, "{answer}");
        assert_eq!(answer["op"], "send");
        let retry = answer["error"]["retry_after_ms"].as_u64().unwrap();
        assert!((1..=200).contains(&retry), "{answer}");
    }
    let stored = history(&mut alice).await;
    let ids: Vec<&str> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["client_msg_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 10);
    assert!(!ids.contains(&"r9") && !ids.contains(&"r10"), "{ids:?}");

    let wait = limited[0]["error"]["retry_after_ms"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(wait + 10)).await;
    // The rejected message can now be sent with the same client_msg_id.
    let retry = alice.request("send", send_data("r9", "burst", None)).await;
    assert_eq!(retry["type"], "response", "{retry}");
    assert_eq!(retry["data"]["duplicate"], false);
    assert_eq!(retry["data"]["message"]["seq"], 11);
}

#[tokio::test]
async fn requests_over_the_request_rate_are_rate_limited() {
    let server = TestServer::start_with(|config| {
        config.limits.request_burst = 5;
        config.limits.request_rate_per_sec = 1.0;
    })
    .await;
    let token = server.user_with_token("alice").await;
    // The login is the first of the five.
    let mut alice = server.raw_login("alice", &token, "phone", "ios").await;
    for _ in 0..4 {
        let pong = alice.request("ping", json!({})).await;
        assert_eq!(pong["type"], "response", "{pong}");
    }
    let limited = alice.request("ping", json!({})).await;
    assert_eq!(limited["error"]["code"], 4001, "{limited}");
    assert_eq!(limited["op"], "ping");
    let retry = limited["error"]["retry_after_ms"].as_u64().unwrap();
    assert!((500..=1000).contains(&retry), "about a second: {limited}");
}

#[tokio::test]
async fn a_client_pipelining_beyond_max_in_flight_is_slowed_down_not_refused() {
    let server = TestServer::start_with(|config| {
        config.gateway.max_in_flight = 2;
        config.limits.send_burst = 100;
        config.limits.send_rate_per_sec = 1000.0;
    })
    .await;
    let (mut alice, _) = alice_with_history(&server).await;
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(
            alice
                .send("send", send_data(&format!("w{n}"), "window", None))
                .await,
        );
    }
    for (n, answer) in answers(&mut alice, &ids).await.into_iter().enumerate() {
        assert_eq!(answer["type"], "response", "{answer}");
        assert_eq!(answer["data"]["message"]["seq"], n as u64 + 2);
    }
    assert_eq!(history(&mut alice).await.as_array().unwrap().len(), 31);
}

#[tokio::test]
async fn a_device_that_stops_reading_is_disconnected_rather_than_held_forever() {
    let server = TestServer::start_with(|config| {
        config.gateway.heartbeat_interval_ms = 300;
        config.gateway.idle_timeout_ms = 1_000;
        config.limits.send_burst = 1_000;
        config.limits.send_rate_per_sec = 1_000.0;
        // Alice's 150 sends must not meet the per-connection request limit on a fast machine.
        config.limits.request_burst = 1_000;
        config.limits.request_rate_per_sec = 1_000.0;
    })
    .await;
    let (mut alice, _) = alice_with_history(&server).await;
    let bob_token = server.token("bob").await;
    // Bob logs in and then never reads again: his socket buffers fill up. He keeps sending
    // pings, so the server keeps hearing from him and his idle timeout never strikes.
    let mut bob = server
        .raw_login("bob", &bob_token, "bob-phone", "ios")
        .await;
    let connections = |text: &str| metric(text, "magpie_connections").unwrap();
    assert_eq!(connections(&server.metrics().await), 2.0);

    // About 9 MB for bob: more than loopback socket buffers hold (a few MB), far less than
    // his event queue (1024 events) would need to overflow. Batches, so that alice reads her
    // own (large) answers as she goes.
    let chunk = "x".repeat(60 * 1024);
    for batch in 0..15 {
        let mut ids = Vec::new();
        for n in 0..10 {
            let data = send_data(&format!("f{batch}-{n}"), &chunk, None);
            ids.push(alice.send("send", data).await);
            // Bob's session may already be gone: that is the point.
            let _ = bob.try_send("ping", json!({})).await;
        }
        for answer in answers(&mut alice, &ids).await {
            assert_eq!(answer["type"], "response", "{answer}");
        }
    }
    // Bob's session must end, and as a slow consumer (not through the idle timeout).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let pong = alice.request("ping", json!({})).await;
        assert_eq!(pong["type"], "response");
        let _ = bob.try_send("ping", json!({})).await;
        let metrics = server.metrics().await;
        if connections(&metrics) == 1.0 {
            assert_eq!(metric(&metrics, "magpie_slow_consumers_total"), Some(1.0));
            assert_eq!(metric(&metrics, "magpie_sessions"), Some(1.0));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's session is still open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
