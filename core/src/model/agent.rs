//! Who probes: an agent is identified by its region and the IP it reports, as in the Go system
//! (the liveness series `prober_agent_is_alive{region, ip, version}` adds its version).

use std::fmt;
use std::net::IpAddr;

use super::Region;

/// One agent of the mesh: the region it probes from and the address it reports.
///
/// In dynamic discovery the address is also what the other regions ping.
#[derive(Clone, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct AgentId {
    /// The agent's resolved region.
    pub region: Region,
    /// The agent's reported address (intranet, public, or set by flag).
    pub ip: IpAddr,
}

impl AgentId {
    /// An agent of `region` at `ip`.
    #[must_use]
    pub fn new(region: Region, ip: IpAddr) -> Self {
        Self { region, ip }
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.region, self.ip)
    }
}

/// Longest accepted agent version string, in bytes.
pub const MAX_VERSION_LEN: usize = 64;

/// The version an agent runs, as it reports it (for example `0.1.0`).
///
/// Kept as text for the `version` label; upgrade logic compares versions semantically elsewhere.
#[derive(Clone, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct AgentVersion(String);

impl AgentVersion {
    /// A version label: printable ASCII without spaces, at most [`MAX_VERSION_LEN`] bytes;
    /// anything else is replaced by `unknown` so a label can never be abused.
    #[must_use]
    pub fn new(version: &str) -> Self {
        let valid = !version.is_empty()
            && version.len() <= MAX_VERSION_LEN
            && version.bytes().all(|b| b.is_ascii_graphic());
        Self(if valid {
            version.to_owned()
        } else {
            "unknown".to_owned()
        })
    }

    /// The version text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_labels_are_sanitised() {
        assert_eq!(AgentVersion::new("0.1.0").as_str(), "0.1.0");
        assert_eq!(AgentVersion::new("").as_str(), "unknown");
        assert_eq!(AgentVersion::new("1.0 beta").as_str(), "unknown");
        assert_eq!(AgentVersion::new(&"9".repeat(65)).as_str(), "unknown");
    }
}
