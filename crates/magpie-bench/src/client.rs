//! The thin protocol client: raw tokio-tungstenite connections speaking `docs/PROTOCOL.md`.
//!
//! Not the SDK: the SDK keeps a SQLite cache and a session runtime per client, which would
//! dominate the measurement at 100k connections. A [`Conn`] is one TCP socket and one
//! WebSocket with a 4 KiB read buffer, nothing else.
//!
//! - [`connect`] opens a socket, optionally bound to a source address first (127.0.0.x, so
//!   that one address's ~28k ephemeral ports do not cap the connection count), and does the
//!   WebSocket handshake offering the codec's subprotocol.
//! - [`Conn::request`] is the general request / answer path (proto types, answers matched by
//!   id, events skipped): login, sync, get_messages.
//! - [`FastFrame`] decodes only what the message hot path needs (kind, id, seq, the bench tag
//!   in `ext`, error code), skipping the rest of the frame without building it; [`SendFrame`]
//!   encodes a text message from borrowed parts. Both work for JSON and MessagePack.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use magpie_proto::frame::{LoginRequest, LoginResponse};
use magpie_proto::{
    ClientFrame, Codec, DeviceId, Platform, Request, Response, ServerFrame, UserId,
};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::target::Endpoint;

/// A client WebSocket over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;
/// The writing half of a split [`Ws`].
pub type WsSink = SplitSink<Ws, Message>;
/// The reading half of a split [`Ws`].
pub type WsStream = SplitStream<Ws>;

/// How long a general request waits for its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long opening a socket plus the WebSocket handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The WebSocket settings of every bench connection: a 4 KiB read buffer (tungstenite
/// allocates it eagerly, and its 128 KiB default would cost 25 GiB at 200k connections) and a
/// small write buffer that only grows while frames are fed before a flush.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(16 << 20))
}

/// Source addresses to spread client sockets over: 127.0.0.1 … 127.0.0.`count`.
#[derive(Clone, Copy, Debug)]
pub struct SourceAddrs {
    count: u8,
}

impl SourceAddrs {
    /// Rotates over `count` loopback addresses (1 to 254); 0 means "let the kernel choose".
    pub fn new(count: u8) -> Self {
        Self {
            count: count.min(254),
        }
    }

    /// The source address of the `i`-th connection, or `None` to not bind.
    pub fn pick(self, i: usize) -> Option<IpAddr> {
        if self.count == 0 {
            return None;
        }
        let host = 1 + (i % self.count as usize) as u8;
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)))
    }
}

/// Opens a WebSocket to `ep`, bound to `source` first when given, offering the codec's
/// subprotocol (none for JSON, which is the default on both Magpie and the relay). Gives up
/// after [`CONNECT_TIMEOUT`] (a server out of file descriptors leaves connections unaccepted).
pub async fn connect(ep: &Endpoint, codec: Codec, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect_inner(ep, codec, source))
        .await
        .map_err(|_| anyhow!("no WebSocket handshake within {CONNECT_TIMEOUT:?}"))?
}

async fn connect_inner(ep: &Endpoint, codec: Codec, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    let socket = match ep.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .context("socket")?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}"))?;
    }
    let stream = socket
        .connect(ep.addr)
        .await
        .with_context(|| format!("connect {}", ep.addr))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let mut request = ep.url().into_client_request().context("request")?;
    if codec == Codec::MsgPack {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(magpie_proto::codec::SUBPROTOCOL_MSGPACK),
        );
    }
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config()))
        .await
        .context("WebSocket handshake")?;
    Ok(ws)
}

/// Encodes a value as one WebSocket message of the codec (text for JSON, binary for
/// MessagePack).
pub fn encode<T: Serialize>(codec: Codec, value: &T) -> anyhow::Result<Message> {
    Ok(match codec {
        Codec::Json => Message::text(serde_json::to_string(value)?),
        Codec::MsgPack => Message::binary(codec.encode(value)?),
    })
}

/// The payload of a data message, or `None` for control frames.
pub fn payload(message: &Message) -> Option<&[u8]> {
    match message {
        Message::Text(text) => Some(text.as_bytes()),
        Message::Binary(bytes) => Some(bytes),
        _ => None,
    }
}

