//! [`Unit`]: what a policy counts, and [`Unit::measure`], one event's exact contribution.
//!
//! Every unit but one is a **counter**: events add their contribution to the window's total.
//! `concurrent_jobs` is a **gauge**: the number of async jobs running now; an event moves it up
//! (job submitted) or down (job finished), so its contribution may be negative and it has no
//! window. All arithmetic is exact [`Decimal`]: durations are milliseconds / 1000 with scale 3.

use rust_decimal::Decimal;
use schemas::{ImageTier, JobState, Modality, UsageEvent};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a policy counts. Serialized as the snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// USD: the event's `cost_usd` (unpriced events contribute 0; count them with
    /// `unpriced_events`).
    CostUsd,
    /// Requests sent to a provider: every attempt (retries and fallbacks included), but only the
    /// `submitted` state of an async job (later state changes are not requests).
    Requests,
    /// Billable attempts: every event that carries usage or cost, i.e. every synchronous attempt
    /// and the billed (`succeeded`, `failed`, `cancelled`) state changes of async jobs.
    BillableAttempts,
    /// `input_tokens` (cached included).
    InputTokens,
    /// `output_tokens`.
    OutputTokens,
    /// `input_tokens + output_tokens`.
    TotalTokens,
    /// `cached_input_tokens`.
    CachedInputTokens,
    /// `images`, any tier.
    Images,
    /// `images` of tier `draft`.
    ImagesDraft,
    /// `images` of tier `preview`.
    ImagesPreview,
    /// `images` of tier `edit`.
    ImagesEdit,
    /// `images` of tier `final`.
    ImagesFinal,
    /// Video jobs started: 1 for a video event in state `submitted`, or a synchronous video
    /// attempt (no job state).
    VideoJobs,
    /// `video_duration_ms / 1000`, exact.
    VideoSeconds,
    /// `audio_duration_ms / 1000`, exact.
    AudioSeconds,
    /// `input_tokens` of `embedding` events.
    EmbeddingTokens,
    /// Gauge: async jobs running now (+1 `submitted`, −1 `succeeded`/`failed`/`cancelled`).
    ConcurrentJobs,
    /// USD spent on fallback attempts (`fallback_from_model` set).
    FallbackCostUsd,
    /// Attempts after the first of an action (`attempt > 1`, fallbacks included).
    Retries,
    /// Events without a cost (`cost_usd` null: unpriced by the catalog or not priced yet).
    UnpricedEvents,
}

