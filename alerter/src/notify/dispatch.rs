//! Sends notices where the config routes them (Slack webhook per channel, PagerDuty routing key per
//! service), and keeps those that failed in a way that may pass later for another round
//! ([`super::pending`]). The service's notification task runs one [`Dispatcher`] per destination
//! (each Slack channel's webhook, PagerDuty) on its own worker, so a slow or failing webhook holds
//! back only its own notifications; the redelivery capacity is per destination.
//!
//! Every notice sent or kept is counted in `quotaflow_alerter_notifications_total{service, outcome}`:
//! `sent`, `pending` (failed a round, kept for the next), `failed` (refused, not retried),
//! `unrouted` (no webhook or routing key for it), `dropped` (pushed out of a full queue).

use std::time::Instant;

use tracing::{debug, error, warn};

use super::grouping::Grouped;
use super::pagerduty::{self, PagerDutyNotifier};
use super::pending::{Delivery, Pending};
use super::slack::SlackNotifier;
use super::webhook::{self, WebhookStatus};
use super::{Notice, NoticeKind, NotifyConfig, NotifyError, Service};
use crate::service::metric;

/// The notifiers of one [`NotifyConfig`] and the deliveries waiting for another round.
pub struct Dispatcher {
    /// Routing (webhooks, routing keys) and retry settings.
    config: NotifyConfig,
    /// The one client every webhook is sent with ([`super::client`]).
    http: reqwest::Client,
    /// PagerDuty events (the routing key is given per event).
    pagerduty: PagerDutyNotifier,
    /// Deliveries whose last round failed in a way that may pass later.
    pending: Pending,
    /// Where each webhook round's outcome goes (the `webhook_deliveries` audit table).
    statuses: Option<tokio::sync::mpsc::Sender<WebhookStatus>>,
}

/// What became of one delivery round; the `outcome` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Sent { status: u16, attempts: u32 },
    Unrouted,
}

impl Dispatcher {
    /// A dispatcher for `config`, sending with `http` (from [`NotifyConfig::http_client`]).
    pub fn new(config: NotifyConfig, http: reqwest::Client) -> Self {
        let pagerduty = PagerDutyNotifier::new(config.pagerduty.events_url.clone(), http.clone())
            .with_retry_policy(config.retry.clone());
        let pending = Pending::new(config.redelivery.clone());
        Self {
            config,
            http,
            pagerduty,
            pending,
            statuses: None,
        }
    }

    /// Reports each webhook round's outcome to `statuses` (a full queue drops the report, logged).
    pub fn with_webhook_statuses(
        mut self,
        statuses: tokio::sync::mpsc::Sender<WebhookStatus>,
    ) -> Self {
        self.statuses = Some(statuses);
        self
    }

    /// Sends `notice` to the generic webhook when one is configured; else does nothing.
    pub async fn webhook(&mut self, notice: &Notice) {
        if self.config.webhook.endpoint().is_some() {
            self.deliver(Delivery::Webhook(notice.clone()), 0).await;
        }
    }

    /// Posts a (grouped) notice to the Slack webhook of its channel.
    pub async fn slack(&mut self, grouped: Grouped) {
        self.deliver(Delivery::Slack(grouped), 0).await;
    }

    /// Pages (or resolves) for `notice` when it names a PagerDuty service; else does nothing.
    pub async fn pagerduty(&mut self, notice: &Notice) {
        if notice.pagerduty_service.is_some() {
            self.deliver(Delivery::PagerDuty(notice.clone()), 0).await;
        }
    }

    /// Sends again every kept delivery whose delay has passed.
    pub async fn redeliver_due(&mut self, now: Instant) {
        for (delivery, failed_rounds) in self.pending.due(now) {
            self.deliver(delivery, failed_rounds).await;
        }
    }

