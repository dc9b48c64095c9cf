//! [`Measures`]: the totals of one (scope, window), column for column the measures of
//! `window_totals` (`schemas/sql/migrations/0002_window_totals.sql`), and one event's contribution
//! to them, [`Measures::of_event`].
//!
//! # What is exact
//! - Every counter is a `u64` sum and every amount a [`Decimal`] sum; [`Measures::add`] uses
//!   checked arithmetic and fails with [`MeasureError`] instead of wrapping, saturating or
//!   rounding. Money stays at scale ≤ 12 (`Decimal(38, 12)`): a sum that would need a larger
//!   scale, or that `rust_decimal` would round to fit 96 bits, is an error.
//! - Sums are order-independent and `add` is associative (property tests below), so totals do not
//!   depend on the order events arrive in, within or across partitions.
//! - The per-event rules are those of [`policy::Unit::measure`]; for every unit,
//!   `Measures::of_event(e).unit_amount(u) == u.measure(e)` and totals agree with the policy's sum
//!   of `measure` (property tests). A policy and the totals therefore never disagree on a count.
//!
//! # What is not here
//! - `late_events` is 0 in a contribution: lateness depends on the watermark, so
//!   [`crate::state::TotalsState`] counts it.
//! - `oldest_pending_job_started_at_us` needs per-job tracking across windows: it is kept by the
//!   bounded per-scope pending-jobs index of [`crate::state`], not in `Measures`.
//! - `images_untiered` has no column in `window_totals` yet (see [`Measures::images_untiered`]).

use policy::Unit;
use rust_decimal::Decimal;
use schemas::{ImageTier, JobState, Modality, Status, UsageEvent};

/// The largest scale of a money measure: `window_totals` stores `Decimal(38, 12)`.
pub const MONEY_SCALE_MAX: u32 = 12;

/// The totals of one (scope, window). Field names are the `window_totals` column names.
///
/// Every field is a sum of per-event contributions ([`Measures::of_event`]), except
/// `late_events`, which [`crate::state::TotalsState`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Measures {
    /// Requests sent to a provider ([`Unit::Requests`]): every synchronous attempt (retries and
    /// fallbacks included) and the `submitted` state of an async job; later job states are not
    /// requests.
    pub requests: u64,
    /// Attempts the provider bills for ([`Unit::BillableAttempts`]): every synchronous attempt and
    /// the billed final state (`succeeded`, `failed`, `cancelled`) of an async job, not its
    /// `submitted` or `running` states. An async job is therefore one request and one billable
    /// attempt, counted at different times.
    pub billable_attempts: u64,
    /// Sum of `input_tokens` (cached included).
    pub input_tokens: u64,
    /// Sum of `output_tokens`.
    pub output_tokens: u64,
    /// Sum of `cached_input_tokens`.
    pub cached_input_tokens: u64,
    /// Sum of `cache_write_tokens`.
    pub cache_write_tokens: u64,
    /// `images` of events with tier `draft`.
    pub images_draft: u64,
    /// `images` of events with tier `preview`.
    pub images_preview: u64,
    /// `images` of events with tier `edit`.
    pub images_edit: u64,
    /// `images` of events with tier `final`.
    pub images_final: u64,
    /// `images` of events without a tier. Kept apart so that no tier column is inflated and
    /// [`Unit::Images`] (any tier) still equals the sum of the five; `window_totals` has no
    /// column for it yet (a migration adding `images_untiered UInt64` is needed to persist it).
    pub images_untiered: u64,
    /// Video jobs started ([`Unit::VideoJobs`]): a video event in state `submitted`, or a
    /// synchronous video attempt (no job state).
    pub video_jobs: u64,
    /// Sum of `video_duration_ms`.
    pub video_ms: u64,
    /// Sum of `audio_duration_ms`.
    pub audio_ms: u64,
    /// `input_tokens` of `embedding` events.
    pub embedding_tokens: u64,
    /// Sum of `cost_usd`; unpriced events add nothing (they are counted in `unpriced_events`).
    pub cost_usd: Decimal,
    /// Events whose `cost_usd` is null (unpriced by the catalog, or not priced yet).
    pub unpriced_events: u64,
    /// Attempts after the first of an action (`attempt > 1`, fallbacks included).
    pub retries: u64,
    /// Attempts that fell back to another model (`fallback_from_model` set).
    pub fallback_attempts: u64,
    /// `cost_usd` of the fallback attempts.
    pub fallback_cost_usd: Decimal,
    /// Events whose output was accepted (`accepted == Some(true)`).
    pub accepted_outputs: u64,
    /// Failed attempts (see [`ErrorClass`]) answered with an HTTP 4xx.
    pub errors_4xx: u64,
    /// Failed attempts answered with an HTTP 5xx.
    pub errors_5xx: u64,
    /// Failed attempts with no HTTP status, or one outside 400–599 (timeouts, connection errors,
    /// gateway-side blocks).
    pub errors_other: u64,
    /// Events that arrived after their window of this scope had closed, counted in the window
    /// that was open when they arrived (see [`crate::state`]); 0 in a contribution.
    pub late_events: u64,
    /// Async jobs submitted minus finished: +1 on `submitted`, −1 on `succeeded`, `failed` or
    /// `cancelled` ([`Unit::ConcurrentJobs`]). Signed: a job submitted in an earlier window and
    /// finished in this one makes this window's value negative.
    pub jobs_in_flight: i64,
}

