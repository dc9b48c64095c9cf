//! The consumer loop: assignment (resume from ClickHouse), read, count, flush, back off.
//!
//! [`AggregatorLoop`] is a [`CheckpointedStage`]: the loop around it (read, flush by size or
//! interval, back-off, chores, the bounded final flush, the advisory commit) is
//! [`infra::checkpointed`]'s, shared with the archiver.
//!
//! One task owns the consumer and every [`PartitionAggregator`]. Flushes are taken from the
//! workers inline; while one is written the loop keeps reading (records read then go to the next
//! flush) and applies revocations between records: a partition revoked during a failed write
//! attempt has its part dropped from the next attempt (its new owner resumes from the last
//! checkpoint).
//!
//! # Assignment
//! On assignment the callback reads the partition's newest checkpoint and its stored partials
//! (versions below the checkpoint) from ClickHouse, on a thread of its own, builds the partition's
//! [`PartitionAggregator`] and assigns the partition at its `replay_from` offset, ignoring
//! committed Kafka offsets (librdkafka's external offset store pattern). Kafka commits are made
//! after each flush for lag tooling only.
//!
//! # Flush order
//! Partials (one INSERT), totals topic (every record acknowledged), tombstones of the keys of
//! windows closed at the flush's horizon (every one acknowledged), dead letters (Kafka, then
//! ClickHouse), checkpoints (one INSERT). A crash anywhere before the checkpoint INSERT leaves
//! the previous checkpoint in force, and the restart recomputes exactly the same rows and records
//! (same values, same versions), so what was written twice is the same thing twice.
//!
//! # Backpressure
//! A flush that fails with a retryable error (ClickHouse down, Kafka unavailable) is retried
//! with backoff (100 ms doubling to 5 s) for as long as it takes. Meanwhile the loop keeps reading,
//! counting and publishing policy totals early, so enforcement does not wait for ClickHouse (issue
//! 13, point 5): only the durable write and the checkpoint wait. Once `read_ahead_while_failing`
//! records were read since the failing flush began, every partition is paused: the state stops
//! growing and the consumer keeps polling so it stays in the group. Records already fetched are
//! still counted (they only make the next flush larger). A non-retryable error stops the service.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use infra::checkpointed::{self, CheckpointedStage, FlushEnd};
use infra::dead_letter::DeadLetterWriter;
use infra::external_offsets::{lock, Pause};
use infra::shutdown::Shutdown;
use policy::PolicySet;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use tracing::{debug, error, info, warn};

use crate::partition::PartitionFlush;
use crate::sink::{Sink, SinkError};
use crate::workers::{Record, Workers};
use crate::Error;

mod rebalance;
use infra::external_offsets::AssignmentChange;
pub use rebalance::{context, AggregatorContext, AggregatorStore};

/// How long one flush attempt may take before it is abandoned and retried (a server that accepts
/// connections but does not answer must not stop the loop from polling).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Crash-test hook ([`infra::failpoint`]): `AGGREGATOR_FAILPOINT=<step>:<n>` aborts the process
/// right after `<step>` of the `n`-th flush attempt, where `<step>` is `partials`, `published`,
/// `tombstoned`, `dead_letters` or `checkpoint`.
static FAILPOINTS: infra::failpoint::Failpoints =
    infra::failpoint::Failpoints::new("AGGREGATOR_FAILPOINT");

