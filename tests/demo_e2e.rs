//! The main job end to end on the real stack, in process: ingest (HTTP API and raw archive), the
//! aggregator and the alerter run with the demo's policies and price catalog, the alerter notifies a
//! local Slack/PagerDuty receiver that checks every payload, and the demo's scripted run
//! (`demo::run`, what `dev/demo` runs) drives a short workload through the simulated gateway.
//!
//! Every scenario must end with its expected outcome: the runaway staging loop is cut off and its
//! soft ladder fires once per threshold, its page is triggered and resolved by the approval, the
//! approval lifts the block and the raised cap blocks again (the loop calls through a real NGINX
//! asking the decision sidecar, which also refuses its one oversized context at admission), the fallback storm blocks the fallback
//! route only, the deprecated model is refused in prod, the aggregator's totals equal a recount,
//! and `quotactl replay` reproduces, on this run's history, every decision the live alerter made.
//! The overshoot of the loop is a measured figure (it depends on the machine's speed), reported
//! but not asserted; `dev/demo` and `docs/benchmarks.md` report it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use infra::config::HttpConfig;
use infra::secret::Secret;
use infra::shutdown::Shutdown;
use infra::testkit;

const TOKEN: &str = "demo-e2e-token-0123456789";
const ROUTING_KEY: &str = "demoE2eRoutingKey0123456789abcdef";

async fn wait_ready(name: &str, base: &str, handle: &tokio::task::JoinHandle<impl Sized>) {
    let url = format!("{base}/readyz");
    testkit::eventually(Duration::from_secs(60), name, || {
        assert!(!handle.is_finished(), "{name} stopped while starting");
        let url = url.clone();
        async move {
            let response = reqwest::get(&url).await.ok()?;
            response.status().is_success().then_some(())
        }
    })
    .await;
}

