//! Bad frames: every malformed, mistyped or unknown request gets an error frame with the right
//! code (and its id and op echoed when they could be read), the connection keeps working, and
//! nothing already stored changes.

#![allow(clippy::unwrap_used)]

use magpie_proto::Codec;
use magpie_proto::codec::SUBPROTOCOL_MSGPACK;
use magpie_testkit::{Closed, RawClient, TestServer};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const CONVERSATION: &str = "c2c:alice:bob";

/// A server where alice (logged in) has already exchanged two messages with bob.
struct Fixture {
    server: TestServer,
    alice: RawClient,
    history: Value,
}

impl Fixture {
    async fn new() -> Self {
        Self::with_codec(None).await
    }

    async fn with_codec(subprotocol: Option<&str>) -> Self {
        let server = TestServer::start().await;
        let token = server.user_with_token("alice").await;
        server.create_user("bob").await;
        let mut alice = match subprotocol {
            Some(protocol) => server.raw_with(protocol).await,
            None => server.raw().await,
        };
        let login = alice.login("alice", &token, "a1", "ios").await;
        assert_eq!(login["type"], "response", "{login}");
        for (n, text) in ["first", "second"].into_iter().enumerate() {
            let sent = alice.send_text_message("bob", &format!("m{n}"), text).await;
            assert_eq!(sent["type"], "response", "{sent}");
        }
        let history = history(&mut alice).await;
        assert_eq!(history.as_array().unwrap().len(), 2);
        Self {
            server,
            alice,
            history,
        }
    }

    /// Sends a raw text frame and returns the next frame, which must be an error.
    async fn error_for_text(&mut self, text: &str) -> Value {
        self.alice.send_text(text).await;
        expect_error(self.alice.next_frame().await)
    }

    /// Sends a well-encoded frame and returns the next frame, which must be an error.
    async fn error_for(&mut self, frame: Value) -> Value {
        self.alice.send_value(&frame).await;
        expect_error(self.alice.next_frame().await)
    }

    /// The connection was closed with `code`, and the stored history is exactly as before.
    async fn assert_closed_unharmed(&mut self, code: u16) {
        assert_eq!(self.alice.closed().await, Closed::Code(code));
        let token = self.server.token("alice").await;
        let mut again = self.server.raw_login("alice", &token, "a1", "ios").await;
        assert_eq!(history(&mut again).await, self.history);
    }

    /// The connection still answers requests and the stored history is exactly as before.
    async fn assert_unharmed(&mut self) {
        let pong = self.alice.request("ping", json!({})).await;
        assert_eq!(pong["type"], "response", "{pong}");
        assert!(pong["data"]["server_time"].as_i64().unwrap() > 0);
        assert_eq!(history(&mut self.alice).await, self.history);
    }
}

