//! The agent's driver over core's fakes in tokio's paused time: a whole agent (state machine,
//! driver, probers, link) runs minutes of rounds in milliseconds, without sockets.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use probermesh_adapters::clock::TokioClock;
use probermesh_adapters::driver::agent::{self as driver, AgentRun, StopBounds};
use probermesh_core::agent::{AgentConfig, AgentState, plan_rest_of_round};
use probermesh_core::fake::{FakeDns, FakeHttpProber, FakePinger, FakeServerLink};
use probermesh_core::link::{
    FromAgent, FromServer, ToAgent, TraceHop, TraceProtocol, TraceReport, TraceRequest,
};
use probermesh_core::model::{
    AgentId, IcmpModule, IcmpSettings, ProbeConfig, ProbeKind, ProbeModule, Region, Target,
    UnixMillis,
};
use probermesh_core::ports::{Clock, EchoSeries, IcmpPinger, PathTracer, PingError};
use probermesh_core::probe::Probers;
use tokio::sync::watch;

/// A round boundary (15 s) plus six seconds: the agent starts mid-round.
const ROUND0: u64 = 1_800_000_000_000;
const T0: u64 = ROUND0 + 6_000;
const INTERVAL: Duration = Duration::from_secs(15);

fn me(ip: &str) -> AgentId {
    AgentId::new(Region::new("eu").expect("region"), ip.parse().expect("ip"))
}

fn config(follow_observed_ip: bool) -> AgentConfig {
    AgentConfig {
        me: me("198.18.0.11"),
        probe_interval: INTERVAL,
        sync_interval: Duration::from_secs(60),
        heartbeat_interval: INTERVAL,
        follow_observed_ip,
        in_flight_limits: probermesh_core::agent::InFlightLimits::default(),
        tasks: None,
        upgrade: Default::default(),
        traces: Some(Default::default()),
    }
}

fn pool(targets: usize) -> FromServer {
    FromServer::Message(ToAgent::Pool {
        revision: 4,
        configs: Arc::new(pool_configs(targets)),
    })
}

fn pool_configs(targets: usize) -> Vec<ProbeConfig> {
    vec![ProbeConfig {
        region: Region::new("us").expect("region"),
        targets: (1..=targets)
            .map(|i| Target::parse(ProbeKind::Icmp, &format!("198.18.2.{i}")).expect("target"))
            .collect(),
        module: ProbeModule::Icmp(IcmpModule {
            packet_count: 4,
            ..IcmpModule::default()
        }),
    }]
}

fn welcome(ip: &str) -> FromServer {
    FromServer::Welcomed {
        server_version: "test".into(),
        capabilities: probermesh_core::link::Capabilities::v1(),
        observed_addr: SocketAddr::new(ip.parse().expect("ip"), 40_000),
    }
}

fn probers(icmp: Arc<dyn IcmpPinger>) -> Probers {
    let dns = Arc::new(FakeDns::new());
    Probers {
        http: Arc::new(FakeHttpProber::new()),
        dns,
        icmp,
    }
}

/// Starts the driver; returns the stop switch and the run's handle.
fn start(
    state: AgentState,
    link: Arc<FakeServerLink>,
    relink: driver::Relink<FakeServerLink>,
    icmp: Arc<dyn IcmpPinger>,
    clock: Arc<dyn Clock>,
    bounds: StopBounds,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<AgentRun<FakeServerLink>>,
) {
    start_tracing(
        state,
        link,
        relink,
        icmp,
        Arc::new(probermesh_core::fake::FakeTracer::new()),
        clock,
        bounds,
    )
}

/// [`start`] with traces run by `tracer`.
fn start_tracing(
    state: AgentState,
    link: Arc<FakeServerLink>,
    relink: driver::Relink<FakeServerLink>,
    icmp: Arc<dyn IcmpPinger>,
    tracer: Arc<dyn PathTracer>,
    clock: Arc<dyn Clock>,
    bounds: StopBounds,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<AgentRun<FakeServerLink>>,
) {
    let (stop, stopping) = watch::channel(false);
    let run = tokio::spawn(driver::run(
        state,
        link,
        relink,
        probers(icmp),
        Arc::new(probermesh_core::fake::FakeTaskRunner::new()),
        tracer,
        None,
        clock,
        stopping,
        bounds,
    ));
    (stop, run)
}

