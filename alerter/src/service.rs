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
//!    history (issue 13 point 6; `alerter_restore_records`, `alerter_totals_held`).
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

/// Metric names.
pub mod metric {
    /// Decisions published, by `action`.
    pub const DECISIONS: &str = "alerter_decisions_total";
    /// Control keys forgotten: tombstones published for allows issued more than
    /// `2 × alert.ended_window_keep_secs` ago (issue 13 point 7).
    pub const DECISIONS_FORGOTTEN: &str = "alerter_decisions_forgotten_total";
    /// Alerts raised, by `kind`.
    pub const ALERTS: &str = "alerter_alerts_total";
    /// Notifications, by `service` and `outcome`.
    pub const NOTIFICATIONS: &str = "alerter_notifications_total";
    /// Failed notification attempts (each retry counts), by `service` and `reason` (`tls`,
    /// `transport`, `unavailable`, `rate_limited`, `rejected`, ...; see
    /// [`crate::notify::NotifyError::reason`]).
    pub const NOTIFY_FAILURES: &str = "alerter_notify_failures_total";
    /// Records read, by `topic` kind and `outcome`.
    pub const RECORDS: &str = "alerter_records_total";
    /// Policy reloads, by `outcome`.
    pub const RELOADS: &str = "alerter_policy_reloads_total";
    /// Approvals, by `status`.
    pub const APPROVALS: &str = "alerter_approvals_total";
    /// Seconds from a total's write by the aggregator to the decision it caused being published.
    pub const DECISION_LAG: &str = "alerter_decision_lag_seconds";
    /// Audit rows written, by `table`.
    pub const AUDIT_ROWS: &str = "alerter_audit_rows_total";
    /// Effects (audit rows, notifications) waiting in the executor's overflow buffer for room in
    /// their queue, by `queue` (gauge).
    pub const EFFECT_OVERFLOW: &str = "alerter_effect_overflow_rows";
    /// Effects dropped because the overflow buffer held `alert.effect_overflow_limit`, by
    /// `queue`.
    pub const EFFECTS_DROPPED: &str = "alerter_effects_dropped_total";
    /// Failed writes (audit, alerts topic) that are being retried, by `target`.
    pub const RETRIES: &str = "alerter_retries_total";
    /// Records the last restore read, by `topic` kind (`control`, `alerts`, `approvals`,
    /// `totals`, `totals_tombstones`, `usage`) (gauge). Each was folded into the state as it was
    /// read; none is kept.
    pub const RESTORE_RECORDS: &str = "alerter_restore_records";
    /// Usage records the admission step refused (ignored here; the archiver and the aggregator
    /// dead-letter them), by dead-letter `kind`.
    pub const USAGE_REFUSED: &str = "alerter_usage_refused_total";
    /// (scope, window) totals held (gauge; set after the restore and at every tick): the open
    /// windows, and those ended less than an hour ago, not the totals topic's history.
    pub const TOTALS_HELD: &str = "alerter_totals_held";
    /// Entries held by the engine, by `map` (`totals`, `decisions`, `fired`, `jobs_in_flight`,
    /// `job_scopes`, `anomaly_tracks`), set every tick (gauge; issue 13 point 7: they fall as
    /// windows close and jobs finish or age out).
    pub const STATE_ENTRIES: &str = "alerter_state_entries";
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

/// Runs the service on `listener` until `shutdown` (the lifecycle of [`crate::run_with_listener`]).
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<()> {
    let readiness = Readiness::default();
    let listen = listener
        .local_addr()
        .map_err(infra::service::ServiceError::Http)?;
    let stop_http = shutdown.child_token();
    let http = tokio::spawn(infra::telemetry::serve(
        listener,
        infra::telemetry::ops_router(readiness.clone()),
        stop_http.clone(),
    ));
    info!(%listen, "alerter starting");
    let work = run_loop(&config, &readiness, &shutdown);
    tokio::pin!(work);
    let result = tokio::select! {
        result = &mut work => result,
        // Once running, the loop stops at its next turn and lets its queued notifications and
        // audit rows out (bounded); dropping it would lose them. A start still under way (not
        // ready: nothing decided yet) is dropped at once.
        () = shutdown.cancelled() => if readiness.is_ready() {
            tokio::time::timeout(SHUTDOWN_GRACE, &mut work)
                .await
                .unwrap_or(Ok(()))
        } else {
            Ok(())
        },
    };
    readiness.set_ready(false);
    stop_http.cancel();
    let _ = http.await;
    match &result {
        Ok(()) => info!("alerter stopped"),
        Err(error) => error!(%error, retryable = error.is_retryable(), "alerter failed"),
    }
    result
}

/// The state a restore builds. Every record is folded in as it is read and dropped (issue 13
/// point 6): nothing holds the records, so the restore's memory follows the live state (decisions
/// in force, open windows' totals, approvals), not the topics' history. Totals of windows that
/// ended are not even held ([`Engine::load_total`]) and tombstones remove theirs.
struct Restore {
    /// The admission step usage records go through.
    admission: quotaflow_admission::Admission,
    /// The engine, restored without evaluating.
    engine: Engine,
    /// Per-action rules, fed the usage lookback.
    actions: ActionWatch,
    /// What the per-action rules found in the lookback (raised after the restore, unless raised
    /// before).
    action_findings: Vec<Effect>,
    /// Approvals read, checked and applied after the restore (the first evaluation sees them).
    approvals: Vec<ReceivedApproval>,
    /// Decisions and alerts on the topics, audited again after the restore.
    reaudit: Vec<AuditRow>,
    /// What was read.
    counts: RestoreCounts,
    /// End offsets per (topic, partition) taken when the restore began: the follow starts there.
    ends: HashMap<(String, i32), i64>,
    /// Topic names.
    topics: infra::config::TopicsConfig,
}

/// Records a restore folded, by kind.
#[derive(Debug, Default, Clone, Copy)]
struct RestoreCounts {
    decisions: usize,
    alerts: usize,
    approvals: usize,
    totals: usize,
    tombstones: usize,
    usage_events: usize,
}

impl RestoreCounts {
    /// Sets the [`metric::RESTORE_RECORDS`] gauges.
    fn record(&self) {
        for (topic, count) in [
            ("control", self.decisions),
            ("alerts", self.alerts),
            ("approvals", self.approvals),
            ("totals", self.totals),
            ("totals_tombstones", self.tombstones),
            ("usage", self.usage_events),
        ] {
            metrics::gauge!(metric::RESTORE_RECORDS, "topic" => topic).set(count as f64);
        }
    }
}

impl Restore {
    fn new(
        engine: Engine,
        actions: ActionWatch,
        topics: infra::config::TopicsConfig,
        admission: quotaflow_admission::Admission,
    ) -> Restore {
        Restore {
            admission,
            engine,
            actions,
            action_findings: Vec::new(),
            approvals: Vec::new(),
            reaudit: Vec::new(),
            counts: RestoreCounts::default(),
            ends: HashMap::new(),
            topics,
        }
    }

