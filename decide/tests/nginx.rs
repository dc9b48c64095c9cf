//! A real NGINX (Debian's package, installed by `dev/setup`) with `auth_request` in front of a
//! local mock provider, configured by `deploy/gateways/nginx.conf` as shipped, every request
//! checked by the sidecar: allowed requests reach the provider, a blocked scope gets a 429 with
//! the sidecar's `Retry-After` and policy and never reaches the provider, a degrade reaches it
//! naming the cheaper model (a client's forged header replaced).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use schemas::DecisionAction;
use support::{free_port, team_decision, FixedSidecar};

mod support;

const DEADLINE: Duration = Duration::from_secs(20);

use quotaflow_decide::nginx::{Nginx, SHIPPED_CONF as NGINX_CONF};

/// What the mock provider saw: one entry per request, the degrade header it carried.
type Seen = Arc<Mutex<Vec<Option<String>>>>;

async fn mock_provider() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new().route(
        "/v1/chat/completions",
        post({
            let seen = Arc::clone(&seen);
            move |headers: HeaderMap| async move {
                let degrade_to = headers
                    .get("x-quotaflow-degrade-to")
                    .and_then(|value| value.to_str().ok())
                    .filter(|value| !value.is_empty())
                    .map(str::to_owned);
                seen.lock().unwrap().push(degrade_to);
                Json(serde_json::json!({"object": "chat.completion", "choices": []}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs nginx (dev/setup installs it); run with --features live"
)]
async fn nginx_auth_request_obeys_the_sidecar() {
    let (upstream, seen) = mock_provider().await;
    let sidecar = FixedSidecar::start(
        403,
        &[
            team_decision("team-daily", "search", DecisionAction::Block, 30),
            team_decision("premium", "ads", DecisionAction::Degrade, 30),
        ],
    )
    .await;

    let prefix = std::env::temp_dir().join(infra::testkit::unique_name("nginx"));
    std::fs::create_dir_all(&prefix).unwrap();
    let listen = free_port();
    let _nginx = Nginx::start(
        NGINX_CONF,
        &prefix,
        listen,
        &sidecar.address.to_string(),
        &upstream.to_string(),
    )
    .expect("nginx starts (installed by dev/setup)");
    let url = format!("http://{listen}/v1/chat/completions");
    let client = reqwest::Client::new();
    let call = |team: &'static str| {
        client
            .post(&url)
            .header("x-api-key", "k1")
            .header("x-team", team)
            // Forged: NGINX replaces it with the sidecar's answer.
            .header("x-quotaflow-degrade-to", "gpt-5-pro")
            .json(&serde_json::json!({"model": "gpt-4o", "messages": []}))
            .send()
    };
    let allowed = infra::testkit::eventually(DEADLINE, "nginx to serve", || async {
        call("billing").await.ok()
    })
    .await;
    assert_eq!(allowed.status(), 200, "{:?}", _nginx.error_log());
    assert_eq!(seen.lock().unwrap().as_slice(), &[None]);

    let refused = call("search").await.unwrap();
    assert_eq!(refused.status(), 429);
    let header = |name: &str| {
        refused
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("x-quotaflow-policy").as_deref(), Some("team-daily"));
    assert_eq!(
        header("x-quotaflow-reason").as_deref(),
        Some("team search spent its daily budget")
    );
    let retry_after: u64 = header("retry-after").unwrap().parse().unwrap();
    assert!((1790..=1800).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "team-daily");
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "a refused request reached the provider"
    );

    // An admission rule refuses an oversized request before the provider sees it.
    let oversized = client
        .post(&url)
        .header("x-api-key", "k1")
        .header("x-team", "billing")
        .header("x-workflow", "summaries")
        .header("x-quotaflow-input-tokens", "50000")
        .json(&serde_json::json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 429);
    assert_eq!(
        oversized.headers().get("x-quotaflow-rule").unwrap(),
        "max_input_tokens"
    );
    assert_eq!(
        oversized.headers().get("x-quotaflow-policy").unwrap(),
        "summaries-context"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "an oversized request reached the provider"
    );

    // The tightest quota of a counted request reaches the client (summaries-context: 100 USD a
    // day, nothing spent on a fixed view); an uncounted one carries none.
    assert!(allowed.headers().get("ratelimit-limit").is_none());
    let counted = client
        .post(&url)
        .header("x-api-key", "k1")
        .header("x-team", "billing")
        .header("x-workflow", "summaries")
        .json(&serde_json::json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(counted.status(), 200);
    assert_eq!(counted.headers()["ratelimit-limit"], "100");
    assert_eq!(counted.headers()["ratelimit-remaining"], "100");
    let reset: u64 = counted.headers()["ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&reset));

    let degraded = call("ads").await.unwrap();
    assert_eq!(degraded.status(), 200);
    assert_eq!(
        seen.lock().unwrap().last().cloned().flatten().as_deref(),
        Some("gpt-4o-mini")
    );

    sidecar.stop().await;
    let _ = std::fs::remove_dir_all(&prefix);
}

/// `docs/gateways.md` shows the tested configuration, not a copy that drifted: the part between
/// the markers of `deploy/gateways/nginx.conf`, dedented, stands in the doc as it is.
#[test]
fn the_documented_nginx_configuration_is_the_tested_one() {
    let doc = include_str!("../../docs/gateways.md");
    let start = NGINX_CONF
        .find("# --- quotaflow: copy from here ---\n")
        .unwrap();
    let end = NGINX_CONF
        .find("        # --- quotaflow: to here ---")
        .unwrap();
    let part = &NGINX_CONF[start..end];
    let part: String = part
        .lines()
        .skip(1)
        .map(|line| line.strip_prefix("        ").unwrap_or(line))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(part.contains("auth_request /_quotaflow_check;"), "{part}");
    assert!(
        doc.contains(part.trim_end()),
        "docs/gateways.md does not show deploy/gateways/nginx.conf's part as it is:\n{part}"
    );
}
