//! One connection's session loop.
//!
//! A single task per connection waits on everything that can happen to it — a frame from the
//! device, an event for it, a finished request, the heartbeat, the login and token timers, a
//! kick, shutdown — and reacts. Requests that touch storage run concurrently (up to
//! `max_in_flight`) but are answered in arrival order; sends reach the store in arrival order
//! too, so one device's messages get seqs in the order it sent them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use magpie_proto::frame::{
    ClientFrame, DeviceList, Empty, FrameHead, LoginRequest, LoginResponse, Payload, Pong,
    TokenInfo, close,
};
use magpie_proto::{
    Codec, ErrorBody, ErrorCode, Event, Millis, Request, Response, ServerFrame, UserId,
};
use tokio::time::{Instant, sleep_until};

use super::ratelimit::TokenBucket;
use crate::app::App;
use crate::clock::now_ms;
use crate::error::Error;
use crate::group_messages::SendOrder;
use crate::messaging::Origin;
use crate::metrics::Metrics;
use crate::sessions::{Control, Delivery, DeviceEntry, Inbox, SessionId, encode_frame};

type Pending = Pin<Box<dyn Future<Output = ServerFrame> + Send>>;

/// Why the loop ended: a close frame to send, or none when the peer is already gone.
type Ending = Option<(u16, &'static str)>;

struct LoggedIn {
    user: UserId,
    session: SessionId,
    token_expires_at: Millis,
    /// `token_will_expire` was sent for the current token.
    warned: bool,
}

struct Conn {
    socket: WebSocket,
    codec: Codec,
    app: Arc<App>,
    login: Option<LoggedIn>,
    /// Events for this device and its close signal, once logged in.
    inbox: Option<Arc<Inbox>>,
    last_heard: Instant,
    requests: TokenBucket,
    sends: TokenBucket,
    in_flight: FuturesOrdered<Pending>,
    /// Keeps this connection's group sends in issue order.
    send_order: SendOrder,
    /// The token's expiry changed (login, renewal): the token timer must be re-armed.
    token_changed: bool,
}

/// Serves one upgraded connection until it closes.
pub(super) async fn run(socket: WebSocket, codec: Codec, app: Arc<App>) {
    app.metrics
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = Instant::now();
    let limits = &app.config.limits;
    let mut conn = Conn {
        socket,
        codec,
        requests: TokenBucket::new(limits.request_rate_per_sec, limits.request_burst, now),
        sends: TokenBucket::new(limits.send_rate_per_sec, limits.send_burst, now),
        app: app.clone(),
        login: None,
        inbox: None,
        last_heard: now,
        in_flight: FuturesOrdered::new(),
        send_order: SendOrder::default(),
        token_changed: false,
    };
    let ending = conn.serve().await;
    if let Some((code, reason)) = ending {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        // A peer that stopped reading must not hold the task forever.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            conn.socket.send(WsMessage::Close(Some(frame))),
        )
        .await;
    }
    if let Some(login) = &conn.login {
        app.cluster.detach(&login.user, login.session);
    }
    app.metrics
        .connections
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

async fn next_delivery(inbox: &Option<Arc<Inbox>>) -> Delivery {
    match inbox {
        Some(inbox) => inbox.next().await,
        None => std::future::pending().await,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

impl Conn {
    async fn serve(&mut self) -> Ending {
        let gateway = &self.app.config.gateway;
        let (max_in_flight, max_frame) = (gateway.max_in_flight, gateway.max_frame_bytes);
        let heartbeat_every = self.app.config.heartbeat_interval();
        let idle_timeout = self.app.config.idle_timeout();
        // One timer per connection, for whichever comes first: the next heartbeat, the login
        // deadline (before login) or the next token event (after). Timers cost memory on every
        // idle connection.
        let mut next_heartbeat = Instant::now() + heartbeat_every;
        let login_deadline = Instant::now() + Duration::from_millis(gateway.login_timeout_ms);
        let mut token_due = far_future();
        let timer = sleep_until(next_heartbeat.min(login_deadline));
        tokio::pin!(timer);
        let shutdown = self.app.shutdown.clone();

        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.drain_in_flight().await;
                    return Some((close::SERVICE_RESTART, "server shutting down"));
                }
                delivery = next_delivery(&self.inbox) => match delivery {
                    Delivery::Close(control) => return self.on_control(control).await,
                    Delivery::Event(frame) => {
                        if self.write_ready(Some(frame.encoded(self.codec))).await.is_err() {
                            return None;
                        }
                    }
                },
                Some(frame) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    if self.write_ready(encode_frame(self.codec, &frame)).await.is_err() {
                        return None;
                    }
                }
                incoming = self.socket.recv(), if self.in_flight.len() < max_in_flight => {
                    let message = match incoming {
                        Some(Ok(message)) => message,
                        Some(Err(e)) => return read_error_ending(e),
                        None => return None,
                    };
                    self.last_heard = Instant::now();
                    let (bytes, is_text) = match message {
                        WsMessage::Text(text) => (Bytes::from(text), true),
                        WsMessage::Binary(bytes) => (bytes, false),
                        WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                        WsMessage::Close(_) => return None,
                    };
                    if let Err(ending) = self.on_frame(&bytes, is_text, max_frame).await {
                        return ending;
                    }
                }
                _ = &mut timer => {
                    let now = Instant::now();
                    if self.login.is_none() && now >= login_deadline {
                        return Some((close::LOGIN_TIMEOUT, "no login within the login timeout"));
                    }
                    if now >= next_heartbeat {
                        if self.last_heard.elapsed() >= idle_timeout {
                            return Some((close::IDLE_TIMEOUT, "idle timeout"));
                        }
                        if self.send(WsMessage::Ping(Bytes::new())).await.is_err() {
                            return None;
                        }
                        next_heartbeat = now + heartbeat_every;
                    }
                    if self.login.is_some() && now >= token_due {
                        if let Some(ending) = self.on_token_timer().await {
                            return ending;
                        }
                        self.token_changed = true;
                    }
                }
            }
            if std::mem::take(&mut self.token_changed) {
                token_due = self.token_deadline();
            }
            let wake = next_heartbeat.min(if self.login.is_none() {
                login_deadline
            } else {
                token_due
            });
            if wake != timer.deadline() {
                timer.as_mut().reset(wake);
            }
        }
    }

    /// Answers the requests already accepted (their writes complete anyway), so a device is
    /// not left retrying sends that succeeded. Bounded, so shutdown cannot hang on it.
    async fn drain_in_flight(&mut self) {
        let drain = async {
            while let Some(frame) = self.in_flight.next().await {
                if self.write(&frame).await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }

    /// When the next token event is due: the warning, then the expiry.
    fn token_deadline(&self) -> Instant {
        let Some(login) = &self.login else {
            return far_future();
        };
        let warning_ms = (self.app.config.auth.token_expiry_warning_secs * 1000) as i64;
        let due = if login.warned {
            login.token_expires_at
        } else {
            login.token_expires_at - warning_ms
        };
        Instant::now() + Duration::from_millis((due - now_ms()).max(0) as u64)
    }

    async fn on_token_timer(&mut self) -> Option<Ending> {
        let login = self.login.as_mut()?;
        let expires_at = login.token_expires_at;
        if now_ms() >= expires_at {
            let frame = ServerFrame::Event(Event::TokenExpired(Empty));
            let _ = self.write(&frame).await;
            return Some(Some((close::TOKEN_EXPIRED, "token expired")));
        }
        if !login.warned {
            login.warned = true;
            let frame = ServerFrame::Event(Event::TokenWillExpire(TokenInfo { expires_at }));
            if self.write(&frame).await.is_err() {
                return Some(None);
            }
        }
        None
    }

    async fn on_control(&mut self, control: Control) -> Ending {
        match control {
            Control::Kick(kicked) => {
                let _ = self.write(&ServerFrame::Event(Event::Kicked(kicked))).await;
                Some((close::KICKED, "kicked"))
            }
            Control::SlowConsumer => {
                Metrics::add(&self.app.metrics.slow_consumers, 1);
                Some((close::SLOW_CONSUMER, "too many undelivered events"))
            }
        }
    }

    async fn on_frame(
        &mut self,
        bytes: &[u8],
        is_text: bool,
        max_frame: usize,
    ) -> Result<(), Ending> {
        if is_text != self.codec.is_text() {
            let message = if is_text {
                "text frames need the JSON subprotocol; this connection speaks magpie.v1.msgpack"
            } else {
                "binary frames need the magpie.v1.msgpack subprotocol; this connection speaks JSON"
            };
            return self
                .reply_error(self.head(bytes), ErrorBody::bad_request(message))
                .await;
        }
        if bytes.len() > max_frame {
            let body = ErrorBody::new(
                ErrorCode::TooLarge,
                format!("frame is {} bytes; the limit is {max_frame}", bytes.len()),
            );
            return self.reply_error(self.head(bytes), body).await;
        }
        let frame: ClientFrame = match self.codec.decode(bytes) {
            Ok(frame) => frame,
            Err(e) => {
                let head = self.head(bytes);
                let known = head
                    .op
                    .as_deref()
                    .is_some_and(|op| Request::NAMES.contains(&op));
                let body = match (&head.op, known) {
                    (Some(op), false) => ErrorBody::new(
                        ErrorCode::UnknownOp,
                        format!(
                            "unknown op {op:?}; known ops: {}",
                            Request::NAMES.join(", ")
                        ),
                    ),
                    _ => ErrorBody::bad_request(format!("malformed request: {e}")),
                };
                return self.reply_error(head, body).await;
            }
        };
        let head = FrameHead {
            id: Some(frame.id),
            op: Some(frame.request.name().to_owned()),
        };
        let now = Instant::now();
        if let Err(wait) = self.requests.take(now) {
            return self.reply_error(head, rate_limited(wait, "requests")).await;
        }
        self.dispatch(frame, head).await
    }

    fn head(&self, bytes: &[u8]) -> FrameHead {
        self.codec.decode(bytes).unwrap_or_default()
    }

    async fn dispatch(&mut self, frame: ClientFrame, head: FrameHead) -> Result<(), Ending> {
        let id = frame.id;
        let Some(login) = &self.login else {
            return match frame.request {
                Request::Login(request) => self.login(id, request).await,
                _ => {
                    let body = ErrorBody::new(ErrorCode::Unauthenticated, "log in first");
                    self.reply_error(head, body).await
                }
            };
        };
        let origin = Origin {
            user: login.user.clone(),
            session: Some(login.session),
            send_order: Some(self.send_order.clone()),
        };
        let response = match frame.request {
            Request::Login(_) => {
                let body = ErrorBody::new(
                    ErrorCode::InvalidState,
                    "this connection is already logged in",
                );
                return self.reply_error(head, body).await;
            }
            Request::Ping(_) => Response::Ping(Pong {
                server_time: now_ms(),
            }),
            Request::ListDevices(_) => Response::ListDevices(DeviceList {
                devices: self.app.cluster.devices(&origin.user),
            }),
            Request::Logout(_) => {
                let frame = ServerFrame::Response {
                    id,
                    response: Response::Logout(Empty),
                };
                let _ = self.write(&frame).await;
                return Err(Some((close::LOGGED_OUT, "logged out")));
            }
            Request::RenewToken(request) => {
                match self.app.authenticate(&origin.user, &request.token).await {
                    Ok(claims) => {
                        if let Some(login) = &mut self.login {
                            login.token_expires_at = claims.expires_at_ms();
                            login.warned = false;
                        }
                        self.token_changed = true;
                        Response::RenewToken(TokenInfo {
                            expires_at: claims.expires_at_ms(),
                        })
                    }
                    Err(e) => return self.reply_error(head, e.to_body()).await,
                }
            }
            Request::Send(request) => {
                if let Err(wait) = self.sends.take(Instant::now()) {
                    return self.reply_error(head, rate_limited(wait, "messages")).await;
                }
                // Called here, in arrival order: the store queues the append now.
                let sending = self.app.send_message(&origin, request);
                self.queue(id, "send", async move { sending.await.map(Response::Send) });
                return Ok(());
            }
            Request::Sync(request) => {
                let app = self.app.clone();
                self.queue(id, "sync", async move {
                    app.sync(&origin.user, request).await.map(Response::Sync)
                });
                return Ok(());
            }
            Request::GetMessages(request) => {
                let app = self.app.clone();
                self.queue(id, "get_messages", async move {
                    app.get_messages(&origin.user, request)
                        .await
                        .map(Response::GetMessages)
                });
                return Ok(());
            }
            Request::MarkRead(request) => {
                let app = self.app.clone();
                self.queue(id, "mark_read", async move {
                    app.mark_read(&origin, request)
                        .await
                        .map(Response::MarkRead)
                });
                return Ok(());
            }
            group => {
                let (app, op) = (self.app.clone(), group.name());
                self.queue(id, op, async move {
                    app.group_request(&origin.user, group)
                        .await
                        .unwrap_or_else(|| {
                            Err(Error::new(
                                ErrorCode::UnknownOp,
                                format!("{op} is not available here"),
                            ))
                        })
                });
                return Ok(());
            }
        };
        self.write(&ServerFrame::Response { id, response })
            .await
            .map_err(|_| None)
    }

    /// Runs a request concurrently with the loop; its answer is written in arrival order.
    fn queue(
        &mut self,
        id: u64,
        op: &'static str,
        work: impl Future<Output = Result<Response, Error>> + Send + 'static,
    ) {
        let metrics = self.app.metrics.clone();
        self.in_flight.push_back(Box::pin(async move {
            match work.await {
                Ok(response) => ServerFrame::Response { id, response },
                Err(e) => {
                    let error = e.to_body();
                    metrics.error(error.code);
                    ServerFrame::Error {
                        id: Some(id),
                        op: Some(op.to_owned()),
                        error,
                    }
                }
            }
        }));
    }

    async fn login(&mut self, id: u64, request: LoginRequest) -> Result<(), Ending> {
        let head = FrameHead {
            id: Some(id),
            op: Some("login".into()),
        };
        let claims = match self
            .app
            .authenticate(&request.user_id, &request.token)
            .await
        {
            Ok(claims) => claims,
            Err(e) => {
                Metrics::add(&self.app.metrics.login_failures, 1);
                return self.reply_error(head, e.to_body()).await;
            }
        };
        let inbox = Inbox::new(self.app.config.gateway.outbound_queue);
        let session = self.app.sessions.next_session_id();
        let now = now_ms();
        let kicked = self
            .app
            .cluster
            .attach(
                &request.user_id,
                DeviceEntry {
                    session,
                    device_id: request.device_id.clone(),
                    platform: request.platform,
                    connected_at: now,
                    inbox: inbox.clone(),
                },
            )
            .await;
        Metrics::add(&self.app.metrics.kicks, kicked as u64);
        Metrics::add(&self.app.metrics.logins, 1);
        tracing::debug!(user = %request.user_id, device = %request.device_id, platform = ?request.platform, "login");
        self.login = Some(LoggedIn {
            user: request.user_id.clone(),
            session,
            token_expires_at: claims.expires_at_ms(),
            warned: false,
        });
        self.inbox = Some(inbox);
        self.token_changed = true;
        let gateway = &self.app.config.gateway;
        let response = Response::Login(LoginResponse {
            user_id: request.user_id,
            device_id: request.device_id,
            server_time: now,
            token_expires_at: claims.expires_at_ms(),
            heartbeat_interval_ms: gateway.heartbeat_interval_ms,
            idle_timeout_ms: gateway.idle_timeout_ms,
            max_frame_bytes: gateway.max_frame_bytes as u64,
            max_message_bytes: self.app.config.limits.max_message_bytes as u64,
        });
        self.write(&ServerFrame::Response { id, response })
            .await
            .map_err(|_| None)
    }

    async fn reply_error(&mut self, head: FrameHead, error: ErrorBody) -> Result<(), Ending> {
        self.app.metrics.error(error.code);
        let frame = ServerFrame::Error {
            id: head.id,
            op: head.op,
            error,
        };
        self.write(&frame).await.map_err(|_| None)
    }

    async fn write(&mut self, frame: &ServerFrame) -> Result<(), axum::Error> {
        match encode_frame(self.codec, frame) {
            Some(bytes) => self.write_bytes(bytes).await,
            None => Ok(()),
        }
    }

    async fn write_bytes(&mut self, bytes: Bytes) -> Result<(), axum::Error> {
        match ws_message(self.codec, bytes) {
            Some(message) => self.send(message).await,
            None => Ok(()),
        }
    }

    /// Writes `first` and whatever else is ready behind it — answers to finished requests, in
    /// their order, and queued events — with a single flush, so a busy device costs one socket
    /// write per batch rather than one per frame. Sends finish in batches (one store commit
    /// answers many), so their answers usually come several at a time. Bounded like every
    /// write.
    async fn write_ready(&mut self, first: Option<Bytes>) -> Result<(), axum::Error> {
        let idle_timeout = self.app.config.idle_timeout();
        let codec = self.codec;
        let (socket, in_flight, inbox) = (&mut self.socket, &mut self.in_flight, &self.inbox);
        let batch = async move {
            // `None` stands for a frame that could not be encoded (logged): skipped.
            let mut next = Some(first);
            let mut queued = 0;
            while let Some(encoded) = next.take() {
                if let Some(message) = encoded.and_then(|bytes| ws_message(codec, bytes)) {
                    socket.feed(message).await?;
                }
                queued += 1;
                if queued < MAX_WRITE_BATCH {
                    // Polling without waiting is safe: the session loop polls `in_flight`
                    // again before it sleeps, which registers its own waker.
                    next = match in_flight.next().now_or_never() {
                        Some(Some(answer)) => Some(encode_frame(codec, &answer)),
                        _ => inbox
                            .as_ref()
                            .and_then(|inbox| inbox.try_next_event())
                            .map(|event| Some(event.encoded(codec))),
                    };
                }
            }
            socket.flush().await
        };
        match tokio::time::timeout(idle_timeout, batch).await {
            Ok(written) => written,
            Err(_) => {
                Metrics::add(&self.app.metrics.slow_consumers, 1);
                Err(axum::Error::new("the peer stopped reading"))
            }
        }
    }

    /// Sends one WebSocket message. A peer that stops reading fills its socket buffers and
    /// would park this task on the write forever, out of reach of the idle timeout, kicks and
    /// shutdown: a write that cannot finish within the idle timeout ends the session.
    async fn send(&mut self, message: WsMessage) -> Result<(), axum::Error> {
        let idle_timeout = self.app.config.idle_timeout();
        match tokio::time::timeout(idle_timeout, self.socket.send(message)).await {
            Ok(sent) => sent,
            Err(_) => {
                Metrics::add(&self.app.metrics.slow_consumers, 1);
                Err(axum::Error::new("the peer stopped reading"))
            }
        }
    }
}

/// Frames written before one flush.
const MAX_WRITE_BATCH: usize = 64;

/// A frame's bytes as the WebSocket message its codec uses.
fn ws_message(codec: Codec, bytes: Bytes) -> Option<WsMessage> {
    if codec.is_text() {
        // Our own JSON is always UTF-8; a failure here would be a bug, and dropping the frame
        // beats sending garbage.
        Utf8Bytes::try_from(bytes).ok().map(WsMessage::Text)
    } else {
        Some(WsMessage::Binary(bytes))
    }
}

fn rate_limited(wait: Duration, what: &str) -> ErrorBody {
    let mut body = ErrorBody::new(
        ErrorCode::RateLimited,
        format!("too many {what}; slow down"),
    );
    body.retry_after_ms = Some(wait.as_millis().max(1) as u64);
    body
}

/// RFC 6455 close code: the peer broke the WebSocket protocol.
const PROTOCOL_ERROR: u16 = 1002;
/// RFC 6455 close code: a text frame was not valid UTF-8.
const INVALID_PAYLOAD: u16 = 1007;

/// Maps a read error to how the connection ends: a frame beyond the hard limit gets 1009, a
/// WebSocket protocol violation 1002 (1007 for a text frame that is not UTF-8), so the client
/// learns why; anything else means the peer is gone.
fn read_error_ending(error: axum::Error) -> Ending {
    let inner = error.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => {
            Some((close::TOO_BIG, "frame exceeds the hard size limit"))
        }
        Some(tungstenite::Error::Utf8(_)) => {
            Some((INVALID_PAYLOAD, "text frame is not valid UTF-8"))
        }
        Some(tungstenite::Error::Protocol(_)) => {
            Some((PROTOCOL_ERROR, "WebSocket protocol violation"))
        }
        _ => None,
    }
}
