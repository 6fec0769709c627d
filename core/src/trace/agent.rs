//! The agent's side of path tracing, sans-IO: what it does with each trace the server asks
//! for and with each finished one.
//!
//! - Tracing is on unless the agent was started with `-agent.trace=false` (a
//!   [`TracePolicy`] of `None`): a trace sends ICMP echoes with rising TTLs toward an address
//!   the server chose, as the pool's probes already do, so it needs no opt-in the way a
//!   command does. When it is off, every request is answered at once by a report whose error
//!   says so.
//! - One trace runs at a time: a request while one is in flight is answered at once with a
//!   "busy" report (the server's desk never sends two, so this only guards a confused
//!   server).
//! - A request beyond the agent's own bounds ([`TracePolicy::max_hops`],
//!   [`TracePolicy::max_rounds`]), or of a protocol the engine does not speak, is answered
//!   with an error naming the field and the bound; nothing is sent on the network then.
//! - Each trace id runs at most once per process: a request for an id already taken is
//!   ignored (its report was sent, or will be).

use std::collections::{HashSet, VecDeque};

use crate::link::{FromAgent, TraceProtocol, TraceReport, TraceRequest};
use crate::wire::{MAX_TRACE_ROUNDS, MAX_TRACE_TTL};

/// Trace ids remembered as taken; beyond this the oldest are forgotten.
pub const REMEMBERED_TRACE_IDS: usize = 1_024;

/// How an agent runs traces (`-agent.trace.*`).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct TracePolicy {
    /// The highest TTL a trace may reach here.
    pub max_hops: u8,
    /// The most rounds a trace may ask for here (each round is one probe per TTL, one second
    /// apart: this bounds how long a trace keeps the agent's tracer busy).
    pub max_rounds: u16,
}

impl TracePolicy {
    /// Rounds allowed by default: 100, so a trace ends within about 100 s.
    pub const DEFAULT_MAX_ROUNDS: u16 = 100;
}

impl Default for TracePolicy {
    fn default() -> Self {
        Self {
            max_hops: MAX_TRACE_TTL,
            max_rounds: Self::DEFAULT_MAX_ROUNDS,
        }
    }
}

/// What the agent's traces ask of its driver.
#[derive(Clone, Debug, PartialEq)]
pub enum TraceStep {
    /// Send this message (a report refusing the request).
    Send(FromAgent),
    /// Run this trace and hand its report back.
    Run(TraceRequest),
}

/// The agent's traces: its policy, the one in flight, the ids taken.
#[derive(Debug)]
pub struct AgentTraces {
    policy: Option<TracePolicy>,
    in_flight: Option<u64>,
    taken: HashSet<u64>,
    taken_order: VecDeque<u64>,
    ran: u64,
    refused: u64,
}

impl AgentTraces {
    /// Traces under `policy`; `None`: tracing is off and every request is refused.
    #[must_use]
    pub fn new(policy: Option<TracePolicy>) -> Self {
        Self {
            policy,
            in_flight: None,
            taken: HashSet::new(),
            taken_order: VecDeque::new(),
            ran: 0,
            refused: 0,
        }
    }

