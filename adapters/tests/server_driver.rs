//! The server's driver over core's fakes in tokio's paused time: what it carries out for the
//! state (sends, closes), reloads through the pool source, the settled series it publishes
//! once per window, the `/-/targets` answer, and the handoff record's life cycle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use probermesh_adapters::admin::AdminApi;
use probermesh_adapters::clock::TokioClock;
use probermesh_adapters::driver::server::{ServerDriver, ServerParts};
use probermesh_core::aggregate::{Aggregator, AggregatorConfig};
use probermesh_core::fake::{CapturingExporter, FakePoolSource, FakeReportSource, MemoryStore};
use probermesh_core::link::{Capabilities, FromAgent, ToAgent};
use probermesh_core::model::{
    AgentId, AgentVersion, IcmpModule, IcmpResult, ProbeConfig, ProbeKind, ProbeModule,
    ProbeOutcome, ProbeResult, Region, Target, UnixMillis,
};
use probermesh_core::pool::{Discovery, TargetPool};
use probermesh_core::ports::{Clock, ConnectionId, LinkEvent, PoolSourceError, Record, Store};
use probermesh_core::server::ServerState;
use probermesh_core::server::handoff;

const T0: u64 = 1_800_000_001_000;
const WINDOW: Duration = Duration::from_secs(15);

fn agent() -> AgentId {
    AgentId::new(
        Region::new("eu").expect("region"),
        "198.18.0.1".parse().expect("ip"),
    )
}

fn block(region: &str, ip: &str) -> ProbeConfig {
    ProbeConfig {
        region: Region::new(region).expect("region"),
        targets: vec![Target::parse(ProbeKind::Icmp, ip).expect("target")],
        module: ProbeModule::Icmp(IcmpModule::default()),
    }
}

struct Parts {
    clock: Arc<dyn Clock>,
    source: Arc<FakeReportSource>,
    exporter: Arc<CapturingExporter>,
    pool_source: Arc<FakePoolSource>,
    store: Arc<MemoryStore>,
}

impl Parts {
    fn new() -> Self {
        Self {
            clock: Arc::new(TokioClock::starting_at(UnixMillis(T0))),
            source: Arc::new(FakeReportSource::new()),
            exporter: Arc::new(CapturingExporter::new()),
            pool_source: Arc::new(FakePoolSource::new()),
            store: Arc::new(MemoryStore::new()),
        }
    }

    fn start(&self, blocks: Vec<ProbeConfig>) -> ServerDriver<FakeReportSource> {
        let aggregator = Aggregator::new(
            AggregatorConfig {
                window: WINDOW,
                ..AggregatorConfig::default()
            },
            self.clock.now(),
        )
        .expect("aggregator");
        ServerDriver::start(ServerParts {
            link: Arc::clone(&self.source),
            state: ServerState::new(
                aggregator,
                TargetPool::new(blocks, Discovery::Static, false),
            ),
            clock: Arc::clone(&self.clock),
            exporter: Arc::clone(&self.exporter) as _,
            pool_source: Some(Arc::clone(&self.pool_source) as _),
            store: Some(Arc::clone(&self.store) as Arc<dyn Store>),
            task_archive: None,
            releases: Default::default(),
        })
    }
}

fn connected(id: u64) -> LinkEvent {
    LinkEvent::Connected {
        connection: ConnectionId(id),
        agent: agent(),
        version: AgentVersion::new("1.0.0"),
        observed_addr: SocketAddr::from(([198, 18, 0, 1], 40_000)),
        capabilities: Capabilities::v1(),
        instance: id,
    }
}

fn message(id: u64, message: FromAgent) -> LinkEvent {
    LinkEvent::Message {
        connection: ConnectionId(id),
        agent: agent(),
        message,
    }
}

