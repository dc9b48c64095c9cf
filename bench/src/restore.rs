//! The restore benchmark (issue 13 point 6; `docs/benchmarks.md`, "Restore"): a month of totals
//! history on the totals topic, in the real format (Avro `WindowTotal` records keyed by
//! [`WindowTotal::compaction_key`]), then the release alerter started against it: the time from
//! spawning it to `/readyz` answering 200 (restored) and its peak RSS (`VmHWM`) at that moment.
//!
//! The history is `scopes` team scopes of two policies (an hourly and a daily cost cap), every
//! hour and day of `days` days, from each of `partitions` input partitions: the closed windows,
//! and the current hour and day, open. Three topics are measured, each in its own run:
//! - `history`: what an aggregator without tombstones leaves, every closed window's key;
//! - `tombstoned`: the same, each closed key followed by its tombstone, before compaction has
//!   removed anything (the worst case after the change: the log still holds the history);
//! - `compacted`: what compaction converges to once it has removed the tombstoned keys: the open
//!   windows' keys only (written directly: the broker's cleaner runs when it chooses).
//!
//! Each alerter binary given (e.g. a build of the code before the change as `--before-bin`) is
//! run on each topic.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use infra::config::KafkaConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rust_decimal::Decimal;
use schemas::WindowTotal;

use crate::contenders::Stack;
use crate::process::{status_bytes, MeasuredChild};

/// The policies the history belongs to (the alerter evaluates their open windows).
const POLICIES: &str = r#"
- id: bench-hourly
  owner: {team: bench, contact: bench@example.com}
  description: cost per team per hour
  unit: cost_usd
  group_by: [team]
  window: {kind: hour}
  hard_cap: 1000000
  action: {kind: alert_only}
- id: bench-daily
  owner: {team: bench, contact: bench@example.com}
  description: cost per team per day
  unit: cost_usd
  group_by: [team]
  window: {kind: day}
  hard_cap: 1000000
  action: {kind: alert_only}
"#;

/// What the restore benchmark pre-fills.
#[derive(Debug, Clone, Copy)]
pub struct History {
    /// Team scopes per policy.
    pub scopes: usize,
    /// Days of history.
    pub days: i64,
    /// Input partitions (one partial per scope, window and partition).
    pub partitions: i32,
}

/// Which topic a run reads (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Every closed key, no tombstones.
    History,
    /// Every closed key and its tombstone, not compacted yet.
    Tombstoned,
    /// Open keys only (after compaction).
    Compacted,
}

impl Shape {
    /// Every shape, in table order.
    pub const ALL: [Shape; 3] = [Shape::History, Shape::Tombstoned, Shape::Compacted];

    fn name(self) -> &'static str {
        match self {
            Shape::History => "history",
            Shape::Tombstoned => "tombstoned",
            Shape::Compacted => "compacted",
        }
    }
}

/// One measured restore.
#[derive(Debug, Clone)]
pub struct RestoreRun {
    /// The binary's label.
    pub binary: String,
    /// The topic's shape.
    pub shape: Shape,
    /// Records on the totals topic (tombstones included).
    pub records: u64,
    /// From spawn to ready.
    pub restore: Duration,
    /// `VmHWM` when ready.
    pub peak_rss_bytes: u64,
}

