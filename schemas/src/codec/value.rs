//! The apache-avro `Value` backend: the generic path.
//!
//! Used to resolve data written with an older schema (apache-avro resolves writer → reader
//! schema, filling defaults, and the record is read from the resulting `Value`), by the
//! `decode_generic` reference path, and by tests that check the fast path against apache-avro.

use super::binary::{twos_complement_minimal, unscaled_from_twos_complement};
use super::datum::{DatumReader, DatumWriter};
use super::error::DecodeError;
use apache_avro::types::Value;
use std::collections::{BTreeMap, HashMap};

/// Reads the fields of a `Value::Record`, checking that their names come in schema order.
#[derive(Debug)]
pub struct ValueReader {
    /// Remaining `(name, value)` fields of the record.
    fields: std::vec::IntoIter<(String, Value)>,
    /// The inner value of a union whose branch was just read.
    union_inner: Option<Value>,
}

impl ValueReader {
    /// A reader over the fields of `record`, which must be a `Value::Record`.
    pub fn new(record: Value) -> Result<Self, DecodeError> {
        match record {
            Value::Record(fields) => Ok(ValueReader {
                fields: fields.into_iter(),
                union_inner: None,
            }),
            other => Err(DecodeError::malformed(
                "(record)",
                format!("expected a record, found {}", describe(&other)),
            )),
        }
    }

    /// Checks that every field was read.
    pub fn finish(mut self) -> Result<(), DecodeError> {
        match self.fields.next() {
            None => Ok(()),
            Some((name, _)) => Err(DecodeError::invalid(
                "(end of datum)",
                format!("unexpected extra field {name}"),
            )),
        }
    }

    fn next(&mut self, field: &'static str) -> Result<Value, DecodeError> {
        if let Some(inner) = self.union_inner.take() {
            return Ok(inner);
        }
        match self.fields.next() {
            Some((name, value)) if name == field => Ok(value),
            Some((name, _)) => Err(DecodeError::malformed(
                field,
                format!("expected field {field}, found {name}"),
            )),
            None => Err(DecodeError::Truncated { field }),
        }
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Boolean(_) => "a boolean",
        Value::Int(_) => "an int",
        Value::Long(_) => "a long",
        Value::Bytes(_) => "bytes",
        Value::String(_) => "a string",
        Value::Enum(..) => "an enum",
        Value::Union(..) => "a union",
        Value::Map(_) => "a map",
        Value::Array(_) => "an array",
        Value::Record(_) => "a record",
        Value::Decimal(_) => "a decimal",
        Value::TimestampMicros(_) => "a timestamp-micros",
        _ => "another Avro type",
    }
}

fn unexpected(field: &'static str, expected: &str, found: &Value) -> DecodeError {
    DecodeError::malformed(
        field,
        format!("expected {expected}, found {}", describe(found)),
    )
}

impl DatumReader for ValueReader {
    fn read_union_branch(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.next(field)? {
            Value::Union(0, inner) if *inner == Value::Null => Ok(false),
            Value::Union(1, inner) => {
                self.union_inner = Some(*inner);
                Ok(true)
            }
            other => Err(unexpected(field, "a [\"null\", T] union", &other)),
        }
    }

