//! [`WindowTotal`]: the aggregator's total of one (scope, window), over one input partition.
//!
//! Published on the compacted totals topic (`kafka.topics.totals`) keyed by
//! [`WindowTotal::compaction_key`]; the alerter follows it.
//!
//! # Guarantees
//! - Each record is an **absolute** total (never a delta) of the events of one input partition
//!   up to offset `version`, so redelivery, duplicates and replays after a crash are harmless.
//! - Records of one key may arrive more than once and out of order (producer retries, replays):
//!   for one key a higher `version` always covers a longer prefix of the partition, so consumers
//!   keep the **highest version per key**, never simply the last arrival. Compaction keeps the
//!   last write per key, which is the highest version as long as one aggregator owns a
//!   partition at a time.
//! - Totals are **per input partition partials**: the key includes `source_topic` and
//!   `source_partition`, and the true total of a (scope, window) is the sum over partitions of
//!   each partition's highest-version record. Every event of a job lands in one partition (ingest
//!   keys usage events by [`crate::usage_event::partition_key`]), so the job fields of a partial
//!   are consistent within it.

use crate::codec::datum::{DatumReader, DatumWriter};
use crate::codec::{AvroRecord, DecodeError, EncodeError, InvariantViolation};
use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// A partial total of one (scope, window) over one input partition, up to offset `version`.
/// Counters mirror the `window_totals` columns (`schemas/sql/migrations/0002_window_totals.sql`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowTotal {
    /// What the scope groups by: a dimension (`team`, `api_key_id` …) or `policy:<policy id>`.
    pub scope_kind: String,
    /// The scope's value: the dimension's value or the policy's rendered scope.
    pub scope_key: String,
    /// Window kind: `minute`, `hour`, `day`, `week`, `month` or `campaign:<name>`.
    pub window_kind: String,
    /// IANA time zone the calendar boundaries were computed in (`UTC`, `Asia/Shanghai` …).
    pub window_tz: String,
    /// Start of the window (inclusive).
    pub window_start: DateTime<Utc>,
    /// End of the window (exclusive), `> window_start`.
    pub window_end: DateTime<Utc>,
    /// Input topic whose partition this partial covers (part of the key).
    pub source_topic: String,
    /// Input partition this partial covers, `>= 0` (part of the key: the true total is the sum
    /// over partitions).
    pub source_partition: i32,
    /// Requests sent to a provider: every synchronous attempt and the `submitted` state of an
    /// async job.
    pub requests: u64,
    /// Attempts the provider bills for: every synchronous attempt and the final state of an
    /// async job.
    pub billable_attempts: u64,
    /// Sum of `input_tokens` (cached included).
    pub input_tokens: u64,
    /// Sum of `output_tokens`.
    pub output_tokens: u64,
    /// Sum of `cached_input_tokens`, `<= input_tokens`.
    pub cached_input_tokens: u64,
    /// Sum of `cache_write_tokens`.
    pub cache_write_tokens: u64,
    /// Images of events with tier `draft`.
    pub images_draft: u64,
    /// Images of events with tier `preview`.
    pub images_preview: u64,
    /// Images of events with tier `edit`.
    pub images_edit: u64,
    /// Images of events with tier `final`.
    pub images_final: u64,
    /// Images of events without a tier (kept apart so that no tier is inflated).
    pub images_untiered: u64,
    /// Video jobs started (`submitted`, or a synchronous video attempt).
    pub video_jobs: u64,
    /// Sum of `video_duration_ms`.
    pub video_ms: u64,
    /// Sum of `audio_duration_ms`.
    pub audio_ms: u64,
    /// `input_tokens` of `embedding` events.
    pub embedding_tokens: u64,
    /// Events without a `cost_usd`: their cost is missing from `cost_usd`.
    pub unpriced_events: u64,
    /// Attempts after the first of an action (`attempt > 1`).
    pub retries: u64,
    /// Attempts that fell back to another model.
    pub fallback_attempts: u64,
    /// Events whose output was accepted.
    pub accepted_outputs: u64,
    /// Failed attempts answered with an HTTP 4xx.
    pub errors_4xx: u64,
    /// Failed attempts answered with an HTTP 5xx.
    pub errors_5xx: u64,
    /// Failed attempts without an HTTP status or with one outside 400–599.
    pub errors_other: u64,
    /// Events that arrived after their window of this scope had closed (not in the other totals).
    pub late_events: u64,
    /// Sum of `cost_usd` (`decimal(38, 12)`, >= 0).
    #[serde(with = "crate::money::json")]
    pub cost_usd: Decimal,
    /// `cost_usd` of the fallback attempts (`decimal(38, 12)`, `0 <= fallback_cost_usd <=
    /// cost_usd`).
    #[serde(with = "crate::money::json")]
    pub fallback_cost_usd: Decimal,
    /// Async jobs submitted minus finished among the events counted here. Signed: a job
    /// submitted in an earlier window and finished in this one counts −1.
    pub jobs_in_flight: i64,
    /// Earliest submission before `window_end` among the scope's pending jobs; `None` = none.
    #[serde(default)]
    pub oldest_pending_job_started_at: Option<DateTime<Utc>>,
    /// Job submissions not tracked (tracking cap reached); 0 = `oldest_pending_job_started_at`
    /// is exact, otherwise it may be later than the truth.
    pub pending_jobs_untracked: u64,
    /// Input offset of the last event included: consumers keep the highest version per key.
    pub version: u64,
    /// When the aggregator wrote this record.
    pub written_at: DateTime<Utc>,
}

