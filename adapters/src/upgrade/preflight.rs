//! The preflight: before anything is replaced, the new binary is asked its version and must
//! answer exactly the announced one. The Go original skipped this and, when the posted version
//! did not match the binary's constant, upgraded, restarted, saw itself still "old" and
//! upgraded again for ever (`../shared/spec/original-behaviour.md` §9); here the mismatch is
//! refused with what the binary said.
//!
//! The binary runs as `<binary> version` with a cleared environment (`PATH` kept), no stdin,
//! its output kept up to 4 KiB, in its own process group (killed with it at the end, so
//! nothing it starts stays), killed at the timeout and always reaped.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

/// The most of each output stream kept.
pub const MAX_OUTPUT_BYTES: usize = 4 * 1024;

/// How long a killed binary gets to be reaped before tokio's background reaping takes over.
const REAP_BOUND: Duration = Duration::from_secs(5);

/// Why the preflight refused the new binary.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// It could not be started.
    #[error("the new binary {} cannot be run: {cause}", binary.display())]
    Start {
        /// The binary.
        binary: PathBuf,
        /// What the OS said.
        cause: io::Error,
    },
    /// It did not finish in time (it was killed).
    #[error("the new binary {} did not answer `version` within {timeout:?}; it was killed", binary.display())]
    Timeout {
        /// The binary.
        binary: PathBuf,
        /// The timeout.
        timeout: Duration,
    },
    /// It ended other than with status 0.
    #[error("the new binary {} failed `version`: it {ended}{}", binary.display(), said(output))]
    Failed {
        /// The binary.
        binary: PathBuf,
        /// How it ended (`exited with status 2`, `was killed by signal SIGSEGV`).
        ended: String,
        /// What it printed (stdout, then stderr), trimmed and capped.
        output: String,
    },
    /// It reports another version.
    #[error("the new binary reports {reported}, not the announced {expected}")]
    OtherVersion {
        /// What it reports.
        reported: String,
        /// The announced version.
        expected: String,
    },
    /// Its answer is not a version line.
    #[error("the new binary's `version` printed {printed:?}, not \"probermesh {expected}\"")]
    NotAVersion {
        /// What it printed (trimmed, capped).
        printed: String,
        /// The announced version.
        expected: String,
    },
}

fn said(output: &str) -> String {
    if output.is_empty() {
        " and printed nothing".to_owned()
    } else {
        format!(", printing {output:?}")
    }
}

/// Runs `<binary> version` and checks that it exits 0 printing exactly
/// `probermesh <expected_version>` (surrounding white space ignored), within `timeout`.
///
/// # Errors
/// [`PreflightError`], saying what the binary printed or how it ended.
pub async fn preflight(
    binary: &Path,
    expected_version: &str,
    timeout: Duration,
) -> Result<(), PreflightError> {
    let mut command = Command::new(binary);
    command.arg("version").env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = spawn_retrying(&mut command)
        .await
        .map_err(|cause| PreflightError::Start {
            binary: binary.to_owned(),
            cause,
        })?;
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .filter(|&pid| pid > 1)
        .map(Pid::from_raw);
    let (stdout_pipe, stderr_pipe) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let (status, stdout, stderr) =
            tokio::join!(child.wait(), capture(stdout_pipe), capture(stderr_pipe));
        (status, stdout, stderr)
    };
    let outcome = tokio::time::timeout(timeout, run).await;
    // Whatever it started goes with it (a process it left running would hold our pipes).
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGKILL);
    }
    let (status, stdout, stderr) = match outcome {
        Ok(done) => done,
        Err(_) => {
            reap(&mut child).await;
            return Err(PreflightError::Timeout {
                binary: binary.to_owned(),
                timeout,
            });
        }
    };
    let status = status.map_err(|cause| PreflightError::Start {
        binary: binary.to_owned(),
        cause,
    })?;
    let stdout = String::from_utf8_lossy(&stdout).trim().to_owned();
    if !status.success() {
        let stderr = String::from_utf8_lossy(&stderr).trim().to_owned();
        let output = [stdout, stderr]
            .into_iter()
            .filter(|text| !text.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        return Err(PreflightError::Failed {
            binary: binary.to_owned(),
            ended: describe_status(status),
            output,
        });
    }
    match stdout.strip_prefix("probermesh ") {
        Some(reported) if reported == expected_version => Ok(()),
        Some(reported) if !reported.contains(char::is_whitespace) && !reported.is_empty() => {
            Err(PreflightError::OtherVersion {
                reported: reported.to_owned(),
                expected: expected_version.to_owned(),
            })
        }
        _ => Err(PreflightError::NotAVersion {
            printed: stdout,
            expected: expected_version.to_owned(),
        }),
    }
}

