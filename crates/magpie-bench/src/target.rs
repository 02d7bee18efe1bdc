//! The system under test: where it listens, how to authenticate to it, which pid to sample.
//!
//! By default the bench spawns the `magpie` binary itself (a temporary data directory, a
//! generated TOML config that lifts the per-device rate limits and otherwise keeps the
//! defaults, durable commits, `MAGPIE_APP_SECRET` set), so it knows the pid to sample. It can
//! also target a server that is already running (`--server URL --secret S [--pid PID]`). The
//! relay baseline is spawned as a separate `magpie-bench relay` process so that it is
//! measured like the server, apart from the generator.
//!
//! A target can also be a **cluster**: several nodes sharing PostgreSQL and NATS, either
//! spawned by the bench ([`spawn_cluster`]: PostgreSQL and nats-server through
//! `magpie-services`, then N `magpie serve --store … --cluster …` with one app secret) or
//! already running (several `--server` URLs). Scenarios spread their clients over
//! [`Target::nodes`]; the nodes' pids are sampled as one summed group and the backing
//! services separately.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Which kind of server a target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// A Magpie server.
    Magpie,
    /// The bare relay baseline.
    Relay,
}

impl TargetKind {
    /// Lower-case name for tables and file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Magpie => "magpie",
            Self::Relay => "relay",
        }
    }
}

/// A WebSocket endpoint: the socket address to connect to and the request path.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header value (`host:port`).
    pub host: String,
    /// The request path, e.g. `/v1/ws`.
    pub path: String,
}

impl Endpoint {
    /// The endpoint as a `ws://` URL.
    pub fn url(&self) -> String {
        format!("ws://{}{}", self.host, self.path)
    }
}

/// Something a scenario can run against.
#[derive(Clone, Debug)]
pub struct Target {
    /// Magpie or the relay.
    pub kind: TargetKind,
    /// The device WebSocket endpoint.
    pub ws: Endpoint,
    /// Base URL of the REST API (`http://host:port`); `None` for the relay.
    pub http: Option<String>,
    /// The app secret for the REST API; `None` for the relay.
    pub secret: Option<String>,
    /// The server's pid, to sample its RSS and CPU; `None` when unknown (or in-process).
    /// For a cluster: node 0's.
    pub pid: Option<u32>,
    /// Every node of a cluster, node 0 (= `ws`) first; empty for a single server.
    pub nodes: Vec<Endpoint>,
    /// The pids of a cluster's nodes, sampled together (summed); empty for a single server.
    pub node_pids: Vec<u32>,
    /// Backing services sampled separately: (name, root pid; its descendants count too).
    pub services: Vec<(String, u32)>,
}

impl Target {
    /// A Magpie server at `base` (`http://host:port` or `ws://host:port`).
    pub async fn magpie(base: &str, secret: &str, pid: Option<u32>) -> anyhow::Result<Self> {
        let (host, http) = split_base(base)?;
        let addr = resolve(&host).await?;
        Ok(Self {
            kind: TargetKind::Magpie,
            ws: Endpoint {
                addr,
                host,
                path: "/v1/ws".into(),
            },
            http: Some(http),
            secret: Some(secret.to_owned()),
            pid,
            nodes: Vec::new(),
            node_pids: Vec::new(),
            services: Vec::new(),
        })
    }

    /// A cluster of Magpie nodes at `bases` sharing `secret`; `pids` are the nodes' pids
    /// (any subset, or none). Users are seeded through node 0's REST API.
    pub async fn cluster(bases: &[String], secret: &str, pids: Vec<u32>) -> anyhow::Result<Self> {
        let Some(first) = bases.first() else {
            bail!("a cluster needs at least one node");
        };
        let mut target = Self::magpie(first, secret, pids.first().copied()).await?;
        if bases.len() > 1 {
            let mut nodes = Vec::with_capacity(bases.len());
            for base in bases {
                nodes.push(Self::magpie(base, secret, None).await?.ws);
            }
            target.nodes = nodes;
            target.node_pids = pids;
        }
        Ok(target)
    }

    /// Nodes the clients are spread over (1 for a single server or the relay).
    pub fn node_count(&self) -> usize {
        self.nodes.len().max(1)
    }

    /// The WebSocket endpoint of node `node % node_count()`.
    pub fn endpoint(&self, node: usize) -> &Endpoint {
        if self.nodes.is_empty() {
            &self.ws
        } else {
            &self.nodes[node % self.nodes.len()]
        }
    }

    /// Whether the clients are spread over several nodes.
    pub fn is_cluster(&self) -> bool {
        self.nodes.len() > 1
    }

