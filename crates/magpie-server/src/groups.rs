//! Groups: who may do what, the limits, and telling the right people about every change.
//!
//! Owns the permission matrix (owner / admin / member / outsider, and the app backend, which
//! may do everything), validation of names, texts and attributes, and the `group` events. The
//! store applies each change atomically under the group's version; this module reads, checks,
//! and writes with the version it read, retrying when another change got in between. It must
//! not know about sockets: the gateway and the REST API both call it.

use std::collections::BTreeSet;

use magpie_proto::frame::{Empty, Request, Response};
use magpie_proto::group::{
    AddCounterRequest, ApplicationBox, ApplicationKind, ApplicationState, ApplicationsPage,
    ApplicationsRequest, BlockEntry, BlocksPage, BlocksRequest, CreateGroupRequest,
    GroupApplication, GroupAttributes, GroupChange, GroupCounters, GroupEvent, GroupIds, GroupInfo,
    GroupList, GroupMember, GroupOptions, GroupPage, GroupPageRequest, GroupRef, GroupRole,
    HandleApplicationRequest, InviteOutcome, InviteRequest, InviteResponse, InviteResult,
    JoinGroupRequest, JoinGroupResponse, JoinPolicy, KickRequest, ListChangeRequest,
    MAX_APPLICATION_TEXT_LEN, MAX_GROUP_EXT_BYTES, MAX_GROUP_NAME_LEN, MAX_GROUP_TEXT_LEN,
    MAX_USERS_PER_CALL, MemberList, MembersInfoRequest, MembersPage, MembersRequest,
    MuteAllRequest, MuteRequest, SetAttributesRequest, SetMemberRequest, SetRoleRequest,
    TransferRequest, UpdateGroupRequest,
};
use magpie_proto::message::{GroupNoticeKind, MAX_URL_LEN};
use magpie_proto::{ErrorCode, Event, GroupId, Millis, ServerFrame, UserId};
use magpie_store::{
    ApplicationFilter, GroupInfoUpdate, GroupRecord, GroupWrite, MemberUpdate, NewApplication,
    NewGroup, StoreErrorKind,
};
use serde_json::{Map, Value};

use crate::app::App;
use crate::clock::now_ms;
use crate::encoded::json_len;
use crate::error::{Error, Result};
use crate::messaging::page_limit;
use crate::metrics::Metrics;
use crate::sessions::SharedFrame;

/// Keys a group's attributes may have.
pub(crate) const MAX_ATTRIBUTE_KEYS: usize = 16;
/// Longest attribute or counter key, in bytes.
pub(crate) const MAX_ATTRIBUTE_KEY_LEN: usize = 32;
/// Largest attribute value, JSON-encoded.
pub(crate) const MAX_ATTRIBUTE_VALUE_BYTES: usize = 4096;
/// Largest sum of keys and encoded values.
pub(crate) const MAX_ATTRIBUTES_BYTES: usize = 16 * 1024;
/// Counters a group may have.
pub(crate) const MAX_COUNTERS: usize = 32;
/// Largest per-member attributes, JSON-encoded.
pub(crate) const MAX_MEMBER_ATTRIBUTES_BYTES: usize = 4096;
/// Longest group nickname, in bytes.
pub(crate) const MAX_NICKNAME_LEN: usize = 100;
/// Times a change is retried when another change to the same group got in between.
const WRITE_ATTEMPTS: usize = 8;

/// Who acts on a group.
#[derive(Clone, Debug)]
pub enum Actor {
    /// A user, through a device.
    User(UserId),
    /// The app backend, through the REST API: allowed everything.
    Backend,
}

impl Actor {
    fn user(&self) -> Option<&UserId> {
        match self {
            Self::User(user) => Some(user),
            Self::Backend => None,
        }
    }
}

fn group_not_found(id: &GroupId) -> Error {
    Error::new(ErrorCode::GroupNotFound, format!("no group {id}"))
}

fn forbidden(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::Forbidden, message)
}

/// Splits a page fetched with one row more than `limit`: the rows to answer, and whether
/// more follow.
fn split_page<T>(mut rows: Vec<T>, limit: u32) -> (Vec<T>, bool) {
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    (rows, has_more)
}

fn too_many_users() -> Error {
    Error::new(
        ErrorCode::TooLarge,
        format!("at most {MAX_USERS_PER_CALL} users per call"),
    )
}

/// Every one of `users` must be among `members` (as read for the change).
fn require_all_members(members: &[GroupMember], users: &[UserId]) -> Result<()> {
    if members.len() != users.len() {
        return Err(Error::new(
            ErrorCode::NotGroupMember,
            "every user must be a member",
        ));
    }
    Ok(())
}

/// The users a list change adds and removes, deduplicated and within the per-call limit.
fn checked_list_change(request: &ListChangeRequest) -> Result<(Vec<UserId>, Vec<UserId>)> {
    let (added, removed) = (dedup(&request.add), dedup(&request.remove));
    if added.is_empty() && removed.is_empty() {
        return Err(Error::bad_request("name users to add or remove"));
    }
    if added.len() + removed.len() > MAX_USERS_PER_CALL {
        return Err(too_many_users());
    }
    Ok((added, removed))
}

fn check_text(field: &str, value: Option<&str>, max: usize) -> Result<()> {
    if let Some(value) = value
        && value.len() > max
    {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!("{field} is longer than {max} bytes"),
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::bad_request("name must not be empty"));
    }
    check_text("name", Some(name), MAX_GROUP_NAME_LEN)
}

fn check_ext(ext: Option<&Map<String, Value>>) -> Result<()> {
    let len = ext.map_or(0, json_len);
    if len > MAX_GROUP_EXT_BYTES {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!("ext is {len} bytes encoded; the limit is {MAX_GROUP_EXT_BYTES}"),
        ));
    }
    Ok(())
}

fn check_users(users: &[UserId]) -> Result<()> {
    if users.is_empty() {
        return Err(Error::bad_request("name at least one user"));
    }
    if users.len() > MAX_USERS_PER_CALL {
        return Err(too_many_users());
    }
    Ok(())
}

fn dedup(users: &[UserId]) -> Vec<UserId> {
    let mut seen = BTreeSet::new();
    users
        .iter()
        .filter(|u| seen.insert((*u).clone()))
        .cloned()
        .collect()
}

fn seconds_from_now(now: Millis, seconds: u64) -> Millis {
    now.saturating_add(i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX))
}

/// The caller's standing in a group.
pub(crate) struct Standing {
    record: GroupRecord,
    /// The acting user's membership (`None` for the backend or an outsider).
    member: Option<GroupMember>,
    backend: bool,
}

impl Standing {
    fn role(&self) -> Option<GroupRole> {
        if self.backend {
            return Some(GroupRole::Owner);
        }
        self.member.as_ref().map(|m| m.role)
    }

