//! A local stand-in for Slack incoming webhooks (`POST /slack`) and the PagerDuty Events API v2
//! (`POST /pagerduty`) that checks every payload against the documented formats, for tests and
//! the demo: no traffic leaves the machine, and a malformed payload is refused with a 400 and
//! remembered, so a test or the demo fails on it instead of passing silently.
//!
//! - Slack: a non-empty `text` fallback and 1 to 50 `blocks`, each with a `type`; header and
//!   section texts are `plain_text` or `mrkdwn` text objects.
//! - PagerDuty: the expected `routing_key`, a `dedup_key` of 1 to 255 characters, and an
//!   `event_action`; a `trigger` has a payload with a `summary` (1 to 1024 characters), a
//!   `source` and a known `severity`. Accepted events are answered `202` with the dedup key, as
//!   PagerDuty does.
//!
//! - Webhook (`POST /webhook`, when [`Receiver::with_webhook_secret`] set one): the
//!   `Quotaflow-Signature` verifies over the raw body with that secret (within five minutes),
//!   `Quotaflow-Delivery` equals the body's `delivery_id`, and the body is valid against
//!   `schemas/json/webhook-notice.schema.json`. [`Receiver::with_webhook_failures`] answers the
//!   first N posts 503, as a receiver in an outage does.
//!
//! `GET /captured` returns everything received as JSON (`accepted`, `refused`), `GET /readyz`
//! answers 200.
//!
//! # HTTP or HTTPS
//! [`Receiver::router`] is served with `axum::serve` on a plain `TcpListener` (HTTP), or on a
//! [`TlsListener`] (HTTPS) given a certificate chain and key in PEM, so the notifiers' TLS
//! (certificate verification, `notify.ca_file`) is tested against the same payload checks. TLS
//! handshakes run concurrently (at most [`MAX_PENDING_HANDSHAKES`], each within
//! [`HANDSHAKE_TIMEOUT`]); a failed handshake, e.g. a client that does not trust the certificate, is
//! logged at debug level and never stops the server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::routing::get;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

/// One request the receiver accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Received {
    /// `/slack` or `/pagerduty`.
    pub path: String,
    /// The JSON body.
    pub body: Value,
}

/// Everything received so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Captured {
    /// Valid payloads, in arrival order.
    pub accepted: Vec<Received>,
    /// Refused payloads: path and the problem.
    pub refused: Vec<(String, String)>,
}

impl Captured {
    /// Accepted bodies posted to `path`.
    pub fn bodies(&self, path: &str) -> Vec<&Value> {
        self.accepted
            .iter()
            .filter(|received| received.path == path)
            .map(|received| &received.body)
            .collect()
    }
}

/// The receiver's state, shared with its server.
#[derive(Clone)]
pub struct Receiver {
    captured: Arc<Mutex<Captured>>,
    routing_key: Arc<str>,
    /// How long each Slack post waits before it is answered (a slow webhook); zero by default.
    slack_delay: Duration,
    /// The generic webhook's signing secret; `None` refuses `/webhook`.
    webhook_secret: Option<Arc<str>>,
    /// Webhook posts still to answer 503 (an outage).
    webhook_failures: Arc<std::sync::atomic::AtomicU32>,
}

impl Receiver {
    /// A receiver expecting PagerDuty events with `routing_key`.
    pub fn new(routing_key: &str) -> Receiver {
        Receiver {
            captured: Arc::default(),
            routing_key: routing_key.into(),
            slack_delay: Duration::ZERO,
            webhook_secret: None,
            webhook_failures: Arc::default(),
        }
    }

    /// Accepts `POST /webhook` signed with `secret`.
    pub fn with_webhook_secret(mut self, secret: &str) -> Receiver {
        self.webhook_secret = Some(secret.into());
        self
    }

    /// Answers the next `count` webhook posts 503 (not captured).
    pub fn with_webhook_failures(self, count: u32) -> Receiver {
        self.webhook_failures
            .store(count, std::sync::atomic::Ordering::SeqCst);
        self
    }

    /// Answers each Slack post only after `delay`, as a slow webhook does (the tests of a slow
    /// receiver); the post is captured when it is answered.
    pub fn with_slack_delay(mut self, delay: Duration) -> Receiver {
        self.slack_delay = delay;
        self
    }

