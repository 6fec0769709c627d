//! The link's options as plain structs: what the server and an agent need to open it. The
//! binary fills them from its flags (named in the field docs).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use probermesh_core::delivery::OutboxConfig;
use probermesh_core::model::{AgentId, AgentVersion};
use probermesh_core::wire::{DEFAULT_MAX_FRAME_LEN, ProtocolVersion};
use quinn::{IdleTimeout, TransportConfig, VarInt};

use super::admission::AdmissionLimits;
use super::backoff::BackoffConfig;
use super::cert::CertificateSource;
use super::tls::ServerVerification;
use crate::secret::Token;

/// Largest first frame (the `Hello`) accepted before an agent is authenticated, in bytes:
/// an unauthenticated peer cannot make the server buffer more than this (plus the QUIC
/// receive window).
pub const MAX_HELLO_FRAME_LEN: usize = 64 * 1024;

/// The connection-wide receive window of a connection before its `Hello` is accepted, in
/// bytes: room for the largest `Hello` and its length prefix, and no more, so a peer that has
/// not authenticated cannot make the server buffer the whole window (raised to
/// [`LinkLimits::receive_window_bytes`] once the `Hello` is accepted).
pub const HANDSHAKE_RECEIVE_WINDOW_BYTES: u32 = 2 * MAX_HELLO_FRAME_LEN as u32;

/// Limits shared by both ends of the link.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct LinkLimits {
    /// Largest frame body accepted, in bytes (default 8 MiB, `DEFAULT_MAX_FRAME_LEN`). A larger
    /// frame closes the connection.
    pub max_frame_len_bytes: usize,
    /// A connection with no traffic for this long is dead (default 30 s).
    pub idle_timeout: Duration,
    /// QUIC keep-alive pings are sent this often when nothing else is (default 5 s; must be
    /// below `idle_timeout`).
    pub keep_alive_interval: Duration,
    /// The TLS handshake, `Hello` and `Welcome` must complete within this (default 5 s).
    pub handshake_timeout: Duration,
    /// Bytes the peer may send on the link stream before we read them (QUIC flow control;
    /// default 2 MiB). Also the connection-wide window.
    pub receive_window_bytes: u32,
}

impl Default for LinkLimits {
    fn default() -> Self {
        Self {
            max_frame_len_bytes: DEFAULT_MAX_FRAME_LEN,
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            receive_window_bytes: 2 * 1024 * 1024,
        }
    }
}

impl LinkLimits {
    /// quinn's transport settings: the idle timeout, keep-alives, flow-control windows, and
    /// the streams the peer may open (`peer_bidi_streams`, no unidirectional ones).
    #[must_use]
    pub fn transport(&self, peer_bidi_streams: u32) -> Arc<TransportConfig> {
        Arc::new(self.transport_with(peer_bidi_streams, self.receive_window_bytes))
    }

    /// The server's transport settings: [`LinkLimits::transport`] with one stream for the
    /// peer and the connection-wide window of a connection that has not authenticated yet
    /// ([`HANDSHAKE_RECEIVE_WINDOW_BYTES`]).
    #[must_use]
    pub fn server_transport(&self) -> Arc<TransportConfig> {
        Arc::new(
            self.transport_with(
                1,
                self.receive_window_bytes
                    .min(HANDSHAKE_RECEIVE_WINDOW_BYTES),
            ),
        )
    }

    fn transport_with(
        &self,
        peer_bidi_streams: u32,
        connection_window_bytes: u32,
    ) -> TransportConfig {
        let mut transport = TransportConfig::default();
        let idle = IdleTimeout::try_from(self.idle_timeout)
            .unwrap_or_else(|_| IdleTimeout::from(VarInt::from_u32(30_000)));
        transport
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive_interval))
            .max_concurrent_bidi_streams(VarInt::from_u32(peer_bidi_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u32(self.receive_window_bytes))
            .receive_window(VarInt::from_u32(connection_window_bytes))
            .send_window(u64::from(self.receive_window_bytes) * 4);
        transport
    }
}

