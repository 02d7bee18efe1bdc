//! Groups on the wire: ids, info, options, members, applications, and the `group` event.
//!
//! A group is a conversation (`grp:<group id>`) with a managed membership. Every change to a
//! group is one [`GroupChange`], delivered as the `group` event to the members it concerns,
//! carrying the group's version after the change. (Events are not kept: a device that was
//! offline re-reads the groups it cares about; a change log to sync from is future work.)

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Millis;
pub use crate::ids::GroupId;
use crate::ids::{ConversationId, UserId};

/// Longest group name, in bytes.
pub const MAX_GROUP_NAME_LEN: usize = 100;
/// Longest introduction or announcement, in bytes.
pub const MAX_GROUP_TEXT_LEN: usize = 4096;
/// Largest group `ext`, JSON-encoded.
pub const MAX_GROUP_EXT_BYTES: usize = 4096;
/// Longest application / invitation / decision message, in bytes.
pub const MAX_APPLICATION_TEXT_LEN: usize = 512;
/// Members a server allows in a group unless configured otherwise.
pub const DEFAULT_MAX_MEMBERS: u32 = 3000;
/// Users named in one invite / kick / mute / ban request.
pub const MAX_USERS_PER_CALL: usize = 100;

/// Who may join without an invitation.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinPolicy {
    /// Anyone may join at once.
    Open,
    /// Anyone may apply; an owner or admin accepts or declines.
    #[default]
    Approval,
    /// Only members' invitations bring new members in; the group is not in the directory.
    InviteOnly,
}

/// A member's role.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupRole {
    /// An ordinary member.
    #[default]
    Member,
    /// Manages members and settings, but not other admins or the owner.
    Admin,
    /// Exactly one per group: may do everything, including destroying it.
    Owner,
}

/// Settings of a group.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct GroupOptions {
    /// Who may join.
    pub join_policy: JoinPolicy,
    /// Whether an invitee must accept before becoming a member.
    pub invite_needs_accept: bool,
    /// Whether ordinary members may invite (owners and admins always may).
    pub members_can_invite: bool,
    /// Largest membership.
    pub max_members: u32,
    /// Whether new members can read messages from before they joined.
    pub history_visible_to_new_members: bool,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            join_policy: JoinPolicy::Approval,
            invite_needs_accept: false,
            members_can_invite: true,
            max_members: DEFAULT_MAX_MEMBERS,
            history_visible_to_new_members: false,
        }
    }
}

/// A group as everyone may see it.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The id.
    pub group_id: GroupId,
    /// Display name.
    pub name: String,
    /// Avatar URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// A description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introduction: Option<String>,
    /// The announcement (notice board).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announcement: Option<String>,
    /// App data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<Map<String, Value>>,
    /// The owner.
    pub owner: UserId,
    /// Settings.
    pub options: GroupOptions,
    /// Whether only owners, admins and allow-listed members may speak.
    pub all_muted: bool,
    /// Current members.
    pub member_count: u32,
    /// Bumped by every change to the group or its membership.
    pub version: u64,
    /// Creation time.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
}

/// One member of a group.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct GroupMember {
    /// The user.
    pub user_id: UserId,
    /// Role.
    pub role: GroupRole,
    /// When they joined.
    pub joined_at: Millis,
    /// Their name in this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    /// Per-member app data (custom key-values).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub attributes: Map<String, Value>,
    /// Muted until this time (absent: not muted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted_until: Option<Millis>,
    /// May speak while the whole group is muted.
    #[serde(default)]
    pub allowed_when_all_muted: bool,
    /// The first seq of the group conversation this member may read: where they joined, or 1
    /// when the group shows its history to new members. Set by the server.
    #[serde(default = "first_seq")]
    pub visible_from_seq: u64,
    /// Whether the member receives the group's messages (`false`: they stay a member but get
    /// no message pushed; sync still counts them as unread).
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub receive_messages: bool,
}

