use std::fmt;

/// What kind of failure a [`StoreError`] is; the server maps it to a protocol error code.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StoreErrorKind {
    /// The addressed user does not exist.
    UserNotFound,
    /// The addressed conversation does not exist for this user.
    ConversationNotFound,
    /// A unique key is taken, or a guarded write found a newer version.
    Conflict,
    /// The addressed group does not exist.
    GroupNotFound,
    /// A user named as a member is not one.
    NotMember,
    /// The group would exceed its maximum membership.
    GroupFull,
    /// A user to be added is on the group's block list.
    Blocked,
    /// The store is closed or its backend is unreachable; retrying later may work.
    Unavailable,
    /// Anything else: a bug or corrupted data.
    Internal,
}

/// A storage failure with a stable kind and a description for logs.
#[derive(Debug, thiserror::Error)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

impl StoreError {
    /// A new error.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The kind, to match on.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The description.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn internal(e: impl fmt::Display) -> Self {
        Self::new(StoreErrorKind::Internal, e.to_string())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                Self::new(StoreErrorKind::Unavailable, e.to_string())
            }
            other => Self::internal(other),
        }
    }
}
