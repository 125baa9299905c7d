//! Project files: which containers `reef up` starts.

use std::{collections::BTreeMap, collections::HashSet, path::Path};

use anyhow::{Context as _, bail};
use reef_core::Alias;
use serde::Deserialize;
use toml::Spanned;

use crate::{
    definition::PolicySpec,
    routing::{GroupSpec, RuleSpec, overflow_policy},
};

/// The demo project shipped with reef, run by `reef up` without a file.
pub const DEMO: &str = include_str!("../../../examples/demo/reef.toml");

/// A parsed and validated project file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// Project-wide settings.
    pub project: ProjectInfo,
    /// The containers to start, in order (with where each is in the file, for errors).
    #[serde(default, rename = "container")]
    containers: Vec<Spanned<ContainerDef>>,
    /// Groups with their strategies, configured before any container starts.
    #[serde(default, rename = "group")]
    groups: Vec<Spanned<GroupSpec>>,
    /// Router rules, in evaluation order, in force before any container starts.
    #[serde(default, rename = "rule")]
    rules: Vec<Spanned<RuleSpec>>,
    /// Node-wide routing settings.
    #[serde(default)]
    pub routing: RoutingSettings,
}

/// `[routing]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSettings {
    /// Refuse sends and requests that no route or redirect rule allows.
    #[serde(default)]
    pub firewall: bool,
}

/// `[project]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectInfo {
    /// Shown in `reef up`'s output.
    pub name: String,
}

/// `[[container]]`: one OS process the node runs and supervises.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerDef {
    /// The container's unique address.
    pub alias: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// The parent container's alias.
    #[serde(default)]
    pub parent: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How the node supervises it.
    #[serde(default)]
    pub policy: PolicySpec,
    /// Groups it joins.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Its mailbox's overflow policy: block, reject, drop_newest or drop_oldest.
    #[serde(default)]
    pub overflow: Option<String>,
    /// `reef up` goes on without it, with a warning, when it cannot be started (a
    /// program that needs what this machine may lack).
    #[serde(default)]
    pub optional: bool,
    /// Starts from the environment of the node's process instead of a clean one (PATH,
    /// `env` and REEF_* only). For trusted programs that need the user's setup.
    #[serde(default)]
    pub inherit_env: bool,
}

