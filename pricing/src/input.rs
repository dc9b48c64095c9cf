//! The usage to price ([`PricingInput`]) and its validation against the model's limits.

use crate::catalog::Catalog;
use crate::error::UsageLimitError;

/// The billable usage of one call, as carried by a usage event (`schemas` v2 field names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PricingInput {
    /// Catalog row name or provider-less model name; see [`Catalog::lookup`].
    pub model: String,
    /// Provider, used for the `{provider}/{model}` lookup fallback (e.g. `azure`, `gemini`).
    pub provider: String,
    /// Endpoint family: `chat_completions`, `responses`, `messages`, `generate_content`, `images`,
    /// `video`, `audio`, `embeddings`, `batch`. `batch` selects batch prices.
    pub endpoint: String,
    /// What is billed: `text`, `image`, `video`, `audio`, `embedding`, `batch`. Selects the rule;
    /// `batch` (or empty) takes the rule from the endpoint, or from the row's mode.
    pub modality: String,
    /// Input tokens, including `cached_input_tokens`, excluding `cache_write_tokens`.
    pub input_tokens: i64,
    /// Output tokens (reasoning included).
    pub output_tokens: i64,
    /// The part of `input_tokens` read from the prompt cache.
    pub cached_input_tokens: i64,
    /// Tokens written to the prompt cache, in addition to `input_tokens`.
    pub cache_write_tokens: i64,
    /// Images generated or edited.
    pub images: i32,
    /// Image quality tier: `draft`, `preview`, `edit`, `final` (see `PricingRules::image_tiers`).
    pub image_tier: Option<String>,
    /// Video length billed, in milliseconds.
    pub video_duration_ms: i64,
    /// Audio length billed, in milliseconds.
    pub audio_duration_ms: i64,
    /// Video resolution, `1280x720` or a label such as `720p` / `4k`.
    pub video_resolution: Option<String>,
}

impl PricingInput {
    /// The prompt size that tiers and `max_input_tokens` are compared with:
    /// `input_tokens + cache_write_tokens` (saturating).
    pub fn prompt_tokens(&self) -> i64 {
        self.input_tokens.saturating_add(self.cache_write_tokens)
    }

    /// Checks what must hold whatever the model: counts are non-negative and the cached part of
    /// the input is not larger than the input.
    pub fn validate_counts(&self) -> Result<(), UsageLimitError> {
        let counts = [
            ("input_tokens", self.input_tokens),
            ("output_tokens", self.output_tokens),
            ("cached_input_tokens", self.cached_input_tokens),
            ("cache_write_tokens", self.cache_write_tokens),
            ("images", i64::from(self.images)),
            ("video_duration_ms", self.video_duration_ms),
            ("audio_duration_ms", self.audio_duration_ms),
        ];
        if let Some((field, value)) = counts.into_iter().find(|(_, value)| *value < 0) {
            return Err(UsageLimitError::NegativeCount { field, value });
        }
        if self.cached_input_tokens > self.input_tokens {
            return Err(UsageLimitError::CachedAboveInput {
                cached_input_tokens: self.cached_input_tokens,
                input_tokens: self.input_tokens,
            });
        }
        Ok(())
    }
}

impl Catalog {
    /// Validates usage for ingest: [`PricingInput::validate_counts`], then the model's limits
    /// ([`Catalog::model_limit_errors`]); the first problem found.
    pub fn validate_usage(&self, input: &PricingInput) -> Result<(), UsageLimitError> {
        input.validate_counts()?;
        match self.model_limit_errors(input).into_iter().next() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Every limit of the model that `input` exceeds, when the model is in the catalog:
    /// `input_tokens + cache_write_tokens <= max_input_tokens` and
    /// `output_tokens <= max_output_tokens` where the row lists them. An unknown model or an
    /// unlisted limit passes: this only rejects what the catalog proves impossible (pricing
    /// reports unknown models as `Unpriced`). Both limits are checked, so both can be reported.
    pub fn model_limit_errors(&self, input: &PricingInput) -> Vec<UsageLimitError> {
        let Some(entry) = self.lookup(&input.provider, &input.model) else {
            return Vec::new();
        };
        let mut errors = Vec::new();
        if let Some(max_input_tokens) = entry.max_input_tokens {
            if input.prompt_tokens() > max_input_tokens {
                errors.push(UsageLimitError::InputAboveMax {
                    model: entry.name.clone(),
                    prompt_tokens: input.prompt_tokens(),
                    max_input_tokens,
                });
            }
        }
        if let Some(max_output_tokens) = entry.max_output_tokens {
            if input.output_tokens > max_output_tokens {
                errors.push(UsageLimitError::OutputAboveMax {
                    model: entry.name.clone(),
                    output_tokens: input.output_tokens,
                    max_output_tokens,
                });
            }
        }
        errors
    }
}
