//! The `approve` and `keygen` commands: a budget owner raises one (policy, scope)'s cap until a
//! deadline, signing the approval with their own Ed25519 key.
//!
//! The command signs the record ([`Approval::signed_bytes`]) with the approver's private key, read
//! from `--key-file` or the `APPROVER_KEY` environment variable (never from the config, never
//! printed or logged). It checks what it can before writing (the policy exists in the local
//! policy directory, the approver is listed and the key is theirs, the raise and duration are
//! within the policy's limits) so a mistake is reported at once; the alerter checks again when it
//! reads the record ([`crate::approvals`]), because the policies it runs with and the broker's
//! append time are the ones that count. The record goes to the approvals topic keyed by its own
//! `approval_id`, so compaction keeps every approval.
//!
//! `keygen` makes a key pair: the private key goes to a new file (mode 0600), the public key is
//! printed in the form `approval.approvers` takes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer, SigningKey};
use infra::config::KafkaConfig;
use infra::secret::Secret;
use policy::{ApproverKey, PolicySet};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rust_decimal::Decimal;
use schemas::Approval;

use crate::approvals::ReceivedApproval;
use crate::Config;

/// Environment variable holding the approver's private key when `--key-file` is not given.
pub const KEY_ENV: &str = "APPROVER_KEY";
/// Prefix of a private key as `keygen` writes it (then the standard base64 of the 32-byte seed).
pub const PRIVATE_KEY_PREFIX: &str = "ed25519-private:";

/// The `approve` command's arguments (shared by `quotaflow-alerter` and `quotactl`).
#[derive(Debug, Clone, clap::Args)]
pub struct ApproveArgs {
    /// Policy id.
    #[arg(long)]
    pub policy: String,
    /// Scope as `name=value` pairs separated by commas (`api_key_id=k1`), naming every group_by
    /// dimension of the policy; empty for a policy without group_by.
    #[arg(long, default_value = "")]
    pub scope: String,
    /// The new limit, in the policy's unit (exact decimal).
    #[arg(long)]
    pub limit: String,
    /// When the raise ends (RFC 3339, e.g. 2026-11-28T18:00:00Z); at most the policy's
    /// max_duration after the broker stores the record.
    #[arg(long)]
    pub until: DateTime<Utc>,
    /// Why.
    #[arg(long)]
    pub reason: String,
    /// Who approves (one of the policy's approvers; the key must be theirs).
    #[arg(long)]
    pub by: String,
    /// File holding the approver's private key (as `keygen` writes it, or an OpenSSL
    /// `genpkey -algorithm ed25519` PEM); default: the `APPROVER_KEY` environment variable.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
}

/// The `keygen` command's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the private key (a new file, mode 0600; an existing file is not replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// The approver's name, for the policy line printed.
    #[arg(long, default_value = "<name>")]
    pub name: String,
}

/// What the command did.
#[derive(Debug)]
pub enum Outcome {
    /// Checked, signed and written to the approvals topic.
    Written(Approval),
    /// Refused by the checks, with the reason; nothing written.
    Refused(String),
}

