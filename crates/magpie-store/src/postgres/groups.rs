//! Groups on PostgreSQL: each write is one transaction on a pooled connection that locks the
//! group row first (`FOR UPDATE`; `FOR SHARE` for a new application), then the user rows it
//! checks (`FOR SHARE`, sorted by id) — the global lock order of the message writers
//! (conversation / group rows, then user rows) — so writers on any number of nodes serialize
//! per group, never deadlock, and keep `member_count` exact. Reads are single statements.

use std::collections::{HashMap, HashSet};

use magpie_proto::group::{
    ApplicationKind, ApplicationState, GroupApplication, GroupId, GroupMember, GroupRole,
    JoinPolicy,
};
use magpie_proto::{ConversationId, Millis, UserId};
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

use super::conn::{PgConn, Statements};
use super::reader::sql;
use crate::groups::{
    self, APPLICATION_COLUMNS, ApplicationFilter, GroupRecord, GroupWrite, MEMBER_COLUMNS,
    NewApplication, NewGroup, application_id, conflict, group_not_found, not_member,
};
use crate::{StoreError, StoreErrorKind, StoreResult};

type Params<'a> = [&'a (dyn ToSql + Sync)];

async fn query<C: GenericClient + Sync>(
    client: &C,
    statements: &mut Statements,
    sql: &'static str,
    params: &Params<'_>,
) -> StoreResult<Vec<Row>> {
    let statement = statements.get(client, sql).await?;
    Ok(client.query(&statement, params).await?)
}

async fn execute<C: GenericClient + Sync>(
    client: &C,
    statements: &mut Statements,
    sql: &'static str,
    params: &Params<'_>,
) -> StoreResult<u64> {
    let statement = statements.get(client, sql).await?;
    Ok(client.execute(&statement, params).await?)
}

// ---------------------------------------------------------------------------------------------
// Rows

const GROUP_COLUMNS: &str = "g.id, g.name, g.avatar_url, g.introduction, g.announcement, g.ext, \
     g.owner, g.join_policy, g.invite_needs_accept, g.members_can_invite, g.max_members, \
     g.history_visible_to_new_members, g.all_muted, g.member_count, g.version, g.attributes, \
     g.attributes_version, g.counters, g.created_at, g.updated_at";

fn record(row: &Row) -> StoreResult<GroupRecord> {
    groups::group_from_row(row)
}

fn member(row: &Row) -> StoreResult<GroupMember> {
    groups::member_from_row(row)
}

fn application(row: &Row) -> StoreResult<GroupApplication> {
    groups::application_from_row(row)
}

impl groups::Columns for Row {
    fn text(&self, i: usize) -> StoreResult<String> {
        Ok(self.try_get(i)?)
    }
    fn opt_text(&self, i: usize) -> StoreResult<Option<String>> {
        Ok(self.try_get(i)?)
    }
    fn int(&self, i: usize) -> StoreResult<i64> {
        Ok(self.try_get(i)?)
    }
    fn opt_int(&self, i: usize) -> StoreResult<Option<i64>> {
        Ok(self.try_get(i)?)
    }
    fn flag(&self, i: usize) -> StoreResult<bool> {
        Ok(self.try_get(i)?)
    }
}

fn map_rows<T>(rows: Vec<Row>, f: impl Fn(&Row) -> StoreResult<T>) -> StoreResult<Vec<T>> {
    rows.iter().map(f).collect()
}

// ---------------------------------------------------------------------------------------------
// Reads

pub(super) async fn get_groups(
    conn: &mut PgConn,
    ids: &[GroupId],
) -> StoreResult<Vec<GroupRecord>> {
    let wanted: Vec<&str> = ids.iter().map(GroupId::as_str).collect();
    let sql = sql!("SELECT {GROUP_COLUMNS} FROM groups g WHERE g.id = ANY($1::text[])");
    let rows = query(&conn.client, &mut conn.statements, sql, &[&wanted]).await?;
    let mut found: HashMap<GroupId, GroupRecord> = map_rows(rows, record)?
        .into_iter()
        .map(|r| (r.info.group_id.clone(), r))
        .collect();
    Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
}

