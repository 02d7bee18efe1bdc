//! `group`: M online members of one group, S of them sending S-byte texts to it.
//!
//! The members are users `0 … M−1`, one thin-client connection each; the senders are members
//! `0 … S−1`. Against Magpie the group is created and filled through the REST API before anyone
//! connects (`POST /v1/groups` with member 0 as owner and the first 100 others, then
//! `POST /v1/groups/{id}/members` 100 at a time, as an app backend would), so the members'
//! connections see no membership traffic during the load. Against the relay there is no group:
//! the relay forwards a group send to every other connection, and only the members connect.
//!
//! Each message goes to the group and must reach every member except its sender
//! (`recipients = M − 1` per message). Each member's connection runs a reader task (acks of its
//! own sends, deliveries from the others); each sender also runs a sender task.
//!
//! - **Closed loop** (`window W`): each sender keeps W messages in flight, and a message stays
//!   in flight until it is acked **and** delivered to every recipient. (Freeing the slot on the
//!   ack alone, as `c2c` does, would let the senders outrun the recipients' readers: Magpie acks
//!   after commit, fan-out costs M − 1 frames, and the recipients' queues would grow until the
//!   server closes them as slow consumers.) This finds the maximum rate of fully delivered
//!   messages. The window must be deep enough to keep the server busy while the recipients
//!   read (the default, 64, saturates two cores with 1,000 members and one sender), and
//!   `window × senders` must stay below the server's per-connection outbound queue.
//! - **Open loop** (`rate R` msg/s in total): each sender follows a fixed timetable of R/S
//!   msg/s, phases staggered; latency is measured from the *scheduled* send time (coordinated
//!   omission corrected, as in `c2c`).
//!
//! The run lasts `warmup + duration` (rates and latencies over the measured window only), or,
//! with `messages N`, until N messages (split over the senders) have been sent, answered and
//! delivered: then the whole run is the window.
//!
//! Every message carries `ext.b = {s, k, t}` (sender, per-sender counter, scheduled µs).
//! Latency is `recipient receive − t`, one value per delivery, in an HDR histogram (µs); a
//! second histogram holds, per message, the time until its last recipient had it ("reached
//! all"). Messages without a bench tag — the server's `group_notice` timeline messages — are
//! not counted as deliveries, but their seqs take part in the seq checks below.
//!
//! Correctness, checked on every run:
//!
//! - per (recipient, sender) stream: a counter delivered twice is a **duplicate**; a message
//!   older (by counter or by seq) than one already delivered from that sender is **reordered**;
//!   an acked message missing at the end is **lost** (counted per message and recipient, and
//!   per message that missed anyone); a delivery to its own sender is **misdelivered**;
//! - per message: every recipient got the seq the sender was acked with (**seq mismatch**
//!   otherwise); acked seqs follow each sender's send order;
//! - per group (Magpie): no seq belongs to two messages (**seq collisions**), the seqs seen
//!   (acked, delivered, notices) have no **gaps**, and each member receives the group's
//!   messages in seq order across all senders (**out of group order**).
//!
//! Against a **cluster** member `i` connects to node `i % N`. The server does not order the
//! wire across nodes (clients order by seq), so there reorders and arrivals out of group order
//! are counted (`arrived_out_of_order`, `out_of_group_order`) without failing the run; loss,
//! duplicates, mismatches, collisions and gaps still fail it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use magpie_proto::Codec;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::client::{EventName, FrameKind, SendTemplate, WsStream};
use crate::metrics::{self, Percentiles, ProcReport, ServiceReport, SharedHistogram};
use crate::scenarios::c2c::LoadMode;
pub use crate::scenarios::load::Tick;
use crate::scenarios::load::{
    self, FIRST_SEND_ID, Flow, NOT_ACKED, Samplers, Scenario, Sender, WITHOUT_SEQ, connect_all,
    lock, read_frames,
};
use crate::scenarios::{ClusterLayout, Common, padding};
use crate::target::{Target, TargetKind};

/// Members one REST call adds (the server's `MAX_USERS_PER_CALL`).
const MEMBERS_PER_CALL: usize = magpie_proto::group::MAX_USERS_PER_CALL;

/// The budget: p99 send → receive in a 1,000-member group with everyone online, ms.
pub const BUDGET_P99_MS: f64 = 100.0;
/// The budget: Magpie's deliveries/s at least this fraction of the relay's.
pub const BUDGET_RATIO: f64 = 0.5;
/// The group size the budget is stated for.
pub const BUDGET_MEMBERS: usize = 1_000;

