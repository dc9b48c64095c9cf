//! The main job's workload and scripted run: [`workload`], the deterministic synthetic gateway
//! fleet (the aggregator's stage benchmark writes it straight to Kafka); [`scenario`], the scripted
//! scenarios on top of it; [`run`], what `quotaflow-demo` (README command 1) and the end-to-end
//! test run.

pub mod keys;
pub mod run;
pub mod scenario;
/// The workload generator (its own crate, shared with tests and benchmarks).
pub use quotaflow_workload as workload;
