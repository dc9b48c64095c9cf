//! Worker threads: the per-record work (decode, checks, duplicate filter, totals) of the
//! partitions, spread over threads so that it uses every core while the consumer loop polls Kafka
//! and writes flushes.
//!
//! Each partition lives on exactly one worker (`partition % workers`), and each worker takes its
//! commands from one bounded channel in order, so a partition sees its records in offset order
//! and a flush request is answered only after every record sent before it was handled: the
//! flush describes exactly the records read so far. Records go in batches of 512 (one channel
//! operation per batch); a batch not yet full is sent before any other command, so the order
//! holds. The bound (16 batches in flight per worker) keeps memory bounded and slows the
//! consumer loop down to what the workers handle.
//!
//! A worker is two threads in a line: the first passes every command on, in the order received,
//! through a second bounded channel (4 batches) to the thread that owns the partitions and
//! counts (duplicate filter, lateness, totals). While fewer workers hold partitions than there
//! are cores (one partition on two cores, say), the first thread also decodes and admits each
//! batch ([`crate::partition::Admitter`], pure: it holds no partition state), so one partition's
//! work uses two cores; spent events go back to it, and its decoder writes the next records into
//! their buffers. Otherwise the counting thread admits too (no event crosses threads: cheaper
//! when every core is busy). Either way the order argument above holds unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use policy::PolicySet;

use schemas::{DeadLetter, UsageEvent};

use crate::partition::{
    Admitter, BackfillRequest, Outcome, PartitionAggregator, PartitionFlush, Seed,
};
use crate::pipeline::{metric, Stats};

/// Batches (and commands) queued per worker.
const QUEUE: usize = 16;

/// Admitted batches (and commands) queued between a worker's two threads.
const ADMITTED_QUEUE: usize = 4;

/// Spent events a worker's admitting thread keeps for their buffers: as many as can be in
/// flight between its two threads, so that decoding allocates nothing in the steady state.
const SPARE_EVENTS: usize = (ADMITTED_QUEUE + 2) * BATCH;

/// Records sent to a worker at a time: one channel operation per batch, not per record.
const BATCH: usize = 512;

/// Bytes of keys and values after which a batch goes even if it has fewer than [`BATCH`] records.
const BATCH_BYTES: usize = 4 << 20;

/// One record as the consumer read it (borrowed from the Kafka message); [`Workers::record`]
/// copies its bytes into the batch that crosses to the worker thread.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka timestamp in milliseconds.
    pub timestamp_ms: Option<i64>,
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Value.
    pub payload: Option<&'a [u8]>,
}

/// Where a batched record's key or value sits in its batch's buffer.
type Span = Option<(u32, u32)>;

/// One batched record.
#[derive(Debug)]
struct Entry {
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Span,
    payload: Span,
}

/// Records for one worker, with their keys and values in one buffer: two allocations per batch
/// instead of two per record.
#[derive(Debug, Default)]
struct Batch {
    entries: Vec<Entry>,
    bytes: Vec<u8>,
}

impl Batch {
    /// An empty batch sized like the last one.
    fn like(previous_bytes: usize) -> Batch {
        Batch {
            entries: Vec::with_capacity(BATCH),
            bytes: Vec::with_capacity(previous_bytes),
        }
    }

    fn push(&mut self, record: &Record<'_>) {
        let mut span = |bytes: Option<&[u8]>| {
            bytes.map(|bytes| {
                let start = self.bytes.len();
                self.bytes.extend_from_slice(bytes);
                (start as u32, self.bytes.len() as u32)
            })
        };
        let key = span(record.key);
        let payload = span(record.payload);
        self.entries.push(Entry {
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            key,
            payload,
        });
    }

