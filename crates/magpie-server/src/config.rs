//! Server configuration: defaults, the TOML file, and environment overrides.
//!
//! Every field has a default, so an empty file (or none) is a working single-node setup.
//! Unknown keys are rejected so that a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything the server can be told.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the embedded store and the generated app secret live.
    pub data_dir: PathBuf,
    /// The secret the app backend authenticates with and tokens are signed with. When absent
    /// it is read from `<data_dir>/app_secret`, or generated there on first start.
    pub app_secret: Option<String>,
    /// Log filter, in `tracing_subscriber::EnvFilter` syntax.
    pub log: String,
    /// Log format: `text` or `json`.
    pub log_format: String,
    /// Tokens.
    pub auth: AuthConfig,
    /// WebSocket sessions.
    pub gateway: GatewayConfig,
    /// Message and rate limits.
    pub limits: LimitsConfig,
    /// Multi-device policy.
    pub devices: DevicesConfig,
    /// Storage: the embedded SQLite file, or a shared PostgreSQL.
    pub store: StoreConfig,
    /// Multi-node clusters over NATS.
    pub cluster: ClusterConfig,
    /// Group limits.
    pub groups: GroupsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("magpie-data"),
            app_secret: None,
            log: "info".into(),
            log_format: "text".into(),
            auth: AuthConfig::default(),
            gateway: GatewayConfig::default(),
            limits: LimitsConfig::default(),
            devices: DevicesConfig::default(),
            store: StoreConfig::default(),
            cluster: ClusterConfig::default(),
            groups: GroupsConfig::default(),
        }
    }
}

/// Token settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Lifetime of a token when the request names none.
    pub default_token_ttl_secs: u64,
    /// Longest lifetime a token may be issued with.
    pub max_token_ttl_secs: u64,
    /// How long before expiry a session gets `token_will_expire`.
    pub token_expiry_warning_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            default_token_ttl_secs: 7 * 24 * 3600,
            max_token_ttl_secs: 365 * 24 * 3600,
            token_expiry_warning_secs: 300,
        }
    }
}

/// WebSocket session settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// How often the server pings each connection.
    pub heartbeat_interval_ms: u64,
    /// A connection the server heard nothing from for this long is closed.
    pub idle_timeout_ms: u64,
    /// A connection must log in within this time.
    pub login_timeout_ms: u64,
    /// Frames above this are answered with `too_large`; the connection survives.
    pub max_frame_bytes: usize,
    /// Frames above this cannot be read at all; the connection is closed with 1009.
    pub hard_frame_bytes: usize,
    /// Events queued for a connection before it counts as a slow consumer and is closed.
    pub outbound_queue: usize,
    /// Requests of one connection processed concurrently before the server stops reading it.
    pub max_in_flight: usize,
    /// How long shutdown waits for sessions to close.
    pub shutdown_grace_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 25_000,
            idle_timeout_ms: 60_000,
            login_timeout_ms: 10_000,
            max_frame_bytes: 128 * 1024,
            hard_frame_bytes: 1024 * 1024,
            outbound_queue: 1024,
            max_in_flight: 64,
            shutdown_grace_ms: 5_000,
        }
    }
}

/// Per-message and per-device limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest content plus ext of a message, JSON-encoded.
    pub max_message_bytes: usize,
    /// Sustained sends per second per device.
    pub send_rate_per_sec: f64,
    /// Sends a device may make in a burst above the sustained rate.
    pub send_burst: u32,
    /// Sustained requests of any kind per second per connection.
    pub request_rate_per_sec: f64,
    /// Burst of requests of any kind per connection.
    pub request_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            send_rate_per_sec: 5.0,
            send_burst: 10,
            request_rate_per_sec: 50.0,
            request_burst: 100,
        }
    }
}

/// Multi-device policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevicesConfig {
    /// Devices of one platform class (mobile, desktop, web, mini_program) a user may have
    /// online at once; a login beyond it kicks the oldest.
    pub max_per_class: usize,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self { max_per_class: 1 }
    }
}

/// How hard the embedded store presses commits to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Survives power loss (an fsync per group commit).
    #[default]
    Full,
    /// Survives a crash or `kill -9` of the server, not a power loss.
    Normal,
}

/// Storage settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// A `postgres://` URL: keep everything in that PostgreSQL database (required for a
    /// cluster). Absent: the embedded SQLite file in `data_dir`.
    pub url: Option<String>,
    /// PostgreSQL connections this node opens at most.
    pub max_connections: usize,
    /// Commit durability of the SQLite store.
    pub durability: Durability,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 16,
            durability: Durability::Full,
            max_batch: 512,
        }
    }
}

