//! A simulated WAN for the demo: a decorator of the [`IcmpPinger`] port that puts per region
//! pair delays, jitter and loss on top of what the real pinger measured, and can make hosts
//! "broken" (much loss and delay to and from them), so a mesh on one machine's loopback shows
//! what the product is for. Everything it changes is labelled simulated where it is shown
//! (the demo's terminal and page).
//!
//! [`SimulatedTracer`] is the same network seen by a path trace (the [`PathTracer`] port): the
//! demo's agents run on one loopback, where a real trace has one hop and nothing to place, so
//! the trace of a pair is synthesized from the model instead — a few routers with addresses of
//! the benchmarking range 198.18.0.0/15, then the target — with the pair's loss starting at its
//! WAN router, so the server's blame rule (`trace::blame`) has the demo's fault to place.
//!
//! Deterministic: jitter and loss come from a seeded generator (SplitMix64), not a clock.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::link::{TraceReport, TraceRequest};
use crate::model::{IcmpSettings, Region};
use crate::ports::{EchoSeries, IcmpPinger, PathTracer, PingError};
use crate::trace::hops::{Answer, ProbeOutcome, summarize};

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

/// A seeded SplitMix64 generator, shared by reference (the ports take `&self`).
#[derive(Debug)]
struct SplitMix64(AtomicU64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    /// A uniform draw in [0, 1).
    fn next_unit(&self) -> f64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A pinger of one agent (`source`, `source_ip`) over the simulated network.
pub struct SimulatedWan {
    inner: Arc<dyn IcmpPinger>,
    model: Arc<WanModel>,
    source: Region,
    source_ip: IpAddr,
    state: SplitMix64,
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
            state: SplitMix64::new(seed),
        }
    }

    fn next_unit(&self) -> f64 {
        self.state.next_unit()
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

/// The routers a simulated trace passes before its target: source side, WAN, target side.
pub const SIMULATED_ROUTERS: u8 = 3;

/// The TTL of the WAN router, where a pair's loss starts.
pub const WAN_HOP: u8 = 2;

/// Each hop's share of the pair's delay and jitter, by TTL (the destination's is whole).
const DELAY_SHARE: [f64; SIMULATED_ROUTERS as usize + 1] = [0.05, 0.5, 0.95, 1.0];

/// What the simulated network takes besides its delay: a tenth of a millisecond per hop, so
/// a same-region path is not free.
const PER_HOP: Duration = Duration::from_micros(100);

/// A path tracer of one agent (`source`, `source_ip`) over the simulated network: it answers
/// at once with a synthesized trace (no sockets, no sleeping).
///
/// The path to a host of region `t` is [`SIMULATED_ROUTERS`] routers, `198.18.<p>.1` to
/// `198.18.<p>.3` (`p` the pair's index among the model's region pairs; past 255 it goes on
/// in 198.19), then the host. A probe's round trip is `PER_HOP` (0.1 ms) per hop plus the hop's
/// share of the pair's delay, moved by the same share of its jitter. Loss:
/// - the pair's `loss_ratio` is drawn once per round at the WAN router ([`WAN_HOP`]) and
///   removes that round's probes from it on (a probe past a link crosses it; the probes of a
///   round go out together, and a congested link drops in bursts), so the hops from the WAN
///   router to the destination lose alike, which the blame rule reads as loss starting there;
/// - a broken target adds the model's `broken` link at the destination only, drawn per probe
///   (the blame is the destination: the last link or the host itself);
/// - a broken source adds it from the first hop, drawn once per round (its own uplink).
pub struct SimulatedTracer {
    model: Arc<WanModel>,
    source: Region,
    source_ip: IpAddr,
    state: SplitMix64,
}

impl std::fmt::Debug for SimulatedTracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedTracer")
            .field("source", &self.source)
            .field("source_ip", &self.source_ip)
            .finish_non_exhaustive()
    }
}

impl SimulatedTracer {
    /// The tracer of the agent at `source_ip` in `source`, seeded by `seed`.
    #[must_use]
    pub fn new(model: Arc<WanModel>, source: Region, source_ip: IpAddr, seed: u64) -> Self {
        Self {
            model,
            source,
            source_ip,
            state: SplitMix64::new(seed),
        }
    }

    /// The address of router `hop` (1-based) on the path of region pair index `pair`.
    #[must_use]
    pub fn router_addr(pair: usize, hop: u8) -> IpAddr {
        let pair = pair % 512;
        // Both fit a byte: `pair / 256` is 0 or 1, `pair % 256` under 256.
        let (high, low) = ((pair / 256) as u8, (pair % 256) as u8);
        IpAddr::from([198, 18 + high, low, hop])
    }

    /// The index of (`source`, `target`) among every ordered pair of the model's regions.
    fn pair_index(&self, target: &Region) -> usize {
        let regions: std::collections::BTreeSet<&Region> = self
            .model
            .regions
            .values()
            .chain(self.model.links.keys().flat_map(|(s, t)| [s, t]))
            .collect();
        let position = |r: &Region| regions.iter().position(|x| *x == r).unwrap_or(0);
        position(&self.source) * regions.len() + position(target)
    }