/// One logged-in (or about to be) device connection.
#[derive(Debug)]
pub struct Conn {
    ws: Ws,
    codec: Codec,
    next_id: u64,
    /// Events that arrived while [`Conn::request`] waited for an answer.
    pub skipped_events: u64,
}

impl Conn {
    /// Connects (see [`connect`]).
    pub async fn open(ep: &Endpoint, codec: Codec, source: Option<IpAddr>) -> anyhow::Result<Self> {
        Ok(Self {
            ws: connect(ep, codec, source).await?,
            codec,
            next_id: 1,
            skipped_events: 0,
        })
    }

    /// The connection's codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The id the next [`Conn::request`] will use.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Sends a request and waits for its answer, skipping events. A server error comes back
    /// as an error that downcasts to [`magpie_proto::ErrorBody`].
    pub async fn request(&mut self, request: Request) -> anyhow::Result<Response> {
        let id = self.next_id;
        self.next_id += 1;
        let op = magpie_proto::frame::Payload::name(&request);
        let message = encode(self.codec, &ClientFrame { id, request })?;
        self.ws
            .send(message)
            .await
            .with_context(|| format!("send {op}"))?;
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            loop {
                let message = match self.ws.next().await {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return Err(anyhow!("connection failed: {e}")),
                    None => return Err(anyhow!("connection closed")),
                };
                if let Message::Close(frame) = &message {
                    return Err(anyhow!(
                        "connection closed by the server ({})",
                        frame
                            .as_ref()
                            .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                            .unwrap_or_default()
                    ));
                }
                let Some(bytes) = payload(&message) else {
                    continue;
                };
                let frame: ServerFrame = self
                    .codec
                    .decode(bytes)
                    .map_err(|e| anyhow!("undecodable frame: {e}"))?;
                match frame {
                    ServerFrame::Response { id: got, response } if got == id => {
                        return Ok(response);
                    }
                    ServerFrame::Error {
                        id: Some(got),
                        error,
                        ..
                    } if got == id => {
                        return Err(anyhow::Error::new(error));
                    }
                    ServerFrame::Event(_) => self.skipped_events += 1,
                    _ => {}
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no answer to {op} within {REQUEST_TIMEOUT:?}"))??;
        Ok(answer)
    }

    /// Logs in as one device of `user`.
    pub async fn login(
        &mut self,
        user: &str,
        token: &str,
        device: &str,
        platform: Platform,
    ) -> anyhow::Result<LoginResponse> {
        let request = Request::Login(LoginRequest {
            user_id: UserId::new(user).map_err(|e| anyhow!("user id {user:?}: {e}"))?,
            token: token.to_owned(),
            device_id: DeviceId::new(device).map_err(|e| anyhow!("device id {device:?}: {e}"))?,
            platform,
            client_version: Some(concat!("magpie-bench/", env!("CARGO_PKG_VERSION")).into()),
        });
        match self.request(request).await? {
            Response::Login(answer) => Ok(answer),
            other => bail!(
                "unexpected answer to login: {}",
                magpie_proto::frame::Payload::name(&other)
            ),
        }
    }

    /// The next message from the server (control frames included), `None` when closed.
    pub async fn next_message(&mut self) -> Option<anyhow::Result<Message>> {
        self.ws
            .next()
            .await
            .map(|r| r.map_err(|e| anyhow!("connection failed: {e}")))
    }

    /// Sends one message.
    pub async fn send_message(&mut self, message: Message) -> anyhow::Result<()> {
        self.ws.send(message).await.context("send")
    }

    /// Closes the WebSocket politely (errors ignored).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }

    /// Splits into writer and reader halves for pipelined use.
    pub fn split(self) -> (WsSink, WsStream) {
        self.ws.split()
    }
}

/// The tag the bench puts in a message's `ext` (`{"b": {"s", "k", "t"}}`): who sent it, its
/// per-sender counter, and its scheduled send time in µs since the run's time base.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchTag {
    /// Sender index.
    pub s: u32,
    /// Per-sender counter, from 0.
    pub k: u64,
    /// Scheduled send time, µs since the run's time base.
    pub t: u64,
}

/// A text message to one user or group, encoded from borrowed parts (the hot path of the
/// generator).
#[derive(Debug, Serialize)]
pub struct SendFrame<'a> {
    /// Request id.
    pub id: u64,
    /// Always `send`.
    pub op: &'static str,
    /// The message.
    pub data: SendData<'a>,
}

