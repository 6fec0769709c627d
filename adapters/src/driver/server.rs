//! The server's driver: runs `core::server::ServerState` over a `ReportSource`, a `Clock`, a
//! `MetricsExporter`, a `PoolSource` (the probe file) and a `Store` (the restart handoff).
//! Two loops feed the state: the link's events, and the window timer (which also publishes
//! the settled series once per window). Every decision is the state's; the driver carries out
//! its actions (send, close) and logs what they report. The HTTP endpoints reach the server
//! through a [`ServerHandle`] (it implements the admin adapter's `AdminApi`).
//!
//! Life cycle: [`ServerDriver::start`] files what a previous server handed over (before any
//! result comes over the link), [`ServerDriver::started`] removes that record once every
//! listener is up (a failed start keeps it for the next try), [`ServerDriver::stop`] closes the
//! link cleanly (every result handed to the state is acknowledged; agents resend the rest to
//! the next server) and hands the unsettled windows over.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use probermesh_core::aggregate::{Counters, SnapshotPart};
use probermesh_core::model::ProbeConfig;
use probermesh_core::ports::{
    Clock, LinkError, MetricsExporter, PoolSource, Record, ReportSource, Store, TaskArchive,
};
use probermesh_core::server::handoff::{self, Resumed};
use probermesh_core::server::{Actions, PoolRefusal, ServerState, TargetsKey};
use probermesh_core::snapshot::Snapshot;
use probermesh_core::task::book::{Submission, SubmitError, Submitted};
use probermesh_core::task::{AuditEntry, TaskRecord};
use tokio::task::JoinHandle;

use crate::admin::{AdminApi, TaskApi, TaskView, TraceAccepted, TraceApi, targets_json};

/// The shortest wait of the timer loop (a due time in the past is not a busy loop).
const MIN_TIMER_WAIT: Duration = Duration::from_millis(50);
/// How long a stop waits for the event loop to hand its last events to the state.
const EVENT_LOOP_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a server driver runs over.
pub struct ServerParts<R> {
    /// The agents' links.
    pub link: Arc<R>,
    /// The state, with its aggregator and pool.
    pub state: ServerState,
    /// The wall clock.
    pub clock: Arc<dyn Clock>,
    /// Where the series go.
    pub exporter: Arc<dyn MetricsExporter>,
    /// The probe file, re-read at every reload (`None`: reload answers that there is none).
    pub pool_source: Option<Arc<dyn PoolSource>>,
    /// Where unsettled windows are handed to the next server (`None`: they are dropped at
    /// stop, as the demo does); also where the task book is kept.
    pub store: Option<Arc<dyn Store>>,
    /// Where task results and the audit log go (`-server.task.meta.dir`), when tasks are on.
    pub task_archive: Option<Arc<dyn TaskArchive>>,
    /// How releases are taken for upgrades (`-server.upgrade.*`).
    pub releases: super::upgrade::ReleaseIntake,
}

