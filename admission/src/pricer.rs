//! Applies the price catalog to events: [`Pricer::apply`] fills the pricing envelope of a
//! [`UsageEvent`] (`cost_usd`, `cost_source`, `catalog_version`) by the contract rule of
//! [`UsageEvent::apply_pricing`]:
//!
//! 1. a cost reported by the provider (`reported_cost_usd`) wins → `cost_source = reported`;
//! 2. else the catalog price → `cost_source = priced`, with the catalog version;
//! 3. else `cost_source = unpriced` and `cost_usd` **null, never 0** — under
//!    [`UnpricedPolicy::FailOpen`] the event is accepted (policies can count unpriced events), under
//!    [`UnpricedPolicy::FailClosed`] it is rejected with a violation on `model`.
//!
//! # Token convention for producers
//! - `input_tokens` is the whole prompt **including** the part read from the prompt cache
//!   (`cached_input_tokens <= input_tokens`).
//! - `cache_write_tokens` are **not** part of `input_tokens`: they are the tokens written to the
//!   prompt cache, billed in addition at the cache-creation price (Anthropic's
//!   `cache_creation_input_tokens` is reported separately from `input_tokens` too). The prompt size
//!   compared with the model's context window and long-context tiers is
//!   `input_tokens + cache_write_tokens`.
//!
//! A producer that folds cache writes into `input_tokens` is billed twice for them.

use std::path::PathBuf;
use std::sync::Arc;

use pricing::{Catalog, PriceOutcome, PricingInput, UnpricedReason};
use rust_decimal::Decimal;
use schemas::UsageEvent;
use serde::{Deserialize, Serialize};

use crate::validation::{kind, Violation};

/// Which price catalog to use and what to do with events it cannot price.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    /// LiteLLM `model_prices_and_context_window.json` to price with; `None` uses the sample
    /// compiled into the `pricing` crate (demos and tests, not production).
    pub catalog_path: Option<PathBuf>,
    /// Version label recorded on every priced event for a catalog loaded from `catalog_path`;
    /// `None` records `sha256:<16 hex>` of the file. The embedded sample is always labelled by
    /// its content hash, so a label cannot pass the sample off as a real catalog.
    pub catalog_version: Option<String>,
    /// What to do with an event the catalog cannot price and whose provider reported no cost.
    pub unpriced: UnpricedPolicy,
}

/// What to do with an event that has neither a reported cost nor a catalog price.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnpricedPolicy {
    /// Accept it as `cost_source = unpriced` with a null cost: usage is never lost because the
    /// catalog lags behind a new model, and policies can count or block unpriced usage.
    #[default]
    FailOpen,
    /// Reject it with a `model` violation of kind `unpriced`.
    FailClosed,
}

/// What [`Pricer::apply`] put in the envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PricingApplied {
    /// The provider's reported cost was used.
    Reported {
        /// The cost now in `cost_usd`.
        reported_cost_usd: Decimal,
        /// What the catalog would have charged (diagnostics: reported vs priced drift), `None` if
        /// the catalog cannot price the event.
        priced_cost_usd: Option<Decimal>,
    },
    /// The catalog price was used.
    Priced {
        /// The cost now in `cost_usd`.
        cost_usd: Decimal,
    },
    /// No cost: `cost_usd` is null (only under [`UnpricedPolicy::FailOpen`]).
    Unpriced {
        /// Why the catalog could not price the event.
        reason: UnpricedReason,
    },
}

impl PricingApplied {
    /// The `cost_source` written to the event.
    pub fn cost_source(&self) -> schemas::CostSource {
        match self {
            PricingApplied::Reported { .. } => schemas::CostSource::Reported,
            PricingApplied::Priced { .. } => schemas::CostSource::Priced,
            PricingApplied::Unpriced { .. } => schemas::CostSource::Unpriced,
        }
    }
}

/// Why a [`Pricer`] could not be built from its config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PricerError {
    /// The catalog file could not be loaded.
    #[error("loading price catalog: {0}")]
    Catalog(#[from] pricing::CatalogError),
}

impl PricerError {
    /// Whether trying again may help (only a failed file read).
    pub fn is_retryable(&self) -> bool {
        match self {
            PricerError::Catalog(error) => error.is_retryable(),
        }
    }
}

/// Prices events with one catalog. Cheap to clone: the catalog is shared.
#[derive(Debug, Clone)]
pub struct Pricer {
    /// Loaded once, shared by every clone (HTTP handlers, producer library).
    catalog: Arc<Catalog>,
    /// What to do when the catalog cannot price an event.
    unpriced: UnpricedPolicy,
}

