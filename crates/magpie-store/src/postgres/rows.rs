//! Mapping between PostgreSQL rows and protocol types, shared by the reads and the writers.

use magpie_proto::group::GroupId;
use magpie_proto::message::Peer;
use magpie_proto::{
    ConversationId, ConversationKind, ConversationState, Message, MessageId, UserId,
};
use tokio_postgres::Row;

use crate::{StoreError, StoreErrorKind, StoreResult, UserRecord};

/// The columns [`message`] reads, in order, from `messages` aliased `m`.
pub(super) const MESSAGE_COLUMNS: &str = "m.id, m.conversation_id, m.seq, m.sender, m.recipient, m.client_msg_id, m.content, m.ext, m.server_time, m.mentions";

/// The columns [`conversation_state`] reads, in order, followed by [`MESSAGE_COLUMNS`]: the
/// row, the conversation's kind and last seq, the user's and everyone's last mention, and the
/// user's join point (1 but in a group they are a member of).
pub(super) const STATE_COLUMNS: &str = "uc.conversation_id, uc.peer, uc.read_seq, uc.version, \
     GREATEST(uc.updated_at, c.last_time), c.kind, c.last_seq, uc.mention_seq, \
     c.mention_all_seq, COALESCE(gm.visible_from_seq, 1)";

/// The FROM clause that goes with [`STATE_COLUMNS`]: the row, its conversation, the
/// conversation's last message (a key lookup on the conversation's `last_seq`), and for a group
/// the user's membership.
pub(super) const STATE_FROM: &str = "user_conversations uc \
     JOIN conversations c ON c.id = uc.conversation_id \
     LEFT JOIN messages m ON m.conversation_id = uc.conversation_id AND m.seq = c.last_seq \
     LEFT JOIN group_members gm ON c.kind = 'group' \
       AND gm.group_id = substr(uc.conversation_id, 5) AND gm.user_id = uc.user_id";

/// A member's group conversations in the shape of [`STATE_COLUMNS`] + [`MESSAGE_COLUMNS`],
/// followed by the activity stamp: driven by the memberships (alias `gm`), the user's row
/// optional (a member who never sent, read or was mentioned has none).
pub(super) const GROUP_STATE_SELECT: &str = "SELECT c.id, NULL::text, COALESCE(uc.read_seq, 0), \
       COALESCE(uc.version, 0), GREATEST(COALESCE(uc.updated_at, 0), c.last_time, c.created_at), \
       c.kind, c.last_seq, COALESCE(uc.mention_seq, 0), c.mention_all_seq, gm.visible_from_seq, \
       m.id, m.conversation_id, m.seq, m.sender, m.recipient, m.client_msg_id, m.content, \
       m.ext, m.server_time, m.mentions, c.activity \
     FROM group_members gm \
     JOIN conversations c ON c.id = 'grp:' || gm.group_id \
     LEFT JOIN user_conversations uc ON uc.user_id = gm.user_id AND uc.conversation_id = c.id \
     LEFT JOIN messages m ON m.conversation_id = c.id AND m.seq = c.last_seq";

/// The column of [`GROUP_STATE_SELECT`] holding the activity stamp.
pub(super) const ACTIVITY_COLUMN: usize = 20;

/// The columns [`user_record`] reads, in order.
pub(super) const USER_COLUMNS: &str =
    "id, nickname, avatar_url, ext, token_generation, created_at, updated_at";

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::new(
        StoreErrorKind::Internal,
        format!("corrupt {what} in the database: {e}"),
    )
}

fn user_id(s: String) -> StoreResult<UserId> {
    UserId::new(s).map_err(|e| corrupt("user id", e))
}

fn json_object_from(
    text: Option<String>,
) -> StoreResult<Option<serde_json::Map<String, serde_json::Value>>> {
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|e| corrupt("ext", e))
}

