//! One WebSocket connection to the server.
//!
//! Owns the socket, the codec, request ids and their correlation with answers (one oneshot per
//! outstanding request), the application-level heartbeat and the idle check. One I/O task per
//! connection reads and writes the socket; [`Connection`] is a cheap handle to it. Events from
//! the server are handed out, in arrival order, on the channel returned by [`Connection::open`].
//!
//! It knows nothing about users, sync, or reconnecting: when the socket ends, it reports why
//! ([`CloseInfo`]) and fails every outstanding request with `Disconnected`; the session decides
//! what happens next.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use magpie_proto::frame::{
    DeviceList, Empty, GetMessagesRequest, LoginRequest, LoginResponse, MarkReadRequest,
    MessagesPage, RenewTokenRequest, SendRequest, SendResponse, SyncRequest, SyncResponse,
    TokenInfo,
};
use magpie_proto::{ClientFrame, Codec, ConversationState, Event, Request, Response};

use crate::error::{Error, ErrorKind, Result};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Waiter = oneshot::Sender<Result<Response>>;

/// Heartbeat settings before the server has told us its own (the protocol's defaults).
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(25);
const DEFAULT_IDLE: Duration = Duration::from_secs(60);
/// How long a locally initiated close waits for the close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CloseInfo {
    /// The server sent a close frame.
    Server { code: u16, reason: String },
    /// The socket failed or ended without a close frame.
    Network(String),
    /// Nothing arrived within the idle timeout.
    IdleTimeout,
    /// This side closed it.
    Local(String),
}

#[derive(Clone, Copy, Debug)]
struct Timing {
    heartbeat: Duration,
    idle: Duration,
}

enum Outgoing {
    // Boxed: a send request is far larger than the other commands.
    Frame(Box<ClientFrame>),
    Timing(Timing),
    Close(String),
}

struct Shared {
    /// The endpoint this connection was opened to.
    url: String,
    out: mpsc::UnboundedSender<Outgoing>,
    pending: Mutex<HashMap<u64, Waiter>>,
    next_id: AtomicU64,
    request_timeout: Duration,
    closed: watch::Receiver<Option<CloseInfo>>,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        // The map is only ever inserted into or removed from; a poisoned lock holds no
        // half-done change.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// A handle to one open connection. Clones share it.
#[derive(Clone)]
pub(crate) struct Connection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.shared.url)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Sends a request on a [`Connection`] and unpacks the expected answer:
/// `call!(conn, Login(request) => Login)` is a `Result<LoginResponse>`. The one path every
/// request takes (the `groups` module uses it too).
macro_rules! call {
    ($conn:expr, $request:ident($payload:expr) => $response:ident) => {
        match $conn
            .request(magpie_proto::Request::$request($payload))
            .await
        {
            Ok(magpie_proto::Response::$response(answer)) => Ok(answer),
            Ok(other) => Err($crate::error::Error::protocol(format!(
                "expected a `{}` answer, got `{}`",
                stringify!($response),
                magpie_proto::frame::Payload::name(&other)
            ))),
            Err(e) => Err(e),
        }
    };
}
pub(crate) use call;

