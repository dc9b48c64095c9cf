//! [`UsageEventRef`]: a usage event of the current schema decoded without copying its strings:
//! every string borrows the record's bytes (issue 16, point 4). A reader that only counts the
//! event (the aggregator's hot path) needs no owned copy; [`UsageEventRef::to_owned`] makes one
//! when it does. The same checks as [`crate::codec::decode`]: header, fingerprint, every length
//! against the remaining bytes, UTF-8, enum and union ranges, trailing bytes, the contract's
//! cross-field checks. A record of an older schema version is not decoded here
//! ([`UsageEventRef::decode_current`] answers `None`): it goes through the resolving path.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::codec::binary::BinaryReader;
use crate::codec::datum::DatumReader;
use crate::codec::{single_object, AvroRecord, DecodeError};
use crate::usage_event::{check_counts, http_status_from_wire};
use crate::{CostSource, ImageTier, JobState, Modality, Status, UsageEvent};

/// A [`UsageEvent`] whose strings borrow the encoded record (field meanings: [`UsageEvent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct UsageEventRef<'a> {
    pub event_id: &'a str,
    pub occurred_at: DateTime<Utc>,
    pub producer: &'a str,
    pub request_id: &'a str,
    pub action_id: &'a str,
    pub attempt: u32,
    pub fallback_from_model: Option<&'a str>,
    pub api_key_id: &'a str,
    pub team: &'a str,
    pub workflow: &'a str,
    pub environment: &'a str,
    pub user_id: Option<&'a str>,
    pub customer_id: Option<&'a str>,
    pub provider: &'a str,
    pub model: &'a str,
    pub endpoint: &'a str,
    pub modality: Modality,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub images: u32,
    pub image_tier: Option<ImageTier>,
    pub video_duration_ms: u64,
    pub audio_duration_ms: u64,
    pub video_resolution: Option<&'a str>,
    pub job_id: Option<&'a str>,
    pub job_state: Option<JobState>,
    pub status: Status,
    pub http_status: Option<u16>,
    pub retry_after_ms: Option<u64>,
    pub accepted: Option<bool>,
    pub reported_cost_usd: Option<Decimal>,
    pub estimated_cost_usd: Option<Decimal>,
    pub latency_ms: Option<u64>,
    /// The labels in wire order; a key written twice keeps its last value in [`UsageEvent`].
    pub labels: Vec<(&'a str, &'a str)>,
    pub cost_usd: Option<Decimal>,
    pub cost_source: Option<CostSource>,
    pub catalog_version: Option<&'a str>,
}

