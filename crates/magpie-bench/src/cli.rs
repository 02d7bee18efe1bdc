//! The command line, and the glue around a scenario: spawn (or find) the systems under test,
//! run, print the summary table, write `--json` and `--plot`, and turn correctness into the
//! exit status (0 passed, 1 a correctness check failed; errors exit 2 from `main`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use magpie_proto::Codec;
use serde::Serialize;

use crate::client::SourceAddrs;
use crate::progress::Progress;
use crate::report::{self, Document, Meta, plot, table};
use crate::scenarios::Common;
use crate::scenarios::c2c::{self, C2cOptions, LoadMode, SuiteOptions};
use crate::scenarios::catchup::{self, CatchupOptions};
use crate::scenarios::group::{self, GroupOptions, RunLength};
use crate::scenarios::idle::{self, IdleOptions};
use crate::scenarios::login::{self, LoginOptions};
use crate::target::{self, Spawned, SpawnedCluster, Target};

/// magpie-bench: load generator for the Magpie server, with a bare WebSocket relay as the
/// baseline. By default every scenario spawns the server under test itself.
#[derive(Debug, Parser)]
#[command(name = "magpie-bench", version, about, propagate_version = true)]
pub struct Cli {
    /// The scenario (or the relay).
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open N authenticated connections, hold them, report server RSS per connection.
    Idle(IdleArgs),
    /// One-to-one messages between U online users: throughput, latency, exactly-once checks.
    C2c(C2cArgs),
    /// One group of M online members, S of them sending to it: per-delivery latency,
    /// deliveries/s, exactly-once and in-order checks.
    Group(GroupArgs),
    /// A login storm: N devices log in and finish their sync.
    Login(LoginArgs),
    /// A fresh SDK device of a user with C conversations x K new messages: time to synced.
    Catchup(CatchupArgs),
    /// Run the bare WebSocket relay (the baseline); prints `listening on ADDR`.
    Relay(RelayArgs),
}

/// Which server to benchmark.
#[derive(Debug, Args, Clone)]
pub struct TargetArgs {
    /// The `magpie` binary to spawn [default: `magpie` next to this executable].
    #[arg(long, value_name = "PATH")]
    pub magpie_bin: Option<PathBuf>,
    /// Benchmark an already running server (http://host:port) instead of spawning one.
    /// Repeat it (or give a comma-separated list) for the nodes of a running cluster: clients
    /// are spread over them.
    #[arg(
        long,
        value_name = "URL",
        value_delimiter = ',',
        conflicts_with = "cluster"
    )]
    pub server: Vec<String>,
    /// The app secret of --server (of every node).
    #[arg(long, value_name = "S")]
    pub secret: Option<String>,
    /// The pid of --server, to sample its RSS and CPU from /proc; repeat it (or a
    /// comma-separated list) for the nodes of a cluster: they are summed.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub pid: Vec<u32>,
    /// Spawn a cluster of N nodes instead of one server: PostgreSQL and nats-server on
    /// random loopback ports (they must be installed), then N `magpie serve --store …
    /// --cluster …` sharing one app secret. Clients are spread over the nodes.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub cluster: Option<u16>,
    /// A TOML config for the spawned server instead of the generated one (rate limits
    /// lifted, everything else default).
    #[arg(long, value_name = "FILE")]
    pub server_config: Option<PathBuf>,
    /// Where the spawned server's temporary data directory goes [default: the temp dir].
    #[arg(long, value_name = "DIR")]
    pub data_parent: Option<PathBuf>,
    /// Keep the spawned server's data directory and log after the run.
    #[arg(long)]
    pub keep_data: bool,
}

