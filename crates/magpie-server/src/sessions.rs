//! The registry of online devices and delivery to them.
//!
//! It owns who is online where — this node's sessions, plus a replica of the same users'
//! devices on other nodes as the cluster reports them — enforces the multi-device policy, and
//! hands events to local sessions without blocking: each session has a bounded queue, and a
//! session whose queue is full is told to close as a slow consumer (its device will reconnect
//! and sync, so nothing is lost). It knows nothing about sockets, storage or the cluster bus.
//!
//! The policy is a pure function of a user's device set (newest wins, ordered by login time,
//! then node, then session), so every node that holds the same set kicks the same devices; each
//! node only ever kicks its own sessions.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use dashmap::DashMap;
use magpie_proto::frame::{KickReason, Kicked};
use magpie_proto::message::DeviceInfo;
use magpie_proto::{Codec, DeviceId, Millis, Platform, ServerFrame, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Identifies one connection's session; never reused within a process.
pub type SessionId = u64;

/// Identifies a server node within a cluster (the snowflake node id it leased).
pub type NodeId = u16;

/// A device as every node can know it: where it is connected and what the policy needs.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The node serving it.
    pub node: NodeId,
    /// Its session on that node.
    pub session: SessionId,
    /// The device.
    pub device_id: DeviceId,
    /// Its platform.
    pub platform: Platform,
    /// Login time (ms).
    pub connected_at: Millis,
}

impl DeviceRecord {
    /// The policy's order: later logins are newer; node and session break ties the same way
    /// on every node.
    fn age_key(&self) -> (Millis, NodeId, SessionId) {
        (self.connected_at, self.node, self.session)
    }

    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            device_id: self.device_id.clone(),
            platform: self.platform,
            connected_at: self.connected_at,
        }
    }
}

/// The devices the multi-device policy removes from `devices`: every device but the newest
/// session of each device id, and of each platform class all but the newest `max_per_class`.
/// Returned as (node, session) pairs.
pub fn policy_losers(devices: &[DeviceRecord], max_per_class: usize) -> Vec<(NodeId, SessionId)> {
    let mut newest_first: Vec<&DeviceRecord> = devices.iter().collect();
    newest_first.sort_by_key(|d| std::cmp::Reverse(d.age_key()));
    let mut seen_ids: Vec<&DeviceId> = Vec::with_capacity(newest_first.len());
    // Indexed by `PlatformClass as usize`.
    let mut kept_per_class = [0usize; 4];
    let mut losers = Vec::new();
    for device in newest_first {
        if seen_ids.contains(&&device.device_id) {
            losers.push((device.node, device.session));
            continue;
        }
        seen_ids.push(&device.device_id);
        let kept = &mut kept_per_class[device.platform.class() as usize];
        if *kept >= max_per_class {
            losers.push((device.node, device.session));
        } else {
            *kept += 1;
        }
    }
    losers
}

/// A server frame shared by every session it goes to, encoded at most once per codec.
#[derive(Debug)]
pub struct SharedFrame {
    frame: ServerFrame,
    json: OnceLock<Bytes>,
    msgpack: OnceLock<Bytes>,
}

impl SharedFrame {
    /// Wraps a frame for delivery.
    pub fn new(frame: ServerFrame) -> Arc<Self> {
        Arc::new(Self {
            frame,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
        })
    }

    /// The frame's bytes in `codec`.
    pub fn encoded(&self, codec: Codec) -> Bytes {
        let cell = match codec {
            Codec::Json => &self.json,
            Codec::MsgPack => &self.msgpack,
        };
        cell.get_or_init(|| encode_frame(codec, &self.frame).unwrap_or_default())
            .clone()
    }
}

/// A server frame's bytes in `codec`, or `None` (logged) if it cannot be encoded: our own
/// types always encode, so that would be a bug, not a client problem.
pub fn encode_frame(codec: Codec, frame: &ServerFrame) -> Option<Bytes> {
    match codec.encode(frame) {
        Ok(bytes) => Some(Bytes::from(bytes)),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a server frame");
            None
        }
    }
}

