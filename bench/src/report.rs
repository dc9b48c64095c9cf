//! The results table: per (records, partitions) and contender, the median over runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::contenders::{Contender, Outcome};

/// Every run's outcomes of one configuration.
#[derive(Debug, Clone)]
pub struct ConfigResults {
    /// Benchmark records per topic.
    pub records: u64,
    /// Partitions per topic.
    pub partitions: i32,
    /// Outcomes, every run.
    pub outcomes: Vec<Outcome>,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    })
}

fn per_million(cpu: Duration, records: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / records as f64
}

/// The markdown table of `results`.
pub fn table(results: &[ConfigResults]) -> String {
    let mut out = String::new();
    out.push_str(
        "| records | partitions | contender | runs | events/s | × rdkafka raw | × kcat | \
         CPU s / M events: own process | ClickHouse server | Kafka broker | peak RSS MiB | \
         freshness p50 | correctness vs recount of distinct events |\n",
    );
    out.push_str("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for config in results {
        let mut by_contender: BTreeMap<Contender, Vec<&Outcome>> = BTreeMap::new();
        for outcome in &config.outcomes {
            by_contender
                .entry(outcome.contender)
                .or_default()
                .push(outcome);
        }
        let rate = |contender: Contender| {
            by_contender.get(&contender).and_then(|outcomes| {
                median(outcomes.iter().map(|o| o.events_per_second()).collect())
            })
        };
        let raw = rate(Contender::RawRdkafka);
        let kcat = rate(Contender::KcatAvro);
        for (contender, outcomes) in &by_contender {
            let events_per_second = rate(*contender).unwrap_or(f64::NAN);
            let ratio = |base: Option<f64>| {
                base.map_or("–".to_owned(), |base| {
                    format!("{:.2}", events_per_second / base)
                })
            };
            let cpu = |pick: &dyn Fn(&Outcome) -> Option<Duration>| {
                median(
                    outcomes
                        .iter()
                        .filter_map(|o| pick(o).map(|cpu| per_million(cpu, o.records)))
                        .collect(),
                )
                .map_or("–".to_owned(), |value| format!("{value:.2}"))
            };
            let rss = median(
                outcomes
                    .iter()
                    .filter_map(|o| o.peak_rss_bytes)
                    .map(|bytes| bytes as f64 / 1_048_576.0)
                    .collect(),
            )
            .map_or("–".to_owned(), |mib| {
                if *contender == Contender::KafkaEngine {
                    format!("+{mib:.0} (server)")
                } else {
                    format!("{mib:.0}")
                }
            });
            let freshness = median(
                outcomes
                    .iter()
                    .filter_map(|o| o.freshness)
                    .map(|d| d.as_secs_f64())
                    .collect(),
            )
            .map_or("–".to_owned(), |seconds| {
                format!("{:.0} ms", seconds * 1e3)
            });
            let mut verdicts: Vec<&str> = outcomes
                .iter()
                .filter_map(|o| o.correctness.as_deref())
                .collect();
            verdicts.dedup();
            let correctness = if verdicts.is_empty() {
                "– (no totals)".to_owned()
            } else {
                verdicts.join(" / ")
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                config.records,
                config.partitions,
                contender.label(),
                outcomes.len(),
                events_per_second,
                ratio(raw),
                ratio(kcat),
                cpu(&|o| o.process_cpu),
                cpu(&|o| Some(o.servers.clickhouse)),
                cpu(&|o| Some(o.servers.broker)),
                rss,
                freshness,
                correctness
            );
        }
    }
    out
}

/// One line per outcome: the raw figures behind the medians.
pub fn run_line(records: u64, partitions: i32, run: usize, outcome: &Outcome) -> String {
    format!(
        "run {run} · {records} records · {partitions} partitions · {}: {:.0} events/s in {:.2} s, \
         own CPU {}, ClickHouse CPU {:.2} s, broker CPU {:.2} s, peak RSS {}, freshness {}, {}",
        outcome.contender.label(),
        outcome.events_per_second(),
        outcome.wall.as_secs_f64(),
        outcome.process_cpu.map_or("–".to_owned(), |cpu| format!(
            "{:.2} s",
            cpu.as_secs_f64()
        )),
        outcome.servers.clickhouse.as_secs_f64(),
        outcome.servers.broker.as_secs_f64(),
        outcome
            .peak_rss_bytes
            .map_or("–".to_owned(), |bytes| format!(
                "{:.0} MiB",
                bytes as f64 / 1_048_576.0
            )),
        outcome.freshness.map_or("–".to_owned(), |d| format!(
            "{:.0} ms",
            d.as_secs_f64() * 1e3
        )),
        outcome.correctness.as_deref().unwrap_or("no totals"),
    )
}
