//! [`Gateway`]: a [`DecisionView`] kept current by a [`ControlFollower`] thread, and the
//! [`FailureMode`] that answers while the view cannot be trusted.
//!
//! Guarantees:
//! - **Starts from the compacted state.** The follower assigns every partition of the control topic
//!   at the beginning (no consumer group, no commits: each gateway needs the whole topic), so the
//!   latest decision per key is applied before anything newer. Every record is applied at least
//!   once; the view's per-key versions make re-application harmless.
//! - **Ready means caught up.** The view becomes *ready* once the follower has read every partition
//!   up to the end offset it had when it was assigned. Until then [`Gateway::check`] answers by the
//!   [`FailureMode`]: an empty view would wrongly allow everything the alerter has blocked.
//! - **Stale means unreachable.** Once ready, the follower learns every `probe_interval_ms` when it
//!   last heard from a broker (librdkafka's statistics: a long-poll fetch is answered at least every
//!   `fetch.wait.max.ms` even on a quiet topic), and every record read is contact too. When no
//!   contact was made for longer than `max_staleness_ms`, `check` answers by the [`FailureMode`]
//!   again, until contact resumes; the view is kept, and the follower continues where it stopped.
//!   No request is ever made from the polling thread to prove contact: one (an end-offset probe)
//!   queued behind the consumer's own long-poll fetch and held decisions back for up to
//!   `fetch.wait.max.ms`.
//! - **Undecodable records are skipped** with a warning: they are data errors, retrying cannot help,
//!   and one bad record must not stop every later decision from applying.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use quotaflow_client::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::error::GatewayError;
use crate::view::{ApplyOutcome, DecisionView, RequestAttributes, Verdict};

/// How long one `poll` waits for a record; bounds how late the follower notices shutdown.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// What [`Gateway::check`] answers while the view cannot be trusted (not caught up, or stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Allow every request: quota overruns are cheaper than an outage.
    #[default]
    Open,
    /// Block every request with a reason saying quotas cannot be confirmed.
    Closed,
}

/// Gateway client settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Brokers, security (TLS, SASL: `[kafka.security]`) and extra properties; `topics.control` is
    /// the topic followed.
    pub kafka: KafkaConfig,
    /// `client.id` in broker logs; name the gateway instance.
    pub client_id: String,
    /// What to answer while the view is not caught up or the topic is unreachable.
    pub failure_mode: FailureMode,
    /// How long without contact with the brokers before the view counts as stale. At least twice
    /// `probe_interval_ms`, so one slow probe does not flip a healthy gateway.
    pub max_staleness_ms: u64,
    /// How often the follower checks its contact with the brokers (librdkafka's statistics, no
    /// request) when no record arrives; also the timeout of each metadata request.
    pub probe_interval_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            client_id: "quotaflow-gateway".to_string(),
            failure_mode: FailureMode::Open,
            // Decisions change on the scale of seconds to minutes; half a minute of silence is
            // an outage, not a hiccup.
            max_staleness_ms: 30_000,
            probe_interval_ms: 1_000,
        }
    }
}

impl GatewayConfig {
    /// Checks the settings that would make the gateway misbehave silently.
    pub fn validate(&self) -> Result<(), GatewayError> {
        if self.kafka.topics.control.is_empty() {
            return Err(GatewayError::Config("kafka.topics.control is empty".into()));
        }
        if self.client_id.is_empty() {
            return Err(GatewayError::Config("client_id is empty".into()));
        }
        if self.probe_interval_ms == 0 {
            return Err(GatewayError::Config("probe_interval_ms must be > 0".into()));
        }
        // Contact is learnt from fetch responses, which a quiet topic gets once per long poll.
        let long_poll_ms = self
            .kafka
            .properties
            .get("fetch.wait.max.ms")
            .map_or(Ok(500), |value| value.parse::<u64>())
            .map_err(|_| {
                GatewayError::Config("kafka.properties.fetch.wait.max.ms is not a number".into())
            })?;
        if self.max_staleness_ms <= long_poll_ms + self.probe_interval_ms {
            return Err(GatewayError::Config(format!(
                "max_staleness_ms ({}) must exceed fetch.wait.max.ms ({long_poll_ms}) plus \
                 probe_interval_ms ({}): a quiet control topic answers a fetch only that often",
                self.max_staleness_ms, self.probe_interval_ms
            )));
        }
        if self.max_staleness_ms < 2 * self.probe_interval_ms {
            return Err(GatewayError::Config(format!(
                "max_staleness_ms ({}) must be at least twice probe_interval_ms ({})",
                self.max_staleness_ms, self.probe_interval_ms
            )));
        }
        Ok(())
    }
}

