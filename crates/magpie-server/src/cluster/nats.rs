//! The cluster bus over NATS (core NATS: at-most-once, ordered per publisher).
//!
//! One connection per node, with `no_echo` so a node never hears itself. Publishes go through
//! one queue and one task, so they leave in the order they were made; each subscription runs
//! in its own task and is in effect (`ready`) once the NATS server acknowledged it with a
//! flush. Lost connections are retried forever by the client; when one comes back, the node is
//! told ([`BusEvent::Lost`]) because whatever was published meanwhile is gone. The
//! publish queue is bounded: when NATS cannot keep up, publishes are dropped rather than held
//! in memory without limit, and the node is told the same way, so its devices resync.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use super::bus::{Bus, BusEvent, Inbound, Subscription};

/// Why the bus could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS at {url}: {reason}")]
pub struct NatsError {
    url: String,
    reason: String,
}

/// A node's connection to the NATS cluster bus.
#[derive(Debug)]
pub struct NatsBus {
    client: async_nats::Client,
    outbound: mpsc::Sender<(String, Bytes)>,
    /// Set when a publish was dropped because the queue was full.
    dropped: Arc<AtomicBool>,
    inbound: Inbound,
}

/// Publishes queued for NATS before further ones are dropped.
const PUBLISH_QUEUE: usize = 65_536;

/// How long start-up waits for NATS before giving up with an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl NatsBus {
    /// Connects to `url` as `name`; received messages and reconnections go to `inbound`.
    pub async fn connect(url: &str, name: &str, inbound: Inbound) -> Result<Self, NatsError> {
        let error = |reason: String| NatsError {
            url: url.to_owned(),
            reason,
        };
        let events = inbound.clone();
        let lost = Arc::new(AtomicBool::new(false));
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .no_echo()
            .connection_timeout(CONNECT_TIMEOUT)
            // Reconnect quickly: while the bus is down, other nodes' devices miss pushes.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(2_000))
            })
            .event_callback(move |event| {
                let (events, lost) = (events.clone(), lost.clone());
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            // The initial connection missed nothing; a reconnection did.
                            if lost.swap(false, Ordering::AcqRel) {
                                tracing::info!("cluster bus: reconnected to NATS");
                                let _ = events.send(BusEvent::Lost);
                            }
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("cluster bus: lost the NATS connection; retrying");
                            lost.store(true, Ordering::Release);
                        }
                        async_nats::Event::SlowConsumer(sid) => {
                            tracing::warn!(sid, "cluster bus: a subscription dropped messages");
                            let _ = events.send(BusEvent::Lost);
                        }
                        other => tracing::info!(event = %other, "cluster bus"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| error(e.to_string()))?;
        tokio::time::timeout(CONNECT_TIMEOUT, client.flush())
            .await
            .map_err(|_| error("no answer to a flush".into()))?
            .map_err(|e| error(e.to_string()))?;

        let (outbound, mut queue) = mpsc::channel::<(String, Bytes)>(PUBLISH_QUEUE);
        let dropped = Arc::new(AtomicBool::new(false));
        let (publisher, overflowed, events) = (client.clone(), dropped.clone(), inbound.clone());
        tokio::spawn(async move {
            while let Some((subject, payload)) = queue.recv().await {
                if let Err(e) = publisher.publish(subject, payload).await {
                    tracing::warn!(error = %e, "cluster bus: publish failed");
                }
                if queue.is_empty() && overflowed.swap(false, Ordering::AcqRel) {
                    tracing::warn!("cluster bus: publishes were dropped; devices will resync");
                    let _ = events.send(BusEvent::Lost);
                }
            }
        });
        Ok(Self {
            client,
            outbound,
            dropped,
            inbound,
        })
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Bus for NatsBus {
    fn has_peers(&self) -> bool {
        true
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn publish(&self, subject: String, payload: Bytes) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.outbound.try_send((subject, payload))
        {
            self.dropped.store(true, Ordering::Release);
        }
    }

    fn subscribe(&self, subject: String) -> Subscription {
        let (ready_tx, ready) = watch::channel(false);
        let (client, inbound) = (self.client.clone(), self.inbound.clone());
        let task = tokio::spawn(async move {
            let mut subscriber = match client.subscribe(subject.clone()).await {
                Ok(subscriber) => subscriber,
                Err(e) => {
                    tracing::warn!(error = %e, %subject, "cluster bus: cannot subscribe");
                    return;
                }
            };
            // Once the server answered a flush sent after the SUB, it routes every later
            // publish on the subject to us.
            match client.flush().await {
                Ok(()) => {
                    let _ = ready_tx.send(true);
                }
                Err(e) => tracing::warn!(error = %e, %subject, "cluster bus: flush failed"),
            }
            while let Some(message) = subscriber.next().await {
                let _ = inbound.send(BusEvent::Message {
                    subject: message.subject.to_string(),
                    payload: message.payload,
                });
            }
        });
        Subscription::pending(ready, AbortOnDrop(task.abort_handle()))
    }
}
