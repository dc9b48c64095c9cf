//! Where flushes go and where a partition resumes from: `window_partials` and
//! `aggregator_checkpoints` in ClickHouse, and the compacted totals topic.
//!
//! Every write here is idempotent: a partial row is the absolute total of a (scope, window) over
//! the partition's records up to its version, a checkpoint is a function of its `next_offset`, and a
//! totals record carries the same version as its row. Writing any of them twice, or late, changes
//! nothing a reader keeps (the highest version per key).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clickhouse::Client;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rust_decimal::Decimal;
use schemas::WindowTotal;
use serde::{Deserialize, Serialize};

use crate::measures::Measures;
use crate::partition::{Checkpoint, CheckpointState};
use crate::state::{ClosedWindow, StoredTotal, TotalUpdate};

/// Why a write or a load failed, and whether to retry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// ClickHouse refused or could not be reached.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// The totals topic did not acknowledge a record.
    #[error("totals topic: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A write did not finish in time (a hung server); retried.
    #[error("write timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// Dead letters could not be written (message, retryable).
    #[error("dead letters: {0}")]
    DeadLetter(String, bool),
    /// A value does not fit its column or record (a bug or corrupt data: not retried).
    #[error("unrepresentable: {0}")]
    Unrepresentable(String),
    /// A stored checkpoint could not be read back.
    #[error("checkpoint of partition {partition} is unreadable: {reason}")]
    Checkpoint {
        /// The partition.
        partition: i32,
        /// Why.
        reason: String,
    },
}

impl SinkError {
    /// Whether retrying the same write can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::ClickHouse(error) => !matches!(
                infra::clickhouse::classify_error(error),
                infra::clickhouse::ClickHouseFailure::Data
                    | infra::clickhouse::ClickHouseFailure::Fatal
            ),
            SinkError::Kafka(error) => infra::kafka::error_is_retryable(error),
            SinkError::DeadLetter(_, retryable) => *retryable,
            SinkError::Timeout(_) => true,
            SinkError::Unrepresentable(_) | SinkError::Checkpoint { .. } => false,
        }
    }
}

fn seconds(at: DateTime<Utc>) -> Result<u32, SinkError> {
    u32::try_from(at.timestamp())
        .map_err(|_| SinkError::Unrepresentable(format!("{at} is outside DateTime")))
}

fn money(value: &Decimal) -> Result<i128, SinkError> {
    schemas::money::to_unscaled(value)
        .map_err(|error| SinkError::Unrepresentable(error.to_string()))
}

/// A row of `window_partials` (migration 0006), borrowed from a [`TotalUpdate`].
#[derive(Debug, clickhouse::Row, Serialize)]
struct PartialRow<'a> {
    scope_kind: &'a str,
    scope_key: &'a str,
    window_kind: String,
    window_tz: &'static str,
    source_topic: &'a str,
    source_partition: i32,
    window_start: u32,
    window_end: u32,
    requests: u64,
    billable_attempts: u64,
    input_tokens: u64,
    output_tokens: u64,
    cached_input_tokens: u64,
    cache_write_tokens: u64,
    images_draft: u64,
    images_preview: u64,
    images_edit: u64,
    images_final: u64,
    images_untiered: u64,
    video_jobs: u64,
    video_ms: u64,
    audio_ms: u64,
    embedding_tokens: u64,
    cost_usd: i128,
    unpriced_events: u64,
    retries: u64,
    fallback_attempts: u64,
    fallback_cost_usd: i128,
    accepted_outputs: u64,
    errors_4xx: u64,
    errors_5xx: u64,
    errors_other: u64,
    late_events: u64,
    jobs_in_flight: i64,
    oldest_pending_job_started_at_us: u64,
    version: u64,
    updated_at: u32,
}

