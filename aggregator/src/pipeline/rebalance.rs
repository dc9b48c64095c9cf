//! Rebalances: the aggregator's [`PartitionStore`](infra::external_offsets::PartitionStore), which
//! restores newly assigned partitions from their ClickHouse checkpoints and partials (with
//! bounded, retried attempts) before the loop reads them; the callback itself is the one shared
//! with the archiver ([`infra::external_offsets::StoreRebalance`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use infra::external_offsets::lock;
use policy::PolicySet;
use tracing::info;

use crate::partition::{PartitionAggregator, PartitionSettings};
use crate::sink::{Sink, SinkError};

/// How long one attempt at restoring assigned partitions may take before it is retried.
pub(super) const RESTORE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// What one assignment restored: the partitions' processors and the policy set they were
/// restored with (a reload may come between the restore and the loop applying it).
pub(super) type Restored = (Vec<PartitionAggregator>, Arc<PolicySet>);

/// The aggregator's rebalance callback: [`infra::external_offsets::StoreRebalance`] over its
/// checkpoints and partials in ClickHouse.
pub type AggregatorContext = infra::external_offsets::StoreRebalance<AggregatorStore>;

/// A context for `topic` restoring from `sink` with `policies` and `settings`.
pub fn context(
    topic: &str,
    sink: Sink,
    policies: Arc<PolicySet>,
    settings: PartitionSettings,
) -> AggregatorContext {
    infra::external_offsets::StoreRebalance::new(
        topic,
        AggregatorStore {
            topic: topic.to_owned(),
            sink,
            policies: Mutex::new(policies),
            settings,
            high_watermarks: Mutex::new(BTreeMap::new()),
        },
    )
}

/// Where the aggregator's partitions resume: their checkpoints and partials in ClickHouse.
pub struct AggregatorStore {
    /// The usage topic (its statistics feed the lag gauge).
    topic: String,
    pub(super) sink: Sink,
    /// The policy set in force (swapped by reloads): partitions are restored with it.
    pub(super) policies: Mutex<Arc<PolicySet>>,
    pub(super) settings: PartitionSettings,
    /// End offset per partition of `topic`, from librdkafka's statistics (for the lag gauge).
    pub(super) high_watermarks: Mutex<BTreeMap<i32, i64>>,
}

impl infra::external_offsets::PartitionStore for AggregatorStore {
    type Restored = Restored;

    /// Restores `partitions` from ClickHouse (retried for up to 60 s, well within
    /// `max.poll.interval.ms`); each starts reading at its duplicate filter's replay start.
    fn restore(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<(infra::external_offsets::StartOffsets, Restored), String> {
        let policies = Arc::clone(&lock(&self.policies));
        let (sink, topic, settings, partitions) = (
            self.sink.clone(),
            topic.to_owned(),
            self.settings.clone(),
            partitions.to_vec(),
        );
        let restored_with = Arc::clone(&policies);
        let restored = infra::external_offsets::block_on_retrying(
            "restoring partitions",
            Duration::from_secs(60),
            RESTORE_ATTEMPT_TIMEOUT,
            infra::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            SinkError::is_retryable,
            move || {
                let (sink, topic, policies, settings, partitions) = (
                    sink.clone(),
                    topic.clone(),
                    Arc::clone(&policies),
                    settings.clone(),
                    partitions.clone(),
                );
                async move { restore(&sink, &topic, &policies, &settings, &partitions).await }
            },
        )?;
        let offsets = restored
            .iter()
            .map(|partition| (partition.partition(), Some(partition.read_from())))
            .collect();
        Ok((offsets, (restored, restored_with)))
    }

    /// Keeps the end offsets librdkafka learnt from its fetch responses. The lag gauge used to ask
    /// the broker for them from the loop: on a quiet topic that request queues behind the
    /// consumer's own long-poll fetch on the same connection (up to `fetch.wait.max.ms` per
    /// partition, and a request that times out there makes librdkafka drop the connection), so
    /// the first event after a pause waited 0.5–1.5 s, or seconds, to be read.
    fn on_statistics(&self, statistics: &rdkafka::Statistics) {
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
