//! The example policies load cleanly, and the loaded set matches, scopes and judges events as
//! the examples intend.

use chrono::{NaiveDate, TimeZone, Utc};
use policy::{
    check_dir, ActionKind, AmountOrPercent, EventDims, ModelFacts, ModelIssue, ModelVerdict,
    PolicySet, Unit, WindowKind,
};
use rust_decimal::Decimal;
use schemas::fixtures::text_event;
use schemas::{ImageTier, JobState, Modality, Severity, Status, UsageEvent};
use std::path::Path;
use std::str::FromStr;

fn examples_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))
}

fn examples() -> PolicySet {
    PolicySet::load_dir(examples_dir()).unwrap_or_else(|errors| panic!("{errors}"))
}

fn event() -> UsageEvent {
    text_event("e1", Utc.with_ymd_and_hms(2025, 11, 28, 12, 0, 0).unwrap())
}

fn decimal(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

#[test]
fn examples_load_with_zero_errors() {
    let report = check_dir(examples_dir());
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.files, 7);
    assert_eq!(report.policies, 8);
    assert!(report
        .to_string()
        .starts_with("ok: 8 policies in 7 files (fnv1a64:"));
    let set = examples();
    assert_eq!(Some(set.fingerprint()), report.fingerprint.as_deref());
}

#[test]
fn every_field_is_read() {
    let set = examples();
    let staging = set.get("staging-cost-per-key-daily").unwrap();
    let record = staging.record();
    assert_eq!(record.hard_cap, decimal("25"));
    assert_eq!(
        record.soft_alerts,
        [50, 80, 100].map(policy::Threshold::Percent).to_vec()
    );
    let window = staging.window().unwrap();
    assert_eq!(window.kind, WindowKind::Day);
    assert_eq!(window.time_zone, chrono_tz::America::New_York);
    assert_eq!(window.label(), "day");
    let approval = record.approval.as_ref().unwrap();
    assert_eq!(approval.max_raise, AmountOrPercent::Percent(decimal("100")));
    assert_eq!(
        approval.max_raise.absolute_for(record.hard_cap),
        decimal("25")
    );
    assert_eq!(approval.max_duration.0.num_hours(), 24);
    let anomaly = record.anomaly.as_ref().unwrap();
    assert!(anomaly.enabled);
    assert_eq!(anomaly.z_threshold, decimal("3.5"));
    assert_eq!(staging.severity_for_threshold(100), Severity::Error);
    assert_eq!(staging.severity_for_threshold(50), Severity::Warning);
    assert_eq!(staging.slack_channel(), Some("#staging-spend"));
    assert_eq!(staging.pagerduty_service(), Some("platform-quota"));
    assert_eq!(
        record.review.as_ref().unwrap().next_review,
        NaiveDate::from_ymd_opt(2026, 1, 15).unwrap()
    );

    let fallback = set.get("support-fallback-budget").unwrap();
    let retry = fallback.record().retry_policy.as_ref().unwrap();
    assert_eq!(retry.max_fallback_cost_usd, Some(decimal("0.5")));
    assert_eq!(
        retry.non_retryable,
        vec![
            Status::QuotaExceeded,
            Status::InvalidRequest,
            Status::PolicyBlocked
        ]
    );
    assert_eq!(fallback.unit(), Unit::FallbackCostUsd);
    assert_eq!(
        fallback.record().soft_alerts,
        [50, 75, 90, 100].map(policy::Threshold::Percent).to_vec()
    );

    let rpm = set.get("openai-rpm-per-key").unwrap();
    assert_eq!(rpm.action_kind(), ActionKind::Degrade);
    assert_eq!(
        rpm.record().action.degrade_to.as_deref(),
        Some("gpt-4o-mini")
    );
    assert!(rpm
        .record()
        .retry_policy
        .as_ref()
        .unwrap()
        .non_retryable
        .contains(&Status::RateLimited));

    let campaign = set.get("black-friday-gift-finder").unwrap();
    let window = campaign.window().unwrap();
    let bounds = window.campaign.as_ref().unwrap();
    assert_eq!(
        bounds.start,
        Utc.with_ymd_and_hms(2025, 11, 28, 5, 0, 0).unwrap()
    );
    assert_eq!(
        bounds.end,
        Utc.with_ymd_and_hms(2025, 12, 2, 5, 0, 0).unwrap()
    );
    assert_eq!(window.label(), "campaign:black-friday-2025");
    assert_eq!(
        campaign.record().approval.as_ref().unwrap().max_raise,
        AmountOrPercent::Percent(decimal("25"))
    );

    let video = set.get("video-concurrent-jobs").unwrap();
    assert!(video.window().is_none());
    assert_eq!(video.pagerduty_service(), Some("media-gen-urgent"));
    assert_eq!(video.severity_for_threshold(100), Severity::Critical);
}

