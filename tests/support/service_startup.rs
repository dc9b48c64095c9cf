//! The startup checks every service must pass, shared by `ingest`, `aggregator` and `alerter`
//! (`<service>/tests/startup.rs` includes this file with `#[path]`). They run the real service against
//! the local Kafka and ClickHouse (`dev/stack up`); the caller gives it its own database and topics
//! (`infra::testkit`) and a closure that starts it on a bound listener.

use std::future::Future;
use std::time::Duration;

use infra::config::{ClickHouseConfig, KafkaConfig};
use infra::shutdown::Shutdown;
use infra::testkit;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use reqwest::StatusCode;
use tokio::net::TcpListener;
use tokio::time::timeout;

/// How long a service may take to migrate, create topics and report ready.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long a service may take to stop once shutdown is cancelled.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);
/// Nothing listens on port 1: a service configured with it never finishes creating its topics.
pub const UNREACHABLE_BROKERS: &str = "127.0.0.1:1";

/// Starts the service, waits for `/readyz` to answer 200, checks `/metrics` serves Prometheus text,
/// cancels shutdown and expects a clean stop within the deadline; then drops the database and topics.
pub async fn starts_serves_ops_endpoints_and_shuts_down<Run, Started, Error>(
    kafka: &KafkaConfig,
    clickhouse: &ClickHouseConfig,
    run: Run,
) where
    Run: FnOnce(TcpListener, Shutdown) -> Started,
    Started: Future<Output = Result<(), Error>> + Send + 'static,
    Error: std::fmt::Debug + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    let service = tokio::spawn(run(listener, shutdown.clone()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();

    testkit::eventually(READY_DEADLINE, "/readyz to answer 200", || async {
        let response = client.get(format!("{base_url}/readyz")).send().await.ok()?;
        (response.status() == StatusCode::OK).then_some(())
    })
    .await;
    let metrics = client
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let content_type = metrics
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .unwrap();
    assert!(
        content_type.as_bytes().starts_with(b"text/plain"),
        "{content_type:?}"
    );

    shutdown.cancel();
    let stopped = timeout(SHUTDOWN_DEADLINE, service).await;
    stopped
        .expect("service stops within the deadline")
        .expect("service task did not panic")
        .expect("service stops without error");
    testkit::drop_database(clickhouse).await.unwrap();
    delete_topics(kafka).await;
}

/// Starts the service against [`UNREACHABLE_BROKERS`] (the caller configures it): while it cannot
/// finish starting it must answer `/healthz` but not `/readyz`, and a shutdown must stop it promptly
/// and without error.
pub async fn is_not_ready_while_starting_and_stops_promptly_when_cancelled<Run, Started, Error>(
    clickhouse: &ClickHouseConfig,
    run: Run,
) where
    Run: FnOnce(TcpListener, Shutdown) -> Started,
    Started: Future<Output = Result<(), Error>> + Send + 'static,
    Error: std::fmt::Debug + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    let service = tokio::spawn(run(listener, shutdown.clone()));

    let readiness = reqwest::get(format!("{base_url}/readyz")).await.unwrap();
    assert_eq!(readiness.status(), StatusCode::SERVICE_UNAVAILABLE);
    let liveness = reqwest::get(format!("{base_url}/healthz")).await.unwrap();
    assert_eq!(liveness.status(), StatusCode::OK);

    shutdown.cancel();
    let stopped = timeout(SHUTDOWN_DEADLINE, service).await;
    stopped
        .expect("service stops within the deadline")
        .expect("service task did not panic")
        .expect("a shutdown during startup is not an error");
    testkit::drop_database(clickhouse).await.unwrap();
}

/// Deletes the topics the service created, so test runs do not pile up on the local broker.
async fn delete_topics(kafka: &KafkaConfig) {
    let admin: AdminClient<DefaultClientContext> =
        infra::kafka::client_config(kafka, "quotaflow-test")
            .create()
            .expect("admin client");
    let names: Vec<String> = infra::kafka::pipeline_topics(kafka)
        .into_iter()
        .map(|topic| topic.name)
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    admin
        .delete_topics(&names, &options)
        .await
        .expect("delete topics");
}
