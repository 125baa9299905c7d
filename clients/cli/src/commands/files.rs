//! `reef files ls | stat | get | put | rm | cp | mv`: the node's file store.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use reef_proto::{self as wire, files_client::FilesClient, write_file_request::Part};
use reef_sdk::{ConnectOptions, Error};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_stream::StreamExt as _;

/// Bytes per message of an upload.
const UPLOAD_CHUNK: usize = 256 << 10;

/// `reef files …`
#[derive(Debug, clap::Subcommand)]
pub enum FilesCommand {
    /// List a directory: `SIZE MODIFIED PATH`, directories ending in '/'.
    Ls {
        /// The directory (default: the root).
        #[arg(default_value = "")]
        path: String,
        /// Everything below it.
        #[arg(long, short)]
        recursive: bool,
    },
    /// A file's or directory's size and last change.
    Stat {
        /// The path.
        path: String,
    },
    /// Download a file to LOCAL, or to stdout without it (or with `-`).
    Get {
        /// The file in the store.
        path: String,
        /// Where it goes.
        local: Option<PathBuf>,
    },
    /// Upload LOCAL (or stdin for `-`) as PATH.
    Put {
        /// The local file.
        local: PathBuf,
        /// The file in the store.
        path: String,
        /// Refuse if PATH exists.
        #[arg(long)]
        if_absent: bool,
    },
    /// Delete a file, or a directory and everything under it with --recursive.
    Rm {
        /// The path.
        path: String,
        /// Delete a directory with its contents.
        #[arg(long, short)]
        recursive: bool,
    },
    /// Copy a file.
    Cp {
        /// From.
        from: String,
        /// To.
        to: String,
    },
    /// Move a file.
    Mv {
        /// From.
        from: String,
        /// To.
        to: String,
    },
}

fn print_info(info: &wire::FileInfo) {
    let modified = match info.modified_unix_ms {
        0 => "-".to_owned(),
        ms => format!("{}", ms / 1000),
    };
    let suffix = if info.dir && !info.path.ends_with('/') {
        "/"
    } else {
        ""
    };
    println!("{:>12} {modified:>11} {}{suffix}", info.size, info.path);
}

pub async fn run(command: FilesCommand, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let mut files = FilesClient::new(options.connect().await?)
        .max_decoding_message_size(2 * UPLOAD_CHUNK)
        .max_encoding_message_size(2 * UPLOAD_CHUNK);
    match command {
        FilesCommand::Ls { path, recursive } => {
            let mut page_token = String::new();
            loop {
                let page = files
                    .list(wire::ListFilesRequest {
                        path: path.clone(),
                        recursive,
                        limit: 0,
                        page_token,
                    })
                    .await
                    .map_err(Error::Rejected)?
                    .into_inner();
                page.entries.iter().for_each(print_info);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
        }
        FilesCommand::Stat { path } => {
            let info = files
                .stat(wire::StatFileRequest { path })
                .await
                .map_err(Error::Rejected)?
                .into_inner();
            print_info(&info);
        }
        FilesCommand::Get { path, local } => {
            let mut chunks = files
                .read(wire::ReadFileRequest {
                    path,
                    offset: 0,
                    length: 0,
                })
                .await
                .map_err(Error::Rejected)?
                .into_inner();
            let mut out: Box<dyn tokio::io::AsyncWrite + Unpin> = match &local {
                Some(local) if local.as_os_str() != "-" => Box::new(
                    tokio::fs::File::create(local)
                        .await
                        .with_context(|| format!("cannot create {}", local.display()))?,
                ),
                _ => Box::new(tokio::io::stdout()),
            };
            while let Some(chunk) = chunks.next().await {
                out.write_all(&chunk.map_err(Error::Rejected)?.data).await?;
            }
            out.flush().await?;
        }
        FilesCommand::Put {
            local,
            path,
            if_absent,
        } => {
            let mut input: Box<dyn tokio::io::AsyncRead + Unpin + Send> =
                match local.as_os_str() == "-" {
                    true => Box::new(tokio::io::stdin()),
                    false => Box::new(
                        tokio::fs::File::open(&local)
                            .await
                            .with_context(|| format!("cannot open {}", local.display()))?,
                    ),
                };
            let (parts, outbox) = tokio::sync::mpsc::channel(4);
            parts
                .send(wire::WriteFileRequest {
                    part: Some(Part::Start(wire::WriteFileStart { path, if_absent })),
                })
                .await?;
            // Read while the upload runs. The end of the stream completes the file, so
            // a read error must not just end it: a message without a part makes the
            // node refuse the write and keep nothing.
            let reader = tokio::spawn(async move {
                let mut buffer = vec![0u8; UPLOAD_CHUNK];
                loop {
                    let n = match input.read(&mut buffer).await {
                        Ok(n) => n,
                        Err(error) => {
                            let _ = parts.send(wire::WriteFileRequest { part: None }).await;
                            return Err(error);
                        }
                    };
                    if n == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                    let part = wire::WriteFileRequest {
                        part: Some(Part::Data(buffer[..n].to_vec().into())),
                    };
                    if parts.send(part).await.is_err() {
                        return Ok(());
                    }
                }
            });
            let written = files
                .write(tokio_stream::wrappers::ReceiverStream::new(outbox))
                .await;
            reader.await?.context("reading the local file")?;
            print_info(&written.map_err(Error::Rejected)?.into_inner());
        }
        FilesCommand::Rm { path, recursive } => {
            files
                .delete(wire::DeleteFileRequest { path, recursive })
                .await
                .map_err(Error::Rejected)?;
        }
        FilesCommand::Cp { from, to } => {
            let info = files
                .copy(wire::CopyFileRequest { from, to })
                .await
                .map_err(Error::Rejected)?
                .into_inner();
            print_info(&info);
        }
        FilesCommand::Mv { from, to } => {
            let info = files
                .rename(wire::RenameFileRequest { from, to })
                .await
                .map_err(Error::Rejected)?
                .into_inner();
            print_info(&info);
        }
    }
    Ok(ExitCode::SUCCESS)
}
