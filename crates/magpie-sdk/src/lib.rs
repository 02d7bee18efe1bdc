//! The Magpie client SDK: one [`Client`] per app installation, talking to a Magpie server over
//! one WebSocket connection and keeping a local SQLite cache per user.
//!
//! What the SDK guarantees to the app (see `docs/PROTOCOL.md` §7):
//!
//! - **Exactly once, in order.** Every stored message of a conversation — one-to-one or group,
//!   server-written group notices included — is emitted once, as
//!   [`ClientEvent::MessageReceived`], in seq order — across reconnects and app restarts. Gaps
//!   are filled from the server before anything after them is emitted. In a group, a member's
//!   history starts where they joined; nothing before it is shown or counted as unread.
//! - **Nothing sent is lost.** [`ChatManager::send`] writes the message to a persistent outbox
//!   first; if the connection is down it goes out, with the same `client_msg_id`, after the next
//!   login and sync.
//! - **It comes back on its own.** The connection is re-established with backoff, followed by a
//!   `sync` that pulls what was missed. Kicks and expired tokens stop the loop and are reported.
//! - **It moves to another node when one dies.** Given several server URLs (the nodes of a
//!   cluster, see [`ClientConfig::builder_with_urls`]), each reconnect dials the next one, and
//!   every URL is tried before the backoff waits. All of the above holds across a change of
//!   node; [`Client::current_server`] says which one is in use.
//!
//! ```no_run
//! # async fn demo() -> magpie_sdk::Result<()> {
//! use magpie_sdk::{Client, ClientConfig, ClientEvent, GroupId, Mentions, MessageContent, UserId};
//!
//! let config = ClientConfig::builder("ws://127.0.0.1:8080", "/tmp/magpie-alice").build()?;
//! // A cluster: ClientConfig::builder_with_urls(["wss://chat-1.example", "wss://chat-2.example"], dir)
//! let client = Client::new(config)?;
//! let mut events = client.events(); // subscribe before login so nothing is missed
//! client.login(UserId::new("alice")?, "token-from-your-backend").await?;
//!
//! let bob = UserId::new("bob")?;
//! client.chat().send(bob, MessageContent::text("hello"), None).await?;
//! // A group message that mentions bob (his conversation shows `mentioned` until he reads it).
//! let mentions = Mentions { user_ids: vec![UserId::new("bob")?], all: false };
//! let team = GroupId::new("team")?;
//! client.chat().send_group(team, MessageContent::text("@bob hi"), Some(mentions), None).await?;
//! while let Some(event) = events.recv().await {
//!     if let ClientEvent::MessageReceived(message) = event {
//!         println!("{}: {:?}", message.from, message.content);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Module map
//!
//! - [`config`]: [`ClientConfig`] and its builder, server URLs and their normalisation, the
//!   order they are tried in ([`ServerOrder`]), reconnect policy.
//! - [`error`]: the [`Error`] type and its [`ErrorKind`].
//! - [`events`]: [`ClientEvent`], the per-subscriber event fan-out.
//! - [`model`]: what the local cache returns: [`Conversation`], [`LocalMessage`], pages.
//! - `client`: the public [`Client`] and [`ChatManager`] handles.
//! - `groups`: the [`GroupManager`] handle (every `group_*` op, group read receipts and
//!   blocking a group's messages) and keeping the group cache in step: from answers, from
//!   `group` events, and by re-reading the joined groups after login. Group *messages* go
//!   through [`ChatManager`] like any other.
//! - `session`: one logged-in user's runtime: the connect / login / sync / reconnect loop and
//!   the delivery pipeline from the wire to the store to the app.
//! - `connection`: one WebSocket: framing, request/response correlation, heartbeat.
//! - `sequencer`: the pure per-conversation cursor / gap state machine.
//! - `sync`: the catch-up after each login, over both sync cursors (the user's own changes
//!   and the group activity clock).
//! - `outbox`: pending sends: waiters and the in-order flusher.
//! - `store`: the SQLite cache (messages, conversations, outbox, groups and members).
//! - `rotation`: which server URL the next attempt dials, and when (one backoff delay per
//!   round of the URLs).
//! - `backoff`: reconnect delays.

mod backoff;
mod client;
pub mod config;
mod connection;
pub mod error;
pub mod events;
mod groups;
pub mod model;
mod outbox;
mod rotation;
mod sequencer;
mod session;
mod store;
mod sync;

pub use client::{ChatManager, Client};
pub use config::{ClientConfig, ClientConfigBuilder, ReconnectPolicy, ServerOrder};
pub use error::{Error, ErrorKind, Result};
pub use events::{ClientEvent, ConnectionState, DisconnectReason, Events};
pub use groups::GroupManager;
pub use model::{
    Conversation, HistoryAnchor, HistoryQuery, LocalMessage, LocalPage, MessageStatus,
};

/// The wire protocol crate, for the types this SDK's API is built from.
pub use magpie_proto as proto;
pub use magpie_proto::frame::{Direction, KickReason, LoginResponse, MessagesPage};
pub use magpie_proto::group::{
    GroupChange, GroupEvent, GroupId, GroupInfo, GroupMember, GroupOptions, GroupReadEvent,
    GroupRole, JoinPolicy, MessageReadCount, ReadReceipts, ReadReceiptsRequest,
};
pub use magpie_proto::message::{DeviceInfo, GroupNoticeBody, GroupNoticeKind};
pub use magpie_proto::{
    Codec, ConversationId, ConversationKind, DeviceId, ErrorBody, ErrorCode, Mentions, Message,
    MessageContent, MessageId, Millis, Peer, Platform, UserId,
};
