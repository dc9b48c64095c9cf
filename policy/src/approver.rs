//! Approvers and their keys: `approval.approvers` lists each person who may raise a cap with the
//! Ed25519 public key that verifies their signed approvals.
//!
//! ```yaml
//! approval:
//!   approvers:
//!     - {name: alice, public_key: "ed25519:Ck1NbkTkS2cfu5kPd3VhovXFvYnQ9J3rOTDTfrI8+0Q="}
//! ```
//!
//! A bare name (`approvers: [alice]`, the format before signed approvals) is an error that says
//! how to add the key: a name alone cannot be verified, so it could never approve anything and
//! would only look as if it could. Keys are made with `quotaflow-alerter keygen`.

use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Prefix of a public key in a policy.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";

/// One person whose signed approval counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approver {
    /// The name approvals carry in `approved_by`; unique within the policy.
    pub name: String,
    /// Verifies the approver's signatures.
    pub public_key: ApproverKey,
}

impl Approver {
    /// Whether `signature` is this approver's signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = Signature::from_slice(signature) else {
            return false;
        };
        // Strict: rejects non-canonical signatures and small-order keys, so one approval has one
        // valid signature.
        self.public_key.0.verify_strict(message, &signature).is_ok()
    }
}

/// An Ed25519 public key, written `ed25519:<standard base64 of its 32 bytes>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApproverKey(pub VerifyingKey);

impl fmt::Debug for ApproverKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApproverKey({self})")
    }
}

impl fmt::Display for ApproverKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let encoded = base64::engine::general_purpose::STANDARD.encode(self.0.as_bytes());
        write!(f, "{PUBLIC_KEY_PREFIX}{encoded}")
    }
}

impl FromStr for ApproverKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let encoded = text.trim().strip_prefix(PUBLIC_KEY_PREFIX).ok_or_else(|| {
            format!("public key {text:?} must start with {PUBLIC_KEY_PREFIX} (make one with `quotaflow-alerter keygen`)")
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map_err(|error| format!("public key {text:?} is not standard base64: {error}"))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|bytes: Vec<u8>| {
            format!(
                "public key {text:?} holds {} bytes; an Ed25519 public key has 32",
                bytes.len()
            )
        })?;
        VerifyingKey::from_bytes(&bytes)
            .map(ApproverKey)
            .map_err(|_| format!("public key {text:?} is not a valid Ed25519 point"))
    }
}

impl Serialize for ApproverKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ApproverKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// The written form of an approver with its key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproverRecord {
    name: String,
    public_key: ApproverKey,
}

impl<'de> Deserialize<'de> for Approver {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ApproverVisitor;

        impl<'de> Visitor<'de> for ApproverVisitor {
            type Value = Approver;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("{name: <approver>, public_key: \"ed25519:<base64>\"}")
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<Approver, E> {
                Err(E::custom(format!(
                    "approver {name:?} has no public key: approvals are signed, so write \
                     {{name: {name}, public_key: \"ed25519:<base64>\"}} (make a key pair with \
                     `quotaflow-alerter keygen`)"
                )))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Approver, A::Error> {
                let record =
                    ApproverRecord::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Approver {
                    name: record.name,
                    public_key: record.public_key,
                })
            }
        }

        deserializer.deserialize_any(ApproverVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn key_pair(seed: u8) -> (SigningKey, ApproverKey) {
        let signing = SigningKey::from_bytes(&[seed; 32]);
        let public = ApproverKey(signing.verifying_key());
        (signing, public)
    }

    #[test]
    fn keys_round_trip_through_their_text() {
        let (_, public) = key_pair(1);
        let text = public.to_string();
        assert!(text.starts_with("ed25519:"));
        assert_eq!(text.parse::<ApproverKey>(), Ok(public));
    }

    #[test]
    fn bad_keys_say_what_is_wrong() {
        assert!("Ck1N"
            .parse::<ApproverKey>()
            .unwrap_err()
            .contains("must start with ed25519:"));
        assert!("ed25519:%%%"
            .parse::<ApproverKey>()
            .unwrap_err()
            .contains("base64"));
        assert!("ed25519:AAAA"
            .parse::<ApproverKey>()
            .unwrap_err()
            .contains("holds 3 bytes"));
    }

    #[test]
    fn only_the_approvers_key_verifies_their_signature() {
        let (alice, alice_public) = key_pair(1);
        let (mallory, _) = key_pair(2);
        let approver = Approver {
            name: "alice".to_owned(),
            public_key: alice_public,
        };
        let message = b"raise";
        assert!(approver.verifies(message, &alice.sign(message).to_bytes()));
        assert!(!approver.verifies(message, &mallory.sign(message).to_bytes()));
        assert!(!approver.verifies(b"raise more", &alice.sign(message).to_bytes()));
        assert!(!approver.verifies(message, &[]));
    }

    #[test]
    fn a_bare_name_is_refused_with_the_way_to_fix_it() {
        let error = serde_yaml_ng::from_str::<Approver>("alice")
            .unwrap_err()
            .to_string();
        assert!(error.contains("has no public key"), "{error}");
        assert!(error.contains("keygen"), "{error}");
        let (_, public) = key_pair(1);
        let yaml = format!("{{name: alice, public_key: \"{public}\"}}");
        let approver: Approver = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(approver.name, "alice");
        assert!(serde_yaml_ng::from_str::<Approver>(&format!(
            "{{name: alice, public_key: \"{public}\", role: cfo}}"
        ))
        .is_err());
    }
}
