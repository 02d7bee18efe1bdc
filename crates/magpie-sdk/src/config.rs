//! Client configuration.
//!
//! Owns the knobs an app may turn and their defaults, the list of server URLs and their
//! normalisation, and the order in which a client tries them ([`ServerOrder`]).
//! It must stay free of I/O: building a config never touches the network or the disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use magpie_proto::{Codec, DeviceId, Platform};

use crate::error::{Error, Result};

/// How the SDK waits between reconnect attempts.
///
/// The n-th retry after a failure waits `0` for the first, then `base_delay · 2^(n-2)`, capped at
/// `max_delay`, each multiplied by a random factor in `1 ± jitter`. The sequence starts over once
/// a connection has stayed up for `reset_after`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReconnectPolicy {
    /// Delay of the second attempt; each later attempt doubles it (default 250 ms).
    pub base_delay: Duration,
    /// Upper bound of the delay (default 32 s).
    pub max_delay: Duration,
    /// Relative jitter applied to every delay, 0.0 to 1.0 (default 0.2).
    pub jitter: f64,
    /// A connection that stayed up this long resets the sequence (default 30 s).
    pub reset_after: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(32),
            jitter: 0.2,
            reset_after: Duration::from_secs(30),
        }
    }
}

/// The order in which a client tries its server URLs.
///
/// Whatever the order, the client dials one URL per attempt and, when an attempt fails or a
/// connection ends (network failure, idle timeout, a server closing with 1001 "going away" or
/// 1012 "restarting", …), the next attempt dials the **next** URL, cycling through the list.
/// Every URL is tried once in a row before the reconnect backoff waits, so a dead node costs
/// one failed connect, not a backoff delay. Any node serves any user, so changing nodes keeps
/// every delivery guarantee: the outbox resends with the same `client_msg_id`, sync catches
/// up by version and gaps are filled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerOrder {
    /// Each login draws its own random permutation of the URLs and cycles through it
    /// (the default).
    ///
    /// Random rather than round-robin: a round-robin counter would live in one process, and
    /// every installation is its own process, so each would start at the first URL and load
    /// the first node with every client. A random start spreads clients evenly over the
    /// nodes, and a random *permutation* (not a random start in list order) also spreads the
    /// clients of a node that dies over all the others, instead of moving them all to the node
    /// listed after it.
    #[default]
    Shuffled,
    /// The URLs in the order given, starting with the first: a primary with fallbacks, or a
    /// deterministic order for tests. The client does not move back to the first URL while
    /// another one works.
    AsListed,
}

/// Everything a [`Client`](crate::Client) needs to know before it connects.
///
/// Build one with [`ClientConfig::builder`] (one server URL) or
/// [`ClientConfig::builder_with_urls`] (the nodes of a cluster).
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Normalised, without duplicates, never empty once built.
    pub(crate) ws_urls: Vec<String>,
    pub(crate) server_order: ServerOrder,
    pub(crate) data_dir: PathBuf,
    pub(crate) codec: Codec,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect: ReconnectPolicy,
    pub(crate) initial_messages_per_conversation: Option<u64>,
    pub(crate) device_id: Option<DeviceId>,
    pub(crate) platform: Platform,
    pub(crate) client_version: String,
    pub(crate) sync_page_size: u32,
    pub(crate) history_page_size: u32,
    pub(crate) max_concurrent_pulls: usize,
}

impl ClientConfig {
    /// Starts a configuration for a server and a local data directory.
    ///
    /// `server_url` may be `ws://`, `wss://`, `http://` or `https://`; HTTP schemes are mapped to
    /// their WebSocket counterparts and `/v1/ws` is appended when the URL has no path.
    pub fn builder(
        server_url: impl Into<String>,
        data_dir: impl Into<PathBuf>,
    ) -> ClientConfigBuilder {
        Self::builder_with_urls([server_url], data_dir)
    }

