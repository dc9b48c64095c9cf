//! Benchmark (ignored by default): archive rows per second of the `quotaflow-archiver` binary.
//! Pre-fills a fresh topic with `QUOTAFLOW_BENCH_EVENTS` (default 500 000) priced events, starts
//! the binary with the default batch bounds and times it from spawn to every row visible.
//!
//! ```text
//! cargo test --release -p quotaflow-archiver --test archive_throughput -- --ignored --nocapture
//! ```

mod archive_support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use archive_support::{text_event, World};
use chrono::{SubsecRound, Utc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
async fn archive_rows_per_second() {
    let events: usize = std::env::var("QUOTAFLOW_BENCH_EVENTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(500_000);
    let world = World::new("archive_bench").await;
    let recorder = world.recorder();
    let now = Utc::now().trunc_subsecs(6) - chrono::Duration::minutes(10);

    let started = Instant::now();
    let mut pending = Vec::with_capacity(10_000);
    for index in 0..events {
        let mut event = text_event(&format!("bench-{index:08}"), now);
        event.input_tokens = 100 + (index as u64 % 977);
        event.labels.insert("feature".into(), "search".into());
        event
            .labels
            .insert("campaign".into(), format!("c{}", index % 13));
        pending.push(recorder.prepare(event, Utc::now()).expect("valid"));
        if pending.len() == 10_000 {
            for result in recorder.send_all(std::mem::take(&mut pending)).await {
                result.expect("delivered");
            }
        }
    }
    for result in recorder.send_all(pending).await {
        result.expect("delivered");
    }
    println!("pre-filled {events} events in {:?}", started.elapsed());

    let kafka = &world.config.kafka;
    let topics = &kafka.topics;
    let config_text = format!(
        "[kafka]\nbrokers = \"{}\"\n[kafka.topics]\nusage = \"{}\"\ndead_letter = \"{}\"\n\
         totals = \"{}\"\ncontrol = \"{}\"\nalerts = \"{}\"\napprovals = \"{}\"\npartitions = {}\n\
         [clickhouse]\nurl = \"{}\"\ndatabase = \"{}\"\n[archive]\ngroup_id = \"{}\"\n",
        kafka.brokers,
        topics.usage,
        topics.dead_letter,
        topics.totals,
        topics.control,
        topics.alerts,
        topics.approvals,
        topics.partitions,
        world.config.clickhouse.url,
        world.config.clickhouse.database,
        world.config.archive.group_id,
    );
    let directory = std::env::temp_dir().join(infra::testkit::unique_name("archive_bench"));
    std::fs::create_dir_all(&directory).expect("temp dir");
    let config = directory.join("archiver.toml");
    std::fs::File::create(&config)
        .and_then(|mut file| file.write_all(config_text.as_bytes()))
        .expect("config");

    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_quotaflow-archiver"))
        .env("QUOTAFLOW_CONFIG", &config)
        .env("QUOTAFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("archiver starts");
    let expected = events as u64;
    let first_row = infra::testkit::eventually(Duration::from_secs(60), "first row", || async {
        (world.count("SELECT count() FROM usage_events_raw").await > 0).then(|| started.elapsed())
    })
    .await;
    infra::testkit::eventually(Duration::from_secs(600), "every row", || async {
        (world.count("SELECT count() FROM usage_events_raw").await >= expected).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        world.count("SELECT count() FROM usage_events").await,
        expected
    );
    let steady = elapsed.saturating_sub(first_row);
    println!(
        "archived {events} rows in {elapsed:?} from spawn ({:.0} rows/s); first row after \
         {first_row:?}; {:.0} rows/s from the first row on",
        events as f64 / elapsed.as_secs_f64(),
        events as f64 / steady.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&directory);
    world.drop().await;
}
