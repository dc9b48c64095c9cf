//! Parsing Canonical Form and CRC-64-AVRO (Rabin) fingerprints, per the Avro specification.
//!
//! Implemented here rather than taken from apache-avro: apache-avro 0.21's `canonical_form()`
//! keeps `precision`/`scale` and writes `{"type":"long"}` for logical types, where the
//! specification (and the Java and Python implementations) reduce them to `"bytes"` / `"long"`.
//! A producer in another language computes the spec fingerprint, so that is the one on the wire.
//! Checked against the specification's test vectors (`share/test/data/schema-tests.txt`).

use serde_json::{Map, Value};
use std::collections::HashSet;

const PRIMITIVES: &[&str] = &[
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];
const NAMED_TYPES: &[&str] = &["record", "enum", "fixed"];
/// The attributes kept, in the order they are written ([STRIP] and [ORDER] rules).
const KEPT_ATTRIBUTES: &[&str] = &[
    "name", "type", "fields", "symbols", "items", "values", "size",
];

/// The Parsing Canonical Form of a JSON schema.
pub fn parsing_canonical_form(schema_json: &str) -> Result<String, String> {
    let schema: Value = serde_json::from_str(schema_json).map_err(|error| error.to_string())?;
    let mut canonical = String::with_capacity(schema_json.len() / 2);
    write_schema(&schema, "", &mut HashSet::new(), &mut canonical)?;
    Ok(canonical)
}

/// CRC-64-AVRO of `bytes`, little-endian (the order of the single-object header).
pub fn rabin_fingerprint(bytes: &[u8]) -> [u8; 8] {
    let mut fingerprint = EMPTY;
    for &byte in bytes {
        fingerprint = (fingerprint >> 8) ^ TABLE[((fingerprint ^ u64::from(byte)) & 0xFF) as usize];
    }
    fingerprint.to_le_bytes()
}

const EMPTY: u64 = 0xC15D_213A_A4D7_A795;
const TABLE: [u64; 256] = rabin_table();

const fn rabin_table() -> [u64; 256] {
    let mut table = [0_u64; 256];
    let mut index = 0;
    while index < 256 {
        let mut fingerprint = index as u64;
        let mut bit = 0;
        while bit < 8 {
            fingerprint = (fingerprint >> 1) ^ (EMPTY & (fingerprint & 1).wrapping_neg());
            bit += 1;
        }
        table[index] = fingerprint;
        index += 1;
    }
    table
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    }
}

fn write_json_string(text: &str, out: &mut String) {
    // serde_json's string escaping is the JSON the specification asks for ([STRINGS]).
    out.push_str(&Value::String(text.to_owned()).to_string());
}

fn write_schema(
    schema: &Value,
    namespace: &str,
    defined: &mut HashSet<String>,
    out: &mut String,
) -> Result<(), String> {
    match schema {
        Value::String(name) if PRIMITIVES.contains(&name.as_str()) => write_json_string(name, out),
        // A reference to a named type defined earlier ([FULLNAMES]).
        Value::String(name) => write_json_string(&full_name(name, namespace), out),
        Value::Array(branches) => {
            out.push('[');
            for (position, branch) in branches.iter().enumerate() {
                if position > 0 {
                    out.push(',');
                }
                write_schema(branch, namespace, defined, out)?;
            }
            out.push(']');
        }
        Value::Object(attributes) => write_object(attributes, namespace, defined, out)?,
        other => return Err(format!("not a schema: {other}")),
    }
    Ok(())
}

fn write_object(
    attributes: &Map<String, Value>,
    namespace: &str,
    defined: &mut HashSet<String>,
    out: &mut String,
) -> Result<(), String> {
    let type_name = match attributes.get("type") {
        Some(Value::String(type_name)) => type_name.as_str(),
        // {"type": {...}} or {"type": [...]}: the attribute itself is the schema.
        Some(nested) => return write_schema(nested, namespace, defined, out),
        None => return Err("schema object without \"type\"".to_owned()),
    };
    // [PRIMITIVES]: {"type":"long","logicalType":...} is "long".
    if PRIMITIVES.contains(&type_name) {
        write_json_string(type_name, out);
        return Ok(());
    }
    let mut inner_namespace = namespace.to_owned();
    let mut name = None;
    if NAMED_TYPES.contains(&type_name) {
        let short_name = attributes
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{type_name} without a name"))?;
        let own_namespace = attributes
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or(namespace);
        let full = full_name(short_name, own_namespace);
        if !defined.insert(full.clone()) {
            write_json_string(&full, out);
            return Ok(());
        }
        inner_namespace = full
            .rsplit_once('.')
            .map_or(String::new(), |(space, _)| space.to_owned());
        name = Some(full);
    }
    out.push('{');
    let mut first = true;
    for attribute in KEPT_ATTRIBUTES {
        let Some(value) = attributes.get(*attribute) else {
            continue;
        };
        if !first {
            out.push(',');
        }
        first = false;
        write_json_string(attribute, out);
        out.push(':');
        match *attribute {
            "name" => write_json_string(name.as_deref().unwrap_or_default(), out),
            "type" => write_json_string(type_name, out),
            "fields" => write_fields(value, &inner_namespace, defined, out)?,
            "symbols" => out.push_str(&value.to_string()),
            "size" => {
                let size = value
                    .as_u64()
                    .or_else(|| value.as_str().and_then(|text| text.parse().ok()))
                    .ok_or_else(|| format!("bad size {value}"))?;
                out.push_str(&size.to_string());
            }
            _ => write_schema(value, &inner_namespace, defined, out)?,
        }
    }
    out.push('}');
    Ok(())
}

