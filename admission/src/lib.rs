//! The pure core of the usage topic's producers and readers: the rules an event must meet, its
//! price, and the admission step that applies both to a record read from Kafka.
//!
//! - [`validation`]: the rules shared by the HTTP API, the producer library
//!   (`quotaflow-recorder`) and the Kafka readers, with one violation kind per rule.
//! - [`pricer`]: prices an event with the catalog (`pricing`), and the `[pricing]` settings.
//! - [`Admission`] (this module): the one validation and pricing step every reader of the usage
//!   topic applies, described below.
//!
//! `ingest` re-exports this crate as `ingest::admission` (and these modules as `ingest::validation`
//! and `ingest::pricer`), the paths the archiver and the aggregator use.
//!
//! # Admission
//! The one validation and pricing step every reader of the usage topic applies to each
//! decoded record, so that the raw archive and the aggregator agree on every record: it is either
//! archived **and** counted, or dead-lettered by **both**, with the same dead-letter kind and
//! message.
//!
//! [`Admission::admit`] is pure (no IO, no clock): its result depends only on the event, the
//! record's Kafka timestamp and the configuration, so a replay classifies every record exactly as
//! the first pass did (the aggregator's exactly-once totals and the archive's resume rule rely on
//! it).
//!
//! # What it does
//! 1. **Validates** with [`crate::validation`] (the same rules as `POST /v1/events`), judged at the
//!    record's Kafka timestamp instead of "now": `occurred_at` more than
//!    [`ValidationConfig::max_future_skew`] ahead of the timestamp is `in_future`, more than
//!    [`ValidationConfig::max_past_age`] behind it is `too_old`. A producer whose clock runs fast
//!    is thus refused, and never moves a partition's watermark. The timestamp is the producer's
//!    (`CreateTime`) unless the topic uses `LogAppendTime`; see `docs/aggregator.md` for the
//!    broker settings that bound a producer's own clock. A record without a timestamp (message
//!    format v0, not written by Kafka ≥ 0.10 clients) skips the two time rules.
//! 2. **Prices** with [`Pricer`], recomputing the envelope (`cost_usd`, `cost_source`,
//!    `catalog_version`) whatever the producer wrote: a reported cost wins, else the catalog price,
//!    else unpriced (null cost; or refused under `unpriced = fail_closed`). A producer-supplied
//!    envelope is never trusted; one priced with another catalog version is re-priced with ours.
//!
//! Both readers must run with the same `[validation]` and `[pricing]` settings for the agreement
//! to hold (`docs/operations.md`).

pub mod pricer;
pub mod validation;

use chrono::{DateTime, Utc};
use schemas::UsageEvent;

use crate::pricer::{pricing_input, Pricer};
use crate::validation::{kind, validate_at, ValidationConfig, Violation};

/// Dead-letter kinds of refused records (`schemas::DeadLetter::error_kind`).
pub mod dead_letter_kind {
    /// `occurred_at` further ahead of the record's Kafka timestamp than the allowed skew: a
    /// producer clock problem rather than bad data, so it has a kind of its own.
    pub const IN_FUTURE: &str = "in_future";
    /// Any other validation or pricing rule (the shared `schemas::dead_letter::kind::VALIDATION`).
    pub const VALIDATION: &str = schemas::dead_letter::kind::VALIDATION;
}

/// Why a record is refused: every violation, in field order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// What is wrong (at least one).
    pub violations: Vec<Violation>,
}

impl Rejection {
    /// The dead-letter kind: [`dead_letter_kind::IN_FUTURE`] when `occurred_at` is ahead of the
    /// record's timestamp (whatever else is wrong), else [`dead_letter_kind::VALIDATION`].
    pub fn dead_letter_kind(&self) -> &'static str {
        if self
            .violations
            .iter()
            .any(|violation| violation.kind == kind::IN_FUTURE)
        {
            dead_letter_kind::IN_FUTURE
        } else {
            dead_letter_kind::VALIDATION
        }
    }

    /// The dead-letter message: every violation, `field (kind): reason`, joined by `; `.
    pub fn message(&self) -> String {
        self.violations
            .iter()
            .map(Violation::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}: {}", self.dead_letter_kind(), self.message())
    }
}

/// The admission rules: a price catalog and validation limits. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Prices admitted events (the catalog also gives the model limits validation checks).
    pricer: Pricer,
    /// Limits every event must respect.
    validation: ValidationConfig,
}

impl Admission {
    /// Admission with `pricer` and `validation`.
    pub fn new(pricer: Pricer, validation: ValidationConfig) -> Self {
        Self { pricer, validation }
    }

    /// The embedded sample catalog, fail-open pricing and default limits (tests, benchmarks).
    pub fn embedded_defaults() -> Self {
        let pricer = Pricer::new(
            std::sync::Arc::new(pricing::Catalog::embedded_sample()),
            crate::pricer::UnpricedPolicy::FailOpen,
        );
        Self::new(pricer, ValidationConfig::default())
    }

    /// The pricer.
    pub fn pricer(&self) -> &Pricer {
        &self.pricer
    }

    /// The validation limits.
    pub fn validation(&self) -> &ValidationConfig {
        &self.validation
    }

