//! Mapping driver errors to [`StoreErrorKind`]s: anything that says "the database is not
//! reachable right now" is `Unavailable` (retry later), the rest is `Internal`.

use std::time::Duration;

use crate::{StoreError, StoreErrorKind};

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_unavailable(&e) {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("PostgreSQL unavailable: {e}"),
            )
        } else {
            StoreError::new(StoreErrorKind::Internal, format!("PostgreSQL: {e}"))
        }
    }
}

fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let code = code.code();
        // 08: connection exceptions; 53: insufficient resources (too many connections, disk
        // full); 57P: the server is shutting down, crashed, or not accepting connections yet
        // (57P01 is what pg_terminate_backend sends); 40001/40P01: serialization failure or
        // deadlock, which a retry resolves; 55P03: a lock was not available in time.
        return code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P")
            || matches!(code, "40001" | "40P01" | "55P03");
    }
    // No SQLSTATE: an I/O failure (refused, reset, broken pipe) or a dropped connection.
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The error of an operation that did not finish within its time budget.
pub(super) fn timed_out(what: &str, budget: Duration) -> StoreError {
    StoreError::new(
        StoreErrorKind::Unavailable,
        format!("PostgreSQL did not answer {what} within {budget:?}"),
    )
}

/// The error of every call on a closed store.
pub(super) fn closed() -> StoreError {
    StoreError::new(StoreErrorKind::Unavailable, "store is closed")
}
