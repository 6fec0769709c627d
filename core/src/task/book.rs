//! The server's book of tasks, sans-IO: for every task, which agents it matched and where
//! each agent's run stands; what to send to an agent that connects; what to file when an
//! answer comes or a lifetime runs out.
//!
//! Delivery is at most once per agent (decision 8, and the reason the book is persisted):
//! a task is sent to an agent's connections of one process (its `instance_id`) only. Sent
//! again to the same process after a reconnection (the agent answers again, or keeps
//! quiet while it runs it), never to another process: an agent that restarted before it
//! answered is `unreachable`. The book is written to the store before any task goes out
//! (see `Actions::persist_tasks`), so a restarted server knows what it sent.
//!
//! Matching: a task is for the agents whose region the selector selects (anchored, as
//! documented, not as the Go code did), among the agents connected or alive when it is
//! submitted, and those that connect within its lifetime. A request that would reach more
//! than [`TaskSettings::max_agents`] agents needs `"confirm": true`; without it, agents that
//! connect later are taken only up to that number.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{AuditAction, AuditEntry, TaskRecord, TaskState};
use crate::link::{Signature, TaskOutput, TaskSpec};
use crate::matcher::{MatcherError, RegionMatcher};
use crate::model::{AgentId, UnixMillis};
use crate::wire::{MAX_COMMAND_LEN, MAX_TASK_OUTPUT_LEN, MAX_TEXT_LEN};

/// How the server dispatches tasks (`-server.task.*`).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TaskSettings {
    /// How long a task waits for agents to connect (`-server.task.lifetime`, 5 min by
    /// default; the Go tasks lived 10 s). A request's `"ttl"` may ask for less or more, up
    /// to [`Self::max_lifetime`].
    pub lifetime: Duration,
    /// The longest lifetime a request may ask for (24 h).
    pub max_lifetime: Duration,
    /// The longest a command may run (`-server.task.timeout`, 30 s); a request's
    /// `"timeout"` may lower it. Agents also cap it (`-agent.task.timeout`).
    pub timeout: Duration,
    /// Bytes of stdout and of stderr kept per run (`-server.task.output-limit`, 64 KiB).
    pub output_limit_bytes: usize,
    /// Agents a request may reach without `"confirm": true` (`-server.task.max-agents`).
    pub max_agents: usize,
    /// Tasks the book keeps; the oldest finished ones are forgotten first (their files stay).
    pub max_tasks: usize,
    /// Agent runs the book keeps over all its tasks.
    pub max_runs: usize,
    /// How long after its lifetime plus its timeout a sent task still waits for an answer.
    pub answer_grace: Duration,
    /// How long a finished task stays in the book (`GET /-/task/<id>` still answers from
    /// the archive after).
    pub retention: Duration,
}

impl Default for TaskSettings {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(300),
            max_lifetime: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(30),
            output_limit_bytes: 64 * 1024,
            max_agents: 50,
            max_tasks: 1_024,
            max_runs: 100_000,
            answer_grace: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The parts of a task its operator signed (`probermesh task --key`): the server must send
/// them exactly as they are, or the signature breaks.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct SignedParts {
    /// The id the operator chose.
    pub id: u64,
    /// The expiry the operator chose.
    pub expires_at: UnixMillis,
    /// The timeout the operator chose.
    pub timeout: Duration,
    /// The output limit the operator chose.
    pub output_limit_bytes: usize,
    /// The signature over `core::wire::task_signing_bytes`.
    pub signature: Signature,
}

/// A task as an operator submits it (`POST /-/task`).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Submission {
    /// The region operator (`expr`: `=`, `!=`, `=~`, `!~`), as written.
    pub op: String,
    /// The region pattern (`region`).
    pub pattern: String,
    /// The command line (`cmd`).
    pub command: String,
    /// `"timeout"`: lowers the server's timeout.
    pub timeout: Option<Duration>,
    /// `"ttl"`: the task's lifetime instead of the server's.
    pub lifetime: Option<Duration>,
    /// `"confirm": true`: reach more agents than `max_agents`.
    pub confirm: bool,
    /// The signed parts, for a signed task.
    pub signed: Option<SignedParts>,
    /// Who submits (the credential's identity).
    pub actor: String,
    /// From where.
    pub remote: String,
}

/// An agent the server knows of when a task is submitted or when it connects.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct KnownAgent {
    /// The agent.
    pub agent: AgentId,
    /// Its connection, when it is connected.
    pub link: Option<AgentLink>,
}

/// What a connected agent's handshake said.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct AgentLink {
    /// The agent process (`instance_id` of its hello).
    pub instance: u64,
    /// The connection's protocol version.
    pub protocol_version: u16,
    /// Whether it named the `task` feature (`-agent.task`).
    pub takes_tasks: bool,
}