/// The `data` of a [`SendFrame`].
#[derive(Debug, Serialize)]
pub struct SendData<'a> {
    /// The addressee.
    pub to: PeerRef<'a>,
    /// The sender-unique id.
    pub client_msg_id: &'a str,
    /// The text.
    pub content: TextContent<'a>,
    /// The bench tag.
    pub ext: TagExt,
}

/// `{"kind": "user" | "group", "id": …}`.
#[derive(Debug, Serialize)]
pub struct PeerRef<'a> {
    /// `user` or `group`.
    pub kind: &'static str,
    /// The user id.
    pub id: &'a str,
}

/// `{"type": "text", "body": {"text": …}}`.
#[derive(Debug, Serialize)]
pub struct TextContent<'a> {
    /// Always `text`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The body.
    pub body: TextBody<'a>,
}

/// `{"text": …}`.
#[derive(Debug, Serialize)]
pub struct TextBody<'a> {
    /// The text.
    pub text: &'a str,
}

/// `{"b": <tag>}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TagExt {
    /// The bench tag; absent in messages the bench did not send.
    #[serde(default)]
    pub b: Option<BenchTag>,
}

impl<'a> SendFrame<'a> {
    /// A text message with a bench tag.
    pub fn text(
        id: u64,
        to: &'a str,
        client_msg_id: &'a str,
        text: &'a str,
        tag: BenchTag,
    ) -> Self {
        Self {
            id,
            op: "send",
            data: SendData {
                to: PeerRef {
                    kind: "user",
                    id: to,
                },
                client_msg_id,
                content: TextContent {
                    kind: "text",
                    body: TextBody { text },
                },
                ext: TagExt { b: Some(tag) },
            },
        }
    }
}

/// Renders [`SendFrame`]s for one (addressee, text) pair fast (the addressee a user or a group): for JSON the invariant parts
/// are escaped once and each frame is a few string appends (serde's escaping scan of the text
/// was the generator's largest encoding cost); MessagePack goes through serde.
#[derive(Clone, Debug)]
pub struct SendTemplate {
    codec: Codec,
    kind: &'static str,
    to: String,
    text: std::sync::Arc<str>,
    to_json: String,
    text_json: String,
}

impl SendTemplate {
    /// A template for messages to the user `to` with `text`.
    pub fn new(codec: Codec, to: &str, text: std::sync::Arc<str>) -> anyhow::Result<Self> {
        Self::with_kind(codec, "user", to, text)
    }

    /// A template for messages to the group `group` with `text`.
    pub fn to_group(codec: Codec, group: &str, text: std::sync::Arc<str>) -> anyhow::Result<Self> {
        Self::with_kind(codec, "group", group, text)
    }

    fn with_kind(
        codec: Codec,
        kind: &'static str,
        to: &str,
        text: std::sync::Arc<str>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            codec,
            kind,
            to_json: serde_json::to_string(to)?,
            text_json: serde_json::to_string(&*text)?,
            to: to.to_owned(),
            text,
        })
    }

    /// The `send` request with id `id`, `client_msg_id` `k<tag.k>`, and the tag.
    pub fn render(&self, id: u64, tag: BenchTag) -> anyhow::Result<Message> {
        use std::fmt::Write as _;
        let BenchTag { s, k, t } = tag;
        match self.codec {
            Codec::Json => {
                let mut out =
                    String::with_capacity(160 + self.to_json.len() + self.text_json.len());
                let (kind, to, text) = (self.kind, &self.to_json, &self.text_json);
                write!(
                    out,
                    r#"{{"id":{id},"op":"send","data":{{"to":{{"kind":"{kind}","id":{to}}},"client_msg_id":"k{k}","content":{{"type":"text","body":{{"text":{text}}}}},"ext":{{"b":{{"s":{s},"k":{k},"t":{t}}}}}}}}}"#
                )?;
                Ok(Message::text(out))
            }
            Codec::MsgPack => {
                let client_msg_id = format!("k{k}");
                let mut frame = SendFrame::text(id, &self.to, &client_msg_id, &self.text, tag);
                frame.data.to.kind = self.kind;
                encode(self.codec, &frame)
            }
        }
    }
}

