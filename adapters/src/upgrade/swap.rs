//! Replacing the running executable's own path atomically, keeping the previous binary:
//! `<exe>.prev` is made first (a hard link, or a copy where linking fails), then the new file
//! is renamed over `<exe>` and the directory flushed. At every instant `<exe>` is a complete
//! binary, old or new, and once the rename is on disk so is the `.prev` that undoes it.
//!
//! An executable in a read-only place (a container image, a package-managed `/usr/bin` we may
//! not write) cannot upgrade itself: that is an "unsupported here" error naming the path, so
//! the agent reports it once instead of retrying for ever.

use std::io;
use std::path::{Path, PathBuf};

use super::{dir_and_name, fsync_dir, with_suffix};

/// Why the swap failed.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// This installation cannot replace its executable.
    #[error("unsupported here: {reason}")]
    Unsupported {
        /// What is in the way, naming the path.
        reason: String,
    },
    /// A file operation failed.
    #[error("cannot {operation} {}: {cause}", path.display())]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: io::Error,
    },
    /// There is no previous binary to restore.
    #[error("there is no previous binary {} to restore", path.display())]
    NoPrevious {
        /// The path looked at.
        path: PathBuf,
    },
}

/// `<exe>.prev`, where the previous binary is kept.
#[must_use]
pub fn previous_path(exe: &Path) -> PathBuf {
    with_suffix(exe, ".prev")
}

/// Whether an error means "this place cannot be written", not a passing failure.
fn is_unwritable(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(nix::libc::EROFS | nix::libc::EACCES | nix::libc::EPERM | nix::libc::EXDEV)
    )
}

fn classify(operation: &'static str, path: &Path, cause: io::Error) -> SwapError {
    if is_unwritable(&cause) {
        SwapError::Unsupported {
            reason: format!(
                "cannot {operation} {}: {cause} (the executable's directory must be writable \
                 by the agent and on one file system; upgrade a read-only install with its \
                 package manager or image)",
                path.display()
            ),
        }
    } else {
        SwapError::Io {
            operation,
            path: path.to_owned(),
            cause,
        }
    }
}

/// Checks, before anything is downloaded, that `exe` can be replaced here: it is a regular
/// file and its directory accepts a new file (created and removed at once).
///
/// # Errors
/// [`SwapError::Unsupported`] naming the path, or another file error.
pub fn check_supported(exe: &Path) -> Result<(), SwapError> {
    let meta = std::fs::metadata(exe).map_err(|cause| missing_exe(exe, cause))?;
    if !meta.is_file() {
        return Err(SwapError::Unsupported {
            reason: format!("the executable {} is not a regular file", exe.display()),
        });
    }
    let (dir, name) = dir_and_name(exe).ok_or_else(|| SwapError::Unsupported {
        reason: format!("{} is not a file path", exe.display()),
    })?;
    let probe = dir.join(format!(".{}.upgrade-probe", name.to_string_lossy()));
    std::fs::write(&probe, b"").map_err(|cause| classify("create a file beside", exe, cause))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn missing_exe(exe: &Path, cause: io::Error) -> SwapError {
    if cause.kind() == io::ErrorKind::NotFound {
        SwapError::Unsupported {
            reason: format!(
                "the executable {} does not exist (moved or deleted since the agent started?)",
                exe.display()
            ),
        }
    } else {
        classify("inspect the executable", exe, cause)
    }
}

/// Installs `new` as `exe`, keeping the current binary as `<exe>.prev` (replacing an older
/// one): link (or copy) to `.prev`, rename `new` over `exe`, flush the directory.
///
/// # Errors
/// [`SwapError::Unsupported`] for a missing executable or a directory that cannot be written;
/// [`SwapError::Io`] otherwise. On error `exe` is untouched.
pub fn install(exe: &Path, new: &Path) -> Result<(), SwapError> {
    let meta = std::fs::metadata(exe).map_err(|cause| missing_exe(exe, cause))?;
    if !meta.is_file() {
        return Err(SwapError::Unsupported {
            reason: format!("the executable {} is not a regular file", exe.display()),
        });
    }
    let dir = dir_and_name(exe)
        .map(|(dir, _)| dir)
        .ok_or_else(|| SwapError::Unsupported {
            reason: format!("{} is not a file path", exe.display()),
        })?;
    let prev = previous_path(exe);
    match std::fs::remove_file(&prev) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(cause) => return Err(classify("remove the older previous binary", &prev, cause)),
    }
    if let Err(error) = std::fs::hard_link(exe, &prev) {
        // A file system without hard links (or an exe owned by someone else under
        // protected_hardlinks): a copy keeps the same bytes and mode, flushed before the
        // rename that makes it the only copy of the old binary.
        tracing::debug!(%error, exe = %exe.display(), "cannot link the previous binary; copying it");
        std::fs::copy(exe, &prev)
            .map_err(|cause| classify("keep the previous binary as", &prev, cause))?;
        std::fs::File::open(&prev)
            .and_then(|file| file.sync_all())
            .map_err(|cause| classify("flush the previous binary", &prev, cause))?;
    }
    std::fs::rename(new, exe)
        .map_err(|cause| classify("rename the new binary over", exe, cause))?;
    // The rename is durable only once the directory is flushed (the previous link with it).
    fsync_dir(&dir).map_err(|cause| SwapError::Io {
        operation: "flush the directory of",
        path: exe.to_owned(),
        cause,
    })?;
    Ok(())
}

