//! `quotaflow-alerter`: reads the config, sets up logging and runs [`alerter::run`] until SIGINT/SIGTERM.

use std::path::PathBuf;

use clap::Parser;

/// The quotaflow alerter service.
#[derive(Debug, Parser)]
#[command(name = "quotaflow-alerter", version, about)]
struct Args {
    /// TOML config file; `QUOTAFLOW_*` environment variables override what it sets.
    #[arg(long, env = "QUOTAFLOW_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    infra::telemetry::init_tracing();
    let config: alerter::Config = infra::config::load(args.config.as_deref())?;
    let shutdown = infra::shutdown::on_signal();
    alerter::run(config, shutdown).await?;
    Ok(())
}
