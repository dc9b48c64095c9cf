//! The ingest service's configuration, loaded by [`infra::config::load`] (defaults, then an optional
//! TOML file such as `config/ingest.toml`, then `QUOTAFLOW_*` environment variables).

use infra::config::{ClickHouseConfig, HttpConfig, KafkaConfig};
use serde::{Deserialize, Serialize};

/// Port of the ingest HTTP listener, shared by the event API and the ops endpoints.
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// Everything `run` needs; unknown keys are an error so a misspelled setting cannot be silently ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Brokers and topic names: ingest creates the pipeline topics at startup and will produce usage
    /// events and dead letters to them.
    pub kafka: KafkaConfig,
    /// Where the migrations run at startup, so every table exists before any service writes.
    pub clickhouse: ClickHouseConfig,
    /// Listener for the event API (`/v1/events`, `/openapi.json`) and `/metrics`, `/healthz`, `/readyz`.
    pub http: HttpConfig,
    /// Auth tokens and request limits of the HTTP API.
    pub api: crate::api::ApiConfig,
    /// Limits every event must respect, on every path (HTTP, producer library, Kafka readers).
    pub validation: crate::validation::ValidationConfig,
    /// The price catalog and what to do with events it cannot price.
    pub pricing: crate::pricer::PricingConfig,
    /// In-flight limits of the producer that publishes accepted events.
    pub recorder: crate::recorder::RecorderConfig,
    /// The archiver's section (`quotaflow-archiver` reads this file too, see its `Config`): not
    /// used by ingest, accepted by name so the two share one file.
    #[serde(skip_serializing)]
    pub archive: Option<serde::de::IgnoredAny>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            http: HttpConfig::with_port(DEFAULT_HTTP_PORT),
            api: Default::default(),
            validation: Default::default(),
            pricing: Default::default(),
            recorder: Default::default(),
            archive: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn example_config_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/ingest.toml");
        let config: Config = infra::config::load(Some(&path)).expect("config/ingest.toml loads");
        assert_eq!(config.http.listen.port(), DEFAULT_HTTP_PORT);
        assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(config.api, crate::api::ApiConfig::default());
    }
}
