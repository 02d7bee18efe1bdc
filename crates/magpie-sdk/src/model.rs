//! The app-facing shapes of locally cached data and of history queries.
//!
//! Plain data only: no I/O, no locking. The wire types themselves come from `magpie-proto` and
//! are never re-declared here; these types add what only a device knows (local status, local
//! time, the row id) on top of them.

use serde_json::{Map, Value};

use magpie_proto::frame::Direction;
use magpie_proto::{
    ConversationId, ConversationKind, GroupId, Mentions, Message, MessageContent, MessageId,
    Millis, Peer, UserId,
};

/// Where a message stands from this device's point of view.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MessageStatus {
    /// Written to the outbox, waiting for the server's answer.
    Sending,
    /// Stored by the server (sent from this user, on this or another device).
    Sent,
    /// The server rejected it; see [`ChatManager::resend`](crate::ChatManager::resend).
    Failed,
    /// Received from another user.
    Received,
}

impl MessageStatus {
    pub(crate) fn as_i64(self) -> i64 {
        match self {
            Self::Sending => 0,
            Self::Sent => 1,
            Self::Failed => 2,
            Self::Received => 3,
        }
    }

    pub(crate) fn from_i64(n: i64) -> Option<Self> {
        Some(match n {
            0 => Self::Sending,
            1 => Self::Sent,
            2 => Self::Failed,
            3 => Self::Received,
            _ => return None,
        })
    }
}

/// A message as kept in the local cache: either stored by the server (with id, seq and server
/// time) or still local (sending or failed).
#[derive(Clone, PartialEq, Debug)]
pub struct LocalMessage {
    /// The row id in the local database; stable, increasing in insertion order.
    pub local_id: i64,
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The server's id, once stored.
    pub message_id: Option<MessageId>,
    /// The seq, once stored.
    pub seq: Option<u64>,
    /// The sender.
    pub from: UserId,
    /// The addressee.
    pub to: Peer,
    /// The id the sending device chose.
    pub client_msg_id: String,
    /// What it says.
    pub content: MessageContent,
    /// Free-form app data.
    pub ext: Option<Map<String, Value>>,
    /// When the server accepted it, once stored.
    pub server_time: Option<Millis>,
    /// When this device first saw or created it.
    pub local_time: Millis,
    /// Where it stands.
    pub status: MessageStatus,
    /// Why the server rejected it, for [`MessageStatus::Failed`].
    pub error: Option<magpie_proto::ErrorBody>,
    /// Who a group message mentions.
    pub mentions: Option<Mentions>,
}

impl LocalMessage {
    /// The server message, when the server has stored it.
    pub fn to_message(&self) -> Option<Message> {
        Some(Message {
            id: self.message_id?,
            conversation_id: self.conversation_id.clone(),
            seq: self.seq?,
            from: self.from.clone(),
            to: self.to.clone(),
            client_msg_id: self.client_msg_id.clone(),
            content: self.content.clone(),
            ext: self.ext.clone(),
            mentions: self.mentions.clone(),
            server_time: self.server_time?,
        })
    }
}

/// A page of locally cached messages, oldest first.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct LocalPage {
    /// The messages in conversation order: stored ones by seq, then pending ones.
    pub messages: Vec<LocalMessage>,
    /// Older messages exist locally before this page.
    pub has_more: bool,
}

/// A conversation as this device knows it.
#[derive(Clone, PartialEq, Debug)]
pub struct Conversation {
    /// The conversation id.
    pub conversation_id: ConversationId,
    /// Its kind.
    pub kind: ConversationKind,
    /// For one-to-one conversations: the other participant. `None` for groups (see
    /// [`group_id`](Self::group_id)).
    pub peer: Option<UserId>,
    /// Seq of the newest message known (from sync or delivery).
    pub last_seq: u64,
    /// Seq up to which this user has read.
    pub read_seq: u64,
    /// Messages not read yet (`last_seq − read_seq`). In a group, what was sent before this
    /// user joined never counts.
    pub unread_count: u64,
    /// An unread message mentions this user (by id, or everyone with "@all"); cleared by
    /// reading past it ([`ChatManager::mark_read`](crate::ChatManager::mark_read)).
    pub mentioned: bool,
    /// The newest stored message, if known.
    pub last_message: Option<Message>,
    /// When something last happened in it (newest message or local send), ms since the epoch;
    /// conversation lists are sorted by it, newest first.
    pub last_activity: Millis,
}

impl Conversation {
    /// For a group conversation: the group.
    pub fn group_id(&self) -> Option<GroupId> {
        self.conversation_id.group_id()
    }

    /// Who a message to this conversation goes to: the peer, or the group.
    pub fn target(&self) -> Option<Peer> {
        match (&self.peer, self.group_id()) {
            (Some(peer), _) => Some(Peer::User(peer.clone())),
            (None, Some(group)) => Some(Peer::Group(group)),
            (None, None) => None,
        }
    }
}

/// Where a history page starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum HistoryAnchor {
    /// No anchor: the newest page (backward) or the oldest page (forward).
    #[default]
    None,
    /// Messages with seq below (backward) or above (forward) this seq.
    Seq(u64),
    /// Messages sent before (backward) or at or after (forward) this time.
    Time(Millis),
}

/// A query of the server's history of one conversation (`get_messages`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HistoryQuery {
    /// Which way to page.
    pub direction: Direction,
    /// Where to start.
    pub anchor: HistoryAnchor,
    /// Page size, 1 to 200.
    pub limit: u32,
}

impl Default for HistoryQuery {
    fn default() -> Self {
        Self {
            direction: Direction::Backward,
            anchor: HistoryAnchor::None,
            limit: 50,
        }
    }
}

impl HistoryQuery {
    /// The `limit` messages before `seq`, the usual "load older" page.
    pub fn before_seq(seq: u64, limit: u32) -> Self {
        Self {
            direction: Direction::Backward,
            anchor: HistoryAnchor::Seq(seq),
            limit,
        }
    }

    /// The `limit` messages after `seq`.
    pub fn after_seq(seq: u64, limit: u32) -> Self {
        Self {
            direction: Direction::Forward,
            anchor: HistoryAnchor::Seq(seq),
            limit,
        }
    }
}
