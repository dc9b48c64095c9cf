//! Aggregator: the pipeline's stream processor. It consumes priced usage events from the usage
//! topic as a consumer group and keeps windowed per-scope totals, written to ClickHouse
//! (`window_partials`, read through the `window_totals_current` view) and published on the
//! compacted totals topic the alerter follows.
//!
//! - [`config`]: the service's [`Config`].
//! - [`measures`], [`scopes`], [`state`], [`dedup`]: the pure core, from [`quotaflow_totals`]:
//!   an event's measures and exact contribution, the scopes and windows it counts in, the
//!   in-memory windowed totals (apply, dirty set, drain, eviction) and the per-partition
//!   duplicate filter.
//! - [`backfill`]: seeding a new policy definition (after a reload) with the events before it
//!   counted live, re-read from the usage topic.
//! - [`partition`]: [`partition::PartitionAggregator`], one input partition: record → outcome,
//!   flush and checkpoint, restore.
//! - [`sink`]: ClickHouse partials and checkpoints, totals topic.
//! - [`pipeline`]: the consumer loop, rebalances, flushing, backpressure, metrics.
//! - [`workers`]: the per-record work on worker threads, each partition on one of them.
//! - [`run`] / [`run_with_listener`]: start the service and keep it up until shutdown.
//!
//! # Delivery guarantee: exactly once, per partition partial
//! Each input partition is aggregated by one process at a time into **partials**: per (scope,
//! window) the exact total of the partition's records up to an offset, with that offset (of the
//! last event counted in it) as its version. The current total of a (scope, window) is the sum over
//! partitions of each one's highest-version partial (`window_totals_current` does this; totals
//! topic readers keep the highest version per key).
//!
//! 1. **Deterministic.** A partition's partials, duplicate filter, watermark and late decisions
//!    are a function of its records in offset order only (no clock, no batch boundaries; see
//!    [`state`] and [`dedup`]). So a partial written twice, by a replay or by a process that has
//!    just lost the partition, is the same row twice.
//! 2. **Checkpoint after the data.** A flush writes the partials and publishes them (at the same
//!    time), writes the dead letters, and only then the checkpoint (`aggregator_checkpoints`:
//!    `next_offset`, the duplicate filter's `replay_from`, watermark, close horizon, pending jobs),
//!    all in ClickHouse. Because of 1., a total published ahead of its row (policy totals go out
//!    every `publish_interval_ms`, and the loop keeps reading while a flush is written) is the
//!    same total the replay after a crash rebuilds.
//! 3. **Resume from the checkpoint, not from Kafka.** On assignment (start, rebalance, restart
//!    after `kill -9`) a process loads the partition's newest checkpoint and its partials of
//!    versions *below* `next_offset` (rows at or above were written by a flush whose checkpoint did
//!    not land), seeks to `replay_from`, re-reads up to `next_offset` only to rebuild the duplicate
//!    filter, and counts from `next_offset` on. The totals are then exactly what they were at the
//!    checkpoint, and everything after it is recomputed identically.
//! 4. **Duplicates.** Copies of an `event_id` (ingest keys records by `job_id` or else
//!    `event_id`, so copies share a partition) are never counted twice: within the duplicate
//!    filter's floor they are recognized; an event at or before the floor (older than the
//!    horizon, or than what `dedup_max_ids` left, or before a partition-count change) that the
//!    filter does not remember is refused as too late to deduplicate (see [`dedup`]).
//!
//! 5. **Policy reloads.** Policy totals are kept per definition (`policy:<id>@<definition>`, what
//!    the policy counts), so an edit never adds to totals of the old definition. A new
//!    definition counts live from the offset each partition reached at the reload and is held
//!    back (not written, not published) until [`backfill`] seeds it with the partition's earlier
//!    records of its open windows: every row of it is still the exact total of the partition's
//!    records up to its version. The checkpoint lists complete definitions; one it does not list
//!    starts over at `next_offset` on restore (see [`partition`]).
//!
//! What is *not* exactly once: dead-letter records on the Kafka topic (a replay re-sends them;
//! the `dead_letters` table collapses them by source offset), and `oldest_pending_job_started_at`,
//! a gauge computed when a row is written.
//!
//! # Late and odd events
//! Windows are by event time. A window takes events until the partition's watermark (latest
//! `occurred_at` seen) is `allowed_lateness` past its end; later events are counted in
//! `late_events` of the scope's current window and dead-lettered (`late`). Undecodable and empty
//! records, and events [`quotaflow_admission`] refuses (the validation and pricing step the raw
//! archive applies too, judged at the record's Kafka timestamp: e.g. `occurred_at` more than
//! `validation.max_future_skew` ahead of it, kind `in_future`) are dead-lettered and not counted;
//! admitted events are counted at the cost admission computed (a reported cost wins, else our
//! catalog's price, else unpriced), whatever envelope the producer wrote. See [`partition`].

