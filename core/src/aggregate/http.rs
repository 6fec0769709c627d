//! One HTTP (source region, target region, URL) group in one window: which results count and
//! the numbers its gauges take. The robust method leaves out a minority of source agents whose
//! failure rate or latency stands apart from the rest of their region.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::AggregationMethod;
use super::robust::{MemberStats, RobustConfig, outliers};
use crate::model::{HttpFailure, HttpResult, TlsVersion};

/// One result of the group and who produced it (every source is of the group's source region,
/// so its IP identifies it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HttpCell<'a> {
    pub(crate) source: IpAddr,
    pub(crate) result: &'a HttpResult,
}

/// The numbers of one group for one window.
#[derive(Clone, Debug, Default)]
pub(crate) struct HttpGroupWindow {
    /// Failed results.
    pub(crate) failed: u64,
    /// The most frequent failure reason, or `success` when nothing failed.
    pub(crate) failed_reason: String,
    /// Mean of each phase over successful results (seconds), in `HttpPhases::NAMES` order.
    pub(crate) phases_seconds: Option<[f64; 5]>,
    /// The most frequent status code among results with a response; 0 when none had one.
    pub(crate) status_code: u16,
    /// Most frequent TLS version and the earliest certificate expiry over successful TLS results.
    pub(crate) tls: Option<(TlsVersion, i64)>,
    /// Source agents left out, by IP.
    pub(crate) outliers: Vec<String>,
}

/// The reason label when nothing failed.
pub(crate) const SUCCESS_REASON: &str = "success";

/// Aggregates `cells` with `method`.
pub(crate) fn aggregate_http_group(
    cells: &[HttpCell<'_>],
    method: AggregationMethod,
    robust: &RobustConfig,
) -> HttpGroupWindow {
    let excluded: Vec<IpAddr> = match method {
        AggregationMethod::Mean => Vec::new(),
        AggregationMethod::Robust => excluded_sources(cells, robust),
    };
    let kept = cells.iter().filter(|c| !excluded.contains(&c.source));
    let mut window = HttpGroupWindow {
        outliers: excluded.iter().map(ToString::to_string).collect(),
        ..HttpGroupWindow::default()
    };
    let mut reasons: BTreeMap<HttpFailure, u64> = BTreeMap::new();
    let mut codes: BTreeMap<u16, u64> = BTreeMap::new();
    let mut versions: BTreeMap<TlsVersion, u64> = BTreeMap::new();
    let mut earliest_expiry: Option<i64> = None;
    let (mut phase_sums, mut successes) = ([0.0f64; 5], 0u64);
    for cell in kept {
        let result = cell.result;
        if let Some(code) = result.status_code {
            *codes.entry(code).or_default() += 1;
        }
        match result.failure {
            Some(failure) => {
                window.failed += 1;
                *reasons.entry(failure).or_default() += 1;
            }
            None => {
                successes += 1;
                for (sum, phase) in phase_sums.iter_mut().zip(result.phases.as_array()) {
                    *sum += phase.as_secs_f64();
                }
                if let Some(tls) = result.tls {
                    *versions.entry(tls.version).or_default() += 1;
                    earliest_expiry =
                        Some(earliest_expiry.map_or(tls.earliest_expiry_unix_secs, |e| {
                            e.min(tls.earliest_expiry_unix_secs)
                        }));
                }
            }
        }
    }
    window.failed_reason = most_frequent(&reasons)
        .map_or_else(|| SUCCESS_REASON.to_owned(), |f| f.reason().into_owned());
    window.status_code = most_frequent(&codes).unwrap_or(0);
    if successes > 0 {
        window.phases_seconds = Some(phase_sums.map(|sum| sum / successes as f64));
    }
    window.tls = most_frequent(&versions).zip(earliest_expiry);
    window
}

/// The key with the highest count; ties go to the smallest key, so the choice is stable.
fn most_frequent<K: Copy + Ord>(counts: &BTreeMap<K, u64>) -> Option<K> {
    counts
        .iter()
        .fold(None, |best: Option<(K, u64)>, (key, count)| match best {
            Some((_, best_count)) if best_count >= *count => best,
            _ => Some((*key, *count)),
        })
        .map(|(key, _)| key)
}

fn excluded_sources(cells: &[HttpCell<'_>], config: &RobustConfig) -> Vec<IpAddr> {
    let mut members: BTreeMap<IpAddr, (MemberStats, f64, u64)> = BTreeMap::new();
    for cell in cells {
        let (stats, total_seconds, successes) = members.entry(cell.source).or_default();
        stats.trials += 1;
        if cell.result.is_failed() {
            stats.bad += 1;
        } else {
            *total_seconds += cell.result.phases.total().as_secs_f64();
            *successes += 1;
        }
    }
    let keys: Vec<IpAddr> = members.keys().copied().collect();
    let stats: Vec<MemberStats> = members
        .values()
        .map(|(stats, total, successes)| MemberStats {
            latency_seconds: (*successes > 0).then(|| total / *successes as f64),
            ..*stats
        })
        .collect();
    outliers(&stats, config)
        .into_iter()
        .map(|i| keys[i])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_frequent_breaks_ties_towards_the_smallest_key() {
        let counts: BTreeMap<u16, u64> = [(404, 2), (200, 2), (500, 1)].into_iter().collect();
        assert_eq!(most_frequent(&counts), Some(200));
        let counts: BTreeMap<u16, u64> = [(404, 3), (200, 2)].into_iter().collect();
        assert_eq!(most_frequent(&counts), Some(404));
        assert_eq!(most_frequent::<u16>(&BTreeMap::new()), None);
    }
}
