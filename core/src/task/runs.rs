//! The agent's side of tasks, sans-IO: what it does with each task the server sends and with
//! each finished run.
//!
//! - Nothing runs without the agent's opt-in (`-agent.task`, a [`TaskPolicy`]): otherwise
//!   every task is answered [`FromAgent::TaskRefused`] at once.
//! - Each task id is taken at most once per agent process: a task sent again (after a
//!   reconnection, or by a restarted server) is not run again; its answer, when the agent
//!   still holds it, is sent again instead (answers are not acknowledged, so a lost one is
//!   recovered that way).
//! - Before it is queued a task passes, in order: its region selector against this agent's
//!   region, its signature when the agent pins a key, its expiry, the command policy; the
//!   first failure is the refusal's reason.
//! - One task runs at a time; at most [`TaskPolicy::max_queued`] wait; a task whose expiry
//!   passes while it waits is refused when its turn comes.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use super::TaskRun;
use super::command::CommandPolicy;
use super::signing::TaskPublicKey;
use crate::link::{FromAgent, TaskOutput, TaskSpec};
use crate::matcher::RegionMatcher;
use crate::model::{AgentId, UnixMillis};
use crate::wire::{MAX_TASK_OUTPUT_LEN, task_signing_bytes};

/// Task ids remembered as taken; beyond this the oldest are forgotten (a task that old has
/// expired: [`TaskPolicy::max_lifetime`] bounds how long a task can be replayed).
pub const REMEMBERED_TASK_IDS: usize = 4_096;
/// Answers kept for sending again.
pub const KEPT_ANSWERS: usize = 32;
/// Bytes of output the kept answers may hold together.
pub const KEPT_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// How an agent that opted in runs tasks.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TaskPolicy {
    /// What commands may run (`-agent.task.allow`, `-agent.task.shell`).
    pub command: CommandPolicy,
    /// Only tasks signed by this key run (`-agent.task.pubkey`).
    pub key: Option<TaskPublicKey>,
    /// The longest a task may run here (`-agent.task.timeout`): a task asking for longer runs
    /// this long.
    pub max_timeout: Duration,
    /// Tasks waiting behind the running one, at most.
    pub max_queued: usize,
    /// A task expiring further ahead than this is refused (it could be replayed that long).
    pub max_lifetime: Duration,
}

