//! The ports: every way ProberMesh touches the outside world, as small async traits.
//!
//! Core performs no I/O. The agent and server drivers are written against these traits; the
//! `adapters` crate implements each one with real sockets (one adapter per port), and
//! `core::fake` implements each one in memory, recording what it was asked, for tests.
//!
//! Every trait is object-safe through `async_trait` and requires `Send + Sync`, so a driver can
//! hold `Arc<dyn Port>` and call it from several tasks at once; implementations synchronise
//! internally. A method that takes `&self` may be called concurrently.
//!
//! Failures follow one rule: a failed *probe* is data (a result with a failure), never an
//! `Err`; `Err` means the port itself could not do its job.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::link::{FromAgent, FromServer, ToAgent, TraceReport, TraceRequest};
use crate::model::http_module::IpProtocol;
use crate::model::{
    AgentId, AgentVersion, HttpModule, HttpResult, HttpUrl, IcmpFailure, IcmpResult, IcmpSettings,
    ProbeConfig, ProbeResult, UnixMillis,
};
use crate::snapshot::Snapshot;

// === DNS ===

/// Resolves host names to one address, timing the lookup (the `resolve` phase).
///
/// Implemented by the `dns` adapter with hickory-resolver (system configuration).
/// An `Err` means no usable address: the ICMP or HTTP probe then fails in its resolve phase,
/// which is data, and the time spent is still recorded.
#[async_trait::async_trait]
pub trait DnsResolver: Send + Sync {
    /// Resolves `host` to one address of the preferred family, or of the other family when
    /// the preference allows a fallback and the preferred one has none.
    async fn resolve(&self, host: &str, preference: IpPreference)
    -> Result<Resolution, DnsFailure>;
}

/// Which address family a lookup wants (blackbox's `preferred_ip_protocol` and
/// `ip_protocol_fallback`).
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct IpPreference {
    /// The family tried first.
    pub preferred: IpProtocol,
    /// Whether the other family may be used when the preferred one has no address.
    pub fallback: bool,
}

impl IpPreference {
    /// The preference an HTTP module asks for.
    #[must_use]
    pub fn of_module(module: &HttpModule) -> Self {
        Self {
            preferred: module.preferred_ip_protocol,
            fallback: module.ip_protocol_fallback,
        }
    }
}

impl Default for IpPreference {
    /// IPv4 first with fallback: the Go and blackbox defaults, also used for ICMP targets.
    fn default() -> Self {
        Self {
            preferred: IpProtocol::Ip4,
            fallback: true,
        }
    }
}

/// A successful lookup.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct Resolution {
    /// The address chosen.
    pub addr: IpAddr,
    /// How long the lookup took.
    pub elapsed: Duration,
}

/// A failed lookup. The time spent is kept: the resolve phase is recorded even on failure.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("resolving failed ({kind}) after {elapsed:?}: {detail}")]
pub struct DnsFailure {
    /// What went wrong.
    pub kind: DnsFailureKind,
    /// How long the attempt took.
    pub elapsed: Duration,
    /// The resolver's message, for the log (never a label).
    pub detail: String,
}

/// Why a lookup found no usable address.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum DnsFailureKind {
    /// The name does not exist (NXDOMAIN).
    NotFound,
    /// The name exists but has no address of an acceptable family.
    NoAddressOfFamily,
    /// The resolver did not answer in time.
    Timeout,
    /// Anything else (server failure, refused, malformed answer).
    Other,
}

