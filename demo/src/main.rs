//! `quotaflow-demo`: a gateway simulator. It generates a synthetic workload, asks the `gateway`
//! enforcement client about every request (following the control topic, as a real gateway would:
//! blocked requests are not sent, degraded ones go to the cheaper model), sends what may go to
//! the ingest API, waits until the raw archive holds every accepted event, and prints a summary
//! from ClickHouse (as the read-only analyst), with what the gateway refused and why.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use demo::workload;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// Runs the demo workload against a running ingest service.
#[derive(Debug, Parser)]
#[command(name = "quotaflow-demo")]
struct Args {
    /// Base URL of the ingest service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    ingest_url: String,
    /// Bearer token of the demo producer (from the environment, never printed).
    #[arg(long, env = "DEMO_INGEST_TOKEN", hide_env_values = true)]
    token: String,
    /// Producer name the token belongs to.
    #[arg(long, default_value = "demo")]
    producer: String,
    /// Number of events to send.
    #[arg(long, default_value_t = 5_000)]
    events: u64,
    /// Target rate in events per second.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Events per HTTP request.
    #[arg(long, default_value_t = 250)]
    batch: usize,
    /// ClickHouse HTTP endpoint for the summary queries.
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    clickhouse_url: String,
    /// Database the services write to.
    #[arg(long, default_value = "quotaflow")]
    database: String,
    /// Seed of the workload generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Kafka brokers of the control topic the simulated gateway obeys.
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// The control topic.
    #[arg(long, default_value = "quota.control.v1")]
    control_topic: String,
    /// Send every request, ignoring decisions (the gateway does not enforce).
    #[arg(long)]
    no_enforce: bool,
}

/// What the simulated gateway did with requests it did not send as asked.
#[derive(Debug, Default)]
struct Enforcement {
    /// Refused, per policy: count and one reason.
    refused: std::collections::BTreeMap<String, (u64, String)>,
    /// Degraded, per policy: count and one reason.
    degraded: std::collections::BTreeMap<String, (u64, String)>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let run_id = format!("{:x}", chrono::Utc::now().timestamp_millis());
    let http = reqwest::Client::new();
    let gateway = if args.no_enforce {
        None
    } else {
        Some(start_gateway(&args).await?)
    };
    let mut enforcement = Enforcement::default();
    let (accepted, rejected) =
        send_workload(&args, &run_id, &http, gateway.as_ref(), &mut enforcement).await?;
    print_enforcement(&enforcement);
    if let Some(gateway) = gateway {
        gateway.shutdown();
    }
    let refused: u64 = enforcement.refused.values().map(|(count, _)| count).sum();
    println!(
        "\ngenerated {} requests: {refused} refused by the gateway, {accepted} events accepted by ingest, {rejected} rejected (run {run_id})",
        args.events
    );
    if accepted == 0 {
        bail!("ingest accepted no events");
    }
    let clickhouse = ClickHouse {
        http,
        url: args.clickhouse_url.clone(),
        database: args.database.clone(),
    };
    wait_for_archive(&clickhouse, &run_id, accepted).await?;
    print_summary(&clickhouse, &run_id).await?;
    print_aggregator_check(&clickhouse).await
}

