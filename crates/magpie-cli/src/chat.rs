//! `magpie send` and `magpie listen`: chatting through the SDK, as a device of a user, with
//! one user or a group. `listen` prints every message (one-to-one and group, timeline notices
//! included), the user's group events (see `group::event_line`) and the read counts of their
//! group messages (`group_read`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use magpie_sdk::{
    Client, ClientConfig, ClientEvent, DeviceId, GroupId, GroupReadEvent, Mentions, Message,
    MessageContent, Peer, Platform, UserId,
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
    /// The recipient's user id (left out with `--group`).
    #[arg(required_unless_present = "group")]
    to: Option<String>,
    /// The text.
    text: Option<String>,
    /// Send to this group instead of a user: `magpie send --group <id> <text>`.
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// Mention a member of the group (repeatable).
    #[arg(long = "mention", value_name = "USER", requires = "group")]
    mentions: Vec<String>,
    /// Mention everyone in the group.
    #[arg(long, requires = "group")]
    mention_all: bool,
    /// Give up after this many seconds without an answer.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

impl SendArgs {
    /// Who the message goes to, its text, and its mentions.
    fn target(&self) -> anyhow::Result<(Peer, String, Option<Mentions>)> {
        match (&self.group, &self.to, &self.text) {
            (Some(group), Some(text), None) => {
                let user_ids = self
                    .mentions
                    .iter()
                    .map(UserId::new)
                    .collect::<Result<Vec<_>, _>>()?;
                let mentions = Mentions {
                    user_ids,
                    all: self.mention_all,
                };
                Ok((
                    Peer::Group(GroupId::new(group)?),
                    text.clone(),
                    (!mentions.is_empty()).then_some(mentions),
                ))
            }
            (Some(_), _, _) => anyhow::bail!("with --group, give only the text"),
            (None, Some(to), Some(text)) => Ok((Peer::User(UserId::new(to)?), text.clone(), None)),
            (None, _, _) => anyhow::bail!("give the recipient and the text"),
        }
    }
}

pub(crate) async fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    let (to, text, mentions) = args.target()?;
    let (client, _events) = args.identity.login().await?;
    let sent = tokio::time::timeout(
        Duration::from_secs(args.timeout),
        client
            .chat()
            .send_to(to, MessageContent::text(text), None, mentions),
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
    /// Exit after printing this many lines (messages, group events and group read counts).
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
            Some(ClientEvent::GroupRead(event)) => {
                output::line(&group_read_line(&event));
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

/// A message as one flat JSON line: easy to filter with `jq`. `to` is the user or group id,
/// `to_kind` says which; `mentions` appear on group messages that have some.
fn message_line(message: &Message) -> Value {
    let content = serde_json::to_value(&message.content).unwrap_or(Value::Null);
    let to_kind = match &message.to {
        Peer::User(_) => "user",
        Peer::Group(_) => "group",
    };
    let mut line = json!({
        "id": message.id,
        "seq": message.seq,
        "conversation_id": message.conversation_id,
        "from": message.from,
        "to": message.to.id(),
        "to_kind": to_kind,
        "client_msg_id": message.client_msg_id,
        "type": content["type"],
        "body": content["body"],
        "ext": message.ext,
        "server_time": message.server_time,
    });
    if let (Some(mentions), Some(line)) = (&message.mentions, line.as_object_mut()) {
        line.insert(
            "mentions".into(),
            serde_json::to_value(mentions).unwrap_or(Value::Null),
        );
    }
    line
}

/// A `group_read` event: `{"event": "group_read", "conversation_id", "reader", "read_seq",
/// "messages": [{"seq", "read_count", "unread_count"}]}`.
fn group_read_line(event: &GroupReadEvent) -> Value {
    let mut line = json!({ "event": "group_read" });
    if let (Some(line), Ok(Value::Object(event))) =
        (line.as_object_mut(), serde_json::to_value(event))
    {
        line.extend(event);
    }
    line
}
