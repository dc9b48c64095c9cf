//! The one runner of the consumers that keep their offsets in their own store (the aggregator
//! and the archiver; CONVENTIONS.md §3).
//!
//! A consumer of this kind is a [`CheckpointedStage`]: it accepts records into a buffer and flushes
//! the buffer to its store, resume offsets included, in one durable write. The runner owns the
//! loop around it, the same for every such consumer:
//! - **read**: assignment changes queued by the rebalance callback
//!   ([`StoreRebalance`](crate::external_offsets::StoreRebalance)) are applied before and after each
//!   `recv()`, so no record of a revoked partition is accepted and none of a newly assigned one is
//!   missed;
//! - **flush** when the stage says it is due (size) or at its deadline (age or interval);
//! - **chores** (gauges, lag, early publishing, reloads) at their own periods, and items arriving
//!   on the stage's inbox;
//! - **back-off** ([`back_off`]): a failed write is retried after [`WRITE_RETRY`]'s jittered delay
//!   while the consumer is still polled (rebalances, `max.poll.interval.ms`); reading pauses once
//!   the stage's read-ahead is spent and resumes after the next successful flush;
//! - **shutdown**: intake stops, a **final flush** gets 30 s of retries of its own, then the
//!   advisory commit. A flush that shutdown interrupted mid-retry ([`FlushEnd::Abandoned`]) is not
//!   followed by a final flush: what it had taken from the stage is lost to this run, so a later
//!   flush would checkpoint past it. The next run resumes from the last durable checkpoint.
//!
//! # Delivery guarantee
//! The runner never commits a resume offset itself: the stage's durable write does. Kafka commits
//! are advice for lag tooling ([`commit_advisory`](crate::external_offsets::commit_advisory)),
//! made after each flush and at shutdown, of the offsets the stage reports durable.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{CommitMode, ConsumerContext, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::external_offsets::{self, Pause, WRITE_RETRY};
use crate::shutdown::Shutdown;

/// Records taken per turn of a loop's `select!` when they are already fetched ([`accept_burst`]).
const BURST: usize = 256;

/// How long the final flush at shutdown may keep retrying.
pub const FINAL_FLUSH_BUDGET: Duration = Duration::from_secs(30);

/// How a flush ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushEnd {
    /// Everything written (or dropped because its partition was revoked).
    Done,
    /// Shutdown was requested while a write was being retried: the rest is left for the next run,
    /// which resumes from the store.
    Abandoned,
}

/// A consumer that keeps its resume offsets in the store it writes (see the module docs).
///
/// The async methods return `Send` futures, so a stage's loop can run on a spawned task.
pub trait CheckpointedStage: Send {
    /// The consumer's context (its rebalance callback).
    type Context: ConsumerContext + 'static;
    /// The stage's error; the runner only passes it on.
    type Error: Send;
    /// What arrives on the stage's inbox ([`CheckpointedStage::take_inbox`]).
    type Inbox: Send;

