//! An unauthenticated QUIC Initial flood on loopback, for the link's denial-of-service tests
//! and the `link_flood` example: real Initials, each with a fresh connection ID, captured from
//! a quinn client and replayed from many 127.0.0.x source addresses by a thread that never
//! reads an answer, as a flood with spoofed sources looks to the server.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use probermesh_adapters::link::{AgentLink, ServerVerification, client_crypto};
use probermesh_core::ports::ServerLink;
use quinn::crypto::rustls::QuicClientConfig;

use super::link::{Recorded, results};

/// Connection attempts started at once while capturing.
const CAPTURE_BATCH: usize = 64;

/// Length of the header bytes before a long header's connection IDs: flags and version.
const LONG_HEADER_PREFIX_BYTES: usize = 5;

/// The destination connection ID of a QUIC Initial packet (long header, type 0), else `None`.
fn initial_dcid(datagram: &[u8]) -> Option<&[u8]> {
    let first = *datagram.first()?;
    if first & 0x80 == 0 || (first >> 4) & 0x03 != 0 {
        return None;
    }
    let len = usize::from(*datagram.get(LONG_HEADER_PREFIX_BYTES)?);
    datagram.get(LONG_HEADER_PREFIX_BYTES + 1..LONG_HEADER_PREFIX_BYTES + 1 + len)
}

/// `count` distinct client Initials (one per connection attempt, each with its own connection
/// ID), as a quinn client with the link's TLS configuration sends them. They are captured on
/// a local socket: nothing reaches a server.
pub async fn capture_initials(count: usize) -> Vec<Vec<u8>> {
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind the capture socket");
    // Room for a whole batch of Initials while this task is busy starting the next.
    let _ = socket2::SockRef::from(&sink).set_recv_buffer_size(4 * 1024 * 1024);
    sink.set_nonblocking(true).expect("non-blocking");
    let sink = tokio::net::UdpSocket::from_std(sink).expect("tokio socket");
    let sink_addr = sink.local_addr().expect("capture address");
    let crypto = client_crypto(&ServerVerification::PinnedSha256(
        probermesh_adapters::link::Sha256Fingerprint::of_der(b"never verified"),
    ))
    .expect("client crypto");
    let client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(crypto).expect("quic client config"),
    ));
    let endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    let mut seen = HashSet::new();
    let mut initials = Vec::with_capacity(count);
    let mut buf = vec![0u8; 2048];
    let mut last_progress = Instant::now();
    while initials.len() < count {
        assert!(
            last_progress.elapsed() < Duration::from_secs(30),
            "no Initial captured for 30 s ({} of {count})",
            initials.len()
        );
        let batch = (count - initials.len()).min(CAPTURE_BATCH);
        let attempts: Vec<_> = (0..batch)
            .map(|_| {
                endpoint
                    .connect_with(client.clone(), sink_addr, "localhost")
                    .expect("connect")
            })
            .collect();
        // Take what arrives; an Initial lost to a full buffer is made up by the next batch.
        let mut got = 0;
        while got < batch {
            let Ok(received) =
                tokio::time::timeout(Duration::from_millis(500), sink.recv(&mut buf)).await
            else {
                break;
            };
            let len = received.expect("recv");
            let datagram = &buf[..len];
            if let Some(dcid) = initial_dcid(datagram)
                && seen.insert(dcid.to_vec())
            {
                initials.push(datagram.to_vec());
                got += 1;
                last_progress = Instant::now();
            }
        }
        drop(attempts);
    }
    endpoint.close(0u32.into(), b"");
    initials
}

/// How fast a flood sends: a burst, then a steady rate.
#[derive(Clone, Copy, Debug)]
pub struct FloodPace {
    /// Initials sent first, at `burst_per_sec`.
    pub burst: usize,
    pub burst_per_sec: f64,
    /// The rate after the burst, until the Initials run out or the flood is stopped.
    pub steady_per_sec: f64,
}

/// A running flood; dropping it stops the sending thread.
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// Source addresses the flood sends from: 127.0.0.2 to 127.0.0.65, any port.
const SOURCES: u8 = 64;

impl Flood {
    /// Starts sending `initials` to `server`, each once, from `SOURCES` sockets in turn.
    pub fn start(server: SocketAddr, initials: Vec<Vec<u8>>, pace: FloodPace) -> Self {
        let sockets: Vec<UdpSocket> = (0..SOURCES)
            .map(|i| UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 0, 2 + i), 0)).expect("bind"))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let thread = {
            let stop = Arc::clone(&stop);
            let sent = Arc::clone(&sent);
            std::thread::spawn(move || {
                let start = Instant::now();
                let burst_secs = pace.burst as f64 / pace.burst_per_sec;
                for (i, initial) in initials.iter().enumerate() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let due_secs = if i < pace.burst {
                        i as f64 / pace.burst_per_sec
                    } else {
                        burst_secs + (i - pace.burst) as f64 / pace.steady_per_sec
                    };
                    let due = start + Duration::from_secs_f64(due_secs);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    // A full socket buffer drops the packet, as a congested network would.
                    let _ = sockets[i % sockets.len()].send_to(initial, server);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        Self {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    /// Initials sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops sending and waits for the thread; returns how many were sent.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.sent()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Whether a captured log line is the server's (the agents in the same process log too).
pub fn is_server_line(line: &str) -> bool {
    ["link::server:", "link::handshake:", "link::peer_log:"]
        .iter()
        .any(|target| line.contains(target))
}

/// A connected agent's deliveries during a flood: how long each batch took.
pub type Deliveries = Arc<Mutex<Vec<Duration>>>;

/// Delivers batch after batch of 100 results from `agent`, each acknowledged before the next,
/// recording how long each took, until the task is aborted. Result ids start at `first_id`.
pub fn keep_delivering(
    agent: Arc<AgentLink>,
    recorded: Recorded,
    first_id: u64,
) -> (Deliveries, tokio::task::JoinHandle<()>) {
    let took = Deliveries::default();
    let sink = Arc::clone(&took);
    let task = tokio::spawn(async move {
        let mut next = first_id;
        loop {
            let started = Instant::now();
            agent.enqueue_results(results(next..next + 100));
            next += 100;
            let done = |ids: Vec<u64>| {
                ids.iter()
                    .filter(|id| (first_id..next).contains(id))
                    .count()
            };
            let want = usize::try_from(next - first_id).expect("count");
            while done(recorded.result_ids()) < want || agent.stats().outbox.buffered_results > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sink.lock().expect("lock").push(started.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (took, task)
}
