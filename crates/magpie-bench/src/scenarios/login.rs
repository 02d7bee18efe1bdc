//! `login`: a login storm. N devices connect, log in and finish a sync, `concurrency` at a
//! time; the figure is logins per second including sync, and the time until all are synced.
//!
//! Before the storm every user is given `convs` conversations with `msgs` messages each
//! (seeders named `…-s<j>` send to every user through the protocol), so a sync has something
//! to return. A device's sync is what PROTOCOL.md §7 asks of a fresh device: `sync` pages from
//! version 0 until `has_more` is false, then — unless `pull_messages` is off — every
//! conversation's messages pulled forward with `get_messages` (200 per page).
//!
//! Correctness: every device must log in, see exactly `convs` conversations each with
//! `last_seq == msgs`, and (when pulling) receive exactly `convs × msgs` messages in ascending
//! seq order per conversation. Devices stay connected until the whole storm is over.
//!
//! Against a cluster device `i` connects to node `i % N` (and seeder `j` to node `j % N`), so
//! a user's devices and its seeders sit on different nodes.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use magpie_proto::frame::{Direction, GetMessagesRequest, SyncRequest};
use magpie_proto::{Request, Response};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::client::Conn;
use crate::metrics::{self, Percentiles, ProcReport, ServiceReport, SharedHistogram};
use crate::scenarios::seed::{self, SeedJob, SeedReport};
use crate::scenarios::{ClusterLayout, Common, TargetSamplers, padding, platform_for};
use crate::target::Target;

/// Options of the login storm.
#[derive(Clone, Debug)]
pub struct LoginOptions {
    /// Devices that log in.
    pub devices: usize,
    /// Devices connecting / syncing at once.
    pub concurrency: usize,
    /// Devices per user, 1 to 4.
    pub devices_per_user: usize,
    /// Conversations per user seeded before the storm.
    pub convs: usize,
    /// Messages per conversation seeded before the storm.
    pub msgs: u64,
    /// Pull every conversation's messages after `sync`.
    pub pull_messages: bool,
    /// Size of a seeded message's text.
    pub size: usize,
}

impl Default for LoginOptions {
    fn default() -> Self {
        Self {
            devices: 5_000,
            concurrency: 500,
            devices_per_user: 1,
            convs: 1,
            msgs: 1,
            pull_messages: true,
            size: 100,
        }
    }
}

/// The result of a login storm.
#[derive(Clone, Debug, Serialize)]
pub struct LoginReport {
    /// Devices asked for.
    pub devices: usize,
    /// Users they belong to.
    pub users: usize,
    /// Seeding before the storm.
    pub seed: Option<SeedReport>,
    /// Devices that logged in and synced correctly.
    pub synced_ok: u64,
    /// Devices that failed (connect, login or sync error).
    pub failed: u64,
    /// Devices whose sync returned something else than expected.
    pub wrong_sync: u64,
    /// The first failure, if any.
    pub first_failure: Option<String>,
    /// Seconds from the start until the last login was answered.
    pub time_to_all_logged_in_s: f64,
    /// Seconds from the start until the last device finished its sync.
    pub time_to_all_synced_s: f64,
    /// Logins per second (devices / time to all logged in).
    pub logins_per_sec: f64,
    /// Logins per second including sync (devices / time to all synced).
    pub synced_logins_per_sec: f64,
    /// Connect start → login answer, per device, µs.
    pub login_latency: Percentiles,
    /// Connect start → sync finished, per device, µs.
    pub synced_latency: Percentiles,
    /// Conversations returned by sync, all devices.
    pub conversations_synced: u64,
    /// Messages pulled, all devices.
    pub messages_synced: u64,
    /// Connections the kernel dropped because the server's listen queue was full (system-wide
    /// `ListenOverflows` delta; each costs a ~1 s SYN retry).
    pub listen_overflows: Option<u64>,
    /// The server during the storm.
    pub server: Option<ProcReport>,
    /// The generator during the storm.
    pub generator: Option<ProcReport>,
    /// How the devices were spread over a cluster's nodes (absent for one server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterLayout>,
    /// A spawned cluster's backing services (PostgreSQL, NATS) during the storm.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceReport>,
}

impl LoginReport {
    /// Every device logged in and synced what it should have.
    pub fn passed(&self) -> bool {
        self.failed == 0 && self.wrong_sync == 0 && self.synced_ok == self.devices as u64
    }
}

