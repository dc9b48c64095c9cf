//! Ingest: the pipeline's front door. It will take usage events over HTTP, validate and price them, and
//! produce them to the usage topic (or the dead-letter topic with the reason).
//!
//! - [`config`]: the service's [`Config`].
//! - [`error`]: the crate's [`Error`], which says whether a failure is worth retrying.
//! - [`run`] / [`run_with_listener`]: start the service and keep it up until shutdown.
//!
//! # What runs today
//! A skeleton: at startup it applies the ClickHouse migrations and creates the pipeline topics, then
//! serves `/metrics`, `/healthz` and `/readyz` until the shutdown token is cancelled.
//!
//! # Delivery guarantees
//! None yet, because nothing is delivered: the event API (`POST /v1/events`), validation, pricing and the
//! producer are **not built**, so this service accepts no events and writes nothing to Kafka. The
//! producer it will use is idempotent with `acks=all` (`infra::kafka::producer_config`); the guarantee
//! the API gives its callers will be stated here when the API exists.

pub mod api;
pub mod archive;
pub mod config;
pub mod dead_letter;
pub mod error;
pub mod pricer;
pub mod recorder;
pub mod validation;

use infra::shutdown::Shutdown;
use infra::telemetry::{ops_router, Readiness};
use tokio::net::TcpListener;
use tracing::info;

pub use config::Config;
pub use error::{Error, Result};

/// Binds `config.http.listen` and runs the service until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<()> {
    let address = config.http.listen;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| Error::Bind { address, source })?;
    run_with_listener(config, listener, shutdown).await
}

/// Runs the service on an already bound `listener` (tests bind `127.0.0.1:0` and read the port first)
/// until `shutdown` is cancelled; `config.http.listen` is not used.
///
/// The ops endpoints answer from the start, so while migrations run an orchestrator sees the process
/// alive (`/healthz`) but not ready (`/readyz` is 503). On shutdown: report not ready, then stop the
/// HTTP server. A failed startup stops the server too and returns the error.
pub async fn run_with_listener(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<()> {
    let listen = listener.local_addr().map_err(Error::Http)?;
    info!(listen = %listen, "service starting");
    let readiness = Readiness::default();
    // Its own token, so that a failed startup can stop the server without cancelling the caller's.
    let stop_http = shutdown.child_token();
    let http = infra::telemetry::serve(listener, ops_router(readiness.clone()), stop_http.clone());

    let lifecycle = async {
        let started = tokio::select! {
            // A shutdown during startup stops waiting on a server that may never answer.
            () = shutdown.cancelled() => Ok(()),
            started = start(&config) => started,
        };
        if started.is_ok() && !shutdown.is_cancelled() {
            readiness.set_ready(true);
            info!(listen = %listen, "service started");
            shutdown.cancelled().await;
            info!("service stopping");
        }
        readiness.set_ready(false);
        stop_http.cancel();
        started
    };
    let (served, started) = tokio::join!(http, lifecycle);
    started?;
    served.map_err(Error::Http)
}

/// What must exist before the service is ready: the ClickHouse tables and the Kafka topics.
async fn start(config: &Config) -> Result<()> {
    infra::migrations::migrate(&config.clickhouse)
        .await
        .map_err(Error::Migrations)?;
    let topics = infra::kafka::pipeline_topics(&config.kafka);
    infra::kafka::ensure_topics(&config.kafka, &topics)
        .await
        .map_err(Error::Topics)
}
