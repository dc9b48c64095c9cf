//! The sidecar's three surfaces (forward-auth, the JSON API, Envoy ext_authz over gRPC) answer
//! the same verdicts with the documented statuses, headers and bodies. In-process, on a fixed
//! decision view: no Kafka needed (the live test follows a real control topic).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use schemas::{ControlDecision, DecisionAction};
use support::FixedSidecar;

mod support;

/// gRPC status codes (google.rpc.Code).
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const RESOURCE_EXHAUSTED: i32 = 8;

fn decision(
    policy_id: &str,
    team: &str,
    action: DecisionAction,
    until: DateTime<Utc>,
) -> ControlDecision {
    let scope: BTreeMap<String, String> = [("team".to_owned(), team.to_owned())].into();
    ControlDecision {
        action,
        degrade_to: (action == DecisionAction::Degrade).then(|| "gpt-4o-mini".to_owned()),
        reason: format!("team {team} spent its daily budget"),
        window_start: until - TimeDelta::days(1),
        window_end: until,
        expires_at: None,
        ..schemas::fixtures::block_decision(policy_id, scope, Vec::new(), Utc::now())
    }
}

/// A sidecar on a fixed view: `search` blocked for an hour, `ads` degraded, `research` would be
/// blocked by a policy in shadow mode; the admission rules of [`support::SUMMARIES_POLICY`].
struct Sidecar;

impl Sidecar {
    async fn start(deny_status: u16) -> FixedSidecar {
        let in_an_hour = Utc::now() + TimeDelta::hours(1);
        FixedSidecar::start(
            deny_status,
            &[
                decision("team-daily", "search", DecisionAction::Block, in_an_hour),
                decision("premium", "ads", DecisionAction::Degrade, in_an_hour),
                ControlDecision {
                    shadow: true,
                    ..decision(
                        "research-dry-run",
                        "research",
                        DecisionAction::Block,
                        in_an_hour,
                    )
                },
            ],
        )
        .await
    }
}

fn header<'r>(response: &'r reqwest::Response, name: &str) -> Option<&'r str> {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
}

