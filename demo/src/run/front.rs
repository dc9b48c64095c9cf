//! The runaway loop's gateway: a real NGINX configured by `deploy/gateways/nginx.conf` as shipped,
//! every request checked by the decision sidecar (`quotaflow-decide`, which follows the control
//! topic) with `auth_request`, in front of the ingest API. The loop's calls go through it one by
//! one: an allowed call reaches ingest (the "provider" here, so what got through is what was
//! billed), a refused one gets NGINX's 429 with the sidecar's `Retry-After`, policy, reason and
//! rule, and never reaches ingest.
//! NGINX ([`quotaflow_decide::nginx`]) is stopped when the [`NginxFront`] is dropped.

use std::net::{SocketAddr, TcpListener};

use quotaflow_decide::nginx::{Nginx, SHIPPED_CONF as NGINX_CONF};

use super::*;

/// The shipped configuration sets the environment of the gateway's deployment; the demo's NGINX
/// stands in front of staging.
const SHIPPED_ENVIRONMENT: &str = r#"proxy_set_header x-quotaflow-environment "prod";"#;

/// NGINX in front of ingest, stopped when dropped.
pub(super) struct NginxFront {
    nginx: Nginx,
    /// Base URL clients call.
    pub url: String,
}

impl NginxFront {
    /// Starts NGINX on a free loopback port with `sidecar` (host:port of its HTTP listener) and
    /// `upstream` (the ingest URL) filled in, and waits until it answers.
    pub async fn start(sidecar: &str, upstream: &str, run_id: &str) -> Result<NginxFront> {
        let upstream = upstream
            .strip_prefix("http://")
            .with_context(|| format!("the ingest URL {upstream} is not http://host:port"))?
            .trim_end_matches('/');
        let prefix = std::env::temp_dir().join(format!("quotaflow-demo-nginx-{run_id}"));
        let listen = free_port()?;
        if !NGINX_CONF.contains(SHIPPED_ENVIRONMENT) {
            bail!("deploy/gateways/nginx.conf no longer sets the environment the demo replaces");
        }
        let conf = NGINX_CONF.replace(
            SHIPPED_ENVIRONMENT,
            r#"proxy_set_header x-quotaflow-environment "staging";"#,
        );
        let nginx = Nginx::start(&conf, &prefix, listen, sidecar, upstream)
            .context("starting nginx (dev/setup installs it)")?;
        let mut front = NginxFront {
            nginx,
            url: format!("http://{listen}"),
        };
        front.wait_until_serving().await?;
        Ok(front)
    }

    async fn wait_until_serving(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let http = reqwest::Client::new();
        loop {
            if let Some(status) = self.nginx.exited()? {
                bail!("nginx exited with {status}: {}", self.nginx.error_log());
            }
            // Any answer will do: NGINX serves.
            if http.get(format!("{}/", self.url)).send().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nginx did not answer in 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends one loop call (its usage event) through NGINX as a client behind it would: the
    /// caller's key, team, workflow and model in the headers NGINX maps to the sidecar's
    /// attributes, the context size and output it declares for the admission rules.
    pub async fn call(
        &self,
        http: &reqwest::Client,
        token: &str,
        event: &schemas::UsageEvent,
        max_output_tokens: u64,
    ) -> Result<FrontAnswer> {
        let url = format!("{}/v1/events", self.url);
        for attempt in 1..=5 {
            let response = http
                .post(&url)
                .bearer_auth(token)
                .header("x-api-key", &event.api_key_id)
                .header("x-team", &event.team)
                .header("x-workflow", &event.workflow)
                .header("x-model", &event.model)
                .header("x-quotaflow-input-tokens", event.input_tokens.to_string())
                .header(
                    "x-quotaflow-max-output-tokens",
                    max_output_tokens.to_string(),
                )
                .json(&[event])
                .send()
                .await
                .context("POST /v1/events through nginx")?;
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|value| value.to_str().ok())
                    .filter(|value| !value.is_empty())
                    .map(str::to_owned)
            };
            if status == 429 {
                return Ok(FrontAnswer::Refused {
                    policy: header("x-quotaflow-policy").unwrap_or_default(),
                    reason: header("x-quotaflow-reason").unwrap_or_default(),
                    rule: header("x-quotaflow-rule"),
                    retry_after: header("retry-after"),
                });
            }
            let body: Value = response.json().await.unwrap_or(Value::Null);
            match status {
                200 | 422 => {
                    return Ok(FrontAnswer::Sent {
                        accepted: body["accepted"].as_u64().unwrap_or(0),
                        rejected: body["rejected"].as_u64().unwrap_or(0),
                    })
                }
                503 if attempt < 5 => tokio::time::sleep(Duration::from_secs(attempt)).await,
                _ => bail!(
                    "nginx answered {status}: {body}; its error log: {}",
                    self.nginx.error_log()
                ),
            }
        }
        bail!("ingest stayed unavailable behind nginx")
    }
}

/// What NGINX answered a loop call.
#[derive(Debug)]
pub(super) enum FrontAnswer {
    /// Let through to ingest, which accepted or rejected the event.
    Sent { accepted: u64, rejected: u64 },
    /// Refused by the sidecar: NGINX's 429 and the sidecar's headers.
    Refused {
        policy: String,
        reason: String,
        /// The admission rule, for a request refused at admission.
        rule: Option<String>,
        retry_after: Option<String>,
    },
}

fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port for nginx")?;
    Ok(listener.local_addr()?)
}