/// The three kinds of server frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    /// An answer.
    Response,
    /// An error answer.
    Error,
    /// A pushed event.
    Event,
}

/// Event names the hot path cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventName {
    /// A new message.
    Message,
    /// Anything else.
    #[serde(other)]
    Other,
}

/// A server frame decoded only as far as the hot path needs.
#[derive(Debug, Deserialize)]
pub struct FastFrame {
    /// Response, error or event.
    #[serde(rename = "type")]
    pub kind: FrameKind,
    /// The request id (answers).
    #[serde(default)]
    pub id: Option<u64>,
    /// The event name (events).
    #[serde(default)]
    pub event: Option<EventName>,
    /// The payload: a message (events) or `{"message": …}` (send answers).
    #[serde(default)]
    pub data: Option<FastData>,
    /// The error (error answers).
    #[serde(default)]
    pub error: Option<FastError>,
}

/// The parts of a message (or of a send answer) the hot path reads.
#[derive(Debug, Default, Deserialize)]
pub struct FastData {
    /// The message's seq (events).
    #[serde(default)]
    pub seq: Option<u64>,
    /// The message's `ext` (events).
    #[serde(default)]
    pub ext: Option<TagExt>,
    /// The stored message (send answers). Events whose `message` is something else (the
    /// `kicked` event's text) leave it `None`.
    #[serde(default, deserialize_with = "map_or_none")]
    pub message: Option<FastMessage>,
}

