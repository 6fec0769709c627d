//! The new version's trial: it runs as a child of the old (known-good) process, which waits
//! until the child says it is committed (it connected and its results were acknowledged, as
//! core's probation decides), exits, or runs out of time. Only a committed child is installed;
//! anything else is rolled back by the process that is known to work.
//!
//! Why a trial rather than a detached watcher or a swap-then-check: a watcher is either the old
//! binary left running beside the new one (Elastic's, whose bugs can never be upgraded away)
//! or a fresh process that must survive the restart it watches, and both behave differently
//! under systemd (which kills the unit's processes), supervisord and a shell loop. Swapping
//! first and checking after needs the *new* binary to notice its own failure, which a binary
//! that crashes at start cannot do. Here nothing is replaced until the new version has proved
//! itself, and the old process's own exit status is all a supervisor sees.
//!
//! The child learns the marker's path from `PROBERMESH_UPGRADE_TRIAL` (see
//! [`trial_marker_from_env`], which also has the kernel stop the child if the waiting parent
//! dies) and writes it with [`mark_committed`].

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::preflight::{describe_status, spawn_retrying};

/// The environment variable naming the marker file of a trial child.
pub const TRIAL_ENV: &str = "PROBERMESH_UPGRADE_TRIAL";

/// The environment variable holding the waiting parent's pid (the child stops when it is gone).
pub const TRIAL_PARENT_ENV: &str = "PROBERMESH_UPGRADE_TRIAL_PARENT";

/// The environment variable holding the offer a trial child answers (it reports its commit
/// under this id).
pub const TRIAL_OFFER_ENV: &str = "PROBERMESH_UPGRADE_OFFER";

/// What a committed child writes in its marker.
const COMMITTED: &str = "committed\n";

/// How often the marker is looked at.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How long a child that failed its trial gets to stop on `SIGTERM` (closing its connection)
/// before it is killed.
const FAILED_GRACE: Duration = Duration::from_secs(2);

/// A trial to run.
#[derive(Clone, Debug)]
pub struct TrialSpec {
    /// The new binary.
    pub binary: PathBuf,
    /// Its arguments (the agent's own).
    pub args: Vec<OsString>,
    /// The marker file it writes once committed (removed first if present).
    pub marker: PathBuf,
    /// How long it has to commit.
    pub deadline: Duration,
    /// The server's offer it answers ([`TRIAL_OFFER_ENV`]).
    pub offer_id: u64,
}

/// How a trial ended.
#[derive(Debug)]
pub enum TrialOutcome {
    /// The child committed; it is still running.
    Committed(TrialChild),
    /// The child could not start, exited or timed out; it is gone (reaped).
    Failed {
        /// Why, for the operator.
        reason: String,
    },
}

/// A committed trial child, still running until [`TrialChild::stop`] (dropped without it, it is
/// killed with `SIGKILL`).
#[derive(Debug)]
pub struct TrialChild {
    child: Child,
    pid: Option<u32>,
}

impl TrialChild {
    /// The child's pid (none once reaped).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Stops the child: `SIGTERM`, up to `grace` for it to exit, then `SIGKILL`; always reaped.
    pub async fn stop(mut self, grace: Duration) {
        stop_child(&mut self.child, self.pid, grace).await;
    }
}

