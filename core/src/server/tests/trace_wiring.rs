//! Path tracing wired into the server: settled windows trigger traces to the agents that take
//! them, reports land in the store and free their agent, disconnects and timeouts give up,
//! operators ask, the families show it; with tracing off nothing changes.

use super::*;
use crate::link::{Capabilities, TraceHop, TraceReport, TraceRequest};
use crate::trace::blame::Blame;
use crate::trace::store::{StoreLimits, TraceOutcome, TraceQuery};
use crate::trace::trigger::TriggerConfig;
use crate::trace::{
    Direction, RegionPair, TRACE_BLAMED_HOP_LOSS, TRACE_REFUSALS, TRACE_RUNS, TraceReason,
};
use std::net::IpAddr;

/// The aggregation window of [`server`] (the default, 15 s).
const WINDOW_MS: u64 = 15_000;

fn tracing_server(limits: StoreLimits) -> ServerState {
    server(Discovery::Dynamic).with_traces(
        TraceDesk::new(TriggerConfig::default(), UnixMillis(T0)).unwrap(),
        TraceStore::new(limits),
    )
}

/// Connects `who` on connection (and process) `id` with protocol `version` and `features`.
fn connect_with(state: &mut ServerState, id: u64, who: &AgentId, version: u16, features: &[&str]) {
    state.handle_event(
        UnixMillis(T0),
        LinkEvent::Connected {
            connection: ConnectionId(id),
            agent: who.clone(),
            version: AgentVersion::new("1.0.0"),
            observed_addr: SocketAddr::new(who.ip, 40_000),
            capabilities: Capabilities {
                protocol_version: version,
                features: features.iter().map(|f| (*f).to_owned()).collect(),
            },
            instance: id,
        },
    );
}

/// Connects `who` as a v2 agent that takes traces.
fn connect_tracer(state: &mut ServerState, id: u64, who: &AgentId) {
    connect_with(state, id, who, 2, &[crate::link::feature::TRACE]);
}

fn eu(n: u8) -> AgentId {
    agent("eu", &format!("198.18.1.{n}"))
}

fn us(n: u8) -> AgentId {
    agent("us", &format!("198.18.2.{n}"))
}

fn eu_us() -> RegionPair {
    RegionPair::new(Region::new("eu").unwrap(), Region::new("us").unwrap())
}

/// Three EU agents and three US agents that take traces, on connections 1–3 and 4–6.
fn mesh(limits: StoreLimits) -> ServerState {
    let mut state = tracing_server(limits);
    for n in 1..=3 {
        connect_tracer(&mut state, u64::from(n), &eu(n));
        connect_tracer(&mut state, u64::from(n) + 3, &us(n));
    }
    state
}

/// One ICMP result of `source` to `target` in window `w`: 20 echoes, `lost` of them lost.
fn icmp(source: &AgentId, target: &AgentId, w: u64, lost: u32) -> ProbeResult {
    let received = usize::try_from(20 - lost).unwrap();
    ProbeResult {
        source: source.clone(),
        target_region: target.region.clone(),
        target: target.ip.to_string(),
        round_start: UnixMillis(T0 + w * WINDOW_MS),
        outcome: ProbeOutcome::Icmp(IcmpResult::measured(
            Duration::ZERO,
            20,
            &vec![Duration::from_millis(10); received],
        )),
    }
}

/// Window `w` of EU → US: every EU agent probes every US agent, losing `lost(source)` of 20;
/// then the tick that settles it. The tick's actions.
fn window(state: &mut ServerState, w: u64, lost: impl Fn(&AgentId) -> u32) -> Actions {
    for (connection, source) in (1..=3).map(|n| (u64::from(n), eu(n))) {
        let results = (1..=3)
            .map(|n| icmp(&source, &us(n), w, lost(&source)))
            .collect();
        let intake = state.handle_event(
            UnixMillis(T0 + w * WINDOW_MS + 100),
            LinkEvent::Message {
                connection: ConnectionId(connection),
                agent: source.clone(),
                message: FromAgent::Results { seq: w, results },
            },
        );
        assert_eq!(intake.intake.accepted, 3, "window {w}");
    }
    // Window w settles at (w + 2) windows after T0 (T0 is a multiple of the window).
    state.handle_timeout(UnixMillis(T0 + (w + 2) * WINDOW_MS))
}

