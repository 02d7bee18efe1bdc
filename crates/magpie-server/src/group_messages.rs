//! Group messaging: who may post to a group, the per-node roster that answers it and drives
//! fan-out, the notices the server writes into group timelines, and group read receipts.
//!
//! A group message is stored once (ADR 0007): `messaging` owns validation and the append; this
//! module decides whether the sender may post, which members mentioned by id get a marker, and
//! who receives the message after commit. Membership changes belong to `groups`; this module
//! only reads them, through a roster cached per group and reloaded whenever the group's version
//! moves. It must not know about sockets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use magpie_proto::group::{
    GroupId, GroupMember, GroupReadEvent, GroupRole, MessageReadCount, ReadReceipts,
    ReadReceiptsRequest,
};
use magpie_proto::message::{GroupNoticeBody, GroupNoticeKind, MAX_MENTIONS, Mentions};
use magpie_proto::{
    ConversationId, ErrorCode, Event, Message, MessageContent, Millis, ServerFrame, UserId,
};
use magpie_store::{Anchor, MessageQuery, NewMessage};
use tokio::sync::{mpsc, oneshot};

use crate::app::App;
use crate::clock::now_ms;
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::sessions::{SessionId, SharedFrame};

/// Groups whose roster a node keeps before it starts over (rosters reload on demand).
const ROSTER_CACHE_GROUPS: usize = 10_000;
/// Members, summed over the cached rosters, before the cache starts over: about 100 bytes each,
/// so the cache stays near 100 MiB however large the groups are.
const ROSTER_CACHE_MEMBERS: usize = 1_000_000;
/// Most users a notice lists by id.
const NOTICE_USERS: usize = 100;
/// Most messages one `group_read` event reports.
const READ_EVENT_MESSAGES: u32 = 100;
/// How often a group too large for read receipt lists announces read counts.
const READ_COUNT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// One member, as sending and fan-out need them.
#[derive(Clone, Debug)]
pub(crate) struct RosterEntry {
    pub(crate) role: GroupRole,
    muted_until: Option<Millis>,
    allowed_when_all_muted: bool,
    pub(crate) visible_from_seq: u64,
}

/// A group's members at one version of the group.
#[derive(Debug)]
pub(crate) struct Roster {
    version: u64,
    all_muted: bool,
    members: HashMap<UserId, RosterEntry>,
    /// The members who receive messages (not those who blocked the group's messages).
    receivers: Vec<UserId>,
}

impl Roster {
    fn new(version: u64, all_muted: bool, members: Vec<GroupMember>) -> Self {
        let receivers = members
            .iter()
            .filter(|m| m.receive_messages)
            .map(|m| m.user_id.clone())
            .collect();
        let members = members
            .into_iter()
            .map(|m| {
                let entry = RosterEntry {
                    role: m.role,
                    muted_until: m.muted_until,
                    allowed_when_all_muted: m.allowed_when_all_muted,
                    visible_from_seq: m.visible_from_seq,
                };
                (m.user_id, entry)
            })
            .collect();
        Self {
            version,
            all_muted,
            members,
            receivers,
        }
    }

    /// The member `user`, or `not_group_member`.
    pub(crate) fn member(&self, group: &GroupId, user: &UserId) -> Result<&RosterEntry> {
        self.members.get(user).ok_or_else(|| {
            Error::new(
                ErrorCode::NotGroupMember,
                format!("{user} is not a member of group {group}"),
            )
        })
    }

