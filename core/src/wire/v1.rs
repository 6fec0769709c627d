//! Protocol v1: the data-transfer objects agents and server exchange, and nothing else.
//! These types are the only serde types of ProberMesh; they mirror the domain types field by
//! field but are separate from them, so a refactor of the domain can never silently change the
//! bytes on the wire (the golden files in `fixtures/wire/v1/` would catch it anyway).
//!
//! Compatibility rules (postcard is not self-describing, so the byte layout *is* the schema):
//! - never reorder, remove or retype a field or a variant;
//! - v1 is frozen: a new message or field belongs to a new protocol version
//!   ([`super::ProtocolVersion`]; v2's messages are in [`super::v2`], and share these payloads);
//! - no serde attribute that needs a self-describing format (`skip_serializing_if`, `flatten`,
//!   `untagged`, `tag`, `default` on a missing field).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

// === Messages ===

/// Everything a v1 agent sends to the server.
///
/// A closed enum, frozen: new messages are protocol v2's ([`super::AgentMessageV2`]).
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub enum AgentMessage {
    /// The first message of every connection: who the agent is and its credentials.
    Hello {
        /// The protocol version the agent offers (1, [`super::ProtocolVersion::V1`]).
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
    },
    /// Keeps the connection and the `prober_agent_is_alive` series alive.
    Heartbeat {
        /// The agent's wall clock when it sent this, in Unix milliseconds.
        sent_at_ms: u64,
    },
    /// Probe results; the server answers [`ServerMessage::Ack`] with the same `seq`.
    ResultBatch {
        /// Per-instance sequence number, for acknowledgement and deduplication.
        seq: u64,
        /// The results, at most [`super::MAX_RESULTS_PER_BATCH`].
        results: Vec<ProbeResultV1>,
    },
    /// Asks for the target pool unless the agent already has `known_revision`.
    PoolRequest {
        /// The revision the agent holds (0 when it has none).
        known_revision: u64,
    },
    /// The outcome of a [`ServerMessage::Task`].
    TaskResult {
        /// The task this answers.
        task_id: u64,
        /// The command's exit code; `None` when it was killed by a signal or did not start.
        exit_code: Option<i32>,
        /// Whether the command was killed at its timeout.
        timed_out: bool,
        /// Captured standard output (cut to the task's output limit).
        stdout: Vec<u8>,
        /// Captured standard error (cut to the task's output limit).
        stderr: Vec<u8>,
        /// Whether stdout or stderr was cut.
        truncated: bool,
        /// Wall time the command ran, in milliseconds.
        duration_ms: u64,
    },
    /// Progress of an [`ServerMessage::UpgradeOffer`].
    UpgradeStatus {
        /// The offer this reports on.
        offer_id: u64,
        /// The version being installed.
        version: String,
        /// Where the upgrade stands.
        state: UpgradeStateV1,
    },
    /// The agent refused the [`ServerMessage::TargetPool`] with this revision and keeps
    /// probing its previous pool. Appended to v1 (the only compatible way to extend it): a
    /// server older than this variant closes the connection that sends it.
    PoolRefused {
        /// The refused revision.
        revision: u64,
        /// Where in the pool (`configs[2].http.method`), at most `MAX_TEXT_LEN` bytes.
        field: String,
        /// What is wrong, at most `MAX_TEXT_LEN` bytes.
        reason: String,
    },
}

/// A borrowed [`AgentMessage::ResultBatch`]: serialises to exactly the same bytes, so an agent
/// can encode the batches it keeps for resending without cloning their results. The results
/// are `head` followed by `tail` (the two halves of a ring buffer; either may be empty), each
/// serialising as a [`ProbeResultV1`] does: the DTO itself, or a domain result wrapped in
/// [`super::borrowed::OutgoingResult`].
///
/// The variant index (2) and field order are those of [`AgentMessage::ResultBatch`] and of
/// [`super::AgentMessageV2::ResultBatch`], so it serves both versions; the tests
/// `a_borrowed_batch_encodes_like_the_owned_one` and
/// `a_borrowed_batch_encodes_like_the_owned_v2_one` fail if they ever differ.
#[derive(Debug)]
pub struct ResultBatchRef<'a, R = ProbeResultV1> {
    /// Per-instance sequence number.
    pub seq: u64,
    /// The first results.
    pub head: &'a [R],
    /// The results after `head`.
    pub tail: &'a [R],
}

