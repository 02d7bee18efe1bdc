//! Measurements: HDR latency histograms and the `/proc` sampler.
//!
//! Latencies are recorded in microseconds into HDR histograms (3 significant digits, 1 µs to
//! one hour, saturating above). Hot paths record into a [`SharedHistogram`], sharded so that
//! concurrent recorders rarely meet on one lock.
//!
//! The [`Sampler`] reads `/proc/<pid>/status` (VmRSS) and `/proc/<pid>/stat` (utime + stime)
//! of a process at a fixed interval — the server under test, the relay, and the generator
//! itself — so a report can say what the server cost during the measured window. Against a
//! cluster it samples a [`ProcGroup`]: every node summed, and each backing service
//! (PostgreSQL with all its backends, NATS) as a process tree of its own.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Highest latency a histogram tracks exactly (one hour, in µs); larger values saturate.
const MAX_TRACKABLE_US: u64 = 3_600_000_000;

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`). Linux reports these times
/// in `USER_HZ`, which is 100 on every architecture it exports to user space.
const USER_HZ: f64 = 100.0;

/// A fresh latency histogram (µs).
pub fn histogram() -> Histogram<u64> {
    // Bounds are constants known to be valid; `new_with_bounds` only fails for low < 1,
    // high < 2 * low or sigfig > 5.
    Histogram::new_with_bounds(1, MAX_TRACKABLE_US, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
    })
}

/// A histogram several tasks record into at once.
#[derive(Debug)]
pub struct SharedHistogram {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl SharedHistogram {
    /// A histogram with `shards` independently locked parts.
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(histogram()))
                .collect(),
        }
    }

    /// Records a latency in µs into the shard chosen by `key` (e.g. the recorder's index).
    pub fn record(&self, key: usize, micros: u64) {
        let shard = &self.shards[key % self.shards.len()];
        shard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .saturating_record(micros.max(1));
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = histogram();
        for shard in &self.shards {
            let h = shard.lock().unwrap_or_else(PoisonError::into_inner);
            // Same bounds everywhere, so adding cannot fail.
            let _ = all.add(&*h);
        }
        all
    }

    /// Forgets everything recorded so far.
    pub fn reset(&self) {
        for shard in &self.shards {
            shard.lock().unwrap_or_else(PoisonError::into_inner).reset();
        }
    }
}

/// The usual summary of a latency distribution, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Smallest value.
    pub min_us: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest value.
    pub max_us: u64,
}

impl Percentiles {
    /// Summarises a histogram (all zeros when it is empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min_us: h.min(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Microseconds as a short human string: `850us`, `12.3ms`, `4.20s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// Bytes as a short human string in binary units.
pub fn fmt_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Resident set size of a process in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn read_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time a process has used, user plus system, in clock ticks (`/proc/<pid>/stat`).
pub fn read_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: parse after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')': state is field 3, so utime (14) and stime (15) are the 12th and 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The system-wide count of connections dropped because a listen queue was full
/// (`TcpExt: ListenOverflows` of `/proc/net/netstat`). Each costs the client a SYN
/// retransmission, i.e. about one second of connect latency.
pub fn read_listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let at = names
            .split_whitespace()
            .position(|n| n == "ListenOverflows")?;
        return values.split_whitespace().nth(at)?.parse().ok();
    }
    None
}

/// One reading of a process.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ProcSample {
    /// Milliseconds since the sampler's time base.
    pub t_ms: u64,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// CPU used since the previous sample, in percent of one core (200 = both cores).
    pub cpu_pct: f64,
    /// Total CPU time used so far, in clock ticks.
    #[serde(skip)]
    pub cpu_ticks: u64,
}