    /// One probe's round trip at `share` of `link`, plus `hops` × [`PER_HOP`].
    fn rtt(&self, link: &WanLink, share: f64, ttl: u8) -> Duration {
        let jitter = link.jitter.mul_f64(share);
        let swing = jitter.mul_f64(self.state.next_unit());
        (PER_HOP * u32::from(ttl) + link.delay.mul_f64(share) + swing).saturating_sub(jitter / 2)
    }

    /// The synthesized trace of `request` (see the type's documentation).
    #[must_use]
    pub fn synthesize(&self, request: &TraceRequest) -> TraceReport {
        let mut report = TraceReport {
            id: request.id,
            target: request.target,
            hops: Vec::new(),
            error: None,
        };
        let Some(target_region) = self.model.regions.get(&request.target) else {
            report.error = Some(format!("the simulated WAN has no host {}", request.target));
            return report;
        };
        let link = self
            .model
            .links
            .get(&(self.source.clone(), target_region.clone()))
            .copied()
            .unwrap_or_default();
        let broken = self.model.broken;
        let target_broken = self.model.broken_hosts.contains(&request.target);
        let source_broken = self.model.broken_hosts.contains(&self.source_ip);
        let pair = self.pair_index(target_region);
        let destination_ttl = SIMULATED_ROUTERS + 1;
        let last_ttl = destination_ttl.min(request.max_hops);
        let mut probes = Vec::new();
        for round in 0..request.rounds {
            let source_lost = source_broken && self.state.next_unit() < broken.loss_ratio;
            let wan_lost = self.state.next_unit() < link.loss_ratio;
            for ttl in 1..=last_ttl {
                let share = DELAY_SHARE[usize::from(ttl - 1)];
                let mut lost = source_lost || (ttl >= WAN_HOP && wan_lost);
                let mut rtt = self.rtt(&link, share, ttl);
                if source_broken {
                    rtt += self.rtt(&broken, 1.0, 0);
                }
                let from = if ttl == destination_ttl {
                    if target_broken {
                        lost |= self.state.next_unit() < broken.loss_ratio;
                        rtt += self.rtt(&broken, 1.0, 0);
                    }
                    request.target
                } else {
                    Self::router_addr(pair, ttl)
                };
                probes.push(ProbeOutcome {
                    round,
                    ttl,
                    answer: (!lost).then_some(Answer { from, rtt }),
                });
            }
        }
        report.hops = summarize(request.target, &probes);
        if last_ttl < destination_ttl {
            report.error = Some(format!(
                "the destination is {destination_ttl} hops away, past the {} asked for",
                request.max_hops
            ));
        }
        report
    }
}

