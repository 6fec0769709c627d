//! When the server traces, from where, and what holds a trace back: the [`TraceDesk`], a
//! sans-IO state machine fed each settled window's per-pair verdicts ([`PairVerdict`]) and
//! the agents' reports, with `now` always an argument (core reads no clock).
//!
//! # The trigger, per pair
//!
//! A window is *bad* when the pair's loss ratio reaches `loss_ratio`, or its mean RTT reaches
//! the absolute latency threshold or the ratio to the pair's own baseline (the median RTT of
//! its last healthy windows), or the robust aggregator blamed a host in it
//! ([`PairVerdict::blamed`]: it left a broken host out of the gauges, so they look healthy
//! while that host is not; reason `loss` when the loss reaches its clear threshold, else
//! `latency`); it is *clear* when nothing is blamed and it is under every clear threshold
//! (each lower than its trigger threshold), and in between it is neither. A healthy pair bad for
//! `windows_to_trigger` (K) consecutive windows is *degraded* and due a trace (reason `loss`
//! or `latency`); a degraded pair clear for `windows_to_clear` (M) consecutive windows has
//! recovered, and is due a `recovery` trace when its episode was traced. A window without
//! data moves neither count. The band between the thresholds is what keeps a pair at the
//! edge from flapping.
//!
//! # A trace set
//!
//! A due pair is traced forward from up to `forward_agents` (one or two) healthy agents of
//! the source region to a host of the target region, or only from the source agent the robust
//! aggregator blamed, or to the target host it blamed; and back from one agent of the target
//! region (the blamed target host itself when it is an agent) to the address of a source agent
//! of the set. A set goes out when at least one of its runs does; otherwise the pair stays due
//! and is tried again at its next window. When a set goes out while the agents one way are
//! busy (no forward run, or no reverse run, went out), the missing way is *owed*: tried again
//! at each window of the same episode, as part of the same set (no cooldown, one budget run),
//! until it goes out or the pair changes phase; so a pair is traced from both ends even when
//! its agents were tracing another pair at first.
//!
//! # Limits, each refusal counted ([`Refusal`])
//!
//! - `cooldown`: an automatic set of a pair starts at least `cooldown` after the pair's last
//!   (counted once per window a due set waits);
//! - `agent_busy`: an agent runs one trace at a time; a report, the timeout or a disconnect
//!   frees it (counted per run held back, also for operators);
//! - `budget`: at most `budget_per_hour` automatic runs start in any hour (a sliding window,
//!   counted per run held back);
//! - `no_agent`: no agent that takes traces, or no address to trace to (per run).
//!
//! Operator requests go through the same per-agent limit, but neither the cooldown nor the
//! budget: the budget bounds what the mesh does by itself, and an operator asking during an
//! incident is the point.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use super::blame::{BlameThresholds, judge};
use super::store::{TraceOutcome, TraceRecord};
use super::{Direction, Refusal, RegionPair, TraceReason};
use crate::link::{TraceProtocol, TraceReport, TraceRequest};
use crate::model::{AgentId, UnixMillis};

/// The span of the budget.
pub const BUDGET_SPAN: Duration = Duration::from_secs(3600);

/// A latency threshold pair: trigger at or above `trigger`, clear under `clear`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds<T> {
    /// At or above this, a window is bad.
    pub trigger: T,
    /// Under this, a window is clear (at most `trigger`).
    pub clear: T,
}

/// What a trace request asks the agent for.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct TraceShape {
    /// How it probes (ICMP).
    pub protocol: TraceProtocol,
    /// The highest TTL (30).
    pub max_hops: u8,
    /// Probes per hop (20: enough for [`BlameThresholds`] to tell 10 % loss from one lost
    /// reply; about 20 s at trippy's one round a second).
    pub rounds: u16,
}

impl Default for TraceShape {
    fn default() -> Self {
        Self {
            protocol: TraceProtocol::Icmp,
            max_hops: 30,
            rounds: 20,
        }
    }
}

/// The desk's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TriggerConfig {
    /// Loss ratio thresholds (trigger 0.05, clear 0.01).
    pub loss_ratio: Thresholds<f64>,
    /// Absolute mean-RTT thresholds (`None`: off, the default).
    pub rtt: Option<Thresholds<Duration>>,
    /// Mean RTT as a ratio to the pair's baseline (trigger 2.0, clear 1.5; `None`: off).
    pub rtt_baseline_ratio: Option<Thresholds<f64>>,
    /// Healthy windows the baseline is the median of (20).
    pub baseline_windows: usize,
    /// Healthy windows needed before the ratio applies (5).
    pub min_baseline_windows: usize,
    /// K: consecutive bad windows that make a pair degraded (3).
    pub windows_to_trigger: u32,
    /// M: consecutive clear windows that make a degraded pair recovered (3).
    pub windows_to_clear: u32,
    /// Between two automatic sets of one pair (10 min).
    pub cooldown: Duration,
    /// Automatic runs in any hour (30; 0: none, only operators trace).
    pub budget_per_hour: u32,
    /// A trace without a report after this is given up and its agent freed (2 min).
    pub trace_timeout: Duration,
    /// Healthy source agents a set traces forward from (1 or 2; 2).
    pub forward_agents: usize,
    /// What each automatic request asks for.
    pub shape: TraceShape,
    /// How reports are judged.
    pub blame: BlameThresholds,
}

