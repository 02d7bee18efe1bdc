//! Several server URLs: the configuration's checks, the order in which attempts dial them, and
//! the move to another node when one dies — with every delivery guarantee kept across it.
//!
//! A module of the `e2e` binary (see there), so it reuses its helpers.

use std::path::Path;
use std::time::Instant;

use magpie_sdk::{ClientConfig, ServerOrder};
use magpie_testkit::free_port;

use super::*;

/// A backoff so long that waiting for it even once would break every time bound below.
fn slow_backoff() -> ReconnectPolicy {
    ReconnectPolicy {
        base_delay: Duration::from_secs(30),
        max_delay: Duration::from_secs(30),
        jitter: 0.0,
        ..ReconnectPolicy::default()
    }
}

fn quick_backoff() -> ReconnectPolicy {
    ReconnectPolicy {
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
        ..ReconnectPolicy::default()
    }
}

/// The bound on a login or a move to another node when no backoff delay is due.
const NO_DELAY: Duration = Duration::from_secs(5);

/// A loopback URL nothing listens on.
fn dead_url() -> String {
    format!("ws://127.0.0.1:{}", free_port())
}

fn endpoint(url: &str) -> String {
    format!("{url}/v1/ws")
}

fn cluster_client(
    urls: &[String],
    dir: &Path,
    device: &str,
    order: ServerOrder,
    policy: ReconnectPolicy,
) -> Client {
    let config = ClientConfig::builder_with_urls(urls.iter().cloned(), dir)
        .server_order(order)
        .device_id(DeviceId::new(device).expect("device id"))
        .reconnect_policy(policy)
        .build()
        .expect("config");
    Client::new(config).expect("client")
}

/// Logs a client with several URLs in and waits for its first sync.
async fn cluster_login(
    urls: &[String],
    device: &str,
    order: ServerOrder,
    policy: ReconnectPolicy,
    id: &str,
    token: &str,
) -> Device {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = cluster_client(urls, dir.path(), device, order, policy);
    let mut events = client.events();
    client.login(user(id), token).await.expect("login");
    let synced = sync_messages(&mut events).await;
    Device {
        client,
        events,
        dir,
        synced,
    }
}

type AcceptLog = Arc<Mutex<Vec<&'static str>>>;

/// A port that accepts connections and closes them at once (a node whose server is broken),
/// writing its name to a shared log for each: the tests read the order of attempts from it.
struct Refuser {
    url: String,
    accept: AbortHandle,
}

impl Refuser {
    async fn start(name: &'static str, log: &AcceptLog) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}", listener.local_addr().expect("addr"));
        let log = Arc::clone(log);
        let accept = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                log.lock().expect("lock").push(name);
                drop(socket);
            }
        });
        Self {
            url,
            accept: accept.abort_handle(),
        }
    }
}

impl Drop for Refuser {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn logged(log: &AcceptLog) -> Vec<&'static str> {
    log.lock().expect("lock").clone()
}

fn is_connected(event: &ClientEvent) -> bool {
    matches!(
        event,
        ClientEvent::ConnectionStateChanged(ConnectionState::Connected)
    )
}

fn disconnect_reason(event: &ClientEvent) -> Option<&DisconnectReason> {
    match event {
        ClientEvent::ConnectionStateChanged(ConnectionState::Disconnected { reason }) => {
            Some(reason)
        }
        _ => None,
    }
}

