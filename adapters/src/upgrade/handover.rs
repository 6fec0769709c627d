//! The hand-over from a running agent to its new version, once the driver has stopped (drained
//! its results and closed its link) because an upgrade is staged, verified and preflighted:
//! the trial ([`super::trial`]) while this process waits, then on success the swap, the
//! record and a restart into the new binary (exec in place, or exit for a supervisor), and on
//! failure the record and a fresh start of the old binary, which reports the rollback at its
//! next connection. Probing stops only for the restart: the trial child probes meanwhile.
//!
//! [`at_start`] is the other end, for the binary's `main`: it clears what an interrupted
//! upgrade left and hands over the record of the last one.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::state_file::{self, Outcome, UpgradeRecord};
use super::trial::{self, TrialOutcome, TrialSpec};
use super::{dir_and_name, staging, swap};

/// How long a committed trial child gets to stop (finish its probes, close its connection)
/// before the new binary takes its place.
pub const CHILD_STOP_GRACE: Duration = Duration::from_secs(10);

/// How the agent restarts into its new version.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum RestartMode {
    /// `exec` the executable's path in place (same pid, same arguments).
    Exec,
    /// Exit 0 and let the supervisor start the executable again (systemd `Restart=always`,
    /// supervisord `autorestart`).
    Exit,
}

/// The upgrade being handed over.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Handover {
    /// The server's offer it answers.
    pub offer_id: u64,
    /// The new version.
    pub version: String,
    /// The running version.
    pub from_version: String,
    /// How long the new version has to commit.
    pub probation_deadline: Duration,
}

/// How a hand-over that returns ended.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum HandoverEnd {
    /// The new binary is installed: exit 0 so the supervisor starts it.
    ExitForSupervisor,
}

/// Why a hand-over returned an error (it otherwise ends in `exec`).
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// `exec` failed; the process is still the old one, stopped: exit non-zero so a supervisor
    /// restarts it.
    #[error("cannot exec {} to restart after the upgrade ({what}): {cause}", path.display())]
    Exec {
        /// The executable.
        path: PathBuf,
        /// What the restart was for (`into 1.1.0`, `after the rollback`).
        what: String,
        /// What the OS said.
        cause: std::io::Error,
    },
}

/// The trial marker's path for `exe`: `<exe dir>/.<exe name>.upgrade-trial`.
#[must_use]
pub fn trial_marker_path(exe: &Path) -> PathBuf {
    match dir_and_name(exe) {
        Some((dir, name)) => dir.join(format!(".{}.upgrade-trial", name.to_string_lossy())),
        None => PathBuf::from(".probermesh.upgrade-trial"),
    }
}

/// Hands the agent over to the `staged` binary (see the module's first lines); `args` are the
/// agent's arguments without the program name. Exec replaces this process: flush the logs
/// before calling this.
///
/// # Errors
/// [`HandoverError::Exec`] when the restart's `exec` fails. It returns `Ok` only in
/// [`RestartMode::Exit`] after a committed upgrade; everything else ends in `exec`.
pub async fn hand_over(
    exe: &Path,
    staged: &Path,
    plan: Handover,
    args: Vec<OsString>,
    mode: RestartMode,
) -> Result<HandoverEnd, HandoverError> {
    let marker = trial_marker_path(exe);
    let outcome = trial::run_trial(TrialSpec {
        binary: staged.to_owned(),
        args: args.clone(),
        marker: marker.clone(),
        deadline: plan.probation_deadline,
        offer_id: plan.offer_id,
    })
    .await;
    remove_quietly(&marker);
    let reason = match outcome {
        TrialOutcome::Committed(child) => match swap::install(exe, staged) {
            Ok(()) => {
                record(exe, &plan, Outcome::Committed);
                child.stop(CHILD_STOP_GRACE).await;
                tracing::info!(version = %plan.version, exe = %exe.display(), ?mode, "the new version is installed; restarting into it");
                return match mode {
                    RestartMode::Exec => Err(exec(exe, args, format!("into {}", plan.version))),
                    RestartMode::Exit => Ok(HandoverEnd::ExitForSupervisor),
                };
            }
            Err(error) => {
                // The new version works but cannot be put in place: back to the old one.
                child.stop(CHILD_STOP_GRACE).await;
                let reason = format!("the new version committed but cannot be installed: {error}");
                remove_quietly(staged);
                record(
                    exe,
                    &plan,
                    Outcome::Failed {
                        reason: reason.clone(),
                    },
                );
                tracing::warn!(%reason, "upgrade failed; restarting the current version");
                return Err(exec(exe, args, "after the failed upgrade".to_owned()));
            }
        },
        TrialOutcome::Failed { reason } => reason,
    };
    tracing::warn!(version = %plan.version, %reason, "the new version failed its trial; restarting the current version");
    remove_quietly(staged);
    record(exe, &plan, Outcome::RolledBack { reason });
    // A fresh process of the old binary, in both modes: it reports the rollback at its next
    // connection; exiting instead would depend on a supervisor being there.
    Err(exec(exe, args, "after the rollback".to_owned()))
}

