//! Benchmark topics: their partitions and offsets, creating and deleting them, and reading every
//! record once with a do-nothing consumer (the raw consume ceiling).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use infra::config::KafkaConfig;
use infra::kafka::{Retention, TopicSpec};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

/// How long a consumer waits for the next record before giving up.
pub const POLL_DEADLINE: Duration = Duration::from_secs(30);

/// A topic's partitions and their offsets.
#[derive(Debug, Clone)]
pub struct TopicLayout {
    /// The topic's name.
    pub topic: String,
    /// Every partition, sorted by id.
    pub partitions: Vec<PartitionOffsets>,
}

/// Offsets of one partition.
#[derive(Debug, Clone, Copy)]
pub struct PartitionOffsets {
    /// Partition id.
    pub id: i32,
    /// The first offset still stored.
    pub low: i64,
    /// The next offset to be written (one past the last record).
    pub high: i64,
}

impl TopicLayout {
    /// The topic's partitions and watermarks; `None` if it does not exist.
    pub fn fetch(kafka: &KafkaConfig, topic: &str) -> Result<Option<TopicLayout>> {
        let timeout = Duration::from_secs(10);
        let consumer: BaseConsumer =
            infra::kafka::consumer_config(kafka, "quotaflow-bench", "quotaflow-bench-metadata")
                .create()?;
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        let Some(found) = metadata.topics().first() else {
            return Ok(None);
        };
        if found.error().is_some() || found.partitions().is_empty() {
            return Ok(None);
        }
        let mut partitions = Vec::new();
        for partition in found.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
            partitions.push(PartitionOffsets {
                id: partition.id(),
                low,
                high,
            });
        }
        partitions.sort_by_key(|partition| partition.id);
        Ok(Some(TopicLayout {
            topic: topic.to_owned(),
            partitions,
        }))
    }

    /// Records stored in the topic.
    pub fn records(&self) -> u64 {
        self.partitions
            .iter()
            .map(|partition| (partition.high - partition.low) as u64)
            .sum()
    }
}

/// Creates `topic` with `partitions` partitions (kept 90 days, so it can be reused for weeks of
/// benchmark runs), unless it exists.
pub async fn create(kafka: &KafkaConfig, topic: &str, partitions: i32) -> Result<()> {
    let spec = TopicSpec {
        name: topic.to_owned(),
        partitions,
        retention: Retention::Time(Duration::from_secs(90 * 24 * 3600)),
        replication: Default::default(),
        extra_config: Vec::new(),
    };
    infra::kafka::ensure_topics(kafka, &[spec]).await?;
    Ok(())
}

/// Deletes `topics`; missing ones are not an error.
pub async fn delete(kafka: &KafkaConfig, topics: &[String]) -> Result<()> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        infra::kafka::client_config(kafka, "quotaflow-bench").create()?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.delete_topics(&names, &options).await? {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => bail!("cannot delete topic {name}: {code}"),
        }
    }
    Ok(())
}

/// Events processed and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Records handed to the step.
    pub events: u64,
    /// From the first record to the last.
    pub elapsed: Duration,
}

impl Measured {
    /// Throughput.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

/// Reads every record of `layout` (up to the high watermarks it holds) once with a fresh
/// consumer, with the aggregator's consumer settings (`infra::kafka::consumer_config`), assigned
/// every partition from the beginning and never committing, and hands each to `process`. The
/// clock starts at the first record.
pub fn consume_all(
    kafka: &KafkaConfig,
    layout: &TopicLayout,
    stage: &str,
    mut process: impl FnMut(&BorrowedMessage<'_>) -> Result<()>,
) -> Result<Measured> {
    let group = infra::testkit::unique_name(&format!("bench-{stage}"));
    let consumer: BaseConsumer =
        infra::kafka::consumer_config(kafka, "quotaflow-bench", &group).create()?;
    let mut assignment = TopicPartitionList::new();
    let mut end_offsets = Vec::new();
    for partition in &layout.partitions {
        assignment.add_partition_offset(&layout.topic, partition.id, Offset::Beginning)?;
        let id = partition.id as usize;
        end_offsets.resize(end_offsets.len().max(id + 1), 0);
        end_offsets[id] = partition.high;
    }
    consumer.assign(&assignment)?;

    let mut left = layout.records();
    let mut started: Option<Instant> = None;
    while left > 0 {
        let message = match consumer.poll(POLL_DEADLINE) {
            Some(message) => message?,
            None => bail!("{stage}: no record for {POLL_DEADLINE:?} with {left} to go"),
        };
        started.get_or_insert_with(Instant::now);
        // Records produced after the layout was read are not part of the run.
        if message.offset() >= end_offsets[message.partition() as usize] {
            continue;
        }
        process(&message)?;
        left -= 1;
    }
    Ok(Measured {
        events: layout.records(),
        elapsed: started.map_or(Duration::ZERO, |started| started.elapsed()),
    })
}

/// Commits `group`'s offsets for `layout`'s partitions to their low watermarks (the beginning),
/// as `kafka-consumer-groups --reset-offsets --to-earliest` would: the group's consumers then
/// start there whatever their `auto.offset.reset`. The group must have no active members.
pub fn reset_group_to_earliest(
    kafka: &KafkaConfig,
    group: &str,
    layout: &TopicLayout,
) -> Result<()> {
    let consumer: BaseConsumer =
        infra::kafka::consumer_config(kafka, "quotaflow-bench-reset", group).create()?;
    let mut offsets = TopicPartitionList::new();
    for partition in &layout.partitions {
        offsets.add_partition_offset(&layout.topic, partition.id, Offset::Offset(partition.low))?;
    }
    consumer.commit(&offsets, rdkafka::consumer::CommitMode::Sync)?;
    Ok(())
}
