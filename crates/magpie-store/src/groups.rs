//! Groups as the store keeps them: the group row, its members, its block list, its attributes
//! and counters, and join applications / invitations.
//!
//! The store applies changes atomically and guards them with the group's `version`; it does
//! not decide who may do what — the server reads, checks its permission rules, and writes with
//! the version it read (`expected_version`), retrying on `Conflict`. Every successful write
//! bumps the version by one.

use async_trait::async_trait;
use magpie_proto::group::{
    ApplicationKind, ApplicationState, GroupApplication, GroupId, GroupInfo, GroupMember,
    GroupOptions, GroupRole, JoinPolicy,
};
use magpie_proto::{Millis, UserId};
use serde_json::{Map, Value};

use crate::{StoreError, StoreErrorKind, StoreResult};

/// A group as stored: the public info plus what is fetched separately on the wire.
#[derive(Clone, PartialEq, Debug)]
pub struct GroupRecord {
    /// Info, including `version` and `member_count`.
    pub info: GroupInfo,
    /// Group attributes (key-values).
    pub attributes: Map<String, Value>,
    /// Bumped by every attribute write (the compare-and-set guard of `SetAttributes`).
    pub attributes_version: u64,
    /// Group counters.
    pub counters: Map<String, Value>,
}

/// Fields of a new group.
#[derive(Clone, PartialEq, Debug)]
pub struct NewGroup {
    /// The id (chosen by the caller: the app's or a generated one).
    pub group_id: GroupId,
    /// Display name.
    pub name: String,
    /// Avatar URL.
    pub avatar_url: Option<String>,
    /// Description.
    pub introduction: Option<String>,
    /// App data.
    pub ext: Option<Map<String, Value>>,
    /// Settings.
    pub options: GroupOptions,
    /// The owner (also listed in `members` with role `Owner`).
    pub owner: UserId,
    /// The first members, the owner included.
    pub members: Vec<GroupMember>,
}

/// A partial update of a group's info; `None` leaves a field alone, `Some(None)` clears it.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct GroupInfoUpdate {
    /// New name.
    pub name: Option<String>,
    /// New avatar.
    pub avatar_url: Option<Option<String>>,
    /// New introduction.
    pub introduction: Option<Option<String>>,
    /// New announcement.
    pub announcement: Option<Option<String>>,
    /// New ext.
    pub ext: Option<Option<Map<String, Value>>>,
    /// New options.
    pub options: Option<GroupOptions>,
    /// Mute or unmute everyone.
    pub all_muted: Option<bool>,
}

/// A partial update of members; `None` leaves a field alone.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct MemberUpdate {
    /// New group nickname (`Some(None)` clears it).
    pub nickname: Option<Option<String>>,
    /// Attribute keys to set (a `null` value deletes the key).
    pub attributes: Option<Map<String, Value>>,
    /// Muted until (`Some(None)` unmutes).
    pub muted_until: Option<Option<Millis>>,
    /// Allow-list membership.
    pub allowed_when_all_muted: Option<bool>,
    /// Whether the member receives the group's messages.
    pub receive_messages: Option<bool>,
}

