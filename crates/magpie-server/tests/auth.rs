//! Authentication on the gateway: requests before login, bad, expired, revoked and foreign
//! tokens, deleted users, and what happens to devices already online when the app backend
//! revokes tokens or deletes the user.

#![allow(clippy::unwrap_used)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use magpie_proto::UserId;
use magpie_server::auth::TokenSigner;
use magpie_testkit::{Closed, RawClient, TEST_SECRET, TestServer, now_ms};
use serde_json::{Value, json};

fn now_secs() -> i64 {
    now_ms() / 1000
}

/// A correctly signed token with chosen times, as any JWT library holding `secret` could mint.
/// It carries token generation 0, which is a fresh user's.
fn signed_token(secret: &str, user: &str, issued_at: i64, ttl_secs: u64) -> String {
    TokenSigner::new(secret).issue(&UserId::new(user).unwrap(), 0, issued_at, ttl_secs)
}

async fn login_error(client: &mut RawClient, user: &str, token: &str) -> Value {
    let answer = client.login(user, token, "d1", "ios").await;
    assert_eq!(answer["type"], "error", "login should fail: {answer}");
    assert_eq!(answer["op"], "login", "{answer}");
    answer["error"].clone()
}

/// The connection is still usable after a failed login: a correct login succeeds on it.
async fn assert_login_works(client: &mut RawClient, user: &str, token: &str) {
    let answer = client.login(user, token, "d1", "ios").await;
    assert_eq!(answer["type"], "response", "{answer}");
    assert_eq!(answer["data"]["user_id"], user);
}

/// No message between alice and bob was stored.
async fn assert_nothing_stored(server: &TestServer) {
    let token = server.token("bob").await;
    let mut bob = server.raw_login("bob", &token, "b-check", "web").await;
    let sync = bob.request("sync", json!({"since": 0})).await;
    assert_eq!(sync["data"]["conversations"], json!([]), "{sync}");
}

#[tokio::test]
async fn requests_before_login_fail_with_unauthenticated_and_do_nothing() {
    let server = TestServer::start().await;
    server.create_user("bob").await;
    let alice_token = server.user_with_token("alice").await;
    let mut client = server.raw().await;
    let requests = [
        ("ping", json!({})),
        ("list_devices", json!({})),
        ("sync", json!({"since": 0})),
        ("get_messages", json!({"conversation_id": "c2c:alice:bob"})),
        (
            "mark_read",
            json!({"conversation_id": "c2c:alice:bob", "seq": 1}),
        ),
        (
            "send",
            json!({"to": {"kind": "user", "id": "bob"}, "client_msg_id": "m1",
                   "content": {"type": "text", "body": {"text": "sneaky"}}}),
        ),
        ("renew_token", json!({"token": alice_token})),
        ("logout", json!({})),
    ];
    for (op, data) in requests {
        let id = client.send(op, data).await;
        let answer = client.answer(id).await;
        assert_eq!(answer["type"], "error", "{op}: {answer}");
        assert_eq!(answer["error"]["code"], 2000, "{op}: {answer}");
        assert_eq!(answer["op"], op);
    }
    assert_login_works(&mut client, "alice", &alice_token).await;
    assert_nothing_stored(&server).await;
}

#[tokio::test]
async fn a_token_that_is_not_a_jwt_is_token_invalid_and_the_connection_stays_open() {
    let server = TestServer::start().await;
    let token = server.user_with_token("alice").await;
    let mut client = server.raw().await;
    for junk in ["", "abc", "a.b.c", "a.b.c.d"] {
        let error = login_error(&mut client, "alice", junk).await;
        assert_eq!(error["code"], 2001, "{junk:?}: {error}");
    }
    assert_login_works(&mut client, "alice", &token).await;
}

