//! Policies: ordered rules saying who may do what to which aliases and state keys.
//!
//! ```toml
//! [[policy]]
//! name = "workers-call-the-db"
//! who = ["container:worker*"]      # principals: admin:, client:, container:, node:, anonymous
//! may = ["send"]                   # send, create, destroy, start, stop, restart, manage,
//!                                  # read, write, configure, or "*"
//! on = ["db"]                      # aliases, state namespaces, files:PATH, or
//!                                  # group:/rule:/inspect: names
//!
//! [[policy]]
//! name = "no-secrets"
//! effect = "deny"
//! who = ["*"]
//! may = ["read", "write"]
//! on = ["secrets/*"]
//! ```
//!
//! The first rule that matches decides; when none does, the call is denied by the
//! implicit policy `default`. Patterns are the router's globs. For the management
//! actions a rule on an alias covers its subtree: `on = ["workers"]` lets its holder
//! stop `workers/3` and any container whose supervision parent chain reaches
//! `workers`. Admins (`reef://admin/…` certificates) are not subject to policies.

use std::{fmt, path::Path};

use reef_core::Pattern;
use serde::Deserialize;

use super::Principal;

/// Something a principal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SEND or REQUEST an envelope to an alias.
    Send,
    /// Create a container (on its alias and parent chain).
    Create,
    /// Destroy a container and its subtree.
    Destroy,
    /// Start a stopped container.
    Start,
    /// Stop a container (also: report a failure for it).
    Stop,
    /// Restart a container.
    Restart,
    /// Read state keys (get, list, watch, compare), and see containers (`inspect:ALIAS`:
    /// list, tree, watch, logs, ping, dead letters), groups (`group:NAME`) and rules
    /// (`rule:ID`).
    Read,
    /// Write state keys (put, delete, compact).
    Write,
    /// Change routing: groups, rules, the firewall, overflow policies.
    Configure,
}

impl Action {
    const ALL: [Action; 9] = [
        Action::Send,
        Action::Create,
        Action::Destroy,
        Action::Start,
        Action::Stop,
        Action::Restart,
        Action::Read,
        Action::Write,
        Action::Configure,
    ];
    const MANAGE: [Action; 5] = [
        Action::Create,
        Action::Destroy,
        Action::Start,
        Action::Stop,
        Action::Restart,
    ];

    fn name(self) -> &'static str {
        match self {
            Action::Send => "send",
            Action::Create => "create",
            Action::Destroy => "destroy",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
            Action::Read => "read",
            Action::Write => "write",
            Action::Configure => "configure",
        }
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }

    /// The actions a `may` entry names.
    fn parse(word: &str) -> Option<&'static [Action]> {
        match word {
            "*" => Some(&Self::ALL),
            "manage" => Some(&Self::MANAGE),
            _ => Self::ALL
                .iter()
                .position(|action| action.name() == word)
                .map(|i| &Self::ALL[i..=i]),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a policy file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("policy file {path}: {reason}")]
pub struct PolicyError {
    /// The file.
    pub path: String,
    /// What is wrong, naming the rule.
    pub reason: String,
}

/// A refusal, naming the policy that refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The rule's name, or `default` when no rule matched.
    pub policy: String,
    /// For humans: who was refused what, and by which policy.
    pub message: String,
}

/// The rules of one policy file, in order.
#[derive(Debug, Default)]
pub struct Policies {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    name: String,
    allow: bool,
    who: Vec<Pattern>,
    may: u16,
    on: Vec<Target>,
}

/// What a rule's `on` entry names.
#[derive(Debug)]
enum Target {
    /// Aliases, namespaces or names matching a glob, or with an ancestor that does.
    Matching(Pattern),
    /// A glob with [`SELF`] in it, the caller's own name put in at each decision. It is
    /// matched against the target alone, not its ancestors: `{self}` lets a container
    /// manage itself, not everything it parents.
    OfCaller(String),
}

/// In a rule's `on`: the caller's name (the part of `kind:name` after the colon).
pub const SELF: &str = "{self}";

/// The built-in policy, in force when a node has no policy file: the text of a policy
/// file, so that it can be printed, edited and used as one.
pub const DEFAULT_POLICY: &str = include_str!("default.toml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    policy: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default = "allow")]
    effect: String,
    who: Vec<String>,
    may: Vec<String>,
    on: Vec<String>,
}

fn allow() -> String {
    "allow".to_owned()
}

