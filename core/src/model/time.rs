//! Wall-clock instants as plain numbers. Core never reads a clock: every function that needs
//! "now" takes a [`UnixMillis`] argument, so the aggregator and the pool run in virtual time in tests.

use std::fmt;
use std::time::Duration;

/// A wall-clock instant: milliseconds since the Unix epoch (UTC).
///
/// Probe rounds are stamped with their start time in this unit and the server files each
/// result in the window that contains it, so agent and server clocks only need to agree to
/// well under one window.
#[derive(Clone, Copy, Debug, Default, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// The instant `unix_seconds` after the epoch.
    #[must_use]
    pub const fn from_secs(unix_seconds: u64) -> Self {
        Self(unix_seconds.saturating_mul(1000))
    }

    /// Milliseconds since the epoch.
    #[must_use]
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// This instant moved forward by `duration`, saturating at the far future.
    #[must_use]
    pub fn saturating_add(self, duration: Duration) -> Self {
        Self(self.0.saturating_add(duration_millis(duration)))
    }

    /// This instant moved back by `duration`, saturating at the epoch.
    #[must_use]
    pub fn saturating_sub(self, duration: Duration) -> Self {
        Self(self.0.saturating_sub(duration_millis(duration)))
    }

    /// Time from `earlier` to `self`; zero when `earlier` is not earlier.
    #[must_use]
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// Whole milliseconds of `duration`, saturating at `u64::MAX`.
pub(crate) fn duration_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Whole nanoseconds of `duration`, saturating at `u64::MAX` (about 584 years).
pub(crate) fn duration_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        assert_eq!(
            UnixMillis(5).saturating_sub(Duration::from_secs(1)),
            UnixMillis(0)
        );
        assert_eq!(
            UnixMillis(u64::MAX - 1).saturating_add(Duration::from_secs(1)),
            UnixMillis(u64::MAX)
        );
        assert_eq!(
            UnixMillis(1000).saturating_duration_since(UnixMillis(2000)),
            Duration::ZERO
        );
        assert_eq!(
            UnixMillis(2500).saturating_duration_since(UnixMillis(1000)),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn displays_as_seconds_with_millis() {
        assert_eq!(UnixMillis(1_700_000_000_042).to_string(), "1700000000.042");
    }
}
