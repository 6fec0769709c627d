//! The task runner ([`ProcessTaskRunner`], port `TaskRunner`): a remote task's command as a
//! child process, so that whatever the command does, the agent gets a bounded answer and
//! nothing of it stays behind. The child gets its own process group, a cleared environment
//! (`PATH` and the locale kept), `/` as its working directory and no stdin; its stdout and
//! stderr are read concurrently and kept each up to the run's limit (the rest is read and
//! dropped, so the child never blocks on a full pipe); at the timeout, and again as soon as the
//! command exits, the whole group is killed with `SIGKILL`, so background children never
//! outlive the task; the child is always reaped.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use probermesh_core::link::TaskOutput;
use probermesh_core::ports::TaskRunner;
use probermesh_core::task::{Invocation, TaskRun};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

/// The shell that runs [`Invocation::Shell`] scripts unless the runner is given another.
pub const DEFAULT_SHELL_PATH: &str = "/bin/sh";

/// The command's `PATH` when the agent has none (or an empty one).
const FALLBACK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The locale variables passed on to the command when the agent has them.
const LOCALE_VARS: [&str; 4] = ["LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES"];

/// How long the readers get to reach the end of the pipes once the group is killed: a process
/// that left the group (`setsid`) may hold them open for ever.
const PIPE_DRAIN_BOUND: Duration = Duration::from_secs(1);

/// How long to wait for a child killed with `SIGKILL` to be reaped before leaving it to tokio's
/// background reaping (a process in uninterruptible sleep dies only when its I/O returns).
const REAP_BOUND: Duration = Duration::from_secs(5);

/// The size of one read from a pipe.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Runs each task as a child process (the agent's implementation of `TaskRunner`).
///
/// [`Invocation::Program`] is executed directly, without a shell (a bare name is looked up in
/// the kept `PATH`); [`Invocation::Shell`] as `<shell> -c <script>`.
#[derive(Clone, Debug)]
pub struct ProcessTaskRunner {
    shell_path: PathBuf,
}

impl ProcessTaskRunner {
    /// A runner whose shell is [`DEFAULT_SHELL_PATH`].
    #[must_use]
    pub fn new() -> Self {
        Self::with_shell_path(DEFAULT_SHELL_PATH)
    }

    /// A runner that runs shell scripts with the shell at `shell_path`.
    #[must_use]
    pub fn with_shell_path(shell_path: impl Into<PathBuf>) -> Self {
        Self {
            shell_path: shell_path.into(),
        }
    }

    /// The shell that runs [`Invocation::Shell`] scripts.
    #[must_use]
    pub fn shell_path(&self) -> &Path {
        &self.shell_path
    }

    /// The command for `invocation`, set up as the module's first lines say, and the name of
    /// the program it starts (for the message when it cannot start).
    fn command(&self, invocation: &Invocation) -> (Command, String) {
        let (mut command, program) = match invocation {
            Invocation::Program { program, args } => {
                let mut command = Command::new(program);
                command.args(args);
                (command, program.clone())
            }
            Invocation::Shell { script } => {
                let mut command = Command::new(&self.shell_path);
                command.arg("-c").arg(script);
                (command, self.shell_path.display().to_string())
            }
        };
        let path = std::env::var_os("PATH")
            .filter(|path| !path.is_empty())
            .unwrap_or_else(|| OsString::from(FALLBACK_PATH));
        command.env_clear().env("PATH", path);
        for name in LOCALE_VARS {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        (command, program)
    }
}

impl Default for ProcessTaskRunner {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl TaskRunner for ProcessTaskRunner {
    async fn run(&self, run: TaskRun) -> TaskOutput {
        let (mut command, program) = self.command(&run.invocation);
        let started = Instant::now();
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(cause) => {
                let error = StartError { program, cause };
                tracing::debug!(task = run.id, %error, "task did not start");
                return TaskOutput {
                    stderr: error.to_string().into_bytes(),
                    duration: started.elapsed(),
                    ..TaskOutput::default()
                };
            }
        };
        // The child leads its own group (`process_group(0)`): the group's id is its pid.
        let mut group = GroupKill::new(child.id());
        tracing::debug!(task = run.id, pid = ?child.id(), "task started");

