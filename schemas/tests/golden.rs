//! Golden bytes: the encoding of one fixed UsageEvent is pinned byte for byte, so any change to
//! the wire format (schema, field order, decimal or varint encoding) is a deliberate, reviewed
//! diff of `tests/golden/usage_event_v2.hex`. Regenerate with `UPDATE_GOLDEN=1 cargo test -p
//! schemas --test golden` only when the change is intended (a new schema version).

mod common;

use schemas::codec::{self, AvroRecord};
use schemas::{ControlDecision, UsageEvent, WindowTotal};

const GOLDEN_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/usage_event_v2.hex"
);

#[test]
fn usage_event_v2_golden_bytes() {
    let event = common::sample_usage_event();
    let bytes = codec::encode(&event).expect("valid event");
    let actual_hex = hex::encode(&bytes);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN_PATH, format!("{actual_hex}\n")).expect("write golden file");
    }
    let golden_hex = std::fs::read_to_string(GOLDEN_PATH).expect("golden file exists");
    assert_eq!(
        actual_hex,
        golden_hex.trim(),
        "encoding changed; if intended, regenerate with UPDATE_GOLDEN=1"
    );

    let golden = hex::decode(golden_hex.trim()).expect("golden file is hex");
    assert_eq!(&golden[..2], &[0xC3, 0x01], "single-object magic");
    assert_eq!(
        &golden[2..10],
        &UsageEvent::FINGERPRINT,
        "current schema fingerprint"
    );
    assert_eq!(codec::decode::<UsageEvent>(&golden), Ok(event));
}

const DECISION_V2_GOLDEN_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/control_decision_v2.hex"
);

const DECISION_GOLDEN_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/control_decision_v3.hex"
);

/// Issue 13, point 2: the v2 decision (with `absent`), pinned byte for byte when v2 was current,
/// still decodes to the same decision (not shadow).
#[test]
fn control_decision_v2_golden_bytes_still_decode() {
    let decision = common::sample_control_decision();
    let golden = hex::decode(
        std::fs::read_to_string(DECISION_V2_GOLDEN_PATH)
            .expect("golden file exists")
            .trim(),
    )
    .expect("golden file is hex");
    assert_ne!(&golden[2..10], &ControlDecision::FINGERPRINT);
    assert!(
        golden.ends_with(b"\x02\x0euser_id\x00"),
        "absent is the last v2 field: one block of one string, then the end"
    );
    assert_eq!(codec::decode::<ControlDecision>(&golden), Ok(decision));
}

/// Issue 15, point 4: the v3 decision of a policy in shadow mode is pinned byte for byte: its
/// action on the wire is `allow` and `shadow_action` is the last field.
#[test]
fn control_decision_v3_golden_bytes() {
    let decision = ControlDecision {
        shadow: true,
        ..common::sample_control_decision()
    };
    let bytes = codec::encode(&decision).expect("valid decision");
    let actual_hex = hex::encode(&bytes);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(DECISION_GOLDEN_PATH, format!("{actual_hex}\n")).expect("write golden file");
    }
    let golden_hex = std::fs::read_to_string(DECISION_GOLDEN_PATH).expect("golden file exists");
    assert_eq!(
        actual_hex,
        golden_hex.trim(),
        "encoding changed; if intended, regenerate with UPDATE_GOLDEN=1"
    );
    let golden = hex::decode(golden_hex.trim()).expect("golden file is hex");
    assert_eq!(&golden[2..10], &ControlDecision::FINGERPRINT);
    assert!(
        golden.ends_with(b"\x02\x0euser_id\x00\x02\x0edegrade"),
        "absent, then shadow_action: the union's string branch, \"degrade\""
    );
    assert_eq!(
        codec::decode::<ControlDecision>(&golden),
        Ok(decision.clone())
    );
    // Not shadow: shadow_action is null, the last byte.
    let enforced = codec::encode(&common::sample_control_decision()).unwrap();
    assert!(enforced.ends_with(b"\x02\x0euser_id\x00\x00"));
}

#[test]
fn golden_header_is_the_documented_fingerprint() {
    // The fingerprint in wire order, as other services and other languages will see it.
    assert_eq!(
        codec::fingerprint_hex(&UsageEvent::FINGERPRINT),
        "de4865c5e45ab423"
    );
}

#[test]
fn window_total_fingerprint_is_the_documented_one() {
    // The alerter (and any other reader of the totals topic) recognises records by it.
    assert_eq!(
        codec::fingerprint_hex(&WindowTotal::FINGERPRINT),
        "a7c5925239f95e13"
    );
}
