#[test]
fn adding_to_a_zero_of_scale_12_is_exact_not_an_overflow() {
    // A total read back from Decimal(38, 12) is 0.000000000000; rust_decimal's zero fast path
    // once made this sum look like a lost scale.
    let stored_zero = rust_decimal::Decimal::from_i128_with_scale(0, 12);
    let sum = super::money_sum(stored_zero, rust_decimal::Decimal::ZERO, "cost_usd").unwrap();
    assert_eq!((sum, sum.scale()), (rust_decimal::Decimal::ZERO, 12));
    let sum = super::money_sum(rust_decimal::Decimal::ZERO, stored_zero, "cost_usd").unwrap();
    assert_eq!(sum.scale(), 12);
    let big = rust_decimal::Decimal::from_i128_with_scale((1 << 96) - 1, 12);
    assert!(super::money_sum(big, rust_decimal::Decimal::new(1, 12), "cost_usd").is_err());
}

use super::*;
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use schemas::fixtures::text_event;
use std::str::FromStr;

/// Events drawn over every field a measure reads, costs at scale 0..=12.
pub(crate) fn arbitrary_event() -> impl Strategy<Value = UsageEvent> {
    let modality = prop_oneof![
        Just(Modality::Text),
        Just(Modality::Image),
        Just(Modality::Video),
        Just(Modality::Audio),
        Just(Modality::Embedding),
        Just(Modality::Batch),
    ];
    let tier = proptest::option::of(prop_oneof![
        Just(ImageTier::Draft),
        Just(ImageTier::Preview),
        Just(ImageTier::Edit),
        Just(ImageTier::Final),
    ]);
    let job_state = proptest::option::of(prop_oneof![
        Just(JobState::Submitted),
        Just(JobState::Running),
        Just(JobState::Succeeded),
        Just(JobState::Failed),
        Just(JobState::Cancelled),
    ]);
    let status = prop_oneof![
        Just(Status::Ok),
        Just(Status::RateLimited),
        Just(Status::ProviderError),
        Just(Status::Timeout),
        Just(Status::PolicyBlocked),
    ];
    let http_status = proptest::option::of(prop_oneof![
        Just(200u16),
        Just(400),
        Just(429),
        Just(500),
        Just(503),
        Just(302)
    ]);
    let cost = proptest::option::of((0i64..1_000_000_000_000_000, 0u32..=12))
        .prop_map(|cost| cost.map(|(mantissa, scale)| Decimal::new(mantissa, scale)));
    (
        (modality, tier, job_state, status, http_status, cost),
        (
            1u32..4,
            any::<bool>(),
            0u64..1_000_000,
            0u64..1_000_000,
            0u64..1_000_000,
            0u32..10,
        ),
        (
            0u64..100_000_000,
            0u64..100_000_000,
            proptest::option::of(any::<bool>()),
            0i64..10_000_000,
        ),
    )
        .prop_map(
            |(
                (modality, image_tier, job_state, status, http_status, cost_usd),
                (attempt, fallback, input_tokens, output_tokens, cache_write_tokens, images),
                (video_duration_ms, audio_duration_ms, accepted, offset_ms),
            )| {
                let at: DateTime<Utc> = Utc.with_ymd_and_hms(2026, 3, 8, 0, 0, 0).unwrap()
                    + chrono::TimeDelta::milliseconds(offset_ms);
                UsageEvent {
                    modality,
                    image_tier,
                    job_state,
                    job_id: job_state.map(|_| format!("job-{}", offset_ms % 7)),
                    status,
                    http_status,
                    cost_usd,
                    attempt,
                    fallback_from_model: fallback.then(|| "gpt-4o".to_owned()),
                    input_tokens,
                    output_tokens,
                    cached_input_tokens: input_tokens / 3,
                    cache_write_tokens,
                    images,
                    video_duration_ms,
                    audio_duration_ms,
                    accepted,
                    ..text_event(&format!("e{offset_ms}"), at)
                }
            },
        )
}

