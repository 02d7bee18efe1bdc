//! What the message scenarios ([`c2c`](super::c2c), [`group`](super::group)) share: connecting
//! and logging in the users, the counters every task of a run adds to ([`Flow`]), the closed-
//! and open-loop senders, the clock that drives a run and records its window, the drain, and the
//! suite of relay baseline, Magpie run and open-loop sweep. What each scenario checks (its
//! ledgers, its readers' handling of acks and deliveries, its report) stays in its own module.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use indicatif::ProgressBar;
use magpie_proto::{Codec, Platform};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::{BenchTag, Conn, FastFrame, SendTemplate, WsSink, WsStream, payload};
use crate::metrics::{self, ProcReport, Sampler, ServiceReport, SharedHistogram};
use crate::scenarios::c2c::LoadMode;
use crate::scenarios::{Common, TargetSamplers};
use crate::target::Target;

/// Request ids of sends are `FIRST_SEND_ID + k` (the login used id 1).
pub(super) const FIRST_SEND_ID: u64 = 2;

/// A ledger's mark of a message not acked (or delivered) yet; seqs start at 1.
pub(super) const NOT_ACKED: u64 = 0;
/// A ledger's mark of an ack or delivery without a seq (the relay has none).
pub(super) const WITHOUT_SEQ: u64 = u64::MAX;

/// Of one sender's acked seqs, indexed by its counter, those not above an earlier one (the
/// server assigned seqs out of the order the device sent in).
pub(super) fn seqs_out_of_send_order(acked_seq: &[u64]) -> u64 {
    let mut last = 0;
    let mut bad = 0;
    for &seq in acked_seq {
        if seq == NOT_ACKED || seq == WITHOUT_SEQ {
            continue;
        }
        if seq <= last {
            bad += 1;
        }
        last = last.max(seq);
    }
    bad
}

/// Locks `m`, ignoring poisoning (a panicked task leaves counters, not broken invariants).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Totals over the whole run (warmup and drain included).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Totals {
    /// Sends written.
    pub sent: u64,
    /// Sends answered with success.
    pub acked: u64,
    /// Messages received by their recipient (`c2c`: duplicates included).
    pub delivered: u64,
    /// Sends answered with an error.
    pub send_errors: u64,
}

impl Totals {
    /// Every send answered and every acked message delivered to its `recipients`.
    pub(super) fn drained(&self, recipients: u64) -> bool {
        self.acked + self.send_errors >= self.sent && self.delivered >= self.acked * recipients
    }
}

/// Counters at one second of the run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tick {
    /// Seconds since the load started.
    pub t_s: f64,
    /// Sent so far.
    pub sent: u64,
    /// Acked so far.
    pub acked: u64,
    /// Delivered so far.
    pub delivered: u64,
}

/// Connects and logs in `names[i]` with `tokens[i]` on node `assign[i]`, 200 at a time; the
/// connections come back in user order.
pub(super) async fn connect_all(
    target: &Target,
    common: &Common,
    names: &[String],
    tokens: &[String],
    assign: &[usize],
) -> anyhow::Result<Vec<(usize, Conn)>> {
    let bar = common.progress.bar(names.len() as u64, "connecting");
    let conns: Vec<anyhow::Result<(usize, Conn)>> =
        futures_util::stream::iter(names.iter().zip(tokens).enumerate())
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
    Ok(conns)
}

