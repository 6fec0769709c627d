//! The ICMP engine: core's [`IcmpPinger`] over one socket per address family, shared by every
//! probe of the process (fping's design, not the Go system's socket per target per probe).
//!
//! Per family there are two threads and one lock:
//! - the **scheduler** owns a time-ordered queue of sends and packet deadlines. It paces sends
//!   through a token bucket so thousands of targets do not burst-flood the socket, takes the
//!   send time just before `sendto`, and expires each packet `reply_timeout` after it left (a
//!   lost packet never holds its probe for the whole probe timeout);
//! - the **receiver** blocks in `recvmsg`, takes the kernel's receive timestamp
//!   (`SO_TIMESTAMPNS`), classifies the datagram (`packet`) and records it in the
//!   in-flight table (`flight`);
//! - a probe completes, and its `ping` future returns, as soon as every packet it sent is
//!   answered, refused by an ICMP error, or expired.
//!
//! Matching: a reply must carry our engine token, a running probe's id and a packet index in
//! its payload, come from that probe's address with that packet's sequence number (and, on raw
//! sockets, our identifier). Our own requests (seen by raw sockets on loopback), duplicates
//! and other processes' traffic are ignored.
//!
//! Path traces (`trace`, [`IcmpTracer`], port `PathTracer`) do not use this engine's
//! sockets: each trace opens its own.
//!
//! Timing: RTT = (monotonic time at wakeup − monotonic send time) − (wall time at wakeup −
//! kernel receive stamp). This uses the kernel stamp, so thread wakeup latency does not count,
//! while a wall-clock step between send and receive cannot corrupt the result.

mod flight;
pub(crate) mod packet;
mod scheduler;
mod socket;
mod trace;

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use probermesh_core::model::IcmpSettings;
use probermesh_core::ports::{EchoSeries, IcmpPinger, PingError};
use tokio::sync::oneshot;

use flight::{Flight, Matched, echo_error};
use packet::{Family, Incoming};
use scheduler::Scheduler;
use socket::{IcmpSocket, control_buffer};
pub use socket::{OpenError, SocketKind, SocketMode};
pub use trace::{IcmpTracer, IcmpTracerConfig, TraceError, local_host_name};

/// Engine-wide settings (per-probe settings come with each `ping`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct IcmpEngineConfig {
    /// Raw, datagram, or raw-then-datagram.
    pub socket_mode: SocketMode,
    /// How long to wait for each echo's reply before counting it lost (fping's `-t`, ping's
    /// `-W`); the probe's own timeout bounds it too.
    pub reply_timeout: Duration,
    /// Most echo requests sent per second by the whole engine (per family).
    pub max_packets_per_second: u32,
    /// Most requests sent back to back before pacing applies.
    pub max_burst: u32,
}

impl Default for IcmpEngineConfig {
    fn default() -> Self {
        Self {
            socket_mode: SocketMode::Auto,
            reply_timeout: Duration::from_secs(2),
            max_packets_per_second: 50_000,
            max_burst: 64,
        }
    }
}

/// The ICMP pinger of a process. Sockets open on first use of each family; dropping the engine
/// stops its threads and ends probes in flight with an error.
#[derive(Debug)]
pub struct IcmpEngine {
    config: IcmpEngineConfig,
    v4: Mutex<Option<Arc<FamilyEngine>>>,
    v6: Mutex<Option<Arc<FamilyEngine>>>,
}

impl IcmpEngine {
    /// An engine with `config`; nothing is opened yet.
    #[must_use]
    pub fn new(config: IcmpEngineConfig) -> Self {
        Self {
            config,
            v4: Mutex::new(None),
            v6: Mutex::new(None),
        }
    }

    /// Opens the socket of `addr`'s family now (rather than at the first probe), so a
    /// permission problem is reported at start-up. Returns the kind of socket in use.
    ///
    /// # Errors
    /// [`PingError::Permission`] with the fix, or [`PingError::Send`] for other failures.
    pub fn open_for(&self, addr: IpAddr) -> Result<SocketKind, PingError> {
        Ok(self.family_engine(Family::of(addr))?.socket.kind())
    }

    fn family_engine(&self, family: Family) -> Result<Arc<FamilyEngine>, PingError> {
        let slot = match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        };
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(engine) = slot.as_ref() {
            return Ok(Arc::clone(engine));
        }
        let engine = FamilyEngine::start(family, self.config).map_err(|error| match error {
            OpenError::NotPermitted { .. } => PingError::Permission {
                how_to_fix: error.to_string(),
            },
            OpenError::Other(_) => PingError::Send {
                detail: error.to_string(),
            },
        })?;
        *slot = Some(Arc::clone(&engine));
        Ok(engine)
    }
}

impl Default for IcmpEngine {
    fn default() -> Self {
        Self::new(IcmpEngineConfig::default())
    }
}

