//! Anomaly rules: retry storms, fallback spend and spend against a scope's own baseline
//! (`crate::anomaly` keeps the baselines).

use super::*;

impl Engine {
    /// Anomalies of the current total of a policy scope with an `anomaly` section; each
    /// (policy, scope, metric) once per window.
    pub(super) fn detect_anomalies(&mut self, key: &WindowKey, now: DateTime<Utc>) -> Vec<Effect> {
        let policies = Arc::clone(&self.policies);
        let Some(policy) = policies.by_totals_scope_kind(&key.scope_kind) else {
            return Vec::new();
        };
        if policy.record().anomaly.is_none() {
            return Vec::new();
        }
        let Some(total) = self.totals.total(key) else {
            return Vec::new();
        };
        let mut effects = Vec::new();
        for finding in self.detector.observe(policy, key, &total) {
            let dedup_key = window_alert_key("anomaly", policy.id(), key, finding.metric.as_str());
            if !self.fired.insert(dedup_key.clone()) {
                continue;
            }
            let scope = group_scope(key);
            let text = finding.describe();
            let alert = Alert {
                alert_id: alert_id(&dedup_key),
                dedup_key,
                policy_id: policy.id().to_owned(),
                scope: scope.clone(),
                kind: AlertKind::Anomaly,
                severity: Severity::Warning,
                threshold_percent: None,
                unit: finding.metric.as_str().to_owned(),
                observed: finding.value,
                limit: None,
                window: key.window_kind.clone(),
                window_start: key.window_start,
                window_end: total.window_end,
                owner: policy.record().owner.team.clone(),
                message: format!("{}: {text} (policy {})", render_scope(&scope), policy.id()),
                raised_at: now,
            };
            let spent = unit_amount(&total, policy.unit());
            let mut notice = window_notice(policy, key, &total, spent, policy.hard_cap(), now);
            notice.kind = NoticeKind::Anomaly { text };
            effects.push(Effect::Alert(Box::new(alert), Box::new(notice)));
        }
        effects
    }
}
