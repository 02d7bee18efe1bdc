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
//! - `messaging`: sending, history, sync, read state.
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
pub mod config;
mod encoded;
mod error;
mod gateway;
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

/// Opens the embedded store the configuration points at.
fn open_store(config: &Config, metrics: Arc<metrics::Metrics>) -> Result<SqliteStore, ServerError> {
    std::fs::create_dir_all(&config.data_dir)?;
    let durability = match config.store.durability {
        config::Durability::Full => magpie_store::sqlite::Durability::Full,
        config::Durability::Normal => magpie_store::sqlite::Durability::Normal,
    };
    Ok(SqliteStore::open(
        &config.data_dir.join(DATABASE_FILE),
        SqliteOptions {
            durability,
            max_batch: config.store.max_batch,
            observer: metrics,
            ..SqliteOptions::default()
        },
    )?)
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
    let store: Arc<dyn Store> = Arc::new(open_store(&config, metrics.clone())?);
    let floor = store.max_message_id().await?;
    let app = Arc::new(App {
        sessions: Arc::new(sessions::Sessions::new(config.devices.max_per_class)),
        users: users::UserCache::default(),
        signer: auth::TokenSigner::new(&app_secret),
        ids: ids::IdGenerator::new(0, floor),
        app_secret,
        store: store.clone(),
        metrics,
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
        config,
    });
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data = %app.config.data_dir.display(), "magpie is serving");

    let stopping = app.shutdown.clone();
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
            shutdown.await;
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
    store.close().await?;
    tracing::info!("magpie stopped");
    served.map_err(ServerError::from)
}
