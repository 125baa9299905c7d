//! Groups and router rules as users write them: `reef group` / `reef rule` flags and
//! `[[group]]` / `[[rule]]` tables in project files, turned into `reef.v1` messages.

use std::collections::BTreeMap;

use anyhow::Context as _;
use reef_proto as wire;
use serde::Deserialize;

use crate::definition::enum_value;

/// A group's strategy and hash key.
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// The group's name (sends go to `group:NAME`).
    pub name: String,
    /// round_robin, random, broadcast, consistent_hash, least_loaded or first_available.
    #[arg(long, default_value = "round_robin")]
    #[serde(default = "round_robin")]
    pub strategy: String,
    /// consistent_hash: the envelope header whose value is hashed.
    #[arg(long)]
    #[serde(default)]
    pub hash_key: Option<String>,
}

fn round_robin() -> String {
    "round_robin".to_owned()
}

impl GroupSpec {
    /// The ConfigureGroup call for this spec.
    pub fn to_wire(&self) -> anyhow::Result<wire::ConfigureGroupRequest> {
        let strategy = enum_value(&self.strategy, "GROUP_STRATEGY_", "group strategy", |n| {
            wire::GroupStrategy::from_str_name(n).map(|v| v as i32)
        })?;
        Ok(wire::ConfigureGroupRequest {
            name: self.name.clone(),
            strategy,
            hash_key: self.hash_key.clone().unwrap_or_default(),
        })
    }
}

/// `block`, `reject`, `drop_newest` or `drop_oldest` as the wire's overflow policy.
pub fn overflow_policy(raw: &str) -> anyhow::Result<i32> {
    enum_value(raw, "OVERFLOW_POLICY_", "overflow policy", |n| {
        wire::OverflowPolicy::from_str_name(n).map(|v| v as i32)
    })
}

/// A router rule.
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// The rule's unique id.
    pub id: String,
    /// route, redirect, copy, drop or reject.
    #[arg(long)]
    pub action: String,
    /// redirect and copy: where to (an alias or group:NAME).
    #[arg(long)]
    #[serde(default)]
    pub target: Option<String>,
    /// input (as envelopes enter the node) or output (as they leave for a receiver).
    #[arg(long, default_value = "input")]
    #[serde(default = "input")]
    pub stage: String,
    /// Glob on the destination (`*`, `?`, leading `!` negates).
    #[arg(long)]
    #[serde(default)]
    pub destination: Option<String>,
    /// Glob on the sender's alias.
    #[arg(long)]
    #[serde(default)]
    pub origin: Option<String>,
    /// Glob on the sender's behaviour name.
    #[arg(long)]
    #[serde(default)]
    pub name: Option<String>,
    /// send or request (default: both).
    #[arg(long)]
    #[serde(default)]
    pub kind: Option<String>,
    /// A header that must match, KEY=GLOB (repeatable).
    #[arg(long = "header", value_name = "KEY=GLOB")]
    #[serde(default)]
    pub headers: Vec<String>,
    /// Continue with the next rule after this one matched.
    #[arg(long)]
    #[serde(default)]
    pub propagate: bool,
    /// Apply to at most this many envelopes (0 = no limit).
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub limit: u64,
}

fn input() -> String {
    "input".to_owned()
}

impl RuleSpec {
    /// The wire rule; names checked here so the user hears which one is wrong.
    pub fn to_wire(&self) -> anyhow::Result<wire::Rule> {
        let action = enum_value(&self.action, "RULE_ACTION_", "rule action", |n| {
            wire::RuleAction::from_str_name(n).map(|v| v as i32)
        })?;
        let stage = enum_value(&self.stage, "RULE_STAGE_", "rule stage", |n| {
            wire::RuleStage::from_str_name(n).map(|v| v as i32)
        })?;
        let mut headers = BTreeMap::new();
        for pair in &self.headers {
            let (key, glob) = pair
                .split_once('=')
                .with_context(|| format!("header matcher {pair:?} is not KEY=GLOB"))?;
            headers.insert(key.to_owned(), glob.to_owned());
        }
        Ok(wire::Rule {
            id: self.id.clone(),
            stage,
            r#match: Some(wire::RuleMatch {
                destination: self.destination.clone().unwrap_or_default(),
                origin: self.origin.clone().unwrap_or_default(),
                name: self.name.clone().unwrap_or_default(),
                kind: self.kind.clone().unwrap_or_default(),
                headers: headers.into_iter().collect(),
            }),
            action,
            target: self.target.clone().unwrap_or_default(),
            propagate: self.propagate,
            limit: self.limit,
            hits: 0,
        })
    }
}

/// One line describing a rule, as `reef rule list` prints it.
pub fn describe_rule(rule: &wire::Rule) -> String {
    let name = |raw: &str, prefix: &str| raw.trim_start_matches(prefix).to_ascii_lowercase();
    let stage = name(rule.stage().as_str_name(), "RULE_STAGE_");
    let action = name(rule.action().as_str_name(), "RULE_ACTION_");
    let mut matchers = Vec::new();
    if let Some(m) = &rule.r#match {
        for (field, glob) in [
            ("destination", &m.destination),
            ("origin", &m.origin),
            ("name", &m.name),
            ("kind", &m.kind),
        ] {
            if !glob.is_empty() {
                matchers.push(format!("{field}={glob}"));
            }
        }
        let mut headers: Vec<_> = m.headers.iter().collect();
        headers.sort();
        matchers.extend(headers.into_iter().map(|(k, v)| format!("header:{k}={v}")));
    }
    let matchers = match matchers.is_empty() {
        true => "*".to_owned(),
        false => matchers.join(" "),
    };
    let target = match rule.target.is_empty() {
        true => String::new(),
        false => format!(" → {}", rule.target),
    };
    let limit = match rule.limit {
        0 => String::new(),
        limit => format!("/{limit}"),
    };
    let propagate = if rule.propagate { " (propagate)" } else { "" };
    format!(
        "{:<16} {stage:<6} {matchers} ⇒ {action}{target}{propagate}  hits {}{limit}",
        rule.id, rule.hits
    )
}
