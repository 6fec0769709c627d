//! The server's end of the link: [`ReportServer`], port `ReportSource`.
//!
//! One QUIC endpoint accepts every agent. Each connection gets a task that runs the handshake
//! ([`super::handshake`]) and then reads the agent's frames into one event queue, and a writer
//! task that owns the send half of the stream. `next_event` hands the events out; that is where
//! result batches are deduplicated (per agent instance and `seq`) and acknowledged, so an `Ack`
//! means "handed to the server driver". A bad frame closes that connection only.
//!
//! [`ReportServer::shutdown`] is graceful: it stops handing out events, lets every writer flush
//! the acks already queued, finishes the streams and waits (briefly) for the agents to read them
//! and hang up, so no batch is both delivered here and resent to the next server process.
//!
//! Every connection attempt is decided before any TLS ([`super::admission`]): a place in the
//! handshake budget, a QUIC Retry, or a refusal; a connection takes one of the
//! `max_connections` places only when its `Hello` is accepted. Lines unauthenticated peers
//! cause are rate-limited ([`super::peer_log`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use probermesh_core::delivery::Deduplicator;
use probermesh_core::link::{FromAgent, ToAgent};
use probermesh_core::model::AgentId;
use probermesh_core::ports::{ConnectionId, LinkError, LinkEvent, ReportSource};
use probermesh_core::wire::{ProtocolVersion, decode_from_agent, encode_to_agent};
use quinn::{Connection, Endpoint, SendStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::admission::{self, Admission, Load, Refusal, SourceLimiter};
use super::cert::{CertError, ServerCertificate};
use super::cert_check::CertificateFacts;
use super::close::{CloseCode, close};
use super::config::ServerConfig;
use super::fingerprint::Sha256Fingerprint;
use super::framed::{FrameError, FrameReader};
use super::handshake::{self, Accepted};
use super::peer_log::{PeerLine, PeerLog};
use super::stable_keys;
use super::tls::{TlsSetupError, server_crypto};

/// How long a writer waits, after finishing its stream, for the agent to read it and hang up.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest chunk of queued frames written at once, in bytes.
const WRITE_COALESCE_BYTES: usize = 256 * 1024;

/// Connection attempts quinn holds for the accept loop at once; beyond, it drops Initials
/// without answering (the loop decides each at once, so only a starved runtime fills it).
const MAX_INCOMING: usize = 1_024;

/// Bytes quinn buffers for one connection attempt after its first datagram, and for all of
/// them together, before the accept loop decides.
const INCOMING_BUFFER_BYTES: u64 = 64 * 1024;
const INCOMING_BUFFER_TOTAL_BYTES: u64 = 8 * 1024 * 1024;

/// The receive buffer asked for the server's UDP socket, in bytes (the kernel caps it at
/// `net.core.rmem_max`): the default (about 200 KiB, some 90 full datagrams) overflows when
/// a burst of Initials meets a briefly descheduled server, and what overflows is dropped
/// whoever sent it, connected agents included.
const SOCKET_RECEIVE_BUFFER_BYTES: usize = 2 * 1024 * 1024;

/// How often the accept loop writes the summaries of rate-limited peer lines.
const PEER_LOG_TICK: Duration = Duration::from_secs(1);

impl From<CertError> for ServerSetupError {
    fn from(error: CertError) -> Self {
        Self::Certificate(error)
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerSetupError {
    // The causes are part of each message and not `source`s, so an error chain prints each
    // once (the convention of every error of this crate).
    /// The certificate could not be loaded or generated.
    #[error("server certificate: {0}")]
    Certificate(CertError),
    /// The TLS configuration was refused.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// `ReportServer::bind` was called outside a tokio runtime.
    #[error("the report server needs a running tokio runtime")]
    NoRuntime,
}

/// Counters of the server's link, for logs and tests.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct ServerStats {
    /// Agents that completed the handshake.
    pub accepted: u64,
    /// Authenticated connections open now (at most `max_connections`).
    pub open_connections: u64,
    /// Connections in their handshake now (at most `max_handshakes`).
    pub handshakes: u64,
    /// Connection attempts from unvalidated addresses answered with a Retry.
    pub retries: u64,
    /// Agents refused for a wrong or missing token.
    pub refused_bad_token: u64,
    /// Agents refused for speaking another protocol version.
    pub refused_version: u64,
    /// Agents refused for another reason (invalid region, …).
    pub refused_other: u64,
    /// Connection attempts refused because `max_connections` were open.
    pub refused_capacity: u64,
    /// Validated connection attempts refused because `max_handshakes` were under way.
    pub refused_busy: u64,
    /// Validated connection attempts refused because their source started too many lately.
    pub refused_rate_limited: u64,
    /// Connections that failed before a `Hello` (TLS failure, timeout, wrong first frame).
    pub handshake_failures: u64,
    /// Connections closed for a bad frame after the handshake.
    pub protocol_errors: u64,
    /// Connections closed because the agent did not read its messages.
    pub slow_readers: u64,
    /// Result batches received again (after a reconnect) and acknowledged without delivery.
    pub duplicate_batches: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) refused_bad_token: AtomicU64,
    pub(crate) refused_version: AtomicU64,
    pub(crate) refused_other: AtomicU64,
    pub(crate) refused_capacity: AtomicU64,
    pub(crate) refused_busy: AtomicU64,
    pub(crate) refused_rate_limited: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) handshake_failures: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) slow_readers: AtomicU64,
    pub(crate) duplicate_batches: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What identifies an agent process for deduplication.
