//! The Magpie server as a library: `run(config, listener, shutdown)` serves until `shutdown`
//! resolves. The `magpie` binary is a thin wrapper around it, and tests call it directly on a
//! random loopback port.
//!
//! # Layout
//!
//! - [`config`]: settings with defaults, TOML file, environment overrides.
//! - `api`: HTTP routing — REST API for the app backend, `/healthz`, `/metrics`, `/openapi.json`.
//! - `gateway`: the WebSocket endpoint and each connection's session loop.
//! - [`sessions`]: who is online on which device; multi-device policy; event delivery.
//! - [`cluster`]: what crosses nodes — delivery, kicks, cache invalidation, device lists —
//!   over a bus (NATS in a cluster, nothing for a single node); node id leases.
//! - `messaging`: sending, history, sync, read state.
//! - `groups`: group management — permissions, limits, the `group` events.
//! - `users`: users and tokens as the app backend manages them; login token checks.
//! - [`auth`]: token format (HS256 JWT) and verification.
//! - [`metrics`]: Prometheus counters and histograms.
//! - storage lives in the `magpie-store` crate behind its `Store` trait.
//!
//! How one message flows through these is described in `docs/ARCHITECTURE.md`.

mod api;
mod app;
pub mod auth;
mod clock;
pub mod cluster;
pub mod config;
mod encoded;
mod error;
mod gateway;
mod group_messages;
mod groups;
pub mod ids;
mod messaging;
pub mod metrics;
pub mod sessions;
pub mod users;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use magpie_store::Store;
use magpie_store::sqlite::{SqliteOptions, SqliteStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use cluster::Cluster;
use cluster::bus::{Bus, BusEvent, LocalBus};
use cluster::envelope::Subjects;
use cluster::lease::{LeaseKeeper, NodeLease};
use cluster::nats::NatsBus;

pub use app::App;
pub use config::Config;
pub use error::Error;

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "magpie.db";

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The store could not be opened or closed.
    #[error("storage: {0}")]
    Store(#[from] magpie_store::StoreError),
    /// The cluster bus could not be reached.
    #[error("cluster: {0}")]
    Cluster(#[from] cluster::nats::NatsError),
    /// Serving failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Connections the kernel queues before `accept`; the effective value is capped by
/// `net.core.somaxconn` (4096 on current kernels).
pub const LISTEN_BACKLOG: u32 = 8192;

/// Binds a listener with a deep accept queue, so a burst of connections — every device
/// reconnecting after a restart — waits in the kernel instead of being dropped and retried
/// a second later.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Opens the store the configuration points at: PostgreSQL when `store.url` is set, the
/// embedded SQLite file otherwise.
async fn open_store(
    config: &Config,
    metrics: Arc<metrics::Metrics>,
) -> Result<Arc<dyn Store>, ServerError> {
    if let Some(url) = &config.store.url {
        // Appends get their own connections (one per writer), reads and other writes the rest.
        let writers = (config.store.max_connections / 2).clamp(1, 4);
        let store = magpie_store::postgres::PgStore::connect(
            url,
            magpie_store::postgres::PgOptions {
                writers,
                read_connections: config.store.max_connections - writers,
                max_batch: config.store.max_batch,
                observer: metrics,
                ..magpie_store::postgres::PgOptions::default()
            },
        )
        .await?;
        return Ok(Arc::new(store));
    }
    std::fs::create_dir_all(&config.data_dir)?;
    let durability = match config.store.durability {
        config::Durability::Full => magpie_store::sqlite::Durability::Full,
        config::Durability::Normal => magpie_store::sqlite::Durability::Normal,
    };
    Ok(Arc::new(SqliteStore::open(
        &config.data_dir.join(DATABASE_FILE),
        SqliteOptions {
            durability,
            max_batch: config.store.max_batch,
            observer: metrics,
            ..SqliteOptions::default()
        },
    )?))
}

/// This node's id: leased from a shared store, or 0 for the embedded one.
async fn node_lease(
    config: &Config,
    store: &Arc<dyn Store>,
    on_lost: CancellationToken,
) -> Result<(Arc<NodeLease>, Option<LeaseKeeper>), ServerError> {
    if config.store.url.is_none() {
        return Ok((NodeLease::exclusive(0), None));
    }
    let holder = format!(
        "{}:{}:{:016x}",
        config.listen,
        std::process::id(),
        rand::random::<u64>()
    );
    let lease = Duration::from_millis(config.cluster.node_lease_ms);
    let (lease, keeper) = NodeLease::claim(store.clone(), holder, lease, on_lost).await?;
    Ok((lease, Some(keeper)))
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting, closes every session
/// with a restart code (clients reconnect), flushes pending writes and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    let (app_secret, _) = config.resolve_app_secret()?;
    let metrics = Arc::new(metrics::Metrics::default());
    let store = open_store(&config, metrics.clone()).await?;
    let stopping = CancellationToken::new();
    let (lease, keeper) = node_lease(&config, &store, stopping.clone()).await?;
    let floor = store.max_message_id().await?;

    let (inbound, mut bus_events) = tokio::sync::mpsc::unbounded_channel::<BusEvent>();
    let bus: Arc<dyn Bus> = match &config.cluster.url {
        Some(url) => {
            let name = format!("magpie-node-{}", lease.node());
            Arc::new(NatsBus::connect(url, &name, inbound).await?)
        }
        None => Arc::new(LocalBus::standalone()),
    };
    let sessions = Arc::new(sessions::Sessions::new(
        lease.node(),
        config.devices.max_per_class,
    ));
    let users = Arc::new(users::UserCache::default());
    let cluster = Arc::new(Cluster::new(
        sessions.clone(),
        users.clone(),
        metrics.clone(),
        bus,
        Subjects::new(&config.cluster.subject_prefix),
        Duration::from_millis(config.cluster.node_timeout_ms),
    ));
    let fan_outs = group_messages::FanOutQueue::start(cluster.clone(), metrics.clone());
    let app = Arc::new(App {
        sessions,
        cluster: cluster.clone(),
        users,
        signer: auth::TokenSigner::new(&app_secret),
        ids: ids::IdGenerator::new(lease.node(), floor),
        lease,
        app_secret,
        store: store.clone(),
        metrics,
        shutdown: stopping.clone(),
        tracker: TaskTracker::new(),
        rosters: group_messages::Rosters::default(),
        fan_outs: Arc::new(fan_outs),
        read_counts_due: Default::default(),
        config,
    });
    let addr = listener.local_addr()?;
    tracing::info!(%addr, node = app.cluster.node(), "magpie is serving");

    // The cluster's background work: what the bus brings, and heartbeats.
    let background = CancellationToken::new();
    let bus_task = {
        let (cluster, stop) = (cluster.clone(), background.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    event = bus_events.recv() => match event {
                        Some(event) => cluster.handle(event),
                        None => break,
                    },
                }
            }
        })
    };
    let heartbeat_task = {
        let (cluster, stop) = (cluster.clone(), background.clone());
        let every = Duration::from_millis(app.config.cluster.heartbeat_ms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => cluster.heartbeat(),
                }
            }
        })
    };

    let router = api::router(app.clone());
    // Frames are small and flushed deliberately: Nagle's algorithm would hold a second frame
    // until the peer's delayed ACK (40 ms on Linux) acknowledges the first.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = shutdown => {}
                // The node itself decided to stop (it lost its node id lease).
                _ = stopping.cancelled() => {}
            }
            tracing::info!("shutting down: closing sessions and flushing writes");
            stopping.cancel();
        })
        .await;

    app.shutdown.cancel();
    app.tracker.close();
    let grace = Duration::from_millis(app.config.gateway.shutdown_grace_ms);
    if tokio::time::timeout(grace, app.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some sessions did not close within the shutdown grace period");
    }
    cluster.leave();
    background.cancel();
    let _ = tokio::join!(bus_task, heartbeat_task);
    if let Some(keeper) = keeper {
        keeper.release().await;
    }
    store.close().await?;
    tracing::info!("magpie stopped");
    served.map_err(ServerError::from)
}