fn first_seq() -> u64 {
    1
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

/// What an application is.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplicationKind {
    /// A user asks to join; an owner or admin decides.
    Join,
    /// A member invites a user; the invitee decides.
    Invite,
}

/// Where an application stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplicationState {
    /// Waiting for a decision.
    Pending,
    /// Accepted: the user became a member.
    Accepted,
    /// Declined.
    Declined,
}

/// A join application or an invitation.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct GroupApplication {
    /// Server-assigned id, a decimal string.
    pub application_id: String,
    /// The group.
    pub group_id: GroupId,
    /// Join or invite.
    pub kind: ApplicationKind,
    /// Who asked: the applicant, or the inviting member.
    pub from: UserId,
    /// Who would join: the applicant, or the invitee.
    pub user_id: UserId,
    /// The request's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Where it stands.
    pub state: ApplicationState,
    /// Who decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_by: Option<UserId>,
    /// The decision's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was made.
    pub created_at: Millis,
    /// When it was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_at: Option<Millis>,
}

/// What happened to a group: the payload of the `group` event. `actor` did it (absent when
/// the app backend did).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum GroupChange {
    /// The group was created with its first members.
    Created {
        /// The group.
        group: GroupInfo,
    },
    /// Name, avatar, introduction, ext or options changed.
    InfoChanged {
        /// The group after the change.
        group: GroupInfo,
    },
    /// The announcement changed.
    AnnouncementChanged {
        /// The new announcement (absent: cleared).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        announcement: Option<String>,
    },
    /// The group was destroyed; it no longer exists.
    Destroyed,
    /// Users became members (they joined, were added, or their application or invitation was
    /// accepted).
    MembersJoined {
        /// The new members.
        members: Vec<GroupMember>,
    },
    /// Members left of their own accord.
    MemberLeft {
        /// Who left.
        user_id: UserId,
    },
    /// Members were removed by an owner or admin.
    MembersKicked {
        /// Who was removed.
        user_ids: Vec<UserId>,
        /// Until when they may not rejoin (absent: they may apply again at once).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        banned_until: Option<Millis>,
    },
    /// A member became an admin.
    AdminAdded {
        /// The member.
        user_id: UserId,
    },
    /// An admin became an ordinary member.
    AdminRemoved {
        /// The member.
        user_id: UserId,
    },
    /// Ownership moved.
    OwnerChanged {
        /// The previous owner (now an admin).
        from: UserId,
        /// The new owner.
        to: UserId,
    },
    /// Members were muted until a time, or unmuted (`until` absent).
    MuteChanged {
        /// The members.
        user_ids: Vec<UserId>,
        /// Until when.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<Millis>,
    },
    /// The whole group was muted or unmuted.
    AllMutedChanged {
        /// The new state.
        all_muted: bool,
    },
    /// The allow list (who may speak while all are muted) changed.
    AllowListChanged {
        /// Added.
        added: Vec<UserId>,
        /// Removed.
        removed: Vec<UserId>,
    },
    /// Users were put on or taken off the block list (blocked users cannot join or apply).
    BlockListChanged {
        /// Added (and removed from the group if they were members).
        added: Vec<UserId>,
        /// Removed.
        removed: Vec<UserId>,
    },
    /// A member's nickname or attributes changed.
    MemberInfoChanged {
        /// The member after the change.
        member: GroupMember,
    },
    /// Group attributes changed: the whole map after the change.
    AttributesChanged {
        /// The attributes.
        attributes: Map<String, Value>,
        /// Their version (for the compare-and-set guard).
        attributes_version: u64,
    },
    /// Group counters changed: the counters that moved, with their new values.
    CountersChanged {
        /// The counters.
        counters: Map<String, Value>,
    },
    /// Someone applied to join (sent to owners and admins).
    ApplicationReceived {
        /// The application.
        application: GroupApplication,
    },
    /// The user was invited (sent to the invitee).
    InvitationReceived {
        /// The invitation.
        application: GroupApplication,
    },
    /// An application or invitation was accepted or declined (sent to whoever asked, and to
    /// the invitee or the group's managers).
    ApplicationHandled {
        /// The application after the decision.
        application: GroupApplication,
    },
}