impl<R> Clone for ResultBatchRef<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for ResultBatchRef<'_, R> {}

/// The results of a [`ResultBatchRef`] as one sequence.
struct ResultsRef<'a, R>(&'a [R], &'a [R]);

impl<R: Serialize> Serialize for ResultsRef<'_, R> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // `Chain` of two slice iterators knows its exact length, as postcard needs.
        serializer.collect_seq(self.0.iter().chain(self.1))
    }
}

impl<R: Serialize> Serialize for ResultBatchRef<'_, R> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStructVariant as _;
        let mut variant =
            serializer.serialize_struct_variant("AgentMessage", 2, "ResultBatch", 2)?;
        variant.serialize_field("seq", &self.seq)?;
        variant.serialize_field("results", &ResultsRef(self.head, self.tail))?;
        variant.end()
    }
}

/// Everything the server sends to an agent.
///
/// A closed enum, frozen: new messages are protocol v2's ([`super::ServerMessageV2`]).
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub enum ServerMessage {
    /// The answer to an accepted [`AgentMessage::Hello`].
    Welcome {
        /// The protocol version the server speaks.
        protocol_version: u16,
        /// The server's version.
        server_version: String,
        /// The address the server sees the agent connect from (its public IP, decision 12).
        observed_addr: SocketAddrV1,
    },
    /// The answer to a rejected [`AgentMessage::Hello`]; the server closes the connection.
    Refused {
        /// Why.
        reason: RefusalV1,
    },
    /// The agent's target pool.
    TargetPool {
        /// Increases with every change of the pool.
        revision: u64,
        /// The pool, at most [`super::MAX_CONFIGS_PER_POOL`] blocks.
        configs: Vec<ProbeConfigV1>,
    },
    /// The server stored the [`AgentMessage::ResultBatch`] with this `seq`.
    Ack {
        /// The acknowledged batch.
        seq: u64,
    },
    /// A shell command to run (only on agents that opted in).
    Task {
        /// Identifies the answer.
        task_id: u64,
        /// The command line, at most [`super::MAX_COMMAND_LEN`] bytes.
        command: String,
        /// Kill the command after this many milliseconds.
        timeout_ms: u64,
        /// Cut stdout and stderr each to this many bytes.
        output_limit_bytes: u32,
    },
    /// A new agent binary to install.
    UpgradeOffer {
        /// Identifies the status reports.
        offer_id: u64,
        /// The version offered.
        version: String,
        /// Where to download the binary.
        url: String,
        /// The SHA-256 of the binary.
        sha256: [u8; 32],
    },
}

/// Where an upgrade stands.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub enum UpgradeStateV1 {
    /// The binary is being downloaded.
    Downloading,
    /// The download matched the offered digest.
    Verified,
    /// The running executable was replaced; the new version starts next.
    Applied,
    /// The upgrade was abandoned.
    Failed {
        /// What went wrong.
        reason: String,
    },
}

/// Why the server refused an agent.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub enum RefusalV1 {
    /// The token did not match.
    BadToken,
    /// The agent speaks a protocol version the server does not.
    VersionMismatch {
        /// The server's version.
        server: u16,
        /// The agent's version.
        agent: u16,
    },
    /// Any other reason, in words.
    Other(String),
}

// === Addresses and secrets ===

/// An IP address, spelled out so its bytes do not depend on serde's `IpAddr` impl.
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub enum IpAddrV1 {
    /// An IPv4 address, network byte order.
    V4([u8; 4]),
    /// An IPv6 address, network byte order.
    V6([u8; 16]),
}

