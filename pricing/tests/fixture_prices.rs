//! Hand-computed prices for every rule, on real rows of the embedded fixture
//! (`fixtures/catalog_sample.json`, LiteLLM 1.110.2). Each expected value is written as its
//! decimal arithmetic.

use std::str::FromStr;

use chrono::NaiveDate;
use pricing::{
    Catalog, CostComponent, PriceOutcome, PriceUnit, PricingInput, PricingRules, SkipReason,
    UnpricedReason, UsageLimitError,
};
use rust_decimal::Decimal;

fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

fn catalog() -> Catalog {
    Catalog::embedded_sample()
}

fn chat(
    model: &str,
    input_tokens: i64,
    cached_input_tokens: i64,
    cache_write_tokens: i64,
    output_tokens: i64,
) -> PricingInput {
    PricingInput {
        model: model.to_owned(),
        provider: String::new(),
        endpoint: "chat_completions".to_owned(),
        modality: "text".to_owned(),
        input_tokens,
        cached_input_tokens,
        cache_write_tokens,
        output_tokens,
        ..PricingInput::default()
    }
}

fn batch(mut usage: PricingInput) -> PricingInput {
    usage.endpoint = "batch".to_owned();
    usage
}

fn cost(outcome: &PriceOutcome) -> Decimal {
    match outcome {
        PriceOutcome::Priced { cost_usd, .. } => *cost_usd,
        PriceOutcome::Unpriced { reason } => panic!("expected a price, got unpriced: {reason}"),
    }
}

fn unpriced(outcome: PriceOutcome) -> UnpricedReason {
    match outcome {
        PriceOutcome::Priced { cost_usd, .. } => panic!("expected unpriced, got {cost_usd}"),
        PriceOutcome::Unpriced { reason } => reason,
    }
}

/// Sum of `quantity × price` terms given as decimal strings.
fn sum(terms: &[(&str, &str)]) -> Decimal {
    terms
        .iter()
        .map(|(quantity, price)| dec(quantity) * dec(price))
        .sum()
}

#[test]
fn fixture_loads_with_no_errors_and_skips_sample_spec() {
    let catalog = catalog();
    let report = catalog.load_report();
    assert!(report.field_errors.is_empty(), "{:?}", report.field_errors);
    assert_eq!(report.rows_total, 28);
    assert_eq!(report.rows_loaded, 27);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].name, "sample_spec");
    assert_eq!(report.skipped[0].reason, SkipReason::SampleSpec);
    assert_eq!(catalog.len(), 27);
}

#[test]
fn catalog_version_is_label_or_content_hash() {
    let sample = catalog();
    assert!(sample.version().starts_with("sha256:"));
    assert_eq!(sample.version().len(), "sha256:".len() + 16);
    assert_eq!(sample.version(), Catalog::embedded_sample().version());

    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/catalog_sample.json");
    let unlabeled = Catalog::load_path(&path, None).unwrap();
    assert_eq!(unlabeled.version(), sample.version());
    let labeled = Catalog::load_path(&path, Some("litellm-1.110.2")).unwrap();
    assert_eq!(labeled.version(), "litellm-1.110.2");
    match labeled.price(&chat("gpt-4o", 1, 0, 0, 0)) {
        PriceOutcome::Priced {
            catalog_version, ..
        } => assert_eq!(catalog_version, "litellm-1.110.2"),
        other => panic!("{other:?}"),
    }
    assert!(Catalog::load_path("/nonexistent/catalog.json", None)
        .unwrap_err()
        .is_retryable());
}