/// Why the registry wants a session closed.
#[derive(Clone, Debug, PartialEq)]
pub enum Control {
    /// Kicked by policy or by the app backend.
    Kick(Kicked),
    /// The session's event queue overflowed.
    SlowConsumer,
}

/// What a session is told next.
#[derive(Debug)]
pub enum Delivery {
    /// Close, for this reason.
    Close(Control),
    /// Write this event.
    Event(Arc<SharedFrame>),
}

/// A session's inbox: its queued events and, once raised, the reason it must close — in one
/// small allocation, because every online device has one. A close reason takes precedence over
/// queued events, and the first reason raised wins.
#[derive(Debug)]
pub struct Inbox {
    state: Mutex<InboxState>,
    notify: Notify,
}

#[derive(Debug)]
struct InboxState {
    events: VecDeque<Arc<SharedFrame>>,
    capacity: usize,
    close: Option<Control>,
}

impl Inbox {
    /// An empty inbox that holds at most `capacity` events.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(InboxState {
                events: VecDeque::new(),
                capacity: capacity.max(1),
                close: None,
            }),
            notify: Notify::new(),
        })
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut InboxState) -> T) -> T {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut state)
    }

    /// Queues an event; a full inbox raises [`Control::SlowConsumer`] instead.
    fn push(&self, frame: &Arc<SharedFrame>) -> bool {
        let queued = self.with_state(|state| {
            if state.close.is_some() {
                return false;
            }
            if state.events.len() >= state.capacity {
                state.close = Some(Control::SlowConsumer);
                return false;
            }
            state.events.push_back(frame.clone());
            true
        });
        self.notify.notify_one();
        queued
    }

    /// Raises a close reason (the first one raised wins).
    pub fn close(&self, control: Control) {
        self.with_state(|state| {
            if state.close.is_none() {
                state.close = Some(control);
            }
        });
        self.notify.notify_one();
    }

    /// The close reason, if one was raised.
    pub fn close_reason(&self) -> Option<Control> {
        self.with_state(|state| state.close.clone())
    }

    /// Takes the next queued event without waiting (none once a close reason is raised).
    pub fn try_next_event(&self) -> Option<Arc<SharedFrame>> {
        self.with_state(|state| match state.close {
            Some(_) => None,
            None => state.events.pop_front(),
        })
    }

    /// Waits for the next thing to do.
    pub async fn next(&self) -> Delivery {
        loop {
            let next = self.with_state(|state| match &state.close {
                Some(control) => Some(Delivery::Close(control.clone())),
                None => state.events.pop_front().map(Delivery::Event),
            });
            if let Some(next) = next {
                return next;
            }
            // `notify_one` keeps a permit when nobody waits, so a push between the check above
            // and this wait is not lost.
            self.notify.notified().await;
        }
    }
}

/// An online device of this node as the registry holds it.
#[derive(Debug, Clone)]
pub struct DeviceEntry {
    /// The session.
    pub session: SessionId,
    /// The device.
    pub device_id: DeviceId,
    /// Its platform.
    pub platform: Platform,
    /// Login time.
    pub connected_at: Millis,
    /// Its events and close signal.
    pub inbox: Arc<Inbox>,
}

impl DeviceEntry {
    fn kick(&self, reason: KickReason, message: &str) {
        self.inbox.close(Control::Kick(Kicked {
            reason,
            message: message.to_owned(),
        }));
    }

    fn record(&self, node: NodeId) -> DeviceRecord {
        DeviceRecord {
            node,
            session: self.session,
            device_id: self.device_id.clone(),
            platform: self.platform,
            connected_at: self.connected_at,
        }
    }
}

/// Who is online, on which devices.
#[derive(Debug)]
pub struct Sessions {
    node: NodeId,
    users: DashMap<UserId, Vec<DeviceEntry>>,
    /// Devices of the users above on other nodes. Lock order: `users` before `remote`.
    remote: DashMap<UserId, Vec<DeviceRecord>>,
    next_session: AtomicU64,
    online: AtomicU64,
    max_per_class: usize,
}

