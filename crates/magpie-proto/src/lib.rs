//! The Magpie wire protocol, shared by the server, the SDK, the CLI and the load generator.
//!
//! This crate owns every type that crosses the wire and nothing else: it has no I/O, no async
//! runtime and no server dependency, so any client can depend on it cheaply.
//!
//! # Layout
//!
//! - [`ids`]: user, device, conversation and message identifiers and their validation rules.
//! - [`error`]: the numeric error-code table and the error payload, with HTTP status mapping.
//! - [`message`]: message content types, stored messages, conversation state, platforms.
//! - [`frame`]: the request / response / event frames of the WebSocket protocol and their ops.
//! - [`group`]: group ids, info, options, members, applications and the `group` event.
//! - [`codec`]: JSON (canonical) and MessagePack encodings, negotiated by WebSocket subprotocol.
//! - [`rest`]: request and response bodies of the REST API used by the app backend.
//!
//! `docs/PROTOCOL.md` at the repository root describes the same protocol in prose for client
//! authors in other languages; keep the two in step.

pub mod codec;
pub mod error;
pub mod frame;
pub mod group;
pub mod ids;
pub mod message;
pub mod rest;

pub use codec::Codec;
pub use error::{ErrorBody, ErrorCode};
pub use frame::{ClientFrame, Event, Request, Response, ServerFrame};
pub use group::GroupId;
pub use ids::{ConversationId, ConversationKind, DeviceId, MessageId, UserId};
pub use message::{
    ConversationState, Mentions, Message, MessageContent, Peer, Platform, PlatformClass,
};

/// The protocol version this crate speaks. It is carried in the WebSocket subprotocol name.
pub const PROTOCOL_VERSION: u32 = 1;

/// Milliseconds since the Unix epoch, the unit of every timestamp on the wire.
pub type Millis = i64;
