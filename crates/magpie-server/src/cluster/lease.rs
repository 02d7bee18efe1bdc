//! This node's id, leased from the shared store so no two live nodes issue message ids with
//! the same node bits.
//!
//! The lease is renewed every third of its length. A node that could not renew for a whole
//! lease stops issuing ids (sends fail with `unavailable`) — another node may have claimed the
//! id by then — and a node that learns its lease was taken stops serving altogether, to be
//! restarted with a fresh id. The embedded store is single-process (a lock file guarantees
//! it), so a single node needs no lease and always is node 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use magpie_store::{Store, StoreResult};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::sessions::NodeId;

/// A node id and until when it may be used.
#[derive(Debug)]
pub struct NodeLease {
    node: NodeId,
    /// Local time (ms) up to which the id is certainly ours.
    valid_until: AtomicI64,
}

impl NodeLease {
    /// An id nobody else can hold (a single node on the embedded store).
    pub fn exclusive(node: NodeId) -> Arc<Self> {
        Arc::new(Self {
            node,
            valid_until: AtomicI64::new(i64::MAX),
        })
    }

    /// Claims an id from a shared store and keeps renewing it until the returned keeper is
    /// released. Cancels `on_lost` if the lease turns out to be lost.
    pub async fn claim(
        store: Arc<dyn Store>,
        holder: String,
        lease: Duration,
        on_lost: CancellationToken,
    ) -> StoreResult<(Arc<Self>, LeaseKeeper)> {
        let started = now_ms();
        let node = store.claim_node_id(&holder, lease).await?;
        let this = Arc::new(Self {
            node,
            valid_until: AtomicI64::new(started + lease.as_millis() as i64),
        });
        tracing::info!(node, %holder, "claimed node id");
        let (keeper, stop) = (this.clone(), CancellationToken::new());
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move { keeper.keep(store, holder, lease, stop, on_lost).await })
        };
        Ok((this, LeaseKeeper { stop, task }))
    }

    async fn keep(
        &self,
        store: Arc<dyn Store>,
        holder: String,
        lease: Duration,
        stop: CancellationToken,
        on_lost: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(lease / 3);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let asked = now_ms();
            match store.renew_node_id(self.node, &holder, lease).await {
                Ok(true) => self
                    .valid_until
                    .store(asked + lease.as_millis() as i64, Ordering::Release),
                Ok(false) => {
                    tracing::error!(
                        node = self.node,
                        "lost the node id lease; stopping this node"
                    );
                    self.valid_until.store(0, Ordering::Release);
                    on_lost.cancel();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, node = self.node, "cannot renew the node id lease; retrying")
                }
            }
        }
        if let Err(e) = store.release_node_id(self.node, &holder).await {
            tracing::warn!(error = %e, "cannot release the node id lease");
        }
    }

    /// The id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Whether ids may be issued now.
    pub fn is_valid(&self) -> bool {
        now_ms() < self.valid_until.load(Ordering::Acquire)
    }
}

/// Renews a claimed lease in the background; [`LeaseKeeper::release`] gives the id back.
#[derive(Debug)]
pub struct LeaseKeeper {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// Stops renewing and releases the id (call before closing the store).
    pub async fn release(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
