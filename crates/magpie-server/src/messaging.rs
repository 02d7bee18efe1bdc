//! Sending, history, sync and read state: the message domain.
//!
//! Owns the rules of a send (validation, limits, dedupe through the store, delivery after
//! commit) and of reading conversations, one-to-one and group alike; what is particular to
//! groups (who may post, fan-out, read receipts) is `group_messages`'. It must not know about
//! sockets: the gateway and the REST API both call it.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use magpie_proto::frame::{
    GetMessagesRequest, MarkReadRequest, MessagesPage, ReadState, SendRequest, SendResponse,
    SyncRequest, SyncResponse,
};
use magpie_proto::message::{Peer, validate_client_msg_id};
use magpie_proto::{
    ConversationId, ConversationState, ErrorCode, Event, GroupId, Message, MessageContent,
    MessageId, ServerFrame, UserId,
};
use magpie_store::{Anchor, Appended, Appending, MessageQuery, NewMessage, OnCommit};

use crate::app::App;
use crate::clock::now_ms;
use crate::cluster::Cluster;
use crate::encoded::json_len;
use crate::error::{Error, Result};
use crate::group_messages::{SendOrder, check_mentions, fan_out};
use crate::metrics::Metrics;
use crate::sessions::{SessionId, SharedFrame};

/// Who is acting: a user, and the session it came through (which does not get its own echo).
#[derive(Clone, Debug)]
pub struct Origin {
    /// The acting user.
    pub user: UserId,
    /// The session, if the request came over a WebSocket.
    pub session: Option<SessionId>,
    /// The session's line of group sends, which keeps them in the order it issued them.
    pub(crate) send_order: Option<SendOrder>,
}

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;
const DEFAULT_SYNC_PAGE: u32 = 100;
const MAX_SYNC_PAGE: u32 = 500;

/// A request's page size: `default` when absent, `bad_request` outside 1..=`max`.
pub(crate) fn page_limit(requested: Option<u32>, default: u32, max: u32) -> Result<u32> {
    match requested {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(Error::bad_request(format!(
            "limit must be between 1 and {max}, got {n}"
        ))),
    }
}

/// Delivers a one-to-one message to its recipient and to the sender's other devices, on every
/// node.
fn deliver_message(
    cluster: &Cluster,
    metrics: &Metrics,
    to: &UserId,
    message: &Message,
    origin: Option<SessionId>,
) {
    let frame = SharedFrame::new(ServerFrame::Event(Event::Message(message.clone())));
    let delivered =
        cluster.deliver(to, &frame, None) + cluster.deliver(&message.from, &frame, origin);
    Metrics::add(&metrics.deliveries, delivered as u64);
}

impl App {
    /// Stores and delivers a message (or, for a command, only delivers it).
    ///
    /// Not an `async fn` on purpose: validation and the store's queueing happen during this
    /// call, so sends that one connection issues back to back get their seqs in the order it
    /// issued them, whatever order their futures are polled in later.
    pub fn send_message(
        self: &Arc<Self>,
        origin: &Origin,
        request: SendRequest,
    ) -> BoxFuture<'static, Result<SendResponse>> {
        let message = match self.checked_message(origin, request) {
            Ok(message) => message,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let to = match &message.to {
            Peer::User(to) => to.clone(),
            Peer::Group(group) => {
                let group = group.clone();
                return self.send_group_message(origin, group, message);
            }
        };
        if !message.content.is_stored() {
            let (app, from_session) = (self.clone(), origin.session);
            return Box::pin(async move { app.relay_command(&to, message, from_session).await });
        }

        let (cluster, metrics, from_session) =
            (self.cluster.clone(), self.metrics.clone(), origin.session);
        let recipient = to.clone();
        // Delivery runs in the store's commit order, so one conversation's messages reach
        // each device in seq order.
        let on_commit: OnCommit = Box::new(move |appended: &Appended| {
            if !appended.duplicate {
                deliver_message(
                    &cluster,
                    &metrics,
                    &recipient,
                    &appended.message,
                    from_session,
                );
            }
        });
        let participants = vec![message.from.clone(), to];
        let appending = self.store.append_message(
            NewMessage {
                message,
                participants,
                mentioned: Vec::new(),
            },
            Some(on_commit),
        );
        self.answer_send(appending)
    }

