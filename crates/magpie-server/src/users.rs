//! Users and their tokens, as the app backend manages them through the REST API.
//!
//! Owns profile validation, token issuing and revocation, and the consequences for online
//! devices (deleting a user or revoking their tokens kicks them at once). Login-time token
//! checks live here too, so issuing and checking share one set of rules.

use magpie_proto::frame::KickReason;
use magpie_proto::message::MAX_URL_LEN;
use magpie_proto::rest::{
    CreateUser, IssuedToken, KickedDevices, MAX_NICKNAME_LEN, MAX_USER_EXT_BYTES, UpdateUser, User,
};
use magpie_proto::{ErrorCode, UserId};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use magpie_store::{NewUser, UserRecord};
use serde_json::{Map, Value};

use crate::app::App;
use crate::auth::{Claims, check_claims};
use crate::clock::now_ms;
use crate::encoded::json_len;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

fn check_profile(
    nickname: Option<&String>,
    avatar_url: Option<&String>,
    ext: Option<&Map<String, Value>>,
) -> Result<()> {
    if nickname.is_some_and(|n| n.len() > MAX_NICKNAME_LEN) {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!("nickname is longer than {MAX_NICKNAME_LEN} bytes"),
        ));
    }
    if avatar_url.is_some_and(|u| u.len() > MAX_URL_LEN) {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!("avatar_url is longer than {MAX_URL_LEN} bytes"),
        ));
    }
    let ext_len = ext.map_or(0, json_len);
    if ext_len > MAX_USER_EXT_BYTES {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!("ext is {ext_len} bytes encoded; the limit is {MAX_USER_EXT_BYTES}"),
        ));
    }
    Ok(())
}

/// Users as the login path needs them, so a login storm does not turn into a storm of store
/// reads. Every change to a user goes through [`App`] and invalidates its entry.
///
/// A load racing with an invalidation must not put the old record back: loads remember the
/// invalidation epoch they started in and withdraw their insert if it moved. In a cluster,
/// other nodes' changes arrive as invalidations over the bus, and the whole cache is dropped
/// whenever the bus was cut off (an invalidation may have been missed).
#[derive(Debug, Default)]
pub struct UserCache {
    records: DashMap<UserId, Arc<UserRecord>>,
    epoch: AtomicU64,
}

/// Entries kept before the cache starts over.
const USER_CACHE_LIMIT: usize = 1_000_000;

impl UserCache {
    fn get(&self, id: &UserId) -> Option<Arc<UserRecord>> {
        self.records.get(id).map(|r| r.clone())
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn insert(&self, id: &UserId, record: Arc<UserRecord>, loaded_in: u64) {
        if self.records.len() >= USER_CACHE_LIMIT {
            self.records.clear();
        }
        self.records.insert(id.clone(), record);
        if self.epoch() != loaded_in {
            self.records.remove(id);
        }
    }

    /// Drops a user's entry (its record changed).
    pub(crate) fn invalidate(&self, id: &UserId) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.records.remove(id);
    }

    /// Drops every entry.
    pub(crate) fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.records.clear();
    }
}

fn user_not_found(id: &UserId) -> Error {
    Error::new(ErrorCode::UserNotFound, format!("no user {id}"))
}

impl App {
    /// Drops a changed user from this node's cache and every other node's.
    fn forget_user(&self, id: &UserId) {
        self.users.invalidate(id);
        self.cluster.user_changed(id);
    }

    /// A live user's record, from the cache when possible.
    pub(crate) async fn user_record(&self, id: &UserId) -> Result<Arc<UserRecord>> {
        if let Some(record) = self.users.get(id) {
            return Ok(record);
        }
        let epoch = self.users.epoch();
        let record = Arc::new(
            self.store
                .get_user(id)
                .await?
                .ok_or_else(|| user_not_found(id))?,
        );
        self.users.insert(id, record.clone(), epoch);
        Ok(record)
    }

    /// Creates a user.
    pub async fn create_user(&self, request: CreateUser) -> Result<User> {
        check_profile(
            request.nickname.as_ref(),
            request.avatar_url.as_ref(),
            request.ext.as_ref(),
        )?;
        let id = request.id.clone();
        let created = self
            .store
            .create_user(NewUser {
                id: request.id,
                nickname: request.nickname,
                avatar_url: request.avatar_url,
                ext: request.ext,
                now: now_ms(),
            })
            .await?;
        self.forget_user(&id);
        Ok(created)
    }

