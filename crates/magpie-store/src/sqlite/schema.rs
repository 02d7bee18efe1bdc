//! Versioned schema migrations, tracked in `PRAGMA user_version`.
//!
//! Migrations are append-only: never edit one that has shipped, add the next file instead.

use rusqlite::Connection;

use crate::{StoreError, StoreErrorKind, StoreResult};

/// Every migration, in order; `user_version` counts how many are applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_node_leases.sql"),
    include_str!("../../migrations/sqlite/0003_groups.sql"),
    include_str!("../../migrations/sqlite/0004_group_messages.sql"),
    include_str!("../../migrations/sqlite/0005_messages_in_arrival_order.sql"),
    include_str!("../../migrations/sqlite/0006_integer_conversation_keys.sql"),
];

/// Brings the schema up to date, each migration in its own transaction.
pub(super) fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let applied = usize::try_from(applied).map_err(StoreError::internal)?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::new(
            StoreErrorKind::Internal,
            format!(
                "database schema version {applied} is newer than this server knows ({}); upgrade the server",
                MIGRATIONS.len()
            ),
        ));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = index + 1, "applied sqlite migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_a_no_op_and_newer_schemas_are_refused() {
        let mut conn = Connection::open_in_memory().expect("open");
        migrate(&mut conn).expect("first");
        migrate(&mut conn).expect("second");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(version as usize, MIGRATIONS.len());
        conn.pragma_update(None, "user_version", 99).expect("bump");
        let err = migrate(&mut conn).expect_err("newer schema");
        assert_eq!(err.kind(), StoreErrorKind::Internal);
    }

    #[test]
    fn stored_messages_survive_the_moves_to_arrival_order_and_integer_keys() {
        let mut conn = Connection::open_in_memory().expect("open");
        for sql in &MIGRATIONS[..4] {
            conn.execute_batch(sql).expect("older migration");
        }
        conn.pragma_update(None, "user_version", 4)
            .expect("version");
        let insert = "INSERT INTO messages (id, conversation_id, seq, sender, recipient, \
                      client_msg_id, content, ext, server_time, mentions) \
                      VALUES (?1, ?2, ?3, 'a', 'b', ?4, ?5, NULL, ?6, NULL)";
        for (id, conversation, seq) in [(30, "c2c:a:b", 2), (10, "c2c:a:b", 1), (20, "c2c:a:c", 1)]
        {
            conn.execute(
                insert,
                (
                    id,
                    conversation,
                    seq,
                    format!("k{id}"),
                    format!("text {id}"),
                    id * 1000,
                ),
            )
            .expect("message");
        }

        migrate(&mut conn).expect("migrate");

        let rows: Vec<(i64, String, i64, String, i64)> = conn
            .prepare(
                "SELECT m.id, c.id, m.seq, m.content, m.server_time FROM messages m \
                 JOIN conversations c ON c.key = m.conversation_key ORDER BY m.rowid",
            )
            .expect("select")
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("read");
        assert_eq!(
            rows,
            vec![
                (10, "c2c:a:b".into(), 1, "text 10".into(), 10_000),
                (20, "c2c:a:c".into(), 1, "text 20".into(), 20_000),
                (30, "c2c:a:b".into(), 2, "text 30".into(), 30_000),
            ],
            "every message kept, in id (arrival) order"
        );
        // The messages' conversations had no rows (only messages were written): they got
        // them, with their kind, first message time and distinct keys.
        let conversations: Vec<(String, String, i64, i64)> = conn
            .prepare("SELECT id, kind, created_at, key FROM conversations ORDER BY key")
            .expect("select")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("read");
        assert_eq!(
            conversations,
            vec![
                ("c2c:a:b".into(), "c2c".into(), 10_000, 1),
                ("c2c:a:c".into(), "c2c".into(), 20_000, 2),
            ]
        );
        // Both keys are still unique: a second seq 2 and a second `k10` from the same sender
        // in the same conversation are refused.
        let insert = "INSERT INTO messages (id, conversation_key, seq, sender, recipient, \
                      client_msg_id, content, ext, server_time, mentions) \
                      VALUES (?1, (SELECT key FROM conversations WHERE id = ?2), ?3, 'a', 'b', \
                      ?4, ?5, NULL, ?6, NULL)";
        let fresh = conn.execute(insert, (35, "c2c:a:b", 3, "k35", "x", 35_000));
        assert_eq!(fresh.ok(), Some(1), "a new message is accepted");
        let same_seq = conn.execute(insert, (40, "c2c:a:b", 2, "k40", "x", 40_000));
        assert!(same_seq.is_err(), "a seq was stored twice: {same_seq:?}");
        let same_key = conn.execute(insert, (50, "c2c:a:b", 4, "k10", "x", 50_000));
        assert!(
            same_key.is_err(),
            "a client_msg_id was stored twice: {same_key:?}"
        );
    }
}
