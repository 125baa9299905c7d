//! Router rules (Kraken's router rules and firewall mode): ordered matchers per stage,
//! each with an action, evaluated for every SEND and REQUEST while any rule exists.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use reef_core::Alias;
use reef_proto::{self as wire, Envelope, EnvelopeKind, RuleAction, RuleStage};

use super::{RoutingError, pattern::Pattern, validate_target};

/// Header a tap copy carries: the destination of the envelope it copies.
pub const TAP_HEADER: &str = "reef-tap-of";

/// Where a rule is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// As the envelope enters the node, before group resolution.
    Input,
    /// As it leaves for a receiver, after group resolution.
    Output,
}

/// The outcome of evaluating one stage's rules.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    /// Copies (taps) in rule order: where to, and the destination the envelope had
    /// when the rule matched (before any later redirect).
    pub copies: Vec<(String, String)>,
    /// Set when the envelope must not be delivered.
    pub refusal: Option<Refusal>,
}

/// Why an envelope is not delivered.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Discarded silently, into the dead letters.
    Drop(String),
    /// Refused to the sender with PERMISSION_DENIED.
    Reject(String),
}

/// One compiled rule.
#[derive(Debug)]
pub(crate) struct Rule {
    id: String,
    stage: Stage,
    destination: Pattern,
    origin: Pattern,
    name: Pattern,
    kind: Option<EnvelopeKind>,
    headers: Vec<(String, Pattern)>,
    action: RuleAction,
    target: String,
    propagate: bool,
    limit: u64,
    hits: AtomicU64,
    /// As given, for listing.
    source: wire::Rule,
}

impl Rule {
    /// Validates and compiles a rule from the wire.
    pub(crate) fn compile(source: wire::Rule) -> Result<Self, RoutingError> {
        let invalid = |why: String| RoutingError::Invalid(format!("rule {:?}: {why}", source.id));
        Alias::parse(&source.id).map_err(|e| invalid(format!("id: {}", e.reason)))?;
        let action = RuleAction::try_from(source.action)
            .ok()
            .filter(|a| *a != RuleAction::Unspecified)
            .ok_or_else(|| {
                invalid("action must be route, redirect, copy, drop or reject".into())
            })?;
        let needs_target = matches!(action, RuleAction::Redirect | RuleAction::Copy);
        match (needs_target, source.target.is_empty()) {
            (true, true) => return Err(invalid("redirect and copy need a target".into())),
            (false, false) => {
                return Err(invalid("only redirect and copy take a target".into()));
            }
            (true, false) => validate_target(&source.target).map_err(|e| invalid(e.to_string()))?,
            (false, true) => {}
        }
        let stage = match RuleStage::try_from(source.stage) {
            Ok(RuleStage::Unspecified | RuleStage::Input) => Stage::Input,
            Ok(RuleStage::Output) => Stage::Output,
            Err(_) => return Err(invalid(format!("unknown stage {}", source.stage))),
        };
        let matcher = source.r#match.clone().unwrap_or_default();
        let kind = match matcher.kind.as_str() {
            "" => None,
            "send" => Some(EnvelopeKind::Send),
            "request" => Some(EnvelopeKind::Request),
            other => {
                return Err(invalid(format!(
                    "match.kind {other:?} is not \"send\" or \"request\""
                )));
            }
        };
        let mut headers: Vec<_> = matcher
            .headers
            .iter()
            .map(|(key, pattern)| (key.clone(), Pattern::parse(pattern)))
            .collect();
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        let mut source = source;
        source.stage = match stage {
            Stage::Input => RuleStage::Input,
            Stage::Output => RuleStage::Output,
        } as i32;
        source.hits = 0;
        Ok(Self {
            id: source.id.clone(),
            stage,
            destination: Pattern::parse(&matcher.destination),
            origin: Pattern::parse(&matcher.origin),
            name: Pattern::parse(&matcher.name),
            kind,
            headers,
            action,
            target: source.target.clone(),
            propagate: source.propagate,
            limit: source.limit,
            hits: AtomicU64::new(0),
            source,
        })
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The rule as listed, with its hits.
    pub(crate) fn to_wire(&self) -> wire::Rule {
        wire::Rule {
            hits: self.hits.load(Relaxed),
            ..self.source.clone()
        }
    }

    /// Whether the rule needs the sender's behaviour name.
    fn needs_name(&self) -> bool {
        !self.name.is_any()
    }

    fn matches(&self, envelope: &Envelope, name: Option<&str>) -> bool {
        self.kind.is_none_or(|kind| kind == envelope.kind())
            && self.destination.matches(&envelope.destination)
            && self.origin.matches(&envelope.origin)
            && self.name.matches_option(name)
            && self.headers.iter().all(|(key, pattern)| {
                pattern.matches_option(envelope.headers.get(key).map(String::as_str))
            })
    }

    /// Counts a hit; false once the limit is used up (the rule is inert).
    fn take_hit(&self) -> bool {
        if self.limit == 0 {
            self.hits.fetch_add(1, Relaxed);
            return true;
        }
        self.hits
            .fetch_update(Relaxed, Relaxed, |hits| {
                (hits < self.limit).then_some(hits + 1)
            })
            .is_ok()
    }
}

/// The rules of one node, by stage, and whether the firewall is on. Immutable: a change
/// builds a new set, which routers pick up between envelopes.
#[derive(Debug, Default)]
pub(crate) struct RuleSet {
    pub(crate) rules: Vec<std::sync::Arc<Rule>>,
    pub(crate) firewall: bool,
}

impl RuleSet {
    /// Whether routing can skip evaluation altogether.
    pub(crate) fn is_inert(&self) -> bool {
        self.rules.is_empty() && !self.firewall
    }

