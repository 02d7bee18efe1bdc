//! A throwaway PostgreSQL server.
//!
//! `initdb` takes a second or two, so it runs once per machine and user into a template data
//! directory (cached in `$TMPDIR/magpie-services-cache-<uid>/`, or `$MAGPIE_SERVICES_CACHE`,
//! keyed by the server version) that every instance copies. Instances listen on 127.0.0.1 only, trust every local connection, keep their unix
//! socket in their own directory, and run with `fsync=off` (they hold test data only) unless
//! started with [`Postgres::start_durable`] for benchmarks.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::ServiceError;
use crate::process::{self, RunAs};

const SERVICE: &str = "postgres";
const PACKAGE: &str = "postgresql";
/// How long a start may take before it counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fast shutdown may take before the server is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A PostgreSQL server for one test, on 127.0.0.1 at its own port, superuser `postgres` with
/// trust authentication. Dropping it stops the server and deletes its data.
#[derive(Debug)]
pub struct Postgres {
    /// Holds `data/` (the cluster), the socket and `postgres.log`; deleted on drop.
    dir: tempfile::TempDir,
    postgres: PathBuf,
    run_as: RunAs,
    port: u16,
    child: Option<Child>,
    /// Production durability settings instead of the test ones.
    durable: bool,
}

/// The programs and the user to run them as, found once per process.
#[derive(Debug, Clone)]
struct Install {
    initdb: PathBuf,
    postgres: PathBuf,
    run_as: RunAs,
}

impl Postgres {
    /// Starts a fresh server (an empty cluster with the `postgres` database) tuned for tests:
    /// no fsync, so commits are fast and nothing survives a power loss.
    pub fn start() -> Result<Self, ServiceError> {
        Self::start_with(false)
    }

    /// Starts a fresh server with PostgreSQL's durable defaults (`fsync`, `synchronous_commit`,
    /// `full_page_writes` on) and 128 MB of shared buffers: what a benchmark of durable acks needs.
    pub fn start_durable() -> Result<Self, ServiceError> {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Result<Self, ServiceError> {
        let install = install()?;
        let template = template(&install)?;
        let dir = tempfile::Builder::new()
            .prefix("magpie-pg-")
            .tempdir()
            .map_err(|e| ServiceError::failed(SERVICE, format!("cannot create a temp dir: {e}")))?;
        process::copy_tree(&template, &dir.path().join("data"))
            .and_then(|()| process::chown_tree(dir.path(), install.run_as))
            .map_err(|e| {
                ServiceError::failed(SERVICE, format!("cannot copy the template cluster: {e}"))
            })?;
        let mut pg = Self {
            dir,
            postgres: install.postgres,
            run_as: install.run_as,
            port: 0,
            child: None,
            durable,
        };
        // A free port can be taken by someone else before the server binds it: try others.
        let mut last = None;
        for _ in 0..5 {
            pg.port = process::free_port()
                .map_err(|e| ServiceError::failed(SERVICE, format!("no free port: {e}")))?;
            match pg.launch() {
                Ok(()) => return Ok(pg),
                Err(e) if pg.log_tail().contains("could not bind") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ServiceError::failed(SERVICE, "no port could be bound")))
    }

    /// The URL of the `postgres` database, as the superuser.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The URL of database `name`, as the superuser.
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The port the server listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Creates an empty database `name` and returns its URL.
    ///
    /// # Panics
    ///
    /// If the database cannot be created (bad name, taken, server down).
    pub fn create_database(&self, name: &str) -> String {
        let quoted = name.replace('"', "\"\"");
        if let Err(e) = self.execute(&format!("CREATE DATABASE \"{quoted}\"")) {
            panic!("cannot create database {name}: {e}");
        }
        self.database_url(name)
    }

    /// Terminates every other client connection (`pg_terminate_backend`), waiting until they
    /// are gone; returns how many there were. Simulates a database failover or a network cut
    /// for the clients, with the server staying up.
    ///
    /// # Panics
    ///
    /// If the server cannot be reached.
    pub fn terminate_connections(&self) -> usize {
        let sql = "SELECT count(*) FROM (SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
                   WHERE pid <> pg_backend_pid() AND backend_type = 'client backend') t";
        match self.execute(sql) {
            Ok(count) => count.and_then(|c| c.parse().ok()).unwrap_or(0),
            Err(e) => panic!("cannot terminate connections: {e}"),
        }
    }

    /// Runs `sql` on the `postgres` database; returns the first column of the first row.
    pub fn execute(&self, sql: &str) -> Result<Option<String>, ServiceError> {
        query_first(&self.url(), sql).map_err(|e| ServiceError::failed(SERVICE, e))
    }