/// Prometheus metric names.
pub mod metric {
    /// Records read, by `outcome` (counted, late, duplicate, too_late, dead_lettered, remembered,
    /// stale).
    pub const RECORDS: &str = "quotaflow_aggregator_records_total";
    /// Batches of records counted, by `admitted_on`: `admitting_thread` (a worker's first thread
    /// decoded and admitted them: fewer busy workers than cores) or `counting_thread` (admitted
    /// where they are counted: every core busy).
    pub const BATCHES: &str = "quotaflow_aggregator_batches_total";
    /// Dead letters written, by `kind`.
    pub const DEAD_LETTERS: &str = "quotaflow_aggregator_dead_letters_total";
    /// Flushes completed.
    pub const FLUSHES: &str = "quotaflow_aggregator_flushes_total";
    /// Flush attempts that failed, by `retryable`.
    pub const FLUSH_FAILURES: &str = "quotaflow_aggregator_flush_failures_total";
    /// Seconds a flush took (all attempts).
    pub const FLUSH_SECONDS: &str = "quotaflow_aggregator_flush_seconds";
    /// Total rows (partials) per flush.
    pub const FLUSH_ROWS: &str = "quotaflow_aggregator_flush_rows";
    /// Records behind the partition's end, by `partition`.
    pub const LAG: &str = "quotaflow_aggregator_consumer_lag";
    /// (scope, window) totals held in memory.
    pub const ACTIVE_WINDOWS: &str = "quotaflow_aggregator_active_windows";
    /// Approximate bytes of state (totals and duplicate filters).
    pub const STATE_BYTES: &str = "quotaflow_aggregator_state_bytes";
    /// Event ids in the duplicate filters.
    pub const DEDUP_IDS: &str = "quotaflow_aggregator_dedup_ids";
    /// How far behind the watermark copies are still recognized, by `partition`: the duplicate
    /// horizon, or less once `dedup_max_ids` forced ids out early. Older events are refused.
    pub const DEDUP_HORIZON_SECONDS: &str = "quotaflow_aggregator_dedup_horizon_seconds";
    /// Ids the `dedup_max_ids` cap forced out of a duplicate filter before the horizon.
    pub const DEDUP_EVICTED_EARLY: &str = "quotaflow_aggregator_dedup_evicted_early_total";
    /// Issue 13 point 7: scopes of events counted under an overflow bucket (a kind's
    /// `max_scopes_per_kind` was reached in a window).
    pub const SCOPE_OVERFLOWS: &str = "quotaflow_aggregator_scope_overflows_total";
    /// 1 while reading is paused because a flush is being retried.
    pub const PAUSED: &str = "quotaflow_aggregator_paused";
    /// Partitions owned.
    pub const PARTITIONS: &str = "quotaflow_aggregator_partitions";
    /// Policy directory reloads, by `outcome`: `applied` (the set changed and loads), `failed`
    /// (it does not load, or a window cannot be represented: the last good set stays).
    pub const POLICY_RELOADS: &str = "quotaflow_aggregator_policy_reloads_total";
    /// 1 while the policy directory does not load (the last good set is in force), else 0.
    pub const POLICY_RELOAD_FAILING: &str = "quotaflow_aggregator_policy_reload_failing";
    /// Backfills of new policy definitions, by `outcome` (`completed`, `failed`: retried).
    pub const POLICY_BACKFILLS: &str = "quotaflow_aggregator_policy_backfills_total";
    /// Backfills running (definitions counted but held back until seeded).
    pub const POLICY_BACKFILLS_RUNNING: &str = "quotaflow_aggregator_policy_backfills_running";
    /// Records re-read from the usage topic by backfills.
    pub const POLICY_BACKFILL_RECORDS: &str = "quotaflow_aggregator_policy_backfill_records_total";
}

/// Statistics since start, readable by tests and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    /// Partitions owned now.
    pub partitions: std::sync::atomic::AtomicU64,
    /// Records read (every outcome).
    pub records: std::sync::atomic::AtomicU64,
    /// Flushes completed.
    pub flushes: std::sync::atomic::AtomicU64,
    /// Records counted (including late).
    pub counted: std::sync::atomic::AtomicU64,
    /// Flush attempts that failed.
    pub flush_failures: std::sync::atomic::AtomicU64,
    /// Policy reloads applied.
    pub policy_reloads: std::sync::atomic::AtomicU64,
    /// Policy reloads that failed (the last good set stayed).
    pub policy_reload_failures: std::sync::atomic::AtomicU64,
}

/// The loop and everything it owns.
pub struct AggregatorLoop {
    consumer: Arc<StreamConsumer<AggregatorContext>>,
    sink: Sink,
    dead_letters: DeadLetterWriter,
    topic: String,
    flush_interval: Duration,
    /// When the next timed flush is due (a flush interval after the last flush began).
    next_flush: tokio::time::Instant,
    flush_max_records: usize,
    /// The per-record work, on threads of its own ([`crate::workers`]).
    workers: Workers,
    /// Owned partitions and their last durable `next_offset` (for the advisory commit).
    owned: BTreeMap<i32, Option<i64>>,
    records_since_flush: usize,
    /// Records read while a flush is retried before reading pauses.
    read_ahead_while_failing: usize,
    pause: Pause,
    stats: Arc<Stats>,
    /// How often policy totals are published ahead of the flush; `None` = only at flushes.
    publish_interval: Option<Duration>,
    /// Policy reloads; `None` = the policies are loaded once.
    reload: Option<PolicyReload>,
}

