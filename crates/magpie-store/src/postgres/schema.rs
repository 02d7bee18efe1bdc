//! Versioned schema migrations, tracked in `schema_migrations`.
//!
//! Several nodes may start at once against a fresh database: the whole migration runs in one
//! transaction under a transaction-level advisory lock, so one node migrates and the others
//! then find nothing left to do. Migrations are append-only: never edit one that has shipped.

use super::conn::PgConn;
use crate::{StoreError, StoreErrorKind, StoreResult};

/// Every migration, in order; `schema_migrations` holds the versions applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_groups.sql"),
    include_str!("../../migrations/postgres/0003_group_messages.sql"),
];

/// The advisory lock key of migrations ("magpie" and 0).
const MIGRATION_LOCK: i64 = 0x6d61_6770_6965_0000;

/// Brings the schema up to date.
pub(super) async fn migrate(conn: &mut PgConn) -> StoreResult<()> {
    let tx = conn.client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (\
           version integer PRIMARY KEY, \
           applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let applied: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
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
        let version = i32::try_from(index + 1).map_err(StoreError::internal)?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tracing::info!(version, "applied postgres migration");
    }
    tx.commit().await?;
    Ok(())
}

/// How many migrations this build knows.
#[cfg(test)]
pub(super) fn known() -> usize {
    MIGRATIONS.len()
}
