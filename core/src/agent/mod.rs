//! The agent, sans-IO: what it probes and when ([`plan`]), and everything it decides between
//! events ([`state`]): rounds and probe starts, heartbeats, pool requests and refusals, its
//! identity. A driver feeds it events and time and carries out its actions.

pub mod plan;
pub mod state;

pub use plan::{
    PlannedProbe, ProbeHow, delivery_margin, plan_rest_of_round, plan_round, round_start,
    start_offset, start_spread,
};
pub use state::{AgentAction, AgentConfig, AgentNotice, AgentState, InFlightLimits};
