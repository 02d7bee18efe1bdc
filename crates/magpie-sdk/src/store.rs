//! The local SQLite cache of one user: messages, conversations, the sync version, the
//! outbox of pending sends, and joined groups with the members known of them (`groups`).
//!
//! [`Db`] is the synchronous API over one `rusqlite::Connection`; every method that writes does
//! so in one transaction, so a crash leaves either all of a delivered page (messages *and* the
//! cursor that covers them) or none of it. [`Store`] shares a `Db` behind a mutex and runs each
//! call on tokio's blocking pool, so async code never blocks a runtime worker on disk I/O.
//!
//! This module decides nothing about ordering or delivery: it stores what the session hands it
//! and reports what it found (for example whether a delivered message was a pending local send).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use magpie_proto::frame::SendRequest;
use magpie_proto::{
    ConversationId, ConversationState, ErrorBody, Message, MessageContent, MessageId, Millis,
    UserId,
};

use crate::error::{Error, Result};
use crate::model::{Conversation, LocalMessage, LocalPage, MessageStatus};

mod groups;

pub(crate) use groups::GroupApply;

/// Bumped whenever the schema changes; a database from a newer SDK is refused. Every table is
/// created `IF NOT EXISTS`, so an older database gains the tables it lacks when opened, and the
/// columns it lacks from [`ADDED_COLUMNS`].
/// 2: `groups` and `group_members`.
/// 3: group messages: `messages.mentions`, `conversations.mention_seq` (and the group sync
///    cursor, a `meta` row).
const SCHEMA_VERSION: i64 = 3;

/// Columns added to existing tables after their first version: `(table, column, definition)`.
/// Added on open to a database that lacks them; the tables in [`SCHEMA`] already have them.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("messages", "mentions", "TEXT"),
    ("conversations", "mention_seq", "INTEGER NOT NULL DEFAULT 0"),
];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS conversations (
    conversation_id  TEXT PRIMARY KEY,
    peer             TEXT,
    last_seq         INTEGER NOT NULL DEFAULT 0,
    read_seq         INTEGER NOT NULL DEFAULT 0,
    unread_count     INTEGER NOT NULL DEFAULT 0,
    -- highest seq held with no gap below; NULL until the device first pulls the conversation
    cursor           INTEGER,
    last_message     TEXT,
    last_message_seq INTEGER NOT NULL DEFAULT 0,
    last_activity    INTEGER NOT NULL DEFAULT 0,
    -- a local mark_read the server has not acknowledged yet
    pending_read_seq INTEGER,
    version          INTEGER NOT NULL DEFAULT 0,
    -- the newest message known to mention this user (by id or @all); mentioned while unread
    mention_seq      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS conversations_by_activity
    ON conversations (last_activity DESC, conversation_id);
CREATE TABLE IF NOT EXISTS messages (
    local_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL,
    message_id      INTEGER UNIQUE,
    seq             INTEGER,
    sender          TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    client_msg_id   TEXT NOT NULL,
    content         TEXT NOT NULL,
    ext             TEXT,
    server_time     INTEGER,
    local_time      INTEGER NOT NULL,
    status          INTEGER NOT NULL,
    error           TEXT,
    mentions        TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_seq
    ON messages (conversation_id, seq) WHERE seq IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_client_id
    ON messages (sender, client_msg_id);
CREATE TABLE IF NOT EXISTS outbox (
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
    client_msg_id   TEXT NOT NULL UNIQUE,
    conversation_id TEXT NOT NULL,
    request         TEXT NOT NULL
);
-- groups this user belongs to: the GroupInfo as JSON, its version for the write guards
CREATE TABLE IF NOT EXISTS groups (
    group_id TEXT PRIMARY KEY,
    version  INTEGER NOT NULL,
    info     TEXT NOT NULL
);
-- members of cached groups this device knows of: the GroupMember as JSON
CREATE TABLE IF NOT EXISTS group_members (
    group_id TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    member   TEXT NOT NULL,
    PRIMARY KEY (group_id, user_id)
);
";

const MESSAGE_COLUMNS: &str = "local_id, conversation_id, message_id, seq, sender, recipient, \
     client_msg_id, content, ext, server_time, local_time, status, error, mentions";

const CONVERSATION_COLUMNS: &str = "conversation_id, peer, last_seq, read_seq, cursor, \
     last_message, last_message_seq, last_activity, pending_read_seq, version, mention_seq";

/// The `meta` keys of the two sync cursors.
const SYNC_VERSION_KEY: &str = "sync_version";
const GROUPS_SYNC_VERSION_KEY: &str = "groups_sync_version";

/// How a delivered message relates to what the cache already held.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Prior {
    /// Not in the cache before.
    New,
    /// A send from this device that was still waiting for its answer (or had failed).
    LocalPending,
    /// Already stored (for example from this device's send answer).
    Known,
}

/// Messages to store for one conversation, with the cursor that covers them.
#[derive(Debug)]
pub(crate) struct DeliveryBatch {
    pub(crate) conversation_id: ConversationId,
    pub(crate) messages: Vec<Message>,
    pub(crate) cursor: u64,
    /// Seqs up to this one are not visible to this user (below their join point in a group):
    /// they can never be read, so they are not unread either (0: nothing known).
    pub(crate) read_floor: u64,
}

impl DeliveryBatch {
    pub(crate) fn new(
        conversation_id: ConversationId,
        messages: Vec<Message>,
        cursor: u64,
    ) -> Self {
        Self {
            conversation_id,
            messages,
            cursor,
            read_floor: 0,
        }
    }
}

/// The two `sync` cursors (PROTOCOL.md `sync`): the user's own change counter and the group
/// activity clock.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) struct SyncCursors {
    /// Pass as `since`.
    pub(crate) version: u64,
    /// Pass as `groups_since`.
    pub(crate) groups_version: u64,
}

/// What storing a [`DeliveryBatch`] did.
#[derive(Debug)]
pub(crate) struct Delivered {
    pub(crate) conversation: Conversation,
    pub(crate) messages: Vec<(Message, Prior)>,
}

/// The oldest queued send.
#[derive(Debug, Clone)]
pub(crate) struct OutboxItem {
    pub(crate) client_msg_id: String,
    pub(crate) request: SendRequest,
}

/// What [`Db::requeue`] found.
#[derive(Debug)]
pub(crate) enum Requeue {
    /// The failed message is queued again.
    Queued(LocalMessage),
    /// It is already waiting in the outbox.
    Pending,
    /// The server has it already.
    AlreadySent(Message),
    /// No message from this user with that id.
    NotFound,
}

/// One conversation row, read fully so that every change is a read-modify-write in Rust
/// rather than SQL arithmetic spread over several statements.
#[derive(Debug, Clone)]
struct ConvRow {
    id: ConversationId,
    peer: Option<UserId>,
    last_seq: u64,
    read_seq: u64,
    cursor: Option<u64>,
    last_message: Option<Message>,
    last_message_seq: u64,
    last_activity: Millis,
    pending_read_seq: Option<u64>,
    version: u64,
    mention_seq: u64,
}

impl ConvRow {
    fn new(id: ConversationId, me: &UserId) -> Self {
        Self {
            peer: id.c2c_peer(me),
            id,
            last_seq: 0,
            read_seq: 0,
            cursor: None,
            last_message: None,
            last_message_seq: 0,
            last_activity: 0,
            pending_read_seq: None,
            version: 0,
            mention_seq: 0,
        }
    }

    fn unread(&self) -> u64 {
        self.last_seq.saturating_sub(self.read_seq)
    }

    /// An unread message mentions this user.
    fn mentioned(&self) -> bool {
        self.mention_seq > self.read_seq
    }

    /// Takes in the server's word on mentions as of its `last_seq`: mentioned means some
    /// message up to `last_seq` mentions the user (which one is not said, so the newest is
    /// assumed); not mentioned clears what this device knew up to there.
    fn see_mention_state(&mut self, mentioned: bool, last_seq: u64) {
        if mentioned {
            self.mention_seq = self.mention_seq.max(last_seq);
        } else if self.mention_seq <= last_seq {
            self.mention_seq = 0;
        }
    }

