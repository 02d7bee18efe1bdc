//! The single writer thread and group commit.
//!
//! Every write goes through one channel to one thread that owns the write connection. The
//! thread drains whatever queued up while it was busy, applies the writes in order, commits
//! the whole batch once, and hands the batch to the sync thread (`durable`), which answers
//! the callers once the commit is on disk. This is what makes "acked means durable" cheap: a
//! busy server pays one commit for hundreds of messages, and one fsync for several commits.

use std::sync::Arc;
use std::time::Instant;

use hashbrown::HashMap;
use magpie_proto::rest::{UpdateUser, User};
use magpie_proto::{ConversationId, ConversationKind, Message, Millis, UserId};
use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::{Checkpointer, Restarter};
use super::durable::{Announced, Durable, Finished, SyncFn, Syncer};
use super::groups::GroupOp;
use super::rows::{self, MESSAGE_COLUMNS, MESSAGES_OF_CONVERSATION};
use crate::{
    Appended, CommitObserver, NewMessage, NewUser, OnCommit, ReadOutcome, StoreError,
    StoreErrorKind, StoreResult,
};

pub(super) type Reply<T> = oneshot::Sender<StoreResult<T>>;

/// A message with its JSON columns encoded by the submitting task, to keep that work off
/// the writer thread.
pub(super) struct EncodedMessage {
    pub(super) new: NewMessage,
    pub(super) content: String,
    pub(super) ext: Option<String>,
    pub(super) mentions: Option<String>,
}

/// A write, with where to send its result.
pub(super) enum WriteOp {
    CreateUser(NewUser, Reply<User>),
    UpdateUser(UserId, UpdateUser, Millis, Reply<User>),
    DeleteUser(UserId, Reply<bool>),
    RevokeTokens(UserId, Reply<u64>),
    Append(Box<EncodedMessage>, Option<OnCommit>, Reply<Appended>),
    MarkRead {
        user: UserId,
        conversation: ConversationId,
        seq: u64,
        now: Millis,
        reply: Reply<ReadOutcome>,
    },
    ClaimNode(String, std::time::Duration, Reply<u16>),
    RenewNode(u16, String, std::time::Duration, Reply<bool>),
    ReleaseNode(u16, String, Reply<()>),
    /// A group write (see `groups`).
    Group(GroupOp),
    /// Apply everything queued before it, checkpoint, and stop.
    Close(Reply<()>),
}

/// Handle to the writer thread.
#[derive(Debug)]
pub(super) struct Writer {
    tx: mpsc::Sender<WriteOp>,
}

/// How many writes may wait for the writer before submitters wait too.
const QUEUE_DEPTH: usize = 16 * 1024;

/// How often a writer waiting for the disk looks for new writes to add to its open batch.
const FILL_POLL: std::time::Duration = std::time::Duration::from_micros(200);

impl Writer {
    /// Starts the writer thread (and its sync thread); returns the writer and what readers
    /// wait on to see only durable data.
    pub(super) fn spawn(
        conn: Connection,
        max_batch: usize,
        observer: Arc<dyn CommitObserver>,
        checkpointer: Checkpointer,
        restarter: Restarter,
        sync: SyncFn,
    ) -> StoreResult<(Self, Durable)> {
        let (syncer, durable, announced) = Syncer::spawn(sync)?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let state = State {
            conn,
            cache: Cache::default(),
            pending_rows: HashMap::new(),
            batch_max_id: None,
            generation: 0,
            announced,
            syncer,
        };
        std::thread::Builder::new()
            .name("magpie-sqlite-writer".into())
            .spawn(move || {
                run(
                    state,
                    rx,
                    max_batch.max(1),
                    observer.as_ref(),
                    checkpointer,
                    restarter,
                )
            })
            .map_err(StoreError::internal)?;
        Ok((Self { tx }, durable))
    }

