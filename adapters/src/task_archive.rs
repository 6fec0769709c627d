//! What remote tasks did, kept on the server (port `TaskArchive`) in `-server.task.meta.dir`
//! (Go default `./task_meta/`): the Go system's result files, which operators' scripts read,
//! beside a JSON record per run for `GET /-/task/<id>`, an audit log of who asked what, and
//! retention so the directory cannot fill the disk.
//!
//! The layout:
//! - `<dir>/<region>_<ip>_<YYYY-MM-DD_HH-MM-SS>`: the Go result file, named by the time the
//!   server learnt the outcome in the server's local time zone (as Go did), holding
//!   `commond:\n<command> \n\noutput:\n<stdout><stderr>` (the typo and the space are Go's,
//!   kept for the scripts). A second run of the same agent in the same second gets
//!   `<name>_2`, then `_3`, …: a name once taken is never written over (the file is written
//!   under a temporary name, synced, then hard-linked to the first free name, which fails
//!   instead of replacing).
//! - `<dir>/by-task/<task_id>/<region>_<ip>.json`: the run's record, replaced atomically by a
//!   later record of the same run (temporary file, sync, rename, directory sync).
//! - `<dir>/audit.jsonl`: one JSON line per audit entry, appended with one write and synced;
//!   past its size limit it is moved to `audit.jsonl.1` (replacing the older one) first.
//!   Never pruned.
//!
//! Unlike Go, the directory is created with mode 0700 (Go: 0644, unusable) and the first
//! result is kept (Go discarded the result that made it create the directory). Files are mode
//! 0600: outputs can hold what the agents' hosts would rather not show everyone. The
//! directory is checked as the data directory is ([`crate::data_dir`]: not writable by every
//! user, not another user's). Retention removes only files of the two result schemes (and
//! this module's own leftover temporary files), never the audit log nor a file of the
//! operator's.

use std::borrow::Cow;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, ErrorKind, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use probermesh_core::link::TaskOutput;
use probermesh_core::model::{AgentId, Region, UnixMillis};
use probermesh_core::ports::{StoreError, TaskArchive};
use probermesh_core::task::{AuditEntry, TaskRecord, TaskState};
use serde::{Deserialize, Serialize};

use crate::bounded_read::{BoundedReadError, Links, read_regular_file};
use crate::data_dir::{self, DataDirError};

/// How long results are kept by default: 7 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The default limit of all result files and records together: 1 GiB.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 1 << 30;

/// The default size at which the audit log is rotated: 64 MiB.
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 64 << 20;

/// The largest JSON record written or read back: 16 MiB (two streams of 4 MiB, the most a
/// task may keep, with room for their escaping).
pub const MAX_RECORD_BYTES: u64 = 16 << 20;

/// At most this many files of one task's directory are looked at by [`TaskArchive::results`].
pub const MAX_RECORDS_PER_TASK: usize = 100_000;

/// The per-task records' directory under the archive's.
const BY_TASK: &str = "by-task";

/// The audit log, and the name it is rotated to.
const AUDIT_LOG: &str = "audit.jsonl";
const AUDIT_LOG_ROTATED: &str = "audit.jsonl.1";

/// Temporary files are `.task-archive.<pid>.<n>.tmp`: no result name ends in `.tmp`.
const TEMP_PREFIX: &str = ".task-archive.";
const TEMP_SUFFIX: &str = ".tmp";

/// The Go file names' time, `strftime` style.
const GO_TIME_FORMAT: &str = "%Y-%m-%d_%H-%M-%S";

/// The shape of [`GO_TIME_FORMAT`]'s output: `0` stands for a digit.
const GO_TIME_SHAPE: &[u8; 19] = b"0000-00-00_00-00-00";

/// The most names tried for one agent's results of one second (`<name>`, `<name>_2`, …).
const MAX_NAME_SUFFIX: u32 = 10_000;

/// Appended to a Go result file when either stream was cut at its limit.
const TRUNCATED_NOTE: &[u8] = b"\n[output truncated: each stream is kept up to its limit]\n";

/// At most this many unreadable records are named one by one in one `results` call's log.
const MAX_SKIP_WARNINGS: usize = 10;

/// How long results are kept and how much room they and the audit log may take.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct ArchiveLimits {
    /// Results older than this are removed by [`TaskArchive::prune`] (default 7 days; Go kept
    /// them for ever).
    pub retention: Duration,
    /// Past this many bytes of result files and records together, the oldest are removed by
    /// [`TaskArchive::prune`] (default 1 GiB).
    pub max_total_bytes: u64,
    /// The audit log is moved to `audit.jsonl.1` before a line would take it past this many
    /// bytes (default 64 MiB).
    pub audit_max_bytes: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            retention: DEFAULT_RETENTION,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            audit_max_bytes: DEFAULT_AUDIT_MAX_BYTES,
        }
    }
}

/// The task archive of one directory (`-server.task.meta.dir`).
#[derive(Debug)]
pub struct FileTaskArchive {
    dir: PathBuf,
    limits: ArchiveLimits,
    /// The zone the Go file names are in: the system's, taken at [`Self::open`].
    time_zone: TimeZone,
    /// Keeps this process's rotations and appends of the audit log from interleaving.
    audit_lock: Mutex<()>,
}

impl FileTaskArchive {
    /// The archive of `dir`, created now (mode 0700, parents too) when missing and checked
    /// now, so a server refuses to start on a directory others could write. Go file names
    /// are in the system's time zone (`TZ`, else `/etc/localtime`; UTC when neither says).
    ///
    /// # Errors
    /// [`StoreError`] naming the directory, what is wrong with it and what to do.
    pub fn open(dir: &Path, limits: ArchiveLimits) -> Result<Self, StoreError> {
        data_dir::ensure(dir).map_err(|e| dir_error(&e))?;
        Ok(Self {
            dir: dir.to_owned(),
            limits,
            time_zone: TimeZone::system(),
            audit_lock: Mutex::new(()),
        })
    }

    /// The same archive naming its Go files in `time_zone` instead of the system's.
    #[must_use]
    pub fn with_time_zone(mut self, time_zone: TimeZone) -> Self {
        self.time_zone = time_zone;
        self
    }

