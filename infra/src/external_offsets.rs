//! Helpers for consumers that keep their resume offsets outside Kafka, in the same store as their
//! output (librdkafka's external offset store pattern; CONVENTIONS.md §3): the archiver and the
//! aggregator. They assign partitions at offsets of their own in the rebalance callback, pause
//! everything while a write is retried, and commit to Kafka only as advice for lag tooling.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

/// Assigns `partitions` (with the offsets set in it) from a rebalance callback: incrementally
/// under the cooperative protocol, wholesale under the eager one.
pub fn assign<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &TopicPartitionList,
) -> KafkaResult<()> {
    match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => consumer.incremental_assign(partitions),
        _ => consumer.assign(partitions),
    }
}

/// Gives up `partitions` from a rebalance callback (the counterpart of [`assign`]).
pub fn unassign<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &TopicPartitionList,
) -> KafkaResult<()> {
    match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => consumer.incremental_unassign(partitions),
        _ => consumer.unassign(),
    }
}

/// Locks a mutex shared with a rebalance callback, ignoring poisoning (the data is a queue of
/// changes, valid whatever panicked).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long to wait before retry `attempt` (0-based) of a failed write: 100 ms, doubling, at most
/// 5 s.
pub fn retry_delay(attempt: u32) -> Duration {
    WRITE_RETRY.delay(attempt)
}

/// Retries of a failed write: from 100 ms doubling to 5 s, with jitter
/// ([`quotaflow_client::retry`]).
pub const WRITE_RETRY: quotaflow_client::retry::Backoff =
    quotaflow_client::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Whether the whole assignment is paused (reading stopped while a write is retried).
#[derive(Debug, Default)]
pub struct Pause {
    paused: bool,
}

impl Pause {
    /// Pauses every assigned partition; `true` if it was not paused before.
    pub fn pause_all<X: ConsumerContext, C: Consumer<X>>(
        &mut self,
        consumer: &C,
        topic: &str,
    ) -> bool {
        if self.paused {
            return false;
        }
        match consumer.assignment() {
            Ok(assignment) => match consumer.pause(&assignment) {
                Ok(()) => {
                    self.paused = true;
                    info!(%topic, "paused reading while a write is retried");
                    true
                }
                Err(error) => {
                    warn!(%error, "pause failed");
                    false
                }
            },
            Err(error) => {
                warn!(%error, "cannot read the assignment to pause it");
                false
            }
        }
    }

    /// Resumes every assigned partition if paused; `true` if it was paused.
    pub fn resume<X: ConsumerContext, C: Consumer<X>>(
        &mut self,
        consumer: &C,
        topic: &str,
    ) -> bool {
        if !self.paused {
            return false;
        }
        if let Ok(assignment) = consumer.assignment() {
            if let Err(error) = consumer.resume(&assignment) {
                warn!(%error, "resume failed");
                return false;
            }
        }
        self.paused = false;
        info!(%topic, "resumed reading");
        true
    }

    /// Forgets the paused state: a new assignment starts unpaused.
    pub fn reset(&mut self) {
        self.paused = false;
    }

    /// Whether reading is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }
}

/// Commits `offsets` (partition, next offset) of `topic` as advice for lag tooling; the service
/// never reads them back, so a failure is only logged.
pub fn commit_advisory<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topic: &str,
    offsets: impl IntoIterator<Item = (i32, i64)>,
    mode: CommitMode,
) {
    let mut list = TopicPartitionList::new();
    for (partition, next) in offsets {
        let _ = list.add_partition_offset(topic, partition, Offset::Offset(next));
    }
    if list.count() == 0 {
        return;
    }
    if let Err(error) = consumer.commit(&list, mode) {
        debug!(%error, "advisory commit failed");
    }
}

/// Each assigned partition with the offset it starts at (`None`: the beginning of the partition).
pub type StartOffsets = Vec<(i32, Option<i64>)>;

/// Where a consumer's partitions resume: the store that also holds its output (the aggregator's
/// checkpoints and partials, the archiver's rows). [`StoreRebalance`] asks it in the rebalance
/// callback, before the partitions are assigned.
pub trait PartitionStore: Send + Sync + 'static {
    /// What the consumer's loop needs of one assignment (e.g. the restored processors).
    type Restored: Send + 'static;

    /// Restores `partitions` of `topic`: the offset each starts at (`None`: the beginning of the
    /// partition) and what the loop needs. Blocking: it runs on the thread that polls the
    /// consumer (see [`block_on_retrying`] to reach an async store from there). An error stops
    /// the consumer's loop.
    fn restore(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<(StartOffsets, Self::Restored), String>;

    /// librdkafka's statistics (when `statistics.interval.ms` is set). Nothing by default.
    fn on_statistics(&self, _statistics: &rdkafka::Statistics) {}
}

/// A change of assignment seen by the rebalance callback, applied by the loop after `recv()`.
#[derive(Debug)]
pub enum AssignmentChange<R> {
    /// Partitions assigned at the offsets their store gave, with what the store restored.
    Assigned(R),
    /// Partitions revoked.
    Revoked(Vec<i32>),
}

