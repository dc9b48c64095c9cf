//! Which totals an event counts toward: its scopes, and the window specs of each.
//!
//! An event counts under
//! - **one single-dimension scope per dimension** ([`SingleDimension`]): `api_key_id`, `team`,
//!   `user_id`, `customer_id`, `workflow`, `environment`, `provider`, `model`, `endpoint`,
//!   `modality`; `user_id` and `customer_id` only when the event has them. Each is counted in
//!   the UTC minute, hour, day, ISO week and month windows ([`UTC_CALENDAR_KINDS`]).
//!   `scope_kind` is the dimension name, `scope_key` the event's value.
//! - **one compound scope per matching policy** that has a window: `scope_kind` is
//!   `policy:<policy id>@<definition>` ([`policy::Policy::totals_scope_kind`]: one per
//!   definition of what the policy counts; no dimension name contains `:`, so the two never
//!   collide) and
//!   `scope_key` is [`policy::Policy::scope_key`]'s rendering (`team=search|model=gpt-4o`),
//!   counted in the policy's own window (kind and time zone, or campaign).
//!
//! Policies without a window (the `concurrent_jobs` gauge) have no window totals and are left out
//! ([`ScopePlan::gauge_policies`] names them); their level is the scope's pending-jobs count.
//!
//! # Allocation
//! [`ScopePlan::scopes_of`] is an iterator over borrowed data: single-dimension keys borrow the
//! event's strings and kind names are precomputed. The one allocation per event and matching
//! policy is the rendered key [`policy::Policy::scope_key`] builds.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use chrono_tz::Tz;
use policy::{EventDims, Policy, PolicySet, ScopeKey};
use quotaflow_windows::{CampaignId, WindowError, WindowKind, WindowSpec};
use schemas::UsageEvent;

/// The calendar kinds of single-dimension scopes, all in UTC; spec indices `0..5` of a plan.
pub const UTC_CALENDAR_KINDS: [WindowKind; 5] = [
    WindowKind::Minute,
    WindowKind::Hour,
    WindowKind::Day,
    WindowKind::Week,
    WindowKind::Month,
];

/// One event dimension that has its own scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SingleDimension {
    /// `api_key_id`.
    ApiKeyId,
    /// `team`.
    Team,
    /// `user_id`, when the event has one.
    UserId,
    /// `customer_id`, when the event has one.
    CustomerId,
    /// `workflow`.
    Workflow,
    /// `environment`.
    Environment,
    /// `provider`.
    Provider,
    /// `model`.
    Model,
    /// `endpoint`.
    Endpoint,
    /// `modality`.
    Modality,
}

impl SingleDimension {
    /// Every dimension, in this order; [`SingleDimension::index`] is the position.
    pub const ALL: [SingleDimension; 10] = [
        SingleDimension::ApiKeyId,
        SingleDimension::Team,
        SingleDimension::UserId,
        SingleDimension::CustomerId,
        SingleDimension::Workflow,
        SingleDimension::Environment,
        SingleDimension::Provider,
        SingleDimension::Model,
        SingleDimension::Endpoint,
        SingleDimension::Modality,
    ];

    /// The `scope_kind`: the dimension's name as events and policies spell it.
    pub const fn name(self) -> &'static str {
        match self {
            SingleDimension::ApiKeyId => "api_key_id",
            SingleDimension::Team => "team",
            SingleDimension::UserId => "user_id",
            SingleDimension::CustomerId => "customer_id",
            SingleDimension::Workflow => "workflow",
            SingleDimension::Environment => "environment",
            SingleDimension::Provider => "provider",
            SingleDimension::Model => "model",
            SingleDimension::Endpoint => "endpoint",
            SingleDimension::Modality => "modality",
        }
    }

    /// The position in [`SingleDimension::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The event's value; `None` when it lacks the dimension (optional ids).
    pub fn value<'e>(self, dims: &EventDims<'e>) -> Option<&'e str> {
        match self {
            SingleDimension::ApiKeyId => Some(dims.api_key_id),
            SingleDimension::Team => Some(dims.team),
            SingleDimension::UserId => dims.user_id,
            SingleDimension::CustomerId => dims.customer_id,
            SingleDimension::Workflow => Some(dims.workflow),
            SingleDimension::Environment => Some(dims.environment),
            SingleDimension::Provider => Some(dims.provider),
            SingleDimension::Model => Some(dims.model),
            SingleDimension::Endpoint => Some(dims.endpoint),
            SingleDimension::Modality => Some(dims.modality.as_str()),
        }
    }
}

