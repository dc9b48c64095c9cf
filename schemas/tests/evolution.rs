//! Schema evolution: data written with `usage_event.v1.avsc` (the first published version)
//! decodes with the current reader, the pricing envelope defaulted.

mod common;

use apache_avro::types::Value;
use schemas::codec::{self, registry, AvroRecord};
use schemas::{ControlDecision, UsageEvent};

const ENVELOPE: [&str; 3] = ["cost_usd", "cost_source", "catalog_version"];

fn v1() -> &'static registry::RegisteredSchema {
    UsageEvent::writer_schemas()
        .into_iter()
        .find(|schema| schema.file.version == 1)
        .expect("v1 is registered")
}

/// `event` without its pricing envelope, written by apache-avro with the v1 schema and framed
/// with the v1 single-object header.
fn encode_as_v1(event: &UsageEvent) -> Vec<u8> {
    encode_as_older(event, v1(), &ENVELOPE)
}

#[test]
fn v1_event_decodes_with_the_current_reader() {
    let mut event = common::sample_usage_event();
    let bytes = encode_as_v1(&event);
    assert_ne!(&bytes[2..10], &UsageEvent::FINGERPRINT);

    let decoded: UsageEvent = codec::decode(&bytes).expect("v1 resolves to v2");
    assert_eq!(decoded.cost_usd, None);
    assert_eq!(decoded.cost_source, None);
    assert_eq!(decoded.catalog_version, None);
    event.cost_usd = None;
    event.cost_source = None;
    event.catalog_version = None;
    assert_eq!(decoded, event);
    assert_eq!(codec::decode_generic::<UsageEvent>(&bytes), Ok(event));
}

#[test]
fn v1_data_with_trailing_garbage_is_rejected() {
    let mut bytes = encode_as_v1(&common::sample_usage_event());
    bytes.push(0);
    let error = codec::decode::<UsageEvent>(&bytes).expect_err("trailing byte");
    assert_eq!(error.kind(), "invalid_value");
}