pub(super) async fn members_by_id(
    conn: &mut PgConn,
    group: &GroupId,
    users: &[UserId],
) -> StoreResult<Vec<GroupMember>> {
    let wanted: Vec<&str> = users.iter().map(UserId::as_str).collect();
    let mut found = members_of(&conn.client, &mut conn.statements, group, &wanted).await?;
    Ok(users.iter().filter_map(|u| found.remove(u)).collect())
}

pub(super) async fn members_page(
    conn: &mut PgConn,
    group: &GroupId,
    role: Option<GroupRole>,
    after: Option<&UserId>,
    limit: u32,
) -> StoreResult<Vec<GroupMember>> {
    let after = after.map_or("", UserId::as_str);
    let limit = i64::from(limit);
    let rows = match role {
        Some(role) => {
            let sql = sql!(
                "SELECT {MEMBER_COLUMNS} FROM group_members \
                 WHERE group_id = $1 AND role = $2 AND user_id > $3 ORDER BY user_id LIMIT $4"
            );
            let role = groups::role_to_sql(role);
            query(
                &conn.client,
                &mut conn.statements,
                sql,
                &[&group.as_str(), &role, &after, &limit],
            )
            .await?
        }
        None => {
            let sql = sql!(
                "SELECT {MEMBER_COLUMNS} FROM group_members \
                 WHERE group_id = $1 AND user_id > $2 ORDER BY user_id LIMIT $3"
            );
            query(
                &conn.client,
                &mut conn.statements,
                sql,
                &[&group.as_str(), &after, &limit],
            )
            .await?
        }
    };
    map_rows(rows, member)
}

pub(super) async fn joined(
    conn: &mut PgConn,
    user: &UserId,
    after: Option<&GroupId>,
    limit: u32,
) -> StoreResult<Vec<GroupRecord>> {
    let sql = sql!(
        "SELECT {GROUP_COLUMNS} FROM group_members m JOIN groups g ON g.id = m.group_id \
         WHERE m.user_id = $1 AND m.group_id > $2 ORDER BY m.group_id LIMIT $3"
    );
    let after = after.map_or("", GroupId::as_str);
    let rows = query(
        &conn.client,
        &mut conn.statements,
        sql,
        &[&user.as_str(), &after, &i64::from(limit)],
    )
    .await?;
    map_rows(rows, record)
}

pub(super) async fn public(
    conn: &mut PgConn,
    search: Option<&str>,
    after: Option<&GroupId>,
    limit: u32,
) -> StoreResult<Vec<GroupRecord>> {
    // `lower` under the "C" collation folds ASCII only, as SQLite's does; `strpos` takes the
    // query literally.
    let sql = sql!(
        "SELECT {GROUP_COLUMNS} FROM groups g \
         WHERE g.id > $1 AND g.join_policy <> $2 \
           AND ($3::text IS NULL \
             OR strpos(lower(g.id), lower($3::text COLLATE \"C\")) > 0 \
             OR strpos(lower(g.name COLLATE \"C\"), lower($3::text COLLATE \"C\")) > 0) \
         ORDER BY g.id LIMIT $4"
    );
    let after = after.map_or("", GroupId::as_str);
    let invite_only = groups::policy_to_sql(JoinPolicy::InviteOnly);
    let rows = query(
        &conn.client,
        &mut conn.statements,
        sql,
        &[&after, &invite_only, &search, &i64::from(limit)],
    )
    .await?;
    map_rows(rows, record)
}

pub(super) async fn block(
    conn: &mut PgConn,
    group: &GroupId,
    user: &UserId,
    now: Millis,
) -> StoreResult<Option<Option<Millis>>> {
    let rows = query(
        &conn.client,
        &mut conn.statements,
        "SELECT blocked_until FROM group_blocks WHERE group_id = $1 AND user_id = $2 \
         AND (blocked_until IS NULL OR blocked_until > $3)",
        &[&group.as_str(), &user.as_str(), &now],
    )
    .await?;
    rows.first()
        .map(|r| r.try_get::<_, Option<i64>>(0).map_err(StoreError::from))
        .transpose()
}