    /// The archive's directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The archive's limits.
    #[must_use]
    pub const fn limits(&self) -> ArchiveLimits {
        self.limits
    }

    /// The Go file name of `record` before any `_2` suffix:
    /// `<region>_<ip>_<YYYY-MM-DD_HH-MM-SS>`, the time in the archive's zone.
    fn go_base_name(&self, record: &TaskRecord) -> Result<String, String> {
        let stamp = i64::try_from(record.finished_at.as_millis())
            .map_err(|e| e.to_string())
            .and_then(|ms| Timestamp::from_millisecond(ms).map_err(|e| e.to_string()))
            .and_then(|at| {
                let local = at.to_zoned_datetime(self.time_zone.clone());
                jiff::fmt::strtime::format(GO_TIME_FORMAT, &local).map_err(|e| e.to_string())
            })
            .map_err(|cause| {
                format!(
                    "the finish time {} cannot be put in a file name: {cause}",
                    record.finished_at
                )
            })?;
        Ok(format!("{}_{stamp}", agent_name(&record.agent)))
    }

    /// The directory of `task_id`'s records.
    fn task_dir(&self, task_id: u64) -> PathBuf {
        self.dir.join(BY_TASK).join(task_id.to_string())
    }

    /// Writes `record`'s JSON (naming `result_file`) over the previous one of its run.
    fn write_record(&self, record: &TaskRecord, result_file: &str) -> Result<(), StoreError> {
        let task_dir = self.task_dir(record.task_id);
        let path = task_dir.join(record_name(&record.agent));
        let json = serde_json::to_vec(&RecordJson::of(record, result_file))
            .map_err(|e| error("writing", &path, &e))?;
        if json.len() as u64 > MAX_RECORD_BYTES {
            return Err(error(
                "writing",
                &path,
                &format!(
                    "the record would be {} bytes, over the limit of {MAX_RECORD_BYTES} bytes \
                     a record is read back with",
                    json.len()
                ),
            ));
        }
        let write = || -> io::Result<()> {
            // A concurrent prune may remove the task's directory once it is empty: make it
            // again and retry (twice is enough: prune removes only empty directories).
            let mut attempts = 0;
            let temporary = loop {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&task_dir)?;
                match write_temporary(&task_dir, &json) {
                    Err(e) if e.kind() == ErrorKind::NotFound && attempts < 2 => attempts += 1,
                    other => break other?,
                }
            };
            if let Err(e) = fs::rename(&temporary, &path) {
                let _ = fs::remove_file(&temporary);
                return Err(e);
            }
            sync_dir(&task_dir)?;
            sync_dir(&self.dir.join(BY_TASK))?;
            sync_dir(&self.dir)
        };
        write().map_err(|e| error("writing", &path, &e))
    }

    /// Rotates the audit log when `line_bytes` more would take it past its limit.
    fn rotate_audit_if_full(&self, path: &Path, line_bytes: u64) -> io::Result<()> {
        let len_bytes = match fs::symlink_metadata(path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if len_bytes > 0 && len_bytes.saturating_add(line_bytes) > self.limits.audit_max_bytes {
            fs::rename(path, self.dir.join(AUDIT_LOG_ROTATED))?;
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The files retention may remove, and the per-task directories seen.
    fn prunable(&self) -> Result<(Vec<Prunable>, Vec<PathBuf>), StoreError> {
        let mut files = Vec::new();
        collect(&self.dir, &mut files, |name| {
            is_go_file_name(name) || is_temporary_name(name)
        })?;
        let by_task = self.dir.join(BY_TASK);
        let mut task_dirs = Vec::new();
        match fs::symlink_metadata(&by_task) {
            Ok(meta) if meta.is_dir() => {
                for entry in fs::read_dir(&by_task).map_err(|e| error("reading", &by_task, &e))? {
                    let entry = entry.map_err(|e| error("reading", &by_task, &e))?;
                    let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                    let name = entry.file_name();
                    if is_dir && name.to_str().is_some_and(is_task_dir_name) {
                        let task_dir = entry.path();
                        collect(&task_dir, &mut files, |name| {
                            is_record_name(name) || is_temporary_name(name)
                        })?;
                        task_dirs.push(task_dir);
                    }
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(error("reading", &by_task, &e)),
        }
        Ok((files, task_dirs))
    }
}

impl TaskArchive for FileTaskArchive {
    fn file(&self, record: &TaskRecord) -> Result<(), StoreError> {
        data_dir::ensure(&self.dir).map_err(|e| dir_error(&e))?;
        let base = self
            .go_base_name(record)
            .map_err(|cause| error("writing", &self.dir, &cause))?;
        let result_file = write_new_file(&self.dir, &base, &go_result_file(record))?;
        if let Err(failure) = self.write_record(record, &result_file) {
            // All or nothing: without its record the result would not be listed.
            let go_file = self.dir.join(&result_file);
            if let Err(e) = fs::remove_file(&go_file) {
                tracing::warn!(
                    path = %go_file.display(),
                    error = %e,
                    "the task's record could not be written and its result file not removed"
                );
            }
            return Err(failure);
        }
        Ok(())
    }

    fn results(&self, task_id: u64) -> Result<Vec<TaskRecord>, StoreError> {
        if !data_dir::check_if_present(&self.dir).map_err(|e| dir_error(&e))? {
            return Ok(Vec::new());
        }
        let task_dir = self.task_dir(task_id);
        let entries = match fs::read_dir(&task_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(error("reading", &task_dir, &e)),
        };
        let mut records = Vec::new();
        let mut skipped = 0_usize;
        for (seen, entry) in entries.enumerate() {
            if seen == MAX_RECORDS_PER_TASK {
                tracing::warn!(
                    dir = %task_dir.display(),
                    limit = MAX_RECORDS_PER_TASK,
                    "the task's directory holds more files than are read; the rest are not listed"
                );
                break;
            }
            let entry = entry.map_err(|e| error("reading", &task_dir, &e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !is_record_name(&name) {
                continue;
            }
            let path = entry.path();
            match read_record(&path, task_id, &name) {
                Ok(Some(record)) => records.push(record),
                // Removed (pruned) since the directory was listed.
                Ok(None) => {}
                Err(cause) => {
                    skipped += 1;
                    if skipped <= MAX_SKIP_WARNINGS {
                        tracing::warn!(
                            path = %path.display(),
                            cause = %cause,
                            "a task record cannot be read; it is left out of the task's results"
                        );
                    }
                }
            }
        }
        if skipped > MAX_SKIP_WARNINGS {
            tracing::warn!(
                dir = %task_dir.display(),
                skipped,
                "task records that cannot be read were left out of the task's results"
            );
        }
        records.sort_by(|a, b| a.agent.cmp(&b.agent));
        Ok(records)
    }

    fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let path = self.dir.join(AUDIT_LOG);
        let mut line =
            serde_json::to_vec(&AuditJson::of(entry)).map_err(|e| error("writing", &path, &e))?;
        line.push(b'\n');
        let _serial = self
            .audit_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        data_dir::ensure(&self.dir).map_err(|e| dir_error(&e))?;
        let append = || -> io::Result<()> {
            self.rotate_audit_if_full(&path, line.len() as u64)?;
            let existed = fs::symlink_metadata(&path).is_ok();
            // Not through a link, and without waiting for a FIFO's reader.
            let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
            let mut file = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(flags.bits())
                .open(&path)?;
            let meta = file.metadata()?;
            if !meta.is_file() {
                return Err(io::Error::other(format!(
                    "it is {}, not a regular file; remove it",
                    data_dir::describe_file_type(meta.file_type())
                )));
            }
            file.write_all(&line)?;
            file.sync_data()?;
            if !existed {
                sync_dir(&self.dir)?;
            }
            Ok(())
        };
        append().map_err(|e| error("writing", &path, &e))
    }

    fn prune(&self, now: UnixMillis) -> Result<usize, StoreError> {
        if !data_dir::check_if_present(&self.dir).map_err(|e| dir_error(&e))? {
            return Ok(0);
        }
        let (mut files, task_dirs) = self.prunable()?;
        let cutoff = UNIX_EPOCH
            + Duration::from_millis(now.saturating_sub(self.limits.retention).as_millis());
        let mut removed = 0;
        files.retain(|file| {
            if file.modified < cutoff {
                if remove(&file.path) {
                    removed += 1;
                }
                false
            } else {
                true
            }
        });
        // Temporary files go by age only: one may be a write under way.
        files.retain(|file| !file.temporary);
        files.sort_by(|a, b| {
            a.modified
                .cmp(&b.modified)
                .then_with(|| a.path.cmp(&b.path))
        });
        let mut total_bytes: u64 = files.iter().map(|file| file.len_bytes).sum();
        for file in &files {
            if total_bytes <= self.limits.max_total_bytes {
                break;
            }
            if remove(&file.path) {
                removed += 1;
                total_bytes = total_bytes.saturating_sub(file.len_bytes);
            }
        }
        for task_dir in task_dirs {
            // Fails, as it should, unless the directory is empty.
            if fs::remove_dir(&task_dir).is_ok() {
                let _ = sync_dir(&self.dir.join(BY_TASK));
            }
        }
        if removed > 0 {
            let _ = sync_dir(&self.dir);
        }
        Ok(removed)
    }
}

/// A file retention may remove.
#[derive(Debug)]
struct Prunable {
    path: PathBuf,
    modified: SystemTime,
    len_bytes: u64,
    /// One of this module's temporary files.
    temporary: bool,
}

/// Adds the regular files of `dir` whose names `wanted` accepts to `files`.
fn collect(
    dir: &Path,
    files: &mut Vec<Prunable>,
    wanted: impl Fn(&str) -> bool,
) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(|e| error("reading", dir, &e))? {
        let entry = entry.map_err(|e| error("reading", dir, &e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if !wanted(name) {
            continue;
        }
        // The entry's own metadata: a symbolic link is not followed (and not removed).
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        files.push(Prunable {
            path: entry.path(),
            modified: meta.modified().unwrap_or(UNIX_EPOCH),
            len_bytes: meta.len(),
            temporary: is_temporary_name(name),
        });
    }
    Ok(())
}

/// Removes the file at `path`; whether it went (a file already gone did not go now).
fn remove(path: &Path) -> bool {
    match fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "an old task result cannot be removed");
            false
        }
    }
}

/// Writes `bytes` as `<dir>/<base>`, or `<base>_2`, `<base>_3`, … when taken, never replacing
/// a file; the name used.
fn write_new_file(dir: &Path, base: &str, bytes: &[u8]) -> Result<String, StoreError> {
    let first = dir.join(base);
    let temporary = write_temporary(dir, bytes).map_err(|e| error("writing", &first, &e))?;
    let mut outcome = Err(error(
        "writing",
        &first,
        &format!("{base} and its suffixes up to _{MAX_NAME_SUFFIX} are all taken"),
    ));
    for suffix in 1..=MAX_NAME_SUFFIX {
        let name = if suffix == 1 {
            base.to_owned()
        } else {
            format!("{base}_{suffix}")
        };
        let path = dir.join(&name);
        // A hard link fails where a rename would replace: a taken name stays as it is.
        match fs::hard_link(&temporary, &path) {
            Ok(()) => {
                outcome = Ok(name);
                break;
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => {
                outcome = Err(error("writing", &path, &e));
                break;
            }
        }
    }
    if let Err(e) = fs::remove_file(&temporary) {
        tracing::warn!(path = %temporary.display(), error = %e, "a temporary file cannot be removed");
    }
    let name = outcome?;
    sync_dir(dir).map_err(|e| error("writing", &dir.join(&name), &e))?;
    Ok(name)
}

/// A new temporary file in `dir` (mode 0600) holding `bytes`, synced; its path.
fn write_temporary(dir: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!(
        "{TEMP_PREFIX}{}.{n}{TEMP_SUFFIX}",
        std::process::id()
    ));
    // A leftover of an earlier process with the same id would keep its old mode: start afresh.
    match fs::remove_file(&path) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Syncs `dir`, so the names just made or removed in it outlive a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn error(operation: &'static str, path: &Path, cause: &dyn std::fmt::Display) -> StoreError {
    StoreError {
        operation,
        location: path.display().to_string(),
        cause: cause.to_string(),
    }
}

fn dir_error(error: &DataDirError) -> StoreError {
    StoreError {
        operation: "using the task directory",
        location: error.path.display().to_string(),
        cause: error.problem.to_string(),
    }
}

// === names ===

/// `<region>_<ip>`, as the Go file names and the records start.
fn agent_name(agent: &AgentId) -> String {
    format!("{}_{}", agent.region, agent.ip)
}

/// A record's file name: `<region>_<ip>.json`.
fn record_name(agent: &AgentId) -> String {
    format!("{}.json", agent_name(agent))
}

/// The agent named `<region>_<ip>` (the region may hold `_`, the address never does).
fn parse_agent_name(name: &str) -> Option<AgentId> {
    let (region, ip) = name.rsplit_once('_')?;
    Some(AgentId::new(Region::new(region).ok()?, ip.parse().ok()?))
}

/// Whether `name` is a Go result file's: `<region>_<ip>_<YYYY-MM-DD_HH-MM-SS>`, optionally
/// followed by `_<n>`.
fn is_go_file_name(name: &str) -> bool {
    // The time ends in `HH-MM-SS`, never all digits: a last part of digits is the suffix.
    let stem = match name.rsplit_once('_') {
        Some((head, tail)) if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => name,
    };
    let Some(agent_len) = stem.len().checked_sub(GO_TIME_SHAPE.len() + 1) else {
        return false;
    };
    let (Some(agent), Some(time)) = (stem.get(..agent_len), stem.get(agent_len..)) else {
        return false;
    };
    let Some(time) = time.strip_prefix('_') else {
        return false;
    };
    let time_fits = time.bytes().zip(GO_TIME_SHAPE).all(|(b, &shape)| {
        if shape == b'0' {
            b.is_ascii_digit()
        } else {
            b == shape
        }
    });
    time_fits && parse_agent_name(agent).is_some()
}

/// Whether `name` is a record's: `<region>_<ip>.json`.
fn is_record_name(name: &str) -> bool {
    name.strip_suffix(".json")
        .and_then(parse_agent_name)
        .is_some()
}

/// Whether `name` is a task's directory: a task id, written as [`u64`] writes it.
fn is_task_dir_name(name: &str) -> bool {
    name.parse::<u64>().is_ok_and(|id| id.to_string() == name)
}

/// Whether `name` is one of this module's temporary files.
fn is_temporary_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)
}

// === contents ===

/// The Go result file of `record`: `commond:\n<command> \n\noutput:\n<stdout><stderr>`, the
/// state and reason first for a run that was refused, unreachable or could not start, a note
/// last when the output was cut.
fn go_result_file(record: &TaskRecord) -> Vec<u8> {
    let output = &record.output;
    let mut bytes =
        Vec::with_capacity(64 + record.command.len() + output.stdout.len() + output.stderr.len());
    bytes.extend_from_slice(b"commond:\n");
    bytes.extend_from_slice(record.command.as_bytes());
    bytes.extend_from_slice(b" \n\noutput:\n");
    let says_why = match record.state {
        TaskState::Refused | TaskState::Unreachable => true,
        // Could not start: no exit code, and not for want of time.
        TaskState::Failed => output.exit_code.is_none() && !output.timed_out,
        _ => false,
    };
    if says_why && let Some(reason) = &record.reason {
        bytes.extend_from_slice(format!("{}: {reason}\n", record.state).as_bytes());
    }
    bytes.extend_from_slice(&output.stdout);
    bytes.extend_from_slice(&output.stderr);
    if output.truncated {
        bytes.extend_from_slice(TRUNCATED_NOTE);
    }
    bytes
}

/// A run's JSON record. `stdout` and `stderr` are the streams as UTF-8 (invalid bytes
/// replaced); `*_base64` carry the exact bytes, present only when they are not UTF-8.
#[derive(Debug, Deserialize, Serialize)]
struct RecordJson<'a> {
    task_id: u64,
    agent: AgentJson<'a>,
    command: Cow<'a, str>,
    state: Cow<'a, str>,
    exit_code: Option<i32>,
    timed_out: bool,
    truncated: bool,
    duration_ms: u64,
    stdout: Cow<'a, str>,
    stderr: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stdout_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stderr_base64: Option<String>,
    reason: Option<Cow<'a, str>>,
    finished_at_ms: u64,
    result_file: Cow<'a, str>,
}

/// An agent in a record.
#[derive(Debug, Deserialize, Serialize)]
struct AgentJson<'a> {
    region: Cow<'a, str>,
    ip: Cow<'a, str>,
}

