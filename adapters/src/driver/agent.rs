//! The agent's driver: runs `core::agent::AgentState` over a `ServerLink`, the probers and a
//! `Clock`. Probes start when the state asks (each in its own task), their results go to
//! the link, the link's words go to the state; on a re-identification the link is replaced.
//! A stop is graceful: no new probe, those in flight finish (within a bound) and their
//! results are handed to the link, which then gets a bound to have them acknowledged.
//! Upgrades: the state's steps go to an `Installer` (staging, writing, checking the binary);
//! when the state hands over to a new version, the run stops as gracefully as for a signal
//! and returns the hand-over in [`AgentRun::handover`] for the `upgrade` adapter to carry out.
//! Path traces run on a `PathTracer` in their own task (one at a time, as the state decides),
//! bounded by [`TRACE_BOUND`]; their reports go back to the state.

use std::sync::Arc;
use std::time::Duration;

use probermesh_core::agent::{AgentAction, AgentNotice, AgentState};
use probermesh_core::link::{TaskOutput, TraceReport, TraceRequest, UpgradePlan};
use probermesh_core::model::{AgentId, ProbeKind, ProbeResult};
use probermesh_core::ports::{Clock, Installer, PathTracer, ServerLink, TaskRunner};
use probermesh_core::probe::{self, Probers};
use probermesh_core::upgrade::agent::UpgradeStep;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// After a link error, how long before `recv` is asked again (a closed link answers at once).
const RECV_PAUSE_AFTER_ERROR: Duration = Duration::from_millis(100);

/// The longest a trace may run before the driver answers it with an error: the engine bounds
/// its own traces well below this (see `icmp::trace`), so only a stuck tracer reaches it.
pub const TRACE_BOUND: Duration = Duration::from_secs(150);

/// Starts a new link under an identity (a re-identification); the error says why it could
/// not.
pub type Relink<L> = Box<dyn FnMut(&AgentId) -> Result<Arc<L>, String> + Send>;

/// How a graceful stop is bounded.
#[derive(Clone, Copy, Debug)]
pub struct StopBounds {
    /// How long the probes in flight may take to finish.
    pub in_flight: Duration,
    /// How long the link may take to have the last results acknowledged.
    pub drain: Duration,
}

impl StopBounds {
    /// How much longer than a probe interval a stop waits for the probes in flight (a
    /// probe's timeout is at most its interval; the ICMP engine adds its reply timeout).
    pub const IN_FLIGHT_GRACE: Duration = Duration::from_secs(3);
    /// How long a stop waits for the server to acknowledge the last results.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

    /// The bounds of a production agent probing every `probe_interval`.
    #[must_use]
    pub fn for_interval(probe_interval: Duration) -> Self {
        Self {
            in_flight: probe_interval + Self::IN_FLIGHT_GRACE,
            drain: Self::DRAIN_TIMEOUT,
        }
    }
}

/// What an agent's run ended with.
#[derive(Debug)]
pub struct AgentRun<L> {
    /// The state at the end (its counters: results produced, …).
    pub state: AgentState,
    /// The link in use at the end (closed).
    pub link: Arc<L>,
    /// Probes still running when the stop's bound ran out (their results are not sent).
    pub abandoned_probes: usize,
    /// Whether the link had every result acknowledged before it closed.
    pub drained: bool,
    /// The run stopped to hand over to a checked new version: its offer and plan.
    pub handover: Option<(u64, UpgradePlan)>,
}

/// The probes running, each with its kind, so that one ending without a result (a panic)
/// still frees its kind's place in the state.
#[derive(Default)]
struct Probes {
    tasks: JoinSet<ProbeResult>,
    kinds: std::collections::HashMap<tokio::task::Id, ProbeKind>,
}

impl Probes {
    fn finished(
        &mut self,
        state: &mut AgentState,
        joined: Result<(tokio::task::Id, ProbeResult), tokio::task::JoinError>,
    ) {
        match joined {
            Ok((id, result)) => {
                self.kinds.remove(&id);
                state.handle_result(result);
            }
            Err(error) => {
                if let Some(kind) = self.kinds.remove(&error.id()) {
                    tracing::error!(%kind, %error, "a probe ended without a result");
                    state.handle_lost(kind);
                }
            }
        }
    }
}

/// The tasks running (one at a time, as the state decides), each with its id, so that one
/// whose runner panicked is still answered.
struct TaskRuns {
    runner: Arc<dyn TaskRunner>,
    tasks: JoinSet<(u64, TaskOutput)>,
    ids: std::collections::HashMap<tokio::task::Id, u64>,
}

