//! Contender (c), in Rust: an rdkafka consumer that reads every record and does nothing with it,
//! in a child process (`bench raw-consume`), with the aggregator's consumer settings.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{Contender, Outcome, Stack};
use crate::process::MeasuredChild;
use crate::topic::TopicLayout;

/// Runs `bench raw-consume` (the executable `bench`) over `layout`.
pub async fn run(
    stack: &Stack,
    bench: &Path,
    layout: &TopicLayout,
    records: u64,
) -> Result<Outcome> {
    let servers_before = stack.server_cpu();
    let spawned = Instant::now();
    let child = Command::new(bench)
        .args([
            "raw-consume",
            "--brokers",
            &stack.kafka.brokers,
            "--topic",
            &layout.topic,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bench.display()))?;
    let child = MeasuredChild::new(child, spawned);
    let usage = tokio::task::spawn_blocking(move || child.wait()).await??;
    if !usage.success {
        bail!("raw-consume failed on {}", layout.topic);
    }
    Ok(Outcome::consumed(
        Contender::RawRdkafka,
        records,
        &usage,
        stack.server_cpu().since(servers_before),
    ))
}

/// The child's work: read every record of `topic` up to its current end once and drop it.
pub fn consume(brokers: &str, topic: &str) -> Result<()> {
    let kafka = infra::config::KafkaConfig {
        brokers: brokers.to_owned(),
        ..Default::default()
    };
    let layout = TopicLayout::fetch(&kafka, topic)?.with_context(|| format!("no topic {topic}"))?;
    let mut bytes = 0u64;
    let measured = crate::topic::consume_all(&kafka, &layout, "raw", |message| {
        bytes += rdkafka::Message::payload(message).map_or(0, <[u8]>::len) as u64;
        Ok(())
    })?;
    println!(
        "{} records, {bytes} payload bytes, {:.0} records/s",
        measured.events,
        measured.events_per_second()
    );
    Ok(())
}
