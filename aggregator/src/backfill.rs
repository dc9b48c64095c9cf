//! Seeding a new policy definition's totals with the events before it counted live.
//!
//! When a reload brings a new definition (`policy:<id>@<definition>`: a new policy, or a changed
//! selector, `group_by`, unit or window), each partition counts it live from the offset the
//! reload reached there ([`crate::partition::SeedPoint`]) and holds its totals back. A
//! [`Backfiller`] thread then re-reads the partition **from the usage topic** over the windows
//! still open at that point and up to the offset before it, through a fresh
//! [`PartitionAggregator`]: the same admission, duplicate filter, lateness and measures as live
//! counting. The definition's totals of the open windows are the seed; the partition adds them to
//! its live totals and only then writes and publishes them. So a policy added at 15:00 to a day
//! window totals the spend since 00:00 from its first published total on.
//!
//! # Why the topic and not `usage_events_raw`
//! The archive holds every copy of an event (duplicates are only dropped by the aggregator), is
//! written by another consumer (so whether it holds a partition's records up to an offset depends
//! on the archiver's progress), and rebuilding an event from its columns would be a second
//! decoder to keep in step with the Avro schema. The topic holds exactly the records the live
//! count saw, in the same order, and [`PartitionAggregator`] counts them the same way. It must
//! retain the longest policy window plus the lead below (the usage topic's retention, see
//! `docs/aggregator.md`); a window older than the retention is seeded with what is left, logged.
//!
//! # Determinism
//! The seed is a function of the partition's records before `live_from` and of the watermark
//! and close horizon there (themselves functions of those records), so a replay after a crash
//! computes the same seed. Reading starts at the first record written at or after the earliest
//! open window's start less `validation.max_future_skew` (no admitted event of the window was
//! written earlier) and less the duplicate horizon (so the filter has seen the copies it would
//! have remembered live): the broker's append time (`LogAppendTime`) is monotonic per partition,
//! so the start offset is a function of the instant.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use infra::config::KafkaConfig;
use policy::PolicySet;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::partition::{BackfillRequest, PartitionAggregator, PartitionSettings, Seed};
use crate::pipeline::metric;
use crate::state::TotalUpdate;

/// How long one Kafka request of a backfill may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a backfill attempt failed; every cause is retried (the topic and broker may come back).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackfillError {
    /// Kafka: creating the reader, finding the start offset, or reading.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The partition ended before `live_from` (it was read live, so the broker lost records).
    #[error("partition {partition} ended at offset {reached}, before {live_from}")]
    Truncated {
        /// The partition.
        partition: i32,
        /// The next offset reached.
        reached: i64,
        /// The offset the seed must reach.
        live_from: i64,
    },
    /// The fresh aggregator could not be built or a total overflowed.
    #[error("totals: {0}")]
    State(#[from] crate::state::StateError),
    /// Stopping.
    #[error("shutting down")]
    Stopped,
}

/// Runs backfills on threads of their own (one per request; a reload brings at most one
/// request per owned partition) and sends their seeds to the loop.
#[derive(Clone)]
pub struct Backfiller {
    kafka: KafkaConfig,
    topic: String,
    group_id: String,
    settings: PartitionSettings,
    /// How far before a window's start reading begins: `validation.max_future_skew` plus the
    /// duplicate horizon (see the module docs).
    lead: TimeDelta,
    seeds: mpsc::Sender<Seed>,
    stopped: Arc<AtomicBool>,
}

