//! Job gauges (`concurrent_jobs` policies): jobs in flight per scope from submit and terminal
//! events, their caps, and jobs that never finish aged out with a page.

use super::*;

impl Engine {
    /// Applies an async job event (read back at startup) without evaluating; see
    /// [`Engine::on_job_event`].
    pub fn load_job_event(&mut self, event: &UsageEvent) {
        let policies = Arc::clone(&self.policies);
        self.jobs.apply(&policies, event);
    }

    /// Applies an async job event and evaluates the concurrency caps it moves: at the cap the
    /// policy's action (no new job may start: gateways refuse until one finishes), under it an
    /// allow; soft thresholds once per (policy, scope, threshold) and UTC day.
    pub fn on_job_event(&mut self, event: &UsageEvent, now: DateTime<Utc>) -> Vec<Effect> {
        let policies = Arc::clone(&self.policies);
        let changed = self.jobs.apply(&policies, event);
        let mut effects = Vec::new();
        for (policy_id, scope) in changed {
            effects.extend(self.evaluate_gauge(&policy_id, &scope, now));
        }
        effects.extend(self.follow_decisions(now));
        self.settled(effects)
    }

    /// Evaluates every gauge scope held (after a restore or a reload).
    pub(super) fn evaluate_gauges(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        let scopes: Vec<(String, String)> = self.jobs.in_flight.keys().cloned().collect();
        let mut effects = Vec::new();
        for (policy_id, scope) in scopes {
            effects.extend(self.evaluate_gauge(&policy_id, &scope, now));
        }
        effects
    }

    pub(super) fn evaluate_gauge(
        &mut self,
        policy_id: &str,
        scope_key: &str,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        let policies = Arc::clone(&self.policies);
        let Some(policy) = policies.get(policy_id) else {
            return Vec::new();
        };
        let level = Decimal::from(self.jobs.level(policy_id, scope_key));
        let cap = policy.hard_cap();
        let scope = decode_scope(scope_key);
        let mut effects = Vec::new();
        let day = now.date_naive();
        let mut thresholds = policy.record().soft_alerts.clone();
        thresholds.sort_by_key(|threshold| threshold.level(cap));
        for threshold in thresholds {
            let reached = threshold.level(cap);
            let dedup_key = format!("gauge/{policy_id}/{scope_key}/{day}/{}", threshold.key());
            let percent = threshold.percent_of(cap);
            if level >= reached && self.fired.insert(dedup_key.clone()) {
                let mut effect = rule_alert(
                    policy,
                    &scope,
                    "concurrent_jobs",
                    format!(
                        "{} has {level} jobs running, {percent}% of its {} concurrent jobs (soft alert at {threshold}, policy {policy_id})",
                        render_scope(&scope),
                        cap.normalize()
                    ),
                    dedup_key,
                    now,
                );
                if let Effect::Alert(alert, notice) = &mut effect {
                    alert.kind = AlertKind::Concurrency;
                    alert.threshold_percent = Some(percent);
                    alert.observed = level;
                    alert.limit = Some(cap);
                    notice.spent = level;
                    notice.limit = cap;
                }
                effects.push(effect);
            }
        }
        let enforcement = enforcement_scope(policy, &scope);
        let absent = enforcement_absent(&enforcement, scope_key);
        let key = ControlDecision::compaction_key_with_absent(policy_id, &enforcement, &absent);
        let held_block = self
            .decisions
            .get(&key)
            .filter(|held| held.action != DecisionAction::Allow)
            .cloned();
        let at_cap = level >= cap;
        match (at_cap, policy.action_kind(), held_block) {
            (true, ActionKind::Block | ActionKind::Degrade, None) => {
                let (action, degrade_to) = cap_action(policy);
                let refused = if action == DecisionAction::Block {
                    "refused"
                } else {
                    "degraded"
                };
                let reason = if level > cap {
                    // More in flight than the cap: jobs counted before this decision reached the
                    // gateways, or submitted through one that does not obey the control topic.
                    format!(
                        "{} has {level} async jobs running, {} over the {} policy {policy_id} allows at once (jobs submitted before this block reached the gateways, or through a gateway that does not obey it); new jobs are {refused} until fewer than {} run",
                        render_scope_absent(&scope, &absent),
                        (level - cap).normalize(),
                        cap.normalize(),
                        cap.normalize(),
                    )
                } else {
                    format!(
                        "{} has {level} async jobs running, the most policy {policy_id} allows at once; new jobs are {refused} until one finishes",
                        render_scope_absent(&scope, &absent),
                    )
                };
                effects.push(self.decide(ControlDecision {
                    decision_id: String::new(),
                    key,
                    policy_id: policy_id.to_owned(),
                    scope: enforcement,
                    action,
                    degrade_to,
                    reason,
                    unit: Unit::ConcurrentJobs.to_string(),
                    observed: level,
                    limit: cap,
                    window: CONCURRENCY_WINDOW.to_owned(),
                    window_start: DateTime::<Utc>::UNIX_EPOCH,
                    window_end: model_rules_end(),
                    issued_at: now,
                    expires_at: None,
                    version: 0,
                    absent,
                    shadow: false,
                }));
            }
            (false, _, Some(held)) => {
                let reason = format!(
                    "{} is down to {level} jobs running, under the {} allowed",
                    render_scope_absent(&scope, &absent),
                    cap.normalize()
                );
                let mut lifted = self.lift(&held, reason, now);
                if let Effect::Decide(decision) = &mut lifted {
                    decision.observed = level;
                    self.decisions
                        .insert(decision.key.clone(), decision.clone());
                }
                effects.push(lifted);
            }
            _ => {}
        }
        effects
    }

