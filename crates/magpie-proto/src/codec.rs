//! The two encodings of the protocol and their negotiation.
//!
//! JSON text frames are canonical. MessagePack (maps with named fields, never positional
//! arrays, so fields can be added without breaking anyone) carries the same types in binary
//! frames. The client picks one with the WebSocket subprotocol, whose name carries the
//! protocol version: `magpie.v1.json` or `magpie.v1.msgpack`. No subprotocol means JSON v1.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ErrorBody, ErrorCode};

/// A wire encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Codec {
    /// JSON in text frames (canonical).
    Json,
    /// MessagePack with named fields in binary frames.
    MsgPack,
}

/// Subprotocol name of JSON v1.
pub const SUBPROTOCOL_JSON: &str = "magpie.v1.json";
/// Subprotocol name of MessagePack v1.
pub const SUBPROTOCOL_MSGPACK: &str = "magpie.v1.msgpack";

/// Encoding or decoding failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(String);

impl Codec {
    /// The subprotocol name that selects this codec.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Self::Json => SUBPROTOCOL_JSON,
            Self::MsgPack => SUBPROTOCOL_MSGPACK,
        }
    }

    /// Whether frames of this codec go in WebSocket text frames.
    pub fn is_text(self) -> bool {
        matches!(self, Self::Json)
    }

    /// Picks the codec for a connection from the subprotocols the client offered, in the
    /// client's order of preference. Offering none selects JSON; offering only unknown ones is
    /// an `unsupported_version` error.
    pub fn negotiate<'a>(
        offered: impl IntoIterator<Item = &'a str>,
    ) -> Result<Option<Codec>, ErrorBody> {
        let mut any = false;
        for name in offered {
            any = true;
            match name.trim() {
                SUBPROTOCOL_JSON => return Ok(Some(Self::Json)),
                SUBPROTOCOL_MSGPACK => return Ok(Some(Self::MsgPack)),
                _ => {}
            }
        }
        if any {
            Err(ErrorBody::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "no supported subprotocol offered; this server speaks {SUBPROTOCOL_JSON} and {SUBPROTOCOL_MSGPACK}"
                ),
            ))
        } else {
            Ok(None)
        }
    }

    /// Encodes a value.
    pub fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, CodecError> {
        match self {
            Self::Json => serde_json::to_vec(value).map_err(|e| CodecError(e.to_string())),
            Self::MsgPack => rmp_serde::to_vec_named(value).map_err(|e| CodecError(e.to_string())),
        }
    }

    /// Decodes a value.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        match self {
            Self::Json => serde_json::from_slice(bytes).map_err(|e| CodecError(e.to_string())),
            Self::MsgPack => rmp_serde::from_slice(bytes).map_err(|e| CodecError(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_the_clients_first_supported_choice() {
        assert_eq!(Codec::negotiate([]), Ok(None));
        assert_eq!(
            Codec::negotiate(["magpie.v9.json", SUBPROTOCOL_MSGPACK, SUBPROTOCOL_JSON]),
            Ok(Some(Codec::MsgPack))
        );
        let err = Codec::negotiate(["magpie.v2.json"]).expect_err("v2 is not spoken");
        assert_eq!(err.code, ErrorCode::UnsupportedVersion);
    }

    #[test]
    fn msgpack_uses_named_fields() {
        #[derive(Serialize)]
        struct S {
            a: u8,
        }
        let bytes = Codec::MsgPack.encode(&S { a: 1 }).expect("encode");
        assert_eq!(bytes[0], 0x81, "a one-entry map, not a positional array");
    }
}
