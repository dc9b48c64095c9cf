//! The contenders, each run over the same pre-filled records, and what is measured of each.
//!
//! - [`kcat`]: Debian's `kcat -C -e` to `/dev/null`, a C consumer (librdkafka): the ceiling.
//! - [`raw`]: a do-nothing rdkafka consumer in a child process, with the aggregator's consumer
//!   settings: the ceiling for a Rust consumer.
//! - [`aggregator`]: this pipeline's aggregator, the release binary, exactly-once path.
//! - [`kafka_engine`]: ClickHouse's Kafka table engine and a materialized view.
//!
//! Each runs as its own process (the Kafka engine inside the ClickHouse server), so CPU time and
//! peak RSS are the process's own: `wait4` for children; for the ClickHouse server, `/proc`
//! deltas over the run. The server's and the broker's CPU are measured for every contender.

pub mod aggregator;
pub mod kafka_engine;
pub mod kcat;
pub mod raw;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use infra::config::KafkaConfig;
use rdkafka::producer::{BaseProducer, Producer};

use crate::clickhouse_http::ClickHouse;
use crate::process;

/// The servers the contenders use.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Kafka addresses and client properties.
    pub kafka: KafkaConfig,
    /// ClickHouse's HTTP URL.
    pub clickhouse_url: String,
    /// ClickHouse client.
    pub clickhouse: ClickHouse,
    /// The ClickHouse server process, if it runs on this machine.
    pub clickhouse_pid: Option<i32>,
    /// The Kafka broker process, if it runs on this machine.
    pub broker_pid: Option<i32>,
}

impl Stack {
    /// The stack at these addresses; server processes are looked up in `/proc`.
    pub fn new(brokers: &str, clickhouse_url: &str) -> Stack {
        let kafka = KafkaConfig {
            brokers: brokers.to_owned(),
            ..KafkaConfig::default()
        };
        Stack {
            kafka,
            clickhouse_url: clickhouse_url.to_owned(),
            clickhouse: ClickHouse::new(clickhouse_url),
            clickhouse_pid: process::find_process("clickhouse-serv", "clickhouse-server"),
            broker_pid: process::find_process("java", "kafka"),
        }
    }

    /// CPU used so far by the ClickHouse server and the broker.
    pub fn server_cpu(&self) -> ServerCpu {
        let cpu = |pid: Option<i32>| {
            pid.and_then(|pid| process::cpu_time(pid).ok())
                .unwrap_or_default()
        };
        ServerCpu {
            clickhouse: cpu(self.clickhouse_pid),
            broker: cpu(self.broker_pid),
        }
    }
}

/// CPU time of the servers at one moment, or used over an interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerCpu {
    /// The ClickHouse server.
    pub clickhouse: Duration,
    /// The Kafka broker.
    pub broker: Duration,
}

impl ServerCpu {
    /// What was used since `earlier`.
    pub fn since(self, earlier: ServerCpu) -> ServerCpu {
        ServerCpu {
            clickhouse: self.clickhouse.saturating_sub(earlier.clickhouse),
            broker: self.broker.saturating_sub(earlier.broker),
        }
    }
}

/// Which contender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Contender {
    /// `kcat` on the Avro topic.
    KcatAvro,
    /// `kcat` on the JSON topic.
    KcatJson,
    /// rdkafka do-nothing consumer on the Avro topic.
    RawRdkafka,
    /// This pipeline's aggregator.
    Aggregator,
    /// ClickHouse's Kafka engine and materialized view.
    KafkaEngine,
}

impl Contender {
    /// The row label.
    pub fn label(self) -> &'static str {
        match self {
            Contender::KcatAvro => "(c) kcat -C, Avro topic",
            Contender::KcatJson => "(c) kcat -C, JSON topic",
            Contender::RawRdkafka => "(c) rdkafka, do nothing",
            Contender::Aggregator => "(a) aggregator, exactly once",
            Contender::KafkaEngine => "(b) ClickHouse Kafka engine + MV",
        }
    }
}

/// What one run of one contender measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Which contender.
    pub contender: Contender,
    /// Records read (the topic's, freshness markers of earlier runs left out).
    pub records: u64,
    /// From the start (process spawn, or the view's creation) until every record was consumed
    /// (raw consumers) or every total was visible in ClickHouse.
    pub wall: Duration,
    /// CPU time of the contender's own process, if it has one.
    pub process_cpu: Option<Duration>,
    /// CPU time of the servers over `wall`.
    pub servers: ServerCpu,
    /// Peak RSS of the contender's process; for the Kafka engine, the ClickHouse server's peak
    /// minus its RSS at the start.
    pub peak_rss_bytes: Option<u64>,
    /// Median time from producing a marker event to its total being visible.
    pub freshness: Option<Duration>,
    /// Totals against the distinct-events recount.
    pub correctness: Option<String>,
}

impl Outcome {
    /// A raw consumer's run: its process read `records` (no totals, no freshness).
    pub fn consumed(
        contender: Contender,
        records: u64,
        usage: &crate::process::ChildUsage,
        servers: ServerCpu,
    ) -> Outcome {
        Outcome {
            contender,
            records,
            wall: usage.wall,
            process_cpu: Some(usage.cpu),
            servers,
            peak_rss_bytes: Some(usage.max_rss_bytes),
            freshness: None,
            correctness: None,
        }
    }

    /// Records per second over `wall`.
    pub fn events_per_second(&self) -> f64 {
        self.records as f64 / self.wall.as_secs_f64()
    }
}

/// Produces `count` markers, one at a time: `encode(name)` gives the record (key, payload) for
/// marker `name`, `visible(name)` whether its total can be read. Returns the median time from the
/// send to visibility.
pub async fn measure_freshness<V, F>(
    stack: &Stack,
    topic: &str,
    run: &str,
    count: usize,
    encode: impl Fn(&str) -> Result<(String, Vec<u8>)>,
    mut visible: V,
) -> Result<Option<Duration>>
where
    V: FnMut(String) -> F,
    F: std::future::Future<Output = Result<bool>>,
{
    if count == 0 {
        return Ok(None);
    }
    // Latency-bound like a gateway, not a bulk load: no linger.
    let mut config = infra::kafka::producer_config(&stack.kafka, "quotaflow-bench-marker");
    config.set("linger.ms", "0");
    let producer: BaseProducer = config.create()?;
    let mut times = Vec::with_capacity(count);
    for index in 0..count {
        let name = format!("{run}-marker-{index}");
        let (key, payload) = encode(&name)?;
        let sent = Instant::now();
        crate::prefill::send(&producer, topic, &key, &payload)?;
        producer.flush(Duration::from_secs(10))?;
        let deadline = sent + Duration::from_secs(60);
        loop {
            if visible(name.clone()).await? {
                times.push(sent.elapsed());
                break;
            }
            if Instant::now() > deadline {
                bail!("marker {name} not visible after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    times.sort();
    Ok(Some(times[times.len() / 2]))
}
