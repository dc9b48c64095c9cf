//! Load errors: every one names its file, line and column, and a reason.
//!
//! All of them are data errors (the policy files are wrong or unreadable): retrying the load
//! without changing the files gives the same errors, so services keep their previous
//! [`PolicySet`](crate::PolicySet) and report them.

use crate::source_map::Position;
use std::fmt;
use std::path::PathBuf;

/// One problem in one policy file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    /// The file (or the directory, for directory-level problems).
    pub file: PathBuf,
    /// Where in the file; `None` when the problem is the file as a whole (unreadable, …).
    pub position: Option<Position>,
    /// What is wrong, for a human.
    pub reason: String,
}

impl LoadError {
    /// The 1-based line, or 0 when the error has no position.
    pub fn line(&self) -> usize {
        self.position.map_or(0, |position| position.line)
    }
}

impl fmt::Display for LoadError {
    /// `file:line:col: reason`, or `file: reason` without a position.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(position) => write!(
                formatter,
                "{}:{}:{}: {}",
                self.file.display(),
                position.line,
                position.column,
                self.reason
            ),
            None => write!(formatter, "{}: {}", self.file.display(), self.reason),
        }
    }
}

/// Every problem found while loading a policy directory (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadErrors(pub Vec<LoadError>);

impl LoadErrors {
    /// The errors, in file order then line order.
    pub fn errors(&self) -> &[LoadError] {
        &self.0
    }
}

impl fmt::Display for LoadErrors {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        write!(
            formatter,
            "{count} error{} in policy files",
            if count == 1 { "" } else { "s" }
        )?;
        for error in &self.0 {
            write!(formatter, "\n{error}")?;
        }
        Ok(())
    }
}
