//! The words of the alerter: reasons, alert messages, Slack and PagerDuty notices, scope
//! rendering and the `quotactl approve` hint, kept apart from the rules that decide.

use super::*;

/// The alert dedup key of a decision.
pub(super) fn decision_alert_key(decision: &ControlDecision) -> String {
    format!("decision/{}/{}", decision.key, decision.version)
}

/// The page of a block/degrade decision, or the resolve of an allow that lifted one.
pub(super) fn decision_alert(
    policy: Option<&Policy>,
    decision: &ControlDecision,
    dedup_key: String,
    now: DateTime<Utc>,
) -> Effect {
    let lifting = decision.action == DecisionAction::Allow;
    let Effect::Alert(mut alert, mut notice) =
        enforced_decision_alert(policy, decision, dedup_key, now)
    else {
        unreachable!("decision alerts are alerts")
    };
    if decision.shadow {
        // A dry run: said in Slack, never paged, nothing to approve.
        let text = shadow_text(decision);
        alert.severity = Severity::Warning;
        alert.message = text.clone();
        notice.kind = NoticeKind::Rule { text };
        notice.approval_command = None;
        notice.pagerduty_service = None;
    } else if lifting && policy.is_some_and(Policy::is_shadow) {
        // The end of a would-be block: nothing was paged, nothing to resolve there.
        notice.pagerduty_service = None;
    }
    Effect::Alert(alert, notice)
}

/// What a shadow decision says: what the policy would do, that it did not, how to enforce it.
fn shadow_text(decision: &ControlDecision) -> String {
    let would = match decision.action {
        DecisionAction::Degrade => format!(
            "would degrade to {}",
            decision.degrade_to.as_deref().unwrap_or("a cheaper model")
        ),
        _ => "would block".to_owned(),
    };
    format!(
        "Shadow mode (a dry run, not enforced): policy {} {would} {}: {} Gateways let this traffic through; set `shadow: false` in the policy to enforce it.",
        decision.policy_id,
        render_scope(&decision.scope),
        decision.reason
    )
}

/// [`decision_alert`] of an enforced decision.
fn enforced_decision_alert(
    policy: Option<&Policy>,
    decision: &ControlDecision,
    dedup_key: String,
    now: DateTime<Utc>,
) -> Effect {
    let lifting = decision.action == DecisionAction::Allow;
    if decision.window == MODEL_RULES_WINDOW {
        let (kind, notice_kind) = if lifting {
            (
                AlertKind::CapReset,
                NoticeKind::Resolved {
                    of: IncidentKind::Rule,
                },
            )
        } else if decision.unit == "model:not_allow_listed" {
            (
                AlertKind::ModelNotAllowed,
                NoticeKind::Rule {
                    text: decision.reason.clone(),
                },
            )
        } else {
            (
                AlertKind::DeprecatedModel,
                NoticeKind::Rule {
                    text: decision.reason.clone(),
                },
            )
        };
        let Effect::Alert(mut alert, mut notice) = rule_alert_parts(
            policy,
            &decision.scope,
            &decision.unit,
            decision.reason.clone(),
            dedup_key,
            now,
        ) else {
            unreachable!("rule_alert_parts builds an alert")
        };
        alert.kind = kind;
        notice.kind = notice_kind;
        return Effect::Alert(alert, notice);
    }
    let (kind, severity, notice_kind) = if lifting {
        (
            AlertKind::CapReset,
            Severity::Info,
            NoticeKind::Resolved {
                of: IncidentKind::HardCap,
            },
        )
    } else {
        (AlertKind::HardCap, Severity::Critical, NoticeKind::HardCap)
    };
    let owner = policy.map_or_else(String::new, |policy| policy.record().owner.team.clone());
    let alert = Alert {
        alert_id: alert_id(&dedup_key),
        dedup_key,
        policy_id: decision.policy_id.clone(),
        scope: decision.scope.clone(),
        kind,
        severity,
        threshold_percent: (!lifting).then_some(100),
        unit: decision.unit.clone(),
        observed: decision.observed,
        limit: Some(decision.limit),
        window: decision.window.clone(),
        window_start: decision.window_start,
        window_end: decision.window_end,
        owner,
        message: decision.reason.clone(),
        raised_at: now,
    };
    let tz = policy.and_then(|policy| policy.window()).map_or_else(
        || "UTC".to_string(),
        |window| window.time_zone.name().to_string(),
    );
    let mut notice = Notice {
        kind: notice_kind,
        threshold_percent: 100,
        detail: Some(decision.reason.clone()),
        ..notice(
            policy,
            &decision.scope,
            decision.window.clone(),
            &tz,
            decision.window_start,
            decision.window_end,
            decision.observed,
            decision.limit,
            now,
        )
    };
    // The decision's scope (group-by plus fixed dimensions) names the incident, for trigger and
    // resolve alike.
    notice.scope = render_scope(&decision.scope);
    if policy.is_none() {
        notice.pagerduty_service = None;
    }
    Effect::Alert(Box::new(alert), Box::new(notice))
}

