//! An in-memory network between agents' links ([`MemoryServerLink`], port `ServerLink`) and
//! one server at a time ([`MemoryReportSource`], port `ReportSource`): the link without QUIC,
//! for whole agent-and-server sessions in a test's virtual time.
//!
//! It keeps the link's promises with the link's own parts: results go through core's
//! [`Outbox`] and its encoded frames, the server decodes and validates them with
//! `core::wire`, deduplicates them with core's [`Deduplicator`] and acknowledges a batch when
//! `next_event` hands it out; unacknowledged batches are resent after every reconnection;
//! messages both ways are encoded and decoded frames. What it leaves out is the transport:
//! no TLS, no token, no timers (an agent's link reconnects as soon as a server serves, and
//! `drain` waits while connected, whatever its timeout).
//!
//! A test drives the network: [`MemoryNetwork::serve`] starts a server (a restart is a
//! `shutdown` of the old one, or a crash: `serve` while it still runs), [`MemoryServerLink::cut`]
//! loses one agent's connection.

use std::collections::{BTreeMap, VecDeque};
use std::future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use super::lock;
use crate::delivery::{Deduplicator, Outbox, OutboxConfig, OutboxStats};
use crate::link::{Capabilities, FromAgent, FromServer, ToAgent};
use crate::model::{AgentId, AgentVersion, ProbeResult};
use crate::ports::{ConnectionId, LinkError, LinkEvent, ReportSource, ServerLink};
use crate::wire::{
    DEFAULT_MAX_FRAME_LEN, FromServerError, LEN_PREFIX_BYTES, ProbeResultV1, ProtocolVersion,
    WireError, decode_from_agent, decode_from_server, encode_to_agent, encode_to_server,
};

/// The network: create links and servers from it.
#[derive(Clone, Debug, Default)]
pub struct MemoryNetwork {
    net: Arc<Mutex<Net>>,
}

#[derive(Debug, Default)]
struct Net {
    agents: Vec<AgentEnd>,
    /// Servers by generation; the last one that is not shut down serves.
    servers: Vec<ServerEnd>,
    next_connection: u64,
    wakers: Vec<Waker>,
    /// Frames wait in transit (the server hands nothing out after the first one).
    delivery_paused: bool,
}

#[derive(Debug)]
struct AgentEnd {
    agent: AgentId,
    version: AgentVersion,
    capabilities: Capabilities,
    observed_addr: SocketAddr,
    instance_id: u64,
    outbox: Outbox,
    incoming: VecDeque<Result<FromServer, LinkError>>,
    /// The server generation and connection it is connected on.
    connection: Option<(usize, ConnectionId)>,
    closed: bool,
    sent: Vec<FromAgent>,
    /// Acknowledgements never reach this agent.
    acks_lost: bool,
}

#[derive(Debug)]
struct ServerEnd {
    server_version: String,
    inbound: VecDeque<Inbound>,
    connections: BTreeMap<ConnectionId, usize>,
    dedup: Deduplicator<u64>,
    duplicate_batches: u64,
    shut_down: bool,
}

/// What reaches the server, in order.
#[derive(Debug)]
enum Inbound {
    Event(LinkEvent),
    /// A frame from the agent at this index, on this connection.
    Frame {
        connection: ConnectionId,
        agent: usize,
        frame: Vec<u8>,
    },
}

impl AgentEnd {
    /// The protocol version of this agent's connections.
    fn protocol(&self) -> ProtocolVersion {
        ProtocolVersion::from_u16(self.capabilities.protocol_version).unwrap_or(ProtocolVersion::V1)
    }
}

impl Net {
    fn wake_all(&mut self) {
        self.wakers.drain(..).for_each(Waker::wake);
    }

    fn wait(&mut self, waker: &Waker) {
        if !self.wakers.iter().any(|w| w.will_wake(waker)) {
            self.wakers.push(waker.clone());
        }
    }

    /// The generation that serves now.
    fn serving(&self) -> Option<usize> {
        self.servers.iter().rposition(|server| !server.shut_down)
    }

