//! Aggregator throughput: 1,000 agents in 100 regions, each reporting 100 ICMP results a window
//! (100,000 results, 10,000 region pairs). Measures one window end to end (intake, settling with
//! the robust method, expiry) and, separately, building the snapshot of the resulting state.
//!
//! Run: `cargo bench -p probermesh-core --bench aggregator`. Divide the window time by 100,000
//! for the cost per result.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use probermesh_core::aggregate::{AggregationMethod, Aggregator, AggregatorConfig};
use probermesh_core::model::{
    AgentId, AgentVersion, IcmpResult, ProbeOutcome, ProbeResult, Region, UnixMillis,
};

const REGIONS: u8 = 100;
const AGENTS_PER_REGION: u8 = 10;
const WINDOW_MS: u64 = 15_000;
const T0: u64 = 1_800_000_000_000;

fn agent(region: u8, index: u8) -> AgentId {
    let name = format!("region-{region:03}");
    AgentId::new(
        Region::new(&name).expect("valid region"),
        IpAddr::V4(Ipv4Addr::new(10, region, 0, index)),
    )
}

/// One window of results: agent i of every region probes agent i of every region (100 targets).
fn window_results() -> Vec<ProbeResult> {
    let rtts: Vec<Duration> = (0..64u64)
        .map(|i| Duration::from_micros(800 + (i * 37) % 400))
        .collect();
    let outcome = ProbeOutcome::Icmp(IcmpResult::measured(
        Duration::from_micros(20),
        64,
        &rtts[..62],
    ));
    let mut results =
        Vec::with_capacity(usize::from(REGIONS) * usize::from(AGENTS_PER_REGION) * 100);
    for source_region in 0..REGIONS {
        for index in 1..=AGENTS_PER_REGION {
            let source = agent(source_region, index);
            for target_region in 0..REGIONS {
                let target = agent(target_region, index);
                results.push(ProbeResult {
                    source: source.clone(),
                    target_region: target.region.clone(),
                    target: target.ip.to_string(),
                    round_start: UnixMillis(T0 + 1_000),
                    outcome: outcome.clone(),
                });
            }
        }
    }
    results
}

fn fresh_aggregator(method: AggregationMethod) -> Aggregator {
    let config = AggregatorConfig {
        method,
        ..AggregatorConfig::default()
    };
    let mut aggregator = Aggregator::new(config, UnixMillis(T0)).expect("valid config");
    let version = AgentVersion::new("0.1.0");
    for region in 0..REGIONS {
        for index in 1..=AGENTS_PER_REGION {
            aggregator.handle_heartbeat(UnixMillis(T0), &agent(region, index), &version);
        }
    }
    aggregator
}

fn one_window(c: &mut Criterion) {
    let results = window_results();
    let mut group = c.benchmark_group("aggregator_window");
    group.sample_size(10);
    group.throughput(Throughput::Elements(results.len() as u64));
    for method in [AggregationMethod::Robust, AggregationMethod::Mean] {
        group.bench_function(format!("{method}_100k_results"), |b| {
            b.iter_batched(
                || (fresh_aggregator(method), results.clone()),
                |(mut aggregator, results)| {
                    aggregator.handle_results(UnixMillis(T0 + 14_000), results);
                    aggregator.handle_timeout(UnixMillis(T0 + 2 * WINDOW_MS));
                    aggregator
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();

    let mut settled = fresh_aggregator(AggregationMethod::Robust);
    settled.handle_results(UnixMillis(T0 + 14_000), results);
    settled.handle_timeout(UnixMillis(T0 + 2 * WINDOW_MS));
    let series = settled
        .snapshot(UnixMillis(T0 + 2 * WINDOW_MS))
        .series_count();
    let mut group = c.benchmark_group("aggregator_snapshot");
    group.sample_size(10);
    group.throughput(Throughput::Elements(series as u64));
    group.bench_function(format!("snapshot_{series}_series"), |b| {
        b.iter(|| settled.snapshot(UnixMillis(T0 + 2 * WINDOW_MS)));
    });
    group.finish();
}

criterion_group!(benches, one_window);
criterion_main!(benches);
