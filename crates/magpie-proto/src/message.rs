//! Messages, their content types, conversation state and device platforms.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::Millis;
use crate::error::ErrorBody;
use crate::ids::{ConversationId, ConversationKind, DeviceId, GroupId, MessageId, UserId};

/// Longest `client_msg_id`, in bytes.
pub const MAX_CLIENT_MSG_ID_LEN: usize = 64;
/// Longest URL in a media body, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// Most users one message may mention by id.
pub const MAX_MENTIONS: usize = 30;

/// A text message.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct TextBody {
    /// The text, non-empty.
    pub text: String,
}

/// An image already uploaded somewhere the recipients can fetch it.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct ImageBody {
    /// Where the full image is.
    pub url: String,
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Width in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Height in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Where a small preview is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_url: Option<String>,
    /// The original file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
}

/// A voice clip.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct VoiceBody {
    /// Where the audio is.
    pub url: String,
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Length in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The original file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
}

/// A video.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct VideoBody {
    /// Where the video is.
    pub url: String,
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Width in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Height in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Length in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Where a poster frame is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_url: Option<String>,
    /// The original file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
}

/// Any other file.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct FileBody {
    /// Where the file is.
    pub url: String,
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The original file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
}

/// A point on the map.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct LocationBody {
    /// Degrees, -90 to 90.
    pub latitude: f64,
    /// Degrees, -180 to 180.
    pub longitude: f64,
    /// A place name or address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An app-defined message, stored and counted as unread like any other.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct CustomBody {
    /// Any JSON value the app understands.
    #[serde(default)]
    pub data: Value,
    /// Fallback text for clients that do not understand `data` (and for push previews).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A transient command: delivered to online devices only, never stored, never unread.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct CommandBody {
    /// The command's name, non-empty.
    pub name: String,
    /// Any JSON value.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

/// What a group notice reports.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupNoticeKind {
    /// The group was created (`user_ids`: its first members).
    Created,
    /// Users joined or were added.
    MemberJoined,
    /// Users left.
    MemberLeft,
    /// Users were removed by an owner or admin.
    MemberKicked,
    /// The name, avatar, introduction, announcement or ext changed.
    InfoChanged,
    /// `user_ids[0]` is the new owner.
    OwnerChanged,
}

/// A line in a group's timeline written by the server ("alice joined"). Stored with a seq like
/// any message, so offline members see it in order; devices cannot send one.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct GroupNoticeBody {
    /// What happened.
    pub kind: GroupNoticeKind,
    /// Who it happened to (at most 100 are listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_ids: Vec<UserId>,
    /// How many users it happened to, when more than are listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_count: Option<u32>,
}

macro_rules! content_types {
    ($($(#[$doc:meta])* $variant:ident($body:ty) = $tag:literal;)*) => {
        /// What a message says. On the wire: `{"type": "<type>", "body": {...}}`.
        #[derive(Clone, PartialEq, Debug)]
        pub enum MessageContent {
            $($(#[$doc])* $variant($body),)*
            /// A type this build does not know, kept as received so that newer peers'
            /// messages are shown as "unsupported" instead of being dropped. The server
            /// refuses to store it.
            Unknown {
                /// The `type` as received.
                type_name: String,
                /// The `body` as received.
                body: Value,
            },
        }

        impl MessageContent {
            /// Every type name the protocol defines.
            pub const TYPES: &'static [&'static str] = &[$($tag,)*];

            /// The `type` name on the wire.
            pub fn type_name(&self) -> &str {
                match self {
                    $(Self::$variant(_) => $tag,)*
                    Self::Unknown { type_name, .. } => type_name,
                }
            }
        }

        impl Serialize for MessageContent {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                #[derive(Serialize)]
                struct Tagged<'a, T: Serialize> {
                    #[serde(rename = "type")]
                    kind: &'a str,
                    body: &'a T,
                }
                match self {
                    $(Self::$variant(body) => Tagged { kind: $tag, body }.serialize(s),)*
                    Self::Unknown { type_name, body } => Tagged { kind: type_name, body }.serialize(s),
                }
            }
        }

        impl<'de> Deserialize<'de> for MessageContent {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                struct Raw {
                    #[serde(rename = "type")]
                    kind: String,
                    #[serde(default)]
                    body: Value,
                }
                let raw = Raw::deserialize(d)?;
                match raw.kind.as_str() {
                    $($tag => serde_json::from_value(raw.body)
                        .map(Self::$variant)
                        .map_err(|e| D::Error::custom(format_args!("invalid {} body: {e}", $tag))),)*
                    _ => Ok(Self::Unknown { type_name: raw.kind, body: raw.body }),
                }
            }
        }
    };
}

