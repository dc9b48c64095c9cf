//! The archiver's configuration, loaded by [`infra::config::load`] (defaults, then an optional
//! TOML file, then `QUOTAFLOW_*` environment variables).
//!
//! The archiver reads the **ingest service's file** (`config/ingest.toml`): both must validate
//! and price with the same `[validation]` and `[pricing]`, so they share one file. The sections
//! only ingest uses (`[http]`, `[api]`, `[recorder]`) are accepted by name and ignored; any other
//! unknown key is an error, so a misspelled setting cannot be silently ignored.

use infra::config::{ClickHouseConfig, KafkaConfig};
use quotaflow_admission::pricer::PricingConfig;
use quotaflow_admission::validation::ValidationConfig;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::ArchiveConfig;

/// Everything [`crate::run`] needs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Brokers and topic names: the usage topic read, the dead-letter topic written; the archiver
    /// creates the pipeline topics at startup if missing.
    pub kafka: KafkaConfig,
    /// Where `usage_events_raw` and `dead_letters` live; the migrations run there at startup.
    pub clickhouse: ClickHouseConfig,
    /// Limits every event must respect: the same section as ingest's and the aggregator's, so all
    /// three refuse the same records.
    pub validation: ValidationConfig,
    /// The price catalog every archived event is priced with (whatever envelope it carries).
    pub pricing: PricingConfig,
    /// Batching and group settings of the archive consumer.
    pub archive: ArchiveConfig,
    /// Ingest's HTTP listener (shared file): not used here.
    #[serde(skip_serializing)]
    pub http: Option<IgnoredAny>,
    /// Ingest's HTTP API settings (shared file): not used here.
    #[serde(skip_serializing)]
    pub api: Option<IgnoredAny>,
    /// Ingest's producer settings (shared file): not used here.
    #[serde(skip_serializing)]
    pub recorder: Option<IgnoredAny>,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_ingest_config_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/ingest.toml");
        let config: Config = infra::config::load(Some(&path)).expect("config/ingest.toml loads");
        assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
        assert!(config.api.is_some(), "the [api] section is accepted");
        assert_eq!(config.archive, ArchiveConfig::default());
    }

    #[test]
    fn other_unknown_sections_are_refused() {
        let refused = toml::from_str::<Config>("[archiv]\ngroup_id = \"x\"\n");
        assert!(refused.is_err());
    }
}
