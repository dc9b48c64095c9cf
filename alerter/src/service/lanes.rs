//! Notifications off the main loop: the notification task (Slack grouped, PagerDuty per incident),
//! its per-service lanes, and the alerts-topic record of each alert.

use super::*;

/// Sends notifications, then records each alert on the alerts topic and audits it.
///
/// Deliveries run on one [`Lanes`] worker per destination (a Slack channel's webhook, PagerDuty),
/// so a webhook that takes 30 s per message delays only the messages to that webhook, in order;
/// this task only groups, routes, and records an alert once its deliveries have had their round.
pub(super) async fn notify_task(
    config: NotifyConfig,
    http: reqwest::Client,
    producer: FutureProducer,
    alerts_topic: String,
    mut queue: mpsc::Receiver<(Alert, Notice)>,
    mut audit: Outbox<AuditRow>,
    lane_capacity: usize,
) {
    let group_interval = config.group_interval();
    let mut grouper = Grouper::new(group_interval);
    // Each generic-webhook round's outcome, for the audit table.
    let (statuses, mut webhook_statuses) = mpsc::channel(1_024);
    let mut lanes = Lanes::new(config, http, lane_capacity).with_webhook_statuses(statuses);
    // One per alert whose deliveries are under way: records it once they have had their round.
    let mut recording = tokio::task::JoinSet::new();
    let mut due = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            received = queue.recv() => {
                let Some((alert, notice)) = received else { break };
                let mut rounds = Vec::new();
                if let Some(grouped) = grouper.offer(notice.clone(), Instant::now()) {
                    rounds.extend(lanes.slack(grouped));
                }
                rounds.extend(lanes.webhook(notice.clone()));
                rounds.extend(lanes.pagerduty(notice));
                let (producer, topic) = (producer.clone(), alerts_topic.clone());
                recording.spawn(async move {
                    for round in rounds {
                        let _ = round.await;
                    }
                    record_alert(&producer, &topic, &alert).await;
                    alert
                });
            }
            Some(recorded) = recording.join_next() => {
                if let Ok(alert) = recorded {
                    audit.push(AuditRow::Alert(alert));
                }
            }
            Some(status) = webhook_statuses.recv() => {
                audit.push(AuditRow::Webhook(status));
            }
            _ = due.tick() => {
                for grouped in grouper.due(Instant::now()) {
                    lanes.slack(grouped);
                }
                audit.drain();
            }
        }
    }
    for grouped in grouper.due(Instant::now() + group_interval) {
        lanes.slack(grouped);
    }
    // Within the caller's bounded shutdown wait.
    lanes.close().await;
    while let Ok(status) = webhook_statuses.try_recv() {
        audit.push(AuditRow::Webhook(status));
    }
    while let Some(recorded) = recording.join_next().await {
        if let Ok(alert) = recorded {
            audit.push(AuditRow::Alert(alert));
        }
    }
    audit.flush().await;
}

/// Records `alert` on the alerts topic (what the restore reads), retrying until delivered.
pub(super) async fn record_alert(producer: &FutureProducer, topic: &str, alert: &Alert) {
    let never = Shutdown::new();
    if let Ok(payload) = schemas::codec::encode(alert) {
        if let Err(error) =
            produce_until_delivered(producer, topic, &alert.dedup_key, &payload, &never).await
        {
            error!(%error, dedup_key = %alert.dedup_key, "alert not recorded on the alerts topic");
        }
    }
}

/// One delivery handed to a lane; `round` is told when it has had its first round (sent, kept
/// for redelivery or refused).
pub(super) struct LaneJob {
    pub(super) delivery: LaneDelivery,
    pub(super) round: Option<tokio::sync::oneshot::Sender<()>>,
}

pub(super) enum LaneDelivery {
    Slack(Grouped),
    PagerDuty(Notice),
    Webhook(Notice),
}

