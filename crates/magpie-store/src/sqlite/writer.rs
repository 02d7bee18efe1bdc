//! The single writer thread and group commit.
//!
//! Every write goes through one channel to one thread that owns the write connection. The
//! thread drains whatever queued up while it was busy, applies each write inside its own
//! savepoint, commits the whole batch once, and only then answers the callers. This is what
//! makes "acked means durable" cheap: a busy server pays one commit for hundreds of messages.

use std::sync::Arc;
use std::time::Instant;

use magpie_proto::message::Peer;
use magpie_proto::rest::{UpdateUser, User};
use magpie_proto::{ConversationId, Millis, UserId};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::rows::{self, MESSAGE_COLUMNS};
use crate::{
    Appended, CommitObserver, NewMessage, NewUser, OnCommit, ReadOutcome, StoreError,
    StoreErrorKind, StoreResult,
};

type Reply<T> = oneshot::Sender<StoreResult<T>>;

/// A write, with where to send its result.
pub(super) enum WriteOp {
    CreateUser(NewUser, Reply<User>),
    UpdateUser(UserId, UpdateUser, Millis, Reply<User>),
    DeleteUser(UserId, Reply<bool>),
    RevokeTokens(UserId, Reply<u64>),
    Append(Box<NewMessage>, Option<OnCommit>, Reply<Appended>),
    MarkRead {
        user: UserId,
        conversation: ConversationId,
        seq: u64,
        now: Millis,
        reply: Reply<ReadOutcome>,
    },
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

impl Writer {
    pub(super) fn spawn(
        conn: Connection,
        max_batch: usize,
        observer: Arc<dyn CommitObserver>,
    ) -> StoreResult<Self> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("magpie-sqlite-writer".into())
            .spawn(move || run(conn, rx, max_batch.max(1), observer.as_ref()))
            .map_err(StoreError::internal)?;
        Ok(Self { tx })
    }

    /// Queues a write and waits for its committed result.
    pub(super) async fn submit<T>(&self, make: impl FnOnce(Reply<T>) -> WriteOp) -> StoreResult<T> {
        let (reply, result) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| closed())?;
        result.await.map_err(|_| closed())?
    }

    pub(super) async fn close(&self) -> StoreResult<()> {
        self.submit(WriteOp::Close).await
    }
}

fn closed() -> StoreError {
    StoreError::new(StoreErrorKind::Unavailable, "store is closed")
}

fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<WriteOp>,
    max_batch: usize,
    observer: &dyn CommitObserver,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if let Some(close_reply) = commit_batch(&mut conn, &mut batch, observer) {
            let result = conn
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
    }
}

/// A result computed inside the transaction, delivered once the commit's fate is known.
type Completion = Box<dyn FnOnce(Option<&StoreError>) + Send>;

fn complete<T: Send + 'static>(reply: Reply<T>, result: StoreResult<T>) -> Completion {
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
        WriteOp::Close(r) => drop(r.send(Err(err()))),
    }
}

/// Applies and commits one batch. Returns the reply of a `Close` found in it.
fn commit_batch(
    conn: &mut Connection,
    batch: &mut Vec<WriteOp>,
    observer: &dyn CommitObserver,
) -> Option<Reply<()>> {
    let started = Instant::now();
    let size = batch.len();
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let e = StoreError::from(e);
            tracing::error!(error = %e, "sqlite: cannot begin a write transaction");
            batch.drain(..).for_each(|op| fail(op, &e));
            return None;
        }
    };
    let mut completions = Vec::with_capacity(size);
    let mut close = None;
    for op in batch.drain(..) {
        if let WriteOp::Close(reply) = op {
            close = Some(reply);
            continue;
        }
        match tx.savepoint() {
            Ok(mut sp) => {
                let (completion, ok) = apply(&sp, op);
                let kept = if ok { sp.commit() } else { sp.rollback() };
                if let Err(e) = kept {
                    tracing::error!(error = %e, "sqlite: savepoint failed");
                }
                completions.push(completion);
            }
            Err(e) => fail(op, &StoreError::from(e)),
        }
    }
    let commit_error = tx.commit().err().map(StoreError::from);
    if let Some(e) = &commit_error {
        tracing::error!(error = %e, batch = size, "sqlite: commit failed");
    }
    observer.on_commit(size, started.elapsed());
    completions
        .into_iter()
        .for_each(|c| c(commit_error.as_ref()));
    close
}

/// Applies one write; the flag says whether to keep its savepoint.
fn apply(conn: &Connection, op: WriteOp) -> (Completion, bool) {
    fn done<T: Send + 'static>(reply: Reply<T>, result: StoreResult<T>) -> (Completion, bool) {
        let ok = result.is_ok();
        (complete(reply, result), ok)
    }
    match op {
        WriteOp::CreateUser(user, reply) => done(reply, create_user(conn, user)),
        WriteOp::UpdateUser(id, update, now, reply) => {
            done(reply, update_user(conn, &id, update, now))
        }
        WriteOp::DeleteUser(id, reply) => done(reply, delete_user(conn, &id)),
        WriteOp::RevokeTokens(id, reply) => done(reply, revoke_tokens(conn, &id)),
        WriteOp::Append(message, hook, reply) => {
            let result = append(conn, *message);
            let ok = result.is_ok();
            (complete_append(reply, result, hook), ok)
        }
        WriteOp::MarkRead {
            user,
            conversation,
            seq,
            now,
            reply,
        } => done(reply, mark_read(conn, &user, &conversation, seq, now)),
        WriteOp::Close(reply) => done(reply, Err(closed())),
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
    conn.prepare_cached(
        "UPDATE users SET nickname = ?2, avatar_url = ?3, ext = ?4, updated_at = ?5 WHERE id = ?1",
    )?
    .execute((
        id.as_str(),
        &user.nickname,
        &user.avatar_url,
        rows::json_object(user.ext.as_ref())?,
        now,
    ))?;
    Ok(user)
}

