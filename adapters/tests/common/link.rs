//! What the link's loopback tests share: a server and agents on 127.0.0.1 with fast
//! retries, a recorder of the server's events, and a raw QUIC client that writes whatever a
//! test wants.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use probermesh_adapters::link::{
    AgentIdentity, AgentLink, AgentLinkConfig, BackoffConfig, CertificateSource, CloseCode,
    ReportServer, ServerConfig, ServerVerification, client_crypto,
};
use probermesh_adapters::secret::Token;
use probermesh_core::link::FromAgent;
use probermesh_core::model::{
    AgentId, AgentVersion, IcmpResult, ProbeOutcome, ProbeResult, Region, UnixMillis,
};
use probermesh_core::ports::{LinkEvent, ReportSource, ServerLink};
use probermesh_core::wire::{AgentMessage, ServerMessage, WireSecret, encode_frame};
use quinn::crypto::rustls::QuicClientConfig;
use tokio::task::JoinHandle;

use super::TempDir;

pub const TOKEN: &str = "s3cret-token";

/// Generous bound on anything that should happen quickly; only a guard against hangs.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

// === helpers ===

pub fn server_config(data_dir: &Path, listen_addr: SocketAddr) -> ServerConfig {
    let mut config = ServerConfig::new(
        listen_addr,
        CertificateSource::Generated {
            data_dir: data_dir.to_owned(),
            names: vec!["localhost".into()],
        },
        Token::new(TOKEN, "test").expect("token"),
    );
    config.server_version = "0.1.0-test".into();
    config
}

/// Binds a server, retrying while the port is still held by a server that just stopped.
pub async fn start_server(config: ServerConfig) -> Arc<ReportServer> {
    let mut attempts = 0;
    loop {
        match ReportServer::bind(config.clone()) {
            Ok(server) => return Arc::new(server),
            Err(e) if attempts < 100 => {
                attempts += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot start the server: {e}"),
        }
    }
}

pub async fn new_server(dir: &TempDir) -> Arc<ReportServer> {
    start_server(server_config(
        dir.path(),
        "127.0.0.1:0".parse().expect("addr"),
    ))
    .await
}

pub fn agent_id(region: &str, ip: &str) -> AgentId {
    AgentId::new(
        Region::new(region).expect("region"),
        ip.parse().expect("ip"),
    )
}

pub fn agent_config(
    server_addr: SocketAddr,
    region: &str,
    verification: ServerVerification,
) -> AgentLinkConfig {
    let identity = AgentIdentity::new(agent_id(region, "10.0.0.1"), AgentVersion::new("0.1.0"))
        .expect("randomness");
    let mut config = AgentLinkConfig::new(
        server_addr.to_string(),
        verification,
        Token::new(TOKEN, "test").expect("token"),
        identity,
    );
    // Fast retries keep the tests short; the defaults are 0.5 s to 30 s.
    config.backoff = BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
        jitter_fraction: 0.2,
    };
    config
}

pub fn pinned(server: &ReportServer) -> ServerVerification {
    ServerVerification::PinnedSha256(server.fingerprint())
}

pub fn start_agent(config: AgentLinkConfig) -> AgentLink {
    AgentLink::start(config).expect("agent link starts")
}

/// An ICMP result whose round start (in ms) is its unique id.
pub fn result(id: u64) -> ProbeResult {
    ProbeResult {
        source: agent_id("eu", "10.0.0.1"),
        target_region: Region::new("us").expect("region"),
        target: "10.0.1.1".into(),
        round_start: UnixMillis(id),
        outcome: ProbeOutcome::Icmp(IcmpResult::measured(
            Duration::from_micros(1),
            3,
            &[Duration::from_millis(1); 3],
        )),
    }
}

pub fn results(ids: std::ops::Range<u64>) -> Vec<ProbeResult> {
    ids.map(result).collect()
}

