//! Frames of the WebSocket protocol.
//!
//! A client sends requests: `{"id": 7, "op": "send", "data": {...}}`. The server answers each
//! with a response carrying the same id — `{"type": "response", "id": 7, "op": "send",
//! "data": {...}}` or `{"type": "error", "id": 7, "op": "send", "error": {"code": …,
//! "message": …}}` — and pushes events: `{"type": "event", "event": "message", "data": {...}}`.
//!
//! Every op and event is declared once in the tables below; the request, response and event
//! enums, their op names and their (de)serialisation are generated from them.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::Millis;
use crate::error::ErrorBody;
use crate::group;
use crate::ids::{ConversationId, DeviceId, UserId};
use crate::message::{
    ConversationState, DeviceInfo, Mentions, Message, MessageContent, Peer, Platform,
};

/// Standard and Magpie-specific WebSocket close codes the server uses.
pub mod close {
    /// The server is shutting down or restarting; reconnect (with backoff).
    pub const GOING_AWAY: u16 = 1001;
    /// A frame exceeded the hard WebSocket message limit; the connection cannot continue.
    pub const TOO_BIG: u16 = 1009;
    /// The server is restarting; reconnect (with backoff).
    pub const SERVICE_RESTART: u16 = 1012;
    /// The session was kicked (see the `kicked` event for why). Do not reconnect automatically.
    pub const KICKED: u16 = 4001;
    /// The token expired. Reconnect only with a new token.
    pub const TOKEN_EXPIRED: u16 = 4002;
    /// No successful `login` within the login timeout.
    pub const LOGIN_TIMEOUT: u16 = 4003;
    /// Nothing received from the client within the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4004;
    /// The client did not read its events fast enough; reconnect and sync.
    pub const SLOW_CONSUMER: u16 = 4005;
    /// The client logged out.
    pub const LOGGED_OUT: u16 = 4006;
}

/// A payload-less request or response; encodes as `{}` and accepts anything.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Empty;

impl Serialize for Empty {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_map(Some(0))?.end()
    }
}

impl<'de> Deserialize<'de> for Empty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d).map(|_| Empty)
    }
}

/// `login`: authenticate this connection as one device of a user. Must be the first request.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct LoginRequest {
    /// The user.
    pub user_id: UserId,
    /// A token issued by the app backend through the REST API.
    pub token: String,
    /// A stable id of this installation.
    pub device_id: DeviceId,
    /// The device's platform; decides the multi-device policy class.
    pub platform: Platform,
    /// Free-form client version, for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_version: Option<String>,
}

/// The answer to `login`: the session's parameters.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct LoginResponse {
    /// The authenticated user.
    pub user_id: UserId,
    /// This device.
    pub device_id: DeviceId,
    /// The server's clock, to estimate skew.
    pub server_time: Millis,
    /// When the token expires; `token_will_expire` comes before that.
    pub token_expires_at: Millis,
    /// How often the server pings; a client should also send `ping` this often when idle.
    pub heartbeat_interval_ms: u64,
    /// The server closes a connection it has heard nothing from for this long.
    pub idle_timeout_ms: u64,
    /// Largest frame the server accepts.
    pub max_frame_bytes: u64,
    /// Largest message (content plus ext, JSON-encoded) the server accepts.
    pub max_message_bytes: u64,
}

/// `renew_token`: replace the session's token without reconnecting.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct RenewTokenRequest {
    /// The new token, for the same user.
    pub token: String,
}

/// A token's expiry (the answer to `renew_token`, and the `token_will_expire` event).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct TokenInfo {
    /// When the token expires (ms since the Unix epoch).
    pub expires_at: Millis,
}

/// The answer to `ping`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Pong {
    /// The server's clock.
    pub server_time: Millis,
}

