//! `quotaflow-receiver`: the local Slack/PagerDuty receiver the demo's alerter notifies
//! ([`alerter::receiver`]): it checks every payload against the documented formats and serves
//! what it captured at `GET /captured`. Nothing leaves the machine.

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "quotaflow-receiver")]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:9110")]
    listen: String,
    /// The routing key PagerDuty events must carry (a secret: from the environment).
    #[arg(long, env = "DEMO_PAGERDUTY_ROUTING_KEY", hide_env_values = true)]
    routing_key: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let receiver = alerter::receiver::Receiver::new(&args.routing_key);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    println!(
        "receiving Slack at http://{0}/slack and PagerDuty at http://{0}/pagerduty",
        args.listen
    );
    axum::serve(listener, receiver.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")
}