/// The `group` event: one change to one group.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct GroupEvent {
    /// The group.
    pub group_id: GroupId,
    /// The group's version after the change.
    pub version: u64,
    /// Who did it (absent: the app backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<UserId>,
    /// When.
    pub time: Millis,
    /// What.
    #[serde(flatten)]
    pub change: GroupChange,
}

// ---------------------------------------------------------------------------------------------
// Requests and responses (WebSocket ops `group_*`; the REST API reuses the bodies)
// ---------------------------------------------------------------------------------------------

/// Options of a new group; absent fields take the defaults of [`GroupOptions`].
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupOptionsPatch {
    /// Who may join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_policy: Option<JoinPolicy>,
    /// Whether invitees must accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite_needs_accept: Option<bool>,
    /// Whether ordinary members may invite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members_can_invite: Option<bool>,
    /// Largest membership (up to the server's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_members: Option<u32>,
    /// Whether new members see earlier messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_visible_to_new_members: Option<bool>,
}

impl GroupOptionsPatch {
    /// `base` with this patch applied.
    pub fn apply(&self, base: &GroupOptions) -> GroupOptions {
        GroupOptions {
            join_policy: self.join_policy.unwrap_or(base.join_policy),
            invite_needs_accept: self.invite_needs_accept.unwrap_or(base.invite_needs_accept),
            members_can_invite: self.members_can_invite.unwrap_or(base.members_can_invite),
            max_members: self.max_members.unwrap_or(base.max_members),
            history_visible_to_new_members: self
                .history_visible_to_new_members
                .unwrap_or(base.history_visible_to_new_members),
        }
    }
}

/// `group_create`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    /// A custom id; absent: the server generates one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<GroupId>,
    /// Display name.
    pub name: String,
    /// Avatar URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introduction: Option<String>,
    /// App data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<Map<String, Value>>,
    /// Settings.
    #[serde(default)]
    pub options: GroupOptionsPatch,
    /// The first members besides the creator (added directly, without invitations).
    #[serde(default)]
    pub members: Vec<UserId>,
    /// REST only: the owner (the app backend creates groups on a user's behalf).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<UserId>,
}

/// `group_update`: absent fields stay; `null` clears an optional one.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateGroupRequest {
    /// The group (taken from the path in REST).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<GroupId>,
    /// New name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New avatar.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::rest::double_option"
    )]
    pub avatar_url: Option<Option<String>>,
    /// New introduction.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::rest::double_option"
    )]
    pub introduction: Option<Option<String>>,
    /// New announcement.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::rest::double_option"
    )]
    pub announcement: Option<Option<String>>,
    /// New app data.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::rest::double_option"
    )]
    pub ext: Option<Option<Map<String, Value>>>,
    /// Changed settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<GroupOptionsPatch>,
}

/// An op on one group: `group_destroy`, `group_leave`, `group_attributes`, `group_counters`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRef {
    /// The group.
    pub group_id: GroupId,
}

/// `group_info`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupIds {
    /// Up to 100 groups.
    pub group_ids: Vec<GroupId>,
}

/// Groups (unknown ids are left out).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct GroupList {
    /// The groups.
    pub groups: Vec<GroupInfo>,
}

/// `group_joined` and `group_directory`: a page of groups ordered by id.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupPageRequest {
    /// Directory only: a case-insensitive substring of the id or name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Start after this group id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<GroupId>,
    /// Page size (default 50, at most 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A page of groups.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct GroupPage {
    /// The groups.
    pub groups: Vec<GroupInfo>,
    /// More follow after the last one.
    pub has_more: bool,
}

/// `group_join`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinGroupRequest {
    /// The group.
    pub group_id: GroupId,
    /// For the managers, when the group needs approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The outcome of `group_join`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct JoinGroupResponse {
    /// The caller is a member now.
    pub joined: bool,
    /// The application waiting for a decision, when the group needs approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<GroupApplication>,
}