/// What a scope groups by: one dimension, or a policy (by its position in the [`ScopePlan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeKind {
    /// A single-dimension scope.
    Dimension(SingleDimension),
    /// The compound scope of the plan's `index`-th windowed policy.
    Policy(usize),
}

/// A scope's key: borrowed from the event, or rendered by a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeValue<'e> {
    /// A dimension's value, borrowed from the event.
    Borrowed(&'e str),
    /// A policy's rendered scope (owns its string).
    Rendered(ScopeKey),
}

impl ScopeValue<'_> {
    /// The `scope_key` text.
    pub fn as_str(&self) -> &str {
        match self {
            ScopeValue::Borrowed(value) => value,
            ScopeValue::Rendered(key) => key.as_str(),
        }
    }
}

impl fmt::Display for ScopeValue<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One scope an event counts under, and the window specs it is counted in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventScope<'e> {
    /// What the scope groups by.
    pub kind: ScopeKind,
    /// The scope's value(s).
    pub key: ScopeValue<'e>,
    /// Indices into [`ScopePlan::specs`] of the windows this scope is counted in.
    pub spec_indices: Range<usize>,
}

/// A windowed policy, ready for the hot path.
#[derive(Debug, Clone)]
struct PolicyScope {
    /// The policy (matching and scope rendering).
    policy: Policy,
    /// `policy:<id>@<definition>`, the `scope_kind` of its totals.
    kind_name: Arc<str>,
}

/// Every window spec and every windowed policy, built once per policy set.
#[derive(Debug, Clone)]
pub struct ScopePlan {
    /// `0..5`: the UTC calendar specs of single-dimension scopes; `5 + i`: policy `i`'s window.
    specs: Vec<WindowSpec>,
    /// The windowed policies, in the policy set's (id) order.
    policies: Vec<PolicyScope>,
    /// Ids of policies without a window (gauges), which have no window totals.
    gauge_policies: Vec<Arc<str>>,
}

/// A policy whose window the `windows` crate cannot represent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {policy_id}: window not supported: {source}")]
pub struct PolicyWindowError {
    /// The policy.
    pub policy_id: String,
    /// Why (e.g. a campaign name outside `A-Z a-z 0-9 . _ -`, which window ids cannot carry).
    #[source]
    pub source: WindowError,
}

impl ScopePlan {
    /// The plan for `policies`. Fails if a policy window cannot be a [`WindowSpec`] (a campaign
    /// name that is not a valid [`CampaignId`]): a configuration error.
    pub fn new(policies: &PolicySet) -> Result<ScopePlan, PolicyWindowError> {
        let mut specs: Vec<WindowSpec> = UTC_CALENDAR_KINDS
            .iter()
            .map(|kind| WindowSpec::calendar(kind.clone(), Tz::UTC).expect("calendar kind"))
            .collect();
        let mut windowed = Vec::new();
        let mut gauge_policies = Vec::new();
        for policy in policies.policies() {
            let Some(window) = policy.window() else {
                gauge_policies.push(Arc::from(policy.id()));
                continue;
            };
            let spec = policy_spec(window).map_err(|source| PolicyWindowError {
                policy_id: policy.id().to_owned(),
                source,
            })?;
            specs.push(spec);
            windowed.push(PolicyScope {
                policy: policy.clone(),
                kind_name: Arc::from(policy.totals_scope_kind()),
            });
        }
        Ok(ScopePlan {
            specs,
            policies: windowed,
            gauge_policies,
        })
    }

    /// Every window spec; indices are those of [`EventScope::spec_indices`].
    pub fn specs(&self) -> &[WindowSpec] {
        &self.specs
    }

    /// Ids of the policies left out because they have no window.
    pub fn gauge_policies(&self) -> &[Arc<str>] {
        &self.gauge_policies
    }

    /// Number of windowed policies (the range of [`ScopeKind::Policy`] indices).
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// The `scope_kind` text: the dimension name, or `policy:<id>@<definition>`.
    pub fn kind_name(&self, kind: ScopeKind) -> &str {
        match kind {
            ScopeKind::Dimension(dimension) => dimension.name(),
            ScopeKind::Policy(index) => &self.policies[index].kind_name,
        }
    }