/// Arbitrary totals small enough that three of them never overflow.
fn arbitrary_measures() -> impl Strategy<Value = Measures> {
    (
        proptest::collection::vec(0u64..u64::MAX / 4, 22),
        (0i64..i64::MAX / 4, -1i64..1),
        // Up to 10^15 USD at any scale ≤ 12: three of them fit 96 bits at scale 12.
        (
            0i64..1_000_000_000_000_000,
            0u32..=12,
            0i64..1_000_000_000_000_000,
            0u32..=12,
        ),
    )
        .prop_map(
            |(counts, (jobs, jobs_sign), (cost, cost_scale, fb, fb_scale))| Measures {
                requests: counts[0],
                billable_attempts: counts[1],
                input_tokens: counts[2],
                output_tokens: counts[3],
                cached_input_tokens: counts[4],
                cache_write_tokens: counts[5],
                images_draft: counts[6],
                images_preview: counts[7],
                images_edit: counts[8],
                images_final: counts[9],
                images_untiered: counts[10],
                video_jobs: counts[11],
                video_ms: counts[12],
                audio_ms: counts[13],
                embedding_tokens: counts[14],
                cost_usd: Decimal::new(cost, cost_scale),
                unpriced_events: counts[15],
                retries: counts[16],
                fallback_attempts: counts[17],
                fallback_cost_usd: Decimal::new(fb, fb_scale),
                accepted_outputs: counts[18],
                errors_4xx: counts[19],
                errors_5xx: counts[20],
                errors_other: counts[21],
                late_events: counts[0] / 2,
                jobs_in_flight: if jobs_sign < 0 { -jobs } else { jobs },
            },
        )
}

fn sum_in_order<'e>(events: impl IntoIterator<Item = &'e UsageEvent>) -> Measures {
    let mut total = Measures::ZERO;
    for event in events {
        total.add(&Measures::of_event(event)).expect("no overflow");
    }
    total
}

proptest! {
    #[test]
    fn every_unit_agrees_with_the_policy_measure(event in arbitrary_event()) {
        let contribution = Measures::of_event(&event);
        for unit in Unit::ALL {
            prop_assert_eq!(contribution.unit_amount(*unit), unit.measure(&event), "{}", unit);
        }
    }

    #[test]
    fn sums_are_order_independent_and_equal_a_recount(
        events in proptest::collection::vec(arbitrary_event(), 0..40),
        seed in any::<u64>(),
    ) {
        let forward = sum_in_order(&events);
        let mut shuffled: Vec<&UsageEvent> = events.iter().collect();
        // A deterministic shuffle from the seed (Fisher–Yates with an LCG).
        let mut state = seed;
        for index in (1..shuffled.len()).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(index, (state >> 33) as usize % (index + 1));
        }
        prop_assert_eq!(sum_in_order(shuffled.iter().copied()), forward);

        // Recount: the policy's own rule summed per unit, and direct counts for the rest.
        for unit in Unit::ALL {
            let recount: Decimal = events.iter().map(|event| unit.measure(event)).sum();
            prop_assert_eq!(forward.unit_amount(*unit), recount, "{}", unit);
        }
        let count = |keep: &dyn Fn(&UsageEvent) -> bool| {
            events.iter().filter(|event| keep(event)).count() as u64
        };
        prop_assert_eq!(forward.cache_write_tokens, events.iter().map(|e| e.cache_write_tokens).sum::<u64>());
        prop_assert_eq!(forward.video_ms, events.iter().map(|e| e.video_duration_ms).sum::<u64>());
        prop_assert_eq!(forward.audio_ms, events.iter().map(|e| e.audio_duration_ms).sum::<u64>());
        prop_assert_eq!(forward.fallback_attempts, count(&|e| e.fallback_from_model.is_some()));
        prop_assert_eq!(forward.accepted_outputs, count(&|e| e.accepted == Some(true)));
        prop_assert_eq!(
            forward.images_untiered,
            events.iter().filter(|e| e.image_tier.is_none()).map(|e| u64::from(e.images)).sum::<u64>()
        );
        let failed = |e: &UsageEvent| e.status != Status::Ok || e.http_status.is_some_and(|s| s >= 400);
        let http = |e: &UsageEvent, range: std::ops::RangeInclusive<u16>| {
            e.http_status.is_some_and(|s| range.contains(&s))
        };
        prop_assert_eq!(forward.errors_4xx, count(&|e| failed(e) && http(e, 400..=499)));
        prop_assert_eq!(forward.errors_5xx, count(&|e| failed(e) && http(e, 500..=599)));
        prop_assert_eq!(
            forward.errors_4xx + forward.errors_5xx + forward.errors_other,
            count(&failed)
        );
        prop_assert_eq!(forward.late_events, 0);
    }

    #[test]
    fn add_is_associative_and_commutative(
        a in arbitrary_measures(),
        b in arbitrary_measures(),
        c in arbitrary_measures(),
    ) {
        let left = a.checked_sum(&b).unwrap().checked_sum(&c).unwrap();
        let right = a.checked_sum(&b.checked_sum(&c).unwrap()).unwrap();
        prop_assert_eq!(left, right);
        prop_assert_eq!(a.checked_sum(&b).unwrap(), b.checked_sum(&a).unwrap());
        prop_assert_eq!(a.checked_sum(&Measures::ZERO).unwrap(), a);
    }
}

