//! `quotaflow-decide`: reads the config, sets up logging and runs [`quotaflow_decide::run`] until
//! SIGINT/SIGTERM.

use std::path::PathBuf;

use clap::Parser;

/// The quotaflow decision sidecar (Envoy ext_authz, HTTP forward-auth, JSON checks).
#[derive(Debug, Parser)]
#[command(name = "quotaflow-decide", version, about)]
struct Args {
    /// TOML config file; `QUOTAFLOW_*` environment variables override what it sets.
    #[arg(long, env = "QUOTAFLOW_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    infra::telemetry::init_tracing();
    let config: quotaflow_decide::Config = infra::config::load(args.config.as_deref())?;
    let shutdown = infra::shutdown::on_signal();
    quotaflow_decide::run(config, shutdown).await?;
    Ok(())
}