/// Output and client settings every scenario shares.
#[derive(Debug, Args, Clone)]
pub struct CommonArgs {
    /// Wire encoding of the clients.
    #[arg(long, value_enum, default_value_t = CodecArg::Json)]
    pub codec: CodecArg,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write SVG plots into this directory.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// Interval of the /proc sampler, milliseconds.
    #[arg(long, default_value_t = 250, value_name = "MS")]
    pub sample_ms: u64,
    /// Spread client sockets over 127.0.0.1 … 127.0.0.N (0: let the kernel pick).
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub source_ips: u8,
    /// REST calls in flight while creating users.
    #[arg(long, default_value_t = crate::rest::DEFAULT_CONCURRENCY, value_name = "N")]
    pub rest_concurrency: usize,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
    /// No progress bars and no status lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// `--codec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CodecArg {
    /// JSON text frames (`magpie.v1.json`).
    Json,
    /// MessagePack binary frames (`magpie.v1.msgpack`).
    Msgpack,
}

/// `idle`.
#[derive(Debug, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    common: CommonArgs,
    /// Connections to open and hold.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    connections: usize,
    /// Connections per RSS sample (the step of the RSS-vs-connections series).
    #[arg(long, default_value_t = 10_000)]
    step: usize,
    /// Handshakes + logins in flight.
    #[arg(long, default_value_t = 500)]
    concurrency: usize,
    /// Devices per user (1 to 4, one per platform class).
    #[arg(long, default_value_t = 4)]
    devices_per_user: usize,
    /// How long to hold every connection before the final sample.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    hold: Duration,
    /// Skip the final ping of every connection.
    #[arg(long)]
    no_verify: bool,
}

/// `c2c`.
#[derive(Debug, Args)]
pub struct C2cArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    common: CommonArgs,
    /// Online users; user i sends to user (i + 1) % U.
    #[arg(long, short = 'u', default_value_t = 100)]
    users: usize,
    /// Message text size in bytes.
    #[arg(long, short = 's', default_value_t = 100)]
    size: usize,
    /// Closed loop: sends in flight per sender.
    #[arg(long, short = 'w', default_value_t = 10, conflicts_with = "rate")]
    window: usize,
    /// Open loop: total offered messages per second (fixed timetable; latency from the
    /// scheduled time).
    #[arg(long, short = 'r')]
    rate: Option<f64>,
    /// Measured window.
    #[arg(long, short = 'd', default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before the measured window.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// Longest wait for the last answers and deliveries after the window.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Run the same load against the relay baseline first and report Magpie / relay.
    #[arg(long)]
    with_relay: bool,
    /// Open-loop steps after the base run, as fractions of Magpie's measured maximum (or of
    /// --rate), e.g. 0.1,0.25,0.5,0.75,0.9.
    #[arg(long, value_delimiter = ',', value_name = "FRACTIONS")]
    sweep: Vec<f64>,
}

/// `group`.
#[derive(Debug, Args)]
pub struct GroupArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    common: CommonArgs,
    /// Online members, one connection each; the group has exactly these members.
    #[arg(long, short = 'm', default_value_t = 1_000)]
    members: usize,
    /// Members that send to the group (members 0 … S-1).
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Message text size in bytes.
    #[arg(long, short = 's', default_value_t = 100)]
    size: usize,
    /// Closed loop: messages in flight per sender, each until acked and delivered to every
    /// other member. Each member may have window x senders messages queued on the server:
    /// keep that below the server's outbound queue (1024 events by default).
    #[arg(long, short = 'w', default_value_t = 64, conflicts_with = "rate")]
    window: usize,
    /// Open loop: total offered messages per second, all senders together (fixed timetable;
    /// latency from the scheduled time).
    #[arg(long, short = 'r')]
    rate: Option<f64>,
    /// Measured window.
    #[arg(long, short = 'd', default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before the measured window.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// Send N messages in total (split over the senders) instead of running for a duration;
    /// the whole run, until the last one is delivered, is measured.
    #[arg(long, short = 'n', conflicts_with_all = ["duration", "warmup"])]
    messages: Option<u64>,
    /// Longest wait for the last answers and deliveries after the window (with --messages:
    /// longest time without progress).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Run the same load against the relay baseline first and report Magpie / relay.
    #[arg(long)]
    with_relay: bool,
    /// Open-loop steps after the base run, as fractions of Magpie's measured acked msg/s (or
    /// of --rate), e.g. 0.5.
    #[arg(long, value_delimiter = ',', value_name = "FRACTIONS")]
    sweep: Vec<f64>,
}