    /// Jobs pending longer than their policy's `max_job_age`: a stop-condition alert (Slack and
    /// a page) once per job.
    pub(super) fn stale_jobs(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        let policies = Arc::clone(&self.policies);
        let mut effects = Vec::new();
        let mut stale = Vec::new();
        for ((policy_id, scope_key), jobs) in &self.jobs.in_flight {
            let Some(policy) = policies.get(policy_id) else {
                continue;
            };
            let Some(max_age) = policy.record().max_job_age else {
                continue;
            };
            for (job_id, started) in jobs {
                if now - *started > max_age.0 {
                    stale.push((
                        policy_id.clone(),
                        scope_key.clone(),
                        job_id.clone(),
                        *started,
                        max_age,
                    ));
                }
            }
        }
        stale.sort();
        for (policy_id, scope_key, job_id, started, max_age) in stale {
            let dedup_key = format!("pending/{policy_id}/{job_id}");
            if !self.fired.insert(dedup_key.clone()) {
                continue;
            }
            let Some(policy) = policies.get(&policy_id) else {
                continue;
            };
            let scope = decode_scope(&scope_key);
            let mut effect = rule_alert(
                policy,
                &scope,
                "pending_job",
                format!(
                    "job {job_id} of {} has been pending since {} (more than {}s, policy {policy_id}): stop condition — check it with the provider and cancel it if stuck",
                    render_scope(&scope),
                    started.to_rfc3339_opts(SecondsFormat::Secs, true),
                    max_age.0.num_seconds()
                ),
                dedup_key,
                now,
            );
            if let Effect::Alert(alert, notice) = &mut effect {
                alert.kind = AlertKind::PendingJob;
                alert.severity = Severity::Error;
                notice.pagerduty_service = policy.pagerduty_service().map(str::to_owned);
            }
            effects.push(effect);
        }
        effects
    }

