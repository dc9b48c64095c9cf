//! Carrying out the engine's effects: decisions on the control topic (one fenced transactional
//! writer), tombstones, and bounded outboxes to the notification and audit tasks that never block
//! the main loop.

use super::*;

/// Longest wait at shutdown for the notifications, then for the audit rows, still queued.
pub(super) const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// Longest wait at shutdown for the loop to stop and drain (both drain waits, and a turn).
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// Hands items to a bounded queue without ever waiting for room, so that the decision loop is
/// never held up by the task behind the queue (ClickHouse down, a slow webhook).
///
/// An item that does not fit waits in an in-memory overflow buffer, in order: while the buffer
/// holds anything, new items go behind it. The buffer is moved into the queue as room appears,
/// at every [`Outbox::push`] and [`Outbox::drain`] (the executor drains at every `execute`,
/// which the tick timer calls every `alert.tick_interval_ms`). Its length is the gauge
/// `quotaflow_alerter_effect_overflow_rows{queue}`. At `alert.effect_overflow_limit` items the newest is
/// dropped, logged and counted (`quotaflow_alerter_effects_dropped_total{queue}`): memory stays bounded
/// and decisions still go out. At shutdown [`Outbox::flush`] waits for room (the caller bounds
/// the wait).
pub(super) struct Outbox<T> {
    /// The `queue` label of the metrics.
    pub(super) name: &'static str,
    pub(super) queue: mpsc::Sender<T>,
    pub(super) overflow: VecDeque<T>,
    pub(super) limit: usize,
}

impl<T> Outbox<T> {
    pub(super) fn new(name: &'static str, queue: mpsc::Sender<T>, limit: usize) -> Self {
        Self {
            name,
            queue,
            overflow: VecDeque::new(),
            limit,
        }
    }

    /// Queues `item` behind everything pushed before it; never waits.
    pub(super) fn push(&mut self, item: T) {
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
    pub(super) fn drain(&mut self) {
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
    pub(super) async fn flush(&mut self) {
        while let Some(item) = self.overflow.pop_front() {
            if self.queue.send(item).await.is_err() {
                self.overflow.clear();
            }
            self.gauge();
        }
    }

    pub(super) fn keep(&mut self, item: T) {
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

    pub(super) fn gauge(&self) {
        metrics::gauge!(metric::EFFECT_OVERFLOW, "queue" => self.name)
            .set(self.overflow.len() as f64);
    }
}

pub(super) struct Executor {
    /// The control topic's transactional writer (decisions).
    pub(super) control: ControlWriter,
    /// Tombstones of expired approvals.
    pub(super) producer: FutureProducer,
    /// Where expired approvals are tombstoned.
    pub(super) approvals_topic: String,
    pub(super) audit: Outbox<AuditRow>,
    pub(super) notify: Outbox<(Alert, Notice)>,
}

impl Executor {
    /// Carries out `effects` in order: decisions are published before the next effect is looked
    /// at. `written_at` is when the total that caused them was written (for the lag metric).
    pub(super) async fn execute(
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
                    if decision.shadow {
                        metrics::counter!(
                            metric::SHADOW_DECISIONS,
                            "policy_id" => decision.policy_id.clone(),
                            "action" => decision.audit_action()
                        )
                        .increment(1);
                    }
                    info!(
                        key = %decision.key,
                        action = decision.audit_action(),
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

    pub(super) async fn publish(
        &mut self,
        decision: &ControlDecision,
        shutdown: &Shutdown,
    ) -> Result<()> {
        FAILPOINTS.count();
        FAILPOINTS.reached("before_publish");
        let payload =
            schemas::codec::encode(decision).map_err(|error| Error::Config(Box::new(error)))?;
        self.control
            .publish(&decision.key, Some(&payload), shutdown)
            .await?;
        FAILPOINTS.reached("after_publish");
        Ok(())
    }
}

/// Writes a tombstone for `key` (compaction then drops the key's records), best effort: a failure
/// is logged and counted, and the record is tombstoned at a later expiry check after a restart.
pub(super) async fn tombstone(producer: &FutureProducer, topic: &str, key: &str) {
    let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
    if let Err((error, _)) = producer.send(record, Duration::from_secs(30)).await {
        warn!(%error, topic, key, "tombstone of an expired approval not written");
    }
}

/// Sends one record and waits for its delivery, retrying retryable failures with backoff until
/// delivered or shut down.
pub(super) async fn produce_until_delivered(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    shutdown: &Shutdown,
) -> Result<()> {
    let mut retry =
        infra::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).attempts();
    loop {
        let record = FutureRecord::to(topic).key(key).payload(payload);
        match producer.send(record, Duration::from_secs(30)).await {
            Ok(_) => return Ok(()),
            Err((error, _)) if infra::kafka::error_is_retryable(&error) => {
                warn!(%error, topic, "publish failed; retrying");
                metrics::counter!(metric::RETRIES, "target" => "kafka").increment(1);
                tokio::select! {
                    () = shutdown.cancelled() => return Err(Error::Kafka(error)),
                    () = tokio::time::sleep(retry.next_delay()) => {}
                }
            }
            Err((error, _)) => return Err(Error::Kafka(error)),
        }
    }
}