/// Runs the trial (see the module's first lines) and says how it ended. The child inherits the
/// environment (it is the agent itself), stdout and stderr, plus [`TRIAL_ENV`] and
/// [`TRIAL_PARENT_ENV`]; it is killed if this future is dropped.
///
/// The child's death signal (see [`trial_marker_from_env`]) follows the *thread* that spawned
/// it: call this from a runtime's worker or main thread, not from a `spawn_blocking` thread,
/// which ends when idle.
pub async fn run_trial(spec: TrialSpec) -> TrialOutcome {
    match std::fs::remove_file(&spec.marker) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return TrialOutcome::Failed {
                reason: format!(
                    "cannot remove the stale trial marker {}: {error}",
                    spec.marker.display()
                ),
            };
        }
    }
    let mut command = Command::new(&spec.binary);
    command
        .args(&spec.args)
        .env(TRIAL_ENV, &spec.marker)
        .env(TRIAL_PARENT_ENV, std::process::id().to_string())
        .env(TRIAL_OFFER_ENV, spec.offer_id.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = match spawn_retrying(&mut command).await {
        Ok(child) => child,
        Err(error) => {
            return TrialOutcome::Failed {
                reason: format!(
                    "the new version {} cannot be started: {error}",
                    spec.binary.display()
                ),
            };
        }
    };
    let pid = child.id();
    tracing::info!(binary = %spec.binary.display(), ?pid, deadline = ?spec.deadline, "the new version's trial started");
    let deadline = tokio::time::sleep(spec.deadline);
    tokio::pin!(deadline);
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            status = child.wait() => {
                let elapsed = started.elapsed();
                let reason = match status {
                    Ok(status) => format!(
                        "the new version {} after {} s, before it was committed",
                        describe_status(status),
                        seconds(elapsed)
                    ),
                    Err(error) => format!("waiting for the new version failed: {error}"),
                };
                // A commit written just before the exit does not count: it is gone.
                return TrialOutcome::Failed { reason };
            }
            _ = poll.tick() => {
                if is_committed(&spec.marker) {
                    tracing::info!(?pid, after = ?started.elapsed(), "the new version committed");
                    return TrialOutcome::Committed(TrialChild { child, pid });
                }
            }
            () = &mut deadline => {
                stop_child(&mut child, pid, FAILED_GRACE).await;
                return TrialOutcome::Failed {
                    reason: format!(
                        "the new version was not committed within {} s (did not connect, or its \
                         results were not acknowledged); it was stopped",
                        seconds(spec.deadline)
                    ),
                };
            }
        }
    }
}

/// Whether the marker exists and says committed.
fn is_committed(marker: &Path) -> bool {
    std::fs::read(marker).is_ok_and(|bytes| bytes == COMMITTED.as_bytes())
}

/// A duration in seconds for messages: whole seconds when whole (`90`), else one decimal
/// (`0.3`).
fn seconds(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        duration.as_secs().to_string()
    } else {
        format!("{:.1}", duration.as_secs_f64())
    }
}

/// `SIGTERM`, up to `grace`, `SIGKILL`, reaped.
async fn stop_child(child: &mut Child, pid: Option<u32>, grace: Duration) {
    if let Some(pid) = pid
        .and_then(|pid| i32::try_from(pid).ok())
        .filter(|&pid| pid > 1)
    {
        // The child is ours and not reaped yet: its pid cannot have been reused.
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(_) => return,
        Err(_) => tracing::warn!(
            ?pid,
            ?grace,
            "the new version did not stop on SIGTERM; killing it"
        ),
    }
    let _ = child.start_kill();
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        tracing::warn!(?pid, "the killed new version lingers; tokio will reap it");
    }
}

/// In a trial child: the marker named by [`TRIAL_ENV`], or none when this process is not on
/// trial. When it is, this also asks the kernel to send this process `SIGTERM` when the
/// waiting parent dies (`PR_SET_PDEATHSIG`; set here in the child because arming it between
/// fork and exec needs `pre_exec`, which is unsafe code, forbidden in this workspace) and
/// sends it at once if the parent is already gone.
#[must_use]
pub fn trial_marker_from_env() -> Option<PathBuf> {
    let marker = std::env::var_os(TRIAL_ENV).filter(|value| !value.is_empty())?;
    if let Err(error) = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM) {
        tracing::warn!(%error, "cannot arrange to stop with the waiting parent");
    }
    let parent = std::env::var(TRIAL_PARENT_ENV)
        .ok()
        .and_then(|pid| pid.parse::<i32>().ok());
    if let Some(parent) = parent
        && nix::unistd::getppid().as_raw() != parent
    {
        // The parent died before the death signal was armed.
        let _ = kill(nix::unistd::getpid(), Signal::SIGTERM);
    }
    Some(PathBuf::from(marker))
}

/// In a trial child: the offer it answers ([`TRIAL_OFFER_ENV`]), when its parent named one.
#[must_use]
pub fn trial_offer_from_env() -> Option<u64> {
    std::env::var(TRIAL_OFFER_ENV).ok()?.parse().ok()
}

