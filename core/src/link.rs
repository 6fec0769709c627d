//! The agent↔server conversation in domain terms: what an agent tells its server and what a
//! server tells its agents after the handshake, whatever protocol version carries it.
//!
//! `core::wire` converts every protocol version's messages to and from these (and validates
//! what comes in); the link ports carry them, so the server's and the agent's logic never
//! sees a DTO. The handshake (`Hello`, `Welcome`, `Refused`) belongs to the link; what it
//! tells the other side is [`Capabilities`].
//!
//! Tasks, upgrades, binary chunks and traces travel only over protocol v2: converting one
//! to v1 is an error (`core::wire`), and a server sends them only to agents whose
//! [`Capabilities`] say they take them.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::matcher::MatchOp;
use crate::model::{ProbeConfig, ProbeResult, UnixMillis};

/// What one side of a link said it speaks in its handshake: the protocol version of the
/// connection and, from v2 on, the optional features it takes. A v1 peer has none.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Capabilities {
    /// The protocol version of the connection (1 or 2).
    pub protocol_version: u16,
    /// The features, by their wire names; names this build does not know are kept (they
    /// cost nothing) but never acted on.
    pub features: BTreeSet<String>,
}

/// The features a peer may name in its handshake.
pub mod feature {
    /// The agent runs tasks (`-agent.task`): only then does a server send it any.
    pub const TASK: &str = "task";
    /// The agent installs upgrades the server offers, over binary chunks.
    pub const UPGRADE: &str = "upgrade";
    /// The agent runs path traces on request.
    pub const TRACE: &str = "trace";
}

impl Capabilities {
    /// A v1 peer: nothing beyond probing.
    #[must_use]
    pub fn v1() -> Self {
        Self {
            protocol_version: 1,
            features: BTreeSet::new(),
        }
    }

    /// Whether the peer named `feature` (one of [`feature`]).
    #[must_use]
    pub fn has(&self, feature: &str) -> bool {
        self.features.contains(feature)
    }
}

/// An ed25519 signature (RFC 8032), over the bytes the signing party defines (for a task:
/// `core::wire`'s canonical task bytes).
#[derive(Clone, Copy, Eq, Hash, PartialEq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature(")?;
        for byte in &self.0[..4] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "…)")
    }
}

/// One task as the agent runs it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TaskSpec {
    /// The server's task id (an agent runs each id at most once).
    pub id: u64,
    /// The command line.
    pub command: String,
    /// The command is killed after this long.
    pub timeout: Duration,
    /// At most this many bytes of stdout and of stderr are kept, each.
    pub output_limit_bytes: usize,
    /// An agent does not start the task after this instant (a task queued behind a long
    /// disconnection is stale).
    pub expires_at: UnixMillis,
    /// The region operator the operator chose (`=`, `!=`, `=~`, `!~`); an agent whose region
    /// it does not select refuses the task (signed, the server cannot widen it).
    pub region_op: MatchOp,
    /// The region pattern the operator chose.
    pub region_pattern: String,
    /// The operator's signature, checked by agents that pin a task key.
    pub signature: Option<Signature>,
}

/// What a task did.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct TaskOutput {
    /// The exit code; `None` when the command was killed by a signal, timed out or never
    /// started.
    pub exit_code: Option<i32>,
    /// Captured standard output (at most the limit).
    pub stdout: Vec<u8>,
    /// Captured standard error (at most the limit); when the command could not start, the
    /// reason.
    pub stderr: Vec<u8>,
    /// Whether either stream was cut at the limit.
    pub truncated: bool,
    /// Whether the command was killed at the timeout.
    pub timed_out: bool,
    /// How long it ran.
    pub duration: Duration,
}

/// An upgrade the server offers: the binary itself comes over the link in chunks the agent
/// asks for ([`FromAgent::ChunkRequest`], [`ToAgent::BinaryChunk`]).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct UpgradePlan {
    /// The version being installed.
    pub version: String,
    /// The binary's length.
    pub size_bytes: u64,
    /// The SHA-256 digest the whole binary must have.
    pub sha256: [u8; 32],
    /// The release's minisign signature (the `.minisig` file's text), checked by agents that
    /// pin a release key.
    pub signature: Option<String>,
    /// Install even when the version is not newer than the running one (the request's
    /// `force`): each agent of a rollout is offered it once.
    pub force: bool,
}

impl UpgradePlan {
    /// The expected digest in lowercase hex.
    #[must_use]
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// How a trace probes.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum TraceProtocol {
    /// ICMP echo requests with rising TTLs.
    Icmp,
    /// UDP datagrams.
    Udp,
    /// TCP SYNs.
    Tcp,
}

/// A path trace the server asks an agent for.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TraceRequest {
    /// Identifies the report.
    pub id: u64,
    /// Where to trace to.
    pub target: IpAddr,
    /// How.
    pub protocol: TraceProtocol,
    /// The highest TTL tried.
    pub max_hops: u8,
    /// Probes per hop.
    pub rounds: u16,
}

/// What a trace found at one TTL.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TraceHop {
    /// The TTL.
    pub ttl: u8,
    /// Who answered at this TTL (`None`: nobody did).
    pub addr: Option<IpAddr>,
    /// Probes sent.
    pub sent: u32,
    /// Answers received.
    pub received: u32,
    /// The fastest, mean and slowest round trip of the answers (`None` without answers).
    pub rtt_best: Option<Duration>,
    /// Mean round trip.
    pub rtt_mean: Option<Duration>,
    /// Slowest round trip.
    pub rtt_worst: Option<Duration>,
    /// Population standard deviation of the answers' round trips (`None` without answers).
    pub rtt_stddev: Option<Duration>,
}

