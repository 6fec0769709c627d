//! Hand-written fakes of every port in [`crate::ports`], for the drivers' tests and for users'
//! own (enable the `fake` feature).
//!
//! Each fake answers from a script set up by the test and records what it was asked, so a test
//! can assert both on what the code under test did with the answers and on what it asked for.
//! They use `std::sync::Mutex` only (no runtime), recover from poisoning (a panicking test
//! thread does not hide the record from the assertion that follows), and never block a thread:
//! the only method that waits, [`FakeServerLink`]'s `recv`, waits as a future.
//!
//! ```
//! use probermesh_core::fake::FakeDns;
//! use probermesh_core::ports::{DnsResolver, IpPreference};
//!
//! let dns = FakeDns::new();
//! dns.resolves_to("example.com", "192.0.2.1".parse().unwrap());
//! let found = pollster::block_on(dns.resolve("example.com", IpPreference::default())).unwrap();
//! assert_eq!(found.addr.to_string(), "192.0.2.1");
//! assert!(pollster::block_on(dns.resolve("other.example", IpPreference::default())).is_err());
//! assert_eq!(dns.calls().len(), 2);
//! ```

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::link::{FromAgent, FromServer, ToAgent};
use crate::model::{
    HttpFailure, HttpModule, HttpPhases, HttpResult, HttpUrl, IcmpSettings, ProbeResult,
};
use crate::ports::{
    BinaryUpdater, ConnectionId, DnsFailure, DnsFailureKind, DnsResolver, EchoSeries, ExportError,
    HttpProber, IcmpPinger, IpPreference, LinkError, LinkEvent, MetricsExporter, PingError,
    ReportSource, Resolution, ServerLink, TaskOutput, TaskRunner, TaskSpec, UpdateError,
    UpgradeApplied, UpgradePlan,
};
use crate::snapshot::Snapshot;

/// Locks `mutex`, taking the data over even if a panicking thread poisoned it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// === FakeDns ===

/// A [`DnsResolver`] answering from a per-host script; unknown hosts are
/// [`DnsFailureKind::NotFound`]. The answer does not depend on the preference, which is
/// recorded so tests can check it.
#[derive(Debug, Default)]
pub struct FakeDns {
    answers: Mutex<HashMap<String, Result<Resolution, DnsFailure>>>,
    calls: Mutex<Vec<(String, IpPreference)>>,
}

impl FakeDns {
    /// A resolver that knows no host yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers `answer` for `host` from now on.
    pub fn answer(&self, host: &str, answer: Result<Resolution, DnsFailure>) {
        lock(&self.answers).insert(host.to_owned(), answer);
    }

    /// Resolves `host` to `addr` instantly.
    pub fn resolves_to(&self, host: &str, addr: IpAddr) {
        self.answer(
            host,
            Ok(Resolution {
                addr,
                elapsed: Duration::ZERO,
            }),
        );
    }

    /// Every lookup so far: (host, preference), in call order.
    #[must_use]
    pub fn calls(&self) -> Vec<(String, IpPreference)> {
        lock(&self.calls).clone()
    }
}

#[async_trait::async_trait]
impl DnsResolver for FakeDns {
    async fn resolve(
        &self,
        host: &str,
        preference: IpPreference,
    ) -> Result<Resolution, DnsFailure> {
        lock(&self.calls).push((host.to_owned(), preference));
        lock(&self.answers).get(host).cloned().unwrap_or_else(|| {
            Err(DnsFailure {
                kind: DnsFailureKind::NotFound,
                elapsed: Duration::ZERO,
                detail: format!("FakeDns has no answer for {host:?}"),
            })
        })
    }
}

// === FakePinger ===

/// An [`IcmpPinger`] answering from a per-address script; unknown addresses answer 100 % loss
/// of `settings.module.packet_count` echoes.
#[derive(Debug, Default)]
pub struct FakePinger {
    answers: Mutex<HashMap<IpAddr, Result<EchoSeries, PingError>>>,
    calls: Mutex<Vec<(IpAddr, IcmpSettings)>>,
}

impl FakePinger {
    /// A pinger for which every address is down.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers `answer` for `addr` from now on.
    pub fn answer(&self, addr: IpAddr, answer: Result<EchoSeries, PingError>) {
        lock(&self.answers).insert(addr, answer);
    }

    /// Every ping so far: (address, settings), in call order.
    #[must_use]
    pub fn calls(&self) -> Vec<(IpAddr, IcmpSettings)> {
        lock(&self.calls).clone()
    }
}

