//! `magpie admin …`: users and tokens over the REST API.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use magpie_proto::rest::IssuedToken;
use magpie_proto::{ErrorBody, ErrorCode};
use serde_json::{Value, json};

use crate::output;

#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    /// Server base URL.
    #[arg(
        long,
        env = "MAGPIE_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    server: String,
    /// The app secret.
    #[arg(long, env = "MAGPIE_APP_SECRET", hide_env_values = true, global = true)]
    secret: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Users.
    #[command(subcommand)]
    User(UserCommand),
    /// Issue a token for a user and print it alone on stdout.
    Token {
        /// The user id.
        id: String,
        /// Lifetime in seconds (server default if absent).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Revoke every token of a user (their online devices are kicked).
    Revoke {
        /// The user id.
        id: String,
    },
    /// Print the server's health; with `--wait`, keep trying until it answers.
    Health {
        /// Seconds to keep trying before giving up.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user and print it.
    Create {
        /// The user id.
        id: String,
        /// Display name.
        #[arg(long)]
        nickname: Option<String>,
        /// Avatar URL.
        #[arg(long)]
        avatar_url: Option<String>,
    },
    /// Print a user.
    Get {
        /// The user id.
        id: String,
    },
    /// Delete a user (their online devices are kicked).
    Delete {
        /// The user id.
        id: String,
    },
}

pub(crate) async fn run(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let base = http_base(&args.server);
    let http = reqwest::Client::new();
    let command = match args.command {
        AdminCommand::Health { wait } => {
            output::line(&health(&http, &base, wait).await?);
            return Ok(ExitCode::SUCCESS);
        }
        other => other,
    };
    let secret = args
        .secret
        .context("the app secret is needed: pass --secret or set MAGPIE_APP_SECRET")?;
    let api = Api { base, secret, http };
    match command {
        AdminCommand::Health { .. } => {}
        AdminCommand::User(UserCommand::Create {
            id,
            nickname,
            avatar_url,
        }) => {
            let mut body = json!({ "id": id });
            if let Some(nickname) = nickname {
                body["nickname"] = json!(nickname);
            }
            if let Some(avatar_url) = avatar_url {
                body["avatar_url"] = json!(avatar_url);
            }
            output::line(
                &api.call(reqwest::Method::POST, "/v1/users", Some(body))
                    .await?,
            );
        }
        AdminCommand::User(UserCommand::Get { id }) => {
            output::line(
                &api.call(reqwest::Method::GET, &format!("/v1/users/{id}"), None)
                    .await?,
            );
        }
        AdminCommand::User(UserCommand::Delete { id }) => {
            let answer = api
                .call(reqwest::Method::DELETE, &format!("/v1/users/{id}"), None)
                .await?;
            output::line(&json!({"deleted": id, "kicked_devices": answer["kicked_devices"]}));
        }
        AdminCommand::Token { id, ttl } => {
            let body = ttl.map(|ttl| json!({ "ttl_seconds": ttl }));
            let answer = api
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/users/{id}/tokens"),
                    body,
                )
                .await?;
            let issued: IssuedToken =
                serde_json::from_value(answer).context("unexpected token answer")?;
            // The token alone, so `$(magpie admin token alice)` works in scripts.
            println!("{}", issued.token);
        }
        AdminCommand::Revoke { id } => {
            let answer = api
                .call(
                    reqwest::Method::DELETE,
                    &format!("/v1/users/{id}/tokens"),
                    None,
                )
                .await?;
            output::line(&json!({"revoked": id, "kicked_devices": answer["kicked_devices"]}));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn health(http: &reqwest::Client, base: &str, wait_secs: u64) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait_secs);
    loop {
        let attempt = async {
            let response = http.get(format!("{base}/healthz")).send().await?;
            let ok = response.status().is_success();
            let body: Value = response.json().await?;
            anyhow::Ok((ok, body))
        };
        match attempt.await {
            Ok((true, body)) => return Ok(body),
            Ok((false, body)) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("the server is not healthy: {body}")
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!("cannot reach the server at {base}")));
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

/// Accepts `ws://` / `wss://` too, since the same URL serves devices and the API.
fn http_base(server: &str) -> String {
    let server = server.trim_end_matches('/');
    if let Some(rest) = server.strip_prefix("ws://") {
        format!("http://{rest}")
    } else if let Some(rest) = server.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    }
}

struct Api {
    base: String,
    secret: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.secret);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .context("cannot read the server's answer")?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).context("the server's answer is not JSON");
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(body.into()),
            Err(_) => Err(ErrorBody::new(
                ErrorCode::Internal,
                format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
            )
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::http_base;

    #[test]
    fn server_urls_become_http_bases() {
        assert_eq!(http_base("ws://h:1/"), "http://h:1");
        assert_eq!(http_base("wss://h"), "https://h");
        assert_eq!(http_base("https://h:2"), "https://h:2");
        assert_eq!(http_base("h:3"), "http://h:3");
    }
}
