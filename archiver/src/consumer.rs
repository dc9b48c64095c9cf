//! The consumer loop: read, classify, batch, flush segment by segment, advisory commit.
//!
//! [`ArchiveLoop`] is a [`CheckpointedStage`]; the loop around it is [`infra::checkpointed`]'s,
//! shared with the aggregator.
//!
//! One task owns the consumer, the batch and the sink. Flushes run inline: rebalance callbacks
//! run inside `recv()`, so a partition is never revoked while one of its INSERTs is in flight,
//! except while a write is being retried, where revocations are applied between attempts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use infra::checkpointed::{self, CheckpointedStage, FlushEnd};
use infra::config::ClickHouseConfig;
use infra::external_offsets::Pause;
use infra::shutdown::Shutdown;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use schemas::UsageEvent;
use tracing::{debug, info_span, warn, Instrument};

use super::batch::{segments, Batch, Outcome, Record, Segment};
use super::metrics;
use super::row::{KafkaCoordinates, RawRow};
use super::sink::{Sink, SinkError};
use super::{ArchiveConfig, ArchiveError};
use infra::external_offsets::AssignmentChange;
use quotaflow_admission::Admission;
use schemas::dead_letter::{self, SourceRecord};

/// Records processed since start, by outcome: every offset read ends up in exactly one of them
/// once flushed, which is what the accounting test checks.
#[derive(Debug, Default)]
pub struct ArchiveStats {
    /// Rows inserted into `usage_events_raw`.
    pub archived: AtomicU64,
    /// Dead letters written (acknowledged by Kafka and inserted into `dead_letters`).
    pub dead_lettered: AtomicU64,
    /// Flushes completed.
    pub flushes: AtomicU64,
}

impl ArchiveStats {
    /// Archived plus dead-lettered.
    pub fn processed(&self) -> u64 {
        self.archived.load(Ordering::Acquire) + self.dead_lettered.load(Ordering::Acquire)
    }
}

/// The archiver's rebalance callback: [`infra::external_offsets::StoreRebalance`] over the
/// archived offsets in ClickHouse.
pub(super) type ArchiveContext = infra::external_offsets::StoreRebalance<ArchiveStore>;

/// Where the archiver's partitions resume: the offsets archived in ClickHouse (rows and dead
/// letters of `service`); a partition with none starts at the beginning.
pub(super) struct ArchiveStore {
    /// Where to look resume offsets up (a fresh client per lookup).
    clickhouse: ClickHouseConfig,
    /// Dead-letter service name, part of the resume rule.
    service: String,
}

impl infra::external_offsets::PartitionStore for ArchiveStore {
    /// Each assigned partition with the offset it starts at (`None`: from the beginning).
    type Restored = infra::external_offsets::StartOffsets;

    /// Reads the resume offsets (retried for up to 60 s, well within `max.poll.interval.ms`).
    fn restore(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<(infra::external_offsets::StartOffsets, Self::Restored), String> {
        let (clickhouse, topic, service) = (
            self.clickhouse.clone(),
            topic.to_owned(),
            self.service.clone(),
        );
        let offsets = infra::external_offsets::block_on_retrying(
            "resume offsets lookup",
            Duration::from_secs(60),
            Duration::from_secs(15),
            infra::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            |_: &String| true,
            move || {
                let (clickhouse, topic, service) =
                    (clickhouse.clone(), topic.clone(), service.clone());
                async move {
                    let client = infra::clickhouse::client(&clickhouse);
                    super::sink::resume_offsets(&client, &topic, &service)
                        .await
                        .map_err(|error| error.to_string())
                }
            },
        )?;
        let assigned: Vec<(i32, Option<i64>)> = partitions
            .iter()
            .map(|&partition| (partition, offsets.get(&partition).copied()))
            .collect();
        Ok((assigned.clone(), assigned))
    }
}

/// Per-partition state of the loop.
#[derive(Debug, Clone, Copy)]
struct PartitionState {
    /// The next offset expected from Kafka (`None` until the first record when starting from the
    /// beginning). Older records are stale deliveries from before the assignment and dropped.
    next_to_read: Option<i64>,
    /// The next offset not yet durably written: the advisory commit and the lag use it.
    next_to_write: Option<i64>,
}

/// The consumer loop and everything it owns.
pub(super) struct ArchiveLoop {
    pub consumer: Arc<StreamConsumer<ArchiveContext>>,
    pub sink: Sink,
    pub config: ArchiveConfig,
    /// Validates and prices every decoded record, exactly as the aggregator does.
    pub admission: Admission,
    pub topic: String,
    pub service: String,
    pub stats: Arc<ArchiveStats>,
    /// Owned partitions.
    partitions: BTreeMap<i32, PartitionState>,
    /// Records read since the last flush.
    batch: Batch,
    /// Whether the assignment is paused (a write is being retried).
    pause: Pause,
    /// The last `version` given to a row: versions strictly increase with the offsets read, so
    /// among copies of one `event_id` the ReplacingMergeTree keeps the highest offset and
    /// `max(kafka_offset)` (the resume rule) never goes backwards by a merge within a run.
    last_version_us: i64,
}

impl ArchiveLoop {
    pub(super) fn new_context(
        topic: &str,
        clickhouse: &ClickHouseConfig,
        service: &str,
    ) -> ArchiveContext {
        infra::external_offsets::StoreRebalance::new(
            topic,
            ArchiveStore {
                clickhouse: clickhouse.clone(),
                service: service.to_owned(),
            },
        )
    }