impl<R> std::fmt::Debug for ServerParts<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerParts")
            .field("state", &self.state)
            .field("has_pool_source", &self.pool_source.is_some())
            .field("has_store", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

/// What a server did over its life, reported when it stops.
#[derive(Clone, Copy, Debug)]
pub struct StopReport {
    /// Results received and dropped, by the aggregator's counters.
    pub counters: Counters,
    /// Result batches sent again by agents and recognised by the link.
    pub duplicate_batches: u64,
    /// Results of the unsettled windows written to the store.
    pub handed_over: usize,
}

pub(super) struct Shared<R> {
    state: Mutex<ServerState>,
    /// The `/-/targets` generation: a number per distinct [`TargetsKey`] seen.
    targets_generation: Mutex<TargetsGeneration>,
    /// The `/api/v1/mesh` generation: one more after every change the view shows at once (a
    /// timer tick: windows settle, series expire, agents go dark; an agent connected or went
    /// away). Raised after the state changed, so a view built of the old number is rebuilt.
    mesh_generation: AtomicU64,
    /// When the timer loop sleeps until (ms since the epoch), and its wake-up: a change that
    /// brings the state's next timeout earlier (a chunk held back by the bandwidth cap, a
    /// batch's soak, a task's lifetime) wakes it, or it would only see it at its old due time
    /// (a window's end).
    timer_due_ms: AtomicU64,
    timer_wake: tokio::sync::Notify,
    pub(super) link: Arc<R>,
    pub(super) clock: Arc<dyn Clock>,
    exporter: Arc<dyn MetricsExporter>,
    pool_source: Option<Arc<dyn PoolSource>>,
    pub(super) store: Option<Arc<dyn Store>>,
    task_archive: Option<Arc<dyn TaskArchive>>,
    pub(super) releases: super::upgrade::ReleaseIntake,
}

/// How often task results past their retention are removed.
const TASK_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Numbers the `/-/targets` keys: a new number whenever the key differs from the last one
/// numbered, so a number is never given to two keys (a key seen again gets a new one).
#[derive(Debug, Default)]
struct TargetsGeneration {
    last: Option<TargetsKey>,
    generation: u64,
}

impl<R: ReportSource> Shared<R> {
    pub(super) fn state(&self) -> MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The mesh view changed: the endpoints' kept rendering is old.
    fn mesh_changed(&self) {
        self.mesh_generation.fetch_add(1, Ordering::Release);
    }

    fn targets_generation_of(&self, key: TargetsKey) -> u64 {
        let mut numbered = self
            .targets_generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if numbered.last.as_ref() != Some(&key) {
            numbered.generation += 1;
            numbered.last = Some(key);
        }
        numbered.generation
    }

    /// Publishes the settled families again (after a window settled or series expired).
    fn publish_settled(&self) {
        let snapshot = self
            .state()
            .snapshot_part(self.clock.now(), SnapshotPart::Settled);
        self.exporter.publish(&snapshot);
    }

    /// Writes the task book, files the finished runs and the audit lines (off the async
    /// workers). Before any send: an agent is sent a task only once the book says so.
    async fn keep_tasks(
        &self,
        book: Option<Vec<u8>>,
        records: Vec<TaskRecord>,
        audit: Vec<AuditEntry>,
    ) {
        if book.is_none() && records.is_empty() && audit.is_empty() {
            return;
        }
        let store = self.store.clone();
        let archive = self.task_archive.clone();
        let kept = tokio::task::spawn_blocking(move || {
            if let (Some(bytes), Some(store)) = (book, &store)
                && let Err(error) = store.write(Record::Tasks, &bytes)
            {
                tracing::error!(%error, "cannot write the task book: a restarted server would not know which tasks it sent");
            }
            let Some(archive) = archive else {
                return;
            };
            for record in &records {
                if let Err(error) = archive.file(record) {
                    tracing::error!(%error, task = record.task_id, agent = %record.agent, "cannot file a task result");
                }
            }
            for entry in &audit {
                if let Err(error) = archive.audit(entry) {
                    tracing::error!(%error, task = ?entry.task_id, "cannot write the task audit log");
                }
            }
        })
        .await;
        if let Err(error) = kept {
            tracing::error!(%error, "keeping task records failed");
        }
    }

    /// Wakes the timer loop when the state's next timeout is now earlier than the one it
    /// sleeps until.
    /// Both sides read and write the due time under the state's lock, so no change falls
    /// between the loop's reading of the state and its storing of the due time.
    fn wake_timer_if_sooner(&self) {
        let sooner = {
            let state = self.state();
            state.next_timeout().as_millis() < self.timer_due_ms.load(Ordering::SeqCst)
        };
        if sooner {
            self.timer_wake.notify_one();
        }
    }

    pub(super) async fn perform(&self, actions: Actions) {
        self.wake_timer_if_sooner();
        for record in &actions.task_records {
            tracing::warn!(
                task = record.task_id,
                agent = %record.agent,
                state = %record.state,
                exit_code = ?record.output.exit_code,
                reason = record.reason.as_deref().unwrap_or("-"),
                "task run ended"
            );
        }
        self.keep_tasks(
            actions.persist_tasks,
            actions.task_records,
            actions.task_audit,
        )
        .await;
        self.keep_upgrade(actions.persist_upgrade).await;
        for event in &actions.upgrade_events {
            tracing::warn!("{event}");
        }
        for event in &actions.trace_events {
            tracing::warn!("{event}");
        }
        for (connection, reason) in actions.close {
            tracing::warn!(%connection, %reason, "protocol violation; closing the connection");
            self.link.close(connection, &reason);
        }
        let intake = actions.intake;
        if intake.dropped_late + intake.dropped_future > 0 {
            tracing::info!(
                late = intake.dropped_late,
                future = intake.dropped_future,
                "results outside the open windows dropped (check the agents' clocks)"
            );
        }
        for refusal in &actions.refused {
            let block = refusal
                .block
                .as_ref()
                .map(|(region, kind)| format!("{region} {kind}"));
            tracing::error!(
                agent = %refusal.agent,
                revision = refusal.revision,
                block = block.as_deref().unwrap_or("-"),
                "an agent refused its target pool and keeps probing its previous one: {refusal}"
            );
        }
        for (connection, message) in actions.send {
            match self.link.send_to(connection, message).await {
                Ok(()) => {}
                // The message cannot be encoded (a pool over the frame limit): loud.
                Err(error @ LinkError::Protocol { .. }) => {
                    tracing::error!(%connection, %error, "a message to an agent could not be sent");
                }
                Err(error) => tracing::debug!(%connection, %error, "sending to an agent failed"),
            }
        }
        self.send_chunks(actions.chunks).await;
    }

    fn replace_file_configs(&self, configs: Vec<ProbeConfig>) -> Result<Actions, String> {
        self.state()
            .reload(self.clock.now(), configs)
            .map_err(|error| error.to_string())
    }

    async fn reload(&self) -> Result<(), String> {
        let Some(source) = &self.pool_source else {
            return Err("no -server.probe.file to reload".to_owned());
        };
        // Reading and parsing the file (and the files it names) blocks: off the async workers.
        let loading = Arc::clone(source);
        let loaded = tokio::task::spawn_blocking(move || loading.load())
            .await
            .map_err(|error| format!("reading the probe file failed: {error}"))
            .and_then(|loaded| loaded.map_err(|error| error.to_string()));
        let reloaded = loaded.and_then(|configs| {
            let blocks = configs.len();
            self.replace_file_configs(configs)
                .map(|actions| (blocks, actions))
                .map_err(|error| format!("probe file {}: {error}", source.describe()))
        });
        match reloaded {
            Ok((blocks, actions)) => {
                self.perform(actions).await;
                tracing::warn!(file = %source.describe(), blocks, "probe file reloaded");
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "reload failed; the running pool stays");
                Err(error)
            }
        }
    }
}

