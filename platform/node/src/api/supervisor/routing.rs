//! The Supervisor's messaging RPCs (routing.proto): wire messages in, [`Routing`]
//! changes, wire messages out. Errors are [`ApiError`]s, which the service turns into
//! statuses.

use reef_core::Alias;
use reef_proto as wire;
use reef_routing::{Group, Overflow, Routing, RuleSpec, Strategy};

use crate::Registry;
use crate::api::error::ApiError;

/// A group as listed, with each member's state at the node.
pub(crate) fn group_to_wire(registry: &Registry, name: &str, group: &Group) -> wire::Group {
    wire::Group {
        name: name.to_owned(),
        strategy: group.strategy().to_wire() as i32,
        hash_key: group.hash_key().to_owned(),
        members: group
            .members()
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
) -> Result<wire::ConfigureGroupResponse, ApiError> {
    let strategy = Strategy::from_wire(request.strategy)?;
    if strategy == Strategy::ConsistentHash && request.hash_key.is_empty() {
        return Err(ApiError::BadRequest(
            "a consistent_hash group needs hash_key: the header whose value is hashed".into(),
        ));
    }
    let group = routing.configure_group(&request.name, strategy, &request.hash_key)?;
    Ok(wire::ConfigureGroupResponse {
        group: Some(group_to_wire(registry, &request.name, &group)),
    })
}

pub(crate) fn join_group(
    routing: &Routing,
    registry: &Registry,
    request: wire::JoinGroupRequest,
) -> Result<wire::JoinGroupResponse, ApiError> {
    let group = routing.join(&request.group, &request.aliases)?;
    Ok(wire::JoinGroupResponse {
        group: Some(group_to_wire(registry, &request.group, &group)),
    })
}

pub(crate) fn leave_group(
    routing: &Routing,
    registry: &Registry,
    request: wire::LeaveGroupRequest,
) -> Result<wire::LeaveGroupResponse, ApiError> {
    let group = routing.leave(&request.group, &request.aliases)?;
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

pub(crate) fn set_overflow(
    routing: &Routing,
    request: wire::SetOverflowRequest,
) -> Result<wire::SetOverflowResponse, ApiError> {
    let alias = Alias::parse(&request.alias)?;
    routing.set_overflow(alias, Overflow::from_wire(request.policy)?)?;
    Ok(wire::SetOverflowResponse {})
}

pub(crate) fn put_rule(
    routing: &Routing,
    request: wire::PutRuleRequest,
) -> Result<wire::PutRuleResponse, ApiError> {
    let rule = request
        .rule
        .ok_or_else(|| ApiError::BadRequest("PutRuleRequest.rule is missing".into()))?;
    let rule = RuleSpec::try_from(rule)?;
    routing.put_rule(rule, &request.before)?;
    Ok(wire::PutRuleResponse {})
}

pub(crate) fn delete_rule(
    routing: &Routing,
    request: wire::DeleteRuleRequest,
) -> Result<wire::DeleteRuleResponse, ApiError> {
    routing.delete_rule(&request.id)?;
    Ok(wire::DeleteRuleResponse {})
}

pub(crate) fn list_rules(routing: &Routing) -> wire::ListRulesResponse {
    let (rules, firewall) = routing.list_rules();
    wire::ListRulesResponse {
        rules: rules.into_iter().map(wire::Rule::from).collect(),
        firewall,
    }
}
