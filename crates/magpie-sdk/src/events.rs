//! What the SDK tells the app, and how it gets there.
//!
//! Owns [`ClientEvent`] and the fan-out to subscribers. Every subscriber has its own unbounded
//! channel: an event is never dropped because an app was slow to read (a bounded broadcast would
//! silently lose messages, which is the one thing the SDK promises not to do). This module only
//! transports events; deciding what to emit, and in which order, is the session's job.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc;

use magpie_proto::frame::KickReason;
use magpie_proto::{ConversationId, ErrorBody, ErrorCode, Message, Millis};

use crate::model::{Conversation, MessageStatus};

/// Something the app may want to react to.
#[derive(Clone, PartialEq, Debug)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The connection to the server changed state.
    ConnectionStateChanged(ConnectionState),
    /// A new message: emitted exactly once per message, in seq order within a conversation.
    /// Includes this user's own messages sent from other devices, and transient commands.
    MessageReceived(Message),
    /// A message sent from this device changed status (queued, stored by the server, failed).
    MessageStatusChanged {
        /// The conversation.
        conversation_id: ConversationId,
        /// The id this device chose for it.
        client_msg_id: String,
        /// The new status.
        status: MessageStatus,
        /// The stored message, for [`MessageStatus::Sent`].
        message: Option<Message>,
        /// The server's reason, for [`MessageStatus::Failed`].
        error: Option<ErrorBody>,
    },
    /// A conversation's cached row changed (new message, read state, sync).
    ConversationUpdated(Conversation),
    /// A catch-up `sync` started after a login.
    SyncStarted,
    /// The catch-up finished: the local cache holds everything the server had at the time
    /// (messages, conversations, and the joined groups).
    SyncFinished,
    /// The token expires soon; call [`Client::renew_token`](crate::Client::renew_token).
    TokenWillExpire {
        /// When it expires (ms since the Unix epoch).
        expires_at: Millis,
    },
    /// The token expired. The SDK does not reconnect until
    /// [`Client::renew_token`](crate::Client::renew_token) is called.
    TokenExpired,
    /// This device was logged out by the server. The SDK does not reconnect on its own.
    Kicked {
        /// Why, when the server said (it always does before closing with 4001; a reconnect
        /// refused because the tokens were revoked or the user deleted maps here too).
        reason: Option<KickReason>,
        /// The server's explanation.
        message: String,
    },
    /// A reconnect's login was refused for a reason the SDK cannot fix by retrying
    /// (for example `token_invalid`). The SDK stops until the app acts.
    LoginFailed {
        /// The server's error.
        error: ErrorBody,
    },
    /// Another device of this user read a conversation.
    ReadStateSynced {
        /// The conversation.
        conversation_id: ConversationId,
        /// Read up to and including this seq.
        read_seq: u64,
    },
    /// Something changed in a group this user belongs to, was invited to or applied to: the
    /// server's `group` event as is. Emitted after the local group cache took the change in,
    /// so [`GroupManager::cached_groups`](crate::GroupManager::cached_groups) and
    /// [`cached_members`](crate::GroupManager::cached_members) already show it.
    GroupChanged(Box<magpie_proto::group::GroupEvent>),
    /// Members read some of this user's group messages: the server's `group_read` event as
    /// is, with the new read counts of the messages concerned (sent in groups small enough
    /// for read receipts). Not cached; ask [`GroupManager::read_receipts`](crate::GroupManager::read_receipts)
    /// for the current counts of a message.
    GroupRead(magpie_proto::group::GroupReadEvent),
}

/// The state of the connection to the server.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ConnectionState {
    /// Opening the socket and logging in.
    Connecting,
    /// Logged in; requests can be made.
    Connected,
    /// Not connected; the reason says whether the SDK will retry by itself.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
}

/// Why the connection is down.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// Not connected yet.
    NotConnected,
    /// The network failed or the socket could not be opened; the SDK retries.
    Network(String),
    /// The server closed the connection with a code the SDK retries after (1001, 1012, 4003,
    /// 4004, 4005 …).
    ServerClosed {
        /// The WebSocket close code.
        code: u16,
        /// The close reason, if any.
        reason: String,
    },
    /// Nothing arrived from the server within its idle timeout; the SDK retries.
    IdleTimeout,
    /// This device was kicked; the SDK stops.
    Kicked,
    /// The token expired; the SDK waits for a new one.
    TokenExpired,
    /// A login was refused; the SDK stops (see [`ClientEvent::LoginFailed`]).
    LoginFailed(ErrorCode),
    /// The app logged out.
    LoggedOut,
}

impl DisconnectReason {
    /// Whether the SDK reconnects by itself after this.
    pub fn will_retry(&self) -> bool {
        matches!(
            self,
            Self::Network(_) | Self::ServerClosed { .. } | Self::IdleTimeout
        )
    }
}

/// A subscription to [`ClientEvent`]s. Also a [`Stream`].
#[derive(Debug)]
pub struct Events {
    rx: mpsc::UnboundedReceiver<ClientEvent>,
}

impl Events {
    /// The next event; `None` once the [`Client`](crate::Client) is gone.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }

    /// The next event if one is already waiting.
    pub fn try_recv(&mut self) -> Option<ClientEvent> {
        self.rx.try_recv().ok()
    }
}

impl Stream for Events {
    type Item = ClientEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        self.rx.poll_recv(cx)
    }
}

/// The list of subscribers. Cloning shares the list.
#[derive(Clone, Debug, Default)]
pub(crate) struct EventHub {
    subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<ClientEvent>>>>,
}

impl EventHub {
    pub(crate) fn subscribe(&self) -> Events {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().push(tx);
        Events { rx }
    }

    /// Hands an event to every live subscriber; subscribers that went away are forgotten.
    pub(crate) fn emit(&self, event: ClientEvent) {
        tracing::trace!(?event, "event");
        self.lock().retain(|tx| tx.send(event.clone()).is_ok());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<mpsc::UnboundedSender<ClientEvent>>> {
        // A panic while holding this lock cannot leave the list half-updated.
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subscriber_gets_every_event_and_dropped_ones_are_forgotten() {
        let hub = EventHub::default();
        let mut a = hub.subscribe();
        let b = hub.subscribe();
        drop(b);
        for _ in 0..10_000 {
            hub.emit(ClientEvent::SyncStarted);
        }
        hub.emit(ClientEvent::SyncFinished);
        assert_eq!(hub.lock().len(), 1, "the dropped subscriber is gone");
        let mut n = 0;
        while let Some(ev) = a.try_recv() {
            if ev == ClientEvent::SyncFinished {
                break;
            }
            n += 1;
        }
        assert_eq!(n, 10_000, "an unread backlog is never trimmed");
    }

    #[test]
    fn only_transient_disconnects_are_retried() {
        assert!(DisconnectReason::IdleTimeout.will_retry());
        assert!(DisconnectReason::Network("reset".into()).will_retry());
        assert!(!DisconnectReason::Kicked.will_retry());
        assert!(!DisconnectReason::TokenExpired.will_retry());
        assert!(!DisconnectReason::LoggedOut.will_retry());
    }
}
