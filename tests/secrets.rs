//! No secret leaves a loaded config: every service's config is loaded through the real loader with
//! every secret-bearing setting set from the environment (Kafka SASL password, secret-looking
//! `kafka.properties`, ClickHouse password, ingest API tokens, Slack webhooks, PagerDuty routing
//! keys, the demo's ingest token), then printed with `Debug` and serialized as JSON and TOML; none
//! of the outputs may contain a secret value. Each secret is also checked to have been loaded, so
//! the test cannot pass because a variable was silently ignored.
//!
//! Services: ingest and the archiver (`ingest::Config`), the aggregator, the alerter (whose config
//! `quotactl` and the demo read too), the gateway library (`gateway::GatewayConfig`) and the demo's
//! command line.

use std::collections::BTreeMap;
use std::fmt::Debug;

use clap::Parser;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Secrets every service with Kafka and ClickHouse takes.
const KAFKA_PASSWORD: &str = "kafka-sasl-pw-71c3";
const PROPERTY_KEY_PASSWORD: &str = "ssl-key-pw-0e5a";
const PROPERTY_JAAS_PASSWORD: &str = "jaas-pw-93bd";
const PROPERTY_OAUTH_SECRET: &str = "oauth-client-secret-5f21";
const CLICKHOUSE_PASSWORD: &str = "0042";
/// Ingest's producer tokens.
const TOKEN_EU: &str = "tok-eu-c0ffee";
const TOKEN_US: &str = "tok-us-beef42";
/// The alerter's notification secrets.
const SLACK_WEBHOOK: &str = "https://hooks.slack.com/services/T000/B000/slackSECRETa1";
const SLACK_FALLBACK: &str = "https://hooks.slack.com/services/T000/B001/slackSECRETb2";
const PAGERDUTY_KEY: &str = "pdRoutingKeySECRET0c";
const PAGERDUTY_FALLBACK: &str = "pdFallbackKeySECRET1d";
/// The demo's ingest token.
const DEMO_TOKEN: &str = "demo-token-SECRET-77";

fn kafka_variables() -> Vec<(&'static str, String)> {
    vec![
        ("QUOTAFLOW_KAFKA__SECURITY__PROTOCOL", "sasl_ssl".to_owned()),
        (
            "QUOTAFLOW_KAFKA__SECURITY__USERNAME",
            "quotaflow".to_owned(),
        ),
        (
            "QUOTAFLOW_KAFKA__SECURITY__PASSWORD",
            KAFKA_PASSWORD.to_owned(),
        ),
        (
            "QUOTAFLOW_KAFKA__PROPERTIES",
            format!(
                r#"{{"ssl.key.password"="{PROPERTY_KEY_PASSWORD}","sasl.jaas.config"="x password={PROPERTY_JAAS_PASSWORD}","sasl.oauthbearer.client.secret"="{PROPERTY_OAUTH_SECRET}","client.rack"="rack-1"}}"#
            ),
        ),
    ]
}

fn clickhouse_variables() -> Vec<(&'static str, String)> {
    vec![(
        "QUOTAFLOW_CLICKHOUSE__PASSWORD",
        CLICKHOUSE_PASSWORD.to_owned(),
    )]
}

const KAFKA_SECRETS: [&str; 4] = [
    KAFKA_PASSWORD,
    PROPERTY_KEY_PASSWORD,
    PROPERTY_JAAS_PASSWORD,
    PROPERTY_OAUTH_SECRET,
];

/// Loads `C` with exactly `variables` in the environment.
// Jail's closure must return `figment::Result`, whose error type is figment's, not ours.
#[allow(clippy::result_large_err)]
fn load_with<C>(variables: &[(&str, String)]) -> C
where
    C: DeserializeOwned + Serialize + Default,
{
    let mut loaded = None;
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        for (key, value) in variables {
            jail.set_env(key, value);
        }
        loaded = Some(infra::config::load::<C>(None));
        Ok(())
    });
    loaded
        .expect("the jail ran")
        .unwrap_or_else(|error| panic!("config does not load: {error}"))
}

/// Debug, JSON and TOML of `config`; none may contain any of `secrets`.
fn assert_redacted<C: Debug + Serialize>(service: &str, config: &C, secrets: &[&str]) {
    let outputs = [
        ("Debug", format!("{config:?}")),
        ("pretty Debug", format!("{config:#?}")),
        ("JSON", serde_json::to_string(config).unwrap()),
        ("TOML", toml::to_string(config).unwrap()),
    ];
    for (format, output) in outputs {
        for secret in secrets {
            assert!(
                !output.contains(secret),
                "{service}: {format} shows the secret {secret:?}:\n{output}"
            );
        }
        assert!(
            output.contains("rack-1"),
            "{service}: {format} lost a plain property"
        );
    }
}

/// The loaded Kafka secrets, in clear, to prove they were loaded.
fn exposed_kafka_secrets(kafka: &infra::config::KafkaConfig) -> Vec<String> {
    let properties = kafka.properties.expose();
    vec![
        kafka.security.password.expose().to_owned(),
        properties["ssl.key.password"].clone(),
        properties["sasl.jaas.config"].clone(),
        properties["sasl.oauthbearer.client.secret"].clone(),
    ]
}