#[async_trait::async_trait]
impl IcmpPinger for IcmpEngine {
    async fn ping(&self, addr: IpAddr, settings: &IcmpSettings) -> Result<EchoSeries, PingError> {
        let engine = self.family_engine(Family::of(addr))?;
        let (done, result) = oneshot::channel();
        let start = StartProbe {
            addr,
            count: settings.module.packet_count,
            interval: settings.module.interval,
            payload_len: usize::try_from(settings.module.payload_size).unwrap_or(usize::MAX),
            ttl: settings.ttl,
            timeout: settings.timeout,
            done,
        };
        engine.commands.send(start).map_err(|_| stopped())?;
        result.await.unwrap_or_else(|_| Err(stopped()))
    }
}

pub(super) fn stopped() -> PingError {
    PingError::Send {
        detail: "the ICMP engine stopped".to_owned(),
    }
}

/// A request to run one probe.
#[derive(Debug)]
pub(super) struct StartProbe {
    pub(super) addr: IpAddr,
    pub(super) count: u32,
    pub(super) interval: Duration,
    pub(super) payload_len: usize,
    pub(super) ttl: u8,
    pub(super) timeout: Duration,
    pub(super) done: oneshot::Sender<Result<EchoSeries, PingError>>,
}

/// The socket, threads and in-flight table of one family.
#[derive(Debug)]
struct FamilyEngine {
    socket: Arc<IcmpSocket>,
    commands: mpsc::Sender<StartProbe>,
    stop: Arc<AtomicBool>,
}

impl Drop for FamilyEngine {
    fn drop(&mut self) {
        // The scheduler sees the channel close; the receiver sees this flag within its wakeup.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// State shared by the two threads of a family.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) socket: Arc<IcmpSocket>,
    flight: Mutex<Flight>,
    /// Monotonic zero of the `*_ns` times.
    epoch: Instant,
    /// Our payload token and (raw sockets) identifier.
    pub(super) token: u64,
    pub(super) identifier: u16,
    pub(super) family: Family,
    pub(super) stop: Arc<AtomicBool>,
}

impl Shared {
    pub(super) fn flight(&self) -> MutexGuard<'_, Flight> {
        self.flight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl FamilyEngine {
    fn start(family: Family, config: IcmpEngineConfig) -> Result<Arc<Self>, OpenError> {
        let socket = Arc::new(IcmpSocket::open(
            family,
            config.socket_mode,
            IcmpSettings::DEFAULT_TTL,
        )?);
        let mut random = [0u8; 10];
        getrandom::fill(&mut random).map_err(|e| OpenError::Other(io::Error::other(e)))?;
        let [t0, t1, t2, t3, t4, t5, t6, t7, i0, i1] = random;
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            socket: Arc::clone(&socket),
            flight: Mutex::new(Flight::default()),
            epoch: Instant::now(),
            token: u64::from_be_bytes([t0, t1, t2, t3, t4, t5, t6, t7]),
            identifier: u16::from_be_bytes([i0, i1]),
            family,
            stop: Arc::clone(&stop),
        });
        let (commands, inbox) = mpsc::channel();
        let name = match family {
            Family::V4 => "icmp4",
            Family::V6 => "icmp6",
        };
        let receiver = Arc::clone(&shared);
        thread::Builder::new()
            .name(format!("{name}-receive"))
            .spawn(move || receive_loop(&receiver))?;
        let scheduler = Scheduler::new(shared, config);
        thread::Builder::new()
            .name(format!("{name}-send"))
            .spawn(move || scheduler.run(&inbox))?;
        tracing::info!(family = name, kind = ?socket.kind(), "ICMP socket open");
        Ok(Arc::new(Self {
            socket,
            commands,
            stop,
        }))
    }
}

// === Receiving ===

fn receive_loop(shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut control = control_buffer();
    let has_ip_header = shared.socket.has_ip_header();
    let check_identifier = shared.socket.kind() == SocketKind::Raw;
    let v6 = shared.family == Family::V6;
    while !shared.stop.load(Ordering::Relaxed) {
        let received = match shared.socket.receive(&mut buf, &mut control) {
            Ok(received) => received,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "ICMP receive failed");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let now_ns = shared.now_ns();
        let kernel_lag = received
            .kernel_time
            .and_then(|stamp| SystemTime::now().duration_since(stamp).ok());
        let datagram = &buf[..received.len.min(buf.len())];
        match packet::classify(shared.family, has_ip_header, datagram) {
            Incoming::Reply {
                identifier,
                sequence,
                tag,
            } => {
                if tag.token != shared.token
                    || (check_identifier && identifier != shared.identifier)
                {
                    continue;
                }
                let matched = shared.flight().reply(
                    tag.probe_id,
                    tag.index,
                    received.from,
                    sequence,
                    now_ns,
                    kernel_lag,
                );
                if matched == Matched::Stray {
                    tracing::trace!(from = %received.from, sequence, "stray echo reply");
                }
            }
            Incoming::Error {
                icmp_type,
                code,
                original_destination,
                identifier,
                sequence,
                tag,
            } => {
                if check_identifier && identifier != shared.identifier {
                    continue;
                }
                let tag = tag
                    .filter(|tag| tag.token == shared.token)
                    .map(|tag| (tag.probe_id, tag.index));
                let error = echo_error(v6, icmp_type, code, received.from);
                shared
                    .flight()
                    .error(tag, original_destination, sequence, error);
            }
            Incoming::Ignored => {}
        }
    }
}
