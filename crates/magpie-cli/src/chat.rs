//! `magpie send` and `magpie listen`: chatting through the SDK, as a device of a user.
//! `listen` also prints the user's group events (see `group::event_line`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use magpie_sdk::{
    Client, ClientConfig, ClientEvent, DeviceId, Message, MessageContent, Platform, UserId,
};
use serde_json::{Value, json};

use crate::output;

/// Who the CLI logs in as, and where.
#[derive(Debug, Args)]
pub(crate) struct Identity {
    /// Server URL (ws://, wss://, http:// or https://).
    #[arg(long, env = "MAGPIE_SERVER", default_value = "ws://127.0.0.1:8080")]
    server: String,
    /// The user to log in as.
    #[arg(long, env = "MAGPIE_USER")]
    user: String,
    /// A token for that user (`magpie admin token <user>`).
    #[arg(long, env = "MAGPIE_TOKEN", hide_env_values = true)]
    token: String,
    /// This device's id.
    #[arg(long, env = "MAGPIE_DEVICE", default_value = "magpie-cli")]
    device: String,
    /// Where the SDK keeps its local cache (a directory per user inside)
    /// [default: $HOME/.local/share/magpie].
    #[arg(long, env = "MAGPIE_CLI_DATA")]
    data: Option<PathBuf>,
}

impl Identity {
    pub(crate) async fn login(&self) -> anyhow::Result<(Client, magpie_sdk::Events)> {
        let user = UserId::new(&self.user)?;
        let device = DeviceId::new(&self.device)?;
        let data = self.data.clone().unwrap_or_else(default_data_dir);
        let config = ClientConfig::builder(&self.server, data)
            .device_id(device)
            .platform(Platform::Linux)
            .client_version(concat!("magpie-cli/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let client = Client::new(config)?;
        let events = client.events();
        client.login(user, self.token.clone()).await?;
        Ok((client, events))
    }
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/magpie"),
        None => PathBuf::from(".magpie-cli"),
    }
}

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    identity: Identity,
    /// The recipient's user id.
    to: String,
    /// The text.
    text: String,
    /// Give up after this many seconds without an answer.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

pub(crate) async fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    let to = UserId::new(&args.to)?;
    let (client, _events) = args.identity.login().await?;
    let sent = tokio::time::timeout(
        Duration::from_secs(args.timeout),
        client
            .chat()
            .send(to, MessageContent::text(args.text), None),
    )
    .await
    .context("no answer from the server in time; the message stays queued in the local outbox")??;
    output::line(&message_line(&sent));
    client.logout().await?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub(crate) struct ListenArgs {
    #[command(flatten)]
    identity: Identity,
    /// Exit after printing this many lines (messages and group events).
    #[arg(long)]
    count: Option<u64>,
    /// Exit after this many seconds (fails if `--count` was not reached).
    #[arg(long)]
    timeout: Option<u64>,
}

pub(crate) async fn listen(args: ListenArgs) -> anyhow::Result<ExitCode> {
    let (client, mut events) = args.identity.login().await?;
    let deadline = args
        .timeout
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut printed = 0u64;
    while args.count.is_none_or(|n| printed < n) {
        let next = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => events.recv().await,
        };
        match next {
            Some(ClientEvent::MessageReceived(message)) => {
                output::line(&message_line(&message));
                printed += 1;
            }
            Some(ClientEvent::GroupChanged(event)) => {
                output::line(&crate::group::event_line(&event));
                printed += 1;
            }
            Some(ClientEvent::Kicked { reason, message }) => {
                anyhow::bail!("kicked by the server ({reason:?}): {message}");
            }
            Some(ClientEvent::TokenExpired) => anyhow::bail!("the token expired"),
            Some(_) => {}
            None => anyhow::bail!("the client stopped"),
        }
    }
    let _ = client.logout().await;
    match args.count {
        Some(n) if printed < n => anyhow::bail!("timed out after {printed} of {n} lines"),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// A message as one flat JSON line: easy to filter with `jq`.
fn message_line(message: &Message) -> Value {
    let content = serde_json::to_value(&message.content).unwrap_or(Value::Null);
    let magpie_sdk::Peer::User(to) = &message.to;
    json!({
        "id": message.id,
        "seq": message.seq,
        "conversation_id": message.conversation_id,
        "from": message.from,
        "to": to,
        "client_msg_id": message.client_msg_id,
        "type": content["type"],
        "body": content["body"],
        "ext": message.ext,
        "server_time": message.server_time,
    })
}
