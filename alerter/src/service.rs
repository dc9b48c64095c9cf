//! The alerter service: restores its state from Kafka, follows the totals and approvals topics,
//! runs the [`Engine`] and carries out its effects.
//!
//! # Startup
//! 1. Migrations and topics; the policies load (a directory that does not load stops startup).
//! 2. **Restore**: the control, alerts, approvals and totals topics are read from their start,
//!    and (only when a policy needs events: retry rules, job gauges) the usage topic from
//!    `lookback` ago (the per-action horizon, or the job lookback when a
//!    `concurrent_jobs` policy exists), to the end offsets taken at that moment. Decisions and
//!    raised alerts are restored into the engine, totals and job events are applied *without*
//!    evaluation (a half-read total would look lower than it is), then approvals are checked and
//!    applied (so the first evaluation sees the raises in force), everything is evaluated once,
//!    time ticked and the per-action findings of the replay kept if they were not raised before.
//!    Each record is folded into the state as it is read, never buffered, and totals of windows
//!    that ended over an hour ago are not held, while the aggregator's tombstones (null records)
//!    remove closed windows' keys: the restore's time and memory follow the live state, not the
//!    history (issue 13 point 6; `quotaflow_alerter_restore_records`, `quotaflow_alerter_totals_held`).
//! 3. `/readyz` turns 200 and the totals, approvals and usage topics are followed from the offsets
//!    the restore stopped at, so nothing is read twice or skipped. No consumer group offsets are
//!    committed: the state is rebuilt from the topics at every start.
//!
//! # Delivery guarantees
//! - **Decisions**: published (transactional producer, `acks=all`, committed) before anything else is done
//!   with the evaluation that produced them. The engine numbers them from the control topic's state,
//!   so after a crash on either side of a publish there is exactly one effective decision per key
//!   (module docs of [`crate::engine`]). One alerter instance runs per pipeline, and it is the
//!   control topic's only writer by construction: decisions are committed in transactions of a
//!   writer that fences every older instance ([`crate::control_writer`]).
//! - **Alerts**: notified first (Slack, PagerDuty), then recorded on the alerts topic, which is what
//!   the restore reads. A crash between the two repeats the notification after restart: PagerDuty
//!   folds it into the open incident (same `dedup_key`); Slack may show it twice. Never lost.
//!   Notifications run on their own task behind a bounded queue that the decision loop never
//!   waits on (see *Effects* below), so a slow webhook never delays a decision. A delivery that fails in a way that may pass later (TLS, unreachable, 5xx, 429) is
//!   kept and sent again ([`crate::notify::pending`]); only those still pending at shutdown are
//!   lost, and logged.
//! - **Audit**: every decision, alert and approval outcome is written to ClickHouse (`decisions`,
//!   `alerts`, `approvals`) by a batching task that retries until it succeeds; the ids are
//!   deterministic, so a repeat after a crash is the same row (ReplacingMergeTree). At every start
//!   the decisions and alerts the restore read from the topics are audited again, so a row lost
//!   to a `kill -9` or to a shutdown whose drain ran out is written then. On shutdown the running
//!   loop is not dropped: it stops at its next turn and drains (bounded, 25 s in all).
//! - **Effects never hold up decisions**: audit rows and notifications are handed to their tasks
//!   through bounded queues (`alert.effect_queue_capacity`) without waiting for room; what does not
//!   fit waits, in order, in an in-memory overflow buffer of at most `alert.effect_overflow_limit`
//!   items per queue that is moved into the queue at every evaluation and tick ([`Outbox`]). With
//!   ClickHouse down or a webhook slow, totals are still read and decisions still published; the
//!   backlog is delivered when they recover. Beyond the limit the newest effect is dropped,
//!   logged and counted. At shutdown the overflow and the queues get the bounded drain wait
//!   (10 s for notifications, then 10 s for audit rows); what is left after it is lost.
//!
//! # Failpoint
//! `ALERTER_FAILPOINT=before_publish:<n>` or `after_publish:<n>` aborts the process (as `kill -9`
//! would) just before or just after publishing its n-th decision; the crash tests use it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use infra::config::KafkaConfig;
use infra::shutdown::Shutdown;
use infra::telemetry::Readiness;
use policy::PolicySet;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use schemas::{Alert, Approval, ControlDecision, WindowTotal};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::actions::ActionWatch;
use crate::approvals::ReceivedApproval;
use crate::control_writer::ControlWriter;
use crate::engine::{Effect, Engine};
use crate::notify::grouping::Grouped;
use crate::notify::{Dispatcher, Grouper, Notice, NotifyConfig};
use crate::{Config, Error, Result};

