//! The error-code table shared by the server, the SDK and the REST API.
//!
//! Codes are stable numbers grouped by the first digit: 1xxx the request itself is wrong,
//! 2xxx authentication and authorisation, 3xxx the addressed resource, 4xxx limits,
//! 5xxx the server. A code never changes meaning; new codes are only ever added.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $num:literal, $name:literal, $http:literal;)*) => {
        /// A stable, numeric error code.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
            /// A code this build does not know (sent by a newer peer).
            Unknown(u16),
        }

        impl ErrorCode {
            /// Every known code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The number carried on the wire.
            pub fn as_u16(self) -> u16 {
                match self {
                    $(Self::$variant => $num,)*
                    Self::Unknown(n) => n,
                }
            }

            /// Maps a wire number back to a code.
            pub fn from_u16(n: u16) -> Self {
                match n {
                    $($num => Self::$variant,)*
                    other => Self::Unknown(other),
                }
            }

            /// The stable snake_case name, used in logs, metrics and documentation.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                    Self::Unknown(_) => "unknown",
                }
            }

            /// The HTTP status the REST API answers with for this code.
            pub fn http_status(self) -> u16 {
                match self {
                    $(Self::$variant => $http,)*
                    Self::Unknown(_) => 500,
                }
            }
        }
    };
}

error_codes! {
    /// The frame or body is not valid JSON / MessagePack, or a field has the wrong type or value.
    BadRequest = 1000, "bad_request", 400;
    /// The request names an op (or REST route) the server does not have.
    UnknownOp = 1001, "unknown_op", 404;
    /// The client asked for a protocol version or encoding the server does not speak.
    UnsupportedVersion = 1002, "unsupported_version", 400;
    /// The request is valid but not allowed in the connection's current state
    /// (for example `login` twice on one connection).
    InvalidState = 1003, "invalid_state", 409;
    /// No valid credentials: a request before `login`, or a missing / wrong app secret.
    Unauthenticated = 2000, "unauthenticated", 401;
    /// The token is malformed, forged or issued for another user.
    TokenInvalid = 2001, "token_invalid", 401;
    /// The token's expiry time has passed.
    TokenExpired = 2002, "token_expired", 401;
    /// The user's tokens were revoked after this token was issued.
    TokenRevoked = 2003, "token_revoked", 401;
    /// Authenticated, but not allowed to do this.
    Forbidden = 2004, "forbidden", 403;
    /// The caller is not a member of the group.
    NotGroupMember = 2005, "not_group_member", 403;
    /// The caller, or the whole group, is muted.
    Muted = 2006, "muted", 403;
    /// The caller is on the group's block list (or banned from rejoining for now).
    BlockedFromGroup = 2007, "blocked_from_group", 403;
    /// The addressed resource does not exist.
    NotFound = 3000, "not_found", 404;
    /// The addressed user does not exist.
    UserNotFound = 3001, "user_not_found", 404;
    /// The addressed conversation does not exist or the caller is not part of it.
    ConversationNotFound = 3002, "conversation_not_found", 404;
    /// The resource already exists, or changed since it was read (re-read and retry).
    Conflict = 3003, "conflict", 409;
    /// The addressed group does not exist (or was destroyed).
    GroupNotFound = 3004, "group_not_found", 404;
    /// The group has reached its maximum number of members.
    GroupFull = 3005, "group_full", 409;
    /// A frame, message or field is larger than the server allows.
    TooLarge = 4000, "too_large", 413;
    /// Too many requests; `retry_after_ms` says when to try again.
    RateLimited = 4001, "rate_limited", 429;
    /// The server failed; the request may be retried.
    Internal = 5000, "internal", 500;
    /// The server is shutting down or a dependency is unreachable; retry elsewhere or later.
    Unavailable = 5001, "unavailable", 503;
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u16())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.as_u16())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u16::deserialize(d).map(Self::from_u16)
    }
}

/// The error payload of a failed request, on the WebSocket and in REST error bodies.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorBody {
    /// The stable numeric code.
    pub code: ErrorCode,
    /// A human-readable explanation. Not stable; do not match on it.
    pub message: String,
    /// For `rate_limited`: milliseconds until a retry can succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorBody {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// Shorthand for [`ErrorCode::BadRequest`].
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_and_names_are_unique_and_round_trip() {
        let mut numbers = HashSet::new();
        let mut names = HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(numbers.insert(code.as_u16()), "duplicate number {code}");
            assert!(names.insert(code.name()), "duplicate name {code}");
            assert_eq!(ErrorCode::from_u16(code.as_u16()), code);
            let first_digit = code.as_u16() / 1000;
            assert!(
                (1..=5).contains(&first_digit),
                "{code} outside the table's ranges"
            );
        }
        assert_eq!(ErrorCode::from_u16(9999), ErrorCode::Unknown(9999));
    }

    #[test]
    fn error_bodies_serialize_with_numeric_codes() {
        let body = ErrorBody::new(ErrorCode::RateLimited, "slow down");
        let json = serde_json::to_value(&body).expect("encode");
        assert_eq!(
            json,
            serde_json::json!({"code": 4001, "message": "slow down"})
        );
        let back: ErrorBody = serde_json::from_value(json).expect("decode");
        assert_eq!(back, body);
    }
}
