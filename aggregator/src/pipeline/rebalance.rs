//! Rebalances: the consumer context that restores newly assigned partitions from their ClickHouse
//! checkpoints (with bounded, retried attempts) before the loop reads them, and hands assignment
//! changes to the loop.

use super::*;

/// How long one attempt at restoring assigned partitions may take before it is retried.
pub(super) const RESTORE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// A change of assignment seen by the rebalance callback, applied by the loop after `recv()`.
pub(super) enum AssignmentChange {
    /// Restored with this policy set.
    Assigned(Vec<PartitionAggregator>, Arc<PolicySet>),
    Revoked(Vec<i32>),
}

/// Rebalance callback (see the module docs).
pub struct AggregatorContext {
    pub(super) topic: String,
    pub(super) sink: Sink,
    /// The policy set in force (swapped by reloads): partitions are restored with it.
    pub(super) policies: Mutex<Arc<PolicySet>>,
    pub(super) settings: PartitionSettings,
    pub(super) changes: Mutex<Vec<AssignmentChange>>,
    pub(super) fatal: Mutex<Option<String>>,
    /// End offset per partition of `topic`, from librdkafka's statistics (for the lag gauge).
    pub(super) high_watermarks: Mutex<BTreeMap<i32, i64>>,
}

impl ClientContext for AggregatorContext {
    /// Keeps the end offsets librdkafka learnt from its fetch responses. The lag gauge used to ask
    /// the broker for them from the loop: on a quiet topic that request queues behind the
    /// consumer's own long-poll fetch on the same connection (up to `fetch.wait.max.ms` per
    /// partition, and a request that times out there makes librdkafka drop the connection), so
    /// the first event after a pause waited 0.5–1.5 s, or seconds, to be read.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let mut high_watermarks = lock(&self.high_watermarks);
        for (&partition, stats) in &topic.partitions {
            if partition >= 0 && stats.hi_offset >= 0 {
                high_watermarks.insert(partition, stats.hi_offset);
            }
        }
    }
}

impl ConsumerContext for AggregatorContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|element| element.partition())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let policies = Arc::clone(&lock(&self.policies));
                let restored = match self.restore_blocking(&partitions, &policies) {
                    Ok(restored) => restored,
                    Err(error) => {
                        warn!(topic = %self.topic, %error, "cannot restore partitions; stopping");
                        *lock(&self.fatal) = Some(error);
                        return;
                    }
                };
                for partition in &restored {
                    let offset = Offset::Offset(partition.read_from());
                    if let Err(error) =
                        tpl.set_partition_offset(&self.topic, partition.partition(), offset)
                    {
                        *lock(&self.fatal) = Some(error.to_string());
                        return;
                    }
                }
                if let Err(error) = external_offsets::assign(base_consumer, tpl) {
                    *lock(&self.fatal) = Some(format!("assign failed: {error}"));
                    return;
                }
                lock(&self.changes).push(AssignmentChange::Assigned(restored, policies));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                info!(topic = %self.topic, ?partitions, "partitions revoked");
                lock(&self.changes).push(AssignmentChange::Revoked(partitions));
                if let Err(error) = external_offsets::unassign(base_consumer, tpl) {
                    warn!(%error, "unassign failed");
                }
            }
            other => warn!(error = ?other, "rebalance error"),
        }
    }
}

impl AggregatorContext {
    /// A context for `topic`.
    pub fn new(
        topic: &str,
        sink: Sink,
        policies: Arc<PolicySet>,
        settings: PartitionSettings,
    ) -> Self {
        Self {
            topic: topic.to_owned(),
            sink,
            policies: Mutex::new(policies),
            settings,
            changes: Mutex::new(Vec::new()),
            fatal: Mutex::new(None),
            high_watermarks: Mutex::new(BTreeMap::new()),
        }
    }

    /// Restores `partitions` from ClickHouse on a thread of its own (the callback blocks the thread
    /// polling the consumer, which may be the caller runtime's only one). Retried for up to 60 s,
    /// well within `max.poll.interval.ms`.
    pub(super) fn restore_blocking(
        &self,
        partitions: &[i32],
        policies: &Arc<PolicySet>,
    ) -> Result<Vec<PartitionAggregator>, String> {
        let sink = self.sink.clone();
        let topic = self.topic.clone();
        let policies = Arc::clone(policies);
        let settings = self.settings.clone();
        let partitions = partitions.to_vec();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| error.to_string())?;
            runtime.block_on(async {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut retry =
                    infra::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(5))
                        .attempts();
                loop {
                    // One attempt may not hang the rebalance: a ClickHouse connection that
                    // accepts but never answers would otherwise block it past every deadline.
                    let attempt = tokio::time::timeout(
                        RESTORE_ATTEMPT_TIMEOUT,
                        restore(&sink, &topic, &policies, &settings, &partitions),
                    )
                    .await
                    .unwrap_or(Err(SinkError::Timeout(RESTORE_ATTEMPT_TIMEOUT)));
                    let delay = retry.next_delay();
                    match attempt {
                        Ok(restored) => return Ok(restored),
                        Err(error) if error.is_retryable() && Instant::now() + delay < deadline => {
                            warn!(%error, "restoring partitions failed; retrying");
                            tokio::time::sleep(delay).await;
                        }
                        Err(error) => return Err(error.to_string()),
                    }
                }
            })
        })
        .join()
        .map_err(|_| "restore thread panicked".to_owned())?
    }
}

/// Loads the checkpoints and partials of `partitions` and builds their processors.
pub(super) async fn restore(
    sink: &Sink,
    topic: &str,
    policies: &PolicySet,
    settings: &PartitionSettings,
    partitions: &[i32],
) -> Result<Vec<PartitionAggregator>, SinkError> {
    let mut checkpoints = sink.load_checkpoints().await?;
    // Only for its window specs: where the open windows of a close horizon start.
    let windows = crate::state::TotalsState::new(policies, settings.totals.clone())
        .map_err(|error| SinkError::Unrepresentable(error.to_string()))?;
    let mut restored = Vec::with_capacity(partitions.len());
    for &partition in partitions {
        let checkpoint = checkpoints.remove(&partition);
        let stored = match &checkpoint {
            Some(checkpoint) => {
                let open_from = checkpoint
                    .state
                    .closed_through
                    .map_or(chrono::DateTime::UNIX_EPOCH, |closed_through| {
                        windows.open_windows_start(closed_through)
                    });
                sink.load_partials(partition, checkpoint, open_from).await?
            }
            None => Vec::new(),
        };
        let totals = stored
            .iter()
            .map(|row| row.as_stored_total())
            .collect::<Result<Vec<_>, _>>()?;
        let (aggregator, count) = PartitionAggregator::restore(
            topic,
            partition,
            policies,
            settings.clone(),
            checkpoint.clone(),
            totals,
        )
        .map_err(|error| SinkError::Unrepresentable(error.to_string()))?;
        info!(
            topic,
            partition,
            next_offset = aggregator.next_offset(),
            replay_from = aggregator.read_from(),
            restored_totals = count,
            policy_definitions_to_seed = aggregator.seeding(),
            "partition assigned"
        );
        restored.push(aggregator);
    }
    Ok(restored)
}
