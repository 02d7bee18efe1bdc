//! Sending, history, sync and read state: the message domain.
//!
//! Owns the rules of a send (validation, limits, dedupe through the store, delivery after
//! commit) and of reading conversations. It must not know about sockets: the gateway and the
//! REST API both call it.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use magpie_proto::frame::{
    GetMessagesRequest, MarkReadRequest, MessagesPage, ReadState, SendRequest, SendResponse,
    SyncRequest, SyncResponse,
};
use magpie_proto::message::{Peer, validate_client_msg_id};
use magpie_proto::{
    ConversationId, ConversationState, ErrorCode, Event, Message, ServerFrame, UserId,
};
use magpie_store::{Anchor, Appended, MessageQuery, NewMessage, OnCommit};

use crate::app::App;
use crate::clock::now_ms;
use crate::cluster::Cluster;
use crate::encoded::json_len;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::sessions::{SessionId, SharedFrame};

/// Who is acting: a user, and the session it came through (which does not get its own echo).
#[derive(Clone, Debug)]
pub struct Origin {
    /// The acting user.
    pub user: UserId,
    /// The session, if the request came over a WebSocket.
    pub session: Option<SessionId>,
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

/// Delivers a stored message to its recipient and to the sender's other devices, on every node.
fn deliver_message(
    cluster: &Cluster,
    metrics: &Metrics,
    message: &Message,
    origin: Option<SessionId>,
) {
    let frame = SharedFrame::new(ServerFrame::Event(Event::Message(message.clone())));
    let Peer::User(to) = &message.to;
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
        if !message.content.is_stored() {
            let (app, from_session) = (self.clone(), origin.session);
            return Box::pin(async move { app.relay_command(message, from_session).await });
        }

        let (cluster, metrics, from_session) =
            (self.cluster.clone(), self.metrics.clone(), origin.session);
        // Delivery runs in the store's commit order, so one conversation's messages reach
        // each device in seq order.
        let on_commit: OnCommit = Box::new(move |appended: &Appended| {
            if !appended.duplicate {
                deliver_message(&cluster, &metrics, &appended.message, from_session);
            }
        });
        let Peer::User(to) = &message.to;
        let participants = vec![message.from.clone(), to.clone()];
        let appending = self.store.append_message(
            NewMessage {
                message,
                participants,
            },
            Some(on_commit),
        );
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

    /// Validates a send and builds the message with its id and server time.
    fn checked_message(&self, origin: &Origin, request: SendRequest) -> Result<Message> {
        let Peer::User(to) = &request.to;
        if *to == origin.user {
            return Err(Error::bad_request("cannot send a message to yourself"));
        }
        validate_client_msg_id(&request.client_msg_id)?;
        request.content.validate()?;
        let size = json_len(&request.content) + request.ext.as_ref().map_or(0, json_len);
        let max = self.config.limits.max_message_bytes;
        if size > max {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!("message is {size} bytes encoded; the limit is {max}"),
            ));
        }
        if !self.lease.is_valid() {
            return Err(Error::new(
                ErrorCode::Unavailable,
                "this node cannot reach the store to renew its node id; try again or another node",
            ));
        }
        let now = now_ms();
        Ok(Message {
            id: self.ids.next(now),
            conversation_id: ConversationId::c2c(&origin.user, to),
            seq: 0,
            from: origin.user.clone(),
            to: request.to,
            client_msg_id: request.client_msg_id,
            content: request.content,
            ext: request.ext,
            server_time: now,
        })
    }

    /// Delivers a transient command to the devices online now; nothing is stored.
    async fn relay_command(
        &self,
        message: Message,
        from_session: Option<SessionId>,
    ) -> Result<SendResponse> {
        let Peer::User(to) = &message.to;
        self.user_record(to).await?;
        deliver_message(&self.cluster, &self.metrics, &message, from_session);
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
        check_participant(user, &request.conversation_id)?;
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
            })
            .await?;
        Ok(MessagesPage {
            messages: page.messages,
            has_more: page.has_more,
        })
    }

    /// `user`'s conversations changed since a version.
    pub async fn sync(&self, user: &UserId, request: SyncRequest) -> Result<SyncResponse> {
        let limit = page_limit(request.limit, DEFAULT_SYNC_PAGE, MAX_SYNC_PAGE)?;
        let page = self
            .store
            .changed_conversations(user, request.since, limit)
            .await?;
        Ok(SyncResponse {
            conversations: page.conversations,
            version: page.version,
            has_more: page.has_more,
        })
    }

    /// Marks a conversation read and tells the user's other devices.
    pub async fn mark_read(
        &self,
        origin: &Origin,
        request: MarkReadRequest,
    ) -> Result<ConversationState> {
        check_participant(&origin.user, &request.conversation_id)?;
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