impl TaskRuns {
    fn finished(
        &mut self,
        state: &mut AgentState,
        now: probermesh_core::model::UnixMillis,
        joined: Result<(tokio::task::Id, (u64, TaskOutput)), tokio::task::JoinError>,
    ) {
        match joined {
            Ok((join_id, (id, output))) => {
                self.ids.remove(&join_id);
                state.handle_task_output(now, id, output);
            }
            Err(error) => {
                if let Some(id) = self.ids.remove(&error.id()) {
                    tracing::error!(task = id, %error, "a task's runner ended without an output");
                    let output = TaskOutput {
                        stderr: format!("the agent's task runner failed: {error}").into_bytes(),
                        ..TaskOutput::default()
                    };
                    state.handle_task_output(now, id, output);
                }
            }
        }
    }
}

/// The trace running (one at a time, as the state decides), with its request, so that one
/// whose tracer panicked or overran [`TRACE_BOUND`] is still answered.
struct TraceRuns {
    tracer: Arc<dyn PathTracer>,
    tasks: JoinSet<TraceReport>,
    requests: std::collections::HashMap<tokio::task::Id, TraceRequest>,
}

impl TraceRuns {
    fn start(&mut self, request: TraceRequest) {
        let tracer = Arc::clone(&self.tracer);
        let kept = request.clone();
        let task = self.tasks.spawn(async move {
            match tokio::time::timeout(TRACE_BOUND, tracer.trace(&request)).await {
                Ok(report) => report,
                Err(_) => failed_report(
                    &request,
                    format!(
                        "the tracer did not finish within {}s",
                        TRACE_BOUND.as_secs()
                    ),
                ),
            }
        });
        self.requests.insert(task.id(), kept);
    }

    fn finished(
        &mut self,
        state: &mut AgentState,
        joined: Result<(tokio::task::Id, TraceReport), tokio::task::JoinError>,
    ) {
        match joined {
            Ok((join_id, report)) => {
                self.requests.remove(&join_id);
                tracing::info!(trace = report.id, target = %report.target, hops = report.hops.len(), error = ?report.error, "trace finished");
                state.handle_trace_report(report);
            }
            Err(error) => {
                if let Some(request) = self.requests.remove(&error.id()) {
                    tracing::error!(trace = request.id, %error, "a trace ended without a report");
                    state.handle_trace_report(failed_report(
                        &request,
                        format!("the agent's tracer failed: {error}"),
                    ));
                }
            }
        }
    }
}

fn failed_report(request: &TraceRequest, error: String) -> TraceReport {
    TraceReport {
        id: request.id,
        target: request.target,
        hops: Vec::new(),
        error: Some(error),
    }
}

/// Everything the agent has running besides its link: probes, the task, the trace.
struct Runs {
    probes: Probes,
    tasks: TaskRuns,
    traces: TraceRuns,
}