/// Deserializes a map into `T`, and anything else into `None`, without buffering.
fn map_or_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("anything")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Option<T>, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Option<T>, A::Error> {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

/// The stored message in a send answer.
#[derive(Debug, Default, Deserialize)]
pub struct FastMessage {
    /// Its seq (absent from relay acks).
    #[serde(default)]
    pub seq: Option<u64>,
    /// Its `ext`.
    #[serde(default)]
    pub ext: Option<TagExt>,
}

/// An error answer's code and retry hint.
#[derive(Debug, Deserialize)]
pub struct FastError {
    /// The numeric error code.
    pub code: u16,
    /// For `rate_limited`: when to retry.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

impl FastFrame {
    /// Decodes a frame's payload in the codec.
    pub fn decode(codec: Codec, bytes: &[u8]) -> anyhow::Result<Self> {
        match codec {
            Codec::Json => serde_json::from_slice(bytes).context("undecodable JSON frame"),
            Codec::MsgPack => rmp_decode(bytes),
        }
    }

    /// The bench tag of a `message` event.
    pub fn event_tag(&self) -> Option<BenchTag> {
        self.data.as_ref()?.ext.as_ref()?.b
    }

    /// The seq and tag of a send answer.
    pub fn ack(&self) -> (Option<u64>, Option<BenchTag>) {
        match self.data.as_ref().and_then(|d| d.message.as_ref()) {
            Some(m) => (m.seq, m.ext.as_ref().and_then(|e| e.b)),
            None => (None, None),
        }
    }
}

fn rmp_decode(bytes: &[u8]) -> anyhow::Result<FastFrame> {
    magpie_proto::Codec::MsgPack
        .decode::<FastFrame>(bytes)
        .map_err(|e| anyhow!("undecodable MessagePack frame: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use magpie_proto::frame::SendRequest;

    #[test]
    fn send_frames_are_valid_protocol_requests() {
        let tag = BenchTag {
            s: 3,
            k: 9,
            t: 12345,
        };
        let frame = SendFrame::text(11, "bob", "k9", "hello", tag);
        for codec in [Codec::Json, Codec::MsgPack] {
            let bytes = codec.encode(&frame).unwrap();
            let back: ClientFrame = codec.decode(&bytes).unwrap();
            assert_eq!(back.id, 11);
            let Request::Send(SendRequest {
                to,
                client_msg_id,
                ext,
                ..
            }) = back.request
            else {
                panic!("not a send");
            };
            assert_eq!(to, magpie_proto::Peer::User(UserId::new("bob").unwrap()));
            assert_eq!(client_msg_id, "k9");
            assert_eq!(ext.unwrap()["b"]["k"], 9);
        }
    }

    #[test]
    fn templates_render_what_serde_renders() {
        let tag = BenchTag { s: 1, k: 42, t: 99 };
        let text: std::sync::Arc<str> = std::sync::Arc::from("a \"quoted\" text\n");
        for codec in [Codec::Json, Codec::MsgPack] {
            let template = SendTemplate::new(codec, "bob", text.clone()).unwrap();
            let fast = template.render(44, tag).unwrap();
            let slow = encode(codec, &SendFrame::text(44, "bob", "k42", &text, tag)).unwrap();
            let (fast, slow) = (payload(&fast).unwrap(), payload(&slow).unwrap());
            let fast: ClientFrame = codec.decode(fast).unwrap();
            let slow: ClientFrame = codec.decode(slow).unwrap();
            assert_eq!(fast, slow);

            let group = SendTemplate::to_group(codec, "g1", text.clone()).unwrap();
            let frame = group.render(45, tag).unwrap();
            let frame: ClientFrame = codec.decode(payload(&frame).unwrap()).unwrap();
            let Request::Send(send) = frame.request else {
                panic!("not a send");
            };
            assert_eq!(
                send.to,
                magpie_proto::Peer::Group(magpie_proto::GroupId::new("g1").unwrap())
            );
        }
    }

    #[test]
    fn fast_frames_read_events_acks_and_errors() {
        let event = r#"{"type":"event","event":"message","data":{"id":"1","conversation_id":"c2c:a:b",
            "seq":7,"from":"a","to":{"kind":"user","id":"b"},"client_msg_id":"k1",
            "content":{"type":"text","body":{"text":"x"}},"ext":{"b":{"s":1,"k":2,"t":3},"z":[1]},"server_time":5}}"#;
        let f = FastFrame::decode(Codec::Json, event.as_bytes()).unwrap();
        assert_eq!(f.kind, FrameKind::Event);
        assert_eq!(f.event, Some(EventName::Message));
        assert_eq!(f.data.as_ref().unwrap().seq, Some(7));
        assert_eq!(f.event_tag(), Some(BenchTag { s: 1, k: 2, t: 3 }));

        let ack = r#"{"data":{"message":{"seq":4,"ext":{"b":{"s":0,"k":1,"t":2}}},"duplicate":false},"type":"response","id":3,"op":"send"}"#;
        let f = FastFrame::decode(Codec::Json, ack.as_bytes()).unwrap();
        assert_eq!((f.kind, f.id), (FrameKind::Response, Some(3)));
        assert_eq!(f.ack(), (Some(4), Some(BenchTag { s: 0, k: 1, t: 2 })));

        let err = r#"{"type":"error","id":null,"op":null,"error":{"code":4001,"message":"slow","retry_after_ms":20}}"#;
        let f = FastFrame::decode(Codec::Json, err.as_bytes()).unwrap();
        assert_eq!(f.id, None);
        assert_eq!(f.error.unwrap().retry_after_ms, Some(20));

        let other =
            r#"{"type":"event","event":"kicked","data":{"reason":"replaced","message":"x"}}"#;
        let f = FastFrame::decode(Codec::Json, other.as_bytes()).unwrap();
        assert_eq!(f.event, Some(EventName::Other));
    }

    #[test]
    fn fast_frames_decode_messagepack_too() {
        let frame = ServerFrame::Response {
            id: 2,
            response: Response::Ping(magpie_proto::frame::Pong { server_time: 1 }),
        };
        let bytes = Codec::MsgPack.encode(&frame).unwrap();
        let f = FastFrame::decode(Codec::MsgPack, &bytes).unwrap();
        assert_eq!((f.kind, f.id), (FrameKind::Response, Some(2)));
    }

    #[test]
    fn source_addresses_rotate() {
        let s = SourceAddrs::new(3);
        let picks: Vec<_> = (0..4).map(|i| s.pick(i).unwrap().to_string()).collect();
        assert_eq!(picks, ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.1"]);
        assert_eq!(SourceAddrs::new(0).pick(5), None);
    }
}