    /// The consumer, subscribed.
    fn consumer(&self) -> Arc<StreamConsumer<Self::Context>>;
    /// The topic it reads (for logs and the advisory commit).
    fn topic(&self) -> &str;
    /// Applies the assignment changes the rebalance callback queued.
    fn apply_assignment_changes(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Takes one record into the buffer (a record of a partition not owned is dropped there).
    fn accept(
        &mut self,
        message: &BorrowedMessage<'_>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Whether the buffer is full enough to flush now.
    fn flush_due(&self) -> bool;
    /// When the buffer must be flushed at the latest (`None`: no deadline now).
    fn flush_deadline(&self) -> Option<Instant>;
    /// Writes the buffer durably, checkpoint last, retrying through [`back_off`]; `shutdown` ends
    /// the retries ([`FlushEnd::Abandoned`]).
    fn flush(
        &mut self,
        shutdown: &Shutdown,
    ) -> impl Future<Output = Result<FlushEnd, Self::Error>> + Send;
    /// (partition, next offset) of what is durably written, for the advisory commit.
    fn durable_offsets(&self) -> Vec<(i32, i64)>;
    /// Whether reading is paused (the runner pauses and resumes; the stage resets it on a new
    /// assignment, which starts unpaused).
    fn pause_state(&mut self) -> &mut Pause;

    /// Whether a retried flush has let in as many records as it may: reading pauses then. By
    /// default at once.
    fn read_ahead_spent(&self) -> bool {
        true
    }
    /// Told when reading pauses (`true`) or resumes (`false`), e.g. for a gauge.
    fn paused_changed(&self, _paused: bool) {}
    /// Periods of the stage's chores, run by [`CheckpointedStage::chore`] with their index.
    fn chores(&self) -> Vec<Duration> {
        Vec::new()
    }
    /// Runs chore `index` of [`CheckpointedStage::chores`].
    fn chore(&mut self, _index: usize) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }
    /// The period of the one chore that also runs while a write is in flight or retried
    /// (e.g. early publishing); `None`: none.
    fn chore_while_writing(&self) -> Option<Duration> {
        None
    }
    /// Runs the chore of [`CheckpointedStage::chore_while_writing`].
    fn run_chore_while_writing(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }
    /// Items from elsewhere that the loop hands to [`CheckpointedStage::on_inbox`] (e.g. seeds of
    /// backfills); taken once when the loop starts.
    fn take_inbox(&mut self) -> Option<tokio::sync::mpsc::Receiver<Self::Inbox>> {
        None
    }
    /// Handles one inbox item.
    fn on_inbox(
        &mut self,
        _item: Self::Inbox,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }
}

/// Runs `stage` until `shutdown`, then the final flush (unless a flush was abandoned) and the
/// advisory commit; see the module docs.
pub async fn run<S: CheckpointedStage>(stage: &mut S, shutdown: &Shutdown) -> Result<(), S::Error> {
    let consumer = stage.consumer();
    let mut chores = Chores::new(stage.chores());
    let mut inbox = stage.take_inbox();
    let mut flush_timer = Box::pin(tokio::time::sleep(Duration::ZERO));
    let mut abandoned = false;
    // One stream for the whole loop: `recv()` makes (and drops) a stream per record.
    let mut messages = consumer.stream();
    loop {
        stage.apply_assignment_changes().await?;
        let deadline = stage.flush_deadline();
        if let Some(deadline) = deadline {
            if flush_timer.deadline() != deadline {
                flush_timer.as_mut().reset(deadline);
            }
        }
        let end = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = &mut flush_timer, if deadline.is_some() => stage.flush(shutdown).await?,
            message = messages.next() => {
                accept_burst(stage, &mut messages, message, Some(shutdown)).await?;
                if stage.flush_due() {
                    stage.flush(shutdown).await?
                } else {
                    FlushEnd::Done
                }
            }
            index = chores.next() => {
                stage.chore(index).await?;
                FlushEnd::Done
            }
            Some(item) = next_item(&mut inbox) => {
                stage.on_inbox(item).await?;
                FlushEnd::Done
            }
        };
        if end == FlushEnd::Abandoned {
            abandoned = true;
            break;
        }
    }
    let topic = stage.topic().to_owned();
    info!(%topic, abandoned, "consumer stopping: intake stopped");
    let flushed = if abandoned {
        Ok(())
    } else {
        // The caller's token is cancelled by now; the final flush gets its own, bounded.
        let final_flush = Shutdown::new();
        let stop_retrying = final_flush.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(FINAL_FLUSH_BUDGET).await;
            stop_retrying.cancel();
        });
        let flushed = stage.flush(&final_flush).await.map(|_| ());
        timer.abort();
        flushed
    };
    commit(stage, CommitMode::Sync);
    info!(%topic, "consumer stopped");
    flushed
}

/// Waits before retry `attempt` (0-based) of a failed write, jittered ([`WRITE_RETRY`]): reading
/// goes on until the stage's read-ahead is spent, then the assignment is paused while the consumer
/// is still polled (rebalances, `max.poll.interval.ms`). Records already fetched when paused are
/// still accepted (they only add to the next flush). Returns `false` if shutdown was requested.
pub async fn back_off<S: CheckpointedStage>(
    stage: &mut S,
    attempt: u32,
    shutdown: &Shutdown,
) -> Result<bool, S::Error> {
    let until = Instant::now() + WRITE_RETRY.delay(attempt);
    pause_if_read_ahead_spent(stage);
    let consumer = stage.consumer();
    let mut chore = Chores::new(stage.chore_while_writing().into_iter().collect());
    chore.fire_now();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(false),
            () = tokio::time::sleep_until(until) => return Ok(true),
            _ = chore.next() => stage.run_chore_while_writing().await?,
            message = consumer.recv() => {
                stage.apply_assignment_changes().await?;
                if let Ok(message) = message {
                    stage.accept(&message).await?;
                }
                pause_if_read_ahead_spent(stage);
            }
        }
    }
}

