//! Property tests: every record survives encode → decode exactly, and the fast path agrees with
//! apache-avro in both directions (it reads what apache-avro writes, apache-avro reads what it
//! writes).

mod common;

use proptest::prelude::*;
use schemas::codec::{self, AvroRecord};
use std::fmt::Debug;

fn fail(error: impl ToString) -> TestCaseError {
    TestCaseError::fail(error.to_string())
}

fn check_round_trip<T: AvroRecord + PartialEq + Debug>(record: &T) -> Result<(), TestCaseError> {
    let bytes = codec::encode(record).map_err(fail)?;
    prop_assert_eq!(&bytes[..2], &[0xC3, 0x01][..]);
    prop_assert_eq!(&bytes[2..10], &T::FINGERPRINT[..]);

    let fast: T = codec::decode(&bytes).map_err(fail)?;
    prop_assert_eq!(&fast, record);

    // apache-avro reads the fast path's bytes as the Value the record stands for …
    let expected_value = codec::to_avro_value(record).map_err(fail)?;
    let read_by_apache =
        apache_avro::from_avro_datum(T::current_schema(), &mut &bytes[10..], None).map_err(fail)?;
    prop_assert_eq!(&read_by_apache, &expected_value);
    let generic: T = codec::decode_generic(&bytes).map_err(fail)?;
    prop_assert_eq!(&generic, record);

    // … and the fast path reads what apache-avro writes.
    let written_by_apache =
        apache_avro::to_avro_datum(T::current_schema(), expected_value).map_err(fail)?;
    let from_apache: T = codec::decode_datum(&written_by_apache).map_err(fail)?;
    prop_assert_eq!(&from_apache, record);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn usage_event_round_trips(event in common::usage_event()) {
        check_round_trip(&event)?;
    }

    #[test]
    fn usage_event_json_round_trips(event in common::usage_event()) {
        let json = serde_json::to_string(&event).map_err(fail)?;
        let back: schemas::UsageEvent = serde_json::from_str(&json).map_err(fail)?;
        prop_assert_eq!(back, event);
    }

    #[test]
    fn control_decision_round_trips(decision in common::control_decision()) {
        check_round_trip(&decision)?;
    }

    #[test]
    fn window_total_round_trips(total in common::window_total()) {
        check_round_trip(&total)?;
    }

    #[test]
    fn window_total_json_round_trips(total in common::window_total()) {
        let json = serde_json::to_string(&total).map_err(fail)?;
        let back: schemas::WindowTotal = serde_json::from_str(&json).map_err(fail)?;
        prop_assert_eq!(back, total);
    }

    #[test]
    fn alert_round_trips(alert in common::alert()) {
        check_round_trip(&alert)?;
    }

    #[test]
    fn approval_round_trips(approval in common::approval()) {
        check_round_trip(&approval)?;
    }

    #[test]
    fn dead_letter_round_trips(dead_letter in common::dead_letter()) {
        check_round_trip(&dead_letter)?;
    }

    #[test]
    fn amounts_round_trip_exactly(amount in common::amount()) {
        let unscaled = schemas::money::to_unscaled(&amount).map_err(fail)?;
        prop_assert_eq!(schemas::money::from_unscaled(unscaled).map_err(fail)?, amount);
    }
}

#[test]
fn samples_round_trip() {
    check_round_trip(&common::sample_usage_event()).expect("usage event");
    check_round_trip(&common::sample_control_decision()).expect("control decision");
    check_round_trip(&common::sample_alert()).expect("alert");
    check_round_trip(&common::sample_approval()).expect("approval");
    check_round_trip(&common::sample_dead_letter()).expect("dead letter");
    check_round_trip(&common::sample_window_total()).expect("window total");
}

#[test]
fn encode_into_appends_and_leaves_the_buffer_alone_on_error() {
    let event = common::sample_usage_event();
    let mut buffer = b"prefix".to_vec();
    codec::encode_into(&event, &mut buffer).expect("valid");
    assert_eq!(&buffer[..6], b"prefix");
    assert_eq!(
        codec::decode::<schemas::UsageEvent>(&buffer[6..]),
        Ok(event.clone())
    );

    let mut invalid = event;
    invalid.reported_cost_usd = Some(common::dec("-1"));
    let before = buffer.clone();
    assert!(codec::encode_into(&invalid, &mut buffer).is_err());
    assert_eq!(buffer, before);
}