impl DnsFailureKind {
    /// A stable short name for logs.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not found",
            Self::NoAddressOfFamily => "no address of the family",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for DnsFailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === ICMP ===

/// Sends one probe's series of ICMP echo requests to an address and collects the replies.
///
/// Implemented by the `icmp` adapter with socket2 (unprivileged ICMP datagram sockets where
/// `ping_group_range` allows them, raw sockets with CAP_NET_RAW otherwise).
/// Loss, even 100 %, is an `Ok` series; an `Err` means nothing could be measured at all.
#[async_trait::async_trait]
pub trait IcmpPinger: Send + Sync {
    /// Sends `settings.module.packet_count` echoes to `addr`, `settings.module.interval` apart,
    /// and returns within `settings.timeout`.
    async fn ping(&self, addr: IpAddr, settings: &IcmpSettings) -> Result<EchoSeries, PingError>;
}

/// Traces the path to an address: probes with rising TTLs, several rounds, and what answered
/// at each TTL ([`crate::link::TraceReport`]).
///
/// Implemented by the `icmp` adapter's tracer over the same ICMP permission the pinger uses.
/// It never fails as a call: a trace that could not run, or stopped short, is a report with
/// `error` set and the hops measured so far.
#[async_trait::async_trait]
pub trait PathTracer: Send + Sync {
    /// Runs `request` and reports what every TTL up to the destination answered.
    async fn trace(&self, request: &TraceRequest) -> TraceReport;
}

/// What one series of echoes measured.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct EchoSeries {
    /// Echo requests actually sent.
    pub packets_sent: u32,
    /// Round-trip times of the distinct replies (duplicates excluded), in arrival order.
    pub rtts: Vec<Duration>,
    /// ICMP errors (unreachable, time exceeded) received instead of replies; each one is a
    /// lost echo. For the log and for path tools; not a metric label.
    pub errors: Vec<EchoError>,
}

/// An ICMP error that a router or the target sent back about one of our echo requests.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct EchoError {
    /// Who sent the error (a router on the path, or the target).
    pub from: IpAddr,
    /// What it said.
    pub kind: EchoErrorKind,
}

/// The ICMP error types a prober reports (RFC 792 and RFC 4443 numbering is in `code`).
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum EchoErrorKind {
    /// Destination unreachable (ICMPv4 type 3, ICMPv6 type 1), with its code.
    Unreachable {
        /// The ICMP code (net, host, port, administratively prohibited, ...).
        code: u8,
    },
    /// Time (hop limit) exceeded in transit (ICMPv4 type 11, ICMPv6 type 3).
    TimeExceeded,
    /// Any other ICMP error about our echo (packet too big, parameter problem, ...).
    Other {
        /// The ICMP type.
        icmp_type: u8,
        /// The ICMP code.
        code: u8,
    },
}

impl fmt::Display for EchoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            EchoErrorKind::Unreachable { code } => {
                write!(
                    f,
                    "destination unreachable (code {code}) from {}",
                    self.from
                )
            }
            EchoErrorKind::TimeExceeded => write!(f, "time exceeded from {}", self.from),
            EchoErrorKind::Other { icmp_type, code } => {
                write!(f, "ICMP type {icmp_type} code {code} from {}", self.from)
            }
        }
    }
}

impl EchoSeries {
    /// A series with no reply: 100 % loss.
    #[must_use]
    pub fn lost(packets_sent: u32) -> Self {
        Self {
            packets_sent,
            ..Self::default()
        }
    }

    /// The probe result, with `resolve` spent resolving the target first.
    #[must_use]
    pub fn to_result(&self, resolve: Duration) -> IcmpResult {
        IcmpResult::measured(resolve, self.packets_sent, &self.rtts)
    }
}

/// Why no echo could be sent.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum PingError {
    /// The agent may not open an ICMP socket.
    #[error("not permitted to send ICMP: {how_to_fix}")]
    Permission {
        /// What the operator can do about it (grant CAP_NET_RAW, widen `ping_group_range`).
        how_to_fix: String,
    },
    /// Sending failed (no route, socket error).
    #[error("sending ICMP echo failed: {detail}")]
    Send {
        /// The operating system's message, for the log.
        detail: String,
    },
}

impl PingError {
    /// The failure recorded in the probe result.
    #[must_use]
    pub fn failure(&self) -> IcmpFailure {
        match self {
            Self::Permission { .. } => IcmpFailure::Permission,
            Self::Send { .. } => IcmpFailure::Send,
        }
    }
}

// === HTTP ===

/// Runs one HTTP probe of a URL (all redirect hops) with per-phase timing, as blackbox's
/// `http` prober does.
///
/// Implemented by the `http` adapter with hyper-util (resolving through a [`DnsResolver`] and
/// dialling itself so it can time every phase).
/// It cannot fail: every failure, timeout included, is an [`HttpResult`] with a failure.
#[async_trait::async_trait]
pub trait HttpProber: Send + Sync {
    /// Probes `url` with `module`, giving up after `timeout` in total.
    async fn probe(&self, url: &HttpUrl, module: &HttpModule, timeout: Duration) -> HttpResult;
}

// === agent ↔ server link ===