    /// Records a delivered message's effect on the read state: one's own message reads
    /// everything up to it (as on the server; a timeline notice is no send, even when this
    /// user caused it), and one that mentions this user marks the conversation.
    fn see_read_effect(&mut self, me: &UserId, message: &Message) {
        if &message.from == me {
            if !is_notice(message) {
                self.read_seq = self.read_seq.max(message.seq);
            }
        } else if message.mentions.as_ref().is_some_and(|m| m.includes(me)) {
            self.mention_seq = self.mention_seq.max(message.seq);
        }
    }

    fn to_conversation(&self) -> Conversation {
        Conversation {
            conversation_id: self.id.clone(),
            kind: self.id.kind(),
            peer: self.peer.clone(),
            last_seq: self.last_seq,
            read_seq: self.read_seq,
            unread_count: self.unread(),
            mentioned: self.mentioned(),
            last_message: self.last_message.clone(),
            last_activity: self.last_activity,
        }
    }

    /// Takes a message as the newest if it is; keeps activity and `last_seq` monotonic.
    fn see_message(&mut self, message: &Message) {
        self.last_seq = self.last_seq.max(message.seq);
        if message.seq >= self.last_message_seq {
            self.last_message_seq = message.seq;
            self.last_message = Some(message.clone());
        }
        self.last_activity = self.last_activity.max(message.server_time);
    }
}

/// A server-written group timeline line ("bob joined").
fn is_notice(message: &Message) -> bool {
    matches!(message.content, MessageContent::GroupNotice(_))
}

/// Seqs, versions and timestamps stay below 2^53 on the wire; clamp rather than wrap if a
/// peer ever breaks that.
fn sql_u64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_sql_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Message ids use all 64 bits; they are stored as the same bit pattern in SQLite's i64.
fn sql_message_id(id: MessageId) -> i64 {
    i64::from_ne_bytes(id.0.to_ne_bytes())
}

fn from_sql_message_id(n: i64) -> MessageId {
    MessageId(u64::from_ne_bytes(n.to_ne_bytes()))
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(Error::storage)
}

fn conversion_error(
    idx: usize,
    e: impl std::error::Error + Send + Sync + 'static,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e))
}

fn json_col<T: DeserializeOwned>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text).map_err(|e| conversion_error(idx, e))
}

fn opt_json_col<T: DeserializeOwned>(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<T>> {
    let text: Option<String> = row.get(idx)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| conversion_error(idx, e)))
        .transpose()
}

fn conversation_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<ConversationId> {
    let text: String = row.get(idx)?;
    ConversationId::parse(&text).map_err(|e| conversion_error(idx, e))
}

fn user_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<UserId> {
    let text: String = row.get(idx)?;
    UserId::new(text).map_err(|e| conversion_error(idx, e))
}

fn read_message_row(row: &Row<'_>) -> rusqlite::Result<LocalMessage> {
    let status: i64 = row.get(11)?;
    Ok(LocalMessage {
        local_id: row.get(0)?,
        conversation_id: conversation_col(row, 1)?,
        message_id: row.get::<_, Option<i64>>(2)?.map(from_sql_message_id),
        seq: row.get::<_, Option<i64>>(3)?.map(from_sql_u64),
        from: user_col(row, 4)?,
        to: json_col(row, 5)?,
        client_msg_id: row.get(6)?,
        content: json_col(row, 7)?,
        ext: opt_json_col(row, 8)?,
        server_time: row.get(9)?,
        local_time: row.get(10)?,
        status: MessageStatus::from_i64(status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                11,
                Type::Integer,
                format!("unknown message status {status}").into(),
            )
        })?,
        error: opt_json_col(row, 12)?,
        mentions: opt_json_col(row, 13)?,
    })
}

fn read_conv_row(row: &Row<'_>) -> rusqlite::Result<ConvRow> {
    let peer: Option<String> = row.get(1)?;
    Ok(ConvRow {
        id: conversation_col(row, 0)?,
        peer: peer
            .map(|p| UserId::new(p).map_err(|e| conversion_error(1, e)))
            .transpose()?,
        last_seq: from_sql_u64(row.get(2)?),
        read_seq: from_sql_u64(row.get(3)?),
        cursor: row.get::<_, Option<i64>>(4)?.map(from_sql_u64),
        last_message: opt_json_col(row, 5)?,
        last_message_seq: from_sql_u64(row.get(6)?),
        last_activity: row.get(7)?,
        pending_read_seq: row.get::<_, Option<i64>>(8)?.map(from_sql_u64),
        version: from_sql_u64(row.get(9)?),
        mention_seq: from_sql_u64(row.get(10)?),
    })
}

fn load_conv(tx: &Connection, id: &ConversationId) -> Result<Option<ConvRow>> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE conversation_id = ?1"
    ))?;
    Ok(stmt.query_row([id.as_str()], read_conv_row).optional()?)
}

fn save_conv(tx: &Connection, row: &ConvRow) -> Result<()> {
    let last_message = row.last_message.as_ref().map(to_json).transpose()?;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO conversations (conversation_id, peer, last_seq, read_seq, unread_count, \
             cursor, last_message, last_message_seq, last_activity, pending_read_seq, version, \
             mention_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (conversation_id) DO UPDATE SET
             peer = excluded.peer, last_seq = excluded.last_seq, read_seq = excluded.read_seq,
             unread_count = excluded.unread_count, cursor = excluded.cursor,
             last_message = excluded.last_message, last_message_seq = excluded.last_message_seq,
             last_activity = excluded.last_activity, pending_read_seq = excluded.pending_read_seq,
             version = excluded.version, mention_seq = excluded.mention_seq",
    )?;
    stmt.execute(params![
        row.id.as_str(),
        row.peer.as_ref().map(UserId::as_str),
        sql_u64(row.last_seq),
        sql_u64(row.read_seq),
        sql_u64(row.unread()),
        row.cursor.map(sql_u64),
        last_message,
        sql_u64(row.last_message_seq),
        row.last_activity,
        row.pending_read_seq.map(sql_u64),
        sql_u64(row.version),
        sql_u64(row.mention_seq),
    ])?;
    Ok(())
}

