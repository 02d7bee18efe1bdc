//! WAL checkpoints on their own thread.
//!
//! SQLite's automatic checkpoint runs inside whichever commit crosses the threshold, which
//! would stall the writer — and every sender waiting on its batch — for as long as copying the
//! WAL back into the database takes. Here a dedicated connection runs passive checkpoints in
//! the background instead; they copy what they can without blocking the writer or readers.
//!
//! Passive checkpoints alone never let a busy WAL start over: by the time one finishes, new
//! frames follow the ones it copied, and the file grows without bound (4 GB in a 25-second
//! benchmark). So the writer itself, once the WAL passes [`RESTART_BYTES`], runs a passive
//! checkpoint between two batches ([`Restarter`]): no frame can arrive while it runs, so it
//! completes — copying only what the background ones have not — and the next commit writes
//! the WAL from its start, trimmed to the journal size limit.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::{StoreError, StoreResult};

/// How often a checkpoint runs.
const INTERVAL: Duration = Duration::from_millis(100);

/// WAL size above which the writer makes the WAL start over.
pub(super) const RESTART_BYTES: u64 = 128 * 1024 * 1024;

/// How often the writer looks at the WAL's size.
const RESTART_CHECK: Duration = Duration::from_secs(1);

/// The writer's side: every [`RESTART_CHECK`], if the WAL is larger than [`RESTART_BYTES`],
/// checkpoint on the writer connection so the WAL can start over.
#[derive(Debug)]
pub(super) struct Restarter {
    wal: PathBuf,
    last_check: Instant,
    every: Duration,
    above: u64,
}

impl Restarter {
    pub(super) fn new(wal: PathBuf) -> Self {
        Self {
            wal,
            last_check: Instant::now(),
            every: RESTART_CHECK,
            above: RESTART_BYTES,
        }
    }

    /// Called by the writer between batches.
    pub(super) fn maybe_restart(&mut self, conn: &Connection) {
        if self.last_check.elapsed() < self.every {
            return;
        }
        self.last_check = Instant::now();
        if std::fs::metadata(&self.wal).is_ok_and(|m| m.len() > self.above)
            && let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %e, "sqlite: writer checkpoint failed");
        }
    }
}

/// Handle to the checkpoint thread; stopping it waits for a running checkpoint to finish.
#[derive(Debug)]
pub(super) struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn spawn(conn: Connection) -> StoreResult<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("magpie-sqlite-checkpoint".into())
            .spawn(move || {
                while !stopping.load(Ordering::Acquire) {
                    std::thread::park_timeout(INTERVAL);
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "sqlite: background checkpoint failed");
                    }
                }
            })
            .map_err(StoreError::internal)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub(super) fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_makes_a_growing_wal_start_over() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("w.db");
        let conn = super::super::open_connection(&path).expect("open");
        let limit = 64 * 1024;
        conn.pragma_update(None, "journal_size_limit", limit)
            .expect("limit");
        conn.execute_batch("CREATE TABLE t (x BLOB)")
            .expect("table");
        let mut restarter = Restarter {
            wal: super::super::wal_path(&path),
            last_check: Instant::now(),
            every: Duration::ZERO,
            above: limit as u64,
        };
        let row = vec![7u8; 1024];
        for _ in 0..200 {
            conn.execute("INSERT INTO t (x) VALUES (?1)", [&row])
                .expect("insert");
            restarter.maybe_restart(&conn);
        }
        let wal = std::fs::metadata(super::super::wal_path(&path))
            .expect("wal")
            .len();
        assert!(
            wal < 4 * limit as u64,
            "200 KiB written, WAL at {wal} bytes: it never started over"
        );
    }
}
