//! Create, destroy, start, stop, restart and batches of them as the node carries them
//! out: here, or forwarded to the child node below which the container lives; and a
//! container's report of its own failure.

use tonic::metadata::{Ascii, MetadataValue};

use super::*;

impl SupervisorService {
    /// A client for child node `child` at `hop`, presenting this node's certificate.
    pub(super) async fn child_node(
        &self,
        child: &str,
        hop: &NodeEndpoint,
    ) -> Result<SupervisorClient<tonic::transport::Channel>, ApiError> {
        let identity = Some(self.tls.pki().server().clone());
        let peer = reef_tls::node_identity(child);
        let channel =
            connect_endpoint(&hop.endpoint, &hop.ca_pem, &peer, identity, FORWARD_TIMEOUT)
                .await
                .map_err(|error| ApiError::Unreachable(format!("node {child}: {error}")))?;
        Ok(SupervisorClient::new(channel))
    }

    /// A client for the child node below which container `alias` lives, if it lives
    /// below this node: lifecycle calls and logs for it go there, hop by hop.
    pub(super) async fn node_below(
        &self,
        alias: &str,
    ) -> Result<Option<SupervisorClient<tonic::transport::Channel>>, ApiError> {
        match self.children.below(&self.registry, alias) {
            None => Ok(None),
            Some((child, hop)) => self.child_node(&child, &hop).await.map(Some),
        }
    }

    /// Sends `request` for another node down the tree, towards that node.
    pub(super) async fn forward_create(
        &self,
        caller: &Caller,
        request: wire::CreateRequest,
    ) -> Result<wire::CreateResponse, ApiError> {
        let (child, hop) = self
            .children
            .next_hop(&self.registry, &request.node)
            .ok_or_else(|| {
                ApiError::Unknown(format!(
                    "no node named {:?} is linked below node {:?}",
                    request.node, self.node.name
                ))
            })?;
        let mut node = self.child_node(&child, &hop).await?;
        relayed(node.create(to_node_below(caller, request)?)).await
    }

    /// Joins a created container to the groups its definition names.
    pub(super) fn join_groups(&self, alias: &str, groups: &[String]) -> Result<(), ApiError> {
        for group in groups {
            routing::join_group(
                &self.routing,
                &self.registry,
                wire::JoinGroupRequest {
                    group: group.clone(),
                    aliases: vec![alias.to_owned()],
                },
            )?;
        }
        Ok(())
    }

    pub(super) async fn create_one(
        &self,
        caller: &Caller,
        request: wire::CreateRequest,
    ) -> Result<wire::CreateResponse, ApiError> {
        if !request.node.is_empty() && request.node != self.node.name {
            return self.forward_create(caller, request).await;
        }
        let raw = request.definition.ok_or_else(|| {
            ApiError::BadRequest("CreateRequest.definition is missing".to_owned())
        })?;
        let parent = (!raw.parent.is_empty()).then_some(raw.parent.as_str());
        self.check_subtree(&caller.principal, Action::Create, &raw.alias, parent)?;
        self.check_inherit_env(&caller.principal, &raw)?;
        let groups = raw.groups.clone();
        let alias = raw.alias.clone();
        let policy = raw.overflow;
        let mut created = self.create_container(raw, request.flags).await?;
        created.container = created
            .container
            .map(|info| seen_by(&caller.principal, info));
        self.join_groups(&alias, &groups)?;
        if policy != 0 {
            routing::set_overflow(&self.routing, wire::SetOverflowRequest { alias, policy })?;
        }
        Ok(created)
    }

    /// Refuses a definition that inherits reefd's own environment (cloud credentials,
    /// say) unless an administrator asks: whoever may create a container could otherwise
    /// read the node's secrets through it. A node without policies (a development node
    /// open to anonymous callers) refuses nothing.
    fn check_inherit_env(
        &self,
        caller: &Principal,
        definition: &wire::ContainerDefinition,
    ) -> Result<(), ApiError> {
        let inherits = matches!(
            &definition.kind,
            Some(wire::container_definition::Kind::Process(process)) if process.inherit_env
        );
        if !inherits || matches!(caller, Principal::Admin(_)) || self.access.policies().is_none() {
            return Ok(());
        }
        Err(ApiError::NotEntitled(format!(
            "{caller} may not create {:?} with inherit_env: only an administrator may give a container the node's own environment",
            definition.alias
        )))
    }

