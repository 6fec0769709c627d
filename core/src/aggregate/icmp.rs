//! One ICMP region pair in one window: which results count (robust or mean) and the numbers
//! its gauges take. Every agent of the source region and every target host of the target
//! region is pooled, as in the Go system; the robust method first leaves out a minority of
//! broken source agents or target hosts.

use std::net::IpAddr;

use super::AggregationMethod;
use super::robust::{MemberStats, RobustConfig, outliers};
use crate::model::IcmpResult;
use crate::stats::RttHistogram;

/// One result of the pair: who probed which target host, and what it saw (every source is of
/// the pair's source region, so its IP identifies it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct IcmpCell<'a> {
    pub(crate) source: IpAddr,
    pub(crate) target: &'a str,
    pub(crate) result: &'a IcmpResult,
}

/// A member of the pair (left out by the robust method, or in the breakdown).
#[derive(Clone, Debug, Eq, Ord, PartialEq, PartialOrd)]
pub enum IcmpOutlier {
    /// A source agent, by IP.
    Source(String),
    /// A target host, as configured or discovered.
    Target(String),
}

/// One member of a pair (a source agent or a target host) as the window saw it: the pair
/// page's per-agent breakdown.
#[derive(Clone, Debug, PartialEq)]
pub struct IcmpMember {
    /// The source agent (by IP) or the target host.
    pub member: IcmpOutlier,
    /// Lost echoes over echoes sent (a probe that could not measure counts as one lost).
    pub loss_ratio: Option<f64>,
    /// Mean RTT of its replies.
    pub rtt_seconds: Option<f64>,
    /// Whether the robust method left it out.
    pub left_out: bool,
}

/// The numbers of one pair for one window; `None` where no result had data for that gauge.
#[derive(Clone, Debug, Default)]
pub(crate) struct IcmpPairWindow {
    /// Failed results (could not measure, or 100 % loss).
    pub(crate) failed: u64,
    /// Mean of per-result loss percentages over results that sent packets.
    pub(crate) loss_percent: Option<f64>,
    /// Means over results with replies: resolve, rtt, min, max (seconds).
    pub(crate) durations_seconds: Option<[f64; 4]>,
    /// Mean of per-result RTT standard deviations (seconds).
    pub(crate) jitter_seconds: Option<f64>,
    /// Every counted echo's RTT.
    pub(crate) histogram: RttHistogram,
    /// Members left out.
    pub(crate) outliers: Vec<IcmpOutlier>,
    /// Every source agent and target host with its own numbers (sources first).
    pub(crate) members: Vec<IcmpMember>,
}