    pub(super) fn new(
        consumer: Arc<StreamConsumer<ArchiveContext>>,
        sink: Sink,
        config: ArchiveConfig,
        admission: Admission,
        topic: String,
        service: String,
        stats: Arc<ArchiveStats>,
    ) -> Self {
        Self {
            consumer,
            sink,
            config,
            admission,
            topic,
            service,
            stats,
            partitions: BTreeMap::new(),
            batch: Batch::default(),
            pause: Pause::default(),
            last_version_us: 0,
        }
    }

    /// Runs until `shutdown`; then stops reading, flushes, commits (advisory) and returns
    /// ([`infra::checkpointed::run`]).
    pub(super) async fn run(mut self, shutdown: Shutdown) -> Result<(), ArchiveError> {
        checkpointed::run(&mut self, &shutdown).await
    }

    fn apply_assignment_changes(&mut self) -> Result<(), ArchiveError> {
        let changes = self
            .consumer
            .context()
            .take_changes()
            .map_err(ArchiveError::Resume)?;
        for change in changes {
            match change {
                AssignmentChange::Assigned(assigned) => {
                    for (partition, next) in assigned {
                        self.batch.discard_partition(partition);
                        self.partitions.insert(
                            partition,
                            PartitionState {
                                next_to_read: next,
                                next_to_write: next,
                            },
                        );
                    }
                    // A new assignment starts unpaused; `back_off` pauses it again if a write is
                    // still being retried.
                    self.pause.reset();
                }
                AssignmentChange::Revoked(revoked) => {
                    for partition in revoked {
                        self.batch.discard_partition(partition);
                        self.partitions.remove(&partition);
                    }
                }
            }
        }
        Ok(())
    }