    /// Folds one record read before its partition's end offset.
    fn fold(&mut self, message: &impl Message) {
        let topic = message.topic();
        if topic == self.topics.approvals {
            if let Some(received) = RawApproval::of(message).and_then(|raw| raw.decode()) {
                self.approvals.push(received);
                self.counts.approvals += 1;
            }
            return;
        }
        if !evaluated(topic, message.key(), &self.topics.totals) {
            return;
        }
        let Some(payload) = message.payload() else {
            if topic == self.topics.totals {
                remove_total(&mut self.engine, message.key());
                self.counts.tombstones += 1;
            } else if topic == self.topics.control {
                // A forgotten key (issue 13 point 7): its decisions before this are void.
                if let Some(key) = message.key().and_then(|key| std::str::from_utf8(key).ok()) {
                    self.engine.forget_decision(key);
                }
            }
            return;
        };
        if topic == self.topics.control {
            if let Some(decision) = decode::<ControlDecision>("control", payload) {
                self.reaudit.push(AuditRow::Decision(decision.clone()));
                self.engine.restore_decision(decision);
                self.counts.decisions += 1;
            }
        } else if topic == self.topics.alerts {
            if let Some(alert) = decode::<Alert>("alerts", payload) {
                self.engine.restore_alert(&alert);
                self.reaudit.push(AuditRow::Alert(alert));
                self.counts.alerts += 1;
            }
        } else if topic == self.topics.usage {
            if let Some(event) = admit_usage(&self.admission, message, payload) {
                self.engine.load_job_event(&event);
                self.action_findings.extend(self.actions.observe(
                    self.engine.policies(),
                    &event,
                    Utc::now(),
                ));
                self.counts.usage_events += 1;
            }
        } else if topic == self.topics.totals {
            if let Some(total) = decode::<WindowTotal>("totals", payload) {
                self.engine.load_total(total, Utc::now());
                self.counts.totals += 1;
            }
        }
    }
}

/// Applies a tombstone of the totals topic (a record without value) by its key.
fn remove_total(engine: &mut Engine, key: Option<&[u8]>) {
    match key
        .and_then(|key| std::str::from_utf8(key).ok())
        .and_then(WindowTotal::parse_compaction_key)
    {
        Some(key) => {
            engine.remove_total(&key);
        }
        None => warn!("totals tombstone with an unreadable key skipped"),
    }
}

/// An approval record as read: payload, key and the broker's append time (if it is that kind).
struct RawApproval {
    payload: Vec<u8>,
    key: Option<Vec<u8>>,
    appended_at: Option<DateTime<Utc>>,
}

impl RawApproval {
    fn of(message: &impl Message) -> Option<RawApproval> {
        Some(RawApproval {
            payload: message.payload()?.to_vec(),
            key: message.key().map(<[u8]>::to_vec),
            appended_at: log_append_time(message.timestamp()),
        })
    }

