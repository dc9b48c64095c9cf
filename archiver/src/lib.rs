//! `quotaflow-archiver`, the raw archive: the usage topic → ClickHouse `usage_events_raw`, every valid event exactly once
//! as analysts see it, across crashes; every other record → a dead letter.
//!
//! - [`row`]: the `usage_events_raw` row of an event, with its Kafka coordinates.
//! - [`batch`]: records buffered per partition, cut into atomic [`batch::Segment`]s.
//! - [`sink`]: INSERTs, the resume query, and which ClickHouse errors are retried.
//! - `consumer`: the loop (read → classify → batch → flush → advisory commit) and the rebalance
//!   callback that positions the consumer from ClickHouse.
//! - [`metrics`]: the metric names and where they are recorded.
//! - [`config`]: the service's [`Config`], read from the ingest config file.
//!
//! A sibling of the aggregator: it depends on the pure cores (`schemas`, `quotaflow-admission`)
//! and the runtime (`infra`, which also writes its dead letters), never on another service.
//!
//! # Guarantees (CONVENTIONS §13)
//! **Every offset of the usage topic is accounted for exactly once: as a row of
//! `usage_events_raw` or as a dead letter.** The mechanism is *offsets stored with the data*:
//!
//! 1. Every row carries `kafka_topic`, `kafka_partition`, `kafka_offset`; every dead letter carries
//!    `source_topic`, `source_partition`, `source_offset` in `dead_letters`.
//! 2. On partition assignment (hence at start) the rebalance callback reads, per partition,
//!    `max(offset) + 1` over **both** tables (`usage_events_raw` for the topic and
//!    `dead_letters` of service `ingest` for the topic) and assigns the partition at exactly that
//!    offset. Kafka's committed offsets are never read: the commit after each flush is advisory,
//!    for lag tooling only.
//! 3. The resume rule is correct only if, whatever subset of writes committed before a crash,
//!    every offset below the highest committed one is committed too. A ClickHouse INSERT is
//!    atomic only per part, i.e. per table partition (`toYYYYMM(occurred_at)`) and below
//!    `max_insert_block_size` (1 048 576 rows, far above [`ArchiveConfig::batch_max_rows`]). So a
//!    partition's records are cut into **segments**, maximal runs of consecutive offsets that are
//!    either valid rows of one month or dead letters ([`batch::segments`]), and the segments are
//!    written one at a time, in offset order, each with one INSERT. Each segment commits whole or
//!    not at all, and none starts before the previous one committed: the committed offsets are
//!    always a prefix. (A unit test checks the invariant for every crash point; the `kill -9`
//!    test in `archiver/tests/archive_crash.rs` checks it end to end.)
//! 4. Dead letters are produced to the dead-letter topic and acknowledged (`acks=all`) **before**
//!    their `dead_letters` INSERT, which is what makes them count as processed. A crash between
//!    the two publishes them again on the next run: the topic is at least once (readers
//!    deduplicate by source coordinates), the table collapses them (`ReplacingMergeTree` keyed by
//!    the coordinates).
//! 5. A failed INSERT whose answer was lost may still have committed. Before retrying, the archive
//!    re-reads the partition's resume offset and skips the segments ClickHouse already has, so the
//!    retry does not insert a second copy. Two windows remain where the raw table can hold a
//!    second copy of an offset: an INSERT that commits *after* that re-read (a server-side timeout
//!    racing the retry), and a consumer evicted from the group mid-INSERT while the new owner has
//!    already resumed. Both copies have the same `event_id` and `occurred_at`, so they collapse in
//!    the `usage_events` view — which is what analysts read. (Counting rows of the raw table
//!    proves nothing either way: background merges remove replaced copies of an `event_id`.
//!    Versions strictly increase with the offsets read, so a merge keeps the highest offset and
//!    never moves the resume point past an unwritten record; at worst it re-reads a few.)
//!
//! **Known cost of the segment rule.** Rows of two months interleaved record by record (late
//! events at a month boundary) make one INSERT per run. Normal traffic is one month per batch;
//! if producers ever report many events from the previous month, a checkpoint table (data
//! first, then a per-partition watermark, resume from the watermark, replays collapse) would
//! allow one INSERT per month per batch instead.
//!
//! **Producer duplicates.** The same `event_id` re-sent by a producer (a retry after a lost
//! acknowledgement) is a different offset, so it is archived twice. `usage_events_raw` is a
//! `ReplacingMergeTree(version)` ordered by `event_id` and the `usage_events` view reads it
//! `FINAL`, so analysts see each `event_id` once, whatever the delay between the copies
//! ([`ArchiveConfig::dedup_horizon_hours`] documents the guaranteed horizon). Collapsing works
//! only within one table partition (month of `occurred_at`); a re-sent event carries the same
//! `occurred_at` (it is the same attempt), so its copies always share a partition.
//!
//! **Validation and pricing.** Every decoded record goes through [`quotaflow_admission`], the step the
//! aggregator applies too: validated at its Kafka timestamp (not the archive's clock, so replaying
//! a partition weeks later classifies every record as the first pass did; the resume rule relies
//! on it) and priced with this service's `[pricing]` catalog, whatever envelope the producer
//! wrote. A record is archived exactly when the aggregator counts it, and otherwise dead-lettered
//! by both with the same kind.
//!
//! # Memory and back-pressure
//! At most one batch is buffered ([`ArchiveConfig::batch_max_rows`] /
//! [`ArchiveConfig::batch_max_bytes`], approximate), flushed inline by the task that reads. While a
//! write is retried (ClickHouse or Kafka unavailable, with exponential backoff up to 5 s) the
//! assignment is **paused** and the consumer is still polled, so nothing more is buffered and the
//! group membership survives outages longer than `max.poll.interval.ms`. ClickHouse data errors
//! are never retried: the segment is bisected down to the rows at fault, which become
//! `sink_rejected` dead letters. Other ClickHouse errors (unknown table, authentication) stop the
//! archive with an error; nothing is lost, it resumes from ClickHouse once fixed.
//!
//! # Rebalances
//! Buffered records of a revoked partition are dropped, not drained: the next owner resumes from
//! ClickHouse, so at most one batch (≤ [`ArchiveConfig::batch_max_age_ms`] of data) is read
//! twice, and no deadline needs to be validated against the session timeout (CONVENTIONS §7).
//!
//! # Shutdown
//! Stop reading, flush the batch (bounded by 30 s), commit the offsets (advisory, synchronously),
//! return.

