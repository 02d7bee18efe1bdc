//! The bare WebSocket relay: the baseline that tells how fast this machine moves frames.
//!
//! No auth, no storage, no sequencing. It speaks just enough of the Magpie protocol (JSON
//! text frames) for the bench's thin client to run the same `c2c` load against it:
//!
//! - The first frame is a `login` request; its `data.user_id` names the connection. The answer
//!   has the shape of Magpie's login answer. A later login of the same id takes the name over.
//! - A `send` request is forwarded to the connection named by `data.to.id` as
//!   `{"type":"event","event":"message","data":<the request's data, verbatim>}`, and the
//!   sender gets `{"type":"response","id":…,"op":"send","data":{"message":<data>,"duplicate":false}}`
//!   — frames of about the size Magpie sends (Magpie adds a few ids and a seq), so closed-loop
//!   behaviour is comparable. Only `id`, `op`, `data.to.kind` and `data.to.id` are parsed;
//!   `data` stays a borrowed raw slice.
//! - A `send` whose `data.to.kind` is `"group"` is forwarded to **every** logged-in connection
//!   except the sender's (the bench connects only the group's members, so "everyone" is the
//!   group): the event is encoded once and its bytes shared by every recipient's queue, and the
//!   sender is acked as above. The group id is not looked at.
//! - `ping` is answered; anything else gets an `unknown_op` error.
//!
//! Each connection has a reader task and a writer task fed by an unbounded channel; the
//! writer feeds every queued frame before one flush. The WebSocket read buffer is 4 KiB, as in
//! Magpie's gateway.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

type Outbox = mpsc::UnboundedSender<Message>;

/// Who is connected, by the user id they logged in with.
#[derive(Default)]
struct Registry {
    by_id: DashMap<String, (u64, Outbox)>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(borrow, default)]
    op: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct LoginData<'a> {
    #[serde(borrow)]
    user_id: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct SendData<'a> {
    #[serde(borrow)]
    to: To<'a>,
}

#[derive(Deserialize)]
struct To<'a> {
    #[serde(borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
}

/// The relay's WebSocket settings: Magpie's gateway buffers (4 KiB read) with a small write
/// buffer that batches the frames fed before a flush.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Binds `listen`, prints `listening on <addr>` on stdout, and relays until Ctrl-C / SIGTERM.
pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    println!("listening on {addr}");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    #[cfg(unix)]
    {
        let stop = shutdown.clone();
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::spawn(async move {
                term.recv().await;
                stop.cancel();
            });
        }
    }
    serve(listener, shutdown).await;
    Ok(())
}

/// Relays on an already bound listener until `shutdown` is cancelled (in-process use, e.g.
/// the smoke test).
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    let registry = Arc::new(Registry::default());
    let mut next_conn = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors or similar: back off briefly rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        next_conn += 1;
        let registry = Arc::clone(&registry);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = connection(stream, next_conn, registry) => {}
            }
        });
    }
}

async fn connection(stream: TcpStream, conn_id: u64, registry: Arc<Registry>) {
    let _ = stream.set_nodelay(true);
    // Echo the JSON subprotocol if offered; the relay speaks nothing else.
    // The callback's error type is tungstenite's (an HTTP response); this one never fails.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| {
        let offered = request
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if offered
            .split(',')
            .any(|p| p.trim() == magpie_proto::codec::SUBPROTOCOL_JSON)
        {
            response.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(magpie_proto::codec::SUBPROTOCOL_JSON),
            );
        }
        Ok(response)
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config())).await
    else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.feed(message).await.is_err() {
                return;
            }
            while let Ok(message) = rx.try_recv() {
                if sink.feed(message).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let mut me: Option<String> = None;
    while let Some(Ok(message)) = source.next().await {
        let text = match &message {
            Message::Text(text) => text.as_str(),
            Message::Close(_) => break,
            _ => continue,
        };
        let reply = handle(text, conn_id, &tx, &registry, &mut me);
        if let Some(reply) = reply
            && tx.send(Message::text(reply)).is_err()
        {
            break;
        }
    }
    if let Some(me) = me {
        registry.by_id.remove_if(&me, |_, (id, _)| *id == conn_id);
    }
    drop(tx);
    let _ = writer.await;
}

