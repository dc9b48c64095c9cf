//! Helpers for consumers that keep their resume offsets outside Kafka, in the same store as their
//! output (librdkafka's external offset store pattern; CONVENTIONS.md §3): the archiver and the
//! aggregator. They assign partitions at offsets of their own in the rebalance callback, pause
//! everything while a write is retried, and commit to Kafka only as advice for lag tooling.

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