fn no_relink() -> driver::Relink<FakeServerLink> {
    Box::new(|_| Err("this test does not re-identify".into()))
}

const BOUNDS: StopBounds = StopBounds {
    in_flight: Duration::from_secs(18),
    drain: Duration::from_secs(5),
};

#[tokio::test(start_paused = true)]
async fn an_agent_probes_its_pool_every_round_and_hands_every_result_to_the_link() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(UnixMillis(T0)));
    let link = Arc::new(FakeServerLink::new());
    link.push_incoming(welcome("198.18.0.11"));
    link.push_incoming(pool(10));
    let state = AgentState::new(config(false), clock.now());
    let pinger = Arc::new(FakePinger::new());
    for i in 1..=10 {
        let addr: IpAddr = format!("198.18.2.{i}").parse().expect("ip");
        pinger.answer(
            addr,
            Ok(EchoSeries {
                packets_sent: 4,
                rtts: vec![Duration::from_millis(i); 4],
                errors: vec![],
            }),
        );
    }
    let (stop, run) = start(
        state,
        Arc::clone(&link),
        no_relink(),
        Arc::clone(&pinger) as Arc<dyn IcmpPinger>,
        Arc::clone(&clock),
        BOUNDS,
    );
    // What was left of the first round and two whole ones, in virtual time.
    tokio::time::sleep(Duration::from_secs(39)).await;
    stop.send(true).expect("the driver listens");
    let run = run.await.expect("the driver ends");
    assert!(run.drained && run.abandoned_probes == 0);

    // Every result reached the link, stamped with its round; each target once a round.
    let results = link.enqueued();
    let rounds: Vec<u64> = [ROUND0, ROUND0 + 15_000, ROUND0 + 30_000].to_vec();
    for round in &rounds[1..] {
        let of_round = results
            .iter()
            .filter(|r| r.round_start == UnixMillis(*round))
            .count();
        assert_eq!(of_round, 10, "round {round}: {results:?}");
    }
    // The first round was joined 6 s late: only the probes not due yet were started.
    let first = results
        .iter()
        .filter(|r| r.round_start == UnixMillis(rounds[0]))
        .count();
    let not_due = plan_rest_of_round(
        &pool_configs(10),
        &me("198.18.0.11"),
        UnixMillis(T0),
        INTERVAL,
    )
    .len();
    assert!(not_due < 10, "six seconds of a 10.5 s spread have passed");
    assert_eq!(first, not_due);
    assert_eq!(run.state.produced(), results.len() as u64);
    assert_eq!(
        pinger.calls().len(),
        results.len(),
        "one ping per result, none left running"
    );
    assert!(
        pinger
            .calls()
            .iter()
            .all(|(_, s): &(IpAddr, IcmpSettings)| s.module.packet_count == 4)
    );

    // It said hello once, heartbeat every round, and asked for the pool once (the next
    // request is a minute later).
    let sent = link.sent();
    let heartbeats = sent
        .iter()
        .filter(|m| matches!(m, FromAgent::Heartbeat { .. }))
        .count();
    assert_eq!(heartbeats, 3, "{sent:?}");
    assert_eq!(
        sent.iter()
            .filter(|m| matches!(m, FromAgent::PoolRequest { known_revision: 0 }))
            .count(),
        1
    );
}

/// A pinger whose every probe takes `delay` (of tokio's time).
struct SlowPinger {
    delay: Duration,
}

#[async_trait::async_trait]
impl IcmpPinger for SlowPinger {
    async fn ping(&self, _addr: IpAddr, settings: &IcmpSettings) -> Result<EchoSeries, PingError> {
        tokio::time::sleep(self.delay).await;
        Ok(EchoSeries::lost(settings.module.packet_count))
    }
}