    /// Starts a configuration for several server URLs — the nodes of a Magpie cluster, any of
    /// which serves any user — and a local data directory.
    ///
    /// Each URL is read as in [`builder`](Self::builder); [`build`](ClientConfigBuilder::build)
    /// rejects an empty list and names the first URL it cannot read. Duplicates (after
    /// normalisation) are dropped. See [`ServerOrder`] for the order they are tried in.
    ///
    /// ```
    /// # fn demo() -> magpie_sdk::Result<()> {
    /// use magpie_sdk::ClientConfig;
    ///
    /// let config = ClientConfig::builder_with_urls(
    ///     ["wss://chat-1.example.com", "wss://chat-2.example.com"],
    ///     "/tmp/magpie-alice",
    /// )
    /// .build()?;
    /// assert_eq!(config.ws_urls().len(), 2);
    /// # Ok(()) }
    /// # demo().unwrap();
    /// ```
    pub fn builder_with_urls<I, S>(
        server_urls: I,
        data_dir: impl Into<PathBuf>,
    ) -> ClientConfigBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfigBuilder {
            server_urls: server_urls.into_iter().map(Into::into).collect(),
            config: ClientConfig {
                ws_urls: Vec::new(),
                server_order: ServerOrder::default(),
                data_dir: data_dir.into(),
                codec: Codec::Json,
                request_timeout: Duration::from_secs(10),
                connect_timeout: Duration::from_secs(10),
                reconnect: ReconnectPolicy::default(),
                initial_messages_per_conversation: None,
                device_id: None,
                platform: Platform::Linux,
                client_version: concat!("magpie-sdk/", env!("CARGO_PKG_VERSION")).to_owned(),
                // Pages the server answers without leaving its async workers (see the store's
                // read pool); larger ones work but cost the server a thread hand-off.
                sync_page_size: 100,
                history_page_size: 100,
                max_concurrent_pulls: 8,
            },
        }
    }

    /// The first WebSocket endpoint of [`ws_urls`](Self::ws_urls) (the only one for a
    /// configuration made with [`builder`](Self::builder)). Which one a client is connected to
    /// is [`Client::current_server`](crate::Client::current_server).
    pub fn ws_url(&self) -> &str {
        &self.ws_urls[0]
    }

    /// Every WebSocket endpoint the client may connect to, normalised, in the order given.
    pub fn ws_urls(&self) -> &[String] {
        &self.ws_urls
    }

    /// The order in which the endpoints are tried.
    pub fn server_order(&self) -> ServerOrder {
        self.server_order
    }

    /// Where the per-user databases and the device id live.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The wire encoding.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// How long a request waits for its answer.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The reconnect policy.
    pub fn reconnect_policy(&self) -> &ReconnectPolicy {
        &self.reconnect
    }

    /// How many of the newest messages a conversation new to this device starts with
    /// (`None`: all of them).
    pub fn initial_messages_per_conversation(&self) -> Option<u64> {
        self.initial_messages_per_conversation
    }

    /// The platform reported at login.
    pub fn platform(&self) -> Platform {
        self.platform
    }
}

/// Builder of a [`ClientConfig`].
#[derive(Clone, Debug)]
pub struct ClientConfigBuilder {
    server_urls: Vec<String>,
    config: ClientConfig,
}

impl ClientConfigBuilder {
    /// Replaces the server URLs given to the constructor with a list of them (see
    /// [`ClientConfig::builder_with_urls`]).
    pub fn server_urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.server_urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// The order in which the server URLs are tried (default [`ServerOrder::Shuffled`]).
    pub fn server_order(mut self, order: ServerOrder) -> Self {
        self.config.server_order = order;
        self
    }

    /// The wire encoding (default JSON).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.config.codec = codec;
        self
    }

    /// How long a request waits for its answer (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// How long opening the WebSocket may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// The reconnect policy (default 0, 0.25, 0.5 … 32 s with ±20 % jitter).
    pub fn reconnect_policy(mut self, policy: ReconnectPolicy) -> Self {
        self.config.reconnect = policy;
        self
    }

    /// For a conversation this device has never seen, pull only its newest `n` messages during
    /// sync (default: everything). Older history stays available through
    /// [`ChatManager::fetch_history`](crate::ChatManager::fetch_history).
    pub fn initial_messages_per_conversation(mut self, n: Option<u64>) -> Self {
        self.config.initial_messages_per_conversation = n;
        self
    }

    /// The device id sent at login. Default: one generated on first use and kept in
    /// `<data_dir>/device_id`, so that it is stable across restarts of the app.
    pub fn device_id(mut self, device_id: DeviceId) -> Self {
        self.config.device_id = Some(device_id);
        self
    }

    /// The platform sent at login; it decides the multi-device policy class (default `linux`).
    pub fn platform(mut self, platform: Platform) -> Self {
        self.config.platform = platform;
        self
    }

    /// The free-form client version sent at login (default `magpie-sdk/<version>`).
    pub fn client_version(mut self, version: impl Into<String>) -> Self {
        self.config.client_version = version.into();
        self
    }

    /// How many conversations one `sync` page asks for, 1 to 500 (default 100).
    pub fn sync_page_size(mut self, n: u32) -> Self {
        self.config.sync_page_size = n;
        self
    }

    /// How many messages one catch-up `get_messages` page asks for, 1 to 200 (default 100).
    pub fn history_page_size(mut self, n: u32) -> Self {
        self.config.history_page_size = n;
        self
    }

    /// How many conversations are pulled concurrently during sync (default 8).
    pub fn max_concurrent_pulls(mut self, n: usize) -> Self {
        self.config.max_concurrent_pulls = n;
        self
    }

    /// Checks the settings and produces the configuration.
    pub fn build(self) -> Result<ClientConfig> {
        let mut config = self.config;
        config.ws_urls = normalize_urls(&self.server_urls)?;
        if !(1..=500).contains(&config.sync_page_size) {
            return Err(Error::invalid_input("sync_page_size must be 1 to 500"));
        }
        if !(1..=200).contains(&config.history_page_size) {
            return Err(Error::invalid_input("history_page_size must be 1 to 200"));
        }
        if config.max_concurrent_pulls == 0 {
            return Err(Error::invalid_input(
                "max_concurrent_pulls must be at least 1",
            ));
        }
        if config.request_timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(Error::invalid_input("timeouts must be above zero"));
        }
        if !(0.0..=1.0).contains(&config.reconnect.jitter) {
            return Err(Error::invalid_input("reconnect jitter must be 0.0 to 1.0"));
        }
        Ok(config)
    }
}

