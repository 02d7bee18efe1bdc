//! The OpenAPI 3.1 document of the REST API, served at `/openapi.json`.
//!
//! Written by hand next to the routes it describes; a test in `tests/rest_api.rs` checks that
//! every documented operation exists on the router.

use axum::Json;
use serde_json::{Value, json};

fn error_responses(codes: &[(&str, &str)]) -> Value {
    let mut responses = serde_json::Map::new();
    for (status, description) in codes {
        responses.insert(
            (*status).to_owned(),
            json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    Value::Object(responses)
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn ok(status: &str, schema: &str) -> Value {
    json!({status: {"description": "success", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}})
}

const AUTH_ERRORS: &[(&str, &str)] = &[
    ("400", "bad_request"),
    ("401", "unauthenticated: missing or wrong app secret"),
];

fn user_path_param() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"$ref": "#/components/schemas/UserId"}})
}

fn group_path_param() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"$ref": "#/components/schemas/GroupId"}})
}

fn body(schema: &str, required: bool) -> Value {
    json!({"required": required, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

/// The document.
pub(super) fn spec() -> Value {
    let not_found = [("404", "user_not_found")];
    let group_not_found = [("404", "group_not_found")];
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Magpie REST API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The API an app backend uses to manage Magpie users, tokens and groups. Every /v1 route needs `Authorization: Bearer <app secret>`. Errors are `{code, message}` with the stable codes of docs/PROTOCOL.md."
        },
        "components": {
            "securitySchemes": {"appSecret": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "UserId": {"type": "string", "pattern": "^[A-Za-z0-9_.@-]{1,64}$"},
                "GroupId": {"type": "string", "pattern": "^[A-Za-z0-9_.@-]{1,64}$"},
                "GroupOptions": {
                    "type": "object", "additionalProperties": false,
                    "properties": {
                        "join_policy": {"type": "string", "enum": ["open", "approval", "invite_only"]},
                        "invite_needs_accept": {"type": "boolean"},
                        "members_can_invite": {"type": "boolean"},
                        "max_members": {"type": "integer", "minimum": 2},
                        "history_visible_to_new_members": {"type": "boolean"}
                    }
                },
                "GroupInfo": {
                    "type": "object",
                    "required": ["group_id", "name", "owner", "options", "all_muted", "member_count", "version", "created_at", "updated_at"],
                    "properties": {
                        "group_id": {"$ref": "#/components/schemas/GroupId"},
                        "name": {"type": "string", "maxLength": 100},
                        "avatar_url": {"type": "string"},
                        "introduction": {"type": "string", "maxLength": 4096},
                        "announcement": {"type": "string", "maxLength": 4096},
                        "ext": {"$ref": "#/components/schemas/Ext"},
                        "owner": {"$ref": "#/components/schemas/UserId"},
                        "options": {"$ref": "#/components/schemas/GroupOptions"},
                        "all_muted": {"type": "boolean"},
                        "member_count": {"type": "integer"},
                        "version": {"type": "integer", "description": "bumped by every change"},
                        "created_at": {"type": "integer"},
                        "updated_at": {"type": "integer"}
                    }
                },
                "CreateGroup": {
                    "type": "object", "required": ["name", "owner"], "additionalProperties": false,
                    "properties": {
                        "group_id": {"$ref": "#/components/schemas/GroupId"},
                        "name": {"type": "string", "maxLength": 100},
                        "avatar_url": {"type": "string"},
                        "introduction": {"type": "string", "maxLength": 4096},
                        "ext": {"$ref": "#/components/schemas/Ext"},
                        "options": {"$ref": "#/components/schemas/GroupOptions"},
                        "members": {"type": "array", "items": {"$ref": "#/components/schemas/UserId"}, "maxItems": 100},
                        "owner": {"$ref": "#/components/schemas/UserId"}
                    }
                },
                "UpdateGroup": {
                    "type": "object", "additionalProperties": false,
                    "description": "Absent fields stay; null clears an optional field.",
                    "properties": {
                        "name": {"type": "string", "maxLength": 100},
                        "avatar_url": {"type": ["string", "null"]},
                        "introduction": {"type": ["string", "null"], "maxLength": 4096},
                        "announcement": {"type": ["string", "null"], "maxLength": 4096},
                        "ext": {"oneOf": [{"$ref": "#/components/schemas/Ext"}, {"type": "null"}]},
                        "options": {"$ref": "#/components/schemas/GroupOptions"}
                    }
                },
                "PostMessage": {
                    "type": "object", "required": ["from", "client_msg_id", "content"], "additionalProperties": false,
                    "properties": {
                        "from": {"$ref": "#/components/schemas/UserId"},
                        "client_msg_id": {"type": "string", "minLength": 1, "maxLength": 64},
                        "content": {"type": "object", "required": ["type", "body"], "description": "{type, body}: see docs/PROTOCOL.md, message types"},
                        "ext": {"$ref": "#/components/schemas/Ext"},
                        "mentions": {"type": "object", "properties": {
                            "user_ids": {"type": "array", "items": {"$ref": "#/components/schemas/UserId"}, "maxItems": 30},
                            "all": {"type": "boolean"}
                        }}
                    }
                },
                "Sent": {
                    "type": "object", "required": ["message", "duplicate"],
                    "properties": {
                        "message": {"type": "object", "description": "the message as stored (docs/PROTOCOL.md)"},
                        "duplicate": {"type": "boolean"}
                    }
                },
                "UserIds": {
                    "type": "object", "required": ["user_ids"], "additionalProperties": false,
                    "properties": {"user_ids": {"type": "array", "items": {"$ref": "#/components/schemas/UserId"}, "maxItems": 100}}
                },
                "InviteResults": {
                    "type": "object", "required": ["results"],
                    "properties": {"results": {"type": "array", "items": {
                        "type": "object", "required": ["user_id", "outcome"],
                        "properties": {
                            "user_id": {"$ref": "#/components/schemas/UserId"},
                            "outcome": {"type": "string", "enum": ["added", "invited", "already_member", "blocked", "user_not_found"]}
                        }
                    }}}
                },
                "GroupMember": {
                    "type": "object", "required": ["user_id", "role", "joined_at"],
                    "properties": {
                        "user_id": {"$ref": "#/components/schemas/UserId"},
                        "role": {"type": "string", "enum": ["owner", "admin", "member"]},
                        "joined_at": {"type": "integer"},
                        "nickname": {"type": "string"},
                        "attributes": {"type": "object"},
                        "muted_until": {"type": "integer"},
                        "allowed_when_all_muted": {"type": "boolean"}
                    }
                },
                "MembersPage": {
                    "type": "object", "required": ["members", "has_more"],
                    "properties": {"members": {"type": "array", "items": {"$ref": "#/components/schemas/GroupMember"}}, "has_more": {"type": "boolean"}}
                },
                "GroupPage": {
                    "type": "object", "required": ["groups", "has_more"],
                    "properties": {"groups": {"type": "array", "items": {"$ref": "#/components/schemas/GroupInfo"}}, "has_more": {"type": "boolean"}}
                },
                "Empty": {"type": "object"},
                "Ext": {"type": "object", "description": "Free-form app data, at most 4 KiB JSON-encoded.", "additionalProperties": true},
                "Error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "integer", "description": "Stable error code (docs/PROTOCOL.md §6)."},
                        "message": {"type": "string"},
                        "retry_after_ms": {"type": "integer", "minimum": 0}
                    }
                },
                "User": {
                    "type": "object", "required": ["id", "created_at", "updated_at"],
                    "properties": {
                        "id": {"$ref": "#/components/schemas/UserId"},
                        "nickname": {"type": ["string", "null"], "maxLength": 128},
                        "avatar_url": {"type": ["string", "null"], "maxLength": 2048},
                        "ext": {"oneOf": [{"$ref": "#/components/schemas/Ext"}, {"type": "null"}]},
                        "created_at": {"type": "integer", "description": "ms since the Unix epoch"},
                        "updated_at": {"type": "integer", "description": "ms since the Unix epoch"}
                    }
                },
                "CreateUser": {
                    "type": "object", "required": ["id"], "additionalProperties": false,
                    "properties": {
                        "id": {"$ref": "#/components/schemas/UserId"},
                        "nickname": {"type": "string", "maxLength": 128},
                        "avatar_url": {"type": "string", "maxLength": 2048},
                        "ext": {"$ref": "#/components/schemas/Ext"}
                    }
                },
                "UpdateUser": {
                    "type": "object", "additionalProperties": false,
                    "description": "Absent fields stay; null clears a field.",
                    "properties": {
                        "nickname": {"type": ["string", "null"], "maxLength": 128},
                        "avatar_url": {"type": ["string", "null"], "maxLength": 2048},
                        "ext": {"oneOf": [{"$ref": "#/components/schemas/Ext"}, {"type": "null"}]}
                    }
                },
                "IssueToken": {
                    "type": "object", "additionalProperties": false,
                    "properties": {"ttl_seconds": {"type": "integer", "minimum": 1}}
                },
                "IssuedToken": {
                    "type": "object", "required": ["user_id", "token", "expires_at"],
                    "properties": {
                        "user_id": {"$ref": "#/components/schemas/UserId"},
                        "token": {"type": "string"},
                        "expires_at": {"type": "integer", "description": "ms since the Unix epoch"}
                    }
                },
                "KickedDevices": {
                    "type": "object", "required": ["kicked_devices"],
                    "properties": {"kicked_devices": {"type": "integer", "minimum": 0}}
                },
                "Health": {
                    "type": "object", "required": ["status", "version"],
                    "properties": {"status": {"type": "string", "enum": ["ok", "shutting_down"]}, "version": {"type": "string"}}
                }
            }
        },
        "paths": {
            "/v1/users": {
                "post": {
                    "operationId": "createUser", "summary": "Create a user", "security": [{"appSecret": []}],
                    "requestBody": body("CreateUser", true),
                    "responses": merge(ok("201", "User"), error_responses(&[AUTH_ERRORS, &[("409", "conflict: the id is taken"), ("413", "too_large")]].concat()))
                }
            },
            "/v1/users/{id}": {
                "parameters": [user_path_param()],
                "get": {
                    "operationId": "getUser", "summary": "Read a user", "security": [{"appSecret": []}],
                    "responses": merge(ok("200", "User"), error_responses(&[AUTH_ERRORS, &not_found].concat()))
                },
                "patch": {
                    "operationId": "updateUser", "summary": "Update a user's profile", "security": [{"appSecret": []}],
                    "requestBody": body("UpdateUser", true),
                    "responses": merge(ok("200", "User"), error_responses(&[AUTH_ERRORS, &not_found, &[("413", "too_large")]].concat()))
                },
                "delete": {
                    "operationId": "deleteUser", "summary": "Delete a user and kick their devices", "security": [{"appSecret": []}],
                    "responses": merge(ok("200", "KickedDevices"), error_responses(&[AUTH_ERRORS, &not_found].concat()))
                }
            },
            "/v1/users/{id}/tokens": {
                "parameters": [user_path_param()],
                "post": {
                    "operationId": "issueToken", "summary": "Issue a device token", "security": [{"appSecret": []}],
                    "requestBody": body("IssueToken", false),
                    "responses": merge(ok("200", "IssuedToken"), error_responses(&[AUTH_ERRORS, &not_found].concat()))
                },
                "delete": {
                    "operationId": "revokeTokens", "summary": "Revoke every token issued so far and kick online devices", "security": [{"appSecret": []}],
                    "responses": merge(ok("200", "KickedDevices"), error_responses(&[AUTH_ERRORS, &not_found].concat()))
                }
            },
            "/v1/groups": {
                "post": {
                    "operationId": "createGroup", "summary": "Create a group owned by a user", "security": [{"appSecret": []}],
                    "requestBody": body("CreateGroup", true),
                    "responses": merge(ok("201", "GroupInfo"), error_responses(&[AUTH_ERRORS, &not_found, &[("409", "conflict: the id is taken; group_full"), ("413", "too_large")]].concat()))
                }
            },
            "/v1/groups/{id}": {
                "parameters": [group_path_param()],
                "get": {
                    "operationId": "getGroup", "summary": "Read a group", "security": [{"appSecret": []}],
                    "responses": merge(ok("200", "GroupInfo"), error_responses(&[AUTH_ERRORS, &group_not_found].concat()))
                },
                "patch": {
                    "operationId": "updateGroup", "summary": "Change a group's info, announcement or options", "security": [{"appSecret": []}],
                    "requestBody": body("UpdateGroup", true),
                    "responses": merge(ok("200", "GroupInfo"), error_responses(&[AUTH_ERRORS, &group_not_found, &[("413", "too_large")]].concat()))
                },
                "delete": {
                    "operationId": "destroyGroup", "summary": "Destroy a group", "security": [{"appSecret": []}],
                    "responses": merge(ok("200", "Empty"), error_responses(&[AUTH_ERRORS, &group_not_found].concat()))
                }
            },
            "/v1/groups/{id}/members": {
                "parameters": [group_path_param()],
                "post": {
                    "operationId": "addGroupMembers", "summary": "Add members directly (no invitation)", "security": [{"appSecret": []}],
                    "requestBody": body("UserIds", true),
                    "responses": merge(ok("200", "InviteResults"), error_responses(&[AUTH_ERRORS, &group_not_found, &[("409", "group_full"), ("413", "too_large")]].concat()))
                },
                "get": {
                    "operationId": "listGroupMembers", "summary": "A page of members by user id (query: role, after, limit)", "security": [{"appSecret": []}],
                    "responses": merge(ok("200", "MembersPage"), error_responses(&[AUTH_ERRORS, &group_not_found].concat()))
                }
            },
            "/v1/groups/{id}/members/{user}": {
                "parameters": [group_path_param(), {"name": "user", "in": "path", "required": true, "schema": {"$ref": "#/components/schemas/UserId"}}],
                "delete": {
                    "operationId": "removeGroupMember", "summary": "Remove a member", "security": [{"appSecret": []}],
                    "responses": merge(ok("200", "Empty"), error_responses(&[AUTH_ERRORS, &group_not_found, &[("403", "forbidden: the owner; not_group_member")]].concat()))
                }
            },
            "/v1/groups/{id}/messages": {
                "parameters": [group_path_param()],
                "post": {
                    "operationId": "postGroupMessage", "summary": "Post a message to a group on behalf of a member (the rules of a device of theirs apply); 201 when stored, 200 for a retry of a stored one", "security": [{"appSecret": []}],
                    "requestBody": body("PostMessage", true),
                    "responses": merge(merge(ok("201", "Sent"), ok("200", "Sent")), error_responses(&[AUTH_ERRORS, &group_not_found, &[("403", "not_group_member; muted"), ("413", "too_large")]].concat()))
                }
            },
            "/v1/users/{id}/groups": {
                "parameters": [user_path_param()],
                "get": {
                    "operationId": "listJoinedGroups", "summary": "A page of a user's groups (query: after, limit)", "security": [{"appSecret": []}],
                    "responses": merge(ok("200", "GroupPage"), error_responses(AUTH_ERRORS))
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health", "summary": "Liveness for load balancers (503 while shutting down)",
                    "responses": merge(ok("200", "Health"), ok("503", "Health"))
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics", "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}
                }
            },
            "/v1/ws": {
                "get": {
                    "operationId": "websocket", "summary": "WebSocket upgrade for devices (docs/PROTOCOL.md)",
                    "responses": merge(json!({"101": {"description": "switching protocols"}}), error_responses(&[("400", "unsupported_version: no offered subprotocol is spoken; bad_request: not a WebSocket upgrade")]))
                }
            }
        }
    })
}

pub(super) async fn document() -> Json<Value> {
    Json(spec())
}
