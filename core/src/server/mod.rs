//! The server's session logic, sans-IO: what to do with each link event and each timer tick.
//! It owns the [`Aggregator`] and the [`TargetPool`], remembers which pool revision every
//! connected agent holds, and answers with the messages to send. The server driver only moves
//! events in and messages out; everything it decides is here, tested without sockets.
//!
//! An agent that refuses a pool (it keeps probing its previous one) says so; the refusal is
//! kept while that agent is connected and has not been sent another revision, counted in
//! `prober_server_pool_refused_total{region,reason}`, handed to the driver to log, and shown
//! by [`ServerState::pool_refusals`] (for `/-/targets`). Nothing fails silently.
//!
//! [`handoff`]: what a stopping server leaves in the store for the next one, and how the
//! next one files it.
//!
//! Path tracing (issue 17) is off unless [`ServerState::with_traces`] turns it on: each
//! settled window's ICMP pairs feed the [`TraceDesk`] (a window where the robust aggregator
//! blamed a host counts as bad), its requests go to v2 agents that take traces, their reports
//! and disconnects come back to it, finished traces land in the [`TraceStore`]; the `traces`
//! module's documentation has the details.

pub mod handoff;
mod traces;

use std::collections::{BTreeMap, HashMap};

use crate::aggregate::{Aggregator, Counters, Intake, SnapshotPart};
use crate::link::{FromAgent, ToAgent, TraceRequest, feature};
use crate::mesh::{self, HistoryLimits, MeshHistory, MeshView, PairView};
use crate::model::{
    AgentId, AgentVersion, ProbeConfig, ProbeKind, ProbeResult, Region, UnixMillis,
};
use crate::pool::{Discovery, PoolRevision, TargetPool};
use crate::ports::{ConnectionId, LinkEvent};
use crate::snapshot::{MetricFamily, MetricKind, Series, SeriesValue, Snapshot};
use crate::task::book::{
    AgentLink, Answer, BookChanges, BookTask, KnownAgent, Submission, SubmitError, Submitted,
    TaskBook,
};
use crate::task::{AuditEntry, TaskRecord};
use crate::trace::store::TraceStore;
use crate::trace::trigger::{OperatorTrace, PickError, TraceDesk, TraceShape};
use crate::trace::{Refusal, RegionPair};
use crate::upgrade::MemberState;
use crate::upgrade::rollout::{
    Candidate, Control, ControlError, DeskChanges, RolloutRequest, StartError, UpgradeDesk,
};

/// `prober_server_pool_refused_total` (ours): pools agents refused, by the agent's region and
/// the kind of setting at fault.
pub const POOL_REFUSED: &str = "prober_server_pool_refused_total";

/// An agent's refusal of the pool it was sent.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct PoolRefusal {
    /// Who refused.
    pub agent: AgentId,
    /// The refused revision.
    pub revision: u64,
    /// The block at fault (region and kind), when the refusal names one of the pool this
    /// server sends that agent now.
    pub block: Option<(Region, ProbeKind)>,
    /// Where in the pool, as the agent said (`configs[2].http.method`).
    pub field: String,
    /// What is wrong, as the agent said.
    pub reason: String,
    /// The bounded `reason` label: `http_setting`, `icmp_setting`, `target`, `region`,
    /// `pool_size` or `other`.
    pub label: &'static str,
    /// When it arrived.
    pub at: UnixMillis,
}

impl std::fmt::Display for PoolRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

/// A pool too large for the link: some agent would never receive it.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error(
    "the target pool is a {len}-byte message and the link carries at most {max_len} bytes per \
     message, so agents could not receive it (an agent of a region without blocks receives \
     every block): split the targets over fewer blocks or shorten their settings (bodies, \
     regexes)"
)]
pub struct PoolTooLarge {
    /// The encoded pool, in bytes.
    pub len: usize,
    /// The link's limit.
    pub max_len: usize,
}

/// Checks that the largest pool `pool` hands any agent (every block: what an agent of a region
/// without blocks, or with `-server.probe.self`, receives) fits one message of the link.
///
/// # Errors
/// [`PoolTooLarge`] with the size.
pub fn check_pool_fits(pool: &TargetPool, live_agents: &[AgentId]) -> Result<(), PoolTooLarge> {
    let every_block: Vec<ProbeConfig> = pool.regions(live_agents).into_values().flatten().collect();
    let max_len = crate::wire::DEFAULT_MAX_FRAME_LEN;
    // v2's pool is v1's plus the contents of its TLS files, so it is the larger of the two.
    let encoded = crate::wire::to_agent_v2(&pool_message(PoolRevision(u64::MAX), every_block))
        .and_then(|message| crate::wire::encode_frame(&message, max_len));
    match encoded {
        Ok(_) => Ok(()),
        Err(crate::wire::WireError::FrameTooLarge { len, .. }) => Err(PoolTooLarge {
            len: usize::try_from(len).unwrap_or(usize::MAX),
            max_len,
        }),
        // Nothing else can fail in encoding a pool; treat it as too large to send.
        Err(_) => Err(PoolTooLarge {
            len: usize::MAX,
            max_len,
        }),
    }
}

/// The block index and the bounded label of a refusal's field path (`configs[2].http.x`).
fn refusal_place(field: &str) -> (Option<usize>, &'static str) {
    let Some(rest) = field.strip_prefix("configs") else {
        return (None, "other");
    };
    let Some(inner) = rest.strip_prefix('[') else {
        return (None, "pool_size");
    };
    let Some((index, tail)) = inner.split_once(']') else {
        return (None, "other");
    };
    let label = match tail.trim_start_matches('.').split(['.', '[']).next() {
        Some("http") => "http_setting",
        Some("icmp") => "icmp_setting",
        Some("targets") => "target",
        Some("region") => "region",
        _ => "other",
    };
    (index.parse().ok(), label)
}

/// `prober_server_task_submissions_total` (ours): task submissions by outcome.
pub const TASK_SUBMISSIONS: &str = "prober_server_task_submissions_total";
/// `prober_server_task_runs_total` (ours): agent runs of tasks that ended, by final state.
pub const TASK_RUNS: &str = "prober_server_task_runs_total";
/// `prober_server_upgrade_agents` (ours): the current rollout's agents by state.
pub const UPGRADE_AGENTS: &str = "prober_server_upgrade_agents";
/// `prober_server_agent_versions` (ours): connected agent processes by version.
pub const AGENT_VERSIONS: &str = "prober_server_agent_versions";
/// `prober_server_upgrade_sent_bytes_total` (ours): bytes of releases sent to agents.
pub const UPGRADE_SENT_BYTES: &str = "prober_server_upgrade_sent_bytes_total";
/// `prober_server_upgrade_chunks_waiting` (ours): chunks held back by the bandwidth cap.
pub const UPGRADE_CHUNKS_WAITING: &str = "prober_server_upgrade_chunks_waiting";

/// One connected agent.
#[derive(Clone, Debug)]
struct Session {
    agent: AgentId,
    version: AgentVersion,
    /// What its handshake said, for tasks.
    link: AgentLink,
    /// The pool revision last sent to it.
    sent: Option<PoolRevision>,
    /// Whether its hello named the trace feature.
    takes_traces: bool,
}

