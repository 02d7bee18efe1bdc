//! The REST API for the app backend: users and tokens, app-secret authentication, input
//! validation, routing errors, and the operational endpoints (`/healthz`, `/metrics`,
//! `/openapi.json`).

#![allow(clippy::unwrap_used)]

use magpie_testkit::{TEST_SECRET, TestServer, metric};
use serde_json::{Value, json};

/// A request with full control over the body and the credentials; returns status and body
/// (JSON when it parses, else the text).
async fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    secret: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = server
        .http()
        .request(method, format!("{}{path}", server.http_url()));
    if let Some(secret) = secret {
        request = request.bearer_auth(secret);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// The answer is an error with this status and code.
fn assert_error(answer: &(u16, Value), status: u16, code: u16) {
    assert_eq!(answer.0, status, "{answer:?}");
    assert_eq!(answer.1["code"], code, "{answer:?}");
    assert!(
        answer.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{answer:?}"
    );
}

async fn get_user(server: &TestServer, id: &str) -> (u16, Value) {
    server.rest("GET", &format!("/v1/users/{id}"), None).await
}

#[tokio::test]
async fn creating_a_user_answers_201_with_the_profile() {
    let server = TestServer::start().await;
    let body = json!({"id": "alice", "nickname": "Alice", "avatar_url": "https://x/a.png",
                      "ext": {"level": 3}});
    let (status, user) = server.rest("POST", "/v1/users", Some(body)).await;
    assert_eq!(status, 201, "{user}");
    assert_eq!(user["id"], "alice");
    assert_eq!(user["nickname"], "Alice");
    assert_eq!(user["avatar_url"], "https://x/a.png");
    assert_eq!(user["ext"], json!({"level": 3}));
    assert!(user["created_at"].as_i64().unwrap() > 0);
    assert_eq!(user["created_at"], user["updated_at"]);
    assert_eq!(get_user(&server, "alice").await, (200, user));
}

#[tokio::test]
async fn creating_an_existing_user_is_a_conflict_and_leaves_it_unaltered() {
    let server = TestServer::start().await;
    let (_, original) = server
        .rest(
            "POST",
            "/v1/users",
            Some(json!({"id": "alice", "nickname": "First"})),
        )
        .await;
    let again = server
        .rest(
            "POST",
            "/v1/users",
            Some(json!({"id": "alice", "nickname": "Second", "ext": {"x": 1}})),
        )
        .await;
    assert_error(&again, 409, 3003);
    assert_eq!(get_user(&server, "alice").await, (200, original));
}

#[tokio::test]
async fn patching_a_user_keeps_absent_fields_and_clears_null_ones() {
    let server = TestServer::start().await;
    let body = json!({"id": "alice", "nickname": "Alice", "avatar_url": "https://x/a.png",
                      "ext": {"k": "v"}});
    let (_, created) = server.rest("POST", "/v1/users", Some(body)).await;

    let (status, patched) = server
        .rest(
            "PATCH",
            "/v1/users/alice",
            Some(json!({"nickname": "Ally"})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["nickname"], "Ally");
    assert_eq!(patched["avatar_url"], "https://x/a.png");
    assert_eq!(patched["ext"], json!({"k": "v"}));
    assert_eq!(patched["created_at"], created["created_at"]);
    assert!(patched["updated_at"].as_i64() >= created["updated_at"].as_i64());

    let (status, cleared) = server
        .rest(
            "PATCH",
            "/v1/users/alice",
            Some(json!({"avatar_url": null, "ext": null})),
        )
        .await;
    assert_eq!(status, 200, "{cleared}");
    assert_eq!(cleared["nickname"], "Ally");
    assert_eq!(cleared["avatar_url"], Value::Null);
    assert_eq!(cleared["ext"], Value::Null);
    assert_eq!(get_user(&server, "alice").await, (200, cleared));

    let missing = server
        .rest("PATCH", "/v1/users/ghost", Some(json!({"nickname": "x"})))
        .await;
    assert_error(&missing, 404, 3001);
}

#[tokio::test]
async fn deleting_a_user_makes_it_not_found() {
    let server = TestServer::start().await;
    server.create_user("alice").await;
    let (status, body) = server.rest("DELETE", "/v1/users/alice", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"kicked_devices": 0}));
    assert_error(&get_user(&server, "alice").await, 404, 3001);
    assert_error(
        &server.rest("DELETE", "/v1/users/alice", None).await,
        404,
        3001,
    );
    assert_error(
        &server.rest("POST", "/v1/users/alice/tokens", None).await,
        404,
        3001,
    );
}

