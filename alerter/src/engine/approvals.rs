//! Signed approvals: a raise applied, rejected, expired or withdrawn, and the caps it lifts or
//! restores.

use super::*;

impl Engine {
    /// Checks an approval record and applies it if valid (module docs, [`crate::approvals`]).
    pub fn on_approval(&mut self, received: ReceivedApproval, now: DateTime<Utc>) -> Vec<Effect> {
        let received = Arc::new(received);
        let policies = Arc::clone(&self.policies);
        let mut effects = Vec::new();
        match self.approvals.offer(&policies, &received, now) {
            Offered::AlreadyHeld => {}
            Offered::Over => {
                let reason = format!(
                    "the raise to {} expired at {} (read back after its end)",
                    received.approval.new_limit.normalize(),
                    received
                        .approval
                        .valid_until
                        .to_rfc3339_opts(SecondsFormat::Secs, true)
                );
                effects.push(Effect::ApprovalDecided {
                    received,
                    status: "expired",
                    reason,
                    shadowed: false,
                });
            }
            Offered::Rejected { reason, shadowed } => effects.push(Effect::ApprovalDecided {
                received,
                status: "rejected",
                reason,
                shadowed,
            }),
            Offered::Applied => {
                let approval = &received.approval;
                let reason = format!(
                    "{} raised the limit of {} for {} to {} until {}: {}",
                    approval.approved_by,
                    approval.policy_id,
                    render_scope(&approval.scope),
                    approval.new_limit.normalize(),
                    approval
                        .valid_until
                        .to_rfc3339_opts(SecondsFormat::Secs, true),
                    approval.reason
                );
                let policy_id = approval.policy_id.clone();
                let scope = approval.scope.clone();
                effects.push(Effect::ApprovalDecided {
                    received,
                    status: "applied",
                    reason,
                    shadowed: false,
                });
                effects.extend(self.reevaluate_scope(&policy_id, &scope, now));
                effects.extend(self.follow_decisions(now));
            }
        }
        self.settled(effects)
    }
}
