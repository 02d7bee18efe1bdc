//! Magpie's storage layer: the [`Store`] trait and its backends.
//!
//! The store owns durability and ordering: it assigns each stored message the next gap-free
//! `seq` of its conversation in the same atomic write that stores it, dedupes retries on
//! (sender, `client_msg_id`), and keeps every user's per-conversation state (read seq, change
//! version). It knows nothing about connections, delivery or authentication.
//!
//! # Layout
//!
//! - [`Store`]: the async interface the server uses. Writes resolve only once committed.
//! - [`groups`]: the group part of the interface ([`GroupStore`]), guarded by group versions.
//! - [`sqlite`]: the embedded default backend (WAL, group commit on one writer thread).
//! - `postgres` (feature `postgres`): the shared backend for a cluster of servers.
//! - `testsuite` (feature `testsuite`): one conformance suite, instantiated per backend.

use std::time::Duration;

use async_trait::async_trait;
use magpie_proto::frame::Direction;
use magpie_proto::rest::{UpdateUser, User};
use magpie_proto::{ConversationId, ConversationState, Message, Millis, UserId};
use serde_json::{Map, Value};

mod error;
pub mod groups;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod sqlite;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

pub use error::{StoreError, StoreErrorKind};
pub use groups::{
    ApplicationFilter, GroupInfoUpdate, GroupRecord, GroupStore, GroupWrite, MemberUpdate,
    NewApplication, NewGroup,
};

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// An append that is already queued; resolves when it is durable (or failed).
pub type Appending =
    std::pin::Pin<Box<dyn std::future::Future<Output = StoreResult<Appended>> + Send>>;

/// A user as stored: the public profile plus the server-side counters.
#[derive(Clone, PartialEq, Debug)]
pub struct UserRecord {
    /// The public profile.
    pub user: User,
    /// Bumped by every revocation; a token carries the generation it was issued under.
    pub token_generation: u64,
}

/// Fields of a new user.
#[derive(Clone, PartialEq, Debug)]
pub struct NewUser {
    /// The id.
    pub id: UserId,
    /// Display name.
    pub nickname: Option<String>,
    /// Avatar URL.
    pub avatar_url: Option<String>,
    /// App data.
    pub ext: Option<Map<String, Value>>,
    /// Creation time.
    pub now: Millis,
}

/// A message to append. `message.seq` is ignored: the store assigns it.
#[derive(Clone, PartialEq, Debug)]
pub struct NewMessage {
    /// The message with its id, sender, addressee, content and server time filled in.
    pub message: Message,
    /// The users whose conversation rows change: for one-to-one, sender and recipient; for a
    /// group, the sender and the members mentioned by id (the other members' rows are not
    /// written: they find the message through the group activity clock).
    /// Every one of them must exist, or the append fails with `UserNotFound`.
    pub participants: Vec<UserId>,
    /// The participants whose row gets this message as their last mention.
    pub mentioned: Vec<UserId>,
}

/// Called by the store right after the commit that made a message durable, before the
/// caller is answered. Hooks run in commit order, so a single-writer backend hands messages
/// of one conversation to them in seq order; they must be quick and must not block.
pub type OnCommit = Box<dyn FnOnce(&Appended) + Send>;

/// The outcome of [`Store::append_message`].
#[derive(Clone, PartialEq, Debug)]
pub struct Appended {
    /// The message as stored, with its seq.
    pub message: Message,
    /// The message had been stored before under the same (sender, client_msg_id).
    pub duplicate: bool,
}

/// Where a history page starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Anchor {
    /// From the newest (backward) or oldest (forward) message.
    None,
    /// Exclusive seq bound.
    Seq(u64),
    /// Time bound: before it (backward) or at or after it (forward).
    Time(Millis),
}

/// A history query.
#[derive(Clone, PartialEq, Debug)]
pub struct MessageQuery {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Which way to page.
    pub direction: Direction,
    /// Where to start.
    pub anchor: Anchor,
    /// At most this many messages.
    pub limit: u32,
    /// No message below this seq is returned (a group member's join point; 1 for all).
    pub min_seq: u64,
}