impl<'a> PartialRow<'a> {
    fn new(
        update: &'a TotalUpdate,
        topic: &'a str,
        partition: i32,
        now: u32,
    ) -> Result<Self, SinkError> {
        let m = &update.measures;
        Ok(PartialRow {
            scope_kind: &update.scope_kind,
            scope_key: &update.scope_key,
            window_kind: update.window.kind().to_string(),
            window_tz: update.window.time_zone().name(),
            source_topic: topic,
            source_partition: partition,
            window_start: seconds(update.window.start())?,
            window_end: seconds(update.window.end())?,
            requests: m.requests,
            billable_attempts: m.billable_attempts,
            input_tokens: m.input_tokens,
            output_tokens: m.output_tokens,
            cached_input_tokens: m.cached_input_tokens,
            cache_write_tokens: m.cache_write_tokens,
            images_draft: m.images_draft,
            images_preview: m.images_preview,
            images_edit: m.images_edit,
            images_final: m.images_final,
            images_untiered: m.images_untiered,
            video_jobs: m.video_jobs,
            video_ms: m.video_ms,
            audio_ms: m.audio_ms,
            embedding_tokens: m.embedding_tokens,
            cost_usd: money(&m.cost_usd)?,
            unpriced_events: m.unpriced_events,
            retries: m.retries,
            fallback_attempts: m.fallback_attempts,
            fallback_cost_usd: money(&m.fallback_cost_usd)?,
            accepted_outputs: m.accepted_outputs,
            errors_4xx: m.errors_4xx,
            errors_5xx: m.errors_5xx,
            errors_other: m.errors_other,
            late_events: m.late_events,
            jobs_in_flight: m.jobs_in_flight,
            oldest_pending_job_started_at_us: update.oldest_pending_job_started_at_us(),
            version: update.version,
            updated_at: now,
        })
    }
}

/// A stored partial as the resume query returns it (the newest version below the checkpoint).
#[derive(Debug, Clone, clickhouse::Row, Deserialize)]
pub struct StoredPartial {
    scope_kind: String,
    scope_key: String,
    window_kind: String,
    window_tz: String,
    window_start: u32,
    requests: u64,
    billable_attempts: u64,
    input_tokens: u64,
    output_tokens: u64,
    cached_input_tokens: u64,
    cache_write_tokens: u64,
    images_draft: u64,
    images_preview: u64,
    images_edit: u64,
    images_final: u64,
    images_untiered: u64,
    video_jobs: u64,
    video_ms: u64,
    audio_ms: u64,
    embedding_tokens: u64,
    cost_usd: i128,
    unpriced_events: u64,
    retries: u64,
    fallback_attempts: u64,
    fallback_cost_usd: i128,
    accepted_outputs: u64,
    errors_4xx: u64,
    errors_5xx: u64,
    errors_other: u64,
    late_events: u64,
    jobs_in_flight: i64,
    newest_version: u64,
}

/// The measure columns of [`StoredPartial`], in order, each read as its newest version.
const STORED_MEASURES: &[&str] = &[
    "requests",
    "billable_attempts",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "images_draft",
    "images_preview",
    "images_edit",
    "images_final",
    "images_untiered",
    "video_jobs",
    "video_ms",
    "audio_ms",
    "embedding_tokens",
    "cost_usd",
    "unpriced_events",
    "retries",
    "fallback_attempts",
    "fallback_cost_usd",
    "accepted_outputs",
    "errors_4xx",
    "errors_5xx",
    "errors_other",
    "late_events",
    "jobs_in_flight",
];

impl StoredPartial {
    /// As a [`StoredTotal`] to restore.
    pub fn as_stored_total(&self) -> Result<StoredTotal<'_>, SinkError> {
        let unscaled = |value: i128| {
            schemas::money::from_unscaled(value)
                .map_err(|error| SinkError::Unrepresentable(error.to_string()))
        };
        Ok(StoredTotal {
            scope_kind: &self.scope_kind,
            scope_key: &self.scope_key,
            window_kind: &self.window_kind,
            window_tz: &self.window_tz,
            window_start: DateTime::from_timestamp(i64::from(self.window_start), 0)
                .expect("u32 seconds are a valid instant"),
            measures: Measures {
                requests: self.requests,
                billable_attempts: self.billable_attempts,
                input_tokens: self.input_tokens,
                output_tokens: self.output_tokens,
                cached_input_tokens: self.cached_input_tokens,
                cache_write_tokens: self.cache_write_tokens,
                images_draft: self.images_draft,
                images_preview: self.images_preview,
                images_edit: self.images_edit,
                images_final: self.images_final,
                images_untiered: self.images_untiered,
                video_jobs: self.video_jobs,
                video_ms: self.video_ms,
                audio_ms: self.audio_ms,
                embedding_tokens: self.embedding_tokens,
                cost_usd: unscaled(self.cost_usd)?,
                unpriced_events: self.unpriced_events,
                retries: self.retries,
                fallback_attempts: self.fallback_attempts,
                fallback_cost_usd: unscaled(self.fallback_cost_usd)?,
                accepted_outputs: self.accepted_outputs,
                errors_4xx: self.errors_4xx,
                errors_5xx: self.errors_5xx,
                errors_other: self.errors_other,
                late_events: self.late_events,
                jobs_in_flight: self.jobs_in_flight,
            },
            version: self.newest_version,
        })
    }
}

