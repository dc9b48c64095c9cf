//! The demo's approver key: `dev/demo` and the end-to-end test make a fresh Ed25519 key pair for
//! alice at every run and put its public half into a copy of the demo policies, so the demo's
//! approval is signed with a key that exists only for that run (no private key is committed; the
//! key in `demo/policies/` is a public key whose private half nobody kept).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The approver the demo's scenario signs as.
pub const APPROVER: &str = "alice";
/// The demo policy alice approves for.
pub const POLICY_FILE: &str = "staging_agent_cap.yaml";

/// Copies the `.yaml` files of `policies` into `run_dir/policies`, makes alice's key pair (the
/// private key at `run_dir/alice.key`, mode 0600) and writes its public key in place of alice's
/// in the copy of [`POLICY_FILE`]. Returns the new policy directory and the key file.
pub fn with_fresh_approver_key(policies: &Path, run_dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let copy = run_dir.join("policies");
    std::fs::create_dir_all(&copy).with_context(|| format!("creating {}", copy.display()))?;
    for entry in
        std::fs::read_dir(policies).with_context(|| format!("reading {}", policies.display()))?
    {
        let path = entry?.path();
        if path
            .extension()
            .is_some_and(|extension| extension == "yaml")
        {
            if let Some(name) = path.file_name() {
                std::fs::copy(&path, copy.join(name))
                    .with_context(|| format!("copying {}", path.display()))?;
            }
        }
    }
    let key_file = run_dir.join(format!("{APPROVER}.key"));
    let public_key = alerter::approve::keygen(&alerter::approve::KeygenArgs {
        out: key_file.clone(),
        name: APPROVER.to_owned(),
    })
    .map_err(anyhow::Error::msg)?;
    let policy_file = copy.join(POLICY_FILE);
    let text = std::fs::read_to_string(&policy_file)
        .with_context(|| format!("reading {}", policy_file.display()))?;
    let replaced = replace_public_key(&text, APPROVER, &public_key.to_string())?;
    std::fs::write(&policy_file, replaced)
        .with_context(|| format!("writing {}", policy_file.display()))?;
    Ok((copy, key_file))
}

/// `text` with the public key of the approver line `{name: <name>, public_key: "…"}` replaced.
fn replace_public_key(text: &str, name: &str, public_key: &str) -> Result<String> {
    let marker = format!("{{name: {name}, public_key: \"");
    let Some(start) = text.find(&marker).map(|at| at + marker.len()) else {
        bail!("no approver line for {name} in {POLICY_FILE}");
    };
    let Some(length) = text[start..].find('"') else {
        bail!("the public key of {name} is not closed in {POLICY_FILE}");
    };
    Ok(format!(
        "{}{public_key}{}",
        &text[..start],
        &text[start + length..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_policies_get_a_fresh_key_for_alice_only() {
        let run_dir = std::env::temp_dir().join(format!(
            "demo-keys-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let (policies, key_file) = with_fresh_approver_key(&source, &run_dir).unwrap();
        let loaded = policy::PolicySet::load_dir(&policies).unwrap();
        let rule = loaded
            .get("staging-agent-daily-cap")
            .and_then(|policy| policy.record().approval.clone())
            .unwrap();
        let key = alerter::approve::read_private_key_file(&key_file).unwrap();
        let alice = rule.approvers.iter().find(|a| a.name == APPROVER).unwrap();
        assert_eq!(alice.public_key, policy::ApproverKey(key.verifying_key()));
        let original = policy::PolicySet::load_dir(&source).unwrap();
        assert_eq!(original.len(), loaded.len(), "every demo policy is copied");
        std::fs::remove_dir_all(&run_dir).unwrap();
    }
}