#[async_trait::async_trait]
impl IcmpPinger for FakePinger {
    async fn ping(&self, addr: IpAddr, settings: &IcmpSettings) -> Result<EchoSeries, PingError> {
        lock(&self.calls).push((addr, *settings));
        lock(&self.answers)
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| Ok(EchoSeries::lost(settings.module.packet_count)))
    }
}

// === FakeHttpProber ===

/// One call of [`FakeHttpProber`].
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct HttpCall {
    /// The URL probed.
    pub url: HttpUrl,
    /// The module it was probed with.
    pub module: HttpModule,
    /// The timeout given.
    pub timeout: Duration,
}

/// An [`HttpProber`] answering from a per-URL script; unknown URLs fail with
/// [`HttpFailure::Resolve`] and no response.
///
/// URLs are keyed by their normalised form (`example.com` and `http://example.com/` are the
/// same), as [`HttpUrl`] prints it.
#[derive(Debug, Default)]
pub struct FakeHttpProber {
    answers: Mutex<HashMap<String, HttpResult>>,
    calls: Mutex<Vec<HttpCall>>,
}

impl FakeHttpProber {
    /// A prober for which no URL resolves.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers `result` for `url` from now on.
    pub fn answer(&self, url: &str, result: HttpResult) {
        lock(&self.answers).insert(normalise_url(url), result);
    }

    /// A successful result with `status_code` and zero-length phases, for scripts.
    #[must_use]
    pub fn success(status_code: u16) -> HttpResult {
        HttpResult {
            phases: HttpPhases::default(),
            status_code: Some(status_code),
            tls: None,
            failure: None,
        }
    }

    /// Every probe so far, in call order.
    #[must_use]
    pub fn calls(&self) -> Vec<HttpCall> {
        lock(&self.calls).clone()
    }
}

/// The key of a URL: its normalised form when it parses, else the text itself.
fn normalise_url(url: &str) -> String {
    HttpUrl::parse(url).map_or_else(|_| url.to_owned(), |parsed| parsed.to_string())
}

#[async_trait::async_trait]
impl HttpProber for FakeHttpProber {
    async fn probe(&self, url: &HttpUrl, module: &HttpModule, timeout: Duration) -> HttpResult {
        lock(&self.calls).push(HttpCall {
            url: url.clone(),
            module: module.clone(),
            timeout,
        });
        lock(&self.answers)
            .get(&url.to_string())
            .cloned()
            .unwrap_or(HttpResult {
                phases: HttpPhases::default(),
                status_code: None,
                tls: None,
                failure: Some(HttpFailure::Resolve),
            })
    }
}

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
/// queue is empty (the source looks closed), so a server loop under test ends by itself.
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
}

impl FakeReportSource {
    /// A source with no events.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues an event.
    pub fn push_event(&self, event: LinkEvent) {
        lock(&self.state).events.push_back(event);
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

    /// Makes every later `send_to(connection, …)` fail with [`LinkError::Disconnected`].
    pub fn disconnect(&self, connection: ConnectionId) {
        lock(&self.state).gone.insert(connection);
    }
}

#[async_trait::async_trait]
impl ReportSource for FakeReportSource {
    async fn next_event(&self) -> Option<LinkEvent> {
        lock(&self.state).events.pop_front()
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
}

// === CapturingExporter ===

/// A [`MetricsExporter`] that keeps every snapshot it is given, or fails while a failure is
/// set (keeping nothing).
#[derive(Debug, Default)]
pub struct CapturingExporter {
    snapshots: Mutex<Vec<Snapshot>>,
    failure: Mutex<Option<ExportError>>,
}

impl CapturingExporter {
    /// An exporter that has seen nothing.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Every snapshot exported successfully, in order.
    #[must_use]
    pub fn snapshots(&self) -> Vec<Snapshot> {
        lock(&self.snapshots).clone()
    }

    /// The latest snapshot exported successfully.
    #[must_use]
    pub fn last(&self) -> Option<Snapshot> {
        lock(&self.snapshots).last().cloned()
    }