pub(super) async fn blocks(
    conn: &mut PgConn,
    group: &GroupId,
    now: Millis,
    after: Option<&UserId>,
    limit: u32,
) -> StoreResult<Vec<(UserId, Option<Millis>)>> {
    let after = after.map_or("", UserId::as_str);
    let rows = query(
        &conn.client,
        &mut conn.statements,
        "SELECT user_id, blocked_until FROM group_blocks WHERE group_id = $1 AND user_id > $2 \
         AND (blocked_until IS NULL OR blocked_until > $3) ORDER BY user_id LIMIT $4",
        &[&group.as_str(), &after, &now, &i64::from(limit)],
    )
    .await?;
    map_rows(rows, |row| {
        Ok((groups::user_id_from_sql(row.try_get(0)?)?, row.try_get(1)?))
    })
}

pub(super) async fn get_application(
    conn: &mut PgConn,
    id: &str,
) -> StoreResult<Option<GroupApplication>> {
    let Some(id) = application_id(id) else {
        return Ok(None);
    };
    let sql = sql!("SELECT {APPLICATION_COLUMNS} FROM group_applications WHERE id = $1");
    let rows = query(&conn.client, &mut conn.statements, sql, &[&id]).await?;
    rows.first().map(application).transpose()
}

pub(super) async fn list_applications(
    conn: &mut PgConn,
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
    let limit = i64::from(limit);
    let rows = match filter {
        ApplicationFilter::JoinsTo(ids) => {
            let sql = sql!(
                "SELECT {APPLICATION_COLUMNS} FROM group_applications \
                 WHERE group_id = ANY($1::text[]) AND kind = $2 AND id < $3 \
                 ORDER BY id DESC LIMIT $4"
            );
            let ids: Vec<&str> = ids.iter().map(GroupId::as_str).collect();
            let join = groups::kind_to_sql(ApplicationKind::Join);
            query(
                &conn.client,
                &mut conn.statements,
                sql,
                &[&ids, &join, &before, &limit],
            )
            .await?
        }
        ApplicationFilter::JoinsManagedBy(user) => {
            let sql = sql!(
                "SELECT {APPLICATION_COLUMNS} FROM group_applications \
                 WHERE group_id IN (SELECT group_id FROM group_members \
                   WHERE user_id = $1 AND role = ANY($5::text[])) \
                 AND kind = $2 AND id < $3 ORDER BY id DESC LIMIT $4"
            );
            let join = groups::kind_to_sql(ApplicationKind::Join);
            let managers = vec![
                groups::role_to_sql(GroupRole::Owner),
                groups::role_to_sql(GroupRole::Admin),
            ];
            query(
                &conn.client,
                &mut conn.statements,
                sql,
                &[&user.as_str(), &join, &before, &limit, &managers],
            )
            .await?
        }
        ApplicationFilter::InvitationsFor(user) => {
            let sql = sql!(
                "SELECT {APPLICATION_COLUMNS} FROM group_applications \
                 WHERE user_id = $1 AND kind = $2 AND id < $3 ORDER BY id DESC LIMIT $4"
            );
            let invite = groups::kind_to_sql(ApplicationKind::Invite);
            query(
                &conn.client,
                &mut conn.statements,
                sql,
                &[&user.as_str(), &invite, &before, &limit],
            )
            .await?
        }
        ApplicationFilter::SentBy(user) => {
            // The applicant's join applications and the inviter's invitations both have them
            // as `from_user`.
            let sql = sql!(
                "SELECT {APPLICATION_COLUMNS} FROM group_applications \
                 WHERE from_user = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
            );
            query(
                &conn.client,
                &mut conn.statements,
                sql,
                &[&user.as_str(), &before, &limit],
            )
            .await?
        }
    };
    map_rows(rows, application)
}

// ---------------------------------------------------------------------------------------------
// Writes

