//! Glob patterns for rule matchers: `*` any run of characters, `?` one character, a
//! leading `!` negates, empty matches anything.

/// A compiled matcher pattern.
#[derive(Debug, Clone, Default)]
pub struct Pattern {
    glob: Box<str>,
    negate: bool,
}

impl Pattern {
    /// The pattern `raw` spells.
    pub fn parse(raw: &str) -> Self {
        match raw.strip_prefix('!') {
            Some(glob) => Self {
                glob: glob.into(),
                negate: true,
            },
            None => Self {
                glob: raw.into(),
                negate: false,
            },
        }
    }

    /// Whether the pattern says nothing (matches anything).
    pub fn is_any(&self) -> bool {
        self.glob.is_empty() && !self.negate
    }

    /// Whether `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        self.is_any() || glob(self.glob.as_bytes(), text.as_bytes()) != self.negate
    }

    /// For an optional value (a header): a negated pattern matches an absent one.
    pub fn matches_option(&self, text: Option<&str>) -> bool {
        match text {
            Some(text) => self.matches(text),
            None => self.negate || self.is_any(),
        }
    }
}

/// Wildcard matching with one backtracking point per `*`: linear in practice.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_negation_and_absence() {
        let cases = [
            ("", "anything", true),
            ("echo", "echo", true),
            ("echo", "echo2", false),
            ("work*", "worker/3", true),
            ("*/3", "worker/3", true),
            ("w?rker*", "worker/3", true),
            ("*a*b*c", "xxaxxbxxc", true),
            ("*a*b*c", "xxaxxbxx", false),
            ("!admin/*", "admin/x", false),
            ("!admin/*", "echo", true),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                Pattern::parse(pattern).matches(text),
                expected,
                "{pattern:?} vs {text:?}"
            );
        }
        assert!(Pattern::parse("!x").matches_option(None));
        assert!(!Pattern::parse("x*").matches_option(None));
    }
}