fn expect_error(frame: Value) -> Value {
    assert_eq!(
        frame["type"], "error",
        "expected an error frame, got {frame}"
    );
    assert!(
        frame["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "an error needs a message: {frame}"
    );
    frame
}

async fn history(client: &mut RawClient) -> Value {
    let page = client
        .request(
            "get_messages",
            json!({"conversation_id": CONVERSATION, "limit": 200}),
        )
        .await;
    assert_eq!(page["type"], "response", "{page}");
    page["data"]["messages"].clone()
}

fn send_data(content: Value) -> Value {
    json!({"to": {"kind": "user", "id": "bob"}, "client_msg_id": "bad-1", "content": content})
}

#[tokio::test]
async fn a_frame_that_is_not_json_is_a_bad_request_without_id() {
    let mut f = Fixture::new().await;
    let error = f.error_for_text("{this is not json").await;
    assert_eq!(error["error"]["code"], 1000);
    assert_eq!(error["id"], Value::Null);
    assert_eq!(error["op"], Value::Null);
    f.assert_unharmed().await;
}

#[tokio::test]
async fn json_that_is_not_an_object_is_a_bad_request() {
    let mut f = Fixture::new().await;
    for text in ["[1, 2, 3]", "42", "\"ping\"", "null"] {
        let error = f.error_for_text(text).await;
        assert_eq!(error["error"]["code"], 1000, "{text}: {error}");
        assert_eq!(error["id"], Value::Null, "{text}");
    }
    f.assert_unharmed().await;
}

#[tokio::test]
async fn a_request_without_id_is_a_bad_request_naming_the_op() {
    let mut f = Fixture::new().await;
    let error = f.error_for(json!({"op": "ping"})).await;
    assert_eq!(error["error"]["code"], 1000);
    assert_eq!(error["id"], Value::Null);
    assert_eq!(error["op"], "ping");
    // An id of the wrong type cannot be echoed either.
    let error = f.error_for(json!({"id": "seven", "op": "ping"})).await;
    assert_eq!(error["error"]["code"], 1000);
    assert_eq!(error["id"], Value::Null);
    f.assert_unharmed().await;
}

#[tokio::test]
async fn a_request_without_op_is_a_bad_request_echoing_the_id() {
    let mut f = Fixture::new().await;
    let error = f.error_for(json!({"id": 77, "data": {}})).await;
    assert_eq!(error["error"]["code"], 1000);
    assert_eq!(error["id"], 77);
    assert_eq!(error["op"], Value::Null);
    f.assert_unharmed().await;
}

#[tokio::test]
async fn an_unknown_op_is_unknown_op_with_id_and_op_echoed() {
    let mut f = Fixture::new().await;
    let error = f.error_for(json!({"id": 5, "op": "fly", "data": {}})).await;
    assert_eq!(error["error"]["code"], 1001);
    assert_eq!(error["id"], 5);
    assert_eq!(error["op"], "fly");
    let error = f.error_for(json!({"id": 6, "op": "delete_all"})).await;
    assert_eq!(error["error"]["code"], 1001);
    assert_eq!(error["id"], 6);
    f.assert_unharmed().await;
}

#[tokio::test]
async fn a_field_of_the_wrong_type_is_a_bad_request_with_id_and_op_echoed() {
    let mut f = Fixture::new().await;
    let cases = [
        json!({"id": 8, "op": "get_messages", "data": {"conversation_id": 5}}),
        json!({"id": 9, "op": "mark_read", "data": {"conversation_id": CONVERSATION, "seq": "two"}}),
        json!({"id": 10, "op": "sync", "data": {"since": -1}}),
        json!({"id": 11, "op": "send", "data": {"to": "bob", "client_msg_id": "x", "content": {"type": "text", "body": {"text": "hi"}}}}),
        json!({"id": 12, "op": "send", "data": send_data(json!({"type": "text", "body": {"text": 5}}))}),
        json!({"id": 13, "op": "get_messages", "data": {"conversation_id": CONVERSATION, "direction": "sideways"}}),
    ];
    for case in cases {
        let error = f.error_for(case.clone()).await;
        assert_eq!(error["error"]["code"], 1000, "{case}: {error}");
        assert_eq!(error["id"], case["id"], "{case}");
        assert_eq!(error["op"], case["op"], "{case}");
    }
    f.assert_unharmed().await;
}

#[tokio::test]
async fn a_send_without_data_is_a_bad_request() {
    let mut f = Fixture::new().await;
    let error = f.error_for(json!({"id": 20, "op": "send"})).await;
    assert_eq!(error["error"]["code"], 1000);
    assert_eq!((&error["id"], &error["op"]), (&json!(20), &json!("send")));
    assert!(
        error["error"]["message"].as_str().unwrap().contains("data"),
        "{error}"
    );
    f.assert_unharmed().await;
}

#[tokio::test]
async fn a_send_to_an_invalid_user_id_is_a_bad_request() {
    let mut f = Fixture::new().await;
    for to in [
        json!({"kind": "user", "id": "bob smith"}),
        json!({"kind": "user", "id": ""}),
        json!({"kind": "user", "id": "x".repeat(65)}),
        json!({"kind": "planet", "id": "bob"}),
    ] {
        let mut data = send_data(json!({"type": "text", "body": {"text": "hi"}}));
        data["to"] = to.clone();
        let error = f
            .error_for(json!({"id": 21, "op": "send", "data": data}))
            .await;
        assert_eq!(error["error"]["code"], 1000, "{to}: {error}");
        assert_eq!(error["id"], 21);
    }
    f.assert_unharmed().await;
}

#[tokio::test]
async fn an_unknown_message_type_is_a_bad_request_and_is_not_stored() {
    let mut f = Fixture::new().await;
    let data = send_data(json!({"type": "poll", "body": {"question": "?"}}));
    let error = f
        .error_for(json!({"id": 22, "op": "send", "data": data}))
        .await;
    assert_eq!(error["error"]["code"], 1000);
    assert_eq!((&error["id"], &error["op"]), (&json!(22), &json!("send")));
    assert!(
        error["error"]["message"].as_str().unwrap().contains("poll"),
        "{error}"
    );
    f.assert_unharmed().await;
}

#[tokio::test]
async fn an_empty_text_is_a_bad_request_and_is_not_stored() {
    let mut f = Fixture::new().await;
    let data = send_data(json!({"type": "text", "body": {"text": ""}}));
    let error = f
        .error_for(json!({"id": 23, "op": "send", "data": data}))
        .await;
    assert_eq!(error["error"]["code"], 1000);
    assert_eq!(error["id"], 23);
    f.assert_unharmed().await;
}

#[tokio::test]
async fn invalid_bodies_of_other_types_are_bad_requests() {
    let mut f = Fixture::new().await;
    for content in [
        json!({"type": "image", "body": {"url": ""}}),
        json!({"type": "file", "body": {"url": format!("https://x/{}", "a".repeat(2048))}}),
        json!({"type": "location", "body": {"latitude": 91.0, "longitude": 0.0}}),
        json!({"type": "command", "body": {"name": ""}}),
        json!({"type": "voice", "body": {}}),
    ] {
        let error = f
            .error_for(json!({"id": 24, "op": "send", "data": send_data(content.clone())}))
            .await;
        assert_eq!(error["error"]["code"], 1000, "{content}: {error}");
    }
    f.assert_unharmed().await;
}

#[tokio::test]
async fn a_bad_client_msg_id_is_a_bad_request() {
    let mut f = Fixture::new().await;
    for id in [
        json!(""),
        json!("has space"),
        json!("é"),
        json!("x".repeat(65)),
        json!(17),
    ] {
        let mut data = send_data(json!({"type": "text", "body": {"text": "hi"}}));
        data["client_msg_id"] = id.clone();
        let error = f
            .error_for(json!({"id": 25, "op": "send", "data": data}))
            .await;
        assert_eq!(error["error"]["code"], 1000, "{id}: {error}");
        assert_eq!(error["id"], 25);
    }
    f.assert_unharmed().await;
}

#[tokio::test]
async fn an_ext_that_is_not_an_object_is_a_bad_request() {
    let mut f = Fixture::new().await;
    for ext in [json!([1, 2]), json!("text"), json!(3)] {
        let mut data = send_data(json!({"type": "text", "body": {"text": "hi"}}));
        data["ext"] = ext.clone();
        let error = f
            .error_for(json!({"id": 26, "op": "send", "data": data}))
            .await;
        assert_eq!(error["error"]["code"], 1000, "{ext}: {error}");
    }
    f.assert_unharmed().await;
}

#[tokio::test]
async fn a_binary_frame_on_a_json_connection_is_a_bad_request() {
    let mut f = Fixture::new().await;
    let ping = Codec::MsgPack
        .encode(&json!({"id": 30, "op": "ping"}))
        .unwrap();
    f.alice.send_binary(ping).await;
    let error = expect_error(f.alice.next_frame().await);
    assert_eq!(error["error"]["code"], 1000);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("msgpack"),
        "{error}"
    );
    f.assert_unharmed().await;
}

