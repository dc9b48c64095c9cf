//! Bearer tokens: which producer is calling.
//!
//! Tokens are compared as SHA-256 digests with a constant-time fold over every configured producer, so
//! neither the position of the first differing byte, the token's length nor which producer matched
//! shows in the response time. Tokens never reach a log line or a response.

use std::collections::BTreeMap;

use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use infra::secret::Secret;
use sha2::{Digest, Sha256};

/// Why a request is not authenticated (all answered with 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not `Bearer <token>`.
    Malformed,
    /// A bearer token no producer has.
    Unknown,
}

impl AuthError {
    /// Stable machine-readable kind, the `error` field of the 401 body.
    pub fn kind(self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Malformed => "malformed_authorization",
            AuthError::Unknown => "unknown_token",
        }
    }

    /// What the caller should fix.
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => "send `Authorization: Bearer <token>`",
            AuthError::Malformed => "the Authorization header must be `Bearer <token>`",
            AuthError::Unknown => "the bearer token is not the token of any producer",
        }
    }
}

/// The configured producers and the digests of their tokens.
#[derive(Clone)]
pub struct Tokens {
    /// (producer name, SHA-256 of its token); digests so that every comparison has the same length.
    producers: Vec<(String, [u8; 32])>,
}

impl Tokens {
    pub fn new(tokens: &BTreeMap<String, Secret>) -> Self {
        let producers = tokens
            .iter()
            .map(|(producer, token)| (producer.clone(), digest(token.expose().as_bytes())))
            .collect();
        Self { producers }
    }

    /// The producer whose token the request carries.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<&str, AuthError> {
        let header = headers.get(AUTHORIZATION).ok_or(AuthError::Missing)?;
        let token = bearer_token(header.as_bytes()).ok_or(AuthError::Malformed)?;
        let presented = digest(token);
        // Every producer is compared, whatever matched earlier: the time does not depend on which.
        let mut matched = None;
        for (producer, expected) in &self.producers {
            if constant_time_eq(&presented, expected) {
                matched = Some(producer.as_str());
            }
        }
        matched.ok_or(AuthError::Unknown)
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 7235), if the header has that form.
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty() && !token.contains(&b' ')).then_some(token)
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equality that looks at every byte: no early exit on the first difference.
fn constant_time_eq(left: &[u8; 32], right: &[u8; 32]) -> bool {
    let difference = left
        .iter()
        .zip(right)
        .fold(0u8, |difference, (left, right)| difference | (left ^ right));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn tokens() -> Tokens {
        let mut config = BTreeMap::new();
        config.insert("gateway-eu".to_owned(), Secret::new("token-eu"));
        config.insert("gateway-us".to_owned(), Secret::new("token-us"));
        Tokens::new(&config)
    }

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn names_the_producer_of_a_known_token() {
        let tokens = tokens();
        assert_eq!(
            tokens.authenticate(&headers(Some("Bearer token-us"))),
            Ok("gateway-us")
        );
        assert_eq!(
            tokens.authenticate(&headers(Some("bearer token-eu"))),
            Ok("gateway-eu")
        );
    }

    #[test]
    fn tells_missing_malformed_and_unknown_apart() {
        let tokens = tokens();
        let cases = [
            (None, AuthError::Missing),
            (Some("Basic dXNlcjpwYXNz"), AuthError::Malformed),
            (Some("Bearer "), AuthError::Malformed),
            (Some("Bearer a b"), AuthError::Malformed),
            (Some("token-eu"), AuthError::Malformed),
            (Some("Bearer token-e"), AuthError::Unknown),
            (Some("Bearer token-euu"), AuthError::Unknown),
        ];
        for (header, expected) in cases {
            assert_eq!(
                tokens.authenticate(&headers(header)),
                Err(expected),
                "{header:?}"
            );
        }
    }
}