/// `send`: store a message and deliver it.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct SendRequest {
    /// The addressee.
    pub to: Peer,
    /// Chosen by the device, unique per sender; a retry with the same id returns the original.
    pub client_msg_id: String,
    /// What the message says.
    pub content: MessageContent,
    /// Free-form app data (a JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<Map<String, Value>>,
    /// Members a group message mentions (group messages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mentions: Option<Mentions>,
}

/// The answer to `send`: the message as stored (or, for a command, as delivered).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct SendResponse {
    /// The stored message, with its id, seq and server time.
    pub message: Message,
    /// True when this was a retry of an already-stored message.
    #[serde(default)]
    pub duplicate: bool,
}

/// `sync`: conversations of this user that changed after `since`, and group conversations
/// with activity after `groups_since`.
///
/// Two cursors, because a group message changes no per-member row: `since` follows the user's
/// own change counter (one-to-one messages, their reads, their sends, mentions of them), and
/// `groups_since` follows the store-wide group activity clock over the user's groups.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct SyncRequest {
    /// The `version` of the previous sync page (0 for a fresh device).
    #[serde(default)]
    pub since: u64,
    /// The `groups_version` of the previous sync page (0 for a fresh device).
    #[serde(default)]
    pub groups_since: u64,
    /// Page size, 1 to 500 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// The answer to `sync`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct SyncResponse {
    /// Changed conversations, oldest change first.
    pub conversations: Vec<ConversationState>,
    /// Pass as `since` next time.
    pub version: u64,
    /// Pass as `groups_since` next time.
    #[serde(default)]
    pub groups_version: u64,
    /// More changes are waiting: ask again with `since = version` and
    /// `groups_since = groups_version`.
    pub has_more: bool,
}

/// Which way `get_messages` pages.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Towards older messages (the default).
    #[default]
    Backward,
    /// Towards newer messages.
    Forward,
}

/// `get_messages`: one page of a conversation's history.
///
/// The anchor is `seq` or `time` (not both). Backward returns messages with seq below the
/// anchor (or sent before `time`), newest page first; forward returns messages with seq above
/// the anchor (or sent at or after `time`). Without an anchor, backward starts at the newest
/// message and forward at the oldest. Either way the page is in ascending seq order.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct GetMessagesRequest {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Which way to page.
    #[serde(default)]
    pub direction: Direction,
    /// Seq anchor (exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Time anchor (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Millis>,
    /// Page size, 1 to 200 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A page of messages in ascending seq order.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct MessagesPage {
    /// The messages.
    pub messages: Vec<Message>,
    /// More messages lie beyond this page in the requested direction.
    pub has_more: bool,
}

/// `mark_read`: this user has read a conversation up to `seq`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct MarkReadRequest {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Read up to and including this seq. Lower than the stored read seq: no change;
    /// above the last seq: clamped to it.
    pub seq: u64,
}

/// The answer to `list_devices`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct DeviceList {
    /// The user's online devices, this one included.
    pub devices: Vec<DeviceInfo>,
}

/// The `conversation_read` event: another device of this user read a conversation.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct ReadState {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The new read seq.
    pub read_seq: u64,
    /// Unread messages left.
    pub unread_count: u64,
    /// The user's change counter after this change.
    pub version: u64,
}

/// Why a session was kicked.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KickReason {
    /// Another device of the same platform class logged in.
    Replaced,
    /// The same device logged in again on a new connection.
    SameDevice,
    /// The app backend revoked the user's tokens.
    TokensRevoked,
    /// The app backend deleted the user.
    UserDeleted,
}

/// The `kicked` event; the server closes the connection with [`close::KICKED`] right after.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Kicked {
    /// Why.
    pub reason: KickReason,
    /// A human-readable explanation.
    pub message: String,
}

/// A set of named payloads: requests, responses or events.
pub trait Payload: Sized {
    /// Every name in the set.
    const NAMES: &'static [&'static str];
    /// This payload's name.
    fn name(&self) -> &'static str;
    /// Decodes the payload of the named kind.
    fn deserialize_named<'de, D: Deserializer<'de>>(name: &str, d: D) -> Result<Self, D::Error>;
    /// Encodes the inner payload (without the name).
    fn serialize_inner<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error>;
}