impl AggregatorLoop {
    /// A loop over `consumer` (already subscribed), with `workers` worker threads.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        consumer: Arc<StreamConsumer<AggregatorContext>>,
        sink: Sink,
        dead_letters: DeadLetterWriter,
        topic: &str,
        flush_interval: Duration,
        flush_max_records: usize,
        workers: usize,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            consumer,
            sink,
            dead_letters,
            topic: topic.to_owned(),
            flush_interval,
            next_flush: tokio::time::Instant::now() + flush_interval,
            flush_max_records,
            workers: Workers::start(workers, Arc::clone(&stats)),
            owned: BTreeMap::new(),
            records_since_flush: 0,
            read_ahead_while_failing: 0,
            pause: Pause::default(),
            stats,
            publish_interval: None,
            reload: None,
        }
    }

    /// Keeps reading (counting, publishing policy totals early) for up to `records` records
    /// while a failed flush is retried; 0 pauses at the first failure.
    pub fn with_read_ahead_while_failing(mut self, records: usize) -> Self {
        self.read_ahead_while_failing = records;
        self
    }

    /// Reloads the policies as configured by `reload` (see [`PolicyReload`]).
    pub fn with_policy_reload(mut self, reload: PolicyReload) -> Self {
        self.reload = Some(reload);
        self
    }

    /// Publishes changed policy totals every `interval`, ahead of the durable flush (zero: off).
    pub fn with_publish_interval(mut self, interval: Duration) -> Self {
        self.publish_interval = (!interval.is_zero()).then_some(interval);
        self
    }

    /// Publishes the policy totals that changed since the last early publish. A failure is
    /// only logged: the flush publishes the same totals again, durably ordered.
    async fn publish_early(&mut self) -> Result<(), Error> {
        if self.pause.is_paused() {
            return Ok(());
        }
        let peeked = self.workers.peek().await?;
        let sends = peeked
            .iter()
            .map(|(partition, updates)| self.sink.publish_totals(*partition, updates));
        for sent in futures::future::join_all(sends).await {
            if let Err(error) = sent {
                warn!(%error, "early publish of policy totals failed; the flush publishes them");
            }
        }
        Ok(())
    }

    /// Runs until `shutdown`, then flushes what was read (bounded to 30 s of retries) and
    /// commits (advisory): [`infra::checkpointed::run`].
    pub async fn run(mut self, shutdown: Shutdown) -> Result<(), Error> {
        let result = checkpointed::run(&mut self, &shutdown).await;
        if let Some(reload) = &self.reload {
            reload.backfiller.stop();
        }
        self.workers.stop();
        result
    }

    async fn apply_assignment_changes(&mut self) -> Result<(), Error> {
        let store = self.consumer.context().store();
        let changes = self
            .consumer
            .context()
            .take_changes()
            .map_err(Error::Restore)?;
        for change in changes {
            match change {
                AssignmentChange::Assigned((assigned, restored_with)) => {
                    for mut partition in assigned {
                        let mut requests = partition.backfills();
                        let current = Arc::clone(&lock(&store.policies));
                        if !Arc::ptr_eq(&current, &restored_with) {
                            // A reload came between the restore and now.
                            match partition.reload(&current) {
                                Ok(request) => requests.extend(request),
                                Err(error) => return Err(Error::Restore(error.to_string())),
                            }
                        }
                        if let Some(reload) = &self.reload {
                            for request in requests {
                                let kinds = request.kinds.clone();
                                let policies = if kinds
                                    .iter()
                                    .all(|kind| current.by_totals_scope_kind(kind).is_some())
                                {
                                    Arc::clone(&current)
                                } else {
                                    Arc::clone(&restored_with)
                                };
                                reload.backfiller.spawn(request, policies);
                            }
                        }
                        self.owned.insert(partition.partition(), None);
                        self.workers.assign(partition).await?;
                    }
                    // A new assignment starts unpaused; a retried flush pauses it again.
                    self.pause.reset();
                }
                AssignmentChange::Revoked(revoked) => {
                    for partition in revoked {
                        self.owned.remove(&partition);
                        self.workers.revoke(partition).await?;
                    }
                }
            }
            metrics::gauge!(metric::PARTITIONS).set(self.owned.len() as f64);
            self.stats.partitions.store(
                self.owned.len() as u64,
                std::sync::atomic::Ordering::Release,
            );
        }
        Ok(())
    }

    /// Loads the policy directory; when it changed and loads, switches every partition to it and
    /// starts the backfills of the new definitions. A directory that does not load keeps the
    /// last good set (logged, `quotaflow_aggregator_policy_reloads_total{outcome="failed"}`).
    async fn reload_policies(&mut self) -> Result<(), Error> {
        let Some(reload) = &mut self.reload else {
            return Ok(());
        };
        let loaded = PolicySet::load_dir(&reload.dir)
            .map_err(|errors| errors.to_string())
            .and_then(|loaded| {
                // The plan is checked here so that no partition can refuse it.
                crate::scopes::ScopePlan::new(&loaded)
                    .map(|_| loaded)
                    .map_err(|error| error.to_string())
            });
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(errors) => {
                // Logged once per distinct failure (the directory is checked every interval).
                if reload.failing.as_deref() != Some(errors.as_str()) {
                    error!(errors = %errors, "policy reload failed; keeping the previous policies");
                    reload.failing = Some(errors);
                }
                metrics::counter!(metric::POLICY_RELOADS, "outcome" => "failed").increment(1);
                metrics::gauge!(metric::POLICY_RELOAD_FAILING).set(1.0);
                self.stats
                    .policy_reload_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Release);
                return Ok(());
            }
        };
        metrics::gauge!(metric::POLICY_RELOAD_FAILING).set(0.0);
        if reload.failing.take().is_some() {
            info!("the policy directory loads again");
        }
        if loaded.fingerprint() == reload.current.fingerprint() {
            return Ok(());
        }
        let loaded = Arc::new(loaded);
        reload.current = Arc::clone(&loaded);
        *lock(&self.consumer.context().store().policies) = Arc::clone(&loaded);
        let requests = self.workers.reload(Arc::clone(&loaded)).await?;
        info!(
            policies = loaded.len(),
            fingerprint = loaded.fingerprint(),
            backfills = requests.len(),
            "policies reloaded"
        );
        metrics::counter!(metric::POLICY_RELOADS, "outcome" => "applied").increment(1);
        self.stats
            .policy_reloads
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        if let Some(reload) = &self.reload {
            for request in requests {
                reload.backfiller.spawn(request, Arc::clone(&loaded));
            }
        }
        Ok(())
    }

    /// Hands a record to its partition's worker.
    async fn accept(&mut self, message: &BorrowedMessage<'_>) -> Result<(), Error> {
        if !self.owned.contains_key(&message.partition()) {
            metrics::counter!(metric::RECORDS, "outcome" => "stale").increment(1);
            return Ok(());
        }
        self.workers
            .record(Record {
                partition: message.partition(),
                offset: message.offset(),
                timestamp_ms: message.timestamp().to_millis(),
                key: message.key(),
                payload: message.payload(),
            })
            .await?;
        self.stats
            .records
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.records_since_flush += 1;
        Ok(())
    }

    /// Writes what changed (see the module docs); [`FlushEnd::Abandoned`] when shutdown
    /// interrupted a retried write (the rest is recomputed by the next run).
    async fn write_flush(&mut self, shutdown: &Shutdown) -> Result<FlushEnd, Error> {
        self.records_since_flush = 0;
        self.next_flush = tokio::time::Instant::now() + self.flush_interval;
        let taking = Instant::now();
        let mut batch: Vec<PartitionFlush> = self.workers.flush().await?;
        let take_ms = taking.elapsed().as_millis() as u64;
        if batch.is_empty() {
            return Ok(FlushEnd::Done);
        }
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            let attempt_result = self.write_while_reading(&batch).await?;
            match attempt_result {
                Ok(()) => break,
                Err(error) if error.is_retryable() => {
                    self.stats
                        .flush_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    metrics::counter!(metric::FLUSH_FAILURES, "retryable" => "true").increment(1);
                    warn!(
                        %error,
                        attempt,
                        read_since_flush = self.records_since_flush,
                        read_ahead = self.read_ahead_while_failing,
                        "flush failed; retrying, still counting and publishing until the read-ahead is spent"
                    );
                    if !checkpointed::back_off(self, attempt, shutdown).await? {
                        return Ok(FlushEnd::Abandoned);
                    }
                    // Revoked partitions' parts are dropped: their new owner resumes from the
                    // last checkpoint.
                    batch.retain(|flush| self.owned.contains_key(&flush.partition));
                    attempt += 1;
                }
                Err(error) => {
                    metrics::counter!(metric::FLUSH_FAILURES, "retryable" => "false").increment(1);
                    return Err(Error::Sink(error));
                }
            }
        }
        let rows: usize = batch.iter().map(|flush| flush.updates.len()).sum();
        for flush in &batch {
            if let Some(next) = self.owned.get_mut(&flush.partition) {
                *next = Some(flush.checkpoint.next_offset);
            }
            for letter in &flush.dead_letters {
                metrics::counter!(metric::DEAD_LETTERS, "kind" => letter.error_kind.clone())
                    .increment(1);
            }
        }
        checkpointed::resume_if_paused(self);
        checkpointed::commit(self, CommitMode::Async);
        self.stats
            .flushes
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        metrics::counter!(metric::FLUSHES).increment(1);
        metrics::histogram!(metric::FLUSH_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(metric::FLUSH_ROWS).record(rows as f64);
        debug!(
            rows,
            partitions = batch.len(),
            take_ms,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "flushed"
        );
        Ok(FlushEnd::Done)
    }

    /// One attempt at writing `batch` (with [`WRITE_TIMEOUT`]), while the loop keeps reading:
    /// records that arrive meanwhile are counted (written by the next flush) and changed policy
    /// totals keep being published early, so a slow ClickHouse insert does not hold enforcement
    /// up. The batch's checkpoint is the state at `take_flush`, unaffected by what is read now.
    async fn write_while_reading(
        &mut self,
        batch: &[PartitionFlush],
    ) -> Result<Result<(), SinkError>, Error> {
        let sink = self.sink.clone();
        let dead_letters = self.dead_letters.clone();
        let write = tokio::time::timeout(WRITE_TIMEOUT, write_batch(&sink, &dead_letters, batch));
        let written = checkpointed::while_writing(self, write).await?;
        Ok(written.unwrap_or(Err(SinkError::Timeout(WRITE_TIMEOUT))))
    }
}