    fn read_string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        match self.next(field)? {
            Value::String(value) => Ok(value),
            other => Err(unexpected(field, "a string", &other)),
        }
    }

    fn read_bytes(&mut self, field: &'static str) -> Result<Vec<u8>, DecodeError> {
        match self.next(field)? {
            Value::Bytes(value) => Ok(value),
            other => Err(unexpected(field, "bytes", &other)),
        }
    }

    fn read_int(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        match self.next(field)? {
            Value::Int(value) => Ok(value),
            other => Err(unexpected(field, "an int", &other)),
        }
    }

    fn read_long(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        match self.next(field)? {
            Value::Long(value) => Ok(value),
            other => Err(unexpected(field, "a long", &other)),
        }
    }

    fn read_boolean(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.next(field)? {
            Value::Boolean(value) => Ok(value),
            other => Err(unexpected(field, "a boolean", &other)),
        }
    }

    fn read_timestamp_micros(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        match self.next(field)? {
            Value::TimestampMicros(value) => Ok(value),
            other => Err(unexpected(field, "a timestamp-micros", &other)),
        }
    }

    fn read_decimal_unscaled(&mut self, field: &'static str) -> Result<i128, DecodeError> {
        match self.next(field)? {
            Value::Decimal(decimal) => {
                let bytes = Vec::<u8>::try_from(&decimal)
                    .map_err(|error| DecodeError::malformed(field, error.to_string()))?;
                unscaled_from_twos_complement(&bytes).ok_or_else(|| {
                    DecodeError::DecimalOutOfRange {
                        field,
                        reason: format!(
                            "{}-byte unscaled value does not fit 128 bits",
                            bytes.len()
                        ),
                    }
                })
            }
            other => Err(unexpected(field, "a decimal", &other)),
        }
    }

    fn read_enum_index(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        match self.next(field)? {
            Value::Enum(index, _) => Ok(index),
            other => Err(unexpected(field, "an enum", &other)),
        }
    }

    fn read_string_map(
        &mut self,
        field: &'static str,
    ) -> Result<BTreeMap<String, String>, DecodeError> {
        match self.next(field)? {
            Value::Map(entries) => entries
                .into_iter()
                .map(|(key, value)| match value {
                    Value::String(value) => Ok((key, value)),
                    other => Err(unexpected(field, "a string map value", &other)),
                })
                .collect(),
            other => Err(unexpected(field, "a map", &other)),
        }
    }

    fn read_string_array(&mut self, field: &'static str) -> Result<Vec<String>, DecodeError> {
        match self.next(field)? {
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(item) => Ok(item),
                    other => Err(unexpected(field, "a string array item", &other)),
                })
                .collect(),
            other => Err(unexpected(field, "an array", &other)),
        }
    }
}

/// Builds a `Value::Record` field by field.
#[derive(Debug, Default)]
pub struct ValueWriter {
    /// Fields written so far.
    fields: Vec<(String, Value)>,
    /// Set by a `Some` union branch: the next value is wrapped in `Value::Union(1, _)`.
    in_union: bool,
}

impl ValueWriter {
    /// An empty record.
    pub fn new() -> Self {
        ValueWriter::default()
    }

    /// The finished `Value::Record`.
    pub fn finish(self) -> Value {
        Value::Record(self.fields)
    }

    fn push(&mut self, field: &'static str, value: Value) {
        let value = if std::mem::take(&mut self.in_union) {
            Value::Union(1, Box::new(value))
        } else {
            value
        };
        self.fields.push((field.to_owned(), value));
    }
}

impl DatumWriter for ValueWriter {
    fn write_union_branch(&mut self, field: &'static str, is_some: bool) {
        if is_some {
            self.in_union = true;
        } else {
            self.push(field, Value::Union(0, Box::new(Value::Null)));
        }
    }

    fn write_string(&mut self, field: &'static str, value: &str) {
        self.push(field, Value::String(value.to_owned()));
    }

    fn write_bytes(&mut self, field: &'static str, value: &[u8]) {
        self.push(field, Value::Bytes(value.to_vec()));
    }

    fn write_int(&mut self, field: &'static str, value: i32) {
        self.push(field, Value::Int(value));
    }

    fn write_long(&mut self, field: &'static str, value: i64) {
        self.push(field, Value::Long(value));
    }

    fn write_boolean(&mut self, field: &'static str, value: bool) {
        self.push(field, Value::Boolean(value));
    }

    fn write_timestamp_micros(&mut self, field: &'static str, micros: i64) {
        self.push(field, Value::TimestampMicros(micros));
    }

    fn write_decimal_unscaled(&mut self, field: &'static str, unscaled: i128) {
        let (bytes, start) = twos_complement_minimal(unscaled);
        self.push(
            field,
            Value::Decimal(apache_avro::Decimal::from(&bytes[start..])),
        );
    }

    fn write_enum_symbol(&mut self, field: &'static str, index: u32, symbol: &'static str) {
        self.push(field, Value::Enum(index, symbol.to_owned()));
    }

    fn write_string_map(&mut self, field: &'static str, map: &BTreeMap<String, String>) {
        let entries: HashMap<String, Value> = map
            .iter()
            .map(|(key, value)| (key.clone(), Value::String(value.clone())))
            .collect();
        self.push(field, Value::Map(entries));
    }

    fn write_string_array(&mut self, field: &'static str, items: &[String]) {
        let items = items.iter().cloned().map(Value::String).collect();
        self.push(field, Value::Array(items));
    }
}
