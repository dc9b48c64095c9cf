//! Replication of the topics the services create (`[kafka.topics.replication.<topic>]`).
//!
//! `acks=all` makes a producer wait for every in-sync replica, and `min.insync.replicas` is how many
//! that must be: with factor 3 and 2 in-sync required, an acknowledged record survives the loss of a
//! broker, and producing stops (instead of silently losing durability) when two are gone. The
//! defaults (1/1) fit the single-node local stack only; docs/operations.md says what each topic
//! needs in production.

use serde::{Deserialize, Serialize};

/// Replication factor and `min.insync.replicas` of one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ReplicationFields")]
pub struct Replication {
    /// Copies of each partition (the topic's replication factor); at most the number of brokers.
    pub factor: i32,
    /// Replicas that must have a record before an `acks=all` produce succeeds
    /// (`min.insync.replicas`); at least 1, at most `factor`.
    pub min_insync_replicas: i32,
}

impl Replication {
    /// The local stack's single broker: one copy.
    pub const SINGLE_NODE: Replication = Replication {
        factor: 1,
        min_insync_replicas: 1,
    };

    /// Checks `1 <= min_insync_replicas <= factor`.
    pub fn validate(&self) -> Result<(), String> {
        if self.factor < 1 {
            return Err(format!(
                "replication factor must be at least 1, not {}",
                self.factor
            ));
        }
        if self.min_insync_replicas < 1 || self.min_insync_replicas > self.factor {
            return Err(format!(
                "min_insync_replicas ({}) must be between 1 and the replication factor ({})",
                self.min_insync_replicas, self.factor
            ));
        }
        Ok(())
    }
}

impl Default for Replication {
    fn default() -> Self {
        Self::SINGLE_NODE
    }
}

/// What the config spells; becomes a [`Replication`] only if it validates.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ReplicationFields {
    factor: i32,
    min_insync_replicas: i32,
}

impl Default for ReplicationFields {
    fn default() -> Self {
        let Replication {
            factor,
            min_insync_replicas,
        } = Replication::default();
        Self {
            factor,
            min_insync_replicas,
        }
    }
}

impl TryFrom<ReplicationFields> for Replication {
    type Error = String;

    fn try_from(fields: ReplicationFields) -> Result<Self, String> {
        let replication = Replication {
            factor: fields.factor,
            min_insync_replicas: fields.min_insync_replicas,
        };
        replication.validate()?;
        Ok(replication)
    }
}

/// [`Replication`] per pipeline topic, named as in `kafka.topics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsReplication {
    /// Usage events: every bill is here first; losing one undercounts spend.
    pub usage: Replication,
    /// Dead letters: the only copy of a rejected record until someone replays it.
    pub dead_letter: Replication,
    /// Window totals (compacted): rebuilt from usage if lost, but enforcement lags until then.
    pub totals: Replication,
    /// Block/allow decisions (compacted): what gateways obey; losing one re-allows a blocked scope.
    pub control: Replication,
    /// Alerts (audit trail of what was raised and notified).
    pub alerts: Replication,
    /// Approvals (compacted): losing one drops a raised cap back to its policy value.
    pub approvals: Replication,
}

impl TopicsReplication {
    /// The same settings for every topic.
    pub fn all(replication: Replication) -> Self {
        Self {
            usage: replication,
            dead_letter: replication,
            totals: replication,
            control: replication,
            alerts: replication,
            approvals: replication,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_insync_replicas_must_fit_the_factor() {
        let parse =
            |text: &str| serde_json::from_str::<Replication>(text).map_err(|e| e.to_string());
        assert_eq!(
            parse(r#"{"factor": 3, "min_insync_replicas": 2}"#),
            Ok(Replication {
                factor: 3,
                min_insync_replicas: 2
            })
        );
        assert_eq!(parse("{}"), Ok(Replication::SINGLE_NODE));
        let error = parse(r#"{"factor": 3, "min_insync_replicas": 4}"#).unwrap_err();
        assert!(error.contains("min_insync_replicas (4)"), "{error}");
        let error = parse(r#"{"factor": 0}"#).unwrap_err();
        assert!(error.contains("at least 1"), "{error}");
    }
}
