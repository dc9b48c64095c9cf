//! `quotactl`: where scopes stand against their caps, what the alerter decided, policy checks and
//! approvals. Reads the alerter's config (`--config`, `QUOTAFLOW_*`).

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// The quotaflow operator CLI.
#[derive(Debug, Parser)]
#[command(name = "quotactl", version, about)]
struct Args {
    /// The alerter's TOML config (ClickHouse, Kafka, policy directory); `QUOTAFLOW_*` variables
    /// override it.
    #[arg(long, env = "QUOTAFLOW_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every policy scope in its current window, by percent of cap, with burn rate and projected
    /// time to cap.
    Status {
        /// Only this policy.
        #[arg(long)]
        policy: Option<String>,
    },
    /// The remaining quota of the scopes a request names (`api_key_id=k1 team=search`; none:
    /// every scope): spent, limit, remaining, reset, the decision and the raise in force (the
    /// decision sidecar's `GET /v1/scopes`, from ClickHouse).
    Scopes {
        /// `dimension=value` pairs the scopes must have.
        #[arg(value_parser = parse_pair)]
        filter: Vec<(String, String)>,
    },
    /// Decisions in force (default) or their history.
    Decisions {
        /// Every decision, newest first.
        #[arg(long)]
        history: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Alerts raised, newest first, with their state: open, resolved (a hard cap lifted),
    /// ended (its window ended) or notice (a one-off finding).
    Alerts {
        /// Only alerts still open.
        #[arg(long)]
        open: bool,
        /// Only this policy.
        #[arg(long)]
        policy: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// A policy's review (issue 17): spend against cap per scope, alerts by kind, blocks, and
    /// each raise approved in the period with what was spent under it. The period is the
    /// policy's review cadence (weekly by default) unless `--days` is given.
    Review {
        /// The policy.
        policy: String,
        /// Days back from now (default: the policy's `review.cadence`).
        #[arg(long)]
        days: Option<u32>,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// What a policy directory would have alerted, blocked and stopped on the history in
    /// ClickHouse (event time, enforcement simulated); `--compare` checks it against the
    /// decisions the live alerter made in the same range.
    Replay {
        /// The policy directory to evaluate (default: the config's).
        #[arg(long)]
        policies: Option<PathBuf>,
        /// Start of the range, RFC 3339 (default: 24 hours before --to).
        #[arg(long)]
        from: Option<DateTime<Utc>>,
        /// End of the range, exclusive, RFC 3339 (default: now).
        #[arg(long)]
        to: Option<DateTime<Utc>>,
        /// Compare with the live alerter's decisions in the range; exit 1 if they differ.
        #[arg(long)]
        compare: bool,
        /// Leave events the replayed decisions refuse out of the totals (a what-if for policies
        /// that were not live), instead of counting every event as it happened.
        #[arg(long)]
        exclude_refused: bool,
    },
    /// Raise a policy's cap for one scope until a deadline, signed with the approver's key (see
    /// `quotaflow-alerter approve`).
    Approve(alerter::approve::ApproveArgs),
    /// Make an approver's Ed25519 key pair (see `quotaflow-alerter keygen`).
    Keygen(alerter::approve::KeygenArgs),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Check a policy directory (default: the config's); exit 1 on errors.
    Check { dir: Option<PathBuf> },
}

#[tokio::main]
// Long by design: one arm per subcommand, each a few lines handing off to the library; splitting
// the dispatch would only move the match elsewhere.
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if let Command::Keygen(keygen) = &args.command {
        // No config needed: a key pair is made offline.
        println!("{}", alerter::approve::keygen_report(keygen)?);
        return Ok(ExitCode::SUCCESS);
    }
    let config: alerter::Config = infra::config::load(args.config.as_deref())?;
    let client = infra::clickhouse::client(&config.clickhouse);
    match args.command {
        Command::Status { policy } => {
            let policies = policy::PolicySet::load_dir(&config.alert.policies_dir)
                .map_err(|errors| anyhow::anyhow!("policies do not load: {errors}"))?;
            let statuses =
                quotactl::status(&client, &policies, policy.as_deref(), Utc::now()).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&statuses)?);
            } else {
                print!("{}", quotactl::status_table(&statuses));
            }
        }
        Command::Scopes { filter } => {
            let policies = policy::PolicySet::load_dir(&config.alert.policies_dir)
                .map_err(|errors| anyhow::anyhow!("policies do not load: {errors}"))?;
            let filter = filter.into_iter().collect();
            let quotas = quotactl::scopes::scopes(&client, &policies, &filter, Utc::now()).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&quotas)?);
            } else {
                print!("{}", quotactl::scopes::table(&quotas));
            }
        }
        Command::Decisions { history, limit } => {
            let decisions = quotactl::decisions(&client, history, limit).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&decisions)?);
            } else {
                print!("{}", quotactl::decisions_table(&decisions));
            }
        }
        Command::Alerts {
            open,
            policy,
            limit,
        } => {
            let alerts =
                quotactl::alerts(&client, policy.as_deref(), open, limit, Utc::now()).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&alerts)?);
            } else {
                print!("{}", quotactl::alerts_table(&alerts));
            }
        }
        Command::Review { policy, days } => {
            let policies = policy::PolicySet::load_dir(&config.alert.policies_dir)
                .map_err(|errors| anyhow::anyhow!("policies do not load: {errors}"))?;
            let review =
                quotactl::review::review(&client, &policies, &policy, days, Utc::now()).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&review)?);
            } else {
                print!("{}", quotactl::review::text(&review));
            }
        }
        Command::Policy {
            command: PolicyCommand::Check { dir },
        } => {
            let report = policy::check_dir(dir.unwrap_or(config.alert.policies_dir));
            if args.json {
                let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
                println!(
                    "{}",
                    serde_json::json!({"ok": report.is_ok(), "policies": report.policies, "files": report.files, "errors": errors})
                );
            } else {
                println!("{report}");
            }
            if !report.is_ok() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Replay {
            policies,
            from,
            to,
            compare,
            exclude_refused,
        } => {
            let dir = policies.unwrap_or_else(|| config.alert.policies_dir.clone());
            let policies = policy::PolicySet::load_dir(&dir).map_err(|errors| {
                anyhow::anyhow!("policies in {} do not load: {errors}", dir.display())
            })?;
            let catalog = config.alert.load_catalog().map_err(anyhow::Error::msg)?;
            let (from, to) = quotactl::replay::range(from, to, Utc::now());
            let approvals = quotactl::replay::approvals(&client, from, to).await?;
            let replayer = quotactl::replay::Replayer::new(
                std::sync::Arc::new(policies),
                std::sync::Arc::new(catalog),
                config.alert.anomaly.clone(),
                approvals,
            )?;
            let replayer = if exclude_refused {
                replayer.excluding_refused()
            } else {
                replayer
            };
            let total = quotactl::replay::count_events(&client, from, to).await?;
            let progress = if args.json {
                ProgressBar::hidden()
            } else {
                ProgressBar::new(total)
            };
            progress.set_style(ProgressStyle::with_template(
                "{spinner} replaying [{bar:40}] {pos}/{len} events {per_sec} eta {eta}",
            )?);
            let report = quotactl::replay::run(&client, replayer, from, to, &|read| {
                progress.set_position(read)
            })
            .await?;
            progress.finish_and_clear();
            let comparison = if compare {
                let live = quotactl::replay::live_decisions(&client, from, to).await?;
                Some(quotactl::replay::compare(&live, &report.decisions))
            } else {
                None
            };
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"report": report, "comparison": comparison})
                    )?
                );
            } else {
                print!(
                    "{}",
                    quotactl::replay::report_text(&report, comparison.as_ref())
                );
            }
            if comparison.is_some_and(|comparison| !comparison.reproduced()) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Keygen(_) => {} // handled before the config is loaded
        Command::Approve(approve) => match alerter::approve::run(&config, &approve).await? {
            alerter::approve::Outcome::Refused(reason) => {
                eprintln!("approval refused: {reason}");
                return Ok(ExitCode::FAILURE);
            }
            alerter::approve::Outcome::Written(approval) => {
                if args.json {
                    println!("{}", serde_json::to_string(&approval)?);
                } else {
                    println!("approval {} written", approval.approval_id);
                }
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// `dimension=value`.
fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not dimension=value (api_key_id=k1)"))
}
