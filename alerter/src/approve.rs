//! The `approve` command: a budget owner raises one (policy, scope)'s cap until a deadline.
//!
//! The command checks what it can before writing (the policy exists in the local policy
//! directory, the approver is listed, the raise and duration are within the policy's limits) so a
//! mistake is reported at once; the alerter checks again when it applies the record, because the
//! policies it runs with are the ones that count. The record goes to the compacted approvals
//! topic keyed by policy and scope, so a later approval of the same scope replaces the earlier.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use infra::config::KafkaConfig;
use policy::PolicySet;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rust_decimal::Decimal;
use schemas::Approval;

use crate::engine::{approval_key, Effect, Engine};
use crate::Config;

/// The `approve` command's arguments (shared by `quotaflow-alerter` and `quotactl`).
#[derive(Debug, Clone, clap::Args)]
pub struct ApproveArgs {
    /// Policy id.
    #[arg(long)]
    pub policy: String,
    /// Scope as `name=value` pairs separated by commas (`api_key_id=k1`); empty for a policy
    /// without group_by.
    #[arg(long, default_value = "")]
    pub scope: String,
    /// The new limit, in the policy's unit (exact decimal).
    #[arg(long)]
    pub limit: String,
    /// When the raise ends (RFC 3339, e.g. 2026-11-28T18:00:00Z).
    #[arg(long)]
    pub until: DateTime<Utc>,
    /// Why.
    #[arg(long)]
    pub reason: String,
    /// Who approves (must be one of the policy's approvers).
    #[arg(long)]
    pub by: String,
}

/// What the command did.
#[derive(Debug)]
pub enum Outcome {
    /// Checked and written to the approvals topic.
    Written(Approval),
    /// Refused by the checks, with the reason; nothing written.
    Refused(String),
}

/// The whole command: parse, check against `config`'s policy directory, write.
pub async fn run(config: &Config, args: &ApproveArgs) -> Result<Outcome, String> {
    let scope = parse_scope(&args.scope)?;
    let limit: Decimal = args
        .limit
        .parse()
        .map_err(|error| format!("--limit {:?}: {error}", args.limit))?;
    let now = Utc::now();
    let approval = build(
        &args.policy,
        scope,
        limit,
        args.until,
        &args.reason,
        &args.by,
        now,
    );
    let policies = PolicySet::load_dir(&config.alert.policies_dir)
        .map_err(|errors| format!("policies do not load: {errors}"))?;
    if let Err(refusal) = check(policies, &approval, now) {
        return Ok(Outcome::Refused(refusal));
    }
    publish(&config.kafka, &approval).await?;
    Ok(Outcome::Written(approval))
}

/// Parses `team=search, model=gpt-4o` (or `team=search,model=gpt-4o`); empty = the global scope.
pub fn parse_scope(text: &str) -> Result<BTreeMap<String, String>, String> {
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
    }
}

/// The alerter's own checks, run against `policies` now: `Err(reason)` if it would reject it.
pub fn check(policies: PolicySet, approval: &Approval, now: DateTime<Utc>) -> Result<(), String> {
    if approval.reason.trim().is_empty() {
        return Err("a reason is required".to_owned());
    }
    let mut engine = Engine::new(std::sync::Arc::new(policies));
    match engine.on_approval(approval.clone(), now).into_iter().next() {
        Some(Effect::ApprovalDecided {
            status: "rejected",
            reason,
            ..
        }) => Err(reason),
        Some(_) => Ok(()),
        None => Err("valid_until has passed".to_owned()),
    }
}

/// Writes `approval` to the approvals topic and waits for the broker's acknowledgement.
pub async fn publish(kafka: &KafkaConfig, approval: &Approval) -> Result<(), String> {
    let producer: FutureProducer = infra::kafka::producer_config(kafka, "quotaflow-approve")
        .create()
        .map_err(|error| error.to_string())?;
    let payload = schemas::codec::encode(approval).map_err(|error| error.to_string())?;
    let key = approval_key(&approval.policy_id, &approval.scope);
    producer
        .send(
            FutureRecord::to(&kafka.topics.approvals)
                .key(&key)
                .payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map(|_| ())
        .map_err(|(error, _)| error.to_string())
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
}
