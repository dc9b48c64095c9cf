//! The price catalog: LiteLLM's `model_prices_and_context_window.json`, loaded exactly.
//!
//! Loading never fails because of one bad row: rows that are not objects and the `sample_spec`
//! documentation row are skipped, unknown fields are ignored, and a field whose value is not an
//! exact non-negative decimal (or a valid date, or a string where one is expected) is recorded in
//! the [`LoadReport`] and remembered as invalid on its [`ModelEntry`], so that pricing refuses to
//! use it rather than treating it as missing or zero.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::decimal_text::parse_non_negative_decimal;
use crate::error::{CatalogError, FieldErrorKind};
use crate::rules::PricingRules;

/// The fixture compiled into the crate (`fixtures/catalog_sample.json`, real rows of LiteLLM 1.110.2).
const EMBEDDED_SAMPLE: &str = include_str!("../fixtures/catalog_sample.json");

/// The documentation row at the top of LiteLLM's file; it holds descriptions, not prices.
const SAMPLE_SPEC_ROW: &str = "sample_spec";

/// A loaded price catalog. Immutable after loading; cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Recorded on every priced event: the caller's label, or `sha256:<16 hex>` of the file bytes.
    version: String,
    /// Rows keyed by their exact name in the file.
    models: BTreeMap<String, ModelEntry>,
    /// What was skipped or rejected while loading.
    report: LoadReport,
    /// Configurable pricing choices (image tier table).
    rules: PricingRules,
}

/// One catalog row: its metadata and every scalar price field it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModelEntry {
    /// The row's key in the catalog, e.g. `gpt-4o`, `azure/gpt-4o`, `vertex_ai/...`.
    pub name: String,
    /// `litellm_provider`, e.g. `openai`, `anthropic`, `vertex_ai-language-models`.
    pub provider: Option<String>,
    /// `mode`, e.g. `chat`, `embedding`, `image_generation`, `video_generation`, `audio_speech`.
    pub mode: Option<String>,
    /// `max_input_tokens`: the context size that `validate_usage` enforces for prompts.
    pub max_input_tokens: Option<i64>,
    /// `max_output_tokens`: the output size that `validate_usage` enforces.
    pub max_output_tokens: Option<i64>,
    /// `max_tokens`: LiteLLM's legacy limit, kept for display; not enforced (its meaning varies).
    pub max_tokens: Option<i64>,
    /// `deprecation_date`: the day the provider retires the model.
    pub deprecation_date: Option<NaiveDate>,
    /// True when the name marks a preview/experimental model: one of its tokens (split on
    /// `/ - _ : . @`) is `preview`, `exp` or `experimental`, case-insensitive. For an alias row
    /// the target's name counts too.
    pub is_preview: bool,
    /// `alias_of`: the row this one copies its prices and limits from (one level, as in the file).
    pub alias_of: Option<String>,
    /// Every scalar field whose name contains `cost`, exact, keyed by field name
    /// (`input_cost_per_token`, `output_cost_per_second_720p`, ...). New fields load untouched.
    pub prices: BTreeMap<String, Decimal>,
    /// Price fields present in the row whose value was rejected (see the load report); pricing
    /// answers `Unpriced` rather than skip them.
    pub invalid_fields: BTreeSet<String>,
}

impl ModelEntry {
    /// The exact price listed under `field`, if any.
    pub fn price(&self, field: &str) -> Option<Decimal> {
        self.prices.get(field).copied()
    }

    /// Whether the model is retired on `day` (its deprecation date is on or before `day`).
    pub fn is_deprecated_on(&self, day: NaiveDate) -> bool {
        self.deprecation_date.is_some_and(|date| date <= day)
    }
}

/// What happened to each row while loading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadReport {
    /// Top-level entries in the file, including skipped ones.
    pub rows_total: usize,
    /// Rows available for lookup (possibly with some rejected fields).
    pub rows_loaded: usize,
    /// Rows not loaded, with the reason.
    pub skipped: Vec<SkippedRow>,
    /// Fields rejected inside loaded rows.
    pub field_errors: Vec<FieldError>,
}

