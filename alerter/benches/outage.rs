//! Enforcement through an outage (issue 13, point 5), on the local stack (`dev/stack up`):
//! ClickHouse is down for `--outage-secs` (default 300) and the Slack webhook answers each post
//! only after `--slack-delay-ms` (default 30,000). Meanwhile a background load runs
//! (`--load-rate`, default 1,000 events/s, never over a cap) and every `--probe-ms` (default
//! 10,000) a probe key sends one event that reaches its cap alone.
//!
//! Reported:
//! - probe latency during the outage: block seen on the control topic − probe handed to the
//!   producer (p50, p90, p99, max);
//! - after ClickHouse is back: how long until every block is in the `decisions` audit table;
//! - how long until Slack and PagerDuty received a notice naming every probe.
//!
//! The aggregator and the alerter run in this process, both with their ClickHouse behind one
//! [`testkit::FaultProxy`]; the control-topic watcher stands in for a gateway.
//!
//! Run: `cargo bench -p alerter --bench outage` (add `-- --outage-secs 60 --slack-delay-ms 5000`
//! for a short run).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alerter::receiver::Receiver;
use chrono::Utc;
use infra::secret::Secret;
use infra::testkit;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use schemas::{ControlDecision, DecisionAction, UsageEvent};

const POLICY: &str = r#"
id: outage-cap
description: One dollar per API key and day in production.
owner: {team: bench, contact: bench@example.com, pagerduty_service: bench-quota}
environment: prod
unit: cost_usd
group_by: [api_key_id]
window: {kind: day}
hard_cap: 1
soft_alerts: []
action: {kind: block}
"#;

const ROUTING_KEY: &str = "bench-routing-key-0123456789abcdef";

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

type Seen = Arc<Mutex<std::collections::HashMap<String, Instant>>>;

/// Follows the control topic like a gateway; notes when the first block of each key arrives.
fn watch(kafka: infra::config::KafkaConfig, seen: Seen, stop: Arc<AtomicBool>) {
    let consumer: BaseConsumer =
        infra::kafka::consumer_config(&kafka, "bench-watch", &testkit::unique_name("watch"))
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..kafka.topics.partitions {
        assignment
            .add_partition_offset(&kafka.topics.control, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(20)) {
            let at = Instant::now();
            if let Some(Ok(decision)) = message
                .payload()
                .map(schemas::codec::decode::<ControlDecision>)
            {
                if decision.action == DecisionAction::Block {
                    if let Some(key) = decision.scope.get("api_key_id") {
                        seen.lock().unwrap().entry(key.clone()).or_insert(at);
                    }
                }
            }
        }
    }
}

fn event(template: &UsageEvent, n: u64, key: &str, cost: &str) -> UsageEvent {
    let mut event = template.clone();
    event.event_id = format!("{key}-{n}");
    event.request_id = event.event_id.clone();
    event.action_id = event.event_id.clone();
    event.api_key_id = key.to_owned();
    event.occurred_at = Utc::now();
    event.reported_cost_usd = Some(cost.parse().unwrap());
    event
}