    /// Issue 17: `pending_backlog` of `concurrent_jobs` policies. A scope with at least
    /// `min_jobs` jobs pending for longer than `older_than` pages once (Slack, and PagerDuty when
    /// the policy names a service); when the backlog drains below `min_jobs` the page is
    /// resolved (a Slack follow-up and a PagerDuty resolve of the same `dedup_key`). A new
    /// backlog after that is a new page.
    pub(super) fn pending_backlogs(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        let policies = Arc::clone(&self.policies);
        let mut effects = Vec::new();
        let mut backlogged = BTreeMap::new();
        for ((policy_id, scope_key), jobs) in &self.jobs.in_flight {
            let Some(policy) = policies.get(policy_id) else {
                continue;
            };
            let Some(backlog) = &policy.record().pending_backlog else {
                continue;
            };
            let waiting: Vec<&DateTime<Utc>> = jobs
                .values()
                .filter(|started| now - **started > backlog.older_than.0)
                .collect();
            let oldest = waiting.iter().min().map(|started| **started);
            if waiting.len() as u64 >= backlog.min_jobs {
                backlogged.insert(
                    backlog_key(policy_id, scope_key),
                    (policy_id.clone(), scope_key.clone(), waiting.len(), oldest),
                );
            }
        }
        // Drained (or the policy dropped its backlog rule): resolve.
        let drained: Vec<String> = self
            .open_backlogs
            .keys()
            .filter(|key| !backlogged.contains_key(*key))
            .cloned()
            .collect();
        for key in drained {
            let Some((fire_key, fired_at)) = self.open_backlogs.remove(&key) else {
                continue;
            };
            let resolve_key = format!("{fire_key}/resolved");
            if !self.fired.insert(resolve_key.clone()) {
                continue;
            }
            let Some((policy_id, scope_key)) = parse_backlog_key(&key) else {
                continue;
            };
            let level = self.jobs.level(&policy_id, &scope_key);
            let scope = decode_scope(&scope_key);
            let policy = policies.get(&policy_id);
            let text = format!(
                "the pending-job backlog of {} has drained: {level} jobs in flight now (policy {policy_id})",
                render_scope(&scope)
            );
            let mut effect = rule_alert_parts(
                policy,
                &scope,
                crate::notify::PENDING_JOBS_UNIT,
                text,
                resolve_key,
                now,
            );
            if let Effect::Alert(alert, notice) = &mut effect {
                alert.kind = AlertKind::PendingJob;
                alert.severity = Severity::Info;
                alert.observed = Decimal::from(level);
                backlog_window(alert, notice, fired_at);
                notice.kind = NoticeKind::Resolved {
                    of: IncidentKind::Rule,
                };
                notice.detail = Some(alert.message.clone());
                notice.pagerduty_service =
                    policy.and_then(|policy| policy.pagerduty_service().map(str::to_owned));
            }
            effects.push(effect);
        }
        for (key, (policy_id, scope_key, waiting, oldest)) in backlogged {
            if self.open_backlogs.contains_key(&key) {
                continue;
            }
            let Some(policy) = policies.get(&policy_id) else {
                continue;
            };
            let Some(backlog) = &policy.record().pending_backlog else {
                continue;
            };
            let fire_key = format!("{key}/{}", now.to_rfc3339_opts(SecondsFormat::Secs, true));
            if !self.fired.insert(fire_key.clone()) {
                continue;
            }
            self.open_backlogs.insert(key, (fire_key.clone(), now));
            let scope = decode_scope(&scope_key);
            let text = format!(
                "{} has {waiting} jobs pending for more than {}s (a page at {} or more; the oldest pending since {}), {} in flight in all (policy {policy_id}): the provider is slow or jobs are stuck — check the provider's status and queue, and cancel what will not finish",
                render_scope(&scope),
                backlog.older_than.0.num_seconds(),
                backlog.min_jobs,
                oldest.map_or_else(String::new, |oldest| oldest
                    .to_rfc3339_opts(SecondsFormat::Secs, true)),
                self.jobs.level(&policy_id, &scope_key),
            );
            let mut effect = rule_alert(
                policy,
                &scope,
                crate::notify::PENDING_JOBS_UNIT,
                text,
                fire_key,
                now,
            );
            if let Effect::Alert(alert, notice) = &mut effect {
                alert.kind = AlertKind::PendingJob;
                alert.severity = Severity::Error;
                alert.observed = Decimal::from(waiting as u64);
                alert.limit = Some(Decimal::from(backlog.min_jobs));
                backlog_window(alert, notice, now);
                notice.spent = Decimal::from(waiting as u64);
                notice.limit = Decimal::from(backlog.min_jobs);
                notice.pagerduty_service = policy.pagerduty_service().map(str::to_owned);
            }
            effects.push(effect);
        }
        effects
    }

