//! Quota policies as code: YAML records, one loader shared by the aggregator and the alerter,
//! and the per-event matching the aggregator runs. No IO beyond reading the policy files.
//!
//! # Tour
//! - [`record`]: [`PolicyRecord`], the YAML format (every field documented; the reference for
//!   authors is `docs/policies.md`).
//! - [`load`](mod@load): [`PolicySet::load_dir`] / [`PolicySet::from_str`], all-or-nothing
//!   loading that reports **every** error as `file:line:col: reason`; [`check_dir`] and its
//!   [`Report`] for the `policy check` command; [`PolicySet::fingerprint`] to detect reloads that
//!   changed something.
//! - `validate` (private): the checks that relate fields (duplicate ids, degrade
//!   targets, thresholds, campaign bounds, unit vs. window …) and compilation of matchers.
//! - [`policy`]: [`Policy`], with [`Policy::matches`], [`Policy::scope_key`] and
//!   [`Policy::model_verdict`].
//! - [`dimension`]: [`Dimension`] and [`EventDims`], the borrowed view of a
//!   [`schemas::UsageEvent`] that matching reads.
//! - [`scope`]: [`ScopeKey`], the escaped, injective rendering of a scope
//!   (`team=search|model=gpt-4o`).
//! - [`unit`](mod@unit): [`Unit`] and [`Unit::measure`], an event's exact contribution.
//! - [`glob`]: model-name globs, compiled at load.
//! - [`source_map`]: how errors found after parsing are located in the file text.
//! - [`amount`]: exact decimals from YAML, never through `f64`.
//!
//! # Guarantees
//! - A [`PolicySet`] exists only if every file loaded and every check passed; otherwise
//!   [`LoadErrors`] lists every problem found (all files, all policies, all checks of each policy;
//!   a policy's first deserialization error stops the checks of that policy only). Services
//!   keep the previous set when a reload fails.
//! - Amounts are exact decimals: quoted, integer, or unquoted decimals read from their source
//!   text; a number whose text cannot be read is an error, never a rounded float.
//! - Matching allocates nothing; globs and selectors are compiled at load.
//! - Two different scopes of a policy never render to the same [`ScopeKey`].

pub mod admission;
pub mod amount;
pub mod approver;
pub mod dimension;
pub mod error;
pub mod glob;
pub mod load;
pub mod policy;
pub mod record;
pub mod scope;
pub mod source_map;
pub mod threshold;
pub mod unit;
mod validate;

pub use amount::AmountOrPercent;
pub use approver::{Approver, ApproverKey};
pub use dimension::{Dimension, EventDims, UnknownDimension};
pub use error::{LoadError, LoadErrors};
pub use glob::{Glob, GlobError};
pub use load::{check_dir, PolicySet, Report};
pub use policy::{
    Campaign, ModelFacts, ModelIssue, ModelVerdict, Policy, Window, TOTALS_SCOPE_PREFIX,
};
pub use record::{
    Action, ActionKind, Anomaly, ApprovalRule, CampaignRecord, Duration, Instant, ModelRules,
    Notify, Owner, PendingBacklog, PolicyRecord, RetryPolicy, Review, ReviewCadence, Route,
    RuleAction, SharedKey, TimeZone, Values, WindowKind, WindowRecord, ANOMALY_METRICS,
};
pub use scope::{ScopeKey, GLOBAL_SCOPE, OVERFLOW_VALUE};
pub use source_map::Position;
pub use threshold::Threshold;
pub use unit::Unit;
