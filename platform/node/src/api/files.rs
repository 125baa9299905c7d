//! `reef.v1.Files`: the node's file store over Apache OpenDAL (a local directory by
//! default, memory, or an S3-compatible object store). Paths are checked here, once, so nothing reaches OpenDAL that
//! could leave the store's root; OpenDAL errors become gRPC codes in [`status`].

use std::{path::PathBuf, pin::Pin, sync::Arc, time::UNIX_EPOCH};

use futures_util::{StreamExt as _, TryStreamExt as _};
use opendal::{ErrorKind, Metadata, Operator, services};
use reef_access::{Access, Action};
use reef_proto::{self as wire, files_server, write_file_request::Part};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::error::ApiError;
use crate::api::identity;

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

    fn check<T>(&self, request: &Request<T>, action: Action, path: &str) -> Result<(), ApiError> {
        identity::check_caller(&self.access, request, action, &format!("files:{path}"))
    }

    async fn info(&self, path: &str) -> Result<wire::FileInfo, ApiError> {
        let metadata = self.store.stat(path).await.map_err(store_error(path))?;
        Ok(file_info(path, &metadata))
    }

    /// Copies `from` to `to` by streaming, for stores that cannot copy natively.
    async fn stream_copy(&self, from: &str, to: &str) -> Result<(), ApiError> {
        let mut chunks = self
            .store
            .reader_with(from)
            .chunk(FILE_CHUNK)
            .await
            .map_err(store_error(from))?
            .into_bytes_stream(..)
            .await
            .map_err(store_error(from))?;
        let mut writer = self.store.writer(to).await.map_err(store_error(to))?;
        let copied = async {
            while let Some(chunk) = chunks.next().await {
                let chunk =
                    chunk.map_err(|e| ApiError::Internal(format!("reading {from}: {e}")))?;
                writer.write(chunk).await.map_err(store_error(to))?;
            }
            writer.close().await.map_err(store_error(to))
        }
        .await;
        if copied.is_err() {
            let _ = writer.abort().await;
        }
        copied.map(drop)
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

#[tonic::async_trait]
impl files_server::Files for FilesService {
    type ReadStream = ReadStream;

    async fn read(
        &self,
        request: Request<wire::ReadFileRequest>,
    ) -> Result<Response<ReadStream>, Status> {
        let path = file_path(&request.get_ref().path)?;
        self.check(&request, Action::Read, &path)?;
        let request = request.into_inner();
        let metadata = self.store.stat(&path).await.map_err(store_error(&path))?;
        if metadata.is_dir() {
            return Err(ApiError::Unfit(format!("{path:?} is a directory")).into());
        }
        let size = metadata.content_length();
        let start = request.offset.min(size);
        let end = match request.length {
            0 => size,
            length => start.saturating_add(length).min(size),
        };
        let chunks = self
            .store
            .reader_with(&path)
            .chunk(FILE_CHUNK)
            .await
            .map_err(store_error(&path))?
            .into_bytes_stream(start..end)
            .await
            .map_err(store_error(&path))?;
        let failed = path.clone();
        let chunks = chunks
            .map_err(move |e| {
                Status::from(ApiError::Internal(format!(
                    "reading {failed:?} failed: {e}"
                )))
            })
            // Never more than a chunk per message, whatever the store hands over.
            .map_ok(|bytes| {
                let pieces: Vec<_> = (0..bytes.len())
                    .step_by(FILE_CHUNK)
                    .map(|at| {
                        Ok(wire::FileChunk {
                            data: bytes.slice(at..(at + FILE_CHUNK).min(bytes.len())),
                        })
                    })
                    .collect();
                futures_util::stream::iter(pieces)
            })
            .try_flatten();
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn write(
        &self,
        request: Request<Streaming<wire::WriteFileRequest>>,
    ) -> Result<Response<wire::FileInfo>, Status> {
        let caller = identity::caller(&request);
        let mut parts = request.into_inner();
        let start = match parts.message().await.map_err(ApiError::Relayed)? {
            Some(wire::WriteFileRequest {
                part: Some(Part::Start(start)),
            }) => start,
            _ => {
                return Err(ApiError::BadRequest(
                    "the first message of a write must be `start`, naming the file".to_owned(),
                )
                .into());
            }
        };
        let path = file_path(&start.path)?;
        self.access
            .check(&caller, Action::Write, &format!("files:{path}"), &[])
            .map_err(ApiError::from)?;
        let capability = self.store.info().capability();
        if start.if_absent
            && !capability.write_with_if_not_exists
            && self.store.exists(&path).await.map_err(store_error(&path))?
        {
            return Err(ApiError::Exists(format!("{path:?} exists")).into());
        }
        let mut writer = self
            .store
            .writer_with(&path)
            .if_not_exists(start.if_absent && capability.write_with_if_not_exists)
            .await
            .map_err(store_error(&path))?;
        let mut written = 0u64;
        let outcome = async {
            while let Some(part) = parts.message().await.map_err(ApiError::Relayed)? {
                let Some(Part::Data(data)) = part.part else {
                    return Err(ApiError::BadRequest(
                        "after `start`, a write carries only `data`".to_owned(),
                    ));
                };
                written += data.len() as u64;
                if written > self.max_bytes {
                    return Err(ApiError::Exhausted(format!(
                        "{path:?} would be larger than this node's limit of {} bytes (--files-max-bytes)",
                        self.max_bytes
                    )));
                }
                writer.write(data).await.map_err(store_error(&path))?;
            }
            writer.close().await.map_err(store_error(&path))
        }
        .await;
        if let Err(refused) = outcome {
            // Nothing of a refused or broken write is kept.
            let _ = writer.abort().await;
            return Err(refused.into());
        }
        Ok(Response::new(self.info(&path).await?))
    }

    async fn stat(
        &self,
        request: Request<wire::StatFileRequest>,
    ) -> Result<Response<wire::FileInfo>, Status> {
        let path = confined(&request.get_ref().path)?;
        self.check(&request, Action::Read, &path)?;
        let path = match path.is_empty() {
            true => "/".to_owned(),
            false => path,
        };
        match self.info(&path).await {
            // A directory is found under its name with or without the '/'.
            Err(ApiError::Files { error, .. })
                if error.kind() == ErrorKind::NotFound && !path.ends_with('/') =>
            {
                let missing = || ApiError::Files {
                    path: path.clone(),
                    error,
                };
                self.info(&format!("{path}/")).await.map_err(|_| missing())
            }
            found => found,
        }
        .map(Response::new)
        .map_err(Status::from)
    }

    async fn list(
        &self,
        request: Request<wire::ListFilesRequest>,
    ) -> Result<Response<wire::ListFilesResponse>, Status> {
        let dir = dir_path(&request.get_ref().path)?;
        self.check(&request, Action::Read, &dir)?;
        let request = request.into_inner();
        let limit = match request.limit as usize {
            0 => MAX_PAGE,
            limit => limit.min(MAX_PAGE),
        };
        let mut lister = self
            .store
            .lister_with(&dir)
            .recursive(request.recursive)
            .await
            .map_err(store_error(&dir))?;
        // Paths as this service names them: without a leading '/'.
        let own = dir.trim_start_matches('/');
        let mut paths = Vec::new();
        while let Some(entry) = lister.next().await {
            let entry = entry.map_err(store_error(&dir))?;
            let path = entry.path().trim_start_matches('/');
            // The directory itself is listed too.
            if path == own {
                continue;
            }
            paths.push(path.to_owned());
            if paths.len() > MAX_LISTED {
                return Err(ApiError::Exhausted(format!(
                    "more than {MAX_LISTED} entries under {dir:?}: list a narrower directory"
                ))
                .into());
            }
        }
        paths.sort();
        let after = request.page_token;
        let mut page: Vec<_> = paths
            .into_iter()
            .filter(|path| after.is_empty() || *path > after)
            .take(limit + 1)
            .collect();
        let next_page_token = match page.len() > limit {
            true => {
                page.truncate(limit);
                page.last().cloned().unwrap_or_default()
            }
            false => String::new(),
        };
        let mut entries = Vec::with_capacity(page.len());
        for path in page {
            entries.push(self.info(&path).await?);
        }
        Ok(Response::new(wire::ListFilesResponse {
            entries,
            next_page_token,
        }))
    }

    async fn delete(
        &self,
        request: Request<wire::DeleteFileRequest>,
    ) -> Result<Response<wire::DeleteFileResponse>, Status> {
        let path = confined(&request.get_ref().path)?;
        self.check(&request, Action::Write, &path)?;
        if path.is_empty() {
            return Err(
                ApiError::BadRequest("the store's root cannot be deleted".to_owned()).into(),
            );
        }
        let recursive = request.get_ref().recursive;
        let dir = dir_path(&path)?;
        let is_dir = path.ends_with('/') || self.store.exists(&dir).await.unwrap_or(false);
        match (is_dir, recursive) {
            (true, false) => Err(ApiError::Unfit(format!(
                "{dir:?} is a directory: delete it with recursive"
            ))),
            (true, true) => self
                .store
                .delete_with(&dir)
                .recursive(true)
                .await
                .map_err(store_error(&dir)),
            (false, _) => self.store.delete(&path).await.map_err(store_error(&path)),
        }?;
        Ok(Response::new(wire::DeleteFileResponse {}))
    }

    async fn copy(
        &self,
        request: Request<wire::CopyFileRequest>,
    ) -> Result<Response<wire::FileInfo>, Status> {
        let from = file_path(&request.get_ref().from)?;
        let to = file_path(&request.get_ref().to)?;
        self.check(&request, Action::Read, &from)?;
        self.check(&request, Action::Write, &to)?;
        match self.store.info().capability().copy {
            true => self
                .store
                .copy(&from, &to)
                .await
                .map(drop)
                .map_err(store_error(&from))?,
            false => self.stream_copy(&from, &to).await?,
        }
        Ok(Response::new(self.info(&to).await?))
    }

    async fn rename(
        &self,
        request: Request<wire::RenameFileRequest>,
    ) -> Result<Response<wire::FileInfo>, Status> {
        let from = file_path(&request.get_ref().from)?;
        let to = file_path(&request.get_ref().to)?;
        self.check(&request, Action::Write, &from)?;
        self.check(&request, Action::Write, &to)?;
        match self.store.info().capability().rename {
            true => self
                .store
                .rename(&from, &to)
                .await
                .map_err(store_error(&from))?,
            false => {
                self.stream_copy(&from, &to).await?;
                self.store.delete(&from).await.map_err(store_error(&from))?;
            }
        }
        Ok(Response::new(self.info(&to).await?))
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
