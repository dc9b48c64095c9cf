//! The audit writer: decisions, alerts and approval outcomes as ClickHouse rows, written in batches
//! that retry until done (at least once; the tables collapse repeats).

use super::*;

/// One audit row to write.
pub(super) enum AuditRow {
    Decision(ControlDecision),
    Alert(Alert),
    Approval(Box<ApprovalAudit>),
    /// One generic-webhook delivery round (issue 17 point 5).
    Webhook(crate::notify::webhook::WebhookStatus),
}

#[derive(Debug, clickhouse::Row, Serialize)]
pub(super) struct WebhookDeliveryRow {
    pub(super) delivery_id: String,
    pub(super) event: String,
    pub(super) policy_id: String,
    pub(super) scope: String,
    pub(super) status: String,
    pub(super) round: u32,
    pub(super) attempts: u32,
    pub(super) http_status: u16,
    pub(super) error: String,
    pub(super) at: u32,
    pub(super) at_us: u64,
}

/// What the alerter's checks made of one approval record.
pub(super) struct ApprovalAudit {
    pub(super) received: Arc<ReceivedApproval>,
    pub(super) status: &'static str,
    pub(super) reason: String,
    /// Only the check row: the record reused the id of an approval in force (engine docs).
    pub(super) shadowed: bool,
    pub(super) decided_at: DateTime<Utc>,
}

#[derive(Debug, clickhouse::Row, Serialize)]
pub(super) struct DecisionRow {
    pub(super) decision_id: String,
    pub(super) key: String,
    pub(super) policy_id: String,
    pub(super) scope_keys: Vec<String>,
    pub(super) scope_values: Vec<String>,
    pub(super) action: String,
    pub(super) degrade_to: Option<String>,
    pub(super) reason: String,
    pub(super) unit: String,
    pub(super) observed: i128,
    pub(super) limit_value: i128,
    pub(super) window_kind: String,
    pub(super) window_start: u32,
    pub(super) window_end: u32,
    pub(super) issued_at: u32,
    pub(super) issued_at_us: u64,
    pub(super) expires_at: Option<u32>,
    pub(super) version: u64,
}

#[derive(Debug, clickhouse::Row, Serialize)]
pub(super) struct AlertRow {
    pub(super) alert_id: String,
    pub(super) dedup_key: String,
    pub(super) policy_id: String,
    pub(super) scope_keys: Vec<String>,
    pub(super) scope_values: Vec<String>,
    pub(super) kind: String,
    pub(super) severity: String,
    pub(super) threshold_percent: Option<i32>,
    pub(super) unit: String,
    pub(super) observed: i128,
    pub(super) limit_value: Option<i128>,
    pub(super) window_kind: String,
    pub(super) window_start: u32,
    pub(super) window_end: u32,
    pub(super) owner: String,
    pub(super) message: String,
    pub(super) raised_at: u32,
    pub(super) raised_at_us: u64,
}

#[derive(Debug, clickhouse::Row, Serialize)]
pub(super) struct ApprovalRow {
    pub(super) approval_id: String,
    pub(super) policy_id: String,
    pub(super) scope_keys: Vec<String>,
    pub(super) scope_values: Vec<String>,
    pub(super) new_limit: i128,
    pub(super) valid_until: u32,
    pub(super) reason: String,
    pub(super) approved_by: String,
    pub(super) requested_at: u32,
    pub(super) status: String,
    pub(super) decided_at: u32,
}

impl ApprovalRow {
    pub(super) fn of(audit: &ApprovalAudit) -> ApprovalRow {
        let approval = &audit.received.approval;
        let (scope_keys, scope_values) = split_scope(&approval.scope);
        ApprovalRow {
            approval_id: approval.approval_id.clone(),
            policy_id: approval.policy_id.clone(),
            scope_keys,
            scope_values,
            new_limit: money(&approval.new_limit),
            valid_until: seconds(approval.valid_until),
            reason: approval.reason.clone(),
            approved_by: approval.approved_by.clone(),
            requested_at: seconds(approval.requested_at),
            status: audit.status.to_owned(),
            decided_at: seconds(audit.decided_at),
        }
    }
}

/// A row of `approval_checks` (migration 0007).
#[derive(Debug, clickhouse::Row, Serialize)]
pub(super) struct ApprovalCheckRow {
    pub(super) approval_id: String,
    pub(super) record_sha256: String,
    pub(super) policy_id: String,
    pub(super) approved_by: String,
    pub(super) status: String,
    pub(super) check_reason: String,
    pub(super) first_seen_at: u32,
    pub(super) first_seen_at_us: u64,
    pub(super) record_base64: String,
    pub(super) record_key: String,
    pub(super) decided_at: u32,
    pub(super) decided_at_us: u64,
}

impl ApprovalCheckRow {
    pub(super) fn of(audit: &ApprovalAudit) -> ApprovalCheckRow {
        use base64::Engine as _;
        use sha2::Digest as _;
        let received = &audit.received;
        ApprovalCheckRow {
            approval_id: received.approval.approval_id.clone(),
            record_sha256: hex::encode(sha2::Sha256::digest(&received.record)),
            policy_id: received.approval.policy_id.clone(),
            approved_by: received.approval.approved_by.clone(),
            status: audit.status.to_owned(),
            check_reason: audit.reason.clone(),
            first_seen_at: received.appended_at.map_or(0, seconds),
            first_seen_at_us: received.appended_at.map_or(0, micros),
            record_base64: base64::engine::general_purpose::STANDARD.encode(&received.record),
            record_key: received.key.clone().unwrap_or_default(),
            decided_at: seconds(audit.decided_at),
            decided_at_us: micros(audit.decided_at),
        }
    }
}