/// The enforcement client on the control topic, caught up.
async fn start_gateway(args: &Args) -> Result<gateway::Gateway> {
    let kafka = infra::config::KafkaConfig {
        brokers: args.kafka_brokers.clone(),
        topics: infra::config::TopicsConfig {
            control: args.control_topic.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    let gateway = gateway::Gateway::start(gateway::GatewayConfig {
        kafka,
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

/// Asks the gateway about `event`'s request: `false` if it is refused; a degrade changes the model.
fn obey(
    gateway: &gateway::Gateway,
    event: &mut schemas::UsageEvent,
    enforcement: &mut Enforcement,
) -> bool {
    let labels = gateway::view::event_labels(event);
    let verdict = gateway.check(&gateway::RequestAttributes::of_event(event, &labels));
    match verdict {
        gateway::Verdict::Allow => true,
        gateway::Verdict::Block {
            reason, policy_id, ..
        } => {
            let entry = enforcement
                .refused
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
            let entry = enforcement
                .degraded
                .entry(policy_id.to_string())
                .or_insert((0, reason.to_string()));
            entry.0 += 1;
            event.model = to.to_string();
            true
        }
    }
}

fn print_enforcement(enforcement: &Enforcement) {
    println!("\n== the simulated gateway obeyed the control topic ==");
    if enforcement.refused.is_empty() && enforcement.degraded.is_empty() {
        println!("no request was refused or degraded");
    }
    for (policy, (count, reason)) in &enforcement.refused {
        println!("refused  {count:>6} requests  policy {policy}: {reason}");
    }
    for (policy, (count, reason)) in &enforcement.degraded {
        println!("degraded {count:>6} requests  policy {policy}: {reason}");
    }
}

async fn send_workload(
    args: &Args,
    run_id: &str,
    http: &reqwest::Client,
    gateway: Option<&gateway::Gateway>,
    enforcement: &mut Enforcement,
) -> Result<(u64, u64)> {
    let mut workload = workload::Workload::new(args.seed, run_id, &args.producer);
    let progress = ProgressBar::new(args.events);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} sending [{bar:40}] {pos}/{len} events {per_sec} eta {eta} {msg}",
        )
        .context("progress template")?
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let (mut accepted, mut rejected, mut sent) = (0u64, 0u64, 0u64);
    while sent < args.events {
        let size = (args.batch as u64).min(args.events - sent);
        let now = chrono::Utc::now();
        let mut batch: Vec<_> = (0..size).map(|_| workload.next_event(now)).collect();
        if let Some(gateway) = gateway {
            batch.retain_mut(|event| obey(gateway, event, enforcement));
        }
        if !batch.is_empty() {
            let response = post_with_retry(http, args, &batch).await?;
            accepted += response["accepted"].as_u64().unwrap_or(0);
            rejected += response["rejected"].as_u64().unwrap_or(0);
        }
        sent += size;
        progress.set_position(sent);
        progress.set_message(format!("accepted {accepted} rejected {rejected}"));
        // Pace to the target rate by event count, not by fixed sleeps per request.
        let due = Duration::from_secs_f64(sent as f64 / args.rate.max(1) as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(ahead).await;
        }
    }
    progress.finish();
    Ok((accepted, rejected))
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
            .bearer_auth(&args.token)
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

struct ClickHouse {
    http: reqwest::Client,
    url: String,
    database: String,
}

impl ClickHouse {
    /// Runs a query as the read-only analyst and returns its rows as JSON objects; decimals are
    /// selected as strings (`toString`) so they stay exact.
    async fn rows(&self, sql: &str) -> Result<Vec<Value>> {
        let response = self
            .http
            .post(&self.url)
            .query(&[("database", self.database.as_str())])
            // Credentials in a header, never in the URL (which access logs keep).
            .basic_auth("analyst", Some("analyst"))
            .body(format!("{sql} FORMAT JSONEachRow"))
            .send()
            .await
            .context("clickhouse query")?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("clickhouse answered {status}: {text}");
        }
        text.lines()
            .map(|line| serde_json::from_str(line).context("clickhouse row"))
            .collect()
    }
}

async fn wait_for_archive(clickhouse: &ClickHouse, run_id: &str, expected: u64) -> Result<()> {
    let progress = ProgressBar::new(expected);
    progress.set_style(ProgressStyle::with_template(
        "{spinner} archived [{bar:40}] {pos}/{len} events in ClickHouse",
    )?);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rows = clickhouse
            .rows(&format!(
                "SELECT toString(count()) AS n FROM usage_events WHERE has(labels_keys, 'demo_run') AND labels_values[indexOf(labels_keys, 'demo_run')] = '{run_id}'"
            ))
            .await?;
        let archived: u64 = rows
            .first()
            .and_then(|row| row["n"].as_str())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        progress.set_position(archived);
        if archived >= expected {
            progress.finish();
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {archived} of {expected} events reached ClickHouse in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Today's UTC day totals per team as the aggregator keeps them (`window_totals_current`), next to
/// a recount from the raw archive (every run of the day); waits up to 60 s for them to agree.
async fn print_aggregator_check(clickhouse: &ClickHouse) -> Result<()> {
    // ANY LEFT JOIN: 18.16 wants the strictness spelled out; modern ClickHouse accepts it too.
    let sql = "SELECT raw.team AS team, toString(raw.requests) AS raw_requests, \
         toString(agg.requests) AS agg_requests, toString(raw.cost) AS raw_cost, \
         toString(agg.cost_usd) AS agg_cost, \
         toString(raw.requests = agg.requests AND raw.cost = agg.cost_usd) AS agree \
         FROM (SELECT team, countIf(job_state IS NULL OR job_state = 'submitted') AS requests, \
               sum(ifNull(cost_usd, toDecimal128(0, 12))) AS cost FROM usage_events \
               WHERE occurred_at >= toStartOfDay(now(), 'UTC') GROUP BY team) AS raw \
         ANY LEFT JOIN (SELECT scope_key AS team, requests, cost_usd FROM window_totals_current \
               WHERE scope_kind = 'team' AND window_kind = 'day' AND window_tz = 'UTC' \
               AND window_start = toStartOfDay(now(), 'UTC')) AS agg USING team ORDER BY team";
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows = clickhouse.rows(sql).await?;
        let agree = !rows.is_empty() && rows.iter().all(|row| row["agree"].as_str() == Some("1"));
        if agree || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("\n== aggregator totals today (UTC day) vs a recount of the raw archive ==");
    for row in &rows {
        println!(
            "{:<10} requests {:>7} (recount {:>7})  cost {:>22} USD (recount {:>22})  {}",
            row["team"].as_str().unwrap_or(""),
            row["agg_requests"].as_str().unwrap_or(""),
            row["raw_requests"].as_str().unwrap_or(""),
            row["agg_cost"].as_str().unwrap_or(""),
            row["raw_cost"].as_str().unwrap_or(""),
            if row["agree"].as_str() == Some("1") {
                "exact"
            } else {
                "DIFFERS"
            }
        );
    }
    if !rows.iter().all(|row| row["agree"].as_str() == Some("1")) {
        bail!("the aggregator's totals do not match the raw archive after 60 s");
    }
    Ok(())
}

async fn print_summary(clickhouse: &ClickHouse, run_id: &str) -> Result<()> {
    let run_filter = format!("labels_values[indexOf(labels_keys, 'demo_run')] = '{run_id}'");
    println!("\n== spend per team (exact, USD) ==");
    for row in clickhouse
        .rows(&format!(
            "SELECT team, toString(count()) AS events, toString(sum(ifNull(cost_usd, toDecimal128(0, 12)))) AS spend_usd, \
             toString(countIf(cost_source = 'unpriced')) AS unpriced FROM usage_events WHERE {run_filter} GROUP BY team ORDER BY team"
        ))
        .await?
    {
        println!("{:<10} {:>7} events  {:>22} USD  {} unpriced", row["team"].as_str().unwrap_or(""), row["events"].as_str().unwrap_or(""), row["spend_usd"].as_str().unwrap_or(""), row["unpriced"].as_str().unwrap_or(""));
    }
    println!("\n== events and spend per modality and model ==");
    for row in clickhouse
        .rows(&format!(
            "SELECT modality, model, toString(count()) AS events, toString(sum(ifNull(cost_usd, toDecimal128(0, 12)))) AS spend_usd \
             FROM usage_events WHERE {run_filter} GROUP BY modality, model ORDER BY modality, model"
        ))
        .await?
    {
        println!("{:<10} {:<24} {:>7} events  {:>22} USD", row["modality"].as_str().unwrap_or(""), row["model"].as_str().unwrap_or(""), row["events"].as_str().unwrap_or(""), row["spend_usd"].as_str().unwrap_or(""));
    }
    println!("\n== retries and fallbacks ==");
    for row in clickhouse
        .rows(&format!(
            "SELECT toString(countIf(attempt > 1)) AS retries, toString(countIf(fallback_from_model IS NOT NULL)) AS fallbacks, \
             toString(sum(if(fallback_from_model IS NOT NULL, ifNull(cost_usd, toDecimal128(0, 12)), toDecimal128(0, 12)))) AS fallback_spend_usd \
             FROM usage_events WHERE {run_filter}"
        ))
        .await?
    {
        println!("retries {}  fallbacks {}  fallback spend {} USD", row["retries"].as_str().unwrap_or(""), row["fallbacks"].as_str().unwrap_or(""), row["fallback_spend_usd"].as_str().unwrap_or(""));
    }
    Ok(())
}