/// How long a run lasts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RunLength {
    /// Load for `warmup`, then measure for `duration`.
    Time {
        /// Load before the measured window.
        warmup: Duration,
        /// The measured window.
        duration: Duration,
    },
    /// Send this many messages in total (split over the senders); the whole run is measured,
    /// until the last one is answered and delivered.
    Messages(u64),
}

/// Options of one group run.
#[derive(Clone, Debug)]
pub struct GroupOptions {
    /// Online members, one connection each (the group has exactly these members).
    pub members: usize,
    /// Members that send (members `0 … senders − 1`).
    pub senders: usize,
    /// Text size in bytes.
    pub size: usize,
    /// Closed or open loop.
    pub mode: LoadMode,
    /// Time or message count.
    pub length: RunLength,
    /// Longest wait for the last answers and deliveries after the load (time runs), or
    /// without progress (message-count runs).
    pub drain_timeout: Duration,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            members: 1_000,
            senders: 1,
            size: 100,
            mode: LoadMode::Closed { window: 64 },
            length: RunLength::Time {
                warmup: Duration::from_secs(3),
                duration: Duration::from_secs(20),
            },
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
    /// Bench messages received by a member other than their sender (duplicates excluded).
    pub delivered: u64,
    /// Sends answered with an error.
    pub send_errors: u64,
    /// Messages without a bench tag received (the server's `group_notice`s), not counted as
    /// deliveries.
    pub notices: u64,
}

/// What went wrong, if anything.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Correctness {
    /// (message, recipient) pairs: acked, never delivered to that recipient.
    pub lost: u64,
    /// Acked messages that missed at least one recipient.
    pub messages_not_reaching_all: u64,
    /// Deliveries of a message a recipient already had.
    pub duplicated: u64,
    /// Deliveries older (by counter or seq) than one the recipient already had from the same
    /// sender.
    pub reordered: u64,
    /// Of those, deliveries whose seq was not above the last seq from that sender.
    pub delivered_seq_backwards: u64,
    /// Deliveries (any sender, notices included) whose seq was not above the previous group
    /// message the member received: the group's messages did not arrive in seq order.
    pub out_of_group_order: u64,
    /// Sends whose acked seq is not above the sender's previous acked seq.
    pub seqs_out_of_send_order: u64,
    /// Messages delivered with another seq than acked, or with different seqs to different
    /// recipients.
    pub seq_mismatch: u64,
    /// Seqs that belong to two different messages (notices included).
    pub seq_collisions: u64,
    /// Seqs missing between the lowest and highest seq seen (acked, delivered, notices).
    pub seq_gaps: u64,
    /// Deliveries of a message to its own sender.
    pub misdelivered: u64,
    /// Frames the client could not decode, or tags naming no sender.
    pub undecodable: u64,
    /// Sends still unanswered when the drain ended.
    pub unanswered: u64,
    /// Connections the server closed during the run (e.g. 4005, slow consumer).
    pub closed_by_server: u64,
    /// The first close code the server sent, if any.
    pub first_close_code: Option<u16>,
    /// Messages delivered whose ack never came (not an error by itself).
    pub delivered_unacked: u64,
    /// The first error answer seen, if any.
    pub first_error: Option<String>,
    /// Cluster only: what counts as `reordered` on one server, not a failure there (across
    /// nodes the server does not order the wire; clients order by seq). `out_of_group_order`
    /// does not fail a cluster run either.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arrived_out_of_order: Option<u64>,
}

impl Correctness {
    /// Nothing lost, duplicated, misordered (one server), mismatched, misdelivered, or
    /// undecodable, and no connection closed by the server.
    pub fn ok(&self) -> bool {
        let single_server = self.arrived_out_of_order.is_none();
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && (self.out_of_group_order == 0 || !single_server)
            && self.seqs_out_of_send_order == 0
            && self.seq_mismatch == 0
            && self.seq_collisions == 0
            && self.seq_gaps == 0
            && self.misdelivered == 0
            && self.undecodable == 0
            && self.closed_by_server == 0
    }
}

