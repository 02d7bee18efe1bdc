//! First contact: two users exchange a message over the raw protocol.

use magpie_testkit::TestServer;
use serde_json::json;

#[tokio::test]
async fn alice_sends_bob_a_message() {
    let server = TestServer::start().await;
    let alice_token = server.user_with_token("alice").await;
    let bob_token = server.user_with_token("bob").await;
    let mut alice = server.raw_login("alice", &alice_token, "a1", "ios").await;
    let mut bob = server.raw_login("bob", &bob_token, "b1", "android").await;

    let answer = alice.send_text_message("bob", "m1", "hello bob").await;
    assert_eq!(answer["type"], "response", "{answer}");
    let sent = &answer["data"]["message"];
    assert_eq!(sent["seq"], 1);
    assert_eq!(sent["conversation_id"], "c2c:alice:bob");

    let pushed = bob.event("message").await;
    assert_eq!(pushed["id"], sent["id"]);
    assert_eq!(
        pushed["content"],
        json!({"type": "text", "body": {"text": "hello bob"}})
    );
}