/// Policy reloads: where, how often, and the seeding of new definitions.
pub struct PolicyReload {
    /// The policy directory.
    pub dir: std::path::PathBuf,
    /// How often it is checked; `None` = never.
    pub interval: Option<Duration>,
    /// The set in force.
    pub current: Arc<PolicySet>,
    /// Runs the backfills of new definitions.
    pub backfiller: crate::backfill::Backfiller,
    /// Where the backfills' seeds arrive (taken by the loop).
    pub seeds: Option<tokio::sync::mpsc::Receiver<crate::partition::Seed>>,
    /// The errors of the directory while it does not load (logged once).
    pub failing: Option<String>,
}

/// One attempt at writing `batch`, in the order of the module docs.
async fn write_batch(
    sink: &Sink,
    dead_letters: &DeadLetterWriter,
    batch: &[PartitionFlush],
) -> Result<(), SinkError> {
    let parts: Vec<(i32, &[crate::state::TotalUpdate])> = batch
        .iter()
        .map(|flush| (flush.partition, flush.updates.as_slice()))
        .collect();
    FAILPOINTS.count();
    // Partials and the totals topic are written at the same time: both are deterministic
    // functions of the input offsets (versions = offset + 1), so a total on the topic ahead of
    // its ClickHouse row is rebuilt identically by the replay after a crash. Only the
    // checkpoint must wait for both. This takes the ClickHouse insert off the enforcement path.
    let publish = async {
        let sends = parts
            .iter()
            .map(|(partition, updates)| sink.publish_totals(*partition, updates));
        for sent in futures::future::join_all(sends).await {
            sent?;
        }
        Ok::<(), SinkError>(())
    };
    let (written, published) = tokio::join!(sink.write_partials(&parts), publish);
    written?;
    FAILPOINTS.reached("partials");
    published?;
    FAILPOINTS.reached("published");
    // After the totals are acknowledged, so a key's tombstone follows its last total.
    let tombstones = batch
        .iter()
        .map(|flush| sink.publish_tombstones(flush.partition, &flush.closed));
    for sent in futures::future::join_all(tombstones).await {
        sent?;
    }
    FAILPOINTS.reached("tombstoned");
    let letters: Vec<schemas::DeadLetter> = batch
        .iter()
        .flat_map(|flush| flush.dead_letters.iter().cloned())
        .collect();
    if !letters.is_empty() {
        dead_letters
            .write(&letters)
            .await
            .map_err(|error| match error {
                infra::dead_letter::DeadLetterError::ClickHouse(error) => {
                    SinkError::ClickHouse(error)
                }
                other if other.is_retryable() => SinkError::DeadLetter(other.to_string(), true),
                other => SinkError::DeadLetter(other.to_string(), false),
            })?;
    }
    FAILPOINTS.reached("dead_letters");
    let checkpoints: Vec<(i32, &crate::partition::Checkpoint)> = batch
        .iter()
        .map(|flush| (flush.partition, &flush.checkpoint))
        .collect();
    sink.write_checkpoints(&checkpoints).await?;
    FAILPOINTS.reached("checkpoint");
    Ok(())
}

