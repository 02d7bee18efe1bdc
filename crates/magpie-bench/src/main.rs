//! `magpie-bench`: see the library crate (`magpie_bench`) for the scenarios and
//! `crates/magpie-bench/README.md` for usage.

use std::process::ExitCode;

use clap::Parser;
use magpie_bench::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the runtime and before any child is spawned, so that a spawned server inherits
    // the raised limit.
    let fd_limit = magpie_bench::raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(cli::run(cli, fd_limit)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