impl Default for TriggerConfig {
    fn default() -> Self {
        Self {
            loss_ratio: Thresholds {
                trigger: 0.05,
                clear: 0.01,
            },
            rtt: None,
            rtt_baseline_ratio: Some(Thresholds {
                trigger: 2.0,
                clear: 1.5,
            }),
            baseline_windows: 20,
            min_baseline_windows: 5,
            windows_to_trigger: 3,
            windows_to_clear: 3,
            cooldown: Duration::from_secs(600),
            budget_per_hour: 30,
            trace_timeout: Duration::from_secs(120),
            forward_agents: 2,
            shape: TraceShape::default(),
            blame: BlameThresholds::default(),
        }
    }
}

/// A setting the desk cannot work with.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("trace trigger setting {field}: {why}")]
pub struct TriggerConfigError {
    /// The setting.
    pub field: &'static str,
    /// What is wrong.
    pub why: String,
}

/// Why [`TraceDesk::pick_operator`] found nobody to run an operator's trace.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
pub enum PickError {
    /// No connected agent of the source region takes traces.
    #[error("no connected agent of the source region takes traces")]
    NoTracer,
    /// Every one that does has a trace in flight.
    #[error("every agent of the source region that takes traces has a trace in flight")]
    Busy,
    /// No address to trace to: none given, and the mesh knows no host of the target region.
    #[error("no target address: none given, and no host of the target region is known")]
    NoTarget,
}

impl PickError {
    /// The refusal it is counted as.
    #[must_use]
    pub const fn refusal(self) -> Refusal {
        match self {
            Self::Busy => Refusal::AgentBusy,
            Self::NoTracer | Self::NoTarget => Refusal::NoAgent,
        }
    }
}

/// The host the robust aggregator left out of a pair's window, when it left out exactly one.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum BlamedHost {
    /// A source agent.
    Source(AgentId),
    /// A target host, by address.
    Target(IpAddr),
}

/// One pair's settled window, as the desk needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct PairVerdict {
    /// The pair.
    pub pair: RegionPair,
    /// Its loss ratio (0 to 1; `None`: no result sent packets). The server passes the
    /// gauge's, or the blamed host's own when it blamed one and that is worse.
    pub loss_ratio: Option<f64>,
    /// Its mean RTT (`None`: no replies); likewise the worse of the gauge's and the blamed
    /// host's own.
    pub rtt_mean: Option<Duration>,
    /// The one host the robust aggregator blamed (left out of the gauges): the window counts
    /// as bad whatever its numbers.
    pub blamed: Option<BlamedHost>,
    /// Agents of the source region that can trace now (connected, taking traces): the
    /// healthy ones, and the blamed one when it can trace (only it traces forward then).
    pub source_agents: Vec<AgentId>,
    /// Agents of the target region that can trace now.
    pub target_agents: Vec<AgentId>,
    /// The pair's target hosts (forward traces go to one of them).
    pub target_hosts: Vec<IpAddr>,
}

/// An operator's trace (`POST /-/trace`, `probermesh trace`); the caller checked the agent
/// is connected and takes traces.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct OperatorTrace {
    /// Who runs it.
    pub agent: AgentId,
    /// Where to.
    pub target: IpAddr,
    /// The pair it is about, if any (filed under it).
    pub pair: Option<RegionPair>,
    /// How (the desk's default shape when `None`).
    pub shape: Option<TraceShape>,
}

/// A trace sent and not finished.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct InFlight {
    /// Its agent.
    pub agent: AgentId,
    /// Its pair.
    pub pair: Option<RegionPair>,
    /// Why.
    pub reason: TraceReason,
    /// Which way.
    pub direction: Option<Direction>,
    /// What was asked.
    pub request: TraceRequest,
    /// When it was sent.
    pub started_at: UnixMillis,
    /// When its set went out (`started_at` but for an owed run of a set, sent later).
    pub set_started_at: UnixMillis,
}

