//! `reef config check FILE`: reads and validates a project file without starting
//! anything, as `reef up` would before it starts a node.

use std::{path::PathBuf, process::ExitCode};

use crate::project::Project;

/// What `reef config` does.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Read and validate a project file; an error names the line and the field.
    Check {
        /// The project file (TOML).
        file: PathBuf,
    },
}

pub fn run(command: ConfigCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Check { file } => {
            let project = Project::load(Some(&file))?;
            println!(
                "{}: ok: project {:?}, {} containers, {} groups, {} rules",
                file.display(),
                project.project.name,
                project.containers().count(),
                project.groups().count(),
                project.rules().count()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