impl Unit {
    /// Every unit, in declaration order.
    pub const ALL: &'static [Unit] = &[
        Unit::CostUsd,
        Unit::Requests,
        Unit::BillableAttempts,
        Unit::InputTokens,
        Unit::OutputTokens,
        Unit::TotalTokens,
        Unit::CachedInputTokens,
        Unit::Images,
        Unit::ImagesDraft,
        Unit::ImagesPreview,
        Unit::ImagesEdit,
        Unit::ImagesFinal,
        Unit::VideoJobs,
        Unit::VideoSeconds,
        Unit::AudioSeconds,
        Unit::EmbeddingTokens,
        Unit::ConcurrentJobs,
        Unit::FallbackCostUsd,
        Unit::Retries,
        Unit::UnpricedEvents,
    ];

    /// The name as written in policies.
    pub const fn as_str(self) -> &'static str {
        match self {
            Unit::CostUsd => "cost_usd",
            Unit::Requests => "requests",
            Unit::BillableAttempts => "billable_attempts",
            Unit::InputTokens => "input_tokens",
            Unit::OutputTokens => "output_tokens",
            Unit::TotalTokens => "total_tokens",
            Unit::CachedInputTokens => "cached_input_tokens",
            Unit::Images => "images",
            Unit::ImagesDraft => "images_draft",
            Unit::ImagesPreview => "images_preview",
            Unit::ImagesEdit => "images_edit",
            Unit::ImagesFinal => "images_final",
            Unit::VideoJobs => "video_jobs",
            Unit::VideoSeconds => "video_seconds",
            Unit::AudioSeconds => "audio_seconds",
            Unit::EmbeddingTokens => "embedding_tokens",
            Unit::ConcurrentJobs => "concurrent_jobs",
            Unit::FallbackCostUsd => "fallback_cost_usd",
            Unit::Retries => "retries",
            Unit::UnpricedEvents => "unpriced_events",
        }
    }

    /// Whether the unit is a gauge (a level now, no window) rather than a counter.
    pub const fn is_gauge(self) -> bool {
        matches!(self, Unit::ConcurrentJobs)
    }

    /// Whether amounts of this unit are money (USD).
    pub const fn is_money(self) -> bool {
        matches!(self, Unit::CostUsd | Unit::FallbackCostUsd)
    }

    /// The event's exact contribution to this unit (see each variant). Never negative except
    /// for the `concurrent_jobs` gauge, whose contribution is the change of the level.
    pub fn measure(self, event: &UsageEvent) -> Decimal {
        match self {
            Unit::CostUsd => event.cost_usd.unwrap_or(Decimal::ZERO),
            Unit::Requests => one_if(matches!(event.job_state, None | Some(JobState::Submitted))),
            Unit::BillableAttempts => one_if(!matches!(
                event.job_state,
                Some(JobState::Submitted | JobState::Running)
            )),
            Unit::InputTokens => Decimal::from(event.input_tokens),
            Unit::OutputTokens => Decimal::from(event.output_tokens),
            Unit::TotalTokens => {
                Decimal::from(event.input_tokens) + Decimal::from(event.output_tokens)
            }
            Unit::CachedInputTokens => Decimal::from(event.cached_input_tokens),
            Unit::Images => Decimal::from(event.images),
            Unit::ImagesDraft => images_of_tier(event, ImageTier::Draft),
            Unit::ImagesPreview => images_of_tier(event, ImageTier::Preview),
            Unit::ImagesEdit => images_of_tier(event, ImageTier::Edit),
            Unit::ImagesFinal => images_of_tier(event, ImageTier::Final),
            Unit::VideoJobs => one_if(
                event.modality == Modality::Video
                    && matches!(event.job_state, None | Some(JobState::Submitted)),
            ),
            Unit::VideoSeconds => milliseconds_as_seconds(event.video_duration_ms),
            Unit::AudioSeconds => milliseconds_as_seconds(event.audio_duration_ms),
            Unit::EmbeddingTokens => {
                if event.modality == Modality::Embedding {
                    Decimal::from(event.input_tokens)
                } else {
                    Decimal::ZERO
                }
            }
            Unit::ConcurrentJobs => match event.job_state {
                Some(JobState::Submitted) => Decimal::ONE,
                Some(JobState::Succeeded | JobState::Failed | JobState::Cancelled) => {
                    Decimal::NEGATIVE_ONE
                }
                Some(JobState::Running) | None => Decimal::ZERO,
            },
            Unit::FallbackCostUsd => {
                if event.fallback_from_model.is_some() {
                    event.cost_usd.unwrap_or(Decimal::ZERO)
                } else {
                    Decimal::ZERO
                }
            }
            Unit::Retries => one_if(event.attempt > 1),
            Unit::UnpricedEvents => one_if(event.cost_usd.is_none()),
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// 1 when the condition holds, else 0.
fn one_if(condition: bool) -> Decimal {
    if condition {
        Decimal::ONE
    } else {
        Decimal::ZERO
    }
}

/// The event's images when its tier is `tier`, else 0.
fn images_of_tier(event: &UsageEvent, tier: ImageTier) -> Decimal {
    if event.image_tier == Some(tier) {
        Decimal::from(event.images)
    } else {
        Decimal::ZERO
    }
}

/// Milliseconds as exact seconds (scale 3): 1500 → 1.500.
fn milliseconds_as_seconds(milliseconds: u64) -> Decimal {
    // u64 fits the 96-bit mantissa, so this never overflows or rounds.
    Decimal::from_i128_with_scale(i128::from(milliseconds), 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::fixtures;
    use std::str::FromStr;

    fn event() -> UsageEvent {
        fixtures::text_event("e1", chrono::Utc::now())
    }

    #[test]
    fn names_match_serde() {
        for unit in Unit::ALL {
            let yaml = serde_yaml_ng::to_string(unit).expect("serialize");
            assert_eq!(yaml.trim(), unit.as_str());
        }
    }

    #[test]
    fn durations_are_exact_seconds() {
        let mut video = event();
        video.modality = Modality::Video;
        video.video_duration_ms = 1_501;
        video.audio_duration_ms = u64::MAX;
        assert_eq!(
            Unit::VideoSeconds.measure(&video),
            Decimal::from_str("1.501").unwrap()
        );
        assert_eq!(
            Unit::AudioSeconds.measure(&video).to_string(),
            "18446744073709551.615"
        );
    }

    #[test]
    fn costs_retries_fallbacks_and_unpriced() {
        let mut retry = event();
        retry.attempt = 2;
        retry.fallback_from_model = Some("gpt-4o".to_owned());
        retry.cost_usd = Some(Decimal::from_str("0.25").unwrap());
        assert_eq!(Unit::Retries.measure(&retry), Decimal::ONE);
        assert_eq!(
            Unit::FallbackCostUsd.measure(&retry),
            retry.cost_usd.unwrap()
        );
        assert_eq!(Unit::CostUsd.measure(&retry), retry.cost_usd.unwrap());
        assert_eq!(Unit::UnpricedEvents.measure(&retry), Decimal::ZERO);
        retry.cost_usd = None;
        assert_eq!(Unit::CostUsd.measure(&retry), Decimal::ZERO);
        assert_eq!(Unit::UnpricedEvents.measure(&retry), Decimal::ONE);
    }

    #[test]
    fn tokens_images_and_jobs() {
        let mut text = event();
        text.input_tokens = 100;
        text.cached_input_tokens = 40;
        text.output_tokens = 7;
        assert_eq!(Unit::TotalTokens.measure(&text), Decimal::from(107));
        assert_eq!(Unit::CachedInputTokens.measure(&text), Decimal::from(40));
        assert_eq!(Unit::EmbeddingTokens.measure(&text), Decimal::ZERO);
        assert_eq!(Unit::Requests.measure(&text), Decimal::ONE);

        let mut image = event();
        image.modality = Modality::Image;
        image.images = 3;
        image.image_tier = Some(ImageTier::Final);
        assert_eq!(Unit::ImagesFinal.measure(&image), Decimal::from(3));
        assert_eq!(Unit::ImagesDraft.measure(&image), Decimal::ZERO);
        assert_eq!(Unit::Images.measure(&image), Decimal::from(3));

        let mut job = event();
        job.modality = Modality::Video;
        job.job_state = Some(JobState::Submitted);
        assert_eq!(Unit::ConcurrentJobs.measure(&job), Decimal::ONE);
        assert_eq!(Unit::VideoJobs.measure(&job), Decimal::ONE);
        assert_eq!(Unit::BillableAttempts.measure(&job), Decimal::ZERO);
        job.job_state = Some(JobState::Succeeded);
        assert_eq!(Unit::ConcurrentJobs.measure(&job), Decimal::NEGATIVE_ONE);
        assert_eq!(Unit::VideoJobs.measure(&job), Decimal::ZERO);
        assert_eq!(Unit::Requests.measure(&job), Decimal::ZERO);
        assert_eq!(Unit::BillableAttempts.measure(&job), Decimal::ONE);
        assert!(Unit::ConcurrentJobs.is_gauge() && !Unit::Requests.is_gauge());
    }
}