/// One atomic change to a group.
#[derive(Clone, PartialEq, Debug)]
pub enum GroupWrite {
    /// Changes info fields.
    UpdateInfo(GroupInfoUpdate),
    /// Adds members (existing members are left as they are). Refused with `GroupFull` if the
    /// group would exceed `options.max_members`; with `Blocked` if one of them is on the block
    /// list and still blocked at `now`.
    AddMembers(Vec<GroupMember>),
    /// Removes members (absent ones are ignored); never the owner (`Conflict`).
    RemoveMembers(Vec<UserId>),
    /// Sets members' roles to admin or member (never owner: see `TransferOwner`).
    SetRole {
        /// The members (all must be members: else `NotMember`).
        user_ids: Vec<UserId>,
        /// Admin or member.
        role: GroupRole,
    },
    /// Makes `to` (a member) the owner; the old owner becomes an admin.
    TransferOwner {
        /// The new owner.
        to: UserId,
    },
    /// Updates members (all must be members: else `NotMember`).
    UpdateMembers {
        /// The members.
        user_ids: Vec<UserId>,
        /// What changes.
        update: MemberUpdate,
    },
    /// Puts users on the block list until a time (`None`: until unblocked), removing them
    /// from the members if they were members (never the owner: `Conflict`).
    Block {
        /// The users.
        user_ids: Vec<UserId>,
        /// Until when.
        until: Option<Millis>,
    },
    /// Takes users off the block list.
    Unblock(Vec<UserId>),
    /// Sets and deletes attributes. Limits (16 keys, key ≤ 32 bytes, value ≤ 4 KiB, total
    /// ≤ 16 KiB) are the server's to check; `expected_attributes_version`, when given, must
    /// match or the write fails with `Conflict`.
    SetAttributes {
        /// Keys to set.
        set: Map<String, Value>,
        /// Keys to delete.
        delete: Vec<String>,
        /// The compare-and-set guard.
        expected_attributes_version: Option<u64>,
    },
    /// Adds `delta` to an integer counter (a missing counter starts at 0).
    IncrementCounter {
        /// The counter.
        key: String,
        /// How much (may be negative).
        delta: i64,
    },
    /// Destroys the group: members, block list, attributes and pending applications go; the
    /// id may be used again by a new group.
    Destroy,
}

/// A new application or invitation.
#[derive(Clone, PartialEq, Debug)]
pub struct NewApplication {
    /// The group.
    pub group_id: GroupId,
    /// Join or invite.
    pub kind: ApplicationKind,
    /// The applicant, or the inviting member.
    pub from: UserId,
    /// Who would join.
    pub user_id: UserId,
    /// The request's message.
    pub message: Option<String>,
    /// Now.
    pub now: Millis,
}

/// Which applications to list.
#[derive(Clone, PartialEq, Debug)]
pub enum ApplicationFilter {
    /// Join applications to these groups.
    JoinsTo(Vec<GroupId>),
    /// Join applications to every group this user is the owner or an admin of.
    JoinsManagedBy(UserId),
    /// Invitations addressed to this user.
    InvitationsFor(UserId),
    /// What this user asked: their join applications and the invitations they sent.
    SentBy(UserId),
}

