//! `reef policy default`: the built-in policy a node without `--policy` enforces.

use std::process::ExitCode;

/// What `reef policy` does.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Print the built-in policy: what each kind of caller may do on a node started
    /// without --policy. It is a policy file: edit a copy and pass it to reefd --policy.
    Default,
}

pub fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Default => print!("{}", reef_access::DEFAULT_POLICY),
    }
    Ok(ExitCode::SUCCESS)
}
