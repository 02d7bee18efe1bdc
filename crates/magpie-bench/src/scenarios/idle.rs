//! `idle`: open N authenticated connections, hold them, and measure the server's RSS per
//! connection.
//!
//! Users are created with up to four devices each (one per platform class, which the default
//! multi-device policy allows online together). Connections are opened in steps of `step`,
//! `concurrency` handshakes + logins in flight, each socket bound to the next 127.0.0.x source
//! address. After each step the server's RSS is sampled, giving the RSS-vs-connections series;
//! after the last, the connections are held for `hold` and sampled again. The per-connection
//! figure is `(RSS at N − RSS at 0) / N`, RSS at 0 being taken after the users were created
//! and before the first connection.
//!
//! Each held connection is a task that reads its socket (tungstenite answers the server's
//! Pings on the way) and otherwise sleeps. Correctness: every connection must log in and stay
//! up; at the end each sends a `ping` request and must get its answer (`--no-verify` skips
//! that). A connection that failed, closed, or did not answer fails the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use magpie_proto::Request;
use magpie_proto::frame::Empty;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::client::Conn;
use crate::metrics::{self, ProcReport, read_listen_overflows, read_rss};
use crate::scenarios::{Common, platform_for};
use crate::target::Target;

/// Options of the idle scenario.
#[derive(Clone, Debug)]
pub struct IdleOptions {
    /// Connections to open.
    pub connections: usize,
    /// Connections per RSS sample.
    pub step: usize,
    /// Handshakes + logins in flight.
    pub concurrency: usize,
    /// Devices per user, 1 to 4.
    pub devices_per_user: usize,
    /// How long to hold all connections before the final sample.
    pub hold: Duration,
    /// Ping every connection at the end.
    pub verify: bool,
}

impl Default for IdleOptions {
    fn default() -> Self {
        Self {
            connections: 10_000,
            step: 10_000,
            concurrency: 500,
            devices_per_user: 4,
            hold: Duration::from_secs(10),
            verify: true,
        }
    }
}

/// One point of the RSS-vs-connections series.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RssPoint {
    /// Connections established.
    pub connections: u64,
    /// Server RSS in bytes (0 when the server's pid is unknown).
    pub server_rss_bytes: u64,
    /// The generator's own RSS in bytes.
    pub generator_rss_bytes: u64,
}

/// The result of an idle run.
#[derive(Clone, Debug, Serialize)]
pub struct IdleReport {
    /// Connections asked for.
    pub requested: usize,
    /// Connections that logged in.
    pub established: u64,
    /// Connections that failed to connect or log in.
    pub failed: u64,
    /// The first failure, if any.
    pub first_failure: Option<String>,
    /// Connections the server closed while they were held.
    pub closed_while_held: u64,
    /// Connections that answered the final ping (`None` when not verified).
    pub verified_alive: Option<u64>,
    /// Users created.
    pub users: usize,
    /// Seconds to open and log in every connection.
    pub connect_seconds: f64,
    /// Connections + logins per second.
    pub connects_per_sec: f64,
    /// Server RSS before the first connection.
    pub rss_before_bytes: Option<u64>,
    /// Server RSS after holding.
    pub rss_after_bytes: Option<u64>,
    /// `(after − before) / established`.
    pub rss_per_connection_bytes: Option<f64>,
    /// The generator's RSS per connection, for reference.
    pub generator_rss_per_connection_bytes: f64,
    /// RSS after every step.
    pub series: Vec<RssPoint>,
    /// Connections the kernel dropped because the server's listen queue was full (system-wide
    /// `ListenOverflows` delta; each costs a ~1 s SYN retry).
    pub listen_overflows: Option<u64>,
    /// Server samples over the whole run.
    pub server: Option<ProcReport>,
}

impl IdleReport {
    /// Every connection up to the end.
    pub fn passed(&self) -> bool {
        self.failed == 0
            && self.established == self.requested as u64
            && self.closed_while_held == 0
            && self.verified_alive.is_none_or(|n| n == self.established)
    }
}

enum Outcome {
    Ready,
    Failed(String),
}

