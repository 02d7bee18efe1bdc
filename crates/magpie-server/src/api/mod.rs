//! The HTTP surface: the REST API for the app backend, the WebSocket endpoint, and the
//! operational endpoints (`/healthz`, `/metrics`, `/openapi.json`).
//!
//! Owns routing, app-secret authentication and the translation of HTTP inputs into domain
//! calls; every error leaves as `{"code", "message"}` with the code's HTTP status.

mod extract;
mod groups;
mod openapi;
mod users;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use magpie_proto::rest::Health;
use magpie_proto::{ErrorBody, ErrorCode};

use crate::app::App;
use crate::error::body_response;
use crate::gateway;

/// Every route of the server.
pub(crate) fn router(app: Arc<App>) -> Router {
    let v1 = users::routes()
        .merge(groups::routes())
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            require_app_secret,
        ))
        .route("/ws", get(gateway::upgrade));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::document))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), count_errors))
        .with_state(app)
}

async fn require_app_secret(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(secret) if constant_time_eq(secret.as_bytes(), app.app_secret.as_bytes()) => {
            next.run(request).await
        }
        Some(_) => body_response(ErrorBody::new(
            ErrorCode::Unauthenticated,
            "wrong app secret",
        )),
        None => body_response(ErrorBody::new(
            ErrorCode::Unauthenticated,
            "missing `Authorization: Bearer <app secret>` header",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts every error answer by code, whichever layer produced it.
async fn count_errors(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if let Some(code) = response.extensions().get::<ErrorCode>() {
        app.metrics.error(*code);
    }
    response
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let health = Health {
        status: if app.shutdown.is_cancelled() {
            "shutting_down"
        } else {
            "ok"
        }
        .into(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let status = if app.shutdown.is_cancelled() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(health)).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(app.sessions.online()),
    )
        .into_response()
}

async fn not_found() -> Response {
    body_response(ErrorBody::new(
        ErrorCode::UnknownOp,
        "no such route; see /openapi.json",
    ))
}

async fn method_not_allowed() -> Response {
    let mut response = body_response(ErrorBody::new(
        ErrorCode::UnknownOp,
        "method not allowed on this route; see /openapi.json",
    ));
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}
