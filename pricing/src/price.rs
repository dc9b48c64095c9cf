//! Pricing one call's usage against the catalog ([`Catalog::price`]). The rules are stated in the
//! crate docs (`lib.rs`) and in `docs/pricing.md`; the code follows them section by section.

use std::ops::Bound;

use rust_decimal::{Decimal, RoundingStrategy};

use crate::catalog::{Catalog, ModelEntry};
use crate::error::UsageLimitError;
use crate::input::PricingInput;

/// Fractional digits of money in the project (ClickHouse and Avro `Decimal(38, 12)`).
pub const MONEY_SCALE: u32 = 12;

/// The result of pricing one call. Never a silent zero: a missing price is `Unpriced`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriceOutcome {
    /// Every billed unit had a listed price.
    Priced {
        /// Sum of the breakdown, exact (at most 12 fractional digits).
        cost_usd: Decimal,
        /// One line per billed component with a non-zero quantity, in pricing order.
        breakdown: Vec<(CostComponent, Decimal)>,
        /// The catalog version the prices came from, recorded on the event.
        catalog_version: String,
    },
    /// The call could not be priced; the event carries no cost rather than a wrong one.
    Unpriced {
        /// Why.
        reason: UnpricedReason,
    },
}

impl PriceOutcome {
    /// The cost when priced.
    pub fn cost_usd(&self) -> Option<Decimal> {
        match self {
            PriceOutcome::Priced { cost_usd, .. } => Some(*cost_usd),
            PriceOutcome::Unpriced { .. } => None,
        }
    }

    /// The reason when unpriced.
    pub fn unpriced_reason(&self) -> Option<&UnpricedReason> {
        match self {
            PriceOutcome::Priced { .. } => None,
            PriceOutcome::Unpriced { reason } => Some(reason),
        }
    }
}

/// A billed component of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CostComponent {
    /// Input tokens not read from the cache.
    InputTokens,
    /// Input tokens read from the prompt cache.
    CachedInputTokens,
    /// Tokens written to the prompt cache.
    CacheWriteTokens,
    /// Output tokens (text, image or audio tokens depending on the rule).
    OutputTokens,
    /// Images priced per image.
    Images,
    /// Seconds of generated video.
    VideoSeconds,
    /// Seconds of audio.
    AudioSeconds,
}

impl CostComponent {
    /// Stable snake_case name, for storage and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CostComponent::InputTokens => "input_tokens",
            CostComponent::CachedInputTokens => "cached_input_tokens",
            CostComponent::CacheWriteTokens => "cache_write_tokens",
            CostComponent::OutputTokens => "output_tokens",
            CostComponent::Images => "images",
            CostComponent::VideoSeconds => "video_seconds",
            CostComponent::AudioSeconds => "audio_seconds",
        }
    }
}

impl std::fmt::Display for CostComponent {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The unit a row had no price for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PriceUnit {
    /// Text (or audio/image) tokens.
    Tokens,
    /// Images.
    Images,
    /// Seconds of video.
    VideoSeconds,
    /// Seconds (or tokens) of audio.
    Audio,
}

impl std::fmt::Display for PriceUnit {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            PriceUnit::Tokens => "tokens",
            PriceUnit::Images => "images",
            PriceUnit::VideoSeconds => "video seconds",
            PriceUnit::Audio => "audio",
        })
    }
}

