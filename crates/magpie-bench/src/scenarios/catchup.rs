//! `catchup`: a user with C conversations and K new messages in each logs in on a fresh
//! device; how long until it is fully synced?
//!
//! "Fully synced" is the SDK's notion, so this scenario uses the real SDK: a `Client` with a
//! new data directory logs in, and the clock stops at `ClientEvent::SyncFinished`. The C × K
//! messages are seeded first through the protocol by C seeder users, each pipelining its K
//! messages to the target user (see [`seed`](crate::scenarios::seed)).
//!
//! Correctness: the SDK must emit exactly C × K `MessageReceived` events during the sync,
//! and its local cache must then hold C conversations, each with `last_seq == K` and K
//! messages.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use magpie_sdk::{Client, ClientConfig, ClientEvent, UserId};
use serde::Serialize;

use crate::scenarios::seed::{self, SeedJob, SeedReport};
use crate::scenarios::{Common, padding};
use crate::target::Target;

/// How long one fresh device may take to sync before the run fails.
const SYNC_TIMEOUT: Duration = Duration::from_secs(300);

/// Options of the catch-up scenario.
#[derive(Clone, Debug)]
pub struct CatchupOptions {
    /// Conversations with new messages.
    pub convs: usize,
    /// New messages per conversation.
    pub msgs: u64,
    /// Fresh devices to time, one after another.
    pub repeat: usize,
    /// Seeders sending at once.
    pub seed_concurrency: usize,
    /// Sends in flight per seeder.
    pub seed_window: usize,
    /// Size of a message's text.
    pub size: usize,
}

impl Default for CatchupOptions {
    fn default() -> Self {
        Self {
            convs: 1_000,
            msgs: 100,
            repeat: 1,
            seed_concurrency: 64,
            seed_window: 64,
            size: 100,
        }
    }
}

/// One fresh device's sync.
#[derive(Clone, Debug, Serialize)]
pub struct CatchupDevice {
    /// `login()` call → it returned.
    pub login_s: f64,
    /// `login()` call → `SyncFinished`.
    pub synced_s: f64,
    /// `MessageReceived` events before `SyncFinished`.
    pub messages_received: u64,
    /// Conversations in the local cache afterwards.
    pub conversations_cached: u64,
    /// Messages in the local cache afterwards.
    pub messages_cached: u64,
    /// Everything as expected.
    pub correct: bool,
}

/// The result of the catch-up scenario.
#[derive(Clone, Debug, Serialize)]
pub struct CatchupReport {
    /// Conversations.
    pub convs: usize,
    /// Messages per conversation.
    pub msgs: u64,
    /// Seeding.
    pub seed: SeedReport,
    /// Each fresh device, in order.
    pub devices: Vec<CatchupDevice>,
    /// Fastest `synced_s`.
    pub best_synced_s: f64,
    /// Median `synced_s`.
    pub median_synced_s: f64,
    /// Messages per second at the median.
    pub messages_per_sec: f64,
}

impl CatchupReport {
    /// Every device synced exactly what was seeded.
    pub fn passed(&self) -> bool {
        !self.devices.is_empty() && self.devices.iter().all(|d| d.correct)
    }
}

