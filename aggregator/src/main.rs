//! `quotaflow-aggregator`: reads the config, sets up logging and runs [`aggregator::run`] until SIGINT/SIGTERM.

use std::path::PathBuf;

use clap::Parser;

/// The quotaflow aggregator service.
#[derive(Debug, Parser)]
#[command(name = "quotaflow-aggregator", version, about)]
struct Args {
    /// TOML config file; `QUOTAFLOW_*` environment variables override what it sets.
    #[arg(long, env = "QUOTAFLOW_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    infra::telemetry::init_tracing();
    let config: aggregator::Config = infra::config::load(args.config.as_deref())?;
    let shutdown = infra::shutdown::on_signal();
    aggregator::run(config, shutdown).await?;
    Ok(())
}
