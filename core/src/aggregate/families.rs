//! The exposed metric families: names, types, labels and help texts (spec §3.1, kept exactly,
//! plus our outlier and dropped-points families), and their rendering from the aggregator's
//! state into a [`Snapshot`].

use std::time::Duration;

use super::liveness::Liveness;
use super::series::SeriesStore;
use super::{Counters, icmp::IcmpOutlier};
use crate::model::{HttpPhases, UnixMillis};
use crate::snapshot::{HistogramValue, MetricFamily, MetricKind, Series, SeriesValue, Snapshot};

/// `prober_icmp_failed`.
pub const ICMP_FAILED: &str = "prober_icmp_failed";
/// `prober_icmp_duration_seconds`.
pub const ICMP_DURATION: &str = "prober_icmp_duration_seconds";
/// `prober_icmp_packet_loss_rate` (percent, 0–100).
pub const ICMP_LOSS: &str = "prober_icmp_packet_loss_rate";
/// `prober_icmp_jitter_stddev_seconds`.
pub const ICMP_JITTER: &str = "prober_icmp_jitter_stddev_seconds";
/// `prober_icmp_duration_seconds_total` (a histogram, despite the suffix).
pub const ICMP_HISTOGRAM: &str = "prober_icmp_duration_seconds_total";
/// `prober_icmp_outlier` (ours).
pub const ICMP_OUTLIER: &str = "prober_icmp_outlier";
/// `prober_http_failed`.
pub const HTTP_FAILED: &str = "prober_http_failed";
/// `prober_http_duration_seconds`.
pub const HTTP_DURATION: &str = "prober_http_duration_seconds";
/// `prober_http_ssl_earliest_cert_expiry`.
pub const HTTP_CERT_EXPIRY: &str = "prober_http_ssl_earliest_cert_expiry";
/// `prober_http_status_code`.
pub const HTTP_STATUS: &str = "prober_http_status_code";
/// `prober_http_outlier` (ours).
pub const HTTP_OUTLIER: &str = "prober_http_outlier";
/// `prober_agent_is_alive`.
pub const AGENT_ALIVE: &str = "prober_agent_is_alive";
/// `prober_server_receive_points` (a counter without `_total`, as in the Go system).
pub const RECEIVE_POINTS: &str = "prober_server_receive_points";
/// `prober_server_dropped_points_total` (ours).
pub const DROPPED_POINTS: &str = "prober_server_dropped_points_total";
/// `prober_server_task_enabled`.
pub const TASK_ENABLED: &str = "prober_server_task_enabled";
/// `prober_server_probe_self_enabled`.
pub const PROBE_SELF_ENABLED: &str = "prober_server_probe_self_enabled";

const PAIR: &[&str] = &["source_region", "target_region"];
const PHASE_PAIR: &[&str] = &["phase", "source_region", "target_region"];
const URL: &[&str] = &["source_region", "target_addr", "target_region"];
const ICMP_PHASES: [&str; 4] = ["resolve", "rtt", "min", "max"];

fn family(
    name: &'static str,
    help: &'static str,
    kind: MetricKind,
    label_names: &'static [&'static str],
) -> MetricFamily {
    MetricFamily {
        name,
        help,
        kind,
        label_names,
        series: Vec::new(),
    }
}

fn push(family: &mut MetricFamily, label_values: Vec<String>, value: f64) {
    family.series.push(Series {
        label_values,
        value: SeriesValue::Number(value),
    });
}

/// Everything needed to render a snapshot.
pub(crate) struct RenderInput<'a> {
    pub(crate) now: UnixMillis,
    pub(crate) ttl: Duration,
    pub(crate) series: &'a SeriesStore,
    pub(crate) liveness: &'a Liveness,
    pub(crate) counters: &'a Counters,
    pub(crate) task_enabled: bool,
    pub(crate) probe_self_enabled: bool,
}

/// Renders every family, in a fixed order, series sorted by label values.
/// Which families a snapshot holds.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum SnapshotPart {
    /// Every family.
    All,
    /// The per-pair and per-URL families: they change only when a window settles or series
    /// expire (`handle_timeout`), so an exporter may render them once per window.
    Settled,
    /// Agent liveness, the receive and drop counters and the settings gauges: they change
    /// with every heartbeat and batch.
    Live,
}

