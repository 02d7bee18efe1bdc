//! The transport between nodes: publish a payload on a subject, receive what others publish
//! on the subjects this node subscribed to.
//!
//! It knows nothing of what the payloads mean (that is the cluster module's business) and
//! never blocks its callers: publishes are queued, subscriptions are set up in the background
//! and report when they are in effect. [`LocalBus`] connects the nodes of one process (a
//! single node has no peers and sends nothing); `NatsBus` connects nodes over NATS.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::{mpsc, watch};

/// What a bus hands to its node.
#[derive(Debug)]
pub enum BusEvent {
    /// A payload published by another node on a subject this node subscribed to.
    Message {
        /// The subject.
        subject: String,
        /// The payload.
        payload: Bytes,
    },
    /// Traffic between this node and the others was lost — the connection was cut off for a
    /// while and is back, or publishes were dropped — so the node must resync.
    Lost,
}

/// Where a bus sends what it receives.
pub type Inbound = mpsc::UnboundedSender<BusEvent>;

/// A subscription; dropping it unsubscribes.
pub struct Subscription {
    ready: watch::Receiver<bool>,
    _guard: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("ready", &*self.ready.borrow())
            .finish()
    }
}

impl Subscription {
    /// A subscription that is in effect at once, unsubscribing by dropping `guard`.
    pub fn ready(guard: impl Send + Sync + 'static) -> Self {
        let (_, ready) = watch::channel(true);
        Self {
            ready,
            _guard: Box::new(guard),
        }
    }

    /// A subscription that becomes ready when `ready` turns true.
    pub fn pending(ready: watch::Receiver<bool>, guard: impl Send + Sync + 'static) -> Self {
        Self {
            ready,
            _guard: Box::new(guard),
        }
    }

    /// A waiter for the moment every node's later publishes on the subject reach this one.
    /// False if that did not happen within `timeout`.
    pub fn until_ready(&self, timeout: Duration) -> impl Future<Output = bool> + Send + 'static {
        let mut ready = self.ready.clone();
        async move {
            tokio::time::timeout(timeout, ready.wait_for(|r| *r))
                .await
                .is_ok_and(|r| r.is_ok())
        }
    }
}

/// The transport between nodes.
pub trait Bus: Send + Sync + 'static {
    /// Whether any other node can hear this bus; when not, the cluster layer sends nothing.
    fn has_peers(&self) -> bool;
    /// Whether the bus is connected right now (a subscription made while it is not cannot be
    /// confirmed until it is back).
    fn is_connected(&self) -> bool;
    /// Queues `payload` for every other node subscribed to `subject`.
    fn publish(&self, subject: String, payload: Bytes);
    /// Starts receiving `subject`.
    fn subscribe(&self, subject: String) -> Subscription;
}

/// Connects the nodes of one process: a single node's bus (no peers), or several nodes
/// started side by side in a test.
#[derive(Clone, Debug)]
pub struct LocalBus {
    hub: Arc<LocalHub>,
    member: u64,
}

/// The shared state behind the [`LocalBus`]es of one process.
#[derive(Debug, Default)]
pub struct LocalHub {
    members: DashMap<u64, Inbound>,
    subscriptions: DashMap<String, Vec<(u64, u64)>>,
    next_id: AtomicU64,
}

impl LocalHub {
    /// A hub with no nodes yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds a node that receives on `inbound`.
    pub fn join(self: &Arc<Self>, inbound: Inbound) -> LocalBus {
        let member = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.members.insert(member, inbound);
        LocalBus {
            hub: self.clone(),
            member,
        }
    }
}

impl LocalBus {
    /// The bus of a node that is alone.
    pub fn standalone() -> Self {
        let (inbound, _) = mpsc::unbounded_channel();
        LocalHub::new().join(inbound)
    }
}

struct LocalUnsubscribe {
    hub: Arc<LocalHub>,
    subject: String,
    id: u64,
}

impl Drop for LocalUnsubscribe {
    fn drop(&mut self) {
        if let Some(mut subs) = self.hub.subscriptions.get_mut(&self.subject) {
            subs.retain(|(_, id)| *id != self.id);
        }
        self.hub
            .subscriptions
            .remove_if(&self.subject, |_, subs| subs.is_empty());
    }
}

impl Bus for LocalBus {
    fn has_peers(&self) -> bool {
        self.hub.members.len() > 1
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn publish(&self, subject: String, payload: Bytes) {
        let Some(subs) = self.hub.subscriptions.get(&subject) else {
            return;
        };
        // Like NATS with `no_echo`: a node never hears itself, and hears a subject once
        // however many times it subscribed.
        let mut members: Vec<u64> = subs
            .iter()
            .map(|(m, _)| *m)
            .filter(|m| *m != self.member)
            .collect();
        drop(subs);
        members.sort_unstable();
        members.dedup();
        for member in members {
            if let Some(inbound) = self.hub.members.get(&member) {
                let _ = inbound.send(BusEvent::Message {
                    subject: subject.clone(),
                    payload: payload.clone(),
                });
            }
        }
    }

    fn subscribe(&self, subject: String) -> Subscription {
        let id = self.hub.next_id.fetch_add(1, Ordering::Relaxed);
        self.hub
            .subscriptions
            .entry(subject.clone())
            .or_default()
            .push((self.member, id));
        Subscription::ready(LocalUnsubscribe {
            hub: self.hub.clone(),
            subject,
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_nodes_hear_each_other_but_not_themselves() {
        let hub = LocalHub::new();
        let (tx1, mut rx1) = mpsc::unbounded_channel();
        let (tx2, mut rx2) = mpsc::unbounded_channel();
        let one = hub.join(tx1);
        let two = hub.join(tx2);
        assert!(one.has_peers());
        let s1 = one.subscribe("a".into());
        let _s2 = two.subscribe("a".into());
        assert!(s1.until_ready(Duration::from_millis(10)).await);

        one.publish("a".into(), Bytes::from_static(b"x"));
        assert!(matches!(rx2.try_recv(), Ok(BusEvent::Message { payload, .. }) if payload == "x"));
        assert!(rx1.try_recv().is_err(), "no echo");

        drop(s1);
        two.publish("a".into(), Bytes::from_static(b"y"));
        assert!(rx1.try_recv().is_err(), "unsubscribed");
        assert!(!LocalBus::standalone().has_peers());
    }
}
