//! The embedded SQLite backend, Magpie's default store.
//!
//! One dedicated writer thread owns the only write connection and applies writes in batches:
//! it takes every write queued while the previous transaction was committing, applies them in
//! order and commits them in one transaction. A sync thread (`durable`) fsyncs the WAL once
//! for every batch committed meanwhile — while the writer goes on with the next — and answers
//! callers only once their batch is on disk; a read waits until what it can have seen is.
//! A write refused for a reason of its own (unknown user, conflict) is refused before it
//! modifies anything, so its neighbours still commit; an unexpected failure rolls the whole
//! batch back and fails every write in it. The writer caches the counters it alone maintains
//! (last seq per conversation, change version per user) and drops the cache whenever a
//! transaction does not commit.
//! Reads run on a small pool of read-only connections on the blocking thread pool; WAL mode
//! lets them proceed while the writer commits.
//! Group writes (`groups`) are batched with the rest on the same writer thread, and refused
//! (unknown group, stale version, full group, …) before they modify anything, like the others.

mod checkpoint;
mod durable;
mod groups;
mod reader;
mod rows;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use magpie_proto::group::{GroupApplication, GroupId, GroupMember, GroupRole};
use magpie_proto::rest::{UpdateUser, User};
use magpie_proto::{ConversationId, ConversationState, Millis, UserId};

use crate::groups::{
    ApplicationFilter, GroupRecord, GroupStore, GroupWrite, NewApplication, NewGroup,
};
use crate::{
    Appending, CommitObserver, MessagePage, MessageQuery, NewMessage, NewUser, NoObserver,
    OnCommit, ReadOutcome, Store, StoreError, StoreErrorKind, StoreResult, SyncPage, UserRecord,
};
use groups::GroupOp;
use reader::ReadPool;
use writer::{EncodedMessage, WriteOp, Writer};

/// How hard a commit presses data to disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Durability {
    /// An acked write survives a power loss: it is answered after an fsync of the WAL (one
    /// per group of batches, on a thread of its own), and no read shows it before that.
    #[default]
    Full,
    /// An acked write survives a crash or `kill -9` of the server, but the last batches may
    /// be lost on power loss: no fsync before the answer.
    Normal,
}

/// Tuning of the SQLite store.
#[derive(Clone)]
pub struct SqliteOptions {
    /// Commit durability.
    pub durability: Durability,
    /// Most writes applied in one transaction.
    pub max_batch: usize,
    /// Read connections (reads beyond this many at once wait for one).
    pub read_connections: usize,
    /// Told about every commit.
    pub observer: Arc<dyn CommitObserver>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Full,
            max_batch: 512,
            read_connections: 8,
            observer: Arc::new(NoObserver),
        }
    }
}

impl std::fmt::Debug for SqliteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOptions")
            .field("durability", &self.durability)
            .field("max_batch", &self.max_batch)
            .field("read_connections", &self.read_connections)
            .finish_non_exhaustive()
    }
}

/// The SQLite store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct SqliteStore {
    /// Held for the store's lifetime: the writer's caches assume it is the only writer.
    _lock: std::fs::File,
    writer: Writer,
    readers: ReadPool,
    closed: AtomicBool,
}

impl SqliteStore {
    /// Opens (creating and migrating as needed) the database file at `path`.
    pub fn open(path: &Path, options: SqliteOptions) -> StoreResult<Self> {
        let lock = lock_exclusively(path)?;
        let sync = match options.durability {
            Durability::Full => durable::sync_wal(wal_path(path)),
            Durability::Normal => durable::no_sync(),
        };
        Self::open_with_sync(path, options, sync, lock)
    }

    /// Opens the store with `sync` as the step that makes commits durable (tests slow it
    /// down or make it fail).
    fn open_with_sync(
        path: &Path,
        options: SqliteOptions,
        sync: durable::SyncFn,
        lock: std::fs::File,
    ) -> StoreResult<Self> {
        let mut conn = open_connection(path)?;
        schema::migrate(&mut conn)?;
        let checkpointer = checkpoint::Checkpointer::spawn(open_connection(path)?)?;
        let restarter = checkpoint::Restarter::watch(&mut conn)?;
        let (writer, durable) = Writer::spawn(
            conn,
            options.max_batch,
            options.observer,
            checkpointer,
            restarter,
            sync,
        )?;
        let readers = ReadPool::new(path.to_owned(), options.read_connections, durable);
        Ok(Self {
            _lock: lock,
            writer,
            readers,
            closed: AtomicBool::new(false),
        })
    }

