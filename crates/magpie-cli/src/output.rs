//! How the CLI prints: data as JSON lines on stdout, errors as JSON on stderr.

use std::io::Write;
use std::process::ExitCode;

use magpie_proto::ErrorBody;
use serde_json::{Value, json};

/// Prints one JSON object as a line on stdout and flushes, so pipes see it at once.
pub(crate) fn line(value: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// Prints an error and returns the failing exit status.
pub(crate) fn fail(error: &anyhow::Error) -> ExitCode {
    // A server refusal through the SDK carries the server's body too.
    let server = error
        .downcast_ref::<magpie_sdk::Error>()
        .and_then(magpie_sdk::Error::server_error);
    let body = match error.downcast_ref::<ErrorBody>().or(server) {
        Some(body) => {
            json!({"code": body.code.as_u16(), "name": body.code.name(), "message": body.message})
        }
        None => json!({"message": format!("{error:#}")}),
    };
    eprintln!("{}", json!({ "error": body }));
    ExitCode::FAILURE
}
