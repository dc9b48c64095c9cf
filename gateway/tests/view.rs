//! [`DecisionView`] semantics: matching, versions, allow lifts, tombstones, expiry, precedence.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use gateway::{ApplyOutcome, DecisionView, RequestAttributes, Verdict};
use rust_decimal::Decimal;
use schemas::{ControlDecision, DecisionAction};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap()
}

fn decision(
    policy_id: &str,
    scope: &[(&str, &str)],
    action: DecisionAction,
    version: u64,
) -> ControlDecision {
    let scope: BTreeMap<String, String> = scope
        .iter()
        .map(|(dimension, value)| (dimension.to_string(), value.to_string()))
        .collect();
    ControlDecision {
        decision_id: format!("{policy_id}-{version}"),
        action,
        degrade_to: (action == DecisionAction::Degrade).then(|| "gpt-4o-mini".to_string()),
        reason: format!("{policy_id}: daily budget exhausted"),
        observed: Decimal::new(120, 0),
        limit: Decimal::new(100, 0),
        window_start: now() - Duration::hours(12),
        window_end: now() + Duration::hours(12),
        version,
        ..schemas::fixtures::block_decision(policy_id, scope, Vec::new(), now())
    }
}

/// `decision` for the bucket of requests lacking `absent` (key recomputed to include them).
fn without(mut decision: ControlDecision, absent: &[&str]) -> ControlDecision {
    decision.absent = absent.iter().map(|name| name.to_string()).collect();
    decision.absent.sort();
    decision.key = ControlDecision::compaction_key_with_absent(
        &decision.policy_id,
        &decision.scope,
        &decision.absent,
    );
    decision
}

fn search_gpt4o() -> RequestAttributes<'static> {
    RequestAttributes {
        api_key_id: "key-1",
        team: "search",
        user_id: Some("alice"),
        customer_id: None,
        workflow: "answer",
        environment: "prod",
        provider: "openai",
        model: "gpt-4o",
        endpoint: "chat",
        modality: "text",
        labels: &[("feature", "summaries")],
    }
}

fn policy_of(verdict: &Verdict) -> Option<&str> {
    match verdict {
        Verdict::Allow => None,
        Verdict::Block { policy_id, .. } | Verdict::Degrade { policy_id, .. } => Some(policy_id),
    }
}

#[test]
fn an_empty_view_allows() {
    assert_eq!(
        DecisionView::new().check(&search_gpt4o(), now()),
        Verdict::Allow
    );
}

#[test]
fn a_decision_matches_only_when_every_scope_dimension_equals() {
    let mut view = DecisionView::new();
    view.apply(&decision(
        "team-model",
        &[("team", "search"), ("model", "gpt-4o")],
        DecisionAction::Block,
        1,
    ));
    let verdict = view.check(&search_gpt4o(), now());
    assert!(!verdict.may_proceed());
    assert_eq!(verdict.reason(), Some("team-model: daily budget exhausted"));

    let other_model = RequestAttributes {
        model: "gpt-4o-mini",
        ..search_gpt4o()
    };
    assert_eq!(view.check(&other_model, now()), Verdict::Allow);
    let other_team = RequestAttributes {
        team: "ads",
        ..search_gpt4o()
    };
    assert_eq!(view.check(&other_team, now()), Verdict::Allow);
}

#[test]
fn optional_attributes_and_labels_match_only_when_present() {
    let mut view = DecisionView::new();
    view.apply(&decision(
        "per-customer",
        &[("customer_id", "acme")],
        DecisionAction::Block,
        1,
    ));
    view.apply(&decision(
        "per-feature",
        &[("labels.feature", "summaries"), ("environment", "prod")],
        DecisionAction::Degrade,
        1,
    ));
    // No customer on the request: the customer block cannot apply; the label degrade does.
    let verdict = view.check(&search_gpt4o(), now());
    assert_eq!(policy_of(&verdict), Some("per-feature"));
    assert!(matches!(&verdict, Verdict::Degrade { to, .. } if &**to == "gpt-4o-mini"));

    let acme = RequestAttributes {
        customer_id: Some("acme"),
        labels: &[],
        ..search_gpt4o()
    };
    assert_eq!(policy_of(&view.check(&acme, now())), Some("per-customer"));
    let unlabelled = RequestAttributes {
        labels: &[],
        ..search_gpt4o()
    };
    assert_eq!(view.check(&unlabelled, now()), Verdict::Allow);
}