    fn check_open(&self) -> StoreResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "store is closed",
            ));
        }
        Ok(())
    }
}

/// Keeps prepared statements prepared. Without the query planner stability guarantee, SQLite
/// marks a statement for re-preparation whenever a bound value could change its plan — a
/// `LIMIT ?` is enough — and the statement cache's clearing of bindings then makes every
/// execution parse and plan the SQL again. Magpie's statements are simple and stable.
pub(super) fn tune_statements(conn: &rusqlite::Connection) -> StoreResult<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// The WAL file next to a database.
fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    wal.into()
}

/// Takes `<database>.lock` so that a second server on the same data directory fails at start
/// instead of writing behind this one's back.
fn lock_exclusively(path: &Path) -> StoreResult<std::fs::File> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("cannot open {lock_path:?}: {e}"),
            )
        })?;
    file.try_lock().map_err(|_| {
        StoreError::new(
            StoreErrorKind::Unavailable,
            format!("{} is in use by another Magpie server", path.display()),
        )
    })?;
    Ok(file)
}

fn open_connection(path: &Path) -> StoreResult<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    tune_statements(&conn)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Commits do not fsync: `durable` does, off the writer's path. Checkpoints still sync the
    // WAL before copying it and the database after.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // 64 MiB of page cache: the writer touches the same index pages over and over.
    conn.pragma_update(None, "cache_size", -65_536)?;
    // Checkpoints run on their own thread (see `checkpoint`), never inside a commit; when the
    // WAL starts over, its file keeps its size unless it grew beyond this.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(
        None,
        "journal_size_limit",
        checkpoint::WAL_KEEP_BYTES as i64,
    )?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

#[async_trait]
impl GroupStore for SqliteStore {
    async fn create_group(&self, group: NewGroup, now: Millis) -> StoreResult<GroupRecord> {
        self.check_open()?;
        self.writer
            .submit(|reply| WriteOp::Group(GroupOp::Create(Box::new(group), now, reply)))
            .await
    }

    async fn write_group(
        &self,
        group: &GroupId,
        expected_version: Option<u64>,
        write: GroupWrite,
        now: Millis,
    ) -> StoreResult<GroupRecord> {
        self.check_open()?;
        let group = group.clone();
        self.writer
            .submit(|reply| {
                WriteOp::Group(GroupOp::Write {
                    group,
                    expected_version,
                    write: Box::new(write),
                    now,
                    reply,
                })
            })
            .await
    }

    async fn get_groups(&self, ids: &[GroupId]) -> StoreResult<Vec<GroupRecord>> {
        self.check_open()?;
        let ids = ids.to_vec();
        let rows = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        self.readers
            .run(rows, move |c| groups::get_groups(c, &ids))
            .await
    }

    async fn group_members_by_id(
        &self,
        group: &GroupId,
        users: &[UserId],
    ) -> StoreResult<Vec<GroupMember>> {
        self.check_open()?;
        let (group, users) = (group.clone(), users.to_vec());
        let rows = u32::try_from(users.len()).unwrap_or(u32::MAX);
        self.readers
            .run(rows, move |c| groups::members_by_id(c, &group, &users))
            .await
    }

    async fn group_members(
        &self,
        group: &GroupId,
        role: Option<GroupRole>,
        after: Option<&UserId>,
        limit: u32,
    ) -> StoreResult<Vec<GroupMember>> {
        self.check_open()?;
        let (group, after) = (group.clone(), after.cloned());
        self.readers
            .run(limit, move |c| {
                groups::members_page(c, &group, role, after.as_ref(), limit)
            })
            .await
    }

