//! Contender (a): this pipeline's aggregator, the release binary `quotaflow-aggregator`, on the
//! Avro topic with a new consumer group, ClickHouse database and output topics, and the example
//! policies (`policy/examples`). Exactly once: partials and checkpoints in ClickHouse,
//! duplicate event ids filtered.
//!
//! The clock runs from spawning the process (start-up, migrations and the group join included)
//! until every partition's checkpoint in ClickHouse has reached the topic's end offset: every
//! record is then counted in `window_partials` and checkpointed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use schemas::UsageEvent;

use super::{measure_freshness, Contender, Outcome, Stack};
use crate::process::MeasuredChild;
use crate::recount::{Sums, TotalKey};
use crate::topic::TopicLayout;
use crate::totals;

/// Where the example policies are (the aggregator also computes their scopes).
fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/examples")
}

/// What the aggregator run needs besides the stack.
pub struct AggregatorRun<'a> {
    /// The `quotaflow-aggregator` executable.
    pub binary: &'a Path,
    /// The Avro topic.
    pub layout: &'a TopicLayout,
    /// Benchmark records in it.
    pub records: u64,
    /// The distinct-events recount.
    pub expected: &'a HashMap<TotalKey, Sums>,
    /// Freshness markers are copies of this event.
    pub template: &'a UsageEvent,
    /// How many markers.
    pub markers: usize,
    /// Log files go here.
    pub log_dir: &'a Path,
}

/// Runs the aggregator once.
pub async fn run(stack: &Stack, run: AggregatorRun<'_>) -> Result<Outcome> {
    let name = infra::testkit::unique_name("bench7_ours");
    let log = run.log_dir.join(format!("{name}.log"));
    let output_topics: Vec<String> = ["totals", "deadletter", "control", "alerts", "approvals"]
        .iter()
        .map(|topic| format!("{name}.{topic}"))
        .collect();
    let mut command = command(
        stack,
        run.binary,
        &run.layout.topic,
        run.layout.partitions.len(),
        &name,
        &output_topics,
        &policies_dir(),
        &log,
    )?;

    let servers_before = stack.server_cpu();
    let spawned = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", run.binary.display()))?;
    let child = MeasuredChild::new(child, spawned);
    let result = measure(stack, &run, &name, &child, spawned, servers_before).await;
    child.terminate();
    let usage = tokio::task::spawn_blocking(move || child.wait()).await??;
    let cleanup = async {
        stack
            .clickhouse
            .query(&format!("DROP DATABASE IF EXISTS `{name}`"))
            .await?;
        crate::topic::delete(&stack.kafka, &output_topics).await
    };
    let (mut outcome, freshness) = result.with_context(|| format!("see {}", log.display()))?;
    cleanup.await?;
    if !usage.success {
        bail!("the aggregator failed; see {}", log.display());
    }
    outcome.process_cpu = Some(usage.cpu);
    outcome.peak_rss_bytes = Some(usage.max_rss_bytes);
    outcome.freshness = freshness;
    Ok(outcome)
}