#[derive(Clone, Debug, Eq, Hash, PartialEq)]
struct InstanceKey {
    agent: AgentId,
    instance_id: u64,
}

/// An event waiting for `next_event`, with the instance it came from.
#[derive(Debug)]
struct Queued {
    event: LinkEvent,
    instance_id: u64,
}

/// An authenticated connection.
#[derive(Debug)]
struct Registered {
    conn: Connection,
    /// The connection's protocol version: every message to it is encoded in it.
    protocol: ProtocolVersion,
    /// Encoded frames for the writer.
    frames: mpsc::Sender<Vec<u8>>,
    writer: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Registry {
    /// Set by `shutdown`: no event is handed out and no connection registered any more.
    closing: bool,
    connections: HashMap<ConnectionId, Registered>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    /// How log lines name the server's certificate (subject and fingerprint).
    pub(crate) certificate_name: String,
    registry: Mutex<Registry>,
    dedup: Mutex<Deduplicator<InstanceKey>>,
    pub(crate) counters: Counters,
    /// Rate limit of the lines unauthenticated peers cause.
    pub(crate) peer_log: PeerLog,
    /// Authenticated connections (`ConnectionSlot`s).
    connections: AtomicUsize,
    /// Connections in their handshake (`HandshakeSlot`s), and of those the unvalidated.
    handshakes: AtomicUsize,
    unvalidated_handshakes: AtomicUsize,
    next_connection_id: AtomicU64,
    events: mpsc::Sender<Queued>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn load(&self) -> Load {
        Load {
            connections: self.connections.load(Ordering::Relaxed),
            handshakes: self.handshakes.load(Ordering::Relaxed),
            unvalidated_handshakes: self.unvalidated_handshakes.load(Ordering::Relaxed),
        }
    }

    /// Whether a line of `kind` may be written now: `Some(lines left out since the last)`.
    pub(crate) fn peer_line(&self, kind: PeerLine) -> Option<u64> {
        self.peer_log.admit(kind, Instant::now())
    }
}

/// A place in the handshake budget, taken by the accept loop and given back on drop.
#[derive(Debug)]
struct HandshakeSlot {
    shared: Arc<Shared>,
    validated: bool,
}

impl HandshakeSlot {
    fn take(shared: &Arc<Shared>, validated: bool) -> Self {
        shared.handshakes.fetch_add(1, Ordering::Relaxed);
        if !validated {
            shared
                .unvalidated_handshakes
                .fetch_add(1, Ordering::Relaxed);
        }
        Self {
            shared: Arc::clone(shared),
            validated,
        }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.shared.handshakes.fetch_sub(1, Ordering::Relaxed);
        if !self.validated {
            self.shared
                .unvalidated_handshakes
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One of the `max_connections` places, taken when a `Hello` is accepted and given back on
/// drop.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    shared: Arc<Shared>,
}

impl ConnectionSlot {
    /// Takes a place, unless `max_connections` are taken.
    pub(crate) fn try_take(shared: &Arc<Shared>) -> Option<Self> {
        shared
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < shared.config.admission.max_connections).then_some(n + 1)
            })
            .ok()
            .map(|_| Self {
                shared: Arc::clone(shared),
            })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The server's end of every agent link (port `ReportSource`).
#[derive(Debug)]
pub struct ReportServer {
    endpoint: Endpoint,
    shared: Arc<Shared>,
    events: tokio::sync::Mutex<mpsc::Receiver<Queued>>,
    fingerprint: Sha256Fingerprint,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl ReportServer {
    /// Loads (or generates) the certificate, binds the UDP socket and starts accepting agents.
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`ServerSetupError`] naming the certificate file, the TLS problem or the address.
    pub fn bind(config: ServerConfig) -> Result<Self, ServerSetupError> {
        tokio::runtime::Handle::try_current().map_err(|_| ServerSetupError::NoRuntime)?;
        let cert = ServerCertificate::load(&config.certificate)?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_crypto(&cert)?)
            .map_err(|e| TlsSetupError::Quic(e.to_string()))?;
        let mut quic = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        quic.transport_config(config.limits.server_transport())
            .max_incoming(MAX_INCOMING)
            .incoming_buffer_size(INCOMING_BUFFER_BYTES)
            .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL_BYTES);
        // Keys derived from the certificate's private key: a restarted server resets the
        // connections of the process before it, so agents reconnect at once (stable_keys).
        let endpoint_config = stable_keys::endpoint_config(cert.key.secret_der());
        let endpoint = std::net::UdpSocket::bind(config.listen_addr)
            .and_then(|socket| {
                widen_receive_buffer(&socket);
                Endpoint::new(
                    endpoint_config,
                    Some(quic),
                    socket,
                    Arc::new(quinn::TokioRuntime),
                )
            })
            .map_err(|cause| ServerSetupError::Bind {
                addr: config.listen_addr,
                cause,
            })?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|cause| ServerSetupError::Bind {
                addr: config.listen_addr,
                cause,
            })?;
        let facts = CertificateFacts::of_der(cert.leaf_der());
        let certificate_name = facts.as_ref().map_or_else(
            || format!("unparsable, SHA-256 {}", cert.fingerprint()),
            CertificateFacts::named,
        );
        if let Some(facts) = &facts {
            let now_unix_secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            for warning in facts.start_warnings(config.listen_addr.ip(), now_unix_secs) {
                tracing::warn!("{warning}");
            }
        }
        let (events_tx, events_rx) = mpsc::channel(config.event_queue_len.max(1));
        let shared = Arc::new(Shared {
            certificate_name,
            dedup: Mutex::new(Deduplicator::new(
                config.max_tracked_instances,
                config.dedup_window_batches,
            )),
            peer_log: PeerLog::new(config.peer_log_interval),
            config,
            registry: Mutex::new(Registry::default()),
            counters: Counters::default(),
            connections: AtomicUsize::new(0),
            handshakes: AtomicUsize::new(0),
            unvalidated_handshakes: AtomicUsize::new(0),
            next_connection_id: AtomicU64::new(1),
            events: events_tx,
        });
        let (stop, stop_rx) = watch::channel(false);
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), Arc::clone(&shared), stop_rx));
        tracing::info!(
            %local_addr,
            fingerprint = %cert.fingerprint(),
            "agent link listening (QUIC, TLS 1.3)"
        );
        Ok(Self {
            endpoint,
            shared,
            events: tokio::sync::Mutex::new(events_rx),
            fingerprint: cert.fingerprint(),
            local_addr,
            stop,
            accept_task: Mutex::new(Some(accept_task)),
        })
    }

    /// The SHA-256 fingerprint of the server's leaf certificate (hex with colons when
    /// displayed), for the operator to pin on agents.
    #[must_use]
    pub fn fingerprint(&self) -> Sha256Fingerprint {
        self.fingerprint
    }

    /// The address the endpoint is bound to (with the real port when 0 was asked for).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            accepted: get(&c.accepted),
            open_connections: self.shared.connections.load(Ordering::Relaxed) as u64,
            handshakes: self.shared.handshakes.load(Ordering::Relaxed) as u64,
            retries: get(&c.retries),
            refused_bad_token: get(&c.refused_bad_token),
            refused_version: get(&c.refused_version),
            refused_other: get(&c.refused_other),
            refused_capacity: get(&c.refused_capacity),
            refused_busy: get(&c.refused_busy),
            refused_rate_limited: get(&c.refused_rate_limited),
            handshake_failures: get(&c.handshake_failures),
            protocol_errors: get(&c.protocol_errors),
            slow_readers: get(&c.slow_readers),
            duplicate_batches: get(&c.duplicate_batches),
        }
    }

    /// Stops gracefully: no event is handed out any more (those queued are dropped, never
    /// acknowledged, so agents resend them to the next server), every acknowledgement already
    /// queued is written, streams are finished, and agents get up to 2 s to read them and hang
    /// up before their connections are closed.
    pub async fn shutdown(&self) {
        let writers = self.close_registry();
        let _ = self.stop.send(true);
        let accept_task = lock(&self.accept_task).take();
        if let Some(task) = accept_task {
            let _ = task.await;
        }
        for writer in writers {
            let _ = writer.await;
        }
        self.endpoint.close(
            quinn::VarInt::from_u32(CloseCode::ServerShutdown.code()),
            b"server shutting down",
        );
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, self.endpoint.wait_idle()).await;
        tracing::info!(local_addr = %self.local_addr, "agent link stopped");
    }

    /// Marks the registry closing and takes every connection's writer out of it; dropping the
    /// frame senders lets each writer drain its queue and finish.
    fn close_registry(&self) -> Vec<JoinHandle<()>> {
        let mut registry = lock(&self.shared.registry);
        registry.closing = true;
        registry
            .connections
            .drain()
            .map(|(_, registered)| registered.writer)
            .collect()
    }

    /// Queues `frame` for `connection`; a full queue disconnects the agent.
    fn queue_frame(&self, connection: ConnectionId, frame: Vec<u8>) -> Result<(), LinkError> {
        let registry = lock(&self.shared.registry);
        let Some(registered) = registry.connections.get(&connection) else {
            return Err(LinkError::Disconnected);
        };
        queue_on(&self.shared, connection, registered, frame)
    }
}

