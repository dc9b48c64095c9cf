//! `quotaflow-alerter`: runs the alerter service (the default), checks a policy directory
//! (`policy check`), writes a signed approval (`approve`) or makes an approver's key pair
//! (`keygen`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Raise a policy's cap for one scope until a deadline (signed, written to the approvals topic).
    Approve(alerter::approve::ApproveArgs),
    /// Make an approver's Ed25519 key pair: the private key to a new file, the public key printed.
    Keygen(alerter::approve::KeygenArgs),
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
    if let Some(Command::Keygen(keygen)) = &args.command {
        // No config needed: a key pair is made offline.
        return Ok(print_keygen(keygen));
    }
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
        Command::Keygen(keygen) => Ok(print_keygen(&keygen)),
        Command::Approve(args) => match alerter::approve::run(&config, &args).await? {
            alerter::approve::Outcome::Refused(reason) => {
                eprintln!("approval refused: {reason}");
                Ok(ExitCode::FAILURE)
            }
            alerter::approve::Outcome::Written(approval) => {
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
        },
    }
}

/// `keygen`: the key pair, and the line to put in the policy.
fn print_keygen(args: &alerter::approve::KeygenArgs) -> ExitCode {
    match alerter::approve::keygen_report(args) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("keygen failed: {error}");
            ExitCode::FAILURE
        }
    }
}