#[test]
fn an_empty_scope_matches_every_request() {
    let mut view = DecisionView::new();
    view.apply(&decision("global", &[], DecisionAction::Block, 1));
    assert_eq!(
        policy_of(&view.check(&search_gpt4o(), now())),
        Some("global")
    );
}

#[test]
fn a_higher_version_supersedes_and_a_lower_one_is_ignored() {
    let mut view = DecisionView::new();
    let scope = [("team", "search")];
    assert_eq!(
        view.apply(&decision("p", &scope, DecisionAction::Degrade, 5)),
        ApplyOutcome::Installed
    );
    assert_eq!(
        view.apply(&decision("p", &scope, DecisionAction::Block, 4)),
        ApplyOutcome::Stale
    );
    assert_eq!(
        view.apply(&decision("p", &scope, DecisionAction::Block, 5)),
        ApplyOutcome::Stale
    );
    assert!(matches!(
        view.check(&search_gpt4o(), now()),
        Verdict::Degrade { .. }
    ));

    assert_eq!(
        view.apply(&decision("p", &scope, DecisionAction::Block, 6)),
        ApplyOutcome::Installed
    );
    assert!(matches!(
        view.check(&search_gpt4o(), now()),
        Verdict::Block { .. }
    ));
    assert_eq!(view.len(), 1);
}

#[test]
fn an_allow_lifts_the_block_and_an_older_block_cannot_return() {
    let mut view = DecisionView::new();
    let scope = [("team", "search")];
    view.apply(&decision("p", &scope, DecisionAction::Block, 1));
    assert_eq!(
        view.apply(&decision("p", &scope, DecisionAction::Allow, 2)),
        ApplyOutcome::Lifted
    );
    assert_eq!(view.check(&search_gpt4o(), now()), Verdict::Allow);
    assert!(view.is_empty());
    // Redelivery of the old block is ignored.
    assert_eq!(
        view.apply(&decision("p", &scope, DecisionAction::Block, 1)),
        ApplyOutcome::Stale
    );
    assert_eq!(view.check(&search_gpt4o(), now()), Verdict::Allow);
}

#[test]
fn a_tombstone_forgets_the_key() {
    let mut view = DecisionView::new();
    let block = decision("p", &[("team", "search")], DecisionAction::Block, 3);
    view.apply(&block);
    assert!(view.remove(&block.key));
    assert_eq!(view.check(&search_gpt4o(), now()), Verdict::Allow);
    assert!(!view.remove(&block.key));
}

#[test]
fn an_expired_decision_does_not_apply() {
    let mut view = DecisionView::new();
    let mut block = decision("p", &[("team", "search")], DecisionAction::Block, 1);
    block.expires_at = Some(now() + Duration::minutes(1));
    view.apply(&block);
    assert!(!view.check(&search_gpt4o(), now()).may_proceed());
    assert_eq!(
        view.check(&search_gpt4o(), now() + Duration::minutes(1)),
        Verdict::Allow
    );
}

#[test]
fn block_wins_over_degrade_then_the_smallest_key() {
    let mut view = DecisionView::new();
    view.apply(&decision(
        "a-degrade",
        &[("team", "search")],
        DecisionAction::Degrade,
        1,
    ));
    view.apply(&decision(
        "z-block",
        &[("model", "gpt-4o")],
        DecisionAction::Block,
        1,
    ));
    view.apply(&decision(
        "y-block",
        &[("api_key_id", "key-1")],
        DecisionAction::Block,
        1,
    ));
    assert_eq!(
        policy_of(&view.check(&search_gpt4o(), now())),
        Some("y-block")
    );

    let mut degrades_only = DecisionView::new();
    degrades_only.apply(&decision(
        "b",
        &[("team", "search")],
        DecisionAction::Degrade,
        1,
    ));
    degrades_only.apply(&decision(
        "a",
        &[("model", "gpt-4o")],
        DecisionAction::Degrade,
        1,
    ));
    assert_eq!(
        policy_of(&degrades_only.check(&search_gpt4o(), now())),
        Some("a")
    );
}

