//! Identifiers and their validation rules.
//!
//! User and device ids are chosen by the app, so they are validated strings. Message ids are
//! 64-bit integers assigned by the server; they travel as decimal strings so that JavaScript
//! clients (whose numbers are doubles) never lose precision.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ErrorBody, ErrorCode};

/// Longest user or device id, in bytes.
pub const MAX_ID_LEN: usize = 64;

fn validate_id(kind: &str, s: &str) -> Result<(), ErrorBody> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("{kind} must be 1 to {MAX_ID_LEN} bytes long"),
        ));
    }
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@')))
    {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("{kind} may only contain ASCII letters, digits and _ - . @ (found {bad:?})"),
        ));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an id.
            pub fn new(s: impl Into<String>) -> Result<Self, ErrorBody> {
                let s = s.into();
                validate_id($kind, &s)?;
                Ok(Self(s))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = ErrorBody;
            fn from_str(s: &str) -> Result<Self, ErrorBody> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(|e| serde::de::Error::custom(e.message))
            }
        }
    };
}

string_id!(
    /// An app-chosen user id: 1–64 bytes of ASCII letters, digits and `_ - . @`.
    UserId,
    "user id"
);
string_id!(
    /// An app- or server-chosen group id: 1–64 bytes of ASCII letters, digits and `_ - . @`.
    GroupId,
    "group id"
);
string_id!(
    /// An app-chosen device id, stable across reconnects of one installation.
    DeviceId,
    "device id"
);

/// A server-assigned, globally unique message id. Encoded as a decimal string on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct MessageId(pub u64);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MessageId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message id (decimal string)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MessageId, E> {
                v.parse().map(MessageId).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MessageId, E> {
                Ok(MessageId(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// What kind of conversation an id names. One-to-one and group exist today; the others are
/// reserved so that ids and storage need no change when they arrive.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    /// One-to-one: `c2c:<user a>:<user b>` with the two ids in byte order.
    C2c,
    /// A group: `grp:<group id>`.
    Group,
    /// A chat room: `room:<room id>` (reserved).
    Room,
    /// A thread inside another conversation: `thr:<thread id>` (reserved).
    Thread,
}

/// A conversation id: `<kind>:<parts>`. The colon never appears inside user ids, so the id is
/// unambiguous, and both participants of a one-to-one conversation compute the same id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ConversationId(String);

impl ConversationId {
    /// The one-to-one conversation between two users (order does not matter).
    pub fn c2c(a: &UserId, b: &UserId) -> Self {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        Self(format!("c2c:{lo}:{hi}"))
    }

    /// A group's conversation.
    pub fn group(group: &GroupId) -> Self {
        Self(format!("grp:{group}"))
    }

    /// The group of a group conversation, `None` for other kinds.
    pub fn group_id(&self) -> Option<GroupId> {
        self.0.strip_prefix("grp:").map(|id| GroupId(id.to_owned()))
    }

    /// Parses and validates a conversation id.
    pub fn parse(s: &str) -> Result<Self, ErrorBody> {
        let bad = || {
            ErrorBody::new(
                ErrorCode::BadRequest,
                format!("invalid conversation id {s:?}"),
            )
        };
        let (prefix, rest) = s.split_once(':').ok_or_else(bad)?;
        match prefix {
            "c2c" => {
                let (a, b) = rest.split_once(':').ok_or_else(bad)?;
                let (a, b) = (
                    UserId::new(a).map_err(|_| bad())?,
                    UserId::new(b).map_err(|_| bad())?,
                );
                if a >= b {
                    return Err(bad());
                }
                Ok(Self(s.to_owned()))
            }
            "grp" | "room" | "thr" => {
                validate_id("conversation id", rest).map_err(|_| bad())?;
                Ok(Self(s.to_owned()))
            }
            _ => Err(bad()),
        }
    }

    /// The conversation's kind, read from its prefix.
    pub fn kind(&self) -> ConversationKind {
        match self.0.split_once(':').map(|(p, _)| p) {
            Some("grp") => ConversationKind::Group,
            Some("room") => ConversationKind::Room,
            Some("thr") => ConversationKind::Thread,
            _ => ConversationKind::C2c,
        }
    }

    /// The two participants of a one-to-one conversation, `None` for other kinds.
    pub fn c2c_members(&self) -> Option<(UserId, UserId)> {
        let rest = self.0.strip_prefix("c2c:")?;
        let (a, b) = rest.split_once(':')?;
        Some((UserId(a.to_owned()), UserId(b.to_owned())))
    }

    /// For a one-to-one conversation that `me` takes part in, the other participant.
    pub fn c2c_peer(&self, me: &UserId) -> Option<UserId> {
        let (a, b) = self.c2c_members()?;
        if &a == me {
            Some(b)
        } else if &b == me {
            Some(a)
        } else {
            None
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl<'de> Deserialize<'de> for ConversationId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(|e| serde::de::Error::custom(e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::new(s).expect("valid id")
    }

    #[test]
    fn user_ids_are_validated() {
        assert!(UserId::new("alice_01@x.y-z").is_ok());
        for bad in ["", "a:b", "a b", "é", &"x".repeat(65)] {
            let err = UserId::new(bad).expect_err(bad);
            assert_eq!(err.code, ErrorCode::BadRequest);
        }
    }

    #[test]
    fn c2c_ids_are_symmetric_and_parse_back() {
        let id = ConversationId::c2c(&user("bob"), &user("alice"));
        assert_eq!(id.as_str(), "c2c:alice:bob");
        assert_eq!(id, ConversationId::c2c(&user("alice"), &user("bob")));
        assert_eq!(ConversationId::parse(id.as_str()), Ok(id.clone()));
        assert_eq!(id.c2c_peer(&user("alice")), Some(user("bob")));
        assert_eq!(id.c2c_peer(&user("carol")), None);
        assert_eq!(id.kind(), ConversationKind::C2c);
    }

    #[test]
    fn malformed_conversation_ids_are_rejected() {
        for bad in [
            "",
            "c2c",
            "c2c:bob:alice",
            "c2c:a:a",
            "x:1",
            "c2c:a",
            "grp:",
            "c2c:a:b:c",
        ] {
            assert!(ConversationId::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            ConversationId::parse("grp:team-1").map(|c| c.kind()),
            Ok(ConversationKind::Group)
        );
    }

    #[test]
    fn message_ids_travel_as_strings() {
        let id = MessageId(u64::MAX);
        let json = serde_json::to_string(&id).expect("encode");
        assert_eq!(json, "\"18446744073709551615\"");
        assert_eq!(
            serde_json::from_str::<MessageId>(&json).expect("decode"),
            id
        );
        assert_eq!(
            serde_json::from_str::<MessageId>("42").expect("number"),
            MessageId(42)
        );
        assert!(serde_json::from_str::<MessageId>("\"x\"").is_err());
    }
}
