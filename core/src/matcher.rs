//! Which agents a remote task is for: a PromQL-style label matcher (`=`, `!=`, `=~`, `!~`)
//! applied to an agent's resolved region.
//!
//! The Go system got every operator wrong (spec §8): `=` compared the ident with the string
//! `"="` and never matched, `!=` matched every agent, and the regex operators ran unanchored
//! against `region\xfeip`, so `^eu$` never matched while `eu` matched `eu-west`.
//! This matcher works as the README documented and as PromQL does (decision 8): the operators
//! see only the region, `=`/`!=` compare it whole and case-sensitively, and regexes are fully
//! anchored.

use std::fmt;
use std::str::FromStr;

use regex::{Regex, RegexBuilder};

use crate::model::Region;

/// Largest compiled program of a task regex, in bytes (the patterns come from an HTTP request).
pub const REGEX_SIZE_LIMIT_BYTES: usize = 1 << 20;

/// Largest lazy-DFA cache of a task regex, in bytes.
pub const REGEX_DFA_SIZE_LIMIT_BYTES: usize = 1 << 20;

/// The four PromQL matching operators.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum MatchOp {
    /// `=`: the region equals the pattern.
    Eq,
    /// `!=`: the region differs from the pattern.
    Ne,
    /// `=~`: the region matches the pattern as a whole (anchored regex).
    Re,
    /// `!~`: the region does not match the pattern as a whole.
    NotRe,
}

impl MatchOp {
    /// The operator as written in a task request (`=`, `!=`, `=~`, `!~`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::Re => "=~",
            Self::NotRe => "!~",
        }
    }
}

impl fmt::Display for MatchOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MatchOp {
    type Err = MatcherError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "=" => Ok(Self::Eq),
            "!=" => Ok(Self::Ne),
            "=~" => Ok(Self::Re),
            "!~" => Ok(Self::NotRe),
            _ => Err(MatcherError::UnknownOperator {
                op: text.to_owned(),
            }),
        }
    }
}

/// Why a task's region matcher was rejected.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MatcherError {
    /// The operator is not one of `=`, `!=`, `=~`, `!~`.
    #[error("unknown match operator {op:?}; expected one of \"=\", \"!=\", \"=~\", \"!~\"")]
    UnknownOperator {
        /// The operator as given.
        op: String,
    },
    /// The pattern of `=~` or `!~` is not a valid (or is too large a) regular expression.
    #[error("region pattern {pattern:?} is not a usable regular expression: {error}")]
    BadRegex {
        /// The pattern as given (before anchoring).
        pattern: String,
        /// What the regex compiler said.
        error: regex::Error,
    },
}

/// A compiled region matcher: an operator and its pattern.
#[derive(Clone, Debug)]
pub struct RegionMatcher {
    op: MatchOp,
    pattern: String,
    /// The anchored regex, for `=~` and `!~` only.
    regex: Option<Regex>,
}

impl RegionMatcher {
    /// Parses `op_text` and, for the regex operators, compiles `^(?:pattern)$`.
    ///
    /// # Errors
    /// [`MatcherError::UnknownOperator`] naming the operator, or [`MatcherError::BadRegex`]
    /// quoting the pattern and the compiler's message (also when the compiled regex would exceed
    /// [`REGEX_SIZE_LIMIT_BYTES`]).
    pub fn new(op_text: &str, pattern: &str) -> Result<Self, MatcherError> {
        let op = op_text.parse::<MatchOp>()?;
        let regex = match op {
            MatchOp::Eq | MatchOp::Ne => None,
            MatchOp::Re | MatchOp::NotRe => {
                let bad = |error| MatcherError::BadRegex {
                    pattern: pattern.to_owned(),
                    error,
                };
                // The pattern must be a regex on its own: otherwise `)|(` would compile to
                // `^(?:)|()$`, which escapes the anchors and matches every region.
                build_regex(pattern).map_err(bad)?;
                Some(build_regex(&format!("^(?:{pattern})$")).map_err(bad)?)
            }
        };
        Ok(Self {
            op,
            pattern: pattern.to_owned(),
            regex,
        })
    }

    /// Whether an agent of `region` is selected.
    #[must_use]
    pub fn matches(&self, region: &Region) -> bool {
        let name = region.as_str();
        match (self.op, &self.regex) {
            (MatchOp::Eq, _) => name == self.pattern,
            (MatchOp::Ne, _) => name != self.pattern,
            (MatchOp::Re, Some(regex)) => regex.is_match(name),
            (MatchOp::NotRe, Some(regex)) => !regex.is_match(name),
            // `new` compiles a regex for both regex operators, so these arms are unreachable;
            // matching nothing is the safe answer for a task.
            (MatchOp::Re | MatchOp::NotRe, None) => false,
        }
    }

