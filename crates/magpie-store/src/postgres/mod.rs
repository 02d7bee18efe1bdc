//! The PostgreSQL backend: one database shared by a cluster of Magpie servers.
//!
//! Semantics are those of the SQLite backend (the same conformance suite runs against both);
//! what differs is that several stores — one per server — write to the same database at once:
//!
//! - **Seqs** come from a `last_seq` counter on the conversation's row, locked by the append's
//!   transaction and written back with the message: no gap, no duplicate, on any node.
//! - **Dedupe** is checked after those locks are held, so a retry that reaches another node
//!   while the original commits still finds it (and a unique index backs it).
//! - **Lock order** is global — conversation rows, then user rows, each by id, then conversation
//!   state rows — so concurrent batches on different nodes never deadlock.
//! - **Ordering on a node**: appends and read-state changes go to one of a few writer tasks by
//!   a hash of their conversation, queued at call time, and are group-committed (`writer`).
//!   Reads and user writes run on a small connection pool (`conn`).
//! - **Outages**: every call has a time budget; a call that cannot reach the database fails
//!   as `Unavailable`, and broken connections are replaced on the next call, so the store
//!   recovers by itself once the database is back.
//! - **Node ids**: leases in `node_leases` on the database clock (`users`).
//! - **Groups** (`groups`): one transaction per write on a pooled connection, locking the
//!   group row first and then the user rows it checks, by id — the same global order — so
//!   every node's writes to one group serialize on its row.

mod conn;
mod error;
mod groups;
mod reader;
mod rows;
mod schema;
mod users;
mod writer;

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
    OnCommit, ReadOutcome, Store, StoreError, StoreResult, SyncPage, UserRecord,
};
use conn::{Connector, Pool};
use error::closed;
use writer::{EncodedMessage, WriteOp, WriterConfig, Writers};

