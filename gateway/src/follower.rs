//! [`Gateway`]: a [`DecisionView`] kept current by a follower of the control topic
//! ([`crate::follow`], applying every record with [`ControlApplier`]), and the [`FailureMode`]
//! that answers while the view cannot be trusted.
//!
//! Guarantees (the follower's own are in [`crate::follow`]: it starts from the compacted state,
//! is ready once caught up, and measures contact without probing):
//! - **Not caught up answers by the failure mode.** Until the follower has read the control
//!   topic up to where it stood at start, [`Gateway::check`] answers by the [`FailureMode`]: an
//!   empty view would wrongly allow everything the alerter has blocked.
//! - **Stale means unreachable.** Once ready, when no broker was heard from for longer than
//!   `max_staleness_ms`, `check` answers by the [`FailureMode`] again, until contact resumes;
//!   the view is kept, and the follower continues where it stopped.
//! - **Undecodable records are skipped** with a warning: they are data errors, retrying cannot help,
//!   and one bad record must not stop every later decision from applying.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use quotaflow_client::config::KafkaConfig;
use rdkafka::message::{BorrowedMessage, Message};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::error::GatewayError;
use crate::follow::{Apply, Following};
use crate::view::{ApplyOutcome, DecisionView, RequestAttributes, Verdict};

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

/// Applies control records to the view the [`Gateway`] answers from (on the follower's thread).
pub struct ControlApplier {
    view: Arc<RwLock<DecisionView>>,
}

impl ControlApplier {
    fn write_view(&self) -> std::sync::RwLockWriteGuard<'_, DecisionView> {
        // A panic elsewhere cannot leave the view half-updated: every update is one `apply`.
        self.view
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Apply for ControlApplier {
    fn apply(&mut self, topic: &str, message: &BorrowedMessage<'_>) {
        let Some(payload) = message.payload() else {
            match message.key().map(std::str::from_utf8) {
                Some(Ok(key)) => {
                    self.write_view().remove(key);
                }
                _ => warn!(
                    %topic,
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
                        %topic,
                        key = %decision.key,
                        %dimension,
                        "decision scoped by an unknown dimension; it cannot match any request"
                    );
                }
            }
            Err(error) => warn!(
                %topic,
                partition = message.partition(),
                offset = message.offset(),
                %error,
                "skipping an undecodable control record"
            ),
        }
    }

    fn entries(&self) -> usize {
        self.view
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

/// The enforcement client a gateway embeds: ask [`Gateway::check`] per request.
pub struct Gateway {
    /// The decisions in force, written by the follower thread.
    view: Arc<RwLock<DecisionView>>,
    /// Answer while the view cannot be trusted (prebuilt so `check` never allocates).
    failure_verdict: Verdict,
    /// Contact older than this makes the view stale.
    max_staleness: Duration,
    /// The control topic's follower; stopped with the gateway.
    following: Following,
}

impl Gateway {
    /// Validates the config, creates the consumer and starts following the control topic on a
    /// thread of its own. Returns at once: until the view is caught up, `check` answers by the
    /// failure mode.
    pub fn start(config: GatewayConfig) -> Result<Gateway, GatewayError> {
        config.validate()?;
        let view = Arc::new(RwLock::new(DecisionView::new()));
        let following = Following::start(
            &config.kafka,
            &config.client_id,
            &config.kafka.topics.control,
            Duration::from_millis(config.probe_interval_ms),
            ControlApplier { view: view.clone() },
            "control-follower",
        )?;
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
            view,
            failure_verdict,
            max_staleness: Duration::from_millis(config.max_staleness_ms),
            following,
        })
    }

    fn read_view(&self) -> std::sync::RwLockReadGuard<'_, DecisionView> {
        self.view
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        self.read_view().check(request, now)
    }

    /// What the decisions of policies in shadow mode would do with a request now: never
    /// enforced; for dry-run headers, logs and metrics (the sidecar counts them).
    pub fn check_shadow(&self, request: &RequestAttributes<'_>) -> Verdict {
        self.read_view().check_shadow(request, Utc::now())
    }

    /// The block or degrade in force for the control-topic `key` now, and whether it is a
    /// shadow one; `None` when the key is allowed (see [`crate::DecisionView::in_force`]).
    pub fn in_force(&self, key: &str) -> Option<crate::view::InForce> {
        self.read_view().in_force(key, Utc::now())
    }

    /// Whether a block or degrade of `policy_id` is held (see
    /// [`crate::DecisionView::has_decisions_of`]).
    pub fn has_decisions_of(&self, policy_id: &str) -> bool {
        self.read_view().has_decisions_of(policy_id)
    }

    /// Whether the view has caught up with the control topic as it was at start.
    pub fn is_ready(&self) -> bool {
        self.following.health().is_ready()
    }

    /// Whether the view is ready and not stale, i.e. `check` answers from decisions, not by the
    /// failure mode.
    pub fn is_trustworthy(&self) -> bool {
        self.is_ready() && self.following.health().contact_age() <= self.max_staleness
    }

    /// Stops the follower and waits for its thread.
    pub fn shutdown(self) {
        self.following.shutdown();
    }
}
