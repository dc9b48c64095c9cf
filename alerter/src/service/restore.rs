//! Restore: the control, alerts, approvals and totals topics (and a usage lookback for job gauges)
//! folded into the engine, record by record, before the first evaluation.

use super::*;

/// The state a restore builds. Every record is folded in as it is read and dropped (issue 13
/// point 6): nothing holds the records, so the restore's memory follows the live state (decisions
/// in force, open windows' totals, approvals), not the topics' history. Totals of windows that
/// ended are not even held ([`Engine::load_total`]) and tombstones remove theirs.
pub(super) struct Restore {
    /// The admission step usage records go through.
    pub(super) admission: quotaflow_admission::Admission,
    /// The engine, restored without evaluating.
    pub(super) engine: Engine,
    /// Per-action rules, fed the usage lookback.
    pub(super) actions: ActionWatch,
    /// What the per-action rules found in the lookback (raised after the restore, unless raised
    /// before).
    pub(super) action_findings: Vec<Effect>,
    /// Approvals read, checked and applied after the restore (the first evaluation sees them).
    pub(super) approvals: Vec<ReceivedApproval>,
    /// Decisions and alerts on the topics, audited again after the restore.
    pub(super) reaudit: Vec<AuditRow>,
    /// What was read.
    pub(super) counts: RestoreCounts,
    /// End offsets per (topic, partition) taken when the restore began: the follow starts there.
    pub(super) ends: HashMap<(String, i32), i64>,
    /// Topic names.
    pub(super) topics: infra::config::TopicsConfig,
}

/// Records a restore folded, by kind.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct RestoreCounts {
    pub(super) decisions: usize,
    pub(super) alerts: usize,
    pub(super) approvals: usize,
    pub(super) totals: usize,
    pub(super) tombstones: usize,
    pub(super) usage_events: usize,
}

impl RestoreCounts {
    /// Sets the [`metric::RESTORE_RECORDS`] gauges.
    pub(super) fn record(&self) {
        for (topic, count) in [
            ("control", self.decisions),
            ("alerts", self.alerts),
            ("approvals", self.approvals),
            ("totals", self.totals),
            ("totals_tombstones", self.tombstones),
            ("usage", self.usage_events),
        ] {
            metrics::gauge!(metric::RESTORE_RECORDS, "topic" => topic).set(count as f64);
        }
    }
}

impl Restore {
    pub(super) fn new(
        engine: Engine,
        actions: ActionWatch,
        topics: infra::config::TopicsConfig,
        admission: quotaflow_admission::Admission,
    ) -> Restore {
        Restore {
            admission,
            engine,
            actions,
            action_findings: Vec::new(),
            approvals: Vec::new(),
            reaudit: Vec::new(),
            counts: RestoreCounts::default(),
            ends: HashMap::new(),
            topics,
        }
    }

    /// Folds one record read before its partition's end offset.
    pub(super) fn fold(&mut self, message: &impl Message) {
        let topic = message.topic();
        if topic == self.topics.approvals {
            if let Some(received) = RawApproval::of(message).and_then(|raw| raw.decode()) {
                self.approvals.push(received);
                self.counts.approvals += 1;
            }
            return;
        }
        if !evaluated(topic, message.key(), &self.topics.totals) {
            return;
        }
        let Some(payload) = message.payload() else {
            if topic == self.topics.totals {
                remove_total(&mut self.engine, message.key());
                self.counts.tombstones += 1;
            } else if topic == self.topics.control {
                // A forgotten key (issue 13 point 7): its decisions before this are void.
                if let Some(key) = message.key().and_then(|key| std::str::from_utf8(key).ok()) {
                    self.engine.forget_decision(key);
                }
            }
            return;
        };
        if topic == self.topics.control {
            if let Some(decision) = decode::<ControlDecision>("control", payload) {
                self.reaudit.push(AuditRow::Decision(decision.clone()));
                self.engine.restore_decision(decision);
                self.counts.decisions += 1;
            }
        } else if topic == self.topics.alerts {
            if let Some(alert) = decode::<Alert>("alerts", payload) {
                self.engine.restore_alert(&alert);
                self.reaudit.push(AuditRow::Alert(alert));
                self.counts.alerts += 1;
            }
        } else if topic == self.topics.usage {
            if let Some(event) = admit_usage(&self.admission, message, payload) {
                self.engine.load_job_event(&event);
                self.action_findings.extend(self.actions.observe(
                    self.engine.policies(),
                    &event,
                    Utc::now(),
                ));
                self.counts.usage_events += 1;
            }
        } else if topic == self.topics.totals {
            if let Some(total) = decode::<WindowTotal>("totals", payload) {
                self.engine.load_total(total, Utc::now());
                self.counts.totals += 1;
            }
        }
    }
}

