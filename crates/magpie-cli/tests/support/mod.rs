//! A real `magpie` process for the crash tests: spawned from the built binary, killed with
//! SIGKILL, restarted on the same port and data.

#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use magpie_testkit::{RawClient, TEST_SECRET};
use serde_json::{Value, json};

pub struct Server {
    pub port: u16,
    pub data: PathBuf,
    pub config: PathBuf,
    /// More `serve` arguments (e.g. `--store`, `--cluster`).
    pub args: Vec<String>,
    pub child: Option<Child>,
}

impl Server {
    pub fn new(data: PathBuf, config: PathBuf, args: Vec<String>) -> Self {
        Self {
            port: magpie_testkit::free_port(),
            data,
            config,
            args,
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_magpie"))
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data")
            .arg(&self.data)
            .arg("--config")
            .arg(&self.config)
            .args(&self.args)
            .env("MAGPIE_APP_SECRET", TEST_SECRET)
            .env("MAGPIE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub async fn wait_healthy(&self) {
        let http = reqwest::Client::new();
        for _ in 0..300 {
            let health = http.get(format!("http://127.0.0.1:{}/healthz", self.port));
            if let Ok(r) = health.send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("server did not come up");
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
        }
    }

    pub async fn rest(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = reqwest::Client::new()
            .request(method, format!("http://127.0.0.1:{}{path}", self.port))
            .bearer_auth(TEST_SECRET);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    pub async fn token(&self, user: &str) -> String {
        let answer = self
            .rest(
                reqwest::Method::POST,
                &format!("/v1/users/{user}/tokens"),
                None,
            )
            .await;
        answer["token"].as_str().unwrap().to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Every message of a conversation, read back over the raw protocol.
pub async fn history(server: &Server, user: &str, conversation: &str) -> Vec<Value> {
    let mut raw = RawClient::connect(&format!("ws://127.0.0.1:{}/v1/ws", server.port), None)
        .await
        .unwrap();
    let token = server.token(user).await;
    let login = raw.login(user, &token, "history-reader", "web").await;
    assert_eq!(login["type"], "response", "{login}");
    let mut all = Vec::new();
    loop {
        let after = all.len();
        let page = raw
            .request(
                "get_messages",
                json!({"conversation_id": conversation, "direction": "forward", "seq": after, "limit": 200}),
            )
            .await;
        let messages = page["data"]["messages"].as_array().unwrap().clone();
        all.extend(messages);
        if page["data"]["has_more"] != true {
            return all;
        }
    }
}

/// Every message bob's conversation with each sender holds: seqs 1..=`per_sender` without a gap
/// or a duplicate, each text once, and every acked message stored with the id and
/// `client_msg_id` it was acked with.
pub async fn assert_history_matches_acks(
    server: &Server,
    acked_by_sender: &std::collections::HashMap<String, Vec<magpie_sdk::Message>>,
    per_sender: usize,
) {
    for (user, acked) in acked_by_sender {
        let conversation = format!("c2c:bob:{user}");
        let stored = history(server, "bob", &conversation).await;
        let seqs: Vec<u64> = stored.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=per_sender as u64).collect::<Vec<_>>(),
            "{conversation}: gap-free, no duplicates"
        );
        let texts: std::collections::HashSet<&str> = stored
            .iter()
            .map(|m| m["content"]["body"]["text"].as_str().unwrap())
            .collect();
        assert_eq!(
            texts.len(),
            per_sender,
            "{conversation}: each message stored once"
        );
        for message in acked {
            let kept = &stored[message.seq as usize - 1];
            assert_eq!(
                kept["id"],
                json!(message.id.to_string()),
                "acked id is what is stored"
            );
            assert_eq!(kept["client_msg_id"], json!(message.client_msg_id));
        }
    }
}

/// Reads bob's events until `total` messages arrived; each conversation must have come
/// exactly once and in seq order, 1..=`per_sender`.
pub async fn assert_received_once_in_order(
    events: &mut magpie_sdk::Events,
    total: usize,
    per_sender: usize,
) {
    let mut seen: std::collections::HashMap<String, Vec<u64>> = std::collections::HashMap::new();
    let mut received = 0;
    while received < total {
        let event = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .unwrap_or_else(|_| panic!("bob received {received} of {total}"));
        if let Some(magpie_sdk::ClientEvent::MessageReceived(message)) = event {
            seen.entry(message.conversation_id.to_string())
                .or_default()
                .push(message.seq);
            received += 1;
        }
    }
    for (conversation, seqs) in seen {
        assert_eq!(
            seqs,
            (1..=per_sender as u64).collect::<Vec<_>>(),
            "{conversation} as bob saw it"
        );
    }
}
