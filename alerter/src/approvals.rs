//! Approvals as the alerter trusts them: who signed, when the broker stored it, what it may raise.
//!
//! # The trust boundary
//! Anyone who can produce to the approvals topic can write any record. A record raises a cap only
//! if every check of [`check`] passes:
//! - its Kafka key is its own `approval_id` (records are keyed by id, so compaction keeps every
//!   approval instead of the latest per scope);
//! - `approved_by` is one of the policy's `approval.approvers` and the record's `signature` is that
//!   approver's Ed25519 signature of [`Approval::signed_bytes`] (the key is the policy's, so a
//!   writer without the approver's private key cannot make one, nor alter a signed one);
//! - the scope names exactly the policy's `group_by` dimensions;
//! - the new limit is above the cap and at most `max_raise` above it;
//! - it lasts at most `max_duration` **from the broker's append time** (the topic is created with
//!   `message.timestamp.type=LogAppendTime`, so the time is the broker's, stored with the record,
//!   the same at every re-read); the writer's `requested_at` is never used. A record without a
//!   broker append time is rejected.
//!
//! A rejected record is audited with the reason and changes nothing.
//!
//! # Several raises for one scope
//! Every valid approval is kept until its own `valid_until`; the limit in force is the **highest**
//! `new_limit` among them. That rule does not depend on the order records are read in, so a restart
//! (which reads the compacted topic again, in any order across partitions) gives the same limit.
//! A later record, valid or not, never removes or lowers an earlier valid raise. To end a raise
//! early, take the approver out of the policy (or change their key): at the reload, approvals that
//! no longer pass the checks are withdrawn ([`Book::recheck`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use policy::{Policy, PolicySet};
use rust_decimal::Decimal;
use schemas::Approval;

/// An approval record as the service read it from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedApproval {
    /// The decoded record.
    pub approval: Approval,
    /// When the broker appended it (`LogAppendTime`); `None` when the record carried another
    /// timestamp type (a topic not configured for it) or none.
    pub appended_at: Option<DateTime<Utc>>,
    /// The Kafka record key, as text (`None`: no key).
    pub key: Option<String>,
    /// The record bytes as read (audited, so the signature can be verified again).
    pub record: Vec<u8>,
}

impl ReceivedApproval {
    /// A record read with `key`, `appended_at` and `record` bytes.
    pub fn new(
        approval: Approval,
        appended_at: Option<DateTime<Utc>>,
        key: Option<&[u8]>,
        record: &[u8],
    ) -> ReceivedApproval {
        ReceivedApproval {
            approval,
            appended_at,
            key: key.map(|key| String::from_utf8_lossy(key).into_owned()),
            record: record.to_vec(),
        }
    }
}

/// The alerter's checks of one record against `policies` (module docs); `Err(reason)` if it is
/// rejected. Time is the record's broker append time, never `now` nor `requested_at`: the same
/// record gets the same verdict at every restart (until it expires).
pub fn check(policies: &PolicySet, received: &ReceivedApproval) -> Result<(), String> {
    let approval = &received.approval;
    let policy = policies
        .get(&approval.policy_id)
        .ok_or_else(|| format!("no policy {}", approval.policy_id))?;
    let rule = policy
        .record()
        .approval
        .as_ref()
        .ok_or_else(|| format!("policy {} takes no approvals", policy.id()))?;
    if received.key.as_deref() != Some(approval.approval_id.as_str()) {
        return Err(format!(
            "record key {:?} is not the approval_id {:?}: approvals are keyed by their own id",
            received.key.as_deref().unwrap_or(""),
            approval.approval_id
        ));
    }
    check_signature(policy, approval)?;
    check_scope(policy, &approval.scope)?;
    check_limit(policy, approval.new_limit, rule)?;
    let appended_at = received.appended_at.ok_or_else(|| {
        "the record carries no broker append time: the approvals topic must have \
         message.timestamp.type=LogAppendTime (a writer's own time cannot bound max_duration)"
            .to_owned()
    })?;
    if approval.valid_until <= appended_at {
        return Err(format!(
            "expired: valid_until {} had passed when the broker stored the record at {}",
            rfc3339(approval.valid_until),
            rfc3339(appended_at)
        ));
    }
    let lasts = approval.valid_until - appended_at;
    if lasts > rule.max_duration.0 {
        return Err(format!(
            "too long: a raise may last at most {}s from when it was first seen (policy {} \
             max_duration); this one lasts {}s from {} (the broker's append time; requested_at \
             is not used)",
            rule.max_duration.0.num_seconds(),
            policy.id(),
            lasts.num_seconds(),
            rfc3339(appended_at)
        ));
    }
    Ok(())
}