content_types! {
    /// Plain text.
    Text(TextBody) = "text";
    /// An image.
    Image(ImageBody) = "image";
    /// A voice clip.
    Voice(VoiceBody) = "voice";
    /// A video.
    Video(VideoBody) = "video";
    /// A file.
    File(FileBody) = "file";
    /// A location.
    Location(LocationBody) = "location";
    /// App-defined content.
    Custom(CustomBody) = "custom";
    /// A transient command (not stored).
    Command(CommandBody) = "command";
    /// A server-written line in a group's timeline.
    GroupNotice(GroupNoticeBody) = "group_notice";
}

impl MessageContent {
    /// Shorthand for a text message.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text(TextBody { text: text.into() })
    }

    /// Whether the server stores this content (commands are transient).
    pub fn is_stored(&self) -> bool {
        !matches!(self, Self::Command(_))
    }

    /// Checks the semantic rules a well-formed body must follow.
    pub fn validate(&self) -> Result<(), ErrorBody> {
        fn url(kind: &str, url: &str) -> Result<(), ErrorBody> {
            if url.is_empty() || url.len() > MAX_URL_LEN {
                return Err(ErrorBody::bad_request(format!(
                    "{kind} url must be 1 to {MAX_URL_LEN} bytes"
                )));
            }
            Ok(())
        }
        match self {
            Self::Text(b) if b.text.is_empty() => {
                Err(ErrorBody::bad_request("text must not be empty"))
            }
            Self::Text(_) | Self::Custom(_) | Self::GroupNotice(_) => Ok(()),
            Self::Image(b) => url("image", &b.url),
            Self::Voice(b) => url("voice", &b.url),
            Self::Video(b) => url("video", &b.url),
            Self::File(b) => url("file", &b.url),
            Self::Location(b) => {
                if !(-90.0..=90.0).contains(&b.latitude) || !(-180.0..=180.0).contains(&b.longitude)
                {
                    Err(ErrorBody::bad_request(
                        "latitude must be in [-90, 90] and longitude in [-180, 180]",
                    ))
                } else {
                    Ok(())
                }
            }
            Self::Command(b) if b.name.is_empty() || b.name.len() > 64 => {
                Err(ErrorBody::bad_request("command name must be 1 to 64 bytes"))
            }
            Self::Command(_) => Ok(()),
            Self::Unknown { type_name, .. } => Err(ErrorBody::bad_request(format!(
                "unknown message type {type_name:?}; known types: {}",
                Self::TYPES.join(", ")
            ))),
        }
    }
}

/// Checks a `client_msg_id`: 1–64 bytes of printable ASCII.
pub fn validate_client_msg_id(id: &str) -> Result<(), ErrorBody> {
    if id.is_empty()
        || id.len() > MAX_CLIENT_MSG_ID_LEN
        || !id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ErrorBody::bad_request(format!(
            "client_msg_id must be 1 to {MAX_CLIENT_MSG_ID_LEN} bytes of printable ASCII"
        )));
    }
    Ok(())
}

/// Who a message is addressed to. On the wire: `{"kind": "user", "id": "bob"}` or
/// `{"kind": "group", "id": "team-1"}`.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Peer {
    /// One user (a one-to-one conversation).
    User(UserId),
    /// A group's members (the group conversation).
    Group(GroupId),
}

impl Peer {
    /// The conversation a message from `from` to this peer belongs to.
    pub fn conversation_id(&self, from: &UserId) -> ConversationId {
        match self {
            Self::User(to) => ConversationId::c2c(from, to),
            Self::Group(group) => ConversationId::group(group),
        }
    }

    /// The id as a string: a user id or a group id.
    pub fn id(&self) -> &str {
        match self {
            Self::User(user) => user.as_str(),
            Self::Group(group) => group.as_str(),
        }
    }
}

/// Who a group message mentions. On the wire: `{"user_ids": ["bob"], "all": false}`.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mentions {
    /// Members mentioned by id (at most [`MAX_MENTIONS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_ids: Vec<UserId>,
    /// Everyone in the group ("@all").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

impl Mentions {
    /// Whether it mentions nobody.
    pub fn is_empty(&self) -> bool {
        self.user_ids.is_empty() && !self.all
    }

    /// Whether `user` is mentioned (by id or through "@all").
    pub fn includes(&self, user: &UserId) -> bool {
        self.all || self.user_ids.contains(user)
    }
}

/// A message as stored and delivered.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Message {
    /// Globally unique, assigned by the server.
    pub id: MessageId,
    /// The conversation it belongs to.
    pub conversation_id: ConversationId,
    /// Position in the conversation: 1, 2, 3 … with no gaps. 0 for commands (never stored).
    pub seq: u64,
    /// The sender.
    pub from: UserId,
    /// The addressee.
    pub to: Peer,
    /// The id the sending device chose; the server dedupes retries on (conversation, sender,
    /// client_msg_id).
    pub client_msg_id: String,
    /// What the message says.
    pub content: MessageContent,
    /// Free-form app data, a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<Map<String, Value>>,
    /// Who a group message mentions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mentions: Option<Mentions>,
    /// When the server accepted it (ms since the Unix epoch).
    pub server_time: Millis,
}

