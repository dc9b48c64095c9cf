//! The main job's scripted run, as `quotaflow-demo` runs it and the end-to-end test calls it: a
//! gateway simulator sends the [`crate::scenario`] workload to the ingest API, asking the
//! `gateway` enforcement client about every request first (it follows the control topic, as a
//! real gateway would: blocked requests are not sent, degraded ones go to the cheaper model).
//! Midway a budget owner approves a raise for the blocked staging key (the `approve` command's
//! code). At the end it waits until the raw archive holds every accepted event and prints a
//! summary from ClickHouse (as the read-only analyst), the alerts the local Slack/PagerDuty
//! receiver captured, the decisions, a few analyst queries, a replay of the history against the
//! same policies, and one [`Outcome`] per scenario.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::scenario::{self, Actor, Scenario};
use crate::workload::Models;
use anyhow::{bail, Context, Result};
use chrono::{DateTime, TimeDelta, Utc};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use rust_decimal::Decimal;
use serde_json::Value;

mod front;
mod outcomes;
mod report;
use front::{FrontAnswer, NginxFront};
use outcomes::*;
use report::*;

/// Runs the scripted demo against running services.
#[derive(Debug, Clone, Parser)]
#[command(name = "quotaflow-demo")]
pub struct Args {
    /// Base URL of the ingest service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub ingest_url: String,
    /// Bearer token of the demo producer (from the environment, never printed).
    #[arg(long, env = "DEMO_INGEST_TOKEN", hide_env_values = true)]
    pub token: infra::secret::Secret,
    /// Producer name the token belongs to.
    #[arg(long, default_value = "demo")]
    pub producer: String,
    /// How long the workload runs, in seconds (at least 20; the scenarios are placed in it).
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Background events per second (the scenarios add about 70 a second at their peak).
    #[arg(long, default_value_t = 300)]
    pub rate: u64,
    /// ClickHouse HTTP endpoint for the summary queries.
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    pub clickhouse_url: String,
    /// Database the services write to.
    #[arg(long, default_value = "quotaflow_demo")]
    pub database: String,
    /// Seed of the workload generator.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// The alerter's config (Kafka topics, policy directory, ClickHouse); `QUOTAFLOW_*`
    /// variables override it. Used for the approval and the replay.
    #[arg(long, default_value = "config/alerter.toml")]
    pub alerter_config: PathBuf,
    /// The price catalog the services use (the workload picks models it does not retire).
    #[arg(long, default_value = "demo/catalog.json")]
    pub catalog: PathBuf,
    /// The local Slack/PagerDuty receiver the alerter notifies.
    #[arg(long, default_value = "http://127.0.0.1:9110")]
    pub receiver_url: String,
    /// The private key alice signs the demo's approval with (made per run by `dev/demo`, see
    /// [`crate::keys`]); without it the approval is not made and its scenario fails.
    #[arg(long, env = "DEMO_APPROVER_KEY_FILE")]
    pub approver_key_file: Option<PathBuf>,
    /// Delete the topics of earlier demo runs (`quotaflow.demo.*` other than this run's).
    #[arg(long)]
    pub delete_old_topics: bool,
    /// The decision sidecar's HTTP listener (`quotaflow-decide`, following this run's control
    /// topic with the demo policies and `answers.deny_status = 403`): the runaway loop's calls go
    /// through an NGINX the demo starts in front of ingest, which asks it about each.
    #[arg(long, default_value = "127.0.0.1:8181")]
    pub sidecar: String,
    /// Analyst queries whose results the summary shows.
    #[arg(long, default_value = "schemas/sql/queries")]
    pub queries_dir: PathBuf,
}

/// The gateway's tick: requests are generated, checked and posted every 50 ms.
const TICK: Duration = Duration::from_millis(50);
/// When the budget owner approves the raise, as a fraction of the duration.
const APPROVE_AT: f64 = 0.45;
/// The raised cap of the staging key, USD.
const RAISED_CAP: &str = "8";
/// The staging key's cap in the demo's policy, USD.
const LOOP_CAP: &str = "5";
/// Enforcement latency (event → block at the gateway) the loop's overshoot is held to: the
/// p99 goal the latency benchmark meets (docs/benchmarks.md), plus one gateway tick.
const ENFORCEMENT_BOUND: Duration = Duration::from_millis(250 + 50);

/// What the simulated gateway did, per actor.
#[derive(Debug, Default, Clone)]
struct Tally {
    generated: u64,
    sent: u64,
    refused: u64,
    degraded: u64,
}