impl<'a> RecordJson<'a> {
    fn of(record: &'a TaskRecord, result_file: &'a str) -> Self {
        let output = &record.output;
        Self {
            task_id: record.task_id,
            agent: AgentJson {
                region: Cow::Borrowed(record.agent.region.as_str()),
                ip: Cow::Owned(record.agent.ip.to_string()),
            },
            command: Cow::Borrowed(&record.command),
            state: Cow::Borrowed(record.state.as_str()),
            exit_code: output.exit_code,
            timed_out: output.timed_out,
            truncated: output.truncated,
            duration_ms: u64::try_from(output.duration.as_millis()).unwrap_or(u64::MAX),
            stdout: String::from_utf8_lossy(&output.stdout),
            stderr: String::from_utf8_lossy(&output.stderr),
            stdout_base64: base64_unless_utf8(&output.stdout),
            stderr_base64: base64_unless_utf8(&output.stderr),
            reason: record.reason.as_deref().map(Cow::Borrowed),
            finished_at_ms: record.finished_at.as_millis(),
            result_file: Cow::Borrowed(result_file),
        }
    }

    /// The record this JSON holds.
    fn to_record(&self) -> Result<TaskRecord, String> {
        let region = Region::new(&self.agent.region).map_err(|e| e.to_string())?;
        let ip: IpAddr = self
            .agent
            .ip
            .parse()
            .map_err(|e| format!("agent.ip {:?}: {e}", self.agent.ip))?;
        let state = TaskState::from_name(&self.state)
            .ok_or_else(|| format!("state {:?} is not a task state", self.state))?;
        Ok(TaskRecord {
            task_id: self.task_id,
            agent: AgentId::new(region, ip),
            command: self.command.clone().into_owned(),
            state,
            output: TaskOutput {
                exit_code: self.exit_code,
                stdout: stream_bytes("stdout", &self.stdout, self.stdout_base64.as_deref())?,
                stderr: stream_bytes("stderr", &self.stderr, self.stderr_base64.as_deref())?,
                truncated: self.truncated,
                timed_out: self.timed_out,
                duration: Duration::from_millis(self.duration_ms),
            },
            reason: self.reason.clone().map(Cow::into_owned),
            finished_at: UnixMillis(self.finished_at_ms),
        })
    }
}