async fn listener() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    (listener, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn the_demo_scenarios_end_as_expected_and_replay_reproduces_the_live_decisions() {
    let kafka = testkit::kafka_config("demo_e2e");
    let clickhouse = testkit::clickhouse_config("demo_e2e");
    // A fresh key for alice, in a copy of the demo policies (as dev/demo does).
    let run_dir = std::env::temp_dir().join(testkit::unique_name("demo_e2e"));
    let (policies, approver_key) =
        demo::keys::with_fresh_approver_key(&PathBuf::from("demo/policies"), &run_dir)
            .expect("demo policies with a fresh approver key");
    let catalog = PathBuf::from("demo/catalog.json");
    let shutdown = Shutdown::new();

    let receiver = alerter::receiver::Receiver::new(ROUTING_KEY);
    let (receiver_listener, receiver_url) = listener().await;
    let router = receiver.router();
    tokio::spawn(async move { axum::serve(receiver_listener, router).await });

    let mut ingest_config = ingest::Config {
        kafka: kafka.clone(),
        clickhouse: clickhouse.clone(),
        http: HttpConfig::with_port(0),
        ..ingest::Config::default()
    };
    ingest_config
        .api
        .tokens
        .insert("demo".to_owned(), Secret::new(TOKEN));
    ingest_config.pricing.catalog_path = Some(catalog.clone());
    let (ingest_listener, ingest_url) = listener().await;
    let ingest = tokio::spawn(ingest::run_with_listener(
        ingest_config.clone(),
        ingest_listener,
        shutdown.clone(),
    ));
    wait_ready("ingest", &ingest_url, &ingest).await;
    let archive_config = quotaflow_archiver::Config {
        kafka: ingest_config.kafka.clone(),
        clickhouse: ingest_config.clickhouse.clone(),
        validation: ingest_config.validation.clone(),
        pricing: ingest_config.pricing.clone(),
        ..quotaflow_archiver::Config::default()
    };
    let archive_shutdown = shutdown.clone();
    let archive =
        tokio::spawn(
            async move { quotaflow_archiver::run(&archive_config, archive_shutdown).await },
        );

    let mut aggregator_config = aggregator::Config {
        kafka: kafka.clone(),
        clickhouse: clickhouse.clone(),
        http: HttpConfig::with_port(0),
        group_id: testkit::unique_name("demo_e2e_aggregator"),
        ..aggregator::Config::default()
    };
    aggregator_config.aggregate.policies_dir = Some(policies.clone());
    // The aggregator prices every record again (ingest::admission): the same catalog as ingest's.
    aggregator_config.pricing.catalog_path = Some(catalog.clone());
    let (aggregator_listener, aggregator_url) = listener().await;
    let aggregator = tokio::spawn(aggregator::run_with_listener(
        aggregator_config,
        aggregator_listener,
        shutdown.clone(),
    ));
    wait_ready("aggregator", &aggregator_url, &aggregator).await;

    let mut alerter_config = alerter::Config {
        kafka: kafka.clone(),
        clickhouse: clickhouse.clone(),
        http: HttpConfig::with_port(0),
        group_id: testkit::unique_name("demo_e2e_alerter"),
        ..alerter::Config::default()
    };
    alerter_config.alert.policies_dir = policies.clone();
    alerter_config.alert.catalog_path = Some(catalog.clone());
    // As dev/demo runs it: anomaly baselines of 2 s buckets, so a short run has one.
    alerter_config.alert.anomaly.bucket_secs = 2;
    alerter_config.alert.anomaly.min_history = 5;
    alerter_config.notify.slack.fallback_webhook =
        Some(Secret::new(format!("{receiver_url}/slack")));
    alerter_config.notify.pagerduty.events_url = format!("{receiver_url}/pagerduty");
    alerter_config.notify.pagerduty.fallback_routing_key = Some(Secret::new(ROUTING_KEY));
    let (alerter_listener, alerter_url) = listener().await;
    let alerter = tokio::spawn(alerter::run_with_listener(
        alerter_config.clone(),
        alerter_listener,
        shutdown.clone(),
    ));
    wait_ready("alerter", &alerter_url, &alerter).await;

    // The decision sidecar the demo's NGINX asks about the loop's calls, as dev/demo runs it.
    let mut decide_config = quotaflow_decide::Config::default();
    decide_config.gateway.kafka = kafka.clone();
    decide_config.gateway.failure_mode = gateway::FailureMode::Closed;
    decide_config.grpc.listen = None;
    decide_config.answers.deny_status = 403;
    decide_config.policies_dir = Some(policies);
    let (decide_listener, decide_url) = listener().await;
    let decide = tokio::spawn(quotaflow_decide::run_with_listener(
        decide_config,
        decide_listener,
        shutdown.clone(),
    ));
    wait_ready("decide", &decide_url, &decide).await;

    let args = demo::run::Args::parse_from([
        "quotaflow-demo",
        "--ingest-url",
        &ingest_url,
        "--token",
        TOKEN,
        // 25 s: the storm (30 % of it) lasts 7.5 s and crosses its budget after about 4.7 s.
        "--duration",
        "25",
        "--rate",
        "100",
        "--clickhouse-url",
        &clickhouse.url,
        "--database",
        &clickhouse.database,
        "--catalog",
        catalog.to_str().unwrap(),
        "--receiver-url",
        &receiver_url,
        "--approver-key-file",
        approver_key.to_str().unwrap(),
        "--sidecar",
        decide_url.trim_start_matches("http://"),
    ]);
    let outcomes = demo::run::run(&args, &alerter_config)
        .await
        .expect("the demo runs");
    let names: Vec<&str> = outcomes.iter().map(|outcome| outcome.name).collect();
    assert_eq!(
        names,
        [
            "runaway loop cut off",
            "oversized context refused",
            "soft-alert ladder",
            "hard cap paged",
            "prompt growth flagged",
            "video backlog paged",
            "approval lifted block",
            "fallback storm tripped",
            "deprecated model blocked",
            "totals exact",
            "replay reproduces live",
        ]
    );
    for outcome in &outcomes {
        assert!(
            outcome.ok || outcome.timed,
            "{}: {}",
            outcome.name,
            outcome.detail
        );
    }
    assert!(receiver.captured().refused.is_empty());

    shutdown.cancel();
    stopped("ingest", ingest).await;
    stopped("aggregator", aggregator).await;
    stopped("alerter", alerter).await;
    stopped("decide", decide).await;
    let _ = tokio::time::timeout(Duration::from_secs(30), archive).await;
    testkit::drop_database(&clickhouse).await.unwrap();
}

/// Waits for a service to stop after the shutdown, and checks it stopped cleanly.
async fn stopped<E: std::fmt::Debug>(name: &str, handle: tokio::task::JoinHandle<Result<(), E>>) {
    let result = tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .unwrap_or_else(|_| panic!("{name} did not stop"));
    assert!(matches!(result, Ok(Ok(()))), "{name} ended with {result:?}");
}