#[test]
fn metadata_is_exposed() {
    let catalog = catalog();
    let gpt_4o = catalog.get("gpt-4o").unwrap();
    assert_eq!(gpt_4o.provider.as_deref(), Some("openai"));
    assert_eq!(gpt_4o.mode.as_deref(), Some("chat"));
    assert_eq!(gpt_4o.max_input_tokens, Some(128_000));
    assert_eq!(gpt_4o.max_output_tokens, Some(16_384));
    assert_eq!(
        gpt_4o.deprecation_date,
        NaiveDate::from_ymd_opt(2027, 1, 14)
    );
    assert!(gpt_4o.is_deprecated_on(NaiveDate::from_ymd_opt(2027, 1, 14).unwrap()));
    assert!(!gpt_4o.is_deprecated_on(NaiveDate::from_ymd_opt(2027, 1, 13).unwrap()));
    assert!(!gpt_4o.is_preview);
    // Exact from the text "2.5e-06".
    assert_eq!(gpt_4o.price("input_cost_per_token"), Some(dec("0.0000025")));

    let veo = catalog.get("gemini/veo-3.1-fast-generate-preview").unwrap();
    assert!(veo.is_preview);
    assert_eq!(veo.deprecation_date, NaiveDate::from_ymd_opt(2026, 10, 22));
    assert!(
        catalog
            .get("gemini/gemini-3.1-flash-lite-preview")
            .unwrap()
            .is_preview
    );

    let alias = catalog.get("gpt-luna-latest").unwrap();
    assert_eq!(alias.alias_of.as_deref(), Some("gpt-6-luna"));
    assert_eq!(alias.max_input_tokens, Some(922_000));
    assert_eq!(alias.price("input_cost_per_token"), Some(dec("0.0000001")));
}

#[test]
fn lookup_tries_model_then_provider_prefix() {
    let catalog = catalog();
    assert_eq!(catalog.lookup("azure", "gpt-4o").unwrap().name, "gpt-4o");
    assert_eq!(
        catalog.lookup("", "azure/gpt-4o").unwrap().name,
        "azure/gpt-4o"
    );
    assert_eq!(
        catalog
            .lookup("gemini", "imagen-3.0-generate-001")
            .unwrap()
            .name,
        "gemini/imagen-3.0-generate-001"
    );
    assert!(catalog.lookup("", "imagen-3.0-generate-001").is_none());
}

#[test]
fn text_with_cache_read_and_write() {
    let catalog = catalog();
    // claude-sonnet-4-5: the worked example of the docs.
    let outcome = catalog.price(&chat("claude-sonnet-4-5", 10_000, 4_000, 1_000, 500));
    let expected = sum(&[
        ("6000", "0.000003"),
        ("4000", "0.0000003"),
        ("1000", "0.00000375"),
        ("500", "0.000015"),
    ]);
    assert_eq!(expected, dec("0.03045"));
    assert_eq!(cost(&outcome), expected);
    match outcome {
        PriceOutcome::Priced { breakdown, .. } => assert_eq!(
            breakdown,
            vec![
                (CostComponent::InputTokens, dec("0.018")),
                (CostComponent::CachedInputTokens, dec("0.0012")),
                (CostComponent::CacheWriteTokens, dec("0.00375")),
                (CostComponent::OutputTokens, dec("0.0075")),
            ]
        ),
        other => panic!("{other:?}"),
    }

    // gpt-4o: cache read listed; no cache-creation price, so writes fall back to the input price.
    let expected = sum(&[
        ("8000", "0.0000025"),
        ("2000", "0.00000125"),
        ("1000", "0.0000025"),
        ("1000", "0.00001"),
    ]);
    assert_eq!(expected, dec("0.035"));
    assert_eq!(
        cost(&catalog.price(&chat("gpt-4o", 10_000, 2_000, 1_000, 1_000))),
        expected
    );
}

#[test]
fn batch_prices_versus_standard() {
    let catalog = catalog();
    let standard = chat("gpt-4o", 10_000, 0, 0, 1_000);
    assert_eq!(
        cost(&catalog.price(&standard)),
        sum(&[("10000", "0.0000025"), ("1000", "0.00001")])
    );
    let batched = sum(&[("10000", "0.00000125"), ("1000", "0.000005")]);
    assert_eq!(batched, dec("0.0175"));
    assert_eq!(cost(&catalog.price(&batch(standard.clone()))), batched);
    let mut by_modality = standard;
    by_modality.modality = "batch".to_owned();
    assert_eq!(cost(&catalog.price(&by_modality)), batched);

    // claude-sonnet-4-5 lists batch prices for every token kind.
    let expected = sum(&[
        ("6000", "0.0000015"),
        ("4000", "0.00000015"),
        ("1000", "0.000001875"),
        ("500", "0.0000075"),
    ]);
    assert_eq!(expected, dec("0.015225"));
    assert_eq!(
        cost(&catalog.price(&batch(chat("claude-sonnet-4-5", 10_000, 4_000, 1_000, 500)))),
        expected
    );

    // gpt-4o lists no cache_read_input_token_cost_batches: the standard cache-read price applies.
    let expected = sum(&[("1000", "0.00000125"), ("1000", "0.00000125")]);
    assert_eq!(
        cost(&catalog.price(&batch(chat("gpt-4o", 2_000, 1_000, 0, 0)))),
        expected
    );
}

