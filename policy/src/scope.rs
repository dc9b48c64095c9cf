//! [`ScopeKey`]: which total of a policy an event counts toward.
//!
//! The key is the policy's `group_by` dimensions, in the order the policy lists them, rendered
//! as `dimension=value` pairs joined by `|`: `team=search|model=gpt-4o`. A policy without
//! `group_by` has one global scope, rendered `*`.
//!
//! **Escaping** (what makes the rendering injective): in dimension names (label keys can hold
//! anything) and values, `%` is written `%25`, `|` is `%7C` and `=` is `%3D`. After escaping, `|`
//! only separates pairs and the first `=` of a pair only separates name from value, so
//! [`ScopeKey::decode`] recovers the exact pairs and two different scopes never share a key.
//! A dimension the event lacks (no `user_id`, no such label) is rendered as the bare name
//! without `=` (`team=search|user_id`), which is distinct from an empty value (`user_id=`):
//! such events are counted in their own scope rather than escaping the cap.
//!
//! The policy id is kept beside the key, not inside it; [`ScopeKey::scope_map`] gives the
//! dimension → value map that `ControlDecision::scope` carries and
//! [`ScopeKey::absent_dimensions`] the dimensions the scope's events lack, which
//! `ControlDecision::absent` carries: a decision for the bucket without `user_id` names
//! `user_id` as absent, so it applies only to requests without one (absence is a value).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A policy id and the rendered scope of one of its totals.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeKey {
    /// The policy's id (shared with the policy: cloning it does not allocate).
    policy_id: Arc<str>,
    /// The rendered, escaped scope (see the module docs).
    key: String,
}

/// The rendering of the one scope of a policy without `group_by`.
pub const GLOBAL_SCOPE: &str = "*";

/// Issue 13 point 7: the value of every dimension of a scope kind's **overflow bucket**. The
/// aggregator keeps its own totals for at most a configured number of distinct values per scope
/// kind and window (`aggregate.max_scopes_per_kind`); the events of any further value are counted
/// in this bucket instead (`user_id=__overflow__`, or for a policy every `group_by` dimension set
/// to it). A control decision whose scope carries this value applies to **any value** of that
/// dimension (gateways cannot tell a tracked value from a folded one, so the bucket's cap fails
/// closed), while `absent` still keeps requests lacking the dimension apart.
pub const OVERFLOW_VALUE: &str = "__overflow__";

impl ScopeKey {
    /// Renders a scope from `(dimension name, value)` pairs in `group_by` order; `None` = the
    /// event lacks that dimension.
    pub fn render<'v>(
        policy_id: Arc<str>,
        pairs: impl IntoIterator<Item = (&'v str, Option<&'v str>)>,
    ) -> ScopeKey {
        let mut key = String::new();
        Self::render_into(pairs, &mut key);
        ScopeKey { policy_id, key }
    }

    /// The rendering of [`Self::render`] written into `key` (cleared first), so a hot path can
    /// reuse one buffer instead of allocating a key per event.
    pub fn render_into<'v>(
        pairs: impl IntoIterator<Item = (&'v str, Option<&'v str>)>,
        key: &mut String,
    ) {
        key.clear();
        for (index, (name, value)) in pairs.into_iter().enumerate() {
            if index > 0 {
                key.push('|');
            }
            escape_into(name, key);
            if let Some(value) = value {
                key.push('=');
                escape_into(value, key);
            }
        }
        if key.is_empty() {
            key.push_str(GLOBAL_SCOPE);
        }
    }

    /// The overflow bucket of a policy (see [`OVERFLOW_VALUE`]): every `group_by` dimension
    /// set to [`OVERFLOW_VALUE`]; [`GLOBAL_SCOPE`] for a policy without `group_by`.
    pub fn overflow<'n>(
        policy_id: Arc<str>,
        group_by_names: impl IntoIterator<Item = &'n str>,
    ) -> ScopeKey {
        ScopeKey::render(
            policy_id,
            group_by_names
                .into_iter()
                .map(|name| (name, Some(OVERFLOW_VALUE))),
        )
    }

    /// Whether a rendered scope is an overflow bucket (a dimension's value is [`OVERFLOW_VALUE`]).
    pub fn is_overflow(rendered: &str) -> bool {
        rendered == OVERFLOW_VALUE
            || rendered.split('|').any(|pair| {
                pair.split_once('=')
                    .is_some_and(|(_, value)| value == OVERFLOW_VALUE)
            })
    }

    /// The policy the scope belongs to.
    pub fn policy_id(&self) -> &str {
        &self.policy_id
    }

    /// The rendered scope, e.g. `team=search|model=gpt-4o`.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The pairs back from a rendered scope; `None` if `rendered` is not a valid rendering.
    pub fn decode(rendered: &str) -> Option<Vec<(String, Option<String>)>> {
        if rendered == GLOBAL_SCOPE {
            return Some(Vec::new());
        }
        rendered
            .split('|')
            .map(|pair| match pair.split_once('=') {
                Some((name, value)) => Some((unescape(name)?, Some(unescape(value)?))),
                None => Some((unescape(pair)?, None)),
            })
            .collect()
    }

    /// Dimension → value for the dimensions the event had (absent ones are left out: they are
    /// in [`ScopeKey::absent_dimensions`]), as `ControlDecision::scope` carries it.
    pub fn scope_map(&self) -> BTreeMap<String, String> {
        Self::present_of(&self.key)
    }

    /// The dimensions the scope's events lack, sorted and without repeats, as
    /// `ControlDecision::absent` carries them.
    pub fn absent_dimensions(&self) -> Vec<String> {
        Self::absent_of(&self.key)
    }

    /// [`ScopeKey::scope_map`] of a rendered scope (empty if `rendered` is not valid).
    pub fn present_of(rendered: &str) -> BTreeMap<String, String> {
        Self::decode(rendered)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, value)| value.map(|value| (name, value)))
            .collect()
    }

    /// [`ScopeKey::absent_dimensions`] of a rendered scope (empty if `rendered` is not valid).
    pub fn absent_of(rendered: &str) -> Vec<String> {
        let mut absent: Vec<String> = Self::decode(rendered)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, value)| value.is_none().then_some(name))
            .collect();
        absent.sort_unstable();
        absent.dedup();
        absent
    }
}

