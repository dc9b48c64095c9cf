//! `quotaflow-decide`, the decision sidecar: any gateway asks it "may this request go?" and it
//! answers from the control topic, through the [`gateway`] crate (no ClickHouse, no network call
//! on the request path: one in-memory [`gateway::DecisionView`] lookup).
//!
//! Three ways to ask, one answer ([`answer::Answer`]):
//! - **Envoy external authorization v3 over gRPC** ([`ext_authz`]): Envoy, Envoy Gateway, Istio,
//!   Contour. A denial carries the configured status (429 by default) and headers; a degrade
//!   lets the request go with `x-quotaflow-degrade-to` added for the router.
//! - **HTTP forward-auth** (`/v1/authz`, any method, any path below it; [`http`]): NGINX
//!   `auth_request`, Traefik ForwardAuth, a Kong plugin, a LiteLLM pre-call hook. The request's
//!   attributes come in `x-quotaflow-*` headers ([`attributes`]); 200 allows, the configured deny
//!   status (429, or 403 for NGINX, whose `auth_request` accepts only 2xx, 401 and 403) refuses.
//! - **A JSON API** `POST /v1/check` for applications: the attributes as a JSON object, the answer
//!   as a JSON object (always 200 when the request is well formed).
//!
//! Before the decisions, the request meets the **admission rules** of the policies in
//! `policies_dir` (`policy::admission`): a request declaring more than a rule allows (context
//! size, output limit, image tier, video length or resolution; `x-quotaflow-input-tokens` …) is
//! refused naming the policy and the rule (`x-quotaflow-rule`), before any money is spent.
//!
//! Every refusal by a decision says `Retry-After` (seconds until the block's `expires_at` or its window's end),
//! `x-quotaflow-policy` and `x-quotaflow-reason`. While the gateway's view is not caught up with
//! the control topic, or the topic has been unreachable for longer than
//! `gateway.max_staleness_ms`, answers follow `gateway.failure_mode` (open: allow; closed: refuse
//! with policy `gateway.fail_closed`). `/readyz` is 200 once the view has caught up.
//!
//! # Delivery guarantee
//! The sidecar keeps no state of its own: it answers from the newest decisions it has read, so a
//! decision is obeyed as soon as the follower reads it (tens of milliseconds after the alerter
//! publishes it, measured in `docs/benchmarks.md`), and a restarted sidecar answers again once it
//! has re-read the compacted topic.

pub mod answer;
pub mod attributes;
pub mod config;
pub mod ext_authz;
pub mod http;
pub mod metrics;
pub mod nginx;

use std::sync::Arc;
use std::time::Duration;

use gateway::{Gateway, RequestAttributes, Verdict};
use infra::shutdown::Shutdown;
use tokio::net::TcpListener;
use tracing::info;

pub use config::Config;

/// What answers a check: the [`Gateway`] (the control topic's decisions), or anything else that
/// can (a fixed view in tests).
pub trait Checker: gateway::DecisionLookup + Send + Sync + 'static {
    /// What to do with `request` now.
    fn check(&self, request: &RequestAttributes<'_>) -> Verdict;
    /// Whether answers come from caught-up decisions (for `/readyz`).
    fn is_ready(&self) -> bool;
    /// What policies in shadow mode would do with `request` (never enforced); none by default.
    fn check_shadow(&self, _request: &RequestAttributes<'_>) -> Verdict {
        Verdict::Allow
    }
}

impl Checker for Gateway {
    fn check(&self, request: &RequestAttributes<'_>) -> Verdict {
        Gateway::check(self, request)
    }

    fn is_ready(&self) -> bool {
        Gateway::is_ready(self)
    }

    fn check_shadow(&self, request: &RequestAttributes<'_>) -> Verdict {
        Gateway::check_shadow(self, request)
    }
}

/// A fixed set of decisions, checked at the wall clock: for tests and for trying a gateway's
/// configuration without Kafka.
#[derive(Debug, Default)]
pub struct FixedView(pub std::sync::RwLock<gateway::DecisionView>);

impl gateway::DecisionLookup for FixedView {
    fn in_force(&self, key: &str) -> Option<gateway::InForce> {
        self.0.in_force(key)
    }

    fn has_decisions_of(&self, policy_id: &str) -> bool {
        self.0.has_decisions_of(policy_id)
    }
}

