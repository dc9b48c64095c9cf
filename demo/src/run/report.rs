//! What the demo reads back from ClickHouse as the read-only analyst (the archive, the
//! aggregator's totals, the summary, decisions and analyst queries) and the notifications the
//! local receiver captured, printed for the reader.

use super::*;

pub(super) struct ClickHouse {
    pub(super) http: reqwest::Client,
    pub(super) url: String,
    pub(super) database: String,
}

impl ClickHouse {
    pub(super) async fn text(&self, sql: &str) -> Result<String> {
        let response = self
            .http
            .post(&self.url)
            .query(&[("database", self.database.as_str())])
            // Credentials in a header, never in the URL (which access logs keep).
            .basic_auth("analyst", Some("analyst"))
            .body(sql.to_owned())
            .send()
            .await
            .context("clickhouse query")?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("clickhouse answered {status}: {text}");
        }
        Ok(text)
    }

    /// Runs a query as the read-only analyst and returns its rows as JSON objects; decimals are
    /// selected as strings (`toString`) so they stay exact.
    pub(super) async fn rows(&self, sql: &str) -> Result<Vec<Value>> {
        self.text(&format!("{sql} FORMAT JSONEachRow"))
            .await?
            .lines()
            .map(|line| serde_json::from_str(line).context("clickhouse row"))
            .collect()
    }
}

pub(super) fn field<'a>(row: &'a Value, name: &str) -> &'a str {
    row[name].as_str().unwrap_or("")
}

pub(super) fn decimal(row: &Value, name: &str) -> Decimal {
    Decimal::from_str(field(row, name)).unwrap_or_default()
}

