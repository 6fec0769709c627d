//! Agent self-upgrade (`/-/upgrade`, the Go "self-upgrade") in domain terms.
//!
//! - [`version`]: semantic versions (the Go code compared them as strings);
//! - [`rollout`]: the server's staged rollout: canaries, then batches, each starting when the
//!   one before it is settled and soaked, halting past the failures allowed; armed only by a
//!   POST, one at a time, kept in the store across restarts;
//! - [`budget`]: the bandwidth cap on sending releases (a token bucket);
//! - [`agent`]: the agent's side: whether to take an offer (opt-in, newer or `force`), the
//!   download in chunks over the link (resumable), the hand-over to the new binary and its
//!   probation (committed once its results are acknowledged for a number of rounds).
//!
//! What is *done* (download, digests, signatures, the preflight, replacing the executable,
//! the trial process and the rollback) is the `upgrade` adapter's; this module decides.

pub mod agent;
pub mod budget;
pub mod rollout;
pub mod version;

/// Where one agent of a rollout stands, as `GET /-/upgrade` and
/// `prober_server_upgrade_agents{state}` name it.
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub enum MemberState {
    /// Not offered yet (its batch has not started).
    Pending,
    /// Offered; fetching the binary over the link.
    Downloading,
    /// The binary matched its digest and signature, and reported the announced version.
    Verified,
    /// The new version is starting (its trial).
    Restarting,
    /// The new version is connected and must have its results acknowledged to commit.
    Probation,
    /// The new version passed its probation.
    Committed,
    /// The new version failed its probation; the agent restored the previous one.
    RolledBack,
    /// The upgrade was abandoned (a check failed, or no progress in time); the agent keeps its
    /// version.
    Failed,
    /// Not upgraded: not opted in, protocol v1, already on the version, or the rollout ended
    /// first.
    Skipped,
}

impl MemberState {
    /// Every state, in order.
    pub const ALL: [Self; 9] = [
        Self::Pending,
        Self::Downloading,
        Self::Verified,
        Self::Restarting,
        Self::Probation,
        Self::Committed,
        Self::RolledBack,
        Self::Failed,
        Self::Skipped,
    ];

    /// The state's name in JSON and metrics.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Downloading => "downloading",
            Self::Verified => "verified",
            Self::Restarting => "restarting",
            Self::Probation => "probation",
            Self::Committed => "committed",
            Self::RolledBack => "rolled_back",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    /// Whether the agent is done with the rollout.
    #[must_use]
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            Self::Committed | Self::RolledBack | Self::Failed | Self::Skipped
        )
    }

    /// Its place on the way from pending to committed.
    pub(crate) const fn step(self) -> u8 {
        match self {
            Self::Pending => 0,
            Self::Downloading => 1,
            Self::Verified => 2,
            Self::Restarting => 3,
            Self::Probation => 4,
            Self::Committed | Self::RolledBack | Self::Failed | Self::Skipped => 5,
        }
    }
}

#[cfg(test)]
mod tests;
