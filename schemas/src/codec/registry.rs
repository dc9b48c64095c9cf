//! Every known writer schema, current and older, with its fingerprint.
//!
//! A reader finds the writer schema of a record by the fingerprint in its header. The registry
//! is the list of `.avsc` files in `schemas/avro/`; a new schema version is a new file added
//! here, and older versions are never removed (old bytes stay on Kafka, in replays and in dead
//! letters). Parsing happens once, on first use.

use super::canonical::{parsing_canonical_form, rabin_fingerprint};
use apache_avro::Schema;
use std::sync::OnceLock;

/// Namespace of every record.
pub const NAMESPACE: &str = "dev.quotaflow";

/// `usage_event.v1.avsc`: the first published `UsageEvent`, contract fields only.
pub const USAGE_EVENT_V1_AVSC: &str = include_str!("../../avro/usage_event.v1.avsc");
/// `usage_event.v2.avsc`: the current `UsageEvent`, v1 + the pricing envelope.
pub const USAGE_EVENT_V2_AVSC: &str = include_str!("../../avro/usage_event.v2.avsc");
/// `control_decision.v1.avsc`: the first published `ControlDecision`.
pub const CONTROL_DECISION_V1_AVSC: &str = include_str!("../../avro/control_decision.v1.avsc");
/// `control_decision.v2.avsc`: v1 + `absent` (dimensions the scope's requests lack).
pub const CONTROL_DECISION_V2_AVSC: &str = include_str!("../../avro/control_decision.v2.avsc");
/// `control_decision.v3.avsc`: the current `ControlDecision`, v2 + `shadow_action` (what a
/// policy in shadow mode would do).
pub const CONTROL_DECISION_V3_AVSC: &str = include_str!("../../avro/control_decision.v3.avsc");
/// `alert.v1.avsc`: the current `Alert`.
pub const ALERT_V1_AVSC: &str = include_str!("../../avro/alert.v1.avsc");
/// `approval.v1.avsc`: the first `Approval`, unsigned.
pub const APPROVAL_V1_AVSC: &str = include_str!("../../avro/approval.v1.avsc");
/// `approval.v2.avsc`: the current `Approval`, v1 + the approver's signature.
pub const APPROVAL_V2_AVSC: &str = include_str!("../../avro/approval.v2.avsc");
/// `dead_letter.v1.avsc`: the current `DeadLetter`.
pub const DEAD_LETTER_V1_AVSC: &str = include_str!("../../avro/dead_letter.v1.avsc");
/// `window_total.v1.avsc`: the current `WindowTotal`.
pub const WINDOW_TOTAL_V1_AVSC: &str = include_str!("../../avro/window_total.v1.avsc");

/// One `.avsc` file known to the registry.
#[derive(Debug, Clone, Copy)]
pub struct SchemaFile {
    /// Full name of the record, e.g. `dev.quotaflow.UsageEvent`.
    pub record_name: &'static str,
    /// Version from the file name (`usage_event.v2.avsc` → 2).
    pub version: u32,
    /// File name in `schemas/avro/`.
    pub file_name: &'static str,
    /// The schema JSON.
    pub json: &'static str,
}

