//! The run's outcome checks: each scenario's PASS/FAIL line from what the gateway saw, the receiver
//! captured and ClickHouse holds.

use super::*;

pub(super) async fn outcomes(
    clickhouse: &ClickHouse,
    gatekeeping: &Gatekeeping,
    captured: &alerter::receiver::Captured,
    replay: &(quotactl::replay::ReplayReport, quotactl::replay::Comparison),
    totals_exact: bool,
) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    outcomes.push(runaway_outcome(clickhouse, gatekeeping).await?);
    outcomes.push(admission_outcome(clickhouse, gatekeeping).await?);
    outcomes.extend(notification_outcomes(captured));
    outcomes.extend(signal_outcomes(captured));
    outcomes.push(approval_outcome(clickhouse, gatekeeping).await?);
    outcomes.extend(rule_outcomes(clickhouse, gatekeeping).await?);
    outcomes.push(outcome(
        "totals exact",
        totals_exact,
        "the aggregator's per-team day totals equal a recount of the raw archive".to_owned(),
    ));
    let (report, comparison) = replay;
    outcomes.push(outcome(
        "replay reproduces live",
        comparison.reproduced() && !comparison.same.is_empty(),
        format!(
            "quotactl replay made the same decisions as the live alerter for {} of {} keys ({} decisions; {} USD of overshoot it would have stopped)",
            comparison.same.len(),
            comparison.same.len() + comparison.different.len(),
            report.decisions.len(),
            report.stopped_usd().round_dp(4).normalize()
        ),
    ));
    Ok(outcomes)
}

/// The runaway loop: where its spend crossed the cap, and what got through after.
pub(super) async fn runaway_outcome(
    clickhouse: &ClickHouse,
    gatekeeping: &Gatekeeping,
) -> Result<Outcome> {
    let cap = Decimal::from_str(LOOP_CAP)?;
    let loop_events = clickhouse
        .rows(&format!(
            "SELECT toString(occurred_at_us) AS at_us, toString(ifNull(cost_usd, toDecimal128(0, 12))) AS cost \
             FROM usage_events WHERE api_key_id = '{}' ORDER BY occurred_at_us, event_id",
            scenario::LOOP_KEY
        ))
        .await?;
    let approved_us = gatekeeping
        .approved_at
        .map_or(i64::MAX, |at| at.timestamp_micros());
    let mut spent = Decimal::ZERO;
    let mut crossing: Option<i64> = None;
    let (mut over_events, mut over_usd) = (0u64, Decimal::ZERO);
    for row in &loop_events {
        let at: i64 = field(row, "at_us").parse().unwrap_or_default();
        if at >= approved_us {
            break;
        }
        let cost = decimal(row, "cost");
        if crossing.is_some() {
            over_events += 1;
            over_usd += cost;
        }
        spent += cost;
        if crossing.is_none() && spent >= cap {
            crossing = Some(at);
        }
    }
    let bound_events = (scenario::LOOP_RATE * ENFORCEMENT_BOUND.as_secs_f64()).ceil() as u64;
    Ok(match (crossing, gatekeeping.loop_first_refused) {
        (Some(crossing), Some(refused)) => {
            let latency_ms = (refused.timestamp_micros() - crossing) as f64 / 1000.0;
            Outcome {
                timed: true,
                ..outcome(
                "runaway loop cut off",
                over_events <= bound_events,
                format!(
                    "staging key {} crossed its {} USD cap; nginx, asking the decision sidecar, refused it {:.0} ms after the crossing call \
                     (429, Retry-After {} s); \
                     spend stopped at {} USD: {} calls ({} USD) got through after the crossing, bound {} calls \
                     ({} calls/s x {} ms: the enforcement p99 goal + one gateway tick)",
                    scenario::LOOP_KEY,
                    cap,
                    latency_ms,
                    gatekeeping.loop_retry_after.as_deref().unwrap_or("missing"),
                    spent.normalize(),
                    over_events,
                    over_usd.round_dp(4).normalize(),
                    bound_events,
                    scenario::LOOP_RATE,
                    ENFORCEMENT_BOUND.as_millis()
                ),
            )
            }
        }
        _ => outcome(
            "runaway loop cut off",
            false,
            format!(
                "the loop spent {} USD and was {} refused",
                spent.normalize(),
                if gatekeeping.loop_first_refused.is_some() {
                    ""
                } else {
                    "never"
                }
            ),
        ),
    })
}

