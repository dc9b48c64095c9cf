//! Every published decision and alert reaches the audit tables across a `kill -9` and a clean
//! shutdown (issue 13, point 9): the alerter as a child process, ClickHouse read directly.

mod support;

use std::time::Duration;

use infra::config::{ClickHouseConfig, HttpConfig};
use infra::testkit;
use schemas::DecisionAction;
use support::*;

/// Waits until the `decisions` table holds `decision_id`.
async fn wait_audited(clickhouse: &ClickHouseConfig, decision_id: &str, what: &str) {
    let sql = format!("SELECT count() FROM decisions FINAL WHERE decision_id = '{decision_id}'");
    testkit::eventually(Duration::from_secs(60), what, || {
        let client = infra::clickhouse::client(clickhouse);
        let sql = sql.clone();
        async move {
            let rows = client.query(&sql).fetch_one::<u64>().await.unwrap_or(0);
            (rows == 1).then_some(())
        }
    })
    .await;
}

/// Issue 13, point 9 (kill -9): the alerter dies right after publishing a block, before its audit
/// row is written; the restarted alerter re-audits the decision from the control topic.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_decision_published_before_a_kill_9_is_audited_after_the_restart() {
    let receivers = Receivers::start().await;
    let config = config("alerter_reaudit", CAP_PER_KEY, &receivers);
    let crashing = spawn_process(&config, Some("after_publish:1"));
    produce_totals(&config.kafka, &[over_cap("k1")]).await;
    assert!(crashing.wait_aborted(Duration::from_secs(60)).await);
    let log = control_log(&config.kafka);
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].action, DecisionAction::Block);

    let restarted = start(&config).await;
    wait_audited(
        &config.clickhouse,
        &log[0].decision_id,
        "the block re-audited",
    )
    .await;
    restarted.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

/// Issue 13, point 9 (clean shutdown): a block's audit row still waiting for ClickHouse when
/// SIGTERM arrives is written during the shutdown drain, before the process exits.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn an_audit_row_waiting_at_sigterm_is_written_before_exit() {
    let receivers = Receivers::start().await;
    let mut config = config("alerter_drain", CAP_PER_KEY, &receivers);
    let (proxy, direct) = clickhouse_behind_proxy(&mut config).await;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    config.http = HttpConfig::with_port(port);
    let process = spawn_process(&config, None);
    wait_ready(&format!("http://127.0.0.1:{port}")).await;

    proxy.set_down(true);
    produce_totals(&config.kafka, &[over_cap("k1")]).await;
    let log = wait_control(&config.kafka, "the block", |log| !log.is_empty()).await;
    // The alerter is told to stop while its audit row waits for ClickHouse, which comes back
    // right after.
    process.terminate();
    proxy.set_down(false);
    assert!(
        process.wait_exited(Duration::from_secs(60)).await,
        "the alerter did not exit cleanly"
    );
    wait_audited(
        &direct,
        &log[0].decision_id,
        "the block audited during the drain",
    )
    .await;
    testkit::drop_database(&direct).await.unwrap();
}
