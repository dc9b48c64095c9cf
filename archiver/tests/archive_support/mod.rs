//! Shared setup of the archive tests: a fresh topic set and database per test on the real stack,
//! sample events, the recorder, and small ClickHouse helpers.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

use infra::shutdown::Shutdown;
use quotaflow_admission::pricer::{Pricer, PricingConfig};
use quotaflow_archiver::{ArchiveStats, Archiver};
use quotaflow_recorder::{Recorder, RecorderConfig};
use serde::Deserialize;

/// One test's world: its topics, its database, its config.
pub struct World {
    pub config: quotaflow_archiver::Config,
    pub client: clickhouse::Client,
}

impl World {
    /// New topics and a migrated database; the archive section uses `archive` overrides.
    pub async fn new(test: &str) -> World {
        let mut config = quotaflow_archiver::Config {
            kafka: infra::testkit::kafka_config(test),
            clickhouse: infra::testkit::clickhouse_config(test),
            ..quotaflow_archiver::Config::default()
        };
        config.archive.group_id = infra::testkit::unique_name("archive");
        config.archive.batch_max_age_ms = 100;
        infra::migrations::migrate(&config.clickhouse)
            .await
            .expect("migrations");
        infra::kafka::ensure_topics(&config.kafka, &infra::kafka::pipeline_topics(&config.kafka))
            .await
            .expect("topics");
        let client = infra::clickhouse::client(&config.clickhouse);
        World { config, client }
    }

    pub fn recorder(&self) -> Recorder {
        let pricer = Pricer::from_config(&PricingConfig::default()).expect("embedded catalog");
        Recorder::new(
            &self.config.kafka,
            &RecorderConfig::default(),
            pricer,
            self.config.validation.clone(),
        )
        .expect("recorder")
    }

    /// Starts the archive in this process.
    pub fn start_archive(&self) -> RunningArchive {
        let archiver = Archiver::new(self.config.clone());
        let stats = archiver.stats();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(archiver.run(shutdown.clone()));
        RunningArchive {
            stats,
            shutdown,
            task,
        }
    }

    pub async fn count(&self, sql: &str) -> u64 {
        self.client
            .query(sql)
            .fetch_one::<u64>()
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"))
    }

    pub async fn text(&self, sql: &str) -> String {
        self.client
            .query(sql)
            .fetch_one::<String>()
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"))
    }

    pub async fn drop(self) {
        infra::testkit::drop_database(&self.config.clickhouse)
            .await
            .expect("drop database");
    }
}

pub struct RunningArchive {
    pub stats: std::sync::Arc<ArchiveStats>,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<Result<(), quotaflow_archiver::ArchiveError>>,
}

impl RunningArchive {
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("archive stops within 60 s")
            .expect("archive task")
            .expect("archive ran without error");
    }
}

/// A valid text event for `gpt-4o`, priced by the recorder.
pub use schemas::fixtures::text_event;

#[derive(Debug, Deserialize, clickhouse::Row)]
pub struct PartitionOffsets {
    pub partition: i32,
    pub distinct_offsets: u64,
    pub min_offset: i64,
    pub max_offset: i64,
}

/// Per partition: distinct offsets accounted for (archived or dead-lettered) and their range.
pub async fn accounted_offsets(world: &World) -> Vec<PartitionOffsets> {
    let topic = &world.config.kafka.topics.usage;
    world
        .client
        .query(
            "SELECT toInt32(p) AS partition, uniqExact(o) AS distinct_offsets, \
             toInt64(min(o)) AS min_offset, toInt64(max(o)) AS max_offset FROM ( \
               SELECT kafka_partition AS p, kafka_offset AS o FROM usage_events_raw \
               WHERE kafka_topic = ? \
               UNION ALL \
               SELECT source_partition AS p, source_offset AS o FROM dead_letters \
               WHERE source_topic = ?) GROUP BY p ORDER BY p",
        )
        .bind(topic)
        .bind(topic)
        .fetch_all::<PartitionOffsets>()
        .await
        .expect("accounted offsets")
}

/// High watermark per partition of the usage topic.
pub fn high_watermarks(world: &World) -> Vec<(i32, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = infra::kafka::consumer_config(
        &world.config.kafka,
        "archive-test-watermarks",
        &infra::testkit::unique_name("watermarks"),
    )
    .create()
    .expect("consumer");
    (0..world.config.kafka.topics.partitions)
        .map(|partition| {
            let (_, high) = consumer
                .fetch_watermarks(
                    &world.config.kafka.topics.usage,
                    partition,
                    Duration::from_secs(10),
                )
                .expect("watermarks");
            (partition, high)
        })
        .collect()
}