#[test]
fn route_globs_and_per_key_scopes() {
    let set = examples();
    let rpm = set.get("openai-rpm-per-key").unwrap();
    let mut mini = event();
    mini.model = "gpt-4o-mini".to_owned();
    assert!(rpm.matches(&EventDims::from_event(&mini)));
    assert_eq!(
        rpm.scope_key(&EventDims::from_event(&mini))
            .unwrap()
            .as_str(),
        "api_key_id=key-1"
    );
    let mut other_model = mini.clone();
    other_model.model = "o3".to_owned();
    assert!(!rpm.matches(&EventDims::from_event(&other_model)));
    let mut staging = mini.clone();
    staging.environment = "staging".to_owned();
    assert_eq!(rpm.scope_key(&EventDims::from_event(&staging)), None);
    let mut responses = mini.clone();
    responses.endpoint = "responses".to_owned();
    assert!(!rpm.matches(&EventDims::from_event(&responses)));

    let tpm = set.get("openai-tpm-per-key").unwrap();
    let scope = tpm.scope_key(&EventDims::from_event(&mini)).unwrap();
    assert_eq!(scope.as_str(), "api_key_id=key-1|model=gpt-4o-mini");
    assert_eq!(scope.policy_id(), "openai-tpm-per-key");
    // The reused-buffer rendering (the aggregator's hot path) renders the same key, and leaves
    // the buffer alone for an event the policy does not count.
    let mut buffer = String::from("left over from the previous event");
    assert!(tpm.scope_key_into(&EventDims::from_event(&mini), &mut buffer));
    assert_eq!(buffer, scope.as_str());
    assert!(!rpm.scope_key_into(&EventDims::from_event(&staging), &mut buffer));
    assert_eq!(buffer, scope.as_str());
    assert_eq!(Unit::TotalTokens.measure(&mini), Decimal::from(1_100));
    let mut image = mini.clone();
    image.modality = Modality::Image;
    assert!(!tpm.matches(&EventDims::from_event(&image)));
}