#[test]
fn tier_boundary_exactly_at_and_one_above() {
    let catalog = catalog();
    let model = "gemini/gemini-2.5-pro";
    // Exactly 200k is not above 200k: base prices.
    let at = sum(&[("200000", "0.00000125"), ("1000", "0.00001")]);
    assert_eq!(at, dec("0.26"));
    assert_eq!(cost(&catalog.price(&chat(model, 200_000, 0, 0, 1_000))), at);
    // One above: the whole request at the tier prices, output included.
    let above = sum(&[("200001", "0.0000025"), ("1000", "0.000015")]);
    assert_eq!(above, dec("0.5150025"));
    assert_eq!(
        cost(&catalog.price(&chat(model, 200_001, 0, 0, 1_000))),
        above
    );
    // Cache reads use their own tier field.
    let cached = sum(&[
        ("100001", "0.0000025"),
        ("100000", "0.00000025"),
        ("1000", "0.000015"),
    ]);
    assert_eq!(
        cost(&catalog.price(&chat(model, 200_001, 100_000, 0, 1_000))),
        cached
    );
    // Cache writes count in the prompt: 199 999 + 2 > 200 000. No cache-creation price listed on
    // this row, so writes take the (tier) input price.
    let with_writes = sum(&[("199999", "0.0000025"), ("2", "0.0000025")]);
    assert_eq!(
        cost(&catalog.price(&chat(model, 199_999, 0, 2, 0))),
        with_writes
    );
    // Batch under a tier: the listed `_above_200k_tokens_batches` prices.
    let batch_tier = sum(&[("250000", "0.00000125"), ("1000", "0.0000075")]);
    assert_eq!(batch_tier, dec("0.32"));
    assert_eq!(
        cost(&catalog.price(&batch(chat(model, 250_000, 0, 0, 1_000)))),
        batch_tier
    );
}

#[test]
fn highest_tier_exceeded_wins() {
    let catalog = catalog();
    let model = "empiriolabs/qwen3-7-flash";
    let base = sum(&[("32000", "0.00000003"), ("1000", "0.00000013")]);
    assert_eq!(
        cost(&catalog.price(&chat(model, 32_000, 0, 0, 1_000))),
        base
    );
    let tier_32k = sum(&[("50000", "0.0000001"), ("1000", "0.0000004")]);
    assert_eq!(
        cost(&catalog.price(&chat(model, 50_000, 0, 0, 1_000))),
        tier_32k
    );
    let tier_256k = sum(&[
        ("200000", "0.0000002"),
        ("100000", "0.00000004"),
        ("1000", "0.0000008"),
    ]);
    assert_eq!(tier_256k, dec("0.0448"));
    assert_eq!(
        cost(&catalog.price(&chat(model, 300_000, 100_000, 0, 1_000))),
        tier_256k
    );

    // An alias row prices like its target (gpt-6-luna, tier above 272k).
    let alias = sum(&[("300000", "0.0000002"), ("1000", "0.00000075")]);
    assert_eq!(
        cost(&catalog.price(&chat("gpt-luna-latest", 300_000, 0, 0, 1_000))),
        alias
    );
    let alias_batch = sum(&[("300000", "0.0000001"), ("1000", "0.000000375")]);
    assert_eq!(
        cost(&catalog.price(&batch(chat("gpt-luna-latest", 300_000, 0, 0, 1_000)))),
        alias_batch
    );
}