/// Runs the agent until `stop` turns true, then stops gracefully within `bounds`. Tasks run
/// on `task_runner` (only those the state lets through: see `core::task::runs`), traces on
/// `tracer` (see `core::trace::agent`).
#[allow(clippy::too_many_arguments)]
pub async fn run<L: ServerLink + 'static>(
    mut state: AgentState,
    mut link: Arc<L>,
    mut relink: Relink<L>,
    probers: Probers,
    task_runner: Arc<dyn TaskRunner>,
    tracer: Arc<dyn PathTracer>,
    installer: Option<Arc<dyn Installer>>,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
    bounds: StopBounds,
) -> AgentRun<L> {
    let mut handover = None;
    let mut runs = Runs {
        probes: Probes::default(),
        tasks: TaskRuns {
            runner: task_runner,
            tasks: JoinSet::new(),
            ids: std::collections::HashMap::new(),
        },
        traces: TraceRuns {
            tracer,
            tasks: JoinSet::new(),
            requests: std::collections::HashMap::new(),
        },
    };
    let mut recv_paused_until = tokio::time::Instant::now();
    loop {
        if state.upgrades().in_probation() {
            state.handle_acknowledged(link.acknowledged_results());
        }
        link = carry_out(
            &mut state,
            link,
            &mut relink,
            &probers,
            &mut runs,
            Upgrading {
                installer: installer.as_deref(),
                clock: clock.as_ref(),
                handover: &mut handover,
            },
        )
        .await;
        if handover.is_some() {
            break;
        }
        let wait = state
            .poll_timeout()
            .as_millis()
            .saturating_sub(clock.now().as_millis());
        let recv_ready = tokio::time::Instant::now() >= recv_paused_until;
        let timer = tokio::time::sleep(Duration::from_millis(wait).min(if recv_ready {
            Duration::MAX
        } else {
            recv_paused_until - tokio::time::Instant::now()
        }));
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            Some(joined) = runs.probes.tasks.join_next_with_id(), if !runs.probes.tasks.is_empty() => {
                runs.probes.finished(&mut state, joined);
            }
            Some(joined) = runs.tasks.tasks.join_next_with_id(), if !runs.tasks.tasks.is_empty() => {
                runs.tasks.finished(&mut state, clock.now(), joined);
            }
            Some(joined) = runs.traces.tasks.join_next_with_id(), if !runs.traces.tasks.is_empty() => {
                runs.traces.finished(&mut state, joined);
            }
            received = link.recv(), if recv_ready => match received {
                Ok(event) => state.handle_event(clock.now(), event),
                Err(error) => {
                    tracing::debug!(%error, "link to the server");
                    state.handle_disconnect();
                    recv_paused_until = tokio::time::Instant::now() + RECV_PAUSE_AFTER_ERROR;
                }
            },
            () = timer => state.handle_timeout(clock.now()),
        }
    }
    tracing::warn!(
        in_flight = state.in_flight(),
        upgrading = handover.is_some(),
        "shutting down: finishing the probes in flight and delivering their results"
    );
    state.stop();
    // A task under way is not waited for: its process group is killed with it.
    if !runs.tasks.tasks.is_empty() {
        tracing::warn!(task = ?state.tasks().running(), "a task was running at stop; it is killed and not answered");
    }
    runs.tasks.tasks.abort_all();
    // Nor is a trace: the server's desk gives it up when the connection closes.
    runs.traces.tasks.abort_all();
    let deadline = tokio::time::Instant::now() + bounds.in_flight;
    loop {
        link = carry_out(
            &mut state,
            link,
            &mut relink,
            &probers,
            &mut runs,
            Upgrading {
                installer: installer.as_deref(),
                clock: clock.as_ref(),
                handover: &mut handover,
            },
        )
        .await;
        if runs.probes.tasks.is_empty() {
            break;
        }
        match tokio::time::timeout_at(deadline, runs.probes.tasks.join_next_with_id()).await {
            Ok(Some(joined)) => runs.probes.finished(&mut state, joined),
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    in_flight_bound = ?bounds.in_flight,
                    running = runs.probes.tasks.len(),
                    "probes still running at stop; their results are not sent"
                );
                break;
            }
        }
    }
    let abandoned_probes = runs.probes.tasks.len();
    runs.probes.tasks.abort_all();
    let drained = link.drain(bounds.drain).await;
    link.close().await;
    AgentRun {
        state,
        link,
        abandoned_probes,
        drained,
        handover,
    }
}

/// What carrying out an upgrade step needs.
struct Upgrading<'a> {
    /// `None` when upgrades are off (the state then never asks for a step).
    installer: Option<&'a dyn Installer>,
    clock: &'a dyn Clock,
    /// Set by a hand-over step: the run stops.
    handover: &'a mut Option<(u64, UpgradePlan)>,
}

impl Upgrading<'_> {
    /// Carries out `step` and tells the state how it went. The file work is short (a chunk is
    /// at most 1 MiB; the check hashes the binary and runs its `version` within a bound), so
    /// it is done in line.
    async fn carry_out(&mut self, state: &mut AgentState, step: UpgradeStep) {
        let Some(installer) = self.installer else {
            if let UpgradeStep::Stage { offer_id, .. } = step {
                state.handle_upgrade_failed(offer_id, "upgrades are off on this agent".into());
            }
            return;
        };
        match step {
            UpgradeStep::Send(_) => {}
            UpgradeStep::Stage { offer_id, plan } => {
                tracing::warn!(offer = offer_id, version = %plan.version, size_bytes = plan.size_bytes, "upgrade offered: downloading it from the server");
                match installer.stage(offer_id, &plan).await {
                    Ok(received) => {
                        state.handle_upgrade_staged(self.clock.now(), offer_id, received)
                    }
                    Err(error) => self.failed(state, offer_id, &error),
                }
            }
            UpgradeStep::Write {
                offer_id,
                offset,
                bytes,
            } => match installer.write(offer_id, offset, &bytes).await {
                Ok(received) => state.handle_upgrade_written(self.clock.now(), offer_id, received),
                Err(error) => self.failed(state, offer_id, &error),
            },
            UpgradeStep::Install { offer_id, plan } => {
                match installer.check(offer_id, &plan).await {
                    Ok(()) => {
                        tracing::warn!(offer = offer_id, version = %plan.version, "upgrade checked (digest, signature, version): handing over to it");
                        state.handle_upgrade_installed(offer_id);
                    }
                    Err(error) => self.failed(state, offer_id, &error),
                }
            }
            UpgradeStep::HandOver { offer_id, plan } => *self.handover = Some((offer_id, plan)),
            UpgradeStep::Commit { offer_id } => match installer.commit(offer_id).await {
                Ok(()) => tracing::warn!(
                    offer = offer_id,
                    "this new version passed its probation: committed"
                ),
                Err(error) => {
                    tracing::error!(offer = offer_id, %error, "could not tell the previous process of the commit; it will roll back at its deadline")
                }
            },
        }
    }

    fn failed(
        &self,
        state: &mut AgentState,
        offer_id: u64,
        error: &probermesh_core::ports::InstallError,
    ) {
        tracing::error!(offer = offer_id, %error, "upgrade abandoned; this version keeps running");
        state.handle_upgrade_failed(offer_id, error.to_string());
    }
}

