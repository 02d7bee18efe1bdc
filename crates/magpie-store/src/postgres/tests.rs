//! The conformance suite on PostgreSQL, plus what only a shared database has to get right:
//! several stores (nodes) writing to one conversation at once, and connection loss.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use magpie_proto::message::Peer;
use magpie_proto::{ConversationId, Message, MessageContent, MessageId, UserId};

use super::*;
use crate::StoreErrorKind;

/// A fresh PostgreSQL server (stopped and deleted on drop) with an empty database.
struct Postgres {
    server: magpie_services::Postgres,
    url: String,
}

impl crate::testsuite::Backend for Postgres {
    type Store = PgStore;
    async fn new() -> Option<Self> {
        // Starting a server blocks for a moment; the suite runs on a multi-thread runtime.
        tokio::task::block_in_place(|| {
            let server = magpie_services::postgres_or_skip("the postgres store suite")?;
            let url = server.create_database("magpie");
            Some(Postgres { server, url })
        })
    }
    async fn open(&self) -> PgStore {
        PgStore::connect(&self.url, PgOptions::default())
            .await
            .expect("connect")
    }
}

crate::store_test_suite!(Postgres);

async fn backend() -> Option<Postgres> {
    <Postgres as crate::testsuite::Backend>::new().await
}

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn message(id: u64, from: &str, to: &str, client_msg_id: &str) -> NewMessage {
    let (from, to) = (uid(from), uid(to));
    NewMessage {
        message: Message {
            id: MessageId(id),
            conversation_id: ConversationId::c2c(&from, &to),
            seq: 0,
            from: from.clone(),
            to: Peer::User(to.clone()),
            client_msg_id: client_msg_id.to_owned(),
            content: MessageContent::text("x"),
            ext: None,
            mentions: None,
            server_time: 1,
        },
        participants: vec![from, to],
        mentioned: Vec::new(),
    }
}