pub(super) async fn wait_for_archive(
    clickhouse: &ClickHouse,
    run_id: &str,
    expected: u64,
) -> Result<()> {
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
            .and_then(|row| field(row, "n").parse().ok())
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
/// a recount from the raw archive; waits up to 60 s for them to agree. Whether they do.
pub(super) async fn print_aggregator_check(clickhouse: &ClickHouse) -> Result<bool> {
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
        let agree = !rows.is_empty() && rows.iter().all(|row| field(row, "agree") == "1");
        if agree || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("\n== aggregator totals today (UTC day) vs a recount of the raw archive ==");
    println!(
        "   requests: usage events that are a call or a job submission (every retry and \
         fallback attempt is one);\n   the later states of an async job (running, succeeded, \
         failed) are events of its one request, not requests of their own."
    );
    for row in &rows {
        println!(
            "{:<10} requests {:>7} (recount {:>7})  cost {:>22} USD (recount {:>22})  {}",
            field(row, "team"),
            field(row, "agg_requests"),
            field(row, "raw_requests"),
            field(row, "agg_cost"),
            field(row, "raw_cost"),
            if field(row, "agree") == "1" {
                "exact"
            } else {
                "DIFFERS"
            }
        );
    }
    Ok(!rows.is_empty() && rows.iter().all(|row| field(row, "agree") == "1"))
}

pub(super) async fn print_summary(clickhouse: &ClickHouse, run_id: &str) -> Result<()> {
    let run_filter = format!("labels_values[indexOf(labels_keys, 'demo_run')] = '{run_id}'");
    println!("\n== spend per team (exact, USD) ==");
    println!(
        "   events: every usage event of this run, async job states included, so a team \
         with video jobs shows more events than requests."
    );
    for row in clickhouse
        .rows(&format!(
            "SELECT team, toString(count()) AS events, toString(sum(ifNull(cost_usd, toDecimal128(0, 12)))) AS spend_usd, \
             toString(countIf(cost_source = 'unpriced')) AS unpriced FROM usage_events WHERE {run_filter} GROUP BY team ORDER BY team"
        ))
        .await?
    {
        println!(
            "{:<10} {:>7} events  {:>22} USD  {} unpriced",
            field(&row, "team"),
            field(&row, "events"),
            field(&row, "spend_usd"),
            field(&row, "unpriced")
        );
    }
    println!("\n== events and spend per modality and model ==");
    for row in clickhouse
        .rows(&format!(
            "SELECT modality, model, toString(count()) AS events, toString(sum(ifNull(cost_usd, toDecimal128(0, 12)))) AS spend_usd \
             FROM usage_events WHERE {run_filter} GROUP BY modality, model ORDER BY modality, model"
        ))
        .await?
    {
        println!(
            "{:<10} {:<24} {:>7} events  {:>22} USD",
            field(&row, "modality"),
            field(&row, "model"),
            field(&row, "events"),
            field(&row, "spend_usd")
        );
    }
    Ok(())
}

/// What the local receiver captured; fails if it refused a payload (an off-format message).
pub(super) async fn captured_notifications(
    http: &reqwest::Client,
    receiver_url: &str,
) -> Result<alerter::receiver::Captured> {
    // The alerter notifies within a second of its decisions; wait until two reads agree.
    let read = || async {
        let response = http
            .get(format!("{receiver_url}/captured"))
            .send()
            .await
            .context("GET /captured from the local receiver")?;
        response
            .json::<alerter::receiver::Captured>()
            .await
            .context("the receiver's captures")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut captured = read().await?;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let again = read().await?;
        if again == captured || Instant::now() > deadline {
            captured = again;
            break;
        }
        captured = again;
    }
    if !captured.refused.is_empty() {
        bail!(
            "the local receiver refused payloads that are not in Slack's or PagerDuty's format: {:?}",
            captured.refused
        );
    }
    Ok(captured)
}

pub(super) fn print_notifications(captured: &alerter::receiver::Captured) {
    println!("\n== notifications captured by the local Slack/PagerDuty receiver ==");
    let slack = captured.bodies("/slack");
    let pagerduty = captured.bodies("/pagerduty");
    println!(
        "{} Slack messages (Block Kit), {} PagerDuty events (Events API v2)",
        slack.len(),
        pagerduty.len()
    );
    for body in slack {
        println!("slack      {}", body["text"].as_str().unwrap_or(""));
    }
    for body in pagerduty {
        println!(
            "pagerduty  {:<8} {}  {}",
            body["event_action"].as_str().unwrap_or(""),
            body["dedup_key"].as_str().unwrap_or(""),
            body["payload"]["summary"].as_str().unwrap_or("")
        );
    }
}

pub(super) async fn print_decisions(clickhouse: &ClickHouse) -> Result<()> {
    println!("\n== decisions on the control topic (alerter audit), oldest first ==");
    for row in clickhouse
        .rows(
            "SELECT toString(issued_at) AS issued, action, toString(version) AS version, key, reason \
             FROM decisions FINAL ORDER BY issued_at_us, key",
        )
        .await?
    {
        println!(
            "{}  {:<8} v{:<2} {}\n{:>32}{}",
            field(&row, "issued"),
            field(&row, "action"),
            field(&row, "version"),
            field(&row, "key"),
            "",
            field(&row, "reason")
        );
    }
    Ok(())
}

/// A few of the documented analyst queries, as an analyst would run them.
pub(super) async fn print_queries(clickhouse: &ClickHouse, dir: &std::path::Path) -> Result<()> {
    for name in [
        "01_spend_by_team_model_day.sql",
        "10_fallback_share_and_spend_by_workflow.sql",
        "14_pending_async_jobs.sql",
        "15_top_scopes_by_percent_of_cap.sql",
    ] {
        let path = dir.join(name);
        let sql = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let title = sql
            .lines()
            .find_map(|line| line.strip_prefix("-- title: "))
            .unwrap_or(name);
        let body = sql.trim().trim_end_matches(';');
        let text = clickhouse
            .text(&format!("{body}\nFORMAT PrettyCompactNoEscapes"))
            .await
            .with_context(|| format!("running {name}"))?;
        let text = if text.trim().is_empty() {
            "(no rows)\n"
        } else {
            &text
        };
        println!("\n== analyst query: {title} ({name}) ==\n{text}");
    }
    Ok(())
}