/// `group_invite`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    /// The group.
    pub group_id: GroupId,
    /// Up to 100 users.
    pub user_ids: Vec<UserId>,
    /// For the invitees, when they must accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What became of one invitee.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InviteOutcome {
    /// Now a member.
    Added,
    /// Invited; a member once they accept.
    Invited,
    /// Was a member already.
    AlreadyMember,
    /// On the block list.
    Blocked,
    /// No such user.
    UserNotFound,
}

/// One invitee's outcome.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct InviteResult {
    /// The user.
    pub user_id: UserId,
    /// What happened.
    pub outcome: InviteOutcome,
}

/// The outcome of `group_invite`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct InviteResponse {
    /// Per invitee, in the order asked.
    pub results: Vec<InviteResult>,
}

/// `group_handle_application`: accept or decline a join application (owners and admins) or an
/// invitation (the invitee).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandleApplicationRequest {
    /// The application.
    pub application_id: String,
    /// Accept or decline.
    pub accept: bool,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Which applications `group_applications` lists.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplicationBox {
    /// Join applications to groups the caller manages, and invitations addressed to the caller.
    Received,
    /// The caller's own join applications and the invitations they sent.
    Sent,
}

/// `group_applications`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationsRequest {
    /// Received or sent.
    #[serde(rename = "box")]
    pub which: ApplicationBox,
    /// Older than this application id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Page size (default 50, at most 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A page of applications, newest first.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct ApplicationsPage {
    /// The applications.
    pub applications: Vec<GroupApplication>,
    /// More, older ones follow.
    pub has_more: bool,
}

/// `group_kick`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KickRequest {
    /// The group.
    pub group_id: GroupId,
    /// Up to 100 members.
    pub user_ids: Vec<UserId>,
    /// Also bar them from rejoining for this long (absent or 0: they may apply again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ban_seconds: Option<u64>,
}

/// `group_transfer`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// The group.
    pub group_id: GroupId,
    /// The new owner (a member).
    pub to: UserId,
}

/// `group_set_role`: make members admins or ordinary members (owner only).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRoleRequest {
    /// The group.
    pub group_id: GroupId,
    /// The members.
    pub user_ids: Vec<UserId>,
    /// `admin` or `member`.
    pub role: GroupRole,
}

/// `group_members`: a page of members ordered by user id.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembersRequest {
    /// The group.
    pub group_id: GroupId,
    /// Only this role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<GroupRole>,
    /// Start after this user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<UserId>,
    /// Page size (default 100, at most 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A page of members.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct MembersPage {
    /// The members.
    pub members: Vec<GroupMember>,
    /// More follow after the last one.
    pub has_more: bool,
}

/// `group_members_info`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembersInfoRequest {
    /// The group.
    pub group_id: GroupId,
    /// Up to 100 users (non-members are left out of the answer).
    pub user_ids: Vec<UserId>,
}

/// Members.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct MemberList {
    /// The members.
    pub members: Vec<GroupMember>,
}

/// `group_set_member`: a member's nickname and attributes (themselves, or owners and admins
/// for ordinary members).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetMemberRequest {
    /// The group.
    pub group_id: GroupId,
    /// The member (absent: the caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// New nickname (`null` clears it).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::rest::double_option"
    )]
    pub nickname: Option<Option<String>>,
    /// Attribute keys to set (`null` deletes a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Map<String, Value>>,
}

/// `group_mute`: mute members for a time, or unmute them with `seconds: 0`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MuteRequest {
    /// The group.
    pub group_id: GroupId,
    /// Up to 100 members.
    pub user_ids: Vec<UserId>,
    /// For how long (0: unmute).
    pub seconds: u64,
}

/// `group_mute_all`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MuteAllRequest {
    /// The group.
    pub group_id: GroupId,
    /// Mute or unmute everyone but owners, admins and the allow list.
    pub muted: bool,
}

