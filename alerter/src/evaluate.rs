//! [`Evaluator`]: the soft-alert ladder and hard caps of windowed policies, evaluated on the
//! current total of a (policy scope, window). Pure: no IO, no clock (the caller passes `now`).
//!
//! # Rules
//! - The amount compared with the cap is the policy's unit of the window's total
//!   ([`unit_amount`]), exact.
//! - **Soft alerts**: each threshold of `soft_alerts` (default 50/75/90/100 %) fires **once per
//!   (policy, scope, window)**: when the amount first reaches `threshold % × hard_cap`. A total that
//!   jumps past several thresholds fires each of them, lowest first.
//! - **Hard cap**: when the amount reaches `hard_cap`, once per (policy, scope, window), a
//!   [`Finding::HardCap`] with the policy's action (block, degrade, or alert only).
//! - **Reset**: when a capped window has ended (`now >= window_end`), a [`Finding::Reset`]: the
//!   block or degrade is lifted (an allow decision) and its page resolved.
//!
//! Not here yet (issue 5): persistence of what fired across restarts (the alerts and decisions
//! audit tables), approvals raising a cap, throughput and concurrency caps, model blocks, retry and
//! fallback budgets, anomalies.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use policy::{ActionKind, Policy, Unit};
use quotaflow_totals::measures::Measures;
use rust_decimal::Decimal;
use schemas::WindowTotal;

use crate::totals::WindowKey;

/// The amount of `unit` in a window's total, exact: the aggregator's own rule
/// ([`aggregator::measures::Measures::unit_amount`]), so a policy and the totals never disagree.
pub fn unit_amount(total: &WindowTotal, unit: Unit) -> Decimal {
    Measures::from(total).unit_amount(unit)
}

/// Something to tell people or gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The amount reached `threshold` % of the cap.
    SoftAlert {
        /// The policy.
        policy_id: String,
        /// The (scope, window).
        key: WindowKey,
        /// The threshold reached.
        threshold: policy::Threshold,
        /// The amount.
        observed: Decimal,
        /// The cap.
        limit: Decimal,
    },
    /// The amount reached the cap.
    HardCap {
        /// The policy.
        policy_id: String,
        /// The (scope, window).
        key: WindowKey,
        /// What the policy does at the cap.
        action: ActionKind,
        /// The amount.
        observed: Decimal,
        /// The cap.
        limit: Decimal,
        /// When the window ends (the block lasts until then).
        window_end: DateTime<Utc>,
    },
    /// A capped window ended: lift the block and resolve the page.
    Reset {
        /// The policy.
        policy_id: String,
        /// The (scope, window) that was capped.
        key: WindowKey,
    },
}

/// What has fired, per (policy, scope, window) (see the module docs).
#[derive(Debug, Default)]
pub struct Evaluator {
    /// (policy, window key, threshold) soft alerts fired.
    fired: HashSet<(String, WindowKey, policy::Threshold)>,
    /// Capped (policy, window key) → window end.
    capped: BTreeMap<(String, WindowKey), DateTime<Utc>>,
}

impl Evaluator {
    /// Nothing fired yet.
    pub fn new() -> Evaluator {
        Evaluator::default()
    }

    /// Evaluates `policy` on the current `total` of its scope in `key`'s window.
    pub fn evaluate(
        &mut self,
        policy: &Policy,
        key: &WindowKey,
        total: &WindowTotal,
    ) -> Vec<Finding> {
        let mut findings = Vec::new();
        let limit = policy.hard_cap();
        let observed = unit_amount(total, policy.unit());
        let mut thresholds = policy.record().soft_alerts.clone();
        thresholds.sort_by_key(|threshold| threshold.level(limit));
        for threshold in thresholds {
            let reached = threshold.level(limit);
            if observed >= reached
                && self
                    .fired
                    .insert((policy.id().to_owned(), key.clone(), threshold.clone()))
            {
                findings.push(Finding::SoftAlert {
                    policy_id: policy.id().to_owned(),
                    key: key.clone(),
                    threshold,
                    observed,
                    limit,
                });
            }
        }
        let cap_key = (policy.id().to_owned(), key.clone());
        if observed >= limit && !self.capped.contains_key(&cap_key) {
            self.capped.insert(cap_key, total.window_end);
            findings.push(Finding::HardCap {
                policy_id: policy.id().to_owned(),
                key: key.clone(),
                action: policy.action_kind(),
                observed,
                limit,
                window_end: total.window_end,
            });
        }
        findings
    }

