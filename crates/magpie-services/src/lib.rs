//! Test support: real backing services — PostgreSQL and NATS — started on `127.0.0.1` at a
//! random free port in a temporary directory, and stopped (then deleted) when dropped.
//!
//! Tests that need a service ask for it through [`postgres_or_skip`] or [`nats_or_skip`]: the
//! one place that decides what happens when a program is not installed. By default the test
//! prints why and skips itself (returns early); with `MAGPIE_REQUIRE_SERVICES=1` (CI) it panics
//! instead, so a missing install cannot turn a suite green by skipping it. A service that is
//! installed but fails to start always panics, with the tail of the service's log.
//!
//! # Layout
//!
//! - [`Postgres`]: `initdb` (once per machine into a cached template, copied per instance) and
//!   `postgres`, trust auth. Run as the `postgres` OS user when the process is root, since
//!   PostgreSQL refuses to run as root.
//! - [`Nats`]: `nats-server`, optionally with JetStream.
//! - `process`: finding programs, free ports, running as another user, stopping processes.

mod nats;
mod postgres;
mod process;

use std::fmt;

pub use nats::Nats;
pub use postgres::Postgres;
pub use process::pid_alive;

/// Why a service could not be provided.
#[derive(Debug)]
pub enum ServiceError {
    /// The program is not installed (not on `PATH`).
    NotFound {
        /// The missing program.
        program: &'static str,
        /// The package that provides it.
        package: &'static str,
    },
    /// The service was found but could not be started, stopped or queried.
    Failed {
        /// Which service.
        service: &'static str,
        /// What went wrong.
        reason: String,
        /// The last lines of the service's log, if it wrote one.
        log_tail: String,
    },
}

impl ServiceError {
    pub(crate) fn failed(service: &'static str, reason: impl Into<String>) -> Self {
        Self::Failed {
            service,
            reason: reason.into(),
            log_tail: String::new(),
        }
    }

    pub(crate) fn with_log(self, log_tail: String) -> Self {
        match self {
            Self::Failed {
                service, reason, ..
            } => Self::Failed {
                service,
                reason,
                log_tail,
            },
            other => other,
        }
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound { program, package } => {
                write!(f, "{program} not found (install {package})")
            }
            Self::Failed {
                service,
                reason,
                log_tail,
            } => {
                write!(f, "{service}: {reason}")?;
                if !log_tail.is_empty() {
                    write!(f, "\n--- {service} log (tail) ---\n{log_tail}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ServiceError {}

/// The environment variable that turns a missing service from a skip into a failure.
pub const REQUIRE_ENV: &str = "MAGPIE_REQUIRE_SERVICES";

/// Whether missing services must fail tests instead of skipping them (`MAGPIE_REQUIRE_SERVICES=1`).
pub fn services_required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Starts a PostgreSQL for `test`, or `None` (after saying why) when PostgreSQL is not
/// installed.
///
/// # Panics
///
/// When PostgreSQL is installed but does not start, or when it is missing and
/// `MAGPIE_REQUIRE_SERVICES=1`.
pub fn postgres_or_skip(test: &str) -> Option<Postgres> {
    or_skip(test, Postgres::start())
}

/// Starts a NATS server for `test`, or `None` (after saying why) when `nats-server` is not
/// installed.
///
/// # Panics
///
/// When `nats-server` is installed but does not start, or when it is missing and
/// `MAGPIE_REQUIRE_SERVICES=1`.
pub fn nats_or_skip(test: &str) -> Option<Nats> {
    or_skip(test, Nats::start())
}

/// The skip/require policy, in one place.
fn or_skip<T>(test: &str, started: Result<T, ServiceError>) -> Option<T> {
    match started {
        Ok(service) => Some(service),
        Err(e @ ServiceError::NotFound { .. }) => {
            let reason = format!("skipping {test}: {e}");
            if services_required() {
                panic!("{reason}, and {REQUIRE_ENV}=1 requires it");
            }
            eprintln!("{reason}");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_skips_and_a_failure_panics() {
        let missing: Result<(), _> = Err(ServiceError::NotFound {
            program: "nats-server",
            package: "nats-server",
        });
        if !services_required() {
            assert!(or_skip("t", missing).is_none());
        }
        let failed: Result<(), _> =
            Err(ServiceError::failed("nats", "boom").with_log("last line".into()));
        let panic = std::panic::catch_unwind(|| or_skip("t", failed)).expect_err("must panic");
        let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            text.contains("boom") && text.contains("last line"),
            "{text}"
        );
    }
}