    /// Whether `user` may post now: a member, not muted, and not silenced by "mute all"
    /// (owners, admins and the allow list still speak).
    fn check_sender(&self, group: &GroupId, user: &UserId, now: Millis) -> Result<()> {
        let member = self.member(group, user)?;
        if member.role >= GroupRole::Admin {
            return Ok(());
        }
        if member.muted_until.is_some_and(|until| until > now) {
            return Err(Error::new(
                ErrorCode::Muted,
                format!("{user} is muted in group {group}"),
            ));
        }
        if self.all_muted && !member.allowed_when_all_muted {
            return Err(Error::new(
                ErrorCode::Muted,
                format!("everyone is muted in group {group}"),
            ));
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.members.len()
    }

    /// Every member's id.
    pub(crate) fn member_ids(&self) -> Vec<UserId> {
        self.members.keys().cloned().collect()
    }
}

/// Read ranges of large groups waiting for their next read-count announcement.
pub(crate) type ReadCountsDue = Mutex<HashMap<GroupId, (u64, u64)>>;

/// The rosters this node has read, by group.
#[derive(Debug, Default)]
pub(crate) struct Rosters {
    cache: Mutex<RosterCache>,
}

#[derive(Debug, Default)]
struct RosterCache {
    by_group: HashMap<GroupId, Arc<Roster>>,
    /// Members summed over `by_group`.
    members: usize,
}

impl Rosters {
    fn get(&self, group: &GroupId, version: u64) -> Option<Arc<Roster>> {
        let cache = self.cache.lock().ok()?;
        cache
            .by_group
            .get(group)
            .filter(|r| r.version == version)
            .cloned()
    }

    fn put(&self, group: GroupId, roster: Arc<Roster>) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.by_group.len() >= ROSTER_CACHE_GROUPS
                || cache.members + roster.len() > ROSTER_CACHE_MEMBERS
            {
                *cache = RosterCache::default();
            }
            cache.members += roster.len();
            if let Some(old) = cache.by_group.insert(group, roster) {
                cache.members -= old.len();
            }
        }
    }
}

/// Keeps one connection's group sends in the order it issued them.
///
/// A group send checks the roster (a read) before it queues its append, so sends issued back to
/// back could otherwise queue in another order. Each send waits until the one issued before it
/// has queued.
#[derive(Clone, Debug, Default)]
pub(crate) struct SendOrder(Arc<Mutex<Option<oneshot::Receiver<()>>>>);

impl SendOrder {
    /// Takes the next place in line: what to wait for, and what to signal once queued.
    fn next(&self) -> (Option<oneshot::Receiver<()>>, oneshot::Sender<()>) {
        let (queued, next) = oneshot::channel();
        let previous = self.0.lock().ok().and_then(|mut slot| slot.replace(next));
        (previous, queued)
    }

    /// A send's turn in `order`, if it has one (sends from the REST API do not).
    pub(crate) fn turn(
        order: Option<&Self>,
    ) -> (Option<oneshot::Receiver<()>>, Option<oneshot::Sender<()>>) {
        match order.map(Self::next) {
            Some((wait, done)) => (wait, Some(done)),
            None => (None, None),
        }
    }
}

/// The checked parts of a group send, ready for the store.
pub(crate) struct GroupSend {
    pub(crate) new: NewMessage,
    pub(crate) roster: Arc<Roster>,
}

impl App {
    /// The group's roster at its current version (one primary-key read when cached).
    pub(crate) async fn roster(&self, group: &GroupId) -> Result<Arc<Roster>> {
        let record = self.group_record(group).await?;
        let version = record.info.version;
        if let Some(roster) = self.rosters.get(group, version) {
            return Ok(roster);
        }
        let members = self.all_members(group, None).await?;
        let roster = Arc::new(Roster::new(version, record.info.all_muted, members));
        self.rosters.put(group.clone(), roster.clone());
        Ok(roster)
    }

    /// Checks that the sender may post `message` to its group and works out its mentions.
    pub(crate) async fn check_group_send(
        &self,
        group: &GroupId,
        mut message: Message,
    ) -> Result<GroupSend> {
        let roster = self.roster(group).await?;
        roster.check_sender(group, &message.from, now_ms())?;
        let mut participants = vec![message.from.clone()];
        let mut mentioned = Vec::new();
        if let Some(mentions) = message.mentions.take() {
            // Only members can be mentioned; one who just left is dropped, not an error.
            let mut user_ids: Vec<UserId> = Vec::with_capacity(mentions.user_ids.len());
            for user in mentions.user_ids {
                if roster.members.contains_key(&user) && !user_ids.contains(&user) {
                    user_ids.push(user);
                }
            }
            for user in &user_ids {
                if *user != message.from {
                    participants.push(user.clone());
                    mentioned.push(user.clone());
                }
            }
            let mentions = Mentions {
                user_ids,
                all: mentions.all,
            };
            message.mentions = (!mentions.is_empty()).then_some(mentions);
        }
        Ok(GroupSend {
            new: NewMessage {
                message,
                participants,
                mentioned,
            },
            roster,
        })
    }

