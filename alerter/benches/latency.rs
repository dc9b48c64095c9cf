//! Enforcement latency on the local stack (`dev/stack up`): how long from a usage event being
//! produced to the decision it causes being on the control topic, and how much a runaway key
//! spends past its cap before gateways see the block.
//!
//! The aggregator (flush interval `--flush-ms`, default 500; policy totals published every
//! `--publish-ms`, default 20) and the alerter run in this process,
//! as the services would, on fresh topics and a fresh database; a watcher thread follows the
//! control topic like a gateway and notes when each block arrives.
//!
//! 1. **Maximum rate**: `--max-events` (default 300,000) events are produced as fast as possible
//!    over 5,000 API keys that never reach their cap; the pipeline's rate is the aggregator's
//!    counted events per second while it is saturated.
//! 2. **Latency at half that rate** (or `--load-rate`): the same background load for
//!    `--seconds` (default 30), plus a probe every 20 ms: one event of a fresh API key that reaches
//!    its cap alone. Latency = block seen on the control topic − probe handed to the producer.
//!    Reported: p50, p90, p99, max over all probes.
//! 3. **Overshoot**: a runaway key sends 0.01 USD events at `--runaway-rate` (default 2,000/s)
//!    against a 1 USD cap and stops as soon as the watcher sees its block (a gateway would refuse
//!    from then on). Overshoot = spend sent after the event that reached the cap.
//!
//! Run: `cargo bench -p alerter --bench latency` (add `-- --seconds 10` to shorten).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use infra::testkit;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use schemas::{ControlDecision, DecisionAction, UsageEvent};

const POLICY: &str = r#"
id: bench-cap
description: One dollar per API key and day in production.
owner: {team: bench, contact: bench@example.com}
environment: prod
unit: cost_usd
group_by: [api_key_id]
window: {kind: day}
hard_cap: 1
soft_alerts: []
action: {kind: block}
"#;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

/// Follows the control topic; notes when the first block of each API key arrives.
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
    // A reported cost: the aggregator recomputes any envelope (a reported cost wins).
    event.reported_cost_usd = Some(cost.parse().unwrap());
    event
}