/// A running server: its two loops over the shared state.
pub struct ServerDriver<R> {
    shared: Arc<Shared<R>>,
    store: Option<Arc<dyn Store>>,
    resumed: Resumed,
    events: JoinHandle<()>,
    timer: JoinHandle<()>,
}

impl<R> std::fmt::Debug for ServerDriver<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerDriver")
            .field("resumed", &self.resumed)
            .finish_non_exhaustive()
    }
}

impl<R: ReportSource + 'static> ServerDriver<R> {
    /// Files what a previous server left in the store, then starts the loops.
    #[must_use]
    pub fn start(parts: ServerParts<R>) -> Self {
        let ServerParts {
            link,
            mut state,
            clock,
            exporter,
            pool_source,
            store,
            task_archive,
            releases,
        } = parts;
        let resumed = match &store {
            Some(store) => resume(&mut state, store.as_ref(), clock.now()),
            None => Resumed::Nothing,
        };
        if let Some(store) = &store
            && state.tasks().is_some()
        {
            resume_tasks(&mut state, store.as_ref());
        }
        if let Some(store) = &store {
            resume_upgrade(&mut state, store.as_ref(), &releases);
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            targets_generation: Mutex::new(TargetsGeneration::default()),
            mesh_generation: AtomicU64::new(0),
            timer_due_ms: AtomicU64::new(0),
            timer_wake: tokio::sync::Notify::new(),
            link,
            clock,
            exporter,
            pool_source,
            store: store.clone(),
            task_archive,
            releases,
        });
        let events = tokio::spawn(event_loop(Arc::clone(&shared)));
        let timer = tokio::spawn(timer_loop(Arc::clone(&shared)));
        Self {
            shared,
            store,
            resumed,
            events,
            timer,
        }
    }

    /// Every listener is up: the handed-over results now live in this process, so their
    /// record goes.
    pub fn started(&self) {
        if let Some(store) = &self.store
            && let Err(error) = handoff::finish_resume(store.as_ref(), &self.resumed)
        {
            tracing::error!(
                %error,
                "cannot remove the handoff record; remove it by hand, or the next start files its results again"
            );
        }
    }

    /// What the start found in the store.
    #[must_use]
    pub fn resumed(&self) -> &Resumed {
        &self.resumed
    }

    /// What the endpoints and the binary use to reach the server.
    #[must_use]
    pub fn handle(&self) -> ServerHandle<R> {
        ServerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Stops a start that failed after [`Self::start`]: the loops end, nothing is handed over
    /// and the handoff record (if one was filed) stays for the next start.
    pub fn abandon(self) {
        self.events.abort();
        self.timer.abort();
    }

    /// Stops everything: the link closes every connection cleanly, the event loop hands the
    /// last events to the state, then the unsettled windows go to the store.
    pub async fn stop(mut self) -> StopReport {
        self.timer.abort();
        self.shared.link.shutdown().await;
        if tokio::time::timeout(EVENT_LOOP_STOP_TIMEOUT, &mut self.events)
            .await
            .is_err()
        {
            tracing::error!("the event loop did not finish within 5 s; stopping it");
            self.events.abort();
        }
        let now = self.shared.clock.now();
        let (counters, window, open) = {
            let mut state = self.shared.state();
            (state.counters(), state.window(), state.take_open_results())
        };
        let handed_over = match &self.store {
            Some(store) => hand_over(store.as_ref(), now, window, open),
            None => 0,
        };
        StopReport {
            counters,
            duplicate_batches: self.shared.link.duplicate_batches(),
            handed_over,
        }
    }
}