    /// Issue 13 point 7: the spec whose window decides whether a value of `kind` has its own
    /// totals (the cardinality limit counts distinct values per window of this spec): the UTC
    /// month for a single dimension (the longest of its windows, so a value admitted keeps its
    /// own totals in every shorter window of the month), the policy's own window for a policy.
    pub fn admission_spec(&self, kind: ScopeKind) -> usize {
        match kind {
            ScopeKind::Dimension(_) => UTC_CALENDAR_KINDS.len() - 1,
            ScopeKind::Policy(index) => UTC_CALENDAR_KINDS.len() + index,
        }
    }

    /// The `scope_key` of `kind`'s overflow bucket ([`policy::OVERFLOW_VALUE`]): the bare value
    /// for a dimension, every `group_by` dimension set to it for a policy.
    pub fn overflow_key(&self, kind: ScopeKind) -> String {
        match kind {
            ScopeKind::Dimension(_) => policy::OVERFLOW_VALUE.to_owned(),
            ScopeKind::Policy(index) => self.policies[index]
                .policy
                .overflow_scope_key()
                .as_str()
                .to_owned(),
        }
    }

    /// The kind named `name` (a dimension name or `policy:<id>@<definition>`) and its spec
    /// indices; `None`
    /// for a name this plan does not have (e.g. a policy removed since a total was stored).
    pub fn kind_by_name(&self, name: &str) -> Option<(ScopeKind, Range<usize>)> {
        if let Some(dimension) = SingleDimension::ALL
            .into_iter()
            .find(|dimension| dimension.name() == name)
        {
            return Some((ScopeKind::Dimension(dimension), 0..UTC_CALENDAR_KINDS.len()));
        }
        let index = self
            .policies
            .iter()
            .position(|scope| &*scope.kind_name == name)?;
        let spec = UTC_CALENDAR_KINDS.len() + index;
        Some((ScopeKind::Policy(index), spec..spec + 1))
    }

    /// The scopes `event` counts under, single dimensions first (in [`SingleDimension::ALL`]
    /// order), then matching policies (in id order). Deterministic: the same event always yields
    /// the same sequence.
    pub fn scopes_of<'s>(
        &'s self,
        event: &'s UsageEvent,
    ) -> impl Iterator<Item = EventScope<'s>> + 's {
        let dims = EventDims::from_event(event);
        let single = SingleDimension::ALL
            .into_iter()
            .filter_map(move |dimension| {
                dimension.value(&dims).map(|value| EventScope {
                    kind: ScopeKind::Dimension(dimension),
                    key: ScopeValue::Borrowed(value),
                    spec_indices: 0..UTC_CALENDAR_KINDS.len(),
                })
            });
        let compound = self
            .policies
            .iter()
            .enumerate()
            .filter_map(move |(index, scope)| {
                scope.policy.scope_key(&dims).map(|key| {
                    let spec = UTC_CALENDAR_KINDS.len() + index;
                    EventScope {
                        kind: ScopeKind::Policy(index),
                        key: ScopeValue::Rendered(key),
                        spec_indices: spec..spec + 1,
                    }
                })
            });
        single.chain(compound)
    }
}

/// The matching policies' rendered scope keys of one event, in buffers reused from event to
/// event ([`ScopePlan::policy_keys_into`]): the hot path's allocation-free
/// [`ScopePlan::scopes_of`] for policies.
#[derive(Debug, Default)]
pub struct PolicyKeys {
    /// One buffer per policy of the plan (grown on first use, then reused).
    keys: Vec<String>,
    /// Indices of the matching policies, in id order.
    matching: Vec<usize>,
}

impl PolicyKeys {
    /// `(policy index, rendered key)` of every matching policy, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &str)> {
        self.matching
            .iter()
            .map(|index| (*index, self.keys[*index].as_str()))
    }
}

impl ScopePlan {
    /// Renders the scope key of every policy `dims` matches into `keys` (reusing its buffers):
    /// the same keys, in the same order, as the policy scopes of [`Self::scopes_of`]. A policy
    /// `i` is counted in spec `UTC_CALENDAR_KINDS.len() + i`.
    pub fn policy_keys_into(&self, dims: &EventDims<'_>, keys: &mut PolicyKeys) {
        if keys.keys.len() < self.policies.len() {
            keys.keys.resize_with(self.policies.len(), String::new);
        }
        keys.matching.clear();
        for (index, scope) in self.policies.iter().enumerate() {
            if scope.policy.scope_key_into(dims, &mut keys.keys[index]) {
                keys.matching.push(index);
            }
        }
    }
}