fn traces_sent(actions: &Actions) -> Vec<(ConnectionId, TraceRequest)> {
    actions
        .send
        .iter()
        .filter_map(|(connection, message)| match message {
            ToAgent::Trace(request) => Some((*connection, request.clone())),
            _ => None,
        })
        .collect()
}

/// A trace to `target` losing 30 % from hop 2 on: blamed at hop 2.
fn lossy_from_hop_2(id: u64, target: IpAddr) -> TraceReport {
    let hop = |ttl: u8, addr: IpAddr, received: u32| TraceHop {
        ttl,
        addr: Some(addr),
        sent: 20,
        received,
        rtt_best: Some(Duration::from_millis(5)),
        rtt_mean: Some(Duration::from_millis(6)),
        rtt_worst: Some(Duration::from_millis(7)),
        rtt_stddev: Some(Duration::from_millis(1)),
    };
    TraceReport {
        id,
        target,
        hops: vec![
            hop(1, "198.18.100.1".parse().unwrap(), 20),
            hop(2, "198.18.100.2".parse().unwrap(), 14),
            hop(3, target, 14),
        ],
        error: None,
    }
}

fn report_event(connection: u64, who: &AgentId, report: TraceReport) -> LinkEvent {
    LinkEvent::Message {
        connection: ConnectionId(connection),
        agent: who.clone(),
        message: FromAgent::TraceResult(report),
    }
}

/// The series of family `name` in the live part, as (labels, value); `None` without it.
fn family(state: &ServerState, name: &str) -> Option<Vec<(Vec<String>, f64)>> {
    state
        .snapshot_part(UnixMillis(T0 + 3_600_000), SnapshotPart::Live)
        .families
        .iter()
        .find(|f| f.name == name)
        .map(|f| {
            f.series
                .iter()
                .map(|s| (s.label_values.clone(), s.number().unwrap_or(f64::NAN)))
                .collect()
        })
}

fn labelled(family: &[(Vec<String>, f64)], label: &str) -> Option<f64> {
    family
        .iter()
        .find(|(labels, _)| labels == &[label.to_owned()])
        .map(|(_, v)| *v)
}

/// Settles K (3) lossy windows: the third tick's actions.
fn three_lossy_windows(state: &mut ServerState) -> Actions {
    for w in 0..2 {
        let actions = window(state, w, |_| 4);
        assert!(traces_sent(&actions).is_empty(), "window {w}: {actions:?}");
    }
    window(state, 2, |_| 4)
}

#[test]
fn a_pair_losing_for_k_windows_is_traced_from_both_ends() {
    let mut state = mesh(StoreLimits::default());
    let actions = three_lossy_windows(&mut state);
    let sent = traces_sent(&actions);
    let sent: Vec<(u64, IpAddr)> = sent.iter().map(|(c, r)| (c.0, r.target)).collect();
    // Forward from two EU agents to the first US agent, back from it to the first EU agent.
    assert_eq!(
        sent,
        vec![(1, us(1).ip), (2, us(1).ip), (4, eu(1).ip)],
        "{actions:?}"
    );
    assert!(
        actions
            .trace_events
            .iter()
            .any(|e| e.contains("eu->us") && e.contains("degraded")),
        "{:?}",
        actions.trace_events
    );
    let desk = state.trace_desk().unwrap();
    assert!(desk.is_degraded(&eu_us()));
    let directions: Vec<Option<Direction>> =
        desk.in_flight().values().map(|f| f.direction).collect();
    assert_eq!(
        directions,
        vec![
            Some(Direction::Forward),
            Some(Direction::Forward),
            Some(Direction::Reverse)
        ]
    );
    // Traces in flight move the next timeout no later than their deadline.
    let started = T0 + 4 * WINDOW_MS;
    assert!(state.next_timeout() <= UnixMillis(started + 120_000));
}

