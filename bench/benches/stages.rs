//! Aggregator throughput per stage on a pre-filled topic, on the local Kafka (and, for the full
//! pipeline, ClickHouse), and memory per active (scope, window) total.
//!
//! Each stage reads every record of the topic once with a fresh consumer (a new group, from the
//! earliest offset, no commits) and does one more step than the previous one:
//!
//! 1. **raw consume**: an rdkafka consumer that does nothing with the records (the ceiling);
//! 2. **+ decode**: `schemas::decode::<UsageEvent>`;
//! 3. **+ aggregate**: one [`PartitionAggregator`] per partition with the example policies
//!    (`policy/examples`), exactly the service's per-record work (decode, future-skew check,
//!    duplicate filter, totals); every 100,000 records every partition's flush is taken (the rows,
//!    dead letters and checkpoint a flush would write) and its closed windows evicted;
//! 4. **+ ClickHouse flush and offset store**: the real service, [`stage_full`]: it also writes
//!    every flush to ClickHouse (partials, checkpoints) and publishes the totals topic.
//!
//! Memory, measured around stage 3 (the states are alive, the consumer is gone): the live heap
//! the states hold (a per-thread counting allocator; exact), the growth of RSS after returning
//! free memory to the system (adds allocator fragmentation; noisy when the state is a few MiB),
//! and `TotalsState::approximate_bytes`, each divided by the active totals at the end; plus the
//! stage's peak RSS, librdkafka's prefetch queues included.
//!
//! The clock runs from the first record to the last, so group joins and connection set-up are
//! not counted. Targets (issue): full pipeline ≥ 0.35 × raw consume and ≥ 100k events/s on 2
//! cores; ≤ 1 KiB per active (scope, window).
//!
//! The topic, `bench-usage-<events>` with the configured partition count, is filled once with the
//! demo's workload (`demo::workload`, seed 42), priced by ingest's pricer, Avro single-object
//! encoded and keyed by `schemas::usage_event::partition_key` (`quotaflow_bench::prefill`, shared
//! with the side-by-side benchmark `bench/run`, no duplicates here); a later run reuses it, and a
//! topic holding another count is refilled. Event time starts at 2026-03-09T08:00Z and advances 1 ms per
//! event (10 M events span 2 h 47 min) with up to 2 s of jitter backwards, so minute and hour
//! windows open and close, and no event is late. The demo fleet is small (4 teams, 7 keys, 39
//! users, 7 customers: about 400 scopes), so the states hold a few thousand totals;
//! `benches/state.rs` measures bytes per total on a wider one.
//!
//! ```sh
//! cargo bench -p quotaflow-bench --bench stages -- --events 200000     # quick
//! cargo bench -p quotaflow-bench --bench stages -- --events 10000000   # the issue's figure
//! ```
//!
//! Kafka and ClickHouse come from the aggregator config (`--config`, else defaults and
//! `QUOTAFLOW_*` variables); `--kafka-property key=value` adds a librdkafka property to every
//! client. Results go to stdout as a markdown table.
//!
//! Consumers use `infra::kafka::consumer_config`, the aggregator's settings. Note librdkafka's
//! `fetch.queue.backoff.ms` (default 1000): when a consumer's prefetch queue is full, the next
//! fetch of that partition waits that long, so a consumer slower than the broker stalls for up to
//! a second each time its queue drains (on 10 M events: raw consume 0.72 M/s and decode 0.14 M/s
//! with the default, 1.25 M/s and 0.42 M/s with `--kafka-property fetch.queue.backoff.ms=50`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aggregator::partition::Outcome;
use aggregator::partition::{PartitionAggregator, PartitionSettings};
use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::ProgressBar;
use infra::config::KafkaConfig;
use policy::PolicySet;
use quotaflow_bench::prefill::{self, Fill};
use quotaflow_bench::topic::{consume_all, Measured, TopicLayout};
use rdkafka::message::{BorrowedMessage, Message};
use schemas::UsageEvent;
use tokio::runtime::Runtime;

