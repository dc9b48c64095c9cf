//! The benchmark's event mix: the demo's workload (`quotaflow_workload`), priced by the
//! admission pricer as ingest prices it, with event time advancing 1 ms per event and a seeded share of duplicate records.
//!
//! # The mix
//! - **Fleet and traffic:** `quotaflow_workload::Workload` with seed [`SEED`]: 4 teams, 7 API keys,
//!   39 users, 7 customers (about 400 single-dimension scopes); text chat completions with
//!   retries and fallbacks, image generations (four tiers), async video jobs (submitted, running,
//!   succeeded/failed), audio and embeddings. Fail-open pricing leaves an unknown model's cost
//!   null (counted in `unpriced_events`).
//! - **Event time:** starts at 2026-03-09T08:00Z ([`event_time_start`]) and advances 1 ms per
//!   event with up to 2 s of jitter backwards: 10 M events span 2 h 47 min, so minute and hour
//!   windows open and close, and no event is late.
//! - **Duplicates:** with probability `duplicate_share` a record is an exact copy (same
//!   `event_id`, same key, so the same partition) of one of the last 1,024 events, as an
//!   at-least-once producer retry would make. Exactly-once consumers count it once, at-least-once
//!   consumers twice.
//!
//! The same mix is written twice: Avro single-object encoded for the aggregator (its contract),
//! and as a flat JSON object per record ([`KafkaEngineRow`]) for ClickHouse 18.16's Kafka engine,
//! which has no Avro input format.

use std::collections::VecDeque;

use anyhow::Result;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use quotaflow_workload::Workload;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use schemas::UsageEvent;
use serde::Serialize;

/// Seed of the workload generator and of the event-time jitter.
pub const SEED: u64 = 42;
/// Event time between consecutive events: 1,000 events/s of gateway traffic.
pub const EVENT_SPACING_MS: i64 = 1;
/// An event's time is up to this much before its slot: events arrive slightly out of order, far
/// less than the aggregator's allowed lateness, so none is late.
pub const MAX_JITTER_MS: i64 = 2_000;
/// Duplicates copy one of this many most recent events (about 1 s of event time, well inside the
/// aggregator's 15-minute duplicate horizon).
const DUPLICATE_WINDOW: usize = 1_024;

/// When the first event happened.
pub fn event_time_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 9, 8, 0, 0).unwrap()
}

/// Totals of windows starting at or after this instant are not benchmark data: freshness markers
/// carry the current time, months after the mix, so they never share a window with it.
pub fn marker_cutoff() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap()
}

/// One record of the mix.
#[derive(Debug, Clone)]
pub struct MixedEvent {
    /// The priced event.
    pub event: UsageEvent,
    /// Whether this record repeats an earlier record's `event_id`.
    pub duplicate: bool,
}

/// The seeded generator of the mix; the same settings give the same records.
pub struct EventMix {
    /// The demo's traffic model.
    workload: Workload,
    /// Jitter of event time.
    jitter: StdRng,
    /// Draws which records are duplicates and of what; its own stream, so the share does not
    /// change the original events.
    duplicates: StdRng,
    /// Probability that a record is a duplicate.
    duplicate_share: f64,
    /// The last events, duplicates are drawn from them.
    recent: VecDeque<UsageEvent>,
    /// Original events generated so far (the next one's time slot).
    originals: u64,
    /// Prices events as ingest does.
    pricer: quotaflow_admission::pricer::Pricer,
}

impl EventMix {
    /// The mix with `duplicate_share` (0 to 1) of duplicate records.
    pub fn new(duplicate_share: f64) -> Result<EventMix> {
        Ok(EventMix {
            workload: Workload::new(SEED, "bench0", "bench"),
            jitter: StdRng::seed_from_u64(SEED),
            duplicates: StdRng::seed_from_u64(SEED + 1),
            duplicate_share,
            recent: VecDeque::with_capacity(DUPLICATE_WINDOW),
            originals: 0,
            pricer: quotaflow_admission::pricer::Pricer::from_config(&Default::default())?,
        })
    }