/// What a model issue is called: the decision's unit and a sentence.
/// `ControlDecision::unit` of a block of a model outside a policy's allow-list.
pub(super) const NOT_ALLOW_LISTED_UNIT: &str = "model:not_allow_listed";

pub(super) fn describe_issue(issue: policy::ModelIssue, model: &str) -> (&'static str, String) {
    match issue {
        policy::ModelIssue::Deprecated { since } => (
            "model:deprecated",
            format!("model {model} is deprecated since {since} (price catalog)"),
        ),
        policy::ModelIssue::Preview => (
            "model:preview",
            format!("model {model} is a preview model (price catalog)"),
        ),
        policy::ModelIssue::NotAllowListed => (
            NOT_ALLOW_LISTED_UNIT,
            format!("model {model} is not on the allow-list"),
        ),
    }
}

/// Model-rule blocks do not end with a window: their `window_end` is 2100-01-01 (inside every
/// timestamp range the contracts and ClickHouse `DateTime` allow), and they have no expiry.
pub(super) fn model_rules_end() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(4_102_444_800, 0).unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// A rule finding (model rules, retries, fallbacks): Slack, no page, no window.
pub fn rule_alert(
    policy: &Policy,
    scope: &BTreeMap<String, String>,
    unit: &str,
    text: String,
    dedup_key: String,
    now: DateTime<Utc>,
) -> Effect {
    rule_alert_parts(Some(policy), scope, unit, text, dedup_key, now)
}

pub(super) fn rule_alert_parts(
    policy: Option<&Policy>,
    scope: &BTreeMap<String, String>,
    unit: &str,
    text: String,
    dedup_key: String,
    now: DateTime<Utc>,
) -> Effect {
    let alert = Alert {
        alert_id: alert_id(&dedup_key),
        dedup_key,
        policy_id: policy.map_or_else(String::new, |policy| policy.id().to_owned()),
        scope: scope.clone(),
        kind: AlertKind::DeprecatedModel,
        severity: Severity::Warning,
        threshold_percent: None,
        unit: unit.to_owned(),
        observed: Decimal::ONE,
        limit: None,
        window: MODEL_RULES_WINDOW.to_owned(),
        window_start: now,
        window_end: now,
        owner: policy.map_or_else(String::new, |policy| policy.record().owner.team.clone()),
        message: text.clone(),
        raised_at: now,
    };
    // Rule notices are grouped per hour (the grouping key includes the window start).
    let hour = now
        - TimeDelta::seconds(now.timestamp().rem_euclid(3600))
        - TimeDelta::nanoseconds(i64::from(now.timestamp_subsec_nanos()));
    let mut notice = notice(
        policy,
        scope,
        crate::notify::RULE_WINDOW.to_owned(),
        "UTC",
        hour,
        hour + TimeDelta::hours(1),
        Decimal::ONE,
        Decimal::ZERO,
        now,
    );
    notice.kind = NoticeKind::Rule { text };
    notice.unit = unit.to_owned();
    notice.approval_command = None;
    notice.pagerduty_service = None;
    Effect::Alert(Box::new(alert), Box::new(notice))
}

/// The notice of an alert about `policy`'s scope and window `key` (whose total is `total`).
pub(super) fn window_notice(
    policy: &Policy,
    key: &WindowKey,
    total: &WindowTotal,
    spent: Decimal,
    limit: Decimal,
    now: DateTime<Utc>,
) -> Notice {
    notice(
        Some(policy),
        &group_scope(key),
        key.window_kind.clone(),
        &key.window_tz,
        key.window_start,
        total.window_end,
        spent,
        limit,
        now,
    )
}