    /// The routes: `POST /slack`, `POST /pagerduty`, `GET /captured`, `GET /readyz`.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/captured", get(captured))
            .route("/readyz", get(|| async { "ready" }))
            .fallback(axum::routing::post(receive))
            .with_state(self.clone())
    }

    /// A copy of everything received so far.
    pub fn captured(&self) -> Captured {
        self.captured
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

async fn captured(State(receiver): State<Receiver>) -> Json<Captured> {
    Json(receiver.captured())
}

async fn receive(
    State(receiver): State<Receiver>,
    uri: Uri,
    headers: axum::http::HeaderMap,
    raw: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    let path = uri.path().to_owned();
    if path == "/slack" && !receiver.slack_delay.is_zero() {
        tokio::time::sleep(receiver.slack_delay).await;
    }
    if path == "/webhook"
        && receiver
            .webhook_failures
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |left| left.checked_sub(1),
            )
            .is_ok()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "outage"})),
        );
    }
    let body: Value = match serde_json::from_slice(&raw) {
        Ok(body) => body,
        Err(error) => {
            let problem = format!("body is not JSON: {error}");
            receiver
                .captured
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .refused
                .push((path, problem.clone()));
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"status": "invalid event", "message": problem})),
            );
        }
    };
    let problem = match path.as_str() {
        "/slack" => check_slack(&body),
        "/pagerduty" => check_pagerduty(&body, &receiver.routing_key),
        "/webhook" => match &receiver.webhook_secret {
            Some(secret) => check_webhook(&headers, &raw, &body, secret),
            None => Err("no webhook secret set: /webhook is not served".to_owned()),
        },
        other => Err(format!("unexpected path {other}")),
    };
    let mut captured = receiver
        .captured
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match problem {
        Ok(()) => {
            let dedup_key = body["dedup_key"].clone();
            captured.accepted.push(Received {
                path: path.clone(),
                body,
            });
            if path == "/pagerduty" {
                (
                    StatusCode::ACCEPTED,
                    Json(
                        json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key}),
                    ),
                )
            } else {
                (StatusCode::OK, Json(json!("ok")))
            }
        }
        Err(problem) => {
            captured.refused.push((path, problem.clone()));
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"status": "invalid event", "message": problem})),
            )
        }
    }
}