/// What the driver must do after an input. (Result batches are acknowledged by the link
/// adapter when it hands them out, so no `Ack` appears here.)
#[derive(Debug, Default, PartialEq)]
pub struct Actions {
    /// Messages to send, in order.
    pub send: Vec<(ConnectionId, ToAgent)>,
    /// Connections to close, with the reason (a protocol violation).
    pub close: Vec<(ConnectionId, String)>,
    /// What the last result batches did (for the log and the dropped-points counter).
    pub intake: Intake,
    /// Pools agents refused just now (for the log).
    pub refused: Vec<PoolRefusal>,
    /// Task runs that ended, to file in the task archive.
    pub task_records: Vec<TaskRecord>,
    /// Task audit lines to write.
    pub task_audit: Vec<AuditEntry>,
    /// The task book changed: write these bytes to the store (`Record::Tasks`) before
    /// sending anything of this action, so a restarted server knows what was sent.
    pub persist_tasks: Option<Vec<u8>>,
    /// Ranges of the release binary to send as `BinaryChunk`s: (connection, offer, offset,
    /// length).
    pub chunks: Vec<(ConnectionId, u64, u64, u64)>,
    /// The rollout changed: write these bytes to the store (`Record::Upgrade`) before sending.
    pub persist_upgrade: Option<Vec<u8>>,
    /// Rollout events for the log (a batch started, halted, completed).
    pub upgrade_events: Vec<String>,
    /// Path tracing events for the log (a pair degraded or recovered, a trace sent, held
    /// back or given up).
    pub trace_events: Vec<String>,
}

/// An operator's trace request (`POST /-/trace`), see
/// [`ServerState::request_operator_trace`].
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct OperatorAsk {
    /// Who runs it (else a free agent of `source_region`).
    pub agent: Option<AgentId>,
    /// The source region (ignored when `agent` is named: its region is).
    pub source_region: Option<Region>,
    /// The target region: the pair it is filed under, and where a target is picked.
    pub target_region: Option<Region>,
    /// Where to trace to (else a host of `target_region`).
    pub target: Option<std::net::IpAddr>,
    /// How (the desk's default shape when `None`).
    pub shape: Option<TraceShape>,
}

/// Why an operator's trace was not sent.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
pub enum OperatorTraceError {
    /// Path tracing is off on this server.
    #[error("path tracing is off on this server (-server.trace=false)")]
    Off,
    /// Nobody could run it, or nowhere to trace to.
    #[error(transparent)]
    Pick(#[from] PickError),
}

/// The server's state between events.
#[derive(Debug)]
pub struct ServerState {
    aggregator: Aggregator,
    pool: TargetPool,
    sessions: HashMap<ConnectionId, Session>,
    /// The standing refusal of each connected agent that refused the last pool sent to it.
    refusals: HashMap<ConnectionId, PoolRefusal>,
    /// Refusals since start, by (agent region, label).
    refused_total: BTreeMap<(Region, &'static str), u64>,
    /// Reloads that replaced the probe file's blocks (part of [`TargetsKey`]).
    file_generation: u64,
    /// Remote tasks (`-server.task`); `None` when they are off.
    tasks: Option<TaskBook>,
    /// Self-upgrades (`/-/upgrade`).
    upgrades: UpgradeDesk,
    /// The mesh view's per-pair history, recorded at every aggregation tick.
    mesh_history: MeshHistory,
    /// A line the mesh page shows (the demo's "simulated WAN" label).
    mesh_notice: Option<String>,
    /// Path tracing; `None` when it is off (the default).
    traces: Option<traces::Traces>,
}

/// What [`ServerState::targets`] and [`ServerState::pool_refusals`] are a function of, taken
/// without building the pool: two equal keys promise equal answers, so `/-/targets` can keep
/// its rendering while the key stays. (The pool is the file's blocks, replaced only by a
/// reload, plus the live agents under dynamic discovery.)
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TargetsKey {
    file_generation: u64,
    /// The live agents when discovery makes them targets; empty under static discovery.
    live_agents: Vec<AgentId>,
    refusals: Vec<PoolRefusal>,
}

impl ServerState {
    /// A server aggregating with `aggregator` and handing out `pool`.
    #[must_use]
    pub fn new(aggregator: Aggregator, pool: TargetPool) -> Self {
        let mesh_history = MeshHistory::new(aggregator.config().window, HistoryLimits::default());
        Self {
            aggregator,
            pool,
            mesh_history,
            mesh_notice: None,
            sessions: HashMap::new(),
            refusals: HashMap::new(),
            refused_total: BTreeMap::new(),
            file_generation: 0,
            tasks: None,
            upgrades: UpgradeDesk::default(),
            traces: None,
        }
    }

    /// Turns path tracing on with `desk` and `store` (off by default).
    #[must_use]
    pub fn with_traces(mut self, desk: TraceDesk, store: TraceStore) -> Self {
        self.traces = Some(traces::Traces::new(desk, store));
        self
    }

    /// The finished traces (`/api/v1/traces`, the pair page), when tracing is on.
    #[must_use]
    pub fn traces(&self) -> Option<&TraceStore> {
        self.traces.as_ref().map(|t| &t.store)
    }

    /// The trace desk (its counters and the traces in flight), when tracing is on.
    #[must_use]
    pub fn trace_desk(&self) -> Option<&TraceDesk> {
        self.traces.as_ref().map(|t| &t.desk)
    }

    /// An operator's trace at `now` (`POST /-/trace`, `probermesh trace`).
    ///
    /// # Errors
    /// [`Refusal::NoAgent`] when the agent has no connection that takes traces (counted), or
    /// when tracing is off (not counted: tell it apart with [`Self::traces`]);
    /// [`Refusal::AgentBusy`] when it has a trace in flight (counted). Nothing is sent then.
    pub fn request_trace(
        &mut self,
        now: UnixMillis,
        trace: OperatorTrace,
    ) -> Result<Actions, Refusal> {
        let Some(state) = &mut self.traces else {
            return Err(Refusal::NoAgent);
        };
        if traces::trace_connection(&self.sessions, &trace.agent).is_none() {
            state.desk.count_refusal(Refusal::NoAgent);
            return Err(Refusal::NoAgent);
        }
        let changes = state.desk.request(now, trace)?;
        let mut actions = Actions::default();
        state.apply(now, changes, &self.sessions, &mut actions);
        Ok(actions)
    }

    /// An operator's trace at `now` (`POST /-/trace`), by agent or by region pair: run by
    /// `ask.agent` when named, else by a free agent of `ask.source_region` that takes traces
    /// ([`TraceDesk::pick_operator`]); to `ask.target` when named, else to a host of
    /// `ask.target_region` the mesh probes (or an agent of it). Filed under the pair when
    /// the target region is known. Refusals are counted.
    ///
    /// # Errors
    /// [`OperatorTraceError`]: tracing off, nobody to run it, every candidate busy, or no
    /// address to trace to. Nothing is sent then.
    pub fn request_operator_trace(
        &mut self,
        now: UnixMillis,
        ask: OperatorAsk,
    ) -> Result<(TraceRequest, AgentId, Actions), OperatorTraceError> {
        if self.traces.is_none() {
            return Err(OperatorTraceError::Off);
        }
        let Some(source) = ask
            .agent
            .as_ref()
            .map(|agent| agent.region.clone())
            .or(ask.source_region)
        else {
            return Err(OperatorTraceError::Pick(PickError::NoTracer));
        };
        let live = self.aggregator.live_agents(now);
        let Some(state) = &mut self.traces else {
            return Err(OperatorTraceError::Off);
        };
        let (mut tracers, hosts, target_agents) = traces::operator_candidates(
            &self.aggregator,
            &self.sessions,
            &live,
            &source,
            ask.target_region.as_ref(),
        );
        if let Some(agent) = &ask.agent {
            tracers.retain(|a| a == agent);
        }
        let picked = state
            .desk
            .pick_operator(&tracers, ask.target, &hosts, &target_agents);
        let (agent, target) = match picked {
            Ok(picked) => picked,
            Err(error) => {
                state.desk.count_refusal(error.refusal());
                return Err(error.into());
            }
        };
        let trace = OperatorTrace {
            agent: agent.clone(),
            target,
            pair: ask
                .target_region
                .map(|target_region| RegionPair::new(source, target_region)),
            shape: ask.shape,
        };
        let changes = state
            .desk
            .request(now, trace)
            .map_err(|_| OperatorTraceError::Pick(PickError::Busy))?;
        let request = changes
            .requests
            .first()
            .map(|(_, request)| request.clone())
            .ok_or(OperatorTraceError::Pick(PickError::NoTracer))?;
        let mut actions = Actions::default();
        state.apply(now, changes, &self.sessions, &mut actions);
        Ok((request, agent, actions))
    }