/// Adds the [`ADDED_COLUMNS`] a database from an older SDK lacks.
fn add_missing_columns(conn: &Connection) -> Result<()> {
    for (table, column, definition) in ADDED_COLUMNS {
        let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
        let names = stmt
            .query_map([], |row| row.get::<_, String>(1))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if !names.iter().any(|name| name == column) {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    Ok(())
}

/// The local database of one user. Synchronous; see [`Store`] for async use.
#[derive(Debug)]
pub(crate) struct Db {
    conn: Connection,
    me: UserId,
}

impl Db {
    /// Opens (creating if needed) the database file of a user.
    pub(crate) fn open(path: &Path, me: UserId) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::storage)?;
        }
        Self::init(Connection::open(path)?, me)
    }

    /// An in-memory database, for tests.
    #[cfg(test)]
    pub(crate) fn open_in_memory(me: UserId) -> Result<Self> {
        Self::init(Connection::open_in_memory()?, me)
    }

    fn init(conn: Connection, me: UserId) -> Result<Self> {
        // WAL lets readers (conversation lists) run while a page is being written; NORMAL
        // survives an app crash, which is the failure a client cares about.
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(Error::new(
                crate::error::ErrorKind::Storage,
                format!(
                    "the local database has schema {version}, newer than this SDK's {SCHEMA_VERSION}"
                ),
            ));
        }
        if version < SCHEMA_VERSION {
            // One transaction: a crash mid-upgrade leaves the old schema and version.
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let upgraded = conn
                .execute_batch(SCHEMA)
                .map_err(Error::from)
                .and_then(|()| add_missing_columns(&conn))
                .and_then(|()| Ok(conn.pragma_update(None, "user_version", SCHEMA_VERSION)?));
            match upgraded {
                Ok(()) => conn.execute_batch("COMMIT")?,
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(e);
                }
            }
        }
        Ok(Self { conn, me })
    }

    fn tx(&mut self) -> Result<Transaction<'_>> {
        Ok(self.conn.transaction()?)
    }

    /// The cursors to pass to the next `sync` (`since`, `groups_since`).
    pub(crate) fn sync_cursors(&self) -> Result<SyncCursors> {
        let read = |key: &str| -> Result<u64> {
            let value: Option<String> = self
                .conn
                .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([key], |row| row.get(0))
                .optional()?;
            Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
        };
        Ok(SyncCursors {
            version: read(SYNC_VERSION_KEY)?,
            groups_version: read(GROUPS_SYNC_VERSION_KEY)?,
        })
    }

    /// Records that everything up to both sync cursors has been pulled (one transaction, so
    /// the two never disagree after a crash).
    pub(crate) fn set_sync_cursors(&mut self, cursors: SyncCursors) -> Result<()> {
        let tx = self.tx()?;
        for (key, value) in [
            (SYNC_VERSION_KEY, cursors.version),
            (GROUPS_SYNC_VERSION_KEY, cursors.groups_version),
        ] {
            tx.prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute([key, &value.to_string()])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The persisted cursor of every conversation this device has pulled.
    pub(crate) fn cursors(&self) -> Result<Vec<(ConversationId, u64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT conversation_id, cursor FROM conversations WHERE cursor IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((conversation_col(row, 0)?, from_sql_u64(row.get(1)?)))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Stores delivered messages and advances the conversations' cursors, all in one
    /// transaction.
    pub(crate) fn apply_delivery(&mut self, batches: Vec<DeliveryBatch>) -> Result<Vec<Delivered>> {
        let me = self.me.clone();
        let tx = self.tx()?;
        let mut out = Vec::with_capacity(batches.len());
        for batch in batches {
            let mut row = load_conv(&tx, &batch.conversation_id)?
                .unwrap_or_else(|| ConvRow::new(batch.conversation_id.clone(), &me));
            let mut messages = Vec::with_capacity(batch.messages.len());
            for message in batch.messages {
                let prior = upsert_message(&tx, &me, &message)?;
                row.see_read_effect(&me, &message);
                row.see_message(&message);
                messages.push((message, prior));
            }
            row.read_seq = row.read_seq.max(batch.read_floor);
            row.cursor = Some(row.cursor.unwrap_or(0).max(batch.cursor));
            save_conv(&tx, &row)?;
            out.push(Delivered {
                conversation: row.to_conversation(),
                messages,
            });
        }
        tx.commit()?;
        Ok(out)
    }

    /// Records conversation states returned by `sync`. `new_cursors` gives the starting
    /// cursor of conversations this device has not pulled before.
    pub(crate) fn apply_sync_states(
        &mut self,
        states: &[ConversationState],
        new_cursors: &HashMap<ConversationId, u64>,
    ) -> Result<Vec<Conversation>> {
        let me = self.me.clone();
        let tx = self.tx()?;
        let mut out = Vec::with_capacity(states.len());
        for state in states {
            let id = &state.conversation_id;
            let mut row = load_conv(&tx, id)?.unwrap_or_else(|| ConvRow::new(id.clone(), &me));
            if state.peer.is_some() {
                row.peer.clone_from(&state.peer);
            }
            row.last_seq = row.last_seq.max(state.last_seq);
            row.read_seq = row.read_seq.max(state.read_seq);
            if row.pending_read_seq.is_some_and(|p| p <= state.read_seq) {
                row.pending_read_seq = None;
            }
            if let Some(last) = &state.last_message {
                row.see_message(last);
            }
            row.see_mention_state(state.mentioned, state.last_seq);
            row.version = row.version.max(state.version);
            if row.cursor.is_none() {
                row.cursor = new_cursors.get(id).copied();
            }
            save_conv(&tx, &row)?;
            out.push(row.to_conversation());
        }
        tx.commit()?;
        Ok(out)
    }

    /// Conversations whose messages the server refuses to show (a group this user left):
    /// what lies beyond the held cursor cannot be read, so it does not count as unread.
    /// Returns the updated conversations.
    pub(crate) fn cap_unreachable(
        &mut self,
        held: &[(ConversationId, u64)],
    ) -> Result<Vec<Conversation>> {
        let tx = self.tx()?;
        let mut out = Vec::with_capacity(held.len());
        for (id, cursor) in held {
            let Some(mut row) = load_conv(&tx, id)? else {
                continue;
            };
            let reachable = (*cursor).max(row.read_seq);
            if row.last_seq > reachable || row.last_message_seq > reachable {
                row.last_seq = row.last_seq.min(reachable);
                if row.last_message_seq > reachable {
                    // Not shown to this user (sent after they left): the newest cached one
                    // stands in.
                    row.last_message = newest_stored(&tx, id, reachable)?
                        .as_ref()
                        .and_then(LocalMessage::to_message);
                    row.last_message_seq = row.last_message.as_ref().map_or(0, |m| m.seq);
                }
                save_conv(&tx, &row)?;
                out.push(row.to_conversation());
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Raises a conversation's read seq (from the server: an answer to `mark_read` or another
    /// device's `conversation_read`). Returns the updated conversation, `None` if unknown.
    pub(crate) fn apply_read(
        &mut self,
        id: &ConversationId,
        read_seq: u64,
    ) -> Result<Option<Conversation>> {
        self.update_read(id, read_seq, None)
    }

    /// Records the server's answer to `mark_read`: its read seq and mention marker.
    pub(crate) fn apply_read_state(
        &mut self,
        state: &ConversationState,
    ) -> Result<Option<Conversation>> {
        self.update_read(
            &state.conversation_id,
            state.read_seq,
            Some((state.mentioned, state.last_seq)),
        )
    }

    fn update_read(
        &mut self,
        id: &ConversationId,
        read_seq: u64,
        mention_state: Option<(bool, u64)>,
    ) -> Result<Option<Conversation>> {
        let tx = self.tx()?;
        let Some(mut row) = load_conv(&tx, id)? else {
            return Ok(None);
        };
        row.read_seq = row.read_seq.max(read_seq);
        if row.pending_read_seq.is_some_and(|p| p <= read_seq) {
            row.pending_read_seq = None;
        }
        if let Some((mentioned, last_seq)) = mention_state {
            row.see_mention_state(mentioned, last_seq);
        }
        save_conv(&tx, &row)?;
        tx.commit()?;
        Ok(Some(row.to_conversation()))
    }

    /// Marks a conversation read locally up to `up_to` (default: everything known) and
    /// remembers that the server must be told. Returns the conversation and the read seq to
    /// send, `None` if the conversation is unknown.
    pub(crate) fn mark_read_locally(
        &mut self,
        id: &ConversationId,
        up_to: Option<u64>,
    ) -> Result<Option<(Conversation, u64)>> {
        let tx = self.tx()?;
        let Some(mut row) = load_conv(&tx, id)? else {
            return Ok(None);
        };
        let target = up_to.unwrap_or(row.last_seq).min(row.last_seq);
        if target > row.read_seq {
            row.read_seq = target;
            row.pending_read_seq = Some(target);
            save_conv(&tx, &row)?;
        }
        tx.commit()?;
        Ok(Some((row.to_conversation(), row.read_seq)))
    }

    /// Forgets a pending read the server refused.
    pub(crate) fn drop_pending_read(&self, id: &ConversationId) -> Result<()> {
        self.conn.execute(
            "UPDATE conversations SET pending_read_seq = NULL WHERE conversation_id = ?1",
            [id.as_str()],
        )?;
        Ok(())
    }

    /// Local reads the server has not acknowledged yet.
    pub(crate) fn pending_reads(&self) -> Result<Vec<(ConversationId, u64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT conversation_id, pending_read_seq FROM conversations \
             WHERE pending_read_seq IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((conversation_col(row, 0)?, from_sql_u64(row.get(1)?)))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Writes a new send to the messages table (status sending) and the outbox, in one
    /// transaction.
    pub(crate) fn insert_pending_send(
        &mut self,
        conversation_id: &ConversationId,
        request: &SendRequest,
        now: Millis,
    ) -> Result<LocalMessage> {
        let me = self.me.clone();
        let tx = self.tx()?;
        tx.prepare_cached(
            "INSERT INTO messages (conversation_id, sender, recipient, client_msg_id, content, \
                 ext, local_time, status, mentions)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            conversation_id.as_str(),
            me.as_str(),
            to_json(&request.to)?,
            request.client_msg_id,
            to_json(&request.content)?,
            request.ext.as_ref().map(to_json).transpose()?,
            now,
            MessageStatus::Sending.as_i64(),
            request.mentions.as_ref().map(to_json).transpose()?,
        ])?;
        let local_id = tx.last_insert_rowid();
        tx.prepare_cached(
            "INSERT INTO outbox (client_msg_id, conversation_id, request) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![
            request.client_msg_id,
            conversation_id.as_str(),
            to_json(request)?
        ])?;
        let mut row = load_conv(&tx, conversation_id)?
            .unwrap_or_else(|| ConvRow::new(conversation_id.clone(), &me));
        row.last_activity = row.last_activity.max(now);
        save_conv(&tx, &row)?;
        tx.commit()?;
        Ok(LocalMessage {
            local_id,
            conversation_id: conversation_id.clone(),
            message_id: None,
            seq: None,
            from: me,
            to: request.to.clone(),
            client_msg_id: request.client_msg_id.clone(),
            content: request.content.clone(),
            ext: request.ext.clone(),
            server_time: None,
            local_time: now,
            status: MessageStatus::Sending,
            error: None,
            mentions: request.mentions.clone(),
        })
    }

    /// The oldest queued send. A row that cannot be decoded any more is failed and skipped
    /// so that it cannot block the queue.
    pub(crate) fn outbox_head(&mut self) -> Result<Option<OutboxItem>> {
        loop {
            let row: Option<(String, String)> = self
                .conn
                .query_row(
                    "SELECT client_msg_id, request FROM outbox ORDER BY position LIMIT 1",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let Some((client_msg_id, request)) = row else {
                return Ok(None);
            };
            match serde_json::from_str::<SendRequest>(&request) {
                Ok(request) => {
                    return Ok(Some(OutboxItem {
                        client_msg_id,
                        request,
                    }));
                }
                Err(e) => {
                    tracing::error!(%client_msg_id, error = %e, "undecodable outbox entry; failing it");
                    let body = ErrorBody::bad_request(format!("undecodable outbox entry: {e}"));
                    self.mark_failed(&client_msg_id, &body)?;
                }
            }
        }
    }

    /// How many sends are queued.
    pub(crate) fn outbox_len(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |row| row.get(0))?;
        Ok(from_sql_u64(n))
    }

    /// Records the server's answer to a send: the local row becomes the stored message and
    /// leaves the outbox. Returns whether the row was still pending (so that the status change
    /// is reported once even if a fetched page stored the message first).
    pub(crate) fn mark_sent(&mut self, message: &Message) -> Result<bool> {
        let me = self.me.clone();
        let tx = self.tx()?;
        let prior = upsert_message(&tx, &me, message)?;
        tx.commit()?;
        Ok(prior == Prior::LocalPending)
    }

    /// Records that the server rejected a send. Returns the conversation if a pending row
    /// was failed.
    pub(crate) fn mark_failed(
        &mut self,
        client_msg_id: &str,
        error: &ErrorBody,
    ) -> Result<Option<ConversationId>> {
        let me = self.me.clone();
        let tx = self.tx()?;
        let conversation: Option<ConversationId> = tx
            .query_row(
                "UPDATE messages SET status = ?1, error = ?2
                 WHERE sender = ?3 AND client_msg_id = ?4 AND status = ?5
                 RETURNING conversation_id",
                params![
                    MessageStatus::Failed.as_i64(),
                    to_json(error)?,
                    me.as_str(),
                    client_msg_id,
                    MessageStatus::Sending.as_i64()
                ],
                |row| conversation_col(row, 0),
            )
            .optional()?;
        tx.execute(
            "DELETE FROM outbox WHERE client_msg_id = ?1",
            [client_msg_id],
        )?;
        tx.commit()?;
        Ok(conversation)
    }

    /// Queues a failed send again, with the same `client_msg_id`.
    pub(crate) fn requeue(&mut self, client_msg_id: &str) -> Result<Requeue> {
        let me = self.me.clone();
        let tx = self.tx()?;
        let Some(local) = find_own(&tx, &me, client_msg_id)? else {
            return Ok(Requeue::NotFound);
        };
        let result = match local.status {
            MessageStatus::Received => Requeue::NotFound,
            MessageStatus::Sent => match local.to_message() {
                Some(message) => Requeue::AlreadySent(message),
                None => Requeue::NotFound,
            },
            MessageStatus::Sending | MessageStatus::Failed => {
                let request = SendRequest {
                    to: local.to.clone(),
                    client_msg_id: local.client_msg_id.clone(),
                    content: local.content.clone(),
                    ext: local.ext.clone(),
                    mentions: local.mentions.clone(),
                };
                let inserted = tx.execute(
                    "INSERT OR IGNORE INTO outbox (client_msg_id, conversation_id, request)
                     VALUES (?1, ?2, ?3)",
                    params![
                        client_msg_id,
                        local.conversation_id.as_str(),
                        to_json(&request)?
                    ],
                )?;
                if local.status == MessageStatus::Sending && inserted == 0 {
                    Requeue::Pending
                } else {
                    tx.execute(
                        "UPDATE messages SET status = ?1, error = NULL WHERE local_id = ?2",
                        params![MessageStatus::Sending.as_i64(), local.local_id],
                    )?;
                    Requeue::Queued(LocalMessage {
                        status: MessageStatus::Sending,
                        error: None,
                        ..local
                    })
                }
            }
        };
        tx.commit()?;
        Ok(result)
    }

    /// Stores history pages fetched by the app. Only messages at or below the conversation's
    /// cursor are kept: anything above it has not been handed to the app yet and must go
    /// through the ordered delivery path.
    pub(crate) fn store_history(
        &mut self,
        conversation_id: &ConversationId,
        messages: &[Message],
    ) -> Result<()> {
        let me = self.me.clone();
        let tx = self.tx()?;
        let cursor = load_conv(&tx, conversation_id)?
            .and_then(|row| row.cursor)
            .unwrap_or(0);
        for message in messages {
            if message.seq != 0
                && message.seq <= cursor
                && &message.conversation_id == conversation_id
            {
                upsert_message(&tx, &me, message)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Conversations, most recently active first.
    pub(crate) fn conversations(&self) -> Result<Vec<Conversation>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations
             ORDER BY last_activity DESC, conversation_id"
        ))?;
        let rows = stmt.query_map([], read_conv_row)?;
        rows.map(|r| Ok(r?.to_conversation())).collect()
    }

    /// One conversation.
    pub(crate) fn conversation(&self, id: &ConversationId) -> Result<Option<Conversation>> {
        Ok(load_conv(&self.conn, id)?.map(|row| row.to_conversation()))
    }

    /// Sum of unread counts over all conversations.
    pub(crate) fn total_unread(&self) -> Result<u64> {
        let n: i64 = self.conn.query_row(
            "SELECT COALESCE(SUM(unread_count), 0) FROM conversations",
            [],
            |row| row.get(0),
        )?;
        Ok(from_sql_u64(n))
    }

    /// A page of cached messages, oldest first: the newest `limit` when `before_seq` is
    /// `None` (pending sends included, after the stored ones), else the `limit` stored ones
    /// with a seq below `before_seq`.
    pub(crate) fn messages(
        &self,
        id: &ConversationId,
        before_seq: Option<u64>,
        limit: u32,
    ) -> Result<LocalPage> {
        let fetch = i64::from(limit) + 1;
        let mut messages = match before_seq {
            None => {
                let mut stmt = self.conn.prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1
                     ORDER BY seq IS NULL DESC, seq DESC, local_id DESC LIMIT ?2"
                ))?;
                stmt.query_map(params![id.as_str(), fetch], read_message_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            }
            Some(before) => {
                let mut stmt = self.conn.prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages
                     WHERE conversation_id = ?1 AND seq IS NOT NULL AND seq < ?2
                     ORDER BY seq DESC LIMIT ?3"
                ))?;
                stmt.query_map(
                    params![id.as_str(), sql_u64(before), fetch],
                    read_message_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?
            }
        };
        let has_more = messages.len() > limit as usize;
        messages.truncate(limit as usize);
        messages.reverse();
        Ok(LocalPage { messages, has_more })
    }

    /// A message this user sent, by its `client_msg_id`.
    pub(crate) fn own_message(&self, client_msg_id: &str) -> Result<Option<LocalMessage>> {
        find_own(&self.conn, &self.me, client_msg_id)
    }
}

/// The newest cached message of a conversation with a seq at or below `max_seq`.
fn newest_stored(
    conn: &Connection,
    id: &ConversationId,
    max_seq: u64,
) -> Result<Option<LocalMessage>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages
         WHERE conversation_id = ?1 AND seq IS NOT NULL AND seq <= ?2
         ORDER BY seq DESC LIMIT 1"
    ))?;
    Ok(stmt
        .query_row(params![id.as_str(), sql_u64(max_seq)], read_message_row)
        .optional()?)
}