fn write_fields(
    fields: &Value,
    namespace: &str,
    defined: &mut HashSet<String>,
    out: &mut String,
) -> Result<(), String> {
    let fields = fields.as_array().ok_or("\"fields\" is not an array")?;
    out.push('[');
    for (position, field) in fields.iter().enumerate() {
        if position > 0 {
            out.push(',');
        }
        let name = field
            .get("name")
            .and_then(Value::as_str)
            .ok_or("field without a name")?;
        let field_type = field.get("type").ok_or("field without a type")?;
        out.push_str("{\"name\":");
        write_json_string(name, out);
        out.push_str(",\"type\":");
        write_schema(field_type, namespace, defined, out)?;
        out.push('}');
    }
    out.push(']');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint_i64(canonical: &str) -> i64 {
        i64::from_le_bytes(rabin_fingerprint(canonical.as_bytes()))
    }

    /// Vectors from the Avro specification's `share/test/data/schema-tests.txt`.
    #[test]
    fn specification_vectors() {
        let cases: &[(&str, &str, Option<i64>)] = &[
            (r#""null""#, r#""null""#, Some(7195948357588979594)),
            (r#"{"type":"int"}"#, r#""int""#, Some(8247732601305521295)),
            (r#""string""#, r#""string""#, Some(-8142146995180207161)),
            (
                r#"[ "int" , {"type":"boolean"} ]"#,
                r#"["int","boolean"]"#,
                Some(5392556393470105090),
            ),
            (
                r#"{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}"#,
                r#"{"name":"x.y.foo","type":"record","fields":[]}"#,
                Some(5916914534497305771),
            ),
            (
                r#"{"fields":[], "type":"record", "name":"a.b.foo", "namespace":"x.y"}"#,
                r#"{"name":"a.b.foo","type":"record","fields":[]}"#,
                Some(-4616218487480524110),
            ),
            (
                r#"{ "fields":[{"type":"boolean", "aliases":[], "name":"f1", "default":"true"},
                   {"order":"descending","name":"f2","doc":"Hello","type":"int"}],
                   "type":"record", "name":"foo"}"#,
                r#"{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},{"name":"f2","type":"int"}]}"#,
                Some(-4860222112080293046),
            ),
            (
                r#"{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar", "symbols":["A1", "A2"]}"#,
                r#"{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}"#,
                Some(-4448647247586288245),
            ),
            (
                r#"{"namespace":"x.y.z", "type":"fixed", "name":"foo", "doc":"foo bar", "size":32}"#,
                r#"{"name":"x.y.z.foo","type":"fixed","size":32}"#,
                Some(-3064184465700546786),
            ),
            (
                r#"{ "items":{"type":"null"}, "type":"array"}"#,
                r#"{"type":"array","items":"null"}"#,
                Some(-589620603366471059),
            ),
            (
                r#"{ "values":"string", "type":"map"}"#,
                r#"{"type":"map","values":"string"}"#,
                Some(-8732877298790414990),
            ),
            (
                r#"{"name":"PigValue","type":"record",
                   "fields":[{"name":"value", "type":["null", "int", "long", "PigValue"]}]}"#,
                r#"{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}"#,
                Some(-1759257747318642341),
            ),
        ];
        for (input, expected_canonical, expected_fingerprint) in cases {
            let canonical = parsing_canonical_form(input).expect("valid schema");
            assert_eq!(&canonical, expected_canonical);
            if let Some(expected) = expected_fingerprint {
                assert_eq!(fingerprint_i64(&canonical), *expected, "{canonical}");
            }
        }
    }

    #[test]
    fn logical_types_reduce_to_their_primitive() {
        let decimal = r#"{"type":"bytes","logicalType":"decimal","precision":38,"scale":12}"#;
        assert_eq!(parsing_canonical_form(decimal).as_deref(), Ok(r#""bytes""#));
        let timestamp = r#"{"type":"long","logicalType":"timestamp-micros"}"#;
        assert_eq!(
            parsing_canonical_form(timestamp).as_deref(),
            Ok(r#""long""#)
        );
    }

    #[test]
    fn nested_named_types_inherit_the_enclosing_namespace() {
        let schema = r#"{"type":"record","name":"R","namespace":"a.b","fields":[
            {"name":"e","type":{"type":"enum","name":"E","symbols":["x"]}},
            {"name":"f","type":["null","E"]}]}"#;
        assert_eq!(
            parsing_canonical_form(schema).as_deref(),
            Ok(
                r#"{"name":"a.b.R","type":"record","fields":[{"name":"e","type":{"name":"a.b.E","type":"enum","symbols":["x"]}},{"name":"f","type":["null","a.b.E"]}]}"#
            )
        );
    }
}