/// A page of history, ascending by seq.
#[derive(Clone, PartialEq, Debug)]
pub struct MessagePage {
    /// The messages.
    pub messages: Vec<Message>,
    /// More lie beyond the page in the query's direction.
    pub has_more: bool,
}

/// A page of a user's changed conversations.
#[derive(Clone, PartialEq, Debug)]
pub struct SyncPage {
    /// Rows with a version above the requested one, ascending by version.
    pub conversations: Vec<ConversationState>,
    /// The version to ask from next time.
    pub version: u64,
    /// More rows are waiting.
    pub has_more: bool,
}

impl SyncPage {
    /// A page from up to `limit + 1` rows, each with the cursor value it was found by,
    /// ascending: the extra row only says more are waiting. The next cursor is the last row's
    /// when more are waiting, else `current` (everything up to it has been seen).
    pub(crate) fn from_rows(
        mut rows: Vec<(ConversationState, u64)>,
        limit: u32,
        current: u64,
    ) -> Self {
        let has_more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let version = match rows.last() {
            Some((_, cursor)) if has_more => *cursor,
            _ => current,
        };
        Self {
            conversations: rows.into_iter().map(|(state, _)| state).collect(),
            version,
            has_more,
        }
    }
}

/// The outcome of [`Store::mark_read`].
#[derive(Clone, PartialEq, Debug)]
pub struct ReadOutcome {
    /// The user's state after the call (without `last_message`).
    pub state: ConversationState,
    /// Whether the read seq moved (if not, nothing was written and no version was used).
    pub changed: bool,
    /// The read seq before the call: what the read covers is `(previous_read_seq, read_seq]`.
    pub previous_read_seq: u64,
}

/// Where a user stands in a conversation, as both backends read it; the rules that turn it
/// into the [`ConversationState`] a device sees.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadPosition {
    /// The conversation's last seq.
    pub(crate) last_seq: u64,
    /// The user's stored read seq (0 if they have no row).
    pub(crate) read_seq: u64,
    /// The last message that mentioned the user by id.
    pub(crate) mention_seq: u64,
    /// The last message that mentioned everyone.
    pub(crate) mention_all_seq: u64,
    /// The user's join point (1 outside groups).
    pub(crate) visible_from_seq: u64,
}

impl ReadPosition {
    /// The read seq, never before the join point: what a member missed before joining is
    /// neither unread nor shown.
    pub(crate) fn effective_read_seq(&self) -> u64 {
        self.read_seq.max(self.visible_from_seq.saturating_sub(1))
    }

    pub(crate) fn unread_count(&self) -> u64 {
        self.last_seq.saturating_sub(self.effective_read_seq())
    }

    /// An unread message mentions the user.
    pub(crate) fn mentioned(&self) -> bool {
        self.mention_seq.max(self.mention_all_seq) > self.effective_read_seq()
    }

    /// Whether the user may see the message of this seq.
    pub(crate) fn shows(&self, seq: u64) -> bool {
        seq >= self.visible_from_seq
    }
}

/// A message's mentions as stored (a JSON column, NULL if nobody is mentioned).
pub(crate) fn mentions_json(message: &Message) -> StoreResult<Option<String>> {
    message
        .mentions
        .as_ref()
        .filter(|m| !m.is_empty())
        .map(serde_json::to_string)
        .transpose()
        .map_err(StoreError::internal)
}

/// The largest snowflake node id: node ids are `0..=MAX_NODE_ID` (10 bits).
pub const MAX_NODE_ID: u16 = 1023;

/// Told about every commit, for metrics.
pub trait CommitObserver: Send + Sync + 'static {
    /// A transaction holding `batch` writes committed after `elapsed`.
    fn on_commit(&self, batch: usize, elapsed: Duration);

    /// The only writer stopped applying writes for `elapsed` to maintain the store (SQLite:
    /// the checkpoint that lets a full WAL start over). Every write queued meanwhile waited.
    fn on_writer_pause(&self, _elapsed: Duration) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl CommitObserver for NoObserver {
    fn on_commit(&self, _batch: usize, _elapsed: Duration) {}
}