#[test]
fn truncated_v1_data_is_an_error_not_a_panic() {
    let bytes = encode_as_v1(&common::sample_usage_event());
    for cut in 10..bytes.len() {
        assert!(
            codec::decode::<UsageEvent>(&bytes[..cut]).is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn v2_is_v1_plus_defaulted_fields_only() {
    let fields = |json: &str| -> Vec<serde_json::Value> {
        let schema: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
        schema["fields"].as_array().expect("fields").clone()
    };
    let v1_fields = fields(registry::USAGE_EVENT_V1_AVSC);
    let v2_fields = fields(registry::USAGE_EVENT_V2_AVSC);
    for (old, new) in v1_fields.iter().zip(&v2_fields) {
        assert_eq!(old["name"], new["name"], "contract fields keep their order");
        assert_eq!(
            old["type"], new["type"],
            "contract field {} keeps its type",
            old["name"]
        );
    }
    for added in &v2_fields[v1_fields.len()..] {
        assert!(
            added.get("default").is_some(),
            "{} has no default",
            added["name"]
        );
    }
    let added: Vec<_> = v2_fields[v1_fields.len()..]
        .iter()
        .map(|field| field["name"].as_str().expect("name"))
        .collect();
    assert_eq!(added, ENVELOPE);
}

#[test]
fn a_forged_length_in_old_data_is_an_error_not_a_huge_allocation() {
    // v1 header, then event_id claiming 1 GiB of string.
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&v1().fingerprint);
    bytes.extend(common::varint(1 << 30));
    bytes.extend_from_slice(b"abc");
    let error = codec::decode::<UsageEvent>(&bytes).expect_err("forged length");
    assert_eq!(error.kind(), "malformed", "{error}");
}

fn approval_v1() -> &'static registry::RegisteredSchema {
    schemas::Approval::writer_schemas()
        .into_iter()
        .find(|schema| schema.file.version == 1)
        .expect("approval v1 is registered")
}

#[test]
fn unsigned_v1_approval_decodes_with_an_empty_signature() {
    let mut approval = common::sample_approval();
    let bytes = encode_as_older(&approval, approval_v1(), &["signature"]);
    assert_ne!(&bytes[2..10], &schemas::Approval::FINGERPRINT);

    let decoded: schemas::Approval = codec::decode(&bytes).expect("v1 resolves to v2");
    approval.signature = Vec::new();
    assert_eq!(decoded, approval);
}

#[test]
fn approval_v2_is_v1_plus_the_defaulted_signature() {
    let fields = |json: &str| -> Vec<serde_json::Value> {
        let schema: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
        schema["fields"].as_array().expect("fields").clone()
    };
    let v1_fields = fields(registry::APPROVAL_V1_AVSC);
    let v2_fields = fields(registry::APPROVAL_V2_AVSC);
    assert_eq!(v2_fields.len(), v1_fields.len() + 1);
    for (old, new) in v1_fields.iter().zip(&v2_fields) {
        assert_eq!(old["name"], new["name"]);
        assert_eq!(old["type"], new["type"]);
    }
    let added = v2_fields.last().expect("the signature");
    assert_eq!(added["name"], "signature");
    assert_eq!(added["default"], "");
}

#[test]
fn signed_bytes_cover_every_field_but_the_signature() {
    let approval = common::sample_approval();
    let signed = approval.signed_bytes().expect("encodable");
    assert!(signed.starts_with(schemas::approval::SIGNED_BYTES_PREFIX));
    // The signature itself is not signed …
    let mut resigned = approval.clone();
    resigned.signature = vec![1; 64];
    assert_eq!(resigned.signed_bytes().unwrap(), signed);
    // … and every other field is: the signed bytes are the v1 datum after the prefix.
    let encoded = codec::encode(&approval).unwrap();
    let datum = &encoded[10..];
    let prefix_len = schemas::approval::SIGNED_BYTES_PREFIX.len() + 1;
    assert!(datum.starts_with(&signed[prefix_len..]));
    let mut changed = approval.clone();
    changed.new_limit = common::dec("1500.000000000001");
    assert_ne!(changed.signed_bytes().unwrap(), signed);
    let mut changed = approval;
    changed.valid_until += chrono::TimeDelta::microseconds(1);
    assert_ne!(changed.signed_bytes().unwrap(), signed);
}

/// `record` without the fields `added` after `older`, written by apache-avro with the `older`
/// schema and framed with its single-object header.
fn encode_as_older<T: AvroRecord>(
    record: &T,
    older: &registry::RegisteredSchema,
    added: &[&str],
) -> Vec<u8> {
    let Value::Record(fields) = codec::to_avro_value(record).expect("valid record") else {
        panic!("records encode to Value::Record");
    };
    let older_fields = fields
        .into_iter()
        .filter(|(name, _)| !added.contains(&name.as_str()))
        .collect();
    let datum = apache_avro::to_avro_datum(&older.schema, Value::Record(older_fields))
        .expect("an older value is valid for the older schema");
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&older.fingerprint);
    bytes.extend_from_slice(&datum);
    bytes
}

/// The v1 `ControlDecision` schema (before `absent`).
fn decision_v1() -> &'static registry::RegisteredSchema {
    decision_schema(1)
}

fn decision_schema(version: u32) -> &'static registry::RegisteredSchema {
    ControlDecision::writer_schemas()
        .into_iter()
        .find(|schema| schema.file.version == version)
        .expect("the decision version is registered")
}

/// Issue 13, point 2: a decision published before `absent` existed (v1, still on the compacted
/// control topic) decodes with the current reader, with no absent dimension.
#[test]
fn v1_decision_decodes_with_absent_empty() {
    let mut decision = common::sample_control_decision();
    decision.absent.clear();
    decision.key = ControlDecision::compaction_key(&decision.policy_id, &decision.scope);
    let bytes = encode_as_older(&decision, decision_v1(), &["absent", "shadow_action"]);
    assert_ne!(&bytes[2..10], &ControlDecision::FINGERPRINT);

    let decoded: ControlDecision = codec::decode(&bytes).expect("v1 resolves to v3");
    assert_eq!(decoded.absent, Vec::<String>::new());
    assert_eq!(decoded, decision);
    assert_eq!(
        codec::decode_generic::<ControlDecision>(&bytes),
        Ok(decision)
    );
}

/// Issue 13, point 2: v2 is v1 plus `absent` (defaulted to []), nothing else changed.
#[test]
fn decision_v2_is_v1_plus_absent() {
    let fields = |json: &str| -> Vec<serde_json::Value> {
        let schema: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
        schema["fields"].as_array().expect("fields").clone()
    };
    let v1_fields = fields(registry::CONTROL_DECISION_V1_AVSC);
    let v2_fields = fields(registry::CONTROL_DECISION_V2_AVSC);
    assert_eq!(&v2_fields[..v1_fields.len()], &v1_fields[..]);
    let added = &v2_fields[v1_fields.len()..];
    assert_eq!(added.len(), 1);
    assert_eq!(added[0]["name"], "absent");
    assert_eq!(added[0]["default"], serde_json::json!([]));
}

