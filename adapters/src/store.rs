//! Records that outlive a process (port `Store`), as one file per record in a data
//! directory: `<dir>/<record>.bin`.
//!
//! A write goes to a fresh temporary file (mode 0600) that is synced, renamed over the record
//! and followed by a sync of the directory, so a reader (or the next process after a crash)
//! sees the old record or the new one, never a mix. The directory is created with mode 0700
//! when missing, and refused when others could plant files in it (`crate::data_dir`). A
//! record over its kind's size limit is neither written nor read: a read takes the length from
//! the open file's metadata and refuses a larger file before reading a byte of it (a huge or
//! sparse file costs no memory), and refuses anything but a regular file (opened without
//! blocking and without following a symbolic link, so a FIFO in its place cannot hang the
//! start). A damaged record is renamed to `<record>.bin.bad`, kept for a post-mortem and never
//! read again.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use probermesh_core::ports::{Record, Store, StoreError};

use crate::bounded_read::{BoundedReadError, Links, read_regular_file};
use crate::data_dir::{self, DataDirError};

/// The records of one data directory.
#[derive(Clone, Debug)]
pub struct FileStore {
    dir: PathBuf,
    /// Caps every record below its kind's limit (tests of the limit use it).
    max_bytes: Option<u64>,
}

impl FileStore {
    /// The store of `dir` (created at the first write; checked at every read and write).
    #[must_use]
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            max_bytes: None,
        }
    }

    /// The store of `dir`, created now (mode 0700) when missing and checked now, so a server
    /// refuses to start on a directory others could plant records in.
    ///
    /// # Errors
    /// [`StoreError`] naming the directory, what is wrong with it and what to do.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        data_dir::ensure(dir).map_err(|e| Self::dir_error(&e))?;
        Ok(Self::new(dir))
    }

    /// The same store with every record capped at `max_bytes` (when lower than its kind's
    /// limit).
    #[must_use]
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = Some(max_bytes);
        self
    }

    fn limit(&self, record: Record) -> u64 {
        self.max_bytes
            .map_or(record.max_bytes(), |cap| cap.min(record.max_bytes()))
    }

    /// The file that holds `record`.
    #[must_use]
    pub fn path_of(&self, record: Record) -> PathBuf {
        self.dir.join(format!("{}.bin", record.name()))
    }

    fn error(operation: &'static str, path: &Path, cause: impl ToString) -> StoreError {
        StoreError {
            operation,
            location: path.display().to_string(),
            cause: cause.to_string(),
        }
    }

    fn dir_error(error: &DataDirError) -> StoreError {
        Self::error("using the data directory", &error.path, &error.problem)
    }

    /// The limit of `record` at `limit` bytes and where it comes from, in words.
    fn limit_reason(&self, record: Record, limit: u64) -> String {
        if limit < record.max_bytes() {
            format!("the limit of {limit} bytes this store was given")
        } else {
            format!(
                "the limit of {limit} bytes for {}.bin ({})",
                record.name(),
                record.max_bytes_reason()
            )
        }
    }
}

impl Store for FileStore {
    fn read(&self, record: Record) -> Result<Option<Vec<u8>>, StoreError> {
        if !data_dir::check_if_present(&self.dir).map_err(|e| Self::dir_error(&e))? {
            return Ok(None);
        }
        let path = self.path_of(record);
        let limit = self.limit(record);
        // Without blocking (a FIFO would wait for a writer), without following a link, and
        // refused by its length before a byte is read.
        match read_regular_file(&path, limit, Links::Refuse) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(BoundedReadError::Io(error)) if error.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(BoundedReadError::NotRegular { kind }) => Err(Self::error(
                "reading",
                &path,
                format!(
                    "it is {kind}, not a regular file; it was not read: remove it (the next \
                     stop writes a new record)"
                ),
            )),
            Err(BoundedReadError::TooLarge { len_bytes, .. }) => Err(Self::error(
                "reading",
                &path,
                format!(
                    "the file is {len_bytes} bytes, over {}; it was not read: remove it (or \
                     move it away to keep it)",
                    self.limit_reason(record, limit)
                ),
            )),
            Err(BoundedReadError::Grew { .. }) => Err(Self::error(
                "reading",
                &path,
                format!(
                    "the file grew past {} while it was read",
                    self.limit_reason(record, limit)
                ),
            )),
            Err(BoundedReadError::Io(error)) => Err(Self::error("reading", &path, error)),
        }
    }

    fn write(&self, record: Record, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path_of(record);
        let limit = self.limit(record);
        if bytes.len() as u64 > limit {
            return Err(Self::error(
                "writing",
                &path,
                format!(
                    "{} bytes is larger than {}",
                    bytes.len(),
                    self.limit_reason(record, limit)
                ),
            ));
        }
        data_dir::ensure(&self.dir).map_err(|e| Self::dir_error(&e))?;
        let temporary = path.with_extension("bin.tmp");
        let write = || -> std::io::Result<()> {
            // A leftover from an interrupted write would keep its old mode: start afresh.
            match std::fs::remove_file(&temporary) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temporary)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| Self::error("writing", &path, e))
    }

    fn remove(&self, record: Record) -> Result<(), StoreError> {
        let path = self.path_of(record);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(Self::error("removing", &path, error)),
        }
    }

    fn set_aside(&self, record: Record) -> Result<String, StoreError> {
        let path = self.path_of(record);
        let aside = path.with_extension("bin.bad");
        std::fs::rename(&path, &aside).map_err(|e| Self::error("moving aside", &path, e))?;
        Ok(aside.display().to_string())
    }
}
