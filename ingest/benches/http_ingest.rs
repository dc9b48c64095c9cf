//! HTTP ingest throughput: batched JSON against the real service and the local Kafka.
//!
//! Starts `ingest::run_with_listener` (own topics and database, like the tests), then `CLIENTS`
//! concurrent clients each send their share of `BATCHES` requests of `BATCH` realistic events
//! (bodies serialized before the clock starts) and wait for every answer, which comes only after
//! Kafka acknowledged every event (`acks=all`). Prints events/s and request latency percentiles.
//!
//! ```sh
//! dev/stack up
//! cargo bench -p ingest --bench http_ingest
//! # knobs: HTTP_BENCH_CLIENTS (4), HTTP_BENCH_BATCH (500), HTTP_BENCH_BATCHES (200)
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use infra::secret::Secret;
use infra::shutdown::Shutdown;
use infra::testkit;
use schemas::UsageEvent;
use tokio::net::TcpListener;

const PRODUCER: &str = "bench-gateway";
const TOKEN: &str = "bench-token-5d1e";

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn event(run: &str, batch: usize, n: usize) -> UsageEvent {
    let id = format!("{run}-{batch}-{n}");
    UsageEvent {
        producer: PRODUCER.to_owned(),
        request_id: format!("req-{id}"),
        action_id: format!("act-{id}"),
        api_key_id: format!("key-{}", n % 50),
        team: ["search", "support", "growth", "research"][n % 4].to_owned(),
        workflow: "answer-question".to_owned(),
        user_id: Some(format!("user-{}", n % 1000)),
        customer_id: Some(format!("customer-{}", n % 100)),
        input_tokens: 800 + (n as u64 % 4000),
        output_tokens: 100 + (n as u64 % 900),
        cached_input_tokens: 200,
        accepted: Some(true),
        estimated_cost_usd: Some("0.0065".parse().unwrap()),
        latency_ms: Some(840),
        labels: BTreeMap::from([
            ("feature".to_owned(), "semantic-search".to_owned()),
            ("tier".to_owned(), "enterprise".to_owned()),
        ]),
        ..schemas::fixtures::text_event(&id.clone(), Utc::now())
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() {
    let clients = knob("HTTP_BENCH_CLIENTS", 4);
    let batch = knob("HTTP_BENCH_BATCH", 500);
    let batches = knob("HTTP_BENCH_BATCHES", 200);

    let mut config = ingest::Config {
        kafka: testkit::kafka_config("http_bench"),
        clickhouse: testkit::clickhouse_config("http_bench"),
        ..ingest::Config::default()
    };
    config.api.tokens = BTreeMap::from([(PRODUCER.to_owned(), Secret::new(TOKEN))]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    let service = tokio::spawn(ingest::run_with_listener(
        config.clone(),
        listener,
        shutdown.clone(),
    ));
    let client = reqwest::Client::new();
    testkit::eventually(Duration::from_secs(60), "/readyz", || async {
        let response = client.get(format!("{base_url}/readyz")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;

    let run = testkit::unique_name("bench");
    let bodies: Vec<Vec<u8>> = (0..batches)
        .map(|b| {
            let events: Vec<UsageEvent> = (0..batch).map(|n| event(&run, b, n)).collect();
            serde_json::to_vec(&events).unwrap()
        })
        .collect();
    let body_bytes: usize = bodies.iter().map(Vec::len).sum();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for client_index in 0..clients {
        let mine: Vec<Vec<u8>> = bodies
            .iter()
            .skip(client_index)
            .step_by(clients)
            .cloned()
            .collect();
        let client = client.clone();
        let url = format!("{base_url}/v1/events");
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for body in mine {
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
                response.bytes().await.unwrap();
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();

    let events = batches * batch;
    println!(
        "http_ingest: {events} events in {batches} JSON batches of {batch}, {clients} clients, \
         {:.1} MiB of bodies",
        body_bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "  {:.2} s, {:.0} events/s, {:.1} MiB/s; request latency p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
        body_bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies.last().unwrap(),
    );

    shutdown.cancel();
    service.await.unwrap().unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
    delete_topics(&config.kafka).await;
}

async fn delete_topics(kafka: &infra::config::KafkaConfig) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        infra::kafka::client_config(kafka, "quotaflow-test")
            .create()
            .unwrap();
    let names: Vec<String> = infra::kafka::pipeline_topics(kafka)
        .into_iter()
        .map(|topic| topic.name)
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    admin
        .delete_topics(&names, &AdminOptions::new())
        .await
        .unwrap();
}