/// `bytes` in base64 when they are not UTF-8.
fn base64_unless_utf8(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes)
        .is_err()
        .then(|| base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// A stream's bytes: the base64 ones when present, else the text's.
fn stream_bytes(stream: &str, text: &str, base64: Option<&str>) -> Result<Vec<u8>, String> {
    base64.map_or_else(
        || Ok(text.as_bytes().to_vec()),
        |encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| format!("{stream}_base64: {e}"))
        },
    )
}

/// The record in the file `path` named `name` of task `task_id`'s directory; `None` when it
/// is gone.
fn read_record(path: &Path, task_id: u64, name: &str) -> Result<Option<TaskRecord>, String> {
    let bytes = match read_regular_file(path, MAX_RECORD_BYTES, Links::Refuse) {
        Ok(bytes) => bytes,
        Err(BoundedReadError::Io(e)) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let json: RecordJson<'_> = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let record = json.to_record()?;
    if record.task_id != task_id || record_name(&record.agent) != name {
        return Err(format!(
            "it holds the record of task {} for {}, not of this file's task and agent",
            record.task_id, record.agent
        ));
    }
    Ok(Some(record))
}

/// An audit line.
#[derive(Debug, Serialize)]
struct AuditJson<'a> {
    at_ms: u64,
    /// RFC 3339 in UTC, to the millisecond; `null` past the year 9999.
    at: Option<String>,
    action: &'a str,
    actor: &'a str,
    remote: &'a str,
    task_id: Option<u64>,
    selector: &'a str,
    command: &'a str,
    signed: bool,
    /// `region/ip` each.
    matched: Vec<String>,
    outcome: &'a str,
}