fn check_signature(policy: &Policy, approval: &Approval) -> Result<(), String> {
    let rule = policy.record().approval.as_ref();
    let approver = rule
        .and_then(|rule| {
            rule.approvers
                .iter()
                .find(|approver| approver.name == approval.approved_by)
        })
        .ok_or_else(|| {
            format!(
                "{:?} is not an approver of policy {} (approvers: {})",
                approval.approved_by,
                policy.id(),
                approver_names(policy).join(", ")
            )
        })?;
    if approval.signature.is_empty() {
        return Err(format!(
            "unsigned: an approval counts only with {}'s signature (quotaflow-alerter approve signs it)",
            approver.name
        ));
    }
    let signed = approval
        .signed_bytes()
        .map_err(|error| format!("not encodable: {error}"))?;
    if !approver.verifies(&signed, &approval.signature) {
        return Err(format!(
            "forged: the signature does not verify with {}'s public key in policy {} (altered \
             after signing, or signed with another key)",
            approver.name,
            policy.id()
        ));
    }
    Ok(())
}

fn check_scope(policy: &Policy, scope: &BTreeMap<String, String>) -> Result<(), String> {
    let group_by: HashSet<String> = policy
        .group_by()
        .map(|dimension| dimension.to_string())
        .collect();
    let named: HashSet<String> = scope.keys().cloned().collect();
    if named != group_by {
        let mut expected: Vec<&String> = group_by.iter().collect();
        expected.sort();
        return Err(format!(
            "out of scope: the scope names {:?}, policy {} groups by {:?} (an approval names \
             exactly the group_by dimensions)",
            scope.keys().collect::<Vec<_>>(),
            policy.id(),
            expected
        ));
    }
    Ok(())
}

fn check_limit(
    policy: &Policy,
    new_limit: Decimal,
    rule: &policy::ApprovalRule,
) -> Result<(), String> {
    let cap = policy.hard_cap();
    let max_limit = cap + rule.max_raise.absolute_for(cap);
    if new_limit <= cap {
        return Err(format!(
            "new limit {} is not above the cap {}",
            new_limit.normalize(),
            cap.normalize()
        ));
    }
    if new_limit > max_limit {
        return Err(format!(
            "too large: new limit {} is above the most policy {} allows ({} = cap {} + max_raise)",
            new_limit.normalize(),
            policy.id(),
            max_limit.normalize(),
            cap.normalize()
        ));
    }
    Ok(())
}

/// The approver names of `policy` (for messages and hints).
pub fn approver_names(policy: &Policy) -> Vec<&str> {
    policy
        .record()
        .approval
        .iter()
        .flat_map(|rule| rule.approvers.iter().map(|approver| approver.name.as_str()))
        .collect()
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// What [`Book::offer`] made of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// Applied: the scope's limit may have changed.
    Applied,
    /// Already held (the same record read again): nothing to do, nothing to audit.
    AlreadyHeld,
    /// A valid approval whose `valid_until` passed before it was read (read back at a restart):
    /// nothing to apply; it is audited as expired and may be tombstoned.
    Over,
    /// Rejected with the reason. `shadowed`: a different record reusing the id of one in force,
    /// audited without replacing the applied one's status row.
    Rejected { reason: String, shadowed: bool },
}

/// Every valid approval in force, by approval key (policy and scope), then approval id.
#[derive(Debug, Default)]
pub struct Book {
    in_force: HashMap<String, BTreeMap<String, Arc<ReceivedApproval>>>,
}