#[test]
fn overflow_is_an_error_and_leaves_the_total_unchanged() {
    // Counters before and after the overflowing one, and money, are all left as they were.
    let mut total = Measures {
        requests: 7,
        input_tokens: u64::MAX,
        late_events: 3,
        jobs_in_flight: -2,
        cost_usd: Decimal::new(15, 1),
        ..Measures::ZERO
    };
    let before = total;
    let one = Measures {
        input_tokens: 1,
        requests: 1,
        late_events: 1,
        jobs_in_flight: 1,
        cost_usd: Decimal::new(2, 0),
        ..Measures::ZERO
    };
    assert_eq!(
        total.add(&one),
        Err(MeasureError::Overflow {
            measure: "input_tokens"
        })
    );
    assert_eq!(total, before);

    let mut jobs = Measures {
        jobs_in_flight: i64::MIN,
        ..Measures::ZERO
    };
    let finished = Measures {
        jobs_in_flight: -1,
        ..Measures::ZERO
    };
    let before = jobs;
    assert!(jobs.add(&finished).is_err());
    assert_eq!(jobs, before);
}

#[test]
fn money_never_rounds_and_keeps_scale_at_most_12() {
    // 96-bit mantissa at scale 12: ~7.9e16 USD. Adding one more cent would need rounding.
    let mut total = Measures {
        cost_usd: Decimal::from_i128_with_scale(79_228_162_514_264_337_593_543_950_335, 12),
        ..Measures::ZERO
    };
    let cent = Measures {
        cost_usd: Decimal::from_str("0.000000000001").unwrap(),
        ..Measures::ZERO
    };
    assert_eq!(
        total.add(&cent),
        Err(MeasureError::Overflow {
            measure: "cost_usd"
        })
    );
    let too_fine = Measures {
        fallback_cost_usd: Decimal::from_str("0.0000000000001").unwrap(),
        ..Measures::ZERO
    };
    assert_eq!(
        Measures::ZERO.checked_sum(&too_fine),
        Err(MeasureError::MoneyScale {
            measure: "fallback_cost_usd",
            scale: 13
        })
    );
    let mut exact = Measures::ZERO;
    for cost in ["0.1", "0.2", "0.000000000003"] {
        exact
            .add(&Measures {
                cost_usd: Decimal::from_str(cost).unwrap(),
                ..Measures::ZERO
            })
            .unwrap();
    }
    assert_eq!(exact.cost_usd.to_string(), "0.300000000003");
}

