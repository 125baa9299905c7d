//! What can go wrong when talking to a node.

use std::time::Duration;

use tonic::Code;

/// An SDK error. [`Error::code`] gives the gRPC code for every variant, so callers can
/// branch on one value whether the failure came from the node, the peer or the network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The options are unusable (bad address, unreadable CA file…).
    #[error("{0}")]
    Config(String),
    /// The node could not be reached.
    #[error("cannot reach the reef node at {node}: {reason}")]
    Connect {
        /// The address tried.
        node: String,
        /// Why, in one line.
        reason: String,
    },
    /// The node refused a control-plane call.
    #[error("the node refused: {}", .0.message())]
    Rejected(tonic::Status),
    /// An ERROR envelope: the node or the peer failed the request.
    #[error("{code:?}: {message}")]
    Remote {
        /// What kind of failure.
        code: Code,
        /// The application's error type, empty for the node's own errors.
        kind: String,
        /// Explanation.
        message: String,
    },
    /// No answer arrived in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The attach stream is gone.
    #[error("disconnected from the node: {0}")]
    Disconnected(String),
    /// The payload exceeds the node's limit; it was not sent.
    #[error("payload of {size} bytes exceeds the node's limit of {limit} bytes")]
    PayloadTooLarge {
        /// The payload's size.
        size: usize,
        /// The node's limit.
        limit: usize,
    },
}

impl Error {
    /// The gRPC status code that describes this error.
    pub fn code(&self) -> Code {
        match self {
            Error::Config(_) => Code::InvalidArgument,
            Error::Connect { .. } | Error::Disconnected(_) => Code::Unavailable,
            Error::Rejected(status) => status.code(),
            Error::Remote { code, .. } => *code,
            Error::Timeout(_) => Code::DeadlineExceeded,
            Error::PayloadTooLarge { .. } => Code::ResourceExhausted,
        }
    }
}

/// A handler's failure, sent back to the requester as an ERROR envelope.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct HandlerError {
    /// The gRPC code the caller sees.
    pub code: Code,
    /// The application's error type (what supervision solver chains match on).
    pub kind: String,
    /// Explanation for the caller.
    pub message: String,
}

impl HandlerError {
    /// An error of application type `kind` with code UNKNOWN.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: Code::Unknown,
            kind: kind.into(),
            message: message.into(),
        }
    }

    /// The same error with another gRPC code.
    pub fn with_code(mut self, code: Code) -> Self {
        self.code = code;
        self
    }

    /// The container does not handle this kind of request.
    pub fn unimplemented(what: &str) -> Self {
        Self::new(
            "Unimplemented",
            format!("this container does not handle {what}"),
        )
        .with_code(Code::Unimplemented)
    }
}

/// An SDK failure inside a handler (a request to another container failed…), passed on
/// to the requester with the same code.
impl From<Error> for HandlerError {
    fn from(error: Error) -> Self {
        Self::new("reef.sdk", error.to_string()).with_code(error.code())
    }
}
