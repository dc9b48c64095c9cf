//! The HTTP surfaces: forward-auth (`/v1/authz`, any method, any path below it) and the JSON API
//! (`POST /v1/check`). See the crate docs for what each answers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};

use gateway::Verdict;

use crate::answer::Answer;
use crate::attributes::Attributes;
use crate::config::AnswerConfig;
use crate::{Checker, SharedRules};

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct Decider {
    checker: Arc<dyn Checker>,
    settings: Arc<AnswerConfig>,
    rules: SharedRules,
}

impl Decider {
    pub(crate) fn new(
        checker: Arc<dyn Checker>,
        settings: Arc<AnswerConfig>,
        rules: SharedRules,
    ) -> Self {
        Self {
            checker,
            settings,
            rules,
        }
    }

    /// The answer for `attributes`, counted under `surface`: refused when it names no API key
    /// (`answers.require_api_key`), declares a value that does not parse or breaks an admission
    /// rule; else the decisions' verdict.
    pub(crate) fn decide(&self, attributes: &Attributes, surface: &'static str) -> Answer {
        let now = chrono::Utc::now();
        let rules = self.rules.current();
        let answer = if self.settings.require_api_key && attributes.api_key_id.is_empty() {
            Answer::refused(
                "decide.missing_api_key",
                None,
                "the request names no API key (x-quotaflow-api-key); the sidecar refuses \
                 requests it cannot hold to a key's quota (answers.require_api_key)"
                    .to_owned(),
            )
        } else if !attributes.invalid.is_empty() {
            Answer::refused(
                "decide.invalid_request",
                None,
                format!(
                    "the request declares values that do not parse: {}",
                    attributes.invalid.join("; ")
                ),
            )
        } else {
            let declared = attributes.declared();
            match attributes.with(|request| rules.admission.check(request, &declared)) {
                Some(refusal) => {
                    crate::metrics::admission_refused(&refusal.policy_id, refusal.refusal.rule);
                    Answer::refused(
                        &refusal.policy_id,
                        Some(refusal.refusal.rule),
                        refusal.reason(),
                    )
                }
                None => {
                    let (verdict, shadow) = attributes.with(|request| {
                        let verdict = self.checker.check(request);
                        let shadow = if verdict.may_proceed() {
                            self.checker.check_shadow(request)
                        } else {
                            Verdict::Allow
                        };
                        (verdict, shadow)
                    });
                    let answer = Answer::of(&verdict, now).with_shadow(&shadow);
                    if let (Some(would), Some(policy_id)) =
                        (answer.shadow_decision, &answer.shadow_policy_id)
                    {
                        crate::metrics::shadowed(policy_id, would);
                    }
                    answer
                }
            }
        };
        let estimating = rules.estimated_cost.as_ref().filter(|_| answer.allowed);
        let wants_quotas = self.settings.ratelimit_headers || estimating.is_some();
        let answer = if wants_quotas && rules.scopes.is_ready() {
            let refusal = estimating.and_then(|(policies, catalog)| {
                let declared = attributes.declared();
                let (quota, refusal) = attributes.with(|request| {
                    rules.scopes.estimated_cost_refusal(
                        request,
                        &declared,
                        policies,
                        catalog,
                        self.checker.as_ref(),
                        now,
                    )
                })?;
                Some(estimated_cost_answer(
                    attributes,
                    &quota,
                    &refusal,
                    policies.get(&quota.policy_id).cloned().flatten(),
                ))
            });
            let answer = refusal.unwrap_or(answer);
            if self.settings.ratelimit_headers {
                let tightest = attributes
                    .with(|request| rules.scopes.tightest(request, self.checker.as_ref(), now));
                answer.with_quota(tightest)
            } else {
                answer
            }
        } else {
            answer
        };
        crate::metrics::checked(surface, answer.decision);
        answer
    }

