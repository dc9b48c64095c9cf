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
        let (findings, settled) = self.detector.observe_settled(policy, key, &total);
        let open_key = window_alert_key("anomaly", policy.id(), key, "");
        if let Some(open) = self.open_anomalies.get_mut(&open_key) {
            let before = open.len();
            for metric in &settled {
                open.remove(metric.as_str());
            }
            if open.is_empty() && before > 0 {
                self.open_anomalies.remove(&open_key);
                effects.extend(self.anomaly_resolved(policy, key, &total, &settled, now));
            }
        }
        for finding in findings {
            let dedup_key = window_alert_key("anomaly", policy.id(), key, finding.metric.as_str());
            if !self.fired.insert(dedup_key.clone()) {
                continue;
            }
            self.open_anomalies
                .entry(open_key.clone())
                .or_default()
                .insert(finding.metric.as_str().to_owned());
            let scope = group_scope(key);
            let text = finding.describe();
            let alert = anomaly_alert(
                policy,
                key,
                &total,
                dedup_key,
                (Severity::Warning, finding.metric.as_str(), finding.value),
                format!("{}: {text} (policy {})", render_scope(&scope), policy.id()),
                now,
            );
            let spent = unit_amount(&total, policy.unit());
            let mut notice = window_notice(policy, key, &total, spent, policy.hard_cap(), now);
            notice.kind = NoticeKind::Anomaly { text };
            effects.push(Effect::Alert(Box::new(alert), Box::new(notice)));
        }
        effects
    }

    /// Issue 17 point 2: every anomaly of a (policy, scope, window) is back within the usual (a
    /// closed bucket judged usual for each metric that fired): one resolve, Slack and, when the
    /// policy pages, a PagerDuty resolve of the scope's anomaly incident.
    fn anomaly_resolved(
        &mut self,
        policy: &Policy,
        key: &WindowKey,
        total: &WindowTotal,
        settled: &[crate::anomaly::Metric],
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        let names: Vec<&str> = settled.iter().map(|metric| metric.as_str()).collect();
        let dedup_key = window_alert_key(
            "anomaly",
            policy.id(),
            key,
            &format!("resolved:{}", now.timestamp_millis()),
        );
        if !self.fired.insert(dedup_key.clone()) {
            return Vec::new();
        }
        let scope = group_scope(key);
        let text = format!(
            "{}: {} back within the usual in the last closed bucket (policy {})",
            render_scope(&scope),
            names.join(", "),
            policy.id()
        );
        let alert = anomaly_alert(
            policy,
            key,
            total,
            dedup_key,
            (Severity::Info, "resolved", Decimal::ZERO),
            text.clone(),
            now,
        );
        let spent = unit_amount(total, policy.unit());
        let mut notice = window_notice(policy, key, total, spent, policy.hard_cap(), now);
        notice.kind = NoticeKind::Resolved {
            of: IncidentKind::Anomaly,
        };
        notice.detail = Some(text);
        vec![Effect::Alert(Box::new(alert), Box::new(notice))]
    }

    /// Rebuilds the open anomalies from the alerts read back (in topic order).
    pub(super) fn restore_anomaly(&mut self, alert: &Alert) {
        if alert.kind != AlertKind::Anomaly || !alert.dedup_key.starts_with("anomaly/") {
            return;
        }
        let Some((open_key, detail)) = alert.dedup_key.rsplit_once('/') else {
            return;
        };
        if detail.starts_with("resolved:") {
            self.open_anomalies.remove(open_key);
        } else {
            self.open_anomalies
                .entry(open_key.to_owned())
                .or_default()
                .insert(detail.to_owned());
        }
    }
}

/// An anomaly alert (or its resolve) of `policy`'s scope `key`: `(severity, unit, observed)`.
fn anomaly_alert(
    policy: &Policy,
    key: &WindowKey,
    total: &WindowTotal,
    dedup_key: String,
    (severity, unit, observed): (Severity, &str, Decimal),
    message: String,
    now: DateTime<Utc>,
) -> Alert {
    Alert {
        alert_id: alert_id(&dedup_key),
        dedup_key,
        policy_id: policy.id().to_owned(),
        scope: group_scope(key),
        kind: AlertKind::Anomaly,
        severity,
        threshold_percent: None,
        unit: unit.to_owned(),
        observed,
        limit: None,
        window: key.window_kind.clone(),
        window_start: key.window_start,
        window_end: total.window_end,
        owner: policy.record().owner.team.clone(),
        message,
        raised_at: now,
    }
}