/// Why a submission was refused (nothing was dispatched).
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// A field is missing or wrong.
    #[error("{field}: {why}")]
    BadRequest {
        /// The JSON field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The selector matches no agent the server knows.
    #[error("no agent matches {op} {pattern:?} (known agents: {known}); nothing was dispatched")]
    NoAgent {
        /// The operator.
        op: String,
        /// The pattern.
        pattern: String,
        /// How many agents the server knows.
        known: usize,
    },
    /// More agents match than `-server.task.max-agents` and the request did not confirm.
    #[error(
        "{matched} agents match, more than -server.task.max-agents ({max}); nothing was \
         dispatched: narrow the pattern, or send \"confirm\": true to reach them all"
    )]
    TooManyAgents {
        /// How many match.
        matched: usize,
        /// The limit.
        max: usize,
    },
    /// A signed task's id is already in the book.
    #[error("task id {id} exists already; a signed task needs a new id")]
    DuplicateId {
        /// The id.
        id: u64,
    },
    /// The book holds as many unfinished tasks or runs as it may.
    #[error(
        "the server holds {tasks} unfinished tasks and {runs} runs, its limit; try again later"
    )]
    Full {
        /// Unfinished tasks.
        tasks: usize,
        /// Runs over all tasks.
        runs: usize,
    },
}

impl SubmitError {
    /// A bounded label for metrics.
    #[must_use]
    pub const fn label(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "bad_request",
            Self::NoAgent { .. } => "no_agent",
            Self::TooManyAgents { .. } => "too_many_agents",
            Self::DuplicateId { .. } => "duplicate_id",
            Self::Full { .. } => "full",
        }
    }
}

/// One agent's run of a task, as the book knows it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct AgentRun {
    /// Where it stands.
    pub state: TaskState,
    /// The agent process it was sent to.
    pub instance: Option<u64>,
    /// Why it was refused or is unreachable.
    pub reason: Option<String>,
    /// When it last changed.
    pub updated_at: UnixMillis,
}

/// One task in the book.
#[derive(Clone, Debug)]
pub struct BookTask {
    /// What agents are sent.
    pub spec: TaskSpec,
    /// When it was submitted.
    pub submitted_at: UnixMillis,
    /// Who submitted it.
    pub actor: String,
    /// From where.
    pub remote: String,
    /// Whether the request confirmed reaching more than `max_agents`.
    pub confirmed: bool,
    /// The runs, by agent.
    pub runs: BTreeMap<AgentId, AgentRun>,
    /// When its last run became final after its lifetime (its `finished` audit line).
    pub finished_at: Option<UnixMillis>,
    matcher: Option<RegionMatcher>,
}

impl BookTask {
    fn selects(&self, agent: &AgentId) -> bool {
        self.matcher
            .as_ref()
            .is_some_and(|m| m.matches(&agent.region))
    }

    fn counts(&self) -> BTreeMap<TaskState, usize> {
        let mut counts = BTreeMap::new();
        for run in self.runs.values() {
            *counts.entry(run.state).or_default() += 1;
        }
        counts
    }

    /// The selector as written (`=~ "eu-.*"`).
    #[must_use]
    pub fn selector(&self) -> String {
        format!("{} {:?}", self.spec.region_op, self.spec.region_pattern)
    }
}

/// What a change of the book asks of the server.
#[derive(Debug, Default, PartialEq)]
pub struct BookChanges {
    /// Tasks to send, to connected agents (write the book first).
    pub sends: Vec<(AgentId, TaskSpec)>,
    /// Runs that became final, to file.
    pub records: Vec<TaskRecord>,
    /// Audit lines to write.
    pub audit: Vec<AuditEntry>,
}

impl BookChanges {
    fn extend(&mut self, other: Self) {
        self.sends.extend(other.sends);
        self.records.extend(other.records);
        self.audit.extend(other.audit);
    }
}

/// What a submission dispatched.
#[derive(Debug, PartialEq)]
pub struct Submitted {
    /// The task's id.
    pub id: u64,
    /// When it stops waiting for agents.
    pub expires_at: UnixMillis,
    /// The agents it matched, each with its first state and reason.
    pub matched: Vec<(AgentId, TaskState, Option<String>)>,
    /// What to send, file and audit.
    pub changes: BookChanges,
}

/// Submissions by outcome and runs by final state since the start.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct TaskCounts {
    /// Submissions: `accepted`, or a [`SubmitError::label`], or a refusal the endpoints made
    /// (`unauthorized`, `disabled`).
    pub submissions: BTreeMap<&'static str, u64>,
    /// Runs that became final, by state.
    pub runs: BTreeMap<TaskState, u64>,
}

/// An agent's answer to a task.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// The command ran.
    Output(TaskOutput),
    /// The agent refused it.
    Refused(String),
}

/// The server's tasks between events.
#[derive(Debug)]
pub struct TaskBook {
    settings: TaskSettings,
    tasks: BTreeMap<u64, BookTask>,
    last_id: u64,
    dirty: bool,
    counts: TaskCounts,
}