/// The storage interface. Every write method returns only after its write is committed.
#[async_trait]
pub trait Store: GroupStore + Send + Sync + 'static {
    /// Creates a user; `Conflict` if the id is taken.
    async fn create_user(&self, user: NewUser) -> StoreResult<User>;
    /// Reads a user.
    async fn get_user(&self, id: &UserId) -> StoreResult<Option<UserRecord>>;
    /// Applies a partial update; `NotFound` if there is no such user.
    async fn update_user(&self, id: &UserId, update: UpdateUser, now: Millis) -> StoreResult<User>;
    /// Deletes a user and their conversation rows (messages stay, the peers still see them).
    /// Returns whether the user existed. The id may be created again later: the new user
    /// starts with a fresh profile and no conversations, but its token generation stays above
    /// every token issued before the deletion, and its change counter keeps counting up.
    async fn delete_user(&self, id: &UserId) -> StoreResult<bool>;
    /// Invalidates every token issued so far; returns the new generation. `NotFound` if absent.
    async fn revoke_tokens(&self, id: &UserId) -> StoreResult<u64>;

    /// Stores a message with the conversation's next seq, unless the same sender stored the
    /// same client_msg_id in this conversation before, in which case the original is returned
    /// with `duplicate: true`.
    /// Updates each participant's conversation row; the sender's read seq moves to the message.
    /// `on_commit` runs once the outcome is durable (also for a duplicate).
    ///
    /// Not an `async fn` on purpose: the append is queued **when this is called**, before the
    /// returned future is first polled, so appends issued one after another by a caller are
    /// applied — and get their seqs — in that order, however their futures are later polled.
    /// When the store cannot queue more writes the future resolves to `Unavailable` at once.
    fn append_message(&self, message: NewMessage, on_commit: Option<OnCommit>) -> Appending;
    /// A page of a conversation's history.
    async fn get_messages(&self, query: MessageQuery) -> StoreResult<MessagePage>;
    /// The largest message id ever stored (0 if none), so id generators never go backwards.
    async fn max_message_id(&self) -> StoreResult<u64>;

    /// A user's conversations that changed after `since`, ascending by version.
    async fn changed_conversations(
        &self,
        user: &UserId,
        since: u64,
        limit: u32,
    ) -> StoreResult<SyncPage>;
    /// The group conversations of `user`'s groups whose activity stamp is above `since`,
    /// ascending by stamp; the page's `version` is the stamp cursor to pass next time.
    /// Read seqs are never below a member's join point (`visible_from_seq - 1`).
    async fn changed_group_conversations(
        &self,
        user: &UserId,
        since: u64,
        limit: u32,
    ) -> StoreResult<SyncPage>;
    /// A user's state of one conversation; `None` if the user has no row for it (and, for a
    /// group conversation, is not a member).
    async fn conversation_state(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> StoreResult<Option<ConversationState>>;
    /// Moves a user's read seq forward (clamped to the last seq). `ConversationNotFound` if
    /// the user has no row for the conversation and is not a member of its group.
    async fn mark_read(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        seq: u64,
        now: Millis,
    ) -> StoreResult<ReadOutcome>;

    /// Claims the lowest node id in `0..=MAX_NODE_ID` that no live lease holds, for `holder`
    /// (a unique instance name), for `lease`. Cluster nodes sharing a store thereby take
    /// distinct snowflake node ids. `Unavailable` if all are taken.
    async fn claim_node_id(&self, holder: &str, lease: Duration) -> StoreResult<u16>;
    /// Extends `holder`'s lease on `node` to `lease` from now; `Ok(false)` if the lease was lost
    /// (expired and claimed by another holder). An expired lease nobody took is renewed.
    async fn renew_node_id(&self, node: u16, holder: &str, lease: Duration) -> StoreResult<bool>;
    /// Gives the id back (clean shutdown); a no-op if `holder` no longer holds it.
    async fn release_node_id(&self, node: u16, holder: &str) -> StoreResult<()>;

    /// Finishes pending writes and releases resources. Later calls fail with `Unavailable`.
    async fn close(&self) -> StoreResult<()>;
}
