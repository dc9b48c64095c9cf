//! Starts the real service against the local Kafka and ClickHouse (`dev/stack up`) with its own
//! database and topics, and runs the startup checks every service shares.

#[path = "../../tests/support/service_startup.rs"]
mod service_startup;

use aggregator::Config;
use infra::config::HttpConfig;
use infra::testkit;

/// The local stack, with a database, topics and consumer group no other test uses.
fn isolated_config() -> Config {
    Config {
        kafka: testkit::kafka_config("aggregator"),
        clickhouse: testkit::clickhouse_config("aggregator"),
        http: HttpConfig::with_port(0),
        group_id: testkit::unique_name("t_aggregator_group"),
        ..Config::default()
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn starts_serves_ops_endpoints_and_shuts_down() {
    let config = isolated_config();
    let run =
        |listener, shutdown| aggregator::run_with_listener(config.clone(), listener, shutdown);
    service_startup::starts_serves_ops_endpoints_and_shuts_down(
        &config.kafka,
        &config.clickhouse,
        run,
    )
    .await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn is_not_ready_while_starting_and_stops_promptly_when_cancelled() {
    let mut config = isolated_config();
    config.kafka.brokers = service_startup::UNREACHABLE_BROKERS.to_string();
    let run =
        |listener, shutdown| aggregator::run_with_listener(config.clone(), listener, shutdown);
    service_startup::is_not_ready_while_starting_and_stops_promptly_when_cancelled(
        &config.clickhouse,
        run,
    )
    .await;
}
