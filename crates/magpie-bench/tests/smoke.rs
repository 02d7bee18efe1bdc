//! A tiny run of every scenario against an in-process server (and the in-process relay), and
//! of `c2c`, `group` and `login` through an in-process two-node cluster on a real PostgreSQL and NATS
//! (skipped, saying why, when they are not installed — unless `MAGPIE_REQUIRE_SERVICES=1`).
//! Checks counts and correctness only: speed is measured with the release binary, never here.

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use magpie_bench::progress::Progress;
use magpie_bench::relay;
use magpie_bench::scenarios::Common;
use magpie_bench::scenarios::c2c::{self, C2cOptions, LoadMode, SuiteOptions};
use magpie_bench::scenarios::catchup::{self, CatchupOptions};
use magpie_bench::scenarios::group::{self, GroupOptions, RunLength};
use magpie_bench::scenarios::idle::{self, IdleOptions};
use magpie_bench::scenarios::login::{self, LoginOptions};
use magpie_bench::target::Target;
use magpie_testkit::{TEST_SECRET, TestServer};
use tokio_util::sync::CancellationToken;

/// A test server with the per-device rate limits lifted, as the bench's generated config does.
async fn server() -> TestServer {
    TestServer::start_without_rate_limits().await
}

async fn target(server: &TestServer) -> Target {
    // In-process: no pid to sample.
    Target::magpie(&server.http_url(), TEST_SECRET, None)
        .await
        .unwrap()
}

fn common() -> Common {
    Common::new(Progress::silent())
}

