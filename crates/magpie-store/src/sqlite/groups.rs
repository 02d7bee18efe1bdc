//! Groups on SQLite: writes run on the writer thread (as [`GroupOp`]s in its batches), reads on
//! the read pool.
//!
//! A group write reads the group row, checks everything that can refuse it (missing group,
//! stale version, unknown or blocked users, a full group, non-members, the owner) and only
//! then modifies anything, so a refusal leaves its neighbours in the batch to commit.
//! `member_count` is kept in the group row: the single writer makes it exact.

use std::collections::{HashMap, HashSet};

use magpie_proto::group::{
    ApplicationState, GroupApplication, GroupId, GroupMember, GroupRole, JoinPolicy,
};
use magpie_proto::{ConversationId, Millis, UserId};
use rusqlite::{Connection, OptionalExtension, Row};

use super::rows;
use super::writer::{Completion, Reply, complete, stamp_group_activity};
use crate::groups::{
    self, APPLICATION_COLUMNS, ApplicationFilter, GroupRecord, GroupWrite, MEMBER_COLUMNS,
    NewApplication, NewGroup, application_id, conflict, group_not_found, not_member,
};
use crate::{StoreError, StoreErrorKind, StoreResult};

/// A group write for the writer thread, with where to send its result.
pub(super) enum GroupOp {
    Create(Box<NewGroup>, Millis, Reply<GroupRecord>),
    Write {
        group: GroupId,
        expected_version: Option<u64>,
        write: Box<GroupWrite>,
        now: Millis,
        reply: Reply<GroupRecord>,
    },
    CreateApplication(Box<NewApplication>, Reply<GroupApplication>),
    HandleApplication {
        id: String,
        accept: bool,
        handled_by: Option<UserId>,
        reason: Option<String>,
        now: Millis,
        reply: Reply<GroupApplication>,
    },
}

impl GroupOp {
    /// Answers with `error` without applying anything.
    pub(super) fn fail(self, error: &StoreError) {
        let err = || StoreError::new(error.kind(), error.message());
        match self {
            GroupOp::Create(_, _, r) | GroupOp::Write { reply: r, .. } => drop(r.send(Err(err()))),
            GroupOp::CreateApplication(_, r) | GroupOp::HandleApplication { reply: r, .. } => {
                drop(r.send(Err(err())))
            }
        }
    }