/// A row of `aggregator_checkpoints` (migration 0006).
#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize)]
struct CheckpointRow {
    consumer_group: String,
    topic: String,
    partition: i32,
    next_offset: i64,
    replay_from: i64,
    state: String,
    version: u64,
    updated_at: u32,
}

/// Writes partials and checkpoints, reads them back; publishes totals.
#[derive(Clone)]
pub struct Sink {
    clickhouse: Client,
    producer: Option<FutureProducer>,
    totals_topic: String,
    group: String,
    topic: String,
    /// Publish single-dimension scopes too (not only `policy:` ones).
    publish_all_scopes: bool,
}

impl Sink {
    /// Which totals [`Sink::publish_totals`] publishes (default: policy scopes only).
    pub fn with_publish_scopes(mut self, scopes: crate::config::PublishScopes) -> Self {
        self.publish_all_scopes = scopes == crate::config::PublishScopes::All;
        self
    }

    /// A sink for input `topic` of consumer `group`; `producer` publishes to `totals_topic`
    /// (`None`: totals go to ClickHouse only).
    pub fn new(
        clickhouse: Client,
        producer: Option<FutureProducer>,
        totals_topic: &str,
        group: &str,
        topic: &str,
    ) -> Self {
        Self {
            clickhouse,
            producer,
            totals_topic: totals_topic.to_owned(),
            group: group.to_owned(),
            topic: topic.to_owned(),
            publish_all_scopes: false,
        }
    }

    /// Inserts the updates of each input partition into `window_partials`, in one INSERT.
    pub async fn write_partials(&self, parts: &[(i32, &[TotalUpdate])]) -> Result<(), SinkError> {
        if parts.iter().all(|(_, updates)| updates.is_empty()) {
            return Ok(());
        }
        let now = seconds(Utc::now())?;
        let mut insert = self
            .clickhouse
            .insert::<PartialRow<'_>>("window_partials")
            .await?;
        for (partition, updates) in parts {
            for update in *updates {
                insert
                    .write(&PartialRow::new(update, &self.topic, *partition, now)?)
                    .await?;
            }
        }
        insert.end().await?;
        Ok(())
    }

    /// Publishes `updates` of input `partition` to the totals topic, keyed by
    /// [`WindowTotal::compaction_key`], and waits for every acknowledgement. Only `policy:` scopes
    /// unless [`Sink::with_publish_scopes`] asked for all.
    pub async fn publish_totals(
        &self,
        partition: i32,
        updates: &[TotalUpdate],
    ) -> Result<(), SinkError> {
        let Some(producer) = &self.producer else {
            return Ok(());
        };
        let now = Utc::now();
        let mut records = Vec::with_capacity(updates.len());
        for update in updates {
            if !self.publish_all_scopes
                && !update.scope_kind.starts_with(policy::TOTALS_SCOPE_PREFIX)
            {
                continue;
            }
            let total = window_total(update, &self.topic, partition, now);
            let payload = schemas::encode(&total)
                .map_err(|error| SinkError::Unrepresentable(error.to_string()))?;
            records.push((total.compaction_key(), payload));
        }
        let sends = records.iter().map(|(key, payload)| {
            producer.send(
                FutureRecord::to(&self.totals_topic)
                    .key(key.as_str())
                    .payload(payload.as_slice()),
                Duration::from_secs(30),
            )
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(error, _)| SinkError::Kafka(error))?;
        }
        Ok(())
    }

