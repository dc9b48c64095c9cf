//! [`PolicySet`]: every policy of a directory, loaded all-or-nothing with every error reported.
//!
//! A file holds one policy (a mapping) or a list of them. For a list, each item is cut out of
//! the text (`SourceMap::list_items`) and deserialized on its own, so one bad policy does not
//! hide the errors of the next, and parser positions stay those of the file. If cutting does
//! not reproduce the parsed items (flow-style lists, anchors shared between items), the file is
//! deserialized as a whole instead: errors are still located, but the first one stops the file.

use crate::amount::with_source;
use crate::dimension::EventDims;
use crate::error::{LoadError, LoadErrors};
use crate::policy::Policy;
use crate::record::PolicyRecord;
use crate::scope::ScopeKey;
use crate::source_map::{Block, Position, SourceMap};
use crate::validate::{compile, Locator};
use serde_yaml_ng::Value;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The loaded policies, sorted by id. Immutable; share it behind an `Arc` and swap it whole on
/// reload.
#[derive(Debug, Clone)]
pub struct PolicySet {
    /// The policies, sorted by id.
    policies: Vec<Policy>,
    /// See [`PolicySet::fingerprint`].
    fingerprint: String,
}

/// What a load produced before deciding success.
#[derive(Default)]
struct Loader {
    /// Policy files read.
    files: usize,
    /// Valid policies, with the position of their `id` key (for duplicate reports).
    policies: Vec<(Policy, Position)>,
    /// Every problem, in file order.
    errors: Vec<LoadError>,
}

impl PolicySet {
    /// Loads every `*.yaml` / `*.yml` file directly in `dir` (not subdirectories; names starting
    /// with `.` are skipped), in name order. Fails with every error of every file.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<PolicySet, LoadErrors> {
        Loader::from_dir(dir.as_ref()).finish().0
    }

    /// No policies (a service configured without a policy directory).
    pub fn empty() -> PolicySet {
        Loader::default()
            .finish()
            .0
            .expect("an empty loader has no errors")
    }

    /// Loads policies from one text, reported under the file name `name` (for tests and tools).
    pub fn from_str(name: &str, text: &str) -> Result<PolicySet, LoadErrors> {
        let mut loader = Loader {
            files: 1,
            ..Loader::default()
        };
        loader.load_text(Path::new(name), text);
        loader.finish().0
    }

    /// A stable hash of the normalized content: the policies sorted by id, defaults filled in,
    /// amounts normalized, serialized to JSON, hashed with 64-bit FNV-1a
    /// (`fnv1a64:<16 hex digits>`). Unchanged by comments, formatting, key order, quoting,
    /// `12.50` vs `12.5`, spelled-out defaults and moving policies between files; changed by
    /// any setting. Services compare it to skip reloads that changed nothing.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The policy whose current definition a totals `scope_kind` names: `policy:<id>@<definition>`
    /// (see [`Policy::totals_scope_kind`]) when `<definition>` is the policy's current one, or
    /// `policy:<id>` (totals of a release before definitions, still written by aggregators not
    /// yet upgraded; evaluated as the current definition). `None` for another kind, an unknown
    /// policy, or totals of an earlier definition (they count something else: never evaluated).
    pub fn by_totals_scope_kind(&self, scope_kind: &str) -> Option<&Policy> {
        let named = scope_kind.strip_prefix(crate::policy::TOTALS_SCOPE_PREFIX)?;
        match named.split_once('@') {
            Some((id, definition)) => self
                .get(id)
                .filter(|policy| policy.definition() == definition),
            None => self.get(named),
        }
    }

    /// The policies, sorted by id.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The policy with this id.
    pub fn get(&self, id: &str) -> Option<&Policy> {
        self.policies
            .binary_search_by(|policy| policy.id().cmp(id))
            .ok()
            .map(|index| &self.policies[index])
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether there is no policy.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policies an event counts toward, with its scope in each.
    pub fn scopes<'s, 'e>(
        &'s self,
        event: &'e EventDims<'e>,
    ) -> impl Iterator<Item = (&'s Policy, ScopeKey)> + use<'s, 'e> {
        self.policies
            .iter()
            .filter_map(move |policy| policy.scope_key(event).map(|scope| (policy, scope)))
    }
}