/// Cluster settings. Without `url` the node runs alone.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// A `nats://` URL of the NATS server the nodes talk through.
    pub url: Option<String>,
    /// Prefix of every subject this cluster uses, so several clusters can share a NATS server.
    pub subject_prefix: String,
    /// How often a node announces that it is alive.
    pub heartbeat_ms: u64,
    /// A node not heard from for this long counts as gone: its devices are forgotten.
    pub node_timeout_ms: u64,
    /// How long a node's id lease lasts without renewal (renewed every third of it). A node
    /// that cannot renew in time stops issuing message ids, and stops serving if it lost it.
    pub node_lease_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            url: None,
            subject_prefix: "magpie".into(),
            heartbeat_ms: 1_000,
            node_timeout_ms: 5_000,
            node_lease_ms: 30_000,
        }
    }
}

/// Group limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    /// Members of a group that does not say otherwise.
    pub default_max_members: u32,
    /// The most members any group may be configured for.
    pub max_members_limit: u32,
    /// Groups up to this size keep read receipts with member lists and send `group_read`
    /// events; larger groups answer read counts only.
    pub read_receipt_members: u32,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            default_max_members: magpie_proto::group::DEFAULT_MAX_MEMBERS,
            max_members_limit: 100_000,
            read_receipt_members: 500,
        }
    }
}

/// A configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this config.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// An environment variable has a bad value.
    #[error("invalid value of {name}: {message}")]
    Env {
        /// The variable.
        name: &'static str,
        /// Why.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// The app secret could not be read or written.
    #[error("app secret at {path}: {source}")]
    Secret {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Applies `MAGPIE_*` environment overrides read through `get` (so tests need not touch
    /// the process environment).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("MAGPIE_LISTEN") {
            self.listen = v.parse().map_err(|e| ConfigError::Env {
                name: "MAGPIE_LISTEN",
                message: format!("{e}"),
            })?;
        }
        if let Some(v) = get("MAGPIE_DATA") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("MAGPIE_APP_SECRET") {
            self.app_secret = Some(v);
        }
        if let Some(v) = get("MAGPIE_LOG") {
            self.log = v;
        }
        if let Some(v) = get("MAGPIE_STORE") {
            self.store.url = Some(v);
        }
        if let Some(v) = get("MAGPIE_CLUSTER") {
            self.cluster.url = Some(v);
        }
        Ok(())
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.gateway.heartbeat_interval_ms == 0
            || self.gateway.idle_timeout_ms <= self.gateway.heartbeat_interval_ms
        {
            return bad(
                "gateway.idle_timeout_ms must be larger than gateway.heartbeat_interval_ms (> 0)",
            );
        }
        if self.gateway.max_frame_bytes == 0
            || self.gateway.hard_frame_bytes < self.gateway.max_frame_bytes
        {
            return bad("gateway.hard_frame_bytes must be at least gateway.max_frame_bytes (> 0)");
        }
        if self.limits.max_message_bytes == 0
            || self.limits.max_message_bytes > self.gateway.max_frame_bytes
        {
            return bad("limits.max_message_bytes must be between 1 and gateway.max_frame_bytes");
        }
        if self.limits.send_rate_per_sec <= 0.0 || self.limits.request_rate_per_sec <= 0.0 {
            return bad("rates must be positive");
        }
        if self.devices.max_per_class == 0 {
            return bad("devices.max_per_class must be at least 1");
        }
        if self.auth.default_token_ttl_secs == 0
            || self.auth.default_token_ttl_secs > self.auth.max_token_ttl_secs
        {
            return bad(
                "auth.default_token_ttl_secs must be between 1 and auth.max_token_ttl_secs",
            );
        }
        if matches!(&self.app_secret, Some(s) if s.len() < 16) {
            return bad("app_secret must be at least 16 characters");
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad("log_format must be \"text\" or \"json\"");
        }
        if let Some(url) = &self.store.url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return bad(
                "store.url must be a postgres:// URL (leave it out for the embedded store)",
            );
        }
        if self.store.max_connections < 2 {
            return bad("store.max_connections must be at least 2");
        }
        if let Some(url) = &self.cluster.url {
            if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                return bad("cluster.url must be a nats:// URL");
            }
            if self.store.url.is_none() {
                return bad(
                    "a cluster needs a shared store: set store.url to a postgres:// URL too",
                );
            }
            if self.app_secret.is_none() {
                // Each node would generate its own, and tokens would work on one node only.
                return bad("a cluster needs app_secret set explicitly, the same on every node");
            }
        }
        let prefix_ok = !self.cluster.subject_prefix.is_empty()
            && self
                .cluster
                .subject_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !prefix_ok {
            return bad("cluster.subject_prefix must be letters, digits, '_' or '-'");
        }
        if self.cluster.heartbeat_ms == 0
            || self.cluster.node_timeout_ms < 2 * self.cluster.heartbeat_ms
        {
            return bad(
                "cluster.node_timeout_ms must be at least twice cluster.heartbeat_ms (> 0)",
            );
        }
        if self.groups.default_max_members < 2
            || self.groups.default_max_members > self.groups.max_members_limit
        {
            return bad(
                "groups.default_max_members must be between 2 and groups.max_members_limit",
            );
        }
        if self.cluster.node_lease_ms < 3_000 {
            return bad("cluster.node_lease_ms must be at least 3000");
        }
        Ok(())
    }

    /// The file that keeps a generated app secret.
    pub fn secret_path(&self) -> PathBuf {
        self.data_dir.join("app_secret")
    }

    /// The configured secret, or the one kept in the data dir, or a new one generated and
    /// kept there. The flag is true when the secret was generated now.
    pub fn resolve_app_secret(&self) -> Result<(String, bool), ConfigError> {
        if let Some(secret) = &self.app_secret {
            return Ok((secret.clone(), false));
        }
        let path = self.secret_path();
        let io = |source| ConfigError::Secret {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(secret) if !secret.trim().is_empty() => {
                return Ok((secret.trim().to_owned(), false));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        std::fs::create_dir_all(&self.data_dir).map_err(io)?;
        let secret = generate_secret();
        write_private(&path, &secret).map_err(io)?;
        Ok((secret, true))
    }

    pub(crate) fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.gateway.heartbeat_interval_ms)
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.gateway.idle_timeout_ms)
    }
}