        let mut stdout = Capture::new(run.output_limit_bytes);
        let mut stderr = Capture::new(run.output_limit_bytes);
        let (stdout_pipe, stderr_pipe) = (child.stdout.take(), child.stderr.take());
        let (exit_code, timed_out, duration) = {
            let mut readers = pin!(async {
                tokio::join!(
                    drain(stdout_pipe, &mut stdout),
                    drain(stderr_pipe, &mut stderr)
                );
            });
            let mut readers_done = false;
            let mut deadline = pin!(tokio::time::sleep(run.timeout));
            let end = loop {
                tokio::select! {
                    status = child.wait() => break End::Exited(status),
                    () = &mut readers, if !readers_done => readers_done = true,
                    () = &mut deadline => break End::TimedOut,
                }
            };
            let duration = started.elapsed();
            // Whatever the command left behind goes with it (and at the timeout, the command).
            group.kill();
            let (exit_code, timed_out) = match end {
                End::Exited(Ok(status)) => (status.code(), false),
                End::Exited(Err(error)) => {
                    tracing::debug!(task = run.id, %error, "waiting for the task failed");
                    kill_and_reap(&mut child, run.id).await;
                    (None, false)
                }
                End::TimedOut => {
                    kill_and_reap(&mut child, run.id).await;
                    (None, true)
                }
            };
            if !readers_done
                && tokio::time::timeout(PIPE_DRAIN_BOUND, &mut readers)
                    .await
                    .is_err()
            {
                tracing::debug!(
                    task = run.id,
                    "the task's pipes stayed open after its group was killed; stopped reading"
                );
            }
            (exit_code, timed_out, duration)
        };
        let output = TaskOutput {
            exit_code,
            truncated: stdout.truncated || stderr.truncated,
            stdout: stdout.kept,
            stderr: stderr.kept,
            timed_out,
            duration,
        };
        tracing::debug!(
            task = run.id,
            exit_code = ?output.exit_code,
            timed_out,
            truncated = output.truncated,
            stdout_bytes = output.stdout.len(),
            stderr_bytes = output.stderr.len(),
            duration = ?duration,
            "task ended"
        );
        output
    }
}

/// Why a task's program could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start {program:?}: {cause}")]
struct StartError {
    /// The program (or the shell).
    program: String,
    /// What the OS said.
    cause: io::Error,
}

/// How the wait for a task's command ended.
enum End {
    /// The command exited (or waiting for it failed).
    Exited(io::Result<std::process::ExitStatus>),
    /// The timeout elapsed first.
    TimedOut,
}

/// Kills a task's process group once: explicitly when the command has ended or timed out, or
/// when the run is dropped halfway (its caller gave up on it), so no process of it outlives
/// the run either way.
///
/// After a normal exit the group is killed right after its leader is reaped (tokio offers no
/// wait that leaves the child unreaped). While any member is left its id cannot have been
/// reused (Linux frees a pid only when no process uses it as its group id); with none left the
/// kill finds no process, unless in that instant a new process got the same pid and made
/// itself a group leader (pids are handed out in turn, so they would have to wrap round first).
#[derive(Debug)]
struct GroupKill {
    /// The group, until it is killed.
    pgid: Option<Pid>,
}

impl GroupKill {
    /// The group led by the child with pid `leader` (none when the child has no pid, that is
    /// it was already reaped).
    fn new(leader: Option<u32>) -> Self {
        let pgid = leader
            .and_then(|leader| i32::try_from(leader).ok())
            .filter(|&leader| leader > 1)
            .map(Pid::from_raw);
        Self { pgid }
    }

