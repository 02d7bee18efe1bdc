//! Read queries, run on pooled read-only connections off the async runtime.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use magpie_proto::frame::Direction;
use magpie_proto::{ConversationId, ConversationState, UserId};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::durable::Durable;
use super::rows::{self, MESSAGE_COLUMNS, MESSAGES_OF_CONVERSATION, STATE_COLUMNS, STATE_FROM};
use crate::{Anchor, MessagePage, MessageQuery, StoreError, StoreResult, SyncPage, UserRecord};

/// A fixed number of read-only connections, opened on first use and reused. Readers beyond
/// that wait for a connection instead of opening more: opening one (and preparing its
/// statements) costs far more than the queries it would run.
///
/// Where a read runs is the caller's call, by its size. A small read (a point lookup, a page
/// of at most [`INLINE_ROWS`] rows from a key range) runs right on the calling task: it takes
/// tens to a few hundred microseconds on the page cache, less than handing it to another
/// thread and back, which a login storm pays for in context switches. A larger read runs on
/// the blocking pool so it cannot stall the other connections of an async worker.
///
/// A read is answered only once everything it can have seen is durable (see `durable`).
#[derive(Debug)]
pub(super) struct ReadPool {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<tokio::sync::Semaphore>,
    durable: Durable,
}

/// The largest page a read may return and still run on the calling task.
pub(super) const INLINE_ROWS: u32 = 100;

impl ReadPool {
    pub(super) fn new(path: PathBuf, size: usize, durable: Durable) -> Self {
        Self {
            path,
            idle: Arc::new(Mutex::new(Vec::new())),
            permits: Arc::new(tokio::sync::Semaphore::new(size.max(1))),
            durable,
        }
    }

