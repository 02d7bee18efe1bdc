//! A throwaway NATS server (`nats-server`), optionally with JetStream.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::ServiceError;
use crate::process;

const SERVICE: &str = "nats-server";
const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A NATS server for one test on 127.0.0.1 at its own port. Dropping it kills the server and
/// deletes its directory (JetStream data and log).
#[derive(Debug)]
pub struct Nats {
    dir: tempfile::TempDir,
    program: PathBuf,
    jetstream: bool,
    port: u16,
    child: Option<Child>,
}

impl Nats {
    /// Starts a plain (core NATS) server.
    pub fn start() -> Result<Self, ServiceError> {
        Self::start_with(false)
    }

    /// Starts a server with JetStream enabled, storing in its temp directory.
    pub fn start_jetstream() -> Result<Self, ServiceError> {
        Self::start_with(true)
    }

    fn start_with(jetstream: bool) -> Result<Self, ServiceError> {
        let program = process::find_program("nats-server", &[]).ok_or(ServiceError::NotFound {
            program: "nats-server",
            package: "nats-server",
        })?;
        let dir = tempfile::Builder::new()
            .prefix("magpie-nats-")
            .tempdir()
            .map_err(|e| ServiceError::failed(SERVICE, format!("cannot create a temp dir: {e}")))?;
        let mut nats = Self {
            dir,
            program,
            jetstream,
            port: 0,
            child: None,
        };
        let mut last = None;
        for _ in 0..5 {
            nats.port = process::free_port()
                .map_err(|e| ServiceError::failed(SERVICE, format!("no free port: {e}")))?;
            match nats.launch() {
                Ok(()) => return Ok(nats),
                Err(e) if nats.log_tail().contains("address already in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ServiceError::failed(SERVICE, "no port could be bound")))
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server (clients see the connection drop). JetStream data is kept.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: nats-server closes its clients and flushes JetStream, then exits.
            process::stop_child(&mut child, Some("TERM"), STOP_GRACE);
        }
    }

    /// Stops the server if it runs and starts it again on the same port (and JetStream store).
    pub fn restart(&mut self) -> Result<(), ServiceError> {
        self.stop();
        self.launch()
    }

    /// Where the server's log is.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn log_tail(&self) -> String {
        process::log_tail(&self.log_path(), 30)
    }

    fn launch(&mut self) -> Result<(), ServiceError> {
        let fail =
            |n: &Self, reason: String| ServiceError::failed(SERVICE, reason).with_log(n.log_tail());
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| fail(self, format!("cannot open the log: {e}")))?;
        let log_err = log
            .try_clone()
            .map_err(|e| fail(self, format!("cannot open the log: {e}")))?;
        let mut cmd = process::command(&self.program, None);
        cmd.args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            // No HTTP monitoring port: it would be one more port to collide on.
            .args(["-m", "0"]);
        if self.jetstream {
            cmd.arg("-js")
                .arg("-sd")
                .arg(self.dir.path().join("jetstream"));
        }
        cmd.stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(self, format!("cannot run {}: {e}", self.program.display())))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(fail(self, format!("exited during start-up ({status})")));
            }
            if process::port_open(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                process::stop_child(&mut child, None, Duration::ZERO);
                return Err(fail(
                    self,
                    format!("not listening after {}s", START_TIMEOUT.as_secs()),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop_child(&mut child, None, Duration::ZERO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;

    /// Speaks just enough NATS to prove the server is a NATS server: INFO, then PING/PONG.
    fn ping(port: u16) -> bool {
        let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => return false,
        });
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() || !line.starts_with("INFO") {
            return false;
        }
        let mut writer = stream;
        if writer
            .write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
            .is_err()
        {
            return false;
        }
        line.clear();
        reader.read_line(&mut line).is_ok() && line.starts_with("PONG")
    }

    #[test]
    fn nats_starts_restarts_on_the_same_port_and_dies_on_drop() {
        let Some(mut nats) = crate::nats_or_skip("nats_starts_restarts") else {
            return;
        };
        let port = nats.port();
        assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
        assert!(ping(port));
        let first = nats.pid().expect("running");

        nats.stop();
        assert!(!process::pid_alive(first), "stop ends the process");
        assert!(!process::port_open(port), "stop closes the port");
        nats.restart().expect("restart");
        assert_eq!(nats.port(), port, "a restart keeps the port");
        assert!(ping(port));

        let pid = nats.pid().expect("running");
        assert_ne!(pid, first);
        drop(nats);
        assert!(!process::pid_alive(pid), "drop kills the server");
        assert!(!process::port_open(port), "drop closes the port");
    }

    #[test]
    fn jetstream_servers_start_too() {
        // The plain server only decides skip or go.
        let Some(_plain) = crate::nats_or_skip("jetstream_servers_start_too") else {
            return;
        };
        let nats = Nats::start_jetstream().expect("start");
        assert!(ping(nats.port()));
        let log = std::fs::read_to_string(nats.log_path()).unwrap_or_default();
        assert!(log.contains("JetStream"), "{log}");
    }
}