    /// Every quota of the request `attributes` describe (`GET /v1/scopes`).
    pub(crate) fn scopes(&self, attributes: &Attributes) -> serde_json::Value {
        let rules = self.rules.current();
        let quotas = attributes.with(|request| {
            rules
                .scopes
                .quotas(request, self.checker.as_ref(), chrono::Utc::now())
        });
        serde_json::json!({
            "ready": rules.scopes.is_ready(),
            "scopes": quotas,
        })
    }

    pub(crate) fn deny_status(&self) -> u16 {
        self.settings.deny_status
    }
}

/// The answer refusing a request by the `admission.estimated_cost` rule: the policy, the
/// estimate against what is left, the hint, and `Retry-After` until the window resets (a smaller
/// request may go now, this one then).
fn estimated_cost_answer(
    attributes: &Attributes,
    quota: &schemas::quota::ScopeQuota,
    refusal: &policy::admission::Refusal,
    hint: Option<String>,
) -> Answer {
    crate::metrics::admission_refused(&quota.policy_id, refusal.rule);
    let mut reason = format!(
        "policy {} refuses this request before it is sent: {} (model {}), more than the {} left to {} in this {} window until {}",
        quota.policy_id,
        refusal.declared,
        attributes.model,
        refusal.limit,
        quota.scope,
        quota.window,
        quota.resets_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    if let Some(hint) = hint {
        reason.push_str(". ");
        reason.push_str(&hint);
    }
    let mut answer = Answer::refused(&quota.policy_id, Some(refusal.rule), reason);
    answer.until = Some(quota.resets_at);
    answer.retry_after_seconds = Some(quota.reset_seconds);
    answer
}

/// The sidecar's routes (the ops routes are added by the service lifecycle).
pub fn routes(
    checker: Arc<impl Checker>,
    settings: Arc<AnswerConfig>,
    rules: SharedRules,
) -> Router {
    let decider = Decider::new(checker, settings, rules);
    Router::new()
        .route("/v1/authz", any(forward_auth))
        .route("/v1/authz/{*rest}", any(forward_auth))
        .route("/v1/check", post(check))
        .route("/v1/scopes", get(scopes))
        .with_state(decider)
}

/// Remaining quota: the attributes from `x-quotaflow-*` headers, overridden by query
/// parameters of the JSON API's names (`?api_key_id=k1&team=search`, `label.<name>=…`).
async fn scopes(
    State(decider): State<Decider>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let mut attributes = Attributes::from_headers(
        headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
    );
    if let Err(message) = attributes.set_from_query(&query) {
        return invalid(message);
    }
    Json(decider.scopes(&attributes)).into_response()
}

/// Forward-auth: attributes from `x-quotaflow-*` headers; 200 to let the request go (allowed or
/// degraded), the deny status to refuse, with the answer's headers either way.
async fn forward_auth(State(decider): State<Decider>, headers: HeaderMap) -> Response {
    let attributes = Attributes::from_headers(
        headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
    );
    let answer = decider.decide(&attributes, "forward_auth");
    let status = if answer.allowed {
        StatusCode::OK
    } else {
        StatusCode::from_u16(decider.deny_status()).unwrap_or(StatusCode::TOO_MANY_REQUESTS)
    };
    let mut response = if answer.allowed {
        status.into_response()
    } else {
        (status, Json(answer.error_body())).into_response()
    };
    for (name, value) in answer.headers() {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
    response
}

/// The JSON API: the attributes as a JSON object, the [`Answer`] as one. Malformed JSON, an
/// unknown field or (with `answers.require_api_key`) a missing `api_key_id` is a 400 saying so.
async fn check(State(decider): State<Decider>, body: Bytes) -> Response {
    let attributes: Attributes = match serde_json::from_slice(&body) {
        Ok(attributes) => attributes,
        Err(error) => return invalid(format!("the body is not a check request: {error}")),
    };
    if decider.settings.require_api_key && attributes.api_key_id.is_empty() {
        return invalid("api_key_id is missing or empty".to_owned());
    }
    Json(decider.decide(&attributes, "check")).into_response()
}

fn invalid(message: String) -> Response {
    crate::metrics::invalid("check");
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({
            "error": {"type": "invalid_request", "message": message}
        })),
    )
        .into_response()
}
