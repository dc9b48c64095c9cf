//! Keeps `docker-compose.yml` honest without a Docker engine: it parses the file and checks it against
//! the code. Every `QUOTAFLOW_*` variable a service sets is loaded into that service's real `Config`
//! (`deny_unknown_fields` rejects a key that is not a field), the published ports match the listen
//! addresses, and the Dockerfile builds the binaries compose runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_yaml_ng::Value;

/// A service built from this repository.
struct OurService {
    /// Its name in docker-compose.yml.
    name: &'static str,
    /// The crate that declares its binary (and whose `Config` it reads).
    krate: &'static str,
    /// The binary compose runs.
    binary: &'static str,
    /// The variable holding the address its `/readyz` listens on.
    listen_variable: &'static str,
}

const OUR_SERVICES: [OurService; 5] = [
    OurService {
        name: "ingest",
        krate: "ingest",
        binary: "quotaflow-ingest",
        listen_variable: "QUOTAFLOW_HTTP__LISTEN",
    },
    OurService {
        name: "archiver",
        krate: "archiver",
        binary: "quotaflow-archiver",
        listen_variable: "QUOTAFLOW_ARCHIVE__METRICS_LISTEN",
    },
    OurService {
        name: "aggregator",
        krate: "aggregator",
        binary: "quotaflow-aggregator",
        listen_variable: "QUOTAFLOW_HTTP__LISTEN",
    },
    OurService {
        name: "alerter",
        krate: "alerter",
        binary: "quotaflow-alerter",
        listen_variable: "QUOTAFLOW_HTTP__LISTEN",
    },
    OurService {
        name: "decide",
        krate: "decide",
        binary: "quotaflow-decide",
        listen_variable: "QUOTAFLOW_HTTP__LISTEN",
    },
];

/// `QUOTAFLOW_*` variables that `infra::config::load` skips because they configure logging, not `Config`.
const LOGGING_VARIABLES: [&str; 2] = ["QUOTAFLOW_LOG", "QUOTAFLOW_LOG_FORMAT"];

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read_repo_file(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|error| panic!("{relative}: {error}"))
}

fn compose() -> Value {
    serde_yaml_ng::from_str(&read_repo_file("docker-compose.yml"))
        .expect("docker-compose.yml is YAML")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
}

fn string(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

/// A service's `environment:` as written (the map form, which this file uses throughout).
fn environment(service: &Value) -> BTreeMap<String, String> {
    let Some(map) = service["environment"].as_mapping() else {
        panic!("environment must be a map: {:?}", service["environment"]);
    };
    map.iter()
        .map(|(key, value)| (string(key), string(value)))
        .collect()
}

/// Replaces each `${NAME}` / `${NAME:?message}` / `${NAME:-default}` with `dummy-NAME`, as compose
/// would with the operator's value.
fn interpolate_with_dummies(value: &str) -> String {
    let mut output = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        output.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("unterminated ${") + start;
        let reference = &rest[start + 2..end];
        let name = reference.split([':', '-', '?']).next().unwrap_or_default();
        output.push_str(&format!("dummy-{name}"));
        rest = &rest[end + 1..];
    }
    output.push_str(rest);
    output
}

/// The service's `QUOTAFLOW_*` variables with secrets replaced by dummies.
fn quotaflow_environment(service: &Value) -> BTreeMap<String, String> {
    environment(service)
        .into_iter()
        .filter(|(key, _)| key.starts_with(infra::config::ENV_PREFIX))
        .map(|(key, value)| (key, interpolate_with_dummies(&value)))
        .collect()
}

/// Loads `C` through the real loader with exactly `variables` in the environment, and returns it as
/// JSON so fields can be looked up by the variable's path.
// Jail's closure must return `figment::Result`, whose error type is figment's, not ours.
#[allow(clippy::result_large_err)]
fn load_with_only<C>(variables: &BTreeMap<String, String>) -> Result<(C, serde_json::Value), String>
where
    C: DeserializeOwned + Serialize + Default,
{
    let mut loaded = None;
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        for (key, value) in variables {
            jail.set_env(key, value);
        }
        loaded = Some(infra::config::load::<C>(None).map_err(|error| error.to_string()));
        Ok(())
    });
    let config = loaded.expect("the jail ran")?;
    let json = serde_json::to_value(&config).map_err(|error| error.to_string())?;
    Ok((config, json))
}

/// `QUOTAFLOW_KAFKA__BROKERS` → the JSON value at `kafka.brokers`.
fn field_for_variable<'a>(
    config: &'a serde_json::Value,
    variable: &str,
) -> Option<&'a serde_json::Value> {
    let path = variable
        .strip_prefix(infra::config::ENV_PREFIX)?
        .to_lowercase();
    path.split("__")
        .try_fold(config, |value, segment| value.get(segment))
}

