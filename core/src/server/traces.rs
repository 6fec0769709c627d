//! Path tracing wired into [`super::ServerState`] (issue 17), off unless
//! [`super::ServerState::with_traces`] turns it on: what the server feeds the
//! [`TraceDesk`] and what it keeps in the [`TraceStore`].
//!
//! - **Verdicts.** After each aggregation tick, every ICMP pair whose window settled since the
//!   last tick becomes one [`PairVerdict`], read from the aggregator's settled per-pair state
//!   the way [`crate::mesh::history`] reads it: the loss and mean-RTT gauges of that window,
//!   the members the robust method left out and the per-member breakdown.
//! - **A blamed host counts as bad.** When the robust method left out exactly one member (a
//!   source agent, or a target host named by an address), the pair's gauges look healthy
//!   while that host is broken: the verdict names it ([`BlamedHost`]), the desk counts the
//!   window as bad whatever the numbers, and the verdict carries the host's own loss and RTT
//!   when they are worse than the gauges' (so the reason is `loss` for a host left out for
//!   its losses). The set then traces forward only from the blamed source agent, or toward
//!   the blamed target host, and back. With two or more members left out no single host is
//!   blamed and the gauges alone decide.
//! - **Who traces.** `source_agents` and `target_agents` are the connected agents of the two
//!   regions whose link is protocol v2 or later and names [`feature::TRACE`], each once (the
//!   desk skips those with a trace in flight and counts `agent_busy`); `target_hosts` are
//!   the target addresses the window probed.
//! - **Routing.** A request goes to the newest such connection of its agent as
//!   [`ToAgent::Trace`]; a `TraceResult` goes to the desk as that agent's report; losing the
//!   connection a trace was sent on abandons it. Finished traces go to the store; the desk's
//!   events go to [`super::Actions::trace_events`] for the log.
//! - **Metrics** (live part of the snapshot, only when traces are on): runs by reason,
//!   refusals by reason (every label from the start), and per pair with a reported trace in
//!   the store the loss ratio of the hop its latest reported trace blamed (0 when it blamed
//!   none, 1 when the destination never answered); a pair leaves the gauge with its last
//!   record.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use super::Session;
use crate::aggregate::{Aggregator, IcmpMember, IcmpOutlier};
use crate::link::{ToAgent, feature};
use crate::model::{AgentId, Region, UnixMillis};
use crate::ports::ConnectionId;
use crate::snapshot::{MetricFamily, MetricKind, Series, SeriesValue};
use crate::trace::blame::Blame;
use crate::trace::store::{TraceOutcome, TraceQuery, TraceStore};
use crate::trace::trigger::{BlamedHost, PairVerdict, TraceChanges, TraceDesk};
use crate::trace::{
    Refusal, RegionPair, TRACE_BLAMED_HOP_LOSS, TRACE_REFUSALS, TRACE_RUNS, TraceReason,
};

/// The desk, the store and what the server remembers to feed and route them.
#[derive(Debug)]
pub(super) struct Traces {
    pub(super) desk: TraceDesk,
    pub(super) store: TraceStore,
    /// The settle instant of the last window of each ICMP pair given to the desk.
    seen: BTreeMap<(Region, Region), UnixMillis>,
    /// The connection each trace in flight was sent on.
    sent_on: BTreeMap<u64, ConnectionId>,
}

impl Traces {
    pub(super) fn new(desk: TraceDesk, store: TraceStore) -> Self {
        Self {
            desk,
            store,
            seen: BTreeMap::new(),
            sent_on: BTreeMap::new(),
        }
    }

