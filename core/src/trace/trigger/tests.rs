//! The trace desk's tests: the trigger's hysteresis, who traces where, the limits, and
//! property tests over flapping input (budget, cooldown, one trace per agent, healthy pairs).

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::link::TraceHop;
use crate::model::Region;
use proptest::prelude::*;

const WINDOW_MS: u64 = 30_000;

fn region(name: &str) -> Region {
    Region::new(name).unwrap()
}

fn agent(region_name: &str, last: u8) -> AgentId {
    let octet = match region_name {
        "a" => 1,
        "b" => 2,
        _ => 3,
    };
    AgentId::new(region(region_name), IpAddr::from([198, 18, octet, last]))
}

fn pair(source: &str, target: &str) -> RegionPair {
    RegionPair::new(region(source), region(target))
}

/// A window of `pair` with `loss_ratio`, 10 ms, three agents on each side, no blame.
fn verdict(source: &str, target: &str, loss_ratio: f64) -> PairVerdict {
    let target_agents: Vec<AgentId> = (1..=3).map(|n| agent(target, n)).collect();
    PairVerdict {
        pair: pair(source, target),
        loss_ratio: Some(loss_ratio),
        rtt_mean: Some(Duration::from_millis(10)),
        blamed: None,
        source_agents: (1..=3).map(|n| agent(source, n)).collect(),
        target_hosts: target_agents.iter().map(|a| a.ip).collect(),
        target_agents,
    }
}

fn config() -> TriggerConfig {
    TriggerConfig::default()
}

fn desk() -> TraceDesk {
    TraceDesk::new(config(), UnixMillis(0)).unwrap()
}

fn at(window: u64) -> UnixMillis {
    UnixMillis(window * WINDOW_MS)
}

/// Keeps `busy` tracing with an operator's trace from `now`; its trace id.
fn busy_with_operator(desk: &mut TraceDesk, busy: AgentId, now: UnixMillis) -> u64 {
    let changes = desk
        .request(
            now,
            OperatorTrace {
                agent: busy,
                target: "198.18.9.9".parse().unwrap(),
                pair: None,
                shape: None,
            },
        )
        .unwrap();
    assert_eq!(changes.requests.len(), 1);
    changes.requests[0].1.id
}

fn clean_report(id: u64, target: IpAddr) -> TraceReport {
    TraceReport {
        id,
        target,
        hops: vec![TraceHop {
            ttl: 1,
            addr: Some(target),
            sent: 20,
            received: 20,
            rtt_best: None,
            rtt_mean: None,
            rtt_worst: None,
            rtt_stddev: None,
        }],
        error: None,
    }
}

#[test]
fn a_pair_bad_for_k_windows_is_traced_forward_from_two_and_back_from_one() {
    let mut desk = desk();
    for w in 0..2 {
        let changes = desk.handle_window(at(w), &[verdict("a", "b", 0.2)]);
        assert!(changes.requests.is_empty(), "window {w}: {changes:?}");
    }
    let changes = desk.handle_window(at(2), &[verdict("a", "b", 0.2)]);
    let sent: Vec<(AgentId, IpAddr)> = changes
        .requests
        .iter()
        .map(|(a, r)| (a.clone(), r.target))
        .collect();
    // Forward from the first two source agents to the first target host (an agent), and
    // back from that agent to the first forward source.
    assert_eq!(
        sent,
        vec![
            (agent("a", 1), agent("b", 1).ip),
            (agent("a", 2), agent("b", 1).ip),
            (agent("b", 1), agent("a", 1).ip),
        ]
    );
    assert!(desk.is_degraded(&pair("a", "b")));
    assert_eq!(desk.counters().runs[&TraceReason::Loss], 3);
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
    let request = &changes.requests[0].1;
    assert_eq!(
        (request.protocol, request.max_hops, request.rounds),
        (TraceProtocol::Icmp, 30, 20)
    );
    assert!(matches!(changes.events[0], TraceEvent::Degraded { .. }));
}

