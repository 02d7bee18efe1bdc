//! The public handles: [`Client`] (login, connection, tokens, devices, events) and
//! [`ChatManager`] (messages and conversations). [`GroupManager`] lives in `groups`.
//!
//! Thin by design: each method checks its arguments, finds the logged-in session and
//! delegates. No protocol logic or storage code belongs here.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Map, Value};

use magpie_proto::frame::{LoginResponse, MessagesPage};
use magpie_proto::message::DeviceInfo;
use magpie_proto::{
    ConversationId, DeviceId, GroupId, Mentions, Message, MessageContent, Peer, UserId,
};

use crate::config::ClientConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::events::{ConnectionState, DisconnectReason, EventHub, Events};
use crate::groups::GroupManager;
use crate::model::{Conversation, HistoryQuery, LocalMessage, LocalPage};
use crate::session::Session;

/// The file under the data directory that keeps the generated device id.
const DEVICE_ID_FILE: &str = "device_id";

enum Slot {
    Empty,
    LoggingIn,
    Active(Arc<Session>),
}

struct Inner {
    config: Arc<ClientConfig>,
    events: EventHub,
    device_id: DeviceId,
    slot: Mutex<Slot>,
}

impl Inner {
    fn slot(&self) -> MutexGuard<'_, Slot> {
        // Slot changes are single assignments; a poisoned lock holds a consistent value.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Slot::Active(session) = &*self.slot() {
            session.shutdown();
        }
    }
}

/// A Magpie client: one per app installation. Cheap to clone; clones share everything.
///
/// Dropping the last clone closes the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("servers", &self.inner.config.ws_urls)
            .field("current_server", &self.current_server())
            .field("device_id", &self.inner.device_id)
            .field("user_id", &self.user_id())
            .finish()
    }
}

/// Resets a `LoggingIn` slot if the login future is dropped before it finishes.
struct LoginGuard<'a> {
    inner: &'a Inner,
    done: bool,
}

impl Drop for LoginGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            *self.inner.slot() = Slot::Empty;
        }
    }
}

impl Client {
    /// Creates a client. Creates the data directory and, unless the configuration names one,
    /// loads or generates this installation's device id. Does not connect.
    pub fn new(config: ClientConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir).map_err(Error::storage)?;
        let device_id = match &config.device_id {
            Some(id) => id.clone(),
            None => load_or_create_device_id(&config.data_dir)?,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                events: EventHub::default(),
                device_id,
                slot: Mutex::new(Slot::Empty),
            }),
        })
    }

    /// Subscribes to events. Every subscriber gets every event emitted after it subscribed,
    /// so subscribe before [`login`](Self::login) to see the first sync.
    pub fn events(&self) -> Events {
        self.inner.events.subscribe()
    }

    /// Same as [`events`](Self::events).
    pub fn subscribe(&self) -> Events {
        self.events()
    }

    /// Opens the user's local database, connects and logs in. Returns once the first login
    /// succeeded; the catch-up sync then runs in the background (see
    /// [`ClientEvent::SyncFinished`](crate::ClientEvent::SyncFinished)). From then on the
    /// client reconnects by itself.
    ///
    /// With several server URLs, the first login tries each of them once, in the configured
    /// [`ServerOrder`](crate::ServerOrder), until one accepts. If none does, the last one's
    /// error is returned; a token refused for good (`token_invalid` …) is returned at once,
    /// since every node checks tokens alike. Either way nothing keeps running.
    pub async fn login(&self, user_id: UserId, token: impl Into<String>) -> Result<LoginResponse> {
        {
            let mut slot = self.inner.slot();
            if !matches!(*slot, Slot::Empty) {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    "already logged in; log out first",
                ));
            }
            *slot = Slot::LoggingIn;
        }
        let mut guard = LoginGuard {
            inner: &self.inner,
            done: false,
        };
        let (session, info) = Session::start(
            Arc::clone(&self.inner.config),
            self.inner.events.clone(),
            user_id,
            token.into(),
            self.inner.device_id.clone(),
        )
        .await?;
        *self.inner.slot() = Slot::Active(session);
        guard.done = true;
        Ok(info)
    }

    /// Logs out: tells the server, closes the connection and stops reconnecting. Queued
    /// sends stay in the outbox for the user's next login. Logging out when not logged in
    /// does nothing.
    pub async fn logout(&self) -> Result<()> {
        let session = match std::mem::replace(&mut *self.inner.slot(), Slot::Empty) {
            Slot::Active(session) => session,
            Slot::LoggingIn => {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    "a login is in progress",
                ));
            }
            Slot::Empty => return Ok(()),
        };
        session.logout().await;
        Ok(())
    }

    /// Replaces the session's token. Connected: the server switches to it without
    /// reconnecting. Stopped after [`ClientEvent::TokenExpired`](crate::ClientEvent::TokenExpired)
    /// or waiting to reconnect: the client reconnects with it now.
    pub async fn renew_token(&self, token: impl Into<String>) -> Result<()> {
        self.session()?.renew_token(token.into()).await
    }

    /// Reconnects now: after a kick or a refused login (the loop does not retry those by
    /// itself), during a backoff wait, or to replace a connection that seems stuck.
    pub fn reconnect(&self) -> Result<()> {
        self.session()?.reconnect();
        Ok(())
    }

    /// The user's online devices, this one included.
    pub async fn list_devices(&self) -> Result<Vec<DeviceInfo>> {
        Ok(self.session()?.list_devices().await?.devices)
    }

    /// Chat operations: sending, conversations, history.
    pub fn chat(&self) -> ChatManager {
        ChatManager {
            client: self.clone(),
        }
    }

    /// Group operations and the local cache of joined groups and their members.
    pub fn groups(&self) -> GroupManager {
        GroupManager::new(self.clone())
    }

    /// The logged-in user.
    pub fn user_id(&self) -> Option<UserId> {
        match &*self.inner.slot() {
            Slot::Active(session) => Some(session.user_id().clone()),
            _ => None,
        }
    }

    /// This installation's device id.
    pub fn device_id(&self) -> &DeviceId {
        &self.inner.device_id
    }

    /// The client's configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The WebSocket endpoint (one of [`ClientConfig::ws_urls`], normalised) of the connection
    /// the client is logged in on; `None` while it is not connected. With several server URLs
    /// this is the node in use, for logs: read it on
    /// [`ConnectionState::Connected`](crate::ConnectionState::Connected), which is emitted
    /// after it is set.
    pub fn current_server(&self) -> Option<String> {
        match &*self.inner.slot() {
            Slot::Active(session) => session.current_server(),
            _ => None,
        }
    }

    /// The current connection state.
    pub fn connection_state(&self) -> ConnectionState {
        match &*self.inner.slot() {
            Slot::Active(session) => session.connection_state(),
            Slot::LoggingIn => ConnectionState::Connecting,
            Slot::Empty => ConnectionState::Disconnected {
                reason: DisconnectReason::NotConnected,
            },
        }
    }

    pub(crate) fn session(&self) -> Result<Arc<Session>> {
        match &*self.inner.slot() {
            Slot::Active(session) => Ok(Arc::clone(session)),
            _ => Err(Error::new(ErrorKind::NotLoggedIn, "log in first")),
        }
    }
}

