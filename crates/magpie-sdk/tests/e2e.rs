//! End-to-end tests of the SDK against the real server (started by `magpie-testkit` on a
//! random loopback port). One test binary on purpose: each binary links the whole server, so
//! further groups of tests are modules of this one (`e2e/*.rs`).

#[path = "e2e/cluster.rs"]
mod cluster;
#[path = "e2e/failover.rs"]
mod failover;
#[path = "e2e/groups.rs"]
mod groups;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use magpie_sdk::{
    ChatManager, Client, ClientConfig, ClientEvent, Codec, ConnectionState, ConversationId,
    DeviceId, DisconnectReason, ErrorBody, ErrorCode, ErrorKind, Events, HistoryQuery, KickReason,
    LocalMessage, Message, MessageContent, MessageStatus, Platform, ReconnectPolicy, UserId,
};
use magpie_testkit::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const WAIT: Duration = Duration::from_secs(20);

fn user(id: &str) -> UserId {
    UserId::new(id).expect("valid user id")
}

fn text(message: &Message) -> String {
    match &message.content {
        MessageContent::Text(body) => body.text.clone(),
        other => format!("{other:?}"),
    }
}

/// One app installation: a client with its own data directory and event subscription.
struct Device {
    client: Client,
    events: Events,
    dir: tempfile::TempDir,
    /// The messages emitted by the last login's sync, in emission order.
    synced: Vec<Message>,
}

/// Collects the messages emitted until the sync finishes.
async fn sync_messages(events: &mut Events) -> Vec<Message> {
    let mut received = Vec::new();
    loop {
        let event = wait_for(events, "sync", |e| {
            matches!(
                e,
                ClientEvent::MessageReceived(_) | ClientEvent::SyncFinished
            )
        })
        .await;
        match event {
            ClientEvent::MessageReceived(message) => received.push(message),
            _ => return received,
        }
    }
}

struct DeviceSpec<'a> {
    url: String,
    device: &'a str,
    platform: Platform,
    codec: Codec,
    window: Option<u64>,
}

impl<'a> DeviceSpec<'a> {
    fn new(server: &TestServer, device: &'a str) -> Self {
        Self {
            url: server.ws_url(),
            device,
            platform: Platform::Linux,
            codec: Codec::Json,
            window: None,
        }
    }

    fn platform(mut self, platform: Platform) -> Self {
        self.platform = platform;
        self
    }

    fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    fn url(mut self, url: String) -> Self {
        self.url = url;
        self
    }

    fn window(mut self, n: u64) -> Self {
        self.window = Some(n);
        self
    }

    fn client(&self, dir: &std::path::Path) -> Client {
        let config = ClientConfig::builder(self.url.clone(), dir)
            .device_id(DeviceId::new(self.device).expect("device id"))
            .platform(self.platform)
            .codec(self.codec)
            .initial_messages_per_conversation(self.window)
            .reconnect_policy(ReconnectPolicy {
                base_delay: Duration::from_millis(50),
                max_delay: Duration::from_millis(400),
                ..ReconnectPolicy::default()
            })
            .build()
            .expect("config");
        Client::new(config).expect("client")
    }

    /// A client on `dir`, subscribed to its events, logged in as `id` (its sync not awaited).
    async fn start(&self, dir: &std::path::Path, id: &str, token: &str) -> (Client, Events) {
        let client = self.client(dir);
        let events = client.events();
        client.login(user(id), token).await.expect("login");
        (client, events)
    }

    /// Logs in and waits for the first sync to finish.
    async fn login(self, id: &str, token: &str) -> Device {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, mut events) = self.start(dir.path(), id, token).await;
        let synced = sync_messages(&mut events).await;
        Device {
            client,
            events,
            dir,
            synced,
        }
    }
}

/// Creates user `id` with a token and logs its first device (`{id}-1`) in.
async fn sign_up(server: &TestServer, id: &str) -> (Device, String) {
    sign_up_with(server, id, |spec| spec).await
}

/// [`sign_up`], with the device's spec adjusted by `adjust`.
async fn sign_up_with(
    server: &TestServer,
    id: &str,
    adjust: impl for<'a> FnOnce(DeviceSpec<'a>) -> DeviceSpec<'a>,
) -> (Device, String) {
    let token = server.user_with_token(id).await;
    let name = format!("{id}-1");
    let device = adjust(DeviceSpec::new(server, &name))
        .login(id, &token)
        .await;
    (device, token)
}

