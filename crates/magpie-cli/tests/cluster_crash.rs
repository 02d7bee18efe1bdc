//! `kill -9` of one node of a three-node cluster (real `magpie` processes on a real PostgreSQL
//! and NATS) while SDK clients send through all three: the devices on the dead node reconnect
//! to the others by themselves, nothing acked is lost, nothing is stored or shown twice, and
//! the recipient sees every conversation in seq order.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use magpie_sdk::{
    Client, ClientConfig, DeviceId, Message, MessageContent, Platform, ServerOrder, UserId,
};
use magpie_testkit::magpie_services::{nats_or_skip, postgres_or_skip};
use serde_json::json;

mod support;
use support::{Server, assert_history_matches_acks, assert_received_once_in_order};

const SENDERS: usize = 6;
const PER_SENDER: usize = 60;

/// A client that tries the nodes in the order given (so the test decides who starts where).
async fn client(nodes: &[&Server], dir: &Path, user: &str) -> (Client, magpie_sdk::Events) {
    let config = ClientConfig::builder_with_urls(nodes.iter().map(|n| n.url()), dir)
        .server_order(ServerOrder::AsListed)
        .device_id(DeviceId::new(format!("{user}-dev")).unwrap())
        .platform(Platform::Linux)
        .build()
        .unwrap();
    let client = Client::new(config).unwrap();
    let events = client.events();
    client
        .login(UserId::new(user).unwrap(), nodes[0].token(user).await)
        .await
        .unwrap();
    (client, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_of_one_node_loses_nothing_and_duplicates_nothing() {
    let Some((postgres, nats)) = tokio::task::spawn_blocking(|| {
        let postgres = postgres_or_skip("cluster_kill_dash_nine")?;
        let nats = nats_or_skip("cluster_kill_dash_nine")?;
        Some((postgres, nats))
    })
    .await
    .unwrap() else {
        return;
    };
    let database = tokio::task::block_in_place(|| postgres.create_database("magpie"));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("magpie.toml");
    std::fs::write(
        &config,
        "[limits]\nsend_rate_per_sec = 100000.0\nsend_burst = 100000\n\
         request_rate_per_sec = 100000.0\nrequest_burst = 100000\n\
         [cluster]\nheartbeat_ms = 200\nnode_timeout_ms = 1000\n",
    )
    .unwrap();
    let args = vec![
        "--store".to_owned(),
        database,
        "--cluster".to_owned(),
        nats.url(),
    ];
    let mut nodes: Vec<Server> = (0..3)
        .map(|i| {
            Server::new(
                dir.path().join(format!("node{i}")),
                config.clone(),
                args.clone(),
            )
        })
        .collect();
    for node in &mut nodes {
        node.spawn();
    }
    for node in &nodes {
        node.wait_healthy().await;
    }

    let senders: Vec<String> = (0..SENDERS).map(|i| format!("sender{i}")).collect();
    for user in senders.iter().map(String::as_str).chain(["bob"]) {
        nodes[1]
            .rest(
                reqwest::Method::POST,
                "/v1/users",
                Some(json!({"id": user})),
            )
            .await;
    }
    // Bob starts on the node that will die; the senders start two per node.
    let order =
        |first: usize| -> Vec<&Server> { (0..3).map(|k| &nodes[(first + k) % 3]).collect() };
    let (bob, mut bob_events) = client(&order(0), &dir.path().join("sdk"), "bob").await;
    let acked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, user) in senders.iter().enumerate() {
        let (sender, _events) = client(&order(i % 3), &dir.path().join("sdk"), user).await;
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut stored: Vec<Message> = Vec::new();
            for i in 0..PER_SENDER {
                let content = MessageContent::text(format!("m-{i}"));
                let message = sender
                    .chat()
                    .send(UserId::new("bob").unwrap(), content, None)
                    .await
                    .unwrap();
                acked.fetch_add(1, Ordering::Relaxed);
                stored.push(message);
            }
            stored
        }));
    }

    // Kill node 0 in the middle of the load and leave it dead.
    while acked.load(Ordering::Relaxed) < SENDERS * PER_SENDER / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nodes[0].kill9();
    assert!(
        acked.load(Ordering::Relaxed) < SENDERS * PER_SENDER,
        "the kill must land while sends are under way"
    );

    let mut acked_by_sender: HashMap<String, Vec<Message>> = HashMap::new();
    for (user, task) in senders.iter().zip(tasks) {
        let stored = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("senders finish on the surviving nodes")
            .unwrap();
        acked_by_sender.insert(user.clone(), stored);
    }

    assert_history_matches_acks(&nodes[2], &acked_by_sender, PER_SENDER).await;
    // Bob, moved off the dead node, saw every message exactly once, in seq order.
    assert_received_once_in_order(&mut bob_events, SENDERS * PER_SENDER, PER_SENDER).await;
    let server = bob.current_server().unwrap_or_default();
    assert_ne!(
        server,
        format!("{}/v1/ws", nodes[0].url()),
        "bob moved off the dead node"
    );
    drop(bob);
}