/// Reads a message starting at column `at`.
pub(super) fn message(row: &Row, at: usize) -> StoreResult<Message> {
    let conversation_id: String = row.try_get(at + 1)?;
    let content: String = row.try_get(at + 6)?;
    let mentions: Option<String> = row.try_get(at + 9)?;
    let conversation_id =
        ConversationId::parse(&conversation_id).map_err(|e| corrupt("conversation id", e))?;
    let recipient: String = row.try_get(at + 4)?;
    let to = match conversation_id.kind() {
        ConversationKind::Group => {
            Peer::Group(GroupId::new(recipient).map_err(|e| corrupt("group id", e))?)
        }
        _ => Peer::User(user_id(recipient)?),
    };
    Ok(Message {
        id: MessageId(row.try_get::<_, i64>(at)? as u64),
        conversation_id,
        seq: row.try_get::<_, i64>(at + 2)? as u64,
        from: user_id(row.try_get(at + 3)?)?,
        to,
        client_msg_id: row.try_get(at + 5)?,
        content: serde_json::from_str(&content).map_err(|e| corrupt("content", e))?,
        ext: json_object_from(row.try_get(at + 7)?)?,
        mentions: mentions
            .map(|m| serde_json::from_str(&m))
            .transpose()
            .map_err(|e| corrupt("mentions", e))?,
        server_time: row.try_get(at + 8)?,
    })
}

/// Reads a conversation state starting at column `at` (with its last message, if any).
pub(super) fn conversation_state(row: &Row, at: usize) -> StoreResult<ConversationState> {
    let conversation_id: String = row.try_get(at)?;
    let peer: Option<String> = row.try_get(at + 1)?;
    let kind: String = row.try_get(at + 5)?;
    let position = crate::ReadPosition {
        last_seq: row.try_get::<_, i64>(at + 6)? as u64,
        read_seq: row.try_get::<_, i64>(at + 2)? as u64,
        mention_seq: row.try_get::<_, i64>(at + 7)? as u64,
        mention_all_seq: row.try_get::<_, i64>(at + 8)? as u64,
        visible_from_seq: row.try_get::<_, i64>(at + 9)? as u64,
    };
    let last_seq: Option<i64> = row.try_get(at + 12)?;
    let last_message = match last_seq {
        Some(seq) if position.shows(seq as u64) => Some(message(row, at + 10)?),
        _ => None,
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
        version: row.try_get::<_, i64>(at + 3)? as u64,
        updated_at: row.try_get(at + 4)?,
    })
}

/// Reads a user row ([`USER_COLUMNS`]).
pub(super) fn user_record(row: &Row) -> StoreResult<UserRecord> {
    Ok(UserRecord {
        user: magpie_proto::rest::User {
            id: user_id(row.try_get(0)?)?,
            nickname: row.try_get(1)?,
            avatar_url: row.try_get(2)?,
            ext: json_object_from(row.try_get(3)?)?,
            created_at: row.try_get(5)?,
            updated_at: row.try_get(6)?,
        },
        token_generation: row.try_get::<_, i64>(4)? as u64,
    })
}

/// The `kind` column's text for a conversation kind (the same words as the SQLite backend).
pub(super) fn kind_to_sql(kind: ConversationKind) -> &'static str {
    match kind {
        ConversationKind::C2c => "c2c",
        ConversationKind::Group => "group",
        ConversationKind::Room => "room",
        ConversationKind::Thread => "thread",
    }
}

fn kind_from_sql(s: &str) -> StoreResult<ConversationKind> {
    Ok(match s {
        "c2c" => ConversationKind::C2c,
        "group" => ConversationKind::Group,
        "room" => ConversationKind::Room,
        "thread" => ConversationKind::Thread,
        other => return Err(corrupt("conversation kind", other)),
    })
}

/// Encodes a JSON object column.
pub(super) fn json_object(
    ext: Option<&serde_json::Map<String, serde_json::Value>>,
) -> StoreResult<Option<String>> {
    ext.map(serde_json::to_string)
        .transpose()
        .map_err(StoreError::internal)
}