pub mod batch;
pub mod config;
mod consumer;
pub mod metrics;
pub mod row;
pub mod sink;

use std::sync::Arc;

use infra::shutdown::Shutdown;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde::{Deserialize, Serialize};

pub use config::Config;
pub use consumer::ArchiveStats;

/// `DeadLetter::service` of the records the archive gives up on (and part of its resume rule).
/// Still `ingest`, where the archive began: the resume offsets of existing deployments are read
/// from the `dead_letters` rows of this service.
pub const SERVICE: &str = "ingest";

/// Batching and group settings of the raw archive consumer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Where `quotaflow-archiver` serves `/metrics`, `/healthz` and `/readyz` (ready = consuming);
    /// none = not served. The archive always runs as its own process, so it scales and restarts
    /// apart from the HTTP API.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Kafka consumer group. Offsets live in ClickHouse, not in the group: the group only shares
    /// partitions among archive instances and shows their (advisory) progress.
    pub group_id: String,
    /// Records (rows and dead letters) buffered before a flush. 50 000: ClickHouse wants few,
    /// large INSERTs (each makes a part per month; about one INSERT per second per table keeps
    /// merges ahead, far from `parts_to_throw_insert`), and 50 000 rows of ~1 KiB stay well below
    /// `max_insert_block_size` (1 048 576), so one INSERT is one part and atomic.
    pub batch_max_rows: usize,
    /// Approximate bytes buffered before a flush. 32 MiB bounds the process's memory when events
    /// are unusually large (long labels): at ~1 KiB per event it is about the row bound, so
    /// normally the row bound or the age bound triggers first.
    pub batch_max_bytes: usize,
    /// Longest a record waits in the buffer. 500 ms: archived events become visible to analysts
    /// within a second, while at low traffic it still caps ClickHouse at ~2 INSERTs per second
    /// per partition (parts merge fine at that rate). At high traffic the row bound flushes first.
    pub batch_max_age_ms: u64,
    /// How long apart two copies of one `event_id` may arrive and still be shown once. 24 h is
    /// the producers' contract (the recorder's retries end within minutes). The archive does not
    /// need a window for it: `ReplacingMergeTree` + `FINAL` collapse copies of any age within
    /// a month partition, and copies share `occurred_at`; this value is the documented promise,
    /// checked at load to be at least 24.
    pub dedup_horizon_hours: u32,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            metrics_listen: None,
            group_id: "quotaflow-archive".to_owned(),
            batch_max_rows: 50_000,
            batch_max_bytes: 32 * 1024 * 1024,
            batch_max_age_ms: 500,
            dedup_horizon_hours: 24,
        }
    }
}

