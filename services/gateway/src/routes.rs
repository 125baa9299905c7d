//! Path patterns (`/users/{id}`, `/files/{*rest}`) and the first-match route table.

use std::collections::BTreeMap;

/// A parsed path pattern.
#[derive(Debug, Clone)]
pub struct Pattern(Vec<Segment>);

#[derive(Debug, Clone)]
enum Segment {
    Literal(String),
    /// `{name}`: one segment.
    Param(String),
    /// `{*name}`: the rest of the path (last only).
    Rest(String),
}

impl Pattern {
    /// Parses a pattern: it starts with '/'; `{name}` stands for one segment and
    /// `{*name}` for the rest of the path.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(body) = text.strip_prefix('/') else {
            return Err("a path starts with '/'".to_owned());
        };
        let mut segments = Vec::new();
        let parts: Vec<&str> = match body.is_empty() {
            true => Vec::new(),
            false => body.split('/').collect(),
        };
        for (index, part) in parts.iter().enumerate() {
            let segment = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(rest) if rest.starts_with('*') => {
                    if index + 1 != parts.len() {
                        return Err(format!("{{{rest}}} must be the last segment"));
                    }
                    Segment::Rest(rest[1..].to_owned())
                }
                Some(name) => Segment::Param(name.to_owned()),
                None if part.contains(['{', '}']) => {
                    return Err(format!(
                        "segment {part:?}: a parameter is a whole segment, {{name}}"
                    ));
                }
                None => Segment::Literal((*part).to_owned()),
            };
            if let Segment::Param(name) | Segment::Rest(name) = &segment
                && (name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            {
                return Err(format!(
                    "parameter name {name:?}: use letters, digits and '_'"
                ));
            }
            segments.push(segment);
        }
        Ok(Self(segments))
    }

    /// The parameters if `path` matches.
    pub fn matches(&self, path: &str) -> Option<BTreeMap<String, String>> {
        let body = path.strip_prefix('/')?;
        let mut parts: Vec<&str> = match body.is_empty() {
            true => Vec::new(),
            false => body.split('/').collect(),
        };
        let mut params = BTreeMap::new();
        for (index, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Rest(name) => {
                    params.insert(name.clone(), parts[index.min(parts.len())..].join("/"));
                    parts.clear();
                    return Some(params);
                }
                Segment::Literal(literal) => {
                    if parts.get(index) != Some(&literal.as_str()) {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    let value = parts.get(index).filter(|v| !v.is_empty())?;
                    params.insert(name.clone(), (*value).to_owned());
                }
            }
        }
        (parts.len() == self.0.len()).then_some(params)
    }
}

/// A route as the gateway uses it.
#[derive(Debug, Clone)]
pub struct Route {
    /// Upper-case method, or `*`.
    pub method: String,
    pub pattern: Pattern,
    pub to: String,
}

/// Routes in the order of the file: the first that matches takes the request.
#[derive(Debug, Clone, Default)]
pub struct RouteTable(Vec<Route>);

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        Self(routes)
    }

    /// The route for `method` and `path`, and the path's parameters.
    pub fn find(&self, method: &str, path: &str) -> Option<(&Route, BTreeMap<String, String>)> {
        self.0.iter().find_map(|route| {
            if route.method != "*" && route.method != method {
                return None;
            }
            route.pattern.matches(path).map(|params| (route, params))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_segments_and_the_rest() {
        let users = Pattern::parse("/users/{id}").unwrap();
        assert_eq!(users.matches("/users/7").unwrap()["id"], "7");
        assert!(users.matches("/users/7/x").is_none());
        assert!(users.matches("/users/").is_none());
        assert!(users.matches("/users").is_none());
        let files = Pattern::parse("/files/{*rest}").unwrap();
        assert_eq!(files.matches("/files/a/b.txt").unwrap()["rest"], "a/b.txt");
        assert_eq!(files.matches("/files").unwrap()["rest"], "");
        let root = Pattern::parse("/").unwrap();
        assert!(root.matches("/").is_some());
        assert!(root.matches("/x").is_none());
        for bad in ["users", "/a/{*rest}/b", "/a/x{id}", "/a/{}", "/a/{i-d}"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }
}
