//! Connection settings shared by every Kafka and ClickHouse client: serde structs with
//! `deny_unknown_fields` and defaults that work against the local stack (`dev/stack up`).
//!
//! Contradictory security or replication settings are refused when deserialized, with a message
//! naming the setting (see [`KafkaSecurity`], [`Replication`]). Loading them from files and the
//! environment is the service runtime's job (`infra::config::load`); an embedding application may
//! build them in code or deserialize them from its own config.

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

mod kafka_security;
mod replication;

pub use kafka_security::{KafkaProperties, KafkaSecurity, SaslMechanism, SecurityProtocol};
pub use replication::{Replication, TopicsReplication};

/// Kafka connection and topic names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated (`bootstrap.servers`).
    pub brokers: String,
    /// How clients authenticate and encrypt: TLS, SASL, CA and client certificates. Applied to every
    /// Kafka client of every service, the CLI and the gateway library.
    pub security: KafkaSecurity,
    /// Names of the topics the pipeline reads and writes.
    pub topics: TopicsConfig,
    /// Extra librdkafka properties applied after ours; for operators who need a setting we do not
    /// model. Our delivery settings (idempotence, acks) cannot be weakened here, the settings
    /// `security` models cannot be set here, and values of keys that look secret (`password`,
    /// `secret`, `token`, `sasl.jaas`) are redacted in `Debug` and serialized output.
    pub properties: KafkaProperties,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_string(),
            security: KafkaSecurity::default(),
            topics: TopicsConfig::default(),
            properties: KafkaProperties::default(),
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
    /// Replication factor and `min.insync.replicas` of each topic, used when the services create
    /// it (an existing topic is left as it is). 1/1 suits the single-node local stack; production
    /// wants 3/2 (docs/operations.md, "Topics").
    pub replication: TopicsReplication,
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
            replication: TopicsReplication::default(),
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
