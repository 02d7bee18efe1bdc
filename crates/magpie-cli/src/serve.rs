//! `magpie serve`: the server — alone with the embedded store, or one node of a cluster with
//! `--store postgres://… --cluster nats://…`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use magpie_server::Config;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080, or `listen` in the config file].
    #[arg(long, env = "MAGPIE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./magpie-data, or `data_dir` in the config file].
    #[arg(long, env = "MAGPIE_DATA")]
    data: Option<PathBuf>,
    /// TOML configuration file (see docs/DEPLOYMENT.md for every key).
    #[arg(long, env = "MAGPIE_CONFIG")]
    config: Option<PathBuf>,
    /// Keep everything in this PostgreSQL database (`postgres://user@host:port/db`) instead of
    /// the embedded store; required for a cluster [or `store.url` in the config file].
    #[arg(long, env = "MAGPIE_STORE", value_name = "POSTGRES_URL")]
    store: Option<String>,
    /// Join the cluster whose nodes talk through this NATS server (`nats://host:4222`)
    /// [or `cluster.url` in the config file].
    #[arg(long, env = "MAGPIE_CLUSTER", value_name = "NATS_URL")]
    cluster: Option<String>,
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.apply_env(|name| std::env::var(name).ok())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(data) = args.data {
        config.data_dir = data;
    }
    if let Some(store) = args.store {
        config.store.url = Some(store);
    }
    if let Some(cluster) = args.cluster {
        config.cluster.url = Some(cluster);
    }
    config.validate()?;
    init_logging(&config)?;

    let (secret, generated) = config.resolve_app_secret()?;
    if generated {
        eprintln!(
            "Generated an app secret and kept it in {path}.\n\
             Your app backend authenticates with it; the CLI reads it from MAGPIE_APP_SECRET:\n\n  \
             export MAGPIE_APP_SECRET=$(cat {path})\n  \
             magpie admin user create alice && magpie admin token alice\n",
            path = config.secret_path().display()
        );
    }
    config.app_secret = Some(secret);

    let listener = magpie_server::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    magpie_server::run(config, listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .with_context(|| format!("invalid log filter {:?}", config.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = if config.log_format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
