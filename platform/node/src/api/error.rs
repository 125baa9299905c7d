//! The node's one error edge: the domain errors a gRPC call can meet, and the one
//! mapping from each to the status its caller sees.
//!
//! Domain crates name causes ([`Refused`], [`RoutingError`], …) and know nothing of
//! gRPC. Each converts into [`ApiError`] with `?`, and [`ApiError`] into `tonic::Status`
//! in one exhaustive `match`: a new variant does not compile until it has a code.

use reef_access::Refused;
use reef_core::InvalidAlias;
use reef_messaging::CloseReason;
use reef_proto::{CLOSE_REASON_METADATA, POLICY_METADATA};
use reef_routing::RoutingError;
use reef_state::StateError;
use reef_supervision::SupervisionError;
use reef_tls::PkiError;
use tonic::{Code, Status, metadata::MetadataValue};

use super::state::{CURRENT_REVISION_METADATA, FIRST_REVISION_METADATA};
use crate::RegistryError;

/// Why a call failed, before it becomes a status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// Access control refused the caller.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// A routing change was refused.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// A registration was refused.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A supervision command was refused or failed.
    #[error(transparent)]
    Supervision(#[from] SupervisionError),
    /// The node ended an attach stream.
    #[error(transparent)]
    Closed(#[from] CloseReason),
    /// A state operation was refused or failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The node could not issue or read a certificate.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// An alias in the request is malformed.
    #[error(transparent)]
    InvalidAlias(#[from] InvalidAlias),
    /// The request's shape is wrong (a field missing or out of range), found at the edge.
    #[error("{0}")]
    BadRequest(String),
    /// The call came without the registration it needs (an attach stream without its
    /// alias and lease).
    #[error("{0}")]
    Unregistered(String),
    /// The caller does not hold what the call needs: the lease, a certificate for the
    /// name it claims, a push ticket.
    #[error("{0}")]
    NotEntitled(String),
    /// Nothing by that name: no container, task host, child node or log.
    #[error("{0}")]
    Unknown(String),
    /// Something by that name exists, with another definition.
    #[error("{0}")]
    Exists(String),
    /// The target cannot take the call as it is: a task where a process is needed, no
    /// endpoint, not attached.
    #[error("{0}")]
    Unfit(String),
    /// The node keeps no more of these (push tickets), or a watcher fell behind.
    #[error("{0}")]
    Exhausted(String),
    /// A node or container the call needs could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// Not tried: an earlier operation of the batch failed and the batch stops on error.
    #[error("an earlier operation failed")]
    Skipped,
    /// The node failed in a way the caller cannot mend (the message says what, without
    /// the node's paths).
    #[error("{0}")]
    Internal(String),
    /// The file store refused or failed an operation on `path`.
    #[error("{}", files_refusal(path, error).1)]
    Files {
        /// The file the operation was on.
        path: String,
        /// What the store said.
        error: opendal::Error,
    },
    /// A status the node relays as it is: the answer to a call it made for the caller
    /// (to a child node, a task host), or the failure of the caller's own stream.
    #[error("{}", .0.message())]
    Relayed(Status),
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let message = error.to_string();
        match error {
            ApiError::Refused(refused) => {
                let mut status = Status::permission_denied(message);
                if let Some(value) = refused
                    .policy()
                    .and_then(|policy| MetadataValue::try_from(policy).ok())
                {
                    status.metadata_mut().insert(POLICY_METADATA, value);
                }
                status
            }
            ApiError::Routing(error) => match error {
                RoutingError::Invalid(_) => Status::invalid_argument(message),
                RoutingError::NotFound(_) => Status::not_found(message),
                RoutingError::Full(_) => Status::resource_exhausted(message),
            },
            ApiError::Registry(error) => match error {
                RegistryError::InvalidAlias(_) | RegistryError::ParentCycle(_) => {
                    Status::invalid_argument(message)
                }
                RegistryError::AlreadyRegistered(_)
                | RegistryError::AlreadyAttached(_)
                | RegistryError::HeldElsewhere(_) => Status::already_exists(message),
                RegistryError::NotRegistered(_) => Status::not_found(message),
                RegistryError::LeaseMismatch(_) | RegistryError::Reserved(_) => {
                    Status::permission_denied(message)
                }
                RegistryError::Full(_) => Status::resource_exhausted(message),
            },
            ApiError::Supervision(error) => match error {
                SupervisionError::Invalid(_) => Status::invalid_argument(message),
                SupervisionError::NotFound(_) => Status::not_found(message),
                SupervisionError::AliasTaken(_) => Status::already_exists(message),
                SupervisionError::WrongState(_) | SupervisionError::DidNotStart(_) => {
                    Status::failed_precondition(message)
                }
                SupervisionError::Overtaken(_) => Status::aborted(message),
                SupervisionError::ShuttingDown => Status::unavailable(message),
            },
            ApiError::Closed(reason) => match reason {
                CloseReason::Silent(_)
                | CloseReason::Evicted(_)
                | CloseReason::Replaced
                | CloseReason::Destroyed
                | CloseReason::ShuttingDown => Status::unavailable(message),
                // A clean end (OK), named in a trailer the holder can read.
                CloseReason::Deregistered => {
                    let mut trailers = tonic::metadata::MetadataMap::new();
                    trailers.insert(
                        CLOSE_REASON_METADATA,
                        MetadataValue::from_static("deregistered"),
                    );
                    Status::with_metadata(tonic::Code::Ok, message, trailers)
                }
                CloseReason::FrameTooLarge { .. } => Status::resource_exhausted(message),
                CloseReason::StreamFailed(_) => Status::invalid_argument(message),
            },
            ApiError::State(error) => match error {
                StateError::Invalid(_) => Status::invalid_argument(message),
                StateError::Conflict { actual, .. } => {
                    let mut status = Status::aborted(message);
                    status
                        .metadata_mut()
                        .insert(CURRENT_REVISION_METADATA, MetadataValue::from(actual));
                    status
                }
                StateError::Future { .. } => Status::out_of_range(message),
                StateError::Compacted { first, .. } => {
                    let mut status = Status::out_of_range(message);
                    status
                        .metadata_mut()
                        .insert(FIRST_REVISION_METADATA, MetadataValue::from(first));
                    status
                }
                StateError::NoSuchOwner(_) => Status::failed_precondition(message),
                StateError::Unavailable(_) => Status::unavailable(message),
                StateError::Internal(_) => Status::internal(message),
            },
            ApiError::Pki(error) => match error {
                PkiError::Certificate(_) => Status::invalid_argument(format!(
                    "cannot issue a certificate for the endpoint: {error}"
                )),
                PkiError::Io { .. } | PkiError::Incomplete(_) => {
                    tracing::error!(%error, "certificate storage failed");
                    Status::internal("the node could not access its certificate store")
                }
            },
            ApiError::InvalidAlias(_) | ApiError::BadRequest(_) => {
                Status::invalid_argument(message)
            }
            ApiError::Unregistered(_) => Status::unauthenticated(message),
            ApiError::NotEntitled(_) => Status::permission_denied(message),
            ApiError::Unknown(_) => Status::not_found(message),
            ApiError::Exists(_) => Status::already_exists(message),
            ApiError::Unfit(_) => Status::failed_precondition(message),
            ApiError::Exhausted(_) => Status::resource_exhausted(message),
            ApiError::Unreachable(_) => Status::unavailable(message),
            ApiError::Skipped => Status::aborted(message),
            ApiError::Internal(_) => Status::internal(message),
            ApiError::Files { path, error } => {
                let (code, _) = files_refusal(&path, &error);
                if code == Code::Internal {
                    tracing::warn!(%error, path, "file store failed");
                }
                Status::new(code, message)
            }
            ApiError::Relayed(status) => status,
        }
    }
}

/// What a caller of `reef.v1.Files` hears when the store refuses or fails: the code, and
/// a message that names the path but not the store's internals.
fn files_refusal(path: &str, error: &opendal::Error) -> (Code, String) {
    use opendal::ErrorKind;
    match error.kind() {
        ErrorKind::NotFound => (Code::NotFound, format!("no file or directory at {path:?}")),
        ErrorKind::AlreadyExists | ErrorKind::ConditionNotMatch => {
            (Code::AlreadyExists, format!("{path:?} exists"))
        }
        ErrorKind::IsADirectory => (Code::FailedPrecondition, format!("{path:?} is a directory")),
        ErrorKind::NotADirectory => (
            Code::FailedPrecondition,
            format!("{path:?} is not a directory"),
        ),
        ErrorKind::IsSameFile => (Code::InvalidArgument, format!("{path:?}: the same file")),
        ErrorKind::Unsupported => (
            Code::Unimplemented,
            format!("the store cannot do that for {path:?}: {error}"),
        ),
        ErrorKind::PermissionDenied => (
            Code::PermissionDenied,
            format!("the store refused access to {path:?}"),
        ),
        ErrorKind::RangeNotSatisfied => (Code::OutOfRange, format!("{path:?}: {error}")),
        _ => (Code::Internal, format!("the file store failed on {path:?}")),
    }
}

#[cfg(test)]
mod tests {
    use reef_access::{Denial, Principal};
    use tonic::Code;

    use super::*;

    #[test]
    fn a_policy_denial_names_its_policy_and_impersonation_is_denied_too() {
        let denial = Denial {
            policy: "ops-only".into(),
            message: "client:x may not send to echo (policy ops-only)".into(),
        };
        let status = Status::from(ApiError::from(Refused::Policy(denial)));
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(status.metadata().get(POLICY_METADATA).unwrap(), "ops-only");
        let status = Status::from(ApiError::from(Refused::Impersonation {
            principal: Principal::Container("a".into()),
            alias: "b".into(),
        }));
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(status.metadata().get(POLICY_METADATA).is_none());
        assert!(
            status.message().contains("container:a"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn a_deregistered_stream_ends_cleanly_and_says_why() {
        let status = Status::from(ApiError::from(CloseReason::Deregistered));
        assert_eq!(status.code(), Code::Ok);
        assert_eq!(status.message(), "deregistered by its holder");
        assert_eq!(
            status.metadata().get(CLOSE_REASON_METADATA).unwrap(),
            "deregistered"
        );
        let status = Status::from(ApiError::from(CloseReason::FrameTooLarge { limit: 8 }));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("frame limit of 8 bytes"));
    }

    #[test]
    fn storage_failures_do_not_leak_their_detail() {
        let status = Status::from(ApiError::from(PkiError::Incomplete("/secret/path".into())));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("/secret/path"));
    }
}