impl<'a> AuditJson<'a> {
    fn of(entry: &'a AuditEntry) -> Self {
        let at = i64::try_from(entry.at.as_millis())
            .ok()
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .map(|at| format!("{at:.3}"));
        Self {
            at_ms: entry.at.as_millis(),
            at,
            action: entry.action.as_str(),
            actor: &entry.actor,
            remote: &entry.remote,
            task_id: entry.task_id,
            selector: &entry.selector,
            command: &entry.command,
            signed: entry.signed,
            matched: entry.matched.iter().map(ToString::to_string).collect(),
            outcome: &entry.outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use jiff::tz::Offset;
    use probermesh_core::task::AuditAction;

    use super::*;

    /// A directory under the system's temporary one, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "pm-task-archive-{}-{name}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// 2026-01-02T03:04:05.678Z.
    fn finished_at() -> UnixMillis {
        let at: Timestamp = "2026-01-02T03:04:05.678Z".parse().unwrap();
        UnixMillis(u64::try_from(at.as_millisecond()).unwrap())
    }

    fn open_utc(dir: &Path, limits: ArchiveLimits) -> FileTaskArchive {
        FileTaskArchive::open(dir, limits)
            .unwrap()
            .with_time_zone(TimeZone::UTC)
    }

    fn agent(region: &str, ip: &str) -> AgentId {
        AgentId::new(Region::new(region).unwrap(), ip.parse().unwrap())
    }

    fn done(task_id: u64, agent: AgentId, stdout: &[u8]) -> TaskRecord {
        TaskRecord {
            task_id,
            agent,
            command: "uptime".to_owned(),
            state: TaskState::Done,
            output: TaskOutput {
                exit_code: Some(0),
                stdout: stdout.to_vec(),
                stderr: Vec::new(),
                truncated: false,
                timed_out: false,
                duration: Duration::from_millis(12),
            },
            reason: None,
            finished_at: finished_at(),
        }
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn set_age(path: &Path, age: Duration) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::now() - age)
            .unwrap();
    }

    fn now() -> UnixMillis {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        UnixMillis(u64::try_from(since_epoch.as_millis()).unwrap())
    }

    #[test]
    fn task_archive_records_round_trip_with_every_field() {
        let temp = TempDir::new("round-trip");
        let archive = open_utc(&temp.0.join("meta"), ArchiveLimits::default());
        let timed_out = TaskRecord {
            task_id: 42,
            agent: agent("eu_west:2", "2001:db8::1"),
            command: "ping -c 100 10.0.0.2".to_owned(),
            state: TaskState::TimedOut,
            output: TaskOutput {
                exit_code: None,
                stdout: vec![0xff, 0xfe, b'a', b'\n', 0],
                stderr: "warn: é\n".as_bytes().to_vec(),
                truncated: true,
                timed_out: true,
                duration: Duration::from_secs(30),
            },
            reason: None,
            finished_at: finished_at(),
        };
        let refused = TaskRecord {
            task_id: 42,
            agent: agent("ap", "10.0.0.1"),
            command: "ping -c 100 10.0.0.2".to_owned(),
            state: TaskState::Refused,
            output: TaskOutput::default(),
            reason: Some("the agent runs no tasks (-agent.task)".to_owned()),
            finished_at: UnixMillis(finished_at().0 + 1),
        };
        let failed = TaskRecord {
            output: TaskOutput {
                exit_code: Some(2),
                stdout: Vec::new(),
                stderr: b"unknown host\n".to_vec(),
                ..TaskOutput::default()
            },
            state: TaskState::Failed,
            ..done(42, agent("us", "192.0.2.7"), b"")
        };
        for record in [&timed_out, &refused, &failed] {
            archive.file(record).unwrap();
        }
        archive
            .file(&done(43, agent("ap", "10.0.0.1"), b"other\n"))
            .unwrap();

        let results = archive.results(42).unwrap();
        assert_eq!(results, vec![refused, timed_out.clone(), failed]);
        assert_eq!(archive.results(44).unwrap(), Vec::new());

        // The JSON as promised: the lossy text, and the exact bytes only where they are needed.
        let json_path = archive.dir().join("by-task/42/eu_west:2_2001:db8::1.json");
        assert_eq!(mode_of(&json_path), 0o600);
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(&json_path).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "task_id": 42,
                "agent": {"region": "eu_west:2", "ip": "2001:db8::1"},
                "command": "ping -c 100 10.0.0.2",
                "state": "timed_out",
                "exit_code": null,
                "timed_out": true,
                "truncated": true,
                "duration_ms": 30_000,
                "stdout": "\u{fffd}\u{fffd}a\n\u{0}",
                "stderr": "warn: é\n",
                "stdout_base64": "//5hCgA=",
                "reason": null,
                "finished_at_ms": timed_out.finished_at.0,
                "result_file": "eu_west:2_2001:db8::1_2026-01-02_03-04-05",
            })
        );
        // The Go file of the IPv6 agent, named as Display prints the address.
        let go_file = archive
            .dir()
            .join("eu_west:2_2001:db8::1_2026-01-02_03-04-05");
        let mut expected =
            b"commond:\nping -c 100 10.0.0.2 \n\noutput:\n\xff\xfea\n\0warn: \xc3\xa9\n".to_vec();
        expected.extend_from_slice(b"\n[output truncated: each stream is kept up to its limit]\n");
        assert_eq!(fs::read(go_file).unwrap(), expected);
    }

    #[test]
    fn task_archive_go_file_has_the_go_layout_name_and_mode() {
        let temp = TempDir::new("go-file");
        let archive = open_utc(&temp.0.join("meta"), ArchiveLimits::default());
        archive
            .file(&done(1, agent("a", "10.0.0.1"), b" 03:04:05 up 1 day\n"))
            .unwrap();
        let path = archive.dir().join("a_10.0.0.1_2026-01-02_03-04-05");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "commond:\nuptime \n\noutput:\n 03:04:05 up 1 day\n"
        );
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(mode_of(archive.dir()), 0o700);

        // A refusal says so where the output would be.
        let refused = TaskRecord {
            state: TaskState::Refused,
            reason: Some("rm is not on the allow-list".to_owned()),
            output: TaskOutput::default(),
            command: "rm -rf /".to_owned(),
            ..done(2, agent("b", "10.0.0.2"), b"")
        };
        archive.file(&refused).unwrap();
        assert_eq!(
            fs::read_to_string(archive.dir().join("b_10.0.0.2_2026-01-02_03-04-05")).unwrap(),
            "commond:\nrm -rf / \n\noutput:\nrefused: rm is not on the allow-list\n"
        );
        // As does a program that could not start, whose reason is also its stderr.
        let not_started = TaskRecord {
            state: TaskState::Failed,
            reason: Some("no such program: pnig".to_owned()),
            output: TaskOutput {
                exit_code: None,
                stderr: b"no such program: pnig\n".to_vec(),
                ..TaskOutput::default()
            },
            command: "pnig".to_owned(),
            ..done(3, agent("c", "10.0.0.3"), b"")
        };
        archive.file(&not_started).unwrap();
        assert_eq!(
            fs::read_to_string(archive.dir().join("c_10.0.0.3_2026-01-02_03-04-05")).unwrap(),
            "commond:\npnig \n\noutput:\nfailed: no such program: pnig\nno such program: pnig\n"
        );

        // The name's time is the server's local one.
        let temp = TempDir::new("go-file-zone");
        let shanghai = FileTaskArchive::open(&temp.0, ArchiveLimits::default())
            .unwrap()
            .with_time_zone(TimeZone::fixed(Offset::constant(8)));
        shanghai
            .file(&done(1, agent("a", "10.0.0.1"), b""))
            .unwrap();
        assert!(temp.0.join("a_10.0.0.1_2026-01-02_11-04-05").is_file());
        // By default, the system's.
        let temp = TempDir::new("go-file-system-zone");
        let system = FileTaskArchive::open(&temp.0, ArchiveLimits::default()).unwrap();
        system.file(&done(1, agent("a", "10.0.0.1"), b"")).unwrap();
        let local = Timestamp::from_millisecond(i64::try_from(finished_at().0).unwrap())
            .unwrap()
            .to_zoned_datetime(TimeZone::system());
        let stamp = jiff::fmt::strtime::format(GO_TIME_FORMAT, &local).unwrap();
        assert!(temp.0.join(format!("a_10.0.0.1_{stamp}")).is_file());
    }

    #[test]
    fn task_archive_keeps_two_results_of_one_second_apart() {
        let temp = TempDir::new("same-second");
        let archive = open_utc(&temp.0, ArchiveLimits::default());
        let a = agent("a", "10.0.0.1");
        for stdout in [&b"first\n"[..], b"second\n", b"third\n"] {
            archive.file(&done(7, a.clone(), stdout)).unwrap();
        }
        let base = temp.0.join("a_10.0.0.1_2026-01-02_03-04-05");
        let read =
            |suffix: &str| fs::read_to_string(format!("{}{suffix}", base.display())).unwrap();
        assert_eq!(read(""), "commond:\nuptime \n\noutput:\nfirst\n");
        assert_eq!(read("_2"), "commond:\nuptime \n\noutput:\nsecond\n");
        assert_eq!(read("_3"), "commond:\nuptime \n\noutput:\nthird\n");
        // The run's record is the latest, naming its own Go file; no temporary file stays.
        let results = archive.results(7).unwrap();
        assert_eq!(results, vec![done(7, a, b"third\n")]);
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(temp.0.join("by-task/7/a_10.0.0.1.json")).unwrap())
                .unwrap();
        assert_eq!(json["result_file"], "a_10.0.0.1_2026-01-02_03-04-05_3");
        assert_eq!(
            names_in(&temp.0),
            [
                "a_10.0.0.1_2026-01-02_03-04-05",
                "a_10.0.0.1_2026-01-02_03-04-05_2",
                "a_10.0.0.1_2026-01-02_03-04-05_3",
                "by-task",
            ]
        );
        assert_eq!(names_in(&temp.0.join("by-task/7")), ["a_10.0.0.1.json"]);
    }

    #[test]
    fn task_archive_creates_a_missing_directory_and_keeps_the_first_result() {
        let temp = TempDir::new("missing");
        let dir = temp.0.join("var/task_meta");
        let archive = open_utc(&dir, ArchiveLimits::default());
        assert_eq!(mode_of(&dir), 0o700);
        let first = done(1, agent("a", "10.0.0.1"), b"first\n");
        archive.file(&first).unwrap();
        assert_eq!(archive.results(1).unwrap(), vec![first]);

        // Removed while the server runs: made again, and that result kept too (Go dropped the
        // result that made it create the directory).
        fs::remove_dir_all(&dir).unwrap();
        let again = done(2, agent("a", "10.0.0.1"), b"again\n");
        archive.file(&again).unwrap();
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(archive.results(2).unwrap(), vec![again]);
        assert!(dir.join("a_10.0.0.1_2026-01-02_03-04-05").is_file());

        // A directory every user may write is refused.
        let open = temp.0.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let refused = FileTaskArchive::open(&open, ArchiveLimits::default()).unwrap_err();
        assert_eq!(refused.operation, "using the task directory");
        assert_eq!(refused.location, open.display().to_string());
    }

    fn audit_entry(task_id: u64) -> AuditEntry {
        AuditEntry {
            at: finished_at(),
            action: AuditAction::Submitted,
            actor: "admin-token:3f2a".to_owned(),
            remote: "192.0.2.1:50000".to_owned(),
            task_id: Some(task_id),
            selector: "= \"line\"\nbreak".to_owned(),
            command: "uptime".to_owned(),
            signed: true,
            matched: vec![agent("a", "10.0.0.1"), agent("b", "2001:db8::2")],
            outcome: "accepted".to_owned(),
        }
    }

    fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn task_archive_appends_audit_lines_and_rotates_them_at_the_limit() {
        let temp = TempDir::new("audit");
        let archive = open_utc(&temp.0.join("meta"), ArchiveLimits::default());
        archive.audit(&audit_entry(1)).unwrap();
        let refused = AuditEntry {
            action: AuditAction::Refused,
            task_id: None,
            matched: Vec::new(),
            outcome: "no credential".to_owned(),
            ..audit_entry(0)
        };
        archive.audit(&refused).unwrap();
        let path = archive.dir().join("audit.jsonl");
        assert_eq!(mode_of(&path), 0o600);
        let lines = audit_lines(&path);
        assert_eq!(
            lines[0],
            serde_json::json!({
                "at_ms": finished_at().0,
                "at": "2026-01-02T03:04:05.678Z",
                "action": "submitted",
                "actor": "admin-token:3f2a",
                "remote": "192.0.2.1:50000",
                "task_id": 1,
                "selector": "= \"line\"\nbreak",
                "command": "uptime",
                "signed": true,
                "matched": ["a/10.0.0.1", "b/2001:db8::2"],
                "outcome": "accepted",
            })
        );
        assert_eq!(lines[1]["action"], "refused");
        assert_eq!(lines[1]["task_id"], serde_json::Value::Null);
        assert_eq!(lines[1]["matched"], serde_json::json!([]));
        assert_eq!(lines.len(), 2);

        // Lines of one length: two fit under the limit, a third rotates.
        let line_bytes = fs::read_to_string(&path)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .len() as u64
            + 1;
        let temp = TempDir::new("audit-rotate");
        let limits = ArchiveLimits {
            audit_max_bytes: 2 * line_bytes,
            ..ArchiveLimits::default()
        };
        let archive = open_utc(&temp.0, limits);
        let current = temp.0.join("audit.jsonl");
        let rotated = temp.0.join("audit.jsonl.1");
        let ids = |path: &Path| -> Vec<u64> {
            audit_lines(path)
                .iter()
                .map(|line| line["task_id"].as_u64().unwrap())
                .collect()
        };
        for id in 1..=2 {
            archive.audit(&audit_entry(id)).unwrap();
        }
        assert_eq!(ids(&current), [1, 2]);
        assert!(!rotated.exists());
        archive.audit(&audit_entry(3)).unwrap();
        assert_eq!((ids(&rotated), ids(&current)), (vec![1, 2], vec![3]));
        archive.audit(&audit_entry(4)).unwrap();
        archive.audit(&audit_entry(5)).unwrap();
        // The older rotated file is replaced.
        assert_eq!((ids(&rotated), ids(&current)), (vec![3, 4], vec![5]));
        assert_eq!(mode_of(&current), 0o600);
    }

    #[test]
    fn task_archive_prunes_by_age_and_keeps_the_audit_log_and_strangers() {
        let temp = TempDir::new("prune-age");
        let archive = open_utc(&temp.0, ArchiveLimits::default());
        let week = Duration::from_secs(8 * 24 * 60 * 60);
        let old = done(1, agent("a", "10.0.0.1"), b"old\n");
        let new = done(2, agent("a", "10.0.0.1"), b"new\n");
        let mixed_old = done(3, agent("a", "10.0.0.1"), b"mixed old\n");
        let mixed_new = TaskRecord {
            finished_at: UnixMillis(finished_at().0 + 1000),
            ..done(3, agent("b", "10.0.0.2"), b"mixed new\n")
        };
        for record in [&old, &new, &mixed_old, &mixed_new] {
            archive.file(record).unwrap();
        }
        archive.audit(&audit_entry(1)).unwrap();
        fs::write(temp.0.join("notes.txt"), "the operator's").unwrap();
        fs::write(temp.0.join("by-task/1/README"), "the operator's too").unwrap();
        fs::write(temp.0.join("audit.jsonl.1"), "{}\n").unwrap();
        let leftover = temp.0.join(".task-archive.1.0.tmp");
        fs::write(&leftover, "half").unwrap();
        let go = |suffix: &str| {
            temp.0
                .join(format!("a_10.0.0.1_2026-01-02_03-04-05{suffix}"))
        };
        // Task 1's and the first of task 3's files are old (the first Go file is task 1's).
        for path in [
            go(""),
            go("_3"),
            temp.0.join("by-task/1/a_10.0.0.1.json"),
            temp.0.join("by-task/3/a_10.0.0.1.json"),
            temp.0.join("notes.txt"),
            temp.0.join("by-task/1/README"),
            temp.0.join("audit.jsonl"),
            temp.0.join("audit.jsonl.1"),
            leftover.clone(),
        ] {
            set_age(&path, week);
        }

        assert_eq!(archive.prune(now()).unwrap(), 5);
        assert!(!go("").exists() && !go("_3").exists() && !leftover.exists());
        assert!(go("_2").exists());
        assert_eq!(archive.results(1).unwrap(), Vec::new());
        assert_eq!(archive.results(2).unwrap(), vec![new]);
        assert_eq!(archive.results(3).unwrap(), vec![mixed_new]);
        for kept in [
            "notes.txt",
            "by-task/1/README",
            "audit.jsonl",
            "audit.jsonl.1",
        ] {
            assert!(temp.0.join(kept).exists(), "{kept}");
        }
        assert_eq!(names_in(&temp.0.join("by-task/1")), ["README"]);

        // An emptied task directory goes.
        set_age(&go("_2"), week);
        set_age(&temp.0.join("by-task/2/a_10.0.0.1.json"), week);
        assert_eq!(archive.prune(now()).unwrap(), 2);
        assert_eq!(names_in(&temp.0.join("by-task")), ["1", "3"]);
        assert_eq!(archive.prune(now()).unwrap(), 0);
    }

    #[test]
    fn task_archive_prunes_the_oldest_past_the_total_size() {
        let temp = TempDir::new("prune-size");
        let unlimited = open_utc(&temp.0, ArchiveLimits::default());
        for task_id in 1..=4 {
            unlimited
                .file(&done(task_id, agent("a", "10.0.0.1"), &[b'x'; 1000]))
                .unwrap();
        }
        unlimited.audit(&audit_entry(1)).unwrap();
        fs::write(temp.0.join("notes.txt"), [b'n'; 5000]).unwrap();
        // Task 1 is the oldest, task 4 the newest, all within the retention.
        let go = |n: &str| temp.0.join(format!("a_10.0.0.1_2026-01-02_03-04-05{n}"));
        for (task_id, suffix) in [(1_u64, ""), (2, "_2"), (3, "_3"), (4, "_4")] {
            let age = Duration::from_secs(60 * (5 - task_id));
            set_age(&go(suffix), age);
            set_age(
                &temp.0.join(format!("by-task/{task_id}/a_10.0.0.1.json")),
                age,
            );
        }
        let size_of = |task_id: u64, suffix: &str| {
            fs::metadata(go(suffix)).unwrap().len()
                + fs::metadata(temp.0.join(format!("by-task/{task_id}/a_10.0.0.1.json")))
                    .unwrap()
                    .len()
        };
        let json_1 = fs::metadata(temp.0.join("by-task/1/a_10.0.0.1.json"))
            .unwrap()
            .len();
        // Over by task 1's Go file: that file, the oldest, goes and nothing else.
        let limited = open_utc(
            &temp.0,
            ArchiveLimits {
                max_total_bytes: json_1 + size_of(2, "_2") + size_of(3, "_3") + size_of(4, "_4"),
                ..ArchiveLimits::default()
            },
        );
        assert_eq!(limited.prune(now()).unwrap(), 1);
        assert!(!go("").exists());
        assert!(temp.0.join("by-task/1/a_10.0.0.1.json").exists());
        // Room for two tasks' files: task 1's record and task 2's files go.
        let limited = open_utc(
            &temp.0,
            ArchiveLimits {
                max_total_bytes: size_of(3, "_3") + size_of(4, "_4"),
                ..ArchiveLimits::default()
            },
        );
        assert_eq!(limited.prune(now()).unwrap(), 3);
        assert!(!go("_2").exists() && go("_3").exists());
        assert_eq!(names_in(&temp.0.join("by-task")), ["3", "4"]);
        assert_eq!(limited.results(4).unwrap().len(), 1);
        assert!(temp.0.join("notes.txt").exists() && temp.0.join("audit.jsonl").exists());
    }

    #[test]
    fn task_archive_skips_a_corrupt_record() {
        let temp = TempDir::new("corrupt");
        let archive = open_utc(&temp.0, ArchiveLimits::default());
        let good = done(5, agent("a", "10.0.0.1"), b"ok\n");
        archive.file(&good).unwrap();
        fs::write(
            temp.0.join("by-task/5/b_10.0.0.2.json"),
            b"{\"task_id\": 5, trunc",
        )
        .unwrap();
        // A record of another agent under this one's name is not believed either.
        let moved = fs::read(temp.0.join("by-task/5/a_10.0.0.1.json")).unwrap();
        fs::write(temp.0.join("by-task/5/c_10.0.0.3.json"), moved).unwrap();
        // Files of other names are not records.
        fs::write(temp.0.join("by-task/5/notes.json"), b"[]").unwrap();
        assert_eq!(archive.results(5).unwrap(), vec![good]);
    }

    #[test]
    fn task_archive_names_are_recognised_exactly() {
        for name in [
            "a_10.0.0.1_2026-01-02_03-04-05",
            "a_10.0.0.1_2026-01-02_03-04-05_2",
            "eu_west:2_2001:db8::1_2026-01-02_03-04-05_17",
            "华东_10.0.0.1_2026-01-02_03-04-05",
        ] {
            assert!(is_go_file_name(name), "{name}");
        }
        for name in [
            "audit.jsonl",
            "audit.jsonl.1",
            "notes.txt",
            "a_10.0.0.1_2026-01-02_03-04-05_",
            "a_10.0.0.1_2026-01-02_03-04-05.bak",
            "a_10.0.0.1_2026-01-02_03-04",
            "a_host_2026-01-02_03-04-05",
            "_10.0.0.1_2026-01-02_03-04-05",
            "by-task",
            ".task-archive.1.0.tmp",
        ] {
            assert!(!is_go_file_name(name), "{name}");
        }
        assert!(is_record_name("a_10.0.0.1.json") && is_record_name("a_b_::1.json"));
        assert!(!is_record_name("a_10.0.0.1.json.bak") && !is_record_name("10.0.0.1.json"));
        assert!(is_task_dir_name("42") && !is_task_dir_name("042") && !is_task_dir_name("+4"));
    }
}