    pub(super) async fn create_container(
        &self,
        raw: wire::ContainerDefinition,
        flags: i32,
    ) -> Result<wire::CreateResponse, ApiError> {
        if let Some(task) = convert::task_definition(&raw)? {
            let (container, created) =
                hosting::start_task(&self.registry, &self.task_grants, &self.tls.pki(), task)
                    .await?;
            return Ok(wire::CreateResponse {
                container: Some(container_info(container)),
                created,
            });
        }
        let definition = convert::definition(raw)?;
        let flag = convert::create_flag(flags)?;
        let alias = definition.alias.clone();
        let created = self
            .supervision
            .create(definition, flag)
            .await
            .map_err(ApiError::from)?;
        Ok(wire::CreateResponse {
            container: Some(container_info(self.supervised(&alias)?)),
            created,
        })
    }

    pub(super) async fn destroy_one(
        &self,
        caller: &Caller,
        request: wire::DestroyRequest,
    ) -> Result<wire::DestroyResponse, ApiError> {
        let alias = parse_alias(&request.alias)?;
        if let Some(mut node) = self.node_below(alias.as_str()).await? {
            return relayed(node.destroy(to_node_below(caller, request)?)).await;
        }
        self.check_subtree(&caller.principal, Action::Destroy, alias.as_str(), None)?;
        let mode = convert::stop_mode(request.flags)?;
        if let Some(task) = self.registry.get(alias.as_str()).and_then(|c| c.task) {
            hosting::stop_task(&self.registry, &self.tls.pki(), &alias, &task.host).await?;
            self.routing.forget_member(&alias);
            return Ok(wire::DestroyResponse {
                destroyed: vec![alias.to_string()],
            });
        }
        let destroyed = self
            .supervision
            .destroy(alias, mode)
            .await
            .map_err(ApiError::from)?;
        for alias in &destroyed {
            self.routing.forget_member(alias);
        }
        Ok(wire::DestroyResponse {
            destroyed: destroyed.into_iter().map(String::from).collect(),
        })
    }

    /// The registry's view of a supervised container after a lifecycle call on it.
    pub(super) fn supervised(&self, alias: &Alias) -> Result<ContainerSnapshot, ApiError> {
        self.registry
            .get(alias.as_str())
            .ok_or_else(|| SupervisionError::NotFound(alias.to_string()).into())
    }

    /// Start, Stop and Restart act on processes; a task's host restarts it.
    pub(super) fn refuse_task(&self, alias: &Alias, what: &str) -> Result<(), ApiError> {
        match self.registry.get(alias.as_str()).and_then(|c| c.task) {
            Some(task) => Err(ApiError::Unfit(format!(
                "{alias} is a task container in {}: it cannot be {what} on its own (its host restarts it after a panic); destroy and create it instead",
                task.host
            ))),
            None => Ok(()),
        }
    }

    /// Checks `caller` doing `action` to `alias`, which rules on its supervision
    /// ancestors cover too (from `parent` on, for one not registered yet).
    pub(super) fn check_subtree(
        &self,
        caller: &Principal,
        action: Action,
        alias: &str,
        parent: Option<&str>,
    ) -> Result<(), ApiError> {
        Ok(self
            .access
            .check_subtree(&*self.registry, caller, action, alias, parent)?)
    }

    pub(super) async fn start_one(
        &self,
        caller: &Caller,
        request: wire::StartRequest,
    ) -> Result<wire::StartResponse, ApiError> {
        let alias = parse_alias(&request.alias)?;
        if let Some(mut node) = self.node_below(alias.as_str()).await? {
            return relayed(node.start(to_node_below(caller, request)?)).await;
        }
        self.check_subtree(&caller.principal, Action::Start, alias.as_str(), None)?;
        self.refuse_task(&alias, "started")?;
        self.supervision
            .start_container(alias.clone())
            .await
            .map_err(ApiError::from)?;
        Ok(wire::StartResponse {
            container: Some(seen_by(
                &caller.principal,
                container_info(self.supervised(&alias)?),
            )),
        })
    }

    pub(super) async fn stop_one(
        &self,
        caller: &Caller,
        request: wire::StopRequest,
    ) -> Result<wire::StopResponse, ApiError> {
        let alias = parse_alias(&request.alias)?;
        if let Some(mut node) = self.node_below(alias.as_str()).await? {
            return relayed(node.stop(to_node_below(caller, request)?)).await;
        }
        self.check_subtree(&caller.principal, Action::Stop, alias.as_str(), None)?;
        self.refuse_task(&alias, "stopped")?;
        let mode = convert::stop_mode(request.flags)?;
        self.supervision
            .stop(alias.clone(), mode)
            .await
            .map_err(ApiError::from)?;
        Ok(wire::StopResponse {
            container: Some(seen_by(
                &caller.principal,
                container_info(self.supervised(&alias)?),
            )),
        })
    }