#[test]
fn async_jobs_are_one_request_and_one_billable_attempt() {
    let mut job = text_event("job", Utc::now());
    job.modality = Modality::Video;
    job.job_id = Some("j1".to_owned());
    let mut total = Measures::ZERO;
    for state in [
        JobState::Submitted,
        JobState::Running,
        JobState::Running,
        JobState::Succeeded,
    ] {
        job.job_state = Some(state);
        total.add(&Measures::of_event(&job)).unwrap();
    }
    assert_eq!(
        (
            total.requests,
            total.billable_attempts,
            total.video_jobs,
            total.jobs_in_flight
        ),
        (1, 1, 1, 0)
    );
}

#[test]
fn errors_are_classed_by_http_status() {
    let at = Utc::now();
    let classed = |status: Status, http_status: Option<u16>| {
        ErrorClass::of_event(&UsageEvent {
            status,
            http_status,
            ..text_event("e", at)
        })
    };
    assert_eq!(classed(Status::Ok, Some(200)), None);
    assert_eq!(
        classed(Status::RateLimited, Some(429)),
        Some(ErrorClass::Client4xx)
    );
    assert_eq!(
        classed(Status::ProviderError, Some(503)),
        Some(ErrorClass::Server5xx)
    );
    assert_eq!(classed(Status::Timeout, None), Some(ErrorClass::Other));
    assert_eq!(classed(Status::Ok, Some(404)), Some(ErrorClass::Client4xx));
}

#[test]
fn delta_money_max_is_ten_to_the_twentieth() {
    assert_eq!(
        DELTA_MONEY_MAX,
        Decimal::from_str("100000000000000000000").unwrap()
    );
}

proptest! {
    /// A delta is the same sum as `Measures::add` one by one: value and scale of every amount,
    /// every counter (and a round trip of one contribution is the identity).
    #[test]
    fn a_delta_sums_exactly_like_measures(
        parts in proptest::collection::vec(arbitrary_measures(), 1..4),
    ) {
        let mut expected = Measures::ZERO;
        let mut delta = Delta::default();
        for part in &parts {
            let one = Delta::of(part).expect("within the delta's range");
            prop_assert_eq!(one.to_measures().unwrap(), *part);
            prop_assert_eq!(one.to_measures().unwrap().cost_usd.scale(), part.cost_usd.scale());
            expected.add(part).unwrap();
            delta.add(&one);
        }
        let sum = delta.to_measures().unwrap();
        prop_assert_eq!(sum, expected);
        prop_assert_eq!(sum.cost_usd.scale(), expected.cost_usd.scale());
        prop_assert_eq!(sum.fallback_cost_usd.scale(), expected.fallback_cost_usd.scale());
    }

    /// Events priced at any scale: a delta of their contributions equals their `Measures` sum.
    #[test]
    fn a_delta_of_events_equals_their_measures(
        events in proptest::collection::vec(arbitrary_event(), 0..30),
    ) {
        let mut delta = Delta::default();
        for event in &events {
            delta.add(&Delta::of(&Measures::of_event(event)).expect("realistic amounts"));
        }
        let sum = delta.to_measures().unwrap();
        let expected = sum_in_order(&events);
        prop_assert_eq!(sum, expected);
        prop_assert_eq!(sum.cost_usd.scale(), expected.cost_usd.scale());
    }
}

#[test]
fn a_delta_refuses_what_it_cannot_hold_exactly() {
    let over = Measures {
        cost_usd: DELTA_MONEY_MAX + Decimal::ONE,
        ..Measures::ZERO
    };
    assert!(Delta::of(&over).is_none());
    let fine_grained = Measures {
        cost_usd: Decimal::new(1, 13),
        ..Measures::ZERO
    };
    assert!(Delta::of(&fine_grained).is_none());
}