/// Waits for `future` within the hang guard.
pub async fn guarded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Polls `condition` until it holds (within the hang guard).
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    guarded(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Everything a server handed out, recorded by a task that drains `next_event`.
#[derive(Clone, Default)]
pub struct Recorded(pub Arc<Mutex<Vec<LinkEvent>>>);

impl Recorded {
    pub fn events(&self) -> Vec<LinkEvent> {
        self.0.lock().expect("lock").clone()
    }

    /// The ids of every delivered result, in order.
    pub fn result_ids(&self) -> Vec<u64> {
        self.events()
            .iter()
            .filter_map(|e| match e {
                LinkEvent::Message {
                    message: FromAgent::Results { results, .. },
                    ..
                } => Some(
                    results
                        .iter()
                        .map(|r| r.round_start.as_millis())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect()
    }

    pub fn connected(&self) -> Vec<(AgentId, SocketAddr)> {
        self.events()
            .iter()
            .filter_map(|e| match e {
                LinkEvent::Connected {
                    agent,
                    observed_addr,
                    ..
                } => Some((agent.clone(), *observed_addr)),
                _ => None,
            })
            .collect()
    }
}

pub fn record(server: &Arc<ReportServer>) -> (Recorded, JoinHandle<()>) {
    let recorded = Recorded::default();
    let sink = recorded.clone();
    let server = Arc::clone(server);
    let task = tokio::spawn(async move {
        while let Some(event) = server.next_event().await {
            sink.0.lock().expect("lock").push(event);
        }
    });
    (recorded, task)
}

/// A QUIC client that speaks the link's TLS but writes whatever the test wants.
pub struct RawClient {
    pub _endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

pub async fn raw_client(server: &ReportServer) -> RawClient {
    try_raw_client(server, IpAddr::from([127, 0, 0, 1]))
        .await
        .expect("TLS handshake")
}

/// A raw client from `local_ip` (any loopback address): the TLS handshake done and the stream
/// opened (nothing written yet), or the error that ended the connection attempt.
pub async fn try_raw_client(
    server: &ReportServer,
    local_ip: IpAddr,
) -> Result<RawClient, quinn::ConnectionError> {
    let crypto = client_crypto(&pinned(server)).expect("client crypto");
    let client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(crypto).expect("quic client config"),
    ));
    let endpoint = quinn::Endpoint::client(SocketAddr::new(local_ip, 0)).expect("client endpoint");
    let conn = guarded(
        "the TLS handshake",
        endpoint
            .connect_with(client, server.local_addr(), "localhost")
            .expect("connect"),
    )
    .await?;
    let (send, recv) = conn.open_bi().await?;
    Ok(RawClient {
        _endpoint: endpoint,
        conn,
        send,
        recv,
    })
}

pub fn hello(protocol_version: u16, token: &str) -> AgentMessage {
    AgentMessage::Hello {
        protocol_version,
        agent_version: "0.1.0".into(),
        region: "raw".into(),
        ip: "10.9.9.9".parse::<IpAddr>().expect("ip").into(),
        instance_id: 42,
        token: WireSecret::new(token.into()),
    }
}

impl RawClient {
    pub async fn write(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.expect("write");
    }

    pub async fn say(&mut self, msg: &AgentMessage) {
        let frame = encode_frame(msg, usize::MAX).expect("encode");
        self.write(&frame).await;
    }

    /// Reads one whole frame (length prefix and body) as the server wrote it.
    pub async fn read_frame(&mut self) -> Vec<u8> {
        let mut frame = vec![0u8; 4];
        self.recv.read_exact(&mut frame).await.expect("read prefix");
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        frame.resize(4 + len, 0);
        self.recv
            .read_exact(&mut frame[4..])
            .await
            .expect("read body");
        frame
    }

    /// Reads one server message.
    pub async fn read(&mut self) -> ServerMessage {
        let mut prefix = [0u8; 4];
        self.recv
            .read_exact(&mut prefix)
            .await
            .expect("read prefix");
        let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
        self.recv.read_exact(&mut body).await.expect("read body");
        probermesh_core::wire::decode_frame(&body).expect("decode")
    }

    /// Waits for the server to close the connection; returns its close code and reason.
    pub async fn closed(&self) -> (CloseCode, String) {
        let err = guarded("the server to close the connection", self.conn.closed()).await;
        CloseCode::of_error(&err)
            .unwrap_or_else(|| panic!("not closed by the server with a code: {err}"))
    }
}

/// One healthy agent delivering `n` results while something else happens; asserts they all
/// arrive exactly once.
pub async fn healthy_agent_delivers(server: &ReportServer, recorded: &Recorded, base: u64, n: u64) {
    let agent = start_agent(agent_config(server.local_addr(), "healthy", pinned(server)));
    agent.enqueue_results(results(base..base + n));
    eventually("the healthy agent's results", || {
        recorded
            .result_ids()
            .iter()
            .filter(|id| (base..base + n).contains(id))
            .count() as u64
            == n
    })
    .await;
    eventually("the healthy agent's acks", || {
        agent.stats().outbox.buffered_results == 0
    })
    .await;
    agent.close().await;
}
