//! `bench`: runs every contender over the same pre-filled events and prints the table
//! (`docs/benchmarks.md`, "Against ClickHouse's Kafka engine"). Use `bench/run`, which builds the
//! release binaries, checks the stack and installs `kcat`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use quotaflow_bench::cardinality;
use quotaflow_bench::contenders::aggregator::AggregatorRun;
use quotaflow_bench::contenders::kafka_engine::KafkaEngineRun;
use quotaflow_bench::contenders::{self, Contender, Stack};
use quotaflow_bench::prefill::{self, Fill};
use quotaflow_bench::report::{self, ConfigResults};
use quotaflow_bench::topic::{self, TopicLayout};

/// Benchmarks the aggregator against ClickHouse's Kafka engine and raw consumers.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Records per topic, comma-separated sizes (duplicates included).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000_000])]
    events: Vec<u64>,
    /// Partition counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4])]
    partitions: Vec<i32>,
    /// Runs per configuration (the table shows medians).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Share of records that repeat an earlier event id (0 to 1).
    #[arg(long, default_value_t = 0.01)]
    duplicate_share: f64,
    /// Freshness markers per contender run.
    #[arg(long, default_value_t = 3)]
    markers: usize,
    /// Which contenders, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [Which::Kcat, Which::Raw, Which::Aggregator, Which::KafkaEngine])]
    contenders: Vec<Which>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "QUOTAFLOW_BENCH_KAFKA", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// ClickHouse HTTP URL.
    #[arg(
        long,
        env = "QUOTAFLOW_BENCH_CLICKHOUSE",
        default_value = "http://127.0.0.1:8123"
    )]
    clickhouse: String,
    /// The `quotaflow-aggregator` executable; default: next to this one.
    #[arg(long)]
    aggregator_bin: Option<PathBuf>,
    /// Benchmark topics are `<prefix>-avro-<records>-p<partitions>` and `…-json-…`.
    #[arg(long, default_value = "qfbench")]
    topic_prefix: String,
    /// Delete the benchmark topics at the end (otherwise they are reused by the next run).
    #[arg(long)]
    drop_topics: bool,
    /// Also write the table (markdown) to this file.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Issue 13 point 7: peak RSS of the aggregator over one event per distinct `user_id`, per
    /// `aggregate.max_scopes_per_kind` (0 = no limit); docs/benchmarks.md, "Memory under a
    /// million distinct user ids".
    Cardinality {
        /// Distinct `user_id`s (one event each).
        #[arg(long, default_value_t = 1_000_000)]
        users: u64,
        /// Limits to run with, comma-separated (0 = no limit).
        #[arg(long, value_delimiter = ',', default_values_t = [10_000, 0])]
        limits: Vec<u64>,
        /// Partitions of the topic.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
    },
    /// The restore benchmark (issue 13 point 6, docs/benchmarks.md "Restore"): a month of
    /// totals history, then the alerter's restore time and peak RSS on it.
    Restore {
        /// Team scopes per policy.
        #[arg(long, default_value_t = 200)]
        scopes: usize,
        /// Days of history.
        #[arg(long, default_value_t = 30)]
        days: i64,
        /// Input partitions (a partial per scope, window and partition).
        #[arg(long, default_value_t = 2)]
        partitions: i32,
        /// The `quotaflow-alerter` executable to measure; default: next to this one.
        #[arg(long)]
        alerter_bin: Option<PathBuf>,
        /// Another alerter build to measure on the same topics (e.g. the code before the
        /// change), labelled `before`.
        #[arg(long)]
        before_bin: Option<PathBuf>,
    },
    /// Internal: the do-nothing rdkafka consumer, run as a child process.
    #[command(hide = true)]
    RawConsume {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        topic: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    /// kcat on the Avro topic and on the JSON topic.
    Kcat,
    /// The do-nothing rdkafka consumer.
    Raw,
    /// This pipeline's aggregator.
    Aggregator,
    /// ClickHouse's Kafka engine.
    KafkaEngine,
}

