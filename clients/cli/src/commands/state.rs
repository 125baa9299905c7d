//! `reef state get | put | del | ls | watch`: the node's synchronised state.

use std::process::ExitCode;

use reef_proto::{self as wire, watch_event::Kind};
use reef_sdk::{ConnectOptions, Error, state::StateClient};
use tokio_stream::StreamExt;

/// `reef state …`
#[derive(Debug, clap::Subcommand)]
pub enum StateCommand {
    /// Print a key's value (exit 1 if it does not exist); --verbose adds its revisions.
    Get {
        /// The namespace.
        namespace: String,
        /// The key.
        key: String,
        /// Print the revisions and owner too.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Write a key; prints the write's revision.
    Put {
        /// The namespace.
        namespace: String,
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Only if the key is at this revision (0: only if it does not exist).
        #[arg(long)]
        expect: Option<i64>,
        /// Bind the key to this container: it is deleted when the container is destroyed.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Delete a key, or every key under a prefix with --prefix.
    Del {
        /// The namespace.
        namespace: String,
        /// The key (or prefix).
        key: String,
        /// Delete every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Only if the key is at this revision.
        #[arg(long)]
        expect: Option<i64>,
    },
    /// List keys under a prefix as `KEY=VALUE` (every page).
    Ls {
        /// The namespace.
        namespace: String,
        /// Only keys starting with this.
        #[arg(default_value = "")]
        prefix: String,
        /// Print keys only.
        #[arg(long)]
        keys: bool,
    },
    /// Print changes as they happen: `REVISION put|del KEY[=VALUE]`.
    Watch {
        /// The namespace.
        namespace: String,
        /// Only keys starting with this.
        #[arg(default_value = "")]
        prefix: String,
        /// Start from this revision (default: changes from now on).
        #[arg(long, default_value_t = 0)]
        from: i64,
    },
}

fn print_value(kv: &wire::KeyValue, verbose: bool) {
    let value = String::from_utf8_lossy(&kv.value);
    match verbose {
        false => println!("{value}"),
        true => println!(
            "{value}\n  revision {} (created {}, version {}){}",
            kv.mod_revision,
            kv.create_revision,
            kv.version,
            match kv.owner.is_empty() {
                true => String::new(),
                false => format!(", bound to {}", kv.owner),
            }
        ),
    }
}

pub async fn run(command: StateCommand, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let client = StateClient::connect(&options).await?;
    let mut state = client.raw();
    match command {
        StateCommand::Get {
            namespace,
            key,
            verbose,
        } => {
            let found = state
                .get(wire::GetRequest {
                    namespace: namespace.clone(),
                    key: key.clone(),
                })
                .await
                .map_err(Error::Rejected)?
                .into_inner();
            match found.kv {
                Some(kv) => print_value(&kv, verbose),
                None => {
                    eprintln!(
                        "{key:?} does not exist in {namespace} (at revision {})",
                        found.revision
                    );
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        StateCommand::Put {
            namespace,
            key,
            value,
            expect,
            owner,
        } => {
            let written = state
                .put(wire::PutRequest {
                    namespace,
                    key,
                    value: value.into(),
                    expected_revision: expect,
                    owner: owner.unwrap_or_default(),
                })
                .await
                .map_err(Error::Rejected)?
                .into_inner();
            println!("revision {}", written.revision);
        }
        StateCommand::Del {
            namespace,
            key,
            prefix,
            expect,
        } => {
            let deleted = state
                .delete(wire::DeleteRequest {
                    namespace,
                    key,
                    prefix,
                    expected_revision: expect,
                })
                .await
                .map_err(Error::Rejected)?
                .into_inner();
            println!(
                "deleted {} (revision {})",
                deleted.deleted, deleted.revision
            );
        }
        StateCommand::Ls {
            namespace,
            prefix,
            keys,
        } => {
            let (entries, _) = client.list_all(&namespace, &prefix).await?;
            for (key, entry) in entries {
                match keys {
                    true => println!("{key}"),
                    false => println!("{key}={}", String::from_utf8_lossy(&entry.value)),
                }
            }
        }
        StateCommand::Watch {
            namespace,
            prefix,
            from,
        } => {
            let mut changes = state
                .watch(wire::WatchKeysRequest {
                    namespace,
                    prefix,
                    start_revision: from,
                })
                .await
                .map_err(Error::Rejected)?
                .into_inner();
            while let Some(response) = changes.next().await {
                let response = response.map_err(Error::Rejected)?;
                if response.events.is_empty() {
                    eprintln!("watching changes after revision {}", response.revision);
                }
                for event in response.events {
                    let kind = event.kind();
                    let Some(kv) = event.kv else { continue };
                    match kind {
                        Kind::Put => println!(
                            "{} put {}={}",
                            kv.mod_revision,
                            kv.key,
                            String::from_utf8_lossy(&kv.value)
                        ),
                        Kind::Delete => println!("{} del {}", kv.mod_revision, kv.key),
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