/// Runs the stage benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// Records in the benchmark topic (filled once, then reused).
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Aggregator config file for Kafka and ClickHouse; defaults and `QUOTAFLOW_*` otherwise.
    #[arg(long)]
    config: Option<PathBuf>,
    /// An extra librdkafka property `key=value` for every client (repeatable), added to the
    /// config's `kafka.properties`, e.g. `fetch.queue.backoff.ms=50`.
    #[arg(long = "kafka-property", value_parser = parse_property)]
    kafka_properties: Vec<(String, String)>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Counts the heap bytes each thread holds live, to measure exactly what the totals states hold
/// (RSS also counts allocator fragmentation and free memory not yet returned). Per thread and not
/// atomic, so it costs next to nothing: the stages allocate and free on the main thread, and
/// librdkafka's threads use `malloc` directly. A stage 3 that keeps its state on other threads
/// must count there too.
struct ThreadHeapCounter;

#[global_allocator]
static ALLOCATOR: ThreadHeapCounter = ThreadHeapCounter;

thread_local! {
    /// Bytes allocated minus bytes freed on this thread through [`ThreadHeapCounter`].
    static THREAD_HEAP_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn count_heap(delta: isize) {
    // `try_with`: a thread being torn down may still free memory.
    let _ = THREAD_HEAP_BYTES.try_with(|bytes| bytes.set(bytes.get() + delta));
}

/// Live heap bytes allocated by the calling thread.
fn thread_heap_bytes() -> isize {
    THREAD_HEAP_BYTES.with(Cell::get)
}

unsafe impl GlobalAlloc for ThreadHeapCounter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_heap(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_heap(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_heap(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(pointer, layout, new_size) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        count_heap(-(layout.size() as isize));
        unsafe { System.dealloc(pointer, layout) }
    }
}

/// Stage 3 drains and evicts every this many records: about the batch a flush writes.
const EVICT_EVERY: u64 = 100_000;
fn main() -> Result<()> {
    let args = Args::parse();
    let mut config: aggregator::Config =
        infra::config::load(args.config.as_deref()).context("loading the aggregator config")?;
    config.kafka.topics.usage = format!("bench-usage-{}", args.events);
    config.kafka.properties.extend(args.kafka_properties);
    let runtime = Runtime::new()?;

    runtime.block_on(prefill::prefill(
        &config.kafka,
        &Fill {
            records: args.events,
            partitions: config.kafka.topics.partitions,
            duplicate_share: 0.0,
            avro_topic: config.kafka.topics.usage.clone(),
            json_topic: None,
            recount: false,
        },
    ))?;
    let layout = TopicLayout::fetch(&config.kafka, &config.kafka.topics.usage)?
        .context("the benchmark topic vanished")?;
    println!(
        "topic {}: {} records in {} partitions\n",
        layout.topic,
        layout.records(),
        layout.partitions.len()
    );

    let raw = stage_raw(&config.kafka, &layout)?;
    let decode = stage_decode(&config.kafka, &layout)?;
    let aggregate = stage_aggregate(&config.kafka, &layout)?;
    let full = stage_full(&runtime, &config, &layout)?;
    print_table(&[
        ("raw consume", Some(raw)),
        ("+ decode", Some(decode)),
        ("+ aggregate", Some(aggregate)),
        ("+ ClickHouse flush and offset store", full),
    ]);
    Ok(())
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
        None => Err(format!("expected key=value, got {text:?}")),
    }
}

/// Stage 1: records are read and dropped.
fn stage_raw(kafka: &KafkaConfig, layout: &TopicLayout) -> Result<Measured> {
    let mut bytes = 0u64;
    let measured = consume_all(kafka, layout, "raw", |message| {
        bytes += message.payload().map_or(0, <[u8]>::len) as u64;
        Ok(())
    })?;
    println!(
        "raw consume: {:.0} events/s, {:.1} MB/s of payload",
        measured.events_per_second(),
        bytes as f64 / 1e6 / measured.elapsed.as_secs_f64()
    );
    Ok(measured)
}

/// Stage 2: every record is decoded into a [`UsageEvent`] and dropped.
fn stage_decode(kafka: &KafkaConfig, layout: &TopicLayout) -> Result<Measured> {
    let measured = consume_all(kafka, layout, "decode", |message| {
        black_box(decode(message)?);
        Ok(())
    })?;
    println!("+ decode: {:.0} events/s", measured.events_per_second());
    Ok(measured)
}

fn decode(message: &BorrowedMessage<'_>) -> Result<UsageEvent> {
    let payload = message.payload().unwrap_or_default();
    schemas::decode::<UsageEvent>(payload).with_context(|| {
        format!(
            "decoding partition {} offset {}",
            message.partition(),
            message.offset()
        )
    })
}

/// Stage 3: decoded events are aggregated per partition; see [`Aggregation::record`].
fn stage_aggregate(kafka: &KafkaConfig, layout: &TopicLayout) -> Result<Measured> {
    let policies_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../policy/examples");
    let policies = PolicySet::load_dir(policies_dir)
        .with_context(|| format!("loading the policies in {policies_dir}"))?;
    reset_peak_rss();
    let rss_before = trimmed_rss_kib()?;
    let heap_before = thread_heap_bytes();
    let mut aggregation = Aggregation::new(&policies, layout)?;
    let measured = consume_all(kafka, layout, "aggregate", |message| {
        aggregation.record(message)
    })?;
    aggregation.checkpoint();
    // The consumer is gone; what the heap still holds beyond the start is the states.
    let heap_growth = thread_heap_bytes().saturating_sub(heap_before) as u64;
    let rss_growth = trimmed_rss_kib()?.saturating_sub(rss_before) * 1024;
    let peak_rss = proc_status_kib("VmHWM")? * 1024;

    let active = aggregation.active_windows();
    let approximate: usize = aggregation
        .states
        .iter()
        .map(|state| state.state().approximate_bytes())
        .sum();
    // The duplicate filters hold ids for the dedup horizon (event rate × horizon), not per total:
    // reported on their own and left out of the per-total figures.
    let dedup_bytes: usize = aggregation
        .states
        .iter()
        .map(PartitionAggregator::dedup_bytes)
        .sum();
    let dedup_ids: usize = aggregation
        .states
        .iter()
        .map(PartitionAggregator::dedup_len)
        .sum();
    let heap_growth = heap_growth.saturating_sub(dedup_bytes as u64);
    let rss_growth = rss_growth.saturating_sub(dedup_bytes as u64);
    let scopes: usize = aggregation
        .states
        .iter()
        .map(|state| state.state().scope_count())
        .sum();
    let per_window = |bytes: u64, windows: usize| bytes / windows.max(1) as u64;
    println!("+ aggregate: {:.0} events/s", measured.events_per_second());
    println!(
        "  totals drained (rows a flush would write): {}; windows late: {}",
        aggregation.totals_drained, aggregation.windows_late
    );
    println!(
        "  active (scope, window) totals at the end: {active} in {scopes} scopes \
         (peak {} before an eviction)",
        aggregation.peak_active_windows
    );
    println!(
        "  approximate_bytes / active: {} B",
        per_window(approximate as u64, active)
    );
    println!(
        "  duplicate filters: {dedup_ids} ids, about {:.1} MiB ({} B per id), left out below",
        dedup_bytes as f64 / 1_048_576.0,
        per_window(dedup_bytes as u64, dedup_ids)
    );
    println!(
        "  live heap of the states: {:.1} MiB = {} B per active total",
        heap_growth as f64 / 1_048_576.0,
        per_window(heap_growth, active)
    );
    println!(
        "  RSS growth during the stage (allocator fragmentation included): {:.1} MiB = {} B per active total at the end, \
         {} B per peak total",
        rss_growth as f64 / 1_048_576.0,
        per_window(rss_growth, active),
        per_window(rss_growth, aggregation.peak_active_windows)
    );
    println!(
        "  peak RSS during the stage (VmHWM): {:.1} MiB\n",
        peak_rss as f64 / 1_048_576.0
    );
    Ok(measured)
}

/// Stage 3's state: a [`PartitionAggregator`] per partition, as the aggregator keeps them.
struct Aggregation {
    /// Indexed by partition id.
    states: Vec<PartitionAggregator>,
    /// Records since the last [`Aggregation::checkpoint`].
    since_checkpoint: u64,
    /// Rows the drains returned: what the flushes would write.
    totals_drained: u64,
    /// (scope, window) pairs events arrived too late for (expected: 0).
    windows_late: u64,
    /// The most (scope, window) totals held, just before an eviction.
    peak_active_windows: usize,
}

/// Ten years: the benchmark's events are months old.
const BENCH_MAX_PAST_AGE_SECS: u64 = 10 * 365 * 24 * 3600;

impl Aggregation {
    fn new(policies: &PolicySet, layout: &TopicLayout) -> Result<Aggregation> {
        let partitions = layout.partitions.iter().map(|p| p.id).max().unwrap_or(0) + 1;
        // The mix happened months before the topic was written (bench's `event_time_start`):
        // admit it whatever its age, as the benchmarked service does (`QUOTAFLOW_VALIDATION__MAX_PAST_AGE`).
        let validation = quotaflow_admission::validation::ValidationConfig {
            max_past_age: std::time::Duration::from_secs(BENCH_MAX_PAST_AGE_SECS),
            ..Default::default()
        };
        let settings = PartitionSettings {
            admission: quotaflow_admission::Admission::new(
                quotaflow_admission::pricer::Pricer::from_config(&Default::default())?,
                validation,
            ),
            ..PartitionSettings::default()
        };
        let states = (0..partitions)
            .map(|partition| {
                PartitionAggregator::restore(
                    &layout.topic,
                    partition,
                    policies,
                    settings.clone(),
                    None,
                    [],
                )
                .map(|(aggregator, _)| aggregator)
            })
            .collect::<Result<_, _>>()?;
        Ok(Aggregation {
            states,
            since_checkpoint: 0,
            totals_drained: 0,
            windows_late: 0,
            peak_active_windows: 0,
        })
    }

    /// The stage's per-record work, the service's: [`PartitionAggregator::handle`] (decode,
    /// checks, duplicate filter, totals), and a flush's draining every [`EVICT_EVERY`] records.
    fn record(&mut self, message: &BorrowedMessage<'_>) -> Result<()> {
        let state = &mut self.states[message.partition() as usize];
        let outcome = state.handle(
            message.offset(),
            message.timestamp().to_millis(),
            message.key(),
            message.payload(),
        );
        match outcome {
            Outcome::Counted => {}
            Outcome::Late => self.windows_late += 1,
            other => bail!(
                "partition {} offset {}: {other:?}",
                message.partition(),
                message.offset()
            ),
        }
        self.since_checkpoint += 1;
        if self.since_checkpoint == EVICT_EVERY {
            self.checkpoint();
        }
        Ok(())
    }

    /// What a flush does to the state: drain the dirty totals and evict closed windows.
    fn checkpoint(&mut self) {
        self.since_checkpoint = 0;
        self.peak_active_windows = self.peak_active_windows.max(self.active_windows());
        for state in &mut self.states {
            self.totals_drained += black_box(state.take_flush()).updates.len() as u64;
        }
    }

    fn active_windows(&self) -> usize {
        self.states
            .iter()
            .map(|state| state.state().active_windows())
            .sum()
    }
}

/// Stage 4, the full pipeline: the real service ([`aggregator::Aggregator`], in this process) on
/// `layout`'s topic with a fresh consumer group, ClickHouse database and totals topic. The clock
/// starts at the first record read (setup and the group join are not counted, as the other
/// stages do not count theirs; polled every 5 ms) and stops when every partition's checkpoint
/// has reached its end offset: every event is then in ClickHouse, on the totals topic and
/// checkpointed.
fn stage_full(
    runtime: &Runtime,
    config: &aggregator::Config,
    layout: &TopicLayout,
) -> Result<Option<Measured>> {
    let mut config = config.clone();
    let run = infra::testkit::unique_name("bench_full");
    config.kafka.topics.usage = layout.topic.clone();
    config.kafka.topics.totals = format!("{run}.totals");
    config.kafka.topics.dead_letter = format!("{run}.deadletter");
    config.clickhouse.database = run.clone();
    config.group_id = run.clone();
    config.aggregate.policies_dir = Some(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policy/examples"
    )));
    reset_peak_rss();
    let ends: Vec<(i32, i64)> = layout
        .partitions
        .iter()
        .map(|partition| (partition.id, partition.high))
        .collect();
    let (measured, launch_to_done, flushes, rows) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let service = aggregator::Aggregator::new(config.clone());
        let stats = service.stats();
        let shutdown = infra::shutdown::Shutdown::new();
        let launched = Instant::now();
        let handle = tokio::spawn(service.run(listener, shutdown.clone()));
        let client = infra::clickhouse::client(&config.clickhouse);
        let mut started: Option<Instant> = None;
        while stats.records.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            if handle.is_finished() {
                bail!("the aggregator stopped: {:?}", handle.await);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        started.get_or_insert_with(Instant::now);
        let progress = ProgressBar::new(layout.records());
        loop {
            if handle.is_finished() {
                bail!("the aggregator stopped: {:?}", handle.await);
            }
            let rows: Vec<(i32, i64)> = client
                .query(
                    "SELECT partition, next_offset FROM aggregator_checkpoints FINAL \
                     WHERE consumer_group = ?",
                )
                .bind(&config.group_id)
                .fetch_all::<(i32, i64)>()
                .await
                .unwrap_or_default();
            let done: i64 = rows.iter().map(|(_, next)| next).sum();
            progress.set_position(done as u64);
            let caught_up = ends.iter().all(|(partition, high)| {
                *high == 0 || rows.iter().any(|row| row == &(*partition, *high))
            });
            if caught_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        progress.finish_and_clear();
        let elapsed = started.map_or(Duration::ZERO, |started| started.elapsed());
        let launch_to_done = launched.elapsed();
        shutdown.cancel();
        handle.await??;
        let rows = client
            .query("SELECT count() FROM window_partials")
            .fetch_one::<u64>()
            .await?;
        let flushes = stats.flushes.load(std::sync::atomic::Ordering::Acquire);
        infra::testkit::drop_database(&config.clickhouse).await?;
        anyhow::Ok((
            Measured {
                events: layout.records(),
                elapsed,
            },
            launch_to_done,
            flushes,
            rows,
        ))
    })?;
    println!(
        "+ ClickHouse flush and offset store: {:.0} events/s ({:.1} s from launch, group join \
         included), {flushes} flushes, {rows} partial rows written; peak RSS {:.1} MiB\n",
        measured.events_per_second(),
        launch_to_done.as_secs_f64(),
        proc_status_kib("VmHWM")? as f64 / 1024.0
    );
    Ok(Some(measured))
}

