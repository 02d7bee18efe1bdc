//! Read queries. Each is one statement (one snapshot), run on a pooled connection.

use magpie_proto::frame::Direction;
use magpie_proto::{ConversationId, ConversationState, UserId};

use super::conn::PgConn;
use super::rows::{self, MESSAGE_COLUMNS, STATE_COLUMNS, STATE_FROM, USER_COLUMNS};
use crate::{Anchor, MessagePage, MessageQuery, StoreResult, SyncPage, UserRecord};

/// Builds the `&'static str` SQL of a statement from the shared column lists once.
macro_rules! sql {
    ($($part:expr),+ $(,)?) => {{
        static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        SQL.get_or_init(|| format!($($part),+)).as_str()
    }};
}
pub(super) use sql;

pub(super) async fn get_user(conn: &mut PgConn, id: &UserId) -> StoreResult<Option<UserRecord>> {
    let sql = sql!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 AND NOT deleted");
    let statement = conn.statements.get(&conn.client, sql).await?;
    conn.client
        .query_opt(&statement, &[&id.as_str()])
        .await?
        .map(|row| rows::user_record(&row))
        .transpose()
}

pub(super) async fn max_message_id(conn: &mut PgConn) -> StoreResult<u64> {
    let statement = conn
        .statements
        .get(&conn.client, "SELECT COALESCE(MAX(id), 0) FROM messages")
        .await?;
    let id: i64 = conn.client.query_one(&statement, &[]).await?.try_get(0)?;
    Ok(id as u64)
}

/// The first seq whose server time is at or after `$2` (one past the last seq if none): a
/// binary search over the conversation's seqs — server times never decrease along them — in
/// one statement, a few index probes whatever the conversation's length.
const FIRST_SEQ_AT_OR_AFTER: &str = "WITH RECURSIVE search(low, high) AS ( \
       SELECT 1::int8, COALESCE((SELECT last_seq FROM conversations WHERE id = $1), 0) + 1 \
     UNION ALL \
       SELECT CASE WHEN probe.server_time < $2 THEN probe.mid + 1 ELSE s.low END, \
              CASE WHEN probe.server_time < $2 THEN s.high ELSE probe.mid END \
       FROM search s, LATERAL (SELECT s.low + (s.high - s.low) / 2 AS mid, \
         (SELECT server_time FROM messages \
          WHERE conversation_id = $1 AND seq = s.low + (s.high - s.low) / 2) AS server_time) probe \
       WHERE s.low < s.high \
     ) SELECT low FROM search WHERE low >= high";

pub(super) async fn get_messages(conn: &mut PgConn, q: &MessageQuery) -> StoreResult<MessagePage> {
    let conversation = q.conversation_id.as_str();
    // Time anchors become seq anchors, as in the SQLite backend.
    let anchor = match q.anchor {
        Anchor::Time(time) => {
            let statement = conn
                .statements
                .get(&conn.client, FIRST_SEQ_AT_OR_AFTER)
                .await?;
            let first: i64 = conn
                .client
                .query_one(&statement, &[&conversation, &time])
                .await?
                .try_get(0)?;
            let first = first.max(1) as u64;
            match q.direction {
                Direction::Forward => Anchor::Seq(first.saturating_sub(1)),
                Direction::Backward => Anchor::Seq(first),
            }
        }
        other => other,
    };
    // Fetch one extra row to learn whether the page is the last one.
    let limit = i64::from(q.limit) + 1;
    let min_seq = q.min_seq.min(i64::MAX as u64) as i64;
    let rows = match (q.direction, anchor) {
        (Direction::Backward, Anchor::Seq(seq)) => {
            let sql = sql!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.conversation_id = $1 \
                 AND m.seq < $2 AND m.seq >= $4 ORDER BY m.seq DESC LIMIT $3"
            );
            let statement = conn.statements.get(&conn.client, sql).await?;
            let bound = seq.min(i64::MAX as u64) as i64;
            conn.client
                .query(&statement, &[&conversation, &bound, &limit, &min_seq])
                .await?
        }
        (Direction::Forward, Anchor::Seq(seq)) => {
            let sql = sql!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.conversation_id = $1 \
                 AND m.seq > $2 AND m.seq >= $4 ORDER BY m.seq ASC LIMIT $3"
            );
            let statement = conn.statements.get(&conn.client, sql).await?;
            let bound = seq.min(i64::MAX as u64) as i64;
            conn.client
                .query(&statement, &[&conversation, &bound, &limit, &min_seq])
                .await?
        }
        (Direction::Backward, _) => {
            let sql = sql!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.conversation_id = $1 \
                 AND m.seq >= $3 ORDER BY m.seq DESC LIMIT $2"
            );
            let statement = conn.statements.get(&conn.client, sql).await?;
            conn.client
                .query(&statement, &[&conversation, &limit, &min_seq])
                .await?
        }
        (Direction::Forward, _) => {
            let sql = sql!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.conversation_id = $1 \
                 AND m.seq >= $3 ORDER BY m.seq ASC LIMIT $2"
            );
            let statement = conn.statements.get(&conn.client, sql).await?;
            conn.client
                .query(&statement, &[&conversation, &limit, &min_seq])
                .await?
        }
    };
    let mut messages = rows
        .iter()
        .map(|row| rows::message(row, 0))
        .collect::<StoreResult<Vec<_>>>()?;
    let has_more = messages.len() > q.limit as usize;
    messages.truncate(q.limit as usize);
    if q.direction == Direction::Backward {
        messages.reverse();
    }
    Ok(MessagePage { messages, has_more })
}

