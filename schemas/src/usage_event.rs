//! [`UsageEvent`]: one billable attempt (or one async job state change).
//!
//! The contract is `schemas/CONTRACT.md` (checked against `schemas/avro/usage_event.v2.avsc` by a
//! test). Delivery is at least once, so consumers count each `event_id` once: it identifies the
//! attempt, not the delivery. Retries and fallbacks of one user action are separate events
//! (each is billed) sharing `action_id`, with `attempt` 2, 3, …
//!
//! On Kafka, records are keyed by [`partition_key`]: the `job_id` of a job's events, else the
//! `event_id`, so all events of a job and all copies of an event share a partition.

use crate::avro_enum;
use crate::codec::datum::{DatumReader, DatumWriter};
use crate::codec::{AvroRecord, DecodeError, EncodeError, InvariantViolation};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

avro_enum! {
    /// What kind of output is billed.
    pub enum Modality {
        /// Text generation (chat, responses, messages).
        Text = "text",
        /// Image generation or editing.
        Image = "image",
        /// Video generation.
        Video = "video",
        /// Audio (speech, transcription).
        Audio = "audio",
        /// Embeddings.
        Embedding = "embedding",
        /// Batch jobs.
        Batch = "batch",
    }
}

avro_enum! {
    /// Image quality tier, priced differently.
    pub enum ImageTier {
        /// Cheap draft for iteration.
        Draft = "draft",
        /// Preview quality.
        Preview = "preview",
        /// An edit of an existing image.
        Edit = "edit",
        /// Final, full quality.
        Final = "final",
    }
}

avro_enum! {
    /// State of an async job (video, batch).
    pub enum JobState {
        /// Accepted by the provider.
        Submitted = "submitted",
        /// Running.
        Running = "running",
        /// Finished with output.
        Succeeded = "succeeded",
        /// Finished without output.
        Failed = "failed",
        /// Cancelled before finishing.
        Cancelled = "cancelled",
    }
}

avro_enum! {
    /// Outcome of an attempt.
    pub enum Status {
        /// Succeeded.
        Ok = "ok",
        /// Provider rate limit (HTTP 429 with retry-after, typically).
        RateLimited = "rate_limited",
        /// Provider or gateway quota exhausted.
        QuotaExceeded = "quota_exceeded",
        /// Rejected as invalid; retrying it is pointless.
        InvalidRequest = "invalid_request",
        /// Blocked by a policy (a `ControlDecision` or a content policy).
        PolicyBlocked = "policy_blocked",
        /// Provider-side failure (5xx).
        ProviderError = "provider_error",
        /// No answer in time.
        Timeout = "timeout",
        /// Cancelled by the caller.
        Cancelled = "cancelled",
    }
}

avro_enum! {
    /// Where [`UsageEvent::cost_usd`] comes from.
    pub enum CostSource {
        /// The provider reported the cost (`reported_cost_usd`).
        Reported = "reported",
        /// Priced from the price catalog (`catalog_version`).
        Priced = "priced",
        /// Neither: the model is not in the catalog; `cost_usd` is null.
        Unpriced = "unpriced",
    }
}

