//! A request's attributes as the sidecar receives them: `x-quotaflow-*` headers (forward-auth,
//! ext_authz) or a JSON object (`POST /v1/check`), owned, and lent to the gateway crate as a
//! [`RequestAttributes`].
//!
//! | header | attribute |
//! |---|---|
//! | `x-quotaflow-api-key` | `api_key_id` |
//! | `x-quotaflow-team` | `team` |
//! | `x-quotaflow-user` | `user_id` (absent: no user) |
//! | `x-quotaflow-customer` | `customer_id` (absent: no customer) |
//! | `x-quotaflow-workflow` | `workflow` |
//! | `x-quotaflow-environment` | `environment` |
//! | `x-quotaflow-provider` | `provider` |
//! | `x-quotaflow-model` | `model` |
//! | `x-quotaflow-endpoint` | `endpoint` |
//! | `x-quotaflow-modality` | `modality` |
//! | `x-quotaflow-label-<name>` | label `<name>` |
//!
//! and what the request declares about itself, for the policies' admission rules
//! (`policy::admission`):
//!
//! | header | JSON field | |
//! |---|---|---|
//! | `x-quotaflow-input-tokens` | `input_tokens` | prompt and context, in tokens |
//! | `x-quotaflow-max-output-tokens` | `max_output_tokens` | the output limit asked for |
//! | `x-quotaflow-image-tier` | `image_tier` | `draft`, `preview`, `edit`, `final` |
//! | `x-quotaflow-video-seconds` | `video_seconds` | whole seconds |
//! | `x-quotaflow-video-resolution` | `video_resolution` | `720p`, `1080p`, `4k`, `1280x720` |
//!
//! Header names are case-insensitive; a header given twice keeps its first value. A declared
//! value that does not parse is kept as a problem ([`Attributes::invalid`]): the request is
//! refused saying so, never checked as if it had declared nothing.

use std::collections::BTreeMap;

use gateway::RequestAttributes;
use policy::admission::{Declared, Resolution};
use schemas::ImageTier;
use serde::{Deserialize, Serialize};

/// The prefix of every attribute header.
pub const HEADER_PREFIX: &str = "x-quotaflow-";
/// The prefix of label headers.
pub const LABEL_PREFIX: &str = "x-quotaflow-label-";

/// A request's attributes, owned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attributes {
    /// `api_key_id`.
    #[serde(default)]
    pub api_key_id: String,
    /// `team`.
    #[serde(default)]
    pub team: String,
    /// `user_id`, when the request has one.
    #[serde(default)]
    pub user_id: Option<String>,
    /// `customer_id`, when the request has one.
    #[serde(default)]
    pub customer_id: Option<String>,
    /// `workflow`.
    #[serde(default)]
    pub workflow: String,
    /// `environment`.
    #[serde(default)]
    pub environment: String,
    /// `provider`.
    #[serde(default)]
    pub provider: String,
    /// `model`.
    #[serde(default)]
    pub model: String,
    /// `endpoint`.
    #[serde(default)]
    pub endpoint: String,
    /// `modality` (text, image, video, audio, embedding, batch).
    #[serde(default)]
    pub modality: String,
    /// Free labels, matched by scope dimensions `labels.<name>`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Declared input tokens (prompt and context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Declared output limit (`max_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    /// Declared image quality tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_tier: Option<ImageTier>,
    /// Declared video length in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_seconds: Option<u64>,
    /// Declared video resolution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_resolution: Option<Resolution>,
    /// Declared values in headers that did not parse, as messages (never in JSON: a JSON
    /// request with a bad value is refused as a whole).
    #[serde(skip)]
    pub invalid: Vec<String>,
}