    fn decode(&self) -> Option<ReceivedApproval> {
        let approval = decode::<Approval>("approvals", &self.payload)?;
        Some(ReceivedApproval::new(
            approval,
            self.appended_at,
            self.key.as_deref(),
            &self.payload,
        ))
    }
}

/// The broker's append time of a record; `None` for a writer's `CreateTime` (not trusted) or none.
fn log_append_time(timestamp: rdkafka::Timestamp) -> Option<DateTime<Utc>> {
    match timestamp {
        rdkafka::Timestamp::LogAppendTime(millis) => DateTime::from_timestamp_millis(millis),
        rdkafka::Timestamp::CreateTime(_) | rdkafka::Timestamp::NotAvailable => None,
    }
}

async fn run_loop(config: &Config, readiness: &Readiness, shutdown: &Shutdown) -> Result<()> {
    config
        .notify
        .validate()
        .map_err(|error| Error::Config(error.to_string()))?;
    // Built before anything else, so an unreadable `notify.ca_file` stops the start.
    let webhook_client = config
        .notify
        .http_client()
        .map_err(|error| Error::Config(error.to_string()))?;
    infra::service::prepare_pipeline(&config.kafka, &config.clickhouse).await?;
    warn_unless_broker_time(&config.kafka).await;
    // Before the restore: fencing an older writer first means the control topic the restore
    // reads holds everything that writer could still commit.
    let control = ControlWriter::open(&config.kafka, &config.group_id).await?;
    let policies = Arc::new(
        PolicySet::load_dir(&config.alert.policies_dir)
            .map_err(|errors| Error::Policies(errors.to_string()))?,
    );
    info!(policies = policies.len(), dir = %config.alert.policies_dir.display(), "policies loaded");
    // No linger: a decision is one record and every millisecond counts.
    let producer: FutureProducer =
        infra::kafka::producer_config(&config.kafka, "quotaflow-alerter")
            .set("linger.ms", "0")
            .create()?;
    let topics = &config.kafka.topics;

    // Restore.
    let restore_started = Instant::now();
    let catalog = Arc::new(config.alert.load_catalog().map_err(Error::Config)?);
    let pricer = quotaflow_admission::pricer::Pricer::from_config(&config.pricing)
        .map_err(|error| Error::Config(format!("pricing: {error}")))?;
    let admission = quotaflow_admission::Admission::new(pricer, config.validation.clone());
    let restored = {
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
        if needs_usage(&policies) {
            names.push(topics.usage.clone());
        }
        let mut since = HashMap::new();
        since.insert(
            topics.usage.clone(),
            Utc::now() - usage_lookback(config, &policies),
        );
        // Right after the topics are created their leaders may not be elected yet: retry what
        // can pass, within the restore timeout. Each attempt folds into a fresh state.
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_millis(200);
        loop {
            let (kafka, group, names, since) =
                (kafka.clone(), group.clone(), names.clone(), since.clone());
            let mut restore = Restore::new(
                Engine::new(Arc::clone(&policies))
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
            .map_err(|error| Error::Restore(error.to_string()))?;
            match read {
                Ok(restore) => break restore,
                Err(error) if error.is_retryable() && Instant::now() + backoff < deadline => {
                    warn!(%error, "restore failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(error) => return Err(error),
            }
        }
    };
    let Restore {
        mut engine,
        mut actions,
        action_findings,
        approvals,
        reaudit,
        counts,
        ends,
        ..
    } = restored;
    counts.record();
    metrics::gauge!(metric::TOTALS_HELD).set(engine.totals_len() as f64);
    info!(
        decisions = counts.decisions,
        alerts = counts.alerts,
        approvals = counts.approvals,
        totals = counts.totals,
        totals_tombstones = counts.tombstones,
        totals_held = engine.totals_len(),
        usage_events = counts.usage_events,
        elapsed_ms = restore_started.elapsed().as_millis() as u64,
        "state restored from kafka"
    );

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
    let mut executor = Executor {
        control,
        producer: producer.clone(),
        approvals_topic: topics.approvals.clone(),
        audit: Outbox::new("audit", audit_tx, overflow_limit),
        notify: Outbox::new("notify", notify_tx, overflow_limit),
    };

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

    // Follow totals and approvals from where the restore stopped.
    let consumer: StreamConsumer = infra::kafka::consumer_config(
        &config.kafka,
        "quotaflow-alerter",
        &format!("{}-follow", config.group_id),
    )
    .create()?;
    let mut assignment = TopicPartitionList::new();
    for ((topic, partition), end) in &ends {
        if *topic == topics.totals || *topic == topics.approvals || *topic == topics.usage {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(*end))?;
        }
    }
    consumer.assign(&assignment)?;
    let mut following_usage = needs_usage(&policies);
    readiness.set_ready(true);
    info!(
        decisions_held = engine.decisions().len(),
        totals_held = engine.totals_len(),
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
    let result = loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ok(()),
            message = consumer.recv() => {
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        warn!(%error, "kafka consumer error");
                        continue;
                    }
                };
                let now = Utc::now();
                if !evaluated(message.topic(), message.key(), &topics.totals) {
                    continue;
                }
                let Some(payload) = message.payload() else {
                    if message.topic() == topics.totals {
                        remove_total(&mut engine, message.key());
                    }
                    continue;
                };
                if message.topic() == topics.totals {
                    if let Some(total) = decode::<WindowTotal>("totals", payload) {
                        let written_at = total.written_at;
                        let effects = engine.on_total(total, now);
                        executor.execute(effects, Some(written_at), shutdown).await?;
                    }
                } else if message.topic() == topics.usage {
                    if let Some(event) = admit_usage(&admission, &message, payload) {
                        let mut effects = engine.take_unfired(actions.observe(engine.policies(), &event, now));
                        if event.job_id.is_some() {
                            effects.extend(engine.on_job_event(&event, now));
                        }
                        executor.execute(effects, None, shutdown).await?;
                    }
                } else if let Some(received) = RawApproval::of(&message).and_then(|raw| raw.decode()) {
                    let effects = engine.on_approval(received, now);
                    executor.execute(effects, None, shutdown).await?;
                }
            }
            _ = tick.tick() => {
                let effects = engine.tick(Utc::now());
                record_state_sizes(&engine);
                metrics::gauge!(metric::TOTALS_HELD).set(engine.totals_len() as f64);
                executor.execute(effects, None, shutdown).await?;
            }
            _ = reload.tick() => {
                if let Some(reloaded) = reload_policies(config, engine.policies()) {
                    if !following_usage && needs_usage(&reloaded) {
                        // A reload added a policy that needs events: follow them from now on.
                        let mut usage = TopicPartitionList::new();
                        for partition in 0..config.kafka.topics.partitions {
                            usage.add_partition_offset(&topics.usage, partition, Offset::End)?;
                        }
                        consumer.incremental_assign(&usage)?;
                        following_usage = true;
                    }
                    let effects = engine.set_policies(reloaded, Utc::now());
                    executor.execute(effects, None, shutdown).await?;
                }
            }
        }
    };
    // Let queued notifications and audit rows out (bounded wait): what waits in the executor's
    // overflow first, then the notification task, then the audit task.
    let notify_deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
    let _ = tokio::time::timeout_at(notify_deadline, async {
        executor.notify.flush().await;
        executor.audit.flush().await;
    })
    .await;
    drop(executor);
    let _ = tokio::time::timeout_at(notify_deadline, notifier).await;
    let _ = tokio::time::timeout(SHUTDOWN_DRAIN, audit).await;
    result
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
/// `concurrent_jobs` gauges); otherwise the alerter does not read the usage topic at all.
fn needs_usage(policies: &PolicySet) -> bool {
    policies.policies().iter().any(|policy| {
        policy.record().retry_policy.is_some() || policy.unit() == policy::Unit::ConcurrentJobs
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

/// Reads every partition of `topics` from the start (or, for a topic in `since`, from the first
/// record at or after that time) to the end offsets taken now, folding each record into
/// `restore` as it comes (none is kept).
fn read_to_end(
    kafka: &KafkaConfig,
    group: &str,
    topics: &[String],
    since: &HashMap<String, DateTime<Utc>>,
    timeout: Duration,
    restore: &mut Restore,
) -> Result<()> {
    let consumer: BaseConsumer =
        infra::kafka::consumer_config(kafka, "quotaflow-alerter-restore", group).create()?;
    let deadline = Instant::now() + timeout;
    let mut assignment = TopicPartitionList::new();
    let mut pending: HashMap<(String, i32), i64> = HashMap::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|topic| topic.partitions().iter().map(|partition| partition.id()))
            .collect();
        let starts: HashMap<i32, i64> = match since.get(topic) {
            None => HashMap::new(),
            Some(at) => {
                let mut query = TopicPartitionList::new();
                for partition in &partitions {
                    query.add_partition_offset(
                        topic,
                        *partition,
                        Offset::Offset(at.timestamp_millis()),
                    )?;
                }
                consumer
                    .offsets_for_times(query, Duration::from_secs(10))?
                    .elements()
                    .iter()
                    .filter_map(|element| match element.offset() {
                        Offset::Offset(offset) => Some((element.partition(), offset)),
                        _ => None,
                    })
                    .collect()
            }
        };
        for partition in partitions {
            let (low, high) =
                consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
            restore.ends.insert((topic.clone(), partition), high);
            // With a start time, a partition without a record since then has nothing to read.
            let start = match since.get(topic) {
                None => low,
                Some(_) => starts.get(&partition).copied().unwrap_or(high),
            };
            if high > start {
                assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
                pending.insert((topic.clone(), partition), high);
            }
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    consumer.assign(&assignment)?;
    while !pending.is_empty() {
        if Instant::now() > deadline {
            return Err(Error::Restore(format!(
                "topics not read to their end within {timeout:?}: {} partitions left",
                pending.len()
            )));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let key = (message.topic().to_owned(), message.partition());
                if let Some(end) = pending.get(&key) {
                    if message.offset() < *end {
                        restore.fold(&message);
                    }
                    if message.offset() + 1 >= *end {
                        pending.remove(&key);
                    }
                }
            }
            Some(Err(error)) => warn!(%error, "kafka error while restoring"),
            None => {
                // Compaction can leave the end offset without a record: the position says.
                if let Ok(positions) = consumer.position() {
                    for element in positions.elements() {
                        if let Offset::Offset(position) = element.offset() {
                            let key = (element.topic().to_owned(), element.partition());
                            if pending.get(&key).is_some_and(|end| position >= *end) {
                                pending.remove(&key);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Crash hooks for the tests (module docs, [`infra::failpoint`]): the operation counted is a
/// decision's publish, the steps `before_publish` and `after_publish`.
static FAILPOINTS: infra::failpoint::Failpoints =
    infra::failpoint::Failpoints::new("ALERTER_FAILPOINT");

/// Longest wait at shutdown for the notifications, then for the audit rows, still queued.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);
/// Longest wait at shutdown for the loop to stop and drain (both drain waits, and a turn).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// Hands items to a bounded queue without ever waiting for room, so that the decision loop is
/// never held up by the task behind the queue (ClickHouse down, a slow webhook).
///
/// An item that does not fit waits in an in-memory overflow buffer, in order: while the buffer
/// holds anything, new items go behind it. The buffer is moved into the queue as room appears,
/// at every [`Outbox::push`] and [`Outbox::drain`] (the executor drains at every `execute`,
/// which the tick timer calls every `alert.tick_interval_ms`). Its length is the gauge
/// `alerter_effect_overflow_rows{queue}`. At `alert.effect_overflow_limit` items the newest is
/// dropped, logged and counted (`alerter_effects_dropped_total{queue}`): memory stays bounded
/// and decisions still go out. At shutdown [`Outbox::flush`] waits for room (the caller bounds
/// the wait).
struct Outbox<T> {
    /// The `queue` label of the metrics.
    name: &'static str,
    queue: mpsc::Sender<T>,
    overflow: VecDeque<T>,
    limit: usize,
}

impl<T> Outbox<T> {
    fn new(name: &'static str, queue: mpsc::Sender<T>, limit: usize) -> Self {
        Self {
            name,
            queue,
            overflow: VecDeque::new(),
            limit,
        }
    }

    /// Queues `item` behind everything pushed before it; never waits.
    fn push(&mut self, item: T) {
        self.drain();
        if !self.overflow.is_empty() {
            self.keep(item);
            return;
        }
        match self.queue.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(item)) => self.keep(item),
            // The task behind the queue has stopped (only at shutdown): nothing left to do.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Moves what fits from the overflow buffer into the queue.
    fn drain(&mut self) {
        if self.overflow.is_empty() {
            return;
        }
        while let Some(item) = self.overflow.pop_front() {
            match self.queue.try_send(item) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(item)) => {
                    self.overflow.push_front(item);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.overflow.clear(),
            }
        }
        self.gauge();
        if self.overflow.is_empty() {
            info!(queue = self.name, "effect overflow drained");
        }
    }

    /// Waits for room for everything in the overflow buffer (at shutdown).
    async fn flush(&mut self) {
        while let Some(item) = self.overflow.pop_front() {
            if self.queue.send(item).await.is_err() {
                self.overflow.clear();
            }
            self.gauge();
        }
    }

    fn keep(&mut self, item: T) {
        if self.overflow.len() >= self.limit {
            error!(
                queue = self.name,
                limit = self.limit,
                "effect overflow full: effect dropped (alert.effect_overflow_limit)"
            );
            metrics::counter!(metric::EFFECTS_DROPPED, "queue" => self.name).increment(1);
            return;
        }
        if self.overflow.is_empty() {
            warn!(
                queue = self.name,
                "effect queue full (audit or notifications behind); effects kept in the overflow buffer"
            );
        }
        self.overflow.push_back(item);
        self.gauge();
    }

    fn gauge(&self) {
        metrics::gauge!(metric::EFFECT_OVERFLOW, "queue" => self.name)
            .set(self.overflow.len() as f64);
    }
}

struct Executor {
    /// The control topic's transactional writer (decisions).
    control: ControlWriter,
    /// Tombstones of expired approvals.
    producer: FutureProducer,
    /// Where expired approvals are tombstoned.
    approvals_topic: String,
    audit: Outbox<AuditRow>,
    notify: Outbox<(Alert, Notice)>,
}

impl Executor {
    /// Carries out `effects` in order: decisions are published before the next effect is looked
    /// at. `written_at` is when the total that caused them was written (for the lag metric).
    async fn execute(
        &mut self,
        effects: Vec<Effect>,
        written_at: Option<DateTime<Utc>>,
        shutdown: &Shutdown,
    ) -> Result<()> {
        // Also the timer of the overflow buffers: the tick calls this every tick interval.
        self.audit.drain();
        self.notify.drain();
        for effect in effects {
            match effect {
                Effect::Decide(decision) => {
                    self.publish(&decision, shutdown).await?;
                    if let Some(written_at) = written_at {
                        let lag = (Utc::now() - written_at).num_microseconds().unwrap_or(0);
                        metrics::histogram!(metric::DECISION_LAG).record(lag as f64 / 1e6);
                    }
                    metrics::counter!(metric::DECISIONS, "action" => decision.action.as_str())
                        .increment(1);
                    info!(
                        key = %decision.key,
                        action = decision.action.as_str(),
                        version = decision.version,
                        reason = %decision.reason,
                        "decision published"
                    );
                    self.audit.push(AuditRow::Decision(decision));
                }
                Effect::Forget(key) => {
                    FAILPOINTS.count();
                    self.control.publish(&key, None, shutdown).await?;
                    metrics::counter!(metric::DECISIONS_FORGOTTEN).increment(1);
                    info!(%key, "decision key forgotten (tombstone published)");
                }
                Effect::Alert(alert, notice) => {
                    metrics::counter!(metric::ALERTS, "kind" => alert.kind.as_str()).increment(1);
                    self.notify.push((*alert, *notice));
                }
                Effect::ApprovalDecided {
                    received,
                    status,
                    reason,
                    shadowed,
                } => {
                    metrics::counter!(metric::APPROVALS, "status" => status).increment(1);
                    info!(
                        approval_id = %received.approval.approval_id,
                        policy = %received.approval.policy_id,
                        status,
                        reason = %reason,
                        "approval"
                    );
                    if status == "expired" {
                        // Only a record that passed the checks reaches `expired`, so its key is
                        // its own id: the tombstone removes that approval and nothing else.
                        tombstone(
                            &self.producer,
                            &self.approvals_topic,
                            &received.approval.approval_id,
                        )
                        .await;
                    }
                    self.audit.push(AuditRow::Approval(Box::new(ApprovalAudit {
                        received,
                        status,
                        reason,
                        shadowed,
                        decided_at: Utc::now(),
                    })));
                }
            }
        }
        Ok(())
    }

    async fn publish(&mut self, decision: &ControlDecision, shutdown: &Shutdown) -> Result<()> {
        FAILPOINTS.count();
        FAILPOINTS.reached("before_publish");
        let payload = schemas::codec::encode(decision)
            .map_err(|error| Error::Config(format!("unencodable decision: {error}")))?;
        self.control
            .publish(&decision.key, Some(&payload), shutdown)
            .await?;
        FAILPOINTS.reached("after_publish");
        Ok(())
    }
}

/// Writes a tombstone for `key` (compaction then drops the key's records), best effort: a failure
/// is logged and counted, and the record is tombstoned at a later expiry check after a restart.
async fn tombstone(producer: &FutureProducer, topic: &str, key: &str) {
    let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
    if let Err((error, _)) = producer.send(record, Duration::from_secs(30)).await {
        warn!(%error, topic, key, "tombstone of an expired approval not written");
    }
}

/// Sends one record and waits for its delivery, retrying retryable failures with backoff until
/// delivered or shut down.
async fn produce_until_delivered(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    shutdown: &Shutdown,
) -> Result<()> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let record = FutureRecord::to(topic).key(key).payload(payload);
        match producer.send(record, Duration::from_secs(30)).await {
            Ok(_) => return Ok(()),
            Err((error, _)) if infra::kafka::error_is_retryable(&error) => {
                warn!(%error, topic, "publish failed; retrying");
                metrics::counter!(metric::RETRIES, "target" => "kafka").increment(1);
                tokio::select! {
                    () = shutdown.cancelled() => return Err(Error::Kafka(error)),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err((error, _)) => return Err(Error::Kafka(error)),
        }
    }
}

/// Sends notifications, then records each alert on the alerts topic and audits it.
///
/// Deliveries run on one [`Lanes`] worker per destination (a Slack channel's webhook, PagerDuty),
/// so a webhook that takes 30 s per message delays only the messages to that webhook, in order;
/// this task only groups, routes, and records an alert once its deliveries have had their round.
async fn notify_task(
    config: NotifyConfig,
    http: reqwest::Client,
    producer: FutureProducer,
    alerts_topic: String,
    mut queue: mpsc::Receiver<(Alert, Notice)>,
    mut audit: Outbox<AuditRow>,
    lane_capacity: usize,
) {
    let group_interval = config.group_interval();
    let mut grouper = Grouper::new(group_interval);
    let mut lanes = Lanes::new(config, http, lane_capacity);
    // One per alert whose deliveries are under way: records it once they have had their round.
    let mut recording = tokio::task::JoinSet::new();
    let mut due = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            received = queue.recv() => {
                let Some((alert, notice)) = received else { break };
                let mut rounds = Vec::new();
                if let Some(grouped) = grouper.offer(notice.clone(), Instant::now()) {
                    rounds.extend(lanes.slack(grouped));
                }
                rounds.extend(lanes.pagerduty(notice));
                let (producer, topic) = (producer.clone(), alerts_topic.clone());
                recording.spawn(async move {
                    for round in rounds {
                        let _ = round.await;
                    }
                    record_alert(&producer, &topic, &alert).await;
                    alert
                });
            }
            Some(recorded) = recording.join_next() => {
                if let Ok(alert) = recorded {
                    audit.push(AuditRow::Alert(alert));
                }
            }
            _ = due.tick() => {
                for grouped in grouper.due(Instant::now()) {
                    lanes.slack(grouped);
                }
                audit.drain();
            }
        }
    }
    for grouped in grouper.due(Instant::now() + group_interval) {
        lanes.slack(grouped);
    }
    // Within the caller's bounded shutdown wait.
    lanes.close().await;
    while let Some(recorded) = recording.join_next().await {
        if let Ok(alert) = recorded {
            audit.push(AuditRow::Alert(alert));
        }
    }
    audit.flush().await;
}

/// Records `alert` on the alerts topic (what the restore reads), retrying until delivered.
async fn record_alert(producer: &FutureProducer, topic: &str, alert: &Alert) {
    let never = Shutdown::new();
    if let Ok(payload) = schemas::codec::encode(alert) {
        if let Err(error) =
            produce_until_delivered(producer, topic, &alert.dedup_key, &payload, &never).await
        {
            error!(%error, dedup_key = %alert.dedup_key, "alert not recorded on the alerts topic");
        }
    }
}

/// One delivery handed to a lane; `round` is told when it has had its first round (sent, kept
/// for redelivery or refused).
struct LaneJob {
    delivery: LaneDelivery,
    round: Option<tokio::sync::oneshot::Sender<()>>,
}

enum LaneDelivery {
    Slack(Grouped),
    PagerDuty(Notice),
}

/// One worker per destination, each with its own [`Dispatcher`] (and so its own redelivery
/// queue, `notify.redelivery.capacity` per destination) behind a queue of at most
/// `alert.effect_overflow_limit` deliveries. Handing a delivery over never waits: on a full
/// queue it is dropped, logged and counted (`alerter_effects_dropped_total{queue="notify_lane"}`).
struct Lanes {
    config: NotifyConfig,
    http: reqwest::Client,
    capacity: usize,
    lanes: HashMap<String, mpsc::Sender<LaneJob>>,
    workers: tokio::task::JoinSet<()>,
}

impl Lanes {
    fn new(config: NotifyConfig, http: reqwest::Client, capacity: usize) -> Self {
        Self {
            config,
            http,
            capacity: capacity.max(1),
            lanes: HashMap::new(),
            workers: tokio::task::JoinSet::new(),
        }
    }

    /// Hands a Slack message to its channel's lane.
    fn slack(&mut self, grouped: Grouped) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let lane = format!(
            "slack:{}",
            grouped.notice.slack_channel.as_deref().unwrap_or_default()
        );
        self.hand(lane, LaneDelivery::Slack(grouped))
    }

    /// Hands a page (or resolve) to the PagerDuty lane when the notice names a service.
    fn pagerduty(&mut self, notice: Notice) -> Option<tokio::sync::oneshot::Receiver<()>> {
        notice.pagerduty_service.as_ref()?;
        self.hand("pagerduty".to_owned(), LaneDelivery::PagerDuty(notice))
    }

    fn hand(
        &mut self,
        lane: String,
        delivery: LaneDelivery,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let (round, told) = tokio::sync::oneshot::channel();
        let job = LaneJob {
            delivery,
            round: Some(round),
        };
        let sender = self.lanes.entry(lane).or_insert_with(|| {
            let (sender, jobs) = mpsc::channel(self.capacity);
            let dispatcher = Dispatcher::new(self.config.clone(), self.http.clone());
            self.workers.spawn(lane_task(dispatcher, jobs));
            sender
        });
        match sender.try_send(job) {
            Ok(()) => Some(told),
            Err(_) => {
                error!(
                    capacity = self.capacity,
                    "notification lane full: notification dropped (alert.effect_overflow_limit)"
                );
                metrics::counter!(metric::EFFECTS_DROPPED, "queue" => "notify_lane").increment(1);
                None
            }
        }
    }

    /// Lets every lane finish its queue, then stops them.
    async fn close(mut self) {
        self.lanes.clear();
        while self.workers.join_next().await.is_some() {}
    }
}

/// Delivers one destination's notifications in order and redelivers its kept ones when due.
async fn lane_task(mut dispatcher: Dispatcher, mut jobs: mpsc::Receiver<LaneJob>) {
    let mut due = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            job = jobs.recv() => {
                let Some(job) = job else { break };
                match job.delivery {
                    LaneDelivery::Slack(grouped) => dispatcher.slack(grouped).await,
                    LaneDelivery::PagerDuty(notice) => dispatcher.pagerduty(&notice).await,
                }
                if let Some(round) = job.round {
                    let _ = round.send(());
                }
            }
            _ = due.tick() => dispatcher.redeliver_due(Instant::now()).await,
        }
    }
    if dispatcher.pending() > 0 {
        warn!(
            pending = dispatcher.pending(),
            "stopping with notifications still pending; they are not kept across restarts"
        );
    }
}

/// One audit row to write.
enum AuditRow {
    Decision(ControlDecision),
    Alert(Alert),
    Approval(Box<ApprovalAudit>),
}

/// What the alerter's checks made of one approval record.
struct ApprovalAudit {
    received: Arc<ReceivedApproval>,
    status: &'static str,
    reason: String,
    /// Only the check row: the record reused the id of an approval in force (engine docs).
    shadowed: bool,
    decided_at: DateTime<Utc>,
}

#[derive(Debug, clickhouse::Row, Serialize)]
struct DecisionRow {
    decision_id: String,
    key: String,
    policy_id: String,
    scope_keys: Vec<String>,
    scope_values: Vec<String>,
    action: String,
    degrade_to: Option<String>,
    reason: String,
    unit: String,
    observed: i128,
    limit_value: i128,
    window_kind: String,
    window_start: u32,
    window_end: u32,
    issued_at: u32,
    issued_at_us: u64,
    expires_at: Option<u32>,
    version: u64,
}

#[derive(Debug, clickhouse::Row, Serialize)]
struct AlertRow {
    alert_id: String,
    dedup_key: String,
    policy_id: String,
    scope_keys: Vec<String>,
    scope_values: Vec<String>,
    kind: String,
    severity: String,
    threshold_percent: Option<i32>,
    unit: String,
    observed: i128,
    limit_value: Option<i128>,
    window_kind: String,
    window_start: u32,
    window_end: u32,
    owner: String,
    message: String,
    raised_at: u32,
    raised_at_us: u64,
}

#[derive(Debug, clickhouse::Row, Serialize)]
struct ApprovalRow {
    approval_id: String,
    policy_id: String,
    scope_keys: Vec<String>,
    scope_values: Vec<String>,
    new_limit: i128,
    valid_until: u32,
    reason: String,
    approved_by: String,
    requested_at: u32,
    status: String,
    decided_at: u32,
}

impl ApprovalRow {
    fn of(audit: &ApprovalAudit) -> ApprovalRow {
        let approval = &audit.received.approval;
        let (scope_keys, scope_values) = split_scope(&approval.scope);
        ApprovalRow {
            approval_id: approval.approval_id.clone(),
            policy_id: approval.policy_id.clone(),
            scope_keys,
            scope_values,
            new_limit: money(&approval.new_limit),
            valid_until: seconds(approval.valid_until),
            reason: approval.reason.clone(),
            approved_by: approval.approved_by.clone(),
            requested_at: seconds(approval.requested_at),
            status: audit.status.to_owned(),
            decided_at: seconds(audit.decided_at),
        }
    }
}

/// A row of `approval_checks` (migration 0007).
#[derive(Debug, clickhouse::Row, Serialize)]
struct ApprovalCheckRow {
    approval_id: String,
    record_sha256: String,
    policy_id: String,
    approved_by: String,
    status: String,
    check_reason: String,
    first_seen_at: u32,
    first_seen_at_us: u64,
    record_base64: String,
    record_key: String,
    decided_at: u32,
    decided_at_us: u64,
}

impl ApprovalCheckRow {
    fn of(audit: &ApprovalAudit) -> ApprovalCheckRow {
        use base64::Engine as _;
        use sha2::Digest as _;
        let received = &audit.received;
        ApprovalCheckRow {
            approval_id: received.approval.approval_id.clone(),
            record_sha256: hex::encode(sha2::Sha256::digest(&received.record)),
            policy_id: received.approval.policy_id.clone(),
            approved_by: received.approval.approved_by.clone(),
            status: audit.status.to_owned(),
            check_reason: audit.reason.clone(),
            first_seen_at: received.appended_at.map_or(0, seconds),
            first_seen_at_us: received.appended_at.map_or(0, micros),
            record_base64: base64::engine::general_purpose::STANDARD.encode(&received.record),
            record_key: received.key.clone().unwrap_or_default(),
            decided_at: seconds(audit.decided_at),
            decided_at_us: micros(audit.decided_at),
        }
    }
}

fn seconds(at: DateTime<Utc>) -> u32 {
    u32::try_from(at.timestamp().max(0)).unwrap_or(u32::MAX)
}

fn micros(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp_micros().max(0)).unwrap_or(0)
}

fn money(value: &rust_decimal::Decimal) -> i128 {
    schemas::money::to_unscaled(value).unwrap_or_else(|error| {
        warn!(%error, "amount not representable in Decimal(38, 12); audited as 0");
        0
    })
}

fn split_scope(scope: &std::collections::BTreeMap<String, String>) -> (Vec<String>, Vec<String>) {
    scope.iter().map(|(k, v)| (k.clone(), v.clone())).unzip()
}

/// Writes audit rows in batches (every 500 ms or 1,000 rows), retrying each batch until written.
async fn audit_task(client: clickhouse::Client, mut queue: mpsc::Receiver<AuditRow>) {
    let mut decisions = Vec::new();
    let mut alerts = Vec::new();
    let mut approvals = Vec::new();
    let mut approval_checks = Vec::new();
    let mut flush = tokio::time::interval(Duration::from_millis(500));
    let mut open = true;
    while open
        || !(decisions.is_empty()
            && alerts.is_empty()
            && approvals.is_empty()
            && approval_checks.is_empty())
    {
        tokio::select! {
            received = queue.recv(), if open => match received {
                None => open = false,
                Some(AuditRow::Decision(d)) => {
                    let (scope_keys, scope_values) = split_scope(&d.scope);
                    decisions.push(DecisionRow {
                        decision_id: d.decision_id,
                        key: d.key,
                        policy_id: d.policy_id,
                        scope_keys,
                        scope_values,
                        action: d.action.as_str().to_owned(),
                        degrade_to: d.degrade_to,
                        reason: d.reason,
                        unit: d.unit,
                        observed: money(&d.observed),
                        limit_value: money(&d.limit),
                        window_kind: d.window,
                        window_start: seconds(d.window_start),
                        window_end: seconds(d.window_end),
                        issued_at: seconds(d.issued_at),
                        issued_at_us: micros(d.issued_at),
                        expires_at: d.expires_at.map(seconds),
                        version: d.version,
                    });
                }
                Some(AuditRow::Alert(a)) => {
                    let (scope_keys, scope_values) = split_scope(&a.scope);
                    alerts.push(AlertRow {
                        alert_id: a.alert_id,
                        dedup_key: a.dedup_key,
                        policy_id: a.policy_id,
                        scope_keys,
                        scope_values,
                        kind: a.kind.as_str().to_owned(),
                        severity: a.severity.as_str().to_owned(),
                        threshold_percent: a.threshold_percent.and_then(|t| i32::try_from(t).ok()),
                        unit: a.unit,
                        observed: money(&a.observed),
                        limit_value: a.limit.as_ref().map(money),
                        window_kind: a.window,
                        window_start: seconds(a.window_start),
                        window_end: seconds(a.window_end),
                        owner: a.owner,
                        message: a.message,
                        raised_at: seconds(a.raised_at),
                        raised_at_us: micros(a.raised_at),
                    });
                }
                Some(AuditRow::Approval(audit)) => {
                    approval_checks.push(ApprovalCheckRow::of(&audit));
                    if !audit.shadowed {
                        approvals.push(ApprovalRow::of(&audit));
                    }
                }
            },
            _ = flush.tick() => {
                write_until_done(&client, "decisions", &mut decisions).await;
                write_until_done(&client, "alerts", &mut alerts).await;
                write_until_done(&client, "approvals", &mut approvals).await;
                write_until_done(&client, "approval_checks", &mut approval_checks).await;
            }
        }
    }
}

static AUDIT_FAILURES: AtomicU64 = AtomicU64::new(0);

async fn write_until_done<T>(client: &clickhouse::Client, table: &'static str, rows: &mut Vec<T>)
where
    T: clickhouse::Row + Serialize + for<'a> clickhouse::RowWrite<Value<'a> = T>,
{
    if rows.is_empty() {
        return;
    }
    let mut backoff = Duration::from_millis(200);
    loop {
        match write_rows(client, table, rows).await {
            Ok(()) => {
                metrics::counter!(metric::AUDIT_ROWS, "table" => table)
                    .increment(rows.len() as u64);
                rows.clear();
                return;
            }
            Err(error) => {
                let failures = AUDIT_FAILURES.fetch_add(1, Ordering::Relaxed) + 1;
                warn!(%error, table, failures, "audit write failed; retrying");
                metrics::counter!(metric::RETRIES, "target" => "clickhouse").increment(1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn write_rows<T>(
    client: &clickhouse::Client,
    table: &str,
    rows: &[T],
) -> Result<(), clickhouse::error::Error>
where
    T: clickhouse::Row + Serialize + for<'a> clickhouse::RowWrite<Value<'a> = T>,
{
    let mut insert = client.insert::<T>(table).await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await
}
