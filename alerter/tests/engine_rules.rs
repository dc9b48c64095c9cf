//! The alerter's engine in process, with a fixed clock and no Kafka or ClickHouse (issue 14,
//! point 4): table-driven cases for every rule family (caps and soft alerts, approvals, job
//! gauges, model rules, anomalies, restore) and every policy example in `policy/examples`.
//!
//! The engine is pure: it turns totals, job events, approvals and clock ticks into effects
//! (decisions to publish, alerts to notify). These tests feed it what the service would read and
//! assert the effects, so a rule change shows up here in seconds.

mod support;

use std::path::Path;
use std::sync::Arc;

use alerter::approvals::ReceivedApproval;
use alerter::engine::{Effect, Engine};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use policy::{ActionKind, Policy, PolicySet, Unit};
use rust_decimal::Decimal;
use schemas::{AlertKind, DecisionAction, JobState, Modality, UsageEvent, WindowTotal};

/// The fixed clock: inside the examples' Black Friday campaign (2025-11-28 to 2025-12-02, New
/// York time).
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 11, 29, 15, 0, 0).unwrap()
}

fn examples_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../policy/examples"))
}

fn examples() -> Arc<PolicySet> {
    Arc::new(PolicySet::load_dir(examples_dir()).expect("the policy examples load"))
}

fn engine(policies: Arc<PolicySet>) -> Engine {
    Engine::new(policies).with_catalog(Arc::new(pricing::Catalog::embedded_sample()))
}

/// The rendered scope of `policy` with every `group_by` dimension set to `<name>-1` (a model and
/// provider that model rules allow).
fn scope_key(policy: &Policy) -> String {
    policy
        .group_by()
        .map(|dimension| match dimension.name().as_str() {
            "provider" => "provider=openai".to_owned(),
            "model" => "model=gpt-4o".to_owned(),
            name => format!("{name}={name}-1"),
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// A total of `policy`'s scope in a window around [`now`] whose amount in the policy's unit is
/// `amount`.
fn total_at(policy: &Policy, scope_key: &str, amount: Decimal, version: u64) -> WindowTotal {
    total_around(policy, scope_key, amount, version, now())
}

/// [`total_at`] in a window from an hour before `at` to an hour after.
fn total_around(
    policy: &Policy,
    scope_key: &str,
    amount: Decimal,
    version: u64,
    at: DateTime<Utc>,
) -> WindowTotal {
    let mut total = support::policy_total(
        policy.id(),
        scope_key,
        at - TimeDelta::hours(1),
        at + TimeDelta::hours(1),
        "0",
        version,
    );
    total.window_kind = policy.window().map(window_kind_name).unwrap_or_default();
    let whole = u64::try_from(amount.trunc().mantissa()).unwrap_or(u64::MAX);
    match policy.unit() {
        Unit::CostUsd => total.cost_usd = amount,
        Unit::FallbackCostUsd => {
            total.cost_usd = amount;
            total.fallback_cost_usd = amount;
        }
        Unit::ImagesFinal => total.images_final = whole,
        Unit::UnpricedEvents => total.unpriced_events = whole,
        Unit::Requests => total.requests = whole,
        Unit::TotalTokens => total.input_tokens = whole,
        other => panic!("no case builds totals for unit {other:?}"),
    }
    total
}

fn window_kind_name(window: &policy::Window) -> String {
    match &window.campaign {
        Some(campaign) => format!("campaign:{}", campaign.name),
        None => format!("{:?}", window.kind).to_lowercase(),
    }
}

/// (policy, kind) of the alerts among `effects`.
fn alert_policies(effects: &[Effect]) -> Vec<(String, AlertKind)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Alert(alert, _) => Some((alert.policy_id.clone(), alert.kind)),
            _ => None,
        })
        .collect()
}

fn alerts(effects: &[Effect]) -> Vec<(AlertKind, Option<u32>)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Alert(alert, _) => Some((alert.kind, alert.threshold_percent)),
            _ => None,
        })
        .collect()
}