/// The aggregator's chores, by index in [`CheckpointedStage::chores`].
const CHORE_GAUGES: usize = 0;
const CHORE_PUBLISH: usize = 1;
const CHORE_RELOAD: usize = 2;
/// The period of a chore that is off (never due in practice).
const OFF: Duration = Duration::from_secs(365 * 24 * 3600);

impl CheckpointedStage for AggregatorLoop {
    type Context = AggregatorContext;
    type Error = Error;
    type Inbox = crate::partition::Seed;

    fn consumer(&self) -> Arc<StreamConsumer<AggregatorContext>> {
        Arc::clone(&self.consumer)
    }

    fn topic(&self) -> &str {
        &self.topic
    }

    async fn apply_assignment_changes(&mut self) -> Result<(), Error> {
        AggregatorLoop::apply_assignment_changes(self).await
    }

    async fn accept(&mut self, message: &BorrowedMessage<'_>) -> Result<(), Error> {
        AggregatorLoop::accept(self, message).await
    }

    fn flush_due(&self) -> bool {
        self.records_since_flush >= self.flush_max_records
    }

    fn flush_deadline(&self) -> Option<tokio::time::Instant> {
        Some(self.next_flush)
    }

    async fn flush(&mut self, shutdown: &Shutdown) -> Result<FlushEnd, Error> {
        self.write_flush(shutdown).await
    }