impl ArchiveConfig {
    /// Checks the bounds; called by [`run`] before connecting.
    pub fn validate(&self) -> Result<(), ArchiveError> {
        let problem = if self.group_id.is_empty() {
            Some("archive.group_id must not be empty".to_owned())
        } else if self.batch_max_rows == 0 || self.batch_max_rows > 1_000_000 {
            Some(format!(
                "archive.batch_max_rows = {} must be in 1..=1000000 (one INSERT must stay below \
                 max_insert_block_size to be atomic)",
                self.batch_max_rows
            ))
        } else if self.batch_max_bytes < 64 * 1024 {
            Some("archive.batch_max_bytes must be at least 64 KiB".to_owned())
        } else if self.batch_max_age_ms == 0 || self.batch_max_age_ms > 60_000 {
            Some("archive.batch_max_age_ms must be in 1..=60000".to_owned())
        } else if self.dedup_horizon_hours < 24 {
            Some("archive.dedup_horizon_hours must be at least 24".to_owned())
        } else {
            None
        };
        problem.map_or(Ok(()), |problem| Err(ArchiveError::Config(problem)))
    }
}

/// Why the archive stopped. Transient outages are retried inside; what reaches the caller needs
/// an operator, or a restart once the dependency is back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// Invalid configuration: fix it, do not retry.
    #[error("invalid archive configuration: {0}")]
    Config(String),
    /// Migrations or topic creation failed at start.
    #[error("archive setup failed")]
    Setup(#[from] infra::service::ServiceError),
    /// The price catalog (validation and pricing need it) could not be loaded.
    #[error("cannot load the price catalog")]
    Catalog(#[source] quotaflow_admission::pricer::PricerError),
    /// The consumer or the dead-letter producer could not be created or subscribed.
    #[error("kafka client setup failed")]
    Kafka(#[source] rdkafka::error::KafkaError),
    /// The dead-letter writer could not be created.
    #[error("dead-letter writer setup failed")]
    DeadLetters(#[source] infra::dead_letter::DeadLetterError),
    /// The resume offsets could not be read from ClickHouse within the rebalance deadline.
    #[error("cannot read resume offsets from ClickHouse: {0}")]
    Resume(String),
    /// ClickHouse refused a write in a way no retry fixes (unknown table, authentication).
    #[error("archive write failed: {0}")]
    Sink(String),
}

impl ArchiveError {
    /// Whether restarting later may help (a dependency was down) rather than fail the same way.
    pub fn is_retryable(&self) -> bool {
        match self {
            ArchiveError::Config(_) | ArchiveError::Catalog(_) | ArchiveError::Sink(_) => false,
            ArchiveError::Setup(error) => error.is_retryable(),
            ArchiveError::Kafka(_) | ArchiveError::Resume(_) => true,
            ArchiveError::DeadLetters(error) => error.is_retryable(),
        }
    }
}

/// Runs the archive until `shutdown` is cancelled (see the module docs for the guarantees).
pub async fn run(config: &Config, shutdown: Shutdown) -> Result<(), ArchiveError> {
    Archiver::new(config.clone()).run(shutdown).await
}

/// The archive with a handle on its counters (tests compare them with what they produced).
pub struct Archiver {
    /// The service config: Kafka, ClickHouse, validation, pricing and the archive section.
    config: Config,
    /// Shared with the consumer loop.
    stats: Arc<ArchiveStats>,
    /// Turned ready once the consumer is subscribed (and not ready again when it stops), so a
    /// `/readyz` in front of the archive means "consuming", not "process started".
    readiness: Option<infra::telemetry::Readiness>,
}

impl Archiver {
    /// An archive for `config`; nothing connects until [`Archiver::run`].
    pub fn new(config: Config) -> Self {
        Self {
            config,
            stats: Arc::default(),
            readiness: None,
        }
    }

    /// Reports readiness through `readiness` (see the field's doc).
    pub fn with_readiness(mut self, readiness: infra::telemetry::Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Counters of archived rows and dead letters, updated after each durable write.
    pub fn stats(&self) -> Arc<ArchiveStats> {
        Arc::clone(&self.stats)
    }

    /// Migrates, creates the topics if missing, then consumes until `shutdown`.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), ArchiveError> {
        let config = self.config;
        config.archive.validate()?;
        infra::service::prepare_pipeline(&config.kafka, &config.clickhouse)
            .await
            .map_err(ArchiveError::Setup)?;
        let pricer = quotaflow_admission::pricer::Pricer::from_config(&config.pricing)
            .map_err(ArchiveError::Catalog)?;
        let topic = config.kafka.topics.usage.clone();

        let dead_letters = infra::dead_letter::DeadLetterWriter::new(
            &config.kafka,
            &config.clickhouse,
            "quotaflow-archive-dead-letters",
        )
        .map_err(ArchiveError::DeadLetters)?;
        let sink = sink::Sink::new(
            infra::clickhouse::client(&config.clickhouse),
            dead_letters,
            &topic,
            SERVICE,
        );
        let context = consumer::ArchiveLoop::new_context(&topic, &config.clickhouse, SERVICE);
        let mut client_config = infra::kafka::consumer_config(
            &config.kafka,
            "quotaflow-archive",
            &config.archive.group_id,
        );
        // Bounded prefetch: about two batches of typical events per partition.
        client_config.set("queued.max.messages.kbytes", "65536");
        let consumer: StreamConsumer<consumer::ArchiveContext> = client_config
            .create_with_context(context)
            .map_err(ArchiveError::Kafka)?;
        consumer.subscribe(&[&topic]).map_err(ArchiveError::Kafka)?;
        tracing::info!(
            topic = %topic,
            group = %config.archive.group_id,
            database = %config.clickhouse.database,
            "archive started"
        );
        if let Some(readiness) = &self.readiness {
            readiness.set_ready(true);
        }
        let consumed = consumer::ArchiveLoop::new(
            Arc::new(consumer),
            sink,
            config.archive.clone(),
            quotaflow_admission::Admission::new(pricer, config.validation.clone()),
            topic,
            SERVICE.to_owned(),
            self.stats,
        )
        .run(shutdown)
        .await;
        if let Some(readiness) = &self.readiness {
            readiness.set_ready(false);
        }
        consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounds_are_checked() {
        ArchiveConfig::default().validate().expect("defaults valid");
        let too_many = ArchiveConfig {
            batch_max_rows: 2_000_000,
            ..ArchiveConfig::default()
        };
        assert!(too_many.validate().is_err());
        let short_horizon = ArchiveConfig {
            dedup_horizon_hours: 1,
            ..ArchiveConfig::default()
        };
        assert!(short_horizon.validate().is_err());
    }
}
