//! The agent's state machine, sans-IO: everything an agent decides between events, in the
//! shape of quinn-proto's connection. Its driver feeds it what happens (`handle_event` for the
//! link, `handle_result` for a finished probe, `handle_timeout` when [`AgentState::poll_timeout`]
//! is due, each with `now`) and carries out what it asks ([`AgentState::poll_action`]); it
//! never reads a clock or touches a socket, so it runs in tests without either.
//!
//! What it decides:
//! - **Rounds**: at each round start it plans the whole round over its latest pool
//!   ([`super::plan_round`]: a probe due before the timer woke starts at once) and asks for
//!   each probe when its start comes; a new pool that arrives mid-round is used from the next
//!   round (the first one at once, for the rest of the round,
//!   [`super::plan_rest_of_round`]). It keeps probing its last pool while the server is away
//!   (decision 11).
//! - **Heartbeats** (`prober_agent_is_alive`): one at every connection, then every
//!   heartbeat interval while connected.
//! - **Pool requests**: one at every connection, then every sync interval while connected
//!   (pushes cover changes; asking again covers a push lost with a connection).
//! - **Refused pools**: each refused revision is reported once (`PoolRefused`), so a server
//!   too old to know the message, which closes the connection, is not sent it again at every
//!   reconnection.
//! - **Identity**: in the public-IP mode (decision 12) the agent is who the server sees; when
//!   a `Welcome` shows another address, it asks to be re-identified.
//! - **Probes in flight** are bounded per kind ([`InFlightLimits`]): a due probe waits while its
//!   kind is at the limit, starts when a probe of its kind finishes, and is skipped (counted
//!   and reported once per round, [`AgentNotice::ProbesSkipped`]) when it could no longer
//!   start by the end of its round's start spread ([`super::start_spread`]), the latest start
//!   whose result still reaches its window. So however large a pool is, an agent runs at most
//!   `icmp + http` probes at once, and its memory is bounded by the limits, not by the pool.
//! - **Traces** (`core::trace::agent`): a path trace the server asks for becomes a
//!   [`AgentAction::RunTrace`] (one at a time, within the agent's bounds), or an immediate
//!   report saying why not (tracing off, busy, out of bounds).
//! - **Stopping**: after [`AgentState::stop`] no probe or trace starts; those in flight finish.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use super::plan::{PlannedProbe, plan_rest_of_round, plan_round, round_start, start_spread};
use crate::link::{FromAgent, FromServer, ToAgent};
use crate::link::{TraceReport, TraceRequest};
use crate::model::time::duration_millis;
use crate::model::{AgentId, ProbeKind, ProbeResult, UnixMillis};
use crate::ports::ReceivedPool;
use crate::task::TaskRun;
use crate::task::runs::{AgentTasks, TaskPolicy, TaskStep};
use crate::trace::agent::{AgentTraces, TracePolicy, TraceStep};
use crate::upgrade::agent::{AgentUpgrades, UpgradeSetup, UpgradeStep};

/// Refused revisions remembered; beyond this the memory starts afresh.
const MAX_REMEMBERED_REFUSALS: usize = 1_024;

/// How an agent runs.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct AgentConfig {
    /// Who the agent is (its region and reported address).
    pub me: AgentId,
    /// The round period (`-agent.probe.interval`).
    pub probe_interval: Duration,
    /// How often the pool is asked for while connected (`-agent.sync.interval`).
    pub sync_interval: Duration,
    /// How often a heartbeat is sent while connected.
    pub heartbeat_interval: Duration,
    /// Whether the agent is the address the server sees it connect from (the public-IP mode
    /// without `-agent.ip`).
    pub follow_observed_ip: bool,
    /// The most probes of each kind running at once.
    pub in_flight_limits: InFlightLimits,
    /// How remote tasks run (`-agent.task`); `None`: every task is refused.
    pub tasks: Option<TaskPolicy>,
    /// How upgrades are taken (`-agent.upgrade`), and whether this process is a trial.
    pub upgrade: UpgradeSetup,
    /// How path traces run (`-agent.trace`, on by default); `None`: every trace is refused.
    pub traces: Option<TracePolicy>,
}

/// The most probes of each kind an agent runs at once (`-agent.probe.icmp-max-in-flight`,
/// `-agent.probe.http-max-in-flight`). An HTTP probe holds a connection, a file descriptor
/// and up to `body_size_limit` (at most 16 MiB) of kept body, so its limit is low; an ICMP
/// probe holds a few hundred bytes, so its limit only stops a runaway pool.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct InFlightLimits {
    /// ICMP series at once.
    pub icmp: usize,
    /// HTTP requests at once.
    pub http: usize,
}

impl InFlightLimits {
    /// ICMP series at once by default: more than 16,384 targets × the series' share of the
    /// round start together only in a pool of about 30,000 ICMP targets.
    pub const DEFAULT_ICMP: usize = 16_384;
    /// HTTP requests at once by default: 256 (a quarter of systemd's default descriptor limit).
    pub const DEFAULT_HTTP: usize = 256;

    fn of(&self, kind: ProbeKind) -> usize {
        match kind {
            ProbeKind::Icmp => self.icmp,
            ProbeKind::Http => self.http,
        }
        .max(1)
    }
}

impl Default for InFlightLimits {
    fn default() -> Self {
        Self {
            icmp: Self::DEFAULT_ICMP,
            http: Self::DEFAULT_HTTP,
        }
    }
}