#[tokio::test]
async fn forward_auth_refuses_a_blocked_scope_with_retry_after_and_lets_others_go() {
    let sidecar = Sidecar::start(429).await;

    let blocked = sidecar
        .forward_auth(&[
            ("x-quotaflow-api-key", "k1"),
            ("X-Quotaflow-Team", "search"),
        ])
        .await;
    assert_eq!(blocked.status(), 429);
    assert_eq!(header(&blocked, "x-quotaflow-decision"), Some("block"));
    assert_eq!(header(&blocked, "x-quotaflow-policy"), Some("team-daily"));
    assert_eq!(
        header(&blocked, "x-quotaflow-reason"),
        Some("team search spent its daily budget")
    );
    let retry_after: u64 = header(&blocked, "retry-after").unwrap().parse().unwrap();
    assert!((3590..=3600).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = blocked.json().await.unwrap();
    assert_eq!(body["error"]["type"], "quota_exceeded");
    assert_eq!(body["error"]["code"], "team-daily");

    let degraded = sidecar
        .forward_auth(&[("x-quotaflow-api-key", "k1"), ("x-quotaflow-team", "ads")])
        .await;
    assert_eq!(degraded.status(), 200);
    assert_eq!(header(&degraded, "x-quotaflow-decision"), Some("degrade"));
    assert_eq!(
        header(&degraded, "x-quotaflow-degrade-to"),
        Some("gpt-4o-mini")
    );
    assert_eq!(header(&degraded, "retry-after"), None);

    let allowed = sidecar
        .forward_auth(&[
            ("x-quotaflow-api-key", "k1"),
            ("x-quotaflow-team", "billing"),
        ])
        .await;
    assert_eq!(allowed.status(), 200);
    assert_eq!(header(&allowed, "x-quotaflow-decision"), Some("allow"));
    assert_eq!(header(&allowed, "x-quotaflow-policy"), None);

    // No key: refused, saying why (a misconfigured gateway must not bypass every quota).
    let keyless = sidecar
        .forward_auth(&[("x-quotaflow-team", "billing")])
        .await;
    assert_eq!(keyless.status(), 429);
    assert_eq!(
        header(&keyless, "x-quotaflow-policy"),
        Some("decide.missing_api_key")
    );

    let metrics = reqwest::get(format!("{}/metrics", sidecar.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("quotaflow_decide_checks_total"),
        "{metrics}"
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn the_json_api_answers_in_the_body_and_refuses_malformed_requests() {
    let sidecar = Sidecar::start(429).await;
    let client = reqwest::Client::new();
    let check = |body: serde_json::Value| {
        client
            .post(format!("{}/v1/check", sidecar.http))
            .json(&body)
            .send()
    };

    let answer =
        check(serde_json::json!({"api_key_id": "k1", "team": "search", "model": "gpt-4o"}))
            .await
            .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(answer["decision"], "block");
    assert_eq!(answer["allowed"], false);
    assert_eq!(answer["policy_id"], "team-daily");
    assert!(answer["retry_after_seconds"].as_u64().unwrap() > 3500);

    let answer: serde_json::Value = check(serde_json::json!({"api_key_id": "k1", "team": "ads"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["decision"], "degrade");
    assert_eq!(answer["degrade_to"], "gpt-4o-mini");

    let unknown = check(serde_json::json!({"api_key_id": "k1", "teem": "search"}))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
    let error: serde_json::Value = unknown.json().await.unwrap();
    assert!(
        error["error"]["message"].as_str().unwrap().contains("teem"),
        "{error}"
    );
    let keyless = check(serde_json::json!({"team": "search"})).await.unwrap();
    assert_eq!(keyless.status(), 400);
    sidecar.stop().await;
}

#[tokio::test]
async fn ext_authz_denies_with_the_http_response_envoy_sends_and_marks_a_degrade() {
    let sidecar = Sidecar::start(429).await;

    let blocked = sidecar
        .ext_authz(&[
            ("x-quotaflow-api-key", "k1"),
            ("x-quotaflow-team", "search"),
        ])
        .await;
    assert_eq!(blocked.status.as_ref().unwrap().code, RESOURCE_EXHAUSTED);
    let Some(HttpResponse::DeniedResponse(denied)) = blocked.http_response else {
        panic!("a refusal carries a denied response: {blocked:?}");
    };
    assert_eq!(denied.status.unwrap().code, 429);
    let headers: HashMap<String, String> = denied
        .headers
        .iter()
        .filter_map(|option| option.header.as_ref())
        .map(|header| (header.key.clone(), header.value.clone()))
        .collect();
    assert_eq!(headers["x-quotaflow-policy"], "team-daily");
    assert!(headers["retry-after"].parse::<u64>().unwrap() > 3500);
    assert!(denied.body.contains("quota_exceeded"), "{}", denied.body);

    let degraded = sidecar
        .ext_authz(&[
            ("x-quotaflow-api-key", "k1"),
            ("x-quotaflow-team", "ads"),
            ("x-quotaflow-degrade-to", "forged"),
        ])
        .await;
    assert_eq!(degraded.status.as_ref().unwrap().code, OK);
    let Some(HttpResponse::OkResponse(ok)) = degraded.http_response else {
        panic!("a degrade is an ok response: {degraded:?}");
    };
    let added: Vec<(String, String, i32)> = ok
        .headers
        .iter()
        .filter_map(|option| {
            let header = option.header.as_ref()?;
            Some((
                header.key.clone(),
                header.value.clone(),
                option.append_action,
            ))
        })
        .collect();
    assert!(
        added
            .iter()
            .any(|(key, value, action)| key == "x-quotaflow-degrade-to"
            && value == "gpt-4o-mini"
            // OVERWRITE_IF_EXISTS_OR_ADD: a client's own header cannot survive.
            && *action == 2),
        "{added:?}"
    );

    let allowed = sidecar
        .ext_authz(&[
            ("x-quotaflow-api-key", "k1"),
            ("x-quotaflow-team", "billing"),
        ])
        .await;
    assert_eq!(allowed.status.as_ref().unwrap().code, OK);
    sidecar.stop().await;
}

#[tokio::test]
async fn a_deny_status_of_403_serves_nginx_on_both_surfaces() {
    let sidecar = Sidecar::start(403).await;
    let blocked = sidecar
        .forward_auth(&[
            ("x-quotaflow-api-key", "k1"),
            ("x-quotaflow-team", "search"),
        ])
        .await;
    assert_eq!(blocked.status(), 403);
    let blocked = sidecar
        .ext_authz(&[
            ("x-quotaflow-api-key", "k1"),
            ("x-quotaflow-team", "search"),
        ])
        .await;
    assert_eq!(blocked.status.as_ref().unwrap().code, PERMISSION_DENIED);
    let Some(HttpResponse::DeniedResponse(denied)) = blocked.http_response else {
        panic!("{blocked:?}");
    };
    assert_eq!(denied.status.unwrap().code, 403);
    sidecar.stop().await;
}

#[tokio::test]
async fn a_request_declaring_more_than_its_policy_admits_is_refused_on_every_surface() {
    let sidecar = Sidecar::start(429).await;
    let oversized = [
        ("x-quotaflow-api-key", "k1"),
        ("x-quotaflow-team", "billing"),
        ("x-quotaflow-workflow", "summaries"),
        ("x-quotaflow-input-tokens", "50000"),
    ];

    let refused = sidecar.forward_auth(&oversized).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(
        header(&refused, "x-quotaflow-rule"),
        Some("max_input_tokens")
    );
    assert_eq!(
        header(&refused, "x-quotaflow-policy"),
        Some("summaries-context")
    );
    assert_eq!(
        header(&refused, "retry-after"),
        None,
        "retrying will not help"
    );
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "request_not_admitted");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("over the limit of 32000. use summaries-lite for long documents"),
        "{body}"
    );

    // Within the limit, or another workflow: allowed.
    let fits = sidecar
        .forward_auth(&[
            ("x-quotaflow-api-key", "k1"),
            ("x-quotaflow-workflow", "summaries"),
            ("x-quotaflow-input-tokens", "32000"),
        ])
        .await;
    assert_eq!(fits.status(), 200);
    let elsewhere = sidecar
        .forward_auth(&[
            ("x-quotaflow-api-key", "k1"),
            ("x-quotaflow-workflow", "chat"),
            ("x-quotaflow-input-tokens", "50000"),
        ])
        .await;
    assert_eq!(elsewhere.status(), 200);
    // A declared value that does not parse is refused, not taken as undeclared.
    let garbled = sidecar
        .forward_auth(&[
            ("x-quotaflow-api-key", "k1"),
            ("x-quotaflow-workflow", "summaries"),
            ("x-quotaflow-input-tokens", "lots"),
        ])
        .await;
    assert_eq!(garbled.status(), 429);
    assert_eq!(
        header(&garbled, "x-quotaflow-policy"),
        Some("decide.invalid_request")
    );

    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1/check", sidecar.http))
        .json(&serde_json::json!({
            "api_key_id": "k1", "workflow": "summaries", "input_tokens": 50000
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["decision"], "block");
    assert_eq!(answer["rule"], "max_input_tokens");

    let denied = sidecar.ext_authz(&oversized).await;
    assert_eq!(denied.status.as_ref().unwrap().code, RESOURCE_EXHAUSTED);
    sidecar.stop().await;
}

/// Issue 15 point 4: a policy in shadow mode never refuses; the answer says what it would have
/// done (header and JSON), and `quotaflow_decide_shadow_total` counts it.
#[tokio::test]
async fn a_shadow_decision_lets_the_request_go_and_says_what_it_would_do() {
    let sidecar = Sidecar::start(429).await;
    let allowed = sidecar
        .forward_auth(&[
            ("x-quotaflow-api-key", "k1"),
            ("x-quotaflow-team", "research"),
        ])
        .await;
    assert_eq!(allowed.status(), 200);
    assert_eq!(header(&allowed, "x-quotaflow-decision"), Some("allow"));
    assert_eq!(
        header(&allowed, "x-quotaflow-shadow-decision"),
        Some("would_block")
    );
    assert_eq!(
        header(&allowed, "x-quotaflow-shadow-policy"),
        Some("research-dry-run")
    );
    assert_eq!(header(&allowed, "retry-after"), None);

    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1/check", sidecar.http))
        .json(&serde_json::json!({"api_key_id": "k1", "team": "research"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["allowed"], true);
    assert_eq!(answer["shadow_decision"], "would_block");
    assert_eq!(answer["shadow_policy_id"], "research-dry-run");

    // Other teams carry no shadow word.
    let other = sidecar
        .forward_auth(&[
            ("x-quotaflow-api-key", "k1"),
            ("x-quotaflow-team", "billing"),
        ])
        .await;
    assert_eq!(other.status(), 200);
    assert_eq!(header(&other, "x-quotaflow-shadow-decision"), None);

    let metrics = reqwest::get(format!("{}/metrics", sidecar.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("quotaflow_decide_shadow_total")
                && line.contains("policy=\"research-dry-run\"")
                && line.contains("decision=\"would_block\"")),
        "{metrics}"
    );
    sidecar.stop().await;
}

/// Issue 15 point 1: a request a windowed policy counts carries its quota as `RateLimit-*`
/// headers (here nothing spent: a fixed view follows no totals) and in JSON; one no policy
/// counts carries none.
#[tokio::test]
async fn answers_carry_the_tightest_quota_as_ratelimit_headers() {
    let sidecar = Sidecar::start(429).await;
    let counted = sidecar
        .forward_auth(&[
            ("x-quotaflow-api-key", "k1"),
            ("x-quotaflow-workflow", "summaries"),
        ])
        .await;
    assert_eq!(counted.status(), 200);
    assert_eq!(header(&counted, "ratelimit-limit"), Some("100"));
    assert_eq!(header(&counted, "ratelimit-remaining"), Some("100"));
    assert_eq!(
        header(&counted, "x-quotaflow-quota-policy"),
        Some("summaries-context")
    );
    assert_eq!(header(&counted, "x-quotaflow-quota-unit"), Some("cost_usd"));
    let reset: u64 = header(&counted, "ratelimit-reset")
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&reset), "{reset}");

    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1/check", sidecar.http))
        .json(&serde_json::json!({"api_key_id": "k1", "workflow": "summaries"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["quota"]["policy_id"], "summaries-context");

    let uncounted = sidecar
        .forward_auth(&[
            ("x-quotaflow-api-key", "k1"),
            ("x-quotaflow-team", "billing"),
        ])
        .await;
    assert_eq!(header(&uncounted, "ratelimit-limit"), None);
    sidecar.stop().await;
}