/// Handles one request frame; returns the answer to the sender, if any.
fn handle(
    text: &str,
    conn_id: u64,
    tx: &Outbox,
    registry: &Registry,
    me: &mut Option<String>,
) -> Option<String> {
    let Ok(head) = serde_json::from_str::<Head<'_>>(text) else {
        return Some(error(None, None, 1000, "not a request frame"));
    };
    let id = head.id;
    match (head.op.as_deref(), head.data) {
        (Some("send"), Some(data)) => {
            let Ok(send) = serde_json::from_str::<SendData<'_>>(data.get()) else {
                return Some(error(id, Some("send"), 1000, "send needs data.to.id"));
            };
            if me.is_none() {
                return Some(error(id, Some("send"), 2000, "log in first"));
            }
            let event = || {
                Message::text(format!(
                    r#"{{"type":"event","event":"message","data":{}}}"#,
                    data.get()
                ))
            };
            let delivered = if send.to.kind.as_deref() == Some("group") {
                // One encoding; each queue gets a clone of the same shared bytes.
                let event = event();
                for entry in registry.by_id.iter() {
                    let (other, outbox) = entry.value();
                    if *other != conn_id {
                        let _ = outbox.send(event.clone());
                    }
                }
                Some(true)
            } else {
                registry
                    .by_id
                    .get(send.to.id.as_ref())
                    .map(|entry| entry.1.send(event()).is_ok())
            };
            match delivered {
                Some(true) => Some(format!(
                    r#"{{"type":"response","id":{},"op":"send","data":{{"message":{},"duplicate":false}}}}"#,
                    id.unwrap_or_default(),
                    data.get()
                )),
                _ => Some(error(id, Some("send"), 3001, "no such user online")),
            }
        }
        (Some("login"), Some(data)) => {
            let Ok(login) = serde_json::from_str::<LoginData<'_>>(data.get()) else {
                return Some(error(id, Some("login"), 1000, "login needs data.user_id"));
            };
            let user = login.user_id.into_owned();
            registry.by_id.insert(user.clone(), (conn_id, tx.clone()));
            let answer = serde_json::json!({
                "type": "response", "id": id, "op": "login",
                "data": {
                    "user_id": user, "device_id": "relay", "server_time": 0,
                    "token_expires_at": i64::MAX >> 11, "heartbeat_interval_ms": 25_000,
                    "idle_timeout_ms": 60_000, "max_frame_bytes": 1 << 20,
                    "max_message_bytes": 1 << 20,
                }
            });
            *me = Some(user);
            Some(answer.to_string())
        }
        (Some("ping"), _) => Some(format!(
            r#"{{"type":"response","id":{},"op":"ping","data":{{"server_time":0}}}}"#,
            id.unwrap_or_default()
        )),
        (op, _) => Some(error(id, op, 1001, "the relay knows login, send and ping")),
    }
}

fn error(id: Option<u64>, op: Option<&str>, code: u16, message: &str) -> String {
    serde_json::json!({
        "type": "error", "id": id, "op": op,
        "error": {"code": code, "message": message}
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sends_are_forwarded_verbatim_and_acked() {
        let registry = Registry::default();
        let (a_tx, mut a_rx) = mpsc::unbounded_channel();
        let (b_tx, mut b_rx) = mpsc::unbounded_channel();
        let (mut a, mut b) = (None, None);
        let login =
            |u: &str| format!(r#"{{"id":1,"op":"login","data":{{"user_id":"{u}","token":"x"}}}}"#);
        let answer = handle(&login("a"), 1, &a_tx, &registry, &mut a).unwrap();
        let answer: magpie_proto::ServerFrame = serde_json::from_str(&answer).unwrap();
        assert!(matches!(
            answer,
            magpie_proto::ServerFrame::Response { id: 1, .. }
        ));
        handle(&login("b"), 2, &b_tx, &registry, &mut b).unwrap();

        let send = r#"{"id":7,"op":"send","data":{"to":{"kind":"user","id":"b"},"client_msg_id":"k0","content":{"type":"text","body":{"text":"hi"}},"ext":{"b":{"s":0,"k":0,"t":5}}}}"#;
        let ack = handle(send, 1, &a_tx, &registry, &mut a).unwrap();
        let ack =
            crate::client::FastFrame::decode(magpie_proto::Codec::Json, ack.as_bytes()).unwrap();
        assert_eq!(ack.id, Some(7));
        assert_eq!(ack.ack().1.unwrap().t, 5);
        let event = b_rx.try_recv().unwrap();
        let event = crate::client::FastFrame::decode(
            magpie_proto::Codec::Json,
            event.to_text().unwrap().as_bytes(),
        )
        .unwrap();
        assert_eq!(event.event_tag().unwrap().k, 0);
        assert!(
            a_rx.try_recv().is_err(),
            "the sender gets only the returned ack"
        );

        let to_nobody = send.replace(r#""id":"b""#, r#""id":"z""#);
        let err = handle(&to_nobody, 1, &a_tx, &registry, &mut a).unwrap();
        assert!(err.contains("3001"), "{err}");
    }

    #[test]
    fn group_sends_reach_everyone_but_the_sender() {
        let registry = Registry::default();
        let login =
            |u: &str| format!(r#"{{"id":1,"op":"login","data":{{"user_id":"{u}","token":"x"}}}}"#);
        let mut queues = Vec::new();
        for (i, user) in ["a", "b", "c"].into_iter().enumerate() {
            let (tx, rx) = mpsc::unbounded_channel();
            let mut me = None;
            handle(&login(user), i as u64 + 1, &tx, &registry, &mut me).unwrap();
            queues.push((tx, rx, me));
        }
        let send = r#"{"id":7,"op":"send","data":{"to":{"kind":"group","id":"g1"},"client_msg_id":"k0","content":{"type":"text","body":{"text":"hi"}},"ext":{"b":{"s":0,"k":3,"t":5}}}}"#;
        let (tx, _, me) = &mut queues[0];
        let ack = handle(send, 1, &tx.clone(), &registry, me).unwrap();
        let ack =
            crate::client::FastFrame::decode(magpie_proto::Codec::Json, ack.as_bytes()).unwrap();
        assert_eq!(ack.id, Some(7));
        assert!(queues[0].1.try_recv().is_err(), "no echo to the sender");
        for (_, rx, _) in &mut queues[1..] {
            let event = rx.try_recv().unwrap();
            let event = crate::client::FastFrame::decode(
                magpie_proto::Codec::Json,
                event.to_text().unwrap().as_bytes(),
            )
            .unwrap();
            assert_eq!(event.event_tag().unwrap().k, 3);
            assert!(rx.try_recv().is_err(), "exactly once");
        }
    }
}