    pub(crate) fn require_member(&self) -> Result<GroupRole> {
        self.role().ok_or_else(|| {
            Error::new(
                ErrorCode::NotGroupMember,
                format!("not a member of group {}", self.record.info.group_id),
            )
        })
    }

    fn require_manager(&self) -> Result<GroupRole> {
        let role = self.require_member()?;
        if role < GroupRole::Admin {
            return Err(forbidden("only the owner and admins may do this"));
        }
        Ok(role)
    }

    fn require_owner(&self) -> Result<()> {
        if self.require_member()? != GroupRole::Owner {
            return Err(forbidden("only the owner may do this"));
        }
        Ok(())
    }

    fn version(&self) -> u64 {
        self.record.info.version
    }
}

/// The line a change writes into the group's timeline, where the commercial SDKs show one.
fn timeline_notice(change: &GroupChange) -> Option<(GroupNoticeKind, Vec<UserId>)> {
    Some(match change {
        GroupChange::Created { .. } => (GroupNoticeKind::Created, Vec::new()),
        GroupChange::InfoChanged { .. } | GroupChange::AnnouncementChanged { .. } => {
            (GroupNoticeKind::InfoChanged, Vec::new())
        }
        GroupChange::MembersJoined { members } => (
            GroupNoticeKind::MemberJoined,
            members.iter().map(|m| m.user_id.clone()).collect(),
        ),
        GroupChange::MemberLeft { user_id } => (GroupNoticeKind::MemberLeft, vec![user_id.clone()]),
        GroupChange::MembersKicked { user_ids, .. } => {
            (GroupNoticeKind::MemberKicked, user_ids.clone())
        }
        GroupChange::OwnerChanged { to, .. } => (GroupNoticeKind::OwnerChanged, vec![to.clone()]),
        _ => return None,
    })
}

/// Checks that a manager of `role` may act on members `targets` (admins only on ordinary
/// members, nobody on the owner or, for these ops, on themselves).
fn may_manage(actor: &Actor, role: GroupRole, targets: &[GroupMember]) -> Result<()> {
    for target in targets {
        if actor.user() == Some(&target.user_id) {
            return Err(Error::bad_request("this cannot be done to yourself"));
        }
        if target.role == GroupRole::Owner {
            return Err(forbidden("the owner cannot be the target of this"));
        }
        if target.role >= role {
            return Err(forbidden(format!(
                "{} is an admin; only the owner may do this to admins",
                target.user_id
            )));
        }
    }
    Ok(())
}

