//! [`Policy`]: a validated record with its matchers compiled, for the per-event hot path.
//!
//! Matching cost per event: one comparison per filter (environment, route fields and selector
//! entries merged into one list, exact filters first), each a binary search in a sorted list of
//! values or a glob run; no allocation. [`Policy::scope_key`] allocates the one key string.

use crate::dimension::{Dimension, EventDims};
use crate::glob::Glob;
use crate::record::{ActionKind, PolicyRecord, RuleAction, WindowKind};
use crate::scope::ScopeKey;
use crate::source_map::Position;
use crate::unit::Unit;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use schemas::Severity;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Prefix of the `scope_kind` of a policy's own window totals (`policy:<id>@<definition>`).
pub const TOTALS_SCOPE_PREFIX: &str = "policy:";

/// A loaded, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The id, shared with every [`ScopeKey`] of the policy.
    pub(crate) id: Arc<str>,
    /// See [`Policy::definition`].
    pub(crate) definition: Arc<str>,
    /// The record as loaded (defaults filled in, amounts exact and normalized).
    pub(crate) record: PolicyRecord,
    /// Where the policy was defined.
    pub(crate) file: PathBuf,
    /// Position of its first key.
    pub(crate) position: Position,
    /// The compiled window; `None` for gauges.
    pub(crate) window: Option<Window>,
    /// Every condition an event must meet, cheapest first.
    pub(crate) filters: Vec<Filter>,
    /// `group_by`, parsed, with the names as written (rendered into scope keys).
    pub(crate) group_by: Vec<(Dimension, String)>,
    /// `model_rules.allow_list`, compiled; empty = every model.
    pub(crate) allow_list: Vec<Glob>,
}

/// One matching condition: the event's value of `dimension` must be one of `values`.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    /// The dimension read from the event.
    pub(crate) dimension: Dimension,
    /// The accepted values.
    pub(crate) values: ValueSet,
}

/// Accepted values of one dimension: exact names (sorted, binary-searched) and globs.
#[derive(Debug, Clone, Default)]
pub(crate) struct ValueSet {
    /// Exact values, sorted and deduplicated.
    pub(crate) exact: Vec<String>,
    /// Glob patterns (only for `model`).
    pub(crate) globs: Vec<Glob>,
}

impl ValueSet {
    /// Whether `value` is accepted; an absent value never is.
    fn accepts(&self, value: Option<&str>) -> bool {
        let Some(value) = value else {
            return false;
        };
        self.exact
            .binary_search_by(|candidate| candidate.as_str().cmp(value))
            .is_ok()
            || self.globs.iter().any(|glob| glob.is_match(value))
    }

    /// A rough cost rank: exact-only sets are cheaper than globs.
    pub(crate) fn cost(&self) -> usize {
        self.globs.len() * 4 + usize::from(!self.exact.is_empty())
    }
}

/// A policy's window, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Calendar window kind.
    pub kind: WindowKind,
    /// The time zone whose calendar bounds days, weeks and months.
    pub time_zone: chrono_tz::Tz,
    /// The campaign bounds, for `kind: campaign`.
    pub campaign: Option<Campaign>,
}

impl Window {
    /// The window as `ControlDecision::window` names it: `day`, `minute`, `campaign:<name>`.
    pub fn label(&self) -> String {
        match &self.campaign {
            Some(campaign) => format!("campaign:{}", campaign.name),
            None => self.kind.as_str().to_owned(),
        }
    }
}

/// A campaign window's bounds, resolved to UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    /// The campaign's name.
    pub name: String,
    /// First instant (inclusive).
    pub start: DateTime<Utc>,
    /// End (exclusive), after `start`.
    pub end: DateTime<Utc>,
}

/// What the price catalog says about a model (`pricing::ModelEntry::deprecation_date` and
/// `is_preview`), the input of [`Policy::model_verdict`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelFacts {
    /// The day the provider retires the model, if announced.
    pub deprecation_date: Option<NaiveDate>,
    /// Whether the model is a preview/experimental one.
    pub is_preview: bool,
}