    async fn group_read_positions(&self, group: &GroupId) -> StoreResult<Vec<(UserId, u64)>> {
        self.check_open()?;
        let group = group.clone();
        self.readers
            .run(u32::MAX, move |c| groups::read_positions(c, &group))
            .await
    }

    async fn joined_groups(
        &self,
        user: &UserId,
        after: Option<&GroupId>,
        limit: u32,
    ) -> StoreResult<Vec<GroupRecord>> {
        self.check_open()?;
        let (user, after) = (user.clone(), after.cloned());
        self.readers
            .run(limit, move |c| {
                groups::joined(c, &user, after.as_ref(), limit)
            })
            .await
    }

    async fn public_groups(
        &self,
        query: Option<&str>,
        after: Option<&GroupId>,
        limit: u32,
    ) -> StoreResult<Vec<GroupRecord>> {
        self.check_open()?;
        let (query, after) = (query.map(str::to_owned), after.cloned());
        // A search may scan the whole directory: never on the calling task.
        let rows = if query.is_some() { u32::MAX } else { limit };
        self.readers
            .run(rows, move |c| {
                groups::public(c, query.as_deref(), after.as_ref(), limit)
            })
            .await
    }

    async fn group_block(
        &self,
        group: &GroupId,
        user: &UserId,
        now: Millis,
    ) -> StoreResult<Option<Option<Millis>>> {
        self.check_open()?;
        let (group, user) = (group.clone(), user.clone());
        self.readers
            .run(1, move |c| groups::block(c, &group, &user, now))
            .await
    }

    async fn group_blocks(
        &self,
        group: &GroupId,
        now: Millis,
        after: Option<&UserId>,
        limit: u32,
    ) -> StoreResult<Vec<(UserId, Option<Millis>)>> {
        self.check_open()?;
        let (group, after) = (group.clone(), after.cloned());
        self.readers
            .run(limit, move |c| {
                groups::blocks(c, &group, now, after.as_ref(), limit)
            })
            .await
    }

    async fn create_application(
        &self,
        application: NewApplication,
    ) -> StoreResult<GroupApplication> {
        self.check_open()?;
        self.writer
            .submit(|reply| {
                WriteOp::Group(GroupOp::CreateApplication(Box::new(application), reply))
            })
            .await
    }

    async fn get_application(&self, id: &str) -> StoreResult<Option<GroupApplication>> {
        self.check_open()?;
        let id = id.to_owned();
        self.readers
            .run(1, move |c| groups::get_application(c, &id))
            .await
    }

    async fn handle_application(
        &self,
        id: &str,
        accept: bool,
        handled_by: Option<&UserId>,
        reason: Option<String>,
        now: Millis,
    ) -> StoreResult<GroupApplication> {
        self.check_open()?;
        let (id, handled_by) = (id.to_owned(), handled_by.cloned());
        self.writer
            .submit(|reply| {
                WriteOp::Group(GroupOp::HandleApplication {
                    id,
                    accept,
                    handled_by,
                    reason,
                    now,
                    reply,
                })
            })
            .await
    }