#[derive(Debug, Default)]
struct Gatekeeping {
    tally: BTreeMap<Actor, Tally>,
    /// Refusals per policy: count and one reason.
    refused_by_policy: BTreeMap<String, (u64, String)>,
    degraded_by_policy: BTreeMap<String, (u64, String)>,
    /// First refusal of a loop call (wall clock), and the first allowed after the approval.
    loop_first_refused: Option<DateTime<Utc>>,
    loop_allowed_after_approval: Option<DateTime<Utc>>,
    approved_at: Option<DateTime<Utc>>,
    approval: Option<String>,
    /// What NGINX answered the loop's first refused call: its `Retry-After`.
    loop_retry_after: Option<String>,
    /// The oversized call's refusal at admission: the rule and the reason.
    admission_refusal: Option<(Option<String>, String)>,
    accepted: u64,
    rejected: u64,
}

/// Runs the scenarios against running services (the alerter's `config` gives the topics, the
/// policies and the catalog); prints the summary and returns one outcome per scenario.
pub async fn run(args: &Args, alerter_config: &alerter::Config) -> Result<Vec<Outcome>> {
    if args.duration < 20 {
        bail!("--duration must be at least 20 seconds");
    }
    let started_at = Utc::now();
    let run_id = format!("{:x}", started_at.timestamp_millis());
    let http = reqwest::Client::new();
    let catalog = pricing::Catalog::load_path(&args.catalog, None)
        .with_context(|| format!("loading the price catalog {}", args.catalog.display()))?;
    let models = Models::current(&catalog, started_at.date_naive());
    println!(
        "models in use (none retired on {}): text {} and {}, images {}, video {}, audio {}, embeddings {}, batch {}",
        started_at.date_naive(),
        models.openai_text.model,
        models.anthropic_text.model,
        models.image.model,
        models.video.model,
        models.audio.model,
        models.embedding.model,
        models.batch.model
    );
    if args.delete_old_topics {
        let topics = &alerter_config.kafka.topics;
        let keep = [
            topics.usage.as_str(),
            topics.dead_letter.as_str(),
            topics.totals.as_str(),
            topics.control.as_str(),
            topics.alerts.as_str(),
            topics.approvals.as_str(),
        ];
        let deleted = infra::kafka::delete_topics_with_prefix(
            &alerter_config.kafka,
            "quotaflow.demo.",
            &keep,
        )
        .await
        .context("deleting the topics of earlier demo runs")?;
        if !deleted.is_empty() {
            println!("deleted {} topics of earlier demo runs", deleted.len());
        }
    }
    let gateway = start_gateway(alerter_config).await?;
    wait_for_sidecar(&http, &args.sidecar).await?;
    let front = NginxFront::start(&args.sidecar, &args.ingest_url, &run_id).await?;
    println!(
        "the runaway loop calls through nginx at {} (deploy/gateways/nginx.conf), which asks the decision sidecar at {}",
        front.url, args.sidecar
    );
    let mut gatekeeping = Gatekeeping::default();
    let scenario = Scenario::new(
        args.seed,
        &run_id,
        &args.producer,
        models,
        Duration::from_secs(args.duration),
        args.rate,
    );
    run_workload(
        args,
        alerter_config,
        &http,
        &gateway,
        &front,
        scenario,
        &mut gatekeeping,
    )
    .await?;
    gateway.shutdown();
    drop(front);
    print_remaining_quota(&http, &args.sidecar).await;
    print_gatekeeping(&gatekeeping);
    if gatekeeping.accepted == 0 {
        bail!("ingest accepted no events");
    }
    let clickhouse = ClickHouse {
        http: http.clone(),
        url: args.clickhouse_url.clone(),
        database: args.database.clone(),
    };
    wait_for_archive(&clickhouse, &run_id, gatekeeping.accepted).await?;
    print_summary(&clickhouse, &run_id).await?;
    let totals_exact = print_aggregator_check(&clickhouse).await?;
    let captured = captured_notifications(&http, &args.receiver_url).await?;
    print_notifications(&captured);
    print_decisions(&clickhouse).await?;
    print_queries(&clickhouse, &args.queries_dir).await?;
    // From before the services started: the alerter publishes its startup decisions (model
    // rules) before this run begins, sometimes more than a second before. The database and the
    // topics are this run's own, so nothing older is in the range.
    let replay = replay(alerter_config, started_at - TimeDelta::minutes(10)).await?;
    let outcomes = outcomes(&clickhouse, &gatekeeping, &captured, &replay, totals_exact).await?;
    println!("\n== scenarios ==");
    for outcome in &outcomes {
        println!(
            "{} {:<22} {}",
            if outcome.ok { "PASS" } else { "FAIL" },
            outcome.name,
            outcome.detail
        );
    }
    Ok(outcomes)
}

