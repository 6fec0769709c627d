//! The agent's plan, sans-IO: which probes a round holds and when each starts.
//!
//! Rounds are aligned to the probe interval (`round_start = ⌊now / interval⌋ × interval`), so
//! the server files each result in the window of its round (decision 4). Within a round, each
//! target starts at a fixed offset derived from its name, spread over the part of the interval
//! that leaves every probe its whole timeout (`interval − ceil(0.8 × interval)`): thousands of
//! targets do not start in one burst, and a target starts at the same point of every round.

use std::time::Duration;

use crate::model::{
    HttpModule, HttpUrl, IcmpSettings, ProbeConfig, ProbeModule, Region, Target, UnixMillis,
    icmp_settings::probe_timeout, target::Destination,
};

/// One probe to run in a round.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedProbe {
    /// When to start it.
    pub start_at: UnixMillis,
    /// The round it belongs to (stamped on its result).
    pub round_start: UnixMillis,
    /// The `target_region` of its result.
    pub target_region: Region,
    /// The target as configured (the `target_addr` label).
    pub target: Target,
    /// How to probe it.
    pub how: ProbeHow,
    /// The probe's time budget.
    pub timeout: Duration,
}

/// The kind-specific settings of a planned probe.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeHow {
    /// An ICMP series.
    Icmp(IcmpSettings),
    /// An HTTP request to `url` with `module`.
    Http {
        /// The URL.
        url: HttpUrl,
        /// The `http:` block.
        module: Box<HttpModule>,
    },
}

/// The start of the round holding `now`.
#[must_use]
pub fn round_start(now: UnixMillis, interval: Duration) -> UnixMillis {
    let interval_ms = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    UnixMillis(now.as_millis() / interval_ms * interval_ms)
}

/// The offset of `target` within a round of `interval`: a stable hash of the target string,
/// spread over `interval − probe_timeout(interval)`.
#[must_use]
pub fn start_offset(target: &str, interval: Duration) -> Duration {
    let spread = interval.saturating_sub(probe_timeout(interval));
    let spread_ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
    if spread_ms == 0 {
        return Duration::ZERO;
    }
    // FNV-1a: stable across processes and versions, unlike the std hasher.
    let hash = target.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    Duration::from_millis(hash % spread_ms)
}

/// Every probe of the round starting at `round`, for the agent's pool `configs`, in start order.
#[must_use]
pub fn plan_round(
    configs: &[ProbeConfig],
    round: UnixMillis,
    interval: Duration,
) -> Vec<PlannedProbe> {
    let timeout = probe_timeout(interval);
    let mut plan: Vec<PlannedProbe> = configs
        .iter()
        .flat_map(|config| {
            config.targets.iter().filter_map(move |target| {
                let how = match (&config.module, target.destination()) {
                    (ProbeModule::Icmp(module), Destination::Icmp(_)) => {
                        ProbeHow::Icmp(IcmpSettings::new(*module, interval))
                    }
                    (ProbeModule::Http(module), Destination::Http(url)) => ProbeHow::Http {
                        url: url.clone(),
                        module: Box::new(module.clone()),
                    },
                    // A block never mixes kinds (ProbeConfig is validated); skip defensively.
                    _ => return None,
                };
                let offset = start_offset(target.raw(), interval);
                Some(PlannedProbe {
                    start_at: UnixMillis(
                        round.as_millis() + u64::try_from(offset.as_millis()).unwrap_or(u64::MAX),
                    ),
                    round_start: round,
                    target_region: config.region.clone(),
                    target: target.clone(),
                    how,
                    timeout,
                })
            })
        })
        .collect();
    plan.sort_by_key(|p| p.start_at);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IcmpModule, ProbeKind};
    use proptest::prelude::*;

    const INTERVAL: Duration = Duration::from_secs(15);

    #[test]
    fn rounds_are_aligned() {
        assert_eq!(
            round_start(UnixMillis(1_800_000_007_123), INTERVAL),
            UnixMillis(1_800_000_000_000)
        );
    }

    #[test]
    fn a_round_plans_every_target_with_its_kind() {
        let icmp = ProbeConfig {
            region: Region::new("us").unwrap(),
            targets: vec![
                Target::parse(ProbeKind::Icmp, "198.18.2.1").unwrap(),
                Target::parse(ProbeKind::Icmp, "198.18.2.2").unwrap(),
            ],
            module: ProbeModule::Icmp(IcmpModule::default()),
        };
        let http = ProbeConfig {
            region: Region::new("web").unwrap(),
            targets: vec![Target::parse(ProbeKind::Http, "http://198.18.9.9/").unwrap()],
            module: ProbeModule::Http(HttpModule::default()),
        };
        let round = UnixMillis(1_800_000_000_000);
        let plan = plan_round(&[icmp, http], round, INTERVAL);
        assert_eq!(plan.len(), 3);
        assert!(plan.windows(2).all(|w| w[0].start_at <= w[1].start_at));
        for probe in &plan {
            assert_eq!(probe.round_start, round);
            assert_eq!(probe.timeout, Duration::from_secs(12));
        }
        let kinds: Vec<bool> = plan
            .iter()
            .map(|p| matches!(p.how, ProbeHow::Http { .. }))
            .collect();
        assert_eq!(kinds.iter().filter(|k| **k).count(), 1);
    }

    proptest! {
        #[test]
        fn every_probe_ends_within_its_round(target in "[a-z0-9.]{1,40}", secs in 1u64..600) {
            let interval = Duration::from_secs(secs);
            let offset = start_offset(&target, interval);
            prop_assert!(offset + probe_timeout(interval) <= interval);
            prop_assert_eq!(offset, start_offset(&target, interval));
        }
    }
}
