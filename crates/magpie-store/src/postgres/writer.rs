//! Writer tasks and group commit.
//!
//! A `PgStore` runs a few writer tasks, each with its own connection. Appends (and read-state
//! changes, which must see the appends queued before them) are routed to a writer by a hash of
//! their conversation and queued **when called**, so one conversation's writes are applied in
//! call order on this node. A writer takes whatever queued up while it was busy and applies
//! it in one transaction:
//!
//! 1. conversation rows that may not exist yet are created first, in a statement of their own
//!    (idempotent, and not holding any lock afterwards);
//! 2. the batch locks its conversation rows, then its users' rows, each sorted by id — the one
//!    global lock order every transaction on every node follows, so batches never deadlock;
//! 3. only then it looks for earlier copies of its messages (dedupe): under READ COMMITTED a
//!    statement sees everything committed before it started, and every earlier writer of
//!    these conversations has committed once we hold their locks, on whatever node it ran;
//! 4. each new message takes its conversation's `last_seq + 1`, each participant their next
//!    change version; messages, counters and conversation rows are written with one
//!    multi-row statement each, pipelined, and the transaction commits.
//!
//! Only after the commit are the `OnCommit` hooks run, in queue order, and the callers
//! answered. A refused append (unknown user) or a duplicate takes no seq; an unexpected
//! failure rolls the batch back and fails all of it. A failed or timed-out connection is
//! dropped and the next batch opens a fresh one: the writer recovers by itself.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use magpie_proto::{ConversationId, ConversationKind, Message, Millis, UserId};
use tokio::sync::{mpsc, oneshot};

use super::conn::{Connector, PgConn};
use super::error::{closed, timed_out};
use super::reader::{self, sql};
use super::rows::{self, MESSAGE_COLUMNS};
use super::users::user_not_found;
use crate::{
    Appended, CommitObserver, NewMessage, OnCommit, ReadOutcome, StoreError, StoreErrorKind,
    StoreResult,
};

type Reply<T> = oneshot::Sender<StoreResult<T>>;

/// A message with its JSON columns encoded by the calling task.
pub(super) struct EncodedMessage {
    pub(super) new: NewMessage,
    pub(super) content: String,
    pub(super) ext: Option<String>,
    pub(super) mentions: Option<String>,
}

/// A write for a writer, with where to send its result.
pub(super) enum WriteOp {
    Append(Box<EncodedMessage>, Option<OnCommit>, Reply<Appended>),
    MarkRead {
        user: UserId,
        conversation: ConversationId,
        seq: u64,
        now: Millis,
        reply: Reply<ReadOutcome>,
    },
    /// Everything queued before it is applied by then; stop.
    Close(Reply<()>),
}

/// How many writes may wait for one writer before appends are refused as `Unavailable`.
const QUEUE_DEPTH: usize = 16 * 1024;
/// Conversations a writer remembers as existing before it starts over.
const KNOWN_LIMIT: usize = 100_000;

/// What every writer task shares.
pub(super) struct WriterConfig {
    pub(super) connector: Arc<Connector>,
    pub(super) max_batch: usize,
    pub(super) observer: Arc<dyn CommitObserver>,
    pub(super) timeout: Duration,
}

/// Handles to the writer tasks.
#[derive(Debug)]
pub(super) struct Writers {
    queues: Vec<mpsc::Sender<WriteOp>>,
}

impl Writers {
    /// Spawns `count` writer tasks on the current runtime. Each opens its connection when
    /// its first write arrives.
    pub(super) fn spawn(count: usize, config: WriterConfig) -> Self {
        let config = Arc::new(config);
        let queues = (0..count.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
                let writer = Writer {
                    rx,
                    config: config.clone(),
                    conn: None,
                    known: HashSet::new(),
                };
                tokio::spawn(writer.run());
                tx
            })
            .collect();
        Self { queues }
    }

    /// The queue of the writer that owns `conversation` on this node.
    fn route(&self, conversation: &ConversationId) -> &mpsc::Sender<WriteOp> {
        let mut hasher = std::hash::DefaultHasher::new();
        conversation.as_str().hash(&mut hasher);
        &self.queues[(hasher.finish() % self.queues.len() as u64) as usize]
    }

    /// Queues a write now, without waiting for room; [`answer`] waits for its result.
    pub(super) fn queue<T: Send + 'static>(
        &self,
        conversation: &ConversationId,
        make: impl FnOnce(Reply<T>) -> WriteOp,
    ) -> StoreResult<oneshot::Receiver<StoreResult<T>>> {
        let (reply, result) = oneshot::channel();
        self.route(conversation)
            .try_send(make(reply))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::new(
                    StoreErrorKind::Unavailable,
                    "the store's write queue is full; retry shortly",
                ),
                mpsc::error::TrySendError::Closed(_) => closed(),
            })?;
        Ok(result)
    }

    /// Asks every writer to finish what is queued and stop; waits for them.
    pub(super) async fn close(&self) -> StoreResult<()> {
        let mut waiting = Vec::with_capacity(self.queues.len());
        for queue in &self.queues {
            let (reply, result) = oneshot::channel();
            if queue.send(WriteOp::Close(reply)).await.is_ok() {
                waiting.push(result);
            }
        }
        for result in waiting {
            // A writer that is already gone has nothing left to finish.
            if let Ok(outcome) = result.await {
                outcome?;
            }
        }
        Ok(())
    }
}