/// The error class of a failed attempt, from its HTTP status. An attempt has failed when its
/// `status` is not `ok` or its `http_status` is 400 or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// HTTP 400–499.
    Client4xx,
    /// HTTP 500–599.
    Server5xx,
    /// Anything else: no HTTP status (timeout, connection error) or an unusual one.
    Other,
}

impl ErrorClass {
    /// The class of `event`'s failure; `None` when the attempt did not fail.
    pub fn of_event(event: &UsageEvent) -> Option<ErrorClass> {
        let http_failed = event.http_status.is_some_and(|status| status >= 400);
        if event.status == Status::Ok && !http_failed {
            return None;
        }
        Some(match event.http_status {
            Some(400..=499) => ErrorClass::Client4xx,
            Some(500..=599) => ErrorClass::Server5xx,
            _ => ErrorClass::Other,
        })
    }
}

/// Why two [`Measures`] could not be added exactly. A data error: retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeasureError {
    /// The sum does not fit the measure's type (`u64`, `i64`, or a 96-bit decimal mantissa at
    /// the operands' scale).
    #[error("measure {measure} overflows")]
    Overflow {
        /// The `window_totals` column.
        measure: &'static str,
    },
    /// An amount has more than [`MONEY_SCALE_MAX`] decimal places, which `Decimal(38, 12)`
    /// cannot store exactly.
    #[error("measure {measure} has scale {scale}, more than the {MONEY_SCALE_MAX} that Decimal(38, 12) stores")]
    MoneyScale {
        /// The `window_totals` column.
        measure: &'static str,
        /// The scale found.
        scale: u32,
    },
}

impl Measures {
    /// All zero.
    pub const ZERO: Measures = Measures {
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
        cost_usd: Decimal::ZERO,
        unpriced_events: 0,
        retries: 0,
        fallback_attempts: 0,
        fallback_cost_usd: Decimal::ZERO,
        accepted_outputs: 0,
        errors_4xx: 0,
        errors_5xx: 0,
        errors_other: 0,
        late_events: 0,
        jobs_in_flight: 0,
    };

    /// One event's contribution; the rule of each measure is on its field. Allocation-free.
    pub fn of_event(event: &UsageEvent) -> Measures {
        let images = u64::from(event.images);
        let images_of = |tier: Option<ImageTier>| {
            if event.image_tier == tier {
                images
            } else {
                0
            }
        };
        let is_fallback = event.fallback_from_model.is_some();
        let error_class = ErrorClass::of_event(event);
        Measures {
            requests: u64::from(matches!(event.job_state, None | Some(JobState::Submitted))),
            billable_attempts: u64::from(!matches!(
                event.job_state,
                Some(JobState::Submitted | JobState::Running)
            )),
            input_tokens: event.input_tokens,
            output_tokens: event.output_tokens,
            cached_input_tokens: event.cached_input_tokens,
            cache_write_tokens: event.cache_write_tokens,
            images_draft: images_of(Some(ImageTier::Draft)),
            images_preview: images_of(Some(ImageTier::Preview)),
            images_edit: images_of(Some(ImageTier::Edit)),
            images_final: images_of(Some(ImageTier::Final)),
            images_untiered: images_of(None),
            video_jobs: u64::from(
                event.modality == Modality::Video
                    && matches!(event.job_state, None | Some(JobState::Submitted)),
            ),
            video_ms: event.video_duration_ms,
            audio_ms: event.audio_duration_ms,
            embedding_tokens: if event.modality == Modality::Embedding {
                event.input_tokens
            } else {
                0
            },
            cost_usd: event.cost_usd.unwrap_or(Decimal::ZERO),
            unpriced_events: u64::from(event.cost_usd.is_none()),
            retries: u64::from(event.attempt > 1),
            fallback_attempts: u64::from(is_fallback),
            fallback_cost_usd: match event.cost_usd {
                Some(cost) if is_fallback => cost,
                _ => Decimal::ZERO,
            },
            accepted_outputs: u64::from(event.accepted == Some(true)),
            errors_4xx: u64::from(error_class == Some(ErrorClass::Client4xx)),
            errors_5xx: u64::from(error_class == Some(ErrorClass::Server5xx)),
            errors_other: u64::from(error_class == Some(ErrorClass::Other)),
            late_events: 0,
            jobs_in_flight: match event.job_state {
                Some(JobState::Submitted) => 1,
                Some(JobState::Succeeded | JobState::Failed | JobState::Cancelled) => -1,
                Some(JobState::Running) | None => 0,
            },
        }
    }

