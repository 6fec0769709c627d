//! Fakes of the two ends of the agent link, each on its own: a scripted server for an agent
//! ([`FakeServerLink`]) and a scripted set of agents for a server ([`FakeReportSource`]).

use std::collections::{BTreeSet, VecDeque};
use std::future;
use std::sync::Mutex;
use std::task::{Poll, Waker};
use std::time::Duration;

use super::lock;
use crate::link::{FromAgent, FromServer, ToAgent};
use crate::model::ProbeResult;
use crate::ports::{ConnectionId, LinkError, LinkEvent, ReportSource, ServerLink};

// === FakeServerLink ===

/// A [`ServerLink`] over in-memory queues.
///
/// `recv` takes pushed messages in order. While the queue is empty and the link is connected
/// it waits, as an idle real link does, and wakes when a message is pushed or the link is
/// disconnected; so with `pollster::block_on`, push before receiving.
/// While disconnected, `send` and `recv` fail with [`LinkError::Disconnected`] and nothing is
/// recorded or taken. `enqueue_results` records results whether connected or not (the real link
/// buffers them); the latest pool and the observed address are whatever the test set.
#[derive(Debug, Default)]
pub struct FakeServerLink {
    state: Mutex<LinkState>,
}

#[derive(Debug, Default)]
struct LinkState {
    incoming: VecDeque<FromServer>,
    sent: Vec<FromAgent>,
    enqueued: Vec<ProbeResult>,
    disconnected: bool,
    waiting: Vec<Waker>,
}

impl LinkState {
    fn wake_all(&mut self) {
        self.waiting.drain(..).for_each(Waker::wake);
    }
}

impl FakeServerLink {
    /// A connected link with nothing queued.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a word from the server and wakes a waiting `recv`.
    pub fn push_incoming(&self, msg: FromServer) {
        let mut state = lock(&self.state);
        state.incoming.push_back(msg);
        state.wake_all();
    }

    /// Every message sent while connected, in order.
    #[must_use]
    pub fn sent(&self) -> Vec<FromAgent> {
        lock(&self.state).sent.clone()
    }

    /// Every result enqueued, in order.
    #[must_use]
    pub fn enqueued(&self) -> Vec<ProbeResult> {
        lock(&self.state).enqueued.clone()
    }

    /// Cuts (`true`) or restores (`false`) the link; a waiting `recv` wakes and fails.
    pub fn set_disconnected(&self, disconnected: bool) {
        let mut state = lock(&self.state);
        state.disconnected = disconnected;
        state.wake_all();
    }
}

#[async_trait::async_trait]
impl ServerLink for FakeServerLink {
    fn enqueue_results(&self, results: Vec<ProbeResult>) {
        lock(&self.state).enqueued.extend(results);
    }

    async fn send(&self, msg: FromAgent) -> Result<(), LinkError> {
        if matches!(msg, FromAgent::Results { .. }) {
            return Err(LinkError::Protocol {
                detail: "results go through enqueue_results".into(),
            });
        }
        let mut state = lock(&self.state);
        if state.disconnected {
            return Err(LinkError::Disconnected);
        }
        state.sent.push(msg);
        Ok(())
    }

    async fn drain(&self, _timeout: Duration) -> bool {
        true
    }

    async fn close(&self) {
        self.set_disconnected(true);
    }

    /// The fake acknowledges every result as it is enqueued.
    fn acknowledged_results(&self) -> u64 {
        lock(&self.state).enqueued.len() as u64
    }