impl fmt::Display for ScopeKey {
    /// `policy_id/scope`, for logs.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.policy_id, self.key)
    }
}

/// Appends `text` with `%`, `|` and `=` percent-escaped.
fn escape_into(text: &str, out: &mut String) {
    if !text.bytes().any(|byte| matches!(byte, b'%' | b'|' | b'=')) {
        out.push_str(text); // the common case: nothing to escape
        return;
    }
    for character in text.chars() {
        match character {
            '%' => out.push_str("%25"),
            '|' => out.push_str("%7C"),
            '=' => out.push_str("%3D"),
            other => out.push(other),
        }
    }
}

/// Reverses [`escape_into`]; `None` on a stray separator or an unknown escape.
fn unescape(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(index) = rest.find(['%', '|', '=']) {
        out.push_str(&rest[..index]);
        let escape = rest.get(index..index + 3)?;
        out.push(match escape {
            "%25" => '%',
            "%7C" => '|',
            "%3D" => '=',
            _ => return None,
        });
        rest = &rest[index + 3..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn render(pairs: &[(&str, Option<&str>)]) -> String {
        ScopeKey::render(Arc::from("p"), pairs.iter().copied())
            .as_str()
            .to_owned()
    }

    #[test]
    fn renders_and_escapes() {
        assert_eq!(
            render(&[("team", Some("search")), ("model", Some("gpt-4o"))]),
            "team=search|model=gpt-4o"
        );
        assert_eq!(render(&[]), "*");
        assert_eq!(
            render(&[("labels.a=b", Some("x|y%")), ("user_id", None)]),
            "labels.a%3Db=x%7Cy%25|user_id"
        );
        assert_eq!(render(&[("user_id", Some(""))]), "user_id=");
        let key = ScopeKey::render(Arc::from("p"), [("team", Some("s")), ("user_id", None)]);
        assert_eq!(
            key.scope_map(),
            BTreeMap::from([("team".to_owned(), "s".to_owned())])
        );
        assert_eq!(key.absent_dimensions(), vec!["user_id".to_owned()]);
        assert_eq!(key.to_string(), "p/team=s|user_id");
        assert_eq!(ScopeKey::decode("a=%zz"), None);
    }

    /// Issue 13 point 7: the overflow bucket sets every `group_by` dimension to
    /// [`OVERFLOW_VALUE`], and only such renderings are overflow buckets.
    #[test]
    fn overflow_buckets_render_every_dimension_as_the_overflow_value() {
        let key = ScopeKey::overflow(Arc::from("p"), ["team", "user_id"]);
        assert_eq!(key.as_str(), "team=__overflow__|user_id=__overflow__");
        assert!(ScopeKey::is_overflow(key.as_str()));
        assert!(ScopeKey::is_overflow(OVERFLOW_VALUE));
        assert_eq!(
            ScopeKey::overflow(Arc::from("p"), []).as_str(),
            GLOBAL_SCOPE
        );
        for plain in [
            "team=search|user_id=u1",
            "user_id",
            "*",
            "user_id=__overflow__x",
        ] {
            assert!(!ScopeKey::is_overflow(plain), "{plain}");
        }
    }

    /// Values drawn to hit the separators and escapes.
    fn value() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("[a|=%7CD2 5é]{0,6}")
    }

    proptest! {
        #[test]
        fn scope_keys_are_injective(
            left in proptest::collection::vec(value(), 3),
            right in proptest::collection::vec(value(), 3),
            label in "[a-z|=%.]{1,5}",
        ) {
            let names = ["team".to_owned(), format!("labels.{label}"), "user_id".to_owned()];
            let pairs = |values: &Vec<Option<String>>| {
                names
                    .iter()
                    .zip(values)
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect::<Vec<_>>()
            };
            let render_pairs = |pairs: &Vec<(String, Option<String>)>| {
                ScopeKey::render(
                    Arc::from("p"),
                    pairs.iter().map(|(name, value)| (name.as_str(), value.as_deref())),
                )
            };
            let (left_pairs, right_pairs) = (pairs(&left), pairs(&right));
            let (left_key, right_key) = (render_pairs(&left_pairs), render_pairs(&right_pairs));
            prop_assert_eq!(left_key == right_key, left == right);
            prop_assert_eq!(ScopeKey::decode(left_key.as_str()), Some(left_pairs.clone()));
            // Every group_by dimension is either present or absent: none is dropped.
            let present = left_key.scope_map();
            let absent = left_key.absent_dimensions();
            prop_assert_eq!(present.len() + absent.len(), left_pairs.len());
            prop_assert!(absent.iter().all(|name| !present.contains_key(name)));
        }
    }
}