/// The state every task of a run shares, whatever the scenario checks: the clock, the
/// counters, the latency histograms and the senders' closed-loop slots.
pub(super) struct Flow {
    pub(super) base: Instant,
    pub(super) codec: Codec,
    /// Senders (each has a slot semaphore; open-loop phases are spread over them).
    pub(super) senders: usize,
    pub(super) window_us: (u64, u64),
    pub(super) closed_loop: bool,
    pub(super) sent: AtomicU64,
    pub(super) acked: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) send_errors: AtomicU64,
    pub(super) undecodable: AtomicU64,
    pub(super) misdelivered: AtomicU64,
    pub(super) closed_by_server: AtomicU64,
    pub(super) stopping: AtomicBool,
    pub(super) first_close_code: Mutex<Option<u16>>,
    pub(super) first_error: Mutex<Option<String>>,
    /// Send → recipient receive, µs.
    pub(super) latency: SharedHistogram,
    /// Send → ack, µs.
    pub(super) ack_latency: SharedHistogram,
    pub(super) permits: Vec<Semaphore>,
}

impl Flow {
    /// A run of `senders` senders offering `mode`, measured over `window_us`; the clock starts
    /// now.
    pub(super) fn new(codec: Codec, mode: LoadMode, senders: usize, window_us: (u64, u64)) -> Self {
        let (window, closed_loop) = match mode {
            LoadMode::Closed { window } => (window.max(1), true),
            LoadMode::Open { .. } => (0, false),
        };
        Self {
            base: Instant::now(),
            codec,
            senders,
            window_us,
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
            permits: (0..senders)
                .map(|_| Semaphore::new(if closed_loop { window } else { 0 }))
                .collect(),
        }
    }

    pub(super) fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    pub(super) fn in_window(&self, t: u64) -> bool {
        t >= self.window_us.0 && t < self.window_us.1
    }

    /// Counts a connection the server closed (unless the bench is closing them itself).
    pub(super) fn server_closed(&self, code: Option<u16>) {
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        self.closed_by_server.fetch_add(1, Ordering::Relaxed);
        if let Some(code) = code {
            lock(&self.first_close_code).get_or_insert(code);
        }
    }

    pub(super) fn totals(&self) -> Totals {
        Totals {
            sent: self.sent.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            send_errors: self.send_errors.load(Ordering::Relaxed),
        }
    }

    /// Counts an ack received by sender `j` at `now` (µs), with the latency of a message
    /// scheduled inside the window.
    pub(super) fn acked(&self, j: usize, tag: Option<BenchTag>, now: u64) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        if let Some(tag) = tag
            && self.in_window(tag.t)
        {
            self.ack_latency.record(j, now.saturating_sub(tag.t));
        }
    }

    /// Counts an error answer, keeping the first.
    pub(super) fn send_error(&self, frame: &FastFrame) {
        self.send_errors.fetch_add(1, Ordering::Relaxed);
        lock(&self.first_error).get_or_insert_with(|| {
            format!(
                "request {:?}: code {:?}",
                frame.id,
                frame.error.as_ref().map(|e| e.code)
            )
        });
    }

    /// Frees one closed-loop slot of sender `s`.
    pub(super) fn release(&self, s: usize) {
        if self.closed_loop {
            self.permits[s].add_permits(1);
        }
    }
}

