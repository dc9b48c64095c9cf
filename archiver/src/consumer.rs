//! The consumer loop: read, classify, batch, flush segment by segment, advisory commit.
//!
//! One task owns the consumer, the batch and the sink. Flushes run inline: rebalance callbacks
//! run inside `recv()`, so a partition is never revoked while one of its INSERTs is in flight,
//! except while a write is being retried, where revocations are applied between attempts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use infra::config::ClickHouseConfig;
use infra::external_offsets::{self, lock, Pause};
use infra::shutdown::Shutdown;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use schemas::UsageEvent;
use tracing::{debug, info, info_span, warn, Instrument};

use super::batch::{segments, Batch, Outcome, Record, Segment};
use super::metrics;
use super::row::{KafkaCoordinates, RawRow};
use super::sink::{Sink, SinkError};
use super::{ArchiveConfig, ArchiveError};
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

/// A change of assignment seen by the rebalance callback, applied by the loop after `recv()`.
#[derive(Debug)]
enum AssignmentChange {
    /// Partitions assigned, with the offset each starts at (`None`: from the beginning).
    Assigned(Vec<(i32, Option<i64>)>),
    /// Partitions revoked.
    Revoked(Vec<i32>),
}

/// Rebalance callback: looks the resume offsets up in ClickHouse and assigns at exactly those
/// offsets (librdkafka's external offset store pattern), ignoring the committed Kafka offsets.
pub(super) struct ArchiveContext {
    /// Source topic.
    topic: String,
    /// Where to look resume offsets up (a fresh client per lookup, see [`lookup_blocking`]).
    clickhouse: ClickHouseConfig,
    /// Dead-letter service name, part of the resume rule.
    service: String,
    /// Changes not yet applied by the loop.
    changes: Mutex<Vec<AssignmentChange>>,
    /// A failure the loop must stop on (resume offsets unavailable).
    fatal: Mutex<Option<String>>,
}

impl ClientContext for ArchiveContext {}

impl ConsumerContext for ArchiveContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|element| element.partition())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let offsets = match lookup_blocking(&self.clickhouse, &self.topic, &self.service) {
                    Ok(offsets) => offsets,
                    Err(error) => {
                        warn!(topic = %self.topic, %error, "cannot read resume offsets; stopping");
                        *lock(&self.fatal) = Some(error);
                        return;
                    }
                };
                let mut assigned = Vec::with_capacity(partitions.len());
                for &partition in &partitions {
                    let next = offsets.get(&partition).copied();
                    let offset = next.map_or(Offset::Beginning, Offset::Offset);
                    if let Err(error) = tpl.set_partition_offset(&self.topic, partition, offset) {
                        *lock(&self.fatal) = Some(error.to_string());
                        return;
                    }
                    assigned.push((partition, next));
                }
                info!(topic = %self.topic, ?assigned, "partitions assigned at archived offsets");
                if let Err(error) = external_offsets::assign(base_consumer, tpl) {
                    *lock(&self.fatal) = Some(format!("assign failed: {error}"));
                    return;
                }
                lock(&self.changes).push(AssignmentChange::Assigned(assigned));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                info!(topic = %self.topic, ?partitions, "partitions revoked");
                lock(&self.changes).push(AssignmentChange::Revoked(partitions));
                if let Err(error) = external_offsets::unassign(base_consumer, tpl) {
                    warn!(%error, "unassign failed");
                }
            }
            other => warn!(error = ?other, "rebalance error"),
        }
    }
}

/// Reads the resume offsets from a callback that must not return before it has them. It runs on
/// its own thread with its own runtime and client: the callback blocks the thread that polls the
/// consumer, which may be the only thread of the caller's runtime. Retried for up to 60 s, well
/// within `max.poll.interval.ms`.
fn lookup_blocking(
    clickhouse: &ClickHouseConfig,
    topic: &str,
    service: &str,
) -> Result<BTreeMap<i32, i64>, String> {
    let clickhouse = clickhouse.clone();
    let topic = topic.to_owned();
    let service = service.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| error.to_string())?;
        runtime.block_on(async {
            let client = infra::clickhouse::client(&clickhouse);
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut retry =
                infra::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(5))
                    .attempts();
            loop {
                // One attempt may not hang the rebalance (a connection that never answers).
                let attempt = tokio::time::timeout(
                    Duration::from_secs(15),
                    super::sink::resume_offsets(&client, &topic, &service),
                )
                .await
                .map_err(|_| "timed out after 15 s".to_owned())
                .and_then(|result| result.map_err(|error| error.to_string()));
                let delay = retry.next_delay();
                match attempt {
                    Ok(offsets) => return Ok(offsets),
                    Err(error) if Instant::now() + delay < deadline => {
                        warn!(%error, "resume offsets lookup failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    Err(error) => return Err(error),
                }
            }
        })
    })
    .join()
    .map_err(|_| "resume lookup thread panicked".to_owned())?
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