    /// Writes a notice into a group's timeline ("bob joined") and delivers it like a message.
    /// The change it reports is already committed, so a failure is logged, not returned.
    pub(crate) async fn post_notice(
        &self,
        group: &GroupId,
        by: &UserId,
        kind: GroupNoticeKind,
        users: &[UserId],
    ) {
        if let Err(e) = self.try_post_notice(group, by, kind, users).await {
            tracing::warn!(%group, error = %e, ?kind, "could not write a group notice");
        }
    }

    async fn try_post_notice(
        &self,
        group: &GroupId,
        by: &UserId,
        kind: GroupNoticeKind,
        users: &[UserId],
    ) -> Result<()> {
        let roster = self.roster(group).await?;
        let now = now_ms();
        let id = self.next_message_id(now)?;
        let listed: Vec<UserId> = users.iter().take(NOTICE_USERS).cloned().collect();
        let message = Message {
            id,
            conversation_id: ConversationId::group(group),
            seq: 0,
            from: by.clone(),
            to: magpie_proto::Peer::Group(group.clone()),
            client_msg_id: format!("notice-{id}"),
            content: MessageContent::GroupNotice(GroupNoticeBody {
                kind,
                user_count: (users.len() > listed.len()).then_some(users.len() as u32),
                user_ids: listed,
            }),
            ext: None,
            mentions: None,
            server_time: now,
        };
        let fan_outs = self.fan_outs.clone();
        let on_commit: magpie_store::OnCommit = Box::new(move |appended| {
            if !appended.duplicate {
                fan_outs.push(roster, appended.message.clone(), None);
            }
        });
        // Nobody's conversation row changes: members find the notice through the group's
        // activity stamp, like any group message.
        self.store
            .append_message(
                NewMessage {
                    message,
                    participants: Vec::new(),
                    mentioned: Vec::new(),
                },
                Some(on_commit),
            )
            .await?;
        Ok(())
    }

    /// `reader` read a group conversation from `from_seq` (exclusive) to `to_seq`: the senders
    /// of what they read hear the new read counts. In a group small enough for read receipts
    /// at once, naming the reader; in a larger one at most once per
    /// [`READ_COUNT_INTERVAL`] per group, for everyone who read meanwhile, because each
    /// announcement reads every member's position.
    pub(crate) async fn group_read_moved(
        self: &Arc<Self>,
        group: &GroupId,
        reader: &UserId,
        from_seq: u64,
        to_seq: u64,
    ) -> Result<()> {
        let roster = self.roster(group).await?;
        if roster.len() <= self.config.groups.read_receipt_members as usize {
            return self
                .announce_group_read(group, Some(reader), from_seq, to_seq)
                .await;
        }
        let first = {
            let Ok(mut pending) = self.read_counts_due.lock() else {
                return Ok(());
            };
            match pending.get_mut(group) {
                Some(range) => {
                    range.0 = range.0.min(from_seq);
                    range.1 = range.1.max(to_seq);
                    false
                }
                None => {
                    pending.insert(group.clone(), (from_seq, to_seq));
                    true
                }
            }
        };
        if first {
            tokio::time::sleep(READ_COUNT_INTERVAL).await;
            let range = self
                .read_counts_due
                .lock()
                .ok()
                .and_then(|mut pending| pending.remove(group));
            if let Some((from, to)) = range {
                self.announce_group_read(group, None, from, to).await?;
            }
        }
        Ok(())
    }