impl Checker for FixedView {
    fn check(&self, request: &RequestAttributes<'_>) -> Verdict {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .check(request, chrono::Utc::now())
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn check_shadow(&self, request: &RequestAttributes<'_>) -> Verdict {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .check_shadow(request, chrono::Utc::now())
    }
}

/// The ids of the policies with `admission.estimated_cost`, with their `admission.hint`.
pub type EstimatingPolicies = std::collections::HashMap<String, Option<String>>;

/// What the sidecar reads from the policies: their admission rules, and their windows and caps
/// with the totals for the remaining-quota answers ([`gateway::Scopes`]).
pub struct Rules {
    /// The policy directory's fingerprint (empty without one): a reload that finds the same one
    /// changes nothing.
    pub fingerprint: String,
    /// Checked before the decisions.
    pub admission: gateway::Admission,
    /// Spent, limit and remaining per policy scope.
    pub scopes: gateway::Scopes,
    /// The policies with `admission.estimated_cost`, and the catalog that prices a request's
    /// declared maximum for them.
    /// Keyed by policy id, with the policy's `admission.hint`.
    pub estimated_cost: Option<(EstimatingPolicies, Arc<pricing::Catalog>)>,
}

impl Rules {
    /// The rules of `config.policies_dir` (none without one), following the totals topic when
    /// `config.remaining.follow_totals` and a policy has a window.
    pub fn load(config: &Config) -> Result<Rules, DecideError> {
        let policies = match &config.policies_dir {
            Some(dir) => policy::PolicySet::load_dir(dir).map_err(DecideError::Policies)?,
            None => policy::PolicySet::empty(),
        };
        let estimating: EstimatingPolicies = policies
            .policies()
            .iter()
            .filter_map(|policy| {
                let rules = policy.admission().filter(|rules| rules.estimated_cost)?;
                Some((policy.id().to_owned(), rules.hint.clone()))
            })
            .collect();
        let estimated_cost = if estimating.is_empty() {
            None
        } else {
            let Some(path) = &config.catalog_path else {
                return Err(DecideError::Config(format!(
                    "policies {} have admission.estimated_cost: set catalog_path to the price catalog",
                    estimating.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            };
            if !config.remaining.follow_totals {
                return Err(DecideError::Config(
                    "admission.estimated_cost compares with what is left: it needs remaining.follow_totals"
                        .to_owned(),
                ));
            }
            let catalog = pricing::Catalog::load_path(path, None).map_err(|error| {
                DecideError::Config(format!("catalog_path {}: {error}", path.display()))
            })?;
            Some((estimating, Arc::new(catalog)))
        };
        let mut scopes = gateway::Scopes::new(&policies);
        if config.remaining.follow_totals && !scopes.is_empty() {
            scopes = scopes.follow(
                &config.gateway.kafka,
                &config.gateway.client_id,
                Duration::from_millis(config.gateway.probe_interval_ms),
            )?;
        }
        Ok(Rules {
            fingerprint: policies.fingerprint().to_owned(),
            admission: gateway::Admission::new(&policies),
            scopes,
            estimated_cost,
        })
    }
}

/// The rules in force, swapped whole when the policy directory changes
/// ([`reload_policies`]); every check reads the current ones.
#[derive(Clone)]
pub struct SharedRules(Arc<std::sync::RwLock<Arc<Rules>>>);

impl SharedRules {
    /// `rules` in force.
    pub fn new(rules: Rules) -> SharedRules {
        SharedRules(Arc::new(std::sync::RwLock::new(Arc::new(rules))))
    }

    /// The rules in force now.
    pub fn current(&self) -> Arc<Rules> {
        Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    fn replace(&self, rules: Rules) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(rules);
    }
}

/// Reads `config.policies_dir` again every `reload_interval_ms` until `shutdown`; when its
/// fingerprint changed, builds the new rules, waits (up to a minute) until their totals are read
/// so that no check runs on an empty view, and puts them in force. A directory that does not
/// load, or rules that do not start, keep the rules in force (logged, counted in
/// `quotaflow_decide_policy_reloads_total{outcome}`).
pub async fn reload_policies(config: Config, shared: SharedRules, shutdown: Shutdown) {
    let Some(dir) = config.policies_dir.clone() else {
        return;
    };
    let mut interval =
        tokio::time::interval(Duration::from_millis(config.reload_interval_ms.max(100)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        match policy::PolicySet::load_dir(&dir) {
            Ok(loaded) if loaded.fingerprint() == shared.current().fingerprint => continue,
            Ok(_) => {}
            Err(errors) => {
                tracing::error!(%errors, "policy reload failed; keeping the rules in force");
                metrics::reloaded("failed");
                continue;
            }
        }
        let rules = match Rules::load(&config) {
            Ok(rules) => rules,
            Err(error) => {
                tracing::error!(%error, "policy reload failed; keeping the rules in force");
                metrics::reloaded("failed");
                continue;
            }
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !rules.scopes.is_ready() && tokio::time::Instant::now() < deadline {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        info!(fingerprint = %rules.fingerprint, totals_ready = rules.scopes.is_ready(), "policies reloaded");
        shared.replace(rules);
        metrics::reloaded("applied");
    }
}

/// Why the sidecar stopped or could not start; says whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// The settings are invalid.
    #[error("invalid config: {0}")]
    Config(String),
    /// The gateway client could not start (its settings, or Kafka).
    #[error("gateway: {0}")]
    Gateway(#[from] gateway::GatewayError),
    /// A listener could not be bound or served.
    #[error("{what}: {source}")]
    Listener {
        /// Which listener.
        what: &'static str,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("ext_authz gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The policy directory does not load.
    #[error("policies_dir does not load: {0}")]
    Policies(policy::LoadErrors),
    /// The HTTP server or the lifecycle failed.
    #[error(transparent)]
    Service(#[from] infra::service::ServiceError),
}

impl DecideError {
    /// Whether starting again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            DecideError::Config(_) | DecideError::Policies(_) => false,
            DecideError::Gateway(error) => error.is_retryable(),
            DecideError::Listener { .. } | DecideError::Grpc(_) => true,
            DecideError::Service(error) => error.is_retryable(),
        }
    }
}

/// Runs the sidecar with `config` until `shutdown`: binds its listeners, follows the control topic.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), DecideError> {
    let http = infra::service::bind(config.http.listen).await?;
    run_with_listener(config, http, shutdown).await
}

/// [`run`] on an HTTP listener the caller bound (tests and embedders bind port 0); the gRPC
/// listener, if any, is bound from the config.
pub async fn run_with_listener(
    config: Config,
    http: TcpListener,
    shutdown: Shutdown,
) -> Result<(), DecideError> {
    let grpc = match config.grpc.listen {
        Some(address) => {
            Some(
                TcpListener::bind(address)
                    .await
                    .map_err(|source| DecideError::Listener {
                        what: "ext_authz gRPC listener",
                        source,
                    })?,
            )
        }
        None => None,
    };
    config.validate().map_err(DecideError::Config)?;
    let gateway = Gateway::start(config.gateway.clone())?;
    serve(Arc::new(gateway), &config, http, grpc, shutdown).await
}

/// The HTTP server: axum's, with Nagle off on every connection (a check's answer is one small
/// write; coalescing it with the next costs a delayed-ACK round).
async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    stop: Shutdown,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|connection| {
        let _ = connection.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

/// Serves checks answered by `checker` on `http` (forward-auth, the JSON API and the ops routes)
/// and `grpc` (ext_authz) until `shutdown`; ready once `checker` is.
pub async fn serve<C: Checker>(
    checker: Arc<C>,
    config: &Config,
    http: TcpListener,
    grpc: Option<TcpListener>,
    shutdown: Shutdown,
) -> Result<(), DecideError> {
    config.validate().map_err(DecideError::Config)?;
    let settings = Arc::new(config.answers.clone());
    let rules = SharedRules::new(Rules::load(config)?);
    tokio::spawn(reload_policies(
        config.clone(),
        rules.clone(),
        shutdown.clone(),
    ));
    // Its own token, so that a failed HTTP side can stop it without cancelling the caller's.
    let stop_grpc = shutdown.child_token();
    let grpc = match grpc {
        Some(listener) => {
            let address = listener
                .local_addr()
                .map_err(|source| DecideError::Listener {
                    what: "ext_authz gRPC listener",
                    source,
                })?;
            info!(%address, "ext_authz gRPC listening");
            let service = ext_authz::ExtAuthz::new(
                Arc::clone(&checker),
                Arc::clone(&settings),
                rules.clone(),
            );
            Some(tokio::spawn(ext_authz::serve(
                service,
                listener,
                stop_grpc.clone(),
            )))
        }
        None => None,
    };
    let routes = http::routes(Arc::clone(&checker), settings, rules);
    let ready = Arc::clone(&checker);
    let served = infra::service::serve_until_shutdown_with(
        http,
        routes,
        shutdown.clone(),
        async move {
            // Ready once the view has caught up; until then answers follow the failure mode.
            while !ready.is_ready() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<(), DecideError>(())
        },
        |()| info!("caught up with the control topic"),
        serve_http,
    )
    .await;
    // A failed HTTP side stops the gRPC side too.
    stop_grpc.cancel();
    if let Some(grpc) = grpc {
        match grpc.await {
            Ok(result) => result?,
            Err(join) => {
                return Err(DecideError::Listener {
                    what: "ext_authz gRPC task",
                    source: std::io::Error::other(join.to_string()),
                })
            }
        }
    }
    served.map(|_| ())
}

#[cfg(test)]
mod rules_tests {
    use super::*;

    const ESTIMATING: &str = r#"
id: key-daily
owner: {team: search, contact: s@example.com}
description: 10 USD per key and day
unit: cost_usd
group_by: [api_key_id]
window: {kind: day}
hard_cap: 10
action: {kind: block}
admission: {estimated_cost: true}
"#;

    #[test]
    fn an_estimated_cost_rule_without_a_catalog_or_totals_is_a_config_error() {
        let dir = std::env::temp_dir().join(infra::testkit::unique_name("decide_rules"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("p.yaml"), ESTIMATING).unwrap();
        let mut config = Config {
            policies_dir: Some(dir),
            ..Config::default()
        };
        config.remaining.follow_totals = false;
        let error = Rules::load(&config).err().expect("refused").to_string();
        assert!(error.contains("catalog_path"), "{error}");
        config.catalog_path =
            Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/catalog.json"));
        let error = Rules::load(&config).err().expect("refused").to_string();
        assert!(error.contains("remaining.follow_totals"), "{error}");
    }
}