/// How a flush ended.
enum FlushEnd {
    /// Everything written (or dropped because its partition was revoked).
    Done,
    /// Shutdown requested while a write was being retried: the rest is left for the next run.
    Abandoned,
}

impl ArchiveLoop {
    pub(super) fn new_context(
        topic: &str,
        clickhouse: &ClickHouseConfig,
        service: &str,
    ) -> ArchiveContext {
        ArchiveContext {
            topic: topic.to_owned(),
            clickhouse: clickhouse.clone(),
            service: service.to_owned(),
            changes: Mutex::new(Vec::new()),
            fatal: Mutex::new(None),
        }
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

    /// Runs until `shutdown`; then stops reading, flushes, commits (advisory) and returns.
    pub(super) async fn run(mut self, shutdown: Shutdown) -> Result<(), ArchiveError> {
        let max_age = Duration::from_millis(self.config.batch_max_age_ms);
        let mut lag_tick = tokio::time::interval(Duration::from_secs(5));
        lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut abandoned = false;
        let consumer = Arc::clone(&self.consumer);
        loop {
            self.apply_assignment_changes()?;
            let deadline = self
                .batch
                .deadline(max_age)
                .map(tokio::time::Instant::from_std);
            let end = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = sleep_until(deadline) => self.flush(&shutdown).await?,
                message = consumer.recv() => {
                    self.apply_assignment_changes()?;
                    match message {
                        Ok(message) => self.accept(&message),
                        Err(error) => warn!(%error, "kafka consumer error"),
                    }
                    if self.batch.is_full(self.config.batch_max_rows, self.config.batch_max_bytes) {
                        self.flush(&shutdown).await?
                    } else {
                        FlushEnd::Done
                    }
                }
                _ = lag_tick.tick() => {
                    self.record_lag().await;
                    FlushEnd::Done
                }
            };
            if let FlushEnd::Abandoned = end {
                abandoned = true;
                break;
            }
        }
        // Shutdown order: intake has stopped; flush what was read, then the advisory commit.
        // A shutdown that interrupted a retried write leaves the rest for the next run, which
        // resumes from ClickHouse anyway.
        info!(topic = %self.topic, buffered = self.batch.records, abandoned, "archive stopping");
        if !abandoned {
            // The caller's token is cancelled by now; the final flush gets its own, bounded.
            let final_flush = Shutdown::new();
            let stop_retrying = final_flush.clone();
            let timer = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                stop_retrying.cancel();
            });
            self.flush(&final_flush).await?;
            timer.abort();
        }
        self.commit(CommitMode::Sync);
        info!(topic = %self.topic, "archive stopped");
        Ok(())
    }

    fn apply_assignment_changes(&mut self) -> Result<(), ArchiveError> {
        let context = self.consumer.context();
        if let Some(error) = lock(&context.fatal).take() {
            return Err(ArchiveError::Resume(error));
        }
        let changes = std::mem::take(&mut *lock(&context.changes));
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
        self.resume_if_paused();
        self.stats.flushes.fetch_add(1, Ordering::AcqRel);
        metrics::flushed(records, started.elapsed());
        self.commit(CommitMode::Async);
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
                    if !self.back_off(attempt, shutdown).await? {
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

    /// Waits before retrying a write, with the assignment paused so nothing more is buffered,
    /// while still polling the consumer (rebalances, `max.poll.interval.ms`). Returns `false` if
    /// shutdown was requested.
    async fn back_off(&mut self, attempt: u32, shutdown: &Shutdown) -> Result<bool, ArchiveError> {
        let delay = external_offsets::retry_delay(attempt);
        self.pause_all();
        let consumer = Arc::clone(&self.consumer);
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(false),
                () = tokio::time::sleep_until(until) => return Ok(true),
                message = consumer.recv() => {
                    self.apply_assignment_changes()?;
                    self.pause_all();
                    // Pausing purges what librdkafka had fetched; a record that was already on its
                    // way is still accounted for (it only adds to the next batch).
                    if let Ok(message) = message {
                        self.accept(&message);
                    }
                }
            }
        }
    }

    fn pause_all(&mut self) {
        self.pause.pause_all(&*self.consumer, &self.topic);
    }

    fn resume_if_paused(&mut self) {
        self.pause.resume(&*self.consumer, &self.topic);
    }

    /// Advisory: the group's committed offsets show progress to Kafka tooling; the archive itself
    /// never reads them back.
    fn commit(&self, mode: CommitMode) {
        let offsets = self
            .partitions
            .iter()
            .filter_map(|(&partition, state)| state.next_to_write.map(|next| (partition, next)));
        external_offsets::commit_advisory(&*self.consumer, &self.topic, offsets, mode);
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

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
