//! `c2c`: U online users send one-to-one messages of S bytes.
//!
//! User `i` sends to user `(i + 1) % U`, over one thin-client connection per user whose
//! halves run as two tasks: a sender and a reader (acks of its own sends and deliveries of
//! the messages addressed to it).
//!
//! - **Closed loop** (`window W`): each sender keeps W sends in flight; an ack frees a slot.
//!   This finds the maximum rate. Latency is measured from the moment of sending.
//! - **Open loop** (`rate R` msg/s in total): each sender follows a fixed timetable
//!   (R/U msg/s, phases staggered). A sender that falls behind sends immediately, but the
//!   latency of each message is measured from its *scheduled* time, which corrects for
//!   coordinated omission: a stalled server shows up as latency, not as a lower send rate.
//!
//! Every message carries `ext.b = {s: sender, k: counter, t: scheduled µs}`; latency is
//! `recipient receive − t`, in an HDR histogram (µs). Only messages scheduled inside the
//! measured window (after `warmup`, for `duration`) are recorded; rates are counter
//! differences over that window. After the window the senders stop and the run drains until
//! every sent message is answered and every acked one delivered (or `drain_timeout`).
//!
//! Correctness, checked on every run: each sender has a ledger of the seq each `k` was acked
//! with and how often each `k` was delivered. A `k` delivered twice is a duplicate; a `k`
//! (or seq) lower than one already delivered from that sender is a reorder; an acked `k`
//! never delivered is lost; a delivered seq that differs from the acked seq is a mismatch; a
//! delivery to anyone but `(s + 1) % U` is misdelivered. Any of these fails the run.
//!
//! Against a **cluster** user `i` connects to node [`ring_nodes`]`(U, N)[i]` (round robin,
//! so sender and recipient sit on different nodes and every message crosses NATS). The
//! server does not promise per-conversation order on the wire across nodes (clients order by
//! seq), so there an arrival older than one already delivered is counted as
//! `arrived_out_of_order`, not as a failure; instead each conversation's delivered seqs must be
//! exactly the acked ones (no loss, no mismatch) with no seq delivered for two messages
//! (`seq_collisions`) and no message delivered twice.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use magpie_proto::{Codec, Platform};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::client::{
    BenchTag, Conn, EventName, FastFrame, FrameKind, SendTemplate, WsSink, WsStream, payload,
};
use crate::metrics::ServiceReport;
use crate::metrics::{self, Percentiles, ProcReport, SharedHistogram};
use crate::scenarios::{ClusterLayout, Common, TargetSamplers, padding};
use crate::target::{Target, TargetKind, ring_nodes, same_node_pairs};

/// How the load is offered.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum LoadMode {
    /// As fast as acks allow, `window` sends in flight per sender.
    Closed {
        /// Sends in flight per sender.
        window: usize,
    },
    /// A fixed timetable of `rate` messages per second in total.
    Open {
        /// Offered messages per second, all senders together.
        rate: f64,
    },
}

impl LoadMode {
    /// `closed w=10` or `open 5000/s`.
    pub fn describe(&self) -> String {
        match self {
            Self::Closed { window } => format!("closed w={window}"),
            Self::Open { rate } => format!("open {rate:.0}/s"),
        }
    }
}

/// Options of one c2c run.
#[derive(Clone, Debug)]
pub struct C2cOptions {
    /// Online users (each sends to the next).
    pub users: usize,
    /// Text size in bytes.
    pub size: usize,
    /// Closed or open loop.
    pub mode: LoadMode,
    /// Measured window.
    pub duration: Duration,
    /// Load before the measured window.
    pub warmup: Duration,
    /// Longest wait for the last answers and deliveries after the window.
    pub drain_timeout: Duration,
}

impl Default for C2cOptions {
    fn default() -> Self {
        Self {
            users: 100,
            size: 100,
            mode: LoadMode::Closed { window: 10 },
            duration: Duration::from_secs(20),
            warmup: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(15),
        }
    }
}

/// Totals over the whole run (warmup and drain included).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Totals {
    /// Sends written.
    pub sent: u64,
    /// Sends answered with success.
    pub acked: u64,
    /// Messages received by their recipient (duplicates included).
    pub delivered: u64,
    /// Sends answered with an error.
    pub send_errors: u64,
}