/// The members among `users`, by user id.
async fn members_of<C: GenericClient + Sync>(
    client: &C,
    statements: &mut Statements,
    group: &GroupId,
    users: &[&str],
) -> StoreResult<HashMap<UserId, GroupMember>> {
    if users.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = sql!(
        "SELECT {MEMBER_COLUMNS} FROM group_members \
         WHERE group_id = $1 AND user_id = ANY($2::text[])"
    );
    let rows = query(client, statements, sql, &[&group.as_str(), &users]).await?;
    Ok(map_rows(rows, member)?
        .into_iter()
        .map(|m| (m.user_id.clone(), m))
        .collect())
}

/// Locks the rows of `users` (sorted, `FOR SHARE`: they cannot be deleted until we commit);
/// `UserNotFound` for the first that is not a live user.
async fn lock_users<C: GenericClient + Sync>(
    client: &C,
    statements: &mut Statements,
    users: &[UserId],
) -> StoreResult<()> {
    if users.is_empty() {
        return Ok(());
    }
    let sorted = groups::sorted_unique(users.iter().cloned());
    let ids: Vec<&str> = sorted.iter().map(UserId::as_str).collect();
    let rows = query(
        client,
        statements,
        "SELECT id, deleted FROM users WHERE id = ANY($1::text[]) ORDER BY id FOR SHARE",
        &[&ids],
    )
    .await?;
    let mut live = HashSet::new();
    for row in rows {
        if !row.try_get::<_, bool>(1)? {
            live.insert(row.try_get::<_, String>(0)?);
        }
    }
    match sorted.iter().find(|u| !live.contains(u.as_str())) {
        Some(missing) => Err(StoreError::new(
            StoreErrorKind::UserNotFound,
            format!("no user {missing}"),
        )),
        None => Ok(()),
    }
}

/// The group conversation's last committed seq (0 before its first message). An append
/// committing meanwhile may give a new member one message from before their join: harmless.
async fn last_seq<C: GenericClient + Sync>(
    client: &C,
    statements: &mut Statements,
    conversation: &ConversationId,
) -> StoreResult<u64> {
    let rows = query(
        client,
        statements,
        "SELECT last_seq FROM conversations WHERE id = $1",
        &[&conversation.as_str()],
    )
    .await?;
    match rows.first() {
        Some(row) => Ok(row.try_get::<_, i64>(0)?.max(0) as u64),
        None => Ok(0),
    }
}

async fn insert_members<C: GenericClient + Sync>(
    client: &C,
    statements: &mut Statements,
    group: &GroupId,
    members: &[GroupMember],
) -> StoreResult<()> {
    if members.is_empty() {
        return Ok(());
    }
    let users: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
    let roles: Vec<&str> = members
        .iter()
        .map(|m| groups::role_to_sql(m.role))
        .collect();
    let joined: Vec<i64> = members.iter().map(|m| m.joined_at).collect();
    let nicknames: Vec<Option<&str>> = members.iter().map(|m| m.nickname.as_deref()).collect();
    let attributes: Vec<Option<String>> = members
        .iter()
        .map(|m| groups::map_to_sql(&m.attributes))
        .collect::<StoreResult<_>>()?;
    let muted: Vec<Option<i64>> = members.iter().map(|m| m.muted_until).collect();
    let allowed: Vec<bool> = members.iter().map(|m| m.allowed_when_all_muted).collect();
    let visible_from: Vec<i64> = members.iter().map(|m| m.visible_from_seq as i64).collect();
    execute(
        client,
        statements,
        "INSERT INTO group_members (group_id, user_id, role, joined_at, nickname, attributes, \
           muted_until, allowed_when_all_muted, visible_from_seq) \
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], \
           $7::int8[], $8::bool[], $9::int8[]) ORDER BY 1",
        &[
            &group.as_str(),
            &users,
            &roles,
            &joined,
            &nicknames,
            &attributes,
            &muted,
            &allowed,
            &visible_from,
        ],
    )
    .await?;
    Ok(())
}