    /// Applies the write inside the writer's transaction; returns its completion and error.
    pub(super) fn apply(self, conn: &Connection) -> (Completion, Option<StoreError>) {
        fn done<T: Send + 'static>(
            reply: Reply<T>,
            result: StoreResult<T>,
        ) -> (Completion, Option<StoreError>) {
            let error = result
                .as_ref()
                .err()
                .map(|e| StoreError::new(e.kind(), e.message()));
            (complete(reply, result), error)
        }
        match self {
            GroupOp::Create(group, now, reply) => done(reply, create_group(conn, *group, now)),
            GroupOp::Write {
                group,
                expected_version,
                write,
                now,
                reply,
            } => done(
                reply,
                write_group(conn, &group, expected_version, *write, now),
            ),
            GroupOp::CreateApplication(application, reply) => {
                done(reply, create_application(conn, *application))
            }
            GroupOp::HandleApplication {
                id,
                accept,
                handled_by,
                reason,
                now,
                reply,
            } => done(
                reply,
                handle_application(conn, &id, accept, handled_by.as_ref(), reason, now),
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rows

const GROUP_COLUMNS: &str = "id, name, avatar_url, introduction, announcement, ext, owner, \
     join_policy, invite_needs_accept, members_can_invite, max_members, \
     history_visible_to_new_members, all_muted, member_count, version, attributes, \
     attributes_version, counters, created_at, updated_at";

/// [`GROUP_COLUMNS`] of the groups table aliased `g`.
const G_COLUMNS: &str = "g.id, g.name, g.avatar_url, g.introduction, g.announcement, g.ext, \
     g.owner, g.join_policy, g.invite_needs_accept, g.members_can_invite, g.max_members, \
     g.history_visible_to_new_members, g.all_muted, g.member_count, g.version, g.attributes, \
     g.attributes_version, g.counters, g.created_at, g.updated_at";

fn record(row: &Row<'_>) -> StoreResult<GroupRecord> {
    groups::group_from_row(row)
}

fn member(row: &Row<'_>) -> StoreResult<GroupMember> {
    groups::member_from_row(row)
}

fn application(row: &Row<'_>) -> StoreResult<GroupApplication> {
    groups::application_from_row(row)
}

impl groups::Columns for Row<'_> {
    fn text(&self, i: usize) -> StoreResult<String> {
        Ok(self.get(i)?)
    }
    fn opt_text(&self, i: usize) -> StoreResult<Option<String>> {
        Ok(self.get(i)?)
    }
    fn int(&self, i: usize) -> StoreResult<i64> {
        Ok(self.get(i)?)
    }
    fn opt_int(&self, i: usize) -> StoreResult<Option<i64>> {
        Ok(self.get(i)?)
    }
    fn flag(&self, i: usize) -> StoreResult<bool> {
        Ok(self.get(i)?)
    }
}

/// Runs a query and maps every row.
fn collect<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl Fn(&Row<'_>) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(map(row)?);
    }
    Ok(out)
}

/// A JSON array of ids, for `IN (SELECT value FROM json_each(?))`: one cached statement
/// whatever the number of ids.
fn json_ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> StoreResult<String> {
    serde_json::to_string(&ids.into_iter().collect::<Vec<_>>()).map_err(StoreError::internal)
}

fn page_limit(limit: u32) -> i64 {
    i64::from(limit)
}

// ---------------------------------------------------------------------------------------------
// Reads

fn load_group(conn: &Connection, id: &GroupId) -> StoreResult<Option<GroupRecord>> {
    let sql = format!("SELECT {GROUP_COLUMNS} FROM groups WHERE id = ?1");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([id.as_str()])?;
    rows.next()?.map(record).transpose()
}

pub(super) fn get_groups(conn: &Connection, ids: &[GroupId]) -> StoreResult<Vec<GroupRecord>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.extend(load_group(conn, id)?);
    }
    Ok(out)
}

fn load_member(
    conn: &Connection,
    group: &GroupId,
    user: &UserId,
) -> StoreResult<Option<GroupMember>> {
    let sql =
        format!("SELECT {MEMBER_COLUMNS} FROM group_members WHERE group_id = ?1 AND user_id = ?2");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([group.as_str(), user.as_str()])?;
    rows.next()?.map(member).transpose()
}

pub(super) fn members_by_id(
    conn: &Connection,
    group: &GroupId,
    users: &[UserId],
) -> StoreResult<Vec<GroupMember>> {
    let mut out = Vec::with_capacity(users.len());
    for user in users {
        out.extend(load_member(conn, group, user)?);
    }
    Ok(out)
}

pub(super) fn members_page(
    conn: &Connection,
    group: &GroupId,
    role: Option<GroupRole>,
    after: Option<&UserId>,
    limit: u32,
) -> StoreResult<Vec<GroupMember>> {
    let after = after.map_or("", UserId::as_str);
    match role {
        Some(role) => {
            let sql = format!(
                "SELECT {MEMBER_COLUMNS} FROM group_members \
                 WHERE group_id = ?1 AND role = ?2 AND user_id > ?3 ORDER BY user_id LIMIT ?4"
            );
            collect(
                conn,
                &sql,
                (
                    group.as_str(),
                    groups::role_to_sql(role),
                    after,
                    page_limit(limit),
                ),
                member,
            )
        }
        None => {
            let sql = format!(
                "SELECT {MEMBER_COLUMNS} FROM group_members \
                 WHERE group_id = ?1 AND user_id > ?2 ORDER BY user_id LIMIT ?3"
            );
            collect(
                conn,
                &sql,
                (group.as_str(), after, page_limit(limit)),
                member,
            )
        }
    }
}