/// Runs the idle scenario.
pub async fn run(
    target: &Target,
    opts: &IdleOptions,
    common: &Common,
) -> anyhow::Result<IdleReport> {
    if !(1..=4).contains(&opts.devices_per_user) {
        bail!("devices per user must be 1 to 4 (one per platform class)");
    }
    let n = opts.connections;
    let dpu = opts.devices_per_user;
    let user_count = n.div_ceil(dpu);
    let names: Vec<String> = (0..user_count)
        .map(|u| format!("idle-{}-{u}", common.run_id))
        .collect();
    common
        .progress
        .note(format!("idle: creating {user_count} users"));
    let tokens = target
        .admin()?
        .users_with_tokens(&names, common.rest_concurrency, &common.progress)
        .await?;
    let names: Arc<Vec<String>> = Arc::new(names);
    let tokens: Arc<Vec<String>> = Arc::new(tokens);

    let base = Instant::now();
    // Against a cluster: every node summed.
    let server_group = target.server_group();
    let server_rss = || {
        server_group
            .as_ref()
            .and_then(|g| g.read())
            .map(|(rss, _)| rss)
    };
    let sampler = server_group.clone().and_then(|group| {
        metrics::maybe_sample_group(group, base, common.sample_every.max(Duration::from_secs(1)))
    });
    let me = std::process::id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = server_rss();
    let gen_before = read_rss(me).unwrap_or(0);
    let mut series = vec![RssPoint {
        connections: 0,
        server_rss_bytes: rss_before.unwrap_or(0),
        generator_rss_bytes: gen_before,
    }];

    let hold = CancellationToken::new();
    let closed = Arc::new(AtomicU64::new(0));
    let alive = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let mut holders = tokio::task::JoinSet::new();
    let (mut established, mut failed) = (0u64, 0u64);
    let mut first_failure = None;
    let bar = common.progress.bar(n as u64, "connections");
    let overflows_before = read_listen_overflows();
    let connect_started = Instant::now();
    let mut opened = 0usize;
    while opened < n {
        let batch_end = (opened + opts.step.max(1)).min(n);
        for i in opened..batch_end {
            let permit = Arc::clone(&gate).acquire_owned().await;
            let Ok(permit) = permit else { break };
            let ep = target.endpoint(i).clone();
            let codec = common.codec;
            let source = common.sources.pick(i);
            let (names, tokens) = (Arc::clone(&names), Arc::clone(&tokens));
            let (tx, hold, closed, alive) = (
                tx.clone(),
                hold.clone(),
                Arc::clone(&closed),
                Arc::clone(&alive),
            );
            let verify = opts.verify;
            holders.spawn(async move {
                let user = i / dpu;
                let result = async {
                    let mut conn = Conn::open(&ep, codec, source).await?;
                    conn.login(
                        &names[user],
                        &tokens[user],
                        &format!("idle-{i}"),
                        platform_for(i % dpu),
                    )
                    .await?;
                    anyhow::Ok(conn)
                }
                .await;
                drop(permit);
                let mut conn = match result {
                    Ok(conn) => {
                        let _ = tx.send(Outcome::Ready);
                        conn
                    }
                    Err(e) => {
                        let _ = tx.send(Outcome::Failed(format!("{e:#}")));
                        return;
                    }
                };
                drop(tx);
                // Hold: read (answering Pings) until told to stop.
                loop {
                    tokio::select! {
                        _ = hold.cancelled() => break,
                        next = conn.next_message() => match next {
                            Some(Ok(m)) if !m.is_close() => {}
                            _ => {
                                closed.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        },
                    }
                }
                if verify && conn.request(Request::Ping(Empty)).await.is_ok() {
                    alive.fetch_add(1, Ordering::Relaxed);
                }
                conn.close().await;
            });
        }
        // Wait for this batch's outcomes.
        let expected = (batch_end - opened) as u64;
        let mut seen = 0;
        while seen < expected {
            match rx.recv().await {
                Some(Outcome::Ready) => established += 1,
                Some(Outcome::Failed(e)) => {
                    failed += 1;
                    first_failure.get_or_insert(e);
                }
                None => break,
            }
            seen += 1;
            bar.inc(1);
        }
        opened = batch_end;
        tokio::time::sleep(Duration::from_millis(300)).await;
        series.push(RssPoint {
            connections: established,
            server_rss_bytes: server_rss().unwrap_or(0),
            generator_rss_bytes: read_rss(me).unwrap_or(0),
        });
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    let listen_overflows = match (overflows_before, read_listen_overflows()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    bar.finish_and_clear();
    drop(tx);

    common.progress.note(format!(
        "idle: {established} connections up in {connect_seconds:.1} s; holding {:?}",
        opts.hold
    ));
    let hold_bar = common.progress.timer(opts.hold.as_secs(), "holding");
    let hold_started = Instant::now();
    while hold_started.elapsed() < opts.hold {
        tokio::time::sleep(Duration::from_millis(250)).await;
        hold_bar.set_position(hold_started.elapsed().as_secs());
    }
    hold_bar.finish_and_clear();
    let rss_after = server_rss();
    let gen_after = read_rss(me).unwrap_or(0);
    series.push(RssPoint {
        connections: established,
        server_rss_bytes: rss_after.unwrap_or(0),
        generator_rss_bytes: gen_after,
    });
    let window_end = base.elapsed().as_millis() as u64;
    let closed_while_held = closed.load(Ordering::Relaxed);

    common.progress.note("idle: verifying and closing");
    hold.cancel();
    while holders.join_next().await.is_some() {}
    let server = metrics::maybe_finish(sampler, 0, window_end).await;

    let per_conn = |before: u64, after: u64| {
        (established > 0).then(|| (after as f64 - before as f64) / established as f64)
    };
    Ok(IdleReport {
        requested: n,
        established,
        failed,
        first_failure,
        closed_while_held,
        verified_alive: opts.verify.then(|| alive.load(Ordering::Relaxed)),
        users: user_count,
        connect_seconds,
        connects_per_sec: established as f64 / connect_seconds.max(1e-9),
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        rss_per_connection_bytes: match (rss_before, rss_after) {
            (Some(b), Some(a)) => per_conn(b, a),
            _ => None,
        },
        generator_rss_per_connection_bytes: per_conn(gen_before, gen_after).unwrap_or(0.0),
        series,
        listen_overflows,
        server,
    })
}
