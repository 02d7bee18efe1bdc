//! Extractors that turn bad HTTP input into protocol errors instead of axum's plain text.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use magpie_proto::{ErrorBody, ErrorCode, UserId};
use serde::de::DeserializeOwned;

use crate::error::Error;

/// Largest REST request body.
pub(super) const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON body; malformed JSON, wrong field types and unknown fields are `bad_request`,
/// an oversized body `too_large`.
pub(super) struct Json<T>(pub(super) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_error(&rejection)),
        }
    }
}

fn json_error(rejection: &JsonRejection) -> Error {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Error::new(
            ErrorCode::TooLarge,
            format!("request body is larger than {MAX_BODY_BYTES} bytes"),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            Error::bad_request("expected `Content-Type: application/json`")
        }
        _ => Error::bad_request(rejection.body_text()),
    }
}

/// A user id from the path, validated.
pub(super) struct PathUser(pub(super) UserId);

impl<S: Send + Sync> FromRequestParts<S> for PathUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| Error::bad_request(e.body_text()))?;
        UserId::new(raw)
            .map(Self)
            .map_err(|e: ErrorBody| Error::Client(e))
    }
}

/// A group id from the path, validated.
pub(super) struct PathGroup(pub(super) magpie_proto::GroupId);

impl<S: Send + Sync> FromRequestParts<S> for PathGroup {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| Error::bad_request(e.body_text()))?;
        magpie_proto::GroupId::new(raw)
            .map(Self)
            .map_err(|e: ErrorBody| Error::Client(e))
    }
}

/// A group id and a user id from the path (`/groups/{id}/members/{user}`), validated.
pub(super) struct PathGroupUser(pub(super) magpie_proto::GroupId, pub(super) UserId);

impl<S: Send + Sync> FromRequestParts<S> for PathGroupUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let axum::extract::Path((group, user)) =
            axum::extract::Path::<(String, String)>::from_request_parts(parts, state)
                .await
                .map_err(|e| Error::bad_request(e.body_text()))?;
        let group = magpie_proto::GroupId::new(group).map_err(Error::Client)?;
        let user = UserId::new(user).map_err(Error::Client)?;
        Ok(Self(group, user))
    }
}