/// The server's side of the link (`ReportServer::bind`).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// UDP address to listen on (`-server.rpc.listen.addr`).
    pub listen_addr: SocketAddr,
    /// The TLS certificate: PEM files or generated in a data directory.
    pub certificate: CertificateSource,
    /// The agents' shared token (`-server.auth.token-file`); `Debug` redacts it.
    pub token: Token,
    /// The server's version, sent in `Welcome`.
    pub server_version: String,
    /// Frame, time and window limits of every connection.
    pub limits: LinkLimits,
    /// Who may start a handshake and hold a place (`link::admission`): authenticated
    /// connections (4,096), handshakes (512, 64 of them from unvalidated addresses, beyond
    /// which attempts get a Retry), and per-source rates; see [`AdmissionLimits`].
    pub admission: AdmissionLimits,
    /// Log lines that unauthenticated peers cause are written at most once per kind per this
    /// interval (default 10 s), each with the count of those left out.
    pub peer_log_interval: Duration,
    /// Agent instances whose delivered batch numbers are remembered (default 16,384); the
    /// least recently active is forgotten first.
    pub max_tracked_instances: usize,
    /// Batch numbers remembered above each instance's contiguous floor (default 1,024).
    pub dedup_window_batches: usize,
    /// Events waiting for `next_event` before readers stop reading (default 1,024): the
    /// back-pressure from a slow driver to the agents.
    pub event_queue_len: usize,
    /// Messages (acks included) waiting to be written to one agent (default 1,024). An agent
    /// that lets it fill up is disconnected.
    pub send_queue_len: usize,
    /// The newest protocol version served (default the newest this build speaks). `V1`
    /// reads hellos exactly as the releases before v2 did (a v2 hello is then a protocol
    /// violation): what a v2 agent meets at a server not yet upgraded.
    pub max_protocol: ProtocolVersion,
    /// The features this server offers in a v2 welcome (`core::link::feature`); none until
    /// the features are built.
    pub features: BTreeSet<String>,
}

impl ServerConfig {
    /// A configuration with the default limits.
    #[must_use]
    pub fn new(listen_addr: SocketAddr, certificate: CertificateSource, token: Token) -> Self {
        Self {
            listen_addr,
            certificate,
            token,
            server_version: crate::version::VERSION.to_owned(),
            limits: LinkLimits::default(),
            admission: AdmissionLimits::default(),
            peer_log_interval: Duration::from_secs(10),
            max_tracked_instances: 16_384,
            dedup_window_batches: 1_024,
            event_queue_len: 1_024,
            send_queue_len: 1_024,
            max_protocol: ProtocolVersion::LATEST,
            features: BTreeSet::new(),
        }
    }
}

/// Who an agent says it is in its `Hello`.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct AgentIdentity {
    /// Region and reported address.
    pub agent: AgentId,
    /// The agent's version.
    pub version: AgentVersion,
    /// Random per process start: the server keys its deduplication on it.
    pub instance_id: u64,
}

impl AgentIdentity {
    /// An identity with a fresh random instance id.
    ///
    /// # Errors
    /// When the operating system has no randomness to give.
    pub fn new(agent: AgentId, version: AgentVersion) -> Result<Self, getrandom::Error> {
        Ok(Self {
            agent,
            version,
            instance_id: getrandom::u64()?,
        })
    }

    /// The reported address.
    #[must_use]
    pub fn ip(&self) -> IpAddr {
        self.agent.ip
    }
}