    /// Sets the line the mesh page shows above the matrix (the demo labels its simulated WAN).
    #[must_use]
    pub fn with_mesh_notice(mut self, notice: impl Into<String>) -> Self {
        self.mesh_notice = Some(notice.into());
        self
    }

    /// The mesh view at `now` (the page and `/api/v1/mesh`).
    #[must_use]
    pub fn mesh_view(&self, now: UnixMillis) -> MeshView {
        mesh::build(
            &self.aggregator,
            &self.mesh_history,
            self.mesh_notice.as_deref(),
            now,
        )
    }

    /// The page of one pair at `now`; `None` when a region is unknown.
    #[must_use]
    pub fn mesh_pair(&self, now: UnixMillis, source: &Region, target: &Region) -> Option<PairView> {
        mesh::pair(&self.aggregator, &self.mesh_history, source, target, now)
    }

    /// Sets the upgrade desk (its settings, or what a previous server kept).
    #[must_use]
    pub fn with_upgrades(mut self, desk: UpgradeDesk) -> Self {
        self.upgrades = desk;
        self
    }

    /// Replaces the (empty) upgrade desk with what a previous server kept: the rollout
    /// resumed, if there was one.
    ///
    /// # Errors
    /// [`crate::wire::WireError`] naming what is wrong in the record; nothing changes then.
    pub fn resume_upgrades(
        &mut self,
        bytes: &[u8],
    ) -> Result<Option<&crate::upgrade::rollout::Rollout>, crate::wire::WireError> {
        let desk = UpgradeDesk::from_record(self.upgrades.settings().clone(), bytes)?;
        self.upgrades = desk;
        Ok(self.upgrades.rollout())
    }

    /// The upgrade desk (the current or last rollout).
    #[must_use]
    pub fn upgrades(&self) -> &UpgradeDesk {
        &self.upgrades
    }

    /// Starts a rollout at `now` among the connected agents it selects.
    ///
    /// # Errors
    /// [`StartError`] when another rollout is open or no agent is selected; nothing changes.
    pub fn start_rollout(
        &mut self,
        now: UnixMillis,
        request: RolloutRequest,
    ) -> Result<Actions, StartError> {
        let changes = self.upgrades.start(now, request)?;
        let mut actions = Actions::default();
        self.apply_upgrade_changes(changes, &mut actions);
        Ok(actions)
    }

    /// An operator's control of the rollout at `now`.
    ///
    /// # Errors
    /// [`ControlError`] when there is no rollout or its phase does not allow it.
    pub fn control_rollout(
        &mut self,
        now: UnixMillis,
        control: Control,
    ) -> Result<Actions, ControlError> {
        let changes = self.upgrades.control(now, control)?;
        let mut actions = Actions::default();
        self.apply_upgrade_changes(changes, &mut actions);
        Ok(actions)
    }

    /// The newest connection of the agent process `instance` of `agent`, if it is connected.
    fn connection_of(&self, agent: &AgentId, instance: u64) -> Option<ConnectionId> {
        self.sessions
            .iter()
            .filter(|(_, s)| &s.agent == agent && s.link.instance == instance)
            .map(|(c, _)| *c)
            .max()
    }

    /// Carries a desk change into `actions`: offers go to the connection of the agent process
    /// named; the desk's bytes come first when it changed.
    fn apply_upgrade_changes(&mut self, changes: DeskChanges, actions: &mut Actions) {
        for (agent, instance, offer) in changes.offers {
            if let Some(connection) = self.connection_of(&agent, instance) {
                actions.send.push((connection, offer));
            }
        }
        for grant in changes.chunks {
            if let Some(connection) = self.connection_of(&grant.agent, grant.instance) {
                actions
                    .chunks
                    .push((connection, grant.offer_id, grant.offset, grant.len));
            }
        }
        actions.upgrade_events.extend(changes.events);
        if self.upgrades.is_dirty() {
            actions.persist_upgrade = Some(self.upgrades.to_record());
            self.upgrades.mark_saved();
        }
    }

    /// Turns remote tasks on with `book` (an empty one, or what a previous server kept).
    #[must_use]
    pub fn with_tasks(mut self, book: TaskBook) -> Self {
        self.tasks = Some(book);
        self
    }

    /// Replaces the (empty) task book with what a previous server kept, with this server's
    /// settings; nothing happens when tasks are off.
    ///
    /// # Errors
    /// [`crate::wire::WireError`] for a damaged or foreign record (the book stays empty).
    pub fn resume_tasks(&mut self, bytes: &[u8]) -> Result<usize, crate::wire::WireError> {
        let Some(book) = &mut self.tasks else {
            return Ok(0);
        };
        let resumed = TaskBook::from_record(book.settings().clone(), bytes)?;
        let count = resumed.tasks().count();
        *book = resumed;
        Ok(count)
    }

    /// The task book, when tasks are on.
    #[must_use]
    pub fn tasks(&self) -> Option<&TaskBook> {
        self.tasks.as_ref()
    }

    /// A task of the book.
    #[must_use]
    pub fn task(&self, id: u64) -> Option<&BookTask> {
        self.tasks.as_ref()?.task(id)
    }

    /// Counts a submission the endpoints refused before it reached the book (no credential,
    /// tasks off: `unauthorized`, `disabled`).
    pub fn count_refused_submission(&mut self, label: &'static str) {
        if let Some(book) = &mut self.tasks {
            book.count_refused_submission(label);
        }
    }

    /// Dispatches a task at `now` to the matching agents, connected or alive.
    ///
    /// # Errors
    /// [`SubmitError`] (tasks off is `BadRequest` on `-server.task`); nothing is dispatched.
    pub fn submit_task(
        &mut self,
        now: UnixMillis,
        submission: Submission,
    ) -> Result<(Submitted, Actions), SubmitError> {
        let mut known: Vec<KnownAgent> = Vec::new();
        let mut sessions: Vec<&Session> = self.sessions.values().collect();
        sessions.sort_by_key(|s| (s.agent.clone(), s.link.instance));
        for session in sessions {
            if known.last().is_some_and(|k| k.agent == session.agent) {
                continue;
            }
            known.push(KnownAgent {
                agent: session.agent.clone(),
                link: Some(session.link),
            });
        }
        for agent in self.aggregator.live_agents(now) {
            if !known.iter().any(|k| k.agent == agent) {
                known.push(KnownAgent { agent, link: None });
            }
        }
        let Some(book) = &mut self.tasks else {
            return Err(SubmitError::BadRequest {
                field: "-server.task",
                why: "remote tasks are off on this server".into(),
            });
        };
        let mut submitted = book.submit(now, submission, &known)?;
        let changes = std::mem::take(&mut submitted.changes);
        let mut actions = Actions::default();
        self.apply_task_changes(changes, &mut actions);
        Ok((submitted, actions))
    }