/// A process's samples with a summary over a window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProcReport {
    /// The process id sampled (the first of a group).
    pub pid: u32,
    /// Every process id of a group (cluster nodes, or a service's root process), summed;
    /// empty for a single process.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pids: Vec<u32>,
    /// Mean CPU over the measured window, percent of one core.
    pub cpu_pct_mean: f64,
    /// Largest RSS seen in the window.
    pub rss_max_bytes: u64,
    /// RSS at the end of the window.
    pub rss_end_bytes: u64,
    /// Every sample (the whole run, not only the window).
    pub samples: Vec<ProcSample>,
}

impl ProcReport {
    /// Summarises `samples` over `[from_ms, to_ms]` (sampler time base).
    pub fn over(pid: u32, samples: Vec<ProcSample>, from_ms: u64, to_ms: u64) -> Self {
        let window: Vec<&ProcSample> = samples
            .iter()
            .filter(|s| s.t_ms >= from_ms && s.t_ms <= to_ms)
            .collect();
        let (cpu_pct_mean, rss_max_bytes, rss_end_bytes) = match (window.first(), window.last()) {
            (Some(first), Some(last)) if last.t_ms > first.t_ms => {
                let ticks = last.cpu_ticks.saturating_sub(first.cpu_ticks) as f64;
                let secs = (last.t_ms - first.t_ms) as f64 / 1e3;
                (
                    100.0 * ticks / USER_HZ / secs,
                    window.iter().map(|s| s.rss_bytes).max().unwrap_or(0),
                    last.rss_bytes,
                )
            }
            (_, Some(last)) => (0.0, last.rss_bytes, last.rss_bytes),
            _ => (0.0, 0, 0),
        };
        Self {
            pid,
            pids: Vec::new(),
            cpu_pct_mean,
            rss_max_bytes,
            rss_end_bytes,
            samples,
        }
    }
}

/// Processes sampled together: RSS and CPU are summed over them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcGroup {
    /// The processes.
    pub pids: Vec<u32>,
    /// Also count every descendant of each pid alive at the sample (PostgreSQL's backends),
    /// and the CPU of children they have reaped.
    pub tree: bool,
}

impl ProcGroup {
    /// One process.
    pub fn single(pid: u32) -> Self {
        Self {
            pids: vec![pid],
            tree: false,
        }
    }

    /// Summed (RSS bytes, CPU ticks) of the group now; `None` when every process is gone.
    pub fn read(&self) -> Option<(u64, u64)> {
        if !self.tree {
            if let [pid] = self.pids.as_slice() {
                return Some((read_rss(*pid)?, read_cpu_ticks(*pid)?));
            }
            let mut any = false;
            let (mut rss, mut ticks) = (0, 0);
            for &pid in &self.pids {
                if let (Some(r), Some(t)) = (read_rss(pid), read_cpu_ticks(pid)) {
                    any = true;
                    rss += r;
                    ticks += t;
                }
            }
            return any.then_some((rss, ticks));
        }
        let all = descendants(&self.pids);
        let mut any = false;
        let (mut rss, mut ticks) = (0, 0);
        for pid in all {
            if let Some(t) = read_cpu_ticks_with_children(pid) {
                any = true;
                ticks += t;
                rss += read_rss(pid).unwrap_or(0);
            }
        }
        any.then_some((rss, ticks))
    }
}

/// `roots` and every process descending from them (one scan of `/proc`).
fn descendants(roots: &[u32]) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = read_ppid(pid) {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        for &(pid, ppid) in &parent_of {
            if ppid == parent && !out.contains(&pid) {
                out.push(pid);
            }
        }
        i += 1;
    }
    out
}

fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is not numeric: keep it as 0 so indexes stay (field number - 3).
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

fn read_ppid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1).map(|p| *p as u32)
}

/// utime + stime + cutime + cstime (fields 14–17) in clock ticks.
fn read_cpu_ticks_with_children(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    Some(f.get(11)? + f.get(12)? + f.get(13)? + f.get(14)?)
}

/// A backing service of a cluster (PostgreSQL, NATS) over the same window as the server.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceReport {
    /// `postgres` or `nats`.
    pub name: String,
    /// Its processes (PostgreSQL: the postmaster and every backend), summed. RSS counts
    /// shared memory once per process, so it overstates PostgreSQL's footprint.
    #[serde(flatten)]
    pub proc: ProcReport,
}

