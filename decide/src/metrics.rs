//! The sidecar's Prometheus metrics (`quotaflow_decide_…`).

/// Checks answered, by `surface` (`ext_authz`, `forward_auth`, `check`) and `decision` (`allow`,
/// `block`, `degrade`).
pub const CHECKS: &str = "quotaflow_decide_checks_total";
/// Requests refused before any check because they were malformed (the JSON API), by `surface`.
pub const INVALID: &str = "quotaflow_decide_invalid_requests_total";

/// Counts one answered check.
pub fn checked(surface: &'static str, decision: &'static str) {
    metrics::counter!(CHECKS, "surface" => surface, "decision" => decision).increment(1);
}

/// Counts one malformed request.
pub fn invalid(surface: &'static str) {
    metrics::counter!(INVALID, "surface" => surface).increment(1);
}

/// Requests refused by an admission rule, by `policy` and `rule`.
pub const ADMISSION_REFUSED: &str = "quotaflow_decide_admission_refused_total";

/// Counts one request refused by an admission rule.
pub fn admission_refused(policy: &str, rule: &'static str) {
    metrics::counter!(ADMISSION_REFUSED, "policy" => policy.to_owned(), "rule" => rule)
        .increment(1);
}

/// Requests a policy in shadow mode would have refused or degraded (let go: a dry run), by
/// `policy` and `decision` (`would_block`, `would_degrade`).
pub const SHADOW: &str = "quotaflow_decide_shadow_total";

/// Counts one request a policy in shadow mode would have refused or degraded.
pub fn shadowed(policy: &str, decision: &'static str) {
    metrics::counter!(SHADOW, "policy" => policy.to_owned(), "decision" => decision).increment(1);
}

/// Policy directory reloads, by `outcome` (`applied`, `failed`: the rules in force are kept).
pub const RELOADS: &str = "quotaflow_decide_policy_reloads_total";

/// Counts one reload.
pub fn reloaded(outcome: &'static str) {
    metrics::counter!(RELOADS, "outcome" => outcome).increment(1);
}