    /// Classifies one record into the batch.
    fn accept(&mut self, message: &rdkafka::message::BorrowedMessage<'_>) {
        let partition = message.partition();
        let offset = message.offset();
        let Some(state) = self.partitions.get_mut(&partition) else {
            debug!(partition, offset, "record of an unowned partition dropped");
            return;
        };
        if let Some(next) = state.next_to_read {
            if offset < next {
                debug!(partition, offset, next, "stale record dropped");
                return;
            }
            if offset > next {
                // Compaction or transaction markers; a plain usage topic has none.
                debug!(partition, offset, next, "offsets skipped by the broker");
            }
        }
        state.next_to_read = Some(offset + 1);
        if state.next_to_write.is_none() {
            state.next_to_write = Some(offset);
        }
        let payload = message.payload().unwrap_or_default();
        let key = message.key();
        let source = SourceRecord {
            topic: &self.topic,
            partition,
            offset,
            payload,
            key,
        };
        // Admission (validation and pricing) is judged at the record's Kafka timestamp, not the
        // archive's clock, so a replay weeks later classifies every record exactly as the first
        // pass did, and exactly as the aggregator does (`quotaflow_admission`).
        let record_timestamp =
            quotaflow_admission::record_timestamp(message.timestamp().to_millis());
        let outcome = match schemas::decode::<UsageEvent>(payload) {
            Err(error) => Outcome::DeadLetter(Box::new(dead_letter::undecodable(
                source,
                &self.service,
                &error,
            ))),
            Ok(event) => match self.admission.admit(event, record_timestamp) {
                Err(rejection) => Outcome::DeadLetter(Box::new(dead_letter::dead_letter(
                    source,
                    &self.service,
                    rejection.dead_letter_kind(),
                    rejection.message(),
                ))),
                Ok(event) => {
                    let coordinates = KafkaCoordinates {
                        topic: &self.topic,
                        partition,
                        offset,
                    };
                    let now_us = Utc::now().timestamp_micros();
                    self.last_version_us = now_us.max(self.last_version_us + 1);
                    let archived_at = DateTime::<Utc>::from_timestamp_micros(self.last_version_us)
                        .unwrap_or_else(Utc::now);
                    match RawRow::from_event(event, coordinates, archived_at) {
                        Ok(row) => Outcome::Row {
                            row: Box::new(row),
                            payload: payload.to_vec(),
                            key: key.map(<[u8]>::to_vec),
                        },
                        Err(error) => Outcome::DeadLetter(Box::new(dead_letter::dead_letter(
                            source,
                            &self.service,
                            dead_letter::kind::UNREPRESENTABLE,
                            error.to_string(),
                        ))),
                    }
                }
            },
        };
        self.batch.push(partition, Record { offset, outcome });
    }

    /// Writes the batch, partition by partition, segment by segment, in offset order.
    async fn flush(&mut self, shutdown: &Shutdown) -> Result<FlushEnd, ArchiveError> {
        if self.batch.is_empty() {
            return Ok(FlushEnd::Done);
        }
        let started = Instant::now();
        let batch = std::mem::take(&mut self.batch);
        let records = batch.records;
        for (partition, partition_records) in batch.partitions {
            let span = info_span!("archive_partition", topic = %self.topic, partition);
            let end = self
                .flush_partition(partition, partition_records, shutdown)
                .instrument(span)
                .await?;
            if let FlushEnd::Abandoned = end {
                return Ok(FlushEnd::Abandoned);
            }
        }
        checkpointed::resume_if_paused(self);
        self.stats.flushes.fetch_add(1, Ordering::AcqRel);
        metrics::flushed(records, started.elapsed());
        checkpointed::commit(self, CommitMode::Async);
        Ok(FlushEnd::Done)
    }

    async fn flush_partition(
        &mut self,
        partition: i32,
        records: Vec<Record>,
        shutdown: &Shutdown,
    ) -> Result<FlushEnd, ArchiveError> {
        let mut pending: std::collections::VecDeque<Segment> = segments(records).into();
        let mut attempt = 0_u32;
        while let Some(mut segment) = pending.pop_front() {
            if !self.partitions.contains_key(&partition) {
                debug!(
                    partition,
                    "revoked during flush; the next owner re-reads the rest"
                );
                return Ok(FlushEnd::Done);
            }
            match self.sink.write(&mut segment).await {
                Ok(rows) => {
                    attempt = 0;
                    self.segment_written(partition, &segment, rows);
                }
                Err(SinkError::Transient(error)) => {
                    attempt += 1;
                    metrics::retry();
                    warn!(partition, attempt, %error, "write failed; retrying");
                    pending.push_front(segment);
                    if !checkpointed::back_off(self, attempt, shutdown).await? {
                        return Ok(FlushEnd::Abandoned);
                    }
                    // The failed INSERT may have committed before its answer was lost: skip
                    // what ClickHouse already has, so the raw table gets no second copy.
                    if let Ok(offsets) = self.sink.resume_offsets().await {
                        let next = offsets.get(&partition).copied().unwrap_or(0);
                        while pending
                            .front()
                            .is_some_and(|front| front.last_offset() < next)
                        {
                            if let Some(done) = pending.pop_front() {
                                let rows = match &done {
                                    Segment::Rows { records, .. } => records.len(),
                                    Segment::DeadLetters { .. } => 0,
                                };
                                self.segment_written(partition, &done, rows);
                            }
                        }
                    }
                }
                Err(SinkError::Rejected(error)) => {
                    // Bisect down to the rows at fault; halves stay in offset order.
                    match segment {
                        Segment::Rows { month, mut records } if records.len() > 1 => {
                            let right = records.split_off(records.len() / 2);
                            pending.push_front(Segment::Rows {
                                month,
                                records: right,
                            });
                            pending.push_front(Segment::Rows { month, records });
                        }
                        Segment::Rows { records, .. } => {
                            let letters = records
                                .iter()
                                .filter_map(|record| self.sink.rejected_dead_letter(record, &error))
                                .collect();
                            warn!(partition, %error, "row rejected by ClickHouse; dead-lettered");
                            pending.push_front(Segment::DeadLetters {
                                letters,
                                published: false,
                            });
                        }
                        Segment::DeadLetters { .. } => {
                            return Err(ArchiveError::Sink(format!(
                                "dead_letters refused rows: {error}"
                            )));
                        }
                    }
                }
                Err(SinkError::Fatal(error)) => return Err(ArchiveError::Sink(error)),
            }
        }
        Ok(FlushEnd::Done)
    }

