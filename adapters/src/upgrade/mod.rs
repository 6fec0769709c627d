//! Agent self-upgrade's I/O (issue 15): everything that touches a file, a process or the
//! network on the way from a release URL to a new binary running in the agent's place, with
//! the decisions (which version, which agent, when) left to core's rollout and agent state.
//!
//! The agent's path, in order:
//! 1. [`staging::Staging`]: the chunks the server sends, written beside the executable and
//!    checked against the announced SHA-256 ([`staging::StagedBinary`]).
//! 2. [`release_key::ReleaseKey::verify_file`]: the agent's pinned key re-verifies the
//!    signature (minisign or bare ed25519), so a compromised server cannot push code.
//! 3. [`preflight::preflight`]: the new binary's `version` must print the announced version
//!    (the Go restart loop is refused before anything is replaced).
//! 4. [`handover::hand_over`], once the driver has drained and closed its link: the new
//!    version's trial ([`trial::run_trial`]) while the old process waits, then the swap
//!    ([`swap::install`]) and a restart (exec in place or exit for a supervisor), or the
//!    rollback; [`state_file`] carries the outcome across the restart and
//!    [`handover::at_start`] reads it back at every start (it stays until the next upgrade).
//!
//! The server's path: [`fetch::fetch_release`] downloads the release once (bounded) and
//! [`fetch::read_chunk`] reads the pieces it sends.
//!
//! Every error message is written for the operator: it is what `GET /-/upgrade` shows as the
//! agent's reason.

pub mod fetch;
pub mod handover;
pub mod installer;
pub mod preflight;
pub mod release_key;
pub mod staging;
pub mod state_file;
pub mod swap;
pub mod trial;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Lower-case hex of `bytes`.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// The bytes of `text` as hex (either case), exactly `N` of them; none otherwise.
#[must_use]
pub fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != N * 2 {
        return None;
    }
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        let high = char::from(*pair.first()?).to_digit(16)?;
        let low = char::from(*pair.get(1)?).to_digit(16)?;
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(bytes)
}

/// The directory holding `exe` and its file name: every file of an upgrade sits beside the
/// executable, on its file system, so that renames are atomic. None for a path without a
/// file name (`/`, `..`).
fn dir_and_name(exe: &Path) -> Option<(PathBuf, OsString)> {
    let name = exe.file_name()?.to_owned();
    let dir = match exe.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    Some((dir, name))
}

/// `exe` with `suffix` appended to its file name (`/usr/bin/probermesh` → `…/probermesh.new`).
fn with_suffix(exe: &Path, suffix: &str) -> PathBuf {
    let mut name = exe.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Flushes a directory's entries (a rename or a new file in it) to disk: after a crash the
/// directory holds either the old or the new name, and the one it holds is there.
fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
pub(crate) mod test_dir {
    //! A fresh directory per test, removed at drop (no tempfile in the tree).

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    static NEXT: AtomicU32 = AtomicU32::new(0);

    /// A directory removed with everything in it when dropped.
    #[derive(Debug)]
    pub(crate) struct TestDir(PathBuf);

    impl TestDir {
        pub(crate) fn new(name: &str) -> Self {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("pm-upgrade-{}-{n}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }

        /// Writes an executable `#!/bin/sh` script named `name` here and returns its path.
        pub(crate) fn script(&self, name: &str, body: &str) -> PathBuf {
            use std::os::unix::fs::PermissionsExt;
            let path = self.0.join(name);
            // Write to a temporary name, then rename: exec of a file still open for writing
            // by another thread's fork fails with ETXTBSY.
            let temp = self.0.join(format!(".{name}.tmp"));
            std::fs::write(&temp, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&temp, &path).unwrap();
            path
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_wrong_lengths_and_digits() {
        let bytes = [0x00, 0x7f, 0xab, 0xff];
        assert_eq!(hex(&bytes), "007fabff");
        assert_eq!(parse_hex::<4>("007FABff"), Some(bytes));
        assert_eq!(parse_hex::<4>("007fab"), None);
        assert_eq!(parse_hex::<4>("007fabfg"), None);
        assert_eq!(parse_hex::<2>("+1ff"), None);
    }

    #[test]
    fn upgrade_files_sit_beside_the_executable() {
        assert_eq!(
            dir_and_name(Path::new("/usr/bin/probermesh")),
            Some((PathBuf::from("/usr/bin"), OsString::from("probermesh")))
        );
        assert_eq!(
            dir_and_name(Path::new("probermesh")),
            Some((PathBuf::from("."), OsString::from("probermesh")))
        );
        assert_eq!(dir_and_name(Path::new("/")), None);
        assert_eq!(
            with_suffix(Path::new("/opt/pm/probermesh"), ".new"),
            PathBuf::from("/opt/pm/probermesh.new")
        );
    }
}