impl From<IpAddr> for IpAddrV1 {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => Self::V6(v6.octets()),
        }
    }
}

impl From<IpAddrV1> for IpAddr {
    fn from(ip: IpAddrV1) -> Self {
        match ip {
            IpAddrV1::V4(octets) => IpAddr::V4(Ipv4Addr::from(octets)),
            IpAddrV1::V6(octets) => IpAddr::V6(Ipv6Addr::from(octets)),
        }
    }
}

/// A socket address: IP and port. IPv6 flow info and scope id are not carried.
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub struct SocketAddrV1 {
    /// The address.
    pub ip: IpAddrV1,
    /// The port.
    pub port: u16,
}

impl From<SocketAddr> for SocketAddrV1 {
    fn from(addr: SocketAddr) -> Self {
        Self {
            ip: addr.ip().into(),
            port: addr.port(),
        }
    }
}

impl From<SocketAddrV1> for SocketAddr {
    fn from(addr: SocketAddrV1) -> Self {
        SocketAddr::new(addr.ip.into(), addr.port)
    }
}

/// A secret on the wire (the agent token, HTTP passwords and bearer tokens): the link is
/// encrypted, but `Debug` still prints `<redacted>` so it never reaches a log.
#[derive(Clone, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub struct WireSecret(String);

impl WireSecret {
    /// Wraps a secret value.
    #[must_use]
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that uses it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WireSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WireSecret(<redacted>)")
    }
}

// === Probe results ===

/// One probe result (`model::ProbeResult` without its source: the server takes that from the
/// authenticated connection).
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct ProbeResultV1 {
    /// The pool region of the target.
    pub target_region: String,
    /// The target as configured.
    pub target: String,
    /// When the probe's round started, in Unix milliseconds.
    pub round_start_ms: u64,
    /// What was measured.
    pub outcome: OutcomeV1,
}

/// What one probe measured.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub enum OutcomeV1 {
    /// An ICMP probe (`model::IcmpResult`).
    Icmp {
        /// Time spent resolving the target, in nanoseconds.
        resolve_ns: u64,
        /// Set when the probe could not measure.
        failure: Option<IcmpFailureV1>,
        /// Echo requests sent.
        packets_sent: u32,
        /// Distinct echo replies received.
        packets_received: u32,
        /// Summary of the received echoes; present exactly when `packets_received > 0`.
        rtt: Option<RttSummaryV1>,
        /// Per-bucket RTT counts, exactly [`super::HISTOGRAM_LEN`] entries (the last is +Inf).
        histogram_counts: Vec<u64>,
        /// Sum of the received RTTs, in nanoseconds.
        histogram_sum_ns: u128,
    },
    /// An HTTP probe (`model::HttpResult`).
    Http {
        /// The five phase durations.
        phases: HttpPhasesV1,
        /// Status code of the final response (100 to 999).
        status_code: Option<u16>,
        /// TLS facts of the final response.
        tls: Option<TlsInfoV1>,
        /// `None` on success.
        failure: Option<HttpFailureV1>,
    },
}

/// Why an ICMP probe could not measure (`model::IcmpFailure`).
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub enum IcmpFailureV1 {
    /// The host name did not resolve.
    Resolve,
    /// The agent may not send ICMP.
    Permission,
    /// The echo requests could not be sent.
    Send,
}

/// RTT summary of one probe (`stats::RttSummary`), in nanoseconds.
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub struct RttSummaryV1 {
    /// Mean RTT.
    pub mean_ns: u64,
    /// Smallest RTT.
    pub min_ns: u64,
    /// Largest RTT (not below `min_ns`).
    pub max_ns: u64,
    /// Population standard deviation.
    pub stddev_ns: u64,
}