impl Device {
    fn chat(&self) -> ChatManager {
        self.client.chat()
    }

    /// Sends a text to user `to` and returns the stored message.
    async fn send_text(&self, to: &str, text: impl Into<String>) -> Message {
        self.chat()
            .send(user(to), MessageContent::text(text), None)
            .await
            .expect("send")
    }

    /// The locally kept message with this `client_msg_id` (which must be kept).
    async fn local_message(&self, client_msg_id: &str) -> LocalMessage {
        self.chat()
            .local_message(client_msg_id)
            .await
            .expect("read")
            .expect("kept")
    }

    /// Waits until the connection is in a state that `state` accepts.
    async fn wait_state(&mut self, what: &str, state: impl Fn(&ConnectionState) -> bool) {
        wait_for(
            &mut self.events,
            what,
            |e| matches!(e, ClientEvent::ConnectionStateChanged(s) if state(s)),
        )
        .await;
    }

    /// Checks that the client does not try to connect again for a second.
    async fn assert_no_reconnect(&mut self) {
        assert_quiet(&mut self.events, Duration::from_secs(1), |e| {
            matches!(
                e,
                ClientEvent::ConnectionStateChanged(ConnectionState::Connecting)
            )
        })
        .await;
    }

    /// Waits for a send to be marked failed: its conversation, `client_msg_id` and error.
    async fn wait_failed(&mut self) -> (ConversationId, String, Option<ErrorBody>) {
        let failed = wait_for(&mut self.events, "failed status", |e| {
            matches!(
                e,
                ClientEvent::MessageStatusChanged {
                    status: MessageStatus::Failed,
                    ..
                }
            )
        })
        .await;
        let ClientEvent::MessageStatusChanged {
            conversation_id,
            client_msg_id,
            error,
            ..
        } = failed
        else {
            unreachable!("matched above")
        };
        (conversation_id, client_msg_id, error)
    }

    /// Waits for `n` received messages, then checks that no more arrive for a moment.
    async fn receive_exactly(&mut self, n: usize) -> Vec<Message> {
        let mut got = Vec::new();
        while got.len() < n {
            let event = wait_for(&mut self.events, "a message", |e| {
                matches!(e, ClientEvent::MessageReceived(_))
            })
            .await;
            if let ClientEvent::MessageReceived(message) = event {
                got.push(message);
            }
        }
        assert_quiet(&mut self.events, Duration::from_millis(300), |e| {
            matches!(e, ClientEvent::MessageReceived(_))
        })
        .await;
        got
    }

    /// Logs out and logs the same installation (same data directory) in again.
    async fn restart(&mut self, spec: DeviceSpec<'_>, id: &str, token: &str) {
        self.client.logout().await.expect("logout");
        let (client, mut events) = spec.start(self.dir.path(), id, token).await;
        self.synced = sync_messages(&mut events).await;
        self.client = client;
        self.events = events;
    }
}

