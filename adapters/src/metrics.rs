//! Metrics export: core's [`MetricsExporter`] for Prometheus. The server publishes each
//! aggregation's [`Snapshot`]; a scrape renders the latest one in the Prometheus text format
//! 0.0.4 with the `prometheus` crate's encoder, names exactly as the Go system's (no `_total`
//! on the receive counter, the histogram called `…_seconds_total`).
//!
//! Why not opentelemetry-prometheus (the design card's choice): OpenTelemetry has no
//! asynchronous histogram, so the exactly merged bucket counts agents ship cannot be exported
//! (the server would have to re-observe invented samples), synchronous instruments cannot
//! delete an expired series, and the SDK silently folds everything past 2,000 series per
//! instrument into one overflow series. The snapshot already holds every series with its
//! expiry applied, so the exporter is a renderer; see `docs/differences.md`.

use std::sync::{Arc, PoisonError, RwLock};

use probermesh_core::ports::MetricsExporter;
use probermesh_core::snapshot::{MetricKind, SeriesValue, Snapshot};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

/// Holds the rendered text of the last published snapshot. A server publishes the families
/// that change only when a window settles (the big part) once per window, and each scrape
/// appends the few live families rendered then ([`PrometheusExporter::scrape`]).
#[derive(Debug, Default)]
pub struct PrometheusExporter {
    published: RwLock<Arc<Vec<u8>>>,
}

impl PrometheusExporter {
    /// An exporter with nothing published yet (a scrape answers only the live part).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl MetricsExporter for PrometheusExporter {
    /// Renders `settled` and keeps the text for the following scrapes.
    fn publish(&self, settled: &Snapshot) {
        let text = Arc::new(render(settled));
        *self
            .published
            .write()
            .unwrap_or_else(PoisonError::into_inner) = text;
    }

    /// A scrape's body: the published text followed by `live` rendered now.
    fn scrape(&self, live: &Snapshot) -> Vec<u8> {
        let published = Arc::clone(
            &self
                .published
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let live = render(live);
        let mut body = Vec::with_capacity(published.len() + live.len());
        body.extend_from_slice(&published);
        body.extend_from_slice(&live);
        body
    }
}

/// Renders `snapshot` in the Prometheus text format 0.0.4. Families without series are left
/// out, as client_golang does.
#[must_use]
pub fn render(snapshot: &Snapshot) -> Vec<u8> {
    let families: Vec<MetricFamily> = snapshot
        .families
        .iter()
        .filter(|family| !family.series.is_empty())
        .map(|family| {
            let mut out = MetricFamily::default();
            out.set_name(family.name.to_owned());
            out.set_help(family.help.to_owned());
            out.set_field_type(match family.kind {
                MetricKind::Gauge => MetricType::GAUGE,
                MetricKind::Counter => MetricType::COUNTER,
                MetricKind::Histogram => MetricType::HISTOGRAM,
            });
            let metrics = family
                .series
                .iter()
                .map(|series| {
                    let mut metric = Metric::default();
                    metric.set_label(
                        family
                            .label_names
                            .iter()
                            .zip(&series.label_values)
                            .map(|(name, value)| {
                                let mut pair = LabelPair::default();
                                pair.set_name((*name).to_owned());
                                pair.set_value(value.clone());
                                pair
                            })
                            .collect(),
                    );
                    match (&series.value, family.kind) {
                        (SeriesValue::Number(v), MetricKind::Counter) => {
                            let mut counter = Counter::default();
                            counter.set_value(*v);
                            metric.set_counter(counter);
                        }
                        (SeriesValue::Number(v), _) => {
                            let mut gauge = Gauge::default();
                            gauge.set_value(*v);
                            metric.set_gauge(gauge);
                        }
                        (SeriesValue::Histogram(h), _) => {
                            let mut histogram = Histogram::default();
                            histogram.set_sample_count(h.count);
                            histogram.set_sample_sum(h.sum_seconds);
                            let bounds =
                                probermesh_core::snapshot::HistogramValue::bounds_seconds();
                            histogram.set_bucket(
                                bounds
                                    .iter()
                                    .zip(h.cumulative_counts)
                                    .map(|(bound, count)| {
                                        let mut bucket = Bucket::default();
                                        bucket.set_upper_bound(*bound);
                                        bucket.set_cumulative_count(count);
                                        bucket
                                    })
                                    .collect(),
                            );
                            metric.set_histogram(histogram);
                        }
                    }
                    metric
                })
                .collect();
            out.set_metric(metrics);
            out
        })
        .collect();
    let mut buffer = Vec::with_capacity(snapshot.series_count() * 96);
    // Encoding into a Vec only fails on an invalid family, which the snapshot never holds;
    // the families before it are still written.
    if let Err(error) = TextEncoder::new().encode(&families, &mut buffer) {
        tracing::error!(%error, "rendering /metrics failed");
    }
    buffer
}

#[cfg(test)]
mod tests {
    use super::*;
    use probermesh_core::snapshot::{HistogramValue, MetricFamily as Family, Series};