fn assert_kafka_secrets_loaded(kafka: &infra::config::KafkaConfig) {
    let exposed = exposed_kafka_secrets(kafka);
    assert_eq!(exposed[0], KAFKA_PASSWORD);
    assert_eq!(exposed[1], PROPERTY_KEY_PASSWORD);
    assert!(exposed[2].contains(PROPERTY_JAAS_PASSWORD));
    assert_eq!(exposed[3], PROPERTY_OAUTH_SECRET);
}

#[test]
fn ingest_and_archiver_config_never_shows_a_secret() {
    let mut variables = kafka_variables();
    variables.extend(clickhouse_variables());
    variables.push(("QUOTAFLOW_API__TOKENS__GATEWAY_EU", TOKEN_EU.to_owned()));
    variables.push(("QUOTAFLOW_API__TOKENS__GATEWAY_US", TOKEN_US.to_owned()));
    let config: ingest::Config = load_with(&variables);

    assert_kafka_secrets_loaded(&config.kafka);
    assert_eq!(config.clickhouse.password.expose(), CLICKHOUSE_PASSWORD);
    let tokens: BTreeMap<&str, &str> = config
        .api
        .tokens
        .iter()
        .map(|(producer, token)| (producer.as_str(), token.expose()))
        .collect();
    assert_eq!(
        tokens,
        BTreeMap::from([("gateway_eu", TOKEN_EU), ("gateway_us", TOKEN_US)])
    );
    let mut secrets = KAFKA_SECRETS.to_vec();
    secrets.extend([CLICKHOUSE_PASSWORD, TOKEN_EU, TOKEN_US]);
    assert_redacted("ingest", &config, &secrets);
}

#[test]
fn aggregator_config_never_shows_a_secret() {
    let mut variables = kafka_variables();
    variables.extend(clickhouse_variables());
    let config: aggregator::Config = load_with(&variables);

    assert_kafka_secrets_loaded(&config.kafka);
    assert_eq!(config.clickhouse.password.expose(), CLICKHOUSE_PASSWORD);
    let mut secrets = KAFKA_SECRETS.to_vec();
    secrets.push(CLICKHOUSE_PASSWORD);
    assert_redacted("aggregator", &config, &secrets);
}

#[test]
fn alerter_config_never_shows_a_secret() {
    // quotactl and the demo load this same config.
    let mut variables = kafka_variables();
    variables.extend(clickhouse_variables());
    variables.extend([
        (
            "QUOTAFLOW_NOTIFY__SLACK__WEBHOOKS__SEARCH",
            SLACK_WEBHOOK.to_owned(),
        ),
        (
            "QUOTAFLOW_NOTIFY__SLACK__FALLBACK_WEBHOOK",
            SLACK_FALLBACK.to_owned(),
        ),
        (
            "QUOTAFLOW_NOTIFY__PAGERDUTY__ROUTING_KEYS__SEARCH",
            PAGERDUTY_KEY.to_owned(),
        ),
        (
            "QUOTAFLOW_NOTIFY__PAGERDUTY__FALLBACK_ROUTING_KEY",
            PAGERDUTY_FALLBACK.to_owned(),
        ),
    ]);
    let config: alerter::Config = load_with(&variables);

    assert_kafka_secrets_loaded(&config.kafka);
    assert_eq!(config.clickhouse.password.expose(), CLICKHOUSE_PASSWORD);
    let notify = &config.notify;
    assert_eq!(
        notify.slack_webhook(Some("search")).unwrap().expose(),
        SLACK_WEBHOOK
    );
    assert_eq!(notify.slack_webhook(None).unwrap().expose(), SLACK_FALLBACK);
    assert_eq!(
        notify.routing_key("search").unwrap().expose(),
        PAGERDUTY_KEY
    );
    assert_eq!(
        notify.routing_key("other").unwrap().expose(),
        PAGERDUTY_FALLBACK
    );
    let mut secrets = KAFKA_SECRETS.to_vec();
    // The webhooks' hosts are not secret; their paths are.
    secrets.extend([
        CLICKHOUSE_PASSWORD,
        "slackSECRETa1",
        "slackSECRETb2",
        PAGERDUTY_KEY,
        PAGERDUTY_FALLBACK,
    ]);
    assert_redacted("alerter", &config, &secrets);
}

#[test]
fn gateway_config_never_shows_a_secret() {
    let config: gateway::GatewayConfig = load_with(&kafka_variables());

    assert_kafka_secrets_loaded(&config.kafka);
    assert_redacted("gateway", &config, &KAFKA_SECRETS);
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
fn demo_arguments_never_show_the_token() {
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("DEMO_INGEST_TOKEN", DEMO_TOKEN);
        let args = demo::run::Args::try_parse_from(["quotaflow-demo"]).unwrap();
        assert_eq!(args.token.expose(), DEMO_TOKEN);
        for output in [format!("{args:?}"), format!("{args:#?}")] {
            assert!(!output.contains(DEMO_TOKEN), "{output}");
        }
        Ok(())
    });
}