/// One user's view of a conversation, as returned by `sync` and `mark_read`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct ConversationState {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Its kind.
    pub kind: ConversationKind,
    /// For one-to-one conversations: the other participant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<UserId>,
    /// Seq of the newest message (0 if none).
    pub last_seq: u64,
    /// Seq up to which this user has read. Sending a message reads up to it.
    pub read_seq: u64,
    /// `last_seq - read_seq`: own messages never count, because sending advances `read_seq`.
    pub unread_count: u64,
    /// An unread message mentions this user (by id or "@all").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mentioned: bool,
    /// The newest message, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<Message>,
    /// This user's change counter at the last change of this row; `sync` pages by it.
    pub version: u64,
    /// When the row last changed (ms since the Unix epoch).
    pub updated_at: Millis,
}

/// The kind of device a session runs on.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// iPhone / iPad.
    Ios,
    /// Android phone or tablet.
    Android,
    /// HarmonyOS phone.
    Harmony,
    /// Windows desktop.
    Windows,
    /// macOS desktop.
    Macos,
    /// Linux desktop (the CLI uses this by default).
    Linux,
    /// A browser.
    Web,
    /// A mini-program inside another app.
    MiniProgram,
}

/// Groups of platforms for the multi-device policy: by default one device per class is online.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlatformClass {
    /// ios, android, harmony.
    Mobile,
    /// windows, macos, linux.
    Desktop,
    /// web.
    Web,
    /// mini_program.
    MiniProgram,
}

impl Platform {
    /// The policy class of this platform.
    pub fn class(self) -> PlatformClass {
        match self {
            Self::Ios | Self::Android | Self::Harmony => PlatformClass::Mobile,
            Self::Windows | Self::Macos | Self::Linux => PlatformClass::Desktop,
            Self::Web => PlatformClass::Web,
            Self::MiniProgram => PlatformClass::MiniProgram,
        }
    }
}

/// An online device of a user, as listed by `list_devices`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The device id.
    pub device_id: DeviceId,
    /// Its platform.
    pub platform: Platform,
    /// When this session logged in (ms since the Unix epoch).
    pub connected_at: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_round_trips_for_every_type() {
        let samples = [
            json!({"type": "text", "body": {"text": "hi"}}),
            json!({"type": "image", "body": {"url": "https://x/i.png", "size": 10, "width": 2, "height": 3, "thumbnail_url": "https://x/t.png"}}),
            json!({"type": "voice", "body": {"url": "https://x/v.ogg", "duration_ms": 1500}}),
            json!({"type": "video", "body": {"url": "https://x/v.mp4", "duration_ms": 9000, "width": 640, "height": 480}}),
            json!({"type": "file", "body": {"url": "https://x/f.pdf", "size": 99, "file_name": "f.pdf"}}),
            json!({"type": "location", "body": {"latitude": 48.85, "longitude": 2.35, "description": "Paris"}}),
            json!({"type": "custom", "body": {"data": {"card": 1}, "description": "a card"}}),
            json!({"type": "command", "body": {"name": "typing", "data": {"on": true}}}),
            json!({"type": "group_notice", "body": {"kind": "member_joined", "user_ids": ["bob"]}}),
        ];
        assert_eq!(samples.len(), MessageContent::TYPES.len());
        for sample in samples {
            let content: MessageContent = serde_json::from_value(sample.clone()).expect("decode");
            content.validate().expect("valid");
            assert_eq!(serde_json::to_value(&content).expect("encode"), sample);
        }
    }

    #[test]
    fn unknown_types_are_kept_but_not_valid() {
        let raw = json!({"type": "poll", "body": {"q": "?"}});
        let content: MessageContent = serde_json::from_value(raw.clone()).expect("decode");
        assert_eq!(content.type_name(), "poll");
        assert_eq!(serde_json::to_value(&content).expect("encode"), raw);
        assert!(content.validate().is_err());
    }

    #[test]
    fn bad_bodies_are_rejected_with_the_type_named() {
        let err =
            serde_json::from_value::<MessageContent>(json!({"type": "text", "body": {"text": 5}}))
                .expect_err("wrong field type");
        assert!(err.to_string().contains("invalid text body"), "{err}");
        for bad in [
            MessageContent::text(""),
            MessageContent::Image(ImageBody::default()),
            MessageContent::Location(LocationBody {
                latitude: 91.0,
                ..Default::default()
            }),
            MessageContent::Command(CommandBody::default()),
        ] {
            assert!(bad.validate().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn client_msg_ids_are_checked() {
        assert!(validate_client_msg_id("0f8fad5b-d9cb-469f-a165-70867728950e").is_ok());
        for bad in ["", " x", "é", &"x".repeat(65)] {
            assert!(validate_client_msg_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn platforms_map_to_classes() {
        assert_eq!(Platform::Ios.class(), Platform::Android.class());
        assert_ne!(Platform::Ios.class(), Platform::Web.class());
        assert_eq!(Platform::Linux.class(), PlatformClass::Desktop);
    }
}
