//! Measures raw append throughput of the SQLite store, without the server around it.
//!
//! `cargo run --release -p magpie-store --example append_throughput -- [messages] [conversations] [submitters] [full|normal]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use magpie_proto::message::Peer;
use magpie_proto::{ConversationId, Message, MessageContent, MessageId, UserId};
use magpie_store::sqlite::{Durability, SqliteOptions, SqliteStore};
use magpie_store::{CommitObserver, NewMessage, NewUser, Store};

#[derive(Default)]
struct Commits {
    count: AtomicU64,
    writes: AtomicU64,
    micros: AtomicU64,
}

impl CommitObserver for Commits {
    fn on_commit(&self, batch: usize, elapsed: std::time::Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(batch as u64, Ordering::Relaxed);
        self.micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let messages: usize = args.get(1).map_or(Ok(100_000), |s| s.parse())?;
    let conversations: usize = args.get(2).map_or(Ok(1_000), |s| s.parse())?;
    let submitters: usize = args.get(3).map_or(Ok(256), |s| s.parse())?;
    let durability = match args.get(4).map(String::as_str) {
        Some("normal") => Durability::Normal,
        _ => Durability::Full,
    };
    let dir = tempfile::tempdir()?;
    let commits = Arc::new(Commits::default());
    let store = Arc::new(SqliteStore::open(
        &dir.path().join("bench.db"),
        SqliteOptions {
            durability,
            observer: commits.clone(),
            ..SqliteOptions::default()
        },
    )?);
    let users: Vec<UserId> = (0..conversations * 2)
        .map(|i| UserId::new(format!("u{i}")))
        .collect::<Result<_, _>>()?;
    for user in &users {
        store
            .create_user(NewUser {
                id: user.clone(),
                nickname: None,
                avatar_url: None,
                ext: None,
                now: 1,
            })
            .await?;
    }
    let text = "x".repeat(100);
    let started = Instant::now();
    let per_submitter = messages / submitters;
    let mut tasks = Vec::new();
    for s in 0..submitters {
        let (store, users, text) = (store.clone(), users.clone(), text.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_submitter {
                let n = s * per_submitter + i;
                let c = n % conversations;
                let (from, to) = (users[2 * c].clone(), users[2 * c + 1].clone());
                let message = Message {
                    id: MessageId(n as u64 + 1),
                    conversation_id: ConversationId::c2c(&from, &to),
                    seq: 0,
                    from: from.clone(),
                    to: Peer::User(to.clone()),
                    client_msg_id: format!("m{n}"),
                    content: MessageContent::text(text.clone()),
                    ext: None,
                    mentions: None,
                    server_time: 1_763_800_000_000 + n as i64,
                };
                store
                    .append_message(
                        NewMessage {
                            message,
                            participants: vec![from, to],
                            mentioned: Vec::new(),
                        },
                        None,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let done = per_submitter * submitters;
    println!(
        "{done} appends in {:.2} s: {:.0} msg/s ({durability:?}, {conversations} conversations, {submitters} submitters)",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64()
    );
    let (count, writes, micros) = (
        commits.count.load(Ordering::Relaxed),
        commits.writes.load(Ordering::Relaxed),
        commits.micros.load(Ordering::Relaxed),
    );
    println!(
        "{count} commits, {:.1} writes per commit, {:.0} us per commit",
        writes as f64 / count.max(1) as f64,
        micros as f64 / count.max(1) as f64
    );
    store.close().await?;
    Ok(())
}