/// The totals of `history` as (compaction key, payload or `None` for a tombstone), for `shape`,
/// with `now` in the current hour.
fn records(history: History, shape: Shape, now: DateTime<Utc>) -> Vec<(String, Option<Vec<u8>>)> {
    let hour = now.duration_trunc(TimeDelta::hours(1)).expect("in range");
    let day = now.duration_trunc(TimeDelta::days(1)).expect("in range");
    let mut windows: Vec<(&str, &str, DateTime<Utc>, TimeDelta)> = Vec::new();
    for hours_ago in (0..history.days * 24).rev() {
        windows.push((
            "policy:bench-hourly",
            "hour",
            hour - TimeDelta::hours(hours_ago),
            TimeDelta::hours(1),
        ));
    }
    for days_ago in (0..history.days).rev() {
        windows.push((
            "policy:bench-daily",
            "day",
            day - TimeDelta::days(days_ago),
            TimeDelta::days(1),
        ));
    }
    let mut out = Vec::new();
    for (kind, window_kind, start, length) in windows {
        let open = start + length > now;
        if shape == Shape::Compacted && !open {
            continue;
        }
        for scope in 0..history.scopes {
            for partition in 0..history.partitions {
                let total = WindowTotal {
                    window_kind: window_kind.to_owned(),
                    window_end: start + length,
                    source_topic: "bench-usage".to_owned(),
                    source_partition: partition,
                    requests: 40,
                    billable_attempts: 40,
                    input_tokens: 52_000,
                    output_tokens: 9_100,
                    cost_usd: Decimal::new(123_456_789, 8),
                    version: (start.timestamp() as u64) * 10 + partition as u64,
                    written_at: start + length,
                    ..schemas::fixtures::empty_day_total(kind, &format!("team=t{scope:05}"), start)
                };
                let key = total.compaction_key();
                out.push((
                    key.clone(),
                    Some(schemas::encode(&total).expect("encodable")),
                ));
                if shape == Shape::Tombstoned && !open {
                    out.push((key, None));
                }
            }
        }
    }
    out
}

/// A Kafka config whose pipeline topics are `<prefix>.*`.
fn topics(stack: &Stack, prefix: &str, partitions: i32) -> KafkaConfig {
    let mut kafka = stack.kafka.clone();
    let topics = &mut kafka.topics;
    topics.usage = format!("{prefix}.usage");
    topics.totals = format!("{prefix}.totals");
    topics.dead_letter = format!("{prefix}.deadletter");
    topics.control = format!("{prefix}.control");
    topics.alerts = format!("{prefix}.alerts");
    topics.approvals = format!("{prefix}.approvals");
    topics.partitions = partitions;
    kafka
}

/// Creates the pipeline topics of `kafka` and writes `records` on its totals topic.
async fn fill(kafka: &KafkaConfig, records: &[(String, Option<Vec<u8>>)]) -> Result<()> {
    infra::kafka::ensure_topics(kafka, &infra::kafka::pipeline_topics(kafka)).await?;
    let producer: FutureProducer = infra::kafka::producer_config(kafka, "quotaflow-bench")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()?;
    for chunk in records.chunks(20_000) {
        let sends = chunk.iter().map(|(key, payload)| {
            let mut record = FutureRecord::<str, [u8]>::to(&kafka.topics.totals).key(key.as_str());
            if let Some(payload) = payload {
                record = record.payload(payload.as_slice());
            }
            producer.send(record, Duration::from_secs(60))
        });
        for sent in futures::future::join_all(sends).await {
            sent.map_err(|(error, _)| error)?;
        }
    }
    Ok(())
}