    /// Whether the batch should go now: [`BATCH`] records, or [`BATCH_BYTES`] (so that one
    /// batch of huge records does not hold the consumer's memory).
    fn is_full(&self) -> bool {
        self.entries.len() >= BATCH || self.bytes.len() >= BATCH_BYTES
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn slice(&self, span: Span) -> Option<&[u8]> {
        span.map(|(start, end)| &self.bytes[start as usize..end as usize])
    }
}

/// What the state of a worker's partitions amounts to (for gauges).
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// (scope, window) totals held.
    pub active_windows: usize,
    /// Approximate bytes of totals and duplicate filters.
    pub bytes: usize,
    /// Ids in the duplicate filters.
    pub dedup_ids: usize,
    /// Effective duplicate horizon in seconds per partition (partitions with an event only).
    pub dedup_horizons: Vec<(i32, f64)>,
}

enum Command {
    Assign(Box<PartitionAggregator>),
    Revoke(i32),
    Records(Batch),
    Flush(oneshot::Sender<Vec<PartitionFlush>>),
    Peek(oneshot::Sender<Vec<(i32, Vec<crate::state::TotalUpdate>)>>),
    Gauges(oneshot::Sender<Gauges>),
    Reload(Arc<PolicySet>, oneshot::Sender<Vec<BackfillRequest>>),
    Seed(Box<Seed>),
    /// Records and what admission made of each (`None`: a partition the worker does not hold).
    Admitted(Batch, Vec<Option<Admitted>>),
}

/// A record's admission: its event, or the dead letter saying why it cannot be counted. Boxed:
/// an event is about 600 bytes, and it goes between threads and back without being moved.
type Admitted = Result<Box<UsageEvent>, Box<DeadLetter>>;

/// Events handed back to the admitting thread for their buffers (boxed, see [`Admitted`]).
#[allow(clippy::vec_box)]
type Spent = Vec<Box<UsageEvent>>;

/// The worker threads.
pub struct Workers {
    senders: Vec<mpsc::Sender<Command>>,
    /// Records not sent yet, per worker; sent before any other command, so order holds.
    pending: Vec<Batch>,
    threads: Vec<JoinHandle<()>>,
    /// Whether the admitting threads admit (fewer workers hold partitions than there are
    /// cores), or pass records on to be admitted where they are counted.
    split: Arc<AtomicBool>,
    /// Partitions held, to know how many workers are busy.
    assigned: BTreeSet<i32>,
    cores: usize,
}

/// The workers are gone (a worker thread panicked): the service must stop.
#[derive(Debug, thiserror::Error)]
#[error("a worker thread stopped")]
pub struct WorkerGone;

impl Workers {
    /// `count` workers (at least one), reporting into `stats`.
    pub fn start(count: usize, stats: Arc<Stats>) -> Workers {
        let count = count.max(1);
        let split = Arc::new(AtomicBool::new(false));
        let mut senders = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let (sender, receiver) = mpsc::channel(QUEUE);
            let (admitted_sender, admitted_receiver) = mpsc::channel(ADMITTED_QUEUE);
            let (spent_sender, spent_receiver) = std::sync::mpsc::channel();
            let stats = Arc::clone(&stats);
            let split = Arc::clone(&split);
            let admitting = std::thread::Builder::new()
                .name(format!("aggregator-admit-{index}"))
                .spawn(move || admit(receiver, admitted_sender, spent_receiver, split))
                .expect("spawning a worker thread");
            let counting = std::thread::Builder::new()
                .name(format!("aggregator-worker-{index}"))
                .spawn(move || work(admitted_receiver, spent_sender, stats))
                .expect("spawning a worker thread");
            senders.push(sender);
            threads.push(admitting);
            threads.push(counting);
        }
        Workers {
            pending: (0..count).map(|_| Batch::like(0)).collect(),
            senders,
            threads,
            split,
            assigned: BTreeSet::new(),
            cores: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }

    /// Admits on the admitting threads only while fewer workers hold partitions than there are
    /// cores: then a partition's work takes two cores. With every core busy anyway, admitting
    /// where the record is counted costs less (no event crosses threads).
    fn update_split(&self) {
        let busy: BTreeSet<usize> = self
            .assigned
            .iter()
            .map(|partition| self.index(*partition))
            .collect();
        self.split.store(busy.len() < self.cores, Ordering::Relaxed);
    }

    /// The worker index of `partition`.
    fn index(&self, partition: i32) -> usize {
        partition.unsigned_abs() as usize % self.senders.len()
    }

    /// Sends worker `index` its pending records.
    async fn send_pending(&mut self, index: usize) -> Result<(), WorkerGone> {
        if self.pending[index].is_empty() {
            return Ok(());
        }
        let previous_bytes = self.pending[index].bytes.len();
        let batch = std::mem::replace(&mut self.pending[index], Batch::like(previous_bytes));
        send(&self.senders[index], Command::Records(batch)).await
    }

    /// Sends every worker its pending records.
    async fn send_all_pending(&mut self) -> Result<(), WorkerGone> {
        for index in 0..self.senders.len() {
            self.send_pending(index).await?;
        }
        Ok(())
    }

    /// Hands a restored partition to its worker.
    pub async fn assign(&mut self, partition: PartitionAggregator) -> Result<(), WorkerGone> {
        let index = self.index(partition.partition());
        self.send_pending(index).await?;
        self.assigned.insert(partition.partition());
        self.update_split();
        send(&self.senders[index], Command::Assign(Box::new(partition))).await
    }

    /// Drops a partition (revoked: its new owner resumes from the last checkpoint).
    pub async fn revoke(&mut self, partition: i32) -> Result<(), WorkerGone> {
        let index = self.index(partition);
        self.send_pending(index).await?;
        self.assigned.remove(&partition);
        self.update_split();
        send(&self.senders[index], Command::Revoke(partition)).await
    }

    /// Queues a record for its partition's worker, in batches (waits while that worker's queue
    /// is full).
    pub async fn record(&mut self, record: Record<'_>) -> Result<(), WorkerGone> {
        let index = self.index(record.partition);
        self.pending[index].push(&record);
        if self.pending[index].is_full() {
            self.send_pending(index).await?;
        }
        Ok(())
    }

    /// Every partition's flush (those with progress), after every record queued before.
    pub async fn flush(&mut self) -> Result<Vec<PartitionFlush>, WorkerGone> {
        self.send_all_pending().await?;
        let mut replies = Vec::with_capacity(self.senders.len());
        for sender in &self.senders {
            let (reply, receiver) = oneshot::channel();
            send(sender, Command::Flush(reply)).await?;
            replies.push(receiver);
        }
        let mut flushes = Vec::new();
        for receiver in replies {
            flushes.extend(receiver.await.map_err(|_| WorkerGone)?);
        }
        Ok(flushes)
    }

    /// The policy totals changed since the last peek, per partition (records sent first).
    pub async fn peek(&mut self) -> Result<Vec<(i32, Vec<crate::state::TotalUpdate>)>, WorkerGone> {
        self.send_all_pending().await?;
        let mut replies = Vec::with_capacity(self.senders.len());
        for sender in &self.senders {
            let (reply, receiver) = oneshot::channel();
            send(sender, Command::Peek(reply)).await?;
            replies.push(receiver);
        }
        let mut peeked = Vec::new();
        for receiver in replies {
            peeked.extend(receiver.await.map_err(|_| WorkerGone)?);
        }
        Ok(peeked)
    }

    /// Switches every partition to `policies` (after the records queued before); the seeds the
    /// partitions need for the new definitions.
    pub async fn reload(
        &mut self,
        policies: Arc<PolicySet>,
    ) -> Result<Vec<BackfillRequest>, WorkerGone> {
        self.send_all_pending().await?;
        let mut replies = Vec::with_capacity(self.senders.len());
        for sender in &self.senders {
            let (reply, receiver) = oneshot::channel();
            send(sender, Command::Reload(Arc::clone(&policies), reply)).await?;
            replies.push(receiver);
        }
        let mut requests = Vec::new();
        for receiver in replies {
            requests.extend(receiver.await.map_err(|_| WorkerGone)?);
        }
        Ok(requests)
    }