fn delete_user(conn: &Connection, id: &UserId) -> StoreResult<bool> {
    // Deleting revokes the user's tokens: a re-created user of the same id starts above them.
    let deleted = conn
        .prepare_cached(
            "UPDATE users SET deleted = 1, token_generation = token_generation + 1, \
               nickname = NULL, avatar_url = NULL, ext = NULL \
             WHERE id = ?1 AND deleted = 0",
        )?
        .execute([id.as_str()])?;
    conn.prepare_cached("DELETE FROM user_conversations WHERE user_id = ?1")?
        .execute([id.as_str()])?;
    Ok(deleted > 0)
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

/// Bumps a user's change counter; `None` if the user no longer exists.
fn next_version(conn: &Connection, user: &UserId) -> StoreResult<Option<u64>> {
    Ok(conn
        .prepare_cached(
            "UPDATE users SET sync_version = sync_version + 1 WHERE id = ?1 RETURNING sync_version",
        )?
        .query_row([user.as_str()], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|v| v as u64))
}

fn append(conn: &Connection, new: NewMessage) -> StoreResult<Appended> {
    let mut message = new.message;
    let dedupe_sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.sender = ?1 AND m.client_msg_id = ?2"
    );
    if let Some(original) = conn
        .prepare_cached(&dedupe_sql)?
        .query_row((message.from.as_str(), &message.client_msg_id), |r| {
            rows::message(r, 0)
        })
        .optional()?
    {
        return Ok(Appended {
            message: original,
            duplicate: true,
        });
    }

    for user in &new.participants {
        let exists = conn
            .prepare_cached("SELECT 1 FROM users WHERE id = ?1 AND deleted = 0")?
            .exists([user.as_str()])?;
        if !exists {
            return Err(user_not_found(user));
        }
    }

    let conversation = message.conversation_id.as_str();
    let now = message.server_time;
    // The seq comes from the same transaction that inserts the message: no gap can appear,
    // and a rolled-back batch takes its seqs with it.
    let seq: i64 = conn
        .prepare_cached(
            "INSERT INTO conversations (id, kind, last_seq, created_at, updated_at) VALUES (?1, ?2, 1, ?3, ?3) \
             ON CONFLICT (id) DO UPDATE SET last_seq = last_seq + 1, updated_at = excluded.updated_at \
             RETURNING last_seq",
        )?
        .query_row(
            (conversation, rows::kind_to_sql(message.conversation_id.kind()), now),
            |r| r.get(0),
        )?;
    message.seq = seq as u64;
    let Peer::User(recipient) = &message.to;
    conn.prepare_cached(
        "INSERT INTO messages (id, conversation_id, seq, sender, recipient, client_msg_id, content, ext, server_time) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute((
        message.id.0 as i64,
        conversation,
        seq,
        message.from.as_str(),
        recipient.as_str(),
        &message.client_msg_id,
        serde_json::to_string(&message.content).map_err(StoreError::internal)?,
        rows::json_object(message.ext.as_ref())?,
        now,
    ))?;

    for user in &new.participants {
        let Some(version) = next_version(conn, user)? else {
            continue;
        };
        let read_seq = if *user == message.from { seq } else { 0 };
        conn.prepare_cached(
            "INSERT INTO user_conversations (user_id, conversation_id, peer, read_seq, version, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (user_id, conversation_id) DO UPDATE SET \
               version = excluded.version, updated_at = excluded.updated_at, \
               read_seq = max(read_seq, excluded.read_seq)",
        )?
        .execute((
            user.as_str(),
            conversation,
            message.conversation_id.c2c_peer(user).as_ref().map(UserId::as_str),
            read_seq,
            version as i64,
            now,
        ))?;
    }
    Ok(Appended {
        message,
        duplicate: false,
    })
}

fn mark_read(
    conn: &Connection,
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
    let mut state = rows::load_state(conn, user, conversation)?.ok_or_else(not_found)?;
    let target = seq.min(state.last_seq);
    if target <= state.read_seq {
        state.last_message = None;
        return Ok(ReadOutcome {
            state,
            changed: false,
        });
    }
    let version = next_version(conn, user)?.ok_or_else(|| user_not_found(user))?;
    conn.prepare_cached(
        "UPDATE user_conversations SET read_seq = ?3, version = ?4, updated_at = ?5 \
         WHERE user_id = ?1 AND conversation_id = ?2",
    )?
    .execute((
        user.as_str(),
        conversation.as_str(),
        target as i64,
        version as i64,
        now,
    ))?;
    state.read_seq = target;
    state.unread_count = state.last_seq - target;
    state.version = version;
    state.updated_at = now;
    state.last_message = None;
    Ok(ReadOutcome {
        state,
        changed: true,
    })
}
