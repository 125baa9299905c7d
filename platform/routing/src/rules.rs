//! Router rules (Kraken's router rules and firewall mode): ordered matchers per stage,
//! each with an action, evaluated for every SEND and REQUEST while any rule exists.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use reef_core::{Alias, Pattern};
use reef_proto::{Envelope, EnvelopeKind};

use crate::{RoutingError, validate_target};

/// Header a tap copy carries: the destination of the envelope it copies.
pub const TAP_HEADER: &str = "reef-tap-of";

/// Where a rule is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Stage {
    /// As the envelope enters the node, before group resolution.
    #[default]
    Input,
    /// As it leaves for a receiver, after group resolution.
    Output,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    /// Delivers as addressed (and, in firewall mode, allows).
    Route,
    /// Delivers to the rule's target instead.
    Redirect,
    /// Delivers, and a copy to the rule's target (a tap).
    Copy,
    /// Discards, into the dead letters.
    Drop,
    /// Refuses to the sender.
    Reject,
}

/// The kinds of envelope a rule can be limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// SEND.
    Send,
    /// REQUEST.
    Request,
}

/// What a rule matches; an empty pattern matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleMatch {
    /// The envelope's destination.
    pub destination: String,
    /// The sender's alias.
    pub origin: String,
    /// The sender's behaviour name.
    pub name: String,
    /// SEND or REQUEST only.
    pub kind: Option<MessageKind>,
    /// Header values, by header name.
    pub headers: BTreeMap<String, String>,
}

/// A rule as given: validated, not yet compiled (see `proto` for the wire form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// Unique among the node's rules; alias syntax.
    pub id: String,
    /// Where it is evaluated.
    pub stage: Stage,
    /// What it matches.
    pub matcher: RuleMatch,
    /// What it does.
    pub action: RuleAction,
    /// REDIRECT and COPY: an alias or `group:NAME`; empty otherwise.
    pub target: String,
    /// Whether evaluation goes on to the next rule after this one matched.
    pub propagate: bool,
    /// Matches after which the rule is inert (0: no limit).
    pub limit: u64,
}

impl RuleSpec {
    /// Checks what the types do not: the id's syntax, and that exactly REDIRECT and COPY
    /// have a target, which must be an alias or a group.
    pub fn validate(&self) -> Result<(), RoutingError> {
        let invalid = |why: String| RoutingError::Invalid(format!("rule {:?}: {why}", self.id));
        Alias::parse(&self.id).map_err(|e| invalid(format!("id: {}", e.reason)))?;
        let needs_target = matches!(self.action, RuleAction::Redirect | RuleAction::Copy);
        match (needs_target, self.target.is_empty()) {
            (true, true) => Err(invalid("redirect and copy need a target".into())),
            (false, false) => Err(invalid("only redirect and copy take a target".into())),
            (true, false) => validate_target(&self.target).map_err(|e| invalid(e.to_string())),
            (false, true) => Ok(()),
        }
    }
}

/// The outcome of evaluating one stage's rules.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Copies (taps) in rule order: where to, and the destination the envelope had
    /// when the rule matched (before any later redirect).
    pub copies: Vec<(String, String)>,
    /// Set when the envelope must not be delivered.
    pub refusal: Option<Refusal>,
}

/// Why an envelope is not delivered.
#[derive(Debug)]
pub enum Refusal {
    /// Discarded silently, into the dead letters.
    Drop(String),
    /// Refused to the sender with PERMISSION_DENIED.
    Reject(String),
}

/// A rule as listed: what was given, and how often it matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedRule {
    /// The rule.
    pub spec: RuleSpec,
    /// Matches so far.
    pub hits: u64,
}

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    destination: Pattern,
    origin: Pattern,
    name: Pattern,
    headers: Vec<(String, Pattern)>,
    hits: AtomicU64,
    spec: RuleSpec,
}

