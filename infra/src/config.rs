//! Configuration shared by the services, and the loader.
//!
//! Every service config is a serde struct with `deny_unknown_fields` and defaults that work against the
//! local stack (`dev/stack up`). [`load`] layers, from weakest to strongest: the struct's defaults, an
//! optional TOML file, then environment variables named `QUOTAFLOW_<SECTION>__<FIELD>` (double underscore
//! between levels, e.g. `QUOTAFLOW_KAFKA__BROKERS`). Secrets come from the environment only by convention:
//! the TOML files in the repo never hold them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::{Error, Result};

/// Prefix of the environment variables that override config fields.
pub const ENV_PREFIX: &str = "QUOTAFLOW_";

/// Kafka connection and topic names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated (`bootstrap.servers`).
    pub brokers: String,
    /// Names of the topics the pipeline reads and writes.
    pub topics: TopicsConfig,
    /// Extra librdkafka properties applied after ours (e.g. `security.protocol`); for operators who
    /// need a setting we do not model. Our delivery settings (idempotence, acks) cannot be weakened here.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_string(),
            topics: TopicsConfig::default(),
            properties: BTreeMap::new(),
        }
    }
}

/// Topic names. Tests give every run its own names so runs never share state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Priced, validated usage events (Avro single-object encoded), keyed by `event_id`.
    pub usage: String,
    /// Records that could not be decoded or validated, with the reason, source partition and offset.
    pub dead_letter: String,
    /// Window totals published by the aggregator (compacted, keyed by scope and window).
    pub totals: String,
    /// Block/allow/degrade decisions gateways obey (compacted, keyed by scope).
    pub control: String,
    /// Alerts raised by the alerter (audit trail; notifications are sent from it).
    pub alerts: String,
    /// Approval records that raise a limit until a deadline (compacted, keyed by policy and scope).
    pub approvals: String,
    /// Partitions for topics this project creates; the unit of parallelism for consumers.
    pub partitions: i32,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            usage: "quota.usage.v1".to_string(),
            dead_letter: "quota.usage.deadletter.v1".to_string(),
            totals: "quota.totals.v1".to_string(),
            control: "quota.control.v1".to_string(),
            alerts: "quota.alerts.v1".to_string(),
            approvals: "quota.approvals.v1".to_string(),
            partitions: 4,
        }
    }
}

/// ClickHouse connection over HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP endpoint, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database holding the project's tables; created by the migrations if missing.
    pub database: String,
    /// User the services write as (the `analyst` user is read-only and only for queries).
    pub user: String,
    /// Password for `user`; from `QUOTAFLOW_CLICKHOUSE__PASSWORD`, never logged.
    pub password: Secret,
    /// LZ4 compression of HTTP bodies. Must be `false` against ClickHouse 18.16, where compressed
    /// SELECT responses come back empty without an error; modern servers may turn it on.
    pub compression: bool,
    /// Schema validation of query results (needs `RowBinaryWithNamesAndTypes`, which 18.16 lacks).
    /// Must be `false` against 18.16.
    pub validation: bool,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".to_string(),
            database: "quotaflow".to_string(),
            user: "default".to_string(),
            password: Secret::default(),
            compression: false,
            validation: false,
        }
    }
}

/// The HTTP listener each service exposes for `/metrics`, `/healthz` and `/readyz`
/// (and, for ingest, the API itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to bind; port 0 picks a free port (tests).
    pub listen: SocketAddr,
}

impl HttpConfig {
    pub fn with_port(port: u16) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self::with_port(0)
    }
}

/// Loads a config: `T::default()`, then the TOML file at `path` (if given), then `QUOTAFLOW_*`
/// environment variables. Unknown keys anywhere are an error that names them.
pub fn load<T>(path: Option<&Path>) -> Result<T>
where
    T: DeserializeOwned + Serialize + Default,
{
    figment_for::<T>(path)
        .extract()
        .map_err(|error| Error::Config(error.to_string()))
}

/// The layered figment behind [`load`], for callers that add their own layers.
pub fn figment_for<T: Serialize + Default>(path: Option<&Path>) -> Figment {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = path {
        figment = figment.merge(Toml::file_exact(path));
    }
    // QUOTAFLOW_CONFIG names the file itself and QUOTAFLOW_LOG the log filter; neither is a field.
    figment.merge(
        Env::prefixed(ENV_PREFIX)
            .ignore(&["config", "log", "log_format"])
            .split("__"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        kafka: KafkaConfig,
        clickhouse: ClickHouseConfig,
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn env_overrides_file_and_unknown_keys_fail() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[kafka]\nbrokers = \"file:9092\"\n")?;
            jail.set_env("QUOTAFLOW_CLICKHOUSE__DATABASE", "from_env");
            let config: Sample = load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.kafka.brokers, "file:9092");
            assert_eq!(config.clickhouse.database, "from_env");

            jail.set_env("QUOTAFLOW_KAFKA__BROKRES", "typo:9092");
            let error = load::<Sample>(Some(Path::new("c.toml")))
                .unwrap_err()
                .to_string();
            assert!(error.contains("brokres"), "{error}");
            Ok(())
        });
    }
}
