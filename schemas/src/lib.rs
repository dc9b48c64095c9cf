//! Data contracts of the pipeline: Avro schemas, the Rust types that mirror them, and the
//! Kafka wire codec. No network IO lives here.
//!
//! # Tour
//! - [`usage_event`]: [`UsageEvent`], one billable attempt (or one async job state change), the
//!   record every producer publishes, plus its enums ([`Modality`], [`ImageTier`], [`JobState`],
//!   [`Status`], [`CostSource`]) and its Kafka record key, [`usage_event::partition_key`].
//! - [`control`]: [`ControlDecision`], what gateways must do for a scope (allow, block, degrade),
//!   published on a compacted topic keyed by [`ControlDecision::key`].
//! - [`alert`]: [`Alert`], raised by the alerter and routed to a scope owner.
//! - [`approval`]: [`Approval`], a temporary limit raise approved by a human.
//! - [`dead_letter`]: [`DeadLetter`], a record a service gave up on, with its original bytes.
//! - [`window_total`]: [`WindowTotal`], the aggregator's total of one (scope, window) over one
//!   input partition, published on a compacted topic keyed by [`WindowTotal::compaction_key`];
//!   consumers keep the highest `version` per key and sum the partitions.
//! - [`fixtures`]: a minimal valid event to build test, benchmark and demo events from.
//! - [`money`]: the one decimal type of the project, `decimal(38, 12)`: exact conversions to and
//!   from the Avro wire form and the JSON (de)serializers used by every money field.
//! - [`time`]: timestamps (`timestamp-micros`) and their valid range.
//! - [`avro_enum`](mod@avro_enum): the [`AvroEnum`] trait shared by every enum (`as_str`, `FromStr`, serde).
//! - [`codec`]: [`codec::encode`] / [`codec::decode`] for every [`codec::AvroRecord`], the
//!   registry of every known writer schema, typed errors with a stable `kind()`.
//! - [`ddl`]: ClickHouse DDL (owned by the storage work, not by this module tour).
//!
//! The schemas themselves are the `.avsc` files in `schemas/avro/`, embedded with
//! `include_str!`; `schemas/CONTRACT.md` is the human-readable contract of [`UsageEvent`] and a
//! test keeps it and the current `.avsc` identical.
//!
//! # Wire format
//! Every Kafka record value is Avro [single-object encoding]: `C3 01`, then the 8-byte
//! little-endian CRC-64-AVRO (Rabin) fingerprint of the writer schema's Parsing Canonical Form,
//! then the Avro binary datum. The fingerprint tells a reader which writer schema produced the
//! bytes, without a schema registry service. Money is Avro `bytes` with logical type
//! `decimal(38, 12)`; timestamps are `timestamp-micros` (UTC).
//!
//! Decoding the current version goes through a hand-written reader generated from the schema
//! (faster than apache-avro's generic `Value` path, see `docs/benchmarks.md`). Data written with
//! an older version is decoded by apache-avro with its writer schema, then resolved to the current
//! schema (defaults filled in). apache-avro also parses the schemas; fingerprints follow the
//! specification's canonical form ([`codec::canonical`]). Tests check the fast path against
//! apache-avro in both directions.
//!
//! # Evolution rule
//! - Add fields only at the end and only with a default (nullable fields default to `null`), so
//!   that data written with every older version still resolves.
//! - Never rename, retype or remove a contract field; never reorder enum symbols. Adding an enum
//!   symbol breaks older readers: deploy the readers first.
//! - A change to a schema is a new file with the next version (`usage_event.v3.avsc`); the old
//!   file stays, and [`codec::registry`] keeps every older writer schema so old bytes on Kafka
//!   (retention, replays, dead letters) keep decoding.
//! - `doc` and `default` changes do not change the fingerprint (the canonical form drops them).
//!
//! # Guarantees
//! [`codec::encode`] never rounds: money with more than 12 fractional digits, negative amounts and
//! out-of-range timestamps are errors. [`codec::decode`] never panics on untrusted bytes, and a
//! value it cannot represent exactly is an error, never a wrong number. Every
//! [`codec::DecodeError`] is a data error: dead-letter the record, do not retry it.
//!
//! [single-object encoding]: https://avro.apache.org/docs/1.12.0/specification/#single-object-encoding

pub mod alert;
pub mod approval;
pub mod avro_enum;
pub mod codec;
pub mod control;
pub mod ddl;
pub mod dead_letter;
pub mod fixtures;
pub mod money;
pub mod quota;

/// JSON Schema (2020-12) of the generic webhook's body (`alerter::notify::webhook`).
pub const WEBHOOK_NOTICE_SCHEMA: &str = include_str!("../json/webhook-notice.schema.json");
pub mod time;
pub mod usage_event;
pub mod usage_event_ref;
pub mod window_total;

pub use alert::{Alert, AlertKind, Severity};
pub use approval::Approval;
pub use avro_enum::{AvroEnum, UnknownSymbol};
pub use codec::{decode, encode, AvroRecord, DecodeError, EncodeError};
pub use control::{ControlDecision, DecisionAction};
pub use dead_letter::DeadLetter;
pub use usage_event::{CostSource, ImageTier, JobState, Modality, Status, UsageEvent};
pub use usage_event_ref::UsageEventRef;
pub use window_total::{TotalsKey, WindowTotal};