/// A finished trace.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TraceReport {
    /// The request it answers.
    pub id: u64,
    /// Where it traced to.
    pub target: IpAddr,
    /// The hops, by TTL.
    pub hops: Vec<TraceHop>,
    /// Why the trace stopped short, if it did.
    pub error: Option<String>,
}

/// What an agent sends its server.
#[derive(Clone, Debug, PartialEq)]
pub enum FromAgent {
    /// The agent is alive (`prober_agent_is_alive`); its wall clock when it sent this.
    Heartbeat {
        /// The agent's clock.
        sent_at: UnixMillis,
    },
    /// Probe results, numbered per agent process for acknowledgement and deduplication.
    Results {
        /// The batch's sequence number.
        seq: u64,
        /// The results, validated, each with the agent of the connection as its source.
        results: Vec<ProbeResult>,
    },
    /// Asks for the target pool unless the agent holds `known_revision` (0: none).
    PoolRequest {
        /// The revision the agent holds.
        known_revision: u64,
    },
    /// The agent refused the pool with this revision and keeps probing its previous one.
    PoolRefused {
        /// The refused revision.
        revision: u64,
        /// Where in the pool (`configs[2].http.method`).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// What a task did.
    TaskResult {
        /// The task it answers.
        task_id: u64,
        /// Its outcome.
        output: TaskOutput,
    },
    /// The agent did not run the task, and why (no opt-in, the command policy, the signature,
    /// the region selector, expiry, a full queue) (v2).
    TaskRefused {
        /// The task it answers.
        task_id: u64,
        /// Why.
        reason: String,
    },
    /// Where an upgrade stands.
    UpgradeStatus {
        /// The offer it reports on.
        offer_id: u64,
        /// The version being installed.
        version: String,
        /// The state.
        state: UpgradeState,
    },
    /// Asks for the offered binary's bytes from `offset` on (v2).
    ChunkRequest {
        /// The offer.
        offer_id: u64,
        /// The first byte wanted.
        offset: u64,
    },
    /// A finished trace (v2).
    TraceResult(TraceReport),
}

impl FromAgent {
    /// The message's kind, for logs (never its content).
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Heartbeat { .. } => "Heartbeat",
            Self::Results { .. } => "Results",
            Self::PoolRequest { .. } => "PoolRequest",
            Self::PoolRefused { .. } => "PoolRefused",
            Self::TaskResult { .. } => "TaskResult",
            Self::TaskRefused { .. } => "TaskRefused",
            Self::UpgradeStatus { .. } => "UpgradeStatus",
            Self::ChunkRequest { .. } => "ChunkRequest",
            Self::TraceResult(_) => "TraceResult",
        }
    }
}

/// Where an upgrade stands on an agent.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum UpgradeState {
    /// The binary is being downloaded.
    Downloading {
        /// Bytes received so far (0 from a v1 agent, which does not say).
        received_bytes: u64,
    },
    /// The download matched the offered digest (and signature).
    Verified,
    /// The running executable was replaced; the new version starts next.
    Applied,
    /// The upgrade was abandoned; the running version stays.
    Failed {
        /// Why.
        reason: String,
    },
    /// The new version runs and passed its probation (v2).
    Committed,
    /// The new version failed its probation and the previous one was restored (v2).
    RolledBack {
        /// Why.
        reason: String,
    },
}

/// What a server sends one of its agents.
#[derive(Clone, Debug, PartialEq)]
pub enum ToAgent {
    /// The agent's target pool (shared between the agents of a region).
    Pool {
        /// Changes with every change of the pool.
        revision: u64,
        /// The blocks.
        configs: Arc<Vec<ProbeConfig>>,
    },
    /// The results batch `seq` is filed; the agent may forget it.
    Ack {
        /// The acknowledged batch.
        seq: u64,
    },
    /// A task to run (only on agents that opted in).
    Task(TaskSpec),
    /// A new agent binary to install (v2).
    UpgradeOffer {
        /// Identifies the status reports and the chunks.
        offer_id: u64,
        /// What to install.
        plan: UpgradePlan,
    },
    /// Bytes of an offered binary, answering a [`FromAgent::ChunkRequest`] (v2).
    BinaryChunk {
        /// The offer.
        offer_id: u64,
        /// Where in the binary `bytes` start.
        offset: u64,
        /// The bytes (at most `core::wire::MAX_CHUNK_LEN`).
        bytes: Arc<[u8]>,
    },
    /// A path trace to run (v2).
    Trace(TraceRequest),
}

impl ToAgent {
    /// The message's kind, for logs (never its content).
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Pool { .. } => "Pool",
            Self::Ack { .. } => "Ack",
            Self::Task(_) => "Task",
            Self::UpgradeOffer { .. } => "UpgradeOffer",
            Self::BinaryChunk { .. } => "BinaryChunk",
            Self::Trace(_) => "Trace",
        }
    }
}

/// What an agent's link reports from its server.
#[derive(Clone, Debug, PartialEq)]
pub enum FromServer {
    /// A connection passed the handshake (at every reconnection).
    Welcomed {
        /// The server's version.
        server_version: String,
        /// What the server speaks on this connection.
        capabilities: Capabilities,
        /// The address the server sees this agent connect from (its public IP, decision 12).
        observed_addr: std::net::SocketAddr,
    },
    /// A message (acknowledgements stay in the link, which delivers results reliably).
    Message(ToAgent),
    /// The server sent a pool this agent cannot accept (another version's settings): the
    /// agent keeps its previous one.
    InvalidPool {
        /// The refused revision.
        revision: u64,
        /// Where in the pool (`configs[2].http.method`).
        field: String,
        /// What is wrong.
        reason: String,
    },
}