    /// Carries a book change into `actions`: sends go to the connections of the agent
    /// process each run was sent to; the book's bytes come first when it changed.
    fn apply_task_changes(&mut self, changes: BookChanges, actions: &mut Actions) {
        let Some(book) = &mut self.tasks else {
            return;
        };
        for (agent, spec) in changes.sends {
            let instance = book
                .task(spec.id)
                .and_then(|t| t.runs.get(&agent))
                .and_then(|r| r.instance);
            let mut connections: Vec<ConnectionId> = self
                .sessions
                .iter()
                .filter(|(_, s)| s.agent == agent && Some(s.link.instance) == instance)
                .map(|(c, _)| *c)
                .collect();
            connections.sort();
            if let Some(connection) = connections.last() {
                actions.send.push((*connection, ToAgent::Task(spec)));
            }
        }
        actions.task_records.extend(changes.records);
        actions.task_audit.extend(changes.audit);
        if book.is_dirty() {
            actions.persist_tasks = Some(book.to_record());
            book.mark_saved();
        }
    }

    /// Handles one event of the agent links at `now`.
    pub fn handle_event(&mut self, now: UnixMillis, event: LinkEvent) -> Actions {
        let mut actions = Actions::default();
        match event {
            LinkEvent::Connected {
                connection,
                agent,
                version,
                capabilities,
                instance,
                ..
            } => {
                self.aggregator.handle_heartbeat(now, &agent, &version);
                let link = AgentLink {
                    instance,
                    protocol_version: capabilities.protocol_version,
                    takes_tasks: capabilities.has(feature::TASK),
                };
                let takes_upgrades = capabilities.has(feature::UPGRADE);
                let candidate = Candidate {
                    agent: agent.clone(),
                    version: version.as_str().to_owned(),
                    instance,
                    protocol_version: capabilities.protocol_version,
                    takes_upgrades,
                };
                self.sessions.insert(
                    connection,
                    Session {
                        agent: agent.clone(),
                        version,
                        link,
                        sent: None,
                        takes_traces: traces::names_trace(&capabilities),
                    },
                );
                // A new agent can change every region's pool (dynamic discovery).
                self.push_changed_pools(now, &mut actions);
                if let Some(book) = &mut self.tasks {
                    let changes = book.connected(now, &agent, link);
                    self.apply_task_changes(changes, &mut actions);
                }
                let changes = self.upgrades.connected(now, candidate);
                self.apply_upgrade_changes(changes, &mut actions);
            }
            LinkEvent::Message {
                connection,
                message,
                ..
            } => self.handle_message(now, connection, message, &mut actions),
            LinkEvent::Disconnected { connection, .. } => {
                // Liveness runs out on its own (ratio × window), as decided.
                if let Some(session) = self.sessions.remove(&connection) {
                    self.upgrades
                        .disconnected(&session.agent, session.link.instance);
                    // The trace sent on this connection will not be reported.
                    if let Some(state) = &mut self.traces
                        && state.in_flight_on(&session.agent, connection)
                    {
                        let changes = state.desk.handle_disconnect(now, &session.agent);
                        state.apply(now, changes, &self.sessions, &mut actions);
                    }
                }
                self.refusals.remove(&connection);
            }
        }
        actions
    }

    fn handle_message(
        &mut self,
        now: UnixMillis,
        connection: ConnectionId,
        message: FromAgent,
        actions: &mut Actions,
    ) {
        let Some(session) = self.sessions.get(&connection) else {
            actions
                .close
                .push((connection, "message before the hello".to_owned()));
            return;
        };
        let agent = session.agent.clone();
        match message {
            FromAgent::Heartbeat { .. } => {
                let version = session.version.clone();
                self.aggregator.handle_heartbeat(now, &agent, &version);
            }
            FromAgent::Results { results, .. } => {
                // The link validated the results (their source is this agent) and acknowledged
                // the batch when it handed it out.
                let intake = self.aggregator.handle_results(now, results);
                actions.intake.accepted += intake.accepted;
                actions.intake.dropped_late += intake.dropped_late;
                actions.intake.dropped_future += intake.dropped_future;
                actions.intake.dropped_duplicate += intake.dropped_duplicate;
            }
            FromAgent::PoolRequest { known_revision } => {
                let live = self.aggregator.live_agents(now);
                let revision = self.pool.revision_for(&agent.region, &live);
                if revision.0 != known_revision
                    && let Some(session) = self.sessions.get_mut(&connection)
                {
                    let configs = self.pool.targets_for(&agent.region, &live);
                    session.sent = Some(revision);
                    actions
                        .send
                        .push((connection, pool_message(revision, configs)));
                }
            }
            FromAgent::PoolRefused {
                revision,
                field,
                reason,
            } => {
                let (index, label) = refusal_place(&field);
                let live = self.aggregator.live_agents(now);
                let block = index
                    .filter(|_| self.pool.revision_for(&agent.region, &live).0 == revision)
                    .and_then(|index| {
                        let configs = self.pool.targets_for(&agent.region, &live);
                        configs
                            .get(index)
                            .map(|config| (config.region.clone(), config.kind()))
                    });
                let refusal = PoolRefusal {
                    agent: agent.clone(),
                    revision,
                    block,
                    field,
                    reason,
                    label,
                    at: now,
                };
                *self
                    .refused_total
                    .entry((agent.region.clone(), label))
                    .or_default() += 1;
                // It stands only for the revision that agent holds an offer of now; a late
                // refusal of an older one is counted and logged, not kept.
                let sent = self.sessions.get(&connection).and_then(|s| s.sent);
                if sent.map(|r| r.0) == Some(revision) {
                    self.refusals.insert(connection, refusal.clone());
                }
                actions.refused.push(refusal);
            }
            FromAgent::TaskResult { task_id, output } => {
                self.task_answer(now, &agent, task_id, Answer::Output(output), actions);
            }
            FromAgent::TaskRefused { task_id, reason } => {
                self.task_answer(now, &agent, task_id, Answer::Refused(reason), actions);
            }
            FromAgent::UpgradeStatus {
                offer_id,
                version,
                state,
            } => {
                // A report is about the rollout's release, or about nothing: an old process's
                // report (sent at each of its connections) cannot settle a newer rollout that
                // reuses its offer id (a server that lost its data directory numbers from 1).
                let about_this_release = self.upgrades.rollout().is_some_and(|r| {
                    version
                        .parse::<crate::upgrade::version::Version>()
                        .is_ok_and(|v| v.same_release(&r.release.version))
                });
                if about_this_release {
                    let changes = self.upgrades.reported(now, &agent, offer_id, state);
                    self.apply_upgrade_changes(changes, actions);
                }
            }
            FromAgent::ChunkRequest { offer_id, offset } => {
                if let Some((offset, len)) = self.upgrades.chunk(now, &agent, offer_id, offset) {
                    actions.chunks.push((connection, offer_id, offset, len));
                }
            }
            FromAgent::TraceResult(report) => {
                // Ignored when tracing is off, as before.
                if let Some(state) = &mut self.traces {
                    let changes = state.desk.handle_report(now, &agent, report);
                    state.apply(now, changes, &self.sessions, actions);
                }
            }
        }
    }

