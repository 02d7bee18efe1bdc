//! User writes and node-id leases: single-row transactions on pooled connections. They need no
//! writer's ordering; row locks keep them consistent with appends on every node (a user's row
//! is locked before their conversation rows, the same order appends use).

use std::time::Duration;

use magpie_proto::rest::{UpdateUser, User};
use magpie_proto::{Millis, UserId};

use super::conn::PgConn;
use super::reader::sql;
use super::rows::{self, USER_COLUMNS};
use crate::{MAX_NODE_ID, NewUser, StoreError, StoreErrorKind, StoreResult};

pub(super) fn user_not_found(id: &UserId) -> StoreError {
    StoreError::new(StoreErrorKind::UserNotFound, format!("no user {id}"))
}

pub(super) async fn create_user(conn: &mut PgConn, u: NewUser) -> StoreResult<User> {
    // A deleted id comes back to life with a fresh profile but keeps its counters.
    let statement = conn
        .statements
        .get(
            &conn.client,
            "INSERT INTO users (id, nickname, avatar_url, ext, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (id) DO UPDATE SET deleted = false, nickname = excluded.nickname, \
               avatar_url = excluded.avatar_url, ext = excluded.ext, \
               created_at = excluded.created_at, updated_at = excluded.updated_at \
             WHERE users.deleted",
        )
        .await?;
    let ext = rows::json_object(u.ext.as_ref())?;
    let created = conn
        .client
        .execute(
            &statement,
            &[&u.id.as_str(), &u.nickname, &u.avatar_url, &ext, &u.now],
        )
        .await?;
    if created == 0 {
        return Err(StoreError::new(
            StoreErrorKind::Conflict,
            format!("user {} already exists", u.id),
        ));
    }
    Ok(User {
        id: u.id,
        nickname: u.nickname,
        avatar_url: u.avatar_url,
        ext: u.ext,
        created_at: u.now,
        updated_at: u.now,
    })
}

pub(super) async fn update_user(
    conn: &mut PgConn,
    id: &UserId,
    update: UpdateUser,
    now: Millis,
) -> StoreResult<User> {
    let tx = conn.client.transaction().await?;
    let lock = sql!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 AND NOT deleted FOR UPDATE");
    let statement = conn.statements.get(&tx, lock).await?;
    let row = tx
        .query_opt(&statement, &[&id.as_str()])
        .await?
        .ok_or_else(|| user_not_found(id))?;
    let mut user = rows::user_record(&row)?.user;
    if let Some(nickname) = update.nickname {
        user.nickname = nickname;
    }
    if let Some(avatar_url) = update.avatar_url {
        user.avatar_url = avatar_url;
    }
    if let Some(ext) = update.ext {
        user.ext = ext;
    }
    user.updated_at = now;
    let ext = rows::json_object(user.ext.as_ref())?;
    let statement = conn
        .statements
        .get(
            &tx,
            "UPDATE users SET nickname = $2, avatar_url = $3, ext = $4, updated_at = $5 WHERE id = $1",
        )
        .await?;
    tx.execute(
        &statement,
        &[&id.as_str(), &user.nickname, &user.avatar_url, &ext, &now],
    )
    .await?;
    tx.commit().await?;
    Ok(user)
}

pub(super) async fn delete_user(conn: &mut PgConn, id: &UserId) -> StoreResult<bool> {
    // Deleting revokes the user's tokens; the change counter stays in the row, so a re-created
    // user of the same id starts above both.
    let tx = conn.client.transaction().await?;
    let statement = conn
        .statements
        .get(
            &tx,
            "UPDATE users SET deleted = true, token_generation = token_generation + 1, \
               nickname = NULL, avatar_url = NULL, ext = NULL \
             WHERE id = $1 AND NOT deleted",
        )
        .await?;
    if tx.execute(&statement, &[&id.as_str()]).await? == 0 {
        return Ok(false);
    }
    let statement = conn
        .statements
        .get(&tx, "DELETE FROM user_conversations WHERE user_id = $1")
        .await?;
    tx.execute(&statement, &[&id.as_str()]).await?;
    tx.commit().await?;
    Ok(true)
}

pub(super) async fn revoke_tokens(conn: &mut PgConn, id: &UserId) -> StoreResult<u64> {
    let statement = conn
        .statements
        .get(
            &conn.client,
            "UPDATE users SET token_generation = token_generation + 1 \
             WHERE id = $1 AND NOT deleted RETURNING token_generation",
        )
        .await?;
    let row = conn
        .client
        .query_opt(&statement, &[&id.as_str()])
        .await?
        .ok_or_else(|| user_not_found(id))?;
    Ok(row.try_get::<_, i64>(0)? as u64)
}

/// The advisory lock key that serializes claims across nodes ("magpie" and 1).
const CLAIM_LOCK: i64 = 0x6d61_6770_6965_0001;

fn lease_ms(lease: Duration) -> f64 {
    lease.as_secs_f64() * 1000.0
}

pub(super) async fn claim_node_id(
    conn: &mut PgConn,
    holder: &str,
    lease: Duration,
) -> StoreResult<u16> {
    // Claims are rare (once per node start): one at a time across the cluster, under an
    // advisory lock, so two nodes can never pick the same free id. The insert is a statement
    // of its own so that its snapshot is taken after the lock: it sees every earlier claim.
    let tx = conn.client.transaction().await?;
    let lock = conn
        .statements
        .get(&tx, "SELECT pg_advisory_xact_lock($1)")
        .await?;
    tx.execute(&lock, &[&CLAIM_LOCK]).await?;
    let claim = sql!(
        "INSERT INTO node_leases (node_id, holder, expires_at) \
         SELECT n, $1, now() + $2::float8 * interval '1 millisecond' \
         FROM generate_series(0, {MAX_NODE_ID}) AS n \
         WHERE NOT EXISTS (SELECT 1 FROM node_leases l WHERE l.node_id = n AND l.expires_at > now()) \
         ORDER BY n LIMIT 1 \
         ON CONFLICT (node_id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
         RETURNING node_id"
    );
    let statement = conn.statements.get(&tx, claim).await?;
    let row = tx
        .query_opt(&statement, &[&holder, &lease_ms(lease)])
        .await?;
    let Some(row) = row else {
        return Err(StoreError::new(
            StoreErrorKind::Unavailable,
            format!("all {} node ids are leased", u32::from(MAX_NODE_ID) + 1),
        ));
    };
    let node: i32 = row.try_get(0)?;
    tx.commit().await?;
    u16::try_from(node).map_err(StoreError::internal)
}

pub(super) async fn renew_node_id(
    conn: &mut PgConn,
    node: u16,
    holder: &str,
    lease: Duration,
) -> StoreResult<bool> {
    // Still ours (even if expired, as long as nobody took it over).
    let statement = conn
        .statements
        .get(
            &conn.client,
            "UPDATE node_leases SET expires_at = now() + $3::float8 * interval '1 millisecond' \
             WHERE node_id = $1 AND holder = $2",
        )
        .await?;
    let renewed = conn
        .client
        .execute(&statement, &[&i32::from(node), &holder, &lease_ms(lease)])
        .await?;
    Ok(renewed == 1)
}

pub(super) async fn release_node_id(conn: &mut PgConn, node: u16, holder: &str) -> StoreResult<()> {
    let statement = conn
        .statements
        .get(
            &conn.client,
            "DELETE FROM node_leases WHERE node_id = $1 AND holder = $2",
        )
        .await?;
    conn.client
        .execute(&statement, &[&i32::from(node), &holder])
        .await?;
    Ok(())
}