    /// The verdicts of the ICMP pairs that settled since the last call, with the agents that
    /// can trace now.
    pub(super) fn settled_verdicts(
        &mut self,
        aggregator: &Aggregator,
        sessions: &HashMap<ConnectionId, Session>,
    ) -> Vec<PairVerdict> {
        let (series, _) = aggregator.exposed();
        // Pairs the aggregator forgot are forgotten here too (bounded by its pairs).
        self.seen.retain(|key, _| series.icmp.contains_key(key));
        let tracers = tracers_by_region(sessions);
        let mut verdicts = Vec::new();
        for (key, pair) in &series.icmp {
            let Some(failed) = &pair.failed else {
                continue;
            };
            let at = failed.updated_at;
            if self.seen.get(key).is_some_and(|seen| *seen >= at) {
                continue;
            }
            self.seen.insert(key.clone(), at);
            let loss_ratio = pair
                .loss_percent
                .as_ref()
                .filter(|s| s.updated_at == at)
                .map(|s| s.value / 100.0);
            let rtt_seconds = pair
                .durations_seconds
                .as_ref()
                .filter(|s| s.updated_at == at)
                .map(|s| s.value[1]);
            let members: &[IcmpMember] = pair
                .members
                .as_ref()
                .filter(|s| s.updated_at == at)
                .map_or(&[], |s| &s.value);
            let left_out: &[IcmpOutlier] = pair
                .outliers
                .as_ref()
                .filter(|s| s.updated_at == at)
                .map_or(&[], |s| &s.value);
            let (source, target) = key;
            let blamed = match left_out {
                [only] => blamed_host(source, only),
                _ => None,
            };
            let own = blamed
                .as_ref()
                .and_then(|_| members.iter().find(|m| Some(&m.member) == left_out.first()));
            let loss_ratio = worse(loss_ratio, own.and_then(|m| m.loss_ratio));
            let rtt_seconds = worse(rtt_seconds, own.and_then(|m| m.rtt_seconds));
            let mut target_hosts: Vec<IpAddr> = members
                .iter()
                .filter_map(|m| match &m.member {
                    IcmpOutlier::Target(host) => host.parse().ok(),
                    IcmpOutlier::Source(_) => None,
                })
                .collect();
            target_hosts.sort();
            target_hosts.dedup();
            let agents_of = |region: &Region| -> Vec<AgentId> {
                tracers
                    .get(region)
                    .map(|agents| agents.iter().cloned().collect())
                    .unwrap_or_default()
            };
            verdicts.push(PairVerdict {
                pair: RegionPair::new(source.clone(), target.clone()),
                loss_ratio,
                rtt_mean: rtt_seconds
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .and_then(|s| Duration::try_from_secs_f64(s).ok()),
                blamed,
                source_agents: agents_of(source),
                target_agents: agents_of(target),
                target_hosts,
            });
        }
        verdicts
    }

    /// Carries `changes` into `actions`: requests to their agents' connections, finished
    /// traces to the store, events to the log. A request whose agent has no connection that
    /// takes traces (it cannot happen for the agents the server names) is abandoned at once,
    /// so its agent is not held busy until the timeout.
    pub(super) fn apply(
        &mut self,
        now: UnixMillis,
        changes: TraceChanges,
        sessions: &HashMap<ConnectionId, Session>,
        actions: &mut super::Actions,
    ) {
        let mut pending = vec![changes];
        while let Some(changes) = pending.pop() {
            for (agent, request) in changes.requests {
                if let Some(connection) = trace_connection(sessions, &agent) {
                    self.sent_on.insert(request.id, connection);
                    actions.send.push((connection, ToAgent::Trace(request)));
                } else {
                    pending.push(self.desk.handle_disconnect(now, &agent));
                }
            }
            for record in changes.finished {
                self.sent_on.remove(&record.id);
                self.store.insert(record);
            }
            actions
                .trace_events
                .extend(changes.events.iter().map(ToString::to_string));
        }
    }

    /// Whether `agent`'s trace in flight, if any, was sent on `connection`.
    pub(super) fn in_flight_on(&self, agent: &AgentId, connection: ConnectionId) -> bool {
        self.desk
            .in_flight()
            .iter()
            .any(|(id, flight)| &flight.agent == agent && self.sent_on.get(id) == Some(&connection))
    }

    /// The trace families: runs and refusals by reason, the blamed hop's loss per pair.
    pub(super) fn families(&self) -> [MetricFamily; 3] {
        #[allow(clippy::cast_precision_loss)]
        let number = |n: u64| SeriesValue::Number(n as f64);
        let counters = self.desk.counters();
        let blamed: Vec<Series> = self
            .store
            .pairs()
            .filter_map(|pair| {
                blamed_hop_loss(&self.store, pair).map(|ratio| Series {
                    label_values: vec![
                        pair.source.as_str().to_owned(),
                        pair.target.as_str().to_owned(),
                    ],
                    value: SeriesValue::Number(ratio),
                })
            })
            .collect();
        [
            MetricFamily {
                name: TRACE_RUNS,
                help: "Path traces sent to agents, by why they ran.",
                kind: MetricKind::Counter,
                label_names: &["reason"],
                series: TraceReason::ALL
                    .iter()
                    .map(|reason| Series {
                        label_values: vec![reason.label().to_owned()],
                        value: number(counters.runs.get(reason).copied().unwrap_or(0)),
                    })
                    .collect(),
            },
            MetricFamily {
                name: TRACE_REFUSALS,
                help: "Path traces held back (a set, for the cooldown), by why.",
                kind: MetricKind::Counter,
                label_names: &["reason"],
                series: Refusal::ALL
                    .iter()
                    .map(|refusal| Series {
                        label_values: vec![refusal.label().to_owned()],
                        value: number(counters.refusals.get(refusal).copied().unwrap_or(0)),
                    })
                    .collect(),
            },
            MetricFamily {
                name: TRACE_BLAMED_HOP_LOSS,
                help: "Loss ratio of the hop the region pair's latest reported path trace \
                       blamed (0: it blamed none; 1: the destination never answered).",
                kind: MetricKind::Gauge,
                label_names: &["source_region", "target_region"],
                series: blamed,
            },
        ]
    }
}