    fn durable_offsets(&self) -> Vec<(i32, i64)> {
        self.owned
            .iter()
            .filter_map(|(&partition, next)| next.map(|next| (partition, next)))
            .collect()
    }

    fn pause_state(&mut self) -> &mut Pause {
        &mut self.pause
    }

    /// Counting and publishing go on through a failing flush until the read-ahead is spent.
    fn read_ahead_spent(&self) -> bool {
        self.records_since_flush >= self.read_ahead_while_failing
    }

    fn paused_changed(&self, paused: bool) {
        metrics::gauge!(metric::PAUSED).set(if paused { 1.0 } else { 0.0 });
    }

    fn chores(&self) -> Vec<Duration> {
        let reload = self.reload.as_ref().and_then(|reload| reload.interval);
        let mut chores = vec![OFF; 3];
        chores[CHORE_GAUGES] = Duration::from_secs(2);
        chores[CHORE_PUBLISH] = self.publish_interval.unwrap_or(OFF);
        chores[CHORE_RELOAD] = reload.unwrap_or(OFF);
        chores
    }

    async fn chore(&mut self, index: usize) -> Result<(), Error> {
        match index {
            CHORE_GAUGES => self.record_gauges().await,
            CHORE_PUBLISH => self.publish_early().await,
            CHORE_RELOAD => self.reload_policies().await,
            _ => Ok(()),
        }
    }

    fn chore_while_writing(&self) -> Option<Duration> {
        self.publish_interval
    }

    async fn run_chore_while_writing(&mut self) -> Result<(), Error> {
        self.publish_early().await
    }

    fn take_inbox(&mut self) -> Option<tokio::sync::mpsc::Receiver<crate::partition::Seed>> {
        self.reload.as_mut().and_then(|reload| reload.seeds.take())
    }

    async fn on_inbox(&mut self, seed: crate::partition::Seed) -> Result<(), Error> {
        Ok(self.workers.seed(seed).await?)
    }
}

impl AggregatorLoop {
    async fn record_gauges(&mut self) -> Result<(), Error> {
        let gauges = self.workers.gauges().await?;
        metrics::gauge!(metric::ACTIVE_WINDOWS).set(gauges.active_windows as f64);
        metrics::gauge!(metric::STATE_BYTES).set(gauges.bytes as f64);
        metrics::gauge!(metric::DEDUP_IDS).set(gauges.dedup_ids as f64);
        for (partition, seconds) in gauges.dedup_horizons {
            metrics::gauge!(metric::DEDUP_HORIZON_SECONDS, "partition" => partition.to_string())
                .set(seconds);
        }
        let high_watermarks = lock(&self.consumer.context().store().high_watermarks).clone();
        for (&partition, next) in &self.owned {
            if let (Some(next), Some(high)) = (next, high_watermarks.get(&partition)) {
                metrics::gauge!(metric::LAG, "partition" => partition.to_string())
                    .set((high - next).max(0) as f64);
            }
        }
        Ok(())
    }
}
