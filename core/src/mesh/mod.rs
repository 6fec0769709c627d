//! The built-in mesh view (issue 16): what the server's page and `/api/v1/mesh` show, built
//! from the aggregator's exposed per-pair state at a `now` passed in. A region × region matrix
//! of cells, each in a state that never lies ([`CellState`]), the HTTP region × URL table, the
//! agent list, and per pair the bounded history ([`history`]) and the per-member breakdown.
//!
//! Pure: the adapters render it (JSON, the page); nothing here reads a clock or serialises.

pub mod history;

use std::collections::BTreeSet;
use std::time::Duration;

pub use self::history::{HistoryLimits, HistoryPoint, MeshHistory};
use crate::aggregate::series::{IcmpPairSeries, Stamped};
use crate::aggregate::{Aggregator, IcmpMember};
use crate::model::{AgentId, AgentVersion, HttpPhases, Region, UnixMillis};

/// The state of one cell, in the order it is decided: a cell is in the first state that
/// applies.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum CellState {
    /// The server holds nothing for the pair (never measured, or expired).
    NoData,
    /// The pair's latest window is older than [`stale_after`]: a window was missed.
    Stale,
    /// The latest window lost every echo (or could not measure at all).
    Failed,
    /// The robust aggregator left out this many source agents or target hosts.
    Partial {
        /// Members left out.
        left_out: usize,
    },
    /// Fresh, measured, nothing left out (the loss and RTT may still be bad: see the metric).
    Healthy,
}

impl CellState {
    /// The name in the JSON and the page.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoData => "no_data",
            Self::Stale => "stale",
            Self::Failed => "failed",
            Self::Partial { .. } => "partial",
            Self::Healthy => "healthy",
        }
    }
}

/// What the latest window of a pair said, the input of [`classify`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairFacts {
    /// When the latest window was settled.
    pub updated_at: UnixMillis,
    /// Its loss (0 to 1), `None` when no result sent echoes.
    pub loss_ratio: Option<f64>,
    /// Its failed results.
    pub failed_results: u64,
    /// Members the robust method left out.
    pub left_out: usize,
}

/// How old a pair's latest window may be before its cell is stale: one and a half windows (a
/// window settles at its nominal instant; half a window of lateness of the server's tick is
/// not called stale, a missed window is).
#[must_use]
pub fn stale_after(window: Duration) -> Duration {
    window + window / 2
}

/// The state of a cell at `now`.
#[must_use]
pub fn classify(now: UnixMillis, window: Duration, facts: Option<&PairFacts>) -> CellState {
    let Some(facts) = facts else {
        return CellState::NoData;
    };
    if now.saturating_duration_since(facts.updated_at) > stale_after(window) {
        return CellState::Stale;
    }
    let all_lost = match facts.loss_ratio {
        Some(loss) => loss >= 1.0,
        None => facts.failed_results > 0,
    };
    if all_lost {
        return CellState::Failed;
    }
    if facts.left_out > 0 {
        return CellState::Partial {
            left_out: facts.left_out,
        };
    }
    CellState::Healthy
}

/// Colour thresholds of the legend: below the first a value is good, from the last it is bad.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// Loss ratio steps (0 to 1).
    pub loss_ratio: [f64; 3],
    /// RTT steps (used for the mean, p50 and p90).
    pub rtt: [Duration; 3],
    /// Jitter steps.
    pub jitter: [Duration; 3],
}

/// The thresholds the page's legend shows.
pub const THRESHOLDS: Thresholds = Thresholds {
    loss_ratio: [0.001, 0.01, 0.05],
    rtt: [
        Duration::from_millis(20),
        Duration::from_millis(80),
        Duration::from_millis(200),
    ],
    jitter: [
        Duration::from_millis(2),
        Duration::from_millis(10),
        Duration::from_millis(40),
    ],
};

/// The numbers of a cell (its latest window); `None` where that window had none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CellMetrics {
    /// Mean loss (0 to 1).
    pub loss_ratio: Option<f64>,
    /// Mean RTT.
    pub rtt: Option<Duration>,
    /// Median RTT of the window's echoes, from the RTT histogram.
    pub rtt_p50: Option<Duration>,
    /// 90th percentile RTT, from the RTT histogram.
    pub rtt_p90: Option<Duration>,
    /// Mean of the per-probe RTT standard deviations.
    pub jitter: Option<Duration>,
}

/// One cell: a source region's view of a target region.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshCell {
    /// Row.
    pub source: Region,
    /// Column.
    pub target: Region,
    /// The state.
    pub state: CellState,
    /// The numbers.
    pub metrics: CellMetrics,
    /// Failed results in the latest window.
    pub failed_results: u64,
    /// When the latest window settled (`None`: no data).
    pub updated_at: Option<UnixMillis>,
}