/// Reads `stream` until it ends, counting server closes and undecodable frames, and hands every
/// decoded frame with its receive time (µs) to `on_frame`.
pub(super) async fn read_frames(
    mut stream: WsStream,
    flow: &Flow,
    mut on_frame: impl FnMut(FastFrame, u64),
) {
    while let Some(next) = stream.next().await {
        let message = match next {
            Ok(message) => message,
            Err(_) => {
                flow.server_closed(None);
                break;
            }
        };
        let Some(bytes) = payload(&message) else {
            if let tokio_tungstenite::tungstenite::Message::Close(frame) = &message {
                flow.server_closed(frame.as_ref().map(|f| u16::from(f.code)));
                break;
            }
            continue;
        };
        let now = flow.now_us();
        let Ok(frame) = FastFrame::decode(flow.codec, bytes) else {
            flow.undecodable.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        on_frame(frame, now);
    }
}

/// One sender's writing half.
pub(super) struct Sender {
    pub(super) i: usize,
    pub(super) template: SendTemplate,
    pub(super) sink: WsSink,
    pub(super) flow: Arc<Flow>,
    pub(super) stop: CancellationToken,
    /// Messages this sender sends at most (`None`: until stopped).
    pub(super) limit: Option<u64>,
}

impl Sender {
    /// Spawns the loop `mode` asks for; the task gives the sink back when it stops.
    pub(super) fn spawn(self, mode: LoadMode) -> JoinHandle<WsSink> {
        match mode {
            LoadMode::Closed { .. } => tokio::spawn(self.closed_loop()),
            LoadMode::Open { rate } => tokio::spawn(self.open_loop(rate)),
        }
    }

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
        self.flow.sent.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn remaining(&self, k: u64) -> u64 {
        self.limit.map_or(u64::MAX, |n| n.saturating_sub(k))
    }

    /// Keeps the slots of the sender's semaphore busy (the scenario frees a slot when its
    /// message is done). Sends every free slot, then flushes.
    async fn closed_loop(mut self) -> WsSink {
        let flow = Arc::clone(&self.flow);
        let permits = &flow.permits[self.i];
        let mut k = 0u64;
        while self.remaining(k) > 0 {
            let permit = tokio::select! {
                _ = self.stop.cancelled() => break,
                permit = permits.acquire() => permit,
            };
            let Ok(permit) = permit else { break };
            permit.forget();
            let mut n = 1;
            while n < self.remaining(k)
                && let Ok(permit) = permits.try_acquire()
            {
                permit.forget();
                n += 1;
            }
            for _ in 0..n {
                let t = flow.now_us();
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

    /// A fixed timetable of `rate / senders` msg/s, staggered by sender; late messages go out
    /// at once, stamped with their scheduled time.
    async fn open_loop(mut self, rate: f64) -> WsSink {
        let flow = Arc::clone(&self.flow);
        let senders = flow.senders as f64;
        let interval_us = 1e6 / (rate / senders).max(1e-6);
        let phase_us = interval_us * self.i as f64 / senders;
        let due = |k: u64| (phase_us + k as f64 * interval_us) as u64;
        let mut k = 0u64;
        while self.remaining(k) > 0 {
            let now = flow.now_us();
            let next = due(k);
            if next > now {
                tokio::select! {
                    _ = self.stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_micros(next - now)) => {}
                }
            } else if self.stop.is_cancelled() {
                break;
            }
            let now = flow.now_us();
            let mut batch = 0;
            while due(k) <= now && batch < 256 && self.remaining(k) > 0 {
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

/// The server's and the generator's samplers.
pub(super) struct Samplers {
    server: TargetSamplers,
    generator: Option<Sampler>,
}

impl Samplers {
    /// Starts sampling `target` and this process, times from `base`.
    pub(super) fn start(target: &Target, base: Instant, every: Duration) -> Self {
        Self {
            server: TargetSamplers::start(target, base, every),
            generator: metrics::maybe_sample(Some(std::process::id()), base, every),
        }
    }

    /// Stops, and summarises the server, its services and the generator over `window_ms`.
    pub(super) async fn finish(
        self,
        window_ms: (u64, u64),
    ) -> (Option<ProcReport>, Vec<ServiceReport>, Option<ProcReport>) {
        let (server, services) = self.server.finish(window_ms.0, window_ms.1).await;
        let generator = metrics::maybe_finish(self.generator, window_ms.0, window_ms.1).await;
        (server, services, generator)
    }
}

/// What the clock saw: a tick a second, and the counters where the window began and ended.
pub(super) struct Clocked {
    pub(super) ticks: Vec<Tick>,
    /// (µs, totals) at the first clock step at or after the warmup.
    pub(super) start: Option<(u64, Totals)>,
    /// (µs, totals) when the load stopped.
    pub(super) end: (u64, Totals),
}

/// Rates over the measured window.
pub(super) struct Rates {
    pub(super) secs: f64,
    pub(super) sent: f64,
    pub(super) acked: f64,
    pub(super) delivered: f64,
}

impl Clocked {
    /// The measured window in ms (from `warmup_us` if the clock never got there).
    pub(super) fn window_ms(&self, warmup_us: u64) -> (u64, u64) {
        (
            self.start.map_or(warmup_us, |(t, _)| t) / 1000,
            self.end.0 / 1000,
        )
    }

    /// Counter differences over the measured window, per second.
    pub(super) fn rates(&self, warmup_us: u64) -> Rates {
        let (start_us, start) = self.start.unwrap_or((warmup_us, Totals::default()));
        let secs = (self.end.0.saturating_sub(start_us)) as f64 / 1e6;
        let rate = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / secs.max(1e-9);
        Rates {
            secs,
            sent: rate(start.sent, self.end.1.sent),
            acked: rate(start.acked, self.end.1.acked),
            delivered: rate(start.delivered, self.end.1.delivered),
        }
    }
}

/// Drives the clock every 250 ms until `done(now_us, totals)`: a tick a second, the start of
/// the window at `warmup_us`, the rates on `bar` (and its position when it is a timer of
/// `timer_s` seconds).
pub(super) async fn drive(
    flow: &Flow,
    bar: &ProgressBar,
    timer_s: Option<u64>,
    warmup_us: u64,
    mut done: impl FnMut(u64, &Totals) -> bool,
) -> Clocked {
    let mut ticks = Vec::new();
    let mut start = None;
    let mut clock = tokio::time::interval(Duration::from_millis(250));
    let mut last_tick_s = 0u64;
    let mut prev = flow.totals();
    loop {
        clock.tick().await;
        let now_us = flow.now_us();
        let totals = flow.totals();
        if start.is_none() && now_us >= warmup_us {
            start = Some((now_us, totals));
        }
        let whole_s = now_us / 1_000_000;
        if whole_s > last_tick_s {
            let dt = (whole_s - last_tick_s) as f64;
            if let Some(total_s) = timer_s {
                bar.set_position(whole_s.min(total_s));
            }
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
        if done(now_us, &totals) {
            break;
        }
    }
    Clocked {
        ticks,
        start,
        end: (flow.now_us(), flow.totals()),
    }
}

/// After the load: collects the senders' sinks (a sender blocked on a socket the server no
/// longer reads cannot see the stop: it is given up after 5 s), drains until every send is
/// answered and every ack delivered to its `recipients` (or `drain_timeout`), waits a short
/// grace period for late duplicates, then closes every connection.
pub(super) async fn wind_down(
    flow: &Flow,
    senders: Vec<JoinHandle<WsSink>>,
    mut sinks: Vec<WsSink>,
    readers: Vec<JoinHandle<()>>,
    recipients: u64,
    drain_timeout: Duration,
) {
    for mut sender in senders {
        match tokio::time::timeout(Duration::from_secs(5), &mut sender).await {
            Ok(Ok(sink)) => sinks.push(sink),
            _ => sender.abort(),
        }
    }
    let drain_deadline = Instant::now() + drain_timeout;
    while !flow.totals().drained(recipients) && Instant::now() <= drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    flow.stopping.store(true, Ordering::Relaxed);
    futures_util::future::join_all(sinks.into_iter().map(|mut sink| async move {
        let _ = tokio::time::timeout(Duration::from_millis(500), sink.close()).await;
    }))
    .await;
    for reader in &readers {
        reader.abort();
    }
}

/// One open-loop step of a sweep.
#[derive(Clone, Debug, Serialize)]
pub struct SweepPoint<R> {
    /// The fraction of the reference rate.
    pub fraction: f64,
    /// Offered messages per second.
    pub offered_per_sec: f64,
    /// The run.
    pub run: R,
}

/// Whether every run of a suite passed: the base runs and every sweep step.
pub(super) fn all_passed<R>(
    relay: Option<&R>,
    magpie: &R,
    sweeps: [&[SweepPoint<R>]; 2],
    passed: impl Fn(&R) -> bool,
) -> bool {
    passed(magpie)
        && relay.is_none_or(&passed)
        && sweeps.iter().flat_map(|s| s.iter()).all(|p| passed(&p.run))
}

/// A scenario that [`suite`] can run: its options, its run, and how to read both.
pub(super) trait Scenario {
    type Options: Clone;
    type Run;
    /// The name in progress notes.
    const NAME: &'static str;
    /// The load in progress notes (`100 users, closed w=10`).
    fn describe(opts: &Self::Options) -> String;
    fn mode(opts: &Self::Options) -> LoadMode;
    /// The options with an open loop of `rate` msg/s.
    fn at_rate(opts: &Self::Options, rate: f64) -> Self::Options;
    fn delivered_per_sec(run: &Self::Run) -> f64;
    /// What a closed-loop base run's sweep fractions are fractions of.
    fn closed_reference(run: &Self::Run) -> f64;
    async fn run(
        target: &Target,
        opts: &Self::Options,
        common: &Common,
        label: &str,
    ) -> anyhow::Result<Self::Run>;
}

/// What [`suite`] measured.
pub(super) struct Runs<R> {
    pub(super) relay: Option<R>,
    pub(super) magpie: R,
    pub(super) ratio_to_relay: Option<f64>,
    pub(super) sweep_magpie: Vec<SweepPoint<R>>,
    pub(super) sweep_relay: Vec<SweepPoint<R>>,
}

/// Runs the relay baseline (if given), Magpie, and the open-loop `sweep` (fractions of Magpie's
/// closed-loop reference, or of the open-loop rate), each step against the relay first.
pub(super) async fn suite<S: Scenario>(
    magpie: &Target,
    relay: Option<&Target>,
    base: &S::Options,
    sweep: &[f64],
    common: &Common,
) -> anyhow::Result<Runs<S::Run>> {
    let name = S::NAME;
    let relay_run = match relay {
        Some(relay) => {
            common
                .progress
                .note(format!("{name}: relay baseline, {}", S::describe(base)));
            Some(S::run(relay, base, common, "relay").await?)
        }
        None => None,
    };
    common
        .progress
        .note(format!("{name}: magpie, {}", S::describe(base)));
    let magpie_run = S::run(magpie, base, common, "magpie").await?;
    let ratio_to_relay = relay_run
        .as_ref()
        .map(|r| S::delivered_per_sec(&magpie_run) / S::delivered_per_sec(r).max(1e-9));
    let reference = match S::mode(base) {
        LoadMode::Closed { .. } => S::closed_reference(&magpie_run),
        LoadMode::Open { rate } => rate,
    };
    let mut sweep_magpie = Vec::new();
    let mut sweep_relay = Vec::new();
    for (step, &fraction) in sweep.iter().enumerate() {
        let offered = (reference * fraction).max(1.0);
        let step_opts = S::at_rate(base, offered);
        if let Some(relay) = relay {
            common.progress.note(format!(
                "{name} sweep: relay at {offered:.0} msg/s ({:.0}% of magpie max)",
                fraction * 100.0
            ));
            let run = S::run(relay, &step_opts, common, &format!("rs{step}")).await?;
            sweep_relay.push(SweepPoint {
                fraction,
                offered_per_sec: offered,
                run,
            });
        }
        common.progress.note(format!(
            "{name} sweep: magpie at {offered:.0} msg/s ({:.0}% of max)",
            fraction * 100.0
        ));
        let run = S::run(magpie, &step_opts, common, &format!("ms{step}")).await?;
        sweep_magpie.push(SweepPoint {
            fraction,
            offered_per_sec: offered,
            run,
        });
    }
    Ok(Runs {
        relay: relay_run,
        magpie: magpie_run,
        ratio_to_relay,
        sweep_magpie,
        sweep_relay,
    })
}
