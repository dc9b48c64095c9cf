//! Model price catalog and exact pricing of AI API usage. No network IO.
//!
//! # Tour
//! - [`catalog`]: [`Catalog`] loads LiteLLM's `model_prices_and_context_window.json`
//!   ([`Catalog::load_path`], [`Catalog::from_json_str`], [`Catalog::embedded_sample`]) into
//!   [`ModelEntry`] rows, with a [`LoadReport`] of skipped rows and rejected fields.
//! - [`decimal_text`]: exact decimal parsing of JSON number text.
//! - [`input`]: [`PricingInput`], the usage of one call, and [`Catalog::validate_usage`].
//! - [`price`]: [`Catalog::price`] → [`PriceOutcome`].
//! - [`rules`]: [`PricingRules`], the configurable image tier table.
//! - [`error`]: typed errors.
//!
//! # Guarantees
//! - **Exact.** Prices are parsed from the JSON text (`3e-06`, `1.25e-07`) into `Decimal`, never
//!   through `f64`. A value that is not an exact non-negative decimal (more than 28 significant
//!   digits, a scale above 28, negative, a string such as `"NaN"`) is rejected and listed in the
//!   load report; pricing that needs it answers `Unpriced`, it never falls back past it.
//! - **Never $0 for a missing price.** An unknown model, a row without a price for the billed unit
//!   (images from a text row, per-character TTS), an unknown modality or image tier, or impossible
//!   usage is [`PriceOutcome::Unpriced`] with an [`UnpricedReason`]. `$0` only comes from listed
//!   zero prices or zero usage (a zero quantity still needs its unit's price to be listed).
//! - **Money scale 12.** Each breakdown line is `quantity × price`; a line needing more than 12
//!   fractional digits is rounded half-even to 12. The total is the exact sum of the lines.
//! - **Versioned.** Every `Priced` outcome carries the catalog version: the label given at load,
//!   else `sha256:<first 16 hex digits>` of the file bytes.
//!
//! # Catalog rules
//! - `sample_spec` and non-object entries are skipped; unknown fields are ignored. Every scalar
//!   field whose name contains `cost` is kept as an exact price under its own name.
//! - `alias_of` rows take the target row's prices and limits (their own fields win).
//! - Lookup ([`Catalog::lookup`]): `model` exactly, then `{provider}/{model}`.
//! - Preview ([`ModelEntry::is_preview`]): a name token (split on `/ - _ : . @`) is `preview`,
//!   `exp` or `experimental`.
//!
//! # Pricing rules
//! The rule comes from `modality` (`text`, `image`, `video`, `audio`, `embedding`); for
//! `batch` or an empty modality it comes from `endpoint` (`chat_completions`, `responses`,
//! `messages`, `generate_content` → text; `images`, `video`, `audio`, `embeddings`; `batch` →
//! embedding for `mode: embedding` rows, else text).
//!
//! **Choosing a price field** for a base field such as `input_cost_per_token`:
//! 1. *Tier*: the prompt is `input_tokens + cache_write_tokens` (`input_tokens` already includes
//!    the cached part). If the row lists `{base}_above_<N>k_tokens` with prompt > N × 1000
//!    (strictly), the highest such N prices the **whole** request for that component — the
//!    Gemini/Claude long-context rule as LiteLLM applies it. Each component (input, cache read,
//!    cache write, output, ...) uses its own listed tiers; a component without tier fields keeps
//!    its base price. Exactly at the threshold is not above it.
//! 2. *Batch* (`endpoint == "batch"` or `modality == "batch"`): `{field}_batches` when listed, else
//!    the standard field. Under a tier, `{tier field}_batches`, else the standard tier field (we do
//!    not combine a batch discount with a tier price the catalog does not list).
//! 3. Service tiers (`_flex`, `_priority`, ...), cache TTL variants (`_above_1hr`) and
//!    `tiered_pricing` ranges are not modelled.
//!
//! **Text**: `(input − cached) × input_cost_per_token + cached × cache_read_input_token_cost +
//! cache_write × cache_creation_input_token_cost + output × output_cost_per_token`. Without a
//! listed cache-read (or cache-creation) price the input price is used. `cached > input` is
//! invalid usage. Image/audio/video counts are not billed separately on this rule (chat
//! providers bill such inputs as input tokens). Example, `claude-sonnet-4-5`, 10 000 input of
//! which 4 000 cached, 1 000 cache writes, 500 output: `6000 × 0.000003 + 4000 × 0.0000003 +
//! 1000 × 0.00000375 + 500 × 0.000015 = 0.018 + 0.0012 + 0.00375 + 0.0075 = 0.03045`.
//!
//! **Embedding**: `input_tokens × input_cost_per_token` (batch and tiers as above).
//!
//! **Image**: the per-image price is, in order: the quality row for the tier
//! (`{provider prefix}{quality}/{size}/{model}`, qualities from [`PricingRules::image_tiers`],
//! default draft→low, preview→medium, final→high, edit→standard, size
//! [`PricingRules::default_image_size`]); the row's own price. A row's per-image price is
//! `output_cost_per_image`, else `input_cost_per_image`, else (`input_cost_per_pixel` +
//! `output_cost_per_pixel`) × the size's pixels. With a per-image price: `images × price`, plus
//! prompt tokens at the row's text input/cache prices when it lists an input price (output
//! tokens are the image and are not billed again). Without one, token-priced image rows
//! (`output_cost_per_image_token`) bill by tokens (input at `input_cost_per_token`, output at
//! `output_cost_per_image_token`) when `images == 0` or output tokens are reported; else the
//! size-only row `{size}/{model}` is tried; else `Unpriced`.
//!
//! **Video**: `video_duration_ms / 1000` seconds (exact) × `output_cost_per_second_<label>` for
//! the resolution (`1280x720` → `720p`, `3840x2160` → `4k`), else `output_cost_per_second` (the
//! row's default resolution), else `output_cost_per_video_per_second`.
//!
//! **Audio**: when the call reports tokens, by tokens (input at `input_cost_per_audio_token`, else
//! `input_cost_per_token`; output at `output_cost_per_audio_token`, else `output_cost_per_token`;
//! cache as for text); otherwise (or if the row lists no token price) `audio_duration_ms / 1000`
//! seconds × `input_cost_per_second`, else `input_cost_per_audio_per_second`, else
//! `output_cost_per_second` (speech output). Never both.

pub mod catalog;
pub mod decimal_text;
pub mod error;
pub mod input;
pub mod price;
pub mod rules;

pub use catalog::{Catalog, FieldError, LoadReport, ModelEntry, SkipReason, SkippedRow};
pub use decimal_text::{parse_non_negative_decimal, DecimalTextError};
pub use error::{CatalogError, FieldErrorKind, UsageLimitError};
pub use input::PricingInput;
pub use price::{CostComponent, PriceOutcome, PriceUnit, UnpricedReason, MONEY_SCALE};
pub use rules::PricingRules;
