//! Supervisor.Logs: a container's log file, from an offset or its tail, followed as it grows.

use super::*;

impl SupervisorService {
    pub(super) async fn log_stream(
        &self,
        caller: &Caller,
        request: wire::LogsRequest,
    ) -> Result<LogStream, ApiError> {
        self.check_inspect(&caller.principal, &request.alias)?;
        if let Some(mut node) = self.node_below(&request.alias).await? {
            let chunks = node
                .logs(to_node_below(caller, request)?)
                .await
                .map_err(ApiError::Relayed)?
                .into_inner();
            return Ok(Box::pin(chunks));
        }
        let path = self.supervision.log_path(&request.alias).ok_or_else(|| {
            ApiError::Unknown(format!(
                "no supervised container is called {:?}",
                request.alias
            ))
        })?;
        let tail = match request.tail_bytes {
            0 => DEFAULT_LOG_TAIL,
            bytes => bytes,
        };
        let (first, mut offset) = match reef_supervision::tail(&path, tail) {
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0),
            Err(error) => {
                return Err(ApiError::Internal(format!("cannot read the log: {error}")));
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let supervision = self.supervision.clone();
        let alias = request.alias;
        tokio::spawn(async move {
            if !first.is_empty()
                && tx
                    .send(Ok(wire::LogChunk { data: first.into() }))
                    .await
                    .is_err()
            {
                return;
            }
            while request.follow && supervision.log_path(&alias).is_some() {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(LOG_POLL) => {}
                }
                let Ok((bytes, next)) = reef_supervision::read_from(&path, offset, LOG_CHUNK)
                else {
                    continue;
                };
                offset = next;
                if !bytes.is_empty()
                    && tx
                        .send(Ok(wire::LogChunk { data: bytes.into() }))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
