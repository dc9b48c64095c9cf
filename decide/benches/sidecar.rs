//! The decision sidecar's latency and throughput on loopback, over HTTP forward-auth and Envoy
//! ext_authz (gRPC), with 100,000 decisions in force, against the in-process check
//! (docs/benchmarks.md, "Decision sidecar").
//!
//! `cargo bench -p quotaflow-decide --bench sidecar [-- --rate 10000 --seconds 5]
//! [--policies 20] [--quota-headers 1] [--grpc-channels 2]`
//!
//! In process it also times the remaining-quota answer every check carries as `RateLimit-*`
//! headers (`Scopes::tightest`) with `--policies` windowed policies matching every request;
//! `--quota-headers 1` serves the surfaces with those policies, so every answer carries them.
//!
//! Open loop: requests are sent on a fixed schedule (`--rate` per second for `--seconds`) without
//! waiting for answers, each timed from its send, so a stalled server shows up in the tail
//! instead of slowing the load down (the schedule's timer ticks per millisecond, so requests go
//! in bursts of `rate / 1000`). Then a closed loop (64 in flight) for the most checks per
//! second. Client and sidecar share this machine's cores.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use gateway::RequestAttributes;
use infra::shutdown::Shutdown;
use quotaflow_decide::{Checker, Config, FixedView};
use schemas::{ControlDecision, DecisionAction};

const DECISIONS: usize = 100_000;

fn view() -> FixedView {
    let view = FixedView::default();
    let now = Utc::now();
    {
        let mut held = view.0.write().unwrap();
        for index in 0..DECISIONS {
            let scope: BTreeMap<String, String> = match index % 4 {
                0 => [("team".to_owned(), format!("team-{index}"))].into(),
                1 => [("api_key_id".to_owned(), format!("key-{index}"))].into(),
                2 => [
                    ("customer_id".to_owned(), format!("customer-{index}")),
                    ("model".to_owned(), format!("model-{}", index % 37)),
                ]
                .into(),
                _ => [("user_id".to_owned(), format!("user-{index}"))].into(),
            };
            let decision = ControlDecision {
                action: if index % 3 == 0 {
                    DecisionAction::Degrade
                } else {
                    DecisionAction::Block
                },
                degrade_to: Some("gpt-4o-mini".to_owned()),
                window_start: now - TimeDelta::hours(1),
                window_end: now + TimeDelta::hours(1),
                ..schemas::fixtures::block_decision(
                    &format!("policy-{}", index % 50),
                    scope,
                    Vec::new(),
                    now,
                )
            };
            held.apply(&decision);
        }
        assert_eq!(held.len(), DECISIONS);
    }
    view
}

/// Windowed policies the remaining-quota answers evaluate per check (`--policies`): spend per
/// API key, per team and per user, in prod and everywhere, by day, hour and month.
fn policy_texts(count: usize) -> Vec<String> {
    (0..count)
        .map(|index| {
            let group_by = ["api_key_id", "team", "user_id"][index % 3];
            let window = ["day", "hour", "month"][index % 3];
            let environment = if index % 2 == 0 { "environment: prod\n" } else { "" };
            format!(
                "id: quota-{index}\nowner: {{team: t, contact: t@example.com}}\ndescription: bench\n\
                 {environment}unit: cost_usd\ngroup_by: [{group_by}]\nwindow: {{kind: {window}}}\n\
                 hard_cap: 100\naction: {{kind: block}}\n"
            )
        })
        .collect()
}

/// The headers of request `index`: every fourth names a blocked key, the rest allowed ones.
fn headers(index: usize) -> Vec<(&'static str, String)> {
    let key = if index.is_multiple_of(4) {
        format!("key-{}", (index * 4 + 1) % DECISIONS)
    } else {
        format!("free-key-{index}")
    };
    vec![
        ("x-quotaflow-api-key", key),
        ("x-quotaflow-team", format!("free-team-{}", index % 7)),
        ("x-quotaflow-model", "gpt-4o".to_owned()),
        ("x-quotaflow-environment", "prod".to_owned()),
        ("x-quotaflow-user", format!("free-user-{index}")),
    ]
}

struct Summary {
    count: usize,
    seconds: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
}

fn summarize(mut latencies: Vec<Duration>, elapsed: Duration) -> Summary {
    latencies.sort();
    let at = |quantile: f64| {
        latencies[((latencies.len() as f64 * quantile) as usize).min(latencies.len() - 1)]
    };
    Summary {
        count: latencies.len(),
        seconds: elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: *latencies.last().unwrap(),
    }
}