impl std::fmt::Display for Which {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = self.to_possible_value().expect("no skipped variants");
        f.write_str(value.get_name())
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(Command::RawConsume { brokers, topic }) = &args.command {
        return contenders::raw::consume(brokers, topic);
    }
    if let Some(Command::Cardinality {
        users,
        limits,
        partitions,
    }) = &args.command
    {
        let (users, limits, partitions) = (*users, limits.clone(), *partitions);
        return tokio::runtime::Runtime::new()?
            .block_on(cardinality_bench(args, users, limits, partitions));
    }
    if let Some(Command::Restore {
        scopes,
        days,
        partitions,
        alerter_bin,
        before_bin,
    }) = &args.command
    {
        let history = quotaflow_bench::restore::History {
            scopes: *scopes,
            days: *days,
            partitions: *partitions,
        };
        let mut binaries = Vec::new();
        if let Some(before) = before_bin {
            binaries.push(("before".to_owned(), before.clone()));
        }
        let this = std::env::current_exe()?;
        binaries.push((
            "this build".to_owned(),
            alerter_bin
                .clone()
                .unwrap_or_else(|| this.with_file_name("quotaflow-alerter")),
        ));
        return tokio::runtime::Runtime::new()?.block_on(async {
            let stack = Stack::new(&args.brokers, &args.clickhouse);
            let log_dir = std::env::temp_dir().join("quotaflow-bench");
            std::fs::create_dir_all(&log_dir)?;
            let runs = quotaflow_bench::restore::run(&stack, history, &binaries, &log_dir).await?;
            let table = quotaflow_bench::restore::table(history, &runs);
            println!("{table}");
            if let Some(output) = &args.output {
                std::fs::write(output, &table)?;
            }
            Ok(())
        });
    }
    tokio::runtime::Runtime::new()?.block_on(bench(args))
}

/// The cardinality benchmark (see [`quotaflow_bench::cardinality`]).
async fn cardinality_bench(
    args: Args,
    users: u64,
    limits: Vec<u64>,
    partitions: i32,
) -> Result<()> {
    let stack = Stack::new(&args.brokers, &args.clickhouse);
    let aggregator_bin = args.aggregator_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .unwrap_or_default()
            .with_file_name("quotaflow-aggregator")
    });
    let log_dir = std::env::temp_dir().join("quotaflow-bench");
    std::fs::create_dir_all(&log_dir)?;
    let topic = format!("{}-card-{users}-p{partitions}", args.topic_prefix);
    let layout = cardinality::prefill(&stack, &topic, users, partitions).await?;
    let mut outcomes = Vec::new();
    for limit in limits {
        let outcome = cardinality::run(&stack, &aggregator_bin, &layout, limit, &log_dir).await?;
        println!("{outcome:?}");
        outcomes.push(outcome);
    }
    let table = cardinality::table(&outcomes);
    println!("\n## Memory under {users} distinct user ids\n\n{table}");
    if let Some(path) = &args.output {
        std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.drop_topics {
        topic::delete(&stack.kafka, std::slice::from_ref(&topic)).await?;
    }
    Ok(())
}