/// A top-level entry that was not loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SkippedRow {
    /// The entry's key.
    pub name: String,
    /// Why it was skipped.
    pub reason: SkipReason,
}

/// Why a top-level entry was not loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// LiteLLM's `sample_spec` documentation row.
    SampleSpec,
    /// The entry's value is not a JSON object.
    NotAnObject,
}

/// One rejected field of one row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{model}.{field} = {value_text}: {kind}")]
#[non_exhaustive]
pub struct FieldError {
    /// The row's key.
    pub model: String,
    /// The field's name.
    pub field: String,
    /// The field's value as JSON text, for the operator fixing the file.
    pub value_text: String,
    /// What is wrong with it.
    pub kind: FieldErrorKind,
}

impl Catalog {
    /// Reads and loads a catalog file. The version is `version_label` if given, else
    /// `sha256:<first 16 hex digits>` of the file bytes.
    pub fn load_path(
        path: impl AsRef<Path>,
        version_label: Option<&str>,
    ) -> Result<Self, CatalogError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, version_label)
    }

    /// Loads a catalog from JSON text; the version is as for [`Catalog::load_path`] (the hash is
    /// over the UTF-8 bytes of `json`).
    pub fn from_json_str(json: &str, version_label: Option<&str>) -> Result<Self, CatalogError> {
        let version = match version_label {
            Some(label) => label.to_owned(),
            None => content_version(json.as_bytes()),
        };
        let document: Value = serde_json::from_str(json)?;
        let Value::Object(rows) = document else {
            return Err(CatalogError::NotAnObject);
        };
        let (models, report) = load_rows(rows);
        Ok(Catalog {
            version,
            models,
            report,
            rules: PricingRules::default(),
        })
    }

    /// The fixture compiled into the crate: 27 real rows (plus `sample_spec`) of LiteLLM 1.110.2's
    /// file, for tests, demos and as a last-resort default. Always loads with no field errors.
    pub fn embedded_sample() -> Self {
        Self::from_json_str(EMBEDDED_SAMPLE, None).expect("the embedded fixture is a valid catalog")
    }

    /// Replaces the pricing rules (image tier table); the catalog version is unchanged.
    pub fn with_rules(mut self, rules: PricingRules) -> Self {
        self.rules = rules;
        self
    }

    /// The pricing rules in force.
    pub fn rules(&self) -> &PricingRules {
        &self.rules
    }

    /// The catalog version recorded on every priced event.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// What was skipped or rejected while loading.
    pub fn load_report(&self) -> &LoadReport {
        &self.report
    }

    /// Number of loaded rows.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether no row was loaded.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// All loaded rows, by name.
    pub fn models(&self) -> impl Iterator<Item = &ModelEntry> {
        self.models.values()
    }

    /// The row with exactly this name.
    pub fn get(&self, name: &str) -> Option<&ModelEntry> {
        self.models.get(name)
    }

    /// Finds the row for a call: `model` exactly first, then `{provider}/{model}` (skipped when
    /// `provider` is empty). So `("azure", "gpt-4o")` finds the `gpt-4o` row when it exists, and
    /// `("gemini", "imagen-3.0-generate-001")` finds `gemini/imagen-3.0-generate-001`. Callers
    /// that need a provider-specific row pass the full row name as `model`.
    pub fn lookup(&self, provider: &str, model: &str) -> Option<&ModelEntry> {
        if let Some(entry) = self.models.get(model) {
            return Some(entry);
        }
        if provider.is_empty() {
            return None;
        }
        self.models.get(&format!("{provider}/{model}"))
    }
}

