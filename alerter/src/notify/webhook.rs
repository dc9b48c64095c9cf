//! The generic webhook channel (issue 17 point 5): every notice, as one JSON document, to one
//! HTTPS endpoint of the operator's choosing (an incident tool, a chat bridge, a ticketing
//! system), signed so the receiver can tell it came from this alerter and was not replayed.
//!
//! # The request
//! `POST <notify.webhook.url>` with `Content-Type: application/json` and
//! - `Quotaflow-Delivery: <delivery_id>`: the same on every attempt and redelivery of one notice,
//!   so the receiver can drop the copies a retry after a lost answer produces;
//! - `Quotaflow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(signing_secret, "<t>.<body>")>`.
//!   The receiver recomputes it over the raw body, compares in constant time, and refuses a `t`
//!   too far from its clock (five minutes is the usual tolerance) so an old request cannot be
//!   replayed. [`verify`] does all three.
//!
//! The body's shape is `schemas/json/webhook-notice.schema.json` (JSON Schema 2020-12); amounts are
//! decimal strings, never floats. `event` is `alert.triggered` or `alert.resolved`.
//!
//! # Delivery
//! Retried like Slack and PagerDuty ([`super::retry`]): 408, 429 and 5xx and transport errors are
//! tried again, then kept for redelivery rounds; another 4xx is refused for good. Each round's
//! outcome (`sent`, `pending`, `failed`, `dropped`) is written to the `webhook_deliveries` audit
//! table with the delivery id, the HTTP status and the error, so an operator can see per event
//! whether it arrived. The URL and the signing secret are secrets: never logged.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{Notice, NoticeKind};

/// The header carrying the delivery id.
pub const DELIVERY_HEADER: &str = "Quotaflow-Delivery";
/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Quotaflow-Signature";
/// The payload's `version`.
pub const PAYLOAD_VERSION: u32 = 1;

/// The notice's delivery id: a hash of what identifies it (policy, scope, window, kind, threshold
/// and amounts), hex. Stable across retries and redeliveries of the same notice.
pub fn delivery_id(notice: &Notice) -> String {
    let mut hasher = Sha256::new();
    let identity = serde_json::to_vec(&json!([
        notice.policy_id,
        notice.scope,
        notice.window.kind,
        notice.window.start,
        notice.kind,
        notice.threshold_percent,
        notice.threshold_amount,
        notice.spent,
        notice.limit,
        notice.unit,
    ]))
    .unwrap_or_default();
    hasher.update(&identity);
    hex::encode(&hasher.finalize()[..16])
}

/// `alert.triggered` or `alert.resolved`.
pub fn event_name(notice: &Notice) -> &'static str {
    match notice.kind {
        NoticeKind::Resolved { .. } => "alert.resolved",
        _ => "alert.triggered",
    }
}

/// The JSON document sent for `notice` (see the module docs and the JSON Schema).
pub fn payload(notice: &Notice, delivery_id: &str, sent_at: DateTime<Utc>) -> Value {
    let text = match &notice.kind {
        NoticeKind::Anomaly { text } | NoticeKind::Rule { text } => Some(text.clone()),
        _ => None,
    };
    json!({
        "version": PAYLOAD_VERSION,
        "delivery_id": delivery_id,
        "event": event_name(notice),
        "sent_at": sent_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "kind": notice.kind.as_str(),
        "incident": notice.kind.incident().as_str(),
        "policy_id": notice.policy_id,
        "owner": {"team": notice.owner.team, "contact": notice.owner.contact},
        "scope": notice.scope,
        "window": {
            "kind": notice.window.kind,
            "tz": notice.window.tz,
            "start": notice.window.start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "end": notice.window.end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "label": notice.window_label(),
        },
        "unit": notice.unit,
        "spent": notice.spent.normalize().to_string(),
        "limit": notice.limit.normalize().to_string(),
        "spent_of_limit": notice.amounts(),
        "threshold_percent": notice.threshold_percent,
        "threshold_amount": notice.threshold_amount.map(|amount| amount.normalize().to_string()),
        "text": text,
        "detail": notice.detail,
        "next_action": notice.next_action(),
        "approval_command": notice.approval_command,
        "burn_rate_per_hour": notice.burn_rate_per_hour.map(|rate| rate.normalize().to_string()),
        "projected_cap_at": notice.projected_cap_at
            .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    })
}