// Long by design: the benchmark is one sequential script (fill, then each contender in turn,
// then the report), read top to bottom as the procedure docs/benchmarks.md describes.
async fn bench(args: Args) -> Result<()> {
    let stack = Stack::new(&args.brokers, &args.clickhouse);
    let this = std::env::current_exe()?;
    let aggregator_bin = args
        .aggregator_bin
        .clone()
        .unwrap_or_else(|| this.with_file_name("quotaflow-aggregator"));
    let wants = |which: Which| args.contenders.contains(&which);
    let log_dir = std::env::temp_dir().join("quotaflow-bench");
    std::fs::create_dir_all(&log_dir)?;
    print_machine(&stack).await;

    let mut results = Vec::new();
    let mut topics = Vec::new();
    for &records in &args.events {
        let mut recount = None;
        let mut configs = Vec::new();
        for &partitions in &args.partitions {
            let avro_topic = format!("{}-avro-{records}-p{partitions}", args.topic_prefix);
            let json_topic = format!("{}-json-{records}-p{partitions}", args.topic_prefix);
            let filled = prefill::prefill(
                &stack.kafka,
                &Fill {
                    records,
                    partitions,
                    duplicate_share: args.duplicate_share,
                    avro_topic: avro_topic.clone(),
                    json_topic: Some(json_topic.clone()),
                    recount: recount.is_none(),
                },
            )
            .await?;
            println!(
                "{records} records in {partitions} partitions: {avro_topic} (Avro, {:.0} B/record), \
                 {json_topic} (JSON, {:.0} B/record)",
                filled.avro_bytes_per_record, filled.json_bytes_per_record
            );
            if let Some(counted) = filled.recount {
                println!(
                    "recount: {} records, {} duplicates ({:.2} %)",
                    counted.records,
                    counted.duplicates,
                    counted.duplicates as f64 * 100.0 / counted.records.max(1) as f64
                );
                recount = Some(counted);
            }
            topics.push(avro_topic.clone());
            topics.push(json_topic.clone());
            configs.push((partitions, avro_topic, json_topic, filled.first_event));
        }
        let recount = recount.context("no partition counts given")?;
        let expected = recount.distinct_totals();
        let expected_at_least_once = recount.all_record_totals();
        println!("{} (scope, window) totals to compare\n", expected.len());

        let mut outcomes: Vec<Vec<contenders::Outcome>> = vec![Vec::new(); configs.len()];
        for run in 1..=args.runs {
            for ((partitions, avro_topic, json_topic, template), outcomes) in
                configs.iter().zip(&mut outcomes)
            {
                let avro = fetch(&stack, avro_topic)?;
                let json = fetch(&stack, json_topic)?;
                let mut push = |outcome: contenders::Outcome| {
                    println!("{}", report::run_line(records, *partitions, run, &outcome));
                    outcomes.push(outcome);
                };
                if wants(Which::Kcat) {
                    push(
                        contenders::kcat::run(&stack, Contender::KcatAvro, avro_topic, records)
                            .await?,
                    );
                }
                if wants(Which::Raw) {
                    push(contenders::raw::run(&stack, &this, &avro, records).await?);
                }
                if wants(Which::Aggregator) {
                    let run = AggregatorRun {
                        binary: &aggregator_bin,
                        layout: &avro,
                        records,
                        expected: &expected,
                        template,
                        markers: args.markers,
                        log_dir: &log_dir,
                    };
                    push(contenders::aggregator::run(&stack, run).await?);
                }
                if wants(Which::Kcat) {
                    push(
                        contenders::kcat::run(&stack, Contender::KcatJson, json_topic, records)
                            .await?,
                    );
                }
                if wants(Which::KafkaEngine) {
                    let run = KafkaEngineRun {
                        layout: &json,
                        records,
                        expected: &expected,
                        expected_at_least_once: &expected_at_least_once,
                        template,
                        markers: args.markers,
                    };
                    // One consumer per partition, at most one per core.
                    let consumers = json.partitions.len().min(cores()).max(1);
                    push(contenders::kafka_engine::run(&stack, run, consumers).await?);
                }
            }
        }
        for ((partitions, ..), outcomes) in configs.iter().zip(outcomes) {
            results.push(ConfigResults {
                records,
                partitions: *partitions,
                outcomes,
            });
        }
        println!("\n{}", report::table(&results));
    }

    let table = report::table(&results);
    println!("\n## Results (medians)\n\n{table}");
    if let Some(path) = &args.output {
        std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.drop_topics {
        topic::delete(&stack.kafka, &topics).await?;
        println!("deleted {}", topics.join(", "));
    }
    Ok(())
}

fn fetch(stack: &Stack, name: &str) -> Result<TopicLayout> {
    TopicLayout::fetch(&stack.kafka, name)?.with_context(|| format!("topic {name} vanished"))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The machine and versions, for the report.
async fn print_machine(stack: &Stack) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|line| {
                line.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
        })
        .unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| info.lines().next().map(str::to_owned))
        .unwrap_or_default();
    let clickhouse = stack
        .clickhouse
        .query("SELECT version()")
        .await
        .map(|version| version.trim().to_owned())
        .unwrap_or_else(|error| format!("unreachable: {error}"));
    let kcat = std::process::Command::new("kcat")
        .arg("-V")
        .output()
        .ok()
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .find(|line| line.contains("Version"))
                .map(|line| line.trim().to_owned())
        })
        .unwrap_or_else(|| "not installed".to_owned());
    println!(
        "machine: {} cores, {cpu}, {memory}\nClickHouse {clickhouse} (pid {:?}), Kafka broker pid {:?}, kcat: {kcat}\n",
        cores(),
        stack.clickhouse_pid,
        stack.broker_pid
    );
}
