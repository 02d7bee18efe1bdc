//! Groups: the [`GroupManager`] handle (one method per `group_*` op), and keeping the local
//! group cache in step with the server — from the answers to this device's requests, from
//! `group` events, and by re-reading the joined groups after every login.
//!
//! Requests go over the session's current connection through the one request path
//! (`connection::call!`); what the cache does with an answer or an event is the `store`'s
//! business (`store/groups.rs`), guarded by the group's version.

use std::collections::HashSet;
use std::sync::Arc;

use magpie_proto::group::{
    AddCounterRequest, ApplicationsPage, ApplicationsRequest, BlocksPage, BlocksRequest,
    CreateGroupRequest, GroupApplication, GroupAttributes, GroupChange, GroupCounters, GroupEvent,
    GroupId, GroupIds, GroupInfo, GroupMember, GroupPage, GroupPageRequest, GroupRef, GroupRole,
    HandleApplicationRequest, InviteRequest, InviteResponse, JoinGroupRequest, JoinGroupResponse,
    KickRequest, ListChangeRequest, MembersInfoRequest, MembersPage, MembersRequest,
    MuteAllRequest, MuteRequest, ReadReceipts, ReadReceiptsRequest, SetAttributesRequest,
    SetMemberRequest, SetReceiveRequest, SetRoleRequest, TransferRequest, UpdateGroupRequest,
};
use magpie_proto::{ConversationKind, UserId};

use crate::client::Client;
use crate::connection::{Connection, call};
use crate::error::{Error, Result};
use crate::events::ClientEvent;
use crate::session::Session;
use crate::store::{Db, GroupApply};

/// Page size of the `group_joined` refresh after a login (the server's maximum).
const REFRESH_PAGE: u32 = 200;

/// Groups of the logged-in user: every group operation of the protocol (PROTOCOL.md §4,
/// "Groups"), and the local cache of joined groups and known members. Obtained from
/// [`Client::groups`]; cheap to clone.
///
/// Operations need a live connection (they are not queued like messages); a refusal by the
/// server comes back as [`ErrorKind::Server`](crate::ErrorKind::Server) with the protocol's
/// code (`forbidden`, `not_group_member`, `group_full`, `group_not_found` …), see
/// [`Error::code`].
///
/// **The cache.** The groups the user belongs to are kept with their [`GroupInfo`], and the
/// members this device knows of: those fetched with [`members`](Self::members),
/// [`members_info`](Self::members_info) or [`set_member`](Self::set_member), plus members seen
/// joining since. The cache follows the answers to this device's requests and the server's
/// `group` events (it is updated before [`ClientEvent::GroupChanged`] is emitted), and the
/// list of joined groups is re-read after every login (before
/// [`ClientEvent::SyncFinished`]). When it cannot tell whether it missed a change it forgets
/// the group's member rows, so [`cached_members`](Self::cached_members) may list fewer members
/// than [`GroupInfo::member_count`]: fetch them again when the full list matters.
#[derive(Clone, Debug)]
pub struct GroupManager {
    client: Client,
}

impl GroupManager {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    /// The session and its live connection.
    fn connected(&self) -> Result<(Arc<Session>, Connection)> {
        let session = self.client.session()?;
        let conn = session.connection()?;
        Ok((session, conn))
    }

    // -----------------------------------------------------------------------------------------
    // The local cache
    // -----------------------------------------------------------------------------------------

    /// The cached groups this user belongs to, by id. Reads the local database only.
    pub async fn cached_groups(&self) -> Result<Vec<GroupInfo>> {
        self.client
            .session()?
            .store
            .call(|db| db.cached_groups())
            .await
    }

    /// One cached group (`None`: not cached, e.g. not a member). Reads the local database only.
    pub async fn cached_group(&self, group_id: &GroupId) -> Result<Option<GroupInfo>> {
        let id = group_id.clone();
        self.client
            .session()?
            .store
            .call(move |db| db.cached_group(&id))
            .await
    }

