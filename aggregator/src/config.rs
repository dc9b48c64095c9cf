//! The aggregator service's configuration, loaded by [`infra::config::load`] (defaults, then an optional
//! TOML file such as `config/aggregator.toml`, then `QUOTAFLOW_*` environment variables).

use std::path::PathBuf;
use std::time::Duration;

use infra::config::{ClickHouseConfig, HttpConfig, KafkaConfig};
use quotaflow_windows::LatenessPolicy;
use serde::{Deserialize, Serialize};

use crate::partition::PartitionSettings;
use crate::state::{TotalsConfig, DEFAULT_ALLOWED_LATENESS_SECS};

/// Port of the aggregator ops listener (`/metrics`, `/healthz`, `/readyz`).
pub const DEFAULT_HTTP_PORT: u16 = 9101;

/// Everything `run` needs; unknown keys are an error so a misspelled setting cannot be silently ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Brokers and topic names: the aggregator consumes `topics.usage`, publishes `topics.totals`
    /// and dead-letters to `topics.dead_letter`; it creates the pipeline topics at startup.
    pub kafka: KafkaConfig,
    /// Where the migrations run at startup and the partials and checkpoints are written.
    pub clickhouse: ClickHouseConfig,
    /// Listener for `/metrics`, `/healthz` and `/readyz`.
    pub http: HttpConfig,
    /// Consumer group of the usage-topic consumer. Replicas share it so each partition is
    /// aggregated by one of them at a time; checkpoints are per group.
    pub group_id: String,
    /// Windows, lateness, duplicates and flushing.
    pub aggregate: AggregateConfig,
    /// Limits every usage event must respect, judged at the record's Kafka timestamp: the same
    /// section as ingest's (`[validation]`), and it must hold the same values as the archiver's so
    /// both refuse the same records (`quotaflow_admission`).
    pub validation: quotaflow_admission::validation::ValidationConfig,
    /// The price catalog events are priced with (a reported cost wins, else the catalog, else
    /// unpriced; a producer's envelope is recomputed): the same section as ingest's
    /// (`[pricing]`), and it must hold the same values as the archiver's. Default: the catalog
    /// embedded in the `pricing` crate.
    pub pricing: quotaflow_admission::pricer::PricingConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            http: HttpConfig::with_port(DEFAULT_HTTP_PORT),
            group_id: "quotaflow-aggregator".to_string(),
            aggregate: AggregateConfig::default(),
            validation: quotaflow_admission::validation::ValidationConfig::default(),
            pricing: quotaflow_admission::pricer::PricingConfig::default(),
        }
    }
}

/// Which totals go to the totals topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PublishScopes {
    /// Only `policy:<id>@<definition>` scopes.
    #[default]
    Policies,
    /// Every scope.
    All,
}

