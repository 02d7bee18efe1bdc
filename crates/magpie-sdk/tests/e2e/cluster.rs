//! The SDK against a real two-node cluster (PostgreSQL + NATS, each started for the test;
//! skipped with a printed reason when they are not installed unless
//! `MAGPIE_REQUIRE_SERVICES=1`).
//!
//! A module of the `e2e` binary (see there), so it reuses its helpers.

use magpie_sdk::ClientConfig;
use magpie_testkit::TestCluster;

use super::*;

fn client_on(url: &str, dir: &std::path::Path, device: &str) -> Client {
    let config = ClientConfig::builder(url, dir)
        .device_id(DeviceId::new(device).expect("device id"))
        .build()
        .expect("config");
    Client::new(config).expect("client")
}

/// A message that never made it onto the bus is fetched by the recipient's SDK when its node
/// comes back from a NATS outage and sends `sync_required` — on the same connection, without
/// waiting for another message or a reconnect.
///
/// To lose a delivery deterministically (async-nats buffers publishes while it reconnects), the
/// message is sent through a third server on the same database that is not on the bus at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_missed_the_bus_arrives_through_the_resync_after_a_nats_outage() {
    let Some(mut cluster) = TestCluster::start_with("sdk_resync_after_nats_outage", 2, |config| {
        config.limits.send_rate_per_sec = 1e6;
        config.limits.send_burst = 1_000_000;
    })
    .await
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let alice_token = cluster.nodes[0].user_with_token("alice").await;
    let bob_token = cluster.nodes[0].user_with_token("bob").await;
    let alice = client_on(&cluster.nodes[0].ws_url(), &dir.path().join("a"), "a-phone");
    let bob = client_on(&cluster.nodes[1].ws_url(), &dir.path().join("b"), "b-phone");
    let mut bob_events = bob.events();
    alice
        .login(user("alice"), alice_token)
        .await
        .expect("login");
    bob.login(user("bob"), bob_token).await.expect("login");
    sync_messages(&mut bob_events).await;

    let first = alice
        .chat()
        .send(user("bob"), MessageContent::text("before"), None)
        .await
        .expect("send");
    wait_for(
        &mut bob_events,
        "the first message",
        |e| matches!(e, ClientEvent::MessageReceived(m) if m.id == first.id),
    )
    .await;

    let off_bus = TestServer::start_with(|config| {
        config.store.url = Some(cluster.database_url().to_owned());
    })
    .await;
    let mut raw = off_bus
        .raw_login("alice", &off_bus.token("alice").await, "a-desk", "linux")
        .await;
    let sent = raw
        .send_text_message("bob", "off-bus-1", "never on the bus")
        .await;
    assert_eq!(sent["type"], "response", "{sent}");
    let missed_id = sent["data"]["message"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_quiet(&mut bob_events, Duration::from_millis(500), |e| {
        matches!(e, ClientEvent::MessageReceived(_))
    })
    .await;

    tokio::task::block_in_place(|| cluster.nats.restart()).expect("nats starts again");
    let got = wait_for(
        &mut bob_events,
        "the missed message",
        |e| matches!(e, ClientEvent::MessageReceived(m) if m.id.to_string() == missed_id),
    )
    .await;
    let ClientEvent::MessageReceived(got) = got else {
        unreachable!()
    };
    assert_eq!(got.seq, 2);
    assert_eq!(text(&got), "never on the bus");
    // Bob never left node 2.
    assert_eq!(
        bob.current_server().as_deref(),
        Some(cluster.nodes[1].ws_endpoint().as_str())
    );
}