    /// Tells the senders of the messages in `(from_seq, to_seq]` (the newest
    /// [`READ_EVENT_MESSAGES`], the reader's own left out) their new read counts.
    async fn announce_group_read(
        &self,
        group: &GroupId,
        reader: Option<&UserId>,
        from_seq: u64,
        to_seq: u64,
    ) -> Result<()> {
        if to_seq <= from_seq {
            return Ok(());
        }
        let conversation = ConversationId::group(group);
        let page = self
            .store
            .get_messages(MessageQuery {
                conversation_id: conversation.clone(),
                direction: magpie_proto::frame::Direction::Backward,
                anchor: Anchor::Seq(to_seq + 1),
                limit: READ_EVENT_MESSAGES.min((to_seq - from_seq) as u32),
                min_seq: from_seq + 1,
            })
            .await?;
        let mut by_sender: HashMap<UserId, Vec<u64>> = HashMap::new();
        for message in page.messages.iter().filter(|m| Some(&m.from) != reader) {
            if matches!(message.content, MessageContent::GroupNotice(_)) {
                continue;
            }
            by_sender
                .entry(message.from.clone())
                .or_default()
                .push(message.seq);
        }
        if by_sender.is_empty() {
            return Ok(());
        }
        let positions = self.store.group_read_positions(group).await?;
        let mut delivered = 0;
        for (sender, seqs) in by_sender {
            let messages = seqs
                .iter()
                .map(|&seq| {
                    let (read_count, unread_count) = read_counts(&positions, &sender, seq);
                    MessageReadCount {
                        seq,
                        read_count,
                        unread_count,
                    }
                })
                .collect();
            let event = GroupReadEvent {
                conversation_id: conversation.clone(),
                reader: reader.cloned(),
                read_seq: to_seq,
                messages,
            };
            let frame = SharedFrame::new(ServerFrame::Event(Event::GroupRead(event)));
            delivered += self.cluster.deliver(&sender, &frame, None);
        }
        Metrics::add(&self.metrics.deliveries, delivered as u64);
        Ok(())
    }

    /// `group_read_receipts`: who has (not) read a group message, or only how many.
    pub async fn group_read_receipts(
        &self,
        user: &UserId,
        request: ReadReceiptsRequest,
    ) -> Result<ReadReceipts> {
        let group = request.conversation_id.group_id().ok_or_else(|| {
            Error::bad_request("read receipts are kept for group conversations only")
        })?;
        let limit = crate::messaging::page_limit(request.limit, 50, 200)?;
        let roster = self.roster(&group).await?;
        let member = roster.member(&group, user)?;
        let message = self
            .store
            .get_messages(MessageQuery {
                conversation_id: request.conversation_id.clone(),
                direction: magpie_proto::frame::Direction::Forward,
                anchor: Anchor::Seq(request.seq.saturating_sub(1)),
                limit: 1,
                min_seq: member.visible_from_seq,
            })
            .await?
            .messages
            .into_iter()
            .next()
            .filter(|m| m.seq == request.seq)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::NotFound,
                    format!("no message {} in {}", request.seq, request.conversation_id),
                )
            })?;
        let positions = self.store.group_read_positions(&group).await?;
        let (read_count, unread_count) = read_counts(&positions, &message.from, message.seq);
        let mut answer = ReadReceipts {
            seq: message.seq,
            read_count,
            unread_count,
            user_ids: None,
            next_after: None,
        };
        if roster.len() <= self.config.groups.read_receipt_members as usize {
            // Positions come ordered by user id: the page is the next `limit` that match.
            let mut page: Vec<UserId> = positions
                .iter()
                .filter(|(u, _)| *u != message.from)
                .filter(|(u, _)| request.after.as_ref().is_none_or(|after| u > after))
                .filter(|(_, read)| (*read >= message.seq) == request.read)
                .take(limit as usize + 1)
                .map(|(u, _)| u.clone())
                .collect();
            if page.len() > limit as usize {
                page.truncate(limit as usize);
                answer.next_after = page.last().cloned();
            }
            answer.user_ids = Some(page);
        }
        Ok(answer)
    }

    /// `group_set_receive`: the caller receives the group's messages or not. Only the caller's
    /// devices are told (`member_info_changed`): whether someone blocked a group is their own
    /// business. Other members' caches see the version move and re-read when they next care.
    pub async fn set_group_receive(
        &self,
        user: &UserId,
        group: &GroupId,
        receive: bool,
    ) -> Result<()> {
        let actor = crate::groups::Actor::User(user.clone());
        let (record, ()) = self
            .change_group(
                &actor,
                group,
                |standing, _| {
                    standing.require_member()?;
                    Ok((
                        magpie_store::GroupWrite::UpdateMembers {
                            user_ids: vec![user.clone()],
                            update: magpie_store::MemberUpdate {
                                receive_messages: Some(receive),
                                ..Default::default()
                            },
                        },
                        (),
                    ))
                },
                &[],
            )
            .await?;
        if let Some(member) = self
            .store
            .group_members_by_id(group, std::slice::from_ref(user))
            .await?
            .pop()
        {
            self.tell(
                std::slice::from_ref(user),
                group,
                record.info.version,
                &actor,
                magpie_proto::group::GroupChange::MemberInfoChanged { member },
            );
        }
        Ok(())
    }
}