/// The result of one group run against one target.
#[derive(Clone, Debug, Serialize)]
pub struct GroupRun {
    /// Magpie or the relay.
    pub target: TargetKind,
    /// Closed or open loop.
    pub load: LoadMode,
    /// Online members (= the group's members).
    pub members: usize,
    /// Members that sent.
    pub senders: usize,
    /// Text size in bytes.
    pub size: usize,
    /// Messages asked for (message-count runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<u64>,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Warmup, seconds (0 for message-count runs).
    pub warmup_s: f64,
    /// Sends per second in the window.
    pub sent_per_sec: f64,
    /// Acks per second in the window.
    pub acked_per_sec: f64,
    /// Deliveries (member receipts) per second in the window.
    pub delivered_per_sec: f64,
    /// Send → each recipient's receive (from the scheduled time in open loop), µs.
    pub latency: Percentiles,
    /// Send → the last recipient's receive, per message, µs.
    pub reached_all_latency: Percentiles,
    /// Send → ack at the sender, µs.
    pub ack_latency: Percentiles,
    /// Whole-run totals.
    pub totals: Totals,
    /// Loss, duplicates, order, seqs.
    pub correctness: Correctness,
    /// The server under test during the window.
    pub server: Option<ProcReport>,
    /// The generator itself during the window.
    pub generator: Option<ProcReport>,
    /// Counters every second.
    pub ticks: Vec<Tick>,
    /// How the members were spread over a cluster's nodes (absent for one server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterLayout>,
    /// A spawned cluster's backing services during the window.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceReport>,
}

impl GroupRun {
    /// Whether the run was correct.
    pub fn passed(&self) -> bool {
        self.correctness.ok() && self.totals.send_errors == 0
    }

    /// Recipients per message.
    pub fn recipients(&self) -> usize {
        self.members.saturating_sub(1)
    }
}

/// One sender's messages: the seq each was acked with, the seq it was delivered with, and to
/// how many recipients.
#[derive(Debug, Default)]
struct Ledger {
    acked_seq: Vec<u64>,
    delivered_seq: Vec<u64>,
    deliveries: Vec<u32>,
    /// Deliveries whose seq differed from the message's first delivery.
    seq_mismatch: u64,
}

/// What one delivery did to its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reached {
    /// This delivery was the message's last recipient.
    all: bool,
    /// ... and the message was acked already: its closed-loop slot is free.
    release: bool,
}

impl Ledger {
    fn grow(&mut self, k: usize) {
        if k >= self.acked_seq.len() {
            let len = (k + 1).max(self.acked_seq.len() * 2).max(64);
            self.acked_seq.resize(len, NOT_ACKED);
            self.delivered_seq.resize(len, NOT_ACKED);
            self.deliveries.resize(len, 0);
        }
    }

    /// Records the ack of `k`; returns whether its slot is free now (every recipient has it).
    fn ack(&mut self, k: u64, seq: Option<u64>, recipients: u32) -> bool {
        let k = k as usize;
        self.grow(k);
        let first = self.acked_seq[k] == NOT_ACKED;
        self.acked_seq[k] = seq.filter(|s| *s != NOT_ACKED).unwrap_or(WITHOUT_SEQ);
        first && self.deliveries[k] >= recipients
    }

    /// Records one (not duplicate) delivery of `k`.
    fn deliver(&mut self, k: u64, seq: Option<u64>, recipients: u32) -> Reached {
        let k = k as usize;
        self.grow(k);
        let seq = seq.filter(|s| *s != NOT_ACKED).unwrap_or(WITHOUT_SEQ);
        match self.delivered_seq[k] {
            NOT_ACKED => self.delivered_seq[k] = seq,
            first if first != seq => self.seq_mismatch += 1,
            _ => {}
        }
        self.deliveries[k] = self.deliveries[k].saturating_add(1);
        let all = self.deliveries[k] == recipients;
        Reached {
            all,
            release: all && self.acked_seq[k] != NOT_ACKED,
        }
    }

    fn acked(&self, k: usize) -> bool {
        self.acked_seq.get(k).is_some_and(|s| *s != NOT_ACKED)
    }

    /// Acked seqs not above the previous acked seq of this sender.
    fn seqs_out_of_send_order(&self) -> u64 {
        load::seqs_out_of_send_order(&self.acked_seq)
    }

    /// (messages acked, delivered but never acked, acked seq ≠ delivered seq, acked messages
    /// that missed a recipient)
    fn settle(&self, recipients: u32) -> (u64, u64, u64, u64) {
        let (mut acked, mut unacked, mut mismatch, mut short) = (0, 0, 0, 0);
        for k in 0..self.acked_seq.len() {
            let (a, d) = (self.acked_seq[k], self.delivered_seq[k]);
            match (a != NOT_ACKED, self.deliveries[k] > 0) {
                (true, delivered) => {
                    acked += 1;
                    if self.deliveries[k] < recipients {
                        short += 1;
                    }
                    if delivered && a != WITHOUT_SEQ && d != WITHOUT_SEQ && a != d {
                        mismatch += 1;
                    }
                }
                (false, true) => unacked += 1,
                (false, false) => {}
            }
        }
        (acked, unacked, mismatch, short)
    }

