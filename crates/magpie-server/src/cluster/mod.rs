//! The cluster layer: how effects on one node reach devices and caches on the others.
//!
//! Owns the per-user bus subscriptions (a node listens on a user's subject exactly while it
//! serves one of the user's devices, so deliveries go only where they are needed), the
//! envelopes nodes exchange, node liveness (heartbeats; a silent node's devices are forgotten),
//! and recovery after the bus comes back (caches dropped, device lists re-exchanged, devices
//! told to resync). Domain modules call [`Cluster`] — not [`Sessions`] — for every effect that
//! must reach all nodes: delivery, kicks, cache invalidation, device lists.
//!
//! It must not know about storage or sockets. A single node runs the same code over a bus
//! without peers, which sends nothing.

pub mod bus;
pub mod envelope;
pub mod lease;
pub mod nats;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use magpie_proto::frame::{Empty, KickReason};
use magpie_proto::message::DeviceInfo;
use magpie_proto::{Codec, Event, ServerFrame, UserId};

use crate::metrics::Metrics;
use crate::sessions::{DeviceEntry, NodeId, SessionId, Sessions, SharedFrame};
use crate::users::UserCache;
use bus::{Bus, BusEvent, Subscription};
use envelope::{Envelope, Subjects};

/// Most users one `DeliverMany` envelope lists: at most 64 bytes an id, 256 KiB of ids.
const DELIVER_MANY_CHUNK: usize = 4096;

/// How long a login waits for its user's subscription to take effect on the bus.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// This node's view of the cluster.
pub struct Cluster {
    sessions: Arc<Sessions>,
    users: Arc<UserCache>,
    metrics: Arc<Metrics>,
    bus: Arc<dyn Bus>,
    /// Whether the bus has peers, asked once: it is on every delivery's path.
    has_peers: bool,
    subjects: Subjects,
    subscriptions: DashMap<UserId, Subscription>,
    /// Liveness and cache invalidation, for the node's lifetime.
    _nodes_subscription: Option<Subscription>,
    /// Distinguishes this process from an earlier holder of the same node id.
    instance: u64,
    peers: Mutex<HashMap<NodeId, Peer>>,
    node_timeout: Duration,
}