    /// Makes exports fail with `failure` (`Some`) or succeed again (`None`).
    pub fn set_failure(&self, failure: Option<ExportError>) {
        *lock(&self.failure) = failure;
    }
}

#[async_trait::async_trait]
impl MetricsExporter for CapturingExporter {
    async fn export(&self, snapshot: &Snapshot) -> Result<(), ExportError> {
        if let Some(failure) = lock(&self.failure).clone() {
            return Err(failure);
        }
        lock(&self.snapshots).push(snapshot.clone());
        Ok(())
    }
}

// === FakeTaskRunner ===

/// A [`TaskRunner`] answering from a per-command script; unknown commands succeed (exit code
/// 0) with no output.
#[derive(Debug, Default)]
pub struct FakeTaskRunner {
    answers: Mutex<HashMap<String, TaskOutput>>,
    runs: Mutex<Vec<TaskSpec>>,
}

impl FakeTaskRunner {
    /// A runner for which every command succeeds silently.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers `output` for `command` from now on.
    pub fn answer(&self, command: &str, output: TaskOutput) {
        lock(&self.answers).insert(command.to_owned(), output);
    }

    /// Every task run so far, in order.
    #[must_use]
    pub fn runs(&self) -> Vec<TaskSpec> {
        lock(&self.runs).clone()
    }
}

#[async_trait::async_trait]
impl TaskRunner for FakeTaskRunner {
    async fn run(&self, task: &TaskSpec) -> TaskOutput {
        lock(&self.runs).push(task.clone());
        lock(&self.answers)
            .get(&task.command)
            .cloned()
            .unwrap_or(TaskOutput {
                exit_code: Some(0),
                ..TaskOutput::default()
            })
    }
}

// === FakeUpdater ===

/// A [`BinaryUpdater`] answering a scripted result; by default every upgrade succeeds,
/// installing the plan's version at [`FakeUpdater::DEFAULT_PATH`].
#[derive(Debug, Default)]
pub struct FakeUpdater {
    result: Mutex<Option<Result<UpgradeApplied, UpdateError>>>,
    plans: Mutex<Vec<UpgradePlan>>,
}

impl FakeUpdater {
    /// The path a default successful upgrade reports.
    pub const DEFAULT_PATH: &'static str = "/fake/probermesh";

    /// An updater for which every upgrade succeeds.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers `result` to every later upgrade.
    pub fn set_result(&self, result: Result<UpgradeApplied, UpdateError>) {
        *lock(&self.result) = Some(result);
    }