/// What the agent asks its driver to do.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentAction {
    /// Start this probe now and hand its result to [`AgentState::handle_result`].
    Probe(PlannedProbe),
    /// Send this control message (lost if the link is down: each is repeated or moot).
    Send(FromAgent),
    /// Hand these results to the link, which delivers them reliably.
    Deliver(Vec<ProbeResult>),
    /// The server sees this agent at another address: restart the link under this identity.
    Reidentify(AgentId),
    /// Run this task and hand its output to [`AgentState::handle_task_output`].
    RunTask(TaskRun),
    /// Run this path trace and hand its report to [`AgentState::handle_trace_report`].
    RunTrace(TraceRequest),
    /// A step of an upgrade (staging, writing, checking the binary; handing over; committing),
    /// answered with the `handle_upgrade_*` methods. (Its messages come as [`Self::Send`].)
    Upgrade(UpgradeStep),
    /// Something worth a log line.
    Notice(AgentNotice),
}

/// The probes of one kind: those of this round still to start, in start order, and those
/// running.
#[derive(Debug, Default)]
struct KindQueue {
    upcoming: VecDeque<PlannedProbe>,
    in_flight: usize,
    /// Probes of this round skipped because the kind was at its limit too long.
    skipped_this_round: usize,
}

/// What an agent has to say about itself, for its driver's log.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentNotice {
    /// A connection passed the handshake.
    Connected {
        /// The server's version.
        server_version: String,
        /// The address the server sees.
        observed_addr: SocketAddr,
    },
    /// A new pool is in use from the next round.
    PoolAccepted {
        /// Its revision.
        revision: u64,
        /// Its blocks.
        blocks: usize,
    },
    /// The server sent a pool this agent cannot accept; it keeps its previous one.
    PoolRefused {
        /// The refused revision.
        revision: u64,
        /// Where in the pool.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Probes of the round that ended did not start: their kind was at its in-flight limit
    /// until too late in the round.
    ProbesSkipped {
        /// Their kind.
        kind: ProbeKind,
        /// How many.
        skipped: usize,
        /// The kind's in-flight limit.
        limit: usize,
    },
    /// The pool names files whose contents the server did not send (a server of protocol v1):
    /// the probes needing them fail, since an agent never reads a path the server names.
    FilesNotSent {
        /// Their paths, once each (at most 16).
        paths: Vec<String>,
    },
    /// A message this version does not act on yet.
    Unhandled {
        /// Its kind.
        kind: &'static str,
    },
}

/// The agent between events.
#[derive(Debug)]
pub struct AgentState {
    config: AgentConfig,
    pool: Option<ReceivedPool>,
    connected: bool,
    observed_addr: Option<SocketAddr>,
    /// When the next round starts.
    next_round: UnixMillis,
    /// This round's ICMP probes still to start, and those running.
    icmp: KindQueue,
    /// This round's HTTP probes still to start, and those running.
    http: KindQueue,
    /// Probes skipped since the start.
    skipped: u64,
    next_heartbeat: UnixMillis,
    next_sync: UnixMillis,
    reported_refusals: HashSet<u64>,
    stopping: bool,
    produced: u64,
    tasks: AgentTasks,
    upgrades: AgentUpgrades,
    traces: AgentTraces,
    actions: VecDeque<AgentAction>,
}

impl AgentState {
    /// An agent starting at `now`, with no pool yet: its first pool is probed at once for the
    /// rest of the round under way, later ones from the next round.
    #[must_use]
    pub fn new(config: AgentConfig, now: UnixMillis) -> Self {
        let interval = config.probe_interval.max(Duration::from_millis(1));
        let config = AgentConfig {
            probe_interval: interval,
            ..config
        };
        let tasks = AgentTasks::new(config.tasks.clone());
        let upgrades = AgentUpgrades::new(config.upgrade.clone());
        let traces = AgentTraces::new(config.traces);
        Self {
            next_round: after(round_start(now, interval), interval),
            config,
            pool: None,
            connected: false,
            observed_addr: None,
            icmp: KindQueue::default(),
            http: KindQueue::default(),
            skipped: 0,
            next_heartbeat: now,
            next_sync: now,
            reported_refusals: HashSet::new(),
            stopping: false,
            produced: 0,
            tasks,
            upgrades,
            traces,
            actions: VecDeque::new(),
        }
    }

    /// Who the agent is now.
    #[must_use]
    pub fn me(&self) -> &AgentId {
        &self.config.me
    }

    /// The pool in use (kept while the server is away).
    #[must_use]
    pub fn pool(&self) -> Option<&ReceivedPool> {
        self.pool.as_ref()
    }

    /// The address the server last saw this agent connect from.
    #[must_use]
    pub fn observed_addr(&self) -> Option<SocketAddr> {
        self.observed_addr
    }