/// One worker per destination, each with its own [`Dispatcher`] (and so its own redelivery
/// queue, `notify.redelivery.capacity` per destination) behind a queue of at most
/// `alert.effect_overflow_limit` deliveries. Handing a delivery over never waits: on a full
/// queue it is dropped, logged and counted (`quotaflow_alerter_effects_dropped_total{queue="notify_lane"}`).
pub(super) struct Lanes {
    pub(super) config: NotifyConfig,
    pub(super) http: reqwest::Client,
    pub(super) capacity: usize,
    pub(super) lanes: HashMap<String, mpsc::Sender<LaneJob>>,
    pub(super) workers: tokio::task::JoinSet<()>,
    pub(super) webhook_statuses: Option<mpsc::Sender<crate::notify::webhook::WebhookStatus>>,
}

impl Lanes {
    pub(super) fn new(config: NotifyConfig, http: reqwest::Client, capacity: usize) -> Self {
        Self {
            config,
            http,
            capacity: capacity.max(1),
            lanes: HashMap::new(),
            workers: tokio::task::JoinSet::new(),
            webhook_statuses: None,
        }
    }

    /// Reports each generic-webhook round to `statuses`.
    pub(super) fn with_webhook_statuses(
        mut self,
        statuses: mpsc::Sender<crate::notify::webhook::WebhookStatus>,
    ) -> Self {
        self.webhook_statuses = Some(statuses);
        self
    }

    /// Hands a notice to the generic webhook's lane when the webhook is configured.
    pub(super) fn webhook(&mut self, notice: Notice) -> Option<tokio::sync::oneshot::Receiver<()>> {
        self.config.webhook.endpoint()?;
        self.hand("webhook".to_owned(), LaneDelivery::Webhook(notice))
    }

    /// Hands a Slack message to its channel's lane.
    pub(super) fn slack(&mut self, grouped: Grouped) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let lane = format!(
            "slack:{}",
            grouped.notice.slack_channel.as_deref().unwrap_or_default()
        );
        self.hand(lane, LaneDelivery::Slack(grouped))
    }

    /// Hands a page (or resolve) to the PagerDuty lane when the notice names a service.
    pub(super) fn pagerduty(
        &mut self,
        notice: Notice,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        notice.pagerduty_service.as_ref()?;
        self.hand("pagerduty".to_owned(), LaneDelivery::PagerDuty(notice))
    }

    pub(super) fn hand(
        &mut self,
        lane: String,
        delivery: LaneDelivery,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let (round, told) = tokio::sync::oneshot::channel();
        let job = LaneJob {
            delivery,
            round: Some(round),
        };
        let sender = self.lanes.entry(lane).or_insert_with(|| {
            let (sender, jobs) = mpsc::channel(self.capacity);
            let mut dispatcher = Dispatcher::new(self.config.clone(), self.http.clone());
            if let Some(statuses) = &self.webhook_statuses {
                dispatcher = dispatcher.with_webhook_statuses(statuses.clone());
            }
            self.workers.spawn(lane_task(dispatcher, jobs));
            sender
        });
        match sender.try_send(job) {
            Ok(()) => Some(told),
            Err(_) => {
                error!(
                    capacity = self.capacity,
                    "notification lane full: notification dropped (alert.effect_overflow_limit)"
                );
                metrics::counter!(metric::EFFECTS_DROPPED, "queue" => "notify_lane").increment(1);
                None
            }
        }
    }

    /// Lets every lane finish its queue, then stops them.
    pub(super) async fn close(mut self) {
        self.lanes.clear();
        while self.workers.join_next().await.is_some() {}
    }
}

/// Delivers one destination's notifications in order and redelivers its kept ones when due.
pub(super) async fn lane_task(mut dispatcher: Dispatcher, mut jobs: mpsc::Receiver<LaneJob>) {
    let mut due = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            job = jobs.recv() => {
                let Some(job) = job else { break };
                match job.delivery {
                    LaneDelivery::Slack(grouped) => dispatcher.slack(grouped).await,
                    LaneDelivery::PagerDuty(notice) => dispatcher.pagerduty(&notice).await,
                    LaneDelivery::Webhook(notice) => dispatcher.webhook(&notice).await,
                }
                if let Some(round) = job.round {
                    let _ = round.send(());
                }
            }
            _ = due.tick() => dispatcher.redeliver_due(Instant::now()).await,
        }
    }
    if dispatcher.pending() > 0 {
        warn!(
            pending = dispatcher.pending(),
            "stopping with notifications still pending; they are not kept across restarts"
        );
    }
}
