//! The HTTP client every webhook is sent with (Slack, PagerDuty, and any future webhook), built once
//! at startup from [`NotifyConfig`].
//!
//! # TLS
//! Webhooks go over HTTPS with rustls (reqwest's `rustls-tls`, ring provider, TLS 1.2 or 1.3). The
//! receiver's certificate must chain to one of:
//! - the Mozilla roots compiled in (`webpki-roots`), which cover `hooks.slack.com` and
//!   `events.pagerduty.com`; the system trust store is not read, so the behaviour does not depend
//!   on the host;
//! - every certificate of [`NotifyConfig::ca_file`] (PEM), for private receivers (an internal
//!   relay, a test receiver) signed by a private CA.
//!
//! A CA file that cannot be read, holds no certificate or holds a malformed one is a
//! [`NotifyError::Config`] when the client is built, i.e. when the alerter starts, never later at
//! the first alert. Certificate verification cannot be turned off.
//!
//! Redirects are not followed: a webhook URL that redirects is a misconfiguration, and following it
//! would send the notice (and a PagerDuty routing key) to a host nobody configured.

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::{NotifyConfig, NotifyError};

/// Deadline to open a connection (TCP and TLS handshake), within the attempt deadline
/// ([`super::RetryPolicy::attempt_timeout_ms`]) set per request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The client for `config`: built-in webpki roots plus the certificates of `config.ca_file`.
pub fn http_client(config: &NotifyConfig) -> Result<reqwest::Client, NotifyError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(true)
        .min_tls_version(reqwest::tls::Version::TLS_1_2)
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &config.ca_file {
        for certificate in extra_roots(path)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|error| {
        NotifyError::Config(format!(
            "cannot build the webhook HTTP client: {}",
            error.without_url()
        ))
    })
}

/// Every certificate of the PEM file at `path`; at least one, all well formed.
fn extra_roots(path: &Path) -> Result<Vec<reqwest::Certificate>, NotifyError> {
    let config_error =
        |problem: String| NotifyError::Config(format!("ca_file {}: {problem}", path.display()));
    let pem = std::fs::read(path).map_err(|error| config_error(format!("cannot read: {error}")))?;
    let ders = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| config_error(format!("not valid PEM: {error}")))?;
    if ders.is_empty() {
        return Err(config_error(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".to_string(),
        ));
    }
    ders.iter()
        .map(|der| {
            // Parsed here, as rustls will, so a malformed certificate fails now with its file name.
            webpki_parse(der)
                .map_err(|problem| config_error(format!("bad certificate: {problem}")))?;
            reqwest::Certificate::from_der(der)
                .map_err(|error| config_error(format!("bad certificate: {error}")))
        })
        .collect()
}

/// Checks `der` is a certificate rustls accepts as a trust anchor.
fn webpki_parse(der: &CertificateDer<'_>) -> Result<(), String> {
    let mut store = rustls::RootCertStore::empty();
    store.add(der.clone()).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with_ca(path: &Path) -> NotifyConfig {
        NotifyConfig {
            ca_file: Some(path.to_path_buf()),
            ..NotifyConfig::default()
        }
    }

    fn error_of(config: &NotifyConfig) -> String {
        match http_client(config) {
            Ok(_) => panic!("the client was built"),
            Err(error @ NotifyError::Config(_)) => error.to_string(),
            Err(other) => panic!("not a config error: {other}"),
        }
    }

    #[test]
    fn without_a_ca_file_the_built_in_roots_are_enough() {
        assert!(http_client(&NotifyConfig::default()).is_ok());
    }

    #[test]
    fn unreadable_empty_or_malformed_ca_files_are_config_errors() {
        let dir = std::env::temp_dir().join(format!("notify_ca_{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();

        let missing = dir.join("missing.pem");
        let error = error_of(&config_with_ca(&missing));
        assert!(
            error.contains("ca_file") && error.contains("missing.pem"),
            "{error}"
        );
        assert!(error.contains("cannot read"), "{error}");

        let no_certificate = dir.join("empty.pem");
        std::fs::write(&no_certificate, "just text, no PEM\n").unwrap();
        let error = error_of(&config_with_ca(&no_certificate));
        assert!(error.contains("no PEM certificate"), "{error}");

        let malformed = dir.join("malformed.pem");
        std::fs::write(
            &malformed,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let error = error_of(&config_with_ca(&malformed));
        assert!(error.contains("bad certificate"), "{error}");

        std::fs::remove_dir_all(&dir).unwrap();
    }
}