/// Asks for [`SOCKET_RECEIVE_BUFFER_BYTES`] of receive buffer on the server's socket; the
/// kernel may give less, which is only logged.
fn widen_receive_buffer(socket: &std::net::UdpSocket) {
    let socket = socket2::SockRef::from(socket);
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_RECEIVE_BUFFER_BYTES) {
        tracing::debug!(error = %e, "cannot widen the link socket's receive buffer");
    }
    if let Ok(bytes) = socket.recv_buffer_size() {
        tracing::debug!(receive_buffer_bytes = bytes, "link socket receive buffer");
    }
}

/// Queues a frame on a registered connection; closes the connection when its queue is full.
fn queue_on(
    shared: &Shared,
    connection: ConnectionId,
    registered: &Registered,
    frame: Vec<u8>,
) -> Result<(), LinkError> {
    match registered.frames.try_send(frame) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => {
            bump(&shared.counters.slow_readers);
            tracing::warn!(%connection, "agent does not read its messages; disconnecting it");
            close(
                &registered.conn,
                CloseCode::SlowReader,
                "send queue full: the agent does not read",
            );
            Err(LinkError::Io {
                detail: "the agent's send queue is full".into(),
            })
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(LinkError::Disconnected),
    }
}

impl Drop for ReportServer {
    /// Without `shutdown`: stop at once (like a crash, but without leaving tasks behind).
    fn drop(&mut self) {
        drop(self.close_registry());
        let _ = self.stop.send(true);
        if let Some(task) = lock(&self.accept_task).take() {
            task.abort();
        }
        self.endpoint.close(
            quinn::VarInt::from_u32(CloseCode::ServerShutdown.code()),
            b"server stopped",
        );
    }
}