    /// Reads a user.
    pub async fn get_user(&self, id: &UserId) -> Result<User> {
        Ok(self.user_record(id).await?.user.clone())
    }

    /// Updates a user's profile.
    pub async fn update_user(&self, id: &UserId, update: UpdateUser) -> Result<User> {
        check_profile(
            update.nickname.as_ref().and_then(Option::as_ref),
            update.avatar_url.as_ref().and_then(Option::as_ref),
            update.ext.as_ref().and_then(Option::as_ref),
        )?;
        let updated = self.store.update_user(id, update, now_ms()).await;
        self.forget_user(id);
        Ok(updated?)
    }

    /// Deletes a user, takes them out of their groups and kicks their devices.
    pub async fn delete_user(&self, id: &UserId) -> Result<KickedDevices> {
        // Groups first: if this fails the user still exists and the deletion can be retried.
        self.user_record(id).await?;
        self.remove_from_all_groups(id).await?;
        let deleted = self.store.delete_user(id).await;
        self.forget_user(id);
        if !deleted? {
            return Err(user_not_found(id));
        }
        let kicked = self
            .cluster
            .kick_user(id, KickReason::UserDeleted, "the user was deleted");
        Metrics::add(&self.metrics.kicks, kicked as u64);
        Ok(KickedDevices {
            kicked_devices: kicked as u32,
        })
    }

    /// Issues a token for an existing user.
    pub async fn issue_token(&self, id: &UserId, ttl_secs: Option<u64>) -> Result<IssuedToken> {
        let auth = &self.config.auth;
        let ttl = ttl_secs.unwrap_or(auth.default_token_ttl_secs);
        if ttl == 0 || ttl > auth.max_token_ttl_secs {
            return Err(Error::bad_request(format!(
                "ttl_seconds must be between 1 and {}",
                auth.max_token_ttl_secs
            )));
        }
        let record = self.user_record(id).await?;
        let now_secs = now_ms() / 1000;
        let token = self
            .signer
            .issue(id, record.token_generation, now_secs, ttl);
        Ok(IssuedToken {
            user_id: id.clone(),
            token,
            expires_at: (now_secs + ttl as i64) * 1000,
        })
    }

    /// Revokes every token of a user issued so far and kicks their devices.
    pub async fn revoke_tokens(&self, id: &UserId) -> Result<KickedDevices> {
        let revoked = self.store.revoke_tokens(id).await;
        // Also after a failure: the write may have happened without its answer reaching us.
        self.forget_user(id);
        revoked?;
        let kicked = self.cluster.kick_user(
            id,
            KickReason::TokensRevoked,
            "the user's tokens were revoked",
        );
        Metrics::add(&self.metrics.kicks, kicked as u64);
        Ok(KickedDevices {
            kicked_devices: kicked as u32,
        })
    }

    /// Checks a device's token for `user`: signature, expiry, owner and revocation.
    pub async fn authenticate(&self, user: &UserId, token: &str) -> Result<Claims> {
        let claims = self.signer.verify(token, now_ms() / 1000)?;
        let record = self.user_record(user).await?;
        check_claims(&claims, user, record.token_generation)?;
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use magpie_proto::rest::User;

    fn record(generation: u64) -> Arc<UserRecord> {
        Arc::new(UserRecord {
            user: User {
                id: UserId::new("alice").expect("id"),
                nickname: None,
                avatar_url: None,
                ext: None,
                created_at: 0,
                updated_at: 0,
            },
            token_generation: generation,
        })
    }

    #[test]
    fn a_load_that_raced_an_invalidation_is_not_cached() {
        let cache = UserCache::default();
        let alice = UserId::new("alice").expect("id");
        let started = cache.epoch();
        // The record was read before a revocation; the revocation invalidates first ...
        cache.invalidate(&alice);
        // ... and the stale load finishes after it.
        cache.insert(&alice, record(0), started);
        assert!(
            cache.get(&alice).is_none(),
            "a stale generation must not be served"
        );

        let fresh = cache.epoch();
        cache.insert(&alice, record(1), fresh);
        assert_eq!(cache.get(&alice).map(|r| r.token_generation), Some(1));
        cache.invalidate(&alice);
        assert!(cache.get(&alice).is_none());
    }
}
