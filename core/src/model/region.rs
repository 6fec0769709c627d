//! `Region`: the core concept of a mesh. Agents belong to one, targets are grouped by one, and
//! every metric is labelled by a (source, target) pair of them. What a region *means* is the
//! user's choice (a cloud region, a datacentre, a Kubernetes node, "prod").

use std::fmt;
use std::sync::Arc;

/// Longest accepted region name, in bytes.
pub const MAX_REGION_LEN: usize = 128;

/// A validated region name: 1 to 128 bytes of letters, digits and `-`, `_`, `.`, `:`.
///
/// The rule keeps Prometheus label values and dashboards readable and rejects what cloud
/// metadata services answer when they fail (HTML pages, JSON, whitespace).
/// Cloning is cheap (a shared string), because every probe result carries two of them.
#[derive(Clone, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct Region(Arc<str>);

/// Why a string is not a region name.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum RegionError {
    /// The name is empty.
    #[error("region name is empty")]
    Empty,
    /// The name is longer than [`MAX_REGION_LEN`] bytes.
    #[error("region name is {len} bytes long; the limit is {MAX_REGION_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The name holds a character outside the allowed set.
    #[error(
        "region name {name:?} holds {character:?}; allowed are letters, digits, '-', '_', '.' and ':'"
    )]
    BadCharacter {
        /// The rejected name (cut to the limit).
        name: String,
        /// The first character that is not allowed.
        character: char,
    },
}

impl Region {
    /// Validates `name` as a region name.
    ///
    /// # Errors
    /// [`RegionError`] when `name` is empty, too long or holds a character outside the set.
    pub fn new(name: &str) -> Result<Self, RegionError> {
        if name.is_empty() {
            return Err(RegionError::Empty);
        }
        if name.len() > MAX_REGION_LEN {
            return Err(RegionError::TooLong { len: name.len() });
        }
        if let Some(character) = name.chars().find(|c| !is_region_char(*c)) {
            return Err(RegionError::BadCharacter {
                name: name.to_owned(),
                character,
            });
        }
        Ok(Self(Arc::from(name)))
    }

    /// The region name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_region_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Region({:?})", &*self.0)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Region {
    type Err = RegionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for Region {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_cloud_and_kubernetes_names() {
        for name in [
            "cn-shanghai",
            "us-central1-a",
            "ip-10-0-0-1.ec2.internal",
            "eu_west:2",
            "华东",
        ] {
            assert_eq!(Region::new(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn rejects_error_pages_and_blank_answers() {
        assert_eq!(Region::new(""), Err(RegionError::Empty));
        assert!(matches!(
            Region::new("<html>404</html>"),
            Err(RegionError::BadCharacter { character: '<', .. })
        ));
        assert!(matches!(
            Region::new("cn-shanghai\n"),
            Err(RegionError::BadCharacter {
                character: '\n',
                ..
            })
        ));
        assert!(matches!(
            Region::new(&"a".repeat(129)),
            Err(RegionError::TooLong { len: 129 })
        ));
        assert!(Region::new(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn error_text_names_the_bad_character() {
        let err = Region::new("eu west").unwrap_err().to_string();
        assert!(err.contains("\"eu west\"") && err.contains("' '"), "{err}");
    }
}
