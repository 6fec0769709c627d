//! Remote tasks (`/-/task`, the Go "task dispatch") in domain terms: what an operator asks,
//! what an agent runs, where each matched agent's run stands, and what is kept of it.
//!
//! - [`command`]: the agent's command policy: no shell by default, programs from an allow-list
//!   of diagnostics, flags that read or write local files refused per tool, `/bin/sh -c` (the
//!   Go behaviour) only by the agent's own opt-in;
//! - [`signing`]: task keys and ed25519 signatures: an agent that pins a key runs only tasks the
//!   operator signed, so a compromised server cannot forge one;
//! - [`book`]: the server's book of tasks: who matched, what was sent to which agent process,
//!   what came back, what ran out; kept in the store so that a restart runs nothing twice;
//! - [`runs`]: the agent's side: each id at most once, one task at a time, a bounded queue.
//!
//! Security model in one paragraph (docs/operations.md has the whole of it): the server
//! dispatches only with `-server.task` and the admin bearer token; an agent runs anything only
//! with `-agent.task`; without `-agent.task.shell` it runs one allow-listed program with plain
//! arguments, no shell; with `-agent.task.pubkey` it runs only what the holder of the private
//! key signed, for the regions the signer chose, until the expiry the signer chose.

pub mod book;
pub mod command;
pub mod runs;
pub mod signing;

use std::fmt;
use std::time::Duration;

use crate::link::TaskOutput;
use crate::model::{AgentId, UnixMillis};

/// What an agent executes for a task: a program with its arguments (no shell), or a script
/// for `/bin/sh -c` (only with `-agent.task.shell`).
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Invocation {
    /// `program` (a bare name looked up in the kept `PATH`, or an absolute path) with `args`.
    Program {
        /// The program.
        program: String,
        /// Its arguments, each passed as one word.
        args: Vec<String>,
    },
    /// `/bin/sh -c script`.
    Shell {
        /// The script.
        script: String,
    },
}

impl fmt::Display for Invocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Program { program, args } => {
                write!(f, "{program}")?;
                for arg in args {
                    write!(f, " {arg}")?;
                }
                Ok(())
            }
            Self::Shell { script } => write!(f, "/bin/sh -c {script:?}"),
        }
    }
}

/// One run of a task on an agent, as its task runner carries it out.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TaskRun {
    /// The task's id.
    pub id: u64,
    /// What to execute.
    pub invocation: Invocation,
    /// The whole process group is killed after this long.
    pub timeout: Duration,
    /// At most this many bytes of stdout and of stderr are kept, each.
    pub output_limit_bytes: usize,
}

/// Where one matched agent's run of a task stands (`GET /-/task/<id>`).
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub enum TaskState {
    /// Matched, not yet sent: the agent is not connected.
    Pending,
    /// Sent to the agent, which runs it or has it queued; no answer yet.
    Running,
    /// The command ran and exited with status 0.
    Done,
    /// The command exited with another status, was killed by a signal, or could not start.
    Failed,
    /// The command outlived its timeout and its process group was killed.
    TimedOut,
    /// The agent (or the server on its behalf) refused to run it: no opt-in, the command
    /// policy, the signature, an expired task, a full queue, an old protocol.
    Refused,
    /// The agent did not answer within the task's lifetime (it stayed away, or restarted
    /// before answering: a task is never sent twice).
    Unreachable,
}

impl TaskState {
    /// The state's name in JSON and in metrics labels.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Refused => "refused",
            Self::Unreachable => "unreachable",
        }
    }

    /// The state named `name` ([`Self::as_str`]).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == name)
    }

    /// Every state, in order.
    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::Running,
        Self::Done,
        Self::Failed,
        Self::TimedOut,
        Self::Refused,
        Self::Unreachable,
    ];

    /// Whether the run is over (nothing more will happen to it).
    #[must_use]
    pub const fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }

    /// The final state of a command that produced `output`.
    #[must_use]
    pub fn of_output(output: &TaskOutput) -> Self {
        if output.timed_out {
            Self::TimedOut
        } else if output.exit_code == Some(0) {
            Self::Done
        } else {
            Self::Failed
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is kept of one agent's finished run: the Go result file and the JSON record are both
/// made from it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TaskRecord {
    /// The task.
    pub task_id: u64,
    /// The agent.
    pub agent: AgentId,
    /// The command line as submitted.
    pub command: String,
    /// The final state.
    pub state: TaskState,
    /// What the command did (empty when it never ran).
    pub output: TaskOutput,
    /// Why it was refused or is unreachable, or why it could not start.
    pub reason: Option<String>,
    /// When the server learnt the outcome.
    pub finished_at: UnixMillis,
}

/// What an audit line is about.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum AuditAction {
    /// A task was accepted and dispatched.
    Submitted,
    /// A submission was refused (bad request, no credential, the fleet guard, …).
    Refused,
    /// Every matched agent's run of a task reached a final state.
    Finished,
}

impl AuditAction {
    /// The action's name in the audit log.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::Refused => "refused",
            Self::Finished => "finished",
        }
    }
}

/// One line of the task audit log: who asked what, of which agents, and what came of it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct AuditEntry {
    /// When.
    pub at: UnixMillis,
    /// What happened.
    pub action: AuditAction,
    /// Who: the credential's identity (`admin-token:<fingerprint>`, never the token), or
    /// `anonymous` when none was presented.
    pub actor: String,
    /// The address the request came from (empty for lines the server writes by itself).
    pub remote: String,
    /// The task (none for a refused submission).
    pub task_id: Option<u64>,
    /// The region operator and pattern as submitted.
    pub selector: String,
    /// The command line as submitted.
    pub command: String,
    /// Whether the task was signed.
    pub signed: bool,
    /// The agents it matched.
    pub matched: Vec<AgentId>,
    /// The outcome: `accepted`, the refusal's reason, or the count of final states.
    pub outcome: String,
}