/// What went wrong, if anything.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Correctness {
    /// Acked messages never delivered.
    pub lost: u64,
    /// Deliveries of a message already delivered.
    pub duplicated: u64,
    /// Deliveries older (by counter or seq) than one already delivered from the same sender.
    pub reordered: u64,
    /// Of those, deliveries whose seq was not above the last delivered seq (the server
    /// delivered out of seq order).
    pub delivered_seq_backwards: u64,
    /// Sends whose acked seq is not above the acked seq of the sender's previous send (the
    /// server assigned seqs out of the order the device sent in).
    pub seqs_out_of_send_order: u64,
    /// Deliveries whose seq differs from the seq the sender was acked with.
    pub seq_mismatch: u64,
    /// Deliveries to the wrong user.
    pub misdelivered: u64,
    /// Frames the client could not decode.
    pub undecodable: u64,
    /// Sends still unanswered when the drain timed out.
    pub unanswered: u64,
    /// Connections the server closed during the run (e.g. 4005, slow consumer).
    pub closed_by_server: u64,
    /// The first close code the server sent, if any.
    pub first_close_code: Option<u16>,
    /// Deliveries of messages whose ack never came (not an error by itself).
    pub delivered_unacked: u64,
    /// The first error answer seen, if any.
    pub first_error: Option<String>,
    /// Cluster only: deliveries that arrived after a newer message of the same sender (by
    /// counter or seq). Not a failure there: across nodes the server does not order the wire,
    /// clients order by seq. (On one server these count as `reordered`.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arrived_out_of_order: Option<u64>,
    /// Cluster only: seqs delivered for two different messages of one conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq_collisions: Option<u64>,
}

impl Correctness {
    /// No loss, duplicate, reorder, mismatch, misdelivery or undecodable frame.
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.seqs_out_of_send_order == 0
            && self.seq_mismatch == 0
            && self.misdelivered == 0
            && self.undecodable == 0
            && self.closed_by_server == 0
            && self.seq_collisions.unwrap_or(0) == 0
    }
}

/// Counters at one second of the run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tick {
    /// Seconds since the load started.
    pub t_s: f64,
    /// Totals so far.
    pub sent: u64,
    /// Acked so far.
    pub acked: u64,
    /// Delivered so far.
    pub delivered: u64,
}

/// The result of one c2c run against one target.
#[derive(Clone, Debug, Serialize)]
pub struct C2cRun {
    /// Magpie or the relay.
    pub target: TargetKind,
    /// Closed or open loop.
    pub load: LoadMode,
    /// Online users.
    pub users: usize,
    /// Text size in bytes.
    pub size: usize,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Warmup, seconds.
    pub warmup_s: f64,
    /// Sends per second in the window.
    pub sent_per_sec: f64,
    /// Acks per second in the window.
    pub acked_per_sec: f64,
    /// Deliveries per second in the window.
    pub delivered_per_sec: f64,
    /// Send → recipient receive (from the scheduled time in open loop), µs.
    pub latency: Percentiles,
    /// Send → ack at the sender, µs.
    pub ack_latency: Percentiles,
    /// Whole-run totals.
    pub totals: Totals,
    /// Loss, duplicates, order.
    pub correctness: Correctness,
    /// The server under test during the window.
    pub server: Option<ProcReport>,
    /// The generator itself during the window.
    pub generator: Option<ProcReport>,
    /// Counters every second.
    pub ticks: Vec<Tick>,
    /// How the users were spread over a cluster's nodes (absent for one server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterLayout>,
    /// A spawned cluster's backing services (PostgreSQL, NATS) during the window.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceReport>,
}

impl C2cRun {
    /// Whether the run was correct.
    pub fn passed(&self) -> bool {
        self.correctness.ok() && self.totals.send_errors == 0
    }
}

const NOT_ACKED: u64 = 0;
const ACKED_WITHOUT_SEQ: u64 = u64::MAX;
/// Request ids of sends are `FIRST_SEND_ID + k` (the login used id 1).
const FIRST_SEND_ID: u64 = 2;