/// A message this user sent or is sending; not a group notice that names them as its cause
/// (stored as received).
fn find_own(conn: &Connection, me: &UserId, client_msg_id: &str) -> Result<Option<LocalMessage>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages
         WHERE sender = ?1 AND client_msg_id = ?2 AND status <> ?3"
    ))?;
    Ok(stmt
        .query_row(
            params![me.as_str(), client_msg_id, MessageStatus::Received.as_i64()],
            read_message_row,
        )
        .optional()?)
}

/// Stores a server message, merging it into this device's pending row when it is one of ours.
fn upsert_message(tx: &Connection, me: &UserId, message: &Message) -> Result<Prior> {
    // A notice names who caused it as its sender, but nobody sent it.
    let own = &message.from == me && !is_notice(message);
    let status = if own {
        MessageStatus::Sent
    } else {
        MessageStatus::Received
    };
    let mentions = message.mentions.as_ref().map(to_json).transpose()?;
    if own {
        let existing: Option<(i64, i64)> = tx
            .prepare_cached(
                "SELECT local_id, status FROM messages WHERE sender = ?1 AND client_msg_id = ?2",
            )?
            .query_row(params![me.as_str(), message.client_msg_id], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        if let Some((local_id, old_status)) = existing {
            tx.prepare_cached(
                // The server's copy wins: it is what every other device sees.
                "UPDATE messages SET message_id = ?1, seq = ?2, server_time = ?3, status = ?4,
                     content = ?5, ext = ?6, error = NULL, mentions = ?7
                 WHERE local_id = ?8",
            )?
            .execute(params![
                sql_message_id(message.id),
                sql_u64(message.seq),
                message.server_time,
                status.as_i64(),
                to_json(&message.content)?,
                message.ext.as_ref().map(to_json).transpose()?,
                mentions,
                local_id
            ])?;
            tx.prepare_cached("DELETE FROM outbox WHERE client_msg_id = ?1")?
                .execute([&message.client_msg_id])?;
            let pending = matches!(
                MessageStatus::from_i64(old_status),
                Some(MessageStatus::Sending | MessageStatus::Failed)
            );
            return Ok(if pending {
                Prior::LocalPending
            } else {
                Prior::Known
            });
        }
    }
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO messages (conversation_id, message_id, seq, sender, recipient,
                 client_msg_id, content, ext, server_time, local_time, status, mentions)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?
        .execute(params![
            message.conversation_id.as_str(),
            sql_message_id(message.id),
            sql_u64(message.seq),
            message.from.as_str(),
            to_json(&message.to)?,
            message.client_msg_id,
            to_json(&message.content)?,
            message.ext.as_ref().map(to_json).transpose()?,
            message.server_time,
            now_millis(),
            status.as_i64(),
            mentions,
        ])?;
    Ok(if inserted == 1 {
        Prior::New
    } else {
        Prior::Known
    })
}

/// The wall clock in ms since the Unix epoch.
pub(crate) fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Async access to a [`Db`]: each call runs on tokio's blocking pool under the mutex.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    db: Arc<Mutex<Db>>,
}

