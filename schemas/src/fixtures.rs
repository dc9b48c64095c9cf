//! Example events (and decisions, [`block_decision`]) for tests, benchmarks and the demo: start from [`text_event`] and change what the
//! case is about with struct update syntax (`UsageEvent { model: .., ..text_event(id, at) }`), so no
//! caller spells out all the contract's fields again.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use rust_decimal::Decimal;

use crate::control::{ControlDecision, DecisionAction};
use crate::usage_event::{Modality, Status, UsageEvent};
use crate::window_total::WindowTotal;

/// A minimal successful chat completion on `gpt-4o` (a row of the embedded price catalog): 1,000
/// input and 100 output tokens, primary attempt, required scopes set, every optional field empty and
/// no pricing envelope yet. It passes ingest validation as it is.
pub fn text_event(event_id: &str, occurred_at: DateTime<Utc>) -> UsageEvent {
    UsageEvent {
        event_id: event_id.to_owned(),
        occurred_at,
        producer: "gateway-test".to_owned(),
        request_id: format!("req-{event_id}"),
        action_id: format!("act-{event_id}"),
        attempt: 1,
        fallback_from_model: None,
        api_key_id: "key-1".to_owned(),
        team: "search".to_owned(),
        workflow: "answer".to_owned(),
        environment: "prod".to_owned(),
        user_id: None,
        customer_id: None,
        provider: "openai".to_owned(),
        model: "gpt-4o".to_owned(),
        endpoint: "chat_completions".to_owned(),
        modality: Modality::Text,
        input_tokens: 1_000,
        output_tokens: 100,
        cached_input_tokens: 0,
        cache_write_tokens: 0,
        images: 0,
        image_tier: None,
        video_duration_ms: 0,
        audio_duration_ms: 0,
        video_resolution: None,
        job_id: None,
        job_state: None,
        status: Status::Ok,
        http_status: Some(200),
        retry_after_ms: None,
        accepted: None,
        reported_cost_usd: None,
        estimated_cost_usd: None,
        latency_ms: Some(120),
        labels: BTreeMap::new(),
        cost_usd: None,
        cost_source: None,
        catalog_version: None,
    }
}

/// An empty total (every measure zero, version 1) of `scope_kind`/`scope_key` for the UTC day
/// starting at `day_start`, from partition 0 of topic `usage`: set the measures the case is about
/// with struct update syntax.
pub fn empty_day_total(scope_kind: &str, scope_key: &str, day_start: DateTime<Utc>) -> WindowTotal {
    WindowTotal {
        scope_kind: scope_kind.to_owned(),
        scope_key: scope_key.to_owned(),
        window_kind: "day".to_owned(),
        window_tz: "UTC".to_owned(),
        window_start: day_start,
        window_end: day_start + chrono::TimeDelta::days(1),
        source_topic: "usage".to_owned(),
        source_partition: 0,
        requests: 0,
        billable_attempts: 0,
        input_tokens: 0,
        output_tokens: 0,
        cached_input_tokens: 0,
        cache_write_tokens: 0,
        images_draft: 0,
        images_preview: 0,
        images_edit: 0,
        images_final: 0,
        images_untiered: 0,
        video_jobs: 0,
        video_ms: 0,
        audio_ms: 0,
        embedding_tokens: 0,
        unpriced_events: 0,
        retries: 0,
        fallback_attempts: 0,
        accepted_outputs: 0,
        errors_4xx: 0,
        errors_5xx: 0,
        errors_other: 0,
        late_events: 0,
        cost_usd: rust_decimal::Decimal::ZERO,
        fallback_cost_usd: rust_decimal::Decimal::ZERO,
        jobs_in_flight: 0,
        oldest_pending_job_started_at: None,
        pending_jobs_untracked: 0,
        version: 1,
        written_at: day_start,
    }
}

/// A block of `policy_id` for `scope` and the `absent` dimensions (sorted by the caller), version
/// 1, issued at `at` for a window `[at, at]` without expiry, keyed by
/// [`ControlDecision::compaction_key_with_absent`]. Change the rest with struct update syntax.
pub fn block_decision(
    policy_id: &str,
    scope: BTreeMap<String, String>,
    absent: Vec<String>,
    at: DateTime<Utc>,
) -> ControlDecision {
    ControlDecision {
        decision_id: format!("{policy_id}-1"),
        key: ControlDecision::compaction_key_with_absent(policy_id, &scope, &absent),
        policy_id: policy_id.to_owned(),
        scope,
        action: DecisionAction::Block,
        degrade_to: None,
        reason: format!("{policy_id}: budget exhausted"),
        unit: "usd".to_owned(),
        observed: Decimal::ONE,
        limit: Decimal::ONE,
        window: "day".to_owned(),
        window_start: at,
        window_end: at,
        issued_at: at,
        expires_at: None,
        version: 1,
        absent,
        shadow: false,
    }
}
