//! Mapping between SQL rows and protocol types, shared by the reader and the writer.

use magpie_proto::message::Peer;
use magpie_proto::{
    ConversationId, ConversationKind, ConversationState, Message, MessageId, UserId,
};
use rusqlite::{Connection, OptionalExtension, Row};

use crate::{StoreError, StoreResult};

/// The last seq and its server time of a conversation (no row if it has no message).
pub(super) const LAST_MESSAGE_SQL: &str =
    "SELECT seq, server_time FROM messages WHERE conversation_id = ?1 ORDER BY seq DESC LIMIT 1";

/// The columns [`message`] reads, in order, from a table aliased `m`.
pub(super) const MESSAGE_COLUMNS: &str = "m.id, m.conversation_id, m.seq, m.sender, m.recipient, m.client_msg_id, m.content, m.ext, m.server_time";

/// The columns [`conversation_state`] reads, in order, followed by [`MESSAGE_COLUMNS`].
pub(super) const STATE_COLUMNS: &str = "uc.conversation_id, uc.peer, uc.read_seq, uc.version, uc.updated_at, c.kind, COALESCE(m.seq, 0)";

/// The FROM clause that goes with [`STATE_COLUMNS`]: the row, its conversation, and the
/// conversation's last message (whose seq is the conversation's last seq).
pub(super) const STATE_FROM: &str = "user_conversations uc \
     JOIN conversations c ON c.id = uc.conversation_id \
     LEFT JOIN messages m ON m.conversation_id = uc.conversation_id \
       AND m.seq = (SELECT MAX(seq) FROM messages WHERE conversation_id = uc.conversation_id)";

fn corrupt(what: &str, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("{what}: {e}").into(),
    )
}

fn user_id(s: String) -> rusqlite::Result<UserId> {
    UserId::new(s).map_err(|e| corrupt("user id", e))
}

/// Reads a message starting at column `at`.
pub(super) fn message(row: &Row<'_>, at: usize) -> rusqlite::Result<Message> {
    let conversation_id: String = row.get(at + 1)?;
    let content: String = row.get(at + 6)?;
    let ext: Option<String> = row.get(at + 7)?;
    Ok(Message {
        id: MessageId(row.get::<_, i64>(at)? as u64),
        conversation_id: ConversationId::parse(&conversation_id)
            .map_err(|e| corrupt("conversation id", e))?,
        seq: row.get::<_, i64>(at + 2)? as u64,
        from: user_id(row.get(at + 3)?)?,
        to: Peer::User(user_id(row.get(at + 4)?)?),
        client_msg_id: row.get(at + 5)?,
        content: serde_json::from_str(&content).map_err(|e| corrupt("content", e))?,
        ext: ext
            .map(|e| serde_json::from_str(&e))
            .transpose()
            .map_err(|e| corrupt("ext", e))?,
        server_time: row.get(at + 8)?,
    })
}

/// Reads a conversation state (with its last message, if the row has one).
pub(super) fn conversation_state(row: &Row<'_>) -> rusqlite::Result<ConversationState> {
    let conversation_id: String = row.get(0)?;
    let peer: Option<String> = row.get(1)?;
    let read_seq = row.get::<_, i64>(2)? as u64;
    let kind: String = row.get(5)?;
    let last_seq = row.get::<_, i64>(6)? as u64;
    let has_message = row.get::<_, Option<i64>>(7)?.is_some();
    Ok(ConversationState {
        conversation_id: ConversationId::parse(&conversation_id)
            .map_err(|e| corrupt("conversation id", e))?,
        kind: kind_from_sql(&kind)?,
        peer: peer.map(user_id).transpose()?,
        last_seq,
        read_seq,
        unread_count: last_seq.saturating_sub(read_seq),
        last_message: if has_message {
            Some(message(row, 7)?)
        } else {
            None
        },
        version: row.get::<_, i64>(3)? as u64,
        updated_at: row.get(4)?,
    })
}

/// The `kind` column's text for a conversation kind.
pub(super) fn kind_to_sql(kind: ConversationKind) -> &'static str {
    match kind {
        ConversationKind::C2c => "c2c",
        ConversationKind::Group => "group",
        ConversationKind::Room => "room",
        ConversationKind::Thread => "thread",
    }
}

fn kind_from_sql(s: &str) -> rusqlite::Result<ConversationKind> {
    Ok(match s {
        "c2c" => ConversationKind::C2c,
        "group" => ConversationKind::Group,
        "room" => ConversationKind::Room,
        "thread" => ConversationKind::Thread,
        other => return Err(corrupt("conversation kind", other)),
    })
}

/// One user's state of one conversation, with its last message.
pub(super) fn load_state(
    conn: &Connection,
    user: &UserId,
    conversation: &ConversationId,
) -> StoreResult<Option<ConversationState>> {
    let sql = format!(
        "SELECT {STATE_COLUMNS}, {MESSAGE_COLUMNS} FROM {STATE_FROM} \
         WHERE uc.user_id = ?1 AND uc.conversation_id = ?2"
    );
    conn.prepare_cached(&sql)?
        .query_row((user.as_str(), conversation.as_str()), conversation_state)
        .optional()
        .map_err(StoreError::from)
}

/// Encodes a JSON object column.
pub(super) fn json_object(
    ext: Option<&serde_json::Map<String, serde_json::Value>>,
) -> StoreResult<Option<String>> {
    ext.map(serde_json::to_string)
        .transpose()
        .map_err(StoreError::internal)
}

/// A live user's current change counter: the largest version on their rows, or the floor kept
/// in `users.sync_version` (which survives a deletion). One parameter, the user id; no row if
/// the user does not exist or was deleted.
pub(super) const CURRENT_VERSION_SQL: &str = "SELECT max(u.sync_version, \
       COALESCE((SELECT MAX(version) FROM user_conversations WHERE user_id = u.id), 0)) \
     FROM users u WHERE u.id = ?1 AND u.deleted = 0";

/// The columns [`user_record`] reads, in order.
pub(super) const USER_COLUMNS: &str =
    "id, nickname, avatar_url, ext, token_generation, created_at, updated_at";

/// Reads a user row.
pub(super) fn user_record(row: &Row<'_>) -> rusqlite::Result<crate::UserRecord> {
    let ext: Option<String> = row.get(3)?;
    Ok(crate::UserRecord {
        user: magpie_proto::rest::User {
            id: user_id(row.get(0)?)?,
            nickname: row.get(1)?,
            avatar_url: row.get(2)?,
            ext: ext
                .map(|e| serde_json::from_str(&e))
                .transpose()
                .map_err(|e| corrupt("ext", e))?,
            created_at: row.get(5)?,
            updated_at: row.get(6)?,
        },
        token_generation: row.get::<_, i64>(4)? as u64,
    })
}

/// Reads one user.
pub(super) fn load_user(conn: &Connection, id: &UserId) -> StoreResult<Option<crate::UserRecord>> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1 AND deleted = 0");
    conn.prepare_cached(&sql)?
        .query_row([id.as_str()], user_record)
        .optional()
        .map_err(StoreError::from)
}