    /// The seq of each message that has one (acked, else delivered).
    fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.acked_seq
            .iter()
            .zip(&self.delivered_seq)
            .filter_map(|(&a, &d)| {
                [a, d]
                    .into_iter()
                    .find(|s| *s != NOT_ACKED && *s != WITHOUT_SEQ)
            })
    }
}

/// What one recipient received from one sender, in constant space while messages arrive in
/// order: the next expected counter and the counters skipped so far.
#[derive(Debug, Default)]
struct Stream {
    next: u64,
    missing: BTreeSet<u64>,
    last_seq: u64,
    duplicated: u64,
    reordered: u64,
    seq_backwards: u64,
}

impl Stream {
    /// Records a delivery; `false` when it is a duplicate.
    fn deliver(&mut self, k: u64, seq: Option<u64>) -> bool {
        let older_k = if k == self.next {
            self.next += 1;
            false
        } else if k > self.next {
            self.missing.extend(self.next..k);
            self.next = k + 1;
            false
        } else if self.missing.remove(&k) {
            true
        } else {
            self.duplicated += 1;
            return false;
        };
        let older_seq = seq.is_some_and(|s| s <= self.last_seq);
        if older_k || older_seq {
            self.reordered += 1;
        }
        if older_seq {
            self.seq_backwards += 1;
        }
        if let Some(s) = seq {
            self.last_seq = self.last_seq.max(s);
        }
        true
    }

    /// Acked messages of `ledger` this recipient never got.
    fn lost(&self, ledger: &Ledger) -> u64 {
        let skipped = self
            .missing
            .iter()
            .filter(|k| ledger.acked(**k as usize))
            .count() as u64;
        let tail = (self.next as usize..ledger.acked_seq.len())
            .filter(|k| ledger.acked(*k))
            .count() as u64;
        skipped + tail
    }
}

/// One member's view: a stream per sender, and the order of everything from the group.
#[derive(Debug)]
struct Inbox {
    streams: Vec<Stream>,
    last_group_seq: u64,
    out_of_group_order: u64,
}

impl Inbox {
    fn new(senders: usize) -> Self {
        Self {
            streams: (0..senders).map(|_| Stream::default()).collect(),
            last_group_seq: 0,
            out_of_group_order: 0,
        }
    }

    fn group_seq(&mut self, seq: Option<u64>) {
        if let Some(seq) = seq {
            if seq <= self.last_group_seq {
                self.out_of_group_order += 1;
            }
            self.last_group_seq = self.last_group_seq.max(seq);
        }
    }
}

/// State shared by every task of a run: the common counters, and what only a group counts.
struct Shared {
    flow: Arc<Flow>,
    recipients: u32,
    notices: AtomicU64,
    notice_seqs: Mutex<BTreeSet<u64>>,
    reached_all: SharedHistogram,
    ledgers: Vec<Mutex<Ledger>>,
    inboxes: Vec<Mutex<Inbox>>,
}

impl Shared {
    fn totals(&self) -> Totals {
        let t = self.flow.totals();
        Totals {
            sent: t.sent,
            acked: t.acked,
            delivered: t.delivered,
            send_errors: t.send_errors,
            notices: self.notices.load(Ordering::Relaxed),
        }
    }
}
/// Creates the group `group` with `names` as its members (the first one owns it).
async fn create_group(target: &Target, group: &str, names: &[String]) -> anyhow::Result<()> {
    let admin = target.admin()?;
    let (owner, others) = names.split_first().context("a group needs an owner")?;
    let max = u32::try_from(names.len())
        .ok()
        .filter(|n| *n > magpie_proto::group::DEFAULT_MAX_MEMBERS);
    let first = others.len().min(MEMBERS_PER_CALL);
    admin
        .create_group(group, owner, &others[..first], max)
        .await?;
    futures_util::stream::iter(others[first..].chunks(MEMBERS_PER_CALL))
        .map(|chunk| admin.add_group_members(group, chunk))
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    let info = admin.group(group).await?;
    if info.member_count as usize != names.len() {
        bail!(
            "group {group} has {} members, expected {}",
            info.member_count,
            names.len()
        );
    }
    Ok(())
}

