//! Shared by the `quotactl` tests: a policy directory from YAML text, and the binary run with a
//! config file naming the test's ClickHouse database, Kafka topics and policy directory.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use infra::testkit;

/// A fresh directory holding `text` as its one policy file.
pub fn policies_dir(text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(testkit::unique_name("quotactl_policies"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("p.yaml"), text).unwrap();
    dir
}

/// Runs the `quotactl` binary with `config` (as a TOML file) and `args`; no `QUOTAFLOW_*`
/// variable of the test's environment reaches it.
pub fn quotactl(config: &alerter::Config, args: &[&str]) -> std::process::Output {
    let path = std::env::temp_dir().join(format!("{}.toml", testkit::unique_name("quotactl")));
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(toml_config(config).as_bytes()).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_quotactl"));
    for (name, _) in std::env::vars() {
        if name.starts_with("QUOTAFLOW_") {
            command.env_remove(name);
        }
    }
    command
        .arg("--config")
        .arg(&path)
        .args(args)
        .output()
        .unwrap()
}

fn toml_config(config: &alerter::Config) -> String {
    format!(
        "[clickhouse]\nurl = {:?}\ndatabase = {:?}\nuser = {:?}\n[kafka]\nbrokers = {:?}\n[kafka.topics]\napprovals = {:?}\n[alert]\npolicies_dir = {:?}\n",
        config.clickhouse.url,
        config.clickhouse.database,
        config.clickhouse.user,
        config.kafka.brokers,
        config.kafka.topics.approvals,
        config.alert.policies_dir.display().to_string()
    )
}
