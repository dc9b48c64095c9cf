//! The HTTP ingest API (owned by the HTTP work).

use serde::{Deserialize, Serialize};

/// Auth and limits of the HTTP API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {}