pub(crate) fn render(input: &RenderInput<'_>, part: SnapshotPart) -> Snapshot {
    let mut families = Vec::new();
    if part != SnapshotPart::Live {
        families.extend(icmp_families(input.series));
        families.extend(http_families(input.series));
    }
    if part != SnapshotPart::Settled {
        families.extend(server_families(input));
    }
    for family in &mut families {
        family
            .series
            .sort_by(|a, b| a.label_values.cmp(&b.label_values));
    }
    Snapshot {
        taken_at: input.now,
        families,
    }
}

fn icmp_families(store: &SeriesStore) -> Vec<MetricFamily> {
    let mut failed = family(
        ICMP_FAILED,
        "Failed ICMP probes (no reply at all, or could not probe) per region pair in the last window.",
        MetricKind::Gauge,
        PAIR,
    );
    let mut duration = family(
        ICMP_DURATION,
        "ICMP phase durations per region pair: mean resolve time and mean of per-probe mean/min/max RTT over probes with replies.",
        MetricKind::Gauge,
        PHASE_PAIR,
    );
    let mut loss = family(
        ICMP_LOSS,
        "ICMP packet loss per region pair, in percent (0-100).",
        MetricKind::Gauge,
        PAIR,
    );
    let mut jitter = family(
        ICMP_JITTER,
        "Mean of per-probe RTT population standard deviations per region pair.",
        MetricKind::Gauge,
        PAIR,
    );
    let mut histogram = family(
        ICMP_HISTOGRAM,
        "Round-trip time of every received ICMP echo per region pair.",
        MetricKind::Histogram,
        PAIR,
    );
    let mut outlier = family(
        ICMP_OUTLIER,
        "1 for each source agent or target host left out of a region pair by the robust aggregation in its latest window.",
        MetricKind::Gauge,
        &["host", "role", "source_region", "target_region"],
    );
    for ((source, target), pair) in &store.icmp {
        let labels = || vec![source.to_string(), target.to_string()];
        if let Some(v) = &pair.failed {
            push(&mut failed, labels(), v.value as f64);
        }
        if let Some(v) = &pair.loss_percent {
            push(&mut loss, labels(), v.value);
        }
        if let Some(v) = &pair.jitter_seconds {
            push(&mut jitter, labels(), v.value);
        }
        if let Some(v) = &pair.durations_seconds {
            for (phase, seconds) in ICMP_PHASES.iter().zip(v.value) {
                push(
                    &mut duration,
                    vec![(*phase).to_owned(), source.to_string(), target.to_string()],
                    seconds,
                );
            }
        }
        if let Some(v) = &pair.histogram {
            histogram.series.push(Series {
                label_values: labels(),
                value: SeriesValue::Histogram(HistogramValue::from(&v.value)),
            });
        }
        for member in pair.outliers.iter().flat_map(|o| &o.value) {
            let (role, host) = match member {
                IcmpOutlier::Source(host) => ("source", host),
                IcmpOutlier::Target(host) => ("target", host),
            };
            push(
                &mut outlier,
                vec![
                    host.clone(),
                    role.to_owned(),
                    source.to_string(),
                    target.to_string(),
                ],
                1.0,
            );
        }
    }
    vec![failed, duration, loss, jitter, histogram, outlier]
}