    /// Queues a write and waits for its committed result.
    pub(super) async fn submit<T>(&self, make: impl FnOnce(Reply<T>) -> WriteOp) -> StoreResult<T> {
        let (reply, result) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| closed())?;
        result.await.map_err(|_| closed())?
    }

    /// Queues a write now, without waiting for room; the returned future waits for its result.
    /// Writes queued one after another are applied in that order.
    pub(super) fn queue<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> WriteOp,
    ) -> StoreResult<impl std::future::Future<Output = StoreResult<T>> + Send + 'static> {
        let (reply, result) = oneshot::channel();
        self.tx.try_send(make(reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::new(
                StoreErrorKind::Unavailable,
                "the store's write queue is full; retry shortly",
            ),
            mpsc::error::TrySendError::Closed(_) => closed(),
        })?;
        Ok(async move { result.await.map_err(|_| closed())? })
    }

    pub(super) async fn close(&self) -> StoreResult<()> {
        self.submit(WriteOp::Close).await
    }
}

fn closed() -> StoreError {
    StoreError::new(StoreErrorKind::Unavailable, "store is closed")
}

fn run(
    mut state: State,
    mut rx: mpsc::Receiver<WriteOp>,
    max_batch: usize,
    observer: &dyn CommitObserver,
    mut checkpointer: Checkpointer,
    mut restarter: Restarter,
) {
    state.syncer.wake_when_idle(std::thread::current());
    while let Some(first) = rx.blocking_recv() {
        let mut batch = match state.begin() {
            Ok(batch) => batch,
            Err(e) => {
                fail(first, &e);
                continue;
            }
        };
        state.add(&mut batch, first);
        // Fill the transaction with what is queued and, while the disk is still busy with the
        // previous commit, with what arrives meanwhile: the commit waits for the disk anyway,
        // and one commit of many writes rewrites each hot page once instead of once per
        // commit.
        loop {
            while batch.size < max_batch && batch.close.is_none() {
                match rx.try_recv() {
                    Ok(op) => state.add(&mut batch, op),
                    Err(_) => break,
                }
            }
            if batch.size >= max_batch || batch.close.is_some() || state.syncer.is_idle() {
                break;
            }
            // The sync thread unparks us when it is done; until then, take new arrivals.
            std::thread::park_timeout(FILL_POLL);
        }
        if let Some(close_reply) = state.commit(batch, observer) {
            // Everything before the close is answered before the close is.
            state.syncer.finish();
            checkpointer.stop();
            let result = state
                .conn
                .pragma_update(None, "wal_checkpoint", "TRUNCATE")
                .map_err(StoreError::from);
            let _ = close_reply.send(result);
            rx.close();
            // Anything that raced in behind the close is refused, not silently dropped.
            while let Ok(op) = rx.try_recv() {
                fail(op, &closed());
            }
            return;
        }
        if let Some(paused) = restarter.maybe_restart(&state.conn) {
            observer.on_writer_pause(paused);
        }
    }
}

/// A result computed inside the transaction, delivered once the commit's fate is known.
pub(super) type Completion = Box<dyn FnOnce(Option<&StoreError>) + Send>;

pub(super) fn complete<T: Send + 'static>(reply: Reply<T>, result: StoreResult<T>) -> Completion {
    Box::new(move |commit_error| {
        let outcome = match commit_error {
            Some(e) if result.is_ok() => Err(StoreError::new(e.kind(), e.message())),
            _ => result,
        };
        let _ = reply.send(outcome);
    })
}

fn complete_append(
    reply: Reply<Appended>,
    result: StoreResult<Appended>,
    hook: Option<OnCommit>,
) -> Completion {
    Box::new(move |commit_error| {
        if let (None, Ok(appended), Some(hook)) = (commit_error, &result, hook) {
            hook(appended);
        }
        complete(reply, result)(commit_error);
    })
}