impl Backfiller {
    /// A backfiller reading `topic` and sending seeds on `seeds`.
    pub fn new(
        kafka: KafkaConfig,
        topic: &str,
        group_id: &str,
        settings: PartitionSettings,
        max_future_skew: Duration,
        seeds: mpsc::Sender<Seed>,
    ) -> Backfiller {
        let lead = TimeDelta::from_std(max_future_skew + settings.dedup_horizon)
            .unwrap_or(TimeDelta::days(1));
        Backfiller {
            kafka,
            topic: topic.to_owned(),
            group_id: format!("{group_id}-backfill"),
            settings,
            lead,
            seeds,
            stopped: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Stops the running backfills (at their next record or retry).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Starts the backfill of `request` with the policies that define its kinds; retried with
    /// backoff until it succeeds or the service stops.
    pub fn spawn(&self, request: BackfillRequest, policies: Arc<PolicySet>) {
        let backfiller = self.clone();
        metrics::gauge!(metric::POLICY_BACKFILLS_RUNNING).increment(1.0);
        let spawned = std::thread::Builder::new()
            .name(format!("aggregator-backfill-{}", request.partition))
            .spawn(move || {
                let mut retry = infra::retry::Backoff::new(
                    Duration::from_millis(200),
                    Duration::from_secs(10),
                )
                .attempts();
                while !backfiller.stopped.load(Ordering::Acquire) {
                    match backfiller.seed(&request, &policies) {
                        Ok(seed) => {
                            metrics::counter!(metric::POLICY_BACKFILLS, "outcome" => "completed")
                                .increment(1);
                            let _ = backfiller.seeds.blocking_send(seed);
                            break;
                        }
                        Err(BackfillError::Stopped) => break,
                        Err(error) => {
                            metrics::counter!(metric::POLICY_BACKFILLS, "outcome" => "failed")
                                .increment(1);
                            warn!(partition = request.partition, %error, "policy backfill failed; retrying");
                            std::thread::sleep(retry.next_delay());
                        }
                    }
                }
                metrics::gauge!(metric::POLICY_BACKFILLS_RUNNING).decrement(1.0);
            });
        if let Err(error) = spawned {
            warn!(%error, "cannot start a policy backfill thread");
            metrics::gauge!(metric::POLICY_BACKFILLS_RUNNING).decrement(1.0);
        }
    }

    /// One attempt: re-reads the partition and computes the seed of every requested kind.
    pub fn seed(
        &self,
        request: &BackfillRequest,
        policies: &PolicySet,
    ) -> Result<Seed, BackfillError> {
        let point = request.point;
        let mut seed = Seed {
            partition: request.partition,
            live_from: point.live_from,
            totals: request
                .kinds
                .iter()
                .map(|kind| (kind.clone(), Vec::new()))
                .collect(),
        };
        let Some(from_time) = earliest_open_start(request, policies) else {
            return Ok(seed);
        };
        let start = self.start_offset(request.partition, from_time - self.lead)?;
        if start >= point.live_from {
            return Ok(seed);
        }
        let mut builder = SeedBuilder::new(&self.topic, policies, self.settings.clone(), request)?;
        let consumer: BaseConsumer = infra::kafka::consumer_config(
            &self.kafka,
            "quotaflow-aggregator-backfill",
            &self.group_id,
        )
        .create()?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&self.topic, request.partition, Offset::Offset(start))?;
        consumer.assign(&assignment)?;
        let mut next = start;
        let mut read = 0u64;
        while next < point.live_from {
            if self.stopped.load(Ordering::Acquire) {
                return Err(BackfillError::Stopped);
            }
            let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                let (_, high) =
                    consumer.fetch_watermarks(&self.topic, request.partition, KAFKA_TIMEOUT)?;
                if high <= next {
                    return Err(BackfillError::Truncated {
                        partition: request.partition,
                        reached: next,
                        live_from: point.live_from,
                    });
                }
                continue;
            };
            let message = message?;
            if message.offset() >= point.live_from {
                break;
            }
            builder.handle(
                message.offset(),
                message.timestamp().to_millis(),
                message.key(),
                message.payload(),
            );
            next = message.offset() + 1;
            read += 1;
        }
        seed = builder.finish();
        metrics::counter!(metric::POLICY_BACKFILL_RECORDS).increment(read);
        info!(
            partition = request.partition,
            from_offset = start,
            live_from = point.live_from,
            records = read,
            kinds = ?request.kinds,
            "policy backfill done"
        );
        Ok(seed)
    }

    /// The first offset of the partition written at or after `at` (its end if none).
    fn start_offset(&self, partition: i32, at: DateTime<Utc>) -> Result<i64, BackfillError> {
        let consumer: BaseConsumer =
            infra::kafka::client_config(&self.kafka, "quotaflow-aggregator-backfill").create()?;
        let mut query = TopicPartitionList::new();
        query.add_partition_offset(
            &self.topic,
            partition,
            Offset::Offset(at.timestamp_millis()),
        )?;
        let found = consumer.offsets_for_times(query, KAFKA_TIMEOUT)?;
        let offset = found
            .find_partition(&self.topic, partition)
            .map(|element| element.offset());
        let (low, high) = consumer.fetch_watermarks(&self.topic, partition, KAFKA_TIMEOUT)?;
        let start = match offset {
            Some(Offset::Offset(offset)) => offset,
            _ => high,
        };
        if start == low && low > 0 {
            warn!(
                partition,
                from = %at,
                earliest_offset = low,
                "the usage topic no longer holds the start of a policy window: the seed counts \
                 what it retains"
            );
        }
        Ok(start)
    }
}