macro_rules! payloads {
    ($enum:ident, $doc:literal, { $($(#[$vdoc:meta])* $variant:ident($ty:ty) = $name:literal;)* }) => {
        #[doc = $doc]
        #[derive(Clone, PartialEq, Debug)]
        // Frames are short-lived and moved rarely; boxing the big variants would cost an
        // allocation per frame for nothing.
        #[allow(clippy::large_enum_variant)]
        pub enum $enum {
            $($(#[$vdoc])* $variant($ty),)*
        }

        impl Payload for $enum {
            const NAMES: &'static [&'static str] = &[$($name,)*];

            fn name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $name,)*
                }
            }

            fn deserialize_named<'de, D: Deserializer<'de>>(name: &str, d: D) -> Result<Self, D::Error> {
                match name {
                    $($name => <$ty>::deserialize(d).map(Self::$variant),)*
                    other => Err(de::Error::unknown_variant(other, Self::NAMES)),
                }
            }

            fn serialize_inner<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(Self::$variant(inner) => inner.serialize(s),)*
                }
            }
        }
    };
}

payloads!(Request, "A request's op and data.", {
    /// Authenticate. Must come first.
    Login(LoginRequest) = "login";
    /// Replace the session's token.
    RenewToken(RenewTokenRequest) = "renew_token";
    /// End the session; the server closes the connection.
    Logout(Empty) = "logout";
    /// Application-level heartbeat.
    Ping(Empty) = "ping";
    /// Send a message.
    Send(SendRequest) = "send";
    /// Conversations changed since a version.
    Sync(SyncRequest) = "sync";
    /// A page of history.
    GetMessages(GetMessagesRequest) = "get_messages";
    /// Mark a conversation read.
    MarkRead(MarkReadRequest) = "mark_read";
    /// The user's online devices.
    ListDevices(Empty) = "list_devices";
    /// Create a group; the caller becomes its owner.
    GroupCreate(group::CreateGroupRequest) = "group_create";
    /// Groups' info.
    GroupInfo(group::GroupIds) = "group_info";
    /// Change a group's info, announcement or options (owners and admins).
    GroupUpdate(group::UpdateGroupRequest) = "group_update";
    /// Destroy a group (owner).
    GroupDestroy(group::GroupRef) = "group_destroy";
    /// The caller's groups, paged.
    GroupJoined(group::GroupPageRequest) = "group_joined";
    /// Groups anyone may find (not invite-only), paged and searchable.
    GroupDirectory(group::GroupPageRequest) = "group_directory";
    /// Join, or apply to join.
    GroupJoin(group::JoinGroupRequest) = "group_join";
    /// Invite or add users.
    GroupInvite(group::InviteRequest) = "group_invite";
    /// Accept or decline an application or invitation.
    GroupHandleApplication(group::HandleApplicationRequest) = "group_handle_application";
    /// Applications and invitations, received or sent.
    GroupApplications(group::ApplicationsRequest) = "group_applications";
    /// Leave a group.
    GroupLeave(group::GroupRef) = "group_leave";
    /// Remove members, optionally barring them for a while.
    GroupKick(group::KickRequest) = "group_kick";
    /// Hand ownership to another member.
    GroupTransfer(group::TransferRequest) = "group_transfer";
    /// Make members admins or ordinary members.
    GroupSetRole(group::SetRoleRequest) = "group_set_role";
    /// Members, paged.
    GroupMembers(group::MembersRequest) = "group_members";
    /// Some members' info.
    GroupMembersInfo(group::MembersInfoRequest) = "group_members_info";
    /// A member's nickname and attributes.
    GroupSetMember(group::SetMemberRequest) = "group_set_member";
    /// Mute or unmute members.
    GroupMute(group::MuteRequest) = "group_mute";
    /// Mute or unmute everyone.
    GroupMuteAll(group::MuteAllRequest) = "group_mute_all";
    /// Change who may speak while everyone is muted.
    GroupAllowList(group::ListChangeRequest) = "group_allow_list";
    /// Change the block list.
    GroupBlockList(group::ListChangeRequest) = "group_block_list";
    /// The block list, paged.
    GroupBlocks(group::BlocksRequest) = "group_blocks";
    /// Set and delete group attributes.
    GroupSetAttributes(group::SetAttributesRequest) = "group_set_attributes";
    /// The group attributes.
    GroupAttributes(group::GroupRef) = "group_attributes";
    /// Add to a group counter.
    GroupAddCounter(group::AddCounterRequest) = "group_add_counter";
    /// The group counters.
    GroupCounters(group::GroupRef) = "group_counters";
    /// Receive a group's messages or not (the caller stays a member either way).
    GroupSetReceive(group::SetReceiveRequest) = "group_set_receive";
    /// Who has (not) read a group message, or only how many.
    GroupReadReceipts(group::ReadReceiptsRequest) = "group_read_receipts";
});

