//! Whole agent-and-server sessions in tokio's paused time, over core's in-memory network and
//! fakes, without sockets: both drivers, both state machines, the link's outbox,
//! acknowledgements and deduplication, and the store, for minutes of virtual time in
//! milliseconds. Hello, pool push, results, acknowledgements, a lost connection and a server
//! restart with the handoff of its unsettled windows.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use probermesh_adapters::clock::TokioClock;
use probermesh_adapters::driver::agent::{self as agent_driver, AgentRun, StopBounds};
use probermesh_adapters::driver::server::{ServerDriver, ServerParts, StopReport};
use probermesh_core::agent::{AgentConfig, AgentState};
use probermesh_core::aggregate::{self as families, Aggregator, AggregatorConfig};
use probermesh_core::fake::{
    CapturingExporter, FakeDns, FakeHttpProber, FakePinger, MemoryNetwork, MemoryReportSource,
    MemoryServerLink, MemoryStore,
};
use probermesh_core::link::Capabilities;
use probermesh_core::model::{AgentId, AgentVersion, Region, UnixMillis};
use probermesh_core::pool::{Discovery, TargetPool};
use probermesh_core::ports::{Clock, EchoSeries, Record, ReportSource, Store};
use probermesh_core::probe::Probers;
use probermesh_core::server::ServerState;
use probermesh_core::server::handoff::Resumed;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Two seconds into a 15 s round.
const T0: u64 = 1_800_000_002_000;
const INTERVAL: Duration = Duration::from_secs(15);
/// Every echo of every agent takes this long.
const RTT: Duration = Duration::from_millis(7);

struct Agent {
    link: Arc<MemoryServerLink>,
    stop: watch::Sender<bool>,
    run: JoinHandle<AgentRun<MemoryServerLink>>,
}

fn agent_id(region: &str, ip: &str) -> AgentId {
    AgentId::new(
        Region::new(region).expect("region"),
        ip.parse().expect("ip"),
    )
}

/// An agent speaking `protocol` (1 or 2).
fn start_agent(
    network: &MemoryNetwork,
    clock: &Arc<dyn Clock>,
    me: &AgentId,
    protocol: u16,
) -> Agent {
    let link = Arc::new(network.link(
        me.clone(),
        AgentVersion::new("1.0.0"),
        Capabilities {
            protocol_version: protocol,
            ..Capabilities::default()
        },
        SocketAddr::new(me.ip, 40_000),
    ));
    let pinger = Arc::new(FakePinger::new());
    for i in 1..=9 {
        let addr: IpAddr = format!("198.18.0.{i}").parse().expect("ip");
        pinger.answer(
            addr,
            Ok(EchoSeries {
                packets_sent: 4,
                rtts: vec![RTT; 4],
                errors: vec![],
            }),
        );
    }
    let state = AgentState::new(
        AgentConfig {
            me: me.clone(),
            probe_interval: INTERVAL,
            sync_interval: Duration::from_secs(60),
            heartbeat_interval: INTERVAL,
            follow_observed_ip: false,
            in_flight_limits: probermesh_core::agent::InFlightLimits::default(),
            tasks: None,
            upgrade: Default::default(),
            traces: Some(Default::default()),
        },
        clock.now(),
    );
    let probers = Probers {
        dns: Arc::new(FakeDns::new()),
        icmp: pinger,
        http: Arc::new(FakeHttpProber::new()),
    };
    let (stop, stopping) = watch::channel(false);
    let run = tokio::spawn(agent_driver::run(
        state,
        Arc::clone(&link),
        Box::new(|_| Err("agents of this test keep their address".into())),
        probers,
        Arc::new(probermesh_core::fake::FakeTaskRunner::new()),
        Arc::new(probermesh_core::fake::FakeTracer::new()),
        None,
        Arc::clone(clock),
        stopping,
        StopBounds {
            in_flight: Duration::from_secs(20),
            drain: Duration::from_secs(5),
        },
    ));
    Agent { link, stop, run }
}

fn start_server(
    network: &MemoryNetwork,
    clock: &Arc<dyn Clock>,
    store: &Arc<MemoryStore>,
    name: &str,
) -> (Arc<MemoryReportSource>, ServerDriver<MemoryReportSource>) {
    let source = Arc::new(network.serve(name));
    let aggregator = Aggregator::new(
        AggregatorConfig {
            window: INTERVAL,
            ..AggregatorConfig::default()
        },
        clock.now(),
    )
    .expect("aggregator");
    let driver = ServerDriver::start(ServerParts {
        link: Arc::clone(&source),
        state: ServerState::new(
            aggregator,
            TargetPool::new(Vec::new(), Discovery::Dynamic, false),
        ),
        clock: Arc::clone(clock),
        exporter: Arc::new(CapturingExporter::new()),
        pool_source: None,
        store: Some(Arc::clone(store) as Arc<dyn Store>),
        task_archive: None,
        releases: Default::default(),
    });
    driver.started();
    (source, driver)
}