    /// The next record.
    pub fn next_record(&mut self) -> MixedEvent {
        if !self.recent.is_empty() && self.duplicates.random_bool(self.duplicate_share) {
            let index = self.duplicates.random_range(0..self.recent.len());
            return MixedEvent {
                event: self.recent[index].clone(),
                duplicate: true,
            };
        }
        let slot_ms = self.originals as i64 * EVENT_SPACING_MS;
        let jitter_ms = self.jitter.random_range(0..=MAX_JITTER_MS);
        let occurred_at = event_time_start() + TimeDelta::milliseconds(slot_ms - jitter_ms);
        let mut event = self.workload.next_event(occurred_at);
        // Fail-open pricing (the default) never rejects: an unpriced event keeps a null cost.
        let _ = self.pricer.apply(&mut event);
        self.originals += 1;
        if self.duplicate_share > 0.0 {
            if self.recent.len() == DUPLICATE_WINDOW {
                self.recent.pop_front();
            }
            self.recent.push_back(event.clone());
        }
        MixedEvent {
            event,
            duplicate: false,
        }
    }
}

/// A freshness marker: `template` with a new id, its own API key (so its total is a scope of its
/// own) and the current time; no async job, so it is keyed by its id.
pub fn marker(template: &UsageEvent, name: &str) -> UsageEvent {
    let mut event = template.clone();
    event.event_id = name.to_owned();
    event.api_key_id = name.to_owned();
    event.occurred_at = Utc::now();
    event.job_id = None;
    event.job_state = None;
    event
}

/// An event as ClickHouse's Kafka engine reads it (`JSONEachRow`, one object per record): the
/// fields the materialized view uses plus a few of the event's others, flat; a missing optional
/// string is `""`, a missing cost `null`, time in Unix seconds (every window is a minute or
/// longer). Columns: `bench/sql/kafka_engine.sql`.
#[derive(Debug, Serialize)]
pub struct KafkaEngineRow<'a> {
    event_id: &'a str,
    occurred_at: i64,
    request_id: &'a str,
    api_key_id: &'a str,
    team: &'a str,
    user_id: &'a str,
    customer_id: &'a str,
    workflow: &'a str,
    environment: &'a str,
    provider: &'a str,
    model: &'a str,
    endpoint: &'a str,
    modality: &'a str,
    job_state: &'a str,
    attempt: u32,
    status: &'a str,
    http_status: u16,
    input_tokens: u64,
    output_tokens: u64,
    cached_input_tokens: u64,
    cache_write_tokens: u64,
    images: u32,
    video_duration_ms: u64,
    audio_duration_ms: u64,
    /// The event's `cost_usd`: a JSON number with the decimal's exact digits (never through
    /// `f64`), `null` when unpriced. Not named `cost_usd`: in ClickHouse 18.16 the view's output
    /// alias `cost_usd` would shadow the column for the other measures that read it.
    #[serde(with = "rust_decimal::serde::arbitrary_precision_option")]
    cost: Option<Decimal>,
}

impl<'a> KafkaEngineRow<'a> {
    /// The row of `event`.
    pub fn of(event: &'a UsageEvent) -> Self {
        KafkaEngineRow {
            event_id: &event.event_id,
            occurred_at: event.occurred_at.timestamp(),
            request_id: &event.request_id,
            api_key_id: &event.api_key_id,
            team: &event.team,
            user_id: event.user_id.as_deref().unwrap_or_default(),
            customer_id: event.customer_id.as_deref().unwrap_or_default(),
            workflow: &event.workflow,
            environment: &event.environment,
            provider: &event.provider,
            model: &event.model,
            endpoint: &event.endpoint,
            modality: event.modality.as_str(),
            job_state: event.job_state.map_or("", |state| state.as_str()),
            attempt: event.attempt,
            status: event.status.as_str(),
            http_status: event.http_status.unwrap_or_default(),
            input_tokens: event.input_tokens,
            output_tokens: event.output_tokens,
            cached_input_tokens: event.cached_input_tokens,
            cache_write_tokens: event.cache_write_tokens,
            images: event.images,
            video_duration_ms: event.video_duration_ms,
            audio_duration_ms: event.audio_duration_ms,
            cost: event.cost_usd,
        }
    }

    /// The JSON text, appended to `buffer`.
    pub fn write_into(&self, buffer: &mut Vec<u8>) -> Result<()> {
        serde_json::to_writer(buffer, self)?;
        Ok(())
    }
}