/// Writes the members' role, nickname, attributes and mute state.
async fn save_members<C: GenericClient + Sync>(
    client: &C,
    statements: &mut Statements,
    group: &GroupId,
    members: &[&GroupMember],
) -> StoreResult<()> {
    if members.is_empty() {
        return Ok(());
    }
    let users: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
    let roles: Vec<&str> = members
        .iter()
        .map(|m| groups::role_to_sql(m.role))
        .collect();
    let nicknames: Vec<Option<&str>> = members.iter().map(|m| m.nickname.as_deref()).collect();
    let attributes: Vec<Option<String>> = members
        .iter()
        .map(|m| groups::map_to_sql(&m.attributes))
        .collect::<StoreResult<_>>()?;
    let muted: Vec<Option<i64>> = members.iter().map(|m| m.muted_until).collect();
    let allowed: Vec<bool> = members.iter().map(|m| m.allowed_when_all_muted).collect();
    let receive: Vec<bool> = members.iter().map(|m| m.receive_messages).collect();
    execute(
        client,
        statements,
        "UPDATE group_members m SET role = v.role, nickname = v.nickname, \
           attributes = v.attributes, muted_until = v.muted_until, \
           allowed_when_all_muted = v.allowed, receive_messages = v.receive \
         FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::bool[], \
           $8::bool[]) \
           AS v(user_id, role, nickname, attributes, muted_until, allowed, receive) \
         WHERE m.group_id = $1 AND m.user_id = v.user_id",
        &[
            &group.as_str(),
            &users,
            &roles,
            &nicknames,
            &attributes,
            &muted,
            &allowed,
            &receive,
        ],
    )
    .await?;
    Ok(())
}

/// Deletes the members among `users`; returns how many there were.
async fn delete_members<C: GenericClient + Sync>(
    client: &C,
    statements: &mut Statements,
    group: &GroupId,
    users: &[UserId],
) -> StoreResult<u32> {
    if users.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
    // A former member must not see later messages through their conversation state. (The
    // change counter lives in `users.sync_version`: deleting rows never lowers it.)
    execute(
        client,
        statements,
        "DELETE FROM user_conversations WHERE conversation_id = $1 AND user_id = ANY($2::text[])",
        &[&ConversationId::group(group).as_str(), &ids],
    )
    .await?;
    let deleted = execute(
        client,
        statements,
        "DELETE FROM group_members WHERE group_id = $1 AND user_id = ANY($2::text[])",
        &[&group.as_str(), &ids],
    )
    .await?;
    u32::try_from(deleted).map_err(StoreError::internal)
}

const INSERT_GROUP: &str = "INSERT INTO groups (id, name, avatar_url, introduction, announcement, \
       ext, owner, join_policy, invite_needs_accept, members_can_invite, max_members, \
       history_visible_to_new_members, all_muted, member_count, version, attributes, \
       attributes_version, counters, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
       $19, $20) \
     ON CONFLICT (id) DO NOTHING";
// `created_at` never changes; comparing it keeps `$19` typed (PostgreSQL refuses parameters
// a statement does not use).
const UPDATE_GROUP: &str = "UPDATE groups SET name = $2, avatar_url = $3, introduction = $4, \
       announcement = $5, ext = $6, owner = $7, join_policy = $8, invite_needs_accept = $9, \
       members_can_invite = $10, max_members = $11, history_visible_to_new_members = $12, \
       all_muted = $13, member_count = $14, version = $15, attributes = $16, \
       attributes_version = $17, counters = $18, updated_at = $20 \
     WHERE id = $1 AND created_at = $19";

