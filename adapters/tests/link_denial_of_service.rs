//! Denial of service on the link (docs/link.md, "Denial of service"), on loopback against a
//! real `ReportServer`: a flood of unauthenticated QUIC Initials (real ones, each a fresh
//! connection attempt, sent from many 127.0.0.x addresses that never answer, as forged sources
//! would) while a connected agent keeps delivering and a new agent connects; the handshake
//! budget and its Retry; the per-source rate; the rate limit and quoting of the lines peers
//! cause. Bounds are generous: during the flood a new agent normally gets in within 0.1 s.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use probermesh_adapters::link::{CloseCode, ReportServer};
use probermesh_core::wire::{AgentMessage, ProtocolVersion, RefusalV1, ServerMessage, WireSecret};

mod common;

use common::flood::{Flood, FloodPace, capture_initials, is_server_line, keep_delivering};
use common::link::*;
use common::{TempDir, capture_logs};

/// Initials in the flood: a burst, then a steady rate for as long as the test needs (about
/// 18 s of them; it needs 4 s). A debug build beside two busy cores keeps up with this pace
/// (at 1,000 a second it fell behind and a new agent waited 4.4 s in its queue); the
/// `link_flood` example floods a release build at the scale of a real attack.
const FLOOD_INITIALS: usize = 8_000;
const FLOOD_PACE: FloodPace = FloodPace {
    burst: 1_000,
    burst_per_sec: 2_000.0,
    steady_per_sec: 400.0,
};

/// How long a new agent may take to get in during the flood.
const CONNECT_BOUND: Duration = Duration::from_secs(5);

/// How long one batch of the connected agent's results may take to be acknowledged during
/// the flood, and how many batches it must get through.
const DELIVERY_BOUND: Duration = Duration::from_secs(5);
const DELIVERIES: usize = 3;

/// The flood goes on at least this long, well past its burst, while both agents are watched.
const MIN_FLOOD: Duration = Duration::from_secs(4);

