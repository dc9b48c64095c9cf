//! Shared by the aggregator's stack tests: isolated configs, a realistic workload, producing,
//! waiting for the aggregator to catch up, and an **independent recount**: plain sums per (scope,
//! UTC window) computed here with their own window arithmetic, not with the aggregator's code.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use aggregator::Config;
use chrono::{DateTime, Datelike, TimeDelta, TimeZone, Utc};
use infra::config::{ClickHouseConfig, HttpConfig, KafkaConfig};
use infra::shutdown::Shutdown;
use infra::testkit;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use rust_decimal::Decimal;
use schemas::{UsageEvent, WindowTotal};

/// Scope kinds and window kinds the recount covers.
pub const RECOUNT_KINDS: &[&str] = &["team", "model", "api_key_id", "modality"];
pub const RECOUNT_WINDOWS: &[&str] = &["minute", "hour", "day", "month"];

/// A config with its own topics, database and group, flushing often.
pub fn isolated_config(test: &str) -> Config {
    let mut config = Config {
        kafka: testkit::kafka_config(test),
        clickhouse: testkit::clickhouse_config(test),
        http: HttpConfig::with_port(0),
        group_id: testkit::unique_name(&format!("t_{test}_group")),
        ..Config::default()
    };
    // The workloads happened weeks ago (fixed dates) but are written now: admission judges
    // `occurred_at` against the Kafka timestamp, so admit any age here.
    config.validation.max_past_age = Duration::from_secs(10 * 365 * 24 * 3600);
    config.aggregate.flush_interval_ms = 100;
    config.aggregate.flush_max_records = 20_000;
    // The recount compares single-dimension totals on the topic too.
    config.aggregate.publish_scopes = aggregator::config::PublishScopes::All;
    config
}

/// A directory holding `policies` (YAML), for `aggregate.policies_dir`.
pub fn policies_dir(policies: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(testkit::unique_name("policies"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("policies.yaml"), policies).unwrap();
    dir
}

/// The `scope_kind` of the totals of policy `id` in `policies` (YAML): `policy:<id>@<definition>`.
pub fn policy_kind(policies: &str, id: &str) -> String {
    policy::PolicySet::from_str("policies.yaml", policies)
        .unwrap()
        .get(id)
        .unwrap()
        .totals_scope_kind()
}

/// `count` priced events of the demo workload, `spacing_ms` apart from `start`.
pub fn workload(seed: u64, count: usize, start: DateTime<Utc>, spacing_ms: i64) -> Vec<UsageEvent> {
    let pricer = quotaflow_admission::pricer::Pricer::from_config(&Default::default()).unwrap();
    let mut generator =
        quotaflow_workload::Workload::new(seed, &format!("t{seed}"), "aggregator-test");
    (0..count)
        .map(|index| {
            let mut event =
                generator.next_event(start + TimeDelta::milliseconds(index as i64 * spacing_ms));
            let _ = pricer.apply(&mut event);
            event
        })
        .collect()
}

/// Produces `events` in order (keyed like ingest does) and waits for every acknowledgement.
pub async fn produce(kafka: &KafkaConfig, events: &[UsageEvent]) {
    infra::kafka::ensure_topics(kafka, &infra::kafka::pipeline_topics(kafka))
        .await
        .unwrap();
    let producer: FutureProducer = infra::kafka::producer_config(kafka, "aggregator-test")
        .set("linger.ms", "20")
        .create()
        .unwrap();
    for chunk in events.chunks(5_000) {
        let payloads: Vec<(String, Vec<u8>)> = chunk
            .iter()
            .map(|event| {
                (
                    schemas::usage_event::partition_key(event).to_owned(),
                    schemas::encode(event).unwrap(),
                )
            })
            .collect();
        let sends = payloads.iter().map(|(key, payload)| {
            producer.send(
                FutureRecord::to(&kafka.topics.usage)
                    .key(key.as_str())
                    .payload(payload.as_slice()),
                Duration::from_secs(30),
            )
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(error, _)| error).unwrap();
        }
    }
}

/// Produces raw payloads (for bad records) with a key.
pub async fn produce_raw(kafka: &KafkaConfig, records: &[(&str, &[u8])]) {
    let producer: FutureProducer = infra::kafka::producer_config(kafka, "aggregator-test-raw")
        .create()
        .unwrap();
    for (key, payload) in records {
        producer
            .send(
                FutureRecord::to(&kafka.topics.usage)
                    .key(*key)
                    .payload(*payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(error, _)| error)
            .unwrap();
    }
}

/// The end offset of every partition of the usage topic.
pub fn end_offsets(kafka: &KafkaConfig) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = infra::kafka::client_config(kafka, "quotaflow-test")
        .create()
        .unwrap();
    (0..kafka.topics.partitions)
        .map(|partition| {
            let (_, high) = consumer
                .fetch_watermarks(&kafka.topics.usage, partition, Duration::from_secs(10))
                .unwrap();
            (partition, high)
        })
        .collect()
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct CheckpointOffset {
    partition: i32,
    next_offset: i64,
}

/// The checkpointed `next_offset` per partition.
pub async fn checkpoints(config: &Config) -> BTreeMap<i32, i64> {
    let client = infra::clickhouse::client(&config.clickhouse);
    client
        .query(
            "SELECT partition, next_offset FROM aggregator_checkpoints FINAL \
             WHERE consumer_group = ? AND topic = ?",
        )
        .bind(&config.group_id)
        .bind(&config.kafka.topics.usage)
        .fetch_all::<CheckpointOffset>()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|row| (row.partition, row.next_offset))
        .collect()
}

/// Waits until every partition with records is checkpointed at its end.
pub async fn wait_caught_up(config: &Config, deadline: Duration) {
    let ends = end_offsets(&config.kafka);
    testkit::eventually(deadline, "checkpoints at the end offsets", || async {
        let done = checkpoints(config).await;
        ends.iter()
            .filter(|(_, end)| **end > 0)
            .all(|(partition, end)| done.get(partition) == Some(end))
            .then_some(())
    })
    .await;
}

/// Sums per (scope_kind, scope_key, window_kind, window_start seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sums {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub images: u64,
    pub video_ms: u64,
    pub cost_usd: Decimal,
    pub unpriced: u64,
}