#[test]
fn hysteresis_keeps_a_pair_at_the_edge_from_flapping() {
    let mut desk = desk();
    for w in 0..3 {
        desk.handle_window(at(w), &[verdict("a", "b", 0.2)]);
    }
    // Between the clear (1 %) and trigger (5 %) thresholds: still degraded, however long.
    for w in 3..30 {
        let changes = desk.handle_window(at(w), &[verdict("a", "b", 0.03)]);
        assert!(changes.requests.is_empty());
        assert!(desk.is_degraded(&pair("a", "b")));
    }
    // Two clear windows, a band window, then three clear: recovered only at the last.
    desk.handle_window(at(30), &[verdict("a", "b", 0.0)]);
    desk.handle_window(at(31), &[verdict("a", "b", 0.0)]);
    desk.handle_window(at(32), &[verdict("a", "b", 0.02)]);
    desk.handle_window(at(33), &[verdict("a", "b", 0.0)]);
    desk.handle_window(at(34), &[verdict("a", "b", 0.0)]);
    assert!(desk.is_degraded(&pair("a", "b")));
    let changes = desk.handle_window(at(35), &[verdict("a", "b", 0.0)]);
    assert!(!desk.is_degraded(&pair("a", "b")));
    assert!(changes.events.contains(&TraceEvent::Recovered {
        pair: pair("a", "b")
    }));
}

#[test]
fn recovery_is_traced_after_the_cooldown_and_only_after_a_traced_episode() {
    let mut desk = desk();
    for w in 0..3 {
        desk.handle_window(at(w), &[verdict("a", "b", 0.2)]);
    }
    let ids: Vec<(AgentId, u64)> = desk
        .in_flight()
        .iter()
        .map(|(id, f)| (f.agent.clone(), *id))
        .collect();
    for (who, id) in ids {
        desk.handle_report(at(4), &who, clean_report(id, "198.18.2.1".parse().unwrap()));
    }
    // Recovered at window 5, inside the 10 min cooldown: held back until window 22.
    for w in 3..6 {
        desk.handle_window(at(w), &[verdict("a", "b", 0.0)]);
    }
    assert!(!desk.is_degraded(&pair("a", "b")));
    assert_eq!(desk.counters().refusals[&Refusal::Cooldown], 1);
    for w in 6..22 {
        let changes = desk.handle_window(at(w), &[verdict("a", "b", 0.0)]);
        assert!(changes.requests.is_empty(), "window {w}");
    }
    let changes = desk.handle_window(at(22), &[verdict("a", "b", 0.0)]);
    assert_eq!(changes.requests.len(), 3);
    assert_eq!(desk.counters().runs[&TraceReason::Recovery], 3);
    // A degraded episode never traced (no agents) is not traced on recovery.
    let mut desk = self::desk();
    let mut lonely = verdict("a", "c", 0.5);
    lonely.source_agents.clear();
    lonely.target_agents.clear();
    for w in 0..3 {
        desk.handle_window(at(w), std::slice::from_ref(&lonely));
    }
    // Each wanted run (one forward, one back) held back once.
    assert_eq!(desk.counters().refusals[&Refusal::NoAgent], 2);
    // Recovered with no agent still (a due set waits while the pair is degraded) ...
    lonely.loss_ratio = Some(0.0);
    for w in 3..6 {
        desk.handle_window(at(w), std::slice::from_ref(&lonely));
    }
    assert!(!desk.is_degraded(&pair("a", "c")));
    // ... and with agents back, nothing is due: no "after" without a "before".
    let back = verdict("a", "c", 0.0);
    for w in 6..40 {
        let changes = desk.handle_window(at(w), std::slice::from_ref(&back));
        assert!(changes.requests.is_empty(), "window {w}");
    }
    assert_eq!(desk.counters().runs[&TraceReason::Recovery], 0);
}

#[test]
fn a_blamed_source_agent_is_the_only_forward_tracer_and_the_reverse_target() {
    let mut desk = desk();
    let mut v = verdict("a", "b", 0.3);
    v.blamed = Some(BlamedHost::Source(agent("a", 3)));
    for w in 0..3 {
        desk.handle_window(at(w), std::slice::from_ref(&v));
    }
    let sent: Vec<(AgentId, IpAddr)> = desk
        .in_flight()
        .values()
        .map(|f| (f.agent.clone(), f.request.target))
        .collect();
    assert_eq!(
        sent,
        vec![
            (agent("a", 3), agent("b", 1).ip),
            (agent("b", 1), agent("a", 3).ip)
        ]
    );
}

#[test]
fn a_blamed_target_host_is_traced_to_and_traces_back() {
    let mut desk = desk();
    let mut v = verdict("a", "b", 0.3);
    v.blamed = Some(BlamedHost::Target(agent("b", 2).ip));
    for w in 0..3 {
        desk.handle_window(at(w), std::slice::from_ref(&v));
    }
    let sent: Vec<(AgentId, IpAddr)> = desk
        .in_flight()
        .values()
        .map(|f| (f.agent.clone(), f.request.target))
        .collect();
    assert_eq!(
        sent,
        vec![
            (agent("a", 1), agent("b", 2).ip),
            (agent("a", 2), agent("b", 2).ip),
            (agent("b", 2), agent("a", 1).ip)
        ]
    );
}