#[test]
fn only_v2_agents_that_take_traces_are_sent_traces() {
    let mut state = tracing_server(StoreLimits::default());
    // EU: a v1 agent, a v2 agent without the feature, one that takes traces; US likewise.
    connect_with(&mut state, 1, &eu(1), 1, &[]);
    connect_with(&mut state, 2, &eu(2), 2, &[crate::link::feature::TASK]);
    connect_tracer(&mut state, 3, &eu(3));
    connect_with(&mut state, 4, &us(1), 1, &[]);
    connect_with(&mut state, 5, &us(2), 2, &[]);
    connect_tracer(&mut state, 6, &us(3));
    let actions = three_lossy_windows(&mut state);
    let sent: Vec<(u64, IpAddr)> = traces_sent(&actions)
        .iter()
        .map(|(c, r)| (c.0, r.target))
        .collect();
    // One forward run (one source can), to the US agent that can trace back, and back.
    assert_eq!(sent, vec![(3, us(3).ip), (6, eu(3).ip)], "{actions:?}");
}

#[test]
fn a_healthy_pair_is_never_traced() {
    let mut state = mesh(StoreLimits::default());
    for w in 0..20 {
        let actions = window(&mut state, w, |_| 0);
        assert!(traces_sent(&actions).is_empty(), "window {w}");
    }
    let runs = family(&state, TRACE_RUNS).unwrap();
    assert!(runs.iter().all(|(_, v)| *v == 0.0), "{runs:?}");
    assert!(state.traces().unwrap().is_empty());
}

#[test]
fn a_host_the_robust_aggregator_left_out_makes_the_window_bad_and_is_traced_from() {
    // EU 3 loses 60 % to every target, the others nothing: the robust method leaves it out,
    // the pair's loss gauge reads 0, and the window counts as bad all the same.
    let mut state = mesh(StoreLimits::default());
    let broken = eu(3);
    let lost = |source: &AgentId| if *source == eu(3) { 12 } else { 0 };
    for w in 0..2 {
        assert!(traces_sent(&window(&mut state, w, lost)).is_empty());
    }
    let actions = window(&mut state, 2, lost);
    let loss = state
        .mesh_pair(
            UnixMillis(T0 + 4 * WINDOW_MS),
            &Region::new("eu").unwrap(),
            &Region::new("us").unwrap(),
        )
        .unwrap();
    assert_eq!(loss.history.last().and_then(|p| p.loss_ratio), Some(0.0));
    assert_eq!(loss.history.last().map(|p| p.left_out), Some(1));
    let sent: Vec<(u64, IpAddr)> = traces_sent(&actions)
        .iter()
        .map(|(c, r)| (c.0, r.target))
        .collect();
    // Only from the blamed agent forward, and back to it.
    assert_eq!(sent, vec![(3, us(1).ip), (4, broken.ip)], "{actions:?}");
    let runs = family(&state, TRACE_RUNS).unwrap();
    assert_eq!(labelled(&runs, "loss"), Some(2.0), "the host's own loss");
}