/// Why a call is unpriced. None of these is retryable with the same catalog; a new catalog
/// version may price the call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnpricedReason {
    /// Neither `model` nor `{provider}/{model}` is a catalog row.
    #[error("model {model:?} (provider {provider:?}) is not in the price catalog")]
    UnknownModel {
        /// The provider given.
        provider: String,
        /// The model given.
        model: String,
    },
    /// The row lists no price for the unit the call is billed in (e.g. images from a text row).
    #[error("{model} lists no price for {unit}")]
    NoPriceForUnit {
        /// The catalog row.
        model: String,
        /// The unit without a price.
        unit: PriceUnit,
    },
    /// The modality/endpoint pair names no pricing rule.
    #[error("no pricing rule for modality {modality:?} on endpoint {endpoint:?}")]
    UnknownModality {
        /// The modality given.
        modality: String,
        /// The endpoint given.
        endpoint: String,
    },
    /// The image tier is not in `PricingRules::image_tiers`.
    #[error("image tier {tier:?} is not in the image tier table")]
    UnknownImageTier {
        /// The tier given.
        tier: String,
    },
    /// The price the rule needs was rejected when the catalog was loaded (see the load report).
    #[error("{model}.{field} was rejected when the catalog loaded")]
    InvalidCatalogPrice {
        /// The catalog row.
        model: String,
        /// The rejected field.
        field: String,
    },
    /// The usage itself is impossible (negative counts, cached above input).
    #[error("invalid usage: {0}")]
    InvalidUsage(#[from] UsageLimitError),
    /// A product or sum does not fit in a decimal.
    #[error("{model}: cost overflows a decimal")]
    Overflow {
        /// The catalog row.
        model: String,
    },
}

/// Which rule prices the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Text,
    Image,
    Video,
    Audio,
    Embedding,
}

/// Price fields of the four token kinds, most specific first.
struct TokenFields {
    input: &'static [&'static str],
    cache_read: &'static [&'static str],
    cache_write: &'static [&'static str],
    output: &'static [&'static str],
}

const TEXT_TOKENS: TokenFields = TokenFields {
    input: &["input_cost_per_token"],
    cache_read: &["cache_read_input_token_cost"],
    cache_write: &["cache_creation_input_token_cost"],
    output: &["output_cost_per_token"],
};

const AUDIO_TOKENS: TokenFields = TokenFields {
    input: &["input_cost_per_audio_token", "input_cost_per_token"],
    cache_read: &[
        "cache_read_input_audio_token_cost",
        "cache_read_input_token_cost",
    ],
    cache_write: &[
        "cache_creation_input_audio_token_cost",
        "cache_creation_input_token_cost",
    ],
    output: &["output_cost_per_audio_token", "output_cost_per_token"],
};

const IMAGE_TOKENS: TokenFields = TokenFields {
    input: &["input_cost_per_token"],
    cache_read: &["cache_read_input_token_cost"],
    cache_write: &["cache_creation_input_token_cost"],
    output: &["output_cost_per_image_token", "output_cost_per_token"],
};

const PER_SECOND_VIDEO: &[&str] = &["output_cost_per_second", "output_cost_per_video_per_second"];
const PER_SECOND_AUDIO: &[&str] = &[
    "input_cost_per_second",
    "input_cost_per_audio_per_second",
    "output_cost_per_second",
];
const PER_IMAGE: &[&str] = &["output_cost_per_image", "input_cost_per_image"];

/// Whether the token rule must price every token kind or only the prompt when listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenScope {
    /// Input price required; output billed.
    All,
    /// Per-image calls: prompt tokens billed only if the row lists an input price; output tokens
    /// are the image itself and not billed again.
    PromptIfListed,
}

type Lines = Vec<(CostComponent, Decimal)>;

/// One row, with the batch flag and prompt size that choose among its prices.
struct RowPrices<'a> {
    entry: &'a ModelEntry,
    batch: bool,
    prompt_tokens: i64,
}