impl Project {
    /// Reads `path`, or the demo project when `None`.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        match path {
            None => Self::parse(DEMO, "the built-in demo project"),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read project file {}", path.display()))?;
                Self::parse(&text, &path.display().to_string())
            }
        }
    }

    /// Parses and validates project text; `origin` names it in errors, which give the
    /// line and the field.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let project: Project =
            toml::from_str(text).with_context(|| format!("invalid project file {origin}"))?;
        let line = |span: std::ops::Range<usize>| text[..span.start].matches('\n').count() + 1;
        let mut seen = HashSet::new();
        for (index, spanned) in project.containers.iter().enumerate() {
            let container = spanned.get_ref();
            let at = format!(
                "{origin}:{}: container #{} ({:?})",
                line(spanned.span()),
                index + 1,
                container.alias
            );
            Alias::parse(&container.alias).with_context(|| format!("{at}: field `alias`"))?;
            if !seen.insert(container.alias.as_str()) {
                bail!("{at}: field `alias`: the alias is used twice");
            }
            if container
                .command
                .first()
                .is_none_or(|program| program.is_empty())
            {
                bail!("{at}: field `command` must name a program");
            }
            if let Some(parent) = &container.parent {
                Alias::parse(parent).with_context(|| format!("{at}: field `parent`"))?;
            }
            container
                .policy
                .to_wire()
                .with_context(|| format!("{at}: field `policy`"))?;
            if let Some(policy) = &container.overflow {
                overflow_policy(policy).with_context(|| format!("{at}: field `overflow`"))?;
            }
        }
        for (index, group) in project.groups.iter().enumerate() {
            group.get_ref().to_wire().with_context(|| {
                let (at, name) = (line(group.span()), &group.get_ref().name);
                format!("{origin}:{at}: group #{} ({name:?})", index + 1)
            })?;
        }
        for (index, rule) in project.rules.iter().enumerate() {
            rule.get_ref().to_wire().with_context(|| {
                let (at, id) = (line(rule.span()), &rule.get_ref().id);
                format!("{origin}:{at}: rule #{} ({id:?})", index + 1)
            })?;
        }
        Ok(project)
    }

    /// The containers, in order.
    pub fn containers(&self) -> impl Iterator<Item = &ContainerDef> {
        self.containers.iter().map(Spanned::get_ref)
    }

    /// The groups, in order.
    pub fn groups(&self) -> impl Iterator<Item = &GroupSpec> {
        self.groups.iter().map(Spanned::get_ref)
    }

    /// The rules, in evaluation order.
    pub fn rules(&self) -> impl Iterator<Item = &RuleSpec> {
        self.rules.iter().map(Spanned::get_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_project_is_valid() {
        let demo = Project::load(None).unwrap();
        let aliases: Vec<_> = demo.containers().map(|c| c.alias.as_str()).collect();
        assert_eq!(
            aliases,
            ["echo", "counter", "ticker", "chat", "gateway", "py-upper"]
        );
    }

    #[test]
    fn groups_rules_and_the_firewall_are_read_and_checked() {
        let text = r#"
            [project]
            name = "shop"
            [routing]
            firewall = true
            [[group]]
            name = "carts"
            strategy = "consistent_hash"
            hash_key = "user"
            [[rule]]
            id = "audit"
            action = "copy"
            target = "auditor"
            propagate = true
            destination = "cart/*"
            headers = ["tenant=a*"]
            [[container]]
            alias = "cart/1"
            command = ["cart"]
            groups = ["carts"]
        "#;
        let project = Project::parse(text, "shop.toml").unwrap();
        assert!(project.routing.firewall);
        assert_eq!(project.containers().next().unwrap().groups, ["carts"]);
        let rule = project.rules().next().unwrap().to_wire().unwrap();
        assert_eq!(rule.action, reef_proto::RuleAction::Copy as i32);
        assert_eq!(rule.r#match.unwrap().headers["tenant"], "a*");
        let bad = text.replace("\"copy\"", "\"teleport\"");
        let error = format!("{:#}", Project::parse(&bad, "shop.toml").unwrap_err());
        assert!(
            error.contains("rule #1") && error.contains("teleport"),
            "{error}"
        );
    }

    #[test]
    fn errors_name_the_container_and_field() {
        let bad_alias = "[project]\nname='x'\n[[container]]\nalias='no way'\ncommand=['x']\n";
        let error = format!("{:#}", Project::parse(bad_alias, "p.toml").unwrap_err());
        assert!(
            error.contains("container #1") && error.contains("`alias`"),
            "{error}"
        );
        let unknown =
            "[project]\nname='x'\n[[container]]\nalias='a'\ncommand=['x']\nrestart='always'\n";
        let bad_policy = "[project]\nname='x'\n[[container]]\nalias='a'\ncommand=['x']\n[container.policy]\nrestart='always'\n";
        let error = format!("{:#}", Project::parse(bad_policy, "p.toml").unwrap_err());
        assert!(
            error.contains("policy") && error.contains("always"),
            "{error}"
        );
        let error = format!("{:#}", Project::parse(unknown, "p.toml").unwrap_err());
        assert!(
            error.contains("restart") && error.contains("line"),
            "{error}"
        );
        let twice = "[project]\nname='x'\n[[container]]\nalias='a'\ncommand=['x']\n[[container]]\nalias='a'\ncommand=['y']\n";
        assert!(format!("{:#}", Project::parse(twice, "p").unwrap_err()).contains("twice"));
    }
}