#[test]
fn latency_past_its_baseline_ratio_or_absolute_threshold_triggers() {
    let mut desk = desk();
    let mut v = verdict("a", "b", 0.0);
    for w in 0..10 {
        desk.handle_window(at(w), std::slice::from_ref(&v));
    }
    v.rtt_mean = Some(Duration::from_millis(25));
    for w in 10..13 {
        desk.handle_window(at(w), std::slice::from_ref(&v));
    }
    assert!(desk.is_degraded(&pair("a", "b")));
    assert_eq!(desk.counters().runs[&TraceReason::Latency], 3);
    // Without a baseline yet, only the absolute threshold applies.
    let mut desk = TraceDesk::new(
        TriggerConfig {
            rtt: Some(Thresholds {
                trigger: Duration::from_millis(100),
                clear: Duration::from_millis(80),
            }),
            ..config()
        },
        UnixMillis(0),
    )
    .unwrap();
    let mut v = verdict("a", "b", 0.0);
    v.rtt_mean = Some(Duration::from_millis(150));
    for w in 0..3 {
        desk.handle_window(at(w), std::slice::from_ref(&v));
    }
    assert!(desk.is_degraded(&pair("a", "b")));
}

#[test]
fn a_busy_agent_is_not_picked_and_a_timeout_or_a_report_frees_it() {
    let mut desk = TraceDesk::new(
        TriggerConfig {
            forward_agents: 1,
            ..config()
        },
        UnixMillis(0),
    )
    .unwrap();
    // An operator keeps a.1 busy: the pair's forward trace goes from a.2.
    let operator = desk
        .request(
            at(0),
            OperatorTrace {
                agent: agent("a", 1),
                target: "192.0.2.1".parse().unwrap(),
                pair: None,
                shape: None,
            },
        )
        .unwrap();
    let operator_id = operator.requests[0].1.id;
    let again = desk.request(
        at(0),
        OperatorTrace {
            agent: agent("a", 1),
            target: "192.0.2.2".parse().unwrap(),
            pair: None,
            shape: None,
        },
    );
    assert_eq!(again, Err(Refusal::AgentBusy));
    for w in 0..3 {
        desk.handle_window(at(w), &[verdict("a", "b", 0.2)]);
    }
    assert!(
        desk.in_flight()
            .values()
            .any(|f| f.agent == agent("a", 2) && f.direction == Some(Direction::Forward))
    );
    // The operator's trace times out at its deadline, not before.
    let deadline = at(0).saturating_add(config().trace_timeout);
    assert_eq!(desk.next_timeout(), Some(deadline));
    let early = desk.tick(UnixMillis(deadline.as_millis() - 1));
    assert!(early.finished.is_empty());
    let expired = desk.tick(deadline);
    assert_eq!(expired.finished.len(), 1);
    assert_eq!(expired.finished[0].id, operator_id);
    assert_eq!(expired.finished[0].outcome, TraceOutcome::TimedOut);
    assert_eq!(desk.counters().given_up, 1);
    // Freed: the operator may trace from it again, and a late report is unknown.
    assert!(
        desk.request(
            deadline,
            OperatorTrace {
                agent: agent("a", 1),
                target: "192.0.2.3".parse().unwrap(),
                pair: Some(pair("a", "b")),
                shape: None,
            },
        )
        .is_ok()
    );
    desk.handle_report(
        deadline,
        &agent("a", 1),
        clean_report(operator_id, "192.0.2.1".parse().unwrap()),
    );
    assert_eq!(desk.counters().unknown_reports, 1);
    assert_eq!(desk.counters().runs[&TraceReason::Operator], 2);
    assert_eq!(desk.counters().refusals[&Refusal::AgentBusy], 1);
}