payloads!(Response, "A successful response's op and data.", {
    /// To `login`.
    Login(LoginResponse) = "login";
    /// To `renew_token`.
    RenewToken(TokenInfo) = "renew_token";
    /// To `logout`.
    Logout(Empty) = "logout";
    /// To `ping`.
    Ping(Pong) = "ping";
    /// To `send`.
    Send(SendResponse) = "send";
    /// To `sync`.
    Sync(SyncResponse) = "sync";
    /// To `get_messages`.
    GetMessages(MessagesPage) = "get_messages";
    /// To `mark_read`.
    MarkRead(ConversationState) = "mark_read";
    /// To `list_devices`.
    ListDevices(DeviceList) = "list_devices";
    /// To `group_create`.
    GroupCreate(group::GroupInfo) = "group_create";
    /// To `group_info`.
    GroupInfo(group::GroupList) = "group_info";
    /// To `group_update`.
    GroupUpdate(group::GroupInfo) = "group_update";
    /// To `group_destroy`.
    GroupDestroy(Empty) = "group_destroy";
    /// To `group_joined`.
    GroupJoined(group::GroupPage) = "group_joined";
    /// To `group_directory`.
    GroupDirectory(group::GroupPage) = "group_directory";
    /// To `group_join`.
    GroupJoin(group::JoinGroupResponse) = "group_join";
    /// To `group_invite`.
    GroupInvite(group::InviteResponse) = "group_invite";
    /// To `group_handle_application`.
    GroupHandleApplication(group::GroupApplication) = "group_handle_application";
    /// To `group_applications`.
    GroupApplications(group::ApplicationsPage) = "group_applications";
    /// To `group_leave`.
    GroupLeave(Empty) = "group_leave";
    /// To `group_kick`.
    GroupKick(Empty) = "group_kick";
    /// To `group_transfer`.
    GroupTransfer(group::GroupInfo) = "group_transfer";
    /// To `group_set_role`.
    GroupSetRole(Empty) = "group_set_role";
    /// To `group_members`.
    GroupMembers(group::MembersPage) = "group_members";
    /// To `group_members_info`.
    GroupMembersInfo(group::MemberList) = "group_members_info";
    /// To `group_set_member`.
    GroupSetMember(group::GroupMember) = "group_set_member";
    /// To `group_mute`.
    GroupMute(Empty) = "group_mute";
    /// To `group_mute_all`.
    GroupMuteAll(Empty) = "group_mute_all";
    /// To `group_allow_list`.
    GroupAllowList(Empty) = "group_allow_list";
    /// To `group_block_list`.
    GroupBlockList(Empty) = "group_block_list";
    /// To `group_blocks`.
    GroupBlocks(group::BlocksPage) = "group_blocks";
    /// To `group_set_attributes`.
    GroupSetAttributes(group::GroupAttributes) = "group_set_attributes";
    /// To `group_attributes`.
    GroupAttributes(group::GroupAttributes) = "group_attributes";
    /// To `group_add_counter`.
    GroupAddCounter(group::GroupCounters) = "group_add_counter";
    /// To `group_counters`.
    GroupCounters(group::GroupCounters) = "group_counters";
    /// To `group_set_receive`.
    GroupSetReceive(Empty) = "group_set_receive";
    /// To `group_read_receipts`.
    GroupReadReceipts(group::ReadReceipts) = "group_read_receipts";
});