impl Loader {
    /// Reads a directory's policy files.
    fn from_dir(dir: &Path) -> Loader {
        let mut loader = Loader::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) => {
                loader.file_error(dir, format!("cannot read the policy directory: {error}"));
                return loader;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| is_policy_file(path))
            .collect();
        paths.sort();
        if paths.is_empty() {
            loader.file_error(dir, "no *.yaml or *.yml policy file in the directory");
        }
        for path in paths {
            loader.files += 1;
            match std::fs::read_to_string(&path) {
                Ok(text) => loader.load_text(&path, &text),
                Err(error) => loader.file_error(&path, format!("cannot read: {error}")),
            }
        }
        loader
    }

    /// Records an error about a whole file or directory.
    fn file_error(&mut self, file: &Path, reason: impl Into<String>) {
        self.errors.push(LoadError {
            file: file.to_path_buf(),
            position: None,
            reason: reason.into(),
        });
    }

    /// Loads the policies of one file.
    fn load_text(&mut self, file: &Path, text: &str) {
        let map = SourceMap::new(text);
        let shared: Arc<str> = Arc::from(text);
        let document: Value = match serde_yaml_ng::from_str(text) {
            Ok(document) => document,
            Err(error) => {
                self.errors.push(yaml_error(file, &error));
                return;
            }
        };
        let at_start = |reason: &str| LoadError {
            file: file.to_path_buf(),
            position: Some(map.locate(map.whole(), &[])),
            reason: reason.to_owned(),
        };
        let parsed: Vec<(Block, PolicyRecord)> = match document {
            Value::Null => {
                self.errors
                    .push(at_start("the file holds no policy (it is empty)"));
                return;
            }
            Value::Mapping(_) => {
                let block = map.whole();
                match with_source(&shared, block, || serde_yaml_ng::from_str(text)) {
                    Ok(record) => vec![(block, record)],
                    Err(error) => {
                        self.errors.push(yaml_error(file, &error));
                        return;
                    }
                }
            }
            Value::Sequence(items) if items.is_empty() => {
                self.errors
                    .push(at_start("the file holds an empty list of policies"));
                return;
            }
            Value::Sequence(items) => {
                let blocks = map.list_items();
                let cut_texts: Vec<String> = blocks
                    .iter()
                    .map(|block| map.block_as_mapping(*block))
                    .collect();
                let cut_reproduces_items = blocks.len() == items.len()
                    && cut_texts.iter().zip(&items).all(|(cut, item)| {
                        serde_yaml_ng::from_str::<Value>(cut).is_ok_and(|value| value == *item)
                    });
                if cut_reproduces_items {
                    let mut parsed = Vec::new();
                    for (block, cut) in blocks.into_iter().zip(&cut_texts) {
                        match with_source(&shared, block, || serde_yaml_ng::from_str(cut)) {
                            Ok(record) => parsed.push((block, record)),
                            Err(error) => self.errors.push(yaml_error(file, &error)),
                        }
                    }
                    parsed
                } else {
                    let block = map.whole();
                    match with_source(&shared, block, || {
                        serde_yaml_ng::from_str::<Vec<PolicyRecord>>(text)
                    }) {
                        Ok(records) => records.into_iter().map(|record| (block, record)).collect(),
                        Err(error) => {
                            self.errors.push(yaml_error(file, &error));
                            return;
                        }
                    }
                }
            }
            _ => {
                self.errors.push(at_start(
                    "expected a policy (a mapping) or a list of policies at the top level",
                ));
                return;
            }
        };
        for (block, record) in parsed {
            let locator = Locator {
                file,
                map: &map,
                block,
            };
            let id_position = map.locate(block, &["id"]);
            match compile(record, &locator) {
                Ok(policy) => self.policies.push((policy, id_position)),
                Err(errors) => self.errors.extend(errors),
            }
        }
    }

    /// Checks ids across files and builds the set, or the errors; also returns a report.
    fn finish(mut self) -> (Result<PolicySet, LoadErrors>, Report) {
        let mut first_definition: HashMap<Arc<str>, (PathBuf, Position)> = HashMap::new();
        let mut policies = Vec::with_capacity(self.policies.len());
        for (policy, id_position) in std::mem::take(&mut self.policies) {
            if let Some((first_file, first_position)) = first_definition.get(&policy.id) {
                self.errors.push(LoadError {
                    file: policy.file().to_path_buf(),
                    position: Some(id_position),
                    reason: format!(
                        "duplicate policy id {:?}: already defined at {}:{}",
                        policy.id(),
                        first_file.display(),
                        first_position.line
                    ),
                });
                continue;
            }
            first_definition.insert(
                Arc::clone(&policy.id),
                (policy.file().to_path_buf(), id_position),
            );
            policies.push(policy);
        }
        policies.sort_by(|left, right| left.id().cmp(right.id()));
        self.errors
            .sort_by(|left, right| (&left.file, left.position).cmp(&(&right.file, right.position)));
        let fingerprint = fingerprint_of(&policies);
        let report = Report {
            files: self.files,
            policies: policies.len(),
            errors: self.errors.clone(),
            fingerprint: self.errors.is_empty().then(|| fingerprint.clone()),
        };
        if self.errors.is_empty() {
            (
                Ok(PolicySet {
                    policies,
                    fingerprint,
                }),
                report,
            )
        } else {
            (Err(LoadErrors(self.errors)), report)
        }
    }
}