/// The agent's side of its link to the server, in domain terms ([`crate::link`]).
///
/// Implemented by the `link` adapter with quinn (TLS 1.3, token-authenticated agents). The
/// adapter owns the connection: it says `Hello`, reconnects with backoff on its own, converts
/// and validates every message with `core::wire`, and delivers results reliably (see
/// [`crate::delivery`]). What to say and when (heartbeats, pool requests, refusals) is the
/// agent's business (`core::agent::AgentState`). Every method takes `&self`: implementations
/// synchronise internally, so an agent can enqueue, send and receive from several tasks.
#[async_trait::async_trait]
pub trait ServerLink: Send + Sync {
    /// Hands probe results over for delivery. Never waits and never fails: while the server is
    /// unreachable they are buffered (bounded; the oldest go first when full, counted), and
    /// they are resent after every reconnect until the server acknowledges them.
    fn enqueue_results(&self, results: Vec<ProbeResult>);

    /// Sends one control message (anything but `Results`, which go through
    /// [`Self::enqueue_results`] and are refused here with [`LinkError::Protocol`]) on the
    /// current connection; `Ok` means it was handed to the transport.
    /// [`LinkError::Disconnected`] while there is no connection (control messages are not
    /// buffered).
    async fn send(&self, msg: FromAgent) -> Result<(), LinkError>;

    /// Waits for the next word from the server: `Welcomed` at every (re)connection, then its
    /// messages (acknowledgements stay in the link) and `InvalidPool` for a pool this agent
    /// cannot accept. An `Err` reports one failed connection or attempt (refused, TLS, lost);
    /// the link keeps reconnecting, so the caller just calls `recv` again.
    async fn recv(&self) -> Result<FromServer, LinkError>;

    /// Waits until every result handed over is acknowledged, or `timeout` has passed (the
    /// server may be away); whether everything was acknowledged. A graceful stop calls it
    /// before [`Self::close`].
    async fn drain(&self, timeout: Duration) -> bool;

    /// Closes the link cleanly; results not acknowledged yet are lost with the process.
    async fn close(&self);

    /// Results the server has acknowledged over this link's life (a count that only grows):
    /// how a new version proves itself during its probation.
    fn acknowledged_results(&self) -> u64;
}

/// A target pool as an agent received it, validated into domain types.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ReceivedPool {
    /// The server's revision of the pool.
    pub revision: u64,
    /// The pool's blocks.
    pub configs: Arc<Vec<ProbeConfig>>,
}

// === clock ===

/// The wall clock, for a driver: core never reads one (every function takes `now`), and a
/// driver that reads it through this port runs in a test's virtual time.
pub trait Clock: Send + Sync {
    /// Now, in Unix milliseconds.
    fn now(&self) -> UnixMillis;
}

/// The server's side of every agent link: connection events in, messages out, in domain
/// terms ([`crate::link`]) whatever protocol version each agent speaks.
///
/// Implemented by the `link` adapter with quinn; the adapter authenticates each agent,
/// reports the address it sees it connect from, converts and validates every message with
/// `core::wire` (an invalid one closes that connection), and handles result batches: a
/// batch is acknowledged to its agent when `next_event` hands it out, and a batch that agent
/// instance already delivered (a resend after a reconnect) is acknowledged again but not
/// handed out (see [`crate::delivery`]).
#[async_trait::async_trait]
pub trait ReportSource: Send + Sync {
    /// Waits for the next connection event; `None` once the source is closed for good
    /// (the server is shutting down). The handshake is never a `Message`: it is `Connected`.
    async fn next_event(&self) -> Option<LinkEvent>;

    /// Sends one message to the agent on `connection` (for example its pool whenever the pool
    /// changes). An `Err` concerns that connection only.
    async fn send_to(&self, connection: ConnectionId, msg: ToAgent) -> Result<(), LinkError>;

    /// Closes `connection` for a protocol violation, telling the agent `reason`; its
    /// `Disconnected` event follows.
    fn close(&self, connection: ConnectionId, reason: &str);

    /// Stops taking connections and closes every one cleanly (agents keep what was not
    /// acknowledged, for the next server); `next_event` answers `None` once the events before
    /// are handed out.
    async fn shutdown(&self);

    /// Result batches sent again by agents after a reconnect and recognised (acknowledged,
    /// not handed out), since the start.
    fn duplicate_batches(&self) -> u64;
}

/// Identifies one agent connection on the server, for as long as it lasts (never reused
/// within a process).
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection#{}", self.0)
    }
}