payloads!(Event, "An event pushed by the server.", {
    /// A new message in one of the user's conversations (including their own, sent from another device).
    Message(Message) = "message";
    /// Another device of this user read a conversation.
    ConversationRead(ReadState) = "conversation_read";
    /// The token expires soon: renew it with `renew_token`.
    TokenWillExpire(TokenInfo) = "token_will_expire";
    /// The token expired; the server closes the connection.
    TokenExpired(Empty) = "token_expired";
    /// The session was kicked; the server closes the connection.
    Kicked(Kicked) = "kicked";
    /// Events may have been missed (the server lost touch with the rest of its cluster for a
    /// while): run `sync`, and fetch the history of conversations whose last seq moved.
    SyncRequired(Empty) = "sync_required";
    /// Something changed in a group the user belongs to, was invited to or applied to.
    Group(group::GroupEvent) = "group";
    /// Members read some of this user's group messages: their new read counts.
    GroupRead(group::GroupReadEvent) = "group_read";
});

/// A frame from client to server.
#[derive(Clone, PartialEq, Debug)]
pub struct ClientFrame {
    /// Client-chosen request id, echoed in the response. Keep it below 2^53 for JavaScript.
    pub id: u64,
    /// What is asked.
    pub request: Request,
}

/// A frame from server to client.
#[derive(Clone, PartialEq, Debug)]
pub enum ServerFrame {
    /// A request succeeded.
    Response {
        /// The request's id.
        id: u64,
        /// The op and its result.
        response: Response,
    },
    /// A request failed. `id` and `op` are absent when the frame was too broken to read them.
    Error {
        /// The request's id, if it could be read.
        id: Option<u64>,
        /// The request's op, if it could be read.
        op: Option<String>,
        /// What went wrong.
        error: ErrorBody,
    },
    /// Something happened.
    Event(Event),
}

/// The envelope fields of a client frame, read leniently to answer a frame that failed to decode.
#[derive(Clone, PartialEq, Debug, Default, Deserialize)]
pub struct FrameHead {
    /// The request id, if present and a number.
    #[serde(default, deserialize_with = "lenient")]
    pub id: Option<u64>,
    /// The op, if present and a string.
    #[serde(default, deserialize_with = "lenient")]
    pub op: Option<String>,
}

fn lenient<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    let value = Value::deserialize(d)?;
    Ok(T::deserialize(value).ok())
}

struct Inner<'a, P>(&'a P);

impl<P: Payload> Serialize for Inner<'_, P> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_inner(s)
    }
}

struct Named<'a, P>(&'a str, std::marker::PhantomData<P>);

impl<'de, P: Payload> DeserializeSeed<'de> for Named<'_, P> {
    type Value = P;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<P, D::Error> {
        P::deserialize_named(self.0, d)
    }
}

/// Finishes decoding a payload whose `data` came before its name, or never came.
fn finish<P: Payload, E: de::Error>(name: &str, data: Option<Value>) -> Result<P, E> {
    match data {
        Some(value) => P::deserialize_named(name, value).map_err(E::custom),
        None => P::deserialize_named(name, Value::Null)
            .map_err(|_| E::custom(format_args!("missing field `data` for `{name}`"))),
    }
}