/// The oversized call: refused by the sidecar's admission rule before it reached ingest.
pub(super) async fn admission_outcome(
    clickhouse: &ClickHouse,
    gatekeeping: &Gatekeeping,
) -> Result<Outcome> {
    let oversized = gatekeeping
        .tally
        .get(&Actor::OversizedContext)
        .cloned()
        .unwrap_or_default();
    let archived = clickhouse
        .rows(&format!(
            "SELECT toString(count()) AS n FROM usage_events WHERE api_key_id = '{}' AND input_tokens > {}",
            scenario::LOOP_KEY,
            scenario::LOOP_CONTEXT_LIMIT
        ))
        .await?;
    let archived = archived.first().map_or("?", |row| field(row, "n"));
    let (rule, reason) = gatekeeping
        .admission_refusal
        .clone()
        .unwrap_or((None, "not refused".to_owned()));
    Ok(outcome(
        "oversized context refused",
        oversized.generated == 1
            && oversized.refused == 1
            && rule.as_deref() == Some("max_input_tokens")
            && archived == "0",
        format!(
            "a {} token context from the agent loop (approved: {}) got 429 from nginx, rule {}, before ingest saw it ({} archived): {}",
            scenario::OVERSIZED_INPUT_TOKENS,
            scenario::LOOP_CONTEXT_LIMIT,
            rule.as_deref().unwrap_or("none"),
            archived,
            reason
        ),
    ))
}

