//! `/v1/users…`: user profiles and tokens for the app backend.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use magpie_proto::rest::{CreateUser, IssueToken, UpdateUser};

use super::extract::{Json, MAX_BODY_BYTES, PathUser};
use crate::app::App;
use crate::error::Result;

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/users", post(create))
        .route("/users/{id}", get(read).patch(update).delete(remove))
        .route(
            "/users/{id}/tokens",
            post(issue_token).delete(revoke_tokens),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

async fn create(State(app): State<Arc<App>>, Json(body): Json<CreateUser>) -> Result<Response> {
    let user = app.create_user(body).await?;
    Ok((StatusCode::CREATED, axum::Json(user)).into_response())
}

async fn read(State(app): State<Arc<App>>, PathUser(id): PathUser) -> Result<Response> {
    Ok(axum::Json(app.get_user(&id).await?).into_response())
}

async fn update(
    State(app): State<Arc<App>>,
    PathUser(id): PathUser,
    Json(body): Json<UpdateUser>,
) -> Result<Response> {
    Ok(axum::Json(app.update_user(&id, body).await?).into_response())
}

async fn remove(State(app): State<Arc<App>>, PathUser(id): PathUser) -> Result<Response> {
    Ok(axum::Json(app.delete_user(&id).await?).into_response())
}

/// The body is optional: no body (or `{}`) means the default lifetime.
async fn issue_token(
    State(app): State<Arc<App>>,
    PathUser(id): PathUser,
    body: axum::body::Bytes,
) -> Result<Response> {
    let request: IssueToken = if body.iter().all(u8::is_ascii_whitespace) {
        IssueToken::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| crate::error::Error::bad_request(format!("invalid body: {e}")))?
    };
    Ok(axum::Json(app.issue_token(&id, request.ttl_seconds).await?).into_response())
}

async fn revoke_tokens(State(app): State<Arc<App>>, PathUser(id): PathUser) -> Result<Response> {
    Ok(axum::Json(app.revoke_tokens(&id).await?).into_response())
}
