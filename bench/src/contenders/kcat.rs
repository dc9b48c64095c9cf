//! Contender (c), in C: Debian's `kcat` (librdkafka) reading a topic from the beginning to the
//! end (`-e`) into `/dev/null`, without a consumer group.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{Contender, Outcome, Stack};
use crate::process::MeasuredChild;

/// Runs `kcat` over `topic` (holding `records` benchmark records).
pub async fn run(
    stack: &Stack,
    contender: Contender,
    topic: &str,
    records: u64,
) -> Result<Outcome> {
    let servers_before = stack.server_cpu();
    let spawned = Instant::now();
    let child = Command::new("kcat")
        .args(["-C", "-b", &stack.kafka.brokers, "-t", topic])
        .args(["-o", "beginning", "-e", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting kcat (apt-get install -y kcat)")?;
    let child = MeasuredChild::new(child, spawned);
    let usage = tokio::task::spawn_blocking(move || child.wait()).await??;
    if !usage.success {
        bail!("kcat failed on {topic}");
    }
    Ok(Outcome::consumed(
        contender,
        records,
        &usage,
        stack.server_cpu().since(servers_before),
    ))
}