    /// The operator.
    #[must_use]
    pub fn op(&self) -> MatchOp {
        self.op
    }

    /// The pattern as given (not anchored).
    #[must_use]
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

/// Compiles `pattern` within the size limits.
fn build_regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT_BYTES)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT_BYTES)
        .build()
}

impl fmt::Display for RegionMatcher {
    /// PromQL spelling, for logs: `region=~"eu-.*"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "region{}{:?}", self.op, self.pattern)
    }
}

impl PartialEq for RegionMatcher {
    fn eq(&self, other: &Self) -> bool {
        self.op == other.op && self.pattern == other.pattern
    }
}

impl Eq for RegionMatcher {}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(name: &str) -> Region {
        Region::new(name).unwrap()
    }

    /// (operator, pattern, region, expected match).
    const CASES: &[(&str, &str, &str, bool)] = &[
        // `=` matches (Go: never did).
        ("=", "eu", "eu", true),
        ("=", "eu", "eu-west", false),
        ("=", "eu", "EU", false),
        ("=", "eu.*", "eu-west", false),
        // `!=` does not match everything (Go: it did).
        ("!=", "eu", "eu", false),
        ("!=", "eu", "us", true),
        ("!=", "eu", "EU", true),
        // Regexes are anchored (Go: `^eu$` never matched, `eu` matched `eu-west`).
        ("=~", "^eu$", "eu", true),
        ("=~", "eu", "eu", true),
        ("=~", "eu", "eu-west", false),
        ("=~", "eu", "west-eu", false),
        ("=~", "eu.*", "eu-west", true),
        ("=~", "eu|us", "us", true),
        ("=~", "eu|us", "us-east", false),
        ("=~", ".*", "anything", true),
        ("=~", "EU", "eu", false),
        ("=~", "(?i)EU", "eu", true),
        // `!~` is the exact negation.
        ("!~", "eu", "eu", false),
        ("!~", "eu", "eu-west", true),
        ("!~", "eu.*", "eu-west", false),
        ("!~", "eu|us", "ap", true),
        ("!~", ".*", "anything", false),
    ];

    #[test]
    fn operators_match_as_promql() {
        for &(op, pattern, name, expected) in CASES {
            let matcher = RegionMatcher::new(op, pattern).unwrap();
            assert_eq!(
                matcher.matches(&region(name)),
                expected,
                "region {name:?} {op} {pattern:?}"
            );
        }
    }

    #[test]
    fn operators_parse_and_print_back() {
        for op in [MatchOp::Eq, MatchOp::Ne, MatchOp::Re, MatchOp::NotRe] {
            assert_eq!(op.as_str().parse::<MatchOp>(), Ok(op));
        }
        let matcher = RegionMatcher::new("=~", "eu-.*").unwrap();
        assert_eq!(matcher.to_string(), r#"region=~"eu-.*""#);
        assert_eq!((matcher.op(), matcher.pattern()), (MatchOp::Re, "eu-.*"));
    }

    #[test]
    fn unknown_operators_are_named() {
        for op in ["==", "", "~", " =", "=~ ", "eq"] {
            let err = RegionMatcher::new(op, "eu").unwrap_err();
            assert_eq!(err, MatcherError::UnknownOperator { op: op.to_owned() });
            assert!(err.to_string().contains(&format!("{op:?}")), "{err}");
        }
    }

    #[test]
    fn bad_regexes_quote_pattern_and_reason() {
        let err = RegionMatcher::new("=~", "eu(").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, MatcherError::BadRegex { ref pattern, .. } if pattern == "eu("));
        assert!(text.contains(r#""eu(""#), "{text}");
        assert!(text.contains("unclosed group"), "{text}");
        // A pattern cannot break out of the anchoring group.
        for pattern in [")|(", ")|.*|("] {
            let err = RegionMatcher::new("=~", pattern).unwrap_err();
            assert!(
                matches!(err, MatcherError::BadRegex { .. }),
                "{pattern}: {err}"
            );
        }
    }

    #[test]
    fn plain_operators_never_compile_the_pattern() {
        let matcher = RegionMatcher::new("=", "eu(").unwrap();
        assert!(!matcher.matches(&region("eu")));
        assert!(
            RegionMatcher::new("!=", "eu(")
                .unwrap()
                .matches(&region("eu"))
        );
    }

    #[test]
    fn huge_regexes_are_refused() {
        let err = RegionMatcher::new("=~", "(?:a{1000}){1000}").unwrap_err();
        assert!(matches!(err, MatcherError::BadRegex { .. }), "{err}");
    }
}