async fn stop_agent(agent: Agent) -> AgentRun<MemoryServerLink> {
    agent.stop.send(true).expect("the agent listens");
    agent.run.await.expect("the agent's run ends")
}

fn rtt_of(driver: &ServerDriver<MemoryReportSource>, source: &str, target: &str) -> Option<f64> {
    driver.handle().snapshot().number(
        families::ICMP_DURATION,
        &[
            ("phase", "rtt"),
            ("source_region", source),
            ("target_region", target),
        ],
    )
}

#[tokio::test(start_paused = true)]
async fn agents_and_server_meet_probe_each_other_and_survive_a_cut_and_a_restart() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(UnixMillis(T0)));
    let network = MemoryNetwork::new();
    let store = Arc::new(MemoryStore::new());
    let (first_source, first) = start_server(&network, &clock, &store, "first");
    let eu = agent_id("eu", "198.18.0.1");
    let us = agent_id("us", "198.18.0.2");
    let agents = [
        // One agent of each protocol version: the server speaks to each in its own.
        start_agent(&network, &clock, &eu, 1),
        start_agent(&network, &clock, &us, 2),
    ];

    // Hello, pool push (dynamic discovery: each region probes the other), results, and the
    // settled windows: the RTT the fake pinger answered, region to region.
    tokio::time::sleep(Duration::from_secs(50)).await;
    assert_eq!(first.handle().connected(), 2);
    for (source, target) in [("eu", "us"), ("us", "eu")] {
        let rtt = rtt_of(&first, source, target).expect("a settled window");
        assert!(
            (rtt - RTT.as_secs_f64()).abs() < 1e-9,
            "{source}→{target}: {rtt}"
        );
    }
    for agent in &agents {
        let outbox = agent.link.outbox();
        assert!(outbox.acked_results > 0, "{outbox:?}");
    }

    // A lost connection with a round of results in transit: the agent reconnects by itself
    // and resends them.
    network.pause_delivery(true);
    tokio::time::sleep(Duration::from_secs(15)).await;
    let resent_before = agents[0].link.outbox().resent_batches;
    agents[0].link.cut();
    network.pause_delivery(false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(agents[0].link.is_connected());
    assert!(agents[0].link.outbox().resent_batches > resent_before);
    assert_eq!(first.handle().connected(), 2);
    // A lost connection after the server filed a round whose acknowledgements were lost:
    // the resent batches are recognised and counted once.
    agents[1].link.lose_acks(true);
    tokio::time::sleep(Duration::from_secs(15)).await;
    agents[1].link.cut();
    agents[1].link.lose_acks(false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(first_source.duplicate_batches() > 0);

    // A restart: the first server hands its unsettled windows over through the store, the
    // second files them before it takes a result, and the agents move over.
    let first_report = first.stop().await;
    assert!(first_report.handed_over > 0, "{first_report:?}");
    assert!(store.read(Record::OpenWindows).expect("readable").is_some());
    let (second_source, second) = start_server(&network, &clock, &store, "second");
    assert!(
        matches!(second.resumed(), Resumed::Filed { intake, .. } if intake.accepted as usize == first_report.handed_over),
        "{:?}",
        second.resumed()
    );
    assert_eq!(
        store.read(Record::OpenWindows),
        Ok(None),
        "removed once started"
    );
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(second.handle().connected(), 2);
    assert!(rtt_of(&second, "eu", "us").is_some());

    let mut produced = 0;
    for agent in agents {
        let run = stop_agent(agent).await;
        assert!(
            run.drained,
            "every result acknowledged before the agent stopped"
        );
        produced += run.state.produced();
    }
    let second_report: StopReport = second.stop().await;
    // Every result the agents produced reached exactly one server exactly once.
    let received = first_report.counters.received_icmp + second_report.counters.received_icmp;
    assert_eq!(received, produced);
    for report in [&first_report, &second_report] {
        assert_eq!(report.counters.dropped_duplicate, 0, "{report:?}");
        assert_eq!(report.counters.dropped_late, 0, "{report:?}");
    }
    assert_eq!(second_source.duplicate_batches(), 0);
}