fn http_families(store: &SeriesStore) -> Vec<MetricFamily> {
    let mut failed = family(
        HTTP_FAILED,
        "Failed HTTP probes per source region and URL in the last window, labelled with the most frequent failure reason (\"success\" when none failed).",
        MetricKind::Gauge,
        &[
            "failed_reason",
            "source_region",
            "target_addr",
            "target_region",
        ],
    );
    let mut duration = family(
        HTTP_DURATION,
        "HTTP phase durations (resolve, connect, tls, processing, transfer), mean over successful probes.",
        MetricKind::Gauge,
        &["phase", "source_region", "target_addr", "target_region"],
    );
    let mut expiry = family(
        HTTP_CERT_EXPIRY,
        "Earliest NotAfter over the peer certificate chain, in Unix seconds.",
        MetricKind::Gauge,
        &["source_region", "target_addr", "target_region", "version"],
    );
    let mut status = family(
        HTTP_STATUS,
        "Most frequent HTTP status code in the last window; 0 when no probe got a response.",
        MetricKind::Gauge,
        URL,
    );
    let mut outlier = family(
        HTTP_OUTLIER,
        "1 for each source agent left out of an HTTP group by the robust aggregation in its latest window.",
        MetricKind::Gauge,
        &["host", "source_region", "target_addr", "target_region"],
    );
    for ((source, target, addr), group) in &store.http {
        let url_labels = || vec![source.to_string(), addr.clone(), target.to_string()];
        if let Some(v) = &group.failed {
            let (count, reason) = &v.value;
            push(
                &mut failed,
                vec![
                    reason.clone(),
                    source.to_string(),
                    addr.clone(),
                    target.to_string(),
                ],
                *count as f64,
            );
        }
        if let Some(v) = &group.phases_seconds {
            for (phase, seconds) in HttpPhases::NAMES.iter().zip(v.value) {
                push(
                    &mut duration,
                    vec![
                        (*phase).to_owned(),
                        source.to_string(),
                        addr.clone(),
                        target.to_string(),
                    ],
                    seconds,
                );
            }
        }
        if let Some(v) = &group.status_code {
            push(&mut status, url_labels(), f64::from(v.value));
        }
        if let Some(v) = &group.tls {
            let (version, expiry_secs) = v.value;
            push(
                &mut expiry,
                vec![
                    source.to_string(),
                    addr.clone(),
                    target.to_string(),
                    version.as_str().to_owned(),
                ],
                expiry_secs as f64,
            );
        }
        for host in group.outliers.iter().flat_map(|o| &o.value) {
            push(
                &mut outlier,
                vec![
                    host.clone(),
                    source.to_string(),
                    addr.clone(),
                    target.to_string(),
                ],
                1.0,
            );
        }
    }
    vec![failed, duration, expiry, status, outlier]
}

fn server_families(input: &RenderInput<'_>) -> Vec<MetricFamily> {
    let mut alive = family(
        AGENT_ALIVE,
        "1 while the agent's heartbeats arrive; 0 once they stopped for ratio x window (removed an hour later).",
        MetricKind::Gauge,
        &["ip", "region", "version"],
    );
    for (agent, version, is_alive) in input.liveness.states(input.now, input.ttl) {
        push(
            &mut alive,
            vec![
                agent.ip.to_string(),
                agent.region.to_string(),
                version.to_string(),
            ],
            if is_alive { 1.0 } else { 0.0 },
        );
    }
    let mut received = family(
        RECEIVE_POINTS,
        "Probe results received from agents, counted on receipt.",
        MetricKind::Counter,
        &["prober_type"],
    );
    push(
        &mut received,
        vec!["icmp".to_owned()],
        input.counters.received_icmp as f64,
    );
    push(
        &mut received,
        vec!["http".to_owned()],
        input.counters.received_http as f64,
    );
    let mut dropped = family(
        DROPPED_POINTS,
        "Probe results not aggregated: late (their window had closed), future (clock skew above one window) or duplicate.",
        MetricKind::Counter,
        &["reason"],
    );
    push(
        &mut dropped,
        vec!["late".to_owned()],
        input.counters.dropped_late as f64,
    );
    push(
        &mut dropped,
        vec!["future".to_owned()],
        input.counters.dropped_future as f64,
    );
    push(
        &mut dropped,
        vec!["duplicate".to_owned()],
        input.counters.dropped_duplicate as f64,
    );
    let mut task = family(
        TASK_ENABLED,
        "1 when task dispatch is enabled (-server.task).",
        MetricKind::Gauge,
        &[],
    );
    push(
        &mut task,
        Vec::new(),
        if input.task_enabled { 1.0 } else { 0.0 },
    );
    let mut probe_self = family(
        PROBE_SELF_ENABLED,
        "1 when agents also probe their own region (-server.probe.self).",
        MetricKind::Gauge,
        &[],
    );
    push(
        &mut probe_self,
        Vec::new(),
        if input.probe_self_enabled { 1.0 } else { 0.0 },
    );
    vec![alive, received, dropped, task, probe_self]
}