    /// Sends `SIGKILL` to every process of the group (the first call only).
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            match killpg(pgid, Signal::SIGKILL) {
                // No process was left in the group.
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(error) => tracing::debug!(%pgid, %error, "cannot kill a task's process group"),
            }
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills `child` itself too (it may have left its group) and reaps it, within [`REAP_BOUND`]:
/// past that, dropping it leaves the reaping to tokio.
async fn kill_and_reap(child: &mut Child, task: u64) {
    if let Err(error) = child.start_kill() {
        tracing::debug!(task, %error, "cannot kill the task's process");
    }
    match tokio::time::timeout(REAP_BOUND, child.wait()).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::debug!(task, %error, "cannot reap the task's process"),
        Err(_) => tracing::debug!(task, bound = ?REAP_BOUND, "the killed task's process lingers"),
    }
}

/// What is kept of one output stream.
#[derive(Debug)]
struct Capture {
    /// The first bytes, at most `limit_bytes`.
    kept: Vec<u8>,
    /// The most kept.
    limit_bytes: usize,
    /// Whether more came than was kept.
    truncated: bool,
}

impl Capture {
    /// Nothing yet, keeping at most `limit_bytes`.
    fn new(limit_bytes: usize) -> Self {
        Self {
            kept: Vec::new(),
            limit_bytes,
            truncated: false,
        }
    }

    /// Keeps what fits of `chunk`, the next bytes of the stream.
    fn take(&mut self, chunk: &[u8]) {
        let room = self.limit_bytes.saturating_sub(self.kept.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        // `get(..room)` is none when all of `chunk` fits.
        self.kept
            .extend_from_slice(chunk.get(..room).unwrap_or(chunk));
    }
}

/// Reads `pipe` to its end into `capture` (reading on past the limit, keeping nothing more).
/// What was read stays in `capture` when this is dropped halfway.
async fn drain(pipe: Option<impl AsyncRead + Unpin>, capture: &mut Capture) {
    let Some(mut pipe) = pipe else { return };
    let mut chunk = vec![0; READ_CHUNK_BYTES];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) => return,
            Ok(len) => capture.take(chunk.get(..len).unwrap_or(&chunk)),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::debug!(%error, "reading a task's output failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long enough for anything these tests run to finish on a loaded machine.
    const GENEROUS: Duration = Duration::from_secs(60);

    fn run_of(invocation: Invocation, timeout: Duration, output_limit_bytes: usize) -> TaskRun {
        TaskRun {
            id: 7,
            invocation,
            timeout,
            output_limit_bytes,
        }
    }

    fn shell(script: &str) -> Invocation {
        Invocation::Shell {
            script: script.to_owned(),
        }
    }

    fn program(program: &str, args: &[&str]) -> Invocation {
        Invocation::Program {
            program: program.to_owned(),
            args: args.iter().map(|&arg| arg.to_owned()).collect(),
        }
    }

    async fn run(invocation: Invocation) -> TaskOutput {
        ProcessTaskRunner::new()
            .run(run_of(invocation, GENEROUS, 64 * 1024))
            .await
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    /// The state and the process group of the process `pid`, from `/proc/<pid>/stat` (none
    /// when it is gone).
    fn state_and_group(pid: i32) -> Option<(char, i32)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
        let (_, rest) = stat.rsplit_once(')')?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let _ppid = fields.next()?;
        let pgrp = fields.next()?.parse().ok()?;
        Some((state, pgrp))
    }

    /// Whether `pid` is a process that has not died (zombies are dead, waiting for a reaper).
    fn alive(pid: i32) -> bool {
        state_and_group(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X' | 'x'))
    }

    /// The living processes of the process group `wanted`.
    fn living_members(wanted: i32) -> Vec<i32> {
        let mut members = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse().ok())
            else {
                continue;
            };
            if state_and_group(pid).is_some_and(|(_, group)| group == wanted) && alive(pid) {
                members.push(pid);
            }
        }
        members
    }