impl Sessions {
    /// An empty registry of node `node` with the given multi-device policy.
    pub fn new(node: NodeId, max_per_class: usize) -> Self {
        Self {
            node,
            users: DashMap::new(),
            remote: DashMap::new(),
            next_session: AtomicU64::new(1),
            online: AtomicU64::new(0),
            max_per_class: max_per_class.max(1),
        }
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// A fresh session id.
    pub fn next_session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Devices online on this node now.
    pub fn online(&self) -> u64 {
        self.online.load(Ordering::Relaxed)
    }

    /// Adds a device, kicking the local devices the policy says it replaces: the same device
    /// on an older connection, and the oldest devices of its platform class beyond the
    /// per-class limit (counting the user's devices on other nodes too; those nodes kick their
    /// own). Returns the new device's record and how many local sessions were kicked.
    pub fn register(&self, user: &UserId, entry: DeviceEntry) -> (DeviceRecord, usize) {
        let record = entry.record(self.node);
        let kicked = {
            // Most users have one device online: do not reserve room for four.
            let mut devices = self
                .users
                .entry(user.clone())
                .or_insert_with(|| Vec::with_capacity(1));
            devices.push(entry);
            self.apply_policy(user, &mut devices)
        };
        // Kicked sessions left the map here, so their own `unregister` will not count them.
        self.online.fetch_add(1, Ordering::Relaxed);
        self.online
            .fetch_sub(kicked.len() as u64, Ordering::Relaxed);
        Self::kick_replaced(&kicked);
        (record, kicked.len())
    }

    /// Runs the policy over the user's local and remote devices; removes and returns the local
    /// losers (not yet told).
    fn apply_policy(
        &self,
        user: &UserId,
        devices: &mut Vec<DeviceEntry>,
    ) -> Vec<(DeviceEntry, KickReason)> {
        let mut all: Vec<DeviceRecord> = devices.iter().map(|d| d.record(self.node)).collect();
        if let Some(remote) = self.remote.get(user) {
            all.extend(remote.iter().cloned());
        }
        let losers = policy_losers(&all, self.max_per_class);
        let mut kicked = Vec::new();
        devices.retain(|d| {
            let lost = losers.contains(&(self.node, d.session));
            if lost {
                // A newer session of the same device id wins over this one; otherwise the
                // device lost its class slot.
                let same_device = all.iter().any(|o| {
                    o.device_id == d.device_id
                        && (o.node, o.session) != (self.node, d.session)
                        && o.age_key() > (d.connected_at, self.node, d.session)
                });
                let reason = if same_device {
                    KickReason::SameDevice
                } else {
                    KickReason::Replaced
                };
                kicked.push((d.clone(), reason));
            }
            !lost
        });
        kicked
    }

    fn kick_replaced(kicked: &[(DeviceEntry, KickReason)]) {
        for (device, reason) in kicked {
            let message = match reason {
                KickReason::SameDevice => "this device logged in on another connection",
                _ => "another device of the same kind logged in",
            };
            device.kick(*reason, message);
        }
    }

    /// Applies the policy after the remote replica of `user` changed; returns how many local
    /// sessions were kicked.
    fn reapply(&self, user: &UserId) -> usize {
        let kicked = match self.users.get_mut(user) {
            Some(mut devices) => self.apply_policy(user, &mut devices),
            None => return 0,
        };
        self.online
            .fetch_sub(kicked.len() as u64, Ordering::Relaxed);
        Self::kick_replaced(&kicked);
        kicked.len()
    }

    /// Removes a session if it is still registered (a newer session of the same device may
    /// have replaced it already). Returns whether the user has no device left on this node.
    pub fn unregister(&self, user: &UserId, session: SessionId) -> bool {
        let mut removed = false;
        if let Some(mut devices) = self.users.get_mut(user) {
            let before = devices.len();
            devices.retain(|d| d.session != session);
            removed = devices.len() < before;
        }
        if removed {
            self.online.fetch_sub(1, Ordering::Relaxed);
        }
        self.users.remove_if(user, |_, devices| devices.is_empty());
        let gone = !self.users.contains_key(user);
        if gone {
            // The replica is kept only for users this node serves.
            self.remote.remove(user);
        }
        gone
    }

    /// Whether `user` has a device on this node.
    pub fn has_local(&self, user: &UserId) -> bool {
        self.users.contains_key(user)
    }

    /// Records a device of `user` on another node (replacing what was known of that session)
    /// and applies the policy to the local devices; returns how many were kicked. Ignored for
    /// users without a device here.
    pub fn remote_up(&self, user: &UserId, device: DeviceRecord) -> usize {
        if !self.has_local(user) || device.node == self.node {
            return 0;
        }
        {
            let mut remote = self.remote.entry(user.clone()).or_default();
            remote.retain(|d| (d.node, d.session) != (device.node, device.session));
            remote.push(device);
        }
        self.reapply(user)
    }

    /// Replaces everything known about `user`'s devices on `node`; applies the policy.
    pub fn remote_replace(&self, user: &UserId, node: NodeId, devices: Vec<DeviceRecord>) -> usize {
        if !self.has_local(user) || node == self.node {
            return 0;
        }
        {
            let mut remote = self.remote.entry(user.clone()).or_default();
            remote.retain(|d| d.node != node);
            remote.extend(devices.into_iter().filter(|d| d.node == node));
        }
        self.reapply(user)
    }

    /// Forgets a session on another node.
    pub fn remote_down(&self, user: &UserId, node: NodeId, session: SessionId) {
        if let Some(mut remote) = self.remote.get_mut(user) {
            remote.retain(|d| (d.node, d.session) != (node, session));
        }
    }

    /// Forgets every device on `node` (it stopped or stopped answering).
    pub fn remote_node_gone(&self, node: NodeId) {
        self.remote.retain(|_, devices| {
            devices.retain(|d| d.node != node);
            !devices.is_empty()
        });
    }

    /// Forgets every device on other nodes (this node lost touch with the cluster).
    pub fn remote_clear(&self) {
        self.remote.clear();
    }

    /// This node's devices of `user`, as records.
    pub fn local_records(&self, user: &UserId) -> Vec<DeviceRecord> {
        self.users
            .get(user)
            .map(|devices| devices.iter().map(|d| d.record(self.node)).collect())
            .unwrap_or_default()
    }

    /// Every user with a device on this node.
    pub fn local_users(&self) -> Vec<UserId> {
        self.users.iter().map(|e| e.key().clone()).collect()
    }

    /// Queues a frame for every device of `user` on this node except `except`; returns how
    /// many got it.
    pub fn deliver(
        &self,
        user: &UserId,
        frame: &Arc<SharedFrame>,
        except: Option<SessionId>,
    ) -> usize {
        let Some(devices) = self.users.get(user) else {
            return 0;
        };
        let mut delivered = 0;
        for device in devices.iter().filter(|d| Some(d.session) != except) {
            if device.inbox.push(frame) {
                delivered += 1;
            }
        }
        delivered
    }

    /// Queues a frame for every session on this node; returns how many got it.
    pub fn deliver_everyone(&self, frame: &Arc<SharedFrame>) -> usize {
        let mut delivered = 0;
        for devices in self.users.iter() {
            for device in devices.iter() {
                if device.inbox.push(frame) {
                    delivered += 1;
                }
            }
        }
        delivered
    }

    /// The user's online devices on every node this one knows of, oldest first.
    pub fn devices(&self, user: &UserId) -> Vec<DeviceInfo> {
        let mut all: Vec<DeviceRecord> = self.local_records(user);
        if let Some(remote) = self.remote.get(user) {
            all.extend(remote.iter().cloned());
        }
        all.sort_by_key(DeviceRecord::age_key);
        all.iter().map(DeviceRecord::info).collect()
    }

    /// Kicks every device of `user` on this node; returns how many.
    pub fn kick_all(&self, user: &UserId, reason: KickReason, message: &str) -> usize {
        let devices = self.users.get(user).map(|d| d.clone()).unwrap_or_default();
        for device in &devices {
            device.kick(reason, message);
        }
        devices.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use magpie_proto::Event;
    use magpie_proto::frame::Empty;

    fn entry(sessions: &Sessions, device: &str, platform: Platform) -> (DeviceEntry, Arc<Inbox>) {
        let inbox = Inbox::new(2);
        let entry = DeviceEntry {
            session: sessions.next_session_id(),
            device_id: DeviceId::new(device).expect("id"),
            platform,
            connected_at: 0,
            inbox: inbox.clone(),
        };
        (entry, inbox)
    }

    fn kicked(entry: &DeviceEntry) -> Option<Control> {
        entry.inbox.close_reason()
    }

    fn user() -> UserId {
        UserId::new("alice").expect("id")
    }

    #[test]
    fn one_device_per_class_by_default() {
        let sessions = Sessions::new(0, 1);
        let (phone, _r1) = entry(&sessions, "phone", Platform::Ios);
        let (laptop, _r2) = entry(&sessions, "laptop", Platform::Macos);
        let (tablet, _r3) = entry(&sessions, "tablet", Platform::Android);
        assert_eq!(sessions.register(&user(), phone.clone()).1, 0);
        assert_eq!(sessions.register(&user(), laptop.clone()).1, 0);
        assert_eq!(sessions.register(&user(), tablet).1, 1);
        assert!(matches!(
            kicked(&phone),
            Some(Control::Kick(Kicked {
                reason: KickReason::Replaced,
                ..
            }))
        ));
        assert_eq!(kicked(&laptop), None);
        let online: Vec<_> = sessions
            .devices(&user())
            .into_iter()
            .map(|d| d.device_id.to_string())
            .collect();
        assert_eq!(online, vec!["laptop", "tablet"]);
        assert_eq!(sessions.online(), 2);
    }

    #[test]
    fn a_larger_limit_allows_several_and_the_same_device_always_replaces_itself() {
        let sessions = Sessions::new(0, 2);
        let (a, _ra) = entry(&sessions, "a", Platform::Web);
        let (b, _rb) = entry(&sessions, "b", Platform::Web);
        let (c, _rc) = entry(&sessions, "c", Platform::Web);
        let (b2, _rb2) = entry(&sessions, "b", Platform::Web);
        sessions.register(&user(), a.clone());
        sessions.register(&user(), b.clone());
        assert_eq!(sessions.register(&user(), c).1, 1, "the oldest goes");
        assert!(kicked(&a).is_some());
        assert_eq!(sessions.register(&user(), b2).1, 1);
        assert!(matches!(
            kicked(&b),
            Some(Control::Kick(Kicked {
                reason: KickReason::SameDevice,
                ..
            }))
        ));
        // The replaced session unregistering later must not remove its replacement.
        sessions.unregister(&user(), b.session);
        assert_eq!(sessions.devices(&user()).len(), 2);
        assert_eq!(sessions.online(), 2);
    }

    #[test]
    fn delivery_skips_the_origin_and_flags_slow_consumers() {
        let sessions = Sessions::new(0, 1);
        let (phone, phone_inbox) = entry(&sessions, "phone", Platform::Ios);
        let (laptop, laptop_inbox) = entry(&sessions, "laptop", Platform::Linux);
        sessions.register(&user(), phone.clone());
        sessions.register(&user(), laptop);
        let frame = SharedFrame::new(ServerFrame::Event(Event::TokenExpired(Empty)));
        assert_eq!(sessions.deliver(&user(), &frame, Some(phone.session)), 1);
        assert!(phone_inbox.try_next_event().is_none());
        assert!(laptop_inbox.try_next_event().is_some());
        for _ in 0..3 {
            sessions.deliver(&user(), &frame, None);
        }
        assert_eq!(
            kicked(&phone),
            Some(Control::SlowConsumer),
            "queue of 2 overflowed"
        );
        assert_eq!(
            frame.encoded(Codec::Json),
            Bytes::from_static(br#"{"type":"event","event":"token_expired","data":{}}"#)
        );
    }

    #[test]
    fn unregistering_the_last_device_forgets_the_user() {
        let sessions = Sessions::new(0, 1);
        let (phone, _rx) = entry(&sessions, "phone", Platform::Ios);
        sessions.register(&user(), phone.clone());
        assert_eq!(
            sessions.kick_all(&user(), KickReason::TokensRevoked, "revoked"),
            1
        );
        sessions.unregister(&user(), phone.session);
        assert!(sessions.devices(&user()).is_empty());
        assert_eq!(sessions.online(), 0);
        assert!(sessions.users.is_empty());
    }
}
