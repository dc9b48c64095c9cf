//! One `usage_events_raw` row: a [`UsageEvent`] with the Kafka coordinates it was read from.
//!
//! Column types follow `schemas/sql/migrations/0001_usage_events_raw.sql` and the clickhouse
//! crate's RowBinary mapping: `DateTime('UTC')` ↔ `u32` seconds, `Decimal(38, 12)` ↔ `i128`
//! scaled by 10^12, `Nullable(T)` ↔ `Option<T>`, `Array(String)` ↔ `Vec<String>`.

use chrono::{DateTime, Datelike, Utc};
use schemas::{CostSource, UsageEvent};
use serde::{Deserialize, Serialize};

/// Where a record was read from: the coordinates stored with every row, which is what makes
/// the archive resumable from ClickHouse alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaCoordinates<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

/// The columns of `usage_events_raw`, in table order (the insert names them explicitly).
/// Also `Deserialize`, so tests read rows back and compare them field by field.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct RawRow {
    pub event_id: String,
    pub occurred_at: u32,
    pub occurred_at_us: u64,
    pub producer: String,
    pub request_id: String,
    pub action_id: String,
    pub attempt: i32,
    pub fallback_from_model: Option<String>,
    pub api_key_id: String,
    pub team: String,
    pub workflow: String,
    pub environment: String,
    pub user_id: Option<String>,
    pub customer_id: Option<String>,
    pub provider: String,
    pub model: String,
    pub endpoint: String,
    pub modality: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    pub cache_write_tokens: i64,
    pub images: i32,
    pub image_tier: Option<String>,
    pub video_duration_ms: i64,
    pub audio_duration_ms: i64,
    pub video_resolution: Option<String>,
    pub job_id: Option<String>,
    pub job_state: Option<String>,
    pub status: String,
    pub http_status: Option<i32>,
    pub retry_after_ms: Option<i64>,
    pub accepted: Option<u8>,
    pub reported_cost_usd: Option<i128>,
    pub estimated_cost_usd: Option<i128>,
    pub latency_ms: Option<i64>,
    pub labels_keys: Vec<String>,
    pub labels_values: Vec<String>,
    pub cost_usd: Option<i128>,
    pub priced_cost_usd: Option<i128>,
    pub cost_source: String,
    pub catalog_version: String,
    pub kafka_topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub ingested_at: u32,
    pub version: u64,
}

/// An event the codec accepted but the table cannot hold (a time before 1970 or after 2106, a
/// count above `i64::MAX`); dead-lettered with kind [`UNREPRESENTABLE`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field} cannot be stored in usage_events_raw: {reason}")]
pub struct Unrepresentable {
    /// The offending field.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

/// Dead-letter kind of [`Unrepresentable`] events.
pub const UNREPRESENTABLE: &str = "unrepresentable";

impl RawRow {
    /// Builds the row; `archived_at` becomes `ingested_at` and `version` (epoch micros).
    pub fn from_event(
        event: UsageEvent,
        source: KafkaCoordinates<'_>,
        archived_at: DateTime<Utc>,
    ) -> Result<RawRow, Unrepresentable> {
        let occurred_at = seconds("occurred_at", event.occurred_at)?;
        let occurred_at_us =
            u64::try_from(event.occurred_at.timestamp_micros()).map_err(|_| Unrepresentable {
                field: "occurred_at",
                reason: "before 1970".to_owned(),
            })?;
        let ingested_at = seconds("ingested_at", archived_at)?;
        let version = u64::try_from(archived_at.timestamp_micros()).unwrap_or_default();
        let cost_usd = amount("cost_usd", event.cost_usd.as_ref())?;
        // The event carries one effective cost; it is the catalog's price exactly when the
        // envelope says `priced` (a reported cost is not re-priced here).
        let priced_cost_usd = match event.cost_source {
            Some(CostSource::Priced) => cost_usd,
            _ => None,
        };
        let (labels_keys, labels_values) = event.labels.into_iter().unzip();
        Ok(RawRow {
            event_id: event.event_id,
            occurred_at,
            occurred_at_us,
            producer: event.producer,
            request_id: event.request_id,
            action_id: event.action_id,
            attempt: count32("attempt", event.attempt)?,
            fallback_from_model: event.fallback_from_model,
            api_key_id: event.api_key_id,
            team: event.team,
            workflow: event.workflow,
            environment: event.environment,
            user_id: event.user_id,
            customer_id: event.customer_id,
            provider: event.provider,
            model: event.model,
            endpoint: event.endpoint,
            modality: event.modality.as_str().to_owned(),
            input_tokens: count64("input_tokens", event.input_tokens)?,
            output_tokens: count64("output_tokens", event.output_tokens)?,
            cached_input_tokens: count64("cached_input_tokens", event.cached_input_tokens)?,
            cache_write_tokens: count64("cache_write_tokens", event.cache_write_tokens)?,
            images: count32("images", event.images)?,
            image_tier: event.image_tier.map(|tier| tier.as_str().to_owned()),
            video_duration_ms: count64("video_duration_ms", event.video_duration_ms)?,
            audio_duration_ms: count64("audio_duration_ms", event.audio_duration_ms)?,
            video_resolution: event.video_resolution,
            job_id: event.job_id,
            job_state: event.job_state.map(|state| state.as_str().to_owned()),
            status: event.status.as_str().to_owned(),
            http_status: event.http_status.map(i32::from),
            retry_after_ms: event
                .retry_after_ms
                .map(|value| count64("retry_after_ms", value))
                .transpose()?,
            accepted: event.accepted.map(u8::from),
            reported_cost_usd: amount("reported_cost_usd", event.reported_cost_usd.as_ref())?,
            estimated_cost_usd: amount("estimated_cost_usd", event.estimated_cost_usd.as_ref())?,
            latency_ms: event
                .latency_ms
                .map(|value| count64("latency_ms", value))
                .transpose()?,
            labels_keys,
            labels_values,
            cost_usd,
            priced_cost_usd,
            cost_source: event
                .cost_source
                .map(|source| source.as_str().to_owned())
                .unwrap_or_default(),
            catalog_version: event.catalog_version.unwrap_or_default(),
            kafka_topic: source.topic.to_owned(),
            kafka_partition: source.partition,
            kafka_offset: source.offset,
            ingested_at,
            version,
        })
    }