    /// Probes started and not finished.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.icmp.in_flight + self.http.in_flight
    }

    /// Probes skipped since the start because their kind stayed at its in-flight limit.
    #[must_use]
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Results produced since the start.
    #[must_use]
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// The next thing the driver must do, if any.
    pub fn poll_action(&mut self) -> Option<AgentAction> {
        self.actions.pop_front()
    }

    /// When [`Self::handle_timeout`] is due next.
    #[must_use]
    pub fn poll_timeout(&self) -> UnixMillis {
        let mut due = self.next_round;
        for kind in [ProbeKind::Icmp, ProbeKind::Http] {
            let limit = self.config.in_flight_limits.of(kind);
            let queue = self.queue(kind);
            // At the limit, the next start waits for a result, not for a time.
            if queue.in_flight < limit
                && let Some(probe) = queue.upcoming.front()
            {
                due = due.min(probe.start_at);
            }
        }
        if self.connected {
            due = due.min(self.next_heartbeat).min(self.next_sync);
        }
        if let Some(upgrade) = self.upgrades.next_timeout() {
            due = due.min(upgrade);
        }
        due
    }

    /// Advances to `now`: starts the round, the probes, the heartbeat and the pool request
    /// that are due.
    pub fn handle_timeout(&mut self, now: UnixMillis) {
        if now >= self.next_round {
            let interval = self.config.probe_interval;
            self.end_round();
            let steps = self.upgrades.round_ended();
            self.upgrade_steps(steps);
            // The whole round, not the rest of it from `now`: the timer wakes a little after
            // the round starts, and a probe whose offset falls in that gap would otherwise be
            // dropped from every round, silently. One that could no longer start in time is
            // skipped and counted by `start_due`.
            let plan = match (&self.pool, self.stopping) {
                (Some(pool), false) => plan_round(
                    &pool.configs,
                    &self.config.me,
                    round_start(now, interval),
                    interval,
                ),
                _ => Vec::new(),
            };
            self.enqueue(plan);
            self.next_round = after(round_start(now, interval), interval);
        }
        self.start_due(now, ProbeKind::Icmp);
        self.start_due(now, ProbeKind::Http);
        if self.connected && now >= self.next_heartbeat {
            self.heartbeat(now);
        }
        if self.connected && now >= self.next_sync {
            self.request_pool(now);
        }
        let steps = self.upgrades.tick(now);
        self.upgrade_steps(steps);
    }

    /// What the link reported at `now`.
    pub fn handle_event(&mut self, now: UnixMillis, event: FromServer) {
        match event {
            FromServer::Welcomed {
                server_version,
                observed_addr,
                ..
            } => {
                self.connected = true;
                self.observed_addr = Some(observed_addr);
                self.notice(AgentNotice::Connected {
                    server_version,
                    observed_addr,
                });
                if self.config.follow_observed_ip && observed_addr.ip() != self.config.me.ip {
                    self.config.me.ip = observed_addr.ip();
                    self.actions
                        .push_back(AgentAction::Reidentify(self.config.me.clone()));
                }
                self.heartbeat(now);
                self.request_pool(now);
                let steps = self.upgrades.welcomed(now);
                self.upgrade_steps(steps);
            }
            FromServer::Message(ToAgent::Pool { revision, configs }) => {
                self.notice(AgentNotice::PoolAccepted {
                    revision,
                    blocks: configs.len(),
                });
                let unsent = files_without_contents(&configs);
                if !unsent.is_empty() {
                    self.notice(AgentNotice::FilesNotSent { paths: unsent });
                }
                if self.pool.is_none() && !self.stopping {
                    // The first pool: no need to wait for the next round. A round due now is
                    // started first, so its plan is not taken for the last round's leftovers.
                    let interval = self.config.probe_interval;
                    if now >= self.next_round {
                        self.end_round();
                        self.next_round = after(round_start(now, interval), interval);
                    }
                    let plan = plan_rest_of_round(&configs, &self.config.me, now, interval);
                    self.enqueue(plan);
                }
                self.pool = Some(ReceivedPool { revision, configs });
            }
            FromServer::Message(ToAgent::Ack { .. }) => {}
            FromServer::Message(ToAgent::Task(task)) => {
                let steps = self.tasks.receive(now, &self.config.me, task);
                self.task_steps(steps);
            }
            FromServer::Message(ToAgent::UpgradeOffer { offer_id, plan }) => {
                let steps = self.upgrades.offered(now, offer_id, plan);
                self.upgrade_steps(steps);
            }
            FromServer::Message(ToAgent::BinaryChunk {
                offer_id,
                offset,
                bytes,
            }) => {
                let steps = self.upgrades.chunk(offer_id, offset, bytes);
                self.upgrade_steps(steps);
            }
            FromServer::Message(ToAgent::Trace(request)) => {
                let steps = self.traces.receive(request, self.stopping);
                self.trace_steps(steps);
            }
            FromServer::InvalidPool {
                revision,
                field,
                reason,
            } => {
                self.notice(AgentNotice::PoolRefused {
                    revision,
                    field: field.clone(),
                    reason: reason.clone(),
                });
                if self.reported_refusals.len() >= MAX_REMEMBERED_REFUSALS {
                    self.reported_refusals.clear();
                }
                if self.reported_refusals.insert(revision) {
                    self.actions
                        .push_back(AgentAction::Send(FromAgent::PoolRefused {
                            revision,
                            field,
                            reason,
                        }));
                }
            }
        }
    }

    /// The run of task `id` ended with `output` at `now`: its answer goes to the server and
    /// the next queued task starts.
    pub fn handle_task_output(
        &mut self,
        now: UnixMillis,
        id: u64,
        output: crate::link::TaskOutput,
    ) {
        let steps = self.tasks.finished(now, id, output);
        self.task_steps(steps);
    }

    /// A trace finished: its report goes to the server.
    pub fn handle_trace_report(&mut self, report: TraceReport) {
        let steps = self.traces.finished(report);
        self.trace_steps(steps);
    }

    /// The agent's traces (on or off, the one in flight, counts).
    #[must_use]
    pub fn traces(&self) -> &AgentTraces {
        &self.traces
    }

    fn trace_steps(&mut self, steps: Vec<TraceStep>) {
        for step in steps {
            self.actions.push_back(match step {
                TraceStep::Send(message) => AgentAction::Send(message),
                TraceStep::Run(request) => AgentAction::RunTrace(request),
            });
        }
    }

    /// The agent's tasks (opt-in, counts).
    #[must_use]
    pub fn tasks(&self) -> &AgentTasks {
        &self.tasks
    }

    /// The agent's upgrades (opt-in, probation).
    #[must_use]
    pub fn upgrades(&self) -> &AgentUpgrades {
        &self.upgrades
    }

    /// The staging file of `offer_id` is open with `received` bytes in it.
    pub fn handle_upgrade_staged(&mut self, now: UnixMillis, offer_id: u64, received: u64) {
        let steps = self.upgrades.staged(now, offer_id, received);
        self.upgrade_steps(steps);
    }

    /// A chunk of `offer_id` was written: the staging file holds `received` bytes.
    pub fn handle_upgrade_written(&mut self, now: UnixMillis, offer_id: u64, received: u64) {
        let steps = self.upgrades.written(now, offer_id, received);
        self.upgrade_steps(steps);
    }

    /// The upgrade of `offer_id` failed (staging, a check, the preflight) for `reason`.
    pub fn handle_upgrade_failed(&mut self, offer_id: u64, reason: String) {
        let steps = self.upgrades.failed(offer_id, reason);
        self.upgrade_steps(steps);
    }

    /// The binary of `offer_id` passed its checks: the hand-over follows.
    pub fn handle_upgrade_installed(&mut self, offer_id: u64) {
        let steps = self.upgrades.installed(offer_id);
        self.upgrade_steps(steps);
    }

    /// The link has had `acked` results acknowledged (for a trial's probation).
    pub fn handle_acknowledged(&mut self, acked: u64) {
        self.upgrades.acknowledged(acked);
    }

    fn upgrade_steps(&mut self, steps: Vec<UpgradeStep>) {
        for step in steps {
            self.actions.push_back(match step {
                UpgradeStep::Send(message) => AgentAction::Send(message),
                other => AgentAction::Upgrade(other),
            });
        }
    }

    fn task_steps(&mut self, steps: Vec<TaskStep>) {
        for step in steps {
            self.actions.push_back(match step {
                TaskStep::Send(message) => AgentAction::Send(message),
                TaskStep::Run(run) => AgentAction::RunTask(run),
            });
        }
    }

    /// The link lost its connection (or an attempt failed); it reconnects by itself.
    pub fn handle_disconnect(&mut self) {
        self.connected = false;
    }

    /// A probe finished: its result goes to the link.
    pub fn handle_result(&mut self, result: ProbeResult) {
        let queue = self.queue_mut(result.outcome.kind());
        queue.in_flight = queue.in_flight.saturating_sub(1);
        self.produced += 1;
        self.actions.push_back(AgentAction::Deliver(vec![result]));
    }

    /// A probe of `kind` ended without a result (its task panicked or was cancelled): its
    /// place is free again.
    pub fn handle_lost(&mut self, kind: ProbeKind) {
        let queue = self.queue_mut(kind);
        queue.in_flight = queue.in_flight.saturating_sub(1);
    }

    /// Starts no more probes (a graceful stop); those in flight finish.
    pub fn stop(&mut self) {
        self.stopping = true;
        self.icmp.upcoming.clear();
        self.http.upcoming.clear();
    }

    fn queue(&self, kind: ProbeKind) -> &KindQueue {
        match kind {
            ProbeKind::Icmp => &self.icmp,
            ProbeKind::Http => &self.http,
        }
    }

    fn queue_mut(&mut self, kind: ProbeKind) -> &mut KindQueue {
        match kind {
            ProbeKind::Icmp => &mut self.icmp,
            ProbeKind::Http => &mut self.http,
        }
    }

    /// Adds a round's plan (in start order) to the queues of its kinds.
    fn enqueue(&mut self, plan: Vec<PlannedProbe>) {
        for probe in plan {
            self.queue_mut(probe.how.kind()).upcoming.push_back(probe);
        }
    }

    /// Starts the due probes of `kind` while it is under its limit; skips those too late to
    /// start.
    fn start_due(&mut self, now: UnixMillis, kind: ProbeKind) {
        let limit = self.config.in_flight_limits.of(kind);
        let spread = start_spread(self.config.probe_interval);
        let queue = match kind {
            ProbeKind::Icmp => &mut self.icmp,
            ProbeKind::Http => &mut self.http,
        };
        while queue.in_flight < limit && queue.upcoming.front().is_some_and(|p| p.start_at <= now) {
            let Some(probe) = queue.upcoming.pop_front() else {
                break;
            };
            if now > after(probe.round_start, spread) {
                queue.skipped_this_round += 1;
                self.skipped += 1;
                continue;
            }
            queue.in_flight += 1;
            self.actions.push_back(AgentAction::Probe(probe));
        }
    }

    /// Closes the round under way: its probes that never started are skipped, and each kind
    /// with skipped probes is reported once.
    fn end_round(&mut self) {
        for kind in [ProbeKind::Icmp, ProbeKind::Http] {
            let limit = self.config.in_flight_limits.of(kind);
            let queue = self.queue_mut(kind);
            let never_due = queue.upcoming.len();
            let skipped = queue.skipped_this_round + never_due;
            queue.upcoming.clear();
            queue.skipped_this_round = 0;
            self.skipped += never_due as u64;
            if skipped > 0 {
                self.notice(AgentNotice::ProbesSkipped {
                    kind,
                    skipped,
                    limit,
                });
            }
        }
    }

    fn heartbeat(&mut self, now: UnixMillis) {
        self.actions
            .push_back(AgentAction::Send(FromAgent::Heartbeat { sent_at: now }));
        self.next_heartbeat = after(now, self.config.heartbeat_interval);
    }

    fn request_pool(&mut self, now: UnixMillis) {
        let known_revision = self.pool.as_ref().map_or(0, |pool| pool.revision);
        self.actions
            .push_back(AgentAction::Send(FromAgent::PoolRequest { known_revision }));
        self.next_sync = after(now, self.config.sync_interval);
    }

    fn notice(&mut self, notice: AgentNotice) {
        self.actions.push_back(AgentAction::Notice(notice));
    }
}

