//! What an upgrade leaves for the next process: `<exe dir>/.<exe name>.upgrade.json`, written
//! just before the restart (exec or exit) and taken (read and removed) once by the binary's
//! start, so the new process (or the old one, restarted after a rollback) reports the outcome
//! at its next connection. Written atomically (a temporary file, flushed, renamed, the
//! directory flushed); a damaged file is removed with a warning, never a panic or a refusal to
//! start: the report is lost, probing is not.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bounded_read::{Links, read_regular_file};

use super::{dir_and_name, fsync_dir};

/// The most the record may hold (a reason is a few hundred bytes).
pub const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// How an upgrade ended.
#[derive(Clone, Debug, Eq, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The new version proved itself and was installed.
    Committed,
    /// The new version failed its trial; the previous one kept running.
    RolledBack {
        /// Why.
        reason: String,
    },
    /// The upgrade failed before a trial (or could not be rolled back cleanly).
    Failed {
        /// Why.
        reason: String,
    },
}

/// The record of one upgrade attempt.
#[derive(Clone, Debug, Eq, PartialEq, Serialize, Deserialize)]
pub struct UpgradeRecord {
    /// The server's offer (rollout) it answered.
    pub offer_id: u64,
    /// The version offered.
    pub version: String,
    /// The version that was running.
    pub from_version: String,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Why the record could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot {operation} the upgrade record {}: {cause}", path.display())]
pub struct StateFileError {
    /// What was being done.
    pub operation: &'static str,
    /// The record's path.
    pub path: PathBuf,
    /// What the OS said.
    pub cause: std::io::Error,
}

/// The record's path for `exe`: `<exe dir>/.<exe name>.upgrade.json`.
#[must_use]
pub fn record_path(exe: &Path) -> PathBuf {
    match dir_and_name(exe) {
        Some((dir, name)) => dir.join(format!(".{}.upgrade.json", name.to_string_lossy())),
        None => PathBuf::from(".probermesh.upgrade.json"),
    }
}

/// Writes `record` for `exe`, atomically and durably.
///
/// # Errors
/// [`StateFileError`] naming the operation and the path.
pub fn write(exe: &Path, record: &UpgradeRecord) -> Result<(), StateFileError> {
    let path = record_path(exe);
    let error = |operation, cause| StateFileError {
        operation,
        path: path.clone(),
        cause,
    };
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let json = serde_json::to_vec_pretty(record)
        .map_err(|cause| error("encode", std::io::Error::other(cause)))?;
    let mut file = std::fs::File::create(&temp).map_err(|cause| error("create", cause))?;
    file.write_all(&json)
        .and_then(|()| file.write_all(b"\n"))
        .map_err(|cause| error("write", cause))?;
    // Data first, then the name: after a crash the record is whole or absent.
    file.sync_all().map_err(|cause| error("flush", cause))?;
    drop(file);
    std::fs::rename(&temp, &path).map_err(|cause| error("rename into place", cause))?;
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        fsync_dir(dir).map_err(|cause| error("flush the directory of", cause))?;
    }
    Ok(())
}

/// Reads and removes the record for `exe`: none when there is none, or when it is damaged
/// (removed with a warning).
#[must_use]
pub fn take(exe: &Path) -> Option<UpgradeRecord> {
    let record = read(exe);
    remove(&record_path(exe));
    record
}

/// Reads the record for `exe` and leaves it in place (the next upgrade's record replaces it):
/// none when there is none, or when it is damaged (removed with a warning). A process reports
/// it at every start, so a report lost with a process that died before its first connection
/// is made again by the next one; the server takes a report only for the rollout's own release
/// and offer, and only while the agent's state there is not final.
#[must_use]
pub fn read(exe: &Path) -> Option<UpgradeRecord> {
    let path = record_path(exe);
    let bytes = match read_regular_file(&path, MAX_RECORD_BYTES, Links::Refuse) {
        Ok(bytes) => bytes,
        Err(crate::bounded_read::BoundedReadError::Io(error))
            if error.kind() == std::io::ErrorKind::NotFound =>
        {
            return None;
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "the upgrade record cannot be read; removing it");
            remove(&path);
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(record) => Some(record),
        Err(error) => {
            remove(&path);
            tracing::warn!(path = %path.display(), %error, "the upgrade record is damaged; it was removed");
            None
        }
    }
}

fn remove(path: &Path) {
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "cannot remove the upgrade record");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::test_dir::TestDir;

    #[test]
    fn a_record_survives_to_the_next_start_once() {
        let dir = TestDir::new("state");
        let exe = dir.path().join("probermesh");
        assert_eq!(
            record_path(&exe),
            dir.path().join(".probermesh.upgrade.json")
        );
        assert_eq!(take(&exe), None);
        for outcome in [
            Outcome::Committed,
            Outcome::RolledBack {
                reason: "the new version exited with status 1 after 0.3 s".to_owned(),
            },
            Outcome::Failed {
                reason: "unsupported here: …".to_owned(),
            },
        ] {
            let record = UpgradeRecord {
                offer_id: 42,
                version: "1.1.0".to_owned(),
                from_version: "1.0.0".to_owned(),
                outcome,
            };
            write(&exe, &record).unwrap();
            assert_eq!(take(&exe), Some(record));
            assert_eq!(take(&exe), None);
        }
        write(
            &exe,
            &UpgradeRecord {
                offer_id: 1,
                version: "2".to_owned(),
                from_version: "1".to_owned(),
                outcome: Outcome::RolledBack {
                    reason: "r".to_owned(),
                },
            },
        )
        .unwrap();
        let text = std::fs::read_to_string(record_path(&exe)).unwrap();
        assert!(text.contains("\"outcome\": \"rolled_back\""), "{text}");
        assert!(text.contains("\"reason\": \"r\""), "{text}");
    }

    #[test]
    fn a_damaged_or_oversized_record_is_removed_without_a_panic() {
        let dir = TestDir::new("state-damaged");
        let exe = dir.path().join("probermesh");
        for junk in [
            b"{\"offer_id\": ".to_vec(),
            vec![b' '; 70_000],
            b"[]".to_vec(),
        ] {
            std::fs::write(record_path(&exe), junk).unwrap();
            assert_eq!(take(&exe), None);
            assert!(!record_path(&exe).exists());
        }
    }
}
