//! `magpie`: run the server, administer it over its REST API, and chat from a terminal or a
//! script. Wherever it prints data, it prints one JSON object per line on stdout; errors go to
//! stderr as `{"error": {"code", "name", "message"}}` with a non-zero exit status.

mod admin;
mod chat;
mod group;
mod output;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc keeps many small per-connection allocations compact and is cheaper than glibc's
/// allocator under the gateway's allocation pattern (measured in docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Magpie: a self-hosted instant-messaging server, its administration and a chat client.
#[derive(Debug, Parser)]
#[command(name = "magpie", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (embedded storage in ./magpie-data by default).
    Serve(serve::ServeArgs),
    /// Manage users and tokens through the REST API (needs the app secret).
    Admin(admin::AdminArgs),
    /// Send one text message to a user, or to a group with `--group`, and print the stored
    /// message.
    Send(chat::SendArgs),
    /// Log in, sync, and print every received message (one-to-one and group), group event and
    /// group read count as it arrives.
    Listen(chat::ListenArgs),
    /// Manage groups as a user: create, info, join, invite, kick, leave, members, mute.
    Group(group::GroupArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return output::fail(&anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Admin(args) => admin::run(args).await,
            Command::Send(args) => chat::send(args).await,
            Command::Listen(args) => chat::listen(args).await,
            Command::Group(args) => group::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => output::fail(&e),
    }
}
