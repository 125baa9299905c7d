//! Asking a registered container something through its own endpoint (ping, status, a
//! command), and the tickets that let one container push to another directly.

use super::*;

impl SupervisorService {
    /// A client for `alias`'s own endpoint (reef.v1.Container), for `caller`, who must
    /// be allowed to send to it: asking a container something is as much as messaging
    /// it. The node presents its own certificate, as to a child node.
    async fn container_endpoint(
        &self,
        caller: &Principal,
        alias: &str,
        timeout: Duration,
    ) -> Result<ContainerClient<tonic::transport::Channel>, ApiError> {
        let alias = parse_alias(alias)?;
        self.access
            .check(caller, Action::Send, alias.as_str(), &[])?;
        let container = self
            .registry
            .get(alias.as_str())
            .ok_or_else(|| ApiError::Unknown(format!("no container is registered as {alias:?}")))?;
        if let Some(task) = &container.task {
            return Err(ApiError::Unfit(format!(
                "{alias} is a task container in {}: its host's endpoint speaks for the host",
                task.host
            )));
        }
        let endpoint = match (container.spec.endpoint, container.attached) {
            (Some(endpoint), true) => endpoint,
            (None, _) => {
                return Err(ApiError::Unfit(format!(
                    "{alias} registered no endpoint to ask"
                )));
            }
            (Some(_), false) => {
                return Err(ApiError::Unfit(format!(
                    "{alias} is not attached (starting, restarting or stopped)"
                )));
            }
        };
        let pki = self.tls.pki();
        let peer = reef_tls::container_identity(alias.as_str());
        let identity = Some(pki.server().clone());
        let channel = connect_endpoint(&endpoint, pki.ca_pem(), &peer, identity, timeout).await?;
        Ok(ContainerClient::new(channel))
    }

    /// Refuses a caller that does not hold `alias`'s lease.
    fn authenticate(&self, alias: &str, lease: &str) -> Result<(), ApiError> {
        match self.registry.holds_lease(alias, lease) {
            true => Ok(()),
            false => Err(ApiError::NotEntitled(format!(
                "{alias:?} is not registered with that lease"
            ))),
        }
    }

    pub(super) async fn ping_one(
        &self,
        caller: &Principal,
        alias: &str,
    ) -> Result<wire::PingContainerResponse, ApiError> {
        self.check_inspect(caller, alias)?;
        let container = self
            .registry
            .get(alias)
            .ok_or_else(|| ApiError::Unknown(format!("no container is registered as {alias:?}")))?;
        let endpoint = container
            .spec
            .endpoint
            .ok_or_else(|| ApiError::Unfit(format!("{alias:?} registered no endpoint to ping")))?;
        let started = Instant::now();
        let pki = self.tls.pki();
        let answer = ping_endpoint(
            alias,
            &endpoint,
            pki.ca_pem(),
            pki.server().clone(),
            Duration::from_secs(5),
        )
        .await?;
        Ok(wire::PingContainerResponse {
            alias: answer.alias,
            round_trip_us: started.elapsed().as_micros() as u64,
        })
    }

    /// The container's own answer to Container.Status, here or from the node below.
    pub(super) async fn container_status(
        &self,
        caller: &Caller,
        request: wire::GetContainerStatusRequest,
    ) -> Result<Response<wire::ContainerStatus>, ApiError> {
        if let Some(mut node) = self.node_below(&request.alias).await? {
            return node
                .get_container_status(to_node_below(caller, request)?)
                .await
                .map_err(ApiError::Relayed);
        }
        let mut container = self
            .container_endpoint(&caller.principal, &request.alias, CONTAINER_STATUS_TIMEOUT)
            .await?;
        container
            .status(on_behalf_of(&caller.principal, wire::StatusRequest {})?)
            .await
            .map_err(ApiError::Relayed)
    }

    /// Runs a command in the container, here or through the node below.
    pub(super) async fn run_command(
        &self,
        caller: &Caller,
        request: wire::CommandContainerRequest,
    ) -> Result<Response<wire::CommandResponse>, ApiError> {
        if let Some(mut node) = self.node_below(&request.alias).await? {
            return node
                .command_container(to_node_below(caller, request)?)
                .await
                .map_err(ApiError::Relayed);
        }
        let mut container = self
            .container_endpoint(&caller.principal, &request.alias, CONTAINER_COMMAND_TIMEOUT)
            .await?;
        let command = wire::CommandRequest {
            command: request.command,
            args: request.args,
        };
        container
            .command(on_behalf_of(&caller.principal, command)?)
            .await
            .map_err(ApiError::Relayed)
    }

    /// A one-time ticket for the registered container `request.alias` to push to
    /// `request.peer`'s endpoint directly.
    pub(super) fn issue_push_ticket(
        &self,
        request: wire::OpenPushRequest,
    ) -> Result<wire::OpenPushResponse, ApiError> {
        self.authenticate(&request.alias, &request.lease)?;
        let origin = parse_alias(&request.alias)?;
        let peer = parse_alias(&request.peer)?;
        // A push is a send that bypasses the router: the same policies hold.
        self.access.check(
            &Principal::Container(origin.to_string()),
            Action::Send,
            peer.as_str(),
            &[],
        )?;
        let container = self
            .registry
            .get(peer.as_str())
            .ok_or_else(|| ApiError::Unknown(format!("no container is registered as {peer}")))?;
        if container.task.is_some() {
            return Err(ApiError::Unfit(format!(
                "{peer} is a task container: push to its host's alias or send through the node"
            )));
        }
        let endpoint = match (&container.spec.endpoint, container.attached) {
            (Some(endpoint), true) => endpoint.clone(),
            _ => {
                return Err(ApiError::Unfit(format!(
                    "{peer} is not attached with an endpoint"
                )));
            }
        };
        let ticket = self
            .push_tickets
            .issue(origin, peer)
            .ok_or_else(|| ApiError::Exhausted("too many push tickets outstanding".to_owned()))?;
        Ok(wire::OpenPushResponse { endpoint, ticket })
    }

    /// Redeems a push ticket for the container it was issued to: who it came from.
    pub(super) fn redeem_push_ticket(
        &self,
        request: wire::CheckPushRequest,
    ) -> Result<wire::CheckPushResponse, ApiError> {
        self.authenticate(&request.alias, &request.lease)?;
        let origin = self
            .push_tickets
            .redeem(&request.ticket, &request.alias)
            .ok_or_else(|| {
                ApiError::NotEntitled(
                    "the push ticket is unknown, used, expired or not yours".to_owned(),
                )
            })?;
        Ok(wire::CheckPushResponse {
            origin: origin.to_string(),
        })
    }
}
