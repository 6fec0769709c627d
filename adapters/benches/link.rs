//! QUIC link throughput: N simulated agents on loopback stream result batches to one server,
//! and, as the baseline in the same run, the same bytes through bare quinn streams.
//!
//! The server runs on its own thread (a current-thread tokio runtime) together with a driver
//! loop that takes every event and counts the results, so its thread CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`) is the server's whole cost: UDP, QUIC, TLS, framing, decoding,
//! deduplication, acks. The agents run on a second thread and keep their outboxes topped up.
//! The baseline server only reads and counts bytes; its clients write pre-encoded batch frames.
//!
//! Run: `cargo bench -p probermesh-adapters --bench link -- [AGENTS] [SECONDS]`
//! (defaults 50 agents, 5 s per path). Figures go to `docs/benchmarks.md`.

#![allow(clippy::print_stdout, reason = "a bench binary reports on stdout")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::time::{ClockId, clock_gettime};
use probermesh_adapters::link::{
    AgentIdentity, AgentLink, AgentLinkConfig, CertificateSource, LinkLimits, ReportServer,
    ServerCertificate, ServerConfig, ServerVerification, client_crypto, server_crypto,
};
use probermesh_adapters::secret::Token;
use probermesh_core::link::FromAgent;
use probermesh_core::model::{AgentId, AgentVersion, ProbeResult, Region};
use probermesh_core::ports::{LinkEvent, ReportSource, ServerLink};
use probermesh_core::wire::{
    HISTOGRAM_LEN, OutcomeV1, ProbeResultV1, RttSummaryV1, encode_result_batch_frame,
};

const BATCH_RESULTS: usize = 1_000;
/// Results an agent keeps buffered ahead of the link.
const AGENT_BACKLOG: usize = 8_000;
const WARM_UP: Duration = Duration::from_secs(1);

fn cpu(clock: ClockId) -> Duration {
    clock_gettime(clock).map_or(Duration::ZERO, Duration::from)
}

/// A typical ICMP result: a handful of echoes with a summary and a histogram.
fn result(n: usize) -> ProbeResultV1 {
    let mut histogram_counts = vec![0; HISTOGRAM_LEN];
    histogram_counts[6] = 8;
    histogram_counts[7] = 2;
    ProbeResultV1 {
        target_region: format!("region-{:03}", n % 100),
        target: format!("10.{}.{}.{}", n % 100, (n / 100) % 256, n % 7),
        round_start_ms: 1_800_000_000_000 + (n as u64 / 100) * 15_000,
        outcome: OutcomeV1::Icmp {
            resolve_ns: 0,
            failure: None,
            packets_sent: 10,
            packets_received: 10,
            rtt: Some(RttSummaryV1 {
                mean_ns: 2_100_000 + n as u64 % 1_000,
                min_ns: 1_900_000,
                max_ns: 3_400_000,
                stddev_ns: 310_000,
            }),
            histogram_counts,
            histogram_sum_ns: 21_000_000,
        },
    }
}

fn template() -> Vec<ProbeResultV1> {
    (0..BATCH_RESULTS).map(result).collect()
}

/// What one path achieved over the measured window.
struct Measured {
    results: u64,
    elapsed: Duration,
    server_cpu: Duration,
    process_cpu: Duration,
}

impl Measured {
    fn results_per_sec(&self) -> f64 {
        self.results as f64 / self.elapsed.as_secs_f64()
    }

    fn server_cpu_ms_per_1000(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1_000.0 / (self.results as f64 / 1_000.0)
    }

    /// Everything but the server thread: the agents (or bare clients), producing and sending.
    fn agents_cpu_ms_per_1000(&self) -> f64 {
        self.process_cpu
            .saturating_sub(self.server_cpu)
            .as_secs_f64()
            * 1_000.0
            / (self.results as f64 / 1_000.0)
    }
}

/// Counters a server thread publishes: results (or bytes) taken, and its own CPU time.
#[derive(Default)]
struct ServerGauges {
    count: AtomicU64,
    cpu_ns: AtomicU64,
    stop: AtomicBool,
}