#[async_trait::async_trait]
impl ReportSource for ReportServer {
    async fn next_event(&self) -> Option<LinkEvent> {
        let mut stopped = self.stop.subscribe();
        let mut events = self.events.lock().await;
        loop {
            if *stopped.borrow_and_update() {
                return None;
            }
            let queued = tokio::select! {
                queued = events.recv() => queued?,
                _ = stopped.changed() => return None,
            };
            let registry = lock(&self.shared.registry);
            if registry.closing {
                return None;
            }
            let LinkEvent::Message {
                connection,
                agent,
                message: FromAgent::Results { seq, .. },
            } = &queued.event
            else {
                return Some(queued.event);
            };
            let key = InstanceKey {
                agent: agent.clone(),
                instance_id: queued.instance_id,
            };
            let first = lock(&self.shared.dedup).first_delivery(&key, *seq);
            if let Some(registered) = registry.connections.get(connection)
                && let Ok(ack) =
                    encode_to_agent(registered.protocol, &ToAgent::Ack { seq: *seq }, usize::MAX)
            {
                // A lost ack only means a resend, which is recognised below next time.
                let _ = queue_on(&self.shared, *connection, registered, ack);
            }
            if first {
                return Some(queued.event);
            }
            bump(&self.shared.counters.duplicate_batches);
            tracing::debug!(%connection, seq, "duplicate result batch acknowledged again");
        }
    }