#[test]
fn an_unknown_dimension_never_matches_and_drops_the_older_decision() {
    let mut view = DecisionView::new();
    let mut block = decision("p", &[("team", "search")], DecisionAction::Block, 1);
    view.apply(&block);
    block.scope.insert("region".into(), "eu".into());
    block.version = 2;
    assert_eq!(
        view.apply(&block),
        ApplyOutcome::UnknownDimension("region".into())
    );
    assert_eq!(view.check(&search_gpt4o(), now()), Verdict::Allow);
}

#[test]
fn many_decisions_in_one_bucket_are_removed_individually() {
    let mut view = DecisionView::new();
    for model in ["a", "b", "c"] {
        view.apply(&decision(
            model,
            &[("team", "search"), ("model", model)],
            DecisionAction::Block,
            1,
        ));
    }
    let lifted = decision(
        "b",
        &[("team", "search"), ("model", "b")],
        DecisionAction::Allow,
        2,
    );
    view.apply(&lifted);
    let on = |model| RequestAttributes {
        model,
        ..search_gpt4o()
    };
    assert_eq!(policy_of(&view.check(&on("a"), now())), Some("a"));
    assert_eq!(view.check(&on("b"), now()), Verdict::Allow);
    assert_eq!(policy_of(&view.check(&on("c"), now())), Some("c"));
}

/// Issue 13, point 2: the decision for a policy's "no `user_id`" bucket (`absent: [user_id]`,
/// here with the prod selector in scope, and with an empty scope) blocks requests without
/// `user_id` only, never a request with any `user_id` (the empty one included).
#[test]
fn a_decision_for_the_absent_bucket_blocks_only_requests_without_the_dimension() {
    for scope in [&[("environment", "prod")][..], &[][..]] {
        let mut view = DecisionView::new();
        let block = without(
            decision("per-user", scope, DecisionAction::Block, 1),
            &["user_id"],
        );
        assert_eq!(view.apply(&block), ApplyOutcome::Installed);
        let anonymous = RequestAttributes {
            user_id: None,
            ..search_gpt4o()
        };
        assert_eq!(
            policy_of(&view.check(&anonymous, now())),
            Some("per-user"),
            "scope {scope:?}"
        );
        for user in ["alice", "u1", ""] {
            let named = RequestAttributes {
                user_id: Some(user),
                ..search_gpt4o()
            };
            assert_eq!(view.check(&named, now()), Verdict::Allow, "user {user:?}");
        }
        // Outside the scope's present dimensions it does not apply either.
        let staging = RequestAttributes {
            environment: "staging",
            ..anonymous
        };
        let expected = if scope.is_empty() {
            Some("per-user")
        } else {
            None
        };
        assert_eq!(policy_of(&view.check(&staging, now())), expected);
    }
}

/// Issue 13, point 2: a decision for `user_id=u1` never matches a request without `user_id`,
/// and absence works the same for `customer_id` and labels.
#[test]
fn a_decision_for_a_present_value_does_not_match_requests_without_it() {
    let mut view = DecisionView::new();
    view.apply(&decision(
        "per-user",
        &[("user_id", "u1")],
        DecisionAction::Block,
        1,
    ));
    let anonymous = RequestAttributes {
        user_id: None,
        ..search_gpt4o()
    };
    assert_eq!(view.check(&anonymous, now()), Verdict::Allow);
    let u1 = RequestAttributes {
        user_id: Some("u1"),
        ..search_gpt4o()
    };
    assert_eq!(policy_of(&view.check(&u1, now())), Some("per-user"));

    let mut view = DecisionView::new();
    view.apply(&without(
        decision(
            "per-customer",
            &[("team", "search")],
            DecisionAction::Block,
            1,
        ),
        &["customer_id", "labels.tier"],
    ));
    // search_gpt4o has no customer and no `tier` label: blocked.
    assert_eq!(
        policy_of(&view.check(&search_gpt4o(), now())),
        Some("per-customer")
    );
    let acme = RequestAttributes {
        customer_id: Some("acme"),
        ..search_gpt4o()
    };
    assert_eq!(view.check(&acme, now()), Verdict::Allow);
    let tiered = RequestAttributes {
        labels: &[("tier", "gold")],
        ..search_gpt4o()
    };
    assert_eq!(view.check(&tiered, now()), Verdict::Allow);
}