/// Why `approve` or `keygen` could not do its work. A refusal by the alerter's checks is not an
/// error ([`Outcome::Refused`]). No message quotes a key.
#[derive(Debug, thiserror::Error)]
pub enum ApproveError {
    /// An argument or a key text the command cannot use; the message says which and why.
    #[error("{0}")]
    Invalid(String),
    /// A key file could not be created, written or read.
    #[error("{what} {}: {source}", path.display())]
    KeyFile {
        /// What failed (`cannot create`, `cannot write`, `cannot read the key file`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A key file's content is not a private key.
    #[error("key file {}: {source}", path.display())]
    KeyFileContent {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<ApproveError>,
    },
    /// The policy directory does not load.
    #[error("policies do not load: {0}")]
    Policies(policy::LoadErrors),
    /// The approval cannot be encoded (to sign or to write it).
    #[error("approval not encodable: {0}")]
    Encode(#[source] schemas::codec::EncodeError),
    /// The approvals topic refused the record or was unreachable.
    #[error("approvals topic: {0}")]
    Kafka(#[source] rdkafka::error::KafkaError),
}

/// The whole command: parse, sign, check against `config`'s policy directory, write.
pub async fn run(config: &Config, args: &ApproveArgs) -> Result<Outcome, ApproveError> {
    let scope = parse_scope(&args.scope)?;
    let limit: Decimal = args
        .limit
        .parse()
        .map_err(|error| ApproveError::Invalid(format!("--limit {:?}: {error}", args.limit)))?;
    let key = match &args.key_file {
        Some(path) => read_private_key_file(path)?,
        None => {
            let text = std::env::var(KEY_ENV).map_err(|_| {
                ApproveError::Invalid(format!(
                    "no signing key: pass --key-file or set {KEY_ENV} (make one with `keygen`)"
                ))
            })?;
            parse_private_key(&Secret::new(text))?
        }
    };
    let now = Utc::now();
    let approval = sign(
        build(
            &args.policy,
            scope,
            limit,
            args.until,
            &args.reason,
            &args.by,
            now,
        ),
        &key,
    )?;
    let policies =
        PolicySet::load_dir(&config.alert.policies_dir).map_err(ApproveError::Policies)?;
    if let Err(refusal) = check(&policies, &approval, now) {
        return Ok(Outcome::Refused(refusal));
    }
    publish(&config.kafka, &approval).await?;
    Ok(Outcome::Written(approval))
}

/// Makes a key pair: writes the private key to `args.out` (a new file, mode 0600) and returns
/// the public key as a policy takes it.
pub fn keygen(args: &KeygenArgs) -> Result<ApproverKey, ApproveError> {
    let mut seed = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut seed[..]);
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    write_private_key_file(&args.out, &key)?;
    Ok(ApproverKey(key.verifying_key()))
}

/// [`keygen`], and what to tell its user: where the private key is, and the policy line.
pub fn keygen_report(args: &KeygenArgs) -> Result<String, ApproveError> {
    let public_key = keygen(args)?;
    Ok(format!(
        "private key written to {} (mode 0600; keep it secret)\npublic key: {public_key}\n\
         policy line, under approval.approvers:\n  - {{name: {}, public_key: \"{public_key}\"}}",
        args.out.display(),
        args.name
    ))
}

/// Writes `key` to a new file at `path`, readable by its owner only.
pub fn write_private_key_file(path: &Path, key: &SigningKey) -> Result<(), ApproveError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|source| ApproveError::KeyFile {
        what: "cannot create",
        path: path.to_owned(),
        source,
    })?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(key.to_bytes());
    writeln!(file, "{PRIVATE_KEY_PREFIX}{encoded}").map_err(|source| ApproveError::KeyFile {
        what: "cannot write",
        path: path.to_owned(),
        source,
    })
}

/// Reads a private key file (see [`parse_private_key`]).
pub fn read_private_key_file(path: &Path) -> Result<SigningKey, ApproveError> {
    let text = std::fs::read_to_string(path).map_err(|source| ApproveError::KeyFile {
        what: "cannot read the key file",
        path: path.to_owned(),
        source,
    })?;
    parse_private_key(&Secret::new(text)).map_err(|source| ApproveError::KeyFileContent {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// DER prefix of an Ed25519 private key in PKCS#8 (RFC 8410), before the 32-byte seed: what
/// `openssl genpkey -algorithm ed25519` writes inside its PEM.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A private key written `ed25519-private:<base64 seed>` (`keygen`) or as an OpenSSL PKCS#8 PEM.
/// Errors never quote the key.
pub fn parse_private_key(text: &Secret) -> Result<SigningKey, ApproveError> {
    parse_private_key_text(text).map_err(ApproveError::Invalid)
}

fn parse_private_key_text(text: &Secret) -> Result<SigningKey, String> {
    let text = text.expose().trim();
    let seed = if let Some(encoded) = text.strip_prefix(PRIVATE_KEY_PREFIX) {
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim().as_bytes())
            .map_err(|_| "the private key is not standard base64".to_owned())?
    } else if text.starts_with("-----BEGIN PRIVATE KEY-----") {
        let body: String = text
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.trim().as_bytes())
            .map_err(|_| "the PEM body is not base64".to_owned())?;
        match der.strip_prefix(&PKCS8_ED25519_PREFIX[..]) {
            Some(seed) => seed.to_vec(),
            None => return Err("the PEM is not an Ed25519 private key".to_owned()),
        }
    } else {
        return Err(format!(
            "a private key starts with {PRIVATE_KEY_PREFIX} (as keygen writes it) or is a PEM"
        ));
    };
    let seed: [u8; 32] = seed
        .try_into()
        .map_err(|_| "an Ed25519 private key has 32 bytes".to_owned())?;
    Ok(SigningKey::from_bytes(&seed))
}

/// `approval` with its signature by `key`.
pub fn sign(mut approval: Approval, key: &SigningKey) -> Result<Approval, ApproveError> {
    let signed = approval.signed_bytes().map_err(ApproveError::Encode)?;
    approval.signature = key.sign(&signed).to_bytes().to_vec();
    Ok(approval)
}

/// Parses `team=search, model=gpt-4o` (or `team=search,model=gpt-4o`); empty = the global scope.
pub fn parse_scope(text: &str) -> Result<BTreeMap<String, String>, ApproveError> {
    parse_scope_text(text).map_err(ApproveError::Invalid)
}

fn parse_scope_text(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut scope = BTreeMap::new();
    for pair in text
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
    {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("scope entry {pair:?} is not name=value"))?;
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() || value.is_empty() {
            return Err(format!("scope entry {pair:?} has an empty name or value"));
        }
        if scope.insert(name.to_owned(), value.to_owned()).is_some() {
            return Err(format!("scope names {name} twice"));
        }
    }
    Ok(scope)
}