#[test]
fn embeddings_price_input_tokens() {
    let catalog = catalog();
    let usage = PricingInput {
        model: "text-embedding-3-small".to_owned(),
        endpoint: "embeddings".to_owned(),
        modality: "embedding".to_owned(),
        input_tokens: 1_000_000,
        ..PricingInput::default()
    };
    assert_eq!(
        cost(&catalog.price(&usage)),
        sum(&[("1000000", "0.00000002")])
    );
    let mut batched = usage.clone();
    batched.modality = "batch".to_owned();
    batched.endpoint = "batch".to_owned();
    assert_eq!(
        cost(&catalog.price(&batched)),
        sum(&[("1000000", "0.00000001")])
    );
}

fn image(
    model: &str,
    images: i32,
    tier: Option<&str>,
    input_tokens: i64,
    output_tokens: i64,
) -> PricingInput {
    PricingInput {
        model: model.to_owned(),
        endpoint: "images".to_owned(),
        modality: "image".to_owned(),
        images,
        image_tier: tier.map(str::to_owned),
        input_tokens,
        output_tokens,
        ..PricingInput::default()
    }
}

#[test]
fn image_tiers_map_to_quality_rows() {
    let catalog = catalog();
    let model = "gpt-image-1.5";
    // final → high/1024-x-1024/gpt-image-1.5 (0.133 per image) + prompt tokens at the row's input price.
    let expected = sum(&[("2", "0.133"), ("100", "0.000005")]);
    assert_eq!(expected, dec("0.2665"));
    assert_eq!(
        cost(&catalog.price(&image(model, 2, Some("final"), 100, 0))),
        expected
    );
    assert_eq!(
        cost(&catalog.price(&image(model, 2, Some("draft"), 0, 0))),
        sum(&[("2", "0.009")])
    );
    assert_eq!(
        cost(&catalog.price(&image(model, 2, Some("preview"), 0, 0))),
        sum(&[("2", "0.034")])
    );
    assert_eq!(
        cost(&catalog.price(&image(model, 1, Some("edit"), 0, 0))),
        sum(&[("1", "0.009")])
    );
    // No tier, output tokens reported: the row is token-priced (image output tokens).
    let by_tokens = sum(&[("100", "0.000005"), ("4160", "0.000032")]);
    assert_eq!(
        cost(&catalog.price(&image(model, 1, None, 100, 4_160))),
        by_tokens
    );
    // No tier and no tokens: the size-only row 1024-x-1024/gpt-image-1.5.
    assert_eq!(
        cost(&catalog.price(&image(model, 1, None, 0, 0))),
        dec("0.009")
    );

    // A configured table changes the mapping.
    let mut rules = PricingRules::default();
    rules
        .image_tiers
        .insert("draft".to_owned(), vec!["high".to_owned()]);
    let configured = Catalog::embedded_sample().with_rules(rules);
    assert_eq!(
        cost(&configured.price(&image(model, 1, Some("draft"), 0, 0))),
        dec("0.133")
    );

    assert_eq!(
        unpriced(catalog.price(&image(model, 1, Some("ultra"), 0, 0))),
        UnpricedReason::UnknownImageTier {
            tier: "ultra".to_owned()
        }
    );
}

#[test]
fn per_pixel_quality_rows_round_half_even_to_twelve_digits() {
    let catalog = catalog();
    // azure/high/1024-x-1024/gpt-image-1: 1.59263611e-07 per pixel × 1024 × 1024 pixels
    // = 0.167000000167936 → 0.167000000168 at 12 digits (half-even).
    let exact = sum(&[("1048576", "0.000000159263611")]);
    assert_eq!(exact, dec("0.167000000167936"));
    let outcome = catalog.price(&image("azure/gpt-image-1", 1, Some("final"), 0, 0));
    assert_eq!(cost(&outcome), dec("0.167000000168"));
    assert!(cost(&outcome).scale() <= 12);
    // draft → azure/low/...: 1.0490417e-08 × 1048576 = 0.010999999496192 → 0.010999999496.
    assert_eq!(
        cost(&catalog.price(&image("azure/gpt-image-1", 1, Some("draft"), 0, 0))),
        dec("0.010999999496")
    );
}

