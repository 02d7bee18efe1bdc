//! Read queries, run on pooled read-only connections off the async runtime.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use magpie_proto::frame::Direction;
use magpie_proto::{ConversationId, ConversationState, UserId};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::rows::{self, MESSAGE_COLUMNS, STATE_COLUMNS, STATE_FROM};
use crate::{Anchor, MessagePage, MessageQuery, StoreError, StoreResult, SyncPage, UserRecord};

/// Read-only connections, opened on demand and kept for reuse.
#[derive(Debug)]
pub(super) struct ReadPool {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Connection>>>,
    keep: usize,
}

impl ReadPool {
    pub(super) fn new(path: PathBuf, keep: usize) -> Self {
        Self {
            path,
            idle: Arc::new(Mutex::new(Vec::new())),
            keep: keep.max(1),
        }
    }

    /// Runs `f` with a read connection on the blocking pool.
    pub(super) async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let (idle, path, keep) = (self.idle.clone(), self.path.clone(), self.keep);
        tokio::task::spawn_blocking(move || {
            let pooled = idle.lock().map_err(StoreError::internal)?.pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => open_reader(&path)?,
            };
            let result = f(&conn);
            let mut idle = idle.lock().map_err(StoreError::internal)?;
            if idle.len() < keep {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(StoreError::internal)?
    }
}

fn open_reader(path: &std::path::Path) -> StoreResult<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

pub(super) fn get_user(conn: &Connection, id: &UserId) -> StoreResult<Option<UserRecord>> {
    rows::load_user(conn, id)
}

pub(super) fn max_message_id(conn: &Connection) -> StoreResult<u64> {
    let id: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) FROM messages", [], |r| {
        r.get(0)
    })?;
    Ok(id as u64)
}

pub(super) fn get_messages(conn: &Connection, q: &MessageQuery) -> StoreResult<MessagePage> {
    let (filter, order) = match (q.direction, q.anchor) {
        (Direction::Backward, Anchor::None) => ("", "DESC"),
        (Direction::Backward, Anchor::Seq(_)) => ("AND m.seq < ?2", "DESC"),
        (Direction::Backward, Anchor::Time(_)) => ("AND m.server_time < ?2", "DESC"),
        (Direction::Forward, Anchor::None) => ("", "ASC"),
        (Direction::Forward, Anchor::Seq(_)) => ("AND m.seq > ?2", "ASC"),
        (Direction::Forward, Anchor::Time(_)) => ("AND m.server_time >= ?2", "ASC"),
    };
    let anchor = match q.anchor {
        Anchor::None => 0,
        Anchor::Seq(seq) => seq.min(i64::MAX as u64) as i64,
        Anchor::Time(t) => t,
    };
    // Fetch one extra row to learn whether the page is the last one. ?2 may go unused: SQLite
    // numbers parameters by their largest index, so binding it anyway is fine.
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.conversation_id = ?1 {filter} \
         ORDER BY m.seq {order} LIMIT ?3"
    );
    let limit = i64::from(q.limit) + 1;
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut messages = stmt
        .query_map((q.conversation_id.as_str(), anchor, limit), |row| {
            rows::message(row, 0)
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let has_more = messages.len() > q.limit as usize;
    messages.truncate(q.limit as usize);
    if q.direction == Direction::Backward {
        messages.reverse();
    }
    Ok(MessagePage { messages, has_more })
}

pub(super) fn changed_conversations(
    conn: &Connection,
    user: &UserId,
    since: u64,
    limit: u32,
) -> StoreResult<SyncPage> {
    // One read transaction, so the user's version and the rows come from the same snapshot.
    let tx = conn.unchecked_transaction()?;
    let current: Option<i64> = tx
        .prepare_cached("SELECT sync_version FROM users WHERE id = ?1 AND deleted = 0")?
        .query_row([user.as_str()], |r| r.get(0))
        .optional()?;
    let Some(current) = current.map(|v| v as u64) else {
        return Ok(SyncPage {
            conversations: Vec::new(),
            version: 0,
            has_more: false,
        });
    };
    // A cursor from the future (a restored backup, a wiped server) would hide every change
    // forever; start over instead.
    let since = if since > current { 0 } else { since };
    let sql = format!(
        "SELECT {STATE_COLUMNS}, {MESSAGE_COLUMNS} FROM {STATE_FROM} \
         WHERE uc.user_id = ?1 AND uc.version > ?2 ORDER BY uc.version LIMIT ?3"
    );
    let mut conversations = tx
        .prepare_cached(&sql)?
        .query_map(
            (user.as_str(), since as i64, i64::from(limit) + 1),
            rows::conversation_state,
        )?
        .collect::<Result<Vec<ConversationState>, _>>()?;
    let has_more = conversations.len() > limit as usize;
    conversations.truncate(limit as usize);
    let version = match conversations.last() {
        Some(last) if has_more => last.version,
        _ => current,
    };
    Ok(SyncPage {
        conversations,
        version,
        has_more,
    })
}

pub(super) fn conversation_state(
    conn: &Connection,
    user: &UserId,
    conversation: &ConversationId,
) -> StoreResult<Option<ConversationState>> {
    rows::load_state(conn, user, conversation)
}