/// Puts `<exe>.prev` back as `exe` (a rename: `.prev` is consumed) and flushes the directory.
///
/// # Errors
/// [`SwapError::NoPrevious`], [`SwapError::Unsupported`] or [`SwapError::Io`].
pub fn restore_previous(exe: &Path) -> Result<(), SwapError> {
    let prev = previous_path(exe);
    if !prev.is_file() {
        return Err(SwapError::NoPrevious { path: prev });
    }
    std::fs::rename(&prev, exe)
        .map_err(|cause| classify("restore the previous binary over", exe, cause))?;
    if let Some((dir, _)) = dir_and_name(exe) {
        fsync_dir(&dir).map_err(|cause| SwapError::Io {
            operation: "flush the directory of",
            path: exe.to_owned(),
            cause,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::test_dir::TestDir;

    #[test]
    fn install_keeps_the_previous_binary_and_restore_puts_it_back() {
        let dir = TestDir::new("swap");
        let exe = dir.path().join("probermesh");
        let new = dir.path().join("probermesh.new");
        std::fs::write(&exe, b"version A").unwrap();
        std::fs::write(previous_path(&exe), b"an older one").unwrap();
        std::fs::write(&new, b"version B").unwrap();
        check_supported(&exe).unwrap();

        install(&exe, &new).unwrap();
        assert_eq!(std::fs::read(&exe).unwrap(), b"version B");
        assert_eq!(std::fs::read(previous_path(&exe)).unwrap(), b"version A");
        assert!(!new.exists());

        restore_previous(&exe).unwrap();
        assert_eq!(std::fs::read(&exe).unwrap(), b"version A");
        assert!(!previous_path(&exe).exists());
        assert_eq!(
            restore_previous(&exe).unwrap_err().to_string(),
            format!(
                "there is no previous binary {} to restore",
                previous_path(&exe).display()
            )
        );
    }

    #[test]
    fn a_missing_executable_or_a_read_only_place_is_unsupported_naming_the_path() {
        let dir = TestDir::new("swap-unsupported");
        let exe = dir.path().join("gone");
        let new = dir.path().join("gone.new");
        std::fs::write(&new, b"B").unwrap();
        let error = install(&exe, &new).unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "unsupported here: the executable {} does not exist (moved or deleted since the agent started?)",
                exe.display()
            )
        );
        assert!(new.exists());
        // sysfs refuses new files, even to root (a read-only directory would not: root may
        // write there).
        let read_only = Path::new("/sys/kernel/uevent_seqnum");
        for error in [
            check_supported(read_only).unwrap_err(),
            install(read_only, &new).unwrap_err(),
        ] {
            let text = error.to_string();
            assert!(text.starts_with("unsupported here: cannot "), "{text}");
            assert!(text.contains("/sys/kernel/"), "{text}");
        }
        assert!(new.exists());
    }
}