impl Store {
    /// Opens a user's database off the runtime.
    pub(crate) async fn open(path: PathBuf, me: UserId) -> Result<Self> {
        let db = tokio::task::spawn_blocking(move || Db::open(&path, me))
            .await
            .map_err(Error::storage)??;
        Ok(Self::from_db(db))
    }

    pub(crate) fn from_db(db: Db) -> Self {
        Self {
            db: Arc::new(Mutex::new(db)),
        }
    }

    /// Runs `f` with the database on the blocking pool.
    pub(crate) async fn call<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&mut Db) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            // rusqlite rolls back an unfinished transaction on drop, so a panic in another
            // call cannot leave the connection mid-transaction: the poison carries no meaning.
            let mut db = db.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut db)
        })
        .await
        .map_err(Error::storage)?
    }
}

/// The database file of a user under the data directory: `<data_dir>/<user_id>/magpie.db`.
pub(crate) fn db_path(data_dir: &Path, user: &UserId) -> PathBuf {
    // User ids may be "." or ".."; those must not name a directory outside the data dir.
    let dir = if user.as_str().chars().all(|c| c == '.') {
        user.as_str().replace('.', "%2E")
    } else {
        user.as_str().to_owned()
    };
    data_dir.join(dir).join("magpie.db")
}

#[cfg(test)]
mod tests {
    use super::*;
    use magpie_proto::{ConversationKind, ErrorCode, Mentions, MessageContent, Peer};

    fn user(s: &str) -> UserId {
        UserId::new(s).expect("user")
    }

    fn c2c(a: &str, b: &str) -> ConversationId {
        ConversationId::c2c(&user(a), &user(b))
    }

    fn db() -> Db {
        Db::open_in_memory(user("amy")).expect("db")
    }

    fn msg(conv: &ConversationId, seq: u64, from: &str, time: Millis) -> Message {
        let to = conv
            .c2c_peer(&user(from))
            .expect("sender takes part in the conversation");
        Message {
            id: MessageId(u64::MAX - seq),
            conversation_id: conv.clone(),
            seq,
            from: user(from),
            to: Peer::User(to),
            client_msg_id: format!("{from}-{seq}"),
            content: MessageContent::text(format!("#{seq}")),
            ext: None,
            mentions: None,
            server_time: time,
        }
    }

    fn deliver(db: &mut Db, conv: &ConversationId, messages: Vec<Message>) -> Vec<Delivered> {
        let cursor = messages.iter().map(|m| m.seq).max().unwrap_or(0);
        db.apply_delivery(vec![DeliveryBatch::new(conv.clone(), messages, cursor)])
            .expect("deliver")
    }

    fn send_request(to: &str, id: &str, text: &str) -> SendRequest {
        SendRequest {
            to: Peer::User(user(to)),
            client_msg_id: id.into(),
            content: MessageContent::text(text),
            ext: None,
            mentions: None,
        }
    }