pub(super) fn joined(
    conn: &Connection,
    user: &UserId,
    after: Option<&GroupId>,
    limit: u32,
) -> StoreResult<Vec<GroupRecord>> {
    let sql = format!(
        "SELECT {G_COLUMNS} FROM group_members m JOIN groups g ON g.id = m.group_id \
         WHERE m.user_id = ?1 AND m.group_id > ?2 ORDER BY m.group_id LIMIT ?3"
    );
    collect(
        conn,
        &sql,
        (
            user.as_str(),
            after.map_or("", GroupId::as_str),
            page_limit(limit),
        ),
        record,
    )
}

pub(super) fn public(
    conn: &Connection,
    query: Option<&str>,
    after: Option<&GroupId>,
    limit: u32,
) -> StoreResult<Vec<GroupRecord>> {
    // `lower` and `instr` fold ASCII only and take the query literally (no wildcards).
    let sql = format!(
        "SELECT {GROUP_COLUMNS} FROM groups \
         WHERE id > ?1 AND join_policy <> ?2 \
           AND (?3 IS NULL OR instr(lower(id), lower(?3)) > 0 OR instr(lower(name), lower(?3)) > 0) \
         ORDER BY id LIMIT ?4"
    );
    collect(
        conn,
        &sql,
        (
            after.map_or("", GroupId::as_str),
            groups::policy_to_sql(JoinPolicy::InviteOnly),
            query,
            page_limit(limit),
        ),
        record,
    )
}

pub(super) fn block(
    conn: &Connection,
    group: &GroupId,
    user: &UserId,
    now: Millis,
) -> StoreResult<Option<Option<Millis>>> {
    Ok(conn
        .prepare_cached(
            "SELECT blocked_until FROM group_blocks WHERE group_id = ?1 AND user_id = ?2 \
             AND (blocked_until IS NULL OR blocked_until > ?3)",
        )?
        .query_row((group.as_str(), user.as_str(), now), |r| {
            r.get::<_, Option<i64>>(0)
        })
        .optional()?)
}

pub(super) fn blocks(
    conn: &Connection,
    group: &GroupId,
    now: Millis,
    after: Option<&UserId>,
    limit: u32,
) -> StoreResult<Vec<(UserId, Option<Millis>)>> {
    collect(
        conn,
        "SELECT user_id, blocked_until FROM group_blocks WHERE group_id = ?1 AND user_id > ?2 \
         AND (blocked_until IS NULL OR blocked_until > ?3) ORDER BY user_id LIMIT ?4",
        (
            group.as_str(),
            after.map_or("", UserId::as_str),
            now,
            page_limit(limit),
        ),
        |row| Ok((groups::user_id_from_sql(row.get(0)?)?, row.get(1)?)),
    )
}

pub(super) fn get_application(
    conn: &Connection,
    id: &str,
) -> StoreResult<Option<GroupApplication>> {
    let Some(id) = application_id(id) else {
        return Ok(None);
    };
    load_application(conn, id)
}

fn load_application(conn: &Connection, id: i64) -> StoreResult<Option<GroupApplication>> {
    let sql = format!("SELECT {APPLICATION_COLUMNS} FROM group_applications WHERE id = ?1");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([id])?;
    rows.next()?.map(application).transpose()
}