async fn event_loop<R: ReportSource>(shared: Arc<Shared<R>>) {
    while let Some(event) = shared.link.next_event().await {
        let agents_changed = matches!(
            event,
            probermesh_core::ports::LinkEvent::Connected { .. }
                | probermesh_core::ports::LinkEvent::Disconnected { .. }
        );
        let actions = shared.state().handle_event(shared.clock.now(), event);
        if agents_changed {
            shared.mesh_changed();
        }
        shared.perform(actions).await;
    }
}

/// Reads the rollout a previous server kept; a damaged one is set aside.
fn resume_upgrade(
    state: &mut ServerState,
    store: &dyn Store,
    releases: &super::upgrade::ReleaseIntake,
) {
    match store.read(Record::Upgrade) {
        Ok(None) => {}
        Ok(Some(bytes)) => match state.resume_upgrades(&bytes) {
            Ok(Some(rollout)) => {
                let kept = releases
                    .release_path(&rollout.release.sha256)
                    .is_some_and(|p| p.is_file());
                if rollout.phase.is_open() && !kept {
                    tracing::error!(
                        rollout = rollout.id,
                        "the rollout's release file is gone from the data directory; agents cannot download it (abort the rollout and post it again)"
                    );
                }
                tracing::warn!(rollout = rollout.id, phase = rollout.phase.label(), version = %rollout.release.version, "rollout of the previous server resumed");
            }
            Ok(None) => {}
            Err(error) => {
                let moved = store.set_aside(Record::Upgrade);
                tracing::error!(%error, moved_to = ?moved, "the rollout's record is damaged; set aside, no rollout resumed");
            }
        },
        Err(error) => {
            tracing::error!(%error, "cannot read the rollout's record; no rollout resumed")
        }
    }
}

