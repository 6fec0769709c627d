//! An agent's memory is bounded by its in-flight limits, not by its pool: a valid probe file
//! of 1,000 HTTP targets sharing a 1 MiB request body (a 1 MiB file) once took an agent from
//! 15 MB to 1.2–2.1 GB, one copy of the `http:` block per planned probe and every probe of the
//! round at once. Here the real server and agent run as processes, the targets are a loopback
//! listener that never accepts (so every probe holds its connection until its timeout, the
//! worst case), and the agent's peak resident set (`VmHWM`) is read after several rounds.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use probermesh_tests::harness::{http, proc_status_bytes, server_fingerprint, wait_for};

mod common;

use common::{start_agent, start_server};

const TARGETS: usize = 1_000;
const BODY_BYTES: usize = 1 << 20;
/// The stated bound on the agent's peak resident set with this pool and the default limits
/// (256 HTTP probes at once): the pool once, the probes' sockets and buffers, the runtime.
const AGENT_PEAK_RSS_BOUND_BYTES: u64 = 160 * 1024 * 1024;

#[test]
fn a_large_shared_body_pool_keeps_the_agent_within_its_memory_bound() {
    // Connections queue in the kernel and are never accepted: each request stays in flight.
    let blackhole = TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let target_port = blackhole.local_addr().expect("its address").port();
    let mut probe_file = String::from(
        "prober_configs:\n  - prober_type: http\n    region: far\n    http:\n      method: POST\n      body: \"",
    );
    probe_file.push_str(&"x".repeat(BODY_BYTES));
    probe_file.push_str("\"\n    targets:\n");
    for i in 0..TARGETS {
        let _ = writeln!(probe_file, "      - http://127.0.0.1:{target_port}/t{i}");
    }
    let (_server, http_addr, link_port, _probe_path, dir) =
        start_server("agent-memory", false, &probe_file);
    let fingerprint = server_fingerprint(&dir.path().join("data"));
    let mut agent = start_agent("eu", "127.0.0.11", link_port, &fingerprint, false);
    let agent_pid = agent.0.id();

    // The agent probed the pool: its (failed) results reach the server's metrics.
    let target = format!("127.0.0.1:{target_port}/t");
    wait_for(
        "results for the pool's URLs",
        Duration::from_secs(60),
        || {
            let peak = proc_status_bytes(agent_pid, "VmHWM").unwrap_or(0);
            assert!(
                peak <= AGENT_PEAK_RSS_BOUND_BYTES,
                "the agent's peak RSS reached {} MiB before its first results (bound {} MiB)",
                peak >> 20,
                AGENT_PEAK_RSS_BOUND_BYTES >> 20
            );
            http("GET", http_addr, "/metrics", None).filter(|(_, body)| body.contains(&target))
        },
    );
    // Three more rounds, each planning 1,000 probes of the shared 1 MiB block.
    let watch_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < watch_until {
        assert!(
            agent.0.try_wait().expect("the agent's status").is_none(),
            "the agent exited"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let peak = proc_status_bytes(agent_pid, "VmHWM").expect("the agent's peak RSS");
    let now = proc_status_bytes(agent_pid, "VmRSS").expect("the agent's RSS");
    println!(
        "agent peak RSS {} MiB, now {} MiB, bound {} MiB",
        peak >> 20,
        now >> 20,
        AGENT_PEAK_RSS_BOUND_BYTES >> 20
    );
    assert!(
        peak <= AGENT_PEAK_RSS_BOUND_BYTES,
        "the agent's peak RSS is {} MiB; the bound is {} MiB",
        peak >> 20,
        AGENT_PEAK_RSS_BOUND_BYTES >> 20
    );
    drop(blackhole);
}