/// Every schema file, oldest version first within a record; the last one of a record is current.
pub const SCHEMA_FILES: &[SchemaFile] = &[
    SchemaFile {
        record_name: "dev.quotaflow.UsageEvent",
        version: 1,
        file_name: "usage_event.v1.avsc",
        json: USAGE_EVENT_V1_AVSC,
    },
    SchemaFile {
        record_name: "dev.quotaflow.UsageEvent",
        version: 2,
        file_name: "usage_event.v2.avsc",
        json: USAGE_EVENT_V2_AVSC,
    },
    SchemaFile {
        record_name: "dev.quotaflow.ControlDecision",
        version: 1,
        file_name: "control_decision.v1.avsc",
        json: CONTROL_DECISION_V1_AVSC,
    },
    SchemaFile {
        record_name: "dev.quotaflow.ControlDecision",
        version: 2,
        file_name: "control_decision.v2.avsc",
        json: CONTROL_DECISION_V2_AVSC,
    },
    SchemaFile {
        record_name: "dev.quotaflow.ControlDecision",
        version: 3,
        file_name: "control_decision.v3.avsc",
        json: CONTROL_DECISION_V3_AVSC,
    },
    SchemaFile {
        record_name: "dev.quotaflow.Alert",
        version: 1,
        file_name: "alert.v1.avsc",
        json: ALERT_V1_AVSC,
    },
    SchemaFile {
        record_name: "dev.quotaflow.Approval",
        version: 1,
        file_name: "approval.v1.avsc",
        json: APPROVAL_V1_AVSC,
    },
    SchemaFile {
        record_name: "dev.quotaflow.Approval",
        version: 2,
        file_name: "approval.v2.avsc",
        json: APPROVAL_V2_AVSC,
    },
    SchemaFile {
        record_name: "dev.quotaflow.DeadLetter",
        version: 1,
        file_name: "dead_letter.v1.avsc",
        json: DEAD_LETTER_V1_AVSC,
    },
    SchemaFile {
        record_name: "dev.quotaflow.WindowTotal",
        version: 1,
        file_name: "window_total.v1.avsc",
        json: WINDOW_TOTAL_V1_AVSC,
    },
];

/// A parsed schema file with its fingerprint.
#[derive(Debug)]
pub struct RegisteredSchema {
    /// The file it was parsed from.
    pub file: SchemaFile,
    /// The parsed schema (for apache-avro resolution and the generic path).
    pub schema: Schema,
    /// Parsing Canonical Form (per the specification, see [`super::canonical`]): what the
    /// fingerprint is computed over.
    pub canonical_form: String,
    /// CRC-64-AVRO (Rabin) of the canonical form, little-endian, as in the wire header.
    pub fingerprint: [u8; 8],
    /// Whether this is the newest version of its record (what the encoder writes).
    pub is_current: bool,
}

/// Cap on what apache-avro may allocate for one length prefix while decoding (its default is
/// 512 MiB): older-version data goes through apache-avro, which allocates a claimed length before
/// reading it, so a forged length in a tiny record could otherwise cost half a gigabyte. Kafka
/// records are at most a few MiB. apache-avro keeps the first value set in the process.
pub const MAX_APACHE_AVRO_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

/// Every registered schema, parsed once.
///
/// # Panics
/// If an embedded `.avsc` does not parse: a build defect caught by the crate's tests.
pub fn registered() -> &'static [RegisteredSchema] {
    static REGISTERED: OnceLock<Vec<RegisteredSchema>> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        apache_avro::util::max_allocation_bytes(MAX_APACHE_AVRO_ALLOCATION_BYTES);
        SCHEMA_FILES
            .iter()
            .enumerate()
            .map(|(position, file)| {
                let schema = Schema::parse_str(file.json).unwrap_or_else(|error| {
                    panic!("embedded schema {} does not parse: {error}", file.file_name)
                });
                let canonical_form = parsing_canonical_form(file.json).unwrap_or_else(|error| {
                    panic!(
                        "embedded schema {} has no canonical form: {error}",
                        file.file_name
                    )
                });
                let fingerprint = rabin_fingerprint(canonical_form.as_bytes());
                let is_current = SCHEMA_FILES[position + 1..]
                    .iter()
                    .all(|later| later.record_name != file.record_name);
                RegisteredSchema {
                    file: *file,
                    schema,
                    canonical_form,
                    fingerprint,
                    is_current,
                }
            })
            .collect()
    })
}

/// The schema with this fingerprint, of any record and version.
pub fn by_fingerprint(fingerprint: &[u8; 8]) -> Option<&'static RegisteredSchema> {
    registered()
        .iter()
        .find(|registered| registered.fingerprint == *fingerprint)
}

/// The current schema of a record.
///
/// # Panics
/// If `record_name` is not registered: a defect in this crate, caught by its tests.
pub fn current(record_name: &str) -> &'static RegisteredSchema {
    registered()
        .iter()
        .find(|registered| registered.is_current && registered.file.record_name == record_name)
        .unwrap_or_else(|| panic!("no schema registered for {record_name}"))
}

/// Every version of a record, oldest first.
pub fn versions(record_name: &'static str) -> impl Iterator<Item = &'static RegisteredSchema> {
    registered()
        .iter()
        .filter(move |registered| registered.file.record_name == record_name)
}
