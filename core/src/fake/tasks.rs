//! Fakes of the task ports: a runner answering from a script, an archive in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use super::lock;
use crate::link::TaskOutput;
use crate::model::UnixMillis;
use crate::ports::{StoreError, TaskArchive, TaskRunner};
use crate::task::{AuditEntry, Invocation, TaskRecord, TaskRun};

/// A [`TaskRunner`] that records each run and answers from a script: the output set for the
/// program (or for the shell), else exit 0 with the command line echoed on stdout.
#[derive(Debug, Default)]
pub struct FakeTaskRunner {
    answers: Mutex<HashMap<String, TaskOutput>>,
    runs: Mutex<Vec<TaskRun>>,
}

impl FakeTaskRunner {
    /// A runner with no script.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs of `program` (`"sh"` for shell runs) answer `output`.
    pub fn answer(&self, program: &str, output: TaskOutput) {
        lock(&self.answers).insert(program.to_owned(), output);
    }

    /// The runs so far, in order.
    #[must_use]
    pub fn runs(&self) -> Vec<TaskRun> {
        lock(&self.runs).clone()
    }
}

#[async_trait::async_trait]
impl TaskRunner for FakeTaskRunner {
    async fn run(&self, run: TaskRun) -> TaskOutput {
        let program = match &run.invocation {
            Invocation::Program { program, .. } => program.clone(),
            Invocation::Shell { .. } => "sh".to_owned(),
        };
        let output = lock(&self.answers)
            .get(&program)
            .cloned()
            .unwrap_or_else(|| TaskOutput {
                exit_code: Some(0),
                stdout: format!("{}\n", run.invocation).into_bytes(),
                duration: Duration::from_millis(1),
                ..TaskOutput::default()
            });
        lock(&self.runs).push(run);
        output
    }
}

/// A [`TaskArchive`] in memory: records by task and agent (a second record of the same run
/// replaces the first, as the real archive's JSON does), the audit lines in order.
#[derive(Debug, Default)]
pub struct MemoryTaskArchive {
    records: Mutex<BTreeMap<u64, Vec<TaskRecord>>>,
    audit: Mutex<Vec<AuditEntry>>,
    filed: Mutex<u64>,
}

impl MemoryTaskArchive {
    /// An empty archive.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The audit lines so far.
    #[must_use]
    pub fn audit_lines(&self) -> Vec<AuditEntry> {
        lock(&self.audit).clone()
    }

    /// Every record filed so far (repeats included).
    #[must_use]
    pub fn filed(&self) -> u64 {
        *lock(&self.filed)
    }
}

impl TaskArchive for MemoryTaskArchive {
    fn file(&self, record: &TaskRecord) -> Result<(), StoreError> {
        *lock(&self.filed) += 1;
        let mut records = lock(&self.records);
        let runs = records.entry(record.task_id).or_default();
        runs.retain(|r| r.agent != record.agent);
        runs.push(record.clone());
        runs.sort_by(|a, b| a.agent.cmp(&b.agent));
        Ok(())
    }

    fn results(&self, task_id: u64) -> Result<Vec<TaskRecord>, StoreError> {
        Ok(lock(&self.records)
            .get(&task_id)
            .cloned()
            .unwrap_or_default())
    }

    fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        lock(&self.audit).push(entry.clone());
        Ok(())
    }

    fn prune(&self, _now: UnixMillis) -> Result<usize, StoreError> {
        Ok(0)
    }
}