    /// Ends agent `index`'s connection, if any: the agent reads `why` (when given), the
    /// server a `Disconnected`.
    fn disconnect(&mut self, index: usize, why: Option<LinkError>) {
        let Some((generation, connection)) = self.agents[index].connection.take() else {
            return;
        };
        if let Some(why) = why {
            self.agents[index].incoming.push_back(Err(why));
        }
        let agent = self.agents[index].agent.clone();
        let server = &mut self.servers[generation];
        server.connections.remove(&connection);
        server
            .inbound
            .push_back(Inbound::Event(LinkEvent::Disconnected {
                connection,
                agent,
            }));
        self.wake_all();
    }

    /// Connects agent `index` to the serving server, if there is one and it is not connected.
    fn connect(&mut self, index: usize) {
        if self.agents[index].connection.is_some() || self.agents[index].closed {
            return;
        }
        let Some(generation) = self.serving() else {
            return;
        };
        self.next_connection += 1;
        let connection = ConnectionId(self.next_connection);
        let end = &mut self.agents[index];
        end.connection = Some((generation, connection));
        end.outbox.reconnected();
        let server_version = self.servers[generation].server_version.clone();
        end.incoming.push_back(Ok(FromServer::Welcomed {
            server_version,
            // The server offers no feature (as the real one before tasks exist).
            capabilities: Capabilities {
                protocol_version: end.capabilities.protocol_version,
                features: std::collections::BTreeSet::new(),
            },
            observed_addr: end.observed_addr,
        }));
        let event = LinkEvent::Connected {
            connection,
            agent: end.agent.clone(),
            version: end.version.clone(),
            observed_addr: end.observed_addr,
            capabilities: end.capabilities.clone(),
            instance: end.instance_id,
        };
        let server = &mut self.servers[generation];
        server.connections.insert(connection, index);
        server.inbound.push_back(Inbound::Event(event));
        self.flush(index);
        self.wake_all();
    }

    /// Sends agent `index`'s outbox frames on its connection.
    fn flush(&mut self, index: usize) {
        let Some((generation, connection)) = self.agents[index].connection else {
            return;
        };
        while let Some(batch) = self.agents[index].outbox.next_frame() {
            self.servers[generation].inbound.push_back(Inbound::Frame {
                connection,
                agent: index,
                frame: batch.frame,
            });
        }
        self.wake_all();
    }

    /// Delivers a frame from the server to agent `index`, as its link would decode it.
    fn deliver(&mut self, index: usize, frame: &[u8]) {
        let body = frame.get(LEN_PREFIX_BYTES..).unwrap_or_default();
        let word = match decode_from_server(self.agents[index].protocol(), body) {
            Ok(ToAgent::Ack { .. }) if self.agents[index].acks_lost => return,
            Ok(ToAgent::Ack { seq }) => {
                self.agents[index].outbox.ack(seq);
                self.flush(index);
                self.wake_all();
                return;
            }
            Ok(message) => Ok(FromServer::Message(message)),
            Err(FromServerError::InvalidPool { revision, error }) => {
                let (field, reason) = match error {
                    WireError::Invalid { field, reason } => (field, reason),
                    other => (String::new(), other.to_string()),
                };
                Ok(FromServer::InvalidPool {
                    revision,
                    field,
                    reason,
                })
            }
            Err(FromServerError::Wire(error)) => Err(protocol(&error)),
        };
        self.agents[index].incoming.push_back(word);
        self.wake_all();
    }
}

fn protocol(error: &WireError) -> LinkError {
    LinkError::Protocol {
        detail: error.to_string(),
    }
}

impl MemoryNetwork {
    /// A network with no server and no agent.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a server; agents connect to it at their next `recv`. A server still serving
    /// is taken down as by a crash: its agents lose their connections (they resend what it
    /// had not acknowledged) and its `next_event` ends.
    #[must_use]
    pub fn serve(&self, server_version: &str) -> MemoryReportSource {
        let mut net = lock(&self.net);
        if let Some(running) = net.serving() {
            let crashed: Vec<usize> = net.servers[running].connections.values().copied().collect();
            for index in crashed {
                let lost = LinkError::Io {
                    detail: "the server went away".into(),
                };
                net.disconnect(index, Some(lost));
            }
            net.servers[running].shut_down = true;
        }
        net.servers.push(ServerEnd {
            server_version: server_version.to_owned(),
            inbound: VecDeque::new(),
            connections: BTreeMap::new(),
            dedup: Deduplicator::new(1_024, 1_024),
            duplicate_batches: 0,
            shut_down: false,
        });
        let generation = net.servers.len() - 1;
        net.wake_all();
        MemoryReportSource {
            net: Arc::clone(&self.net),
            generation,
        }
    }