/// Runs one group load against `target` with fresh users `grp-<run_id>-<label>-<i>` and the
/// group `grp-<run_id>-<label>`.
pub async fn run(
    target: &Target,
    opts: &GroupOptions,
    common: &Common,
    label: &str,
) -> anyhow::Result<GroupRun> {
    if opts.members < 2 {
        bail!("a group run needs at least 2 members");
    }
    if opts.senders == 0 || opts.senders > opts.members {
        bail!("--senders must be between 1 and --members");
    }
    if opts.members > u32::MAX as usize {
        bail!("too many members");
    }
    if target.kind == TargetKind::Relay && common.codec != Codec::Json {
        bail!("the relay speaks JSON only; run the relay baseline with --codec json");
    }
    let (members, senders) = (opts.members, opts.senders);
    let group = format!("grp-{}-{label}", common.run_id);
    let names: Vec<String> = (0..members).map(|i| format!("{group}-{i}")).collect();
    let tokens = match target.kind {
        TargetKind::Magpie => {
            let tokens = target
                .admin()?
                .users_with_tokens(&names, common.rest_concurrency, &common.progress)
                .await?;
            create_group(target, &group, &names)
                .await
                .with_context(|| format!("creating the group {group}"))?;
            tokens
        }
        TargetKind::Relay => vec!["relay".to_owned(); members],
    };

    // Connect and log every member in, round robin over a cluster's nodes.
    let nodes = target.node_count();
    let assign: Vec<usize> = (0..members).map(|i| i % nodes).collect();
    let cluster = ClusterLayout::of(target, assign.iter().copied());
    let conns = connect_all(target, common, &names, &tokens, &assign).await?;

    let (warmup_us, end_us, total_messages) = match opts.length {
        RunLength::Time { warmup, duration } => {
            let warmup_us = warmup.as_micros() as u64;
            (warmup_us, warmup_us + duration.as_micros() as u64, None)
        }
        RunLength::Messages(n) => (0, u64::MAX, Some(n.max(1))),
    };
    let flow = Arc::new(Flow::new(
        common.codec,
        opts.mode,
        senders,
        (warmup_us, end_us),
    ));
    let shared = Arc::new(Shared {
        flow: Arc::clone(&flow),
        recipients: (members - 1) as u32,
        notices: AtomicU64::new(0),
        notice_seqs: Mutex::new(BTreeSet::new()),
        reached_all: SharedHistogram::new(16),
        ledgers: (0..senders)
            .map(|_| Mutex::new(Ledger::default()))
            .collect(),
        inboxes: (0..members)
            .map(|_| Mutex::new(Inbox::new(senders)))
            .collect(),
    });
    let recipients = u64::from(shared.recipients);
    let samplers = Samplers::start(target, flow.base, common.sample_every);

    let stop = CancellationToken::new();
    let text: Arc<str> = Arc::from(padding(opts.size));
    let template = SendTemplate::to_group(common.codec, &group, text)?;
    let mut readers = Vec::with_capacity(members);
    let mut idle_sinks = Vec::with_capacity(members - senders);
    let mut sender_tasks = Vec::with_capacity(senders);
    for (i, conn) in conns {
        let (sink, stream) = conn.split();
        readers.push(tokio::spawn(reader(i, stream, Arc::clone(&shared))));
        if i >= senders {
            idle_sinks.push(sink);
            continue;
        }
        // Split the message count: the first `n % senders` senders send one more.
        let limit =
            total_messages.map(|n| n / senders as u64 + u64::from((i as u64) < n % senders as u64));
        let task = Sender {
            i,
            template: template.clone(),
            sink,
            flow: Arc::clone(&flow),
            stop: stop.clone(),
            limit,
        };
        sender_tasks.push(task.spawn(opts.mode));
    }

    // Drive the clock: ticks, the window boundaries, the progress bar.
    let (bar, timer_s) = match (opts.length, total_messages) {
        (RunLength::Time { warmup, duration }, _) => {
            let total_s = (warmup + duration).as_secs().max(1);
            (
                common
                    .progress
                    .timer(total_s, &format!("{} {label}", target.kind.name())),
                Some(total_s),
            )
        }
        (RunLength::Messages(_), n) => (
            common.progress.bar(
                n.unwrap_or(1) * recipients,
                &format!("{} {label} deliveries", target.kind.name()),
            ),
            None,
        ),
    };
    let mut last_progress = (Instant::now(), flow.totals());
    let clocked = load::drive(&flow, &bar, timer_s, warmup_us, |now_us, totals| {
        let Some(n) = total_messages else {
            return now_us >= end_us;
        };
        bar.set_position(totals.delivered);
        if totals.sent >= n && totals.drained(recipients) {
            return true;
        }
        let moved = (totals.sent, totals.acked, totals.delivered)
            != (
                last_progress.1.sent,
                last_progress.1.acked,
                last_progress.1.delivered,
            );
        if moved {
            last_progress = (Instant::now(), *totals);
        } else if last_progress.0.elapsed() > opts.drain_timeout {
            common.progress.note(format!(
                "group {label}: no progress for {:?}; stopping",
                opts.drain_timeout
            ));
            return true;
        }
        false
    })
    .await;
    stop.cancel();
    bar.finish_and_clear();
    let (server, services, generator) = samplers.finish(clocked.window_ms(warmup_us)).await;

    // Stop sending, then drain: every send answered, every ack delivered to everyone.
    load::wind_down(
        &flow,
        sender_tasks,
        idle_sinks,
        readers,
        recipients,
        opts.drain_timeout,
    )
    .await;

    let totals = shared.totals();
    let rates = clocked.rates(warmup_us);
    let correctness = settle(&shared, members, cluster.is_some());
    Ok(GroupRun {
        target: target.kind,
        load: opts.mode,
        members,
        senders,
        size: opts.size,
        messages: total_messages,
        duration_s: rates.secs,
        warmup_s: warmup_us as f64 / 1e6,
        sent_per_sec: rates.sent,
        acked_per_sec: rates.acked,
        delivered_per_sec: rates.delivered,
        latency: Percentiles::of(&flow.latency.merged()),
        reached_all_latency: Percentiles::of(&shared.reached_all.merged()),
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
/// Works out loss, order and seq checks from the ledgers and inboxes after the drain.
fn settle(shared: &Shared, members: usize, cluster: bool) -> Correctness {
    let totals = shared.totals();
    let mut c = Correctness {
        undecodable: shared.flow.undecodable.load(Ordering::Relaxed),
        misdelivered: shared.flow.misdelivered.load(Ordering::Relaxed),
        closed_by_server: shared.flow.closed_by_server.load(Ordering::Relaxed),
        first_close_code: *lock(&shared.flow.first_close_code),
        unanswered: totals
            .sent
            .saturating_sub(totals.acked + totals.send_errors),
        first_error: lock(&shared.flow.first_error).clone(),
        ..Correctness::default()
    };
    let ledgers: Vec<MutexGuard<'_, Ledger>> = shared.ledgers.iter().map(lock).collect();
    for ledger in &ledgers {
        let (_, unacked, mismatch, short) = ledger.settle(shared.recipients);
        c.delivered_unacked += unacked;
        c.seq_mismatch += mismatch + ledger.seq_mismatch;
        c.messages_not_reaching_all += short;
        c.seqs_out_of_send_order += ledger.seqs_out_of_send_order();
    }
    for j in 0..members {
        let inbox = lock(&shared.inboxes[j]);
        c.out_of_group_order += inbox.out_of_group_order;
        for (s, stream) in inbox.streams.iter().enumerate() {
            c.duplicated += stream.duplicated;
            c.reordered += stream.reordered;
            c.delivered_seq_backwards += stream.seq_backwards;
            if s != j {
                c.lost += stream.lost(&ledgers[s]);
            }
        }
    }
    // Seqs: each message's (acked, else delivered) seq and every notice's.
    let mut seqs: Vec<u64> = ledgers.iter().flat_map(|l| l.seqs()).collect();
    seqs.extend(lock(&shared.notice_seqs).iter().copied());
    seqs.sort_unstable();
    let before = seqs.len();
    seqs.dedup();
    c.seq_collisions = (before - seqs.len()) as u64;
    if let (Some(first), Some(last)) = (seqs.first(), seqs.last()) {
        c.seq_gaps = (last - first + 1) - seqs.len() as u64;
    }
    if cluster {
        c.arrived_out_of_order = Some(std::mem::take(&mut c.reordered));
    }
    c
}

/// One member's reading half: acks of its own sends, the group's messages from the others.
async fn reader(j: usize, stream: WsStream, shared: Arc<Shared>) {
    let flow = &shared.flow;
    read_frames(stream, flow, |frame, now| match frame.kind {
        FrameKind::Response => {
            let Some(k) = frame.id.and_then(|id| id.checked_sub(FIRST_SEND_ID)) else {
                return;
            };
            if j >= flow.senders {
                flow.undecodable.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let (seq, tag) = frame.ack();
            let release = lock(&shared.ledgers[j]).ack(k, seq, shared.recipients);
            flow.acked(j, tag, now);
            if release {
                flow.release(j);
            }
        }
        FrameKind::Error => {
            flow.send_error(&frame);
            if j < flow.senders {
                flow.release(j);
            }
        }
        FrameKind::Event if frame.event == Some(EventName::Message) => {
            let seq = frame.data.as_ref().and_then(|d| d.seq);
            let Some(tag) = frame.event_tag() else {
                // A message the bench did not send: the server's group notice.
                shared.notices.fetch_add(1, Ordering::Relaxed);
                lock(&shared.inboxes[j]).group_seq(seq);
                if let Some(seq) = seq {
                    lock(&shared.notice_seqs).insert(seq);
                }
                return;
            };
            let s = tag.s as usize;
            if s >= flow.senders {
                flow.undecodable.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if s == j {
                flow.misdelivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let fresh = {
                let mut inbox = lock(&shared.inboxes[j]);
                inbox.group_seq(seq);
                inbox.streams[s].deliver(tag.k, seq)
            };
            if !fresh {
                return;
            }
            flow.delivered.fetch_add(1, Ordering::Relaxed);
            let in_window = flow.in_window(tag.t);
            let latency = now.saturating_sub(tag.t);
            if in_window {
                flow.latency.record(j, latency);
            }
            let reached = lock(&shared.ledgers[s]).deliver(tag.k, seq, shared.recipients);
            if reached.all && in_window {
                shared.reached_all.record(s, latency);
            }
            if reached.release {
                flow.release(s);
            }
        }
        FrameKind::Event => {}
    })
    .await;
}
/// A base run (closed loop finds the maximum), then optional open-loop steps, against Magpie
/// and optionally the relay first.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// The base run.
    pub run: GroupOptions,
    /// Sweep steps as fractions of Magpie's measured acked msg/s (or of the open-loop rate).
    pub sweep: Vec<f64>,
}

/// One open-loop step of a sweep.
pub type SweepPoint = load::SweepPoint<GroupRun>;

/// One line of the budget.
#[derive(Clone, Debug, Serialize)]
pub struct BudgetLine {
    /// What is promised.
    pub budget: String,
    /// Which run it was judged on.
    pub run: String,
    /// What was measured.
    pub measured: String,
    /// Whether it was met (`None`: not measured by this invocation).
    pub met: Option<bool>,
}

/// Everything a `group` invocation measured.
#[derive(Clone, Debug, Serialize)]
pub struct GroupSuite {
    /// The relay baseline with the same load, if requested.
    pub relay: Option<GroupRun>,
    /// Magpie.
    pub magpie: GroupRun,
    /// Magpie's deliveries/s over the relay's, measured in the same invocation.
    pub ratio_to_relay: Option<f64>,
    /// Open-loop steps against Magpie.
    pub sweep_magpie: Vec<SweepPoint>,
    /// The same steps against the relay.
    pub sweep_relay: Vec<SweepPoint>,
    /// The budget, line by line.
    pub budget: Vec<BudgetLine>,
}

impl GroupSuite {
    /// Every run correct.
    pub fn passed(&self) -> bool {
        load::all_passed(
            self.relay.as_ref(),
            &self.magpie,
            [&self.sweep_magpie, &self.sweep_relay],
            GroupRun::passed,
        )
    }

    /// Judges the budget on the runs of this suite: p99 per Magpie run, the ratio on the base
    /// run.
    fn judge(&mut self) {
        let mut lines = Vec::new();
        let size_note = if self.magpie.members == BUDGET_MEMBERS {
            String::new()
        } else {
            format!(
                " (stated for {BUDGET_MEMBERS} members; this run had {})",
                self.magpie.members
            )
        };
        let runs = std::iter::once(("magpie".to_owned(), &self.magpie)).chain(
            self.sweep_magpie
                .iter()
                .map(|p| (format!("magpie {:.0}%", p.fraction * 100.0), &p.run)),
        );
        for (name, run) in runs {
            let p99_ms = run.latency.p99_us as f64 / 1e3;
            lines.push(BudgetLine {
                budget: format!(
                    "p99 send -> every member's receive <= {BUDGET_P99_MS:.0} ms, all members online{size_note}"
                ),
                run: format!("{name} {}", run.load.describe()),
                measured: format!(
                    "p99 {}",
                    metrics::fmt_us(run.latency.p99_us)
                ),
                met: Some(run.latency.count > 0 && p99_ms <= BUDGET_P99_MS),
            });
        }
        lines.push(BudgetLine {
            budget: format!("deliveries/s >= {BUDGET_RATIO} x relay"),
            run: format!("magpie {}", self.magpie.load.describe()),
            measured: match (self.ratio_to_relay, &self.relay) {
                (Some(ratio), Some(relay)) => format!(
                    "{:.0} vs relay {:.0} -> {ratio:.3}",
                    self.magpie.delivered_per_sec, relay.delivered_per_sec
                ),
                _ => "not measured (use --with-relay)".to_owned(),
            },
            met: self.ratio_to_relay.map(|r| r >= BUDGET_RATIO),
        });
        self.budget = lines;
    }
}

/// The `group` scenario, for [`load::suite`].
struct Group;

impl Scenario for Group {
    type Options = GroupOptions;
    type Run = GroupRun;
    const NAME: &'static str = "group";

    fn describe(o: &GroupOptions) -> String {
        format!(
            "{} members, {} senders, {}",
            o.members,
            o.senders,
            o.mode.describe()
        )
    }

    fn mode(opts: &GroupOptions) -> LoadMode {
        opts.mode
    }

    fn at_rate(opts: &GroupOptions, rate: f64) -> GroupOptions {
        GroupOptions {
            mode: LoadMode::Open { rate },
            ..opts.clone()
        }
    }

    fn delivered_per_sec(run: &GroupRun) -> f64 {
        run.delivered_per_sec
    }

    /// The maximum acked msg/s (each is delivered M − 1 times).
    fn closed_reference(run: &GroupRun) -> f64 {
        run.acked_per_sec
    }

    async fn run(
        target: &Target,
        opts: &GroupOptions,
        common: &Common,
        label: &str,
    ) -> anyhow::Result<GroupRun> {
        run(target, opts, common, label).await
    }
}

/// Runs the relay baseline (if given), Magpie, and the sweep.
pub async fn suite(
    magpie: &Target,
    relay: Option<&Target>,
    opts: &SuiteOptions,
    common: &Common,
) -> anyhow::Result<GroupSuite> {
    let runs = load::suite::<Group>(magpie, relay, &opts.run, &opts.sweep, common).await?;
    let mut suite = GroupSuite {
        relay: runs.relay,
        magpie: runs.magpie,
        ratio_to_relay: runs.ratio_to_relay,
        sweep_magpie: runs.sweep_magpie,
        sweep_relay: runs.sweep_relay,
        budget: Vec::new(),
    };
    suite.judge();
    Ok(suite)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_find_duplicates_reorders_and_loss() {
        let mut ledger = Ledger::default();
        for k in 0..6 {
            ledger.ack(k, Some(10 + k), 1);
        }
        let mut s = Stream::default();
        assert!(s.deliver(0, Some(10)));
        assert!(s.deliver(2, Some(12))); // 1 skipped
        assert!(s.deliver(1, Some(11))); // late: reordered
        assert!(!s.deliver(2, Some(12))); // duplicate
        assert!(s.deliver(4, Some(14))); // 3 skipped, 5 never comes
        assert_eq!((s.duplicated, s.reordered, s.seq_backwards), (1, 1, 1));
        assert_eq!(s.lost(&ledger), 2, "3 and 5");
    }

    #[test]
    fn ledgers_free_a_slot_once_acked_and_delivered_to_all() {
        let mut l = Ledger::default();
        // Delivered to both recipients, then acked.
        assert_eq!(
            l.deliver(0, Some(5), 2),
            Reached {
                all: false,
                release: false
            }
        );
        assert_eq!(
            l.deliver(0, Some(5), 2),
            Reached {
                all: true,
                release: false
            }
        );
        assert!(l.ack(0, Some(5), 2));
        // Acked first, then delivered.
        assert!(!l.ack(1, Some(6), 2));
        assert!(!l.deliver(1, Some(6), 2).release);
        assert!(l.deliver(1, Some(7), 2).release);
        assert_eq!(l.seq_mismatch, 1, "two recipients saw two seqs");
        // Acked, one recipient only.
        assert!(!l.ack(2, Some(8), 2));
        l.deliver(2, Some(8), 2);
        assert_eq!(l.settle(2), (3, 0, 0, 1));
        assert_eq!(l.seqs().collect::<Vec<_>>(), vec![5, 6, 8]);
        assert_eq!(l.seqs_out_of_send_order(), 0);
    }

    #[test]
    fn relay_messages_have_no_seqs() {
        let mut l = Ledger::default();
        assert!(!l.ack(0, None, 1));
        assert!(l.deliver(0, None, 1).release);
        assert_eq!(l.settle(1), (1, 0, 0, 0));
        assert_eq!(l.seqs().count(), 0);
        let mut s = Stream::default();
        assert!(s.deliver(0, None));
        assert!(s.deliver(1, None));
        assert_eq!(s.reordered, 0);
    }

    #[test]
    fn inboxes_check_the_order_of_the_whole_group() {
        let mut inbox = Inbox::new(2);
        inbox.group_seq(Some(3));
        inbox.group_seq(Some(4));
        inbox.group_seq(Some(4));
        inbox.group_seq(None);
        inbox.group_seq(Some(2));
        assert_eq!(inbox.out_of_group_order, 2);
    }
}