async fn create_users(store: &PgStore, ids: &[&str]) {
    for id in ids {
        store
            .create_user(NewUser {
                id: uid(id),
                nickname: None,
                avatar_url: None,
                ext: None,
                now: 1,
            })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_conversation_without_gaps_or_duplicates() {
    let Some(pg) = backend().await else { return };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Arc::new(
            PgStore::connect(&pg.url, PgOptions::default())
                .await
                .unwrap(),
        ));
    }
    create_users(&nodes[0], &["alice", "bob"]).await;

    // 300 messages from both sides, each sent through one node; every fifth is also retried
    // through the two other nodes at the same moment.
    const N: u64 = 300;
    let mut tasks = Vec::new();
    for i in 0..N {
        let (from, to) = if i % 2 == 0 {
            ("alice", "bob")
        } else {
            ("bob", "alice")
        };
        let copies = if i % 5 == 0 { 3 } else { 1 };
        for copy in 0..copies {
            let node = nodes[((i + copy) % 3) as usize].clone();
            let new = message(10_000 + i * 3 + copy, from, to, &format!("m-{i}"));
            tasks.push(tokio::spawn(async move {
                (i, node.append_message(new, None).await.unwrap())
            }));
        }
    }
    let mut by_key: HashMap<u64, Vec<crate::Appended>> = HashMap::new();
    for task in tasks {
        let (i, appended) = task.await.unwrap();
        by_key.entry(i).or_default().push(appended);
    }
    let mut seqs = BTreeSet::new();
    for (i, outcomes) in &by_key {
        let fresh: Vec<_> = outcomes.iter().filter(|a| !a.duplicate).collect();
        assert_eq!(fresh.len(), 1, "m-{i} was stored {} times", fresh.len());
        for outcome in outcomes {
            assert_eq!(
                outcome.message, fresh[0].message,
                "every copy of m-{i} gets the original"
            );
        }
        assert!(
            seqs.insert(fresh[0].message.seq),
            "a seq was handed out twice"
        );
    }
    assert_eq!(
        seqs,
        (1..=N).collect::<BTreeSet<u64>>(),
        "seqs are exactly 1..=N"
    );

    // What is stored: N messages, seqs 1..=N, each dedupe key once — seen from every node.
    for node in &nodes {
        let page = crate::testsuite::first_messages(node.as_ref(), "alice", "bob", 1000).await;
        let stored: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
        assert_eq!(stored, (1..=N).collect::<Vec<u64>>());
        let keys: BTreeSet<_> = page
            .messages
            .iter()
            .map(|m| (m.from.clone(), m.client_msg_id.clone()))
            .collect();
        assert_eq!(keys.len() as u64, N);
        let state = node
            .conversation_state(
                &uid("bob"),
                &ConversationId::c2c(&uid("alice"), &uid("bob")),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state.last_seq, N);
    }
    // Each user's change versions are a gap-free count of their changes: one per message.
    let synced = nodes[2]
        .changed_conversations(&uid("alice"), 0, 10)
        .await
        .unwrap();
    assert_eq!(synced.version, N);
    for node in &nodes {
        node.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_fail_as_unavailable_and_the_store_recovers() {
    let Some(pg) = backend().await else { return };
    let options = PgOptions {
        call_timeout: Duration::from_secs(5),
        ..PgOptions::default()
    };
    let store = Arc::new(PgStore::connect(&pg.url, options).await.unwrap());
    create_users(&store, &["alice", "bob"]).await;

    // Traffic from several tasks while the connections are cut under it.
    let traffic: Vec<_> = (0..4u64)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for i in 0..150u64 {
                    let started = Instant::now();
                    let result = if i % 2 == 0 {
                        store
                            .append_message(
                                message(
                                    50_000 + t * 1000 + i,
                                    "alice",
                                    "bob",
                                    &format!("t{t}-{i}"),
                                ),
                                None,
                            )
                            .await
                            .map(drop)
                    } else {
                        store.get_user(&uid("bob")).await.map(drop)
                    };
                    outcomes.push((
                        result.err().map(|e| (e.kind(), e.to_string())),
                        started.elapsed(),
                    ));
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                outcomes
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cut = tokio::task::block_in_place(|| pg.server.terminate_connections());
    assert!(cut >= 1, "the store had connections to cut");
    let mut failures = 0;
    for task in traffic {
        for (error, took) in task.await.unwrap() {
            assert!(took < Duration::from_secs(6), "a call hung for {took:?}");
            if let Some((kind, text)) = error {
                assert_eq!(kind, StoreErrorKind::Unavailable, "{text}");
                failures += 1;
            }
        }
    }
    eprintln!("{failures} calls failed while {cut} connections were cut");

    // The same store serves again, without being reopened.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let append = store
            .append_message(message(99_999, "bob", "alice", "after"), None)
            .await;
        let read = store.get_user(&uid("alice")).await;
        if append.is_ok() && read.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery: {append:?} {read:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_fails_calls_fast_and_the_store_recovers_after_it_restarts() {
    let Some(mut pg) = backend().await else {
        return;
    };
    let store = PgStore::connect(&pg.url, PgOptions::default())
        .await
        .unwrap();
    create_users(&store, &["alice", "bob"]).await;
    store
        .append_message(message(1, "alice", "bob", "before"), None)
        .await
        .unwrap();

    tokio::task::block_in_place(|| pg.server.stop());
    let started = Instant::now();
    let err = store
        .append_message(message(2, "alice", "bob", "during"), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    let err = store.get_user(&uid("alice")).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    let err = store
        .mark_read(
            &uid("bob"),
            &ConversationId::c2c(&uid("alice"), &uid("bob")),
            1,
            2,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "calls during an outage fail fast"
    );

    tokio::task::block_in_place(|| pg.server.restart()).unwrap();
    let appended = store
        .append_message(message(3, "alice", "bob", "after"), None)
        .await
        .unwrap();
    assert_eq!(appended.message.seq, 2, "the refused append used no seq");
    assert!(store.get_user(&uid("alice")).await.unwrap().is_some());
    let _ = &mut pg;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_an_unreachable_server_names_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = PgStore::connect(
        &format!("postgres://postgres@127.0.0.1:{port}/magpie"),
        PgOptions::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert!(
        err.message().contains(&format!("127.0.0.1:{port}")),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once() {
    let Some(pg) = backend().await else { return };
    let connecting: Vec<_> = (0..4)
        .map(|_| {
            let url = pg.url.clone();
            tokio::spawn(async move { PgStore::connect(&url, PgOptions::default()).await })
        })
        .collect();
    for task in connecting {
        task.await.unwrap().unwrap();
    }
    let (client, connection) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let applied: i64 = client
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied as usize, schema::known());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_keep_member_count_exact_and_dedupe_applications() {
    use crate::groups::{GroupStore, GroupWrite, NewApplication, NewGroup};
    use magpie_proto::group::{ApplicationKind, GroupId, GroupMember, GroupOptions, GroupRole};

    let Some(pg) = backend().await else { return };
    let nodes = [
        Arc::new(
            PgStore::connect(&pg.url, PgOptions::default())
                .await
                .unwrap(),
        ),
        Arc::new(
            PgStore::connect(&pg.url, PgOptions::default())
                .await
                .unwrap(),
        ),
    ];
    let users: Vec<String> = (0..40).map(|i| format!("u{i:02}")).collect();
    let mut all: Vec<&str> = users.iter().map(String::as_str).collect();
    all.push("owner");
    create_users(&nodes[0], &all).await;
    let group = GroupId::new("shared").unwrap();
    let member = |user: &str, role| GroupMember {
        user_id: uid(user),
        role,
        joined_at: 1,
        nickname: None,
        attributes: serde_json::Map::new(),
        muted_until: None,
        allowed_when_all_muted: false,
        visible_from_seq: 1,
        receive_messages: true,
    };
    nodes[0]
        .create_group(
            NewGroup {
                group_id: group.clone(),
                name: "Shared".into(),
                avatar_url: None,
                introduction: None,
                ext: None,
                options: GroupOptions {
                    max_members: 30,
                    ..GroupOptions::default()
                },
                owner: uid("owner"),
                members: vec![member("owner", GroupRole::Owner)],
            },
            1,
        )
        .await
        .unwrap();

    // Both nodes add overlapping users and remove some, at once; plus racing applications
    // of the same users through both nodes.
    let mut tasks = Vec::new();
    for t in 0..6usize {
        let node = nodes[t % 2].clone();
        let (users, group) = (users.clone(), group.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for round in 0..8usize {
                let picked: Vec<GroupMember> = (0..4)
                    .map(|k| {
                        member(
                            &users[(t * 5 + round * 3 + k * 10) % users.len()],
                            GroupRole::Member,
                        )
                    })
                    .collect();
                match node
                    .write_group(&group, None, GroupWrite::AddMembers(picked.clone()), 2)
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(e) => assert_eq!(e.kind(), StoreErrorKind::GroupFull, "{e}"),
                }
                if round % 3 == 2 {
                    node.write_group(
                        &group,
                        None,
                        GroupWrite::RemoveMembers(vec![picked[0].user_id.clone()]),
                        3,
                    )
                    .await
                    .unwrap();
                    ok += 1;
                }
                let applied = node
                    .create_application(NewApplication {
                        group_id: group.clone(),
                        kind: ApplicationKind::Join,
                        from: uid(&users[round]),
                        user_id: uid(&users[round]),
                        message: None,
                        now: 4,
                    })
                    .await
                    .unwrap();
                assert_eq!(applied.user_id, uid(&users[round]));
            }
            ok
        }));
    }
    let mut successes = 0;
    for task in tasks {
        successes += task.await.unwrap();
    }
    for node in &nodes {
        let record = node
            .get_groups(std::slice::from_ref(&group))
            .await
            .unwrap()
            .remove(0);
        let members = node.group_members(&group, None, None, 1_000).await.unwrap();
        assert_eq!(record.info.member_count as usize, members.len());
        assert!(members.len() <= 30);
        assert_eq!(record.info.version, 1 + successes, "one version per write");
    }
    // One pending application per user, whichever node took it.
    let pending = nodes[1]
        .list_applications(
            crate::groups::ApplicationFilter::JoinsTo(vec![group.clone()]),
            None,
            100,
        )
        .await
        .unwrap();
    let applicants: BTreeSet<String> = pending.iter().map(|a| a.user_id.to_string()).collect();
    assert_eq!(pending.len(), 8);
    assert_eq!(applicants.len(), 8);
}