mod audit;
use audit::*;

mod lanes;
use lanes::*;

mod restore;
use restore::*;

mod effects;
use effects::*;

/// Metric names.
pub mod metric {
    /// Decisions published, by `action`.
    pub const DECISIONS: &str = "quotaflow_alerter_decisions_total";
    /// Decisions of policies in shadow mode (published, never enforced), by `policy_id` and
    /// `action` (`would_block`, `would_degrade`); also counted in [`DECISIONS`].
    pub const SHADOW_DECISIONS: &str = "quotaflow_alerter_shadow_decisions_total";
    /// Control keys forgotten: tombstones published for allows issued more than
    /// `2 × alert.ended_window_keep_secs` ago (issue 13 point 7).
    pub const DECISIONS_FORGOTTEN: &str = "quotaflow_alerter_decisions_forgotten_total";
    /// Alerts raised, by `kind`.
    pub const ALERTS: &str = "quotaflow_alerter_alerts_total";
    /// Notifications, by `service` and `outcome`.
    pub const NOTIFICATIONS: &str = "quotaflow_alerter_notifications_total";
    /// Failed notification attempts (each retry counts), by `service` and `reason` (`tls`,
    /// `transport`, `unavailable`, `rate_limited`, `rejected`, ...; see
    /// [`crate::notify::NotifyError::reason`]).
    pub const NOTIFY_FAILURES: &str = "quotaflow_alerter_notify_failures_total";
    /// Records read, by `topic` kind and `outcome`.
    pub const RECORDS: &str = "quotaflow_alerter_records_total";
    /// Policy reloads, by `outcome`.
    pub const RELOADS: &str = "quotaflow_alerter_policy_reloads_total";
    /// Approvals, by `status`.
    pub const APPROVALS: &str = "quotaflow_alerter_approvals_total";
    /// Seconds from a total's write by the aggregator to the decision it caused being published.
    pub const DECISION_LAG: &str = "quotaflow_alerter_decision_lag_seconds";
    /// Audit rows written, by `table`.
    pub const AUDIT_ROWS: &str = "quotaflow_alerter_audit_rows_total";
    /// Effects (audit rows, notifications) waiting in the executor's overflow buffer for room in
    /// their queue, by `queue` (gauge).
    pub const EFFECT_OVERFLOW: &str = "quotaflow_alerter_effect_overflow_rows";
    /// Effects dropped because the overflow buffer held `alert.effect_overflow_limit`, by
    /// `queue`.
    pub const EFFECTS_DROPPED: &str = "quotaflow_alerter_effects_dropped_total";
    /// Failed writes (audit, alerts topic) that are being retried, by `target`.
    pub const RETRIES: &str = "quotaflow_alerter_retries_total";
    /// Records the last restore read, by `topic` kind (`control`, `alerts`, `approvals`,
    /// `totals`, `totals_tombstones`, `usage`) (gauge). Each was folded into the state as it was
    /// read; none is kept.
    pub const RESTORE_RECORDS: &str = "quotaflow_alerter_restore_records";
    /// Usage records the admission step refused (ignored here; the archiver and the aggregator
    /// dead-letter them), by dead-letter `kind`.
    pub const USAGE_REFUSED: &str = "quotaflow_alerter_usage_refused_total";
    /// (scope, window) totals held (gauge; set after the restore and at every tick): the open
    /// windows, and those ended less than an hour ago, not the totals topic's history.
    pub const TOTALS_HELD: &str = "quotaflow_alerter_totals_held";
    /// Entries held by the engine, by `map` (`totals`, `decisions`, `fired`, `jobs_in_flight`,
    /// `job_scopes`, `anomaly_tracks`), set every tick (gauge; issue 13 point 7: they fall as
    /// windows close and jobs finish or age out).
    pub const STATE_ENTRIES: &str = "quotaflow_alerter_state_entries";
}