/// One sender's messages: how each was acked and delivered.
#[derive(Debug, Default)]
struct Ledger {
    acked_seq: Vec<u64>,
    delivered: Vec<u8>,
    delivered_seq: Vec<u64>,
    last_k: Option<u64>,
    last_seq: u64,
    duplicated: u64,
    reordered: u64,
    seq_backwards: u64,
}

impl Ledger {
    fn grow(&mut self, k: usize) {
        if k >= self.acked_seq.len() {
            let len = (k + 1).max(self.acked_seq.len() * 2).max(64);
            self.acked_seq.resize(len, NOT_ACKED);
            self.delivered.resize(len, 0);
            self.delivered_seq.resize(len, 0);
        }
    }

    fn ack(&mut self, k: u64, seq: Option<u64>) {
        let k = k as usize;
        self.grow(k);
        self.acked_seq[k] = seq.filter(|s| *s != NOT_ACKED).unwrap_or(ACKED_WITHOUT_SEQ);
    }

    fn deliver(&mut self, k: u64, seq: Option<u64>) {
        let i = k as usize;
        self.grow(i);
        if self.delivered[i] > 0 {
            self.delivered[i] = self.delivered[i].saturating_add(1);
            self.duplicated += 1;
            return;
        }
        self.delivered[i] = 1;
        self.delivered_seq[i] = seq.unwrap_or(ACKED_WITHOUT_SEQ);
        let older_k = self.last_k.is_some_and(|last| k < last);
        let older_seq = seq.is_some_and(|s| s <= self.last_seq);
        if older_k || older_seq {
            self.reordered += 1;
        }
        if older_seq {
            self.seq_backwards += 1;
        }
        self.last_k = Some(self.last_k.map_or(k, |last| last.max(k)));
        if let Some(s) = seq {
            self.last_seq = self.last_seq.max(s);
        }
    }

    /// Acked seqs that are not above the previous acked seq of this sender.
    fn seqs_out_of_send_order(&self) -> u64 {
        let mut last = 0;
        let mut bad = 0;
        for &seq in &self.acked_seq {
            if seq == NOT_ACKED || seq == ACKED_WITHOUT_SEQ {
                continue;
            }
            if seq <= last {
                bad += 1;
            }
            last = last.max(seq);
        }
        bad
    }

    /// Seqs this ledger delivered (each message once), for collision checks.
    fn delivered_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.delivered
            .iter()
            .zip(&self.delivered_seq)
            .filter(|(n, seq)| **n > 0 && **seq != ACKED_WITHOUT_SEQ)
            .map(|(_, seq)| *seq)
    }

    /// (lost, seq mismatches, delivered without ack)
    fn settle(&self) -> (u64, u64, u64) {
        let (mut lost, mut mismatch, mut unacked) = (0, 0, 0);
        for i in 0..self.acked_seq.len() {
            let acked = self.acked_seq[i];
            let delivered = self.delivered[i] > 0;
            match (acked != NOT_ACKED, delivered) {
                (true, false) => lost += 1,
                (false, true) => unacked += 1,
                (true, true) => {
                    let got = self.delivered_seq[i];
                    if acked != ACKED_WITHOUT_SEQ && got != ACKED_WITHOUT_SEQ && acked != got {
                        mismatch += 1;
                    }
                }
                (false, false) => {}
            }
        }
        (lost, mismatch, unacked)
    }
}

/// State shared by every task of a run.
struct Shared {
    base: Instant,
    codec: Codec,
    users: usize,
    window_us: (u64, u64),
    closed_loop: bool,
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    send_errors: AtomicU64,
    undecodable: AtomicU64,
    misdelivered: AtomicU64,
    closed_by_server: AtomicU64,
    stopping: AtomicBool,
    first_close_code: Mutex<Option<u16>>,
    first_error: Mutex<Option<String>>,
    latency: SharedHistogram,
    ack_latency: SharedHistogram,
    ledgers: Vec<Mutex<Ledger>>,
    permits: Vec<Semaphore>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    fn in_window(&self, t: u64) -> bool {
        t >= self.window_us.0 && t < self.window_us.1
    }