impl RowPrices<'_> {
    /// The price for `base`: the highest listed `{base}_above_<N>k_tokens` tier with
    /// `prompt_tokens > N × 1000` (its `_batches` variant first for batch calls), else
    /// `{base}_batches` for batch calls, else `{base}`. A rejected candidate is an error.
    fn resolve(&self, base: &str) -> Result<Option<Decimal>, UnpricedReason> {
        let tier = self.highest_tier_exceeded(base);
        if tier.is_none() && !self.batch {
            // The common case, without building candidate names: `base` alone.
            if self.entry.invalid_fields.contains(base) {
                return Err(UnpricedReason::InvalidCatalogPrice {
                    model: self.entry.name.clone(),
                    field: base.to_owned(),
                });
            }
            return Ok(self.entry.price(base));
        }
        let mut candidates = Vec::with_capacity(4);
        if let Some(threshold) = tier {
            if self.batch {
                candidates.push(format!("{base}_above_{threshold}k_tokens_batches"));
            }
            candidates.push(format!("{base}_above_{threshold}k_tokens"));
        }
        if self.batch {
            candidates.push(format!("{base}_batches"));
        }
        candidates.push(base.to_owned());
        for field in candidates {
            if self.entry.invalid_fields.contains(&field) {
                return Err(UnpricedReason::InvalidCatalogPrice {
                    model: self.entry.name.clone(),
                    field,
                });
            }
            if let Some(price) = self.entry.price(&field) {
                return Ok(Some(price));
            }
        }
        Ok(None)
    }

    /// The first of `bases` that resolves.
    fn resolve_first(&self, bases: &[&str]) -> Result<Option<Decimal>, UnpricedReason> {
        for base in bases {
            if let Some(price) = self.resolve(base)? {
                return Ok(Some(price));
            }
        }
        Ok(None)
    }

    fn highest_tier_exceeded(&self, base: &str) -> Option<u64> {
        // Only the fields that start with `base` can name its tiers; both sets are sorted, so
        // they are the run of keys after `base` (a range scan, not a walk over the whole row).
        let after = (Bound::Excluded(base), Bound::Unbounded);
        let prefixed = |field: &&String| field.starts_with(base);
        self.entry
            .prices
            .range::<str, _>(after)
            .map(|(field, _)| field)
            .take_while(prefixed)
            .chain(
                self.entry
                    .invalid_fields
                    .range::<str, _>(after)
                    .take_while(prefixed),
            )
            .filter_map(|field| field.strip_prefix(base)?.strip_prefix("_above_"))
            .filter_map(|rest| {
                let (thousands, suffix) = rest.split_once("k_tokens")?;
                let applies = suffix.is_empty() || (self.batch && suffix == "_batches");
                if !applies || !thousands.bytes().all(|byte| byte.is_ascii_digit()) {
                    return None;
                }
                thousands.parse::<u64>().ok()
            })
            .filter(|thousands| i128::from(self.prompt_tokens) > i128::from(*thousands) * 1000)
            .max()
    }

    fn no_price(&self, unit: PriceUnit) -> UnpricedReason {
        UnpricedReason::NoPriceForUnit {
            model: self.entry.name.clone(),
            unit,
        }
    }

    /// `quantity × price`, rounded half-even to the money scale when it needs more digits.
    fn line(
        &self,
        component: CostComponent,
        quantity: Decimal,
        price: Decimal,
    ) -> Result<(CostComponent, Decimal), UnpricedReason> {
        let cost = quantity
            .checked_mul(price)
            .ok_or_else(|| UnpricedReason::Overflow {
                model: self.entry.name.clone(),
            })?;
        Ok((
            component,
            cost.round_dp_with_strategy(MONEY_SCALE, RoundingStrategy::MidpointNearestEven)
                .normalize(),
        ))
    }

    /// Token lines: uncached input, cached input (cache-read price, else input price), cache
    /// writes (cache-creation price, else input price) and, in `TokenScope::All`, output.
    fn token_lines(
        &self,
        usage: &PricingInput,
        fields: &TokenFields,
        scope: TokenScope,
    ) -> Result<Lines, UnpricedReason> {
        let mut lines = Vec::new();
        let input_price = self.resolve_first(fields.input)?;
        match (input_price, scope) {
            (Some(input_price), _) => {
                let uncached = usage.input_tokens - usage.cached_input_tokens;
                // Cache prices are looked up only when used, so a rejected cache field only
                // blocks calls that need it.
                let parts: [(CostComponent, i64, &[&str]); 3] = [
                    (CostComponent::InputTokens, uncached, &[]),
                    (
                        CostComponent::CachedInputTokens,
                        usage.cached_input_tokens,
                        fields.cache_read,
                    ),
                    (
                        CostComponent::CacheWriteTokens,
                        usage.cache_write_tokens,
                        fields.cache_write,
                    ),
                ];
                for (component, quantity, specific_fields) in parts {
                    if quantity > 0 {
                        let price = self.resolve_first(specific_fields)?.unwrap_or(input_price);
                        lines.push(self.line(component, Decimal::from(quantity), price)?);
                    }
                }
            }
            (None, TokenScope::All) => return Err(self.no_price(PriceUnit::Tokens)),
            (None, TokenScope::PromptIfListed) => {}
        }
        if scope == TokenScope::All && usage.output_tokens > 0 {
            let output_price = self
                .resolve_first(fields.output)?
                .ok_or_else(|| self.no_price(PriceUnit::Tokens))?;
            lines.push(self.line(
                CostComponent::OutputTokens,
                Decimal::from(usage.output_tokens),
                output_price,
            )?);
        }
        Ok(lines)
    }
}