/// Reads the task book a previous server kept; a damaged one is set aside.
fn resume_tasks(state: &mut ServerState, store: &dyn Store) {
    match store.read(Record::Tasks) {
        Ok(None) => {}
        Ok(Some(bytes)) => match state.resume_tasks(&bytes) {
            Ok(tasks) => tracing::info!(tasks, "task book of the previous server read"),
            Err(error) => {
                let moved = store.set_aside(Record::Tasks);
                tracing::error!(%error, moved_to = ?moved, "the task book is damaged; set aside, starting with an empty book (tasks in flight may be reported unreachable)");
            }
        },
        Err(error) => {
            tracing::error!(%error, "cannot read the task book; starting with an empty one")
        }
    }
}

async fn timer_loop<R: ReportSource + 'static>(shared: Arc<Shared<R>>) {
    let mut next_prune = tokio::time::Instant::now();
    loop {
        if let Some(archive) = &shared.task_archive
            && tokio::time::Instant::now() >= next_prune
        {
            next_prune = tokio::time::Instant::now() + TASK_PRUNE_INTERVAL;
            let archive = Arc::clone(archive);
            let now = shared.clock.now();
            match tokio::task::spawn_blocking(move || archive.prune(now)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(removed)) => {
                    tracing::info!(removed, "task results past their retention removed")
                }
                Ok(Err(error)) => tracing::error!(%error, "pruning task results failed"),
                Err(error) => tracing::error!(%error, "pruning task results failed"),
            }
        }
        let due = {
            let state = shared.state();
            let due = state.next_timeout();
            shared.timer_due_ms.store(due.as_millis(), Ordering::SeqCst);
            due
        };
        let wait = Duration::from_millis(
            due.as_millis()
                .saturating_sub(shared.clock.now().as_millis()),
        );
        tokio::select! {
            () = tokio::time::sleep(wait.max(MIN_TIMER_WAIT)) => {}
            // Something is due sooner: compute the deadline again.
            () = shared.timer_wake.notified() => continue,
        }
        let (actions, settled) = {
            let mut state = shared.state();
            let now = shared.clock.now();
            let settled = now >= state.aggregation_due();
            (state.handle_timeout(now), settled)
        };
        // Only a window's settling (and the expiries that come with it) changes the published
        // series; the timer also wakes for chunks, soaks, tasks and traces, often.
        if settled {
            shared.mesh_changed();
            let publisher = Arc::clone(&shared);
            // Off the async workers: a big mesh takes a few hundred milliseconds to render.
            let _ = tokio::task::spawn_blocking(move || publisher.publish_settled()).await;
        }
        shared.perform(actions).await;
    }
}

/// Files the store's handoff record into `state`, logging what happened.
fn resume(
    state: &mut ServerState,
    store: &dyn Store,
    now: probermesh_core::model::UnixMillis,
) -> Resumed {
    match handoff::resume(state, store, now) {
        Ok(resumed) => {
            match &resumed {
                Resumed::Nothing => {}
                Resumed::OtherWindow {
                    results,
                    theirs,
                    ours,
                } => tracing::warn!(
                    results,
                    their_window = ?theirs,
                    our_window = ?ours,
                    "the previous server aggregated over another window; its unsettled windows are not resumed"
                ),
                Resumed::Filed {
                    saved_at,
                    offered,
                    intake,
                } => tracing::warn!(
                    saved_at_ms = saved_at.as_millis(),
                    resumed = intake.accepted,
                    late = intake.dropped_late,
                    stale = intake.dropped_stale,
                    duplicate = intake.dropped_duplicate,
                    offered,
                    "resumed the previous server's unsettled windows"
                ),
                Resumed::Damaged { error, moved_to } => match moved_to {
                    Ok(to) => tracing::error!(
                        %error,
                        "previous server's windows not resumed: the handoff record is damaged (moved to {to})"
                    ),
                    Err(move_error) => tracing::error!(
                        %error,
                        %move_error,
                        "previous server's windows not resumed: the handoff record is damaged and cannot be moved aside"
                    ),
                },
            }
            resumed
        }
        Err(error) => {
            tracing::error!(%error, "previous server's windows not resumed");
            Resumed::Nothing
        }
    }
}

