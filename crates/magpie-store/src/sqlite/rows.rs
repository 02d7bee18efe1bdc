//! Mapping between SQL rows and protocol types, shared by the reader and the writer.

use magpie_proto::group::GroupId;
use magpie_proto::message::Peer;
use magpie_proto::{
    ConversationId, ConversationKind, ConversationState, Message, MessageId, UserId,
};
use rusqlite::{Connection, OptionalExtension, Row};

use crate::{StoreError, StoreResult};

/// The last seq and its server time of a conversation (no row if it has no message).
pub(super) const LAST_MESSAGE_SQL: &str = "SELECT seq, server_time FROM messages \
     WHERE conversation_key = (SELECT key FROM conversations WHERE id = ?1) \
     ORDER BY seq DESC LIMIT 1";

/// The columns [`message`] reads, in order, from `messages` aliased `m` joined with its
/// conversation aliased `c` (messages name their conversation by its integer key).
pub(super) const MESSAGE_COLUMNS: &str = "m.id, c.id, m.seq, m.sender, m.recipient, m.client_msg_id, m.content, m.ext, m.server_time, m.mentions";

/// FROM and WHERE for the messages of conversation `?1`, with [`MESSAGE_COLUMNS`]' aliases.
/// The key is looked up in a subquery rather than by joining on the text id: that way the
/// planner sees one conversation row (a unique key) and reads pages in `messages_by_seq`
/// order, where a join on the id sometimes sorted the whole conversation for a page.
pub(super) const MESSAGES_OF_CONVERSATION: &str = "messages m \
     JOIN conversations c ON c.key = m.conversation_key \
     WHERE m.conversation_key = (SELECT key FROM conversations WHERE id = ?1)";

/// The key of conversation `id` (migration 0006), writing its row first if it has none: the
/// next key, `kind`, created at `now`. Only the writer calls this, so "the largest key plus
/// one" is never taken twice.
pub(super) fn conversation_key(
    conn: &Connection,
    id: &ConversationId,
    now: i64,
) -> StoreResult<i64> {
    let existing: Option<i64> = conn
        .prepare_cached("SELECT key FROM conversations WHERE id = ?1")?
        .query_row([id.as_str()], |r| r.get(0))
        .optional()?;
    if let Some(key) = existing {
        return Ok(key);
    }
    Ok(conn
        .prepare_cached(
            "INSERT INTO conversations (id, kind, created_at, key) \
             VALUES (?1, ?2, ?3, (SELECT COALESCE(MAX(key), 0) + 1 FROM conversations)) \
             RETURNING key",
        )?
        .query_row((id.as_str(), kind_to_sql(id.kind()), now), |r| r.get(0))?)
}

/// How many columns [`MESSAGE_COLUMNS`] has.
const MESSAGE_WIDTH: usize = 10;

/// The columns [`conversation_state`] reads, in order, followed by [`MESSAGE_COLUMNS`]: the
/// row, the conversation's kind and last seq, the user's and everyone's last mention, and the
/// user's join point (1 but in a group they are a member of).
pub(super) const STATE_COLUMNS: &str = "uc.conversation_id, uc.peer, uc.read_seq, uc.version, \
     max(uc.updated_at, COALESCE(m.server_time, 0)), c.kind, COALESCE(m.seq, 0), \
     uc.mention_seq, c.mention_all_seq, COALESCE(gm.visible_from_seq, 1)";

/// The FROM clause that goes with [`STATE_COLUMNS`]: the row, its conversation, the
/// conversation's last message (whose seq is the conversation's last seq), and for a group the
/// user's membership.
pub(super) const STATE_FROM: &str = "user_conversations uc \
     JOIN conversations c ON c.id = uc.conversation_id \
     LEFT JOIN messages m ON m.conversation_key = c.key \
       AND m.seq = (SELECT MAX(seq) FROM messages WHERE conversation_key = c.key) \
     LEFT JOIN group_members gm ON c.kind = 'group' \
       AND gm.group_id = substr(uc.conversation_id, 5) AND gm.user_id = uc.user_id";