/// What happened, for the log.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum TraceEvent {
    /// A pair was bad for K windows.
    Degraded {
        /// The pair.
        pair: RegionPair,
        /// Loss or latency.
        reason: TraceReason,
    },
    /// A degraded pair was clear for M windows.
    Recovered {
        /// The pair.
        pair: RegionPair,
    },
    /// A run was sent.
    Sent {
        /// The trace id.
        id: u64,
        /// Who runs it.
        agent: AgentId,
        /// Where to.
        target: IpAddr,
        /// Why.
        reason: TraceReason,
        /// The pair.
        pair: Option<RegionPair>,
    },
    /// A run (or, for the cooldown, a set) was held back.
    Refused {
        /// The pair.
        pair: Option<RegionPair>,
        /// Why it was due.
        reason: TraceReason,
        /// Why it was held back.
        refusal: Refusal,
    },
    /// A trace ended without a report.
    GivenUp {
        /// The trace id.
        id: u64,
        /// Its agent.
        agent: AgentId,
        /// Timed out or abandoned.
        outcome: &'static str,
    },
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pair_text = |pair: &Option<RegionPair>| {
            pair.as_ref()
                .map_or_else(|| "no pair".to_owned(), ToString::to_string)
        };
        match self {
            Self::Degraded { pair, reason } => {
                write!(f, "pair {pair} degraded ({reason}): tracing it")
            }
            Self::Recovered { pair } => write!(f, "pair {pair} recovered"),
            Self::Sent {
                id,
                agent,
                target,
                reason,
                pair,
            } => write!(
                f,
                "trace {id} ({reason}, {}) sent to {agent} towards {target}",
                pair_text(pair)
            ),
            Self::Refused {
                pair,
                reason,
                refusal,
            } => write!(
                f,
                "trace ({reason}, {}) held back: {refusal}",
                pair_text(pair)
            ),
            Self::GivenUp { id, agent, outcome } => {
                write!(f, "trace {id} of {agent} given up: {outcome}")
            }
        }
    }
}

/// What the driver must do after an input.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TraceChanges {
    /// Requests to send, each to its agent.
    pub requests: Vec<(AgentId, TraceRequest)>,
    /// Traces that ended, to keep in the [`super::store::TraceStore`].
    pub finished: Vec<TraceRecord>,
    /// For the log.
    pub events: Vec<TraceEvent>,
}

/// Counters for metrics, every label present.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TraceCounters {
    /// Runs sent, by reason ([`super::TRACE_RUNS`]).
    pub runs: BTreeMap<TraceReason, u64>,
    /// Runs (or sets, for the cooldown) held back, by refusal ([`super::TRACE_REFUSALS`]).
    pub refusals: BTreeMap<Refusal, u64>,
    /// Traces given up without a report (timed out or abandoned).
    pub given_up: u64,
    /// Reports that answered no trace in flight (late, or from another agent).
    pub unknown_reports: u64,
}

impl Default for TraceCounters {
    fn default() -> Self {
        Self {
            runs: TraceReason::ALL.iter().map(|r| (*r, 0)).collect(),
            refusals: Refusal::ALL.iter().map(|r| (*r, 0)).collect(),
            given_up: 0,
            unknown_reports: 0,
        }
    }
}

/// Where a pair stands.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
enum Phase {
    #[default]
    Healthy,
    Degraded,
}

/// What the desk remembers of a pair.
#[derive(Clone, Debug, Default)]
struct PairState {
    phase: Phase,
    /// Consecutive bad windows (while healthy).
    bad_windows: u32,
    /// Consecutive clear windows (while degraded).
    clear_windows: u32,
    /// A set is due for this reason.
    due: Option<TraceReason>,
    /// Whether a set went out during the current degraded episode.
    episode_traced: bool,
    /// When the last automatic set went out.
    last_set_at: Option<UnixMillis>,
    /// The ways of the last set that did not go out because their agents were busy.
    owed: Option<Owed>,
    /// Mean RTTs of the last clear windows while healthy (the baseline's input).
    baseline: VecDeque<Duration>,
}

/// The runs of a set still owed (see the module documentation).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
struct Owed {
    reason: TraceReason,
    set_at: UnixMillis,
    forward: bool,
    reverse: bool,
    /// The source agent the set's forward run went from: an owed reverse run traces back to
    /// it, so both ends see the same path.
    back_to: Option<IpAddr>,
    /// The source agent the set's reverse run traced to: an owed forward run goes from it
    /// when it is free.
    forward_from: Option<IpAddr>,
}

/// The server's trace desk.
#[derive(Clone, Debug)]
pub struct TraceDesk {
    config: TriggerConfig,
    pairs: BTreeMap<RegionPair, PairState>,
    in_flight: BTreeMap<u64, InFlight>,
    busy: BTreeMap<AgentId, u64>,
    /// Starts of automatic runs within the last [`BUDGET_SPAN`], oldest first.
    budget: VecDeque<UnixMillis>,
    next_id: u64,
    counters: TraceCounters,
}

