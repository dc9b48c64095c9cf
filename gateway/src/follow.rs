//! Following a compacted topic from its beginning on a thread of its own: the control topic for
//! [`crate::Gateway`], the totals topic for the decision sidecar's remaining-quota answers.
//!
//! Guarantees:
//! - **Starts from the compacted state.** Every partition is assigned at the beginning (no
//!   consumer group, no commits: each reader needs the whole topic), so the latest record per key
//!   is applied before anything newer. Every record is applied at least once; an [`Apply`] must
//!   make re-application harmless (versions per key).
//! - **Ready means caught up.** [`Health::is_ready`] turns true once every partition was read up
//!   to the end offset it had when it was assigned.
//! - **Contact is measured, never probed.** librdkafka's statistics (every `probe_interval`) say
//!   when a broker last answered (a long-poll fetch is answered at least every
//!   `fetch.wait.max.ms` even on a quiet topic), and every record read is contact too:
//!   [`Health::contact_age`]. No request is made from the polling thread to prove contact: one
//!   (an end-offset probe) queued behind the consumer's own long-poll fetch and held records back
//!   for up to `fetch.wait.max.ms`.
//! - **Unavailable topics are retried** every `probe_interval` until they exist.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quotaflow_client::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::error::GatewayError;

/// How long one `poll` waits for a record; bounds how late the follower notices shutdown.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// What a follower does with the records it reads (on the follower's thread).
pub trait Apply: Send + 'static {
    /// Applies one record of `topic` (a tombstone has no payload).
    fn apply(&mut self, topic: &str, message: &BorrowedMessage<'_>);
    /// How many entries the state holds, for the caught-up log line.
    fn entries(&self) -> usize;
}

/// Whether a follower caught up, and when it last heard from a broker.
#[derive(Debug)]
pub struct Health {
    /// Set once the follower caught up with the end offsets present at assignment.
    ready: AtomicBool,
    /// Origin of `last_contact_ms`.
    epoch: Instant,
    /// Milliseconds since `epoch` of the last proof that the brokers are reachable.
    last_contact_ms: AtomicU64,
}

impl Health {
    fn new() -> Health {
        Health {
            ready: AtomicBool::new(false),
            epoch: Instant::now(),
            last_contact_ms: AtomicU64::new(0),
        }
    }

    /// Whether the follower has read the topic up to where it stood at assignment.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// How long ago a broker was last heard from (since the start when never).
    pub fn contact_age(&self) -> Duration {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now_ms.saturating_sub(self.last_contact_ms.load(Ordering::Acquire)))
    }

    fn touch(&self) {
        self.touched_ago(Duration::ZERO);
    }

    /// Records contact made `ago` (never moving the last contact back in time).
    fn touched_ago(&self, ago: Duration) {
        let at = self.epoch.elapsed().saturating_sub(ago).as_millis() as u64;
        self.last_contact_ms.fetch_max(at, Ordering::AcqRel);
    }
}

/// The follower consumer's context: turns librdkafka's statistics into proof of contact.
struct FollowerContext {
    health: Arc<Health>,
}

impl ClientContext for FollowerContext {
    fn stats(&self, statistics: Statistics) {
        // `rxidle`: microseconds since anything was received from that broker (-1: never). Only
        // brokers known from metadata count (the bootstrap entries have no node id).
        let freshest = statistics
            .brokers
            .values()
            .filter(|broker| broker.nodeid >= 0 && broker.state == "UP" && broker.rxidle >= 0)
            .map(|broker| broker.rxidle)
            .min();
        if let Some(idle_micros) = freshest {
            self.health
                .touched_ago(Duration::from_micros(idle_micros as u64));
        }
    }
}

impl ConsumerContext for FollowerContext {}

