//! Validation shared by the HTTP API, the producer library and the Kafka readers (owned by the
//! validation/producer work; interface fixed here so the API and archive can build on it).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Limits every usage event must respect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// How far into the future `occurred_at` may be (clock skew between gateways and us).
    #[serde(with = "humantime_secs")]
    pub max_future_skew: Duration,
    /// How far into the past `occurred_at` may be.
    #[serde(with = "humantime_secs")]
    pub max_past_age: Duration,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            max_future_skew: Duration::from_secs(300),
            max_past_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// One reason an event is invalid: the JSON path of the field and a sentence for a human.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// JSON path of the offending field, e.g. `labels.feature` or `input_tokens`.
    pub field: String,
    /// Stable machine-readable kind, e.g. `out_of_range`, `missing`, `too_long`.
    pub kind: String,
    /// What is wrong and what is allowed.
    pub reason: String,
}

/// Durations in config files as whole seconds.
mod humantime_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(duration.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_secs)
    }
}