fn refusal_reason(link: Option<&AgentLink>) -> Option<String> {
    let link = link?;
    if link.protocol_version < 2 {
        Some("the agent speaks protocol v1, which carries no tasks (upgrade the agent)".into())
    } else if !link.takes_tasks {
        Some("the agent does not run tasks (it was started without -agent.task)".into())
    } else {
        None
    }
}

fn bad(field: &'static str, why: impl Into<String>) -> SubmitError {
    SubmitError::BadRequest {
        field,
        why: why.into(),
    }
}

impl TaskBook {
    /// An empty book.
    #[must_use]
    pub fn new(settings: TaskSettings) -> Self {
        Self {
            settings,
            tasks: BTreeMap::new(),
            last_id: 0,
            dirty: false,
            counts: TaskCounts::default(),
        }
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> &TaskSettings {
        &self.settings
    }

    /// Counts since the start.
    #[must_use]
    pub fn counts(&self) -> &TaskCounts {
        &self.counts
    }

    /// Counts a submission the endpoints refused before it reached the book.
    pub fn count_refused_submission(&mut self, label: &'static str) {
        *self.counts.submissions.entry(label).or_default() += 1;
    }

    /// Whether the book changed since [`Self::mark_saved`].
    #[must_use]
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The book was written to the store.
    pub fn mark_saved(&mut self) {
        self.dirty = false;
    }

    /// A task by id.
    #[must_use]
    pub fn task(&self, id: u64) -> Option<&BookTask> {
        self.tasks.get(&id)
    }

    /// Every task, by id.
    pub fn tasks(&self) -> impl Iterator<Item = &BookTask> {
        self.tasks.values()
    }

    /// Dispatches `submission` at `now` to the agents of `known` it selects.
    ///
    /// # Errors
    /// [`SubmitError`]; nothing is dispatched then.
    pub fn submit(
        &mut self,
        now: UnixMillis,
        submission: Submission,
        known: &[KnownAgent],
    ) -> Result<Submitted, SubmitError> {
        let result = self.try_submit(now, submission, known);
        let label = match &result {
            Ok(_) => "accepted",
            Err(error) => error.label(),
        };
        *self.counts.submissions.entry(label).or_default() += 1;
        result
    }

    fn try_submit(
        &mut self,
        now: UnixMillis,
        submission: Submission,
        known: &[KnownAgent],
    ) -> Result<Submitted, SubmitError> {
        let settings = self.settings.clone();
        if submission.pattern.len() > MAX_TEXT_LEN {
            return Err(bad("region", format!("longer than {MAX_TEXT_LEN} bytes")));
        }
        let matcher = RegionMatcher::new(&submission.op, &submission.pattern).map_err(|e| {
            let field = match e {
                MatcherError::UnknownOperator { .. } => "expr",
                MatcherError::BadRegex { .. } => "region",
            };
            bad(field, e.to_string())
        })?;
        let command = submission.command.trim().to_owned();
        if command.is_empty() {
            return Err(bad("cmd", "empty"));
        }
        if command.len() > MAX_COMMAND_LEN {
            return Err(bad("cmd", format!("longer than {MAX_COMMAND_LEN} bytes")));
        }
        let (id, expires_at, timeout, output_limit_bytes, signature) = match &submission.signed {
            Some(signed) => {
                if self.tasks.contains_key(&signed.id) {
                    return Err(SubmitError::DuplicateId { id: signed.id });
                }
                if signed.expires_at <= now {
                    return Err(bad("expires_at_ms", "the signed task has expired"));
                }
                if signed.expires_at > now.saturating_add(settings.max_lifetime) {
                    return Err(bad(
                        "expires_at_ms",
                        format!(
                            "more than {} s from now, the longest lifetime",
                            settings.max_lifetime.as_secs()
                        ),
                    ));
                }
                if signed.timeout.is_zero() || signed.timeout > settings.timeout {
                    return Err(bad(
                        "timeout",
                        format!("must be between 1 ms and {} s", settings.timeout.as_secs()),
                    ));
                }
                if signed.output_limit_bytes == 0 || signed.output_limit_bytes > MAX_TASK_OUTPUT_LEN
                {
                    return Err(bad(
                        "output_limit_bytes",
                        format!("must be between 1 and {MAX_TASK_OUTPUT_LEN}"),
                    ));
                }
                (
                    signed.id,
                    signed.expires_at,
                    signed.timeout,
                    signed.output_limit_bytes,
                    Some(signed.signature),
                )
            }
            None => {
                let timeout = match submission.timeout {
                    Some(t) if t.is_zero() => return Err(bad("timeout", "must be positive")),
                    Some(t) => t.min(settings.timeout),
                    None => settings.timeout,
                };
                let lifetime = match submission.lifetime {
                    Some(t) if t.is_zero() => return Err(bad("ttl", "must be positive")),
                    Some(t) if t > settings.max_lifetime => {
                        return Err(bad(
                            "ttl",
                            format!("longer than {} s", settings.max_lifetime.as_secs()),
                        ));
                    }
                    Some(t) => t,
                    None => settings.lifetime,
                };
                // Ids grow with time, so a server that lost its book never reuses one an
                // agent remembers.
                let id = (self.last_id + 1).max(now.as_millis().saturating_mul(1_000));
                (
                    id,
                    now.saturating_add(lifetime),
                    timeout,
                    settings.output_limit_bytes,
                    None,
                )
            }
        };
        let selected: Vec<&KnownAgent> = known
            .iter()
            .filter(|k| matcher.matches(&k.agent.region))
            .collect();
        if selected.is_empty() {
            return Err(SubmitError::NoAgent {
                op: submission.op,
                pattern: submission.pattern,
                known: known.len(),
            });
        }
        if selected.len() > settings.max_agents && !submission.confirm {
            return Err(SubmitError::TooManyAgents {
                matched: selected.len(),
                max: settings.max_agents,
            });
        }
        self.forget_finished(selected.len());
        let unfinished = self
            .tasks
            .values()
            .filter(|t| t.finished_at.is_none())
            .count();
        let runs: usize = self.tasks.values().map(|t| t.runs.len()).sum();
        if self.tasks.len() >= settings.max_tasks || runs + selected.len() > settings.max_runs {
            return Err(SubmitError::Full {
                tasks: unfinished,
                runs,
            });
        }
        let spec = TaskSpec {
            id,
            command: command.clone(),
            timeout,
            output_limit_bytes,
            expires_at,
            region_op: matcher.op(),
            region_pattern: submission.pattern.clone(),
            signature,
        };
        let mut task = BookTask {
            spec: spec.clone(),
            submitted_at: now,
            actor: submission.actor.clone(),
            remote: submission.remote.clone(),
            confirmed: submission.confirm,
            runs: BTreeMap::new(),
            finished_at: None,
            matcher: Some(matcher),
        };
        let mut changes = BookChanges::default();
        let mut matched = Vec::new();
        for known in &selected {
            let run = first_run(now, known.link.as_ref());
            matched.push((known.agent.clone(), run.state, run.reason.clone()));
            place_run(
                &mut task,
                &known.agent,
                run,
                TaskOutput::default(),
                &mut self.counts,
                &mut changes,
            );
        }
        changes.audit.push(AuditEntry {
            at: now,
            action: AuditAction::Submitted,
            actor: submission.actor,
            remote: submission.remote,
            task_id: Some(id),
            selector: task.selector(),
            command,
            signed: spec.signature.is_some(),
            matched: selected.iter().map(|k| k.agent.clone()).collect(),
            outcome: "accepted".into(),
        });
        self.last_id = self.last_id.max(id);
        self.tasks.insert(id, task);
        self.dirty = true;
        Ok(Submitted {
            id,
            expires_at,
            matched,
            changes,
        })
    }

    /// The audit line of a refused submission.
    #[must_use]
    pub fn refusal_audit(now: UnixMillis, submission: &Submission, why: &str) -> AuditEntry {
        AuditEntry {
            at: now,
            action: AuditAction::Refused,
            actor: submission.actor.clone(),
            remote: submission.remote.clone(),
            task_id: None,
            selector: format!("{} {:?}", submission.op, submission.pattern),
            command: submission.command.clone(),
            signed: submission.signed.is_some(),
            matched: Vec::new(),
            outcome: why.to_owned(),
        }
    }

    /// Forgets the oldest finished tasks until one more task and `new_runs` more runs fit.
    fn forget_finished(&mut self, new_runs: usize) {
        loop {
            let runs: usize = self.tasks.values().map(|t| t.runs.len()).sum();
            if self.tasks.len() < self.settings.max_tasks
                && runs + new_runs <= self.settings.max_runs
            {
                return;
            }
            let Some(oldest) = self
                .tasks
                .iter()
                .filter(|(_, t)| t.finished_at.is_some())
                .min_by_key(|(_, t)| t.finished_at)
                .map(|(id, _)| *id)
            else {
                return;
            };
            self.tasks.remove(&oldest);
            self.dirty = true;
        }
    }

    /// Agent `agent` connected at `now`: the live tasks for it, to send (and the runs that
    /// ended with it: a new process of an agent a task was sent to).
    pub fn connected(&mut self, now: UnixMillis, agent: &AgentId, link: AgentLink) -> BookChanges {
        let mut changes = BookChanges::default();
        let max_agents = self.settings.max_agents;
        let max_runs = self.settings.max_runs;
        let mut runs_total: usize = self.tasks.values().map(|t| t.runs.len()).sum();
        for task in self.tasks.values_mut() {
            if task.finished_at.is_some() {
                continue;
            }
            let live = now <= task.spec.expires_at;
            match task.runs.get(agent).cloned() {
                Some(run) if run.state == TaskState::Pending && live => {
                    let run = first_run(now, Some(&link));
                    place_run(
                        task,
                        agent,
                        run,
                        TaskOutput::default(),
                        &mut self.counts,
                        &mut changes,
                    );
                    self.dirty = true;
                }
                Some(run) if run.state == TaskState::Running => {
                    if run.instance == Some(link.instance) {
                        changes.sends.push((agent.clone(), task.spec.clone()));
                    } else {
                        let ended = AgentRun {
                            state: TaskState::Unreachable,
                            instance: run.instance,
                            reason: Some(
                                "the agent restarted (a new process connected) before it \
                                 answered; a task is never sent twice"
                                    .into(),
                            ),
                            updated_at: now,
                        };
                        place_run(
                            task,
                            agent,
                            ended,
                            TaskOutput::default(),
                            &mut self.counts,
                            &mut changes,
                        );
                        self.dirty = true;
                    }
                }
                None if live && task.selects(agent) => {
                    let room = task.confirmed || task.runs.len() < max_agents;
                    if !room || runs_total >= max_runs {
                        continue;
                    }
                    let run = first_run(now, Some(&link));
                    place_run(
                        task,
                        agent,
                        run,
                        TaskOutput::default(),
                        &mut self.counts,
                        &mut changes,
                    );
                    runs_total += 1;
                    self.dirty = true;
                }
                _ => {}
            }
        }
        changes
    }

    /// Agent `agent` answered task `task_id` at `now`: the run becomes final (a repeated or
    /// unexpected answer changes nothing).
    pub fn answered(
        &mut self,
        now: UnixMillis,
        agent: &AgentId,
        task_id: u64,
        answer: Answer,
    ) -> BookChanges {
        let mut changes = BookChanges::default();
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return changes;
        };
        let Some(run) = task.runs.get(agent) else {
            return changes;
        };
        // Only a run that was sent can be answered (a forged or stray answer is ignored).
        if run.state != TaskState::Running {
            return changes;
        }
        let (state, reason, output) = match answer {
            Answer::Output(output) => {
                let reason =
                    (output.exit_code.is_none() && !output.timed_out && output.stdout.is_empty())
                        .then(|| String::from_utf8_lossy(&output.stderr).into_owned())
                        .filter(|r| !r.is_empty());
                (TaskState::of_output(&output), reason, output)
            }
            Answer::Refused(reason) => (TaskState::Refused, Some(reason), TaskOutput::default()),
        };
        let ended = AgentRun {
            state,
            instance: run.instance,
            reason,
            updated_at: now,
        };
        place_run(task, agent, ended, output, &mut self.counts, &mut changes);
        self.dirty = true;
        changes.extend(self.finish_due(now));
        changes
    }

