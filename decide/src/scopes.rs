//! Remaining quota: what a request's scopes have spent, their limit, what remains, when it resets
//! and the decision in force, per policy that counts the request. `GET /v1/scopes` answers it, and
//! every check carries the tightest one as `RateLimit-*` headers.
//!
//! The totals come from the aggregator's totals topic, followed from its beginning like the
//! control topic ([`gateway::follow`]): the per-partition partials of each policy's own totals
//! (`policy:<id>@<definition>`, the current definitions only; other scope kinds are skipped as
//! they are read), highest version per partial, summed ([`TotalsView`]). The decision in force is
//! the control view's entry for the policy's control key ([`policy::Policy::control_key`]).
//!
//! Guarantees and limits:
//! - **As fresh as the totals topic**, which the aggregator publishes at each flush (about a
//!   second behind the events): `spent` can lag the last second of traffic; the decision in
//!   force is exactly the control topic's.
//! - **Not ready until caught up** with the totals topic as it stood at start: before, answers
//!   say `ready: false` and carry no `RateLimit-*` headers (a missing total would read as an
//!   untouched quota).
//! - **Windowed counter policies only**: a `concurrent_jobs` gauge has no window to reset and is
//!   left out. An approved raise shows as the `limit` of the decision it produced; a raise that
//!   has not produced one yet is not known here (the alerter, which validates approvals, has it).
//! - Ended windows are evicted every minute, so memory holds the policies' live windows.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use gateway::follow::{Apply, Following};
use gateway::{RequestAttributes, Verdict};
use policy::{Policy, PolicySet, ScopeKey};
use quotaflow_client::config::KafkaConfig;
use quotaflow_totals::measures::Measures;
use quotaflow_totals::view::{TotalsView, WindowKey};
use quotaflow_windows::WindowSpec;
use rdkafka::message::{BorrowedMessage, Message};
use rust_decimal::Decimal;
use schemas::quota::{DecisionInForce, ScopeQuota};
use schemas::WindowTotal;
use tracing::warn;

use crate::Checker;

/// The windowed counter policies and the totals of their current windows.
pub struct Scopes {
    policies: Vec<(Policy, WindowSpec)>,
    totals: Arc<RwLock<TotalsView>>,
    following: Option<Following>,
}

impl Scopes {
    /// The windowed counter policies of `policies`, with an empty totals view (tests fill it
    /// with [`Scopes::apply`]; [`Scopes::follow`] follows the totals topic).
    pub fn new(policies: &PolicySet) -> Scopes {
        let mut counted: Vec<(Policy, WindowSpec)> = policies
            .policies()
            .iter()
            .filter_map(|policy| {
                let spec = quotaflow_totals::scopes::policy_spec(policy.window()?).ok()?;
                Some((policy.clone(), spec))
            })
            .collect();
        counted.sort_by(|a, b| a.0.id().cmp(b.0.id()));
        Scopes {
            policies: counted,
            totals: Arc::default(),
            following: None,
        }
    }

    /// Starts following `kafka`'s totals topic (see the module docs).
    pub fn follow(
        mut self,
        kafka: &KafkaConfig,
        client_id: &str,
        probe_interval: Duration,
    ) -> Result<Scopes, gateway::GatewayError> {
        let kinds = self
            .policies
            .iter()
            .map(|(policy, _)| policy.totals_scope_kind())
            .collect();
        let applier = TotalsApplier {
            totals: self.totals.clone(),
            kinds,
            applied: 0,
        };
        self.following = Some(Following::start(
            kafka,
            &format!("{client_id}-totals"),
            &kafka.topics.totals,
            probe_interval,
            applier,
            "totals-follower",
        )?);
        Ok(self)
    }

    /// Whether answers are complete: caught up with the totals topic (always, without one).
    pub fn is_ready(&self) -> bool {
        self.following
            .as_ref()
            .is_none_or(|following| following.health().is_ready())
    }

    /// Whether any policy has a window (else there is nothing to answer).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Applies one total (tests; the follower applies what it reads).
    pub fn apply(&self, total: WindowTotal) {
        write(&self.totals).apply(total);
    }

