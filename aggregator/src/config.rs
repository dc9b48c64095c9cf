//! The aggregator service's configuration, loaded by [`infra::config::load`] (defaults, then an optional
//! TOML file such as `config/aggregator.toml`, then `QUOTAFLOW_*` environment variables).

use infra::config::{ClickHouseConfig, HttpConfig, KafkaConfig};
use serde::{Deserialize, Serialize};

/// Port of the aggregator ops listener (`/metrics`, `/healthz`, `/readyz`).
pub const DEFAULT_HTTP_PORT: u16 = 9101;

/// Everything `run` needs; unknown keys are an error so a misspelled setting cannot be silently ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Brokers and topic names: the aggregator creates the pipeline topics at startup and will consume
    /// usage events and publish window totals.
    pub kafka: KafkaConfig,
    /// Where the migrations run at startup, so every table exists before any service writes.
    pub clickhouse: ClickHouseConfig,
    /// Listener for `/metrics`, `/healthz` and `/readyz`.
    pub http: HttpConfig,
    /// Consumer group of the usage-topic consumer (not built yet; logged at startup). Replicas share
    /// it so each partition is aggregated by one of them; a new group starts from the earliest offset.
    pub group_id: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            http: HttpConfig::with_port(DEFAULT_HTTP_PORT),
            group_id: "quotaflow-aggregator".to_string(),
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
    }
}
