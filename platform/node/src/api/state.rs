//! `reef.v1.State`: wire types in, domain types to the backend, errors to gRPC codes here
//! and nowhere else.

use std::{future::Future, pin::Pin, sync::Arc};

use reef_access::{Access, Action};
use reef_proto::{self as wire, state_server::State};
use reef_state::{
    Backend, Batch, EventKind, KeyValue, ListQuery, MAX_PAGE_KEYS, Namespace, Op, Outcome, Owners,
    Revision, StateError, StateOp, StateOperations, Txn, TxnOutcome,
};
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status};

use crate::api::{error::ApiError, identity};

/// Trailing metadata on OUT_OF_RANGE for a compacted revision: the oldest revision kept.
pub const FIRST_REVISION_METADATA: &str = "reef-first-revision";
/// Trailing metadata on ABORTED for a failed compare-and-set: the key's revision.
pub const CURRENT_REVISION_METADATA: &str = "reef-current-revision";

/// The State service over a backend.
#[derive(Clone)]
pub struct StateService {
    backend: Arc<dyn Backend>,
    owners: Owners,
    access: Arc<Access>,
    operations: Arc<StateOperations>,
}

impl std::fmt::Debug for StateService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateService").finish_non_exhaustive()
    }
}

impl StateService {
    /// Serves `backend`; bound keys must name a container that `owners` knows; callers
    /// read and write the namespaces `access` lets them; every call is counted in
    /// `operations`.
    pub fn new(
        backend: Arc<dyn Backend>,
        owners: Owners,
        access: Arc<Access>,
        operations: Arc<StateOperations>,
    ) -> Self {
        Self {
            backend,
            owners,
            access,
            operations,
        }
    }

    /// Runs `call` and counts it as `op`.
    async fn measured<T: Settled>(
        &self,
        op: StateOp,
        call: impl Future<Output = Result<Response<T>, ApiError>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = call.await.map_err(Status::from);
        let outcome = match &result {
            Ok(response) if response.get_ref().conflicted() => Outcome::Conflict,
            Ok(_) => Outcome::Ok,
            Err(status) => outcome_of(status.code()),
        };
        self.operations.record(op, outcome, started.elapsed());
        result
    }

    /// Checks the caller of `request` doing `action` in `namespace`.
    fn check<T>(
        &self,
        request: &Request<T>,
        action: Action,
        namespace: &str,
    ) -> Result<(), ApiError> {
        identity::check_caller(&self.access, request, action, namespace)
    }

    async fn write(&self, txn: Txn) -> Result<TxnOutcome, ApiError> {
        txn.validate()?;
        for owner in txn.owners() {
            self.owners.check(owner)?;
        }
        Ok(self.backend.txn(txn).await?)
    }
}

/// The outcome a gRPC status code stands for, as the metrics count it.
fn outcome_of(code: Code) -> Outcome {
    match code {
        Code::Ok => Outcome::Ok,
        Code::Aborted => Outcome::Conflict,
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::ResourceExhausted => Outcome::Rejected,
        _ => Outcome::Failed,
    }
}

fn namespace(name: &str) -> Result<Namespace, ApiError> {
    Ok(Namespace::new(name)?)
}

/// A wire revision: non-negative.
fn revision(value: i64, what: &str) -> Result<Revision, ApiError> {
    u64::try_from(value)
        .map_err(|_| ApiError::BadRequest(format!("{what} cannot be negative (got {value})")))
}

/// An empty wire string is "not set".
fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

fn wire_kv(kv: KeyValue) -> wire::KeyValue {
    wire::KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision as i64,
        mod_revision: kv.mod_revision as i64,
        version: kv.version as i64,
        owner: kv.owner.unwrap_or_default(),
    }
}

fn absent(key: &str) -> wire::KeyValue {
    wire::KeyValue {
        key: key.to_owned(),
        ..Default::default()
    }
}

fn wire_batch(batch: &Batch) -> wire::WatchKeysResponse {
    wire::WatchKeysResponse {
        events: batch
            .events
            .iter()
            .map(|event| wire::WatchEvent {
                kind: match event.kind {
                    EventKind::Put => wire::watch_event::Kind::Put,
                    EventKind::Delete => wire::watch_event::Kind::Delete,
                } as i32,
                kv: Some(wire_kv(event.kv.clone())),
            })
            .collect(),
        revision: batch.revision as i64,
    }
}