/// Group fan-out, off the store's commit path. A group message reaches hundreds or thousands of
/// inboxes; done in the commit hook it would hold the store's writer (SQLite's single thread)
/// before its next batch. Hooks run in commit order and queue here; one task delivers in that
/// order, so every device still gets a group's messages in seq order.
#[derive(Debug)]
pub(crate) struct FanOutQueue {
    jobs: mpsc::UnboundedSender<FanOutJob>,
}

#[derive(Debug)]
struct FanOutJob {
    roster: Arc<Roster>,
    message: Message,
    origin: Option<SessionId>,
}

impl FanOutQueue {
    /// Starts the delivering task; it ends when the queue is dropped.
    pub(crate) fn start(cluster: Arc<Cluster>, metrics: Arc<Metrics>) -> Self {
        // Unbounded: a job is a message and a shared roster, queued at the store's commit rate,
        // and the task delivers without waiting on anything (full inboxes mark slow consumers).
        let (jobs, mut queued) = mpsc::unbounded_channel::<FanOutJob>();
        tokio::spawn(async move {
            while let Some(job) = queued.recv().await {
                fan_out(&cluster, &metrics, &job.roster, &job.message, job.origin);
            }
        });
        Self { jobs }
    }

    /// Queues a committed group message for delivery.
    pub(crate) fn push(&self, roster: Arc<Roster>, message: Message, origin: Option<SessionId>) {
        // Only fails once the server is stopping; devices catch up by sync.
        let _ = self.jobs.send(FanOutJob {
            roster,
            message,
            origin,
        });
    }
}

/// Delivers a group message to every receiving member's devices and, if the sender is a member,
/// to their devices but `origin`, on every node. One encoding per codec serves every recipient.
pub(crate) fn fan_out(
    cluster: &Cluster,
    metrics: &Metrics,
    roster: &Roster,
    message: &Message,
    origin: Option<SessionId>,
) {
    let frame = SharedFrame::new(ServerFrame::Event(Event::Message(message.clone())));
    let mut users: Vec<UserId> = roster
        .receivers
        .iter()
        .filter(|user| **user != message.from)
        .cloned()
        .collect();
    if roster.members.contains_key(&message.from) {
        users.push(message.from.clone());
    }
    // `origin` is a session of the sender's: the others never match it.
    let delivered = cluster.deliver_many(&users, &frame, origin);
    Metrics::add(&metrics.deliveries, delivered as u64);
}

/// Read and unread counts of message `seq` sent by `sender`, over every member but the sender.
fn read_counts(positions: &[(UserId, u64)], sender: &UserId, seq: u64) -> (u32, u32) {
    let (mut read, mut unread) = (0u32, 0u32);
    for (user, position) in positions {
        if user == sender {
            continue;
        }
        if *position >= seq {
            read += 1;
        } else {
            unread += 1;
        }
    }
    (read, unread)
}