/// The enforcement client on the control topic, caught up.
async fn start_gateway(config: &alerter::Config) -> Result<gateway::Gateway> {
    let gateway = gateway::Gateway::start(gateway::GatewayConfig {
        kafka: config.kafka.clone(),
        client_id: "quotaflow-demo-gateway".to_owned(),
        ..Default::default()
    })
    .context("starting the gateway client")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gateway.is_ready() {
        if Instant::now() > deadline {
            bail!("the gateway client did not catch up with the control topic in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(gateway)
}

/// What the sidecar answers about the loop's key (`GET /v1/scopes`): spent, limit, remaining,
/// reset and the decision in force, per policy that counts its calls.
async fn print_remaining_quota(http: &reqwest::Client, sidecar: &str) {
    let url = format!(
        "http://{sidecar}/v1/scopes?api_key_id={}&team=search&workflow=agent-loop&environment=staging",
        scenario::LOOP_KEY
    );
    println!(
        "\n== the decision sidecar's remaining quota for {} (GET /v1/scopes) ==",
        scenario::LOOP_KEY
    );
    let answer: Value = match http.get(&url).send().await {
        Ok(response) => response.json().await.unwrap_or(Value::Null),
        Err(error) => {
            println!("not answered: {error}");
            return;
        }
    };
    for quota in answer["scopes"].as_array().into_iter().flatten() {
        println!(
            "{:<26} {:<28} spent {} of {} {} ({} left), resets in {} s{}",
            field(quota, "policy_id"),
            field(quota, "scope"),
            field(quota, "spent"),
            field(quota, "limit"),
            field(quota, "unit"),
            field(quota, "remaining"),
            quota["reset_seconds"],
            quota["decision"]["action"]
                .as_str()
                .map_or_else(String::new, |action| format!("; {action} in force"))
        );
    }
}

/// Waits until the sidecar has caught up with the control topic (`/readyz`).
async fn wait_for_sidecar(http: &reqwest::Client, sidecar: &str) -> Result<()> {
    let url = format!("http://{sidecar}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = http.get(&url).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the decision sidecar at {sidecar} was not ready in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends a call of the loop's agent through NGINX (which asks the sidecar) and tallies the answer.
async fn through_front(
    front: &NginxFront,
    http: &reqwest::Client,
    args: &Args,
    request: &scenario::Request,
    gatekeeping: &mut Gatekeeping,
    now: DateTime<Utc>,
) -> Result<()> {
    let answer = front
        .call(
            http,
            args.token.expose(),
            &request.event,
            scenario::LOOP_MAX_OUTPUT_TOKENS,
        )
        .await?;
    let actor = request.actor;
    let tally = gatekeeping.tally.entry(actor).or_default();
    tally.generated += 1;
    match answer {
        FrontAnswer::Sent { accepted, rejected } => {
            tally.sent += 1;
            gatekeeping.accepted += accepted;
            gatekeeping.rejected += rejected;
            if actor == Actor::RunawayLoop
                && gatekeeping.approved_at.is_some()
                && gatekeeping.loop_allowed_after_approval.is_none()
            {
                gatekeeping.loop_allowed_after_approval = Some(now);
            }
        }
        FrontAnswer::Refused {
            policy,
            reason,
            rule,
            retry_after,
        } => {
            tally.refused += 1;
            if actor == Actor::OversizedContext {
                gatekeeping.admission_refusal = Some((rule.clone(), reason.clone()));
            }
            if actor == Actor::RunawayLoop && gatekeeping.loop_first_refused.is_none() {
                gatekeeping.loop_first_refused = Some(now);
                gatekeeping.loop_retry_after = retry_after;
            }
            let key = match &rule {
                Some(rule) => format!("{policy} (admission rule {rule})"),
                None => policy,
            };
            gatekeeping
                .refused_by_policy
                .entry(key)
                .or_insert((0, reason))
                .0 += 1;
        }
    }
    Ok(())
}

/// Asks the gateway about `request`: `false` if it is refused; a degrade changes the model.
fn obey(
    gateway: &gateway::Gateway,
    request: &mut scenario::Request,
    gatekeeping: &mut Gatekeeping,
    now: DateTime<Utc>,
) -> bool {
    let labels = gateway::view::event_labels(&request.event);
    let verdict = gateway.check(&gateway::RequestAttributes::of_event(
        &request.event,
        &labels,
    ));
    let tally = gatekeeping.tally.entry(request.actor).or_default();
    tally.generated += 1;
    match verdict {
        gateway::Verdict::Allow => {
            tally.sent += 1;
            if request.actor == Actor::RunawayLoop
                && gatekeeping.approved_at.is_some()
                && gatekeeping.loop_allowed_after_approval.is_none()
            {
                gatekeeping.loop_allowed_after_approval = Some(now);
            }
            true
        }
        gateway::Verdict::Block {
            reason, policy_id, ..
        } => {
            tally.refused += 1;
            if request.actor == Actor::RunawayLoop && gatekeeping.loop_first_refused.is_none() {
                gatekeeping.loop_first_refused = Some(now);
            }
            let entry = gatekeeping
                .refused_by_policy
                .entry(policy_id.to_string())
                .or_insert((0, reason.to_string()));
            entry.0 += 1;
            false
        }
        gateway::Verdict::Degrade {
            to,
            reason,
            policy_id,
            ..
        } => {
            tally.sent += 1;
            tally.degraded += 1;
            let entry = gatekeeping
                .degraded_by_policy
                .entry(policy_id.to_string())
                .or_insert((0, reason.to_string()));
            entry.0 += 1;
            let to = to.to_string();
            request.event.model = to;
            true
        }
    }
}

async fn run_workload(
    args: &Args,
    alerter_config: &alerter::Config,
    http: &reqwest::Client,
    gateway: &gateway::Gateway,
    front: &NginxFront,
    mut scenario: Scenario,
    gatekeeping: &mut Gatekeeping,
) -> Result<()> {
    let duration = Duration::from_secs(args.duration);
    let progress = ProgressBar::new(args.duration);
    progress.set_style(
        ProgressStyle::with_template("{spinner} workload [{bar:40}] {pos}/{len} s  {msg}")
            .context("progress template")?
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut ticks = 0u32;
    loop {
        ticks += 1;
        let elapsed = TICK * ticks;
        if elapsed > duration {
            break;
        }
        // Pace by the tick's due time, not by fixed sleeps per request.
        if let Some(ahead) = elapsed.checked_sub(started.elapsed()) {
            tokio::time::sleep(ahead).await;
        }
        let now = Utc::now();
        let mut batch = Vec::new();
        let mut behind_nginx = Vec::new();
        for mut request in scenario.tick(elapsed, TICK, now) {
            if matches!(request.actor, Actor::RunawayLoop | Actor::OversizedContext) {
                behind_nginx.push(request);
            } else if obey(gateway, &mut request, gatekeeping, now) {
                batch.push(request.event);
            }
        }
        for request in &behind_nginx {
            through_front(front, http, args, request, gatekeeping, now).await?;
        }
        if !batch.is_empty() {
            let response = post_with_retry(http, args, &batch).await?;
            gatekeeping.accepted += response["accepted"].as_u64().unwrap_or(0);
            gatekeeping.rejected += response["rejected"].as_u64().unwrap_or(0);
        }
        let fraction = elapsed.as_secs_f64() / duration.as_secs_f64();
        if fraction >= APPROVE_AT && gatekeeping.approval.is_none() {
            approve(
                alerter_config,
                args.approver_key_file.as_deref(),
                gatekeeping,
                &progress,
            )
            .await?;
        }
        progress.set_position(elapsed.as_secs());
        let loop_state = match (gatekeeping.loop_first_refused, gatekeeping.approved_at) {
            _ if !scenario.loop_started(elapsed) => "loop not started",
            (None, _) => "loop running",
            (Some(_), None) => "loop cut off",
            (Some(_), Some(_)) => "raise approved",
        };
        let refused: u64 = gatekeeping.tally.values().map(|t| t.refused).sum();
        progress.set_message(format!(
            "accepted {} refused {refused} | {loop_state}",
            gatekeeping.accepted
        ));
    }
    progress.finish();
    Ok(())
}

/// The budget owner raises the staging key's cap (the `approve` command's code path), once the
/// loop has been cut off.
async fn approve(
    config: &alerter::Config,
    key_file: Option<&std::path::Path>,
    gatekeeping: &mut Gatekeeping,
    progress: &ProgressBar,
) -> Result<()> {
    if gatekeeping.loop_first_refused.is_none() {
        gatekeeping.approval = Some("not requested: the loop was never cut off".to_owned());
        return Ok(());
    }
    let Some(key_file) = key_file else {
        gatekeeping.approval = Some("not requested: no --approver-key-file for alice".to_owned());
        return Ok(());
    };
    let args = alerter::approve::ApproveArgs {
        policy: "staging-agent-daily-cap".to_owned(),
        scope: format!("api_key_id={}", scenario::LOOP_KEY),
        limit: RAISED_CAP.to_owned(),
        until: Utc::now() + TimeDelta::hours(1),
        reason: "load test of the agent loop signed off".to_owned(),
        by: crate::keys::APPROVER.to_owned(),
        key_file: Some(key_file.to_path_buf()),
    };
    match alerter::approve::run(config, &args).await? {
        alerter::approve::Outcome::Written(approval) => {
            progress.println(format!(
                "alice approved {} USD for {} until {} ({})",
                RAISED_CAP, args.scope, args.until, approval.approval_id
            ));
            gatekeeping.approved_at = Some(approval.requested_at);
            gatekeeping.approval = Some(approval.approval_id);
        }
        alerter::approve::Outcome::Refused(reason) => {
            gatekeeping.approval = Some(format!("refused: {reason}"));
        }
    }
    Ok(())
}

fn print_gatekeeping(gatekeeping: &Gatekeeping) {
    println!(
        "\n== the gateways obeyed the control topic (RunawayLoop and OversizedContext through nginx and the decision sidecar, the rest in-process) =="
    );
    for (actor, tally) in &gatekeeping.tally {
        println!(
            "{:<14} {:>7} requests: {:>7} sent ({} degraded), {:>6} refused",
            format!("{actor:?}"),
            tally.generated,
            tally.sent,
            tally.degraded,
            tally.refused
        );
    }
    for (policy, (count, reason)) in &gatekeeping.refused_by_policy {
        println!("refused  {count:>6}  policy {policy}: {reason}");
    }
    for (policy, (count, reason)) in &gatekeeping.degraded_by_policy {
        println!("degraded {count:>6}  policy {policy}: {reason}");
    }
    println!(
        "ingest accepted {} events, rejected {}",
        gatekeeping.accepted, gatekeeping.rejected
    );
}

/// Posts one batch; a 503 (Kafka unavailable) is retried with the same event ids, which is safe
/// because downstream deduplicates by event id.
async fn post_with_retry(
    http: &reqwest::Client,
    args: &Args,
    batch: &[schemas::UsageEvent],
) -> Result<Value> {
    let url = format!("{}/v1/events", args.ingest_url);
    for attempt in 1..=5 {
        let response = http
            .post(&url)
            .bearer_auth(args.token.expose())
            .json(batch)
            .send()
            .await
            .context("POST /v1/events")?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match status.as_u16() {
            200 | 422 => return Ok(body),
            503 if attempt < 5 => tokio::time::sleep(Duration::from_secs(attempt)).await,
            _ => bail!("ingest answered {status}: {body}"),
        }
    }
    bail!("ingest stayed unavailable")
}

/// `quotactl replay --compare` over the run, with the alerter's policies.
async fn replay(
    config: &alerter::Config,
    from: DateTime<Utc>,
) -> Result<(quotactl::replay::ReplayReport, quotactl::replay::Comparison)> {
    let policies = policy::PolicySet::load_dir(&config.alert.policies_dir)
        .map_err(|errors| anyhow::anyhow!("policies do not load: {errors}"))?;
    let catalog = config.alert.load_catalog().map_err(anyhow::Error::msg)?;
    let client = infra::clickhouse::client(&config.clickhouse);
    let to = Utc::now();
    let approvals = quotactl::replay::approvals(&client, from, to).await?;
    let replayer = quotactl::replay::Replayer::new(
        Arc::new(policies),
        Arc::new(catalog),
        config.alert.anomaly.clone(),
        approvals,
    )?;
    let report = quotactl::replay::run(&client, replayer, from, to, &|_| {}).await?;
    let live = quotactl::replay::live_decisions(&client, from, to).await?;
    let comparison = quotactl::replay::compare(&live, &report.decisions);
    println!(
        "\n== replay of the run's history against the same policies (quotactl replay --compare) =="
    );
    print!(
        "{}",
        quotactl::replay::report_text(&report, Some(&comparison))
    );
    Ok((report, comparison))
}

/// How one scenario ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The scenario.
    pub name: &'static str,
    /// Whether it had its expected outcome.
    pub ok: bool,
    /// Whether `ok` depends on a measured time (the runaway loop's overshoot against the
    /// enforcement latency bound): a figure to report, not a pass/fail check for a test.
    pub timed: bool,
    /// What happened, for people.
    pub detail: String,
}

fn outcome(name: &'static str, ok: bool, detail: String) -> Outcome {
    Outcome {
        name,
        ok,
        timed: false,
        detail,
    }
}