    async fn recv(&self) -> Result<FromServer, LinkError> {
        future::poll_fn(|cx| {
            let mut state = lock(&self.state);
            if state.disconnected {
                return Poll::Ready(Err(LinkError::Disconnected));
            }
            if let Some(msg) = state.incoming.pop_front() {
                return Poll::Ready(Ok(msg));
            }
            if !state.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                state.waiting.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

// === FakeReportSource ===

/// A [`ReportSource`] over an in-memory event queue; `next_event` answers `None` as soon as the
/// queue is empty (the source looks closed), so a server loop under test ends by itself; made
/// with [`FakeReportSource::open`] it waits for the next `push_event` instead (until `end`).
/// `send_to` records every message, except to connections marked with `disconnect` (or
/// closed), which fail with [`LinkError::Disconnected`]; `close` records the reason.
#[derive(Debug, Default)]
pub struct FakeReportSource {
    state: Mutex<SourceState>,
}

#[derive(Debug, Default)]
struct SourceState {
    events: VecDeque<LinkEvent>,
    sent: Vec<(ConnectionId, ToAgent)>,
    closed: Vec<(ConnectionId, String)>,
    gone: BTreeSet<ConnectionId>,
    shut_down: bool,
    /// Waits for events instead of ending when the queue is empty.
    stays_open: bool,
    waiting: Vec<std::task::Waker>,
}

impl FakeReportSource {
    /// A source with no events.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A source that waits for events pushed later (a server loop under test runs on until
    /// [`Self::end`]), for tests that need an event to arrive while the server sleeps.
    #[must_use]
    pub fn open() -> Self {
        let source = Self::default();
        lock(&source.state).stays_open = true;
        source
    }

    /// Queues an event (and wakes a waiting `next_event`).
    pub fn push_event(&self, event: LinkEvent) {
        let waiting = {
            let mut state = lock(&self.state);
            state.events.push_back(event);
            std::mem::take(&mut state.waiting)
        };
        waiting.into_iter().for_each(std::task::Waker::wake);
    }

    /// An open source ends: `next_event` answers `None` once the queue is empty.
    pub fn end(&self) {
        let waiting = {
            let mut state = lock(&self.state);
            state.stays_open = false;
            std::mem::take(&mut state.waiting)
        };
        waiting.into_iter().for_each(std::task::Waker::wake);
    }

    /// Every message sent successfully, in order.
    #[must_use]
    pub fn sent_to(&self) -> Vec<(ConnectionId, ToAgent)> {
        lock(&self.state).sent.clone()
    }

    /// Every connection closed, with its reason, in order.
    #[must_use]
    pub fn closed(&self) -> Vec<(ConnectionId, String)> {
        lock(&self.state).closed.clone()
    }

    /// Whether `shutdown` was called.
    #[must_use]
    pub fn is_shut_down(&self) -> bool {
        lock(&self.state).shut_down
    }

    /// Makes every later `send_to(connection, …)` fail with [`LinkError::Disconnected`].
    pub fn disconnect(&self, connection: ConnectionId) {
        lock(&self.state).gone.insert(connection);
    }
}

#[async_trait::async_trait]
impl ReportSource for FakeReportSource {
    async fn next_event(&self) -> Option<LinkEvent> {
        std::future::poll_fn(|cx| {
            let mut state = lock(&self.state);
            if let Some(event) = state.events.pop_front() {
                return Poll::Ready(Some(event));
            }
            if !state.stays_open {
                return Poll::Ready(None);
            }
            if !state.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                state.waiting.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    async fn send_to(&self, connection: ConnectionId, msg: ToAgent) -> Result<(), LinkError> {
        let mut state = lock(&self.state);
        if state.gone.contains(&connection) {
            return Err(LinkError::Disconnected);
        }
        state.sent.push((connection, msg));
        Ok(())
    }

    fn close(&self, connection: ConnectionId, reason: &str) {
        let mut state = lock(&self.state);
        state.gone.insert(connection);
        state.closed.push((connection, reason.to_owned()));
    }

    async fn shutdown(&self) {
        lock(&self.state).shut_down = true;
    }

    fn duplicate_batches(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::net::{IpAddr, SocketAddr};
    use std::pin::pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Wake};

    use pollster::block_on;

    use super::*;
    use crate::model::{AgentId, AgentVersion, Region, UnixMillis};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn server_link_queues_and_records() {
        let ack = |seq| FromServer::Message(ToAgent::Ack { seq });
        let heartbeat = |at| FromAgent::Heartbeat {
            sent_at: UnixMillis(at),
        };
        let link = FakeServerLink::new();
        link.push_incoming(ack(1));
        link.push_incoming(ack(2));
        block_on(link.send(heartbeat(10))).unwrap();
        assert_eq!(block_on(link.recv()), Ok(ack(1)));
        link.set_disconnected(true);
        assert_eq!(block_on(link.recv()), Err(LinkError::Disconnected));
        assert_eq!(
            block_on(link.send(heartbeat(20))),
            Err(LinkError::Disconnected)
        );
        link.set_disconnected(false);
        assert_eq!(block_on(link.recv()), Ok(ack(2)));
        assert_eq!(link.sent(), [heartbeat(10)]);
        assert!(matches!(
            block_on(link.send(FromAgent::Results {
                seq: 1,
                results: vec![]
            })),
            Err(LinkError::Protocol { .. })
        ));
    }

    #[test]
    fn server_link_records_results_while_disconnected_too() {
        let link = FakeServerLink::new();
        link.set_disconnected(true);
        let result = crate::model::ProbeResult {
            source: AgentId::new(Region::new("eu").unwrap(), ip("10.0.0.9")),
            target_region: Region::new("us").unwrap(),
            target: "10.0.0.1".into(),
            round_start: UnixMillis(1),
            outcome: crate::model::ProbeOutcome::Icmp(crate::model::IcmpResult::measured(
                Duration::ZERO,
                1,
                &[],
            )),
        };
        link.enqueue_results(vec![result.clone()]);
        assert_eq!(link.enqueued(), [result]);
    }

    /// Counts how often it is woken.
    #[derive(Debug, Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn server_link_recv_waits_until_a_message_or_a_disconnect() {
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        let link = FakeServerLink::new();

        let mut recv = pin!(link.recv());
        assert!(recv.as_mut().poll(&mut cx).is_pending());
        assert!(recv.as_mut().poll(&mut cx).is_pending());
        link.push_incoming(FromServer::Message(ToAgent::Ack { seq: 5 }));
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "woken once, not per poll"
        );
        assert_eq!(
            recv.as_mut().poll(&mut cx),
            Poll::Ready(Ok(FromServer::Message(ToAgent::Ack { seq: 5 })))
        );

        let mut recv = pin!(link.recv());
        assert!(recv.as_mut().poll(&mut cx).is_pending());
        link.set_disconnected(true);
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
        assert_eq!(
            recv.as_mut().poll(&mut cx),
            Poll::Ready(Err(LinkError::Disconnected))
        );
    }

    #[test]
    fn report_source_drains_events_then_ends() {
        let source = FakeReportSource::new();
        let agent = AgentId::new(Region::new("eu").unwrap(), ip("10.0.0.1"));
        let connected = LinkEvent::Connected {
            connection: ConnectionId(1),
            agent: agent.clone(),
            version: AgentVersion::new("0.1.0"),
            observed_addr: SocketAddr::new(ip("203.0.113.7"), 40_000),
            capabilities: crate::link::Capabilities::v1(),
            instance: 1,
        };
        let message = LinkEvent::Message {
            connection: ConnectionId(1),
            agent,
            message: crate::link::FromAgent::Heartbeat {
                sent_at: UnixMillis(1),
            },
        };
        source.push_event(connected.clone());
        source.push_event(message.clone());
        assert_eq!(block_on(source.next_event()), Some(connected));
        assert_eq!(block_on(source.next_event()), Some(message));
        assert_eq!(block_on(source.next_event()), None);

        block_on(source.send_to(ConnectionId(1), ToAgent::Ack { seq: 1 })).unwrap();
        source.disconnect(ConnectionId(2));
        assert_eq!(
            block_on(source.send_to(ConnectionId(2), ToAgent::Ack { seq: 2 })),
            Err(LinkError::Disconnected)
        );
        source.close(ConnectionId(1), "protocol violation");
        assert_eq!(
            block_on(source.send_to(ConnectionId(1), ToAgent::Ack { seq: 3 })),
            Err(LinkError::Disconnected)
        );
        assert_eq!(
            source.sent_to(),
            [(ConnectionId(1), ToAgent::Ack { seq: 1 })]
        );
        assert_eq!(
            source.closed(),
            [(ConnectionId(1), "protocol violation".to_owned())]
        );
    }
}