/// Reads the gauges around the measured window.
fn measure(gauges: &ServerGauges, duration: Duration, per_unit: f64) -> Measured {
    thread::sleep(WARM_UP);
    let (count0, cpu0, proc0, t0) = (
        gauges.count.load(Ordering::Relaxed),
        gauges.cpu_ns.load(Ordering::Relaxed),
        cpu(ClockId::CLOCK_PROCESS_CPUTIME_ID),
        Instant::now(),
    );
    thread::sleep(duration);
    let (count1, cpu1, proc1, elapsed) = (
        gauges.count.load(Ordering::Relaxed),
        gauges.cpu_ns.load(Ordering::Relaxed),
        cpu(ClockId::CLOCK_PROCESS_CPUTIME_ID),
        t0.elapsed(),
    );
    gauges.stop.store(true, Ordering::Relaxed);
    Measured {
        results: ((count1 - count0) as f64 / per_unit) as u64,
        elapsed,
        server_cpu: Duration::from_nanos(cpu1 - cpu0),
        process_cpu: proc1.saturating_sub(proc0),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Publishes the current thread's CPU time every 10 ms.
async fn publish_cpu(gauges: Arc<ServerGauges>) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !gauges.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let ns = cpu(ClockId::CLOCK_THREAD_CPUTIME_ID).as_nanos();
        gauges
            .cpu_ns
            .store(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("probermesh-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

// === the link ===

fn run_link(n_agents: usize, duration: Duration) -> Measured {
    let dir = data_dir("link");
    let token = Token::new("bench-token", "bench").expect("token");
    let gauges = Arc::new(ServerGauges::default());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server_thread = {
        let gauges = Arc::clone(&gauges);
        let config = ServerConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            CertificateSource::Generated {
                data_dir: dir.clone(),
                names: vec!["localhost".into()],
            },
            token.clone(),
        );
        thread::spawn(move || {
            runtime().block_on(async move {
                let server = ReportServer::bind(config).expect("server");
                ready_tx
                    .send((server.local_addr(), server.fingerprint()))
                    .expect("ready");
                tokio::spawn(publish_cpu(Arc::clone(&gauges)));
                while !gauges.stop.load(Ordering::Relaxed) {
                    let Ok(Some(event)) =
                        tokio::time::timeout(Duration::from_millis(100), server.next_event()).await
                    else {
                        continue;
                    };
                    if let LinkEvent::Message {
                        message: FromAgent::Results { results, .. },
                        ..
                    } = event
                    {
                        gauges
                            .count
                            .fetch_add(results.len() as u64, Ordering::Relaxed);
                    }
                }
                server.shutdown().await;
            });
        })
    };
    let (addr, fingerprint) = ready_rx.recv().expect("server ready");

    let stop_agents = Arc::new(AtomicBool::new(false));
    let agents_thread = {
        let stop = Arc::clone(&stop_agents);
        thread::spawn(move || {
            runtime().block_on(async move {
                // What an agent's probes hand the link: domain results (the link converts them).
                let source = AgentId::new(
                    Region::new("bench").expect("region"),
                    "10.200.0.1".parse().expect("ip"),
                );
                let template: Arc<Vec<ProbeResult>> = Arc::new(
                    template()
                        .into_iter()
                        .map(|dto| dto.into_domain(source.clone()).expect("a valid result"))
                        .collect(),
                );
                let mut links = Vec::new();
                for a in 0..n_agents {
                    let identity = AgentIdentity::new(
                        AgentId::new(
                            Region::new(&format!("bench-{a}")).expect("region"),
                            format!("10.200.{}.{}", a / 256, a % 256)
                                .parse()
                                .expect("ip"),
                        ),
                        AgentVersion::new("bench"),
                    )
                    .expect("identity");
                    let config = AgentLinkConfig::new(
                        addr.to_string(),
                        ServerVerification::PinnedSha256(fingerprint),
                        token.clone(),
                        identity,
                    );
                    let link = Arc::new(AgentLink::start(config).expect("agent"));
                    let producer = Arc::clone(&link);
                    let template = Arc::clone(&template);
                    let stop = Arc::clone(&stop);
                    tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            if producer.stats().outbox.buffered_results < AGENT_BACKLOG {
                                producer.enqueue_results(template.as_ref().clone());
                                tokio::task::yield_now().await;
                            } else {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                    });
                    links.push(link);
                }
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                for link in links {
                    link.close().await;
                }
            });
        })
    };

    let measured = measure(&gauges, duration, 1.0);
    stop_agents.store(true, Ordering::Relaxed);
    agents_thread.join().expect("agents thread");
    server_thread.join().expect("server thread");
    let _ = std::fs::remove_dir_all(&dir);
    measured
}

// === the baseline: bare quinn streams carrying the same frames ===

fn run_bare(n_clients: usize, duration: Duration, frame: Arc<Vec<u8>>) -> Measured {
    let dir = data_dir("bare");
    let cert = ServerCertificate::load(&CertificateSource::Generated {
        data_dir: dir.clone(),
        names: vec!["localhost".into()],
    })
    .expect("certificate");
    let fingerprint = cert.fingerprint();
    let limits = LinkLimits::default();
    let gauges = Arc::new(ServerGauges::default());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server_thread = {
        let gauges = Arc::clone(&gauges);
        thread::spawn(move || {
            runtime().block_on(async move {
                let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(
                    server_crypto(&cert).expect("server crypto"),
                )
                .expect("quic server crypto");
                let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
                config.transport_config(limits.transport(1));
                let endpoint =
                    quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr"))
                        .expect("endpoint");
                ready_tx
                    .send(endpoint.local_addr().expect("addr"))
                    .expect("ready");
                tokio::spawn(publish_cpu(Arc::clone(&gauges)));
                while !gauges.stop.load(Ordering::Relaxed) {
                    let Ok(Some(incoming)) =
                        tokio::time::timeout(Duration::from_millis(100), endpoint.accept()).await
                    else {
                        continue;
                    };
                    let gauges = Arc::clone(&gauges);
                    tokio::spawn(async move {
                        let Ok(conn) = incoming.await else { return };
                        let Ok((_send, mut recv)) = conn.accept_bi().await else {
                            return;
                        };
                        while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                            gauges
                                .count
                                .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
                        }
                    });
                }
                endpoint.close(0u32.into(), b"");
            });
        })
    };
    let addr: SocketAddr = ready_rx.recv().expect("server ready");

    let stop_clients = Arc::new(AtomicBool::new(false));
    let clients_thread = {
        let stop = Arc::clone(&stop_clients);
        let frame = Arc::clone(&frame);
        thread::spawn(move || {
            runtime().block_on(async move {
                let crypto = client_crypto(&ServerVerification::PinnedSha256(fingerprint))
                    .expect("client crypto");
                let mut client = quinn::ClientConfig::new(Arc::new(
                    quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
                        .expect("quic client crypto"),
                ));
                client.transport_config(limits.transport(0));
                let mut tasks = Vec::new();
                for _ in 0..n_clients {
                    let client = client.clone();
                    let frame = Arc::clone(&frame);
                    let stop = Arc::clone(&stop);
                    tasks.push(tokio::spawn(async move {
                        let endpoint =
                            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr"))
                                .expect("endpoint");
                        let conn = endpoint
                            .connect_with(client, addr, "localhost")
                            .expect("connect")
                            .await
                            .expect("handshake");
                        let (mut send, _recv) = conn.open_bi().await.expect("stream");
                        while !stop.load(Ordering::Relaxed) {
                            if send.write_all(&frame).await.is_err() {
                                break;
                            }
                        }
                        conn.close(0u32.into(), b"");
                    }));
                }
                for task in tasks {
                    let _ = task.await;
                }
            });
        })
    };

    let per_result = frame.len() as f64 / BATCH_RESULTS as f64;
    let measured = measure(&gauges, duration, per_result);
    stop_clients.store(true, Ordering::Relaxed);
    clients_thread.join().expect("clients thread");
    server_thread.join().expect("server thread");
    let _ = std::fs::remove_dir_all(&dir);
    measured
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n_agents: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(50);
    let seconds: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5.0);
    let duration = Duration::from_secs_f64(seconds);
    let frame =
        Arc::new(encode_result_batch_frame(1, &template(), &[], usize::MAX).expect("frame"));
    let bytes_per_result = frame.len() as f64 / BATCH_RESULTS as f64;

    println!(
        "QUIC link: {n_agents} agents on loopback, batches of {BATCH_RESULTS} ICMP results \
         ({bytes_per_result:.1} bytes per result framed), {seconds} s measured per path after {} s warm-up",
        WARM_UP.as_secs()
    );
    let link = run_link(n_agents, duration);
    let bare = run_bare(n_agents, duration, frame);
    let cores = |m: &Measured| m.server_cpu.as_secs_f64() / m.elapsed.as_secs_f64();
    let process = |m: &Measured| m.process_cpu.as_secs_f64() / m.elapsed.as_secs_f64();
    println!();
    println!(
        "| path | results/s | MB/s | server CPU ms per 1,000 results | server cores | process cores |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, m) in [
        ("link (AgentLink → ReportServer)", &link),
        ("bare quinn stream, same bytes", &bare),
    ] {
        println!(
            "| {name} | {:.0} | {:.1} | {:.3} | {:.3} | {:.2} | {:.2} |",
            m.results_per_sec(),
            m.results_per_sec() * bytes_per_result / 1e6,
            m.server_cpu_ms_per_1000(),
            m.agents_cpu_ms_per_1000(),
            cores(m),
            process(m),
        );
    }
    println!();
    println!(
        "link / bare = {:.0} % of the results rate",
        100.0 * link.results_per_sec() / bare.results_per_sec()
    );
}
