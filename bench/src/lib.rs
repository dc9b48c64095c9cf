//! The side-by-side benchmark (issue 7): this pipeline's aggregator against ClickHouse's own
//! Kafka table engine, with the raw consume ceiling measured in the same run. See
//! `docs/benchmarks.md` ("Against ClickHouse's Kafka engine") for the method and the figures;
//! `bench/run` is the one command.
//!
//! - [`events`]: the seeded event mix (demo workload, priced, duplicate share) and its JSON form.
//! - [`recount`]: the independent recount the totals are checked against.
//! - [`prefill`]: fills the Avro and JSON topics and recounts.
//! - [`topic`]: topic layouts, create/delete, the do-nothing consumer loop.
//! - [`contenders`]: kcat, raw rdkafka, the aggregator, the Kafka engine; what is measured.
//! - [`totals`]: reading totals back from ClickHouse and comparing them.
//! - [`process`]: CPU time and peak RSS of processes.
//! - [`clickhouse_http`]: plain-HTTP ClickHouse queries.
//! - [`report`]: the medians table.
//! - [`cardinality`]: issue 13 point 7, peak memory under a million distinct `user_id`s with and
//!   without `aggregate.max_scopes_per_kind`.
//! - [`restore`]: the restore benchmark (issue 13 point 6): a month of totals history, the
//!   alerter's restore time and peak RSS.

pub mod cardinality;
pub mod clickhouse_http;
pub mod contenders;
pub mod events;
pub mod prefill;
pub mod process;
pub mod recount;
pub mod report;
pub mod restore;
pub mod topic;
pub mod totals;