/// Checks a send's mentions: group messages only, at most [`MAX_MENTIONS`] users.
pub(crate) fn check_mentions(mentions: Option<&Mentions>, group_message: bool) -> Result<()> {
    let Some(mentions) = mentions else {
        return Ok(());
    };
    if !group_message && !mentions.is_empty() {
        return Err(Error::bad_request("mentions are for group messages only"));
    }
    if mentions.user_ids.len() > MAX_MENTIONS {
        return Err(Error::bad_request(format!(
            "a message may mention at most {MAX_MENTIONS} users by id"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::new(s).expect("user id")
    }

    #[test]
    fn read_counts_leave_the_sender_out() {
        let positions = vec![(uid("a"), 5), (uid("b"), 3), (uid("c"), 7), (uid("d"), 0)];
        assert_eq!(read_counts(&positions, &uid("a"), 5), (1, 2));
        assert_eq!(read_counts(&positions, &uid("c"), 3), (2, 1));
    }

    #[test]
    fn send_order_hands_each_send_its_predecessor() {
        let order = SendOrder::default();
        let (first_wait, first_done) = order.next();
        assert!(first_wait.is_none());
        let (second_wait, _second_done) = order.next();
        let mut second_wait = second_wait.expect("a predecessor");
        assert!(second_wait.try_recv().is_err(), "must wait for the first");
        first_done.send(()).expect("signal");
        assert!(second_wait.try_recv().is_ok());
    }

    #[test]
    fn mentions_are_for_groups_and_bounded() {
        let some = Mentions {
            user_ids: vec![uid("a")],
            all: false,
        };
        assert!(check_mentions(Some(&some), true).is_ok());
        assert!(check_mentions(Some(&some), false).is_err());
        let many = Mentions {
            user_ids: (0..=MAX_MENTIONS).map(|i| uid(&format!("u{i}"))).collect(),
            all: false,
        };
        assert!(check_mentions(Some(&many), true).is_err());
    }

    fn member(
        user: &str,
        role: GroupRole,
        muted_until: Option<Millis>,
        allowed: bool,
    ) -> GroupMember {
        GroupMember {
            user_id: uid(user),
            role,
            joined_at: 0,
            nickname: None,
            attributes: serde_json::Map::new(),
            muted_until,
            allowed_when_all_muted: allowed,
            visible_from_seq: 1,
            receive_messages: user != "quiet",
        }
    }

    #[test]
    fn the_roster_cache_serves_one_version_and_counts_members_once() {
        let group = GroupId::new("g").expect("id");
        let rosters = Rosters::default();
        let members = || {
            vec![
                member("a", GroupRole::Owner, None, false),
                member("b", GroupRole::Member, None, false),
            ]
        };
        rosters.put(group.clone(), Arc::new(Roster::new(1, false, members())));
        rosters.put(group.clone(), Arc::new(Roster::new(2, false, members())));
        assert!(
            rosters.get(&group, 1).is_none(),
            "an old version is never served"
        );
        assert_eq!(rosters.get(&group, 2).map(|r| r.len()), Some(2));
        let cache = rosters.cache.lock().expect("lock");
        assert_eq!(
            cache.members, 2,
            "a replaced roster's members are not counted twice"
        );
    }

    #[test]
    fn the_roster_decides_who_may_post() {
        let group = GroupId::new("g").expect("id");
        let members = vec![
            member("owner", GroupRole::Owner, None, false),
            member("admin", GroupRole::Admin, Some(i64::MAX), false),
            member("muted", GroupRole::Member, Some(1_000), false),
            member("allowed", GroupRole::Member, None, true),
            member("plain", GroupRole::Member, None, false),
            member("quiet", GroupRole::Member, None, false),
        ];
        let open = Roster::new(1, false, members.clone());
        let code = |r: &Roster, user: &str, now| {
            r.check_sender(&group, &uid(user), now)
                .err()
                .map(|e| e.to_body().code)
        };
        assert_eq!(code(&open, "plain", 500), None);
        assert_eq!(code(&open, "muted", 500), Some(ErrorCode::Muted));
        assert_eq!(code(&open, "muted", 1_000), None, "the mute has run out");
        assert_eq!(code(&open, "admin", 500), None, "managers are never muted");
        assert_eq!(
            code(&open, "stranger", 500),
            Some(ErrorCode::NotGroupMember)
        );
        let all_muted = Roster::new(2, true, members);
        assert_eq!(code(&all_muted, "plain", 500), Some(ErrorCode::Muted));
        assert_eq!(code(&all_muted, "allowed", 500), None);
        assert_eq!(code(&all_muted, "owner", 500), None);
        assert!(!open.receivers.contains(&uid("quiet")));
        assert_eq!(open.receivers.len(), 5);
    }
}