pub mod backfill;
pub mod config;
pub mod partition;
pub mod pipeline;
pub mod sink;
pub mod workers;

// The pure core (measures, scopes, duplicate filter, totals state) is its own crate, shared
// with the alerter and quotactl; re-exported under the paths the aggregator's modules use.
pub use quotaflow_totals::{dedup, measures, scopes, state};

use std::sync::Arc;
use std::time::Duration;

use infra::shutdown::Shutdown;
use infra::telemetry::Readiness;
use policy::PolicySet;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::net::TcpListener;
use tracing::info;

pub use config::{AggregateConfig, Config};

/// Why the service stopped, and whether restarting can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid.
    #[error("invalid aggregator configuration: {0}")]
    Config(String),
    /// The policy files do not load.
    #[error("cannot load policies: {0}")]
    Policies(#[source] policy::LoadErrors),
    /// The price catalog (`[pricing]`) does not load.
    #[error(transparent)]
    Pricing(#[from] quotaflow_admission::pricer::PricerError),
    /// Startup (listener, migrations, topics) failed.
    #[error(transparent)]
    Service(#[from] infra::service::ServiceError),
    /// A Kafka client could not be created or subscribed.
    #[error("kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Partitions could not be restored from ClickHouse (the reason, reported by the consumer's
    /// rebalance callback on librdkafka's thread).
    #[error("cannot restore partitions: {0}")]
    Restore(String),
    /// The dead-letter writer could not be created.
    #[error("cannot create the dead-letter writer")]
    DeadLetters(#[source] infra::dead_letter::DeadLetterError),
    /// A flush failed with an error retrying cannot fix.
    #[error("flush failed: {0}")]
    Sink(#[from] sink::SinkError),
    /// A worker thread stopped (a bug: it panicked).
    #[error(transparent)]
    Worker(#[from] workers::WorkerGone),
}

impl Error {
    /// Whether restarting the service may succeed (the condition may pass).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Config(_) | Error::Policies(_) => false,
            Error::Pricing(error) => error.is_retryable(),
            Error::Service(error) => error.is_retryable(),
            Error::Kafka(_) | Error::Restore(_) => true,
            Error::DeadLetters(error) => error.is_retryable(),
            Error::Sink(error) => error.is_retryable(),
            Error::Worker(_) => true,
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

/// Runs the service on an already bound `listener` (tests bind `127.0.0.1:0` and read the port first)
/// until `shutdown` is cancelled; `config.http.listen` is not used. `/metrics` and `/healthz` are
/// served from the start, `/readyz` once migrations, topics and the consumer are set up.
pub async fn run_with_listener(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<()> {
    Aggregator::new(config).run(listener, shutdown).await
}

/// The service, with handles tests can read while it runs.
pub struct Aggregator {
    config: Config,
    stats: Arc<pipeline::Stats>,
}

impl Aggregator {
    /// A service for `config`.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            stats: Arc::default(),
        }
    }

    /// Statistics, shared with the running loop.
    pub fn stats(&self) -> Arc<pipeline::Stats> {
        Arc::clone(&self.stats)
    }

    /// Runs until `shutdown` (see [`run_with_listener`]), on the worker lifecycle
    /// ([`infra::service::run_worker`]): a shutdown during setup stops at once; once running, the
    /// loop flushes before it returns.
    pub async fn run(self, listener: TcpListener, shutdown: Shutdown) -> Result<()> {
        let stop = shutdown.clone();
        infra::service::run_worker(
            "aggregator",
            Some(listener),
            &stop,
            |readiness| async move { self.run_loop(&readiness, shutdown).await },
        )
        .await
    }

    async fn run_loop(self, readiness: &Readiness, shutdown: Shutdown) -> Result<()> {
        let stats = Arc::clone(&self.stats);
        let started = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            started = self.set_up() => started?,
        };
        let (consumer, sink, dead_letters, config, reload) = started;
        readiness.set_ready(true);
        let looped = pipeline::AggregatorLoop::new(
            Arc::new(consumer),
            sink,
            dead_letters,
            &config.kafka.topics.usage,
            Duration::from_millis(config.aggregate.flush_interval_ms),
            config.aggregate.flush_max_records,
            config.aggregate.worker_count(),
            stats,
        )
        .with_read_ahead_while_failing(config.aggregate.read_ahead_while_failing)
        .with_publish_interval(Duration::from_millis(if config.aggregate.publish_totals {
            config.aggregate.publish_interval_ms
        } else {
            0
        }));
        match reload {
            Some(reload) => looped.with_policy_reload(reload).run(shutdown).await,
            None => looped.run(shutdown).await,
        }
    }

    #[allow(clippy::type_complexity)]
    async fn set_up(
        self,
    ) -> Result<(
        StreamConsumer<pipeline::AggregatorContext>,
        sink::Sink,
        infra::dead_letter::DeadLetterWriter,
        Config,
        Option<pipeline::PolicyReload>,
    )> {
        let config = self.config;
        config.aggregate.validate().map_err(Error::Config)?;
        let policies = match &config.aggregate.policies_dir {
            Some(dir) => PolicySet::load_dir(dir).map_err(Error::Policies)?,
            None => PolicySet::empty(),
        };
        let pricer = quotaflow_admission::pricer::Pricer::from_config(&config.pricing)?;
        let admission = quotaflow_admission::Admission::new(pricer, config.validation.clone());
        infra::service::prepare_pipeline(&config.kafka, &config.clickhouse).await?;
        let topic = config.kafka.topics.usage.clone();
        let producer = if config.aggregate.publish_totals {
            Some(
                infra::kafka::producer_config(&config.kafka, "quotaflow-aggregator-totals")
                    .create()?,
            )
        } else {
            None
        };
        let sink = sink::Sink::new(
            infra::clickhouse::client(&config.clickhouse),
            producer,
            &config.kafka.topics.totals,
            &config.group_id,
            &topic,
        )
        .with_publish_scopes(config.aggregate.publish_scopes);
        let dead_letters = infra::dead_letter::DeadLetterWriter::new(
            &config.kafka,
            &config.clickhouse,
            "quotaflow-aggregator-dead-letters",
        )
        .map_err(Error::DeadLetters)?;
        let settings = config.aggregate.partition_settings(admission);
        let policies = Arc::new(policies);
        let reload = config.aggregate.policies_dir.as_ref().map(|dir| {
            // Bounded: a backfill thread waits while the loop has not taken the seeds before.
            let (seeds, receiver) = tokio::sync::mpsc::channel(64);
            pipeline::PolicyReload {
                dir: dir.clone(),
                interval: (config.aggregate.reload_interval_ms > 0)
                    .then(|| Duration::from_millis(config.aggregate.reload_interval_ms.max(100))),
                current: Arc::clone(&policies),
                backfiller: backfill::Backfiller::new(
                    config.kafka.clone(),
                    &topic,
                    &config.group_id,
                    settings.clone(),
                    config.validation.max_future_skew,
                    seeds,
                ),
                seeds: Some(receiver),
                failing: None,
            }
        });
        let context = pipeline::context(&topic, sink.clone(), policies, settings);
        let mut client_config =
            infra::kafka::consumer_config(&config.kafka, "quotaflow-aggregator", &config.group_id);
        client_config.set("partition.assignment.strategy", "cooperative-sticky");
        client_config.set("queued.max.messages.kbytes", "65536");
        // The lag gauge reads the end offsets librdkafka already has from its fetch responses
        // (its statistics), never asks the broker: see `AggregatorStore::on_statistics`.
        client_config.set("statistics.interval.ms", "2000");
        let consumer: StreamConsumer<pipeline::AggregatorContext> =
            client_config.create_with_context(context)?;
        consumer.subscribe(&[&topic])?;
        info!(
            %topic,
            group = %config.group_id,
            database = %config.clickhouse.database,
            policies_dir = ?config.aggregate.policies_dir,
            "aggregator started"
        );
        Ok((consumer, sink, dead_letters, config, reload))
    }
}