/// Inserts the group row (`false` if the id is taken), or writes every column of it but its
/// id and creation time.
async fn save_group<C: GenericClient + Sync>(
    client: &C,
    statements: &mut Statements,
    r: &GroupRecord,
    insert: bool,
) -> StoreResult<bool> {
    let i = &r.info;
    let ext = groups::ext_to_sql(i.ext.as_ref())?;
    let policy = groups::policy_to_sql(i.options.join_policy);
    let max_members = i64::from(i.options.max_members);
    let member_count = i64::from(i.member_count);
    let version = i.version as i64;
    let attributes = groups::map_to_sql(&r.attributes)?;
    let attributes_version = r.attributes_version as i64;
    let counters = groups::map_to_sql(&r.counters)?;
    let written = execute(
        client,
        statements,
        if insert { INSERT_GROUP } else { UPDATE_GROUP },
        &[
            &i.group_id.as_str(),
            &i.name,
            &i.avatar_url,
            &i.introduction,
            &i.announcement,
            &ext,
            &i.owner.as_str(),
            &policy,
            &i.options.invite_needs_accept,
            &i.options.members_can_invite,
            &max_members,
            &i.options.history_visible_to_new_members,
            &i.all_muted,
            &member_count,
            &version,
            &attributes,
            &attributes_version,
            &counters,
            &i.created_at,
            &i.updated_at,
        ],
    )
    .await?;
    Ok(written == 1)
}

pub(super) async fn create_group(
    conn: &mut PgConn,
    group: NewGroup,
    now: Millis,
) -> StoreResult<GroupRecord> {
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
    let record = groups::new_record(&group, members.len() as u32, now);
    let tx = conn.client.transaction().await?;
    let statements = &mut conn.statements;
    // The new row is locked by its insert: the group's lock comes first, then its users'.
    if !save_group(&tx, statements, &record, true).await? {
        return Err(conflict(format!("group {} already exists", group.group_id)));
    }
    let ids: Vec<UserId> = members.iter().map(|m| m.user_id.clone()).collect();
    lock_users(&tx, statements, &ids).await?;
    let conversation = ConversationId::group(&group.group_id);
    let mut members = members;
    groups::set_join_point(
        &mut members,
        last_seq(&tx, statements, &conversation).await?,
        false,
        true,
    );
    insert_members(&tx, statements, &group.group_id, &members).await?;
    // The conversation exists from the start, stamped (last: the stamp's lock is held to the
    // commit), so the members' next sync shows it.
    execute(
        &tx,
        statements,
        "INSERT INTO conversations (id, kind, created_at) VALUES ($1, 'group', $2) \
         ON CONFLICT (id) DO NOTHING",
        &[&conversation.as_str(), &now],
    )
    .await?;
    super::writer::stamp_groups(&tx, statements, &[conversation.as_str()], &[0]).await?;
    tx.commit().await?;
    Ok(record)
}

