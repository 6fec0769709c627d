//! The server's data directory (`-server.data.dir`), checked before anything in it is read or
//! written. The server keeps its generated private key there (`server-key.pem`, which agents
//! then trust by pinning its certificate) and the handoff record (`open-windows.bin`, whose
//! results it publishes), so whoever may write the directory may plant either. A shared leaf:
//! the link's certificate ([`crate::link`]) and the store ([`crate::store`]) both check here.
//!
//! The rules (OpenSSH's `StrictModes` for the same reason, adapted):
//! - a missing directory is created, with its missing parents, mode 0700;
//! - refused: anything but a directory (a file, a FIFO, a dangling symbolic link: the error
//!   says which and what to do), a directory writable by every user (even with the sticky
//!   bit, which keeps others from replacing our files but not from creating the names we have
//!   not created yet: `server-key.pem` before the first start, `open-windows.bin` between two
//!   runs), and a directory owned by another user than the server's (root excepted: root can
//!   write anywhere anyway);
//! - warned about, once per directory and process: a directory its group may write (the
//!   group's members could plant files; common for a team's directory, so not refused).
//!
//! A symbolic link to a directory is followed and the directory it points to is checked. The
//! parents of the directory are not checked.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, DirBuilder};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why the data directory cannot be used: the directory and what is wrong with it.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("data directory {path}: {problem}", path = .path.display())]
pub struct DataDirError {
    /// The directory as given.
    pub path: PathBuf,
    /// What is wrong, and what to do.
    pub problem: DataDirProblem,
}

/// What is wrong with a data directory. Each message says what to do.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum DataDirProblem {
    /// Something other than a directory is at the path.
    NotADirectory {
        /// What is there ("a regular file", "a FIFO (named pipe)", …).
        what: &'static str,
    },
    /// The path is a symbolic link to nothing.
    DanglingSymlink {
        /// Where the link points.
        target: PathBuf,
    },
    /// Every user may create files in it.
    WorldWritable {
        /// Its permission bits.
        mode: u32,
    },
    /// It belongs to another user than the server's (and not to root).
    ForeignOwner {
        /// Its owner's uid.
        owner_uid: u32,
        /// The server's effective uid.
        our_uid: u32,
    },
    /// The operating system refused to look at it or to create it.
    Io {
        /// What was tried.
        action: &'static str,
        /// The operating system's error.
        cause: String,
    },
}

impl fmt::Display for DataDirProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotADirectory { what } => write!(
                f,
                "it is {what}, not a directory; remove it or choose another data directory \
                 (-server.data.dir)"
            ),
            Self::DanglingSymlink { target } => write!(
                f,
                "it is a symbolic link to {}, which does not exist; create that directory \
                 (mode 0700), remove the link, or choose another data directory \
                 (-server.data.dir)",
                target.display()
            ),
            Self::WorldWritable { mode } => write!(
                f,
                "every user may write it (mode {mode:04o}), so anyone could plant \
                 server-key.pem or open-windows.bin; chmod 0700 it or choose a directory of \
                 this server's own"
            ),
            Self::ForeignOwner { owner_uid, our_uid } => write!(
                f,
                "it belongs to uid {owner_uid}, not to this server's user (uid {our_uid}), so \
                 its owner could plant server-key.pem or open-windows.bin; chown it to uid \
                 {our_uid} or choose a directory of this server's own"
            ),
            Self::Io { action, cause } => write!(f, "{action}: {cause}"),
        }
    }
}

/// Creates `dir` (mode 0700, parents too) when nothing is at its path, then checks it.
///
/// # Errors
/// [`DataDirError`] when it cannot be created, or is refused by the rules of the module.
pub fn ensure(dir: &Path) -> Result<(), DataDirError> {
    if check_if_present(dir)? {
        return Ok(());
    }
    if let Err(error) = DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        // Something appeared at the path meanwhile: say what it is.
        if error.kind() == ErrorKind::AlreadyExists {
            check_if_present(dir)?;
        }
        return Err(DataDirError {
            path: dir.to_owned(),
            problem: DataDirProblem::Io {
                action: "cannot create it",
                cause: error.to_string(),
            },
        });
    }
    // Check what was created (or what someone else put there first).
    check_if_present(dir).map(|_| ())
}

