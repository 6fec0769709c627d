//! The mesh view's per-pair history: one point per settled window, in a bounded in-memory ring
//! per region pair. The server records at every aggregation tick ([`MeshHistory::record`],
//! with `now` passed in); the pair page shows the ring.
//!
//! Bound: a ring holds at most [`MeshHistory::capacity_per_pair`] points, the smaller of
//! `span / window` and `max_points / pairs`, so the whole history never holds more than
//! [`HistoryLimits::max_points`] points however many regions come (memory grows with regions²
//! only until that budget, then each ring gets shorter). Pairs with no point within `span` are
//! forgotten.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::aggregate::Aggregator;
use crate::model::{Region, UnixMillis};
use crate::stats::RttHistogram;

/// How much history is kept.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct HistoryLimits {
    /// How far back a ring reaches (6 h by default).
    pub span: Duration,
    /// The most points of all pairs together (1,000,000 by default, about 80 MB).
    pub max_points: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            span: Duration::from_secs(6 * 3600),
            max_points: 1_000_000,
        }
    }
}

/// One settled window of one pair.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HistoryPoint {
    /// When the window settled.
    pub at: UnixMillis,
    /// Mean loss (0 to 1).
    pub loss_ratio: Option<f64>,
    /// Mean RTT.
    pub rtt: Option<Duration>,
    /// Median RTT of this window's echoes.
    pub rtt_p50: Option<Duration>,
    /// 90th percentile RTT of this window's echoes.
    pub rtt_p90: Option<Duration>,
    /// Mean jitter.
    pub jitter: Option<Duration>,
    /// Failed results.
    pub failed_results: u64,
    /// Members the robust method left out.
    pub left_out: usize,
}

#[derive(Clone, Debug, Default)]
struct Ring {
    points: VecDeque<HistoryPoint>,
    /// The cumulative histogram at the last point, to take this window's part of the next.
    last_histogram: Option<RttHistogram>,
}

/// Every pair's ring.
#[derive(Clone, Debug)]
pub struct MeshHistory {
    window: Duration,
    limits: HistoryLimits,
    rings: BTreeMap<(Region, Region), Ring>,
}

impl MeshHistory {
    /// An empty history at `window` resolution.
    #[must_use]
    pub fn new(window: Duration, limits: HistoryLimits) -> Self {
        Self {
            window,
            limits,
            rings: BTreeMap::new(),
        }
    }

    /// The most points a ring holds now.
    #[must_use]
    pub fn capacity_per_pair(&self) -> usize {
        let window_ms = self.window.as_millis().max(1);
        let by_span = usize::try_from(self.limits.span.as_millis() / window_ms)
            .unwrap_or(usize::MAX)
            .max(1);
        let by_budget = (self.limits.max_points / self.rings.len().max(1)).max(1);
        by_span.min(by_budget)
    }

    /// Points held, all pairs together.
    #[must_use]
    pub fn total_points(&self) -> usize {
        self.rings.values().map(|r| r.points.len()).sum()
    }

    /// Whether the pair has a ring.
    #[must_use]
    pub fn has(&self, source: &Region, target: &Region) -> bool {
        self.rings.contains_key(&(source.clone(), target.clone()))
    }

    /// The pair's points, oldest first.
    #[must_use]
    pub fn points(&self, source: &Region, target: &Region) -> Vec<HistoryPoint> {
        self.rings
            .get(&(source.clone(), target.clone()))
            .map(|r| r.points.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The pair's newest point.
    #[must_use]
    pub fn latest(&self, source: &Region, target: &Region) -> Option<&HistoryPoint> {
        self.rings
            .get(&(source.clone(), target.clone()))?
            .points
            .back()
    }

    /// Files every pair the aggregator settled since the last call (one point per new
    /// window), then forgets pairs with nothing newer than `now - span`.
    pub fn record(&mut self, now: UnixMillis, aggregator: &Aggregator) {
        let (series, _) = aggregator.exposed();
        let mut grew = false;
        for (key, pair) in &series.icmp {
            let Some(failed) = &pair.failed else {
                continue;
            };
            let at = failed.updated_at;
            let ring = self.rings.get(key);
            if ring
                .and_then(|r| r.points.back())
                .is_some_and(|p| p.at >= at)
            {
                continue;
            }
            let latest = |slot: Option<(UnixMillis, f64)>| {
                slot.filter(|(stamp, _)| *stamp == at).map(|(_, v)| v)
            };
            let cumulative = pair.histogram.as_ref().map(|h| &h.value);
            let window_histogram = match (cumulative, ring.and_then(|r| r.last_histogram.as_ref()))
            {
                (Some(now_h), Some(before)) => now_h.since(before).or_else(|| Some(now_h.clone())),
                (Some(now_h), None) => Some(now_h.clone()),
                (None, _) => None,
            };
            let point = HistoryPoint {
                at,
                loss_ratio: latest(pair.loss_percent.as_ref().map(|s| (s.updated_at, s.value)))
                    .map(|p| p / 100.0),
                rtt: latest(
                    pair.durations_seconds
                        .as_ref()
                        .map(|s| (s.updated_at, s.value[1])),
                )
                .and_then(|s| Duration::try_from_secs_f64(s).ok()),
                rtt_p50: window_histogram.as_ref().and_then(|h| h.quantile(0.5)),
                rtt_p90: window_histogram.as_ref().and_then(|h| h.quantile(0.9)),
                jitter: latest(
                    pair.jitter_seconds
                        .as_ref()
                        .map(|s| (s.updated_at, s.value)),
                )
                .and_then(|s| Duration::try_from_secs_f64(s).ok()),
                failed_results: failed.value,
                left_out: pair
                    .outliers
                    .as_ref()
                    .filter(|s| s.updated_at == at)
                    .map_or(0, |s| s.value.len()),
            };
            grew |= !self.rings.contains_key(key);
            let capacity = self.capacity_per_pair();
            let ring = self.rings.entry(key.clone()).or_default();
            ring.last_histogram = cumulative.cloned();
            push_bounded(&mut ring.points, point, capacity);
        }
        let horizon = now.saturating_sub(self.limits.span);
        let before = self.rings.len();
        self.rings
            .retain(|_, ring| ring.points.back().is_some_and(|p| p.at >= horizon));
        if grew || self.rings.len() != before {
            self.trim();
        }
    }

    /// Files `point` for the pair (the property tests' way in).
    #[cfg(test)]
    pub(crate) fn push(&mut self, source: Region, target: Region, point: HistoryPoint) {
        let key = (source, target);
        let grew = !self.rings.contains_key(&key);
        self.rings.entry(key.clone()).or_default();
        let capacity = self.capacity_per_pair();
        if let Some(ring) = self.rings.get_mut(&key) {
            push_bounded(&mut ring.points, point, capacity);
        }
        if grew {
            self.trim();
        }
    }

    /// Cuts every ring to the current capacity (more pairs, shorter rings).
    fn trim(&mut self) {
        let capacity = self.capacity_per_pair();
        for ring in self.rings.values_mut() {
            while ring.points.len() > capacity {
                ring.points.pop_front();
            }
        }
    }
}

fn push_bounded(points: &mut VecDeque<HistoryPoint>, point: HistoryPoint, capacity: usize) {
    points.push_back(point);
    while points.len() > capacity {
        points.pop_front();
    }
}