/// What happens on the server's side of the agent links, in order per connection:
/// one `Connected`, any number of `Message`s, one `Disconnected`.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkEvent {
    /// An agent connected and authenticated.
    Connected {
        /// The new connection.
        connection: ConnectionId,
        /// The agent, as it introduced itself.
        agent: AgentId,
        /// The version it runs.
        version: AgentVersion,
        /// The address the server sees it connect from (its public IP, decision 12).
        observed_addr: SocketAddr,
        /// Its protocol version and what it takes beyond probing.
        capabilities: crate::link::Capabilities,
        /// The agent process (`instance_id` of its hello): a new one after every restart.
        instance: u64,
    },
    /// An agent sent a message.
    Message {
        /// The connection it came on.
        connection: ConnectionId,
        /// The agent of that connection.
        agent: AgentId,
        /// The message, validated.
        message: FromAgent,
    },
    /// A connection ended, cleanly or not.
    Disconnected {
        /// The connection that ended.
        connection: ConnectionId,
        /// The agent of that connection.
        agent: AgentId,
    },
}

/// Why a link operation failed.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum LinkError {
    /// The link is closed (or was never open).
    #[error("the link is disconnected")]
    Disconnected,
    /// The peer refused us (authentication failed, version not supported).
    #[error("the peer refused the connection: {reason}")]
    Refused {
        /// The peer's stated reason.
        reason: String,
    },
    /// The peer sent something we cannot decode or did not expect.
    #[error("protocol violation: {detail}")]
    Protocol {
        /// What was wrong.
        detail: String,
    },
    /// The transport failed (network, TLS, timeout).
    #[error("link I/O failed: {detail}")]
    Io {
        /// The transport's message.
        detail: String,
    },
}

// === metrics ===

/// Exposes the server's series to Prometheus.
///
/// Implemented by the `metrics` adapter with the `prometheus` crate's encoder. The server's
/// driver publishes the settled part of each window once ([`Self::publish`], the expensive
/// one: every pair and URL) and renders the live part at every scrape ([`Self::scrape`]).
pub trait MetricsExporter: Send + Sync {
    /// Replaces the published settled series with `settled`.
    fn publish(&self, settled: &Snapshot);

    /// The scrape body: the published series followed by `live`, rendered now.
    fn scrape(&self, live: &Snapshot) -> Vec<u8>;
}

// === stores ===

/// What a [`Store`] keeps, one record of each kind. Each kind has its own size limit; its
/// bytes are a `core::wire` format, so a store never interprets them.
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub enum Record {
    /// The results of a stopped server's unsettled windows, for the next server
    /// (`core::wire::handoff`).
    OpenWindows,
    /// The book of remote tasks: who was sent what, so that a restarted server sends no task
    /// twice (`core::wire::task_book`).
    Tasks,
    /// The rollout under way (or the last one): a restarted server resumes it
    /// (`core::wire::upgrade_book`).
    Upgrade,
}

impl Record {
    /// The record's name (its file name without extension in the file store).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::OpenWindows => "open-windows",
            Self::Tasks => "tasks",
            Self::Upgrade => "upgrade",
        }
    }

    /// The largest record of this kind read or written, in bytes. A store checks a record's
    /// length against it before reading any of it.
    #[must_use]
    pub const fn max_bytes(self) -> u64 {
        match self {
            // Derived from the server's limits: two windows of 2 million results each, 256
            // bytes a result on average (1,024,000,000 bytes); see
            // `wire::handoff::MAX_OPEN_WINDOWS_BYTES`.
            Self::OpenWindows => crate::wire::handoff::MAX_OPEN_WINDOWS_BYTES,
            Self::Tasks => crate::wire::task_book::MAX_TASK_BOOK_BYTES,
            Self::Upgrade => crate::wire::upgrade_book::MAX_UPGRADE_BOOK_BYTES,
        }
    }

    /// Why a record of this kind is no larger than [`Self::max_bytes`], for messages.
    #[must_use]
    pub const fn max_bytes_reason(self) -> &'static str {
        match self {
            Self::OpenWindows => {
                "2 unsettled windows × 2,000,000 results × 256 bytes a result, the most a \
                 stopping server writes"
            }
            Self::Tasks => {
                "1,024 tasks and 100,000 agent runs at most, with 64 KiB commands, the most a \
                 server keeps"
            }
            Self::Upgrade => "one rollout of at most 100,000 agents, with their reasons",
        }
    }
}