/// The in-process relay on a free port.
struct Relay {
    target: Target,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target::relay(listener.local_addr().unwrap(), None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(relay::serve(listener, stop.clone()));
        Self { target, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

/// c2c: 4 users, a closed loop of 4 for a second, then an open-loop step at half of it.
fn c2c_opts() -> SuiteOptions {
    SuiteOptions {
        run: C2cOptions {
            users: 4,
            size: 64,
            mode: LoadMode::Closed { window: 4 },
            duration: Duration::from_secs(1),
            warmup: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(10),
        },
        sweep: vec![0.5],
    }
}

/// A group of `members`, 2 of them sending, a closed loop of 2 for a second.
fn group_opts(members: usize) -> GroupOptions {
    GroupOptions {
        members,
        senders: 2,
        size: 64,
        mode: LoadMode::Closed { window: 2 },
        length: RunLength::Time {
            warmup: Duration::from_millis(200),
            duration: Duration::from_secs(1),
        },
        drain_timeout: Duration::from_secs(10),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_every_connection() {
    let server = server().await;
    let target = target(&server).await;
    let opts = IdleOptions {
        connections: 50,
        step: 20,
        concurrency: 16,
        devices_per_user: 4,
        hold: Duration::from_millis(200),
        verify: true,
    };
    let report = idle::run(&target, &opts, &common()).await.unwrap();
    assert_eq!(report.established, 50, "{:?}", report.first_failure);
    assert_eq!(report.failed, 0);
    assert_eq!(report.closed_while_held, 0);
    assert_eq!(report.verified_alive, Some(50));
    assert_eq!(report.users, 13);
    // 0, 20, 40, 50, and the final sample after holding.
    assert_eq!(report.series.len(), 5);
    assert_eq!(report.rss_per_connection_bytes, None, "no pid in-process");
    assert!(report.passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2c_against_the_relay_and_magpie_delivers_exactly_once() {
    let server = server().await;
    let magpie = target(&server).await;
    let relay = Relay::start().await;

    let opts = c2c_opts();
    let suite = c2c::suite(&magpie, Some(&relay.target), &opts, &common())
        .await
        .unwrap();
    relay.stop().await;

    let runs = [
        suite.relay.as_ref().unwrap(),
        &suite.magpie,
        &suite.sweep_relay[0].run,
        &suite.sweep_magpie[0].run,
    ];
    for run in runs {
        let c = &run.correctness;
        assert!(run.totals.sent > 0, "{:?} sent nothing", run.target);
        assert_eq!(
            run.totals.send_errors, 0,
            "{:?}: {:?}",
            run.target, c.first_error
        );
        assert_eq!(run.totals.acked, run.totals.sent, "{:?}", run.target);
        assert_eq!(run.totals.delivered, run.totals.acked, "{:?}", run.target);
        assert_eq!(
            (
                c.lost,
                c.duplicated,
                c.reordered,
                c.seq_mismatch,
                c.misdelivered,
                c.undecodable
            ),
            (0, 0, 0, 0, 0, 0),
            "{:?}",
            run.target
        );
        assert!(
            run.latency.count > 0,
            "{:?} recorded no latency",
            run.target
        );
        assert!(run.server.is_none(), "no pid in-process");
        assert!(run.generator.is_some());
    }
    assert!(matches!(
        suite.sweep_magpie[0].run.load,
        LoadMode::Open { .. }
    ));
    assert!(suite.ratio_to_relay.unwrap() > 0.0);
    assert!(suite.passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_against_the_relay_and_magpie_reaches_every_member_once() {
    let server = server().await;
    let magpie = target(&server).await;
    let relay = Relay::start().await;

    // 20 members, 2 senders: a closed loop for a second, then an open-loop step at half of it
    // (more than 100 members would also exercise the REST batches; 20 keeps the test quick).
    let opts = group::SuiteOptions {
        run: group_opts(20),
        sweep: vec![0.5],
    };
    let suite = group::suite(&magpie, Some(&relay.target), &opts, &common())
        .await
        .unwrap();

    // A fixed number of messages, open loop.
    let counted = GroupOptions {
        mode: LoadMode::Open { rate: 50.0 },
        length: RunLength::Messages(15),
        ..opts.run.clone()
    };
    let counted = group::run(&magpie, &counted, &common(), "count")
        .await
        .unwrap();
    relay.stop().await;

    let runs = [
        suite.relay.as_ref().unwrap(),
        &suite.magpie,
        &suite.sweep_relay[0].run,
        &suite.sweep_magpie[0].run,
        &counted,
    ];
    for run in runs {
        let c = &run.correctness;
        assert!(run.totals.sent > 0, "{:?} sent nothing", run.target);
        assert_eq!(
            run.totals.send_errors, 0,
            "{:?}: {:?}",
            run.target, c.first_error
        );
        assert_eq!(run.totals.acked, run.totals.sent, "{:?}", run.target);
        assert_eq!(
            run.totals.delivered,
            run.totals.acked * 19,
            "{:?}: every message reaches the 19 other members",
            run.target
        );
        assert_eq!(
            run.totals.notices, 0,
            "the group was filled before connecting"
        );
        assert_eq!(
            (
                c.lost,
                c.messages_not_reaching_all,
                c.duplicated,
                c.reordered,
                c.out_of_group_order,
                c.seq_mismatch,
                c.seq_collisions,
                c.seq_gaps,
                c.misdelivered,
                c.undecodable,
                c.closed_by_server,
            ),
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
            "{:?}: {c:?}",
            run.target
        );
        assert!(
            run.latency.count > 0,
            "{:?} recorded no latency",
            run.target
        );
        assert!(run.reached_all_latency.count > 0);
        assert!(run.reached_all_latency.count <= run.latency.count / 19);
        assert!(run.server.is_none(), "no pid in-process");
        assert!(run.generator.is_some());
        assert!(run.passed());
    }
    assert_eq!(counted.totals.sent, 15);
    assert_eq!(counted.totals.delivered, 15 * 19);
    assert_eq!(
        counted.latency.count,
        15 * 19,
        "a counted run is measured whole"
    );
    assert!(matches!(
        suite.sweep_magpie[0].run.load,
        LoadMode::Open { .. }
    ));
    assert!(suite.ratio_to_relay.unwrap() > 0.0);
    // One latency line per Magpie run and the throughput line, each judged.
    assert_eq!(suite.budget.len(), 3);
    assert!(suite.budget.iter().all(|line| line.met.is_some()));
    assert!(suite.passed());
    let summary = magpie_bench::report::table::group(&suite);
    assert!(summary.contains("budget:"), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_storm_syncs_every_device() {
    let server = server().await;
    let target = target(&server).await;
    let opts = LoginOptions {
        devices: 20,
        concurrency: 8,
        devices_per_user: 2,
        convs: 2,
        msgs: 3,
        pull_messages: true,
        size: 32,
    };
    let report = login::run(&target, &opts, &common()).await.unwrap();
    assert!(report.passed(), "{:?}", report.first_failure);
    assert_eq!(report.users, 10);
    assert_eq!(report.synced_ok, 20);
    assert_eq!(report.seed.as_ref().unwrap().messages, 2 * 10 * 3);
    assert_eq!(report.conversations_synced, 20 * 2);
    assert_eq!(report.messages_synced, 20 * 2 * 3);
    assert_eq!(report.login_latency.count, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catchup_fills_a_fresh_sdk_cache() {
    let server = server().await;
    let target = target(&server).await;
    let opts = CatchupOptions {
        convs: 5,
        msgs: 10,
        repeat: 2,
        seed_concurrency: 2,
        seed_window: 4,
        size: 32,
    };
    let report = catchup::run(&target, &opts, &common()).await.unwrap();
    assert_eq!(report.seed.messages, 50);
    assert_eq!(report.devices.len(), 2);
    for device in &report.devices {
        assert_eq!(device.messages_received, 50);
        assert_eq!(device.conversations_cached, 5);
        assert_eq!(device.messages_cached, 50);
        assert!(device.correct);
    }
    assert!(report.passed());
}

/// Two in-process nodes on one PostgreSQL database and one NATS server, rate limits lifted as
/// the bench's generated config does; `None` (after saying why) when a service is missing.
async fn two_node_cluster(
    test: &str,
) -> Option<(
    magpie_services::Postgres,
    magpie_services::Nats,
    Vec<TestServer>,
)> {
    let name = test.to_owned();
    let (postgres, nats, store) = tokio::task::spawn_blocking(move || {
        let postgres = magpie_services::postgres_or_skip(&name)?;
        let nats = magpie_services::nats_or_skip(&name)?;
        let store = postgres.create_database("bench_smoke");
        Some((postgres, nats, store))
    })
    .await
    .unwrap()?;
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let (store, bus) = (store.clone(), nats.url());
        nodes.push(
            TestServer::start_with(|config| {
                config.limits.send_rate_per_sec = 1e9;
                config.limits.send_burst = 1_000_000_000;
                config.limits.request_rate_per_sec = 1e9;
                config.limits.request_burst = 1_000_000_000;
                config.store.url = Some(store);
                config.cluster.url = Some(bus);
            })
            .await,
        );
    }
    Some((postgres, nats, nodes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2c_group_and_login_through_a_two_node_cluster() {
    let Some((postgres, nats, nodes)) =
        two_node_cluster("c2c_group_and_login_through_a_two_node_cluster").await
    else {
        return;
    };
    let bases: Vec<String> = nodes.iter().map(TestServer::http_url).collect();
    let target = Target::cluster(&bases, TEST_SECRET, Vec::new())
        .await
        .unwrap();
    assert!(target.is_cluster());
    assert_eq!(target.node_count(), 2);

    // c2c: 4 users on nodes 0/1/0/1, so every sender's recipient is on the other node.
    let opts = c2c_opts();
    let suite = c2c::suite(&target, None, &opts, &common()).await.unwrap();
    for run in [&suite.magpie, &suite.sweep_magpie[0].run] {
        let c = &run.correctness;
        assert!(run.totals.sent > 0, "sent nothing");
        assert_eq!(run.totals.send_errors, 0, "{:?}", c.first_error);
        assert_eq!(run.totals.acked, run.totals.sent);
        assert_eq!(run.totals.delivered, run.totals.acked);
        assert_eq!(
            (
                c.lost,
                c.duplicated,
                c.reordered,
                c.seq_mismatch,
                c.misdelivered,
                c.undecodable,
                c.seqs_out_of_send_order,
                c.closed_by_server
            ),
            (0, 0, 0, 0, 0, 0, 0, 0)
        );
        assert_eq!(c.seq_collisions, Some(0));
        assert!(
            c.arrived_out_of_order.is_some(),
            "a cluster run counts arrivals out of order instead of failing on them"
        );
        let layout = run.cluster.as_ref().expect("cluster layout");
        assert_eq!(layout.nodes, 2);
        assert_eq!(layout.clients_per_node, vec![2, 2]);
        assert_eq!(layout.same_node_pairs, Some(0));
        assert!(run.services.is_empty(), "no spawned services in-process");
        assert!(run.latency.count > 0);
    }
    assert!(suite.passed());

    // group: members alternate between the nodes, so each message crosses NATS to half of
    // them.
    let opts = group_opts(10);
    let run = group::run(&target, &opts, &common(), "cluster")
        .await
        .unwrap();
    let c = &run.correctness;
    assert!(run.totals.sent > 0, "sent nothing");
    assert_eq!(run.totals.send_errors, 0, "{:?}", c.first_error);
    assert_eq!(run.totals.delivered, run.totals.acked * 9);
    assert_eq!(
        (
            c.lost,
            c.duplicated,
            c.seq_mismatch,
            c.seq_collisions,
            c.seq_gaps,
            c.misdelivered,
            c.closed_by_server
        ),
        (0, 0, 0, 0, 0, 0, 0),
        "{c:?}"
    );
    assert!(c.arrived_out_of_order.is_some());
    assert_eq!(run.cluster.as_ref().unwrap().clients_per_node, vec![5, 5]);
    assert!(run.passed());

    // login: devices alternate between the nodes, seeders too.
    let opts = LoginOptions {
        devices: 12,
        concurrency: 6,
        devices_per_user: 2,
        convs: 2,
        msgs: 3,
        pull_messages: true,
        size: 32,
    };
    let report = login::run(&target, &opts, &common()).await.unwrap();
    assert!(report.passed(), "{:?}", report.first_failure);
    assert_eq!(report.synced_ok, 12);
    assert_eq!(report.seed.as_ref().unwrap().messages, 2 * 6 * 3);
    assert_eq!(report.conversations_synced, 12 * 2);
    assert_eq!(report.messages_synced, 12 * 2 * 3);
    assert_eq!(
        report.cluster.as_ref().unwrap().clients_per_node,
        vec![6, 6]
    );

    // Nodes first, then the services they use.
    drop(nodes);
    tokio::task::spawn_blocking(move || drop((nats, postgres)))
        .await
        .unwrap();
}
