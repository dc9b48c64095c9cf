//! Helpers for tests on the real local stack (CONVENTIONS.md §12): every test gets its own topics and
//! its own ClickHouse database, so tests run in parallel and never see each other's data. Addresses
//! come from `QUOTAFLOW_TEST_KAFKA` and `QUOTAFLOW_TEST_CLICKHOUSE`, defaulting to `dev/stack`'s.
//!
//! [`secure_kafka_config`] points a test at the SASL_SSL listener of `dev/stack up --secure`
//! (`QUOTAFLOW_TEST_KAFKA_SECURE`, `QUOTAFLOW_TEST_KAFKA_CA`, `QUOTAFLOW_TEST_KAFKA_USER`,
//! `QUOTAFLOW_TEST_KAFKA_PASSWORD`, defaulting to what that command sets up).
//!
//! [`FaultProxy`] stands between a service and one of those servers, to take it down in a test.

mod fault_proxy;
mod log_capture;
mod secure;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::{ClickHouseConfig, KafkaConfig, TopicsConfig};

pub use fault_proxy::FaultProxy;
pub use log_capture::{capture_logs, CapturedLogs};
pub use secure::{secure_kafka_config, SecureListener};

/// A name unique to this process and call, e.g. `t_raw_4f2a9c_3`, safe as a topic or database name.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}_{:x}{:x}_{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fails the calling test at once, saying what to do, when nothing listens at `address`
/// (`host:port`): a test of the live stack run without it would otherwise wait out its deadlines
/// and fail with a timeout that names no cause. Live tests are behind each crate's `live` feature
/// (`dev/test` enables it after `dev/stack up`).
pub fn require_listener(what: &str, address: &str) {
    use std::net::{TcpStream, ToSocketAddrs};
    let reachable = address.to_socket_addrs().is_ok_and(|mut addresses| {
        addresses.any(|socket| TcpStream::connect_timeout(&socket, Duration::from_secs(2)).is_ok())
    });
    assert!(
        reachable,
        "this test needs the local stack: nothing listens for {what} at {address}; start it with \
         `dev/stack up` (or run `dev/test`, which does), or leave out the `live` feature"
    );
}

/// The `host:port` of the first broker or of an `http://host:port` URL.
fn listener_address(address: &str) -> &str {
    let address = address.split(',').next().unwrap_or(address);
    let address = address
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    address.split('/').next().unwrap_or(address)
}

/// Kafka config for a test: the local broker and topic names no other test uses. Fails the test
/// at once when no broker listens there ([`require_listener`]).
pub fn kafka_config(test: &str) -> KafkaConfig {
    let run = unique_name(test);
    let brokers =
        std::env::var("QUOTAFLOW_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_string());
    require_listener("Kafka", listener_address(&brokers));
    KafkaConfig {
        brokers,
        topics: TopicsConfig {
            usage: format!("{run}.usage"),
            dead_letter: format!("{run}.deadletter"),
            totals: format!("{run}.totals"),
            control: format!("{run}.control"),
            alerts: format!("{run}.alerts"),
            approvals: format!("{run}.approvals"),
            partitions: 3,
            replication: Default::default(),
        },
        ..KafkaConfig::default()
    }
}

/// ClickHouse config for a test: the local server and a database no other test uses
/// (created by the migrations; drop it with [`drop_database`]). Fails the test at once when no
/// server listens there ([`require_listener`]).
pub fn clickhouse_config(test: &str) -> ClickHouseConfig {
    let url = std::env::var("QUOTAFLOW_TEST_CLICKHOUSE")
        .unwrap_or_else(|_| "http://127.0.0.1:8123".to_string());
    require_listener("ClickHouse", listener_address(&url));
    ClickHouseConfig {
        url,
        database: unique_name(&format!("t_{test}")),
        ..ClickHouseConfig::default()
    }
}

/// Drops a test's database. Retries for a few seconds: on 18.16 a DROP that races a CREATE TABLE
/// still running for a just-cancelled client fails with "Directory not empty".
pub async fn drop_database(config: &ClickHouseConfig) -> crate::Result<()> {
    let client = crate::clickhouse::server_client(config);
    let statement = format!("DROP DATABASE IF EXISTS `{}`", config.database);
    let started = Instant::now();
    loop {
        match client.query(&statement).execute().await {
            Ok(()) => return Ok(()),
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Polls `check` until it yields `Some`, or fails after `deadline` with `what` in the message.
/// This is how tests wait: on an observable condition with a deadline, never on a fixed sleep.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Puts `clickhouse` behind a [`FaultProxy`] the test can take down: `clickhouse` then points at
/// the proxy; returns the proxy and the direct settings (to check tables while it is down).
pub async fn clickhouse_behind_proxy(
    clickhouse: &mut ClickHouseConfig,
) -> std::io::Result<(FaultProxy, ClickHouseConfig)> {
    let upstream: std::net::SocketAddr = clickhouse
        .url
        .trim_start_matches("http://")
        .parse()
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
    let proxy = FaultProxy::start(upstream).await?;
    let direct = clickhouse.clone();
    clickhouse.url = format!("http://{}", proxy.addr());
    Ok((proxy, direct))
}

/// Publishes `decision` on the control `topic` under its key and waits for the acknowledgement.
pub async fn publish_decision(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    decision: &schemas::ControlDecision,
) {
    let payload = schemas::encode(decision).expect("encodable decision");
    producer
        .send(
            rdkafka::producer::FutureRecord::to(topic)
                .key(&decision.key)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| error)
        .expect("delivered");
}
