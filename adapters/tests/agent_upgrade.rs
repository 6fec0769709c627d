//! The agent's driver carrying out an upgrade over core's fakes in tokio's paused time: the
//! chunked download through the link, the installer's checks, the hand-over that ends the run,
//! a failed check that keeps the agent running, and a trial's probation that commits.

use std::sync::Arc;
use std::time::Duration;

use probermesh_adapters::clock::TokioClock;
use probermesh_adapters::driver::agent::{self as driver, AgentRun, StopBounds};
use probermesh_core::agent::{AgentConfig, AgentState};
use probermesh_core::fake::{FakeDns, FakeHttpProber, FakeInstaller, FakePinger, FakeServerLink};
use probermesh_core::link::{FromAgent, FromServer, ToAgent, UpgradePlan, UpgradeState};
use probermesh_core::model::{
    AgentId, IcmpModule, ProbeConfig, ProbeKind, ProbeModule, Region, Target, UnixMillis,
};
use probermesh_core::ports::{Clock, EchoSeries, Installer};
use probermesh_core::probe::Probers;
use probermesh_core::upgrade::agent::{Probation, UpgradePolicy, UpgradeSetup};
use tokio::sync::watch;

const T0: u64 = 1_800_000_006_000;
const INTERVAL: Duration = Duration::from_secs(15);
const SIZE: u64 = 600_000;

fn config(setup: UpgradeSetup) -> AgentConfig {
    AgentConfig {
        me: AgentId::new(
            Region::new("eu").expect("region"),
            "198.18.0.11".parse().expect("ip"),
        ),
        probe_interval: INTERVAL,
        sync_interval: Duration::from_secs(60),
        heartbeat_interval: INTERVAL,
        follow_observed_ip: false,
        in_flight_limits: probermesh_core::agent::InFlightLimits::default(),
        tasks: None,
        upgrade: setup,
        traces: Some(Default::default()),
    }
}

fn policy() -> UpgradeSetup {
    UpgradeSetup {
        policy: Some(UpgradePolicy::new("1.0.0".parse().expect("version"))),
        ..UpgradeSetup::default()
    }
}

fn welcome() -> FromServer {
    FromServer::Welcomed {
        server_version: "test".into(),
        capabilities: probermesh_core::link::Capabilities::v1(),
        observed_addr: "198.18.0.11:40000".parse().expect("addr"),
    }
}

fn plan() -> UpgradePlan {
    UpgradePlan {
        version: "1.1.0".into(),
        size_bytes: SIZE,
        sha256: [3; 32],
        signature: None,
        force: false,
    }
}

fn start(
    state: AgentState,
    link: Arc<FakeServerLink>,
    pinger: Arc<FakePinger>,
    installer: Arc<FakeInstaller>,
    clock: Arc<dyn Clock>,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<AgentRun<FakeServerLink>>,
) {
    let (stop, stopping) = watch::channel(false);
    let installer: Arc<dyn Installer> = installer;
    let run = tokio::spawn(driver::run(
        state,
        link,
        Box::new(|_| Err("no re-identification here".into())),
        Probers {
            http: Arc::new(FakeHttpProber::new()),
            dns: Arc::new(FakeDns::new()),
            icmp: pinger,
        },
        Arc::new(probermesh_core::fake::FakeTaskRunner::new()),
        Arc::new(probermesh_core::fake::FakeTracer::new()),
        Some(installer),
        clock,
        stopping,
        StopBounds {
            in_flight: Duration::from_secs(18),
            drain: Duration::from_secs(5),
        },
    ));
    (stop, run)
}

/// Answers every chunk request the agent sent since `answered` with its bytes (256 KiB at
/// most), as the server would; the new count of requests answered.
fn answer_chunks(link: &FakeServerLink, answered: usize) -> usize {
    let requests: Vec<(u64, u64)> = link
        .sent()
        .into_iter()
        .filter_map(|m| match m {
            FromAgent::ChunkRequest { offer_id, offset } => Some((offer_id, offset)),
            _ => None,
        })
        .collect();
    for (offer_id, offset) in &requests[answered..] {
        let len = (SIZE - offset).min(256 * 1024);
        let bytes: Vec<u8> = (*offset..offset + len).map(|i| (i % 251) as u8).collect();
        link.push_incoming(FromServer::Message(ToAgent::BinaryChunk {
            offer_id: *offer_id,
            offset: *offset,
            bytes: Arc::from(bytes),
        }));
    }
    requests.len()
}