    /// Waits (up to 5 s) until neither the group `pgid` nor any of `pids` has a living
    /// process; else kills what is left and fails naming it.
    async fn assert_all_gone(pgid: i32, pids: &[i32]) {
        let started = Instant::now();
        loop {
            let mut left = living_members(pgid);
            left.extend(pids.iter().copied().filter(|&pid| alive(pid)));
            left.sort_unstable();
            left.dedup();
            if left.is_empty() {
                return;
            }
            if started.elapsed() > Duration::from_secs(5) {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                for &pid in &left {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                panic!("processes left behind by the task (group {pgid}): {left:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The numbers the script printed, one a line.
    fn pids_in(stdout: &[u8]) -> Vec<i32> {
        text(stdout)
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    #[test]
    fn the_proc_scan_sees_a_living_group() {
        let own_group = nix::unistd::getpgrp().as_raw();
        let own_pid = i32::try_from(std::process::id()).expect("a pid fits an i32");
        assert!(alive(own_pid));
        assert!(living_members(own_group).contains(&own_pid));
    }

    #[tokio::test]
    async fn both_streams_of_a_shell_script_are_captured() {
        let output = run(shell("echo out; echo err >&2")).await;
        assert_eq!(text(&output.stdout), "out\n");
        assert_eq!(text(&output.stderr), "err\n");
        assert_eq!(output.exit_code, Some(0));
        assert!(!output.truncated);
        assert!(!output.timed_out);
    }

    #[tokio::test]
    async fn a_program_runs_without_a_shell_with_each_argument_one_word() {
        let output = run(program("/bin/echo", &["hello"])).await;
        assert_eq!(text(&output.stdout), "hello\n");
        assert_eq!(output.exit_code, Some(0));

        // A bare name is found in the kept PATH; spaces and `$` reach it unchanged.
        let output = run(program("printf", &["%s|%s", "a b", "$HOME"])).await;
        assert_eq!(text(&output.stdout), "a b|$HOME");
        assert_eq!(output.exit_code, Some(0));
    }

    #[tokio::test]
    async fn a_non_zero_exit_code_is_reported() {
        let output = run(shell("exit 3")).await;
        assert_eq!(output.exit_code, Some(3));
        assert!(!output.timed_out);
    }

    #[tokio::test]
    async fn a_command_killed_by_a_signal_has_no_exit_code() {
        let output = run(shell("kill -9 $$")).await;
        assert_eq!(output.exit_code, None);
        assert!(!output.timed_out);
    }

    #[tokio::test]
    async fn output_over_the_limit_is_cut_and_flagged_and_the_command_still_finishes() {
        let script = "head -c 1000000 /dev/zero; head -c 1000000 /dev/zero >&2";
        let output = ProcessTaskRunner::new()
            .run(run_of(shell(script), GENEROUS, 1024))
            .await;
        assert_eq!(output.stdout.len(), 1024);
        assert_eq!(output.stderr.len(), 1024);
        assert!(output.truncated);
        assert!(!output.timed_out);
        assert_eq!(output.exit_code, Some(0));
    }

    #[tokio::test]
    async fn output_of_exactly_the_limit_is_not_truncated() {
        let output = ProcessTaskRunner::new()
            .run(run_of(program("printf", &["abcd"]), GENEROUS, 4))
            .await;
        assert_eq!(text(&output.stdout), "abcd");
        assert!(!output.truncated);
    }

    #[tokio::test]
    async fn at_the_timeout_the_whole_group_is_killed() {
        // The shell prints its background children's pids, then its own (its group's id), and
        // becomes the third sleep: every process of the task is named in its output.
        let script = "sleep 300 & echo $!; sleep 300 & echo $!; echo $$; exec sleep 300";
        let output = ProcessTaskRunner::new()
            .run(run_of(shell(script), Duration::from_secs(1), 64 * 1024))
            .await;
        let pids = pids_in(&output.stdout);
        assert_eq!(pids.len(), 3, "stdout: {:?}", text(&output.stdout));
        assert_all_gone(pids[2], &pids).await;
        assert!(output.timed_out);
        assert_eq!(output.exit_code, None);
        assert!(output.duration >= Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_background_child_does_not_outlive_a_command_that_exits() {
        let output = run(shell("sleep 300 & echo $!; echo $$")).await;
        let pids = pids_in(&output.stdout);
        assert_eq!(pids.len(), 2, "stdout: {:?}", text(&output.stdout));
        assert_all_gone(pids[1], &pids).await;
        assert_eq!(output.exit_code, Some(0));
        assert!(!output.timed_out);
    }

    #[tokio::test]
    async fn a_process_that_left_the_group_does_not_hold_the_run_by_its_pipes() {
        // `setsid` takes the sleep out of the group, with the pipes still open in it: the
        // group kill cannot reach it, so reading stops at the bound instead of its end.
        let runner = ProcessTaskRunner::new();
        let task = runner.run(run_of(shell("setsid sleep 300 & echo $!"), GENEROUS, 1024));
        let output = tokio::time::timeout(Duration::from_secs(30), task).await;
        let escaped = output.as_ref().ok().map(|output| pids_in(&output.stdout));
        if let Some(pids) = &escaped {
            for &pid in pids {
                if alive(pid) {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        let output = output.expect("the run returns although the pipes stay open");
        assert_eq!(
            escaped.map(|pids| pids.len()),
            Some(1),
            "{:?}",
            text(&output.stdout)
        );
        assert_eq!(output.exit_code, Some(0));
        assert!(!output.timed_out);
    }

    #[tokio::test]
    async fn the_environment_is_cleared_but_for_path_and_the_locale() {
        assert!(
            std::env::vars_os().any(|(name, _)| name.to_string_lossy().starts_with("CARGO")),
            "the test expects cargo's variables in its own environment"
        );
        let output = run(program("/usr/bin/env", &[])).await;
        assert_eq!(output.exit_code, Some(0));
        let env = text(&output.stdout);
        let names: Vec<&str> = env
            .lines()
            .map(|line| line.split_once('=').map_or(line, |(name, _)| name))
            .collect();
        assert!(names.contains(&"PATH"), "{env}");
        for name in names {
            assert!(
                name == "PATH" || LOCALE_VARS.contains(&name),
                "{name} reached the command: {env}"
            );
        }
    }

    #[tokio::test]
    async fn the_working_directory_is_the_root() {
        let output = run(shell("pwd")).await;
        assert_eq!(text(&output.stdout), "/\n");
    }

    #[tokio::test]
    async fn stdin_is_closed() {
        let output = run(program("/bin/cat", &[])).await;
        assert_eq!(output.exit_code, Some(0));
        assert!(output.stdout.is_empty());
        assert!(output.stderr.is_empty());
        assert!(!output.timed_out);
    }

    #[tokio::test]
    async fn a_program_that_cannot_start_says_why() {
        let output = run(program("probermesh-no-such-program", &["x"])).await;
        assert_eq!(output.exit_code, None);
        assert!(!output.timed_out);
        assert!(output.stdout.is_empty());
        let message = text(&output.stderr);
        assert!(
            message.starts_with("cannot start \"probermesh-no-such-program\": "),
            "{message}"
        );
        assert!(message.contains("(os error 2)"), "{message}");

        // Not executable: permission denied, even for root.
        let output = run(program("/etc/passwd", &[])).await;
        assert_eq!(output.exit_code, None);
        let message = text(&output.stderr);
        assert!(
            message.starts_with("cannot start \"/etc/passwd\": "),
            "{message}"
        );
        assert!(message.contains("(os error 13)"), "{message}");

        let output = ProcessTaskRunner::with_shell_path("/nonexistent/sh")
            .run(run_of(shell("true"), GENEROUS, 1024))
            .await;
        assert_eq!(output.exit_code, None);
        let message = text(&output.stderr);
        assert!(
            message.starts_with("cannot start \"/nonexistent/sh\": "),
            "{message}"
        );
    }
}