impl App {
    /// A group as stored, or `group_not_found`.
    pub(crate) async fn group_record(&self, group: &GroupId) -> Result<GroupRecord> {
        self.store
            .get_groups(std::slice::from_ref(group))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| group_not_found(group))
    }

    /// Reads a group and the acting user's membership.
    async fn standing(&self, actor: &Actor, group: &GroupId) -> Result<Standing> {
        let record = self.group_record(group).await?;
        let member = match actor.user() {
            Some(user) => self
                .store
                .group_members_by_id(group, std::slice::from_ref(user))
                .await?
                .into_iter()
                .next(),
            None => None,
        };
        Ok(Standing {
            record,
            member,
            backend: actor.user().is_none(),
        })
    }

    /// Reads, checks with `decide`, and writes what it decided under the version it read;
    /// starts over when another change got in between.
    pub(crate) async fn change_group<T>(
        &self,
        actor: &Actor,
        group: &GroupId,
        mut decide: impl FnMut(&Standing, Vec<GroupMember>) -> Result<(GroupWrite, T)>,
        targets: &[UserId],
    ) -> Result<(GroupRecord, T)> {
        for _ in 0..WRITE_ATTEMPTS {
            let standing = self.standing(actor, group).await?;
            let members = if targets.is_empty() {
                Vec::new()
            } else {
                self.store.group_members_by_id(group, targets).await?
            };
            let (write, extra) = decide(&standing, members)?;
            match self
                .store
                .write_group(group, Some(standing.version()), write, now_ms())
                .await
            {
                Ok(record) => return Ok((record, extra)),
                // The checks above rule out every other conflict: the group moved on.
                Err(e) if e.kind() == StoreErrorKind::Conflict => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::new(
            ErrorCode::Conflict,
            format!("group {group} is changing too fast; try again"),
        ))
    }

    /// Every member of a group, or of one role, read page by page.
    pub(crate) async fn all_members(
        &self,
        group: &GroupId,
        role: Option<GroupRole>,
    ) -> Result<Vec<GroupMember>> {
        const PAGE: u32 = 1000;
        let mut members: Vec<GroupMember> = Vec::new();
        loop {
            let after = members.last().map(|m| m.user_id.clone());
            let page = self
                .store
                .group_members(group, role, after.as_ref(), PAGE)
                .await?;
            let full = page.len() == PAGE as usize;
            members.extend(page);
            if !full {
                return Ok(members);
            }
        }
    }

    /// Every member's id, for fan-out: from the group's roster, which the timeline notice and
    /// the next send then find cached instead of reading every member again.
    async fn member_ids(&self, group: &GroupId) -> Result<Vec<UserId>> {
        Ok(self.roster(group).await?.member_ids())
    }

    /// The owner's and the admins' ids.
    async fn manager_ids(&self, group: &GroupId) -> Result<Vec<UserId>> {
        let mut ids = Vec::new();
        for role in [GroupRole::Owner, GroupRole::Admin] {
            let members = self.all_members(group, Some(role)).await?;
            ids.extend(members.into_iter().map(|m| m.user_id));
        }
        Ok(ids)
    }

    /// Sends one `group` event to `users` on every node.
    pub(crate) fn tell(
        &self,
        users: &[UserId],
        group: &GroupId,
        version: u64,
        actor: &Actor,
        change: GroupChange,
    ) {
        let event = GroupEvent {
            group_id: group.clone(),
            version,
            actor: actor.user().cloned(),
            time: now_ms(),
            change,
        };
        let frame = SharedFrame::new(ServerFrame::Event(Event::Group(event)));
        let mut delivered = 0;
        for user in dedup(users) {
            delivered += self.cluster.deliver(&user, &frame, None);
        }
        Metrics::add(&self.metrics.deliveries, delivered as u64);
    }

    /// Tells every member (after the change) plus `also`.
    async fn tell_members(
        &self,
        record: &GroupRecord,
        actor: &Actor,
        change: GroupChange,
        also: &[UserId],
    ) -> Result<()> {
        let mut users = self.member_ids(&record.info.group_id).await?;
        users.extend_from_slice(also);
        let notice = timeline_notice(&change);
        self.tell(
            &users,
            &record.info.group_id,
            record.info.version,
            actor,
            change,
        );
        if let Some((kind, users)) = notice {
            let by = actor.user().unwrap_or(&record.info.owner);
            self.post_notice(&record.info.group_id, by, kind, &users)
                .await;
        }
        Ok(())
    }

    fn new_member(&self, user: UserId, role: GroupRole, now: Millis) -> GroupMember {
        GroupMember {
            user_id: user,
            role,
            joined_at: now,
            nickname: None,
            attributes: Map::new(),
            muted_until: None,
            allowed_when_all_muted: false,
            visible_from_seq: 1,
            receive_messages: true,
        }
    }

    fn checked_options(&self, options: GroupOptions) -> Result<GroupOptions> {
        let limit = self.config.groups.max_members_limit;
        if options.max_members < 2 || options.max_members > limit {
            return Err(Error::bad_request(format!(
                "max_members must be between 2 and {limit}"
            )));
        }
        Ok(options)
    }

    /// Creates a group. A user creates it as its owner; the backend names the owner.
    pub async fn create_group(
        &self,
        actor: &Actor,
        request: CreateGroupRequest,
    ) -> Result<GroupInfo> {
        check_name(&request.name)?;
        check_text("avatar_url", request.avatar_url.as_deref(), MAX_URL_LEN)?;
        check_text(
            "introduction",
            request.introduction.as_deref(),
            MAX_GROUP_TEXT_LEN,
        )?;
        check_ext(request.ext.as_ref())?;
        let owner = match (actor, request.owner) {
            (Actor::User(user), None) => user.clone(),
            (Actor::User(_), Some(_)) => {
                return Err(Error::bad_request("owner is set by the app backend only"));
            }
            (Actor::Backend, Some(owner)) => owner,
            (Actor::Backend, None) => return Err(Error::bad_request("owner is required")),
        };
        let defaults = GroupOptions {
            max_members: self.config.groups.default_max_members,
            ..GroupOptions::default()
        };
        let options = self.checked_options(request.options.apply(&defaults))?;
        let others: Vec<UserId> = dedup(&request.members)
            .into_iter()
            .filter(|u| *u != owner)
            .collect();
        if others.len() > MAX_USERS_PER_CALL {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!("at most {MAX_USERS_PER_CALL} initial members"),
            ));
        }
        if others.len() + 1 > options.max_members as usize {
            return Err(Error::new(
                ErrorCode::GroupFull,
                "more initial members than max_members",
            ));
        }
        let now = now_ms();
        let group_id = match request.group_id {
            Some(id) => id,
            None => GroupId::new(format!("g{}", self.ids.next(now).0)).map_err(Error::Client)?,
        };
        let mut members = vec![self.new_member(owner.clone(), GroupRole::Owner, now)];
        members.extend(
            others
                .into_iter()
                .map(|u| self.new_member(u, GroupRole::Member, now)),
        );
        let record = self
            .store
            .create_group(
                NewGroup {
                    group_id,
                    name: request.name,
                    avatar_url: request.avatar_url,
                    introduction: request.introduction,
                    ext: request.ext,
                    options,
                    owner,
                    members,
                },
                now,
            )
            .await
            .map_err(|e| match e.kind() {
                StoreErrorKind::Conflict => {
                    Error::new(ErrorCode::Conflict, "that group id is taken")
                }
                _ => e.into(),
            })?;
        self.tell_members(
            &record,
            actor,
            GroupChange::Created {
                group: record.info.clone(),
            },
            &[],
        )
        .await?;
        Ok(record.info)
    }

    /// Groups' info: anyone may read a group that is not invite-only; invite-only groups only
    /// their members.
    pub async fn group_info(&self, actor: &Actor, request: GroupIds) -> Result<GroupList> {
        if request.group_ids.len() > 100 {
            return Err(Error::new(
                ErrorCode::TooLarge,
                "at most 100 groups per call",
            ));
        }
        let records = self.store.get_groups(&request.group_ids).await?;
        let mut groups = Vec::with_capacity(records.len());
        for record in records {
            let visible = match (actor, record.info.options.join_policy) {
                (Actor::Backend, _) => true,
                (_, JoinPolicy::InviteOnly) => {
                    let user = actor.user().cloned().into_iter().collect::<Vec<_>>();
                    !self
                        .store
                        .group_members_by_id(&record.info.group_id, &user)
                        .await?
                        .is_empty()
                }
                _ => true,
            };
            if visible {
                groups.push(record.info);
            }
        }
        Ok(GroupList { groups })
    }

    /// Changes info, announcement or options (owners and admins).
    pub async fn update_group(
        &self,
        actor: &Actor,
        group: &GroupId,
        request: UpdateGroupRequest,
    ) -> Result<GroupInfo> {
        if let Some(name) = &request.name {
            check_name(name)?;
        }
        check_text(
            "avatar_url",
            request.avatar_url.as_ref().and_then(Option::as_deref),
            MAX_URL_LEN,
        )?;
        check_text(
            "introduction",
            request.introduction.as_ref().and_then(Option::as_deref),
            MAX_GROUP_TEXT_LEN,
        )?;
        check_text(
            "announcement",
            request.announcement.as_ref().and_then(Option::as_deref),
            MAX_GROUP_TEXT_LEN,
        )?;
        check_ext(request.ext.as_ref().and_then(Option::as_ref))?;
        let announcement_changed = request.announcement.clone();
        let (record, ()) = self
            .change_group(
                actor,
                group,
                |standing, _| {
                    standing.require_manager()?;
                    let options = match &request.options {
                        Some(patch) => {
                            Some(self.checked_options(patch.apply(&standing.record.info.options))?)
                        }
                        None => None,
                    };
                    if let Some(options) = &options
                        && options.max_members < standing.record.info.member_count
                    {
                        return Err(Error::bad_request(
                            "max_members cannot be below the current member count",
                        ));
                    }
                    Ok((
                        GroupWrite::UpdateInfo(GroupInfoUpdate {
                            name: request.name.clone(),
                            avatar_url: request.avatar_url.clone(),
                            introduction: request.introduction.clone(),
                            announcement: request.announcement.clone(),
                            ext: request.ext.clone(),
                            options,
                            all_muted: None,
                        }),
                        (),
                    ))
                },
                &[],
            )
            .await?;
        let info_changed = request.name.is_some()
            || request.avatar_url.is_some()
            || request.introduction.is_some()
            || request.ext.is_some()
            || request.options.is_some();
        if info_changed {
            self.tell_members(
                &record,
                actor,
                GroupChange::InfoChanged {
                    group: record.info.clone(),
                },
                &[],
            )
            .await?;
        }
        if let Some(announcement) = announcement_changed {
            self.tell_members(
                &record,
                actor,
                GroupChange::AnnouncementChanged { announcement },
                &[],
            )
            .await?;
        }
        Ok(record.info)
    }

    /// Destroys a group (owner).
    pub async fn destroy_group(&self, actor: &Actor, group: &GroupId) -> Result<Empty> {
        // Who to tell must be read before the members are gone.
        let members = self.member_ids(group).await?;
        let (record, ()) = self
            .change_group(
                actor,
                group,
                |standing, _| {
                    standing.require_owner()?;
                    Ok((GroupWrite::Destroy, ()))
                },
                &[],
            )
            .await?;
        self.tell(
            &members,
            group,
            record.info.version,
            actor,
            GroupChange::Destroyed,
        );
        Ok(Empty)
    }

    /// A page of the caller's groups.
    pub async fn joined_groups(
        &self,
        user: &UserId,
        request: GroupPageRequest,
    ) -> Result<GroupPage> {
        let limit = page_limit(request.limit, 50, 200)?;
        let records = self
            .store
            .joined_groups(user, request.after.as_ref(), limit + 1)
            .await?;
        let (records, has_more) = split_page(records, limit);
        Ok(GroupPage {
            groups: records.into_iter().map(|r| r.info).collect(),
            has_more,
        })
    }

    /// A page of the public directory.
    pub async fn group_directory(&self, request: GroupPageRequest) -> Result<GroupPage> {
        let limit = page_limit(request.limit, 50, 200)?;
        check_text("query", request.query.as_deref(), MAX_GROUP_NAME_LEN)?;
        let records = self
            .store
            .public_groups(request.query.as_deref(), request.after.as_ref(), limit + 1)
            .await?;
        let (records, has_more) = split_page(records, limit);
        Ok(GroupPage {
            groups: records.into_iter().map(|r| r.info).collect(),
            has_more,
        })
    }

    async fn check_not_blocked(&self, group: &GroupId, user: &UserId) -> Result<()> {
        if let Some(until) = self.store.group_block(group, user, now_ms()).await? {
            let message = match until {
                Some(until) => format!("{user} may not join group {group} before {until}"),
                None => format!("{user} is on the block list of group {group}"),
            };
            return Err(Error::new(ErrorCode::BlockedFromGroup, message));
        }
        Ok(())
    }

    /// Adds members directly and tells everyone.
    async fn add_members(
        &self,
        actor: &Actor,
        group: &GroupId,
        users: Vec<UserId>,
    ) -> Result<GroupRecord> {
        let now = now_ms();
        let (record, added) = self
            .change_group(
                actor,
                group,
                |_, existing| {
                    let existing: BTreeSet<&UserId> = existing.iter().map(|m| &m.user_id).collect();
                    let added: Vec<GroupMember> = users
                        .iter()
                        .filter(|u| !existing.contains(u))
                        .map(|u| self.new_member(u.clone(), GroupRole::Member, now))
                        .collect();
                    Ok((GroupWrite::AddMembers(added.clone()), added))
                },
                &users,
            )
            .await?;
        if !added.is_empty() {
            // As stored: the store sets each new member's join point.
            let ids: Vec<UserId> = added.into_iter().map(|m| m.user_id).collect();
            let members = self.store.group_members_by_id(group, &ids).await?;
            self.tell_members(&record, actor, GroupChange::MembersJoined { members }, &[])
                .await?;
        }
        Ok(record)
    }

    /// Joins a group, or applies to join it.
    pub async fn join_group(
        &self,
        user: &UserId,
        request: JoinGroupRequest,
    ) -> Result<JoinGroupResponse> {
        check_text(
            "message",
            request.message.as_deref(),
            MAX_APPLICATION_TEXT_LEN,
        )?;
        let actor = Actor::User(user.clone());
        let standing = self.standing(&actor, &request.group_id).await?;
        if standing.member.is_some() {
            return Ok(JoinGroupResponse {
                joined: true,
                application: None,
            });
        }
        self.check_not_blocked(&request.group_id, user).await?;
        match standing.record.info.options.join_policy {
            JoinPolicy::InviteOnly => Err(forbidden("this group can only be joined by invitation")),
            JoinPolicy::Open => {
                self.add_members(&actor, &request.group_id, vec![user.clone()])
                    .await?;
                Ok(JoinGroupResponse {
                    joined: true,
                    application: None,
                })
            }
            JoinPolicy::Approval => {
                let application = self
                    .store
                    .create_application(NewApplication {
                        group_id: request.group_id.clone(),
                        kind: ApplicationKind::Join,
                        from: user.clone(),
                        user_id: user.clone(),
                        message: request.message,
                        now: now_ms(),
                    })
                    .await?;
                let mut tell = self.manager_ids(&request.group_id).await?;
                tell.push(user.clone());
                self.tell(
                    &tell,
                    &request.group_id,
                    standing.version(),
                    &actor,
                    GroupChange::ApplicationReceived {
                        application: application.clone(),
                    },
                );
                Ok(JoinGroupResponse {
                    joined: false,
                    application: Some(application),
                })
            }
        }
    }

    /// Invites users, or adds them directly when the group does not need their acceptance.
    pub async fn invite(&self, actor: &Actor, request: InviteRequest) -> Result<InviteResponse> {
        check_users(&request.user_ids)?;
        check_text(
            "message",
            request.message.as_deref(),
            MAX_APPLICATION_TEXT_LEN,
        )?;
        let group = &request.group_id;
        let standing = self.standing(actor, group).await?;
        let role = standing.require_member()?;
        let options = &standing.record.info.options;
        if role == GroupRole::Member && !options.members_can_invite {
            return Err(forbidden(
                "only the owner and admins may invite to this group",
            ));
        }
        let users = dedup(&request.user_ids);
        let existing: BTreeSet<UserId> = self
            .store
            .group_members_by_id(group, &users)
            .await?
            .into_iter()
            .map(|m| m.user_id)
            .collect();
        let now = now_ms();
        let mut results = Vec::with_capacity(users.len());
        let mut to_add = Vec::new();
        for user in users {
            let outcome = if existing.contains(&user) {
                InviteOutcome::AlreadyMember
            } else if self.user_record(&user).await.is_err() {
                InviteOutcome::UserNotFound
            } else if self.store.group_block(group, &user, now).await?.is_some() {
                InviteOutcome::Blocked
            } else if options.invite_needs_accept && actor.user().is_some() {
                let inviter = actor
                    .user()
                    .cloned()
                    .unwrap_or_else(|| standing.record.info.owner.clone());
                let application = self
                    .store
                    .create_application(NewApplication {
                        group_id: group.clone(),
                        kind: ApplicationKind::Invite,
                        from: inviter.clone(),
                        user_id: user.clone(),
                        message: request.message.clone(),
                        now,
                    })
                    .await?;
                self.tell(
                    &[user.clone(), inviter],
                    group,
                    standing.version(),
                    actor,
                    GroupChange::InvitationReceived { application },
                );
                InviteOutcome::Invited
            } else {
                to_add.push(user.clone());
                InviteOutcome::Added
            };
            results.push(InviteResult {
                user_id: user,
                outcome,
            });
        }
        if !to_add.is_empty() {
            self.add_members(actor, group, to_add).await?;
        }
        Ok(InviteResponse { results })
    }

    /// Accepts or declines an application (owners and admins) or an invitation (the invitee).
    pub async fn handle_application(
        &self,
        actor: &Actor,
        request: HandleApplicationRequest,
    ) -> Result<GroupApplication> {
        check_text(
            "reason",
            request.reason.as_deref(),
            MAX_APPLICATION_TEXT_LEN,
        )?;
        let application = self
            .store
            .get_application(&request.application_id)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::NotFound, "no such application"))?;
        let group = application.group_id.clone();
        match (application.kind, actor) {
            (_, Actor::Backend) => {}
            (ApplicationKind::Invite, Actor::User(user)) if *user == application.user_id => {}
            (ApplicationKind::Invite, _) => {
                return Err(forbidden("only the invitee may answer an invitation"));
            }
            (ApplicationKind::Join, _) => {
                self.standing(actor, &group).await?.require_manager()?;
            }
        }
        if application.state != ApplicationState::Pending {
            return Err(Error::new(
                ErrorCode::Conflict,
                "the application was already handled",
            ));
        }
        if request.accept {
            // Member first, then the decision: a failure in between leaves a pending
            // application whose acceptance is a no-op the second time.
            self.check_not_blocked(&group, &application.user_id).await?;
            self.add_members(&Actor::Backend, &group, vec![application.user_id.clone()])
                .await?;
        }
        let handled = self
            .store
            .handle_application(
                &request.application_id,
                request.accept,
                actor.user(),
                request.reason,
                now_ms(),
            )
            .await
            .map_err(|e| match e.kind() {
                StoreErrorKind::Conflict => {
                    Error::new(ErrorCode::Conflict, "the application was already handled")
                }
                _ => e.into(),
            })?;
        let mut tell = vec![handled.from.clone(), handled.user_id.clone()];
        if handled.kind == ApplicationKind::Join {
            tell.extend(self.manager_ids(&group).await.unwrap_or_default());
        }
        let version = self
            .store
            .get_groups(std::slice::from_ref(&group))
            .await?
            .first()
            .map_or(0, |r| r.info.version);
        self.tell(
            &tell,
            &group,
            version,
            actor,
            GroupChange::ApplicationHandled {
                application: handled.clone(),
            },
        );
        Ok(handled)
    }

    /// Applications and invitations the caller received or sent.
    pub async fn applications(
        &self,
        user: &UserId,
        request: ApplicationsRequest,
    ) -> Result<ApplicationsPage> {
        let limit = page_limit(request.limit, 50, 200)?;
        let applications = match request.which {
            ApplicationBox::Sent => {
                self.store
                    .list_applications(
                        ApplicationFilter::SentBy(user.clone()),
                        request.before.as_deref(),
                        limit + 1,
                    )
                    .await?
            }
            ApplicationBox::Received => {
                let mut all = self
                    .store
                    .list_applications(
                        ApplicationFilter::InvitationsFor(user.clone()),
                        request.before.as_deref(),
                        limit + 1,
                    )
                    .await?;
                all.extend(
                    self.store
                        .list_applications(
                            ApplicationFilter::JoinsManagedBy(user.clone()),
                            request.before.as_deref(),
                            limit + 1,
                        )
                        .await?,
                );
                // Newest first across both lists: ids grow with time.
                all.sort_by_key(|a| {
                    std::cmp::Reverse(a.application_id.parse::<u64>().unwrap_or(0))
                });
                all
            }
        };
        let (applications, has_more) = split_page(applications, limit);
        Ok(ApplicationsPage {
            applications,
            has_more,
        })
    }

    /// Leaves a group (not the owner: they transfer ownership or destroy the group).
    pub async fn leave_group(&self, user: &UserId, group: &GroupId) -> Result<Empty> {
        let actor = Actor::User(user.clone());
        let (record, ()) = self
            .change_group(
                &actor,
                group,
                |standing, _| {
                    if standing.require_member()? == GroupRole::Owner {
                        return Err(forbidden(
                            "the owner cannot leave; transfer ownership or destroy the group",
                        ));
                    }
                    Ok((GroupWrite::RemoveMembers(vec![user.clone()]), ()))
                },
                &[],
            )
            .await?;
        self.tell_members(
            &record,
            &actor,
            GroupChange::MemberLeft {
                user_id: user.clone(),
            },
            std::slice::from_ref(user),
        )
        .await?;
        Ok(Empty)
    }

    /// Removes members, optionally barring them for a while (owners and admins).
    pub async fn kick(&self, actor: &Actor, request: KickRequest) -> Result<Empty> {
        check_users(&request.user_ids)?;
        let users = dedup(&request.user_ids);
        let now = now_ms();
        let banned_until = request
            .ban_seconds
            .filter(|s| *s > 0)
            .map(|s| seconds_from_now(now, s));
        let (record, removed) = self
            .change_group(
                actor,
                &request.group_id,
                |standing, targets| {
                    let role = standing.require_manager()?;
                    may_manage(actor, role, &targets)?;
                    let removed: Vec<UserId> = targets.iter().map(|m| m.user_id.clone()).collect();
                    let write = match banned_until {
                        Some(until) => GroupWrite::Block {
                            user_ids: removed.clone(),
                            until: Some(until),
                        },
                        None => GroupWrite::RemoveMembers(removed.clone()),
                    };
                    Ok((write, removed))
                },
                &users,
            )
            .await?;
        if removed.is_empty() {
            return Err(Error::new(
                ErrorCode::NotGroupMember,
                "none of them is a member",
            ));
        }
        self.tell_members(
            &record,
            actor,
            GroupChange::MembersKicked {
                user_ids: removed.clone(),
                banned_until,
            },
            &removed,
        )
        .await?;
        Ok(Empty)
    }

    /// Hands ownership to a member (owner).
    pub async fn transfer_group(
        &self,
        actor: &Actor,
        request: TransferRequest,
    ) -> Result<GroupInfo> {
        let to = request.to.clone();
        let (record, from) = self
            .change_group(
                actor,
                &request.group_id,
                |standing, targets| {
                    standing.require_owner()?;
                    if targets.is_empty() {
                        return Err(Error::new(
                            ErrorCode::NotGroupMember,
                            format!("{to} is not a member"),
                        ));
                    }
                    if standing.record.info.owner == to {
                        return Err(Error::bad_request("they already own the group"));
                    }
                    Ok((
                        GroupWrite::TransferOwner { to: to.clone() },
                        standing.record.info.owner.clone(),
                    ))
                },
                std::slice::from_ref(&request.to),
            )
            .await?;
        self.tell_members(
            &record,
            actor,
            GroupChange::OwnerChanged {
                from,
                to: request.to,
            },
            &[],
        )
        .await?;
        Ok(record.info)
    }

    /// Makes members admins or ordinary members (owner).
    pub async fn set_role(&self, actor: &Actor, request: SetRoleRequest) -> Result<Empty> {
        check_users(&request.user_ids)?;
        if request.role == GroupRole::Owner {
            return Err(Error::bad_request("use group_transfer to change the owner"));
        }
        let users = dedup(&request.user_ids);
        let role = request.role;
        let (record, changed) = self
            .change_group(
                actor,
                &request.group_id,
                |standing, targets| {
                    standing.require_owner()?;
                    require_all_members(&targets, &users)?;
                    if targets.iter().any(|m| m.role == GroupRole::Owner) {
                        return Err(forbidden("the owner's role changes only by transfer"));
                    }
                    let changed: Vec<UserId> = targets
                        .iter()
                        .filter(|m| m.role != role)
                        .map(|m| m.user_id.clone())
                        .collect();
                    Ok((
                        GroupWrite::SetRole {
                            user_ids: users.clone(),
                            role,
                        },
                        changed,
                    ))
                },
                &users,
            )
            .await?;
        for user_id in changed {
            let change = if role == GroupRole::Admin {
                GroupChange::AdminAdded { user_id }
            } else {
                GroupChange::AdminRemoved { user_id }
            };
            self.tell_members(&record, actor, change, &[]).await?;
        }
        Ok(Empty)
    }

    /// A page of members (members only).
    pub async fn group_members(
        &self,
        actor: &Actor,
        request: MembersRequest,
    ) -> Result<MembersPage> {
        let limit = page_limit(request.limit, 100, 500)?;
        self.standing(actor, &request.group_id)
            .await?
            .require_member()?;
        let members = self
            .store
            .group_members(
                &request.group_id,
                request.role,
                request.after.as_ref(),
                limit + 1,
            )
            .await?;
        let (members, has_more) = split_page(members, limit);
        Ok(MembersPage { members, has_more })
    }

    /// Some members' info (members only).
    pub async fn group_members_info(
        &self,
        actor: &Actor,
        request: MembersInfoRequest,
    ) -> Result<MemberList> {
        check_users(&request.user_ids)?;
        self.standing(actor, &request.group_id)
            .await?
            .require_member()?;
        let members = self
            .store
            .group_members_by_id(&request.group_id, &dedup(&request.user_ids))
            .await?;
        Ok(MemberList { members })
    }

    /// A member's nickname and attributes: themselves, or a manager for lower roles.
    pub async fn set_member(
        &self,
        actor: &Actor,
        request: SetMemberRequest,
    ) -> Result<GroupMember> {
        check_text(
            "nickname",
            request.nickname.as_ref().and_then(Option::as_deref),
            MAX_NICKNAME_LEN,
        )?;
        if let Some(attributes) = &request.attributes
            && json_len(attributes) > MAX_MEMBER_ATTRIBUTES_BYTES
        {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!(
                    "member attributes are limited to {MAX_MEMBER_ATTRIBUTES_BYTES} bytes encoded"
                ),
            ));
        }
        let target = match (&request.user_id, actor.user()) {
            (Some(user), _) => user.clone(),
            (None, Some(me)) => me.clone(),
            (None, None) => return Err(Error::bad_request("user_id is required")),
        };
        let (record, ()) = self
            .change_group(
                actor,
                &request.group_id,
                |standing, targets| {
                    let role = standing.require_member()?;
                    let Some(member) = targets.first() else {
                        return Err(Error::new(
                            ErrorCode::NotGroupMember,
                            format!("{target} is not a member"),
                        ));
                    };
                    if actor.user() != Some(&target) {
                        if role < GroupRole::Admin {
                            return Err(forbidden("members may only change their own info"));
                        }
                        may_manage(actor, role, std::slice::from_ref(member))?;
                    }
                    Ok((
                        GroupWrite::UpdateMembers {
                            user_ids: vec![target.clone()],
                            update: MemberUpdate {
                                nickname: request.nickname.clone(),
                                attributes: request.attributes.clone(),
                                ..MemberUpdate::default()
                            },
                        },
                        (),
                    ))
                },
                std::slice::from_ref(&target),
            )
            .await?;
        let member = self
            .store
            .group_members_by_id(&request.group_id, std::slice::from_ref(&target))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::NotGroupMember,
                    format!("{target} is not a member"),
                )
            })?;
        self.tell_members(
            &record,
            actor,
            GroupChange::MemberInfoChanged {
                member: member.clone(),
            },
            &[],
        )
        .await?;
        Ok(member)
    }

    /// Mutes members for a while, or unmutes them (owners and admins).
    pub async fn mute(&self, actor: &Actor, request: MuteRequest) -> Result<Empty> {
        check_users(&request.user_ids)?;
        let users = dedup(&request.user_ids);
        let until = (request.seconds > 0).then(|| seconds_from_now(now_ms(), request.seconds));
        let (record, ()) = self
            .change_group(
                actor,
                &request.group_id,
                |standing, targets| {
                    let role = standing.require_manager()?;
                    require_all_members(&targets, &users)?;
                    may_manage(actor, role, &targets)?;
                    Ok((
                        GroupWrite::UpdateMembers {
                            user_ids: users.clone(),
                            update: MemberUpdate {
                                muted_until: Some(until),
                                ..MemberUpdate::default()
                            },
                        },
                        (),
                    ))
                },
                &users,
            )
            .await?;
        self.tell_members(
            &record,
            actor,
            GroupChange::MuteChanged {
                user_ids: users,
                until,
            },
            &[],
        )
        .await?;
        Ok(Empty)
    }

    /// Mutes or unmutes everyone (owners and admins).
    pub async fn mute_all(&self, actor: &Actor, request: MuteAllRequest) -> Result<Empty> {
        let (record, ()) = self
            .change_group(
                actor,
                &request.group_id,
                |standing, _| {
                    standing.require_manager()?;
                    Ok((
                        GroupWrite::UpdateInfo(GroupInfoUpdate {
                            all_muted: Some(request.muted),
                            ..GroupInfoUpdate::default()
                        }),
                        (),
                    ))
                },
                &[],
            )
            .await?;
        self.tell_members(
            &record,
            actor,
            GroupChange::AllMutedChanged {
                all_muted: request.muted,
            },
            &[],
        )
        .await?;
        Ok(Empty)
    }

    /// Changes the allow list (owners and admins).
    pub async fn allow_list(&self, actor: &Actor, request: ListChangeRequest) -> Result<Empty> {
        let (added, removed) = checked_list_change(&request)?;
        let mut record = None;
        for (users, allowed) in [(&added, true), (&removed, false)] {
            if users.is_empty() {
                continue;
            }
            let (changed, ()) = self
                .change_group(
                    actor,
                    &request.group_id,
                    |standing, targets| {
                        standing.require_manager()?;
                        require_all_members(&targets, users)?;
                        Ok((
                            GroupWrite::UpdateMembers {
                                user_ids: users.clone(),
                                update: MemberUpdate {
                                    allowed_when_all_muted: Some(allowed),
                                    ..MemberUpdate::default()
                                },
                            },
                            (),
                        ))
                    },
                    users,
                )
                .await?;
            record = Some(changed);
        }
        // At least one list is non-empty, so a change was written.
        let Some(record) = record else {
            return Ok(Empty);
        };
        self.tell_members(
            &record,
            actor,
            GroupChange::AllowListChanged { added, removed },
            &[],
        )
        .await?;
        Ok(Empty)
    }

    /// Changes the block list (owners and admins; blocking a member removes them).
    pub async fn block_list(&self, actor: &Actor, request: ListChangeRequest) -> Result<Empty> {
        let (added, removed) = checked_list_change(&request)?;
        let until = request
            .seconds
            .filter(|s| *s > 0)
            .map(|s| seconds_from_now(now_ms(), s));
        let mut record = None;
        if !added.is_empty() {
            let (r, ()) = self
                .change_group(
                    actor,
                    &request.group_id,
                    |standing, targets| {
                        let role = standing.require_manager()?;
                        may_manage(actor, role, &targets)?;
                        Ok((
                            GroupWrite::Block {
                                user_ids: added.clone(),
                                until,
                            },
                            (),
                        ))
                    },
                    &added,
                )
                .await?;
            record = Some(r);
        }
        if !removed.is_empty() {
            let (r, ()) = self
                .change_group(
                    actor,
                    &request.group_id,
                    |standing, _| {
                        standing.require_manager()?;
                        Ok((GroupWrite::Unblock(removed.clone()), ()))
                    },
                    &[],
                )
                .await?;
            record = Some(r);
        }
        if let Some(record) = record {
            let mut tell = self.manager_ids(&request.group_id).await?;
            tell.extend(added.iter().cloned());
            self.tell(
                &tell,
                &request.group_id,
                record.info.version,
                actor,
                GroupChange::BlockListChanged { added, removed },
            );
        }
        Ok(Empty)
    }

    /// A page of the block list (owners and admins).
    pub async fn blocks(&self, actor: &Actor, request: BlocksRequest) -> Result<BlocksPage> {
        let limit = page_limit(request.limit, 100, 500)?;
        self.standing(actor, &request.group_id)
            .await?
            .require_manager()?;
        let entries = self
            .store
            .group_blocks(
                &request.group_id,
                now_ms(),
                request.after.as_ref(),
                limit + 1,
            )
            .await?;
        let (entries, has_more) = split_page(entries, limit);
        Ok(BlocksPage {
            blocked: entries
                .into_iter()
                .map(|(user_id, until)| BlockEntry { user_id, until })
                .collect(),
            has_more,
        })
    }

    /// Sets and deletes group attributes (owners and admins), within the limits.
    pub async fn set_attributes(
        &self,
        actor: &Actor,
        request: SetAttributesRequest,
    ) -> Result<GroupAttributes> {
        if request.set.is_empty() && request.delete.is_empty() {
            return Err(Error::bad_request("name attributes to set or delete"));
        }
        for key in request.set.keys().chain(request.delete.iter()) {
            if key.is_empty() || key.len() > MAX_ATTRIBUTE_KEY_LEN {
                return Err(Error::new(
                    ErrorCode::TooLarge,
                    format!("attribute keys are 1 to {MAX_ATTRIBUTE_KEY_LEN} bytes"),
                ));
            }
        }
        for (key, value) in &request.set {
            if value.is_null() {
                return Err(Error::bad_request(format!(
                    "attribute {key} is null; delete it instead"
                )));
            }
            if json_len(value) > MAX_ATTRIBUTE_VALUE_BYTES {
                return Err(Error::new(
                    ErrorCode::TooLarge,
                    format!(
                        "attribute {key} is larger than {MAX_ATTRIBUTE_VALUE_BYTES} bytes encoded"
                    ),
                ));
            }
        }
        let (record, ()) = self
            .change_group(
                actor,
                &request.group_id,
                |standing, _| {
                    standing.require_manager()?;
                    let mut after = standing.record.attributes.clone();
                    for key in &request.delete {
                        after.remove(key);
                    }
                    after.extend(request.set.clone());
                    if after.len() > MAX_ATTRIBUTE_KEYS {
                        return Err(Error::new(
                            ErrorCode::TooLarge,
                            format!("a group has at most {MAX_ATTRIBUTE_KEYS} attributes"),
                        ));
                    }
                    let total: usize = after.iter().map(|(k, v)| k.len() + json_len(v)).sum();
                    if total > MAX_ATTRIBUTES_BYTES {
                        return Err(Error::new(
                            ErrorCode::TooLarge,
                            format!("attributes total {total} bytes; the limit is {MAX_ATTRIBUTES_BYTES}"),
                        ));
                    }
                    if let Some(expected) = request.expected_version
                        && expected != standing.record.attributes_version
                    {
                        return Err(Error::new(
                            ErrorCode::Conflict,
                            format!(
                                "the attributes are at version {}, not {expected}; read them and retry",
                                standing.record.attributes_version
                            ),
                        ));
                    }
                    Ok((
                        GroupWrite::SetAttributes {
                            set: request.set.clone(),
                            delete: request.delete.clone(),
                            expected_attributes_version: request.expected_version,
                        },
                        (),
                    ))
                },
                &[],
            )
            .await?;
        self.tell_members(
            &record,
            actor,
            GroupChange::AttributesChanged {
                attributes: record.attributes.clone(),
                attributes_version: record.attributes_version,
            },
            &[],
        )
        .await?;
        Ok(GroupAttributes {
            attributes: record.attributes,
            version: record.attributes_version,
        })
    }

    /// The group attributes (members).
    pub async fn attributes(&self, actor: &Actor, group: &GroupId) -> Result<GroupAttributes> {
        let standing = self.standing(actor, group).await?;
        standing.require_member()?;
        Ok(GroupAttributes {
            attributes: standing.record.attributes,
            version: standing.record.attributes_version,
        })
    }

    /// Adds to a counter (members).
    pub async fn add_counter(
        &self,
        actor: &Actor,
        request: AddCounterRequest,
    ) -> Result<GroupCounters> {
        if request.key.is_empty() || request.key.len() > MAX_ATTRIBUTE_KEY_LEN {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!("counter keys are 1 to {MAX_ATTRIBUTE_KEY_LEN} bytes"),
            ));
        }
        let key = request.key.clone();
        let (record, ()) = self
            .change_group(
                actor,
                &request.group_id,
                |standing, _| {
                    standing.require_member()?;
                    let counters = &standing.record.counters;
                    if !counters.contains_key(&key) && counters.len() >= MAX_COUNTERS {
                        return Err(Error::new(
                            ErrorCode::TooLarge,
                            format!("a group has at most {MAX_COUNTERS} counters"),
                        ));
                    }
                    Ok((
                        GroupWrite::IncrementCounter {
                            key: key.clone(),
                            delta: request.delta,
                        },
                        (),
                    ))
                },
                &[],
            )
            .await?;
        let mut changed = Map::new();
        if let Some(value) = record.counters.get(&key) {
            changed.insert(key, value.clone());
        }
        self.tell_members(
            &record,
            actor,
            GroupChange::CountersChanged {
                counters: changed.clone(),
            },
            &[],
        )
        .await?;
        Ok(GroupCounters { counters: changed })
    }

    /// The group counters (members).
    pub async fn counters(&self, actor: &Actor, group: &GroupId) -> Result<GroupCounters> {
        let standing = self.standing(actor, group).await?;
        standing.require_member()?;
        Ok(GroupCounters {
            counters: standing.record.counters,
        })
    }

    /// Takes a user who is being deleted out of every group: a member simply goes; an owner
    /// first hands the group to the longest-standing admin, else the longest-standing member,
    /// and a group with nobody else in it is destroyed. Idempotent, so a failed deletion can be
    /// retried.
    pub(crate) async fn remove_from_all_groups(&self, user: &UserId) -> Result<()> {
        let mut after: Option<GroupId> = None;
        loop {
            let page = self.store.joined_groups(user, after.as_ref(), 100).await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.info.group_id.clone());
            for record in page {
                match self.remove_departed(user, &record).await {
                    Err(e) if e.code() == ErrorCode::GroupNotFound => {}
                    other => other?,
                }
            }
        }
    }

    async fn remove_departed(&self, user: &UserId, record: &GroupRecord) -> Result<()> {
        let group = &record.info.group_id;
        let backend = Actor::Backend;
        if record.info.owner == *user {
            match self.successor(group, user).await? {
                None => {
                    self.destroy_group(&backend, group).await?;
                    return Ok(());
                }
                Some(to) => {
                    let request = TransferRequest {
                        group_id: group.clone(),
                        to,
                    };
                    self.transfer_group(&backend, request).await?;
                }
            }
        }
        let (after, ()) = self
            .change_group(
                &backend,
                group,
                |_, _| Ok((GroupWrite::RemoveMembers(vec![user.clone()]), ())),
                &[],
            )
            .await?;
        self.tell_members(
            &after,
            &backend,
            GroupChange::MemberLeft {
                user_id: user.clone(),
            },
            &[],
        )
        .await
    }

    /// Who inherits a group from its departing owner: the longest-standing admin, else the
    /// longest-standing member.
    async fn successor(&self, group: &GroupId, owner: &UserId) -> Result<Option<UserId>> {
        for role in [GroupRole::Admin, GroupRole::Member] {
            let members = self.all_members(group, Some(role)).await?;
            let oldest = members
                .into_iter()
                .filter(|m| m.user_id != *owner)
                .min_by(|a, b| (a.joined_at, &a.user_id).cmp(&(b.joined_at, &b.user_id)));
            if let Some(oldest) = oldest {
                return Ok(Some(oldest.user_id));
            }
        }
        Ok(None)
    }

    /// Runs a `group_*` request of a device's user; `None` if `request` is not one.
    pub async fn group_request(&self, user: &UserId, request: Request) -> Option<Result<Response>> {
        let actor = Actor::User(user.clone());
        Some(match request {
            Request::GroupCreate(r) => self
                .create_group(&actor, r)
                .await
                .map(Response::GroupCreate),
            Request::GroupInfo(r) => self.group_info(&actor, r).await.map(Response::GroupInfo),
            Request::GroupUpdate(r) => match r.group_id.clone() {
                Some(group) => self
                    .update_group(&actor, &group, r)
                    .await
                    .map(Response::GroupUpdate),
                None => Err(Error::bad_request("group_id is required")),
            },
            Request::GroupDestroy(GroupRef { group_id }) => self
                .destroy_group(&actor, &group_id)
                .await
                .map(Response::GroupDestroy),
            Request::GroupJoined(r) => self.joined_groups(user, r).await.map(Response::GroupJoined),
            Request::GroupDirectory(r) => {
                self.group_directory(r).await.map(Response::GroupDirectory)
            }
            Request::GroupJoin(r) => self.join_group(user, r).await.map(Response::GroupJoin),
            Request::GroupInvite(r) => self.invite(&actor, r).await.map(Response::GroupInvite),
            Request::GroupHandleApplication(r) => self
                .handle_application(&actor, r)
                .await
                .map(Response::GroupHandleApplication),
            Request::GroupApplications(r) => self
                .applications(user, r)
                .await
                .map(Response::GroupApplications),
            Request::GroupLeave(GroupRef { group_id }) => self
                .leave_group(user, &group_id)
                .await
                .map(Response::GroupLeave),
            Request::GroupKick(r) => self.kick(&actor, r).await.map(Response::GroupKick),
            Request::GroupTransfer(r) => self
                .transfer_group(&actor, r)
                .await
                .map(Response::GroupTransfer),
            Request::GroupSetRole(r) => self.set_role(&actor, r).await.map(Response::GroupSetRole),
            Request::GroupMembers(r) => self
                .group_members(&actor, r)
                .await
                .map(Response::GroupMembers),
            Request::GroupMembersInfo(r) => self
                .group_members_info(&actor, r)
                .await
                .map(Response::GroupMembersInfo),
            Request::GroupSetMember(r) => self
                .set_member(&actor, r)
                .await
                .map(Response::GroupSetMember),
            Request::GroupMute(r) => self.mute(&actor, r).await.map(Response::GroupMute),
            Request::GroupMuteAll(r) => self.mute_all(&actor, r).await.map(Response::GroupMuteAll),
            Request::GroupAllowList(r) => self
                .allow_list(&actor, r)
                .await
                .map(Response::GroupAllowList),
            Request::GroupBlockList(r) => self
                .block_list(&actor, r)
                .await
                .map(Response::GroupBlockList),
            Request::GroupBlocks(r) => self.blocks(&actor, r).await.map(Response::GroupBlocks),
            Request::GroupSetAttributes(r) => self
                .set_attributes(&actor, r)
                .await
                .map(Response::GroupSetAttributes),
            Request::GroupAttributes(GroupRef { group_id }) => self
                .attributes(&actor, &group_id)
                .await
                .map(Response::GroupAttributes),
            Request::GroupAddCounter(r) => self
                .add_counter(&actor, r)
                .await
                .map(Response::GroupAddCounter),
            Request::GroupCounters(GroupRef { group_id }) => self
                .counters(&actor, &group_id)
                .await
                .map(Response::GroupCounters),
            Request::GroupSetReceive(r) => self
                .set_group_receive(user, &r.group_id, r.receive)
                .await
                .map(|()| Response::GroupSetReceive(Empty {})),
            Request::GroupReadReceipts(r) => self
                .group_read_receipts(user, r)
                .await
                .map(Response::GroupReadReceipts),
            _ => return None,
        })
    }
}
