//! Alerter: the pipeline's policy engine. It will evaluate quota policies against window totals, raise
//! soft alerts and hard caps (honouring approvals), notify Slack and PagerDuty, and publish the
//! block/allow/degrade decisions gateways obey to the control topic.
//!
//! - [`config`]: the service's [`Config`].
//! - [`evaluate`]: [`evaluate::Evaluator`], the soft-alert ladder, hard caps and resets of a
//!   policy on a window's total. Pure.
//! - [`notify`]: Slack (Block Kit) and PagerDuty (Events API v2) notifiers with retries and storm
//!   grouping.
//! - [`totals`]: [`totals::TotalsView`], the aggregator's totals as read from the totals topic
//!   (highest version per partition, summed over partitions). Pure; no consumer feeds it yet.
//! - [`Error`]: why the service stopped ([`infra::service::ServiceError`]), with a retry hint.
//! - [`run`] / [`run_with_listener`]: start the service and keep it up until shutdown.
//!
//! # What runs today
//! The building blocks above, and a skeleton service: at startup it applies the ClickHouse migrations and creates the pipeline topics, then
//! serves `/metrics`, `/healthz` and `/readyz` until the shutdown token is cancelled.
//!
//! # Delivery guarantees
//! None yet, because nothing is consumed or sent: the totals and approvals consumers, policy evaluation,
//! notifications and the control-topic producer are **not built**, and `group_id` is only logged.
//! Nothing here blocks or allows any traffic today; gateways see no control decisions from this
//! service until that is built.

pub mod config;
pub mod evaluate;
pub mod notify;
pub mod totals;

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
