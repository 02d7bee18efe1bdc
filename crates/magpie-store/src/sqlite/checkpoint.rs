//! WAL checkpoints on their own thread.
//!
//! SQLite's automatic checkpoint runs inside whichever commit crosses the threshold, which
//! would stall the writer — and every sender waiting on its batch — for as long as copying the
//! WAL back into the database takes. Here a dedicated connection runs passive checkpoints in
//! the background instead; they copy what they can without blocking the writer or readers,
//! and the writer reuses the WAL from the start once a checkpoint has caught up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::{StoreError, StoreResult};

/// How often a checkpoint runs.
const INTERVAL: Duration = Duration::from_millis(100);

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