/// `login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    common: CommonArgs,
    /// Devices that log in.
    #[arg(long, short = 'n', default_value_t = 5_000)]
    devices: usize,
    /// Devices connecting and syncing at once.
    #[arg(long, default_value_t = 500)]
    concurrency: usize,
    /// Devices per user (1 to 4).
    #[arg(long, default_value_t = 1)]
    devices_per_user: usize,
    /// Conversations per user seeded before the storm.
    #[arg(long, default_value_t = 1)]
    convs: usize,
    /// Messages per conversation seeded before the storm (0: nothing to sync).
    #[arg(long, default_value_t = 1)]
    msgs: u64,
    /// Only `sync`; do not pull the messages with get_messages.
    #[arg(long)]
    no_pull: bool,
    /// Seeded message text size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
}

/// `catchup`.
#[derive(Debug, Args)]
pub struct CatchupArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    common: CommonArgs,
    /// Conversations with new messages.
    #[arg(long, short = 'c', default_value_t = 1_000)]
    convs: usize,
    /// New messages per conversation.
    #[arg(long, short = 'k', default_value_t = 100)]
    msgs: u64,
    /// Fresh devices to time, one after another.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Seeders sending at once.
    #[arg(long, default_value_t = 64)]
    seed_concurrency: usize,
    /// Sends in flight per seeder.
    #[arg(long, default_value_t = 64)]
    seed_window: usize,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
}

/// `relay`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// Seconds (`20`, `0.5`) or a humantime duration (`20s`, `1m30s`, `250ms`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| e.to_string());
    }
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Runs a parsed command line. `fd_limit` is the open-file limit `main` raised to.
pub async fn run(cli: Cli, fd_limit: u64) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Relay(args) => {
            crate::relay::run(args.listen).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Idle(args) => idle_cmd(args, fd_limit).await,
        Command::C2c(args) => c2c_cmd(args, fd_limit).await,
        Command::Group(args) => group_cmd(args, fd_limit).await,
        Command::Login(args) => login_cmd(args, fd_limit).await,
        Command::Catchup(args) => catchup_cmd(args, fd_limit).await,
    }
}

fn common_from(args: &CommonArgs) -> Common {
    let progress = Progress::new(!args.no_progress, args.quiet);
    let mut common = Common::new(progress);
    common.codec = match args.codec {
        CodecArg::Json => Codec::Json,
        CodecArg::Msgpack => Codec::MsgPack,
    };
    common.sources = SourceAddrs::new(args.source_ips);
    common.sample_every = Duration::from_millis(args.sample_ms.max(10));
    common.rest_concurrency = args.rest_concurrency.max(1);
    common
}

/// The server under test: spawned (and owned) or external.
struct Sut {
    target: Target,
    spawned: Option<Spawned>,
    cluster: Option<SpawnedCluster>,
    keep: bool,
}

impl Sut {
    async fn start(args: &TargetArgs, progress: &Progress) -> anyhow::Result<Self> {
        if !args.server.is_empty() {
            let Some(secret) = args
                .secret
                .clone()
                .or_else(|| std::env::var("MAGPIE_APP_SECRET").ok())
            else {
                bail!("--server needs --secret (or MAGPIE_APP_SECRET)");
            };
            if args.pid.is_empty() {
                progress.note("no --pid: server RSS and CPU will not be sampled");
            }
            let target = if args.server.len() == 1 {
                if args.pid.len() > 1 {
                    bail!("one --server takes one --pid");
                }
                Target::magpie(&args.server[0], &secret, args.pid.first().copied()).await?
            } else {
                if !args.pid.is_empty() && args.pid.len() != args.server.len() {
                    progress.note(format!(
                        "{} --pid for {} --server: only those pids are sampled",
                        args.pid.len(),
                        args.server.len()
                    ));
                }
                progress.note(format!(
                    "cluster of {} nodes: clients spread over them",
                    args.server.len()
                ));
                Target::cluster(&args.server, &secret, args.pid.clone()).await?
            };
            return Ok(Self {
                target,
                spawned: None,
                cluster: None,
                keep: false,
            });
        }
        let bin = match &args.magpie_bin {
            Some(bin) => bin.clone(),
            None => target::default_magpie_bin()?,
        };
        if let Some(nodes) = args.cluster {
            let cluster = target::spawn_cluster(
                &bin,
                usize::from(nodes),
                args.data_parent.as_deref(),
                args.server_config.as_deref(),
                |line| progress.note(line),
            )
            .await?;
            return Ok(Self {
                target: cluster.target.clone(),
                spawned: None,
                cluster: Some(cluster),
                keep: args.keep_data,
            });
        }
        let spawned = target::spawn_magpie(
            &bin,
            args.data_parent.as_deref(),
            args.server_config.as_deref(),
        )
        .await?;
        progress.note(format!(
            "spawned {} (pid {}) at {}",
            bin.display(),
            spawned.target.pid.unwrap_or_default(),
            spawned.target.ws.url()
        ));
        Ok(Self {
            target: spawned.target.clone(),
            spawned: Some(spawned),
            cluster: None,
            keep: args.keep_data,
        })
    }