#[tokio::test(start_paused = true)]
async fn a_stop_lets_the_probes_in_flight_finish_within_its_bound() {
    // Each probe takes 12 s. The stop comes 11 s into the second round: all five of its
    // probes have started (the spread is 10.5 s) and none ends before 12 s into it; the
    // first round's (started from 6 s on) have all ended.
    for (bound, abandoned) in [
        (Duration::from_secs(18), 0),
        (Duration::from_millis(500), 5),
    ] {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(UnixMillis(T0)));
        let link = Arc::new(FakeServerLink::new());
        link.push_incoming(welcome("198.18.0.11"));
        link.push_incoming(pool(5));
        let state = AgentState::new(config(false), clock.now());
        let (stop, run) = start(
            state,
            Arc::clone(&link),
            no_relink(),
            Arc::new(SlowPinger {
                delay: Duration::from_secs(12),
            }),
            Arc::clone(&clock),
            StopBounds {
                in_flight: bound,
                drain: Duration::from_secs(1),
            },
        );
        tokio::time::sleep(Duration::from_millis(ROUND0 + 15_000 + 11_000 - T0)).await;
        stop.send(true).expect("the driver listens");
        let run = run.await.expect("the driver ends");
        assert_eq!(run.abandoned_probes, abandoned, "bound {bound:?}");
        let delivered = link.enqueued().len();
        assert_eq!(delivered as u64, run.state.produced());
        if abandoned == 0 {
            assert!(delivered >= 5, "{delivered}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn in_the_public_ip_mode_the_agent_reconnects_as_the_address_the_server_sees() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(UnixMillis(T0)));
    let first = Arc::new(FakeServerLink::new());
    first.push_incoming(welcome("203.0.113.9"));
    let second = Arc::new(FakeServerLink::new());
    second.push_incoming(welcome("203.0.113.9"));
    second.push_incoming(pool(3));
    let asked: Arc<Mutex<Vec<AgentId>>> = Arc::default();
    let relink: driver::Relink<FakeServerLink> = {
        let (asked, second) = (Arc::clone(&asked), Arc::clone(&second));
        Box::new(move |me| {
            asked.lock().expect("lock").push(me.clone());
            Ok(Arc::clone(&second))
        })
    };
    let state = AgentState::new(config(true), clock.now());
    let (stop, run) = start(
        state,
        Arc::clone(&first),
        relink,
        Arc::new(FakePinger::new()),
        Arc::clone(&clock),
        BOUNDS,
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    stop.send(true).expect("the driver listens");
    let run = run.await.expect("the driver ends");
    assert_eq!(*asked.lock().expect("lock"), [me("203.0.113.9")]);
    assert_eq!(run.state.me(), &me("203.0.113.9"));
    assert!(Arc::ptr_eq(&run.link, &second));
    // The new link carries the agent from then on: its results are stamped as it.
    assert!(!second.enqueued().is_empty());
    assert!(
        second
            .enqueued()
            .iter()
            .all(|r| r.source == me("203.0.113.9"))
    );
    assert!(
        second
            .sent()
            .iter()
            .any(|m| matches!(m, FromAgent::PoolRequest { .. }))
    );
}

/// A pinger whose every call panics, counting the calls.
#[derive(Default)]
struct PanickingPinger {
    calls: Mutex<u32>,
}

#[async_trait::async_trait]
impl IcmpPinger for PanickingPinger {
    async fn ping(
        &self,
        _addr: IpAddr,
        _settings: &probermesh_core::model::IcmpSettings,
    ) -> Result<EchoSeries, PingError> {
        *self.calls.lock().expect("calls") += 1;
        panic!("a prober bug");
    }
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_panics_frees_its_place_for_the_next() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(UnixMillis(T0)));
    let link = Arc::new(FakeServerLink::new());
    link.push_incoming(welcome("198.18.0.11"));
    link.push_incoming(pool(3));
    // One ICMP probe at a time: a place lost to a panic would stop every later probe.
    let state = AgentState::new(
        AgentConfig {
            in_flight_limits: probermesh_core::agent::InFlightLimits { icmp: 1, http: 1 },
            tasks: None,
            upgrade: Default::default(),
            traces: Some(Default::default()),
            ..config(false)
        },
        clock.now(),
    );
    let pinger = Arc::new(PanickingPinger::default());
    let (stop, run) = start(
        state,
        Arc::clone(&link),
        no_relink(),
        Arc::clone(&pinger) as Arc<dyn IcmpPinger>,
        Arc::clone(&clock),
        BOUNDS,
    );
    tokio::time::sleep(INTERVAL * 3).await;
    stop.send(true).expect("the driver listens");
    let run = run.await.expect("the driver ends");
    let calls = *pinger.calls.lock().expect("calls");
    // Two whole rounds of three targets at least, one at a time.
    assert!(calls >= 6, "{calls} probes started");
    assert_eq!(run.state.in_flight(), 0);
}

fn trace_request(id: u64, target: &str) -> TraceRequest {
    TraceRequest {
        id,
        target: target.parse().expect("ip"),
        protocol: TraceProtocol::Icmp,
        max_hops: 30,
        rounds: 20,
    }
}

fn trace_reports(link: &FakeServerLink) -> Vec<TraceReport> {
    link.sent()
        .into_iter()
        .filter_map(|message| match message {
            FromAgent::TraceResult(report) => Some(report),
            _ => None,
        })
        .collect()
}

/// A tracer that takes `delay` per trace (forever, for a stuck engine).
struct SlowTracer {
    delay: Duration,
}

#[async_trait::async_trait]
impl PathTracer for SlowTracer {
    async fn trace(&self, request: &TraceRequest) -> TraceReport {
        tokio::time::sleep(self.delay).await;
        TraceReport {
            id: request.id,
            target: request.target,
            hops: Vec::new(),
            error: None,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_trace_runs_on_the_tracer_and_its_report_goes_to_the_server() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(UnixMillis(T0)));
    let link = Arc::new(FakeServerLink::new());
    link.push_incoming(welcome("198.18.0.11"));
    link.push_incoming(FromServer::Message(ToAgent::Trace(trace_request(
        3,
        "198.18.2.1",
    ))));
    let tracer = Arc::new(probermesh_core::fake::FakeTracer::new());
    let hop = TraceHop {
        ttl: 1,
        addr: Some("198.18.2.1".parse().expect("ip")),
        sent: 20,
        received: 20,
        rtt_best: Some(Duration::from_millis(1)),
        rtt_mean: Some(Duration::from_millis(2)),
        rtt_worst: Some(Duration::from_millis(3)),
        rtt_stddev: Some(Duration::from_micros(500)),
    };
    tracer.path_to("198.18.2.1".parse().expect("ip"), vec![hop.clone()]);
    let state = AgentState::new(config(false), clock.now());
    let (stop, run) = start_tracing(
        state,
        Arc::clone(&link),
        no_relink(),
        Arc::new(FakePinger::new()),
        Arc::clone(&tracer) as Arc<dyn PathTracer>,
        Arc::clone(&clock),
        BOUNDS,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.send(true).expect("the driver listens");
    let run = run.await.expect("the driver ends");
    assert_eq!(tracer.requests(), vec![trace_request(3, "198.18.2.1")]);
    assert_eq!(
        trace_reports(&link),
        vec![TraceReport {
            id: 3,
            target: "198.18.2.1".parse().expect("ip"),
            hops: vec![hop],
            error: None,
        }]
    );
    assert_eq!(run.state.traces().in_flight(), None);
}

#[tokio::test(start_paused = true)]
async fn a_stuck_tracer_is_answered_at_the_bound_and_a_second_trace_meanwhile_is_busy() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(UnixMillis(T0)));
    let link = Arc::new(FakeServerLink::new());
    link.push_incoming(welcome("198.18.0.11"));
    link.push_incoming(FromServer::Message(ToAgent::Trace(trace_request(
        1,
        "198.18.2.1",
    ))));
    link.push_incoming(FromServer::Message(ToAgent::Trace(trace_request(
        2,
        "198.18.2.2",
    ))));
    let state = AgentState::new(config(false), clock.now());
    let (stop, run) = start_tracing(
        state,
        Arc::clone(&link),
        no_relink(),
        Arc::new(FakePinger::new()),
        Arc::new(SlowTracer {
            delay: Duration::from_secs(100_000),
        }),
        Arc::clone(&clock),
        BOUNDS,
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let early = trace_reports(&link);
    assert_eq!(early.len(), 1, "{early:?}");
    assert_eq!(early[0].id, 2);
    assert_eq!(early[0].error.as_deref(), Some("busy: trace 1 in flight"));
    tokio::time::sleep(driver::TRACE_BOUND).await;
    let reports = trace_reports(&link);
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert_eq!(reports[1].id, 1);
    assert_eq!(
        reports[1].error.as_deref(),
        Some("the tracer did not finish within 150s")
    );
    stop.send(true).expect("the driver listens");
    let run = run.await.expect("the driver ends");
    assert_eq!(run.state.traces().in_flight(), None);
}