/// State shared by the follower (one writer) and request threads (many readers).
#[derive(Debug)]
struct Shared {
    /// The decisions in force.
    view: RwLock<DecisionView>,
    /// Set once the follower caught up with the end offsets present at assignment.
    ready: AtomicBool,
    /// Origin of `last_contact_ms`.
    epoch: Instant,
    /// Milliseconds since `epoch` of the last proof that the brokers are reachable.
    last_contact_ms: AtomicU64,
}

impl Shared {
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
    shared: Arc<Shared>,
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
            self.shared
                .touched_ago(Duration::from_micros(idle_micros as u64));
        }
    }
}

impl ConsumerContext for FollowerContext {}

/// Follows the control topic into the shared view; runs on its own thread, started by
/// [`Gateway::start`].
pub struct ControlFollower {
    /// Assigned (never subscribed) consumer: no group, no commits.
    consumer: BaseConsumer<FollowerContext>,
    /// The control topic.
    topic: String,
    /// View and health flags shared with the [`Gateway`].
    shared: Arc<Shared>,
    /// Probe period and metadata timeout.
    probe_interval: Duration,
    /// Set by [`Gateway::shutdown`].
    stop: Arc<AtomicBool>,
    /// End offset per partition at assignment; `None` until the partitions are assigned.
    catch_up_targets: Option<HashMap<i32, i64>>,
    /// Next offset to read per partition, from the records applied.
    next_offsets: HashMap<i32, i64>,
}

