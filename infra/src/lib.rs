//! The service runtime shared by the quotaflow services, on top of the lean client layer
//! (`quotaflow-client`).
//!
//! Re-exported from the client layer under the paths services have always used:
//! - [`config`]: the connection settings (Kafka with its TLS/SASL security and per-topic
//!   replication, ClickHouse) plus, here, the HTTP listener setting and the loader (defaults → TOML
//!   file → `QUOTAFLOW_*` environment variables).
//! - [`secret`]: a string that never prints itself, for webhook URLs, routing keys and passwords.
//! - [`kafka`]: producer/consumer settings with the delivery guarantees we rely on and the configured
//!   security, a startup connection check that names auth and TLS failures, and topic creation.
//!
//! The runtime itself:
//! - [`clickhouse`]: the HTTP client built from config, and what a failed call means.
//! - [`migrations`]: the versioned ClickHouse migrations runner.
//! - [`dead_letter`]: the writer of dead letters (Kafka topic and ClickHouse `dead_letters`), shared
//!   by every consumer; the letters themselves are built in `schemas::dead_letter`.
//! - [`external_offsets`]: helpers for consumers that keep their offsets in their own store, and
//!   [`checkpointed`]: the one loop those consumers run on.
//! - [`service`]: the lifecycle every service shares (ops endpoints, startup, readiness, shutdown).
//! - [`shutdown`]: the cancellation token every `run(config, shutdown)` takes.
//! - [`telemetry`]: `tracing` setup and the Prometheus `/metrics`, `/healthz`, `/readyz` endpoints.
//! - `testkit` (feature `testkit`, for tests only): unique topics and databases per test, and
//!   polling with deadlines, a TCP proxy that simulates an outage, the SASL_SSL listener of
//!   `dev/stack up --secure`, and a capture of every log line.
//! - [`error`]: the crate's error type, which says whether a failure is worth retrying.
//!
//! A library embedded in someone else's process (the `gateway` client, the `Recorder` producer
//! library) depends on `quotaflow-client` alone, not on this crate: it would otherwise link axum,
//! the ClickHouse client, the Prometheus exporter and figment.

pub mod checkpointed;
pub mod clickhouse;
pub mod config;
pub mod dead_letter;
pub mod error;
pub mod external_offsets;
pub mod failpoint;
pub mod migrations;
pub mod service;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use quotaflow_client::{kafka, retry, secret};

pub use error::{Error, Result};