    fn snapshot() -> Snapshot {
        let mut counts = [0u64; probermesh_core::stats::BUCKET_COUNT];
        for (i, c) in counts.iter_mut().enumerate() {
            *c = if i >= 8 { 3 } else { 0 };
        }
        Snapshot {
            taken_at: probermesh_core::model::UnixMillis(0),
            families: vec![
                Family {
                    name: "prober_icmp_packet_loss_rate",
                    help: "loss in percent",
                    kind: MetricKind::Gauge,
                    label_names: &["source_region", "target_region"],
                    series: vec![Series {
                        label_values: vec!["eu".into(), "us".into()],
                        value: SeriesValue::Number(2.5),
                    }],
                },
                Family {
                    name: "prober_server_receive_points",
                    help: "results received",
                    kind: MetricKind::Counter,
                    label_names: &["prober_type"],
                    series: vec![Series {
                        label_values: vec!["icmp".into()],
                        value: SeriesValue::Number(42.0),
                    }],
                },
                Family {
                    name: "prober_icmp_duration_seconds_total",
                    help: "RTT histogram",
                    kind: MetricKind::Histogram,
                    label_names: &["source_region", "target_region"],
                    series: vec![Series {
                        label_values: vec!["eu".into(), "us".into()],
                        value: SeriesValue::Histogram(HistogramValue {
                            cumulative_counts: counts,
                            count: 3,
                            sum_seconds: 0.03,
                        }),
                    }],
                },
                Family {
                    name: "prober_http_failed",
                    help: "no series yet",
                    kind: MetricKind::Gauge,
                    label_names: &["source_region"],
                    series: vec![],
                },
            ],
        }
    }

    #[test]
    fn renders_the_go_names_types_and_buckets() {
        let text = String::from_utf8(render(&snapshot())).unwrap();
        assert!(
            text.contains("# TYPE prober_icmp_packet_loss_rate gauge\n"),
            "{text}"
        );
        assert!(text.contains(
            "prober_icmp_packet_loss_rate{source_region=\"eu\",target_region=\"us\"} 2.5\n"
        ));
        assert!(text.contains("# TYPE prober_server_receive_points counter\n"));
        assert!(text.contains("prober_server_receive_points{prober_type=\"icmp\"} 42\n"));
        assert!(!text.contains("receive_points_total"));
        assert!(text.contains("# TYPE prober_icmp_duration_seconds_total histogram\n"));
        assert!(text.contains("prober_icmp_duration_seconds_total_bucket{source_region=\"eu\",target_region=\"us\",le=\"0.00005\"} 0\n"), "{text}");
        assert!(text.contains("prober_icmp_duration_seconds_total_bucket{source_region=\"eu\",target_region=\"us\",le=\"13.1072\"} 3\n"));
        assert!(text.contains("prober_icmp_duration_seconds_total_bucket{source_region=\"eu\",target_region=\"us\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("prober_icmp_duration_seconds_total_count{source_region=\"eu\",target_region=\"us\"} 3\n"));
        assert!(
            !text.contains("prober_http_failed"),
            "empty families are left out"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = snapshot();
        s.families[0].series[0].label_values[0] = "a\"b\\c\nd".into();
        let text = String::from_utf8(render(&s)).unwrap();
        assert!(text.contains(r#"source_region="a\"b\\c\nd""#), "{text}");
    }

    #[test]
    fn publish_replaces_the_published_snapshot() {
        let exporter = PrometheusExporter::new();
        let empty = Snapshot::default();
        assert!(exporter.scrape(&empty).is_empty());
        exporter.publish(&snapshot());
        assert!(
            String::from_utf8(exporter.scrape(&empty))
                .unwrap()
                .contains("prober_server_receive_points")
        );
    }
}