#[test]
fn a_report_lands_in_the_store_with_its_blame_and_frees_its_agent() {
    let mut state = mesh(StoreLimits::default());
    let sent = traces_sent(&three_lossy_windows(&mut state));
    let (connection, request) = sent[0].clone();
    assert_eq!(connection, ConnectionId(1));
    // Busy: an operator cannot use EU 1 now (counted).
    let operator = OperatorTrace {
        agent: eu(1),
        target: us(2).ip,
        pair: Some(eu_us()),
        shape: None,
    };
    assert_eq!(
        state.request_trace(UnixMillis(T0 + 61_000), operator.clone()),
        Err(Refusal::AgentBusy)
    );
    let now = UnixMillis(T0 + 80_000);
    let actions = state.handle_event(
        now,
        report_event(1, &eu(1), lossy_from_hop_2(request.id, request.target)),
    );
    assert!(actions.send.is_empty());
    let store = state.traces().unwrap();
    assert_eq!(store.len(), 1);
    let record = store.get(request.id).unwrap();
    assert_eq!(record.pair, Some(eu_us()));
    assert_eq!(record.reason, TraceReason::Loss);
    assert_eq!(record.direction, Some(Direction::Forward));
    assert_eq!(record.agent, eu(1));
    assert_eq!(record.ended_at, now);
    let TraceOutcome::Reported { verdict, .. } = &record.outcome else {
        panic!("not reported: {record:?}");
    };
    assert!(
        matches!(verdict.blame, Blame::Hop { ttl: 2, loss_ratio, .. } if (loss_ratio - 0.3).abs() < 1e-9),
        "{verdict:?}"
    );
    // EU 1 is free: the operator's trace goes out on its connection.
    let actions = state
        .request_trace(UnixMillis(T0 + 81_000), operator)
        .unwrap();
    let sent = traces_sent(&actions);
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].0, sent[0].1.target), (ConnectionId(1), us(2).ip));
    // A report nobody waits for (another agent's id) is dropped, not stored.
    state.handle_event(
        UnixMillis(T0 + 82_000),
        report_event(5, &us(2), lossy_from_hop_2(request.id, request.target)),
    );
    assert_eq!(state.traces().unwrap().len(), 1);
    assert_eq!(state.trace_desk().unwrap().counters().unknown_reports, 1);
}

#[test]
fn the_trace_families_count_runs_and_refusals_and_show_the_blamed_hop_per_pair() {
    let mut state = mesh(StoreLimits::default());
    // Before anything: every reason at 0, no pair in the gauge.
    let runs = family(&state, TRACE_RUNS).unwrap();
    assert_eq!(runs.len(), TraceReason::ALL.len());
    assert!(runs.iter().all(|(_, v)| *v == 0.0));
    let refusals = family(&state, TRACE_REFUSALS).unwrap();
    assert_eq!(refusals.len(), Refusal::ALL.len());
    assert_eq!(family(&state, TRACE_BLAMED_HOP_LOSS), Some(Vec::new()));

    let sent = traces_sent(&three_lossy_windows(&mut state));
    // An operator naming an agent that does not take traces: no_agent, counted.
    assert_eq!(
        state.request_trace(
            UnixMillis(T0 + 61_000),
            OperatorTrace {
                agent: agent("eu", "198.18.1.99"),
                target: us(1).ip,
                pair: None,
                shape: None,
            }
        ),
        Err(Refusal::NoAgent)
    );
    let (_, forward) = &sent[0];
    state.handle_event(
        UnixMillis(T0 + 80_000),
        report_event(1, &eu(1), lossy_from_hop_2(forward.id, forward.target)),
    );
    let runs = family(&state, TRACE_RUNS).unwrap();
    assert_eq!(labelled(&runs, "loss"), Some(3.0));
    assert_eq!(labelled(&runs, "operator"), Some(0.0));
    let refusals = family(&state, TRACE_REFUSALS).unwrap();
    assert_eq!(labelled(&refusals, "no_agent"), Some(1.0));
    assert_eq!(labelled(&refusals, "budget"), Some(0.0));
    let blamed = family(&state, TRACE_BLAMED_HOP_LOSS).unwrap();
    assert_eq!(blamed.len(), 1, "{blamed:?}");
    assert_eq!(blamed[0].0, vec!["eu".to_owned(), "us".to_owned()]);
    assert!((blamed[0].1 - 0.3).abs() < 1e-9, "{blamed:?}");

    // The reverse trace reports clean: the pair's latest trace blames no hop.
    let (_, reverse) = &sent[2];
    state.handle_event(
        UnixMillis(T0 + 85_000),
        report_event(
            4,
            &us(1),
            TraceReport {
                id: reverse.id,
                target: reverse.target,
                hops: vec![TraceHop {
                    ttl: 1,
                    addr: Some(reverse.target),
                    sent: 20,
                    received: 20,
                    rtt_best: None,
                    rtt_mean: None,
                    rtt_worst: None,
                    rtt_stddev: None,
                }],
                error: None,
            },
        ),
    );
    assert_eq!(
        family(&state, TRACE_BLAMED_HOP_LOSS),
        Some(vec![(vec!["eu".to_owned(), "us".to_owned()], 0.0)])
    );
}