/// Loads the named service's `Config` from `variables`; secret fields (passwords, webhooks, routing
/// keys) are returned separately, by variable, because a `Secret` serializes redacted.
fn load_service_config(
    name: &str,
    variables: &BTreeMap<String, String>,
) -> Result<(serde_json::Value, BTreeMap<String, String>), String> {
    fn with_secrets<C>(
        variables: &BTreeMap<String, String>,
        secrets: impl Fn(&C) -> Vec<(&'static str, String)>,
    ) -> Result<(serde_json::Value, BTreeMap<String, String>), String>
    where
        C: DeserializeOwned + Serialize + Default,
    {
        load_with_only::<C>(variables).map(|(config, json)| {
            let secrets = secrets(&config)
                .into_iter()
                .map(|(variable, value)| (variable.to_string(), value))
                .collect();
            (json, secrets)
        })
    }
    const PASSWORD: &str = "QUOTAFLOW_CLICKHOUSE__PASSWORD";
    match name {
        "ingest" => with_secrets(variables, |config: &ingest::Config| {
            vec![(PASSWORD, config.clickhouse.password.expose().to_string())]
        }),
        "archiver" => with_secrets(variables, |config: &quotaflow_archiver::Config| {
            vec![(PASSWORD, config.clickhouse.password.expose().to_string())]
        }),
        "aggregator" => with_secrets(variables, |config: &aggregator::Config| {
            vec![(PASSWORD, config.clickhouse.password.expose().to_string())]
        }),
        "alerter" => with_secrets(variables, |config: &alerter::Config| {
            let expose = |secret: &Option<infra::secret::Secret>| {
                secret
                    .as_ref()
                    .map(|s| s.expose().to_string())
                    .unwrap_or_default()
            };
            vec![
                (PASSWORD, config.clickhouse.password.expose().to_string()),
                (
                    "QUOTAFLOW_NOTIFY__SLACK__FALLBACK_WEBHOOK",
                    expose(&config.notify.slack.fallback_webhook),
                ),
                (
                    "QUOTAFLOW_NOTIFY__PAGERDUTY__FALLBACK_ROUTING_KEY",
                    expose(&config.notify.pagerduty.fallback_routing_key),
                ),
            ]
        }),
        "decide" => with_secrets(variables, |config: &quotaflow_decide::Config| {
            vec![(
                "QUOTAFLOW_GATEWAY__KAFKA__SECURITY__PASSWORD",
                config.gateway.kafka.security.password.expose().to_string(),
            )]
        }),
        other => panic!("no Config for service {other}"),
    }
}

#[test]
fn compose_defines_the_seven_services() {
    let compose = compose();
    let mut names: Vec<String> = compose["services"]
        .as_mapping()
        .expect("services is a map")
        .keys()
        .map(string)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "aggregator",
            "alerter",
            "archiver",
            "clickhouse",
            "decide",
            "ingest",
            "kafka"
        ]
    );
}

#[test]
fn kafka_and_clickhouse_use_the_official_images() {
    let compose = compose();
    assert_eq!(
        string(&service(&compose, "kafka")["image"]),
        "apache/kafka:4.1.1"
    );
    assert_eq!(
        string(&service(&compose, "clickhouse")["image"]),
        "clickhouse/clickhouse-server:25.8"
    );
}

