//! Contender (b): ClickHouse's Kafka table engine plus a materialized view into a
//! SummingMergeTree (`bench/sql/kafka_engine.sql`), reading the JSON topic with a new consumer
//! group, into a new database. At least once.
//!
//! The clock runs from creating the view (the engine starts consuming when a view is attached)
//! until the `records` count of the `environment` × `month` totals (every record counts there
//! once) equals the topic's record count: every record is then in the totals table.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use schemas::UsageEvent;

use super::{measure_freshness, Contender, Outcome, Stack};
use crate::events::{marker_cutoff, KafkaEngineRow};
use crate::process;
use crate::recount::{Sums, TotalKey};
use crate::topic::TopicLayout;
use crate::totals;

/// The DDL, with `{placeholders}`.
const DDL: &str = include_str!("../../sql/kafka_engine.sql");
/// The engine stops making progress for this long: the run failed.
const STALL_DEADLINE: Duration = Duration::from_secs(120);

/// What the Kafka-engine run needs besides the stack.
pub struct KafkaEngineRun<'a> {
    /// The JSON topic.
    pub layout: &'a TopicLayout,
    /// Benchmark records in it.
    pub records: u64,
    /// The distinct-events recount.
    pub expected: &'a HashMap<TotalKey, Sums>,
    /// The every-record recount (duplicates counted each time).
    pub expected_at_least_once: &'a HashMap<TotalKey, Sums>,
    /// Freshness markers are copies of this event.
    pub template: &'a UsageEvent,
    /// How many markers.
    pub markers: usize,
}

/// The statements for `database`, reading `topic` with `consumers` consumers.
pub fn statements(database: &str, brokers: &str, topic: &str, consumers: usize) -> Vec<String> {
    let filled = DDL
        .replace("{database}", database)
        .replace("{brokers}", brokers)
        .replace("{topic}", topic)
        .replace("{group}", database)
        .replace("{consumers}", &consumers.to_string());
    filled
        .split("\n;\n")
        .map(|statement| {
            statement
                .lines()
                .filter(|line| !line.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|statement| !statement.trim().is_empty())
        .collect()
}

/// Runs the Kafka engine once. `consumers`: the engine's `num_consumers`.
pub async fn run(stack: &Stack, run: KafkaEngineRun<'_>, consumers: usize) -> Result<Outcome> {
    let name = infra::testkit::unique_name("bench7_ke");
    let statements = statements(&name, &stack.kafka.brokers, &run.layout.topic, consumers);
    let (view, tables) = statements.split_last().context("empty DDL")?;
    let result = async {
        // ClickHouse 18.16 leaves librdkafka's `auto.offset.reset` at `largest`: a new group
        // would start at the end of the topic. Its offsets are set to the beginning first.
        crate::topic::reset_group_to_earliest(&stack.kafka, &name, run.layout)?;
        for statement in tables {
            stack.clickhouse.query(statement).await?;
        }
        measure(stack, &run, &name, view).await
    }
    .await;
    // The view first: it stops the engine's consumers.
    let _ = stack
        .clickhouse
        .query(&format!("DROP TABLE IF EXISTS `{name}`.totals_view"))
        .await;
    stack
        .clickhouse
        .query(&format!("DROP DATABASE IF EXISTS `{name}`"))
        .await?;
    result
}

async fn measure(
    stack: &Stack,
    run: &KafkaEngineRun<'_>,
    name: &str,
    view: &str,
) -> Result<Outcome> {
    let server = stack.clickhouse_pid;
    let rss_before = server.and_then(|pid| {
        process::reset_peak_rss(pid).then(|| process::status_bytes(pid, "VmRSS").ok())?
    });
    let servers_before = stack.server_cpu();
    let started = Instant::now();
    stack.clickhouse.query(view).await?;

    let counted = format!(
        "SELECT sum(records) FROM `{name}`.totals WHERE scope_kind = 'environment' \
         AND window_kind = 'month' AND window_start < toDateTime({}, 'UTC')",
        marker_cutoff().timestamp()
    );
    let progress = indicatif::ProgressBar::new(run.records);
    let (mut last, mut last_change) = (0, Instant::now());
    loop {
        let records = stack.clickhouse.number(&counted).await?;
        progress.set_position(records);
        if records >= run.records {
            break;
        }
        if records != last {
            (last, last_change) = (records, Instant::now());
        } else if last_change.elapsed() > STALL_DEADLINE {
            bail!(
                "the Kafka engine counted {records} of {} records and made no progress for \
                 {STALL_DEADLINE:?}",
                run.records
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress.finish_and_clear();
    let wall = started.elapsed();
    // At least once: a consumer of the engine that restarts or is rebalanced re-reads records it
    // had counted (seen once in a 3M-record series). Wait until the count settles and report
    // the records counted more than once, instead of failing the series.
    let mut settled = stack.clickhouse.number(&counted).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = stack.clickhouse.number(&counted).await?;
        if now == settled {
            break;
        }
        settled = now;
    }
    let reread = settled.saturating_sub(run.records);
    let servers = stack.server_cpu().since(servers_before);
    let peak_rss_bytes = match (server, rss_before) {
        (Some(pid), Some(before)) => process::status_bytes(pid, "VmHWM")
            .ok()
            .map(|peak| peak.saturating_sub(before)),
        _ => None,
    };

    let read = totals::read_kafka_engine(&stack.clickhouse, name).await?;
    let comparison = totals::compare(&read, run.expected);
    let mut correctness = comparison.to_string();
    if !comparison.exact() && totals::compare(&read, run.expected_at_least_once).exact() {
        correctness.push_str("; = every-record recount (duplicates counted twice)");
    }
    if reread > 0 {
        correctness.push_str(&format!(
            "; {reread} records read twice by the engine (consumer restart or rebalance)"
        ));
    }

    let freshness = measure_freshness(
        stack,
        &run.layout.topic,
        name,
        run.markers,
        |marker| {
            let event = crate::events::marker(run.template, marker);
            let mut json = Vec::new();
            KafkaEngineRow::of(&event).write_into(&mut json)?;
            Ok((marker.to_owned(), json))
        },
        |marker| async move {
            let sql = format!(
                "SELECT count() FROM `{name}`.totals \
                 WHERE scope_kind = 'api_key_id' AND scope_key = '{marker}'"
            );
            Ok(stack.clickhouse.number(&sql).await? > 0)
        },
    )
    .await?;
    Ok(Outcome {
        contender: Contender::KafkaEngine,
        records: run.records,
        wall,
        process_cpu: None,
        servers,
        peak_rss_bytes,
        freshness,
        correctness: Some(correctness),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_splits_into_four_statements_with_placeholders_filled() {
        let statements = statements("db", "127.0.0.1:9092", "topic", 2);
        assert_eq!(statements.len(), 4);
        assert!(statements.iter().all(|statement| !statement.contains('{')));
        assert!(statements[3].starts_with("CREATE MATERIALIZED VIEW `db`.totals_view"));
    }
}