fn send(producer: &BaseProducer, topic: &str, event: &UsageEvent) {
    let payload = schemas::encode(event).unwrap();
    let key = schemas::usage_event::partition_key(event).to_owned();
    while producer
        .send(BaseRecord::to(topic).key(&key).payload(&payload))
        .is_err()
    {
        producer.poll(Duration::from_millis(1));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Whether `text` names `key` (`probe-1` is not named by `probe-12`).
fn names(text: &str, key: &str) -> bool {
    text.match_indices(key).any(|(at, _)| {
        !text[at + key.len()..]
            .chars()
            .next()
            .is_some_and(|next| next.is_ascii_digit())
    })
}

async fn count(clickhouse: &infra::config::ClickHouseConfig, sql: &str) -> u64 {
    infra::clickhouse::client(clickhouse)
        .query(sql)
        .fetch_one::<u64>()
        .await
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let outage_secs: u64 = arg("--outage-secs", 300);
    let slack_delay_ms: u64 = arg("--slack-delay-ms", 30_000);
    let load_rate: u64 = arg("--load-rate", 1_000);
    let probe_ms: u64 = arg("--probe-ms", 10_000);
    let drain_secs: u64 = arg("--drain-secs", 3_600);

    let kafka = testkit::kafka_config("bench_outage");
    let direct = testkit::clickhouse_config("bench_outage");
    infra::kafka::ensure_topics(&kafka, &infra::kafka::pipeline_topics(&kafka))
        .await
        .unwrap();
    infra::migrations::migrate(&direct).await.unwrap();
    let upstream: std::net::SocketAddr = direct.url.trim_start_matches("http://").parse().unwrap();
    let proxy = testkit::FaultProxy::start(upstream).await.unwrap();
    let mut proxied = direct.clone();
    proxied.url = format!("http://{}", proxy.addr());

    let receiver =
        Receiver::new(ROUTING_KEY).with_slack_delay(Duration::from_millis(slack_delay_ms));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver_url = format!("http://{}", listener.local_addr().unwrap());
    let app = receiver.router();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = std::env::temp_dir().join(testkit::unique_name("bench_policies"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("p.yaml"), POLICY).unwrap();
    let aggregator_config = aggregator::Config {
        kafka: kafka.clone(),
        clickhouse: proxied.clone(),
        http: infra::config::HttpConfig::with_port(0),
        group_id: testkit::unique_name("bench_agg"),
        aggregate: aggregator::config::AggregateConfig {
            policies_dir: Some(dir.clone()),
            ..Default::default()
        },
        ..aggregator::Config::default()
    };
    let mut alerter_config = alerter::Config {
        kafka: kafka.clone(),
        clickhouse: proxied.clone(),
        http: infra::config::HttpConfig::with_port(0),
        group_id: testkit::unique_name("bench_alerter"),
        ..Default::default()
    };
    alerter_config.alert.policies_dir = dir;
    alerter_config.notify.slack.fallback_webhook =
        Some(Secret::new(format!("{receiver_url}/slack")));
    alerter_config.notify.pagerduty.events_url = format!("{receiver_url}/pagerduty");
    alerter_config.notify.pagerduty.fallback_routing_key =
        Some(Secret::new(ROUTING_KEY.to_owned()));
    // A webhook that answers after 30 s is slow, not failed: each attempt may take that long.
    alerter_config.notify.retry.attempt_timeout_ms = slack_delay_ms + 15_000;

    let shutdown = infra::shutdown::Shutdown::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let aggregating = tokio::spawn(
        aggregator::Aggregator::new(aggregator_config).run(listener, shutdown.clone()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ready_url = format!("http://{}/readyz", listener.local_addr().unwrap());
    let alerting = tokio::spawn(alerter::run_with_listener(
        alerter_config,
        listener,
        shutdown.clone(),
    ));
    testkit::eventually(Duration::from_secs(60), "alerter ready", || {
        let url = ready_url.clone();
        async move {
            let response = reqwest::get(&url).await.ok()?;
            response.status().is_success().then_some(())
        }
    })
    .await;

    let seen: Seen = Arc::default();
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (kafka, seen, stop) = (kafka.clone(), seen.clone(), stop_watch.clone());
        std::thread::spawn(move || watch(kafka, seen, stop))
    };
    let producer: Arc<BaseProducer> = Arc::new(
        infra::kafka::producer_config(&kafka, "bench-outage")
            .set("linger.ms", "1")
            .create()
            .unwrap(),
    );
    let template = schemas::fixtures::text_event("template", Utc::now());
    let topic = kafka.topics.usage.clone();

    // A first probe with everything up, so every partition is assigned and warm.
    send(&producer, &topic, &event(&template, 0, "warm-up", "1.00"));
    producer.flush(Duration::from_secs(10)).unwrap();
    testkit::eventually(Duration::from_secs(60), "the warm-up block", || {
        let seen = seen.clone();
        async move { seen.lock().unwrap().contains_key("warm-up").then_some(()) }
    })
    .await;

    println!(
        "ClickHouse down for {outage_secs} s, Slack answering after {slack_delay_ms} ms, \
         background {load_rate} events/s, a probe every {probe_ms} ms"
    );
    proxy.set_down(true);
    let probes: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let load = {
        let (producer, template, topic, probes) = (
            producer.clone(),
            template.clone(),
            topic.clone(),
            probes.clone(),
        );
        std::thread::spawn(move || {
            let started = Instant::now();
            let (mut sent, mut probe) = (0u64, 0u64);
            while started.elapsed() < Duration::from_secs(outage_secs) {
                let due = (started.elapsed().as_secs_f64() * load_rate as f64) as u64;
                while sent < due {
                    let key = format!("bg-{}", sent % 5000);
                    send(&producer, &topic, &event(&template, sent, &key, "0.00001"));
                    sent += 1;
                }
                while probe <= started.elapsed().as_millis() as u64 / probe_ms {
                    let key = format!("probe-{probe}");
                    let at = Instant::now();
                    send(&producer, &topic, &event(&template, 0, &key, "1.00"));
                    producer.flush(Duration::from_secs(10)).unwrap();
                    probes.lock().unwrap().push((key, at));
                    probe += 1;
                }
                producer.poll(Duration::from_millis(1));
            }
            producer.flush(Duration::from_secs(60)).unwrap();
            sent
        })
    };
    let sent = tokio::task::spawn_blocking(move || load.join().unwrap())
        .await
        .unwrap();
    let probes = probes.lock().unwrap().clone();
    let seen_now = seen.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = probes
        .iter()
        .filter_map(|(key, at)| seen_now.get(key).map(|s| s.saturating_duration_since(*at)))
        .collect();
    latencies.sort();
    println!(
        "during the outage: {sent} background events, {} probes, {} blocked while ClickHouse was down: \
         p50 {} · p90 {} · p99 {} · max {}",
        probes.len(),
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0)),
    );
    let slack_during = receiver.captured().bodies("/slack").len();
    println!("Slack posts answered during the outage: {slack_during}");

    proxy.set_down(false);
    let back = Instant::now();
    let blocks = probes.len() as u64 + 1;
    let deadline = Duration::from_secs(drain_secs);
    let mut audited_after = None;
    let mut notified_after = None;
    while (audited_after.is_none() || notified_after.is_none()) && back.elapsed() < deadline {
        if audited_after.is_none() {
            let audited = count(
                &direct,
                "SELECT uniqExact(key) FROM decisions WHERE action = 'block' AND policy_id = 'outage-cap'",
            )
            .await;
            if audited >= blocks {
                audited_after = Some(back.elapsed());
                println!(
                    "every block in the decisions table {} after ClickHouse was back",
                    ms(back.elapsed())
                );
            }
        }
        if notified_after.is_none() {
            let captured = receiver.captured();
            let named = |path: &str, key: &str| {
                captured
                    .bodies(path)
                    .iter()
                    .any(|body| names(&body.to_string(), key))
            };
            if probes
                .iter()
                .all(|(key, _)| named("/slack", key) && named("/pagerduty", key))
            {
                notified_after = Some(back.elapsed());
                println!(
                    "every probe's Slack notice and PagerDuty page received {} after ClickHouse was back ({} Slack posts, {} PagerDuty events)",
                    ms(back.elapsed()),
                    captured.bodies("/slack").len(),
                    captured.bodies("/pagerduty").len()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if audited_after.is_none() || notified_after.is_none() {
        println!("NOT drained within {drain_secs} s: audit {audited_after:?}, notifications {notified_after:?}");
    }

    stop_watch.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    shutdown.cancel();
    let _ = aggregating.await;
    let _ = alerting.await;
    testkit::drop_database(&direct).await.unwrap();
}
