//! The ICMP engine: core's [`IcmpPinger`] over one socket per address family, shared by every
//! probe of the process (fping's design, not the Go system's socket per target per probe).
//!
//! Per family there is one thread (`scheduler`), which owns the socket and the in-flight table
//! (`flight`): it paces sends through a token bucket so thousands of targets do not
//! burst-flood the socket, reads replies with their kernel receive stamps (`SO_TIMESTAMPNS`),
//! classifies them (`packet`), and expires each packet `reply_timeout` after it left (a lost
//! packet never holds its probe for the whole probe timeout). It works in batches
//! (`sendmmsg`, `recvmmsg`, at most one wake-up per `batch_window` while busy), because at
//! thousands of echoes per second wake-ups, not packets, are what an engine pays for. A probe
//! completes, and its `ping` future returns, as soon as every packet it sent is answered,
//! refused by an ICMP error, or expired.
//!
//! Matching: a reply must carry our engine token, a running probe's id and a packet index in
//! its payload, come from that probe's address with that packet's sequence number (and, on raw
//! sockets, our identifier, which a kernel filter (`filter`) checks before we read anything).
//! Our own requests (seen by raw sockets on loopback), duplicates and other processes'
//! traffic are ignored.
//!
//! Path traces (`trace`, [`IcmpTracer`], port `PathTracer`) do not use this engine's
//! sockets: each trace opens its own.
//!
//! Timing: RTT = (monotonic time at reading − monotonic send time) − (wall time at reading −
//! kernel receive stamp). This uses the kernel stamp, so thread wake-up latency and batching
//! do not count, while a wall-clock step between send and receive cannot corrupt the result.
//! A packet's send time is taken just before the `sendmmsg` that carries it, plus its share of
//! that call's duration by its place in the batch.

mod filter;
mod flight;
pub(crate) mod packet;
mod scheduler;
mod socket;
mod trace;

use std::io;
use std::net::IpAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use probermesh_core::model::IcmpSettings;
use probermesh_core::ports::{EchoSeries, IcmpPinger, PingError};
use tokio::sync::oneshot;

use packet::Family;
use scheduler::{Scheduler, Start, Waker};
use socket::IcmpSocket;
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
    /// Most requests sent back to back before pacing applies (at least a `batch_window` of
    /// `max_packets_per_second`).
    pub max_burst: u32,
    /// The engine's timer slack: while busy its thread wakes at most once per window, sends
    /// every packet due within it at once (up to one window early) and reads every reply
    /// queued meanwhile (their kernel stamps keep their RTTs exact).
    pub batch_window: Duration,
}

impl Default for IcmpEngineConfig {
    fn default() -> Self {
        Self {
            socket_mode: SocketMode::Auto,
            reply_timeout: Duration::from_secs(2),
            max_packets_per_second: 50_000,
            max_burst: 64,
            batch_window: Duration::from_millis(2),
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
        Ok(self.family_engine(Family::of(addr))?.kind)
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
        engine.waker.wake();
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

/// The thread of one family, and how to reach it.
#[derive(Debug)]
struct FamilyEngine {
    kind: SocketKind,
    commands: mpsc::Sender<StartProbe>,
    waker: Arc<Waker>,
}

impl Drop for FamilyEngine {
    fn drop(&mut self) {
        // The thread ends probes in flight with an error and exits.
        self.waker.stop();
    }
}

impl FamilyEngine {
    fn start(family: Family, config: IcmpEngineConfig) -> Result<Arc<Self>, OpenError> {
        let mut random = [0u8; 10];
        getrandom::fill(&mut random).map_err(|e| OpenError::Other(io::Error::other(e)))?;
        let [t0, t1, t2, t3, t4, t5, t6, t7, i0, i1] = random;
        let identifier = u16::from_be_bytes([i0, i1]);
        let socket = IcmpSocket::open_for_engine(
            family,
            config.socket_mode,
            IcmpSettings::DEFAULT_TTL,
            identifier,
        )?;
        let kind = socket.kind();
        let waker = Arc::new(Waker::new()?);
        let (commands, inbox) = mpsc::channel();
        let name = match family {
            Family::V4 => "icmp4",
            Family::V6 => "icmp6",
        };
        let start = Start {
            socket,
            family,
            token: u64::from_be_bytes([t0, t1, t2, t3, t4, t5, t6, t7]),
            identifier,
            config,
            commands: inbox,
            waker: Arc::clone(&waker),
        };
        thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || Scheduler::run(start))?;
        tracing::info!(family = name, ?kind, "ICMP socket open");
        Ok(Arc::new(Self {
            kind,
            commands,
            waker,
        }))
    }
}