/// Samples a process's RSS and CPU in the background until stopped.
#[derive(Debug)]
pub struct Sampler {
    group: ProcGroup,
    base: Instant,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<ProcSample>>,
}

impl Sampler {
    /// Starts sampling `pid` every `every`; times are measured from `base`.
    pub fn start(pid: u32, base: Instant, every: Duration) -> Self {
        Self::start_group(ProcGroup::single(pid), base, every)
    }

    /// Starts sampling a group of processes (summed) every `every`.
    pub fn start_group(group: ProcGroup, base: Instant, every: Duration) -> Self {
        let stop = CancellationToken::new();
        let sampled = group.clone();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut prev: Option<(Instant, u64)> = None;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let now = Instant::now();
                let Some((rss, ticks)) = sampled.read() else {
                    break; // the process is gone
                };
                let cpu_pct = match prev {
                    Some((t, p)) => {
                        let secs = now.duration_since(t).as_secs_f64();
                        if secs > 0.0 {
                            100.0 * ticks.saturating_sub(p) as f64 / USER_HZ / secs
                        } else {
                            0.0
                        }
                    }
                    None => 0.0,
                };
                prev = Some((now, ticks));
                samples.push(ProcSample {
                    t_ms: now.duration_since(base).as_millis() as u64,
                    rss_bytes: rss,
                    cpu_pct,
                    cpu_ticks: ticks,
                });
            }
            samples
        });
        Self {
            group,
            base,
            stop,
            task,
        }
    }

    /// Milliseconds since the time base, for window bounds.
    pub fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Takes one last sample, stops, and summarises over `[from_ms, to_ms]`.
    pub async fn finish(self, from_ms: u64, to_ms: u64) -> ProcReport {
        self.stop.cancel();
        let samples = self.task.await.unwrap_or_default();
        let pid = self.group.pids.first().copied().unwrap_or_default();
        let mut report = ProcReport::over(pid, samples, from_ms, to_ms);
        if self.group.pids.len() > 1 || self.group.tree {
            report.pids = self.group.pids;
        }
        report
    }
}

/// Starts a sampler for an optional pid.
pub fn maybe_sample(pid: Option<u32>, base: Instant, every: Duration) -> Option<Sampler> {
    pid.map(|pid| Sampler::start(pid, base, every))
}

/// Starts a sampler for a group; `None` when it has no process.
pub fn maybe_sample_group(group: ProcGroup, base: Instant, every: Duration) -> Option<Sampler> {
    (!group.pids.is_empty()).then(|| Sampler::start_group(group, base, every))
}

/// Finishes an optional sampler.
pub async fn maybe_finish(
    sampler: Option<Sampler>,
    from_ms: u64,
    to_ms: u64,
) -> Option<ProcReport> {
    match sampler {
        Some(s) => Some(s.finish(from_ms, to_ms).await),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn proc_of_self_is_readable() {
        let pid = std::process::id();
        assert!(read_rss(pid).unwrap() > 0);
        assert!(read_cpu_ticks(pid).is_some());
        assert!(read_listen_overflows().is_some());
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = histogram();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50_us, 500);
        assert_eq!(p.p99_us, 990);
        assert_eq!(p.max_us, 1000);
    }

    #[test]
    fn cpu_is_averaged_over_the_window_only() {
        let s = |t_ms, ticks| ProcSample {
            t_ms,
            rss_bytes: t_ms,
            cpu_pct: 0.0,
            cpu_ticks: ticks,
        };
        let samples = vec![s(0, 0), s(1000, 100), s(2000, 300), s(3000, 300)];
        let r = ProcReport::over(1, samples, 1000, 2000);
        assert!((r.cpu_pct_mean - 200.0).abs() < 1e-9);
        assert_eq!(r.rss_max_bytes, 2000);
    }
}
