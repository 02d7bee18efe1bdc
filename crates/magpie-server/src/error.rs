//! The server's error type and its single mapping to protocol codes and HTTP statuses.
//!
//! Client-caused failures carry their [`ErrorBody`] as is. Storage failures are mapped by
//! kind; internal details are logged here, once, and never sent to clients.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use magpie_proto::{ErrorBody, ErrorCode};
use magpie_store::{StoreError, StoreErrorKind};

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client's fault, or a state the client must know about.
    #[error(transparent)]
    Client(#[from] ErrorBody),
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Result alias for the server.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A client error with a code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Client(ErrorBody::new(code, message))
    }

    /// Shorthand for `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Client(body) => body.code,
            Self::Store(e) => match e.kind() {
                StoreErrorKind::UserNotFound => ErrorCode::UserNotFound,
                StoreErrorKind::ConversationNotFound => ErrorCode::ConversationNotFound,
                StoreErrorKind::Conflict => ErrorCode::Conflict,
                StoreErrorKind::GroupNotFound => ErrorCode::GroupNotFound,
                StoreErrorKind::NotMember => ErrorCode::NotGroupMember,
                StoreErrorKind::GroupFull => ErrorCode::GroupFull,
                StoreErrorKind::Blocked => ErrorCode::BlockedFromGroup,
                StoreErrorKind::Unavailable => ErrorCode::Unavailable,
                StoreErrorKind::Internal => ErrorCode::Internal,
            },
        }
    }

    /// What the client is told.
    pub fn to_body(&self) -> ErrorBody {
        match self {
            Self::Client(body) => body.clone(),
            Self::Store(e) => {
                let code = self.code();
                let message = match code {
                    ErrorCode::Internal => {
                        tracing::error!(error = %e, "store failure");
                        "internal error".to_owned()
                    }
                    ErrorCode::Unavailable => {
                        tracing::warn!(error = %e, "store unavailable");
                        "storage is unavailable, retry later".to_owned()
                    }
                    _ => e.message().to_owned(),
                };
                ErrorBody::new(code, message)
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        body_response(self.to_body())
    }
}

/// An error body as an HTTP response with the code's status. The code rides along in the
/// response extensions so the metrics layer can count it.
pub(crate) fn body_response(body: ErrorBody) -> Response {
    let status =
        StatusCode::from_u16(body.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let code = body.code;
    let mut response = (status, axum::Json(body)).into_response();
    response.extensions_mut().insert(code);
    response
}
