//! Envoy external authorization v3 (`envoy.service.auth.v3.Authorization/Check`) over gRPC, with
//! the `envoy-types` protos on tonic.
//!
//! The attributes are read from the HTTP request's headers as Envoy forwards them
//! (`attributes.request.http.headers`, names in lower case; see [`crate::attributes`]). An
//! allowed or degraded request gets the answer's headers added to the upstream request
//! (overwriting any a client sent, so `x-quotaflow-degrade-to` cannot be forged); a refusal is
//! `RESOURCE_EXHAUSTED` (deny status 429) or `PERMISSION_DENIED` (any other) with a denied HTTP
//! response: the configured status, the answer's headers and a JSON body.

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
    HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use infra::shutdown::Shutdown;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::answer::Answer;
use crate::attributes::Attributes;
use crate::config::AnswerConfig;
use crate::http::Decider;
use crate::{Checker, DecideError};

/// The ext_authz service.
pub struct ExtAuthz {
    decider: Decider,
}

impl ExtAuthz {
    /// A service answering with `checker` after the admission rules of `rules`, refusals shaped
    /// by `settings`.
    pub fn new(
        checker: Arc<impl Checker>,
        settings: Arc<AnswerConfig>,
        rules: crate::SharedRules,
    ) -> Self {
        Self {
            decider: Decider::new(checker, settings, rules),
        }
    }

    fn response(&self, answer: &Answer) -> CheckResponse {
        if answer.allowed {
            let mut ok = OkHttpResponseBuilder::new();
            for (name, value) in answer.headers() {
                ok.add_header(
                    name,
                    value,
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
            }
            let mut response = CheckResponse::with_status(Status::ok(answer.decision));
            response.set_http_response(ok);
            return response;
        }
        let deny_status = self.decider.deny_status();
        let code = HttpStatusCode::try_from(i32::from(deny_status))
            .unwrap_or(HttpStatusCode::TooManyRequests);
        let mut denied = DeniedHttpResponseBuilder::new();
        denied
            .set_http_status(code)
            .set_body(answer.error_body().to_string())
            .add_header("content-type", "application/json", None, false);
        for (name, value) in answer.headers() {
            denied.add_header(name, value, None, false);
        }
        let reason = answer.reason.clone().unwrap_or_default();
        let status = if deny_status == 429 {
            Status::resource_exhausted(reason)
        } else {
            Status::permission_denied(reason)
        };
        let mut response = CheckResponse::with_status(status);
        response.set_http_response(denied);
        response
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let attributes = request
            .get_client_headers()
            .map(|headers| {
                Attributes::from_headers(
                    headers
                        .iter()
                        .map(|(name, value)| (name.as_str(), value.as_str())),
                )
            })
            .unwrap_or_default();
        let answer = self.decider.decide(&attributes, "ext_authz");
        Ok(Response::new(self.response(&answer)))
    }
}

/// Serves `service` on `listener` until `shutdown` (in-flight calls finish).
pub async fn serve(
    service: ExtAuthz,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), DecideError> {
    // No Nagle: an answer is one small frame, and waiting to coalesce it with the next costs
    // Envoy a delayed-ACK round (~40 ms) per check.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// The `CheckRequest` Envoy sends for an HTTP request to `path` with `headers` (names in lower
/// case, as Envoy gives them): what the sidecar's tests and benchmark send as a client.
pub fn check_request(
    method: &str,
    path: &str,
    headers: std::collections::HashMap<String, String>,
) -> CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}
