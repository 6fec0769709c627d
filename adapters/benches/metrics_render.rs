//! `/metrics` cost for a big mesh: 100 regions (one agent each, so 10,000 region pairs with
//! the RTT histogram) plus 100 URLs probed from every region (10,000 URL series groups).
//! Measures where the time goes: building the snapshot from the aggregator (`snapshot`),
//! rendering it in the text format (`render`), both (`full_render`, what the server does once
//! per window for the settled families), and what a scrape costs on the server (`scrape`: the
//! live families rendered now plus the settled text cached at the window). Prints the number
//! of series, samples and bytes once.
//!
//! Run: `cargo bench -p probermesh-adapters --bench metrics_render`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use probermesh_adapters::metrics::{PrometheusExporter, render};
use probermesh_core::aggregate::{AggregationMethod, Aggregator, AggregatorConfig, SnapshotPart};
use probermesh_core::model::{
    AgentId, HttpPhases, HttpResult, IcmpResult, ProbeOutcome, ProbeResult, Region, TlsInfo,
    TlsVersion, UnixMillis,
};
use probermesh_core::ports::MetricsExporter as _;

const REGIONS: u8 = 100;
const URLS: u32 = 100;
const T0: u64 = 1_800_000_000_000;

fn agent(region: u8) -> AgentId {
    AgentId::new(
        Region::new(&format!("region-{region:03}")).expect("a valid region"),
        IpAddr::V4(Ipv4Addr::new(10, region, 0, 1)),
    )
}

fn aggregator() -> Aggregator {
    let mut aggregator = Aggregator::new(
        AggregatorConfig {
            method: AggregationMethod::Mean,
            ..AggregatorConfig::default()
        },
        UnixMillis(T0),
    )
    .expect("a valid configuration");
    let rtts: Vec<Duration> = (0..64u64)
        .map(|i| Duration::from_micros(800 + (i * 37) % 4_000))
        .collect();
    let icmp = ProbeOutcome::Icmp(IcmpResult::measured(Duration::ZERO, 64, &rtts));
    let http = ProbeOutcome::Http(HttpResult {
        phases: HttpPhases {
            resolve: Duration::from_millis(2),
            connect: Duration::from_millis(10),
            tls: Duration::from_millis(20),
            processing: Duration::from_millis(30),
            transfer: Duration::from_millis(5),
        },
        status_code: Some(200),
        tls: Some(TlsInfo {
            version: TlsVersion::Tls13,
            earliest_expiry_unix_secs: 1_900_000_000,
        }),
        failure: None,
    });
    let web = Region::new("web").expect("a valid region");
    let mut results = Vec::new();
    for source in 0..REGIONS {
        for target in 0..REGIONS {
            results.push(ProbeResult {
                source: agent(source),
                target_region: agent(target).region,
                target: agent(target).ip.to_string(),
                round_start: UnixMillis(T0 + 1_000),
                outcome: icmp.clone(),
            });
        }
        for url in 0..URLS {
            results.push(ProbeResult {
                source: agent(source),
                target_region: web.clone(),
                target: format!("https://service-{url:03}.example.org/health"),
                round_start: UnixMillis(T0 + 1_000),
                outcome: http.clone(),
            });
        }
    }
    let now = UnixMillis(T0 + 2_000);
    for source in 0..REGIONS {
        aggregator.handle_heartbeat(
            now,
            &agent(source),
            &probermesh_core::model::AgentVersion::new("1.0.0"),
        );
    }
    aggregator.handle_results(now, results);
    aggregator.handle_timeout(UnixMillis(T0 + 31_000));
    aggregator
}

fn bench(c: &mut Criterion) {
    let aggregator = aggregator();
    let now = UnixMillis(T0 + 31_000);
    let snapshot = aggregator.snapshot(now);
    let text = render(&snapshot);
    let samples = text.iter().filter(|b| **b == b'\n').count()
        - text
            .split(|b| *b == b'\n')
            .filter(|l| l.starts_with(b"#"))
            .count();
    eprintln!(
        "mesh: {} series, {samples} samples, {:.1} MB of text",
        snapshot.series_count(),
        text.len() as f64 / 1e6
    );
    let mut group = c.benchmark_group("metrics");
    group.sample_size(10);
    group.bench_function("snapshot", |b| b.iter(|| aggregator.snapshot(now)));
    group.bench_function("render", |b| b.iter(|| render(&snapshot)));
    group.bench_function("full_render", |b| {
        b.iter(|| render(&aggregator.snapshot(now)))
    });
    let exporter = PrometheusExporter::new();
    exporter.publish(&aggregator.snapshot_part(now, SnapshotPart::Settled));
    group.bench_function("scrape", |b| {
        b.iter(|| exporter.scrape(&aggregator.snapshot_part(now, SnapshotPart::Live)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