/// Whether the server refused the connection attempt (QUIC `CONNECTION_REFUSED`).
fn refused(error: &quinn::ConnectionError) -> bool {
    matches!(error, quinn::ConnectionError::ConnectionClosed(close)
        if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

#[tokio::test]
async fn an_initial_flood_locks_no_agent_out_and_stalls_no_connected_one() {
    let (logs, _guard) = capture_logs();
    let dir = TempDir::new("flood");
    let mut config = server_config(dir.path(), "127.0.0.1:0".parse().expect("addr"));
    // A flood Initial that is let in holds its place until the handshake timeout; with the
    // default 5 s, the places a burst took would free just as the new agent's bound ends.
    // At 10 s a server that gives every Initial a place stays full for the whole bound.
    config.limits.handshake_timeout = Duration::from_secs(10);
    // Room for 256 agents: what a server that counts every Initial as a connection runs out
    // of even when it is too slow (a debug build) to take 4,096 handshakes in a second.
    config.admission.max_connections = 256;
    let server = start_server(config).await;
    let addr = server.local_addr();
    let (recorded, _task) = record(&server);
    let steady = Arc::new(start_agent(agent_config(addr, "steady", pinned(&server))));
    eventually("the steady agent", || recorded.connected().len() == 1).await;

    let initials = capture_initials(FLOOD_INITIALS).await;
    let lines_before = logs.text().lines().count();
    let flood = Flood::start(addr, initials, FLOOD_PACE);
    let flood_started = Instant::now();
    let (deliveries, delivering) = keep_delivering(Arc::clone(&steady), recorded.clone(), 0);

    // A new agent tries once the burst is out (far more attempts than the server has room).
    eventually("the burst", || flood.sent() >= FLOOD_PACE.burst as u64).await;
    let started = Instant::now();
    let newcomer = start_agent(agent_config(addr, "newcomer", pinned(&server)));
    eventually("the new agent", || recorded.connected().len() == 2).await;
    let connect_took = started.elapsed();
    eventually("the steady agent's deliveries", || {
        deliveries.lock().expect("lock").len() >= DELIVERIES && flood_started.elapsed() >= MIN_FLOOD
    })
    .await;
    delivering.abort();
    let sent = flood.stop();
    assert!(newcomer.stats().connected, "the new agent was let go");

    let took = deliveries.lock().expect("lock").clone();
    let slowest = took.iter().max().copied().unwrap_or_default();
    let flood_lines: Vec<String> = logs
        .text()
        .lines()
        .skip(lines_before)
        .filter(|l| is_server_line(l))
        .map(str::to_owned)
        .collect();
    let warnings = flood_lines.iter().filter(|l| l.contains(" WARN ")).count();
    let stats = server.stats();
    eprintln!(
        "{sent} Initials; the new agent got in after {connect_took:?}; the connected agent \
         delivered {} batches, the slowest in {slowest:?}; {} server log lines, {warnings} WARN; \
         {stats:?}",
        took.len(),
        flood_lines.len(),
    );
    assert!(
        sent < FLOOD_INITIALS as u64,
        "the flood ended before the test did"
    );
    assert!(
        connect_took < CONNECT_BOUND,
        "the new agent took {connect_took:?}"
    );
    assert!(slowest < DELIVERY_BOUND, "a batch took {slowest:?}");
    assert!(warnings <= 5, "{warnings} WARN lines");
    assert!(
        flood_lines.len() <= 20,
        "{} log lines: {flood_lines:#?}",
        flood_lines.len()
    );
    // The flood was answered with Retries and took no agent's place.
    assert!(stats.retries > 0, "{stats:?}");
    assert_eq!(stats.open_connections, 2, "{stats:?}");
    assert_eq!(stats.refused_capacity, 0, "{stats:?}");
    newcomer.close().await;
    steady.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn connections_in_their_handshake_take_no_agent_place() {
    let dir = TempDir::new("handshakes");
    let mut config = server_config(dir.path(), "127.0.0.1:0".parse().expect("addr"));
    config.admission.max_connections = 2;
    let server = start_server(config).await;
    let (recorded, _task) = record(&server);
    // Three peers that finish TLS and never say Hello.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(raw_client(&server).await);
    }
    eventually("three handshakes", || server.stats().handshakes == 3).await;
    let agent = start_agent(agent_config(server.local_addr(), "agent", pinned(&server)));
    eventually("the agent", || recorded.connected().len() == 1).await;
    let stats = server.stats();
    assert_eq!(
        (stats.open_connections, stats.handshakes),
        (1, 3),
        "{stats:?}"
    );
    drop(silent);
    agent.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn beyond_the_unvalidated_share_attempts_are_retried_and_beyond_the_budget_refused() {
    let dir = TempDir::new("budget");
    let mut config = server_config(dir.path(), "127.0.0.1:0".parse().expect("addr"));
    config.admission.max_handshakes = 2;
    config.admission.max_unvalidated_handshakes = 1;
    let server = start_server(config).await;
    let (recorded, _task) = record(&server);
    let localhost = IpAddr::from([127, 0, 0, 1]);

    // The first attempt takes the unvalidated share without a Retry.
    let first = try_raw_client(&server, localhost).await.expect("first");
    assert_eq!((server.stats().handshakes, server.stats().retries), (1, 0));
    // The second is retried, comes back validated and takes the rest of the budget.
    let second = try_raw_client(&server, localhost).await.expect("second");
    assert_eq!((server.stats().handshakes, server.stats().retries), (2, 1));
    // The third is retried and, validated, refused: the budget is spent.
    let third = try_raw_client(&server, localhost).await;
    assert!(third.as_ref().is_err_and(refused), "{:?}", third.err());
    let stats = server.stats();
    assert_eq!((stats.retries, stats.refused_busy), (2, 1), "{stats:?}");

    // Their places come back when they leave; an agent gets in.
    first.conn.close(0u32.into(), b"");
    second.conn.close(0u32.into(), b"");
    eventually("the handshakes to end", || server.stats().handshakes == 0).await;
    let agent = start_agent(agent_config(server.local_addr(), "agent", pinned(&server)));
    eventually("the agent", || recorded.connected().len() == 1).await;
    agent.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_source_beyond_its_handshake_rate_is_refused_and_other_sources_are_not() {
    let dir = TempDir::new("rate");
    let mut config = server_config(dir.path(), "127.0.0.1:0".parse().expect("addr"));
    // Every attempt is validated first (the rate applies only to validated sources).
    config.admission.max_unvalidated_handshakes = 0;
    config.admission.per_source_burst = 2;
    config.admission.per_source_handshakes_per_sec = 0.001;
    let server = start_server(config).await;
    let busy = IpAddr::from([127, 0, 0, 1]);
    let other = IpAddr::from([127, 0, 0, 2]);

    let _a = try_raw_client(&server, busy).await.expect("first");
    let _b = try_raw_client(&server, busy).await.expect("second");
    let third = try_raw_client(&server, busy).await;
    assert!(third.as_ref().is_err_and(refused), "{:?}", third.err());
    let _c = try_raw_client(&server, other)
        .await
        .expect("another source");
    let stats = server.stats();
    assert_eq!(stats.refused_rate_limited, 1, "{stats:?}");
    assert_eq!(stats.retries, 4, "{stats:?}");
    server.shutdown().await;
}

/// `count` peers at once sending a `Hello` with a wrong token and `region`; each is answered
/// with `Refused`.
async fn refused_hellos(server: &Arc<ReportServer>, region: &str, count: usize) {
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..count {
        let server = Arc::clone(server);
        let region = region.to_owned();
        attempts.spawn(async move { refused_hello(&server, &region).await });
    }
    while let Some(done) = attempts.join_next().await {
        done.expect("a refused hello");
    }
}

async fn refused_hello(server: &ReportServer, region: &str) {
    let mut raw = raw_client(server).await;
    raw.say(&AgentMessage::Hello {
        protocol_version: ProtocolVersion::V1.as_u16(),
        agent_version: "0.1.0".into(),
        region: region.into(),
        ip: "10.9.9.9".parse::<IpAddr>().expect("ip").into(),
        instance_id: 42,
        token: WireSecret::new("wrong".into()),
    })
    .await;
    assert_eq!(
        raw.read().await,
        ServerMessage::Refused {
            reason: RefusalV1::BadToken
        }
    );
    let (code, _) = raw.closed().await;
    assert_eq!(code, CloseCode::Refused);
}

#[tokio::test]
async fn refusals_log_one_line_per_interval_quoting_the_peer_escaped_and_cut() {
    let (logs, _guard) = capture_logs();
    let dir = TempDir::new("lines");
    let mut config = server_config(dir.path(), "127.0.0.1:0".parse().expect("addr"));
    config.peer_log_interval = Duration::from_secs(3_600);
    let server = start_server(config).await;
    let region = format!("forged\nWARN line {}", "x".repeat(1_000));
    refused_hellos(&server, &region, 5).await;
    assert_eq!(server.stats().refused_bad_token, 5);

    let text = logs.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("agent refused: bad token"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let line = lines[0];
    assert!(line.contains("region=forged\\nWARN line xxx"), "{line}");
    assert!(line.contains("x…"), "{line}");
    assert!(line.len() < 400, "{} bytes: {line}", line.len());
    assert!(!text.lines().any(|l| l.starts_with("WARN line")), "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn every_refusal_left_out_of_the_log_is_counted_in_a_later_line() {
    let (logs, _guard) = capture_logs();
    let dir = TempDir::new("summary");
    let mut config = server_config(dir.path(), "127.0.0.1:0".parse().expect("addr"));
    config.peer_log_interval = Duration::from_millis(300);
    let server = start_server(config).await;
    refused_hellos(&server, "eu", 4).await;
    // Each refusal is a line of its own, or counted in the `suppressed` of a later line.
    let logged = || {
        let text = logs.text();
        text.lines()
            .filter(|l| {
                l.contains("agent refused: bad token")
                    || l.contains("agents refused at their Hello")
            })
            .map(|l| {
                let suppressed = l
                    .split("suppressed=")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("no count in {l}"));
                suppressed + u64::from(l.contains("agent refused: bad token"))
            })
            .sum::<u64>()
    };
    eventually("every refusal accounted for", || logged() == 4).await;
    server.shutdown().await;
}
