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

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::bail;
use magpie_proto::Codec;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::client::{EventName, FrameKind, SendTemplate, WsStream};
use crate::metrics::{Percentiles, ProcReport, ServiceReport};
use crate::scenarios::load::{
    self, FIRST_SEND_ID, Flow, NOT_ACKED, Samplers, Scenario, Sender, WITHOUT_SEQ, connect_all,
    lock, read_frames,
};
pub use crate::scenarios::load::{Tick, Totals};
use crate::scenarios::{ClusterLayout, Common, padding};
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
        self.acked_seq[k] = seq.filter(|s| *s != NOT_ACKED).unwrap_or(WITHOUT_SEQ);
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
        self.delivered_seq[i] = seq.unwrap_or(WITHOUT_SEQ);
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
        load::seqs_out_of_send_order(&self.acked_seq)
    }

    /// Seqs this ledger delivered (each message once), for collision checks.
    fn delivered_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.delivered
            .iter()
            .zip(&self.delivered_seq)
            .filter(|(n, seq)| **n > 0 && **seq != WITHOUT_SEQ)
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
                    if acked != WITHOUT_SEQ && got != WITHOUT_SEQ && acked != got {
                        mismatch += 1;
                    }
                }
                (false, false) => {}
            }
        }
        (lost, mismatch, unacked)
    }
}

/// State shared by every task of a run: the common counters and, per sender, its ledger.
struct Shared {
    flow: Arc<Flow>,
    ledgers: Vec<Mutex<Ledger>>,
}

impl Shared {
    fn ledger(&self, s: usize) -> MutexGuard<'_, Ledger> {
        lock(&self.ledgers[s])
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
    let conns = connect_all(target, common, &names, &tokens, &assign).await?;

    let warmup_us = opts.warmup.as_micros() as u64;
    let end_us = warmup_us + opts.duration.as_micros() as u64;
    let flow = Arc::new(Flow::new(
        common.codec,
        opts.mode,
        users,
        (warmup_us, end_us),
    ));
    let shared = Arc::new(Shared {
        flow: Arc::clone(&flow),
        ledgers: (0..users).map(|_| Mutex::new(Ledger::default())).collect(),
    });
    let samplers = Samplers::start(target, flow.base, common.sample_every);

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
            flow: Arc::clone(&flow),
            stop: stop.clone(),
            limit: None,
        };
        senders.push(task.spawn(opts.mode));
    }

    // Drive the clock: ticks, the window boundaries, the progress bar.
    let total_s = (opts.warmup + opts.duration).as_secs().max(1);
    let bar = common
        .progress
        .timer(total_s, &format!("{} {label}", target.kind.name()));
    let clocked = load::drive(&flow, &bar, Some(total_s), warmup_us, |now_us, _| {
        now_us >= end_us
    })
    .await;
    stop.cancel();
    bar.finish_and_clear();
    let (server, services, generator) = samplers.finish(clocked.window_ms(warmup_us)).await;

    // Stop sending, then drain: every send answered, every ack delivered.
    load::wind_down(&flow, senders, Vec::new(), readers, 1, opts.drain_timeout).await;

    let rates = clocked.rates(warmup_us);
    let totals = flow.totals();
    let mut correctness = Correctness {
        undecodable: flow.undecodable.load(Ordering::Relaxed),
        misdelivered: flow.misdelivered.load(Ordering::Relaxed),
        unanswered: totals
            .sent
            .saturating_sub(totals.acked + totals.send_errors),
        first_error: lock(&flow.first_error).clone(),
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
        duration_s: rates.secs,
        warmup_s: opts.warmup.as_secs_f64(),
        sent_per_sec: rates.sent,
        acked_per_sec: rates.acked,
        delivered_per_sec: rates.delivered,
        latency: Percentiles::of(&flow.latency.merged()),
        ack_latency: Percentiles::of(&flow.ack_latency.merged()),
        totals,
        correctness,
        server,
        generator,
        ticks: clocked.ticks,
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

/// One user's reading half: acks of its sends, deliveries addressed to it.
async fn reader(j: usize, stream: WsStream, shared: Arc<Shared>) {
    let flow = &shared.flow;
    let users = flow.senders;
    read_frames(stream, flow, |frame, now| match frame.kind {
        FrameKind::Response => {
            let Some(k) = frame.id.and_then(|id| id.checked_sub(FIRST_SEND_ID)) else {
                return;
            };
            let (seq, tag) = frame.ack();
            shared.ledger(j).ack(k, seq);
            flow.acked(j, tag, now);
            flow.release(j);
        }
        FrameKind::Error => {
            flow.send_error(&frame);
            flow.release(j);
        }
        FrameKind::Event if frame.event == Some(EventName::Message) => {
            let Some(tag) = frame.event_tag() else {
                return;
            };
            let s = tag.s as usize;
            if s >= users {
                flow.undecodable.fetch_add(1, Ordering::Relaxed);
                return;
            }
            flow.delivered.fetch_add(1, Ordering::Relaxed);
            if (s + 1) % users != j {
                flow.misdelivered.fetch_add(1, Ordering::Relaxed);
            }
            if flow.in_window(tag.t) {
                flow.latency.record(j, now.saturating_sub(tag.t));
            }
            let seq = frame.data.as_ref().and_then(|d| d.seq);
            shared.ledger(s).deliver(tag.k, seq);
        }
        FrameKind::Event => {}
    })
    .await;
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
pub type SweepPoint = load::SweepPoint<C2cRun>;

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
        load::all_passed(
            self.relay.as_ref(),
            &self.magpie,
            [&self.sweep_magpie, &self.sweep_relay],
            C2cRun::passed,
        )
    }
}

/// The `c2c` scenario, for [`load::suite`].
struct C2c;

impl Scenario for C2c {
    type Options = C2cOptions;
    type Run = C2cRun;
    const NAME: &'static str = "c2c";

    fn describe(opts: &C2cOptions) -> String {
        format!("{} users, {}", opts.users, opts.mode.describe())
    }

    fn mode(opts: &C2cOptions) -> LoadMode {
        opts.mode
    }

    fn at_rate(opts: &C2cOptions, rate: f64) -> C2cOptions {
        C2cOptions {
            mode: LoadMode::Open { rate },
            ..opts.clone()
        }
    }

    fn delivered_per_sec(run: &C2cRun) -> f64 {
        run.delivered_per_sec
    }

    /// The maximum delivered/s.
    fn closed_reference(run: &C2cRun) -> f64 {
        run.delivered_per_sec
    }

    async fn run(
        target: &Target,
        opts: &C2cOptions,
        common: &Common,
        label: &str,
    ) -> anyhow::Result<C2cRun> {
        run(target, opts, common, label).await
    }
}

/// Runs the relay baseline (if given), Magpie, and the sweep.
pub async fn suite(
    magpie: &Target,
    relay: Option<&Target>,
    opts: &SuiteOptions,
    common: &Common,
) -> anyhow::Result<C2cSuite> {
    let runs = load::suite::<C2c>(magpie, relay, &opts.run, &opts.sweep, common).await?;
    Ok(C2cSuite {
        relay: runs.relay,
        magpie: runs.magpie,
        ratio_to_relay: runs.ratio_to_relay,
        sweep_magpie: runs.sweep_magpie,
        sweep_relay: runs.sweep_relay,
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