/// A policy's compiled window as a [`WindowSpec`] (what its totals are kept in).
pub fn policy_spec(window: &policy::Window) -> Result<WindowSpec, WindowError> {
    use policy::WindowKind as PolicyKind;
    let kind = match window.kind {
        PolicyKind::Minute => WindowKind::Minute,
        PolicyKind::Hour => WindowKind::Hour,
        PolicyKind::Day => WindowKind::Day,
        PolicyKind::Week => WindowKind::Week,
        PolicyKind::Month => WindowKind::Month,
        PolicyKind::Campaign => {
            let Some(campaign) = &window.campaign else {
                return Err(WindowError::CampaignWithoutBounds(String::new()));
            };
            return WindowSpec::campaign(
                CampaignId::new(campaign.name.as_str())?,
                campaign.start,
                campaign.end,
                window.time_zone,
            );
        }
    };
    WindowSpec::calendar(kind, window.time_zone)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::Utc;
    use schemas::fixtures::text_event;

    pub(crate) use crate::fixtures::POLICIES;

    /// The `scope_kind` of the test policy `id` (`policy:<id>@<definition>`).
    pub(crate) fn kind(id: &str) -> String {
        PolicySet::from_str("test.yaml", POLICIES)
            .expect("policies load")
            .get(id)
            .expect("a test policy")
            .totals_scope_kind()
    }

    pub(crate) fn plan() -> ScopePlan {
        ScopePlan::new(&PolicySet::from_str("test.yaml", POLICIES).expect("policies load"))
            .expect("plan")
    }

    #[test]
    fn single_dimensions_then_matching_policies() {
        let plan = plan();
        let mut event = text_event("e1", Utc::now());
        let scopes: Vec<(String, String, Range<usize>)> = plan
            .scopes_of(&event)
            .map(|scope| {
                (
                    plan.kind_name(scope.kind).to_owned(),
                    scope.key.to_string(),
                    scope.spec_indices,
                )
            })
            .collect();
        let expected_single = [
            ("api_key_id", "key-1"),
            ("team", "search"),
            ("workflow", "answer"),
            ("environment", "prod"),
            ("provider", "openai"),
            ("model", "gpt-4o"),
            ("endpoint", "chat_completions"),
            ("modality", "text"),
        ];
        assert_eq!(scopes.len(), expected_single.len() + 2);
        for ((kind, key, specs), (want_kind, want_key)) in scopes.iter().zip(expected_single) {
            assert_eq!(
                (kind.as_str(), key.as_str(), specs),
                (want_kind, want_key, &(0..5))
            );
        }
        // Policies in id order: key-monthly-requests (0), staging-only (1, no match), team-model-daily-cost (2).
        assert_eq!(
            scopes[8],
            (
                kind("key-monthly-requests"),
                "api_key_id=key-1|user_id".to_owned(),
                5..6
            )
        );
        assert_eq!(
            scopes[9],
            (
                kind("team-model-daily-cost"),
                "team=search|model=gpt-4o".to_owned(),
                7..8
            )
        );
        assert_eq!(plan.specs()[7].time_zone(), chrono_tz::America::New_York);
        assert_eq!(plan.gauge_policies(), &[Arc::from("video-concurrency")]);

        event.user_id = Some("u1".to_owned());
        event.customer_id = Some("c1".to_owned());
        event.environment = "staging".to_owned();
        let kinds: Vec<&str> = plan
            .scopes_of(&event)
            .map(|scope| plan.kind_name(scope.kind))
            .collect();
        assert_eq!(
            kinds,
            [
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
                kind("key-monthly-requests").as_str(),
                kind("staging-only").as_str(),
            ]
        );
    }

    #[test]
    fn campaign_names_must_be_window_ids() {
        let campaign = |name: &str| {
            format!(
                r#"
id: launch
owner: {{team: growth, contact: g@example.com}}
description: campaign
unit: cost_usd
window:
  kind: campaign
  campaign: {{name: "{name}", start: 2026-05-01, end: 2026-06-01}}
hard_cap: 10
action: {{kind: alert_only}}
"#
            )
        };
        let ok = PolicySet::from_str("c.yaml", &campaign("spring-2026")).unwrap();
        let plan = ScopePlan::new(&ok).unwrap();
        assert_eq!(plan.specs()[5].kind().to_string(), "campaign:spring-2026");
        let bad = PolicySet::from_str("c.yaml", &campaign("spring 2026")).unwrap();
        let error = ScopePlan::new(&bad).unwrap_err();
        assert_eq!(error.policy_id, "launch");
    }
}