    fn task_answer(
        &mut self,
        now: UnixMillis,
        agent: &AgentId,
        task_id: u64,
        answer: Answer,
        actions: &mut Actions,
    ) {
        if let Some(book) = &mut self.tasks {
            let changes = book.answered(now, agent, task_id, answer);
            self.apply_task_changes(changes, actions);
        }
    }

    /// Settles due windows, expires series and task runs, pushes the pools that changed, and
    /// (tracing on) gives up timed-out traces and feeds the settled ICMP pairs to the desk.
    pub fn handle_timeout(&mut self, now: UnixMillis) -> Actions {
        self.aggregator.handle_timeout(now);
        self.mesh_history.record(now, &self.aggregator);
        let mut actions = Actions::default();
        self.push_changed_pools(now, &mut actions);
        if let Some(state) = &mut self.traces {
            // Timed-out traces first, so their agents can run this window's sets.
            let expired = state.desk.tick(now);
            state.apply(now, expired, &self.sessions, &mut actions);
            let verdicts = state.settled_verdicts(&self.aggregator, &self.sessions);
            if !verdicts.is_empty() {
                let changes = state.desk.handle_window(now, &verdicts);
                state.apply(now, changes, &self.sessions, &mut actions);
            }
        }
        if let Some(book) = &mut self.tasks {
            let changes = book.tick(now);
            self.apply_task_changes(changes, &mut actions);
        }
        let changes = self.upgrades.tick(now);
        self.apply_upgrade_changes(changes, &mut actions);
        actions
    }

    /// When the aggregator's next window settles (the part of [`Self::next_timeout`] after
    /// which the published series change); a driver republishes its metrics only then.
    #[must_use]
    pub fn aggregation_due(&self) -> UnixMillis {
        self.aggregator.next_timeout()
    }

    /// When [`Self::handle_timeout`] is next due.
    #[must_use]
    pub fn next_timeout(&self) -> UnixMillis {
        let window = self.aggregator.next_timeout();
        [
            self.tasks.as_ref().and_then(TaskBook::next_timeout),
            self.upgrades.next_timeout(),
            self.traces.as_ref().and_then(|t| t.desk.next_timeout()),
        ]
        .into_iter()
        .flatten()
        .fold(window, UnixMillis::min)
    }

    /// Replaces the probe file's blocks (a reload) and pushes what changed. Dynamic targets
    /// are derived from live agents, so they survive.
    ///
    /// # Errors
    /// [`PoolTooLarge`] when agents could not receive the new pool; the running pool stays.
    pub fn reload(
        &mut self,
        now: UnixMillis,
        configs: Vec<ProbeConfig>,
    ) -> Result<Actions, PoolTooLarge> {
        let mut candidate = self.pool.clone();
        candidate.replace_file_configs(configs);
        check_pool_fits(&candidate, &self.aggregator.live_agents(now))?;
        self.pool = candidate;
        self.file_generation += 1;
        let mut actions = Actions::default();
        self.push_changed_pools(now, &mut actions);
        Ok(actions)
    }

    /// The aggregation window.
    #[must_use]
    pub fn window(&self) -> std::time::Duration {
        self.aggregator.config().window
    }

    /// The aggregator's running totals (received and dropped results).
    #[must_use]
    pub fn counters(&self) -> Counters {
        self.aggregator.counters()
    }

    /// Empties the unsettled windows for a stopping server to hand over (see
    /// [`Aggregator::take_open_results`]).
    pub fn take_open_results(&mut self) -> Vec<ProbeResult> {
        self.aggregator.take_open_results()
    }

    /// Files the results the previous server handed over (see
    /// [`Aggregator::resume_results`]).
    pub fn resume_results(&mut self, now: UnixMillis, results: Vec<ProbeResult>) -> Intake {
        self.aggregator.resume_results(now, results)
    }

    /// Every series to expose.
    #[must_use]
    pub fn snapshot(&self, now: UnixMillis) -> Snapshot {
        self.snapshot_part(now, SnapshotPart::All)
    }

    /// Part of the series to expose (see [`SnapshotPart`]); the pool refusal counter is in
    /// the live part.
    #[must_use]
    pub fn snapshot_part(&self, now: UnixMillis, part: SnapshotPart) -> Snapshot {
        let mut snapshot = self.aggregator.snapshot_part(now, part);
        if part != SnapshotPart::Settled {
            snapshot.families.push(self.refused_family());
            if let Some(book) = &self.tasks {
                snapshot.families.extend(task_families(book));
            }
            snapshot.families.extend(self.upgrade_families());
            if let Some(state) = &self.traces {
                snapshot.families.extend(state.families());
            }
        }
        snapshot
    }

    /// The rollout's agents by state (every state, 0 without a rollout) and the connected
    /// agents by version.
    fn upgrade_families(&self) -> [MetricFamily; 4] {
        #[allow(clippy::cast_precision_loss)]
        let number = |n: usize| SeriesValue::Number(n as f64);
        let counts = self
            .upgrades
            .rollout()
            .map(crate::upgrade::rollout::Rollout::counts)
            .unwrap_or_default();
        let mut versions: BTreeMap<&str, usize> = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        for session in self.sessions.values() {
            // One process may hold two connections for a moment (a handoff): count it once.
            if seen.insert((&session.agent, session.link.instance)) {
                *versions.entry(session.version.as_str()).or_default() += 1;
            }
        }
        [
            MetricFamily {
                name: UPGRADE_AGENTS,
                help: "Agents of the current (or last) rollout by state.",
                kind: MetricKind::Gauge,
                label_names: &["state"],
                series: MemberState::ALL
                    .iter()
                    .map(|state| Series {
                        label_values: vec![state.label().to_owned()],
                        value: number(counts.get(state).copied().unwrap_or(0)),
                    })
                    .collect(),
            },
            MetricFamily {
                name: UPGRADE_SENT_BYTES,
                help: "Bytes of releases sent to agents over the link.",
                kind: MetricKind::Counter,
                label_names: &[],
                series: vec![Series {
                    label_values: Vec::new(),
                    value: SeriesValue::Number(self.upgrades.sent_bytes() as f64),
                }],
            },
            MetricFamily {
                name: UPGRADE_CHUNKS_WAITING,
                help: "Chunks of releases held back by -server.upgrade.max-bytes-per-second.",
                kind: MetricKind::Gauge,
                label_names: &[],
                series: vec![Series {
                    label_values: Vec::new(),
                    value: number(self.upgrades.chunks_waiting()),
                }],
            },
            MetricFamily {
                name: AGENT_VERSIONS,
                help: "Connected agent processes by the version they run.",
                kind: MetricKind::Gauge,
                label_names: &["version"],
                series: versions
                    .into_iter()
                    .map(|(version, n)| Series {
                        label_values: vec![version.to_owned()],
                        value: number(n),
                    })
                    .collect(),
            },
        ]
    }

    fn refused_family(&self) -> MetricFamily {
        MetricFamily {
            name: POOL_REFUSED,
            help: "Target pools agents refused (they keep probing their previous pool), by the \
                   agent's region and the kind of setting at fault.",
            kind: MetricKind::Counter,
            label_names: &["reason", "region"],
            series: self
                .refused_total
                .iter()
                .map(|((region, label), count)| Series {
                    label_values: vec![(*label).to_owned(), region.as_str().to_owned()],
                    #[allow(clippy::cast_precision_loss)]
                    value: SeriesValue::Number(*count as f64),
                })
                .collect(),
        }
    }