    fn segment_written(&mut self, partition: i32, segment: &Segment, rows: usize) {
        if let Segment::DeadLetters { letters, .. } = segment {
            self.stats
                .dead_lettered
                .fetch_add(letters.len() as u64, Ordering::AcqRel);
            metrics::dead_letters(letters.iter().map(|letter| letter.error_kind.as_str()));
        }
        self.stats.archived.fetch_add(rows as u64, Ordering::AcqRel);
        metrics::rows_written(rows);
        if let Some(state) = self.partitions.get_mut(&partition) {
            state.next_to_write = Some(segment.last_offset() + 1);
        }
    }

    async fn record_lag(&self) {
        let partitions: Vec<(i32, Option<i64>)> = self
            .partitions
            .iter()
            .map(|(&partition, state)| (partition, state.next_to_write))
            .collect();
        let consumer = Arc::clone(&self.consumer);
        let topic = self.topic.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (partition, next) in partitions {
                if let Ok((low, high)) =
                    consumer.fetch_watermarks(&topic, partition, Duration::from_secs(1))
                {
                    metrics::consumer_lag(partition, high - next.unwrap_or(low));
                }
            }
        })
        .await;
    }
}

impl CheckpointedStage for ArchiveLoop {
    type Context = ArchiveContext;
    type Error = ArchiveError;
    type Inbox = ();

    fn consumer(&self) -> Arc<StreamConsumer<ArchiveContext>> {
        Arc::clone(&self.consumer)
    }

    fn topic(&self) -> &str {
        &self.topic
    }

    async fn apply_assignment_changes(&mut self) -> Result<(), ArchiveError> {
        ArchiveLoop::apply_assignment_changes(self)
    }

    async fn accept(&mut self, message: &BorrowedMessage<'_>) -> Result<(), ArchiveError> {
        ArchiveLoop::accept(self, message);
        Ok(())
    }

    fn flush_due(&self) -> bool {
        self.batch
            .is_full(self.config.batch_max_rows, self.config.batch_max_bytes)
    }

    fn flush_deadline(&self) -> Option<tokio::time::Instant> {
        self.batch
            .deadline(Duration::from_millis(self.config.batch_max_age_ms))
            .map(tokio::time::Instant::from_std)
    }

    async fn flush(&mut self, shutdown: &Shutdown) -> Result<FlushEnd, ArchiveError> {
        ArchiveLoop::flush(self, shutdown).await
    }

    fn durable_offsets(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter_map(|(&partition, state)| state.next_to_write.map(|next| (partition, next)))
            .collect()
    }

    fn pause_state(&mut self) -> &mut Pause {
        &mut self.pause
    }

    /// The consumer lag, every 5 s.
    fn chores(&self) -> Vec<Duration> {
        vec![Duration::from_secs(5)]
    }

    async fn chore(&mut self, _index: usize) -> Result<(), ArchiveError> {
        self.record_lag().await;
        Ok(())
    }
}