/// Starts `binary` on `kafka`'s topics and measures the restore (module docs).
async fn measure(
    stack: &Stack,
    binary: &Path,
    kafka: &KafkaConfig,
    policies_dir: &Path,
    log_dir: &Path,
) -> Result<(Duration, u64)> {
    let name = infra::testkit::unique_name("bench_restore");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
    let mut command = Command::new(binary);
    for (key, _) in std::env::vars() {
        if key.starts_with(infra::config::ENV_PREFIX) {
            command.env_remove(key);
        }
    }
    let topics = &kafka.topics;
    command
        .env("RUST_LOG", "info")
        .env("QUOTAFLOW_KAFKA__BROKERS", &kafka.brokers)
        .env("QUOTAFLOW_KAFKA__TOPICS__USAGE", &topics.usage)
        .env("QUOTAFLOW_KAFKA__TOPICS__TOTALS", &topics.totals)
        .env("QUOTAFLOW_KAFKA__TOPICS__DEAD_LETTER", &topics.dead_letter)
        .env("QUOTAFLOW_KAFKA__TOPICS__CONTROL", &topics.control)
        .env("QUOTAFLOW_KAFKA__TOPICS__ALERTS", &topics.alerts)
        .env("QUOTAFLOW_KAFKA__TOPICS__APPROVALS", &topics.approvals)
        .env(
            "QUOTAFLOW_KAFKA__TOPICS__PARTITIONS",
            topics.partitions.to_string(),
        )
        .env("QUOTAFLOW_CLICKHOUSE__URL", &stack.clickhouse_url)
        .env("QUOTAFLOW_CLICKHOUSE__DATABASE", &name)
        .env("QUOTAFLOW_GROUP_ID", &name)
        .env("QUOTAFLOW_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("QUOTAFLOW_ALERT__POLICIES_DIR", policies_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let spawned = Instant::now();
    let child = MeasuredChild::new(command.spawn().context("spawning the alerter")?, spawned);
    let ready_url = format!("http://127.0.0.1:{port}/readyz");
    let http = reqwest::Client::new();
    let outcome = loop {
        if child.has_exited() {
            break Err(anyhow::anyhow!(
                "the alerter exited while restoring (log: {name}.log)"
            ));
        }
        if spawned.elapsed() > Duration::from_secs(600) {
            break Err(anyhow::anyhow!("not ready after 600 s"));
        }
        let ready = http
            .get(&ready_url)
            .send()
            .await
            .is_ok_and(|response| response.status().is_success());
        if ready {
            let restore = spawned.elapsed();
            let peak = status_bytes(child.pid(), "VmHWM")?;
            break Ok((restore, peak));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.terminate();
    tokio::task::spawn_blocking(move || child.wait()).await??;
    let _ = stack
        .clickhouse
        .query(&format!("DROP DATABASE IF EXISTS {name}"))
        .await;
    outcome
}

/// Pre-fills the three topics and measures each binary on each (module docs). Topics are
/// deleted at the end.
pub async fn run(
    stack: &Stack,
    history: History,
    binaries: &[(String, PathBuf)],
    log_dir: &Path,
) -> Result<Vec<RestoreRun>> {
    if binaries.is_empty() {
        bail!("no alerter binary to measure");
    }
    let policies_dir = log_dir.join(infra::testkit::unique_name("restore_policies"));
    std::fs::create_dir_all(&policies_dir)?;
    std::fs::write(policies_dir.join("policies.yaml"), POLICIES)?;
    let now = Utc::now();
    let run_name = infra::testkit::unique_name("qfbench-restore");
    let mut runs = Vec::new();
    let mut filled = Vec::new();
    for shape in Shape::ALL {
        let kafka = topics(
            stack,
            &format!("{run_name}.{}", shape.name()),
            history.partitions,
        );
        let records = records(history, shape, now);
        let started = Instant::now();
        fill(&kafka, &records).await?;
        eprintln!(
            "[restore] {}: {} records on {} in {:.1} s",
            shape.name(),
            records.len(),
            kafka.topics.totals,
            started.elapsed().as_secs_f64()
        );
        filled.push((shape, kafka, records.len() as u64));
    }
    for (shape, kafka, records) in &filled {
        for (label, binary) in binaries {
            let (restore, peak) = measure(stack, binary, kafka, &policies_dir, log_dir).await?;
            eprintln!(
                "[restore] {label} on {}: ready in {:.2} s, peak RSS {:.1} MiB",
                shape.name(),
                restore.as_secs_f64(),
                peak as f64 / (1024.0 * 1024.0)
            );
            runs.push(RestoreRun {
                binary: label.clone(),
                shape: *shape,
                records: *records,
                restore,
                peak_rss_bytes: peak,
            });
        }
    }
    let prefix = format!("{run_name}.");
    let _ = infra::kafka::delete_topics_with_prefix(&stack.kafka, &prefix, &[]).await;
    Ok(runs)
}

/// The runs as a markdown table.
pub fn table(history: History, runs: &[RestoreRun]) -> String {
    let mut out = format!(
        "Restore of a month of totals: {} team scopes x 2 policies (hourly, daily) x {} days x {} \
         partitions\n\n| alerter | totals topic | records | restore (spawn to ready) | peak RSS |\n\
         |---|---|---:|---:|---:|\n",
        history.scopes, history.days, history.partitions
    );
    for run in runs {
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} s | {:.1} MiB |\n",
            run.binary,
            run.shape.name(),
            run.records,
            run.restore.as_secs_f64(),
            run.peak_rss_bytes as f64 / (1024.0 * 1024.0)
        ));
    }
    out
}
