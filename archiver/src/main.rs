//! `quotaflow-archiver`: the raw archive (usage topic → ClickHouse `usage_events_raw`, exactly
//! once; see the `quotaflow_archiver` crate). Reads the config (the ingest service's file), sets
//! up logging, optionally serves `/metrics`, and runs the archive until SIGINT/SIGTERM.

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
    /// (Overrides `archive.metrics_listen`.)
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    infra::telemetry::init_tracing();
    let config: quotaflow_archiver::Config = infra::config::load(args.config.as_deref())?;
    let shutdown = infra::shutdown::on_signal();
    let listener = match args.metrics_listen.or(config.archive.metrics_listen) {
        Some(address) => Some(infra::service::bind(address).await?),
        None => None,
    };
    let result = infra::service::run_worker("archiver", listener, &shutdown, |readiness| {
        quotaflow_archiver::Archiver::new(config)
            .with_readiness(readiness)
            .run(shutdown.clone())
    })
    .await;
    result?;
    Ok(())
}