fn fail(op: WriteOp, error: &StoreError) {
    let err = || StoreError::new(error.kind(), error.message());
    match op {
        WriteOp::CreateUser(_, r) | WriteOp::UpdateUser(_, _, _, r) => drop(r.send(Err(err()))),
        WriteOp::DeleteUser(_, r) => drop(r.send(Err(err()))),
        WriteOp::RevokeTokens(_, r) => drop(r.send(Err(err()))),
        WriteOp::Append(_, _, r) => drop(r.send(Err(err()))),
        WriteOp::MarkRead { reply, .. } => drop(reply.send(Err(err()))),
        WriteOp::Close(r) | WriteOp::ReleaseNode(_, _, r) => drop(r.send(Err(err()))),
        WriteOp::ClaimNode(_, _, r) => drop(r.send(Err(err()))),
        WriteOp::RenewNode(_, _, _, r) => drop(r.send(Err(err()))),
        WriteOp::Group(op) => op.fail(error),
    }
}

/// A refusal decided before the write touched the database: its neighbours in the batch can
/// still commit. Every write below checks everything that can refuse it before its first
/// statement that modifies anything, so no savepoint (and no statement journal) is needed.
fn is_refusal(e: &StoreError) -> bool {
    matches!(
        e.kind(),
        StoreErrorKind::UserNotFound
            | StoreErrorKind::ConversationNotFound
            | StoreErrorKind::Conflict
            | StoreErrorKind::GroupNotFound
            | StoreErrorKind::NotMember
            | StoreErrorKind::GroupFull
            | StoreErrorKind::Blocked
    )
}

/// Cached counters the writer would otherwise read back for every message. Only the writer
/// thread changes them in the database, so the cache is exact — as long as it is dropped
/// whenever a transaction does not commit.
#[derive(Default)]
struct Cache {
    /// Conversation id → its key and last message.
    conversations: HashMap<String, Tail>,
    /// Live user id → their change counter.
    versions: HashMap<String, u64>,
}

/// Entries kept before the cache starts over (it refills from the database on demand).
const CACHE_LIMIT: usize = 200_000;

impl Cache {
    fn clear(&mut self) {
        self.conversations.clear();
        self.versions.clear();
    }
}

/// What the writer needs of a conversation to append to it.
#[derive(Clone, Copy)]
struct Tail {
    /// Its integer key (a rolled-back batch takes the keys it gave out with it).
    key: i64,
    /// Its last seq (0 before its first message).
    seq: u64,
    /// The server time of that message (0 before its first message).
    server_time: i64,
}

/// A batch whose transaction is open.
struct OpenBatch {
    started: Instant,
    /// Writes taken into the batch, refused or failed ones included.
    size: usize,
    completions: Vec<Completion>,
    /// The failure that rolls the batch back; later writes fail with it.
    abort: Option<StoreError>,
    /// A close request: the batch ends with it.
    close: Option<Reply<()>>,
}

/// A participant's conversation row as the current batch leaves it.
struct PendingRow {
    peer: Option<UserId>,
    /// The highest read seq the batch gives the user (0: unchanged).
    read_seq: u64,
    /// The last message of the batch that mentions the user (0: none).
    mention_seq: u64,
    version: u64,
    updated_at: Millis,
}

struct State {
    conn: Connection,
    cache: Cache,
    /// (user, conversation) rows the batch's appends changed, written before anything reads
    /// them and before the commit.
    /// Keyed by conversation, then user, so that a message whose rows the batch already holds
    /// finds them without allocating a key.
    pending_rows: HashMap<String, HashMap<String, PendingRow>>,
    /// The largest message id appended in the current batch.
    batch_max_id: Option<u64>,
    /// The number of the last batch (see `durable`).
    generation: u64,
    /// Where the next batch's number is announced before its commit.
    announced: Arc<Announced>,
    /// Answers the batches once they are durable.
    syncer: Syncer,
}

