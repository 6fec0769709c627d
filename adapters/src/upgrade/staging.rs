//! The new binary as it arrives in chunks from the server: a partial file beside the
//! executable (on its file system, so the final rename is atomic), named from the announced
//! SHA-256 so that a reconnection or a restart resumes where it stopped, kept mode 0700 until
//! its digest is checked, then made executable as `<exe>.new`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{dir_and_name, fsync_dir, hex, with_suffix};

/// The file-name prefix of partial downloads (their exe's name follows).
const PART_PREFIX: &str = ".probermesh-upgrade-";

/// Why staging failed.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// A file operation failed.
    #[error("cannot {operation} {}: {cause}", path.display())]
    Io {
        /// What was being done (`create the partial download`, …).
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// The executable's path has no file name.
    #[error("cannot stage an upgrade beside {}: it is not a file path", exe.display())]
    NoFileName {
        /// The path.
        exe: PathBuf,
    },
    /// A chunk not at the end of what was received.
    #[error("a chunk at offset {offset} does not follow the {received_bytes} bytes received")]
    OutOfOrder {
        /// The chunk's offset.
        offset: u64,
        /// What is on disk.
        received_bytes: u64,
    },
    /// A chunk beyond the announced size.
    #[error(
        "a chunk of {chunk_bytes} bytes at offset {offset} goes beyond the announced size of \
         {size_bytes} bytes"
    )]
    TooLong {
        /// The chunk's offset.
        offset: u64,
        /// Its length.
        chunk_bytes: u64,
        /// The announced size.
        size_bytes: u64,
    },
    /// `finish` before every byte arrived.
    #[error("the download is incomplete: {received_bytes} of {size_bytes} bytes received")]
    Incomplete {
        /// What is on disk.
        received_bytes: u64,
        /// The announced size.
        size_bytes: u64,
    },
    /// The received file's digest is not the announced one (the file was removed).
    #[error(
        "the received binary's SHA-256 is {actual}, not the announced {expected}; it was \
         deleted"
    )]
    DigestMismatch {
        /// The announced digest, hex.
        expected: String,
        /// The received file's, hex.
        actual: String,
    },
}

/// A partial download of the binary with a known SHA-256 and size.
#[derive(Debug)]
pub struct Staging {
    /// The partial file.
    part_path: PathBuf,
    /// Where the verified binary goes (`<exe>.new`).
    new_path: PathBuf,
    file: File,
    sha256: [u8; 32],
    size_bytes: u64,
    received_bytes: u64,
}

/// A complete binary whose digest was checked, executable, at `<exe>.new`.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct StagedBinary {
    /// Its path.
    pub path: PathBuf,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// Its size.
    pub size_bytes: u64,
}

impl Staging {
    /// Opens (or resumes) the partial download of the binary with `sha256` and `size_bytes`
    /// beside `exe`: `<exe dir>/.probermesh-upgrade-<exe name>-<first 16 hex of sha256>.part`.
    /// A file already longer than `size_bytes` (another attempt's garbage) is started afresh.
    ///
    /// # Errors
    /// [`StagingError`]: the directory cannot be written, or the path has no file name.
    pub fn open(exe: &Path, sha256: [u8; 32], size_bytes: u64) -> Result<Self, StagingError> {
        let (dir, name) = dir_and_name(exe).ok_or_else(|| StagingError::NoFileName {
            exe: exe.to_owned(),
        })?;
        let digest = hex(&sha256);
        let short = digest.get(..16).unwrap_or(&digest);
        let part_path = dir.join(format!(
            "{PART_PREFIX}{}-{short}.part",
            name.to_string_lossy()
        ));
        let io = |operation, cause| StagingError::Io {
            operation,
            path: part_path.clone(),
            cause,
        };
        // 0700: nobody runs or replaces it before it is verified (mode applies at creation).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o700)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&part_path)
            .map_err(|cause| io("open the partial download", cause))?;
        let mut received_bytes = file
            .metadata()
            .map_err(|cause| io("inspect the partial download", cause))?
            .len();
        if received_bytes > size_bytes {
            file.set_len(0)
                .map_err(|cause| io("truncate the partial download", cause))?;
            received_bytes = 0;
        }
        Ok(Self {
            part_path,
            new_path: with_suffix(exe, ".new"),
            file,
            sha256,
            size_bytes,
            received_bytes,
        })
    }