    /// Stops the server (fast shutdown: open transactions roll back), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop_child(&mut child, Some("INT"), STOP_GRACE);
        }
    }

    /// Stops the server if it runs and starts it again on the same port and data.
    pub fn restart(&mut self) -> Result<(), ServiceError> {
        self.stop();
        self.launch()
    }

    /// Where the server's log is.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn log_tail(&self) -> String {
        process::log_tail(&self.log_path(), 30)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the postmaster on `self.port` and waits until it accepts queries.
    fn launch(&mut self) -> Result<(), ServiceError> {
        let fail = |pg: &Self, reason: String| {
            ServiceError::failed(SERVICE, reason).with_log(pg.log_tail())
        };
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| fail(self, format!("cannot open the log: {e}")))?;
        let log_err = log
            .try_clone()
            .map_err(|e| fail(self, format!("cannot open the log: {e}")))?;
        let socket_dir = self.dir.path().display().to_string();
        let mut cmd = process::command(&self.postgres, self.run_as);
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={socket_dir}"))
            .args(["-c", "max_connections=200"])
            .args(["-c", "logging_collector=off"]);
        if self.durable {
            cmd.args(["-c", "shared_buffers=128MB"]);
        } else {
            cmd.args(["-c", "fsync=off"])
                .args(["-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"])
                .args(["-c", "shared_buffers=32MB"]);
        }
        cmd.stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(self, format!("cannot run {}: {e}", self.postgres.display())))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(fail(self, format!("exited during start-up ({status})")));
            }
            if self.ready(child.id()) && process::port_open(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                process::stop_child(&mut child, None, Duration::ZERO);
                return Err(fail(
                    self,
                    format!("not ready after {}s", START_TIMEOUT.as_secs()),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `postmaster.pid` says the server with `pid` accepts connections (the status
    /// line `pg_ctl` waits for too).
    fn ready(&self, pid: u32) -> bool {
        let Ok(text) = std::fs::read_to_string(self.data_dir().join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = text.lines().collect();
        lines.first().map(|l| l.trim()) == Some(pid.to_string().as_str())
            && lines.get(7).map(|l| l.trim()) == Some("ready")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finds the programs, once per process.
fn install() -> Result<Install, ServiceError> {
    static INSTALL: OnceLock<Result<Install, &'static str>> = OnceLock::new();
    let found = INSTALL.get_or_init(|| {
        // Debian keeps the server programs out of PATH, in a per-version directory.
        let mut extra: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|dirs| {
                dirs.filter_map(Result::ok)
                    .map(|d| d.path().join("bin"))
                    .collect()
            })
            .unwrap_or_default();
        extra.sort();
        extra.reverse();
        let initdb = process::find_program("initdb", &extra).ok_or("initdb")?;
        let postgres = process::find_program("postgres", &extra).ok_or("postgres")?;
        let run_as = if process::is_root() {
            // PostgreSQL refuses to run as root; a missing account counts as not installed.
            Some(process::lookup_user("postgres").ok_or("postgres (OS user)")?)
        } else {
            None
        };
        Ok(Install {
            initdb,
            postgres,
            run_as,
        })
    });
    found.clone().map_err(|program| ServiceError::NotFound {
        program,
        package: PACKAGE,
    })
}

/// The template cluster: made once per machine and server version, then reused.
fn template(install: &Install) -> Result<PathBuf, ServiceError> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| make_template(install))
        .clone()
        .map_err(|reason| ServiceError::failed(SERVICE, reason))
}

fn make_template(install: &Install) -> Result<PathBuf, String> {
    let version = process::command(&install.postgres, None)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", install.postgres.display()))?;
    let version: String = String::from_utf8_lossy(&version.stdout)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let cache = std::env::var_os("MAGPIE_SERVICES_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // Per user: a template made by root belongs to `postgres` and is private to it.
            let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
            std::env::temp_dir().join(format!("magpie-services-cache-{uid}"))
        });
    std::fs::create_dir_all(&cache)
        .map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    let template = cache.join(format!("pg-template-{}", version.trim_matches('_')));
    if template.join("PG_VERSION").is_file() {
        return Ok(template);
    }
    // initdb into a private directory, then rename it into place: the rename is atomic, so
    // concurrent test processes either see a complete template or build their own.
    let building = tempfile::Builder::new()
        .prefix("pg-template-building-")
        .tempdir_in(&cache)
        .map_err(|e| format!("cannot create a temp dir in {}: {e}", cache.display()))?;
    process::chown_tree(building.path(), install.run_as)
        .map_err(|e| format!("cannot chown {}: {e}", building.path().display()))?;
    let data = building.path().join("data");
    let log = building.path().join("initdb.log");
    let log_file = File::create(&log).map_err(|e| format!("cannot create the log: {e}"))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| format!("cannot create the log: {e}"))?;
    let status = process::command(&install.initdb, install.run_as)
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ])
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(log_err))
        .status()
        .map_err(|e| format!("cannot run {}: {e}", install.initdb.display()))?;
    if !status.success() {
        return Err(format!(
            "initdb failed ({status}):\n{}",
            process::log_tail(&log, 30)
        ));
    }
    match std::fs::rename(&data, &template) {
        Ok(()) => Ok(template),
        // Another process finished first: use theirs.
        Err(_) if template.join("PG_VERSION").is_file() => Ok(template),
        Err(e) => Err(format!("cannot move the template into place: {e}")),
    }
}