impl WindowTotal {
    /// The compaction key of this total: see [`WindowTotal::compaction_key_for`].
    pub fn compaction_key(&self) -> String {
        Self::compaction_key_for(
            &self.scope_kind,
            &self.scope_key,
            &self.window_kind,
            &self.window_tz,
            &self.window_start,
            &self.source_topic,
            self.source_partition,
        )
    }

    /// The compaction key of a (scope, window, input partition): `scope_kind`, `scope_key`,
    /// `window_kind`, `window_tz`, `window_start` (RFC 3339 in UTC, microseconds), `source_topic`
    /// and `source_partition`, `/`-separated, with `%` and `/` percent-escaped (as in
    /// [`crate::ControlDecision::compaction_key`]) so distinct parts never collide. `window_end`
    /// is not part of it: it follows from the window kind, zone and start.
    pub fn compaction_key_for(
        scope_kind: &str,
        scope_key: &str,
        window_kind: &str,
        window_tz: &str,
        window_start: &DateTime<Utc>,
        source_topic: &str,
        source_partition: i32,
    ) -> String {
        fn escape(text: &str, out: &mut String) {
            for character in text.chars() {
                match character {
                    '%' => out.push_str("%25"),
                    '/' => out.push_str("%2F"),
                    other => out.push(other),
                }
            }
        }
        let window_start = window_start.to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut key = String::new();
        for (position, part) in [
            scope_kind,
            scope_key,
            window_kind,
            window_tz,
            &window_start,
            source_topic,
        ]
        .into_iter()
        .enumerate()
        {
            if position > 0 {
                key.push('/');
            }
            escape(part, &mut key);
        }
        key.push('/');
        key.push_str(&source_partition.to_string());
        key
    }

    /// The parts of a key made by [`WindowTotal::compaction_key_for`]: what a reader needs to
    /// apply a tombstone (a record with this key and no value), which carries nothing else.
    /// `None` if `key` is not such a key.
    pub fn parse_compaction_key(key: &str) -> Option<TotalsKey> {
        fn unescape(part: &str) -> Option<String> {
            let mut out = String::with_capacity(part.len());
            let mut rest = part;
            while let Some(at) = rest.find('%') {
                out.push_str(&rest[..at]);
                let code = rest.get(at + 1..at + 3)?;
                out.push(match code {
                    "25" => '%',
                    "2F" => '/',
                    _ => return None,
                });
                rest = &rest[at + 3..];
            }
            out.push_str(rest);
            Some(out)
        }
        let parts: Vec<&str> = key.split('/').collect();
        let [scope_kind, scope_key, window_kind, window_tz, window_start, source_topic, source_partition] =
            parts.as_slice()
        else {
            return None;
        };
        Some(TotalsKey {
            scope_kind: unescape(scope_kind)?,
            scope_key: unescape(scope_key)?,
            window_kind: unescape(window_kind)?,
            window_tz: unescape(window_tz)?,
            window_start: DateTime::parse_from_rfc3339(&unescape(window_start)?)
                .ok()?
                .with_timezone(&Utc),
            source_topic: unescape(source_topic)?,
            source_partition: source_partition.parse().ok()?,
        })
    }
}

/// A totals-topic key's parts ([`WindowTotal::parse_compaction_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotalsKey {
    /// `scope_kind`.
    pub scope_kind: String,
    /// `scope_key`.
    pub scope_key: String,
    /// `window_kind`.
    pub window_kind: String,
    /// `window_tz`.
    pub window_tz: String,
    /// `window_start`.
    pub window_start: DateTime<Utc>,
    /// `source_topic`.
    pub source_topic: String,
    /// `source_partition`.
    pub source_partition: i32,
}

