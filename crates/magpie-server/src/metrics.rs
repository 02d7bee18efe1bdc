//! Prometheus metrics, rendered in the text exposition format at `/metrics`.
//!
//! A handful of atomics per server instance (not a global registry), so several servers in
//! one test process keep separate figures.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use magpie_proto::ErrorCode;
use magpie_store::CommitObserver;

/// A fixed-bucket histogram.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    /// Sum of observations in millionths, to stay an integer.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

const LATENCY_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    /// Open WebSocket connections (logged in or not).
    pub connections: AtomicI64,
    /// Successful logins.
    pub logins: AtomicU64,
    /// Failed logins.
    pub login_failures: AtomicU64,
    /// Messages stored (retries not counted).
    pub messages_stored: AtomicU64,
    /// Retries answered with the original message.
    pub messages_duplicate: AtomicU64,
    /// Transient command messages relayed.
    pub commands: AtomicU64,
    /// Events queued to devices.
    pub deliveries: AtomicU64,
    /// Sessions kicked (policy, revocation, deletion).
    pub kicks: AtomicU64,
    /// Sessions closed for not reading their events.
    pub slow_consumers: AtomicU64,
    /// Envelopes this node published on the cluster bus.
    pub bus_published: AtomicU64,
    /// Envelopes this node received from the cluster bus.
    pub bus_received: AtomicU64,
    /// Times this node lost the cluster bus and came back (devices were told to resync).
    pub bus_resyncs: AtomicU64,
    errors: Vec<AtomicU64>,
    /// Store commit latency in seconds.
    pub commit_seconds: Histogram,
    /// Writes per store commit.
    pub commit_batch: Histogram,
    /// Pauses of the store's writer for maintenance, in seconds.
    pub writer_pause_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections: AtomicI64::new(0),
            logins: AtomicU64::new(0),
            login_failures: AtomicU64::new(0),
            messages_stored: AtomicU64::new(0),
            messages_duplicate: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            kicks: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            bus_published: AtomicU64::new(0),
            bus_received: AtomicU64::new(0),
            bus_resyncs: AtomicU64::new(0),
            errors: ErrorCode::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            commit_seconds: Histogram::new(LATENCY_BOUNDS),
            commit_batch: Histogram::new(BATCH_BOUNDS),
            writer_pause_seconds: Histogram::new(LATENCY_BOUNDS),
        }
    }
}

impl Metrics {
    /// Counts an error answered to a client (WebSocket or REST).
    pub fn error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The exposition text. `online` is the number of logged-in sessions.
    pub fn render(&self, online: u64) -> String {
        let mut out = String::with_capacity(4096);
        let gauge = |out: &mut String, name: &str, help: &str, value: i64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        let counter = |out: &mut String, name: &str, help: &str, value: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        };
        gauge(
            &mut out,
            "magpie_connections",
            "Open WebSocket connections.",
            self.connections.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "magpie_sessions",
            "Logged-in device sessions.",
            online as i64,
        );
        counter(
            &mut out,
            "magpie_logins_total",
            "Successful logins.",
            &self.logins,
        );
        counter(
            &mut out,
            "magpie_login_failures_total",
            "Failed logins.",
            &self.login_failures,
        );
        counter(
            &mut out,
            "magpie_messages_stored_total",
            "Messages stored.",
            &self.messages_stored,
        );
        counter(
            &mut out,
            "magpie_messages_duplicate_total",
            "Send retries answered with the original message.",
            &self.messages_duplicate,
        );
        counter(
            &mut out,
            "magpie_commands_total",
            "Transient command messages relayed.",
            &self.commands,
        );
        counter(
            &mut out,
            "magpie_deliveries_total",
            "Events queued to devices.",
            &self.deliveries,
        );
        counter(
            &mut out,
            "magpie_kicks_total",
            "Sessions kicked.",
            &self.kicks,
        );
        counter(
            &mut out,
            "magpie_slow_consumers_total",
            "Sessions closed for not reading their events.",
            &self.slow_consumers,
        );
        counter(
            &mut out,
            "magpie_bus_published_total",
            "Envelopes published on the cluster bus.",
            &self.bus_published,
        );
        counter(
            &mut out,
            "magpie_bus_received_total",
            "Envelopes received from the cluster bus.",
            &self.bus_received,
        );
        counter(
            &mut out,
            "magpie_bus_resyncs_total",
            "Reconnections to the cluster bus after which devices were told to resync.",
            &self.bus_resyncs,
        );
        let _ = writeln!(
            out,
            "# HELP magpie_errors_total Errors answered to clients, by code.\n# TYPE magpie_errors_total counter"
        );
        for (code, count) in ErrorCode::ALL.iter().zip(&self.errors) {
            let _ = writeln!(
                out,
                "magpie_errors_total{{code=\"{}\",name=\"{}\"}} {}",
                code.as_u16(),
                code.name(),
                count.load(Ordering::Relaxed)
            );
        }
        self.commit_seconds.render(
            &mut out,
            "magpie_store_commit_seconds",
            "Store commit latency.",
        );
        self.commit_batch.render(
            &mut out,
            "magpie_store_commit_batch_size",
            "Writes per store commit.",
        );
        self.writer_pause_seconds.render(
            &mut out,
            "magpie_store_writer_pause_seconds",
            "Time the store's only writer stopped for maintenance (SQLite: a WAL restart), during which writes queued.",
        );
        out
    }
}

impl CommitObserver for Metrics {
    fn on_commit(&self, batch: usize, elapsed: Duration) {
        self.commit_seconds.observe(elapsed.as_secs_f64());
        self.commit_batch.observe(batch as f64);
    }

    fn on_writer_pause(&self, elapsed: Duration) {
        self.writer_pause_seconds.observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_errors_are_labelled() {
        let metrics = Metrics::default();
        metrics.on_commit(3, Duration::from_micros(300));
        metrics.on_commit(100, Duration::from_millis(2));
        metrics.on_writer_pause(Duration::from_millis(12));
        metrics.error(ErrorCode::RateLimited);
        let text = metrics.render(7);
        assert!(text.contains("magpie_sessions 7"));
        assert!(
            text.contains("magpie_store_commit_batch_size_bucket{le=\"4\"} 1"),
            "{text}"
        );
        assert!(text.contains("magpie_store_commit_batch_size_bucket{le=\"128\"} 2"));
        assert!(text.contains("magpie_store_commit_batch_size_count 2"));
        assert!(
            text.contains("magpie_store_writer_pause_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("magpie_store_writer_pause_seconds_bucket{le=\"0.01\"} 0"));
        assert!(text.contains("magpie_store_writer_pause_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("magpie_errors_total{code=\"4001\",name=\"rate_limited\"} 1"));
    }
}