#[tokio::test]
async fn a_text_frame_on_a_msgpack_connection_is_a_bad_request() {
    let mut f = Fixture::with_codec(Some(SUBPROTOCOL_MSGPACK)).await;
    let error = f.error_for_text(r#"{"id": 31, "op": "ping"}"#).await;
    assert_eq!(error["error"]["code"], 1000);
    assert!(
        error["error"]["message"].as_str().unwrap().contains("JSON"),
        "{error}"
    );
    f.assert_unharmed().await;
}

#[tokio::test]
async fn malformed_msgpack_frames_get_the_same_errors_as_json() {
    let mut f = Fixture::with_codec(Some(SUBPROTOCOL_MSGPACK)).await;
    f.alice.send_binary(vec![0xc1, 0xff, 0x00]).await;
    let error = expect_error(f.alice.next_frame().await);
    assert_eq!(error["error"]["code"], 1000);
    assert_eq!(error["id"], Value::Null);
    let error = f.error_for(json!({"id": 32, "op": "fly"})).await;
    assert_eq!(error["error"]["code"], 1001);
    assert_eq!(error["id"], 32);
    let error = f
        .error_for(json!({"id": 33, "op": "mark_read", "data": {"conversation_id": CONVERSATION, "seq": "x"}}))
        .await;
    assert_eq!(error["error"]["code"], 1000);
    assert_eq!(
        (&error["id"], &error["op"]),
        (&json!(33), &json!("mark_read"))
    );
    f.assert_unharmed().await;
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_the_connection_with_1007() {
    let mut f = Fixture::new().await;
    let payload = b"{\"id\": 1, \"op\": \"ping\xff\"}".to_vec();
    f.alice
        .send_frame(Frame::message(payload, OpCode::Data(Data::Text), true))
        .await;
    // RFC 6455 does not let the connection go on; the close code says why.
    f.assert_closed_unharmed(1007).await;
}

#[tokio::test]
async fn a_websocket_protocol_violation_closes_the_connection_with_1002() {
    let mut f = Fixture::new().await;
    // A continuation frame with no message to continue.
    let frame = Frame::message(b"ping".to_vec(), OpCode::Data(Data::Continue), true);
    f.alice.send_frame(frame).await;
    f.assert_closed_unharmed(1002).await;
}

#[tokio::test]
async fn many_bad_frames_in_a_row_are_each_answered_in_order() {
    let mut f = Fixture::new().await;
    for id in 100..120u64 {
        f.alice.send_value(&json!({"id": id, "op": "nope"})).await;
    }
    for id in 100..120u64 {
        let error = expect_error(f.alice.next_frame().await);
        assert_eq!(error["id"], id);
        assert_eq!(error["error"]["code"], 1001);
    }
    f.assert_unharmed().await;
}