/// One row of the HTTP table: a source region probing one URL.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpRow {
    /// The probing region.
    pub source: Region,
    /// The URL's region in the probe file.
    pub target_region: Region,
    /// The URL as configured (untrusted text: escape it where shown).
    pub url: String,
    /// Mean phases over successful probes, in [`HttpPhases::NAMES`] order.
    pub phases: Option<[Duration; 5]>,
    /// The most frequent status code (0: no response).
    pub status_code: u16,
    /// Failed probes in the latest window.
    pub failed_results: u64,
    /// The most frequent failure reason, `success` when none failed.
    pub failure_reason: String,
    /// TLS version of successful TLS probes.
    pub tls_version: Option<&'static str>,
    /// Earliest certificate expiry (Unix seconds).
    pub cert_expiry_unix_seconds: Option<i64>,
    /// Source agents left out, by IP.
    pub left_out: Vec<String>,
    /// When the latest window settled.
    pub updated_at: UnixMillis,
    /// Older than [`stale_after`].
    pub stale: bool,
}

impl HttpRow {
    /// The phase names, in [`Self::phases`] order.
    pub const PHASES: [&'static str; 5] = HttpPhases::NAMES;
}

/// One agent of the agent list.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentRow {
    /// Region and IP.
    pub agent: AgentId,
    /// The version it reported.
    pub version: AgentVersion,
    /// Whether its heartbeats arrive (within the series TTL, as `prober_agent_is_alive`).
    pub alive: bool,
    /// Its last heartbeat.
    pub last_heartbeat: UnixMillis,
}

/// The whole view at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshView {
    /// The instant it was built for.
    pub generated_at: UnixMillis,
    /// The aggregation window (the page refreshes once per window).
    pub window: Duration,
    /// A line the page shows above the matrix (the demo's "simulated WAN" label).
    pub notice: Option<String>,
    /// The axes, sorted: every region with an agent or an ICMP pair.
    pub regions: Vec<Region>,
    /// `regions.len()²` cells, row-major: `cells[source × n + target]`.
    pub cells: Vec<MeshCell>,
    /// The HTTP table, by source region then URL.
    pub http: Vec<HttpRow>,
    /// Every known agent.
    pub agents: Vec<AgentRow>,
}

/// A pair's page: its cell, history and breakdown.
#[derive(Clone, Debug, PartialEq)]
pub struct PairView {
    /// The cell, as in the matrix.
    pub cell: MeshCell,
    /// The window.
    pub window: Duration,
    /// Oldest first, at window resolution.
    pub history: Vec<HistoryPoint>,
    /// How many points the ring keeps at most now.
    pub history_capacity: usize,
    /// Every source agent and target host of the latest window, with what it saw and whether
    /// the robust aggregator left it out.
    pub members: Vec<IcmpMember>,
}

/// A stamped slot's value when it was set by the latest window (`at`).
fn of_latest<T: Copy>(slot: Option<&Stamped<T>>, at: UnixMillis) -> Option<T> {
    slot.filter(|s| s.updated_at == at).map(|s| s.value)
}

fn pair_facts(series: &IcmpPairSeries) -> Option<PairFacts> {
    let failed = series.failed.as_ref()?;
    let at = failed.updated_at;
    Some(PairFacts {
        updated_at: at,
        loss_ratio: of_latest(series.loss_percent.as_ref(), at).map(|p| p / 100.0),
        failed_results: failed.value,
        left_out: series
            .outliers
            .as_ref()
            .filter(|s| s.updated_at == at)
            .map_or(0, |s| s.value.len()),
    })
}

fn seconds(value: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(value).ok()
}

fn cell_of(
    now: UnixMillis,
    window: Duration,
    source: &Region,
    target: &Region,
    series: Option<&IcmpPairSeries>,
    history: &MeshHistory,
) -> MeshCell {
    let facts = series.and_then(pair_facts);
    let state = classify(now, window, facts.as_ref());
    let mut metrics = CellMetrics::default();
    if let (Some(series), Some(facts)) = (series, &facts) {
        let at = facts.updated_at;
        metrics.loss_ratio = facts.loss_ratio;
        metrics.rtt = of_latest(series.durations_seconds.as_ref(), at).and_then(|d| seconds(d[1]));
        metrics.jitter = of_latest(series.jitter_seconds.as_ref(), at).and_then(seconds);
        // The window's own quantiles when the history has them, else the cumulative ones.
        match history.latest(source, target).filter(|p| p.at == at) {
            Some(point) => {
                metrics.rtt_p50 = point.rtt_p50;
                metrics.rtt_p90 = point.rtt_p90;
            }
            None => {
                if let Some(h) = &series.histogram {
                    metrics.rtt_p50 = h.value.quantile(0.5);
                    metrics.rtt_p90 = h.value.quantile(0.9);
                }
            }
        }
    }
    MeshCell {
        source: source.clone(),
        target: target.clone(),
        state,
        metrics,
        failed_results: facts.as_ref().map_or(0, |f| f.failed_results),
        updated_at: facts.map(|f| f.updated_at),
    }
}

