//! Configuration loading for the services, and the HTTP listener setting.
//!
//! The connection settings (Kafka with its TLS/SASL security and per-topic replication,
//! ClickHouse) are the client layer's (`quotaflow_client::config`) and re-exported here, so
//! `infra::config::KafkaConfig` and `quotaflow_client::config::KafkaConfig` are the same type.
//!
//! Every service config is a serde struct with `deny_unknown_fields` and defaults that work against the
//! local stack (`dev/stack up`). [`load`] layers, from weakest to strongest: the struct's defaults, an
//! optional TOML file, then environment variables named `QUOTAFLOW_<SECTION>__<FIELD>` (double underscore
//! between levels, e.g. `QUOTAFLOW_KAFKA__BROKERS`). Secrets come from the environment only by convention:
//! the TOML files in the repo never hold them.

use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map as FigmentMap, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use quotaflow_client::config::*;

use crate::Result;

/// Prefix of the environment variables that override config fields.
pub const ENV_PREFIX: &str = "QUOTAFLOW_";

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
    // Lossy: environment values stay text (see `EnvText`) and become numbers or booleans where
    // the field is one.
    figment_for::<T>(path)
        .extract_lossy()
        .map_err(|error| quotaflow_client::Error::Config(error.to_string()).into())
}

/// The layered figment behind [`load`], for callers that add their own layers.
pub fn figment_for<T: Serialize + Default>(path: Option<&Path>) -> Figment {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = path {
        figment = figment.merge(Toml::file_exact(path));
    }
    // QUOTAFLOW_CONFIG names the file itself, QUOTAFLOW_LOG the log filter and QUOTAFLOW_TEST_*
    // the test suite's servers; none is a field.
    figment.merge(EnvText(
        Env::prefixed(ENV_PREFIX)
            .ignore(&["config", "log", "log_format"])
            .filter(|key| !key.starts_with("test_"))
            .split("__"),
    ))
}

/// The `QUOTAFLOW_*` variables as figment's [`Env`] reads them, except that a value figment would
/// read as a number or boolean stays the text it was: `QUOTAFLOW_KAFKA__SECURITY__PASSWORD=0012`
/// must be the password `0012`, not the number 12 (nor a type error for a string field). Lists and
/// maps (`QUOTAFLOW_API__TOKENS='{a="..."}'`) are parsed as by `Env`.
struct EnvText(Env);

impl Provider for EnvText {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> std::result::Result<FigmentMap<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, text) in self.0.iter() {
            let value = match text.parse::<Value>() {
                Ok(Value::Num(..) | Value::Bool(..)) | Err(_) => Value::from(text),
                Ok(parsed) => parsed,
            };
            if let Value::Dict(_, nested) = figment::util::nest(key.as_str(), value) {
                merge_dicts(&mut dict, nested);
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Merges `from` into `into`, recursing into dictionaries both have; a later scalar replaces.
fn merge_dicts(into: &mut Dict, from: Dict) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Dict(_, existing)), Value::Dict(_, nested)) => {
                merge_dicts(existing, nested)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
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
            // The tests' own QUOTAFLOW_TEST_* variables are not config fields.
            jail.clear_env();
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

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn kafka_security_loads_from_the_environment_and_is_validated_at_load() {
        figment::Jail::expect_with(|jail| {
            // The tests' own QUOTAFLOW_TEST_* variables are not config fields.
            jail.clear_env();
            jail.create_file(
                "c.toml",
                "[kafka.security]\nprotocol = \"sasl_ssl\"\nusername = \"svc\"\n\
                 ca_file = \"/etc/kafka/ca.pem\"\n",
            )?;
            jail.set_env("QUOTAFLOW_KAFKA__SECURITY__PASSWORD", "0012345");
            jail.set_env("QUOTAFLOW_TEST_KAFKA", "127.0.0.1:19092");
            let config: Sample = load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            let security = &config.kafka.security;
            assert_eq!(security.protocol, SecurityProtocol::SaslSsl);
            assert_eq!(security.password.expose(), "0012345");
            assert!(!format!("{config:?}").contains("12345"));

            jail.set_env("QUOTAFLOW_KAFKA__SECURITY__USERNAME", "");
            let error = load::<Sample>(Some(Path::new("c.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("kafka.security.username is required"),
                "{error}"
            );

            jail.set_env("QUOTAFLOW_KAFKA__SECURITY__USERNAME", "svc");
            jail.set_env("QUOTAFLOW_KAFKA__TOPICS__REPLICATION__USAGE__FACTOR", "3");
            jail.set_env(
                "QUOTAFLOW_KAFKA__TOPICS__REPLICATION__USAGE__MIN_INSYNC_REPLICAS",
                "2",
            );
            let config: Sample = load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(
                config.kafka.topics.replication.usage,
                Replication {
                    factor: 3,
                    min_insync_replicas: 2
                }
            );
            assert_eq!(
                config.kafka.topics.replication.totals,
                Replication::SINGLE_NODE
            );
            Ok(())
        });
    }
}
