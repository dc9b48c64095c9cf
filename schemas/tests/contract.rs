//! The documents, the `.avsc` files and the Rust types say the same thing.

use schemas::avro_enum::AvroEnum;
use schemas::codec::{registry, AvroRecord};
use schemas::{
    Alert, AlertKind, Approval, ControlDecision, CostSource, DeadLetter, DecisionAction, ImageTier,
    JobState, Modality, Severity, Status, UsageEvent, WindowTotal,
};
use serde_json::Value;

const CONTRACT_MD: &str = include_str!("../CONTRACT.md");

/// One field of a contract table: name, type in the table's words, enum symbols if any.
#[derive(Debug, PartialEq)]
struct ContractField {
    name: String,
    type_words: String,
    symbols: Option<Vec<String>>,
}

/// The rows of the first table after `heading`, one per field (multi-field rows split).
fn contract_table(heading: &str) -> Vec<ContractField> {
    let section = CONTRACT_MD
        .split_once(heading)
        .unwrap_or_else(|| panic!("CONTRACT.md has no {heading:?} section"))
        .1;
    let rows = section
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2); // header and separator
    let mut fields = Vec::new();
    for row in rows {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let [names, type_words, meaning] = cells[..] else {
            panic!("contract row {row:?} does not have 3 cells");
        };
        let symbols = type_words
            .ends_with("enum")
            .then(|| meaning.split(", ").map(str::to_owned).collect());
        for name in names.split(", ") {
            fields.push(ContractField {
                name: name.to_owned(),
                type_words: type_words.to_owned(),
                symbols: symbols.clone(),
            });
        }
    }
    assert!(!fields.is_empty(), "empty table under {heading:?}");
    fields
}

/// A schema type in the contract's words (`null or decimal`, `map of string` …).
fn type_words(schema: &Value) -> String {
    match schema {
        Value::String(primitive) => primitive.clone(),
        Value::Array(branches) => {
            assert_eq!(branches.len(), 2, "only [\"null\", T] unions: {schema}");
            assert_eq!(
                branches[0], "null",
                "null first so the default can be null: {schema}"
            );
            format!("null or {}", type_words(&branches[1]))
        }
        Value::Object(attributes) => match attributes.get("logicalType").and_then(Value::as_str) {
            Some("timestamp-micros") => {
                assert_eq!(attributes["type"], "long");
                "timestamp-micros".to_owned()
            }
            Some("decimal") => {
                assert_eq!(attributes["type"], "bytes");
                assert_eq!(attributes["precision"].as_u64(), Some(38), "{schema}");
                assert_eq!(attributes["scale"].as_u64(), Some(12), "{schema}");
                "decimal".to_owned()
            }
            Some(other) => panic!("unexpected logical type {other}"),
            None => match attributes["type"].as_str() {
                Some("enum") => "enum".to_owned(),
                Some("map") => format!("map of {}", type_words(&attributes["values"])),
                Some("array") => format!("array of {}", type_words(&attributes["items"])),
                _ => panic!("unexpected schema {schema}"),
            },
        },
        other => panic!("unexpected schema {other}"),
    }
}

fn enum_symbols(schema: &Value) -> Option<Vec<String>> {
    let schema = match schema {
        Value::Array(branches) => &branches[1],
        other => other,
    };
    (schema.get("type") == Some(&Value::from("enum"))).then(|| {
        schema["symbols"]
            .as_array()
            .expect("symbols")
            .iter()
            .map(|symbol| symbol.as_str().expect("symbol").to_owned())
            .collect()
    })
}

fn schema_fields(json: &str) -> Vec<ContractField> {
    let schema: Value = serde_json::from_str(json).expect("valid JSON");
    schema["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|field| {
            let nullable = field["type"].is_array();
            if nullable {
                assert_eq!(
                    field.get("default"),
                    Some(&Value::Null),
                    "{} defaults to null",
                    field["name"]
                );
            }
            ContractField {
                name: field["name"].as_str().expect("name").to_owned(),
                type_words: type_words(&field["type"]),
                symbols: enum_symbols(&field["type"]),
            }
        })
        .collect()
}

#[test]
fn contract_table_matches_current_schema() {
    let contract = contract_table("## Contract fields");
    let envelope = contract_table("## Pricing envelope");
    assert_eq!(
        schema_fields(registry::USAGE_EVENT_V1_AVSC),
        contract,
        "v1 = contract table"
    );
    let current: Vec<_> = contract.into_iter().chain(envelope).collect();
    assert_eq!(
        schema_fields(registry::USAGE_EVENT_V2_AVSC),
        current,
        "current = contract table + pricing envelope table"
    );
    let current_file = registry::current(UsageEvent::RECORD_NAME).file;
    assert_eq!(
        current_file.file_name, "usage_event.v2.avsc",
        "update this test and CONTRACT.md"
    );
}

