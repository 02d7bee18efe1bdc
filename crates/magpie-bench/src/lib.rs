//! `magpie-bench`: the load generator of Magpie.
//!
//! It drives a Magpie server over real WebSocket connections, speaking the same protocol a
//! device speaks (`docs/PROTOCOL.md`), and measures what the server costs and how fast it
//! moves messages. Every scenario also checks correctness: a run that loses, duplicates or
//! reorders a message fails, whatever its speed.
//!
//! The binary (`src/main.rs`) is a thin shell over this library, so the smoke test can run
//! every scenario in-process against `magpie_testkit::TestServer`.
//!
//! # Module map
//!
//! - [`cli`]: the command line (clap) and the glue that spawns the systems under test, runs a
//!   scenario and prints / writes its report.
//! - [`target`]: the system under test: a `magpie` server spawned as a child process (temp data
//!   dir, generated config with rate limits lifted), an already running server, or the relay
//!   baseline spawned as `magpie-bench relay`.
//! - [`rest`]: users and tokens through the REST API, created concurrently.
//! - [`client`]: the thin protocol client (raw tokio-tungstenite with small buffers, source
//!   address rotation over 127.0.0.x) and the fast partial frame decoder of the hot path.
//! - [`relay`]: the bare WebSocket relay: no auth, no storage, same framing; the ceiling of
//!   this machine for moving frames.
//! - [`scenarios`]: `idle`, `c2c`, `group`, `login`, `catchup`, and the seeding helper they
//!   share.
//! - [`metrics`]: HDR latency histograms, the `/proc` RSS / CPU sampler, rate counters.
//! - [`report`]: machine facts, the summary tables, the JSON document and the SVG plots.
//! - [`progress`]: progress bars on stderr.

pub mod cli;
pub mod client;
pub mod metrics;
pub mod progress;
pub mod relay;
pub mod report;
pub mod rest;
pub mod scenarios;
pub mod target;

/// Raises the open-file limit (`RLIMIT_NOFILE`) as far as this process may: the hard limit up
/// to `/proc/sys/fs/nr_open` when running as root (children such as a spawned server inherit
/// it), otherwise the soft limit up to the hard limit. Returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    use rlimit::Resource;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    if Resource::NOFILE.set(nr_open, nr_open).is_err() {
        let _ = rlimit::increase_nofile_limit(u64::MAX);
    }
    Resource::NOFILE.get().map(|(soft, _)| soft).unwrap_or(0)
}
