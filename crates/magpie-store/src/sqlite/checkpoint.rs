//! WAL checkpoints on their own thread.
//!
//! SQLite's automatic checkpoint runs inside whichever commit crosses the threshold, which
//! would stall the writer — and every sender waiting on its batch — for as long as copying the
//! WAL back into the database takes. Here a dedicated connection runs passive checkpoints in
//! the background instead; they copy what they can without blocking the writer or readers.
//!
//! Passive checkpoints alone never let a busy WAL start over: by the time one finishes, new
//! frames follow the ones it copied, and the file grows without bound (4 GB in a 25-second
//! benchmark). So the writer itself, once the WAL holds more than [`RESTART_BYTES`] of frames
//! (SQLite reports the count to a WAL hook after every commit), runs a passive checkpoint
//! between two batches ([`Restarter`]): no frame can arrive while it runs, so it completes —
//! copying only what the background ones have not — and the next commit writes the WAL from
//! its start.
//!
//! The WAL *file* keeps its size across a restart (up to [`WAL_KEEP_BYTES`]): the next frames
//! overwrite blocks the file already has. Trimming it back at every restart made each new
//! frame extend the file again, and on ext4 an extending write allocates blocks and journals
//! the inode while the sync thread's fsync commits that same journal — the writer's `pwrite`s
//! blocked behind it, which was the largest source of the c2c latency tail (p99 at 5,000 msg/s
//! 48–50 ms trimmed, 18 ms kept; docs/BENCHMARKS.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::{StoreError, StoreResult};

/// How often a checkpoint runs.
const INTERVAL: Duration = Duration::from_millis(100);

/// Bytes of frames in the WAL above which the writer makes the WAL start over.
pub(super) const RESTART_BYTES: u64 = 128 * 1024 * 1024;

/// Size the WAL file is trimmed back to when it starts over, if it grew beyond it: well above
/// what [`RESTART_BYTES`] plus a second of writes leaves behind, so a busy server never trims
/// (see the module doc), while a burst that held restarts back does not keep gigabytes on disk.
pub(super) const WAL_KEEP_BYTES: u64 = 4 * RESTART_BYTES;
const _: () = assert!(WAL_KEEP_BYTES >= 2 * RESTART_BYTES);

/// How often the writer looks at how much the WAL holds.
const RESTART_CHECK: Duration = Duration::from_secs(1);

/// The writer's side: every [`RESTART_CHECK`], if the WAL holds more than [`RESTART_BYTES`] of
/// frames, checkpoint on the writer connection so the WAL can start over.
#[derive(Debug)]
pub(super) struct Restarter {
    /// Frames in the WAL after the writer's last commit (set by the connection's WAL hook).
    frames: Arc<AtomicU64>,
    frame_bytes: u64,
    last_check: Instant,
    every: Duration,
    above: u64,
}

impl Restarter {
    /// Watches the writer connection's WAL through its WAL hook (which this takes over). Set
    /// `wal_autocheckpoint` before, never after: that pragma replaces the hook, and the WAL
    /// would then never start over.
    pub(super) fn watch(conn: &mut Connection) -> StoreResult<Self> {
        let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        let frames = Arc::new(AtomicU64::new(0));
        let counted = frames.clone();
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
            counted.store(u64::try_from(pages).unwrap_or(0), Ordering::Relaxed);
            Ok(())
        }))?;
        Ok(Self {
            frames,
            // Each frame is a page and its 24-byte header.
            frame_bytes: u64::try_from(page_size).map_err(StoreError::internal)? + 24,
            last_check: Instant::now(),
            every: RESTART_CHECK,
            above: RESTART_BYTES,
        })
    }

    /// Called by the writer between batches; returns how long it checkpointed, if it did.
    pub(super) fn maybe_restart(&mut self, conn: &Connection) -> Option<Duration> {
        if self.last_check.elapsed() < self.every {
            return None;
        }
        self.last_check = Instant::now();
        if self.frames.load(Ordering::Relaxed) * self.frame_bytes <= self.above {
            return None;
        }
        let started = Instant::now();
        checkpoint_passive(conn, "writer");
        Some(started.elapsed())
    }
}

/// Copies what it can of the WAL into the database without blocking anyone; a failure is
/// logged and the next checkpoint tries again.
fn checkpoint_passive(conn: &Connection, by: &str) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, by, "sqlite: checkpoint failed");
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
                    checkpoint_passive(&conn, "background");
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
    use std::path::PathBuf;

    use super::*;

    /// A connection configured as the store's, on a fresh file, and the path of its WAL.
    fn database() -> (tempfile::TempDir, Connection, PathBuf) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("w.db");
        let conn = super::super::open_connection(&path).expect("open");
        (dir, conn, super::super::wal_path(&path))
    }

    /// A restarter on `conn` that looks at the WAL on every call.
    fn restarter_above(conn: &mut Connection, bytes: u64) -> Restarter {
        let mut restarter = Restarter::watch(conn).expect("watch");
        restarter.every = Duration::ZERO;
        restarter.above = bytes;
        restarter
    }

    #[test]
    fn the_writer_makes_a_full_wal_start_over_in_a_file_that_keeps_its_size() {
        let (_dir, mut conn, wal_path) = database();
        conn.execute_batch("CREATE TABLE t (x BLOB)")
            .expect("table");
        let limit: u64 = 64 * 1024;
        let mut restarter = restarter_above(&mut conn, limit);
        let row = vec![7u8; 1024];
        let (mut largest_file, mut restarts) = (0, 0);
        for i in 0..200 {
            conn.execute("INSERT INTO t (x) VALUES (?1)", [&row])
                .expect("insert");
            let in_wal = restarter.frames.load(Ordering::Relaxed) * restarter.frame_bytes;
            let restarted = restarter.maybe_restart(&conn).is_some();
            // What counts is what the WAL holds, not the size of its file (which is kept).
            assert_eq!(
                restarted,
                in_wal > limit,
                "insert {i}: {in_wal} bytes of frames against a threshold of {limit}"
            );
            restarts += usize::from(restarted);
            let file = std::fs::metadata(&wal_path).expect("wal").len();
            assert!(
                file >= largest_file,
                "insert {i}: the WAL file shrank from {largest_file} to {file} bytes; a restart \
                 must overwrite it, not trim it"
            );
            largest_file = file;
        }
        assert!(restarts >= 2, "200 KiB written, {restarts} restarts");
        assert!(
            largest_file < 4 * limit,
            "200 KiB written, WAL file at {largest_file} bytes: it never started over"
        );
    }

    #[test]
    fn a_wal_that_grew_past_the_keep_size_is_trimmed_when_it_starts_over() {
        let (_dir, mut conn, wal_path) = database();
        let kept: i64 = conn
            .query_row("PRAGMA journal_size_limit", [], |r| r.get(0))
            .expect("limit");
        assert_eq!(kept as u64, WAL_KEEP_BYTES);
        // The same rule, scaled down so the test writes kilobytes rather than gigabytes.
        let keep = 96 * 1024;
        conn.pragma_update(None, "journal_size_limit", keep)
            .expect("limit");
        let mut restarter = restarter_above(&mut conn, 0);
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
        assert!(
            restarter.maybe_restart(&conn).is_some(),
            "a WAL above the threshold was not checkpointed"
        );
        conn.execute("INSERT INTO t (x) VALUES (?1)", [&row])
            .expect("insert");
        let after = std::fs::metadata(&wal_path).expect("wal").len();
        assert!(
            after <= keep as u64,
            "grown to {grown} bytes, still {after} after starting over"
        );
    }
}