#[test]
fn every_schema_uses_the_project_conventions() {
    for registered in registry::registered() {
        let schema: Value = serde_json::from_str(registered.file.json).expect("valid JSON");
        assert_eq!(
            schema["namespace"],
            registry::NAMESPACE,
            "{}",
            registered.file.file_name
        );
        // Types in the contract's vocabulary only; decimals are (38, 12), unions null-first.
        schema_fields(registered.file.json);
        for field in schema["fields"].as_array().expect("fields") {
            assert!(field["doc"].is_string(), "{} has no doc", field["name"]);
        }
    }
}

fn assert_enum_matches_schema<E: AvroEnum>(json: &str) {
    fn find<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
        match value {
            Value::Object(map)
                if map.get("type") == Some(&Value::from("enum"))
                    && map.get("name") == Some(&Value::from(name)) =>
            {
                Some(value)
            }
            Value::Object(map) => map.values().find_map(|inner| find(inner, name)),
            Value::Array(items) => items.iter().find_map(|inner| find(inner, name)),
            _ => None,
        }
    }
    let schema: Value = serde_json::from_str(json).expect("valid JSON");
    let found = find(&schema, E::AVRO_NAME)
        .unwrap_or_else(|| panic!("enum {} not in schema", E::AVRO_NAME));
    let symbols: Vec<&str> = found["symbols"]
        .as_array()
        .expect("symbols")
        .iter()
        .map(|symbol| symbol.as_str().expect("string symbol"))
        .collect();
    assert_eq!(symbols, E::SYMBOLS, "{} symbols", E::AVRO_NAME);
    for (index, symbol) in E::SYMBOLS.iter().enumerate() {
        let value = E::from_index(index as u32).expect("index in range");
        assert_eq!(value.symbol(), *symbol);
        assert_eq!(value.index(), index as u32);
    }
    assert!(E::from_index(E::SYMBOLS.len() as u32).is_none());
}

#[test]
fn rust_enums_match_avro_symbols() {
    assert_enum_matches_schema::<Modality>(registry::USAGE_EVENT_V2_AVSC);
    assert_enum_matches_schema::<ImageTier>(registry::USAGE_EVENT_V2_AVSC);
    assert_enum_matches_schema::<JobState>(registry::USAGE_EVENT_V2_AVSC);
    assert_enum_matches_schema::<Status>(registry::USAGE_EVENT_V2_AVSC);
    assert_enum_matches_schema::<CostSource>(registry::USAGE_EVENT_V2_AVSC);
    assert_enum_matches_schema::<DecisionAction>(registry::CONTROL_DECISION_V2_AVSC);
    assert_enum_matches_schema::<AlertKind>(registry::ALERT_V1_AVSC);
    assert_enum_matches_schema::<Severity>(registry::ALERT_V1_AVSC);
}

fn assert_record_is_registered<T: AvroRecord>() {
    let current = registry::current(T::RECORD_NAME);
    assert_eq!(
        T::FINGERPRINT,
        current.fingerprint,
        "{}::FINGERPRINT is stale; the schema's fingerprint is {}",
        T::RECORD_NAME,
        schemas::codec::fingerprint_hex(&current.fingerprint)
    );
    let schema_name = match T::current_schema() {
        apache_avro::Schema::Record(record) => record.name.fullname(None),
        other => panic!("{} is not a record: {other:?}", T::RECORD_NAME),
    };
    assert_eq!(schema_name, T::RECORD_NAME);
    assert_eq!(
        T::writer_schemas().last().map(|schema| schema.fingerprint),
        Some(T::FINGERPRINT)
    );
}

#[test]
fn fingerprint_constants_match_the_schemas() {
    assert_record_is_registered::<UsageEvent>();
    assert_record_is_registered::<ControlDecision>();
    assert_record_is_registered::<Alert>();
    assert_record_is_registered::<Approval>();
    assert_record_is_registered::<DeadLetter>();
    assert_record_is_registered::<WindowTotal>();
}

#[test]
fn fingerprints_are_unique_and_files_versioned() {
    let registered = registry::registered();
    for (position, schema) in registered.iter().enumerate() {
        for other in &registered[position + 1..] {
            assert_ne!(
                schema.fingerprint, other.fingerprint,
                "{} vs {}",
                schema.file.file_name, other.file.file_name
            );
        }
        let stem = schema.file.file_name.trim_end_matches(".avsc");
        assert!(
            stem.ends_with(&format!(".v{}", schema.file.version)),
            "{stem}"
        );
        let on_disk = std::fs::read_to_string(format!(
            "{}/avro/{}",
            env!("CARGO_MANIFEST_DIR"),
            schema.file.file_name
        ))
        .expect("every registered schema is a file in schemas/avro");
        assert_eq!(on_disk, schema.file.json);
    }
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/avro"))
        .expect("schemas/avro exists")
        .count();
    assert_eq!(
        files,
        registered.len(),
        "every .avsc in schemas/avro is registered"
    );
}
