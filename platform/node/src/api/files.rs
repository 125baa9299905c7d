//! `reef.v1.Files`: the node's file store over Apache OpenDAL (a local directory by
//! default, memory, or an S3-compatible object store). Paths are checked here, once, so nothing reaches OpenDAL that
//! could leave the store's root; OpenDAL errors become gRPC codes in `api/error.rs`.

use std::{path::PathBuf, pin::Pin, sync::Arc, time::UNIX_EPOCH};

use futures_util::{StreamExt as _, TryStreamExt as _};
use opendal::{ErrorKind, Metadata, Operator, services};
use reef_access::{Access, Action, Principal};
use reef_proto::{self as wire, files_server, write_file_request::Part};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::error::ApiError;
use crate::api::identity;

mod operations;

/// The largest chunk a read streams (and a write should send).
pub const FILE_CHUNK: usize = 256 << 10;
/// Longest path accepted, in bytes.
const MAX_PATH: usize = 1024;
/// Most entries one List page holds.
const MAX_PAGE: usize = 1000;
/// Most entries a List looks through to build a page (they are sorted first).
const MAX_LISTED: usize = 100_000;

/// Where the node keeps its files.
#[derive(Debug, Clone)]
pub enum FilesBackend {
    /// A local directory (created if missing). Writes go to a sibling directory first
    /// (`DIR.partial`) and are renamed into place when complete.
    Dir(PathBuf),
    /// Memory: gone when the node stops.
    Memory,
    /// An S3-compatible object store. Credentials come from the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`); without
    /// `AWS_ACCESS_KEY_ID`, requests go unsigned (a public bucket, a test server).
    S3 {
        /// The bucket.
        bucket: String,
        /// The prefix inside it that is the store's root (`/` for the whole bucket).
        root: String,
        /// The service's URL (default: AWS).
        endpoint: Option<String>,
        /// The signing region (default: detected).
        region: Option<String>,
    },
}

impl std::str::FromStr for FilesBackend {
    type Err = String;

    /// `memory`; `s3://BUCKET[/ROOT][?endpoint=URL&region=REGION]`; anything else is a
    /// directory.
    fn from_str(spec: &str) -> Result<Self, String> {
        if spec == "memory" {
            return Ok(Self::Memory);
        }
        let Some(rest) = spec.strip_prefix("s3://") else {
            return Ok(Self::Dir(spec.into()));
        };
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, root) = location.split_once('/').unwrap_or((location, ""));
        if bucket.is_empty() {
            return Err(format!("{spec:?}: name a bucket, s3://BUCKET[/ROOT]"));
        }
        let (mut endpoint, mut region) = (None, None);
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            match pair.split_once('=') {
                Some(("endpoint", url)) => endpoint = Some(url.to_owned()),
                Some(("region", name)) => region = Some(name.to_owned()),
                _ => {
                    return Err(format!(
                        "{spec:?}: unknown setting {pair:?} (endpoint=URL, region=NAME)"
                    ));
                }
            }
        }
        Ok(Self::S3 {
            bucket: bucket.to_owned(),
            root: format!("/{}", root.trim_matches('/')),
            endpoint,
            region,
        })
    }
}

/// Serves `reef.v1.Files`.
#[derive(Debug, Clone)]
pub struct FilesService {
    store: Operator,
    max_bytes: u64,
    access: Arc<Access>,
}

impl FilesService {
    /// Opens `backend`; a written file may hold at most `max_bytes`.
    pub fn open(
        backend: &FilesBackend,
        max_bytes: u64,
        access: Arc<Access>,
    ) -> Result<Self, std::io::Error> {
        let store = match backend {
            FilesBackend::Dir(root) => {
                let partial = PathBuf::from(format!("{}.partial", root.display()));
                std::fs::create_dir_all(root)?;
                std::fs::create_dir_all(&partial)?;
                let root = std::path::absolute(root)?;
                let partial = std::path::absolute(partial)?;
                Operator::new(
                    services::Fs::default()
                        .root(&root.to_string_lossy())
                        .atomic_write_dir(&partial.to_string_lossy()),
                )
            }
            FilesBackend::Memory => Operator::new(services::Memory::default()),
            FilesBackend::S3 {
                bucket,
                root,
                endpoint,
                region,
            } => {
                // OpenDAL's HTTP client (reqwest) takes the process's TLS provider:
                // ring, as the rest of the node. Both are installed once per process.
                let _ = rustls::crypto::ring::default_provider().install_default();
                opendal_http_transport_reqwest::install_default();
                // Credentials from the environment or none: never from a cloud
                // metadata service this node may not be on.
                let mut s3 = services::S3::default()
                    .bucket(bucket)
                    .root(root)
                    .disable_ec2_metadata();
                if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                    s3 = s3.skip_signature();
                }
                if let Some(endpoint) = endpoint {
                    s3 = s3.endpoint(endpoint);
                }
                if let Some(region) = region {
                    s3 = s3.region(region);
                }
                Operator::new(s3)
            }
        }
        .map_err(std::io::Error::other)?;
        Ok(Self {
            store,
            max_bytes,
            access,
        })
    }

    /// Checks `caller` doing `action` to the file or directory `path`.
    fn check(&self, caller: &Principal, action: Action, path: &str) -> Result<(), ApiError> {
        Ok(self
            .access
            .check(caller, action, &format!("files:{path}"), &[])?)
    }
}

/// A file's path inside the store: leading '/' dropped, no way out of the root.
fn file_path(raw: &str) -> Result<String, ApiError> {
    let path = confined(raw)?;
    if path.is_empty() || path.ends_with('/') {
        return Err(ApiError::BadRequest(format!(
            "{raw:?} names a directory, not a file"
        )));
    }
    Ok(path)
}

