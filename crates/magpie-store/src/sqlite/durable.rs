//! Making commits durable off the writer's path, and keeping reads behind durability.
//!
//! SQLite runs with `synchronous=NORMAL`: a commit writes its WAL frames but does not fsync
//! them. The writer hands every committed batch to the [`Syncer`], a thread of its own that
//! fsyncs the WAL once for all the batches that queued up meanwhile and only then answers their
//! writers and runs their commit hooks (deliveries), in commit order. While it waits on the
//! disk the writer already applies the next batch: on a disk where an fsync takes milliseconds
//! the writer no longer sits idle for it (ADR 0008).
//!
//! Reads must not see what is not durable yet: a message read through `sync` and then lost to
//! a power cut would leave a device holding a seq the server gives to another message. So
//! batches are numbered (generations), the writer announces a batch's number *before* its
//! `COMMIT`, and a read, once done, waits until the generation announced at that moment is
//! durable ([`Durable::wait_after_read`]): whatever the read saw was committed before it ended,
//! so its generation was announced before then. A read made while nothing waits for the
//! disk — the usual case when the writer is idle — does not wait. Numbers are never reused:
//! a batch that rolls back still uses up its number, and its handing over marks it done.
//!
//! This module must not decide what a write does: it only orders answers after the disk.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread::{JoinHandle, Thread};

use tokio::sync::watch;

use super::writer::Completion;
use crate::{StoreError, StoreErrorKind, StoreResult};

/// Makes everything committed so far durable.
pub(super) type SyncFn = Box<dyn FnMut() -> std::io::Result<()> + Send>;

/// Fsyncs the WAL file at `wal`. The file is opened on first use and kept open: SQLite keeps
/// the same file (it truncates it, never replaces it) while the store is open. Until it
/// exists there is nothing to sync.
pub(super) fn sync_wal(wal: PathBuf) -> SyncFn {
    let mut file: Option<std::fs::File> = None;
    Box::new(move || {
        let file = match &mut file {
            Some(file) => file,
            None => match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&wal)
            {
                Ok(opened) => file.insert(opened),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            },
        };
        file.sync_data()
    })
}

/// A sync that does nothing: `Durability::Normal`, where an ack only has to survive a crash
/// of the process, which the OS's page cache already guarantees.
pub(super) fn no_sync() -> SyncFn {
    Box::new(|| Ok(()))
}

/// The writer's announcement of the batch it is about to commit.
#[derive(Debug, Default)]
pub(super) struct Announced(AtomicU64);

impl Announced {
    /// Called before the `COMMIT` of batch `generation`.
    pub(super) fn announce(&self, generation: u64) {
        self.0.store(generation, Ordering::SeqCst);
    }
}

/// What readers wait on: the highest durable generation and the last announced one.
#[derive(Clone, Debug)]
pub(super) struct Durable {
    durable: watch::Receiver<u64>,
    announced: Arc<Announced>,
}

impl Durable {
    /// Called when a read has finished: waits until everything it can have seen is durable.
    pub(super) async fn wait_after_read(&self) -> StoreResult<()> {
        let generation = self.announced.0.load(Ordering::SeqCst);
        if *self.durable.borrow() >= generation {
            return Ok(());
        }
        let mut durable = self.durable.clone();
        durable
            .wait_for(|d| *d >= generation)
            .await
            .map(drop)
            .map_err(|_| StoreError::new(StoreErrorKind::Unavailable, "store is closed"))
    }
}

/// A batch the writer has finished: committed (`outcome` is `None`) or rolled back.
pub(super) struct Finished {
    /// The batch's number.
    pub(super) generation: u64,
    pub(super) outcome: Option<StoreError>,
    pub(super) completions: Vec<Completion>,
}

/// Handle to the sync thread. Dropping it (or [`Syncer::finish`]) answers everything handed
/// to it first.
pub(super) struct Syncer {
    tx: Option<mpsc::Sender<Finished>>,
    thread: Option<JoinHandle<()>>,
    idle: Arc<Idle>,
}

/// Whether the sync thread has batches to answer, and whom to wake when it has none left.
#[derive(Default)]
struct Idle {
    /// Batches handed over and not answered yet.
    pending: AtomicUsize,
    writer: OnceLock<Thread>,
}