/// Aggregates `cells`, sorted by source (then target and round), with `method`.
pub(crate) fn aggregate_icmp_pair(
    cells: &[IcmpCell<'_>],
    method: AggregationMethod,
    robust: &RobustConfig,
) -> IcmpPairWindow {
    debug_assert!(
        cells.is_sorted_by_key(|c| c.source),
        "cells sorted by source"
    );
    // Each member over every cell: the robust test's input, and the breakdown's too unless the
    // other dimension left a member out.
    let sources = source_stats(cells.iter());
    let targets = target_stats(cells.iter());
    let (excluded_sources, excluded_targets) = match method {
        AggregationMethod::Mean => (Vec::new(), Vec::new()),
        AggregationMethod::Robust => (
            excluded_keys(&sources, robust),
            excluded_keys(&targets, robust),
        ),
    };
    let members = breakdown(
        cells,
        sources,
        targets,
        &excluded_sources,
        &excluded_targets,
    );
    let mut outliers: Vec<IcmpOutlier> = excluded_sources
        .iter()
        .map(|ip| IcmpOutlier::Source(ip.to_string()))
        .chain(
            excluded_targets
                .iter()
                .map(|t| IcmpOutlier::Target((*t).to_owned())),
        )
        .collect();
    outliers.sort();
    let mut window = IcmpPairWindow {
        outliers,
        members,
        ..IcmpPairWindow::default()
    };
    let (mut loss_sum, mut loss_count) = (0.0, 0u64);
    let (mut phase_sums, mut jitter_sum, mut success_count) = ([0.0f64; 4], 0.0, 0u64);
    for cell in cells
        .iter()
        .filter(|c| !excluded_sources.contains(&c.source) && !excluded_targets.contains(&c.target))
    {
        let result = cell.result;
        if result.is_failed() {
            window.failed += 1;
        }
        if let Some(loss) = result.loss_percent() {
            loss_sum += loss;
            loss_count += 1;
        }
        if let (None, Some(rtt)) = (result.failure, result.rtt) {
            success_count += 1;
            let phases = [result.resolve, rtt.mean, rtt.min, rtt.max];
            for (sum, phase) in phase_sums.iter_mut().zip(phases) {
                *sum += phase.as_secs_f64();
            }
            jitter_sum += rtt.stddev.as_secs_f64();
            window.histogram.merge(&result.histogram);
        }
    }
    if loss_count > 0 {
        window.loss_percent = Some(loss_sum / loss_count as f64);
    }
    if success_count > 0 {
        let n = success_count as f64;
        window.durations_seconds = Some(phase_sums.map(|sum| sum / n));
        window.jitter_seconds = Some(jitter_sum / n);
    }
    window
}

/// The breakdown of the pair by source agent and by target host (a member whose every cell
/// involved a left-out member of the other dimension is absent). `sources` and `targets` are
/// the members' statistics over every cell.
fn breakdown(
    cells: &[IcmpCell<'_>],
    sources: Vec<(IpAddr, MemberStats)>,
    targets: Vec<(&str, MemberStats)>,
    excluded_sources: &[IpAddr],
    excluded_targets: &[&str],
) -> Vec<IcmpMember> {
    let member = |member: IcmpOutlier, left_out: bool, stats: MemberStats| IcmpMember {
        left_out,
        loss_ratio: (stats.trials > 0).then(|| stats.bad as f64 / stats.trials as f64),
        rtt_seconds: stats.latency_seconds,
        member,
    };
    // Each member over the cells the other dimension kept: a target host is not blamed for a
    // broken source's losses, nor a source for a broken target's.
    let sources = if excluded_targets.is_empty() {
        sources
    } else {
        source_stats(
            cells
                .iter()
                .filter(|c| !excluded_targets.contains(&c.target)),
        )
    };
    let targets = if excluded_sources.is_empty() {
        targets
    } else {
        target_stats(
            cells
                .iter()
                .filter(|c| !excluded_sources.contains(&c.source)),
        )
    };
    let mut members = Vec::with_capacity(sources.len() + targets.len());
    members.extend(sources.into_iter().map(|(ip, stats)| {
        member(
            IcmpOutlier::Source(ip.to_string()),
            excluded_sources.contains(&ip),
            stats,
        )
    }));
    members.extend(targets.into_iter().map(|(host, stats)| {
        member(
            IcmpOutlier::Target(host.to_owned()),
            excluded_targets.contains(&host),
            stats,
        )
    }));
    members
}

/// Per-source statistics, in source order. `cells` come sorted by source (as a pair's cells
/// are), so each source's cells are one run.
fn source_stats<'c, 'a: 'c>(
    cells: impl Iterator<Item = &'c IcmpCell<'a>>,
) -> Vec<(IpAddr, MemberStats)> {
    member_stats(cells.map(|c| (c.source, c.result)))
}

/// Per-target statistics, in target order (each target's cells in their given order).
fn target_stats<'c, 'a: 'c>(
    cells: impl Iterator<Item = &'c IcmpCell<'a>>,
) -> Vec<(&'a str, MemberStats)> {
    let mut by_target: Vec<&IcmpCell<'a>> = cells.collect();
    // Stable: a target's cells keep their order, and so its sums their value.
    by_target.sort_by(|a, b| a.target.cmp(b.target));
    member_stats(by_target.into_iter().map(|c| (c.target, c.result)))
}

/// Per-member statistics of one dimension from its cells grouped by member (each member's
/// cells one run), in the order the runs come.
fn member_stats<'a, K: PartialEq>(
    cells: impl Iterator<Item = (K, &'a IcmpResult)>,
) -> Vec<(K, MemberStats)> {
    /// A member's counts, the sum of its replies' RTTs in seconds and their number.
    type Running = (MemberStats, f64, u64);
    let mut members: Vec<(K, Running)> = Vec::new();
    for (key, result) in cells {
        if !matches!(members.last(), Some((last, _)) if *last == key) {
            members.push((key, Running::default()));
        }
        let Some((_, (stats, rtt_weighted_sum, received))) = members.last_mut() else {
            continue;
        };
        if result.packets_sent > 0 && result.failure.is_none() {
            stats.trials += u64::from(result.packets_sent);
            stats.bad += u64::from(result.packets_sent.saturating_sub(result.packets_received));
        } else {
            // Could not measure at all: one failed trial, so a host nobody can resolve stands out.
            stats.trials += 1;
            stats.bad += 1;
        }
        if let (None, Some(rtt)) = (result.failure, result.rtt) {
            *rtt_weighted_sum += rtt.mean.as_secs_f64() * f64::from(result.packets_received);
            *received += u64::from(result.packets_received);
        }
    }
    members
        .into_iter()
        .map(|(k, (mut stats, sum, received))| {
            stats.latency_seconds = (received > 0).then(|| sum / received as f64);
            (k, stats)
        })
        .collect()
}

/// The members the robust test leaves out, in key order.
fn excluded_keys<K: Copy>(members: &[(K, MemberStats)], config: &RobustConfig) -> Vec<K> {
    let stats: Vec<MemberStats> = members.iter().map(|(_, stats)| *stats).collect();
    outliers(&stats, config)
        .into_iter()
        .filter_map(|i| members.get(i).map(|(key, _)| *key))
        .collect()
}