    /// Resets for every capped window that has ended by `now`, and forgets what fired in ended
    /// windows.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<Finding> {
        let ended: Vec<(String, WindowKey)> = self
            .capped
            .iter()
            .filter(|(_, end)| **end <= now)
            .map(|(key, _)| key.clone())
            .collect();
        let mut findings = Vec::with_capacity(ended.len());
        for (policy_id, key) in ended {
            self.capped.remove(&(policy_id.clone(), key.clone()));
            self.fired.retain(|(fired_policy, fired_key, _)| {
                (fired_policy, fired_key) != (&policy_id, &key)
            });
            findings.push(Finding::Reset { policy_id, key });
        }
        findings
    }

    /// Whether (policy, window key) is capped now.
    pub fn is_capped(&self, policy_id: &str, key: &WindowKey) -> bool {
        self.capped
            .contains_key(&(policy_id.to_owned(), key.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use policy::PolicySet;

    const POLICY: &str = r#"
- id: search-daily
  owner: {team: search, contact: s@example.com}
  description: search spends at most 100 USD per UTC day
  unit: cost_usd
  group_by: [team]
  window: {kind: day}
  hard_cap: 100
  action: {kind: block}
"#;

    fn total(cost: &str) -> WindowTotal {
        let start = Utc.with_ymd_and_hms(2026, 3, 9, 0, 0, 0).unwrap();
        WindowTotal {
            cost_usd: cost.parse().unwrap(),
            ..schemas::fixtures::empty_day_total("policy:search-daily", "team=search", start)
        }
    }

    fn thresholds(findings: &[Finding]) -> Vec<u8> {
        findings
            .iter()
            .filter_map(|finding| match finding {
                Finding::SoftAlert { threshold, .. } => threshold.percent(),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_ladder_fires_each_threshold_once_then_the_cap_then_the_reset() {
        let policies = PolicySet::from_str("p.yaml", POLICY).unwrap();
        let policy = &policies.policies()[0];
        let mut evaluator = Evaluator::new();
        let key = WindowKey::of(&total("0"));
        assert!(evaluator
            .evaluate(policy, &key, &total("49.999999999999"))
            .is_empty());
        assert_eq!(
            thresholds(&evaluator.evaluate(policy, &key, &total("50"))),
            [50]
        );
        assert!(
            evaluator.evaluate(policy, &key, &total("60")).is_empty(),
            "once"
        );
        // A jump past two thresholds fires both, lowest first.
        assert_eq!(
            thresholds(&evaluator.evaluate(policy, &key, &total("91"))),
            [75, 90]
        );
        let at_cap = evaluator.evaluate(policy, &key, &total("100"));
        assert_eq!(thresholds(&at_cap), [100]);
        assert!(matches!(
            at_cap.last(),
            Some(Finding::HardCap {
                action: ActionKind::Block,
                ..
            })
        ));
        assert!(evaluator.is_capped("search-daily", &key));
        assert!(evaluator.evaluate(policy, &key, &total("150")).is_empty());
        // The day ends: the block lifts, and the next day starts a new ladder.
        let end = Utc.with_ymd_and_hms(2026, 3, 10, 0, 0, 0).unwrap();
        assert!(evaluator
            .tick(end - chrono::TimeDelta::seconds(1))
            .is_empty());
        assert_eq!(
            evaluator.tick(end),
            [Finding::Reset {
                policy_id: "search-daily".into(),
                key: key.clone()
            }]
        );
        assert!(!evaluator.is_capped("search-daily", &key));
    }

    #[test]
    fn unit_amounts_follow_the_aggregator_rules() {
        let mut t = total("1.5");
        t.input_tokens = 10;
        t.output_tokens = 5;
        t.video_ms = 1_500;
        t.images_final = 2;
        t.images_untiered = 1;
        assert_eq!(unit_amount(&t, Unit::TotalTokens), Decimal::from(15));
        assert_eq!(unit_amount(&t, Unit::VideoSeconds), "1.5".parse().unwrap());
        assert_eq!(unit_amount(&t, Unit::Images), Decimal::from(3));
        assert_eq!(unit_amount(&t, Unit::CostUsd), "1.5".parse().unwrap());
    }
}