/// The result of a queued write.
pub(super) async fn answer<T>(queued: oneshot::Receiver<StoreResult<T>>) -> StoreResult<T> {
    queued.await.map_err(|_| closed())?
}

fn copy(e: &StoreError) -> StoreError {
    StoreError::new(e.kind(), e.message())
}

fn fail(op: WriteOp, error: &StoreError) {
    match op {
        WriteOp::Append(_, _, reply) => drop(reply.send(Err(copy(error)))),
        WriteOp::MarkRead { reply, .. } => drop(reply.send(Err(copy(error)))),
        WriteOp::Close(reply) => drop(reply.send(Err(copy(error)))),
    }
}

/// One writer task.
struct Writer {
    rx: mpsc::Receiver<WriteOp>,
    config: Arc<WriterConfig>,
    conn: Option<PgConn>,
    /// Conversations whose row is known to exist (rows are never deleted).
    known: HashSet<String>,
}

/// Where an append's caller waits, and its hook.
type Waiter = (Option<OnCommit>, Reply<Appended>);

impl Writer {
    async fn run(mut self) {
        let mut carried = None;
        loop {
            let op = match carried.take() {
                Some(op) => op,
                None => match self.rx.recv().await {
                    Some(op) => op,
                    None => return,
                },
            };
            match op {
                WriteOp::Append(message, hook, reply) => {
                    let mut messages = vec![*message];
                    let mut waiters: Vec<Waiter> = vec![(hook, reply)];
                    // Everything that queued up meanwhile, up to the next non-append (which
                    // must see this batch committed) or the batch limit.
                    while messages.len() < self.config.max_batch {
                        match self.rx.try_recv() {
                            Ok(WriteOp::Append(message, hook, reply)) => {
                                messages.push(*message);
                                waiters.push((hook, reply));
                            }
                            Ok(other) => {
                                carried = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit_appends(messages, waiters).await;
                }
                WriteOp::MarkRead {
                    user,
                    conversation,
                    seq,
                    now,
                    reply,
                } => {
                    let timeout = self.config.timeout;
                    let result = tokio::time::timeout(timeout, async {
                        let conn =
                            connection(&mut self.conn, &mut self.known, &self.config).await?;
                        mark_read(conn, &user, &conversation, seq, now).await
                    })
                    .await
                    .unwrap_or_else(|_| Err(timed_out("a read-state change", timeout)));
                    self.keep_connection_after(&result);
                    let _ = reply.send(result);
                }
                WriteOp::Close(reply) => {
                    self.rx.close();
                    // Anything that raced in behind the close is refused, not dropped silently.
                    while let Ok(op) = self.rx.try_recv() {
                        fail(op, &closed());
                    }
                    self.conn = None;
                    let _ = reply.send(Ok(()));
                    return;
                }
            }
        }
    }

    /// Drops the connection after a failure that may have broken it.
    fn keep_connection_after<T>(&mut self, result: &StoreResult<T>) {
        if let Some(conn) = &self.conn
            && !conn.reusable(result)
        {
            self.conn = None;
        }
    }

    async fn commit_appends(&mut self, messages: Vec<EncodedMessage>, waiters: Vec<Waiter>) {
        let started = Instant::now();
        let timeout = self.config.timeout;
        let result = tokio::time::timeout(timeout, async {
            let conn = connection(&mut self.conn, &mut self.known, &self.config).await?;
            apply_appends(conn, &mut self.known, &messages).await
        })
        .await
        .unwrap_or_else(|_| Err(timed_out("a write batch", timeout)));
        self.keep_connection_after(&result);
        self.config
            .observer
            .on_commit(messages.len(), started.elapsed());
        match result {
            Ok(outcomes) => {
                for ((hook, reply), outcome) in waiters.into_iter().zip(outcomes) {
                    if let (Ok(appended), Some(hook)) = (&outcome, hook) {
                        hook(appended);
                    }
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, batch = messages.len(), "postgres: write batch failed");
                for (_, reply) in waiters {
                    let _ = reply.send(Err(copy(&e)));
                }
            }
        }
    }
}

/// The writer's connection, opened (again) if it has none or the server closed it.
async fn connection<'c>(
    slot: &'c mut Option<PgConn>,
    known: &mut HashSet<String>,
    config: &WriterConfig,
) -> StoreResult<&'c mut PgConn> {
    if slot.as_ref().is_some_and(|c| c.client.is_closed()) {
        *slot = None;
    }
    if slot.is_none() {
        // A new connection may mean a new server (a failover): forget what we knew.
        known.clear();
        *slot = Some(config.connector.connect().await?);
    }
    slot.as_mut()
        .ok_or_else(|| StoreError::new(StoreErrorKind::Internal, "writer has no connection"))
}

const INSERT_CONVERSATIONS: &str = "INSERT INTO conversations (id, kind, created_at) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::int8[]) ORDER BY 1 \
     ON CONFLICT (id) DO NOTHING";
const LOCK_CONVERSATIONS: &str = "SELECT id, last_seq, last_time FROM conversations \
     WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE";
const LOCK_USERS: &str = "SELECT id, deleted, sync_version FROM users \
     WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE";
const INSERT_MESSAGES: &str = "INSERT INTO messages \
     (conversation_id, seq, id, sender, recipient, client_msg_id, content, ext, server_time, \
      mentions) \
     SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[], \
       $6::text[], $7::text[], $8::text[], $9::int8[], $10::text[])";
const UPDATE_CONVERSATIONS: &str = "UPDATE conversations c \
     SET last_seq = v.last_seq, last_time = v.last_time \
     FROM unnest($1::text[], $2::int8[], $3::int8[]) AS v(id, last_seq, last_time) \
     WHERE c.id = v.id";
const UPDATE_USERS: &str = "UPDATE users u SET sync_version = v.version \
     FROM unnest($1::text[], $2::int8[]) AS v(id, version) WHERE u.id = v.id";
const UPSERT_ROWS: &str = "INSERT INTO user_conversations \
     (user_id, conversation_id, peer, read_seq, version, updated_at, mention_seq) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], \
       $7::int8[]) \
     ON CONFLICT (user_id, conversation_id) DO UPDATE SET \
       version = excluded.version, updated_at = excluded.updated_at, \
       read_seq = GREATEST(user_conversations.read_seq, excluded.read_seq), \
       mention_seq = GREATEST(user_conversations.mention_seq, excluded.mention_seq)";
/// Taken, transaction-scoped, by every transaction that stamps group activity, right before
/// its commit: stamps then become visible in stamp order (see migration 0003).
pub(super) const GROUP_ACTIVITY_LOCK: i64 = 0x6d61_6770_6965_6761; // "magpiega"
/// Stamps group conversations (and records their last "@all"), after taking the lock.
pub(super) const STAMP_GROUPS: &str = "UPDATE conversations c \
     SET activity = nextval('group_activity'), \
       mention_all_seq = GREATEST(c.mention_all_seq, v.mention_all) \
     FROM unnest($1::text[], $2::int8[]) AS v(id, mention_all) WHERE c.id = v.id";

/// A participant's conversation row as the batch leaves it.
struct PendingRow {
    peer: Option<UserId>,
    read_seq: i64,
    mention_seq: i64,
    version: i64,
    updated_at: Millis,
}

/// The new messages of a batch, column by column for `unnest`.
#[derive(Default)]
struct MessageColumns<'a> {
    conversation: Vec<&'a str>,
    seq: Vec<i64>,
    id: Vec<i64>,
    sender: Vec<&'a str>,
    recipient: Vec<&'a str>,
    client_msg_id: Vec<&'a str>,
    content: Vec<&'a str>,
    ext: Vec<Option<&'a str>>,
    server_time: Vec<i64>,
    mentions: Vec<Option<&'a str>>,
}