    /// The cached members of a group, by user id (see the type's documentation for which
    /// members these are). Reads the local database only.
    pub async fn cached_members(&self, group_id: &GroupId) -> Result<Vec<GroupMember>> {
        let id = group_id.clone();
        self.client
            .session()?
            .store
            .call(move |db| db.cached_members(&id))
            .await
    }

    // -----------------------------------------------------------------------------------------
    // Groups
    // -----------------------------------------------------------------------------------------

    /// `group_create`: creates a group owned by this user, with `request.members` added
    /// directly. Leave `request.owner` unset (the app backend's field).
    pub async fn create(&self, request: CreateGroupRequest) -> Result<GroupInfo> {
        let (session, conn) = self.connected()?;
        let info = call!(conn, GroupCreate(request) => GroupCreate)?;
        cache(&session, put_group(info.clone())).await;
        Ok(info)
    }

    /// `group_info`: up to 100 groups; unknown ones (and invite-only groups of others) are
    /// left out.
    pub async fn info(&self, group_ids: Vec<GroupId>) -> Result<Vec<GroupInfo>> {
        let (session, conn) = self.connected()?;
        let list = call!(conn, GroupInfo(GroupIds { group_ids }) => GroupInfo)?;
        let groups = list.groups.clone();
        cache(&session, move |db| db.refresh_groups(&groups)).await;
        Ok(list.groups)
    }

    /// `group_update` (owners and admins): absent fields stay, `Some(None)` clears.
    pub async fn update(
        &self,
        group_id: &GroupId,
        mut request: UpdateGroupRequest,
    ) -> Result<GroupInfo> {
        request.group_id = Some(group_id.clone());
        let (session, conn) = self.connected()?;
        let info = call!(conn, GroupUpdate(request) => GroupUpdate)?;
        cache(&session, put_group(info.clone())).await;
        Ok(info)
    }

    /// `group_destroy` (the owner).
    pub async fn destroy(&self, group_id: &GroupId) -> Result<()> {
        let (session, conn) = self.connected()?;
        call!(conn, GroupDestroy(group_ref(group_id)) => GroupDestroy)?;
        cache(&session, forget_group(group_id)).await;
        Ok(())
    }

    /// `group_joined`: a page of this user's groups, by id, after `after` (page size default
    /// 50, at most 200). The cache keeps them.
    pub async fn joined(&self, after: Option<GroupId>, limit: Option<u32>) -> Result<GroupPage> {
        let (session, conn) = self.connected()?;
        let request = GroupPageRequest {
            query: None,
            after,
            limit,
        };
        let page = call!(conn, GroupJoined(request) => GroupJoined)?;
        let groups = page.groups.clone();
        cache(&session, move |db| db.put_groups(&groups)).await;
        Ok(page)
    }

    /// `group_directory`: groups anyone may find (not invite-only), searched by id or name.
    pub async fn directory(&self, request: GroupPageRequest) -> Result<GroupPage> {
        let (session, conn) = self.connected()?;
        let page = call!(conn, GroupDirectory(request) => GroupDirectory)?;
        let groups = page.groups.clone();
        cache(&session, move |db| db.refresh_groups(&groups)).await;
        Ok(page)
    }

    // -----------------------------------------------------------------------------------------
    // Membership
    // -----------------------------------------------------------------------------------------

    /// `group_join`: joins an open group at once (`joined: true`, and the group is cached
    /// when this returns), or applies to a group that needs approval (`joined: false`, with
    /// the pending application). Invite-only groups answer `forbidden`.
    pub async fn join(
        &self,
        group_id: &GroupId,
        message: Option<String>,
    ) -> Result<JoinGroupResponse> {
        let (session, conn) = self.connected()?;
        let request = JoinGroupRequest {
            group_id: group_id.clone(),
            message,
        };
        let answer = call!(conn, GroupJoin(request) => GroupJoin)?;
        if answer.joined {
            let id = group_id.clone();
            let cached = session.store.call(move |db| db.cached_group(&id)).await;
            if !matches!(cached, Ok(Some(_))) {
                // The `members_joined` event fetches it too; this makes the answer enough.
                if let Err(e) = refetch(&session, &conn, group_id).await {
                    tracing::warn!(%group_id, error = %e, "cannot cache a joined group");
                }
            }
        }
        Ok(answer)
    }