    /// Hands a seed to its partition (after the records queued before).
    pub async fn seed(&mut self, seed: Seed) -> Result<(), WorkerGone> {
        let index = self.index(seed.partition);
        self.send_pending(index).await?;
        send(&self.senders[index], Command::Seed(Box::new(seed))).await
    }

    /// The state's size over all workers.
    pub async fn gauges(&mut self) -> Result<Gauges, WorkerGone> {
        let mut total = Gauges::default();
        for sender in &self.senders {
            let (reply, receiver) = oneshot::channel();
            send(sender, Command::Gauges(reply)).await?;
            let gauges = receiver.await.map_err(|_| WorkerGone)?;
            total.active_windows += gauges.active_windows;
            total.bytes += gauges.bytes;
            total.dedup_ids += gauges.dedup_ids;
            total.dedup_horizons.extend(gauges.dedup_horizons);
        }
        Ok(total)
    }

    /// Stops the workers (their partitions are dropped) and waits for them.
    pub fn stop(self) {
        drop(self.senders);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

async fn send(sender: &mpsc::Sender<Command>, command: Command) -> Result<(), WorkerGone> {
    sender.send(command).await.map_err(|_| WorkerGone)
}

/// Outcome counts not yet published (metrics are cheap per batch, not per record).
#[derive(Default)]
struct Counts {
    by_outcome: [u64; 7],
    /// Ids the duplicate filters' cap forced out before the horizon.
    dedup_evicted_early: u64,
    /// Scopes counted under an overflow bucket since the last publish.
    scopes_overflowed: u64,
}

const OUTCOMES: [&str; 7] = [
    "counted",
    "late",
    "duplicate",
    "dead_lettered",
    "remembered",
    "stale",
    "too_late",
];

impl Counts {
    fn add(&mut self, outcome: &Outcome) {
        let index = match outcome {
            Outcome::Counted => 0,
            Outcome::Late => 1,
            Outcome::Duplicate => 2,
            Outcome::DeadLettered(_) => 3,
            Outcome::Remembered => 4,
            Outcome::Stale => 5,
            Outcome::TooLate => 6,
        };
        self.by_outcome[index] += 1;
    }

    fn publish(&mut self, stats: &Stats) {
        for (count, outcome) in self.by_outcome.iter_mut().zip(OUTCOMES) {
            if *count > 0 {
                metrics::counter!(metric::RECORDS, "outcome" => outcome).increment(*count);
            }
        }
        if self.dedup_evicted_early > 0 {
            metrics::counter!(metric::DEDUP_EVICTED_EARLY).increment(self.dedup_evicted_early);
            self.dedup_evicted_early = 0;
        }
        if self.scopes_overflowed > 0 {
            metrics::counter!(metric::SCOPE_OVERFLOWS).increment(self.scopes_overflowed);
            self.scopes_overflowed = 0;
        }
        let counted = self.by_outcome[0] + self.by_outcome[1];
        stats.counted.fetch_add(counted, Ordering::Relaxed);
        self.by_outcome = [0; 7];
    }
}

/// A worker's first thread: admits every batch of records (see the module docs) and passes it
/// on, with every other command, in the order received. Ends when the consumer loop drops its
/// sender or the counting thread is gone.
fn admit(
    mut receiver: mpsc::Receiver<Command>,
    sender: mpsc::Sender<Command>,
    spent: std::sync::mpsc::Receiver<Spent>,
    split: Arc<AtomicBool>,
) {
    let mut admitters: BTreeMap<i32, Admitter> = BTreeMap::new();
    let mut spare: Vec<Box<UsageEvent>> = Vec::with_capacity(SPARE_EVENTS);
    while let Some(command) = receiver.blocking_recv() {
        let command = match command {
            Command::Assign(partition) => {
                admitters.insert(partition.partition(), partition.admitter());
                Command::Assign(partition)
            }
            Command::Revoke(partition) => {
                admitters.remove(&partition);
                Command::Revoke(partition)
            }
            // Fewer busy workers than cores: admit here, so that the partition uses two.
            Command::Records(batch) if split.load(Ordering::Relaxed) => {
                while let Ok(events) = spent.try_recv() {
                    let room = SPARE_EVENTS.saturating_sub(spare.len());
                    spare.extend(events.into_iter().take(room));
                }
                let admitted = batch
                    .entries
                    .iter()
                    .map(|record| {
                        admitters.get(&record.partition).map(|admitter| {
                            admitter.admit(
                                record.offset,
                                record.timestamp_ms,
                                batch.slice(record.key),
                                batch.slice(record.payload),
                                spare.pop(),
                            )
                        })
                    })
                    .collect();
                Command::Admitted(batch, admitted)
            }
            other => other,
        };
        if sender.blocking_send(command).is_err() {
            return;
        }
    }
}

/// A worker's second thread: owns its partitions, counts admitted records and answers the
/// commands (see the module docs).
fn work(
    mut receiver: mpsc::Receiver<Command>,
    spent_events: std::sync::mpsc::Sender<Spent>,
    stats: Arc<Stats>,
) {
    let mut partitions: BTreeMap<i32, PartitionAggregator> = BTreeMap::new();
    // One span per partition (`aggregate_partition{topic, partition}`), entered while its records
    // are handled, so every log line of a record names its partition. Entered once per run of
    // records of the same partition, not per record: the hot path stays cheap.
    let mut spans: BTreeMap<i32, tracing::Span> = BTreeMap::new();
    let mut counts = Counts::default();
    let mut since_publish = 0u32;
    while let Some(command) = receiver.blocking_recv() {
        if since_publish >= 4 {
            counts.publish(&stats);
            since_publish = 0;
        }
        match command {
            Command::Assign(partition) => {
                let span = tracing::info_span!(
                    "aggregate_partition",
                    topic = %partition.topic(),
                    partition = partition.partition()
                );
                spans.insert(partition.partition(), span);
                partitions.insert(partition.partition(), *partition);
            }
            Command::Revoke(partition) => {
                partitions.remove(&partition);
                spans.remove(&partition);
            }
            Command::Records(batch) => {
                metrics::counter!(metric::BATCHES, "admitted_on" => "counting_thread").increment(1);
                handle_batch(&mut partitions, &spans, &mut counts, &batch, None);
                since_publish += 1;
            }
            Command::Admitted(batch, admitted) => {
                metrics::counter!(metric::BATCHES, "admitted_on" => "admitting_thread")
                    .increment(1);
                let spent =
                    handle_batch(&mut partitions, &spans, &mut counts, &batch, Some(admitted));
                // The admitting thread gone means the worker is stopping.
                let _ = spent_events.send(spent);
                since_publish += 1;
            }
            Command::Flush(reply) => {
                counts.publish(&stats);
                since_publish = 0;
                let flushes = partitions
                    .values_mut()
                    .filter(|partition| partition.has_progress())
                    .map(PartitionAggregator::take_flush)
                    .collect();
                let _ = reply.send(flushes);
            }
            Command::Peek(reply) => {
                let peeked = partitions
                    .iter_mut()
                    .map(|(index, partition)| (*index, partition.peek_policy_updates()))
                    .filter(|(_, updates)| !updates.is_empty())
                    .collect();
                let _ = reply.send(peeked);
            }
            Command::Reload(policies, reply) => {
                let mut requests = Vec::new();
                for partition in partitions.values_mut() {
                    match partition.reload(&policies) {
                        Ok(request) => requests.extend(request),
                        // The loop checked the plan before sending it: not reached.
                        Err(error) => tracing::error!(
                            partition = partition.partition(),
                            %error,
                            "policy reload not applied to the partition"
                        ),
                    }
                }
                let _ = reply.send(requests);
            }
            Command::Seed(seed) => {
                let Some(partition) = partitions.get_mut(&seed.partition) else {
                    continue; // revoked since: its new owner seeds it again
                };
                match partition.apply_seed(&seed) {
                    Ok(released) if !released.is_empty() => tracing::info!(
                        partition = seed.partition,
                        live_from = seed.live_from,
                        ?released,
                        "policy definitions seeded; their totals are published from now on"
                    ),
                    Ok(_) => {}
                    Err(error) => {
                        metrics::counter!(metric::POLICY_BACKFILLS, "outcome" => "failed")
                            .increment(1);
                        tracing::error!(
                            partition = seed.partition,
                            %error,
                            "a policy seed does not fit the totals; the definitions stay held"
                        );
                    }
                }
            }
            Command::Gauges(reply) => {
                let mut gauges = Gauges::default();
                for partition in partitions.values() {
                    gauges.active_windows += partition.state().active_windows();
                    gauges.bytes += partition.approximate_bytes();
                    gauges.dedup_ids += partition.dedup_len();
                    if let Some(horizon) = partition.dedup_effective_horizon() {
                        gauges.dedup_horizons.push((
                            partition.partition(),
                            horizon.num_milliseconds() as f64 / 1e3,
                        ));
                    }
                }
                let _ = reply.send(gauges);
            }
        }
    }
}

/// Handles one batch on the counting thread: records admitted by the admitting thread
/// (`admitted`, one per record), or admitted here (`None`). Returns the spent events of
/// admitted records, for their buffers.
fn handle_batch(
    partitions: &mut BTreeMap<i32, PartitionAggregator>,
    spans: &BTreeMap<i32, tracing::Span>,
    counts: &mut Counts,
    batch: &Batch,
    admitted: Option<Vec<Option<Admitted>>>,
) -> Spent {
    let mut spent = Vec::with_capacity(if admitted.is_some() {
        batch.entries.len()
    } else {
        0
    });
    let mut admitted = admitted.map(Vec::into_iter);
    let mut entered: Option<(i32, tracing::span::Entered<'_>)> = None;
    for record in &batch.entries {
        if entered.as_ref().map(|(partition, _)| *partition) != Some(record.partition) {
            // Leave the previous partition's span before entering the next one.
            drop(entered.take());
            entered = spans
                .get(&record.partition)
                .map(|span| (record.partition, span.enter()));
        }
        let key = batch.slice(record.key);
        let payload = batch.slice(record.payload);
        let partition = partitions.get_mut(&record.partition);
        let outcome = match (partition, admitted.as_mut().map(Iterator::next)) {
            (Some(partition), None) => {
                partition.handle(record.offset, record.timestamp_ms, key, payload)
            }
            (Some(partition), Some(Some(Some(admitted)))) => {
                let (outcome, event) = partition.handle_admitted(
                    record.offset,
                    record.timestamp_ms,
                    key,
                    payload,
                    admitted,
                );
                spent.extend(event);
                outcome
            }
            // Not held (assigned and revoked in the same order on both threads).
            _ => Outcome::Stale,
        };
        if let Some(partition) = partitions.get_mut(&record.partition) {
            counts.dedup_evicted_early += partition.take_dedup_evicted_early();
            counts.scopes_overflowed += partition.take_scopes_overflowed();
        }
        if let Outcome::DeadLettered(kind) = &outcome {
            tracing::debug!(
                partition = record.partition,
                offset = record.offset,
                %kind,
                "dead-lettered"
            );
        }
        counts.add(&outcome);
    }
    spent
}
