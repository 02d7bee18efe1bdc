//! A tiny run of every scenario against an in-process server (and the in-process relay).
//! Checks counts and correctness only: speed is measured with the release binary, never here.

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use magpie_bench::progress::Progress;
use magpie_bench::relay;
use magpie_bench::scenarios::Common;
use magpie_bench::scenarios::c2c::{self, C2cOptions, LoadMode, SuiteOptions};
use magpie_bench::scenarios::catchup::{self, CatchupOptions};
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_target = Target::relay(listener.local_addr().unwrap(), None);
    let stop = CancellationToken::new();
    let relay_task = tokio::spawn(relay::serve(listener, stop.clone()));

    let opts = SuiteOptions {
        run: C2cOptions {
            users: 4,
            size: 64,
            mode: LoadMode::Closed { window: 4 },
            duration: Duration::from_secs(1),
            warmup: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(10),
        },
        sweep: vec![0.5],
    };
    let suite = c2c::suite(&magpie, Some(&relay_target), &opts, &common())
        .await
        .unwrap();
    stop.cancel();
    relay_task.await.unwrap();

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