/// Messages and conversations of the logged-in user. Obtained from [`Client::chat`]; cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct ChatManager {
    client: Client,
}

impl ChatManager {
    /// Sends a message to a user and returns it as the server stored it.
    ///
    /// The message is written to the local outbox first (status `sending`, reported by
    /// [`ClientEvent::MessageStatusChanged`](crate::ClientEvent::MessageStatusChanged)). If
    /// the connection is down, or drops before the answer, it is sent again with the same
    /// `client_msg_id` after the next login, and this future resolves then — so it may wait
    /// as long as the device is offline; wrap it in a timeout if the UI needs one. A server
    /// rejection (`bad_request`, `user_not_found`, `too_large` …) marks it `failed` and is
    /// returned; `rate_limited` and 5xxx errors are retried a few times first.
    ///
    /// Commands (`MessageContent::Command`) are transient: they are sent only over a live
    /// connection, never queued or stored.
    pub async fn send(
        &self,
        to: UserId,
        content: MessageContent,
        ext: Option<Map<String, Value>>,
    ) -> Result<Message> {
        self.send_to(Peer::User(to), content, ext, None).await
    }

    /// Sends a message to a group (conversation `grp:<id>`) and returns it as the server
    /// stored it, with the group's next seq. Queued, retried and reported exactly like
    /// [`send`](Self::send); every member's devices receive it, this user's other devices
    /// included.
    ///
    /// `mentions` names members (at most 30, [`MAX_MENTIONS`](crate::proto::message::MAX_MENTIONS))
    /// or everyone (`all: true`): their conversation shows
    /// [`Conversation::mentioned`] until they read past the message. Users who are not
    /// members are dropped by the server.
    ///
    /// The server refuses non-members (`not_group_member`), muted members (`muted`, also while
    /// the whole group is muted, except owners, admins and the allow list) and unknown groups
    /// (`group_not_found`): the message is marked `failed` and the error returned, see
    /// [`Error::code`](crate::Error::code).
    pub async fn send_group(
        &self,
        group_id: GroupId,
        content: MessageContent,
        mentions: Option<Mentions>,
        ext: Option<Map<String, Value>>,
    ) -> Result<Message> {
        self.send_to(Peer::Group(group_id), content, ext, mentions)
            .await
    }

    /// Sends a message to a user or a group: [`send`](Self::send) and
    /// [`send_group`](Self::send_group) in one, for code that holds a [`Peer`] (such as
    /// [`Conversation::target`]). `mentions` are for groups only.
    pub async fn send_to(
        &self,
        to: Peer,
        content: MessageContent,
        ext: Option<Map<String, Value>>,
        mentions: Option<Mentions>,
    ) -> Result<Message> {
        self.client
            .session()?
            .send(to, content, ext, mentions)
            .await
    }

