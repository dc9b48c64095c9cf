//! The field-by-field interface between a record and a datum backend.
//!
//! A record's [`AvroRecord`](super::AvroRecord) impl reads and writes its fields once, in schema
//! order, against these traits; two backends implement them: [`super::binary`] (the fast path,
//! Avro binary directly) and [`super::value`] (apache-avro's `Value`, used to resolve older writer
//! schemas and as the reference implementation in tests). The provided methods hold the contract
//! rules shared by both: amounts, timestamps, enums, non-negative counts.

use super::error::{DecodeError, EncodeError};
use crate::avro_enum::AvroEnum;
use crate::{money, time};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::collections::BTreeMap;

/// Reads the fields of one record, in schema order. `field` names the field being read, for
/// errors (and, in the `Value` backend, to check the order).
pub trait DatumReader {
    /// Reads the branch of a `["null", T]` union: `false` for null, `true` when a `T` follows.
    fn read_union_branch(&mut self, field: &'static str) -> Result<bool, DecodeError>;
    /// Reads a `string`.
    fn read_string(&mut self, field: &'static str) -> Result<String, DecodeError>;
    /// Reads `bytes`.
    fn read_bytes(&mut self, field: &'static str) -> Result<Vec<u8>, DecodeError>;
    /// Reads an `int`.
    fn read_int(&mut self, field: &'static str) -> Result<i32, DecodeError>;
    /// Reads a `long`.
    fn read_long(&mut self, field: &'static str) -> Result<i64, DecodeError>;
    /// Reads a `boolean`.
    fn read_boolean(&mut self, field: &'static str) -> Result<bool, DecodeError>;
    /// Reads a `timestamp-micros` as microseconds since the epoch.
    fn read_timestamp_micros(&mut self, field: &'static str) -> Result<i64, DecodeError>;
    /// Reads a `decimal` as its unscaled integer.
    fn read_decimal_unscaled(&mut self, field: &'static str) -> Result<i128, DecodeError>;
    /// Reads an `enum` as its symbol index (not yet checked against the symbols).
    fn read_enum_index(&mut self, field: &'static str) -> Result<u32, DecodeError>;
    /// Reads a `map` of `string`.
    fn read_string_map(
        &mut self,
        field: &'static str,
    ) -> Result<BTreeMap<String, String>, DecodeError>;
    /// Reads an `array` of `string`.
    fn read_string_array(&mut self, field: &'static str) -> Result<Vec<String>, DecodeError>;

    /// Reads `["null", string]`.
    fn read_optional_string(&mut self, field: &'static str) -> Result<Option<String>, DecodeError> {
        optional(self, field, Self::read_string)
    }

    /// Reads `["null", bytes]`.
    fn read_optional_bytes(&mut self, field: &'static str) -> Result<Option<Vec<u8>>, DecodeError> {
        optional(self, field, Self::read_bytes)
    }

    /// Reads `["null", int]`.
    fn read_optional_int(&mut self, field: &'static str) -> Result<Option<i32>, DecodeError> {
        optional(self, field, Self::read_int)
    }

    /// Reads `["null", boolean]`.
    fn read_optional_boolean(&mut self, field: &'static str) -> Result<Option<bool>, DecodeError> {
        optional(self, field, Self::read_boolean)
    }

    /// Reads an `int` that must be >= 0.
    fn read_count_int(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let value = self.read_int(field)?;
        u32::try_from(value)
            .map_err(|_| DecodeError::invalid(field, format!("{value} is negative")))
    }

    /// Reads `["null", int]` whose int must be >= 0.
    fn read_optional_count_int(&mut self, field: &'static str) -> Result<Option<u32>, DecodeError> {
        optional(self, field, Self::read_count_int)
    }

    /// Reads a `long` that must be >= 0.
    fn read_count_long(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let value = self.read_long(field)?;
        u64::try_from(value)
            .map_err(|_| DecodeError::invalid(field, format!("{value} is negative")))
    }

    /// Reads `["null", long]` whose long must be >= 0.
    fn read_optional_count_long(
        &mut self,
        field: &'static str,
    ) -> Result<Option<u64>, DecodeError> {
        optional(self, field, Self::read_count_long)
    }

    /// Reads a `timestamp-micros` within [`crate::time`]'s range.
    fn read_timestamp(&mut self, field: &'static str) -> Result<DateTime<Utc>, DecodeError> {
        let micros = self.read_timestamp_micros(field)?;
        time::from_micros(micros).map_err(|error| DecodeError::from_timestamp(field, error))
    }

    /// Reads `["null", timestamp-micros]`.
    fn read_optional_timestamp(
        &mut self,
        field: &'static str,
    ) -> Result<Option<DateTime<Utc>>, DecodeError> {
        optional(self, field, Self::read_timestamp)
    }

    /// Reads a `decimal(38, 12)` amount, which must be >= 0.
    fn read_amount(&mut self, field: &'static str) -> Result<Decimal, DecodeError> {
        let unscaled = self.read_decimal_unscaled(field)?;
        if unscaled < 0 {
            return Err(DecodeError::invalid(
                field,
                format!(
                    "{unscaled}e-{} is negative; amounts must be >= 0",
                    money::SCALE
                ),
            ));
        }
        money::from_unscaled(unscaled).map_err(|error| DecodeError::from_money(field, error))
    }

    /// Reads `["null", decimal(38, 12)]`.
    fn read_optional_amount(
        &mut self,
        field: &'static str,
    ) -> Result<Option<Decimal>, DecodeError> {
        optional(self, field, Self::read_amount)
    }

    /// Reads an `enum` as `E`.
    fn read_enum<E: AvroEnum>(&mut self, field: &'static str) -> Result<E, DecodeError> {
        let index = self.read_enum_index(field)?;
        E::from_index(index).ok_or_else(|| {
            DecodeError::invalid(
                field,
                format!(
                    "enum index {index} out of range for {} ({} symbols)",
                    E::AVRO_NAME,
                    E::SYMBOLS.len()
                ),
            )
        })
    }

    /// Reads `["null", enum]` as `Option<E>`.
    fn read_optional_enum<E: AvroEnum>(
        &mut self,
        field: &'static str,
    ) -> Result<Option<E>, DecodeError> {
        optional(self, field, Self::read_enum::<E>)
    }
}

fn optional<R: DatumReader + ?Sized, T>(
    reader: &mut R,
    field: &'static str,
    read: impl FnOnce(&mut R, &'static str) -> Result<T, DecodeError>,
) -> Result<Option<T>, DecodeError> {
    if reader.read_union_branch(field)? {
        read(reader, field).map(Some)
    } else {
        Ok(None)
    }
}

/// Writes the fields of one record, in schema order. Primitive writes cannot fail; the provided
/// methods check the contract rules first and refuse a value rather than alter it.
pub trait DatumWriter {
    /// Writes the branch of a `["null", T]` union; when `is_some`, a `T` write follows.
    fn write_union_branch(&mut self, field: &'static str, is_some: bool);
    /// Writes a `string`.
    fn write_string(&mut self, field: &'static str, value: &str);
    /// Writes `bytes`.
    fn write_bytes(&mut self, field: &'static str, value: &[u8]);
    /// Writes an `int`.
    fn write_int(&mut self, field: &'static str, value: i32);
    /// Writes a `long`.
    fn write_long(&mut self, field: &'static str, value: i64);
    /// Writes a `boolean`.
    fn write_boolean(&mut self, field: &'static str, value: bool);
    /// Writes a `timestamp-micros`.
    fn write_timestamp_micros(&mut self, field: &'static str, micros: i64);
    /// Writes a `decimal` from its unscaled integer.
    fn write_decimal_unscaled(&mut self, field: &'static str, unscaled: i128);
    /// Writes an `enum` symbol.
    fn write_enum_symbol(&mut self, field: &'static str, index: u32, symbol: &'static str);
    /// Writes a `map` of `string`.
    fn write_string_map(&mut self, field: &'static str, map: &BTreeMap<String, String>);
    /// Writes an `array` of `string`.
    fn write_string_array(&mut self, field: &'static str, items: &[String]);

    /// Writes `["null", string]`.
    fn write_optional_string(&mut self, field: &'static str, value: Option<&str>) {
        self.write_union_branch(field, value.is_some());
        if let Some(value) = value {
            self.write_string(field, value);
        }
    }

    /// Writes `["null", bytes]`.
    fn write_optional_bytes(&mut self, field: &'static str, value: Option<&[u8]>) {
        self.write_union_branch(field, value.is_some());
        if let Some(value) = value {
            self.write_bytes(field, value);
        }
    }

    /// Writes `["null", int]`.
    fn write_optional_int(&mut self, field: &'static str, value: Option<i32>) {
        self.write_union_branch(field, value.is_some());
        if let Some(value) = value {
            self.write_int(field, value);
        }
    }

    /// Writes `["null", boolean]`.
    fn write_optional_boolean(&mut self, field: &'static str, value: Option<bool>) {
        self.write_union_branch(field, value.is_some());
        if let Some(value) = value {
            self.write_boolean(field, value);
        }
    }

    /// Writes a count as an `int`; above `i32::MAX` is an error.
    fn write_count_int(&mut self, field: &'static str, value: u32) -> Result<(), EncodeError> {
        let value = i32::try_from(value).map_err(|_| EncodeError::InvalidValue {
            field,
            reason: format!("{value} exceeds the Avro int range"),
        })?;
        self.write_int(field, value);
        Ok(())
    }

    /// Writes `["null", int]` from an optional count.
    fn write_optional_count_int(
        &mut self,
        field: &'static str,
        value: Option<u32>,
    ) -> Result<(), EncodeError> {
        self.write_union_branch(field, value.is_some());
        value.map_or(Ok(()), |value| self.write_count_int(field, value))
    }

    /// Writes a count as a `long`; above `i64::MAX` is an error.
    fn write_count_long(&mut self, field: &'static str, value: u64) -> Result<(), EncodeError> {
        let value = i64::try_from(value).map_err(|_| EncodeError::InvalidValue {
            field,
            reason: format!("{value} exceeds the Avro long range"),
        })?;
        self.write_long(field, value);
        Ok(())
    }

    /// Writes `["null", long]` from an optional count.
    fn write_optional_count_long(
        &mut self,
        field: &'static str,
        value: Option<u64>,
    ) -> Result<(), EncodeError> {
        self.write_union_branch(field, value.is_some());
        value.map_or(Ok(()), |value| self.write_count_long(field, value))
    }

    /// Writes a `timestamp-micros` (truncated to the microsecond; range-checked).
    fn write_timestamp(
        &mut self,
        field: &'static str,
        value: &DateTime<Utc>,
    ) -> Result<(), EncodeError> {
        let micros = time::to_micros(value)
            .map_err(|source| EncodeError::TimestampOutOfRange { field, source })?;
        self.write_timestamp_micros(field, micros);
        Ok(())
    }

    /// Writes `["null", timestamp-micros]`.
    fn write_optional_timestamp(
        &mut self,
        field: &'static str,
        value: Option<&DateTime<Utc>>,
    ) -> Result<(), EncodeError> {
        self.write_union_branch(field, value.is_some());
        value.map_or(Ok(()), |value| self.write_timestamp(field, value))
    }

    /// Writes a `decimal(38, 12)` amount: >= 0, at most 12 fractional digits, never rounded.
    fn write_amount(&mut self, field: &'static str, value: &Decimal) -> Result<(), EncodeError> {
        if *value < Decimal::ZERO {
            return Err(EncodeError::NegativeAmount {
                field,
                value: value.to_string(),
            });
        }
        let unscaled =
            money::to_unscaled(value).map_err(|error| EncodeError::from_money(field, error))?;
        self.write_decimal_unscaled(field, unscaled);
        Ok(())
    }

    /// Writes `["null", decimal(38, 12)]`.
    fn write_optional_amount(
        &mut self,
        field: &'static str,
        value: Option<&Decimal>,
    ) -> Result<(), EncodeError> {
        self.write_union_branch(field, value.is_some());
        value.map_or(Ok(()), |value| self.write_amount(field, value))
    }

    /// Writes an `enum`.
    fn write_enum<E: AvroEnum>(&mut self, field: &'static str, value: E) {
        self.write_enum_symbol(field, value.index(), value.symbol());
    }

    /// Writes `["null", enum]`.
    fn write_optional_enum<E: AvroEnum>(&mut self, field: &'static str, value: Option<E>) {
        self.write_union_branch(field, value.is_some());
        if let Some(value) = value {
            self.write_enum(field, value);
        }
    }
}