/// Checks `dir` when something is at its path; `Ok(false)` when nothing is (not even a
/// symbolic link).
///
/// # Errors
/// [`DataDirError`] when it is refused by the rules of the module.
pub fn check_if_present(dir: &Path) -> Result<bool, DataDirError> {
    check_for(dir, nix::unistd::geteuid().as_raw())
}

/// [`check_if_present`] for a server running as `our_uid`.
fn check_for(dir: &Path, our_uid: u32) -> Result<bool, DataDirError> {
    let refuse = |problem| DataDirError {
        path: dir.to_owned(),
        problem,
    };
    let io = |action, error: std::io::Error| {
        refuse(DataDirProblem::Io {
            action,
            cause: error.to_string(),
        })
    };
    let link = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(false),
        Err(error) if error.kind() == ErrorKind::NotADirectory => {
            return Err(io(
                "cannot look at it: a part of its path is not a directory",
                error,
            ));
        }
        Err(error) => return Err(io("cannot look at it", error)),
    };
    let meta = if link.file_type().is_symlink() {
        match fs::metadata(dir) {
            Ok(meta) => meta,
            Err(error) if error.kind() == ErrorKind::NotFound => {
                let target = fs::read_link(dir).unwrap_or_default();
                return Err(refuse(DataDirProblem::DanglingSymlink { target }));
            }
            Err(error) => return Err(io("cannot follow the symbolic link", error)),
        }
    } else {
        link
    };
    if !meta.is_dir() {
        return Err(refuse(DataDirProblem::NotADirectory {
            what: describe_file_type(meta.file_type()),
        }));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(refuse(DataDirProblem::WorldWritable { mode }));
    }
    if meta.uid() != our_uid && meta.uid() != 0 {
        return Err(refuse(DataDirProblem::ForeignOwner {
            owner_uid: meta.uid(),
            our_uid,
        }));
    }
    if mode & 0o020 != 0 && first_warning_for(dir) {
        tracing::warn!(
            data_dir = %dir.display(),
            mode = format!("{mode:04o}"),
            gid = meta.gid(),
            "the members of the data directory's group may write it, so they could plant \
             server-key.pem or open-windows.bin; chmod g-w it unless they are trusted"
        );
    }
    Ok(true)
}

/// What a file type is, in words ("a regular file", "a FIFO (named pipe)", …).
#[must_use]
pub fn describe_file_type(file_type: fs::FileType) -> &'static str {
    if file_type.is_file() {
        "a regular file"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO (named pipe)"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else {
        "neither a file nor a directory"
    }
}

/// Whether `dir` was not warned about yet in this process (then it is now).
fn first_warning_for(dir: &Path) -> bool {
    static WARNED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    WARNED
        .lock()
        .map_or(true, |mut warned| warned.insert(dir.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_directory_of_another_user_is_refused_and_one_of_root_is_not() {
        let dir = std::env::temp_dir().join(format!("pm-data-dir-owner-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        ensure(&dir).expect("created");
        let mode = fs::metadata(&dir).expect("created").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let owner = fs::metadata(&dir).expect("created").uid();
        // As root, hand the directory to nobody; else pretend to be another user than its owner.
        let (as_uid, foreign_owner) = if owner == 0 {
            std::os::unix::fs::chown(&dir, Some(65_534), None).expect("root may chown");
            (0, 65_534)
        } else {
            (owner + 1, owner)
        };
        let refused = check_for(&dir, as_uid).expect_err("another user's directory");
        assert_eq!(
            refused.problem,
            DataDirProblem::ForeignOwner {
                owner_uid: foreign_owner,
                our_uid: as_uid
            }
        );
        let text = refused.to_string();
        assert!(
            text.contains(&dir.display().to_string())
                && text.contains(&format!("belongs to uid {foreign_owner}")),
            "{text}"
        );
        // Root's directories are trusted.
        assert_eq!(check_for(Path::new("/"), 12_345), Ok(true));
        fs::remove_dir_all(&dir).expect("removed");
    }
}