    /// `group_invite`: adds users, or invites them when the group wants invitees to accept.
    /// One outcome per user, in the order asked.
    pub async fn invite(
        &self,
        group_id: &GroupId,
        user_ids: Vec<UserId>,
        message: Option<String>,
    ) -> Result<InviteResponse> {
        let (_, conn) = self.connected()?;
        let request = InviteRequest {
            group_id: group_id.clone(),
            user_ids,
            message,
        };
        call!(conn, GroupInvite(request) => GroupInvite)
    }

    /// `group_handle_application`: accepts or declines a join application (owners and
    /// admins) or an invitation (the invitee).
    pub async fn handle_application(
        &self,
        application_id: &str,
        accept: bool,
        reason: Option<String>,
    ) -> Result<GroupApplication> {
        let (session, conn) = self.connected()?;
        let request = HandleApplicationRequest {
            application_id: application_id.to_owned(),
            accept,
            reason,
        };
        let application = call!(conn, GroupHandleApplication(request) => GroupHandleApplication)?;
        let me = session.user_id();
        if accept && application.user_id == *me {
            // An accepted invitation: this user is a member now.
            if let Err(e) = refetch(&session, &conn, &application.group_id).await {
                tracing::warn!(group_id = %application.group_id, error = %e, "cannot cache a joined group");
            }
        }
        Ok(application)
    }

    /// `group_applications`: join applications and invitations received or sent, newest
    /// first.
    pub async fn applications(&self, request: ApplicationsRequest) -> Result<ApplicationsPage> {
        let (_, conn) = self.connected()?;
        call!(conn, GroupApplications(request) => GroupApplications)
    }

    /// `group_leave` (members but the owner). The group leaves the cache.
    pub async fn leave(&self, group_id: &GroupId) -> Result<()> {
        let (session, conn) = self.connected()?;
        call!(conn, GroupLeave(group_ref(group_id)) => GroupLeave)?;
        cache(&session, forget_group(group_id)).await;
        Ok(())
    }

    /// `group_kick` (owner; admins for ordinary members): removes members, and with
    /// `ban_seconds` bars them from rejoining for that long.
    pub async fn kick(
        &self,
        group_id: &GroupId,
        user_ids: Vec<UserId>,
        ban_seconds: Option<u64>,
    ) -> Result<()> {
        let (session, conn) = self.connected()?;
        let request = KickRequest {
            group_id: group_id.clone(),
            user_ids: user_ids.clone(),
            ban_seconds,
        };
        call!(conn, GroupKick(request) => GroupKick)?;
        let change = GroupChange::MembersKicked {
            user_ids,
            banned_until: None,
        };
        cache(&session, member_change(group_id, change)).await;
        Ok(())
    }

    /// `group_transfer` (the owner): `to` becomes the owner, this user an admin.
    pub async fn transfer(&self, group_id: &GroupId, to: UserId) -> Result<GroupInfo> {
        let (session, conn) = self.connected()?;
        let request = TransferRequest {
            group_id: group_id.clone(),
            to,
        };
        let info = call!(conn, GroupTransfer(request) => GroupTransfer)?;
        cache(&session, put_group(info.clone())).await;
        Ok(info)
    }