/// The effects that decide or forget this control key.
fn about<'a>(effects: &'a [Effect], key: &str) -> Vec<&'a Effect> {
    effects
        .iter()
        .filter(|effect| match effect {
            Effect::Decide(decision) => decision.key == key,
            Effect::Forget(forgotten) => forgotten == key,
            Effect::Alert(..) | Effect::ApprovalDecided { .. } => false,
        })
        .collect()
}

fn decisions(effects: &[Effect]) -> Vec<(DecisionAction, Option<String>)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Decide(decision) => Some((decision.action, decision.degrade_to.clone())),
            _ => None,
        })
        .collect()
}

/// Every windowed example policy: each soft threshold fires once, in order; the cap applies the
/// policy's action (a block or a degrade decision, or only an alert); the same total again fires
/// nothing; the window's end lifts the cap.
#[test]
fn every_windowed_example_fires_its_thresholds_once_and_applies_its_cap() {
    let policies = examples();
    let windowed: Vec<&Policy> = policies
        .policies()
        .iter()
        .filter(|policy| policy.window().is_some())
        .collect();
    assert!(
        windowed.len() >= 7,
        "the examples changed: {}",
        windowed.len()
    );
    for policy in windowed {
        let mut engine = engine(Arc::clone(&policies));
        engine.set_policies(Arc::clone(&policies), now());
        let scope = scope_key(policy);
        let cap = policy.hard_cap();
        let mut thresholds: Vec<u8> = policy
            .record()
            .soft_alerts
            .iter()
            .filter_map(policy::Threshold::percent)
            .collect();
        thresholds.sort_unstable();
        let mut version = 1;
        for &threshold in thresholds.iter().filter(|&&t| t < 100) {
            let amount = cap * Decimal::from(threshold) / Decimal::ONE_HUNDRED;
            let effects = engine.on_total(total_at(policy, &scope, amount, version), now());
            version += 1;
            assert_eq!(
                alerts(&effects),
                vec![(AlertKind::SoftThreshold, Some(u32::from(threshold)))],
                "{}: at {threshold} %",
                policy.id()
            );
            assert!(
                decisions(&effects).is_empty(),
                "{}: decided under the cap",
                policy.id()
            );
        }

        let effects = engine.on_total(total_at(policy, &scope, cap, version), now());
        version += 1;
        let fired = alerts(&effects);
        if thresholds.contains(&100) {
            assert!(
                fired.contains(&(AlertKind::SoftThreshold, Some(100))),
                "{}: no 100 % alert: {fired:?}",
                policy.id()
            );
        }
        let decided = decisions(&effects);
        match policy.action_kind() {
            ActionKind::Block => {
                assert_eq!(
                    decided,
                    vec![(DecisionAction::Block, None)],
                    "{}",
                    policy.id()
                );
                assert!(fired.iter().any(|(kind, _)| *kind == AlertKind::HardCap));
            }
            ActionKind::Degrade => {
                let to = policy.record().action.degrade_to.clone();
                assert_eq!(
                    decided,
                    vec![(DecisionAction::Degrade, to)],
                    "{}",
                    policy.id()
                );
                assert!(fired.iter().any(|(kind, _)| *kind == AlertKind::HardCap));
            }
            ActionKind::AlertOnly => {
                assert!(decided.is_empty(), "{}: alert_only decided", policy.id());
                assert!(
                    fired.iter().any(|(kind, _)| *kind == AlertKind::HardCap),
                    "{}: alert_only at the cap raised no alert: {fired:?}",
                    policy.id()
                );
            }
        }

        // The same amount again (a replayed total, a higher version) changes nothing.
        let again = engine.on_total(total_at(policy, &scope, cap, version), now());
        assert!(
            alerts(&again).is_empty() && decisions(&again).is_empty(),
            "{}: fired twice: {again:?}",
            policy.id()
        );

        // The window ends: a block or degrade is lifted.
        let later = engine.tick(now() + TimeDelta::hours(2));
        let lifted = decisions(&later);
        if policy.action_kind() == ActionKind::AlertOnly {
            assert!(lifted.is_empty(), "{}: lifted {lifted:?}", policy.id());
        } else {
            assert_eq!(
                lifted,
                vec![(DecisionAction::Allow, None)],
                "{}",
                policy.id()
            );
        }
    }
}

