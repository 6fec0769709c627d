//! Agent versions as semantic versions, so that `0.0.10` is newer than `0.0.9` (the Go
//! ProberMesh compared them as strings, spec §9) and a pre-release sorts before its release.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A semantic version (`1.4.0`, `1.5.0-rc.1`; a leading `v` is accepted and dropped).
#[derive(Clone, Debug, Eq, PartialEq, Hash)]
pub struct Version(semver::Version);

/// Why a text is not a version.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("{text:?} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.4.0): {why}")]
pub struct VersionError {
    /// The text as given (cut to 64 bytes).
    pub text: String,
    /// What the parser said.
    pub why: String,
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let bare = trimmed.strip_prefix('v').unwrap_or(trimmed);
        semver::Version::parse(bare)
            .map(Self)
            .map_err(|error| VersionError {
                text: text.chars().take(64).collect(),
                why: error.to_string(),
            })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        // Build metadata does not order versions (semver §10); ties on it are broken so that
        // `Ord` stays consistent with `Eq`.
        self.0
            .cmp_precedence(&other.0)
            .then_with(|| self.0.build.cmp(&other.0.build))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Version {
    /// Whether this is a newer release than `running` (build metadata ignored).
    #[must_use]
    pub fn is_newer_than(&self, running: &Self) -> bool {
        self.0.cmp_precedence(&running.0) == Ordering::Greater
    }

    /// Whether both name the same release (build metadata ignored).
    #[must_use]
    pub fn same_release(&self, other: &Self) -> bool {
        self.0.cmp_precedence(&other.0) == Ordering::Equal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(text: &str) -> Version {
        text.parse().expect("a version")
    }

    #[test]
    fn numeric_not_lexicographic() {
        assert!(v("0.0.10").is_newer_than(&v("0.0.9")));
        assert!(!v("0.0.9").is_newer_than(&v("0.0.10")));
        assert!(v("1.5.0").is_newer_than(&v("1.5.0-rc.1")));
        assert!(v("v1.4.0").same_release(&v("1.4.0")));
        assert!(v("1.4.0+build.7").same_release(&v("1.4.0")));
        assert!(!v("1.4.0").is_newer_than(&v("1.4.0")));
    }

    #[test]
    fn refusals_name_the_text() {
        let error = "1.4".parse::<Version>().expect_err("not semver");
        assert!(
            error
                .to_string()
                .starts_with("\"1.4\" is not a semantic version"),
            "{error}"
        );
        assert!("".parse::<Version>().is_err());
        assert!("latest".parse::<Version>().is_err());
    }

    proptest! {
        #[test]
        fn newer_follows_the_numbers(a in (0u64..50, 0u64..50, 0u64..50), b in (0u64..50, 0u64..50, 0u64..50)) {
            let (va, vb) = (v(&format!("{}.{}.{}", a.0, a.1, a.2)), v(&format!("{}.{}.{}", b.0, b.1, b.2)));
            prop_assert_eq!(va.is_newer_than(&vb), a > b);
            prop_assert_eq!(va.same_release(&vb), a == b);
            prop_assert_eq!(va.cmp(&vb), a.cmp(&b));
        }
    }
}
