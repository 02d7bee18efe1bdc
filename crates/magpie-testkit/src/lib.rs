//! Test support for Magpie: start a real server on a random loopback port with a temporary
//! data directory, manage users and tokens over its REST API, and speak the raw protocol.
//!
//! Everything here talks to the server the way production clients do — over TCP — so tests
//! exercise the real gateway, API and store.

#![allow(clippy::unwrap_used, missing_docs)]

mod cluster;
mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use magpie_proto::rest::{IssuedToken, User};
use magpie_server::{Config, ServerError};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use cluster::TestCluster;
pub use magpie_services;
pub use raw::{Closed, FRAME_TIMEOUT, RawClient};

/// The app secret test servers use.
pub const TEST_SECRET: &str = "test-secret-0123456789abcdef";

/// A running server. Stops (gracefully) on [`TestServer::stop`]; dropping it aborts it.
pub struct TestServer {
    addr: SocketAddr,
    config: Config,
    data: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    http: reqwest::Client,
}

/// A configuration suited to tests: small timeouts stay default, durability is relaxed to
/// keep the suite fast (crash durability is tested against the real binary), and limits are
/// the production defaults.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config {
        data_dir: data_dir.to_owned(),
        app_secret: Some(TEST_SECRET.into()),
        ..Config::default()
    };
    config.store.durability = magpie_server::config::Durability::Normal;
    config
}

impl TestServer {
    /// Starts a server with the test configuration.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server whose per-connection rate limits never get in the way of a test or a
    /// smoke run that sends as fast as it can.
    pub async fn start_without_rate_limits() -> Self {
        Self::start_without_rate_limits_and(|_| {}).await
    }

    /// [`start_without_rate_limits`](Self::start_without_rate_limits), then `tweak`.
    pub async fn start_without_rate_limits_and(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_with(|config| {
            config.limits.send_rate_per_sec = 1e9;
            config.limits.send_burst = 1_000_000_000;
            config.limits.request_rate_per_sec = 1e9;
            config.limits.request_burst = 1_000_000_000;
            tweak(config);
        })
        .await
    }

    /// Starts a server after letting `tweak` adjust the test configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut config = test_config(data.path());
        tweak(&mut config);
        let listener = magpie_server::bind(([127, 0, 0, 1], 0).into()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = Self {
            addr,
            config,
            data: Some(data),
            stop: None,
            task: None,
            http: reqwest::Client::new(),
        };
        server.launch(listener).await;
        server
    }

    async fn launch(&mut self, listener: TcpListener) {
        let (stop, stopped) = oneshot::channel::<()>();
        let config = self.config.clone();
        self.task = Some(tokio::spawn(magpie_server::run(
            config,
            listener,
            async move {
                let _ = stopped.await;
            },
        )));
        self.stop = Some(stop);
        self.wait_healthy().await;
    }

    async fn wait_healthy(&self) {
        for _ in 0..200 {
            if let Ok(r) = self
                .http
                .get(format!("{}/healthz", self.http_url()))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("test server did not become healthy");
    }

    /// Stops the server gracefully and waits until it has flushed and exited.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Stops the server and starts it again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = bind_again(self.addr).await;
        self.launch(listener).await;
    }

    /// `host:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://host:port` (the SDK appends `/v1/ws`).
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `http://host:port`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A REST call with the app secret; returns status and JSON body (Null if empty).
    pub async fn rest(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.http_url()))
            .bearer_auth(TEST_SECRET);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, value)
    }

    /// The raw HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Creates a user (panics on failure).
    pub async fn create_user(&self, id: &str) -> User {
        let (status, body) = self
            .rest("POST", "/v1/users", Some(json!({"id": id})))
            .await;
        assert_eq!(status, 201, "create user {id}: {body}");
        serde_json::from_value(body).unwrap()
    }

    /// Issues a token with the default lifetime.
    pub async fn token(&self, id: &str) -> String {
        self.token_with_ttl(id, None).await.token
    }

    /// Issues a token with a lifetime.
    pub async fn token_with_ttl(&self, id: &str, ttl_seconds: Option<u64>) -> IssuedToken {
        let body = ttl_seconds.map(|ttl| json!({"ttl_seconds": ttl}));
        let (status, body) = self
            .rest("POST", &format!("/v1/users/{id}/tokens"), body)
            .await;
        assert_eq!(status, 200, "token for {id}: {body}");
        serde_json::from_value(body).unwrap()
    }

    /// Creates a user and returns a token for it.
    pub async fn user_with_token(&self, id: &str) -> String {
        self.create_user(id).await;
        self.token(id).await
    }

    /// `ws://host:port/v1/ws`, the gateway endpoint.
    pub fn ws_endpoint(&self) -> String {
        format!("{}/v1/ws", self.ws_url())
    }

    /// Opens a raw protocol connection (JSON).
    pub async fn raw(&self) -> RawClient {
        RawClient::connect(&self.ws_endpoint(), None).await.unwrap()
    }

    /// Opens a raw protocol connection offering one subprotocol (e.g. MessagePack).
    pub async fn raw_with(&self, subprotocol: &str) -> RawClient {
        RawClient::connect(&self.ws_endpoint(), Some(subprotocol))
            .await
            .unwrap()
    }

    /// Opens a raw protocol connection and logs in.
    pub async fn raw_login(
        &self,
        user: &str,
        token: &str,
        device: &str,
        platform: &str,
    ) -> RawClient {
        let mut client = self.raw().await;
        let answer = client.login(user, token, device, platform).await;
        assert_eq!(answer["type"], "response", "login failed: {answer}");
        client
    }

    /// Creates each user and logs in one phone of theirs, in order.
    pub async fn log_in_all(&self, users: &[&str]) -> Vec<RawClient> {
        let mut clients = Vec::with_capacity(users.len());
        for user in users {
            let token = self.user_with_token(user).await;
            clients.push(self.raw_login(user, &token, "phone", "ios").await);
        }
        clients
    }

    /// Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.http_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        // Keep the directory until the server is gone.
        let _ = self.data.take();
    }
}

/// Binds the same address again, retrying while the old socket lingers.
pub async fn bind_again(addr: SocketAddr) -> TcpListener {
    for _ in 0..100 {
        if let Ok(listener) = magpie_server::bind(addr) {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot bind {addr} again");
}

/// Reads one metric's value from Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// A loopback port that was free a moment ago (for servers started as separate processes).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wall-clock milliseconds since the Unix epoch, the protocol's time unit.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