/// Longest a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at most; further connections wait in the kernel's accept queue.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// Why a [`TlsListener`] cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// The certificate PEM holds no certificate or a malformed one.
    #[error("server certificate: {0}")]
    Certificate(String),
    /// The key PEM holds no private key or a malformed one.
    #[error("server private key: {0}")]
    Key(String),
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("TLS server configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A TCP listener that serves TLS: `axum::serve(TlsListener::new(..)?, receiver.router())`.
pub struct TlsListener {
    /// Where connections arrive.
    tcp: TcpListener,
    /// The server certificate and key (TLS 1.2 and 1.3, ring provider).
    acceptor: TlsAcceptor,
    /// Handshakes in progress, so a slow or failing client does not hold up the others.
    handshakes: JoinSet<(std::io::Result<TlsStream<TcpStream>>, SocketAddr)>,
}

impl TlsListener {
    /// Serves TLS on `tcp` with `certificate_chain_pem` (server certificate first, then any
    /// intermediates) and `private_key_pem` (PKCS#8, PKCS#1 or SEC1).
    pub fn new(
        tcp: TcpListener,
        certificate_chain_pem: &[u8],
        private_key_pem: &[u8],
    ) -> Result<TlsListener, TlsSetupError> {
        let chain = CertificateDer::pem_slice_iter(certificate_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsSetupError::Certificate(error.to_string()))?;
        if chain.is_empty() {
            return Err(TlsSetupError::Certificate(
                "no PEM certificate found".to_string(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(private_key_pem)
            .map_err(|error| TlsSetupError::Key(error.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        Ok(TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshakes: JoinSet::new(),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept(), if self.handshakes.len() < MAX_PENDING_HANDSHAKES => {
                    match accepted {
                        Ok((stream, peer)) => {
                            let acceptor = self.acceptor.clone();
                            self.handshakes.spawn(async move {
                                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                    .await
                                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
                                (handshake, peer)
                            });
                        }
                        // Out of file descriptors and the like: back off instead of spinning.
                        Err(error) => {
                            debug!(%error, "receiver accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                Some(finished) = self.handshakes.join_next() => match finished {
                    Ok((Ok(stream), peer)) => return (stream, peer),
                    Ok((Err(error), peer)) => debug!(%error, %peer, "receiver TLS handshake failed"),
                    Err(error) => debug!(%error, "receiver TLS handshake task ended"),
                },
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The generic webhook's checks (module docs).
pub fn check_webhook(
    headers: &axum::http::HeaderMap,
    raw: &[u8],
    body: &Value,
    secret: &str,
) -> Result<(), String> {
    use crate::notify::webhook;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| format!("missing header {name}"))
    };
    webhook::verify(
        secret.as_bytes(),
        header(webhook::SIGNATURE_HEADER)?,
        raw,
        chrono::Utc::now().timestamp(),
        300,
    )
    .map_err(|error| error.to_string())?;
    if body["delivery_id"].as_str() != Some(header(webhook::DELIVERY_HEADER)?) {
        return Err("Quotaflow-Delivery differs from the body's delivery_id".to_owned());
    }
    let schema: Value = serde_json::from_str(schemas::WEBHOOK_NOTICE_SCHEMA)
        .map_err(|error| format!("the schema does not parse: {error}"))?;
    let validator = jsonschema::draft202012::new(&schema).map_err(|error| error.to_string())?;
    let problems: Vec<String> = validator
        .iter_errors(body)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Slack incoming webhook with Block Kit (see the module docs).
pub fn check_slack(body: &Value) -> Result<(), String> {
    let text = body["text"].as_str().ok_or("no text fallback")?;
    if text.is_empty() {
        return Err("empty text".into());
    }
    let blocks = body["blocks"].as_array().ok_or("no blocks")?;
    if blocks.is_empty() || blocks.len() > 50 {
        return Err(format!("{} blocks (1..=50)", blocks.len()));
    }
    for block in blocks {
        let kind = block["type"].as_str().ok_or("block without type")?;
        if matches!(kind, "header" | "section") {
            if let Some(text) = block.get("text") {
                let text_type = text["type"].as_str().ok_or("text object without type")?;
                if !matches!(text_type, "plain_text" | "mrkdwn") {
                    return Err(format!("text type {text_type}"));
                }
            }
        }
    }
    Ok(())
}

/// PagerDuty Events API v2 (see the module docs).
pub fn check_pagerduty(body: &Value, routing_key: &str) -> Result<(), String> {
    if body["routing_key"] != routing_key {
        return Err("wrong routing_key".into());
    }
    let dedup_key = body["dedup_key"].as_str().ok_or("no dedup_key")?;
    if dedup_key.is_empty() || dedup_key.len() > 255 {
        return Err("bad dedup_key length".into());
    }
    match body["event_action"].as_str() {
        Some("trigger") => {
            let payload = &body["payload"];
            let summary = payload["summary"].as_str().ok_or("no summary")?;
            if summary.is_empty() || summary.chars().count() > 1024 {
                return Err("bad summary".into());
            }
            payload["source"].as_str().ok_or("no source")?;
            let severity = payload["severity"].as_str().ok_or("no severity")?;
            if !matches!(severity, "critical" | "error" | "warning" | "info") {
                return Err(format!("severity {severity}"));
            }
            Ok(())
        }
        Some("resolve" | "acknowledge") => Ok(()),
        other => Err(format!("event_action {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tls_setup_names_what_is_missing() {
        let tcp = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
        let no_certificate = TlsListener::new(tcp().await, b"not PEM", b"not PEM");
        assert!(matches!(no_certificate, Err(TlsSetupError::Certificate(_))));
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let no_key = TlsListener::new(tcp().await, certificate.pem().as_bytes(), b"not PEM");
        assert!(matches!(no_key, Err(TlsSetupError::Key(_))));
        let other_key = rcgen::KeyPair::generate().unwrap();
        let mismatch = TlsListener::new(
            tcp().await,
            certificate.pem().as_bytes(),
            other_key.serialize_pem().as_bytes(),
        );
        assert!(
            matches!(mismatch, Err(TlsSetupError::Rustls(_))),
            "{:?}",
            mismatch.err()
        );
        let served = TlsListener::new(
            tcp().await,
            certificate.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        );
        assert!(served.is_ok());
    }

    #[test]
    fn payloads_off_the_documented_formats_are_refused() {
        assert!(check_slack(&json!({"text": "t", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x"}}]})).is_ok());
        assert!(check_slack(&json!({"text": "t", "blocks": []})).is_err());
        assert!(check_slack(&json!({"blocks": [{"type": "divider"}]})).is_err());
        let trigger = json!({"routing_key": "k", "dedup_key": "d", "event_action": "trigger",
            "payload": {"summary": "s", "source": "q", "severity": "error"}});
        assert!(check_pagerduty(&trigger, "k").is_ok());
        assert_eq!(
            check_pagerduty(&trigger, "other").unwrap_err(),
            "wrong routing_key"
        );
        let mut bad = trigger.clone();
        bad["payload"]["severity"] = json!("sev1");
        assert!(check_pagerduty(&bad, "k").is_err());
        assert!(check_pagerduty(
            &json!({"routing_key": "k", "dedup_key": "d", "event_action": "resolve"}),
            "k"
        )
        .is_ok());
    }
}