/// The group part of the storage interface.
#[async_trait]
pub trait GroupStore: Send + Sync + 'static {
    /// Creates a group with its first members at version 1; `Conflict` if the id is taken by
    /// a group that exists. Every member must be an existing user (`UserNotFound`).
    ///
    /// A user listed twice is added once (the first listing wins); the owner is always a
    /// member with role `Owner` (added if not listed); another member with role `Owner` is a
    /// `Conflict`; more members than `options.max_members` is `GroupFull`. `member_count` is
    /// the number of members stored; attributes and counters start empty (version 0).
    async fn create_group(&self, group: NewGroup, now: Millis) -> StoreResult<GroupRecord>;

    /// Applies one change if the group exists (`GroupNotFound`) and, when given,
    /// `expected_version` is its version (`Conflict`). Returns the group after the change.
    ///
    /// Every successful write bumps `version` by exactly one and sets `updated_at` to `now`,
    /// even one that changes nothing else (removing non-members, say). A refused write
    /// changes nothing. Details beyond [`GroupWrite`]'s:
    ///
    /// - `AddMembers`: a user listed twice is added once; users who are not (or no longer)
    ///   users are refused with `UserNotFound`; a new member with role `Owner` is a `Conflict`.
    /// - `SetRole` naming the owner, or with role `Owner`, is a `Conflict`.
    /// - `TransferOwner` to the current owner changes nothing but the version.
    /// - `SetAttributes`: keys are deleted first, then set; a `null` value in `set` deletes
    ///   its key (no `null` is ever stored).
    /// - `IncrementCounter`: `Conflict` if the result would overflow an `i64`.
    /// - `Destroy` returns the group as it last was, with the bumped version.
    async fn write_group(
        &self,
        group: &GroupId,
        expected_version: Option<u64>,
        write: GroupWrite,
        now: Millis,
    ) -> StoreResult<GroupRecord>;

    /// The groups that exist among `ids`, in the order asked.
    async fn get_groups(&self, ids: &[GroupId]) -> StoreResult<Vec<GroupRecord>>;

    /// Members among `users`, in the order asked (non-members left out).
    async fn group_members_by_id(
        &self,
        group: &GroupId,
        users: &[UserId],
    ) -> StoreResult<Vec<GroupMember>>;

    /// A page of members ordered by user id, after `after`, optionally of one role.
    async fn group_members(
        &self,
        group: &GroupId,
        role: Option<GroupRole>,
        after: Option<&UserId>,
        limit: u32,
    ) -> StoreResult<Vec<GroupMember>>;

    /// Every member's read position in the group conversation: the larger of their read seq
    /// and the seq before their join point. Ordered by user id.
    async fn group_read_positions(&self, group: &GroupId) -> StoreResult<Vec<(UserId, u64)>>;

    /// A page of the groups `user` is a member of, ordered by group id, after `after`.
    async fn joined_groups(
        &self,
        user: &UserId,
        after: Option<&GroupId>,
        limit: u32,
    ) -> StoreResult<Vec<GroupRecord>>;

    /// A page of groups that are not invite-only, ordered by group id, after `after`, whose
    /// id or name contains `query` (case-insensitive) when given. Case is folded for ASCII
    /// letters only (both backends alike); the query is a plain substring (no wildcards).
    async fn public_groups(
        &self,
        query: Option<&str>,
        after: Option<&GroupId>,
        limit: u32,
    ) -> StoreResult<Vec<GroupRecord>>;

    /// Whether `user` is on the group's block list at `now`; `Some(until)` if so (`until`
    /// absent: indefinitely).
    async fn group_block(
        &self,
        group: &GroupId,
        user: &UserId,
        now: Millis,
    ) -> StoreResult<Option<Option<Millis>>>;

    /// A page of the block list entries still in force at `now`, ordered by user id.
    async fn group_blocks(
        &self,
        group: &GroupId,
        now: Millis,
        after: Option<&UserId>,
        limit: u32,
    ) -> StoreResult<Vec<(UserId, Option<Millis>)>>;

    /// Records an application or invitation. If one of the same kind for the same group and
    /// user is pending, returns that one instead (with its original message). `GroupNotFound`
    /// if the group does not exist, `UserNotFound` if `from` or `user_id` is not a user.
    async fn create_application(
        &self,
        application: NewApplication,
    ) -> StoreResult<GroupApplication>;

    /// An application by id (`None` if unknown).
    async fn get_application(&self, id: &str) -> StoreResult<Option<GroupApplication>>;

    /// Decides a pending application: `Conflict` if it is not pending any more, or does not
    /// exist (any more: destroying a group deletes its applications). Only the application
    /// changes: adding the member is a separate `write_group`.
    async fn handle_application(
        &self,
        id: &str,
        accept: bool,
        handled_by: Option<&UserId>,
        reason: Option<String>,
        now: Millis,
    ) -> StoreResult<GroupApplication>;

    /// Applications matching `filter`, newest first (by id), older than `before` (an
    /// application id) when given; a `before` that is not an application id matches nothing.
    async fn list_applications(
        &self,
        filter: ApplicationFilter,
        before: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<GroupApplication>>;
}

// What both backends share: the column encodings of the enums, and the in-memory halves of the
// writes (each backend loads the rows, applies these, and writes the rows back).

