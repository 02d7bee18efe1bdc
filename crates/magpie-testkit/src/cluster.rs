//! Several server nodes sharing a real PostgreSQL and a real NATS, all in this process.

use magpie_server::Config;
use magpie_services::{Nats, Postgres, nats_or_skip, postgres_or_skip};

use crate::TestServer;

/// A cluster of [`TestServer`] nodes on one PostgreSQL database and one NATS server, each
/// started for this test and stopped when it is dropped.
pub struct TestCluster {
    /// The nodes, in start order.
    pub nodes: Vec<TestServer>,
    /// The NATS server they talk through.
    pub nats: Nats,
    /// The PostgreSQL server they store in.
    pub postgres: Postgres,
    database_url: String,
}

impl TestCluster {
    /// Starts PostgreSQL, NATS and `nodes` nodes, or returns `None` (saying why) when
    /// PostgreSQL or NATS is not installed and `MAGPIE_REQUIRE_SERVICES` is not set.
    pub async fn start(test: &str, nodes: usize) -> Option<Self> {
        Self::start_with(test, nodes, |_| {}).await
    }

    /// Like [`TestCluster::start`], letting `tweak` adjust every node's configuration.
    pub async fn start_with(test: &str, nodes: usize, tweak: impl Fn(&mut Config)) -> Option<Self> {
        let test_name = test.to_owned();
        let (postgres, nats) = tokio::task::spawn_blocking(move || {
            let postgres = postgres_or_skip(&test_name)?;
            let nats = nats_or_skip(&test_name)?;
            Some((postgres, nats))
        })
        .await
        .unwrap()?;
        let database_url = postgres.create_database("magpie");
        let mut cluster = Self {
            nodes: Vec::new(),
            nats,
            postgres,
            database_url,
        };
        for _ in 0..nodes {
            let node = cluster.start_node(&tweak).await;
            cluster.nodes.push(node);
        }
        Some(cluster)
    }

    /// Starts one more node on the same services (not added to `nodes`).
    pub async fn start_node(&self, tweak: &impl Fn(&mut Config)) -> TestServer {
        let (store, bus) = (self.database_url.clone(), self.nats.url());
        TestServer::start_with(|config| {
            self.configure(config, store, bus);
            tweak(config);
        })
        .await
    }

    fn configure(&self, config: &mut Config, store: String, bus: String) {
        config.store.url = Some(store);
        config.cluster.url = Some(bus);
        // Quick failure detection keeps fault tests short.
        config.cluster.heartbeat_ms = 200;
        config.cluster.node_timeout_ms = 1_000;
    }

    /// The database URL every node uses.
    pub fn database_url(&self) -> &str {
        &self.database_url
    }
}
