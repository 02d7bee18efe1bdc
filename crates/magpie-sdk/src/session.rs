//! One logged-in user's runtime.
//!
//! Owns the connect → login → sync → serve → reconnect loop (one task per session; which
//! server each attempt dials and how long it waits first is the `rotation`'s decision), the
//! handling of server events, and the delivery pipeline: every stored message, whatever its
//! source (push, send answer, catch-up page), goes through [`Session::ingest`] or a catch-up,
//! which consult the `sequencer`, persist the delivered messages together with the new cursor,
//! and only then emit them. One async lock (`delivery`) spans "decide, persist, emit", so the
//! app sees messages in the order the sequencer released them even when several tasks deliver
//! concurrently.
//!
//! It must not talk to the socket directly (that is `connection`), nor encode SQL (`store`),
//! nor hold ordering rules of its own (`sequencer`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use magpie_proto::frame::{
    DeviceList, Direction, GetMessagesRequest, KickReason, LoginRequest, LoginResponse,
    MarkReadRequest, MessagesPage, SendRequest, close,
};
use magpie_proto::message::MAX_MENTIONS;
use magpie_proto::{
    ConversationId, ConversationKind, DeviceId, ErrorCode, Event, Mentions, Message,
    MessageContent, Peer, UserId,
};

use crate::config::ClientConfig;
use crate::connection::{CloseInfo, Connection};
use crate::error::{Error, ErrorKind, Result};
use crate::events::{ClientEvent, ConnectionState, DisconnectReason, EventHub};
use crate::model::{Conversation, HistoryAnchor, HistoryQuery, MessageStatus};
use crate::outbox::{self, Outbox};
use crate::rotation::{Attempt, Rotation};
use crate::sequencer::{FetchPlan, Offer, Sequencer};
use crate::store::{self, Delivered, DeliveryBatch, Prior, Requeue, Store};

/// Commands from the app-facing handles to the session loop.
#[derive(Debug)]
enum Control {
    /// Reconnect now: resume after a halt, skip a backoff wait, or replace the connection.
    Reconnect,
    /// Log out, then end the loop.
    Logout(oneshot::Sender<()>),
    /// The client was dropped: end the loop.
    Shutdown,
}

/// Why the loop stopped reconnecting on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Halt {
    Kicked,
    TokenExpired,
    LoginFailed,
}

/// What the loop does after one connection attempt.
enum Next {
    Retry { up_for: Duration },
    RetryNow,
    Halt,
    Exit,
}

/// What the server said on one connection before it closed.
#[derive(Default)]
struct Notes {
    kicked: bool,
    token_expired: bool,
    reconnect_requested: bool,
}

pub(crate) struct Session {
    me: UserId,
    device_id: DeviceId,
    config: Arc<ClientConfig>,
    pub(crate) store: Store,
    events: EventHub,
    sequencer: Mutex<Sequencer>,
    /// Held while deciding, persisting and emitting a delivery, so emission order is the
    /// sequencer's order.
    delivery: tokio::sync::Mutex<()>,
    /// Signalled whenever a catch-up fetch ends, for catch-ups waiting on another's fetch.
    fetch_done: Notify,
    current: Mutex<Option<Connection>>,
    token: Mutex<String>,
    /// Bumped by each `renew_token`, so a close for an expired token that races a renewal
    /// does not halt the loop.
    token_generation: AtomicU64,
    halted: Mutex<Option<Halt>>,
    pub(crate) outbox: Outbox,
    control: mpsc::UnboundedSender<Control>,
    state: watch::Sender<ConnectionState>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few assignments with no await and no partial state
    // on panic, so a poisoned lock is still consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Login errors that retrying with the same token cannot fix.
fn is_fatal_login_error(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unauthenticated
            | ErrorCode::TokenInvalid
            | ErrorCode::TokenExpired
            | ErrorCode::TokenRevoked
            | ErrorCode::Forbidden
            | ErrorCode::UserNotFound
            | ErrorCode::BadRequest
    )
}

