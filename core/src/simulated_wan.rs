//! A simulated WAN for the demo: a decorator of the [`IcmpPinger`] port that puts per region
//! pair delays, jitter and loss on top of what the real pinger measured, and can make hosts
//! "broken" (much loss and delay to and from them), so a mesh on one machine's loopback shows
//! what the product is for. Everything it changes is labelled simulated where it is shown
//! (the demo's terminal and page).
//!
//! Deterministic: jitter and loss come from a seeded generator (SplitMix64), not a clock.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::model::{IcmpSettings, Region};
use crate::ports::{EchoSeries, IcmpPinger, PingError};

/// What the simulated network adds on one directed region pair.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WanLink {
    /// Added to every RTT.
    pub delay: Duration,
    /// Each RTT moves by up to this much either way.
    pub jitter: Duration,
    /// Share of echoes lost (0 to 1).
    pub loss_ratio: f64,
}

/// The simulated network: links between regions, where each host is, and broken hosts.
#[derive(Clone, Debug, Default)]
pub struct WanModel {
    /// Per (source region, target region).
    pub links: BTreeMap<(Region, Region), WanLink>,
    /// The region of each host address.
    pub regions: BTreeMap<IpAddr, Region>,
    /// Hosts whose echoes (sent or answered) suffer `broken` on top of their link.
    pub broken_hosts: Vec<IpAddr>,
    /// What a broken host adds.
    pub broken: WanLink,
}

/// A pinger of one agent (`source`, `source_ip`) over the simulated network.
pub struct SimulatedWan {
    inner: Arc<dyn IcmpPinger>,
    model: Arc<WanModel>,
    source: Region,
    source_ip: IpAddr,
    state: AtomicU64,
}

impl std::fmt::Debug for SimulatedWan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedWan")
            .field("source", &self.source)
            .field("source_ip", &self.source_ip)
            .finish_non_exhaustive()
    }
}

impl SimulatedWan {
    /// The pinger of the agent at `source_ip` in `source`, over `inner`, seeded by `seed`.
    #[must_use]
    pub fn new(
        inner: Arc<dyn IcmpPinger>,
        model: Arc<WanModel>,
        source: Region,
        source_ip: IpAddr,
        seed: u64,
    ) -> Self {
        Self {
            inner,
            model,
            source,
            source_ip,
            state: AtomicU64::new(seed),
        }
    }

    /// A uniform draw in [0, 1).
    fn next_unit(&self) -> f64 {
        let mut z = self
            .state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// What the simulated path from this agent to `addr` adds.
    #[must_use]
    pub fn link_to(&self, addr: IpAddr) -> WanLink {
        let mut link = self
            .model
            .regions
            .get(&addr)
            .and_then(|target| self.model.links.get(&(self.source.clone(), target.clone())))
            .copied()
            .unwrap_or_default();
        let model = &self.model;
        if model.broken_hosts.contains(&addr) || model.broken_hosts.contains(&self.source_ip) {
            link.delay += model.broken.delay;
            link.jitter += model.broken.jitter;
            link.loss_ratio = 1.0 - (1.0 - link.loss_ratio) * (1.0 - model.broken.loss_ratio);
        }
        link
    }

    /// `measured` as it would have been over the simulated path.
    #[must_use]
    pub fn apply(&self, addr: IpAddr, mut measured: EchoSeries) -> EchoSeries {
        let link = self.link_to(addr);
        let mut rtts = Vec::with_capacity(measured.rtts.len());
        for rtt in measured.rtts {
            if self.next_unit() < link.loss_ratio {
                continue;
            }
            let swing = link.jitter.mul_f64(self.next_unit());
            let half = link.jitter / 2;
            let rtt = (rtt + link.delay + swing).saturating_sub(half);
            rtts.push(rtt);
        }
        measured.rtts = rtts;
        measured
    }
}

#[async_trait::async_trait]
impl IcmpPinger for SimulatedWan {
    async fn ping(&self, addr: IpAddr, settings: &IcmpSettings) -> Result<EchoSeries, PingError> {
        let measured = self.inner.ping(addr, settings).await?;
        Ok(self.apply(addr, measured))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakePinger;

    fn region(name: &str) -> Region {
        Region::new(name).unwrap()
    }

    fn wan(source_ip: &str) -> SimulatedWan {
        let mut model = WanModel::default();
        model.links.insert(
            (region("a"), region("b")),
            WanLink {
                delay: Duration::from_millis(40),
                jitter: Duration::from_millis(4),
                loss_ratio: 0.25,
            },
        );
        model
            .regions
            .insert("10.0.0.2".parse().unwrap(), region("b"));
        model
            .regions
            .insert("10.0.0.3".parse().unwrap(), region("b"));
        model.broken_hosts.push("10.0.0.3".parse().unwrap());
        model.broken = WanLink {
            delay: Duration::from_millis(100),
            jitter: Duration::ZERO,
            loss_ratio: 1.0,
        };
        SimulatedWan::new(
            Arc::new(FakePinger::new()),
            Arc::new(model),
            region("a"),
            source_ip.parse().unwrap(),
            7,
        )
    }

    fn echoes(n: usize) -> EchoSeries {
        EchoSeries {
            packets_sent: n as u32,
            rtts: vec![Duration::from_micros(20); n],
            errors: vec![],
        }
    }

    #[test]
    fn a_link_adds_its_delay_within_its_jitter_and_loses_about_its_share() {
        let wan = wan("10.0.0.1");
        let out = wan.apply("10.0.0.2".parse().unwrap(), echoes(4000));
        assert_eq!(out.packets_sent, 4000);
        let kept = out.rtts.len() as f64 / 4000.0;
        assert!((0.70..0.80).contains(&kept), "kept {kept}");
        for rtt in &out.rtts {
            assert!(*rtt >= Duration::from_micros(38_020) && *rtt <= Duration::from_micros(42_020));
        }
        // Another region pair is untouched.
        let other = wan.apply("10.9.9.9".parse().unwrap(), echoes(10));
        assert_eq!(other, echoes(10));
    }

    #[test]
    fn a_broken_host_loses_everything_both_ways() {
        assert!(
            wan("10.0.0.1")
                .apply("10.0.0.3".parse().unwrap(), echoes(10))
                .rtts
                .is_empty()
        );
        assert!(
            wan("10.0.0.3")
                .apply("10.9.9.9".parse().unwrap(), echoes(10))
                .rtts
                .is_empty()
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_network() {
        let a = wan("10.0.0.1").apply("10.0.0.2".parse().unwrap(), echoes(50));
        let b = wan("10.0.0.1").apply("10.0.0.2".parse().unwrap(), echoes(50));
        assert_eq!(a, b);
    }
}