/// The `quotaflow-aggregator` command reading `usage_topic` (`partitions` partitions) into
/// database and group `name` and the five `output_topics` (totals, dead letters, control,
/// alerts, approvals), with the policies of `policies_dir`, logging to `log`; no inherited
/// `QUOTAFLOW_*` variables. Add settings with more `env` calls.
#[allow(clippy::too_many_arguments)]
pub fn command(
    stack: &Stack,
    binary: &Path,
    usage_topic: &str,
    partitions: usize,
    name: &str,
    output_topics: &[String],
    policies_dir: &Path,
    log: &Path,
) -> Result<Command> {
    let mut command = Command::new(binary);
    for (key, _) in std::env::vars() {
        if key.starts_with(infra::config::ENV_PREFIX) {
            command.env_remove(key);
        }
    }
    command
        // The service reads its filter from `QUOTAFLOW_LOG`; `BENCH_AGGREGATOR_LOG` overrides it
        // (e.g. `warn,aggregator::pipeline=debug` for flush times).
        .env(
            "QUOTAFLOW_LOG",
            std::env::var("BENCH_AGGREGATOR_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .env("QUOTAFLOW_KAFKA__BROKERS", &stack.kafka.brokers)
        .env("QUOTAFLOW_KAFKA__TOPICS__USAGE", usage_topic)
        .env("QUOTAFLOW_KAFKA__TOPICS__TOTALS", &output_topics[0])
        .env("QUOTAFLOW_KAFKA__TOPICS__DEAD_LETTER", &output_topics[1])
        .env("QUOTAFLOW_KAFKA__TOPICS__CONTROL", &output_topics[2])
        .env("QUOTAFLOW_KAFKA__TOPICS__ALERTS", &output_topics[3])
        .env("QUOTAFLOW_KAFKA__TOPICS__APPROVALS", &output_topics[4])
        .env(
            "QUOTAFLOW_KAFKA__TOPICS__PARTITIONS",
            partitions.to_string(),
        )
        .env("QUOTAFLOW_CLICKHOUSE__URL", &stack.clickhouse_url)
        .env("QUOTAFLOW_CLICKHOUSE__DATABASE", name)
        .env("QUOTAFLOW_GROUP_ID", name)
        .env("QUOTAFLOW_AGGREGATE__POLICIES_DIR", policies_dir)
        // The mix happened months before the topic was written (`events::event_time_start`);
        // admission judges age at the Kafka timestamp, so admit it whatever its age.
        .env(
            "QUOTAFLOW_VALIDATION__MAX_PAST_AGE",
            (10 * 365 * 24 * 3600).to_string(),
        )
        .env("QUOTAFLOW_HTTP__LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log)?)
        .stderr(std::fs::File::create(log.with_extension("err.log"))?);
    Ok(command)
}

/// Waits until every partition's checkpoint of the aggregator run `name` in ClickHouse has
/// reached `layout`'s end offset (every record counted in `window_partials` and checkpointed).
pub async fn wait_checkpointed(
    stack: &Stack,
    name: &str,
    layout: &TopicLayout,
    child: &MeasuredChild,
    spawned: Instant,
) -> Result<()> {
    let checkpoints = format!(
        "SELECT partition, next_offset FROM `{name}`.aggregator_checkpoints FINAL \
         WHERE consumer_group = '{name}' FORMAT TSV"
    );
    let progress = indicatif::ProgressBar::new(layout.records());
    loop {
        if child.has_exited() {
            bail!("the aggregator stopped before catching up");
        }
        // Until the migrations ran, the table does not exist: not caught up yet.
        let rows = stack
            .clickhouse
            .rows(&checkpoints)
            .await
            .unwrap_or_default();
        let next_offset = |partition: i32| {
            rows.iter()
                .filter(|row| row[0].parse::<i32>().ok() == Some(partition))
                .filter_map(|row| row[1].parse::<i64>().ok())
                .max()
                .unwrap_or(0)
        };
        let done: i64 = layout.partitions.iter().map(|p| next_offset(p.id)).sum();
        progress.set_position(done as u64);
        if layout
            .partitions
            .iter()
            .all(|partition| next_offset(partition.id) >= partition.high)
        {
            break;
        }
        if spawned.elapsed() > Duration::from_secs(3600) {
            bail!("the aggregator did not catch up within an hour");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress.finish_and_clear();
    Ok(())
}

async fn measure(
    stack: &Stack,
    run: &AggregatorRun<'_>,
    name: &str,
    child: &MeasuredChild,
    spawned: Instant,
    servers_before: super::ServerCpu,
) -> Result<(Outcome, Option<Duration>)> {
    wait_checkpointed(stack, name, run.layout, child, spawned).await?;
    let wall = spawned.elapsed();
    let servers = stack.server_cpu().since(servers_before);

    let read = totals::read_aggregator(&stack.clickhouse, name).await?;
    let comparison = totals::compare(&read, run.expected);

    let freshness = measure_freshness(
        stack,
        &run.layout.topic,
        name,
        run.markers,
        |marker| {
            let event = crate::events::marker(run.template, marker);
            Ok((marker.to_owned(), schemas::encode(&event)?))
        },
        |marker| async move {
            let sql = format!(
                "SELECT count() FROM `{name}`.window_partials \
                 WHERE scope_kind = 'api_key_id' AND scope_key = '{marker}'"
            );
            Ok(stack.clickhouse.number(&sql).await? > 0)
        },
    )
    .await?;
    Ok((
        Outcome {
            contender: Contender::Aggregator,
            records: run.records,
            wall,
            process_cpu: None,
            servers,
            peak_rss_bytes: None,
            freshness: None,
            correctness: Some(comparison.to_string()),
        },
        freshness,
    ))
}
