//! The server's aggregator: a sans-IO state machine that turns the probe results of every
//! agent into the series the server exposes.
//!
//! Inputs come in with the current time (`handle_heartbeat`, `handle_results`,
//! `handle_timeout`); the output is polled (`snapshot`, `live_agents`, `next_timeout`).
//! It never reads a clock and never fails, so it runs in virtual time in tests.
//!
//! # Windows
//! Time is cut into aligned windows of `window` length (window *k* covers
//! `[k × window, (k+1) × window)` since the epoch). A result is filed in the window holding its
//! round's start, so a window holds exactly one round per agent when the probe interval equals
//! the window. A window *settles* one window after it ends: results arriving up to then still
//! land in their own window; later ones are dropped and counted. On settling, each region pair
//! and URL of the window is aggregated (see [`AggregationMethod`]) and its series are set.
//! Nothing settles during the first window after the aggregator is created, so agents that
//! reconnect after a restart deliver what they buffered; a stopping server hands its unsettled
//! windows to the next one ([`Aggregator::take_open_results`], [`Aggregator::resume_results`]).
//!
//! # Expiry
//! Every series not set for `series_ttl_ratio × window` disappears. An agent whose heartbeats
//! stop for that long reads 0 in `prober_agent_is_alive`, and its series goes an hour later.

mod families;
mod http;
mod icmp;
pub(crate) mod liveness;
mod robust;
pub(crate) mod series;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

pub use families::*;
pub use liveness::DEAD_AGENT_RETENTION;
pub use robust::RobustConfig;

use self::http::{HttpCell, aggregate_http_group};
use self::icmp::{IcmpCell, aggregate_icmp_pair};
pub use self::icmp::{IcmpMember, IcmpOutlier};
use self::liveness::Liveness;
use self::series::SeriesStore;
use crate::model::time::duration_millis;
use crate::model::{
    AgentId, AgentVersion, ProbeKind, ProbeOutcome, ProbeResult, Region, UnixMillis,
};
use crate::snapshot::Snapshot;

/// How the results of a region's agents are combined into one value per region pair.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum AggregationMethod {
    /// Leave out a minority of broken source agents and target hosts, then take the mean of the
    /// rest (the default; see `docs/aggregation.md`).
    #[default]
    Robust,
    /// The Go system's plain mean over every result (with the decided fixes).
    Mean,
}

impl AggregationMethod {
    /// The flag spelling.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Robust => "robust",
            Self::Mean => "mean",
        }
    }
}

impl fmt::Display for AggregationMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown aggregation method name.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("unknown aggregation method {0:?}; expected \"robust\" or \"mean\"")]
pub struct UnknownMethod(pub String);

impl FromStr for AggregationMethod {
    type Err = UnknownMethod;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "robust" => Ok(Self::Robust),
            "mean" => Ok(Self::Mean),
            other => Err(UnknownMethod(other.to_owned())),
        }
    }
}

/// Why an aggregator configuration was refused.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The window is shorter than one second.
    #[error("aggregation interval must be at least 1s, got {0:?}")]
    WindowTooShort(Duration),
    /// The expiry ratio is zero.
    #[error("series cache ratio must be at least 1")]
    ZeroRatio,
}

/// Settings of the aggregator (the server's `-server.aggregation.*`, `-server.series.cache.ratio`,
/// `-server.task` and `-server.probe.self` flags).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AggregatorConfig {
    /// Window length (`-server.aggregation.interval`, default 15 s).
    pub window: Duration,
    /// Series expire after this many windows without an update (default 5).
    pub series_ttl_ratio: u32,
    /// How agents of a region are combined.
    pub method: AggregationMethod,
    /// Tuning of the robust method.
    pub robust: RobustConfig,
    /// Value of `prober_server_task_enabled`.
    pub task_enabled: bool,
    /// Value of `prober_server_probe_self_enabled`.
    pub probe_self_enabled: bool,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(15),
            series_ttl_ratio: 5,
            method: AggregationMethod::Robust,
            robust: RobustConfig::default(),
            task_enabled: false,
            probe_self_enabled: false,
        }
    }
}

impl AggregatorConfig {
    /// How long a series or an agent lives without an update: ratio × window.
    #[must_use]
    pub fn series_ttl(&self) -> Duration {
        self.window.saturating_mul(self.series_ttl_ratio)
    }
}

