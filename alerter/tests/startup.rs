//! Starts the real service against the local Kafka and ClickHouse (`dev/stack up`) with its own
//! database and topics, and runs the startup checks every service shares.

#[path = "../../tests/support/service_startup.rs"]
mod service_startup;

use alerter::Config;
use infra::config::HttpConfig;
use infra::testkit;

/// The local stack, with a database, topics and consumer group no other test uses.
fn isolated_config() -> Config {
    let mut config = Config {
        kafka: testkit::kafka_config("alerter"),
        clickhouse: testkit::clickhouse_config("alerter"),
        http: HttpConfig::with_port(0),
        group_id: testkit::unique_name("t_alerter_group"),
        ..Config::default()
    };
    config.alert.policies_dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/examples");
    config
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn starts_serves_ops_endpoints_and_shuts_down() {
    let config = isolated_config();
    let run = |listener, shutdown| alerter::run_with_listener(config.clone(), listener, shutdown);
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
    let run = |listener, shutdown| alerter::run_with_listener(config.clone(), listener, shutdown);
    service_startup::is_not_ready_while_starting_and_stops_promptly_when_cancelled(
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
async fn an_unreadable_notify_ca_file_stops_the_start_with_a_config_error() {
    let mut config = isolated_config();
    let missing = std::env::temp_dir().join(format!("{}.pem", testkit::unique_name("no_ca")));
    config.notify.ca_file = Some(missing.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();

    let stopped = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        alerter::run_with_listener(config, listener, infra::shutdown::Shutdown::new()),
    )
    .await
    .expect("the alerter stops by itself");

    let error = stopped.unwrap_err();
    assert!(matches!(error, alerter::Error::Config(_)), "{error:?}");
    assert!(!error.is_retryable());
    let message = error.to_string();
    assert!(
        message.contains("ca_file") && message.contains(&missing.display().to_string()),
        "{message}"
    );
}
