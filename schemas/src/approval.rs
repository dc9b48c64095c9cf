//! [`Approval`]: a temporary limit raise approved by a human, signed by the approver.
//!
//! # What is signed
//! The approver signs [`Approval::signed_bytes`] with the Ed25519 key whose public half the policy
//! lists for them: the prefix [`SIGNED_BYTES_PREFIX`], then the Avro binary datum of every field
//! but the signature, in schema order. The datum is deterministic (the scope is a sorted map, the
//! amount a fixed-scale decimal, timestamps whole microseconds), so the signer and the alerter
//! compute the same bytes; the prefix keeps a signature over an approval from being valid as
//! anything else. Changing any signed field (the limit, the deadline, the scope, the approver)
//! invalidates the signature.
//!
//! Records written with `approval.v1.avsc` decode with an empty signature: unsigned.

use crate::codec::binary::BinaryWriter;
use crate::codec::datum::{DatumReader, DatumWriter};
use crate::codec::{AvroRecord, DecodeError, EncodeError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Domain separation of the signed bytes (then a NUL byte).
pub const SIGNED_BYTES_PREFIX: &[u8] = b"quotaflow approval v2";

/// A raised limit for one policy and scope, valid until a deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Unique id of this approval; also its Kafka record key, so compaction keeps every approval.
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
    /// Who approved it: an approver name of the policy, whose key made `signature`.
    pub approved_by: String,
    /// When the writer says it was requested. Informational only: the alerter measures a raise's
    /// duration from the broker's append time, never from this.
    pub requested_at: DateTime<Utc>,
    /// Ed25519 signature over [`Approval::signed_bytes`] (64 bytes); empty = unsigned. Standard
    /// base64 in JSON.
    #[serde(default, with = "signature_base64")]
    pub signature: Vec<u8>,
}

impl Approval {
    /// The bytes the approver signs (module docs).
    ///
    /// # Errors
    /// A field the codec cannot encode exactly (a limit beyond `decimal(38, 12)`, a timestamp out
    /// of range): such an approval cannot be written either.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut bytes = Vec::with_capacity(SIGNED_BYTES_PREFIX.len() + 160);
        bytes.extend_from_slice(SIGNED_BYTES_PREFIX);
        bytes.push(0);
        self.write_signed_fields(&mut BinaryWriter::new(&mut bytes))?;
        Ok(bytes)
    }

    fn write_signed_fields<W: DatumWriter>(&self, writer: &mut W) -> Result<(), EncodeError> {
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
}

impl AvroRecord for Approval {
    const RECORD_NAME: &'static str = "dev.quotaflow.Approval";
    const FINGERPRINT: [u8; 8] = [0x30, 0x97, 0x99, 0x95, 0xB0, 0xFA, 0x7D, 0xF7];

    fn write_datum<W: DatumWriter>(&self, writer: &mut W) -> Result<(), EncodeError> {
        self.write_signed_fields(writer)?;
        writer.write_bytes("signature", &self.signature);
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
            signature: reader.read_bytes("signature")?,
        })
    }
}

/// `signature` as standard base64 in JSON.
mod signature_base64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}
