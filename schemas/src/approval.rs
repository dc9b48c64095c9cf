//! [`Approval`]: a temporary limit raise approved by a human.

use crate::codec::datum::{DatumReader, DatumWriter};
use crate::codec::{AvroRecord, DecodeError, EncodeError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A raised limit for one policy and scope, valid until a deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Unique id of this approval.
    pub approval_id: String,
    /// Policy whose limit is raised.
    pub policy_id: String,
    /// Scope it applies to: dimension → value.
    pub scope: BTreeMap<String, String>,
    /// The limit that applies until `valid_until` (`decimal(38, 12)`, >= 0).
    #[serde(with = "crate::money::json")]
    pub new_limit: Decimal,
    /// When the approval lapses and the policy's own limit applies again.
    pub valid_until: DateTime<Utc>,
    /// Why the raise was requested.
    pub reason: String,
    /// Who approved it.
    pub approved_by: String,
    /// When it was requested.
    pub requested_at: DateTime<Utc>,
}

impl AvroRecord for Approval {
    const RECORD_NAME: &'static str = "dev.quotaflow.Approval";
    const FINGERPRINT: [u8; 8] = [0x41, 0xF4, 0xA6, 0x77, 0xEA, 0xA3, 0x77, 0xBD];

    fn write_datum<W: DatumWriter>(&self, writer: &mut W) -> Result<(), EncodeError> {
        writer.write_string("approval_id", &self.approval_id);
        writer.write_string("policy_id", &self.policy_id);
        writer.write_string_map("scope", &self.scope);
        writer.write_amount("new_limit", &self.new_limit)?;
        writer.write_timestamp("valid_until", &self.valid_until)?;
        writer.write_string("reason", &self.reason);
        writer.write_string("approved_by", &self.approved_by);
        writer.write_timestamp("requested_at", &self.requested_at)?;
        Ok(())
    }

    fn read_datum<R: DatumReader>(reader: &mut R) -> Result<Self, DecodeError> {
        Ok(Approval {
            approval_id: reader.read_string("approval_id")?,
            policy_id: reader.read_string("policy_id")?,
            scope: reader.read_string_map("scope")?,
            new_limit: reader.read_amount("new_limit")?,
            valid_until: reader.read_timestamp("valid_until")?,
            reason: reader.read_string("reason")?,
            approved_by: reader.read_string("approved_by")?,
            requested_at: reader.read_timestamp("requested_at")?,
        })
    }
}