impl Policies {
    /// Reads and checks the policy file at `path`.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let error = |reason: String| PolicyError {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        Self::parse(&text).map_err(error)
    }

    /// Parses policy text (TOML, `[[policy]]` tables).
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut rules = Vec::with_capacity(file.policy.len());
        for raw in file.policy {
            let name = raw.name;
            if name.is_empty() || name == "default" {
                return Err(format!(
                    "a policy needs a name other than \"default\" (got {name:?})"
                ));
            }
            if rules.iter().any(|rule: &Rule| rule.name == name) {
                return Err(format!("two policies are named {name:?}"));
            }
            let allow = match raw.effect.as_str() {
                "allow" => true,
                "deny" => false,
                other => {
                    return Err(format!(
                        "policy {name:?}: effect {other:?} is neither \"allow\" nor \"deny\""
                    ));
                }
            };
            let mut may = 0;
            for word in &raw.may {
                let actions = Action::parse(word).ok_or_else(|| {
                    format!(
                        "policy {name:?}: unknown action {word:?} (send, create, destroy, start, stop, restart, manage, read, write, configure, *)"
                    )
                })?;
                may |= actions.iter().fold(0, |bits, action| bits | action.bit());
            }
            for (field, list) in [("who", &raw.who), ("may", &raw.may), ("on", &raw.on)] {
                if list.is_empty() {
                    return Err(format!(
                        "policy {name:?}: `{field}` is empty (use [\"*\"] for everything)"
                    ));
                }
            }
            rules.push(Rule {
                name,
                allow,
                who: raw.who.iter().map(|p| Pattern::parse(p)).collect(),
                may,
                on: raw.on.iter().map(|raw| Target::parse(raw)).collect(),
            });
        }
        Ok(Self { rules })
    }

    /// The built-in policy ([`DEFAULT_POLICY`]).
    pub fn builtin() -> Self {
        // Checked by the tests: the text is part of the build.
        Self::parse(DEFAULT_POLICY).expect("the built-in policy parses")
    }

    /// Whether `principal` may do `action` to `target`. `scope` is what else a rule may
    /// name to cover it: the target's supervision ancestors, nearest first.
    pub fn decide(
        &self,
        principal: &Principal,
        action: Action,
        target: &str,
        scope: &[String],
    ) -> Result<(), Denial> {
        if matches!(principal, Principal::Admin(_)) {
            return Ok(());
        }
        self.decide_for(&principal.to_string(), action, target, scope)
    }

    /// [`Policies::decide`] for a principal already in its text form (`kind:name`),
    /// which must not be an admin's: the router keeps it in a buffer.
    pub fn decide_for(
        &self,
        who: &str,
        action: Action,
        target: &str,
        scope: &[String],
    ) -> Result<(), Denial> {
        let name = who.split_once(':').map(|(_, name)| name);
        let covers = |on: &Target| match on {
            Target::Matching(pattern) => {
                pattern.matches(target) || scope.iter().any(|ancestor| pattern.matches(ancestor))
            }
            Target::OfCaller(raw) => {
                name.is_some_and(|name| Pattern::parse(&raw.replace(SELF, name)).matches(target))
            }
        };
        let rule = self.rules.iter().find(|rule| {
            rule.may & action.bit() != 0
                && rule.who.iter().any(|p| p.matches(who))
                && rule.on.iter().any(covers)
        });
        match rule {
            Some(rule) if rule.allow => Ok(()),
            Some(rule) => Err(Denial {
                policy: rule.name.clone(),
                message: format!(
                    "denied by policy {:?}: {who} may not {action} {target:?}",
                    rule.name
                ),
            }),
            None => Err(Denial {
                policy: "default".to_owned(),
                message: format!(
                    "denied by policy \"default\": no policy lets {who} {action} {target:?}"
                ),
            }),
        }
    }
}