#[tokio::test]
async fn a_missing_or_wrong_app_secret_is_unauthenticated() {
    let server = TestServer::start().await;
    server.create_user("alice").await;
    let create = r#"{"id": "mallory"}"#;
    for secret in [None, Some("wrong-secret-0123456789abcdef"), Some("")] {
        assert_error(
            &call(&server, "GET", "/v1/users/alice", secret, None).await,
            401,
            2000,
        );
        assert_error(
            &call(&server, "POST", "/v1/users", secret, Some(create)).await,
            401,
            2000,
        );
        assert_error(
            &call(&server, "DELETE", "/v1/users/alice", secret, None).await,
            401,
            2000,
        );
    }
    // A different scheme carrying the right secret is not accepted either.
    let (status, _) = {
        let response = server
            .http()
            .get(format!("{}/v1/users/alice", server.http_url()))
            .header("authorization", format!("Basic {TEST_SECRET}"))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), ())
    };
    assert_eq!(status, 401);
    // Nothing was created or deleted.
    assert_eq!(get_user(&server, "alice").await.0, 200);
    assert_error(&get_user(&server, "mallory").await, 404, 3001);
}

#[tokio::test]
async fn malformed_or_mistyped_bodies_are_bad_requests_and_change_nothing() {
    let server = TestServer::start().await;
    let (_, alice) = server
        .rest(
            "POST",
            "/v1/users",
            Some(json!({"id": "alice", "nickname": "Alice"})),
        )
        .await;
    let secret = Some(TEST_SECRET);
    let bad_creates = [
        "{not json",
        "[]",
        r#"{"nickname": "no id"}"#,
        r#"{"id": 5}"#,
        r#"{"id": "bob", "nickname": 5}"#,
        r#"{"id": "bob", "ext": [1]}"#,
        r#"{"id": "bob", "admin": true}"#,
        r#"{"id": "bad id"}"#,
        r#"{"id": ""}"#,
    ];
    for body in bad_creates {
        let answer = call(&server, "POST", "/v1/users", secret, Some(body)).await;
        assert_error(&answer, 400, 1000);
    }
    let bad_patches = [
        "{oops",
        r#"{"nickname": 5}"#,
        r#"{"ext": "text"}"#,
        r#"{"id": "renamed"}"#,
    ];
    for body in bad_patches {
        let answer = call(&server, "PATCH", "/v1/users/alice", secret, Some(body)).await;
        assert_error(&answer, 400, 1000);
    }
    // A body that is not declared as JSON is refused too.
    let response = server
        .http()
        .post(format!("{}/v1/users", server.http_url()))
        .bearer_auth(TEST_SECRET)
        .body(r#"{"id": "bob"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], 1000);

    assert_eq!(get_user(&server, "alice").await, (200, alice));
    assert_error(&get_user(&server, "bob").await, 404, 3001);
}

#[tokio::test]
async fn an_invalid_user_id_in_the_path_is_a_bad_request() {
    let server = TestServer::start().await;
    let long = "x".repeat(65);
    for path in [
        "/v1/users/bad%20id".to_owned(),
        "/v1/users/a:b".to_owned(),
        format!("/v1/users/{long}"),
        "/v1/users/%C3%A9/tokens".to_owned(),
    ] {
        let method = if path.ends_with("tokens") {
            "POST"
        } else {
            "GET"
        };
        assert_error(&server.rest(method, &path, None).await, 400, 1000);
    }
}

#[tokio::test]
async fn oversized_profile_fields_are_too_large() {
    let server = TestServer::start().await;
    server.create_user("alice").await;
    let long_nickname = json!({"id": "bob", "nickname": "n".repeat(129)});
    assert_error(
        &server.rest("POST", "/v1/users", Some(long_nickname)).await,
        413,
        4000,
    );
    let big_ext = json!({"id": "bob", "ext": {"blob": "e".repeat(4096)}});
    assert_error(
        &server.rest("POST", "/v1/users", Some(big_ext)).await,
        413,
        4000,
    );
    let long_url = json!({"avatar_url": format!("https://x/{}", "u".repeat(2048))});
    assert_error(
        &server
            .rest("PATCH", "/v1/users/alice", Some(long_url))
            .await,
        413,
        4000,
    );
    let huge_body = json!({"id": "bob", "nickname": "n".repeat(70 * 1024)});
    assert_error(
        &server.rest("POST", "/v1/users", Some(huge_body)).await,
        413,
        4000,
    );
    // Exactly at the limits is fine.
    let (status, body) = server
        .rest(
            "POST",
            "/v1/users",
            Some(json!({"id": "bob", "nickname": "n".repeat(128)})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        get_user(&server, "alice").await.1["avatar_url"],
        Value::Null
    );
}

#[tokio::test]
async fn tokens_are_issued_within_the_allowed_lifetimes() {
    let server = TestServer::start().await;
    server.create_user("alice").await;
    let max = server.config().auth.max_token_ttl_secs;

    let (status, issued) = server
        .rest(
            "POST",
            "/v1/users/alice/tokens",
            Some(json!({"ttl_seconds": 60})),
        )
        .await;
    assert_eq!(status, 200, "{issued}");
    assert_eq!(issued["user_id"], "alice");
    assert_eq!(issued["token"].as_str().unwrap().split('.').count(), 3);
    let expires_in = issued["expires_at"].as_i64().unwrap() - now_ms();
    assert!((58_000..=61_000).contains(&expires_in), "{expires_in}");

    // No body and an empty object both mean the default lifetime.
    for body in [None, Some("{}")] {
        let (status, issued) = call(
            &server,
            "POST",
            "/v1/users/alice/tokens",
            Some(TEST_SECRET),
            body,
        )
        .await;
        assert_eq!(status, 200, "{issued}");
        let default = server.config().auth.default_token_ttl_secs as i64 * 1000;
        let expires_in = issued["expires_at"].as_i64().unwrap() - now_ms();
        assert!(
            (default - 2_000..=default).contains(&expires_in),
            "{issued}"
        );
    }

    for body in [
        json!({"ttl_seconds": 0}),
        json!({"ttl_seconds": max + 1}),
        json!({"ttl_seconds": -5}),
        json!({"ttl_seconds": "long"}),
        json!({"ttl": 60}),
    ] {
        let answer = server
            .rest("POST", "/v1/users/alice/tokens", Some(body.clone()))
            .await;
        assert_error(&answer, 400, 1000);
    }
    assert_error(
        &server
            .rest(
                "POST",
                "/v1/users/ghost/tokens",
                Some(json!({"ttl_seconds": 60})),
            )
            .await,
        404,
        3001,
    );
    assert_error(
        &server.rest("DELETE", "/v1/users/ghost/tokens", None).await,
        404,
        3001,
    );
}

#[tokio::test]
async fn unknown_routes_are_404_unknown_op_and_wrong_methods_405() {
    let server = TestServer::start().await;
    server.create_user("alice").await;
    for path in ["/v1/nothing", "/v2/users", "/", "/v1/users/alice/friends"] {
        assert_error(&server.rest("GET", path, None).await, 404, 1001);
    }
    for (method, path) in [
        ("PUT", "/v1/users/alice"),
        ("GET", "/v1/users"),
        ("GET", "/v1/users/alice/tokens"),
        ("POST", "/healthz"),
        ("DELETE", "/metrics"),
    ] {
        let answer = server.rest(method, path, None).await;
        assert_error(&answer, 405, 1001);
    }
    assert_eq!(get_user(&server, "alice").await.0, 200);
}

#[tokio::test]
async fn a_plain_http_request_to_the_websocket_endpoint_is_a_json_bad_request() {
    let server = TestServer::start().await;
    // As through a proxy that drops the `Upgrade` headers.
    let answer = call(&server, "GET", "/v1/ws", None, None).await;
    assert_error(&answer, 400, 1000);
    assert!(
        answer.1["message"].as_str().unwrap().contains("upgrade"),
        "{answer:?}"
    );
    assert_error(
        &call(&server, "POST", "/v1/ws", None, None).await,
        405,
        1001,
    );
}

#[tokio::test]
async fn healthz_says_ok_with_the_version() {
    let server = TestServer::start().await;
    let (status, body) = call(&server, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn metrics_count_stored_messages_and_errors_by_code() {
    let server = TestServer::start().await;
    let read = |text: &str, name: &str| metric(text, name).unwrap_or_else(|| panic!("{name}"));
    let unknown_op = r#"magpie_errors_total{code="1001",name="unknown_op"}"#;
    let unauthenticated = r#"magpie_errors_total{code="2000",name="unauthenticated"}"#;
    let before = server.metrics().await;

    let token = server.user_with_token("alice").await;
    server.create_user("bob").await;
    let mut alice = server.raw_login("alice", &token, "phone", "ios").await;
    for n in 0..3 {
        let sent = alice
            .send_text_message("bob", &format!("m{n}"), "counted")
            .await;
        assert_eq!(sent["type"], "response");
    }
    let retry = alice.send_text_message("bob", "m0", "counted").await;
    assert_eq!(retry["data"]["duplicate"], true);
    for _ in 0..2 {
        let error = alice.request("teleport", json!({})).await;
        assert_eq!(error["error"]["code"], 1001);
    }
    assert_error(&server.rest("GET", "/v1/nowhere", None).await, 404, 1001);
    assert_error(
        &call(&server, "GET", "/v1/users/alice", None, None).await,
        401,
        2000,
    );

    let after = server.metrics().await;
    let delta = |name: &str| read(&after, name) - read(&before, name);
    assert_eq!(delta("magpie_messages_stored_total"), 3.0);
    assert_eq!(delta("magpie_messages_duplicate_total"), 1.0);
    assert_eq!(delta("magpie_logins_total"), 1.0);
    assert_eq!(
        delta(unknown_op),
        3.0,
        "two over the gateway, one over REST"
    );
    assert_eq!(delta(unauthenticated), 1.0);
    assert_eq!(read(&after, "magpie_sessions"), 1.0);
    assert!(after.contains("# TYPE magpie_messages_stored_total counter"));
}

#[tokio::test]
async fn every_operation_in_the_openapi_document_exists_on_the_router() {
    let server = TestServer::start().await;
    let (status, spec) = call(&server, "GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(spec["openapi"], "3.1.0", "{spec}");
    let paths = spec["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path.replace("{id}", "nobody");
        for (method, operation) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            operations += 1;
            assert!(operation["responses"].is_object(), "{method} {path}");
            let body = matches!(method.as_str(), "post" | "patch").then_some("{}");
            let (status, answer) = call(
                &server,
                &method.to_uppercase(),
                &concrete,
                Some(TEST_SECRET),
                body,
            )
            .await;
            let unrouted = (status == 404 && answer["code"] == 1001) || status == 405;
            assert!(
                !unrouted,
                "{method} {path} is documented but not routed: {status} {answer}"
            );
            let documented = operation["responses"]
                .as_object()
                .unwrap()
                .contains_key(&status.to_string());
            assert!(
                documented,
                "{method} {path} answered {status}, which is not documented: {answer}"
            );
        }
    }
    assert!(operations >= 9, "only {operations} operations documented");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
