//! Aggregator: the pipeline's stream processor. It will consume priced usage events, keep windowed
//! per-scope totals in ClickHouse and publish them to the totals topic for the alerter.
//!
//! - [`config`]: the service's [`Config`].
//! - [`measures`]: [`measures::Measures`], the `window_totals` measures and one event's exact contribution.
//! - [`scopes`]: which (scope kind, scope key) totals an event counts under, and in which window specs.
//! - [`state`]: [`state::TotalsState`], in-memory windowed totals: apply, dirty set, drain, bounded eviction.
//! - [`Error`]: why the service stopped ([`infra::service::ServiceError`]), with a retry hint.
//! - [`run`] / [`run_with_listener`]: start the service and keep it up until shutdown.
//!
//! # What runs today
//! A skeleton: at startup it applies the ClickHouse migrations and creates the pipeline topics, then
//! serves `/metrics`, `/healthz` and `/readyz` until the shutdown token is cancelled.
//!
//! # Delivery guarantees
//! None yet, because nothing is consumed: the usage consumer, the window arithmetic, the ClickHouse
//! writes and the totals producer are **not built**, and `group_id` is only logged. The design they
//! must meet (CONVENTIONS.md §2–4): offsets stored only after the totals they produced are durable in
//! ClickHouse, so a crash replays events and never skips them, and totals versioned by offset so a
//! replay does not count an event twice. Until that is built and tested under `kill -9`, claim nothing.

pub mod config;
pub mod measures;
pub mod scopes;
pub mod state;

use infra::shutdown::Shutdown;
use tokio::net::TcpListener;
use tracing::info;

pub use config::Config;
pub use infra::service::ServiceError as Error;

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Binds `config.http.listen` and runs the service until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<()> {
    let listener = infra::service::bind(config.http.listen).await?;
    run_with_listener(config, listener, shutdown).await
}

/// Runs the service on an already bound `listener` (tests bind `127.0.0.1:0` and read the port first)
/// until `shutdown` is cancelled; `config.http.listen` is not used. The lifecycle (ops endpoints from
/// the start, ready after migrations and topics, orderly stop) is `infra::service`'s.
pub async fn run_with_listener(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<()> {
    let start = infra::service::prepare_pipeline(&config.kafka, &config.clickhouse);
    infra::service::serve_until_shutdown(listener, axum::Router::new(), shutdown, start, |_| {
        info!(group_id = %config.group_id, "consumer group configured");
    })
    .await
    .map(|_| ())
}