impl<'a> UsageEventRef<'a> {
    /// Decodes a record written with the current schema (Avro single-object encoding), borrowing
    /// its strings; `Ok(None)` for a record of an older `UsageEvent` schema (decode it with
    /// [`crate::codec::decode`]), an error for anything else or a record that breaks the
    /// contract.
    pub fn decode_current(bytes: &'a [u8]) -> Result<Option<UsageEventRef<'a>>, DecodeError> {
        let (fingerprint, datum) = single_object::split(bytes)?;
        if fingerprint != UsageEvent::FINGERPRINT {
            crate::codec::writer_schema_of::<UsageEvent>(&fingerprint)?;
            return Ok(None);
        }
        let mut reader = BinaryReader::new(datum);
        let event = Self::read(&mut reader)?;
        reader.finish()?;
        check_counts(event.attempt, event.cached_input_tokens, event.input_tokens)?;
        Ok(Some(event))
    }

    fn read(reader: &mut BinaryReader<'a>) -> Result<UsageEventRef<'a>, DecodeError> {
        // Struct fields are evaluated in the order written: this is the schema order, the same
        // as `UsageEvent::read_datum`'s.
        Ok(UsageEventRef {
            event_id: reader.read_str("event_id")?,
            occurred_at: reader.read_timestamp("occurred_at")?,
            producer: reader.read_str("producer")?,
            request_id: reader.read_str("request_id")?,
            action_id: reader.read_str("action_id")?,
            attempt: reader.read_count_int("attempt")?,
            fallback_from_model: reader.read_optional_str("fallback_from_model")?,
            api_key_id: reader.read_str("api_key_id")?,
            team: reader.read_str("team")?,
            workflow: reader.read_str("workflow")?,
            environment: reader.read_str("environment")?,
            user_id: reader.read_optional_str("user_id")?,
            customer_id: reader.read_optional_str("customer_id")?,
            provider: reader.read_str("provider")?,
            model: reader.read_str("model")?,
            endpoint: reader.read_str("endpoint")?,
            modality: reader.read_enum("modality")?,
            input_tokens: reader.read_count_long("input_tokens")?,
            output_tokens: reader.read_count_long("output_tokens")?,
            cached_input_tokens: reader.read_count_long("cached_input_tokens")?,
            cache_write_tokens: reader.read_count_long("cache_write_tokens")?,
            images: reader.read_count_int("images")?,
            image_tier: reader.read_optional_enum("image_tier")?,
            video_duration_ms: reader.read_count_long("video_duration_ms")?,
            audio_duration_ms: reader.read_count_long("audio_duration_ms")?,
            video_resolution: reader.read_optional_str("video_resolution")?,
            job_id: reader.read_optional_str("job_id")?,
            job_state: reader.read_optional_enum("job_state")?,
            status: reader.read_enum("status")?,
            http_status: http_status_from_wire(reader.read_optional_int("http_status")?)?,
            retry_after_ms: reader.read_optional_count_long("retry_after_ms")?,
            accepted: reader.read_optional_boolean("accepted")?,
            reported_cost_usd: reader.read_optional_amount("reported_cost_usd")?,
            estimated_cost_usd: reader.read_optional_amount("estimated_cost_usd")?,
            latency_ms: reader.read_optional_count_long("latency_ms")?,
            labels: reader.read_str_pairs("labels")?,
            cost_usd: reader.read_optional_amount("cost_usd")?,
            cost_source: reader.read_optional_enum("cost_source")?,
            catalog_version: reader.read_optional_str("catalog_version")?,
        })
    }

    /// Writes the owned event ([`Self::to_owned`]) into `event`, reusing its strings' buffers:
    /// a consumer that keeps one `UsageEvent` from record to record decodes without allocating
    /// once the buffers have grown (labels are rewritten in place when the keys are the same as
    /// the previous event's). Afterwards `*event == self.to_owned()`, whatever `event` held.
    pub fn write_into(&self, event: &mut UsageEvent) {
        fn set(target: &mut String, value: &str) {
            target.clear();
            target.push_str(value);
        }
        fn set_optional(target: &mut Option<String>, value: Option<&str>) {
            match (target.as_mut(), value) {
                (Some(target), Some(value)) => set(target, value),
                (_, value) => *target = value.map(str::to_owned),
            }
        }
        set(&mut event.event_id, self.event_id);
        event.occurred_at = self.occurred_at;
        set(&mut event.producer, self.producer);
        set(&mut event.request_id, self.request_id);
        set(&mut event.action_id, self.action_id);
        event.attempt = self.attempt;
        set_optional(&mut event.fallback_from_model, self.fallback_from_model);
        set(&mut event.api_key_id, self.api_key_id);
        set(&mut event.team, self.team);
        set(&mut event.workflow, self.workflow);
        set(&mut event.environment, self.environment);
        set_optional(&mut event.user_id, self.user_id);
        set_optional(&mut event.customer_id, self.customer_id);
        set(&mut event.provider, self.provider);
        set(&mut event.model, self.model);
        set(&mut event.endpoint, self.endpoint);
        event.modality = self.modality;
        event.input_tokens = self.input_tokens;
        event.output_tokens = self.output_tokens;
        event.cached_input_tokens = self.cached_input_tokens;
        event.cache_write_tokens = self.cache_write_tokens;
        event.images = self.images;
        event.image_tier = self.image_tier;
        event.video_duration_ms = self.video_duration_ms;
        event.audio_duration_ms = self.audio_duration_ms;
        set_optional(&mut event.video_resolution, self.video_resolution);
        set_optional(&mut event.job_id, self.job_id);
        event.job_state = self.job_state;
        event.status = self.status;
        event.http_status = self.http_status;
        event.retry_after_ms = self.retry_after_ms;
        event.accepted = self.accepted;
        event.reported_cost_usd = self.reported_cost_usd;
        event.estimated_cost_usd = self.estimated_cost_usd;
        event.latency_ms = self.latency_ms;
        // The same distinct keys as held (the common case: one producer's label set): values in
        // place, in wire order so a repeated key keeps its last value. Otherwise rebuilt.
        let same_keys = event.labels.len() == self.labels.len()
            && self.labels.iter().enumerate().all(|(index, (key, _))| {
                event.labels.contains_key(*key)
                    && !self.labels[..index]
                        .iter()
                        .any(|(earlier, _)| earlier == key)
            });
        if same_keys {
            for (key, value) in &self.labels {
                if let Some(target) = event.labels.get_mut(*key) {
                    set(target, value);
                }
            }
        } else {
            event.labels.clear();
            for (key, value) in &self.labels {
                event.labels.insert((*key).to_owned(), (*value).to_owned());
            }
        }
        event.cost_usd = self.cost_usd;
        event.cost_source = self.cost_source;
        set_optional(&mut event.catalog_version, self.catalog_version);
    }

    /// The owned event: what [`crate::codec::decode`] gives for the same bytes.
    pub fn to_owned(&self) -> UsageEvent {
        let owned = |text: &str| text.to_owned();
        UsageEvent {
            event_id: owned(self.event_id),
            occurred_at: self.occurred_at,
            producer: owned(self.producer),
            request_id: owned(self.request_id),
            action_id: owned(self.action_id),
            attempt: self.attempt,
            fallback_from_model: self.fallback_from_model.map(owned),
            api_key_id: owned(self.api_key_id),
            team: owned(self.team),
            workflow: owned(self.workflow),
            environment: owned(self.environment),
            user_id: self.user_id.map(owned),
            customer_id: self.customer_id.map(owned),
            provider: owned(self.provider),
            model: owned(self.model),
            endpoint: owned(self.endpoint),
            modality: self.modality,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cached_input_tokens: self.cached_input_tokens,
            cache_write_tokens: self.cache_write_tokens,
            images: self.images,
            image_tier: self.image_tier,
            video_duration_ms: self.video_duration_ms,
            audio_duration_ms: self.audio_duration_ms,
            video_resolution: self.video_resolution.map(owned),
            job_id: self.job_id.map(owned),
            job_state: self.job_state,
            status: self.status,
            http_status: self.http_status,
            retry_after_ms: self.retry_after_ms,
            accepted: self.accepted,
            reported_cost_usd: self.reported_cost_usd,
            estimated_cost_usd: self.estimated_cost_usd,
            latency_ms: self.latency_ms,
            labels: self
                .labels
                .iter()
                .map(|(key, value)| (owned(key), owned(value)))
                .collect::<BTreeMap<String, String>>(),
            cost_usd: self.cost_usd,
            cost_source: self.cost_source,
            catalog_version: self.catalog_version.map(owned),
        }
    }
}
