//! The etcd backend: the same operations on an etcd v3 cluster, for state that must
//! outlive any one node.
//!
//! Keys live under `ROOT/NAMESPACE/KEY` and keep etcd's revisions, so a watch resumes
//! exactly as etcd's does. A container that owns keys gets one etcd lease (with etcd's
//! longest TTL, never kept alive: it only groups keys), recorded at `ROOT/_owners/ALIAS`
//! on that lease; releasing the owner revokes the lease, which deletes its keys in one
//! revision.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{
    Code, Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use super::{
    Backend, Batch, BoxFuture, Event, EventKind, KeyValue, ListQuery, MAX_PAGE_BYTES, Namespace,
    Op, Page, Revision, StateError, Txn, TxnOutcome, Watching,
};

/// etcd's v3 API as generated from `proto/etcd` (for tools and benchmarks that talk to
/// etcd directly).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

use pb::{
    etcdserverpb::{
        self as etcd, compare, kv_client::KvClient, lease_client::LeaseClient, request_op,
        response_op, watch_client::WatchClient, watch_request,
    },
    mvccpb,
};

mod leases;
mod watching;

/// The largest etcd response decoded; a List page that would be larger is read again
/// with fewer keys.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// After moving to the next endpoint, failures within this long do not move again.
const FAILOVER_PAUSE: Duration = Duration::from_millis(100);

/// etcd's longest lease TTL (seconds): owner leases group keys; they are not timers.
const OWNER_LEASE_TTL: i64 = 9_000_000_000;

/// Where the etcd cluster is and where reef's keys live in it.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// The cluster's client URLs, such as `http://127.0.0.1:2379` (`https://` with
    /// `tls`); requests are balanced over those that answer.
    pub endpoints: Vec<String>,
    /// The key prefix for everything reef stores.
    pub root: String,
    /// TLS for `https://` endpoints.
    pub tls: Option<EtcdTls>,
}

/// How reef authenticates etcd, and itself to etcd.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA that signed etcd's server certificates (PEM file).
    pub ca: PathBuf,
    /// A client certificate and its key (PEM files), for clusters that require one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl EtcdTls {
    fn client_config(&self) -> Result<ClientTlsConfig, StateError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                StateError::Invalid(format!("etcd TLS: cannot read {}: {e}", path.display()))
            })
        };
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca)?));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(config)
    }
}

/// The etcd backend.
#[derive(Debug, Clone)]
pub struct Etcd {
    /// One channel per endpoint; calls go to `current` until it cannot be reached.
    channels: Arc<[Channel]>,
    current: Arc<AtomicUsize>,
    /// When `current` last moved on.
    moved: Arc<Mutex<tokio::time::Instant>>,
    root: Arc<str>,
    /// Owner leases: lease id → alias, and alias → lease id.
    leases: Arc<Mutex<Leases>>,
    /// Serialises lease creation so that an owner gets one lease.
    granting: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug, Default)]
struct Leases {
    owner_of: HashMap<i64, String>,
    lease_of: HashMap<String, i64>,
}

/// What a failed etcd call means for reef's callers.
fn state_error(status: Status) -> StateError {
    // tonic reports a connection that failed after it was made (a TLS handshake etcd
    // refused, say) as UNKNOWN "transport error".
    let transport = status.code() == Code::Unknown && status.message().contains("transport");
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            StateError::Unavailable(format!("etcd: {}", status.message()))
        }
        _ if transport => StateError::Unavailable(format!("etcd: {}", status.message())),
        Code::InvalidArgument | Code::FailedPrecondition
            if status.message().contains("too large") =>
        {
            StateError::Invalid(format!("etcd refused: {}", status.message()))
        }
        _ => StateError::Internal(format!("etcd: {}", status.message())),
    }
}

/// The first key after every key that starts with `prefix` (etcd's range_end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn revision(header: Option<etcd::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision.max(0) as Revision)
}