/// One delivery round's outcome, for the `webhook_deliveries` audit table.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookStatus {
    /// [`delivery_id`] of the notice.
    pub delivery_id: String,
    /// [`event_name`] of the notice.
    pub event: &'static str,
    /// The notice's policy.
    pub policy_id: String,
    /// The notice's scope.
    pub scope: String,
    /// `sent`, `pending` (failed this round, kept for another), `failed` (refused, not retried)
    /// or `dropped` (pushed out of a full redelivery queue).
    pub status: &'static str,
    /// Which round this was (1 = the first; 0 for a drop).
    pub round: u32,
    /// HTTP attempts in the round.
    pub attempts: u32,
    /// The last HTTP status (0: no answer).
    pub http_status: u16,
    /// The error, when not sent (no secret in it).
    pub error: String,
    /// When the round ended.
    pub at: DateTime<Utc>,
}

impl WebhookStatus {
    /// The status of a round for `notice`.
    pub fn of(
        notice: &Notice,
        status: &'static str,
        round: u32,
        attempts: u32,
        http_status: u16,
        error: String,
    ) -> WebhookStatus {
        WebhookStatus {
            delivery_id: delivery_id(notice),
            event: event_name(notice),
            policy_id: notice.policy_id.clone(),
            scope: notice.scope.clone(),
            status,
            round,
            attempts,
            http_status,
            error,
            at: Utc::now(),
        }
    }
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|byte| byte ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|byte| byte ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The `Quotaflow-Signature` header value of `body` sent at `timestamp` (unix seconds).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(hmac_sha256(secret, &message))
    )
}

/// Why a request's signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is missing a part or is not `t=<seconds>,v1=<hex>`.
    #[error("malformed signature header")]
    Malformed,
    /// `t` is further from now than the tolerance: a replay, or a clock far off.
    #[error("signature timestamp {0} s away from now, more than the tolerance")]
    Stale(i64),
    /// The HMAC does not match the body.
    #[error("signature does not match the body")]
    Mismatch,
}

/// Checks a `Quotaflow-Signature` header against the raw `body`, at `now` (unix seconds), with
/// `tolerance_secs` of clock difference allowed. Constant-time comparison.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut mac = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => mac = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(timestamp), Some(mac)) = (timestamp, mac) else {
        return Err(SignatureError::Malformed);
    };
    let skew = (now - timestamp).abs();
    if skew > tolerance_secs {
        return Err(SignatureError::Stale(skew));
    }
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    let expected = hmac_sha256(secret, &message);
    if mac.len() != expected.len() {
        return Err(SignatureError::Mismatch);
    }
    let difference = mac
        .iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if difference == 0 {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231, test case 2.
    #[test]
    fn hmac_matches_the_rfc_4231_vector() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn a_signature_verifies_and_a_changed_body_stale_time_or_other_key_does_not() {
        let header = signature(b"s3cret", 1_000, b"{\"a\":1}");
        assert!(header.starts_with("t=1000,v1="));
        assert_eq!(verify(b"s3cret", &header, b"{\"a\":1}", 1_100, 300), Ok(()));
        assert_eq!(
            verify(b"s3cret", &header, b"{\"a\":2}", 1_100, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", &header, b"{\"a\":1}", 1_100, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"s3cret", &header, b"{\"a\":1}", 1_400, 300),
            Err(SignatureError::Stale(400))
        );
        assert_eq!(
            verify(b"s3cret", "v1=00", b"", 0, 300),
            Err(SignatureError::Malformed)
        );
    }
}