impl AvroRecord for WindowTotal {
    const RECORD_NAME: &'static str = "dev.quotaflow.WindowTotal";
    const FINGERPRINT: [u8; 8] = [0xA7, 0xC5, 0x92, 0x52, 0x39, 0xF9, 0x5E, 0x13];

    fn write_datum<W: DatumWriter>(&self, writer: &mut W) -> Result<(), EncodeError> {
        writer.write_string("scope_kind", &self.scope_kind);
        writer.write_string("scope_key", &self.scope_key);
        writer.write_string("window_kind", &self.window_kind);
        writer.write_string("window_tz", &self.window_tz);
        writer.write_timestamp("window_start", &self.window_start)?;
        writer.write_timestamp("window_end", &self.window_end)?;
        writer.write_string("source_topic", &self.source_topic);
        writer.write_int("source_partition", self.source_partition);
        writer.write_count_long("requests", self.requests)?;
        writer.write_count_long("billable_attempts", self.billable_attempts)?;
        writer.write_count_long("input_tokens", self.input_tokens)?;
        writer.write_count_long("output_tokens", self.output_tokens)?;
        writer.write_count_long("cached_input_tokens", self.cached_input_tokens)?;
        writer.write_count_long("cache_write_tokens", self.cache_write_tokens)?;
        writer.write_count_long("images_draft", self.images_draft)?;
        writer.write_count_long("images_preview", self.images_preview)?;
        writer.write_count_long("images_edit", self.images_edit)?;
        writer.write_count_long("images_final", self.images_final)?;
        writer.write_count_long("images_untiered", self.images_untiered)?;
        writer.write_count_long("video_jobs", self.video_jobs)?;
        writer.write_count_long("video_ms", self.video_ms)?;
        writer.write_count_long("audio_ms", self.audio_ms)?;
        writer.write_count_long("embedding_tokens", self.embedding_tokens)?;
        writer.write_count_long("unpriced_events", self.unpriced_events)?;
        writer.write_count_long("retries", self.retries)?;
        writer.write_count_long("fallback_attempts", self.fallback_attempts)?;
        writer.write_count_long("accepted_outputs", self.accepted_outputs)?;
        writer.write_count_long("errors_4xx", self.errors_4xx)?;
        writer.write_count_long("errors_5xx", self.errors_5xx)?;
        writer.write_count_long("errors_other", self.errors_other)?;
        writer.write_count_long("late_events", self.late_events)?;
        writer.write_amount("cost_usd", &self.cost_usd)?;
        writer.write_amount("fallback_cost_usd", &self.fallback_cost_usd)?;
        writer.write_long("jobs_in_flight", self.jobs_in_flight);
        writer.write_optional_timestamp(
            "oldest_pending_job_started_at",
            self.oldest_pending_job_started_at.as_ref(),
        )?;
        writer.write_count_long("pending_jobs_untracked", self.pending_jobs_untracked)?;
        writer.write_count_long("version", self.version)?;
        writer.write_timestamp("written_at", &self.written_at)?;
        Ok(())
    }

    fn read_datum<R: DatumReader>(reader: &mut R) -> Result<Self, DecodeError> {
        // Struct fields are evaluated in the order written: this is the schema order.
        Ok(WindowTotal {
            scope_kind: reader.read_string("scope_kind")?,
            scope_key: reader.read_string("scope_key")?,
            window_kind: reader.read_string("window_kind")?,
            window_tz: reader.read_string("window_tz")?,
            window_start: reader.read_timestamp("window_start")?,
            window_end: reader.read_timestamp("window_end")?,
            source_topic: reader.read_string("source_topic")?,
            source_partition: reader.read_int("source_partition")?,
            requests: reader.read_count_long("requests")?,
            billable_attempts: reader.read_count_long("billable_attempts")?,
            input_tokens: reader.read_count_long("input_tokens")?,
            output_tokens: reader.read_count_long("output_tokens")?,
            cached_input_tokens: reader.read_count_long("cached_input_tokens")?,
            cache_write_tokens: reader.read_count_long("cache_write_tokens")?,
            images_draft: reader.read_count_long("images_draft")?,
            images_preview: reader.read_count_long("images_preview")?,
            images_edit: reader.read_count_long("images_edit")?,
            images_final: reader.read_count_long("images_final")?,
            images_untiered: reader.read_count_long("images_untiered")?,
            video_jobs: reader.read_count_long("video_jobs")?,
            video_ms: reader.read_count_long("video_ms")?,
            audio_ms: reader.read_count_long("audio_ms")?,
            embedding_tokens: reader.read_count_long("embedding_tokens")?,
            unpriced_events: reader.read_count_long("unpriced_events")?,
            retries: reader.read_count_long("retries")?,
            fallback_attempts: reader.read_count_long("fallback_attempts")?,
            accepted_outputs: reader.read_count_long("accepted_outputs")?,
            errors_4xx: reader.read_count_long("errors_4xx")?,
            errors_5xx: reader.read_count_long("errors_5xx")?,
            errors_other: reader.read_count_long("errors_other")?,
            late_events: reader.read_count_long("late_events")?,
            cost_usd: reader.read_amount("cost_usd")?,
            fallback_cost_usd: reader.read_amount("fallback_cost_usd")?,
            jobs_in_flight: reader.read_long("jobs_in_flight")?,
            oldest_pending_job_started_at: reader
                .read_optional_timestamp("oldest_pending_job_started_at")?,
            pending_jobs_untracked: reader.read_count_long("pending_jobs_untracked")?,
            version: reader.read_count_long("version")?,
            written_at: reader.read_timestamp("written_at")?,
        })
    }

