//! `magpie group …` and the group events of `magpie listen`, run as the real binary against a
//! test server: one JSON object per line on stdout, errors as JSON on stderr.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use magpie_testkit::TestServer;
use serde_json::Value;

struct Cli {
    server: String,
    data: tempfile::TempDir,
}

impl Cli {
    /// A CLI installation (its own data directory) talking to `server`.
    fn new(server: &TestServer) -> Self {
        Self {
            server: server.ws_url(),
            data: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, user: &str, token: &str, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_magpie"));
        command
            .args(args)
            .env("MAGPIE_SERVER", &self.server)
            .env("MAGPIE_USER", user)
            .env("MAGPIE_TOKEN", token)
            .env("MAGPIE_DEVICE", format!("{user}-cli"))
            .env("MAGPIE_CLI_DATA", self.data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs a command to its end (off the runtime, which serves the test server).
    async fn run(&self, user: &str, token: &str, args: &[&str]) -> Output {
        let mut command = self.command(user, token, args);
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    }

    /// Runs a command that must succeed and returns its JSON lines.
    async fn lines(&self, user: &str, token: &str, args: &[&str]) -> Vec<Value> {
        let output = self.run(user, token, args).await;
        parse(&output, args)
    }
}

fn parse(output: &Output, args: &[&str]) -> Vec<Value> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line: {l:?}: {e}")))
        .collect()
}

/// A refused command: exit status 1, nothing on stdout, and the server's error as the last
/// JSON line of stderr. Returns that error and the whole of stderr.
fn refusal(refused: &Output) -> (Value, String) {
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    let error: Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    (error, stderr)
}

async fn sessions(server: &TestServer) -> f64 {
    magpie_testkit::metric(&server.metrics().await, "magpie_sessions").unwrap()
}

async fn wait_sessions(server: &TestServer, n: f64) {
    for _ in 0..300 {
        if sessions(server).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never {n} sessions");
}

async fn wait_child(child: Child) -> Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commands_print_json_lines_and_listen_prints_group_events() {
    let server = TestServer::start_without_rate_limits().await;
    let alice = server.user_with_token("alice").await;
    let bob = server.user_with_token("bob").await;
    let carol = server.user_with_token("carol").await;
    let cli = Cli::new(&server);

    // create
    let created = cli
        .lines(
            "alice",
            &alice,
            &[
                "group",
                "create",
                "Team",
                "--id",
                "team",
                "--member",
                "bob",
                "--join-policy",
                "open",
            ],
        )
        .await;
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["group_id"], "team");
    assert_eq!(created[0]["name"], "Team");
    assert_eq!(created[0]["owner"], "alice");
    assert_eq!(created[0]["member_count"], 2);
    assert_eq!(created[0]["options"]["join_policy"], "open");

    // info, by a member; unknown groups are left out
    let info = cli
        .lines("bob", &bob, &["group", "info", "team", "nope"])
        .await;
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0]["group_id"], "team");
    assert_eq!(info[0]["version"], created[0]["version"]);

    // members, one per line by user id
    let members = cli
        .lines("alice", &alice, &["group", "members", "team"])
        .await;
    let who: Vec<(&str, &str)> = members
        .iter()
        .map(|m| (m["user_id"].as_str().unwrap(), m["role"].as_str().unwrap()))
        .collect();
    assert_eq!(who, [("alice", "owner"), ("bob", "member")]);
    assert!(members.iter().all(|m| m["group_id"] == "team"));

    // bob listens while carol joins and leaves: two group events, and the two notices the
    // server writes into the group's timeline, as JSON lines (after the "created" notice the
    // first sync of this new device of his brings)
    wait_sessions(&server, 0.0).await;
    let listener_data = tempfile::tempdir().unwrap();
    let listener = cli
        .command(
            "bob",
            &bob,
            &[
                "listen",
                "--count",
                "5",
                "--timeout",
                "30",
                "--device",
                "bob-2",
            ],
        )
        .env("MAGPIE_CLI_DATA", listener_data.path())
        .spawn()
        .unwrap();
    wait_sessions(&server, 1.0).await;