impl TraceDesk {
    /// A desk with `config`, started at `now`: trace ids start from `now` in milliseconds
    /// times 256 (under 2^53 for centuries, so JSON readers keep them exact), so a restarted
    /// server does not reuse the ids of reports still on their way.
    ///
    /// # Errors
    /// [`TriggerConfigError`] naming the first setting out of range.
    pub fn new(config: TriggerConfig, now: UnixMillis) -> Result<Self, TriggerConfigError> {
        check(&config)?;
        Ok(Self {
            config,
            pairs: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            busy: BTreeMap::new(),
            budget: VecDeque::new(),
            next_id: now.as_millis().saturating_mul(256).max(1),
            counters: TraceCounters::default(),
        })
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &TriggerConfig {
        &self.config
    }

    /// The counters.
    #[must_use]
    pub fn counters(&self) -> &TraceCounters {
        &self.counters
    }

    /// Traces in flight, by id.
    #[must_use]
    pub fn in_flight(&self) -> &BTreeMap<u64, InFlight> {
        &self.in_flight
    }

    /// Whether `pair` is degraded now.
    #[must_use]
    pub fn is_degraded(&self, pair: &RegionPair) -> bool {
        self.pairs
            .get(pair)
            .is_some_and(|state| state.phase == Phase::Degraded)
    }

    /// Whether `agent` has a trace in flight.
    #[must_use]
    pub fn is_busy(&self, agent: &AgentId) -> bool {
        self.busy.contains_key(agent)
    }

    /// Who runs an operator's trace of a region pair, and where to (`POST /-/trace` with
    /// `source_region`): the first of `tracers` (connected agents of the source region that
    /// take traces, any order) without a trace in flight, other than the target itself; to
    /// `target` when the operator named one, else to the pair's target host the way an
    /// automatic set picks it (`preferred_host`: a host that is an agent of the target
    /// region first, so a reverse trace could run the same path back), else to an agent of
    /// the target region. Pure: nothing is sent or counted.
    ///
    /// # Errors
    /// [`PickError`]: no tracer, every tracer busy, or no address to trace to.
    pub fn pick_operator(
        &self,
        tracers: &[AgentId],
        target: Option<IpAddr>,
        hosts: &[IpAddr],
        target_agents: &[AgentId],
    ) -> Result<(AgentId, IpAddr), PickError> {
        if tracers.is_empty() {
            return Err(PickError::NoTracer);
        }
        let mut hosts: Vec<IpAddr> = hosts.to_vec();
        hosts.sort();
        hosts.dedup();
        let mut targets: Vec<AgentId> = target_agents.to_vec();
        targets.sort();
        targets.dedup();
        let target = target
            .or_else(|| preferred_host(&hosts, &targets))
            .or_else(|| targets.first().map(|agent| agent.ip))
            .ok_or(PickError::NoTarget)?;
        let mut candidates: Vec<&AgentId> = tracers.iter().filter(|a| a.ip != target).collect();
        candidates.sort();
        candidates.dedup();
        if candidates.is_empty() {
            return Err(PickError::NoTracer);
        }
        candidates
            .into_iter()
            .find(|agent| !self.is_busy(agent))
            .map(|agent| (agent.clone(), target))
            .ok_or(PickError::Busy)
    }

    /// Counts a refusal the caller made before reaching the desk (an operator naming an
    /// agent that is not connected or does not take traces: [`Refusal::NoAgent`]).
    pub fn count_refusal(&mut self, refusal: Refusal) {
        *self.counters.refusals.entry(refusal).or_default() += 1;
    }

    /// One settled window at `now`: each pair's verdict moves its state, and every due pair
    /// in it (in pair order) is traced if the limits allow.
    pub fn handle_window(&mut self, now: UnixMillis, verdicts: &[PairVerdict]) -> TraceChanges {
        let mut changes = TraceChanges::default();
        let mut ordered: Vec<&PairVerdict> = verdicts.iter().collect();
        ordered.sort_by(|a, b| a.pair.cmp(&b.pair));
        ordered.dedup_by(|a, b| a.pair == b.pair);
        for verdict in ordered {
            self.step_pair(verdict, &mut changes);
            self.try_set(now, verdict, &mut changes);
        }
        changes
    }

    /// An operator's trace at `now`: sent unless its agent is busy.
    ///
    /// # Errors
    /// [`Refusal::AgentBusy`] (counted); nothing is sent.
    pub fn request(
        &mut self,
        now: UnixMillis,
        trace: OperatorTrace,
    ) -> Result<TraceChanges, Refusal> {
        let mut changes = TraceChanges::default();
        if self.busy.contains_key(&trace.agent) {
            self.refuse(
                trace.pair,
                TraceReason::Operator,
                Refusal::AgentBusy,
                &mut changes,
            );
            return Err(Refusal::AgentBusy);
        }
        let shape = trace.shape.unwrap_or(self.config.shape);
        self.send(
            now,
            Run {
                agent: trace.agent,
                target: trace.target,
                pair: trace.pair,
                reason: TraceReason::Operator,
                direction: None,
                shape,
                set_at: now,
            },
            &mut changes,
        );
        Ok(changes)
    }

    /// A report from `agent` at `now`: the trace it answers is finished and judged, and its
    /// agent freed. A report no trace of that agent is waiting for is counted and dropped.
    pub fn handle_report(
        &mut self,
        now: UnixMillis,
        agent: &AgentId,
        report: TraceReport,
    ) -> TraceChanges {
        let mut changes = TraceChanges::default();
        if self
            .in_flight
            .get(&report.id)
            .is_none_or(|flight| &flight.agent != agent)
        {
            self.counters.unknown_reports += 1;
            return changes;
        }
        let id = report.id;
        // An agent's counts are not trusted to be consistent: a hop never answers more
        // probes than were sent to it.
        let mut report = report;
        for hop in &mut report.hops {
            hop.received = hop.received.min(hop.sent);
        }
        // An answer without a single hop and with an error is a trace that did not run (the
        // agent refused it, or could not open its socket): nothing to judge.
        let outcome = match report.error {
            Some(error) if report.hops.is_empty() => TraceOutcome::Failed { error },
            _ => {
                let verdict = judge(&report, &self.config.blame);
                TraceOutcome::Reported { report, verdict }
            }
        };
        self.finish(now, id, outcome, &mut changes);
        changes
    }

    /// `agent` disconnected at `now`: its trace in flight, if any, is abandoned.
    pub fn handle_disconnect(&mut self, now: UnixMillis, agent: &AgentId) -> TraceChanges {
        let mut changes = TraceChanges::default();
        if let Some(id) = self.busy.get(agent).copied() {
            self.finish(now, id, TraceOutcome::Abandoned, &mut changes);
        }
        changes
    }

    /// Gives up the traces whose timeout passed at `now`.
    pub fn tick(&mut self, now: UnixMillis) -> TraceChanges {
        let mut changes = TraceChanges::default();
        let expired: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, flight)| self.deadline(flight) <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.finish(now, id, TraceOutcome::TimedOut, &mut changes);
        }
        changes
    }

    /// When [`Self::tick`] has something to do: the earliest deadline of a trace in flight.
    #[must_use]
    pub fn next_timeout(&self) -> Option<UnixMillis> {
        self.in_flight
            .values()
            .map(|flight| self.deadline(flight))
            .min()
    }

    fn deadline(&self, flight: &InFlight) -> UnixMillis {
        flight.started_at.saturating_add(self.config.trace_timeout)
    }

    // === the trigger ===

    /// Moves `verdict.pair`'s counts and phase.
    fn step_pair(&mut self, verdict: &PairVerdict, changes: &mut TraceChanges) {
        let config = &self.config;
        let state = self.pairs.entry(verdict.pair.clone()).or_default();
        let Some(window) = classify(config, state, verdict) else {
            return;
        };
        match state.phase {
            Phase::Healthy => {
                if let Some(reason) = window.bad {
                    state.bad_windows += 1;
                    if state.bad_windows >= config.windows_to_trigger {
                        state.phase = Phase::Degraded;
                        state.bad_windows = 0;
                        state.clear_windows = 0;
                        state.episode_traced = false;
                        state.owed = None;
                        state.due = Some(reason);
                        changes.events.push(TraceEvent::Degraded {
                            pair: verdict.pair.clone(),
                            reason,
                        });
                    }
                } else {
                    state.bad_windows = 0;
                    if window.clear
                        && let Some(rtt) = verdict.rtt_mean
                    {
                        state.baseline.push_back(rtt);
                        while state.baseline.len() > config.baseline_windows {
                            state.baseline.pop_front();
                        }
                    }
                }
            }
            Phase::Degraded => {
                if window.clear {
                    state.clear_windows += 1;
                    if state.clear_windows >= config.windows_to_clear {
                        state.phase = Phase::Healthy;
                        state.clear_windows = 0;
                        state.bad_windows = 0;
                        // The "after" only makes sense after a "before".
                        state.due = state.episode_traced.then_some(TraceReason::Recovery);
                        state.owed = None;
                        changes.events.push(TraceEvent::Recovered {
                            pair: verdict.pair.clone(),
                        });
                    }
                } else {
                    state.clear_windows = 0;
                }
            }
        }
    }

    /// Sends `verdict.pair`'s due set, or the runs its last set still owes, if the limits
    /// allow.
    fn try_set(&mut self, now: UnixMillis, verdict: &PairVerdict, changes: &mut TraceChanges) {
        let Some(state) = self.pairs.get(&verdict.pair) else {
            return;
        };
        let owed = state.owed;
        let reason = match (owed, state.due) {
            (Some(owed), _) => owed.reason,
            (None, Some(reason)) => reason,
            (None, None) => return,
        };
        let pair = Some(verdict.pair.clone());
        if owed.is_none()
            && state
                .last_set_at
                .is_some_and(|at| now < at.saturating_add(self.config.cooldown))
        {
            self.refuse(pair, reason, Refusal::Cooldown, changes);
            return;
        }
        let set_at = owed.map_or(now, |owed| owed.set_at);
        let (want_forward, want_reverse) = owed.map_or((true, true), |o| (o.forward, o.reverse));
        let plan = plan_set(verdict, self.config.forward_agents);
        let mut forward_sources: Vec<IpAddr> = Vec::new();
        let mut forward_busy = false;
        let forward_from = owed.and_then(|o| o.forward_from);
        if want_forward {
            for wanted in plan.forward {
                let mut candidates = wanted.candidates.clone();
                // The agent the set's reverse run traced to first, when one went out.
                candidates.sort_by_key(|agent| Some(agent.ip) != forward_from);
                match self.pick(&candidates, wanted.target) {
                    Ok((agent, target)) => {
                        if self.spend_budget(now) {
                            forward_sources.push(agent.ip);
                            let run = (agent, target, Direction::Forward, set_at);
                            self.send_run(now, run, &pair, reason, changes);
                        } else {
                            self.refuse(pair.clone(), reason, Refusal::Budget, changes);
                        }
                    }
                    Err(refusal) => {
                        forward_busy |= refusal == Refusal::AgentBusy;
                        self.refuse(pair.clone(), reason, refusal, changes);
                    }
                }
            }
        }
        let mut reverse_sent = false;
        let mut reverse_busy = false;
        let mut reverse_target = None;
        if want_reverse {
            // Back to the first forward source that went out (in this call, or earlier in the
            // set), else to the planned one.
            let back_to = forward_sources
                .first()
                .copied()
                .or(owed.and_then(|o| o.back_to))
                .or(plan.reverse_target);
            match self.pick(&plan.reverse, back_to) {
                Ok((agent, target)) => {
                    if self.spend_budget(now) {
                        let run = (agent, target, Direction::Reverse, set_at);
                        self.send_run(now, run, &pair, reason, changes);
                        reverse_sent = true;
                        reverse_target = Some(target);
                    } else {
                        self.refuse(pair.clone(), reason, Refusal::Budget, changes);
                    }
                }
                Err(refusal) => {
                    reverse_busy = refusal == Refusal::AgentBusy;
                    self.refuse(pair.clone(), reason, refusal, changes);
                }
            }
        }
        let forward_sent = !forward_sources.is_empty();
        let Some(state) = self.pairs.get_mut(&verdict.pair) else {
            return;
        };
        if owed.is_none() {
            if !forward_sent && !reverse_sent {
                return; // still due: tried again at the next window
            }
            state.due = None;
            state.last_set_at = Some(now);
            if reason != TraceReason::Recovery {
                state.episode_traced = true;
            }
        }
        // A way whose agents were all busy is owed; one refused for another reason is not.
        let forward = want_forward && !forward_sent && forward_busy;
        let reverse = want_reverse && !reverse_sent && reverse_busy;
        let earlier = owed.unwrap_or(Owed {
            reason,
            set_at,
            forward: false,
            reverse: false,
            back_to: None,
            forward_from: None,
        });
        state.owed = (forward || reverse).then_some(Owed {
            reason,
            set_at,
            forward,
            reverse,
            back_to: forward_sources.first().copied().or(earlier.back_to),
            forward_from: reverse_target.or(earlier.forward_from),
        });
    }

    /// The first free candidate and the target, or why there is none.
    fn pick(
        &self,
        candidates: &[AgentId],
        target: Option<IpAddr>,
    ) -> Result<(AgentId, IpAddr), Refusal> {
        let Some(target) = target else {
            return Err(Refusal::NoAgent);
        };
        if candidates.is_empty() {
            return Err(Refusal::NoAgent);
        }
        candidates
            .iter()
            .find(|agent| !self.busy.contains_key(*agent))
            .map(|agent| (agent.clone(), target))
            .ok_or(Refusal::AgentBusy)
    }

    /// Takes one automatic run from the budget at `now`, if there is one left.
    fn spend_budget(&mut self, now: UnixMillis) -> bool {
        while self
            .budget
            .front()
            .is_some_and(|start| start.saturating_add(BUDGET_SPAN) <= now)
        {
            self.budget.pop_front();
        }
        let budget = usize::try_from(self.config.budget_per_hour).unwrap_or(usize::MAX);
        if self.budget.len() >= budget {
            return false;
        }
        self.budget.push_back(now);
        true
    }

    /// Sends an automatic run: (agent, target, direction, when its set went out).
    fn send_run(
        &mut self,
        now: UnixMillis,
        (agent, target, direction, set_at): (AgentId, IpAddr, Direction, UnixMillis),
        pair: &Option<RegionPair>,
        reason: TraceReason,
        changes: &mut TraceChanges,
    ) {
        let shape = self.config.shape;
        self.send(
            now,
            Run {
                agent,
                target,
                pair: pair.clone(),
                reason,
                direction: Some(direction),
                shape,
                set_at,
            },
            changes,
        );
    }

    fn send(&mut self, now: UnixMillis, run: Run, changes: &mut TraceChanges) {
        let id = self.next_id;
        self.next_id += 1;
        let request = TraceRequest {
            id,
            target: run.target,
            protocol: run.shape.protocol,
            max_hops: run.shape.max_hops,
            rounds: run.shape.rounds,
        };
        *self.counters.runs.entry(run.reason).or_default() += 1;
        self.busy.insert(run.agent.clone(), id);
        changes.events.push(TraceEvent::Sent {
            id,
            agent: run.agent.clone(),
            target: run.target,
            reason: run.reason,
            pair: run.pair.clone(),
        });
        changes.requests.push((run.agent.clone(), request.clone()));
        self.in_flight.insert(
            id,
            InFlight {
                agent: run.agent,
                pair: run.pair,
                reason: run.reason,
                direction: run.direction,
                request,
                started_at: now,
                set_started_at: run.set_at,
            },
        );
    }

    fn refuse(
        &mut self,
        pair: Option<RegionPair>,
        reason: TraceReason,
        refusal: Refusal,
        changes: &mut TraceChanges,
    ) {
        self.count_refusal(refusal);
        changes.events.push(TraceEvent::Refused {
            pair,
            reason,
            refusal,
        });
    }

    fn finish(
        &mut self,
        now: UnixMillis,
        id: u64,
        outcome: TraceOutcome,
        changes: &mut TraceChanges,
    ) {
        let Some(flight) = self.in_flight.remove(&id) else {
            return;
        };
        if self.busy.get(&flight.agent) == Some(&id) {
            self.busy.remove(&flight.agent);
        }
        if matches!(outcome, TraceOutcome::TimedOut | TraceOutcome::Abandoned) {
            self.counters.given_up += 1;
            changes.events.push(TraceEvent::GivenUp {
                id,
                agent: flight.agent.clone(),
                outcome: outcome.label(),
            });
        }
        changes.finished.push(TraceRecord {
            id,
            pair: flight.pair,
            reason: flight.reason,
            direction: flight.direction,
            agent: flight.agent,
            target: flight.request.target,
            started_at: flight.started_at,
            ended_at: now,
            outcome,
        });
    }
}