/// The loss ratio of the hop the latest reported trace of `pair` blamed (see the module
/// documentation); `None` when none of its kept traces was reported.
fn blamed_hop_loss(store: &TraceStore, pair: &RegionPair) -> Option<f64> {
    let query = TraceQuery {
        pair: Some(Some(pair.clone())),
        ..TraceQuery::default()
    };
    store
        .query(&query)
        .into_iter()
        .find_map(|record| match &record.outcome {
            TraceOutcome::Reported { verdict, .. } => Some(match verdict.blame {
                Blame::Hop { loss_ratio, .. } => loss_ratio,
                Blame::Clean | Blame::RateLimitedOnly => 0.0,
                Blame::Unreachable { .. } => 1.0,
            }),
            TraceOutcome::Failed { .. } | TraceOutcome::TimedOut | TraceOutcome::Abandoned => None,
        })
}

/// The one member the robust method left out, as the desk names it; `None` for a target host
/// named by a hostname (there is no address to trace to).
fn blamed_host(source_region: &Region, member: &IcmpOutlier) -> Option<BlamedHost> {
    match member {
        IcmpOutlier::Source(ip) => ip
            .parse()
            .ok()
            .map(|ip| BlamedHost::Source(AgentId::new(source_region.clone(), ip))),
        IcmpOutlier::Target(host) => host.parse().ok().map(BlamedHost::Target),
    }
}

/// The larger of two numbers, either of which may be missing.
fn worse(gauge: Option<f64>, own: Option<f64>) -> Option<f64> {
    match (gauge, own) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Whether `session`'s link carries traces.
pub(super) fn takes_traces(session: &Session) -> bool {
    session.link.protocol_version >= 2 && session.takes_traces
}

/// The connected agents that take traces, by region, each once.
fn tracers_by_region(
    sessions: &HashMap<ConnectionId, Session>,
) -> BTreeMap<&Region, BTreeSet<AgentId>> {
    let mut by_region: BTreeMap<&Region, BTreeSet<AgentId>> = BTreeMap::new();
    for session in sessions.values().filter(|s| takes_traces(s)) {
        by_region
            .entry(&session.agent.region)
            .or_default()
            .insert(session.agent.clone());
    }
    by_region
}

/// The newest connection of `agent` that takes traces.
pub(super) fn trace_connection(
    sessions: &HashMap<ConnectionId, Session>,
    agent: &AgentId,
) -> Option<ConnectionId> {
    sessions
        .iter()
        .filter(|(_, s)| &s.agent == agent && takes_traces(s))
        .map(|(c, _)| *c)
        .max()
}

/// Whether `capabilities` name the trace feature (kept on the session at the hello).
pub(super) fn names_trace(capabilities: &crate::link::Capabilities) -> bool {
    capabilities.has(feature::TRACE)
}

/// What an operator's trace of a region pair can be run from and traced to: the connected
/// agents of `source` that take traces (`agent` alone when named), and the target hosts the
/// aggregator's last settled window of `source`→`target` probed, with the agents of `target`
/// (connected or alive) whose addresses are targets too.
pub(super) fn operator_candidates(
    aggregator: &Aggregator,
    sessions: &HashMap<ConnectionId, Session>,
    live: &[AgentId],
    source: &Region,
    target: Option<&Region>,
) -> (Vec<AgentId>, Vec<IpAddr>, Vec<AgentId>) {
    let tracers: Vec<AgentId> = tracers_by_region(sessions)
        .remove(source)
        .map(|set| set.into_iter().collect())
        .unwrap_or_default();
    let Some(target) = target else {
        return (tracers, Vec::new(), Vec::new());
    };
    let (series, _) = aggregator.exposed();
    let hosts: Vec<IpAddr> = series
        .icmp
        .get(&(source.clone(), target.clone()))
        .and_then(|pair| pair.members.as_ref())
        .map(|members| {
            members
                .value
                .iter()
                .filter_map(|m| match &m.member {
                    IcmpOutlier::Target(host) => host.parse().ok(),
                    IcmpOutlier::Source(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut agents: Vec<AgentId> = sessions
        .values()
        .map(|s| &s.agent)
        .chain(live)
        .filter(|agent| &agent.region == target)
        .cloned()
        .collect();
    agents.sort();
    agents.dedup();
    (tracers, hosts, agents)
}
