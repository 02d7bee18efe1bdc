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
use magpie_store::NewUser;
use serde_json::{Map, Value};

use crate::app::App;
use crate::auth::{Claims, check_claims};
use crate::clock::now_ms;
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
    let ext_len = ext.map_or(0, |e| {
        serde_json::to_vec(e).map(|v| v.len()).unwrap_or(usize::MAX)
    });
    if ext_len > MAX_USER_EXT_BYTES {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!("ext is {ext_len} bytes encoded; the limit is {MAX_USER_EXT_BYTES}"),
        ));
    }
    Ok(())
}

fn user_not_found(id: &UserId) -> Error {
    Error::new(ErrorCode::UserNotFound, format!("no user {id}"))
}

impl App {
    /// Creates a user.
    pub async fn create_user(&self, request: CreateUser) -> Result<User> {
        check_profile(
            request.nickname.as_ref(),
            request.avatar_url.as_ref(),
            request.ext.as_ref(),
        )?;
        Ok(self
            .store
            .create_user(NewUser {
                id: request.id,
                nickname: request.nickname,
                avatar_url: request.avatar_url,
                ext: request.ext,
                now: now_ms(),
            })
            .await?)
    }

    /// Reads a user.
    pub async fn get_user(&self, id: &UserId) -> Result<User> {
        let record = self
            .store
            .get_user(id)
            .await?
            .ok_or_else(|| user_not_found(id))?;
        Ok(record.user)
    }

    /// Updates a user's profile.
    pub async fn update_user(&self, id: &UserId, update: UpdateUser) -> Result<User> {
        check_profile(
            update.nickname.as_ref().and_then(Option::as_ref),
            update.avatar_url.as_ref().and_then(Option::as_ref),
            update.ext.as_ref().and_then(Option::as_ref),
        )?;
        Ok(self.store.update_user(id, update, now_ms()).await?)
    }

    /// Deletes a user and kicks their devices.
    pub async fn delete_user(&self, id: &UserId) -> Result<KickedDevices> {
        if !self.store.delete_user(id).await? {
            return Err(user_not_found(id));
        }
        let kicked = self
            .sessions
            .kick_all(id, KickReason::UserDeleted, "the user was deleted");
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
        let record = self
            .store
            .get_user(id)
            .await?
            .ok_or_else(|| user_not_found(id))?;
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
        self.store.revoke_tokens(id).await?;
        let kicked = self.sessions.kick_all(
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
        let record = self
            .store
            .get_user(user)
            .await?
            .ok_or_else(|| user_not_found(user))?;
        check_claims(&claims, user, record.token_generation)?;
        Ok(claims)
    }
}
