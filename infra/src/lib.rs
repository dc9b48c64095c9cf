//! Shared plumbing for the quotaflow services.
//!
//! - [`config`]: serde config structs shared by every service (Kafka with its TLS/SASL security and
//!   per-topic replication, ClickHouse, HTTP) and the loader (defaults → TOML file → `QUOTAFLOW_*`
//!   environment variables).
//! - [`secret`]: a string that never prints itself, for webhook URLs, routing keys and passwords.
//! - [`kafka`]: producer/consumer settings with the delivery guarantees we rely on and the configured
//!   security, a startup connection check that names auth and TLS failures, and topic creation.
//! - [`clickhouse`]: the HTTP client built from config.
//! - [`migrations`]: the versioned ClickHouse migrations runner.
//! - [`service`]: the lifecycle every service shares (ops endpoints, startup, readiness, shutdown).
//! - [`shutdown`]: the cancellation token every `run(config, shutdown)` takes.
//! - [`telemetry`]: `tracing` setup and the Prometheus `/metrics`, `/healthz`, `/readyz` endpoints.
//! - `testkit` (feature `testkit`, for tests only): unique topics and databases per test, and
//!   polling with deadlines, a TCP proxy that simulates an outage, the SASL_SSL listener of
//!   `dev/stack up --secure`, and a capture of every log line.
//! - [`error`]: the crate's error type, which says whether a failure is worth retrying.

pub mod clickhouse;
pub mod config;
pub mod error;
pub mod external_offsets;
pub mod kafka;
pub mod migrations;
pub mod secret;
pub mod service;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use error::{Error, Result};