impl Attributes {
    /// The attributes in `headers` (name, value) pairs; names in any case.
    pub fn from_headers<'h>(headers: impl IntoIterator<Item = (&'h str, &'h str)>) -> Attributes {
        let mut attributes = Attributes::default();
        for (name, value) in headers {
            if name.len() <= HEADER_PREFIX.len()
                || !name[..HEADER_PREFIX.len()].eq_ignore_ascii_case(HEADER_PREFIX)
            {
                continue;
            }
            let name = name[HEADER_PREFIX.len()..].to_ascii_lowercase();
            let value = value.trim();
            let field = match name.as_str() {
                "api-key" => &mut attributes.api_key_id,
                "team" => &mut attributes.team,
                "workflow" => &mut attributes.workflow,
                "environment" => &mut attributes.environment,
                "provider" => &mut attributes.provider,
                "model" => &mut attributes.model,
                "endpoint" => &mut attributes.endpoint,
                "modality" => &mut attributes.modality,
                "user" => {
                    attributes.user_id.get_or_insert_with(|| value.to_owned());
                    continue;
                }
                "customer" => {
                    attributes
                        .customer_id
                        .get_or_insert_with(|| value.to_owned());
                    continue;
                }
                "input-tokens" => {
                    declare(
                        &mut attributes.input_tokens,
                        &name,
                        value,
                        &mut attributes.invalid,
                    );
                    continue;
                }
                "max-output-tokens" => {
                    declare(
                        &mut attributes.max_output_tokens,
                        &name,
                        value,
                        &mut attributes.invalid,
                    );
                    continue;
                }
                "image-tier" => {
                    declare(
                        &mut attributes.image_tier,
                        &name,
                        value,
                        &mut attributes.invalid,
                    );
                    continue;
                }
                "video-seconds" => {
                    declare(
                        &mut attributes.video_seconds,
                        &name,
                        value,
                        &mut attributes.invalid,
                    );
                    continue;
                }
                "video-resolution" => {
                    declare(
                        &mut attributes.video_resolution,
                        &name,
                        value,
                        &mut attributes.invalid,
                    );
                    continue;
                }
                other => {
                    if let Some(label) = other.strip_prefix("label-") {
                        if !label.is_empty() {
                            attributes
                                .labels
                                .entry(label.to_owned())
                                .or_insert_with(|| value.to_owned());
                        }
                    }
                    continue;
                }
            };
            if field.is_empty() {
                value.clone_into(field);
            }
        }
        attributes
    }

    /// Sets the scope attributes named by query parameters (`GET /v1/scopes`): the JSON API's
    /// names (`api_key_id`, `team`, `user_id`, `customer_id`, `workflow`, `environment`,
    /// `provider`, `model`, `endpoint`, `modality`) and `label.<name>`; a parameter overrides
    /// a header. Any other name is an error naming it.
    pub fn set_from_query(&mut self, query: &[(String, String)]) -> Result<(), String> {
        for (name, value) in query {
            let value = value.trim().to_owned();
            match name.as_str() {
                "api_key_id" => self.api_key_id = value,
                "team" => self.team = value,
                "workflow" => self.workflow = value,
                "environment" => self.environment = value,
                "provider" => self.provider = value,
                "model" => self.model = value,
                "endpoint" => self.endpoint = value,
                "modality" => self.modality = value,
                "user_id" => self.user_id = Some(value),
                "customer_id" => self.customer_id = Some(value),
                other => match other.strip_prefix("label.") {
                    Some(label) if !label.is_empty() => {
                        self.labels.insert(label.to_owned(), value);
                    }
                    _ => {
                        return Err(format!(
                            "unknown query parameter {other:?}: use api_key_id, team, user_id, \
                             customer_id, workflow, environment, provider, model, endpoint, \
                             modality or label.<name>"
                        ))
                    }
                },
            }
        }
        Ok(())
    }

    /// What the request declares, for the admission rules.
    pub fn declared(&self) -> Declared {
        Declared {
            input_tokens: self.input_tokens,
            max_output_tokens: self.max_output_tokens,
            image_tier: self.image_tier,
            video_seconds: self.video_seconds,
            video_resolution: self.video_resolution,
        }
    }

    /// Runs `check` on these attributes lent as [`RequestAttributes`].
    pub fn with<R>(&self, check: impl FnOnce(&RequestAttributes<'_>) -> R) -> R {
        let labels: Vec<(&str, &str)> = self
            .labels
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        check(&RequestAttributes {
            api_key_id: &self.api_key_id,
            team: &self.team,
            user_id: self.user_id.as_deref(),
            customer_id: self.customer_id.as_deref(),
            workflow: &self.workflow,
            environment: &self.environment,
            provider: &self.provider,
            model: &self.model,
            endpoint: &self.endpoint,
            modality: &self.modality,
            labels: &labels,
        })
    }
}

/// Parses a declared header value into `field` (the first value wins); a value that does not
/// parse becomes a problem.
fn declare<T: std::str::FromStr>(
    field: &mut Option<T>,
    name: &str,
    value: &str,
    invalid: &mut Vec<String>,
) {
    if field.is_some() {
        return;
    }
    match value.parse() {
        Ok(parsed) => *field = Some(parsed),
        Err(_) => invalid.push(format!("{HEADER_PREFIX}{name}: {value:?} does not parse")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_in_any_case_fill_the_attributes_and_the_first_value_wins() {
        let attributes = Attributes::from_headers([
            ("X-QuotaFlow-Api-Key", " key-1 "),
            ("x-quotaflow-team", "search"),
            ("x-quotaflow-team", "other"),
            ("x-quotaflow-user", "alice"),
            ("x-quotaflow-label-feature", "summaries"),
            ("x-quotaflow-label-", "ignored"),
            ("x-quotaflow-unknown", "ignored"),
            ("authorization", "Bearer secret"),
            ("x-quotaflow-", "ignored"),
        ]);
        assert_eq!(
            attributes,
            Attributes {
                api_key_id: "key-1".into(),
                team: "search".into(),
                user_id: Some("alice".into()),
                labels: [("feature".to_owned(), "summaries".to_owned())].into(),
                ..Attributes::default()
            }
        );
        let declared = Attributes::from_headers([
            ("x-quotaflow-input-tokens", "50000"),
            ("x-quotaflow-image-tier", "final"),
            ("x-quotaflow-video-resolution", "1080p"),
            ("x-quotaflow-video-seconds", "ten"),
        ]);
        assert_eq!(declared.input_tokens, Some(50_000));
        assert_eq!(declared.image_tier, Some(ImageTier::Final));
        assert_eq!(declared.video_resolution, Some(Resolution(1080)));
        assert_eq!(declared.video_seconds, None);
        assert_eq!(
            declared.invalid,
            vec!["x-quotaflow-video-seconds: \"ten\" does not parse".to_owned()]
        );
        attributes.with(|request| {
            assert_eq!(request.api_key_id, "key-1");
            assert_eq!(request.customer_id, None);
            assert_eq!(request.labels, &[("feature", "summaries")]);
        });
    }
}