/// A notice's common fields.
#[allow(clippy::too_many_arguments)]
pub(super) fn notice(
    policy: Option<&Policy>,
    scope: &BTreeMap<String, String>,
    window_kind: String,
    tz: &str,
    window_start: DateTime<Utc>,
    window_end: DateTime<Utc>,
    spent: Decimal,
    limit: Decimal,
    now: DateTime<Utc>,
) -> Notice {
    // Burn rate: the window's spend over the time it has run, per hour.
    let elapsed = (now.min(window_end) - window_start).num_seconds();
    let burn_rate_per_hour =
        (elapsed > 0).then(|| (spent * Decimal::from(3600) / Decimal::from(elapsed)).round_dp(6));
    let projected_cap_at = burn_rate_per_hour.and_then(|rate| {
        if rate.is_zero() || spent >= limit {
            return None;
        }
        let seconds = (limit - spent) * Decimal::from(3600) / rate;
        let seconds = i64::try_from(seconds.trunc().mantissa()).ok()?;
        let at = now + chrono::TimeDelta::seconds(seconds);
        (at < window_end).then_some(at)
    });
    Notice {
        policy_id: policy.map_or_else(String::new, |policy| policy.id().to_owned()),
        owner: Owner {
            team: policy.map_or_else(String::new, |policy| policy.record().owner.team.clone()),
            contact: policy
                .map_or_else(String::new, |policy| policy.record().owner.contact.clone()),
        },
        scope: render_scope(scope),
        window: NoticeWindow {
            kind: window_kind,
            tz: tz.to_owned(),
            start: window_start,
            end: window_end,
        },
        unit: policy.map_or_else(String::new, |policy| policy.unit().to_string()),
        spent,
        limit,
        threshold_percent: 0,
        kind: NoticeKind::SoftAlert,
        burn_rate_per_hour,
        projected_cap_at,
        approval_command: policy.and_then(|policy| approval_command(policy, scope)),
        slack_channel: policy.and_then(|policy| policy.slack_channel().map(str::to_owned)),
        pagerduty_service: policy.and_then(|policy| policy.pagerduty_service().map(str::to_owned)),
        detail: None,
        threshold_amount: None,
    }
}

/// The `quotaflow approve …` command for a scope of `policy`, when it takes approvals.
pub fn approval_command(policy: &Policy, scope: &BTreeMap<String, String>) -> Option<String> {
    let rule = policy.record().approval.as_ref()?;
    let cap = policy.hard_cap();
    let max = cap + rule.max_raise.absolute_for(cap);
    let scope_arg = if scope.is_empty() {
        String::new()
    } else {
        format!(" --scope '{}'", render_scope(scope))
    };
    Some(format!(
        "quotaflow-alerter approve --policy {}{scope_arg} --limit {} --until <RFC 3339, at most {}s ahead> --reason '<why>' --by <{}> --key-file <the approver's private key>",
        policy.id(),
        max.normalize(),
        rule.max_duration.0.num_seconds(),
        approver_names(policy).join("|")
    ))
}

pub(super) fn approval_hint(policy: &Policy, scope: &BTreeMap<String, String>) -> String {
    match approval_command(policy, scope) {
        Some(_) => format!(
            ". To raise it, ask {} for an approval",
            policy
                .record()
                .approval
                .as_ref()
                .map(|_| approver_names(policy).join(" or "))
                .unwrap_or_default()
        ),
        None => String::new(),
    }
}

/// The group-by scope of a `policy:` total (dimensions the events lacked are left out).
pub fn group_scope(key: &WindowKey) -> BTreeMap<String, String> {
    decode_scope(&key.scope_key)
}

/// A rendered scope key back as `dimension → value` (absent dimensions left out).
pub(super) fn decode_scope(scope_key: &str) -> BTreeMap<String, String> {
    ScopeKey::decode(scope_key)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, value)| value.map(|value| (name, value)))
        .collect()
}

/// The dedup key of an alert about a (policy, scope, window): `<kind>/<policy>/<scope>/<window
/// kind>/<start>[/<detail>]`.
pub(super) fn window_alert_key(
    kind: &str,
    policy_id: &str,
    key: &WindowKey,
    detail: &str,
) -> String {
    let mut dedup_key = format!(
        "{kind}/{policy_id}/{}/{}/{}",
        key.scope_key,
        key.window_kind,
        key.window_start.to_rfc3339_opts(SecondsFormat::Secs, true)
    );
    if !detail.is_empty() {
        dedup_key.push('/');
        dedup_key.push_str(detail);
    }
    dedup_key
}