/// What became of the results of one `handle_results` call.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Intake {
    /// Filed in their window.
    pub accepted: u64,
    /// Their window had already settled.
    pub dropped_late: u64,
    /// Their round starts more than one window ahead of the server's clock.
    pub dropped_future: u64,
    /// The same agent, target and round was already filed.
    pub dropped_duplicate: u64,
    /// Handed over from a previous server but so old that its series would have expired
    /// already ([`Aggregator::resume_results`] only).
    pub dropped_stale: u64,
}

/// Running totals since the aggregator was created, exposed as `prober_server_receive_points`
/// and `prober_server_dropped_points_total`.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Counters {
    /// ICMP results received over the link (handed-over ones are not counted again).
    pub received_icmp: u64,
    /// HTTP results received over the link.
    pub received_http: u64,
    /// Results whose window had settled.
    pub dropped_late: u64,
    /// Results more than one window ahead of the clock.
    pub dropped_future: u64,
    /// Results filed already (same agent, target and round).
    pub dropped_duplicate: u64,
    /// Results in windows that settled (not exposed; with the results still open, it accounts
    /// for every result filed).
    pub settled_results: u64,
}

/// A region pair of a window: source region, target region.
type PairKey = (Region, Region);
/// Identity of one result inside its region pair: one agent (by IP; its region is the pair's
/// source) probes one target once per round.
type MemberKey = (IpAddr, String, UnixMillis);
/// The results of one unsettled window, grouped by region pair as they are filed, so settling
/// needs no sort of the whole window. The outcomes (large: each holds a histogram) sit in one
/// vector, so the maps that find them stay small and cheap to grow.
#[derive(Debug, Default)]
struct OpenWindow {
    /// Every filed result's outcome, in filing order.
    outcomes: Vec<ProbeOutcome>,
    /// Index into `outcomes` of each result, by region pair and member.
    pairs: HashMap<PairKey, HashMap<MemberKey, usize>>,
}

impl OpenWindow {
    /// Number of results filed.
    fn len(&self) -> usize {
        self.outcomes.len()
    }
}

/// The server's aggregator. See the module documentation for the model.
#[derive(Debug)]
pub struct Aggregator {
    config: AggregatorConfig,
    window_ms: u64,
    /// Unsettled windows by index, each holding its results.
    open: BTreeMap<u64, OpenWindow>,
    /// Windows below this index have settled (or are too old to take).
    first_unsettled: u64,
    /// No window settles before this instant: one window after the start, so agents have
    /// time to reconnect and deliver what they buffered while no server ran.
    settle_not_before: UnixMillis,
    /// Whether a window has been settled (before that, handed-over windows may reopen).
    settled_any: bool,
    series: SeriesStore,
    liveness: Liveness,
    counters: Counters,
}