impl Pricer {
    /// A pricer over `catalog`.
    pub fn new(catalog: Arc<Catalog>, unpriced: UnpricedPolicy) -> Self {
        Self { catalog, unpriced }
    }

    /// Loads the catalog named by `config` (or the embedded sample).
    pub fn from_config(config: &PricingConfig) -> Result<Pricer, PricerError> {
        let catalog = match &config.catalog_path {
            Some(path) => Catalog::load_path(path, config.catalog_version.as_deref())?,
            None => Catalog::embedded_sample(),
        };
        tracing::info!(
            catalog_version = catalog.version(),
            models = catalog.len(),
            skipped_rows = catalog.load_report().skipped.len(),
            rejected_fields = catalog.load_report().field_errors.len(),
            embedded_sample = config.catalog_path.is_none(),
            "price catalog loaded"
        );
        Ok(Self::new(Arc::new(catalog), config.unpriced))
    }

    /// The catalog in use.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The policy for unpriced events.
    pub fn unpriced_policy(&self) -> UnpricedPolicy {
        self.unpriced
    }

    /// Prices `event` against the catalog without touching it.
    pub fn price(&self, event: &UsageEvent) -> PriceOutcome {
        self.catalog.price(&pricing_input(event))
    }

    /// Fills the pricing envelope of `event` (see the module doc for the rule). Under
    /// [`UnpricedPolicy::FailClosed`] an unpriced event is left untouched and a `model` violation
    /// of kind `unpriced` is returned.
    pub fn apply(&self, event: &mut UsageEvent) -> Result<PricingApplied, Violation> {
        let usage = pricing_input(event);
        self.apply_with_usage(event, &usage)
    }

    /// [`Pricer::apply`] with the event's [`PricingInput`] already built (`pricing_input(event)`).
    pub fn apply_with_usage(
        &self,
        event: &mut UsageEvent,
        usage: &PricingInput,
    ) -> Result<PricingApplied, Violation> {
        let outcome = self.catalog.price(usage);
        let priced_cost_usd = outcome.cost_usd();
        let applied = match (event.reported_cost_usd, outcome) {
            (Some(reported_cost_usd), _) => PricingApplied::Reported {
                reported_cost_usd,
                priced_cost_usd,
            },
            (None, PriceOutcome::Priced { cost_usd, .. }) => PricingApplied::Priced { cost_usd },
            (None, PriceOutcome::Unpriced { reason }) => match self.unpriced {
                UnpricedPolicy::FailOpen => PricingApplied::Unpriced { reason },
                UnpricedPolicy::FailClosed => {
                    return Err(Violation::new(
                        "model",
                        kind::UNPRICED,
                        format!(
                            "{reason}; this ingest rejects unpriced events (catalog {}) unless \
                             reported_cost_usd is given",
                            self.catalog.version()
                        ),
                    ));
                }
            },
        };
        event.apply_pricing(priced_cost_usd, self.catalog.version());
        debug_assert_eq!(event.cost_source, Some(applied.cost_source()));
        Ok(applied)
    }
}