    /// Holds every frame in transit (`true`: the server hands out no message, so nothing is
    /// acknowledged) or lets them through again.
    pub fn pause_delivery(&self, paused: bool) {
        let mut net = lock(&self.net);
        net.delivery_paused = paused;
        net.wake_all();
    }

    /// The link of a new agent process `agent` (each call is a new instance: a restarted
    /// agent), seen by servers at `observed_addr`.
    #[must_use]
    pub fn link(
        &self,
        agent: AgentId,
        version: AgentVersion,
        capabilities: Capabilities,
        observed_addr: SocketAddr,
    ) -> MemoryServerLink {
        let mut net = lock(&self.net);
        let index = net.agents.len();
        net.agents.push(AgentEnd {
            agent,
            version,
            capabilities,
            observed_addr,
            instance_id: index as u64 + 1,
            outbox: Outbox::new(OutboxConfig::default()),
            incoming: VecDeque::new(),
            connection: None,
            closed: false,
            sent: Vec::new(),
            acks_lost: false,
        });
        MemoryServerLink {
            net: Arc::clone(&self.net),
            index,
        }
    }
}

/// An agent's link on a [`MemoryNetwork`].
#[derive(Clone, Debug)]
pub struct MemoryServerLink {
    net: Arc<Mutex<Net>>,
    index: usize,
}

impl MemoryServerLink {
    /// Loses the connection (a network failure): the agent's `recv` reports it, the server
    /// sees `Disconnected`, and the link reconnects at the next `recv`.
    pub fn cut(&self) {
        let lost = LinkError::Io {
            detail: "connection lost".into(),
        };
        lock(&self.net).disconnect(self.index, Some(lost));
    }

    /// Loses every acknowledgement on its way to this agent (`true`), as a connection that
    /// dies before the server's acknowledgements are written does: after a reconnection the
    /// agent resends batches the server already has, which it must recognise.
    pub fn lose_acks(&self, lost: bool) {
        lock(&self.net).agents[self.index].acks_lost = lost;
    }

    /// Whether the link has a connection now.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        lock(&self.net).agents[self.index].connection.is_some()
    }

    /// The control messages sent, in order.
    #[must_use]
    pub fn sent(&self) -> Vec<FromAgent> {
        lock(&self.net).agents[self.index].sent.clone()
    }

    /// The outbox's counters.
    #[must_use]
    pub fn outbox(&self) -> OutboxStats {
        lock(&self.net).agents[self.index].outbox.stats()
    }
}

#[async_trait::async_trait]
impl ServerLink for MemoryServerLink {
    fn acknowledged_results(&self) -> u64 {
        lock(&self.net).agents[self.index]
            .outbox
            .stats()
            .acked_results
    }

    fn enqueue_results(&self, results: Vec<ProbeResult>) {
        let mut net = lock(&self.net);
        net.agents[self.index]
            .outbox
            .push(results.iter().map(ProbeResultV1::from));
        net.flush(self.index);
    }

    async fn send(&self, msg: FromAgent) -> Result<(), LinkError> {
        if matches!(msg, FromAgent::Results { .. }) {
            return Err(LinkError::Protocol {
                detail: "results go through enqueue_results".into(),
            });
        }
        let mut net = lock(&self.net);
        let Some((generation, connection)) = net.agents[self.index].connection else {
            return Err(LinkError::Disconnected);
        };
        let version = net.agents[self.index].protocol();
        let frame =
            encode_to_server(version, &msg, DEFAULT_MAX_FRAME_LEN).map_err(|e| protocol(&e))?;
        net.agents[self.index].sent.push(msg);
        net.servers[generation].inbound.push_back(Inbound::Frame {
            connection,
            agent: self.index,
            frame,
        });
        net.wake_all();
        Ok(())
    }

    async fn recv(&self) -> Result<FromServer, LinkError> {
        future::poll_fn(|cx| {
            let mut net = lock(&self.net);
            if let Some(word) = net.agents[self.index].incoming.pop_front() {
                return Poll::Ready(word);
            }
            if net.agents[self.index].closed {
                return Poll::Ready(Err(LinkError::Disconnected));
            }
            net.connect(self.index);
            if let Some(word) = net.agents[self.index].incoming.pop_front() {
                return Poll::Ready(word);
            }
            net.wait(cx.waker());
            Poll::Pending
        })
        .await
    }

