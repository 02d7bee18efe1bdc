//! The scenarios. Each is a library function taking a [`Target`](crate::target::Target) and
//! its options and returning a serialisable report, so the CLI and the smoke test run the
//! same code.
//!
//! - [`idle`]: N authenticated connections held open; server RSS per connection.
//! - [`c2c`]: U online users sending one-to-one messages, closed- or open-loop; latency,
//!   throughput, exactly-once / in-order checks; relay baseline and load sweeps.
//! - [`group`]: M online members of one group, S of them sending to it; per-delivery latency,
//!   deliveries/s, exactly-once / in-order checks per (recipient, sender); relay baseline.
//! - [`login`]: a login storm where every device finishes its sync.
//! - [`catchup`]: a fresh SDK device of a user with C conversations × K new messages.
//! - [`seed`]: pipelined message seeding through the protocol, shared by `login` and
//!   `catchup`.
//!
//! `c2c` and `group` share their machinery (connecting, counters, closed- and open-loop
//! senders, the clock, the drain, the relay-baseline-and-sweep suite) in the private `load`.

pub mod c2c;
pub mod catchup;
pub mod group;
pub mod idle;
mod load;
pub mod login;
pub mod seed;

use std::time::{Duration, Instant};

use magpie_proto::Codec;
use serde::Serialize;

use crate::client::SourceAddrs;
use crate::metrics::{self, ProcGroup, ProcReport, Sampler, ServiceReport};
use crate::progress::Progress;
use crate::target::Target;

/// Settings every scenario shares.
#[derive(Clone, Debug)]
pub struct Common {
    /// Wire encoding of the thin clients (and of the SDK in `catchup`).
    pub codec: Codec,
    /// Source addresses client sockets are spread over.
    pub sources: SourceAddrs,
    /// How often the server (and the generator) is sampled from `/proc`.
    pub sample_every: Duration,
    /// Where progress goes.
    pub progress: Progress,
    /// A short prefix that makes this run's user ids unique on a shared server.
    pub run_id: String,
    /// REST calls in flight while creating users.
    pub rest_concurrency: usize,
}

impl Common {
    /// Defaults: JSON, 50 source addresses, 250 ms sampling, a fresh run id.
    pub fn new(progress: Progress) -> Self {
        Self {
            codec: Codec::Json,
            sources: SourceAddrs::new(50),
            sample_every: Duration::from_millis(250),
            progress,
            run_id: run_id(),
            rest_concurrency: crate::rest::DEFAULT_CONCURRENCY,
        }
    }
}

/// A short id, unique enough between runs against one server: the current time in base 36.
pub fn run_id() -> String {
    let mut n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let mut out = Vec::new();
    while n > 0 {
        let d = (n % 36) as u8;
        out.push(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_else(|_| "run".into())
}

/// The platform of the `i`-th device of a user, one per platform class, so that up to four
/// devices of one user are online together under the default multi-device policy.
pub fn platform_for(i: usize) -> magpie_proto::Platform {
    use magpie_proto::Platform;
    [
        Platform::Ios,
        Platform::Linux,
        Platform::Web,
        Platform::MiniProgram,
    ][i % 4]
}

/// A message's text padded to `size` bytes.
pub fn padding(size: usize) -> String {
    "x".repeat(size.max(1))
}

/// The samplers of a target: its server process(es) — one pid, or every node of a cluster
/// summed — and each backing service of a spawned cluster on its own.
#[derive(Debug)]
pub struct TargetSamplers {
    server: Option<Sampler>,
    services: Vec<(String, Sampler)>,
}

impl TargetSamplers {
    /// Starts sampling `target` every `every`, times from `base`.
    pub fn start(target: &Target, base: Instant, every: Duration) -> Self {
        let server = target
            .server_group()
            .and_then(|group| metrics::maybe_sample_group(group, base, every));
        let services = target
            .services
            .iter()
            .map(|(name, pid)| {
                let group = ProcGroup {
                    pids: vec![*pid],
                    tree: true,
                };
                (name.clone(), Sampler::start_group(group, base, every))
            })
            .collect();
        Self { server, services }
    }

    /// Stops, and summarises the server and each service over `[from_ms, to_ms]`.
    pub async fn finish(
        self,
        from_ms: u64,
        to_ms: u64,
    ) -> (Option<ProcReport>, Vec<ServiceReport>) {
        let server = metrics::maybe_finish(self.server, from_ms, to_ms).await;
        let mut services = Vec::with_capacity(self.services.len());
        for (name, sampler) in self.services {
            services.push(ServiceReport {
                name,
                proc: sampler.finish(from_ms, to_ms).await,
            });
        }
        (server, services)
    }
}

/// How a run was spread over the nodes of a cluster (absent for a single server).
#[derive(Clone, Debug, Serialize)]
pub struct ClusterLayout {
    /// Nodes the clients were spread over.
    pub nodes: usize,
    /// Clients (connections) per node.
    pub clients_per_node: Vec<usize>,
    /// `c2c`: sender → recipient pairs whose two users were on the same node (their
    /// messages did not cross NATS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub same_node_pairs: Option<usize>,
}

impl ClusterLayout {
    /// The layout of clients placed on `assign[i]`, when `target` is a cluster.
    pub fn of(target: &Target, assign: impl IntoIterator<Item = usize>) -> Option<Self> {
        if !target.is_cluster() {
            return None;
        }
        let nodes = target.node_count();
        let mut clients_per_node = vec![0; nodes];
        for node in assign {
            clients_per_node[node % nodes] += 1;
        }
        Some(Self {
            nodes: target.node_count(),
            clients_per_node,
            same_node_pairs: None,
        })
    }
}