impl Connection {
    /// Opens the WebSocket and starts its I/O task. The returned receiver yields the
    /// server's events in order and ends when the connection does.
    pub(crate) async fn open(
        url: &str,
        codec: Codec,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Event>)> {
        if url.starts_with("wss://") {
            ensure_crypto_provider();
        }
        let mut request = url.into_client_request().map_err(|e| {
            Error::with_source(ErrorKind::InvalidInput, format!("bad server url {url}"), e)
        })?;
        request.headers_mut().insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(codec.subprotocol()),
        );
        let connect = tokio_tungstenite::connect_async_with_config(request, None, true);
        let (ws, _response) = match timeout(connect_timeout, connect).await {
            Ok(Ok(ok)) => ok,
            Ok(Err(e)) => return Err(connect_error(url, e)),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("connecting to {url} took longer than {connect_timeout:?}"),
                ));
            }
        };

        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (closed_tx, closed_rx) = watch::channel(None);
        let shared = Arc::new(Shared {
            url: url.to_owned(),
            out: out_tx,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            request_timeout,
            closed: closed_rx,
        });
        let io = Io {
            ws,
            codec,
            shared: Arc::downgrade(&shared),
            events: events_tx,
            timing: Timing {
                heartbeat: DEFAULT_HEARTBEAT,
                idle: DEFAULT_IDLE,
            },
        };
        tokio::spawn(async move {
            let (info, shared) = io.run(out_rx).await;
            tracing::debug!(?info, "connection closed");
            if let Some(shared) = shared {
                // Dropping the waiters fails every outstanding request with Disconnected.
                shared.pending().clear();
            }
            closed_tx.send_replace(Some(info));
        });
        Ok((Self { shared }, events_rx))
    }

    /// The endpoint this connection was opened to.
    pub(crate) fn url(&self) -> &str {
        &self.shared.url
    }

    /// Sends a request and waits for its answer, at most the request timeout.
    pub(crate) async fn request(&self, request: Request) -> Result<Response> {
        let id = self.shared.next_id();
        let (tx, rx) = oneshot::channel();
        self.shared.pending().insert(id, tx);
        let op = magpie_proto::frame::Payload::name(&request);
        if self
            .shared
            .out
            .send(Outgoing::Frame(Box::new(ClientFrame { id, request })))
            .is_err()
        {
            self.shared.pending().remove(&id);
            return Err(Error::disconnected("the connection is closed"));
        }
        match timeout(self.shared.request_timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Error::disconnected(format!(
                "the connection closed before `{op}` was answered"
            ))),
            Err(_) => {
                self.shared.pending().remove(&id);
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "`{op}` got no answer within {:?}",
                        self.shared.request_timeout
                    ),
                ))
            }
        }
    }

    pub(crate) async fn login(&self, request: LoginRequest) -> Result<LoginResponse> {
        call!(self, Login(request) => Login)
    }

    pub(crate) async fn renew_token(&self, token: String) -> Result<TokenInfo> {
        call!(self, RenewToken(RenewTokenRequest { token }) => RenewToken)
    }

    pub(crate) async fn logout(&self) -> Result<()> {
        call!(self, Logout(Empty) => Logout).map(|_| ())
    }

    pub(crate) async fn send(&self, request: SendRequest) -> Result<SendResponse> {
        call!(self, Send(request) => Send)
    }

    pub(crate) async fn sync(&self, request: SyncRequest) -> Result<SyncResponse> {
        call!(self, Sync(request) => Sync)
    }

    pub(crate) async fn get_messages(&self, request: GetMessagesRequest) -> Result<MessagesPage> {
        call!(self, GetMessages(request) => GetMessages)
    }

    pub(crate) async fn mark_read(&self, request: MarkReadRequest) -> Result<ConversationState> {
        call!(self, MarkRead(request) => MarkRead)
    }

    pub(crate) async fn list_devices(&self) -> Result<DeviceList> {
        call!(self, ListDevices(Empty) => ListDevices)
    }

    /// Applies the heartbeat interval and idle timeout the server announced at login.
    pub(crate) fn set_timing(&self, heartbeat_ms: u64, idle_ms: u64) {
        let timing = Timing {
            heartbeat: Duration::from_millis(heartbeat_ms.max(100)),
            idle: Duration::from_millis(idle_ms.max(200)),
        };
        let _ = self.shared.out.send(Outgoing::Timing(timing));
    }

    /// Starts closing the connection; [`closed`](Self::closed) resolves once it is done.
    pub(crate) fn close(&self, reason: impl Into<String>) {
        let _ = self.shared.out.send(Outgoing::Close(reason.into()));
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.borrow().is_some()
    }

    /// Waits until the connection has ended and says why.
    pub(crate) async fn closed(&self) -> CloseInfo {
        let mut rx = self.shared.closed.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(info) => info
                .clone()
                .unwrap_or_else(|| CloseInfo::Network("closed".into())),
            Err(_) => CloseInfo::Network("the connection task ended".into()),
        }
    }
}

/// rustls picks its crypto provider from crate features, and panics when a binary enables
/// two (the SDK's ring next to reqwest's aws-lc-rs, say). Installing ring when nothing is
/// installed yet keeps `wss://` working there; an app's own choice, made earlier, wins.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn connect_error(url: &str, e: tungstenite::Error) -> Error {
    let message = match &e {
        tungstenite::Error::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            format!("{url} refused the upgrade ({}) {body}", response.status())
        }
        other => format!("could not connect to {url}: {other}"),
    };
    Error::with_source(ErrorKind::Disconnected, message, e)
}

/// The envelope of a server frame, read leniently when the full frame does not decode, so
/// that a request whose answer we cannot read fails at once instead of timing out.
#[derive(Deserialize)]
struct Head {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    id: Option<u64>,
}

struct Io {
    ws: Ws,
    codec: Codec,
    // Weak, so that the task ends (closing the socket) when the last handle is dropped.
    shared: std::sync::Weak<Shared>,
    events: mpsc::UnboundedSender<Event>,
    timing: Timing,
}