impl Session {
    /// Opens the user's database, starts the session loop and waits for the first login.
    pub(crate) async fn start(
        config: Arc<ClientConfig>,
        events: EventHub,
        me: UserId,
        token: String,
        device_id: DeviceId,
    ) -> Result<(Arc<Self>, LoginResponse)> {
        let store = Store::open(store::db_path(&config.data_dir, &me), me.clone()).await?;
        let cursors = store.call(|db| db.cursors()).await?;
        let mut sequencer = Sequencer::new(config.initial_messages_per_conversation);
        for (conversation, cursor) in cursors {
            sequencer.restore(conversation, cursor);
        }
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let session = Arc::new(Self {
            me,
            device_id,
            config,
            store,
            events,
            sequencer: Mutex::new(sequencer),
            delivery: tokio::sync::Mutex::new(()),
            fetch_done: Notify::new(),
            current: Mutex::new(None),
            token: Mutex::new(token),
            token_generation: AtomicU64::new(0),
            halted: Mutex::new(None),
            outbox: Outbox::default(),
            control: control_tx,
            state: watch::Sender::new(ConnectionState::Disconnected {
                reason: DisconnectReason::NotConnected,
            }),
        });
        let (first_tx, first_rx) = oneshot::channel();
        tokio::spawn(Box::pin(Arc::clone(&session).run(control_rx, first_tx)));
        match first_rx.await {
            Ok(Ok(info)) => Ok((session, info)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::new(
                ErrorKind::Closed,
                "the session ended during login",
            )),
        }
    }

    pub(crate) fn user_id(&self) -> &UserId {
        &self.me
    }

    pub(crate) fn connection_state(&self) -> ConnectionState {
        self.state.borrow().clone()
    }

    /// The endpoint of the logged-in connection, if there is one.
    pub(crate) fn current_server(&self) -> Option<String> {
        lock(&self.current).as_ref().map(|c| c.url().to_owned())
    }