fn print(what: &str, summary: &Summary) {
    println!(
        "{what:<34} {:>8} checks {:>9.0}/s  p50 {:>7.1} µs  p99 {:>7.1} µs  p99.9 {:>7.1} µs  max {:>8.1} µs",
        summary.count,
        summary.count as f64 / summary.seconds,
        summary.p50.as_secs_f64() * 1e6,
        summary.p99.as_secs_f64() * 1e6,
        summary.p999.as_secs_f64() * 1e6,
        summary.max.as_secs_f64() * 1e6,
    );
}

/// One check over a surface.
#[derive(Clone)]
enum Client {
    Http(reqwest::Client, String),
    /// One HTTP/2 connection per channel; checks go round-robin (Envoy keeps a connection per
    /// worker thread to the ext_authz cluster).
    Grpc(Vec<AuthorizationClient<tonic::transport::Channel>>),
}

/// A check ready to send (built before its latency is timed: a gateway has the request at hand).
/// One per check, moved once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Prepared {
    Http(reqwest::RequestBuilder),
    Grpc(envoy_types::pb::envoy::service::auth::v3::CheckRequest),
}

impl Client {
    fn prepare(&self, index: usize) -> Prepared {
        match self {
            Client::Http(client, url) => {
                let mut request = client.get(url.as_str());
                for (name, value) in headers(index) {
                    request = request.header(name, value);
                }
                Prepared::Http(request)
            }
            Client::Grpc(_) => {
                let headers: HashMap<String, String> = headers(index)
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value))
                    .collect();
                Prepared::Grpc(quotaflow_decide::ext_authz::check_request(
                    "POST",
                    "/v1/chat/completions",
                    headers,
                ))
            }
        }
    }

    async fn send(&mut self, index: usize, prepared: Prepared) {
        match (self, prepared) {
            (Client::Http(..), Prepared::Http(request)) => {
                let response = request.send().await.expect("answered");
                assert!(response.status() == 200 || response.status() == 429);
            }
            (Client::Grpc(channels), Prepared::Grpc(request)) => {
                let count = channels.len();
                channels[index % count]
                    .check(request)
                    .await
                    .expect("answered");
            }
            _ => unreachable!("prepared by the same client"),
        }
    }
}