impl Io {
    async fn run(
        mut self,
        mut out: mpsc::UnboundedReceiver<Outgoing>,
    ) -> (CloseInfo, Option<Arc<Shared>>) {
        let mut last_sent = Instant::now();
        let mut last_received = Instant::now();
        let mut server_close: Option<(u16, String)> = None;
        let info = loop {
            let ping_at = last_sent + self.timing.heartbeat;
            let dead_at = last_received + self.timing.idle;
            tokio::select! {
                frame = self.ws.next() => match frame {
                    Some(Ok(message)) => {
                        last_received = Instant::now();
                        match message {
                            WsMessage::Text(text) => self.dispatch(text.as_bytes()),
                            WsMessage::Binary(bytes) => self.dispatch(&bytes),
                            WsMessage::Close(frame) => {
                                // tungstenite answers the close; keep reading until the end.
                                server_close = Some(frame.map_or((1005, String::new()), |f| {
                                    (u16::from(f.code), f.reason.to_string())
                                }));
                            }
                            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
                        }
                    }
                    Some(Err(e)) => break match server_close.take() {
                        Some((code, reason)) => CloseInfo::Server { code, reason },
                        None => CloseInfo::Network(e.to_string()),
                    },
                    None => break match server_close.take() {
                        Some((code, reason)) => CloseInfo::Server { code, reason },
                        None => CloseInfo::Network("the server ended the connection".into()),
                    },
                },
                command = out.recv() => match command {
                    Some(Outgoing::Frame(frame)) => {
                        if let Err(e) = self.write(&frame).await {
                            break CloseInfo::Network(e);
                        }
                        last_sent = Instant::now();
                    }
                    Some(Outgoing::Timing(timing)) => self.timing = timing,
                    Some(Outgoing::Close(reason)) => {
                        self.close(&reason).await;
                        break CloseInfo::Local(reason);
                    }
                    None => {
                        self.close("client dropped").await;
                        break CloseInfo::Local("client dropped".into());
                    }
                },
                () = sleep_until(ping_at) => {
                    // The answer is ignored: any frame at all proves the server alive.
                    let id = self.shared.upgrade().map_or(0, |s| s.next_id());
                    let ping = ClientFrame { id, request: Request::Ping(Empty) };
                    if let Err(e) = self.write(&ping).await {
                        break CloseInfo::Network(e);
                    }
                    last_sent = Instant::now();
                }
                () = sleep_until(dead_at) => {
                    tracing::info!(idle = ?self.timing.idle, "no frame from the server; closing");
                    self.close("idle timeout").await;
                    break CloseInfo::IdleTimeout;
                }
            }
        };
        (info, self.shared.upgrade())
    }

    async fn write(&mut self, frame: &ClientFrame) -> std::result::Result<(), String> {
        let bytes = self.codec.encode(frame).map_err(|e| e.to_string())?;
        let message = if self.codec.is_text() {
            match String::from_utf8(bytes) {
                Ok(text) => WsMessage::text(text),
                Err(e) => return Err(e.to_string()),
            }
        } else {
            WsMessage::binary(bytes)
        };
        self.ws.send(message).await.map_err(|e| e.to_string())
    }