    #[test]
    fn delivered_messages_round_trip_and_page_backwards() {
        let mut db = db();
        let conv = c2c("amy", "bob");
        deliver(
            &mut db,
            &conv,
            (1..=25).map(|s| msg(&conv, s, "bob", s as i64)).collect(),
        );

        let newest = db.messages(&conv, None, 10).expect("page");
        let seqs: Vec<_> = newest.messages.iter().filter_map(|m| m.seq).collect();
        assert_eq!(seqs, (16..=25).collect::<Vec<_>>(), "oldest first");
        assert!(newest.has_more);
        assert_eq!(
            newest.messages[0].message_id,
            Some(MessageId(u64::MAX - 16))
        );
        assert_eq!(newest.messages[0].status, MessageStatus::Received);
        assert_eq!(newest.messages[0].content, MessageContent::text("#16"));

        let older = db.messages(&conv, Some(16), 10).expect("page");
        let seqs: Vec<_> = older.messages.iter().filter_map(|m| m.seq).collect();
        assert_eq!(seqs, (6..=15).collect::<Vec<_>>());
        assert!(older.has_more);

        let oldest = db.messages(&conv, Some(6), 10).expect("page");
        assert_eq!(oldest.messages.len(), 5);
        assert!(!oldest.has_more);
    }

    #[test]
    fn duplicates_are_reported_as_known_and_not_stored_twice() {
        let mut db = db();
        let conv = c2c("amy", "bob");
        let first = deliver(&mut db, &conv, vec![msg(&conv, 1, "bob", 1)]);
        assert_eq!(first[0].messages[0].1, Prior::New);
        let again = deliver(&mut db, &conv, vec![msg(&conv, 1, "bob", 1)]);
        assert_eq!(again[0].messages[0].1, Prior::Known);
        assert_eq!(
            db.messages(&conv, None, 50).expect("page").messages.len(),
            1
        );
    }

    #[test]
    fn cursors_persist_and_never_move_back() {
        let mut db = db();
        let conv = c2c("amy", "bob");
        deliver(
            &mut db,
            &conv,
            vec![msg(&conv, 1, "bob", 1), msg(&conv, 2, "bob", 2)],
        );
        db.apply_delivery(vec![DeliveryBatch::new(conv.clone(), vec![], 1)])
            .expect("deliver");
        assert_eq!(db.cursors().expect("cursors"), vec![(conv, 2)]);
    }

    #[test]
    fn unread_counts_follow_last_seq_and_own_messages() {
        let mut db = db();
        let conv = c2c("amy", "bob");
        let out = deliver(
            &mut db,
            &conv,
            vec![msg(&conv, 1, "bob", 1), msg(&conv, 2, "bob", 2)],
        );
        assert_eq!(out[0].conversation.unread_count, 2);
        assert_eq!(out[0].conversation.peer, Some(user("bob")));
        assert_eq!(out[0].conversation.kind, ConversationKind::C2c);

        // Amy's own message (from another device) reads everything before it.
        let out = deliver(&mut db, &conv, vec![msg(&conv, 3, "amy", 3)]);
        assert_eq!(out[0].conversation.unread_count, 0);
        assert_eq!(out[0].conversation.read_seq, 3);

        let out = deliver(&mut db, &conv, vec![msg(&conv, 4, "bob", 4)]);
        assert_eq!(out[0].conversation.unread_count, 1);
        assert_eq!(db.total_unread().expect("total"), 1);

        let (c, read) = db
            .mark_read_locally(&conv, None)
            .expect("mark")
            .expect("known conversation");
        assert_eq!((c.unread_count, read), (0, 4));
        assert_eq!(
            db.pending_reads().expect("pending"),
            vec![(conv.clone(), 4)]
        );
        db.apply_read(&conv, 4).expect("ack");
        assert!(db.pending_reads().expect("pending").is_empty());
        assert!(
            db.mark_read_locally(&c2c("amy", "zed"), None)
                .expect("mark")
                .is_none()
        );
    }

    #[test]
    fn reads_from_other_devices_only_move_forward() {
        let mut db = db();
        let conv = c2c("amy", "bob");
        deliver(
            &mut db,
            &conv,
            (1..=5).map(|s| msg(&conv, s, "bob", s as i64)).collect(),
        );
        let c = db.apply_read(&conv, 3).expect("read").expect("known");
        assert_eq!((c.read_seq, c.unread_count), (3, 2));
        let c = db.apply_read(&conv, 1).expect("read").expect("known");
        assert_eq!((c.read_seq, c.unread_count), (3, 2), "never backwards");
    }

    #[test]
    fn conversations_are_sorted_by_last_activity() {
        let mut db = db();
        let (bob, cat, dan) = (c2c("amy", "bob"), c2c("amy", "cat"), c2c("amy", "dan"));
        deliver(&mut db, &bob, vec![msg(&bob, 1, "bob", 300)]);
        deliver(&mut db, &cat, vec![msg(&cat, 1, "cat", 100)]);
        deliver(&mut db, &dan, vec![msg(&dan, 1, "dan", 200)]);
        let order: Vec<_> = db
            .conversations()
            .expect("list")
            .into_iter()
            .map(|c| c.conversation_id)
            .collect();
        assert_eq!(order, vec![bob.clone(), dan.clone(), cat.clone()]);

        // A local send makes a conversation the most recent.
        db.insert_pending_send(&cat, &send_request("cat", "x1", "hi"), 400)
            .expect("send");
        let first = db.conversations().expect("list").remove(0);
        assert_eq!(first.conversation_id, cat);
        assert_eq!(first.last_activity, 400);
    }

    #[test]
    fn sync_states_update_rows_and_set_cursors_of_new_conversations_only() {
        let mut db = db();
        let (bob, cat) = (c2c("amy", "bob"), c2c("amy", "cat"));
        deliver(&mut db, &bob, vec![msg(&bob, 1, "bob", 10)]);
        let state = |conv: &ConversationId, peer: &str, last: u64, read: u64| ConversationState {
            conversation_id: conv.clone(),
            kind: ConversationKind::C2c,
            peer: Some(user(peer)),
            last_seq: last,
            read_seq: read,
            unread_count: last - read,
            mentioned: false,
            last_message: Some(msg(conv, last, peer, 1000 + last as i64)),
            version: 7,
            updated_at: 5,
        };
        let cursors = HashMap::from([(bob.clone(), 0), (cat.clone(), 40)]);
        let out = db
            .apply_sync_states(
                &[state(&bob, "bob", 9, 2), state(&cat, "cat", 50, 50)],
                &cursors,
            )
            .expect("sync");
        assert_eq!(out[0].unread_count, 7);
        assert_eq!(out[0].last_message.as_ref().map(|m| m.seq), Some(9));
        assert_eq!(out[1].unread_count, 0);
        let mut cursors = db.cursors().expect("cursors");
        cursors.sort();
        assert_eq!(cursors, vec![(bob, 1), (cat, 40)], "existing cursor kept");
    }

    #[test]
    fn the_outbox_keeps_order_and_sent_answers_merge_into_the_pending_row() {
        let mut db = db();
        let conv = c2c("amy", "bob");
        for (i, text) in ["one", "two", "three"].iter().enumerate() {
            let local = db
                .insert_pending_send(&conv, &send_request("bob", &format!("c{i}"), text), 10)
                .expect("queue");
            assert_eq!(local.status, MessageStatus::Sending);
        }
        assert_eq!(db.outbox_len().expect("len"), 3);
        let head = db.outbox_head().expect("head").expect("queued");
        assert_eq!(head.client_msg_id, "c0");
        assert_eq!(head.request.content, MessageContent::text("one"));

        // Pending sends are the newest entries of a page, in the order they were made.
        let page = db.messages(&conv, None, 10).expect("page");
        let ids: Vec<_> = page
            .messages
            .iter()
            .map(|m| m.client_msg_id.as_str())
            .collect();
        assert_eq!(ids, ["c0", "c1", "c2"]);

        let mut stored = msg(&conv, 1, "amy", 20);
        stored.client_msg_id = "c0".into();
        assert!(db.mark_sent(&stored).expect("sent"), "was pending");
        assert!(!db.mark_sent(&stored).expect("sent"), "reported once");
        assert_eq!(
            db.outbox_head().expect("head").map(|h| h.client_msg_id),
            Some("c1".into())
        );
        let local = db.own_message("c0").expect("read").expect("exists");
        assert_eq!(local.status, MessageStatus::Sent);
        assert_eq!(local.seq, Some(1));
        assert_eq!(local.to_message(), Some(stored.clone()));

        // The same message arriving in a fetched page is already known.
        let out = deliver(&mut db, &conv, vec![stored]);
        assert_eq!(out[0].messages[0].1, Prior::Known);
        let page = db.messages(&conv, None, 10).expect("page");
        assert_eq!(page.messages.len(), 3, "no duplicate row");
        assert_eq!(
            page.messages[0].seq,
            Some(1),
            "stored messages before pending ones"
        );
    }