/// A result row of either backend, read by column index: all the shared row decoders need.
pub(crate) trait Columns {
    /// A non-null text column.
    fn text(&self, i: usize) -> StoreResult<String>;
    /// A nullable text column.
    fn opt_text(&self, i: usize) -> StoreResult<Option<String>>;
    /// A non-null integer column.
    fn int(&self, i: usize) -> StoreResult<i64>;
    /// A nullable integer column.
    fn opt_int(&self, i: usize) -> StoreResult<Option<i64>>;
    /// A boolean column.
    fn flag(&self, i: usize) -> StoreResult<bool>;
}

/// The member columns, in the order [`member_from_row`] reads them.
pub(crate) const MEMBER_COLUMNS: &str = "user_id, role, joined_at, nickname, attributes, \
     muted_until, allowed_when_all_muted, visible_from_seq, receive_messages";

/// The application columns, in the order [`application_from_row`] reads them.
pub(crate) const APPLICATION_COLUMNS: &str = "id, group_id, kind, from_user, user_id, message, \
     state, handled_by, reason, created_at, handled_at";

/// A group from a row of the group columns (id, name, avatar_url, introduction,
/// announcement, ext, owner, join_policy, invite_needs_accept, members_can_invite,
/// max_members, history_visible_to_new_members, all_muted, member_count, version, attributes,
/// attributes_version, counters, created_at, updated_at).
pub(crate) fn group_from_row(row: &impl Columns) -> StoreResult<GroupRecord> {
    let count = |i: usize, what: &str| u32::try_from(row.int(i)?).map_err(|e| corrupt(what, e));
    Ok(GroupRecord {
        info: GroupInfo {
            group_id: group_id_from_sql(row.text(0)?)?,
            name: row.text(1)?,
            avatar_url: row.opt_text(2)?,
            introduction: row.opt_text(3)?,
            announcement: row.opt_text(4)?,
            ext: ext_from_sql(row.opt_text(5)?)?,
            owner: user_id_from_sql(row.text(6)?)?,
            options: GroupOptions {
                join_policy: policy_from_sql(&row.text(7)?)?,
                invite_needs_accept: row.flag(8)?,
                members_can_invite: row.flag(9)?,
                max_members: count(10, "max_members")?,
                history_visible_to_new_members: row.flag(11)?,
            },
            all_muted: row.flag(12)?,
            member_count: count(13, "member_count")?,
            version: row.int(14)? as u64,
            created_at: row.int(18)?,
            updated_at: row.int(19)?,
        },
        attributes: map_from_sql(row.opt_text(15)?)?,
        attributes_version: row.int(16)? as u64,
        counters: map_from_sql(row.opt_text(17)?)?,
    })
}

/// A member from a row of [`MEMBER_COLUMNS`].
pub(crate) fn member_from_row(row: &impl Columns) -> StoreResult<GroupMember> {
    Ok(GroupMember {
        user_id: user_id_from_sql(row.text(0)?)?,
        role: role_from_sql(&row.text(1)?)?,
        joined_at: row.int(2)?,
        nickname: row.opt_text(3)?,
        attributes: map_from_sql(row.opt_text(4)?)?,
        muted_until: row.opt_int(5)?,
        allowed_when_all_muted: row.flag(6)?,
        visible_from_seq: u64::try_from(row.int(7)?).map_err(|e| corrupt("visible_from_seq", e))?,
        receive_messages: row.flag(8)?,
    })
}

/// An application from a row of [`APPLICATION_COLUMNS`].
pub(crate) fn application_from_row(row: &impl Columns) -> StoreResult<GroupApplication> {
    Ok(GroupApplication {
        application_id: row.int(0)?.to_string(),
        group_id: group_id_from_sql(row.text(1)?)?,
        kind: kind_from_sql(&row.text(2)?)?,
        from: user_id_from_sql(row.text(3)?)?,
        user_id: user_id_from_sql(row.text(4)?)?,
        message: row.opt_text(5)?,
        state: state_from_sql(&row.text(6)?)?,
        handled_by: row.opt_text(7)?.map(user_id_from_sql).transpose()?,
        reason: row.opt_text(8)?,
        created_at: row.int(9)?,
        handled_at: row.opt_int(10)?,
    })
}