#[test]
fn a_pair_leaves_the_blamed_hop_gauge_with_its_last_record() {
    // The store keeps one record: an operator trace outside any pair pushes the pair's out.
    let mut state = mesh(StoreLimits {
        per_pair: 1,
        max_records: 1,
        max_bytes: 1 << 20,
    });
    let sent = traces_sent(&three_lossy_windows(&mut state));
    let (_, forward) = &sent[0];
    state.handle_event(
        UnixMillis(T0 + 80_000),
        report_event(1, &eu(1), lossy_from_hop_2(forward.id, forward.target)),
    );
    assert_eq!(
        family(&state, TRACE_BLAMED_HOP_LOSS).map(|f| f.len()),
        Some(1)
    );
    let actions = state
        .request_trace(
            UnixMillis(T0 + 81_000),
            OperatorTrace {
                agent: eu(1),
                target: "192.0.2.1".parse().unwrap(),
                pair: None,
                shape: None,
            },
        )
        .unwrap();
    let (_, operator) = traces_sent(&actions)[0].clone();
    state.handle_event(
        UnixMillis(T0 + 90_000),
        report_event(1, &eu(1), lossy_from_hop_2(operator.id, operator.target)),
    );
    let store = state.traces().unwrap();
    assert_eq!(store.len(), 1);
    assert!(
        store
            .query(&TraceQuery {
                pair: Some(Some(eu_us())),
                ..TraceQuery::default()
            })
            .is_empty()
    );
    assert_eq!(family(&state, TRACE_BLAMED_HOP_LOSS), Some(Vec::new()));
}

#[test]
fn a_disconnect_abandons_the_trace_sent_on_it_and_a_timeout_gives_up_the_rest() {
    let mut state = mesh(StoreLimits::default());
    let sent = traces_sent(&three_lossy_windows(&mut state));
    assert_eq!(sent.len(), 3);
    // EU 2 reconnects on a new connection first: losing the old one abandons its trace.
    connect_tracer(&mut state, 7, &eu(2));
    let actions = state.handle_event(
        UnixMillis(T0 + 70_000),
        LinkEvent::Disconnected {
            connection: ConnectionId(2),
            agent: eu(2),
        },
    );
    assert!(
        actions.trace_events.iter().any(|e| e.contains("abandoned")),
        "{:?}",
        actions.trace_events
    );
    let abandoned = state.traces().unwrap().get(sent[1].1.id).unwrap();
    assert_eq!(abandoned.outcome, TraceOutcome::Abandoned);
    // The new connection of EU 2 losing nothing in flight abandons nothing.
    let quiet = state.handle_event(
        UnixMillis(T0 + 71_000),
        LinkEvent::Disconnected {
            connection: ConnectionId(7),
            agent: eu(2),
        },
    );
    assert!(quiet.trace_events.is_empty());
    // The two left time out at their deadline (2 min after they were sent).
    let started = T0 + 4 * WINDOW_MS;
    let deadline = state.trace_desk().unwrap().next_timeout().unwrap();
    assert_eq!(deadline, UnixMillis(started + 120_000));
    let actions = state.handle_timeout(deadline);
    assert_eq!(
        actions
            .trace_events
            .iter()
            .filter(|e| e.contains("timed_out"))
            .count(),
        2,
        "{:?}",
        actions.trace_events
    );
    assert!(state.trace_desk().unwrap().in_flight().is_empty());
    assert_eq!(state.traces().unwrap().len(), 3);
}