pub(super) async fn changed_conversations(
    conn: &mut PgConn,
    user: &UserId,
    since: u64,
    limit: u32,
) -> StoreResult<SyncPage> {
    // One statement, so the user's version and the rows come from the same snapshot. A cursor
    // from the future (a restored backup, a wiped server) would hide every change forever:
    // it starts over instead.
    let sql = sql!(
        "SELECT u.sync_version, s.* FROM users u \
         LEFT JOIN LATERAL (SELECT {STATE_COLUMNS}, {MESSAGE_COLUMNS} FROM {STATE_FROM} \
           WHERE uc.user_id = u.id \
             AND uc.version > (CASE WHEN $2 > u.sync_version THEN 0 ELSE $2 END) \
           ORDER BY uc.version LIMIT $3) s ON true \
         WHERE u.id = $1 AND NOT u.deleted"
    );
    let statement = conn.statements.get(&conn.client, sql).await?;
    let since = since.min(i64::MAX as u64) as i64;
    let rows = conn
        .client
        .query(
            &statement,
            &[&user.as_str(), &since, &(i64::from(limit) + 1)],
        )
        .await?;
    let Some(first) = rows.first() else {
        return Ok(SyncPage {
            conversations: Vec::new(),
            version: 0,
            has_more: false,
        });
    };
    let current = first.try_get::<_, i64>(0)? as u64;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.try_get::<_, Option<String>>(1)?.is_some() {
            let state = rows::conversation_state(row, 1)?;
            let version = state.version;
            found.push((state, version));
        }
    }
    found.sort_by_key(|(_, version)| *version);
    Ok(SyncPage::from_rows(found, limit, current))
}

pub(super) async fn changed_group_conversations(
    conn: &mut PgConn,
    user: &UserId,
    since: u64,
    limit: u32,
) -> StoreResult<SyncPage> {
    // One statement, one snapshot. Stamps become visible in stamp order (they are taken under
    // an advisory lock held to the commit), so the largest stamp this snapshot sees is a cursor
    // below which nothing can still appear. A cursor above it (a restored backup) starts over.
    let sql = sql!(
        "WITH clock AS (SELECT COALESCE(MAX(activity), 0) AS now FROM conversations \
           WHERE kind = 'group') \
         SELECT clock.now, s.* FROM clock LEFT JOIN LATERAL ({} \
           WHERE gm.user_id = $1 \
             AND c.activity > (CASE WHEN $2 > clock.now THEN 0 ELSE $2 END) \
             AND c.activity <= clock.now \
           ORDER BY c.activity LIMIT $3) s ON true",
        rows::GROUP_STATE_SELECT
    );
    let statement = conn.statements.get(&conn.client, sql).await?;
    let since = since.min(i64::MAX as u64) as i64;
    let rows = conn
        .client
        .query(
            &statement,
            &[&user.as_str(), &since, &(i64::from(limit) + 1)],
        )
        .await?;
    let mut clock = 0;
    let mut stamped = Vec::with_capacity(rows.len());
    for row in &rows {
        clock = row.try_get::<_, i64>(0)? as u64;
        if row.try_get::<_, Option<String>>(1)?.is_some() {
            let stamp = row.try_get::<_, i64>(1 + rows::ACTIVITY_COLUMN)? as u64;
            stamped.push((rows::conversation_state(row, 1)?, stamp));
        }
    }
    stamped.sort_by_key(|(_, stamp)| *stamp);
    Ok(SyncPage::from_rows(stamped, limit, clock))
}

/// One user's state of one conversation, with its last message; for a group conversation
/// without a row of the user's, their state as a member.
pub(super) async fn conversation_state<C: tokio_postgres::GenericClient + Sync>(
    client: &C,
    statements: &mut super::conn::Statements,
    user: &UserId,
    conversation: &ConversationId,
) -> StoreResult<Option<ConversationState>> {
    let sql = sql!(
        "SELECT {STATE_COLUMNS}, {MESSAGE_COLUMNS} FROM {STATE_FROM} \
         WHERE uc.user_id = $1 AND uc.conversation_id = $2"
    );
    let statement = statements.get(client, sql).await?;
    if let Some(row) = client
        .query_opt(&statement, &[&user.as_str(), &conversation.as_str()])
        .await?
    {
        return rows::conversation_state(&row, 0).map(Some);
    }
    let Some(group) = conversation.group_id() else {
        return Ok(None);
    };
    let sql = sql!(
        "{} WHERE gm.user_id = $1 AND gm.group_id = $2",
        rows::GROUP_STATE_SELECT
    );
    let statement = statements.get(client, sql).await?;
    client
        .query_opt(&statement, &[&user.as_str(), &group.as_str()])
        .await?
        .map(|row| rows::conversation_state(&row, 0))
        .transpose()
}

/// Every member's read position (see [`crate::GroupStore::group_read_positions`]).
pub(super) async fn group_read_positions(
    conn: &mut PgConn,
    group: &magpie_proto::group::GroupId,
) -> StoreResult<Vec<(UserId, u64)>> {
    let sql = "SELECT gm.user_id, GREATEST(COALESCE(uc.read_seq, 0), gm.visible_from_seq - 1) \
         FROM group_members gm \
         LEFT JOIN user_conversations uc \
           ON uc.user_id = gm.user_id AND uc.conversation_id = 'grp:' || gm.group_id \
         WHERE gm.group_id = $1 ORDER BY gm.user_id";
    let statement = conn.statements.get(&conn.client, sql).await?;
    conn.client
        .query(&statement, &[&group.as_str()])
        .await?
        .iter()
        .map(|row| {
            let user = crate::groups::user_id_from_sql(row.try_get(0)?)?;
            Ok((user, row.try_get::<_, i64>(1)?.max(0) as u64))
        })
        .collect()
}