/// One run about to be sent.
struct Run {
    agent: AgentId,
    target: IpAddr,
    pair: Option<RegionPair>,
    reason: TraceReason,
    direction: Option<Direction>,
    shape: TraceShape,
    /// When its set went out (`now` for an operator's run).
    set_at: UnixMillis,
}

/// How a window counts: bad (and why), clear, or neither; `None` without data.
struct WindowClass {
    bad: Option<TraceReason>,
    clear: bool,
}

fn classify(
    config: &TriggerConfig,
    state: &PairState,
    verdict: &PairVerdict,
) -> Option<WindowClass> {
    if verdict.loss_ratio.is_none() && verdict.rtt_mean.is_none() {
        return None;
    }
    let loss = verdict.loss_ratio.filter(|l| l.is_finite());
    let baseline = baseline(config, state);
    let rtt = verdict.rtt_mean;
    let loss_bad = loss.is_some_and(|l| l >= config.loss_ratio.trigger);
    let rtt_bad = rtt.is_some_and(|rtt| {
        config.rtt.is_some_and(|t| rtt >= t.trigger)
            || config
                .rtt_baseline_ratio
                .zip(baseline)
                .is_some_and(|(t, base)| rtt.as_secs_f64() >= t.trigger * base.as_secs_f64())
    });
    let loss_clear = loss.is_none_or(|l| l < config.loss_ratio.clear);
    let rtt_clear = rtt.is_none_or(|rtt| {
        config.rtt.is_none_or(|t| rtt < t.clear)
            && config
                .rtt_baseline_ratio
                .zip(baseline)
                .is_none_or(|(t, base)| rtt.as_secs_f64() < t.clear * base.as_secs_f64())
    });
    let bad = if loss_bad {
        Some(TraceReason::Loss)
    } else if rtt_bad {
        Some(TraceReason::Latency)
    } else if verdict.blamed.is_some() {
        // The robust aggregation left a broken host out, so the pair's gauges look healthy:
        // the window is bad all the same. For loss when the loss reaches the clear threshold
        // (the server passes the blamed host's own numbers when they are worse), else for
        // latency (the host was left out for its RTT).
        Some(if loss.is_some_and(|l| l >= config.loss_ratio.clear) {
            TraceReason::Loss
        } else {
            TraceReason::Latency
        })
    } else {
        None
    };
    Some(WindowClass {
        bad,
        clear: bad.is_none() && loss_clear && rtt_clear,
    })
}

