//! Dead letters: Kafka records a consumer gives up on, kept byte for byte with the reason.
//!
//! The letters are built in `schemas::dead_letter` and written by `infra::dead_letter`; both are
//! re-exported here under the paths ingest code has always used. Only [`invalid`], which needs
//! the validation [`Violation`]s, is this crate's own.

pub use infra::dead_letter::{DeadLetterError, DeadLetterWriter};
pub use schemas::dead_letter::{dead_letter, kind, undecodable, SourceRecord};

use schemas::DeadLetter;

use crate::validation::Violation;

/// A dead letter for an event that broke validation rules; the message names every field path,
/// e.g. `team (missing): must not be empty; input_tokens (above_model_limit): …`.
pub fn invalid(source: SourceRecord<'_>, service: &str, violations: &[Violation]) -> DeadLetter {
    let message = violations
        .iter()
        .map(Violation::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    dead_letter(source, service, kind::VALIDATION, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_message_names_every_field_path() {
        let source = SourceRecord {
            topic: "usage",
            partition: 2,
            offset: 7,
            payload: b"x",
            key: None,
        };
        let violations = [
            Violation::new("team", "missing", "must not be empty"),
            Violation::new("labels.feature", "too_long", "at most 64 bytes"),
        ];
        let letter = invalid(source, "ingest", &violations);
        assert_eq!(letter.error_kind, "validation");
        assert_eq!(
            letter.error_message,
            "team (missing): must not be empty; labels.feature (too_long): at most 64 bytes"
        );
        assert_eq!((letter.source_partition, letter.source_offset), (2, 7));
    }
}
