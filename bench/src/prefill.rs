//! Fills the benchmark topics with the event mix ([`crate::events`]) and recounts it.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use infra::config::KafkaConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use schemas::UsageEvent;

use crate::events::{EventMix, KafkaEngineRow};
use crate::recount::Recount;
use crate::topic::{self, TopicLayout};

/// Records whose encoded sizes are averaged for the report.
pub const SIZE_SAMPLE: u64 = 100_000;

/// What to fill.
#[derive(Debug, Clone)]
pub struct Fill {
    /// Records per topic (duplicates included).
    pub records: u64,
    /// Partitions of new topics.
    pub partitions: i32,
    /// Share of duplicate records, 0 to 1.
    pub duplicate_share: f64,
    /// The Avro topic (the aggregator's input).
    pub avro_topic: String,
    /// The JSON topic (the Kafka engine's input), if wanted.
    pub json_topic: Option<String>,
    /// Whether to recount the mix (needs every record generated, even for reused topics).
    pub recount: bool,
}

/// What the fill left.
#[derive(Debug)]
pub struct Filled {
    /// The recount, if asked for.
    pub recount: Option<Recount>,
    /// The first event: the template of freshness markers.
    pub first_event: UsageEvent,
    /// Average payload bytes of an Avro record (over the first [`SIZE_SAMPLE`] records).
    pub avro_bytes_per_record: f64,
    /// Average payload bytes of a JSON record (same sample).
    pub json_bytes_per_record: f64,
}

/// Fills the topics with `fill.records` records each, unless they already hold that many; a
/// topic holding a different count is deleted and refilled. Every topic gets the same records
/// with the same keys, so the same partitions.
pub async fn prefill(kafka: &KafkaConfig, fill: &Fill) -> Result<Filled> {
    let mut topics = vec![fill.avro_topic.clone()];
    topics.extend(fill.json_topic.clone());
    // Freshness markers are appended after the benchmark records: more records is still complete.
    let mut complete = true;
    for name in &topics {
        let existing = TopicLayout::fetch(kafka, name)?;
        let records = existing.as_ref().map_or(0, TopicLayout::records);
        let partitions = existing
            .as_ref()
            .map_or(0, |layout| layout.partitions.len());
        if records < fill.records || partitions != fill.partitions as usize {
            println!("topic {name}: {records} records in {partitions} partitions; (re)filling");
            complete = false;
        }
    }
    if !complete {
        topic::delete(kafka, &topics).await?;
        for name in &topics {
            wait_until_gone(kafka, name).await?;
            topic::create(kafka, name, fill.partitions).await?;
        }
    }

    let mut producer_config = infra::kafka::producer_config(kafka, "quotaflow-bench-prefill");
    // Bulk load: bigger batches than a latency-bound service would wait for.
    producer_config.set("linger.ms", "50");
    let producer: BaseProducer = producer_config.create()?;
    let mut mix = EventMix::new(fill.duplicate_share)?;
    let mut recount = fill.recount.then(Recount::default);
    let progress = ProgressBar::new(fill.records);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {pos}/{len} events {per_sec} eta {eta}",
        )?
        .progress_chars("=> "),
    );
    progress.set_message(if complete {
        format!("recounting {}", fill.avro_topic)
    } else {
        format!("filling {}", topics.join(" and "))
    });

    let started = Instant::now();
    let mut avro = Vec::with_capacity(1024);
    let mut json = Vec::with_capacity(2048);
    let (mut avro_bytes, mut json_bytes) = (0u64, 0u64);
    let mut first_event = None;
    // Reused topics without a recount: only the first event (the marker template) is needed.
    let generate = if complete && !fill.recount {
        1
    } else {
        fill.records
    };
    // Record sizes are reported from a sample even when the topics are reused.
    let sample = fill.records.min(SIZE_SAMPLE);
    for index in 0..generate {
        let record = mix.next_record();
        if let Some(recount) = recount.as_mut() {
            recount.add(&record.event, record.duplicate);
        }
        if first_event.is_none() {
            first_event = Some(record.event.clone());
        }
        if !complete || index < sample {
            let key = schemas::usage_event::partition_key(&record.event);
            avro.clear();
            schemas::codec::encode_into(&record.event, &mut avro)?;
            json.clear();
            KafkaEngineRow::of(&record.event).write_into(&mut json)?;
            if index < sample {
                avro_bytes += avro.len() as u64;
                json_bytes += json.len() as u64;
            }
            if !complete {
                send(&producer, &fill.avro_topic, key, &avro)?;
                if let Some(json_topic) = &fill.json_topic {
                    send(&producer, json_topic, key, &json)?;
                }
            }
        }
        if index % 4096 == 0 {
            producer.poll(Duration::ZERO);
            progress.set_position(index);
        }
    }
    producer.flush(Duration::from_secs(300))?;
    progress.finish_and_clear();
    if !complete {
        println!(
            "filled {} with {} records in {:.1} s",
            topics.join(" and "),
            fill.records,
            started.elapsed().as_secs_f64()
        );
        for name in &topics {
            let filled = TopicLayout::fetch(kafka, name)?.map_or(0, |layout| layout.records());
            if filled != fill.records {
                bail!(
                    "{name} holds {filled} of {} records: deliveries failed",
                    fill.records
                );
            }
        }
    }
    let per_record = |bytes: u64| bytes as f64 / sample.max(1) as f64;
    Ok(Filled {
        recount,
        first_event: first_event.unwrap_or_else(|| mix.next_record().event),
        avro_bytes_per_record: per_record(avro_bytes),
        json_bytes_per_record: per_record(json_bytes),
    })
}

/// Sends one record, waiting while the producer's queue is full.
pub fn send(producer: &BaseProducer, topic: &str, key: &str, payload: &[u8]) -> Result<()> {
    let mut record = BaseRecord::<str, [u8]>::to(topic).key(key).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                producer.poll(Duration::from_millis(10));
            }
            Err((error, _)) => return Err(error.into()),
        }
    }
}

/// Topic deletion is asynchronous in the broker: waits until the metadata no longer has it.
async fn wait_until_gone(kafka: &KafkaConfig, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TopicLayout::fetch(kafka, name)?.is_some() {
        if Instant::now() > deadline {
            bail!("topic {name} still exists 60 s after its deletion");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