pub(super) async fn write_group(
    conn: &mut PgConn,
    id: &GroupId,
    expected_version: Option<u64>,
    write: GroupWrite,
    now: Millis,
) -> StoreResult<GroupRecord> {
    let tx = conn.client.transaction().await?;
    let statements = &mut conn.statements;
    let sql = sql!("SELECT {GROUP_COLUMNS} FROM groups g WHERE g.id = $1 FOR UPDATE");
    let rows = query(&tx, statements, sql, &[&id.as_str()]).await?;
    let mut record = rows
        .first()
        .map(record)
        .transpose()?
        .ok_or_else(|| group_not_found(id))?;
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
            let ids: Vec<&str> = new.iter().map(|m| m.user_id.as_str()).collect();
            let existing = members_of(&tx, statements, id, &ids).await?;
            new.retain(|m| !existing.contains_key(&m.user_id));
            if let Some(m) = new.iter().find(|m| m.role == GroupRole::Owner) {
                return Err(conflict(format!(
                    "{} cannot join group {id} as an owner: {owner} is",
                    m.user_id
                )));
            }
            new.sort_by(|a, b| a.user_id.cmp(&b.user_id));
            let ids: Vec<UserId> = new.iter().map(|m| m.user_id.clone()).collect();
            lock_users(&tx, statements, &ids).await?;
            check_blocks(&tx, statements, id, &ids, now).await?;
            record.info.member_count = groups::count_after_adding(&record, new.len())?;
            let last = last_seq(&tx, statements, &ConversationId::group(id)).await?;
            groups::set_join_point(
                &mut new,
                last,
                record.info.options.history_visible_to_new_members,
                false,
            );
            insert_members(&tx, statements, id, &new).await?;
        }
        GroupWrite::RemoveMembers(users) => {
            if users.contains(&owner) {
                return Err(conflict(format!("the owner cannot leave group {id}")));
            }
            let removed =
                delete_members(&tx, statements, id, &groups::sorted_unique(users)).await?;
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
            let mut found = require_members(&tx, statements, id, &users).await?;
            for m in found.values_mut() {
                m.role = role;
            }
            let changed: Vec<&GroupMember> = users.iter().filter_map(|u| found.get(u)).collect();
            save_members(&tx, statements, id, &changed).await?;
        }
        GroupWrite::TransferOwner { to } => {
            if to != owner {
                let ids = [owner.as_str(), to.as_str()];
                let mut found = members_of(&tx, statements, id, &ids).await?;
                let Some(mut new_owner) = found.remove(&to) else {
                    return Err(not_member(id, &to));
                };
                new_owner.role = GroupRole::Owner;
                let mut changed = vec![new_owner];
                if let Some(mut old_owner) = found.remove(&owner) {
                    old_owner.role = GroupRole::Admin;
                    changed.push(old_owner);
                }
                let changed: Vec<&GroupMember> = changed.iter().collect();
                save_members(&tx, statements, id, &changed).await?;
                record.info.owner = to;
            }
        }
        GroupWrite::UpdateMembers { user_ids, update } => {
            let users = groups::sorted_unique(user_ids);
            let mut found = require_members(&tx, statements, id, &users).await?;
            for m in found.values_mut() {
                groups::apply_member_update(m, &update);
            }
            let changed: Vec<&GroupMember> = users.iter().filter_map(|u| found.get(u)).collect();
            save_members(&tx, statements, id, &changed).await?;
        }
        GroupWrite::Block { user_ids, until } => {
            if user_ids.contains(&owner) {
                return Err(conflict(format!(
                    "the owner of group {id} cannot be blocked"
                )));
            }
            let users = groups::sorted_unique(user_ids);
            let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
            execute(
                &tx,
                statements,
                "INSERT INTO group_blocks (group_id, user_id, blocked_until) \
                 SELECT $1, u, $3::int8 FROM unnest($2::text[]) AS u ORDER BY u \
                 ON CONFLICT (group_id, user_id) DO UPDATE SET blocked_until = excluded.blocked_until",
                &[&id.as_str(), &ids, &until],
            )
            .await?;
            let removed = delete_members(&tx, statements, id, &users).await?;
            record.info.member_count = record.info.member_count.saturating_sub(removed);
        }
        GroupWrite::Unblock(users) => {
            let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
            execute(
                &tx,
                statements,
                "DELETE FROM group_blocks WHERE group_id = $1 AND user_id = ANY($2::text[])",
                &[&id.as_str(), &ids],
            )
            .await?;
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
            execute(
                &tx,
                statements,
                "DELETE FROM user_conversations WHERE conversation_id = $1",
                &[&ConversationId::group(id).as_str()],
            )
            .await?;
            for sql in [
                "DELETE FROM group_members WHERE group_id = $1",
                "DELETE FROM group_blocks WHERE group_id = $1",
                "DELETE FROM group_applications WHERE group_id = $1",
                "DELETE FROM groups WHERE id = $1",
            ] {
                execute(&tx, statements, sql, &[&id.as_str()]).await?;
            }
            tx.commit().await?;
            record.info.version += 1;
            record.info.updated_at = now;
            return Ok(record);
        }
    }
    record.info.version += 1;
    record.info.updated_at = now;
    save_group(&tx, statements, &record, false).await?;
    tx.commit().await?;
    Ok(record)
}