/// In a trial child: says it is committed, atomically (a temporary file, flushed, renamed).
///
/// # Errors
/// The file cannot be written or renamed.
pub fn mark_committed(marker: &Path) -> std::io::Result<()> {
    let mut temp = marker.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(COMMITTED.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, marker)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::upgrade::test_dir::TestDir;

    /// Whether `pid` is a living process (not a zombie).
    pub(crate) fn alive(pid: i32) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("X");
        !matches!(state, "Z" | "X" | "x")
    }

    /// Whether `pid` is gone within 5 s: a killed process that is not our child (a
    /// grandchild, reparented) dies and is reaped by init a moment after the signal.
    pub(crate) fn gone_soon(pid: i32) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if !alive(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn spec(binary: PathBuf, dir: &TestDir, deadline: Duration) -> TrialSpec {
        TrialSpec {
            binary,
            args: vec!["agent".into(), "--region".into(), "eu".into()],
            marker: dir.path().join(".probermesh.upgrade-trial"),
            deadline,
            offer_id: 7,
        }
    }

    #[tokio::test]
    async fn a_child_that_exits_before_committing_fails_the_trial_saying_how() {
        let dir = TestDir::new("trial-crash");
        let binary = dir.script("probermesh.new", "sleep 0.3; exit 1");
        let TrialOutcome::Failed { reason } =
            run_trial(spec(binary, &dir, Duration::from_secs(60))).await
        else {
            panic!("a crashing child committed")
        };
        assert!(
            reason.starts_with("the new version exited with status 1 after 0."),
            "{reason}"
        );
        assert!(reason.ends_with(" s, before it was committed"), "{reason}");
    }

    #[tokio::test]
    async fn a_child_that_hangs_is_stopped_at_the_deadline_and_reaped() {
        let dir = TestDir::new("trial-hang");
        let pid_file = dir.path().join("pid");
        // It ignores SIGTERM, so the kill after the grace is what ends it.
        let binary = dir.script(
            "probermesh.new",
            &format!(
                "trap '' TERM; echo $$ > {}; while :; do sleep 1; done",
                pid_file.display()
            ),
        );
        let started = Instant::now();
        let TrialOutcome::Failed { reason } =
            run_trial(spec(binary, &dir, Duration::from_secs(1))).await
        else {
            panic!("a hanging child committed")
        };
        assert_eq!(
            reason,
            "the new version was not committed within 1 s (did not connect, or its results \
             were not acknowledged); it was stopped"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!alive(pid), "the hanging child {pid} was left running");
    }

    #[tokio::test]
    async fn a_child_that_commits_keeps_running_until_stopped_with_the_environment_it_needs() {
        let dir = TestDir::new("trial-commit");
        let pid_file = dir.path().join("pid");
        let args_file = dir.path().join("args");
        let binary = dir.script(
            "probermesh.new",
            &format!(
                "echo $$ > {pid}; echo \"$*\" > {args}\n\
                 [ \"$PROBERMESH_UPGRADE_TRIAL_PARENT\" = \"$PPID\" ] || exit 9\n\
                 sleep 0.2; printf 'committed\\n' > \"$PROBERMESH_UPGRADE_TRIAL.tmp\"\n\
                 mv \"$PROBERMESH_UPGRADE_TRIAL.tmp\" \"$PROBERMESH_UPGRADE_TRIAL\"\n\
                 exec sleep 600",
                pid = pid_file.display(),
                args = args_file.display()
            ),
        );
        let spec = spec(binary, &dir, Duration::from_secs(60));
        // A stale marker from an earlier trial does not count.
        std::fs::write(&spec.marker, COMMITTED).unwrap();
        let TrialOutcome::Committed(child) = run_trial(spec).await else {
            panic!("the committing child failed")
        };
        let pid = i32::try_from(child.pid().unwrap()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&pid_file).unwrap().trim(),
            pid.to_string()
        );
        assert_eq!(
            std::fs::read_to_string(&args_file).unwrap().trim(),
            "agent --region eu"
        );
        assert!(alive(pid));
        child.stop(Duration::from_secs(10)).await;
        assert!(!alive(pid), "the stopped child {pid} is still running");
    }

    #[tokio::test]
    async fn a_binary_that_cannot_start_fails_the_trial_naming_it() {
        let dir = TestDir::new("trial-missing");
        let binary = dir.path().join("absent");
        let TrialOutcome::Failed { reason } =
            run_trial(spec(binary.clone(), &dir, Duration::from_secs(5))).await
        else {
            panic!("a missing binary committed")
        };
        assert!(
            reason.starts_with(&format!(
                "the new version {} cannot be started: ",
                binary.display()
            )),
            "{reason}"
        );
    }

    #[test]
    fn the_child_side_reads_its_marker_and_commits_atomically() {
        let dir = TestDir::new("trial-child");
        let marker = dir.path().join("marker");
        mark_committed(&marker).unwrap();
        assert!(is_committed(&marker));
        assert!(!dir.path().join("marker.tmp").exists());
        assert_eq!(seconds(Duration::from_secs(90)), "90");
        assert_eq!(seconds(Duration::from_millis(300)), "0.3");
    }
}