    /// Whether tracing is on.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.policy.is_some()
    }

    /// The id of the trace in flight.
    #[must_use]
    pub fn in_flight(&self) -> Option<u64> {
        self.in_flight
    }

    /// Traces started since the start of the process.
    #[must_use]
    pub fn ran(&self) -> u64 {
        self.ran
    }

    /// Requests answered with an error without tracing.
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// The server asks for `request`; `stopping`: the agent is shutting down.
    pub fn receive(&mut self, request: TraceRequest, stopping: bool) -> Vec<TraceStep> {
        if self.taken.contains(&request.id) {
            return Vec::new();
        }
        self.remember(request.id);
        match self.refusal(&request, stopping) {
            Some(error) => {
                self.refused += 1;
                vec![TraceStep::Send(FromAgent::TraceResult(TraceReport {
                    id: request.id,
                    target: request.target,
                    hops: Vec::new(),
                    error: Some(error),
                }))]
            }
            None => {
                self.in_flight = Some(request.id);
                self.ran += 1;
                vec![TraceStep::Run(request)]
            }
        }
    }

    /// A trace finished with `report`: it goes to the server (a report for no trace in
    /// flight, which the driver cannot produce, is sent all the same: the server ignores
    /// ids it does not know).
    pub fn finished(&mut self, report: TraceReport) -> Vec<TraceStep> {
        if self.in_flight == Some(report.id) {
            self.in_flight = None;
        }
        vec![TraceStep::Send(FromAgent::TraceResult(report))]
    }

    fn refusal(&self, request: &TraceRequest, stopping: bool) -> Option<String> {
        let Some(policy) = &self.policy else {
            return Some("tracing is off on this agent (-agent.trace=false)".to_owned());
        };
        if stopping {
            return Some("the agent is stopping".to_owned());
        }
        if let Some(running) = self.in_flight {
            return Some(format!("busy: trace {running} in flight"));
        }
        match request.protocol {
            TraceProtocol::Icmp => {}
            TraceProtocol::Udp => return Some("protocol udp is not supported".to_owned()),
            TraceProtocol::Tcp => return Some("protocol tcp is not supported".to_owned()),
        }
        let max_hops = policy.max_hops.min(MAX_TRACE_TTL);
        if request.max_hops == 0 || request.max_hops > max_hops {
            return Some(format!(
                "max_hops {} is out of range: 1 to {max_hops} on this agent",
                request.max_hops
            ));
        }
        let max_rounds = policy.max_rounds.min(MAX_TRACE_ROUNDS);
        if request.rounds == 0 || request.rounds > max_rounds {
            return Some(format!(
                "rounds {} is out of range: 1 to {max_rounds} on this agent",
                request.rounds
            ));
        }
        let broadcast = matches!(request.target, std::net::IpAddr::V4(v4) if v4.is_broadcast());
        if request.target.is_unspecified() || request.target.is_multicast() || broadcast {
            return Some(format!(
                "target {} is not a unicast address",
                request.target
            ));
        }
        None
    }

    fn remember(&mut self, id: u64) {
        if self.taken_order.len() >= REMEMBERED_TRACE_IDS
            && let Some(oldest) = self.taken_order.pop_front()
        {
            self.taken.remove(&oldest);
        }
        self.taken.insert(id);
        self.taken_order.push_back(id);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use proptest::prelude::*;

    use super::*;

    const TARGET: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));

    fn request(id: u64) -> TraceRequest {
        TraceRequest {
            id,
            target: TARGET,
            protocol: TraceProtocol::Icmp,
            max_hops: 30,
            rounds: 20,
        }
    }

    fn error_of(steps: &[TraceStep]) -> Option<String> {
        match steps {
            [TraceStep::Send(FromAgent::TraceResult(report))] => {
                assert!(report.hops.is_empty());
                report.error.clone()
            }
            other => panic!("expected one refusing report, got {other:?}"),
        }
    }

    fn report(id: u64) -> TraceReport {
        TraceReport {
            id,
            target: TARGET,
            hops: Vec::new(),
            error: None,
        }
    }

    #[test]
    fn a_request_runs_and_its_report_goes_to_the_server() {
        let mut traces = AgentTraces::new(Some(TracePolicy::default()));
        assert_eq!(
            traces.receive(request(1), false),
            vec![TraceStep::Run(request(1))]
        );
        assert_eq!(traces.in_flight(), Some(1));
        assert_eq!(
            traces.finished(report(1)),
            vec![TraceStep::Send(FromAgent::TraceResult(report(1)))]
        );
        assert_eq!(traces.in_flight(), None);
        assert_eq!(
            traces.receive(request(2), false),
            vec![TraceStep::Run(request(2))]
        );
        assert_eq!((traces.ran(), traces.refused()), (2, 0));
    }

    #[test]
    fn tracing_off_answers_every_request_with_the_reason() {
        let mut traces = AgentTraces::new(None);
        let error = error_of(&traces.receive(request(1), false));
        assert_eq!(
            error.as_deref(),
            Some("tracing is off on this agent (-agent.trace=false)")
        );
        assert_eq!(traces.in_flight(), None);
        assert!(!traces.enabled());
    }

    #[test]
    fn a_second_request_while_one_runs_is_answered_busy() {
        let mut traces = AgentTraces::new(Some(TracePolicy::default()));
        traces.receive(request(1), false);
        let error = error_of(&traces.receive(request(2), false));
        assert_eq!(error.as_deref(), Some("busy: trace 1 in flight"));
        // The refusal did not end the one in flight.
        assert_eq!(traces.in_flight(), Some(1));
    }

    #[test]
    fn an_id_runs_at_most_once() {
        let mut traces = AgentTraces::new(Some(TracePolicy::default()));
        traces.receive(request(7), false);
        assert!(traces.receive(request(7), false).is_empty());
        traces.finished(report(7));
        assert!(traces.receive(request(7), false).is_empty());
        assert_eq!(traces.ran(), 1);
    }

    #[test]
    fn requests_beyond_the_bounds_or_protocol_are_refused_naming_the_field() {
        let policy = TracePolicy {
            max_hops: 16,
            max_rounds: 10,
        };
        let cases = [
            (
                TraceRequest {
                    max_hops: 17,
                    ..request(1)
                },
                "max_hops 17 is out of range: 1 to 16 on this agent",
            ),
            (
                TraceRequest {
                    max_hops: 0,
                    ..request(2)
                },
                "max_hops 0 is out of range: 1 to 16 on this agent",
            ),
            (
                TraceRequest {
                    max_hops: 8,
                    rounds: 11,
                    ..request(3)
                },
                "rounds 11 is out of range: 1 to 10 on this agent",
            ),
            (
                TraceRequest {
                    max_hops: 8,
                    rounds: 5,
                    protocol: TraceProtocol::Udp,
                    ..request(4)
                },
                "protocol udp is not supported",
            ),
            (
                TraceRequest {
                    max_hops: 8,
                    rounds: 5,
                    protocol: TraceProtocol::Tcp,
                    ..request(5)
                },
                "protocol tcp is not supported",
            ),
            (
                TraceRequest {
                    max_hops: 8,
                    rounds: 5,
                    target: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    ..request(6)
                },
                "target 0.0.0.0 is not a unicast address",
            ),
            (
                TraceRequest {
                    max_hops: 8,
                    rounds: 5,
                    target: IpAddr::V4(Ipv4Addr::BROADCAST),
                    ..request(7)
                },
                "target 255.255.255.255 is not a unicast address",
            ),
        ];
        for (request, expected) in cases {
            let mut traces = AgentTraces::new(Some(policy));
            let error = error_of(&traces.receive(request, false));
            assert_eq!(error.as_deref(), Some(expected));
            assert_eq!(traces.in_flight(), None);
        }
    }

    #[test]
    fn a_stopping_agent_starts_no_trace() {
        let mut traces = AgentTraces::new(Some(TracePolicy::default()));
        let error = error_of(&traces.receive(request(1), true));
        assert_eq!(error.as_deref(), Some("the agent is stopping"));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Receive(u64),
        Finish,
    }

    proptest! {
        /// Whatever the server sends, at most one trace is in flight, every request gets
        /// exactly one answer (a run that later reports, or a refusing report) unless its id
        /// was taken before, and no id runs twice.
        #[test]
        fn one_in_flight_and_one_answer_per_new_id(
            ops in proptest::collection::vec(
                prop_oneof![(0u64..20).prop_map(Op::Receive), Just(Op::Finish)],
                0..200,
            )
        ) {
            let mut traces = AgentTraces::new(Some(TracePolicy::default()));
            let mut seen = HashSet::new();
            let mut ran = HashSet::new();
            let mut running: Option<u64> = None;
            for op in ops {
                match op {
                    Op::Receive(id) => {
                        let steps = traces.receive(request(id), false);
                        if !seen.insert(id) {
                            prop_assert!(steps.is_empty());
                            continue;
                        }
                        prop_assert_eq!(steps.len(), 1);
                        match &steps[0] {
                            TraceStep::Run(run) => {
                                prop_assert!(running.is_none());
                                prop_assert!(ran.insert(run.id));
                                running = Some(run.id);
                            }
                            TraceStep::Send(FromAgent::TraceResult(answer)) => {
                                prop_assert!(running.is_some());
                                prop_assert_eq!(answer.id, id);
                            }
                            TraceStep::Send(other) => prop_assert!(false, "sent {:?}", other),
                        }
                    }
                    Op::Finish => {
                        if let Some(id) = running.take() {
                            traces.finished(report(id));
                        }
                    }
                }
                prop_assert_eq!(traces.in_flight(), running);
            }
        }
    }
}