    /// Adds `other` exactly. On error `self` is unchanged.
    ///
    /// In place, without building the sum aside (this runs for every (scope, window) an event
    /// touches: about 50 times per event): the money sums are computed first (they may fail
    /// without changing anything), then the counters are added with wrapping arithmetic while
    /// overflow is noted, and undone by wrapping subtraction (which restores them exactly) if any
    /// overflowed.
    pub fn add(&mut self, other: &Measures) -> Result<(), MeasureError> {
        macro_rules! counters {
            ($mac:ident) => {
                $mac!(
                    requests,
                    billable_attempts,
                    input_tokens,
                    output_tokens,
                    cached_input_tokens,
                    cache_write_tokens,
                    images_draft,
                    images_preview,
                    images_edit,
                    images_final,
                    images_untiered,
                    video_jobs,
                    video_ms,
                    audio_ms,
                    embedding_tokens,
                    unpriced_events,
                    retries,
                    fallback_attempts,
                    accepted_outputs,
                    errors_4xx,
                    errors_5xx,
                    errors_other,
                    late_events,
                    jobs_in_flight
                )
            };
        }
        let cost_usd = money_sum(self.cost_usd, other.cost_usd, "cost_usd")?;
        let fallback_cost_usd = money_sum(
            self.fallback_cost_usd,
            other.fallback_cost_usd,
            "fallback_cost_usd",
        )?;
        let mut overflow = false;
        macro_rules! add {
            ($($field:ident),*) => {
                $(
                    let (sum, over) = self.$field.overflowing_add(other.$field);
                    self.$field = sum;
                    overflow |= over;
                )*
            };
        }
        counters!(add);
        if overflow {
            macro_rules! undo {
                ($($field:ident),*) => {
                    $( self.$field = self.$field.wrapping_sub(other.$field); )*
                };
            }
            counters!(undo);
            // Names the first measure that does not fit.
            return self.checked_sum(other).map(|_| ());
        }
        self.cost_usd = cost_usd;
        self.fallback_cost_usd = fallback_cost_usd;
        Ok(())
    }