/// A `kB` line of `/proc/self/status` (`VmRSS`, `VmHWM`), in KiB.
fn proc_status_kib(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} in /proc/self/status"))
}

/// `VmRSS` after returning the allocator's free memory to the system, so that buffers freed by
/// an earlier stage (librdkafka's prefetch queues: tens of MiB) do not count as growth.
fn trimmed_rss_kib() -> Result<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            /// glibc: releases free heap memory (top of the heap and whole free pages inside it).
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: no preconditions; it only walks glibc's own arenas under their locks.
        unsafe { malloc_trim(0) };
    }
    proc_status_kib("VmRSS")
}

/// Resets `VmHWM` to the current RSS, so the peak is the stage's, not the pre-fill's.
fn reset_peak_rss() {
    // Linux ≥ 4.0; on failure the peak is the process's, which only overstates it.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn print_table(rows: &[(&str, Option<Measured>)]) {
    let raw = rows
        .first()
        .and_then(|(_, measured)| *measured)
        .map(|raw| raw.events_per_second());
    println!("| stage | events | seconds | events/s | × raw consume |");
    println!("|---|---:|---:|---:|---:|");
    for (stage, measured) in rows {
        match measured {
            Some(measured) => println!(
                "| {stage} | {} | {:.2} | {:.0} | {:.2} |",
                measured.events,
                measured.elapsed.as_secs_f64(),
                measured.events_per_second(),
                raw.map_or(f64::NAN, |raw| measured.events_per_second() / raw)
            ),
            None => println!("| {stage} | – | – | – | not built yet |"),
        }
    }
}