/// `Blocked` if one of `users` is blocked from the group at `now`.
async fn check_blocks<C: GenericClient + Sync>(
    client: &C,
    statements: &mut Statements,
    group: &GroupId,
    users: &[UserId],
    now: Millis,
) -> StoreResult<()> {
    if users.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
    let rows = query(
        client,
        statements,
        "SELECT user_id FROM group_blocks WHERE group_id = $1 AND user_id = ANY($2::text[]) \
         AND (blocked_until IS NULL OR blocked_until > $3) ORDER BY user_id LIMIT 1",
        &[&group.as_str(), &ids, &now],
    )
    .await?;
    match rows.first() {
        Some(row) => Err(groups::blocked(
            group,
            &groups::user_id_from_sql(row.try_get(0)?)?,
        )),
        None => Ok(()),
    }
}

/// The members among `users`, or `NotMember` naming the first (in the order given) that is
/// not one.
async fn require_members<C: GenericClient + Sync>(
    client: &C,
    statements: &mut Statements,
    group: &GroupId,
    users: &[UserId],
) -> StoreResult<HashMap<UserId, GroupMember>> {
    let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
    let found = members_of(client, statements, group, &ids).await?;
    match users.iter().find(|u| !found.contains_key(*u)) {
        Some(missing) => Err(not_member(group, missing)),
        None => Ok(found),
    }
}

pub(super) async fn create_application(
    conn: &mut PgConn,
    a: NewApplication,
) -> StoreResult<GroupApplication> {
    let tx = conn.client.transaction().await?;
    let statements = &mut conn.statements;
    // The group row first (shared: a destroy waits for us, and we for it), then the users.
    let rows = query(
        &tx,
        statements,
        "SELECT 1 FROM groups WHERE id = $1 FOR SHARE",
        &[&a.group_id.as_str()],
    )
    .await?;
    if rows.is_empty() {
        return Err(group_not_found(&a.group_id));
    }
    lock_users(&tx, statements, &[a.from.clone(), a.user_id.clone()]).await?;
    let kind = groups::kind_to_sql(a.kind);
    let pending = groups::state_to_sql(ApplicationState::Pending);
    // A concurrent twin's insert makes ours do nothing once it commits; the pending one is
    // then visible to the next statement. (If it was decided meanwhile, we insert again.)
    for _ in 0..3 {
        let inserted = query(
            &tx,
            statements,
            "INSERT INTO group_applications \
               (group_id, kind, from_user, user_id, message, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (group_id, kind, user_id) WHERE state = 'pending' DO NOTHING \
             RETURNING id",
            &[
                &a.group_id.as_str(),
                &kind,
                &a.from.as_str(),
                &a.user_id.as_str(),
                &a.message,
                &pending,
                &a.now,
            ],
        )
        .await?;
        if let Some(row) = inserted.first() {
            let id: i64 = row.try_get(0)?;
            tx.commit().await?;
            return Ok(GroupApplication {
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
            });
        }
        let sql = sql!(
            "SELECT {APPLICATION_COLUMNS} FROM group_applications \
             WHERE group_id = $1 AND kind = $2 AND user_id = $3 AND state = $4"
        );
        let existing = query(
            &tx,
            statements,
            sql,
            &[&a.group_id.as_str(), &kind, &a.user_id.as_str(), &pending],
        )
        .await?;
        if let Some(row) = existing.first() {
            let found = application(row)?;
            tx.commit().await?;
            return Ok(found);
        }
    }
    Err(StoreError::new(
        StoreErrorKind::Unavailable,
        "the pending application kept changing; retry",
    ))
}

pub(super) async fn handle_application(
    conn: &mut PgConn,
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
    let state = groups::state_to_sql(if accept {
        ApplicationState::Accepted
    } else {
        ApplicationState::Declined
    });
    let pending = groups::state_to_sql(ApplicationState::Pending);
    let handled_by = handled_by.map(UserId::as_str);
    let sql = sql!(
        "UPDATE group_applications SET state = $2, handled_by = $3, reason = $4, handled_at = $5 \
         WHERE id = $1 AND state = $6 RETURNING {APPLICATION_COLUMNS}"
    );
    let rows = query(
        &conn.client,
        &mut conn.statements,
        sql,
        &[&key, &state, &handled_by, &reason, &now, &pending],
    )
    .await?;
    rows.first()
        .map(application)
        .transpose()?
        .ok_or_else(not_pending)
}