/// One billable attempt, or one state change of an async job.
///
/// Field names and types are the contract (`schemas/CONTRACT.md`). Counts that the contract
/// says are `>= 0` are unsigned here; the codec rejects negative values on the wire.
/// JSON: the same field names; amounts as strings (or exact numbers), timestamps as RFC 3339,
/// zero counts, empty labels and null optionals may be omitted; unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageEvent {
    /// Unique per billable attempt: the idempotency key.
    pub event_id: String,
    /// Event time (UTC); microsecond precision on the wire. JSON: RFC 3339 with its offset.
    #[serde(deserialize_with = "crate::time::json::deserialize")]
    pub occurred_at: DateTime<Utc>,
    /// Gateway/app instance that emitted the event.
    pub producer: String,
    /// Provider request id where available, else the gateway's.
    pub request_id: String,
    /// The original user action that all its retries and fallbacks share.
    pub action_id: String,
    /// 1 = primary attempt; 2.. = retries and fallbacks.
    pub attempt: u32,
    /// Set when this attempt is a fallback from that model.
    #[serde(default)]
    pub fallback_from_model: Option<String>,
    /// Ownership scope: API key id (never the secret).
    pub api_key_id: String,
    /// Ownership scope: team.
    pub team: String,
    /// Ownership scope: workflow.
    pub workflow: String,
    /// Ownership scope: environment (prod, staging …).
    pub environment: String,
    /// Optional ownership scope: end user.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Optional ownership scope: customer.
    #[serde(default)]
    pub customer_id: Option<String>,
    /// Route: provider.
    pub provider: String,
    /// Route: model, a price-catalog row name.
    pub model: String,
    /// Route: endpoint family (chat_completions, responses, messages, generate_content, images,
    /// video, audio, embeddings, batch).
    pub endpoint: String,
    /// What kind of output is billed.
    pub modality: Modality,
    /// Input tokens, including `cached_input_tokens`.
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// The part of `input_tokens` read from cache (`<= input_tokens`).
    #[serde(default)]
    pub cached_input_tokens: u64,
    /// Tokens written to the prompt cache.
    #[serde(default)]
    pub cache_write_tokens: u64,
    /// Images generated or edited.
    #[serde(default)]
    pub images: u32,
    /// Image quality tier, for image events.
    #[serde(default)]
    pub image_tier: Option<ImageTier>,
    /// Video length billed, in milliseconds.
    #[serde(default)]
    pub video_duration_ms: u64,
    /// Audio length billed, in milliseconds.
    #[serde(default)]
    pub audio_duration_ms: u64,
    /// Video resolution, e.g. `1280x720`.
    #[serde(default)]
    pub video_resolution: Option<String>,
    /// Async job id (video, batch).
    #[serde(default)]
    pub job_id: Option<String>,
    /// State of the async job this event reports.
    #[serde(default)]
    pub job_state: Option<JobState>,
    /// Outcome of the attempt.
    pub status: Status,
    /// HTTP status returned by the provider.
    #[serde(default)]
    pub http_status: Option<u16>,
    /// Provider's retry-after, when given.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
    /// Whether the output was accepted by its user/workflow.
    #[serde(default)]
    pub accepted: Option<bool>,
    /// Provider-reported final cost (USD, `decimal(38, 12)`, >= 0).
    #[serde(default, with = "crate::money::json::option")]
    pub reported_cost_usd: Option<Decimal>,
    /// Pre-call cost estimate (USD, `decimal(38, 12)`, >= 0).
    #[serde(default, with = "crate::money::json::option")]
    pub estimated_cost_usd: Option<Decimal>,
    /// End-to-end latency in milliseconds.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Free metadata (feature, campaign, customer tier …).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Pricing envelope (v2), filled by ingest: the effective cost, see [`Self::apply_pricing`].
    #[serde(default, with = "crate::money::json::option")]
    pub cost_usd: Option<Decimal>,
    /// Pricing envelope (v2): where `cost_usd` comes from; `None` = not priced yet.
    #[serde(default)]
    pub cost_source: Option<CostSource>,
    /// Pricing envelope (v2): the price catalog version consulted (`priced` or `unpriced`);
    /// `None` when the cost was reported.
    #[serde(default)]
    pub catalog_version: Option<String>,
}

impl UsageEvent {
    /// Fills the pricing envelope by the contract rule: the reported cost if the provider gave
    /// one, else `priced_cost_usd` from catalog `catalog_version`, else unpriced (null cost).
    pub fn apply_pricing(&mut self, priced_cost_usd: Option<Decimal>, catalog_version: &str) {
        let (cost_usd, cost_source, catalog_version) =
            match (self.reported_cost_usd, priced_cost_usd) {
                (Some(reported), _) => (Some(reported), CostSource::Reported, None),
                (None, Some(priced)) => (
                    Some(priced),
                    CostSource::Priced,
                    Some(catalog_version.to_owned()),
                ),
                (None, None) => (None, CostSource::Unpriced, Some(catalog_version.to_owned())),
            };
        self.cost_usd = cost_usd;
        self.cost_source = Some(cost_source);
        self.catalog_version = catalog_version;
    }
}