fn generate_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, contents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_example_is_a_valid_configuration_of_the_defaults() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n").expect("README has a toml block") + 8;
        let end = start + readme[start..].find("```").expect("the block ends");
        let config = Config::from_toml(&readme[start..end]).expect("the README's example parses");
        assert_eq!(config.groups.read_receipt_members, 500);
        assert_eq!(config.groups.default_max_members, 3000);
        config.validate().expect("valid");
    }

    #[test]
    fn an_empty_file_is_the_default_config() {
        let config = Config::from_toml("").expect("empty");
        config.validate().expect("defaults are valid");
        assert_eq!(config.limits.max_message_bytes, 64 * 1024);
        assert_eq!(config.devices.max_per_class, 1);
    }

    #[test]
    fn a_cluster_needs_postgres_and_a_shared_secret() {
        let parse = |text: &str| Config::from_toml(text).expect("parses").validate();
        let err = parse("[cluster]\nurl = \"nats://127.0.0.1:4222\"\n").expect_err("no store");
        assert!(err.to_string().contains("store.url"), "{err}");
        let err = parse("[store]\nurl = \"postgres://h/db\"\n[cluster]\nurl = \"nats://h:4222\"\n")
            .expect_err("no secret");
        assert!(err.to_string().contains("app_secret"), "{err}");
        let err = parse("[store]\nurl = \"mysql://h/db\"\n").expect_err("not postgres");
        assert!(err.to_string().contains("postgres://"), "{err}");
        let err = parse(
            "app_secret = \"0123456789abcdef\"\n[store]\nurl = \"postgres://h/db\"\n[cluster]\nurl = \"redis://h\"\n",
        )
        .expect_err("not nats");
        assert!(err.to_string().contains("nats://"), "{err}");
        parse(
            "app_secret = \"0123456789abcdef\"\n[store]\nurl = \"postgres://h/db\"\n[cluster]\nurl = \"nats://h:4222\"\n",
        )
        .expect("a complete cluster config");

        let mut config = Config::default();
        config
            .apply_env(|name| match name {
                "MAGPIE_STORE" => Some("postgres://h/db".into()),
                "MAGPIE_CLUSTER" => Some("nats://h:4222".into()),
                _ => None,
            })
            .expect("env");
        assert_eq!(config.store.url.as_deref(), Some("postgres://h/db"));
        assert_eq!(config.cluster.url.as_deref(), Some("nats://h:4222"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let err = Config::from_toml("[limits]\nmax_mesage_bytes = 5\n").expect_err("typo");
        assert!(err.to_string().contains("max_mesage_bytes"), "{err}");
        let config =
            Config::from_toml("[gateway]\nidle_timeout_ms = 10\nheartbeat_interval_ms = 20\n")
                .expect("parses");
        assert!(config.validate().is_err());
        let config = Config::from_toml("app_secret = \"short\"\n").expect("parses");
        assert!(config.validate().is_err());
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut config = Config::from_toml("listen = \"127.0.0.1:1\"\n").expect("parses");
        config
            .apply_env(|name| match name {
                "MAGPIE_LISTEN" => Some("0.0.0.0:9000".into()),
                "MAGPIE_APP_SECRET" => Some("0123456789abcdef".into()),
                _ => None,
            })
            .expect("valid env");
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.app_secret.as_deref(), Some("0123456789abcdef"));
        let err = config
            .apply_env(|name| (name == "MAGPIE_LISTEN").then(|| "nope".to_owned()))
            .expect_err("bad address");
        assert!(err.to_string().contains("MAGPIE_LISTEN"));
    }

    #[test]
    fn a_generated_secret_is_kept_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        let (first, generated) = config.resolve_app_secret().expect("generate");
        assert!(generated);
        assert!(first.len() >= 32);
        let (second, generated) = config.resolve_app_secret().expect("reuse");
        assert!(!generated);
        assert_eq!(first, second);
    }
}