    fn sequencer(&self) -> MutexGuard<'_, Sequencer> {
        lock(&self.sequencer)
    }

    /// Runs `f` under the sequencer lock (which must not be held across an await).
    pub(crate) fn with_sequencer<R>(&self, f: impl FnOnce(&mut Sequencer) -> R) -> R {
        f(&mut self.sequencer())
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.config
    }

    pub(crate) fn emit_event(&self, event: ClientEvent) {
        self.emit(event);
    }

    fn emit(&self, event: ClientEvent) {
        self.events.emit(event);
    }

    fn set_state(&self, state: ConnectionState) {
        self.state.send_replace(state.clone());
        self.emit(ClientEvent::ConnectionStateChanged(state));
    }

    fn set_halt(&self, halt: Option<Halt>) {
        *lock(&self.halted) = halt;
    }

    /// The live connection, or the error that explains why there is none.
    pub(crate) fn connection(&self) -> Result<Connection> {
        if let Some(conn) = lock(&self.current).clone() {
            return Ok(conn);
        }
        Err(match *lock(&self.halted) {
            Some(Halt::Kicked) => Error::new(ErrorKind::Kicked, "this device was kicked"),
            Some(Halt::TokenExpired) => Error::new(
                ErrorKind::TokenExpired,
                "the token expired; call renew_token",
            ),
            Some(Halt::LoginFailed) => Error::disconnected("the last login was refused"),
            None => Error::disconnected("not connected to the server"),
        })
    }

    fn login_request(&self) -> LoginRequest {
        LoginRequest {
            user_id: self.me.clone(),
            token: lock(&self.token).clone(),
            device_id: self.device_id.clone(),
            platform: self.config.platform,
            client_version: Some(self.config.client_version.clone()),
        }
    }

    // ---------------------------------------------------------------------------------------
    // The connection loop
    // ---------------------------------------------------------------------------------------

    async fn run(
        self: Arc<Self>,
        mut control: mpsc::UnboundedReceiver<Control>,
        first: oneshot::Sender<Result<LoginResponse>>,
    ) {
        let mut servers = Rotation::new(
            &self.config.ws_urls,
            self.config.server_order,
            self.config.reconnect.clone(),
        );
        let mut first = Some(first);
        let mut halted = false;
        loop {
            if halted {
                match control.recv().await {
                    Some(Control::Reconnect) => {
                        halted = false;
                        servers.reset_backoff();
                        self.set_halt(None);
                    }
                    Some(Control::Logout(done)) => {
                        self.finish_logout();
                        let _ = done.send(());
                        return;
                    }
                    Some(Control::Shutdown) | None => return,
                }
            }
            let attempt = servers.next_attempt();
            if !attempt.delay.is_zero() {
                tracing::debug!(delay = ?attempt.delay, url = %attempt.url, "reconnecting after a pause");
                tokio::select! {
                    () = tokio::time::sleep(attempt.delay) => {}
                    command = control.recv() => match command {
                        Some(Control::Reconnect) => servers.reset_backoff(),
                        Some(Control::Logout(done)) => {
                            self.finish_logout();
                            let _ = done.send(());
                            return;
                        }
                        Some(Control::Shutdown) | None => return,
                    }
                }
            }
            let next =
                Box::pin(self.connect_once(&mut control, &mut first, &attempt, &mut servers));
            match next.await {
                Next::Retry { up_for } => {
                    if up_for >= self.config.reconnect.reset_after {
                        servers.reset_backoff();
                    }
                }
                Next::RetryNow => servers.reset_backoff(),
                Next::Halt => halted = true,
                Next::Exit => return,
            }
        }
    }

    /// One connection: open, log in, serve until it closes, and decide what comes next.
    ///
    /// The first login (`first` is set) fails only once every server has been tried (the
    /// attempt `ends_round`) or a server refused the login for good; the error is the last
    /// server's.
    async fn connect_once(
        self: &Arc<Self>,
        control: &mut mpsc::UnboundedReceiver<Control>,
        first: &mut Option<oneshot::Sender<Result<LoginResponse>>>,
        attempt: &Attempt,
        servers: &mut Rotation,
    ) -> Next {
        self.set_state(ConnectionState::Connecting);
        let config = &self.config;
        let url = attempt.url.as_str();
        let opened = Connection::open(
            url,
            config.codec,
            config.connect_timeout,
            config.request_timeout,
        )
        .await;
        let (conn, mut inbound) = match opened {
            Ok(pair) => pair,
            Err(e) => {
                tracing::info!(%url, error = %e, "cannot connect");
                self.set_state(ConnectionState::Disconnected {
                    reason: DisconnectReason::Network(e.to_string()),
                });
                if attempt.ends_round
                    && let Some(first) = first.take()
                {
                    let _ = first.send(Err(e));
                    return Next::Exit;
                }
                return Next::Retry {
                    up_for: Duration::ZERO,
                };
            }
        };

        let generation = self.token_generation.load(Ordering::SeqCst);
        let info = match conn.login(self.login_request()).await {
            Ok(info) => info,
            Err(e) => {
                conn.close("login failed");
                let fatal = e.code().is_some_and(is_fatal_login_error);
                let reason = match e.code() {
                    Some(code) if fatal => DisconnectReason::LoginFailed(code),
                    _ => DisconnectReason::Network(e.to_string()),
                };
                tracing::info!(%url, error = %e, fatal, "login failed");
                // Every node checks tokens alike: a refusal for good is final on all of them.
                if (fatal || attempt.ends_round)
                    && let Some(first) = first.take()
                {
                    self.set_state(ConnectionState::Disconnected { reason });
                    let _ = first.send(Err(e));
                    return Next::Exit;
                }
                if !fatal {
                    self.set_state(ConnectionState::Disconnected { reason });
                    return Next::Retry {
                        up_for: Duration::ZERO,
                    };
                }
                if self.token_generation.load(Ordering::SeqCst) != generation {
                    // A new token arrived while this login was in flight: try it.
                    return Next::RetryNow;
                }
                self.report_refused_login(&e);
                return Next::Halt;
            }
        };

        conn.set_timing(info.heartbeat_interval_ms, info.idle_timeout_ms);
        servers.logged_in();
        tracing::info!(%url, "logged in");
        *lock(&self.current) = Some(conn.clone());
        self.set_halt(None);
        let connected_at = Instant::now();
        self.set_state(ConnectionState::Connected);
        if let Some(first) = first.take()
            && first.send(Ok(info)).is_err()
        {
            // Nobody waits for this login any more (the login future was dropped).
            *lock(&self.current) = None;
            conn.close("login abandoned");
            return Next::Exit;
        }
        tokio::spawn(Box::pin(Arc::clone(self).after_login(conn.clone())));

        let mut notes = Notes::default();
        let mut leaving: Option<Option<oneshot::Sender<()>>> = None;
        loop {
            tokio::select! {
                event = inbound.recv() => match event {
                    Some(event) => self.handle_event(&conn, event, &mut notes).await,
                    None => break,
                },
                command = control.recv(), if leaving.is_none() => match command {
                    Some(Control::Reconnect) => {
                        notes.reconnect_requested = true;
                        conn.close("reconnect requested");
                    }
                    Some(Control::Logout(done)) => {
                        if let Err(e) = conn.logout().await {
                            tracing::debug!(error = %e, "logout request failed; closing anyway");
                        }
                        conn.close("logged out");
                        leaving = Some(Some(done));
                    }
                    Some(Control::Shutdown) | None => {
                        conn.close("client closed");
                        leaving = Some(None);
                    }
                },
            }
        }
        *lock(&self.current) = None;
        let closed = conn.closed().await;
        tracing::info!(%url, ?closed, "disconnected");

        if let Some(done) = leaving {
            self.finish_logout();
            if let Some(done) = done {
                let _ = done.send(());
            }
            return Next::Exit;
        }
        if notes.reconnect_requested {
            self.set_state(ConnectionState::Disconnected {
                reason: DisconnectReason::Network("reconnect requested".into()),
            });
            return Next::RetryNow;
        }
        let code = match &closed {
            CloseInfo::Server { code, .. } => Some(*code),
            _ => None,
        };
        if notes.kicked || code == Some(close::KICKED) {
            if !notes.kicked {
                let message = match &closed {
                    CloseInfo::Server { reason, .. } => reason.clone(),
                    _ => String::new(),
                };
                self.emit(ClientEvent::Kicked {
                    reason: None,
                    message,
                });
            }
            self.set_halt(Some(Halt::Kicked));
            self.set_state(ConnectionState::Disconnected {
                reason: DisconnectReason::Kicked,
            });
            return Next::Halt;
        }
        if notes.token_expired || code == Some(close::TOKEN_EXPIRED) {
            if self.token_generation.load(Ordering::SeqCst) != generation {
                self.set_state(ConnectionState::Disconnected {
                    reason: DisconnectReason::TokenExpired,
                });
                return Next::RetryNow;
            }
            if !notes.token_expired {
                self.emit(ClientEvent::TokenExpired);
            }
            self.set_halt(Some(Halt::TokenExpired));
            self.set_state(ConnectionState::Disconnected {
                reason: DisconnectReason::TokenExpired,
            });
            return Next::Halt;
        }
        let reason = match closed {
            CloseInfo::Server { code, .. } if code == close::LOGGED_OUT => {
                // Logged out by someone else on this connection's behalf: nothing to resume.
                self.set_state(ConnectionState::Disconnected {
                    reason: DisconnectReason::LoggedOut,
                });
                return Next::Halt;
            }
            CloseInfo::Server { code, reason } => DisconnectReason::ServerClosed { code, reason },
            CloseInfo::IdleTimeout => DisconnectReason::IdleTimeout,
            CloseInfo::Network(e) | CloseInfo::Local(e) => DisconnectReason::Network(e),
        };
        self.set_state(ConnectionState::Disconnected { reason });
        Next::Retry {
            up_for: connected_at.elapsed(),
        }
    }

    /// A reconnect's login was refused for good: tell the app in the most specific terms.
    fn report_refused_login(&self, error: &Error) {
        let code = error.code().unwrap_or(ErrorCode::Unknown(0));
        let (halt, reason) = match code {
            ErrorCode::TokenExpired => {
                self.emit(ClientEvent::TokenExpired);
                (Halt::TokenExpired, DisconnectReason::TokenExpired)
            }
            ErrorCode::TokenRevoked | ErrorCode::UserNotFound => {
                let reason = if code == ErrorCode::TokenRevoked {
                    KickReason::TokensRevoked
                } else {
                    KickReason::UserDeleted
                };
                self.emit(ClientEvent::Kicked {
                    reason: Some(reason),
                    message: error.message().to_owned(),
                });
                (Halt::Kicked, DisconnectReason::Kicked)
            }
            _ => {
                if let Some(body) = error.server_error() {
                    self.emit(ClientEvent::LoginFailed {
                        error: body.clone(),
                    });
                }
                (Halt::LoginFailed, DisconnectReason::LoginFailed(code))
            }
        };
        self.set_halt(Some(halt));
        self.set_state(ConnectionState::Disconnected { reason });
    }

    fn finish_logout(&self) {
        *lock(&self.current) = None;
        self.outbox.close_all(&Error::new(
            ErrorKind::Closed,
            "logged out; the message stays queued for the next login",
        ));
        self.set_state(ConnectionState::Disconnected {
            reason: DisconnectReason::LoggedOut,
        });
    }

    /// Runs once per successful login: catch up, then send what waited.
    async fn after_login(self: Arc<Self>, conn: Connection) {
        self.emit(ClientEvent::SyncStarted);
        if let Err(e) = crate::sync::run(&self, &conn).await {
            if !conn.is_closed() {
                tracing::warn!(error = %e, "sync failed; reconnecting");
                conn.close(format!("sync failed: {e}"));
            }
            return;
        }
        self.refresh_groups(&conn).await;
        self.emit(ClientEvent::SyncFinished);
        self.flush_pending_reads(&conn).await;
        outbox::flush(&self, &conn).await;
    }

    /// Re-reads the joined groups into the cache (group events missed while offline are not
    /// kept by the server). A failure is logged: the cache then stays as it was until the next
    /// login, and the chat keeps working.
    async fn refresh_groups(&self, conn: &Connection) {
        match crate::groups::refresh(self, conn).await {
            Ok(()) => {}
            Err(e) if crate::groups::unsupported(&e) => {
                tracing::debug!("the server has no groups");
            }
            Err(e) => tracing::warn!(error = %e, "cannot refresh the joined groups"),
        }
    }

    async fn handle_event(self: &Arc<Self>, conn: &Connection, event: Event, notes: &mut Notes) {
        match event {
            Event::Message(message) => self.ingest(conn, vec![message]).await,
            Event::ConversationRead(read) => {
                let id = read.conversation_id.clone();
                let read_seq = read.read_seq;
                match self
                    .store
                    .call(move |db| db.apply_read(&id, read_seq))
                    .await
                {
                    Ok(conversation) => {
                        self.emit(ClientEvent::ReadStateSynced {
                            conversation_id: read.conversation_id,
                            read_seq,
                        });
                        if let Some(conversation) = conversation {
                            self.emit(ClientEvent::ConversationUpdated(conversation));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot record a read state"),
                }
            }
            Event::TokenWillExpire(info) => self.emit(ClientEvent::TokenWillExpire {
                expires_at: info.expires_at,
            }),
            Event::TokenExpired(_) => {
                notes.token_expired = true;
                self.emit(ClientEvent::TokenExpired);
            }
            Event::Kicked(kicked) => {
                notes.kicked = true;
                self.emit(ClientEvent::Kicked {
                    reason: Some(kicked.reason),
                    message: kicked.message,
                });
            }
            Event::Group(event) => crate::groups::on_event(self, conn, event).await,
            Event::GroupRead(event) => self.emit(ClientEvent::GroupRead(event)),
            Event::SyncRequired(_) => {
                // Pushes may have been lost on the server's side; catch up as after a login.
                // A sync racing another one only repeats work: versions and seqs are idempotent.
                let (session, conn) = (self.clone(), conn.clone());
                tokio::spawn(async move {
                    if let Err(e) = crate::sync::run(&session, &conn).await {
                        tracing::warn!(error = %e, "resync after sync_required failed");
                    }
                    session.refresh_groups(&conn).await;
                });
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Delivery
    // ---------------------------------------------------------------------------------------

    /// Feeds pushed or answered messages through the sequencer, persists and emits what it
    /// releases, and starts catch-ups for gaps.
    pub(crate) async fn ingest(self: &Arc<Self>, conn: &Connection, messages: Vec<Message>) {
        let order = self.delivery.lock().await;
        let mut batches: Vec<DeliveryBatch> = Vec::new();
        let mut gaps: Vec<ConversationId> = Vec::new();
        {
            let mut sequencer = self.sequencer();
            for message in messages {
                let conversation_id = message.conversation_id.clone();
                match sequencer.offer(message) {
                    Offer::Transient(message) => {
                        self.emit(ClientEvent::MessageReceived(*message));
                    }
                    Offer::Duplicate => {}
                    Offer::Accepted {
                        deliver,
                        start_fetch,
                    } => {
                        if let Some(last) = deliver.last() {
                            let cursor = last.seq;
                            match batches
                                .iter_mut()
                                .find(|b| b.conversation_id == conversation_id)
                            {
                                Some(batch) => {
                                    batch.cursor = cursor;
                                    batch.messages.extend(deliver);
                                }
                                None => batches.push(DeliveryBatch::new(
                                    conversation_id.clone(),
                                    deliver,
                                    cursor,
                                )),
                            }
                        }
                        if start_fetch && !gaps.contains(&conversation_id) {
                            gaps.push(conversation_id);
                        }
                    }
                }
            }
        }
        self.commit(batches).await;
        drop(order);
        for conversation_id in gaps {
            let session = Arc::clone(self);
            let conn = conn.clone();
            tokio::spawn(async move {
                if let Err(e) = session.catch_up(&conn, &conversation_id).await {
                    tracing::debug!(%conversation_id, error = %e, "gap fetch failed; the next sync retries");
                }
            });
        }
    }

    /// Persists released messages with their cursors and emits them. Callers hold the
    /// delivery lock.
    async fn commit(&self, batches: Vec<DeliveryBatch>) {
        if batches.is_empty() {
            return;
        }
        let rewind: Vec<(ConversationId, u64)> = batches
            .iter()
            .filter_map(|b| Some((b.conversation_id.clone(), b.messages.first()?.seq - 1)))
            .collect();
        match self.store.call(move |db| db.apply_delivery(batches)).await {
            Ok(delivered) => {
                for d in delivered {
                    self.announce(d);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store delivered messages; they will be fetched again");
                let mut sequencer = self.sequencer();
                for (conversation_id, cursor) in rewind {
                    sequencer.rewind(&conversation_id, cursor);
                }
            }
        }
    }

    fn announce(&self, delivered: Delivered) {
        for (message, prior) in delivered.messages {
            match prior {
                Prior::New => self.emit(ClientEvent::MessageReceived(message)),
                Prior::LocalPending => {
                    self.emit(ClientEvent::MessageStatusChanged {
                        conversation_id: message.conversation_id.clone(),
                        client_msg_id: message.client_msg_id.clone(),
                        status: MessageStatus::Sent,
                        message: Some(message.clone()),
                        error: None,
                    });
                    let client_msg_id = message.client_msg_id.clone();
                    self.outbox.resolve(&client_msg_id, Ok(message));
                }
                Prior::Known => {}
            }
        }
        self.emit(ClientEvent::ConversationUpdated(delivered.conversation));
    }

    /// Fetches a conversation forward from its cursor until nothing known is missing. Waits
    /// instead when another task is already fetching it.
    pub(crate) async fn catch_up(
        self: &Arc<Self>,
        conn: &Connection,
        conversation_id: &ConversationId,
    ) -> Result<()> {
        loop {
            let notified = self.fetch_done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // A separate statement, so the lock guard is gone before any await below.
            let plan = self.sequencer().begin_fetch(conversation_id);
            let after = match plan {
                FetchPlan::UpToDate => return Ok(()),
                FetchPlan::InFlight => {
                    notified.await;
                    continue;
                }
                FetchPlan::Fetch { after } => after,
            };
            let mut guard = FetchGuard {
                session: self,
                conversation_id,
                armed: true,
            };
            let page = conn
                .get_messages(GetMessagesRequest {
                    conversation_id: conversation_id.clone(),
                    direction: Direction::Forward,
                    seq: Some(after),
                    time: None,
                    limit: Some(self.config.history_page_size),
                })
                .await?;
            {
                let _order = self.delivery.lock().await;
                let fetched = {
                    guard.armed = false;
                    self.sequencer()
                        .finish_fetch(conversation_id, page.messages)
                };
                // In a group, the server shows a member nothing before their join point: a gap
                // there is expected, and what it covers is not unread.
                let group = conversation_id.kind() == ConversationKind::Group;
                let mut read_floor = 0;
                if let Some((first, last)) = fetched.skipped {
                    if group {
                        tracing::debug!(%conversation_id, first, last, "not visible to this member; skipping it");
                        read_floor = last;
                    } else {
                        tracing::warn!(%conversation_id, first, last, "the server has no messages for a gap; skipping it");
                    }
                }
                let cursor = match (fetched.deliver.last(), fetched.skipped) {
                    (Some(last), _) => Some(last.seq),
                    (None, Some((first, _))) if read_floor > 0 => Some(first - 1),
                    (None, _) => None,
                };
                if let Some(cursor) = cursor {
                    self.commit(vec![DeliveryBatch {
                        read_floor,
                        ..DeliveryBatch::new(conversation_id.clone(), fetched.deliver, cursor)
                    }])
                    .await;
                }
            }
            drop(guard);
            self.fetch_done.notify_waiters();
        }
    }

    // ---------------------------------------------------------------------------------------
    // Sends
    // ---------------------------------------------------------------------------------------

    pub(crate) async fn send(
        self: &Arc<Self>,
        to: Peer,
        content: MessageContent,
        ext: Option<Map<String, Value>>,
        mentions: Option<Mentions>,
    ) -> Result<Message> {
        content.validate()?;
        if matches!(content, MessageContent::GroupNotice(_)) {
            return Err(Error::invalid_input(
                "group_notice messages are written by the server only",
            ));
        }
        let mentions = mentions.filter(|m| !m.is_empty());
        match &to {
            Peer::User(user) if *user == self.me => {
                return Err(Error::invalid_input("cannot send a message to yourself"));
            }
            Peer::User(_) if mentions.is_some() => {
                return Err(Error::invalid_input("mentions are for group messages only"));
            }
            _ => {}
        }
        if mentions
            .as_ref()
            .is_some_and(|m| m.user_ids.len() > MAX_MENTIONS)
        {
            return Err(Error::invalid_input(format!(
                "a message may mention at most {MAX_MENTIONS} users by id"
            )));
        }
        let conversation_id = to.conversation_id(&self.me);
        let request = SendRequest {
            to,
            // Time-ordered ids keep the server's dedupe index appending at each sender's end
            // instead of writing to a random page for every message.
            client_msg_id: uuid::Uuid::now_v7().to_string(),
            content,
            ext,
            mentions,
        };
        if !request.content.is_stored() {
            // Commands are transient on the server too: never queued, so they need a live
            // connection, and they are not stored locally.
            let answer = self.connection()?.send(request).await?;
            return Ok(answer.message);
        }
        let client_msg_id = request.client_msg_id.clone();
        let answer = self.outbox.wait_for(&client_msg_id);
        {
            // Under the delivery lock, so that a flusher that picks the row up at once cannot
            // report `sent` or `failed` before this reports `sending`.
            let _order = self.delivery.lock().await;
            let queued = {
                let conversation_id = conversation_id.clone();
                self.store
                    .call(move |db| {
                        db.insert_pending_send(&conversation_id, &request, store::now_millis())
                    })
                    .await
            };
            if let Err(e) = queued {
                self.outbox.resolve(&client_msg_id, Err(e.clone()));
                return Err(e);
            }
            self.emit(ClientEvent::MessageStatusChanged {
                conversation_id,
                client_msg_id,
                status: MessageStatus::Sending,
                message: None,
                error: None,
            });
        }
        self.outbox.notify();
        wait_for_answer(answer).await
    }

    pub(crate) async fn resend(self: &Arc<Self>, client_msg_id: &str) -> Result<Message> {
        let answer = self.outbox.wait_for(client_msg_id);
        let id = client_msg_id.to_owned();
        let order = self.delivery.lock().await;
        let requeued = self.store.call(move |db| db.requeue(&id)).await;
        match requeued {
            Ok(Requeue::Queued(local)) => {
                self.emit(ClientEvent::MessageStatusChanged {
                    conversation_id: local.conversation_id,
                    client_msg_id: local.client_msg_id,
                    status: MessageStatus::Sending,
                    message: None,
                    error: None,
                });
                self.outbox.notify();
            }
            Ok(Requeue::Pending) => {}
            Ok(Requeue::AlreadySent(message)) => {
                self.outbox.resolve(client_msg_id, Ok(message));
            }
            Ok(Requeue::NotFound) => {
                let e = Error::invalid_input(format!(
                    "no message of this user has client_msg_id {client_msg_id:?}"
                ));
                self.outbox.resolve(client_msg_id, Err(e));
            }
            Err(e) => self.outbox.resolve(client_msg_id, Err(e)),
        }
        drop(order);
        wait_for_answer(answer).await
    }

    /// Records a successful send answer: the status change, the waiting futures, and the
    /// message itself through the ordered path (the server does not push it back to us).
    pub(crate) async fn complete_send(self: &Arc<Self>, conn: &Connection, message: Message) {
        {
            let _order = self.delivery.lock().await;
            let stored = message.clone();
            match self.store.call(move |db| db.mark_sent(&stored)).await {
                Ok(true) => self.emit(ClientEvent::MessageStatusChanged {
                    conversation_id: message.conversation_id.clone(),
                    client_msg_id: message.client_msg_id.clone(),
                    status: MessageStatus::Sent,
                    message: Some(message.clone()),
                    error: None,
                }),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "cannot record a send answer"),
            }
            self.outbox
                .resolve(&message.client_msg_id, Ok(message.clone()));
        }
        self.ingest(conn, vec![message]).await;
    }

    /// Records that the server refused a send for good.
    pub(crate) async fn fail_send(&self, client_msg_id: &str, error: Error) {
        let _order = self.delivery.lock().await;
        let id = client_msg_id.to_owned();
        let body = error
            .server_error()
            .cloned()
            .unwrap_or_else(|| magpie_proto::ErrorBody::bad_request(error.to_string()));
        let stored_body = body.clone();
        match self
            .store
            .call(move |db| db.mark_failed(&id, &stored_body))
            .await
        {
            Ok(Some(conversation_id)) => self.emit(ClientEvent::MessageStatusChanged {
                conversation_id,
                client_msg_id: client_msg_id.to_owned(),
                status: MessageStatus::Failed,
                message: None,
                error: Some(body),
            }),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot record a failed send"),
        }
        self.outbox.resolve(client_msg_id, Err(error));
    }

    // ---------------------------------------------------------------------------------------
    // Other requests
    // ---------------------------------------------------------------------------------------

    pub(crate) async fn mark_read(
        &self,
        conversation_id: &ConversationId,
        up_to: Option<u64>,
    ) -> Result<Conversation> {
        let id = conversation_id.clone();
        let (local, read_seq) = self
            .store
            .call(move |db| db.mark_read_locally(&id, up_to))
            .await?
            .ok_or_else(|| {
                Error::invalid_input(format!("unknown conversation {conversation_id}"))
            })?;
        self.emit(ClientEvent::ConversationUpdated(local.clone()));
        let Ok(conn) = self.connection() else {
            // Stays pending; sent after the next sync.
            return Ok(local);
        };
        match conn
            .mark_read(MarkReadRequest {
                conversation_id: conversation_id.clone(),
                seq: read_seq,
            })
            .await
        {
            Ok(state) => {
                let updated = self
                    .store
                    .call(move |db| db.apply_read_state(&state))
                    .await?
                    .unwrap_or(local);
                self.emit(ClientEvent::ConversationUpdated(updated.clone()));
                Ok(updated)
            }
            Err(e) if e.code().is_some() => {
                let id = conversation_id.clone();
                self.store.call(move |db| db.drop_pending_read(&id)).await?;
                Err(e)
            }
            Err(_) => Ok(local),
        }
    }

    /// Sends local reads that did not reach the server (made offline).
    async fn flush_pending_reads(&self, conn: &Connection) {
        let pending = match self.store.call(|db| db.pending_reads()).await {
            Ok(pending) => pending,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read pending reads");
                return;
            }
        };
        for (conversation_id, seq) in pending {
            let request = MarkReadRequest {
                conversation_id: conversation_id.clone(),
                seq,
            };
            let id = conversation_id.clone();
            let outcome = match conn.mark_read(request).await {
                Ok(state) => self.store.call(move |db| db.apply_read_state(&state)).await,
                Err(e) if e.code().is_some() => {
                    tracing::debug!(%conversation_id, error = %e, "the server refused a pending read");
                    self.store
                        .call(move |db| db.drop_pending_read(&id).map(|()| None))
                        .await
                }
                Err(_) => return,
            };
            if let Ok(Some(conversation)) = outcome {
                self.emit(ClientEvent::ConversationUpdated(conversation));
            }
        }
    }

    pub(crate) async fn fetch_history(
        &self,
        conversation_id: &ConversationId,
        query: HistoryQuery,
    ) -> Result<MessagesPage> {
        if !(1..=200).contains(&query.limit) {
            return Err(Error::invalid_input("history limit must be 1 to 200"));
        }
        let (seq, time) = match query.anchor {
            HistoryAnchor::None => (None, None),
            HistoryAnchor::Seq(seq) => (Some(seq), None),
            HistoryAnchor::Time(time) => (None, Some(time)),
        };
        let page = self
            .connection()?
            .get_messages(GetMessagesRequest {
                conversation_id: conversation_id.clone(),
                direction: query.direction,
                seq,
                time,
                limit: Some(query.limit),
            })
            .await?;
        let id = conversation_id.clone();
        let messages = page.messages.clone();
        if let Err(e) = self
            .store
            .call(move |db| db.store_history(&id, &messages))
            .await
        {
            tracing::warn!(error = %e, "cannot cache fetched history");
        }
        Ok(page)
    }

    pub(crate) async fn list_devices(&self) -> Result<DeviceList> {
        self.connection()?.list_devices().await
    }

    pub(crate) async fn renew_token(&self, token: String) -> Result<()> {
        let previous = std::mem::replace(&mut *lock(&self.token), token.clone());
        self.token_generation.fetch_add(1, Ordering::SeqCst);
        let Ok(conn) = self.connection() else {
            let _ = self.control.send(Control::Reconnect);
            return Ok(());
        };
        match conn.renew_token(token).await {
            Ok(_) => Ok(()),
            Err(e) if e.code().is_some() => {
                // The server refused the new token; the old one may still work for reconnects.
                *lock(&self.token) = previous;
                Err(e)
            }
            Err(_) => {
                // The connection went away (an expiry close may have raced the renewal):
                // reconnect with the new token.
                let _ = self.control.send(Control::Reconnect);
                Ok(())
            }
        }
    }

    pub(crate) fn reconnect(&self) {
        let _ = self.control.send(Control::Reconnect);
    }

    pub(crate) async fn logout(&self) {
        let (done, wait) = oneshot::channel();
        if self.control.send(Control::Logout(done)).is_ok() {
            let _ = wait.await;
        }
    }

    pub(crate) fn shutdown(&self) {
        let _ = self.control.send(Control::Shutdown);
    }
}

async fn wait_for_answer(answer: oneshot::Receiver<Result<Message>>) -> Result<Message> {
    match answer.await {
        Ok(result) => result,
        Err(_) => Err(Error::new(
            ErrorKind::Closed,
            "the client was closed; the message stays queued",
        )),
    }
}

/// Ends a fetch that did not finish (error or cancellation), so the conversation does not
/// stay "in flight" forever and waiters wake up to take over.
struct FetchGuard<'a> {
    session: &'a Session,
    conversation_id: &'a ConversationId,
    armed: bool,
}

impl Drop for FetchGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.session.sequencer().abort_fetch(self.conversation_id);
            self.session.fetch_done.notify_waiters();
        }
    }
}