/// The Kafka record key of `event` on the usage topic: its `job_id` when it reports an async job,
/// else its `event_id`. Every producer of usage events keys records with this function.
///
/// Why: Kafka partitions by key, and consumers partition their state by input partition. The
/// aggregator must see a job's `submitted` event and its `succeeded`, `failed` or `cancelled`
/// event in the same partition to know which jobs are pending, so every event of a job shares
/// its `job_id` as key. Every copy of one event (a retry or a duplicate) has the same fields,
/// hence the same key and the same partition, so deduplication by `event_id` stays
/// partition-local.
pub fn partition_key(event: &UsageEvent) -> &str {
    event.job_id.as_deref().unwrap_or(&event.event_id)
}

pub(crate) fn http_status_from_wire(code: Option<i32>) -> Result<Option<u16>, DecodeError> {
    code.map(|code| {
        u16::try_from(code).map_err(|_| DecodeError::InvalidValue {
            field: "http_status",
            reason: format!("{code} is not an HTTP status"),
        })
    })
    .transpose()
}

impl AvroRecord for UsageEvent {
    const RECORD_NAME: &'static str = "dev.quotaflow.UsageEvent";
    const FINGERPRINT: [u8; 8] = [0xDE, 0x48, 0x65, 0xC5, 0xE4, 0x5A, 0xB4, 0x23];

    fn write_datum<W: DatumWriter>(&self, writer: &mut W) -> Result<(), EncodeError> {
        writer.write_string("event_id", &self.event_id);
        writer.write_timestamp("occurred_at", &self.occurred_at)?;
        writer.write_string("producer", &self.producer);
        writer.write_string("request_id", &self.request_id);
        writer.write_string("action_id", &self.action_id);
        writer.write_count_int("attempt", self.attempt)?;
        writer.write_optional_string("fallback_from_model", self.fallback_from_model.as_deref());
        writer.write_string("api_key_id", &self.api_key_id);
        writer.write_string("team", &self.team);
        writer.write_string("workflow", &self.workflow);
        writer.write_string("environment", &self.environment);
        writer.write_optional_string("user_id", self.user_id.as_deref());
        writer.write_optional_string("customer_id", self.customer_id.as_deref());
        writer.write_string("provider", &self.provider);
        writer.write_string("model", &self.model);
        writer.write_string("endpoint", &self.endpoint);
        writer.write_enum("modality", self.modality);
        writer.write_count_long("input_tokens", self.input_tokens)?;
        writer.write_count_long("output_tokens", self.output_tokens)?;
        writer.write_count_long("cached_input_tokens", self.cached_input_tokens)?;
        writer.write_count_long("cache_write_tokens", self.cache_write_tokens)?;
        writer.write_count_int("images", self.images)?;
        writer.write_optional_enum("image_tier", self.image_tier);
        writer.write_count_long("video_duration_ms", self.video_duration_ms)?;
        writer.write_count_long("audio_duration_ms", self.audio_duration_ms)?;
        writer.write_optional_string("video_resolution", self.video_resolution.as_deref());
        writer.write_optional_string("job_id", self.job_id.as_deref());
        writer.write_optional_enum("job_state", self.job_state);
        writer.write_enum("status", self.status);
        writer.write_optional_int("http_status", self.http_status.map(i32::from));
        writer.write_optional_count_long("retry_after_ms", self.retry_after_ms)?;
        writer.write_optional_boolean("accepted", self.accepted);
        writer.write_optional_amount("reported_cost_usd", self.reported_cost_usd.as_ref())?;
        writer.write_optional_amount("estimated_cost_usd", self.estimated_cost_usd.as_ref())?;
        writer.write_optional_count_long("latency_ms", self.latency_ms)?;
        writer.write_string_map("labels", &self.labels);
        writer.write_optional_amount("cost_usd", self.cost_usd.as_ref())?;
        writer.write_optional_enum("cost_source", self.cost_source);
        writer.write_optional_string("catalog_version", self.catalog_version.as_deref());
        Ok(())
    }

