//! Seeding history through the real protocol: many raw clients, each sending a pipeline of
//! messages and matching answers by id.
//!
//! A seeder logs in once and keeps `window` sends in flight. Answers may arrive in any order;
//! `rate_limited` answers are retried (same `client_msg_id`) after the hinted delay, so a
//! server with limits in force is seeded slowly but correctly. Any other error fails the seed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use magpie_proto::{ErrorCode, Platform};
use serde::Serialize;

use crate::client::{BenchTag, Conn, FastFrame, FrameKind, SendFrame, encode, payload};
use crate::scenarios::Common;
use crate::target::Target;

/// What one seeder sends: `count` messages to each recipient, in order.
#[derive(Clone, Debug)]
pub struct SeedJob {
    /// The sending user.
    pub sender: String,
    /// Its token.
    pub token: String,
    /// Recipients and how many messages each gets.
    pub recipients: Vec<(String, u64)>,
}

/// How seeding went.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SeedReport {
    /// Messages stored.
    pub messages: u64,
    /// Seeders used.
    pub senders: usize,
    /// Wall time.
    pub seconds: f64,
    /// Messages per second.
    pub per_sec: f64,
    /// Sends answered `rate_limited` and retried.
    pub rate_limited_retries: u64,
}

/// Runs the jobs, `concurrency` seeders at a time, each with `window` sends in flight.
pub async fn seed(
    target: &Target,
    common: &Common,
    jobs: Vec<SeedJob>,
    concurrency: usize,
    window: usize,
    text: &str,
) -> anyhow::Result<SeedReport> {
    let total: u64 = jobs
        .iter()
        .flat_map(|j| j.recipients.iter().map(|(_, n)| *n))
        .sum();
    let senders = jobs.len();
    let bar = common.progress.bar(total, "seeding");
    let started = Instant::now();
    let results: Vec<anyhow::Result<u64>> =
        futures_util::stream::iter(jobs.into_iter().enumerate())
            .map(|(j, job)| {
                let bar = bar.clone();
                async move { run_job(target, j, common, &job, window.max(1), text, &bar).await }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    bar.finish_and_clear();
    let mut retries = 0;
    for result in results {
        retries += result?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(SeedReport {
        messages: total,
        senders,
        seconds,
        per_sec: total as f64 / seconds.max(1e-9),
        rate_limited_retries: retries,
    })
}

/// One seeder (the `j`-th: on node `j % N` of a cluster); returns how many sends were
/// retried after `rate_limited`.
async fn run_job(
    target: &Target,
    j: usize,
    common: &Common,
    job: &SeedJob,
    window: usize,
    text: &str,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<u64> {
    let codec = common.codec;
    let mut conn = Conn::open(target.endpoint(j), codec, None)
        .await
        .with_context(|| format!("seeder {}", job.sender))?;
    conn.login(&job.sender, &job.token, "seeder", Platform::Linux)
        .await
        .with_context(|| format!("seeder {} login", job.sender))?;
    let first_id = conn.next_id();
    let plan: Vec<&str> = job
        .recipients
        .iter()
        .flat_map(|(to, n)| std::iter::repeat_n(to.as_str(), *n as usize))
        .collect();
    let total = plan.len();
    let (mut sink, mut stream) = conn.split();
    let (mut next, mut in_flight, mut done, mut retries) = (0usize, 0usize, 0usize, 0u64);
    let mut retry: VecDeque<usize> = VecDeque::new();
    while done < total {
        let mut fed = false;
        while in_flight < window && (!retry.is_empty() || next < total) {
            let n = match retry.pop_front() {
                Some(n) => n,
                None => {
                    next += 1;
                    next - 1
                }
            };
            let client_msg_id = format!("seed-{n}");
            let tag = BenchTag {
                s: 0,
                k: n as u64,
                t: 0,
            };
            let frame = SendFrame::text(first_id + n as u64, plan[n], &client_msg_id, text, tag);
            sink.feed(encode(codec, &frame)?)
                .await
                .context("seed send")?;
            in_flight += 1;
            fed = true;
        }
        if fed {
            sink.flush().await.context("seed flush")?;
        }
        let message = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .map_err(|_| anyhow!("seeder {}: no answer within 60 s", job.sender))?
            .ok_or_else(|| anyhow!("seeder {}: connection closed", job.sender))?
            .map_err(|e| anyhow!("seeder {}: {e}", job.sender))?;
        let Some(bytes) = payload(&message) else {
            continue;
        };
        let frame = FastFrame::decode(codec, bytes)?;
        let Some(n) = frame
            .id
            .and_then(|id| id.checked_sub(first_id))
            .map(|n| n as usize)
            .filter(|n| *n < total)
        else {
            continue;
        };
        match frame.kind {
            FrameKind::Response => {
                in_flight -= 1;
                done += 1;
                bar.inc(1);
            }
            FrameKind::Error => {
                in_flight -= 1;
                let error = frame.error.as_ref();
                if error.map(|e| e.code) == Some(ErrorCode::RateLimited.as_u16()) {
                    retries += 1;
                    let wait = error.and_then(|e| e.retry_after_ms).unwrap_or(100);
                    tokio::time::sleep(Duration::from_millis(wait.clamp(1, 5_000))).await;
                    retry.push_back(n);
                } else {
                    bail!(
                        "seeder {}: send {n} to {} failed with code {:?}",
                        job.sender,
                        plan[n],
                        error.map(|e| e.code)
                    );
                }
            }
            FrameKind::Event => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
    Ok(retries)
}
