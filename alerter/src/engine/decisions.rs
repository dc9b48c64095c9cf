//! Decisions: numbering, lifting, following with pages and resolves, and forgetting settled keys.

use super::*;

impl Engine {
    /// An allow decision lifting `held` (same scope and window), recorded as held.
    pub(super) fn lift(
        &mut self,
        held: &ControlDecision,
        reason: String,
        now: DateTime<Utc>,
    ) -> Effect {
        let decision = ControlDecision {
            decision_id: String::new(),
            action: DecisionAction::Allow,
            degrade_to: None,
            reason,
            issued_at: now,
            expires_at: None,
            version: 0,
            ..held.clone()
        };
        self.decide(decision)
    }

    /// Re-issues every block or degrade whose policy's shadow mode was switched (a reload): a
    /// dry run turned off enforces the block it would have made, from now on; one turned on
    /// stops enforcing it. Same scope, window and reason, a new version.
    pub(super) fn reshadow(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        let mut switched: Vec<ControlDecision> = self
            .decisions
            .values()
            .filter(|decision| {
                decision.action != DecisionAction::Allow
                    && self
                        .policies
                        .get(&decision.policy_id)
                        .is_some_and(|policy| policy.is_shadow() != decision.shadow)
            })
            .cloned()
            .collect();
        switched.sort_by(|a, b| a.key.cmp(&b.key));
        switched
            .into_iter()
            .map(|held| {
                self.decide(ControlDecision {
                    issued_at: now,
                    ..held
                })
            })
            .collect()
    }

    /// Whether `decision` is an allow old enough to be forgotten (see [`Effect::Forget`]).
    pub(super) fn forgettable(&self, decision: &ControlDecision, now: DateTime<Utc>) -> bool {
        decision.action == DecisionAction::Allow
            && decision.issued_at <= now - self.ended_window_keep * 2
    }

    /// Forgets the allows nothing depends on any more (issue 13 point 7): without this the
    /// decisions map (and the control topic) keeps one entry per scope ever blocked, a new one
    /// per `user_id` or API key capped once. An allow is the state of a key without a decision,
    /// so forgetting it changes nothing a gateway does; a later block of the key starts a new
    /// version sequence above the old one (see [`Engine::decide`]).
    pub(super) fn forget_settled(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        let mut keys: Vec<String> = self
            .decisions
            .values()
            .filter(|decision| self.forgettable(decision, now))
            .map(|decision| decision.key.clone())
            .collect();
        keys.sort_unstable();
        for key in &keys {
            self.decisions.remove(key);
            self.to_follow.remove(key);
        }
        keys.into_iter().map(Effect::Forget).collect()
    }

    /// Numbers `decision` after the held one and records it as held.
    ///
    /// The first decision of a key (none held) is numbered by its issue time in milliseconds
    /// since the epoch, later ones held + 1: a key forgotten ([`Effect::Forget`]) and blocked
    /// again hours later starts above every version it had (a key would need millions of
    /// decisions within those hours to catch up), so its decision ids (`<key>@<version>`), alert
    /// dedup keys and audit rows never repeat an earlier one.
    ///
    /// A block or degrade of a policy in shadow mode is marked `shadow` here, the one place every
    /// decision passes: gateways never enforce it; an allow is never shadow.
    pub(super) fn decide(&mut self, mut decision: ControlDecision) -> Effect {
        decision.shadow = decision.action != DecisionAction::Allow
            && self
                .policies
                .get(&decision.policy_id)
                .is_some_and(|policy| policy.is_shadow());
        let first = u64::try_from(decision.issued_at.timestamp_millis())
            .unwrap_or(0)
            .max(1);
        let version = self
            .decisions
            .get(&decision.key)
            .map_or(first, |held| held.version + 1);
        decision.version = version;
        decision.decision_id = format!("{}@{version}", decision.key);
        self.to_follow.insert(decision.key.clone());
        self.policies_with_blocks.insert(decision.policy_id.clone());
        self.decisions
            .insert(decision.key.clone(), decision.clone());
        Effect::Decide(decision)
    }

    /// The alerts the decisions in force call for and that were not raised yet: a page per
    /// block/degrade, a resolve per allow that lifted one.
    pub(super) fn follow_decisions(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        if self.to_follow.is_empty() {
            return Vec::new();
        }
        let keys = std::mem::take(&mut self.to_follow);
        let mut wanted: Vec<ControlDecision> = keys
            .iter()
            .filter_map(|key| self.decisions.get(key))
            .filter(|decision| !self.fired.contains(&decision_alert_key(decision)))
            // An old allow read back at a restart (its resolve long sent, its dedup key pruned)
            // is forgotten, not resolved again.
            .filter(|decision| !self.forgettable(decision, now))
            .cloned()
            .collect();
        wanted.sort_by(|a, b| a.key.cmp(&b.key));
        let policies = Arc::clone(&self.policies);
        let mut effects = Vec::new();
        for decision in wanted {
            let dedup_key = decision_alert_key(&decision);
            self.fired.insert(dedup_key.clone());
            let policy = policies.get(&decision.policy_id);
            effects.push(decision_alert(policy, &decision, dedup_key, now));
        }
        effects
    }
}