/// An agent's side of the link (`AgentLink::start`).
#[derive(Clone, Debug)]
pub struct AgentLinkConfig {
    /// The server, `host:port` (`-agent.rpc.server.addr`); resolved at every attempt.
    pub server_addr: String,
    /// The name to verify in the server's certificate with a CA file (and sent as SNI);
    /// `None` uses the host of `server_addr`.
    pub server_name: Option<String>,
    /// How to verify the server's certificate; there is no default.
    pub verification: ServerVerification,
    /// The shared token (token file or `PROBERMESH_TOKEN`); `Debug` redacts it.
    pub token: Token,
    /// Who the agent is.
    pub identity: AgentIdentity,
    /// Result buffering: capacity (default 100,000 results), batch size, window.
    pub outbox: OutboxConfig,
    /// Delays between connection attempts.
    pub backoff: BackoffConfig,
    /// Frame, time and window limits.
    pub limits: LinkLimits,
    /// Server messages waiting for `recv` (default 256); beyond that new ones are dropped
    /// and logged (the latest pool is kept regardless).
    pub inbox_len: usize,
    /// The newest protocol version offered (default the newest this build speaks); a server
    /// that speaks only v1 is then spoken to in v1.
    pub max_protocol: ProtocolVersion,
    /// The features this agent takes, named in a v2 hello (`core::link::feature`); a server
    /// sends tasks, upgrades and traces only to agents that name them.
    pub features: BTreeSet<String>,
    /// How long new results wait for more before they are sent (default 100 ms), so an agent
    /// finishing hundreds of probes a second sends a frame per linger, not one per probe (and
    /// the server acknowledges each); a full batch goes at once. Zero sends each at once.
    pub result_linger: Duration,
}

/// The default [`AgentLinkConfig::result_linger`]: small beside the server's aggregation
/// window (15 s by default), large beside the time between two probes' results.
pub const DEFAULT_RESULT_LINGER: Duration = Duration::from_millis(100);

impl AgentLinkConfig {
    /// A configuration with the default limits.
    #[must_use]
    pub fn new(
        server_addr: impl Into<String>,
        verification: ServerVerification,
        token: Token,
        identity: AgentIdentity,
    ) -> Self {
        Self {
            server_addr: server_addr.into(),
            server_name: None,
            verification,
            token,
            identity,
            outbox: OutboxConfig::default(),
            backoff: BackoffConfig::default(),
            limits: LinkLimits::default(),
            inbox_len: 256,
            max_protocol: ProtocolVersion::LATEST,
            features: BTreeSet::new(),
            result_linger: DEFAULT_RESULT_LINGER,
        }
    }

    /// The name verified in the server's certificate.
    pub(crate) fn effective_server_name(&self) -> String {
        if let Some(name) = &self.server_name {
            return name.clone();
        }
        if let Ok(addr) = self.server_addr.parse::<SocketAddr>() {
            return addr.ip().to_string();
        }
        self.server_addr
            .rsplit_once(':')
            .map_or(self.server_addr.as_str(), |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use probermesh_core::model::Region;

    use super::*;

    fn config(addr: &str) -> AgentLinkConfig {
        let identity = AgentIdentity::new(
            AgentId::new(Region::new("eu").unwrap(), "10.0.0.1".parse().unwrap()),
            AgentVersion::new("0.1.0"),
        )
        .unwrap();
        AgentLinkConfig::new(
            addr,
            ServerVerification::Insecure,
            Token::new("s3cret", "test").unwrap(),
            identity,
        )
    }

    #[test]
    fn the_server_name_defaults_to_the_host() {
        assert_eq!(
            config("server.example:4433").effective_server_name(),
            "server.example"
        );
        assert_eq!(
            config("127.0.0.1:4433").effective_server_name(),
            "127.0.0.1"
        );
        assert_eq!(config("[::1]:4433").effective_server_name(), "::1");
        let mut named = config("127.0.0.1:4433");
        named.server_name = Some("probermesh-server".into());
        assert_eq!(named.effective_server_name(), "probermesh-server");
    }

    #[test]
    fn configs_never_show_the_token() {
        let agent = config("127.0.0.1:4433");
        let text = format!("{agent:?}");
        assert!(!text.contains("s3cret"), "{text}");
        let server = ServerConfig::new(
            "127.0.0.1:4433".parse().unwrap(),
            CertificateSource::Generated {
                data_dir: "/nonexistent".into(),
                names: vec![],
            },
            Token::new("s3cret", "test").unwrap(),
        );
        let text = format!("{server:?}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}