#[test]
fn token_priced_and_per_image_rows() {
    let catalog = catalog();
    let expected = sum(&[("50", "0.000005"), ("4160", "0.00004")]);
    assert_eq!(expected, dec("0.16665"));
    assert_eq!(
        cost(&catalog.price(&image("gpt-image-1", 1, None, 50, 4_160))),
        expected
    );
    // An image from a token-priced row without tokens cannot be priced.
    assert_eq!(
        unpriced(catalog.price(&image("gpt-image-1", 1, None, 0, 0))),
        UnpricedReason::NoPriceForUnit {
            model: "gpt-image-1".to_owned(),
            unit: PriceUnit::Images
        }
    );
    // Per-image row found through the provider prefix.
    let mut imagen = image("imagen-3.0-generate-001", 3, None, 20, 0);
    imagen.provider = "gemini".to_owned();
    assert_eq!(cost(&catalog.price(&imagen)), sum(&[("3", "0.04")]));
}

#[test]
fn missing_prices_are_unpriced_never_zero() {
    let catalog = catalog();
    assert_eq!(
        unpriced(catalog.price(&chat("no-such-model", 10, 0, 0, 10))),
        UnpricedReason::UnknownModel {
            provider: String::new(),
            model: "no-such-model".to_owned()
        }
    );
    // Images requested from a text-only row.
    assert_eq!(
        unpriced(catalog.price(&image("gpt-4o", 1, None, 0, 0))),
        UnpricedReason::NoPriceForUnit {
            model: "gpt-4o".to_owned(),
            unit: PriceUnit::Images
        }
    );
    // Video from a text row, even with zero duration.
    let mut video = PricingInput {
        model: "gpt-4o".to_owned(),
        modality: "video".to_owned(),
        ..PricingInput::default()
    };
    assert!(matches!(
        unpriced(catalog.price(&video)),
        UnpricedReason::NoPriceForUnit {
            unit: PriceUnit::VideoSeconds,
            ..
        }
    ));
    video.modality = "hologram".to_owned();
    assert!(matches!(
        unpriced(catalog.price(&video)),
        UnpricedReason::UnknownModality { .. }
    ));
    // Per-character speech (tts-1) has no per-second or token price.
    let speech = PricingInput {
        model: "tts-1".to_owned(),
        endpoint: "audio".to_owned(),
        modality: "audio".to_owned(),
        audio_duration_ms: 5_000,
        ..PricingInput::default()
    };
    assert!(matches!(
        unpriced(catalog.price(&speech)),
        UnpricedReason::NoPriceForUnit {
            unit: PriceUnit::Audio,
            ..
        }
    ));
    // A price rejected at load is never skipped over.
    let broken = Catalog::from_json_str(
        r#"{"m": {"input_cost_per_token": 1e-06, "cache_read_input_token_cost": "cheap", "output_cost_per_token": 2e-06}}"#,
        None,
    )
    .unwrap();
    assert_eq!(cost(&broken.price(&chat("m", 10, 0, 0, 0))), dec("0.00001"));
    assert_eq!(
        unpriced(broken.price(&chat("m", 10, 5, 0, 0))),
        UnpricedReason::InvalidCatalogPrice {
            model: "m".to_owned(),
            field: "cache_read_input_token_cost".to_owned()
        }
    );
}

#[test]
fn cached_above_input_is_invalid_usage() {
    let catalog = catalog();
    let usage = chat("gpt-4o", 100, 101, 0, 0);
    let expected = UsageLimitError::CachedAboveInput {
        cached_input_tokens: 101,
        input_tokens: 100,
    };
    assert_eq!(
        unpriced(catalog.price(&usage)),
        UnpricedReason::InvalidUsage(expected.clone())
    );
    assert_eq!(catalog.validate_usage(&usage), Err(expected));
    assert_eq!(
        catalog.validate_usage(&chat("gpt-4o", -1, 0, 0, 0)),
        Err(UsageLimitError::NegativeCount {
            field: "input_tokens",
            value: -1
        })
    );
}

