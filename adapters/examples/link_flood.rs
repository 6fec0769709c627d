//! The link under a flood of unauthenticated QUIC Initials at the scale of a real attack
//! (issue 13: 10,000 Initials in 1.4 s, about 1 MB/s, repeated), against a server with the
//! default limits, on loopback: halfway through each burst a new agent tries to connect, while an agent
//! that was connected before keeps delivering results. It prints, per burst, how long the new
//! agent took to get in, how the connected agent's batches fared and how many log lines (WARN
//! among them) the server wrote. The numbers in docs/link.md come from
//!
//! ```text
//! cargo run --release -p probermesh-adapters --example link_flood [-- BURSTS INITIALS SECS]
//! ```
//!
//! (defaults 3 bursts of 10,000 Initials over 1.4 s, one every 8 s). It uses only the public
//! API that the server had before the flood defences, so it also measures the old server.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

use common::Logs;
use common::flood::{Flood, FloodPace, capture_initials, is_server_line, keep_delivering};
use common::link::*;

/// Time from one burst's start to the next.
const PERIOD: Duration = Duration::from_secs(8);

/// How long the new agent is given before it counts as locked out.
const GIVE_UP: Duration = Duration::from_secs(30);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: f64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let bursts = arg(0, 3.0) as usize;
    let initials_per_burst = arg(1, 10_000.0) as usize;
    let burst_secs = arg(2, 1.4);

    let logs = Logs::default();
    let writer = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(logs, bursts, initials_per_burst, burst_secs));
}

async fn run(logs: Logs, bursts: usize, initials_per_burst: usize, burst_secs: f64) {
    let dir = common::TempDir::new("flood-example");
    let server = start_server(server_config(dir.path(), "127.0.0.1:0".parse().unwrap())).await;
    let addr = server.local_addr();
    let (recorded, _task) = record(&server);
    let steady = Arc::new(start_agent(agent_config(addr, "steady", pinned(&server))));
    eventually("the steady agent", || recorded.connected().len() == 1).await;
    println!(
        "default limits; {bursts} bursts of {initials_per_burst} Initials over {burst_secs} s, \
         one every {} s",
        PERIOD.as_secs()
    );
    let captured = capture_initials(bursts * initials_per_burst).await;
    let (deliveries, delivering) = keep_delivering(Arc::clone(&steady), recorded.clone(), 0);
    let pace = FloodPace {
        burst: initials_per_burst,
        burst_per_sec: initials_per_burst as f64 / burst_secs,
        steady_per_sec: 1.0,
    };
    let mut captured = captured.into_iter();
    for burst in 1..=bursts {
        let lines_before = logs.text().lines().count();
        let batches_before = deliveries.lock().unwrap().len();
        let started = Instant::now();
        let flood = Flood::start(
            addr,
            captured.by_ref().take(initials_per_burst).collect(),
            pace,
        );
        // The new agent tries in the middle of the burst.
        while flood.sent() < initials_per_burst as u64 / 2 && started.elapsed() < GIVE_UP {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let connected_before = recorded.connected().len();
        let tried = Instant::now();
        let region = format!("newcomer-{burst}");
        let newcomer = start_agent(agent_config(addr, &region, pinned(&server)));
        while recorded.connected().len() == connected_before && tried.elapsed() < GIVE_UP {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let waited = tried.elapsed();
        let got_in = recorded.connected().len() > connected_before;
        // The rest of the burst goes out whatever happened.
        while flood.sent() < initials_per_burst as u64 && started.elapsed() < GIVE_UP {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let sent = flood.stop();
        if let Some(rest) = PERIOD.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
        let lines: Vec<String> = logs
            .text()
            .lines()
            .skip(lines_before)
            .filter(|l| is_server_line(l))
            .map(str::to_owned)
            .collect();
        let warnings = lines.iter().filter(|l| l.contains(" WARN ")).count();
        let took: Vec<Duration> = deliveries.lock().unwrap()[batches_before..].to_vec();
        let slowest = took.iter().max().copied().unwrap_or_default();
        println!(
            "burst {burst}: {sent} Initials in {:.2} s; new agent {} after {:.3} s; connected \
             agent: {} batches acknowledged, slowest {:.3} s; server log: {} lines, {warnings} WARN",
            burst_secs.min(started.elapsed().as_secs_f64()),
            if got_in { "in" } else { "STILL OUT" },
            waited.as_secs_f64(),
            took.len(),
            slowest.as_secs_f64(),
            lines.len(),
        );
        newcomer.close().await;
    }
    delivering.abort();
    println!("server counters: {:?}", server.stats());
    steady.close().await;
    server.shutdown().await;
}