impl ControlFollower {
    fn run(mut self) {
        while !self.stop.load(Ordering::Acquire) {
            if self.catch_up_targets.is_none() {
                if let Err(error) = self.assign_from_beginning() {
                    warn!(topic = %self.topic, %error, "control topic unavailable; retrying");
                    self.wait(self.probe_interval);
                    continue;
                }
            }
            match self.consumer.poll(POLL_TIMEOUT) {
                Some(Ok(message)) => {
                    self.apply(&message);
                    let (partition, next_offset) = (message.partition(), message.offset() + 1);
                    drop(message);
                    self.next_offsets.insert(partition, next_offset);
                }
                Some(Err(error)) => debug!(topic = %self.topic, %error, "control consumer error"),
                None => {}
            }
            if !self.shared.ready.load(Ordering::Relaxed) && self.caught_up() {
                info!(topic = %self.topic, decisions = self.read_len(), "control view caught up");
                self.shared.ready.store(true, Ordering::Release);
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
        info!(topic = %self.topic, partitions = targets.len(), "following control topic");
        self.catch_up_targets = Some(targets);
        self.shared.touch();
        Ok(())
    }

    fn apply(&self, message: &BorrowedMessage<'_>) {
        self.shared.touch();
        let Some(payload) = message.payload() else {
            match message.key().map(std::str::from_utf8) {
                Some(Ok(key)) => {
                    self.write_view().remove(key);
                }
                _ => warn!(
                    topic = %self.topic,
                    partition = message.partition(),
                    offset = message.offset(),
                    "skipping a tombstone without a UTF-8 key"
                ),
            }
            return;
        };
        match schemas::decode::<schemas::ControlDecision>(payload) {
            Ok(decision) => {
                let outcome = self.write_view().apply(&decision);
                if let ApplyOutcome::UnknownDimension(dimension) = outcome {
                    warn!(
                        topic = %self.topic,
                        key = %decision.key,
                        %dimension,
                        "decision scoped by an unknown dimension; it cannot match any request"
                    );
                }
            }
            Err(error) => warn!(
                topic = %self.topic,
                partition = message.partition(),
                offset = message.offset(),
                %error,
                "skipping an undecodable control record"
            ),
        }
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

    fn write_view(&self) -> std::sync::RwLockWriteGuard<'_, DecisionView> {
        // A panic elsewhere cannot leave the view half-updated: every update is one `apply`.
        self.shared
            .view
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_len(&self) -> usize {
        self.shared
            .view
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

/// The enforcement client a gateway embeds: ask [`Gateway::check`] per request.
pub struct Gateway {
    /// View and health flags, written by the follower thread.
    shared: Arc<Shared>,
    /// Answer while the view cannot be trusted (prebuilt so `check` never allocates).
    failure_verdict: Verdict,
    /// Contact older than this makes the view stale.
    max_staleness_ms: u64,
    /// Tells the follower to stop.
    stop: Arc<AtomicBool>,
    /// The follower thread, joined on shutdown.
    follower: Option<JoinHandle<()>>,
}

impl Gateway {
    /// Validates the config, creates the consumer and starts following the control topic on a
    /// thread of its own. Returns at once: until the view is caught up, `check` answers by the
    /// failure mode.
    pub fn start(config: GatewayConfig) -> Result<Gateway, GatewayError> {
        config.validate()?;
        // No group is joined (partitions are assigned), so the group id only names the client.
        let shared = Arc::new(Shared {
            view: RwLock::new(DecisionView::new()),
            ready: AtomicBool::new(false),
            epoch: Instant::now(),
            last_contact_ms: AtomicU64::new(0),
        });
        let consumer: BaseConsumer<FollowerContext> = quotaflow_client::kafka::consumer_config(
            &config.kafka,
            &config.client_id,
            &config.client_id,
        )
        .set(
            "statistics.interval.ms",
            config.probe_interval_ms.to_string(),
        )
        .create_with_context(FollowerContext {
            shared: shared.clone(),
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let follower = ControlFollower {
            consumer,
            topic: config.kafka.topics.control.clone(),
            shared: shared.clone(),
            probe_interval: Duration::from_millis(config.probe_interval_ms),
            stop: stop.clone(),
            catch_up_targets: None,
            next_offsets: HashMap::new(),
        };
        let follower = std::thread::Builder::new()
            .name("control-follower".into())
            .spawn(move || follower.run())?;
        let failure_verdict = match config.failure_mode {
            FailureMode::Open => Verdict::Allow,
            FailureMode::Closed => Verdict::Block {
                reason: Arc::from(
                    "quota control is unavailable, so quotas cannot be confirmed; \
                     requests are refused until it is back (fail closed)",
                ),
                policy_id: Arc::from("gateway.fail_closed"),
                key: Arc::from(""),
                until: None,
            },
        };
        Ok(Gateway {
            shared,
            failure_verdict,
            max_staleness_ms: config.max_staleness_ms,
            stop,
            follower: Some(follower),
        })
    }

    /// What to do with a request now.
    pub fn check(&self, request: &RequestAttributes<'_>) -> Verdict {
        self.check_at(request, Utc::now())
    }

    /// What to do with a request at `now` (decision expiry is judged against it).
    pub fn check_at(&self, request: &RequestAttributes<'_>, now: DateTime<Utc>) -> Verdict {
        if !self.is_trustworthy() {
            return self.failure_verdict.clone();
        }
        self.shared
            .view
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .check(request, now)
    }

    /// What the decisions of policies in shadow mode would do with a request now: never
    /// enforced; for dry-run headers, logs and metrics (the sidecar counts them).
    pub fn check_shadow(&self, request: &RequestAttributes<'_>) -> Verdict {
        self.shared
            .view
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .check_shadow(request, Utc::now())
    }

    /// Whether the view has caught up with the control topic as it was at start.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    /// Whether the view is ready and not stale, i.e. `check` answers from decisions, not by the
    /// failure mode.
    pub fn is_trustworthy(&self) -> bool {
        if !self.is_ready() {
            return false;
        }
        let now_ms = self.shared.epoch.elapsed().as_millis() as u64;
        let last_contact_ms = self.shared.last_contact_ms.load(Ordering::Acquire);
        now_ms.saturating_sub(last_contact_ms) <= self.max_staleness_ms
    }

    /// Stops the follower and waits for its thread.
    pub fn shutdown(mut self) {
        self.stop_follower();
    }

    fn stop_follower(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(follower) = self.follower.take() {
            if follower.join().is_err() {
                warn!("control follower thread panicked");
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop_follower();
    }
}
