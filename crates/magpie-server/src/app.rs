//! The state one server instance shares across its gateway, API and services.
//!
//! Domain modules add their operations to [`App`] in their own `impl App` blocks
//! (`messaging`, `users`, `auth`), so the gateway and the REST API call the same code.

use std::sync::Arc;

use magpie_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenSigner;
use crate::cluster::Cluster;
use crate::cluster::lease::NodeLease;
use crate::config::Config;
use crate::ids::IdGenerator;
use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::users::UserCache;

/// Shared server state.
pub struct App {
    /// The configuration it was started with.
    pub config: Config,
    /// The app secret the REST API checks.
    pub(crate) app_secret: String,
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Devices online on this node.
    pub sessions: Arc<Sessions>,
    /// Effects that must reach every node: delivery, kicks, invalidations, device lists.
    pub cluster: Arc<Cluster>,
    /// Users as logins need them.
    pub users: Arc<UserCache>,
    /// Token signing and checking.
    pub signer: TokenSigner,
    /// Message ids.
    pub ids: IdGenerator,
    /// The node id the ids carry, and whether it may be used now.
    pub lease: Arc<NodeLease>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Every session task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Group rosters this node has read, for group sends and fan-out.
    pub(crate) rosters: crate::group_messages::Rosters,
    /// Delivers committed group messages, in commit order, off the store's writer.
    pub(crate) fan_outs: Arc<crate::group_messages::FanOutQueue>,
    /// Large groups' read ranges waiting for their next read-count announcement.
    pub(crate) read_counts_due: crate::group_messages::ReadCountsDue,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .field("online", &self.sessions.online())
            .finish_non_exhaustive()
    }
}
