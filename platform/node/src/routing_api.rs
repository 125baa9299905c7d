//! The Supervisor's messaging RPCs (routing.proto): wire messages in, [`Routing`]
//! changes, wire messages out. Errors become statuses here, once.

use reef_core::Alias;
use reef_proto as wire;
use tonic::Status;

use crate::{
    Registry,
    routing::{Group, Overflow, Routing, RoutingError, Strategy},
};

fn routing_status(error: RoutingError) -> Status {
    let message = error.to_string();
    match error {
        RoutingError::Invalid(_) => Status::invalid_argument(message),
        RoutingError::NotFound(_) => Status::not_found(message),
        RoutingError::Full(_) => Status::resource_exhausted(message),
    }
}

fn strategy(raw: i32) -> Result<Strategy, Status> {
    use wire::GroupStrategy as W;
    Ok(match W::try_from(raw) {
        Ok(W::Unspecified | W::RoundRobin) => Strategy::RoundRobin,
        Ok(W::Random) => Strategy::Random,
        Ok(W::Broadcast) => Strategy::Broadcast,
        Ok(W::ConsistentHash) => Strategy::ConsistentHash,
        Ok(W::LeastLoaded) => Strategy::LeastLoaded,
        Ok(W::FirstAvailable) => Strategy::FirstAvailable,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown group strategy {raw}"
            )));
        }
    })
}

fn strategy_to_wire(strategy: Strategy) -> wire::GroupStrategy {
    use wire::GroupStrategy as W;
    match strategy {
        Strategy::RoundRobin => W::RoundRobin,
        Strategy::Random => W::Random,
        Strategy::Broadcast => W::Broadcast,
        Strategy::ConsistentHash => W::ConsistentHash,
        Strategy::LeastLoaded => W::LeastLoaded,
        Strategy::FirstAvailable => W::FirstAvailable,
    }
}

/// A group as listed, with each member's state at the node.
pub(crate) fn group_to_wire(registry: &Registry, name: &str, group: &Group) -> wire::Group {
    wire::Group {
        name: name.to_owned(),
        strategy: strategy_to_wire(group.strategy) as i32,
        hash_key: group.hash_key.clone(),
        members: group
            .members
            .iter()
            .map(|alias| {
                let attachment = registry.lookup(alias.as_str());
                wire::GroupMember {
                    alias: alias.to_string(),
                    attached: attachment.is_some(),
                    queued: attachment.map_or(0, |a| a.queued() as u32),
                }
            })
            .collect(),
    }
}

pub(crate) fn configure_group(
    routing: &Routing,
    registry: &Registry,
    request: wire::ConfigureGroupRequest,
) -> Result<wire::ConfigureGroupResponse, Status> {
    let strategy = strategy(request.strategy)?;
    if strategy == Strategy::ConsistentHash && request.hash_key.is_empty() {
        return Err(Status::invalid_argument(
            "a consistent_hash group needs hash_key: the header whose value is hashed",
        ));
    }
    let group = routing
        .configure_group(&request.name, strategy, &request.hash_key)
        .map_err(routing_status)?;
    Ok(wire::ConfigureGroupResponse {
        group: Some(group_to_wire(registry, &request.name, &group)),
    })
}

pub(crate) fn join_group(
    routing: &Routing,
    registry: &Registry,
    request: wire::JoinGroupRequest,
) -> Result<wire::JoinGroupResponse, Status> {
    let group = routing
        .join(&request.group, &request.aliases)
        .map_err(routing_status)?;
    Ok(wire::JoinGroupResponse {
        group: Some(group_to_wire(registry, &request.group, &group)),
    })
}

pub(crate) fn leave_group(
    routing: &Routing,
    registry: &Registry,
    request: wire::LeaveGroupRequest,
) -> Result<wire::LeaveGroupResponse, Status> {
    let group = routing
        .leave(&request.group, &request.aliases)
        .map_err(routing_status)?;
    Ok(wire::LeaveGroupResponse {
        group: Some(group_to_wire(registry, &request.group, &group)),
    })
}

pub(crate) fn list_groups(routing: &Routing, registry: &Registry) -> wire::ListGroupsResponse {
    wire::ListGroupsResponse {
        groups: routing
            .groups()
            .iter()
            .map(|(name, group)| group_to_wire(registry, name, group))
            .collect(),
    }
}

fn overflow(raw: i32) -> Result<Overflow, Status> {
    use wire::OverflowPolicy as W;
    Ok(match W::try_from(raw) {
        Ok(W::Unspecified | W::Block) => Overflow::Block,
        Ok(W::Reject) => Overflow::Reject,
        Ok(W::DropNewest) => Overflow::DropNewest,
        Ok(W::DropOldest) => Overflow::DropOldest,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown overflow policy {raw}"
            )));
        }
    })
}

pub(crate) fn set_overflow(
    routing: &Routing,
    request: wire::SetOverflowRequest,
) -> Result<wire::SetOverflowResponse, Status> {
    let alias =
        Alias::parse(&request.alias).map_err(|e| Status::invalid_argument(e.to_string()))?;
    routing
        .set_overflow(alias, overflow(request.policy)?)
        .map_err(routing_status)?;
    Ok(wire::SetOverflowResponse {})
}

pub(crate) fn put_rule(
    routing: &Routing,
    request: wire::PutRuleRequest,
) -> Result<wire::PutRuleResponse, Status> {
    let rule = request
        .rule
        .ok_or_else(|| Status::invalid_argument("PutRuleRequest.rule is missing"))?;
    routing
        .put_rule(rule, &request.before)
        .map_err(routing_status)?;
    Ok(wire::PutRuleResponse {})
}

pub(crate) fn delete_rule(
    routing: &Routing,
    request: wire::DeleteRuleRequest,
) -> Result<wire::DeleteRuleResponse, Status> {
    routing.delete_rule(&request.id).map_err(routing_status)?;
    Ok(wire::DeleteRuleResponse {})
}

pub(crate) fn list_rules(routing: &Routing) -> wire::ListRulesResponse {
    let (rules, firewall) = routing.list_rules();
    wire::ListRulesResponse { rules, firewall }
}