impl Default for TaskPolicy {
    fn default() -> Self {
        Self {
            command: CommandPolicy::default(),
            key: None,
            max_timeout: Duration::from_secs(30),
            max_queued: 16,
            max_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

/// What the agent must do for its tasks.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskStep {
    /// Send this answer to the server.
    Send(FromAgent),
    /// Start this run and hand its output to [`AgentTasks::finished`].
    Run(TaskRun),
}

/// The agent's tasks between events.
#[derive(Debug)]
pub struct AgentTasks {
    policy: Option<TaskPolicy>,
    running: Option<u64>,
    queued: VecDeque<(TaskRun, UnixMillis)>,
    taken: HashSet<u64>,
    taken_order: VecDeque<u64>,
    answers: VecDeque<(u64, FromAgent)>,
    answer_bytes: usize,
}

fn answer_len(answer: &FromAgent) -> usize {
    match answer {
        FromAgent::TaskResult { output, .. } => output.stdout.len() + output.stderr.len(),
        FromAgent::TaskRefused { reason, .. } => reason.len(),
        _ => 0,
    }
}

impl AgentTasks {
    /// An agent's tasks under `policy` (`None`: the agent did not opt in).
    #[must_use]
    pub fn new(policy: Option<TaskPolicy>) -> Self {
        Self {
            policy,
            running: None,
            queued: VecDeque::new(),
            taken: HashSet::new(),
            taken_order: VecDeque::new(),
            answers: VecDeque::new(),
            answer_bytes: 0,
        }
    }

    /// Whether the agent runs tasks at all (it names the `task` feature in its hello).
    #[must_use]
    pub fn opted_in(&self) -> bool {
        self.policy.is_some()
    }

    /// The task running now.
    #[must_use]
    pub fn running(&self) -> Option<u64> {
        self.running
    }

    /// The server sent `task` at `now` to this agent, `me`.
    pub fn receive(&mut self, now: UnixMillis, me: &AgentId, task: TaskSpec) -> Vec<TaskStep> {
        if let Some((_, answer)) = self.answers.iter().find(|(id, _)| *id == task.id) {
            return vec![TaskStep::Send(answer.clone())];
        }
        if self.taken.contains(&task.id) {
            // Running or queued: its answer comes when it ends.
            return Vec::new();
        }
        self.take(task.id);
        let id = task.id;
        let mut steps = match self.admit(now, me, task) {
            Ok(entry) => {
                self.queued.push_back(entry);
                Vec::new()
            }
            Err(reason) => vec![self.refuse(id, reason)],
        };
        steps.extend(self.start_next(now));
        steps
    }

    /// The run of task `id` ended with `output` at `now`.
    pub fn finished(&mut self, now: UnixMillis, id: u64, output: TaskOutput) -> Vec<TaskStep> {
        if self.running == Some(id) {
            self.running = None;
        }
        let answer = FromAgent::TaskResult {
            task_id: id,
            output,
        };
        self.keep(id, answer.clone());
        let mut steps = vec![TaskStep::Send(answer)];
        steps.extend(self.start_next(now));
        steps
    }

    fn admit(
        &self,
        now: UnixMillis,
        me: &AgentId,
        task: TaskSpec,
    ) -> Result<(TaskRun, UnixMillis), String> {
        let Some(policy) = &self.policy else {
            return Err(
                "this agent does not run tasks (it was started without -agent.task)".into(),
            );
        };
        let selector = RegionMatcher::new(task.region_op.as_str(), &task.region_pattern)
            .map_err(|e| format!("the task's region selector is unusable: {e}"))?;
        if !selector.matches(&me.region) {
            return Err(format!(
                "this agent's region {} is not selected by {} {:?}",
                me.region, task.region_op, task.region_pattern
            ));
        }
        if let Some(key) = &policy.key {
            key.verify(&task_signing_bytes(&task), task.signature.as_ref())
                .map_err(|e| e.to_string())?;
        }
        if now > task.expires_at {
            return Err(format!(
                "the task expired at {} (Unix ms) before it reached this agent (now {})",
                task.expires_at.as_millis(),
                now.as_millis()
            ));
        }
        if task.expires_at > now.saturating_add(policy.max_lifetime) {
            return Err(format!(
                "the task expires more than {} s from now, longer than this agent accepts",
                policy.max_lifetime.as_secs()
            ));
        }
        if self.queued.len() >= policy.max_queued {
            return Err(format!(
                "this agent's task queue is full ({} tasks wait behind the running one)",
                policy.max_queued
            ));
        }
        let invocation = policy
            .command
            .invocation(&task.command)
            .map_err(|e| e.to_string())?;
        Ok((
            TaskRun {
                id: task.id,
                invocation,
                timeout: task.timeout.min(policy.max_timeout),
                output_limit_bytes: task.output_limit_bytes.min(MAX_TASK_OUTPUT_LEN),
            },
            task.expires_at,
        ))
    }

    fn start_next(&mut self, now: UnixMillis) -> Vec<TaskStep> {
        let mut steps = Vec::new();
        while self.running.is_none() {
            let Some((run, expires_at)) = self.queued.pop_front() else {
                break;
            };
            if now > expires_at {
                steps.push(self.refuse(
                    run.id,
                    format!(
                        "the task expired at {} (Unix ms) while it waited behind other tasks",
                        expires_at.as_millis()
                    ),
                ));
                continue;
            }
            self.running = Some(run.id);
            steps.push(TaskStep::Run(run));
        }
        steps
    }

    fn refuse(&mut self, id: u64, reason: String) -> TaskStep {
        let answer = FromAgent::TaskRefused {
            task_id: id,
            reason,
        };
        self.keep(id, answer.clone());
        TaskStep::Send(answer)
    }

    fn take(&mut self, id: u64) {
        if self.taken_order.len() >= REMEMBERED_TASK_IDS
            && let Some(oldest) = self.taken_order.pop_front()
        {
            self.taken.remove(&oldest);
        }
        self.taken.insert(id);
        self.taken_order.push_back(id);
    }

    fn keep(&mut self, id: u64, answer: FromAgent) {
        self.answer_bytes += answer_len(&answer);
        self.answers.push_back((id, answer));
        while self.answers.len() > KEPT_ANSWERS || self.answer_bytes > KEPT_ANSWER_BYTES {
            let Some((_, oldest)) = self.answers.pop_front() else {
                break;
            };
            self.answer_bytes = self.answer_bytes.saturating_sub(answer_len(&oldest));
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::matcher::MatchOp;
    use crate::model::Region;
    use crate::task::Invocation;
    use crate::task::signing::TaskSigningKey;

    fn me() -> AgentId {
        AgentId::new(
            Region::new("eu-west").unwrap(),
            "198.18.0.2".parse().unwrap(),
        )
    }

    const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

    fn task(id: u64, command: &str) -> TaskSpec {
        TaskSpec {
            id,
            command: command.into(),
            timeout: Duration::from_secs(60),
            output_limit_bytes: 65_536,
            expires_at: NOW.saturating_add(Duration::from_secs(300)),
            region_op: MatchOp::Re,
            region_pattern: "eu-.*".into(),
            signature: None,
        }
    }

    fn refusal(steps: &[TaskStep]) -> Option<&str> {
        steps.iter().find_map(|step| match step {
            TaskStep::Send(FromAgent::TaskRefused { reason, .. }) => Some(reason.as_str()),
            _ => None,
        })
    }

    fn opted_in() -> AgentTasks {
        AgentTasks::new(Some(TaskPolicy::default()))
    }

    #[test]
    fn without_the_opt_in_every_task_is_refused() {
        let mut tasks = AgentTasks::new(None);
        let steps = tasks.receive(NOW, &me(), task(1, "ping -c1 198.18.0.1"));
        assert!(refusal(&steps).unwrap().contains("-agent.task"));
        assert_eq!(steps.len(), 1);
    }

    #[test]
    fn a_task_runs_once_with_the_agents_bounds_and_its_answer_is_repeated() {
        let mut tasks = opted_in();
        let steps = tasks.receive(NOW, &me(), task(1, "ping -c1 198.18.0.1"));
        let [TaskStep::Run(run)] = steps.as_slice() else {
            panic!("one run: {steps:?}");
        };
        assert_eq!(
            run.timeout,
            Duration::from_secs(30),
            "capped at the agent's maximum"
        );
        assert!(matches!(run.invocation, Invocation::Program { .. }));
        assert!(
            tasks
                .receive(NOW, &me(), task(1, "ping -c1 198.18.0.1"))
                .is_empty()
        );
        let output = TaskOutput {
            exit_code: Some(0),
            ..TaskOutput::default()
        };
        let done = tasks.finished(NOW, 1, output.clone());
        let answer = TaskStep::Send(FromAgent::TaskResult { task_id: 1, output });
        assert_eq!(done, vec![answer.clone()]);
        assert_eq!(
            tasks.receive(NOW, &me(), task(1, "ping -c1 198.18.0.1")),
            vec![answer],
            "sent again, not run again"
        );
    }

    #[test]
    fn one_at_a_time_in_order_and_a_full_queue_refuses() {
        let mut tasks = AgentTasks::new(Some(TaskPolicy {
            max_queued: 2,
            ..TaskPolicy::default()
        }));
        assert!(matches!(
            tasks.receive(NOW, &me(), task(1, "ping a")).as_slice(),
            [TaskStep::Run(_)]
        ));
        assert!(tasks.receive(NOW, &me(), task(2, "ping b")).is_empty());
        assert!(tasks.receive(NOW, &me(), task(3, "ping c")).is_empty());
        let full = tasks.receive(NOW, &me(), task(4, "ping d"));
        assert!(refusal(&full).unwrap().contains("queue is full"));
        let next = tasks.finished(NOW, 1, TaskOutput::default());
        assert!(matches!(next.as_slice(), [TaskStep::Send(_), TaskStep::Run(run)] if run.id == 2));
    }

    #[test]
    fn a_task_that_expires_while_it_waits_is_refused_at_its_turn() {
        let mut tasks = opted_in();
        tasks.receive(NOW, &me(), task(1, "ping a"));
        let mut short = task(2, "ping b");
        short.expires_at = NOW.saturating_add(Duration::from_secs(5));
        tasks.receive(NOW, &me(), short);
        let later = NOW.saturating_add(Duration::from_secs(10));
        let steps = tasks.finished(later, 1, TaskOutput::default());
        assert!(refusal(&steps).unwrap().contains("while it waited"));
        assert_eq!(tasks.running(), None);
    }

    #[test]
    fn region_expiry_and_policy_are_checked_before_running() {
        let mut tasks = opted_in();
        let mut other_region = task(1, "ping a");
        other_region.region_pattern = "us-.*".into();
        assert!(
            refusal(&tasks.receive(NOW, &me(), other_region))
                .unwrap()
                .contains("not selected")
        );
        let mut expired = task(2, "ping a");
        expired.expires_at = UnixMillis(NOW.as_millis() - 1);
        assert!(
            refusal(&tasks.receive(NOW, &me(), expired))
                .unwrap()
                .contains("expired")
        );
        let mut far = task(3, "ping a");
        far.expires_at = NOW.saturating_add(Duration::from_secs(2 * 24 * 3600));
        assert!(
            refusal(&tasks.receive(NOW, &me(), far))
                .unwrap()
                .contains("longer than")
        );
        assert!(
            refusal(&tasks.receive(NOW, &me(), task(4, "ping a; id")))
                .unwrap()
                .contains("shell")
        );
        assert!(
            refusal(&tasks.receive(NOW, &me(), task(5, "rm -rf /")))
                .unwrap()
                .contains("not a program")
        );
    }

    #[test]
    fn a_pinned_key_runs_only_rightly_signed_tasks() {
        let key = TaskSigningKey::from_seed([3; 32]);
        let mut tasks = AgentTasks::new(Some(TaskPolicy {
            key: Some(key.public()),
            ..TaskPolicy::default()
        }));
        assert!(
            refusal(&tasks.receive(NOW, &me(), task(1, "ping a")))
                .unwrap()
                .contains("unsigned")
        );
        let mut wrong = task(2, "ping a");
        wrong.signature =
            Some(TaskSigningKey::from_seed([4; 32]).sign(&task_signing_bytes(&wrong)));
        assert!(
            refusal(&tasks.receive(NOW, &me(), wrong))
                .unwrap()
                .contains("does not verify")
        );
        // Signed, then widened by the server: no longer the operator's task.
        let mut widened = task(3, "ping a");
        widened.region_pattern = "eu-west".into();
        widened.signature = Some(key.sign(&task_signing_bytes(&widened)));
        widened.region_pattern = ".*".into();
        assert!(
            refusal(&tasks.receive(NOW, &me(), widened))
                .unwrap()
                .contains("does not verify")
        );
        let mut right = task(4, "ping a");
        right.signature = Some(key.sign(&task_signing_bytes(&right)));
        assert!(matches!(
            tasks.receive(NOW, &me(), right).as_slice(),
            [TaskStep::Run(_)]
        ));
    }

    proptest! {
        /// Whatever the server sends, in whatever order and how often, each id starts at most
        /// once, at most one run is under way, and every id taken gets exactly one answer
        /// kind (a run's result or a refusal).
        #[test]
        fn each_task_starts_at_most_once_and_one_at_a_time(
            events in proptest::collection::vec((0u64..12, any::<bool>()), 1..200),
        ) {
            let mut tasks = AgentTasks::new(Some(TaskPolicy { max_queued: 3, ..TaskPolicy::default() }));
            let mut started = std::collections::HashMap::<u64, u32>::new();
            let mut running: Option<u64> = None;
            let mut handle = |steps: Vec<TaskStep>, running: &mut Option<u64>| -> Result<(), TestCaseError> {
                for step in steps {
                    if let TaskStep::Run(run) = step {
                        prop_assert!(running.is_none(), "two runs at once");
                        *running = Some(run.id);
                        *started.entry(run.id).or_default() += 1;
                    }
                }
                Ok(())
            };
            for (id, finish) in events {
                if finish {
                    if let Some(id) = running.take() {
                        let steps = tasks.finished(NOW, id, TaskOutput::default());
                        handle(steps, &mut running)?;
                    }
                } else {
                    let steps = tasks.receive(NOW, &me(), task(id, "ping a"));
                    handle(steps, &mut running)?;
                }
            }
            prop_assert!(started.values().all(|n| *n == 1));
        }
    }
}