#[derive(Debug)]
struct Peer {
    instance: u64,
    last_seen: Instant,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.sessions.node())
            .field("has_peers", &self.has_peers)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// The cluster layer of a node whose local devices are `sessions`.
    pub fn new(
        sessions: Arc<Sessions>,
        users: Arc<UserCache>,
        metrics: Arc<Metrics>,
        bus: Arc<dyn Bus>,
        subjects: Subjects,
        node_timeout: Duration,
    ) -> Self {
        let has_peers = bus.has_peers();
        let nodes_subscription = has_peers.then(|| bus.subscribe(subjects.nodes()));
        Self {
            sessions,
            users,
            metrics,
            bus,
            has_peers,
            subjects,
            subscriptions: DashMap::new(),
            _nodes_subscription: nodes_subscription,
            instance: rand::random(),
            peers: Mutex::new(HashMap::new()),
            node_timeout,
        }
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.sessions.node()
    }

    /// The local device registry.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    fn publish_user(&self, user: &UserId, payload: bytes::Bytes) {
        Metrics::add(&self.metrics.bus_published, 1);
        self.bus.publish(self.subjects.user(user), payload);
    }

    fn publish_nodes(&self, envelope: &Envelope) {
        self.publish_nodes_raw(envelope.encode());
    }

    fn publish_nodes_raw(&self, payload: bytes::Bytes) {
        Metrics::add(&self.metrics.bus_published, 1);
        self.bus.publish(self.subjects.nodes(), payload);
    }

    /// Queues an event for every device of each of `users` on every node, except the local
    /// session `except`; returns how many local devices got it. One bus message reaches every
    /// node, which delivers to the listed users it serves: for fan-outs to many users (a group
    /// message), where a publish per user would cost the bus and every node far more.
    pub fn deliver_many(
        &self,
        users: &[UserId],
        frame: &Arc<SharedFrame>,
        except: Option<SessionId>,
    ) -> usize {
        let delivered = users
            .iter()
            .map(|user| self.sessions.deliver(user, frame, except))
            .sum();
        if self.has_peers {
            let json = frame.encoded(Codec::Json);
            // Chunked: NATS refuses payloads above its `max_payload` (1 MiB by default), and a
            // 100,000-member group's ids alone come near that.
            for chunk in users.chunks(DELIVER_MANY_CHUNK) {
                self.publish_nodes_raw(Envelope::deliver_many_encoded(self.node(), chunk, &json));
            }
        }
        delivered
    }

    /// Queues an event for every device of `user` on every node, except the local session
    /// `except`; returns how many local devices got it.
    pub fn deliver(
        &self,
        user: &UserId,
        frame: &Arc<SharedFrame>,
        except: Option<SessionId>,
    ) -> usize {
        let delivered = self.sessions.deliver(user, frame, except);
        if self.has_peers {
            let json = frame.encoded(Codec::Json);
            self.publish_user(user, Envelope::deliver_encoded(self.node(), user, &json));
        }
        delivered
    }

    /// Registers a device that just logged in here, applying the multi-device policy across
    /// the cluster. Returns once this node hears every later event for the user, so the
    /// device's first sync cannot miss a message. Returns how many local sessions were kicked.
    pub async fn attach(&self, user: &UserId, entry: DeviceEntry) -> usize {
        let (record, kicked) = self.sessions.register(user, entry);
        if self.has_peers {
            let ready = self
                .subscriptions
                .entry(user.clone())
                .or_insert_with(|| self.bus.subscribe(self.subjects.user(user)))
                .until_ready(SUBSCRIBE_TIMEOUT);
            // While the bus is down there is nothing to wait for: the subscription takes effect
            // when it is back, and every local device is then told to resync.
            if self.bus.is_connected() && !ready.await {
                tracing::warn!(%user, "cluster bus: subscription not confirmed; pushes from other nodes may be late until the next sync");
            }
            let envelope = Envelope::DeviceUp {
                from: self.node(),
                user: user.clone(),
                device: record,
            };
            self.publish_user(user, envelope.encode());
        }
        kicked
    }

    /// Unregisters a session that ended here.
    pub fn detach(&self, user: &UserId, session: SessionId) {
        let gone = self.sessions.unregister(user, session);
        if !self.has_peers {
            return;
        }
        let envelope = Envelope::DeviceDown {
            from: self.node(),
            user: user.clone(),
            session,
        };
        self.publish_user(user, envelope.encode());
        if gone {
            // Re-checked under the map's lock: a login may have brought the user back.
            self.subscriptions
                .remove_if(user, |_, _| !self.sessions.has_local(user));
        }
    }

    /// Kicks every device of `user` on every node; returns how many were local.
    pub fn kick_user(&self, user: &UserId, reason: KickReason, message: &str) -> usize {
        let kicked = self.sessions.kick_all(user, reason, message);
        if self.has_peers {
            let envelope = Envelope::Kick {
                from: self.node(),
                user: user.clone(),
                reason,
                message: message.to_owned(),
            };
            self.publish_user(user, envelope.encode());
        }
        kicked
    }

    /// Tells every other node that `user`'s record changed (this node's cache is the caller's).
    pub fn user_changed(&self, user: &UserId) {
        if self.has_peers {
            self.publish_nodes(&Envelope::UserChanged {
                from: self.node(),
                user: user.clone(),
            });
        }
    }

    /// The user's devices on every node, oldest first.
    pub fn devices(&self, user: &UserId) -> Vec<DeviceInfo> {
        self.sessions.devices(user)
    }

    fn publish_devices(&self, user: &UserId, reply: bool) {
        let envelope = Envelope::Devices {
            from: self.node(),
            user: user.clone(),
            devices: self.sessions.local_records(user),
            reply,
        };
        self.publish_user(user, envelope.encode());
    }

    /// Handles what the bus received.
    pub fn handle(&self, event: BusEvent) {
        match event {
            BusEvent::Message { payload, .. } => {
                Metrics::add(&self.metrics.bus_received, 1);
                match Envelope::decode(&payload) {
                    Ok(envelope) if envelope.from() != self.node() => self.apply(envelope),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cluster bus: undecodable envelope"),
                }
            }
            BusEvent::Lost => self.resync(),
        }
    }

    fn apply(&self, envelope: Envelope) {
        let from = envelope.from();
        match envelope {
            Envelope::Deliver { user, frame, .. } => {
                let delivered = self
                    .sessions
                    .deliver(&user, &SharedFrame::new(*frame), None);
                Metrics::add(&self.metrics.deliveries, delivered as u64);
            }
            Envelope::DeliverMany { users, frame, .. } => {
                let frame = SharedFrame::new(*frame);
                let delivered: usize = users
                    .iter()
                    .map(|user| self.sessions.deliver(user, &frame, None))
                    .sum();
                Metrics::add(&self.metrics.deliveries, delivered as u64);
            }
            Envelope::Kick {
                user,
                reason,
                message,
                ..
            } => {
                // Before kicking: a device reconnecting right away must meet the new record.
                self.users.invalidate(&user);
                let kicked = self.sessions.kick_all(&user, reason, &message);
                Metrics::add(&self.metrics.kicks, kicked as u64);
            }
            Envelope::DeviceUp { user, device, .. } => {
                let kicked = self.sessions.remote_up(&user, device);
                Metrics::add(&self.metrics.kicks, kicked as u64);
                if self.sessions.has_local(&user) {
                    self.publish_devices(&user, false);
                }
            }
            Envelope::DeviceDown { user, session, .. } => {
                self.sessions.remote_down(&user, from, session);
            }
            Envelope::Devices {
                user,
                devices,
                reply,
                ..
            } => {
                let kicked = self.sessions.remote_replace(&user, from, devices);
                Metrics::add(&self.metrics.kicks, kicked as u64);
                if reply && self.sessions.has_local(&user) {
                    self.publish_devices(&user, false);
                }
            }
            Envelope::UserChanged { user, .. } => self.users.invalidate(&user),
            Envelope::Heartbeat { instance, .. } => {
                let restarted = {
                    let mut peers = lock(&self.peers);
                    let previous = peers.insert(
                        from,
                        Peer {
                            instance,
                            last_seen: Instant::now(),
                        },
                    );
                    previous.is_some_and(|p| p.instance != instance)
                };
                if restarted {
                    self.sessions.remote_node_gone(from);
                }
            }
            Envelope::NodeDown { .. } => {
                lock(&self.peers).remove(&from);
                self.sessions.remote_node_gone(from);
            }
        }
    }

    /// After the bus was cut off: everything published meanwhile is lost.
    fn resync(&self) {
        Metrics::add(&self.metrics.bus_resyncs, 1);
        // Invalidations may have been missed.
        self.users.clear();
        // Other nodes' devices may have come and gone: ask again.
        self.sessions.remote_clear();
        for user in self.sessions.local_users() {
            self.publish_devices(&user, true);
        }
        // Pushes may have been missed: every local device catches up by sync.
        let frame = SharedFrame::new(ServerFrame::Event(Event::SyncRequired(Empty)));
        let told = self.sessions.deliver_everyone(&frame);
        tracing::info!(
            devices = told,
            "cluster bus back: told local devices to resync"
        );
    }

    /// Announces this node and forgets nodes that fell silent; call every heartbeat interval.
    pub fn heartbeat(&self) {
        if !self.has_peers {
            return;
        }
        self.publish_nodes(&Envelope::Heartbeat {
            from: self.node(),
            instance: self.instance,
        });
        let silent: Vec<NodeId> = {
            let mut peers = lock(&self.peers);
            let silent: Vec<NodeId> = peers
                .iter()
                .filter(|(_, p)| p.last_seen.elapsed() > self.node_timeout)
                .map(|(node, _)| *node)
                .collect();
            for node in &silent {
                peers.remove(node);
            }
            silent
        };
        for node in silent {
            tracing::warn!(node, "cluster: node fell silent; forgetting its devices");
            self.sessions.remote_node_gone(node);
        }
    }

    /// Tells the other nodes this one is leaving.
    pub fn leave(&self) {
        if self.has_peers {
            self.publish_nodes(&Envelope::NodeDown {
                from: self.node(),
                instance: self.instance,
            });
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::{Control, Delivery, Inbox};
    use bus::LocalHub;
    use magpie_proto::message::Platform;
    use magpie_proto::{DeviceId, frame::Kicked};
    use tokio::sync::mpsc::UnboundedReceiver;

    struct Node {
        cluster: Cluster,
        events: UnboundedReceiver<BusEvent>,
    }

    fn nodes(count: u16) -> Vec<Node> {
        let hub = LocalHub::new();
        // Every node joins before any starts, so each sees peers from the beginning.
        let buses: Vec<_> = (1..=count)
            .map(|node| {
                let (tx, events) = tokio::sync::mpsc::unbounded_channel();
                (node, Arc::new(hub.join(tx)), events)
            })
            .collect();
        buses
            .into_iter()
            .map(|(node, bus, events)| {
                let cluster = Cluster::new(
                    Arc::new(Sessions::new(node, 1)),
                    Arc::new(UserCache::default()),
                    Arc::new(Metrics::default()),
                    bus,
                    Subjects::new("t"),
                    Duration::from_millis(50),
                );
                Node { cluster, events }
            })
            .collect()
    }

    /// Hands every node what the bus brought it, until nothing moves.
    fn pump(nodes: &mut [Node]) {
        loop {
            let mut moved = false;
            for node in nodes.iter_mut() {
                while let Ok(event) = node.events.try_recv() {
                    node.cluster.handle(event);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn user(name: &str) -> UserId {
        UserId::new(name).expect("id")
    }

    async fn login(node: &Node, who: &str, device: &str, platform: Platform) -> Arc<Inbox> {
        let inbox = Inbox::new(8);
        let sessions = node.cluster.sessions();
        node.cluster
            .attach(
                &user(who),
                DeviceEntry {
                    session: sessions.next_session_id(),
                    device_id: DeviceId::new(device).expect("id"),
                    platform,
                    connected_at: crate::clock::now_ms(),
                    inbox: inbox.clone(),
                },
            )
            .await;
        inbox
    }

    fn next_event(inbox: &Inbox) -> Option<Event> {
        inbox.try_next_event().map(|frame| {
            let bytes = frame.encoded(Codec::Json);
            match Codec::Json.decode::<ServerFrame>(&bytes) {
                Ok(ServerFrame::Event(event)) => event,
                other => panic!("not an event: {other:?}"),
            }
        })
    }

    #[tokio::test]
    async fn events_reach_devices_on_other_nodes_and_only_once() {
        let mut nodes = nodes(3);
        let bob_phone = login(&nodes[1], "bob", "phone", Platform::Ios).await;
        let bob_laptop = login(&nodes[2], "bob", "laptop", Platform::Linux).await;
        pump(&mut nodes);

        let frame = SharedFrame::new(ServerFrame::Event(Event::TokenExpired(Empty)));
        assert_eq!(nodes[0].cluster.deliver(&user("bob"), &frame, None), 0);
        pump(&mut nodes);
        assert_eq!(next_event(&bob_phone), Some(Event::TokenExpired(Empty)));
        assert_eq!(next_event(&bob_laptop), Some(Event::TokenExpired(Empty)));
        assert_eq!(next_event(&bob_phone), None, "exactly once");
        assert_eq!(next_event(&bob_laptop), None, "exactly once");

        // Every node that serves bob lists both devices.
        for node in &nodes[1..] {
            let devices: Vec<String> = node
                .cluster
                .devices(&user("bob"))
                .into_iter()
                .map(|d| d.device_id.to_string())
                .collect();
            assert_eq!(devices, vec!["phone", "laptop"]);
        }
    }

    #[tokio::test]
    async fn one_bus_message_reaches_many_users_on_every_node_once() {
        let mut nodes = nodes(3);
        let alice_here = login(&nodes[0], "alice", "phone", Platform::Ios).await;
        let bob = login(&nodes[1], "bob", "phone", Platform::Ios).await;
        let carol = login(&nodes[2], "carol", "phone", Platform::Ios).await;
        let alice_there = login(&nodes[2], "alice", "laptop", Platform::Linux).await;
        pump(&mut nodes);
        let published = || {
            nodes
                .iter()
                .map(|n| {
                    n.cluster
                        .metrics
                        .bus_published
                        .load(std::sync::atomic::Ordering::Relaxed)
                })
                .sum::<u64>()
        };
        let before = published();
        let frame = SharedFrame::new(ServerFrame::Event(Event::TokenExpired(Empty)));
        let users = [user("alice"), user("bob"), user("carol"), user("nobody")];
        assert_eq!(nodes[0].cluster.deliver_many(&users, &frame, None), 1);
        assert_eq!(published() - before, 1, "one message for all of them");
        pump(&mut nodes);
        for inbox in [&alice_here, &bob, &carol, &alice_there] {
            assert_eq!(next_event(inbox), Some(Event::TokenExpired(Empty)));
            assert_eq!(next_event(inbox), None, "exactly once");
        }
    }

    #[tokio::test]
    async fn a_fan_out_to_more_users_than_one_envelope_holds_is_split() {
        let mut nodes = nodes(2);
        let last = login(&nodes[1], "u9999", "phone", Platform::Ios).await;
        pump(&mut nodes);
        let published = || {
            nodes[0]
                .cluster
                .metrics
                .bus_published
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let before = published();
        let users: Vec<UserId> = (0..10_000).map(|i| user(&format!("u{i}"))).collect();
        let frame = SharedFrame::new(ServerFrame::Event(Event::TokenExpired(Empty)));
        nodes[0].cluster.deliver_many(&users, &frame, None);
        assert_eq!(published() - before, 3, "10,000 ids in envelopes of 4,096");
        pump(&mut nodes);
        assert_eq!(next_event(&last), Some(Event::TokenExpired(Empty)));
        assert_eq!(next_event(&last), None);
    }

    #[tokio::test]
    async fn the_device_policy_holds_across_nodes() {
        let mut nodes = nodes(2);
        let old_phone = login(&nodes[0], "alice", "iphone", Platform::Ios).await;
        pump(&mut nodes);
        tokio::time::sleep(Duration::from_millis(2)).await;
        let new_phone = login(&nodes[1], "alice", "pixel", Platform::Android).await;
        pump(&mut nodes);
        assert!(
            matches!(
                old_phone.close_reason(),
                Some(Control::Kick(Kicked {
                    reason: KickReason::Replaced,
                    ..
                }))
            ),
            "the older mobile device on the other node is replaced"
        );
        assert_eq!(new_phone.close_reason(), None);

        // The same device id logging in on another node replaces its older session too.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let again = login(&nodes[0], "alice", "pixel", Platform::Android).await;
        pump(&mut nodes);
        assert!(matches!(
            new_phone.close_reason(),
            Some(Control::Kick(Kicked {
                reason: KickReason::SameDevice,
                ..
            }))
        ));
        assert_eq!(again.close_reason(), None);
    }

    #[tokio::test]
    async fn kicks_and_invalidations_reach_every_node() {
        let mut nodes = nodes(2);
        let carol = login(&nodes[1], "carol", "web", Platform::Web).await;
        pump(&mut nodes);
        assert_eq!(
            nodes[0]
                .cluster
                .kick_user(&user("carol"), KickReason::TokensRevoked, "revoked"),
            0
        );
        pump(&mut nodes);
        assert!(matches!(
            carol.next().await,
            Delivery::Close(Control::Kick(Kicked {
                reason: KickReason::TokensRevoked,
                ..
            }))
        ));
    }

    #[tokio::test]
    async fn a_silent_node_is_forgotten_and_a_departing_one_at_once() {
        let mut nodes = nodes(3);
        let _a = login(&nodes[0], "dan", "web", Platform::Web).await;
        let _b = login(&nodes[1], "dan", "mac", Platform::Macos).await;
        let _c = login(&nodes[2], "dan", "ios", Platform::Ios).await;
        for node in &nodes {
            node.cluster.heartbeat();
        }
        pump(&mut nodes);
        assert_eq!(nodes[0].cluster.devices(&user("dan")).len(), 3);

        nodes[2].cluster.leave();
        pump(&mut nodes);
        assert_eq!(nodes[0].cluster.devices(&user("dan")).len(), 2);

        // Node 2 falls silent: after the timeout node 1's heartbeat forgets its devices.
        tokio::time::sleep(Duration::from_millis(80)).await;
        nodes[0].cluster.heartbeat();
        assert_eq!(nodes[0].cluster.devices(&user("dan")).len(), 1);
    }

    #[tokio::test]
    async fn after_the_bus_comes_back_devices_resync_and_lists_are_rebuilt() {
        let mut nodes = nodes(2);
        let erin_web = login(&nodes[0], "erin", "web", Platform::Web).await;
        let _erin_mac = login(&nodes[1], "erin", "mac", Platform::Macos).await;
        pump(&mut nodes);
        nodes[0].cluster.handle(BusEvent::Lost);
        assert_eq!(next_event(&erin_web), Some(Event::SyncRequired(Empty)));
        pump(&mut nodes);
        assert_eq!(
            nodes[0].cluster.devices(&user("erin")).len(),
            2,
            "the other node answered the re-announcement"
        );
    }

    #[test]
    fn the_policy_is_the_same_from_every_node() {
        let device = |node, session, id: &str, platform, at| crate::sessions::DeviceRecord {
            node,
            session,
            device_id: DeviceId::new(id).expect("id"),
            platform,
            connected_at: at,
        };
        let mut devices = vec![
            device(1, 1, "a", Platform::Ios, 10),
            device(2, 1, "b", Platform::Android, 10),
            device(1, 2, "c", Platform::Web, 5),
            device(3, 9, "c", Platform::Web, 7),
        ];
        let losers = crate::sessions::policy_losers(&devices, 1);
        devices.reverse();
        assert_eq!(crate::sessions::policy_losers(&devices, 1).len(), 2);
        // Same time: the higher node id counts as newer, so node 1's mobile device loses;
        // and the older session of device "c" loses to the newer one.
        assert!(losers.contains(&(1, 1)));
        assert!(losers.contains(&(1, 2)));
    }
}