/// Why a model is flagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelIssue {
    /// The policy has an allow-list and the model is not on it.
    NotAllowListed,
    /// Retired since this day.
    Deprecated {
        /// The catalog's deprecation date.
        since: NaiveDate,
    },
    /// A preview/experimental model.
    Preview,
}

/// The outcome of [`Policy::model_verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelVerdict {
    /// Nothing to do.
    Allow,
    /// Let it through and alert.
    Alert(ModelIssue),
    /// Block it.
    Block(ModelIssue),
}

impl Policy {
    /// The policy id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A fingerprint of **what the policy counts**: its selector (`environment`, `route`,
    /// `selector`), `group_by`, `unit` and `window`, normalized (defaults filled in, keys sorted)
    /// and hashed (FNV-1a 64, the first 8 hex digits). Thresholds, owners, actions and the rest
    /// do not change it. Totals are kept per definition (see [`Policy::totals_scope_kind`]), so a
    /// change of what is counted starts new totals instead of adding to the old ones.
    pub fn definition(&self) -> &str {
        &self.definition
    }

    /// The `scope_kind` of this definition's window totals: `policy:<id>@<definition>`.
    pub fn totals_scope_kind(&self) -> String {
        format!("{TOTALS_SCOPE_PREFIX}{}@{}", self.id, self.definition)
    }

    /// The record as loaded: every field, defaults filled in.
    pub fn record(&self) -> &PolicyRecord {
        &self.record
    }

    /// The file the policy was loaded from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Where in the file the policy starts.
    pub fn position(&self) -> Position {
        self.position
    }

    /// What the policy counts.
    pub fn unit(&self) -> Unit {
        self.record.unit
    }

    /// The limit per scope and window.
    pub fn hard_cap(&self) -> Decimal {
        self.record.hard_cap
    }

    /// What happens at the cap.
    pub fn action_kind(&self) -> ActionKind {
        self.record.action.kind
    }

    /// The compiled window; `None` for the `concurrent_jobs` gauge.
    pub fn window(&self) -> Option<&Window> {
        self.window.as_ref()
    }

    /// The `group_by` dimensions, in the policy's order.
    pub fn group_by(&self) -> impl Iterator<Item = &Dimension> {
        self.group_by.iter().map(|(dimension, _)| dimension)
    }

    /// The scope of the policy's overflow bucket ([`crate::OVERFLOW_VALUE`]).
    pub fn overflow_scope_key(&self) -> ScopeKey {
        ScopeKey::overflow(
            Arc::clone(&self.id),
            self.group_by.iter().map(|(_, name)| name.as_str()),
        )
    }

    /// Whether the policy runs in shadow mode (a dry run: decided, audited, never enforced).
    pub fn is_shadow(&self) -> bool {
        self.record.shadow
    }

    /// The policy's request-time admission rules, if it has any.
    pub fn admission(&self) -> Option<&crate::admission::AdmissionRules> {
        self.record.admission.as_ref()
    }

    /// Whether the event counts toward this policy (environment, route and selector all match).
    pub fn matches(&self, event: &EventDims<'_>) -> bool {
        self.filters
            .iter()
            .all(|filter| filter.values.accepts(event.get(&filter.dimension)))
    }

    /// The filters that accept exactly one value, as `dimension name → value` (e.g.
    /// `environment=prod`, `provider=openai`). A control decision adds them to a scope so that
    /// gateways block only the traffic the policy counts, not everything of the scope.
    pub fn fixed_dimensions(&self) -> std::collections::BTreeMap<String, String> {
        self.filters
            .iter()
            .filter(|filter| filter.values.globs.is_empty() && filter.values.exact.len() == 1)
            .map(|filter| (filter.dimension.to_string(), filter.values.exact[0].clone()))
            .collect()
    }