/// A raise signed by an approver lifts a block until it expires; one signed by a stranger is
/// rejected and lifts nothing.
#[test]
fn an_approval_lifts_a_block_until_it_expires_and_a_stranger_cannot_sign_one() {
    let approver = support::signing_key(7);
    let stranger = support::signing_key(8);
    let text = format!(
        r#"
id: cap-with-approval
owner: {{team: search, contact: s@example.com}}
description: A cap that approvers may raise.
unit: cost_usd
group_by: [api_key_id]
window: {{kind: day}}
hard_cap: 10
soft_alerts: []
action: {{kind: block}}
approval:
  approvers: [{{name: alice, public_key: "{}"}}]
  max_raise: 100%
  max_duration: 24h
"#,
        support::public_key(&approver)
    );
    let policies = Arc::new(PolicySet::from_str("approval.yaml", &text).unwrap());
    let policy = policies.get("cap-with-approval").unwrap();
    let mut engine = engine(Arc::clone(&policies));
    let scope = "api_key_id=k1";
    let blocked = engine.on_total(total_at(policy, scope, Decimal::from(11), 1), now());
    assert_eq!(decisions(&blocked), vec![(DecisionAction::Block, None)]);

    let received = |key: &ed25519_dalek::SigningKey, by: &str, appended: DateTime<Utc>| {
        let approval = support::signed_approval(
            "cap-with-approval",
            scope,
            "20",
            now() + TimeDelta::minutes(30),
            by,
            now(),
            key,
        );
        let record = schemas::codec::encode(&approval).unwrap();
        let id = approval.approval_id.clone();
        ReceivedApproval::new(approval, Some(appended), Some(id.as_bytes()), &record)
    };
    let statuses = |effects: &[Effect]| -> Vec<&'static str> {
        effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::ApprovalDecided { status, .. } => Some(*status),
                _ => None,
            })
            .collect()
    };

    let forged = engine.on_approval(received(&stranger, "alice", now()), now());
    assert_eq!(statuses(&forged), vec!["rejected"]);
    assert!(
        decisions(&forged).is_empty(),
        "a forged raise decided: {forged:?}"
    );

    let applied = engine.on_approval(received(&approver, "alice", now()), now());
    assert_eq!(statuses(&applied), vec!["applied"]);
    assert_eq!(decisions(&applied), vec![(DecisionAction::Allow, None)]);

    // The raise expires while the window (until now + 1 h) is open and the total still over the
    // cap: blocked again.
    let expired = engine.tick(now() + TimeDelta::minutes(45));
    assert_eq!(statuses(&expired), vec!["expired"]);
    assert_eq!(decisions(&expired), vec![(DecisionAction::Block, None)]);
}

fn video_job(job: &str, customer: &str, state: JobState, at: DateTime<Utc>) -> UsageEvent {
    let mut event = schemas::fixtures::text_event(&format!("{job}-{state:?}"), at);
    event.modality = Modality::Video;
    event.endpoint = "video".to_owned();
    event.model = "sora-2".to_owned();
    event.customer_id = Some(customer.to_owned());
    event.job_id = Some(job.to_owned());
    event.job_state = Some(state);
    event
}