impl Etcd {
    /// Connects lazily to `config.endpoint`: the first operation reports an unreachable
    /// cluster as UNAVAILABLE.
    pub fn connect(config: EtcdConfig) -> Result<Self, StateError> {
        if config.endpoints.is_empty() {
            return Err(StateError::Invalid("etcd: no endpoint given".into()));
        }
        let tls = config
            .tls
            .as_ref()
            .map(EtcdTls::client_config)
            .transpose()?;
        let mut endpoints: Vec<Endpoint> = Vec::with_capacity(config.endpoints.len());
        for url in &config.endpoints {
            let invalid =
                |why: String| StateError::Invalid(format!("etcd endpoint {url:?}: {why}"));
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| invalid(e.to_string()))?
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(30))
                .tcp_nodelay(true);
            match (url.starts_with("https://"), &tls) {
                (true, Some(tls)) => {
                    endpoint = endpoint
                        .tls_config(tls.clone())
                        .map_err(|e| invalid(e.to_string()))?;
                }
                (true, None) => {
                    return Err(invalid(
                        "https needs the CA of etcd's certificates (--etcd-ca)".into(),
                    ));
                }
                (false, Some(_)) => {
                    return Err(invalid("TLS options need https:// endpoints".into()));
                }
                (false, None) => {}
            }
            endpoints.push(endpoint);
        }
        Ok(Self {
            channels: endpoints.into_iter().map(|e| e.connect_lazy()).collect(),
            current: Arc::default(),
            moved: Arc::new(Mutex::new(
                tokio::time::Instant::now()
                    .checked_sub(FAILOVER_PAUSE)
                    .unwrap_or_else(tokio::time::Instant::now),
            )),
            root: config.root.trim_end_matches('/').into(),
            leases: Arc::default(),
            granting: Arc::default(),
        })
    }

    /// The endpoint calls go to now.
    fn channel(&self) -> Channel {
        self.channels[self.current.load(Ordering::Relaxed) % self.channels.len()].clone()
    }

    /// Maps a failed call to a state error. A call that could not reach its endpoint
    /// moves the next calls to the next endpoint; it is not retried here, because
    /// only the caller knows whether it may be (UNAVAILABLE says to).
    fn failed(&self, status: Status) -> StateError {
        if status.code() == Code::Unavailable && status.message().contains("connect") {
            // Calls that failed together move on once, not once each (which could
            // bring them back to the endpoint they failed on).
            let mut moved = self.moved.lock();
            if moved.elapsed() >= FAILOVER_PAUSE {
                self.current.fetch_add(1, Ordering::Relaxed);
                *moved = tokio::time::Instant::now();
            }
        }
        state_error(status)
    }

    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel()).max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    fn namespace_prefix(&self, namespace: &Namespace) -> String {
        format!("{}/{}/", self.root, namespace)
    }

    fn owners_prefix(&self) -> String {
        format!("{}/_owners/", self.root)
    }

    fn key(&self, namespace: &Namespace, key: &str) -> Vec<u8> {
        format!("{}{key}", self.namespace_prefix(namespace)).into_bytes()
    }

    /// A reef key from an etcd key under the namespace's prefix.
    fn to_domain(
        &self,
        namespace_prefix: &str,
        kv: mvccpb::KeyValue,
        with_value: bool,
    ) -> KeyValue {
        let key = String::from_utf8_lossy(&kv.key[namespace_prefix.len().min(kv.key.len())..])
            .into_owned();
        KeyValue {
            key,
            value: match with_value {
                true => Bytes::from(kv.value),
                false => Bytes::new(),
            },
            create_revision: kv.create_revision.max(0) as Revision,
            mod_revision: kv.mod_revision.max(0) as Revision,
            version: kv.version.max(0) as u64,
            owner: self.owner_of_lease(kv.lease),
        }
    }

    /// A count-only read of reef's keys at `revision` (0: the latest), for what its
    /// header and its errors say about the store.
    async fn probe(&self, revision: Revision) -> Result<etcd::RangeResponse, Status> {
        let read = self
            .kv()
            .range(etcd::RangeRequest {
                key: format!("{}/", self.root).into_bytes(),
                revision: revision as i64,
                count_only: true,
                ..Default::default()
            })
            .await?;
        Ok(read.into_inner())
    }

    async fn current_revision(&self) -> Result<Revision, StateError> {
        let response = self.probe(0).await.map_err(|status| self.failed(status))?;
        Ok(revision(response.header))
    }

    /// Whether etcd's history before `revision` was compacted away.
    async fn compacted(&self, revision: Revision) -> Result<bool, StateError> {
        match self.probe(revision).await {
            Ok(_) => Ok(false),
            Err(status) if status.message().contains("compacted") => Ok(true),
            // A start one past the store's revision is not readable yet: not compacted.
            Err(status) if status.message().contains("future revision") => Ok(false),
            Err(status) => Err(self.failed(status)),
        }
    }

    async fn run_txn(&self, txn: Txn) -> Result<TxnOutcome, StateError> {
        let namespace = &txn.namespace;
        let mut success = Vec::with_capacity(txn.ops.len());
        for op in &txn.ops {
            success.push(match op {
                Op::Put { key, value, owner } => {
                    let lease = match owner {
                        Some(owner) => self.lease_for(owner).await?,
                        None => 0,
                    };
                    put_op(self.key(namespace, key), value.to_vec(), lease, true)
                }
                Op::Delete { key } => delete_op(self.key(namespace, key), Vec::new()),
                Op::DeletePrefix { prefix } => {
                    let start = self.key(namespace, prefix);
                    let end = prefix_end(&start);
                    delete_op(start, end)
                }
            });
        }
        let compare = txn
            .compares
            .iter()
            .map(|c| etcd::Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Mod as i32,
                key: self.key(namespace, &c.key),
                target_union: Some(compare::TargetUnion::ModRevision(c.mod_revision as i64)),
                ..Default::default()
            })
            .collect();
        let failure = txn
            .compares
            .iter()
            .map(|c| etcd::RequestOp {
                request: Some(request_op::Request::RequestRange(etcd::RangeRequest {
                    key: self.key(namespace, &c.key),
                    ..Default::default()
                })),
            })
            .collect();
        let response = self
            .kv()
            .txn(etcd::TxnRequest {
                compare,
                success,
                failure,
            })
            .await
            .map_err(|status| self.failed(status))?
            .into_inner();
        let store_revision = revision(response.header);
        let prefix = self.namespace_prefix(namespace);
        if !response.succeeded {
            if let Some(ahead) = txn
                .compares
                .iter()
                .find(|c| c.mod_revision > store_revision)
            {
                return Err(StateError::Future {
                    requested: ahead.mod_revision,
                    current: store_revision,
                });
            }
            let current = response
                .responses
                .into_iter()
                .map(|op| match op.response {
                    Some(response_op::Response::ResponseRange(range)) => range
                        .kvs
                        .into_iter()
                        .next()
                        .map(|kv| self.to_domain(&prefix, kv, true)),
                    _ => None,
                })
                .collect();
            return Ok(TxnOutcome::Conflict {
                revision: store_revision,
                current,
            });
        }
        let mut previous = Vec::with_capacity(response.responses.len());
        let mut deleted = 0;
        for op in response.responses {
            match op.response {
                Some(response_op::Response::ResponsePut(put)) => {
                    previous.push(put.prev_kv.map(|kv| self.to_domain(&prefix, kv, true)));
                }
                Some(response_op::Response::ResponseDeleteRange(range)) => {
                    deleted += range.deleted.max(0) as u64;
                    previous.push(None);
                }
                _ => previous.push(None),
            }
        }
        Ok(TxnOutcome::Committed {
            revision: store_revision,
            previous,
            deleted,
        })
    }
}

