//! [`DeadLetter`]: a record a service gave up on, kept byte for byte for inspection and replay.
//!
//! Every consumer builds its letters here ([`dead_letter`], [`undecodable`]) from the source
//! record's coordinates ([`SourceRecord`]), so the archiver and the aggregator write the same
//! shape; the writer that produces them to Kafka and ClickHouse is `infra::dead_letter`. A record
//! becomes a [`DeadLetter`] when it cannot be decoded (`error_kind` = [`DecodeError::kind`]),
//! fails validation ([`kind::VALIDATION`]), cannot be represented in a table
//! ([`kind::UNREPRESENTABLE`]) or is refused by ClickHouse as a data error
//! ([`kind::SINK_REJECTED`]); services add kinds of their own.

use crate::codec::datum::{DatumReader, DatumWriter};
use crate::codec::{AvroRecord, DecodeError, EncodeError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The `error_kind` values shared by every consumer, besides [`DecodeError::kind`]'s.
pub mod kind {
    /// The record decoded but broke a validation rule; the message lists the field paths.
    pub const VALIDATION: &str = "validation";
    /// ClickHouse refused the row as a data error (never retried).
    pub const SINK_REJECTED: &str = "sink_rejected";
    /// The record decoded and validated but a value does not fit the table's column type.
    pub const UNREPRESENTABLE: &str = "unrepresentable";
}

/// Where a dead letter came from: the source record's coordinates, value and key.
#[derive(Debug, Clone, Copy)]
pub struct SourceRecord<'a> {
    /// Topic read from.
    pub topic: &'a str,
    /// Partition read from.
    pub partition: i32,
    /// Offset read from.
    pub offset: i64,
    /// Value, byte for byte (empty for a tombstone).
    pub payload: &'a [u8],
    /// Key, if the record had one.
    pub key: Option<&'a [u8]>,
}

/// A dead letter for `source`, failed now by `service`.
pub fn dead_letter(
    source: SourceRecord<'_>,
    service: &str,
    error_kind: &str,
    error_message: String,
) -> DeadLetter {
    DeadLetter {
        source_topic: source.topic.to_owned(),
        source_partition: source.partition,
        source_offset: source.offset,
        error_kind: error_kind.to_owned(),
        error_message,
        payload: source.payload.to_vec(),
        key: source.key.map(<[u8]>::to_vec),
        failed_at: Utc::now(),
        service: service.to_owned(),
    }
}

/// A dead letter for a record the codec refused: `error_kind` is the codec's stable kind.
pub fn undecodable(source: SourceRecord<'_>, service: &str, error: &DecodeError) -> DeadLetter {
    dead_letter(source, service, error.kind(), error.to_string())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_letter_keeps_the_source_record_byte_for_byte() {
        let source = SourceRecord {
            topic: "usage",
            partition: 2,
            offset: 7,
            payload: b"\x00\xff",
            key: Some(b"team-a"),
        };
        let letter = dead_letter(source, "archiver", kind::VALIDATION, "bad".to_owned());
        assert_eq!(
            (
                letter.source_topic.as_str(),
                letter.source_partition,
                letter.source_offset
            ),
            ("usage", 2, 7)
        );
        assert_eq!(letter.payload, b"\x00\xff");
        assert_eq!(letter.key.as_deref(), Some(&b"team-a"[..]));
        assert_eq!(
            (letter.error_kind.as_str(), letter.service.as_str()),
            ("validation", "archiver")
        );
    }

    #[test]
    fn an_undecodable_letter_carries_the_codec_kind() {
        let source = SourceRecord {
            topic: "usage",
            partition: 0,
            offset: 1,
            payload: b"",
            key: None,
        };
        let error = crate::decode::<crate::UsageEvent>(b"").unwrap_err();
        let letter = undecodable(source, "aggregator", &error);
        assert_eq!(letter.error_kind, error.kind());
        assert_eq!(letter.error_message, error.to_string());
        assert_eq!(letter.key, None);
    }
}
