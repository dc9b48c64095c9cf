//! `quotaflow-receiver`: the local Slack/PagerDuty receiver the demo's alerter notifies
//! ([`alerter::receiver`]): it checks every payload against the documented formats and serves
//! what it captured at `GET /captured`. Nothing leaves the machine.
//!
//! Plain HTTP by default (the demo); with `--tls-cert` and `--tls-key` it serves HTTPS, for trying
//! the alerter's `notify.ca_file` against a private CA.

use std::path::PathBuf;

use alerter::receiver::TlsListener;
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
    /// Serve HTTPS with this certificate chain (PEM, server certificate first); needs `--tls-key`.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let receiver = alerter::receiver::Receiver::new(&args.routing_key);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let router = receiver.router();
    let served = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |path: &PathBuf| {
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))
            };
            let listener =
                TlsListener::new(listener, &read(cert)?, &read(key)?).context("setting up TLS")?;
            announce("https", &args.listen);
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        _ => {
            announce("http", &args.listen);
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    served.context("serving")
}

fn announce(scheme: &str, listen: &str) {
    println!("receiving Slack at {scheme}://{listen}/slack and PagerDuty at {scheme}://{listen}/pagerduty");
}