    /// Counts a stored send and answers it.
    fn answer_send(&self, appending: Appending) -> BoxFuture<'static, Result<SendResponse>> {
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let appended = appending.await?;
            let counter = if appended.duplicate {
                &metrics.messages_duplicate
            } else {
                &metrics.messages_stored
            };
            Metrics::add(counter, 1);
            Ok(SendResponse {
                message: appended.message,
                duplicate: appended.duplicate,
            })
        })
    }

    /// Sends to a group: checks the sender against the group's roster, then stores the message
    /// once and fans it out to the members after commit (ADR 0007). The roster read happens
    /// before the append is queued, so the connection's group sends wait for each other's turn
    /// to keep their issue order.
    fn send_group_message(
        self: &Arc<Self>,
        origin: &Origin,
        group: GroupId,
        message: Message,
    ) -> BoxFuture<'static, Result<SendResponse>> {
        let (wait, done) = SendOrder::turn(origin.send_order.as_ref());
        let (app, from_session) = (self.clone(), origin.session);
        Box::pin(async move {
            if let Some(previous) = wait {
                // An error only means the previous send is gone (its connection closed).
                let _ = previous.await;
            }
            // A refusal drops `done` on return: the next send's turn comes either way.
            let checked = app.check_group_send(&group, message).await?;
            if !checked.new.message.content.is_stored() {
                drop(done);
                fan_out(
                    &app.cluster,
                    &app.metrics,
                    &checked.roster,
                    &checked.new.message,
                    from_session,
                );
                Metrics::add(&app.metrics.commands, 1);
                return Ok(SendResponse {
                    message: checked.new.message,
                    duplicate: false,
                });
            }
            let (fan_outs, roster) = (app.fan_outs.clone(), checked.roster);
            let on_commit: OnCommit = Box::new(move |appended: &Appended| {
                if !appended.duplicate {
                    fan_outs.push(roster, appended.message.clone(), from_session);
                }
            });
            let appending = app.store.append_message(checked.new, Some(on_commit));
            // Queued: the connection's next group send may go.
            drop(done);
            app.answer_send(appending).await
        })
    }

    /// Validates a send and builds the message with its id and server time.
    fn checked_message(&self, origin: &Origin, request: SendRequest) -> Result<Message> {
        if request.to == Peer::User(origin.user.clone()) {
            return Err(Error::bad_request("cannot send a message to yourself"));
        }
        validate_client_msg_id(&request.client_msg_id)?;
        request.content.validate()?;
        if matches!(request.content, MessageContent::GroupNotice(_)) {
            return Err(Error::bad_request(
                "group_notice messages are written by the server only",
            ));
        }
        check_mentions(
            request.mentions.as_ref(),
            matches!(request.to, Peer::Group(_)),
        )?;
        let size = json_len(&request.content)
            + request.ext.as_ref().map_or(0, json_len)
            + request.mentions.as_ref().map_or(0, json_len);
        let max = self.config.limits.max_message_bytes;
        if size > max {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!("message is {size} bytes encoded; the limit is {max}"),
            ));
        }
        let now = now_ms();
        Ok(Message {
            id: self.next_message_id(now)?,
            conversation_id: request.to.conversation_id(&origin.user),
            seq: 0,
            from: origin.user.clone(),
            to: request.to,
            client_msg_id: request.client_msg_id,
            content: request.content,
            ext: request.ext,
            mentions: request.mentions.filter(|m| !m.is_empty()),
            server_time: now,
        })
    }

    /// A new message id, unless this node's id lease may have lapsed (another node could then
    /// hold the same node bits).
    pub(crate) fn next_message_id(&self, now: magpie_proto::Millis) -> Result<MessageId> {
        if !self.lease.is_valid() {
            return Err(Error::new(
                ErrorCode::Unavailable,
                "this node cannot reach the store to renew its node id; try again or another node",
            ));
        }
        Ok(self.ids.next(now))
    }

    /// Delivers a transient command to the devices online now; nothing is stored.
    async fn relay_command(
        &self,
        to: &UserId,
        message: Message,
        from_session: Option<SessionId>,
    ) -> Result<SendResponse> {
        self.user_record(to).await?;
        deliver_message(&self.cluster, &self.metrics, to, &message, from_session);
        Metrics::add(&self.metrics.commands, 1);
        Ok(SendResponse {
            message,
            duplicate: false,
        })
    }

    /// A page of history of a conversation `user` takes part in.
    pub async fn get_messages(
        &self,
        user: &UserId,
        request: GetMessagesRequest,
    ) -> Result<MessagesPage> {
        let min_seq = self
            .first_visible_seq(user, &request.conversation_id)
            .await?;
        let limit = page_limit(request.limit, DEFAULT_PAGE, MAX_PAGE)?;
        let anchor = match (request.seq, request.time) {
            (Some(_), Some(_)) => {
                return Err(Error::bad_request("give at most one of `seq` and `time`"));
            }
            (Some(seq), None) => Anchor::Seq(seq),
            (None, Some(time)) => Anchor::Time(time),
            (None, None) => Anchor::None,
        };
        let page = self
            .store
            .get_messages(MessageQuery {
                conversation_id: request.conversation_id,
                direction: request.direction,
                anchor,
                limit,
                min_seq,
            })
            .await?;
        Ok(MessagesPage {
            messages: page.messages,
            has_more: page.has_more,
        })
    }

    /// `user`'s conversations changed since a version, and their group conversations with
    /// activity since the group cursor. A group conversation found both ways is listed once,
    /// as the group walk (read second, so never older) found it.
    pub async fn sync(&self, user: &UserId, request: SyncRequest) -> Result<SyncResponse> {
        let limit = page_limit(request.limit, DEFAULT_SYNC_PAGE, MAX_SYNC_PAGE)?;
        let own = self
            .store
            .changed_conversations(user, request.since, limit)
            .await?;
        let groups = self
            .store
            .changed_group_conversations(user, request.groups_since, limit)
            .await?;
        let mut conversations: Vec<ConversationState> = own
            .conversations
            .into_iter()
            .filter(|c| {
                !groups
                    .conversations
                    .iter()
                    .any(|g| g.conversation_id == c.conversation_id)
            })
            .collect();
        conversations.extend(groups.conversations);
        Ok(SyncResponse {
            conversations,
            version: own.version,
            groups_version: groups.version,
            has_more: own.has_more || groups.has_more,
        })
    }

    /// The first seq of a conversation `user` may read: 1 in a one-to-one conversation they
    /// take part in, their join point in a group they belong to; an error otherwise.
    async fn first_visible_seq(&self, user: &UserId, conversation: &ConversationId) -> Result<u64> {
        match conversation.group_id() {
            Some(group) => {
                let roster = self.roster(&group).await?;
                Ok(roster.member(&group, user)?.visible_from_seq)
            }
            None => {
                check_participant(user, conversation)?;
                Ok(1)
            }
        }
    }

    /// Marks a conversation read and tells the user's other devices.
    pub async fn mark_read(
        self: &Arc<Self>,
        origin: &Origin,
        request: MarkReadRequest,
    ) -> Result<ConversationState> {
        self.first_visible_seq(&origin.user, &request.conversation_id)
            .await?;
        let group = request.conversation_id.group_id();
        let outcome = self
            .store
            .mark_read(
                &origin.user,
                &request.conversation_id,
                request.seq,
                now_ms(),
            )
            .await?;
        if outcome.changed {
            let state = &outcome.state;
            let frame = SharedFrame::new(ServerFrame::Event(Event::ConversationRead(ReadState {
                conversation_id: state.conversation_id.clone(),
                read_seq: state.read_seq,
                unread_count: state.unread_count,
                version: state.version,
            })));
            let delivered = self.cluster.deliver(&origin.user, &frame, origin.session);
            Metrics::add(&self.metrics.deliveries, delivered as u64);
            if let Some(group) = group {
                let (app, reader) = (self.clone(), origin.user.clone());
                let (before, read_seq) = (outcome.previous_read_seq, state.read_seq);
                // The reader is answered now; the senders hear about it right after.
                tokio::spawn(async move {
                    if let Err(e) = app
                        .group_read_moved(&group, &reader, before, read_seq)
                        .await
                    {
                        tracing::warn!(%group, error = %e, "could not send group read counts");
                    }
                });
            }
        }
        Ok(outcome.state)
    }
}

fn check_participant(user: &UserId, conversation: &ConversationId) -> Result<()> {
    if conversation.c2c_peer(user).is_none() {
        return Err(Error::new(
            ErrorCode::ConversationNotFound,
            format!("{user} has no conversation {conversation}"),
        ));
    }
    Ok(())
}
