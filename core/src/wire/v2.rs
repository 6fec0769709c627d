//! Protocol v2: the message enums agents and servers exchange once both speak v2.
//!
//! v2 changes only the messages; every payload DTO is v1's ([`ProbeResultV1`],
//! [`ProbeConfigV1`], [`IpAddrV1`], [`SocketAddrV1`], [`WireSecret`], [`RefusalV1`]), so a
//! probe result or a pool block has one encoding in both versions. The variants v1 already
//! had and v2 keeps unchanged have v1's index and fields, hence v1's bytes:
//! `Heartbeat`, `ResultBatch` (so [`super::ResultBatchRef`] encodes a v2 batch too),
//! `PoolRequest`, `TaskResult`, `PoolRefused`, `Refused`, `TargetPool` and `Ack`.
//!
//! The same rules as v1 hold (postcard is not self-describing, so the byte layout *is* the
//! schema): never reorder, remove or retype a field or a variant; no serde attribute that needs
//! a self-describing format. The first two fields of `Hello` (its variant index 0 and
//! `protocol_version`) are frozen for every version, so a server can read the version of any
//! hello before decoding the rest ([`super::decode_hello`]).

use serde::{Deserialize, Serialize};

use super::v1::{IpAddrV1, ProbeConfigV1, ProbeResultV1, RefusalV1, SocketAddrV1, WireSecret};

/// Everything a v2 agent sends to the server.
///
/// A closed enum: a new variant or field is a new protocol version, with its own enums.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub enum AgentMessageV2 {
    /// The first message of every connection: v1's `Hello` fields in v1's order, then the
    /// features the agent takes.
    Hello {
        /// The protocol version the agent offers (2).
        protocol_version: u16,
        /// The agent's own version (the `version` label).
        agent_version: String,
        /// The agent's resolved region.
        region: String,
        /// The address the agent reports (and is pinged at in dynamic discovery).
        ip: IpAddrV1,
        /// Random per process start, so the server can tell a reconnect from a second process.
        instance_id: u64,
        /// The shared authentication token.
        token: WireSecret,
        /// The optional features the agent takes (`crate::link::feature`), at most
        /// [`super::MAX_FEATURES`] names of at most [`super::MAX_FEATURE_LEN`] bytes; names the
        /// server does not know are ignored.
        features: Vec<String>,
    },
    /// Keeps the connection and the `prober_agent_is_alive` series alive (as in v1).
    Heartbeat {
        /// The agent's wall clock when it sent this, in Unix milliseconds.
        sent_at_ms: u64,
    },
    /// Probe results; the server answers [`ServerMessageV2::Ack`] with the same `seq` (as in
    /// v1, byte for byte).
    ResultBatch {
        /// Per-instance sequence number, for acknowledgement and deduplication.
        seq: u64,
        /// The results, at most [`super::MAX_RESULTS_PER_BATCH`].
        results: Vec<ProbeResultV1>,
    },
    /// Asks for the target pool unless the agent already has `known_revision` (as in v1).
    PoolRequest {
        /// The revision the agent holds (0 when it has none).
        known_revision: u64,
    },
    /// The outcome of a [`ServerMessageV2::Task`] (as in v1).
    TaskResult {
        /// The task this answers.
        task_id: u64,
        /// The command's exit code; `None` when it was killed by a signal or did not start.
        exit_code: Option<i32>,
        /// Whether the command was killed at its timeout.
        timed_out: bool,
        /// Captured standard output, at most [`super::MAX_TASK_OUTPUT_LEN`] bytes.
        stdout: Vec<u8>,
        /// Captured standard error, at most [`super::MAX_TASK_OUTPUT_LEN`] bytes.
        stderr: Vec<u8>,
        /// Whether stdout or stderr was cut.
        truncated: bool,
        /// Wall time the command ran, in milliseconds.
        duration_ms: u64,
    },
    /// Progress of a [`ServerMessageV2::UpgradeOffer`] (v2's states: not v1's bytes).
    UpgradeStatus {
        /// The offer this reports on.
        offer_id: u64,
        /// The version being installed, at most `MAX_TEXT_LEN` bytes.
        version: String,
        /// Where the upgrade stands.
        state: UpgradeStateV2,
    },
    /// The agent refused the [`ServerMessageV2::TargetPool`] with this revision and keeps
    /// probing its previous pool (as in v1).
    PoolRefused {
        /// The refused revision.
        revision: u64,
        /// Where in the pool (`configs[2].http.method`), at most `MAX_TEXT_LEN` bytes.
        field: String,
        /// What is wrong, at most `MAX_TEXT_LEN` bytes.
        reason: String,
    },
    /// Asks for the bytes of the offered binary from `offset` on; the server answers one
    /// [`ServerMessageV2::BinaryChunk`].
    ChunkRequest {
        /// The offer.
        offer_id: u64,
        /// The first byte wanted.
        offset: u64,
    },
    /// A finished path trace, answering a [`ServerMessageV2::Trace`].
    TraceResult {
        /// The request this answers.
        trace_id: u64,
        /// Where the trace went.
        target: IpAddrV1,
        /// The hops by TTL, at most [`super::MAX_TRACE_HOPS`].
        hops: Vec<TraceHopV2>,
        /// Why the trace stopped short, at most `MAX_TEXT_LEN` bytes.
        error: Option<String>,
    },
    /// The agent did not run a [`ServerMessageV2::Task`], and why.
    TaskRefused {
        /// The task this answers.
        task_id: u64,
        /// Why, at most `MAX_TEXT_LEN` bytes.
        reason: String,
    },
}