/// Writes the unsettled windows to `store`; how many results it wrote (errors are logged:
/// the process is ending).
fn hand_over(
    store: &dyn Store,
    now: probermesh_core::model::UnixMillis,
    window: Duration,
    open: Vec<probermesh_core::model::ProbeResult>,
) -> usize {
    let offered = open.len();
    match handoff::hand_over(store, now, window, open) {
        Ok(written) => {
            if written.left_out > 0 {
                tracing::error!(
                    left_out = written.left_out,
                    "more unsettled results than a handoff record holds; the oldest are lost"
                );
            }
            if written.written > 0 {
                tracing::info!(
                    results = written.written,
                    "unsettled windows handed over to the next server"
                );
            }
            written.written
        }
        Err(error) => {
            tracing::error!(
                %error,
                lost = offered,
                "cannot hand the unsettled windows over; their results are lost"
            );
            0
        }
    }
}

/// The server as its endpoints and the binary see it.
pub struct ServerHandle<R> {
    pub(super) shared: Arc<Shared<R>>,
}

impl<R> std::fmt::Debug for ServerHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle").finish_non_exhaustive()
    }
}

impl<R> Clone for ServerHandle<R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<R: ReportSource + 'static> ServerHandle<R> {
    /// Re-reads the probe file and pushes what changed; `Err` names the problem, and the
    /// running pool stays.
    ///
    /// # Errors
    /// The problem, in words.
    pub async fn reload(&self) -> Result<(), String> {
        self.shared.reload().await
    }

    /// Replaces the probe-file blocks (the demo sets its own) and pushes the change.
    ///
    /// # Errors
    /// Why the pool was not replaced (it would not fit a message).
    pub async fn set_file_configs(&self, configs: Vec<ProbeConfig>) -> Result<(), String> {
        let actions = self.shared.replace_file_configs(configs)?;
        self.shared.perform(actions).await;
        Ok(())
    }

    /// The series the server would expose now.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        self.shared.state().snapshot(self.shared.clock.now())
    }

    /// Agents connected now.
    #[must_use]
    pub fn connected(&self) -> usize {
        self.shared.state().connected()
    }
}

#[async_trait::async_trait]
impl<R: ReportSource + 'static> TaskApi for ServerHandle<R> {
    fn tasks_enabled(&self) -> bool {
        self.shared.state().tasks().is_some()
    }

    async fn submit_task(&self, submission: Submission) -> Result<Submitted, SubmitError> {
        let now = self.shared.clock.now();
        let refusal_text = |error: &SubmitError| {
            probermesh_core::task::book::TaskBook::refusal_audit(
                now,
                &submission,
                &error.to_string(),
            )
        };
        let result = self.shared.state().submit_task(now, submission.clone());
        match result {
            Ok((submitted, actions)) => {
                tracing::warn!(
                    task = submitted.id,
                    actor = %submission.actor,
                    remote = %submission.remote,
                    selector = %format!("{} {:?}", submission.op, submission.pattern),
                    command = %submission.command,
                    matched = submitted.matched.len(),
                    "task submitted"
                );
                self.shared.perform(actions).await;
                Ok(submitted)
            }
            Err(error) => {
                tracing::warn!(actor = %submission.actor, remote = %submission.remote, %error, "task refused");
                self.shared
                    .keep_tasks(None, Vec::new(), vec![refusal_text(&error)])
                    .await;
                Err(error)
            }
        }
    }

    async fn refuse_task(&self, label: &'static str, entry: AuditEntry) {
        self.shared.state().count_refused_submission(label);
        self.shared.keep_tasks(None, Vec::new(), vec![entry]).await;
    }

    async fn task(&self, id: u64) -> Option<TaskView> {
        let task = self.shared.state().task(id).cloned();
        let records = match &self.shared.task_archive {
            Some(archive) => {
                let archive = Arc::clone(archive);
                tokio::task::spawn_blocking(move || archive.results(id))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default()
            }
            None => Vec::new(),
        };
        (task.is_some() || !records.is_empty()).then_some(TaskView { task, records })
    }

    fn now(&self) -> probermesh_core::model::UnixMillis {
        self.shared.clock.now()
    }
}