    /// The quota of every policy that counts `request`, at `now`, tightest first (least
    /// remaining share of the limit).
    pub fn quotas(
        &self,
        request: &RequestAttributes<'_>,
        checker: &dyn Checker,
        now: DateTime<Utc>,
    ) -> Vec<ScopeQuota> {
        if self.policies.is_empty() {
            return Vec::new();
        }
        let matched: Vec<(&Policy, &WindowSpec, ScopeKey)> =
            gateway::admission::with_event_dims(request, |event| {
                self.policies
                    .iter()
                    .filter_map(|(policy, spec)| Some((policy, spec, policy.scope_key(event)?)))
                    .collect()
            });
        let totals = self
            .totals
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut quotas: Vec<ScopeQuota> = matched
            .into_iter()
            .filter_map(|(policy, spec, scope_key)| {
                let window = spec.window_of(now)?;
                let key = WindowKey {
                    scope_kind: policy.totals_scope_kind(),
                    scope_key: scope_key.as_str().to_owned(),
                    window_kind: window.kind().to_string(),
                    window_tz: window.time_zone().name().to_owned(),
                    window_start: window.start(),
                };
                let spent = totals.total(&key).map_or(Decimal::ZERO, |total| {
                    Measures::from(&total).unit_amount(policy.unit())
                });
                let in_force = checker.in_force(&policy.control_key(scope_key.as_str()));
                let cap = policy.hard_cap();
                let limit = in_force
                    .as_ref()
                    .map_or(cap, |in_force| in_force.limit.max(cap));
                let reset_seconds = u64::try_from((window.end() - now).num_seconds())
                    .unwrap_or(0)
                    .max(1);
                Some(ScopeQuota {
                    policy_id: policy.id().to_owned(),
                    shadow: policy.is_shadow(),
                    scope: render(&scope_key),
                    unit: policy.unit().to_string(),
                    window: window.kind().to_string(),
                    window_start: window.start(),
                    resets_at: window.end(),
                    reset_seconds,
                    spent: spent.normalize(),
                    cap: cap.normalize(),
                    limit: limit.normalize(),
                    remaining: (limit - spent).max(Decimal::ZERO).normalize(),
                    decision: in_force.map(|in_force| decision(&in_force.verdict, in_force.shadow)),
                    approval: None,
                })
            })
            .collect();
        ScopeQuota::sort_tightest_first(&mut quotas);
        quotas
    }
}

/// `dimension=value, …`, `no <dimension>` for one the request lacks, `(all)` for none.
fn render(scope_key: &ScopeKey) -> String {
    let parts: Vec<String> = ScopeKey::decode(scope_key.as_str())
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| match value {
            Some(value) => format!("{name}={value}"),
            None => format!("no {name}"),
        })
        .collect();
    if parts.is_empty() {
        "(all)".to_owned()
    } else {
        parts.join(", ")
    }
}

fn decision(verdict: &Verdict, shadow: bool) -> DecisionInForce {
    match verdict {
        Verdict::Degrade {
            to, reason, until, ..
        } => DecisionInForce {
            action: if shadow { "would_degrade" } else { "degrade" }.to_owned(),
            reason: reason.to_string(),
            degrade_to: Some(to.to_string()),
            until: *until,
        },
        Verdict::Block { reason, until, .. } => DecisionInForce {
            action: if shadow { "would_block" } else { "block" }.to_owned(),
            reason: reason.to_string(),
            degrade_to: None,
            until: *until,
        },
        Verdict::Allow => DecisionInForce {
            action: "allow".to_owned(),
            reason: String::new(),
            degrade_to: None,
            until: None,
        },
    }
}

fn write(totals: &RwLock<TotalsView>) -> std::sync::RwLockWriteGuard<'_, TotalsView> {
    totals
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Applies the totals of the policies' current definitions (on the follower's thread), and
/// evicts ended windows every minute.
struct TotalsApplier {
    totals: Arc<RwLock<TotalsView>>,
    /// `policy:<id>@<definition>` of every windowed policy.
    kinds: HashSet<String>,
    applied: u64,
}

impl Apply for TotalsApplier {
    fn apply(&mut self, topic: &str, message: &BorrowedMessage<'_>) {
        self.applied += 1;
        if self.applied.is_multiple_of(4096) {
            write(&self.totals).evict_ended(Utc::now() - chrono::TimeDelta::minutes(1));
        }
        let Some(payload) = message.payload() else {
            let key = message
                .key()
                .and_then(|key| std::str::from_utf8(key).ok())
                .and_then(WindowTotal::parse_compaction_key);
            if let Some(key) = key.filter(|key| self.kinds.contains(&key.scope_kind)) {
                write(&self.totals).remove(&key);
            }
            return;
        };
        match schemas::decode::<WindowTotal>(payload) {
            Ok(total) if self.kinds.contains(&total.scope_kind) => {
                write(&self.totals).apply(total);
            }
            Ok(_) => {}
            Err(error) => warn!(
                %topic,
                partition = message.partition(),
                offset = message.offset(),
                %error,
                "skipping an undecodable totals record"
            ),
        }
    }

    fn entries(&self) -> usize {
        self.totals
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

/// The `RateLimit-*` headers of the tightest quota (see `docs/gateways.md`): `ratelimit-limit`,
/// `ratelimit-remaining` (exact decimals in the policy's unit), `ratelimit-reset` (seconds), and
/// `x-quotaflow-quota-policy` / `x-quotaflow-quota-unit` naming them.
pub fn ratelimit_headers(quota: &ScopeQuota) -> [(&'static str, String); 5] {
    [
        ("ratelimit-limit", quota.limit.to_string()),
        ("ratelimit-remaining", quota.remaining.to_string()),
        ("ratelimit-reset", quota.reset_seconds.to_string()),
        (
            "x-quotaflow-quota-policy",
            crate::answer::header_safe(&quota.policy_id),
        ),
        ("x-quotaflow-quota-unit", quota.unit.clone()),
    ]
}
