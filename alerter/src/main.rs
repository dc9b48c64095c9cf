//! `quotaflow-alerter`: runs the alerter service (the default), checks a policy directory
//! (`policy check`), or writes an approval (`approve`).

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use rust_decimal::Decimal;

/// The quotaflow alerter.
#[derive(Debug, Parser)]
#[command(name = "quotaflow-alerter", version, about)]
struct Args {
    /// TOML config file; `QUOTAFLOW_*` environment variables override what it sets.
    #[arg(long, env = "QUOTAFLOW_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (the default).
    Run,
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Raise a policy's cap for one scope until a deadline (written to the approvals topic).
    Approve {
        /// Policy id.
        #[arg(long)]
        policy: String,
        /// Scope as `name=value` pairs separated by commas (`api_key_id=k1`); empty for a policy
        /// without group_by.
        #[arg(long, default_value = "")]
        scope: String,
        /// The new limit, in the policy's unit (exact decimal).
        #[arg(long)]
        limit: String,
        /// When the raise ends (RFC 3339, e.g. 2026-11-28T18:00:00Z).
        #[arg(long)]
        until: DateTime<Utc>,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Who approves (must be one of the policy's approvers).
        #[arg(long)]
        by: String,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Check a policy directory: every error as file:line:col: reason; exit 1 on errors.
    Check {
        /// The directory (default: the config's `alert.policies_dir`).
        dir: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let config: alerter::Config = infra::config::load(args.config.as_deref())?;
    match args.command.unwrap_or(Command::Run) {
        Command::Run => {
            infra::telemetry::init_tracing();
            let shutdown = infra::shutdown::on_signal();
            alerter::run(config, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy {
            command: PolicyCommand::Check { dir },
        } => {
            let dir = dir.unwrap_or(config.alert.policies_dir);
            let report = policy::check_dir(&dir);
            println!("{report}");
            Ok(if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Approve {
            policy,
            scope,
            limit,
            until,
            reason,
            by,
        } => {
            let scope = alerter::approve::parse_scope(&scope).map_err(anyhow::Error::msg)?;
            let limit: Decimal = limit
                .parse()
                .map_err(|error| anyhow::anyhow!("--limit {limit:?}: {error}"))?;
            let now = Utc::now();
            let approval = alerter::approve::build(&policy, scope, limit, until, &reason, &by, now);
            let policies = policy::PolicySet::load_dir(&config.alert.policies_dir)
                .map_err(|errors| anyhow::anyhow!("policies do not load: {errors}"))?;
            if let Err(reason) = alerter::approve::check(policies, &approval, now) {
                eprintln!("approval refused: {reason}");
                return Ok(ExitCode::FAILURE);
            }
            alerter::approve::publish(&config.kafka, &approval)
                .await
                .map_err(anyhow::Error::msg)?;
            println!(
                "approval {} written: {} for {} raised to {} until {}",
                approval.approval_id,
                approval.policy_id,
                alerter::engine::render_scope(&approval.scope),
                approval.new_limit,
                approval.valid_until.to_rfc3339()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