#[test]
fn a_report_is_judged_filed_and_only_taken_from_its_agent() {
    let mut desk = desk();
    for w in 0..3 {
        desk.handle_window(at(w), &[verdict("a", "b", 0.2)]);
    }
    let (id, flight) = desk
        .in_flight()
        .iter()
        .next()
        .map(|(id, f)| (*id, f.clone()))
        .unwrap();
    let wrong = desk.handle_report(
        at(3),
        &agent("a", 3),
        clean_report(id, flight.request.target),
    );
    assert!(wrong.finished.is_empty());
    let changes = desk.handle_report(
        at(3),
        &flight.agent,
        clean_report(id, flight.request.target),
    );
    let record = &changes.finished[0];
    assert_eq!(record.pair, Some(pair("a", "b")));
    assert_eq!(record.reason, TraceReason::Loss);
    assert_eq!((record.started_at, record.ended_at), (at(2), at(3)));
    let TraceOutcome::Reported { verdict, .. } = &record.outcome else {
        panic!("{record:?}");
    };
    assert_eq!(verdict.blame, super::super::blame::Blame::Clean);
    let abandoned = desk.handle_disconnect(at(3), &agent("a", 2));
    assert_eq!(abandoned.finished[0].outcome, TraceOutcome::Abandoned);
    assert_eq!(desk.in_flight().len(), 1);
}

#[test]
fn the_hourly_budget_holds_back_runs_and_refills_an_hour_later() {
    let mut desk = TraceDesk::new(
        TriggerConfig {
            budget_per_hour: 4,
            ..config()
        },
        UnixMillis(0),
    )
    .unwrap();
    let bad = [verdict("a", "b", 0.5), verdict("b", "a", 0.5)];
    for w in 0..3 {
        desk.handle_window(at(w), &bad);
    }
    // a->b takes three runs, b->a the last one (forward) and is refused one forward and
    // the reverse.
    assert_eq!(desk.counters().runs[&TraceReason::Loss], 4);
    assert_eq!(desk.counters().refusals[&Refusal::Budget], 2);
    // The set of b->a went out (one run), so neither pair is due any more.
    desk.handle_window(at(3), &bad);
    assert_eq!(desk.counters().refusals[&Refusal::Budget], 2);
    // A third pair degrading within the hour waits for the budget, then goes at once.
    let third = [verdict("a", "c", 0.5)];
    for w in 3..6 {
        desk.handle_window(at(w), &third);
    }
    assert_eq!(desk.counters().refusals[&Refusal::Budget], 5);
    let an_hour_on = UnixMillis(at(2).as_millis() + 3_600_000);
    assert_eq!(desk.tick(an_hour_on).finished.len(), 4);
    let changes = desk.handle_window(an_hour_on, &third);
    assert_eq!(changes.requests.len(), 3);
}

#[test]
fn settings_out_of_range_are_named() {
    let bad = [
        TriggerConfig {
            loss_ratio: Thresholds {
                trigger: 0.05,
                clear: 0.1,
            },
            ..config()
        },
        TriggerConfig {
            windows_to_trigger: 0,
            ..config()
        },
        TriggerConfig {
            forward_agents: 3,
            ..config()
        },
        TriggerConfig {
            rtt_baseline_ratio: Some(Thresholds {
                trigger: 1.2,
                clear: 1.5,
            }),
            ..config()
        },
        TriggerConfig {
            loss_ratio: Thresholds {
                trigger: f64::NAN,
                clear: 0.01,
            },
            ..config()
        },
    ];
    let fields: Vec<&str> = bad
        .into_iter()
        .map(|c| TraceDesk::new(c, UnixMillis(0)).unwrap_err().field)
        .collect();
    assert_eq!(
        fields,
        vec![
            "loss_ratio.clear",
            "windows_to_trigger",
            "forward_agents",
            "rtt_baseline_ratio",
            "loss_ratio.trigger"
        ]
    );
}

// === property tests ===

/// What one generated window does: each pair's loss, which traces finish before it, and a
/// tick between windows.
#[derive(Clone, Debug)]
struct Step {
    losses: Vec<f64>,
    blame: Vec<u8>,
    /// Each in-flight trace reports when its bit is set (by position).
    reports: u32,
    tick: bool,
}

