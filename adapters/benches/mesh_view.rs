//! The mesh view at 100 regions (10,000 cells, 2,000 HTTP rows, 60 windows of history):
//! building the view from the aggregator (`build`), the `/api/v1/mesh` JSON of it (`json`),
//! both (`build_and_json`, what one request costs the server; target under 50 ms), a pair's
//! page, and one history tick. Prints the JSON's size once.
//!
//! Run: `cargo bench -p probermesh-adapters --bench mesh_view`.

mod mesh100;

use criterion::{Criterion, criterion_group, criterion_main};
use probermesh_adapters::admin::{mesh_json, pair_json};
use probermesh_core::mesh;
use probermesh_core::model::Region;

fn bench(c: &mut Criterion) {
    let (aggregator, history, now) = mesh100::mesh(60);
    let view = mesh::build(&aggregator, &history, None, now);
    let json = mesh_json(&view);
    eprintln!(
        "mesh: {} regions, {} cells, {} HTTP rows, {:.2} MB of JSON, {} history points",
        view.regions.len(),
        view.cells.len(),
        view.http.len(),
        json.len() as f64 / 1e6,
        history.total_points()
    );
    let (source, target) = (
        Region::new("region-001").expect("a region"),
        Region::new("region-050").expect("a region"),
    );
    let mut group = c.benchmark_group("mesh_view");
    group.sample_size(20);
    group.bench_function("build", |b| {
        b.iter(|| mesh::build(&aggregator, &history, None, now))
    });
    group.bench_function("json", |b| b.iter(|| mesh_json(&view)));
    group.bench_function("build_and_json", |b| {
        b.iter(|| mesh_json(&mesh::build(&aggregator, &history, None, now)))
    });
    group.bench_function("pair", |b| {
        b.iter(|| {
            mesh::pair(&aggregator, &history, &source, &target, now).map(|page| pair_json(&page))
        })
    });
    let mut ticked = history.clone();
    group.bench_function("history_tick", |b| {
        b.iter(|| ticked.record(now, &aggregator))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