    fn check_invariants(&self) -> Result<(), InvariantViolation> {
        // Strict: a total of an empty window would be a key no event can ever land in.
        if self.window_end <= self.window_start {
            return Err(InvariantViolation {
                field: "window_end",
                reason: format!(
                    "window_end {} is not after window_start {}",
                    self.window_end, self.window_start
                ),
            });
        }
        if self.source_partition < 0 {
            return Err(InvariantViolation {
                field: "source_partition",
                reason: format!("{} is not a Kafka partition", self.source_partition),
            });
        }
        // No rules across measures (cached <= input, fallback cost <= cost): the aggregator
        // counts whatever reached the usage topic, and a total must always be publishable.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn key(parts: [&str; 5], partition: i32) -> String {
        let window_start = Utc.with_ymd_and_hms(2025, 3, 14, 0, 0, 0).unwrap();
        WindowTotal::compaction_key_for(
            parts[0],
            parts[1],
            parts[2],
            parts[3],
            &window_start,
            parts[4],
            partition,
        )
    }

    #[test]
    fn compaction_keys_parse_back_into_their_parts() {
        let window_start = Utc.with_ymd_and_hms(2025, 3, 14, 0, 0, 0).unwrap();
        let key = WindowTotal::compaction_key_for(
            "policy:a/b%c",
            "team=x/y",
            "campaign:q%2F",
            "Europe/Paris",
            &window_start,
            "usage/topic",
            -3,
        );
        let parsed = WindowTotal::parse_compaction_key(&key).unwrap();
        assert_eq!(
            parsed,
            TotalsKey {
                scope_kind: "policy:a/b%c".into(),
                scope_key: "team=x/y".into(),
                window_kind: "campaign:q%2F".into(),
                window_tz: "Europe/Paris".into(),
                window_start,
                source_topic: "usage/topic".into(),
                source_partition: -3,
            }
        );
        assert_eq!(WindowTotal::parse_compaction_key("a/b/c"), None);
        assert_eq!(WindowTotal::parse_compaction_key("a/b/c/d/e/f/x"), None);
    }

    #[test]
    fn compaction_key_renders_every_part_in_order() {
        assert_eq!(
            key(["team", "search", "day", "Europe/Paris", "usage"], 3),
            "team/search/day/Europe%2FParis/2025-03-14T00:00:00.000000Z/usage/3"
        );
        assert_eq!(
            key(["policy:daily", "team=a", "campaign:spring", "UTC", "u"], 0),
            "policy:daily/team=a/campaign:spring/UTC/2025-03-14T00:00:00.000000Z/u/0"
        );
    }

    #[test]
    fn compaction_keys_do_not_collide_on_separators() {
        let keys = [
            key(["team", "a/b", "day", "UTC", "usage"], 1),
            key(["team/a", "b", "day", "UTC", "usage"], 1),
            key(["team", "a", "b/day", "UTC", "usage"], 1),
            key(["team", "a%2Fb", "day", "UTC", "usage"], 1),
            key(["team", "a", "day", "UTC", "usage/1"], 1),
            key(["team", "a", "day", "UTC", "usage"], 1),
            key(["team", "a", "day", "UTC", "usage"], 11),
        ];
        for (position, key) in keys.iter().enumerate() {
            for other in &keys[position + 1..] {
                assert_ne!(key, other);
            }
        }
        assert_eq!(
            keys[3],
            "team/a%252Fb/day/UTC/2025-03-14T00:00:00.000000Z/usage/1"
        );
    }
}