impl Serialize for ClientFrame {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(3))?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("op", self.request.name())?;
        map.serialize_entry("data", &Inner(&self.request))?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for ClientFrame {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ClientFrame;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a request frame {id, op, data}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ClientFrame, A::Error> {
                let (mut id, mut op, mut request, mut early) = (None, None::<String>, None, None);
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "id" => id = Some(map.next_value::<u64>()?),
                        "op" => op = Some(map.next_value()?),
                        "data" => match &op {
                            Some(op) => {
                                request = Some(
                                    map.next_value_seed(Named::<Request>(op, Default::default()))?,
                                )
                            }
                            None => early = Some(map.next_value::<Value>()?),
                        },
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let id = id.ok_or_else(|| de::Error::missing_field("id"))?;
                let op = op.ok_or_else(|| de::Error::missing_field("op"))?;
                let request = match request {
                    Some(r) => r,
                    None => finish(&op, early)?,
                };
                Ok(ClientFrame { id, request })
            }
        }
        d.deserialize_map(V)
    }
}

impl Serialize for ServerFrame {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        match self {
            Self::Response { id, response } => {
                map.serialize_entry("type", "response")?;
                map.serialize_entry("id", id)?;
                map.serialize_entry("op", response.name())?;
                map.serialize_entry("data", &Inner(response))?;
            }
            Self::Error { id, op, error } => {
                map.serialize_entry("type", "error")?;
                map.serialize_entry("id", id)?;
                map.serialize_entry("op", op)?;
                map.serialize_entry("error", error)?;
            }
            Self::Event(event) => {
                map.serialize_entry("type", "event")?;
                map.serialize_entry("event", event.name())?;
                map.serialize_entry("data", &Inner(event))?;
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ServerFrame {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        enum Data {
            Response(Response),
            Event(Event),
            Raw(Value),
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ServerFrame;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a server frame {type, ...}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ServerFrame, A::Error> {
                let (mut kind, mut id, mut name, mut data, mut error) = (
                    None::<String>,
                    None::<u64>,
                    None::<String>,
                    None,
                    None::<ErrorBody>,
                );
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "type" => kind = Some(map.next_value()?),
                        "id" => id = map.next_value()?,
                        "op" | "event" => name = map.next_value()?,
                        "error" => error = Some(map.next_value()?),
                        "data" => {
                            data = Some(match (kind.as_deref(), name.as_deref()) {
                                (Some("response"), Some(n)) => Data::Response(
                                    map.next_value_seed(Named::<Response>(n, Default::default()))?,
                                ),
                                (Some("event"), Some(n)) => Data::Event(
                                    map.next_value_seed(Named::<Event>(n, Default::default()))?,
                                ),
                                _ => Data::Raw(map.next_value()?),
                            })
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let raw = |d: Option<Data>| match d {
                    Some(Data::Raw(v)) => Some(v),
                    _ => None,
                };
                match kind.as_deref() {
                    Some("response") => {
                        let id = id.ok_or_else(|| de::Error::missing_field("id"))?;
                        let name = name.ok_or_else(|| de::Error::missing_field("op"))?;
                        let response = match data {
                            Some(Data::Response(r)) => r,
                            other => finish(&name, raw(other))?,
                        };
                        Ok(ServerFrame::Response { id, response })
                    }
                    Some("event") => {
                        let name = name.ok_or_else(|| de::Error::missing_field("event"))?;
                        let event = match data {
                            Some(Data::Event(e)) => e,
                            other => finish(&name, raw(other))?,
                        };
                        Ok(ServerFrame::Event(event))
                    }
                    Some("error") => Ok(ServerFrame::Error {
                        id,
                        op: name,
                        error: error.ok_or_else(|| de::Error::missing_field("error"))?,
                    }),
                    Some(other) => Err(de::Error::unknown_variant(
                        other,
                        &["response", "error", "event"],
                    )),
                    None => Err(de::Error::missing_field("type")),
                }
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MessageId;
    use serde_json::json;

    fn decode(v: Value) -> Result<ClientFrame, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn requests_decode_with_fields_in_any_order() {
        let a = decode(
            json!({"id": 1, "op": "mark_read", "data": {"conversation_id": "c2c:a:b", "seq": 3}}),
        );
        let b = decode(
            json!({"data": {"seq": 3, "conversation_id": "c2c:a:b"}, "op": "mark_read", "id": 1}),
        );
        assert_eq!(a.expect("op first"), b.expect("data first"));
    }

    #[test]
    fn payload_less_requests_need_no_data() {
        for op in ["ping", "logout", "list_devices"] {
            let frame = decode(json!({"id": 9, "op": op})).expect(op);
            assert_eq!(frame.request.name(), op);
        }
        let err = decode(json!({"id": 9, "op": "send"})).expect_err("send needs data");
        assert!(err.to_string().contains("missing field `data`"), "{err}");
    }

    #[test]
    fn unknown_ops_and_bad_fields_fail_but_the_head_is_still_readable() {
        let bad = json!({"id": 4, "op": "fly", "data": {}});
        assert!(decode(bad.clone()).is_err());
        let head: FrameHead = serde_json::from_value(bad).expect("head");
        assert_eq!((head.id, head.op.as_deref()), (Some(4), Some("fly")));
        assert!(!Request::NAMES.contains(&"fly"));

        let wrong_type = json!({"id": "x", "op": 5});
        let head: FrameHead = serde_json::from_value(wrong_type).expect("lenient head");
        assert_eq!(head, FrameHead::default());
    }

    #[test]
    fn server_frames_round_trip_in_both_codecs() {
        let frames = [
            ServerFrame::Response {
                id: 3,
                response: Response::Ping(Pong { server_time: 5 }),
            },
            ServerFrame::Response {
                id: 4,
                response: Response::Logout(Empty),
            },
            ServerFrame::Error {
                id: None,
                op: None,
                error: ErrorBody::bad_request("nope"),
            },
            ServerFrame::Event(Event::Message(Message {
                id: MessageId(1 << 60),
                conversation_id: ConversationId::parse("c2c:a:b").expect("id"),
                seq: 1,
                from: UserId::new("a").expect("id"),
                to: Peer::User(UserId::new("b").expect("id")),
                client_msg_id: "c1".into(),
                content: MessageContent::text("hi"),
                ext: Some(Map::from_iter([("k".to_owned(), json!(1))])),
                mentions: None,
                server_time: 7,
            })),
            ServerFrame::Event(Event::Message(Message {
                id: MessageId(2),
                conversation_id: ConversationId::parse("grp:team").expect("id"),
                seq: 3,
                from: UserId::new("a").expect("id"),
                to: Peer::Group(crate::GroupId::new("team").expect("id")),
                client_msg_id: "c2".into(),
                content: MessageContent::text("@b"),
                ext: None,
                mentions: Some(crate::Mentions {
                    user_ids: vec![UserId::new("b").expect("id")],
                    all: true,
                }),
                server_time: 8,
            })),
        ];
        for frame in frames {
            for codec in [crate::Codec::Json, crate::Codec::MsgPack] {
                let bytes = codec.encode(&frame).expect("encode");
                let back: ServerFrame = codec.decode(&bytes).expect("decode");
                assert_eq!(back, frame, "{codec:?}");
            }
        }
    }

    #[test]
    fn client_frames_round_trip_in_both_codecs() {
        let frame = ClientFrame {
            id: 77,
            request: Request::Send(SendRequest {
                to: Peer::User(UserId::new("bob").expect("id")),
                client_msg_id: "m-1".into(),
                content: MessageContent::text("hello"),
                ext: None,
                mentions: None,
            }),
        };
        for codec in [crate::Codec::Json, crate::Codec::MsgPack] {
            let bytes = codec.encode(&frame).expect("encode");
            assert_eq!(codec.decode::<ClientFrame>(&bytes).expect("decode"), frame);
        }
        let json = serde_json::to_value(&frame).expect("json");
        assert_eq!(json["op"], "send");
        assert_eq!(json["data"]["to"], json!({"kind": "user", "id": "bob"}));
    }
}