type DedupeKey = (String, String, String);

fn dedupe_key(message: &Message) -> DedupeKey {
    (
        message.conversation_id.as_str().to_owned(),
        message.from.as_str().to_owned(),
        message.client_msg_id.clone(),
    )
}

/// Applies and commits one batch; returns each append's outcome, in batch order.
async fn apply_appends(
    conn: &mut PgConn,
    known: &mut HashSet<String>,
    batch: &[EncodedMessage],
) -> StoreResult<Vec<StoreResult<Appended>>> {
    // 1. Conversation rows, outside the transaction: creating one is idempotent, and doing it
    // here means the transaction below only ever locks existing rows, in id order.
    let mut missing: BTreeMap<&str, (&'static str, i64)> = BTreeMap::new();
    for encoded in batch {
        let message = &encoded.new.message;
        let id = message.conversation_id.as_str();
        if !known.contains(id) {
            missing.entry(id).or_insert((
                rows::kind_to_sql(message.conversation_id.kind()),
                message.server_time,
            ));
        }
    }
    if !missing.is_empty() {
        let ids: Vec<&str> = missing.keys().copied().collect();
        let kinds: Vec<&str> = missing.values().map(|(kind, _)| *kind).collect();
        let times: Vec<i64> = missing.values().map(|(_, time)| *time).collect();
        let statement = conn
            .statements
            .get(&conn.client, INSERT_CONVERSATIONS)
            .await?;
        conn.client
            .execute(&statement, &[&ids, &kinds, &times])
            .await?;
        if known.len() + ids.len() > KNOWN_LIMIT {
            known.clear();
        }
        known.extend(ids.iter().map(|id| (*id).to_owned()));
    }

    // 2. Locks, in the global order: conversations, then users, each sorted by id.
    let tx = conn.client.transaction().await?;
    let conversation_ids: Vec<&str> = batch
        .iter()
        .map(|e| e.new.message.conversation_id.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let statement = conn.statements.get(&tx, LOCK_CONVERSATIONS).await?;
    let mut conversations: HashMap<String, (i64, i64)> = HashMap::new();
    for row in tx.query(&statement, &[&conversation_ids]).await? {
        conversations.insert(row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?));
    }
    let user_ids: Vec<&str> = batch
        .iter()
        .flat_map(|e| e.new.participants.iter().map(UserId::as_str))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let statement = conn.statements.get(&tx, LOCK_USERS).await?;
    // Live users → their change counter (deleted ones are locked too, but not live).
    let mut versions: HashMap<String, i64> = HashMap::new();
    for row in tx.query(&statement, &[&user_ids]).await? {
        if !row.try_get::<_, bool>(1)? {
            versions.insert(row.try_get(0)?, row.try_get(2)?);
        }
    }

    // 3. Dedupe, now that every earlier writer of these conversations has committed.
    let mut originals: HashMap<DedupeKey, Message> = HashMap::new();
    {
        let keys: Vec<(&str, &str, &str)> = batch
            .iter()
            .map(|e| {
                let m = &e.new.message;
                (
                    m.conversation_id.as_str(),
                    m.from.as_str(),
                    m.client_msg_id.as_str(),
                )
            })
            .collect();
        let convs: Vec<&str> = keys.iter().map(|k| k.0).collect();
        let senders: Vec<&str> = keys.iter().map(|k| k.1).collect();
        let client_ids: Vec<&str> = keys.iter().map(|k| k.2).collect();
        let sql = sql!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m \
             JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(conversation_id, sender, client_msg_id) \
               ON m.conversation_id = k.conversation_id AND m.sender = k.sender \
              AND m.client_msg_id = k.client_msg_id"
        );
        let statement = conn.statements.get(&tx, sql).await?;
        for row in tx
            .query(&statement, &[&convs, &senders, &client_ids])
            .await?
        {
            let message = rows::message(&row, 0)?;
            originals.insert(dedupe_key(&message), message);
        }
    }

    // 4. Seqs and versions, in queue order.
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut columns = MessageColumns::default();
    let mut pending: BTreeMap<(String, String), PendingRow> = BTreeMap::new();
    let mut bumped: BTreeSet<String> = BTreeSet::new();
    let mut touched: BTreeSet<String> = BTreeSet::new();
    // Group conversations of the batch → the last message mentioning everyone (0: none).
    let mut groups_touched: BTreeMap<&str, i64> = BTreeMap::new();
    for encoded in batch {
        let new = &encoded.new;
        let key = dedupe_key(&new.message);
        // A retry gets its original, even if a participant has gone away since.
        if let Some(original) = originals.get(&key) {
            outcomes.push(Ok(Appended {
                message: original.clone(),
                duplicate: true,
            }));
            continue;
        }
        if let Some(gone) = new
            .participants
            .iter()
            .find(|u| !versions.contains_key(u.as_str()))
        {
            outcomes.push(Err(user_not_found(gone)));
            continue;
        }
        let conversation = new.message.conversation_id.as_str();
        let Some((last_seq, last_time)) = conversations.get_mut(conversation) else {
            return Err(StoreError::new(
                StoreErrorKind::Internal,
                format!("conversation {conversation} has no row"),
            ));
        };
        // The server time is raised if needed so that it never decreases along the seqs.
        *last_seq += 1;
        *last_time = new.message.server_time.max(*last_time);
        let (seq, time) = (*last_seq, *last_time);
        let mut message = new.message.clone();
        message.seq = seq as u64;
        message.server_time = time;
        columns.conversation.push(conversation);
        columns.seq.push(seq);
        columns.id.push(message.id.0 as i64);
        columns.sender.push(new.message.from.as_str());
        columns.recipient.push(new.message.to.id());
        columns.client_msg_id.push(&new.message.client_msg_id);
        columns.content.push(&encoded.content);
        columns.ext.push(encoded.ext.as_deref());
        columns.server_time.push(time);
        columns.mentions.push(encoded.mentions.as_deref());
        touched.insert(conversation.to_owned());
        if new.message.conversation_id.kind() == ConversationKind::Group {
            let mention_all = groups_touched.entry(conversation).or_default();
            if new.message.mentions.as_ref().is_some_and(|m| m.all) {
                *mention_all = seq;
            }
        }
        for user in &new.participants {
            let version = versions.entry(user.as_str().to_owned()).or_default();
            *version += 1;
            let version = *version;
            bumped.insert(user.as_str().to_owned());
            let read_seq = if *user == message.from { seq } else { 0 };
            let mention_seq = if new.mentioned.contains(user) { seq } else { 0 };
            // Held until the end of the batch: several messages of one conversation in a
            // batch write each participant's row once.
            let row = pending
                .entry((user.as_str().to_owned(), conversation.to_owned()))
                .or_insert_with(|| PendingRow {
                    peer: message.conversation_id.c2c_peer(user),
                    read_seq: 0,
                    mention_seq: 0,
                    version,
                    updated_at: time,
                });
            row.version = version;
            row.read_seq = row.read_seq.max(read_seq);
            row.mention_seq = row.mention_seq.max(mention_seq);
            row.updated_at = time;
        }
        originals.insert(key, message.clone());
        outcomes.push(Ok(Appended {
            message,
            duplicate: false,
        }));
    }

    // 5. The writes, pipelined on the connection.
    if !columns.seq.is_empty() {
        let insert = conn.statements.get(&tx, INSERT_MESSAGES).await?;
        let update_conversations = conn.statements.get(&tx, UPDATE_CONVERSATIONS).await?;
        let update_users = conn.statements.get(&tx, UPDATE_USERS).await?;
        let upsert = conn.statements.get(&tx, UPSERT_ROWS).await?;
        let conv_ids: Vec<&str> = touched.iter().map(String::as_str).collect();
        let conv_seqs: Vec<i64> = touched
            .iter()
            .map(|c| conversations.get(c).map_or(0, |v| v.0))
            .collect();
        let conv_times: Vec<i64> = touched
            .iter()
            .map(|c| conversations.get(c).map_or(0, |v| v.1))
            .collect();
        let user_ids: Vec<&str> = bumped.iter().map(String::as_str).collect();
        let user_versions: Vec<i64> = bumped
            .iter()
            .map(|u| versions.get(u).copied().unwrap_or_default())
            .collect();
        let row_users: Vec<&str> = pending.keys().map(|(u, _)| u.as_str()).collect();
        let row_conversations: Vec<&str> = pending.keys().map(|(_, c)| c.as_str()).collect();
        let row_peers: Vec<Option<&str>> = pending
            .values()
            .map(|r| r.peer.as_ref().map(UserId::as_str))
            .collect();
        let row_reads: Vec<i64> = pending.values().map(|r| r.read_seq).collect();
        let row_versions: Vec<i64> = pending.values().map(|r| r.version).collect();
        let row_times: Vec<i64> = pending.values().map(|r| r.updated_at).collect();
        let row_mentions: Vec<i64> = pending.values().map(|r| r.mention_seq).collect();
        let c = &columns;
        futures_util::future::try_join4(
            tx.execute(
                &insert,
                &[
                    &c.conversation,
                    &c.seq,
                    &c.id,
                    &c.sender,
                    &c.recipient,
                    &c.client_msg_id,
                    &c.content,
                    &c.ext,
                    &c.server_time,
                    &c.mentions,
                ],
            ),
            tx.execute(&update_conversations, &[&conv_ids, &conv_seqs, &conv_times]),
            tx.execute(&update_users, &[&user_ids, &user_versions]),
            tx.execute(
                &upsert,
                &[
                    &row_users,
                    &row_conversations,
                    &row_peers,
                    &row_reads,
                    &row_versions,
                    &row_times,
                    &row_mentions,
                ],
            ),
        )
        .await?;
    }
    if !groups_touched.is_empty() {
        let ids: Vec<&str> = groups_touched.keys().copied().collect();
        let mention_all: Vec<i64> = groups_touched.values().copied().collect();
        stamp_groups(&tx, &mut conn.statements, &ids, &mention_all).await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Stamps group conversations with the group activity clock, as the last thing before the
/// commit: the lock it takes is held to the end of the transaction, so hold it briefly.
pub(super) async fn stamp_groups(
    tx: &tokio_postgres::Transaction<'_>,
    statements: &mut super::conn::Statements,
    ids: &[&str],
    mention_all: &[i64],
) -> StoreResult<()> {
    let lock = statements
        .get(tx, "SELECT pg_advisory_xact_lock($1)")
        .await?;
    tx.execute(&lock, &[&GROUP_ACTIVITY_LOCK]).await?;
    let stamp = statements.get(tx, STAMP_GROUPS).await?;
    tx.execute(&stamp, &[&ids, &mention_all]).await?;
    Ok(())
}

async fn mark_read(
    conn: &mut PgConn,
    user: &UserId,
    conversation: &ConversationId,
    seq: u64,
    now: Millis,
) -> StoreResult<ReadOutcome> {
    let not_found = || {
        StoreError::new(
            StoreErrorKind::ConversationNotFound,
            format!("{user} has no conversation {conversation}"),
        )
    };
    let tx = conn.client.transaction().await?;
    // The user's row first: the lock order of appends, and the counter we may bump.
    let statement = conn
        .statements
        .get(
            &tx,
            "SELECT sync_version FROM users WHERE id = $1 AND NOT deleted FOR UPDATE",
        )
        .await?;
    let Some(row) = tx.query_opt(&statement, &[&user.as_str()]).await? else {
        return Err(not_found());
    };
    let current: i64 = row.try_get(0)?;
    let mut state = reader::conversation_state(&tx, &mut conn.statements, user, conversation)
        .await?
        .ok_or_else(not_found)?;
    state.last_message = None;
    let target = seq.min(state.last_seq);
    let previous_read_seq = state.read_seq;
    if target <= state.read_seq {
        // Nothing changes; dropping the transaction rolls it back.
        return Ok(ReadOutcome {
            previous_read_seq,
            state,
            changed: false,
        });
    }
    let version = current + 1;
    let bump = conn
        .statements
        .get(&tx, "UPDATE users SET sync_version = $2 WHERE id = $1")
        .await?;
    // A group member who never sent, read or was mentioned has no row yet: this creates it.
    let update = conn
        .statements
        .get(
            &tx,
            "INSERT INTO user_conversations \
               (user_id, conversation_id, peer, read_seq, version, updated_at) \
             VALUES ($1, $2, $6, $3, $4, $5) \
             ON CONFLICT (user_id, conversation_id) DO UPDATE SET \
               read_seq = excluded.read_seq, version = excluded.version, \
               updated_at = excluded.updated_at",
        )
        .await?;
    let target_sql = target as i64;
    let peer = state.peer.as_ref().map(UserId::as_str);
    futures_util::future::try_join(
        tx.execute(&bump, &[&user.as_str(), &version]),
        tx.execute(
            &update,
            &[
                &user.as_str(),
                &conversation.as_str(),
                &target_sql,
                &version,
                &now,
                &peer,
            ],
        ),
    )
    .await?;
    let mut state = reader::conversation_state(&tx, &mut conn.statements, user, conversation)
        .await?
        .ok_or_else(not_found)?;
    tx.commit().await?;
    state.last_message = None;
    Ok(ReadOutcome {
        state,
        changed: true,
        previous_read_seq,
    })
}
