//! Model rules: allow-lists, deprecated and preview models, blocked as soon as a model is seen or
//! at load.

use super::*;

impl Engine {
    /// Notes the model of a policy total when the policy has model rules; true if new.
    pub(super) fn observe_model(&mut self, key: &WindowKey) -> bool {
        let Some(policy) = self.policies.by_totals_scope_kind(&key.scope_kind) else {
            return false;
        };
        let policy_id = policy.id();
        if policy.record().model_rules.is_none() {
            return false;
        }
        let scope = group_scope(key);
        let Some(model) = scope.get("model") else {
            return false;
        };
        let provider = scope
            .get("provider")
            .cloned()
            .or_else(|| policy.fixed_dimensions().get("provider").cloned())
            .unwrap_or_default();
        self.observed_models
            .insert((policy_id.to_owned(), provider, model.clone()))
    }

    /// Model-rule blocks: what the policies' `model_rules` block (deprecated and preview models
    /// of the catalog, and models seen in a policy's totals that its allow-list refuses) against
    /// what is held; blocks what is missing, lifts what is no longer refused, alerts once per
    /// (policy, model) for `alert` rules.
    pub(super) fn reconcile_models(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        let today = now.date_naive();
        self.models_day = Some(today);
        let policies = Arc::clone(&self.policies);
        let catalog = Arc::clone(&self.catalog);
        let mut desired: BTreeMap<String, ControlDecision> = BTreeMap::new();
        let mut effects = Vec::new();
        for policy in policies.policies() {
            if policy.record().model_rules.is_none() {
                continue;
            }
            // Candidates: every catalog row as a request may name it, and what this policy's
            // totals showed ([`Self::model_candidates`]).
            let candidates = self.model_candidates(policy.id(), &catalog);
            let fixed_provider = policy.fixed_dimensions().get("provider").cloned();
            for (provider, model, observed) in candidates {
                let entry = catalog.lookup(&provider, &model);
                // A row found through the provider prefix applies to that provider's requests
                // only: the decision names the provider, so other providers' `model` is untouched.
                let via_provider = entry
                    .is_some_and(|entry| entry.name != model)
                    .then(|| provider.clone());
                if via_provider
                    .as_ref()
                    .zip(fixed_provider.as_ref())
                    .is_some_and(|(found, fixed)| found != fixed)
                {
                    continue;
                }
                let facts = entry.map(|entry| policy::ModelFacts {
                    deprecation_date: entry.deprecation_date,
                    is_preview: entry.is_preview,
                });
                let verdict = match policy.model_verdict(&model, facts, today) {
                    // A row nobody named yet that the allow-list refuses: its deprecation or
                    // preview status is still blocked before the first request (issue 13, point
                    // 12); the allow-list itself waits until the model is seen.
                    policy::ModelVerdict::Block(policy::ModelIssue::NotAllowListed)
                        if !observed =>
                    {
                        policy.lifecycle_verdict(facts, today)
                    }
                    verdict => verdict,
                };
                match verdict {
                    policy::ModelVerdict::Allow => {}
                    policy::ModelVerdict::Block(issue) => {
                        // The allow-list refuses the whole world but what it lists: block only
                        // what was seen, not every catalog row.
                        if issue == policy::ModelIssue::NotAllowListed && !observed {
                            continue;
                        }
                        let decision = model_block(policy, &model, via_provider, issue, now);
                        desired.insert(decision.key.clone(), decision);
                    }
                    policy::ModelVerdict::Alert(issue) if observed => {
                        let dedup_key = format!("model/{}/{provider}/{model}", policy.id());
                        if self.fired.insert(dedup_key.clone()) {
                            let (unit, what) = describe_issue(issue, &model);
                            let mut scope = policy.fixed_dimensions();
                            scope.insert("model".to_owned(), model.clone());
                            effects.push(rule_alert(
                                policy,
                                &scope,
                                unit,
                                format!("{what}: traffic seen; policy {} alerts only", policy.id()),
                                dedup_key,
                                now,
                            ));
                        }
                    }
                    policy::ModelVerdict::Alert(_) => {}
                }
            }
        }
        effects.extend(self.enforce_model_blocks(&desired, now));
        effects
    }