/// `sha256:` and the first 16 hex digits of the SHA-256 of `bytes`.
fn content_version(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn load_rows(rows: Map<String, Value>) -> (BTreeMap<String, ModelEntry>, LoadReport) {
    let mut report = LoadReport {
        rows_total: rows.len(),
        ..LoadReport::default()
    };
    let mut models = BTreeMap::new();
    for (name, value) in rows {
        if name == SAMPLE_SPEC_ROW {
            report.skipped.push(SkippedRow {
                name,
                reason: SkipReason::SampleSpec,
            });
            continue;
        }
        let Value::Object(fields) = value else {
            report.skipped.push(SkippedRow {
                name,
                reason: SkipReason::NotAnObject,
            });
            continue;
        };
        let entry = parse_row(&name, &fields, &mut report.field_errors);
        models.insert(name, entry);
    }
    resolve_aliases(&mut models, &mut report.field_errors);
    report.rows_loaded = models.len();
    (models, report)
}

fn parse_row(name: &str, fields: &Map<String, Value>, errors: &mut Vec<FieldError>) -> ModelEntry {
    let mut entry = ModelEntry {
        name: name.to_owned(),
        provider: None,
        mode: None,
        max_input_tokens: None,
        max_output_tokens: None,
        max_tokens: None,
        deprecation_date: None,
        is_preview: name_marks_preview(name),
        alias_of: None,
        prices: BTreeMap::new(),
        invalid_fields: BTreeSet::new(),
    };
    let mut reject = |field: &str, value: &Value, kind: FieldErrorKind| {
        errors.push(FieldError {
            model: name.to_owned(),
            field: field.to_owned(),
            value_text: value.to_string(),
            kind,
        });
    };
    for (field, value) in fields {
        match field.as_str() {
            "litellm_provider" | "mode" | "alias_of" => match value {
                Value::String(text) => {
                    let slot = match field.as_str() {
                        "litellm_provider" => &mut entry.provider,
                        "mode" => &mut entry.mode,
                        _ => &mut entry.alias_of,
                    };
                    *slot = Some(text.clone());
                }
                Value::Null => {}
                _ => reject(field, value, FieldErrorKind::NotAString),
            },
            "deprecation_date" => match value {
                Value::String(text) => match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
                    Ok(date) => entry.deprecation_date = Some(date),
                    Err(_) => reject(field, value, FieldErrorKind::InvalidDate),
                },
                Value::Null => {}
                _ => reject(field, value, FieldErrorKind::NotAString),
            },
            "max_input_tokens" | "max_output_tokens" | "max_tokens" => {
                let limit = match parse_token_limit(value) {
                    Ok(limit) => limit,
                    Err(kind) => {
                        reject(field, value, kind);
                        continue;
                    }
                };
                match field.as_str() {
                    "max_input_tokens" => entry.max_input_tokens = limit,
                    "max_output_tokens" => entry.max_output_tokens = limit,
                    _ => entry.max_tokens = limit,
                }
            }
            _ if field.contains("cost") => match value {
                Value::Number(number) => match parse_non_negative_decimal(&number.to_string()) {
                    Ok(price) => {
                        entry.prices.insert(field.clone(), price);
                    }
                    Err(error) => {
                        entry.invalid_fields.insert(field.clone());
                        reject(field, value, FieldErrorKind::InvalidDecimal(error));
                    }
                },
                // Structured cost fields (objects, arrays) are other billing schemes; not modelled.
                Value::Null | Value::Object(_) | Value::Array(_) => {}
                Value::String(_) | Value::Bool(_) => {
                    entry.invalid_fields.insert(field.clone());
                    reject(field, value, FieldErrorKind::NotANumber);
                }
            },
            _ => {}
        }
    }
    entry
}

fn parse_token_limit(value: &Value) -> Result<Option<i64>, FieldErrorKind> {
    let number = match value {
        Value::Null => return Ok(None),
        Value::Number(number) => number,
        _ => return Err(FieldErrorKind::NotANumber),
    };
    let exact = parse_non_negative_decimal(&number.to_string())?;
    if !exact.fract().is_zero() {
        return Err(FieldErrorKind::InvalidTokenCount);
    }
    i64::try_from(exact)
        .map(Some)
        .map_err(|_| FieldErrorKind::InvalidTokenCount)
}

