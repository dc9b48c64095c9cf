//! The cardinality benchmark (issue 13 point 7, "Unbounded state from external cardinality";
//! `docs/benchmarks.md`, "Memory under a million distinct user ids"): one event per distinct
//! `user_id`, `users` of them, through the release aggregator with a `group_by: [user_id]`
//! policy, once per `aggregate.max_scopes_per_kind` asked for (0 = no limit); reports the
//! process's peak RSS (`VmHWM`, from `wait4`), the `user_id` totals written and how many events
//! the overflow bucket took.
//!
//! The events are the bench mix's (priced demo workload, no duplicates), each given its own
//! `user_id` and event id, 1 ms apart: a million of them span 17 minutes of event time, all in
//! one UTC month, so without a limit every user keeps a month total (and a policy total) until
//! the month closes, which is exactly the growth the limit bounds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::TimeDelta;
use indicatif::ProgressBar;
use rdkafka::producer::{BaseProducer, Producer};

use crate::contenders::aggregator::{command, wait_checkpointed};
use crate::contenders::Stack;
use crate::events::{event_time_start, EventMix};
use crate::process::MeasuredChild;
use crate::topic::{self, TopicLayout};

/// A policy per user and month: one more scope kind keyed by `user_id`.
const PER_USER_POLICY: &str = r#"
id: per-user-monthly
description: Spend per user and month (the cardinality benchmark).
owner: {team: bench, contact: bench@example.com}
unit: cost_usd
group_by: [user_id]
window: {kind: month}
hard_cap: 1000
action: {kind: alert_only}
"#;

/// One run of the aggregator over the cardinality topic.
#[derive(Debug, Clone)]
pub struct CardinalityOutcome {
    /// `aggregate.max_scopes_per_kind` (0 = no limit).
    pub limit: u64,
    /// Events (one per distinct `user_id`).
    pub users: u64,
    /// From spawning the process until every record was checkpointed.
    pub wall: Duration,
    /// Peak RSS of the aggregator process.
    pub peak_rss_bytes: u64,
    /// `user_id` month totals written (own values plus the overflow bucket).
    pub user_scopes: u64,
    /// Events counted in the `user_id` overflow bucket.
    pub overflowed_events: u64,
}

/// Fills `topic` with one event per user (unless it already holds `users` records in
/// `partitions` partitions) and returns its layout.
pub async fn prefill(
    stack: &Stack,
    topic: &str,
    users: u64,
    partitions: i32,
) -> Result<TopicLayout> {
    if let Some(layout) = TopicLayout::fetch(&stack.kafka, topic)? {
        if layout.records() == users && layout.partitions.len() == partitions as usize {
            println!("topic {topic}: {users} records, reused");
            return Ok(layout);
        }
        topic::delete(&stack.kafka, &[topic.to_owned()]).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    topic::create(&stack.kafka, topic, partitions).await?;
    let mut producer_config = infra::kafka::producer_config(&stack.kafka, "quotaflow-bench-card");
    producer_config.set("linger.ms", "50");
    let producer: BaseProducer = producer_config.create()?;
    let mut mix = EventMix::new(0.0)?;
    let progress = ProgressBar::new(users);
    for index in 0..users {
        let mut event = mix.next_record().event;
        event.event_id = format!("card-{index}");
        event.user_id = Some(format!("user-{index:07}"));
        event.job_id = None;
        event.job_state = None;
        event.occurred_at = event_time_start() + TimeDelta::milliseconds(index as i64);
        let payload = schemas::encode(&event)?;
        crate::prefill::send(&producer, topic, &event.event_id, &payload)?;
        if index % 10_000 == 0 {
            progress.set_position(index);
        }
    }
    producer.flush(Duration::from_secs(120))?;
    progress.finish_and_clear();
    TopicLayout::fetch(&stack.kafka, topic)?.with_context(|| format!("topic {topic} vanished"))
}

/// Runs the aggregator over `layout` with `max_scopes_per_kind = limit`.
pub async fn run(
    stack: &Stack,
    binary: &Path,
    layout: &TopicLayout,
    limit: u64,
    log_dir: &Path,
) -> Result<CardinalityOutcome> {
    let name = infra::testkit::unique_name("bench_card");
    let log = log_dir.join(format!("{name}.log"));
    let policies = policies_dir(&name)?;
    let output_topics: Vec<String> = ["totals", "deadletter", "control", "alerts", "approvals"]
        .iter()
        .map(|topic| format!("{name}.{topic}"))
        .collect();
    let mut command = command(
        stack,
        binary,
        &layout.topic,
        layout.partitions.len(),
        &name,
        &output_topics,
        &policies,
        &log,
    )?;
    command.env(
        "QUOTAFLOW_AGGREGATE__MAX_SCOPES_PER_KIND",
        limit.to_string(),
    );
    let spawned = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let child = MeasuredChild::new(child, spawned);
    let caught_up = wait_checkpointed(stack, &name, layout, &child, spawned).await;
    let wall = spawned.elapsed();
    child.terminate();
    let usage = tokio::task::spawn_blocking(move || child.wait()).await??;
    caught_up.with_context(|| format!("see {}", log.display()))?;
    if !usage.success {
        bail!("the aggregator failed; see {}", log.display());
    }
    let scopes_sql = format!(
        "SELECT count(), sumIf(requests, scope_key = '__overflow__') FROM `{name}`.window_totals_current \
         WHERE scope_kind = 'user_id' AND window_kind = 'month' FORMAT TSV"
    );
    let rows = stack.clickhouse.rows(&scopes_sql).await?;
    let (user_scopes, overflowed_events) = rows
        .first()
        .and_then(|row| Some((row.first()?.parse().ok()?, row.get(1)?.parse().ok()?)))
        .unwrap_or((0, 0));
    stack
        .clickhouse
        .query(&format!("DROP DATABASE IF EXISTS `{name}`"))
        .await?;
    topic::delete(&stack.kafka, &output_topics).await?;
    let _ = std::fs::remove_dir_all(&policies);
    Ok(CardinalityOutcome {
        limit,
        users: layout.records(),
        wall,
        peak_rss_bytes: usage.max_rss_bytes,
        user_scopes,
        overflowed_events,
    })
}

/// A directory holding [`PER_USER_POLICY`].
fn policies_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{name}-policies"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("policies.yaml"), PER_USER_POLICY)?;
    Ok(dir)
}

/// The results as a markdown table.
pub fn table(outcomes: &[CardinalityOutcome]) -> String {
    let mut table = String::from(
        "| max_scopes_per_kind | distinct user_ids | wall | peak RSS | user_id month totals | events in __overflow__ |\n\
         |---:|---:|---:|---:|---:|---:|\n",
    );
    for outcome in outcomes {
        let limit = if outcome.limit == 0 {
            "none".to_owned()
        } else {
            outcome.limit.to_string()
        };
        table.push_str(&format!(
            "| {limit} | {} | {:.1} s | {:.0} MiB | {} | {} |\n",
            outcome.users,
            outcome.wall.as_secs_f64(),
            outcome.peak_rss_bytes as f64 / (1024.0 * 1024.0),
            outcome.user_scopes,
            outcome.overflowed_events,
        ));
    }
    table
}