/// What gateways do at the cap of `policy`: its action as a decision, and the degrade target.
pub(super) fn cap_action(policy: &Policy) -> (DecisionAction, Option<String>) {
    match policy.action_kind() {
        ActionKind::Degrade => (
            DecisionAction::Degrade,
            policy.record().action.degrade_to.clone(),
        ),
        ActionKind::Block | ActionKind::AlertOnly => (DecisionAction::Block, None),
    }
}

/// The scope a decision enforces: the group-by scope plus the policy's single-valued filters, so
/// gateways stop only the traffic the policy counts. A fallback-spend policy with a
/// `route.fallback_route` (`provider/model`) blocks that route only.
pub fn enforcement_scope(
    policy: &Policy,
    scope: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    policy.enforcement_scope(scope)
}

/// The `group_by` dimensions the events of `scope_key` lack (not named by `enforcement`), for
/// `ControlDecision::absent` ([`Policy::enforcement_absent`]).
pub fn enforcement_absent(enforcement: &BTreeMap<String, String>, scope_key: &str) -> Vec<String> {
    Policy::enforcement_absent(enforcement, scope_key)
}

/// [`render_scope`] followed by the absent dimensions: `team=search, no user_id`; `no user_id`
/// alone for a scope whose only group-by dimension is absent.
pub fn render_scope_absent(scope: &BTreeMap<String, String>, absent: &[String]) -> String {
    let present = (!scope.is_empty()).then(|| render_scope(scope));
    present
        .into_iter()
        .chain(absent.iter().map(|dimension| format!("no {dimension}")))
        .reduce(|rendered, part| format!("{rendered}, {part}"))
        .unwrap_or_else(|| render_scope(scope))
}

/// `team=search, model=gpt-4o`, or `(all)` for an empty scope.
pub fn render_scope(scope: &BTreeMap<String, String>) -> String {
    if scope.is_empty() {
        return "(all)".to_string();
    }
    scope
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A deterministic alert id: the same alert raised again (a replay) is the same audit row.
pub(super) fn alert_id(dedup_key: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(dedup_key.as_bytes())[..16])
}

/// The reason of a cap's block or degrade decision: who reached what of which limit, in which
/// window, until when, and how to ask for a raise.
pub(super) fn cap_reason(
    policy: &Policy,
    key: &WindowKey,
    total: &WindowTotal,
    (scope, absent): (&BTreeMap<String, String>, &[String]),
    (observed, limit): (Decimal, Decimal),
    degrade_to: Option<&str>,
) -> String {
    let verb = match degrade_to {
        Some(target) => format!("degraded to {target}"),
        None => "blocked".to_string(),
    };
    format!(
        "{} reached {} {} of {} {} (policy {}, {} window from {}); {verb} until {}{}",
        render_scope_absent(scope, absent),
        observed.normalize(),
        policy.unit(),
        limit.normalize(),
        policy.unit(),
        policy.id(),
        key.window_kind,
        key.window_start.to_rfc3339_opts(SecondsFormat::Secs, true),
        total.window_end.to_rfc3339_opts(SecondsFormat::Secs, true),
        approval_hint(policy, scope),
    )
}

/// The reason of the allow that lifts a cap: the approval that raised the limit, or the amount
/// back under it.
pub(super) fn under_limit_reason(
    policy: &Policy,
    scope: &BTreeMap<String, String>,
    approved: Option<&schemas::Approval>,
    observed: Decimal,
    limit: Decimal,
) -> String {
    match approved {
        Some(approval) => format!(
            "{} approved a raise to {} until {} ({}); {} is at {} {}",
            approval.approved_by,
            approval.new_limit.normalize(),
            approval
                .valid_until
                .to_rfc3339_opts(SecondsFormat::Secs, true),
            approval.reason,
            render_scope(scope),
            observed.normalize(),
            policy.unit()
        ),
        None => format!(
            "{} is at {} {}, under the limit {} again",
            render_scope(scope),
            observed.normalize(),
            policy.unit(),
            limit.normalize()
        ),
    }
}