/// `video_concurrency.yaml`: 75 % of 20 jobs in flight alerts, 20 blocks the customer, a job
/// finishing lifts the block; another customer is unaffected.
#[test]
fn the_video_concurrency_example_blocks_at_twenty_jobs_and_lifts_when_one_finishes() {
    let policies = examples();
    let mut engine = engine(Arc::clone(&policies));
    engine.set_policies(Arc::clone(&policies), now());
    let mut fired = Vec::new();
    let mut decided = Vec::new();
    for job in 0..20 {
        let effects = engine.on_job_event(
            &video_job(&format!("job-{job}"), "c-1", JobState::Submitted, now()),
            now(),
        );
        if !alerts(&effects).is_empty() || !decisions(&effects).is_empty() {
            fired.push((job + 1, alerts(&effects)));
            decided.push((job + 1, decisions(&effects)));
        }
    }
    assert_eq!(
        fired.first().map(|(jobs, _)| *jobs),
        Some(15),
        "the 75 % alert comes at 15 jobs: {fired:?}"
    );
    assert_eq!(
        decided.last(),
        Some(&(20, vec![(DecisionAction::Block, None)])),
        "{decided:?}"
    );
    let other = engine.on_job_event(&video_job("x-1", "c-2", JobState::Submitted, now()), now());
    assert!(
        decisions(&other).is_empty(),
        "another customer was decided: {other:?}"
    );
    let finished = engine.on_job_event(
        &video_job(
            "job-3",
            "c-1",
            JobState::Succeeded,
            now() + TimeDelta::minutes(1),
        ),
        now() + TimeDelta::minutes(1),
    );
    assert_eq!(decisions(&finished), vec![(DecisionAction::Allow, None)]);
}

/// `prod_model_rules.yaml`: models the catalog marks deprecated on the clock's day are blocked
/// when the policy is loaded, before any traffic, whatever their row's key form (`gpt-image-1`,
/// `gemini/gemini-2.5-pro`); a model outside the allow-list is blocked when its first total is
/// seen.
#[test]
fn the_model_rules_example_blocks_deprecated_models_at_load_and_unlisted_ones_on_sight() {
    // After the sample catalog's deprecation dates of gpt-image-1 (2026-10-23) and
    // gemini/gemini-2.5-pro (2026-12-01).
    let at = Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap();
    let catalog = pricing::Catalog::embedded_sample();
    let deprecated: Vec<String> = catalog
        .models()
        .filter(|entry| entry.is_deprecated_on(at.date_naive()))
        .map(|entry| entry.name.clone())
        .collect();
    assert!(
        deprecated.contains(&"gpt-image-1".to_owned())
            && deprecated.contains(&"gemini/gemini-2.5-pro".to_owned()),
        "the sample catalog changed: {deprecated:?}"
    );
    let policies = examples();
    let mut engine = engine(Arc::clone(&policies));
    let loaded = engine.set_policies(Arc::clone(&policies), at);
    let blocked: Vec<(String, String)> = loaded
        .iter()
        .filter_map(|effect| match effect {
            Effect::Decide(decision)
                if decision.policy_id == "prod-model-lifecycle"
                    && decision.action == DecisionAction::Block =>
            {
                Some((
                    decision.scope.get("provider").cloned().unwrap_or_default(),
                    decision.scope.get("model").cloned().unwrap_or_default(),
                ))
            }
            _ => None,
        })
        .collect();
    // A bare row applies to the model name whatever the provider; a prefixed row to its provider.
    for (provider, model) in [("", "gpt-image-1"), ("gemini", "gemini-2.5-pro")] {
        assert!(
            blocked.contains(&(provider.to_owned(), model.to_owned())),
            "{provider}/{model} was not blocked at load: {blocked:?}"
        );
    }
    let policy = policies.get("prod-model-lifecycle").unwrap();
    let seen = engine.on_total(
        total_around(
            policy,
            "provider=openai|model=davinci-unlisted",
            Decimal::ZERO,
            1,
            at,
        ),
        at,
    );
    assert!(
        seen.iter().any(|effect| matches!(
            effect,
            Effect::Decide(decision)
                if decision.action == DecisionAction::Block
                    && decision.scope.get("model").map(String::as_str) == Some("davinci-unlisted")
        )),
        "an unlisted model was not blocked: {seen:?}"
    );
}