    /// The scope a decision about `scope` (a group-by scope, absent dimensions left out)
    /// enforces: it plus the policy's single-valued filters, so gateways stop only the traffic
    /// the policy counts. A fallback-spend policy with a `route.fallback_route`
    /// (`provider/model`) blocks that route only.
    pub fn enforcement_scope(
        &self,
        scope: &std::collections::BTreeMap<String, String>,
    ) -> std::collections::BTreeMap<String, String> {
        let mut enforced = self.fixed_dimensions();
        if self.unit() == Unit::FallbackCostUsd {
            if let Some((provider, model)) = self
                .record
                .route
                .fallback_route
                .as_deref()
                .and_then(|route| route.split_once('/'))
            {
                enforced.insert("provider".to_owned(), provider.to_owned());
                enforced.insert("model".to_owned(), model.to_owned());
            }
        }
        enforced.extend(
            scope
                .iter()
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        enforced
    }

    /// The `group_by` dimensions the events of `scope_key` lack (not named by `enforcement`),
    /// for `ControlDecision::absent`: a decision for the bucket without `user_id` applies only
    /// to requests without `user_id`, so no decision scope drops a `group_by` dimension.
    pub fn enforcement_absent(
        enforcement: &std::collections::BTreeMap<String, String>,
        scope_key: &str,
    ) -> Vec<String> {
        ScopeKey::absent_of(scope_key)
            .into_iter()
            .filter(|dimension| !enforcement.contains_key(dimension))
            .collect()
    }

    /// The control-topic key of this policy's decisions about the scope rendered `scope_key`
    /// (what the alerter publishes them under, what gateways look them up by).
    pub fn control_key(&self, scope_key: &str) -> String {
        let enforcement = self.enforcement_scope(&ScopeKey::present_of(scope_key));
        let absent = Policy::enforcement_absent(&enforcement, scope_key);
        schemas::ControlDecision::compaction_key_with_absent(&self.id, &enforcement, &absent)
    }

    /// The scope the event counts toward, or `None` when it does not match the policy.
    pub fn scope_key(&self, event: &EventDims<'_>) -> Option<ScopeKey> {
        if !self.matches(event) {
            return None;
        }
        Some(self.scope_key_unchecked(event))
    }

    /// [`Self::scope_key`] rendered into `key` (reused, see [`ScopeKey::render_into`]);
    /// `false` (and `key` untouched) when the event does not match.
    pub fn scope_key_into(&self, event: &EventDims<'_>, key: &mut String) -> bool {
        if !self.matches(event) {
            return false;
        }
        ScopeKey::render_into(
            self.group_by
                .iter()
                .map(|(dimension, name)| (name.as_str(), event.get(dimension))),
            key,
        );
        true
    }

    /// The scope of an event already known to match.
    pub fn scope_key_unchecked(&self, event: &EventDims<'_>) -> ScopeKey {
        ScopeKey::render(
            Arc::clone(&self.id),
            self.group_by
                .iter()
                .map(|(dimension, name)| (name.as_str(), event.get(dimension))),
        )
    }

    /// What the policy's `model_rules` say about `model` on `today`. `facts` is `None` for a
    /// model unknown to the catalog (then only the allow-list applies). The strongest finding
    /// wins: block over alert over allow; among equals, allow-list, then deprecation, then
    /// preview.
    pub fn model_verdict(
        &self,
        model: &str,
        facts: Option<ModelFacts>,
        today: NaiveDate,
    ) -> ModelVerdict {
        if self.record.model_rules.is_none() {
            return ModelVerdict::Allow;
        }
        if !self.allow_list.is_empty() && !self.allow_list.iter().any(|glob| glob.is_match(model)) {
            return ModelVerdict::Block(ModelIssue::NotAllowListed);
        }
        self.lifecycle_verdict(facts, today)
    }

    /// What the policy's `model_rules` say about a model's catalog facts alone (deprecation and
    /// preview), ignoring the allow-list: for a catalog row that no request has named yet, whose
    /// deprecation must still be enforced before the first request.
    pub fn lifecycle_verdict(&self, facts: Option<ModelFacts>, today: NaiveDate) -> ModelVerdict {
        let Some(rules) = &self.record.model_rules else {
            return ModelVerdict::Allow;
        };
        let facts = facts.unwrap_or_default();
        let mut findings = Vec::with_capacity(2);
        if let Some(since) = facts.deprecation_date.filter(|date| *date <= today) {
            findings.push((rules.deprecated, ModelIssue::Deprecated { since }));
        }
        if facts.is_preview {
            findings.push((rules.preview, ModelIssue::Preview));
        }
        let strongest = |wanted: RuleAction| {
            findings
                .iter()
                .find(|(action, _)| *action == wanted)
                .map(|(_, issue)| *issue)
        };
        if let Some(issue) = strongest(RuleAction::Block) {
            ModelVerdict::Block(issue)
        } else if let Some(issue) = strongest(RuleAction::Alert) {
            ModelVerdict::Alert(issue)
        } else {
            ModelVerdict::Allow
        }
    }

    /// The severity of the soft alert at `threshold` percent: `notify.severity_by_threshold`,
    /// else `warning`.
    pub fn severity_for_threshold(&self, threshold: u8) -> Severity {
        self.record
            .notify
            .as_ref()
            .and_then(|notify| notify.severity_by_threshold.get(&threshold).copied())
            .unwrap_or(Severity::Warning)
    }

    /// The Slack channel alerts go to: `notify.slack_channel`, else the owner's.
    pub fn slack_channel(&self) -> Option<&str> {
        self.record
            .notify
            .as_ref()
            .and_then(|notify| notify.slack_channel.as_deref())
            .or(self.record.owner.slack_channel.as_deref())
    }

    /// The PagerDuty service pages go to: `notify.pagerduty_service`, else the owner's.
    pub fn pagerduty_service(&self) -> Option<&str> {
        self.record
            .notify
            .as_ref()
            .and_then(|notify| notify.pagerduty_service.as_deref())
            .or(self.record.owner.pagerduty_service.as_deref())
    }
}

/// [`Policy::definition`] of a record.
pub(crate) fn definition_of(record: &PolicyRecord) -> Arc<str> {
    let counted = serde_json::json!({
        "environment": record.environment,
        "route": record.route,
        "selector": record.selector,
        "group_by": record.group_by,
        "unit": record.unit,
        "window": record.window,
    });
    let normalized = serde_json::to_string(&counted).expect("policy records serialize to JSON");
    let hash = crate::load::fnv1a64(normalized.as_bytes());
    Arc::from(format!("{:08x}", hash >> 32))
}

#[cfg(test)]
mod definition_tests {
    use crate::PolicySet;