    /// `self + other`, or the first measure that does not fit.
    pub fn checked_sum(&self, other: &Measures) -> Result<Measures, MeasureError> {
        fn count(left: u64, right: u64, measure: &'static str) -> Result<u64, MeasureError> {
            left.checked_add(right)
                .ok_or(MeasureError::Overflow { measure })
        }
        Ok(Measures {
            requests: count(self.requests, other.requests, "requests")?,
            billable_attempts: count(
                self.billable_attempts,
                other.billable_attempts,
                "billable_attempts",
            )?,
            input_tokens: count(self.input_tokens, other.input_tokens, "input_tokens")?,
            output_tokens: count(self.output_tokens, other.output_tokens, "output_tokens")?,
            cached_input_tokens: count(
                self.cached_input_tokens,
                other.cached_input_tokens,
                "cached_input_tokens",
            )?,
            cache_write_tokens: count(
                self.cache_write_tokens,
                other.cache_write_tokens,
                "cache_write_tokens",
            )?,
            images_draft: count(self.images_draft, other.images_draft, "images_draft")?,
            images_preview: count(self.images_preview, other.images_preview, "images_preview")?,
            images_edit: count(self.images_edit, other.images_edit, "images_edit")?,
            images_final: count(self.images_final, other.images_final, "images_final")?,
            images_untiered: count(
                self.images_untiered,
                other.images_untiered,
                "images_untiered",
            )?,
            video_jobs: count(self.video_jobs, other.video_jobs, "video_jobs")?,
            video_ms: count(self.video_ms, other.video_ms, "video_ms")?,
            audio_ms: count(self.audio_ms, other.audio_ms, "audio_ms")?,
            embedding_tokens: count(
                self.embedding_tokens,
                other.embedding_tokens,
                "embedding_tokens",
            )?,
            cost_usd: money_sum(self.cost_usd, other.cost_usd, "cost_usd")?,
            unpriced_events: count(
                self.unpriced_events,
                other.unpriced_events,
                "unpriced_events",
            )?,
            retries: count(self.retries, other.retries, "retries")?,
            fallback_attempts: count(
                self.fallback_attempts,
                other.fallback_attempts,
                "fallback_attempts",
            )?,
            fallback_cost_usd: money_sum(
                self.fallback_cost_usd,
                other.fallback_cost_usd,
                "fallback_cost_usd",
            )?,
            accepted_outputs: count(
                self.accepted_outputs,
                other.accepted_outputs,
                "accepted_outputs",
            )?,
            errors_4xx: count(self.errors_4xx, other.errors_4xx, "errors_4xx")?,
            errors_5xx: count(self.errors_5xx, other.errors_5xx, "errors_5xx")?,
            errors_other: count(self.errors_other, other.errors_other, "errors_other")?,
            late_events: count(self.late_events, other.late_events, "late_events")?,
            jobs_in_flight: self
                .jobs_in_flight
                .checked_add(other.jobs_in_flight)
                .ok_or(MeasureError::Overflow {
                    measure: "jobs_in_flight",
                })?,
        })
    }

    /// Every image, any tier or none: what [`Unit::Images`] counts.
    pub fn images_total(&self) -> u128 {
        // At most 5 × u64::MAX < 2^67: no overflow, and it fits i128 and Decimal exactly.
        [
            self.images_draft,
            self.images_preview,
            self.images_edit,
            self.images_final,
            self.images_untiered,
        ]
        .into_iter()
        .map(u128::from)
        .sum()
    }

    /// The total of a policy unit, exactly as the policy sums [`Unit::measure`]: for one event's
    /// contribution it equals `unit.measure(event)`, for a window's totals the sum over its
    /// events. Derived units: `total_tokens = input + output`, `video_seconds = video_ms / 1000`
    /// (scale 3), `images` = every tier plus untiered; `concurrent_jobs` is `jobs_in_flight`.
    pub fn unit_amount(&self, unit: Unit) -> Decimal {
        let count = Decimal::from;
        match unit {
            Unit::CostUsd => self.cost_usd,
            Unit::Requests => count(self.requests),
            Unit::BillableAttempts => count(self.billable_attempts),
            Unit::InputTokens => count(self.input_tokens),
            Unit::OutputTokens => count(self.output_tokens),
            // Two u64 fit the 96-bit mantissa: exact.
            Unit::TotalTokens => count(self.input_tokens) + count(self.output_tokens),
            Unit::CachedInputTokens => count(self.cached_input_tokens),
            // Five u64 fit the 96-bit mantissa: exact.
            Unit::Images => Decimal::from_i128_with_scale(self.images_total() as i128, 0),
            Unit::ImagesDraft => count(self.images_draft),
            Unit::ImagesPreview => count(self.images_preview),
            Unit::ImagesEdit => count(self.images_edit),
            Unit::ImagesFinal => count(self.images_final),
            Unit::VideoJobs => count(self.video_jobs),
            Unit::VideoSeconds => milliseconds_as_seconds(self.video_ms),
            Unit::AudioSeconds => milliseconds_as_seconds(self.audio_ms),
            Unit::EmbeddingTokens => count(self.embedding_tokens),
            Unit::ConcurrentJobs => Decimal::from(self.jobs_in_flight),
            Unit::FallbackCostUsd => self.fallback_cost_usd,
            Unit::Retries => count(self.retries),
            Unit::UnpricedEvents => count(self.unpriced_events),
        }
    }

    /// Whether every measure is zero.
    pub fn is_zero(&self) -> bool {
        *self == Measures::ZERO
    }
}