/// `staging_cost_per_key.yaml` has an anomaly section: a scope whose fallback share jumps far
/// above its own steady baseline raises one anomaly alert, once per window.
#[test]
fn the_staging_example_flags_a_fallback_storm_against_its_baseline_once() {
    let policies = examples();
    let policy = policies.get("staging-cost-per-key-daily").unwrap();
    let mut engine =
        engine(Arc::clone(&policies)).with_anomaly_settings(alerter::anomaly::AnomalySettings {
            bucket_secs: 60,
            history_buckets: 60,
            min_history: 5,
        });
    let scope = "api_key_id=k-storm";
    let mut total = total_at(policy, scope, Decimal::ZERO, 1);
    let mut anomalies = Vec::new();
    // Ten calm minutes (1 fallback in 100 requests), then a storm (60 in 100).
    for minute in 0..14i64 {
        let storm = minute >= 10;
        total.version += 1;
        total.written_at = now() - TimeDelta::minutes(30) + TimeDelta::minutes(minute);
        total.requests += 100;
        total.fallback_attempts += if storm { 60 } else { 1 };
        total.accepted_outputs += 100;
        total.input_tokens += 10_000;
        total.output_tokens += 1_000;
        total.cost_usd += Decimal::from(10);
        let effects = engine.on_total(total.clone(), total.written_at);
        anomalies.extend(
            alerts(&effects)
                .into_iter()
                .filter(|(kind, _)| *kind == AlertKind::Anomaly)
                .map(|_| minute),
        );
    }
    assert_eq!(
        anomalies.len(),
        1,
        "anomaly alerts at minutes {anomalies:?}"
    );
    assert!(anomalies[0] >= 10, "fired before the storm: {anomalies:?}");
}

/// Issue 17 point 2: an anomaly announces its end. A storm of four minutes fires one anomaly
/// notice; the first calm minute after it closes resolves it (a `Resolved` notice of the
/// anomaly incident), once; an engine restored from those alerts holds nothing open.
#[test]
fn an_anomaly_resolves_once_the_scope_is_back_to_its_usual_mix() {
    let policies = examples();
    let policy = policies.get("staging-cost-per-key-daily").unwrap();
    let settings = alerter::anomaly::AnomalySettings {
        bucket_secs: 60,
        history_buckets: 60,
        min_history: 5,
    };
    let mut engine = engine(Arc::clone(&policies)).with_anomaly_settings(settings.clone());
    let mut total = total_at(policy, "api_key_id=k-storm", Decimal::ZERO, 1);
    let mut notices = Vec::new();
    let mut raised = Vec::new();
    for minute in 0..20i64 {
        let storm = (10..14).contains(&minute);
        total.version += 1;
        total.written_at = now() - TimeDelta::minutes(30) + TimeDelta::minutes(minute);
        total.requests += 100;
        total.fallback_attempts += if storm { 60 } else { 1 + minute as u64 % 2 };
        total.accepted_outputs += 100;
        total.input_tokens += 10_000;
        total.output_tokens += 1_000;
        total.cost_usd += Decimal::from(10);
        for effect in engine.on_total(total.clone(), total.written_at) {
            if let Effect::Alert(alert, notice) = effect {
                if alert.kind == AlertKind::Anomaly {
                    notices.push((minute, notice.kind.as_str()));
                    raised.push(*alert);
                }
            }
        }
    }
    let kinds: Vec<&str> = notices.iter().map(|(_, kind)| *kind).collect();
    assert_eq!(kinds, ["anomaly", "resolved"], "{notices:?}");
    assert!(notices[1].0 >= 15, "resolved during the storm: {notices:?}");
    // Restored engines: one that read back only the trigger still holds it open and resolves it
    // once its baseline is rebuilt; one that read back both holds nothing and resolves nothing.
    for (read_back, resolves) in [(&raised[..1], 1), (&raised[..], 0)] {
        let mut restored = engine_restored(&policies, settings.clone(), read_back);
        let mut calm = total.clone();
        let mut resolved = 0;
        for minute in 0..9i64 {
            calm.version += 1;
            calm.written_at = total.written_at + TimeDelta::minutes(minute + 1);
            calm.requests += 100;
            calm.fallback_attempts += 1 + minute as u64 % 2;
            calm.accepted_outputs += 100;
            calm.cost_usd += Decimal::from(10);
            for effect in restored.on_total(calm.clone(), calm.written_at) {
                // (Soft thresholds fire again here: only anomaly alerts were read back.)
                if let Effect::Alert(alert, notice) = effect {
                    if alert.kind == AlertKind::Anomaly {
                        assert_eq!(notice.kind.as_str(), "resolved");
                        resolved += 1;
                    }
                }
            }
        }
        assert_eq!(resolved, resolves, "read back {} alerts", read_back.len());
    }
}