impl Aggregator {
    /// A new aggregator starting at `now`: the window holding `now` and the one before it are
    /// still open (results of the last round before a restart are taken), and nothing settles
    /// before `now + window` (agents reconnecting after a restart deliver what they buffered).
    ///
    /// # Errors
    /// [`ConfigError`] when the window is under one second or the ratio is zero.
    pub fn new(config: AggregatorConfig, now: UnixMillis) -> Result<Self, ConfigError> {
        if config.window < Duration::from_secs(1) {
            return Err(ConfigError::WindowTooShort(config.window));
        }
        if config.series_ttl_ratio == 0 {
            return Err(ConfigError::ZeroRatio);
        }
        let window_ms = duration_millis(config.window);
        Ok(Self {
            config,
            window_ms,
            open: BTreeMap::new(),
            first_unsettled: (now.as_millis() / window_ms).saturating_sub(1),
            settle_not_before: UnixMillis(now.as_millis().saturating_add(window_ms)),
            settled_any: false,
            series: SeriesStore::default(),
            liveness: Liveness::default(),
            counters: Counters::default(),
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &AggregatorConfig {
        &self.config
    }

    /// The running totals.
    #[must_use]
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Records a heartbeat of `agent` running `version`.
    pub fn handle_heartbeat(&mut self, now: UnixMillis, agent: &AgentId, version: &AgentVersion) {
        self.liveness.handle_heartbeat(now, agent, version);
    }

    /// Files results in their windows. Every result counts in `prober_server_receive_points`.
    pub fn handle_results(
        &mut self,
        now: UnixMillis,
        results: impl IntoIterator<Item = ProbeResult>,
    ) -> Intake {
        self.file(now, results, true)
    }

    /// Files the results a previous server handed over ([`Self::take_open_results`]) in their
    /// windows, reopening those windows if nothing has settled here yet: they were unsettled
    /// on the previous server, so none is published twice, and overdue ones settle at the next
    /// [`Self::handle_timeout`] after the start-up grace. They were received (and counted) by
    /// that server, so no counter counts them again; a result also received over the link is
    /// filed once. Results whose series would have expired already are dropped as stale, and
    /// after a window has settled here older ones are dropped as late (neither is exported).
    pub fn resume_results(
        &mut self,
        now: UnixMillis,
        results: impl IntoIterator<Item = ProbeResult>,
    ) -> Intake {
        let ttl_windows = u64::from(self.config.series_ttl_ratio);
        let now_index = self.window_index(now);
        let mut stale = 0;
        let fresh: Vec<ProbeResult> = results
            .into_iter()
            .filter(|result| {
                let index = self.window_index(result.round_start);
                // Settled at (index + 2) × window, its series would live ttl windows more.
                let keep = index.saturating_add(2).saturating_add(ttl_windows) > now_index;
                if !keep {
                    stale += 1;
                }
                keep
            })
            .collect();
        if !self.settled_any
            && let Some(oldest) = fresh.iter().map(|r| self.window_index(r.round_start)).min()
        {
            self.first_unsettled = self.first_unsettled.min(oldest);
        }
        let mut intake = self.file(now, fresh, false);
        intake.dropped_stale = stale;
        intake
    }

    /// Empties every unsettled window and returns its results, for a server that stops to hand
    /// them to the next one ([`Self::resume_results`]). The windows are not settled: the next
    /// server settles them, with whatever arrives there too.
    pub fn take_open_results(&mut self) -> Vec<ProbeResult> {
        let open = std::mem::take(&mut self.open);
        let mut results = Vec::with_capacity(open.values().map(OpenWindow::len).sum());
        for window in open.into_values() {
            let mut outcomes: Vec<Option<ProbeOutcome>> =
                window.outcomes.into_iter().map(Some).collect();
            for ((source_region, target_region), members) in window.pairs {
                for ((ip, target, round_start), index) in members {
                    let Some(outcome) = outcomes.get_mut(index).and_then(Option::take) else {
                        continue;
                    };
                    results.push(ProbeResult {
                        source: AgentId::new(source_region.clone(), ip),
                        target_region: target_region.clone(),
                        target,
                        round_start,
                        outcome,
                    });
                }
            }
        }
        results
    }

    /// The index of the window holding `at`.
    fn window_index(&self, at: UnixMillis) -> u64 {
        at.as_millis() / self.window_ms
    }

    fn file(
        &mut self,
        now: UnixMillis,
        results: impl IntoIterator<Item = ProbeResult>,
        count_received: bool,
    ) -> Intake {
        let mut intake = Intake::default();
        let newest_allowed = self.window_index(now) + 1;
        let mut results = results.into_iter();
        while let Some(result) = results.next() {
            if count_received {
                match result.outcome.kind() {
                    ProbeKind::Icmp => self.counters.received_icmp += 1,
                    ProbeKind::Http => self.counters.received_http += 1,
                }
            }
            let index = self.window_index(result.round_start);
            if index < self.first_unsettled {
                intake.dropped_late += 1;
                continue;
            }
            if index > newest_allowed {
                intake.dropped_future += 1;
                continue;
            }
            let window = self.open.entry(index).or_default();
            // The result's own regions and target become the key: nothing is cloned.
            let members = window
                .pairs
                .entry((result.source.region, result.target_region))
                .or_default();
            let key = (result.source.ip, result.target, result.round_start);
            match members.entry(key) {
                Entry::Occupied(_) => intake.dropped_duplicate += 1,
                Entry::Vacant(slot) => {
                    if window.outcomes.len() == window.outcomes.capacity() {
                        // Room for the rest of the batch at once (at most the batch).
                        window.outcomes.reserve(results.size_hint().0 + 1);
                    }
                    slot.insert(window.outcomes.len());
                    window.outcomes.push(result.outcome);
                    intake.accepted += 1;
                }
            }
        }
        if count_received {
            self.counters.dropped_late += intake.dropped_late;
            self.counters.dropped_future += intake.dropped_future;
            self.counters.dropped_duplicate += intake.dropped_duplicate;
        }
        intake
    }

    /// Settles every window that ended at least one window before `now` (none during the
    /// start-up grace), then expires series and forgotten agents. Call it at least once per
    /// window (at [`Self::next_timeout`]).
    pub fn handle_timeout(&mut self, now: UnixMillis) {
        // Window k settles at (k + 2) × window.
        let settle_below = if now < self.settle_not_before {
            0
        } else {
            self.settled_any = true;
            self.window_index(now).saturating_sub(1)
        };
        while self.first_unsettled < settle_below {
            let index = self.first_unsettled;
            if let Some(results) = self.open.remove(&index) {
                self.counters.settled_results += results.len() as u64;
                // Stamp with the nominal settle instant, so expiry does not depend on how
                // punctually the driver calls us.
                let settled_at = UnixMillis(index.saturating_add(2).saturating_mul(self.window_ms));
                self.settle(settled_at, &results);
            }
            self.first_unsettled = match self.open.keys().next() {
                Some(next) if *next < settle_below => *next,
                _ => settle_below,
            };
        }
        let ttl = self.config.series_ttl();
        self.series.expire(now, ttl);
        self.liveness.expire(now, ttl);
    }

    /// When `handle_timeout` next has a window to settle.
    #[must_use]
    pub fn next_timeout(&self) -> UnixMillis {
        UnixMillis(
            self.first_unsettled
                .saturating_add(2)
                .saturating_mul(self.window_ms),
        )
        .max(self.settle_not_before)
    }

    /// Agents with a live heartbeat, each once (for dynamic discovery).
    #[must_use]
    pub fn live_agents(&self, now: UnixMillis) -> Vec<AgentId> {
        self.liveness.live_agents(now, self.config.series_ttl())
    }

    /// Every series to expose at `now`.
    #[must_use]
    pub fn snapshot(&self, now: UnixMillis) -> Snapshot {
        self.snapshot_part(now, SnapshotPart::All)
    }

    /// Part of the series to expose at `now` (see [`SnapshotPart`]): an exporter can render
    /// the settled part once per window and only the live part at every scrape.
    #[must_use]
    pub fn snapshot_part(&self, now: UnixMillis, part: SnapshotPart) -> Snapshot {
        families::render(
            &families::RenderInput {
                now,
                ttl: self.config.series_ttl(),
                series: &self.series,
                liveness: &self.liveness,
                counters: &self.counters,
                task_enabled: self.config.task_enabled,
                probe_self_enabled: self.config.probe_self_enabled,
            },
            part,
        )
    }

    /// The exposed per-pair state and the agents' heartbeats, for the mesh view.
    pub(crate) fn exposed(&self) -> (&SeriesStore, &Liveness) {
        (&self.series, &self.liveness)
    }

    fn settle(&mut self, now: UnixMillis, results: &OpenWindow) {
        let (method, robust) = (self.config.method, self.config.robust);
        // Arrival order must not matter: fix the order of every pair's results (by source IP,
        // target, round, as a sort of the whole window would) before any floating-point sum.
        let mut sorted: Vec<(&MemberKey, &ProbeOutcome)> = Vec::new();
        let mut icmp_cells: Vec<IcmpCell<'_>> = Vec::new();
        // In key order, so the series map is built front to back (its nodes then lie in the
        // order a snapshot reads them).
        let mut pairs: Vec<_> = results.pairs.iter().collect();
        pairs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for ((source_region, target_region), members) in pairs {
            sorted.clear();
            sorted.extend(
                members
                    .iter()
                    .filter_map(|(key, index)| Some((key, results.outcomes.get(*index)?))),
            );
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            icmp_cells.clear();
            let mut http_groups: BTreeMap<&str, Vec<HttpCell<'_>>> = BTreeMap::new();
            for ((ip, target, _), outcome) in sorted.iter().copied() {
                match outcome {
                    ProbeOutcome::Icmp(result) => icmp_cells.push(IcmpCell {
                        source: *ip,
                        target,
                        result,
                    }),
                    ProbeOutcome::Http(result) => {
                        http_groups.entry(target).or_default().push(HttpCell {
                            source: *ip,
                            result,
                        })
                    }
                }
            }
            if !icmp_cells.is_empty() {
                let window = aggregate_icmp_pair(&icmp_cells, method, &robust);
                self.series
                    .apply_icmp(now, (source_region.clone(), target_region.clone()), window);
            }
            for (addr, cells) in http_groups {
                let window = aggregate_http_group(&cells, method, &robust);
                self.series.apply_http(
                    now,
                    (
                        source_region.clone(),
                        target_region.clone(),
                        addr.to_owned(),
                    ),
                    window,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IcmpResult;
    use std::net::{IpAddr, Ipv4Addr};

    const WINDOW_MS: u64 = 15_000;

    fn region(name: &str) -> Region {
        Region::new(name).unwrap()
    }

    fn agent(region_name: &str, last_octet: u8) -> AgentId {
        AgentId::new(
            region(region_name),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, last_octet)),
        )
    }

    fn icmp(source: &AgentId, target: &str, round_start_ms: u64, received: usize) -> ProbeResult {
        let rtts = vec![Duration::from_millis(10); received];
        ProbeResult {
            source: source.clone(),
            target_region: region("b"),
            target: target.to_owned(),
            round_start: UnixMillis(round_start_ms),
            outcome: ProbeOutcome::Icmp(IcmpResult::measured(Duration::ZERO, 10, &rtts)),
        }
    }

    fn aggregator(now_ms: u64) -> Aggregator {
        Aggregator::new(AggregatorConfig::default(), UnixMillis(now_ms)).unwrap()
    }

    fn loss(aggregator: &Aggregator, now_ms: u64) -> Option<f64> {
        aggregator
            .snapshot(UnixMillis(now_ms))
            .number(ICMP_LOSS, &[("source_region", "a"), ("target_region", "b")])
    }

    #[test]
    fn a_window_settles_one_window_after_it_ends() {
        let start = 100 * WINDOW_MS;
        let mut agg = aggregator(start);
        let a1 = agent("a", 1);
        agg.handle_results(UnixMillis(start + 1000), [icmp(&a1, "t", start + 500, 9)]);
        agg.handle_timeout(UnixMillis(start + 2 * WINDOW_MS - 1));
        assert_eq!(
            loss(&agg, start + 2 * WINDOW_MS - 1),
            None,
            "not settled before (k + 2) x window"
        );
        assert_eq!(agg.next_timeout(), UnixMillis(start + 2 * WINDOW_MS));
        agg.handle_timeout(UnixMillis(start + 2 * WINDOW_MS));
        assert_eq!(loss(&agg, start + 2 * WINDOW_MS), Some(10.0));
    }

    #[test]
    fn late_future_and_duplicate_results_are_counted_and_dropped() {
        let start = 100 * WINDOW_MS;
        let mut agg = aggregator(start);
        let a1 = agent("a", 1);
        let intake = agg.handle_results(
            UnixMillis(start),
            [
                icmp(&a1, "t", start - 2 * WINDOW_MS, 10), // two windows old: already settled
                icmp(&a1, "t", start - WINDOW_MS, 10),     // previous window: still open
                icmp(&a1, "t", start + 3 * WINDOW_MS, 10), // clock far ahead
                icmp(&a1, "t", start + 10, 10),
                icmp(&a1, "t", start + 10, 10), // the same round twice
            ],
        );
        assert_eq!(
            intake,
            Intake {
                accepted: 2,
                dropped_late: 1,
                dropped_future: 1,
                dropped_duplicate: 1,
                dropped_stale: 0,
            }
        );
        let snapshot = agg.snapshot(UnixMillis(start));
        assert_eq!(
            snapshot.number(RECEIVE_POINTS, &[("prober_type", "icmp")]),
            Some(5.0)
        );
        assert_eq!(
            snapshot.number(DROPPED_POINTS, &[("reason", "late")]),
            Some(1.0)
        );
        assert_eq!(
            snapshot.number(DROPPED_POINTS, &[("reason", "duplicate")]),
            Some(1.0)
        );
    }

    /// Everything but the receive counter, which counts per server process.
    fn settled_series(agg: &Aggregator, now_ms: u64) -> Snapshot {
        let mut snapshot = agg.snapshot(UnixMillis(now_ms));
        snapshot.families.retain(|f| f.name != RECEIVE_POINTS);
        snapshot
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]

        /// A server that stops mid-run and hands its open windows to the next one, which starts
        /// after an outage (results made meanwhile wait on the agents), publishes exactly what
        /// one server running throughout would have, once the new one's start-up grace is over.
        #[test]
        fn a_handover_publishes_what_an_uninterrupted_server_would(
            received in proptest::collection::vec(0usize..=10, 24),
            delays_ms in proptest::collection::vec(0u64..WINDOW_MS, 24),
            stop_offset_ms in 0u64..WINDOW_MS,
            outage_ms in 0u64..2 * WINDOW_MS,
        ) {
            let start = 100 * WINDOW_MS;
            // The first server stops during window 101 (before anything settled there) and
            // the next starts up to two windows later.
            let stop = start + WINDOW_MS + stop_offset_ms;
            let restart = stop + outage_ms;
            // Four rounds of three agents probing two targets, each result arriving within a
            // window of its round's start; the timer ticks every half window.
            let mut events: Vec<(u64, Option<ProbeResult>)> = Vec::new();
            for (i, (received, delay)) in received.iter().zip(&delays_ms).enumerate() {
                let round_start = start + (i as u64 / 6) * WINDOW_MS;
                let source = agent("a", 1 + (i % 3) as u8);
                let target = if i % 6 < 3 { "t1" } else { "t2" };
                events.push((round_start + delay, Some(icmp(&source, target, round_start, *received))));
            }
            let end = start + 9 * WINDOW_MS;
            events.extend((0..).map(|n| start + n * WINDOW_MS / 2).take_while(|t| *t <= end).map(|t| (t, None)));
            events.sort_by_key(|(at, result)| (*at, result.is_some()));

            let mut throughout = aggregator(start);
            let mut first = aggregator(start);
            let mut next: Option<Aggregator> = None;
            let mut waiting: Vec<ProbeResult> = Vec::new();
            for (at, result) in events {
                match &result {
                    Some(result) => { throughout.handle_results(UnixMillis(at), [result.clone()]); }
                    None => throughout.handle_timeout(UnixMillis(at)),
                }
                if at < stop {
                    match result {
                        Some(result) => { first.handle_results(UnixMillis(at), [result]); }
                        None => first.handle_timeout(UnixMillis(at)),
                    }
                    continue;
                }
                if at < restart {
                    waiting.extend(result);
                    continue;
                }
                let server = next.get_or_insert_with(|| {
                    let mut server = aggregator(restart);
                    let intake = server.resume_results(UnixMillis(restart), first.take_open_results());
                    assert_eq!(intake.dropped_late + intake.dropped_stale + intake.dropped_duplicate, 0);
                    let intake = server.handle_results(UnixMillis(restart), waiting.drain(..));
                    assert_eq!(intake.dropped_late + intake.dropped_duplicate, 0);
                    server
                });
                match result {
                    Some(result) => { server.handle_results(UnixMillis(at), [result]); }
                    None => server.handle_timeout(UnixMillis(at)),
                }
                if at >= restart + WINDOW_MS && at % WINDOW_MS == 0 {
                    proptest::prop_assert_eq!(settled_series(server, at), settled_series(&throughout, at), "at {}", at);
                }
            }
            proptest::prop_assert_eq!(
                throughout.snapshot(UnixMillis(end)).number(DROPPED_POINTS, &[("reason", "late")]),
                Some(0.0)
            );
            let server = next.expect("the next server ran");
            proptest::prop_assert_eq!(server.counters().settled_results, 24 - first.counters().settled_results);
            proptest::prop_assert_eq!(first.counters().settled_results, 0);
        }
    }

    #[test]
    fn handed_over_windows_reopen_until_the_first_settle_and_stale_ones_are_dropped() {
        let start = 100 * WINDOW_MS;
        let a1 = agent("a", 1);
        let mut before = aggregator(start);
        before.handle_results(UnixMillis(start + 10), [icmp(&a1, "t", start, 9)]);
        let open = before.take_open_results();
        assert_eq!(open, vec![icmp(&a1, "t", start, 9)]);
        assert!(before.take_open_results().is_empty());

        // The next server starts after window 100 was due (102 × W): it reopens it, and
        // settles it once its start-up grace is over.
        let restart = start + 2 * WINDOW_MS + 10;
        let mut next = aggregator(restart);
        let intake = next.resume_results(UnixMillis(restart), open.clone());
        assert_eq!((intake.accepted, intake.dropped_late), (1, 0));
        assert_eq!(next.next_timeout(), UnixMillis(restart + WINDOW_MS));
        next.handle_timeout(UnixMillis(restart + WINDOW_MS - 1));
        assert_eq!(
            loss(&next, restart + WINDOW_MS - 1),
            None,
            "not during the grace"
        );
        next.handle_timeout(UnixMillis(restart + WINDOW_MS));
        assert_eq!(loss(&next, restart + WINDOW_MS), Some(10.0));
        assert_eq!(next.counters().settled_results, 1);

        // The agent resends it over the link (its ack was lost): filed once, and only the
        // resend counts as received.
        let mut soon = aggregator(start + WINDOW_MS);
        soon.resume_results(UnixMillis(start + WINDOW_MS), open.clone());
        let intake = soon.handle_results(UnixMillis(start + WINDOW_MS), [icmp(&a1, "t", start, 9)]);
        assert_eq!(intake.dropped_duplicate, 1);
        assert_eq!(
            soon.snapshot(UnixMillis(start + WINDOW_MS))
                .number(RECEIVE_POINTS, &[("prober_type", "icmp")]),
            Some(1.0)
        );

        // A file older than the series it would make is dropped as stale; after a window has
        // settled, older windows do not reopen. Neither counts in the exported counters.
        let long_after = start + 7 * WINDOW_MS;
        let mut later = aggregator(long_after);
        assert_eq!(
            later
                .resume_results(UnixMillis(long_after), open.clone())
                .dropped_stale,
            1
        );
        let mut settled = aggregator(start + 3 * WINDOW_MS);
        settled.handle_timeout(UnixMillis(start + 4 * WINDOW_MS));
        let intake = settled.resume_results(UnixMillis(start + 4 * WINDOW_MS), open);
        assert_eq!((intake.accepted, intake.dropped_late), (0, 1));
        assert_eq!(
            settled
                .snapshot(UnixMillis(start + 4 * WINDOW_MS))
                .number(DROPPED_POINTS, &[("reason", "late")]),
            Some(0.0)
        );
    }

    #[test]
    fn agents_turn_dead_after_the_ttl_and_vanish_an_hour_later() {
        let start = 100 * WINDOW_MS;
        let mut agg = aggregator(start);
        let a1 = agent("a", 1);
        let version = AgentVersion::new("0.1.0");
        agg.handle_heartbeat(UnixMillis(start), &a1, &version);
        let alive = |agg: &Aggregator, at: u64| {
            agg.snapshot(UnixMillis(at)).number(
                AGENT_ALIVE,
                &[("region", "a"), ("ip", "10.0.0.1"), ("version", "0.1.0")],
            )
        };
        let ttl_ms = 5 * WINDOW_MS;
        assert_eq!(alive(&agg, start + ttl_ms), Some(1.0));
        assert_eq!(
            agg.live_agents(UnixMillis(start + ttl_ms)),
            vec![a1.clone()]
        );
        assert_eq!(alive(&agg, start + ttl_ms + 1000), Some(0.0));
        assert!(
            agg.live_agents(UnixMillis(start + ttl_ms + 1000))
                .is_empty()
        );
        agg.handle_timeout(UnixMillis(start + ttl_ms + 3_600_000));
        assert_eq!(alive(&agg, start + ttl_ms + 3_600_000), Some(0.0));
        agg.handle_timeout(UnixMillis(start + ttl_ms + 3_601_000));
        assert_eq!(alive(&agg, start + ttl_ms + 3_601_000), None);
    }

    #[test]
    fn bad_configs_are_refused() {
        let short = AggregatorConfig {
            window: Duration::from_millis(999),
            ..AggregatorConfig::default()
        };
        assert!(matches!(
            Aggregator::new(short, UnixMillis(0)),
            Err(ConfigError::WindowTooShort(_))
        ));
        let zero = AggregatorConfig {
            series_ttl_ratio: 0,
            ..AggregatorConfig::default()
        };
        assert_eq!(
            Aggregator::new(zero, UnixMillis(0)).unwrap_err(),
            ConfigError::ZeroRatio
        );
        assert_eq!(
            "mean".parse::<AggregationMethod>(),
            Ok(AggregationMethod::Mean)
        );
        assert!(
            "median"
                .parse::<AggregationMethod>()
                .unwrap_err()
                .to_string()
                .contains("\"median\"")
        );
    }
}
