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
//! the WAL from its start.
//!
//! The WAL *file* keeps its size across a restart (up to [`WAL_KEEP_BYTES`]): the next frames
//! overwrite blocks the file already has. Trimming it back at every restart made each new
//! frame extend the file again, and on ext4 an extending write allocates blocks and journals
//! the inode while the sync thread's fsync commits that same journal — the writer's `pwrite`s
//! blocked behind it, which was the largest source of the c2c latency tail (p99 at 5,000 msg/s
//! 48–50 ms trimmed, 18 ms kept; docs/BENCHMARKS.md).

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

/// Size the WAL file is trimmed back to when it starts over, if it grew beyond it: well above
/// what [`RESTART_BYTES`] plus a second of writes leaves behind, so a busy server never trims
/// (see the module doc), while a burst that held restarts back does not keep gigabytes on disk.
pub(super) const WAL_KEEP_BYTES: u64 = 4 * RESTART_BYTES;
const _: () = assert!(WAL_KEEP_BYTES >= 2 * RESTART_BYTES);

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

    /// A connection configured as the store's, on a fresh file, and the path of its WAL.
    fn database() -> (tempfile::TempDir, Connection, PathBuf) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("w.db");
        let conn = super::super::open_connection(&path).expect("open");
        (dir, conn, super::super::wal_path(&path))
    }

    /// A restarter that looks at the WAL on every call.
    fn restarter_above(wal: &std::path::Path, bytes: u64) -> Restarter {
        Restarter {
            wal: wal.to_owned(),
            last_check: Instant::now(),
            every: Duration::ZERO,
            above: bytes,
        }
    }

    /// Frames currently in the WAL (a passive checkpoint reports them).
    fn frames_in_wal(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
            .expect("checkpoint")
    }

    #[test]
    fn the_writer_makes_a_growing_wal_start_over_in_a_file_that_keeps_its_size() {
        let (_dir, conn, wal_path) = database();
        conn.execute_batch("CREATE TABLE t (x BLOB)")
            .expect("table");
        let limit: u64 = 64 * 1024;
        let mut restarter = restarter_above(&wal_path, limit);
        let row = vec![7u8; 1024];
        let mut largest_file = 0;
        for i in 0..200 {
            conn.execute("INSERT INTO t (x) VALUES (?1)", [&row])
                .expect("insert");
            restarter.maybe_restart(&conn);
            let file = std::fs::metadata(&wal_path).expect("wal").len();
            assert!(
                file >= largest_file,
                "insert {i}: the WAL file shrank from {largest_file} to {file} bytes; a restart \
                 must overwrite it, not trim it"
            );
            largest_file = file;
        }
        assert!(
            largest_file < 4 * limit,
            "200 KiB written, WAL file at {largest_file} bytes: it never started over"
        );
        let frames = frames_in_wal(&conn);
        assert!(
            (frames as u64) * 4096 < 2 * limit,
            "{frames} frames in the WAL after its restarts"
        );
    }

    #[test]
    fn a_wal_that_grew_past_the_keep_size_is_trimmed_when_it_starts_over() {
        let (_dir, conn, wal_path) = database();
        let kept: i64 = conn
            .query_row("PRAGMA journal_size_limit", [], |r| r.get(0))
            .expect("limit");
        assert_eq!(kept as u64, WAL_KEEP_BYTES);
        // The same rule, scaled down so the test writes kilobytes rather than gigabytes.
        let keep = 96 * 1024;
        conn.pragma_update(None, "journal_size_limit", keep)
            .expect("limit");
        conn.execute_batch("CREATE TABLE t (x BLOB)")
            .expect("table");
        let row = vec![7u8; 1024];
        conn.execute_batch("BEGIN").expect("begin");
        for _ in 0..100 {
            conn.execute("INSERT INTO t (x) VALUES (?1)", [&row])
                .expect("insert");
        }
        conn.execute_batch("COMMIT").expect("commit");
        let grown = std::fs::metadata(&wal_path).expect("wal").len();
        assert!(grown > keep as u64, "the WAL never grew: {grown} bytes");
        let mut restarter = restarter_above(&wal_path, 0);
        restarter.maybe_restart(&conn);
        conn.execute("INSERT INTO t (x) VALUES (?1)", [&row])
            .expect("insert");
        let after = std::fs::metadata(&wal_path).expect("wal").len();
        assert!(
            after <= keep as u64,
            "grown to {grown} bytes, still {after} after starting over"
        );
    }
}