/// Applies a tombstone of the totals topic (a record without value) by its key.
pub(super) fn remove_total(engine: &mut Engine, key: Option<&[u8]>) {
    match key
        .and_then(|key| std::str::from_utf8(key).ok())
        .and_then(WindowTotal::parse_compaction_key)
    {
        Some(key) => {
            engine.remove_total(&key);
        }
        None => warn!("totals tombstone with an unreadable key skipped"),
    }
}

/// An approval record as read: payload, key and the broker's append time (if it is that kind).
pub(super) struct RawApproval {
    pub(super) payload: Vec<u8>,
    pub(super) key: Option<Vec<u8>>,
    pub(super) appended_at: Option<DateTime<Utc>>,
}

impl RawApproval {
    pub(super) fn of(message: &impl Message) -> Option<RawApproval> {
        Some(RawApproval {
            payload: message.payload()?.to_vec(),
            key: message.key().map(<[u8]>::to_vec),
            appended_at: log_append_time(message.timestamp()),
        })
    }

    pub(super) fn decode(&self) -> Option<ReceivedApproval> {
        let approval = decode::<Approval>("approvals", &self.payload)?;
        Some(ReceivedApproval::new(
            approval,
            self.appended_at,
            self.key.as_deref(),
            &self.payload,
        ))
    }
}

/// The broker's append time of a record; `None` for a writer's `CreateTime` (not trusted) or none.
pub(super) fn log_append_time(timestamp: rdkafka::Timestamp) -> Option<DateTime<Utc>> {
    match timestamp {
        rdkafka::Timestamp::LogAppendTime(millis) => DateTime::from_timestamp_millis(millis),
        rdkafka::Timestamp::CreateTime(_) | rdkafka::Timestamp::NotAvailable => None,
    }
}

/// Reads every partition of `topics` from the start (or, for a topic in `since`, from the first
/// record at or after that time) to the end offsets taken now, folding each record into
/// `restore` as it comes (none is kept).
pub(super) fn read_to_end(
    kafka: &KafkaConfig,
    group: &str,
    topics: &[String],
    since: &HashMap<String, DateTime<Utc>>,
    timeout: Duration,
    restore: &mut Restore,
) -> Result<()> {
    let consumer: BaseConsumer =
        infra::kafka::consumer_config(kafka, "quotaflow-alerter-restore", group).create()?;
    let deadline = Instant::now() + timeout;
    let mut assignment = TopicPartitionList::new();
    let mut pending: HashMap<(String, i32), i64> = HashMap::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|topic| topic.partitions().iter().map(|partition| partition.id()))
            .collect();
        let starts: HashMap<i32, i64> = match since.get(topic) {
            None => HashMap::new(),
            Some(at) => {
                let mut query = TopicPartitionList::new();
                for partition in &partitions {
                    query.add_partition_offset(
                        topic,
                        *partition,
                        Offset::Offset(at.timestamp_millis()),
                    )?;
                }
                consumer
                    .offsets_for_times(query, Duration::from_secs(10))?
                    .elements()
                    .iter()
                    .filter_map(|element| match element.offset() {
                        Offset::Offset(offset) => Some((element.partition(), offset)),
                        _ => None,
                    })
                    .collect()
            }
        };
        for partition in partitions {
            let (low, high) =
                consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
            restore.ends.insert((topic.clone(), partition), high);
            // With a start time, a partition without a record since then has nothing to read.
            let start = match since.get(topic) {
                None => low,
                Some(_) => starts.get(&partition).copied().unwrap_or(high),
            };
            if high > start {
                assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
                pending.insert((topic.clone(), partition), high);
            }
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    consumer.assign(&assignment)?;
    while !pending.is_empty() {
        if Instant::now() > deadline {
            return Err(Error::Restore(format!(
                "topics not read to their end within {timeout:?}: {} partitions left",
                pending.len()
            )));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let key = (message.topic().to_owned(), message.partition());
                if let Some(end) = pending.get(&key) {
                    if message.offset() < *end {
                        restore.fold(&message);
                    }
                    if message.offset() + 1 >= *end {
                        pending.remove(&key);
                    }
                }
            }
            Some(Err(error)) => warn!(%error, "kafka error while restoring"),
            None => {
                // Compaction can leave the end offset without a record: the position says.
                if let Ok(positions) = consumer.position() {
                    for element in positions.elements() {
                        if let Offset::Offset(position) = element.offset() {
                            let key = (element.topic().to_owned(), element.partition());
                            if pending.get(&key).is_some_and(|end| position >= *end) {
                                pending.remove(&key);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