impl Target {
    fn parse(raw: &str) -> Self {
        match raw.contains(SELF) {
            true => Self::OfCaller(raw.to_owned()),
            false => Self::Matching(Pattern::parse(raw)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
        [[policy]]
        name = "no-secrets"
        effect = "deny"
        who = ["*"]
        may = ["read", "write"]
        on = ["secrets/*"]

        [[policy]]
        name = "ops-manage-workers"
        who = ["client:ops"]
        may = ["manage"]
        on = ["workers"]

        [[policy]]
        name = "config"
        who = ["client:*", "container:*"]
        may = ["read", "write"]
        on = ["*"]
    "#;

    fn client(name: &str) -> Principal {
        Principal::Client(name.to_owned())
    }

    #[test]
    fn the_first_matching_rule_decides_and_nothing_matching_denies() {
        let policies = Policies::parse(TEXT).unwrap();
        let denial = policies
            .decide(&client("ops"), Action::Read, "secrets/key", &[])
            .unwrap_err();
        assert_eq!(denial.policy, "no-secrets");
        assert!(
            denial.message.contains("client:ops may not read"),
            "{denial:?}"
        );
        assert!(
            policies
                .decide(&client("ops"), Action::Write, "config/a", &[])
                .is_ok()
        );
        let denial = policies
            .decide(&Principal::Anonymous, Action::Read, "config/a", &[])
            .unwrap_err();
        assert_eq!(denial.policy, "default");
        // Admins are above policies.
        assert!(
            policies
                .decide(
                    &Principal::Admin("a".into()),
                    Action::Read,
                    "secrets/x",
                    &[]
                )
                .is_ok()
        );
    }

    #[test]
    fn a_rule_on_an_alias_covers_its_subtree() {
        let policies = Policies::parse(TEXT).unwrap();
        let ops = client("ops");
        assert!(policies.decide(&ops, Action::Stop, "workers", &[]).is_ok());
        let chain = ["pool".to_owned(), "workers".to_owned()];
        assert!(policies.decide(&ops, Action::Destroy, "w3", &chain).is_ok());
        assert!(
            policies
                .decide(&ops, Action::Create, "w3", &chain[..1])
                .is_err()
        );
        assert!(policies.decide(&ops, Action::Send, "workers", &[]).is_err());
        assert!(
            policies
                .decide(&client("eve"), Action::Stop, "workers", &[])
                .is_err()
        );
    }

    #[test]
    fn mistakes_in_the_file_are_named() {
        for (text, expected) in [
            (
                "[[policy]]\nname='a'\nwho=['*']\nmay=['fly']\non=['*']",
                "unknown action \"fly\"",
            ),
            (
                "[[policy]]\nname='a'\nwho=[]\nmay=['send']\non=['*']",
                "`who` is empty",
            ),
            (
                "[[policy]]\nname='a'\neffect='maybe'\nwho=['*']\nmay=['send']\non=['*']",
                "neither",
            ),
            (
                "[[policy]]\nname='default'\nwho=['*']\nmay=['send']\non=['*']",
                "other than",
            ),
            (
                "[[policy]]\nname='a'\nwho=['*']\nmay=['send']",
                "missing field `on`",
            ),
        ] {
            let error = Policies::parse(text).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn the_builtin_policy_lets_each_kind_do_its_own_work_only() {
        let policies = Policies::builtin();
        let container = Principal::Container("web".into());
        let allowed = |who: &Principal, action, target: &str, scope: &[String]| {
            policies.decide(who, action, target, scope).is_ok()
        };
        assert!(allowed(&container, Action::Send, "api", &[]));
        assert!(allowed(&container, Action::Write, "sessions", &[]));
        assert!(!allowed(&container, Action::Write, "files:x", &[]));
        assert!(allowed(&container, Action::Create, "web", &[]));
        assert!(allowed(&container, Action::Create, "web/worker-1", &[]));
        assert!(allowed(&container, Action::Stop, "web/worker-1", &[]));
        // Not a name outside its subtree, even as its child; not a sibling's subtree.
        let under_web = ["web".to_owned()];
        assert!(!allowed(&container, Action::Create, "payments", &under_web));
        assert!(!allowed(&container, Action::Create, "webx/1", &[]));
        assert!(!allowed(&container, Action::Configure, "group:web", &[]));
        // It sees its own subtree, and no other container, group or rule.
        assert!(allowed(&container, Action::Read, "inspect:web", &[]));
        assert!(allowed(
            &container,
            Action::Read,
            "inspect:web/worker-1",
            &[]
        ));
        for other in [
            "inspect:api",
            "inspect:webx",
            "group:web",
            "rule:r",
            "files:x",
        ] {
            assert!(!allowed(&container, Action::Read, other, &[]), "{other}");
        }

        let client = Principal::Client("ops".into());
        assert!(allowed(&client, Action::Send, "api", &[]));
        assert!(allowed(&client, Action::Read, "config", &[]));
        assert!(allowed(&client, Action::Create, "client/42-1f", &[]));
        assert!(!allowed(&client, Action::Read, "inspect:api", &[]));
        for action in [
            Action::Write,
            Action::Create,
            Action::Stop,
            Action::Configure,
        ] {
            assert!(!allowed(&client, action, "api", &[]), "{action}");
        }

        let node = Principal::Node("edge".into());
        assert!(allowed(&node, Action::Send, "api", &[]));
        assert!(!allowed(&node, Action::Create, "api", &[]));
        assert!(!allowed(&node, Action::Read, "config", &[]));
        for action in Action::ALL {
            assert!(
                !allowed(&Principal::Anonymous, action, "x", &[]),
                "{action}"
            );
        }
        let admin = Principal::Admin("root".into());
        assert!(allowed(&admin, Action::Configure, "firewall", &[]));
    }
}