impl Book {
    /// Checks `received` and keeps it if valid (module docs).
    pub fn offer(
        &mut self,
        policies: &PolicySet,
        received: &Arc<ReceivedApproval>,
        now: DateTime<Utc>,
    ) -> Offered {
        let approval = &received.approval;
        let key = approval_key(&approval.policy_id, &approval.scope);
        let held = self
            .in_force
            .values()
            .find_map(|by_id| by_id.get(&approval.approval_id));
        if let Some(held) = held {
            if held.approval == received.approval {
                return Offered::AlreadyHeld;
            }
            return Offered::Rejected {
                reason: format!(
                    "approval_id {} is already in force with other content; this record is ignored",
                    approval.approval_id
                ),
                shadowed: true,
            };
        }
        if let Err(reason) = check(policies, received) {
            return Offered::Rejected {
                reason,
                shadowed: false,
            };
        }
        if approval.valid_until <= now {
            return Offered::Over;
        }
        self.in_force
            .entry(key)
            .or_default()
            .insert(approval.approval_id.clone(), Arc::clone(received));
        Offered::Applied
    }

    /// The approval that sets the limit of (policy, scope) at `now`: the highest `new_limit` in
    /// force (ties: the one valid longest, then the greatest id).
    pub fn in_force(
        &self,
        policy_id: &str,
        scope: &BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Option<&Approval> {
        self.in_force
            .get(&approval_key(policy_id, scope))?
            .values()
            .map(|received| &received.approval)
            .filter(|approval| approval.valid_until > now)
            .max_by(|a, b| {
                (a.new_limit, a.valid_until, &a.approval_id).cmp(&(
                    b.new_limit,
                    b.valid_until,
                    &b.approval_id,
                ))
            })
    }

    /// Removes and returns the approvals whose `valid_until` is at or before `now`.
    pub fn take_expired(&mut self, now: DateTime<Utc>) -> Vec<Arc<ReceivedApproval>> {
        self.take_where(|received| received.approval.valid_until <= now)
    }

    /// Checks every approval in force against `policies` again (after a reload) and removes those
    /// that no longer pass, with the reason.
    pub fn recheck(&mut self, policies: &PolicySet) -> Vec<(Arc<ReceivedApproval>, String)> {
        let mut reasons = HashMap::new();
        for by_id in self.in_force.values() {
            for (id, received) in by_id {
                if let Err(reason) = check(policies, received) {
                    reasons.insert(id.clone(), reason);
                }
            }
        }
        self.take_where(|received| reasons.contains_key(&received.approval.approval_id))
            .into_iter()
            .map(|received| {
                let reason = reasons
                    .remove(&received.approval.approval_id)
                    .unwrap_or_default();
                (received, reason)
            })
            .collect()
    }

    fn take_where(
        &mut self,
        mut condition: impl FnMut(&ReceivedApproval) -> bool,
    ) -> Vec<Arc<ReceivedApproval>> {
        let mut taken = Vec::new();
        self.in_force.retain(|_, by_id| {
            by_id.retain(|_, received| {
                if condition(received) {
                    taken.push(Arc::clone(received));
                    false
                } else {
                    true
                }
            });
            !by_id.is_empty()
        });
        taken
    }

    /// How many approvals are in force.
    pub fn len(&self) -> usize {
        self.in_force.values().map(BTreeMap::len).sum()
    }

    /// Whether no approval is in force.
    pub fn is_empty(&self) -> bool {
        self.in_force.is_empty()
    }
}

/// The key approvals of one (policy, group-by scope) are grouped by (not their Kafka key, which
/// is their own id).
pub fn approval_key(policy_id: &str, scope: &BTreeMap<String, String>) -> String {
    schemas::ControlDecision::compaction_key(policy_id, scope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use ed25519_dalek::SigningKey;

    const ALICE_SEED: [u8; 32] = [1; 32];
    const MALLORY_SEED: [u8; 32] = [2; 32];

    fn policies() -> PolicySet {
        let alice = policy::ApproverKey(SigningKey::from_bytes(&ALICE_SEED).verifying_key());
        let yaml = format!(
            r#"
id: capped
owner: {{team: search, contact: search@example.com}}
description: a cap budget owners may raise
unit: cost_usd
group_by: [api_key_id]
window: {{kind: day}}
hard_cap: 10
action: {{kind: block}}
approval:
  approvers: [{{name: alice, public_key: "{alice}"}}]
  max_raise: 100%
  max_duration: 1h
"#
        );
        PolicySet::from_str("policies.yaml", &yaml).unwrap()
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-03T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// A raise of `api_key_id=k1` to `limit` for `lasting`, signed with `seed`, stored by the
    /// broker at `t0()`.
    fn received(limit: &str, lasting: TimeDelta, seed: [u8; 32]) -> ReceivedApproval {
        let approval = crate::approve::build(
            "capped",
            BTreeMap::from([("api_key_id".to_owned(), "k1".to_owned())]),
            limit.parse().unwrap(),
            t0() + lasting,
            "launch",
            "alice",
            t0(),
        );
        let approval = crate::approve::sign(approval, &SigningKey::from_bytes(&seed)).unwrap();
        let key = approval.approval_id.clone();
        ReceivedApproval::new(approval, Some(t0()), Some(key.as_bytes()), b"")
    }

    fn resign(mut received: ReceivedApproval) -> ReceivedApproval {
        received.approval =
            crate::approve::sign(received.approval, &SigningKey::from_bytes(&ALICE_SEED)).unwrap();
        received
    }

    fn rejection(received: &ReceivedApproval) -> String {
        check(&policies(), received).unwrap_err()
    }

    #[test]
    fn a_signed_raise_within_the_rules_passes() {
        assert_eq!(
            check(
                &policies(),
                &received("15", TimeDelta::minutes(30), ALICE_SEED)
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &policies(),
                &received("20", TimeDelta::hours(1), ALICE_SEED)
            ),
            Ok(())
        );
    }

    #[test]
    fn forged_altered_and_unsigned_records_are_rejected() {
        let forged = received("15", TimeDelta::minutes(30), MALLORY_SEED);
        assert!(
            rejection(&forged).starts_with("forged:"),
            "{}",
            rejection(&forged)
        );
        let mut altered = received("15", TimeDelta::minutes(30), ALICE_SEED);
        altered.approval.new_limit = "20".parse().unwrap();
        assert!(rejection(&altered).starts_with("forged:"));
        let mut unsigned = received("15", TimeDelta::minutes(30), ALICE_SEED);
        unsigned.approval.signature.clear();
        assert!(rejection(&unsigned).starts_with("unsigned:"));
    }

    #[test]
    fn unknown_approvers_and_other_scopes_are_rejected() {
        let mut stranger = received("15", TimeDelta::minutes(30), ALICE_SEED);
        stranger.approval.approved_by = "mallory".to_owned();
        let stranger = resign(stranger);
        assert!(rejection(&stranger).contains("\"mallory\" is not an approver"));
        let mut team = received("15", TimeDelta::minutes(30), ALICE_SEED);
        team.approval.scope = BTreeMap::from([("team".to_owned(), "search".to_owned())]);
        assert!(rejection(&resign(team)).starts_with("out of scope:"));
        let mut global = received("15", TimeDelta::minutes(30), ALICE_SEED);
        global.approval.scope.clear();
        assert!(rejection(&resign(global)).starts_with("out of scope:"));
        let mut other_policy = received("15", TimeDelta::minutes(30), ALICE_SEED);
        other_policy.approval.policy_id = "other".to_owned();
        assert_eq!(rejection(&resign(other_policy)), "no policy other");
    }

    #[test]
    fn limits_outside_the_raise_are_rejected() {
        let too_large = received("20.000000000001", TimeDelta::minutes(30), ALICE_SEED);
        assert!(rejection(&too_large).starts_with("too large:"));
        let not_a_raise = received("10", TimeDelta::minutes(30), ALICE_SEED);
        assert!(rejection(&not_a_raise).contains("is not above the cap"));
    }

    #[test]
    fn duration_counts_from_the_broker_time_never_from_requested_at() {
        let too_long = received(
            "15",
            TimeDelta::hours(1) + TimeDelta::seconds(1),
            ALICE_SEED,
        );
        assert!(rejection(&too_long).starts_with("too long:"));
        // A writer claiming it was requested an hour later changes nothing …
        let mut claims_later = too_long.clone();
        claims_later.approval.requested_at = t0() + TimeDelta::hours(1);
        assert!(rejection(&resign(claims_later)).starts_with("too long:"));
        // … nor does one claiming an earlier request for a short raise.
        let mut claims_earlier = received("15", TimeDelta::minutes(30), ALICE_SEED);
        claims_earlier.approval.requested_at = t0() - TimeDelta::days(30);
        assert_eq!(check(&policies(), &resign(claims_earlier)), Ok(()));
        // Stored later by the broker, the same deadline is within the duration.
        let mut stored_later = too_long;
        stored_later.appended_at = Some(t0() + TimeDelta::seconds(2));
        assert_eq!(check(&policies(), &stored_later), Ok(()));
    }

    #[test]
    fn expired_unstamped_and_miskeyed_records_are_rejected() {
        let mut expired = received("15", TimeDelta::minutes(30), ALICE_SEED);
        expired.appended_at = Some(t0() + TimeDelta::minutes(30));
        assert!(rejection(&expired).starts_with("expired:"));
        let mut create_time = received("15", TimeDelta::minutes(30), ALICE_SEED);
        create_time.appended_at = None;
        assert!(rejection(&create_time).contains("LogAppendTime"));
        let mut by_scope = received("15", TimeDelta::minutes(30), ALICE_SEED);
        by_scope.key = Some("capped|api_key_id=k1".to_owned());
        assert!(rejection(&by_scope).contains("keyed by their own id"));
    }

    #[test]
    fn the_highest_valid_raise_is_in_force_and_later_records_never_remove_one() {
        let policies = policies();
        let scope = BTreeMap::from([("api_key_id".to_owned(), "k1".to_owned())]);
        let mut book = Book::default();
        let high = Arc::new(received("18", TimeDelta::minutes(20), ALICE_SEED));
        let low_long = Arc::new(received("12", TimeDelta::minutes(50), ALICE_SEED));
        let now = t0() + TimeDelta::seconds(1);
        assert_eq!(book.offer(&policies, &low_long, now), Offered::Applied);
        assert_eq!(book.offer(&policies, &high, now), Offered::Applied);
        assert_eq!(book.offer(&policies, &high, now), Offered::AlreadyHeld);
        // A forged record for the same scope, and one reusing the id of one in force.
        let forged = Arc::new(received("20", TimeDelta::minutes(50), MALLORY_SEED));
        assert!(matches!(
            book.offer(&policies, &forged, now),
            Offered::Rejected {
                shadowed: false,
                ..
            }
        ));
        let mut reused = received("20", TimeDelta::minutes(50), MALLORY_SEED);
        reused.approval.approval_id = high.approval.approval_id.clone();
        assert!(matches!(
            book.offer(&policies, &Arc::new(reused), now),
            Offered::Rejected { shadowed: true, .. }
        ));
        let in_force = |book: &Book, at| book.in_force("capped", &scope, at).map(|a| a.new_limit);
        assert_eq!(in_force(&book, now), Some("18".parse().unwrap()));
        // The high one expires: the lower, longer one holds until its own end.
        let later = t0() + TimeDelta::minutes(30);
        assert_eq!(book.take_expired(later).len(), 1);
        assert_eq!(in_force(&book, later), Some("12".parse().unwrap()));
        assert_eq!(book.take_expired(t0() + TimeDelta::minutes(50)).len(), 1);
        assert!(book.is_empty());
        // Read back after it was over (a restart): nothing to apply, nothing to audit.
        assert_eq!(
            book.offer(&policies, &high, t0() + TimeDelta::hours(2)),
            Offered::Over
        );
    }

    #[test]
    fn a_reload_withdraws_approvals_of_a_removed_approver() {
        let mut book = Book::default();
        let raise = Arc::new(received("15", TimeDelta::minutes(30), ALICE_SEED));
        assert_eq!(book.offer(&policies(), &raise, t0()), Offered::Applied);
        assert!(book.recheck(&policies()).is_empty());
        let without_approvals = PolicySet::from_str(
            "policies.yaml",
            "id: capped\nowner: {team: search, contact: search@example.com}\ndescription: d\n\
             unit: cost_usd\ngroup_by: [api_key_id]\nwindow: {kind: day}\nhard_cap: 10\n\
             action: {kind: block}\n",
        )
        .unwrap();
        let withdrawn = book.recheck(&without_approvals);
        assert_eq!(withdrawn.len(), 1);
        assert!(withdrawn[0].1.contains("takes no approvals"));
        assert!(book.is_empty());
    }
}