impl From<&schemas::WindowTotal> for Measures {
    /// The measures of a totals-topic record (the inverse of what the aggregator publishes), so a
    /// reader applies the same [`Measures::unit_amount`] rules.
    fn from(total: &schemas::WindowTotal) -> Measures {
        Measures {
            requests: total.requests,
            billable_attempts: total.billable_attempts,
            input_tokens: total.input_tokens,
            output_tokens: total.output_tokens,
            cached_input_tokens: total.cached_input_tokens,
            cache_write_tokens: total.cache_write_tokens,
            images_draft: total.images_draft,
            images_preview: total.images_preview,
            images_edit: total.images_edit,
            images_final: total.images_final,
            images_untiered: total.images_untiered,
            video_jobs: total.video_jobs,
            video_ms: total.video_ms,
            audio_ms: total.audio_ms,
            embedding_tokens: total.embedding_tokens,
            cost_usd: total.cost_usd,
            unpriced_events: total.unpriced_events,
            retries: total.retries,
            fallback_attempts: total.fallback_attempts,
            fallback_cost_usd: total.fallback_cost_usd,
            accepted_outputs: total.accepted_outputs,
            errors_4xx: total.errors_4xx,
            errors_5xx: total.errors_5xx,
            errors_other: total.errors_other,
            late_events: total.late_events,
            jobs_in_flight: total.jobs_in_flight,
        }
    }
}

/// Powers of ten up to [`MONEY_SCALE_MAX`].
const POW10: [i128; MONEY_SCALE_MAX as usize + 1] = {
    let mut table = [1i128; MONEY_SCALE_MAX as usize + 1];
    let mut index = 1;
    while index < table.len() {
        table[index] = table[index - 1] * 10;
        index += 1;
    }
    table
};

/// The largest mantissa of a `Decimal` (96 bits).
const MANTISSA_MAX: i128 = (1 << 96) - 1;

/// Money of a [`Delta`] must stay at or below this (10²⁰ USD, far above any real total) so its
/// units of 10⁻¹² fit an `i128` with room: `Delta` adds without checks.
pub const DELTA_MONEY_MAX: Decimal = Decimal::from_parts(0x6310_0000, 0x6bc7_5e2d, 0x5, false, 0);

/// A sum of event contributions for the aggregator's hot path ([`crate::state`]): the counters
/// of [`Measures`], and money as `i128` units of 10⁻¹² with the largest scale seen, so adding
/// is plain integer arithmetic (no `Decimal` normalisation) and the sum converts back to exactly
/// the `Decimal` that adding the same contributions to [`Measures`] one by one gives (same
/// value, same scale).
///
/// Additions wrap: the caller proves they cannot overflow (the totals state's upper bound of
/// every total, which every delta is part of, and [`DELTA_MONEY_MAX`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    counters: [u64; DELTA_COUNTERS],
    jobs_in_flight: i64,
    cost_units: i128,
    fallback_cost_units: i128,
    cost_scale: u8,
    fallback_cost_scale: u8,
}

/// Counters of a [`Delta`]: every `u64` of [`Measures`].
const DELTA_COUNTERS: usize = 23;

macro_rules! delta_counters {
    ($mac:ident) => {
        $mac!(
            0 requests,
            1 billable_attempts,
            2 input_tokens,
            3 output_tokens,
            4 cached_input_tokens,
            5 cache_write_tokens,
            6 images_draft,
            7 images_preview,
            8 images_edit,
            9 images_final,
            10 images_untiered,
            11 video_jobs,
            12 video_ms,
            13 audio_ms,
            14 embedding_tokens,
            15 unpriced_events,
            16 retries,
            17 fallback_attempts,
            18 accepted_outputs,
            19 errors_4xx,
            20 errors_5xx,
            21 errors_other,
            22 late_events
        )
    };
}

impl Delta {
    /// `measures` as a delta; `None` when an amount has a scale above [`MONEY_SCALE_MAX`] or is
    /// above [`DELTA_MONEY_MAX`] in absolute value (such an event takes the checked path).
    pub fn of(measures: &Measures) -> Option<Delta> {
        let units = |amount: Decimal| -> Option<(i128, u8)> {
            let scale = amount.scale();
            if scale > MONEY_SCALE_MAX || amount.abs() > DELTA_MONEY_MAX {
                return None;
            }
            Some((
                amount.mantissa() * POW10[(MONEY_SCALE_MAX - scale) as usize],
                scale as u8,
            ))
        };
        let (cost_units, cost_scale) = units(measures.cost_usd)?;
        let (fallback_cost_units, fallback_cost_scale) = units(measures.fallback_cost_usd)?;
        // Names every field: a measure added to `Measures` must be added here too.
        macro_rules! every_field {
            ($($index:literal $field:ident),*) => {
                let Measures { $( $field: _, )* cost_usd: _, fallback_cost_usd: _, jobs_in_flight: _ } =
                    measures;
            };
        }
        delta_counters!(every_field);
        let mut counters = [0; DELTA_COUNTERS];
        macro_rules! copy {
            ($($index:literal $field:ident),*) => { $( counters[$index] = measures.$field; )* };
        }
        delta_counters!(copy);
        Some(Delta {
            counters,
            jobs_in_flight: measures.jobs_in_flight,
            cost_units,
            fallback_cost_units,
            cost_scale,
            fallback_cost_scale,
        })
    }