/// `secs` as a `TimeDelta` (saturating far beyond any real setting).
fn secs_delta(secs: u64) -> chrono::TimeDelta {
    i64::try_from(secs)
        .ok()
        .and_then(chrono::TimeDelta::try_seconds)
        .unwrap_or(chrono::TimeDelta::MAX)
}

/// Sets the [`metric::STATE_ENTRIES`] gauges.
fn record_state_sizes(engine: &Engine) {
    let sizes = engine.state_sizes();
    for (map, entries) in [
        ("totals", sizes.totals),
        ("decisions", sizes.decisions),
        ("fired", sizes.fired),
        ("jobs_in_flight", sizes.jobs_in_flight),
        ("job_scopes", sizes.job_scopes),
        ("anomaly_tracks", sizes.anomaly_tracks),
    ] {
        metrics::gauge!(metric::STATE_ENTRIES, "map" => map).set(entries as f64);
    }
}

/// Runs the service on `listener` until `shutdown` (the lifecycle of [`crate::run_with_listener`]),
/// on the worker lifecycle ([`infra::service::run_worker`]).
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<()> {
    let stop = shutdown.clone();
    infra::service::run_worker("alerter", Some(listener), &stop, |readiness| async move {
        let work = run_loop(&config, &readiness, &shutdown);
        tokio::pin!(work);
        let result = tokio::select! {
            result = &mut work => result,
            // Once running, the loop stops at its next turn and lets its queued notifications
            // and audit rows out (bounded); dropping it would lose them. A start still under
            // way (not ready: nothing decided yet) is dropped at once.
            () = shutdown.cancelled() => if readiness.is_ready() {
                tokio::time::timeout(SHUTDOWN_GRACE, &mut work)
                    .await
                    .unwrap_or(Ok(()))
            } else {
                Ok(())
            },
        };
        result
    })
    .await
}

async fn run_loop(config: &Config, readiness: &Readiness, shutdown: &Shutdown) -> Result<()> {
    config
        .notify
        .validate()
        .map_err(|error| Error::Config(error.into()))?;
    // Built before anything else, so an unreadable `notify.ca_file` stops the start.
    let webhook_client = config
        .notify
        .http_client()
        .map_err(|error| Error::Config(error.into()))?;
    infra::service::prepare_pipeline(&config.kafka, &config.clickhouse).await?;
    warn_unless_broker_time(&config.kafka).await;
    // Before the restore: fencing an older writer first means the control topic the restore
    // reads holds everything that writer could still commit.
    let control = ControlWriter::open(&config.kafka, &config.group_id).await?;
    let policies =
        Arc::new(PolicySet::load_dir(&config.alert.policies_dir).map_err(Error::Policies)?);
    info!(policies = policies.len(), dir = %config.alert.policies_dir.display(), "policies loaded");
    // No linger: a decision is one record and every millisecond counts.
    let producer: FutureProducer =
        infra::kafka::producer_config(&config.kafka, "quotaflow-alerter")
            .set("linger.ms", "0")
            .create()?;
    let pricer = quotaflow_admission::pricer::Pricer::from_config(&config.pricing)
        .map_err(Error::Pricing)?;
    let admission = quotaflow_admission::Admission::new(pricer, config.validation.clone());

    let restored = restore_state(config, &policies, &admission).await?;
    let Restore {
        mut engine,
        actions,
        action_findings,
        approvals,
        reaudit,
        ends,
        ..
    } = restored;
    let wiring = wire(config, webhook_client, &producer, control, reaudit);
    let mut executor = wiring.executor;

    let now = Utc::now();
    // Approvals first: the first evaluation must see the raises in force, or a restart would
    // block a raised scope and allow it again a moment later.
    let mut effects = Vec::new();
    for approval in approvals {
        effects.extend(engine.on_approval(approval, now));
    }
    effects.extend(engine.set_policies(Arc::clone(&policies), now));
    effects.extend(engine.tick(now));
    effects.extend(engine.take_unfired(action_findings));
    executor.execute(effects, None, shutdown).await?;

    let mut follower = Follower {
        config,
        engine,
        actions,
        admission,
        executor,
    };
    let result = follower.follow(&ends, readiness, shutdown).await;
    // Let queued notifications and audit rows out (bounded wait): what waits in the executor's
    // overflow first, then the notification task, then the audit task.
    let mut executor = follower.executor;
    let notify_deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
    let _ = tokio::time::timeout_at(notify_deadline, async {
        executor.notify.flush().await;
        executor.audit.flush().await;
    })
    .await;
    drop(executor);
    let _ = tokio::time::timeout_at(notify_deadline, wiring.notifier).await;
    let _ = tokio::time::timeout(SHUTDOWN_DRAIN, wiring.audit).await;
    result
}