    fn read_datum<R: DatumReader>(reader: &mut R) -> Result<Self, DecodeError> {
        // Struct fields are evaluated in the order written: this is the schema order.
        Ok(UsageEvent {
            event_id: reader.read_string("event_id")?,
            occurred_at: reader.read_timestamp("occurred_at")?,
            producer: reader.read_string("producer")?,
            request_id: reader.read_string("request_id")?,
            action_id: reader.read_string("action_id")?,
            attempt: reader.read_count_int("attempt")?,
            fallback_from_model: reader.read_optional_string("fallback_from_model")?,
            api_key_id: reader.read_string("api_key_id")?,
            team: reader.read_string("team")?,
            workflow: reader.read_string("workflow")?,
            environment: reader.read_string("environment")?,
            user_id: reader.read_optional_string("user_id")?,
            customer_id: reader.read_optional_string("customer_id")?,
            provider: reader.read_string("provider")?,
            model: reader.read_string("model")?,
            endpoint: reader.read_string("endpoint")?,
            modality: reader.read_enum("modality")?,
            input_tokens: reader.read_count_long("input_tokens")?,
            output_tokens: reader.read_count_long("output_tokens")?,
            cached_input_tokens: reader.read_count_long("cached_input_tokens")?,
            cache_write_tokens: reader.read_count_long("cache_write_tokens")?,
            images: reader.read_count_int("images")?,
            image_tier: reader.read_optional_enum("image_tier")?,
            video_duration_ms: reader.read_count_long("video_duration_ms")?,
            audio_duration_ms: reader.read_count_long("audio_duration_ms")?,
            video_resolution: reader.read_optional_string("video_resolution")?,
            job_id: reader.read_optional_string("job_id")?,
            job_state: reader.read_optional_enum("job_state")?,
            status: reader.read_enum("status")?,
            http_status: http_status_from_wire(reader.read_optional_int("http_status")?)?,
            retry_after_ms: reader.read_optional_count_long("retry_after_ms")?,
            accepted: reader.read_optional_boolean("accepted")?,
            reported_cost_usd: reader.read_optional_amount("reported_cost_usd")?,
            estimated_cost_usd: reader.read_optional_amount("estimated_cost_usd")?,
            latency_ms: reader.read_optional_count_long("latency_ms")?,
            labels: reader.read_string_map("labels")?,
            cost_usd: reader.read_optional_amount("cost_usd")?,
            cost_source: reader.read_optional_enum("cost_source")?,
            catalog_version: reader.read_optional_string("catalog_version")?,
        })
    }

    fn check_invariants(&self) -> Result<(), InvariantViolation> {
        check_counts(self.attempt, self.cached_input_tokens, self.input_tokens)
    }
}

/// The contract's checks across fields of a usage event (owned or borrowed): `attempt` starts at
/// 1, and input tokens include the cached ones.
pub(crate) fn check_counts(
    attempt: u32,
    cached_input_tokens: u64,
    input_tokens: u64,
) -> Result<(), InvariantViolation> {
    if attempt == 0 {
        return Err(InvariantViolation {
            field: "attempt",
            reason: "attempt starts at 1 (the primary attempt)".to_owned(),
        });
    }
    if cached_input_tokens > input_tokens {
        return Err(InvariantViolation {
            field: "cached_input_tokens",
            reason: format!(
                "{cached_input_tokens} cached input tokens exceed {input_tokens} input tokens (input must include cached)"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro_enum::AvroEnum;

    #[test]
    fn partition_key_is_the_job_id_when_there_is_one_else_the_event_id() {
        let at = chrono::DateTime::UNIX_EPOCH;
        let text = crate::fixtures::text_event("evt-1", at);
        assert_eq!(partition_key(&text), "evt-1");

        let job_event = |event_id: &str, job_state| UsageEvent {
            job_id: Some("job-7".to_owned()),
            job_state: Some(job_state),
            modality: Modality::Video,
            ..crate::fixtures::text_event(event_id, at)
        };
        let submitted = job_event("evt-2", JobState::Submitted);
        let succeeded = job_event("evt-3", JobState::Succeeded);
        assert_eq!(partition_key(&submitted), "job-7");
        assert_eq!(partition_key(&succeeded), partition_key(&submitted));
        // A duplicate is the same event: same key.
        assert_eq!(partition_key(&submitted.clone()), partition_key(&submitted));
    }

    #[test]
    fn enums_parse_and_name_the_allowed_values() {
        assert_eq!("rate_limited".parse::<Status>(), Ok(Status::RateLimited));
        assert_eq!(Status::RateLimited.as_str(), "rate_limited");
        assert_eq!(Modality::from_index(4), Some(Modality::Embedding));
        let error = "vid".parse::<Modality>().expect_err("unknown");
        assert_eq!(
            error.to_string(),
            "unknown Modality \"vid\"; allowed values: text, image, video, audio, embedding, batch"
        );
    }
}