/// Issue 15, point 4: a decision published before shadow mode existed (v2) decodes as enforced.
#[test]
fn v2_decision_decodes_as_enforced() {
    let decision = common::sample_control_decision();
    let bytes = encode_as_older(&decision, decision_schema(2), &["shadow_action"]);
    assert_ne!(&bytes[2..10], &ControlDecision::FINGERPRINT);
    let decoded: ControlDecision = codec::decode(&bytes).expect("v2 resolves to v3");
    assert!(!decoded.shadow);
    assert_eq!(decoded, decision);
}

/// Issue 15, point 4: a gateway still reading with the v2 schema sees a shadow decision as an
/// allow (it never enforces a dry run); the current reader sees what it would do.
#[test]
fn a_reader_of_v2_sees_a_shadow_decision_as_an_allow() {
    let decision = ControlDecision {
        shadow: true,
        action: schemas::DecisionAction::Block,
        degrade_to: None,
        ..common::sample_control_decision()
    };
    let bytes = codec::encode(&decision).expect("valid shadow decision");
    // What is on the wire, read with the writer's schema (apache-avro cannot resolve these
    // decimals against another schema, and need not: an older reader keeps `action` as written
    // and skips the field it does not know, by Avro's resolution rules).
    let current = decision_schema(3);
    let mut datum = &bytes[10..];
    let read = apache_avro::from_avro_datum(&current.schema, &mut datum, None)
        .expect("v3 data reads with its schema");
    let Value::Record(fields) = read else {
        panic!("a record");
    };
    let field = |wanted: &str| {
        fields
            .iter()
            .find(|(name, _)| name == wanted)
            .map(|(_, value)| value.clone())
    };
    assert_eq!(field("action"), Some(Value::Enum(0, "allow".to_owned())));
    assert_eq!(
        field("shadow_action"),
        Some(Value::Union(1, Box::new(Value::String("block".to_owned()))))
    );
    // The v2 schema has every field the record has but shadow_action, unchanged.
    let v2_names: Vec<String> =
        serde_json::from_str::<serde_json::Value>(registry::CONTROL_DECISION_V2_AVSC).unwrap()
            ["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|field| field["name"].as_str().unwrap().to_owned())
            .collect();
    assert!(!v2_names.contains(&"shadow_action".to_owned()));
    assert!(v2_names.contains(&"action".to_owned()));
    let decoded: ControlDecision = codec::decode(&bytes).unwrap();
    assert_eq!(decoded, decision);
}

/// Issue 15, point 4: v3 is v2 plus `shadow_action` (defaulted to null), nothing else changed.
#[test]
fn decision_v3_is_v2_plus_shadow_action() {
    let fields = |json: &str| -> Vec<serde_json::Value> {
        let schema: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
        schema["fields"].as_array().expect("fields").clone()
    };
    let v2_fields = fields(registry::CONTROL_DECISION_V2_AVSC);
    let v3_fields = fields(registry::CONTROL_DECISION_V3_AVSC);
    assert_eq!(&v3_fields[..v2_fields.len()], &v2_fields[..]);
    let added = &v3_fields[v2_fields.len()..];
    assert_eq!(added.len(), 1);
    assert_eq!(added[0]["name"], "shadow_action");
    assert_eq!(added[0]["default"], serde_json::Value::Null);
}

/// A `shadow_action` other than block or degrade (another writer's mistake) is a decode error
/// naming the field, never an enforced or silently dropped decision.
#[test]
fn an_unknown_shadow_action_is_refused() {
    let decision = ControlDecision {
        shadow: true,
        ..common::sample_control_decision()
    };
    let Value::Record(mut fields) = codec::to_avro_value(&decision).unwrap() else {
        panic!("a record");
    };
    for (name, value) in &mut fields {
        if name == "shadow_action" {
            *value = Value::Union(1, Box::new(Value::String("allow".to_owned())));
        }
    }
    let current = decision_schema(3);
    let datum = apache_avro::to_avro_datum(&current.schema, Value::Record(fields)).unwrap();
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&current.fingerprint);
    bytes.extend_from_slice(&datum);
    let error = codec::decode::<ControlDecision>(&bytes).unwrap_err();
    assert!(error.to_string().contains("shadow_action"), "{error}");
}