async fn wait_for(
    events: &mut Events,
    what: &str,
    mut matches: impl FnMut(&ClientEvent) -> bool,
) -> ClientEvent {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.recv().await {
            if matches(&event) {
                return Some(event);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the event stream ended while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

async fn assert_quiet(
    events: &mut Events,
    window: Duration,
    mut matches: impl FnMut(&ClientEvent) -> bool,
) {
    let _ = tokio::time::timeout(window, async {
        while let Some(event) = events.recv().await {
            assert!(!matches(&event), "unexpected event {event:?}");
        }
    })
    .await;
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// A server whose send rate limit does not slow the tests down.
async fn fast_server() -> TestServer {
    TestServer::start_without_rate_limits().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_exchange_messages_on_several_devices() {
    let server = fast_server().await;
    let alice_token = server.user_with_token("alice").await;
    let bob_token = server.user_with_token("bob").await;

    let mut alice_phone = DeviceSpec::new(&server, "alice-phone")
        .platform(Platform::Ios)
        .login("alice", &alice_token)
        .await;
    let mut alice_desk = DeviceSpec::new(&server, "alice-desk")
        .platform(Platform::Macos)
        .login("alice", &alice_token)
        .await;
    let mut bob = DeviceSpec::new(&server, "bob-desk")
        .codec(Codec::MsgPack)
        .login("bob", &bob_token)
        .await;

    let mut sent = Vec::new();
    for i in 1..=5 {
        sent.push(alice_phone.send_text("bob", format!("hi {i}")).await);
    }
    assert_eq!(seqs(&sent), vec![1, 2, 3, 4, 5]);

    let at_bob = bob.receive_exactly(5).await;
    assert_eq!(
        at_bob, sent,
        "bob gets every message once, in order, as stored"
    );
    let at_desk = alice_desk.receive_exactly(5).await;
    assert_eq!(at_desk, sent, "alice's other device sees her messages");
    // The sending device learns about its own messages through the send answers only.
    assert_quiet(&mut alice_phone.events, Duration::from_millis(300), |e| {
        matches!(e, ClientEvent::MessageReceived(_))
    })
    .await;

    for i in 1..=3 {
        bob.send_text("alice", format!("re {i}")).await;
    }
    let replies = alice_phone.receive_exactly(3).await;
    assert_eq!(seqs(&replies), vec![6, 7, 8]);
    assert_eq!(alice_desk.receive_exactly(3).await, replies);

    // Local caches agree: 8 messages, in order, and unread counts that ignore own messages.
    let conv = ConversationId::c2c(&user("alice"), &user("bob"));
    for device in [&alice_phone, &alice_desk, &bob] {
        let page = device
            .chat()
            .load_messages(&conv, None, 50)
            .await
            .expect("page");
        let local: Vec<_> = page.messages.iter().filter_map(|m| m.seq).collect();
        assert_eq!(local, (1..=8).collect::<Vec<_>>());
    }
    let listed = alice_phone.chat().conversations().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].unread_count, 3);
    assert_eq!(listed[0].last_message.as_ref().map(|m| m.seq), Some(8));
    let bobs = bob
        .chat()
        .conversation(&conv)
        .await
        .expect("row")
        .expect("known");
    assert_eq!(
        bobs.unread_count, 0,
        "bob's reply read everything before it"
    );

    // Reading on one device reaches the other.
    let read = alice_desk
        .chat()
        .mark_read(&conv, None)
        .await
        .expect("read");
    assert_eq!((read.read_seq, read.unread_count), (8, 0));
    let synced = wait_for(&mut alice_phone.events, "read state", |e| {
        matches!(e, ClientEvent::ReadStateSynced { .. })
    })
    .await;
    assert_eq!(
        synced,
        ClientEvent::ReadStateSynced {
            conversation_id: conv.clone(),
            read_seq: 8
        }
    );
    let phone_row = alice_phone
        .chat()
        .conversation(&conv)
        .await
        .expect("row")
        .expect("known");
    assert_eq!(phone_row.unread_count, 0);

    // Commands are delivered once and never stored.
    let typing = MessageContent::Command(magpie_sdk::proto::message::CommandBody {
        name: "typing".into(),
        data: serde_json::json!({"on": true}),
    });
    let command = bob
        .chat()
        .send(user("alice"), typing, None)
        .await
        .expect("command");
    assert_eq!(command.seq, 0);
    let got = alice_phone.receive_exactly(1).await;
    assert_eq!(got[0].content, command.content);
    let page = alice_phone
        .chat()
        .load_messages(&conv, None, 50)
        .await
        .expect("page");
    assert_eq!(page.messages.len(), 8, "the command is not cached");

    // Bad input is refused before it is queued; server refusals mark the message failed.
    let err = alice_phone
        .chat()
        .send(user("alice"), MessageContent::text("me"), None)
        .await
        .expect_err("self-send");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = alice_phone
        .chat()
        .send(user("nobody"), MessageContent::text("?"), None)
        .await
        .expect_err("unknown user");
    assert_eq!(err.kind(), ErrorKind::Server(ErrorCode::UserNotFound));
    let (_, client_msg_id, error) = alice_phone.wait_failed().await;
    assert_eq!(error.map(|e| e.code), Some(ErrorCode::UserNotFound));
    let local = alice_phone.local_message(&client_msg_id).await;
    assert_eq!(local.status, MessageStatus::Failed);
    assert_eq!(alice_phone.chat().pending_sends().await.expect("count"), 0);

    let devices = alice_phone.client.list_devices().await.expect("devices");
    let mut ids: Vec<_> = devices.iter().map(|d| d.device_id.to_string()).collect();
    ids.sort();
    assert_eq!(ids, ["alice-desk", "alice-phone"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_recipient_gets_everything_once_and_in_order() {
    let server = fast_server().await;
    let (alice, _) = sign_up(&server, "alice").await;
    let bob_token = server.user_with_token("bob").await;
    let (carol, _) = sign_up(&server, "carol").await;
    for i in 1..=30 {
        alice.send_text("bob", format!("a{i}")).await;
        if i % 3 == 0 {
            carol.send_text("bob", format!("c{i}")).await;
        }
    }

    // Bob's first login: everything, once, in order per conversation.
    let mut bob = DeviceSpec::new(&server, "bob-1")
        .login("bob", &bob_token)
        .await;
    let from_alice = ConversationId::c2c(&user("alice"), &user("bob"));
    let from_carol = ConversationId::c2c(&user("carol"), &user("bob"));
    let texts_in = |messages: &[Message], conv: &ConversationId| -> Vec<String> {
        messages
            .iter()
            .filter(|m| &m.conversation_id == conv)
            .map(text)
            .collect()
    };
    assert_eq!(bob.synced.len(), 40, "each message exactly once");
    assert_eq!(
        texts_in(&bob.synced, &from_alice),
        (1..=30).map(|i| format!("a{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        texts_in(&bob.synced, &from_carol),
        (1..=10).map(|i| format!("c{}", i * 3)).collect::<Vec<_>>()
    );
    bob.receive_exactly(0).await;

    let page = bob
        .chat()
        .load_messages(&from_alice, None, 100)
        .await
        .expect("page");
    let cached: Vec<_> = page.messages.iter().filter_map(|m| m.seq).collect();
    assert_eq!(cached, (1..=30).collect::<Vec<_>>());
    let list = bob.chat().conversations().await.expect("list");
    let unread: Vec<_> = list
        .iter()
        .map(|c| (c.conversation_id.clone(), c.unread_count))
        .collect();
    assert_eq!(unread.len(), 2);
    assert!(unread.contains(&(from_alice.clone(), 30)), "{unread:?}");
    assert!(unread.contains(&(from_carol.clone(), 10)), "{unread:?}");
    assert!(
        list.windows(2)
            .all(|w| w[0].last_activity >= w[1].last_activity),
        "most recent first"
    );
    assert_eq!(bob.chat().total_unread().await.expect("total"), 40);

    // Offline again; more arrives; the same installation restarts and gets only the news.
    bob.client.logout().await.expect("logout");
    for i in 31..=35 {
        alice.send_text("bob", format!("a{i}")).await;
    }
    bob.restart(DeviceSpec::new(&server, "bob-1"), "bob", &bob_token)
        .await;
    assert_eq!(
        seqs(&bob.synced),
        vec![31, 32, 33, 34, 35],
        "nothing repeated"
    );
    assert!(bob.synced.iter().all(|m| m.conversation_id == from_alice));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_starts_with_the_newest_messages_and_fetches_older_history() {
    let server = fast_server().await;
    let (alice, _) = sign_up(&server, "alice").await;
    let bob_token = server.user_with_token("bob").await;
    for i in 1..=25 {
        alice.send_text("bob", format!("m{i}")).await;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let (client, mut events) = DeviceSpec::new(&server, "bob-new")
        .window(10)
        .start(dir.path(), "bob", &bob_token)
        .await;
    let received = sync_messages(&mut events).await;
    assert_eq!(seqs(&received), (16..=25).collect::<Vec<_>>());

    let conv = ConversationId::c2c(&user("alice"), &user("bob"));
    let older = client
        .chat()
        .fetch_history(&conv, HistoryQuery::before_seq(16, 10))
        .await
        .expect("history");
    assert_eq!(seqs(&older.messages), (6..=15).collect::<Vec<_>>());
    assert!(older.has_more);
    let cached = client
        .chat()
        .load_messages(&conv, None, 100)
        .await
        .expect("page");
    assert_eq!(cached.messages.len(), 20, "fetched history is cached");

    // Live messages keep flowing after the window.
    alice.send_text("bob", "m26").await;
    let live = wait_for(&mut events, "live message", |e| {
        matches!(e, ClientEvent::MessageReceived(_))
    })
    .await;
    assert!(matches!(live, ClientEvent::MessageReceived(m) if m.seq == 26));
}

/// A TCP relay between the SDK and the server that can swallow the server's answers and cut
/// every connection, to lose a send answer after the server stored the message, or die for
/// good (a node that goes away).
struct Proxy {
    addr: SocketAddr,
    swallow: Arc<AtomicBool>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let swallow = Arc::new(AtomicBool::new(false));
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (s, t) = (Arc::clone(&swallow), Arc::clone(&tasks));
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let (mut in_read, mut in_write) = inbound.into_split();
                let (mut out_read, mut out_write) = outbound.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut in_read, &mut out_write).await;
                });
                let swallow = Arc::clone(&s);
                let down = tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match out_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if swallow.load(Ordering::SeqCst) {
                            continue;
                        }
                        if in_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let mut tasks = t.lock().expect("lock");
                tasks.push(up.abort_handle());
                tasks.push(down.abort_handle());
            }
        });
        Self {
            addr,
            swallow,
            tasks,
            accept: accept.abort_handle(),
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    fn swallow_answers(&self, on: bool) {
        self.swallow.store(on, Ordering::SeqCst);
    }

    fn cut(&self) {
        for task in self.tasks.lock().expect("lock").drain(..) {
            task.abort();
        }
    }

    /// Stops listening and cuts every connection: from now on its port refuses connections.
    fn kill(&self) {
        self.accept.abort();
        self.cut();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_answer_was_lost_resolves_to_the_stored_message_once() {
    let server = fast_server().await;
    let proxy = Proxy::start(server.addr()).await;
    let (mut alice, _) = sign_up_with(&server, "alice", |spec| spec.url(proxy.url())).await;
    let (mut bob, _) = sign_up(&server, "bob").await;

    proxy.swallow_answers(true);
    let chat = alice.chat();
    let sending = tokio::spawn(async move {
        chat.send(user("bob"), MessageContent::text("lost answer"), None)
            .await
    });
    let queued = wait_for(&mut alice.events, "sending status", |e| {
        matches!(
            e,
            ClientEvent::MessageStatusChanged {
                status: MessageStatus::Sending,
                ..
            }
        )
    })
    .await;
    let ClientEvent::MessageStatusChanged { client_msg_id, .. } = queued else {
        unreachable!("matched above")
    };
    // The server stored and delivered it, but alice never heard back.
    let at_bob = bob.receive_exactly(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!sending.is_finished(), "the answer was swallowed");

    proxy.swallow_answers(false);
    proxy.cut();
    let stored = tokio::time::timeout(WAIT, sending)
        .await
        .expect("resolves after reconnecting")
        .expect("task")
        .expect("send");
    assert_eq!(stored, at_bob[0], "the original message, not a second one");
    assert_eq!(stored.client_msg_id, client_msg_id);

    let conv = ConversationId::c2c(&user("alice"), &user("bob"));
    let page = alice
        .chat()
        .load_messages(&conv, None, 10)
        .await
        .expect("page");
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].status, MessageStatus::Sent);
    assert_eq!(alice.chat().pending_sends().await.expect("count"), 0);
    // Retrying a send that went through returns the same message again.
    let again = alice.chat().resend(&client_msg_id).await.expect("resend");
    assert_eq!(again, stored);
    bob.receive_exactly(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_queued_while_the_server_restarts_are_delivered_in_order() {
    let mut server = fast_server().await;
    let (mut alice, _) = sign_up(&server, "alice").await;
    let (mut bob, _) = sign_up(&server, "bob").await;
    alice.send_text("bob", "before").await;
    bob.receive_exactly(1).await;

    server.stop().await;
    alice
        .wait_state("disconnect", |s| {
            matches!(s, ConnectionState::Disconnected { .. })
        })
        .await;
    let mut pending = Vec::new();
    for i in 1..=4 {
        let chat = alice.chat();
        pending.push(tokio::spawn(async move {
            chat.send(
                user("bob"),
                MessageContent::text(format!("offline {i}")),
                None,
            )
            .await
        }));
        // Sends are queued in call order.
        wait_for(&mut alice.events, "queued", |e| {
            matches!(
                e,
                ClientEvent::MessageStatusChanged {
                    status: MessageStatus::Sending,
                    ..
                }
            )
        })
        .await;
    }
    assert_eq!(alice.chat().pending_sends().await.expect("count"), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(pending.iter().all(|p| !p.is_finished()));

    server.restart().await;
    let mut stored = Vec::new();
    for task in pending {
        let message = tokio::time::timeout(WAIT, task)
            .await
            .expect("delivered after the restart")
            .expect("task")
            .expect("send");
        stored.push(message);
    }
    assert_eq!(seqs(&stored), vec![2, 3, 4, 5]);
    let texts: Vec<_> = stored.iter().map(text).collect();
    assert_eq!(texts, ["offline 1", "offline 2", "offline 3", "offline 4"]);

    let at_bob = bob.receive_exactly(4).await;
    assert_eq!(at_bob, stored);
    assert_eq!(alice.chat().pending_sends().await.expect("count"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_renewed_in_place_or_after_expiry() {
    let server = TestServer::start_with(|config| {
        config.auth.token_expiry_warning_secs = 1;
    })
    .await;
    server.create_user("alice").await;
    server.create_user("bob").await;

    // Renewed on the warning: the session goes on without a reconnect.
    let short = server.token_with_ttl("alice", Some(3)).await;
    let mut alice = DeviceSpec::new(&server, "alice-1")
        .login("alice", &short.token)
        .await;
    let warning = wait_for(&mut alice.events, "expiry warning", |e| {
        matches!(e, ClientEvent::TokenWillExpire { .. })
    })
    .await;
    assert_eq!(
        warning,
        ClientEvent::TokenWillExpire {
            expires_at: short.expires_at
        }
    );
    let long = server.token("alice").await;
    alice.client.renew_token(long).await.expect("renew");
    assert_quiet(&mut alice.events, Duration::from_secs(3), |e| {
        matches!(
            e,
            ClientEvent::TokenExpired | ClientEvent::ConnectionStateChanged(_)
        )
    })
    .await;
    assert_eq!(alice.client.connection_state(), ConnectionState::Connected);

    // Not renewed: expired, stopped, and nothing is retried until a new token comes.
    let short = server.token_with_ttl("bob", Some(2)).await;
    let mut bob = DeviceSpec::new(&server, "bob-1")
        .login("bob", &short.token)
        .await;
    wait_for(&mut bob.events, "expiry", |e| {
        matches!(e, ClientEvent::TokenExpired)
    })
    .await;
    bob.wait_state("disconnect", |s| {
        *s == ConnectionState::Disconnected {
            reason: DisconnectReason::TokenExpired,
        }
    })
    .await;
    bob.assert_no_reconnect().await;
    let err = bob.client.list_devices().await.expect_err("stopped");
    assert_eq!(err.kind(), ErrorKind::TokenExpired);

    // A message arrives meanwhile; renewing reconnects and syncs it.
    alice.send_text("bob", "while expired").await;
    bob.client
        .renew_token(server.token("bob").await)
        .await
        .expect("renew");
    bob.wait_state("reconnected", |s| *s == ConnectionState::Connected)
        .await;
    let got = bob.receive_exactly(1).await;
    assert_eq!(text(&got[0]), "while expired");
}

/// Whether an event reports a kick for `reason`.
///
/// A kick without a reason is accepted too: the server sometimes closes with 4001 before it
/// wrote the `kicked` event (its session loop races the registry dropping the session's event
/// queue against the kick signal), and the SDK then reports the kick from the close code alone.
fn kicked_for(event: &ClientEvent, reason: KickReason) -> bool {
    matches!(event, ClientEvent::Kicked { reason: r, .. } if *r == Some(reason) || r.is_none())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicked_devices_stop_until_told_to_reconnect() {
    let server = fast_server().await;
    let token = server.user_with_token("alice").await;
    let mut first = DeviceSpec::new(&server, "phone-1")
        .platform(Platform::Ios)
        .login("alice", &token)
        .await;
    // A second phone replaces the first (one device per platform class).
    let mut second = DeviceSpec::new(&server, "phone-2")
        .platform(Platform::Android)
        .login("alice", &token)
        .await;
    wait_for(&mut first.events, "kick of the first phone", |e| {
        kicked_for(e, KickReason::Replaced)
    })
    .await;
    first
        .wait_state("disconnect", |s| {
            *s == ConnectionState::Disconnected {
                reason: DisconnectReason::Kicked,
            }
        })
        .await;
    first.assert_no_reconnect().await;
    let err = first.client.list_devices().await.expect_err("kicked");
    assert_eq!(err.kind(), ErrorKind::Kicked);
    assert_eq!(second.client.connection_state(), ConnectionState::Connected);

    // The app may take the session back explicitly; then the other phone is the one kicked.
    first.client.reconnect().expect("reconnect");
    first
        .wait_state("reconnected", |s| *s == ConnectionState::Connected)
        .await;
    wait_for(&mut second.events, "kick of the second phone", |e| {
        kicked_for(e, KickReason::Replaced)
    })
    .await;

    // Revoked tokens kick at once, and a reconnect with the revoked token does not spin.
    let (status, body) = server.rest("DELETE", "/v1/users/alice/tokens", None).await;
    assert_eq!(status, 200, "{body}");
    wait_for(&mut first.events, "revocation", |e| {
        kicked_for(e, KickReason::TokensRevoked)
    })
    .await;
    first.client.reconnect().expect("reconnect");
    wait_for(&mut first.events, "refused login", |e| {
        matches!(
            e,
            ClientEvent::Kicked {
                reason: Some(KickReason::TokensRevoked),
                ..
            }
        )
    })
    .await;
    first.assert_no_reconnect().await;
}

/// Stores `per_conversation` messages from each of `conversations` senders to `recipient`,
/// through the raw protocol with pipelined sends (the SDK's own sends go one at a time).
async fn populate(
    server: &TestServer,
    recipient: &str,
    conversations: usize,
    per_conversation: usize,
) {
    use futures_util::StreamExt;
    server.create_user(recipient).await;
    futures_util::stream::iter(0..conversations)
        .map(|i| async move {
            let sender = format!("sender{i:04}");
            let token = server.user_with_token(&sender).await;
            let mut raw = server.raw_login(&sender, &token, "bulk", "linux").await;
            let mut ids = Vec::with_capacity(per_conversation);
            for n in 1..=per_conversation {
                let data = serde_json::json!({
                    "to": {"kind": "user", "id": recipient},
                    "client_msg_id": format!("{sender}-{n}"),
                    "content": {"type": "text", "body": {"text": format!("{sender} #{n}")}},
                });
                ids.push(raw.send("send", data).await);
            }
            for id in ids {
                let answer = raw.answer(id).await;
                assert_eq!(answer["type"], "response", "{answer}");
            }
            raw.close().await;
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

/// Logs a fresh device of `user` in and returns the messages of its first sync and how long
/// the login plus sync took.
async fn first_sync(server: &TestServer, user_id: &str, token: &str) -> (Vec<Message>, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let started = std::time::Instant::now();
    let (_client, mut events) = DeviceSpec::new(server, "fresh")
        .start(dir.path(), user_id, token)
        .await;
    let messages = sync_messages(&mut events).await;
    let elapsed = started.elapsed();
    (messages, elapsed)
}

fn check_catch_up(messages: &[Message], conversations: usize, per_conversation: usize) {
    use std::collections::HashMap;
    assert_eq!(
        messages.len(),
        conversations * per_conversation,
        "each message once"
    );
    let mut by_conversation: HashMap<&ConversationId, Vec<u64>> = HashMap::new();
    for m in messages {
        by_conversation
            .entry(&m.conversation_id)
            .or_default()
            .push(m.seq);
    }
    assert_eq!(by_conversation.len(), conversations);
    let expected: Vec<u64> = (1..=per_conversation as u64).collect();
    for (conversation, seqs) in by_conversation {
        assert_eq!(seqs, expected, "{conversation} in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_of_many_conversations_is_complete_and_ordered() {
    let (conversations, per_conversation) = (60, 30);
    let server = fast_server().await;
    populate(&server, "bob", conversations, per_conversation).await;
    let token = server.token("bob").await;
    let (messages, elapsed) = first_sync(&server, "bob", &token).await;
    check_catch_up(&messages, conversations, per_conversation);
    eprintln!("caught up {} messages in {elapsed:?}", messages.len());
}