/// Normalises every URL of the list (see [`normalize_url`]), dropping duplicates. An empty list,
/// or any URL that cannot be read, is an error that names the URL and its position.
fn normalize_urls(urls: &[String]) -> Result<Vec<String>> {
    if urls.is_empty() {
        return Err(Error::invalid_input(
            "no server url: give at least one (ws://, wss://, http:// or https://)",
        ));
    }
    let mut normalized: Vec<String> = Vec::with_capacity(urls.len());
    for (i, url) in urls.iter().enumerate() {
        let ws_url = normalize_url(url).map_err(|e| {
            if urls.len() == 1 {
                e
            } else {
                Error::invalid_input(format!(
                    "server url {} of {} ({:?}): {}",
                    i + 1,
                    urls.len(),
                    url.trim(),
                    e.message()
                ))
            }
        })?;
        if !normalized.contains(&ws_url) {
            normalized.push(ws_url);
        }
    }
    Ok(normalized)
}

/// Maps a server URL to the WebSocket endpoint: `http(s)` becomes `ws(s)`, and an empty path
/// becomes `/v1/ws`. Query strings are kept.
pub(crate) fn normalize_url(url: &str) -> Result<String> {
    let url = url.trim();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::invalid_input(format!("server url {url:?} has no scheme")))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => {
            return Err(Error::invalid_input(format!(
                "server url scheme {other:?} is not ws, wss, http or https"
            )));
        }
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    if authority.is_empty() {
        return Err(Error::invalid_input(format!(
            "server url {url:?} has no host"
        )));
    }
    let (path, query) = match tail.find(['?', '#']) {
        Some(i) => tail.split_at(i),
        None => (tail, ""),
    };
    let path = if path.is_empty() || path == "/" {
        "/v1/ws"
    } else {
        path
    };
    Ok(format!("{scheme}://{authority}{path}{query}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn urls_are_normalised_to_the_websocket_endpoint() {
        let cases = [
            ("ws://127.0.0.1:8080", "ws://127.0.0.1:8080/v1/ws"),
            ("ws://127.0.0.1:8080/", "ws://127.0.0.1:8080/v1/ws"),
            ("http://localhost:1", "ws://localhost:1/v1/ws"),
            ("HTTPS://chat.example.com", "wss://chat.example.com/v1/ws"),
            ("wss://h/custom/ws", "wss://h/custom/ws"),
            ("ws://h?x=1", "ws://h/v1/ws?x=1"),
            ("  ws://h:9/v1/ws  ", "ws://h:9/v1/ws"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_url(input).expect(input), want, "{input}");
        }
    }

    #[test]
    fn bad_urls_are_rejected() {
        for bad in ["127.0.0.1:8080", "ftp://h", "ws://", "ws:///path"] {
            let err = normalize_url(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn builder_applies_defaults_and_checks_ranges() {
        let config = ClientConfig::builder("http://h:1", "/tmp/x")
            .build()
            .expect("defaults are valid");
        assert_eq!(config.ws_url(), "ws://h:1/v1/ws");
        assert_eq!(config.codec(), Codec::Json);
        assert_eq!(config.request_timeout(), Duration::from_secs(10));
        assert_eq!(config.initial_messages_per_conversation(), None);

        let err = ClientConfig::builder("ws://h", "/tmp/x")
            .history_page_size(500)
            .build()
            .expect_err("page too large");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn url_lists_are_normalised_deduplicated_and_checked_one_by_one() {
        let config = ClientConfig::builder("ws://ignored", "/tmp/x")
            .server_urls(["http://a:1", "ws://b:2/", "ws://a:1/v1/ws"])
            .build()
            .expect("valid list");
        assert_eq!(config.ws_urls(), ["ws://a:1/v1/ws", "ws://b:2/v1/ws"]);
        assert_eq!(config.ws_url(), "ws://a:1/v1/ws");
        assert_eq!(config.server_order(), ServerOrder::Shuffled);

        let err = ClientConfig::builder_with_urls(Vec::<String>::new(), "/tmp/x")
            .build()
            .expect_err("empty");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);

        let err = ClientConfig::builder_with_urls(["ws://a", "ftp://b", "ws://c"], "/tmp/x")
            .build()
            .expect_err("one bad url");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            err.message().contains("2 of 3") && err.message().contains("ftp://b"),
            "{err}"
        );
    }
}