/// How a process ended, in words: `exited with status 1`, `was killed by signal SIGSEGV`.
#[must_use]
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else if let Some(signal) = status.signal() {
        match Signal::try_from(signal) {
            Ok(signal) => format!("was killed by signal {}", signal.as_str()),
            Err(_) => format!("was killed by signal {signal}"),
        }
    } else {
        format!("ended ({status})")
    }
}

/// Spawns `command`, retrying a few times on `ETXTBSY`: a file just written is briefly "busy"
/// while a child forked meanwhile by another thread still holds its write descriptor.
pub(super) async fn spawn_retrying(command: &mut Command) -> io::Result<Child> {
    let mut attempts = 0;
    loop {
        match command.spawn() {
            Err(error) if error.raw_os_error() == Some(nix::libc::ETXTBSY) && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

/// Kills `child` and reaps it within [`REAP_BOUND`].
async fn reap(child: &mut Child) {
    let _ = child.start_kill();
    if tokio::time::timeout(REAP_BOUND, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(pid = ?child.id(), "a killed preflight binary lingers; tokio will reap it");
    }
}

/// Reads `pipe` to its end, keeping the first [`MAX_OUTPUT_BYTES`].
async fn capture(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else { return kept };
    let mut chunk = vec![0; 4096];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return kept,
            Ok(len) => {
                let room = MAX_OUTPUT_BYTES.saturating_sub(kept.len());
                let take = len.min(room);
                kept.extend_from_slice(chunk.get(..take).unwrap_or_default());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::test_dir::TestDir;

    const GENEROUS: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn the_announced_version_passes_and_another_is_refused_saying_what_it_reports() {
        let dir = TestDir::new("preflight-version");
        let binary = dir.script(
            "probermesh",
            r#"[ "$1" = version ] && echo "probermesh 1.0.0""#,
        );
        preflight(&binary, "1.0.0", GENEROUS).await.unwrap();
        let error = preflight(&binary, "1.1.0", GENEROUS).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "the new binary reports 1.0.0, not the announced 1.1.0"
        );
    }

    #[tokio::test]
    async fn the_environment_is_cleared_but_for_path() {
        let dir = TestDir::new("preflight-env");
        let binary = dir.script(
            "probermesh",
            r#"if [ -n "$PATH" ] && [ -z "$HOME$PROBERMESH_TOKEN$USER" ]; then env=clean; else env=dirty; fi
read -r line || line=eof
echo "probermesh 2.0.0 $env $line""#,
        );
        let error = preflight(&binary, "2.0.0", GENEROUS).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "the new binary's `version` printed \"probermesh 2.0.0 clean eof\", not \"probermesh 2.0.0\""
        );
    }

    #[tokio::test]
    async fn a_failing_crashing_hanging_or_missing_binary_is_refused_saying_how_it_ended() {
        let dir = TestDir::new("preflight-fail");
        let failing = dir.script("failing", "echo 'unknown command: version' >&2; exit 2");
        let error = preflight(&failing, "1.0.0", GENEROUS).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "the new binary {} failed `version`: it exited with status 2, printing \"unknown command: version\"",
                failing.display()
            )
        );
        let crashing = dir.script("crashing", "kill -SEGV $$");
        let error = preflight(&crashing, "1.0.0", GENEROUS).await.unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("it was killed by signal SIGSEGV and printed nothing"),
            "{error}"
        );
        // A hanging binary that also leaves a child behind holding the pipes.
        let pid_file = dir.path().join("pid");
        let hanging = dir.script(
            "hanging",
            &format!("sleep 600 & echo $! > {}; sleep 600", pid_file.display()),
        );
        let error = preflight(&hanging, "1.0.0", Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("did not answer `version` within 500ms; it was killed"),
            "{error}"
        );
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            crate::upgrade::trial::tests::gone_soon(pid),
            "the binary's child {pid} was left running"
        );

        let missing = dir.path().join("absent");
        let error = preflight(&missing, "1.0.0", GENEROUS).await.unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "the new binary {} cannot be run: ",
                missing.display()
            )),
            "{error}"
        );

        // Output is capped: a chatty binary cannot fill memory.
        let chatty = dir.script("chatty", "yes probermesh | head -c 100000");
        let error = preflight(&chatty, "1.0.0", GENEROUS).await.unwrap_err();
        let PreflightError::NotAVersion { printed, .. } = error else {
            panic!("{error}")
        };
        assert!(printed.len() <= MAX_OUTPUT_BYTES);
    }
}