/// Writes the record; a failure loses only the report (the outcome stands), so it is logged.
fn record(exe: &Path, plan: &Handover, outcome: Outcome) {
    let record = UpgradeRecord {
        offer_id: plan.offer_id,
        version: plan.version.clone(),
        from_version: plan.from_version.clone(),
        outcome,
    };
    if let Err(error) = state_file::write(exe, &record) {
        tracing::warn!(%error, "the upgrade's outcome will not be reported after the restart");
    }
}

/// Replaces this process with `exe args…`; returns only the error.
fn exec(exe: &Path, args: Vec<OsString>, what: String) -> HandoverError {
    let cause = std::process::Command::new(exe).args(args).exec();
    HandoverError::Exec {
        path: exe.to_owned(),
        what,
        cause,
    }
}

fn remove_quietly(path: &Path) {
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "cannot remove an upgrade file");
    }
}

/// For the binary's `main`, before anything else: removes what an interrupted upgrade of `exe`
/// left beside it (partial downloads, an uninstalled `<exe>.new`, a trial marker) and reads the
/// record of the last upgrade, to report at each connection (the record stays until the next
/// upgrade replaces it). A process on trial (started
/// by [`hand_over`] from `<exe>.new`) does neither: the files are its parent's.
#[must_use]
pub fn at_start(exe: &Path) -> Option<UpgradeRecord> {
    if std::env::var_os(trial::TRIAL_ENV).is_some_and(|value| !value.is_empty()) {
        return None;
    }
    staging::discard_leftovers(exe);
    remove_quietly(&trial_marker_path(exe));
    // Kept, not taken: if this process dies before its first connection, the next one
    // reports the outcome (else the server would wait for it until its restart limit).
    state_file::read(exe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::test_dir::TestDir;

    const CHILD_CASE: &str = "PM_HANDOVER_TEST_CASE";
    const CHILD_DIR: &str = "PM_HANDOVER_TEST_DIR";

    /// Not a test of its own: the body of a copy of this test binary that
    /// [`run_hand_over_in_a_child`] starts (a hand-over ends in `exec`, which would replace the
    /// test runner itself). Without its variables it does nothing.
    #[tokio::test]
    async fn hand_over_child_entry() {
        let (Some(case), Some(dir)) = (std::env::var_os(CHILD_CASE), std::env::var_os(CHILD_DIR))
        else {
            return;
        };
        let dir = PathBuf::from(dir);
        let mode = if case == "exit" {
            RestartMode::Exit
        } else {
            RestartMode::Exec
        };
        let plan = Handover {
            offer_id: 7,
            version: "1.1.0".to_owned(),
            from_version: "1.0.0".to_owned(),
            probation_deadline: Duration::from_secs(60),
        };
        let result = hand_over(
            &dir.join("probermesh"),
            &dir.join("probermesh.new"),
            plan,
            vec!["agent".into(), "--region".into(), "eu".into()],
            mode,
        )
        .await;
        std::fs::write(dir.join("returned"), format!("{result:?}")).unwrap();
    }

    /// Sets up `<dir>/probermesh` (the old version: it logs its runs) and `<dir>/probermesh.new`
    /// (`trial_body` when on trial, else it logs its runs), runs [`hand_over_child_entry`] in
    /// a copy of this test binary with `case`, and returns what ran after it (`old …`/`new …`
    /// lines) and what the hand-over returned, if it did.
    fn run_hand_over_in_a_child(
        dir: &TestDir,
        case: &str,
        trial_body: &str,
    ) -> (String, Option<String>) {
        let ran = dir.path().join("ran");
        dir.script(
            "probermesh",
            &format!("echo \"old $*\" >> {}", ran.display()),
        );
        dir.script(
            "probermesh.new",
            &format!(
                "if [ -n \"$PROBERMESH_UPGRADE_TRIAL\" ]; then\n{trial_body}\nfi\necho \"new $*\" >> {}",
                ran.display()
            ),
        );
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "upgrade::handover::tests::hand_over_child_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_CASE, case)
            .env(CHILD_DIR, dir.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        (
            std::fs::read_to_string(&ran).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("returned")).ok(),
        )
    }

    /// The trial body of a new version that commits, records its pid and keeps running.
    fn committing(dir: &TestDir) -> String {
        format!(
            "echo $$ > {}\nprintf 'committed\\n' > \"$PROBERMESH_UPGRADE_TRIAL.tmp\"\n\
             mv \"$PROBERMESH_UPGRADE_TRIAL.tmp\" \"$PROBERMESH_UPGRADE_TRIAL\"\nexec sleep 600",
            dir.path().join("trial-pid").display()
        )
    }

    fn trial_pid(dir: &TestDir) -> i32 {
        std::fs::read_to_string(dir.path().join("trial-pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn a_committed_version_is_installed_and_exec_starts_it_with_the_same_arguments() {
        let dir = TestDir::new("handover-exec");
        let exe = dir.path().join("probermesh");
        let (ran, returned) = run_hand_over_in_a_child(&dir, "exec", &committing(&dir));
        assert_eq!(ran, "new agent --region eu\n");
        assert_eq!(returned, None, "exec returned");
        let new_bytes = std::fs::read_to_string(&exe).unwrap();
        assert!(
            new_bytes.contains("PROBERMESH_UPGRADE_TRIAL"),
            "{new_bytes}"
        );
        let prev = std::fs::read_to_string(swap::previous_path(&exe)).unwrap();
        assert!(prev.contains("echo \"old"), "{prev}");
        assert!(!dir.path().join("probermesh.new").exists());
        assert!(!trial_marker_path(&exe).exists());
        assert!(
            !crate::upgrade::trial::tests::alive(trial_pid(&dir)),
            "the trial child was left running"
        );
        let record = state_file::take(&exe).unwrap();
        assert_eq!(
            record,
            UpgradeRecord {
                offer_id: 7,
                version: "1.1.0".to_owned(),
                from_version: "1.0.0".to_owned(),
                outcome: Outcome::Committed
            }
        );
    }

    #[test]
    fn in_exit_mode_a_committed_version_is_installed_and_left_to_the_supervisor() {
        let dir = TestDir::new("handover-exit");
        let exe = dir.path().join("probermesh");
        let (ran, returned) = run_hand_over_in_a_child(&dir, "exit", &committing(&dir));
        assert_eq!(ran, "");
        assert_eq!(returned.as_deref(), Some("Ok(ExitForSupervisor)"));
        assert!(
            std::fs::read_to_string(&exe)
                .unwrap()
                .contains("PROBERMESH_UPGRADE_TRIAL")
        );
        assert!(
            !crate::upgrade::trial::tests::alive(trial_pid(&dir)),
            "the trial child was left running"
        );
        assert_eq!(state_file::take(&exe).unwrap().outcome, Outcome::Committed);
    }

    #[test]
    fn a_new_version_that_crashes_is_rolled_back_and_the_old_one_restarted_in_both_modes() {
        for case in ["exec", "exit"] {
            let dir = TestDir::new("handover-crash");
            let exe = dir.path().join("probermesh");
            let (ran, returned) = run_hand_over_in_a_child(&dir, case, "exit 1");
            assert_eq!(ran, "old agent --region eu\n", "{case}");
            assert_eq!(returned, None, "{case}: exec returned");
            assert!(
                std::fs::read_to_string(&exe)
                    .unwrap()
                    .contains("echo \"old")
            );
            assert!(!swap::previous_path(&exe).exists());
            assert!(!dir.path().join("probermesh.new").exists());
            let record = state_file::take(&exe).unwrap();
            let Outcome::RolledBack { reason } = record.outcome else {
                panic!("{record:?}")
            };
            assert!(
                reason.starts_with("the new version exited with status 1 after "),
                "{reason}"
            );
        }
    }

    #[test]
    fn at_start_clears_leftovers_and_reads_the_record_at_every_start() {
        let dir = TestDir::new("at-start");
        let exe = dir.path().join("probermesh");
        std::fs::write(&exe, b"A").unwrap();
        std::fs::write(dir.path().join("probermesh.new"), b"B").unwrap();
        std::fs::write(trial_marker_path(&exe), b"committed\n").unwrap();
        let record = UpgradeRecord {
            offer_id: 3,
            version: "1.1.0".to_owned(),
            from_version: "1.0.0".to_owned(),
            outcome: Outcome::Committed,
        };
        state_file::write(&exe, &record).unwrap();
        assert_eq!(at_start(&exe), Some(record.clone()));
        // A process that died before it could report leaves the record to the next one.
        assert_eq!(at_start(&exe), Some(record));
        assert!(!dir.path().join("probermesh.new").exists());
        assert!(!trial_marker_path(&exe).exists());
        assert_eq!(std::fs::read(&exe).unwrap(), b"A");
    }
}