    /// Publishes a tombstone (null value) for the totals-topic key of every window in `closed`
    /// (input `partition`), so compaction removes the keys of closed windows (see
    /// [`crate::partition`], Tombstones), and waits for every acknowledgement. Call it after the
    /// flush's totals are acknowledged: a key's total and its tombstone are then in that order.
    /// The same scopes as [`Sink::publish_totals`].
    pub async fn publish_tombstones(
        &self,
        partition: i32,
        closed: &[ClosedWindow],
    ) -> Result<(), SinkError> {
        let Some(producer) = &self.producer else {
            return Ok(());
        };
        let keys: Vec<String> = closed
            .iter()
            .filter(|window| self.publish_all_scopes || window.scope_kind.starts_with("policy:"))
            .map(|closed| {
                WindowTotal::compaction_key_for(
                    &closed.scope_kind,
                    &closed.scope_key,
                    &closed.window.kind().to_string(),
                    closed.window.time_zone().name(),
                    &closed.window.start(),
                    &self.topic,
                    partition,
                )
            })
            .collect();
        let sends = keys.iter().map(|key| {
            producer.send(
                FutureRecord::<str, [u8]>::to(&self.totals_topic).key(key.as_str()),
                Duration::from_secs(30),
            )
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(error, _)| SinkError::Kafka(error))?;
        }
        Ok(())
    }

    /// Inserts the checkpoints (one row each, one INSERT).
    pub async fn write_checkpoints(
        &self,
        checkpoints: &[(i32, &Checkpoint)],
    ) -> Result<(), SinkError> {
        if checkpoints.is_empty() {
            return Ok(());
        }
        let now = seconds(Utc::now())?;
        let mut insert = self
            .clickhouse
            .insert::<CheckpointRow>("aggregator_checkpoints")
            .await?;
        for (partition, checkpoint) in checkpoints {
            let state = serde_json::to_string(&checkpoint.state)
                .map_err(|error| SinkError::Unrepresentable(error.to_string()))?;
            insert
                .write(&CheckpointRow {
                    consumer_group: self.group.clone(),
                    topic: self.topic.clone(),
                    partition: *partition,
                    next_offset: checkpoint.next_offset,
                    replay_from: checkpoint.replay_from,
                    state,
                    version: checkpoint.next_offset.max(0) as u64,
                    updated_at: now,
                })
                .await?;
        }
        insert.end().await?;
        Ok(())
    }

    /// The newest checkpoint of every partition of the group's topic that has one.
    pub async fn load_checkpoints(&self) -> Result<BTreeMap<i32, Checkpoint>, SinkError> {
        let rows = self
            .clickhouse
            .query(
                "SELECT ?fields FROM aggregator_checkpoints FINAL \
                 WHERE consumer_group = ? AND topic = ?",
            )
            .bind(&self.group)
            .bind(&self.topic)
            .fetch_all::<CheckpointRow>()
            .await?;
        let mut checkpoints = BTreeMap::new();
        for row in rows {
            let state: CheckpointState =
                serde_json::from_str(&row.state).map_err(|error| SinkError::Checkpoint {
                    partition: row.partition,
                    reason: error.to_string(),
                })?;
            checkpoints.insert(
                row.partition,
                Checkpoint {
                    next_offset: row.next_offset,
                    replay_from: row.replay_from,
                    state,
                },
            );
        }
        Ok(checkpoints)
    }

    /// The stored partials of `partition`: per key the newest row (whatever its version, see
    /// [`crate::partition`]), for windows not closed at `checkpoint`. `open_from` bounds the
    /// scan: no open window starts before it ([`crate::state::TotalsState::open_windows_start`]),
    /// and the table is partitioned by the month of `window_start`, so the months before it are
    /// not read: a restore reads the open windows' months, not the partition's history.
    pub async fn load_partials(
        &self,
        partition: i32,
        checkpoint: &Checkpoint,
        open_from: DateTime<Utc>,
    ) -> Result<Vec<StoredPartial>, SinkError> {
        let measures: Vec<String> = STORED_MEASURES
            .iter()
            .map(|column| format!("argMax({column}, version) AS {column}"))
            .collect();
        let closed_through = checkpoint
            .state
            .closed_through
            .map_or(0, |at| at.timestamp().max(0));
        let sql = format!(
            "SELECT scope_kind, scope_key, window_kind, window_tz, window_start, \
             {}, max(version) AS newest_version \
             FROM window_partials \
             WHERE source_topic = ? AND source_partition = ? AND toUInt32(window_end) > ? \
             AND window_start >= toDateTime(?) \
             GROUP BY scope_kind, scope_key, window_kind, window_tz, window_start",
            measures.join(", ")
        );
        Ok(self
            .clickhouse
            .query(&sql)
            .bind(&self.topic)
            .bind(partition)
            .bind(closed_through)
            .bind(seconds(open_from.max(DateTime::UNIX_EPOCH))?)
            .fetch_all::<StoredPartial>()
            .await?)
    }
}

pub use quotaflow_totals::record::window_total;