fn statuses(link: &FakeServerLink) -> Vec<UpgradeState> {
    link.sent()
        .into_iter()
        .filter_map(|m| match m {
            FromAgent::UpgradeStatus { state, .. } => Some(state),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_offer_is_downloaded_in_chunks_checked_and_handed_over() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(UnixMillis(T0)));
    let link = Arc::new(FakeServerLink::new());
    let installer = Arc::new(FakeInstaller::new());
    // A download cut short by an earlier connection: the agent resumes after these bytes.
    installer.preload(
        9,
        &(0..100u64).map(|i| (i % 251) as u8).collect::<Vec<u8>>(),
    );
    link.push_incoming(welcome());
    link.push_incoming(FromServer::Message(ToAgent::UpgradeOffer {
        offer_id: 9,
        plan: plan(),
    }));
    let state = AgentState::new(config(policy()), clock.now());
    let (_stop, run) = start(
        state,
        Arc::clone(&link),
        Arc::new(FakePinger::new()),
        Arc::clone(&installer),
        clock,
    );
    let mut answered = 0;
    while !run.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        answered = answer_chunks(&link, answered);
        assert!(answered < 10, "too many chunk requests: {:?}", link.sent());
    }
    let run = run.await.expect("the run");
    assert_eq!(run.handover, Some((9, plan())));
    let offsets: Vec<u64> = link
        .sent()
        .into_iter()
        .filter_map(|m| match m {
            FromAgent::ChunkRequest { offset, .. } => Some(offset),
            _ => None,
        })
        .collect();
    assert_eq!(
        offsets,
        [100, 100 + 262_144, 100 + 2 * 262_144],
        "resumed at 100, in 256 KiB steps"
    );
    let staged = installer.staged(9).expect("staged");
    assert_eq!(staged.len() as u64, SIZE);
    assert!(
        staged
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8),
        "bytes in order"
    );
    assert_eq!(
        statuses(&link),
        [
            UpgradeState::Downloading {
                received_bytes: 100
            },
            UpgradeState::Downloading {
                received_bytes: SIZE
            },
            UpgradeState::Verified,
            UpgradeState::Applied,
        ]
    );
    assert!(installer.calls().contains(&"check 9".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn a_failed_check_is_reported_and_the_agent_keeps_running() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(UnixMillis(T0)));
    let link = Arc::new(FakeServerLink::new());
    let installer = Arc::new(FakeInstaller::new());
    installer.fail_check("the new binary reports 1.0.0, not the announced 1.1.0");
    link.push_incoming(welcome());
    link.push_incoming(FromServer::Message(ToAgent::UpgradeOffer {
        offer_id: 2,
        plan: plan(),
    }));
    let state = AgentState::new(config(policy()), clock.now());
    let (stop, run) = start(
        state,
        Arc::clone(&link),
        Arc::new(FakePinger::new()),
        Arc::clone(&installer),
        clock,
    );
    let mut answered = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        answered = answer_chunks(&link, answered);
    }
    assert!(
        !run.is_finished(),
        "a failed upgrade does not stop the agent"
    );
    stop.send(true).expect("stop");
    let run = run.await.expect("the run");
    assert_eq!(run.handover, None);
    assert_eq!(
        statuses(&link).last(),
        Some(&UpgradeState::Failed {
            reason: "checking the binary: the new binary reports 1.0.0, not the announced 1.1.0"
                .into()
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_trial_commits_once_its_results_are_acknowledged_for_its_rounds() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(UnixMillis(T0)));
    let link = Arc::new(FakeServerLink::new());
    let installer = Arc::new(FakeInstaller::new());
    let pinger = Arc::new(FakePinger::new());
    let target: std::net::IpAddr = "198.18.2.1".parse().expect("ip");
    pinger.answer(
        target,
        Ok(EchoSeries {
            packets_sent: 2,
            rtts: vec![Duration::from_millis(3); 2],
            errors: vec![],
        }),
    );
    link.push_incoming(welcome());
    link.push_incoming(FromServer::Message(ToAgent::Pool {
        revision: 1,
        configs: Arc::new(vec![ProbeConfig {
            region: Region::new("us").expect("region"),
            targets: vec![Target::parse(ProbeKind::Icmp, "198.18.2.1").expect("target")],
            module: ProbeModule::Icmp(IcmpModule {
                packet_count: 2,
                ..IcmpModule::default()
            }),
        }]),
    }));
    let setup = UpgradeSetup {
        policy: Some(UpgradePolicy::new("1.1.0".parse().expect("version"))),
        probation: Some(Probation {
            offer_id: 5,
            version: "1.1.0".into(),
            rounds_needed: 2,
        }),
        report: None,
    };
    let state = AgentState::new(config(setup), clock.now());
    let (stop, run) = start(
        state,
        Arc::clone(&link),
        pinger,
        Arc::clone(&installer),
        clock,
    );
    tokio::time::sleep(INTERVAL).await;
    assert!(installer.committed().is_empty(), "not after one round");
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(installer.committed(), [5]);
    assert!(
        !statuses(&link).contains(&UpgradeState::Committed),
        "the trial does not claim the commit: the restarted process reports it"
    );
    stop.send(true).expect("stop");
    assert_eq!(run.await.expect("the run").handover, None);
}
