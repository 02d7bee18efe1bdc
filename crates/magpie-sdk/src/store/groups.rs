//! The group part of the local cache: the groups this user has joined (their [`GroupInfo`])
//! and the members this device knows of (fetched by the app, or seen joining since).
//!
//! Every write is guarded by the group's version, which the server bumps with every change:
//! an older copy never replaces a newer one, and where the cache cannot tell whether it missed
//! something (a version jump, an event older than what it holds) it forgets the group's member
//! rows — or, for the group itself, asks the caller to fetch it again — rather than guess.

use rusqlite::{OptionalExtension, params};

use magpie_proto::UserId;
use magpie_proto::group::{GroupChange, GroupEvent, GroupId, GroupInfo, GroupMember, GroupRole};

use super::{Db, from_sql_u64, json_col, sql_u64, to_json};
use crate::error::Result;

/// What the session must do after [`Db::apply_group_event`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum GroupApply {
    /// The cache reflects the event (or rightly ignores it).
    Done,
    /// The cached info may be stale (the cache missed a change, or the user joined a group it
    /// does not hold): fetch the group with `group_info` and store it with
    /// [`Db::put_group`], or forget it if the answer leaves it out.
    Refetch,
}

fn load_group(tx: &rusqlite::Connection, id: &GroupId) -> Result<Option<GroupInfo>> {
    Ok(tx
        .prepare_cached("SELECT info FROM groups WHERE group_id = ?1")?
        .query_row([id.as_str()], |row| json_col(row, 0))
        .optional()?)
}

fn save_group(tx: &rusqlite::Connection, info: &GroupInfo) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO groups (group_id, version, info) VALUES (?1, ?2, ?3)
         ON CONFLICT (group_id) DO UPDATE SET version = excluded.version, info = excluded.info",
    )?
    .execute(params![
        info.group_id.as_str(),
        sql_u64(info.version),
        to_json(info)?
    ])?;
    Ok(())
}

fn delete_group(tx: &rusqlite::Connection, id: &GroupId) -> Result<()> {
    tx.prepare_cached("DELETE FROM groups WHERE group_id = ?1")?
        .execute([id.as_str()])?;
    forget_members(tx, id)
}

fn forget_members(tx: &rusqlite::Connection, id: &GroupId) -> Result<()> {
    tx.prepare_cached("DELETE FROM group_members WHERE group_id = ?1")?
        .execute([id.as_str()])?;
    Ok(())
}

fn load_member(
    tx: &rusqlite::Connection,
    group: &GroupId,
    user: &UserId,
) -> Result<Option<GroupMember>> {
    Ok(tx
        .prepare_cached("SELECT member FROM group_members WHERE group_id = ?1 AND user_id = ?2")?
        .query_row([group.as_str(), user.as_str()], |row| json_col(row, 0))
        .optional()?)
}

fn save_member(tx: &rusqlite::Connection, group: &GroupId, member: &GroupMember) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO group_members (group_id, user_id, member) VALUES (?1, ?2, ?3)
         ON CONFLICT (group_id, user_id) DO UPDATE SET member = excluded.member",
    )?
    .execute(params![
        group.as_str(),
        member.user_id.as_str(),
        to_json(member)?
    ])?;
    Ok(())
}

fn delete_member(tx: &rusqlite::Connection, group: &GroupId, user: &UserId) -> Result<()> {
    tx.prepare_cached("DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2")?
        .execute([group.as_str(), user.as_str()])?;
    Ok(())
}

/// Changes a cached member row, if there is one.
fn edit_member(
    tx: &rusqlite::Connection,
    group: &GroupId,
    user: &UserId,
    edit: impl FnOnce(&mut GroupMember),
) -> Result<()> {
    if let Some(mut member) = load_member(tx, group, user)? {
        edit(&mut member);
        save_member(tx, group, &member)?;
    }
    Ok(())
}

/// How much of the gap between the cached copy and a newer one the events will fill.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Gap {
    /// The copy answers a request on the live connection: the event of the change one
    /// version ahead is on its way, anything further ahead was missed.
    OneAhead,
    /// The copy was read after a (re)connect: every change since the cached version was
    /// missed.
    Missed,
}

