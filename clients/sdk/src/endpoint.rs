//! The `reef.v1.Container` service every SDK container serves on its endpoint.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use bytes::Bytes;
use reef_proto::{self as wire, container_server};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::{Command, Error, HandlerError, Restart, TaskOptions, Tasks, handler::Counters};

/// How long an operator command may take before the caller gets DEADLINE_EXCEEDED.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A command on its way to the handler loop, with where to put the answer.
pub(crate) struct CommandCall {
    pub command: Command,
    pub reply: oneshot::Sender<Result<Bytes, HandlerError>>,
}

/// Why the endpoint refuses a call. `From<EndpointError> for Status` below is the one
/// place its refusals become gRPC codes.
#[derive(Debug, thiserror::Error)]
enum EndpointError {
    #[error("missing metadata {PUSH_TICKET:?}: ask the node for a ticket (Supervisor.OpenPush)")]
    NoTicket,
    #[error(
        "Container.{call} is for the node {node} alone, not {caller}: ask the node (Supervisor.GetContainerStatus, CommandContainer, Create)"
    )]
    NotTheNode {
        call: &'static str,
        node: String,
        caller: String,
    },
    #[error("not attached to a node yet")]
    NotAttached,
    #[error("the container is stopping")]
    Stopping,
    #[error("the command took longer than {COMMAND_TIMEOUT:?}")]
    CommandTimedOut,
    /// The command handler's own error, with the code it chose.
    #[error("{}", .0.message)]
    Command(HandlerError),
    #[error("unknown restart type {0}")]
    UnknownRestart(i32),
    /// The SDK's own error (a task that cannot be stopped, say).
    #[error("{0}")]
    Sdk(#[from] Error),
    /// A refusal from the push path or the task table, passed on as it is.
    #[error("{}", .0.message())]
    Relayed(Status),
}

const PUSH_TICKET: &str = wire::PUSH_TICKET_METADATA;

impl From<EndpointError> for Status {
    fn from(error: EndpointError) -> Self {
        let message = error.to_string();
        match error {
            EndpointError::NoTicket => Status::unauthenticated(message),
            EndpointError::NotTheNode { .. } => Status::permission_denied(message),
            EndpointError::NotAttached | EndpointError::Stopping => Status::unavailable(message),
            EndpointError::CommandTimedOut => Status::deadline_exceeded(message),
            EndpointError::Command(error) => Status::new(error.code, message),
            EndpointError::UnknownRestart(_) => Status::invalid_argument(message),
            EndpointError::Sdk(error) => Status::new(error.code(), message),
            EndpointError::Relayed(status) => status,
        }
    }
}

pub(crate) struct EndpointService {
    alias: String,
    name: String,
    started: Instant,
    counters: Arc<Counters>,
    commands: mpsc::Sender<CommandCall>,
    tasks: Tasks,
    /// The node that alone may make control calls, `None` when the endpoint serves
    /// plaintext (an `--insecure` node): then no caller is known.
    node: Option<TheNode>,
}

/// The node a container's endpoint takes control calls from: its identity, and the trust
/// root its certificate chains to (which tells whether the CA that signed a caller's
/// certificate may vouch for that identity, see [`reef_tls::vouch`]).
pub(crate) struct TheNode {
    identity: String,
    root: Vec<u8>,
}

impl TheNode {
    /// Node `name`, under the CA `ca_pem` (its first certificate is the root).
    pub fn new(name: &str, ca_pem: &[u8]) -> Result<Self, crate::Error> {
        let root = reef_tls::vouch::root_der(ca_pem)
            .ok_or_else(|| crate::Error::Config("the CA file holds no certificate".to_owned()))?;
        Ok(Self {
            identity: reef_tls::node_identity(name),
            root,
        })
    }
}

impl EndpointService {
    pub fn new(
        alias: &str,
        name: &str,
        started: Instant,
        counters: Arc<Counters>,
        commands: mpsc::Sender<CommandCall>,
        tasks: Tasks,
        node: Option<TheNode>,
    ) -> Self {
        Self {
            alias: alias.to_owned(),
            name: name.to_owned(),
            started,
            counters,
            commands,
            tasks,
            node,
        }
    }

    /// Refuses a control call (`call`) that does not come from the node: the node checks
    /// its callers (policies, on-behalf-of) before it asks a container anything, so a
    /// direct call would skip that.
    fn check_node<T>(&self, request: &Request<T>, call: &'static str) -> Result<(), EndpointError> {
        let Some(node) = &self.node else {
            return Ok(());
        };
        let chain = request.peer_certs();
        let chain = chain.as_deref().map_or(&[][..], Vec::as_slice);
        // The node's identity is believed only from the cluster's root or the node's own
        // CA: another node's CA could sign a certificate naming it.
        let caller = match reef_tls::vouch::vouched_identity(chain, &node.root, "") {
            Ok(Some(caller)) => caller,
            Ok(None) => "a caller without a certificate".to_owned(),
            Err(disbelieved) => disbelieved,
        };
        match caller == node.identity {
            true => Ok(()),
            false => Err(EndpointError::NotTheNode {
                call,
                node: node.identity.clone(),
                caller,
            }),
        }
    }
}