/// Tuning of the PostgreSQL store.
#[derive(Clone)]
pub struct PgOptions {
    /// Writer tasks (each with its own connection) that appends are spread over by
    /// conversation.
    pub writers: usize,
    /// Most appends committed in one transaction.
    pub max_batch: usize,
    /// Pooled connections for reads and user writes (calls beyond this many wait).
    pub read_connections: usize,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// How long one call (or one write batch) may take before it fails as `Unavailable`.
    pub call_timeout: Duration,
    /// Told about every write batch.
    pub observer: Arc<dyn CommitObserver>,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            writers: 4,
            max_batch: 512,
            read_connections: 8,
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
            observer: Arc::new(NoObserver),
        }
    }
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("writers", &self.writers)
            .field("max_batch", &self.max_batch)
            .field("read_connections", &self.read_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

/// The PostgreSQL store. Cheap to share behind an `Arc`; any number of them, in one process
/// or on many nodes, may use the same database at once.
pub struct PgStore {
    pool: Pool,
    writers: Writers,
    address: String,
    closed: AtomicBool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`),
    /// bringing its schema up to date. Must be called inside a Tokio runtime, which then
    /// runs the store's writer tasks. `Unavailable` (naming the address) if the server
    /// cannot be reached.
    pub async fn connect(url: &str, options: PgOptions) -> StoreResult<Self> {
        let connector = Arc::new(Connector::new(url, options.connect_timeout)?);
        let mut first = connector.connect().await?;
        tokio::time::timeout(options.call_timeout, schema::migrate(&mut first))
            .await
            .unwrap_or_else(|_| {
                Err(error::timed_out(
                    "the schema migration",
                    options.call_timeout,
                ))
            })?;
        let pool = Pool::new(
            connector.clone(),
            options.read_connections,
            options.call_timeout,
        );
        pool.put(first);
        let address = connector.address().to_owned();
        let writers = Writers::spawn(
            options.writers,
            WriterConfig {
                connector,
                max_batch: options.max_batch.max(1),
                observer: options.observer,
                timeout: options.call_timeout,
            },
        );
        Ok(Self {
            pool,
            writers,
            address,
            closed: AtomicBool::new(false),
        })
    }

    fn check_open(&self) -> StoreResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        Ok(())
    }
}

/// Groups run on the pool: one transaction per write, locking the group row first (`groups`).
#[async_trait]
impl GroupStore for PgStore {
    async fn create_group(&self, group: NewGroup, now: Millis) -> StoreResult<GroupRecord> {
        self.check_open()?;
        self.pool
            .run("create_group", move |c| {
                Box::pin(groups::create_group(c, group, now))
            })
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
        self.pool
            .run("write_group", move |c| {
                Box::pin(async move {
                    groups::write_group(c, &group, expected_version, write, now).await
                })
            })
            .await
    }

    async fn get_groups(&self, ids: &[GroupId]) -> StoreResult<Vec<GroupRecord>> {
        self.check_open()?;
        let ids = ids.to_vec();
        self.pool
            .run("get_groups", move |c| {
                Box::pin(async move { groups::get_groups(c, &ids).await })
            })
            .await
    }

    async fn group_members_by_id(
        &self,
        group: &GroupId,
        users: &[UserId],
    ) -> StoreResult<Vec<GroupMember>> {
        self.check_open()?;
        let (group, users) = (group.clone(), users.to_vec());
        self.pool
            .run("group_members_by_id", move |c| {
                Box::pin(async move { groups::members_by_id(c, &group, &users).await })
            })
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
        self.pool
            .run("group_members", move |c| {
                Box::pin(async move {
                    groups::members_page(c, &group, role, after.as_ref(), limit).await
                })
            })
            .await
    }

    async fn group_read_positions(&self, group: &GroupId) -> StoreResult<Vec<(UserId, u64)>> {
        self.check_open()?;
        let group = group.clone();
        self.pool
            .run("group_read_positions", move |c| {
                Box::pin(async move { reader::group_read_positions(c, &group).await })
            })
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
        self.pool
            .run("joined_groups", move |c| {
                Box::pin(async move { groups::joined(c, &user, after.as_ref(), limit).await })
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
        self.pool
            .run("public_groups", move |c| {
                Box::pin(
                    async move { groups::public(c, query.as_deref(), after.as_ref(), limit).await },
                )
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
        self.pool
            .run("group_block", move |c| {
                Box::pin(async move { groups::block(c, &group, &user, now).await })
            })
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
        self.pool
            .run("group_blocks", move |c| {
                Box::pin(async move { groups::blocks(c, &group, now, after.as_ref(), limit).await })
            })
            .await
    }

    async fn create_application(
        &self,
        application: NewApplication,
    ) -> StoreResult<GroupApplication> {
        self.check_open()?;
        self.pool
            .run("create_application", move |c| {
                Box::pin(groups::create_application(c, application))
            })
            .await
    }

    async fn get_application(&self, id: &str) -> StoreResult<Option<GroupApplication>> {
        self.check_open()?;
        let id = id.to_owned();
        self.pool
            .run("get_application", move |c| {
                Box::pin(async move { groups::get_application(c, &id).await })
            })
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
        self.pool
            .run("handle_application", move |c| {
                Box::pin(async move {
                    groups::handle_application(c, &id, accept, handled_by.as_ref(), reason, now)
                        .await
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
        self.pool
            .run("list_applications", move |c| {
                Box::pin(async move {
                    groups::list_applications(c, &filter, before.as_deref(), limit).await
                })
            })
            .await
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create_user(&self, user: NewUser) -> StoreResult<User> {
        self.check_open()?;
        self.pool
            .run("create_user", move |c| {
                Box::pin(users::create_user(c, user))
            })
            .await
    }

    async fn get_user(&self, id: &UserId) -> StoreResult<Option<UserRecord>> {
        self.check_open()?;
        let id = id.clone();
        self.pool
            .run("get_user", move |c| {
                Box::pin(async move { reader::get_user(c, &id).await })
            })
            .await
    }

    async fn update_user(&self, id: &UserId, update: UpdateUser, now: Millis) -> StoreResult<User> {
        self.check_open()?;
        let id = id.clone();
        self.pool
            .run("update_user", move |c| {
                Box::pin(async move { users::update_user(c, &id, update, now).await })
            })
            .await
    }

    async fn delete_user(&self, id: &UserId) -> StoreResult<bool> {
        self.check_open()?;
        let id = id.clone();
        self.pool
            .run("delete_user", move |c| {
                Box::pin(async move { users::delete_user(c, &id).await })
            })
            .await
    }

    async fn revoke_tokens(&self, id: &UserId) -> StoreResult<u64> {
        self.check_open()?;
        let id = id.clone();
        self.pool
            .run("revoke_tokens", move |c| {
                Box::pin(async move { users::revoke_tokens(c, &id).await })
            })
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
            let conversation = encoded.new.message.conversation_id.clone();
            self.writers.queue(&conversation, |reply| {
                WriteOp::Append(Box::new(encoded), on_commit, reply)
            })
        });
        Box::pin(async move { writer::answer(queued?).await })
    }

    async fn get_messages(&self, query: MessageQuery) -> StoreResult<MessagePage> {
        self.check_open()?;
        self.pool
            .run("get_messages", move |c| {
                Box::pin(async move { reader::get_messages(c, &query).await })
            })
            .await
    }

    async fn max_message_id(&self) -> StoreResult<u64> {
        self.check_open()?;
        self.pool
            .run("max_message_id", |c| Box::pin(reader::max_message_id(c)))
            .await
    }

    async fn changed_conversations(
        &self,
        user: &UserId,
        since: u64,
        limit: u32,
    ) -> StoreResult<SyncPage> {
        self.check_open()?;
        let user = user.clone();
        self.pool
            .run("changed_conversations", move |c| {
                Box::pin(async move { reader::changed_conversations(c, &user, since, limit).await })
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
        self.pool
            .run("changed_group_conversations", move |c| {
                Box::pin(async move {
                    reader::changed_group_conversations(c, &user, since, limit).await
                })
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
        self.pool
            .run("conversation_state", move |c| {
                Box::pin(async move {
                    reader::conversation_state(&c.client, &mut c.statements, &user, &conversation)
                        .await
                })
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
        // Through the conversation's writer: it must see the appends queued before it.
        let (user, owned) = (user.clone(), conversation.clone());
        let queued = self
            .writers
            .queue(conversation, |reply| WriteOp::MarkRead {
                user,
                conversation: owned,
                seq,
                now,
                reply,
            })?;
        writer::answer(queued).await
    }

    async fn claim_node_id(&self, holder: &str, lease: Duration) -> StoreResult<u16> {
        self.check_open()?;
        let holder = holder.to_owned();
        self.pool
            .run("claim_node_id", move |c| {
                Box::pin(async move { users::claim_node_id(c, &holder, lease).await })
            })
            .await
    }

    async fn renew_node_id(&self, node: u16, holder: &str, lease: Duration) -> StoreResult<bool> {
        self.check_open()?;
        let holder = holder.to_owned();
        self.pool
            .run("renew_node_id", move |c| {
                Box::pin(async move { users::renew_node_id(c, node, &holder, lease).await })
            })
            .await
    }

    async fn release_node_id(&self, node: u16, holder: &str) -> StoreResult<()> {
        self.check_open()?;
        let holder = holder.to_owned();
        self.pool
            .run("release_node_id", move |c| {
                Box::pin(async move { users::release_node_id(c, node, &holder).await })
            })
            .await
    }

    async fn close(&self) -> StoreResult<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let drained = self.writers.close().await;
        self.pool.close();
        drained
    }
}

#[cfg(test)]
mod tests;