    /// Rebuilds the open backlogs from the alerts read back (in topic order).
    pub(super) fn restore_backlog(&mut self, alert: &Alert) {
        let Some(rest) = alert.dedup_key.strip_prefix("backlog/") else {
            return;
        };
        if let Some(fire_key) = alert.dedup_key.strip_suffix("/resolved") {
            if let Some((key, _)) = fire_key.rsplit_once('/') {
                if self
                    .open_backlogs
                    .get(key)
                    .is_some_and(|(open, _)| open == fire_key)
                {
                    self.open_backlogs.remove(key);
                }
            }
        } else if rest.contains('/') {
            if let Some((key, _)) = alert.dedup_key.rsplit_once('/') {
                self.open_backlogs.insert(
                    key.to_owned(),
                    (alert.dedup_key.clone(), alert.window_start),
                );
            }
        }
    }

    /// Issue 13 point 7: jobs in flight for [`Engine::with_job_max_age`] without a terminal
    /// event leave their gauge (its level drops, which may lift a block), each with a page
    /// (Slack, and PagerDuty when the policy names a service) naming the job, its scope and its
    /// owner. The job is forgotten: a late terminal event finds nothing to remove.
    pub(super) fn age_out_jobs(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        let aged = self.jobs.age_out(now, self.job_max_age);
        if aged.is_empty() {
            return Vec::new();
        }
        let policies = Arc::clone(&self.policies);
        let mut effects = Vec::new();
        let mut changed = BTreeSet::new();
        for (policy_id, scope_key, job_id, started) in aged {
            changed.insert((policy_id.clone(), scope_key.clone()));
            let dedup_key = format!("aged_out/{policy_id}/{job_id}");
            if !self.fired.insert(dedup_key.clone()) {
                continue;
            }
            let Some(policy) = policies.get(&policy_id) else {
                continue;
            };
            let scope = decode_scope(&scope_key);
            let mut effect = rule_alert(
                policy,
                &scope,
                "pending_job",
                format!(
                    "job {job_id} of {} (owner {}) has had no terminal event since {} ({}s, the most alert.job_max_age_secs allows): it no longer counts toward the {} concurrent jobs of policy {policy_id}; check it with the provider and cancel it if it is still running",
                    render_scope(&scope),
                    policy.record().owner.team,
                    started.to_rfc3339_opts(SecondsFormat::Secs, true),
                    self.job_max_age.num_seconds(),
                    policy.hard_cap().normalize(),
                ),
                dedup_key,
                now,
            );
            if let Effect::Alert(alert, notice) = &mut effect {
                alert.kind = AlertKind::PendingJob;
                alert.severity = Severity::Critical;
                notice.pagerduty_service = policy.pagerduty_service().map(str::to_owned);
            }
            effects.push(effect);
        }
        for (policy_id, scope_key) in changed {
            effects.extend(self.evaluate_gauge(&policy_id, &scope_key, now));
        }
        effects
    }
}

/// `backlog/{policy}/{scope}`: one backlog per gauge scope.
fn backlog_key(policy_id: &str, scope_key: &str) -> String {
    format!("backlog/{policy_id}\u{1f}{scope_key}")
}

fn parse_backlog_key(key: &str) -> Option<(String, String)> {
    let (policy_id, scope_key) = key.strip_prefix("backlog/")?.split_once('\u{1f}')?;
    Some((policy_id.to_owned(), scope_key.to_owned()))
}

/// A backlog page and its resolve share one incident: its window starts when it fired (the
/// PagerDuty `dedup_key` and the Slack grouping are taken from it).
fn backlog_window(alert: &mut Alert, notice: &mut Notice, fired_at: DateTime<Utc>) {
    alert.window_start = fired_at;
    alert.window_end = fired_at;
    notice.window.start = fired_at;
    notice.window.end = fired_at + TimeDelta::hours(1);
}