impl Syncer {
    /// Starts the thread. Everything already in the database counts as durable once `sync`
    /// has run once, which happens here, before the first write; batches are numbered from 1.
    pub(super) fn spawn(mut sync: SyncFn) -> StoreResult<(Self, Durable, Arc<Announced>)> {
        sync().map_err(StoreError::internal)?;
        let (durable_tx, durable_rx) = watch::channel(0);
        let announced = Arc::new(Announced::default());
        let (tx, rx) = mpsc::channel::<Finished>();
        let idle = Arc::new(Idle::default());
        let thread = std::thread::Builder::new()
            .name("magpie-sqlite-sync".into())
            .spawn({
                let idle = idle.clone();
                move || run(rx, sync, &durable_tx, &idle)
            })
            .map_err(StoreError::internal)?;
        Ok((
            Self {
                tx: Some(tx),
                thread: Some(thread),
                idle,
            },
            Durable {
                durable: durable_rx,
                announced: announced.clone(),
            },
            announced,
        ))
    }

    /// Whether every batch handed over has been answered.
    pub(super) fn is_idle(&self) -> bool {
        self.idle.pending.load(Ordering::Acquire) == 0
    }

    /// Unpark `writer` whenever the sync thread runs out of batches.
    pub(super) fn wake_when_idle(&self, writer: Thread) {
        let _ = self.idle.writer.set(writer);
    }

    /// Hands a finished batch over; its writers are answered once it is durable.
    pub(super) fn hand_over(&self, finished: Finished) {
        let Some(tx) = &self.tx else { return };
        self.idle.pending.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::SendError(finished)) = tx.send(finished) {
            self.idle.pending.fetch_sub(1, Ordering::AcqRel);
            // The thread is gone (it panicked): answer without the guarantee rather than never.
            let e = StoreError::new(StoreErrorKind::Internal, "the sync thread stopped");
            finished.completions.into_iter().for_each(|c| c(Some(&e)));
        }
    }

    /// Answers everything handed over so far and stops the thread.
    pub(super) fn finish(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.finish();
    }
}

