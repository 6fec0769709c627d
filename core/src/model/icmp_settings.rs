//! How an ICMP probe is run: the probe file's `icmp:` block plus the agent-derived timeout.
//! The defaults are the Go system's and also apply to discovered targets (the Go 0.0.9 crash).

use std::time::Duration;

/// The probe file's `icmp:` block: how many echoes, how far apart, how large.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct IcmpModule {
    /// Echo requests per probe (default 64).
    pub packet_count: u32,
    /// Time between two echo requests of one probe (default 15 ms).
    pub interval: Duration,
    /// ICMP payload bytes (default 64).
    pub payload_size: u32,
}

impl IcmpModule {
    /// Default packets per probe.
    pub const DEFAULT_PACKET_COUNT: u32 = 64;
    /// Default time between echoes.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(15);
    /// Default payload bytes.
    pub const DEFAULT_PAYLOAD_SIZE: u32 = 64;
    /// Smallest payload: 8-byte send timestamp plus 16-byte probe token, as go-ping required.
    pub const MIN_PAYLOAD_SIZE: u32 = 24;
    /// Largest payload that fits an IPv4 packet (65,535 − 20 − 8).
    pub const MAX_PAYLOAD_SIZE: u32 = 65_507;
    /// Most packets per probe we accept; more would only flood the path.
    pub const MAX_PACKET_COUNT: u32 = 10_000;
}

impl Default for IcmpModule {
    fn default() -> Self {
        Self {
            packet_count: Self::DEFAULT_PACKET_COUNT,
            interval: Self::DEFAULT_INTERVAL,
            payload_size: Self::DEFAULT_PAYLOAD_SIZE,
        }
    }
}

/// Everything an ICMP pinger needs for one probe.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct IcmpSettings {
    /// Count, spacing and size of the echoes.
    pub module: IcmpModule,
    /// IP TTL / hop limit of the echoes (64).
    pub ttl: u8,
    /// The whole probe ends at this deadline at the latest; see [`probe_timeout`].
    pub timeout: Duration,
}

impl IcmpSettings {
    /// The TTL the Go system used.
    pub const DEFAULT_TTL: u8 = 64;

    /// Settings for `module` on an agent probing every `probe_interval`.
    #[must_use]
    pub fn new(module: IcmpModule, probe_interval: Duration) -> Self {
        Self {
            module,
            ttl: Self::DEFAULT_TTL,
            timeout: probe_timeout(probe_interval),
        }
    }
}

/// The shortest probe interval an agent takes (`-agent.probe.interval`) and the shortest
/// aggregation window (`-server.aggregation.interval`).
pub const MIN_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// The longest of both: a day (Go took any duration; longer rounds are not a mesh prober's).
/// It bounds the probe timeout, so a setting no agent could carry out is refused everywhere
/// alike (see `setting::echo_span`).
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);
/// The Go system's probe interval and window.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(15);

/// The Go formula for the per-probe deadline: ceil(0.8 × probe interval) in whole seconds,
/// and at least one second (12 s for the default 15 s interval).
#[must_use]
pub fn probe_timeout(probe_interval: Duration) -> Duration {
    let tenths_of_ms = probe_interval.as_millis().saturating_mul(8);
    let ceil_secs = tenths_of_ms.div_ceil(10_000);
    Duration::from_secs(u64::try_from(ceil_secs).unwrap_or(u64::MAX).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_timeout_matches_the_go_formula() {
        assert_eq!(
            probe_timeout(Duration::from_secs(15)),
            Duration::from_secs(12)
        );
        assert_eq!(
            probe_timeout(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        assert_eq!(
            probe_timeout(Duration::from_millis(500)),
            Duration::from_secs(1)
        );
        assert_eq!(probe_timeout(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            probe_timeout(Duration::from_secs(2)),
            Duration::from_secs(2)
        ); // ceil(1.6)
        assert_eq!(
            probe_timeout(Duration::from_secs(10)),
            Duration::from_secs(8)
        );
        assert_eq!(
            probe_timeout(Duration::from_secs(60)),
            Duration::from_secs(48)
        );
    }

    #[test]
    fn defaults_are_the_go_defaults() {
        let s = IcmpSettings::new(IcmpModule::default(), Duration::from_secs(15));
        assert_eq!(s.module.packet_count, 64);
        assert_eq!(s.module.interval, Duration::from_millis(15));
        assert_eq!(s.module.payload_size, 64);
        assert_eq!(s.ttl, 64);
        assert_eq!(s.timeout, Duration::from_secs(12));
    }
}
