//! Resolution of a record written with an older schema to the current one.
//!
//! Done here, at the level of apache-avro `Value`s, rather than with apache-avro's own
//! writer→reader resolution: apache-avro 0.21 (and 0.22) refuses to resolve any `bytes` decimal
//! shorter than the bytes its precision could need ("Precision 38 too small to hold decimal
//! values with 5 bytes"), i.e. nearly every amount. The evolution rule keeps the job small:
//! fields are matched by name, a reader field missing from the writer gets its default, and a
//! writer field the reader does not know is skipped. Types of shared fields never change (a test
//! checks every registered version), so their values carry over as they are.

use super::error::DecodeError;
use apache_avro::types::Value;
use apache_avro::Schema;
use std::collections::HashMap;

/// `writer_record` (decoded with its own writer schema) as a record of `reader`.
pub(crate) fn resolve_record(writer_record: Value, reader: &Schema) -> Result<Value, DecodeError> {
    let Schema::Record(reader_record) = reader else {
        return Err(DecodeError::malformed(
            "(datum)",
            "reader schema is not a record",
        ));
    };
    let Value::Record(writer_fields) = writer_record else {
        return Err(DecodeError::malformed(
            "(datum)",
            "writer datum is not a record",
        ));
    };
    let mut writer_fields: HashMap<String, Value> = writer_fields.into_iter().collect();
    let mut fields = Vec::with_capacity(reader_record.fields.len());
    for field in &reader_record.fields {
        let value = match writer_fields.remove(&field.name) {
            Some(value) => value,
            None => {
                let default = field.default.clone().ok_or_else(|| {
                    DecodeError::malformed(
                        "(datum)",
                        format!("field {} is missing and has no default", field.name),
                    )
                })?;
                Value::from(default)
                    .resolve(&field.schema)
                    .map_err(|error| {
                        DecodeError::malformed(
                            "(datum)",
                            format!("default of field {}: {error}", field.name),
                        )
                    })?
            }
        };
        fields.push((field.name.clone(), value));
    }
    Ok(Value::Record(fields))
}