    /// [`admit`] with these rules.
    pub fn admit(
        &self,
        event: UsageEvent,
        record_timestamp: Option<DateTime<Utc>>,
    ) -> Result<UsageEvent, Rejection> {
        admit(event, record_timestamp, &self.pricer, &self.validation)
    }

    /// [`Self::admit`] on an event in place (no move of the event: the aggregator's hot path
    /// keeps events boxed). On a rejection the event is left as it was, unpriced.
    pub fn admit_in_place(
        &self,
        event: &mut UsageEvent,
        record_timestamp: Option<DateTime<Utc>>,
    ) -> Result<(), Rejection> {
        admit_in_place(event, record_timestamp, &self.pricer, &self.validation)
    }
}

/// Validates `event` at `record_timestamp` (its Kafka timestamp) and prices it, replacing any
/// envelope the producer wrote (see the module docs). Pure and deterministic.
pub fn admit(
    mut event: UsageEvent,
    record_timestamp: Option<DateTime<Utc>>,
    pricer: &Pricer,
    config: &ValidationConfig,
) -> Result<UsageEvent, Rejection> {
    admit_in_place(&mut event, record_timestamp, pricer, config)?;
    Ok(event)
}

/// [`admit`] on an event in place; on a rejection the event is left unpriced.
pub fn admit_in_place(
    event: &mut UsageEvent,
    record_timestamp: Option<DateTime<Utc>>,
    pricer: &Pricer,
    config: &ValidationConfig,
) -> Result<(), Rejection> {
    let usage = pricing_input(event);
    validate_at(event, &usage, pricer.catalog(), config, record_timestamp)
        .map_err(|violations| Rejection { violations })?;
    pricer
        .apply_with_usage(event, &usage)
        .map_err(|violation| Rejection {
            violations: vec![violation],
        })?;
    Ok(())
}

/// The record timestamp of a Kafka message in milliseconds (`None` when it has none).
pub fn record_timestamp(timestamp_ms: Option<i64>) -> Option<DateTime<Utc>> {
    timestamp_ms.and_then(DateTime::<Utc>::from_timestamp_millis)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use chrono::{TimeDelta, TimeZone};
    use rust_decimal::Decimal;
    use schemas::fixtures::text_event;
    use schemas::CostSource;

    use super::*;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 9, 12, 0, 0).unwrap()
    }

    #[test]
    fn a_reported_cost_wins_over_a_missing_or_forged_envelope() {
        let admission = Admission::embedded_defaults();
        let mut event = text_event("reported", at());
        event.cost_usd = None;
        event.cost_source = None;
        event.catalog_version = None;
        event.reported_cost_usd = Some(Decimal::from_str("0.42").unwrap());
        let admitted = admission.admit(event, Some(at())).unwrap();
        assert_eq!(admitted.cost_usd, Some(Decimal::from_str("0.42").unwrap()));
        assert_eq!(admitted.cost_source, Some(CostSource::Reported));

        let mut forged = text_event("forged", at());
        forged.cost_usd = Some(Decimal::from(999_999_999));
        forged.cost_source = Some(CostSource::Priced);
        forged.catalog_version = Some("someone-elses-catalog".to_owned());
        let mut expected = text_event("forged", at());
        admission.pricer().apply(&mut expected).unwrap();
        let admitted = admission.admit(forged, Some(at())).unwrap();
        assert_eq!(admitted.cost_usd, expected.cost_usd);
        assert_ne!(admitted.cost_usd, Some(Decimal::from(999_999_999)));
        assert_eq!(
            admitted.catalog_version.as_deref(),
            Some(admission.pricer().catalog().version())
        );
    }

    #[test]
    fn time_rules_are_judged_at_the_record_timestamp() {
        let admission = Admission::embedded_defaults();
        let ahead = text_event("ahead", at() + TimeDelta::minutes(50));
        let rejection = admission.admit(ahead.clone(), Some(at())).unwrap_err();
        assert_eq!(rejection.dead_letter_kind(), dead_letter_kind::IN_FUTURE);
        assert!(rejection.message().starts_with("occurred_at (in_future)"));
        // The same record written 50 minutes later is fine: nothing depends on the clock.
        assert!(admission
            .admit(ahead, Some(at() + TimeDelta::minutes(50)))
            .is_ok());
        let old = text_event("old", at() - TimeDelta::days(8));
        let rejection = admission.admit(old, Some(at())).unwrap_err();
        assert_eq!(rejection.dead_letter_kind(), dead_letter_kind::VALIDATION);
        assert!(rejection.message().starts_with("occurred_at (too_old)"));
    }

    #[test]
    fn everything_is_reported_with_one_kind() {
        let admission = Admission::embedded_defaults();
        let mut event = text_event("bad", at());
        event.team.clear();
        event.input_tokens = 50_000_000;
        let rejection = admission.admit(event, Some(at())).unwrap_err();
        assert_eq!(rejection.dead_letter_kind(), dead_letter_kind::VALIDATION);
        let fields: Vec<&str> = rejection
            .violations
            .iter()
            .map(|violation| violation.field.as_str())
            .collect();
        assert!(fields.contains(&"team"), "{fields:?}");
        assert!(fields.contains(&"input_tokens"), "{fields:?}");
    }
}