#[test]
fn kafka_is_a_single_kraft_node_that_never_creates_topics_by_itself() {
    let kafka = environment(service(&compose(), "kafka"));
    for key in [
        "KAFKA_NODE_ID",
        "KAFKA_LISTENERS",
        "KAFKA_ADVERTISED_LISTENERS",
        "KAFKA_CONTROLLER_LISTENER_NAMES",
        "KAFKA_CONTROLLER_QUORUM_VOTERS",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
    ] {
        assert!(kafka.contains_key(key), "kafka lacks {key}");
    }
    assert_eq!(kafka["KAFKA_PROCESS_ROLES"], "broker,controller");
    assert_eq!(kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"], "1");
    assert_eq!(kafka["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"], "1");
    assert_eq!(kafka["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"], "1");
    assert_eq!(kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"], "false");
    // The services reach the broker at the address they are configured with.
    assert!(kafka["KAFKA_ADVERTISED_LISTENERS"].contains("PLAINTEXT://kafka:9092"));
}

#[test]
fn our_services_build_from_the_dockerfile_are_healthchecked_and_wait_for_healthy_dependencies() {
    let compose = compose();
    for OurService {
        name,
        binary,
        listen_variable,
        ..
    } in OUR_SERVICES
    {
        let service = service(&compose, name);
        assert_eq!(string(&service["build"]["context"]), ".", "{name}");
        assert_eq!(
            string(&service["build"]["dockerfile"]),
            "Dockerfile",
            "{name}"
        );
        assert_eq!(string(&service["entrypoint"][0]), binary, "{name}");

        let listen = environment(service)[listen_variable].clone();
        let port = listen.rsplit(':').next().unwrap();
        let healthcheck: Vec<String> = service["healthcheck"]["test"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} has no healthcheck"))
            .iter()
            .map(string)
            .collect();
        let readyz = format!("http://127.0.0.1:{port}/readyz");
        assert!(
            healthcheck.contains(&readyz),
            "{name} healthcheck {healthcheck:?} should probe {readyz}"
        );

        // The sidecar reads Kafka only.
        let dependencies: &[&str] = if name == "decide" {
            &["kafka"]
        } else {
            &["kafka", "clickhouse"]
        };
        for dependency in dependencies {
            assert_eq!(
                string(&service["depends_on"][dependency]["condition"]),
                "service_healthy",
                "{name} must wait for {dependency} to be healthy"
            );
        }
    }
    for dependency in ["kafka", "clickhouse"] {
        assert!(
            service(&compose, dependency)["healthcheck"]["test"].is_sequence(),
            "{dependency} needs a healthcheck for service_healthy to mean anything"
        );
    }
}

#[test]
fn ports_are_published_on_localhost_only_and_ours_match_the_listen_address() {
    let compose = compose();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        let name = string(name);
        for port in service["ports"]
            .as_sequence()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let port = string(port);
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name} publishes {port} beyond localhost"
            );
        }
    }
    for OurService {
        name,
        listen_variable,
        ..
    } in OUR_SERVICES
    {
        let service = service(&compose, name);
        let listen: std::net::SocketAddr = environment(service)[listen_variable].parse().unwrap();
        assert!(
            listen.ip().is_unspecified(),
            "{name} must listen on all interfaces inside its container"
        );
        let container_ports: Vec<u16> = service["ports"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} publishes no port"))
            .iter()
            .map(|port| string(port).rsplit(':').next().unwrap().parse().unwrap())
            .collect();
        assert!(
            container_ports.contains(&listen.port()),
            "{name} listens on {listen} but publishes {container_ports:?}"
        );
    }
}

#[test]
fn every_quotaflow_variable_is_a_field_of_the_service_config_with_that_value() {
    let compose = compose();
    for OurService { name, .. } in OUR_SERVICES {
        let variables = quotaflow_environment(service(&compose, name));
        let (config, secrets) =
            load_service_config(name, &variables).unwrap_or_else(|error| panic!("{name}: {error}"));

        for (variable, value) in &variables {
            if LOGGING_VARIABLES.contains(&variable.as_str()) {
                continue;
            }
            if let Some(secret) = secrets.get(variable) {
                assert_eq!(secret, value, "{name}: {variable}");
                continue;
            }
            let field = field_for_variable(&config, variable).unwrap_or_else(|| {
                panic!("{name}: {variable} names no field of the loaded config")
            });
            let loaded = field
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| field.to_string());
            assert_eq!(&loaded, value, "{name}: {variable}");
        }
        if name == "decide" {
            // The sidecar reads Kafka only (under `gateway`), never ClickHouse.
            assert_eq!(config["gateway"]["kafka"]["brokers"], "kafka:9092");
            assert!(config.get("clickhouse").is_none());
            continue;
        }
        assert_eq!(config["kafka"]["brokers"], "kafka:9092", "{name}");
        assert_eq!(
            config["clickhouse"]["url"], "http://clickhouse:8123",
            "{name}"
        );
        assert_eq!(
            secrets["QUOTAFLOW_CLICKHOUSE__PASSWORD"], "dummy-CLICKHOUSE_PASSWORD",
            "{name}"
        );
    }
}

#[test]
fn a_misspelled_variable_is_rejected() {
    let compose = compose();
    let mut variables = quotaflow_environment(service(&compose, "ingest"));
    assert!(load_service_config("ingest", &variables).is_ok());

    variables.insert(
        "QUOTAFLOW_KAFKA__BROKRES".to_string(),
        "kafka:9092".to_string(),
    );
    let error = load_service_config("ingest", &variables).unwrap_err();
    assert!(error.contains("brokres"), "{error}");

    // One underscore instead of two is a top-level key `http_listen`, not `http.listen`.
    variables.remove("QUOTAFLOW_KAFKA__BROKRES");
    variables.insert(
        "QUOTAFLOW_HTTP_LISTEN".to_string(),
        "0.0.0.0:8080".to_string(),
    );
    let error = load_service_config("ingest", &variables).unwrap_err();
    assert!(error.contains("http_listen"), "{error}");
}

#[test]
fn secrets_are_references_to_the_environment_never_values() {
    let compose = compose();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        for (key, value) in environment(service) {
            let is_secret = ["PASSWORD", "SECRET", "TOKEN", "WEBHOOK", "ROUTING_KEY"]
                .iter()
                .any(|marker| key.contains(marker));
            if is_secret {
                assert!(
                    value.starts_with("${") && value.ends_with('}'),
                    "{}: {key} must be a ${{VAR}} reference, not a value",
                    string(name)
                );
            }
        }
    }
}

