//! `magpie group …`: group management through the SDK, as a device of a user. Every command
//! logs in, makes its requests, prints one JSON object per line and logs out.

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use magpie_sdk::proto::group::{CreateGroupRequest, GroupOptionsPatch, MembersRequest};
use magpie_sdk::{GroupEvent, GroupId, GroupMember, GroupRole, JoinPolicy, UserId};
use serde_json::{Value, json};

use crate::chat::Identity;
use crate::output;

#[derive(Debug, Args)]
pub(crate) struct GroupArgs {
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Create a group owned by the user and print it.
    Create {
        #[command(flatten)]
        identity: Identity,
        /// Display name.
        name: String,
        /// The group id (the server picks one if absent).
        #[arg(long)]
        id: Option<String>,
        /// A first member besides the owner, added directly (repeatable).
        #[arg(long = "member", value_name = "USER")]
        members: Vec<String>,
        /// Who may join without an invitation.
        #[arg(long, value_enum)]
        join_policy: Option<Policy>,
        /// Largest membership.
        #[arg(long)]
        max_members: Option<u32>,
        /// A description.
        #[arg(long)]
        introduction: Option<String>,
    },
    /// Print groups (unknown ones are left out).
    Info {
        #[command(flatten)]
        identity: Identity,
        /// Group ids.
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// Join an open group, or apply to one that needs approval.
    Join {
        #[command(flatten)]
        identity: Identity,
        /// The group id.
        group: String,
        /// For the group's managers, when it needs approval.
        #[arg(long)]
        message: Option<String>,
    },
    /// Invite users (or add them, when the group does not ask invitees to accept); prints one
    /// outcome per user.
    Invite {
        #[command(flatten)]
        identity: Identity,
        /// The group id.
        group: String,
        /// The users.
        #[arg(required = true)]
        users: Vec<String>,
        /// For the invitees.
        #[arg(long)]
        message: Option<String>,
    },
    /// Remove members.
    Kick {
        #[command(flatten)]
        identity: Identity,
        /// The group id.
        group: String,
        /// The members.
        #[arg(required = true)]
        users: Vec<String>,
        /// Also bar them from rejoining for this many seconds.
        #[arg(long, value_name = "SECONDS")]
        ban: Option<u64>,
    },
    /// Leave a group.
    Leave {
        #[command(flatten)]
        identity: Identity,
        /// The group id.
        group: String,
    },
    /// Print every member, one per line, by user id.
    Members {
        #[command(flatten)]
        identity: Identity,
        /// The group id.
        group: String,
        /// Only members with this role.
        #[arg(long, value_enum)]
        role: Option<Role>,
    },
    /// Mute members for a while (`--seconds 0` unmutes).
    Mute {
        #[command(flatten)]
        identity: Identity,
        /// The group id.
        group: String,
        /// The members.
        #[arg(required = true)]
        users: Vec<String>,
        /// For how long.
        #[arg(long, default_value_t = 3600)]
        seconds: u64,
    },
}

/// `--join-policy`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Policy {
    Open,
    Approval,
    InviteOnly,
}

/// `--role`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Role {
    Owner,
    Admin,
    Member,
}

fn users(ids: &[String]) -> anyhow::Result<Vec<UserId>> {
    Ok(ids.iter().map(UserId::new).collect::<Result<_, _>>()?)
}

/// Any wire type as JSON (they all serialize; `Null` is unreachable in practice).
macro_rules! to_json {
    ($value:expr) => {
        serde_json::to_value($value).unwrap_or(Value::Null)
    };
}

/// A member as one line, with its group.
fn member_line(group: &GroupId, member: &GroupMember) -> Value {
    let mut line = json!({ "group_id": group });
    if let (Some(line), Value::Object(member)) = (line.as_object_mut(), to_json!(member)) {
        line.extend(member);
    }
    line
}

/// A `group` event as one line, as on the wire plus `"event": "group"` (what `magpie listen`
/// prints; message lines have no `event` field).
pub(crate) fn event_line(event: &GroupEvent) -> Value {
    let mut line = json!({ "event": "group" });
    if let (Some(line), Value::Object(event)) = (line.as_object_mut(), to_json!(event)) {
        line.extend(event);
    }
    line
}

