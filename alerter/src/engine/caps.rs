//! Caps: soft thresholds, hard caps (block, degrade, alert only) of one (scope, window) total.

use super::*;

impl Engine {
    /// Evaluates the policy of a `policy:<id>@<definition>` total of a current window.
    pub(super) fn evaluate_key(&mut self, key: &WindowKey, now: DateTime<Utc>) -> Vec<Effect> {
        let policies = Arc::clone(&self.policies);
        // Only totals of the policy's current definition (`policy:<id>@<definition>`): those of
        // an earlier selector, group_by, unit or window count something else.
        let Some(policy) = policies.by_totals_scope_kind(&key.scope_kind) else {
            return Vec::new();
        };
        let Some(total) = self.totals.total(key) else {
            return Vec::new();
        };
        if total.window_end <= now {
            // An ended window changes nothing any more (its block, if any, is lifted by `tick`).
            return Vec::new();
        }
        let observed = unit_amount(&total, policy.unit());
        let cap = policy.hard_cap();
        let scope = group_scope(key);
        let mut effects = self.soft_thresholds(policy, key, &total, observed, now);
        let approved = self.approvals.in_force(policy.id(), &scope, now).cloned();
        let limit = approved
            .as_ref()
            .map_or(cap, |approval| approval.new_limit.max(cap));
        let capped = observed >= limit;
        if !capped && !self.policies_with_blocks.contains(policy.id()) {
            // Under the limit and nothing of this policy was ever blocked: nothing to lift.
            return effects;
        }
        let enforcement = enforcement_scope(policy, &scope);
        let absent = enforcement_absent(&enforcement, &key.scope_key);
        let control_key =
            ControlDecision::compaction_key_with_absent(policy.id(), &enforcement, &absent);
        let held = self.decisions.get(&control_key).cloned();
        let in_force = held.as_ref().filter(|decision| {
            decision.action != DecisionAction::Allow && decision.window_start == key.window_start
        });
        match (capped, policy.action_kind()) {
            (true, ActionKind::Block | ActionKind::Degrade) => {
                if in_force.is_none() {
                    let (action, degrade_to) = cap_action(policy);
                    let reason = cap_reason(
                        policy,
                        key,
                        &total,
                        (&scope, &absent),
                        (observed, limit),
                        degrade_to.as_deref(),
                    );
                    let decision = ControlDecision {
                        decision_id: String::new(),
                        key: control_key.clone(),
                        policy_id: policy.id().to_owned(),
                        scope: enforcement,
                        action,
                        degrade_to,
                        reason,
                        unit: policy.unit().to_string(),
                        observed,
                        limit,
                        window: key.window_kind.clone(),
                        window_start: key.window_start,
                        window_end: total.window_end,
                        issued_at: now,
                        expires_at: Some(total.window_end),
                        version: 0,
                        absent,
                        shadow: false,
                    };
                    effects.push(self.decide(decision));
                }
            }
            (true, ActionKind::AlertOnly) => {
                let dedup_key = window_alert_key("cap", policy.id(), key, "");
                if !self.fired.contains(&dedup_key) {
                    self.fired.insert(dedup_key.clone());
                    effects
                        .push(self.cap_alert(policy, key, &total, observed, limit, dedup_key, now));
                }
            }
            (false, _) => {
                if let Some(held) = in_force.cloned() {
                    let reason =
                        under_limit_reason(policy, &scope, approved.as_ref(), observed, limit);
                    let mut lifted = self.lift(&held, reason, now);
                    if let Effect::Decide(decision) = &mut lifted {
                        decision.observed = observed;
                        decision.limit = limit;
                    }
                    if let Effect::Decide(decision) = &lifted {
                        self.decisions
                            .insert(decision.key.clone(), decision.clone());
                    }
                    effects.push(lifted);
                }
            }
        }
        effects
    }

