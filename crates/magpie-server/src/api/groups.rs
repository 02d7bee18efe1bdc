//! `/v1/groups…`: groups as the app backend manages them. The backend acts with every right
//! (owner and more): it names the owner at creation and adds members without invitations.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use magpie_proto::group::{
    CreateGroupRequest, GroupIds, GroupPageRequest, KickRequest, MembersRequest, UpdateGroupRequest,
};
use magpie_proto::{ErrorCode, GroupId, UserId};
use serde::Deserialize;

use super::extract::{Json, MAX_BODY_BYTES, PathGroup, PathGroupUser, PathUser};
use crate::app::App;
use crate::error::{Error, Result};
use crate::groups::Actor;

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/groups", post(create))
        .route("/groups/{id}", get(read).patch(update).delete(destroy))
        .route("/groups/{id}/members", post(add_members).get(members))
        .route("/groups/{id}/members/{user}", delete(remove_member))
        .route("/groups/{id}/messages", post(send_message))
        .route("/users/{id}/groups", get(joined))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

async fn create(
    State(app): State<Arc<App>>,
    Json(body): Json<CreateGroupRequest>,
) -> Result<Response> {
    let group = app.create_group(&Actor::Backend, body).await?;
    Ok((StatusCode::CREATED, axum::Json(group)).into_response())
}

async fn read(State(app): State<Arc<App>>, PathGroup(id): PathGroup) -> Result<Response> {
    let mut list = app
        .group_info(
            &Actor::Backend,
            GroupIds {
                group_ids: vec![id.clone()],
            },
        )
        .await?;
    let group = list
        .groups
        .pop()
        .ok_or_else(|| Error::new(ErrorCode::GroupNotFound, format!("no group {id}")))?;
    Ok(axum::Json(group).into_response())
}

async fn update(
    State(app): State<Arc<App>>,
    PathGroup(id): PathGroup,
    Json(body): Json<UpdateGroupRequest>,
) -> Result<Response> {
    if body.group_id.as_ref().is_some_and(|g| *g != id) {
        return Err(Error::bad_request(
            "group_id in the body differs from the path",
        ));
    }
    Ok(axum::Json(app.update_group(&Actor::Backend, &id, body).await?).into_response())
}

async fn destroy(State(app): State<Arc<App>>, PathGroup(id): PathGroup) -> Result<Response> {
    Ok(axum::Json(app.destroy_group(&Actor::Backend, &id).await?).into_response())
}

/// `POST /v1/groups/{id}/messages`: a message the backend posts on behalf of a member.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostMessage {
    from: UserId,
    client_msg_id: String,
    content: magpie_proto::MessageContent,
    #[serde(default)]
    ext: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    mentions: Option<magpie_proto::Mentions>,
}

/// Sends as `from`, under the same rules as a device of theirs (member, not muted); their
/// devices all get the message, as none of them sent it.
async fn send_message(
    State(app): State<Arc<App>>,
    PathGroup(id): PathGroup,
    Json(body): Json<PostMessage>,
) -> Result<Response> {
    let origin = crate::messaging::Origin {
        user: body.from,
        session: None,
        send_order: None,
    };
    let request = magpie_proto::frame::SendRequest {
        to: magpie_proto::Peer::Group(id),
        client_msg_id: body.client_msg_id,
        content: body.content,
        ext: body.ext,
        mentions: body.mentions,
    };
    let sent = app.send_message(&origin, request).await?;
    let status = if sent.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(sent)).into_response())
}

/// `POST /v1/groups/{id}/members`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMembers {
    user_ids: Vec<UserId>,
}

async fn add_members(
    State(app): State<Arc<App>>,
    PathGroup(id): PathGroup,
    Json(body): Json<AddMembers>,
) -> Result<Response> {
    let request = magpie_proto::group::InviteRequest {
        group_id: id,
        user_ids: body.user_ids,
        message: None,
    };
    Ok(axum::Json(app.invite(&Actor::Backend, request).await?).into_response())
}

/// Query of `GET /v1/groups/{id}/members`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembersQuery {
    role: Option<magpie_proto::group::GroupRole>,
    after: Option<UserId>,
    limit: Option<u32>,
}

async fn members(
    State(app): State<Arc<App>>,
    PathGroup(id): PathGroup,
    Query(query): Query<MembersQuery>,
) -> Result<Response> {
    let request = MembersRequest {
        group_id: id,
        role: query.role,
        after: query.after,
        limit: query.limit,
    };
    Ok(axum::Json(app.group_members(&Actor::Backend, request).await?).into_response())
}

async fn remove_member(
    State(app): State<Arc<App>>,
    PathGroupUser(group, user): PathGroupUser,
) -> Result<Response> {
    let request = KickRequest {
        group_id: group,
        user_ids: vec![user],
        ban_seconds: None,
    };
    Ok(axum::Json(app.kick(&Actor::Backend, request).await?).into_response())
}

/// Query of `GET /v1/users/{id}/groups`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinedQuery {
    after: Option<GroupId>,
    limit: Option<u32>,
}

async fn joined(
    State(app): State<Arc<App>>,
    PathUser(user): PathUser,
    Query(query): Query<JoinedQuery>,
) -> Result<Response> {
    let request = GroupPageRequest {
        query: None,
        after: query.after,
        limit: query.limit,
    };
    Ok(axum::Json(app.joined_groups(&user, request).await?).into_response())
}
