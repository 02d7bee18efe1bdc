//! The catch-up after each login (PROTOCOL.md §7 rule 3).
//!
//! Pages through `sync` from the stored version; for every changed conversation records its
//! state and pulls the messages it lacks, several conversations at a time; stores the new
//! version only once that page's conversations are complete, so an interrupted sync resumes
//! where it left off and never skips anything. Message ordering itself is the session's
//! (`catch_up`) and the sequencer's business, not this module's.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream;

use magpie_proto::frame::SyncRequest;

use crate::connection::Connection;
use crate::error::Result;
use crate::events::ClientEvent;
use crate::session::Session;

pub(crate) async fn run(session: &Arc<Session>, conn: &Connection) -> Result<()> {
    let mut since = session.store.call(|db| db.sync_version()).await?;
    let started = std::time::Instant::now();
    let mut pulled = 0usize;
    loop {
        let page = conn
            .sync(SyncRequest {
                since,
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
        let results: Vec<Result<()>> = stream::iter(behind)
            .map(|id| async move { session.catch_up(conn, &id).await })
            .buffer_unordered(session.config().max_concurrent_pulls)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>>>()?;

        let version = page.version;
        session
            .store
            .call(move |db| db.set_sync_version(version))
            .await?;
        since = version;
        if !page.has_more {
            tracing::debug!(version, pulled, elapsed = ?started.elapsed(), "sync finished");
            return Ok(());
        }
    }
}