    /// The event back from its row: the inverse of [`RawRow::from_event`] (for replays of the
    /// history, `quotactl replay`). Fails with the column's name on a value no event can carry
    /// (an unknown enum symbol, a negative count, a decimal beyond the contract's range).
    pub fn into_event(self) -> Result<UsageEvent, String> {
        fn unsigned<T: TryFrom<i64>>(field: &str, value: i64) -> Result<T, String> {
            T::try_from(value).map_err(|_| format!("{field}: {value} is out of range"))
        }
        fn symbol<T: std::str::FromStr>(field: &str, text: &str) -> Result<T, String> {
            text.parse()
                .map_err(|_| format!("{field}: unknown value {text:?}"))
        }
        fn money(
            field: &str,
            value: Option<i128>,
        ) -> Result<Option<rust_decimal::Decimal>, String> {
            value
                .map(|unscaled| {
                    schemas::money::from_unscaled(unscaled)
                        .map_err(|error| format!("{field}: {error}"))
                })
                .transpose()
        }
        let occurred_at = DateTime::<Utc>::from_timestamp_micros(
            i64::try_from(self.occurred_at_us).map_err(|_| "occurred_at_us: out of range")?,
        )
        .ok_or("occurred_at_us: out of range")?;
        Ok(UsageEvent {
            event_id: self.event_id,
            occurred_at,
            producer: self.producer,
            request_id: self.request_id,
            action_id: self.action_id,
            attempt: unsigned("attempt", i64::from(self.attempt))?,
            fallback_from_model: self.fallback_from_model,
            api_key_id: self.api_key_id,
            team: self.team,
            workflow: self.workflow,
            environment: self.environment,
            user_id: self.user_id,
            customer_id: self.customer_id,
            provider: self.provider,
            model: self.model,
            endpoint: self.endpoint,
            modality: symbol("modality", &self.modality)?,
            input_tokens: unsigned("input_tokens", self.input_tokens)?,
            output_tokens: unsigned("output_tokens", self.output_tokens)?,
            cached_input_tokens: unsigned("cached_input_tokens", self.cached_input_tokens)?,
            cache_write_tokens: unsigned("cache_write_tokens", self.cache_write_tokens)?,
            images: unsigned("images", i64::from(self.images))?,
            image_tier: self
                .image_tier
                .map(|tier| symbol("image_tier", &tier))
                .transpose()?,
            video_duration_ms: unsigned("video_duration_ms", self.video_duration_ms)?,
            audio_duration_ms: unsigned("audio_duration_ms", self.audio_duration_ms)?,
            video_resolution: self.video_resolution,
            job_id: self.job_id,
            job_state: self
                .job_state
                .map(|state| symbol("job_state", &state))
                .transpose()?,
            status: symbol("status", &self.status)?,
            http_status: self
                .http_status
                .map(|status| unsigned("http_status", i64::from(status)))
                .transpose()?,
            retry_after_ms: self
                .retry_after_ms
                .map(|value| unsigned("retry_after_ms", value))
                .transpose()?,
            accepted: self.accepted.map(|accepted| accepted != 0),
            reported_cost_usd: money("reported_cost_usd", self.reported_cost_usd)?,
            estimated_cost_usd: money("estimated_cost_usd", self.estimated_cost_usd)?,
            latency_ms: self
                .latency_ms
                .map(|value| unsigned("latency_ms", value))
                .transpose()?,
            labels: self
                .labels_keys
                .into_iter()
                .zip(self.labels_values)
                .collect(),
            cost_usd: money("cost_usd", self.cost_usd)?,
            cost_source: if self.cost_source.is_empty() {
                None
            } else {
                Some(symbol("cost_source", &self.cost_source)?)
            },
            catalog_version: Some(self.catalog_version).filter(|version| !version.is_empty()),
        })
    }

