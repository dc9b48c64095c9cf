//! Dead letters: records read from Kafka that cannot be decoded or validated (owned by the archive work).
