//! Agent liveness: `prober_agent_is_alive{region, ip, version}` is 1 while the agent's
//! heartbeats arrive, turns 0 when none came for ratio × window, and disappears an hour later
//! (the Go system kept the 0 forever). Discovery uses the same notion of "live".

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::{AgentId, AgentVersion, UnixMillis};

/// How long a dead agent's 0 stays exposed before the series is removed.
pub const DEAD_AGENT_RETENTION: Duration = Duration::from_secs(3600);

/// Last heartbeat per (agent, version).
#[derive(Clone, Debug, Default)]
pub(crate) struct Liveness {
    last_heartbeat: BTreeMap<(AgentId, AgentVersion), UnixMillis>,
}

impl Liveness {
    pub(crate) fn handle_heartbeat(
        &mut self,
        now: UnixMillis,
        agent: &AgentId,
        version: &AgentVersion,
    ) {
        let last = self
            .last_heartbeat
            .entry((agent.clone(), version.clone()))
            .or_insert(now);
        *last = (*last).max(now);
    }

    /// Forgets agents dead for longer than `ttl` + [`DEAD_AGENT_RETENTION`].
    pub(crate) fn expire(&mut self, now: UnixMillis, ttl: Duration) {
        let horizon = now.saturating_sub(ttl + DEAD_AGENT_RETENTION);
        self.last_heartbeat.retain(|_, last| *last >= horizon);
    }

    /// Every known (agent, version) with 1 for alive and 0 for dead.
    pub(crate) fn states(
        &self,
        now: UnixMillis,
        ttl: Duration,
    ) -> impl Iterator<Item = (&AgentId, &AgentVersion, bool)> {
        self.last_heartbeat
            .iter()
            .map(move |((agent, version), last)| {
                (agent, version, now.saturating_duration_since(*last) <= ttl)
            })
    }

    /// Every known (agent, version) with its last heartbeat.
    pub(crate) fn heartbeats(&self) -> impl Iterator<Item = (&AgentId, &AgentVersion, UnixMillis)> {
        self.last_heartbeat
            .iter()
            .map(|((agent, version), last)| (agent, version, *last))
    }

    /// Agents with at least one live version, each once, sorted.
    pub(crate) fn live_agents(&self, now: UnixMillis, ttl: Duration) -> Vec<AgentId> {
        let mut live: Vec<AgentId> = self
            .states(now, ttl)
            .filter(|(_, _, alive)| *alive)
            .map(|(agent, _, _)| agent.clone())
            .collect();
        live.dedup();
        live
    }
}