pub(crate) fn role_to_sql(role: GroupRole) -> &'static str {
    match role {
        GroupRole::Member => "member",
        GroupRole::Admin => "admin",
        GroupRole::Owner => "owner",
    }
}

pub(crate) fn role_from_sql(s: &str) -> StoreResult<GroupRole> {
    Ok(match s {
        "member" => GroupRole::Member,
        "admin" => GroupRole::Admin,
        "owner" => GroupRole::Owner,
        other => return Err(corrupt("group role", other)),
    })
}

pub(crate) fn policy_to_sql(policy: JoinPolicy) -> &'static str {
    match policy {
        JoinPolicy::Open => "open",
        JoinPolicy::Approval => "approval",
        JoinPolicy::InviteOnly => "invite_only",
    }
}

pub(crate) fn policy_from_sql(s: &str) -> StoreResult<JoinPolicy> {
    Ok(match s {
        "open" => JoinPolicy::Open,
        "approval" => JoinPolicy::Approval,
        "invite_only" => JoinPolicy::InviteOnly,
        other => return Err(corrupt("join policy", other)),
    })
}

pub(crate) fn kind_to_sql(kind: ApplicationKind) -> &'static str {
    match kind {
        ApplicationKind::Join => "join",
        ApplicationKind::Invite => "invite",
    }
}

pub(crate) fn kind_from_sql(s: &str) -> StoreResult<ApplicationKind> {
    Ok(match s {
        "join" => ApplicationKind::Join,
        "invite" => ApplicationKind::Invite,
        other => return Err(corrupt("application kind", other)),
    })
}

pub(crate) fn state_to_sql(state: ApplicationState) -> &'static str {
    match state {
        ApplicationState::Pending => "pending",
        ApplicationState::Accepted => "accepted",
        ApplicationState::Declined => "declined",
    }
}

pub(crate) fn state_from_sql(s: &str) -> StoreResult<ApplicationState> {
    Ok(match s {
        "pending" => ApplicationState::Pending,
        "accepted" => ApplicationState::Accepted,
        "declined" => ApplicationState::Declined,
        other => return Err(corrupt("application state", other)),
    })
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::new(
        StoreErrorKind::Internal,
        format!("corrupt {what} in the database: {e}"),
    )
}

pub(crate) fn group_id_from_sql(s: String) -> StoreResult<GroupId> {
    GroupId::new(s).map_err(|e| corrupt("group id", e.message))
}

pub(crate) fn user_id_from_sql(s: String) -> StoreResult<UserId> {
    UserId::new(s).map_err(|e| corrupt("user id", e.message))
}

/// Encodes a JSON object column: `NULL` when empty.
pub(crate) fn map_to_sql(map: &Map<String, Value>) -> StoreResult<Option<String>> {
    if map.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(map)
        .map(Some)
        .map_err(StoreError::internal)
}

/// Decodes a JSON object column (`NULL`: empty).
pub(crate) fn map_from_sql(text: Option<String>) -> StoreResult<Map<String, Value>> {
    match text {
        None => Ok(Map::new()),
        Some(t) => serde_json::from_str(&t).map_err(|e| corrupt("JSON object", e)),
    }
}

/// Decodes an optional JSON object column (`ext`).
pub(crate) fn ext_from_sql(text: Option<String>) -> StoreResult<Option<Map<String, Value>>> {
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|e| corrupt("ext", e))
}

/// Encodes an optional JSON object column (`ext`).
pub(crate) fn ext_to_sql(ext: Option<&Map<String, Value>>) -> StoreResult<Option<String>> {
    ext.map(serde_json::to_string)
        .transpose()
        .map_err(StoreError::internal)
}

/// An application id as stored (`None` if it cannot be one).
pub(crate) fn application_id(id: &str) -> Option<i64> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

pub(crate) fn group_not_found(id: &GroupId) -> StoreError {
    StoreError::new(StoreErrorKind::GroupNotFound, format!("no group {id}"))
}