    /// Evaluates `stage` for `envelope`, applying redirects to its destination.
    /// `name_of` gives a sender's behaviour name; it is called only if a rule needs it.
    pub(crate) fn evaluate(
        &self,
        stage: Stage,
        envelope: &mut Envelope,
        name_of: impl Fn(&str) -> Option<String>,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        let mut allowed = false;
        let mut name: Option<Option<String>> = None;
        for rule in self.rules.iter().filter(|rule| rule.stage == stage) {
            let sender_name = match rule.needs_name() {
                true => name
                    .get_or_insert_with(|| name_of(&envelope.origin))
                    .as_deref(),
                false => None,
            };
            if !rule.matches(envelope, sender_name) || !rule.take_hit() {
                continue;
            }
            match rule.action {
                RuleAction::Copy => {
                    let tapped = envelope.destination.clone();
                    verdict.copies.push((rule.target.clone(), tapped));
                    continue;
                }
                RuleAction::Route | RuleAction::Unspecified => allowed = true,
                RuleAction::Redirect => {
                    allowed = true;
                    envelope.destination.clone_from(&rule.target);
                }
                RuleAction::Drop => {
                    verdict.refusal = Some(Refusal::Drop(format!("dropped by rule {:?}", rule.id)));
                    return verdict;
                }
                RuleAction::Reject => {
                    verdict.refusal =
                        Some(Refusal::Reject(format!("rejected by rule {:?}", rule.id)));
                    return verdict;
                }
            }
            if !rule.propagate {
                break;
            }
        }
        if self.firewall && stage == Stage::Input && !allowed {
            verdict.refusal = Some(Refusal::Reject(format!(
                "firewall: no rule allows {} to send to {}",
                envelope.origin, envelope.destination
            )));
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn rule(id: &str, action: RuleAction, destination: &str, target: &str) -> wire::Rule {
        wire::Rule {
            id: id.into(),
            action: action as i32,
            target: target.into(),
            r#match: Some(wire::RuleMatch {
                destination: destination.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn set(rules: Vec<wire::Rule>, firewall: bool) -> RuleSet {
        RuleSet {
            rules: rules
                .into_iter()
                .map(|r| Arc::new(Rule::compile(r).unwrap()))
                .collect(),
            firewall,
        }
    }

    fn send(to: &str) -> Envelope {
        Envelope {
            kind: EnvelopeKind::Send as i32,
            origin: "client/1".into(),
            destination: to.into(),
            ..Default::default()
        }
    }

    #[test]
    fn first_match_decides_unless_it_propagates() {
        let mut tap = rule("tap", RuleAction::Copy, "echo", "audit");
        tap.propagate = true;
        let rules = set(
            vec![
                tap,
                rule("move", RuleAction::Redirect, "echo", "echo2"),
                rule("never", RuleAction::Reject, "echo*", ""),
            ],
            false,
        );
        let mut envelope = send("echo");
        let verdict = rules.evaluate(Stage::Input, &mut envelope, |_| None);
        assert!(verdict.refusal.is_none());
        assert_eq!(verdict.copies, [("audit".to_owned(), "echo".to_owned())]);
        assert_eq!(envelope.destination, "echo2");
    }

    #[test]
    fn firewall_denies_what_no_rule_allows_and_limits_expire() {
        let mut once = rule("once", RuleAction::Route, "echo", "");
        once.limit = 1;
        let rules = set(vec![once], true);
        let verdict = rules.evaluate(Stage::Input, &mut send("echo"), |_| None);
        assert!(verdict.refusal.is_none());
        let verdict = rules.evaluate(Stage::Input, &mut send("echo"), |_| None);
        assert!(matches!(verdict.refusal, Some(Refusal::Reject(why)) if why.contains("firewall")));
        assert_eq!(rules.rules[0].to_wire().hits, 1);
    }

    #[test]
    fn matches_names_headers_and_kinds() {
        let mut by_name = rule("by-name", RuleAction::Drop, "", "");
        let matcher = by_name.r#match.as_mut().unwrap();
        matcher.name = "!trusted".into();
        matcher.kind = "send".into();
        matcher.headers.insert("tenant".into(), "a*".into());
        let rules = set(vec![by_name], false);
        let mut envelope = send("x");
        envelope.headers.insert("tenant".into(), "acme".into());
        let verdict = rules.evaluate(Stage::Input, &mut envelope, |_| Some("other".into()));
        assert!(matches!(verdict.refusal, Some(Refusal::Drop(_))));
        let verdict = rules.evaluate(Stage::Input, &mut envelope, |_| Some("trusted".into()));
        assert!(verdict.refusal.is_none());
        envelope.headers.clear();
        let verdict = rules.evaluate(Stage::Input, &mut envelope, |_| Some("other".into()));
        assert!(verdict.refusal.is_none(), "the header is required");
    }

    #[test]
    fn refuses_malformed_rules() {
        for (bad, expected) in [
            (rule("", RuleAction::Route, "", ""), "id"),
            (rule("a", RuleAction::Unspecified, "", ""), "action"),
            (rule("a", RuleAction::Redirect, "", ""), "target"),
            (rule("a", RuleAction::Drop, "", "x"), "target"),
            (rule("a", RuleAction::Copy, "", "no way"), "target"),
        ] {
            let error = Rule::compile(bad).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