    #[test]
    fn a_fetched_page_completes_a_pending_send() {
        let mut db = db();
        let conv = c2c("amy", "bob");
        db.insert_pending_send(&conv, &send_request("bob", "c0", "hi"), 10)
            .expect("queue");
        let mut stored = msg(&conv, 1, "amy", 20);
        stored.client_msg_id = "c0".into();
        let out = deliver(&mut db, &conv, vec![stored]);
        assert_eq!(out[0].messages[0].1, Prior::LocalPending);
        assert_eq!(
            db.outbox_len().expect("len"),
            0,
            "no resend after a restart"
        );
    }

    #[test]
    fn failed_sends_can_be_requeued_with_the_same_id() {
        let mut db = db();
        let conv = c2c("amy", "bob");
        db.insert_pending_send(&conv, &send_request("bob", "c0", "hi"), 10)
            .expect("queue");
        let body = ErrorBody::new(ErrorCode::TooLarge, "too big");
        assert_eq!(
            db.mark_failed("c0", &body).expect("fail"),
            Some(conv.clone())
        );
        assert_eq!(db.outbox_len().expect("len"), 0);
        let failed = db.own_message("c0").expect("read").expect("exists");
        assert_eq!(
            (failed.status, failed.error),
            (MessageStatus::Failed, Some(body.clone()))
        );

        match db.requeue("c0").expect("requeue") {
            Requeue::Queued(local) => assert_eq!(local.status, MessageStatus::Sending),
            other => panic!("expected Queued, got {other:?}"),
        }
        assert!(matches!(
            db.requeue("c0").expect("requeue"),
            Requeue::Pending
        ));
        assert_eq!(
            db.outbox_head().expect("head").map(|h| h.client_msg_id),
            Some("c0".into())
        );
        assert!(matches!(
            db.requeue("nope").expect("requeue"),
            Requeue::NotFound
        ));
        assert_eq!(db.mark_failed("nope", &body).expect("fail"), None);
    }

    #[test]
    fn history_is_stored_only_below_the_cursor() {
        let mut db = db();
        let conv = c2c("amy", "bob");
        deliver(&mut db, &conv, vec![]);
        db.apply_delivery(vec![DeliveryBatch::new(
            conv.clone(),
            vec![msg(&conv, 10, "bob", 10)],
            10,
        )])
        .expect("deliver");
        let history: Vec<_> = (5..=12).map(|s| msg(&conv, s, "bob", s as i64)).collect();
        db.store_history(&conv, &history).expect("history");
        let seqs: Vec<_> = db
            .messages(&conv, None, 50)
            .expect("page")
            .messages
            .iter()
            .filter_map(|m| m.seq)
            .collect();
        assert_eq!(seqs, vec![5, 6, 7, 8, 9, 10]);
    }

