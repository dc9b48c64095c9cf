//! Exactly once across `kill -9`: the `quotaflow-archiver` binary is killed repeatedly while it
//! writes, restarted, and at the end every event id is in `usage_events` once, the cost sum
//! matches an independent recount, and no offset is missing (see the gap check for what merges
//! allow the raw table to show).

mod archive_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use archive_support::{text_event, World};
use chrono::{SubsecRound, Utc};
use rust_decimal::Decimal;

/// Events with distinct ids.
const UNIQUE_EVENTS: usize = 100_000;
/// Every `DUPLICATE_EVERY`-th event is sent a second time (a producer retry).
const DUPLICATE_EVERY: usize = 50;
/// Kills while rows are being written.
const KILLS: usize = 6;

/// A tiny deterministic PRNG (xorshift), seeded from the clock: kill points vary between runs
/// and the seed is printed so a failing run can be reproduced.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

fn config_file(world: &World, directory: &std::path::Path) -> std::path::PathBuf {
    let kafka = &world.config.kafka;
    let topics = &kafka.topics;
    let clickhouse = &world.config.clickhouse;
    let archive = &world.config.archive;
    let text = format!(
        r#"
[kafka]
brokers = "{brokers}"

[kafka.topics]
usage = "{usage}"
dead_letter = "{dead_letter}"
totals = "{totals}"
control = "{control}"
alerts = "{alerts}"
approvals = "{approvals}"
partitions = {partitions}

# Static membership: a restarted archiver takes its partitions back at once instead of waiting
# for the killed member's session to expire.
[kafka.properties]
"group.instance.id" = "{group}-member"

[clickhouse]
url = "{url}"
database = "{database}"

[validation]
max_past_age = {max_past_age}

[archive]
group_id = "{group}"
batch_max_rows = 5000
batch_max_age_ms = 200
"#,
        brokers = kafka.brokers,
        usage = topics.usage,
        dead_letter = topics.dead_letter,
        totals = topics.totals,
        control = topics.control,
        alerts = topics.alerts,
        approvals = topics.approvals,
        partitions = topics.partitions,
        url = clickhouse.url,
        database = clickhouse.database,
        max_past_age = world.config.validation.max_past_age.as_secs(),
        group = archive.group_id,
    );
    let path = directory.join("archiver.toml");
    std::fs::File::create(&path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .expect("config written");
    path
}

/// Kills the archiver if the test panics, so no process outlives it.
struct Archiver(Child);

impl Drop for Archiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_archiver(config: &std::path::Path, log: &std::path::Path) -> Archiver {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(env!("CARGO_BIN_EXE_quotaflow-archiver"))
        .env("QUOTAFLOW_CONFIG", config)
        .env("QUOTAFLOW_LOG", "info")
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log))
        .spawn()
        .map(Archiver)
        .expect("archiver starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn kill_9_repeatedly_loses_and_duplicates_nothing() {
    let mut world = World::new("archive_crash").await;
    // Events over the last 40 days span two months, so batches are split by table partition.
    world.config.validation.max_past_age = Duration::from_secs(60 * 24 * 3600);
    let recorder = world.recorder();
    let seed = Utc::now().timestamp_subsec_nanos() as u64 | 1;
    println!("seed {seed}");
    let mut random = Random(seed);

    // Produce, and recount independently what analysts must see.
    let now = Utc::now().trunc_subsecs(6);
    let started = Instant::now();
    let mut expected_cost = Decimal::ZERO;
    let mut sent = 0_u64;
    let mut pending = Vec::new();
    // (partition, offset) → event id, from the recorder's acknowledgements.
    let mut produced: BTreeMap<(i32, i64), String> = BTreeMap::new();
    let mut send =
        |batch: Vec<quotaflow_recorder::PreparedEvent>,
         results: Vec<Result<quotaflow_recorder::Delivery, quotaflow_recorder::RecordError>>,
         produced: &mut BTreeMap<(i32, i64), String>| {
            for (event, result) in batch.iter().zip(results) {
                let delivery = result.expect("delivered");
                produced.insert(
                    (delivery.partition, delivery.offset),
                    event.event_id().to_owned(),
                );
                sent += 1;
            }
        };
    for index in 0..UNIQUE_EVENTS {
        // Blocks of 1000 consecutive events share a month (alternating), like late traffic.
        let days_ago = if (index / 1000) % 2 == 0 { 1 } else { 35 };
        let occurred_at =
            now - chrono::Duration::days(days_ago) + chrono::Duration::milliseconds(index as i64);
        let mut event = text_event(&format!("crash-{index}"), occurred_at);
        event.input_tokens = 100 + (index as u64 % 977);
        event.output_tokens = 10 + (index as u64 % 313);
        event.team = format!("team-{}", index % 7);
        let prepared = recorder.prepare(event, Utc::now()).expect("valid");
        expected_cost += prepared.event().cost_usd.expect("priced");
        if index % DUPLICATE_EVERY == 0 {
            let again = recorder
                .prepare(prepared.event().clone(), Utc::now())
                .expect("valid");
            pending.push(again);
        }
        pending.push(prepared);
        if pending.len() >= 5000 {
            let batch = std::mem::take(&mut pending);
            let ids: Vec<_> = batch.iter().map(Clone::clone).collect();
            let results = recorder.send_all(batch).await;
            send(ids, results, &mut produced);
        }
    }
    let ids: Vec<_> = pending.iter().map(Clone::clone).collect();
    let results = recorder.send_all(pending).await;
    send(ids, results, &mut produced);
    let expected_unique = UNIQUE_EVENTS as u64;
    assert_eq!(
        sent,
        expected_unique + (UNIQUE_EVENTS / DUPLICATE_EVERY) as u64
    );
    println!("produced {sent} records in {:?}", started.elapsed());

    let directory = std::env::temp_dir().join(infra::testkit::unique_name("archiver"));
    std::fs::create_dir_all(&directory).expect("temp dir");
    let config = config_file(&world, &directory);
    let log = directory.join("archiver.log");
    println!("archiver log: {}", log.display());

    // Kill -9 at random moments while the row count grows.
    let mut kills_at = Vec::new();
    let mut last = 0_u64;
    for _ in 0..KILLS {
        let mut child = spawn_archiver(&config, &log);
        let target = last + random.between(3_000, 15_000);
        let seen = infra::testkit::eventually(Duration::from_secs(120), "rows growing", || async {
            let rows = world.count("SELECT count() FROM usage_events_raw").await;
            (rows >= target || rows >= sent).then_some(rows)
        })
        .await;
        child.0.kill().expect("kill -9");
        child.0.wait().expect("reaped");
        kills_at.push(seen);
        last = world.count("SELECT count() FROM usage_events_raw").await;
        assert!(last < sent, "killed after the end; lower the kill targets");
    }
    println!("killed at raw row counts {kills_at:?}");

    // The last run finishes the topic; then a graceful stop.
    let mut child = spawn_archiver(&config, &log);
    let watermarks = archive_support::high_watermarks(&world);
    let total: i64 = watermarks.iter().map(|(_, high)| high).sum();
    assert_eq!(total as u64, sent);
    assert_eq!(produced.len() as u64, sent);
    infra::testkit::eventually(Duration::from_secs(180), "every event archived", || async {
        (world.count("SELECT count() FROM usage_events").await >= expected_unique).then_some(())
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = child.0.wait().expect("archiver exits");
    assert!(exit.success(), "graceful stop: {exit}");

    // Analysts: each event id once, the exact cost.
    assert_eq!(
        world.count("SELECT count() FROM usage_events").await,
        expected_unique
    );
    assert_eq!(
        world
            .count("SELECT uniqExact(event_id) FROM usage_events")
            .await,
        expected_unique
    );
    let cost = world
        .text("SELECT toString(assumeNotNull(sum(cost_usd))) FROM usage_events")
        .await;
    assert_eq!(cost.parse::<Decimal>().expect("decimal"), expected_cost);
    let months = world
        .count("SELECT uniqExact(toYYYYMM(occurred_at)) FROM usage_events")
        .await;
    assert_eq!(months, 2, "the data spans two table partitions");

    // No offset gap. Background merges of the ReplacingMergeTree physically remove older copies
    // of a re-sent event_id, so the raw table cannot prove "each offset once" by counting; what
    // it must show: every surviving row sits at the coordinates its event was acknowledged at,
    // every offset of a non-duplicated event survives, and each duplicated event survives at
    // one of its offsets at least.
    #[derive(Debug, serde::Deserialize, clickhouse::Row)]
    struct Coordinates {
        kafka_partition: i32,
        kafka_offset: i64,
        event_id: String,
    }
    let archived: Vec<Coordinates> = world
        .client
        .query("SELECT kafka_partition, kafka_offset, event_id FROM usage_events_raw")
        .fetch_all()
        .await
        .expect("raw coordinates");
    let mut copies_by_id: BTreeMap<&str, usize> = BTreeMap::new();
    for event_id in produced.values() {
        *copies_by_id.entry(event_id).or_default() += 1;
    }
    let mut surviving: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for row in &archived {
        let key = (row.kafka_partition, row.kafka_offset);
        assert_eq!(
            produced.get(&key),
            Some(&row.event_id),
            "row at {key:?} holds the event acknowledged there"
        );
        *surviving.entry(key).or_default() += 1;
    }
    for (key, event_id) in &produced {
        if copies_by_id[event_id.as_str()] == 1 {
            assert!(
                surviving.contains_key(key),
                "offset {key:?} ({event_id}) lost"
            );
        }
    }
    let unmerged_second_copies = surviving.values().filter(|&&copies| copies > 1).count();
    println!(
        "raw rows {}, offsets produced {}, offsets archived twice and not merged yet {}",
        archived.len(),
        produced.len(),
        unmerged_second_copies
    );
    for (partition, high) in watermarks {
        let in_partition = produced.keys().filter(|(p, _)| *p == partition).count();
        assert_eq!(
            in_partition as i64, high,
            "partition {partition}: offsets 0..{high}"
        );
    }
    assert_eq!(world.count("SELECT count() FROM dead_letters").await, 0);
    let _ = std::fs::remove_dir_all(&directory);
    world.drop().await;
}