/// Counts a partition's records before a request's live start the way the live partition does
/// (a fresh [`PartitionAggregator`]: admission, duplicates, lateness), and keeps the requested
/// definitions' totals of the windows still open at the live start. Pure: the caller reads the
/// records.
pub struct SeedBuilder {
    fresh: PartitionAggregator,
    request: BackfillRequest,
    /// The requested kinds' newest totals drained so far, by (kind, key, window id).
    kept: BTreeMap<(Arc<str>, Arc<str>, String), TotalUpdate>,
    /// Records since the last drain.
    since_drain: usize,
}

/// Records between two drains of a [`SeedBuilder`]'s fresh state: closed windows (a month
/// window's re-read closes some forty thousand minutes per scope) are evicted at each drain, so
/// its memory stays that of a live partition's.
const DRAIN_EVERY: usize = 50_000;

impl SeedBuilder {
    /// A builder for `request`, whose kinds `policies` define.
    pub fn new(
        topic: &str,
        policies: &PolicySet,
        settings: PartitionSettings,
        request: &BackfillRequest,
    ) -> Result<SeedBuilder, crate::state::StateError> {
        let (fresh, _) =
            PartitionAggregator::restore(topic, request.partition, policies, settings, None, [])?;
        Ok(SeedBuilder {
            fresh,
            request: request.clone(),
            kept: BTreeMap::new(),
            since_drain: 0,
        })
    }

    /// Counts the record at `offset` (below the live start, in offset order).
    pub fn handle(
        &mut self,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) {
        debug_assert!(offset < self.request.point.live_from);
        self.fresh.handle(offset, timestamp_ms, key, payload);
        self.since_drain += 1;
        if self.since_drain >= DRAIN_EVERY {
            self.drain();
        }
    }

    /// Keeps the requested kinds' changed totals (taking the flush also frees the fresh state's
    /// closed windows).
    fn drain(&mut self) {
        self.since_drain = 0;
        for update in self.fresh.take_flush().updates {
            if !self
                .request
                .kinds
                .iter()
                .any(|kind| **kind == *update.scope_kind)
            {
                continue;
            }
            let key = (
                Arc::clone(&update.scope_kind),
                Arc::clone(&update.scope_key),
                update.window.id(),
            );
            self.kept.insert(key, update);
        }
    }

    /// The seed: the requested definitions' totals of the windows open at the live start.
    pub fn finish(mut self) -> Seed {
        self.drain();
        let mut totals: BTreeMap<String, Vec<TotalUpdate>> = self
            .request
            .kinds
            .iter()
            .map(|kind| (kind.clone(), Vec::new()))
            .collect();
        let closed_through = self.request.point.closed_through;
        for update in self.kept.into_values() {
            let open = closed_through.is_none_or(|closed| update.window.end() > closed);
            if let (true, Some(kind)) = (open, totals.get_mut(&*update.scope_kind)) {
                kind.push(update);
            }
        }
        Seed {
            partition: self.request.partition,
            live_from: self.request.point.live_from,
            totals,
        }
    }
}

/// The earliest start among the windows of the requested kinds still open at the request's
/// point; `None` when no kind has an open window there (a campaign not begun or over).
fn earliest_open_start(request: &BackfillRequest, policies: &PolicySet) -> Option<DateTime<Utc>> {
    let plan = crate::scopes::ScopePlan::new(policies).ok()?;
    let probes: Vec<DateTime<Utc>> = [request.point.closed_through, request.point.watermark]
        .into_iter()
        .flatten()
        .collect();
    let mut earliest: Option<DateTime<Utc>> = None;
    for kind in &request.kinds {
        let Some((_, specs)) = plan.kind_by_name(kind) else {
            continue;
        };
        let spec = &plan.specs()[specs.start];
        let start = probes
            .iter()
            .find_map(|probe| spec.window_of(*probe))
            .map(|window| window.start());
        if let Some(start) = start {
            earliest = Some(earliest.map_or(start, |seen| seen.min(start)));
        }
    }
    earliest
}