fn engine_restored(
    policies: &Arc<PolicySet>,
    settings: alerter::anomaly::AnomalySettings,
    alerts: &[schemas::Alert],
) -> Engine {
    let mut engine = engine(Arc::clone(policies)).with_anomaly_settings(settings);
    for alert in alerts {
        engine.restore_alert(alert);
    }
    engine
}

/// A restart (issue 13, point 4, in process): an engine restored from the decisions on the
/// control topic and the same totals decides nothing the first engine had not.
#[test]
fn a_restored_engine_repeats_no_decision() {
    let policies = examples();
    let policy = policies.get("staging-cost-per-key-daily").unwrap();
    let mut first = engine(Arc::clone(&policies));
    first.set_policies(Arc::clone(&policies), now());
    let over = total_at(policy, "api_key_id=k-restart", Decimal::from(30), 7);
    assert_eq!(
        decisions(&first.on_total(over.clone(), now())),
        vec![(DecisionAction::Block, None)]
    );

    let mut restored = engine(Arc::clone(&policies));
    for decision in first.decisions().values() {
        restored.restore_decision(decision.clone());
    }
    restored.load_total(over.clone(), now());
    let mut effects = restored.set_policies(Arc::clone(&policies), now());
    effects.extend(restored.tick(now()));
    let mut newer = over;
    newer.version += 1;
    effects.extend(restored.on_total(newer, now()));
    assert!(
        decisions(&effects).is_empty(),
        "the restored engine decided again: {effects:?}"
    );
}

