//! Reading a whole file whose path came from configuration, safely: only a regular file
//! (a FIFO, a device or a directory is refused without blocking on it: the open does not
//! wait for a FIFO's writer), and only up to a stated size (checked from its metadata before
//! reading, and again while reading, in case it grows).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BoundedReadError {
    /// Opening or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The path is not a regular file.
    #[error("it is {kind}, not a regular file")]
    NotRegular {
        /// What it is (`a FIFO`, `a directory`, …).
        kind: &'static str,
    },
    /// The file is larger than the limit.
    #[error("it is {len_bytes} bytes long; the limit is {max_bytes} bytes")]
    TooLarge {
        /// Its size (at least; it may have grown while read).
        len_bytes: u64,
        /// The limit.
        max_bytes: u64,
    },
}

/// The whole of the regular file at `path`, at most `max_bytes` long.
///
/// # Errors
/// [`BoundedReadError`]: it cannot be opened or read, is not a regular file, or is longer than
/// `max_bytes`.
pub fn read_regular_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, BoundedReadError> {
    // O_NONBLOCK: opening a FIFO does not wait for a writer (it is then refused below).
    let file = File::options()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    let metadata = file.metadata()?;
    let file_type = metadata.file_type();
    if !file_type.is_file() {
        let kind = if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_dir() {
            "a directory"
        } else if file_type.is_socket() {
            "a socket"
        } else if file_type.is_block_device() || file_type.is_char_device() {
            "a device"
        } else {
            "a special file"
        };
        return Err(BoundedReadError::NotRegular { kind });
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
        return Err(BoundedReadError::TooLarge {
            len_bytes: bytes.len() as u64,
            max_bytes,
        });
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
        assert_eq!(read_regular_file(&path, 7).unwrap(), b"s3cret\n");
        let error = read_regular_file(&path, 6).unwrap_err();
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
            read_regular_file(&fifo, 1024).unwrap_err().to_string(),
            "it is a FIFO, not a regular file"
        );
        assert_eq!(
            read_regular_file(&dir, 1024).unwrap_err().to_string(),
            "it is a directory, not a regular file"
        );
        assert_eq!(
            read_regular_file(Path::new("/dev/zero"), 1024)
                .unwrap_err()
                .to_string(),
            "it is a device, not a regular file"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