    async fn drain(&self, _timeout: Duration) -> bool {
        future::poll_fn(|cx| {
            let mut net = lock(&self.net);
            let end = &net.agents[self.index];
            if end.outbox.is_empty() || end.connection.is_none() {
                return Poll::Ready(end.outbox.is_empty());
            }
            net.wait(cx.waker());
            Poll::Pending
        })
        .await
    }

    async fn close(&self) {
        let mut net = lock(&self.net);
        net.disconnect(self.index, None);
        net.agents[self.index].closed = true;
        net.wake_all();
    }
}

/// A server's side of a [`MemoryNetwork`].
#[derive(Debug)]
pub struct MemoryReportSource {
    net: Arc<Mutex<Net>>,
    generation: usize,
}

impl MemoryReportSource {
    /// Agents connected now.
    #[must_use]
    pub fn connections(&self) -> usize {
        lock(&self.net).servers[self.generation].connections.len()
    }

    /// Hands out the next inbound item as an event, or `None` when nothing is due yet
    /// (a duplicate batch is acknowledged and skipped).
    fn take(net: &mut Net, generation: usize) -> Option<Option<LinkEvent>> {
        let queue = &mut net.servers[generation].inbound;
        if net.delivery_paused && matches!(queue.front(), Some(Inbound::Frame { .. })) {
            return None;
        }
        let inbound = queue.pop_front()?;
        let (connection, index, frame) = match inbound {
            Inbound::Event(event) => return Some(Some(event)),
            Inbound::Frame {
                connection,
                agent,
                frame,
            } => (connection, agent, frame),
        };
        // A frame still queued from a connection that ended is gone with it.
        if !net.servers[generation]
            .connections
            .contains_key(&connection)
        {
            return Some(None);
        }
        let agent = net.agents[index].agent.clone();
        let body = frame.get(LEN_PREFIX_BYTES..).unwrap_or_default();
        let decoded = decode_from_agent(net.agents[index].protocol(), body, &agent);
        let message = match decoded {
            Ok(message) => message,
            Err(error) => {
                let why = LinkError::Protocol {
                    detail: error.to_string(),
                };
                net.disconnect(index, Some(why));
                return Some(None);
            }
        };
        if let FromAgent::Results { seq, .. } = &message {
            let seq = *seq;
            let instance = net.agents[index].instance_id;
            let first = net.servers[generation].dedup.first_delivery(&instance, seq);
            let version = net.agents[index].protocol();
            if let Ok(ack) = encode_to_agent(version, &ToAgent::Ack { seq }, usize::MAX) {
                net.deliver(index, &ack);
            }
            if !first {
                net.servers[generation].duplicate_batches += 1;
                return Some(None);
            }
        }
        Some(Some(LinkEvent::Message {
            connection,
            agent,
            message,
        }))
    }
}

#[async_trait::async_trait]
impl ReportSource for MemoryReportSource {
    async fn next_event(&self) -> Option<LinkEvent> {
        future::poll_fn(|cx| {
            let mut net = lock(&self.net);
            loop {
                match Self::take(&mut net, self.generation) {
                    Some(Some(event)) => return Poll::Ready(Some(event)),
                    Some(None) => {}
                    None if net.servers[self.generation].shut_down => return Poll::Ready(None),
                    None => break,
                }
            }
            net.wait(cx.waker());
            Poll::Pending
        })
        .await
    }

    async fn send_to(&self, connection: ConnectionId, msg: ToAgent) -> Result<(), LinkError> {
        let mut net = lock(&self.net);
        let Some(&index) = net.servers[self.generation].connections.get(&connection) else {
            return Err(LinkError::Disconnected);
        };
        let version = net.agents[index].protocol();
        let frame =
            encode_to_agent(version, &msg, DEFAULT_MAX_FRAME_LEN).map_err(|e| protocol(&e))?;
        net.deliver(index, &frame);
        Ok(())
    }