/// Issue 13 point 7: a key's allow is forgotten (a tombstone) two `ended_window_keep`s after it
/// was issued, so the decisions held do not grow with every scope ever blocked; the key blocked
/// again later is numbered above every version it had, and a restart that reads the tombstone
/// holds nothing for it. Today's main keeps one decision per key forever.
#[test]
fn an_old_allow_is_forgotten_and_its_key_starts_above_its_old_versions() {
    let policies = examples();
    let policy = policies.get("staging-cost-per-key-daily").unwrap();
    let mut engine = engine(Arc::clone(&policies)).with_ended_window_keep(TimeDelta::hours(1));
    engine.set_policies(Arc::clone(&policies), now());
    // Other example rules (model allow-lists, deprecations) hold decisions of their own.
    let held_before = engine.state_sizes().decisions;
    let blocked = engine.on_total(
        total_at(policy, "api_key_id=k-forget", Decimal::from(30), 1),
        now(),
    );
    let block = match blocked
        .iter()
        .find(|effect| matches!(effect, Effect::Decide(_)))
    {
        Some(Effect::Decide(decision)) => decision.clone(),
        _ => panic!("no block: {blocked:?}"),
    };
    assert_eq!(block.action, DecisionAction::Block);
    assert_eq!(
        block.version,
        u64::try_from(now().timestamp_millis()).unwrap(),
        "a key's first version is its issue time in ms"
    );
    // The window (now ± 1 h) ends: the block is lifted (version + 1) and stays held a while.
    let ended = now() + TimeDelta::hours(1);
    let lifted = engine.tick(ended);
    assert_eq!(decisions(&lifted), vec![(DecisionAction::Allow, None)]);
    let allow = engine.decision(&block.key).unwrap().clone();
    assert_eq!(allow.version, block.version + 1);
    let still = engine.tick(ended + TimeDelta::minutes(119));
    assert!(
        !still
            .iter()
            .any(|effect| matches!(effect, Effect::Forget(_))),
        "forgotten too early: {still:?}"
    );
    assert!(engine.decision(&block.key).is_some());
    // Two hours after the allow: forgotten, with a tombstone of its key.
    let forgotten = engine.tick(ended + TimeDelta::hours(2));
    assert_eq!(
        forgotten
            .iter()
            .filter_map(|effect| match effect {
                Effect::Forget(key) => Some(key.clone()),
                _ => None,
            })
            .collect::<Vec<_>>(),
        vec![block.key.clone()]
    );
    assert!(engine.decision(&block.key).is_none());
    assert_eq!(engine.state_sizes().decisions, held_before);
    assert!(
        about(&engine.tick(ended + TimeDelta::hours(3)), &block.key).is_empty(),
        "forgotten twice"
    );

    // A restart reads the allow, then its tombstone: nothing held, nothing decided or resolved.
    let mut restored =
        self::engine(Arc::clone(&policies)).with_ended_window_keep(TimeDelta::hours(1));
    restored.restore_decision(allow.clone());
    restored.forget_decision(&block.key);
    let later = ended + TimeDelta::hours(3);
    let mut effects = restored.set_policies(Arc::clone(&policies), later);
    effects.extend(restored.tick(later));
    assert!(
        about(&effects, &block.key).is_empty(),
        "the restart acted: {effects:?}"
    );
    assert!(restored.decision(&block.key).is_none());

    // An old allow read back without its tombstone (the crash came first) is forgotten again,
    // not resolved again.
    let mut crashed =
        self::engine(Arc::clone(&policies)).with_ended_window_keep(TimeDelta::hours(1));
    crashed.restore_decision(allow.clone());
    let mut effects = crashed.set_policies(Arc::clone(&policies), later);
    effects.extend(crashed.tick(later));
    assert_eq!(
        about(&effects, &block.key),
        vec![&Effect::Forget(block.key.clone())]
    );

    // The key over its cap again in a later window: a new block above every old version.
    let next_day = now() + TimeDelta::days(1);
    let again = engine.on_total(
        total_around(
            policy,
            "api_key_id=k-forget",
            Decimal::from(30),
            1,
            next_day,
        ),
        next_day,
    );
    let reblock = match again
        .iter()
        .find(|effect| matches!(effect, Effect::Decide(_)))
    {
        Some(Effect::Decide(decision)) => decision.clone(),
        _ => panic!("no block the next day: {again:?}"),
    };
    assert_eq!(reblock.key, block.key);
    assert!(
        reblock.version > allow.version,
        "{} after {}",
        reblock.version,
        allow.version
    );
    assert_ne!(reblock.decision_id, block.decision_id);
    assert!(
        again.iter().any(
            |effect| matches!(effect, Effect::Alert(alert, _) if alert.kind == AlertKind::HardCap)
        ),
        "the new block pages: {again:?}"
    );
}

fn attempt(action: &str, attempt: u32, fallback_cost: Option<&str>) -> UsageEvent {
    let mut event = schemas::fixtures::text_event(&format!("{action}-{attempt}"), now());
    event.team = "support-bots".to_owned();
    event.workflow = "triage".to_owned();
    event.action_id = action.to_owned();
    event.attempt = attempt;
    if let Some(cost) = fallback_cost {
        event.fallback_from_model = Some("gpt-4o".to_owned());
        event.cost_usd = Some(cost.parse().unwrap());
    }
    event
}