/// `group_allow_list` and `group_block_list`: add and remove users.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListChangeRequest {
    /// The group.
    pub group_id: GroupId,
    /// Users to add.
    #[serde(default)]
    pub add: Vec<UserId>,
    /// Users to remove.
    #[serde(default)]
    pub remove: Vec<UserId>,
    /// Block list only: how long the block lasts (absent: until removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u64>,
}

/// `group_blocks`: a page of the block list.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlocksRequest {
    /// The group.
    pub group_id: GroupId,
    /// Start after this user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<UserId>,
    /// Page size (default 100, at most 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// One block list entry.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct BlockEntry {
    /// The user.
    pub user_id: UserId,
    /// Until when (absent: until removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Millis>,
}

/// A page of the block list.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct BlocksPage {
    /// The entries.
    pub blocked: Vec<BlockEntry>,
    /// More follow.
    pub has_more: bool,
}

/// `group_set_attributes`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetAttributesRequest {
    /// The group.
    pub group_id: GroupId,
    /// Keys to set.
    #[serde(default)]
    pub set: Map<String, Value>,
    /// Keys to delete.
    #[serde(default)]
    pub delete: Vec<String>,
    /// Apply only if the attributes are still at this version (else `conflict`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
}

/// A group's attributes.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct GroupAttributes {
    /// The key-values.
    pub attributes: Map<String, Value>,
    /// Their version.
    pub version: u64,
}

/// `group_add_counter`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddCounterRequest {
    /// The group.
    pub group_id: GroupId,
    /// The counter (≤ 32 bytes).
    pub key: String,
    /// How much to add (may be negative).
    pub delta: i64,
}

/// A group's counters.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct GroupCounters {
    /// Name → integer value.
    pub counters: Map<String, Value>,
}

/// `group_set_receive`: receive a group's messages or not.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetReceiveRequest {
    /// The group.
    pub group_id: GroupId,
    /// `false`: stay a member but get no message pushed.
    pub receive: bool,
}

/// `group_read_receipts`: who has read a group message.
///
/// In groups of up to the server's `groups.read_receipt_members` members (500 by default) the
/// answer pages the members who have (`read: true`) or have not read it; in larger groups only
/// the counts are given.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadReceiptsRequest {
    /// The group conversation.
    pub conversation_id: ConversationId,
    /// The message's seq.
    pub seq: u64,
    /// List the readers (`true`, the default) or the members who have not read it.
    #[serde(default = "yes")]
    pub read: bool,
    /// Page after this user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<UserId>,
    /// Page size, 1 to 200 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// The answer to `group_read_receipts`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReadReceipts {
    /// The message's seq.
    pub seq: u64,
    /// Members (other than the sender) who have read it.
    pub read_count: u32,
    /// Members (other than the sender) who have not.
    pub unread_count: u32,
    /// One page of the asked list, by user id; absent in groups too large for lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_ids: Option<Vec<UserId>>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<UserId>,
}

/// A message's read count, in a `group_read` event.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MessageReadCount {
    /// The message's seq.
    pub seq: u64,
    /// Members (other than the sender) who have read it.
    pub read_count: u32,
    /// Members (other than the sender) who have not.
    pub unread_count: u32,
}

/// The `group_read` event: members read some of the recipient's group messages; the new counts
/// of those messages (the newest 100 at most, so the event stays small). In groups up to the
/// server's `groups.read_receipt_members` it comes for each read and names the reader; in
/// larger groups at most once a second per group, for everyone who read meanwhile.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct GroupReadEvent {
    /// The group conversation.
    pub conversation_id: ConversationId,
    /// Who read (absent when the event sums up several readers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader: Option<UserId>,
    /// Up to which seq the reads reached.
    pub read_seq: u64,
    /// The recipient's messages whose count changed, ascending by seq.
    pub messages: Vec<MessageReadCount>,
}
