//! A real LiteLLM proxy (PyPI `litellm[proxy]`, installed by `dev/setup` into `.stack/litellm`)
//! with `deploy/gateways/litellm/` as shipped: its pre-call hook asks the sidecar's JSON API, and
//! its models answer with `mock_response`, so nothing leaves the machine. An allowed call gets
//! its model's answer, a blocked team a 429 with the sidecar's `Retry-After` and policy (the
//! model never called), a degraded team the cheaper model's answer; with the sidecar gone, the
//! hook refuses (fail closed by default).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use schemas::DecisionAction;
use support::{free_port, team_decision, workspace, FixedSidecar};

mod support;

/// LiteLLM imports a lot before it serves.
const STARTUP: Duration = Duration::from_secs(120);
const MASTER_KEY: &str = "sk-quotaflow-test";

/// The `litellm` command: `QUOTAFLOW_LITELLM` or the virtualenv `dev/setup` makes.
fn litellm_binary() -> PathBuf {
    std::env::var_os("QUOTAFLOW_LITELLM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".stack/litellm/bin/litellm"))
}

/// The proxy in the foreground, stopped when dropped.
struct LiteLlm(Child);

impl Drop for LiteLlm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the LiteLLM proxy (dev/setup installs it); run with --features live"
)]
async fn a_litellm_pre_call_hook_obeys_the_sidecar() {
    let binary = litellm_binary();
    assert!(
        binary.exists(),
        "{} is missing: run dev/setup (it installs litellm[proxy] there) or set QUOTAFLOW_LITELLM",
        binary.display()
    );
    // The block's window ends 30 minutes from here: Retry-After counts down from 1800 s while
    // the proxy starts (which can take a while on a loaded machine).
    let decided_at = std::time::Instant::now();
    let sidecar = FixedSidecar::start(
        429,
        &[
            team_decision("team-daily", "search", DecisionAction::Block, 30),
            team_decision("premium", "ads", DecisionAction::Degrade, 30),
        ],
    )
    .await;
    let listen = free_port();
    let config_dir = workspace().join("deploy/gateways/litellm");
    let child = Command::new(&binary)
        .current_dir(&config_dir)
        .args(["--config", "config.yaml", "--host", "127.0.0.1", "--port"])
        .arg(listen.port().to_string())
        .env("LITELLM_MASTER_KEY", MASTER_KEY)
        .env("OPENAI_API_KEY", "sk-not-used-mock-responses")
        // The price map ships with the package: no fetch from the internet at startup.
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env(
            "QUOTAFLOW_DECIDE_URL",
            format!("http://{}", sidecar.address),
        )
        .env("QUOTAFLOW_TRUST_CLIENT_HEADERS", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("litellm starts");
    let _proxy = LiteLlm(child);
    let base = format!("http://{listen}");
    infra::testkit::eventually(STARTUP, "the LiteLLM proxy to serve", || async {
        let status = reqwest::get(format!("{base}/health/liveliness"))
            .await
            .ok()?
            .status();
        status.is_success().then_some(())
    })
    .await;

    let client = reqwest::Client::new();
    let call = |team: &'static str| {
        client
            .post(format!("{base}/chat/completions"))
            .bearer_auth(MASTER_KEY)
            .header("x-quotaflow-team", team)
            .json(&serde_json::json!({
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "hello"}]
            }))
            .send()
    };
    let answer = |body: &serde_json::Value| {
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    let allowed = call("billing").await.unwrap();
    assert_eq!(allowed.status(), 200);
    let body: serde_json::Value = allowed.json().await.unwrap();
    assert_eq!(answer(&body), "answer from gpt-4o", "{body}");

    let refused = call("search").await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .expect("the sidecar's Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let elapsed = decided_at.elapsed().as_secs();
    assert!(
        (1799 - elapsed.min(1799)..=1800).contains(&retry_after),
        "{retry_after} s, {elapsed} s after the decision"
    );
    assert_eq!(
        refused.headers().get("x-quotaflow-policy").unwrap(),
        "team-daily"
    );
    let body = refused.text().await.unwrap();
    assert!(body.contains("quota_exceeded"), "{body}");
    assert!(
        body.contains("team search spent its daily budget"),
        "{body}"
    );

    let degraded = call("ads").await.unwrap();
    assert_eq!(degraded.status(), 200);
    let body: serde_json::Value = degraded.json().await.unwrap();
    assert_eq!(answer(&body), "answer from gpt-4o-mini", "{body}");

    // An admission rule refuses a call asking for more output than its workflow may, before
    // any model answers.
    let oversized = client
        .post(format!("{base}/chat/completions"))
        .bearer_auth(MASTER_KEY)
        .header("x-quotaflow-team", "billing")
        .header("x-quotaflow-workflow", "summaries")
        .json(&serde_json::json!({
            "model": "gpt-4o",
            "max_tokens": 16000,
            "messages": [{"role": "user", "content": "summarize everything"}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 400);
    assert_eq!(
        oversized.headers().get("x-quotaflow-rule").unwrap(),
        "max_output_tokens"
    );
    let body = oversized.text().await.unwrap();
    assert!(body.contains("request_not_admitted"), "{body}");
    assert!(!body.contains("answer from"), "{body}");

    // The sidecar gone: the hook fails closed.
    sidecar.stop().await;
    let unchecked = call("billing").await.unwrap();
    assert_eq!(unchecked.status(), 503);
    assert!(unchecked
        .text()
        .await
        .unwrap()
        .contains("quota_unavailable"));
}