#[tokio::test]
async fn a_token_with_tampered_claims_is_token_invalid() {
    let server = TestServer::start().await;
    server.create_user("bob").await;
    let token = server.user_with_token("alice").await;
    // Keep alice's signature but claim to be bob.
    let parts: Vec<&str> = token.split('.').collect();
    let claims = format!(
        r#"{{"sub":"bob","iat":{},"exp":{},"gen":0}}"#,
        now_secs(),
        now_secs() + 3600
    );
    let forged = format!("{}.{}.{}", parts[0], B64.encode(claims), parts[2]);
    let mut client = server.raw().await;
    let error = login_error(&mut client, "bob", &forged).await;
    assert_eq!(error["code"], 2001, "{error}");
    assert_login_works(&mut client, "alice", &token).await;
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_token_invalid() {
    let server = TestServer::start().await;
    let token = server.user_with_token("alice").await;
    let foreign = signed_token("some-other-app-secret-0123", "alice", now_secs(), 3600);
    let mut client = server.raw().await;
    let error = login_error(&mut client, "alice", &foreign).await;
    assert_eq!(error["code"], 2001, "{error}");
    assert_login_works(&mut client, "alice", &token).await;
}

#[tokio::test]
async fn a_token_of_another_user_is_token_invalid() {
    let server = TestServer::start().await;
    let bob_token = server.user_with_token("bob").await;
    let alice_token = server.user_with_token("alice").await;
    let mut client = server.raw().await;
    let error = login_error(&mut client, "alice", &bob_token).await;
    assert_eq!(error["code"], 2001, "{error}");
    assert_login_works(&mut client, "alice", &alice_token).await;
}

#[tokio::test]
async fn an_expired_token_is_token_expired() {
    let server = TestServer::start().await;
    let token = server.user_with_token("alice").await;
    let expired = signed_token(TEST_SECRET, "alice", now_secs() - 120, 60);
    let mut client = server.raw().await;
    let error = login_error(&mut client, "alice", &expired).await;
    assert_eq!(error["code"], 2002, "{error}");
    assert_login_works(&mut client, "alice", &token).await;
}

#[tokio::test]
async fn a_token_issued_with_a_one_second_ttl_expires() {
    let server = TestServer::start().await;
    server.create_user("alice").await;
    let issued = server.token_with_ttl("alice", Some(1)).await;
    let wait_ms = issued.expires_at - now_ms() + 50;
    tokio::time::sleep(std::time::Duration::from_millis(wait_ms.max(0) as u64)).await;
    let mut client = server.raw().await;
    let error = login_error(&mut client, "alice", &issued.token).await;
    assert_eq!(error["code"], 2002, "{error}");
}

#[tokio::test]
async fn a_token_for_a_user_that_never_existed_is_user_not_found() {
    let server = TestServer::start().await;
    let token = signed_token(TEST_SECRET, "ghost", now_secs(), 3600);
    let mut client = server.raw().await;
    let error = login_error(&mut client, "ghost", &token).await;
    assert_eq!(error["code"], 3001, "{error}");
}

#[tokio::test]
async fn revoking_tokens_kicks_online_devices_and_refuses_old_tokens() {
    let server = TestServer::start().await;
    let old = server.user_with_token("alice").await;
    let mut phone = server.raw_login("alice", &old, "phone", "ios").await;
    let mut laptop = server.raw_login("alice", &old, "laptop", "macos").await;

    let (status, body) = server.rest("DELETE", "/v1/users/alice/tokens", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kicked_devices"], 2);
    for device in [&mut phone, &mut laptop] {
        let kicked = device.event("kicked").await;
        assert_eq!(kicked["reason"], "tokens_revoked", "{kicked}");
        assert_eq!(device.closed().await, Closed::Code(4001));
    }

    let mut client = server.raw().await;
    let error = login_error(&mut client, "alice", &old).await;
    assert_eq!(error["code"], 2003, "{error}");
    let fresh = server.token("alice").await;
    assert_login_works(&mut client, "alice", &fresh).await;
}

#[tokio::test]
async fn renewing_with_a_revoked_token_fails_with_token_revoked() {
    let server = TestServer::start().await;
    let old = server.user_with_token("alice").await;
    let (status, _) = server.rest("DELETE", "/v1/users/alice/tokens", None).await;
    assert_eq!(status, 200);
    let fresh = server.token("alice").await;
    let mut client = server.raw_login("alice", &fresh, "phone", "ios").await;
    let answer = client.request("renew_token", json!({"token": old})).await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["error"]["code"], 2003);
    let pong = client.request("ping", json!({})).await;
    assert_eq!(pong["type"], "response", "the session survives: {pong}");
}

#[tokio::test]
async fn deleting_a_user_kicks_their_devices_and_their_tokens_stop_working() {
    let server = TestServer::start().await;
    let token = server.user_with_token("alice").await;
    let mut phone = server.raw_login("alice", &token, "phone", "ios").await;

    let (status, body) = server.rest("DELETE", "/v1/users/alice", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kicked_devices"], 1);
    let kicked = phone.event("kicked").await;
    assert_eq!(kicked["reason"], "user_deleted", "{kicked}");
    assert_eq!(phone.closed().await, Closed::Code(4001));

    let mut client = server.raw().await;
    let error = login_error(&mut client, "alice", &token).await;
    assert_eq!(error["code"], 3001, "{error}");
}

#[tokio::test]
async fn tokens_of_a_deleted_user_do_not_work_for_a_new_user_with_the_same_id() {
    let server = TestServer::start().await;
    let old = server.user_with_token("alice").await;
    let (status, _) = server.rest("DELETE", "/v1/users/alice", None).await;
    assert_eq!(status, 200);
    server.create_user("alice").await;

    let mut client = server.raw().await;
    let error = login_error(&mut client, "alice", &old).await;
    assert_eq!(
        error["code"], 2003,
        "deleting alice revoked her tokens; they must not log in as the new alice: {error}"
    );
    let fresh = server.token("alice").await;
    assert_login_works(&mut client, "alice", &fresh).await;
}

#[tokio::test]
async fn a_second_login_on_the_same_connection_is_invalid_state() {
    let server = TestServer::start().await;
    let token = server.user_with_token("alice").await;
    let mut client = server.raw_login("alice", &token, "phone", "ios").await;
    let answer = client.login("alice", &token, "phone", "ios").await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["error"]["code"], 1003);
    let devices = client.request("list_devices", json!({})).await;
    assert_eq!(devices["data"]["devices"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_login_answer_carries_the_session_parameters() {
    let server = TestServer::start_with(|config| {
        config.gateway.heartbeat_interval_ms = 7_000;
        config.gateway.idle_timeout_ms = 21_000;
        config.limits.max_message_bytes = 1_000;
    })
    .await;
    server.create_user("alice").await;
    let issued = server.token_with_ttl("alice", Some(600)).await;
    let mut client = server.raw().await;
    let answer = client.login("alice", &issued.token, "phone", "ios").await;
    let data = &answer["data"];
    assert_eq!(data["user_id"], "alice");
    assert_eq!(data["device_id"], "phone");
    assert_eq!(data["token_expires_at"], issued.expires_at);
    assert_eq!(data["heartbeat_interval_ms"], 7_000);
    assert_eq!(data["idle_timeout_ms"], 21_000);
    assert_eq!(data["max_frame_bytes"], 128 * 1024);
    assert_eq!(data["max_message_bytes"], 1_000);
    assert!((data["server_time"].as_i64().unwrap() - now_ms()).abs() < 5_000);
}