    let joined = cli.lines("carol", &carol, &["group", "join", "team"]).await;
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0]["group_id"], "team");
    assert_eq!(joined[0]["joined"], true);
    let left = cli
        .lines("carol", &carol, &["group", "leave", "team"])
        .await;
    assert_eq!(left[0]["group_id"], "team");
    assert_eq!(left[0]["left"], true);

    let all = parse(&wait_child(listener).await, &["listen"]);
    assert_eq!(all.len(), 5, "{all:?}");
    let (heard, notices): (Vec<Value>, Vec<Value>) =
        all.into_iter().partition(|line| line["event"] == "group");
    let notices: Vec<(u64, &str, &Value)> = notices
        .iter()
        .map(|n| {
            assert_eq!(n["conversation_id"], "grp:team", "{n}");
            assert_eq!((&n["to"], &n["to_kind"]), (&"team".into(), &"group".into()));
            assert_eq!(n["type"], "group_notice", "{n}");
            (
                n["seq"].as_u64().unwrap(),
                n["body"]["kind"].as_str().unwrap(),
                &n["body"]["user_ids"],
            )
        })
        .collect();
    assert_eq!(
        notices,
        [
            (1, "created", &Value::Null),
            (2, "member_joined", &serde_json::json!(["carol"])),
            (3, "member_left", &serde_json::json!(["carol"])),
        ]
    );
    assert_eq!(heard.len(), 2, "{heard:?}");
    assert!(heard.iter().all(|e| e["group_id"] == "team"));
    assert_eq!(heard[0]["change"], "members_joined");
    assert_eq!(heard[0]["actor"], "carol");
    assert_eq!(heard[0]["members"][0]["user_id"], "carol");
    assert_eq!(heard[1]["change"], "member_left");
    assert_eq!(heard[1]["user_id"], "carol");
    assert!(heard[1]["version"].as_u64() > heard[0]["version"].as_u64());

    // invite, mute, kick
    let invited = cli
        .lines(
            "alice",
            &alice,
            &["group", "invite", "team", "carol", "ghost"],
        )
        .await;
    let outcomes: Vec<(&str, &str)> = invited
        .iter()
        .map(|r| {
            (
                r["user_id"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(outcomes, [("carol", "added"), ("ghost", "user_not_found")]);
    let muted = cli
        .lines(
            "alice",
            &alice,
            &["group", "mute", "team", "carol", "--seconds", "60"],
        )
        .await;
    assert_eq!(muted[0]["muted"][0], "carol");
    let members = cli
        .lines("alice", &alice, &["group", "members", "team"])
        .await;
    let carol_row = members.iter().find(|m| m["user_id"] == "carol").unwrap();
    assert!(carol_row["muted_until"].as_i64().is_some(), "{carol_row}");
    let kicked = cli
        .lines("alice", &alice, &["group", "kick", "team", "carol"])
        .await;
    assert_eq!(kicked[0]["kicked"][0], "carol");
    let members = cli
        .lines(
            "alice",
            &alice,
            &["group", "members", "--role", "member", "team"],
        )
        .await;
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0]["user_id"], "bob");

    // A refusal: exit status 1 and the server's error as JSON on stderr.
    let refused = cli
        .run("bob", &bob, &["group", "kick", "team", "alice"])
        .await;
    let (error, stderr) = refusal(&refused);
    assert_eq!(error["error"]["name"], "forbidden", "{stderr}");
    assert_eq!(error["error"]["code"], 2004);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_a_group_and_listen_prints_its_messages_and_read_counts() {
    let server = TestServer::start_without_rate_limits().await;
    let alice = server.user_with_token("alice").await;
    let bob = server.user_with_token("bob").await;
    let cli = Cli::new(&server);
    cli.lines(
        "alice",
        &alice,
        &["group", "create", "Crew", "--id", "crew", "--member", "bob"],
    )
    .await;

    // bob listens: the "created" notice from his first sync, then alice's message.
    wait_sessions(&server, 0.0).await;
    let listener = cli
        .command("bob", &bob, &["listen", "--count", "2", "--timeout", "30"])
        .spawn()
        .unwrap();
    wait_sessions(&server, 1.0).await;
    let sent = cli
        .lines(
            "alice",
            &alice,
            &[
                "send",
                "--group",
                "crew",
                "hello crew",
                "--mention",
                "bob",
                "--mention-all",
            ],
        )
        .await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    let sent = &sent[0];
    assert_eq!(sent["conversation_id"], "grp:crew");
    assert_eq!(sent["seq"], 2);
    assert_eq!(
        (&sent["to"], &sent["to_kind"]),
        (&"crew".into(), &"group".into())
    );
    assert_eq!(sent["from"], "alice");
    assert_eq!(sent["body"]["text"], "hello crew");
    assert_eq!(
        sent["mentions"],
        serde_json::json!({"user_ids": ["bob"], "all": true})
    );

    let heard = parse(&wait_child(listener).await, &["listen"]);
    assert_eq!(heard.len(), 2, "{heard:?}");
    assert_eq!(heard[0]["type"], "group_notice");
    assert_eq!(heard[0]["seq"], 1);
    assert_eq!(heard[1], *sent, "bob sees the message as stored");

    // alice listens on another device while bob reads: the read count of her message.
    wait_sessions(&server, 0.0).await;
    let reader_data = tempfile::tempdir().unwrap();
    let listener = cli
        .command(
            "alice",
            &alice,
            &[
                "listen",
                "--count",
                "3",
                "--timeout",
                "30",
                "--device",
                "alice-2",
            ],
        )
        .env("MAGPIE_CLI_DATA", reader_data.path())
        .spawn()
        .unwrap();
    wait_sessions(&server, 1.0).await;
    let mut raw = server.raw_login("bob", &bob, "bob-raw", "web").await;
    let read = raw
        .request(
            "mark_read",
            serde_json::json!({"conversation_id": "grp:crew", "seq": 2}),
        )
        .await;
    assert_eq!(read["data"]["read_seq"], 2, "{read}");
    let heard = parse(&wait_child(listener).await, &["listen"]);
    assert_eq!(heard.len(), 3, "{heard:?}");
    let read_events: Vec<&Value> = heard
        .iter()
        .filter(|l| l["event"] == "group_read")
        .collect();
    assert_eq!(
        read_events,
        [&serde_json::json!({
            "event": "group_read",
            "conversation_id": "grp:crew",
            "reader": "bob",
            "read_seq": 2,
            "messages": [{"seq": 2, "read_count": 1, "unread_count": 0}],
        })]
    );
    // The rest is the new device's first sync: the group's two messages.
    let seqs: Vec<u64> = heard
        .iter()
        .filter(|l| l["conversation_id"] == "grp:crew" && l.get("event").is_none())
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);

    // --mention needs --group; a refused group send reports the server's error.
    let refused = cli
        .run("alice", &alice, &["send", "bob", "hi", "--mention", "bob"])
        .await;
    assert!(!refused.status.success());
    let outsider = server.user_with_token("eve").await;
    let refused = cli
        .run("eve", &outsider, &["send", "--group", "crew", "let me in"])
        .await;
    let (error, stderr) = refusal(&refused);
    assert_eq!(error["error"]["name"], "not_group_member", "{stderr}");
    assert_eq!(error["error"]["code"], 2005);
}