#[test]
fn url_lists_are_checked_url_by_url() {
    let dir = "/tmp/magpie-sdk-unused";
    let err = ClientConfig::builder_with_urls(Vec::<String>::new(), dir)
        .build()
        .expect_err("an empty list");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("no server url"), "{err}");

    let err = ClientConfig::builder_with_urls(["ws://a:1", "chat.example.com:443", "wss://c"], dir)
        .build()
        .expect_err("a url without a scheme");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.message().contains("2 of 3") && err.message().contains("chat.example.com:443"),
        "the error names the bad url and where it is: {err}"
    );

    let err = ClientConfig::builder("ws://a:1", dir)
        .server_urls(["ws://a:1", "ftp://b"])
        .build()
        .expect_err("a bad scheme");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("ftp://b"), "{err}");

    let err = ClientConfig::builder("ws://a:1", dir)
        .server_urls(Vec::<String>::new())
        .build()
        .expect_err("the list replaced by an empty one");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);

    // The single-URL constructor still works, and its URL is the only one.
    let config = ClientConfig::builder("http://a:1", dir)
        .build()
        .expect("one url");
    assert_eq!(config.ws_urls(), ["ws://a:1/v1/ws"]);
    assert_eq!(config.ws_url(), "ws://a:1/v1/ws");
    assert_eq!(config.server_order(), ServerOrder::Shuffled);

    // Normalised, in the order given, duplicates dropped.
    let config =
        ClientConfig::builder_with_urls(["http://a:1", " wss://b/ ", "ws://a:1/v1/ws"], dir)
            .server_order(ServerOrder::AsListed)
            .build()
            .expect("a valid list");
    assert_eq!(config.ws_urls(), ["ws://a:1/v1/ws", "wss://b/v1/ws"]);
    assert_eq!(config.ws_url(), "ws://a:1/v1/ws");
    assert_eq!(config.server_order(), ServerOrder::AsListed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_login_skips_a_dead_node_without_waiting() {
    let live = fast_server().await;
    let token = live.user_with_token("alice").await;
    let dead = dead_url();

    let dir = tempfile::tempdir().expect("tempdir");
    let client = cluster_client(
        &[dead.clone(), live.ws_url()],
        dir.path(),
        "alice-1",
        ServerOrder::AsListed,
        slow_backoff(),
    );
    let mut events = client.events();
    let started = Instant::now();
    client.login(user("alice"), &token).await.expect("login");
    assert!(
        started.elapsed() < NO_DELAY,
        "the dead node cost a backoff delay: {:?}",
        started.elapsed()
    );
    assert_eq!(client.current_server(), Some(live.ws_endpoint()));

    // The dead node was tried first, and only once.
    let mut failures = Vec::new();
    loop {
        let event = wait_for(&mut events, "connected", |e| {
            is_connected(e) || disconnect_reason(e).is_some()
        })
        .await;
        if is_connected(&event) {
            break;
        }
        failures.push(disconnect_reason(&event).cloned().expect("matched"));
    }
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        matches!(&failures[0], DisconnectReason::Network(e) if e.contains(&endpoint(&dead))),
        "{failures:?}"
    );
    client.logout().await.expect("logout");
    assert_eq!(client.current_server(), None);

    // With no live node at all, the login fails once each has been tried, with no delay.
    let (dead_1, dead_2) = (dead_url(), dead_url());
    let dir = tempfile::tempdir().expect("tempdir");
    let client = cluster_client(
        &[dead_1, dead_2.clone()],
        dir.path(),
        "alice-2",
        ServerOrder::AsListed,
        slow_backoff(),
    );
    let started = Instant::now();
    let err = client
        .login(user("alice"), &token)
        .await
        .expect_err("nothing listens");
    assert!(started.elapsed() < NO_DELAY, "{:?}", started.elapsed());
    assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
    assert!(
        err.message().contains(&endpoint(&dead_2)),
        "the last node's error: {err}"
    );
    assert_eq!(client.user_id(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_dials_the_next_url_in_turn() {
    let server = fast_server().await;
    let token = server.user_with_token("alice").await;
    let log = AcceptLog::default();
    let first = Refuser::start("first", &log).await;
    let second = Refuser::start("second", &log).await;
    let urls = [first.url.clone(), second.url.clone(), server.ws_url()];

    let started = Instant::now();
    let mut alice = cluster_login(
        &urls,
        "alice-1",
        ServerOrder::AsListed,
        slow_backoff(),
        "alice",
        &token,
    )
    .await;
    assert!(started.elapsed() < NO_DELAY, "{:?}", started.elapsed());
    // A failed attempt is followed by the next URL, not the same one again.
    assert_eq!(logged(&log), ["first", "second"]);
    assert_eq!(alice.client.current_server(), Some(server.ws_endpoint()));

    // When the connection ends, the next attempt dials the URL after the live one's,
    // cycling back to the start of the list, and so on around to the live one.
    let started = Instant::now();
    alice.client.reconnect().expect("reconnect");
    wait_for(&mut alice.events, "reconnected", is_connected).await;
    assert!(started.elapsed() < NO_DELAY, "{:?}", started.elapsed());
    assert_eq!(logged(&log), ["first", "second", "first", "second"]);
    assert_eq!(alice.client.current_server(), Some(server.ws_endpoint()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_urls_log_in_wherever_the_order_starts() {
    let server = fast_server().await;
    let token = server.user_with_token("alice").await;
    let log = AcceptLog::default();
    let broken = Refuser::start("broken", &log).await;
    let urls = [broken.url.clone(), server.ws_url()];
    for round in 1..=4 {
        let started = Instant::now();
        let alice = cluster_login(
            &urls,
            "alice-1",
            ServerOrder::Shuffled,
            slow_backoff(),
            "alice",
            &token,
        )
        .await;
        assert!(
            started.elapsed() < NO_DELAY,
            "{round}: {:?}",
            started.elapsed()
        );
        assert_eq!(alice.client.current_server(), Some(server.ws_endpoint()));
        assert!(
            logged(&log).len() <= round,
            "the broken node at most once per login"
        );
        alice.client.logout().await.expect("logout");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moves_to_the_next_node_when_its_node_stops() {
    // Two independent servers with the same app secret, so one token works on both.
    let mut a = fast_server().await;
    let b = fast_server().await;
    for server in [&a, &b] {
        server.create_user("alice").await;
        server.create_user("bob").await;
    }
    let alice_token = a.token("alice").await;
    let bob_token = a.token("bob").await;

    let mut alice = cluster_login(
        &[a.ws_url(), b.ws_url()],
        "alice-1",
        ServerOrder::AsListed,
        quick_backoff(),
        "alice",
        &alice_token,
    )
    .await;
    assert_eq!(alice.client.current_server(), Some(a.ws_endpoint()));
    let mut bob = DeviceSpec::new(&b, "bob-1").login("bob", &bob_token).await;

    // A shuts down: it closes its sessions with 1012 "service restart" and stops listening.
    a.stop().await;
    let event = wait_for(&mut alice.events, "disconnect", |e| {
        disconnect_reason(e).is_some()
    })
    .await;
    assert!(
        matches!(
            disconnect_reason(&event),
            Some(DisconnectReason::ServerClosed { code: 1012, .. })
        ),
        "{event:?}"
    );
    let stopped = Instant::now();
    wait_for(&mut alice.events, "connected to b", is_connected).await;
    assert!(stopped.elapsed() < NO_DELAY, "{:?}", stopped.elapsed());
    assert_eq!(alice.client.current_server(), Some(b.ws_endpoint()));

    // And she carries on there.
    let sent = alice
        .chat()
        .send(user("bob"), MessageContent::text("via b"), None)
        .await
        .expect("send on b");
    let at_bob = bob.receive_exactly(1).await;
    assert_eq!(at_bob, [sent]);
    bob.chat()
        .send(user("alice"), MessageContent::text("hello on b"), None)
        .await
        .expect("send to alice");
    let at_alice = alice.receive_exactly(1).await;
    assert_eq!(text(&at_alice[0]), "hello on b");
    assert_eq!(alice.client.current_server(), Some(b.ws_endpoint()));
}

/// Two URLs that lead to the same server — through a relay that then dies, and directly — give
/// a change of node over shared state, as in a cluster: what was sent, missed or left
/// unanswered on the node that died is sorted out on the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_node_keeps_every_delivery_guarantee() {
    let server = fast_server().await;
    let alice_token = server.user_with_token("alice").await;
    let bob_token = server.user_with_token("bob").await;
    let proxy = Proxy::start(server.addr()).await;

    let mut alice = cluster_login(
        &[proxy.url(), server.ws_url()],
        "alice-1",
        ServerOrder::AsListed,
        quick_backoff(),
        "alice",
        &alice_token,
    )
    .await;
    assert_eq!(alice.client.current_server(), Some(endpoint(&proxy.url())));
    let mut bob = DeviceSpec::new(&server, "bob-1")
        .login("bob", &bob_token)
        .await;
    for i in 1..=2 {
        bob.chat()
            .send(
                user("alice"),
                MessageContent::text(format!("before {i}")),
                None,
            )
            .await
            .expect("send");
    }
    assert_eq!(seqs(&alice.receive_exactly(2).await), [1, 2]);

    // The node goes bad: alice's send is stored but its answer is lost, and so are bob's pushes.
    proxy.swallow_answers(true);
    let chat = alice.chat();
    let sending = tokio::spawn(async move {
        chat.send(user("bob"), MessageContent::text("during"), None)
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
    let during = bob.receive_exactly(1).await;
    for i in 1..=2 {
        bob.chat()
            .send(
                user("alice"),
                MessageContent::text(format!("missed {i}")),
                None,
            )
            .await
            .expect("send");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!sending.is_finished(), "the answer was swallowed");

    // The node dies; alice moves to the next URL by herself.
    proxy.kill();
    let stored = tokio::time::timeout(WAIT, sending)
        .await
        .expect("resolves on the next node")
        .expect("task")
        .expect("send");
    assert_eq!(stored, during[0], "the original message, not a second one");
    assert_eq!(stored.client_msg_id, client_msg_id);
    assert_eq!(alice.client.current_server(), Some(server.ws_endpoint()));

    // What she missed arrives once, in order; nothing is repeated on either side.
    let missed = alice.receive_exactly(2).await;
    assert_eq!(seqs(&missed), [4, 5]);
    assert_eq!(
        missed.iter().map(text).collect::<Vec<_>>(),
        ["missed 1", "missed 2"]
    );
    bob.receive_exactly(0).await;
    let conversation = ConversationId::c2c(&user("alice"), &user("bob"));
    let page = alice
        .chat()
        .load_messages(&conversation, None, 10)
        .await
        .expect("page");
    let local: Vec<Option<u64>> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(local, [1, 2, 3, 4, 5].map(Some));
    assert!(
        page.messages
            .iter()
            .all(|m| m.status != MessageStatus::Sending),
        "{:?}",
        page.messages
    );
    assert_eq!(alice.chat().pending_sends().await.expect("count"), 0);
}
