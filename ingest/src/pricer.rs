//! Applies the price catalog to events (owned by the validation/producer work).

use serde::{Deserialize, Serialize};

/// Which price catalog to use and what to do with events it cannot price.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {}
