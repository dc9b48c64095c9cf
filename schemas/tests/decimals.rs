//! Money edge cases: exact at 1e-12, never rounded, never a wrong number.

mod common;

use common::{dec, encode_with_patched_field, optional_decimal_bytes};
use rust_decimal::Decimal;
use schemas::codec::{self, DecodeError};
use schemas::money::{self, MoneyError};
use schemas::UsageEvent;

fn with_reported_cost(cost: Decimal) -> UsageEvent {
    UsageEvent {
        reported_cost_usd: Some(cost),
        ..common::sample_usage_event()
    }
}

fn round_trip(cost: Decimal) -> Decimal {
    let bytes = codec::encode(&with_reported_cost(cost)).expect("encodable");
    let decoded: UsageEvent = codec::decode(&bytes).expect("decodable");
    decoded.reported_cost_usd.expect("present")
}

#[test]
fn one_picodollar_is_exact_and_sums_exactly() {
    let step = dec("0.000000000001");
    assert_eq!(money::to_unscaled(&step), Ok(1));
    let mut total = Decimal::ZERO;
    for _ in 0..1_000_000 {
        total += round_trip(step);
        if total >= dec("0.000000001") {
            break;
        }
    }
    assert_eq!(total, dec("0.000000001"), "1000 steps of 1e-12, exactly");

    let mut sum = Decimal::ZERO;
    for _ in 0..1_000_000 {
        sum += step;
    }
    assert_eq!(sum, dec("0.000001"));
    assert_eq!(round_trip(sum), dec("0.000001"));
    assert_eq!(round_trip(dec("0.100000000001")), dec("0.100000000001"));
}

#[test]
fn wire_value_of_one_picodollar() {
    // The decimal field on the wire: branch 1 (0x02), length 1 (0x02), unscaled 1 (0x01).
    let bytes = codec::encode(&with_reported_cost(dec("0.000000000001"))).expect("encodable");
    let expected = encode_with_patched_field(
        &with_reported_cost(Decimal::ONE),
        "reported_cost_usd",
        &[0x02, 0x02, 0x01],
    );
    assert_eq!(bytes, expected);
}

#[test]
fn largest_rust_decimal_mantissas_round_trip() {
    // 2^96 - 1, rust_decimal's largest mantissa, at the project scale: 29 digits.
    let largest = Decimal::from_i128_with_scale((1 << 96) - 1, 12);
    assert_eq!(largest.to_string(), "79228162514264337.593543950335");
    assert_eq!(round_trip(largest), largest);
    // 28 significant digits with all 12 fractional ones.
    assert_eq!(
        round_trip(dec("9999999999999999.999999999999")),
        dec("9999999999999999.999999999999")
    );
    // The largest integer the wire holds (26 digits): its unscaled value needs more than 96 bits,
    // so decoding drops the trailing zeros instead of failing.
    let largest_integer = dec("99999999999999999999999999");
    assert_eq!(round_trip(largest_integer), largest_integer);
    assert_eq!(round_trip(Decimal::ZERO), Decimal::ZERO);
    assert_eq!(round_trip(dec("-0")), Decimal::ZERO);
}

#[test]
fn values_the_wire_cannot_hold_are_refused() {
    for too_big in [Decimal::MAX, dec("100000000000000000000000000")] {
        let error =
            codec::encode(&with_reported_cost(too_big)).expect_err("beyond decimal(38, 12)");
        assert_eq!(error.kind(), "decimal_out_of_range", "{error}");
    }
}

#[test]
fn more_than_12_fractional_digits_are_refused_not_rounded() {
    let error = codec::encode(&with_reported_cost(dec("0.0000000000001"))).expect_err("13 digits");
    assert_eq!(error.kind(), "too_many_fractional_digits");
    let error = codec::encode(&with_reported_cost(dec("1.0000000000005"))).expect_err("13 digits");
    assert_eq!(error.kind(), "too_many_fractional_digits");
    // Trailing zeros are not information: 0.1000000000000 is 0.1.
    assert_eq!(round_trip(dec("0.1000000000000")), dec("0.1"));
}

#[test]
fn negative_costs_are_refused() {
    let error = codec::encode(&with_reported_cost(dec("-0.000000000001"))).expect_err("negative");
    assert_eq!(error.kind(), "negative_amount");
    assert_eq!(
        money::check_amount(&dec("-1")),
        Err(MoneyError::Negative {
            value: "-1".to_owned()
        })
    );
}

fn decode_with_wire_decimal(twos_complement: &[u8]) -> Result<UsageEvent, DecodeError> {
    let event = common::sample_usage_event();
    codec::decode(&encode_with_patched_field(
        &event,
        "reported_cost_usd",
        &optional_decimal_bytes(twos_complement),
    ))
}

#[test]
fn a_38_digit_unscaled_value_is_out_of_range_not_a_wrong_number() {
    let largest_38_digits = 10_i128.pow(38) - 1;
    let error = decode_with_wire_decimal(&largest_38_digits.to_be_bytes()).expect_err("38 digits");
    assert!(
        matches!(
            error,
            DecodeError::DecimalOutOfRange {
                field: "reported_cost_usd",
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(error.kind(), "decimal_out_of_range");

    // Fits precision 38, but not rust_decimal's 96 bits and has no trailing zeros to drop.
    let unrepresentable = 10_i128.pow(30) + 1;
    let error = decode_with_wire_decimal(&unrepresentable.to_be_bytes()).expect_err("> 96 bits");
    assert_eq!(error.kind(), "decimal_out_of_range", "{error}");

    // Beyond precision 38 even though i128 holds it.
    let error = decode_with_wire_decimal(&10_i128.pow(38).to_be_bytes()).expect_err("39 digits");
    assert_eq!(error.kind(), "decimal_out_of_range", "{error}");

    // More than 16 bytes of significant two's complement.
    let error = decode_with_wire_decimal(&[0x01; 17]).expect_err("136 bits");
    assert_eq!(error.kind(), "decimal_out_of_range", "{error}");
}

#[test]
fn wire_decimals_in_any_valid_width_decode() {
    // Java and other writers may sign-extend; 10^37 (= 10^25 at scale 12) needs 123 bits.
    let mut padded = vec![0x00; 4];
    padded.extend_from_slice(&10_i128.pow(37).to_be_bytes());
    let event = decode_with_wire_decimal(&padded).expect("in range");
    assert_eq!(
        event.reported_cost_usd,
        Some(dec("10000000000000000000000000"))
    );
    let event = decode_with_wire_decimal(&[]).expect("empty is zero");
    assert_eq!(event.reported_cost_usd, Some(Decimal::ZERO));
}

#[test]
fn the_generic_path_agrees_on_out_of_range() {
    let event = common::sample_usage_event();
    let bytes = encode_with_patched_field(
        &event,
        "reported_cost_usd",
        &optional_decimal_bytes(&(10_i128.pow(38) - 1).to_be_bytes()),
    );
    let error = codec::decode_generic::<UsageEvent>(&bytes).expect_err("38 digits");
    assert_eq!(error.kind(), "decimal_out_of_range", "{error}");
}