    /// Advances to `now`: runs whose time ran out become `unreachable`, tasks whose runs are
    /// all final after their lifetime are finished (audited), old finished tasks forgotten.
    pub fn tick(&mut self, now: UnixMillis) -> BookChanges {
        let mut changes = BookChanges::default();
        let grace = self.settings.answer_grace;
        for task in self.tasks.values_mut() {
            if task.finished_at.is_some() {
                continue;
            }
            let answer_deadline = task
                .spec
                .expires_at
                .saturating_add(task.spec.timeout)
                .saturating_add(grace);
            let mut ended = Vec::new();
            for (agent, run) in &task.runs {
                let reason = match run.state {
                    TaskState::Pending if now > task.spec.expires_at => {
                        "the agent did not connect within the task's lifetime"
                    }
                    TaskState::Running if now > answer_deadline => {
                        "the agent did not answer within the task's lifetime and timeout"
                    }
                    _ => continue,
                };
                ended.push((
                    agent.clone(),
                    AgentRun {
                        state: TaskState::Unreachable,
                        instance: run.instance,
                        reason: Some(reason.into()),
                        updated_at: now,
                    },
                ));
            }
            for (agent, run) in ended {
                place_run(
                    task,
                    &agent,
                    run,
                    TaskOutput::default(),
                    &mut self.counts,
                    &mut changes,
                );
                self.dirty = true;
            }
        }
        changes.extend(self.finish_due(now));
        let retention = self.settings.retention;
        let before = self.tasks.len();
        self.tasks.retain(|_, task| {
            task.finished_at
                .is_none_or(|at| now.saturating_duration_since(at) <= retention)
        });
        if self.tasks.len() != before {
            self.dirty = true;
        }
        changes
    }