async fn open_loop(client: &Client, rate: u64, seconds: u64) -> Summary {
    let total = (rate * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for index in 0..total {
        let scheduled = started + interval * index as u32;
        if scheduled > Instant::now() {
            tokio::time::sleep_until(tokio::time::Instant::from_std(scheduled)).await;
        }
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let prepared = client.prepare(index);
            // Timed from the send: the timer that paces the schedule ticks per millisecond.
            let sent = Instant::now();
            client.send(index, prepared).await;
            sent.elapsed()
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for task in tasks {
        latencies.push(task.await.unwrap());
    }
    summarize(latencies, started.elapsed())
}

async fn closed_loop(client: &Client, in_flight: usize, seconds: u64) -> Summary {
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for worker in 0..in_flight {
        let mut client = client.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut index = worker;
            while Instant::now() < until {
                let prepared = client.prepare(index);
                let sent = Instant::now();
                client.send(index, prepared).await;
                latencies.push(sent.elapsed());
                index += in_flight;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    summarize(latencies, started.elapsed())
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|arg| arg == name)
        .and_then(|at| args.get(at + 1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rate = arg("--rate", 10_000);
    let seconds = arg("--seconds", 5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let built = Instant::now();
        let view = Arc::new(view());
        println!(
            "{DECISIONS} decisions in force (built in {:.1} s); open loop at {rate}/s for {seconds} s, then closed loop, 64 in flight",
            built.elapsed().as_secs_f64()
        );

        // In-process: the same check without the network.
        let mut latencies = Vec::with_capacity(200_000);
        let started = Instant::now();
        for index in 0..200_000 {
            let headers = headers(index);
            let sent = Instant::now();
            let verdict = view.check(&RequestAttributes {
                api_key_id: &headers[0].1,
                team: &headers[1].1,
                model: &headers[2].1,
                environment: &headers[3].1,
                user_id: Some(&headers[4].1),
                ..Default::default()
            });
            latencies.push(sent.elapsed());
            std::hint::black_box(verdict);
        }
        print("in-process DecisionView::check", &summarize(latencies, started.elapsed()));

        // In-process: the remaining-quota answer (RateLimit headers) of every check, with
        // `--policies` windowed policies and a total for every scope the requests name.
        let policy_count = arg("--policies", 20) as usize;
        let policies_dir = std::env::temp_dir().join(format!("decide-bench-{}", std::process::id()));
        std::fs::create_dir_all(&policies_dir).unwrap();
        for (index, text) in policy_texts(policy_count).into_iter().enumerate() {
            std::fs::write(policies_dir.join(format!("quota-{index}.yaml")), text).unwrap();
        }
        let policies = policy::PolicySet::load_dir(&policies_dir).unwrap();
        let scopes = gateway::Scopes::new(&policies);
        let now = Utc::now();
        for index in 0..20_000 {
            let headers = headers(index);
            let values = [&headers[0].1, &headers[1].1, &headers[4].1];
            for policy in policies.policies() {
                let dimension = policy.record().group_by[0].clone();
                let value = match dimension.as_str() {
                    "api_key_id" => values[0],
                    "team" => values[1],
                    _ => values[2],
                };
                let spec = quotaflow_totals::scopes::policy_spec(policy.window().unwrap()).unwrap();
                let window = spec.window_of(now).unwrap();
                scopes.apply(schemas::WindowTotal {
                    window_kind: window.kind().to_string(),
                    window_start: window.start(),
                    window_end: window.end(),
                    cost_usd: rust_decimal::Decimal::new(125, 2),
                    ..schemas::fixtures::empty_day_total(
                        &policy.totals_scope_kind(),
                        &format!("{dimension}={value}"),
                        window.start(),
                    )
                });
            }
        }
        let mut latencies = Vec::with_capacity(200_000);
        let started = Instant::now();
        let mut answered = 0usize;
        for index in 0..200_000 {
            let headers = headers(index % 20_000);
            let sent = Instant::now();
            let quota = scopes.tightest(
                &RequestAttributes {
                    api_key_id: &headers[0].1,
                    team: &headers[1].1,
                    model: &headers[2].1,
                    environment: &headers[3].1,
                    user_id: Some(&headers[4].1),
                    ..Default::default()
                },
                view.as_ref(),
                now,
            );
            latencies.push(sent.elapsed());
            answered += usize::from(quota.is_some());
        }
        print(
            &format!("in-process Scopes::tightest ({policy_count} policies)"),
            &summarize(latencies, started.elapsed()),
        );
        assert_eq!(answered, 200_000, "every check matched its policies");

        // The sidecar on a runtime of its own (its own worker threads, as its own process would
        // have), the load generator on this one; both share the machine's cores.
        let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let grpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        http.set_nonblocking(true).unwrap();
        grpc.set_nonblocking(true).unwrap();
        let (http_address, grpc_address) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
        let server_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sidecar")
            .enable_all()
            .build()
            .unwrap();
        let shutdown = Shutdown::new();
        let mut config = Config::default();
        if arg("--quota-headers", 0) == 1 {
            // Every answer carries its tightest quota (the policies above, no totals topic).
            config.policies_dir = Some(policies_dir.clone());
            config.remaining.follow_totals = false;
        }
        let served = server_runtime.spawn({
            let (view, shutdown) = (Arc::clone(&view), shutdown.clone());
            async move {
                let http = tokio::net::TcpListener::from_std(http).unwrap();
                let grpc = tokio::net::TcpListener::from_std(grpc).unwrap();
                quotaflow_decide::serve(view, &config, http, Some(grpc), shutdown).await
            }
        });
        let http_client = Client::Http(
            reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .unwrap(),
            format!("http://{http_address}/v1/authz"),
        );
        let mut channels = Vec::new();
        for _ in 0..arg("--grpc-channels", 2).max(1) {
            channels.push(
                AuthorizationClient::connect(format!("http://{grpc_address}"))
                    .await
                    .unwrap(),
            );
        }
        let grpc_client = Client::Grpc(channels);
        for (name, client) in [("HTTP forward-auth", &http_client), ("gRPC ext_authz", &grpc_client)] {
            // Warm up connections.
            closed_loop(client, 64, 1).await;
            print(&format!("{name}, open loop {rate}/s"), &open_loop(client, rate, seconds).await);
            print(&format!("{name}, closed loop"), &closed_loop(client, 64, seconds).await);
        }
        shutdown.cancel();
        served.await.unwrap().unwrap();
        server_runtime.shutdown_background();
    });
}