    async fn stop(self, progress: &Progress) {
        if let Some(mut spawned) = self.spawned {
            if self.keep
                && let Some(dir) = spawned.keep_data()
            {
                progress.note(format!(
                    "kept the server's data and log in {}",
                    dir.display()
                ));
            }
            spawned.stop().await;
        }
        if let Some(mut cluster) = self.cluster {
            if self.keep {
                for dir in cluster.keep_data() {
                    progress.note(format!("kept a node's data and log in {}", dir.display()));
                }
            }
            cluster.stop().await;
        }
    }
}

fn finish<T: Serialize>(
    common_args: &CommonArgs,
    meta: &Meta,
    scenario: &str,
    passed: bool,
    result: &T,
    summary: &str,
) -> anyhow::Result<ExitCode> {
    println!("{summary}");
    if let Some(path) = &common_args.json {
        report::write_json(
            path,
            &Document {
                meta,
                scenario,
                passed,
                result,
            },
        )?;
        eprintln!("wrote {}", path.display());
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn plot_note(progress: &Progress, written: anyhow::Result<Option<PathBuf>>) {
    match written {
        Ok(Some(path)) => progress.note(format!("wrote {}", path.display())),
        Ok(None) => progress.note("no plot: the run had no sweep (use --sweep)"),
        Err(e) => progress.note(format!("plot failed: {e:#}")),
    }
}

async fn idle_cmd(args: IdleArgs, fd_limit: u64) -> anyhow::Result<ExitCode> {
    let meta = Meta::collect(fd_limit);
    let common = common_from(&args.common);
    let needed = (args.connections as u64) * 2 + 1_000;
    if fd_limit < needed {
        common.progress.note(format!(
            "warning: the open-file limit is {fd_limit}; {} connections need about {needed} (client and server sides when the server is spawned)",
            args.connections
        ));
    }
    let sut = Sut::start(&args.target, &common.progress).await?;
    let opts = IdleOptions {
        connections: args.connections,
        step: args.step,
        concurrency: args.concurrency,
        devices_per_user: args.devices_per_user,
        hold: args.hold,
        verify: !args.no_verify,
    };
    let result = idle::run(&sut.target, &opts, &common).await;
    sut.stop(&common.progress).await;
    let report = result?;
    if let Some(dir) = &args.common.plot {
        plot_note(&common.progress, plot::idle_rss(dir, &report).map(Some));
    }
    let passed = report.passed();
    finish(
        &args.common,
        &meta,
        "idle",
        passed,
        &report,
        &table::idle(&report),
    )
}

/// The load of `--rate` (open loop) or else `--window` (closed loop), with the `--sweep`
/// fractions checked.
fn load_mode(rate: Option<f64>, window: usize, sweep: &[f64]) -> anyhow::Result<LoadMode> {
    let mode = match rate {
        Some(rate) if rate > 0.0 => LoadMode::Open { rate },
        Some(_) => bail!("--rate must be positive"),
        None => LoadMode::Closed {
            window: window.max(1),
        },
    };
    if sweep.iter().any(|f| !(*f > 0.0 && f.is_finite())) {
        bail!("--sweep fractions must be positive numbers");
    }
    Ok(mode)
}

/// Spawns the relay (`with_relay`), starts the system under test, runs `f` against both, and
/// stops them whatever `f` returned.
async fn with_sut_and_relay<T>(
    target: &TargetArgs,
    with_relay: bool,
    progress: &Progress,
    f: impl AsyncFnOnce(&Target, Option<&Target>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let relay = if with_relay {
        let exe = std::env::current_exe().context("cannot locate this executable")?;
        let relay = target::spawn_relay(&exe).await?;
        progress.note(format!(
            "spawned the relay (pid {}) at {}",
            relay.target.pid.unwrap_or_default(),
            relay.target.ws.url()
        ));
        Some(relay)
    } else {
        None
    };
    let sut = Sut::start(target, progress).await?;
    let result = f(&sut.target, relay.as_ref().map(|r| &r.target)).await;
    sut.stop(progress).await;
    if let Some(relay) = relay {
        relay.stop().await;
    }
    result
}

async fn c2c_cmd(args: C2cArgs, fd_limit: u64) -> anyhow::Result<ExitCode> {
    let meta = Meta::collect(fd_limit);
    let common = common_from(&args.common);
    let mode = load_mode(args.rate, args.window, &args.sweep)?;
    let opts = SuiteOptions {
        run: C2cOptions {
            users: args.users,
            size: args.size,
            mode,
            duration: args.duration,
            warmup: args.warmup,
            drain_timeout: args.drain_timeout,
        },
        sweep: args.sweep.clone(),
    };
    let suite = with_sut_and_relay(
        &args.target,
        args.with_relay,
        &common.progress,
        async |sut, relay| c2c::suite(sut, relay, &opts, &common).await,
    )
    .await?;
    if let Some(dir) = &args.common.plot {
        plot_note(&common.progress, plot::c2c_latency(dir, &suite));
    }
    let passed = suite.passed();
    finish(
        &args.common,
        &meta,
        "c2c",
        passed,
        &suite,
        &table::c2c(&suite),
    )
}

async fn group_cmd(args: GroupArgs, fd_limit: u64) -> anyhow::Result<ExitCode> {
    let meta = Meta::collect(fd_limit);
    let common = common_from(&args.common);
    let mode = load_mode(args.rate, args.window, &args.sweep)?;
    if args.members < 2 || args.senders == 0 || args.senders > args.members {
        bail!("a group run needs --members >= 2 and 1 <= --senders <= --members");
    }
    let needed = (args.members as u64) * 2 + 1_000;
    if fd_limit < needed {
        common.progress.note(format!(
            "warning: the open-file limit is {fd_limit}; {} members need about {needed}",
            args.members
        ));
    }
    if let LoadMode::Closed { window } = mode
        && window * args.senders > 512
    {
        common.progress.note(format!(
            "warning: up to {} messages may wait for each member; the server's default outbound queue holds 1024 events before it closes a slow consumer",
            window * args.senders
        ));
    }
    let opts = group::SuiteOptions {
        run: GroupOptions {
            members: args.members,
            senders: args.senders,
            size: args.size,
            mode,
            length: match args.messages {
                Some(n) => RunLength::Messages(n.max(1)),
                None => RunLength::Time {
                    warmup: args.warmup,
                    duration: args.duration,
                },
            },
            drain_timeout: args.drain_timeout,
        },
        sweep: args.sweep.clone(),
    };
    let suite = with_sut_and_relay(
        &args.target,
        args.with_relay,
        &common.progress,
        async |sut, relay| group::suite(sut, relay, &opts, &common).await,
    )
    .await?;
    if args.common.plot.is_some() {
        common
            .progress
            .note("no plot: group has none (the JSON has every figure)");
    }
    let passed = suite.passed();
    finish(
        &args.common,
        &meta,
        "group",
        passed,
        &suite,
        &table::group(&suite),
    )
}

async fn login_cmd(args: LoginArgs, fd_limit: u64) -> anyhow::Result<ExitCode> {
    let meta = Meta::collect(fd_limit);
    let common = common_from(&args.common);
    let sut = Sut::start(&args.target, &common.progress).await?;
    let opts = LoginOptions {
        devices: args.devices,
        concurrency: args.concurrency,
        devices_per_user: args.devices_per_user,
        convs: args.convs,
        msgs: args.msgs,
        pull_messages: !args.no_pull,
        size: args.size,
    };
    let result = login::run(&sut.target, &opts, &common).await;
    sut.stop(&common.progress).await;
    let report = result?;
    let passed = report.passed();
    finish(
        &args.common,
        &meta,
        "login",
        passed,
        &report,
        &table::login(&report),
    )
}

async fn catchup_cmd(args: CatchupArgs, fd_limit: u64) -> anyhow::Result<ExitCode> {
    let meta = Meta::collect(fd_limit);
    let common = common_from(&args.common);
    let sut = Sut::start(&args.target, &common.progress).await?;
    let opts = CatchupOptions {
        convs: args.convs,
        msgs: args.msgs,
        repeat: args.repeat,
        seed_concurrency: args.seed_concurrency,
        seed_window: args.seed_window,
        size: args.size,
    };
    let result = catchup::run(&sut.target, &opts, &common).await;
    sut.stop(&common.progress).await;
    let report = result?;
    let passed = report.passed();
    finish(
        &args.common,
        &meta,
        "catchup",
        passed,
        &report,
        &table::catchup(&report),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse_as_seconds_or_humantime() {
        assert_eq!(parse_duration("20").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn c2c_flags_parse() {
        let cli = Cli::try_parse_from([
            "magpie-bench",
            "c2c",
            "--users",
            "4",
            "--rate",
            "1000",
            "--sweep",
            "0.25,0.5",
            "--with-relay",
        ])
        .unwrap();
        let Command::C2c(args) = cli.command else {
            panic!("not c2c")
        };
        assert_eq!(args.sweep, vec![0.25, 0.5]);
        assert_eq!(args.rate, Some(1000.0));
        assert!(
            Cli::try_parse_from(["magpie-bench", "c2c", "--rate", "5", "--window", "3"]).is_err()
        );
    }

    #[test]
    fn group_flags_parse() {
        let cli = Cli::try_parse_from([
            "magpie-bench",
            "group",
            "--members",
            "1000",
            "--senders",
            "4",
            "--messages",
            "500",
            "--with-relay",
        ])
        .unwrap();
        let Command::Group(args) = cli.command else {
            panic!("not group")
        };
        assert_eq!((args.members, args.senders), (1000, 4));
        assert_eq!(args.messages, Some(500));
        assert_eq!(args.window, 64);
        assert!(args.with_relay);
        let cli =
            Cli::try_parse_from(["magpie-bench", "group", "-m", "20", "--rate", "50"]).unwrap();
        let Command::Group(args) = cli.command else {
            panic!("not group")
        };
        assert_eq!(args.rate, Some(50.0));
        assert!(
            Cli::try_parse_from([
                "magpie-bench",
                "group",
                "--messages",
                "5",
                "--duration",
                "3"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from(["magpie-bench", "group", "--rate", "5", "--window", "3"]).is_err()
        );
    }

    #[test]
    fn cluster_flags_parse() {
        let cli = Cli::try_parse_from(["magpie-bench", "login", "--cluster", "3"]).unwrap();
        let Command::Login(args) = cli.command else {
            panic!("not login")
        };
        assert_eq!(args.target.cluster, Some(3));
        let cli = Cli::try_parse_from([
            "magpie-bench",
            "c2c",
            "--server",
            "http://127.0.0.1:1",
            "--server",
            "http://127.0.0.1:2,http://127.0.0.1:3",
            "--pid",
            "10,11",
            "--pid",
            "12",
        ])
        .unwrap();
        let Command::C2c(args) = cli.command else {
            panic!("not c2c")
        };
        assert_eq!(args.target.server.len(), 3);
        assert_eq!(args.target.pid, vec![10, 11, 12]);
        assert!(
            Cli::try_parse_from([
                "magpie-bench",
                "c2c",
                "--cluster",
                "2",
                "--server",
                "http://h:1"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["magpie-bench", "c2c", "--cluster", "0"]).is_err());
    }
}