    /// The soft alerts of `policy`'s thresholds that `observed` reached in `key`'s window and
    /// that did not fire yet, lowest first.
    fn soft_thresholds(
        &mut self,
        policy: &Policy,
        key: &WindowKey,
        total: &WindowTotal,
        observed: Decimal,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        let cap = policy.hard_cap();
        let mut thresholds = policy.record().soft_alerts.clone();
        thresholds.sort_by_key(|threshold| threshold.level(cap));
        let mut effects = Vec::new();
        for threshold in thresholds {
            if observed < threshold.level(cap) {
                break;
            }
            let dedup_key = window_alert_key("soft", policy.id(), key, &threshold.key());
            if !self.fired.contains(&dedup_key) {
                self.fired.insert(dedup_key.clone());
                effects.push(
                    self.soft_alert(policy, key, total, &threshold, observed, dedup_key, now),
                );
            }
        }
        effects
    }
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn soft_alert(
        &self,
        policy: &Policy,
        key: &WindowKey,
        total: &WindowTotal,
        threshold: &policy::Threshold,
        observed: Decimal,
        dedup_key: String,
        now: DateTime<Utc>,
    ) -> Effect {
        let cap = policy.hard_cap();
        // Amounts are `warning` unless they reach the cap's own level.
        let severity = threshold.percent().map_or(Severity::Warning, |percent| {
            policy.severity_for_threshold(percent)
        });
        let percent = threshold.percent_of(cap);
        let scope = group_scope(key);
        let used = match threshold {
            policy::Threshold::Percent(_) => format!("used {percent}%"),
            policy::Threshold::Amount { .. } => {
                format!("reached its soft alert at {threshold} ({percent}%)")
            }
        };
        let message = format!(
            "{} {used} of its {} {} cap ({} {}) in the {} window from {} (policy {})",
            render_scope(&scope),
            cap.normalize(),
            policy.unit(),
            observed.normalize(),
            policy.unit(),
            key.window_kind,
            key.window_start.to_rfc3339_opts(SecondsFormat::Secs, true),
            policy.id()
        );
        let pages = matches!(severity, Severity::Error | Severity::Critical);
        let alert = Alert {
            alert_id: alert_id(&dedup_key),
            dedup_key,
            policy_id: policy.id().to_owned(),
            scope: scope.clone(),
            kind: AlertKind::SoftThreshold,
            severity,
            threshold_percent: Some(percent),
            unit: policy.unit().to_string(),
            observed,
            limit: Some(cap),
            window: key.window_kind.clone(),
            window_start: key.window_start,
            window_end: total.window_end,
            owner: policy.record().owner.team.clone(),
            message,
            raised_at: now,
        };
        let notice = Notice {
            kind: NoticeKind::SoftAlert,
            threshold_percent: percent,
            threshold_amount: match threshold {
                policy::Threshold::Amount { amount, .. } => Some(*amount),
                policy::Threshold::Percent(_) => None,
            },
            pagerduty_service: if pages {
                policy.pagerduty_service().map(str::to_owned)
            } else {
                None
            },
            ..window_notice(policy, key, total, observed, cap, now)
        };
        Effect::Alert(Box::new(alert), Box::new(notice))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn cap_alert(
        &self,
        policy: &Policy,
        key: &WindowKey,
        total: &WindowTotal,
        observed: Decimal,
        limit: Decimal,
        dedup_key: String,
        now: DateTime<Utc>,
    ) -> Effect {
        let scope = group_scope(key);
        let alert = Alert {
            alert_id: alert_id(&dedup_key),
            dedup_key,
            policy_id: policy.id().to_owned(),
            scope: scope.clone(),
            kind: AlertKind::HardCap,
            severity: Severity::Critical,
            threshold_percent: Some(100),
            unit: policy.unit().to_string(),
            observed,
            limit: Some(limit),
            window: key.window_kind.clone(),
            window_start: key.window_start,
            window_end: total.window_end,
            owner: policy.record().owner.team.clone(),
            message: format!(
                "{} reached the cap {} {} (policy {}, alert only: traffic is not stopped)",
                render_scope(&scope),
                limit.normalize(),
                policy.unit(),
                policy.id()
            ),
            raised_at: now,
        };
        let notice = Notice {
            kind: NoticeKind::HardCap,
            threshold_percent: 100,
            ..window_notice(policy, key, total, observed, limit, now)
        };
        Effect::Alert(Box::new(alert), Box::new(notice))
    }
}
