//! `kill -9` of the real `magpie` process under load, and restart: every acked message is
//! present with the id and seq it was acked with, seqs are gap-free, nothing is stored or
//! delivered twice, and the SDK's queued sends go out after the restart.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use magpie_sdk::{Client, ClientConfig, DeviceId, Message, MessageContent, Platform, UserId};
use serde_json::json;

mod support;
use support::{Server, assert_history_matches_acks, assert_received_once_in_order};

const SENDERS: usize = 4;
const PER_SENDER: usize = 150;

async fn client(server: &Server, dir: &Path, user: &str) -> (Client, magpie_sdk::Events) {
    let config = ClientConfig::builder(format!("ws://127.0.0.1:{}", server.port), dir)
        .device_id(DeviceId::new(format!("{user}-dev")).unwrap())
        .platform(Platform::Linux)
        .build()
        .unwrap();
    let client = Client::new(config).unwrap();
    let events = client.events();
    client
        .login(UserId::new(user).unwrap(), server.token(user).await)
        .await
        .unwrap();
    (client, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_under_load_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("magpie.toml");
    std::fs::write(
        &config,
        "[limits]\nsend_rate_per_sec = 100000.0\nsend_burst = 100000\n\
         request_rate_per_sec = 100000.0\nrequest_burst = 100000\n",
    )
    .unwrap();
    let mut server = Server::new(dir.path().join("data"), config, Vec::new());
    server.spawn();
    server.wait_healthy().await;

    let senders: Vec<String> = (0..SENDERS).map(|i| format!("sender{i}")).collect();
    for user in senders.iter().map(String::as_str).chain(["bob"]) {
        server
            .rest(
                reqwest::Method::POST,
                "/v1/users",
                Some(json!({"id": user})),
            )
            .await;
    }
    let (bob, mut bob_events) = client(&server, &dir.path().join("sdk"), "bob").await;

    let acked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for user in &senders {
        let (sender, _events) = client(&server, &dir.path().join("sdk"), user).await;
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

    // Kill the server twice in the middle of the load, restarting it each time.
    for threshold in [SENDERS * PER_SENDER / 4, SENDERS * PER_SENDER / 2] {
        while acked.load(Ordering::Relaxed) < threshold {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill9();
        let at_kill = acked.load(Ordering::Relaxed);
        assert!(
            at_kill < SENDERS * PER_SENDER,
            "the kill must land while sends are under way"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.spawn();
        server.wait_healthy().await;
    }

    let mut acked_by_sender: HashMap<String, Vec<Message>> = HashMap::new();
    for (user, task) in senders.iter().zip(tasks) {
        let stored = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("senders finish after the restarts")
            .unwrap();
        acked_by_sender.insert(user.clone(), stored);
    }

    assert_history_matches_acks(&server, &acked_by_sender, PER_SENDER).await;
    // Bob's SDK saw every message exactly once, in seq order per conversation.
    assert_received_once_in_order(&mut bob_events, SENDERS * PER_SENDER, PER_SENDER).await;
    drop(bob);
}