/// The median of the pair's baseline windows, once there are enough.
fn baseline(config: &TriggerConfig, state: &PairState) -> Option<Duration> {
    if state.baseline.len() < config.min_baseline_windows.max(1) {
        return None;
    }
    let mut sorted: Vec<Duration> = state.baseline.iter().copied().collect();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied()
}

/// One wanted run: its candidates in order of preference, and its target.
struct Wanted {
    candidates: Vec<AgentId>,
    target: Option<IpAddr>,
}

/// A set's runs before the limits.
struct SetPlan {
    forward: Vec<Wanted>,
    reverse: Vec<AgentId>,
    /// Where the reverse run goes when no forward run went out.
    reverse_target: Option<IpAddr>,
}

/// Plans `verdict`'s set: who traces where (see the module documentation).
fn plan_set(verdict: &PairVerdict, forward_agents: usize) -> SetPlan {
    let mut sources: Vec<AgentId> = verdict
        .source_agents
        .iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .cloned()
        .collect();
    let mut targets: Vec<AgentId> = verdict
        .target_agents
        .iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .cloned()
        .collect();
    let mut hosts: Vec<IpAddr> = verdict.target_hosts.clone();
    hosts.sort();
    hosts.dedup();
    let (forward_target, forward_runs) = match &verdict.blamed {
        Some(BlamedHost::Source(blamed)) => {
            // Only from the blamed agent, when it can trace.
            sources.retain(|agent| agent == blamed);
            (preferred_host(&hosts, &targets), 1)
        }
        Some(BlamedHost::Target(address)) => {
            // The blamed host is not a healthy target: trace to it, and back from it when it
            // is an agent.
            if targets.iter().any(|agent| agent.ip == *address) {
                targets.retain(|agent| agent.ip == *address);
            }
            (Some(*address), forward_agents)
        }
        None => (preferred_host(&hosts, &targets), forward_agents),
    };
    // The reverse run starts from the agent at the forward target, if there is one.
    if let Some(host) = forward_target
        && let Some(idx) = targets.iter().position(|agent| agent.ip == host)
    {
        let agent = targets.remove(idx);
        targets.insert(0, agent);
    }
    let reverse_target = match &verdict.blamed {
        Some(BlamedHost::Source(blamed)) => Some(blamed.ip),
        _ => sources.first().map(|agent| agent.ip),
    };
    let n_forward = forward_runs.clamp(1, 2).min(sources.len().max(1));
    // Each forward run takes the free sources in order; two runs never pick the same agent
    // because the first one's agent is busy once it is sent.
    let forward = (0..n_forward)
        .map(|_| Wanted {
            candidates: sources.clone(),
            target: forward_target,
        })
        .collect();
    SetPlan {
        forward,
        reverse: targets,
        reverse_target,
    }
}