#[test]
fn clickhouse_mounts_the_read_only_analyst_user() {
    let compose = compose();
    let volumes: Vec<String> = service(&compose, "clickhouse")["volumes"]
        .as_sequence()
        .expect("clickhouse has volumes")
        .iter()
        .map(string)
        .collect();
    let users_file = "deploy/clickhouse/users.d/analyst.xml";
    assert!(
        volumes
            .iter()
            .any(|volume| volume
                .starts_with(&format!("./{users_file}:/etc/clickhouse-server/users.d/"))),
        "{volumes:?}"
    );
    let analyst = read_repo_file(users_file);
    assert!(
        analyst.contains("<readonly>1</readonly>"),
        "analyst must be read-only, settings included (tests/analyst_limits.rs checks its limits)"
    );
    assert!(
        analyst.contains("from_env="),
        "the analyst password must come from the environment"
    );
    for named_volume in ["kafka-data", "clickhouse-data"] {
        assert!(
            compose["volumes"].get(named_volume).is_some(),
            "volume {named_volume} is not declared"
        );
    }
}

#[test]
fn the_dockerfile_builds_the_binaries_compose_runs() {
    let dockerfile = read_repo_file("Dockerfile");
    assert!(dockerfile.contains("FROM rust:1-bookworm AS builder"));
    assert!(dockerfile.contains(
        "cargo build --release --locked -p ingest -p quotaflow-archiver -p aggregator -p alerter -p quotaflow-decide"
    ));
    assert!(dockerfile.contains("FROM debian:bookworm-slim"));
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("USER "));
    assert!(
        user.is_some_and(|user| user.trim() != "root"),
        "the image must run as a non-root user"
    );

    let compose = compose();
    for OurService {
        name,
        krate,
        binary,
        ..
    } in OUR_SERVICES
    {
        assert_eq!(string(&service(&compose, name)["entrypoint"][0]), binary);
        assert!(
            dockerfile.contains(&format!("target/release/{binary}")),
            "Dockerfile does not build {binary}"
        );
        assert!(
            dockerfile.contains(&format!("/out/{binary}")),
            "Dockerfile does not ship {binary}"
        );
        let manifest: toml::Table = read_repo_file(&format!("{krate}/Cargo.toml"))
            .parse()
            .unwrap();
        let declares_binary = manifest["bin"]
            .as_array()
            .is_some_and(|bins| bins.iter().any(|bin| bin["name"].as_str() == Some(binary)));
        assert!(
            declares_binary,
            "{krate}/Cargo.toml declares no [[bin]] {binary}"
        );
    }
}

#[test]
fn the_commented_secure_kafka_example_loads_into_every_service() {
    // The `# QUOTAFLOW_KAFKA__...: value` lines under ingest, as an operator would uncomment them.
    let example: BTreeMap<String, String> = read_repo_file("docker-compose.yml")
        .lines()
        .filter_map(|line| line.trim().strip_prefix("# QUOTAFLOW_KAFKA__"))
        .map(|rest| {
            let (key, value) = rest.split_once(": ").expect("`# NAME: value`");
            (
                format!("QUOTAFLOW_KAFKA__{key}"),
                interpolate_with_dummies(value),
            )
        })
        .collect();
    assert!(
        example.contains_key("QUOTAFLOW_KAFKA__SECURITY__PASSWORD"),
        "the example lost its password line: {example:?}"
    );
    let compose = compose();
    for OurService { name, .. } in OUR_SERVICES {
        // The sidecar's Kafka settings sit under `gateway` (its compose comment says so).
        let (prefix, kafka): (&str, fn(&serde_json::Value) -> &serde_json::Value) =
            if name == "decide" {
                ("QUOTAFLOW_GATEWAY__KAFKA__", |config| {
                    &config["gateway"]["kafka"]
                })
            } else {
                ("QUOTAFLOW_KAFKA__", |config| &config["kafka"])
            };
        let mut variables = quotaflow_environment(service(&compose, name));
        variables.extend(example.iter().map(|(variable, value)| {
            (
                variable.replacen("QUOTAFLOW_KAFKA__", prefix, 1),
                value.clone(),
            )
        }));
        let (config, _) = load_service_config(name, &variables)
            .unwrap_or_else(|error| panic!("{name} with the secure example: {error}"));
        let kafka = kafka(&config);
        assert_eq!(kafka["security"]["protocol"], "sasl_ssl", "{name}");
        assert_eq!(kafka["security"]["password"], "<redacted>", "{name}");
        assert_eq!(
            kafka["topics"]["replication"]["usage"]["factor"], 3,
            "{name}"
        );
    }
}