/// The pricing view of an event (`pricing` takes plain strings and signed counts; counts above
/// `i64::MAX` saturate, and validation rejects them long before that).
pub fn pricing_input(event: &UsageEvent) -> PricingInput {
    let count = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    PricingInput {
        model: event.model.clone(),
        provider: event.provider.clone(),
        endpoint: event.endpoint.clone(),
        modality: event.modality.as_str().to_owned(),
        input_tokens: count(event.input_tokens),
        output_tokens: count(event.output_tokens),
        cached_input_tokens: count(event.cached_input_tokens),
        cache_write_tokens: count(event.cache_write_tokens),
        images: i32::try_from(event.images).unwrap_or(i32::MAX),
        image_tier: event.image_tier.map(|tier| tier.as_str().to_owned()),
        video_duration_ms: count(event.video_duration_ms),
        audio_duration_ms: count(event.audio_duration_ms),
        video_resolution: event.video_resolution.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use schemas::CostSource;

    use super::*;

    fn event(model: &str, reported_cost_usd: Option<&str>) -> UsageEvent {
        serde_json::from_value(serde_json::json!({
            "event_id": "evt-1",
            "occurred_at": "2025-01-01T00:00:00Z",
            "producer": "gateway-1",
            "request_id": "req-1",
            "action_id": "act-1",
            "attempt": 1,
            "api_key_id": "key-1",
            "team": "search",
            "workflow": "summarize",
            "environment": "prod",
            "provider": "openai",
            "model": model,
            "endpoint": "chat_completions",
            "modality": "text",
            "input_tokens": 1000,
            "cached_input_tokens": 200,
            "output_tokens": 500,
            "status": "ok",
            "reported_cost_usd": reported_cost_usd,
        }))
        .expect("valid sample event")
    }

    fn pricer(unpriced: UnpricedPolicy) -> Pricer {
        Pricer::new(Arc::new(Catalog::embedded_sample()), unpriced)
    }

    fn usd(text: &str) -> Decimal {
        Decimal::from_str(text).expect("decimal")
    }

    /// gpt-4o: 800 × 0.0000025 + 200 × 0.00000125 + 500 × 0.00001 = 0.002 + 0.00025 + 0.005.
    const GPT_4O_COST: &str = "0.00725";

    #[test]
    fn priced_from_the_catalog() {
        let pricer = pricer(UnpricedPolicy::FailOpen);
        let mut event = event("gpt-4o", None);
        let applied = pricer.apply(&mut event).expect("priced");
        assert_eq!(
            applied,
            PricingApplied::Priced {
                cost_usd: usd(GPT_4O_COST)
            }
        );
        assert_eq!(event.cost_usd, Some(usd(GPT_4O_COST)));
        assert_eq!(event.cost_source, Some(CostSource::Priced));
        assert_eq!(
            event.catalog_version.as_deref(),
            Some(pricer.catalog().version())
        );
    }

    #[test]
    fn a_reported_cost_wins_and_the_priced_cost_is_kept_for_diagnostics() {
        let mut event = event("gpt-4o", Some("0.01"));
        let applied = pricer(UnpricedPolicy::FailClosed)
            .apply(&mut event)
            .expect("reported");
        assert_eq!(
            applied,
            PricingApplied::Reported {
                reported_cost_usd: usd("0.01"),
                priced_cost_usd: Some(usd(GPT_4O_COST)),
            }
        );
        assert_eq!(event.cost_usd, Some(usd("0.01")));
        assert_eq!(event.cost_source, Some(CostSource::Reported));
        assert_eq!(event.catalog_version, None);

        // Fail-closed does not reject an unknown model whose cost was reported.
        let mut unknown = self::event("in-house-model", Some("0.02"));
        let applied = pricer(UnpricedPolicy::FailClosed)
            .apply(&mut unknown)
            .expect("reported");
        assert_eq!(applied.cost_source(), CostSource::Reported);
    }

    #[test]
    fn unknown_models_are_unpriced_with_a_null_cost_or_rejected() {
        let pricer_open = pricer(UnpricedPolicy::FailOpen);
        let mut event = event("in-house-model", None);
        let applied = pricer_open.apply(&mut event).expect("fail open accepts");
        assert!(
            matches!(
                applied,
                PricingApplied::Unpriced {
                    reason: UnpricedReason::UnknownModel { .. }
                }
            ),
            "{applied:?}"
        );
        assert_eq!(event.cost_usd, None, "unpriced is null, never 0");
        assert_eq!(event.cost_source, Some(CostSource::Unpriced));
        assert_eq!(
            event.catalog_version.as_deref(),
            Some(pricer_open.catalog().version())
        );

        let mut event = self::event("in-house-model", None);
        let violation = pricer(UnpricedPolicy::FailClosed)
            .apply(&mut event)
            .expect_err("fail closed rejects");
        assert_eq!(
            (violation.field.as_str(), violation.kind.as_str()),
            ("model", kind::UNPRICED)
        );
        assert_eq!(
            event.cost_source, None,
            "a rejected event is left untouched"
        );
    }

    #[test]
    fn config_loads_a_labelled_catalog_file_and_parses_the_policy() {
        let config: PricingConfig = serde_json::from_value(serde_json::json!({
            "catalog_path": concat!(env!("CARGO_MANIFEST_DIR"), "/../pricing/fixtures/catalog_sample.json"),
            "catalog_version": "litellm-1.110.2",
            "unpriced": "fail_closed",
        }))
        .expect("valid config");
        let pricer = Pricer::from_config(&config).expect("catalog loads");
        assert_eq!(pricer.catalog().version(), "litellm-1.110.2");
        assert_eq!(pricer.unpriced_policy(), UnpricedPolicy::FailClosed);

        let default = Pricer::from_config(&PricingConfig::default()).expect("embedded sample");
        assert_eq!(default.unpriced_policy(), UnpricedPolicy::FailOpen);
        assert_eq!(
            default.catalog().version(),
            Catalog::embedded_sample().version()
        );

        let missing = PricingConfig {
            catalog_path: Some(PathBuf::from("/nonexistent/catalog.json")),
            ..PricingConfig::default()
        };
        let error = Pricer::from_config(&missing).expect_err("missing file");
        assert!(error.is_retryable());
    }
}
