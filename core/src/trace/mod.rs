//! Automatic path tracing on a failing region pair (issue 17), in domain terms: when to trace,
//! from which agents, which hop a finished trace blames, and what the server keeps.
//!
//! The mesh sees a pair fail from many agents at once, so it can do what a single prober
//! cannot: trace from the healthy agents of the source region (or only from the host the
//! robust aggregator blamed), trace back from the target region, and name the hop where loss
//! starts and persists, telling a path fault from ICMP rate limiting at one router.
//!
//! - [`trigger`]: the server's [`trigger::TraceDesk`], a sans-IO state machine fed each
//!   settled window's per-pair verdicts: thresholds held for K windows with hysteresis, a
//!   trace again on recovery, a cooldown per pair, one trace per agent at a time, an hourly
//!   budget, operator requests; every run and refusal counted by a bounded reason;
//! - [`agent`]: the agent's side, sans-IO: [`agent::AgentTraces`] takes the server's requests
//!   (one at a time, within the agent's bounds, each id once, or none when tracing is off)
//!   and turns them into runs for the engine or refusing reports;
//! - [`blame`]: a finished [`crate::link::TraceReport`] to a [`blame::Verdict`];
//! - [`store`]: the bounded in-memory [`store::TraceStore`] of finished traces the endpoints
//!   and the pair page will serve.
//!
//! A window where the robust aggregator blamed a host counts as bad for the trigger: it left
//! that host out of the pair's gauges, so they look healthy while the host is broken (see
//! [`trigger`]); the set then traces from the blamed source agent, or toward the blamed
//! target host.
//!
//! This module decides. `core::server` wires it into `ServerState` (off by default: the
//! verdicts of each settled window, routing requests and reports, the metric families);
//! running a trace (the engine, on the agent) and serving the store are the adapters'.

pub mod agent;
pub mod blame;
pub mod hops;
pub mod store;
pub mod trigger;

use std::fmt;

use crate::model::Region;

/// The most probes per hop the server asks for: what an agent takes by default
/// ([`agent::TracePolicy::DEFAULT_MAX_ROUNDS`], a trace within about 100 s), under the wire's
/// own limit. A request for more would only come back refused.
pub const MAX_ROUNDS: u16 = agent::TracePolicy::DEFAULT_MAX_ROUNDS;
/// The highest TTL a request may ask for (what the wire carries).
pub const MAX_HOPS: u8 = crate::wire::MAX_TRACE_TTL;

/// `prober_server_trace_runs_total` (ours): trace runs sent to agents, by [`TraceReason`].
pub const TRACE_RUNS: &str = "prober_server_trace_runs_total";
/// `prober_server_trace_refusals_total` (ours): traces the desk held back, by [`Refusal`].
pub const TRACE_REFUSALS: &str = "prober_server_trace_refusals_total";
/// `prober_server_trace_blamed_hop_loss_ratio` (ours): per region pair, the loss ratio of the
/// hop its latest reported trace blamed (0 when it blamed none; no series per hop).
pub const TRACE_BLAMED_HOP_LOSS: &str = "prober_server_trace_blamed_hop_loss_ratio";

/// A source region and a target region, as the ICMP gauges label them.
#[derive(Clone, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct RegionPair {
    /// Where the probes start (`source_region`).
    pub source: Region,
    /// Where they go (`target_region`).
    pub target: Region,
}

impl RegionPair {
    /// The pair from `source` to `target`.
    #[must_use]
    pub fn new(source: Region, target: Region) -> Self {
        Self { source, target }
    }
}

impl fmt::Display for RegionPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}", self.source, self.target)
    }
}

/// Why a trace ran: the bounded `reason` label of [`TRACE_RUNS`].
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub enum TraceReason {
    /// The pair's loss stayed past the threshold for K windows.
    Loss,
    /// The pair's latency stayed past the threshold for K windows.
    Latency,
    /// The pair recovered after a traced episode: the "after" of the before/after.
    Recovery,
    /// An operator asked (`POST /-/trace`, `probermesh trace`).
    Operator,
}

impl TraceReason {
    /// Every reason, in label order.
    pub const ALL: [Self; 4] = [Self::Loss, Self::Latency, Self::Recovery, Self::Operator];

    /// The label value.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Loss => "loss",
            Self::Latency => "latency",
            Self::Recovery => "recovery",
            Self::Operator => "operator",
        }
    }

    /// Whether the desk started it by itself (held to the cooldown and the budget).
    #[must_use]
    pub const fn is_automatic(self) -> bool {
        !matches!(self, Self::Operator)
    }
}

impl fmt::Display for TraceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Which way a trace goes along its pair.
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub enum Direction {
    /// From an agent of the source region to a target host of the target region.
    Forward,
    /// From an agent of the target region back to an agent of the source region.
    Reverse,
}

impl Direction {
    /// The name in JSON and logs.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Reverse => "reverse",
        }
    }
}

/// Why the desk held a trace back: the bounded `reason` label of [`TRACE_REFUSALS`].
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd, thiserror::Error)]
pub enum Refusal {
    /// The pair was traced automatically less than the cooldown ago.
    #[error("the pair was traced less than the cooldown ago")]
    Cooldown,
    /// Every agent that could run it has a trace in flight.
    #[error("the agent has a trace in flight")]
    AgentBusy,
    /// The hourly budget of automatic traces is spent.
    #[error("the hourly trace budget is spent")]
    Budget,
    /// No agent that can trace is there to run it (or no address to trace to).
    #[error("no agent that takes traces can run it")]
    NoAgent,
}

impl Refusal {
    /// Every refusal, in label order.
    pub const ALL: [Self; 4] = [Self::Cooldown, Self::AgentBusy, Self::Budget, Self::NoAgent];

    /// The label value.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Cooldown => "cooldown",
            Self::AgentBusy => "agent_busy",
            Self::Budget => "budget",
            Self::NoAgent => "no_agent",
        }
    }
}

#[cfg(test)]
mod scenarios;