#[tonic::async_trait]
impl container_server::Container for EndpointService {
    type PushStream = crate::push::Answers;

    async fn push(
        &self,
        request: Request<tonic::Streaming<wire::Frame>>,
    ) -> Result<Response<Self::PushStream>, Status> {
        let ticket = request
            .metadata()
            .get(wire::PUSH_TICKET_METADATA)
            .and_then(|value| value.to_str().ok())
            .ok_or(EndpointError::NoTicket)?
            .to_owned();
        let client = self.tasks.host_client().ok_or(EndpointError::NotAttached)?;
        let answers = crate::push::serve(client, &ticket, request.into_inner())
            .await
            .map_err(EndpointError::Relayed)?;
        Ok(Response::new(answers))
    }

    async fn ping(
        &self,
        request: Request<wire::PingRequest>,
    ) -> Result<Response<wire::PingResponse>, Status> {
        Ok(Response::new(wire::PingResponse {
            nonce: request.into_inner().nonce,
            alias: self.alias.clone(),
        }))
    }

    async fn status(
        &self,
        request: Request<wire::StatusRequest>,
    ) -> Result<Response<wire::ContainerStatus>, Status> {
        self.check_node(&request, "Status")?;
        Ok(Response::new(wire::ContainerStatus {
            alias: self.alias.clone(),
            name: self.name.clone(),
            pid: std::process::id(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            messages_handled: self.counters.messages.load(Relaxed),
            requests_handled: self.counters.requests.load(Relaxed),
        }))
    }

    async fn command(
        &self,
        request: Request<wire::CommandRequest>,
    ) -> Result<Response<wire::CommandResponse>, Status> {
        self.check_node(&request, "Command")?;
        let request = request.into_inner();
        let (reply, answer) = oneshot::channel();
        let call = CommandCall {
            command: Command {
                name: request.command,
                args: request.args,
            },
            reply,
        };
        self.commands
            .send(call)
            .await
            .map_err(|_| EndpointError::Stopping)?;
        let output = match tokio::time::timeout(COMMAND_TIMEOUT, answer).await {
            Ok(Ok(Ok(output))) => output,
            Ok(Ok(Err(error))) => return Err(EndpointError::Command(error).into()),
            Ok(Err(_)) => return Err(EndpointError::Stopping.into()),
            Err(_) => return Err(EndpointError::CommandTimedOut.into()),
        };
        Ok(Response::new(wire::CommandResponse {
            output,
            content_type: "text/plain".to_owned(),
        }))
    }

    async fn start_task(
        &self,
        request: Request<wire::StartTaskRequest>,
    ) -> Result<Response<wire::StartTaskResponse>, Status> {
        self.check_node(&request, "StartTask")?;
        let request = request.into_inner();
        let restart = match wire::RestartType::try_from(request.restart) {
            Ok(wire::RestartType::Unspecified | wire::RestartType::Permanent) => Restart::Permanent,
            Ok(wire::RestartType::Transient) => Restart::Transient,
            Ok(wire::RestartType::Temporary) => Restart::Temporary,
            Err(_) => return Err(EndpointError::UnknownRestart(request.restart).into()),
        };
        let defaults = TaskOptions::new(&request.alias);
        let options = TaskOptions {
            alias: request.alias,
            name: request.name,
            parent: (!request.parent.is_empty()).then_some(request.parent),
            restart,
            max_restarts: match request.max_restarts {
                0 => defaults.max_restarts,
                n => n,
            },
            period: match request.period_ms {
                0 => defaults.period,
                ms => Duration::from_millis(ms.into()),
            },
            labels: request.labels.into_iter().collect(),
        };
        let created = self
            .tasks
            .spawn_defined(options, request.args)
            .await
            .map_err(EndpointError::Relayed)?;
        Ok(Response::new(wire::StartTaskResponse { created }))
    }

    async fn stop_task(
        &self,
        request: Request<wire::StopTaskRequest>,
    ) -> Result<Response<wire::StopTaskResponse>, Status> {
        self.check_node(&request, "StopTask")?;
        let alias = request.into_inner().alias;
        self.tasks.stop(&alias).await.map_err(EndpointError::from)?;
        Ok(Response::new(wire::StopTaskResponse {}))
    }
}