/// A directory's path inside the store, with its trailing '/' ("/" for the root).
fn dir_path(raw: &str) -> Result<String, ApiError> {
    let path = confined(raw)?;
    Ok(match path.is_empty() {
        true => "/".to_owned(),
        false if path.ends_with('/') => path,
        false => format!("{path}/"),
    })
}

/// Checks a path against the rules in `files.proto` and drops its leading '/'.
fn confined(raw: &str) -> Result<String, ApiError> {
    let invalid = |reason: &str| ApiError::BadRequest(format!("invalid path {raw:?}: {reason}"));
    if raw.len() > MAX_PATH {
        return Err(invalid("longer than 1024 bytes"));
    }
    if raw.contains(['\0', '\\']) {
        return Err(invalid("NUL and backslash are not allowed"));
    }
    let path = raw.trim_start_matches('/');
    let body = path.strip_suffix('/').unwrap_or(path);
    if !body.is_empty() {
        for segment in body.split('/') {
            match segment {
                "" => return Err(invalid("it has an empty segment ('//')")),
                "." | ".." => return Err(invalid("'.' and '..' segments are not allowed")),
                _ => {}
            }
        }
    }
    Ok(path.to_owned())
}

fn file_info(path: &str, metadata: &Metadata) -> wire::FileInfo {
    let modified = metadata
        .last_modified()
        .map(std::time::SystemTime::from)
        .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_millis() as u64);
    wire::FileInfo {
        path: path.to_owned(),
        dir: metadata.is_dir(),
        size: if metadata.is_dir() {
            0
        } else {
            metadata.content_length()
        },
        modified_unix_ms: modified,
    }
}

/// The store's error on `path`, for the one mapping in `api/error.rs`.
fn store_error(path: &str) -> impl FnOnce(opendal::Error) -> ApiError + '_ {
    move |error| ApiError::Files {
        path: path.to_owned(),
        error,
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<wire::FileChunk, Status>> + Send>>;

/// Each call reads the caller and the message and runs its operation
/// (`files/operations.rs`), whose `ApiError` becomes the call's status here.
#[tonic::async_trait]
impl files_server::Files for FilesService {
    type ReadStream = ReadStream;

    async fn read(
        &self,
        request: Request<wire::ReadFileRequest>,
    ) -> Result<Response<ReadStream>, Status> {
        let caller = identity::caller(&request);
        Ok(Response::new(
            self.read_file(&caller, request.into_inner()).await?,
        ))
    }

    async fn write(
        &self,
        request: Request<Streaming<wire::WriteFileRequest>>,
    ) -> Result<Response<wire::FileInfo>, Status> {
        let caller = identity::caller(&request);
        Ok(Response::new(
            self.write_file(&caller, request.into_inner()).await?,
        ))
    }

    async fn stat(
        &self,
        request: Request<wire::StatFileRequest>,
    ) -> Result<Response<wire::FileInfo>, Status> {
        let caller = identity::caller(&request);
        Ok(Response::new(
            self.stat_file(&caller, request.into_inner()).await?,
        ))
    }

    async fn list(
        &self,
        request: Request<wire::ListFilesRequest>,
    ) -> Result<Response<wire::ListFilesResponse>, Status> {
        let caller = identity::caller(&request);
        Ok(Response::new(
            self.list_files(&caller, request.into_inner()).await?,
        ))
    }

    async fn delete(
        &self,
        request: Request<wire::DeleteFileRequest>,
    ) -> Result<Response<wire::DeleteFileResponse>, Status> {
        let caller = identity::caller(&request);
        self.delete_file(&caller, request.into_inner()).await?;
        Ok(Response::new(wire::DeleteFileResponse {}))
    }

    async fn copy(
        &self,
        request: Request<wire::CopyFileRequest>,
    ) -> Result<Response<wire::FileInfo>, Status> {
        let caller = identity::caller(&request);
        Ok(Response::new(
            self.copy_file(&caller, request.into_inner()).await?,
        ))
    }

    async fn rename(
        &self,
        request: Request<wire::RenameFileRequest>,
    ) -> Result<Response<wire::FileInfo>, Status> {
        let caller = identity::caller(&request);
        Ok(Response::new(
            self.rename_file(&caller, request.into_inner()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_named_by_one_string() {
        assert!(matches!("memory".parse(), Ok(FilesBackend::Memory)));
        assert!(matches!("/srv/files".parse(), Ok(FilesBackend::Dir(_))));
        let Ok(FilesBackend::S3 {
            bucket,
            root,
            endpoint,
            region,
        }) = "s3://photos/node-1/?endpoint=http://127.0.0.1:9000&region=eu-west-1".parse()
        else {
            panic!("an s3 spec");
        };
        assert_eq!((bucket.as_str(), root.as_str()), ("photos", "/node-1"));
        assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(region.as_deref(), Some("eu-west-1"));
        assert!("s3://".parse::<FilesBackend>().is_err());
        assert!("s3://b?colour=blue".parse::<FilesBackend>().is_err());
    }

    #[test]
    fn paths_stay_inside_the_root() {
        assert_eq!(file_path("/a/b.txt").unwrap(), "a/b.txt");
        assert_eq!(dir_path("").unwrap(), "/");
        assert_eq!(dir_path("/docs").unwrap(), "docs/");
        for bad in ["../etc/passwd", "a/../../b", "a//b", "./a", "a\\b", "a\0b"] {
            assert_eq!(
                Status::from(file_path(bad).unwrap_err()).code(),
                tonic::Code::InvalidArgument,
                "{bad:?}"
            );
        }
        assert!(file_path("dir/").is_err(), "a directory is not a file");
        assert!(confined(&"a".repeat(MAX_PATH + 1)).is_err());
    }
}