    /// `group_set_role` (the owner): makes members admins or ordinary members.
    pub async fn set_role(
        &self,
        group_id: &GroupId,
        user_ids: Vec<UserId>,
        role: GroupRole,
    ) -> Result<()> {
        let (session, conn) = self.connected()?;
        let request = SetRoleRequest {
            group_id: group_id.clone(),
            user_ids: user_ids.clone(),
            role,
        };
        call!(conn, GroupSetRole(request) => GroupSetRole)?;
        let changes: Vec<GroupChange> = user_ids
            .into_iter()
            .map(|user_id| match role {
                GroupRole::Admin => GroupChange::AdminAdded { user_id },
                _ => GroupChange::AdminRemoved { user_id },
            })
            .collect();
        let id = group_id.clone();
        cache(&session, move |db| {
            changes
                .iter()
                .try_for_each(|change| db.apply_member_change(&id, change))
        })
        .await;
        Ok(())
    }

    /// `group_members` (members): a page of members by user id. The cache keeps them.
    pub async fn members(&self, request: MembersRequest) -> Result<MembersPage> {
        let (session, conn) = self.connected()?;
        let id = request.group_id.clone();
        let page = call!(conn, GroupMembers(request) => GroupMembers)?;
        cache(&session, put_members(&id, page.members.clone())).await;
        Ok(page)
    }

    /// `group_members_info` (members): some members by id; non-members are left out.
    pub async fn members_info(
        &self,
        group_id: &GroupId,
        user_ids: Vec<UserId>,
    ) -> Result<Vec<GroupMember>> {
        let (session, conn) = self.connected()?;
        let request = MembersInfoRequest {
            group_id: group_id.clone(),
            user_ids,
        };
        let list = call!(conn, GroupMembersInfo(request) => GroupMembersInfo)?;
        cache(&session, put_members(group_id, list.members.clone())).await;
        Ok(list.members)
    }

    /// `group_set_member`: a member's nickname and attributes (oneself; owners and admins
    /// for lower roles).
    pub async fn set_member(&self, request: SetMemberRequest) -> Result<GroupMember> {
        let (session, conn) = self.connected()?;
        let id = request.group_id.clone();
        let member = call!(conn, GroupSetMember(request) => GroupSetMember)?;
        cache(&session, put_members(&id, vec![member.clone()])).await;
        Ok(member)
    }

    // -----------------------------------------------------------------------------------------
    // Moderation
    // -----------------------------------------------------------------------------------------

    /// `group_mute` (owners, admins for lower roles): mutes members for `seconds`; 0 unmutes.
    pub async fn mute(
        &self,
        group_id: &GroupId,
        user_ids: Vec<UserId>,
        seconds: u64,
    ) -> Result<()> {
        let (_, conn) = self.connected()?;
        let request = MuteRequest {
            group_id: group_id.clone(),
            user_ids,
            seconds,
        };
        call!(conn, GroupMute(request) => GroupMute).map(drop)
    }

    /// `group_mute_all` (owners, admins): mutes or unmutes everyone but owners, admins and
    /// the allow list.
    pub async fn mute_all(&self, group_id: &GroupId, muted: bool) -> Result<()> {
        let (_, conn) = self.connected()?;
        let request = MuteAllRequest {
            group_id: group_id.clone(),
            muted,
        };
        call!(conn, GroupMuteAll(request) => GroupMuteAll).map(drop)
    }

    /// `group_allow_list` (owners, admins): who may speak while everyone is muted.
    pub async fn allow_list(
        &self,
        group_id: &GroupId,
        add: Vec<UserId>,
        remove: Vec<UserId>,
    ) -> Result<()> {
        let (_, conn) = self.connected()?;
        let request = ListChangeRequest {
            group_id: group_id.clone(),
            add,
            remove,
            seconds: None,
        };
        call!(conn, GroupAllowList(request) => GroupAllowList).map(drop)
    }

    /// `group_block_list` (owners, admins for lower roles): blocked users are removed and
    /// cannot join; `seconds` limits the block (absent: until removed).
    pub async fn block_list(
        &self,
        group_id: &GroupId,
        add: Vec<UserId>,
        remove: Vec<UserId>,
        seconds: Option<u64>,
    ) -> Result<()> {
        let (_, conn) = self.connected()?;
        let request = ListChangeRequest {
            group_id: group_id.clone(),
            add,
            remove,
            seconds,
        };
        call!(conn, GroupBlockList(request) => GroupBlockList).map(drop)
    }