    /// Deliveries waiting for another round.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// One round for `delivery`, which has failed `failed_rounds` rounds before.
    async fn deliver(&mut self, delivery: Delivery, failed_rounds: u32) {
        let service = service_of(&delivery);
        if let Delivery::PagerDuty(notice) = &delivery {
            if matches!(notice.kind, NoticeKind::Resolved { .. }) {
                // A trigger still waiting would re-open the incident after this resolve.
                let incident = pagerduty::incident_key(notice);
                let discarded = self.pending.discard(|waiting| {
                    matches!(waiting, Delivery::PagerDuty(trigger)
                        if trigger.kind.incident_kind().is_some()
                            && pagerduty::incident_key(trigger) == incident)
                });
                if discarded > 0 {
                    debug!(
                        discarded,
                        "pending pagerduty triggers dropped: their incident is resolved"
                    );
                }
            }
        }
        let sent = match &delivery {
            Delivery::Slack(grouped) => self.send_slack(grouped).await,
            Delivery::PagerDuty(notice) => self.send_pagerduty(notice).await,
            Delivery::Webhook(notice) => self.send_webhook(notice).await,
        };
        let webhook_notice = match &delivery {
            Delivery::Webhook(notice) => Some(notice.clone()),
            _ => None,
        };
        let report = |outcome: &'static str, sent: &Result<Outcome, NotifyError>| {
            let notice = webhook_notice.as_ref()?;
            let (http_status, attempts, error) = match sent {
                Ok(Outcome::Sent { status, attempts }) => (*status, *attempts, String::new()),
                Ok(Outcome::Unrouted) => (0, 0, String::new()),
                Err(failure) => (
                    failure.http_status().unwrap_or(0),
                    failure.attempts(),
                    failure.to_string(),
                ),
            };
            Some(WebhookStatus::of(
                notice,
                outcome,
                failed_rounds + 1,
                attempts,
                http_status,
                error,
            ))
        };
        let outcome = match &sent {
            Ok(Outcome::Sent { .. }) => "sent",
            Ok(Outcome::Unrouted) => "unrouted",
            Err(failure) if failure.is_retryable() => {
                let rounds = failed_rounds + 1;
                let next_round_ms = self.config.redelivery.delay(rounds).as_millis() as u64;
                warn!(service, rounds, next_round_ms, error = %failure,
                    "notification not delivered; kept to be sent again");
                if let Some(dropped) = self.pending.keep(delivery, rounds, Instant::now()) {
                    let dropped_service = service_of(&dropped);
                    if let Delivery::Webhook(notice) = &dropped {
                        self.report(WebhookStatus::of(
                            notice,
                            "dropped",
                            0,
                            0,
                            0,
                            "too many notifications pending: dropped before its next round"
                                .to_owned(),
                        ));
                    }
                    error!(
                        service = dropped_service,
                        capacity = self.config.redelivery.capacity,
                        "too many notifications pending: the oldest is dropped"
                    );
                    metrics::counter!(metric::NOTIFICATIONS, "service" => dropped_service, "outcome" => "dropped")
                        .increment(1);
                }
                "pending"
            }
            Err(failure) => {
                warn!(service, error = %failure, "notification not delivered; not retried");
                "failed"
            }
        };
        metrics::counter!(metric::NOTIFICATIONS, "service" => service, "outcome" => outcome)
            .increment(1);
        if let Some(status) = report(outcome, &sent) {
            self.report(status);
        }
    }

    fn report(&self, status: WebhookStatus) {
        if let Some(statuses) = &self.statuses {
            if statuses.try_send(status).is_err() {
                warn!("webhook delivery status not audited: its queue is full or closed");
            }
        }
    }

    async fn send_webhook(&self, notice: &Notice) -> Result<Outcome, NotifyError> {
        let Some((url, secret)) = self.config.webhook.endpoint() else {
            return Ok(Outcome::Unrouted);
        };
        let delivery_id = webhook::delivery_id(notice);
        let now = chrono::Utc::now();
        let body =
            serde_json::to_vec(&webhook::payload(notice, &delivery_id, now)).map_err(|error| {
                NotifyError::InvalidRequest {
                    service: Service::Webhook,
                    detail: format!("cannot serialize the payload: {error}"),
                }
            })?;
        let signature = webhook::signature(secret.expose().as_bytes(), now.timestamp(), &body);
        let redactor = super::retry::Redactor::new(url.expose());
        let (attempts, status) = super::retry::post_bytes(
            &self.http,
            Service::Webhook,
            url.expose(),
            body,
            &[
                (webhook::DELIVERY_HEADER, delivery_id.clone()),
                (webhook::SIGNATURE_HEADER, signature),
            ],
            &self.config.retry,
            &redactor,
        )
        .await?;
        debug!(%delivery_id, attempts, status, "webhook notice delivered");
        Ok(Outcome::Sent { status, attempts })
    }

    async fn send_slack(&self, grouped: &Grouped) -> Result<Outcome, NotifyError> {
        let Some(webhook) = self
            .config
            .slack_webhook(grouped.notice.slack_channel.as_deref())
        else {
            return Ok(Outcome::Unrouted);
        };
        SlackNotifier::new(webhook.clone(), self.http.clone())
            .with_retry_policy(self.config.retry.clone())
            .send_grouped(grouped)
            .await?;
        Ok(Outcome::Sent {
            status: 200,
            attempts: 1,
        })
    }

    async fn send_pagerduty(&self, notice: &Notice) -> Result<Outcome, NotifyError> {
        let service = notice.pagerduty_service.as_deref().unwrap_or_default();
        let Some(routing_key) = self.config.routing_key(service) else {
            warn!(
                service,
                "no pagerduty routing key for this service; not paged"
            );
            return Ok(Outcome::Unrouted);
        };
        let dedup_key = self.pagerduty.send(routing_key, notice).await?;
        debug!(%dedup_key, "pagerduty event sent");
        Ok(Outcome::Sent {
            status: 202,
            attempts: 1,
        })
    }
}

fn service_of(delivery: &Delivery) -> &'static str {
    match delivery {
        Delivery::Slack(_) => Service::Slack.as_str(),
        Delivery::PagerDuty(_) => Service::PagerDuty.as_str(),
        Delivery::Webhook(_) => Service::Webhook.as_str(),
    }
}