/// The retry rule of the restore: right after the topics are created their leaders may not be
/// elected yet.
const RESTORE_RETRY: infra::retry::Backoff =
    infra::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// Reads the control, alerts, approvals and totals topics (and the usage lookback when a policy
/// needs events) to their ends into a fresh engine. Retries what can pass within
/// `alert.restore_timeout_secs`; each attempt folds into a fresh state.
async fn restore_state(
    config: &Config,
    policies: &Arc<PolicySet>,
    admission: &quotaflow_admission::Admission,
) -> Result<Restore> {
    let restore_started = Instant::now();
    let topics = &config.kafka.topics;
    let catalog = Arc::new(
        config
            .alert
            .load_catalog()
            .map_err(|error| Error::Config(error.into()))?,
    );
    let kafka = config.kafka.clone();
    let group = format!("{}-restore", config.group_id);
    let timeout = Duration::from_secs(config.alert.restore_timeout_secs);
    let mut names = vec![
        topics.control.clone(),
        topics.alerts.clone(),
        topics.approvals.clone(),
        topics.totals.clone(),
    ];
    // The usage topic only when a policy needs events (per-action rules, job gauges).
    if needs_usage(policies) {
        names.push(topics.usage.clone());
    }
    let mut since = HashMap::new();
    since.insert(
        topics.usage.clone(),
        Utc::now() - usage_lookback(config, policies),
    );
    let deadline = Instant::now() + timeout;
    let mut retry = RESTORE_RETRY.attempts();
    let restored = loop {
        let (kafka, group, names, since) =
            (kafka.clone(), group.clone(), names.clone(), since.clone());
        let mut restore = Restore::new(
            Engine::new(Arc::clone(policies))
                .with_catalog(Arc::clone(&catalog))
                .with_anomaly_settings(config.alert.anomaly.clone())
                .with_job_max_age(secs_delta(config.alert.job_max_age_secs))
                .with_ended_window_keep(secs_delta(config.alert.ended_window_keep_secs)),
            ActionWatch::new(
                chrono::TimeDelta::seconds(
                    i64::try_from(config.alert.action_horizon_secs).unwrap_or(900),
                ),
                config.alert.max_actions,
            ),
            topics.clone(),
            admission.clone(),
        );
        let read = tokio::task::spawn_blocking(move || {
            read_to_end(&kafka, &group, &names, &since, timeout, &mut restore).map(|()| restore)
        })
        .await
        .map_err(Error::RestoreTask)?;
        let delay = retry.next_delay();
        match read {
            Ok(restore) => break restore,
            Err(error) if error.is_retryable() && Instant::now() + delay < deadline => {
                warn!(%error, "restore failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(error) => return Err(error),
        }
    };
    let counts = &restored.counts;
    counts.record();
    metrics::gauge!(metric::TOTALS_HELD).set(restored.engine.totals_len() as f64);
    info!(
        decisions = counts.decisions,
        alerts = counts.alerts,
        approvals = counts.approvals,
        totals = counts.totals,
        totals_tombstones = counts.tombstones,
        totals_held = restored.engine.totals_len(),
        usage_events = counts.usage_events,
        elapsed_ms = restore_started.elapsed().as_millis() as u64,
        "state restored from kafka"
    );
    Ok(restored)
}

/// The tasks behind the main loop and the executor that feeds them.
struct Wiring {
    executor: Executor,
    notifier: tokio::task::JoinHandle<()>,
    audit: tokio::task::JoinHandle<()>,
}

/// Starts the audit and notification tasks (bounded queues), re-audits what the restore read,
/// and builds the [`Executor`] over them.
fn wire(
    config: &Config,
    webhook_client: reqwest::Client,
    producer: &FutureProducer,
    control: ControlWriter,
    reaudit: Vec<AuditRow>,
) -> Wiring {
    let topics = &config.kafka.topics;
    let capacity = config.alert.effect_queue_capacity.max(1);
    let overflow_limit = config.alert.effect_overflow_limit;
    let (audit_tx, audit_rx) = mpsc::channel::<AuditRow>(capacity);
    let audit = tokio::spawn(audit_task(
        infra::clickhouse::client(&config.clickhouse),
        audit_rx,
    ));
    let (notify_tx, notify_rx) = mpsc::channel::<(Alert, Notice)>(capacity);
    let notifier = tokio::spawn(notify_task(
        config.notify.clone(),
        webhook_client,
        producer.clone(),
        topics.alerts.clone(),
        notify_rx,
        Outbox::new("notify_audit", audit_tx.clone(), overflow_limit),
        overflow_limit,
    ));
    // Re-audit what the topics hold: a decision or alert published just before a `kill -9` (or a
    // shutdown whose drain ran out) never reached ClickHouse. Ids are deterministic, so a row
    // already there is replaced by itself. On its own task: waiting for room is fine here.
    let reaudit_tx = audit_tx.clone();
    tokio::spawn(async move {
        for row in reaudit {
            if reaudit_tx.send(row).await.is_err() {
                break;
            }
        }
    });
    let executor = Executor {
        control,
        producer: producer.clone(),
        approvals_topic: topics.approvals.clone(),
        audit: Outbox::new("audit", audit_tx, overflow_limit),
        notify: Outbox::new("notify", notify_tx, overflow_limit),
    };
    Wiring {
        executor,
        notifier,
        audit,
    }
}

/// The main loop's state: the engine and what carries out its effects.
struct Follower<'a> {
    config: &'a Config,
    engine: Engine,
    actions: ActionWatch,
    admission: quotaflow_admission::Admission,
    executor: Executor,
}

impl Follower<'_> {
    /// Follows totals, approvals (and usage when a policy needs events) from where the restore
    /// stopped (`ends`), ticks and reloads policies, until `shutdown`.
    async fn follow(
        &mut self,
        ends: &HashMap<(String, i32), i64>,
        readiness: &Readiness,
        shutdown: &Shutdown,
    ) -> Result<()> {
        let config = self.config;
        let topics = &config.kafka.topics;
        let consumer: StreamConsumer = infra::kafka::consumer_config(
            &config.kafka,
            "quotaflow-alerter",
            &format!("{}-follow", config.group_id),
        )
        .create()?;
        let mut assignment = TopicPartitionList::new();
        for ((topic, partition), end) in ends {
            if *topic == topics.totals || *topic == topics.approvals || *topic == topics.usage {
                assignment.add_partition_offset(topic, *partition, Offset::Offset(*end))?;
            }
        }
        consumer.assign(&assignment)?;
        let mut following_usage = needs_usage(self.engine.policies());
        readiness.set_ready(true);
        info!(
            decisions_held = self.engine.decisions().len(),
            totals_held = self.engine.totals_len(),
            "alerter ready"
        );

        let mut tick =
            tokio::time::interval(Duration::from_millis(config.alert.tick_interval_ms.max(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reload = tokio::time::interval(Duration::from_millis(
            config.alert.reload_interval_ms.max(100),
        ));
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reload.tick().await;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                message = consumer.recv() => match message {
                    Ok(message) => self.on_message(&message, shutdown).await?,
                    Err(error) => warn!(%error, "kafka consumer error"),
                },
                _ = tick.tick() => {
                    let effects = self.engine.tick(Utc::now());
                    record_state_sizes(&self.engine);
                    metrics::gauge!(metric::TOTALS_HELD).set(self.engine.totals_len() as f64);
                    self.executor.execute(effects, None, shutdown).await?;
                }
                _ = reload.tick() => {
                    if let Some(reloaded) = reload_policies(config, self.engine.policies()) {
                        if !following_usage && needs_usage(&reloaded) {
                            // A reload added a policy that needs events: follow them from now on.
                            let mut usage = TopicPartitionList::new();
                            for partition in 0..config.kafka.topics.partitions {
                                usage.add_partition_offset(&topics.usage, partition, Offset::End)?;
                            }
                            consumer.incremental_assign(&usage)?;
                            following_usage = true;
                        }
                        let effects = self.engine.set_policies(reloaded, Utc::now());
                        self.executor.execute(effects, None, shutdown).await?;
                    }
                }
            }
        }
    }

    /// One record of the totals, usage or approvals topic.
    async fn on_message(&mut self, message: &impl Message, shutdown: &Shutdown) -> Result<()> {
        let topics = &self.config.kafka.topics;
        let now = Utc::now();
        if !evaluated(message.topic(), message.key(), &topics.totals) {
            return Ok(());
        }
        let engine = &mut self.engine;
        let Some(payload) = message.payload() else {
            if message.topic() == topics.totals {
                remove_total(engine, message.key());
            }
            return Ok(());
        };
        let (effects, written_at) = if message.topic() == topics.totals {
            let Some(total) = decode::<WindowTotal>("totals", payload) else {
                return Ok(());
            };
            let written_at = total.written_at;
            (engine.on_total(total, now), Some(written_at))
        } else if message.topic() == topics.usage {
            let Some(event) = admit_usage(&self.admission, message, payload) else {
                return Ok(());
            };
            let mut effects =
                engine.take_unfired(self.actions.observe(engine.policies(), &event, now));
            if event.job_id.is_some() {
                effects.extend(engine.on_job_event(&event, now));
            }
            (effects, None)
        } else if let Some(received) = RawApproval::of(message).and_then(|raw| raw.decode()) {
            (engine.on_approval(received, now), None)
        } else {
            return Ok(());
        };
        self.executor.execute(effects, written_at, shutdown).await
    }
}

/// Logs an error when the approvals topic does not stamp records with the broker's time (a topic
/// created before approvals were signed): every approval on it is rejected until it is changed.
async fn warn_unless_broker_time(kafka: &KafkaConfig) {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let Ok(admin) = infra::kafka::producer_config(kafka, "quotaflow-alerter-admin")
        .create::<AdminClient<rdkafka::client::DefaultClientContext>>()
    else {
        return;
    };
    let topic = ResourceSpecifier::Topic(&kafka.topics.approvals);
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let timestamp_type = match admin.describe_configs([&topic], &options).await {
        Ok(results) => results.into_iter().flatten().find_map(|resource| {
            resource
                .get("message.timestamp.type")
                .and_then(|entry| entry.value.clone())
        }),
        Err(error) => {
            warn!(%error, "cannot read the approvals topic's settings");
            return;
        }
    };
    if let Some(kind) = timestamp_type.filter(|kind| kind != "LogAppendTime") {
        error!(
            topic = %kafka.topics.approvals,
            timestamp_type = %kind,
            "approvals on this topic are rejected: set message.timestamp.type=LogAppendTime on it \
             (kafka-configs --alter --entity-type topics --add-config ...)"
        );
    }
}

/// Whether a policy needs the usage events themselves (per-action retry and fallback rules,
/// `concurrent_jobs` gauges, the shared-key rule); otherwise the alerter does not read the usage
/// topic at all.
fn needs_usage(policies: &PolicySet) -> bool {
    policies.policies().iter().any(|policy| {
        policy.record().retry_policy.is_some()
            || policy.record().shared_key.is_some()
            || policy.unit() == policy::Unit::ConcurrentJobs
    })
}

/// Whether a record matters: every record, except totals of scopes no policy evaluates (the
/// single-dimension ones an aggregator publishes with `publish_scopes = "all"`), which are skipped
/// by their key (it starts with the scope kind) without being decoded.
fn evaluated(topic: &str, key: Option<&[u8]>, totals_topic: &str) -> bool {
    topic != totals_topic
        || key.is_some_and(|key| key.starts_with(crate::engine::POLICY_SCOPE_PREFIX.as_bytes()))
}

/// How far back the usage topic is re-read at startup: the per-action horizon, and the job
/// lookback when a `concurrent_jobs` policy exists (jobs started earlier are not seen).
fn usage_lookback(config: &Config, policies: &PolicySet) -> chrono::TimeDelta {
    let seconds =
        |secs: u64| chrono::TimeDelta::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 2_000));
    let mut lookback = seconds(config.alert.action_horizon_secs);
    if policies
        .policies()
        .iter()
        .any(|policy| policy.unit() == policy::Unit::ConcurrentJobs)
    {
        lookback = lookback.max(seconds(config.alert.job_lookback_secs));
    }
    lookback
}