    pub(super) async fn restart_one(
        &self,
        caller: &Caller,
        request: wire::RestartRequest,
    ) -> Result<wire::RestartResponse, ApiError> {
        let alias = parse_alias(&request.alias)?;
        if let Some(mut node) = self.node_below(alias.as_str()).await? {
            return relayed(node.restart(to_node_below(caller, request)?)).await;
        }
        self.check_subtree(&caller.principal, Action::Restart, alias.as_str(), None)?;
        self.refuse_task(&alias, "restarted")?;
        self.supervision.restart(alias.clone()).await?;
        Ok(wire::RestartResponse {
            container: Some(seen_by(
                &caller.principal,
                container_info(self.supervised(&alias)?),
            )),
        })
    }

    /// Runs the operations in order, each with its own outcome; after a failure the
    /// rest are skipped if the batch says so.
    pub(super) async fn run_batch(
        &self,
        caller: &Caller,
        request: wire::BatchRequest,
    ) -> wire::BatchResponse {
        use wire::batch_operation::Operation;
        let mut results = Vec::with_capacity(request.operations.len());
        let mut aborted = false;
        for operation in request.operations {
            let (alias, outcome) = match operation.operation {
                _ if aborted => (String::new(), Err(ApiError::Skipped)),
                Some(Operation::Create(create)) => {
                    let alias = create
                        .definition
                        .as_ref()
                        .map(|d| d.alias.clone())
                        .unwrap_or_default();
                    (alias, self.create_one(caller, create).await.map(drop))
                }
                Some(Operation::Destroy(destroy)) => (
                    destroy.alias.clone(),
                    self.destroy_one(caller, destroy).await.map(drop),
                ),
                Some(Operation::Start(start)) => (
                    start.alias.clone(),
                    self.start_one(caller, start).await.map(drop),
                ),
                Some(Operation::Stop(stop)) => (
                    stop.alias.clone(),
                    self.stop_one(caller, stop).await.map(drop),
                ),
                None => (
                    String::new(),
                    Err(ApiError::BadRequest("empty batch operation".to_owned())),
                ),
            };
            aborted |= outcome.is_err() && request.stop_on_error;
            results.push(batch_result(alias, outcome));
        }
        wire::BatchResponse { results }
    }

    /// A supervised container reports a failure of its own, which its solver chain
    /// then handles.
    pub(super) async fn fail_container(&self, request: wire::FailRequest) -> Result<(), ApiError> {
        let alias = parse_alias(&request.alias)?;
        if !self.registry.holds_lease(alias.as_str(), &request.lease) {
            return Err(ApiError::NotEntitled(format!(
                "the lease does not match the registration of {alias}"
            )));
        }
        if request.error_type.is_empty() {
            return Err(ApiError::BadRequest(
                "FailRequest.error_type is empty".to_owned(),
            ));
        }
        let failure = Failure {
            error_type: request.error_type,
            message: request.message,
            normal: false,
        };
        Ok(self.supervision.fail(alias, failure).await?)
    }
}

/// One operation's outcome, as Batch and Host report it.
pub(super) fn batch_result(alias: String, outcome: Result<(), ApiError>) -> wire::BatchResult {
    let (code, message) = match outcome.map_err(Status::from) {
        Ok(()) => (0, String::new()),
        Err(status) => (status.code() as i32, status.message().to_owned()),
    };
    wire::BatchResult {
        alias,
        code,
        message,
    }
}

/// The answer of a call forwarded to another node, its refusal passed on as it is.
async fn relayed<T>(
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<T, ApiError> {
    Ok(call.await.map_err(ApiError::Relayed)?.into_inner())
}

/// `message` as a call this node makes to one of its containers on behalf of `caller`
/// (see `reef_proto::ON_BEHALF_OF_METADATA`).
pub(super) fn on_behalf_of<T>(caller: &Principal, message: T) -> Result<Request<T>, ApiError> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        reef_proto::ON_BEHALF_OF_METADATA,
        principal_metadata(caller)?,
    );
    Ok(request)
}

/// `message` as a call this node forwards to a node below on behalf of `caller`, whose
/// rights the node that acts checks: with the caller's certificate chain, which that
/// node must believe too (`reef_proto::ON_BEHALF_OF_CHAIN_METADATA`). Refused for a
/// caller whom this node alone believes.
pub(super) fn to_node_below<T>(caller: &Caller, message: T) -> Result<Request<T>, ApiError> {
    let acting_for = caller.forwardable()?;
    let mut request = on_behalf_of(&acting_for.principal, message)?;
    if let Some(chain) = acting_for.chain {
        request.metadata_mut().insert_bin(
            reef_proto::ON_BEHALF_OF_CHAIN_METADATA,
            MetadataValue::from_bytes(&reef_tls::vouch::encode_chain(&chain)),
        );
    }
    Ok(request)
}

fn principal_metadata(principal: &Principal) -> Result<MetadataValue<Ascii>, ApiError> {
    MetadataValue::try_from(principal.to_string())
        .map_err(|_| ApiError::BadRequest(format!("{principal} cannot go in metadata")))
}
