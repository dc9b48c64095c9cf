//! [`Alert`]: raised by the alerter and routed to the scope owner.
//!
//! Alerts are delivered at least once; notifiers send one notification per `dedup_key`.

use crate::avro_enum;
use crate::codec::datum::{DatumReader, DatumWriter};
use crate::codec::{AvroRecord, DecodeError, EncodeError, InvariantViolation};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

avro_enum! {
    /// What triggered an alert.
    pub enum AlertKind {
        /// Usage crossed a percentage of a limit (`threshold_percent`).
        SoftThreshold = "soft_threshold",
        /// A hard cap was reached; traffic is blocked or degraded.
        HardCap = "hard_cap",
        /// A cap was lifted (new window, approval).
        CapReset = "cap_reset",
        /// Requests or tokens per unit of time above the limit.
        Throughput = "throughput",
        /// Too many requests in flight.
        Concurrency = "concurrency",
        /// An async job has been pending too long.
        PendingJob = "pending_job",
        /// Traffic to a deprecated model.
        DeprecatedModel = "deprecated_model",
        /// Traffic to a model the policy does not allow.
        ModelNotAllowed = "model_not_allowed",
        /// Fallback attempts above their budget.
        FallbackBudget = "fallback_budget",
        /// Retries above their budget.
        RetryBudget = "retry_budget",
        /// A retry of an error that retrying cannot fix (e.g. invalid_request).
        NonRetryableRetry = "non_retryable_retry",
        /// Usage far from its usual pattern.
        Anomaly = "anomaly",
    }
}

avro_enum! {
    /// How urgent an alert is.
    pub enum Severity {
        /// For the record.
        Info = "info",
        /// Needs attention soon.
        Warning = "warning",
        /// Something is failing.
        Error = "error",
        /// Needs attention now.
        Critical = "critical",
    }
}

/// An alert about a policy and scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// Unique id of this alert.
    pub alert_id: String,
    /// Alerts with the same dedup key are one incident, notified once.
    pub dedup_key: String,
    /// Policy that raised it.
    pub policy_id: String,
    /// Scope the alert is about: dimension → value.
    pub scope: BTreeMap<String, String>,
    /// What triggered it.
    pub kind: AlertKind,
    /// How urgent it is.
    pub severity: Severity,
    /// For threshold alerts: the percent of the limit crossed (e.g. 80).
    #[serde(default)]
    pub threshold_percent: Option<u32>,
    /// Unit of `observed` and `limit`.
    pub unit: String,
    /// Usage observed in the window (`decimal(38, 12)`, >= 0).
    #[serde(with = "crate::money::json")]
    pub observed: Decimal,
    /// The limit, when the alert has one (`decimal(38, 12)`, >= 0).
    #[serde(default, with = "crate::money::json::option")]
    pub limit: Option<Decimal>,
    /// Window kind: `day`, `minute`, `campaign:<name>` …
    pub window: String,
    /// Start of the window (inclusive).
    pub window_start: DateTime<Utc>,
    /// End of the window (exclusive), `>= window_start`.
    pub window_end: DateTime<Utc>,
    /// Who is notified (team or person).
    pub owner: String,
    /// Human-readable message.
    pub message: String,
    /// When it was raised.
    pub raised_at: DateTime<Utc>,
}

impl AvroRecord for Alert {
    const RECORD_NAME: &'static str = "dev.quotaflow.Alert";
    const FINGERPRINT: [u8; 8] = [0x42, 0xB1, 0xE6, 0x2B, 0x21, 0xD5, 0x6E, 0x4B];

    fn write_datum<W: DatumWriter>(&self, writer: &mut W) -> Result<(), EncodeError> {
        writer.write_string("alert_id", &self.alert_id);
        writer.write_string("dedup_key", &self.dedup_key);
        writer.write_string("policy_id", &self.policy_id);
        writer.write_string_map("scope", &self.scope);
        writer.write_enum("kind", self.kind);
        writer.write_enum("severity", self.severity);
        writer.write_optional_count_int("threshold_percent", self.threshold_percent)?;
        writer.write_string("unit", &self.unit);
        writer.write_amount("observed", &self.observed)?;
        writer.write_optional_amount("limit", self.limit.as_ref())?;
        writer.write_string("window", &self.window);
        writer.write_timestamp("window_start", &self.window_start)?;
        writer.write_timestamp("window_end", &self.window_end)?;
        writer.write_string("owner", &self.owner);
        writer.write_string("message", &self.message);
        writer.write_timestamp("raised_at", &self.raised_at)?;
        Ok(())
    }

    fn read_datum<R: DatumReader>(reader: &mut R) -> Result<Self, DecodeError> {
        Ok(Alert {
            alert_id: reader.read_string("alert_id")?,
            dedup_key: reader.read_string("dedup_key")?,
            policy_id: reader.read_string("policy_id")?,
            scope: reader.read_string_map("scope")?,
            kind: reader.read_enum("kind")?,
            severity: reader.read_enum("severity")?,
            threshold_percent: reader.read_optional_count_int("threshold_percent")?,
            unit: reader.read_string("unit")?,
            observed: reader.read_amount("observed")?,
            limit: reader.read_optional_amount("limit")?,
            window: reader.read_string("window")?,
            window_start: reader.read_timestamp("window_start")?,
            window_end: reader.read_timestamp("window_end")?,
            owner: reader.read_string("owner")?,
            message: reader.read_string("message")?,
            raised_at: reader.read_timestamp("raised_at")?,
        })
    }

    fn check_invariants(&self) -> Result<(), InvariantViolation> {
        crate::control::window_is_ordered(&self.window_start, &self.window_end)
    }
}