fn step(n_pairs: usize) -> impl Strategy<Value = Step> {
    (
        proptest::collection::vec(
            prop_oneof![Just(0.0), Just(0.03), Just(0.2), Just(1.0)],
            n_pairs,
        ),
        proptest::collection::vec(0u8..4, n_pairs),
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(|(losses, blame, reports, tick)| Step {
            losses,
            blame,
            reports,
            tick,
        })
}

/// Checks `changes` against what the harness believes is in flight, by agent, and updates it:
/// a finished trace was running on its agent, a request goes to an agent with none.
fn apply(
    changes: &TraceChanges,
    running: &mut BTreeMap<AgentId, u64>,
) -> Result<(), TestCaseError> {
    for record in &changes.finished {
        prop_assert_eq!(running.remove(&record.agent), Some(record.id));
    }
    for (who, request) in &changes.requests {
        prop_assert!(!running.contains_key(who), "{} got a second trace", who);
        running.insert(who.clone(), request.id);
    }
    Ok(())
}

const FLAPPING: [(&str, &str); 4] = [("a", "b"), ("b", "a"), ("a", "c"), ("c", "b")];

proptest! {
    /// Under any flapping input, with reports, timeouts and operators mixed in: no agent ever
    /// has two traces in flight, at most `budget_per_hour` automatic runs start in any hour,
    /// two automatic sets of one pair start at least the cooldown apart, and a pair that is
    /// always healthy is never traced.
    #[test]
    fn the_limits_hold_under_flapping_input(
        steps in proptest::collection::vec(step(FLAPPING.len()), 1..300),
        budget_per_hour in 1u32..12,
        cooldown_windows in 1u64..30,
        k in 1u32..4,
        m in 1u32..4,
        timeout_windows in 1u64..6,
    ) {
        let config = TriggerConfig {
            budget_per_hour,
            cooldown: Duration::from_millis(cooldown_windows * WINDOW_MS),
            windows_to_trigger: k,
            windows_to_clear: m,
            trace_timeout: Duration::from_millis(timeout_windows * WINDOW_MS),
            ..TriggerConfig::default()
        };
        let cooldown = config.cooldown;
        let mut desk = TraceDesk::new(config, UnixMillis(0)).unwrap();
        // What the harness believes is in flight, by agent: from requests and finished records.
        let mut running: BTreeMap<AgentId, u64> = BTreeMap::new();
        let mut automatic_starts: Vec<UnixMillis> = Vec::new();
        let mut sets: BTreeMap<RegionPair, BTreeSet<UnixMillis>> = BTreeMap::new();
        let healthy = pair("c", "a");
        for (w, step) in steps.iter().enumerate() {
            let w = w as u64;
            let now = at(w);
            // Some traces report first.
            let flights: Vec<(u64, InFlight)> =
                desk.in_flight().iter().map(|(id, f)| (*id, f.clone())).collect();
            for (idx, (id, flight)) in flights.iter().enumerate() {
                if step.reports & (1 << (idx % 32)) != 0 {
                    let changes = desk.handle_report(now, &flight.agent, clean_report(*id, flight.request.target));
                    apply(&changes, &mut running)?;
                }
            }
            // An operator now and then.
            let operator = OperatorTrace {
                agent: agent("a", 1),
                target: "192.0.2.1".parse().unwrap(),
                pair: Some(pair("a", "b")),
                shape: None,
            };
            if step.tick
                && w.is_multiple_of(7)
                && let Ok(changes) = desk.request(now, operator)
            {
                apply(&changes, &mut running)?;
            }
            let mut verdicts: Vec<PairVerdict> = FLAPPING
                .iter()
                .zip(&step.losses)
                .zip(&step.blame)
                .map(|(((s, t), loss), blame)| {
                    let mut v = verdict(s, t, *loss);
                    v.blamed = match blame {
                        1 => Some(BlamedHost::Source(agent(s, 2))),
                        2 => Some(BlamedHost::Target(agent(t, 3).ip)),
                        _ => None,
                    };
                    v
                })
                .collect();
            verdicts.push(verdict("c", "a", 0.0));
            let changes = desk.handle_window(now, &verdicts);
            for (_, request) in &changes.requests {
                let flight = &desk.in_flight()[&request.id];
                prop_assert!(flight.pair.as_ref() != Some(&healthy), "the healthy pair was traced");
                if flight.reason.is_automatic() {
                    automatic_starts.push(now);
                    if let Some(p) = &flight.pair {
                        sets.entry(p.clone()).or_default().insert(flight.set_started_at);
                    }
                }
            }
            apply(&changes, &mut running)?;
            if step.tick {
                let half = now.saturating_add(Duration::from_millis(WINDOW_MS / 2));
                let changes = desk.tick(half);
                apply(&changes, &mut running)?;
            }
            // The desk's view agrees with the harness's.
            let desk_view: BTreeMap<AgentId, u64> =
                desk.in_flight().iter().map(|(id, f)| (f.agent.clone(), *id)).collect();
            prop_assert_eq!(&desk_view, &running);
        }
        let budget = budget_per_hour as usize;
        for (idx, start) in automatic_starts.iter().enumerate() {
            let within = automatic_starts[idx..]
                .iter()
                .take_while(|t| t.as_millis() < start.as_millis() + 3_600_000)
                .count();
            prop_assert!(within <= budget, "{within} automatic runs within an hour of {start}, budget {budget}");
        }
        for (p, starts) in &sets {
            let starts: Vec<&UnixMillis> = starts.iter().collect();
            for pair_of in starts.windows(2) {
                let gap = pair_of[1].saturating_duration_since(*pair_of[0]);
                prop_assert!(gap >= cooldown, "{p}: sets {gap:?} apart, cooldown {cooldown:?}");
            }
        }
    }

    /// A pair that fails for K windows, after any healthy history, is traced at the K-th
    /// window when budget and agents allow; not before.
    #[test]
    fn a_pair_failing_for_k_windows_is_traced_within_k_windows(
        healthy_losses in proptest::collection::vec(prop_oneof![Just(0.0), Just(0.005), Just(0.03)], 0..40),
        bad_losses in proptest::collection::vec(0.05f64..=1.0, 4),
        k in 1u32..5,
    ) {
        let mut desk = TraceDesk::new(TriggerConfig { windows_to_trigger: k, ..TriggerConfig::default() }, UnixMillis(0)).unwrap();
        let mut w = 0u64;
        for loss in &healthy_losses {
            let changes = desk.handle_window(at(w), &[verdict("a", "b", *loss)]);
            prop_assert!(changes.requests.is_empty());
            w += 1;
        }
        for bad in 1..=k {
            let loss = bad_losses[(bad as usize - 1) % bad_losses.len()];
            let changes = desk.handle_window(at(w), &[verdict("a", "b", loss)]);
            if bad < k {
                prop_assert!(changes.requests.is_empty(), "traced after {bad} of {k} windows");
            } else {
                prop_assert_eq!(changes.requests.len(), 3, "not traced after {} windows", k);
            }
            w += 1;
        }
    }

    /// A healthy pair is never traced: loss under the trigger threshold, a mean RTT that
    /// stays under twice its lowest and no host blamed, for any number of windows.
    #[test]
    fn a_healthy_pair_is_never_traced(
        windows in proptest::collection::vec((0.0f64..0.05, 100u64..199), 1..200),
    ) {
        let mut desk = desk();
        for (w, (loss, rtt_ms)) in windows.iter().enumerate() {
            let mut v = verdict("a", "b", *loss);
            v.rtt_mean = Some(Duration::from_millis(*rtt_ms));
            let changes = desk.handle_window(at(w as u64), &[v]);
            prop_assert!(changes.requests.is_empty(), "window {w} traced a healthy pair");
        }
        prop_assert_eq!(desk.counters().runs.values().sum::<u64>(), 0);
    }

    /// A window where the robust aggregator blamed a host is bad whatever the gauges say
    /// (they leave the broken host out): K of them in a row trace the pair at the K-th, from
    /// the blamed source agent or toward the blamed target host; for loss when the loss
    /// reaches the clear threshold, else for latency.
    #[test]
    fn a_blamed_host_makes_a_window_bad_whatever_the_gauges(
        loss in 0.0f64..0.05,
        rtt_ms in 100u64..199,
        blame_source in any::<bool>(),
        k in 1u32..5,
    ) {
        let mut desk = TraceDesk::new(TriggerConfig { windows_to_trigger: k, ..TriggerConfig::default() }, UnixMillis(0)).unwrap();
        let mut v = verdict("a", "b", loss);
        v.rtt_mean = Some(Duration::from_millis(rtt_ms));
        v.blamed = Some(if blame_source {
            BlamedHost::Source(agent("a", 2))
        } else {
            BlamedHost::Target(agent("b", 3).ip)
        });
        for w in 0..u64::from(k) {
            let changes = desk.handle_window(at(w), std::slice::from_ref(&v));
            if w + 1 < u64::from(k) {
                prop_assert!(changes.requests.is_empty(), "traced after {} of {} windows", w + 1, k);
            } else {
                prop_assert!(!changes.requests.is_empty(), "not traced after {} windows", k);
                let forward: Vec<&TraceRequest> = changes.requests.iter()
                    .filter(|(who, _)| who.region == region("a"))
                    .map(|(_, r)| r)
                    .collect();
                if blame_source {
                    prop_assert!(changes.requests.iter().any(|(who, _)| *who == agent("a", 2)));
                    prop_assert_eq!(forward.len(), 1);
                } else {
                    prop_assert!(forward.iter().all(|r| r.target == agent("b", 3).ip));
                }
                let reason = if loss >= 0.01 { TraceReason::Loss } else { TraceReason::Latency };
                prop_assert_eq!(desk.counters().runs[&reason], changes.requests.len() as u64);
            }
        }
        // While the host stays blamed the pair stays degraded: never clear.
        for w in u64::from(k)..u64::from(k) + 5 {
            desk.handle_window(at(w), std::slice::from_ref(&v));
            prop_assert!(desk.is_degraded(&pair("a", "b")));
        }
    }
}

#[test]
fn an_operator_pair_trace_picks_a_free_tracer_and_the_pair_target_host() {
    let mut desk = desk();
    let tracers: Vec<AgentId> = vec![agent("a", 2), agent("a", 1)];
    let b1 = agent("b", 1);
    let other: IpAddr = "203.0.113.9".parse().unwrap();
    // A target host that is an agent of the target region comes first; tracers in order.
    let picked = desk
        .pick_operator(&tracers, None, &[other, b1.ip], std::slice::from_ref(&b1))
        .unwrap();
    assert_eq!(picked, (agent("a", 1), b1.ip));
    // Without hosts, an agent of the target region; a given target wins over both.
    assert_eq!(
        desk.pick_operator(&tracers, None, &[], std::slice::from_ref(&b1)),
        Ok((agent("a", 1), b1.ip))
    );
    assert_eq!(
        desk.pick_operator(&tracers, Some(other), &[b1.ip], &[]),
        Ok((agent("a", 1), other))
    );
    // A busy tracer is skipped; all busy is `Busy`.
    let changes = desk
        .request(
            at(1),
            OperatorTrace {
                agent: agent("a", 1),
                target: other,
                pair: None,
                shape: None,
            },
        )
        .unwrap();
    assert_eq!(changes.requests.len(), 1);
    assert!(desk.is_busy(&agent("a", 1)));
    assert_eq!(
        desk.pick_operator(&tracers, Some(other), &[], &[]),
        Ok((agent("a", 2), other))
    );
    assert_eq!(
        desk.pick_operator(&tracers[1..], Some(other), &[], &[]),
        Err(PickError::Busy)
    );
    // Nobody to run it, nothing to trace to; an agent never traces to itself.
    assert_eq!(
        desk.pick_operator(&[], Some(other), &[], &[]),
        Err(PickError::NoTracer)
    );
    assert_eq!(
        desk.pick_operator(&tracers, None, &[], &[]),
        Err(PickError::NoTarget)
    );
    assert_eq!(
        desk.pick_operator(&[agent("a", 2)], Some(agent("a", 2).ip), &[], &[]),
        Err(PickError::NoTracer)
    );
    assert_eq!(PickError::Busy.refusal(), Refusal::AgentBusy);
    assert_eq!(PickError::NoTarget.refusal(), Refusal::NoAgent);
}

/// A set that goes out while the agents one way are all busy owes that way: it goes out at
/// the first window its agent is free, as part of the same set (no cooldown refusal), and
/// a pair that recovers first owes nothing more. The lab's case: one agent per region, each
/// busy tracing another pair when this one degrades.
#[test]
fn a_way_held_back_by_busy_agents_is_owed_and_sent_once_an_agent_is_free() {
    let mut desk = TraceDesk::new(
        TriggerConfig {
            forward_agents: 1,
            ..config()
        },
        UnixMillis(0),
    )
    .unwrap();
    // One agent each side; the target region's agent is busy with an operator's trace.
    let one_each = |loss: f64| PairVerdict {
        source_agents: vec![agent("a", 1)],
        target_agents: vec![agent("b", 1)],
        target_hosts: vec![agent("b", 1).ip],
        ..verdict("a", "b", loss)
    };
    let operator_id = busy_with_operator(&mut desk, agent("b", 1), at(0));
    let mut sent = Vec::new();
    for w in 0..3 {
        sent.extend(desk.handle_window(at(w), &[one_each(0.2)]).requests);
    }
    // Forward went; back was held back (busy).
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, agent("a", 1));
    let set_at = at(2);
    // Still busy: owed, not sent, and no cooldown refusal.
    let cooldowns = desk.counters().refusals.get(&Refusal::Cooldown).copied();
    assert!(
        desk.handle_window(at(3), &[one_each(0.2)])
            .requests
            .is_empty()
    );
    assert_eq!(
        desk.counters().refusals.get(&Refusal::Cooldown).copied(),
        cooldowns
    );
    // Free: the back trace goes at the next window, as part of the same set.
    desk.handle_report(
        at(3),
        &agent("b", 1),
        clean_report(operator_id, "198.18.9.9".parse().unwrap()),
    );
    let back = desk.handle_window(at(4), &[one_each(0.2)]).requests;
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(back[0].0, agent("b", 1));
    assert_eq!(back[0].1.target, agent("a", 1).ip);
    let flight = &desk.in_flight()[&back[0].1.id];
    assert_eq!(flight.direction, Some(Direction::Reverse));
    assert_eq!(flight.set_started_at, set_at);
    // Nothing more is owed.
    assert!(
        desk.handle_window(at(5), &[one_each(0.2)])
            .requests
            .is_empty()
    );

    // Recovery before the owed way could go: it is dropped.
    let mut desk = TraceDesk::new(
        TriggerConfig {
            forward_agents: 1,
            cooldown: Duration::ZERO,
            ..config()
        },
        UnixMillis(0),
    )
    .unwrap();
    let operator_id = busy_with_operator(&mut desk, agent("b", 1), at(0));
    let mut runs = Vec::new();
    for w in 0..3 {
        runs.extend(desk.handle_window(at(w), &[one_each(0.2)]).requests);
    }
    assert_eq!(runs.len(), 1);
    for w in 3..6 {
        runs.extend(desk.handle_window(at(w), &[one_each(0.0)]).requests);
    }
    desk.handle_report(
        at(6),
        &agent("b", 1),
        clean_report(operator_id, "198.18.9.9".parse().unwrap()),
    );
    let forward_id = runs[0].1.id;
    desk.handle_report(
        at(6),
        &agent("a", 1),
        clean_report(forward_id, agent("b", 1).ip),
    );
    // The recovery set goes out whole (forward and back), not the stale owed way alone.
    let recovery = desk.handle_window(at(6), &[one_each(0.0)]).requests;
    let reasons: Vec<_> = recovery
        .iter()
        .map(|(_, r)| desk.in_flight()[&r.id].reason)
        .collect();
    assert_eq!(
        reasons,
        vec![TraceReason::Recovery, TraceReason::Recovery],
        "{recovery:?}"
    );
}