    fn finish_due(&mut self, now: UnixMillis) -> BookChanges {
        let mut changes = BookChanges::default();
        for task in self.tasks.values_mut() {
            if task.finished_at.is_some()
                || now <= task.spec.expires_at
                || !task.runs.values().all(|r| r.state.is_final())
            {
                continue;
            }
            task.finished_at = Some(now);
            self.dirty = true;
            let counts = task.counts();
            let outcome = counts
                .iter()
                .map(|(state, n)| format!("{state}={n}"))
                .collect::<Vec<_>>()
                .join(" ");
            changes.audit.push(AuditEntry {
                at: now,
                action: AuditAction::Finished,
                actor: task.actor.clone(),
                remote: String::new(),
                task_id: Some(task.spec.id),
                selector: task.selector(),
                command: task.spec.command.clone(),
                signed: task.spec.signature.is_some(),
                matched: task.runs.keys().cloned().collect(),
                outcome,
            });
        }
        changes
    }

    /// When [`Self::tick`] is next due.
    #[must_use]
    pub fn next_timeout(&self) -> Option<UnixMillis> {
        let grace = self.settings.answer_grace;
        self.tasks
            .values()
            .filter(|t| t.finished_at.is_none())
            .map(|t| {
                if t.runs.values().any(|r| r.state == TaskState::Running) {
                    t.spec
                        .expires_at
                        .saturating_add(t.spec.timeout)
                        .saturating_add(grace)
                } else {
                    t.spec.expires_at
                }
                .saturating_add(Duration::from_millis(1))
            })
            .min()
    }