    /// `group_blocks` (owners, admins): a page of the block list.
    pub async fn blocks(&self, request: BlocksRequest) -> Result<BlocksPage> {
        let (_, conn) = self.connected()?;
        call!(conn, GroupBlocks(request) => GroupBlocks)
    }

    // -----------------------------------------------------------------------------------------
    // Messages
    // -----------------------------------------------------------------------------------------

    /// `group_set_receive` (members): `false` blocks the group's messages for this user — they
    /// stay a member, but no message of the group is pushed to their devices any more; the
    /// conversation still shows them as unread after the next sync, so the app can show the
    /// group as muted with a count. `true` receives them again. (Messages are sent with
    /// [`ChatManager::send_group`](crate::ChatManager::send_group).)
    pub async fn set_receive(&self, group_id: &GroupId, receive: bool) -> Result<()> {
        let (session, conn) = self.connected()?;
        let request = SetReceiveRequest {
            group_id: group_id.clone(),
            receive,
        };
        call!(conn, GroupSetReceive(request) => GroupSetReceive)?;
        let (id, me) = (group_id.clone(), session.user_id().clone());
        cache(&session, move |db| db.set_member_receive(&id, &me, receive)).await;
        Ok(())
    }

    /// `group_read_receipts` (members): how many members have read the group message
    /// `request.seq` of `request.conversation_id` (a `grp:` conversation), and in groups of up
    /// to 500 members a page of who has (`read: true`) or has not; page on with
    /// `after = next_after`. The sender never counts.
    pub async fn read_receipts(&self, request: ReadReceiptsRequest) -> Result<ReadReceipts> {
        if request.conversation_id.kind() != ConversationKind::Group {
            return Err(Error::invalid_input(
                "read receipts are kept for group conversations only",
            ));
        }
        let (_, conn) = self.connected()?;
        call!(conn, GroupReadReceipts(request) => GroupReadReceipts)
    }

    // -----------------------------------------------------------------------------------------
    // Attributes and counters
    // -----------------------------------------------------------------------------------------

    /// `group_set_attributes` (owners, admins): sets and deletes keys; with
    /// `expected_version`, only if nobody changed them since (else `conflict`).
    pub async fn set_attributes(&self, request: SetAttributesRequest) -> Result<GroupAttributes> {
        let (_, conn) = self.connected()?;
        call!(conn, GroupSetAttributes(request) => GroupSetAttributes)
    }

    /// `group_attributes` (members).
    pub async fn attributes(&self, group_id: &GroupId) -> Result<GroupAttributes> {
        let (_, conn) = self.connected()?;
        call!(conn, GroupAttributes(group_ref(group_id)) => GroupAttributes)
    }

    /// `group_add_counter` (members): adds `delta` (may be negative) to a counter and
    /// returns its new value.
    pub async fn add_counter(
        &self,
        group_id: &GroupId,
        key: impl Into<String>,
        delta: i64,
    ) -> Result<GroupCounters> {
        let (_, conn) = self.connected()?;
        let request = AddCounterRequest {
            group_id: group_id.clone(),
            key: key.into(),
            delta,
        };
        call!(conn, GroupAddCounter(request) => GroupAddCounter)
    }

    /// `group_counters` (members).
    pub async fn counters(&self, group_id: &GroupId) -> Result<GroupCounters> {
        let (_, conn) = self.connected()?;
        call!(conn, GroupCounters(group_ref(group_id)) => GroupCounters)
    }
}

fn group_ref(group_id: &GroupId) -> GroupRef {
    GroupRef {
        group_id: group_id.clone(),
    }
}

fn put_group(info: GroupInfo) -> impl FnOnce(&mut Db) -> Result<()> + Send + 'static {
    move |db| db.put_groups(std::slice::from_ref(&info))
}