pub(crate) fn not_member(group: &GroupId, user: &UserId) -> StoreError {
    StoreError::new(
        StoreErrorKind::NotMember,
        format!("{user} is not a member of group {group}"),
    )
}

pub(crate) fn conflict(message: impl Into<String>) -> StoreError {
    StoreError::new(StoreErrorKind::Conflict, message)
}

pub(crate) fn blocked(group: &GroupId, user: &UserId) -> StoreError {
    StoreError::new(
        StoreErrorKind::Blocked,
        format!("{user} is blocked from group {group}"),
    )
}

pub(crate) fn group_full(group: &GroupId, max: u32) -> StoreError {
    StoreError::new(
        StoreErrorKind::GroupFull,
        format!("group {group} would exceed its {max} members"),
    )
}

/// The ids once each, sorted (the order rows are locked and written in).
pub(crate) fn sorted_unique(ids: impl IntoIterator<Item = UserId>) -> Vec<UserId> {
    let set: std::collections::BTreeSet<UserId> = ids.into_iter().collect();
    set.into_iter().collect()
}

/// The members of a new group, once each (the first listing of a user wins), with the owner
/// among them with role `Owner`, and nobody else an owner (`Conflict`).
pub(crate) fn first_members(group: &NewGroup, now: Millis) -> StoreResult<Vec<GroupMember>> {
    let mut seen = std::collections::HashSet::new();
    let mut members = Vec::with_capacity(group.members.len() + 1);
    for member in &group.members {
        if !seen.insert(member.user_id.clone()) {
            continue;
        }
        let mut member = member.clone();
        if member.user_id == group.owner {
            member.role = GroupRole::Owner;
        } else if member.role == GroupRole::Owner {
            return Err(conflict(format!(
                "{} cannot be an owner of group {}: {} is",
                member.user_id, group.group_id, group.owner
            )));
        }
        members.push(member);
    }
    if !seen.contains(&group.owner) {
        members.insert(
            0,
            GroupMember {
                user_id: group.owner.clone(),
                role: GroupRole::Owner,
                joined_at: now,
                nickname: None,
                attributes: Map::new(),
                muted_until: None,
                allowed_when_all_muted: false,
                visible_from_seq: 1,
                receive_messages: true,
            },
        );
    }
    Ok(members)
}

/// The record of a group just created.
pub(crate) fn new_record(group: &NewGroup, member_count: u32, now: Millis) -> GroupRecord {
    GroupRecord {
        info: GroupInfo {
            group_id: group.group_id.clone(),
            name: group.name.clone(),
            avatar_url: group.avatar_url.clone(),
            introduction: group.introduction.clone(),
            announcement: None,
            ext: group.ext.clone(),
            owner: group.owner.clone(),
            options: group.options.clone(),
            all_muted: false,
            member_count,
            version: 1,
            created_at: now,
            updated_at: now,
        },
        attributes: Map::new(),
        attributes_version: 0,
        counters: Map::new(),
    }
}

/// `Conflict` unless the group is at `expected` (when given).
pub(crate) fn check_version(record: &GroupRecord, expected: Option<u64>) -> StoreResult<()> {
    match expected {
        Some(v) if v != record.info.version => Err(conflict(format!(
            "group {} is at version {}, not {v}",
            record.info.group_id, record.info.version
        ))),
        _ => Ok(()),
    }
}

/// Applies an info update in memory.
pub(crate) fn apply_info(info: &mut GroupInfo, update: GroupInfoUpdate) {
    let GroupInfoUpdate {
        name,
        avatar_url,
        introduction,
        announcement,
        ext,
        options,
        all_muted,
    } = update;
    if let Some(name) = name {
        info.name = name;
    }
    if let Some(avatar_url) = avatar_url {
        info.avatar_url = avatar_url;
    }
    if let Some(introduction) = introduction {
        info.introduction = introduction;
    }
    if let Some(announcement) = announcement {
        info.announcement = announcement;
    }
    if let Some(ext) = ext {
        info.ext = ext;
    }
    if let Some(options) = options {
        info.options = options;
    }
    if let Some(all_muted) = all_muted {
        info.all_muted = all_muted;
    }
}