fn run(rx: mpsc::Receiver<Finished>, mut sync: SyncFn, durable: &watch::Sender<u64>, idle: &Idle) {
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        batches.extend(rx.try_iter());
        let committed = batches.iter().any(|b| b.outcome.is_none());
        let sync_error = if committed {
            sync().err().map(|e| {
                tracing::error!(error = %e, "sqlite: fsync of the WAL failed; failing its writes");
                StoreError::new(
                    StoreErrorKind::Unavailable,
                    format!("the write could not be made durable ({e}); retry it"),
                )
            })
        } else {
            None
        };
        // Readers go first: a writer answered below may read its own write right away.
        if let Some(last) = batches.iter().map(|b| b.generation).max() {
            durable.send_if_modified(|d| {
                let advanced = last > *d;
                *d = (*d).max(last);
                advanced
            });
        }
        let answered = batches.len();
        for batch in batches {
            let error = batch.outcome.or_else(|| {
                sync_error
                    .as_ref()
                    .map(|e| StoreError::new(e.kind(), e.message()))
            });
            batch
                .completions
                .into_iter()
                .for_each(|complete| complete(error.as_ref()));
        }
        if idle.pending.fetch_sub(answered, Ordering::AcqRel) == answered
            && let Some(writer) = idle.writer.get()
        {
            writer.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    use super::super::{SqliteOptions, SqliteStore, lock_exclusively};
    use super::*;
    use crate::testsuite::{create_users, first_messages, new_message};
    use crate::{OnCommit, Store};

    /// A disk whose fsyncs can be held back or made to fail.
    #[derive(Default)]
    struct Disk {
        held: Mutex<bool>,
        released: Condvar,
        failing: AtomicBool,
    }

    impl Disk {
        fn sync_fn(self: &Arc<Self>) -> SyncFn {
            let disk = self.clone();
            Box::new(move || {
                let mut held = disk.held.lock().expect("lock");
                while *held {
                    held = disk.released.wait(held).expect("wait");
                }
                if disk.failing.load(Ordering::SeqCst) {
                    return Err(std::io::Error::other("injected fsync failure"));
                }
                Ok(())
            })
        }

        fn hold(&self, held: bool) {
            *self.held.lock().expect("lock") = held;
            self.released.notify_all();
        }
    }

    fn open(dir: &tempfile::TempDir, disk: &Arc<Disk>) -> SqliteStore {
        let path = dir.path().join("magpie.db");
        let lock = lock_exclusively(&path).expect("lock");
        SqliteStore::open_with_sync(&path, SqliteOptions::default(), disk.sync_fn(), lock)
            .expect("open")
    }

    fn history(store: &Arc<SqliteStore>) -> tokio::task::JoinHandle<Vec<u64>> {
        let store = store.clone();
        tokio::spawn(async move {
            let page = first_messages(store.as_ref(), "alice", "bob", 50).await;
            page.messages.iter().map(|m| m.seq).collect()
        })
    }

    fn flag_hook(flag: &Arc<AtomicBool>) -> OnCommit {
        let flag = flag.clone();
        Box::new(move |_| flag.store(true, Ordering::SeqCst))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_are_answered_delivered_and_readable_only_once_on_disk() {
        let (dir, disk) = (tempfile::tempdir().expect("dir"), Arc::new(Disk::default()));
        let store = Arc::new(open(&dir, &disk));
        create_users(store.as_ref(), &["alice", "bob"]).await;
        store
            .append_message(new_message("alice", "bob", "m1", "one", 1), None)
            .await
            .expect("m1");

        disk.hold(true);
        let hooked = Arc::new(AtomicBool::new(false));
        let appending = tokio::spawn({
            let store = store.clone();
            let hook = flag_hook(&hooked);
            async move {
                store
                    .append_message(new_message("alice", "bob", "m2", "two", 2), Some(hook))
                    .await
            }
        });
        // Committed by now, but not on disk: nobody may learn of it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let reading = history(&store);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!appending.is_finished(), "answered before the fsync");
        assert!(
            !reading.is_finished(),
            "a read saw a write before the fsync"
        );
        assert!(!hooked.load(Ordering::SeqCst), "delivered before the fsync");

        disk.hold(false);
        let appended = appending.await.expect("task").expect("m2");
        assert_eq!(appended.message.seq, 2);
        assert!(hooked.load(Ordering::SeqCst));
        assert_eq!(reading.await.expect("task"), vec![1, 2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_fsync_fails_its_writes_and_a_retry_finds_the_message() {
        let (dir, disk) = (tempfile::tempdir().expect("dir"), Arc::new(Disk::default()));
        let store = Arc::new(open(&dir, &disk));
        create_users(store.as_ref(), &["alice", "bob"]).await;

        disk.failing.store(true, Ordering::SeqCst);
        let hooked = Arc::new(AtomicBool::new(false));
        let error = store
            .append_message(
                new_message("alice", "bob", "m1", "one", 1),
                Some(flag_hook(&hooked)),
            )
            .await
            .expect_err("an fsync failure must fail the write");
        assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
        assert!(
            !hooked.load(Ordering::SeqCst),
            "delivered without being on disk"
        );

        // The client retries with the same id once the disk is back: one message, seq 1.
        disk.failing.store(false, Ordering::SeqCst);
        let retried = store
            .append_message(new_message("alice", "bob", "m1", "one", 1), None)
            .await
            .expect("retry");
        assert_eq!((retried.message.seq, retried.duplicate), (1, true));
        assert_eq!(history(&store).await.expect("task"), vec![1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_answers_every_write_handed_to_the_disk() {
        let (dir, disk) = (tempfile::tempdir().expect("dir"), Arc::new(Disk::default()));
        let store = Arc::new(open(&dir, &disk));
        create_users(store.as_ref(), &["alice", "bob"]).await;
        let appends: Vec<_> = (0..20)
            .map(|i| {
                store.append_message(new_message("alice", "bob", &format!("m{i}"), "x", 1), None)
            })
            .collect();
        store.close().await.expect("close");
        for (i, append) in appends.into_iter().enumerate() {
            assert_eq!(append.await.expect("answered").message.seq, i as u64 + 1);
        }
        drop(store);
        let reopened = Arc::new(open(&dir, &disk));
        assert_eq!(
            history(&reopened).await.expect("task"),
            (1..=20).collect::<Vec<u64>>()
        );
    }
}
