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
}