    /// The standing refusals: connected agents that refused the last pool they were sent,
    /// by agent.
    #[must_use]
    pub fn pool_refusals(&self) -> Vec<&PoolRefusal> {
        let mut refusals: Vec<&PoolRefusal> = self.refusals.values().collect();
        refusals.sort_by(|a, b| a.agent.cmp(&b.agent));
        refusals
    }

    /// The whole pool by region (`/-/targets`).
    #[must_use]
    pub fn targets(&self, now: UnixMillis) -> BTreeMap<Region, Vec<ProbeConfig>> {
        self.pool.regions(&self.aggregator.live_agents(now))
    }

    /// What [`Self::targets`] and [`Self::pool_refusals`] at `now` are a function of (see
    /// [`TargetsKey`]); it costs the live agents and the refusals, not the pool.
    #[must_use]
    pub fn targets_key(&self, now: UnixMillis) -> TargetsKey {
        TargetsKey {
            file_generation: self.file_generation,
            live_agents: match self.pool.discovery() {
                Discovery::Dynamic => self.aggregator.live_agents(now),
                Discovery::Static => Vec::new(),
            },
            refusals: self.pool_refusals().into_iter().cloned().collect(),
        }
    }

    /// Agents connected right now.
    #[must_use]
    pub fn connected(&self) -> usize {
        self.sessions.len()
    }