    fn policy(selector: &str, hard_cap: &str) -> String {
        format!(
            r#"
id: daily
owner: {{team: platform, contact: p@example.com}}
description: cost per team per day
unit: cost_usd
selector: {{team: {selector}}}
group_by: [team]
window: {{kind: day}}
hard_cap: {hard_cap}
action: {{kind: alert_only}}
"#
        )
    }

    fn definition(text: &str) -> String {
        let set = PolicySet::from_str("p.yaml", text).unwrap();
        set.get("daily").unwrap().definition().to_owned()
    }

    #[test]
    fn the_definition_follows_what_is_counted_not_thresholds() {
        let base = definition(&policy("search", "100"));
        assert_eq!(base.len(), 8);
        assert_eq!(base, definition(&policy("search", "250.00")));
        assert_ne!(base, definition(&policy("ads", "100")));
        assert_eq!(
            base,
            definition(&format!("{}shadow: true\n", policy("search", "100"))),
            "a dry run counts what its enforced self counts"
        );
        let set = PolicySet::from_str("p.yaml", &policy("search", "100")).unwrap();
        let kind = format!("policy:daily@{base}");
        assert_eq!(set.get("daily").unwrap().totals_scope_kind(), kind);
        assert!(set.by_totals_scope_kind(&kind).is_some());
        assert!(set.by_totals_scope_kind("policy:daily@00000000").is_none());
        assert!(
            set.by_totals_scope_kind("policy:daily").is_some(),
            "totals of the previous release"
        );
        assert!(set.by_totals_scope_kind("team").is_none());
    }
}