    /// The bytes already on disk: the offset of the next chunk to ask for.
    #[must_use]
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes
    }

    /// The announced size.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Whether every byte has arrived.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.received_bytes == self.size_bytes
    }

    /// The partial file's path.
    #[must_use]
    pub fn part_path(&self) -> &Path {
        &self.part_path
    }

    /// Writes the chunk `bytes` at `offset`, which must be [`Staging::received_bytes`]; the
    /// total may not pass the announced size.
    ///
    /// # Errors
    /// [`StagingError::OutOfOrder`], [`StagingError::TooLong`] (nothing written) or a write
    /// error.
    pub fn append(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StagingError> {
        if offset != self.received_bytes {
            return Err(StagingError::OutOfOrder {
                offset,
                received_bytes: self.received_bytes,
            });
        }
        let chunk_bytes = bytes.len() as u64;
        if offset
            .checked_add(chunk_bytes)
            .is_none_or(|end| end > self.size_bytes)
        {
            return Err(StagingError::TooLong {
                offset,
                chunk_bytes,
                size_bytes: self.size_bytes,
            });
        }
        let result = self
            .file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.write_all(bytes));
        if let Err(cause) = result {
            // Part of the chunk may be on disk: the next open measures what is.
            return Err(StagingError::Io {
                operation: "write to the partial download",
                path: self.part_path.clone(),
                cause,
            });
        }
        self.received_bytes += chunk_bytes;
        Ok(())
    }

    /// Checks the complete download and makes it `<exe>.new`: fsync, SHA-256 (a mismatch
    /// deletes the partial file), mode 0755, rename, fsync of the directory.
    ///
    /// # Errors
    /// [`StagingError::Incomplete`], [`StagingError::DigestMismatch`] or a file error.
    pub fn finish(mut self) -> Result<StagedBinary, StagingError> {
        if !self.is_complete() {
            return Err(StagingError::Incomplete {
                received_bytes: self.received_bytes,
                size_bytes: self.size_bytes,
            });
        }
        let part = self.part_path.clone();
        let io = |operation, cause| StagingError::Io {
            operation,
            path: part.clone(),
            cause,
        };
        // The data reaches the disk before the name that publishes it (rename below).
        self.file
            .sync_all()
            .map_err(|cause| io("flush the partial download", cause))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|cause| io("read back the partial download", cause))?;
        let actual = sha256_of(&mut self.file).map_err(|cause| io("hash the download", cause))?;
        if actual != self.sha256 {
            drop(self.file);
            if let Err(error) = std::fs::remove_file(&part) {
                tracing::warn!(path = %part.display(), %error, "cannot delete a download whose digest is wrong");
            }
            return Err(StagingError::DigestMismatch {
                expected: hex(&self.sha256),
                actual: hex(&actual),
            });
        }
        self.file
            .set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(|cause| io("make the download executable", cause))?;
        drop(self.file);
        std::fs::rename(&part, &self.new_path)
            .map_err(|cause| io("rename the verified download", cause))?;
        if let Some(dir) = self.new_path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(dir).map_err(|cause| StagingError::Io {
                operation: "flush the directory of",
                path: self.new_path.clone(),
                cause,
            })?;
        }
        Ok(StagedBinary {
            path: self.new_path,
            sha256: self.sha256,
            size_bytes: self.size_bytes,
        })
    }
}

/// The SHA-256 of what `reader` holds from here to its end.
fn sha256_of(reader: &mut impl Read) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut chunk = vec![0; 64 * 1024];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(len) => hasher.update(chunk.get(..len).unwrap_or(&chunk)),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(hasher.finalize().into())
}

