//! Bodies of the REST API the app backend calls (see `/openapi.json` on a running server).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Millis;
use crate::ids::UserId;

/// Longest nickname, in bytes.
pub const MAX_NICKNAME_LEN: usize = 128;
/// Largest user `ext` object, JSON-encoded, in bytes.
pub const MAX_USER_EXT_BYTES: usize = 4096;

/// `POST /v1/users`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// The new user's id.
    pub id: UserId,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    /// Avatar URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// Free-form app data (a JSON object, at most 4 KiB encoded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<Map<String, Value>>,
}

/// `PATCH /v1/users/{id}`: absent fields stay as they are; `null` clears a field.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// New display name.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub nickname: Option<Option<String>>,
    /// New avatar URL.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub avatar_url: Option<Option<String>>,
    /// New app data.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub ext: Option<Option<Map<String, Value>>>,
}

pub(crate) mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer, T: Serialize>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// A user's profile.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct User {
    /// The id.
    pub id: UserId,
    /// Display name.
    #[serde(default)]
    pub nickname: Option<String>,
    /// Avatar URL.
    #[serde(default)]
    pub avatar_url: Option<String>,
    /// Free-form app data.
    #[serde(default)]
    pub ext: Option<Map<String, Value>>,
    /// Creation time (ms since the Unix epoch).
    pub created_at: Millis,
    /// Last update time (ms since the Unix epoch).
    pub updated_at: Millis,
}

/// `POST /v1/users/{id}/tokens`.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueToken {
    /// Lifetime in seconds (default from the server config, at most its maximum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// A freshly issued token.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct IssuedToken {
    /// The user it is for.
    pub user_id: UserId,
    /// The token, opaque to the app.
    pub token: String,
    /// When it expires (ms since the Unix epoch).
    pub expires_at: Millis,
}

/// The answer to `DELETE /v1/users/{id}/tokens` and `DELETE /v1/users/{id}`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct KickedDevices {
    /// How many online devices were disconnected.
    pub kicked_devices: u32,
}

/// `GET /healthz`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Health {
    /// `"ok"` when the server accepts traffic.
    pub status: String,
    /// The server's version.
    pub version: String,
}