    #[test]
    fn both_sync_cursors_persist_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_path(dir.path(), &user("amy"));
        {
            let mut db = Db::open(&path, user("amy")).expect("open");
            assert_eq!(db.sync_cursors().expect("cursors"), SyncCursors::default());
            db.set_sync_cursors(SyncCursors {
                version: 42,
                groups_version: 7,
            })
            .expect("set");
        }
        let db = Db::open(&path, user("amy")).expect("reopen");
        assert_eq!(
            db.sync_cursors().expect("cursors"),
            SyncCursors {
                version: 42,
                groups_version: 7
            }
        );
        let mode: String = db
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
    }

    fn grp(id: &str) -> ConversationId {
        ConversationId::group(&magpie_proto::GroupId::new(id).expect("group id"))
    }

    fn group_msg(
        conv: &ConversationId,
        seq: u64,
        from: &str,
        mentions: Option<Mentions>,
    ) -> Message {
        Message {
            id: MessageId(1_000_000 + seq),
            conversation_id: conv.clone(),
            seq,
            from: user(from),
            to: Peer::Group(conv.group_id().expect("a group conversation")),
            client_msg_id: format!("{from}-g{seq}"),
            content: MessageContent::text(format!("g{seq}")),
            ext: None,
            mentions,
            server_time: seq as i64,
        }
    }

    fn notice(conv: &ConversationId, seq: u64, by: &str) -> Message {
        let mut message = group_msg(conv, seq, by, None);
        message.client_msg_id = format!("notice-{seq}");
        message.content = MessageContent::GroupNotice(magpie_proto::message::GroupNoticeBody {
            kind: magpie_proto::message::GroupNoticeKind::MemberJoined,
            user_ids: vec![user(by)],
            user_count: None,
        });
        message
    }

    fn mention(users: &[&str], all: bool) -> Option<Mentions> {
        Some(Mentions {
            user_ids: users.iter().map(|u| user(u)).collect(),
            all,
        })
    }

    #[test]
    fn group_messages_keep_their_mentions_and_mark_the_mentioned_user_until_read() {
        let mut db = db();
        let g = grp("team");
        let out = deliver(
            &mut db,
            &g,
            vec![
                group_msg(&g, 1, "bob", None),
                group_msg(&g, 2, "bob", mention(&["cat"], false)),
            ],
        );
        let c = &out[0].conversation;
        assert_eq!(
            (c.kind, c.peer.clone(), c.unread_count),
            (ConversationKind::Group, None, 2)
        );
        assert!(!c.mentioned, "someone else was mentioned");
        assert_eq!(c.group_id().map(|g| g.to_string()), Some("team".into()));

        let out = deliver(
            &mut db,
            &g,
            vec![group_msg(&g, 3, "bob", mention(&["amy"], false))],
        );
        assert!(out[0].conversation.mentioned);
        let page = db.messages(&g, None, 10).expect("page");
        assert_eq!(page.messages[2].mentions, mention(&["amy"], false));
        assert_eq!(page.messages[1].mentions, mention(&["cat"], false));
        assert_eq!(page.messages[0].mentions, None);
        assert_eq!(
            page.messages[2].to_message(),
            Some(group_msg(&g, 3, "bob", mention(&["amy"], false)))
        );

        // Reading below the mention keeps it; reading past it clears it.
        let (c, _) = db
            .mark_read_locally(&g, Some(2))
            .expect("read")
            .expect("known");
        assert!(c.mentioned);
        let (c, _) = db
            .mark_read_locally(&g, None)
            .expect("read")
            .expect("known");
        assert!(!c.mentioned);
        assert_eq!(c.unread_count, 0);

        // @all mentions everyone, but one's own message mentions nobody to oneself.
        let out = deliver(
            &mut db,
            &g,
            vec![group_msg(&g, 4, "amy", mention(&[], true))],
        );
        assert!(!out[0].conversation.mentioned);
        let out = deliver(
            &mut db,
            &g,
            vec![group_msg(&g, 5, "bob", mention(&[], true))],
        );
        assert!(out[0].conversation.mentioned);
        assert_eq!(out[0].conversation.unread_count, 1);
    }

    #[test]
    fn the_servers_mention_marker_is_taken_from_sync_and_read_answers() {
        let mut db = db();
        let g = grp("team");
        let state = |last: u64, read: u64, mentioned: bool| ConversationState {
            conversation_id: g.clone(),
            kind: ConversationKind::Group,
            peer: None,
            last_seq: last,
            read_seq: read,
            unread_count: last - read,
            mentioned,
            last_message: Some(group_msg(&g, last, "bob", None)),
            version: 1,
            updated_at: 1,
        };
        let out = db
            .apply_sync_states(&[state(6, 2, true)], &HashMap::from([(g.clone(), 2)]))
            .expect("sync");
        assert!(out[0].mentioned);
        assert_eq!(out[0].unread_count, 4);
        // mark_read's answer: read up to 4, no unread mention left.
        let mut answer = state(6, 4, false);
        answer.last_message = None;
        let c = db.apply_read_state(&answer).expect("read").expect("known");
        assert!(!c.mentioned);
        assert_eq!((c.read_seq, c.unread_count), (4, 2));
        // A newer mention than the server's state knows of survives it.
        deliver(
            &mut db,
            &g,
            vec![group_msg(&g, 7, "bob", mention(&["amy"], false))],
        );
        let c = db
            .apply_sync_states(&[state(6, 4, false)], &HashMap::new())
            .expect("sync")
            .remove(0);
        assert!(c.mentioned);
    }

    #[test]
    fn seqs_before_the_join_point_are_not_unread_and_notices_are_not_own_sends() {
        let mut db = db();
        let g = grp("team");
        // Joined at seq 10: nothing before it is visible; amy's own join notice is unread
        // (as the server counts it) and no send of hers.
        let out = db
            .apply_delivery(vec![DeliveryBatch {
                read_floor: 9,
                ..DeliveryBatch::new(g.clone(), vec![notice(&g, 10, "amy")], 10)
            }])
            .expect("deliver");
        let c = &out[0].conversation;
        assert_eq!((c.last_seq, c.read_seq, c.unread_count), (10, 9, 1));
        assert_eq!(out[0].messages[0].1, Prior::New);
        let local = db.messages(&g, None, 10).expect("page").messages.remove(0);
        assert_eq!(local.status, MessageStatus::Received);
        assert_eq!(db.own_message("notice-10").expect("read"), None);
        assert_eq!(db.cursors().expect("cursors"), vec![(g.clone(), 10)]);

        // Amy's own message reads everything before it.
        let out = deliver(&mut db, &g, vec![group_msg(&g, 11, "amy", None)]);
        assert_eq!(out[0].conversation.unread_count, 0);
    }

    #[test]
    fn a_conversation_the_server_refuses_shows_only_what_is_held() {
        let mut db = db();
        let g = grp("left");
        deliver(
            &mut db,
            &g,
            vec![group_msg(&g, 1, "bob", None), group_msg(&g, 2, "amy", None)],
        );
        // Sync reports messages sent after amy left (which she may not read).
        let state = ConversationState {
            conversation_id: g.clone(),
            kind: ConversationKind::Group,
            peer: None,
            last_seq: 5,
            read_seq: 2,
            unread_count: 3,
            mentioned: false,
            last_message: Some(group_msg(&g, 5, "bob", None)),
            version: 3,
            updated_at: 5,
        };
        let c = db
            .apply_sync_states(&[state], &HashMap::new())
            .expect("sync")
            .remove(0);
        assert_eq!((c.last_seq, c.unread_count), (5, 3));
        let out = db.cap_unreachable(&[(g.clone(), 2)]).expect("cap");
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].last_seq, out[0].unread_count), (2, 0));
        assert_eq!(out[0].last_message, Some(group_msg(&g, 2, "amy", None)));
        assert!(
            db.cap_unreachable(&[(g.clone(), 2)])
                .expect("cap")
                .is_empty(),
            "nothing left to change"
        );
        // A device that holds nothing keeps the read seq and shows no message.
        let other = grp("gone");
        db.apply_sync_states(
            &[ConversationState {
                conversation_id: other.clone(),
                last_message: Some(group_msg(&other, 9, "bob", None)),
                last_seq: 9,
                read_seq: 4,
                ..db_state_template(&other)
            }],
            &HashMap::from([(other.clone(), 0)]),
        )
        .expect("sync");
        let out = db.cap_unreachable(&[(other, 0)]).expect("cap");
        assert_eq!(
            (out[0].last_seq, out[0].read_seq, out[0].unread_count),
            (4, 4, 0)
        );
        assert_eq!(out[0].last_message, None);
    }

    fn db_state_template(id: &ConversationId) -> ConversationState {
        ConversationState {
            conversation_id: id.clone(),
            kind: id.kind(),
            peer: None,
            last_seq: 0,
            read_seq: 0,
            unread_count: 0,
            mentioned: false,
            last_message: None,
            version: 1,
            updated_at: 1,
        }
    }

    #[test]
    fn a_database_of_schema_2_is_upgraded_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_path(dir.path(), &user("amy"));
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO meta VALUES ('sync_version', '17');
                 CREATE TABLE conversations (
                     conversation_id TEXT PRIMARY KEY, peer TEXT,
                     last_seq INTEGER NOT NULL DEFAULT 0, read_seq INTEGER NOT NULL DEFAULT 0,
                     unread_count INTEGER NOT NULL DEFAULT 0, cursor INTEGER, last_message TEXT,
                     last_message_seq INTEGER NOT NULL DEFAULT 0,
                     last_activity INTEGER NOT NULL DEFAULT 0, pending_read_seq INTEGER,
                     version INTEGER NOT NULL DEFAULT 0);
                 INSERT INTO conversations (conversation_id, peer, last_seq, read_seq,
                     unread_count, cursor) VALUES ('c2c:amy:bob', 'bob', 3, 1, 2, 3);
                 CREATE TABLE messages (
                     local_id INTEGER PRIMARY KEY AUTOINCREMENT, conversation_id TEXT NOT NULL,
                     message_id INTEGER UNIQUE, seq INTEGER, sender TEXT NOT NULL,
                     recipient TEXT NOT NULL, client_msg_id TEXT NOT NULL, content TEXT NOT NULL,
                     ext TEXT, server_time INTEGER, local_time INTEGER NOT NULL,
                     status INTEGER NOT NULL, error TEXT);
                 INSERT INTO messages (conversation_id, message_id, seq, sender, recipient,
                     client_msg_id, content, server_time, local_time, status)
                 VALUES ('c2c:amy:bob', 9, 3, 'bob', '{\"kind\":\"user\",\"id\":\"amy\"}', 'x',
                     '{\"type\":\"text\",\"body\":{\"text\":\"old\"}}', 5, 5, 3);
                 PRAGMA user_version = 2;",
            )
            .expect("an old database");
        }
        let mut db = Db::open(&path, user("amy")).expect("upgrade");
        let version: i64 = db
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(
            db.sync_cursors().expect("cursors"),
            SyncCursors {
                version: 17,
                groups_version: 0
            },
            "the old cursor is kept; groups are synced from the start"
        );
        let conv = c2c("amy", "bob");
        let old = db.conversation(&conv).expect("read").expect("kept");
        assert_eq!((old.unread_count, old.mentioned), (2, false));
        let page = db.messages(&conv, None, 10).expect("page");
        assert_eq!(page.messages[0].content, MessageContent::text("old"));
        assert_eq!(page.messages[0].mentions, None);
        // The new columns work.
        let g = grp("team");
        let out = deliver(
            &mut db,
            &g,
            vec![group_msg(&g, 1, "bob", mention(&["amy"], false))],
        );
        assert!(out[0].conversation.mentioned);
        drop(db);
        Db::open(&path, user("amy")).expect("reopening an upgraded database");
    }

    #[test]
    fn database_paths_stay_inside_the_data_dir() {
        let base = Path::new("/data");
        assert_eq!(
            db_path(base, &user("amy")),
            Path::new("/data/amy/magpie.db")
        );
        assert_eq!(
            db_path(base, &user("..")),
            Path::new("/data/%2E%2E/magpie.db")
        );
    }
}