    fn ledger(&self, s: usize) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledgers[s]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a connection the server closed (unless the bench is closing them itself).
    fn server_closed(&self, code: Option<u16>) {
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        self.closed_by_server.fetch_add(1, Ordering::Relaxed);
        if let Some(code) = code {
            self.first_close_code
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert(code);
        }
    }

    fn totals(&self) -> Totals {
        Totals {
            sent: self.sent.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            send_errors: self.send_errors.load(Ordering::Relaxed),
        }
    }
}

/// Runs one c2c load against `target` with fresh users named `<run_id>-<label>-<i>`.
pub async fn run(
    target: &Target,
    opts: &C2cOptions,
    common: &Common,
    label: &str,
) -> anyhow::Result<C2cRun> {
    if opts.users < 2 {
        bail!("c2c needs at least 2 users");
    }
    if target.kind == TargetKind::Relay && common.codec != Codec::Json {
        bail!("the relay speaks JSON only; run the relay baseline with --codec json");
    }
    let users = opts.users;
    let names: Vec<String> = (0..users)
        .map(|i| format!("c2c-{}-{label}-{i}", common.run_id))
        .collect();
    let tokens = match target.kind {
        TargetKind::Magpie => {
            target
                .admin()?
                .users_with_tokens(&names, common.rest_concurrency, &common.progress)
                .await?
        }
        TargetKind::Relay => vec!["relay".to_owned(); users],
    };

    // Connect and log everyone in, spread over a cluster's nodes.
    let assign = ring_nodes(users, target.node_count());
    let cluster = ClusterLayout::of(target, assign.iter().copied()).map(|mut layout| {
        layout.same_node_pairs = Some(same_node_pairs(&assign));
        layout
    });
    let assign = &assign;
    let bar = common.progress.bar(users as u64, "connecting");
    let conns: Vec<anyhow::Result<(usize, Conn)>> =
        futures_util::stream::iter(names.iter().zip(&tokens).enumerate())
            .map(|(i, (name, token))| {
                let bar = bar.clone();
                async move {
                    let endpoint = target.endpoint(assign[i]);
                    let mut conn = Conn::open(endpoint, common.codec, common.sources.pick(i))
                        .await
                        .with_context(|| format!("connecting {name}"))?;
                    conn.login(name, token, "bench", Platform::Linux)
                        .await
                        .with_context(|| format!("login of {name}"))?;
                    bar.inc(1);
                    Ok((i, conn))
                }
            })
            .buffer_unordered(200)
            .collect()
            .await;
    bar.finish_and_clear();
    let mut conns = conns.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    conns.sort_by_key(|(i, _)| *i);

    let (window, closed_loop) = match opts.mode {
        LoadMode::Closed { window } => (window.max(1), true),
        LoadMode::Open { .. } => (0, false),
    };
    let warmup_us = opts.warmup.as_micros() as u64;
    let end_us = warmup_us + opts.duration.as_micros() as u64;
    let base = Instant::now();
    let shared = Arc::new(Shared {
        base,
        codec: common.codec,
        users,
        window_us: (warmup_us, end_us),
        closed_loop,
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        send_errors: AtomicU64::new(0),
        undecodable: AtomicU64::new(0),
        misdelivered: AtomicU64::new(0),
        closed_by_server: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
        first_close_code: Mutex::new(None),
        first_error: Mutex::new(None),
        latency: SharedHistogram::new(16),
        ack_latency: SharedHistogram::new(16),
        ledgers: (0..users).map(|_| Mutex::new(Ledger::default())).collect(),
        permits: (0..users)
            .map(|_| Semaphore::new(if closed_loop { window } else { 0 }))
            .collect(),
    });

    let server_sampler = TargetSamplers::start(target, base, common.sample_every);
    let self_sampler = metrics::maybe_sample(Some(std::process::id()), base, common.sample_every);

    let stop = CancellationToken::new();
    let text: Arc<str> = Arc::from(padding(opts.size));
    let mut readers = Vec::with_capacity(users);
    let mut senders = Vec::with_capacity(users);
    for (i, conn) in conns {
        let (sink, stream) = conn.split();
        readers.push(tokio::spawn(reader(i, stream, Arc::clone(&shared))));
        let template = SendTemplate::new(common.codec, &names[(i + 1) % users], Arc::clone(&text))?;
        let task = Sender {
            i,
            template,
            sink,
            shared: Arc::clone(&shared),
            stop: stop.clone(),
        };
        senders.push(match opts.mode {
            LoadMode::Closed { .. } => tokio::spawn(task.closed_loop()),
            LoadMode::Open { rate } => tokio::spawn(task.open_loop(rate)),
        });
    }

    // Drive the clock: ticks, the window boundaries, the progress bar.
    let total_s = (opts.warmup + opts.duration).as_secs().max(1);
    let bar = common
        .progress
        .timer(total_s, &format!("{} {label}", target.kind.name()));
    let mut ticks = Vec::new();
    let mut at_start = None;
    let mut clock = tokio::time::interval(Duration::from_millis(250));
    let mut last_tick_s = 0u64;
    let mut prev = shared.totals();
    loop {
        clock.tick().await;
        let now_us = shared.now_us();
        let totals = shared.totals();
        if at_start.is_none() && now_us >= warmup_us {
            at_start = Some((now_us, totals));
        }
        let whole_s = now_us / 1_000_000;
        if whole_s > last_tick_s {
            let dt = (whole_s - last_tick_s) as f64;
            bar.set_position(whole_s.min(total_s));
            bar.set_message(format!(
                "sent {:.0}/s acked {:.0}/s delivered {:.0}/s",
                (totals.sent - prev.sent) as f64 / dt,
                (totals.acked - prev.acked) as f64 / dt,
                (totals.delivered - prev.delivered) as f64 / dt,
            ));
            ticks.push(Tick {
                t_s: now_us as f64 / 1e6,
                sent: totals.sent,
                acked: totals.acked,
                delivered: totals.delivered,
            });
            prev = totals;
            last_tick_s = whole_s;
        }
        if now_us >= end_us {
            break;
        }
    }
    let at_end = (shared.now_us(), shared.totals());
    stop.cancel();
    bar.finish_and_clear();
    let window_ms = (
        at_start.map_or(warmup_us, |(t, _)| t) / 1000,
        at_end.0 / 1000,
    );
    let (server, services) = server_sampler.finish(window_ms.0, window_ms.1).await;
    let generator = metrics::maybe_finish(self_sampler, window_ms.0, window_ms.1).await;

    // Stop sending, then drain: every send answered, every ack delivered.
    // A sender blocked on a socket the server no longer reads cannot see the stop: give up
    // on it after a while.
    let mut sinks = Vec::with_capacity(users);
    for mut sender in senders {
        match tokio::time::timeout(Duration::from_secs(5), &mut sender).await {
            Ok(Ok(sink)) => sinks.push(sink),
            _ => sender.abort(),
        }
    }

    let drain_deadline = Instant::now() + opts.drain_timeout;
    loop {
        let t = shared.totals();
        if t.acked + t.send_errors >= t.sent && t.delivered >= t.acked {
            break;
        }
        if Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A short grace period lets late duplicates show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    shared.stopping.store(true, Ordering::Relaxed);
    futures_util::future::join_all(sinks.into_iter().map(|mut sink| async move {
        let _ = tokio::time::timeout(Duration::from_millis(500), sink.close()).await;
    }))
    .await;
    for reader in &readers {
        reader.abort();
    }

    let totals = shared.totals();
    let (start_us, start_totals) = at_start.unwrap_or((warmup_us, Totals::default()));
    let secs = (at_end.0.saturating_sub(start_us)) as f64 / 1e6;
    let rate = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / secs.max(1e-9);
    let mut correctness = Correctness {
        undecodable: shared.undecodable.load(Ordering::Relaxed),
        misdelivered: shared.misdelivered.load(Ordering::Relaxed),
        unanswered: totals
            .sent
            .saturating_sub(totals.acked + totals.send_errors),
        first_error: shared
            .first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
        ..Correctness::default()
    };
    for s in 0..users {
        let ledger = shared.ledger(s);
        let (lost, mismatch, unacked) = ledger.settle();
        correctness.lost += lost;
        correctness.seq_mismatch += mismatch;
        correctness.delivered_unacked += unacked;
        correctness.duplicated += ledger.duplicated;
        correctness.reordered += ledger.reordered;
        correctness.delivered_seq_backwards += ledger.seq_backwards;
        correctness.seqs_out_of_send_order += ledger.seqs_out_of_send_order();
    }
    if cluster.is_some() {
        correctness.arrived_out_of_order = Some(std::mem::take(&mut correctness.reordered));
        correctness.seq_collisions = Some(seq_collisions(&shared, users));
    }
    Ok(C2cRun {
        target: target.kind,
        load: opts.mode,
        users,
        size: opts.size,
        duration_s: secs,
        warmup_s: opts.warmup.as_secs_f64(),
        sent_per_sec: rate(start_totals.sent, at_end.1.sent),
        acked_per_sec: rate(start_totals.acked, at_end.1.acked),
        delivered_per_sec: rate(start_totals.delivered, at_end.1.delivered),
        latency: Percentiles::of(&shared.latency.merged()),
        ack_latency: Percentiles::of(&shared.ack_latency.merged()),
        totals,
        correctness,
        server,
        generator,
        ticks,
        cluster,
        services,
    })
}

/// Seqs delivered for two different messages of one conversation. The conversation of sender
/// `s` is {s, (s + 1) % users}; with 2 users both senders share one.
fn seq_collisions(shared: &Shared, users: usize) -> u64 {
    let mut by_conversation: std::collections::HashMap<(usize, usize), Vec<u64>> =
        std::collections::HashMap::new();
    for s in 0..users {
        let r = (s + 1) % users;
        let key = (s.min(r), s.max(r));
        by_conversation
            .entry(key)
            .or_default()
            .extend(shared.ledger(s).delivered_seqs());
    }
    by_conversation
        .into_values()
        .map(|mut seqs| {
            seqs.sort_unstable();
            seqs.windows(2).filter(|w| w[0] == w[1]).count() as u64
        })
        .sum()
}

/// One user's sending half.
struct Sender {
    i: usize,
    template: SendTemplate,
    sink: WsSink,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Sender {
    /// Feeds one message scheduled at `t` (µs); does not flush.
    async fn feed(&mut self, k: u64, t: u64) -> bool {
        let tag = BenchTag {
            s: self.i as u32,
            k,
            t,
        };
        let Ok(message) = self.template.render(FIRST_SEND_ID + k, tag) else {
            return false;
        };
        if self.sink.feed(message).await.is_err() {
            return false;
        }
        self.shared.sent.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// `window` in flight; each ack frees a slot. Sends every free slot, then flushes.
    async fn closed_loop(mut self) -> WsSink {
        let shared = Arc::clone(&self.shared);
        let permits = &shared.permits[self.i];
        let mut k = 0u64;
        loop {
            let permit = tokio::select! {
                _ = self.stop.cancelled() => break,
                permit = permits.acquire() => permit,
            };
            let Ok(permit) = permit else { break };
            permit.forget();
            let mut n = 1;
            while let Ok(permit) = permits.try_acquire() {
                permit.forget();
                n += 1;
            }
            for _ in 0..n {
                let t = shared.now_us();
                if !self.feed(k, t).await {
                    return self.sink;
                }
                k += 1;
            }
            if self.sink.flush().await.is_err() {
                break;
            }
        }
        self.sink
    }

    /// A fixed timetable of `rate / users` msg/s, staggered by sender; late messages go out
    /// at once, stamped with their scheduled time.
    async fn open_loop(mut self, rate: f64) -> WsSink {
        let shared = Arc::clone(&self.shared);
        let per_sender = (rate / shared.users as f64).max(1e-6);
        let interval_us = 1e6 / per_sender;
        let phase_us = interval_us * self.i as f64 / shared.users as f64;
        let due = |k: u64| (phase_us + k as f64 * interval_us) as u64;
        let mut k = 0u64;
        loop {
            let now = shared.now_us();
            let next = due(k);
            if next > now {
                tokio::select! {
                    _ = self.stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_micros(next - now)) => {}
                }
            } else if self.stop.is_cancelled() {
                break;
            }
            let now = shared.now_us();
            let mut batch = 0;
            while due(k) <= now && batch < 256 {
                if !self.feed(k, due(k)).await {
                    return self.sink;
                }
                k += 1;
                batch += 1;
            }
            if self.sink.flush().await.is_err() {
                break;
            }
        }
        self.sink
    }
}

/// One user's reading half: acks of its sends, deliveries addressed to it.
async fn reader(j: usize, mut stream: WsStream, shared: Arc<Shared>) {
    while let Some(next) = stream.next().await {
        let message = match next {
            Ok(message) => message,
            Err(_) => {
                shared.server_closed(None);
                break;
            }
        };
        let Some(bytes) = payload(&message) else {
            if let tokio_tungstenite::tungstenite::Message::Close(frame) = &message {
                shared.server_closed(frame.as_ref().map(|f| u16::from(f.code)));
                break;
            }
            continue;
        };
        let now = shared.now_us();
        let frame = match FastFrame::decode(shared.codec, bytes) {
            Ok(frame) => frame,
            Err(_) => {
                shared.undecodable.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        match frame.kind {
            FrameKind::Response => {
                let Some(k) = frame.id.and_then(|id| id.checked_sub(FIRST_SEND_ID)) else {
                    continue;
                };
                let (seq, tag) = frame.ack();
                shared.ledger(j).ack(k, seq);
                shared.acked.fetch_add(1, Ordering::Relaxed);
                if let Some(tag) = tag
                    && shared.in_window(tag.t)
                {
                    shared.ack_latency.record(j, now.saturating_sub(tag.t));
                }
                if shared.closed_loop {
                    shared.permits[j].add_permits(1);
                }
            }
            FrameKind::Error => {
                shared.send_errors.fetch_add(1, Ordering::Relaxed);
                let mut first = shared
                    .first_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if first.is_none() {
                    *first = Some(format!(
                        "request {:?}: code {:?}",
                        frame.id,
                        frame.error.as_ref().map(|e| e.code)
                    ));
                }
                drop(first);
                if shared.closed_loop {
                    shared.permits[j].add_permits(1);
                }
            }
            FrameKind::Event if frame.event == Some(EventName::Message) => {
                let Some(tag) = frame.event_tag() else {
                    continue;
                };
                let s = tag.s as usize;
                if s >= shared.users {
                    shared.undecodable.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                if (s + 1) % shared.users != j {
                    shared.misdelivered.fetch_add(1, Ordering::Relaxed);
                }
                if shared.in_window(tag.t) {
                    shared.latency.record(j, now.saturating_sub(tag.t));
                }
                let seq = frame.data.as_ref().and_then(|d| d.seq);
                shared.ledger(s).deliver(tag.k, seq);
            }
            FrameKind::Event => {}
        }
    }
}

/// A closed-loop maximum, then optional open-loop steps, against Magpie and optionally the
/// relay first.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// The base run (closed loop finds the maximum; open loop runs at the given rate).
    pub run: C2cOptions,
    /// Sweep steps as fractions of Magpie's measured maximum (or of the open-loop rate).
    pub sweep: Vec<f64>,
}

/// One open-loop step of a sweep.
#[derive(Clone, Debug, Serialize)]
pub struct SweepPoint {
    /// The fraction of the reference rate.
    pub fraction: f64,
    /// Offered messages per second.
    pub offered_per_sec: f64,
    /// The run.
    pub run: C2cRun,
}

/// Everything a `c2c` invocation measured.
#[derive(Clone, Debug, Serialize)]
pub struct C2cSuite {
    /// The relay baseline with the same load, if requested.
    pub relay: Option<C2cRun>,
    /// Magpie.
    pub magpie: C2cRun,
    /// Magpie's delivered/s over the relay's, measured in the same invocation.
    pub ratio_to_relay: Option<f64>,
    /// Open-loop steps against Magpie.
    pub sweep_magpie: Vec<SweepPoint>,
    /// The same open-loop steps against the relay.
    pub sweep_relay: Vec<SweepPoint>,
}

impl C2cSuite {
    /// Every run correct.
    pub fn passed(&self) -> bool {
        self.magpie.passed()
            && self.relay.as_ref().is_none_or(C2cRun::passed)
            && self
                .sweep_magpie
                .iter()
                .chain(&self.sweep_relay)
                .all(|p| p.run.passed())
    }
}

/// Runs the relay baseline (if given), Magpie, and the sweep.
pub async fn suite(
    magpie: &Target,
    relay: Option<&Target>,
    opts: &SuiteOptions,
    common: &Common,
) -> anyhow::Result<C2cSuite> {
    let relay_run = match relay {
        Some(relay) => {
            common.progress.note(format!(
                "c2c: relay baseline, {} users, {}",
                opts.run.users,
                opts.run.mode.describe()
            ));
            Some(run(relay, &opts.run, common, "relay").await?)
        }
        None => None,
    };
    common.progress.note(format!(
        "c2c: magpie, {} users, {}",
        opts.run.users,
        opts.run.mode.describe()
    ));
    let magpie_run = run(magpie, &opts.run, common, "magpie").await?;
    let ratio_to_relay = relay_run
        .as_ref()
        .map(|r| magpie_run.delivered_per_sec / r.delivered_per_sec.max(1e-9));
    let reference = match opts.run.mode {
        LoadMode::Closed { .. } => magpie_run.delivered_per_sec,
        LoadMode::Open { rate } => rate,
    };
    let mut sweep_magpie = Vec::new();
    let mut sweep_relay = Vec::new();
    for (step, &fraction) in opts.sweep.iter().enumerate() {
        let offered = (reference * fraction).max(1.0);
        let step_opts = C2cOptions {
            mode: LoadMode::Open { rate: offered },
            ..opts.run.clone()
        };
        if let Some(relay) = relay {
            common.progress.note(format!(
                "c2c sweep: relay at {offered:.0} msg/s ({:.0}% of magpie max)",
                fraction * 100.0
            ));
            let run = run(relay, &step_opts, common, &format!("rs{step}")).await?;
            sweep_relay.push(SweepPoint {
                fraction,
                offered_per_sec: offered,
                run,
            });
        }
        common.progress.note(format!(
            "c2c sweep: magpie at {offered:.0} msg/s ({:.0}% of max)",
            fraction * 100.0
        ));
        let run = run(magpie, &step_opts, common, &format!("ms{step}")).await?;
        sweep_magpie.push(SweepPoint {
            fraction,
            offered_per_sec: offered,
            run,
        });
    }
    Ok(C2cSuite {
        relay: relay_run,
        magpie: magpie_run,
        ratio_to_relay,
        sweep_magpie,
        sweep_relay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledgers_find_loss_duplicates_reorders_and_mismatches() {
        let mut l = Ledger::default();
        for k in 0..5 {
            l.ack(k, Some(k + 1));
        }
        l.deliver(0, Some(1));
        l.deliver(2, Some(3));
        l.deliver(1, Some(2)); // reordered
        l.deliver(2, Some(3)); // duplicate
        l.deliver(3, Some(9)); // seq mismatch
        // 4 never delivered: lost
        assert_eq!(l.duplicated, 1);
        assert_eq!(l.reordered, 1);
        assert_eq!(l.seq_backwards, 1);
        assert_eq!(l.settle(), (1, 1, 0));
        assert_eq!(l.seqs_out_of_send_order(), 0);
    }

    #[test]
    fn seqs_assigned_out_of_send_order_are_found() {
        let mut l = Ledger::default();
        l.ack(0, Some(2));
        l.ack(1, Some(1));
        l.ack(2, Some(3));
        assert_eq!(l.seqs_out_of_send_order(), 1);
        l.deliver(1, Some(1));
        l.deliver(0, Some(2)); // in seq order, but an older counter
        assert_eq!((l.reordered, l.seq_backwards), (1, 0));
    }

    #[test]
    fn relay_acks_without_seq_are_fine() {
        let mut l = Ledger::default();
        l.ack(0, None);
        l.deliver(0, None);
        l.deliver(1, None); // delivered, ack still in flight
        assert_eq!(l.settle(), (0, 0, 1));
        assert_eq!((l.duplicated, l.reordered), (0, 0));
    }
}
