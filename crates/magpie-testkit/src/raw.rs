//! A bare protocol client: JSON (or MessagePack) frames in, `serde_json::Value` out. For
//! tests of the wire protocol itself, including the malformed frames an SDK would never send.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use magpie_proto::Codec;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame before failing.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// A raw WebSocket connection to the gateway.
pub struct RawClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    codec: Codec,
    next_id: u64,
}

/// How a connection ended, as seen by the client.
#[derive(Debug, PartialEq)]
pub enum Closed {
    /// A close frame with this code.
    Code(u16),
    /// The socket ended without a close frame.
    Abrupt,
}

impl RawClient {
    /// Connects, offering `subprotocol` if given.
    pub async fn connect(
        url: &str,
        subprotocol: Option<&str>,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request()?;
        if let Some(protocol) = subprotocol {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(protocol).unwrap(),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        let codec = if subprotocol == Some(magpie_proto::codec::SUBPROTOCOL_MSGPACK) {
            Codec::MsgPack
        } else {
            Codec::Json
        };
        Ok(Self {
            ws,
            codec,
            next_id: 1,
        })
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws.send(Message::text(text.into())).await.unwrap();
    }

    /// Sends one WebSocket frame exactly as given — including frames a client library would
    /// never produce (a text frame that is not UTF-8, a stray continuation frame).
    pub async fn send_frame(&mut self, frame: Frame) {
        self.ws.send(Message::Frame(frame)).await.unwrap();
    }

    /// Sends a raw binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.unwrap();
    }

    /// Sends any value as one frame in the connection's encoding (JSON text or MessagePack
    /// binary), for frames that are well encoded but not valid requests.
    pub async fn send_value(&mut self, value: &Value) {
        self.try_send_value(value).await.unwrap();
    }

    /// Like [`RawClient::send_value`], but reports a connection the server has closed
    /// instead of panicking.
    pub async fn try_send_value(&mut self, value: &Value) -> Result<(), Closed> {
        let message = match self.codec {
            Codec::Json => Message::text(value.to_string()),
            Codec::MsgPack => Message::binary(rmp_value(value)),
        };
        self.ws.send(message).await.map_err(|_| Closed::Abrupt)
    }

    /// Sends a request with a fresh id in the connection's codec; returns the id.
    pub async fn send(&mut self, op: &str, data: Value) -> u64 {
        self.try_send(op, data).await.unwrap()
    }

    /// Like [`RawClient::send`], but reports a connection the server has closed instead of
    /// panicking.
    pub async fn try_send(&mut self, op: &str, data: Value) -> Result<u64, Closed> {
        let id = self.next_id;
        self.next_id += 1;
        self.try_send_value(&json!({"id": id, "op": op, "data": data}))
            .await?;
        Ok(id)
    }

    /// Sends a request and waits for its answer (skipping events).
    pub async fn request(&mut self, op: &str, data: Value) -> Value {
        let id = self.send(op, data).await;
        self.answer(id).await
    }

    /// Sends a request and returns its answer's data; panics if it was refused.
    pub async fn ok(&mut self, op: &str, data: Value) -> Value {
        let answer = self.request(op, data).await;
        assert_eq!(answer["type"], "response", "{op}: {answer}");
        answer["data"].clone()
    }

    /// Sends a request that must be refused; returns the error's name (`"not_group_member"`).
    pub async fn refused(&mut self, op: &str, data: Value) -> &'static str {
        let answer = self.request(op, data).await;
        assert_eq!(answer["type"], "error", "{op} should fail: {answer}");
        let code = answer["error"]["code"].as_u64().unwrap_or_default();
        magpie_proto::ErrorCode::from_u16(u16::try_from(code).unwrap_or_default()).name()
    }

    /// Waits for the answer to request `id`, skipping events.
    pub async fn answer(&mut self, id: u64) -> Value {
        loop {
            let frame = self.next_frame().await;
            if frame["type"] != "event" && frame["id"] == id {
                return frame;
            }
        }
    }

    /// Waits for the next event of a kind, skipping other frames.
    pub async fn event(&mut self, name: &str) -> Value {
        loop {
            let frame = self.next_frame().await;
            if frame["type"] == "event" && frame["event"] == name {
                return frame["data"].clone();
            }
        }
    }

    /// The next frame, decoded to JSON; panics on timeout or close.
    pub async fn next_frame(&mut self) -> Value {
        match self.try_next_frame(FRAME_TIMEOUT).await {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!("no frame within {FRAME_TIMEOUT:?}"),
            Err(closed) => panic!("connection closed: {closed:?}"),
        }
    }

    /// The next frame within `wait`: `Ok(None)` on timeout, `Err` when the connection closed.
    pub async fn try_next_frame(&mut self, wait: Duration) -> Result<Option<Value>, Closed> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Ok(None),
                Ok(next) => next,
            };
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Ok(Some(serde_json::from_str(&text).unwrap()));
                }
                Some(Ok(Message::Binary(bytes))) => {
                    return Ok(Some(rmp_serde::from_slice(&bytes).unwrap()));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(frame.map_or(Closed::Abrupt, |f| Closed::Code(u16::from(f.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(Closed::Abrupt),
            }
        }
    }

    /// Every frame that arrives within `wait` (stopping early if the connection closes).
    pub async fn frames_within(&mut self, wait: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_next_frame(left).await {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) | Err(_) => return frames,
            }
        }
    }

    /// Reads until the connection closes; returns how (skipping any frames before).
    pub async fn closed(&mut self) -> Closed {
        loop {
            match self.try_next_frame(FRAME_TIMEOUT).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("connection still open after {FRAME_TIMEOUT:?}"),
                Err(closed) => return closed,
            }
        }
    }

    /// Logs in; returns the answer frame.
    pub async fn login(&mut self, user: &str, token: &str, device: &str, platform: &str) -> Value {
        self.request(
            "login",
            json!({"user_id": user, "token": token, "device_id": device, "platform": platform}),
        )
        .await
    }

    /// Sends a text message; returns the answer frame.
    pub async fn send_text_message(&mut self, to: &str, client_msg_id: &str, text: &str) -> Value {
        self.request(
            "send",
            json!({
                "to": {"kind": "user", "id": to},
                "client_msg_id": client_msg_id,
                "content": {"type": "text", "body": {"text": text}}
            }),
        )
        .await
    }

    /// The user's online devices (`list_devices`), sorted by device id.
    pub async fn device_ids(&mut self) -> Vec<String> {
        let answer = self.request("list_devices", json!({})).await;
        assert_eq!(answer["type"], "response", "{answer}");
        let mut ids: Vec<String> = answer["data"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["device_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

fn rmp_value(value: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap()
}