/// The five HTTP phases (`model::HttpPhases`), in nanoseconds.
#[derive(Clone, Copy, Debug, Default, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub struct HttpPhasesV1 {
    /// DNS resolution.
    pub resolve_ns: u64,
    /// TCP connect.
    pub connect_ns: u64,
    /// TLS handshake.
    pub tls_ns: u64,
    /// Request written to first response byte.
    pub processing_ns: u64,
    /// First response byte to end of body.
    pub transfer_ns: u64,
}

/// TLS facts of an HTTPS probe (`model::TlsInfo`).
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub struct TlsInfoV1 {
    /// Negotiated version.
    pub version: TlsVersionV1,
    /// Earliest `NotAfter` over the peer chain, in Unix seconds.
    pub earliest_expiry_unix_secs: i64,
}

/// Negotiated TLS version (`model::TlsVersion`).
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub enum TlsVersionV1 {
    /// TLS 1.0.
    Tls10,
    /// TLS 1.1.
    Tls11,
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
    /// Anything else.
    Unknown,
}

/// Why an HTTP probe failed: `model::HttpFailure`, variant for variant.
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub enum HttpFailureV1 {
    /// The status code is not accepted (100 to 999).
    InvalidStatus(u16),
    /// DNS resolution failed.
    Resolve,
    /// The TCP connection was refused.
    ConnectRefused,
    /// The TCP connection timed out.
    ConnectTimeout,
    /// Any other connect error.
    Connect,
    /// The TLS handshake failed.
    TlsHandshake,
    /// The server certificate did not verify.
    CertificateInvalid,
    /// The probe deadline passed.
    Timeout,
    /// A `fail_if_body_*` check failed.
    BodyRegexp,
    /// A `fail_if_header_*` check failed.
    HeaderRegexp,
    /// The protocol version was not accepted.
    HttpVersion,
    /// TLS was required.
    SslRequired,
    /// TLS was forbidden.
    SslForbidden,
    /// The body could not be decoded.
    Compression,
    /// The body was too large.
    BodyTooLarge,
    /// The connection broke while reading.
    BodyRead,
    /// More than 10 redirects.
    TooManyRedirects,
    /// A redirect was unusable.
    BadRedirect,
    /// The request could not be built or sent.
    Request,
}

// === Target pool ===

/// One block of the target pool (`model::ProbeConfig`).
///
/// `kind` says which of `icmp` / `http` is present; exactly that one must be.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct ProbeConfigV1 {
    /// The `target_region` of the block.
    pub region: String,
    /// The probe kind.
    pub kind: ProbeKindV1,
    /// The targets, at most [`super::MAX_TARGETS_PER_CONFIG`].
    pub targets: Vec<String>,
    /// The ICMP settings, present exactly when `kind` is ICMP.
    pub icmp: Option<IcmpModuleV1>,
    /// The HTTP module, present exactly when `kind` is HTTP.
    pub http: Option<HttpModuleV1>,
}

/// The probe kind (`model::ProbeKind`).
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub enum ProbeKindV1 {
    /// ICMP echo.
    Icmp,
    /// HTTP(S).
    Http,
}

/// The probe file's `icmp:` block (`model::IcmpModule`).
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub struct IcmpModuleV1 {
    /// Echo requests per probe.
    pub packet_count: u32,
    /// Time between two echo requests, in nanoseconds.
    pub interval_ns: u64,
    /// ICMP payload bytes.
    pub payload_size: u32,
}

