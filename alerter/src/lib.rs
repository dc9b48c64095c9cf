//! Alerter: the pipeline's policy engine. It evaluates quota policies against the aggregator's
//! window totals, raises soft alerts and hard caps (honouring approvals), notifies Slack and
//! PagerDuty, and publishes the block/allow/degrade decisions gateways obey to the control topic.
//!
//! - [`config`]: the service's [`Config`].
//! - [`engine`]: [`engine::Engine`], every decision and alert as a pure function of policies,
//!   totals, approvals and what the control and alerts topics hold (desired state, versioned
//!   decisions, deterministic alert keys).
//! - [`actions`]: [`actions::ActionWatch`], retry and fallback rules per user action, on the
//!   usage events.
//! - [`anomaly`]: [`anomaly::Detector`], robust z-scores of a scope's traffic mix against its own
//!   trailing baseline.
//! - [`evaluate`]: [`evaluate::unit_amount`], a policy's amount in a total.
//! - [`notify`]: Slack (Block Kit) and PagerDuty (Events API v2) notifiers with retries and storm
//!   grouping.
//! - [`totals`]: [`totals::TotalsView`], the aggregator's totals as read from the totals topic
//!   (highest version per partition, summed over partitions).
//! - [`service`]: the running service: restore from Kafka, follow totals and approvals, publish,
//!   notify, audit.
//! - [`approve`]: the `approve` command's record and checks.
//! - [`run`] / [`run_with_listener`]: start the service and keep it up until shutdown.
//!
//! # Delivery guarantees
//! See [`service`]: exactly one effective decision per control key across crashes; alerts at least
//! once (PagerDuty idempotent by `dedup_key`); audit rows idempotent. One alerter runs per pipeline.

pub mod actions;
pub mod anomaly;
pub mod approvals;
pub mod approve;
pub mod config;
pub mod control_writer;
pub mod engine;
pub mod evaluate;
pub mod fired;
pub mod notify;
pub mod receiver;
pub mod service;
pub use quotaflow_totals::view as totals;

use infra::shutdown::Shutdown;
use tokio::net::TcpListener;

pub use config::Config;

/// Why the alerter stopped or could not start; [`Error::is_retryable`] says whether a restart can
/// help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid (the notification settings and their HTTPS client included, e.g. an
    /// unreadable `notify.ca_file`); the source says which.
    #[error("invalid alerter configuration: {0}")]
    Config(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The policy directory does not load.
    #[error("cannot load policies: {0}")]
    Policies(#[source] policy::LoadErrors),
    /// The price catalog (`[pricing]`) does not load.
    #[error("pricing: {0}")]
    Pricing(#[source] quotaflow_admission::pricer::PricerError),
    /// The restore's reading task stopped (a bug: it panicked).
    #[error("the restore task stopped: {0}")]
    RestoreTask(#[source] tokio::task::JoinError),
    /// Startup (listener, migrations, topics) failed.
    #[error(transparent)]
    Service(#[from] infra::service::ServiceError),
    /// A Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The state could not be read back from Kafka.
    #[error("cannot restore state: {0}")]
    Restore(String),
    /// A newer alerter of this pipeline opened the control topic's writer: this one stops, so
    /// the control topic keeps one decision stream (`control_writer`).
    #[error("fenced: another alerter now writes the control topic as {0}; this one stops")]
    Fenced(String),
}

impl Error {
    /// Whether restarting may succeed (the condition may pass).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Config(_) | Error::Policies(_) => false,
            Error::Pricing(error) => error.is_retryable(),
            Error::RestoreTask(_) => true,
            Error::Service(error) => error.is_retryable(),
            Error::Kafka(error) => infra::kafka::error_is_retryable(error),
            Error::Restore(_) => true,
            Error::Fenced(_) => false,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Binds `config.http.listen` and runs the service until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<()> {
    let listener = infra::service::bind(config.http.listen).await?;
    run_with_listener(config, listener, shutdown).await
}

/// Runs the service on an already bound `listener` (tests bind `127.0.0.1:0` and read the port
/// first) until `shutdown` is cancelled; `config.http.listen` is not used.
pub async fn run_with_listener(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<()> {
    service::run(config, listener, shutdown).await
}