    /// The book as the store keeps it (`core::wire::task_book`).
    #[must_use]
    pub fn to_record(&self) -> Vec<u8> {
        crate::wire::task_book::encode(self.last_id, self.tasks.values())
    }

    /// A book of `settings` holding what a previous server wrote.
    ///
    /// # Errors
    /// [`crate::wire::WireError`] for a damaged or foreign record.
    pub fn from_record(
        settings: TaskSettings,
        bytes: &[u8],
    ) -> Result<Self, crate::wire::WireError> {
        let (last_id, tasks) = crate::wire::task_book::decode(bytes)?;
        let mut book = Self::new(settings);
        book.last_id = last_id;
        for task in tasks {
            book.tasks.insert(task.spec.id, task);
        }
        Ok(book)
    }
}

/// A task's first state for an agent with `link` (none: not connected): `running` (to be
/// sent), `refused` (the agent cannot take tasks) or `pending`.
fn first_run(now: UnixMillis, link: Option<&AgentLink>) -> AgentRun {
    let (state, instance, reason) = match (link, refusal_reason(link)) {
        (None, _) => (TaskState::Pending, None, None),
        (Some(_), Some(reason)) => (TaskState::Refused, None, Some(reason)),
        (Some(link), None) => (TaskState::Running, Some(link.instance), None),
    };
    AgentRun {
        state,
        instance,
        reason,
        updated_at: now,
    }
}

/// Puts `run` in `task` for `agent`, the one way a run changes: a new `running` run is a task
/// to send; a final run is filed (with `output`) and counted.
fn place_run(
    task: &mut BookTask,
    agent: &AgentId,
    run: AgentRun,
    output: TaskOutput,
    counts: &mut TaskCounts,
    changes: &mut BookChanges,
) {
    if run.state == TaskState::Running {
        changes.sends.push((agent.clone(), task.spec.clone()));
    }
    if run.state.is_final() {
        changes.records.push(record(task, agent, &run, output));
        *counts.runs.entry(run.state).or_default() += 1;
    }
    task.runs.insert(agent.clone(), run);
}

fn record(task: &BookTask, agent: &AgentId, run: &AgentRun, output: TaskOutput) -> TaskRecord {
    TaskRecord {
        task_id: task.spec.id,
        agent: agent.clone(),
        command: task.spec.command.clone(),
        state: run.state,
        output,
        reason: run.reason.clone(),
        finished_at: run.updated_at,
    }
}

