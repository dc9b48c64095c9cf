//! `quotaflow-archiver`: the raw archive on its own (usage topic → ClickHouse `usage_events_raw`,
//! exactly once; see `ingest::archive`). Reads the ingest config, sets up logging, optionally
//! serves `/metrics`, and runs [`ingest::archive::run`] until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// The quotaflow raw archive consumer.
#[derive(Debug, Parser)]
#[command(name = "quotaflow-archiver", version, about)]
struct Args {
    /// TOML config file (the ingest service's); `QUOTAFLOW_*` environment variables override it.
    #[arg(long, env = "QUOTAFLOW_CONFIG")]
    config: Option<PathBuf>,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address (off when absent).
    #[arg(long, env = "QUOTAFLOW_ARCHIVER_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    infra::telemetry::init_tracing();
    let config: ingest::Config = infra::config::load(args.config.as_deref())?;
    let shutdown = infra::shutdown::on_signal();
    let ops = match args.metrics_listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address).await?;
            let readiness = infra::telemetry::Readiness::default();
            readiness.set_ready(true);
            let router = infra::telemetry::ops_router(readiness);
            Some(tokio::spawn(infra::telemetry::serve(
                listener,
                router,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let result = ingest::archive::run(&config, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(ops) = ops {
        ops.await??;
    }
    result?;
    Ok(())
}