#[tokio::test(start_paused = true)]
async fn the_driver_sends_pools_closes_violators_and_reloads_through_the_source() {
    let parts = Parts::new();
    parts.source.push_event(connected(1));
    parts
        .source
        .push_event(message(1, FromAgent::PoolRequest { known_revision: 0 }));
    // A message on a connection that never said hello is a protocol violation.
    parts.source.push_event(message(
        9,
        FromAgent::Heartbeat {
            sent_at: UnixMillis(T0),
        },
    ));
    let driver = parts.start(vec![block("us", "198.18.1.1")]);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let sent = parts.source.sent_to();
    let Some((ConnectionId(1), ToAgent::Pool { configs, .. })) = sent.first() else {
        panic!("a pool for connection 1: {sent:?}");
    };
    assert_eq!(configs.as_slice(), [block("us", "198.18.1.1")]);
    let closed = parts.source.closed();
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0].0, ConnectionId(9));

    // A reload reads the source; the changed pool is pushed to the connected agent.
    parts.pool_source.set(Ok(vec![block("us", "198.18.1.2")]));
    driver.handle().reload().await.expect("reloaded");
    assert_eq!(parts.pool_source.loads(), 1);
    let sent = parts.source.sent_to();
    assert!(
        matches!(sent.last(), Some((ConnectionId(1), ToAgent::Pool { configs, .. }))
            if configs.as_slice() == [block("us", "198.18.1.2")]),
        "{sent:?}"
    );
    // A bad file is reported as the source says it, and the running pool stays.
    parts.pool_source.set(Err(PoolSourceError(
        "probe file p.yaml, line 3: bad".into(),
    )));
    let error = driver.handle().reload().await.expect_err("a bad file");
    assert!(error.contains("line 3"), "{error}");
    let (_, targets) = driver.handle().targets_json();
    assert_eq!(
        targets,
        r#"{"us":[{"prober_type":"icmp","targets":["198.18.1.2"]}]}"#
    );
    driver.stop().await;
    assert!(parts.source.is_shut_down());
}

#[tokio::test(start_paused = true)]
async fn settled_series_are_published_once_per_window_and_scrapes_add_the_live_part() {
    let parts = Parts::new();
    let driver = parts.start(Vec::new());
    tokio::time::sleep(WINDOW * 4).await;
    let published = parts.exporter.snapshots().len();
    assert!(
        (3..=5).contains(&published),
        "{published} publications in 4 windows"
    );
    let scrape = String::from_utf8(driver.handle().metrics()).expect("text");
    assert!(scrape.contains("prober_server_receive_points"), "{scrape}");
    driver.stop().await;
}

fn result() -> ProbeResult {
    ProbeResult {
        source: agent(),
        target_region: Region::new("us").expect("region"),
        target: "198.18.1.1".into(),
        round_start: UnixMillis(T0 - 1_000),
        outcome: ProbeOutcome::Icmp(IcmpResult::measured(
            Duration::ZERO,
            4,
            &[Duration::from_millis(3)],
        )),
    }
}

#[tokio::test(start_paused = true)]
async fn the_handoff_record_stays_until_a_start_completes() {
    let parts = Parts::new();
    handoff::hand_over(parts.store.as_ref(), UnixMillis(T0), WINDOW, vec![result()])
        .expect("a previous server's windows");

    // A start abandoned before every listener was up keeps the record.
    parts.start(Vec::new()).abandon();
    assert!(
        parts
            .store
            .read(Record::OpenWindows)
            .expect("read")
            .is_some()
    );

    let driver = parts.start(Vec::new());
    driver.started();
    assert_eq!(parts.store.read(Record::OpenWindows), Ok(None));
    // Stopped before the window settled: the resumed result is handed on.
    let report = driver.stop().await;
    assert_eq!(report.handed_over, 1);
    assert!(
        parts
            .store
            .read(Record::OpenWindows)
            .expect("read")
            .is_some()
    );
}

/// The mesh generation (what `/api/v1/mesh`'s kept rendering is keyed on) moves when an agent
/// connects or goes away and at every window tick, not at every heartbeat; the view built
/// after it is of the new state. (The fake link ends its event stream when its queue is
/// empty, so the events are queued before the start; the timer's first tick is at least
/// 50 ms after it.)
#[tokio::test(start_paused = true)]
async fn the_mesh_generation_moves_on_connects_disconnects_and_ticks_only() {
    let parts = Parts::new();
    parts.source.push_event(connected(1));
    parts.source.push_event(message(
        1,
        FromAgent::Heartbeat {
            sent_at: UnixMillis(T0),
        },
    ));
    let driver = parts.start(Vec::new());
    let handle = driver.handle();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        handle.mesh_generation(),
        1,
        "the connect, not the heartbeat"
    );
    let view = handle.mesh_view().expect("a view");
    assert_eq!(view.agents.len(), 1, "the view built now has the agent");
    tokio::time::sleep(WINDOW * 2).await;
    assert!(handle.mesh_generation() > 1, "a tick moves it");
    driver.stop().await;

    let parts = Parts::new();
    parts.source.push_event(connected(1));
    parts.source.push_event(LinkEvent::Disconnected {
        connection: ConnectionId(1),
        agent: agent(),
    });
    let driver = parts.start(Vec::new());
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        driver.handle().mesh_generation(),
        2,
        "the connect and the disconnect"
    );
    driver.stop().await;
}