#[async_trait::async_trait]
impl<R: ReportSource + 'static> TraceApi for ServerHandle<R> {
    fn trace_shape(&self) -> Option<probermesh_core::trace::trigger::TraceShape> {
        self.shared
            .state()
            .trace_desk()
            .map(|desk| desk.config().shape)
    }

    async fn request_trace(
        &self,
        ask: probermesh_core::server::OperatorAsk,
    ) -> Result<TraceAccepted, probermesh_core::server::OperatorTraceError> {
        let now = self.shared.clock.now();
        let result = self.shared.state().request_operator_trace(now, ask);
        let (request, agent, actions) = result?;
        self.shared.perform(actions).await;
        Ok(TraceAccepted {
            id: request.id,
            agent,
            target: request.target,
        })
    }

    /// Copied under the state's lock (at most the query's limit of records, and the traces
    /// in flight: one per agent at most).
    fn trace_records(
        &self,
        query: &probermesh_core::trace::store::TraceQuery,
    ) -> Option<crate::admin::TraceListing> {
        let state = self.shared.state();
        let records = state.traces()?.query(query).into_iter().cloned().collect();
        let in_flight = state
            .trace_desk()?
            .in_flight()
            .iter()
            .filter(|(_, flight)| {
                let pair = flight.pair.as_ref();
                query
                    .source
                    .as_ref()
                    .is_none_or(|s| pair.is_some_and(|p| &p.source == s))
                    && query
                        .target
                        .as_ref()
                        .is_none_or(|t| pair.is_some_and(|p| &p.target == t))
                    && query.agent.as_ref().is_none_or(|a| &flight.agent == a)
            })
            .map(|(id, flight)| (*id, flight.clone()))
            .collect();
        Some((records, in_flight))
    }

    fn now(&self) -> probermesh_core::model::UnixMillis {
        self.shared.clock.now()
    }
}

#[async_trait::async_trait]
impl<R: ReportSource + 'static> AdminApi for ServerHandle<R> {
    fn metrics(&self) -> Vec<u8> {
        let live = self
            .shared
            .state()
            .snapshot_part(self.shared.clock.now(), SnapshotPart::Live);
        self.shared.exporter.scrape(&live)
    }

    fn targets_generation(&self) -> u64 {
        let key = self.shared.state().targets_key(self.shared.clock.now());
        self.shared.targets_generation_of(key)
    }

    /// The key, the pool and the refusals are taken under one lock, so the JSON is of the
    /// generation it is answered with; the JSON is rendered after the lock is released.
    fn targets_json(&self) -> (u64, String) {
        let now = self.shared.clock.now();
        let (key, regions, refusals) = {
            let state = self.shared.state();
            let refusals: Vec<PoolRefusal> = state.pool_refusals().into_iter().cloned().collect();
            (state.targets_key(now), state.targets(now), refusals)
        };
        let generation = self.shared.targets_generation_of(key);
        let refusals: Vec<&PoolRefusal> = refusals.iter().collect();
        (generation, targets_json(&regions, &refusals))
    }

    async fn reload(&self) -> Result<(), String> {
        self.shared.reload().await
    }

    fn ready(&self) -> bool {
        true
    }

    fn task_api(&self) -> Option<Arc<dyn TaskApi>> {
        Some(Arc::new(self.clone()))
    }

    fn upgrade_api(&self) -> Option<Arc<dyn crate::admin::UpgradeApi>> {
        Some(Arc::new(self.clone()))
    }

    fn trace_api(&self) -> Option<Arc<dyn TraceApi>> {
        Some(Arc::new(self.clone()))
    }

    fn mesh_generation(&self) -> u64 {
        self.shared.mesh_generation.load(Ordering::Acquire)
    }

    /// Built under the state's lock; the JSON is rendered by the caller, after it is released.
    fn mesh_view(&self) -> Option<probermesh_core::mesh::MeshView> {
        let now = self.shared.clock.now();
        let view = self.shared.state().mesh_view(now);
        Some(view)
    }

    fn mesh_pair(
        &self,
        source: &probermesh_core::model::Region,
        target: &probermesh_core::model::Region,
    ) -> Option<probermesh_core::mesh::PairView> {
        let now = self.shared.clock.now();
        self.shared.state().mesh_pair(now, source, target)
    }
}