pub type Totals = BTreeMap<(String, String, String, i64), Sums>;

/// Start of the UTC window of `kind` holding `at`, computed independently of the `windows` crate.
pub fn utc_window_start(kind: &str, at: DateTime<Utc>) -> i64 {
    let seconds = at.timestamp();
    match kind {
        "minute" => seconds - seconds.rem_euclid(60),
        "hour" => seconds - seconds.rem_euclid(3600),
        "day" => seconds - seconds.rem_euclid(86_400),
        "month" => Utc
            .with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
            .unwrap()
            .timestamp(),
        other => panic!("no recount for {other}"),
    }
}

/// The independent recount: each distinct `event_id` once (the first copy), summed per scope of
/// [`RECOUNT_KINDS`] and UTC window of [`RECOUNT_WINDOWS`].
pub fn recount(events: &[UsageEvent]) -> Totals {
    let mut seen = HashSet::new();
    let mut totals = Totals::new();
    for event in events {
        if !seen.insert(event.event_id.clone()) {
            continue;
        }
        let scopes = [
            ("team", event.team.clone()),
            ("model", event.model.clone()),
            ("api_key_id", event.api_key_id.clone()),
            ("modality", event.modality.as_str().to_owned()),
        ];
        for (kind, key) in &scopes {
            for window in RECOUNT_WINDOWS {
                let sums = totals
                    .entry((
                        kind.to_string(),
                        key.clone(),
                        window.to_string(),
                        utc_window_start(window, event.occurred_at),
                    ))
                    .or_default();
                // The documented rule: a request is a synchronous attempt or a job's submission.
                sums.requests += u64::from(matches!(
                    event.job_state,
                    None | Some(schemas::JobState::Submitted)
                ));
                sums.input_tokens += event.input_tokens;
                sums.output_tokens += event.output_tokens;
                sums.images += u64::from(event.images);
                sums.video_ms += event.video_duration_ms;
                match event.cost_usd {
                    Some(cost) => sums.cost_usd += cost,
                    None => sums.unpriced += 1,
                }
            }
        }
    }
    totals
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct StoredRow {
    scope_kind: String,
    scope_key: String,
    window_kind: String,
    start: u32,
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    images: u64,
    video_ms: u64,
    cost: String,
    unpriced_events: u64,
}

/// What analysts see: `window_totals_current`, for the recount's kinds and UTC windows.
pub async fn stored_totals(config: &ClickHouseConfig) -> Totals {
    let client = infra::clickhouse::client(config);
    let rows = client
        .query(
            "SELECT scope_kind, scope_key, window_kind, toUInt32(window_start) AS start, requests, \
             input_tokens, output_tokens, \
             images_draft + images_preview + images_edit + images_final + images_untiered AS images, \
             video_ms, toString(cost_usd) AS cost, unpriced_events \
             FROM window_totals_current \
             WHERE window_tz = 'UTC' AND scope_kind IN ('team', 'model', 'api_key_id', 'modality') \
               AND window_kind IN ('minute', 'hour', 'day', 'month')",
        )
        .fetch_all::<StoredRow>()
        .await
        .unwrap();
    rows.into_iter()
        .map(|row| {
            (
                (
                    row.scope_kind,
                    row.scope_key,
                    row.window_kind,
                    i64::from(row.start),
                ),
                Sums {
                    requests: row.requests,
                    input_tokens: row.input_tokens,
                    output_tokens: row.output_tokens,
                    images: row.images,
                    video_ms: row.video_ms,
                    cost_usd: row.cost.parse().unwrap(),
                    unpriced: row.unpriced_events,
                },
            )
        })
        .collect()
}

/// What the alerter sees: the totals topic read from the start, the highest version per
/// (scope, window, partition), summed over partitions.
pub fn published_totals(kafka: &KafkaConfig) -> Totals {
    let newest = newest_published(kafka);
    let mut totals = Totals::new();
    for total in newest.into_values() {
        if total.window_tz != "UTC"
            || !RECOUNT_KINDS.contains(&total.scope_kind.as_str())
            || !RECOUNT_WINDOWS.contains(&total.window_kind.as_str())
        {
            continue;
        }
        let sums = totals
            .entry((
                total.scope_kind,
                total.scope_key,
                total.window_kind,
                total.window_start.timestamp(),
            ))
            .or_default();
        sums.requests += total.requests;
        sums.input_tokens += total.input_tokens;
        sums.output_tokens += total.output_tokens;
        sums.images += total.images_draft
            + total.images_preview
            + total.images_edit
            + total.images_final
            + total.images_untiered;
        sums.video_ms += total.video_ms;
        sums.cost_usd += total.cost_usd;
        sums.unpriced += total.unpriced_events;
    }
    totals
}

/// The totals topic read from the start to its end: the highest version per compaction key
/// (scope, window, source partition).
pub fn newest_published(kafka: &KafkaConfig) -> BTreeMap<String, WindowTotal> {
    let consumer: BaseConsumer = infra::kafka::client_config(kafka, "quotaflow-test")
        .set("group.id", testkit::unique_name("totals-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut ends = BTreeMap::new();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in 0..kafka.topics.partitions {
        let (low, high) = consumer
            .fetch_watermarks(&kafka.topics.totals, partition, Duration::from_secs(10))
            .unwrap();
        if high > low {
            ends.insert(partition, high);
            assignment
                .add_partition_offset(&kafka.topics.totals, partition, rdkafka::Offset::Beginning)
                .unwrap();
        }
    }
    let mut newest: BTreeMap<String, WindowTotal> = BTreeMap::new();
    if !ends.is_empty() {
        consumer.assign(&assignment).unwrap();
        let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
        let started = std::time::Instant::now();
        while ends
            .iter()
            .any(|(p, end)| positions.get(p).copied().unwrap_or(-1) + 1 < *end)
        {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "reading the totals topic"
            );
            let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = message.unwrap();
            positions.insert(message.partition(), message.offset());
            let Some(payload) = message.payload() else {
                continue;
            };
            let total: WindowTotal = schemas::decode(payload).unwrap();
            let key = total.compaction_key();
            if newest
                .get(&key)
                .is_none_or(|seen| seen.version <= total.version)
            {
                newest.insert(key, total);
            }
        }
    }
    newest
}

/// Asserts two totals are equal, showing the first differences (not the whole maps).
pub fn assert_totals_eq(what: &str, got: &Totals, want: &Totals) {
    let mut differences = Vec::new();
    for (key, sums) in want {
        if got.get(key) != Some(sums) {
            differences.push(format!("{key:?}: got {:?}, want {sums:?}", got.get(key)));
        }
    }
    for key in got.keys() {
        if !want.contains_key(key) {
            differences.push(format!("{key:?}: unexpected {:?}", got[key]));
        }
    }
    assert!(
        differences.is_empty(),
        "{what}: {} of {} totals differ, e.g.\n{}",
        differences.len(),
        want.len(),
        differences
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let requests: u64 = want
        .iter()
        .filter(|((kind, _, window, _), _)| kind == "team" && window == "month")
        .map(|(_, sums)| sums.requests)
        .sum();
    assert!(
        requests > 0,
        "{what}: the recount is empty, the check would prove nothing"
    );
}

/// An in-process aggregator.
pub struct Running {
    pub shutdown: Shutdown,
    pub handle: tokio::task::JoinHandle<aggregator::Result<()>>,
    pub stats: std::sync::Arc<aggregator::pipeline::Stats>,
    pub metrics_url: String,
}

/// Starts the aggregator in this process.
pub async fn start(config: &Config) -> Running {
    // Logs when asked for (QUOTAFLOW_LOG=info cargo test ... -- --nocapture).
    if std::env::var_os("QUOTAFLOW_LOG").is_some() {
        infra::telemetry::init_tracing();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let service = aggregator::Aggregator::new(config.clone());
    let stats = service.stats();
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(service.run(listener, shutdown.clone()));
    Running {
        shutdown,
        handle,
        stats,
        metrics_url,
    }
}

impl Running {
    /// Stops it (final flush) and returns its result.
    pub async fn stop(self) -> aggregator::Result<()> {
        self.shutdown.cancel();
        self.handle.await.unwrap()
    }
}

/// The in-process aggregator's `/metrics` page.
pub async fn metrics_text(running: &Running) -> String {
    reqwest::get(&running.metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// An aggregator in a child process (the binary), so it can be `kill -9`ed.
pub struct Process {
    child: std::process::Child,
}

/// Starts `quotaflow-aggregator` with `config` written to a TOML file, and no inherited
/// `QUOTAFLOW_*` variables.
pub fn spawn_process(config: &Config) -> Process {
    spawn_process_with_failpoint(config, None)
}

/// Like [`spawn_process`], with `AGGREGATOR_FAILPOINT` set (see the aggregator's pipeline docs).
pub fn spawn_process_with_failpoint(config: &Config, failpoint: Option<&str>) -> Process {
    let path = std::env::temp_dir().join(format!("{}.toml", testkit::unique_name("aggregator")));
    std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_quotaflow-aggregator"));
    command.arg("--config").arg(&path);
    for (name, _) in std::env::vars() {
        if name.starts_with("QUOTAFLOW_") {
            command.env_remove(name);
        }
    }
    command.env("QUOTAFLOW_LOG", "warn");
    match failpoint {
        Some(failpoint) => command.env("AGGREGATOR_FAILPOINT", failpoint),
        None => command.env_remove("AGGREGATOR_FAILPOINT"),
    };
    Process {
        child: command.spawn().unwrap(),
    }
}

impl Process {
    /// SIGKILL: no flush, no commit, no goodbye.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for it to exit by itself; true if it was killed by a signal (an abort).
    pub async fn wait_aborted(mut self, deadline: Duration) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.signal().is_some();
            }
            assert!(
                started.elapsed() < deadline,
                "the failpoint was never reached"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Crashes the aggregator (the binary, `config`) right after each write of a flush in turn
/// (partials written but not published; published but no checkpoint; ...) while `midway` trickles
/// in (20 events every 100 ms, the rest at once when the crash rounds are over), then `kill -9`s
/// it `kills` times at staggered moments after a flush. The caller starts the last process and
/// checks the totals.
///
/// The trickle is what makes every round reach the n-th flush its failpoint names: a replay of
/// a backlog alone can be read so fast that two flushes cover it all, and the process then idles
/// with its failpoint never reached.
pub async fn crash_after_each_flush_write_then_kill_9(
    config: &Config,
    midway: &[UsageEvent],
    kills: u64,
) {
    // Small flushes, so that every round has the n-th flush its failpoint names however fast the
    // machine replays: with 20,000 records per flush, a quick replay could end in two flushes and
    // the third (`published:3`) never come.
    let mut crashing = config.clone();
    crashing.aggregate.flush_max_records = crashing.aggregate.flush_max_records.min(500);
    let trickling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let trickle = {
        let (kafka, midway, trickling) = (
            config.kafka.clone(),
            midway.to_vec(),
            std::sync::Arc::clone(&trickling),
        );
        tokio::spawn(async move {
            let mut chunks = midway.chunks(20);
            while trickling.load(std::sync::atomic::Ordering::Acquire) {
                let Some(chunk) = chunks.next() else { break };
                produce(&kafka, chunk).await;
                // Pacing the traffic, not waiting for anything.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let rest: Vec<UsageEvent> = chunks.flatten().cloned().collect();
            produce(&kafka, &rest).await;
        })
    };
    for failpoint in [
        "partials:2",
        "published:3",
        "dead_letters:1",
        "checkpoint:2",
    ] {
        let process = spawn_process_with_failpoint(&crashing, Some(failpoint));
        assert!(
            process.wait_aborted(Duration::from_secs(120)).await,
            "{failpoint}: it exited without crashing"
        );
    }
    trickling.store(false, std::sync::atomic::Ordering::Release);
    trickle.await.unwrap();
    for round in 0..kills {
        let mut process = spawn_process(config);
        let before = partial_rows(&config.clickhouse).await;
        testkit::eventually(Duration::from_secs(120), "a flush after restart", || {
            let clickhouse = config.clickhouse.clone();
            async move { (partial_rows(&clickhouse).await > before).then_some(()) }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(5 + 41 * round)).await;
        assert!(process.is_running(), "the aggregator died by itself");
        process.kill_9();
    }
}

/// Rows in `window_partials` (to see that flushes happen).
pub async fn partial_rows(config: &ClickHouseConfig) -> u64 {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Count {
        rows: u64,
    }
    infra::clickhouse::client(config)
        .query("SELECT count() AS rows FROM window_partials")
        .fetch_one::<Count>()
        .await
        .map(|count| count.rows)
        .unwrap_or(0)
}

/// Dead letters the aggregator wrote, by kind.
pub async fn dead_letter_kinds(config: &ClickHouseConfig) -> BTreeMap<String, u64> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Kind {
        error_kind: String,
        letters: u64,
    }
    infra::clickhouse::client(config)
        .query(
            "SELECT error_kind, count() AS letters FROM dead_letters FINAL \
             WHERE service = 'aggregator' GROUP BY error_kind",
        )
        .fetch_all::<Kind>()
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.error_kind, row.letters))
        .collect()
}

/// Migrates `config`'s database directly, then points `config` at ClickHouse through a proxy the
/// test can cut; returns the proxy and the direct ClickHouse settings.
pub async fn clickhouse_behind_proxy(
    config: &mut Config,
) -> (testkit::FaultProxy, ClickHouseConfig) {
    infra::migrations::migrate(&config.clickhouse)
        .await
        .unwrap();
    testkit::clickhouse_behind_proxy(&mut config.clickhouse)
        .await
        .unwrap()
}
