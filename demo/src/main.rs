//! `quotaflow-demo`: the main job's scripted run ([`demo::run`]). It exits 1 if a scenario did
//! not have its expected outcome.

use anyhow::{bail, Context, Result};
use clap::Parser;

#[tokio::main]
async fn main() -> Result<()> {
    let args = demo::run::Args::parse();
    let alerter_config: alerter::Config = infra::config::load(Some(&args.alerter_config))
        .with_context(|| format!("loading {}", args.alerter_config.display()))?;
    let outcomes = demo::run::run(&args, &alerter_config).await?;
    if outcomes.iter().any(|outcome| !outcome.ok) {
        bail!("a scenario did not have its expected outcome (see FAIL above)");
    }
    Ok(())
}