impl State {
    /// Opens the transaction of a batch.
    fn begin(&mut self) -> StoreResult<OpenBatch> {
        if self.cache.conversations.len() + self.cache.versions.len() > CACHE_LIMIT {
            self.cache.clear();
        }
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| {
            let e = StoreError::from(e);
            tracing::error!(error = %e, "sqlite: cannot begin a write transaction");
            e
        })?;
        Ok(OpenBatch {
            started: Instant::now(),
            size: 0,
            completions: Vec::new(),
            abort: None,
            close: None,
        })
    }

    /// Applies one write inside the open batch.
    fn add(&mut self, batch: &mut OpenBatch, op: WriteOp) {
        batch.size += 1;
        if let Some(e) = &batch.abort {
            fail(op, e);
            return;
        }
        if let WriteOp::Close(reply) = op {
            batch.close = Some(reply);
            return;
        }
        let (completion, error) = self.apply(op);
        batch.completions.push(completion);
        if let Some(e) = error.filter(|e| !is_refusal(e)) {
            tracing::error!(error = %e, "sqlite: write failed; rolling back its batch");
            batch.abort = Some(e);
        }
    }

    /// Commits (or rolls back) the batch and hands it to the sync thread. Returns the reply of
    /// a `Close` found in it.
    fn commit(&mut self, batch: OpenBatch, observer: &dyn CommitObserver) -> Option<Reply<()>> {
        let OpenBatch {
            started,
            size,
            completions,
            mut abort,
            close,
        } = batch;
        if abort.is_none()
            && let Err(e) = self.flush_rows()
        {
            abort = Some(e);
        }
        if abort.is_none()
            && let Some(max_id) = self.batch_max_id
            && let Err(e) = self.record_max_id(max_id)
        {
            abort = Some(e);
        }
        self.pending_rows.clear();
        self.batch_max_id = None;
        let outcome = match abort {
            Some(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Some(e)
            }
            None => {
                self.announced.announce(self.generation + 1);
                self.conn.execute_batch("COMMIT").err().map(|e| {
                    let e = StoreError::from(e);
                    tracing::error!(error = %e, batch = size, "sqlite: commit failed");
                    let _ = self.conn.execute_batch("ROLLBACK");
                    e
                })
            }
        };
        if outcome.is_some() {
            self.cache.clear();
        }
        // A rolled-back batch uses up its number too: readers may be waiting for it.
        self.generation += 1;
        observer.on_commit(size, started.elapsed());
        self.syncer.hand_over(Finished {
            generation: self.generation,
            outcome,
            completions,
        });
        close
    }

    /// Writes the conversation rows held back by the batch's appends.
    fn flush_rows(&mut self) -> StoreResult<()> {
        if self.pending_rows.is_empty() {
            return Ok(());
        }
        let mut upsert = self.conn.prepare_cached(
            "INSERT INTO user_conversations \
               (user_id, conversation_id, peer, read_seq, version, updated_at, mention_seq) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (user_id, conversation_id) DO UPDATE SET \
               version = excluded.version, updated_at = excluded.updated_at, \
               read_seq = max(read_seq, excluded.read_seq), \
               mention_seq = max(mention_seq, excluded.mention_seq)",
        )?;
        for (conversation, rows) in self.pending_rows.drain() {
            for (user, row) in rows {
                upsert.execute((
                    user,
                    &conversation,
                    row.peer.as_ref().map(UserId::as_str),
                    row.read_seq as i64,
                    row.version as i64,
                    row.updated_at,
                    row.mention_seq as i64,
                ))?;
            }
        }
        Ok(())
    }

    /// Applies one write; returns its completion and its error, if any.
    fn apply(&mut self, op: WriteOp) -> (Completion, Option<StoreError>) {
        // Anything but an append may read or delete conversation rows: bring them up to date
        // first.
        if !matches!(op, WriteOp::Append(..))
            && let Err(e) = self.flush_rows()
        {
            let error = StoreError::new(e.kind(), e.message());
            fail(op, &e);
            return (Box::new(|_| {}), Some(error));
        }
        fn done<T: Send + 'static>(
            reply: Reply<T>,
            result: StoreResult<T>,
        ) -> (Completion, Option<StoreError>) {
            let error = result
                .as_ref()
                .err()
                .map(|e| StoreError::new(e.kind(), e.message()));
            (complete(reply, result), error)
        }
        match op {
            WriteOp::CreateUser(user, reply) => done(reply, create_user(&self.conn, user)),
            WriteOp::UpdateUser(id, update, now, reply) => {
                done(reply, update_user(&self.conn, &id, update, now))
            }
            WriteOp::DeleteUser(id, reply) => {
                let result = delete_user(&self.conn, &id);
                self.cache.versions.remove(id.as_str());
                done(reply, result)
            }
            WriteOp::RevokeTokens(id, reply) => done(reply, revoke_tokens(&self.conn, &id)),
            WriteOp::Append(message, hook, reply) => {
                let result = self.append(*message);
                let error = result
                    .as_ref()
                    .err()
                    .map(|e| StoreError::new(e.kind(), e.message()));
                (complete_append(reply, result, hook), error)
            }
            WriteOp::MarkRead {
                user,
                conversation,
                seq,
                now,
                reply,
            } => {
                let result = self.mark_read(&user, &conversation, seq, now);
                done(reply, result)
            }
            WriteOp::ClaimNode(holder, lease, reply) => {
                match leases::claim(&self.conn, &holder, lease) {
                    // Nothing was written: the batch's other writes can still commit.
                    Err(e) if e.kind() == StoreErrorKind::Unavailable => {
                        (complete(reply, Err(e)), None)
                    }
                    result => done(reply, result),
                }
            }
            WriteOp::RenewNode(node, holder, lease, reply) => {
                done(reply, leases::renew(&self.conn, node, &holder, lease))
            }
            WriteOp::ReleaseNode(node, holder, reply) => {
                done(reply, leases::release(&self.conn, node, &holder))
            }
            WriteOp::Group(op) => op.apply(&self.conn),
            WriteOp::Close(reply) => done(reply, Err(closed())),
        }
    }

    fn record_max_id(&self, id: u64) -> StoreResult<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('max_message_id', ?1) \
                 ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
            )?
            .execute([id as i64])?;
        Ok(())
    }

    /// Whether a user exists and is not deleted; loads their change counter on the way.
    fn user_is_live(&mut self, user: &UserId) -> StoreResult<bool> {
        if self.cache.versions.contains_key(user.as_str()) {
            return Ok(true);
        }
        let version: Option<i64> = self
            .conn
            .prepare_cached(rows::CURRENT_VERSION_SQL)?
            .query_row([user.as_str()], |r| r.get(0))
            .optional()?;
        match version {
            Some(v) => {
                self.cache
                    .versions
                    .insert(user.as_str().to_owned(), v as u64);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Takes a live user's next change version.
    fn next_version(&mut self, user: &UserId) -> StoreResult<u64> {
        if !self.user_is_live(user)? {
            return Err(user_not_found(user));
        }
        let version = self.cache.versions.entry_ref(user.as_str()).or_default();
        *version += 1;
        Ok(*version)
    }

    /// The conversation's key and last message, its row written first (created at `now`) if
    /// it has none.
    fn tail(&mut self, conversation: &ConversationId, now: Millis) -> StoreResult<Tail> {
        if let Some(tail) = self.cache.conversations.get(conversation.as_str()) {
            return Ok(*tail);
        }
        let key = rows::conversation_key(&self.conn, conversation, now)?;
        let last: Option<(i64, i64)> = self
            .conn
            .prepare_cached(
                "SELECT seq, server_time FROM messages WHERE conversation_key = ?1 \
                 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (seq, server_time) = last.map_or((0, 0), |(seq, time)| (seq as u64, time));
        let tail = Tail {
            key,
            seq,
            server_time,
        };
        self.cache
            .conversations
            .insert(conversation.as_str().to_owned(), tail);
        Ok(tail)
    }

    fn original(&self, message: &Message) -> StoreResult<Option<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM {MESSAGES_OF_CONVERSATION} \
             AND m.sender = ?2 AND m.client_msg_id = ?3"
        );
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row(
                (
                    message.conversation_id.as_str(),
                    message.from.as_str(),
                    &message.client_msg_id,
                ),
                |r| rows::message(r, 0),
            )
            .optional()?)
    }

    fn append(&mut self, encoded: EncodedMessage) -> StoreResult<Appended> {
        let EncodedMessage {
            new,
            content,
            ext,
            mentions,
        } = encoded;
        let mut message = new.message;
        // Refusals first, before anything is written.
        for user in &new.participants {
            if !self.user_is_live(user)? {
                // A retry of a message stored before the user went away still gets its original.
                return match self.original(&message)? {
                    Some(original) => Ok(Appended {
                        message: original,
                        duplicate: true,
                    }),
                    None => Err(user_not_found(user)),
                };
            }
        }

        // The seq comes from the same transaction that inserts the message: no gap can
        // appear, and a rolled-back batch takes its seqs (and the cache) with it. The server
        // time is raised if needed so that it never decreases along the seqs.
        let tail = self.tail(&message.conversation_id, message.server_time)?;
        let seq = tail.seq + 1;
        message.server_time = message.server_time.max(tail.server_time);
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO messages (id, conversation_key, seq, sender, recipient, client_msg_id, content, ext, server_time, mentions) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 ON CONFLICT (conversation_key, sender, client_msg_id) DO NOTHING",
            )?
            .execute((
                message.id.0 as i64,
                tail.key,
                seq as i64,
                message.from.as_str(),
                message.to.id(),
                &message.client_msg_id,
                &content,
                &ext,
                message.server_time,
                &mentions,
            ))?;
        if inserted == 0 {
            let original = self.original(&message)?.ok_or_else(|| {
                StoreError::new(
                    StoreErrorKind::Internal,
                    "dedupe conflict without an original message",
                )
            })?;
            return Ok(Appended {
                message: original,
                duplicate: true,
            });
        }
        message.seq = seq;
        self.batch_max_id = self.batch_max_id.max(Some(message.id.0));
        let conversation = message.conversation_id.as_str();
        let now = message.server_time;
        if let Some(tail) = self.cache.conversations.get_mut(conversation) {
            tail.seq = seq;
            tail.server_time = now;
        }
        if message.conversation_id.kind() == ConversationKind::Group {
            let mention_all = message.mentions.as_ref().is_some_and(|m| m.all);
            stamp_group_activity(&self.conn, conversation, if mention_all { seq } else { 0 })?;
        }

        for user in &new.participants {
            let version = self.next_version(user)?;
            let read_seq = if *user == message.from { seq } else { 0 };
            let mention_seq = if new.mentioned.contains(user) { seq } else { 0 };
            // Held until the end of the batch: a conversation that gets several messages in
            // one batch writes its participants' rows once, not once per message.
            let row = self
                .pending_rows
                .entry_ref(conversation)
                .or_default()
                .entry_ref(user.as_str())
                .or_insert_with(|| PendingRow {
                    peer: message.conversation_id.c2c_peer(user),
                    read_seq: 0,
                    mention_seq: 0,
                    version,
                    updated_at: now,
                });
            row.version = version;
            row.read_seq = row.read_seq.max(read_seq);
            row.mention_seq = row.mention_seq.max(mention_seq);
            row.updated_at = now;
        }
        Ok(Appended {
            message,
            duplicate: false,
        })
    }

    fn mark_read(
        &mut self,
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
        // A group member who never sent, read or was mentioned has no row yet: their state
        // comes from the membership, and this write creates the row.
        let mut state = match rows::load_state(&self.conn, user, conversation)? {
            Some(state) => state,
            None => {
                rows::load_group_state(&self.conn, user, conversation)?.ok_or_else(not_found)?
            }
        };
        state.last_message = None;
        let target = seq.min(state.last_seq);
        let previous_read_seq = state.read_seq;
        if target <= state.read_seq {
            return Ok(ReadOutcome {
                previous_read_seq,
                state,
                changed: false,
            });
        }
        let version = self.next_version(user)?;
        self.conn
            .prepare_cached(
                "INSERT INTO user_conversations \
                   (user_id, conversation_id, peer, read_seq, version, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (user_id, conversation_id) DO UPDATE SET \
                   read_seq = excluded.read_seq, version = excluded.version, \
                   updated_at = excluded.updated_at",
            )?
            .execute((
                user.as_str(),
                conversation.as_str(),
                state.peer.as_ref().map(UserId::as_str),
                target as i64,
                version as i64,
                now,
            ))?;
        let mut state = rows::load_state(&self.conn, user, conversation)?.ok_or_else(not_found)?;
        state.last_message = None;
        Ok(ReadOutcome {
            state,
            changed: true,
            previous_read_seq,
        })
    }
}