    async fn close(&mut self, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: reason.to_owned().into(),
        };
        let _ = timeout(CLOSE_GRACE, self.ws.close(Some(frame))).await;
    }

    fn dispatch(&self, bytes: &[u8]) {
        let answer = match self.codec.decode::<magpie_proto::ServerFrame>(bytes) {
            Ok(magpie_proto::ServerFrame::Event(event)) => {
                let _ = self.events.send(event);
                return;
            }
            Ok(magpie_proto::ServerFrame::Response { id, response }) => (id, Ok(response)),
            Ok(magpie_proto::ServerFrame::Error {
                id: Some(id),
                error,
                ..
            }) => (id, Err(Error::server(error))),
            Ok(magpie_proto::ServerFrame::Error {
                id: None, error, ..
            }) => {
                tracing::warn!(%error, "the server could not read one of our frames");
                return;
            }
            Err(e) => match self.codec.decode::<Head>(bytes) {
                Ok(Head {
                    kind: Some(kind),
                    id: Some(id),
                }) if kind != "event" => {
                    tracing::warn!(id, error = %e, "undecodable answer");
                    (id, Err(Error::protocol(format!("undecodable answer: {e}"))))
                }
                // Unknown events (from a newer server) are ignored, as the protocol asks.
                _ => {
                    tracing::debug!(error = %e, "ignoring an undecodable frame");
                    return;
                }
            },
        };
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let waiter = shared.pending().remove(&answer.0);
        if let Some(waiter) = waiter {
            let _ = waiter.send(answer.1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use magpie_proto::ServerFrame;
    use magpie_proto::frame::{DeviceList, TokenInfo};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{
        ErrorResponse, Request as HttpRequest, Response as HttpResponse,
    };

    type Peer = WebSocketStream<TcpStream>;

    // The large error type is the signature tungstenite's handshake callback requires.
    #[allow(clippy::result_large_err)]
    fn agree_json(
        _: &HttpRequest,
        mut response: HttpResponse,
    ) -> Result<HttpResponse, ErrorResponse> {
        response.headers_mut().insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(Codec::Json.subprotocol()),
        );
        Ok(response)
    }

    /// A scripted server: accepts one connection, agreeing to the JSON subprotocol.
    async fn peer() -> (String, tokio::task::JoinHandle<Peer>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            tokio_tungstenite::accept_hdr_async(tcp, agree_json)
                .await
                .expect("handshake")
        });
        (format!("ws://{addr}/v1/ws"), accept)
    }

    async fn open(
        url: &str,
        request_timeout: Duration,
    ) -> (Connection, mpsc::UnboundedReceiver<Event>) {
        Connection::open(url, Codec::Json, Duration::from_secs(5), request_timeout)
            .await
            .expect("open")
    }

    async fn next_request(peer: &mut Peer) -> ClientFrame {
        loop {
            match peer.next().await {
                Some(Ok(WsMessage::Text(text))) => {
                    return Codec::Json.decode(text.as_bytes()).expect("a client frame");
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a request, got {other:?}"),
            }
        }
    }

    async fn push(peer: &mut Peer, frame: &ServerFrame) {
        let bytes = Codec::Json.encode(frame).expect("encode");
        let text = String::from_utf8(bytes).expect("json is utf-8");
        peer.send(WsMessage::text(text)).await.expect("send");
    }

    #[tokio::test]
    async fn answers_reach_their_request_events_flow_and_a_close_fails_the_rest() {
        let (url, accept) = peer().await;
        let (conn, mut events) = open(&url, Duration::from_secs(5)).await;
        let mut server = accept.await.expect("accepted");
        let script = tokio::spawn(async move {
            let first = next_request(&mut server).await;
            assert!(matches!(first.request, Request::ListDevices(_)));
            push(
                &mut server,
                &ServerFrame::Event(Event::TokenWillExpire(TokenInfo { expires_at: 7 })),
            )
            .await;
            push(
                &mut server,
                &ServerFrame::Response {
                    id: first.id,
                    response: Response::ListDevices(DeviceList { devices: vec![] }),
                },
            )
            .await;
            let second = next_request(&mut server).await;
            assert!(matches!(second.request, Request::ListDevices(_)));
            let frame = CloseFrame {
                code: CloseCode::from(4001),
                reason: "kicked".into(),
            };
            server.close(Some(frame)).await.expect("close");
            while server.next().await.is_some() {}
        });

        let devices = conn.list_devices().await.expect("answered");
        assert!(devices.devices.is_empty());
        let event = events.recv().await.expect("event");
        assert_eq!(event, Event::TokenWillExpire(TokenInfo { expires_at: 7 }));
        let err = conn
            .list_devices()
            .await
            .expect_err("closed before the answer");
        assert_eq!(err.kind(), ErrorKind::Disconnected);
        assert_eq!(
            conn.closed().await,
            CloseInfo::Server {
                code: 4001,
                reason: "kicked".into()
            }
        );
        assert!(
            events.recv().await.is_none(),
            "the event stream ends with the connection"
        );
        script.await.expect("script");
    }

    #[tokio::test]
    async fn an_unanswered_request_times_out() {
        let (url, accept) = peer().await;
        let (conn, _events) = open(&url, Duration::from_millis(200)).await;
        let _server = accept.await.expect("accepted");
        let err = conn.list_devices().await.expect_err("no answer");
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(
            !conn.is_closed(),
            "a timeout alone does not close the connection"
        );
    }

    #[tokio::test]
    async fn idle_connections_send_pings_and_a_silent_server_is_declared_dead() {
        let (url, accept) = peer().await;
        let (conn, _events) = open(&url, Duration::from_secs(5)).await;
        let mut server = accept.await.expect("accepted");
        conn.set_timing(100, 500);
        let started = Instant::now();
        // The server reads everything and answers nothing.
        let pings = tokio::spawn(async move {
            let mut pings = 0;
            while let Some(Ok(message)) = server.next().await {
                if let WsMessage::Text(text) = message {
                    let frame: ClientFrame = Codec::Json.decode(text.as_bytes()).expect("frame");
                    if matches!(frame.request, Request::Ping(_)) {
                        pings += 1;
                    }
                }
            }
            pings
        });
        assert_eq!(conn.closed().await, CloseInfo::IdleTimeout);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3),
            "declared dead after {elapsed:?}"
        );
        let pings = pings.await.expect("reader");
        assert!(pings >= 3, "a ping every 100 ms of silence, got {pings}");
    }
}