impl Catalog {
    /// Prices one call exactly. See the crate docs for the rules; a missing price, unknown model
    /// or impossible usage is `Unpriced`, never `$0`.
    pub fn price(&self, usage: &PricingInput) -> PriceOutcome {
        match self.price_lines(usage) {
            Ok(breakdown) => {
                let total = breakdown
                    .iter()
                    .try_fold(Decimal::ZERO, |sum, (_, cost)| sum.checked_add(*cost));
                match total {
                    Some(total) => PriceOutcome::Priced {
                        cost_usd: total.normalize(),
                        breakdown,
                        catalog_version: self.version().to_owned(),
                    },
                    None => PriceOutcome::Unpriced {
                        reason: UnpricedReason::Overflow {
                            model: usage.model.clone(),
                        },
                    },
                }
            }
            Err(reason) => PriceOutcome::Unpriced { reason },
        }
    }

    fn price_lines(&self, usage: &PricingInput) -> Result<Lines, UnpricedReason> {
        usage.validate_counts()?;
        let entry = self.lookup(&usage.provider, &usage.model).ok_or_else(|| {
            UnpricedReason::UnknownModel {
                provider: usage.provider.clone(),
                model: usage.model.clone(),
            }
        })?;
        let modality = usage.modality.trim().to_ascii_lowercase();
        let endpoint = usage.endpoint.trim().to_ascii_lowercase();
        let rule = rule_for(&modality, &endpoint, entry)?;
        let row = RowPrices {
            entry,
            batch: modality == "batch" || endpoint == "batch",
            prompt_tokens: usage.prompt_tokens(),
        };
        match rule {
            Rule::Text => row.token_lines(usage, &TEXT_TOKENS, TokenScope::All),
            Rule::Embedding => {
                let price = row
                    .resolve("input_cost_per_token")?
                    .ok_or_else(|| row.no_price(PriceUnit::Tokens))?;
                nonzero_line(
                    &row,
                    CostComponent::InputTokens,
                    Decimal::from(usage.input_tokens),
                    price,
                )
            }
            Rule::Video => {
                let price = video_price(&row, usage.video_resolution.as_deref())?
                    .ok_or_else(|| row.no_price(PriceUnit::VideoSeconds))?;
                nonzero_line(
                    &row,
                    CostComponent::VideoSeconds,
                    Decimal::new(usage.video_duration_ms, 3),
                    price,
                )
            }
            Rule::Audio => audio_lines(&row, usage),
            Rule::Image => self.image_lines(&row, usage),
        }
    }

