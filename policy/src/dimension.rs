//! Event dimensions that selectors filter on and `group_by` scopes by, and [`EventDims`], the
//! borrowed view of a [`UsageEvent`] that matching reads (no copy per event).

use schemas::{Modality, UsageEvent};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// One dimension of an event, as written in `selector` keys and `group_by` items.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dimension {
    /// `api_key_id`.
    ApiKeyId,
    /// `team`.
    Team,
    /// `user_id` (optional on events).
    UserId,
    /// `customer_id` (optional on events).
    CustomerId,
    /// `workflow`.
    Workflow,
    /// `environment`.
    Environment,
    /// `provider`.
    Provider,
    /// `model` (selector values may be globs).
    Model,
    /// `endpoint`.
    Endpoint,
    /// `modality` (text, image, video, audio, embedding, batch).
    Modality,
    /// `labels.<key>`: one entry of the event's free labels (absent when the event lacks it).
    Label(String),
}

/// The plain dimension names (labels are written `labels.<key>`).
pub const DIMENSION_NAMES: &[&str] = &[
    "api_key_id",
    "team",
    "user_id",
    "customer_id",
    "workflow",
    "environment",
    "provider",
    "model",
    "endpoint",
    "modality",
];

/// The prefix of label dimensions.
const LABEL_PREFIX: &str = "labels.";

/// A string that is not a dimension.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown dimension {0:?}; allowed: {names}, or labels.<key>",
    names = DIMENSION_NAMES.join(", ")
)]
pub struct UnknownDimension(pub String);

impl FromStr for Dimension {
    type Err = UnknownDimension;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "api_key_id" => Dimension::ApiKeyId,
            "team" => Dimension::Team,
            "user_id" => Dimension::UserId,
            "customer_id" => Dimension::CustomerId,
            "workflow" => Dimension::Workflow,
            "environment" => Dimension::Environment,
            "provider" => Dimension::Provider,
            "model" => Dimension::Model,
            "endpoint" => Dimension::Endpoint,
            "modality" => Dimension::Modality,
            _ => match text.strip_prefix(LABEL_PREFIX) {
                Some(key) if !key.is_empty() => Dimension::Label(key.to_owned()),
                _ => return Err(UnknownDimension(text.to_owned())),
            },
        })
    }
}

impl Dimension {
    /// The name as written in policies (`team`, `labels.feature`).
    pub fn name(&self) -> String {
        match self {
            Dimension::Label(key) => format!("{LABEL_PREFIX}{key}"),
            other => other.plain_name().to_owned(),
        }
    }

    /// The name of a non-label dimension; `labels` for a label.
    fn plain_name(&self) -> &'static str {
        match self {
            Dimension::ApiKeyId => "api_key_id",
            Dimension::Team => "team",
            Dimension::UserId => "user_id",
            Dimension::CustomerId => "customer_id",
            Dimension::Workflow => "workflow",
            Dimension::Environment => "environment",
            Dimension::Provider => "provider",
            Dimension::Model => "model",
            Dimension::Endpoint => "endpoint",
            Dimension::Modality => "modality",
            Dimension::Label(_) => "labels",
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dimension::Label(key) => write!(formatter, "{LABEL_PREFIX}{key}"),
            other => formatter.write_str(other.plain_name()),
        }
    }
}

/// The dimensions of one event, borrowed: building it copies no string.
#[derive(Debug, Clone, Copy)]
pub struct EventDims<'a> {
    /// API key id.
    pub api_key_id: &'a str,
    /// Team.
    pub team: &'a str,
    /// End user, when known.
    pub user_id: Option<&'a str>,
    /// Customer, when known.
    pub customer_id: Option<&'a str>,
    /// Workflow.
    pub workflow: &'a str,
    /// Environment (prod, staging …).
    pub environment: &'a str,
    /// Provider.
    pub provider: &'a str,
    /// Model (a price-catalog row name).
    pub model: &'a str,
    /// Endpoint family.
    pub endpoint: &'a str,
    /// Modality.
    pub modality: Modality,
    /// Free labels.
    pub labels: &'a BTreeMap<String, String>,
}

impl<'a> EventDims<'a> {
    /// The view of an event's dimensions.
    pub fn from_event(event: &'a UsageEvent) -> Self {
        EventDims {
            api_key_id: &event.api_key_id,
            team: &event.team,
            user_id: event.user_id.as_deref(),
            customer_id: event.customer_id.as_deref(),
            workflow: &event.workflow,
            environment: &event.environment,
            provider: &event.provider,
            model: &event.model,
            endpoint: &event.endpoint,
            modality: event.modality,
            labels: &event.labels,
        }
    }

    /// The event's value for a dimension; `None` when the event lacks it (optional ids, labels).
    pub fn get(&self, dimension: &Dimension) -> Option<&'a str> {
        match dimension {
            Dimension::ApiKeyId => Some(self.api_key_id),
            Dimension::Team => Some(self.team),
            Dimension::UserId => self.user_id,
            Dimension::CustomerId => self.customer_id,
            Dimension::Workflow => Some(self.workflow),
            Dimension::Environment => Some(self.environment),
            Dimension::Provider => Some(self.provider),
            Dimension::Model => Some(self.model),
            Dimension::Endpoint => Some(self.endpoint),
            Dimension::Modality => Some(self.modality.as_str()),
            Dimension::Label(key) => self.labels.get(key).map(String::as_str),
        }
    }
}

impl<'a> From<&'a UsageEvent> for EventDims<'a> {
    fn from(event: &'a UsageEvent) -> Self {
        EventDims::from_event(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in DIMENSION_NAMES.iter().copied().chain(["labels.feature"]) {
            let dimension: Dimension = name.parse().expect(name);
            assert_eq!(dimension.name(), name);
            assert_eq!(dimension.to_string(), name);
        }
        assert!("labels.".parse::<Dimension>().is_err());
        assert!("tenant".parse::<Dimension>().is_err());
    }
}
