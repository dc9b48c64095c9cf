//! The sidecar reads its policy directory again while traffic flows: an edited admission rule
//! applies within moments, a directory that stops loading keeps the rules in force (and says so
//! in `quotaflow_decide_policy_reloads_total`), a fixed one applies again.

use std::time::Duration;

use support::{FixedSidecar, SUMMARIES_POLICY};

mod support;

/// The status of a `summaries` request declaring 50k input tokens.
async fn fifty_thousand_tokens(sidecar: &FixedSidecar) -> u16 {
    reqwest::Client::new()
        .get(format!("http://{}/v1/authz", sidecar.address))
        .header("x-quotaflow-api-key", "k1")
        .header("x-quotaflow-workflow", "summaries")
        .header("x-quotaflow-input-tokens", "50000")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn wait_for_status(sidecar: &FixedSidecar, wanted: u16, what: &str) {
    infra::testkit::eventually(Duration::from_secs(10), what, || async {
        (fifty_thousand_tokens(sidecar).await == wanted).then_some(())
    })
    .await;
}

async fn reloads(sidecar: &FixedSidecar, outcome: &str) -> u64 {
    let metrics = reqwest::get(format!("http://{}/metrics", sidecar.address))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find(|line| {
            line.starts_with("quotaflow_decide_policy_reloads_total")
                && line.contains(&format!("outcome=\"{outcome}\""))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_policy_applies_while_traffic_flows_and_a_broken_one_is_not_applied() {
    let sidecar = FixedSidecar::start(429, &[]).await;
    let file = sidecar.policies.join("summaries.yaml");
    assert_eq!(fifty_thousand_tokens(&sidecar).await, 429, "32k approved");

    std::fs::write(
        &file,
        SUMMARIES_POLICY.replace("max_input_tokens: 32000", "max_input_tokens: 64000"),
    )
    .unwrap();
    wait_for_status(&sidecar, 200, "the raised context size to apply").await;
    assert_eq!(reloads(&sidecar, "applied").await, 1);

    // A broken edit: the 64k rule stays in force.
    std::fs::write(&file, "id: [unclosed").unwrap();
    infra::testkit::eventually(Duration::from_secs(10), "the failed reload", || async {
        (reloads(&sidecar, "failed").await > 0).then_some(())
    })
    .await;
    assert_eq!(fifty_thousand_tokens(&sidecar).await, 200);

    // Fixed, back to 32k.
    std::fs::write(&file, SUMMARIES_POLICY).unwrap();
    wait_for_status(&sidecar, 429, "the 32k rule to apply again").await;
    sidecar.stop().await;
}