/// Stamps a group conversation with the next value of the group activity clock (and, when
/// `mention_all_seq` is not 0, records that message as the last "@all"). One writer stamps in
/// commit order, so a sync cursor at the clock never misses a later stamp.
pub(super) fn stamp_group_activity(
    conn: &Connection,
    conversation: &str,
    mention_all_seq: u64,
) -> StoreResult<()> {
    let stamp: i64 = conn
        .prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('group_clock', 1) \
             ON CONFLICT (key) DO UPDATE SET value = value + 1 RETURNING value",
        )?
        .query_row([], |r| r.get(0))?;
    conn.prepare_cached(
        "UPDATE conversations SET activity = ?2, mention_all_seq = max(mention_all_seq, ?3) \
         WHERE id = ?1",
    )?
    .execute((conversation, stamp, mention_all_seq as i64))?;
    Ok(())
}

/// Node-id leases, on the local clock (one SQLite database has one server).
mod leases {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use rusqlite::{Connection, OptionalExtension};

    use crate::{MAX_NODE_ID, StoreError, StoreErrorKind, StoreResult};

    fn now_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    fn expiry(lease: Duration) -> i64 {
        now_ms().saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
    }

    pub(super) fn claim(conn: &Connection, holder: &str, lease: Duration) -> StoreResult<u16> {
        // The lowest id without a live lease: ids below the first gap in the live ones.
        let mut live = conn.prepare_cached(
            "SELECT node_id FROM node_leases WHERE expires_at > ?1 ORDER BY node_id",
        )?;
        let mut free = 0u16;
        let mut rows = live.query([now_ms()])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            if id != i64::from(free) {
                break;
            }
            free += 1;
        }
        if free > MAX_NODE_ID {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!("all {} node ids are leased", u32::from(MAX_NODE_ID) + 1),
            ));
        }
        conn.prepare_cached(
            "INSERT INTO node_leases (node_id, holder, expires_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (node_id) DO UPDATE SET holder = excluded.holder, \
               expires_at = excluded.expires_at",
        )?
        .execute((i64::from(free), holder, expiry(lease)))?;
        Ok(free)
    }

    pub(super) fn renew(
        conn: &Connection,
        node: u16,
        holder: &str,
        lease: Duration,
    ) -> StoreResult<bool> {
        // Still ours (even if expired, as long as nobody took it over).
        let renewed = conn
            .prepare_cached(
                "UPDATE node_leases SET expires_at = ?3 WHERE node_id = ?1 AND holder = ?2 \
                 RETURNING node_id",
            )?
            .query_row((i64::from(node), holder, expiry(lease)), |r| {
                r.get::<_, i64>(0)
            })
            .optional()?;
        Ok(renewed.is_some())
    }

    pub(super) fn release(conn: &Connection, node: u16, holder: &str) -> StoreResult<()> {
        conn.prepare_cached("DELETE FROM node_leases WHERE node_id = ?1 AND holder = ?2")?
            .execute((i64::from(node), holder))?;
        Ok(())
    }
}