#[async_trait::async_trait]
impl PathTracer for SimulatedTracer {
    async fn trace(&self, request: &TraceRequest) -> TraceReport {
        self.synthesize(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakePinger;
    use crate::trace::blame::{Blame, BlameThresholds, Verdict, judge};

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

    fn tracer_model() -> Arc<WanModel> {
        let mut model = WanModel::default();
        let link = WanLink {
            delay: Duration::from_millis(40),
            jitter: Duration::from_millis(4),
            loss_ratio: 0.0,
        };
        model.links.insert(
            (region("a"), region("b")),
            WanLink {
                loss_ratio: 0.25,
                ..link
            },
        );
        model.links.insert((region("b"), region("a")), link);
        for (ip, r) in [("10.0.0.1", "a"), ("10.0.0.2", "b"), ("10.0.0.3", "b")] {
            model.regions.insert(ip.parse().unwrap(), region(r));
        }
        model.broken_hosts.push("10.0.0.3".parse().unwrap());
        model.broken = WanLink {
            delay: Duration::from_millis(100),
            jitter: Duration::from_millis(10),
            loss_ratio: 0.6,
        };
        Arc::new(model)
    }

    fn tracer(source: &str, ip: &str, seed: u64) -> SimulatedTracer {
        SimulatedTracer::new(tracer_model(), region(source), ip.parse().unwrap(), seed)
    }

    fn request(target: &str, rounds: u16) -> TraceRequest {
        TraceRequest {
            id: 9,
            target: target.parse().unwrap(),
            protocol: crate::link::TraceProtocol::Icmp,
            max_hops: 30,
            rounds,
        }
    }

    fn verdict(report: &TraceReport) -> Verdict {
        judge(report, &BlameThresholds::default())
    }

    #[test]
    fn a_trace_is_the_same_for_the_same_seed_and_moves_on_between_traces() {
        let (a, b) = (tracer("a", "10.0.0.1", 3), tracer("a", "10.0.0.1", 3));
        let first = a.synthesize(&request("10.0.0.2", 20));
        assert_eq!(first, b.synthesize(&request("10.0.0.2", 20)));
        assert_ne!(first, a.synthesize(&request("10.0.0.2", 20)));
    }

    #[test]
    fn a_healthy_pair_is_clean_with_routers_then_the_destination_growing_to_the_delay() {
        let report = tracer("b", "10.0.0.2", 1).synthesize(&request("10.0.0.1", 20));
        assert_eq!((report.id, report.error.as_deref()), (9, None));
        let ttls: Vec<u8> = report.hops.iter().map(|h| h.ttl).collect();
        assert_eq!(ttls, vec![1, 2, 3, 4]);
        let addrs: Vec<String> = report
            .hops
            .iter()
            .map(|h| h.addr.map(|a| a.to_string()).unwrap_or_default())
            .collect();
        let p = addrs[0].rsplit_once('.').unwrap().0.to_owned();
        assert!(p.starts_with("198.18."), "{addrs:?}");
        assert_eq!(
            addrs,
            vec![
                format!("{p}.1"),
                format!("{p}.2"),
                format!("{p}.3"),
                "10.0.0.1".to_owned()
            ]
        );
        for hop in &report.hops {
            assert_eq!((hop.sent, hop.received), (20, 20));
            assert!(hop.rtt_best <= hop.rtt_mean && hop.rtt_mean <= hop.rtt_worst);
        }
        let means: Vec<Duration> = report.hops.iter().filter_map(|h| h.rtt_mean).collect();
        assert!(means.windows(2).all(|w| w[0] < w[1]), "{means:?}");
        let destination = means[3].as_secs_f64() * 1e3;
        assert!((39.0..42.0).contains(&destination), "{destination} ms");
        assert_eq!(verdict(&report).blame, Blame::Clean);
    }

    #[test]
    fn a_lossy_pair_is_blamed_at_its_wan_router() {
        let report = tracer("a", "10.0.0.1", 5).synthesize(&request("10.0.0.2", 20));
        let v = verdict(&report);
        assert!(
            matches!(v.blame, Blame::Hop { ttl: WAN_HOP, address, .. }
                if Some(address) == report.hops[1].addr),
            "{v:?}"
        );
        assert_eq!(
            report.hops[0].received, 20,
            "the source-side router loses nothing"
        );
        assert!(
            v.reason.contains("persists to the destination"),
            "{}",
            v.reason
        );
    }

    #[test]
    fn a_broken_target_is_blamed_at_the_destination_and_a_broken_source_at_hop_one() {
        let report = tracer("a", "10.0.0.1", 2).synthesize(&request("10.0.0.3", 20));
        // a → b is lossy as well: its WAN loss is under the broken host's.
        let v = verdict(&report);
        assert!(matches!(v.blame, Blame::Hop { .. }), "{v:?}");
        let report = tracer("b", "10.0.0.2", 2).synthesize(&request("10.0.0.3", 20));
        let v = verdict(&report);
        assert!(
            matches!(v.blame, Blame::Hop { ttl: 4, address, .. } if address == report.target),
            "{v:?}"
        );
        let report = tracer("b", "10.0.0.3", 2).synthesize(&request("10.0.0.1", 20));
        let v = verdict(&report);
        assert!(matches!(v.blame, Blame::Hop { ttl: 1, .. }), "{v:?}");
    }

    #[test]
    fn an_unknown_target_or_too_few_hops_say_why() {
        let report = tracer("a", "10.0.0.1", 1).synthesize(&request("10.9.9.9", 20));
        assert!(report.hops.is_empty());
        assert_eq!(
            report.error.as_deref(),
            Some("the simulated WAN has no host 10.9.9.9")
        );
        let mut short = request("10.0.0.2", 5);
        short.max_hops = 2;
        let report = tracer("b", "10.0.0.3", 1).synthesize(&short);
        assert!(report.hops.len() <= 2, "{report:?}");
        assert!(report.error.is_some());
    }

    #[test]
    fn router_addresses_stay_in_the_benchmarking_range() {
        assert_eq!(SimulatedTracer::router_addr(0, 1).to_string(), "198.18.0.1");
        assert_eq!(
            SimulatedTracer::router_addr(300, 3).to_string(),
            "198.19.44.3"
        );
        assert_eq!(
            SimulatedTracer::router_addr(512, 2).to_string(),
            "198.18.0.2"
        );
    }

    proptest::proptest! {
        /// Whatever the seed, the lossy pair's trace is blamed at its WAN router when it lost
        /// enough for the rule (2 of 20), and is clean otherwise: never elsewhere.
        #[test]
        fn the_lossy_pair_is_blamed_at_the_wan_router_or_nowhere(seed in proptest::prelude::any::<u64>()) {
            let report = tracer("a", "10.0.0.1", seed).synthesize(&request("10.0.0.2", 20));
            let destination = report.hops.last().unwrap();
            let lost = destination.sent - destination.received;
            let v = verdict(&report);
            if lost >= 2 {
                proptest::prop_assert!(matches!(v.blame, Blame::Hop { ttl: WAN_HOP, .. }), "{v:?}");
            } else {
                proptest::prop_assert_eq!(v.blame, Blame::Clean);
            }
        }
    }
}