/// Issue 13, point 2: an unknown name in `absent` is refused like one in the scope, and an
/// allow for the absent bucket's key lifts its block.
#[test]
fn absent_dimensions_are_checked_and_lifted_by_key() {
    let mut view = DecisionView::new();
    let unknown = without(
        decision("p", &[("team", "search")], DecisionAction::Block, 1),
        &["region"],
    );
    assert_eq!(
        view.apply(&unknown),
        ApplyOutcome::UnknownDimension("region".into())
    );
    let anonymous = RequestAttributes {
        user_id: None,
        ..search_gpt4o()
    };
    let block = without(
        decision("p", &[("team", "search")], DecisionAction::Block, 1),
        &["user_id"],
    );
    view.apply(&block);
    assert_eq!(policy_of(&view.check(&anonymous, now())), Some("p"));
    let lift = ControlDecision {
        action: DecisionAction::Allow,
        version: 2,
        ..block
    };
    assert_eq!(view.apply(&lift), ApplyOutcome::Lifted);
    assert_eq!(view.check(&anonymous, now()), Verdict::Allow);
}

/// Issue 13 point 7: the decision for a policy's overflow bucket (`user_id=__overflow__`, the
/// aggregator's bucket for values past the kind's cardinality limit) applies to a user the
/// aggregator does not track, within the rest of the scope, and never to a request without a
/// `user_id` (those have their own `absent` bucket).
#[test]
fn an_overflow_bucket_decision_applies_to_any_value_of_its_dimension() {
    let mut view = DecisionView::new();
    let overflow = decision(
        "per-user-daily",
        &[("team", "search"), ("user_id", policy::OVERFLOW_VALUE)],
        DecisionAction::Block,
        1,
    );
    assert_eq!(view.apply(&overflow), ApplyOutcome::Installed);
    let untracked = RequestAttributes {
        user_id: Some("user-never-seen-by-this-gateway"),
        ..search_gpt4o()
    };
    assert_eq!(
        policy_of(&view.check(&untracked, now())),
        Some("per-user-daily")
    );
    let other_team = RequestAttributes {
        team: "ads",
        ..untracked
    };
    assert_eq!(view.check(&other_team, now()), Verdict::Allow);
    let no_user = RequestAttributes {
        user_id: None,
        ..search_gpt4o()
    };
    assert_eq!(view.check(&no_user, now()), Verdict::Allow);

    // Only overflow values in the scope: checked against every request, lifted by an allow.
    let all_overflow = decision(
        "per-user-monthly",
        &[("user_id", policy::OVERFLOW_VALUE)],
        DecisionAction::Block,
        1,
    );
    view.apply(&all_overflow);
    assert_eq!(
        policy_of(&view.check(&other_team, now())),
        Some("per-user-monthly")
    );
    let lift = ControlDecision {
        action: DecisionAction::Allow,
        version: 2,
        ..all_overflow
    };
    assert_eq!(view.apply(&lift), ApplyOutcome::Lifted);
    assert_eq!(view.check(&other_team, now()), Verdict::Allow);
}

