//! Secrets (webhook URLs, routing keys, passwords, bearer tokens) come from the environment and must
//! never reach a log line: [`Secret`] redacts itself in `Debug` and `Display`, and serializes as
//! `"<redacted>"` so a config dump cannot leak it either.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string whose value is only reachable through [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value; call it only where the value is sent, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// For command-line flags (`clap` builds a flag's value from a `String`).
impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(value))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints_its_value() {
        let secret = Secret::new("https://hooks.slack.com/services/T000/B000/XXXX");
        assert!(!format!("{secret:?}").contains("hooks"));
        assert!(!format!("{secret}").contains("hooks"));
        assert!(!serde_json::to_string(&secret).unwrap().contains("hooks"));
        assert_eq!(
            secret.expose(),
            "https://hooks.slack.com/services/T000/B000/XXXX"
        );
    }
}