/// An alias row (`{"alias_of": "target"}`) takes the target's prices and limits; its own fields,
/// if any, win.
fn resolve_aliases(models: &mut BTreeMap<String, ModelEntry>, errors: &mut Vec<FieldError>) {
    let aliases: Vec<(String, String)> = models
        .values()
        .filter_map(|entry| Some((entry.name.clone(), entry.alias_of.clone()?)))
        .collect();
    for (alias_name, target_name) in aliases {
        let Some(target) = models.get(&target_name).cloned() else {
            errors.push(FieldError {
                model: alias_name,
                field: "alias_of".to_owned(),
                value_text: Value::String(target_name).to_string(),
                kind: FieldErrorKind::AliasTargetMissing,
            });
            continue;
        };
        let Some(alias) = models.get_mut(&alias_name) else {
            continue;
        };
        alias.provider = alias.provider.take().or(target.provider);
        alias.mode = alias.mode.take().or(target.mode);
        alias.max_input_tokens = alias.max_input_tokens.or(target.max_input_tokens);
        alias.max_output_tokens = alias.max_output_tokens.or(target.max_output_tokens);
        alias.max_tokens = alias.max_tokens.or(target.max_tokens);
        alias.deprecation_date = alias.deprecation_date.or(target.deprecation_date);
        alias.is_preview |= target.is_preview;
        for (field, price) in target.prices {
            alias.prices.entry(field).or_insert(price);
        }
        alias.invalid_fields.extend(target.invalid_fields);
    }
}

/// The preview rule documented on [`ModelEntry::is_preview`].
pub(crate) fn name_marks_preview(name: &str) -> bool {
    name.to_ascii_lowercase()
        .split(['/', '-', '_', ':', '.', '@'])
        .any(|token| matches!(token, "preview" | "exp" | "experimental"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_rule_matches_tokens_not_substrings() {
        assert!(name_marks_preview("gemini/veo-3.1-fast-generate-preview"));
        assert!(name_marks_preview("gpt-4-1106-preview"));
        assert!(name_marks_preview("gemini/gemini-exp-1206"));
        assert!(name_marks_preview("gemini/learnlm-1.5-pro-experimental"));
        assert!(!name_marks_preview("gpt-4o"));
        assert!(!name_marks_preview("amazon.nova-express"));
        assert!(!name_marks_preview("some-model-expand"));
    }

    #[test]
    fn content_version_is_sha256_prefix() {
        // SHA-256 of the empty string starts e3b0c44298fc1c14.
        assert_eq!(content_version(b""), "sha256:e3b0c44298fc1c14");
    }

    #[test]
    fn bad_fields_are_reported_not_zeroed() {
        let json = r#"{
            "sample_spec": {"input_cost_per_token": 0.0},
            "not-a-row": 5,
            "m": {
                "input_cost_per_token": -1e-06,
                "output_cost_per_token": "NaN",
                "cache_read_input_token_cost": 1.23456789012345678901234567890e-07,
                "max_input_tokens": 1000.5,
                "max_output_tokens": 4096,
                "deprecation_date": "soon",
                "search_context_cost_per_query": {"low": 0.01},
                "brand_new_field": [1, 2]
            }
        }"#;
        let catalog = Catalog::from_json_str(json, Some("test")).unwrap();
        let report = catalog.load_report();
        assert_eq!(report.rows_total, 3);
        assert_eq!(report.rows_loaded, 1);
        assert_eq!(report.skipped.len(), 2);
        let mut failed: Vec<&str> = report
            .field_errors
            .iter()
            .map(|e| e.field.as_str())
            .collect();
        failed.sort_unstable();
        assert_eq!(
            failed,
            [
                "cache_read_input_token_cost",
                "deprecation_date",
                "input_cost_per_token",
                "max_input_tokens",
                "output_cost_per_token"
            ]
        );
        let entry = catalog.get("m").unwrap();
        assert!(entry.prices.is_empty());
        assert_eq!(entry.invalid_fields.len(), 3);
        assert_eq!(entry.max_output_tokens, Some(4096));
        assert_eq!(entry.max_input_tokens, None);
    }

    #[test]
    fn not_an_object_document_is_an_error() {
        assert!(matches!(
            Catalog::from_json_str("[1, 2]", None),
            Err(CatalogError::NotAnObject)
        ));
        assert!(matches!(
            Catalog::from_json_str("{", None),
            Err(CatalogError::Json(_))
        ));
    }
}