/// Stores a group unless the cache holds a newer copy (`insert`: also when not cached). When
/// the copy is ahead by changes no event will bring, the member rows are forgotten.
fn put_group_tx(
    tx: &rusqlite::Connection,
    info: &GroupInfo,
    insert: bool,
    gap: Gap,
) -> Result<bool> {
    match load_group(tx, &info.group_id)? {
        Some(cached) if cached.version > info.version => Ok(false),
        Some(cached) => {
            let covered = match gap {
                Gap::OneAhead => cached.version + 1,
                Gap::Missed => cached.version,
            };
            if info.version > covered {
                forget_members(tx, &info.group_id)?;
            }
            save_group(tx, info)?;
            Ok(true)
        }
        None if insert => {
            // Rows left from an earlier membership may be stale.
            forget_members(tx, &info.group_id)?;
            save_group(tx, info)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Whether a change touches member rows (so an event too old to apply must drop them).
fn touches_members(change: &GroupChange) -> bool {
    matches!(
        change,
        GroupChange::MembersJoined { .. }
            | GroupChange::MemberLeft { .. }
            | GroupChange::MembersKicked { .. }
            | GroupChange::AdminAdded { .. }
            | GroupChange::AdminRemoved { .. }
            | GroupChange::OwnerChanged { .. }
            | GroupChange::MuteChanged { .. }
            | GroupChange::AllowListChanged { .. }
            | GroupChange::BlockListChanged { .. }
            | GroupChange::MemberInfoChanged { .. }
    )
}

/// Applies a change to the cached member rows. Idempotent: applying it twice (from the answer
/// to one's own request and from the event) leaves the same rows.
fn apply_to_members(
    tx: &rusqlite::Connection,
    group: &GroupId,
    change: &GroupChange,
) -> Result<()> {
    match change {
        GroupChange::MembersJoined { members } => {
            for member in members {
                save_member(tx, group, member)?;
            }
        }
        GroupChange::MemberLeft { user_id } => delete_member(tx, group, user_id)?,
        GroupChange::MembersKicked { user_ids, .. } => {
            for user in user_ids {
                delete_member(tx, group, user)?;
            }
        }
        GroupChange::BlockListChanged { added, .. } => {
            for user in added {
                delete_member(tx, group, user)?;
            }
        }
        GroupChange::AdminAdded { user_id } => {
            edit_member(tx, group, user_id, |m| m.role = GroupRole::Admin)?;
        }
        GroupChange::AdminRemoved { user_id } => {
            edit_member(tx, group, user_id, |m| m.role = GroupRole::Member)?;
        }
        GroupChange::OwnerChanged { from, to } => {
            edit_member(tx, group, from, |m| m.role = GroupRole::Admin)?;
            edit_member(tx, group, to, |m| m.role = GroupRole::Owner)?;
        }
        GroupChange::MuteChanged { user_ids, until } => {
            for user in user_ids {
                edit_member(tx, group, user, |m| m.muted_until = *until)?;
            }
        }
        GroupChange::AllowListChanged { added, removed } => {
            for user in added {
                edit_member(tx, group, user, |m| m.allowed_when_all_muted = true)?;
            }
            for user in removed {
                edit_member(tx, group, user, |m| m.allowed_when_all_muted = false)?;
            }
        }
        GroupChange::MemberInfoChanged { member } => save_member(tx, group, member)?,
        _ => {}
    }
    Ok(())
}

/// Applies a change to the cached info, one version after it. `false`: the change cannot be
/// applied exactly (the number of members it removed is unknown).
fn apply_to_info(info: &mut GroupInfo, change: &GroupChange) -> bool {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    match change {
        GroupChange::AnnouncementChanged { announcement } => {
            info.announcement.clone_from(announcement);
        }
        GroupChange::MembersJoined { members } => {
            info.member_count = info.member_count.saturating_add(count(members.len()));
        }
        GroupChange::MemberLeft { .. } => {
            info.member_count = info.member_count.saturating_sub(1);
        }
        GroupChange::MembersKicked { user_ids, .. } => {
            info.member_count = info.member_count.saturating_sub(count(user_ids.len()));
        }
        GroupChange::OwnerChanged { to, .. } => info.owner = to.clone(),
        GroupChange::AllMutedChanged { all_muted } => info.all_muted = *all_muted,
        GroupChange::BlockListChanged { added, .. } => return added.is_empty(),
        _ => {}
    }
    true
}

impl Db {
    /// The cached groups, by id.
    pub(crate) fn cached_groups(&self) -> Result<Vec<GroupInfo>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT info FROM groups ORDER BY group_id")?;
        let rows = stmt.query_map([], |row| json_col(row, 0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One cached group.
    pub(crate) fn cached_group(&self, id: &GroupId) -> Result<Option<GroupInfo>> {
        load_group(&self.conn, id)
    }

    /// The cached members of a group, by user id.
    pub(crate) fn cached_members(&self, id: &GroupId) -> Result<Vec<GroupMember>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT member FROM group_members WHERE group_id = ?1 ORDER BY user_id",
        )?;
        let rows = stmt.query_map([id.as_str()], |row| json_col(row, 0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The cached groups' ids and versions.
    pub(crate) fn group_versions(&self) -> Result<Vec<(GroupId, u64)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT group_id, version FROM groups")?;
        let rows = stmt.query_map([], |row| {
            let id: String = row.get(0)?;
            let id = GroupId::new(id).map_err(|e| super::conversion_error(0, e))?;
            Ok((id, from_sql_u64(row.get(1)?)))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Stores groups this user belongs to (answers to `group_create`, `group_update`,
    /// `group_transfer`, `group_joined` …), each unless a newer copy is cached.
    pub(crate) fn put_groups(&mut self, groups: &[GroupInfo]) -> Result<()> {
        let tx = self.tx()?;
        for info in groups {
            put_group_tx(&tx, info, true, Gap::OneAhead)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Stores the joined groups as read after a (re)connect: the events of whatever changed
    /// since the cached copies were missed, so those groups' member rows are forgotten.
    pub(crate) fn resync_groups(&mut self, groups: &[GroupInfo]) -> Result<()> {
        let tx = self.tx()?;
        for info in groups {
            put_group_tx(&tx, info, true, Gap::Missed)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Refreshes groups that are cached already (answers to `group_info` and
    /// `group_directory`, which also list groups the user is not in).
    pub(crate) fn refresh_groups(&mut self, groups: &[GroupInfo]) -> Result<()> {
        let tx = self.tx()?;
        for info in groups {
            put_group_tx(&tx, info, false, Gap::OneAhead)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets a group and its members (left, kicked, destroyed).
    pub(crate) fn remove_group(&mut self, id: &GroupId) -> Result<()> {
        let tx = self.tx()?;
        delete_group(&tx, id)?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets a group if it is still at `version` (nothing newer arrived since it was read).
    pub(crate) fn remove_group_at(&mut self, id: &GroupId, version: u64) -> Result<()> {
        let tx = self.tx()?;
        if load_group(&tx, id)?.is_some_and(|g| g.version == version) {
            delete_group(&tx, id)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Stores fetched members of a cached group (answers to `group_members`,
    /// `group_members_info`, `group_set_member`). Members of a group that is not cached are
    /// not kept.
    pub(crate) fn put_members(&mut self, id: &GroupId, members: &[GroupMember]) -> Result<()> {
        let tx = self.tx()?;
        if load_group(&tx, id)?.is_some() {
            for member in members {
                save_member(&tx, id, member)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records whether a member receives the group's messages, on their cached row if any.
    pub(crate) fn set_member_receive(
        &mut self,
        id: &GroupId,
        user: &UserId,
        receive: bool,
    ) -> Result<()> {
        let tx = self.tx()?;
        edit_member(&tx, id, user, |m| m.receive_messages = receive)?;
        tx.commit()?;
        Ok(())
    }

    /// Applies the effect of a successful request on member rows (kick, set role).
    pub(crate) fn apply_member_change(&mut self, id: &GroupId, change: &GroupChange) -> Result<()> {
        let tx = self.tx()?;
        apply_to_members(&tx, id, change)?;
        tx.commit()?;
        Ok(())
    }

    /// Applies a `group` event to the cache.
    pub(crate) fn apply_group_event(&mut self, event: &GroupEvent) -> Result<GroupApply> {
        let me = self.me.clone();
        let id = &event.group_id;
        let tx = self.tx()?;
        let outcome = match &event.change {
            GroupChange::Created { group } | GroupChange::InfoChanged { group } => {
                // Sent to members only, and complete: store it whether cached or not.
                put_group_tx(&tx, group, true, Gap::OneAhead)?;
                GroupApply::Done
            }
            GroupChange::Destroyed => {
                delete_group(&tx, id)?;
                GroupApply::Done
            }
            GroupChange::MemberLeft { user_id } if *user_id == me => {
                delete_group(&tx, id)?;
                GroupApply::Done
            }
            GroupChange::MembersKicked { user_ids, .. } if user_ids.contains(&me) => {
                delete_group(&tx, id)?;
                GroupApply::Done
            }
            GroupChange::BlockListChanged { added, .. } if added.contains(&me) => {
                delete_group(&tx, id)?;
                GroupApply::Done
            }
            // Applications and invitations change nothing the cache holds (an accepted one is
            // followed by `members_joined`).
            GroupChange::ApplicationReceived { .. }
            | GroupChange::InvitationReceived { .. }
            | GroupChange::ApplicationHandled { .. } => GroupApply::Done,
            change => match load_group(&tx, id)? {
                None => match change {
                    GroupChange::MembersJoined { members }
                        if members.iter().any(|m| m.user_id == me) =>
                    {
                        GroupApply::Refetch
                    }
                    // Not a group this device holds: nothing to keep up to date.
                    _ => GroupApply::Done,
                },
                Some(mut info) => {
                    if event.version < info.version {
                        // Older than the cached info, which already includes it; whether the
                        // member rows do cannot be told.
                        if touches_members(change) {
                            forget_members(&tx, id)?;
                        }
                        GroupApply::Done
                    } else if event.version == info.version {
                        // The cached info came from the answer to this very change (or from
                        // a sibling event of it, like one `admin_added` per user).
                        apply_to_members(&tx, id, change)?;
                        GroupApply::Done
                    } else if event.version == info.version + 1 && apply_to_info(&mut info, change)
                    {
                        info.version = event.version;
                        info.updated_at = info.updated_at.max(event.time);
                        save_group(&tx, &info)?;
                        apply_to_members(&tx, id, change)?;
                        GroupApply::Done
                    } else {
                        // Changes were missed: the member rows cannot be trusted any more and
                        // the info must be read again.
                        forget_members(&tx, id)?;
                        GroupApply::Refetch
                    }
                }
            },
        };
        tx.commit()?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use magpie_proto::group::GroupOptions;

    fn user(s: &str) -> UserId {
        UserId::new(s).expect("user")
    }

    fn gid(s: &str) -> GroupId {
        GroupId::new(s).expect("group")
    }

    fn info(id: &str, version: u64, members: u32) -> GroupInfo {
        GroupInfo {
            group_id: gid(id),
            name: format!("group {id}"),
            avatar_url: None,
            introduction: None,
            announcement: None,
            ext: None,
            owner: user("amy"),
            options: GroupOptions::default(),
            all_muted: false,
            member_count: members,
            version,
            created_at: 1,
            updated_at: 1,
        }
    }

    fn member(id: &str, role: GroupRole) -> GroupMember {
        GroupMember {
            user_id: user(id),
            role,
            joined_at: 1,
            nickname: None,
            attributes: serde_json::Map::new(),
            muted_until: None,
            allowed_when_all_muted: false,
            visible_from_seq: 1,
            receive_messages: true,
        }
    }

    fn event(group: &str, version: u64, change: GroupChange) -> GroupEvent {
        GroupEvent {
            group_id: gid(group),
            version,
            actor: None,
            time: 100,
            change,
        }
    }

    fn db() -> Db {
        Db::open_in_memory(user("amy")).expect("db")
    }

    fn member_ids(db: &Db, group: &str) -> Vec<String> {
        db.cached_members(&gid(group))
            .expect("members")
            .into_iter()
            .map(|m| m.user_id.as_str().to_owned())
            .collect()
    }

    #[test]
    fn events_in_order_update_info_and_members() {
        let mut db = db();
        let created = event(
            "g",
            1,
            GroupChange::Created {
                group: info("g", 1, 2),
            },
        );
        assert_eq!(
            db.apply_group_event(&created).expect("apply"),
            GroupApply::Done
        );
        db.put_members(
            &gid("g"),
            &[
                member("amy", GroupRole::Owner),
                member("bob", GroupRole::Member),
            ],
        )
        .expect("members");

        let joined = GroupChange::MembersJoined {
            members: vec![member("cat", GroupRole::Member)],
        };
        db.apply_group_event(&event("g", 2, joined)).expect("apply");
        let mute = GroupChange::MuteChanged {
            user_ids: vec![user("bob")],
            until: Some(500),
        };
        db.apply_group_event(&event("g", 3, mute)).expect("apply");
        let admin = GroupChange::AdminAdded {
            user_id: user("cat"),
        };
        db.apply_group_event(&event("g", 4, admin)).expect("apply");
        // A sibling event of the same change carries the same version.
        let admin = GroupChange::AdminAdded {
            user_id: user("bob"),
        };
        db.apply_group_event(&event("g", 4, admin)).expect("apply");
        let left = GroupChange::MemberLeft {
            user_id: user("cat"),
        };
        db.apply_group_event(&event("g", 5, left)).expect("apply");

        let cached = db.cached_group(&gid("g")).expect("read").expect("cached");
        assert_eq!((cached.version, cached.member_count), (5, 2));
        let members = db.cached_members(&gid("g")).expect("members");
        assert_eq!(member_ids(&db, "g"), ["amy", "bob"]);
        assert_eq!(members[1].muted_until, Some(500));
        assert_eq!(members[1].role, GroupRole::Admin);
    }

    #[test]
    fn a_version_gap_drops_members_and_asks_for_a_refetch() {
        let mut db = db();
        db.put_groups(&[info("g", 3, 2)]).expect("put");
        db.put_members(&gid("g"), &[member("amy", GroupRole::Owner)])
            .expect("members");
        let left = GroupChange::MemberLeft {
            user_id: user("bob"),
        };
        assert_eq!(
            db.apply_group_event(&event("g", 5, left)).expect("apply"),
            GroupApply::Refetch
        );
        assert!(member_ids(&db, "g").is_empty());
        assert_eq!(
            db.cached_group(&gid("g")).expect("read").map(|g| g.version),
            Some(3),
            "the info waits for the refetch"
        );
        // An older copy never replaces a newer one.
        db.put_groups(&[info("g", 7, 1)]).expect("put");
        db.put_groups(&[info("g", 6, 9)]).expect("put");
        let cached = db.cached_group(&gid("g")).expect("read").expect("cached");
        assert_eq!((cached.version, cached.member_count), (7, 1));
    }

    #[test]
    fn a_resync_drops_the_members_of_every_group_that_moved() {
        let mut db = db();
        db.put_groups(&[info("a", 3, 2), info("b", 3, 2)])
            .expect("put");
        for group in ["a", "b"] {
            db.put_members(&gid(group), &[member("amy", GroupRole::Owner)])
                .expect("members");
        }
        // One version ahead on the live connection: the event fills it in.
        db.put_groups(&[info("a", 4, 2)]).expect("put");
        assert_eq!(member_ids(&db, "a"), ["amy"]);
        // After a reconnect nothing will.
        db.resync_groups(&[info("a", 5, 1), info("b", 3, 2)])
            .expect("resync");
        assert!(member_ids(&db, "a").is_empty());
        assert_eq!(member_ids(&db, "b"), ["amy"], "unchanged");
    }

    #[test]
    fn leaving_kicks_and_destruction_forget_the_group() {
        let mut db = db();
        db.put_groups(&[info("a", 1, 2), info("b", 1, 2), info("c", 1, 2)])
            .expect("put");
        db.put_members(&gid("a"), &[member("amy", GroupRole::Member)])
            .expect("members");
        let left = GroupChange::MemberLeft {
            user_id: user("amy"),
        };
        db.apply_group_event(&event("a", 2, left)).expect("apply");
        let kicked = GroupChange::MembersKicked {
            user_ids: vec![user("amy")],
            banned_until: None,
        };
        db.apply_group_event(&event("b", 2, kicked)).expect("apply");
        db.apply_group_event(&event("c", 2, GroupChange::Destroyed))
            .expect("apply");
        assert!(db.cached_groups().expect("groups").is_empty());
        assert!(member_ids(&db, "a").is_empty());
    }

    #[test]
    fn events_for_unknown_groups_are_dropped_unless_this_user_joined() {
        let mut db = db();
        let left = GroupChange::MemberLeft {
            user_id: user("bob"),
        };
        assert_eq!(
            db.apply_group_event(&event("x", 4, left)).expect("apply"),
            GroupApply::Done
        );
        let joined = GroupChange::MembersJoined {
            members: vec![member("amy", GroupRole::Member)],
        };
        assert_eq!(
            db.apply_group_event(&event("x", 5, joined)).expect("apply"),
            GroupApply::Refetch
        );
        assert!(db.cached_groups().expect("groups").is_empty());
        // Answers about groups the user is not in do not enter the cache.
        db.refresh_groups(&[info("x", 5, 3)]).expect("refresh");
        assert!(db.cached_groups().expect("groups").is_empty());
        db.put_members(&gid("x"), &[member("bob", GroupRole::Member)])
            .expect("members");
        assert!(member_ids(&db, "x").is_empty());
    }

    #[test]
    fn the_group_cache_persists_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = super::super::db_path(dir.path(), &user("amy"));
        {
            let mut db = Db::open(&path, user("amy")).expect("open");
            db.put_groups(&[info("g", 1, 2)]).expect("put");
            db.put_members(&gid("g"), &[member("bob", GroupRole::Member)])
                .expect("members");
        }
        let db = Db::open(&path, user("amy")).expect("reopen");
        assert_eq!(db.cached_groups().expect("groups"), vec![info("g", 1, 2)]);
        assert_eq!(member_ids(&db, "g"), ["bob"]);
    }
}