    fn close(&self, connection: ConnectionId, reason: &str) {
        let mut net = lock(&self.net);
        if let Some(&index) = net.servers[self.generation].connections.get(&connection) {
            let why = LinkError::Protocol {
                detail: reason.to_owned(),
            };
            net.disconnect(index, Some(why));
        }
    }

    async fn shutdown(&self) {
        let mut net = lock(&self.net);
        let connected: Vec<usize> = net.servers[self.generation]
            .connections
            .values()
            .copied()
            .collect();
        for index in connected {
            net.disconnect(index, Some(LinkError::Disconnected));
        }
        net.servers[self.generation].shut_down = true;
        net.wake_all();
    }

    fn duplicate_batches(&self) -> u64 {
        lock(&self.net).servers[self.generation].duplicate_batches
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use pollster::block_on;

    use super::*;
    use crate::model::{IcmpResult, ProbeOutcome, Region, UnixMillis};

    fn agent() -> AgentId {
        AgentId::new(
            Region::new("eu").expect("region"),
            IpAddr::from([198, 18, 0, 1]),
        )
    }

    fn result(round: u64) -> ProbeResult {
        ProbeResult {
            source: agent(),
            target_region: Region::new("us").expect("region"),
            target: "198.18.1.1".into(),
            round_start: UnixMillis(round),
            outcome: ProbeOutcome::Icmp(IcmpResult::measured(
                Duration::ZERO,
                1,
                &[Duration::from_millis(2)],
            )),
        }
    }

    fn next(source: &MemoryReportSource) -> LinkEvent {
        block_on(source.next_event()).expect("an event")
    }

    #[test]
    fn results_are_delivered_once_acknowledged_and_resent_after_a_cut() {
        let network = MemoryNetwork::new();
        let server = network.serve("test");
        let link = network.link(
            agent(),
            AgentVersion::new("1.0.0"),
            Capabilities::v1(),
            SocketAddr::from(([203, 0, 113, 9], 40_000)),
        );
        let welcomed = block_on(link.recv()).expect("welcomed");
        assert!(
            matches!(welcomed, FromServer::Welcomed { observed_addr, .. }
            if observed_addr.ip() == IpAddr::from([203, 0, 113, 9]))
        );
        assert!(matches!(next(&server), LinkEvent::Connected { .. }));

        link.enqueue_results(vec![result(1_000)]);
        let LinkEvent::Message {
            message: FromAgent::Results { seq, results },
            ..
        } = next(&server)
        else {
            panic!("results expected");
        };
        assert_eq!((seq, results), (1, vec![result(1_000)]));
        assert!(block_on(link.drain(Duration::ZERO)), "acknowledged");

        // Delivered while the connection is lost: resent after the reconnection, once.
        link.enqueue_results(vec![result(2_000)]);
        link.cut();
        assert!(block_on(link.recv()).is_err());
        assert!(matches!(next(&server), LinkEvent::Disconnected { .. }));
        assert!(matches!(
            block_on(link.recv()),
            Ok(FromServer::Welcomed { .. })
        ));
        assert!(matches!(next(&server), LinkEvent::Connected { .. }));
        assert!(matches!(
            next(&server),
            LinkEvent::Message {
                message: FromAgent::Results { seq: 2, .. },
                ..
            }
        ));
        assert_eq!(link.outbox().resent_batches, 1);
        assert_eq!(server.duplicate_batches(), 0);

        // A pool sent by the server arrives decoded; a shut-down server ends its events.
        let connection = match next_connected(&server, &link) {
            Some(connection) => connection,
            None => panic!("connected"),
        };
        block_on(server.send_to(
            connection,
            ToAgent::Pool {
                revision: 3,
                configs: Arc::new(Vec::new()),
            },
        ))
        .expect("sent");
        assert!(matches!(
            block_on(link.recv()),
            Ok(FromServer::Message(ToAgent::Pool { revision: 3, .. }))
        ));
        block_on(server.shutdown());
        assert!(matches!(next(&server), LinkEvent::Disconnected { .. }));
        assert_eq!(block_on(server.next_event()), None);
        assert!(!link.is_connected());
    }

    /// The connection the link holds on `server`.
    fn next_connected(
        server: &MemoryReportSource,
        link: &MemoryServerLink,
    ) -> Option<ConnectionId> {
        let net = lock(&server.net);
        net.agents[link.index]
            .connection
            .map(|(_, connection)| connection)
    }
}