    /// Images: per-image price from the tier's quality row, else the row's own per-image price
    /// (plus prompt tokens when the row prices them); else image tokens; else the size-only row.
    fn image_lines(
        &self,
        row: &RowPrices<'_>,
        usage: &PricingInput,
    ) -> Result<Lines, UnpricedReason> {
        let (prefix, bare_model) = match row.entry.name.rsplit_once('/') {
            Some((prefix, bare)) => (&row.entry.name[..=prefix.len()], bare),
            None => ("", row.entry.name.as_str()),
        };
        let size = self.rules().default_image_size.as_str();
        let qualities: &[String] = match usage.image_tier.as_deref() {
            None => &[],
            Some(tier) => self.rules().image_tiers.get(tier).ok_or_else(|| {
                UnpricedReason::UnknownImageTier {
                    tier: tier.to_owned(),
                }
            })?,
        };
        let mut image_price = None;
        for quality in qualities {
            if let Some(quality_row) = self.get(&format!("{prefix}{quality}/{size}/{bare_model}")) {
                image_price = per_image_price(&row.with_entry(quality_row), size)?;
                if image_price.is_some() {
                    break;
                }
            }
        }
        if image_price.is_none() {
            image_price = per_image_price(row, size)?;
        }
        let tokens_measure_the_images = usage.images == 0 || usage.output_tokens > 0;
        if image_price.is_none()
            && tokens_measure_the_images
            && row.resolve("output_cost_per_image_token")?.is_some()
        {
            return row.token_lines(usage, &IMAGE_TOKENS, TokenScope::All);
        }
        if image_price.is_none() {
            if let Some(size_row) = self.get(&format!("{prefix}{size}/{bare_model}")) {
                image_price = per_image_price(&row.with_entry(size_row), size)?;
            }
        }
        let image_price = image_price.ok_or_else(|| row.no_price(PriceUnit::Images))?;
        let mut lines = nonzero_line(
            row,
            CostComponent::Images,
            Decimal::from(usage.images),
            image_price,
        )?;
        lines.extend(row.token_lines(usage, &TEXT_TOKENS, TokenScope::PromptIfListed)?);
        Ok(lines)
    }
}

impl<'a> RowPrices<'a> {
    fn with_entry<'b>(&self, entry: &'b ModelEntry) -> RowPrices<'b> {
        RowPrices {
            entry,
            batch: self.batch,
            prompt_tokens: self.prompt_tokens,
        }
    }
}

fn rule_for(modality: &str, endpoint: &str, entry: &ModelEntry) -> Result<Rule, UnpricedReason> {
    let from_endpoint = || match endpoint {
        "chat_completions" | "responses" | "messages" | "generate_content" => Some(Rule::Text),
        "images" => Some(Rule::Image),
        "video" => Some(Rule::Video),
        "audio" => Some(Rule::Audio),
        "embeddings" => Some(Rule::Embedding),
        "batch" if entry.mode.as_deref() == Some("embedding") => Some(Rule::Embedding),
        "batch" => Some(Rule::Text),
        _ => None,
    };
    let rule = match modality {
        "text" => Some(Rule::Text),
        "image" => Some(Rule::Image),
        "video" => Some(Rule::Video),
        "audio" => Some(Rule::Audio),
        "embedding" => Some(Rule::Embedding),
        "batch" | "" => from_endpoint(),
        _ => None,
    };
    rule.ok_or_else(|| UnpricedReason::UnknownModality {
        modality: modality.to_owned(),
        endpoint: endpoint.to_owned(),
    })
}

/// A single line, omitted when the quantity is zero (the price still had to exist).
fn nonzero_line(
    row: &RowPrices<'_>,
    component: CostComponent,
    quantity: Decimal,
    price: Decimal,
) -> Result<Lines, UnpricedReason> {
    if quantity.is_zero() {
        return Ok(Vec::new());
    }
    Ok(vec![row.line(component, quantity, price)?])
}

/// `output_cost_per_image`, else `input_cost_per_image`, else per-pixel prices × the size's pixels.
fn per_image_price(row: &RowPrices<'_>, size: &str) -> Result<Option<Decimal>, UnpricedReason> {
    if let Some(price) = row.resolve_first(PER_IMAGE)? {
        return Ok(Some(price));
    }
    let input_per_pixel = row.resolve("input_cost_per_pixel")?;
    let output_per_pixel = row.resolve("output_cost_per_pixel")?;
    let (Some(pixels), true) = (
        pixels_of(size),
        input_per_pixel.is_some() || output_per_pixel.is_some(),
    ) else {
        return Ok(None);
    };
    let per_pixel = input_per_pixel.unwrap_or_default() + output_per_pixel.unwrap_or_default();
    Ok(Some(
        per_pixel
            .checked_mul(Decimal::from(pixels))
            .ok_or_else(|| UnpricedReason::Overflow {
                model: row.entry.name.clone(),
            })?,
    ))
}

