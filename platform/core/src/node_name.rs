//! Node names and the aliases of the links between nodes.

/// Link aliases are `nodes/NAME`.
pub const LINK_PREFIX: &str = "nodes/";

/// On a child node, the alias of the link to its parent.
pub const PARENT_LINK: &str = "nodes/parent";

/// Longest node name.
const MAX_NODE_NAME: usize = 64;

/// Checks a node name: `[A-Za-z0-9._-]{1,64}`, starting with a letter or digit, and not
/// `parent` (the name of a child's link to its own parent).
pub fn check_node_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NODE_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(format!(
            "node name {name:?} must be 1-64 characters of [A-Za-z0-9._-], starting with a letter or digit"
        ));
    }
    if name == "parent" {
        return Err("node name \"parent\" is reserved for the link to a parent".to_owned());
    }
    Ok(())
}

/// The alias of the link to node `name`.
pub fn link_alias(name: &str) -> String {
    format!("{LINK_PREFIX}{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert!(check_node_name("edge-1.eu").is_ok());
        assert!(check_node_name("").is_err());
        assert!(check_node_name("-x").is_err());
        assert!(check_node_name("a/b").is_err());
        assert!(check_node_name("parent").is_err());
        assert!(check_node_name(&"x".repeat(65)).is_err());
    }
}