/// Runs `sql` over a fresh connection and returns the first column of the first row.
///
/// The services' API is synchronous but is called from async tests: the query runs on a
/// thread of its own with a private runtime, which works inside or outside a runtime.
fn query_first(url: &str, sql: &str) -> Result<Option<String>, String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    let worker = std::thread::spawn(move || -> Result<Option<String>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("cannot connect to {url}: {e}"))?;
            let driver = tokio::spawn(connection);
            let result = client.simple_query(&sql).await.map_err(|e| e.to_string());
            drop(client);
            let _ = driver.await;
            Ok(result?.into_iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            }))
        })
    });
    worker
        .join()
        .map_err(|_| "the query thread panicked".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_durable_server_fsyncs_and_a_test_server_does_not() {
        let Some(test) = crate::postgres_or_skip("durable_settings") else {
            return;
        };
        let show = |pg: &Postgres, setting: &str| {
            pg.execute(&format!("SHOW {setting}"))
                .expect("SHOW answers")
                .unwrap_or_default()
        };
        assert_eq!(show(&test, "fsync"), "off");
        let durable = Postgres::start_durable().expect("a durable server starts");
        assert_eq!(show(&durable, "fsync"), "on");
        assert_eq!(show(&durable, "synchronous_commit"), "on");
    }

    #[test]
    fn postgres_starts_restarts_on_the_same_port_and_dies_on_drop() {
        let Some(mut pg) = crate::postgres_or_skip("postgres_starts_restarts") else {
            return;
        };
        let port = pg.port();
        assert_eq!(
            pg.url(),
            format!("postgres://postgres@127.0.0.1:{port}/postgres")
        );
        assert_eq!(
            pg.execute("SELECT 1 + 1").expect("query").as_deref(),
            Some("2")
        );
        let url = pg.create_database("kept");
        assert!(url.ends_with(&format!(":{port}/kept")));
        pg.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (7)")
            .expect("write");

        let first = pg.pid().expect("running");
        pg.stop();
        assert!(!process::pid_alive(first), "stop ends the postmaster");
        assert!(!process::port_open(port), "stop closes the port");
        assert!(pg.execute("SELECT 1").is_err());
        pg.restart().expect("restart");
        assert_eq!(pg.port(), port, "a restart keeps the port");
        assert_eq!(
            pg.execute("SELECT x FROM t").expect("query").as_deref(),
            Some("7"),
            "a restart keeps the data"
        );

        let (pid, dir) = (pg.pid().expect("running"), pg.dir.path().to_owned());
        drop(pg);
        assert!(!process::pid_alive(pid), "drop stops the server");
        assert!(!process::port_open(port), "drop closes the port");
        assert!(!dir.exists(), "drop deletes the data");
    }

    #[test]
    fn instances_are_independent() {
        let Some(a) = crate::postgres_or_skip("instances_are_independent") else {
            return;
        };
        let b = Postgres::start().expect("second instance");
        assert_ne!(a.port(), b.port());
        a.create_database("only_in_a");
        let count = |pg: &Postgres| {
            pg.execute("SELECT count(*) FROM pg_database WHERE datname = 'only_in_a'")
                .expect("query")
        };
        assert_eq!(count(&a).as_deref(), Some("1"));
        assert_eq!(count(&b).as_deref(), Some("0"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn terminate_connections_drops_open_connections() {
        let Some(pg) = crate::postgres_or_skip("terminate_connections_drops_open_connections")
        else {
            return;
        };
        let (client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        let driver = tokio::spawn(connection);
        client.simple_query("SELECT 1").await.expect("query");

        let terminated = tokio::task::block_in_place(|| pg.terminate_connections());
        assert_eq!(terminated, 1, "exactly our client was connected");
        let err = client
            .simple_query("SELECT 1")
            .await
            .expect_err("the connection is gone");
        assert!(
            err.is_closed() || err.code().is_some(),
            "unexpected error: {err}"
        );
        let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
        assert!(client.is_closed());
        // The server itself is still up for new connections.
        assert_eq!(pg.execute("SELECT 1").expect("query").as_deref(), Some("1"));
    }
}
