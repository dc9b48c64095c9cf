//! The raw archive: usage topic → ClickHouse `usage_events_raw`, exactly once (owned by the archive work).

use serde::{Deserialize, Serialize};

/// Batching and group settings of the raw archive consumer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {}
