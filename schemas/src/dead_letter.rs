//! [`DeadLetter`]: a record a service gave up on, kept byte for byte for inspection and replay.

use crate::codec::datum::{DatumReader, DatumWriter};
use crate::codec::{AvroRecord, DecodeError, EncodeError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A record that could not be processed, with where it came from and why it failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    /// Topic the record was read from.
    pub source_topic: String,
    /// Partition it was read from.
    pub source_partition: i32,
    /// Offset it was read from.
    pub source_offset: i64,
    /// Stable machine-readable kind, e.g. a [`DecodeError::kind`] (`bad_magic`,
    /// `unknown_fingerprint`, `truncated` …) or `validation`.
    pub error_kind: String,
    /// Human-readable error.
    pub error_message: String,
    /// The original record value, byte for byte.
    pub payload: Vec<u8>,
    /// The original record key, if any.
    #[serde(default)]
    pub key: Option<Vec<u8>>,
    /// When processing failed.
    pub failed_at: DateTime<Utc>,
    /// Service that gave up on the record.
    pub service: String,
}

impl AvroRecord for DeadLetter {
    const RECORD_NAME: &'static str = "dev.quotaflow.DeadLetter";
    const FINGERPRINT: [u8; 8] = [0x4D, 0xE5, 0xEE, 0xC5, 0x57, 0x21, 0x2E, 0x82];

    fn write_datum<W: DatumWriter>(&self, writer: &mut W) -> Result<(), EncodeError> {
        writer.write_string("source_topic", &self.source_topic);
        writer.write_int("source_partition", self.source_partition);
        writer.write_long("source_offset", self.source_offset);
        writer.write_string("error_kind", &self.error_kind);
        writer.write_string("error_message", &self.error_message);
        writer.write_bytes("payload", &self.payload);
        writer.write_optional_bytes("key", self.key.as_deref());
        writer.write_timestamp("failed_at", &self.failed_at)?;
        writer.write_string("service", &self.service);
        Ok(())
    }

    fn read_datum<R: DatumReader>(reader: &mut R) -> Result<Self, DecodeError> {
        Ok(DeadLetter {
            source_topic: reader.read_string("source_topic")?,
            source_partition: reader.read_int("source_partition")?,
            source_offset: reader.read_long("source_offset")?,
            error_kind: reader.read_string("error_kind")?,
            error_message: reader.read_string("error_message")?,
            payload: reader.read_bytes("payload")?,
            key: reader.read_optional_bytes("key")?,
            failed_at: reader.read_timestamp("failed_at")?,
            service: reader.read_string("service")?,
        })
    }
}
