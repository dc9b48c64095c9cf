//! The totals-topic record ([`WindowTotal`]) of a [`TotalUpdate`], as the aggregator publishes it
//! and `quotactl replay` rebuilds it.

use chrono::{DateTime, Utc};
use schemas::WindowTotal;

use crate::state::TotalUpdate;

/// The totals-topic record of `update`.
pub fn window_total(
    update: &TotalUpdate,
    topic: &str,
    partition: i32,
    written_at: DateTime<Utc>,
) -> WindowTotal {
    let m = &update.measures;
    WindowTotal {
        scope_kind: update.scope_kind.to_string(),
        scope_key: update.scope_key.to_string(),
        window_kind: update.window.kind().to_string(),
        window_tz: update.window.time_zone().name().to_owned(),
        window_start: update.window.start(),
        window_end: update.window.end(),
        source_topic: topic.to_owned(),
        source_partition: partition,
        requests: m.requests,
        billable_attempts: m.billable_attempts,
        input_tokens: m.input_tokens,
        output_tokens: m.output_tokens,
        cached_input_tokens: m.cached_input_tokens,
        cache_write_tokens: m.cache_write_tokens,
        images_draft: m.images_draft,
        images_preview: m.images_preview,
        images_edit: m.images_edit,
        images_final: m.images_final,
        images_untiered: m.images_untiered,
        video_jobs: m.video_jobs,
        video_ms: m.video_ms,
        audio_ms: m.audio_ms,
        embedding_tokens: m.embedding_tokens,
        unpriced_events: m.unpriced_events,
        retries: m.retries,
        fallback_attempts: m.fallback_attempts,
        accepted_outputs: m.accepted_outputs,
        errors_4xx: m.errors_4xx,
        errors_5xx: m.errors_5xx,
        errors_other: m.errors_other,
        late_events: m.late_events,
        cost_usd: m.cost_usd,
        fallback_cost_usd: m.fallback_cost_usd,
        jobs_in_flight: m.jobs_in_flight,
        oldest_pending_job_started_at: update.oldest_pending_job_started_at,
        pending_jobs_untracked: update.pending_jobs_untracked,
        version: update.version,
        written_at,
    }
}