/// Carries out every action the state has, and returns the link to use from now on.
async fn carry_out<L: ServerLink + 'static>(
    state: &mut AgentState,
    mut link: Arc<L>,
    relink: &mut Relink<L>,
    probers: &Probers,
    runs: &mut Runs,
    mut upgrading: Upgrading<'_>,
) -> Arc<L> {
    while let Some(action) = state.poll_action() {
        match action {
            AgentAction::Upgrade(step) => upgrading.carry_out(state, step).await,
            AgentAction::RunTask(run) => {
                tracing::warn!(task = run.id, command = %run.invocation, timeout = ?run.timeout, "running a task");
                let runner = Arc::clone(&runs.tasks.runner);
                let id = run.id;
                let task = runs
                    .tasks
                    .tasks
                    .spawn(async move { (id, runner.run(run).await) });
                runs.tasks.ids.insert(task.id(), id);
            }
            AgentAction::RunTrace(request) => {
                tracing::info!(trace = request.id, target = %request.target, max_hops = request.max_hops, rounds = request.rounds, "tracing the path");
                runs.traces.start(request);
            }
            AgentAction::Probe(planned) => {
                let (probers, me) = (probers.clone(), state.me().clone());
                let kind = planned.how.kind();
                let task = runs
                    .probes
                    .tasks
                    .spawn(async move { probe::run(&probers, &me, planned).await });
                runs.probes.kinds.insert(task.id(), kind);
            }
            AgentAction::Send(message) => {
                // A lost control message is repeated or moot (see AgentState).
                if let Err(error) = link.send(message).await {
                    tracing::debug!(%error, "a control message was not sent");
                }
            }
            AgentAction::Deliver(results) => link.enqueue_results(results),
            AgentAction::Reidentify(me) => match relink(&me) {
                Ok(new_link) => {
                    tracing::warn!(agent = %me, "the server sees this agent at another address; reconnecting as it");
                    link.close().await;
                    link = new_link;
                }
                Err(error) => {
                    tracing::error!(agent = %me, %error, "cannot reconnect under the new identity; keeping the old link");
                }
            },
            AgentAction::Notice(notice) => log(&notice),
        }
    }
    link
}

fn log(notice: &AgentNotice) {
    match notice {
        AgentNotice::Connected {
            server_version,
            observed_addr,
        } => tracing::info!(%server_version, %observed_addr, "connected to the server"),
        AgentNotice::PoolAccepted { revision, blocks } => {
            tracing::info!(revision, blocks, "target pool updated");
        }
        AgentNotice::PoolRefused {
            revision,
            field,
            reason,
        } => tracing::error!(
            revision,
            %field,
            %reason,
            "refused the server's target pool; keeping the previous one and telling the server"
        ),
        AgentNotice::ProbesSkipped {
            kind,
            skipped,
            limit,
        } => tracing::warn!(
            %kind,
            skipped,
            limit,
            "probes of the last round were skipped: they could not start before the end of its start spread, because this many of their kind were running (raise -agent.probe.{kind}-max-in-flight, or lower the targets or the timeout) or the agent was too busy to start them"
        ),
        AgentNotice::FilesNotSent { paths } => tracing::error!(
            ?paths,
            "the pool names files whose contents the server did not send (a server older than this agent); this agent does not read files the server names, so the probes that need them fail: upgrade the server"
        ),
        AgentNotice::Unhandled { kind } => {
            tracing::debug!(kind, "server message not handled by this version");
        }
    }
}
