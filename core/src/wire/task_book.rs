//! The task book record: what a server keeps in its store of the tasks it dispatched, so
//! that the next server on the same data directory sends no task twice and still answers
//! `GET /-/task/<id>`. Like the handoff file it is part of the compatibility promise (a
//! server of the next release reads it): postcard DTOs behind a magic and a format number;
//! `fixtures/wire/v2/task_book.hex` pins its bytes. Outputs are not in it (the task archive
//! holds them).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{IpAddrV1, MAX_COMMAND_LEN, MAX_TEXT_LEN, TASK_SIGNATURE_LEN, WireError, check_len};
use crate::link::{Signature, TaskSpec};
use crate::model::time::duration_millis;
use crate::model::{AgentId, Region, UnixMillis};
use crate::task::TaskState;
use crate::task::book::{AgentRun, BookTask};

/// First bytes of every task book record.
pub const TASK_BOOK_MAGIC: [u8; 8] = *b"PMTASKS\0";
/// The format written after the magic (a big-endian `u16`).
pub const TASK_BOOK_FORMAT: u16 = 1;
/// Tasks a record holds at most (the book's own limit, `TaskSettings::max_tasks`, by default).
pub const MAX_BOOK_TASKS: usize = 1_024;
/// Runs a record holds at most over all its tasks.
pub const MAX_BOOK_RUNS: usize = 100_000;
/// Largest task book record, in bytes: 1,024 tasks with 64 KiB commands and texts, and
/// 100,000 runs with their reasons (about 300 bytes each) — 96 MiB; 128 MiB leaves room.
pub const MAX_TASK_BOOK_BYTES: u64 = 128 * 1024 * 1024;

/// The body of a task book record.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct TaskBookV1 {
    /// The largest id given so far.
    pub last_id: u64,
    /// The tasks.
    pub tasks: Vec<BookTaskV1>,
}

/// One task.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct BookTaskV1 {
    /// The id.
    pub id: u64,
    /// The command line.
    pub command: String,
    /// The timeout, in milliseconds.
    pub timeout_ms: u64,
    /// Bytes kept of each stream.
    pub output_limit_bytes: u32,
    /// The expiry, in Unix milliseconds.
    pub expires_at_ms: u64,
    /// The region operator.
    pub region_op: String,
    /// The region pattern.
    pub region_pattern: String,
    /// The signature (64 bytes) of a signed task.
    pub signature: Option<Vec<u8>>,
    /// When it was submitted, in Unix milliseconds.
    pub submitted_at_ms: u64,
    /// Who submitted it.
    pub actor: String,
    /// From where.
    pub remote: String,
    /// Whether the request confirmed reaching more than `max_agents`.
    pub confirmed: bool,
    /// When it finished, in Unix milliseconds.
    pub finished_at_ms: Option<u64>,
    /// The runs.
    pub runs: Vec<AgentRunV1>,
}

/// One agent's run.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct AgentRunV1 {
    /// The agent's region.
    pub region: String,
    /// The agent's address.
    pub ip: IpAddrV1,
    /// The state, by name (`TaskState::as_str`).
    pub state: String,
    /// The agent process it was sent to.
    pub instance: Option<u64>,
    /// Why it was refused or is unreachable.
    pub reason: Option<String>,
    /// When it last changed, in Unix milliseconds.
    pub updated_at_ms: u64,
}

/// The record's bytes for a book with `last_id` and `tasks`.
pub fn encode<'a>(last_id: u64, tasks: impl Iterator<Item = &'a BookTask>) -> Vec<u8> {
    let body = TaskBookV1 {
        last_id,
        tasks: tasks
            .map(|task| BookTaskV1 {
                id: task.spec.id,
                command: task.spec.command.clone(),
                timeout_ms: duration_millis(task.spec.timeout),
                output_limit_bytes: u32::try_from(task.spec.output_limit_bytes).unwrap_or(u32::MAX),
                expires_at_ms: task.spec.expires_at.as_millis(),
                region_op: task.spec.region_op.as_str().to_owned(),
                region_pattern: task.spec.region_pattern.clone(),
                signature: task.spec.signature.map(|s| s.0.to_vec()),
                submitted_at_ms: task.submitted_at.as_millis(),
                actor: task.actor.clone(),
                remote: task.remote.clone(),
                confirmed: task.confirmed,
                finished_at_ms: task.finished_at.map(UnixMillis::as_millis),
                runs: task
                    .runs
                    .iter()
                    .map(|(agent, run)| AgentRunV1 {
                        region: agent.region.as_str().to_owned(),
                        ip: agent.ip.into(),
                        state: run.state.as_str().to_owned(),
                        instance: run.instance,
                        reason: run.reason.clone(),
                        updated_at_ms: run.updated_at.as_millis(),
                    })
                    .collect(),
            })
            .collect(),
    };
    let mut bytes = TASK_BOOK_MAGIC.to_vec();
    bytes.extend(TASK_BOOK_FORMAT.to_be_bytes());
    postcard::to_extend(&body, bytes).unwrap_or_default()
}