/// An owed reverse run traces back to the agent the set's forward run went from (not to the
/// region's first agent), so both ends see the same path; a report that was never run (no
/// hops, an error) is filed as failed, not judged unreachable; an agent's inconsistent
/// counts are clamped.
#[test]
fn an_owed_reverse_goes_back_to_the_forward_source_and_a_refusal_is_a_failure() {
    let mut desk = TraceDesk::new(
        TriggerConfig {
            forward_agents: 1,
            ..config()
        },
        UnixMillis(0),
    )
    .unwrap();
    let two_sources = |loss: f64| PairVerdict {
        source_agents: vec![agent("a", 1), agent("a", 2)],
        target_agents: vec![agent("b", 1)],
        target_hosts: vec![agent("b", 1).ip],
        ..verdict("a", "b", loss)
    };
    // a.1 and b.1 busy with operators' traces: the forward run goes from a.2, the reverse
    // is owed.
    let operator_ids: Vec<u64> = [agent("a", 1), agent("b", 1)]
        .into_iter()
        .map(|busy| busy_with_operator(&mut desk, busy, at(0)))
        .collect();
    let mut sent = Vec::new();
    for w in 0..3 {
        sent.extend(desk.handle_window(at(w), &[two_sources(0.2)]).requests);
    }
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, agent("a", 2));
    // b.1 answers that it could not trace (say its socket failed): filed as failed.
    let refused = desk.handle_report(
        at(3),
        &agent("b", 1),
        TraceReport {
            id: operator_ids[1],
            target: "198.18.9.9".parse().unwrap(),
            hops: Vec::new(),
            error: Some("opening the trace socket: permission denied".into()),
        },
    );
    assert_eq!(
        refused.finished[0].outcome,
        TraceOutcome::Failed {
            error: "opening the trace socket: permission denied".into()
        }
    );
    assert_eq!(desk.counters().given_up, 0);
    // Free now: the owed reverse goes back to a.2, the forward source.
    let back = desk.handle_window(at(4), &[two_sources(0.2)]).requests;
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(back[0].0, agent("b", 1));
    assert_eq!(back[0].1.target, agent("a", 2).ip);
    // A report claiming more answers than probes is clamped before it is judged.
    let mut report = clean_report(back[0].1.id, agent("a", 2).ip);
    report.hops[0].received = 50;
    let finished = desk.handle_report(at(5), &agent("b", 1), report);
    let TraceOutcome::Reported { report, .. } = &finished.finished[0].outcome else {
        panic!("{:?}", finished.finished[0].outcome);
    };
    assert_eq!(report.hops[0].received, 20);
}
