//! Session lifecycle: the multi-device policy, login and idle timeouts, token expiry and
//! renewal, logout and server shutdown — each ending with the documented event and close code.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use magpie_testkit::{Closed, RawClient, TestServer, now_ms};
use serde_json::{Value, json};

/// The client gets a `kicked` event with `reason`, then the connection closes with 4001.
async fn assert_kicked(client: &mut RawClient, reason: &str) {
    let kicked = client.event("kicked").await;
    assert_eq!(kicked["reason"], reason, "{kicked}");
    assert!(kicked["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(client.closed().await, Closed::Code(4001));
}

async fn assert_alive(client: &mut RawClient) {
    let pong = client.request("ping", json!({})).await;
    assert_eq!(pong["type"], "response", "{pong}");
}

/// No frame of `event` arrives within `wait`.
async fn assert_no_event(client: &mut RawClient, event: &str, wait: Duration) {
    let frames = client.frames_within(wait).await;
    assert!(
        !frames.iter().any(|f| f["event"] == event),
        "unexpected {event}: {frames:?}"
    );
}

#[tokio::test]
async fn a_second_phone_kicks_the_first_with_replaced() {
    let server = TestServer::start().await;
    let token = server.user_with_token("alice").await;
    let mut iphone = server.raw_login("alice", &token, "iphone", "ios").await;
    let mut android = server
        .raw_login("alice", &token, "android", "android")
        .await;
    assert_kicked(&mut iphone, "replaced").await;
    assert_eq!(android.device_ids().await, ["android"]);
}

#[tokio::test]
async fn a_phone_a_browser_and_a_desktop_coexist() {
    let server = TestServer::start().await;
    let token = server.user_with_token("alice").await;
    let mut phone = server.raw_login("alice", &token, "phone", "ios").await;
    let mut web = server.raw_login("alice", &token, "browser", "web").await;
    let mut mac = server.raw_login("alice", &token, "mac", "macos").await;
    for client in [&mut phone, &mut web, &mut mac] {
        assert_eq!(client.device_ids().await, ["browser", "mac", "phone"]);
    }
}

#[tokio::test]
async fn the_same_device_reconnecting_replaces_its_old_connection_with_same_device() {
    let server = TestServer::start().await;
    let token = server.user_with_token("alice").await;
    let mut old = server.raw_login("alice", &token, "phone", "ios").await;
    let mut laptop = server.raw_login("alice", &token, "laptop", "linux").await;
    let mut new = server.raw_login("alice", &token, "phone", "ios").await;
    assert_kicked(&mut old, "same_device").await;
    assert_eq!(new.device_ids().await, ["laptop", "phone"]);
    assert_alive(&mut laptop).await;
}

#[tokio::test]
async fn with_two_devices_per_class_a_third_phone_kicks_the_oldest() {
    let server = TestServer::start_with(|config| config.devices.max_per_class = 2).await;
    let token = server.user_with_token("alice").await;
    let mut first = server.raw_login("alice", &token, "first", "ios").await;
    let mut second = server.raw_login("alice", &token, "second", "android").await;
    assert_eq!(first.device_ids().await, ["first", "second"]);
    let mut third = server.raw_login("alice", &token, "third", "harmony").await;
    assert_kicked(&mut first, "replaced").await;
    assert_alive(&mut second).await;
    assert_eq!(third.device_ids().await, ["second", "third"]);
}

#[tokio::test]
async fn list_devices_shows_only_this_users_online_devices() {
    let server = TestServer::start().await;
    let alice = server.user_with_token("alice").await;
    let bob = server.user_with_token("bob").await;
    let mut phone = server.raw_login("alice", &alice, "phone", "ios").await;
    let web = server.raw_login("alice", &alice, "browser", "web").await;
    let _bob = server.raw_login("bob", &bob, "bob-phone", "ios").await;

    let before = now_ms();
    let answer = phone.request("list_devices", json!({})).await;
    let devices = answer["data"]["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2, "{answer}");
    let phone_entry = devices.iter().find(|d| d["device_id"] == "phone").unwrap();
    assert_eq!(phone_entry["platform"], "ios");
    assert!(phone_entry["connected_at"].as_i64().unwrap() <= before);

    web.close().await;
    // The closed device leaves the list once its session ends.
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids = phone.device_ids().await;
        if ids.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ids, ["phone"]);
}

#[tokio::test]
async fn a_connection_that_does_not_log_in_in_time_is_closed_with_4003() {
    let server = TestServer::start_with(|config| config.gateway.login_timeout_ms = 200).await;
    let mut silent = server.raw().await;
    let token = server.user_with_token("alice").await;
    let mut quick = server.raw_login("alice", &token, "phone", "ios").await;
    let started = tokio::time::Instant::now();
    assert_eq!(silent.closed().await, Closed::Code(4003));
    assert!(started.elapsed() < Duration::from_secs(2));
    // A logged-in connection is not subject to the login timeout.
    assert_alive(&mut quick).await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_with_4004_after_the_idle_timeout() {
    // One heartbeat before the timeout: the client does not read, so it answers no Ping.
    let server = TestServer::start_with(|config| {
        config.gateway.heartbeat_interval_ms = 150;
        config.gateway.idle_timeout_ms = 200;
    })
    .await;
    let token = server.user_with_token("alice").await;
    let mut client = server.raw_login("alice", &token, "phone", "ios").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.closed().await, Closed::Code(4004));
}

#[tokio::test]
async fn a_connection_that_answers_pings_outlives_the_idle_timeout() {
    let server = TestServer::start_with(|config| {
        config.gateway.heartbeat_interval_ms = 100;
        config.gateway.idle_timeout_ms = 250;
    })
    .await;
    let token = server.user_with_token("alice").await;
    let mut client = server.raw_login("alice", &token, "phone", "ios").await;
    // Reading lets the WebSocket client answer the server's Pings with Pongs; no request is
    // sent for more than twice the idle timeout.
    let frames = client.frames_within(Duration::from_millis(600)).await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_alive(&mut client).await;
}

#[tokio::test]
async fn token_will_expire_comes_before_expiry_then_token_expired_and_close_4002() {
    let server = TestServer::start_with(|config| config.auth.token_expiry_warning_secs = 1).await;
    server.create_user("alice").await;
    let issued = server.token_with_ttl("alice", Some(2)).await;
    let mut client = server
        .raw_login("alice", &issued.token, "phone", "ios")
        .await;

    let warning = client.event("token_will_expire").await;
    assert_eq!(warning["expires_at"], issued.expires_at);
    assert!(now_ms() < issued.expires_at, "the warning came too late");

    let expired = client.next_frame().await;
    assert_eq!(expired["event"], "token_expired", "{expired}");
    assert_eq!(expired["data"], json!({}));
    assert!(
        now_ms() >= issued.expires_at - 20,
        "token_expired came early"
    );
    assert_eq!(client.closed().await, Closed::Code(4002));
}

#[tokio::test]
async fn renewing_the_token_keeps_the_session_past_the_old_expiry() {
    let server = TestServer::start_with(|config| config.auth.token_expiry_warning_secs = 1).await;
    server.create_user("alice").await;
    let short = server.token_with_ttl("alice", Some(2)).await;
    let long = server.token_with_ttl("alice", Some(3600)).await;
    let mut client = server
        .raw_login("alice", &short.token, "phone", "ios")
        .await;

    let renewed = client
        .request("renew_token", json!({"token": long.token}))
        .await;
    assert_eq!(renewed["type"], "response", "{renewed}");
    assert_eq!(renewed["data"]["expires_at"], long.expires_at);

    let wait = Duration::from_millis((short.expires_at + 300 - now_ms()).max(0) as u64);
    assert_no_event(&mut client, "token_expired", wait).await;
    assert_alive(&mut client).await;
}

#[tokio::test]
async fn renewing_with_another_users_token_fails_and_the_session_continues() {
    let server = TestServer::start().await;
    let alice = server.user_with_token("alice").await;
    let bob = server.user_with_token("bob").await;
    let mut client = server.raw_login("alice", &alice, "phone", "ios").await;
    let answer = client.request("renew_token", json!({"token": bob})).await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["error"]["code"], 2001);
    assert_eq!(answer["op"], "renew_token");
    let answer = client
        .request("renew_token", json!({"token": "junk"}))
        .await;
    assert_eq!(answer["error"]["code"], 2001);
    assert_alive(&mut client).await;
}

#[tokio::test]
async fn logout_answers_then_closes_with_4006_and_the_device_is_offline_at_once() {
    let server = TestServer::start().await;
    let token = server.user_with_token("alice").await;
    let mut laptop = server.raw_login("alice", &token, "laptop", "macos").await;
    let mut phone = server.raw_login("alice", &token, "phone", "ios").await;
    let id = phone.send("logout", Value::Null).await;
    let answer = phone.next_frame().await;
    assert_eq!(answer["type"], "response", "{answer}");
    assert_eq!(answer["id"], id);
    assert_eq!(answer["data"], json!({}));
    assert_eq!(phone.closed().await, Closed::Code(4006));
    // By the time the device sees the close, it is no longer listed.
    assert_eq!(laptop.device_ids().await, ["laptop"]);
}

#[tokio::test]
async fn stopping_the_server_closes_every_connection_with_1012() {
    let mut server = TestServer::start().await;
    let token = server.user_with_token("alice").await;
    let mut logged_in = server.raw_login("alice", &token, "phone", "ios").await;
    let mut anonymous = server.raw().await;
    server.stop().await;
    assert_eq!(logged_in.closed().await, Closed::Code(1012));
    assert_eq!(anonymous.closed().await, Closed::Code(1012));
}