    /// The server processes to sample: every node summed, or the one pid.
    pub fn server_group(&self) -> Option<crate::metrics::ProcGroup> {
        if self.node_pids.is_empty() {
            self.pid.map(crate::metrics::ProcGroup::single)
        } else {
            Some(crate::metrics::ProcGroup {
                pids: self.node_pids.clone(),
                tree: false,
            })
        }
    }

    /// A relay listening on `addr`.
    pub fn relay(addr: SocketAddr, pid: Option<u32>) -> Self {
        Self {
            kind: TargetKind::Relay,
            ws: Endpoint {
                addr,
                host: addr.to_string(),
                path: "/relay".into(),
            },
            http: None,
            secret: None,
            pid,
            nodes: Vec::new(),
            node_pids: Vec::new(),
            services: Vec::new(),
        }
    }

    /// The REST admin client of a Magpie target.
    pub fn admin(&self) -> anyhow::Result<crate::rest::Admin> {
        match (&self.http, &self.secret) {
            (Some(http), Some(secret)) => Ok(crate::rest::Admin::new(http, secret)),
            _ => bail!("{} has no REST API", self.kind.name()),
        }
    }
}

/// `http://h:p/…`, `ws://h:p`, or `h:p` → (`h:p`, `http://h:p`).
fn split_base(base: &str) -> anyhow::Result<(String, String)> {
    let base = base.trim();
    let rest = match base.split_once("://") {
        Some((scheme, rest)) => match scheme {
            "http" | "ws" => rest,
            other => bail!("unsupported scheme {other:?} in {base:?} (use http:// or ws://)"),
        },
        None => base,
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        bail!("no host in {base:?}");
    }
    Ok((host.to_owned(), format!("http://{host}")))
}

async fn resolve(host: &str) -> anyhow::Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host(host)
        .await
        .with_context(|| format!("cannot resolve {host}"))?;
    addrs
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| anyhow!("{host} has no IPv4 address"))
}

/// The configuration the bench gives a spawned server: per-device rate limits lifted,
/// everything else at its default (durable commits).
pub const BENCH_CONFIG: &str = r#"# Generated by magpie-bench: per-device rate limits lifted, everything else default.
log = "warn"

[limits]
send_rate_per_sec = 1000000000.0
send_burst = 1000000000
request_rate_per_sec = 1000000000.0
request_burst = 1000000000

[store]
durability = "full"
"#;

/// A child process that is killed when this is dropped.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    /// What it serves.
    pub target: Target,
    data: Option<tempfile::TempDir>,
    log: Option<PathBuf>,
}

impl Spawned {
    /// The server's log file, if it has one.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// Keeps the data directory (and log) after exit; returns its path.
    pub fn keep_data(&mut self) -> Option<PathBuf> {
        self.data.take().map(tempfile::TempDir::keep)
    }

    /// Kills the process and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The `magpie` binary next to the running executable (`target/release/magpie` when the bench
/// runs from `target/release`).
pub fn default_magpie_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("executable has no directory"))?;
    Ok(dir.join("magpie"))
}

/// A random app secret for a spawned server.
fn fresh_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::from("bench-");
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("no free port")?;
    Ok(listener.local_addr()?.port())
}

/// Spawns `magpie serve` with a fresh data directory under `data_parent` (default: the
/// system temp dir) and `config` (default [`BENCH_CONFIG`]); waits until `/healthz` answers.
pub async fn spawn_magpie(
    bin: &Path,
    data_parent: Option<&Path>,
    config: Option<&Path>,
) -> anyhow::Result<Spawned> {
    spawn_node(bin, data_parent, config, &fresh_secret(), &[]).await
}