    /// Runs `f` with a read connection: on the calling task when `rows` is at most
    /// [`INLINE_ROWS`], on the blocking pool otherwise.
    pub(super) async fn run<T, F>(&self, rows: u32, f: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(StoreError::internal)?;
        let (idle, path) = (self.idle.clone(), self.path.clone());
        let work = move || {
            let pooled = idle.lock().map_err(StoreError::internal)?.pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => open_reader(&path)?,
            };
            let result = f(&conn);
            idle.lock().map_err(StoreError::internal)?.push(conn);
            drop(permit);
            result
        };
        let value = if rows <= INLINE_ROWS {
            work()?
        } else {
            tokio::task::spawn_blocking(work)
                .await
                .map_err(StoreError::internal)??
        };
        self.durable.wait_after_read().await?;
        Ok(value)
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
    super::tune_statements(&conn)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

pub(super) fn get_user(conn: &Connection, id: &UserId) -> StoreResult<Option<UserRecord>> {
    rows::load_user(conn, id)
}

pub(super) fn max_message_id(conn: &Connection) -> StoreResult<u64> {
    let id: Option<i64> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'max_message_id'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(id.unwrap_or(0) as u64)
}

pub(super) fn get_messages(conn: &Connection, q: &MessageQuery) -> StoreResult<MessagePage> {
    // Time anchors become seq anchors: server times never decrease along a conversation's
    // seqs, so the first seq at or after the time splits the conversation in two.
    let anchor = match q.anchor {
        Anchor::Time(time) => {
            let first = first_seq_at_or_after(conn, &q.conversation_id, time)?;
            match q.direction {
                Direction::Forward => Anchor::Seq(first.saturating_sub(1)),
                Direction::Backward => Anchor::Seq(first),
            }
        }
        other => other,
    };
    let (filter, order, bound) = match (q.direction, anchor) {
        (Direction::Backward, Anchor::Seq(seq)) => ("AND m.seq < ?2", "DESC", seq),
        (Direction::Backward, _) => ("", "DESC", 0),
        (Direction::Forward, Anchor::Seq(seq)) => ("AND m.seq > ?2", "ASC", seq),
        (Direction::Forward, _) => ("", "ASC", 0),
    };
    // Fetch one extra row to learn whether the page is the last one. ?2 may go unused: SQLite
    // numbers parameters by their largest index, so binding it anyway is fine.
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM {MESSAGES_OF_CONVERSATION} {filter} \
         AND m.seq >= ?4 ORDER BY m.seq {order} LIMIT ?3"
    );
    let bound = bound.min(i64::MAX as u64) as i64;
    let limit = i64::from(q.limit) + 1;
    let min_seq = q.min_seq.min(i64::MAX as u64) as i64;
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut messages = stmt
        .query_map((q.conversation_id.as_str(), bound, limit, min_seq), |row| {
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

/// The first seq whose server time is at or after `time` (one past the last seq if none), by
/// binary search over the conversation's key: a few point reads, whatever its length.
fn first_seq_at_or_after(
    conn: &Connection,
    conversation: &ConversationId,
    time: i64,
) -> StoreResult<u64> {
    let Some((last, _)) = conn
        .prepare_cached(rows::LAST_MESSAGE_SQL)?
        .query_row([conversation.as_str()], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()?
    else {
        return Ok(1);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT seq, server_time FROM messages \
         WHERE conversation_key = (SELECT key FROM conversations WHERE id = ?1) AND seq >= ?2 \
         ORDER BY seq LIMIT 1",
    )?;
    // Invariant: every seq below `low` is before `time`; every seq from `high` on is not.
    let (mut low, mut high) = (1i64, last + 1);
    while low < high {
        let mid = low + (high - low) / 2;
        let found: Option<(i64, i64)> = stmt
            .query_row((conversation.as_str(), mid), |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match found {
            Some((seq, server_time)) if server_time < time => low = seq + 1,
            _ => high = mid,
        }
    }
    Ok(low as u64)
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
        .prepare_cached(rows::CURRENT_VERSION_SQL)?
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
    let rows = tx
        .prepare_cached(&sql)?
        .query_map(
            (user.as_str(), since as i64, i64::from(limit) + 1),
            rows::conversation_state,
        )?
        .map(|state| {
            state.map(|s| {
                let version = s.version;
                (s, version)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SyncPage::from_rows(rows, limit, current))
}

pub(super) fn changed_group_conversations(
    conn: &Connection,
    user: &UserId,
    since: u64,
    limit: u32,
) -> StoreResult<SyncPage> {
    // One read transaction: the clock and the stamps come from the same snapshot, and the
    // single writer stamps in commit order, so no stamp at or below the clock can appear later.
    let tx = conn.unchecked_transaction()?;
    let clock: Option<i64> = tx
        .prepare_cached("SELECT value FROM meta WHERE key = 'group_clock'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    let clock = clock.unwrap_or(0) as u64;
    // A cursor from the future (a restored backup) would hide every change: start over.
    let since = if since > clock { 0 } else { since };
    let sql = format!(
        "{} WHERE gm.user_id = ?1 AND c.activity > ?2 ORDER BY c.activity LIMIT ?3",
        rows::GROUP_STATE_SELECT
    );
    let stamped = tx
        .prepare_cached(&sql)?
        .query_map((user.as_str(), since as i64, i64::from(limit) + 1), |row| {
            Ok((
                rows::conversation_state(row)?,
                row.get::<_, i64>(rows::ACTIVITY_COLUMN)? as u64,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SyncPage::from_rows(stamped, limit, clock))
}

pub(super) fn conversation_state(
    conn: &Connection,
    user: &UserId,
    conversation: &ConversationId,
) -> StoreResult<Option<ConversationState>> {
    match rows::load_state(conn, user, conversation)? {
        Some(state) => Ok(Some(state)),
        None => rows::load_group_state(conn, user, conversation),
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    #[test]
    fn cached_statements_are_not_prepared_again_for_new_values() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("r.db");
        let mut writer = super::super::open_connection(&path).expect("open");
        super::super::schema::migrate(&mut writer).expect("migrate");
        let reader = super::open_reader(&path).expect("reader");
        let sql = "SELECT id FROM users WHERE id > ?1 ORDER BY id LIMIT ?2";
        for limit in [1i64, 5, 2, 7] {
            let mut stmt = reader.prepare_cached(sql).expect("prepare");
            let mut rows = stmt.query(("a", limit)).expect("query");
            while rows.next().expect("row").is_some() {}
        }
        let stmt = reader.prepare_cached(sql).expect("prepare");
        assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0);
    }
}
