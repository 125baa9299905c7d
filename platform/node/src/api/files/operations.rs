//! The Files calls themselves, on paths already checked: what `files.rs`'s shims run.

use super::*;

impl FilesService {
    pub(super) async fn read_file(
        &self,
        caller: &Principal,
        request: wire::ReadFileRequest,
    ) -> Result<ReadStream, ApiError> {
        let path = file_path(&request.path)?;
        self.check(caller, Action::Read, &path)?;
        let metadata = self.store.stat(&path).await.map_err(store_error(&path))?;
        if metadata.is_dir() {
            return Err(ApiError::Unfit(format!("{path:?} is a directory")));
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
        Ok(Box::pin(chunks))
    }

    /// Writes a file from its parts: `start`, then data. Nothing of a refused or
    /// broken write is kept.
    pub(super) async fn write_file(
        &self,
        caller: &Principal,
        mut parts: Streaming<wire::WriteFileRequest>,
    ) -> Result<wire::FileInfo, ApiError> {
        let start = match parts.message().await.map_err(ApiError::Relayed)? {
            Some(wire::WriteFileRequest {
                part: Some(Part::Start(start)),
            }) => start,
            _ => {
                return Err(ApiError::BadRequest(
                    "the first message of a write must be `start`, naming the file".to_owned(),
                ));
            }
        };
        let path = file_path(&start.path)?;
        self.check(caller, Action::Write, &path)?;
        let capability = self.store.info().capability();
        if start.if_absent
            && !capability.write_with_if_not_exists
            && self.store.exists(&path).await.map_err(store_error(&path))?
        {
            return Err(ApiError::Exists(format!("{path:?} exists")));
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
            return Err(refused);
        }
        self.info(&path).await
    }

    pub(super) async fn stat_file(
        &self,
        caller: &Principal,
        request: wire::StatFileRequest,
    ) -> Result<wire::FileInfo, ApiError> {
        let path = confined(&request.path)?;
        self.check(caller, Action::Read, &path)?;
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
    }

    /// One page of a directory's entries, sorted by path.
    pub(super) async fn list_files(
        &self,
        caller: &Principal,
        request: wire::ListFilesRequest,
    ) -> Result<wire::ListFilesResponse, ApiError> {
        let dir = dir_path(&request.path)?;
        self.check(caller, Action::Read, &dir)?;
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
                )));
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
        Ok(wire::ListFilesResponse {
            entries,
            next_page_token,
        })
    }

    pub(super) async fn delete_file(
        &self,
        caller: &Principal,
        request: wire::DeleteFileRequest,
    ) -> Result<(), ApiError> {
        let path = confined(&request.path)?;
        self.check(caller, Action::Write, &path)?;
        if path.is_empty() {
            return Err(ApiError::BadRequest(
                "the store's root cannot be deleted".to_owned(),
            ));
        }
        let recursive = request.recursive;
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
        }
    }

    pub(super) async fn copy_file(
        &self,
        caller: &Principal,
        request: wire::CopyFileRequest,
    ) -> Result<wire::FileInfo, ApiError> {
        let from = file_path(&request.from)?;
        let to = file_path(&request.to)?;
        self.check(caller, Action::Read, &from)?;
        self.check(caller, Action::Write, &to)?;
        match self.store.info().capability().copy {
            true => self
                .store
                .copy(&from, &to)
                .await
                .map(drop)
                .map_err(store_error(&from))?,
            false => self.stream_copy(&from, &to).await?,
        }
        self.info(&to).await
    }

    pub(super) async fn rename_file(
        &self,
        caller: &Principal,
        request: wire::RenameFileRequest,
    ) -> Result<wire::FileInfo, ApiError> {
        let from = file_path(&request.from)?;
        let to = file_path(&request.to)?;
        self.check(caller, Action::Write, &from)?;
        self.check(caller, Action::Write, &to)?;
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
        self.info(&to).await
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