/// One `magpie serve` process with its own data directory; `extra` are more arguments.
async fn spawn_node(
    bin: &Path,
    data_parent: Option<&Path>,
    config: Option<&Path>,
    secret: &str,
    extra: &[String],
) -> anyhow::Result<Spawned> {
    if !bin.exists() {
        bail!(
            "magpie binary not found at {} (build it with `cargo build --release -p magpie-cli`, or pass --magpie-bin / --server)",
            bin.display()
        );
    }
    let data = match data_parent {
        Some(parent) => tempfile::Builder::new()
            .prefix("magpie-bench-")
            .tempdir_in(parent),
        None => tempfile::Builder::new().prefix("magpie-bench-").tempdir(),
    }
    .context("cannot create the server's data directory")?;
    let config_path = match config {
        Some(path) => path.to_owned(),
        None => {
            let path = data.path().join("bench.toml");
            std::fs::write(&path, BENCH_CONFIG).context("cannot write the server config")?;
            path
        }
    };
    let log_path = data.path().join("server.log");
    let log = std::fs::File::create(&log_path).context("cannot create the server log")?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(bin)
        .arg("serve")
        .arg("--listen")
        .arg(&listen)
        .arg("--data")
        .arg(data.path().join("db"))
        .arg("--config")
        .arg(&config_path)
        .args(extra)
        .env("MAGPIE_APP_SECRET", secret)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("cannot share the log file")?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let pid = child.id();
    let target = Target::magpie(&listen, secret, pid).await?;
    let mut spawned = Spawned {
        child,
        target,
        data: Some(data),
        log: Some(log_path),
    };
    let admin = spawned.target.admin()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if admin.healthy().await {
            return Ok(spawned);
        }
        if let Ok(Some(status)) = spawned.child.try_wait() {
            let log = spawned
                .log
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default();
            bail!("magpie exited at start ({status}):\n{}", tail(&log, 20));
        }
        if Instant::now() > deadline {
            bail!("magpie did not become healthy within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A cluster the bench spawned: PostgreSQL, nats-server and N `magpie serve` nodes. Dropping
/// it kills the nodes and stops the services (deleting their data).
#[derive(Debug)]
pub struct SpawnedCluster {
    /// The nodes, node 0 first.
    pub nodes: Vec<Spawned>,
    /// All of it as one target (clients spread over the nodes).
    pub target: Target,
    postgres: Option<magpie_services::Postgres>,
    nats: Option<magpie_services::Nats>,
}

impl SpawnedCluster {
    /// Keeps every node's data directory (and log); returns their paths. PostgreSQL's and
    /// NATS's directories are deleted regardless.
    pub fn keep_data(&mut self) -> Vec<PathBuf> {
        self.nodes
            .iter_mut()
            .filter_map(Spawned::keep_data)
            .collect()
    }

    /// Kills the nodes, then stops NATS and PostgreSQL.
    pub async fn stop(mut self) {
        for node in std::mem::take(&mut self.nodes) {
            node.stop().await;
        }
        let (postgres, nats) = (self.postgres.take(), self.nats.take());
        let _ = tokio::task::spawn_blocking(move || {
            drop(nats);
            drop(postgres);
        })
        .await;
    }
}

/// The database the spawned cluster keeps everything in.
pub const CLUSTER_DATABASE: &str = "magpie_bench";

/// Starts PostgreSQL and nats-server (through `magpie-services`: random loopback ports,
/// temporary directories; PostgreSQL with its test settings, see the README), then `nodes`
/// `magpie serve` processes with `--store` / `--cluster` and one app secret, one after
/// another, each waited for on `/healthz`. `note` hears what is started.
pub async fn spawn_cluster(
    bin: &Path,
    nodes: usize,
    data_parent: Option<&Path>,
    config: Option<&Path>,
    note: impl Fn(String),
) -> anyhow::Result<SpawnedCluster> {
    if nodes == 0 {
        bail!("--cluster needs at least 1 node");
    }
    if !bin.exists() {
        bail!(
            "magpie binary not found at {} (build it with `cargo build --release -p magpie-cli`, or pass --magpie-bin / --server)",
            bin.display()
        );
    }
    let (postgres, nats) = tokio::task::spawn_blocking(
        || -> anyhow::Result<(magpie_services::Postgres, magpie_services::Nats)> {
            // Durable, like a production database: the acks measured are acks after an fsync.
            let postgres =
                magpie_services::Postgres::start_durable().context("cannot start PostgreSQL")?;
            postgres
                .execute(&format!("CREATE DATABASE {CLUSTER_DATABASE}"))
                .context("cannot create the cluster's database")?;
            let nats = magpie_services::Nats::start().context("cannot start nats-server")?;
            Ok((postgres, nats))
        },
    )
    .await
    .context("the service start-up thread failed")??;
    let store = postgres.database_url(CLUSTER_DATABASE);
    note(format!(
        "started PostgreSQL (pid {}) at {store} and nats-server (pid {}) at {}",
        postgres.pid().unwrap_or_default(),
        nats.pid().unwrap_or_default(),
        nats.url()
    ));
    let mut cluster = SpawnedCluster {
        nodes: Vec::with_capacity(nodes),
        target: Target::relay(SocketAddr::from(([127, 0, 0, 1], 0)), None),
        postgres: Some(postgres),
        nats: Some(nats),
    };
    let secret = fresh_secret();
    let extra = [
        "--store".to_owned(),
        store,
        "--cluster".to_owned(),
        cluster
            .nats
            .as_ref()
            .map(magpie_services::Nats::url)
            .unwrap_or_default(),
    ];
    for i in 0..nodes {
        let node = match spawn_node(bin, data_parent, config, &secret, &extra).await {
            Ok(node) => node,
            Err(e) => {
                cluster.stop().await;
                return Err(e.context(format!("cluster node {i}")));
            }
        };
        note(format!(
            "spawned node {i} (pid {}) at {}",
            node.target.pid.unwrap_or_default(),
            node.target.ws.url()
        ));
        cluster.nodes.push(node);
    }
    let bases: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.target.ws.host.clone())
        .collect();
    let pids: Vec<u32> = cluster.nodes.iter().filter_map(|n| n.target.pid).collect();
    let mut target = Target::cluster(&bases, &secret, pids).await?;
    target.services = [
        (
            "postgres",
            cluster
                .postgres
                .as_ref()
                .and_then(magpie_services::Postgres::pid),
        ),
        (
            "nats",
            cluster.nats.as_ref().and_then(magpie_services::Nats::pid),
        ),
    ]
    .into_iter()
    .filter_map(|(name, pid)| pid.map(|pid| (name.to_owned(), pid)))
    .collect();
    cluster.target = target;
    Ok(cluster)
}

/// The node of each user of a ring where user `i` sends to user `(i + 1) % users`: round
/// robin (`i % nodes`), so a sender and its recipient are on different nodes; when the
/// ring's wrap-around pair would share a node (`users % nodes == 1`), the last user moves to a
/// node neither of its neighbours uses, if there is one (3 nodes or more).
pub fn ring_nodes(users: usize, nodes: usize) -> Vec<usize> {
    let nodes = nodes.max(1);
    let mut assign: Vec<usize> = (0..users).map(|i| i % nodes).collect();
    if users >= 3 && nodes >= 3 && assign[users - 1] == assign[0] {
        let before = assign[users - 2];
        if let Some(free) = (0..nodes).find(|n| *n != before && *n != assign[0]) {
            assign[users - 1] = free;
        }
    }
    assign
}

/// How many ring pairs (`i → (i + 1) % users`) have both users on the same node.
pub fn same_node_pairs(assign: &[usize]) -> usize {
    let n = assign.len();
    (0..n).filter(|&i| assign[i] == assign[(i + 1) % n]).count()
}

/// Spawns `<bench_bin> relay --listen 127.0.0.1:0` and reads the bound address it prints.
pub async fn spawn_relay(bench_bin: &Path) -> anyhow::Result<Spawned> {
    let mut child = Command::new(bench_bin)
        .arg("relay")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start the relay {}", bench_bin.display()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("relay has no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("the relay did not report its address within 10 s")??
        .ok_or_else(|| anyhow!("the relay exited before reporting its address"))?;
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or(line.trim())
        .parse()
        .with_context(|| format!("unexpected relay output {line:?}"))?;
    let pid = child.id();
    Ok(Spawned {
        child,
        target: Target::relay(addr, pid),
        data: None,
        log: None,
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn base_urls_are_split_into_host_and_http() {
        assert_eq!(
            split_base("http://127.0.0.1:8080/").unwrap(),
            ("127.0.0.1:8080".into(), "http://127.0.0.1:8080".into())
        );
        assert_eq!(
            split_base("ws://h:1/v1/ws").unwrap(),
            ("h:1".into(), "http://h:1".into())
        );
        assert_eq!(
            split_base("h:2").unwrap(),
            ("h:2".into(), "http://h:2".into())
        );
        assert!(split_base("https://h").is_err());
    }

    #[test]
    fn ring_pairs_cross_nodes() {
        assert_eq!(ring_nodes(4, 1), vec![0, 0, 0, 0]);
        assert_eq!(ring_nodes(4, 2), vec![0, 1, 0, 1]);
        assert_eq!(same_node_pairs(&ring_nodes(4, 2)), 0);
        // 100 users on 3 nodes: user 99 would share node 0 with user 0.
        let assign = ring_nodes(100, 3);
        assert_eq!(assign[99], 1);
        assert_eq!(same_node_pairs(&assign), 0);
        // Two nodes and an odd ring: one pair must share a node.
        assert_eq!(same_node_pairs(&ring_nodes(5, 2)), 1);
        assert_eq!(same_node_pairs(&ring_nodes(2, 2)), 0);
        for users in 2..40 {
            for nodes in 3..6 {
                assert_eq!(
                    same_node_pairs(&ring_nodes(users, nodes)),
                    0,
                    "{users}/{nodes}"
                );
            }
        }
    }

    #[test]
    fn the_bench_config_is_a_valid_server_config() {
        let config = magpie_server::Config::from_toml(BENCH_CONFIG).unwrap();
        config.validate().unwrap();
        assert!(config.limits.send_rate_per_sec >= 1e9);
        assert_eq!(
            config.store.durability,
            magpie_server::config::Durability::Full
        );
    }
}
