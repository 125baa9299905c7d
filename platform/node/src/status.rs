//! Domain errors → gRPC status codes, in one place at the service edge.

use reef_tls::PkiError;
use tonic::Status;

use crate::{RegistryError, supervision::SupervisionError};

/// The status a client sees for a refused registry operation.
pub(crate) fn registry_status(error: RegistryError) -> Status {
    let message = error.to_string();
    match error {
        RegistryError::InvalidAlias(_) | RegistryError::ParentCycle(_) => {
            Status::invalid_argument(message)
        }
        RegistryError::AlreadyRegistered(_) | RegistryError::AlreadyAttached(_) => {
            Status::already_exists(message)
        }
        RegistryError::NotRegistered(_) => Status::not_found(message),
        RegistryError::LeaseMismatch(_) | RegistryError::Reserved(_) => {
            Status::permission_denied(message)
        }
        RegistryError::Full(_) => Status::resource_exhausted(message),
    }
}

/// The status for a certificate the node could not issue.
pub(crate) fn pki_status(error: PkiError) -> Status {
    match error {
        PkiError::Certificate(_) => Status::invalid_argument(format!(
            "cannot issue a certificate for the endpoint: {error}"
        )),
        PkiError::Io { .. } | PkiError::Incomplete(_) => {
            tracing::error!(%error, "certificate storage failed");
            Status::internal("the node could not access its certificate store")
        }
    }
}

/// The status for a refused or failed supervision command.
pub(crate) fn supervision_status(error: SupervisionError) -> Status {
    let message = error.to_string();
    match error {
        SupervisionError::Invalid(_) => Status::invalid_argument(message),
        SupervisionError::NotFound(_) => Status::not_found(message),
        SupervisionError::AlreadyExists(_) => Status::already_exists(message),
        SupervisionError::Precondition(_) => Status::failed_precondition(message),
        SupervisionError::Aborted(_) => Status::aborted(message),
        SupervisionError::ShuttingDown => Status::unavailable(message),
    }
}
