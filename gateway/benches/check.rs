//! `DecisionView::check` latency with 1,000 active decisions spread over teams, models, API keys
//! and labels, for a request that matches one block and for one that matches nothing.

use std::collections::BTreeMap;
use std::hint::black_box;

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use gateway::{DecisionView, RequestAttributes};
use schemas::{ControlDecision, DecisionAction};

fn decision(index: usize) -> ControlDecision {
    let now = Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap();
    let mut scope = BTreeMap::new();
    match index % 4 {
        0 => {
            scope.insert("team".to_string(), format!("team-{}", index % 100));
            scope.insert("model".to_string(), format!("model-{}", index % 37));
        }
        1 => {
            scope.insert("api_key_id".to_string(), format!("key-{index}"));
        }
        2 => {
            scope.insert(
                "labels.feature".to_string(),
                format!("feature-{}", index % 50),
            );
            scope.insert("environment".to_string(), "prod".to_string());
        }
        _ => {
            scope.insert("customer_id".to_string(), format!("customer-{index}"));
            scope.insert("model".to_string(), format!("model-{}", index % 37));
        }
    }
    let policy_id = format!("policy-{index}");
    let action = match index % 3 {
        0 => DecisionAction::Degrade,
        _ => DecisionAction::Block,
    };
    ControlDecision {
        decision_id: format!("d-{index}"),
        action,
        degrade_to: (action == DecisionAction::Degrade).then(|| "small-model".to_string()),
        reason: "budget exhausted".to_string(),
        ..schemas::fixtures::block_decision(&policy_id, scope, Vec::new(), now)
    }
}

fn check(criterion: &mut Criterion) {
    let mut view = DecisionView::new();
    for index in 0..1_000 {
        view.apply(&decision(index));
    }
    assert_eq!(view.len(), 1_000);
    let now = Utc::now();
    let labels = [("feature", "feature-7")];
    // Matches decision 4 (team-4 × model-4: a block) and the label bucket for feature-7.
    let matching = RequestAttributes {
        api_key_id: "key-x",
        team: "team-4",
        user_id: Some("alice"),
        customer_id: Some("customer-x"),
        workflow: "answer",
        environment: "prod",
        provider: "openai",
        model: "model-4",
        endpoint: "chat",
        modality: "text",
        labels: &labels,
    };
    let unmatched = RequestAttributes {
        team: "team-none",
        model: "model-none",
        labels: &[],
        customer_id: None,
        ..matching
    };
    assert!(!view.check(&matching, now).may_proceed());
    assert!(view.check(&unmatched, now).may_proceed());

    let mut group = criterion.benchmark_group("check_1000_decisions");
    group.bench_function("matching_block", |bencher| {
        bencher.iter(|| view.check(black_box(&matching), black_box(now)))
    });
    group.bench_function("no_match", |bencher| {
        bencher.iter(|| view.check(black_box(&unmatched), black_box(now)))
    });
    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
