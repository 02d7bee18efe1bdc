//! Several nodes sharing PostgreSQL and NATS behave as one server: messages, kicks, read
//! state and device lists cross nodes; seqs stay gap-free with writers on every node; the
//! nodes ride out a NATS restart and dropped database connections.
//!
//! Each test starts its own PostgreSQL and NATS (skipped with a printed reason when they are
//! not installed, unless `MAGPIE_REQUIRE_SERVICES=1`).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use magpie_testkit::{Closed, RawClient, TestCluster, free_port};
use serde_json::json;

/// Polls `list_devices` until it shows `want` (membership news travels asynchronously).
async fn wait_for_devices(client: &mut RawClient, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ids = client.device_ids().await;
        if ids == want {
            return;
        }
        assert!(Instant::now() < deadline, "devices {ids:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Texts of the text `message` events that arrive within `wait` (group notices left out).
async fn texts_within(client: &mut RawClient, wait: Duration) -> Vec<String> {
    client
        .frames_within(wait)
        .await
        .iter()
        .filter(|f| f["event"] == "message" && f["data"]["content"]["type"] == "text")
        .map(|f| {
            f["data"]["content"]["body"]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_accepted_by_one_node_reaches_devices_on_the_others() {
    let Some(cluster) = TestCluster::start("cluster_delivery", 3).await else {
        return;
    };
    let [n0, n1, n2] = &cluster.nodes[..] else {
        unreachable!()
    };
    let alice = n0.user_with_token("alice").await;
    let bob = n0.user_with_token("bob").await;
    let mut alice_phone = n0.raw_login("alice", &alice, "phone", "ios").await;
    let mut alice_desk = n2.raw_login("alice", &alice, "desk", "linux").await;
    let mut bob_phone = n1.raw_login("bob", &bob, "phone", "android").await;

    let sent = alice_phone
        .send_text_message("bob", "m-1", "hello across")
        .await;
    assert_eq!(sent["type"], "response", "{sent}");
    let got = bob_phone.event("message").await;
    assert_eq!(got["content"]["body"]["text"], "hello across");
    assert_eq!(got["seq"], 1);
    let mine = alice_desk.event("message").await;
    assert_eq!(mine["id"], got["id"], "the sender's other device on node 3");

    let reply = bob_phone.send_text_message("alice", "r-1", "hi back").await;
    assert_eq!(reply["type"], "response", "{reply}");
    assert_eq!(alice_phone.event("message").await["seq"], 2);
    assert_eq!(alice_desk.event("message").await["seq"], 2);
    // Nothing is delivered twice.
    assert!(
        texts_within(&mut alice_desk, Duration::from_millis(300))
            .await
            .is_empty()
    );
    assert!(
        texts_within(&mut bob_phone, Duration::from_millis(300))
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_through_three_nodes_get_gap_free_seqs() {
    let Some(cluster) = TestCluster::start_with("cluster_seqs", 3, |config| {
        config.limits.send_rate_per_sec = 1e6;
        config.limits.send_burst = 1_000_000;
    })
    .await
    else {
        return;
    };
    let n = &cluster.nodes;
    let alice = n[0].user_with_token("alice").await;
    let bob = n[0].user_with_token("bob").await;
    let mut bob_phone = n[2].raw_login("bob", &bob, "phone", "ios").await;
    const PER_NODE: usize = 40;
    let mut senders = Vec::new();
    for (i, platform) in ["ios", "linux", "web"].into_iter().enumerate() {
        let mut client = n[i].raw_login("alice", &alice, platform, platform).await;
        senders.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for k in 0..PER_NODE {
                let id = format!("{platform}-{k}");
                let answer = client.send_text_message("bob", &id, &id).await;
                assert_eq!(answer["type"], "response", "{answer}");
                // A retry through the same node is answered with the original.
                if k % 10 == 0 {
                    let again = client.send_text_message("bob", &id, &id).await;
                    assert_eq!(again["data"]["duplicate"], true, "{again}");
                    assert_eq!(
                        again["data"]["message"]["seq"],
                        answer["data"]["message"]["seq"]
                    );
                }
                seqs.push(answer["data"]["message"]["seq"].as_u64().unwrap());
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for sender in senders {
        all.extend(sender.await.unwrap());
    }
    let total = 3 * PER_NODE;
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=total as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );

    // Bob's device got every message exactly once.
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < total && Instant::now() < deadline {
        for frame in bob_phone.frames_within(Duration::from_millis(200)).await {
            if frame["event"] == "message" {
                let seq = frame["data"]["seq"].as_u64().unwrap();
                assert!(seen.insert(seq), "seq {seq} delivered twice");
            }
        }
    }
    assert_eq!(seen.len(), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_policy_and_the_device_list_span_nodes() {
    let Some(cluster) = TestCluster::start("cluster_devices", 3).await else {
        return;
    };
    let n = &cluster.nodes;
    let token = n[0].user_with_token("alice").await;
    let mut iphone = n[0].raw_login("alice", &token, "iphone", "ios").await;
    let mut browser = n[2].raw_login("alice", &token, "browser", "web").await;
    wait_for_devices(&mut browser, &["browser", "iphone"]).await;

    // A second phone on another node replaces the first one.
    let mut android = n[1].raw_login("alice", &token, "android", "android").await;
    let kicked = iphone.event("kicked").await;
    assert_eq!(kicked["reason"], "replaced", "{kicked}");
    assert_eq!(iphone.closed().await, Closed::Code(4001));
    wait_for_devices(&mut android, &["android", "browser"]).await;
    wait_for_devices(&mut browser, &["android", "browser"]).await;

    // The same device id on another node replaces its older session.
    let mut browser_again = n[0].raw_login("alice", &token, "browser", "web").await;
    let kicked = browser.event("kicked").await;
    assert_eq!(kicked["reason"], "same_device", "{kicked}");
    wait_for_devices(&mut browser_again, &["android", "browser"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_tokens_on_one_node_kicks_everywhere_and_the_token_stays_dead() {
    let Some(cluster) = TestCluster::start("cluster_revoke", 3).await else {
        return;
    };
    let n = &cluster.nodes;
    let token = n[0].user_with_token("alice").await;
    let mut on_one = n[1].raw_login("alice", &token, "phone", "ios").await;
    let mut on_two = n[2].raw_login("alice", &token, "desk", "macos").await;

    let (status, body) = n[0].rest("DELETE", "/v1/users/alice/tokens", None).await;
    assert_eq!(status, 200, "{body}");
    for client in [&mut on_one, &mut on_two] {
        let kicked = client.event("kicked").await;
        assert_eq!(kicked["reason"], "tokens_revoked", "{kicked}");
    }
    // Every node checked the token against the new generation, not a cached one.
    for node in n {
        let mut client = node.raw().await;
        let answer = client.login("alice", &token, "phone", "ios").await;
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["error"]["code"], 2003, "token_revoked: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_state_reaches_the_users_devices_on_other_nodes() {
    let Some(cluster) = TestCluster::start("cluster_read_sync", 2).await else {
        return;
    };
    let n = &cluster.nodes;
    let alice = n[0].user_with_token("alice").await;
    let bob = n[0].user_with_token("bob").await;
    let mut phone = n[0].raw_login("alice", &alice, "phone", "ios").await;
    let mut desk = n[1].raw_login("alice", &alice, "desk", "windows").await;
    let mut bob_client = n[1].raw_login("bob", &bob, "b", "web").await;
    let sent = bob_client.send_text_message("alice", "x", "read me").await;
    let conversation = sent["data"]["message"]["conversation_id"].clone();
    phone.event("message").await;
    desk.event("message").await;

    let read = phone
        .request(
            "mark_read",
            json!({"conversation_id": conversation, "seq": 1}),
        )
        .await;
    assert_eq!(read["type"], "response", "{read}");
    let synced = desk.event("conversation_read").await;
    assert_eq!(synced["read_seq"], 1);
    assert_eq!(synced["unread_count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_nats_restart_delivery_resumes_and_devices_resync() {
    let Some(mut cluster) = TestCluster::start("cluster_nats_restart", 2).await else {
        return;
    };
    let alice = cluster.nodes[0].user_with_token("alice").await;
    let bob = cluster.nodes[0].user_with_token("bob").await;
    let mut alice_client = cluster.nodes[0]
        .raw_login("alice", &alice, "a", "ios")
        .await;
    let mut bob_client = cluster.nodes[1].raw_login("bob", &bob, "b", "ios").await;

    tokio::task::block_in_place(|| cluster.nats.restart().unwrap());
    // Sent while the nodes may still be reconnecting: stored, and found by the resync.
    let early = alice_client
        .send_text_message("bob", "early", "early")
        .await;
    assert_eq!(early["type"], "response", "{early}");

    let required = bob_client.event("sync_required").await;
    assert_eq!(required, json!({}));
    let sync = bob_client.request("sync", json!({"since": 0})).await;
    let last_seq = sync["data"]["conversations"][0]["last_seq"]
        .as_u64()
        .unwrap();
    assert!(last_seq >= 1, "{sync}");

    // Live delivery works again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut k = 0;
    loop {
        k += 1;
        let id = format!("late-{k}");
        let answer = alice_client.send_text_message("bob", &id, &id).await;
        assert_eq!(answer["type"], "response", "{answer}");
        let texts = texts_within(&mut bob_client, Duration::from_millis(300)).await;
        if texts.contains(&id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no live delivery after the NATS restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_database_connections_fail_clearly_and_the_node_recovers() {
    let Some(cluster) = TestCluster::start("cluster_pg_drop", 1).await else {
        return;
    };
    let node = &cluster.nodes[0];
    let alice = node.user_with_token("alice").await;
    node.create_user("bob").await;
    let mut client = node.raw_login("alice", &alice, "a", "ios").await;
    let first = client.send_text_message("bob", "before", "before").await;
    assert_eq!(first["type"], "response", "{first}");

    let dropped = tokio::task::block_in_place(|| cluster.postgres.terminate_connections());
    assert!(dropped > 0, "the node had connections to drop");

    // Every answer is either a success or the documented `unavailable`; soon all succeed.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut k = 0;
    let mut failures = 0;
    loop {
        k += 1;
        let id = format!("after-{k}");
        let answer = client.send_text_message("bob", &id, &id).await;
        if answer["type"] == "response" {
            break;
        }
        assert_eq!(answer["error"]["code"], 5001, "unavailable: {answer}");
        failures += 1;
        assert!(Instant::now() < deadline, "the node did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("sends refused while reconnecting: {failures}");
    let (status, body) = node.rest("GET", "/v1/users/bob", None).await;
    assert_eq!(status, 200, "{body}");
    let history = client
        .request(
            "get_messages",
            json!({"conversation_id": "c2c:alice:bob", "direction": "forward"}),
        )
        .await;
    let seqs: Vec<u64> = history["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{history}"
    );
}

#[tokio::test]
async fn unreachable_services_stop_the_start_with_a_clear_error() {
    let Some(postgres) = tokio::task::spawn_blocking(|| {
        magpie_testkit::magpie_services::postgres_or_skip("cluster_unreachable")
    })
    .await
    .unwrap() else {
        return;
    };
    let start = |store: String, bus: Option<String>| async move {
        let mut config = magpie_testkit::test_config(tempfile::tempdir().unwrap().path());
        config.store.url = Some(store);
        config.cluster.url = bus;
        let listener = magpie_server::bind(([127, 0, 0, 1], 0).into()).unwrap();
        magpie_server::run(config, listener, std::future::pending())
            .await
            .expect_err("must not start")
            .to_string()
    };
    let dead = free_port();
    let error = start(format!("postgres://postgres@127.0.0.1:{dead}/x"), None).await;
    assert!(error.contains(&format!("127.0.0.1:{dead}")), "{error}");
    assert!(error.to_lowercase().contains("postgres"), "{error}");

    let db = postgres.create_database("unreachable");
    let error = start(db, Some(format!("nats://127.0.0.1:{dead}"))).await;
    assert!(
        error.contains(&format!("nats://127.0.0.1:{dead}")),
        "{error}"
    );
    assert!(error.contains("NATS"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_requests_fail_fast_and_clearly_then_work_again() {
    let Some(mut cluster) = TestCluster::start("cluster_pg_down", 1).await else {
        return;
    };
    let alice = cluster.nodes[0].user_with_token("alice").await;
    cluster.nodes[0].create_user("bob").await;
    let mut client = cluster.nodes[0]
        .raw_login("alice", &alice, "a", "ios")
        .await;
    let first = client.send_text_message("bob", "before", "before").await;
    assert_eq!(first["type"], "response", "{first}");

    tokio::task::block_in_place(|| cluster.postgres.stop());
    let started = Instant::now();
    let refused = client.send_text_message("bob", "down", "down").await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["error"]["code"], 5001, "unavailable: {refused}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered within the store's call timeout, not hung: {:?}",
        started.elapsed()
    );
    let (status, body) = cluster.nodes[0].rest("GET", "/v1/users/nobody", None).await;
    assert_eq!((status, body["code"].clone()), (503, json!(5001)), "{body}");

    tokio::task::block_in_place(|| cluster.postgres.restart()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut k = 0;
    loop {
        k += 1;
        let id = format!("after-{k}");
        let answer = client.send_text_message("bob", &id, &id).await;
        if answer["type"] == "response" {
            break;
        }
        assert_eq!(answer["error"]["code"], 5001, "{answer}");
        assert!(Instant::now() < deadline, "the node did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_do_not_wait_for_the_bus_while_nats_is_down() {
    let Some(mut cluster) = TestCluster::start("cluster_login_bus_down", 2).await else {
        return;
    };
    let alice = cluster.nodes[0].user_with_token("alice").await;
    let bob = cluster.nodes[0].user_with_token("bob").await;
    tokio::task::block_in_place(|| cluster.nats.stop());
    // Give the nodes a moment to notice the connection is gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut alice_client = cluster.nodes[0]
        .raw_login("alice", &alice, "a", "ios")
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "login took {:?} while NATS was down",
        started.elapsed()
    );
    let mut bob_client = cluster.nodes[1].raw_login("bob", &bob, "b", "ios").await;
    let sent = alice_client
        .send_text_message("bob", "m", "while down")
        .await;
    assert_eq!(sent["type"], "response", "{sent}");

    // When the bus is back, bob's node tells him to resync, and he finds the message.
    tokio::task::block_in_place(|| cluster.nats.restart()).unwrap();
    assert_eq!(bob_client.event("sync_required").await, json!({}));
    let sync = bob_client.request("sync", json!({"since": 0})).await;
    assert_eq!(sync["data"]["conversations"][0]["last_seq"], 1, "{sync}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_and_group_changes_span_nodes() {
    let Some(cluster) = TestCluster::start("cluster_groups", 3).await else {
        return;
    };
    let [n0, n1, n2] = &cluster.nodes[..] else {
        unreachable!()
    };
    let mut clients = Vec::new();
    for (user, node) in [("alice", n0), ("bob", n1), ("carol", n2)] {
        let token = node.user_with_token(user).await;
        clients.push(node.raw_login(user, &token, "phone", "ios").await);
    }
    let [alice, bob, carol] = &mut clients[..] else {
        unreachable!()
    };
    let created = alice
        .request(
            "group_create",
            json!({"group_id": "team", "name": "team", "members": ["bob", "carol"]}),
        )
        .await;
    assert_eq!(created["type"], "response", "{created}");
    let to_group = |id: &str, text: &str| {
        json!({
            "to": {"kind": "group", "id": "team"},
            "client_msg_id": id,
            "content": {"type": "text", "body": {"text": text}}
        })
    };
    for i in 0..5 {
        let sent = alice
            .request("send", to_group(&format!("m{i}"), &format!("hi {i}")))
            .await;
        assert_eq!(sent["type"], "response", "{sent}");
    }
    let expected: Vec<String> = (0..5).map(|i| format!("hi {i}")).collect();
    for member in [&mut *bob, &mut *carol] {
        assert_eq!(
            texts_within(member, Duration::from_millis(800)).await,
            expected,
            "once each, in order, on another node"
        );
    }
    // A mute decided on node 1 holds on node 2 at once: rosters follow the group's version.
    let muted = alice
        .request(
            "group_mute",
            json!({"group_id": "team", "user_ids": ["bob"], "seconds": 60}),
        )
        .await;
    assert_eq!(muted["type"], "response", "{muted}");
    let refused = bob.request("send", to_group("b1", "can I?")).await;
    assert_eq!(refused["error"]["code"], 2006, "{refused}");
    let from_carol = carol.request("send", to_group("c1", "from node 3")).await;
    assert_eq!(from_carol["type"], "response", "{from_carol}");
    assert_eq!(
        texts_within(bob, Duration::from_millis(800)).await,
        ["from node 3"]
    );
}