    fn push_changed_pools(&mut self, now: UnixMillis, actions: &mut Actions) {
        let live = self.aggregator.live_agents(now);
        // Sessions of one region share a pool: compute each region's once.
        let mut by_region: HashMap<Region, (PoolRevision, Option<ToAgent>)> = HashMap::new();
        let mut connections: Vec<&ConnectionId> = self.sessions.keys().collect();
        connections.sort();
        let connections: Vec<ConnectionId> = connections.into_iter().copied().collect();
        for connection in connections {
            let Some(session) = self.sessions.get_mut(&connection) else {
                continue;
            };
            let region = session.agent.region.clone();
            let (revision, message) = by_region
                .entry(region.clone())
                .or_insert_with(|| (self.pool.revision_for(&region, &live), None));
            if session.sent == Some(*revision) {
                continue;
            }
            let message = message.get_or_insert_with(|| {
                pool_message(*revision, self.pool.targets_for(&region, &live))
            });
            session.sent = Some(*revision);
            // A new revision: the agent's verdict on the old one no longer stands.
            self.refusals.remove(&connection);
            actions.send.push((connection, message.clone()));
        }
    }
}

/// The task counters: submissions by outcome, runs by final state (every label present
/// from the start, so `rate()` sees the first one).
fn task_families(book: &TaskBook) -> [MetricFamily; 2] {
    let counts = book.counts();
    #[allow(clippy::cast_precision_loss)]
    let number = |n: u64| SeriesValue::Number(n as f64);
    let outcomes = [
        "accepted",
        "unauthorized",
        "disabled",
        "bad_request",
        "no_agent",
        "too_many_agents",
        "duplicate_id",
        "full",
    ];
    [
        MetricFamily {
            name: TASK_SUBMISSIONS,
            help: "Task submissions (/-/task) by outcome.",
            kind: MetricKind::Counter,
            label_names: &["outcome"],
            series: outcomes
                .iter()
                .map(|outcome| Series {
                    label_values: vec![(*outcome).to_owned()],
                    value: number(counts.submissions.get(outcome).copied().unwrap_or(0)),
                })
                .collect(),
        },
        MetricFamily {
            name: TASK_RUNS,
            help: "Agent runs of tasks that ended, by final state.",
            kind: MetricKind::Counter,
            label_names: &["state"],
            series: crate::task::TaskState::ALL
                .iter()
                .filter(|state| state.is_final())
                .map(|state| Series {
                    label_values: vec![state.as_str().to_owned()],
                    value: number(counts.runs.get(state).copied().unwrap_or(0)),
                })
                .collect(),
        },
    ]
}

fn pool_message(revision: PoolRevision, configs: Vec<ProbeConfig>) -> ToAgent {
    ToAgent::Pool {
        revision: revision.0,
        configs: std::sync::Arc::new(configs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::AggregatorConfig;
    use crate::model::{
        IcmpModule, IcmpResult, ProbeKind, ProbeModule, ProbeOutcome, ProbeResult, Target,
    };
    use crate::pool::Discovery;
    use std::net::SocketAddr;
    use std::time::Duration;

    const T0: u64 = 1_800_000_000_000;

    fn agent(region: &str, ip: &str) -> AgentId {
        AgentId::new(Region::new(region).unwrap(), ip.parse().unwrap())
    }

    fn server(discovery: Discovery) -> ServerState {
        let aggregator = Aggregator::new(AggregatorConfig::default(), UnixMillis(T0)).unwrap();
        let http = ProbeConfig {
            region: Region::new("web").unwrap(),
            targets: vec![Target::parse(ProbeKind::Http, "http://198.18.9.9/").unwrap()],
            module: ProbeModule::Http(crate::model::HttpModule::default().into()),
        };
        ServerState::new(aggregator, TargetPool::new(vec![http], discovery, false))
    }

    fn connect(state: &mut ServerState, id: u64, who: &AgentId, now: u64) -> Actions {
        state.handle_event(
            UnixMillis(now),
            LinkEvent::Connected {
                connection: ConnectionId(id),
                agent: who.clone(),
                version: AgentVersion::new("1.0.0"),
                observed_addr: SocketAddr::new(who.ip, 40_000),
                capabilities: crate::link::Capabilities::v1(),
                instance: id,
            },
        )
    }

    /// Connects `who` as a v2 agent that takes upgrades, on connection (and process) `id`.
    fn connect_upgradable(state: &mut ServerState, id: u64, who: &AgentId, now: u64) {
        state.handle_event(
            UnixMillis(now),
            LinkEvent::Connected {
                connection: ConnectionId(id),
                agent: who.clone(),
                version: AgentVersion::new("1.0.0"),
                observed_addr: SocketAddr::new(who.ip, 40_000),
                capabilities: crate::link::Capabilities {
                    protocol_version: 2,
                    features: [crate::link::feature::UPGRADE.to_owned()].into(),
                },
                instance: id,
            },
        );
    }

    mod trace_wiring;

    #[test]
    fn chunks_held_back_by_the_cap_go_to_the_agent_that_asked() {
        use crate::upgrade::rollout::{
            BatchSize, CHUNK_LEN, Release, RolloutRequest, RolloutSettings, Strategy,
        };
        let mut state =
            server(Discovery::Dynamic).with_upgrades(UpgradeDesk::new(RolloutSettings {
                // One chunk a second, a burst of one chunk.
                max_bytes_per_second: Some(CHUNK_LEN),
                ..RolloutSettings::default()
            }));
        let (a, b) = (agent("eu", "198.18.0.1"), agent("us", "198.18.0.2"));
        connect_upgradable(&mut state, 1, &a, T0);
        connect_upgradable(&mut state, 2, &b, T0);
        let actions = state
            .start_rollout(
                UnixMillis(T0),
                RolloutRequest {
                    release: Release {
                        version: "1.1.0".parse().unwrap(),
                        size_bytes: 4 * CHUNK_LEN,
                        sha256: [1; 32],
                        signature: None,
                        source: "http://198.18.0.9/probermesh".into(),
                    },
                    force: false,
                    strategy: Strategy {
                        canary: 0,
                        batch: BatchSize::Agents(2),
                        max_failures: 0,
                        soak: Duration::from_secs(1),
                    },
                    regions: None,
                    actor: "test".into(),
                    remote: "127.0.0.1:1".into(),
                },
            )
            .unwrap();
        assert_eq!(actions.send.len(), 2, "both offered: {:?}", actions.send);
        assert!(
            actions.persist_upgrade.is_some(),
            "the record before offers"
        );
        let id = state.upgrades().rollout().unwrap().id;
        let ask = |connection: u64, who: &AgentId| LinkEvent::Message {
            connection: ConnectionId(connection),
            agent: who.clone(),
            message: FromAgent::ChunkRequest {
                offer_id: id,
                offset: 0,
            },
        };
        let first = state.handle_event(UnixMillis(T0), ask(1, &a));
        assert_eq!(first.chunks, [(ConnectionId(1), id, 0, CHUNK_LEN)]);
        let second = state.handle_event(UnixMillis(T0), ask(2, &b));
        assert!(second.chunks.is_empty(), "held back by the cap");
        let due = state.next_timeout();
        assert_eq!(due, UnixMillis(T0 + 1000));
        let later = state.handle_timeout(due);
        assert_eq!(later.chunks, [(ConnectionId(2), id, 0, CHUNK_LEN)]);
        let metrics = state.upgrade_families();
        let sent = metrics
            .iter()
            .find(|f| f.name == UPGRADE_SENT_BYTES)
            .unwrap();
        assert_eq!(
            sent.series[0].value,
            SeriesValue::Number(2.0 * CHUNK_LEN as f64)
        );
        // A report about another release (an old process's, of a reused offer id) changes
        // nothing; one about this release does.
        let report = |version: &str, state: crate::link::UpgradeState| LinkEvent::Message {
            connection: ConnectionId(1),
            agent: a.clone(),
            message: FromAgent::UpgradeStatus {
                offer_id: id,
                version: version.into(),
                state,
            },
        };
        let state_of = |state: &ServerState| state.upgrades().rollout().unwrap().members[&a].state;
        let before = state_of(&state);
        state.handle_event(due, report("0.9.0", crate::link::UpgradeState::Committed));
        assert_eq!(state_of(&state), before, "a report about 0.9.0 is ignored");
        state.handle_event(
            due,
            report(
                "1.1.0",
                crate::link::UpgradeState::Failed {
                    reason: "disk full".into(),
                },
            ),
        );
        assert_eq!(state_of(&state), crate::upgrade::MemberState::Failed);
    }

    fn pool_targets(message: &ToAgent) -> Vec<String> {
        match message {
            ToAgent::Pool { configs, .. } => configs
                .iter()
                .flat_map(|c| {
                    c.targets
                        .iter()
                        .map(|t| t.raw().to_owned())
                        .collect::<Vec<_>>()
                })
                .collect(),
            other => panic!("not a pool: {other:?}"),
        }
    }

    #[test]
    fn a_new_agent_gets_its_pool_and_other_regions_learn_about_it() {
        let mut state = server(Discovery::Dynamic);
        let eu = agent("eu", "198.18.1.1");
        let us = agent("us", "198.18.2.1");
        let first = connect(&mut state, 1, &eu, T0);
        assert_eq!(first.send.len(), 1);
        assert_eq!(pool_targets(&first.send[0].1), vec!["http://198.18.9.9/"]);
        // The US agent arrives: it gets EU's address, and EU gets the US address.
        let second = connect(&mut state, 2, &us, T0 + 1);
        let mut by_connection: Vec<(u64, Vec<String>)> = second
            .send
            .iter()
            .map(|(c, m)| (c.0, pool_targets(m)))
            .collect();
        by_connection.sort();
        assert_eq!(by_connection.len(), 2);
        assert!(
            by_connection[0].1.contains(&"198.18.2.1".to_owned()),
            "{by_connection:?}"
        );
        assert!(
            by_connection[1].1.contains(&"198.18.1.1".to_owned()),
            "{by_connection:?}"
        );
        // Nothing changed: a tick pushes nothing.
        assert!(state.handle_timeout(UnixMillis(T0 + 2)).send.is_empty());
    }

    #[test]
    fn results_are_counted_once() {
        let mut state = server(Discovery::Dynamic);
        let eu = agent("eu", "198.18.1.1");
        connect(&mut state, 1, &eu, T0);
        let result = ProbeResult {
            source: eu.clone(),
            target_region: Region::new("us").unwrap(),
            target: "198.18.2.1".to_owned(),
            round_start: UnixMillis(T0),
            outcome: ProbeOutcome::Icmp(IcmpResult::measured(
                Duration::ZERO,
                4,
                &[Duration::from_millis(10); 4],
            )),
        };
        let batch = |seq| LinkEvent::Message {
            connection: ConnectionId(1),
            agent: eu.clone(),
            message: FromAgent::Results {
                seq,
                results: vec![result.clone()],
            },
        };
        let first = state.handle_event(UnixMillis(T0 + 100), batch(7));
        assert_eq!(first.intake.accepted, 1);
        assert!(first.send.is_empty(), "the link acks, not the session");
        // The same results again (a resend to a restarted link): not counted twice.
        let again = state.handle_event(UnixMillis(T0 + 200), batch(8));
        assert_eq!(
            (again.intake.accepted, again.intake.dropped_duplicate),
            (0, 1)
        );
    }

    #[test]
    fn a_result_for_another_source_or_before_hello_closes_the_connection() {
        let mut state = server(Discovery::Dynamic);
        let stranger = state.handle_event(
            UnixMillis(T0),
            LinkEvent::Message {
                connection: ConnectionId(9),
                agent: agent("eu", "198.18.1.1"),
                message: FromAgent::Heartbeat {
                    sent_at: UnixMillis(T0),
                },
            },
        );
        assert_eq!(stranger.close.len(), 1);
    }

    #[test]
    fn pool_requests_are_answered_only_when_stale_and_reload_pushes() {
        let mut state = server(Discovery::Static);
        let eu = agent("eu", "198.18.1.1");
        let hello = connect(&mut state, 1, &eu, T0);
        let ToAgent::Pool { revision, .. } = hello.send[0].1.clone() else {
            panic!("expected a pool");
        };
        let request = |known| LinkEvent::Message {
            connection: ConnectionId(1),
            agent: eu.clone(),
            message: FromAgent::PoolRequest {
                known_revision: known,
            },
        };
        assert!(
            state
                .handle_event(UnixMillis(T0 + 1), request(revision))
                .send
                .is_empty()
        );
        assert_eq!(
            state
                .handle_event(UnixMillis(T0 + 1), request(0))
                .send
                .len(),
            1
        );

        let icmp = ProbeConfig {
            region: Region::new("virtual").unwrap(),
            targets: vec![Target::parse(ProbeKind::Icmp, "198.18.7.7").unwrap()],
            module: ProbeModule::Icmp(IcmpModule::default()),
        };
        let pushed = state.reload(UnixMillis(T0 + 2), vec![icmp]).unwrap();
        assert_eq!(pushed.send.len(), 1);
        assert_eq!(pool_targets(&pushed.send[0].1), vec!["198.18.7.7"]);
        assert_eq!(state.targets(UnixMillis(T0 + 2)).len(), 1);
    }
    #[test]
    fn a_refused_pool_is_counted_attributed_to_its_block_and_cleared_by_the_next() {
        let mut state = server(Discovery::Static);
        let eu = agent("eu", "198.18.1.1");
        let hello = connect(&mut state, 1, &eu, T0);
        let ToAgent::Pool { revision, .. } = hello.send[0].1.clone() else {
            panic!("expected a pool");
        };
        let refusal = |field: &str, reason: &str| LinkEvent::Message {
            connection: ConnectionId(1),
            agent: eu.clone(),
            message: FromAgent::PoolRefused {
                revision,
                field: field.into(),
                reason: reason.into(),
            },
        };
        let refused = state.handle_event(
            UnixMillis(T0 + 5),
            refusal(
                "configs[0].http.fail_if_body_matches_regexp[0]",
                "invalid regular expression",
            ),
        );
        assert_eq!(refused.refused.len(), 1);
        let standing = state.pool_refusals();
        assert_eq!(standing.len(), 1);
        assert_eq!(
            standing[0].block,
            Some((Region::new("web").unwrap(), ProbeKind::Http))
        );
        assert_eq!(standing[0].label, "http_setting");
        assert_eq!(
            standing[0].to_string(),
            "configs[0].http.fail_if_body_matches_regexp[0]: invalid regular expression"
        );
        let counter = |state: &ServerState| {
            state
                .snapshot_part(UnixMillis(T0 + 6), SnapshotPart::Live)
                .families
                .iter()
                .find(|f| f.name == POOL_REFUSED)
                .map(|f| {
                    f.series
                        .iter()
                        .map(|s| (s.label_values.clone(), s.number()))
                        .collect::<Vec<_>>()
                })
        };
        assert_eq!(
            counter(&state),
            Some(vec![(
                vec!["http_setting".to_owned(), "eu".to_owned()],
                Some(1.0)
            )])
        );
        // A reload pushes a new revision: the standing refusal goes, the count stays.
        let icmp = ProbeConfig {
            region: Region::new("virtual").unwrap(),
            targets: vec![Target::parse(ProbeKind::Icmp, "198.18.7.7").unwrap()],
            module: ProbeModule::Icmp(IcmpModule::default()),
        };
        assert_eq!(
            state
                .reload(UnixMillis(T0 + 7), vec![icmp])
                .unwrap()
                .send
                .len(),
            1
        );
        assert!(state.pool_refusals().is_empty());
        assert_eq!(counter(&state).map(|c| c.len()), Some(1));
        // A refusal of the old revision arriving late is counted and logged, not kept.
        let late = state.handle_event(UnixMillis(T0 + 8), refusal("configs[0].http.method", "bad"));
        assert_eq!(late.refused.len(), 1);
        assert!(state.pool_refusals().is_empty());
        assert_eq!(
            counter(&state),
            Some(vec![(
                vec!["http_setting".to_owned(), "eu".to_owned()],
                Some(2.0)
            )])
        );
    }

    #[test]
    fn the_targets_key_changes_whenever_the_targets_answer_does() {
        // Every step that can change `/-/targets` (an agent arriving or expiring under dynamic
        // discovery, a refusal, a reload) changes the key; equal keys always came with equal
        // answers, so a rendering kept by key is never stale.
        for discovery in [Discovery::Dynamic, Discovery::Static] {
            let mut state = server(discovery);
            let mut seen: Vec<(TargetsKey, String)> = Vec::new();
            let mut observe = |state: &ServerState, now: u64| {
                let now = UnixMillis(now);
                let answer = format!("{:?} {:?}", state.targets(now), state.pool_refusals());
                let key = state.targets_key(now);
                for (earlier_key, earlier_answer) in &seen {
                    if *earlier_key == key {
                        assert_eq!(*earlier_answer, answer, "{discovery}: one key, two answers");
                    }
                }
                let changed = seen.last().is_none_or(|(last, _)| *last != key);
                seen.push((key, answer));
                changed
            };
            assert!(observe(&state, T0));
            assert!(!observe(&state, T0 + 1), "nothing happened");
            let eu = agent("eu", "198.18.1.1");
            let hello = connect(&mut state, 1, &eu, T0 + 2);
            assert_eq!(observe(&state, T0 + 2), discovery == Discovery::Dynamic);
            let ToAgent::Pool { revision, .. } = hello.send[0].1.clone() else {
                panic!("expected a pool");
            };
            state.handle_event(
                UnixMillis(T0 + 3),
                LinkEvent::Message {
                    connection: ConnectionId(1),
                    agent: eu.clone(),
                    message: FromAgent::PoolRefused {
                        revision,
                        field: "configs[0].http.method".into(),
                        reason: "bad".into(),
                    },
                },
            );
            assert!(observe(&state, T0 + 3), "{discovery}: a refusal");
            let icmp = ProbeConfig {
                region: Region::new("virtual").unwrap(),
                targets: vec![Target::parse(ProbeKind::Icmp, "198.18.7.7").unwrap()],
                module: ProbeModule::Icmp(IcmpModule::default()),
            };
            state
                .reload(UnixMillis(T0 + 4), vec![icmp.clone()])
                .unwrap();
            assert!(observe(&state, T0 + 4), "{discovery}: a reload");
            // The same blocks again: a reload all the same (the key may change, never lie).
            state.reload(UnixMillis(T0 + 5), vec![icmp]).unwrap();
            observe(&state, T0 + 5);
            // The agent's liveness runs out (no heartbeats).
            let expired = T0 + 2 + AggregatorConfig::default().series_ttl().as_millis() as u64 + 1;
            assert_eq!(observe(&state, expired), discovery == Discovery::Dynamic);
        }
    }

    #[test]
    fn refusal_fields_map_to_bounded_labels() {
        for (field, index, label) in [
            ("configs[3].http.method", Some(3), "http_setting"),
            ("configs[0].icmp.interval", Some(0), "icmp_setting"),
            ("configs[12].targets[4]", Some(12), "target"),
            ("configs[1].region", Some(1), "region"),
            ("configs", None, "pool_size"),
            ("anything else", None, "other"),
            ("configs[x].http", None, "http_setting"),
            ("", None, "other"),
        ] {
            assert_eq!(refusal_place(field), (index, label), "{field}");
        }
    }

    #[test]
    fn a_pool_too_large_for_the_link_is_refused_and_the_running_one_stays() {
        let mut state = server(Discovery::Static);
        let eu = agent("eu", "198.18.1.1");
        connect(&mut state, 1, &eu, T0);
        // Ten blocks with a 1 MiB body each: over the 8 MiB a message may carry.
        let big: Vec<ProbeConfig> = (0..10)
            .map(|i| ProbeConfig {
                region: Region::new(&format!("web{i}")).unwrap(),
                targets: vec![Target::parse(ProbeKind::Http, "http://198.18.9.9/").unwrap()],
                module: ProbeModule::Http(
                    crate::model::HttpModule {
                        body: Some(
                            "b".repeat(crate::model::setting::MAX_REQUEST_BODY_LEN)
                                .into(),
                        ),
                        ..crate::model::HttpModule::default()
                    }
                    .into(),
                ),
            })
            .collect();
        let error = state.reload(UnixMillis(T0 + 1), big).unwrap_err();
        assert!(error.len > error.max_len, "{error}");
        assert!(
            error.to_string().contains("agents could not receive it"),
            "{error}"
        );
        // The running pool (the one HTTP block) stays.
        assert_eq!(state.targets(UnixMillis(T0 + 1)).len(), 1);
    }
}
