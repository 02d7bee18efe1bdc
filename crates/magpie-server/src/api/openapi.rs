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

fn body(schema: &str, required: bool) -> Value {
    json!({"required": required, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

/// The document.
pub(super) fn spec() -> Value {
    let not_found = [("404", "user_not_found")];
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Magpie REST API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The API an app backend uses to manage Magpie users and tokens. Every /v1 route needs `Authorization: Bearer <app secret>`. Errors are `{code, message}` with the stable codes of docs/PROTOCOL.md."
        },
        "components": {
            "securitySchemes": {"appSecret": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "UserId": {"type": "string", "pattern": "^[A-Za-z0-9_.@-]{1,64}$"},
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