#[test]
fn selector_lists_globs_and_labels() {
    let set = examples();
    let images = set.get("marketing-final-images-weekly").unwrap();
    let mut image = event();
    image.team = "marketing".to_owned();
    image.endpoint = "images".to_owned();
    image.modality = Modality::Image;
    image.model = "gpt-image-1".to_owned();
    image.images = 4;
    image.image_tier = Some(ImageTier::Final);
    let dims = EventDims::from_event(&image);
    assert_eq!(images.scope_key(&dims).unwrap().as_str(), "workflow=answer");
    assert_eq!(images.unit().measure(&image), Decimal::from(4));
    image.model = "dall-e-3".to_owned();
    assert!(images.matches(&EventDims::from_event(&image)));
    image.model = "dall-e-2".to_owned();
    assert!(!images.matches(&EventDims::from_event(&image)));

    let campaign = set.get("black-friday-gift-finder").unwrap();
    let mut gift = event();
    gift.labels
        .insert("feature".to_owned(), "gift-finder".to_owned());
    gift.labels
        .insert("campaign".to_owned(), "bf-2025".to_owned());
    gift.customer_id = Some("42".to_owned());
    let dims = EventDims::from_event(&gift);
    let scope = campaign.scope_key(&dims).unwrap();
    assert_eq!(scope.as_str(), "labels.feature=gift-finder|customer_id=42");
    assert_eq!(
        scope.scope_map().get("labels.feature").map(String::as_str),
        Some("gift-finder")
    );
    let matching: Vec<_> = set
        .scopes(&dims)
        .map(|(policy, scope)| format!("{}/{}", policy.id(), scope.as_str()))
        .collect();
    assert_eq!(
        matching,
        vec![
            "black-friday-gift-finder/labels.feature=gift-finder|customer_id=42",
            "openai-rpm-per-key/api_key_id=key-1",
            "openai-tpm-per-key/api_key_id=key-1|model=gpt-4o",
            "prod-model-lifecycle/provider=openai|model=gpt-4o",
        ]
    );
    let mut unlabeled = gift.clone();
    unlabeled.labels.remove("campaign");
    assert!(
        !campaign.matches(&EventDims::from_event(&unlabeled)),
        "a missing label never matches"
    );
}

#[test]
fn gauge_scopes_keep_events_without_the_dimension() {
    let set = examples();
    let video = set.get("video-concurrent-jobs").unwrap();
    let mut job = event();
    job.modality = Modality::Video;
    job.endpoint = "video".to_owned();
    job.job_state = Some(JobState::Submitted);
    // No customer_id: counted in its own scope, not dropped.
    assert_eq!(
        video
            .scope_key(&EventDims::from_event(&job))
            .unwrap()
            .as_str(),
        "customer_id"
    );
    job.customer_id = Some("c|1".to_owned());
    assert_eq!(
        video
            .scope_key(&EventDims::from_event(&job))
            .unwrap()
            .as_str(),
        "customer_id=c%7C1"
    );
    assert_eq!(video.unit().measure(&job), Decimal::ONE);
}

#[test]
fn model_rules_block_deprecated_preview_and_unlisted_models() {
    let set = examples();
    let lifecycle = set.get("prod-model-lifecycle").unwrap();
    let today = NaiveDate::from_ymd_opt(2025, 11, 28).unwrap();
    let current = ModelFacts::default();
    assert_eq!(
        lifecycle.model_verdict("gpt-4o", Some(current), today),
        ModelVerdict::Allow
    );
    assert_eq!(
        lifecycle.model_verdict("o3", Some(current), today),
        ModelVerdict::Block(ModelIssue::NotAllowListed)
    );
    let retired = ModelFacts {
        deprecation_date: NaiveDate::from_ymd_opt(2025, 6, 1),
        is_preview: false,
    };
    assert_eq!(
        lifecycle.model_verdict("gpt-4o-2024-05-13", Some(retired), today),
        ModelVerdict::Block(ModelIssue::Deprecated {
            since: NaiveDate::from_ymd_opt(2025, 6, 1).unwrap()
        })
    );
    let announced = ModelFacts {
        deprecation_date: NaiveDate::from_ymd_opt(2026, 6, 1),
        is_preview: false,
    };
    assert_eq!(
        lifecycle.model_verdict("gpt-4o", Some(announced), today),
        ModelVerdict::Allow
    );
    let preview = ModelFacts {
        deprecation_date: None,
        is_preview: true,
    };
    assert_eq!(
        lifecycle.model_verdict("gemini-2.5-pro-preview-03-25", Some(preview), today),
        ModelVerdict::Block(ModelIssue::Preview)
    );
    // Policies without model rules allow everything.
    let staging = set.get("staging-cost-per-key-daily").unwrap();
    assert_eq!(
        staging.model_verdict("o3", Some(preview), today),
        ModelVerdict::Allow
    );
}