/// Keeps records across restarts.
///
/// Implemented by the `store` adapter with one file per record in a data directory: a write
/// is atomic (a reader sees the old record or the new one, never a mix, even after a crash),
/// records are readable by the owner only, and a record over its size limit is neither
/// written nor read. `core::fake::MemoryStore` keeps them in memory.
pub trait Store: Send + Sync {
    /// The record, or `None` when there is none.
    ///
    /// # Errors
    /// [`StoreError`] when it exists but cannot be read (or is over its limit).
    fn read(&self, record: Record) -> Result<Option<Vec<u8>>, StoreError>;

    /// Replaces the record with `bytes`, atomically.
    ///
    /// # Errors
    /// [`StoreError`] when it cannot be written; the previous record stays.
    fn write(&self, record: Record, bytes: &[u8]) -> Result<(), StoreError>;

    /// Removes the record (none is fine).
    ///
    /// # Errors
    /// [`StoreError`] when it exists and cannot be removed.
    fn remove(&self, record: Record) -> Result<(), StoreError>;

    /// Moves a damaged record out of the way, kept for a post-mortem and never read again;
    /// says where it went.
    ///
    /// # Errors
    /// [`StoreError`] when it cannot be moved.
    fn set_aside(&self, record: Record) -> Result<String, StoreError>;
}

/// Why a store operation failed: the operation, where, and the cause.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("{operation} {location}: {cause}")]
pub struct StoreError {
    /// What was tried (`reading`, `writing`, `removing`, `moving aside`).
    pub operation: &'static str,
    /// Where (a file's path).
    pub location: String,
    /// The cause.
    pub cause: String,
}

// === tasks ===

/// Runs a task's command on the agent.
///
/// Implemented by the `task_runner` adapter with a child process per run: its own process
/// group, a cleared environment (`PATH` and the locale kept), stdin closed, stdout and stderr
/// captured each up to the run's limit, the whole group killed at the timeout and always
/// reaped. `core::fake::FakeTaskRunner` answers from a script.
#[async_trait::async_trait]
pub trait TaskRunner: Send + Sync {
    /// Runs `run` to its end. Never fails: a program that cannot start is an output with no
    /// exit code and the reason in `stderr`.
    async fn run(&self, run: crate::task::TaskRun) -> crate::link::TaskOutput;
}

/// Keeps what tasks did on the server: per finished run the Go result file
/// (`<region>_<ip>_<YYYY-MM-DD_HH-MM-SS>`) and a JSON record, written atomically; the audit
/// log; retention by age and total size.
///
/// Implemented by the `task_archive` adapter over `-server.task.meta.dir`;
/// `core::fake::MemoryTaskArchive` keeps them in memory.
pub trait TaskArchive: Send + Sync {
    /// Files one finished run. Two runs of one agent in the same second get two files.
    ///
    /// # Errors
    /// [`StoreError`] when it cannot be written (nothing half-written stays).
    fn file(&self, record: &crate::task::TaskRecord) -> Result<(), StoreError>;

    /// The runs of `task_id` filed so far (for `GET /-/task/<id>`), by agent.
    ///
    /// # Errors
    /// [`StoreError`] when they cannot be read.
    fn results(&self, task_id: u64) -> Result<Vec<crate::task::TaskRecord>, StoreError>;

    /// Appends one line to the audit log.
    ///
    /// # Errors
    /// [`StoreError`] when it cannot be written.
    fn audit(&self, entry: &crate::task::AuditEntry) -> Result<(), StoreError>;

    /// Removes the results older than the retention, then the oldest ones while the total
    /// size is over its limit; says how many files went.
    ///
    /// # Errors
    /// [`StoreError`] when the directory cannot be read.
    fn prune(&self, now: UnixMillis) -> Result<usize, StoreError>;
}

// === probe file ===

/// Where the server's probe-file blocks come from, at start and at every reload.
///
/// Implemented by the `probe_file` adapter (a YAML file on disk, parsed and validated by
/// `core::probe_file`); `core::fake::FakePoolSource` hands out what a test set.
pub trait PoolSource: Send + Sync {
    /// Reads the blocks now.
    ///
    /// # Errors
    /// [`PoolSourceError`] naming the source and, for a bad file, the line and field.
    fn load(&self) -> Result<Vec<ProbeConfig>, PoolSourceError>;

