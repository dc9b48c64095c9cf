//! Example events for tests, benchmarks and the demo: start from [`text_event`] and change what the
//! case is about with struct update syntax (`UsageEvent { model: .., ..text_event(id, at) }`), so no
//! caller spells out all the contract's fields again.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::usage_event::{Modality, Status, UsageEvent};

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