impl Rule {
    /// Validates and compiles a rule.
    pub fn compile(spec: RuleSpec) -> Result<Self, RoutingError> {
        spec.validate()?;
        let matcher = &spec.matcher;
        Ok(Self {
            destination: Pattern::parse(&matcher.destination),
            origin: Pattern::parse(&matcher.origin),
            name: Pattern::parse(&matcher.name),
            headers: matcher
                .headers
                .iter()
                .map(|(key, pattern)| (key.clone(), Pattern::parse(pattern)))
                .collect(),
            hits: AtomicU64::new(0),
            spec,
        })
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// The rule as listed, with its hits.
    pub fn listed(&self) -> ListedRule {
        ListedRule {
            spec: self.spec.clone(),
            hits: self.hits.load(Relaxed),
        }
    }

    /// Whether the rule needs the sender's behaviour name.
    fn needs_name(&self) -> bool {
        !self.name.is_any()
    }

    fn matches(&self, envelope: &Envelope, name: Option<&str>) -> bool {
        let kind = match envelope.kind() {
            EnvelopeKind::Send => Some(MessageKind::Send),
            EnvelopeKind::Request => Some(MessageKind::Request),
            _ => None,
        };
        self.spec
            .matcher
            .kind
            .is_none_or(|wanted| Some(wanted) == kind)
            && self.destination.matches(&envelope.destination)
            && self.origin.matches(&envelope.origin)
            && self.name.matches_option(name)
            && self.headers.iter().all(|(key, pattern)| {
                pattern.matches_option(envelope.headers.get(key).map(String::as_str))
            })
    }

    /// Counts a hit; false once the limit is used up (the rule is inert).
    fn take_hit(&self) -> bool {
        let limit = self.spec.limit;
        if limit == 0 {
            self.hits.fetch_add(1, Relaxed);
            return true;
        }
        self.hits
            .fetch_update(Relaxed, Relaxed, |hits| (hits < limit).then_some(hits + 1))
            .is_ok()
    }
}

/// The rules of one node, by stage, and whether the firewall is on. Immutable: a change
/// builds a new set, which routers pick up between envelopes.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// In evaluation order.
    pub rules: Vec<std::sync::Arc<Rule>>,
    /// Whether an input envelope no rule allows is refused.
    pub firewall: bool,
}

impl RuleSet {
    /// Whether routing can skip evaluation altogether.
    pub fn is_inert(&self) -> bool {
        self.rules.is_empty() && !self.firewall
    }

    /// Evaluates `stage` for `envelope`, applying redirects to its destination.
    /// `name_of` gives a sender's behaviour name; it is called only if a rule needs it.
    pub fn evaluate(
        &self,
        stage: Stage,
        envelope: &mut Envelope,
        name_of: impl Fn(&str) -> Option<String>,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        let mut allowed = false;
        let mut name: Option<Option<String>> = None;
        for rule in self.rules.iter().filter(|rule| rule.spec.stage == stage) {
            let sender_name = match rule.needs_name() {
                true => name
                    .get_or_insert_with(|| name_of(&envelope.origin))
                    .as_deref(),
                false => None,
            };
            if !rule.matches(envelope, sender_name) || !rule.take_hit() {
                continue;
            }
            match rule.spec.action {
                RuleAction::Copy => {
                    let tapped = envelope.destination.clone();
                    verdict.copies.push((rule.spec.target.clone(), tapped));
                    continue;
                }
                RuleAction::Route => allowed = true,
                RuleAction::Redirect => {
                    allowed = true;
                    envelope.destination.clone_from(&rule.spec.target);
                }
                RuleAction::Drop => {
                    verdict.refusal =
                        Some(Refusal::Drop(format!("dropped by rule {:?}", rule.id())));
                    return verdict;
                }
                RuleAction::Reject => {
                    verdict.refusal =
                        Some(Refusal::Reject(format!("rejected by rule {:?}", rule.id())));
                    return verdict;
                }
            }
            if !rule.spec.propagate {
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

    fn rule(id: &str, action: RuleAction, destination: &str, target: &str) -> RuleSpec {
        RuleSpec {
            id: id.into(),
            stage: Stage::Input,
            matcher: RuleMatch {
                destination: destination.into(),
                ..Default::default()
            },
            action,
            target: target.into(),
            propagate: false,
            limit: 0,
        }
    }

    fn set(rules: Vec<RuleSpec>, firewall: bool) -> RuleSet {
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
        assert_eq!(rules.rules[0].listed().hits, 1);
    }

    #[test]
    fn matches_names_headers_and_kinds() {
        let mut by_name = rule("by-name", RuleAction::Drop, "", "");
        let matcher = &mut by_name.matcher;
        matcher.name = "!trusted".into();
        matcher.kind = Some(MessageKind::Send);
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
            (rule("a", RuleAction::Redirect, "", ""), "target"),
            (rule("a", RuleAction::Drop, "", "x"), "target"),
            (rule("a", RuleAction::Copy, "", "no way"), "target"),
        ] {
            let error = Rule::compile(bad).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