pub(crate) async fn run(args: GroupArgs) -> anyhow::Result<ExitCode> {
    let identity = match &args.command {
        GroupCommand::Create { identity, .. }
        | GroupCommand::Info { identity, .. }
        | GroupCommand::Join { identity, .. }
        | GroupCommand::Invite { identity, .. }
        | GroupCommand::Kick { identity, .. }
        | GroupCommand::Leave { identity, .. }
        | GroupCommand::Members { identity, .. }
        | GroupCommand::Mute { identity, .. } => identity,
    };
    let (client, _events) = identity.login().await?;
    let result = execute(&client.groups(), args.command).await;
    let _ = client.logout().await;
    result.map(|()| ExitCode::SUCCESS)
}

async fn execute(groups: &magpie_sdk::GroupManager, command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::Create {
            identity: _,
            name,
            id,
            members,
            join_policy,
            max_members,
            introduction,
        } => {
            let request = CreateGroupRequest {
                group_id: id.map(GroupId::new).transpose()?,
                name,
                avatar_url: None,
                introduction,
                ext: None,
                options: GroupOptionsPatch {
                    join_policy: join_policy.map(|p| match p {
                        Policy::Open => JoinPolicy::Open,
                        Policy::Approval => JoinPolicy::Approval,
                        Policy::InviteOnly => JoinPolicy::InviteOnly,
                    }),
                    max_members,
                    ..GroupOptionsPatch::default()
                },
                members: users(&members)?,
                owner: None,
            };
            output::line(&to_json!(&groups.create(request).await?));
        }
        GroupCommand::Info {
            identity: _,
            groups: ids,
        } => {
            let ids = ids
                .into_iter()
                .map(GroupId::new)
                .collect::<Result<_, _>>()?;
            for info in groups.info(ids).await? {
                output::line(&to_json!(&info));
            }
        }
        GroupCommand::Join {
            identity: _,
            group,
            message,
        } => {
            let group = GroupId::new(group)?;
            let answer = groups.join(&group, message).await?;
            let mut line = json!({ "group_id": group, "joined": answer.joined });
            if let Some(application) = answer.application {
                line["application"] = to_json!(&application);
            }
            output::line(&line);
        }
        GroupCommand::Invite {
            identity: _,
            group,
            users: ids,
            message,
        } => {
            let group = GroupId::new(group)?;
            let answer = groups.invite(&group, users(&ids)?, message).await?;
            for result in answer.results {
                output::line(&json!({
                    "group_id": group,
                    "user_id": result.user_id,
                    "outcome": result.outcome,
                }));
            }
        }
        GroupCommand::Kick {
            identity: _,
            group,
            users: ids,
            ban,
        } => {
            let group = GroupId::new(group)?;
            let ids = users(&ids)?;
            groups.kick(&group, ids.clone(), ban).await?;
            output::line(&json!({ "group_id": group, "kicked": ids, "ban_seconds": ban }));
        }
        GroupCommand::Leave { identity: _, group } => {
            let group = GroupId::new(group)?;
            groups.leave(&group).await?;
            output::line(&json!({ "group_id": group, "left": true }));
        }
        GroupCommand::Members {
            identity: _,
            group,
            role,
        } => {
            let group = GroupId::new(group)?;
            let role = role.map(|r| match r {
                Role::Owner => GroupRole::Owner,
                Role::Admin => GroupRole::Admin,
                Role::Member => GroupRole::Member,
            });
            let mut after = None;
            loop {
                let page = groups
                    .members(MembersRequest {
                        group_id: group.clone(),
                        role,
                        after: after.take(),
                        limit: Some(500),
                    })
                    .await?;
                for member in &page.members {
                    output::line(&member_line(&group, member));
                }
                after = page.members.last().map(|m| m.user_id.clone());
                if !page.has_more || after.is_none() {
                    break;
                }
            }
        }
        GroupCommand::Mute {
            identity: _,
            group,
            users: ids,
            seconds,
        } => {
            let group = GroupId::new(group)?;
            let ids = users(&ids)?;
            groups.mute(&group, ids.clone(), seconds).await?;
            output::line(&json!({ "group_id": group, "muted": ids, "seconds": seconds }));
        }
    }
    Ok(())
}