/// Whether a directory entry is a policy file: `*.yaml`/`*.yml`, not hidden, a file.
fn is_policy_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|name| name.to_str())
        .is_none_or(|name| name.starts_with('.'));
    let yaml = path
        .extension()
        .and_then(|extension| extension.to_str())
        .is_some_and(|extension| extension == "yaml" || extension == "yml");
    !hidden && yaml && path.is_file()
}

/// A parser error with its position, the position taken out of the message.
fn yaml_error(file: &Path, error: &serde_yaml_ng::Error) -> LoadError {
    LoadError {
        file: file.to_path_buf(),
        position: error.location().map(|location| Position {
            line: location.line(),
            column: location.column(),
        }),
        reason: strip_positions(&error.to_string()),
    }
}

/// Removes ` at line N column M` from a parser message (the position is reported separately).
fn strip_positions(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(index) = rest.find(" at line ") {
        out.push_str(&rest[..index]);
        let after = &rest[index + " at line ".len()..];
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let tail = &after[digits..];
        match tail.strip_prefix(" column ") {
            Some(column) if digits > 0 => {
                let column_digits = column.len()
                    - column
                        .trim_start_matches(|c: char| c.is_ascii_digit())
                        .len();
                rest = &column[column_digits..];
            }
            _ => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The fingerprint of policies sorted by id (see [`PolicySet::fingerprint`]).
fn fingerprint_of(policies: &[Policy]) -> String {
    let records: Vec<&PolicyRecord> = policies.iter().map(Policy::record).collect();
    let normalized =
        serde_json::to_string(&records).expect("policy records serialize to JSON infallibly");
    format!("fnv1a64:{:016x}", fnv1a64(normalized.as_bytes()))
}

/// FNV-1a, 64 bits: stable across Rust versions and platforms (unlike `DefaultHasher`).
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The result of checking a policy directory: what `policy check` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Policy files read.
    pub files: usize,
    /// Valid policies (excluding duplicates).
    pub policies: usize,
    /// Every problem, in file and line order.
    pub errors: Vec<LoadError>,
    /// The set's fingerprint, when there are no errors.
    pub fingerprint: Option<String>,
}

impl Report {
    /// Whether the directory loads.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

impl fmt::Display for Report {
    /// One `file:line:col: reason` line per error, then a summary line.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for error in &self.errors {
            writeln!(formatter, "{error}")?;
        }
        match &self.fingerprint {
            Some(fingerprint) => write!(
                formatter,
                "ok: {} policies in {} files ({fingerprint})",
                self.policies, self.files
            ),
            None => write!(
                formatter,
                "failed: {} error{} in {} files",
                self.errors.len(),
                if self.errors.len() == 1 { "" } else { "s" },
                self.files
            ),
        }
    }
}

/// Checks a policy directory without loading it into a service: the future `policy check`.
pub fn check_dir(dir: impl AsRef<Path>) -> Report {
    Loader::from_dir(dir.as_ref()).finish().1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_taken_out_of_messages() {
        assert_eq!(
            strip_positions("owner: missing field `team` at line 3 column 5"),
            "owner: missing field `team`"
        );
        assert_eq!(
            strip_positions("did not find expected key at line 3 column 5, while parsing a block mapping at line 1 column 1"),
            "did not find expected key, while parsing a block mapping"
        );
        assert_eq!(strip_positions("at line x"), "at line x");
    }
}
