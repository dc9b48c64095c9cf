//! The lean client layer: what a gateway or a producer library embedded in someone else's process
//! needs to talk to quotaflow's Kafka, and nothing a service runtime needs.
//!
//! - [`config`]: serde config structs for Kafka (brokers, topic names, `[kafka.security]` TLS/SASL/
//!   mTLS, per-topic replication, extra librdkafka properties) and ClickHouse connection settings,
//!   validated when deserialized.
//! - [`secret`]: a string that never prints itself, for passwords, webhook URLs and tokens.
//! - [`kafka`]: producer/consumer settings with the delivery guarantees the pipeline relies on and
//!   the configured security, a connection check that names auth and TLS failures, topic creation,
//!   and which Kafka errors are worth retrying.
//! - [`retry`]: the one back-off rule (exponential, with jitter) every retry loop uses.
//! - [`error`]: the crate's error type, which says whether a failure is worth retrying.
//!
//! # What is not here, on purpose
//! The service runtime lives in `infra`, which re-exports these modules under the same paths
//! (`infra::kafka`, `infra::config`, `infra::secret`): the config loader (figment), the ClickHouse
//! client and its migrations, the ops HTTP router (axum), the Prometheus exporter, the service
//! lifecycle. A crate that depends on this one only (the `gateway` client, the `Recorder` producer
//! library) links none of them; `gateway/tests/dependency_tree.rs` checks that.

pub mod config;
pub mod error;
pub mod kafka;
pub mod retry;
pub mod secret;

pub use error::{Error, Result};