/// A running follower: its health, stopped (and its thread joined) on [`Following::shutdown`]
/// or drop.
#[derive(Debug)]
pub struct Following {
    health: Arc<Health>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Following {
    /// Starts following `topic` into `applier` on a thread named `thread_name`, with a consumer
    /// named `client_id` (no group is joined: the id only names the client in broker logs).
    /// Returns at once; [`Following::health`] says when it caught up.
    pub fn start<A: Apply>(
        kafka: &KafkaConfig,
        client_id: &str,
        topic: &str,
        probe_interval: Duration,
        applier: A,
        thread_name: &str,
    ) -> Result<Following, GatewayError> {
        let health = Arc::new(Health::new());
        let consumer: BaseConsumer<FollowerContext> =
            quotaflow_client::kafka::consumer_config(kafka, client_id, client_id)
                .set(
                    "statistics.interval.ms",
                    probe_interval.as_millis().to_string(),
                )
                .create_with_context(FollowerContext {
                    health: health.clone(),
                })?;
        let stop = Arc::new(AtomicBool::new(false));
        let follower = TopicFollower {
            consumer,
            topic: topic.to_owned(),
            health: health.clone(),
            applier,
            probe_interval,
            stop: stop.clone(),
            catch_up_targets: None,
            next_offsets: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(move || follower.run())?;
        Ok(Following {
            health,
            stop,
            thread: Some(thread),
        })
    }

    /// Whether it caught up, and when it last heard from a broker.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Stops the follower and waits for its thread.
    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                warn!("follower thread panicked");
            }
        }
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Reads one topic into an [`Apply`] (see the module docs).
struct TopicFollower<A> {
    /// Assigned (never subscribed) consumer: no group, no commits.
    consumer: BaseConsumer<FollowerContext>,
    topic: String,
    health: Arc<Health>,
    applier: A,
    /// Probe period and metadata timeout.
    probe_interval: Duration,
    stop: Arc<AtomicBool>,
    /// End offset per partition at assignment; `None` until the partitions are assigned.
    catch_up_targets: Option<HashMap<i32, i64>>,
    /// Next offset to read per partition, from the records applied.
    next_offsets: HashMap<i32, i64>,
}

impl<A: Apply> TopicFollower<A> {
    fn run(mut self) {
        while !self.stop.load(Ordering::Acquire) {
            if self.catch_up_targets.is_none() {
                if let Err(error) = self.assign_from_beginning() {
                    warn!(topic = %self.topic, %error, "topic unavailable; retrying");
                    self.wait(self.probe_interval);
                    continue;
                }
            }
            match self.consumer.poll(POLL_TIMEOUT) {
                Some(Ok(message)) => {
                    self.applier.apply(&self.topic, &message);
                    let (partition, next_offset) = (message.partition(), message.offset() + 1);
                    drop(message);
                    self.next_offsets.insert(partition, next_offset);
                    self.health.touch();
                }
                Some(Err(error)) => debug!(topic = %self.topic, %error, "follower consumer error"),
                None => {}
            }
            if !self.health.ready.load(Ordering::Relaxed) && self.caught_up() {
                info!(topic = %self.topic, entries = self.applier.entries(), "caught up");
                self.health.ready.store(true, Ordering::Release);
            }
        }
    }

    /// Reads the partitions and their end offsets, then assigns them all at the beginning.
    fn assign_from_beginning(&mut self) -> Result<(), GatewayError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), self.probe_interval)?;
        let topic = metadata
            .topics()
            .iter()
            .find(|topic| topic.name() == self.topic)
            .ok_or_else(|| GatewayError::TopicUnavailable("not in metadata".into()))?;
        if let Some(error) = topic.error() {
            return Err(GatewayError::TopicUnavailable(format!("{error:?}")));
        }
        if topic.partitions().is_empty() {
            return Err(GatewayError::TopicUnavailable("no partitions".into()));
        }
        let mut targets = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for partition in topic.partitions() {
            let (low, high) =
                self.consumer
                    .fetch_watermarks(&self.topic, partition.id(), self.probe_interval)?;
            // An empty partition (high <= low) is caught up from the start.
            targets.insert(partition.id(), if high > low { high } else { 0 });
            assignment.add_partition_offset(&self.topic, partition.id(), Offset::Beginning)?;
        }
        self.consumer.assign(&assignment)?;
        info!(topic = %self.topic, partitions = targets.len(), "following topic");
        self.catch_up_targets = Some(targets);
        self.health.touch();
        Ok(())
    }

    /// Whether every partition was read up to its end offset at assignment.
    fn caught_up(&self) -> bool {
        let Some(targets) = &self.catch_up_targets else {
            return false;
        };
        // The position also moves past records the application never sees (transaction markers).
        let positions = self.consumer.position().ok();
        targets.iter().all(|(&partition, &target)| {
            let consumed = self.next_offsets.get(&partition).copied().unwrap_or(0);
            let position = positions
                .as_ref()
                .and_then(|list| list.find_partition(&self.topic, partition))
                .and_then(|element| element.offset().to_raw())
                .unwrap_or(0);
            consumed.max(position) >= target
        })
    }

    /// Waits up to `duration`, returning early on shutdown.
    fn wait(&self, duration: Duration) {
        let until = Instant::now() + duration;
        while !self.stop.load(Ordering::Acquire) && Instant::now() < until {
            std::thread::sleep(POLL_TIMEOUT.min(until.saturating_duration_since(Instant::now())));
        }
    }
}