/// The one rebalance callback of the consumers that keep their offsets in their store: on
/// assignment it restores the partitions from the [`PartitionStore`] and assigns them at exactly
/// the offsets it gave (the committed Kafka offsets are ignored); on revocation it gives them
/// up. Either way the loop learns of it through [`StoreRebalance::take_changes`]; a failed restore
/// is handed to the loop, which must stop.
pub struct StoreRebalance<S: PartitionStore> {
    topic: String,
    store: S,
    changes: Mutex<Vec<AssignmentChange<S::Restored>>>,
    fatal: Mutex<Option<String>>,
    /// Set (after the push) whenever `changes` or `fatal` gets something, so that the consumer
    /// loop, which asks before every record, takes no lock when nothing happened.
    signalled: AtomicBool,
}

impl<S: PartitionStore> StoreRebalance<S> {
    /// The callback for `topic`, restoring from `store`.
    pub fn new(topic: &str, store: S) -> Self {
        Self {
            topic: topic.to_owned(),
            store,
            changes: Mutex::new(Vec::new()),
            fatal: Mutex::new(None),
            signalled: AtomicBool::new(false),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The changes since the last call, oldest first, or the failure the loop must stop on.
    pub fn take_changes(&self) -> Result<Vec<AssignmentChange<S::Restored>>, String> {
        // Cleared before the locks are taken: a change pushed meanwhile is taken now or sets the
        // flag again for the next call; none is missed.
        if !self.signalled.swap(false, Ordering::Acquire) {
            return Ok(Vec::new());
        }
        if let Some(error) = lock(&self.fatal).take() {
            return Err(error);
        }
        Ok(std::mem::take(&mut *lock(&self.changes)))
    }

    fn fail(&self, error: String) {
        warn!(topic = %self.topic, %error, "cannot restore assigned partitions; stopping");
        *lock(&self.fatal) = Some(error);
        self.signalled.store(true, Ordering::Release);
    }
}

impl<S: PartitionStore> rdkafka::ClientContext for StoreRebalance<S> {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.store.on_statistics(&statistics);
    }
}

impl<S: PartitionStore> ConsumerContext for StoreRebalance<S> {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr;
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|element| element.partition())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let (offsets, restored) = match self.store.restore(&self.topic, &partitions) {
                    Ok(restored) => restored,
                    Err(error) => return self.fail(error),
                };
                for &(partition, next) in &offsets {
                    let offset = next.map_or(Offset::Beginning, Offset::Offset);
                    if let Err(error) = tpl.set_partition_offset(&self.topic, partition, offset) {
                        return self.fail(error.to_string());
                    }
                }
                info!(topic = %self.topic, ?offsets, "partitions assigned at their stored offsets");
                if let Err(error) = assign(base_consumer, tpl) {
                    return self.fail(format!("assign failed: {error}"));
                }
                lock(&self.changes).push(AssignmentChange::Assigned(restored));
                self.signalled.store(true, Ordering::Release);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                info!(topic = %self.topic, ?partitions, "partitions revoked");
                lock(&self.changes).push(AssignmentChange::Revoked(partitions));
                self.signalled.store(true, Ordering::Release);
                if let Err(error) = unassign(base_consumer, tpl) {
                    warn!(%error, "unassign failed");
                }
            }
            other => warn!(error = ?other, "rebalance error"),
        }
    }
}

/// Runs `attempt` from a callback that must not return before it has an answer (a rebalance
/// callback blocks the thread polling the consumer, which may be the caller runtime's only one):
/// on a thread of its own with its own runtime, each attempt bounded by `attempt_timeout`,
/// retried with `retry` while `retryable` says so, for up to `deadline` (keep it well within
/// `max.poll.interval.ms`). `what` names the work in the retry log line.
pub fn block_on_retrying<T, E, F, Fut>(
    what: &'static str,
    deadline: Duration,
    attempt_timeout: Duration,
    retry: quotaflow_client::retry::Backoff,
    retryable: fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, String>
where
    T: Send + 'static,
    E: std::fmt::Display + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| error.to_string())?;
        runtime.block_on(async {
            let deadline = std::time::Instant::now() + deadline;
            let mut retry = retry.attempts();
            loop {
                // One attempt may not hang the rebalance: a connection that accepts but never
                // answers would otherwise block it past every deadline.
                let result = match tokio::time::timeout(attempt_timeout, attempt()).await {
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(error)) => (retryable(&error), error.to_string()),
                    Err(_) => (true, format!("timed out after {attempt_timeout:?}")),
                };
                let delay = retry.next_delay();
                match result {
                    (true, error) if std::time::Instant::now() + delay < deadline => {
                        warn!(%error, "{what} failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    (_, error) => return Err(error),
                }
            }
        })
    })
    .join()
    .map_err(|_| format!("{what}: its thread panicked"))?
}