fn user_not_found(id: &UserId) -> StoreError {
    StoreError::new(StoreErrorKind::UserNotFound, format!("no user {id}"))
}

fn create_user(conn: &Connection, u: NewUser) -> StoreResult<User> {
    // A deleted id comes back to life with a fresh profile but keeps its counters.
    let created = conn
        .prepare_cached(
            "INSERT INTO users (id, nickname, avatar_url, ext, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?5) \
             ON CONFLICT (id) DO UPDATE SET deleted = 0, nickname = excluded.nickname, \
               avatar_url = excluded.avatar_url, ext = excluded.ext, \
               created_at = excluded.created_at, updated_at = excluded.updated_at \
             WHERE users.deleted = 1",
        )?
        .execute((
            u.id.as_str(),
            &u.nickname,
            &u.avatar_url,
            rows::json_object(u.ext.as_ref())?,
            u.now,
        ))?;
    if created == 0 {
        return Err(StoreError::new(
            StoreErrorKind::Conflict,
            format!("user {} already exists", u.id),
        ));
    }
    Ok(User {
        id: u.id,
        nickname: u.nickname,
        avatar_url: u.avatar_url,
        ext: u.ext,
        created_at: u.now,
        updated_at: u.now,
    })
}

fn update_user(
    conn: &Connection,
    id: &UserId,
    update: UpdateUser,
    now: Millis,
) -> StoreResult<User> {
    let mut user = rows::load_user(conn, id)?
        .ok_or_else(|| user_not_found(id))?
        .user;
    if let Some(nickname) = update.nickname {
        user.nickname = nickname;
    }
    if let Some(avatar_url) = update.avatar_url {
        user.avatar_url = avatar_url;
    }
    if let Some(ext) = update.ext {
        user.ext = ext;
    }
    user.updated_at = now;
    let ext = rows::json_object(user.ext.as_ref())?;
    conn.prepare_cached(
        "UPDATE users SET nickname = ?2, avatar_url = ?3, ext = ?4, updated_at = ?5 WHERE id = ?1",
    )?
    .execute((id.as_str(), &user.nickname, &user.avatar_url, ext, now))?;
    Ok(user)
}