#[test]
fn usage_limits_follow_the_catalog() {
    let catalog = catalog();
    assert_eq!(
        catalog.validate_usage(&chat("gpt-4o", 128_000, 0, 0, 16_384)),
        Ok(())
    );
    assert_eq!(
        catalog.validate_usage(&chat("gpt-4o", 127_000, 0, 1_001, 0)),
        Err(UsageLimitError::InputAboveMax {
            model: "gpt-4o".to_owned(),
            prompt_tokens: 128_001,
            max_input_tokens: 128_000
        })
    );
    assert_eq!(
        catalog.validate_usage(&chat("gpt-4o", 1, 0, 0, 16_385)),
        Err(UsageLimitError::OutputAboveMax {
            model: "gpt-4o".to_owned(),
            output_tokens: 16_385,
            max_output_tokens: 16_384
        })
    );
    // Unknown models and unlisted limits pass; pricing reports the unknown model.
    assert_eq!(
        catalog.validate_usage(&chat("no-such-model", 10_000_000, 0, 0, 0)),
        Ok(())
    );
    assert_eq!(
        catalog.validate_usage(&chat("sora-2", 10_000_000, 0, 0, 0)),
        Ok(())
    );
}

fn video(model: &str, duration_ms: i64, resolution: Option<&str>) -> PricingInput {
    PricingInput {
        model: model.to_owned(),
        endpoint: "video".to_owned(),
        modality: "video".to_owned(),
        video_duration_ms: duration_ms,
        video_resolution: resolution.map(str::to_owned),
        ..PricingInput::default()
    }
}

#[test]
fn video_per_second_with_resolution() {
    let catalog = catalog();
    assert_eq!(
        cost(&catalog.price(&video("sora-2", 8_500, None))),
        sum(&[("8.5", "0.1")])
    );
    let veo = "gemini/veo-3.1-fast-generate-preview";
    assert_eq!(
        cost(&catalog.price(&video(veo, 6_000, Some("1920x1080")))),
        sum(&[("6", "0.12")])
    );
    assert_eq!(
        cost(&catalog.price(&video(veo, 6_000, Some("3840x2160")))),
        sum(&[("6", "0.3")])
    );
    assert_eq!(
        cost(&catalog.price(&video(veo, 6_000, Some("4K")))),
        sum(&[("6", "0.3")])
    );
    // 720p is not listed: the row's default per-second price.
    assert_eq!(
        cost(&catalog.price(&video(veo, 6_000, Some("1280x720")))),
        sum(&[("6", "0.1")])
    );
    assert_eq!(
        cost(&catalog.price(&video(veo, 1_234, None))),
        sum(&[("1.234", "0.1")])
    );
    assert_eq!(cost(&catalog.price(&video(veo, 0, None))), Decimal::ZERO);
}

fn audio(model: &str, duration_ms: i64, input_tokens: i64, output_tokens: i64) -> PricingInput {
    PricingInput {
        model: model.to_owned(),
        endpoint: "audio".to_owned(),
        modality: "audio".to_owned(),
        audio_duration_ms: duration_ms,
        input_tokens,
        output_tokens,
        ..PricingInput::default()
    }
}

#[test]
fn audio_by_seconds_or_tokens() {
    let catalog = catalog();
    assert_eq!(
        cost(&catalog.price(&audio("whisper-1", 61_500, 0, 0))),
        sum(&[("61.5", "0.0001")])
    );
    // input_cost_per_audio_per_second.
    assert_eq!(
        cost(&catalog.price(&audio(
            "amazon.nova-2-multimodal-embeddings-v1:0",
            10_000,
            0,
            0
        ))),
        sum(&[("10", "0.00014")])
    );
    // Token-priced transcription: tokens win, the duration is not billed again.
    let transcribe = sum(&[("1000", "0.0000025"), ("200", "0.00001")]);
    assert_eq!(
        cost(&catalog.price(&audio("gpt-4o-transcribe", 30_000, 1_000, 200))),
        transcribe
    );
    // Speech: per output second without tokens, audio output tokens with them.
    assert_eq!(
        cost(&catalog.price(&audio("gpt-4o-mini-tts", 20_000, 0, 0))),
        sum(&[("20", "0.00025")])
    );
    let speech_tokens = sum(&[("100", "0.0000006"), ("1000", "0.000012")]);
    assert_eq!(speech_tokens, dec("0.01206"));
    assert_eq!(
        cost(&catalog.price(&audio("gpt-4o-mini-tts", 20_000, 100, 1_000))),
        speech_tokens
    );
    // Tokens reported to a per-second-only row: priced by the duration.
    assert_eq!(
        cost(&catalog.price(&audio("whisper-1", 10_000, 50, 0))),
        sum(&[("10", "0.0001")])
    );
}