/// The forward target: the first host that is an agent of the target region (so the reverse
/// trace runs the same path back), else the first host.
fn preferred_host(hosts: &[IpAddr], targets: &[AgentId]) -> Option<IpAddr> {
    hosts
        .iter()
        .find(|host| targets.iter().any(|agent| agent.ip == **host))
        .or_else(|| hosts.first())
        .copied()
}

fn check(config: &TriggerConfig) -> Result<(), TriggerConfigError> {
    let fail = |field: &'static str, why: &str| {
        Err(TriggerConfigError {
            field,
            why: why.to_owned(),
        })
    };
    let loss = config.loss_ratio;
    if !(loss.trigger.is_finite() && loss.trigger > 0.0 && loss.trigger <= 1.0) {
        return fail("loss_ratio.trigger", "must be above 0 and at most 1");
    }
    if !(loss.clear.is_finite() && loss.clear > 0.0 && loss.clear <= loss.trigger) {
        return fail(
            "loss_ratio.clear",
            "must be above 0 and at most the trigger",
        );
    }
    if let Some(rtt) = config.rtt
        && (rtt.trigger.is_zero() || rtt.clear.is_zero() || rtt.clear > rtt.trigger)
    {
        return fail(
            "rtt",
            "both thresholds above 0, the clear one at most the trigger",
        );
    }
    if let Some(ratio) = config.rtt_baseline_ratio
        && !(ratio.trigger.is_finite()
            && ratio.clear.is_finite()
            && ratio.clear > 1.0
            && ratio.clear <= ratio.trigger)
    {
        return fail(
            "rtt_baseline_ratio",
            "the clear ratio above 1 and at most the trigger",
        );
    }
    if config.min_baseline_windows == 0 || config.baseline_windows < config.min_baseline_windows {
        return fail(
            "baseline_windows",
            "at least 1 window and at least min_baseline_windows",
        );
    }
    if config.windows_to_trigger == 0 || config.windows_to_clear == 0 {
        return fail("windows_to_trigger", "K and M are at least 1 window");
    }
    if config.trace_timeout.is_zero() {
        return fail("trace_timeout", "must be above 0");
    }
    if !(1..=2).contains(&config.forward_agents) {
        return fail("forward_agents", "one or two");
    }
    if config.shape.max_hops == 0 || config.shape.rounds == 0 {
        return fail("shape", "max_hops and rounds are at least 1");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
