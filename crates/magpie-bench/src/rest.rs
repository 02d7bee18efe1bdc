//! Users and tokens through the REST API (`docs/PROTOCOL.md` §8), created concurrently.
//!
//! Every scenario that logs devices in first creates its users and issues one token per user
//! here; `group` also creates its group and adds the members here, as an app backend would. A user that already exists (409) counts as created, so a scenario can be re-run
//! against the same server.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use magpie_proto::group::{
    CreateGroupRequest, GroupInfo, GroupOptionsPatch, InviteOutcome, InviteResponse,
};
use magpie_proto::rest::IssuedToken;
use magpie_proto::{GroupId, UserId};
use serde_json::json;

use crate::progress::Progress;

/// How many REST calls run at once by default.
pub const DEFAULT_CONCURRENCY: usize = 64;

/// A REST client authenticated with the app secret.
#[derive(Clone, Debug)]
pub struct Admin {
    http: reqwest::Client,
    base: String,
    secret: String,
}

impl Admin {
    /// A client for the server at `base` (`http://host:port`).
    pub fn new(base: &str, secret: &str) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(DEFAULT_CONCURRENCY * 2)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            secret: secret.to_owned(),
        }
    }

    /// Whether `/healthz` answers 200.
    pub async fn healthy(&self) -> bool {
        matches!(
            self.http.get(format!("{}/healthz", self.base)).send().await,
            Ok(r) if r.status().is_success()
        )
    }

    /// Creates a user; one that already exists is fine.
    pub async fn create_user(&self, id: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/v1/users", self.base))
            .bearer_auth(&self.secret)
            .json(&json!({ "id": id }))
            .send()
            .await
            .with_context(|| format!("POST /v1/users {id}"))?;
        let status = response.status().as_u16();
        if status == 201 || status == 409 {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        bail!("creating user {id}: HTTP {status}: {body}")
    }

    /// Issues a token for a user with the server's default lifetime.
    pub async fn issue_token(&self, id: &str) -> anyhow::Result<String> {
        let response = self
            .http
            .post(format!("{}/v1/users/{id}/tokens", self.base))
            .bearer_auth(&self.secret)
            .send()
            .await
            .with_context(|| format!("POST /v1/users/{id}/tokens"))?;
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.text().await.unwrap_or_default();
            bail!("issuing a token for {id}: HTTP {status}: {body}");
        }
        let issued: IssuedToken = response
            .json()
            .await
            .with_context(|| format!("token answer for {id}"))?;
        Ok(issued.token)
    }

    /// Creates a group owned by `owner` with up to 100 further `members` (`POST /v1/groups`,
    /// the backend's way: no invitations to accept). `max_members` raises the group's limit
    /// (up to the server's) when given.
    pub async fn create_group(
        &self,
        group_id: &str,
        owner: &str,
        members: &[String],
        max_members: Option<u32>,
    ) -> anyhow::Result<GroupInfo> {
        let request = CreateGroupRequest {
            group_id: Some(
                GroupId::new(group_id).map_err(|e| anyhow!("group id {group_id:?}: {e}"))?,
            ),
            name: group_id.to_owned(),
            avatar_url: None,
            introduction: None,
            ext: None,
            options: GroupOptionsPatch {
                max_members,
                ..GroupOptionsPatch::default()
            },
            members: user_ids(members)?,
            owner: Some(UserId::new(owner).map_err(|e| anyhow!("user id {owner:?}: {e}"))?),
        };
        let response = self
            .http
            .post(format!("{}/v1/groups", self.base))
            .bearer_auth(&self.secret)
            .json(&request)
            .send()
            .await
            .with_context(|| format!("POST /v1/groups {group_id}"))?;
        let status = response.status().as_u16();
        if status != 201 {
            let body = response.text().await.unwrap_or_default();
            bail!("creating group {group_id}: HTTP {status}: {body}");
        }
        response
            .json()
            .await
            .with_context(|| format!("group answer for {group_id}"))
    }

    /// Adds up to 100 users to a group (`POST /v1/groups/{id}/members`); fails unless each
    /// one is added (or was a member already).
    pub async fn add_group_members(&self, group_id: &str, users: &[String]) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/v1/groups/{group_id}/members", self.base))
            .bearer_auth(&self.secret)
            .json(&json!({ "user_ids": users }))
            .send()
            .await
            .with_context(|| format!("POST /v1/groups/{group_id}/members"))?;
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.text().await.unwrap_or_default();
            bail!("adding members to {group_id}: HTTP {status}: {body}");
        }
        let answer: InviteResponse = response
            .json()
            .await
            .with_context(|| format!("members answer for {group_id}"))?;
        if let Some(refused) = answer.results.iter().find(|r| {
            !matches!(
                r.outcome,
                InviteOutcome::Added | InviteOutcome::AlreadyMember
            )
        }) {
            bail!(
                "adding {} to {group_id}: {:?}",
                refused.user_id,
                refused.outcome
            );
        }
        Ok(())
    }

    /// A group's info (`GET /v1/groups/{id}`).
    pub async fn group(&self, group_id: &str) -> anyhow::Result<GroupInfo> {
        let response = self
            .http
            .get(format!("{}/v1/groups/{group_id}", self.base))
            .bearer_auth(&self.secret)
            .send()
            .await
            .with_context(|| format!("GET /v1/groups/{group_id}"))?;
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.text().await.unwrap_or_default();
            bail!("reading group {group_id}: HTTP {status}: {body}");
        }
        response
            .json()
            .await
            .with_context(|| format!("group answer for {group_id}"))
    }

    /// Creates every user and issues one token each, `concurrency` calls at a time, with a
    /// progress bar. Returns the tokens in the order of `ids`.
    pub async fn users_with_tokens(
        &self,
        ids: &[String],
        concurrency: usize,
        progress: &Progress,
    ) -> anyhow::Result<Vec<String>> {
        let bar = progress.bar(ids.len() as u64, "users");
        let mut results: Vec<(usize, anyhow::Result<String>)> =
            futures_util::stream::iter(ids.iter().enumerate())
                .map(|(i, id)| {
                    let bar = bar.clone();
                    async move {
                        let result = async {
                            self.create_user(id).await?;
                            self.issue_token(id).await
                        }
                        .await;
                        bar.inc(1);
                        (i, result)
                    }
                })
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
        bar.finish_and_clear();
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, r)| r).collect()
    }
}

fn user_ids(ids: &[String]) -> anyhow::Result<Vec<UserId>> {
    ids.iter()
        .map(|id| UserId::new(id.as_str()).map_err(|e| anyhow!("user id {id:?}: {e}")))
        .collect()
}
