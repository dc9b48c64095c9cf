//! The Rust producer library (`Recorder`): validate, price, encode and produce with delivery
//! confirmation (owned by the validation/producer work).

use serde::{Deserialize, Serialize};

/// Producer-side limits of the [`Recorder`](self).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecorderConfig {}