/// `fallback_budget.yaml`'s retry policy: a fifth attempt of one action breaks
/// `max_attempts_per_action: 4`, fallbacks over 0.50 USD for one action break
/// `max_fallback_cost_usd`; each alert once per action. The same OpenAI chat traffic also
/// matches `rate_limits.yaml`'s `openai-rpm-per-key` (3 attempts per action), whose alert comes
/// at the fourth attempt.
#[test]
fn the_fallback_budget_example_alerts_once_on_a_retry_storm_and_on_fallback_spend() {
    let policies = examples();
    let mut engine = engine(Arc::clone(&policies));
    let mut watch = alerter::actions::ActionWatch::new(TimeDelta::minutes(15), 10_000);
    let mut kinds = Vec::new();
    for n in 1..=6 {
        let findings = watch.observe(&policies, &attempt("storm", n, None), now());
        kinds.extend(
            alert_policies(&engine.take_unfired(findings))
                .into_iter()
                .map(|(policy, kind)| (n, policy, kind)),
        );
    }
    assert_eq!(
        kinds,
        vec![
            (4, "openai-rpm-per-key".to_owned(), AlertKind::RetryBudget),
            (
                5,
                "support-fallback-budget".to_owned(),
                AlertKind::RetryBudget
            ),
        ]
    );

    let mut kinds = Vec::new();
    for n in 1..=3 {
        let findings = watch.observe(&policies, &attempt("fallbacks", n, Some("0.20")), now());
        kinds.extend(
            alert_policies(&engine.take_unfired(findings))
                .into_iter()
                .map(|(policy, kind)| (n, policy, kind)),
        );
    }
    assert_eq!(
        kinds,
        vec![(
            3,
            "support-fallback-budget".to_owned(),
            AlertKind::FallbackBudget
        )]
    );
}

/// Issue 17 point 3: an amount among the percentages fires once, at its level, with its share
/// of the cap, and its notice names the amount; a total below it fires nothing.
#[test]
fn absolute_soft_alert_thresholds_fire_once_at_their_amount() {
    let policies = Arc::new(
        PolicySet::from_str(
            "amounts.yaml",
            r#"
id: search-daily-amounts
owner: {team: search, contact: "@search-oncall"}
description: daily spend of the search team, with an alert at 600 USD
unit: cost_usd
selector: {team: search}
group_by: [team]
window: {kind: day}
hard_cap: 1000
soft_alerts: [50, "$600", 90]
action: {kind: block}
"#,
        )
        .expect("the policy loads"),
    );
    let policy = &policies.policies()[0];
    let mut engine = engine(Arc::clone(&policies));
    engine.set_policies(Arc::clone(&policies), now());
    let scope = "team=search";
    let below = engine.on_total(total_at(policy, scope, Decimal::new(59999, 2), 1), now());
    assert_eq!(alerts(&below), vec![(AlertKind::SoftThreshold, Some(50))]);
    let reached = engine.on_total(total_at(policy, scope, Decimal::from(600), 2), now());
    assert_eq!(alerts(&reached), vec![(AlertKind::SoftThreshold, Some(60))]);
    let Some(Effect::Alert(alert, notice)) = reached.first() else {
        panic!("an alert: {reached:?}")
    };
    assert_eq!(notice.threshold_amount, Some(Decimal::from(600)));
    assert_eq!(notice.threshold_percent, 60);
    assert!(
        notice
            .summary()
            .contains("600 cost_usd reached (60% of quota)"),
        "{}",
        notice.summary()
    );
    assert!(
        alert
            .message
            .contains("reached its soft alert at 600 USD (60%)"),
        "{}",
        alert.message
    );
    assert!(
        alert.dedup_key.ends_with("/amount:600"),
        "{}",
        alert.dedup_key
    );
    // Once per window: the same amount again, and more below the next threshold, fire nothing.
    let again = engine.on_total(total_at(policy, scope, Decimal::from(899), 3), now());
    assert_eq!(alerts(&again), vec![]);
    let ninety = engine.on_total(total_at(policy, scope, Decimal::from(900), 4), now());
    assert_eq!(alerts(&ninety), vec![(AlertKind::SoftThreshold, Some(90))]);
}