/// A single-key compare-and-set that did not hold, as ABORTED.
fn conflict(key: String, expected: Revision, current: Vec<Option<KeyValue>>) -> ApiError {
    let actual = current
        .into_iter()
        .next()
        .flatten()
        .map_or(0, |kv| kv.mod_revision);
    ApiError::from(StateError::Conflict {
        key,
        expected,
        actual,
    })
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<wire::WatchKeysResponse, Status>> + Send>>;

/// The calls themselves; [`State`] below counts them.
impl StateService {
    async fn serve_get(
        &self,
        request: Request<wire::GetRequest>,
    ) -> Result<Response<wire::GetResponse>, ApiError> {
        self.check(&request, Action::Read, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = namespace(&request.namespace)?;
        reef_state::validate_key(&request.key)?;
        let (kv, revision) = self.backend.get(&namespace, &request.key).await?;
        Ok(Response::new(wire::GetResponse {
            kv: kv.map(wire_kv),
            revision: revision as i64,
        }))
    }

    async fn serve_put(
        &self,
        request: Request<wire::PutRequest>,
    ) -> Result<Response<wire::PutResponse>, ApiError> {
        self.check(&request, Action::Write, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let mut txn = Txn::new(
            namespace(&request.namespace)?,
            vec![Op::Put {
                key: request.key.clone(),
                value: request.value,
                owner: non_empty(request.owner),
            }],
        );
        let expected = match request.expected_revision {
            Some(expected) => Some(revision(expected, "expected_revision")?),
            None => None,
        };
        if let Some(expected) = expected {
            txn = txn.when(request.key.clone(), expected);
        }
        match self.write(txn).await? {
            TxnOutcome::Committed {
                revision,
                mut previous,
                ..
            } => Ok(Response::new(wire::PutResponse {
                revision: revision as i64,
                previous: previous.pop().flatten().map(wire_kv),
            })),
            TxnOutcome::Conflict { current, .. } => {
                Err(conflict(request.key, expected.unwrap_or_default(), current))
            }
        }
    }

    async fn serve_delete(
        &self,
        request: Request<wire::DeleteRequest>,
    ) -> Result<Response<wire::DeleteResponse>, ApiError> {
        self.check(&request, Action::Write, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = namespace(&request.namespace)?;
        let expected = match request.expected_revision {
            Some(_) if request.prefix => {
                return Err(ApiError::BadRequest(
                    "expected_revision applies to one key, not to a prefix".to_owned(),
                ));
            }
            Some(expected) => Some(revision(expected, "expected_revision")?),
            None => None,
        };
        let op = match request.prefix {
            true => Op::DeletePrefix {
                prefix: request.key.clone(),
            },
            false => Op::Delete {
                key: request.key.clone(),
            },
        };
        let mut txn = Txn::new(namespace, vec![op]);
        if let Some(expected) = expected {
            txn = txn.when(request.key.clone(), expected);
        }
        match self.write(txn).await? {
            TxnOutcome::Committed {
                revision, deleted, ..
            } => Ok(Response::new(wire::DeleteResponse {
                revision: revision as i64,
                deleted: deleted as i64,
            })),
            TxnOutcome::Conflict { current, .. } => {
                Err(conflict(request.key, expected.unwrap_or_default(), current))
            }
        }
    }

    async fn serve_list(
        &self,
        request: Request<wire::ListKeysRequest>,
    ) -> Result<Response<wire::ListKeysResponse>, ApiError> {
        self.check(&request, Action::Read, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = namespace(&request.namespace)?;
        reef_state::validate_prefix(&request.prefix)?;
        let limit = match request.limit as usize {
            0 => MAX_PAGE_KEYS,
            limit => limit.min(MAX_PAGE_KEYS),
        };
        let after = non_empty(request.page_token);
        if let Some(after) = &after
            && !after.starts_with(&request.prefix)
        {
            return Err(ApiError::BadRequest(format!(
                "page_token {after:?} is not under the prefix {:?}: pass the next_page_token of the previous page",
                request.prefix
            )));
        }
        let page = self
            .backend
            .list(
                &namespace,
                ListQuery {
                    prefix: request.prefix,
                    after,
                    limit,
                    keys_only: request.keys_only,
                },
            )
            .await?;
        Ok(Response::new(wire::ListKeysResponse {
            kvs: page.kvs.into_iter().map(wire_kv).collect(),
            next_page_token: page.next.unwrap_or_default(),
            revision: page.revision as i64,
        }))
    }

    async fn serve_txn(
        &self,
        request: Request<wire::TxnRequest>,
    ) -> Result<Response<wire::TxnResponse>, ApiError> {
        self.check(&request, Action::Write, &request.get_ref().namespace)?;
        if !request.get_ref().compares.is_empty() {
            // A failed compare answers with the current values.
            self.check(&request, Action::Read, &request.get_ref().namespace)?;
        }
        let request = request.into_inner();
        let mut txn = Txn::new(namespace(&request.namespace)?, Vec::new());
        for compare in request.compares {
            let expected = revision(compare.mod_revision, "a compare's mod_revision")?;
            txn = txn.when(compare.key, expected);
        }
        for (index, op) in request.ops.into_iter().enumerate() {
            txn.ops.push(match op.op {
                Some(wire::txn_op::Op::Put(put)) => Op::Put {
                    key: put.key,
                    value: put.value,
                    owner: non_empty(put.owner),
                },
                Some(wire::txn_op::Op::Delete(delete)) if delete.prefix => {
                    Op::DeletePrefix { prefix: delete.key }
                }
                Some(wire::txn_op::Op::Delete(delete)) => Op::Delete { key: delete.key },
                None => {
                    return Err(ApiError::BadRequest(format!(
                        "operation {index} is neither a put nor a delete"
                    )));
                }
            });
        }
        let keys: Vec<String> = txn.compares.iter().map(|c| c.key.clone()).collect();
        Ok(Response::new(match self.write(txn).await? {
            TxnOutcome::Committed { revision, .. } => wire::TxnResponse {
                succeeded: true,
                revision: revision as i64,
                current: Vec::new(),
            },
            TxnOutcome::Conflict { revision, current } => wire::TxnResponse {
                succeeded: false,
                revision: revision as i64,
                current: current
                    .into_iter()
                    .zip(&keys)
                    .map(|(kv, key)| kv.map_or_else(|| absent(key), wire_kv))
                    .collect(),
            },
        }))
    }

    async fn serve_watch(
        &self,
        request: Request<wire::WatchKeysRequest>,
    ) -> Result<Response<WatchStream>, ApiError> {
        self.check(&request, Action::Read, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = namespace(&request.namespace)?;
        reef_state::validate_prefix(&request.prefix)?;
        let start = match revision(request.start_revision, "start_revision")? {
            0 => None,
            start => Some(start),
        };
        let watching = self
            .backend
            .watch(&namespace, &request.prefix, start)
            .await?;
        let established = wire::WatchKeysResponse {
            events: Vec::new(),
            revision: watching.revision as i64,
        };
        // Counted as open for as long as the stream lives.
        let open = self.operations.watch_opened();
        let events = watching.events.map(move |batch| {
            let _open = &open;
            match batch {
                Ok(batch) => Ok(wire_batch(&batch)),
                Err(error) => Err(ApiError::from(error).into()),
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::once(Ok(established)).chain(events),
        )))
    }

    async fn serve_compact(
        &self,
        request: Request<wire::CompactRequest>,
    ) -> Result<Response<wire::CompactResponse>, ApiError> {
        // Compaction drops history in every namespace.
        self.check(&request, Action::Write, "(all namespaces)")?;
        let target = revision(request.into_inner().revision, "revision")?;
        let first = self.backend.compact(target).await?;
        Ok(Response::new(wire::CompactResponse {
            first_revision: first as i64,
        }))
    }
}

#[tonic::async_trait]
impl State for StateService {
    async fn get(
        &self,
        request: Request<wire::GetRequest>,
    ) -> Result<Response<wire::GetResponse>, Status> {
        self.measured(StateOp::Get, self.serve_get(request)).await
    }

    async fn put(
        &self,
        request: Request<wire::PutRequest>,
    ) -> Result<Response<wire::PutResponse>, Status> {
        self.measured(StateOp::Put, self.serve_put(request)).await
    }

    async fn delete(
        &self,
        request: Request<wire::DeleteRequest>,
    ) -> Result<Response<wire::DeleteResponse>, Status> {
        self.measured(StateOp::Delete, self.serve_delete(request))
            .await
    }

    async fn list(
        &self,
        request: Request<wire::ListKeysRequest>,
    ) -> Result<Response<wire::ListKeysResponse>, Status> {
        self.measured(StateOp::List, self.serve_list(request)).await
    }

    async fn txn(
        &self,
        request: Request<wire::TxnRequest>,
    ) -> Result<Response<wire::TxnResponse>, Status> {
        self.measured(StateOp::Txn, self.serve_txn(request)).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<wire::WatchKeysRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.measured(StateOp::Watch, self.serve_watch(request))
            .await
    }

    async fn compact(
        &self,
        request: Request<wire::CompactRequest>,
    ) -> Result<Response<wire::CompactResponse>, Status> {
        self.measured(StateOp::Compact, self.serve_compact(request))
            .await
    }
}

/// Whether a successful call is still a conflict: a transaction whose compares failed.
trait Settled {
    fn conflicted(&self) -> bool {
        false
    }
}

impl Settled for wire::TxnResponse {
    fn conflicted(&self) -> bool {
        !self.succeeded
    }
}

impl Settled for wire::GetResponse {}
impl Settled for wire::PutResponse {}
impl Settled for wire::DeleteResponse {}
impl Settled for wire::ListKeysResponse {}
impl Settled for wire::CompactResponse {}
impl Settled for WatchStream {}