/// The book a record holds: its last id and its tasks, validated.
///
/// # Errors
/// [`WireError`] for another magic or format, undecodable bytes, or a field over its limit
/// (naming it, `tasks[2].runs[0].region`).
pub fn decode(bytes: &[u8]) -> Result<(u64, Vec<BookTask>), WireError> {
    let Some(body) = bytes.strip_prefix(&TASK_BOOK_MAGIC[..]) else {
        return Err(WireError::invalid("task_book", "not a task book record"));
    };
    let format = body
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| WireError::invalid("task_book", "no format number"))?;
    if format != TASK_BOOK_FORMAT {
        return Err(WireError::invalid(
            "task_book",
            format!("format {format}, this server reads format {TASK_BOOK_FORMAT}"),
        ));
    }
    let book: TaskBookV1 = postcard::from_bytes(&body[2..])
        .map_err(|e| WireError::invalid("task_book", format!("undecodable: {e}")))?;
    check_len("task_book.tasks", book.tasks.len(), MAX_BOOK_TASKS)?;
    let runs: usize = book.tasks.iter().map(|t| t.runs.len()).sum();
    check_len("task_book.runs", runs, MAX_BOOK_RUNS)?;
    let mut tasks = Vec::with_capacity(book.tasks.len());
    for (i, task) in book.tasks.into_iter().enumerate() {
        let field = |name: &str| format!("tasks[{i}].{name}");
        check_len(&field("command"), task.command.len(), MAX_COMMAND_LEN)?;
        check_len(
            &field("region_pattern"),
            task.region_pattern.len(),
            MAX_TEXT_LEN,
        )?;
        check_len(&field("actor"), task.actor.len(), MAX_TEXT_LEN)?;
        check_len(&field("remote"), task.remote.len(), MAX_TEXT_LEN)?;
        let region_op = task
            .region_op
            .parse()
            .map_err(|_| WireError::invalid(field("region_op"), "not =, !=, =~ or !~"))?;
        let signature = task
            .signature
            .map(|bytes| {
                <[u8; TASK_SIGNATURE_LEN]>::try_from(bytes.as_slice())
                    .map(Signature)
                    .map_err(|_| WireError::invalid(field("signature"), "not 64 bytes"))
            })
            .transpose()?;
        let mut runs = BTreeMap::new();
        for (j, run) in task.runs.into_iter().enumerate() {
            let field = |name: &str| format!("tasks[{i}].runs[{j}].{name}");
            let region = Region::new(&run.region)
                .map_err(|e| WireError::invalid(field("region"), e.to_string()))?;
            let state = TaskState::from_name(&run.state)
                .ok_or_else(|| WireError::invalid(field("state"), "not a task state"))?;
            if let Some(reason) = &run.reason {
                check_len(&field("reason"), reason.len(), MAX_TEXT_LEN)?;
            }
            runs.insert(
                AgentId::new(region, run.ip.into()),
                AgentRun {
                    state,
                    instance: run.instance,
                    reason: run.reason,
                    updated_at: UnixMillis(run.updated_at_ms),
                },
            );
        }
        tasks.push(BookTask::restored(
            TaskSpec {
                id: task.id,
                command: task.command,
                timeout: Duration::from_millis(task.timeout_ms),
                output_limit_bytes: usize::try_from(task.output_limit_bytes).unwrap_or(usize::MAX),
                expires_at: UnixMillis(task.expires_at_ms),
                region_op,
                region_pattern: task.region_pattern,
                signature,
            },
            UnixMillis(task.submitted_at_ms),
            task.actor,
            task.remote,
            task.confirmed,
            runs,
            task.finished_at_ms.map(UnixMillis),
        ));
    }
    Ok((book.last_id, tasks))
}