/// A new policy set when the directory changed and loads; `None` when unchanged or broken (the
/// error is logged and the previous set stays).
fn reload_policies(config: &Config, current: &Arc<PolicySet>) -> Option<Arc<PolicySet>> {
    match PolicySet::load_dir(&config.alert.policies_dir) {
        Ok(loaded) if loaded.fingerprint() == current.fingerprint() => None,
        Ok(loaded) => {
            info!(
                policies = loaded.len(),
                fingerprint = loaded.fingerprint(),
                "policies reloaded"
            );
            metrics::counter!(metric::RELOADS, "outcome" => "applied").increment(1);
            Some(Arc::new(loaded))
        }
        Err(errors) => {
            error!(errors = %errors, "policy reload failed; keeping the previous policies");
            metrics::counter!(metric::RELOADS, "outcome" => "failed").increment(1);
            None
        }
    }
}

/// A usage record decoded and admitted by the one admission step every reader applies
/// ([`quotaflow_admission`]): validated at its Kafka timestamp and priced (the producer's
/// envelope is recomputed, never trusted). A refused record is ignored here (the archiver and the
/// aggregator dead-letter it) and counted in [`metric::USAGE_REFUSED`].
fn admit_usage(
    admission: &quotaflow_admission::Admission,
    message: &impl Message,
    payload: &[u8],
) -> Option<schemas::UsageEvent> {
    let event = decode::<schemas::UsageEvent>("usage", payload)?;
    let timestamp = quotaflow_admission::record_timestamp(message.timestamp().to_millis());
    match admission.admit(event, timestamp) {
        Ok(event) => Some(event),
        Err(rejection) => {
            metrics::counter!(metric::USAGE_REFUSED, "kind" => rejection.dead_letter_kind())
                .increment(1);
            None
        }
    }
}

fn decode<T: schemas::codec::AvroRecord>(topic: &'static str, payload: &[u8]) -> Option<T> {
    match schemas::codec::decode::<T>(payload) {
        Ok(record) => {
            metrics::counter!(metric::RECORDS, "topic" => topic, "outcome" => "ok").increment(1);
            Some(record)
        }
        Err(error) => {
            warn!(topic, %error, "undecodable record skipped");
            metrics::counter!(metric::RECORDS, "topic" => topic, "outcome" => "undecodable")
                .increment(1);
            None
        }
    }
}

/// Crash hooks for the tests (module docs, [`infra::failpoint`]): the operation counted is a
/// decision's publish, the steps `before_publish` and `after_publish`.
static FAILPOINTS: infra::failpoint::Failpoints =
    infra::failpoint::Failpoints::new("ALERTER_FAILPOINT");

static AUDIT_FAILURES: AtomicU64 = AtomicU64::new(0);
