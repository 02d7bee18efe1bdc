//! The WebSocket gateway: one connection per device.
//!
//! Owns the upgrade (subprotocol negotiation, frame limits) and each connection's session
//! loop (login, heartbeats, token timers, request dispatch, event delivery, closing with the
//! right code). It must not hold business rules: requests are handed to the domain modules.

mod ratelimit;
mod session;

use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use magpie_proto::{Codec, ErrorBody};

use crate::app::App;
use crate::error::body_response;

/// Bytes the socket reads at once. Small, because idle connections dominate memory; larger
/// frames are assembled across reads.
const READ_BUFFER: usize = 1024;

/// `GET /v1/ws`: upgrades to a WebSocket session.
pub(crate) async fn upgrade(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Not a WebSocket handshake — often a proxy that drops the `Upgrade` headers. Answer in
    // the API's error format rather than axum's plain text.
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return body_response(ErrorBody::bad_request(format!(
                "not a WebSocket upgrade: {}",
                rejection.body_text()
            )));
        }
    };
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let codec = match Codec::negotiate(offered) {
        Ok(codec) => codec,
        Err(body) => return body_response(body),
    };
    if app.shutdown.is_cancelled() {
        return crate::error::Error::new(
            magpie_proto::ErrorCode::Unavailable,
            "server is shutting down",
        )
        .into_response();
    }
    let limits = &app.config.gateway;
    let mut ws = ws
        .read_buffer_size(READ_BUFFER)
        // Frames are buffered until a flush (the session flushes after each batch of events).
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(limits.hard_frame_bytes * 4)
        .max_message_size(limits.hard_frame_bytes)
        .max_frame_size(limits.hard_frame_bytes);
    if let Some(codec) = codec {
        ws = ws.protocols([codec.subprotocol()]);
        debug_assert!(
            ws.selected_protocol() == Some(&HeaderValue::from_static(codec.subprotocol()))
        );
    }
    let codec = codec.unwrap_or(Codec::Json);
    let tracker = app.tracker.clone();
    ws.on_upgrade(move |socket| tracker.track_future(session::run(socket, codec, app)))
}