/// A new approval record.
pub fn build(
    policy_id: &str,
    scope: BTreeMap<String, String>,
    new_limit: Decimal,
    valid_until: DateTime<Utc>,
    reason: &str,
    approved_by: &str,
    now: DateTime<Utc>,
) -> Approval {
    Approval {
        approval_id: uuid::Uuid::now_v7().to_string(),
        policy_id: policy_id.to_owned(),
        scope,
        new_limit,
        valid_until,
        reason: reason.to_owned(),
        approved_by: approved_by.to_owned(),
        requested_at: now,
        signature: Vec::new(),
    }
}

/// The alerter's own checks against `policies`, as if the broker stored the record `now`:
/// `Err(reason)` if the alerter would reject it.
pub fn check(policies: &PolicySet, approval: &Approval, now: DateTime<Utc>) -> Result<(), String> {
    if approval.reason.trim().is_empty() {
        return Err("a reason is required".to_owned());
    }
    let received = ReceivedApproval::new(
        approval.clone(),
        Some(now),
        Some(approval.approval_id.as_bytes()),
        &[],
    );
    crate::approvals::check(policies, &received)
}

/// Writes `approval` to the approvals topic and waits for the broker's acknowledgement.
pub async fn publish(kafka: &KafkaConfig, approval: &Approval) -> Result<(), ApproveError> {
    let payload = schemas::codec::encode(approval).map_err(ApproveError::Encode)?;
    publish_record(kafka, &approval.approval_id, &payload).await
}

/// Writes `payload` to the approvals topic under `key` and waits for the broker's acknowledgement
/// (the tests use it to write records the command would not: forged, unsigned, mis-keyed).
pub async fn publish_record(
    kafka: &KafkaConfig,
    key: &str,
    payload: &[u8],
) -> Result<(), ApproveError> {
    let producer: FutureProducer = infra::kafka::producer_config(kafka, "quotaflow-approve")
        .create()
        .map_err(ApproveError::Kafka)?;
    producer
        .send(
            FutureRecord::to(&kafka.topics.approvals)
                .key(key)
                .payload(payload),
            Duration::from_secs(30),
        )
        .await
        .map(|_| ())
        .map_err(|(error, _)| ApproveError::Kafka(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_both_spellings() {
        let scope = parse_scope("api_key_id=k1, team=search").unwrap();
        assert_eq!(scope.get("api_key_id").map(String::as_str), Some("k1"));
        assert_eq!(scope.len(), 2);
        assert_eq!(parse_scope("a=1,b=2").unwrap().len(), 2);
        assert!(parse_scope("").unwrap().is_empty());
        assert!(parse_scope("team").is_err());
        assert!(parse_scope("a=1,a=2").is_err());
    }

    #[test]
    fn private_keys_round_trip_through_the_key_file() {
        let dir = std::env::temp_dir().join(format!("approve-keys-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("alice.key");
        let public = keygen(&KeygenArgs {
            out: path.clone(),
            name: "alice".to_owned(),
        })
        .unwrap();
        let key = read_private_key_file(&path).unwrap();
        assert_eq!(ApproverKey(key.verifying_key()), public);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // An existing key is never overwritten.
        assert!(keygen(&KeygenArgs {
            out: path.clone(),
            name: "alice".to_owned(),
        })
        .is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_openssl_pem_key_is_read_and_errors_never_quote_the_key() {
        // `openssl genpkey -algorithm ed25519` of the RFC 8032 test 1 secret key.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
        let key = parse_private_key(&Secret::new(pem)).unwrap();
        assert_eq!(
            hex::encode(key.verifying_key().as_bytes()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let secret = "ed25519-private:c2VjcmV0LXRvby1zaG9ydA==";
        let error = parse_private_key(&Secret::new(secret))
            .unwrap_err()
            .to_string();
        assert!(!error.contains("c2VjcmV0"), "{error}");
        let error = parse_private_key(&Secret::new("hunter2"))
            .unwrap_err()
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }
}