/// Everything a v2 server sends to an agent.
///
/// A closed enum: a new variant or field is a new protocol version, with its own enums.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub enum ServerMessageV2 {
    /// The answer to an accepted [`AgentMessageV2::Hello`].
    Welcome {
        /// The protocol version of the connection (2).
        protocol_version: u16,
        /// The server's version.
        server_version: String,
        /// The address the server sees the agent connect from (its public IP, decision 12).
        observed_addr: SocketAddrV1,
        /// The optional features the server offers, with the limits of the hello's.
        features: Vec<String>,
    },
    /// The answer to a rejected hello; the server closes the connection. Byte for byte v1's
    /// `Refused`, so an agent of any version can read it.
    Refused {
        /// Why.
        reason: RefusalV1,
    },
    /// The agent's target pool: v1's, then the contents of the files its blocks name.
    TargetPool {
        /// Increases with every change of the pool.
        revision: u64,
        /// The pool, at most [`super::MAX_CONFIGS_PER_POOL`] blocks.
        configs: Vec<ProbeConfigV1>,
        /// The `tls_config` files (`ca_file`, `cert_file`, `key_file`) the blocks name, as the
        /// server read them, at most [`MAX_POOL_FILES`]: the agent never opens such a path
        /// itself. (Bearer tokens and passwords read from files travel as inline values.)
        files: Vec<PoolFileV2>,
    },
    /// The server stored the [`AgentMessageV2::ResultBatch`] with this `seq` (as in v1).
    Ack {
        /// The acknowledged batch.
        seq: u64,
    },
    /// A shell command to run, sent only to agents that named the `task` feature.
    Task {
        /// Identifies the answer.
        task_id: u64,
        /// The command line, at most [`super::MAX_COMMAND_LEN`] bytes.
        command: String,
        /// Kill the command after this many milliseconds.
        timeout_ms: u64,
        /// Cut stdout and stderr each to this many bytes, at most
        /// [`super::MAX_TASK_OUTPUT_LEN`].
        output_limit_bytes: u32,
        /// Do not start the command after this instant, in Unix milliseconds.
        expires_at_ms: u64,
        /// The region operator the operator chose (`=`, `!=`, `=~`, `!~`).
        region_op: String,
        /// The region pattern, at most `MAX_TEXT_LEN` bytes.
        region_pattern: String,
        /// The operator's ed25519 signature over [`super::task_signing_bytes`], exactly
        /// [`super::TASK_SIGNATURE_LEN`] bytes when present (serde has no `[u8; 64]`).
        signature: Option<Vec<u8>>,
    },
    /// A new agent binary to install, sent only to agents that named the `upgrade` feature;
    /// its bytes follow in [`ServerMessageV2::BinaryChunk`]s the agent asks for.
    UpgradeOffer {
        /// Identifies the status reports and the chunks.
        offer_id: u64,
        /// The version offered, at most `MAX_TEXT_LEN` bytes.
        version: String,
        /// The binary's length.
        size_bytes: u64,
        /// The SHA-256 of the binary.
        sha256: [u8; 32],
        /// The release's minisign signature (the `.minisig` file's text), at most
        /// `MAX_TEXT_LEN` bytes.
        signature: Option<String>,
        /// Install even when `version` is not newer than the agent's (a forced downgrade or
        /// reinstall).
        force: bool,
    },
    /// Bytes of an offered binary, answering an [`AgentMessageV2::ChunkRequest`].
    BinaryChunk {
        /// The offer.
        offer_id: u64,
        /// Where in the binary `bytes` start.
        offset: u64,
        /// The bytes, at most [`super::MAX_CHUNK_LEN`].
        bytes: Vec<u8>,
    },
    /// A path trace to run, sent only to agents that named the `trace` feature.
    Trace {
        /// Identifies the report.
        trace_id: u64,
        /// Where to trace to.
        target: IpAddrV1,
        /// How to probe.
        protocol: TraceProtocolV2,
        /// The highest TTL tried, 1 to [`super::MAX_TRACE_TTL`].
        max_hops: u8,
        /// Probes per hop, 1 to [`super::MAX_TRACE_ROUNDS`].
        rounds: u16,
    },
}