/// Pixels of a catalog size segment such as `1024-x-1536`.
fn pixels_of(size: &str) -> Option<u64> {
    let (width, height) = size.split_once("-x-")?;
    width
        .parse::<u64>()
        .ok()?
        .checked_mul(height.parse::<u64>().ok()?)
}

/// Per-second video price: `output_cost_per_second_<label>` for the resolution, else the row's
/// default `output_cost_per_second`, else `output_cost_per_video_per_second`.
fn video_price(
    row: &RowPrices<'_>,
    resolution: Option<&str>,
) -> Result<Option<Decimal>, UnpricedReason> {
    if let Some(resolution) = resolution {
        for label in resolution_labels(resolution) {
            if let Some(price) = row.resolve(&format!("output_cost_per_second_{label}"))? {
                return Ok(Some(price));
            }
        }
    }
    row.resolve_first(PER_SECOND_VIDEO)
}

/// Catalog labels for a resolution: `720p`/`4K` as given (lowercased); `WxH` by its short side
/// (`1280x720` → `720p`), with `2160p` also tried as `4k` and `1440p` as `2k`.
pub(crate) fn resolution_labels(resolution: &str) -> Vec<String> {
    let lowered = resolution.trim().to_ascii_lowercase();
    let Some((width, height)) = lowered.split_once(['x', '*', '×']) else {
        return vec![lowered];
    };
    let (Ok(width), Ok(height)) = (width.trim().parse::<u32>(), height.trim().parse::<u32>())
    else {
        return vec![lowered];
    };
    let short_side = width.min(height);
    let mut labels = vec![format!("{short_side}p")];
    match short_side {
        2160 => labels.push("4k".to_owned()),
        1440 => labels.push("2k".to_owned()),
        _ => {}
    }
    labels
}

/// Audio: by tokens when the call reports tokens and the row prices them, else by seconds; never
/// both (providers bill audio one way or the other).
fn audio_lines(row: &RowPrices<'_>, usage: &PricingInput) -> Result<Lines, UnpricedReason> {
    let has_tokens =
        usage.input_tokens > 0 || usage.output_tokens > 0 || usage.cache_write_tokens > 0;
    let per_second = row.resolve_first(PER_SECOND_AUDIO)?;
    if has_tokens {
        match row.token_lines(usage, &AUDIO_TOKENS, TokenScope::All) {
            Ok(lines) => return Ok(lines),
            Err(UnpricedReason::NoPriceForUnit { .. })
                if usage.audio_duration_ms > 0 && per_second.is_some() => {}
            Err(UnpricedReason::NoPriceForUnit { .. }) => {
                return Err(row.no_price(PriceUnit::Audio))
            }
            Err(other) => return Err(other),
        }
    }
    match per_second {
        Some(price) => nonzero_line(
            row,
            CostComponent::AudioSeconds,
            Decimal::new(usage.audio_duration_ms, 3),
            price,
        ),
        None if usage.audio_duration_ms == 0
            && row.resolve_first(AUDIO_TOKENS.input)?.is_some() =>
        {
            Ok(Vec::new())
        }
        None => Err(row.no_price(PriceUnit::Audio)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_labels_follow_the_short_side() {
        assert_eq!(resolution_labels("1280x720"), ["720p"]);
        assert_eq!(resolution_labels("720x1280"), ["720p"]);
        assert_eq!(resolution_labels("1920X1080"), ["1080p"]);
        assert_eq!(resolution_labels("3840x2160"), ["2160p", "4k"]);
        assert_eq!(resolution_labels("4K"), ["4k"]);
        assert_eq!(resolution_labels("480p"), ["480p"]);
    }

    #[test]
    fn pixels_of_catalog_sizes() {
        assert_eq!(pixels_of("1024-x-1024"), Some(1_048_576));
        assert_eq!(pixels_of("1024x1024"), None);
    }
}