struct DeviceResult {
    login_us: u64,
    synced_us: u64,
    conversations: u64,
    messages: u64,
    correct: bool,
}

/// Runs the login storm.
pub async fn run(
    target: &Target,
    opts: &LoginOptions,
    common: &Common,
) -> anyhow::Result<LoginReport> {
    if !(1..=4).contains(&opts.devices_per_user) {
        bail!("devices per user must be 1 to 4 (one per platform class)");
    }
    let dpu = opts.devices_per_user;
    let user_count = opts.devices.div_ceil(dpu);
    let names: Vec<String> = (0..user_count)
        .map(|u| format!("login-{}-{u}", common.run_id))
        .collect();
    let seeders: Vec<String> = if opts.msgs > 0 {
        (0..opts.convs)
            .map(|j| format!("login-{}-s{j}", common.run_id))
            .collect()
    } else {
        Vec::new()
    };
    let all: Vec<String> = names.iter().chain(&seeders).cloned().collect();
    common.progress.note(format!(
        "login: creating {} users and {} seeders",
        names.len(),
        seeders.len()
    ));
    let admin = target.admin()?;
    let mut tokens = admin
        .users_with_tokens(&all, common.rest_concurrency, &common.progress)
        .await?;
    let seeder_tokens = tokens.split_off(names.len());

    let seed = if seeders.is_empty() {
        None
    } else {
        let jobs: Vec<SeedJob> = seeders
            .iter()
            .zip(seeder_tokens)
            .map(|(sender, token)| SeedJob {
                sender: sender.clone(),
                token,
                recipients: names.iter().map(|n| (n.clone(), opts.msgs)).collect(),
            })
            .collect();
        common.progress.note(format!(
            "login: seeding {} conversations x {} messages for each of {} users",
            opts.convs, opts.msgs, user_count
        ));
        let text = padding(opts.size);
        Some(seed::seed(target, common, jobs, 64, 64, &text).await?)
    };
    let expected_convs = seeders.len() as u64;

    common.progress.note(format!(
        "login: {} devices, {} at a time",
        opts.devices, opts.concurrency
    ));
    let names = Arc::new(names);
    let tokens = Arc::new(tokens);
    let login_hist = SharedHistogram::new(8);
    let synced_hist = SharedHistogram::new(8);
    let held: Mutex<Vec<Conn>> = Mutex::new(Vec::with_capacity(opts.devices));
    let base = Instant::now();
    let server_sampler = TargetSamplers::start(target, base, common.sample_every);
    let self_sampler = metrics::maybe_sample(Some(std::process::id()), base, common.sample_every);
    let bar = common.progress.bar(opts.devices as u64, "logins");
    let overflows_before = metrics::read_listen_overflows();
    let results: Vec<(usize, anyhow::Result<DeviceResult>)> =
        futures_util::stream::iter(0..opts.devices)
            .map(|i| {
                let (names, tokens) = (Arc::clone(&names), Arc::clone(&tokens));
                let (bar, held, login_hist, synced_hist) = (&bar, &held, &login_hist, &synced_hist);
                async move {
                    let user = i / dpu;
                    let started = base.elapsed().as_micros() as u64;
                    let result = device(
                        target,
                        common,
                        i,
                        &names[user],
                        &tokens[user],
                        platform_for(i % dpu),
                        opts,
                        expected_convs,
                        base,
                    )
                    .await;
                    bar.inc(1);
                    let result = result.map(|(conn, r)| {
                        login_hist.record(i, r.login_us.saturating_sub(started));
                        synced_hist.record(i, r.synced_us.saturating_sub(started));
                        (conn, r)
                    });
                    match result {
                        Ok((conn, r)) => {
                            held.lock().await.push(conn);
                            (i, Ok(r))
                        }
                        Err(e) => (i, Err(e)),
                    }
                }
            })
            .buffer_unordered(opts.concurrency.max(1))
            .collect()
            .await;
    let storm_ms = base.elapsed().as_millis() as u64;
    let listen_overflows = match (overflows_before, metrics::read_listen_overflows()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    bar.finish_and_clear();
    let (server, services) = server_sampler.finish(0, storm_ms).await;
    let generator = metrics::maybe_finish(self_sampler, 0, storm_ms).await;

    let (mut synced_ok, mut failed, mut wrong_sync) = (0u64, 0u64, 0u64);
    let (mut last_login, mut last_synced, mut convs, mut msgs) = (0u64, 0u64, 0u64, 0u64);
    let mut first_failure = None;
    for (i, result) in results {
        match result {
            Ok(r) => {
                last_login = last_login.max(r.login_us);
                last_synced = last_synced.max(r.synced_us);
                convs += r.conversations;
                msgs += r.messages;
                if r.correct {
                    synced_ok += 1;
                } else {
                    wrong_sync += 1;
                    first_failure.get_or_insert_with(|| {
                        format!(
                            "device {i}: synced {} conversations / {} messages, expected {expected_convs} / {}",
                            r.conversations,
                            r.messages,
                            expected_convs * opts.msgs
                        )
                    });
                }
            }
            Err(e) => {
                failed += 1;
                first_failure.get_or_insert_with(|| format!("device {i}: {e:#}"));
            }
        }
    }

    // Let everyone go.
    let conns = std::mem::take(&mut *held.lock().await);
    futures_util::stream::iter(conns)
        .for_each_concurrent(1000, |c| c.close())
        .await;

    let secs = |us: u64| us as f64 / 1e6;
    Ok(LoginReport {
        devices: opts.devices,
        users: user_count,
        seed,
        synced_ok,
        failed,
        wrong_sync,
        first_failure,
        time_to_all_logged_in_s: secs(last_login),
        time_to_all_synced_s: secs(last_synced),
        logins_per_sec: opts.devices as f64 / secs(last_login).max(1e-9),
        synced_logins_per_sec: opts.devices as f64 / secs(last_synced).max(1e-9),
        login_latency: Percentiles::of(&login_hist.merged()),
        synced_latency: Percentiles::of(&synced_hist.merged()),
        conversations_synced: convs,
        messages_synced: msgs,
        listen_overflows,
        server,
        generator,
        cluster: ClusterLayout::of(target, (0..opts.devices).map(|i| i % target.node_count())),
        services,
    })
}

/// One device: connect, log in, sync, pull. Returns the open connection and its timings (µs
/// since `base`).
#[allow(clippy::too_many_arguments)]
async fn device(
    target: &Target,
    common: &Common,
    i: usize,
    user: &str,
    token: &str,
    platform: magpie_proto::Platform,
    opts: &LoginOptions,
    expected_convs: u64,
    base: Instant,
) -> anyhow::Result<(Conn, DeviceResult)> {
    let mut conn = Conn::open(target.endpoint(i), common.codec, common.sources.pick(i)).await?;
    conn.login(user, token, &format!("login-{i}"), platform)
        .await
        .context("login")?;
    let login_us = base.elapsed().as_micros() as u64;
    // Both cursors, as a device keeps them: its own changes and its groups' activity.
    let (mut since, mut groups_since) = (0, 0);
    let mut conversations = Vec::new();
    loop {
        let request = Request::Sync(SyncRequest {
            since,
            groups_since,
            limit: Some(100),
        });
        let Response::Sync(page) = conn.request(request).await.context("sync")? else {
            return Err(anyhow!("unexpected answer to sync"));
        };
        conversations.extend(page.conversations);
        since = page.version;
        groups_since = page.groups_version;
        if !page.has_more {
            break;
        }
    }
    let mut correct = conversations.len() as u64 == expected_convs
        && conversations.iter().all(|c| c.last_seq == opts.msgs);
    let mut messages = 0u64;
    if opts.pull_messages {
        for conversation in &conversations {
            let mut cursor = 0u64;
            loop {
                let request = Request::GetMessages(GetMessagesRequest {
                    conversation_id: conversation.conversation_id.clone(),
                    direction: Direction::Forward,
                    seq: Some(cursor),
                    time: None,
                    limit: Some(100),
                });
                let Response::GetMessages(page) =
                    conn.request(request).await.context("get_messages")?
                else {
                    return Err(anyhow!("unexpected answer to get_messages"));
                };
                for message in &page.messages {
                    if message.seq != cursor + 1 {
                        correct = false;
                    }
                    cursor = message.seq;
                }
                messages += page.messages.len() as u64;
                if !page.has_more || page.messages.is_empty() {
                    break;
                }
            }
        }
        correct &= messages == expected_convs * opts.msgs;
    }
    let synced_us = base.elapsed().as_micros() as u64;
    Ok((
        conn,
        DeviceResult {
            login_us,
            synced_us,
            conversations: conversations.len() as u64,
            messages,
            correct,
        },
    ))
}