    async fn list_applications(
        &self,
        filter: ApplicationFilter,
        before: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<GroupApplication>> {
        self.check_open()?;
        let before = before.map(str::to_owned);
        self.readers
            .run(limit, move |c| {
                groups::list_applications(c, &filter, before.as_deref(), limit)
            })
            .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, user: NewUser) -> StoreResult<User> {
        self.check_open()?;
        self.writer
            .submit(|reply| WriteOp::CreateUser(user, reply))
            .await
    }

    async fn get_user(&self, id: &UserId) -> StoreResult<Option<UserRecord>> {
        self.check_open()?;
        let id = id.clone();
        self.readers.run(1, move |c| reader::get_user(c, &id)).await
    }

    async fn update_user(&self, id: &UserId, update: UpdateUser, now: Millis) -> StoreResult<User> {
        self.check_open()?;
        let id = id.clone();
        self.writer
            .submit(|reply| WriteOp::UpdateUser(id, update, now, reply))
            .await
    }

    async fn delete_user(&self, id: &UserId) -> StoreResult<bool> {
        self.check_open()?;
        let id = id.clone();
        self.writer
            .submit(|reply| WriteOp::DeleteUser(id, reply))
            .await
    }

    async fn revoke_tokens(&self, id: &UserId) -> StoreResult<u64> {
        self.check_open()?;
        let id = id.clone();
        self.writer
            .submit(|reply| WriteOp::RevokeTokens(id, reply))
            .await
    }

    fn append_message(&self, message: NewMessage, on_commit: Option<OnCommit>) -> Appending {
        let queued = self.check_open().and_then(|()| {
            let encoded = EncodedMessage {
                content: serde_json::to_string(&message.message.content)
                    .map_err(StoreError::internal)?,
                ext: rows::json_object(message.message.ext.as_ref())?,
                mentions: crate::mentions_json(&message.message)?,
                new: message,
            };
            self.writer
                .queue(|reply| WriteOp::Append(Box::new(encoded), on_commit, reply))
        });
        Box::pin(async move { queued?.await })
    }

    async fn get_messages(&self, query: MessageQuery) -> StoreResult<MessagePage> {
        self.check_open()?;
        self.readers
            .run(query.limit, move |c| reader::get_messages(c, &query))
            .await
    }

    async fn max_message_id(&self) -> StoreResult<u64> {
        self.check_open()?;
        self.readers.run(1, reader::max_message_id).await
    }

    async fn changed_conversations(
        &self,
        user: &UserId,
        since: u64,
        limit: u32,
    ) -> StoreResult<SyncPage> {
        self.check_open()?;
        let user = user.clone();
        self.readers
            .run(limit, move |c| {
                reader::changed_conversations(c, &user, since, limit)
            })
            .await
    }

    async fn changed_group_conversations(
        &self,
        user: &UserId,
        since: u64,
        limit: u32,
    ) -> StoreResult<SyncPage> {
        self.check_open()?;
        let user = user.clone();
        // Sized like the other sync read: a walk over the user's memberships is an index range
        // as long as their group count, and runs on the calling task for a small page, as
        // every login pays for it.
        self.readers
            .run(limit, move |c| {
                reader::changed_group_conversations(c, &user, since, limit)
            })
            .await
    }

    async fn conversation_state(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> StoreResult<Option<ConversationState>> {
        self.check_open()?;
        let (user, conversation) = (user.clone(), conversation.clone());
        self.readers
            .run(1, move |c| {
                reader::conversation_state(c, &user, &conversation)
            })
            .await
    }

    async fn mark_read(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        seq: u64,
        now: Millis,
    ) -> StoreResult<ReadOutcome> {
        self.check_open()?;
        let (user, conversation) = (user.clone(), conversation.clone());
        self.writer
            .submit(|reply| WriteOp::MarkRead {
                user,
                conversation,
                seq,
                now,
                reply,
            })
            .await
    }

    async fn claim_node_id(&self, holder: &str, lease: Duration) -> StoreResult<u16> {
        self.check_open()?;
        let holder = holder.to_owned();
        self.writer
            .submit(|reply| WriteOp::ClaimNode(holder, lease, reply))
            .await
    }

    async fn renew_node_id(&self, node: u16, holder: &str, lease: Duration) -> StoreResult<bool> {
        self.check_open()?;
        let holder = holder.to_owned();
        self.writer
            .submit(|reply| WriteOp::RenewNode(node, holder, lease, reply))
            .await
    }

    async fn release_node_id(&self, node: u16, holder: &str) -> StoreResult<()> {
        self.check_open()?;
        let holder = holder.to_owned();
        self.writer
            .submit(|reply| WriteOp::ReleaseNode(node, holder, reply))
            .await
    }

    async fn close(&self) -> StoreResult<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.writer.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sqlite(tempfile::TempDir);

    impl crate::testsuite::Backend for Sqlite {
        type Store = SqliteStore;
        async fn new() -> Option<Self> {
            Some(Sqlite(tempfile::tempdir().expect("tempdir")))
        }
        async fn open(&self) -> SqliteStore {
            SqliteStore::open(&self.0.path().join("magpie.db"), SqliteOptions::default())
                .expect("open")
        }
    }

    crate::store_test_suite!(Sqlite);
}
