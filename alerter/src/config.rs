//! The alerter service's configuration, loaded by [`infra::config::load`] (defaults, then an optional
//! TOML file such as `config/alerter.toml`, then `QUOTAFLOW_*` environment variables).

use std::path::PathBuf;

use infra::config::{ClickHouseConfig, HttpConfig, KafkaConfig};
use serde::{Deserialize, Serialize};

use crate::notify::NotifyConfig;

/// Port of the alerter ops listener (`/metrics`, `/healthz`, `/readyz`).
pub const DEFAULT_HTTP_PORT: u16 = 9102;

/// Everything `run` needs; unknown keys are an error so a misspelled setting cannot be silently ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Brokers and topic names: the alerter creates the pipeline topics at startup and will consume
    /// totals and approvals and produce alerts and control decisions.
    pub kafka: KafkaConfig,
    /// Where the migrations run at startup, so every table exists before any service writes.
    pub clickhouse: ClickHouseConfig,
    /// Listener for `/metrics`, `/healthz` and `/readyz`.
    pub http: HttpConfig,
    /// Prefix of the alerter's consumer group ids. The alerter reads every partition of the
    /// totals, approvals, control and alerts topics itself (assigned, not balanced), so the group
    /// only names it in the broker's tools; it commits nothing.
    pub group_id: String,
    /// Policies and evaluation.
    pub alert: AlertSettings,
    /// Slack and PagerDuty; secrets from the environment.
    pub notify: NotifyConfig,
    /// Limits every usage event must respect (the alerter reads usage events for per-action
    /// rules and job gauges): the same section as ingest's and the aggregator's
    /// (`[validation]`), so a record refused there is ignored here (`quotaflow_admission`).
    pub validation: quotaflow_admission::validation::ValidationConfig,
    /// The price catalog usage events are priced with (a reported cost wins, else the catalog,
    /// else unpriced; a producer's envelope is recomputed, never trusted): the same section as
    /// the aggregator's (`[pricing]`). Fallback budgets add up these costs.
    pub pricing: quotaflow_admission::pricer::PricingConfig,
}

/// Policies and evaluation timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    /// The policy directory (the aggregator must read the same one).
    pub policies_dir: PathBuf,
    /// How often the directory is checked for changes; a change that loads replaces the policies
    /// without a restart, one that does not is logged and the previous policies stay.
    pub reload_interval_ms: u64,
    /// How often windows and approvals are checked for their end.
    pub tick_interval_ms: u64,
    /// The price catalog (LiteLLM JSON) whose deprecation dates and preview flags model rules
    /// use; absent = the embedded sample catalog (as ingest).
    pub catalog_path: Option<PathBuf>,
    /// Anomaly baselines.
    pub anomaly: crate::anomaly::AnomalySettings,
    /// Per-action retry and fallback rules forget actions idle this long (and the usage topic is
    /// re-read this far back at startup).
    pub action_horizon_secs: u64,
    /// Most actions tracked at once.
    pub max_actions: usize,
    /// How far back the usage topic is re-read at startup to rebuild the async jobs in flight
    /// (only when a `concurrent_jobs` policy exists); must exceed the longest job.
    pub job_lookback_secs: u64,
    /// Issue 13 point 7: a job in flight this long without a terminal event (succeeded, failed,
    /// cancelled) leaves its `concurrent_jobs` gauge, with a page naming the job, its scope and
    /// owner. At most `job_lookback_secs`, so a job rebuilt after a restart still ages out.
    pub job_max_age_secs: u64,
    /// How long the totals of an ended window are still held (late partials still count);
    /// alert dedup keys of a window are held twice as long after its end, then forgotten.
    pub ended_window_keep_secs: u64,
    /// Longest wait for the control, alerts, approvals and totals topics to be read to their end
    /// at startup.
    pub restore_timeout_secs: u64,
    /// Capacity of each of the two queues between the decision loop and the tasks that write
    /// audit rows (ClickHouse) and send notifications (webhooks). The loop never waits for room:
    /// what does not fit waits in an overflow buffer (`effect_overflow_limit`).
    pub effect_queue_capacity: usize,
    /// Most effects (audit rows, notifications) kept per queue in the overflow buffer while the
    /// queue is full, e.g. while ClickHouse is down. Far above any realistic backlog (a
    /// decision or alert is about 1 KB); beyond it the newest effect is dropped, logged and
    /// counted (`quotaflow_alerter_effects_dropped_total`) so decisions still go out.
    pub effect_overflow_limit: usize,
}

impl AlertSettings {
    /// The price catalog model rules use: `catalog_path`, or the embedded sample.
    pub fn load_catalog(&self) -> Result<pricing::Catalog, String> {
        match &self.catalog_path {
            Some(path) => pricing::Catalog::load_path(path, None)
                .map_err(|error| format!("price catalog {}: {error}", path.display())),
            None => Ok(pricing::Catalog::embedded_sample()),
        }
    }
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            policies_dir: PathBuf::from("policy/examples"),
            reload_interval_ms: 2_000,
            tick_interval_ms: 200,
            catalog_path: None,
            anomaly: crate::anomaly::AnomalySettings::default(),
            action_horizon_secs: 900,
            max_actions: 1_000_000,
            job_lookback_secs: 6 * 3600,
            job_max_age_secs: 6 * 3600,
            ended_window_keep_secs: 3600,
            restore_timeout_secs: 120,
            effect_queue_capacity: 10_000,
            effect_overflow_limit: 200_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            http: HttpConfig::with_port(DEFAULT_HTTP_PORT),
            group_id: "quotaflow-alerter".to_string(),
            alert: AlertSettings::default(),
            notify: NotifyConfig::default(),
            validation: quotaflow_admission::validation::ValidationConfig::default(),
            pricing: quotaflow_admission::pricer::PricingConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn example_config_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/alerter.toml");
        let config: Config = infra::config::load(Some(&path)).expect("config/alerter.toml loads");
        assert_eq!(config.http.listen.port(), DEFAULT_HTTP_PORT);
        assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(config.group_id, "quotaflow-alerter");
    }
}