fn put_op(key: Vec<u8>, value: Vec<u8>, lease: i64, prev_kv: bool) -> etcd::RequestOp {
    etcd::RequestOp {
        request: Some(request_op::Request::RequestPut(etcd::PutRequest {
            key,
            value,
            lease,
            prev_kv,
            ..Default::default()
        })),
    }
}

fn delete_op(key: Vec<u8>, range_end: Vec<u8>) -> etcd::RequestOp {
    etcd::RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            etcd::DeleteRangeRequest {
                key,
                range_end,
                prev_kv: false,
            },
        )),
    }
}

impl Backend for Etcd {
    fn get<'a>(
        &'a self,
        namespace: &'a Namespace,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(Option<KeyValue>, Revision), StateError>> {
        Box::pin(async move {
            let response = self
                .kv()
                .range(etcd::RangeRequest {
                    key: self.key(namespace, key),
                    ..Default::default()
                })
                .await
                .map_err(|status| self.failed(status))?
                .into_inner();
            let prefix = self.namespace_prefix(namespace);
            let found = response
                .kvs
                .into_iter()
                .next()
                .map(|kv| self.to_domain(&prefix, kv, true));
            Ok((found, revision(response.header)))
        })
    }

    fn list<'a>(
        &'a self,
        namespace: &'a Namespace,
        query: ListQuery,
    ) -> BoxFuture<'a, Result<Page, StateError>> {
        Box::pin(async move {
            let prefix = self.namespace_prefix(namespace);
            let range_start = self.key(namespace, &query.prefix);
            let range_end = prefix_end(&range_start);
            let start = match &query.after {
                Some(after) => {
                    let mut key = self.key(namespace, after);
                    key.push(0);
                    key
                }
                None => range_start,
            };
            // etcd cannot bound a range by size: a page of large values that the client
            // may not decode is asked for again with fewer keys (one value always fits).
            let mut limit = query.limit.max(1) as i64;
            let response = loop {
                let read = self
                    .kv()
                    .range(etcd::RangeRequest {
                        key: start.clone(),
                        range_end: range_end.clone(),
                        limit,
                        keys_only: query.keys_only,
                        ..Default::default()
                    })
                    .await;
                match read {
                    Ok(response) => break response.into_inner(),
                    Err(status) if status.code() == Code::OutOfRange && limit > 1 => {
                        limit = (limit / 8).max(1);
                    }
                    Err(status) => return Err(self.failed(status)),
                }
            };
            let mut more = response.more;
            let mut kvs = Vec::with_capacity(response.kvs.len());
            let mut bytes = 0;
            for kv in response.kvs {
                if bytes >= MAX_PAGE_BYTES {
                    more = true;
                    break;
                }
                let kv = self.to_domain(&prefix, kv, !query.keys_only);
                bytes += kv.key.len() + kv.value.len();
                kvs.push(kv);
            }
            Ok(Page {
                next: more.then(|| kvs.last().map(|kv| kv.key.clone())).flatten(),
                kvs,
                revision: revision(response.header),
            })
        })
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnOutcome, StateError>> {
        Box::pin(self.run_txn(txn))
    }

    fn watch<'a>(
        &'a self,
        namespace: &'a Namespace,
        prefix: &'a str,
        start: Option<Revision>,
    ) -> BoxFuture<'a, Result<Watching, StateError>> {
        Box::pin(self.open_watch(namespace, prefix, start))
    }

    fn compact(&self, target: Revision) -> BoxFuture<'_, Result<Revision, StateError>> {
        Box::pin(async move {
            let current = self.current_revision().await?;
            if target > current {
                return Err(StateError::Future {
                    requested: target,
                    current,
                });
            }
            match self
                .kv()
                .compact(etcd::CompactionRequest {
                    revision: target as i64,
                    physical: false,
                })
                .await
            {
                Ok(_) => Ok(target),
                // Already compacted at or past it: nothing to do.
                Err(status) if status.message().contains("compacted") => Ok(target),
                Err(status) => Err(self.failed(status)),
            }
        })
    }

    fn owners(&self) -> BoxFuture<'_, Result<Vec<String>, StateError>> {
        Box::pin(async move {
            self.load_owners().await?;
            let leases = self.leases.lock();
            let mut owners: Vec<_> = leases.lease_of.keys().cloned().collect();
            owners.sort();
            Ok(owners)
        })
    }

    fn release<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<u64, StateError>> {
        Box::pin(async move {
            let _one_at_a_time = self.granting.lock().await;
            self.load_owners().await?;
            let Some(id) = self.known_lease(owner) else {
                return Ok(0);
            };
            let mut lease = LeaseClient::new(self.channel());
            let attached = lease
                .lease_time_to_live(etcd::LeaseTimeToLiveRequest { id, keys: true })
                .await
                .map_err(|status| self.failed(status))?
                .into_inner();
            match lease.lease_revoke(etcd::LeaseRevokeRequest { id }).await {
                Ok(_) => {}
                Err(status) if status.message().contains("not found") => {}
                Err(status) => return Err(self.failed(status)),
            }
            let mut leases = self.leases.lock();
            leases.lease_of.remove(owner);
            leases.owner_of.remove(&id);
            // The marker key at ROOT/_owners/ALIAS is one of the lease's keys.
            Ok(attached.keys.len().saturating_sub(1) as u64)
        })
    }
}