fn send(producer: &BaseProducer, topic: &str, event: &UsageEvent) {
    let payload = schemas::encode(event).unwrap();
    let key = schemas::usage_event::partition_key(event).to_owned();
    loop {
        match producer.send(BaseRecord::to(topic).key(&key).payload(&payload)) {
            Ok(()) => return,
            Err((_, _)) => {
                producer.poll(Duration::from_millis(1));
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let seconds: u64 = arg("--seconds", 30);
    let max_events: u64 = arg("--max-events", 300_000);
    let flush_ms: u64 = arg("--flush-ms", 500);
    let publish_ms: u64 = arg("--publish-ms", 20);
    let runaway_rate: u64 = arg("--runaway-rate", 2_000);
    let load_rate_arg: u64 = arg("--load-rate", 0);

    let kafka = testkit::kafka_config("bench_latency");
    let clickhouse = testkit::clickhouse_config("bench_latency");
    infra::kafka::ensure_topics(&kafka, &infra::kafka::pipeline_topics(&kafka))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(testkit::unique_name("bench_policies"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("p.yaml"), POLICY).unwrap();

    let aggregator_config = aggregator::Config {
        kafka: kafka.clone(),
        clickhouse: clickhouse.clone(),
        http: infra::config::HttpConfig::with_port(0),
        group_id: testkit::unique_name("bench_agg"),
        aggregate: aggregator::config::AggregateConfig {
            policies_dir: Some(dir.clone()),
            flush_interval_ms: flush_ms,
            publish_interval_ms: publish_ms,
            ..Default::default()
        },
        ..aggregator::Config::default()
    };
    let mut alerter_config = alerter::Config {
        kafka: kafka.clone(),
        clickhouse: clickhouse.clone(),
        http: infra::config::HttpConfig::with_port(0),
        group_id: testkit::unique_name("bench_alerter"),
        ..Default::default()
    };
    alerter_config.alert.policies_dir = dir;
    alerter_config.alert.tick_interval_ms = 50;

    let shutdown = infra::shutdown::Shutdown::new();
    let service = aggregator::Aggregator::new(aggregator_config);
    let stats = service.stats();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let aggregating = tokio::spawn(service.run(listener, shutdown.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let alert_url = format!("http://{}/readyz", listener.local_addr().unwrap());
    let alerting = tokio::spawn(alerter::run_with_listener(
        alerter_config,
        listener,
        shutdown.clone(),
    ));
    testkit::eventually(Duration::from_secs(60), "alerter ready", || {
        let url = alert_url.clone();
        async move {
            reqwest::get(&url)
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
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
        infra::kafka::producer_config(&kafka, "bench-load")
            .set("linger.ms", "1")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .unwrap(),
    );
    let template = schemas::fixtures::text_event("template", Utc::now());
    let topic = kafka.topics.usage.clone();

    // 1. Maximum rate.
    let counted_before = stats.counted.load(Ordering::Relaxed);
    let started = Instant::now();
    let blaster = {
        let (producer, template, topic) = (producer.clone(), template.clone(), topic.clone());
        std::thread::spawn(move || {
            for n in 0..max_events {
                send(
                    &producer,
                    &topic,
                    &event(&template, n, &format!("bg-{}", n % 5000), "0.0001"),
                );
                if n % 1000 == 0 {
                    producer.poll(Duration::ZERO);
                }
            }
            producer.flush(Duration::from_secs(60)).unwrap();
        })
    };
    blaster.join().unwrap();
    let produced_in = started.elapsed();
    while stats.counted.load(Ordering::Relaxed) - counted_before < max_events {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "aggregator did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let max_rate = max_events as f64 / started.elapsed().as_secs_f64();
    println!(
        "max: {max_events} events produced in {:.1} s, counted by the aggregator in {:.1} s: {:.0} events/s",
        produced_in.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        max_rate
    );

    // 1b. Maximum sustained rate: the load generated on this machine at the same time, stepped
    // up until the aggregator no longer keeps pace (still counting 1 s after a 4 s step ended).
    let mut sustained = 0u64;
    let mut next_id = max_events;
    for rate in [
        2_000u64, 4_000, 8_000, 12_000, 16_000, 24_000, 32_000, 48_000,
    ] {
        let before = stats.counted.load(Ordering::Relaxed);
        let step = {
            let (producer, template, topic) = (producer.clone(), template.clone(), topic.clone());
            let first = next_id;
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut sent = 0u64;
                while started.elapsed() < Duration::from_secs(4) {
                    let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                    while sent < due {
                        let n = first + sent;
                        send(
                            &producer,
                            &topic,
                            &event(&template, n, &format!("bg-{}", n % 5000), "0.0001"),
                        );
                        sent += 1;
                    }
                    producer.poll(Duration::from_millis(1));
                }
                producer.flush(Duration::from_secs(60)).unwrap();
                sent
            })
        };
        let sent = step.join().unwrap();
        next_id += sent;
        let deadline = Instant::now() + Duration::from_secs(1);
        while stats.counted.load(Ordering::Relaxed) - before < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let kept_up = stats.counted.load(Ordering::Relaxed) - before >= sent;
        println!(
            "sustained: {rate} events/s for 4 s: {}",
            if kept_up { "kept pace" } else { "fell behind" }
        );
        // Let a backlog drain before the next step or phase.
        while stats.counted.load(Ordering::Relaxed) - before < sent {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !kept_up {
            break;
        }
        sustained = rate;
    }
    println!(
        "max sustained rate with the load generated on the same machine: {sustained} events/s"
    );

    // 2. Latency at half the maximum sustained rate.
    let load_rate = if load_rate_arg > 0 {
        load_rate_arg
    } else {
        (sustained.max(2) / 2).max(1)
    };
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
            let mut sent = 0u64;
            let mut probe = 0u64;
            while started.elapsed() < Duration::from_secs(seconds) {
                let due = (started.elapsed().as_secs_f64() * load_rate as f64) as u64;
                while sent < due {
                    send(
                        &producer,
                        &topic,
                        &event(
                            &template,
                            max_events + sent,
                            &format!("bg-{}", sent % 5000),
                            "0.0001",
                        ),
                    );
                    sent += 1;
                }
                let probes_due = started.elapsed().as_millis() as u64 / 20;
                while probe < probes_due {
                    let key = format!("probe-{probe}");
                    let at = Instant::now();
                    send(&producer, &topic, &event(&template, 0, &key, "1.00"));
                    probes.lock().unwrap().push((key, at));
                    probe += 1;
                }
                producer.poll(Duration::from_millis(1));
            }
            producer.flush(Duration::from_secs(60)).unwrap();
            sent
        })
    };
    let sent = load.join().unwrap();
    let probes = probes.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while probes
        .iter()
        .any(|(key, _)| !seen.lock().unwrap().contains_key(key))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen_now = seen.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = probes
        .iter()
        .filter_map(|(key, at)| {
            seen_now
                .get(key)
                .map(|seen| seen.saturating_duration_since(*at))
        })
        .collect();
    latencies.sort();
    println!(
        "latency at {load_rate} events/s background ({} sent in {seconds} s) with {} probes ({} blocked): p50 {} · p90 {} · p99 {} · max {}",
        sent,
        probes.len(),
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0)),
    );

    // 3. Overshoot of a runaway key.
    let interval = Duration::from_secs_f64(1.0 / runaway_rate as f64);
    let started = Instant::now();
    let mut sent_runaway = 0u64;
    let mut crossed_at = None;
    loop {
        if seen.lock().unwrap().contains_key("runaway") {
            break;
        }
        let due = (started.elapsed().as_secs_f64() / interval.as_secs_f64()) as u64 + 1;
        while sent_runaway < due {
            send(
                &producer,
                &topic,
                &event(&template, sent_runaway, "runaway", "0.01"),
            );
            sent_runaway += 1;
            if sent_runaway == 100 {
                crossed_at = Some(Instant::now());
            }
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_micros(200));
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the runaway key was never blocked"
        );
    }
    let blocked_after = crossed_at.map(|at| at.elapsed()).unwrap_or_default();
    let over = sent_runaway.saturating_sub(100);
    println!(
        "overshoot at {runaway_rate} events/s of 0.01 USD against a 1 USD cap: {over} events ({} USD) sent after the cap was reached; block seen {} after the crossing event",
        rust_decimal::Decimal::new(over as i64, 2),
        ms(blocked_after)
    );

    stop_watch.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    shutdown.cancel();
    let _ = aggregating.await;
    let _ = alerting.await;
    testkit::drop_database(&clickhouse).await.unwrap();
}