    /// Adds `other`, wrapping (see the type's docs).
    #[inline]
    pub fn add(&mut self, other: &Delta) {
        for (sum, addend) in self.counters.iter_mut().zip(&other.counters) {
            *sum = sum.wrapping_add(*addend);
        }
        self.jobs_in_flight = self.jobs_in_flight.wrapping_add(other.jobs_in_flight);
        self.cost_units = self.cost_units.wrapping_add(other.cost_units);
        self.fallback_cost_units = self
            .fallback_cost_units
            .wrapping_add(other.fallback_cost_units);
        self.cost_scale = self.cost_scale.max(other.cost_scale);
        self.fallback_cost_scale = self.fallback_cost_scale.max(other.fallback_cost_scale);
    }

    /// The delta as [`Measures`]: exactly the sum of its contributions added one by one, scale
    /// included; an error only if an amount does not fit a `Decimal` at its scale.
    pub fn to_measures(&self) -> Result<Measures, MeasureError> {
        let money = |units: i128, scale: u8, measure: &'static str| {
            // Exact: every contribution was a multiple of 10^(12 - its scale) units, and the
            // largest scale is `scale`.
            let mantissa = units / POW10[(MONEY_SCALE_MAX - u32::from(scale)) as usize];
            if mantissa.abs() > MANTISSA_MAX {
                return Err(MeasureError::Overflow { measure });
            }
            Ok(Decimal::from_i128_with_scale(mantissa, u32::from(scale)))
        };
        let mut measures = Measures {
            cost_usd: money(self.cost_units, self.cost_scale, "cost_usd")?,
            fallback_cost_usd: money(
                self.fallback_cost_units,
                self.fallback_cost_scale,
                "fallback_cost_usd",
            )?,
            jobs_in_flight: self.jobs_in_flight,
            ..Measures::ZERO
        };
        macro_rules! copy {
            ($($index:literal $field:ident),*) => { $( measures.$field = self.counters[$index]; )* };
        }
        delta_counters!(copy);
        Ok(measures)
    }
}

/// `left + right` for money, exact at scale ≤ [`MONEY_SCALE_MAX`]. `rust_decimal` reduces the
/// scale (rounding) when a sum outgrows 96 bits; that is reported as an overflow.
fn money_sum(
    left: Decimal,
    right: Decimal,
    measure: &'static str,
) -> Result<Decimal, MeasureError> {
    let scale = left.scale().max(right.scale());
    if scale > MONEY_SCALE_MAX {
        return Err(MeasureError::MoneyScale { measure, scale });
    }
    // Cheap cases first: adding a zero that does not raise the scale (fallback costs are mostly
    // zero), and equal scales (a window's total and an event priced by the same catalog).
    if right.is_zero() && right.scale() <= left.scale() {
        return Ok(left);
    }
    if left.is_zero() && left.scale() <= right.scale() {
        return Ok(right);
    }
    // Otherwise in integers at the common scale: exact, and no fast path can drop the scale
    // (rust_decimal returns the other operand unchanged when one is zero).
    let at_scale = |value: Decimal| {
        value
            .mantissa()
            .checked_mul(POW10[(scale - value.scale()) as usize])
    };
    match at_scale(left)
        .zip(at_scale(right))
        .and_then(|(left, right)| left.checked_add(right))
    {
        Some(sum) if sum.abs() <= MANTISSA_MAX => Ok(Decimal::from_i128_with_scale(sum, scale)),
        _ => Err(MeasureError::Overflow { measure }),
    }
}

/// Milliseconds as exact seconds (scale 3), as [`Unit::measure`] computes them.
fn milliseconds_as_seconds(milliseconds: u64) -> Decimal {
    Decimal::from_i128_with_scale(i128::from(milliseconds), 3)
}

#[cfg(test)]
pub(crate) mod tests;
