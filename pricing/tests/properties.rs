//! Property tests on fixture rows: costs are never negative, monotonic non-decreasing in each
//! token count, and additive below tier thresholds.

use pricing::{Catalog, PriceOutcome, PricingInput};
use proptest::prelude::*;
use rust_decimal::Decimal;

/// Text rows of the fixture and their lowest tier threshold (prompt tokens), if any.
const TEXT_MODELS: &[(&str, i64)] = &[
    ("gpt-4o", i64::MAX),
    ("claude-sonnet-4-5", i64::MAX),
    ("gemini/gemini-2.5-pro", 200_000),
    ("empiriolabs/qwen3-7-flash", 32_000),
    ("gpt-luna-latest", 272_000),
];

fn catalog() -> &'static Catalog {
    static CATALOG: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
    CATALOG.get_or_init(Catalog::embedded_sample)
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    input_tokens: i64,
    cached_input_tokens: i64,
    cache_write_tokens: i64,
    output_tokens: i64,
}

fn usage() -> impl Strategy<Value = Usage> {
    (
        0_i64..150_000,
        0_i64..150_000,
        0_i64..20_000,
        0_i64..100_000,
    )
        .prop_map(|(input, cached, writes, output)| Usage {
            input_tokens: input,
            cached_input_tokens: cached.min(input),
            cache_write_tokens: writes,
            output_tokens: output,
        })
}

fn input(model: &str, usage: Usage, batch: bool) -> PricingInput {
    PricingInput {
        model: model.to_owned(),
        endpoint: if batch { "batch" } else { "chat_completions" }.to_owned(),
        modality: "text".to_owned(),
        input_tokens: usage.input_tokens,
        cached_input_tokens: usage.cached_input_tokens,
        cache_write_tokens: usage.cache_write_tokens,
        output_tokens: usage.output_tokens,
        ..PricingInput::default()
    }
}

fn cost(model: &str, usage: Usage, batch: bool) -> Decimal {
    match catalog().price(&input(model, usage, batch)) {
        PriceOutcome::Priced { cost_usd, .. } => cost_usd,
        PriceOutcome::Unpriced { reason } => panic!("{model} {usage:?}: {reason}"),
    }
}

fn add(first: Usage, second: Usage) -> Usage {
    Usage {
        input_tokens: first.input_tokens + second.input_tokens,
        cached_input_tokens: first.cached_input_tokens + second.cached_input_tokens,
        cache_write_tokens: first.cache_write_tokens + second.cache_write_tokens,
        output_tokens: first.output_tokens + second.output_tokens,
    }
}

proptest! {
    #[test]
    fn never_negative(model_index in 0..TEXT_MODELS.len(), usage in usage(), batch in any::<bool>()) {
        let (model, _) = TEXT_MODELS[model_index];
        prop_assert!(cost(model, usage, batch) >= Decimal::ZERO);
    }

    #[test]
    fn monotonic_in_each_token_count(
        model_index in 0..TEXT_MODELS.len(),
        usage in usage(),
        delta in 1_i64..200_000,
        batch in any::<bool>(),
    ) {
        let (model, _) = TEXT_MODELS[model_index];
        let before = cost(model, usage, batch);
        let more_input = Usage { input_tokens: usage.input_tokens + delta, ..usage };
        // More cached tokens means more input tokens too (cached is a part of input).
        let more_cached = Usage {
            input_tokens: usage.input_tokens + delta,
            cached_input_tokens: usage.cached_input_tokens + delta,
            ..usage
        };
        let more_writes = Usage { cache_write_tokens: usage.cache_write_tokens + delta, ..usage };
        let more_output = Usage { output_tokens: usage.output_tokens + delta, ..usage };
        for larger in [more_input, more_cached, more_writes, more_output] {
            prop_assert!(cost(model, larger, batch) >= before, "{model}: {usage:?} -> {larger:?}");
        }
    }

    #[test]
    fn additive_below_tier_thresholds(
        model_index in 0..TEXT_MODELS.len(),
        first in usage(),
        second in usage(),
        batch in any::<bool>(),
    ) {
        let (model, threshold) = TEXT_MODELS[model_index];
        let total = add(first, second);
        prop_assume!(total.input_tokens + total.cache_write_tokens <= threshold);
        prop_assert_eq!(cost(model, first, batch) + cost(model, second, batch), cost(model, total, batch));
    }

    #[test]
    fn durations_are_additive(first_ms in 0_i64..10_000_000, second_ms in 0_i64..10_000_000) {
        let video = |milliseconds: i64| PricingInput {
            model: "gemini/veo-3.1-fast-generate-preview".to_owned(),
            modality: "video".to_owned(),
            video_duration_ms: milliseconds,
            video_resolution: Some("1920x1080".to_owned()),
            ..PricingInput::default()
        };
        let priced = |usage: PricingInput| catalog().price(&usage).cost_usd().unwrap();
        prop_assert_eq!(priced(video(first_ms)) + priced(video(second_ms)), priced(video(first_ms + second_ms)));
    }

    #[test]
    fn decimal_text_round_trips(mantissa in 0_u64..10_000_000_000, exponent in -20_i32..5) {
        // `{m}e{x}` parsed exactly equals m × 10^x computed in decimals.
        let text = format!("{mantissa}e{exponent}");
        let parsed = pricing::parse_non_negative_decimal(&text).unwrap();
        let mut expected = Decimal::from(mantissa);
        for _ in 0..exponent.unsigned_abs() {
            expected = if exponent < 0 { expected / Decimal::TEN } else { expected * Decimal::TEN };
        }
        prop_assert_eq!(parsed, expected);
    }
}
