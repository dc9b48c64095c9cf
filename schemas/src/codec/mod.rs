//! The Kafka wire codec: Avro single-object encoding for every record type.
//!
//! ```text
//! C3 01 | fingerprint (8 bytes, little-endian CRC-64-AVRO of the writer schema's canonical form) | datum
//! ```
//!
//! [`encode`] writes the current schema of the record. [`decode`] reads the header, then:
//! - the current fingerprint of `T` → the fast path ([`binary`]), no schema lookup at all;
//! - an older version of `T` (e.g. `UsageEvent` v1) → apache-avro decodes the datum with its
//!   writer schema, the `resolve` module maps it to the current schema (defaults filled in), and the
//!   record is read from the resulting `Value` ([`value`]);
//! - a schema of another record → [`DecodeError::WrongRecordType`];
//! - anything else → [`DecodeError::UnknownFingerprint`].
//!
//! Record-level invariants ([`AvroRecord::check_invariants`]) are checked on both sides, so a
//! value that could not have been encoded is not decoded either.

pub mod binary;
pub mod canonical;
pub mod datum;
mod error;
pub mod registry;
mod resolve;
pub mod single_object;
pub mod value;

pub use error::{DecodeError, EncodeError, InvariantViolation};
pub use single_object::{fingerprint_hex, HEADER_LEN, MAGIC};

use apache_avro::types::Value;
use apache_avro::Schema;
use binary::{BinaryReader, BinaryWriter};
use datum::{DatumReader, DatumWriter};
use value::{ValueReader, ValueWriter};

/// A record type with an Avro schema in the [`registry`].
///
/// Implemented by every record of this crate. `write_datum` and `read_datum` list the fields in
/// schema order once; the [`datum`] backends turn that into Avro binary or apache-avro `Value`s.
pub trait AvroRecord: Sized {
    /// Full Avro name, e.g. `dev.quotaflow.UsageEvent`.
    const RECORD_NAME: &'static str;
    /// Fingerprint of the current schema, in wire order (checked against the `.avsc` by a test).
    const FINGERPRINT: [u8; 8];

    /// Writes every field, in current-schema order.
    fn write_datum<W: DatumWriter>(&self, writer: &mut W) -> Result<(), EncodeError>;

    /// Reads every field, in current-schema order.
    fn read_datum<R: DatumReader>(reader: &mut R) -> Result<Self, DecodeError>;

    /// Rules across fields (e.g. `cached_input_tokens <= input_tokens`), checked on encode and
    /// decode.
    fn check_invariants(&self) -> Result<(), InvariantViolation> {
        Ok(())
    }

    /// The current schema (parsed once).
    fn current_schema() -> &'static Schema {
        &registry::current(Self::RECORD_NAME).schema
    }

    /// Every known writer schema of this record, oldest first (the last one is current).
    fn writer_schemas() -> Vec<&'static registry::RegisteredSchema> {
        registry::versions(Self::RECORD_NAME).collect()
    }
}

/// Encodes `record` in single-object encoding with its current schema.
pub fn encode<T: AvroRecord>(record: &T) -> Result<Vec<u8>, EncodeError> {
    let mut buffer = Vec::with_capacity(256);
    encode_into(record, &mut buffer)?;
    Ok(buffer)
}

/// Appends the single-object encoding of `record` to `buffer` (to reuse one buffer per batch).
/// On error, `buffer` is left as it was.
pub fn encode_into<T: AvroRecord>(record: &T, buffer: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = buffer.len();
    let result = record
        .check_invariants()
        .map_err(EncodeError::from)
        .and_then(|()| {
            single_object::write_header(buffer, &T::FINGERPRINT);
            record.write_datum(&mut BinaryWriter::new(buffer))
        });
    if result.is_err() {
        buffer.truncate(start);
    }
    result
}

/// Decodes a single-object encoded `T`, written with its current or any older schema.
pub fn decode<T: AvroRecord>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (fingerprint, datum) = single_object::split(bytes)?;
    if fingerprint == T::FINGERPRINT {
        return decode_datum(datum);
    }
    let writer = writer_schema_of::<T>(&fingerprint)?;
    decode_via_value(&writer.schema, Some(T::current_schema()), datum)
}

/// Decodes a bare datum (no header) written with the current schema of `T`: the fast path.
pub fn decode_datum<T: AvroRecord>(datum: &[u8]) -> Result<T, DecodeError> {
    let mut reader = BinaryReader::new(datum);
    let record = T::read_datum(&mut reader)?;
    reader.finish()?;
    record.check_invariants()?;
    Ok(record)
}

/// Decodes like [`decode`], but entirely through apache-avro's generic `Value` path, even for
/// the current schema. The reference implementation: slower, used by tests and benchmarks.
pub fn decode_generic<T: AvroRecord>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (fingerprint, datum) = single_object::split(bytes)?;
    if fingerprint == T::FINGERPRINT {
        return decode_via_value(T::current_schema(), None, datum);
    }
    let writer = writer_schema_of::<T>(&fingerprint)?;
    decode_via_value(&writer.schema, Some(T::current_schema()), datum)
}

/// Encodes `record` into an apache-avro `Value::Record` of its current schema.
pub fn to_avro_value<T: AvroRecord>(record: &T) -> Result<Value, EncodeError> {
    record.check_invariants()?;
    let mut writer = ValueWriter::new();
    record.write_datum(&mut writer)?;
    Ok(writer.finish())
}

/// Reads a record from an apache-avro `Value::Record` of its current schema.
pub fn from_avro_value<T: AvroRecord>(value: Value) -> Result<T, DecodeError> {
    let mut reader = ValueReader::new(value)?;
    let record = T::read_datum(&mut reader)?;
    reader.finish()?;
    record.check_invariants()?;
    Ok(record)
}

/// The writer fingerprint of a single-object encoded record, without decoding it.
pub fn peek_fingerprint(bytes: &[u8]) -> Result<[u8; 8], DecodeError> {
    single_object::split(bytes).map(|(fingerprint, _)| fingerprint)
}

pub(crate) fn writer_schema_of<T: AvroRecord>(
    fingerprint: &[u8; 8],
) -> Result<&'static registry::RegisteredSchema, DecodeError> {
    match registry::by_fingerprint(fingerprint) {
        Some(writer) if writer.file.record_name == T::RECORD_NAME => Ok(writer),
        Some(writer) => Err(DecodeError::WrongRecordType {
            expected: T::RECORD_NAME,
            found: writer.file.record_name,
            fingerprint: fingerprint_hex(fingerprint),
        }),
        None => Err(DecodeError::UnknownFingerprint {
            expected: T::RECORD_NAME,
            fingerprint: fingerprint_hex(fingerprint),
        }),
    }
}

/// Reads `datum` with apache-avro, resolves it to `reader` when given (`resolve` module), then reads
/// the record from the `Value`. apache-avro's errors are not classified further: all `malformed`.
fn decode_via_value<T: AvroRecord>(
    writer: &Schema,
    reader: Option<&Schema>,
    datum: &[u8],
) -> Result<T, DecodeError> {
    let mut remaining = datum;
    let value = apache_avro::from_avro_datum(writer, &mut remaining, None)
        .map_err(|error| DecodeError::malformed("(datum)", error.to_string()))?;
    if !remaining.is_empty() {
        return Err(DecodeError::invalid(
            "(end of datum)",
            format!("{} trailing bytes after the last field", remaining.len()),
        ));
    }
    let value = match reader {
        Some(reader) => resolve::resolve_record(value, reader)?,
        None => value,
    };
    from_avro_value(value)
}
