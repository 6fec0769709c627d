//! What the server exposes, as plain data: every metric family with its series, already
//! aggregated, expired and labelled. An exporter only renders it (Prometheus text, OTLP, a
//! terminal table) and never decides what a number means.

use crate::model::UnixMillis;
use crate::stats::{BUCKET_COUNT, RttHistogram, bucket_bounds_seconds};

/// The Prometheus metric type of a family.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum MetricKind {
    /// A value that goes up and down.
    Gauge,
    /// A value that only goes up (reset only by a restart or a series expiry).
    Counter,
    /// Cumulative buckets, a count and a sum.
    Histogram,
}

/// A histogram series' value: cumulative bucket counts for the fixed bounds, count and sum.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramValue {
    /// Cumulative count for each finite bound of [`HistogramValue::bounds_seconds`].
    pub cumulative_counts: [u64; BUCKET_COUNT],
    /// Total observations (the `+Inf` bucket and `_count`).
    pub count: u64,
    /// Sum of the observations in seconds (`_sum`).
    pub sum_seconds: f64,
}

impl HistogramValue {
    /// The bucket upper bounds (`le`) in seconds.
    #[must_use]
    pub fn bounds_seconds() -> [f64; BUCKET_COUNT] {
        bucket_bounds_seconds()
    }
}

impl From<&RttHistogram> for HistogramValue {
    fn from(histogram: &RttHistogram) -> Self {
        Self {
            cumulative_counts: histogram.cumulative_counts(),
            count: histogram.count(),
            sum_seconds: histogram.sum_seconds(),
        }
    }
}

/// One series' value.
#[derive(Clone, Debug, PartialEq)]
pub enum SeriesValue {
    /// A gauge or counter value.
    Number(f64),
    /// A histogram.
    Histogram(HistogramValue),
}

/// One series: label values in the order of its family's `label_names`.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// One value per label name of the family.
    pub label_values: Vec<String>,
    /// The value.
    pub value: SeriesValue,
}

impl Series {
    /// The number of a gauge or counter series; `None` for a histogram.
    #[must_use]
    pub fn number(&self) -> Option<f64> {
        match self.value {
            SeriesValue::Number(v) => Some(v),
            SeriesValue::Histogram(_) => None,
        }
    }
}

/// A metric family: name, help, type, label names and its series (sorted by label values).
#[derive(Clone, Debug, PartialEq)]
pub struct MetricFamily {
    /// Full metric name (`prober_icmp_failed`).
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Metric type.
    pub kind: MetricKind,
    /// Label names, in the order every series lists its values.
    pub label_names: &'static [&'static str],
    /// The series.
    pub series: Vec<Series>,
}

impl MetricFamily {
    /// The series whose labels equal `labels` (name, value) pairs, in any order.
    #[must_use]
    pub fn find(&self, labels: &[(&str, &str)]) -> Option<&Series> {
        self.series.iter().find(|series| {
            labels.len() == self.label_names.len()
                && labels.iter().all(|(name, value)| {
                    self.label_names
                        .iter()
                        .position(|n| n == name)
                        .is_some_and(|i| series.label_values[i] == *value)
                })
        })
    }
}

/// Everything the server exposes at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// When the snapshot was taken.
    pub taken_at: UnixMillis,
    /// Every family, in a fixed order, including families with no series.
    pub families: Vec<MetricFamily>,
}

impl Snapshot {
    /// The family called `name`.
    #[must_use]
    pub fn family(&self, name: &str) -> Option<&MetricFamily> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The number of the gauge or counter series `name{labels}`.
    #[must_use]
    pub fn number(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.family(name)?.find(labels)?.number()
    }

    /// Total number of series over all families.
    #[must_use]
    pub fn series_count(&self) -> usize {
        self.families.iter().map(|f| f.series.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_matches_labels_in_any_order() {
        let family = MetricFamily {
            name: "prober_icmp_failed",
            help: "",
            kind: MetricKind::Gauge,
            label_names: &["source_region", "target_region"],
            series: vec![Series {
                label_values: vec!["a".into(), "b".into()],
                value: SeriesValue::Number(2.0),
            }],
        };
        let snapshot = Snapshot {
            taken_at: UnixMillis(0),
            families: vec![family],
        };
        assert_eq!(
            snapshot.number(
                "prober_icmp_failed",
                &[("target_region", "b"), ("source_region", "a")]
            ),
            Some(2.0)
        );
        assert_eq!(
            snapshot.number("prober_icmp_failed", &[("source_region", "a")]),
            None
        );
        assert_eq!(
            snapshot.number(
                "prober_icmp_failed",
                &[("source_region", "b"), ("target_region", "a")]
            ),
            None
        );
        assert_eq!(snapshot.series_count(), 1);
    }
}