pub(super) fn list_applications(
    conn: &Connection,
    filter: &ApplicationFilter,
    before: Option<&str>,
    limit: u32,
) -> StoreResult<Vec<GroupApplication>> {
    let before = match before {
        None => i64::MAX,
        Some(b) => match application_id(b) {
            Some(id) => id,
            None => return Ok(Vec::new()),
        },
    };
    let join = groups::kind_to_sql(magpie_proto::group::ApplicationKind::Join);
    let invite = groups::kind_to_sql(magpie_proto::group::ApplicationKind::Invite);
    match filter {
        ApplicationFilter::JoinsTo(ids) => {
            let sql = format!(
                "SELECT {APPLICATION_COLUMNS} FROM group_applications \
                 WHERE group_id IN (SELECT value FROM json_each(?1)) AND kind = ?2 AND id < ?3 \
                 ORDER BY id DESC LIMIT ?4"
            );
            let ids = json_ids(ids.iter().map(GroupId::as_str))?;
            collect(
                conn,
                &sql,
                (ids, join, before, page_limit(limit)),
                application,
            )
        }
        ApplicationFilter::JoinsManagedBy(user) => {
            let sql = format!(
                "SELECT {APPLICATION_COLUMNS} FROM group_applications \
                 WHERE group_id IN (SELECT group_id FROM group_members \
                   WHERE user_id = ?1 AND role IN (?5, ?6)) \
                 AND kind = ?2 AND id < ?3 ORDER BY id DESC LIMIT ?4"
            );
            collect(
                conn,
                &sql,
                (
                    user.as_str(),
                    join,
                    before,
                    page_limit(limit),
                    groups::role_to_sql(GroupRole::Owner),
                    groups::role_to_sql(GroupRole::Admin),
                ),
                application,
            )
        }
        ApplicationFilter::InvitationsFor(user) => {
            let sql = format!(
                "SELECT {APPLICATION_COLUMNS} FROM group_applications \
                 WHERE user_id = ?1 AND kind = ?2 AND id < ?3 ORDER BY id DESC LIMIT ?4"
            );
            collect(
                conn,
                &sql,
                (user.as_str(), invite, before, page_limit(limit)),
                application,
            )
        }
        ApplicationFilter::SentBy(user) => {
            // The applicant's own join applications and the inviter's invitations both have
            // them as `from_user`.
            let sql = format!(
                "SELECT {APPLICATION_COLUMNS} FROM group_applications \
                 WHERE from_user = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3"
            );
            collect(
                conn,
                &sql,
                (user.as_str(), before, page_limit(limit)),
                application,
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writes (on the writer thread, inside its transaction)

/// `UserNotFound` for the first (in id order) of `users` that is not a live user.
fn check_users(conn: &Connection, users: &[UserId]) -> StoreResult<()> {
    if users.is_empty() {
        return Ok(());
    }
    let ids = json_ids(users.iter().map(UserId::as_str))?;
    let live: HashSet<String> = collect(
        conn,
        "SELECT id FROM users WHERE id IN (SELECT value FROM json_each(?1)) AND deleted = 0",
        [ids],
        |row| Ok(row.get::<_, String>(0)?),
    )?
    .into_iter()
    .collect();
    let mut sorted: Vec<&UserId> = users.iter().collect();
    sorted.sort();
    match sorted.into_iter().find(|u| !live.contains(u.as_str())) {
        Some(missing) => Err(StoreError::new(
            StoreErrorKind::UserNotFound,
            format!("no user {missing}"),
        )),
        None => Ok(()),
    }
}

/// `Blocked` if one of `users` is blocked from the group at `now`.
fn check_blocks(
    conn: &Connection,
    group: &GroupId,
    users: &[UserId],
    now: Millis,
) -> StoreResult<()> {
    if users.is_empty() {
        return Ok(());
    }
    let ids = json_ids(users.iter().map(UserId::as_str))?;
    let blocked: Option<String> = conn
        .prepare_cached(
            "SELECT user_id FROM group_blocks WHERE group_id = ?1 \
             AND user_id IN (SELECT value FROM json_each(?2)) \
             AND (blocked_until IS NULL OR blocked_until > ?3) ORDER BY user_id LIMIT 1",
        )?
        .query_row((group.as_str(), ids, now), |r| r.get(0))
        .optional()?;
    match blocked {
        Some(user) => Err(groups::blocked(group, &groups::user_id_from_sql(user)?)),
        None => Ok(()),
    }
}

/// The members among `users`, by user id.
fn members_of(
    conn: &Connection,
    group: &GroupId,
    users: &[UserId],
) -> StoreResult<HashMap<UserId, GroupMember>> {
    if users.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT {MEMBER_COLUMNS} FROM group_members WHERE group_id = ?1 \
         AND user_id IN (SELECT value FROM json_each(?2))"
    );
    let ids = json_ids(users.iter().map(UserId::as_str))?;
    Ok(collect(conn, &sql, (group.as_str(), ids), member)?
        .into_iter()
        .map(|m| (m.user_id.clone(), m))
        .collect())
}

/// The members among `users`, or `NotMember` naming the first (in id order) that is not one.
fn require_members(
    conn: &Connection,
    group: &GroupId,
    users: &[UserId],
) -> StoreResult<HashMap<UserId, GroupMember>> {
    let found = members_of(conn, group, users)?;
    match users.iter().find(|u| !found.contains_key(*u)) {
        Some(missing) => Err(not_member(group, missing)),
        None => Ok(found),
    }
}

/// The group conversation's last seq (0 before its first message), as this transaction sees it.
fn last_seq(conn: &Connection, conversation: &ConversationId) -> StoreResult<u64> {
    let last: Option<i64> = conn
        .prepare_cached(rows::LAST_MESSAGE_SQL)?
        .query_row([conversation.as_str()], |r| r.get(0))
        .optional()?;
    Ok(last.unwrap_or(0) as u64)
}

/// Every member's read position (see [`crate::GroupStore::group_read_positions`]).
pub(super) fn read_positions(
    conn: &Connection,
    group: &GroupId,
) -> StoreResult<Vec<(UserId, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT gm.user_id, max(COALESCE(uc.read_seq, 0), gm.visible_from_seq - 1) \
         FROM group_members gm \
         LEFT JOIN user_conversations uc \
           ON uc.user_id = gm.user_id AND uc.conversation_id = 'grp:' || gm.group_id \
         WHERE gm.group_id = ?1 ORDER BY gm.user_id",
    )?;
    let rows = stmt.query_map([group.as_str()], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    rows.map(|row| {
        let (user, seq) = row?;
        Ok((groups::user_id_from_sql(user)?, seq.max(0) as u64))
    })
    .collect()
}

fn insert_members(conn: &Connection, group: &GroupId, members: &[GroupMember]) -> StoreResult<()> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO group_members \
         (group_id, user_id, role, joined_at, nickname, attributes, muted_until, \
          allowed_when_all_muted, visible_from_seq, receive_messages) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for m in members {
        insert.execute(rusqlite::params![
            group.as_str(),
            m.user_id.as_str(),
            groups::role_to_sql(m.role),
            m.joined_at,
            &m.nickname,
            groups::map_to_sql(&m.attributes)?,
            m.muted_until,
            m.allowed_when_all_muted,
            m.visible_from_seq as i64,
            m.receive_messages,
        ])?;
    }
    Ok(())
}

fn save_member(conn: &Connection, group: &GroupId, m: &GroupMember) -> StoreResult<()> {
    conn.prepare_cached(
        "UPDATE group_members SET role = ?3, nickname = ?4, attributes = ?5, muted_until = ?6, \
           allowed_when_all_muted = ?7, receive_messages = ?8 \
         WHERE group_id = ?1 AND user_id = ?2",
    )?
    .execute((
        group.as_str(),
        m.user_id.as_str(),
        groups::role_to_sql(m.role),
        &m.nickname,
        groups::map_to_sql(&m.attributes)?,
        m.muted_until,
        m.allowed_when_all_muted,
        m.receive_messages,
    ))?;
    Ok(())
}

/// Deletes the members among `users`, and their rows of the group conversation (a former
/// member must not see later messages through their conversation state); returns how many
/// members there were.
fn delete_members(conn: &Connection, group: &GroupId, users: &[UserId]) -> StoreResult<u32> {
    if users.is_empty() {
        return Ok(0);
    }
    let ids = json_ids(users.iter().map(UserId::as_str))?;
    forget_group_rows(conn, group, Some(&ids))?;
    let deleted = conn
        .prepare_cached(
            "DELETE FROM group_members WHERE group_id = ?1 \
             AND user_id IN (SELECT value FROM json_each(?2))",
        )?
        .execute((group.as_str(), ids))?;
    u32::try_from(deleted).map_err(StoreError::internal)
}

/// Deletes the group conversation's rows of `users` (a JSON array of ids), or of everyone.
/// A user's change counter is the largest version on their rows, so it is kept in
/// `users.sync_version` first: it must never go back, or a device's cursor would hide the next
/// changes.
fn forget_group_rows(conn: &Connection, group: &GroupId, users: Option<&str>) -> StoreResult<()> {
    let conversation = ConversationId::group(group);
    conn.prepare_cached(
        "UPDATE users SET sync_version = max(sync_version, \
           (SELECT MAX(uc.version) FROM user_conversations uc WHERE uc.user_id = users.id)) \
         WHERE id IN (SELECT user_id FROM user_conversations WHERE conversation_id = ?1 \
           AND (?2 IS NULL OR user_id IN (SELECT value FROM json_each(?2))))",
    )?
    .execute((conversation.as_str(), users))?;
    conn.prepare_cached(
        "DELETE FROM user_conversations WHERE conversation_id = ?1 \
           AND (?2 IS NULL OR user_id IN (SELECT value FROM json_each(?2)))",
    )?
    .execute((conversation.as_str(), users))?;
    Ok(())
}

/// Inserts the group row, or writes every column of it but its id and creation time.
fn save_group(conn: &Connection, r: &GroupRecord, insert: bool) -> StoreResult<()> {
    let i = &r.info;
    let sql = if insert {
        "INSERT INTO groups (id, name, avatar_url, introduction, announcement, ext, owner, \
           join_policy, invite_needs_accept, members_can_invite, max_members, \
           history_visible_to_new_members, all_muted, member_count, version, attributes, \
           attributes_version, counters, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
    } else {
        "UPDATE groups SET name = ?2, avatar_url = ?3, introduction = ?4, announcement = ?5, \
           ext = ?6, owner = ?7, join_policy = ?8, invite_needs_accept = ?9, \
           members_can_invite = ?10, max_members = ?11, history_visible_to_new_members = ?12, \
           all_muted = ?13, member_count = ?14, version = ?15, attributes = ?16, \
           attributes_version = ?17, counters = ?18, updated_at = ?20 \
         WHERE id = ?1"
    };
    conn.prepare_cached(sql)?.execute(rusqlite::params![
        i.group_id.as_str(),
        &i.name,
        &i.avatar_url,
        &i.introduction,
        &i.announcement,
        groups::ext_to_sql(i.ext.as_ref())?,
        i.owner.as_str(),
        groups::policy_to_sql(i.options.join_policy),
        i.options.invite_needs_accept,
        i.options.members_can_invite,
        i64::from(i.options.max_members),
        i.options.history_visible_to_new_members,
        i.all_muted,
        i64::from(i.member_count),
        i.version as i64,
        groups::map_to_sql(&r.attributes)?,
        r.attributes_version as i64,
        groups::map_to_sql(&r.counters)?,
        i.created_at,
        i.updated_at,
    ])?;
    Ok(())
}

fn create_group(conn: &Connection, group: NewGroup, now: Millis) -> StoreResult<GroupRecord> {
    // The checks in the PostgreSQL backend's order, so both refuse alike.
    let members: Vec<GroupMember> = groups::first_members(&group, now)?
        .into_iter()
        .map(groups::clean_member)
        .collect();
    if members.len() > group.options.max_members as usize {
        return Err(groups::group_full(
            &group.group_id,
            group.options.max_members,
        ));
    }
    let exists: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM groups WHERE id = ?1")?
        .query_row([group.group_id.as_str()], |r| r.get(0))
        .optional()?;
    if exists.is_some() {
        return Err(conflict(format!("group {} already exists", group.group_id)));
    }
    let ids: Vec<UserId> = members.iter().map(|m| m.user_id.clone()).collect();
    check_users(conn, &ids)?;
    let record = groups::new_record(&group, members.len() as u32, now);
    save_group(conn, &record, true)?;
    let mut members = members;
    let conversation = ConversationId::group(&group.group_id);
    groups::set_join_point(&mut members, last_seq(conn, &conversation)?, false, true);
    insert_members(conn, &group.group_id, &members)?;
    // The conversation exists from the start, stamped, so the members' next sync shows it.
    rows::conversation_key(conn, &conversation, now)?;
    stamp_group_activity(conn, conversation.as_str(), 0)?;
    Ok(record)
}

fn write_group(
    conn: &Connection,
    id: &GroupId,
    expected_version: Option<u64>,
    write: GroupWrite,
    now: Millis,
) -> StoreResult<GroupRecord> {
    let mut record = load_group(conn, id)?.ok_or_else(|| group_not_found(id))?;
    groups::check_version(&record, expected_version)?;
    let owner = record.info.owner.clone();
    match write {
        GroupWrite::UpdateInfo(update) => groups::apply_info(&mut record.info, update),
        GroupWrite::AddMembers(members) => {
            let mut seen = HashSet::new();
            let mut new: Vec<GroupMember> = members
                .into_iter()
                .filter(|m| seen.insert(m.user_id.clone()))
                .map(groups::clean_member)
                .collect();
            let ids: Vec<UserId> = new.iter().map(|m| m.user_id.clone()).collect();
            let existing = members_of(conn, id, &ids)?;
            new.retain(|m| !existing.contains_key(&m.user_id));
            if let Some(m) = new.iter().find(|m| m.role == GroupRole::Owner) {
                return Err(conflict(format!(
                    "{} cannot join group {id} as an owner: {owner} is",
                    m.user_id
                )));
            }
            let ids: Vec<UserId> = new.iter().map(|m| m.user_id.clone()).collect();
            check_users(conn, &ids)?;
            check_blocks(conn, id, &ids, now)?;
            record.info.member_count = groups::count_after_adding(&record, new.len())?;
            groups::set_join_point(
                &mut new,
                last_seq(conn, &ConversationId::group(id))?,
                record.info.options.history_visible_to_new_members,
                false,
            );
            insert_members(conn, id, &new)?;
        }
        GroupWrite::RemoveMembers(users) => {
            if users.contains(&owner) {
                return Err(conflict(format!("the owner cannot leave group {id}")));
            }
            let removed = delete_members(conn, id, &groups::sorted_unique(users))?;
            record.info.member_count = record.info.member_count.saturating_sub(removed);
        }
        GroupWrite::SetRole { user_ids, role } => {
            if role == GroupRole::Owner {
                return Err(conflict("ownership moves with TransferOwner, not SetRole"));
            }
            if user_ids.contains(&owner) {
                return Err(conflict(format!(
                    "the owner of group {id} keeps their role"
                )));
            }
            let users = groups::sorted_unique(user_ids);
            let mut found = require_members(conn, id, &users)?;
            for user in &users {
                if let Some(m) = found.get_mut(user) {
                    m.role = role;
                    save_member(conn, id, m)?;
                }
            }
        }
        GroupWrite::TransferOwner { to } => {
            if to != owner {
                let users = [owner.clone(), to.clone()];
                let mut found = members_of(conn, id, &users)?;
                let Some(mut new_owner) = found.remove(&to) else {
                    return Err(not_member(id, &to));
                };
                if let Some(mut old_owner) = found.remove(&owner) {
                    old_owner.role = GroupRole::Admin;
                    save_member(conn, id, &old_owner)?;
                }
                new_owner.role = GroupRole::Owner;
                save_member(conn, id, &new_owner)?;
                record.info.owner = to;
            }
        }
        GroupWrite::UpdateMembers { user_ids, update } => {
            let users = groups::sorted_unique(user_ids);
            let mut found = require_members(conn, id, &users)?;
            for user in &users {
                if let Some(m) = found.get_mut(user) {
                    groups::apply_member_update(m, &update);
                    save_member(conn, id, m)?;
                }
            }
        }
        GroupWrite::Block { user_ids, until } => {
            if user_ids.contains(&owner) {
                return Err(conflict(format!(
                    "the owner of group {id} cannot be blocked"
                )));
            }
            let users = groups::sorted_unique(user_ids);
            let mut upsert = conn.prepare_cached(
                "INSERT INTO group_blocks (group_id, user_id, blocked_until) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (group_id, user_id) DO UPDATE SET blocked_until = excluded.blocked_until",
            )?;
            for user in &users {
                upsert.execute((id.as_str(), user.as_str(), until))?;
            }
            let removed = delete_members(conn, id, &users)?;
            record.info.member_count = record.info.member_count.saturating_sub(removed);
        }
        GroupWrite::Unblock(users) => {
            let ids = json_ids(users.iter().map(UserId::as_str))?;
            conn.prepare_cached(
                "DELETE FROM group_blocks WHERE group_id = ?1 \
                 AND user_id IN (SELECT value FROM json_each(?2))",
            )?
            .execute((id.as_str(), ids))?;
        }
        GroupWrite::SetAttributes {
            set,
            delete,
            expected_attributes_version,
        } => groups::apply_attributes(&mut record, set, delete, expected_attributes_version)?,
        GroupWrite::IncrementCounter { key, delta } => {
            groups::apply_increment(&mut record, key, delta)?;
        }
        GroupWrite::Destroy => {
            forget_group_rows(conn, id, None)?;
            for sql in [
                "DELETE FROM group_members WHERE group_id = ?1",
                "DELETE FROM group_blocks WHERE group_id = ?1",
                "DELETE FROM group_applications WHERE group_id = ?1",
                "DELETE FROM groups WHERE id = ?1",
            ] {
                conn.prepare_cached(sql)?.execute([id.as_str()])?;
            }
            record.info.version += 1;
            record.info.updated_at = now;
            return Ok(record);
        }
    }
    record.info.version += 1;
    record.info.updated_at = now;
    save_group(conn, &record, false)?;
    Ok(record)
}

fn create_application(conn: &Connection, a: NewApplication) -> StoreResult<GroupApplication> {
    let exists: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM groups WHERE id = ?1")?
        .query_row([a.group_id.as_str()], |r| r.get(0))
        .optional()?;
    if exists.is_none() {
        return Err(group_not_found(&a.group_id));
    }
    check_users(
        conn,
        &groups::sorted_unique([a.from.clone(), a.user_id.clone()]),
    )?;
    let kind = groups::kind_to_sql(a.kind);
    let pending = groups::state_to_sql(ApplicationState::Pending);
    let sql = format!(
        "SELECT {APPLICATION_COLUMNS} FROM group_applications \
         WHERE group_id = ?1 AND kind = ?2 AND user_id = ?3 AND state = ?4"
    );
    let existing = collect(
        conn,
        &sql,
        (a.group_id.as_str(), kind, a.user_id.as_str(), pending),
        application,
    )?;
    if let Some(existing) = existing.into_iter().next() {
        return Ok(existing);
    }
    let id: i64 = conn
        .prepare_cached(
            "INSERT INTO group_applications \
             (group_id, kind, from_user, user_id, message, state, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
        )?
        .query_row(
            (
                a.group_id.as_str(),
                kind,
                a.from.as_str(),
                a.user_id.as_str(),
                &a.message,
                pending,
                a.now,
            ),
            |r| r.get(0),
        )?;
    Ok(GroupApplication {
        application_id: id.to_string(),
        group_id: a.group_id,
        kind: a.kind,
        from: a.from,
        user_id: a.user_id,
        message: a.message,
        state: ApplicationState::Pending,
        handled_by: None,
        reason: None,
        created_at: a.now,
        handled_at: None,
    })
}

fn handle_application(
    conn: &Connection,
    id: &str,
    accept: bool,
    handled_by: Option<&UserId>,
    reason: Option<String>,
    now: Millis,
) -> StoreResult<GroupApplication> {
    let not_pending = || conflict(format!("application {id} is not pending"));
    let Some(key) = application_id(id) else {
        return Err(not_pending());
    };
    let mut found = load_application(conn, key)?.ok_or_else(not_pending)?;
    if found.state != ApplicationState::Pending {
        return Err(not_pending());
    }
    found.state = if accept {
        ApplicationState::Accepted
    } else {
        ApplicationState::Declined
    };
    found.handled_by = handled_by.cloned();
    found.reason = reason;
    found.handled_at = Some(now);
    conn.prepare_cached(
        "UPDATE group_applications SET state = ?2, handled_by = ?3, reason = ?4, handled_at = ?5 \
         WHERE id = ?1",
    )?
    .execute((
        key,
        groups::state_to_sql(found.state),
        handled_by.map(UserId::as_str),
        &found.reason,
        now,
    ))?;
    Ok(found)
}
