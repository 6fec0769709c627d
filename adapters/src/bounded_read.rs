//! Reading a whole file whose path came from configuration or sits in the data directory,
//! safely: only a regular file (a FIFO, a device or a directory is refused without blocking
//! on it: the open does not wait for a FIFO's writer, and the type is checked on what was
//! opened, so nothing can be swapped in between), optionally not through a symbolic link, and
//! only up to a stated size (checked from its metadata before reading a byte, and again while
//! reading, in case it grows). The one reader of the probe file's referenced files, the
//! `http-probe --ca-file` and the data directory's records.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::data_dir::describe_file_type;

/// Whether a symbolic link may lead to the file.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Links {
    /// Follow links (configuration files: Kubernetes mounts secrets through links).
    Follow,
    /// Refuse a link (the data directory's own records).
    Refuse,
}

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BoundedReadError {
    /// Opening or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The path is not a regular file.
    #[error("it is {kind}, not a regular file")]
    NotRegular {
        /// What it is (`a FIFO (named pipe)`, `a directory`, …).
        kind: &'static str,
    },
    /// The file is larger than the limit (nothing was read).
    #[error("it is {len_bytes} bytes long; the limit is {max_bytes} bytes")]
    TooLarge {
        /// Its size.
        len_bytes: u64,
        /// The limit.
        max_bytes: u64,
    },
    /// The file grew past the limit while it was read.
    #[error("it grew past the limit of {max_bytes} bytes while it was read")]
    Grew {
        /// The limit.
        max_bytes: u64,
    },
}

/// The whole of the regular file at `path`, at most `max_bytes` long.
///
/// # Errors
/// [`BoundedReadError`]: it cannot be opened or read, is not a regular file, or is longer than
/// `max_bytes`.
pub fn read_regular_file(
    path: &Path,
    max_bytes: u64,
    links: Links,
) -> Result<Vec<u8>, BoundedReadError> {
    // O_NONBLOCK: opening a FIFO does not wait for a writer (it is then refused below).
    let mut flags = nix::fcntl::OFlag::O_NONBLOCK;
    if links == Links::Refuse {
        flags |= nix::fcntl::OFlag::O_NOFOLLOW;
    }
    let file = match File::options()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
    {
        Ok(file) => file,
        Err(error) => {
            // O_NOFOLLOW refuses a link with ELOOP: say what is there instead.
            if links == Links::Refuse
                && let Ok(meta) = std::fs::symlink_metadata(path)
                && meta.file_type().is_symlink()
            {
                return Err(BoundedReadError::NotRegular {
                    kind: describe_file_type(meta.file_type()),
                });
            }
            return Err(error.into());
        }
    };
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(BoundedReadError::NotRegular {
            kind: describe_file_type(metadata.file_type()),
        });
    }
    if metadata.len() > max_bytes {
        return Err(BoundedReadError::TooLarge {
            len_bytes: metadata.len(),
            max_bytes,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(BoundedReadError::Grew { max_bytes });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pm-bounded-read-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_regular_file_within_the_limit_is_read_whole() {
        let dir = temp("ok");
        let path = dir.join("token");
        std::fs::write(&path, b"s3cret\n").unwrap();
        assert_eq!(
            read_regular_file(&path, 7, Links::Follow).unwrap(),
            b"s3cret\n"
        );
        let error = read_regular_file(&path, 6, Links::Follow).unwrap_err();
        assert_eq!(
            error.to_string(),
            "it is 7 bytes long; the limit is 6 bytes"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fifo_a_directory_and_a_device_are_refused_without_blocking() {
        let dir = temp("special");
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // With no writer, a blocking open or read would hang here for good.
        assert_eq!(
            read_regular_file(&fifo, 1024, Links::Follow)
                .unwrap_err()
                .to_string(),
            "it is a FIFO (named pipe), not a regular file"
        );
        assert_eq!(
            read_regular_file(&dir, 1024, Links::Follow)
                .unwrap_err()
                .to_string(),
            "it is a directory, not a regular file"
        );
        assert_eq!(
            read_regular_file(Path::new("/dev/zero"), 1024, Links::Follow)
                .unwrap_err()
                .to_string(),
            "it is a character device, not a regular file"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