pub(super) fn seconds(at: DateTime<Utc>) -> u32 {
    u32::try_from(at.timestamp().max(0)).unwrap_or(u32::MAX)
}

pub(super) fn micros(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp_micros().max(0)).unwrap_or(0)
}

pub(super) fn money(value: &rust_decimal::Decimal) -> i128 {
    schemas::money::to_unscaled(value).unwrap_or_else(|error| {
        warn!(%error, "amount not representable in Decimal(38, 12); audited as 0");
        0
    })
}

pub(super) fn split_scope(
    scope: &std::collections::BTreeMap<String, String>,
) -> (Vec<String>, Vec<String>) {
    scope.iter().map(|(k, v)| (k.clone(), v.clone())).unzip()
}

/// Writes audit rows in batches (every 500 ms or 1,000 rows), retrying each batch until written.
pub(super) async fn audit_task(client: clickhouse::Client, mut queue: mpsc::Receiver<AuditRow>) {
    let mut decisions = Vec::new();
    let mut alerts = Vec::new();
    let mut approvals = Vec::new();
    let mut approval_checks = Vec::new();
    let mut webhook_deliveries = Vec::new();
    let mut flush = tokio::time::interval(Duration::from_millis(500));
    let mut open = true;
    while open
        || !(decisions.is_empty()
            && alerts.is_empty()
            && approvals.is_empty()
            && approval_checks.is_empty()
            && webhook_deliveries.is_empty())
    {
        tokio::select! {
            received = queue.recv(), if open => match received {
                None => open = false,
                Some(AuditRow::Decision(d)) => {
                    let (scope_keys, scope_values) = split_scope(&d.scope);
                    let action = d.audit_action().to_owned();
                    decisions.push(DecisionRow {
                        decision_id: d.decision_id,
                        key: d.key,
                        policy_id: d.policy_id,
                        scope_keys,
                        scope_values,
                        action,
                        degrade_to: d.degrade_to,
                        reason: d.reason,
                        unit: d.unit,
                        observed: money(&d.observed),
                        limit_value: money(&d.limit),
                        window_kind: d.window,
                        window_start: seconds(d.window_start),
                        window_end: seconds(d.window_end),
                        issued_at: seconds(d.issued_at),
                        issued_at_us: micros(d.issued_at),
                        expires_at: d.expires_at.map(seconds),
                        version: d.version,
                    });
                }
                Some(AuditRow::Alert(a)) => {
                    let (scope_keys, scope_values) = split_scope(&a.scope);
                    alerts.push(AlertRow {
                        alert_id: a.alert_id,
                        dedup_key: a.dedup_key,
                        policy_id: a.policy_id,
                        scope_keys,
                        scope_values,
                        kind: a.kind.as_str().to_owned(),
                        severity: a.severity.as_str().to_owned(),
                        threshold_percent: a.threshold_percent.and_then(|t| i32::try_from(t).ok()),
                        unit: a.unit,
                        observed: money(&a.observed),
                        limit_value: a.limit.as_ref().map(money),
                        window_kind: a.window,
                        window_start: seconds(a.window_start),
                        window_end: seconds(a.window_end),
                        owner: a.owner,
                        message: a.message,
                        raised_at: seconds(a.raised_at),
                        raised_at_us: micros(a.raised_at),
                    });
                }
                Some(AuditRow::Webhook(status)) => {
                    webhook_deliveries.push(WebhookDeliveryRow {
                        delivery_id: status.delivery_id,
                        event: status.event.to_owned(),
                        policy_id: status.policy_id,
                        scope: status.scope,
                        status: status.status.to_owned(),
                        round: status.round,
                        attempts: status.attempts,
                        http_status: status.http_status,
                        error: status.error,
                        at: seconds(status.at),
                        at_us: micros(status.at),
                    });
                }
                Some(AuditRow::Approval(audit)) => {
                    approval_checks.push(ApprovalCheckRow::of(&audit));
                    if !audit.shadowed {
                        approvals.push(ApprovalRow::of(&audit));
                    }
                }
            },
            _ = flush.tick() => {
                write_until_done(&client, "decisions", &mut decisions).await;
                write_until_done(&client, "alerts", &mut alerts).await;
                write_until_done(&client, "approvals", &mut approvals).await;
                write_until_done(&client, "approval_checks", &mut approval_checks).await;
                write_until_done(&client, "webhook_deliveries", &mut webhook_deliveries).await;
            }
        }
    }
}

pub(super) async fn write_until_done<T>(
    client: &clickhouse::Client,
    table: &'static str,
    rows: &mut Vec<T>,
) where
    T: clickhouse::Row + Serialize + for<'a> clickhouse::RowWrite<Value<'a> = T>,
{
    if rows.is_empty() {
        return;
    }
    let mut retry =
        infra::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(10)).attempts();
    loop {
        match write_rows(client, table, rows).await {
            Ok(()) => {
                metrics::counter!(metric::AUDIT_ROWS, "table" => table)
                    .increment(rows.len() as u64);
                rows.clear();
                return;
            }
            Err(error) => {
                let failures = AUDIT_FAILURES.fetch_add(1, Ordering::Relaxed) + 1;
                warn!(%error, table, failures, "audit write failed; retrying");
                metrics::counter!(metric::RETRIES, "target" => "clickhouse").increment(1);
                tokio::time::sleep(retry.next_delay()).await;
            }
        }
    }
}

pub(super) async fn write_rows<T>(
    client: &clickhouse::Client,
    table: &str,
    rows: &[T],
) -> Result<(), clickhouse::error::Error>
where
    T: clickhouse::Row + Serialize + for<'a> clickhouse::RowWrite<Value<'a> = T>,
{
    let mut insert = client.insert::<T>(table).await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await
}