/// The probe file's `http:` block (`model::HttpModule`), every field of it.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct HttpModuleV1 {
    /// Accepted status codes; empty means any 2xx.
    pub valid_status_codes: Vec<u16>,
    /// Accepted protocol versions; empty means any.
    pub valid_http_versions: Vec<HttpVersionV1>,
    /// Address family to try first.
    pub preferred_ip_protocol: IpProtocolV1,
    /// Use the other family when the preferred one has no address.
    pub ip_protocol_fallback: bool,
    /// Parsed and ignored, as in blackbox_exporter.
    pub skip_resolve_phase_with_proxy: bool,
    /// Evaluate the first response instead of following redirects.
    pub no_follow_redirects: bool,
    /// Fail when the final response came over TLS.
    pub fail_if_ssl: bool,
    /// Fail when the final response did not come over TLS.
    pub fail_if_not_ssl: bool,
    /// Request method.
    pub method: String,
    /// Request headers in file order.
    pub headers: Vec<HeaderV1>,
    /// Request body.
    pub body: Option<String>,
    /// Regex sources: fail when the body matches any.
    pub fail_if_body_matches_regexp: Vec<String>,
    /// Regex sources: fail unless the body matches every one.
    pub fail_if_body_not_matches_regexp: Vec<String>,
    /// Fail when a header matches.
    pub fail_if_header_matches: Vec<HeaderMatchV1>,
    /// Fail when a header does not match.
    pub fail_if_header_not_matches: Vec<HeaderMatchV1>,
    /// Body decoding.
    pub compression: CompressionV1,
    /// Largest body read, in bytes; `None` is unlimited.
    pub body_size_limit: Option<u64>,
    /// `http_client_config:`.
    pub client: HttpClientConfigV1,
}

/// One request header.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct HeaderV1 {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// One `fail_if_header_*` entry (`model::http_module::HeaderMatch`).
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct HeaderMatchV1 {
    /// Header name.
    pub header: String,
    /// Regex source.
    pub regexp: String,
    /// A missing header passes.
    pub allow_missing: bool,
}

/// `valid_http_versions` entries (`model::http_module::HttpVersion`).
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub enum HttpVersionV1 {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    Http11,
    /// HTTP/2.
    Http2,
}

/// `preferred_ip_protocol` (`model::http_module::IpProtocol`).
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub enum IpProtocolV1 {
    /// IPv4.
    Ip4,
    /// IPv6.
    Ip6,
}

/// `compression` (`model::http_module::Compression`).
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub enum CompressionV1 {
    /// No decoding.
    Identity,
    /// gzip.
    Gzip,
    /// deflate.
    Deflate,
    /// Brotli.
    Brotli,
}

/// `http_client_config:` (`model::http_module::HttpClientConfig`).
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct HttpClientConfigV1 {
    /// `basic_auth:`.
    pub basic_auth: Option<BasicAuthV1>,
    /// `bearer_token:` or `bearer_token_file:`.
    pub bearer_token: Option<SecretSourceV1>,
    /// `tls_config:`.
    pub tls: TlsConfigV1,
    /// `proxy_url:`.
    pub proxy_url: Option<String>,
    /// `follow_redirects:`.
    pub follow_redirects: bool,
    /// `enable_http2:`.
    pub enable_http2: bool,
}

/// `basic_auth:` (`model::http_module::BasicAuth`).
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct BasicAuthV1 {
    /// User name.
    pub username: String,
    /// Password, inline or as a file path on the agent.
    pub password: Option<SecretSourceV1>,
}

/// A secret given inline or as a file the agent reads (`model::http_module::SecretSource`).
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub enum SecretSourceV1 {
    /// The value itself (it travels over the encrypted link).
    Inline(WireSecret),
    /// A path on the agent.
    File(String),
}

/// `tls_config:` (`model::http_module::TlsConfig`).
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct TlsConfigV1 {
    /// CA file path on the agent.
    pub ca_file: Option<String>,
    /// Client certificate path on the agent.
    pub cert_file: Option<String>,
    /// Client key path on the agent.
    pub key_file: Option<String>,
    /// SNI and verification name.
    pub server_name: Option<String>,
    /// Accept any server certificate.
    pub insecure_skip_verify: bool,
    /// Lowest TLS version offered.
    pub min_version: Option<TlsMinVersionV1>,
}

/// `min_version:` (`model::http_module::TlsMinVersion`).
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
pub enum TlsMinVersionV1 {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}