fn delete_user(conn: &Connection, id: &UserId) -> StoreResult<bool> {
    // Deleting revokes the user's tokens, and the change counter is kept in the row, so a
    // re-created user of the same id starts above both.
    let deleted = conn
        .prepare_cached(
            "UPDATE users SET deleted = 1, token_generation = token_generation + 1, \
               sync_version = max(sync_version, \
                 COALESCE((SELECT MAX(version) FROM user_conversations WHERE user_id = ?1), 0)), \
               nickname = NULL, avatar_url = NULL, ext = NULL \
             WHERE id = ?1 AND deleted = 0",
        )?
        .execute([id.as_str()])?;
    if deleted == 0 {
        return Ok(false);
    }
    conn.prepare_cached("DELETE FROM user_conversations WHERE user_id = ?1")?
        .execute([id.as_str()])?;
    Ok(true)
}

fn revoke_tokens(conn: &Connection, id: &UserId) -> StoreResult<u64> {
    conn.prepare_cached(
        "UPDATE users SET token_generation = token_generation + 1 WHERE id = ?1 AND deleted = 0 \
         RETURNING token_generation",
    )?
    .query_row([id.as_str()], |r| r.get::<_, i64>(0))
    .optional()?
    .map(|g| g as u64)
    .ok_or_else(|| user_not_found(id))
}