/// What a `Retry-After` is made of: the decision's `expires_at`, else the end of its window; a
/// window without an end after its start (a gauge's) gives none.
#[test]
fn a_verdict_says_until_when_its_decision_holds() {
    let until = |decision: &ControlDecision| {
        let mut view = DecisionView::new();
        view.apply(decision);
        match view.check(&search_gpt4o(), now()) {
            Verdict::Block { until, .. } | Verdict::Degrade { until, .. } => until,
            Verdict::Allow => panic!("{} should match", decision.key),
        }
    };
    let mut by_window = decision("day", &[("team", "search")], DecisionAction::Block, 1);
    by_window.expires_at = None;
    assert_eq!(until(&by_window), Some(now() + Duration::hours(12)));

    let mut expiring = by_window.clone();
    expiring.expires_at = Some(now() + Duration::hours(1));
    assert_eq!(until(&expiring), Some(now() + Duration::hours(1)));
    let mut late_expiry = by_window.clone();
    late_expiry.expires_at = Some(now() + Duration::days(3));
    assert_eq!(until(&late_expiry), Some(now() + Duration::hours(12)));

    let mut gauge = decision("jobs", &[("team", "search")], DecisionAction::Degrade, 1);
    gauge.expires_at = None;
    gauge.window_start = DateTime::UNIX_EPOCH;
    gauge.window_end = DateTime::UNIX_EPOCH;
    assert_eq!(until(&gauge), None);
}

/// Issue 15 point 4: a decision of a policy in shadow mode is never enforced; `check_shadow`
/// tells what it would do. Its key's later enforced version enforces (and leaves the shadow
/// view), an allow lifts either, a tombstone forgets it.
#[test]
fn shadow_decisions_are_never_enforced_and_switch_cleanly() {
    let mut view = DecisionView::new();
    let shadow = ControlDecision {
        shadow: true,
        ..decision(
            "team-daily",
            &[("team", "search")],
            DecisionAction::Block,
            1,
        )
    };
    assert_eq!(view.apply(&shadow), ApplyOutcome::Shadowed);
    assert_eq!(view.check(&search_gpt4o(), now()), Verdict::Allow);
    assert!(matches!(
        view.check_shadow(&search_gpt4o(), now()),
        Verdict::Block { ref policy_id, .. } if &**policy_id == "team-daily"
    ));
    assert_eq!((view.len(), view.shadow_len()), (0, 1));

    // The policy is enforced from version 2 on.
    let enforced = decision(
        "team-daily",
        &[("team", "search")],
        DecisionAction::Block,
        2,
    );
    assert_eq!(view.apply(&enforced), ApplyOutcome::Installed);
    assert!(!view.check(&search_gpt4o(), now()).may_proceed());
    assert_eq!(view.check_shadow(&search_gpt4o(), now()), Verdict::Allow);
    assert_eq!((view.len(), view.shadow_len()), (1, 0));

    // A dry run again, then lifted.
    let again = ControlDecision {
        shadow: true,
        ..decision(
            "team-daily",
            &[("team", "search")],
            DecisionAction::Degrade,
            3,
        )
    };
    assert_eq!(view.apply(&again), ApplyOutcome::Shadowed);
    assert_eq!(view.check(&search_gpt4o(), now()), Verdict::Allow);
    assert!(matches!(
        view.check_shadow(&search_gpt4o(), now()),
        Verdict::Degrade { .. }
    ));
    // An older enforced version cannot come back.
    assert_eq!(view.apply(&enforced), ApplyOutcome::Stale);
    let lift = decision(
        "team-daily",
        &[("team", "search")],
        DecisionAction::Allow,
        4,
    );
    assert_eq!(view.apply(&lift), ApplyOutcome::Lifted);
    assert_eq!(view.check_shadow(&search_gpt4o(), now()), Verdict::Allow);
    assert_eq!((view.len(), view.shadow_len()), (0, 0));

    let forgotten = ControlDecision {
        shadow: true,
        ..decision(
            "team-daily",
            &[("team", "search")],
            DecisionAction::Block,
            5,
        )
    };
    view.apply(&forgotten);
    assert!(view.remove(&forgotten.key));
    assert_eq!(view.check_shadow(&search_gpt4o(), now()), Verdict::Allow);
}
