//! Ingest: the pipeline's front door. It takes usage events over HTTP (`POST /v1/events`, see
//! [`api`]) and from the Rust producer library ([`recorder`]), validates and prices them, and
//! produces them to the usage topic.
//!
//! - [`config`]: the service's [`Config`].
//! - [`error`]: the crate's [`Error`], which says whether a failure is worth retrying.
//! - [`api`]: the HTTP event API and its OpenAPI document (`ingest/openapi.yaml`).
//! - [`recorder`] (the `quotaflow-recorder` crate), [`validation`], [`pricer`]: the producer
//!   library the API is built on.
//! - [`admission`] (the `quotaflow-admission` crate, which also holds [`validation`] and
//!   [`pricer`]): the one validation and pricing step of every reader of the usage topic.
//! - [`dead_letter`]: dead letters (built in `schemas`, written by `infra`, re-exported here).
//!
//! The raw archive (usage topic → ClickHouse) is a crate of its own, `quotaflow-archiver`, a
//! sibling of the aggregator; it reads this service's config file.
//! - [`run`] / [`run_with_listener`]: start the service and keep it up until shutdown.
//!
//! # What runs
//! At startup it applies the ClickHouse migrations, creates the pipeline topics and the producer, then
//! reports ready; `/metrics`, `/healthz`, `/readyz`, `/openapi.json` and `/openapi.yaml` answer from the
//! start, `POST /v1/events` answers 503 until ready.
//!
//! # Delivery guarantees
//! An event the API reports `accepted` is acknowledged by Kafka (`acks=all`, idempotent producer)
//! before the response is sent. When Kafka fails, the response says which events are in an unknown
//! state and the caller retries with the same `event_id`s; consumers count each `event_id` once. So
//! delivery into the usage topic is at least once, never lost after `accepted` (details in [`api`]).

pub mod api;
pub mod config;
pub mod dead_letter;
pub mod error;

// The producer library and the pure admission core are crates of their own (a gateway embeds the
// recorder without this service's HTTP server and runtime); re-exported under their old paths.
pub use quotaflow_admission as admission;
pub use quotaflow_admission::{pricer, validation};
pub use quotaflow_recorder as recorder;

use std::time::Duration;

use infra::shutdown::Shutdown;
use tokio::net::TcpListener;
use tracing::warn;

use crate::pricer::Pricer;
use crate::recorder::Recorder;

pub use config::Config;
pub use error::{Error, Result};

/// Binds `config.http.listen` and runs the service until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<()> {
    let listener = infra::service::bind(config.http.listen).await?;
    run_with_listener(config, listener, shutdown).await
}

/// How long shutdown waits for Kafka to acknowledge what the last requests enqueued. Every request
/// already awaited its own acknowledgements, so this only matters for a client that went away.
const FLUSH_DEADLINE: Duration = Duration::from_secs(10);

/// Runs the service on an already bound `listener` (tests bind `127.0.0.1:0` and read the port first)
/// until `shutdown` is cancelled; `config.http.listen` is not used.
///
/// The lifecycle is `infra::service`'s: the ops endpoints answer from the start, so while migrations
/// run an orchestrator sees the process alive (`/healthz`) but not ready (`/readyz` is 503), and
/// `POST /v1/events` answers 503 with `Retry-After`. Ready means: migrations applied, topics exist,
/// the producer created. On shutdown: report not ready, stop accepting connections, let in-flight
/// requests finish (each waits for its Kafka acknowledgements), then flush the producer.
pub async fn run_with_listener(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<()> {
    config.api.validate().map_err(Error::Config)?;
    if config.api.tokens.is_empty() {
        warn!("no api.tokens configured: POST /v1/events refuses every request with 401");
    }
    let api_state = api::ApiState::starting(&config.api);
    let routes = api::router(api_state.clone());
    let limits = api::server::ConnectionLimits::from(&config.api);
    let started = infra::service::serve_until_shutdown_with(
        listener,
        routes,
        shutdown,
        start(&config),
        |recorder| api_state.set_recorder(recorder.clone()),
        move |listener, router, stop| api::server::serve(listener, router, stop, limits),
    )
    .await?;
    if let Some(recorder) = started {
        if let Err(error) = recorder.flush(FLUSH_DEADLINE).await {
            warn!(error = %error, "kafka producer not flushed at shutdown");
        }
    }
    Ok(())
}

/// What must exist before the service is ready: the ClickHouse tables, the Kafka topics and the
/// producer (with its price catalog) that the API sends through.
async fn start(config: &Config) -> Result<Recorder> {
    infra::service::prepare_pipeline(&config.kafka, &config.clickhouse).await?;
    let pricer = Pricer::from_config(&config.pricing).map_err(Error::Pricing)?;
    Recorder::new(
        &config.kafka,
        &config.recorder,
        pricer,
        config.validation.clone(),
    )
    .map_err(Error::Recorder)
}