fn forget_group(group_id: &GroupId) -> impl FnOnce(&mut Db) -> Result<()> + Send + 'static {
    let id = group_id.clone();
    move |db| db.remove_group(&id)
}

fn put_members(
    group_id: &GroupId,
    members: Vec<GroupMember>,
) -> impl FnOnce(&mut Db) -> Result<()> + Send + 'static {
    let id = group_id.clone();
    move |db| db.put_members(&id, &members)
}

fn member_change(
    group_id: &GroupId,
    change: GroupChange,
) -> impl FnOnce(&mut Db) -> Result<()> + Send + 'static {
    let id = group_id.clone();
    move |db| db.apply_member_change(&id, &change)
}

/// Records what a successful request changed. The request itself succeeded, so a cache
/// failure is logged, not returned (the next login's refresh repairs the group list).
async fn cache(session: &Session, write: impl FnOnce(&mut Db) -> Result<()> + Send + 'static) {
    if let Err(e) = session.store.call(write).await {
        tracing::warn!(error = %e, "cannot update the group cache");
    }
}

/// Reads one group again and stores it, or forgets it if the server no longer shows it.
async fn refetch(session: &Session, conn: &Connection, group_id: &GroupId) -> Result<()> {
    let request = GroupIds {
        group_ids: vec![group_id.clone()],
    };
    let list = call!(conn, GroupInfo(request) => GroupInfo)?;
    let id = group_id.clone();
    session
        .store
        .call(
            move |db| match list.groups.into_iter().find(|g| g.group_id == id) {
                Some(info) => db.put_groups(&[info]),
                None => db.remove_group(&id),
            },
        )
        .await
}

/// A `group` event: update the cache (fetching the group again when the event shows that
/// changes were missed), then tell the app.
pub(crate) async fn on_event(session: &Session, conn: &Connection, event: GroupEvent) {
    let applied = {
        let event = event.clone();
        session
            .store
            .call(move |db| db.apply_group_event(&event))
            .await
    };
    match applied {
        Ok(GroupApply::Done) => {}
        Ok(GroupApply::Refetch) => {
            if let Err(e) = refetch(session, conn, &event.group_id).await {
                tracing::warn!(group_id = %event.group_id, error = %e, "cannot refetch a group");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot apply a group event to the cache"),
    }
    session.emit_event(ClientEvent::GroupChanged(Box::new(event)));
}

/// After a login (or `sync_required`): events are not kept by the server, so read the joined
/// groups again. Groups that changed meanwhile are stored anew (their member rows dropped);
/// groups no longer listed are forgotten unless an event touched them since they were read.
pub(crate) async fn refresh(session: &Session, conn: &Connection) -> Result<()> {
    let before = session.store.call(|db| db.group_versions()).await?;
    let mut listed = HashSet::new();
    let mut after = None;
    loop {
        let request = GroupPageRequest {
            query: None,
            after: after.take(),
            limit: Some(REFRESH_PAGE),
        };
        let page = call!(conn, GroupJoined(request) => GroupJoined)?;
        listed.extend(page.groups.iter().map(|g| g.group_id.clone()));
        after = page.groups.last().map(|g| g.group_id.clone());
        let more = page.has_more && after.is_some();
        session
            .store
            .call(move |db| db.resync_groups(&page.groups))
            .await?;
        if !more {
            break;
        }
    }
    let gone: Vec<(GroupId, u64)> = before
        .into_iter()
        .filter(|(id, _)| !listed.contains(id))
        .collect();
    if !gone.is_empty() {
        session
            .store
            .call(move |db| {
                gone.iter()
                    .try_for_each(|(id, version)| db.remove_group_at(id, *version))
            })
            .await?;
    }
    Ok(())
}

/// Whether an error says the server does not know group ops at all (an older server).
pub(crate) fn unsupported(error: &Error) -> bool {
    error.code() == Some(magpie_proto::ErrorCode::UnknownOp)
}