/// A chunk held back by the bandwidth cap goes out when the cap allows it, not at the timer's
/// earlier due time (the end of a long window): the driver's timer wakes for a sooner timeout.
#[tokio::test(start_paused = true)]
async fn a_chunk_held_back_by_the_cap_is_sent_when_the_cap_allows() {
    use probermesh_adapters::driver::upgrade::ReleaseIntake;
    use probermesh_core::upgrade::rollout::{
        BatchSize, CHUNK_LEN, Release, RolloutRequest, RolloutSettings, Strategy, UpgradeDesk,
    };
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(UnixMillis(T0)));
    let source = Arc::new(FakeReportSource::open());
    let dir = std::env::temp_dir().join(format!("pm-driver-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("the release dir");
    let sha256 = [3u8; 32];
    let hex: String = sha256.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(
        dir.join(format!("{hex}.bin")),
        vec![7u8; 4 * CHUNK_LEN as usize],
    )
    .expect("the release");
    // A long window: without the wake-up, the held-back chunk would wait for its end.
    let aggregator = Aggregator::new(
        AggregatorConfig {
            window: Duration::from_secs(120),
            ..AggregatorConfig::default()
        },
        clock.now(),
    )
    .expect("aggregator");
    let mut state = ServerState::new(
        aggregator,
        TargetPool::new(vec![], Discovery::Static, false),
    )
    .with_upgrades(UpgradeDesk::new(RolloutSettings {
        // One chunk a second, a burst of one chunk.
        max_bytes_per_second: Some(CHUNK_LEN),
        ..RolloutSettings::default()
    }));
    let agents: Vec<AgentId> = (1..=2)
        .map(|n| {
            AgentId::new(
                Region::new("eu").expect("region"),
                format!("198.18.0.{n}").parse().expect("ip"),
            )
        })
        .collect();
    for (n, agent) in agents.iter().enumerate() {
        let id = n as u64 + 1;
        let _ = state.handle_event(
            clock.now(),
            LinkEvent::Connected {
                connection: ConnectionId(id),
                agent: agent.clone(),
                version: AgentVersion::new("1.0.0"),
                observed_addr: SocketAddr::new(agent.ip, 40_000),
                capabilities: Capabilities {
                    protocol_version: 2,
                    features: ["upgrade".to_owned()].into(),
                },
                instance: id,
            },
        );
    }
    let _ = state
        .start_rollout(
            clock.now(),
            RolloutRequest {
                release: Release {
                    version: "1.1.0".parse().expect("version"),
                    size_bytes: 4 * CHUNK_LEN,
                    sha256,
                    signature: None,
                    source: "http://198.18.0.9/probermesh".into(),
                },
                force: false,
                strategy: Strategy {
                    canary: 0,
                    batch: BatchSize::Agents(2),
                    max_failures: 0,
                    soak: Duration::from_secs(1),
                },
                regions: None,
                actor: "test".into(),
                remote: "127.0.0.1:1".into(),
            },
        )
        .expect("started");
    let offer_id = state.upgrades().rollout().expect("rollout").id;
    let driver = ServerDriver::start(ServerParts {
        link: Arc::clone(&source),
        state,
        clock: Arc::clone(&clock),
        exporter: Arc::new(CapturingExporter::new()) as _,
        pool_source: None,
        store: None,
        task_archive: None,
        releases: ReleaseIntake {
            dir: Some(dir.clone()),
            ..ReleaseIntake::default()
        },
    });
    let chunks_to = |connection: u64| {
        source
            .sent_to()
            .into_iter()
            .filter(|(c, m)| {
                *c == ConnectionId(connection) && matches!(m, ToAgent::BinaryChunk { .. })
            })
            .count()
    };
    // Let the timer loop go to sleep until its due time (the window's end) first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (n, agent) in agents.iter().enumerate() {
        source.push_event(LinkEvent::Message {
            connection: ConnectionId(n as u64 + 1),
            agent: agent.clone(),
            message: FromAgent::ChunkRequest {
                offer_id,
                offset: 0,
            },
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(chunks_to(1), 1, "the burst: one chunk at once");
    assert_eq!(chunks_to(2), 0, "held back by the cap");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        chunks_to(2),
        1,
        "sent one second later, not at the window's end"
    );
    source.end();
    driver.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