/// Where an upgrade stands (`link::UpgradeState`).
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub enum UpgradeStateV2 {
    /// The binary is being downloaded.
    Downloading {
        /// Bytes received so far.
        received_bytes: u64,
    },
    /// The download matched the offered digest (and signature).
    Verified,
    /// The running executable was replaced; the new version starts next.
    Applied,
    /// The upgrade was abandoned; the running version stays.
    Failed {
        /// What went wrong, at most `MAX_TEXT_LEN` bytes.
        reason: String,
    },
    /// The new version runs and passed its probation.
    Committed,
    /// The new version failed its probation and the previous one was restored.
    RolledBack {
        /// What went wrong, at most `MAX_TEXT_LEN` bytes.
        reason: String,
    },
}

/// What a trace found at one TTL (`link::TraceHop`); round trips in nanoseconds.
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub struct TraceHopV2 {
    /// The TTL.
    pub ttl: u8,
    /// Who answered at this TTL (`None`: nobody did).
    pub addr: Option<IpAddrV1>,
    /// Probes sent.
    pub sent: u32,
    /// Answers received.
    pub received: u32,
    /// The fastest round trip.
    pub rtt_best_ns: Option<u64>,
    /// The mean round trip.
    pub rtt_mean_ns: Option<u64>,
    /// The slowest round trip.
    pub rtt_worst_ns: Option<u64>,
    /// The population standard deviation of the round trips.
    pub rtt_stddev_ns: Option<u64>,
}

/// How a trace probes (`link::TraceProtocol`).
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub enum TraceProtocolV2 {
    /// ICMP echo requests with rising TTLs.
    Icmp,
    /// UDP datagrams.
    Udp,
    /// TCP SYNs.
    Tcp,
}

/// Most files a v2 `TargetPool` carries.
pub const MAX_POOL_FILES: usize = 1_024;

/// A file a pool's blocks name, with the contents the server read (at most
/// [`crate::model::setting::MAX_PEM_FILE_LEN`] bytes).
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct PoolFileV2 {
    /// The path as the probe file wrote it (the key the blocks use).
    pub path: String,
    /// What the server read.
    pub contents: WireSecret,
}