#[test]
fn with_tracing_off_nothing_changes() {
    let mut state = server(Discovery::Dynamic);
    for n in 1..=3 {
        connect_tracer(&mut state, u64::from(n), &eu(n));
        connect_tracer(&mut state, u64::from(n) + 3, &us(n));
    }
    for w in 0..6 {
        let actions = window(&mut state, w, |_| 10);
        assert!(traces_sent(&actions).is_empty(), "window {w}");
        assert!(actions.trace_events.is_empty());
    }
    assert!(state.traces().is_none());
    assert!(state.trace_desk().is_none());
    let report = state.handle_event(
        UnixMillis(T0 + 200_000),
        report_event(1, &eu(1), lossy_from_hop_2(1, us(1).ip)),
    );
    assert_eq!(report, Actions::default(), "a TraceResult is ignored");
    assert_eq!(
        state.request_trace(
            UnixMillis(T0 + 200_000),
            OperatorTrace {
                agent: eu(1),
                target: us(1).ip,
                pair: None,
                shape: None,
            }
        ),
        Err(Refusal::NoAgent)
    );
    let snapshot = state.snapshot_part(UnixMillis(T0 + 200_000), SnapshotPart::All);
    assert!(
        snapshot
            .families
            .iter()
            .all(|f| !f.name.starts_with("prober_server_trace_")),
        "no trace families"
    );
}

#[test]
fn an_operator_trace_by_region_pair_goes_to_a_free_tracer_towards_a_probed_host() {
    let mut state = mesh(StoreLimits::default());
    // One settled window, so the aggregator knows the pair's target hosts.
    window(&mut state, 0, |_| 0);
    let now = UnixMillis(T0 + 3 * WINDOW_MS);
    let ask = OperatorAsk {
        source_region: Some(Region::new("eu").unwrap()),
        target_region: Some(Region::new("us").unwrap()),
        ..OperatorAsk::default()
    };
    let (request, agent, actions) = state.request_operator_trace(now, ask.clone()).unwrap();
    assert_eq!(agent, eu(1));
    assert!([us(1).ip, us(2).ip, us(3).ip].contains(&request.target));
    assert_eq!(
        traces_sent(&actions),
        vec![(ConnectionId(1), request.clone())]
    );
    let flight = &state.trace_desk().unwrap().in_flight()[&request.id];
    assert_eq!(flight.pair, Some(eu_us()));
    // The next one goes to another agent; a named busy agent is refused.
    let (_, second, _) = state.request_operator_trace(now, ask.clone()).unwrap();
    assert_eq!(second, eu(2));
    let named = OperatorAsk {
        agent: Some(eu(1)),
        target: Some(us(3).ip),
        ..OperatorAsk::default()
    };
    assert_eq!(
        state.request_operator_trace(now, named).unwrap_err(),
        OperatorTraceError::Pick(PickError::Busy)
    );
    // An agent that is not connected, a region without tracers, no target known.
    let stranger = OperatorAsk {
        agent: Some(eu(9)),
        target: Some(us(3).ip),
        ..OperatorAsk::default()
    };
    assert_eq!(
        state.request_operator_trace(now, stranger).unwrap_err(),
        OperatorTraceError::Pick(PickError::NoTracer)
    );
    let nowhere = OperatorAsk {
        source_region: Some(Region::new("eu").unwrap()),
        target_region: Some(Region::new("mars").unwrap()),
        ..OperatorAsk::default()
    };
    assert_eq!(
        state.request_operator_trace(now, nowhere).unwrap_err(),
        OperatorTraceError::Pick(PickError::NoTarget)
    );
    let counters = state.trace_desk().unwrap().counters();
    assert_eq!(counters.runs[&TraceReason::Operator], 2);
    assert_eq!(counters.refusals[&Refusal::AgentBusy], 1);
    assert_eq!(counters.refusals[&Refusal::NoAgent], 2);
    // Tracing off.
    let mut off = server(Discovery::Dynamic);
    assert_eq!(
        off.request_operator_trace(now, ask).unwrap_err(),
        OperatorTraceError::Off
    );
}