/// How the aggregator counts and flushes (`[aggregate]`, `QUOTAFLOW_AGGREGATE__*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregateConfig {
    /// Directory of policy files (the alerter reads the same): every windowed policy adds its
    /// compound scope. None: single-dimension scopes only.
    pub policies_dir: Option<PathBuf>,
    /// How often `policies_dir` is checked for changes (as the alerter's
    /// `alert.reload_interval_ms`): a change that loads is applied without a restart (new or
    /// changed definitions are seeded from the usage topic before their totals are published),
    /// one that does not is logged, counted (`quotaflow_aggregator_policy_reloads_total{outcome="failed"}`)
    /// and the last good set stays. 0 = load once at startup.
    pub reload_interval_ms: u64,
    /// Flush (write totals, publish them, checkpoint) at least this often while events arrive.
    pub flush_interval_ms: u64,
    /// Flush early after this many records.
    pub flush_max_records: usize,
    /// Records still read while a flush is being retried (ClickHouse down or slow) before
    /// reading pauses. Until then the aggregator keeps counting and publishing policy totals, so
    /// enforcement goes on through an outage and only the durable write (and the checkpoint)
    /// waits. Memory grows with the distinct totals and dead letters those records change, not
    /// with the records. 0 = pause at the first failed flush.
    pub read_ahead_while_failing: usize,
    /// How long after its end (on the partition's watermark) a window still takes events.
    pub allowed_lateness_secs: u64,
    /// How long (in event time behind the watermark) event ids are remembered to drop
    /// duplicates; at least the allowed lateness.
    pub dedup_horizon_secs: u64,
    /// Most event ids remembered per partition. Reaching it forgets the oldest early: events
    /// older than the oldest remembered one are then refused as too late to deduplicate
    /// (`quotaflow_aggregator_dedup_evicted_early_total`, `quotaflow_aggregator_dedup_horizon_seconds`).
    pub dedup_max_ids: usize,
    /// When the usage topic's partition count last changed (RFC 3339), once every producer
    /// writes with the new count. Adding partitions moves keys, so a copy written after it may
    /// land in a partition whose filter never saw its first copy: records written at or after it
    /// about events before it are refused unless the filter recognizes them. None: the count
    /// never changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedup_partitions_changed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Pending asynchronous jobs tracked per scope.
    pub pending_jobs_per_scope: usize,
    /// Issue 13 point 7: distinct values with their own totals per scope kind, partition and
    /// window (the UTC month for a dimension, the policy's window for a policy); the events of
    /// further values are counted under the kind's overflow bucket `__overflow__` (still capped
    /// by policies, `quotaflow_aggregator_scope_overflows_total`, and an alert from the alerter). Bounds
    /// the memory one kind can take whatever the number of distinct `user_id`s. 0: no limit.
    pub max_scopes_per_kind: usize,
    /// Per-kind overrides of `max_scopes_per_kind`, by `scope_kind`: a dimension name
    /// (`user_id`, `api_key_id`, …) or `policy:<id>`.
    pub max_scopes_by_kind: std::collections::BTreeMap<String, usize>,
    /// Publish totals on `kafka.topics.totals` (the alerter follows it).
    pub publish_totals: bool,
    /// Which totals are published: `policies` (the `policy:<id>@<definition>` scopes, all the alerter
    /// evaluates; the default) or `all` (also the single-dimension scopes, ten times the records).
    /// ClickHouse always gets every total.
    pub publish_scopes: PublishScopes,
    /// Policy totals changed since the last publish go to the totals topic this often, ahead of
    /// the durable flush (the flush publishes them again with the same version); 0 = only at
    /// flushes. This is what keeps enforcement sub-second with a long `flush_interval_ms`.
    pub publish_interval_ms: u64,
    /// Workers for the per-record work (decode and admission, duplicates and totals; two threads
    /// each, see `crate::workers`); 0 = one per core. Partitions are spread over them; more
    /// workers than partitions leaves some idle.
    pub workers: usize,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        let partition = PartitionSettings::default();
        Self {
            policies_dir: None,
            reload_interval_ms: 2_000,
            flush_interval_ms: 500,
            flush_max_records: 200_000,
            read_ahead_while_failing: 2_000_000,
            allowed_lateness_secs: DEFAULT_ALLOWED_LATENESS_SECS,
            dedup_horizon_secs: partition.dedup_horizon.as_secs(),
            dedup_max_ids: partition.dedup_max_ids,
            dedup_partitions_changed_at: partition.partitions_changed_at,
            pending_jobs_per_scope: partition.totals.pending_jobs_per_scope,
            max_scopes_per_kind: partition.totals.max_scopes_per_kind,
            max_scopes_by_kind: std::collections::BTreeMap::new(),
            publish_totals: true,
            publish_scopes: PublishScopes::Policies,
            publish_interval_ms: 20,
            workers: 0,
        }
    }
}

impl AggregateConfig {
    /// Checks the settings; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.flush_interval_ms == 0 || self.flush_interval_ms > 60_000 {
            return Err("aggregate.flush_interval_ms must be in 1..=60000".to_owned());
        }
        if self.flush_max_records == 0 {
            return Err("aggregate.flush_max_records must be at least 1".to_owned());
        }
        if self.dedup_horizon_secs < self.allowed_lateness_secs {
            return Err(format!(
                "aggregate.dedup_horizon_secs ({}) must be at least aggregate.allowed_lateness_secs \
                 ({}): a duplicate older than the horizon but within lateness would count twice",
                self.dedup_horizon_secs, self.allowed_lateness_secs
            ));
        }
        if self.dedup_max_ids == 0 || self.pending_jobs_per_scope == 0 {
            return Err(
                "aggregate.dedup_max_ids and aggregate.pending_jobs_per_scope must be at least 1"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// Workers to start: `workers`, or one per core (a worker is two threads, see
    /// [`crate::workers`]).
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            workers => workers,
        }
    }

    /// The per-partition settings these make, admitting records with `admission`.
    pub fn partition_settings(
        &self,
        admission: quotaflow_admission::Admission,
    ) -> PartitionSettings {
        let defaults = TotalsConfig::default();
        PartitionSettings {
            totals: TotalsConfig {
                lateness: LatenessPolicy::new(Duration::from_secs(self.allowed_lateness_secs)),
                pending_jobs_per_scope: self.pending_jobs_per_scope,
                max_scopes_per_kind: self.max_scopes_per_kind,
                max_scopes_by_kind: std::sync::Arc::new(self.max_scopes_by_kind.clone()),
                ..defaults
            },
            dedup_horizon: Duration::from_secs(self.dedup_horizon_secs),
            dedup_max_ids: self.dedup_max_ids,
            admission,
            partitions_changed_at: self.dedup_partitions_changed_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn example_config_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/aggregator.toml");
        let config: Config =
            infra::config::load(Some(&path)).expect("config/aggregator.toml loads");
        assert_eq!(config.http.listen.port(), DEFAULT_HTTP_PORT);
        assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(config.group_id, "quotaflow-aggregator");
        config.aggregate.validate().unwrap();
    }

    #[test]
    fn a_dedup_horizon_shorter_than_lateness_is_refused() {
        let config = AggregateConfig {
            dedup_horizon_secs: 60,
            ..AggregateConfig::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .contains("dedup_horizon_secs"));
    }
}
