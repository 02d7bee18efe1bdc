//! The SDK's error type.
//!
//! Modelled on async-nats' `Error<Kind>`: one [`Error`] struct that carries a small `Copy`
//! [`ErrorKind`] to match on, the server's [`ErrorBody`] when the server said no, and the
//! underlying cause for logs. This module only defines the type; it never decides policy (what
//! is retried, what stops the reconnect loop) — that lives with the code that meets the error.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use magpie_proto::{ErrorBody, ErrorCode};

/// What went wrong, coarsely enough to match on.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The server answered with an error; [`Error::server_error`] has the body.
    Server(ErrorCode),
    /// The server did not answer within the request timeout.
    Timeout,
    /// There is no connection right now (or it dropped before the answer came).
    Disconnected,
    /// The client logged out or was dropped while the call was waiting.
    Closed,
    /// The call needs a logged-in user and there is none.
    NotLoggedIn,
    /// The call is not allowed in the client's current state (for example a second `login`).
    InvalidState,
    /// The local SQLite cache failed.
    Storage,
    /// The arguments were rejected before anything was sent.
    InvalidInput,
    /// This device was kicked; the SDK does not reconnect until the app logs in again.
    Kicked,
    /// The token expired; the SDK waits for [`Client::renew_token`](crate::Client::renew_token).
    TokenExpired,
    /// The server sent something this SDK could not understand.
    Protocol,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Server(code) => write!(f, "server error {code}"),
            Self::Timeout => f.write_str("timed out"),
            Self::Disconnected => f.write_str("disconnected"),
            Self::Closed => f.write_str("client closed"),
            Self::NotLoggedIn => f.write_str("not logged in"),
            Self::InvalidState => f.write_str("invalid state"),
            Self::Storage => f.write_str("local storage error"),
            Self::InvalidInput => f.write_str("invalid input"),
            Self::Kicked => f.write_str("kicked"),
            Self::TokenExpired => f.write_str("token expired"),
            Self::Protocol => f.write_str("protocol error"),
        }
    }
}

/// An SDK error: a kind, a message and, for server errors, the server's error body.
///
/// Cheap to clone, because one failure (a send rejected by the server) may have to be handed to
/// several waiters.
#[derive(Clone, Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    body: Option<ErrorBody>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of a kind with a message.
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            body: None,
            source: None,
        }
    }

    /// An error caused by another error.
    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            source: Some(Arc::new(source)),
            ..Self::new(kind, message)
        }
    }

    /// The server rejected a request.
    pub(crate) fn server(body: ErrorBody) -> Self {
        Self {
            kind: ErrorKind::Server(body.code),
            message: body.message.clone(),
            body: Some(body),
            source: None,
        }
    }

    pub(crate) fn storage(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        let message = source.to_string();
        Self::with_source(ErrorKind::Storage, message, source)
    }

    pub(crate) fn disconnected(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Disconnected, message)
    }

    pub(crate) fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Protocol, message)
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The server's error code, when the server rejected the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self.kind {
            ErrorKind::Server(code) => Some(code),
            _ => None,
        }
    }

    /// The server's error body, when the server rejected the request.
    pub fn server_error(&self) -> Option<&ErrorBody> {
        self.body.as_ref()
    }

    /// For `rate_limited`: how long to wait before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        self.body
            .as_ref()
            .and_then(|b| b.retry_after_ms)
            .map(Duration::from_millis)
    }

    /// The human-readable explanation (not stable; do not match on it).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}: {}", self.kind, self.message)
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.source {
            Some(source) => Some(source.as_ref()),
            None => self
                .body
                .as_ref()
                .map(|b| b as &(dyn std::error::Error + 'static)),
        }
    }
}

impl From<ErrorBody> for Error {
    /// Validation failures from `magpie-proto` (ids, content) are the caller's input errors.
    fn from(body: ErrorBody) -> Self {
        match body.code {
            ErrorCode::BadRequest => Self {
                kind: ErrorKind::InvalidInput,
                message: body.message.clone(),
                body: Some(body),
                source: None,
            },
            _ => Self::server(body),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Self::storage(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_expose_code_body_and_retry_hint() {
        let mut body = ErrorBody::new(ErrorCode::RateLimited, "slow down");
        body.retry_after_ms = Some(1500);
        let err = Error::server(body.clone());
        assert_eq!(err.kind(), ErrorKind::Server(ErrorCode::RateLimited));
        assert_eq!(err.code(), Some(ErrorCode::RateLimited));
        assert_eq!(err.server_error(), Some(&body));
        assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
        assert!(err.to_string().contains("rate_limited"), "{err}");
    }

    #[test]
    fn proto_validation_errors_become_invalid_input() {
        let err: Error = magpie_proto::UserId::new("a b")
            .expect_err("invalid")
            .into();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(err.code(), None);
    }
}
