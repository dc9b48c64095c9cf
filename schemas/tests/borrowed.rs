//! Issue 16 point 4: [`UsageEventRef`] decodes exactly what `codec::decode` does, without copying
//! strings; an older schema version is left to the resolving path; bad records fail alike.

mod common;

use proptest::prelude::*;
use schemas::codec::{self, AvroRecord};
use schemas::{UsageEvent, UsageEventRef};

proptest! {
    #[test]
    fn the_borrowed_event_owns_to_the_decoded_one(event in common::usage_event()) {
        let bytes = codec::encode(&event).expect("valid event");
        let borrowed = UsageEventRef::decode_current(&bytes)
            .expect("decodes")
            .expect("the current schema");
        let owned = borrowed.to_owned();
        prop_assert_eq!(&owned, &event);
        prop_assert_eq!(owned, codec::decode::<UsageEvent>(&bytes).unwrap());
    }

    /// Decoding into a kept event (the aggregator's reused buffers) gives the decoded event,
    /// whatever the kept one held before: other strings, other labels, a repeated label key.
    #[test]
    fn writing_into_a_kept_event_gives_the_decoded_one(
        event in common::usage_event(),
        previous_kind in 0u8..3,
        same_label_keys in any::<bool>(),
    ) {
        // What the kept event held: a full sample, a bare one (no optional strings, no labels),
        // or one with many labels. (Two generated events in one case overflow the test
        // thread's stack in debug builds.)
        let mut previous = common::sample_usage_event();
        match previous_kind {
            0 => {}
            1 => {
                previous.labels.clear();
                previous.user_id = None;
                previous.customer_id = None;
                previous.job_id = None;
                previous.fallback_from_model = None;
                previous.catalog_version = None;
            }
            _ => {
                for index in 0..12 {
                    previous.labels.insert(format!("label-{index}"), "x".repeat(index));
                }
            }
        }
        let mut event = event;
        if same_label_keys {
            // The common case the in-place path serves: the previous event's label keys.
            event.labels = previous
                .labels
                .keys()
                .map(|key| (key.clone(), format!("{key}-now")))
                .collect();
        }
        let bytes = codec::encode(&event).expect("valid event");
        let borrowed = UsageEventRef::decode_current(&bytes).unwrap().unwrap();
        let mut kept = previous;
        borrowed.write_into(&mut kept);
        prop_assert_eq!(&kept, &event);
    }

    #[test]
    fn truncated_or_corrupted_records_fail_like_the_owned_decode(
        event in common::usage_event(),
        cut in 0usize..400,
        flip in 0usize..400,
    ) {
        let bytes = codec::encode(&event).expect("valid event");
        let truncated = &bytes[..cut.min(bytes.len())];
        if truncated.len() < bytes.len() {
            prop_assert!(UsageEventRef::decode_current(truncated).is_err());
            prop_assert!(codec::decode::<UsageEvent>(truncated).is_err());
        }
        let mut flipped = bytes.clone();
        let at = flip % flipped.len();
        flipped[at] ^= 0x5A;
        let borrowed = UsageEventRef::decode_current(&flipped).map(|event| event.map(|e| e.to_owned()));
        match codec::decode::<UsageEvent>(&flipped) {
            Ok(owned) => {
                // A flip inside the header's fingerprint may name another known version.
                if let Ok(Some(borrowed)) = borrowed {
                    prop_assert_eq!(borrowed, owned);
                }
            }
            Err(_) => prop_assert!(borrowed.is_err() || matches!(borrowed, Ok(None))),
        }
    }
}

#[test]
fn a_record_of_an_older_schema_is_left_to_the_resolving_path() {
    let event = common::sample_usage_event();
    let v1 = UsageEvent::writer_schemas()
        .into_iter()
        .find(|schema| schema.file.version == 1)
        .unwrap();
    let current = codec::encode(&event).unwrap();
    let mut older = current.clone();
    older[2..10].copy_from_slice(&v1.fingerprint);
    assert_eq!(UsageEventRef::decode_current(&older).ok(), Some(None));
    let mut unknown = current;
    unknown[2..10].copy_from_slice(&[0xAB; 8]);
    let error = UsageEventRef::decode_current(&unknown).unwrap_err();
    assert_eq!(error.kind(), "unknown_fingerprint");
}

#[test]
fn a_record_breaking_the_contract_is_refused_by_both_paths() {
    use apache_avro::types::Value;
    let event = common::sample_usage_event();
    let Value::Record(mut fields) = codec::to_avro_value(&event).unwrap() else {
        panic!("a record");
    };
    for (name, value) in &mut fields {
        if name == "cached_input_tokens" {
            *value = Value::Long(event.input_tokens as i64 + 1);
        }
    }
    let schema = UsageEvent::writer_schemas()
        .into_iter()
        .find(|schema| schema.is_current)
        .unwrap();
    let datum = apache_avro::to_avro_datum(&schema.schema, Value::Record(fields)).unwrap();
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&schema.fingerprint);
    bytes.extend_from_slice(&datum);
    let borrowed = UsageEventRef::decode_current(&bytes).unwrap_err();
    let owned = codec::decode::<UsageEvent>(&bytes).unwrap_err();
    assert_eq!(borrowed, owned);
    assert!(
        borrowed.to_string().contains("cached_input_tokens"),
        "{borrowed}"
    );
}