/// The paths of the files a pool names without their contents, once each, at most 16.
fn files_without_contents(configs: &[crate::model::ProbeConfig]) -> Vec<String> {
    let mut paths: Vec<String> = Vec::new();
    for config in configs {
        if let crate::model::ProbeModule::Http(http) = &config.module {
            for file in http.client.files() {
                if file.contents().is_none()
                    && paths.len() < 16
                    && !paths.iter().any(|p| p == file.path())
                {
                    paths.push(file.path().to_owned());
                }
            }
        }
    }
    paths
}

/// `at` plus `duration`, at least a millisecond later (a zero interval must not spin).
fn after(at: UnixMillis, duration: Duration) -> UnixMillis {
    UnixMillis(
        at.as_millis()
            .saturating_add(duration_millis(duration).max(1)),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{IcmpModule, ProbeConfig, ProbeKind, ProbeModule, Region, Target};

    const T0: u64 = 1_800_000_000_000;
    const SECOND: u64 = 1_000;

    fn me() -> AgentId {
        AgentId::new(Region::new("eu").unwrap(), "198.18.0.11".parse().unwrap())
    }

    fn config() -> AgentConfig {
        AgentConfig {
            me: me(),
            probe_interval: Duration::from_secs(15),
            sync_interval: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(15),
            follow_observed_ip: false,
            in_flight_limits: InFlightLimits::default(),
            tasks: None,
            upgrade: Default::default(),
            traces: Some(Default::default()),
        }
    }

    fn pool(revision: u64, targets: usize) -> FromServer {
        FromServer::Message(ToAgent::Pool {
            revision,
            configs: Arc::new(vec![ProbeConfig {
                region: Region::new("us").unwrap(),
                targets: (1..=targets)
                    .map(|i| Target::parse(ProbeKind::Icmp, &format!("198.18.2.{i}")).unwrap())
                    .collect(),
                module: ProbeModule::Icmp(IcmpModule::default()),
            }]),
        })
    }

    fn welcome(ip: &str) -> FromServer {
        FromServer::Welcomed {
            server_version: "0.1.0".into(),
            capabilities: crate::link::Capabilities::v1(),
            observed_addr: SocketAddr::new(ip.parse().unwrap(), 40_000),
        }
    }

    fn drain(state: &mut AgentState) -> Vec<AgentAction> {
        std::iter::from_fn(|| state.poll_action()).collect()
    }

    fn sends(actions: &[AgentAction]) -> Vec<&FromAgent> {
        actions
            .iter()
            .filter_map(|a| match a {
                AgentAction::Send(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn probes(actions: &[AgentAction]) -> Vec<&PlannedProbe> {
        actions
            .iter()
            .filter_map(|a| match a {
                AgentAction::Probe(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// Runs the state's timers from `from` to `to`, as a driver does, collecting actions.
    fn run_until(state: &mut AgentState, to: u64) -> Vec<AgentAction> {
        let mut actions = drain(state);
        while state.poll_timeout().as_millis() <= to {
            let due = state.poll_timeout();
            state.handle_timeout(due);
            actions.extend(drain(state));
        }
        actions
    }

    #[test]
    fn a_connection_brings_a_heartbeat_and_a_pool_request_and_then_at_their_intervals() {
        let mut state = AgentState::new(config(), UnixMillis(T0));
        state.handle_event(UnixMillis(T0 + 5), welcome("198.18.0.11"));
        let actions = drain(&mut state);
        assert_eq!(
            sends(&actions),
            [
                &FromAgent::Heartbeat {
                    sent_at: UnixMillis(T0 + 5)
                },
                &FromAgent::PoolRequest { known_revision: 0 }
            ]
        );
        // Two minutes on: eight more heartbeats, two more pool requests, no probe (no pool).
        let later = run_until(&mut state, T0 + 5 + 120 * SECOND);
        let heartbeats = sends(&later)
            .iter()
            .filter(|m| matches!(m, FromAgent::Heartbeat { .. }))
            .count();
        let requests = sends(&later)
            .iter()
            .filter(|m| matches!(m, FromAgent::PoolRequest { .. }))
            .count();
        assert_eq!((heartbeats, requests), (8, 2));
        assert!(probes(&later).is_empty());
        // Disconnected: nothing is sent, until the next welcome.
        state.handle_disconnect();
        let quiet = run_until(&mut state, T0 + 300 * SECOND);
        assert!(sends(&quiet).is_empty(), "{quiet:?}");
    }

    #[test]
    fn a_pool_is_probed_at_once_then_every_round_and_kept_while_disconnected() {
        let mut state = AgentState::new(config(), UnixMillis(T0 + 3 * SECOND));
        state.handle_event(UnixMillis(T0 + 3 * SECOND), welcome("198.18.0.11"));
        state.handle_event(UnixMillis(T0 + 3 * SECOND + 10), pool(7, 20));
        drain(&mut state);
        // The first pool is probed at once, for what is left of the round under way.
        let first = run_until(&mut state, T0 + 15 * SECOND - 1);
        assert!(!probes(&first).is_empty() && probes(&first).len() < 20);
        assert!(
            probes(&first)
                .iter()
                .all(|p| p.round_start == UnixMillis(T0)
                    && p.start_at >= UnixMillis(T0 + 3 * SECOND + 10))
        );
        let round = run_until(&mut state, T0 + 30 * SECOND - 1);
        let started = probes(&round);
        assert_eq!(started.len(), 20);
        assert!(
            started
                .iter()
                .all(|p| p.round_start == UnixMillis(T0 + 15 * SECOND))
        );
        assert_eq!(state.in_flight(), 20 + probes(&first).len());
        // Each probe was asked for at its own planned start, in order.
        assert!(started.windows(2).all(|w| w[0].start_at <= w[1].start_at));
        // The server goes away: the pool stays in use.
        state.handle_disconnect();
        let away = run_until(&mut state, T0 + 45 * SECOND - 1);
        assert_eq!(probes(&away).len(), 20);
        assert_eq!(state.pool().map(|p| p.revision), Some(7));
        // Results go to the link as they come.
        let result = ProbeResult {
            source: me(),
            target_region: Region::new("us").unwrap(),
            target: "198.18.2.1".into(),
            round_start: UnixMillis(T0 + 15 * SECOND),
            outcome: crate::model::ProbeOutcome::Icmp(crate::model::IcmpResult::measured(
                Duration::ZERO,
                1,
                &[Duration::from_millis(1)],
            )),
        };
        let in_flight = state.in_flight();
        state.handle_result(result.clone());
        assert_eq!(drain(&mut state), [AgentAction::Deliver(vec![result])]);
        assert_eq!((state.in_flight(), state.produced()), (in_flight - 1, 1));
    }

    #[test]
    fn a_stopping_agent_starts_no_probe() {
        let mut state = AgentState::new(config(), UnixMillis(T0));
        state.handle_event(UnixMillis(T0), pool(1, 50));
        run_until(&mut state, T0 + 15 * SECOND);
        state.stop();
        let after_stop = run_until(&mut state, T0 + 60 * SECOND);
        assert!(probes(&after_stop).is_empty());
    }

    #[test]
    fn a_refused_revision_is_reported_once() {
        let mut state = AgentState::new(config(), UnixMillis(T0));
        let invalid = |revision| FromServer::InvalidPool {
            revision,
            field: "configs[0].icmp.interval".into(),
            reason: "the time between echoes must be more than 0".into(),
        };
        state.handle_event(UnixMillis(T0), invalid(8));
        assert_eq!(sends(&drain(&mut state)).len(), 1);
        // Pushed again (after a reconnect to a server that closed on the report): not again.
        state.handle_event(UnixMillis(T0 + 1), invalid(8));
        let again = drain(&mut state);
        assert!(sends(&again).is_empty());
        assert!(matches!(
            again[..],
            [AgentAction::Notice(AgentNotice::PoolRefused { .. })]
        ));
        state.handle_event(UnixMillis(T0 + 2), invalid(9));
        assert_eq!(
            sends(&drain(&mut state)),
            [&FromAgent::PoolRefused {
                revision: 9,
                field: "configs[0].icmp.interval".into(),
                reason: "the time between echoes must be more than 0".into(),
            }]
        );
    }

    #[test]
    fn in_the_public_ip_mode_the_agent_becomes_who_the_server_sees() {
        let mut state = AgentState::new(
            AgentConfig {
                follow_observed_ip: true,
                in_flight_limits: InFlightLimits::default(),
                tasks: None,
                upgrade: Default::default(),
                traces: Some(Default::default()),
                ..config()
            },
            UnixMillis(T0),
        );
        state.handle_event(UnixMillis(T0), welcome("203.0.113.9"));
        let actions = drain(&mut state);
        let reidentified = AgentId::new(Region::new("eu").unwrap(), "203.0.113.9".parse().unwrap());
        assert!(actions.contains(&AgentAction::Reidentify(reidentified.clone())));
        assert_eq!(state.me(), &reidentified);
        // The same address again: nothing to do.
        state.handle_event(UnixMillis(T0 + 1), welcome("203.0.113.9"));
        assert!(
            !drain(&mut state)
                .iter()
                .any(|a| matches!(a, AgentAction::Reidentify(_)))
        );
        // Without the mode, the agent keeps its own address.
        let mut fixed = AgentState::new(config(), UnixMillis(T0));
        fixed.handle_event(UnixMillis(T0), welcome("203.0.113.9"));
        assert!(
            !drain(&mut fixed)
                .iter()
                .any(|a| matches!(a, AgentAction::Reidentify(_)))
        );
        assert_eq!(fixed.me(), &me());
    }

    // === probes in flight ===

    fn limited(icmp: usize, http: usize) -> AgentConfig {
        AgentConfig {
            in_flight_limits: InFlightLimits { icmp, http },
            tasks: None,
            upgrade: Default::default(),
            traces: Some(Default::default()),
            ..config()
        }
    }

    /// A pool with `icmp` ICMP targets and `http` HTTP targets in region `us`.
    fn mixed_pool(revision: u64, icmp: usize, http: usize) -> FromServer {
        let block = |kind: ProbeKind, n: usize, module: ProbeModule| ProbeConfig {
            region: Region::new("us").unwrap(),
            targets: (0..n)
                .map(|i| {
                    let raw = match kind {
                        ProbeKind::Icmp => format!("198.18.{}.{}", 2 + i / 250, 1 + i % 250),
                        ProbeKind::Http => format!("http://198.18.9.1:8080/{i}"),
                    };
                    Target::parse(kind, &raw).unwrap()
                })
                .collect(),
            module,
        };
        FromServer::Message(ToAgent::Pool {
            revision,
            configs: Arc::new(vec![
                block(
                    ProbeKind::Icmp,
                    icmp,
                    ProbeModule::Icmp(IcmpModule::default()),
                ),
                block(
                    ProbeKind::Http,
                    http,
                    ProbeModule::Http(crate::model::HttpModule::default().into()),
                ),
            ]),
        })
    }

    /// The result of `probe`, as its prober would return it.
    fn result_of(probe: &PlannedProbe) -> ProbeResult {
        let outcome = match probe.how.kind() {
            ProbeKind::Icmp => crate::model::ProbeOutcome::Icmp(
                crate::model::IcmpResult::measured(Duration::ZERO, 1, &[Duration::from_millis(1)]),
            ),
            ProbeKind::Http => crate::model::ProbeOutcome::Http(crate::model::HttpResult {
                phases: crate::model::HttpPhases::default(),
                status_code: Some(200),
                tls: None,
                failure: None,
            }),
        };
        ProbeResult {
            source: me(),
            target_region: probe.target_region.clone(),
            target: probe.target.raw().to_owned(),
            round_start: probe.round_start,
            outcome,
        }
    }

    fn skipped_notices(actions: &[AgentAction]) -> Vec<(ProbeKind, usize, usize)> {
        actions
            .iter()
            .filter_map(|a| match a {
                AgentAction::Notice(AgentNotice::ProbesSkipped {
                    kind,
                    skipped,
                    limit,
                }) => Some((*kind, *skipped, *limit)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn probes_beyond_the_limit_wait_for_a_result_then_start_or_are_skipped() {
        let mut state = AgentState::new(limited(16_384, 3), UnixMillis(T0));
        state.handle_event(UnixMillis(T0), mixed_pool(1, 10, 20));
        let round = run_until(&mut state, T0 + 15 * SECOND - 1);
        let started = probes(&round);
        let http: Vec<_> = started
            .iter()
            .filter(|p| p.how.kind() == ProbeKind::Http)
            .collect();
        // Three HTTP probes run; the ICMP ones are not held up behind them.
        assert_eq!(http.len(), 3);
        assert_eq!(started.len() - http.len(), 10);
        assert_eq!(state.in_flight(), 13);
        // At the limit the next deadline is the next round, not a start already past (which
        // would make the driver spin).
        assert_eq!(state.poll_timeout(), UnixMillis(T0 + 15 * SECOND));
        // A result early in the round lets the next HTTP probe start at once.
        let early = UnixMillis(T0 + 10 * SECOND);
        state.handle_result(result_of(http[0]));
        assert!(state.poll_timeout() <= early);
        state.handle_timeout(early);
        let after_result = drain(&mut state);
        assert_eq!(probes(&after_result).len(), 1);
        assert_eq!(probes(&after_result)[0].how.kind(), ProbeKind::Http);
        // A result after the spread (10.5 s of 15 s) starts nothing: too late for its window.
        state.handle_result(result_of(http[1]));
        state.handle_timeout(UnixMillis(T0 + 11 * SECOND));
        assert!(probes(&drain(&mut state)).is_empty());
        // The round ends: 16 HTTP probes never started, reported once.
        let next = run_until(&mut state, T0 + 15 * SECOND);
        assert_eq!(skipped_notices(&next), [(ProbeKind::Http, 16, 3)]);
        assert_eq!(state.skipped(), 16);
        // Two HTTP probes still run (one from the start, one started after a result): the
        // new round has one slot.
        let second = run_until(&mut state, T0 + 30 * SECOND - 1);
        assert_eq!(
            probes(&second)
                .iter()
                .filter(|p| p.how.kind() == ProbeKind::Http)
                .count(),
            1
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 64,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Whatever the limits, the pool and the order in which probes finish: no kind ever
        /// runs more than its limit, every planned probe is started or counted as skipped,
        /// and nothing is left due after a timeout (no busy loop in the driver).
        #[test]
        fn the_limits_hold_and_every_probe_is_started_or_skipped(
            icmp_limit in 1_usize..8,
            http_limit in 1_usize..8,
            icmp_targets in 0_usize..40,
            http_targets in 0_usize..40,
            finish in proptest::collection::vec((0_usize..64, 0_u64..3_000), 1..200),
        ) {
            let mut state = AgentState::new(limited(icmp_limit, http_limit), UnixMillis(T0));
            state.handle_event(UnixMillis(T0), mixed_pool(1, icmp_targets, http_targets));
            let mut running: Vec<PlannedProbe> = Vec::new();
            let mut started = 0_usize;
            let mut notices_skipped = 0_usize;
            let mut now = T0;
            let mut collect = |state: &mut AgentState, running: &mut Vec<PlannedProbe>| {
                for action in drain(state) {
                    match action {
                        AgentAction::Probe(p) => {
                            started += 1;
                            running.push(p);
                        }
                        AgentAction::Notice(AgentNotice::ProbesSkipped { skipped, .. }) => {
                            notices_skipped += skipped;
                        }
                        _ => {}
                    }
                }
            };
            for (pick, wait_ms) in finish {
                // Time moves on (within the first round and into the second).
                now = (now + wait_ms).min(T0 + 15 * SECOND - 1);
                // Bounded, so that a deadline left in the past fails instead of hanging.
                for _ in 0..10_000 {
                    if state.poll_timeout().as_millis() > now {
                        break;
                    }
                    let due = state.poll_timeout();
                    state.handle_timeout(due);
                    collect(&mut state, &mut running);
                }
                state.handle_timeout(UnixMillis(now));
                collect(&mut state, &mut running);
                proptest::prop_assert!(state.poll_timeout().as_millis() > now);
                for kind in [ProbeKind::Icmp, ProbeKind::Http] {
                    let limit = if kind == ProbeKind::Icmp { icmp_limit } else { http_limit };
                    let n = running.iter().filter(|p| p.how.kind() == kind).count();
                    proptest::prop_assert!(n <= limit, "{kind}: {n} running, limit {limit}");
                }
                if !running.is_empty() {
                    let done = running.swap_remove(pick % running.len());
                    state.handle_result(result_of(&done));
                }
            }
            // End the first round.
            state.handle_timeout(UnixMillis(T0 + 15 * SECOND));
            collect(&mut state, &mut running);
            let started_first: usize = started
                - running
                    .iter()
                    .filter(|p| p.round_start != UnixMillis(T0))
                    .count();
            proptest::prop_assert_eq!(started_first + notices_skipped, icmp_targets + http_targets);
            proptest::prop_assert_eq!(state.skipped(), notices_skipped as u64);
        }
    }

    #[test]
    fn a_pool_naming_files_without_their_contents_is_reported_once_per_path() {
        use crate::model::http_module::{FileRef, Secret, SecretSource};
        let mut http = crate::model::HttpModule::default();
        http.client.bearer_token = Some(SecretSource::File(FileRef::named("/var/run/token")));
        http.client.tls.ca_file =
            Some(FileRef::with_contents("/ca.pem", Secret::new("PEM".into())));
        let block = |http: crate::model::HttpModule| ProbeConfig {
            region: Region::new("us").unwrap(),
            targets: vec![Target::parse(ProbeKind::Http, "http://198.18.9.1/").unwrap()],
            module: ProbeModule::Http(http.into()),
        };
        let mut state = AgentState::new(config(), UnixMillis(T0));
        state.handle_event(
            UnixMillis(T0),
            FromServer::Message(ToAgent::Pool {
                revision: 3,
                configs: Arc::new(vec![block(http.clone()), block(http)]),
            }),
        );
        let notices: Vec<_> = drain(&mut state)
            .into_iter()
            .filter_map(|a| match a {
                AgentAction::Notice(AgentNotice::FilesNotSent { paths }) => Some(paths),
                _ => None,
            })
            .collect();
        assert_eq!(notices, [vec!["/var/run/token".to_owned()]]);
    }

    #[test]
    fn a_first_pool_arriving_at_a_round_boundary_is_planned_for_the_new_round_not_skipped() {
        let mut state = AgentState::new(config(), UnixMillis(T0 + SECOND));
        // The driver handles the pool before the timer that is due at the same instant.
        state.handle_event(UnixMillis(T0 + 15 * SECOND), pool(1, 5));
        let actions = run_until(&mut state, T0 + 30 * SECOND - 1);
        assert!(skipped_notices(&actions).is_empty(), "{actions:?}");
        assert_eq!(state.skipped(), 0);
        let started = probes(&actions);
        assert_eq!(started.len(), 5);
        assert!(
            started
                .iter()
                .all(|p| p.round_start == UnixMillis(T0 + 15 * SECOND))
        );
    }

    #[test]
    fn a_trace_request_becomes_a_run_and_its_report_a_message_or_is_refused_when_off() {
        let request = TraceRequest {
            id: 9,
            target: "198.18.2.1".parse().unwrap(),
            protocol: crate::link::TraceProtocol::Icmp,
            max_hops: 30,
            rounds: 20,
        };
        let mut state = AgentState::new(config(), UnixMillis(T0));
        state.handle_event(UnixMillis(T0), welcome("198.18.0.11"));
        drain(&mut state);
        state.handle_event(
            UnixMillis(T0),
            FromServer::Message(ToAgent::Trace(request.clone())),
        );
        assert_eq!(
            drain(&mut state),
            vec![AgentAction::RunTrace(request.clone())]
        );
        let report = TraceReport {
            id: 9,
            target: request.target,
            hops: Vec::new(),
            error: None,
        };
        state.handle_trace_report(report.clone());
        assert_eq!(
            drain(&mut state),
            vec![AgentAction::Send(FromAgent::TraceResult(report))]
        );

        let mut off = AgentState::new(
            AgentConfig {
                traces: None,
                ..config()
            },
            UnixMillis(T0),
        );
        off.handle_event(UnixMillis(T0), FromServer::Message(ToAgent::Trace(request)));
        let actions = drain(&mut off);
        assert!(
            matches!(
                actions.as_slice(),
                [AgentAction::Send(FromAgent::TraceResult(TraceReport { id: 9, error: Some(error), .. }))]
                    if error.starts_with("tracing is off")
            ),
            "{actions:?}"
        );
    }

    /// A probe whose start offset is 0 (or within the timer's wake-up lag) is started in
    /// every round even when the round's timer fires a few milliseconds late. Found by the
    /// trace lab: agent east/198.18.23.2 never probed 198.18.40.2 (offset 0 in 2 s rounds)
    /// when its timer woke 1 ms after the round began.
    #[test]
    fn a_probe_at_the_very_start_of_the_round_runs_when_the_timer_wakes_late() {
        let me = AgentId::new(Region::new("east").unwrap(), "198.18.23.2".parse().unwrap());
        let interval = Duration::from_secs(2);
        assert_eq!(
            crate::agent::start_offset(&me, "198.18.40.2", interval),
            Duration::ZERO
        );
        let config = AgentConfig {
            me,
            probe_interval: interval,
            heartbeat_interval: interval,
            ..config()
        };
        let round0 = T0 - T0 % 2_000;
        let mut state = AgentState::new(config, UnixMillis(round0 + 500));
        state.handle_event(UnixMillis(round0 + 500), welcome("198.18.23.2"));
        let pool = FromServer::Message(ToAgent::Pool {
            revision: 1,
            configs: Arc::new(vec![ProbeConfig {
                region: Region::new("north").unwrap(),
                targets: vec![Target::parse(ProbeKind::Icmp, "198.18.40.2").unwrap()],
                module: ProbeModule::Icmp(IcmpModule::default()),
            }]),
        });
        state.handle_event(UnixMillis(round0 + 500), pool);
        drain(&mut state);
        for round in 1..=5u64 {
            // Every timer of the round fires 3 ms late.
            let start = round0 + round * 2_000;
            state.handle_timeout(UnixMillis(start + 3));
            let probes: Vec<_> = drain(&mut state)
                .into_iter()
                .filter_map(|action| match action {
                    AgentAction::Probe(probe) => Some(probe),
                    _ => None,
                })
                .collect();
            assert_eq!(probes.len(), 1, "round {round}: {probes:?}");
            assert_eq!(probes[0].round_start, UnixMillis(start));
            state.handle_lost(ProbeKind::Icmp);
        }
        assert_eq!(state.skipped(), 0);
    }
}
