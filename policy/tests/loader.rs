//! Loader behaviour on texts: exact amounts from unquoted numbers, the fingerprint, and the
//! fallback for list layouts that cannot be cut item by item.

use policy::PolicySet;
use rust_decimal::Decimal;
use std::str::FromStr;

const TWO_POLICIES: &str = "\
- id: a
  owner: {team: t, contact: c}
  description: first
  unit: cost_usd
  window: {kind: day}
  hard_cap: 1234567890.123456789012
  action: {kind: block}
- id: b
  owner: {team: t, contact: c}
  description: second
  unit: cost_usd
  window: {kind: day}
  hard_cap: 12.50
  action: {kind: block}
";

fn load(text: &str) -> PolicySet {
    PolicySet::from_str("test.yaml", text).unwrap_or_else(|errors| panic!("{errors}"))
}

#[test]
fn unquoted_amounts_are_read_from_each_policys_own_text() {
    let set = load(TWO_POLICIES);
    assert_eq!(
        set.get("a").unwrap().hard_cap(),
        Decimal::from_str("1234567890.123456789012").unwrap()
    );
    assert_eq!(
        set.get("b").unwrap().hard_cap(),
        Decimal::from_str("12.5").unwrap()
    );
}

#[test]
fn fingerprint_ignores_formatting_and_sees_changes() {
    let reference = load(TWO_POLICIES);
    let reformatted = "\
# the same two policies, reordered, quoted, defaults spelled out
- id: b
  description: second
  owner:
    contact: c
    team: t
  unit: cost_usd
  window: {kind: day, time_zone: UTC}
  hard_cap: \"12.5000\"
  soft_alerts: [50, 75, 90, 100]
  action: {kind: block}
- id: a
  owner: {team: t, contact: c}
  description: first
  unit: cost_usd
  window: {kind: day}
  hard_cap: '1234567890.123456789012'
  action: {kind: block}
";
    assert_eq!(load(reformatted).fingerprint(), reference.fingerprint());
    let changed = TWO_POLICIES.replace("12.50", "12.51");
    assert_ne!(load(&changed).fingerprint(), reference.fingerprint());
    assert!(reference.fingerprint().starts_with("fnv1a64:"));
    assert_eq!(reference.fingerprint().len(), "fnv1a64:".len() + 16);
}

#[test]
fn flow_style_lists_fall_back_to_whole_file_parsing() {
    let text = "[{id: x, owner: {team: t, contact: c}, description: d, unit: requests, \
                window: {kind: minute}, hard_cap: 5, action: {kind: block}}]";
    let set = load(text);
    assert_eq!(set.get("x").unwrap().hard_cap(), Decimal::from(5));
    // The source text of a float inside a top-level flow list is not looked for: refused.
    let errors = PolicySet::from_str("flow.yaml", &text.replace("hard_cap: 5", "hard_cap: 5.5"))
        .unwrap_err();
    assert_eq!(errors.errors()[0].line(), 1);
    assert!(
        errors.errors()[0].reason.contains("quoted string"),
        "{errors}"
    );
}

#[test]
fn aliased_floats_are_refused_not_rounded() {
    let text = "\
- &base
  id: x
  owner: {team: t, contact: c}
  description: d
  unit: requests
  window: {kind: minute}
  hard_cap: 5
  action: {kind: block}
- id: y
  owner: {team: t, contact: c}
  description: d
  unit: cost_usd
  window: {kind: day}
  hard_cap: &cap 0.3
  anomaly: {min_volume: *cap}
  action: {kind: block}
";
    let errors = PolicySet::from_str("alias.yaml", text).unwrap_err();
    let rendered = errors.to_string();
    assert!(rendered.contains("alias.yaml:"), "{rendered}");
    assert!(rendered.contains("quoted string"), "{rendered}");
}

#[test]
fn numbers_in_selectors_are_text_and_multi_documents_are_refused() {
    let text = "\
id: n
owner: {team: t, contact: c}
description: d
selector: {customer_id: 42, labels.tier: [1, gold]}
unit: requests
window: {kind: minute}
hard_cap: 5
action: {kind: block}
";
    let set = load(text);
    assert_eq!(
        set.get("n").unwrap().record().selector["customer_id"].0,
        vec!["42".to_owned()]
    );
    let errors = PolicySet::from_str("multi.yaml", &format!("{text}---\n{text}")).unwrap_err();
    assert!(
        errors.to_string().contains("more than one document"),
        "{errors}"
    );
}

#[test]
fn the_annotated_example_in_the_docs_loads() {
    let docs = include_str!("../../docs/policies.md");
    let start = docs.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let end = start + docs[start..].find("```").expect("closed block");
    let set = load(&docs[start..end]);
    let policy = set.get("staging-cost-per-key-daily").unwrap();
    assert_eq!(policy.hard_cap(), Decimal::from(25));
    assert_eq!(
        policy
            .record()
            .retry_policy
            .as_ref()
            .unwrap()
            .max_fallback_cost_usd,
        Some(Decimal::from_str("0.5").unwrap())
    );
}
