//! How Kafka clients authenticate and encrypt ([`KafkaSecurity`]), and the free-form librdkafka
//! properties ([`KafkaProperties`]) that must not leak the secrets they may hold.
//!
//! Both are checked when the config is deserialized, so every service refuses a contradictory
//! setting at load time with a message naming it (e.g. SASL without a username), instead of
//! failing later with a broker error that does not say which setting is wrong.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::secret::Secret;

/// How the connection to the brokers is protected (`security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication: the local stack only.
    #[default]
    Plaintext,
    /// TLS, the client authenticated by its certificate (mTLS) or not at all.
    Ssl,
    /// SASL authentication without TLS: the password crosses the network in a form an eavesdropper
    /// can attack; only inside a trusted network.
    SaslPlaintext,
    /// TLS and SASL authentication: what managed Kafka services require.
    SaslSsl,
}

impl SecurityProtocol {
    /// The librdkafka value.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether the connection uses TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether the client authenticates with SASL (username and password).
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// The SASL mechanism (`sasl.mechanisms`); each takes a username and a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// The password itself is sent (so only over TLS).
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response; the password never crosses the network.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// As SCRAM-SHA-256 with SHA-512; what `dev/stack up --secure` creates.
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The librdkafka value.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// TLS and SASL settings of every Kafka client (`[kafka.security]`, `QUOTAFLOW_KAFKA__SECURITY__*`).
/// The password comes from `QUOTAFLOW_KAFKA__SECURITY__PASSWORD`, never from a file in the repo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "KafkaSecurityFields")]
pub struct KafkaSecurity {
    /// `plaintext` (default, the local stack), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (default); used with the `sasl_*` protocols.
    pub sasl_mechanism: SaslMechanism,
    /// SASL username; required with the `sasl_*` protocols.
    pub username: String,
    /// SASL password; required with the `sasl_*` protocols. From the environment, never logged.
    pub password: Secret,
    /// PEM file of the CA(s) that signed the brokers' certificates; absent = the system's trust
    /// store. Brokers' host names are always verified against their certificates.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mTLS (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl Default for KafkaSecurity {
    fn default() -> Self {
        Self {
            protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: SaslMechanism::default(),
            username: String::new(),
            password: Secret::default(),
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

impl KafkaSecurity {
    /// Checks that the settings agree with each other; the message names the setting to fix.
    pub fn validate(&self) -> Result<(), String> {
        let protocol = self.protocol.as_librdkafka();
        if self.protocol.uses_sasl() {
            if self.username.is_empty() {
                return Err(format!(
                    "kafka.security.username is required with protocol {protocol}"
                ));
            }
            if self.password.is_empty() {
                return Err(format!(
                    "kafka.security.password is required with protocol {protocol} \
                     (set QUOTAFLOW_KAFKA__SECURITY__PASSWORD)"
                ));
            }
        } else if !self.username.is_empty() || !self.password.is_empty() {
            return Err(format!(
                "kafka.security.username/password are set but protocol {protocol} does not use \
                 SASL; set kafka.security.protocol to sasl_ssl"
            ));
        }
        let has_tls_file =
            self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some();
        if has_tls_file && !self.protocol.uses_tls() {
            return Err(format!(
                "kafka.security.ca_file/cert_file/key_file are set but protocol {protocol} does not \
                 use TLS; set kafka.security.protocol to ssl or sasl_ssl"
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(
                "kafka.security.cert_file and kafka.security.key_file go together (mTLS)"
                    .to_string(),
            );
        }
        Ok(())
    }
}

/// What the config file and environment spell; becomes a [`KafkaSecurity`] only if it validates.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct KafkaSecurityFields {
    protocol: SecurityProtocol,
    sasl_mechanism: SaslMechanism,
    username: String,
    password: Secret,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

impl Default for KafkaSecurityFields {
    fn default() -> Self {
        let defaults = KafkaSecurity::default();
        Self {
            protocol: defaults.protocol,
            sasl_mechanism: defaults.sasl_mechanism,
            username: defaults.username,
            password: defaults.password,
            ca_file: defaults.ca_file,
            cert_file: defaults.cert_file,
            key_file: defaults.key_file,
        }
    }
}

impl TryFrom<KafkaSecurityFields> for KafkaSecurity {
    type Error = String;

    fn try_from(fields: KafkaSecurityFields) -> Result<Self, String> {
        let security = KafkaSecurity {
            protocol: fields.protocol,
            sasl_mechanism: fields.sasl_mechanism,
            username: fields.username,
            password: fields.password,
            ca_file: fields.ca_file,
            cert_file: fields.cert_file,
            key_file: fields.key_file,
        };
        security.validate()?;
        Ok(security)
    }
}

/// librdkafka properties that [`KafkaSecurity`] sets; `kafka.properties` may not set them, so there is
/// one place to read how a client connects.
pub const PROPERTIES_OWNED_BY_SECURITY: [&str; 9] = [
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.endpoint.identification.algorithm",
];

/// Parts of a property name that mark its value as secret (`ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, `sasl.jaas.config`, `ssl.key.pem`, ...).
const SECRET_KEY_MARKERS: [&str; 6] = [
    "password",
    "secret",
    "token",
    "sasl.jaas",
    "key.pem",
    "oauthbearer.config",
];

/// Whether a librdkafka property's value must never be printed.
pub fn property_is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEY_MARKERS.iter().any(|marker| key.contains(marker))
}

/// Extra librdkafka properties (`[kafka.properties]`): a map that prints and serializes the values of
/// secret-looking keys ([`property_is_secret`]) as `<redacted>`, and refuses the keys
/// [`KafkaSecurity`] owns.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(BTreeMap<String, String>);

impl KafkaProperties {
    /// The map, values in clear: only to hand them to librdkafka.
    pub fn expose(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    fn redacted(&self) -> BTreeMap<&str, &str> {
        self.0
            .iter()
            .map(|(key, value)| {
                let shown = if property_is_secret(key) {
                    "<redacted>"
                } else {
                    value.as_str()
                };
                (key.as_str(), shown)
            })
            .collect()
    }
}

impl From<BTreeMap<String, String>> for KafkaProperties {
    fn from(map: BTreeMap<String, String>) -> Self {
        Self(map)
    }
}

impl Deref for KafkaProperties {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for KafkaProperties {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

impl Serialize for KafkaProperties {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.redacted().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for KafkaProperties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(deserializer)?;
        if let Some(key) = map
            .keys()
            .find(|key| PROPERTIES_OWNED_BY_SECURITY.contains(&key.to_ascii_lowercase().as_str()))
        {
            return Err(serde::de::Error::custom(format!(
                "kafka.properties.{key} is set by kafka.security (protocol, sasl_mechanism, \
                 username, password, ca_file, cert_file, key_file); set it there"
            )));
        }
        Ok(Self(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl_ssl() -> KafkaSecurity {
        KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            username: "quotaflow".to_string(),
            password: Secret::new("pw-1234"),
            ca_file: Some(PathBuf::from("/etc/ca.pem")),
            ..KafkaSecurity::default()
        }
    }

    #[test]
    fn contradictory_security_settings_are_refused_naming_the_setting() {
        assert_eq!(sasl_ssl().validate(), Ok(()));
        assert_eq!(KafkaSecurity::default().validate(), Ok(()));
        let cases = [
            (
                KafkaSecurity {
                    username: String::new(),
                    ..sasl_ssl()
                },
                "kafka.security.username is required",
            ),
            (
                KafkaSecurity {
                    password: Secret::default(),
                    ..sasl_ssl()
                },
                "QUOTAFLOW_KAFKA__SECURITY__PASSWORD",
            ),
            (
                KafkaSecurity {
                    protocol: SecurityProtocol::Ssl,
                    ..sasl_ssl()
                },
                "does not use SASL",
            ),
            (
                KafkaSecurity {
                    protocol: SecurityProtocol::SaslPlaintext,
                    ..sasl_ssl()
                },
                "does not use TLS",
            ),
            (
                KafkaSecurity {
                    cert_file: Some(PathBuf::from("/etc/client.pem")),
                    ..sasl_ssl()
                },
                "go together",
            ),
        ];
        for (security, expected) in cases {
            let error = security.validate().unwrap_err();
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains("pw-1234"), "{error}");
        }
    }

    #[test]
    fn secret_looking_properties_are_redacted_and_others_shown() {
        let mut properties = KafkaProperties::default();
        properties.insert("ssl.key.password".into(), "k3y-pass".into());
        properties.insert(
            "sasl.jaas.config".into(),
            "org.apache... password=\"jaas-pass\"".into(),
        );
        properties.insert(
            "sasl.oauthbearer.client.secret".into(),
            "oauth-s3cret".into(),
        );
        properties.insert("Some.Token.Value".into(), "t0ken".into());
        properties.insert("group.instance.id".into(), "archiver-1".into());
        let debug = format!("{properties:?}");
        let json = serde_json::to_string(&properties).unwrap();
        for shown in [&debug, &json] {
            for secret in ["k3y-pass", "jaas-pass", "oauth-s3cret", "t0ken"] {
                assert!(!shown.contains(secret), "{shown}");
            }
            assert!(shown.contains("archiver-1"), "{shown}");
        }
        assert_eq!(properties.expose()["ssl.key.password"], "k3y-pass");
    }

    #[test]
    fn properties_cannot_set_what_security_models() {
        let error = serde_json::from_str::<KafkaProperties>(r#"{"SASL.PASSWORD": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("set by kafka.security"), "{error}");
        let fine: KafkaProperties = serde_json::from_str(r#"{"group.instance.id": "a"}"#).unwrap();
        assert_eq!(fine["group.instance.id"], "a");
    }
}