    /// The catalog rows a request may name (as `model`, or as provider `p` and model `m` for a
    /// row `p/m`) and the (provider, model) pairs `policy_id`'s totals showed (`true`).
    ///
    /// Pricing finds a row by the request's model, else by `provider/model`
    /// (`Catalog::lookup`), so a row `p/m` is reached by the model `p/m` and by provider `p`
    /// with model `m`: both are candidates from the start, before any traffic. The provider is
    /// the first segment, as in LiteLLM's names (`bedrock/us-east-1/x`: provider `bedrock`,
    /// model `us-east-1/x`).
    fn model_candidates(
        &self,
        policy_id: &str,
        catalog: &pricing::Catalog,
    ) -> BTreeSet<(String, String, bool)> {
        let mut candidates: BTreeSet<(String, String, bool)> = BTreeSet::new();
        for entry in catalog.models() {
            candidates.insert((String::new(), entry.name.clone(), false));
            if let Some((provider, model)) = entry.name.split_once('/') {
                candidates.insert((provider.to_owned(), model.to_owned(), false));
            }
        }
        candidates.extend(
            self.observed_models
                .iter()
                .filter(|(policy, _, _)| policy == policy_id)
                .map(|(_, provider, model)| (provider.clone(), model.clone(), true)),
        );
        candidates
    }

    /// Decides the `desired` model-rule blocks not held yet and lifts held ones no longer desired.
    fn enforce_model_blocks(
        &mut self,
        desired: &BTreeMap<String, ControlDecision>,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        for (key, decision) in desired {
            let held_block = self
                .decisions
                .get(key)
                .is_some_and(|held| held.action == DecisionAction::Block);
            if !held_block {
                effects.push(self.decide(decision.clone()));
            }
        }
        let lifted: Vec<ControlDecision> = self
            .decisions
            .values()
            .filter(|held| {
                held.window == MODEL_RULES_WINDOW
                    && held.action != DecisionAction::Allow
                    && !desired.contains_key(&held.key)
            })
            .cloned()
            .collect();
        for held in lifted {
            let reason = format!(
                "policy {} no longer blocks {}",
                held.policy_id,
                held.scope.get("model").map_or("this model", String::as_str)
            );
            effects.push(self.lift(&held, reason, now));
        }
        effects
    }
}

/// The block of `model` by `policy`'s model rules, for `issue`: scoped to the policy's fixed
/// dimensions and the model (and the provider when the catalog row was found through it), in
/// its own key space apart from the policy's quota decisions.
fn model_block(
    policy: &Policy,
    model: &str,
    via_provider: Option<String>,
    issue: policy::ModelIssue,
    now: DateTime<Utc>,
) -> ControlDecision {
    let mut scope = policy.fixed_dimensions();
    scope.insert("model".to_owned(), model.to_owned());
    // The allow-list judges the model name whatever the provider.
    if let Some(provider) = via_provider.filter(|_| issue != policy::ModelIssue::NotAllowListed) {
        scope.insert("provider".to_owned(), provider);
    }
    let key =
        ControlDecision::compaction_key(&format!("{}#{MODEL_RULES_WINDOW}", policy.id()), &scope);
    let (unit, what) = describe_issue(issue, model);
    ControlDecision {
        decision_id: String::new(),
        key,
        policy_id: policy.id().to_owned(),
        reason: format!(
            "{what}: policy {} blocks it for {}",
            policy.id(),
            render_scope(&policy.fixed_dimensions())
        ),
        scope,
        action: DecisionAction::Block,
        degrade_to: None,
        unit: unit.to_owned(),
        observed: Decimal::ONE,
        limit: Decimal::ZERO,
        window: MODEL_RULES_WINDOW.to_owned(),
        window_start: DateTime::<Utc>::UNIX_EPOCH,
        window_end: model_rules_end(),
        issued_at: now,
        expires_at: None,
        version: 0,
        absent: Vec::new(),
        shadow: false,
    }
}
