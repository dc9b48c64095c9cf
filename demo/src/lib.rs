//! The demo's reusable part: [`workload`], the deterministic synthetic gateway workload that
//! `quotaflow-demo` sends to ingest and the aggregator's stage benchmark writes straight to Kafka.

pub mod scenario;
pub mod workload;