/// Builds the view at `now` from the aggregator's exposed state and the history.
#[must_use]
pub fn build(
    aggregator: &Aggregator,
    history: &MeshHistory,
    notice: Option<&str>,
    now: UnixMillis,
) -> MeshView {
    let (series, liveness) = aggregator.exposed();
    let config = aggregator.config();
    let window = config.window;
    let ttl = config.series_ttl();
    let mut regions: BTreeSet<&Region> = BTreeSet::new();
    for (source, target) in series.icmp.keys() {
        regions.insert(source);
        regions.insert(target);
    }
    let mut agents = Vec::new();
    for (agent, version, last) in liveness.heartbeats() {
        regions.insert(&agent.region);
        agents.push(AgentRow {
            agent: agent.clone(),
            version: version.clone(),
            alive: now.saturating_duration_since(last) <= ttl,
            last_heartbeat: last,
        });
    }
    let regions: Vec<Region> = regions.into_iter().cloned().collect();
    let mut cells = Vec::with_capacity(regions.len() * regions.len());
    for source in &regions {
        for target in &regions {
            // The pair's key is owned; look it up without cloning both regions per cell.
            let pair = series
                .icmp
                .range((source.clone(), target.clone())..)
                .next()
                .filter(|((s, t), _)| s == source && t == target)
                .map(|(_, v)| v);
            cells.push(cell_of(now, window, source, target, pair, history));
        }
    }
    let http = series
        .http
        .iter()
        .filter_map(|((source, target_region, url), group)| {
            let failed = group.failed.as_ref()?;
            let at = failed.updated_at;
            let tls = of_latest_ref(group.tls.as_ref(), at);
            Some(HttpRow {
                source: source.clone(),
                target_region: target_region.clone(),
                url: url.clone(),
                phases: of_latest(group.phases_seconds.as_ref(), at)
                    .map(|p| p.map(|s| seconds(s).unwrap_or_default())),
                status_code: of_latest(group.status_code.as_ref(), at).unwrap_or(0),
                failed_results: failed.value.0,
                failure_reason: failed.value.1.clone(),
                tls_version: tls.map(|(v, _)| v.as_str()),
                cert_expiry_unix_seconds: tls.map(|(_, expiry)| *expiry),
                left_out: of_latest_ref(group.outliers.as_ref(), at)
                    .cloned()
                    .unwrap_or_default(),
                updated_at: at,
                stale: now.saturating_duration_since(at) > stale_after(window),
            })
        })
        .collect();
    MeshView {
        generated_at: now,
        window,
        notice: notice.map(str::to_owned),
        regions,
        cells,
        http,
        agents,
    }
}

fn of_latest_ref<T>(slot: Option<&Stamped<T>>, at: UnixMillis) -> Option<&T> {
    slot.filter(|s| s.updated_at == at).map(|s| &s.value)
}

/// The page of the pair `source` → `target` at `now`; `None` when neither region is known.
#[must_use]
pub fn pair(
    aggregator: &Aggregator,
    history: &MeshHistory,
    source: &Region,
    target: &Region,
    now: UnixMillis,
) -> Option<PairView> {
    let (series, liveness) = aggregator.exposed();
    let window = aggregator.config().window;
    let key = (source.clone(), target.clone());
    let pair = series.icmp.get(&key);
    // Known: a region with an agent, or the source of some pair. Checked without a scan of
    // every pair (this answers public requests under the state's lock): the pairs of one
    // source are contiguous in the map, so one of the neighbours of (region, target) is one
    // of them if any is.
    let is_a_source = |region: &Region| {
        let probe = (region.clone(), target.clone());
        series
            .icmp
            .range(..=probe.clone())
            .next_back()
            .into_iter()
            .chain(series.icmp.range(probe..).next())
            .any(|((s, _), _)| s == region)
    };
    let known = |region: &Region| {
        is_a_source(region) || liveness.heartbeats().any(|(a, _, _)| &a.region == region)
    };
    if pair.is_none() && !history.has(source, target) && !(known(source) && known(target)) {
        return None;
    }
    let cell = cell_of(now, window, source, target, pair, history);
    let members = pair
        .and_then(|p| p.members.as_ref())
        .filter(|m| Some(m.updated_at) == cell.updated_at)
        .map(|m| m.value.clone())
        .unwrap_or_default();
    Some(PairView {
        cell,
        window,
        history: history.points(source, target),
        history_capacity: history.capacity_per_pair(),
        members,
    })
}

#[cfg(test)]
mod tests;