/// A member's group conversations, in the shape of [`STATE_COLUMNS`] + [`MESSAGE_COLUMNS`],
/// followed by the conversation's activity stamp: driven by the memberships (alias `gm`), the
/// user's row optional (a member who never sent, read or was mentioned has none).
pub(super) const GROUP_STATE_SELECT: &str = "SELECT c.id, NULL, COALESCE(uc.read_seq, 0), \
       COALESCE(uc.version, 0), max(COALESCE(uc.updated_at, 0), COALESCE(m.server_time, c.created_at)), \
       c.kind, COALESCE(m.seq, 0), COALESCE(uc.mention_seq, 0), c.mention_all_seq, \
       gm.visible_from_seq, \
       m.id, c.id, m.seq, m.sender, m.recipient, m.client_msg_id, m.content, \
       m.ext, m.server_time, m.mentions, c.activity \
     FROM group_members gm \
     JOIN conversations c ON c.id = 'grp:' || gm.group_id \
     LEFT JOIN user_conversations uc ON uc.user_id = gm.user_id AND uc.conversation_id = c.id \
     LEFT JOIN messages m ON m.conversation_key = c.key \
       AND m.seq = (SELECT MAX(seq) FROM messages WHERE conversation_key = c.key)";

/// The column of [`GROUP_STATE_SELECT`] holding the activity stamp.
pub(super) const ACTIVITY_COLUMN: usize = 10 + MESSAGE_WIDTH;

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
    let mentions: Option<String> = row.get(at + 9)?;
    let conversation_id =
        ConversationId::parse(&conversation_id).map_err(|e| corrupt("conversation id", e))?;
    let recipient: String = row.get(at + 4)?;
    let to = match conversation_id.kind() {
        ConversationKind::Group => {
            Peer::Group(GroupId::new(recipient).map_err(|e| corrupt("group id", e))?)
        }
        _ => Peer::User(user_id(recipient)?),
    };
    Ok(Message {
        id: MessageId(row.get::<_, i64>(at)? as u64),
        conversation_id,
        seq: row.get::<_, i64>(at + 2)? as u64,
        from: user_id(row.get(at + 3)?)?,
        to,
        client_msg_id: row.get(at + 5)?,
        content: serde_json::from_str(&content).map_err(|e| corrupt("content", e))?,
        ext: ext
            .map(|e| serde_json::from_str(&e))
            .transpose()
            .map_err(|e| corrupt("ext", e))?,
        mentions: mentions
            .map(|m| serde_json::from_str(&m))
            .transpose()
            .map_err(|e| corrupt("mentions", e))?,
        server_time: row.get(at + 8)?,
    })
}

/// Reads a conversation state (with its last message, if the row has one).
pub(super) fn conversation_state(row: &Row<'_>) -> rusqlite::Result<ConversationState> {
    let conversation_id: String = row.get(0)?;
    let peer: Option<String> = row.get(1)?;
    let kind: String = row.get(5)?;
    let has_message = row.get::<_, Option<i64>>(10)?.is_some();
    let position = crate::ReadPosition {
        last_seq: row.get::<_, i64>(6)? as u64,
        read_seq: row.get::<_, i64>(2)? as u64,
        mention_seq: row.get::<_, i64>(7)? as u64,
        mention_all_seq: row.get::<_, i64>(8)? as u64,
        visible_from_seq: row.get::<_, i64>(9)? as u64,
    };
    let last_message = if has_message && position.shows(row.get::<_, i64>(12)? as u64) {
        Some(message(row, 10)?)
    } else {
        None
    };
    Ok(ConversationState {
        conversation_id: ConversationId::parse(&conversation_id)
            .map_err(|e| corrupt("conversation id", e))?,
        kind: kind_from_sql(&kind)?,
        peer: peer.map(user_id).transpose()?,
        last_seq: position.last_seq,
        read_seq: position.effective_read_seq(),
        unread_count: position.unread_count(),
        mentioned: position.mentioned(),
        last_message,
        version: row.get::<_, i64>(3)? as u64,
        updated_at: row.get(4)?,
    })
}

/// The `kind` column's text for a conversation kind.
fn kind_to_sql(kind: ConversationKind) -> &'static str {
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

/// A member's state of their group's conversation, with its last message; `None` if they are
/// not a member or the group has no conversation.
pub(super) fn load_group_state(
    conn: &Connection,
    user: &UserId,
    conversation: &ConversationId,
) -> StoreResult<Option<ConversationState>> {
    let Some(group) = conversation.group_id() else {
        return Ok(None);
    };
    let sql = format!("{GROUP_STATE_SELECT} WHERE gm.user_id = ?1 AND gm.group_id = ?2");
    conn.prepare_cached(&sql)?
        .query_row((user.as_str(), group.as_str()), conversation_state)
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