    /// Sends a failed message again with its original `client_msg_id`. For a message that is
    /// still queued, waits for it like [`send`](Self::send); for one already stored, returns
    /// it at once.
    pub async fn resend(&self, client_msg_id: &str) -> Result<Message> {
        self.client.session()?.resend(client_msg_id).await
    }

    /// The cached conversations, most recently active first, with unread counts.
    pub async fn conversations(&self) -> Result<Vec<Conversation>> {
        self.client
            .session()?
            .store
            .call(|db| db.conversations())
            .await
    }

    /// One cached conversation.
    pub async fn conversation(&self, id: &ConversationId) -> Result<Option<Conversation>> {
        let id = id.clone();
        self.client
            .session()?
            .store
            .call(move |db| db.conversation(&id))
            .await
    }

    /// The sum of unread counts over all cached conversations.
    pub async fn total_unread(&self) -> Result<u64> {
        self.client
            .session()?
            .store
            .call(|db| db.total_unread())
            .await
    }

    /// Marks a conversation read up to `up_to` (default: its newest known message). Applied
    /// locally at once; sent to the server now if connected, else after the next sync.
    pub async fn mark_read(&self, id: &ConversationId, up_to: Option<u64>) -> Result<Conversation> {
        self.client.session()?.mark_read(id, up_to).await
    }

    /// A page of messages from the local cache, oldest first. `before_seq: None` gives the
    /// newest `limit` messages, pending sends included; pass the seq of the oldest message
    /// of a page to get the page before it.
    pub async fn load_messages(
        &self,
        id: &ConversationId,
        before_seq: Option<u64>,
        limit: u32,
    ) -> Result<LocalPage> {
        if limit == 0 {
            return Err(Error::invalid_input("limit must be at least 1"));
        }
        let id = id.clone();
        self.client
            .session()?
            .store
            .call(move |db| db.messages(&id, before_seq, limit))
            .await
    }

    /// A message this user sent (from any device) or is sending, by its `client_msg_id`.
    pub async fn local_message(&self, client_msg_id: &str) -> Result<Option<LocalMessage>> {
        let id = client_msg_id.to_owned();
        self.client
            .session()?
            .store
            .call(move |db| db.own_message(&id))
            .await
    }

    /// How many sends wait in the outbox.
    pub async fn pending_sends(&self) -> Result<u64> {
        self.client
            .session()?
            .store
            .call(|db| db.outbox_len())
            .await
    }

    /// A page of the server's history (`get_messages`), for history older than the local
    /// cache. Messages at or below the conversation's cursor are cached on the way; newer ones
    /// reach the cache, and the app, only through the ordered delivery path.
    pub async fn fetch_history(
        &self,
        id: &ConversationId,
        query: HistoryQuery,
    ) -> Result<MessagesPage> {
        self.client.session()?.fetch_history(id, query).await
    }
}

fn load_or_create_device_id(data_dir: &Path) -> Result<DeviceId> {
    let path = data_dir.join(DEVICE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(DeviceId::new(text.trim())?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = DeviceId::new(format!("dev-{}", uuid::Uuid::new_v4().simple()))?;
            std::fs::write(&path, id.as_str()).map_err(Error::storage)?;
            Ok(id)
        }
        Err(e) => Err(Error::storage(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_id_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create_device_id(dir.path()).expect("create");
        let again = load_or_create_device_id(dir.path()).expect("load");
        assert_eq!(first, again);
        assert!(first.as_str().starts_with("dev-"));
    }

    #[tokio::test]
    async fn calls_before_login_fail_with_not_logged_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ClientConfig::builder("ws://127.0.0.1:1", dir.path())
            .build()
            .expect("config");
        let client = Client::new(config).expect("client");
        let err = client
            .chat()
            .conversations()
            .await
            .expect_err("not logged in");
        assert_eq!(err.kind(), ErrorKind::NotLoggedIn);
        assert_eq!(
            client.connection_state(),
            ConnectionState::Disconnected {
                reason: DisconnectReason::NotConnected
            }
        );
        client
            .logout()
            .await
            .expect("logout without login is a no-op");
    }

    #[tokio::test]
    async fn a_first_login_that_cannot_connect_fails_and_leaves_the_client_reusable() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Port 1 on loopback: nothing listens there.
        let config = ClientConfig::builder("ws://127.0.0.1:1", dir.path())
            .build()
            .expect("config");
        let client = Client::new(config).expect("client");
        let user = UserId::new("amy").expect("user");
        let err = client
            .login(user.clone(), "token")
            .await
            .expect_err("nothing listens");
        assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
        assert_eq!(client.user_id(), None);
        let again = client
            .login(user, "token")
            .await
            .expect_err("still nothing");
        assert_eq!(again.kind(), ErrorKind::Disconnected, "not InvalidState");
    }
}
