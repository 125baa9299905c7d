//! Register, Deregister and Join: containers and child nodes announce themselves; each
//! gets a lease and, over TLS, the certificate its endpoint serves.

use reef_core::{check_node_name, link_alias, millis};
use reef_tls::certificate_names;

use crate::api::identity::Chain;

use super::{snapshots::container_spec, *};

impl SupervisorService {
    /// Links child node `request.node` below this one; `chain` is the certificate it
    /// presented.
    pub(super) fn join_node(
        &self,
        chain: Option<Chain>,
        request: wire::JoinRequest,
    ) -> Result<wire::JoinResponse, ApiError> {
        check_node_name(&request.node).map_err(ApiError::BadRequest)?;
        // Only a node holding a certificate for its name may link under it (the TLS
        // handshake already checked that the cluster's CA signed it).
        let identity = reef_tls::node_identity(&request.node);
        if !self.node.insecure
            && !chain.is_some_and(|chain| certificate_names(&chain[0], &identity))
        {
            return Err(ApiError::NotEntitled(format!(
                "joining as node {:?} needs a client certificate naming {identity} from this cluster's CA (reef ca issue)",
                request.node
            )));
        }
        if request.node == self.node.name {
            return Err(ApiError::BadRequest(format!(
                "node {:?} cannot join a node of the same name",
                request.node
            )));
        }
        if request.session.is_empty() || request.session.len() > 64 {
            return Err(ApiError::BadRequest(
                "JoinRequest.session must be 1-64 characters, new for each start of the node"
                    .to_owned(),
            ));
        }
        let endpoint = match request.endpoint.is_empty() {
            true => None,
            false => {
                endpoint_host(&request.endpoint)?;
                Some(request.endpoint.clone())
            }
        };
        let alias = parse_alias(&link_alias(&request.node))?;
        let spec = ContainerSpec {
            alias: alias.clone(),
            name: "node".to_owned(),
            parent: None,
            endpoint: endpoint.clone(),
            pid: None,
            labels: [("reef.node".to_owned(), request.node.clone())].into(),
        };
        let lease = self.registry.join_link(spec, &request.session)?;
        if let Some(endpoint) = endpoint {
            self.children.record(
                &request.node,
                NodeEndpoint {
                    endpoint,
                    ca_pem: request.ca_pem,
                },
            );
        }
        tracing::info!(node = %request.node, "a child node joined");
        Ok(wire::JoinResponse {
            alias: alias.to_string(),
            lease,
            node: self.node.name.clone(),
            session: self.node.session.clone(),
        })
    }

    pub(super) fn register_container(
        &self,
        caller: &Principal,
        request: wire::RegisterRequest,
    ) -> Result<wire::RegisterResponse, ApiError> {
        let token = (!request.token.is_empty()).then(|| request.token.clone());
        let spec = container_spec(request)?;
        reef_access::check_claim(caller, spec.alias.as_str())?;
        // A supervised container's alias is claimed with its token (checked by the
        // registry); any other registration creates a container.
        if self
            .registry
            .get(spec.alias.as_str())
            .is_none_or(|existing| existing.supervised.is_none())
        {
            let parent = spec.parent.as_ref().map(|p| p.as_str());
            self.check_subtree(caller, Action::Create, spec.alias.as_str(), parent)?;
        }
        // The endpoint's certificate names the alias, not the host it registered: a
        // registrant chooses that, and must not get a certificate that passes for the
        // node (or anyone) there.
        let certified = match &spec.endpoint {
            Some(endpoint) => {
                endpoint_host(endpoint)?;
                Some(self.tls.pki().issue_endpoint(spec.alias.as_str())?)
            }
            None => None,
        };
        let alias = spec.alias.clone();
        let lease = self.registry.register(spec, token.as_deref())?;
        tracing::info!(%alias, "registered");
        let limits = self.registry.limits();
        let (endpoint_cert_pem, endpoint_key_pem) =
            certified.map_or_else(Default::default, |c| (c.cert_pem, c.key_pem));
        Ok(wire::RegisterResponse {
            lease,
            heartbeat_interval_ms: millis(limits.heartbeat_interval),
            heartbeat_timeout_ms: millis(limits.heartbeat_timeout),
            max_payload_bytes: limits.max_payload_bytes as u32,
            node: self.node.name.clone(),
            endpoint_cert_pem,
            endpoint_key_pem,
            max_frame_bytes: limits.max_frame_bytes as u32,
            attach_timeout_ms: millis(limits.attach_timeout),
        })
    }

    /// A container gives its alias up; only its own identity and lease may.
    pub(super) fn deregister_container(
        &self,
        caller: &Principal,
        request: wire::DeregisterRequest,
    ) -> Result<(), ApiError> {
        reef_access::check_claim(caller, &request.alias)?;
        Ok(self.registry.deregister(&request.alias, &request.lease)?)
    }
}
