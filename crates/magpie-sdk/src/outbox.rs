//! Pending sends: who is waiting for which `client_msg_id`, and the flusher that sends the
//! persistent outbox in order over a live connection.
//!
//! The outbox itself lives in SQLite (see `store`), so queued sends survive restarts. This
//! module owns the in-memory side (the futures of [`ChatManager::send`] calls waiting for an
//! answer) and the retry policy of one send. Recording the answer — storing the message,
//! advancing the cursor, emitting events — is the session's job.
//!
//! [`ChatManager::send`]: crate::ChatManager::send

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use magpie_proto::{ErrorCode, Message};

use crate::connection::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::session::Session;

/// How many times one send is retried after a transient server error (rate limited,
/// internal, unavailable) before it is failed.
const MAX_TRANSIENT_RETRIES: u32 = 8;
/// Wait before retrying a transient failure when the server gave no `retry_after_ms`.
const TRANSIENT_RETRY_DELAY: Duration = Duration::from_millis(500);

type Waiter = oneshot::Sender<Result<Message>>;

/// The futures waiting for send answers, and a change signal for the flusher.
#[derive(Debug)]
pub(crate) struct Outbox {
    waiters: Mutex<HashMap<String, Vec<Waiter>>>,
    // A counter rather than a Notify: every flusher (an old one winding down and a new one
    // starting) sees every change, so a wake-up cannot be swallowed by the wrong one.
    changed: watch::Sender<u64>,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            waiters: Mutex::new(HashMap::new()),
            changed: watch::Sender::new(0),
        }
    }
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Waiter>>> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers interest in the answer to a send.
    pub(crate) fn wait_for(&self, client_msg_id: &str) -> oneshot::Receiver<Result<Message>> {
        let (tx, rx) = oneshot::channel();
        self.lock()
            .entry(client_msg_id.to_owned())
            .or_default()
            .push(tx);
        rx
    }

    /// Hands the outcome of a send to everyone waiting for it.
    pub(crate) fn resolve(&self, client_msg_id: &str, result: Result<Message>) {
        let waiters = self.lock().remove(client_msg_id).unwrap_or_default();
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }

    /// Fails every waiter (logout): the messages stay queued for the next login.
    pub(crate) fn close_all(&self, error: &Error) {
        let waiters = std::mem::take(&mut *self.lock());
        for waiter in waiters.into_values().flatten() {
            let _ = waiter.send(Err(error.clone()));
        }
    }

    /// Tells the flusher that something was queued.
    pub(crate) fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// What to do after a send failed.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The server may accept it later: wait, then send it again.
    Transient(Duration),
    /// The server will never accept it: fail the message.
    Rejected,
    /// No answer in time: the connection is suspect; reconnect and resend.
    Reconnect,
    /// The connection is gone: leave it queued for the next one.
    Later,
}

fn classify(error: &Error) -> Failure {
    match error.kind() {
        ErrorKind::Server(ErrorCode::RateLimited) => {
            Failure::Transient(error.retry_after().unwrap_or(TRANSIENT_RETRY_DELAY))
        }
        ErrorKind::Server(code) if code.as_u16() / 1000 == 5 => {
            Failure::Transient(TRANSIENT_RETRY_DELAY)
        }
        ErrorKind::Server(_) | ErrorKind::Protocol | ErrorKind::InvalidInput => Failure::Rejected,
        ErrorKind::Timeout => Failure::Reconnect,
        _ => Failure::Later,
    }
}

/// Sends the outbox, oldest first and one at a time, until the connection ends. One at a
/// time keeps the order: a retried send must not be overtaken by the next one.
pub(crate) async fn flush(session: &Arc<Session>, conn: &Connection) {
    let mut changed = session.outbox.subscribe();
    let mut retries = 0u32;
    loop {
        changed.borrow_and_update();
        let item = match session.store.call(|db| db.outbox_head()).await {
            Ok(Some(item)) => item,
            Ok(None) => {
                tokio::select! {
                    result = changed.changed() => if result.is_err() { return },
                    _ = conn.closed() => return,
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                return;
            }
        };
        let error = match conn.send(item.request.clone()).await {
            Ok(answer) => {
                retries = 0;
                session.complete_send(conn, answer.message).await;
                continue;
            }
            Err(e) => e,
        };
        match classify(&error) {
            Failure::Transient(delay) if retries < MAX_TRANSIENT_RETRIES => {
                retries += 1;
                tracing::debug!(client_msg_id = %item.client_msg_id, ?delay, error = %error, "send will be retried");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = conn.closed() => return,
                }
            }
            Failure::Transient(_) | Failure::Rejected => {
                retries = 0;
                session.fail_send(&item.client_msg_id, error).await;
            }
            Failure::Reconnect => {
                tracing::info!(error = %error, "send timed out; reconnecting");
                conn.close("send timed out");
                return;
            }
            Failure::Later => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use magpie_proto::ErrorBody;

    #[test]
    fn failures_are_classified_by_what_a_retry_could_change() {
        let server = |code| Error::server(ErrorBody::new(code, "x"));
        let mut limited = ErrorBody::new(ErrorCode::RateLimited, "slow");
        limited.retry_after_ms = Some(40);
        assert_eq!(
            classify(&Error::server(limited)),
            Failure::Transient(Duration::from_millis(40))
        );
        assert!(matches!(
            classify(&server(ErrorCode::Unavailable)),
            Failure::Transient(_)
        ));
        assert!(matches!(
            classify(&server(ErrorCode::Unknown(5999))),
            Failure::Transient(_)
        ));
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::UserNotFound,
            ErrorCode::TooLarge,
        ] {
            assert_eq!(classify(&server(code)), Failure::Rejected, "{code}");
        }
        assert_eq!(
            classify(&Error::new(ErrorKind::Timeout, "")),
            Failure::Reconnect
        );
        assert_eq!(classify(&Error::disconnected("")), Failure::Later);
    }

    #[tokio::test]
    async fn every_waiter_of_a_send_gets_the_outcome_once() {
        let outbox = Outbox::default();
        let a = outbox.wait_for("c1");
        let b = outbox.wait_for("c1");
        let other = outbox.wait_for("c2");
        outbox.resolve("c1", Err(Error::disconnected("gone")));
        assert_eq!(
            a.await.expect("answered").map_err(|e| e.kind()).err(),
            Some(ErrorKind::Disconnected)
        );
        assert!(b.await.expect("answered").is_err());
        outbox.close_all(&Error::new(ErrorKind::Closed, "logout"));
        assert_eq!(
            other.await.expect("answered").map_err(|e| e.kind()).err(),
            Some(ErrorKind::Closed)
        );
    }
}
