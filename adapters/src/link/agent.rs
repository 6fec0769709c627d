//! The agent's end of the link: [`AgentLink`], port `ServerLink`.
//!
//! A background task keeps one connection to the server: it connects (module `session`),
//! runs the connection until it ends, waits with exponential backoff and jitter, and connects
//! again, forever, until the link is closed or dropped. Results go into the [`Outbox`] whatever
//! the connection's state. What to say and when (heartbeats, pool requests, refusals) is the
//! agent's (`core::agent::AgentState`); the link carries it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use probermesh_core::delivery::{Outbox, OutboxStats};
use probermesh_core::link::{FromAgent, FromServer};
use probermesh_core::model::ProbeResult;
use probermesh_core::ports::{LinkError, ServerLink};
use probermesh_core::wire::borrowed::OutgoingResult;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use super::backoff::Backoff;
use super::config::AgentLinkConfig;
use super::session::{self, SessionEnd};
use super::tls::{TlsSetupError, client_crypto};

/// Control messages waiting to be written.
const CONTROL_QUEUE_LEN: usize = 64;
/// How often [`AgentLink::drain`] looks at the outbox.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Why the agent's link could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentSetupError {
    /// The TLS configuration could not be built (an unusable CA file, …).
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// `AgentLink::start` was called outside a tokio runtime.
    #[error("the agent link needs a running tokio runtime")]
    NoRuntime,
}

/// Counters of an agent's link.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct AgentLinkStats {
    /// The result buffer.
    pub outbox: OutboxStats,
    /// Whether a connection is up now.
    pub connected: bool,
    /// Connections that passed the handshake.
    pub connections: u64,
    /// Connection attempts or connections that failed.
    pub failures: u64,
}

/// State shared by the link handle, the supervisor and the session tasks.
#[derive(Debug)]
pub(crate) struct AgentShared {
    outbox: Mutex<Outbox<OutgoingResult>>,
    /// Woken when results are added or acknowledged.
    pub(crate) outbox_changed: Notify,
    connected: AtomicBool,
    connections: AtomicU64,
    failures: AtomicU64,
    inbox: mpsc::Sender<Result<FromServer, LinkError>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AgentShared {
    pub(crate) fn outbox(&self) -> MutexGuard<'_, Outbox<OutgoingResult>> {
        lock(&self.outbox)
    }

    /// Hands a message or an error to `recv`; dropped (and logged) when nobody reads.
    pub(crate) fn forward(&self, item: Result<FromServer, LinkError>) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.inbox.try_send(item) {
            tracing::warn!("the agent does not read messages from the server link; one dropped");
        }
    }
}