    /// The table partition (`toYYYYMM(occurred_at)`) this row lands in: one INSERT must stay
    /// within one of them to be atomic.
    pub fn month(&self) -> u32 {
        month_of_seconds(self.occurred_at)
    }

    /// Approximate in-memory size, for the batch byte bound.
    pub fn approximate_bytes(&self) -> usize {
        let strings = [
            &self.event_id,
            &self.producer,
            &self.request_id,
            &self.action_id,
            &self.api_key_id,
            &self.team,
            &self.workflow,
            &self.environment,
            &self.provider,
            &self.model,
            &self.endpoint,
            &self.catalog_version,
            &self.kafka_topic,
        ];
        let optional = [
            &self.fallback_from_model,
            &self.user_id,
            &self.customer_id,
            &self.video_resolution,
            &self.job_id,
        ];
        std::mem::size_of::<RawRow>()
            + strings.iter().map(|text| text.len()).sum::<usize>()
            + optional
                .iter()
                .map(|text| text.as_ref().map_or(0, String::len))
                .sum::<usize>()
            + self
                .labels_keys
                .iter()
                .chain(&self.labels_values)
                .map(|text| text.len() + std::mem::size_of::<String>())
                .sum::<usize>()
    }
}

/// `toYYYYMM` of a `DateTime('UTC')` value.
pub fn month_of_seconds(seconds: u32) -> u32 {
    DateTime::<Utc>::from_timestamp(i64::from(seconds), 0)
        .map(|time| time.year().unsigned_abs() * 100 + time.month())
        .unwrap_or_default()
}

fn seconds(field: &'static str, time: DateTime<Utc>) -> Result<u32, Unrepresentable> {
    u32::try_from(time.timestamp()).map_err(|_| Unrepresentable {
        field,
        reason: format!("{time} is outside DateTime's 1970..2106 range"),
    })
}

fn count64(field: &'static str, value: u64) -> Result<i64, Unrepresentable> {
    i64::try_from(value).map_err(|_| Unrepresentable {
        field,
        reason: format!("{value} exceeds Int64"),
    })
}

fn count32(field: &'static str, value: u32) -> Result<i32, Unrepresentable> {
    i32::try_from(value).map_err(|_| Unrepresentable {
        field,
        reason: format!("{value} exceeds Int32"),
    })
}

fn amount(
    field: &'static str,
    value: Option<&rust_decimal::Decimal>,
) -> Result<Option<i128>, Unrepresentable> {
    value
        .map(|value| {
            schemas::money::to_unscaled(value).map_err(|error| Unrepresentable {
                field,
                reason: error.to_string(),
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_is_the_utc_calendar_month() {
        // 2024-01-31T23:59:59Z and 2024-02-01T00:00:00Z.
        assert_eq!(month_of_seconds(1_706_745_599), 202_401);
        assert_eq!(month_of_seconds(1_706_745_600), 202_402);
    }

    #[test]
    fn a_row_gives_its_event_back() {
        let now = DateTime::<Utc>::from_timestamp_micros(1_764_000_000_123_456).unwrap();
        let mut event = schemas::fixtures::text_event("evt-round-trip", now);
        event.fallback_from_model = Some("gpt-4o".to_owned());
        event.image_tier = Some(schemas::ImageTier::Final);
        event.job_id = Some("job-1".to_owned());
        event.job_state = Some(schemas::JobState::Submitted);
        event.http_status = Some(429);
        event.accepted = Some(false);
        event.cost_usd = Some(rust_decimal::Decimal::new(123_456_789, 12));
        event.cost_source = Some(CostSource::Priced);
        event.catalog_version = Some("v1".to_owned());
        event
            .labels
            .insert("feature".to_owned(), "search".to_owned());
        let source = KafkaCoordinates {
            topic: "t",
            partition: 1,
            offset: 7,
        };
        let row = RawRow::from_event(event.clone(), source, now).unwrap();
        assert_eq!(row.into_event().unwrap(), event);
    }

    #[test]
    fn a_row_no_event_can_carry_names_its_column() {
        let now = DateTime::<Utc>::from_timestamp(1_764_000_000, 0).unwrap();
        let source = KafkaCoordinates {
            topic: "t",
            partition: 0,
            offset: 0,
        };
        let mut row =
            RawRow::from_event(schemas::fixtures::text_event("evt", now), source, now).unwrap();
        row.modality = "hologram".to_owned();
        assert!(row
            .clone()
            .into_event()
            .unwrap_err()
            .starts_with("modality"));
        row.modality = "text".to_owned();
        row.input_tokens = -1;
        assert!(row.into_event().unwrap_err().starts_with("input_tokens"));
    }
}
