//! What nodes tell each other over the bus, and on which subjects.
//!
//! Payloads are JSON: easy to inspect with `nats sub`, and the `message` events a node already
//! encoded for its own JSON sessions are forwarded without encoding them again.

use bytes::Bytes;
use magpie_proto::frame::KickReason;
use magpie_proto::{ServerFrame, UserId};
use serde::{Deserialize, Serialize};

use crate::sessions::{DeviceRecord, NodeId, SessionId};

/// One node's message to the others.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Envelope {
    /// An event for every device of `user` (on the user's subject).
    Deliver {
        /// The sending node.
        from: NodeId,
        /// The addressee.
        user: UserId,
        /// The event.
        frame: Box<ServerFrame>,
    },
    /// An event for every device of each of `users` (on the nodes subject: one message for a
    /// fan-out to many users, such as a group message, instead of one per user).
    DeliverMany {
        /// The sending node.
        from: NodeId,
        /// The addressees.
        users: Vec<UserId>,
        /// The event.
        frame: Box<ServerFrame>,
    },
    /// Kick every device of `user`, whose record changed (on the user's subject).
    Kick {
        /// The sending node.
        from: NodeId,
        /// The user.
        user: UserId,
        /// Why.
        reason: KickReason,
        /// For the device.
        message: String,
    },
    /// A device of `user` logged in on `from` (on the user's subject). Nodes holding other
    /// devices of the user answer with [`Envelope::Devices`].
    DeviceUp {
        /// The sending node.
        from: NodeId,
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceRecord,
    },
    /// A session of `user` on `from` ended (on the user's subject).
    DeviceDown {
        /// The sending node.
        from: NodeId,
        /// The user.
        user: UserId,
        /// The session.
        session: SessionId,
    },
    /// All of `user`'s devices on `from` (on the user's subject); `reply` asks the other
    /// holders to answer with theirs.
    Devices {
        /// The sending node.
        from: NodeId,
        /// The user.
        user: UserId,
        /// The devices.
        devices: Vec<DeviceRecord>,
        /// Whether holders should answer with their own.
        reply: bool,
    },
    /// `user`'s record changed: drop it from caches (on the nodes subject).
    UserChanged {
        /// The sending node.
        from: NodeId,
        /// The user.
        user: UserId,
    },
    /// `from` is alive (on the nodes subject). `instance` changes when a node id is reused.
    Heartbeat {
        /// The sending node.
        from: NodeId,
        /// The process holding the node id.
        instance: u64,
    },
    /// `from` is shutting down: forget its devices now (on the nodes subject).
    NodeDown {
        /// The sending node.
        from: NodeId,
        /// The process holding the node id.
        instance: u64,
    },
}

impl Envelope {
    /// The node that sent it.
    pub fn from(&self) -> NodeId {
        match self {
            Self::Deliver { from, .. }
            | Self::DeliverMany { from, .. }
            | Self::Kick { from, .. }
            | Self::DeviceUp { from, .. }
            | Self::DeviceDown { from, .. }
            | Self::Devices { from, .. }
            | Self::UserChanged { from, .. }
            | Self::Heartbeat { from, .. }
            | Self::NodeDown { from, .. } => *from,
        }
    }

    /// Encoded for the bus.
    pub fn encode(&self) -> Bytes {
        match serde_json::to_vec(self) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => {
                // Our own types always encode; this would be a bug.
                tracing::error!(error = %e, "cannot encode a cluster envelope");
                Bytes::new()
            }
        }
    }

    /// A `Deliver` around an event already encoded as JSON, without encoding it again.
    pub fn deliver_encoded(from: NodeId, user: &UserId, frame_json: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(frame_json.len() + user.as_str().len() + 48);
        out.extend_from_slice(br#"{"t":"deliver","from":"#);
        out.extend_from_slice(from.to_string().as_bytes());
        out.extend_from_slice(br#","user":"#);
        // User ids are restricted to characters JSON never escapes; serde keeps it honest.
        if serde_json::to_writer(&mut out, user).is_err() {
            return Bytes::new();
        }
        out.extend_from_slice(br#","frame":"#);
        out.extend_from_slice(frame_json);
        out.push(b'}');
        Bytes::from(out)
    }

    /// A `DeliverMany` around an event already encoded as JSON, without encoding it again.
    pub fn deliver_many_encoded(from: NodeId, users: &[UserId], frame_json: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(frame_json.len() + users.len() * 12 + 48);
        out.extend_from_slice(br#"{"t":"deliver_many","from":"#);
        out.extend_from_slice(from.to_string().as_bytes());
        out.extend_from_slice(br#","users":"#);
        if serde_json::to_writer(&mut out, users).is_err() {
            return Bytes::new();
        }
        out.extend_from_slice(br#","frame":"#);
        out.extend_from_slice(frame_json);
        out.push(b'}');
        Bytes::from(out)
    }

    /// Decodes a payload from the bus.
    pub fn decode(payload: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(payload)
    }
}

/// The subject names of one Magpie cluster (several may share a NATS server).
#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Where everything about one user goes; only nodes serving the user listen.
    pub fn user(&self, user: &UserId) -> String {
        // `.` separates subject tokens in NATS and may appear in user ids; `%` may not.
        format!("{}.user.{}", self.prefix, user.as_str().replace('.', "%2E"))
    }

    /// Where every node listens: liveness and cache invalidation.
    pub fn nodes(&self) -> String {
        format!("{}.nodes", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use magpie_proto::frame::Empty;
    use magpie_proto::{Codec, Event};

    #[test]
    fn a_fan_out_to_many_users_decodes_to_the_same_frame_and_users() {
        let frame = ServerFrame::Event(Event::TokenExpired(Empty));
        let json = Codec::Json.encode(&frame).expect("encodes");
        let users = vec![
            UserId::new("a.b").expect("id"),
            UserId::new("c").expect("id"),
        ];
        let payload = Envelope::deliver_many_encoded(4, &users, &json);
        assert_eq!(
            Envelope::decode(&payload).expect("decodes"),
            Envelope::DeliverMany {
                from: 4,
                users,
                frame: Box::new(frame)
            }
        );
    }

    #[test]
    fn a_forwarded_event_decodes_to_the_same_frame() {
        let frame = ServerFrame::Event(Event::TokenExpired(Empty));
        let json = Codec::Json.encode(&frame).expect("encodes");
        let user = UserId::new("bob.smith@x").expect("id");
        let bytes = Envelope::deliver_encoded(7, &user, &json);
        assert_eq!(
            Envelope::decode(&bytes).expect("decodes"),
            Envelope::Deliver {
                from: 7,
                user: user.clone(),
                frame: Box::new(frame)
            }
        );
        assert_eq!(
            Subjects::new("magpie").user(&user),
            "magpie.user.bob%2Esmith@x"
        );
    }

    #[test]
    fn every_envelope_round_trips() {
        let user = UserId::new("u").expect("id");
        let envelope = Envelope::Kick {
            from: 1,
            user,
            reason: KickReason::TokensRevoked,
            message: "m".into(),
        };
        assert_eq!(
            Envelope::decode(&envelope.encode()).expect("decodes"),
            envelope
        );
        assert!(Envelope::decode(b"{\"t\":\"nope\"}").is_err());
    }
}