    async fn send_to(&self, connection: ConnectionId, msg: ToAgent) -> Result<(), LinkError> {
        let protocol = lock(&self.shared.registry)
            .connections
            .get(&connection)
            .map(|registered| registered.protocol)
            .ok_or(LinkError::Disconnected)?;
        let frame = encode_to_agent(
            protocol,
            &msg,
            self.shared.config.limits.max_frame_len_bytes,
        )
        .map_err(|e| LinkError::Protocol {
            detail: format!("cannot send {} to {connection}: {e}", msg.kind()),
        })?;
        self.queue_frame(connection, frame)
    }

    fn close(&self, connection: ConnectionId, reason: &str) {
        let registry = lock(&self.shared.registry);
        if let Some(registered) = registry.connections.get(&connection) {
            bump(&self.shared.counters.protocol_errors);
            tracing::warn!(%connection, %reason, "closing the connection");
            close(&registered.conn, CloseCode::Protocol, reason);
        }
    }

    async fn shutdown(&self) {
        ReportServer::shutdown(self).await;
    }

    fn duplicate_batches(&self) -> u64 {
        self.stats().duplicate_batches
    }
}

/// Accepts connections until told to stop; then aborts every connection's reading task.
async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tasks = JoinSet::new();
    let mut sources = SourceLimiter::new(&shared.config.admission, Instant::now());
    let mut summaries = tokio::time::interval(PEER_LOG_TICK);
    summaries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let Some((incoming, slot)) = admit(&shared, &mut sources, incoming) else {
                    continue;
                };
                let shared = Arc::clone(&shared);
                tasks.spawn(async move {
                    serve(&shared, incoming, slot).await;
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = summaries.tick() => shared.peer_log.write_due_summaries(Instant::now()),
            _ = stop.changed() => break,
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// Decides a connection attempt before any TLS (`admission::decide`): a place in the
/// handshake budget, or a Retry or a refusal sent at once (counted, and logged within the
/// peer-line rate limit).
fn admit(
    shared: &Arc<Shared>,
    sources: &mut SourceLimiter,
    incoming: quinn::Incoming,
) -> Option<(quinn::Incoming, HandshakeSlot)> {
    let now = Instant::now();
    let limits = shared.config.admission;
    let remote = incoming.remote_address();
    let load = shared.load();
    let validated = incoming.remote_address_validated();
    let decision = admission::decide(&limits, load, validated, || sources.take(remote.ip(), now));
    let refusal = match decision {
        Admission::Accept { validated } => {
            return Some((incoming, HandshakeSlot::take(shared, validated)));
        }
        Admission::Retry => {
            bump(&shared.counters.retries);
            // An unvalidated attempt may always be retried; should quinn say otherwise,
            // dropping it silently is as cheap.
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            if let Some(suppressed) = shared.peer_log.admit(PeerLine::Retry, now) {
                tracing::info!(
                    handshakes = load.handshakes,
                    unvalidated_handshakes = load.unvalidated_handshakes,
                    suppressed,
                    "many connection attempts: answering those from unvalidated addresses with \
                     a Retry (address validation)"
                );
            }
            return None;
        }
        Admission::Refuse(refusal) => refusal,
    };
    let (counter, kind, why) = match refusal {
        Refusal::Capacity => (
            &shared.counters.refused_capacity,
            PeerLine::RefusedCapacity,
            "too many connections",
        ),
        Refusal::Busy => (
            &shared.counters.refused_busy,
            PeerLine::RefusedBusy,
            "too many handshakes at once",
        ),
        Refusal::RateLimited => (
            &shared.counters.refused_rate_limited,
            PeerLine::RefusedRateLimited,
            "this source started too many handshakes",
        ),
    };
    incoming.refuse();
    bump(counter);
    if let Some(suppressed) = shared.peer_log.admit(kind, now) {
        tracing::warn!(
            %remote,
            max_connections = limits.max_connections,
            max_handshakes = limits.max_handshakes,
            suppressed,
            "connection refused: {why}"
        );
    }
    None
}

/// One connection: handshake, then read frames into the event queue until it ends.
/// The handshake holds `handshake` (a place in the handshake budget) until the `Hello` is
/// accepted or refused; an accepted connection holds one of the `max_connections` places.
async fn serve(shared: &Arc<Shared>, incoming: quinn::Incoming, handshake: HandshakeSlot) {
    let accepted = handshake::accept(shared, incoming).await;
    drop(handshake);
    let Some(Accepted {
        conn,
        send,
        recv,
        hello,
        slot: _connection_slot,
    }) = accepted
    else {
        return;
    };
    // Authenticated: the whole receive window (it was only room for the Hello).
    conn.set_receive_window(quinn::VarInt::from_u32(
        shared.config.limits.receive_window_bytes,
    ));
    let connection = ConnectionId(shared.next_connection_id.fetch_add(1, Ordering::Relaxed));
    let remote = conn.remote_address();
    let (frames_tx, frames_rx) = mpsc::channel(shared.config.send_queue_len.max(2));
    let Ok(welcome) = handshake::welcome_frame(&hello) else {
        return;
    };
    let protocol = hello.welcome.protocol_version;
    let _ = frames_tx.try_send(welcome);
    {
        let mut registry = lock(&shared.registry);
        if registry.closing {
            close(&conn, CloseCode::ServerShutdown, "server shutting down");
            return;
        }
        let writer = tokio::spawn(write_loop(send, frames_rx, conn.clone()));
        registry.connections.insert(
            connection,
            Registered {
                conn: conn.clone(),
                protocol,
                frames: frames_tx,
                writer,
            },
        );
    }
    bump(&shared.counters.accepted);
    tracing::info!(
        %connection,
        agent = %hello.agent,
        version = %hello.version,
        %protocol,
        %remote,
        "agent connected"
    );
    let agent = hello.agent.clone();
    let instance_id = hello.instance_id;
    let connected = LinkEvent::Connected {
        connection,
        agent: agent.clone(),
        version: hello.version,
        observed_addr: remote,
        capabilities: hello.capabilities,
        instance: instance_id,
    };
    let announced = shared
        .events
        .send(Queued {
            event: connected,
            instance_id,
        })
        .await
        .is_ok();
    if announced {
        let peer = Peer {
            connection,
            agent: &agent,
            instance_id,
            protocol,
        };
        read_agent(shared, &conn, &peer, recv).await;
    }
    // Dropping the frame sender lets the writer finish the stream.
    lock(&shared.registry).connections.remove(&connection);
    if announced {
        let _ = shared
            .events
            .send(Queued {
                event: LinkEvent::Disconnected { connection, agent },
                instance_id,
            })
            .await;
    }
}

/// Who an authenticated connection is.
struct Peer<'a> {
    connection: ConnectionId,
    agent: &'a AgentId,
    instance_id: u64,
    protocol: ProtocolVersion,
}

/// Reads an authenticated agent's frames into the event queue until the connection ends or
/// breaks the protocol (then it is closed with code `Protocol`).
async fn read_agent(shared: &Shared, conn: &Connection, peer: &Peer<'_>, recv: quinn::RecvStream) {
    let Peer {
        connection,
        agent,
        instance_id,
        protocol,
    } = *peer;
    let mut reader = FrameReader::new(recv, shared.config.limits.max_frame_len_bytes);
    loop {
        match reader
            .next(|body| decode_from_agent(protocol, body, agent))
            .await
        {
            Ok(Some(message)) => {
                let event = LinkEvent::Message {
                    connection,
                    agent: agent.clone(),
                    message,
                };
                if shared
                    .events
                    .send(Queued { event, instance_id })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(None) => {
                tracing::info!(%connection, %agent, "agent finished its stream");
                close(conn, CloseCode::Done, "");
                return;
            }
            Err(FrameError::Read(e)) => {
                tracing::info!(%connection, %agent, error = %e, "agent disconnected");
                return;
            }
            Err(e @ (FrameError::Wire(_) | FrameError::Truncated { .. })) => {
                protocol_error(shared, conn, connection, agent, &e.to_string());
                return;
            }
        }
    }
}

fn protocol_error(
    shared: &Shared,
    conn: &Connection,
    connection: ConnectionId,
    agent: &AgentId,
    detail: &str,
) {
    bump(&shared.counters.protocol_errors);
    tracing::warn!(%connection, %agent, error = detail, "protocol violation: closing the connection");
    close(
        conn,
        CloseCode::Protocol,
        &format!("protocol violation: {detail}"),
    );
}

/// Writes queued frames (coalescing what is waiting) until every sender is gone; then finishes
/// the stream and waits for the agent to hang up.
async fn write_loop(mut send: SendStream, mut frames: mpsc::Receiver<Vec<u8>>, conn: Connection) {
    while let Some(mut chunk) = frames.recv().await {
        while chunk.len() < WRITE_COALESCE_BYTES
            && let Ok(more) = frames.try_recv()
        {
            chunk.extend_from_slice(&more);
        }
        if let Err(e) = send.write_all(&chunk).await {
            tracing::debug!(error = %e, "writing to an agent failed");
            return;
        }
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, conn.closed()).await;
    close(
        &conn,
        CloseCode::ServerShutdown,
        "server finished the stream",
    );
}
