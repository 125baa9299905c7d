//! The wire forms of rules and group strategies (`routing.proto`), converted at the
//! edge of this crate: everything inside works with the domain types.

use reef_core::Alias;
use reef_proto as wire;

use crate::{
    ListedRule, MessageKind, Overflow, RoutingError, RuleAction, RuleMatch, RuleSpec, Stage,
    Strategy,
};

impl TryFrom<wire::Rule> for RuleSpec {
    type Error = RoutingError;

    fn try_from(rule: wire::Rule) -> Result<Self, RoutingError> {
        let invalid = |why: String| RoutingError::Invalid(format!("rule {:?}: {why}", rule.id));
        Alias::parse(&rule.id).map_err(|e| invalid(format!("id: {}", e.reason)))?;
        let action = match wire::RuleAction::try_from(rule.action) {
            Ok(wire::RuleAction::Route) => RuleAction::Route,
            Ok(wire::RuleAction::Redirect) => RuleAction::Redirect,
            Ok(wire::RuleAction::Copy) => RuleAction::Copy,
            Ok(wire::RuleAction::Drop) => RuleAction::Drop,
            Ok(wire::RuleAction::Reject) => RuleAction::Reject,
            Ok(wire::RuleAction::Unspecified) | Err(_) => {
                return Err(invalid(
                    "action must be route, redirect, copy, drop or reject".into(),
                ));
            }
        };
        let stage = match wire::RuleStage::try_from(rule.stage) {
            Ok(wire::RuleStage::Unspecified | wire::RuleStage::Input) => Stage::Input,
            Ok(wire::RuleStage::Output) => Stage::Output,
            Err(_) => return Err(invalid(format!("unknown stage {}", rule.stage))),
        };
        let matcher = rule.r#match.unwrap_or_default();
        let kind = match matcher.kind.as_str() {
            "" => None,
            "send" => Some(MessageKind::Send),
            "request" => Some(MessageKind::Request),
            other => {
                return Err(invalid(format!(
                    "match.kind {other:?} is not \"send\" or \"request\""
                )));
            }
        };
        let spec = RuleSpec {
            id: rule.id,
            stage,
            matcher: RuleMatch {
                destination: matcher.destination,
                origin: matcher.origin,
                name: matcher.name,
                kind,
                headers: matcher.headers.into_iter().collect(),
            },
            action,
            target: rule.target,
            propagate: rule.propagate,
            limit: rule.limit,
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl From<ListedRule> for wire::Rule {
    fn from(listed: ListedRule) -> Self {
        let ListedRule { spec, hits } = listed;
        let action = match spec.action {
            RuleAction::Route => wire::RuleAction::Route,
            RuleAction::Redirect => wire::RuleAction::Redirect,
            RuleAction::Copy => wire::RuleAction::Copy,
            RuleAction::Drop => wire::RuleAction::Drop,
            RuleAction::Reject => wire::RuleAction::Reject,
        };
        let stage = match spec.stage {
            Stage::Input => wire::RuleStage::Input,
            Stage::Output => wire::RuleStage::Output,
        };
        let kind = match spec.matcher.kind {
            None => "",
            Some(MessageKind::Send) => "send",
            Some(MessageKind::Request) => "request",
        };
        wire::Rule {
            id: spec.id,
            stage: stage as i32,
            r#match: Some(wire::RuleMatch {
                destination: spec.matcher.destination,
                origin: spec.matcher.origin,
                name: spec.matcher.name,
                kind: kind.to_owned(),
                headers: spec.matcher.headers.into_iter().collect(),
            }),
            action: action as i32,
            target: spec.target,
            propagate: spec.propagate,
            limit: spec.limit,
            hits,
        }
    }
}

impl Strategy {
    /// The strategy a `GroupStrategy` value names (UNSPECIFIED: round-robin).
    pub fn from_wire(raw: i32) -> Result<Self, RoutingError> {
        use wire::GroupStrategy as W;
        match W::try_from(raw) {
            Ok(W::Unspecified | W::RoundRobin) => Ok(Self::RoundRobin),
            Ok(W::Random) => Ok(Self::Random),
            Ok(W::Broadcast) => Ok(Self::Broadcast),
            Ok(W::ConsistentHash) => Ok(Self::ConsistentHash),
            Ok(W::LeastLoaded) => Ok(Self::LeastLoaded),
            Ok(W::FirstAvailable) => Ok(Self::FirstAvailable),
            Err(_) => Err(RoutingError::Invalid(format!(
                "unknown group strategy {raw}"
            ))),
        }
    }

    /// The strategy on the wire.
    pub fn to_wire(self) -> wire::GroupStrategy {
        use wire::GroupStrategy as W;
        match self {
            Self::RoundRobin => W::RoundRobin,
            Self::Random => W::Random,
            Self::Broadcast => W::Broadcast,
            Self::ConsistentHash => W::ConsistentHash,
            Self::LeastLoaded => W::LeastLoaded,
            Self::FirstAvailable => W::FirstAvailable,
        }
    }
}

impl Overflow {
    /// The policy an `OverflowPolicy` value names (UNSPECIFIED: block).
    pub fn from_wire(raw: i32) -> Result<Self, RoutingError> {
        use wire::OverflowPolicy as W;
        match W::try_from(raw) {
            Ok(W::Unspecified | W::Block) => Ok(Self::Block),
            Ok(W::Reject) => Ok(Self::Reject),
            Ok(W::DropNewest) => Ok(Self::DropNewest),
            Ok(W::DropOldest) => Ok(Self::DropOldest),
            Err(_) => Err(RoutingError::Invalid(format!(
                "unknown overflow policy {raw}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_survives_the_round_trip_and_bad_enums_are_refused() {
        let given = wire::Rule {
            id: "tap".into(),
            stage: wire::RuleStage::Output as i32,
            r#match: Some(wire::RuleMatch {
                destination: "echo*".into(),
                kind: "request".into(),
                headers: [("tenant".to_owned(), "a*".to_owned())].into(),
                ..Default::default()
            }),
            action: wire::RuleAction::Copy as i32,
            target: "audit".into(),
            propagate: true,
            limit: 3,
            hits: 0,
        };
        let spec = RuleSpec::try_from(given.clone()).unwrap();
        assert_eq!(spec.matcher.kind, Some(MessageKind::Request));
        let listed = wire::Rule::from(ListedRule { spec, hits: 0 });
        assert_eq!(listed, given);

        for (bad, expected) in [
            (
                wire::Rule {
                    action: 0,
                    ..given.clone()
                },
                "action",
            ),
            (
                wire::Rule {
                    action: 99,
                    ..given.clone()
                },
                "action",
            ),
            (
                wire::Rule {
                    stage: 99,
                    ..given.clone()
                },
                "stage",
            ),
        ] {
            let error = RuleSpec::try_from(bad).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
        assert!(Strategy::from_wire(99).is_err());
        assert_eq!(
            Strategy::from_wire(Strategy::LeastLoaded.to_wire() as i32),
            Ok(Strategy::LeastLoaded)
        );
    }
}