    /// Every plan applied so far, in order.
    #[must_use]
    pub fn plans(&self) -> Vec<UpgradePlan> {
        lock(&self.plans).clone()
    }
}

#[async_trait::async_trait]
impl BinaryUpdater for FakeUpdater {
    async fn apply(&self, plan: &UpgradePlan) -> Result<UpgradeApplied, UpdateError> {
        lock(&self.plans).push(plan.clone());
        lock(&self.result).clone().unwrap_or_else(|| {
            Ok(UpgradeApplied {
                version: plan.version.clone(),
                path: Self::DEFAULT_PATH.to_owned(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::net::SocketAddr;
    use std::pin::pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Wake};

    use pollster::block_on;

    use super::*;
    use crate::model::http_module::IpProtocol;
    use crate::model::{AgentId, AgentVersion, IcmpFailure, IcmpModule, Region, UnixMillis};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn dns_answers_from_the_script_and_records_preferences() {
        let dns = FakeDns::new();
        dns.resolves_to("a.example", ip("192.0.2.1"));
        let timeout = DnsFailure {
            kind: DnsFailureKind::Timeout,
            elapsed: Duration::from_secs(5),
            detail: "no answer".into(),
        };
        dns.answer("slow.example", Err(timeout.clone()));
        let v6_only = IpPreference {
            preferred: IpProtocol::Ip6,
            fallback: false,
        };
        let found = block_on(dns.resolve("a.example", v6_only)).unwrap();
        assert_eq!(found.addr, ip("192.0.2.1"));
        assert_eq!(
            block_on(dns.resolve("slow.example", IpPreference::default())),
            Err(timeout)
        );
        let missing = block_on(dns.resolve("b.example", IpPreference::default())).unwrap_err();
        assert_eq!(missing.kind, DnsFailureKind::NotFound);
        assert_eq!(
            dns.calls(),
            [
                ("a.example".to_owned(), v6_only),
                ("slow.example".to_owned(), IpPreference::default()),
                ("b.example".to_owned(), IpPreference::default()),
            ]
        );
    }

    #[test]
    fn pinger_answers_scripts_and_loses_everything_else() {
        let pinger = FakePinger::new();
        let up = EchoSeries {
            packets_sent: 3,
            rtts: vec![Duration::from_millis(2); 3],
            errors: Vec::new(),
        };
        pinger.answer(ip("10.0.0.1"), Ok(up.clone()));
        let denied = PingError::Permission {
            how_to_fix: "setcap cap_net_raw+ep".into(),
        };
        pinger.answer(ip("10.0.0.2"), Err(denied.clone()));
        let settings = IcmpSettings::new(
            IcmpModule {
                packet_count: 7,
                ..IcmpModule::default()
            },
            Duration::from_secs(15),
        );
        assert_eq!(block_on(pinger.ping(ip("10.0.0.1"), &settings)), Ok(up));
        let err = block_on(pinger.ping(ip("10.0.0.2"), &settings)).unwrap_err();
        assert_eq!(err.failure(), IcmpFailure::Permission);
        assert_eq!(
            block_on(pinger.ping(ip("10.0.0.3"), &settings)),
            Ok(EchoSeries::lost(7))
        );
        let calls = pinger.calls();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[2], (ip("10.0.0.3"), settings));
    }

    #[test]
    fn http_prober_keys_normalised_urls_and_records_calls() {
        let prober = FakeHttpProber::new();
        prober.answer("example.com", FakeHttpProber::success(204));
        let url = HttpUrl::parse("http://example.com/").unwrap();
        let module = HttpModule::default();
        let timeout = Duration::from_secs(3);
        let result = block_on(prober.probe(&url, &module, timeout));
        assert_eq!(result.status_code, Some(204));
        assert!(!result.is_failed());
        let other = HttpUrl::parse("https://example.com/").unwrap();
        let result = block_on(prober.probe(&other, &module, timeout));
        assert_eq!(result.failure, Some(HttpFailure::Resolve));
        assert_eq!(result.status_code, None);
        let calls = prober.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            calls[0],
            HttpCall {
                url,
                module,
                timeout
            }
        );
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

    #[test]
    fn exporter_keeps_every_snapshot_unless_failing() {
        let exporter = CapturingExporter::new();
        let first = Snapshot {
            taken_at: UnixMillis(1),
            families: Vec::new(),
        };
        let second = Snapshot {
            taken_at: UnixMillis(2),
            families: Vec::new(),
        };
        block_on(exporter.export(&first)).unwrap();
        let failure = ExportError {
            detail: "listener closed".into(),
        };
        exporter.set_failure(Some(failure.clone()));
        assert_eq!(block_on(exporter.export(&second)), Err(failure));
        exporter.set_failure(None);
        block_on(exporter.export(&second)).unwrap();
        assert_eq!(exporter.snapshots(), [first, second.clone()]);
        assert_eq!(exporter.last(), Some(second));
    }

    #[test]
    fn task_runner_answers_per_command_and_records_specs() {
        let runner = FakeTaskRunner::new();
        let slow = TaskOutput {
            exit_code: None,
            timed_out: true,
            duration: Duration::from_secs(30),
            ..TaskOutput::default()
        };
        runner.answer("sleep 60", slow.clone());
        let spec = |id, command: &str| TaskSpec {
            id,
            command: command.to_owned(),
            timeout: Duration::from_secs(30),
            output_limit_bytes: 1024,
        };
        assert_eq!(block_on(runner.run(&spec(1, "sleep 60"))), slow);
        let quiet = block_on(runner.run(&spec(2, "true")));
        assert_eq!(quiet.exit_code, Some(0));
        assert!(quiet.stdout.is_empty() && !quiet.timed_out);
        assert_eq!(runner.runs(), [spec(1, "sleep 60"), spec(2, "true")]);
    }

    #[test]
    fn updater_succeeds_by_default_and_records_plans() {
        let updater = FakeUpdater::new();
        let plan = UpgradePlan {
            version: "0.2.0".into(),
            url: "https://example.invalid/probermesh".into(),
            sha256: [7; 32],
        };
        assert_eq!(
            block_on(updater.apply(&plan)),
            Ok(UpgradeApplied {
                version: "0.2.0".into(),
                path: FakeUpdater::DEFAULT_PATH.into(),
            })
        );
        let mismatch = UpdateError::Checksum {
            expected: plan.sha256_hex(),
            actual: "00".repeat(32),
        };
        updater.set_result(Err(mismatch.clone()));
        assert_eq!(block_on(updater.apply(&plan)), Err(mismatch));
        assert_eq!(updater.plans(), [plan.clone(), plan]);
    }

    #[test]
    fn a_poisoned_fake_still_answers() {
        let dns = Arc::new(FakeDns::new());
        let poisoner = Arc::clone(&dns);
        let joined = std::thread::spawn(move || {
            let _guard = poisoner.calls.lock();
            panic!("poison the call record");
        })
        .join();
        assert!(joined.is_err());
        assert!(dns.calls.is_poisoned());
        let _ = block_on(dns.resolve("x.example", IpPreference::default()));
        assert_eq!(dns.calls().len(), 1);
    }
}