/// The notifications of the loop's key: the soft-alert ladder in Slack (each threshold once)
/// and its hard-cap page, triggered at the cap and resolved by the approval.
pub(super) fn notification_outcomes(captured: &alerter::receiver::Captured) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    // The soft ladder of the loop's key: each threshold once, in Slack.
    let slack = captured.bodies("/slack");
    let ladder: Vec<(u32, usize)> = [50, 75, 90, 100]
        .into_iter()
        .map(|percent| {
            let needle = format!("{percent}% of quota used");
            let count = slack
                .iter()
                .filter(|body| {
                    let text = body["text"].as_str().unwrap_or("");
                    text.contains(&needle) && text.contains(scenario::LOOP_KEY)
                })
                .count();
            (percent, count)
        })
        .collect();
    outcomes.push(outcome(
        "soft-alert ladder",
        ladder.iter().all(|(_, count)| *count == 1),
        format!(
            "Slack alerts for {}: {}",
            scenario::LOOP_KEY,
            ladder
                .iter()
                .map(|(percent, count)| format!("{percent}% x{count}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));

    // The page: triggered at the cap, resolved by the approval (PagerDuty events of the loop's
    // hard-cap incident, by its dedup key).
    let pagerduty = captured.bodies("/pagerduty");
    let incident = pagerduty.iter().find_map(|body| {
        let summary = body["payload"]["summary"].as_str().unwrap_or("");
        (summary.contains("hard cap reached") && summary.contains(scenario::LOOP_KEY))
            .then(|| body["dedup_key"].as_str().unwrap_or("").to_owned())
    });
    let pages: Vec<&str> = pagerduty
        .iter()
        .filter(|body| {
            incident
                .as_deref()
                .is_some_and(|key| body["dedup_key"] == key)
        })
        .map(|body| body["event_action"].as_str().unwrap_or(""))
        .collect();
    outcomes.push(outcome(
        "hard cap paged",
        pages.starts_with(&["trigger", "resolve"]),
        format!(
            "PagerDuty incident {} of the loop's key: {}",
            incident.as_deref().unwrap_or("(none)"),
            pages.join(" -> ")
        ),
    ));

    outcomes
}

/// Issue 17's review signals: the research agent's growing prompts flagged against its own
/// baseline (and the steady workflow not), and the stalled video queue paged and resolved.
pub(super) fn signal_outcomes(captured: &alerter::receiver::Captured) -> Vec<Outcome> {
    let slack = captured.bodies("/slack");
    let anomalies_of = |workflow: &str| {
        slack
            .iter()
            .filter(|body| {
                let text = body.to_string();
                text.contains("input_tokens_per_success")
                    && text.contains(&format!("workflow={workflow}"))
            })
            .count()
    };
    let (growing, steady) = (
        anomalies_of(scenario::GROWING_WORKFLOW),
        anomalies_of(scenario::STEADY_WORKFLOW),
    );
    let pagerduty = captured.bodies("/pagerduty");
    let what = pagerduty.iter().find_map(|body| {
        let text = body["payload"]["custom_details"]["anomaly"].as_str()?;
        (text.starts_with("input_tokens_per_success")
            && body["payload"]["source"] == format!("workflow={}", scenario::GROWING_WORKFLOW))
        .then(|| text.split(" (robust").next().unwrap_or(text).to_owned())
    });
    let mut outcomes = vec![outcome(
        "prompt growth flagged",
        growing == 1 && steady == 0 && what.is_some(),
        format!(
            "research prompts against their own baseline: {} {} (Slack x{growing}, paged to research-oncall); {} untouched (x{steady})",
            scenario::GROWING_WORKFLOW,
            what.as_deref().unwrap_or("not flagged"),
            scenario::STEADY_WORKFLOW,
        ),
    )];

    // The stalled queue: one backlog incident, triggered then resolved.
    let scope = format!("customer_id={}", scenario::STALLED_CUSTOMER);
    let incident = pagerduty.iter().find_map(|body| {
        let rule = body["payload"]["custom_details"]["rule"].as_str()?;
        (rule.contains("jobs pending for more than") && body["payload"]["source"] == scope)
            .then(|| (body["dedup_key"].as_str().unwrap_or("").to_owned(), rule))
    });
    let pages: Vec<&str> = pagerduty
        .iter()
        .filter(|body| {
            incident
                .as_ref()
                .is_some_and(|(key, _)| body["dedup_key"] == key.as_str())
        })
        .map(|body| body["event_action"].as_str().unwrap_or(""))
        .collect();
    let drained = slack
        .iter()
        .filter(|body| {
            let text = body.to_string();
            text.contains("has drained") && text.contains(&scope)
        })
        .count();
    outcomes.push(outcome(
        "video backlog paged",
        pages == ["trigger", "resolve"] && drained == 1,
        format!(
            "{} stalled video jobs of {}: PagerDuty {} ({}); Slack follow-up \"has drained\" x{drained}",
            scenario::STALLED_JOBS,
            scenario::STALLED_CUSTOMER,
            pages.join(" -> "),
            incident
                .as_ref()
                .map_or("no page", |(_, rule)| rule.split(" (policy").next().unwrap_or(rule)),
        ),
    ));
    outcomes
}

/// The approval lifted the block; the loop went on until the raised cap.
pub(super) async fn approval_outcome(
    clickhouse: &ClickHouse,
    gatekeeping: &Gatekeeping,
) -> Result<Outcome> {
    let loop_decisions = clickhouse
        .rows(&format!(
            "SELECT action FROM decisions FINAL WHERE policy_id = 'staging-agent-daily-cap' \
             AND has(scope_values, '{}') ORDER BY version",
            scenario::LOOP_KEY
        ))
        .await?;
    let actions: Vec<&str> = loop_decisions
        .iter()
        .map(|row| field(row, "action"))
        .collect();
    let lifted_ms = gatekeeping
        .approved_at
        .zip(gatekeeping.loop_allowed_after_approval)
        .map(|(approved, allowed)| (allowed - approved).num_milliseconds());
    Ok(outcome(
        "approval lifted block",
        actions.starts_with(&["block", "allow"]) && lifted_ms.is_some(),
        format!(
            "alice raised the cap to {RAISED_CAP} USD ({}); decisions for the key: {}; the loop was let through again {} ms after the approval",
            gatekeeping.approval.as_deref().unwrap_or("no approval"),
            actions.join(" -> "),
            lifted_ms.map_or_else(|| "-".to_owned(), |ms| ms.to_string())
        ),
    ))
}

/// The fallback storm (the fallback route blocked, the primary not) and the deprecated model
/// (every call refused in prod, none reached the provider).
pub(super) async fn rule_outcomes(
    clickhouse: &ClickHouse,
    gatekeeping: &Gatekeeping,
) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    let tally = |actor| gatekeeping.tally.get(&actor).cloned().unwrap_or_default();
    // The fallback storm: the fallback route is blocked, the primary is not.
    let fallback = tally(Actor::StormFallback);
    let primary = tally(Actor::StormPrimary);
    let storm_spend = clickhouse
        .rows(&format!(
            "SELECT toString(sum(ifNull(cost_usd, toDecimal128(0, 12)))) AS spend FROM usage_events \
             WHERE workflow = '{}' AND fallback_from_model IS NOT NULL",
            scenario::STORM_WORKFLOW
        ))
        .await?;
    let storm_blocked = gatekeeping
        .refused_by_policy
        .contains_key("support-fallback-budget");
    outcomes.push(outcome(
        "fallback storm tripped",
        storm_blocked && fallback.refused > 0 && primary.refused == 0,
        format!(
            "{} fallback spend on {} reached {} USD (budget 3 USD): {} of {} fallback attempts refused, primary route untouched ({} of {} sent)",
            "support",
            scenario::STORM_WORKFLOW,
            storm_spend.first().map_or("0", |row| field(row, "spend")),
            fallback.refused,
            fallback.generated,
            primary.sent,
            primary.generated
        ),
    ));

    // The deprecated model: every call refused in prod, none reached the provider.
    let legacy = tally(Actor::Legacy);
    let archived_legacy = clickhouse
        .rows(&format!(
            "SELECT toString(count()) AS n FROM usage_events WHERE model = '{}' AND environment = 'prod'",
            scenario::DEPRECATED.1
        ))
        .await?;
    let archived_legacy = archived_legacy.first().map_or("?", |row| field(row, "n"));
    outcomes.push(outcome(
        "deprecated model blocked",
        legacy.generated > 0 && legacy.refused == legacy.generated && archived_legacy == "0",
        format!(
            "{}/{} in prod: {} of {} calls refused, {} reached the provider",
            scenario::DEPRECATED.0,
            scenario::DEPRECATED.1,
            legacy.refused,
            legacy.generated,
            archived_legacy
        ),
    ));

    Ok(outcomes)
}
