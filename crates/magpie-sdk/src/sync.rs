//! The catch-up after each login (PROTOCOL.md §7 rule 3).
//!
//! Pages through `sync` from the stored cursors — two of them: the user's own change counter
//! (`since`/`version`) and the group activity clock (`groups_since`/`groups_version`), which
//! follows group conversations without a per-member write per message — until neither side has
//! more. For every changed conversation (one-to-one and group alike) it records the state and
//! pulls the messages it lacks, several conversations at a time; it stores the new cursors only
//! once that page's conversations are complete, so an interrupted sync resumes where it left
//! off and never skips anything. Message ordering itself is the session's
//! (`catch_up`) and the sequencer's business, not this module's.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream;

use magpie_proto::frame::SyncRequest;
use magpie_proto::{ConversationId, ErrorCode};

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::events::ClientEvent;
use crate::session::Session;
use crate::store::SyncCursors;

pub(crate) async fn run(session: &Arc<Session>, conn: &Connection) -> Result<()> {
    let mut since = session.store.call(|db| db.sync_cursors()).await?;
    let started = std::time::Instant::now();
    let mut pulled = 0usize;
    loop {
        let page = conn
            .sync(SyncRequest {
                since: since.version,
                groups_since: since.groups_version,
                limit: Some(session.config().sync_page_size),
            })
            .await?;

        let mut new_cursors = HashMap::new();
        let mut behind = Vec::new();
        session.with_sequencer(|sequencer| {
            for state in &page.conversations {
                let id = &state.conversation_id;
                let (cursor, new) = sequencer.observe_last_seq(id, state.last_seq);
                if new {
                    new_cursors.insert(id.clone(), cursor);
                }
                if state.last_seq > cursor {
                    behind.push(id.clone());
                }
            }
        });
        let states = page.conversations;
        let updated = session
            .store
            .call(move |db| db.apply_sync_states(&states, &new_cursors))
            .await?;
        for conversation in updated {
            session.emit_event(ClientEvent::ConversationUpdated(conversation));
        }

        // Every pull runs to its end even if one fails, so none is cancelled mid-delivery.
        pulled += behind.len();
        let results: Vec<(ConversationId, Result<()>)> = stream::iter(behind)
            .map(|id| async move {
                let result = session.catch_up(conn, &id).await;
                (id, result)
            })
            .buffer_unordered(session.config().max_concurrent_pulls)
            .collect()
            .await;
        let mut refused = Vec::new();
        for (id, result) in results {
            match result {
                Ok(()) => {}
                // Retrying cannot change a refusal to show this conversation (a group this
                // user left, or one that was destroyed): keep what is cached and go on, so the
                // rest of the sync is not held up for good.
                Err(e) if is_refusal(&e) => {
                    tracing::info!(conversation_id = %id, error = %e, "the server no longer shows this conversation; skipping it");
                    refused.push(id);
                }
                Err(e) => return Err(e),
            }
        }
        if !refused.is_empty() {
            let held = session.with_sequencer(|sequencer| {
                refused
                    .into_iter()
                    .map(|id| {
                        let cursor = sequencer.held(&id);
                        (id, cursor)
                    })
                    .collect::<Vec<_>>()
            });
            let updated = session
                .store
                .call(move |db| db.cap_unreachable(&held))
                .await?;
            for conversation in updated {
                session.emit_event(ClientEvent::ConversationUpdated(conversation));
            }
        }

        let cursors = SyncCursors {
            version: page.version,
            groups_version: page.groups_version,
        };
        session
            .store
            .call(move |db| db.set_sync_cursors(cursors))
            .await?;
        since = cursors;
        if !page.has_more {
            tracing::debug!(?cursors, pulled, elapsed = ?started.elapsed(), "sync finished");
            return Ok(());
        }
    }
}

/// Whether the server refused to show a conversation's messages to this user for good.
fn is_refusal(error: &Error) -> bool {
    matches!(
        error.code(),
        Some(
            ErrorCode::NotGroupMember
                | ErrorCode::GroupNotFound
                | ErrorCode::ConversationNotFound
                | ErrorCode::Forbidden
        )
    )
}