impl BookTask {
    /// A task read back from the store (its matcher compiled again).
    #[must_use]
    pub fn restored(
        spec: TaskSpec,
        submitted_at: UnixMillis,
        actor: String,
        remote: String,
        confirmed: bool,
        runs: BTreeMap<AgentId, AgentRun>,
        finished_at: Option<UnixMillis>,
    ) -> Self {
        let matcher = RegionMatcher::new(spec.region_op.as_str(), &spec.region_pattern).ok();
        Self {
            spec,
            submitted_at,
            actor,
            remote,
            confirmed,
            runs,
            finished_at,
            matcher,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::Region;

    const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

    fn agent(region: &str, last: u8) -> AgentId {
        AgentId::new(Region::new(region).unwrap(), [198, 18, 0, last].into())
    }

    fn linked(agent: AgentId, instance: u64) -> KnownAgent {
        KnownAgent {
            agent,
            link: Some(AgentLink {
                instance,
                protocol_version: 2,
                takes_tasks: true,
            }),
        }
    }

    fn submission(op: &str, pattern: &str) -> Submission {
        Submission {
            op: op.into(),
            pattern: pattern.into(),
            command: "mtr -r 198.18.0.9".into(),
            timeout: None,
            lifetime: None,
            confirm: false,
            signed: None,
            actor: "admin-token:1234".into(),
            remote: "127.0.0.1:5000".into(),
        }
    }

    fn fleet() -> Vec<KnownAgent> {
        vec![
            linked(agent("eu-west", 1), 1),
            linked(agent("eu-east", 2), 2),
            linked(agent("us-east", 3), 3),
        ]
    }

    fn matched(book: &mut TaskBook, op: &str, pattern: &str) -> Vec<String> {
        match book.submit(NOW, submission(op, pattern), &fleet()) {
            Ok(submitted) => submitted
                .matched
                .into_iter()
                .map(|(a, _, _)| a.region.as_str().to_owned())
                .collect(),
            Err(error) => vec![error.label().to_owned()],
        }
    }

    #[test]
    fn the_four_operators_pick_exactly_the_documented_agents() {
        let mut book = TaskBook::new(TaskSettings::default());
        assert_eq!(matched(&mut book, "=", "eu-west"), ["eu-west"]);
        assert_eq!(matched(&mut book, "!=", "eu-west"), ["eu-east", "us-east"]);
        assert_eq!(matched(&mut book, "=~", "eu-.*"), ["eu-west", "eu-east"]);
        assert_eq!(matched(&mut book, "!~", "eu-.*"), ["us-east"]);
        // Anchored: a part of a name selects nothing.
        assert_eq!(matched(&mut book, "=~", "eu"), ["no_agent"]);
        assert_eq!(matched(&mut book, "=", "eu"), ["no_agent"]);
        assert_eq!(matched(&mut book, "~", "eu"), ["bad_request"]);
        assert_eq!(book.counts().submissions.get("accepted"), Some(&4));
    }

    #[test]
    fn the_fleet_guard_needs_a_confirmation() {
        let mut book = TaskBook::new(TaskSettings {
            max_agents: 2,
            ..TaskSettings::default()
        });
        let error = book
            .submit(NOW, submission("=~", ".*"), &fleet())
            .unwrap_err();
        assert_eq!(error, SubmitError::TooManyAgents { matched: 3, max: 2 });
        assert!(error.to_string().contains("confirm"));
        let mut confirmed = submission("=~", ".*");
        confirmed.confirm = true;
        assert_eq!(
            book.submit(NOW, confirmed, &fleet()).unwrap().matched.len(),
            3
        );
    }

    #[test]
    fn agents_that_cannot_take_tasks_are_refused_at_once() {
        let mut book = TaskBook::new(TaskSettings::default());
        let mut known = fleet();
        known[0].link = Some(AgentLink {
            instance: 1,
            protocol_version: 2,
            takes_tasks: false,
        });
        known[1].link = Some(AgentLink {
            instance: 2,
            protocol_version: 1,
            takes_tasks: false,
        });
        let submitted = book.submit(NOW, submission("=~", ".*"), &known).unwrap();
        let states: Vec<TaskState> = submitted.matched.iter().map(|(_, s, _)| *s).collect();
        assert_eq!(
            states,
            [TaskState::Refused, TaskState::Refused, TaskState::Running]
        );
        assert!(
            submitted.matched[0]
                .2
                .as_deref()
                .unwrap()
                .contains("-agent.task")
        );
        assert!(
            submitted.matched[1]
                .2
                .as_deref()
                .unwrap()
                .contains("protocol v1")
        );
        assert_eq!(
            submitted.changes.sends.len(),
            1,
            "only the opted-in agent is sent it"
        );
        assert_eq!(submitted.changes.records.len(), 2, "the refusals are filed");
    }

    #[test]
    fn a_disconnected_agent_gets_the_task_when_it_returns_within_the_lifetime() {
        let mut book = TaskBook::new(TaskSettings::default());
        let away = agent("eu-west", 1);
        let known = vec![KnownAgent {
            agent: away.clone(),
            link: None,
        }];
        let submitted = book
            .submit(NOW, submission("=", "eu-west"), &known)
            .unwrap();
        assert_eq!(submitted.matched[0].1, TaskState::Pending);
        assert!(submitted.changes.sends.is_empty());
        let link = AgentLink {
            instance: 7,
            protocol_version: 2,
            takes_tasks: true,
        };
        let back = book.connected(NOW.saturating_add(Duration::from_secs(60)), &away, link);
        assert_eq!(back.sends.len(), 1);
        assert_eq!(
            book.task(submitted.id).unwrap().runs[&away].state,
            TaskState::Running
        );
        // Too late for another one.
        let late = book
            .submit(NOW, submission("=", "eu-west"), &known)
            .unwrap();
        let after = late.expires_at.saturating_add(Duration::from_secs(1));
        assert!(
            book.connected(after, &away, link)
                .sends
                .iter()
                .all(|(_, s)| s.id != late.id)
        );
        let ticked = book.tick(after);
        assert!(
            ticked
                .records
                .iter()
                .any(|r| r.task_id == late.id && r.state == TaskState::Unreachable)
        );
    }

    #[test]
    fn a_task_goes_to_one_agent_process_only_even_across_a_server_restart() {
        let mut book = TaskBook::new(TaskSettings::default());
        let who = agent("eu-west", 1);
        let submitted = book
            .submit(NOW, submission("=", "eu-west"), &[linked(who.clone(), 5)])
            .unwrap();
        assert_eq!(submitted.changes.sends.len(), 1);
        // The server restarts: the next one reads the book.
        let mut next = TaskBook::from_record(TaskSettings::default(), &book.to_record()).unwrap();
        let same = AgentLink {
            instance: 5,
            protocol_version: 2,
            takes_tasks: true,
        };
        assert_eq!(
            next.connected(NOW, &who, same).sends.len(),
            1,
            "the same process again: it dedups"
        );
        let restarted = AgentLink {
            instance: 6,
            ..same
        };
        let changes = next.connected(NOW, &who, restarted);
        assert!(changes.sends.is_empty(), "never to another process");
        assert_eq!(changes.records[0].state, TaskState::Unreachable);
        // Its answer after that changes nothing.
        let late = next.answered(
            NOW,
            &who,
            submitted.id,
            Answer::Output(TaskOutput::default()),
        );
        assert!(late.records.is_empty());
    }

    #[test]
    fn answers_are_filed_once_and_the_task_finishes_after_its_lifetime() {
        let mut book = TaskBook::new(TaskSettings::default());
        let who = agent("eu-west", 1);
        let submitted = book
            .submit(NOW, submission("=", "eu-west"), &[linked(who.clone(), 5)])
            .unwrap();
        let output = TaskOutput {
            exit_code: Some(0),
            stdout: b"ok\n".to_vec(),
            ..TaskOutput::default()
        };
        let filed = book.answered(NOW, &who, submitted.id, Answer::Output(output.clone()));
        assert_eq!(filed.records.len(), 1);
        assert_eq!(filed.records[0].state, TaskState::Done);
        assert_eq!(filed.records[0].output, output);
        assert!(
            book.answered(NOW, &who, submitted.id, Answer::Output(output))
                .records
                .is_empty()
        );
        assert!(filed.audit.is_empty(), "still within its lifetime");
        let done = book.tick(submitted.expires_at.saturating_add(Duration::from_secs(1)));
        assert_eq!(done.audit.len(), 1);
        assert_eq!(done.audit[0].outcome, "done=1");
        assert_eq!(book.counts().runs.get(&TaskState::Done), Some(&1));
    }

    #[test]
    fn a_signed_task_keeps_its_signed_parts() {
        let mut book = TaskBook::new(TaskSettings::default());
        let mut request = submission("=", "eu-west");
        let signed = SignedParts {
            id: 42,
            expires_at: NOW.saturating_add(Duration::from_secs(60)),
            timeout: Duration::from_secs(10),
            output_limit_bytes: 1000,
            signature: Signature([1; 64]),
        };
        request.signed = Some(signed.clone());
        let submitted = book.submit(NOW, request.clone(), &fleet()).unwrap();
        let (_, spec) = &submitted.changes.sends[0];
        assert_eq!(
            (
                spec.id,
                spec.expires_at,
                spec.timeout,
                spec.output_limit_bytes,
                spec.signature
            ),
            (
                42,
                signed.expires_at,
                signed.timeout,
                1000,
                Some(signed.signature)
            )
        );
        assert_eq!(
            book.submit(NOW, request, &fleet()).unwrap_err(),
            SubmitError::DuplicateId { id: 42 }
        );
    }

    proptest! {
        /// Whatever agents connect, reconnect, restart and answer, and however often the server
        /// restarts from its record, a task is sent only to the one process it was first sent
        /// to, and each run is filed final at most once.
        #[test]
        fn sent_to_one_process_and_filed_once(
            events in proptest::collection::vec((0u8..3, 0u64..3, 0u8..4), 1..80),
        ) {
            let agents = [agent("eu-west", 1), agent("eu-west", 2), agent("eu-west", 3)];
            let mut book = TaskBook::new(TaskSettings::default());
            let known: Vec<KnownAgent> = agents.iter().map(|a| KnownAgent { agent: a.clone(), link: None }).collect();
            let id = book.submit(NOW, submission("=", "eu-west"), &known).unwrap().id;
            let mut sent_to: std::collections::HashMap<AgentId, u64> = Default::default();
            let mut filed: std::collections::HashMap<AgentId, u32> = Default::default();
            for (who, instance, what) in events {
                let who = &agents[usize::from(who)];
                let link = AgentLink { instance, protocol_version: 2, takes_tasks: true };
                let changes = match what {
                    0 => book.connected(NOW, who, link),
                    1 => {
                        let changes = book.answered(NOW, who, id, Answer::Output(TaskOutput::default()));
                        prop_assert!(changes.records.is_empty() || sent_to.contains_key(who), "an answer to a task never sent");
                        changes
                    }
                    2 => {
                        book = TaskBook::from_record(TaskSettings::default(), &book.to_record()).unwrap();
                        BookChanges::default()
                    }
                    _ => book.connected(NOW, who, link),
                };
                for (to, _) in &changes.sends {
                    let first = *sent_to.entry(to.clone()).or_insert(instance);
                    prop_assert_eq!(first, instance, "sent to a second process");
                }
                for record in changes.records {
                    *filed.entry(record.agent).or_default() += 1;
                }
            }
            prop_assert!(filed.values().all(|n| *n == 1));
        }
    }
}