/// The agent's end of the link (port `ServerLink`). Dropping it stops the link at once;
/// [`AgentLink::close`] stops it cleanly.
#[derive(Debug)]
pub struct AgentLink {
    shared: Arc<AgentShared>,
    control: mpsc::Sender<FromAgent>,
    inbox: tokio::sync::Mutex<mpsc::Receiver<Result<FromServer, LinkError>>>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl AgentLink {
    /// Starts the link: builds the TLS configuration (an insecure one logs a warning now) and
    /// spawns, on the current tokio runtime, the task that connects and reconnects.
    ///
    /// # Errors
    /// [`AgentSetupError::Tls`] for an unusable CA file, [`AgentSetupError::NoRuntime`]
    /// outside a tokio runtime.
    pub fn start(config: AgentLinkConfig) -> Result<Self, AgentSetupError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| AgentSetupError::NoRuntime)?;
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(client_crypto(&config.verification)?)
                .map_err(|e| TlsSetupError::Quic(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        // The server opens no stream on the agent.
        client.transport_config(config.limits.transport(0));
        let (inbox_tx, inbox_rx) = mpsc::channel(config.inbox_len.max(1));
        let shared = Arc::new(AgentShared {
            outbox: Mutex::new(Outbox::new(config.outbox)),
            outbox_changed: Notify::new(),
            connected: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            inbox: inbox_tx,
        });
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE_LEN);
        let (stop, stop_rx) = watch::channel(false);
        let task = runtime.spawn(supervise(
            Arc::clone(&shared),
            config,
            client,
            control_rx,
            stop_rx,
        ));
        Ok(Self {
            shared,
            control: control_tx,
            inbox: tokio::sync::Mutex::new(inbox_rx),
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> AgentLinkStats {
        AgentLinkStats {
            outbox: self.shared.outbox().stats(),
            connected: self.shared.connected.load(Ordering::Relaxed),
            connections: self.shared.connections.load(Ordering::Relaxed),
            failures: self.shared.failures.load(Ordering::Relaxed),
        }
    }

    /// Waits until every result handed to the link is acknowledged by the server, or until
    /// `timeout` has passed (the server may be away), and returns the counters then. A
    /// graceful stop calls it before [`Self::close`].
    pub async fn drain(&self, timeout: Duration) -> AgentLinkStats {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.shared.outbox().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        self.stats()
    }

    /// Stops the link: closes the connection (code `Done`) and ends the background task.
    /// Results not acknowledged yet are lost with the process (see [`Self::drain`]).
    pub async fn close(&self) {
        let _ = self.stop.send(true);
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for AgentLink {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

#[async_trait::async_trait]
impl ServerLink for AgentLink {
    fn acknowledged_results(&self) -> u64 {
        self.shared.outbox().stats().acked_results
    }

    fn enqueue_results(&self, results: Vec<ProbeResult>) {
        if results.is_empty() {
            return;
        }
        let (dropped, stats) = {
            let mut outbox = self.shared.outbox();
            // Held as they are and encoded in place: no DTO per result.
            let dropped = outbox.push(results.into_iter().map(OutgoingResult));
            (dropped, outbox.stats())
        };
        if dropped > 0 {
            tracing::warn!(
                dropped,
                dropped_total = stats.dropped_results,
                buffered = stats.buffered_results,
                "result buffer full (server unreachable?): dropped the oldest results"
            );
        }
        self.shared.outbox_changed.notify_one();
    }

    async fn send(&self, msg: FromAgent) -> Result<(), LinkError> {
        if matches!(msg, FromAgent::Results { .. }) {
            return Err(LinkError::Protocol {
                detail: "results go through enqueue_results".into(),
            });
        }
        if !self.shared.connected.load(Ordering::Relaxed) {
            return Err(LinkError::Disconnected);
        }
        self.control.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => LinkError::Io {
                detail: "the link's control queue is full".into(),
            },
            mpsc::error::TrySendError::Closed(_) => LinkError::Disconnected,
        })
    }

    async fn recv(&self) -> Result<FromServer, LinkError> {
        let mut inbox = self.inbox.lock().await;
        inbox.recv().await.unwrap_or(Err(LinkError::Disconnected))
    }

    async fn drain(&self, timeout: Duration) -> bool {
        AgentLink::drain(self, timeout)
            .await
            .outbox
            .buffered_results
            == 0
    }

    async fn close(&self) {
        AgentLink::close(self).await;
    }
}

/// Connects, runs the connection, backs off, and again, until `stop` fires.
async fn supervise(
    shared: Arc<AgentShared>,
    config: AgentLinkConfig,
    client: quinn::ClientConfig,
    mut control: mpsc::Receiver<FromAgent>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(config.backoff);
    loop {
        let attempt = tokio::select! {
            attempt = session::connect(&config, &client) => attempt,
            _ = stop.changed() => return,
        };
        match attempt {
            Err(e) => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
                match &e {
                    LinkError::Refused { reason } => {
                        tracing::error!(server = %config.server_addr, "the server refused this agent: {reason}");
                    }
                    other => {
                        tracing::warn!(server = %config.server_addr, error = %other, "cannot connect to the server");
                    }
                }
                shared.forward(Err(e));
            }
            Ok(session) => {
                backoff.reset();
                shared.connections.fetch_add(1, Ordering::Relaxed);
                shared.outbox().reconnected();
                shared.connected.store(true, Ordering::Relaxed);
                tracing::info!(
                    server = %config.server_addr,
                    server_version = %session.server_version,
                    protocol = session.capabilities.protocol_version,
                    observed_addr = %session.observed_addr,
                    "connected to the server"
                );
                shared.forward(Ok(FromServer::Welcomed {
                    server_version: session.server_version.clone(),
                    capabilities: session.capabilities.clone(),
                    observed_addr: session.observed_addr,
                }));
                // The close frame goes out even when the endpoint handle is dropped: quinn's
                // driver runs until the closed connection has drained.
                let end = session.run(&shared, &config, &mut control, &mut stop).await;
                shared.connected.store(false, Ordering::Relaxed);
                match end {
                    SessionEnd::Stopped => return,
                    SessionEnd::ServerFinished => {
                        tracing::info!(server = %config.server_addr, "the server closed the link; reconnecting");
                        shared.forward(Err(LinkError::Disconnected));
                    }
                    SessionEnd::Failed(e) => {
                        shared.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(server = %config.server_addr, error = %e, "lost the connection to the server");
                        shared.forward(Err(e));
                    }
                }
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}
