//! Connections: opening them (with a time limit, naming the server in errors), caching their
//! prepared statements, and a small pool for the calls that do not go through a writer.
//!
//! A connection that reports itself closed, or whose last call failed as `Unavailable`, is
//! never reused: the next call opens a fresh one, which is how the store recovers from a
//! database restart or a cut connection without being reopened.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, GenericClient, NoTls, Statement};

use super::error::{closed, timed_out};
use crate::{StoreError, StoreErrorKind, StoreResult};

/// Opens connections to one database.
#[derive(Debug)]
pub(super) struct Connector {
    config: Config,
    /// `host:port` list for error messages.
    address: String,
    timeout: Duration,
}

impl Connector {
    pub(super) fn new(url: &str, timeout: Duration) -> StoreResult<Self> {
        let mut config: Config = url.parse().map_err(|e| {
            StoreError::new(
                StoreErrorKind::Internal,
                format!("invalid PostgreSQL URL: {e}"),
            )
        })?;
        config.connect_timeout(timeout);
        // Notices a peer that vanished without closing (a cut network) on idle connections.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("magpie");
        }
        let ports = config.get_ports();
        let address = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match host {
                    Host::Tcp(name) => format!("{name}:{port}"),
                    Host::Unix(path) => format!("{}/.s.PGSQL.{port}", path.display()),
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self {
            config,
            address,
            timeout,
        })
    }

    /// Where the database is, for messages.
    pub(super) fn address(&self) -> &str {
        &self.address
    }

    /// Opens a connection; its driver runs on a task of its own until the client is dropped
    /// or the server goes away.
    pub(super) async fn connect(&self) -> StoreResult<PgConn> {
        let connecting = self.config.connect(NoTls);
        let (client, connection) = match tokio::time::timeout(self.timeout, connecting).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                let detail = e.to_string();
                // A refusal by the server itself (bad password, no such database) keeps its
                // kind (Internal: a configuration error); anything else is Unavailable.
                let kind = StoreError::from(e).kind();
                return Err(StoreError::new(
                    kind,
                    format!("cannot connect to PostgreSQL at {}: {detail}", self.address),
                ));
            }
            Err(_) => {
                return Err(StoreError::new(
                    StoreErrorKind::Unavailable,
                    format!(
                        "cannot connect to PostgreSQL at {}: no answer within {:?}",
                        self.address, self.timeout
                    ),
                ));
            }
        };
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres connection ended");
            }
        });
        Ok(PgConn {
            client,
            statements: Statements::default(),
        })
    }
}

/// Prepared statements of one connection, by their SQL. Preparing costs a round trip, so each
/// connection prepares each statement once.
#[derive(Default)]
pub(super) struct Statements(HashMap<&'static str, Statement>);

impl Statements {
    /// The prepared statement for `sql` on `client` (a connection or one of its transactions).
    pub(super) async fn get<C: GenericClient + Sync>(
        &mut self,
        client: &C,
        sql: &'static str,
    ) -> StoreResult<Statement> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare(sql).await?;
        self.0.insert(sql, statement.clone());
        Ok(statement)
    }
}

/// One connection with its statement cache. The two are separate fields so that a
/// transaction (which borrows the client) can still prepare through the cache.
pub(super) struct PgConn {
    pub(super) client: Client,
    pub(super) statements: Statements,
}

impl PgConn {
    /// Whether the connection may serve another call after one that ended in `result`.
    pub(super) fn reusable<T>(&self, result: &StoreResult<T>) -> bool {
        !self.client.is_closed()
            && !matches!(result, Err(e) if e.kind() == StoreErrorKind::Unavailable)
    }
}

/// A fixed number of connections for reads and the writes that do not need a writer's
/// ordering. Connections open on demand and are reused while healthy.
pub(super) struct Pool {
    connector: std::sync::Arc<Connector>,
    idle: Mutex<Vec<PgConn>>,
    permits: tokio::sync::Semaphore,
    timeout: Duration,
}

impl Pool {
    pub(super) fn new(
        connector: std::sync::Arc<Connector>,
        size: usize,
        timeout: Duration,
    ) -> Self {
        Self {
            connector,
            idle: Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(size.max(1)),
            timeout,
        }
    }

    /// Hands a connection to the pool (the one `connect` opened to migrate).
    pub(super) fn put(&self, conn: PgConn) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }

    /// Runs `f` on a pooled connection, within the call's time budget. When the budget runs
    /// out, the call's connection is dropped with it (it may be stuck) and the call fails as
    /// `Unavailable`.
    pub(super) async fn run<T, F>(&self, what: &str, f: F) -> StoreResult<T>
    where
        F: for<'c> FnOnce(&'c mut PgConn) -> BoxFuture<'c, StoreResult<T>> + Send,
        T: Send,
    {
        let work = async {
            let _permit = self.permits.acquire().await.map_err(|_| closed())?;
            let mut conn = match self.take_idle() {
                Some(conn) => conn,
                None => self.connector.connect().await?,
            };
            let result = f(&mut conn).await;
            if conn.reusable(&result) {
                self.put(conn);
            }
            result
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(timed_out(what, self.timeout)))
    }

    /// An idle connection that is still open, dropping the ones the server closed meanwhile.
    fn take_idle(&self) -> Option<PgConn> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(conn) = idle.pop() {
            if !conn.client.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    /// Drops every idle connection.
    pub(super) fn close(&self) {
        self.permits.close();
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}
