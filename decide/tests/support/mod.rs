//! Shared by the sidecar's tests behind real gateways: a sidecar on a fixed decision view, and the
//! decisions they use.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use infra::shutdown::Shutdown;
use quotaflow_decide::{Config, DecideError, FixedView};
use schemas::{ControlDecision, DecisionAction};

/// A decision of policy `policy_id` for `team` whose window ends in `minutes`; a degrade goes to
/// `gpt-4o-mini`.
pub fn team_decision(
    policy_id: &str,
    team: &str,
    action: DecisionAction,
    minutes: i64,
) -> ControlDecision {
    let now = Utc::now();
    ControlDecision {
        action,
        degrade_to: (action == DecisionAction::Degrade).then(|| "gpt-4o-mini".to_owned()),
        reason: format!("team {team} spent its daily budget"),
        window_start: now - TimeDelta::hours(1),
        window_end: now + TimeDelta::minutes(minutes),
        ..schemas::fixtures::block_decision(
            policy_id,
            [("team".to_owned(), team.to_owned())].into(),
            Vec::new(),
            now,
        )
    }
}

/// A policy with admission rules: the `summaries` workflow's approved context size and output.
pub const SUMMARIES_POLICY: &str = r#"
id: summaries-context
owner: {team: ml, contact: ml@example.com}
description: the summaries workflow's approved context size and output
unit: cost_usd
selector: {workflow: summaries}
window: {kind: day}
hard_cap: 100
action: {kind: block}
admission:
  max_input_tokens: 32000
  max_output_tokens: 4096
  hint: "use summaries-lite for long documents"
"#;

/// A sidecar (HTTP only) answering from `decisions` after the admission rules of
/// [`SUMMARIES_POLICY`], refusing with `deny_status`.
pub struct FixedSidecar {
    /// Forward-auth, the JSON API and the ops routes.
    pub address: SocketAddr,
    /// `http://` + [`FixedSidecar::address`].
    pub http: String,
    /// Envoy ext_authz, as a tonic endpoint (`http://host:port`).
    pub grpc: String,
    /// The policy directory it reads (every 100 ms).
    pub policies: std::path::PathBuf,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), DecideError>>,
}

impl FixedSidecar {
    pub async fn start(deny_status: u16, decisions: &[ControlDecision]) -> FixedSidecar {
        let view = FixedView::default();
        for decision in decisions {
            view.0.write().unwrap().apply(decision);
        }
        let mut config = Config::default();
        config.answers.deny_status = deny_status;
        let policies = std::env::temp_dir().join(infra::testkit::unique_name("decide_policies"));
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(policies.join("summaries.yaml"), SUMMARIES_POLICY).unwrap();
        config.policies_dir = Some(policies.clone());
        config.reload_interval_ms = 100;
        // A fixed view: no totals topic to follow (quotas read as untouched).
        config.remaining.follow_totals = false;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_address = grpc.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                quotaflow_decide::serve(Arc::new(view), &config, listener, Some(grpc), shutdown)
                    .await
            }
        });
        infra::testkit::eventually(
            Duration::from_secs(10),
            "the sidecar to be ready",
            || async {
                let status = reqwest::get(format!("http://{address}/readyz"))
                    .await
                    .ok()?
                    .status();
                status.is_success().then_some(())
            },
        )
        .await;
        FixedSidecar {
            address,
            http: format!("http://{address}"),
            grpc: format!("http://{grpc_address}"),
            policies,
            shutdown,
            task,
        }
    }

    /// A forward-auth check (`GET /v1/authz/v1/chat/completions`) with `headers`.
    pub async fn forward_auth(&self, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request =
            reqwest::Client::new().get(format!("{}/v1/authz/v1/chat/completions", self.http));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    /// An ext_authz check of `POST /v1/chat/completions` with `headers`.
    pub async fn ext_authz(
        &self,
        headers: &[(&str, &str)],
    ) -> envoy_types::pb::envoy::service::auth::v3::CheckResponse {
        use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
        let mut client = AuthorizationClient::connect(self.grpc.clone())
            .await
            .unwrap();
        let headers = headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let request =
            quotaflow_decide::ext_authz::check_request("POST", "/v1/chat/completions", headers);
        client.check(request).await.unwrap().into_inner()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// A free port on 127.0.0.1 for a server this test starts.
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The workspace's root folder.
pub fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}