    /// What the source is, for logs (a file's path).
    fn describe(&self) -> String;
}

/// Why the probe-file blocks could not be read.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct PoolSourceError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_object_safe_and_shareable() {
        fn shareable<T: ?Sized + Send + Sync>() {}
        shareable::<dyn DnsResolver>();
        shareable::<dyn IcmpPinger>();
        shareable::<dyn HttpProber>();
        shareable::<dyn ServerLink>();
        shareable::<dyn ReportSource>();
        shareable::<dyn MetricsExporter>();
        shareable::<dyn Clock>();
        shareable::<dyn Store>();
        shareable::<dyn PoolSource>();
    }

    #[test]
    fn ping_errors_map_to_result_failures() {
        let permission = PingError::Permission {
            how_to_fix: "grant CAP_NET_RAW".into(),
        };
        assert_eq!(permission.failure(), IcmpFailure::Permission);
        assert!(permission.to_string().contains("CAP_NET_RAW"));
        let send = PingError::Send {
            detail: "no route".into(),
        };
        assert_eq!(send.failure(), IcmpFailure::Send);
    }

    #[test]
    fn a_lost_series_is_a_failed_measurement() {
        let result = EchoSeries::lost(64).to_result(Duration::from_millis(3));
        assert!(result.is_failed());
        assert_eq!(result.failure, None);
        assert_eq!(result.loss_percent(), Some(100.0));
        assert_eq!(result.resolve, Duration::from_millis(3));
    }

    #[test]
    fn ip_preference_follows_the_module() {
        let mut module = HttpModule::default();
        assert_eq!(IpPreference::of_module(&module), IpPreference::default());
        module.preferred_ip_protocol = IpProtocol::Ip6;
        module.ip_protocol_fallback = false;
        assert_eq!(
            IpPreference::of_module(&module),
            IpPreference {
                preferred: IpProtocol::Ip6,
                fallback: false
            }
        );
    }

    #[test]
    fn errors_say_what_happened() {
        let dns = DnsFailure {
            kind: DnsFailureKind::NoAddressOfFamily,
            elapsed: Duration::from_millis(12),
            detail: "only AAAA records".into(),
        };
        assert_eq!(
            dns.to_string(),
            "resolving failed (no address of the family) after 12ms: only AAAA records"
        );
        assert_eq!(ConnectionId(7).to_string(), "connection#7");
    }
}

// === upgrades ===

/// Why a step of an upgrade on the agent failed: the operation and what went wrong, in words
/// an operator reads as the agent's reason in `GET /-/upgrade`.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("{operation}: {reason}")]
pub struct InstallError {
    /// What was being done (`staging the binary`, `checking the signature`, …).
    pub operation: &'static str,
    /// What went wrong.
    pub reason: String,
}

/// Does the file work of an upgrade on the agent: the staging file beside the executable
/// (resumable), the checks of the whole binary, and the trial's commit marker.
///
/// Implemented by the `upgrade` adapter (`FileInstaller`); `core::fake::FakeInstaller` keeps
/// the bytes in memory.
#[async_trait::async_trait]
pub trait Installer: Send + Sync {
    /// Opens (or reopens, to resume) the staging file for `plan`: the bytes already in it.
    ///
    /// # Errors
    /// [`InstallError`] when there is nowhere to stage (a read-only directory, no space).
    async fn stage(
        &self,
        offer_id: u64,
        plan: &crate::link::UpgradePlan,
    ) -> Result<u64, InstallError>;

    /// Appends `bytes` at `offset` of the staging file: its length after.
    ///
    /// # Errors
    /// [`InstallError`] when `offset` is not the file's length or the write fails.
    async fn write(&self, offer_id: u64, offset: u64, bytes: &[u8]) -> Result<u64, InstallError>;

    /// Checks the whole binary: its SHA-256, its signature when this agent pins a release key,
    /// and that it reports `plan.version` when run with `version`.
    ///
    /// # Errors
    /// [`InstallError`] naming the check that failed; the staged binary is removed then.
    async fn check(
        &self,
        offer_id: u64,
        plan: &crate::link::UpgradePlan,
    ) -> Result<(), InstallError>;

    /// This process, the trial of a new version, passed its probation: tells the process that
    /// started it.
    ///
    /// # Errors
    /// [`InstallError`] when the marker cannot be written.
    async fn commit(&self, offer_id: u64) -> Result<(), InstallError>;
}