/// Awaits one write attempt while the loop keeps reading (unless paused) and running the stage's
/// chore of [`CheckpointedStage::chore_while_writing`], so a slow write does not hold up what can
/// go on without it. Records read meanwhile go to the next flush.
pub async fn while_writing<S: CheckpointedStage, T>(
    stage: &mut S,
    write: impl Future<Output = T>,
) -> Result<T, S::Error> {
    tokio::pin!(write);
    let consumer = stage.consumer();
    let mut messages = consumer.stream();
    let mut chore = Chores::new(stage.chore_while_writing().into_iter().collect());
    loop {
        let paused = stage.pause_state().is_paused();
        tokio::select! {
            biased;
            written = &mut write => return Ok(written),
            _ = chore.next() => stage.run_chore_while_writing().await?,
            message = messages.next(), if !paused => {
                accept_burst(stage, &mut messages, message, None).await?;
            }
        }
    }
}

/// Accepts `first` and then the records already fetched, up to [`BURST`], without another turn
/// of the caller's `select!` (each turn costs timers and wakers). The assignment changes are
/// applied before each record. Stops as soon as the stage says a flush is due (the caller decides
/// what to do about it) or `stop` is cancelled.
async fn accept_burst<S: CheckpointedStage>(
    stage: &mut S,
    messages: &mut rdkafka::consumer::MessageStream<'_, S::Context>,
    first: Option<rdkafka::error::KafkaResult<BorrowedMessage<'_>>>,
    stop: Option<&Shutdown>,
) -> Result<(), S::Error> {
    let mut message = first;
    let mut taken = 0;
    while let Some(next) = message.take() {
        stage.apply_assignment_changes().await?;
        match next {
            Ok(next) => stage.accept(&next).await?,
            Err(error) => warn!(%error, "kafka consumer error"),
        }
        taken += 1;
        if stage.flush_due() || taken >= BURST || stop.is_some_and(Shutdown::is_cancelled) {
            break;
        }
        message = messages.next().now_or_never().flatten();
    }
    Ok(())
}

/// Resumes reading if a retried write had paused it (call after a successful flush).
pub fn resume_if_paused<S: CheckpointedStage>(stage: &mut S) {
    let consumer = stage.consumer();
    let topic = stage.topic().to_owned();
    if stage.pause_state().resume(&*consumer, &topic) {
        stage.paused_changed(false);
    }
}

/// The advisory commit of what the stage reports durable.
pub fn commit<S: CheckpointedStage>(stage: &S, mode: CommitMode) {
    external_offsets::commit_advisory(
        &*stage.consumer(),
        stage.topic(),
        stage.durable_offsets(),
        mode,
    );
}

fn pause_if_read_ahead_spent<S: CheckpointedStage>(stage: &mut S) {
    if !stage.read_ahead_spent() {
        return;
    }
    let consumer = stage.consumer();
    let topic = stage.topic().to_owned();
    if stage.pause_state().pause_all(&*consumer, &topic) {
        stage.paused_changed(true);
    }
}

async fn next_item<T>(inbox: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match inbox {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Periodic chores: each is due a period after it last ran (a late one is not run twice).
struct Chores {
    periods: Vec<Duration>,
    due: Vec<Instant>,
}

impl Chores {
    fn new(periods: Vec<Duration>) -> Self {
        let now = Instant::now();
        let due = periods.iter().map(|&period| now + period).collect();
        Self { periods, due }
    }

    /// Makes every chore due now.
    fn fire_now(&mut self) {
        let now = Instant::now();
        self.due.iter_mut().for_each(|due| *due = now);
    }

    /// Waits for the next chore due and returns its index (never, with none).
    async fn next(&mut self) -> usize {
        let Some((index, &due)) = self.due.iter().enumerate().min_by_key(|(_, due)| **due) else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(due).await;
        self.due[index] = Instant::now() + self.periods[index];
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn chores_come_due_in_period_order_and_are_not_run_twice_when_late() {
        let mut chores = Chores::new(vec![Duration::from_secs(5), Duration::from_secs(2)]);
        let start = Instant::now();
        assert_eq!(chores.next().await, 1);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(chores.next().await, 1);
        assert_eq!(chores.next().await, 0);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // Late by far more than a period: each chore runs once, then is due a period later.
        tokio::time::advance(Duration::from_secs(60)).await;
        let late = Instant::now();
        let first = chores.next().await;
        let second = chores.next().await;
        assert_ne!(first, second);
        assert_eq!(late.elapsed(), Duration::ZERO);
        assert_eq!(chores.next().await, 1);
        assert_eq!(late.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn no_chores_never_come_due() {
        let mut chores = Chores::new(Vec::new());
        let waited = tokio::time::timeout(Duration::from_secs(3600), chores.next()).await;
        assert!(waited.is_err());
    }
}
