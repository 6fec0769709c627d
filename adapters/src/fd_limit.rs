//! The process's open-files limit (`RLIMIT_NOFILE`). systemd and most shells start services
//! with a soft limit of 1,024 descriptors and a much higher hard limit; the server raises the
//! soft limit to the hard one at start, so connections (the HTTP endpoints' cap, probes,
//! files) do not run out of descriptors long before the system would. Not an adapter of a
//! port: the binary calls it once and logs what it did.

use nix::errno::Errno;
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The open-files limit around [`raise_open_files_limit`].
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct OpenFilesLimit {
    /// The soft limit found.
    pub before: u64,
    /// The soft limit now.
    pub now: u64,
    /// The hard limit (the most an unprivileged process may raise its soft limit to).
    pub hard: u64,
}

impl OpenFilesLimit {
    /// Whether the soft limit was raised.
    #[must_use]
    pub fn raised(&self) -> bool {
        self.now > self.before
    }
}

/// Why the open-files limit could not be read or raised.
#[derive(Debug, thiserror::Error)]
pub enum OpenFilesLimitError {
    /// `getrlimit` failed.
    #[error("cannot read the open-files limit (RLIMIT_NOFILE): {0}")]
    Read(Errno),
    /// `setrlimit` refused the hard limit as the soft one.
    #[error("cannot raise the open-files soft limit from {from} to the hard limit {to}: {cause}")]
    Raise {
        /// The soft limit, unchanged.
        from: u64,
        /// The hard limit asked for.
        to: u64,
        /// Why not.
        cause: Errno,
    },
}

/// Raises the soft open-files limit to the hard limit (a no-op when they are equal).
///
/// # Errors
/// When the limit cannot be read or set; the process keeps its limit.
pub fn raise_open_files_limit() -> Result<OpenFilesLimit, OpenFilesLimitError> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(OpenFilesLimitError::Read)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|cause| {
            OpenFilesLimitError::Raise {
                from: soft,
                to: hard,
                cause,
            }
        })?;
    }
    Ok(OpenFilesLimit {
        before: soft,
        now: soft.max(hard),
        hard,
    })
}