/// Removes what an interrupted upgrade of `exe` left beside it: partial downloads and a
/// `<exe>.new` that was never installed. For the start of the binary (a running upgrade
/// resumes from the server's offer, which is cheap over the link). Failures are logged.
pub fn discard_leftovers(exe: &Path) {
    let Some((dir, name)) = dir_and_name(exe) else {
        return;
    };
    let prefix = format!("{PART_PREFIX}{}-", name.to_string_lossy());
    let mut doomed = vec![with_suffix(exe, ".new")];
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let file_name = file_name.to_string_lossy();
                if file_name.starts_with(&prefix) && file_name.ends_with(".part") {
                    doomed.push(entry.path());
                }
            }
        }
        Err(error) => {
            tracing::debug!(dir = %dir.display(), %error, "cannot list the executable's directory");
        }
    }
    for path in doomed {
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed an unfinished upgrade's file")
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot remove an unfinished upgrade's file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::test_dir::TestDir;

    fn digest(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    #[test]
    fn a_download_resumes_after_a_partial_write_and_becomes_an_executable_new_file() {
        let dir = TestDir::new("resume");
        let exe = dir.path().join("probermesh");
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let sha256 = digest(&body);

        let mut staging = Staging::open(&exe, sha256, body.len() as u64).unwrap();
        assert_eq!(staging.received_bytes(), 0);
        let mode = std::fs::metadata(staging.part_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        staging.append(0, &body[..4000]).unwrap();
        drop(staging);

        // A restart (or a reconnection) resumes at what is on disk.
        let mut staging = Staging::open(&exe, sha256, body.len() as u64).unwrap();
        assert_eq!(staging.received_bytes(), 4000);
        assert!(matches!(
            staging.append(0, &body[..10]),
            Err(StagingError::OutOfOrder {
                offset: 0,
                received_bytes: 4000
            })
        ));
        let error = staging.append(4000, &vec![0; 6001]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "a chunk of 6001 bytes at offset 4000 goes beyond the announced size of 10000 bytes"
        );
        staging.append(4000, &body[4000..9000]).unwrap();
        let part = staging.part_path().to_owned();
        let staging = {
            let error = Staging::open(&exe, sha256, body.len() as u64)
                .unwrap()
                .finish()
                .unwrap_err();
            assert_eq!(
                error.to_string(),
                "the download is incomplete: 9000 of 10000 bytes received"
            );
            let mut staging = Staging::open(&exe, sha256, body.len() as u64).unwrap();
            staging.append(9000, &body[9000..]).unwrap();
            assert!(staging.is_complete());
            staging
        };
        let staged = staging.finish().unwrap();
        assert_eq!(staged.path, dir.path().join("probermesh.new"));
        assert_eq!(std::fs::read(&staged.path).unwrap(), body);
        let mode = std::fs::metadata(&staged.path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(!part.exists());
    }

    #[test]
    fn a_wrong_digest_deletes_the_download_and_names_both_digests() {
        let dir = TestDir::new("digest");
        let exe = dir.path().join("probermesh");
        let announced = digest(b"the real release");
        let mut staging = Staging::open(&exe, announced, 5).unwrap();
        staging.append(0, b"bogus").unwrap();
        let part = staging.part_path().to_owned();
        let error = staging.finish().unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "the received binary's SHA-256 is {}, not the announced {}; it was deleted",
                hex(&digest(b"bogus")),
                hex(&announced)
            )
        );
        assert!(!part.exists());
        assert!(!dir.path().join("probermesh.new").exists());
    }

    #[test]
    fn a_longer_leftover_starts_afresh_and_leftovers_are_discarded_at_start() {
        let dir = TestDir::new("leftovers");
        let exe = dir.path().join("probermesh");
        std::fs::write(&exe, b"running").unwrap();
        let sha256 = digest(b"abc");
        let staging = Staging::open(&exe, sha256, 3).unwrap();
        let part = staging.part_path().to_owned();
        drop(staging);
        std::fs::write(&part, b"far too long").unwrap();
        assert_eq!(Staging::open(&exe, sha256, 3).unwrap().received_bytes(), 0);

        std::fs::write(&part, b"ab").unwrap();
        std::fs::write(dir.path().join("probermesh.new"), b"x").unwrap();
        let other_exe_part = dir
            .path()
            .join(format!("{PART_PREFIX}other-0011223344556677.part"));
        std::fs::write(&other_exe_part, b"x").unwrap();
        discard_leftovers(&exe);
        assert!(!part.exists());
        assert!(!dir.path().join("probermesh.new").exists());
        assert!(
            other_exe_part.exists(),
            "another executable's download is not ours"
        );
        assert_eq!(std::fs::read(&exe).unwrap(), b"running");
    }

    #[test]
    fn a_directory_that_cannot_be_written_is_an_error_naming_the_file() {
        let error = Staging::open(Path::new("/proc/probermesh"), [0; 32], 1).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot open the partial download /proc/.probermesh-upgrade-probermesh-0000000000000000.part: "),
            "{error}"
        );
    }
}