/// Runs the catch-up scenario.
pub async fn run(
    target: &Target,
    opts: &CatchupOptions,
    common: &Common,
) -> anyhow::Result<CatchupReport> {
    if opts.convs == 0 || opts.msgs == 0 {
        bail!("catchup needs at least one conversation and one message");
    }
    let user = format!("catchup-{}-u", common.run_id);
    let seeders: Vec<String> = (0..opts.convs)
        .map(|j| format!("catchup-{}-s{j}", common.run_id))
        .collect();
    let mut ids = vec![user.clone()];
    ids.extend(seeders.iter().cloned());
    common
        .progress
        .note(format!("catchup: creating {} users", ids.len()));
    let mut tokens = target
        .admin()?
        .users_with_tokens(&ids, common.rest_concurrency, &common.progress)
        .await?;
    let seeder_tokens = tokens.split_off(1);
    let token = tokens
        .pop()
        .ok_or_else(|| anyhow!("no token for the catch-up user"))?;

    common.progress.note(format!(
        "catchup: seeding {} conversations x {} messages",
        opts.convs, opts.msgs
    ));
    let jobs: Vec<SeedJob> = seeders
        .into_iter()
        .zip(seeder_tokens)
        .map(|(sender, token)| SeedJob {
            sender,
            token,
            recipients: vec![(user.clone(), opts.msgs)],
        })
        .collect();
    let text = padding(opts.size);
    let seed = seed::seed(
        target,
        common,
        jobs,
        opts.seed_concurrency,
        opts.seed_window,
        &text,
    )
    .await?;
    common.progress.note(format!(
        "catchup: seeded {} messages in {:.1} s ({:.0}/s)",
        seed.messages, seed.seconds, seed.per_sec
    ));

    let mut devices = Vec::new();
    for attempt in 0..opts.repeat.max(1) {
        common.progress.note(format!(
            "catchup: fresh device {} of {}",
            attempt + 1,
            opts.repeat.max(1)
        ));
        devices.push(fresh_device(target, common, opts, &user, &token).await?);
    }
    let mut times: Vec<f64> = devices.iter().map(|d| d.synced_s).collect();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok(CatchupReport {
        convs: opts.convs,
        msgs: opts.msgs,
        seed,
        best_synced_s: times[0],
        median_synced_s: median,
        messages_per_sec: (opts.convs as u64 * opts.msgs) as f64 / median.max(1e-9),
        devices,
    })
}

async fn fresh_device(
    target: &Target,
    common: &Common,
    opts: &CatchupOptions,
    user: &str,
    token: &str,
) -> anyhow::Result<CatchupDevice> {
    let dir = tempfile::Builder::new()
        .prefix("magpie-bench-device-")
        .tempdir()
        .context("device data directory")?;
    let config = ClientConfig::builder(target.ws.url(), dir.path())
        .codec(common.codec)
        .build()
        .map_err(|e| anyhow!("SDK config: {e}"))?;
    let client = Client::new(config).map_err(|e| anyhow!("SDK client: {e}"))?;
    let mut events = client.events();
    let user_id = UserId::new(user).map_err(|e| anyhow!("user id: {e}"))?;
    let expected = opts.convs as u64 * opts.msgs;
    let bar = common.progress.bar(expected, "catch-up");

    let started = Instant::now();
    client
        .login(user_id, token)
        .await
        .map_err(|e| anyhow!("SDK login: {e}"))?;
    let login_s = started.elapsed().as_secs_f64();
    let mut received = 0u64;
    let synced_s = tokio::time::timeout(SYNC_TIMEOUT, async {
        while let Some(event) = events.recv().await {
            match event {
                ClientEvent::MessageReceived(_) => {
                    received += 1;
                    if received.is_multiple_of(1000) {
                        bar.set_position(received);
                    }
                }
                ClientEvent::SyncFinished => return Ok(started.elapsed().as_secs_f64()),
                ClientEvent::Kicked { message, .. } => bail!("kicked during sync: {message}"),
                ClientEvent::LoginFailed { error } => bail!("login failed during sync: {error}"),
                _ => {}
            }
        }
        bail!("the SDK stopped emitting events before SyncFinished")
    })
    .await
    .map_err(|_| anyhow!("not synced within {SYNC_TIMEOUT:?}"))??;
    bar.finish_and_clear();

    // Check the cache.
    let chat = client.chat();
    let conversations = chat
        .conversations()
        .await
        .map_err(|e| anyhow!("reading the cache: {e}"))?;
    let mut cached_messages = 0u64;
    let mut rows_ok = conversations.len() == opts.convs;
    for conversation in &conversations {
        rows_ok &= conversation.last_seq == opts.msgs;
        let mut before = None;
        loop {
            let page = chat
                .load_messages(&conversation.conversation_id, before, 500)
                .await
                .map_err(|e| anyhow!("reading the cache: {e}"))?;
            cached_messages += page.messages.len() as u64;
            let oldest = page.messages.first().and_then(|m| m.seq);
            if !page.has_more || oldest.is_none() {
                break;
            }
            before = oldest;
        }
    }
    let _ = client.logout().await;
    drop(client);
    Ok(CatchupDevice {
        login_s,
        synced_s,
        messages_received: received,
        conversations_cached: conversations.len() as u64,
        messages_cached: cached_messages,
        correct: rows_ok && received == expected && cached_messages == expected,
    })
}