/// Applies `SetAttributes` in memory (compare-and-set on the attributes version, which it
/// bumps). Deletes first, then sets; a `null` value deletes its key.
pub(crate) fn apply_attributes(
    record: &mut GroupRecord,
    set: Map<String, Value>,
    delete: Vec<String>,
    expected: Option<u64>,
) -> StoreResult<()> {
    if let Some(expected) = expected
        && expected != record.attributes_version
    {
        return Err(conflict(format!(
            "the attributes of group {} are at version {}, not {expected}",
            record.info.group_id, record.attributes_version
        )));
    }
    for key in delete {
        record.attributes.remove(&key);
    }
    merge_map(&mut record.attributes, set);
    record.attributes_version += 1;
    Ok(())
}

/// Sets the keys of `changes` in `map`; a `null` value deletes its key.
pub(crate) fn merge_map(map: &mut Map<String, Value>, changes: Map<String, Value>) {
    for (key, value) in changes {
        if value.is_null() {
            map.remove(&key);
        } else {
            map.insert(key, value);
        }
    }
}

/// Applies `IncrementCounter` in memory. `Conflict` if the result would not fit an `i64` (or
/// the stored value is not an integer).
pub(crate) fn apply_increment(
    record: &mut GroupRecord,
    key: String,
    delta: i64,
) -> StoreResult<()> {
    let current = match record.counters.get(&key) {
        None => 0,
        Some(value) => value.as_i64().ok_or_else(|| {
            conflict(format!(
                "counter {key:?} of group {} is not an integer",
                record.info.group_id
            ))
        })?,
    };
    let next = current.checked_add(delta).ok_or_else(|| {
        conflict(format!(
            "counter {key:?} of group {} would overflow",
            record.info.group_id
        ))
    })?;
    record.counters.insert(key, Value::from(next));
    Ok(())
}

/// Applies a member update in memory.
pub(crate) fn apply_member_update(member: &mut GroupMember, update: &MemberUpdate) {
    if let Some(nickname) = &update.nickname {
        member.nickname.clone_from(nickname);
    }
    if let Some(attributes) = &update.attributes {
        merge_map(&mut member.attributes, attributes.clone());
    }
    if let Some(muted_until) = update.muted_until {
        member.muted_until = muted_until;
    }
    if let Some(allowed) = update.allowed_when_all_muted {
        member.allowed_when_all_muted = allowed;
    }
    if let Some(receive) = update.receive_messages {
        member.receive_messages = receive;
    }
}

/// A new member's attributes never hold `null` values, and a new member receives messages.
pub(crate) fn clean_member(mut member: GroupMember) -> GroupMember {
    member.attributes.retain(|_, v| !v.is_null());
    member.receive_messages = true;
    member
}

/// Sets where new members' history starts, given the group conversation's last seq: after it,
/// or at 1 when the group shows its history to new members. A group's first members always
/// start after it (a group re-created under a destroyed one's id does not show the old one's
/// messages).
pub(crate) fn set_join_point(
    members: &mut [GroupMember],
    last_seq: u64,
    history_visible: bool,
    creating: bool,
) {
    let from = if history_visible && !creating {
        1
    } else {
        last_seq + 1
    };
    for member in members {
        member.visible_from_seq = from;
    }
}

/// `member_count` after adding `added` to `current`, or `GroupFull`.
pub(crate) fn count_after_adding(record: &GroupRecord, added: usize) -> StoreResult<u32> {
    let max = record.info.options.max_members;
    let total = u64::from(record.info.member_count) + added as u64;
    if total > u64::from(max) {
        return Err(group_full(&record.info.group_id, max));
    }
    Ok(total as u32)
}
