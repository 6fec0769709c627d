//! Records that outlive a process (port `Store`), as one file per record in a data
//! directory: `<dir>/<record>.bin`.
//!
//! A write goes to a fresh temporary file (mode 0600) that is synced, renamed over the record
//! and followed by a sync of the directory, so a reader (or the next process after a crash)
//! sees the old record or the new one, never a mix. The directory is created with mode 0700
//! when missing. A record over its kind's size limit is neither written nor read. A damaged
//! record is renamed to `<record>.bin.bad`, kept for a post-mortem and never read again.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use probermesh_core::ports::{Record, Store, StoreError};

/// The records of one data directory.
#[derive(Clone, Debug)]
pub struct FileStore {
    dir: PathBuf,
    /// Caps every record below its kind's limit (tests of the limit use it).
    max_bytes: Option<u64>,
}

impl FileStore {
    /// The store of `dir` (created at the first write).
    #[must_use]
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            max_bytes: None,
        }
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
}

impl Store for FileStore {
    fn read(&self, record: Record) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path_of(record);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(Self::error("reading", &path, error)),
        };
        let limit = self.limit(record);
        let mut bytes = Vec::new();
        file.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| Self::error("reading", &path, e))?;
        if bytes.len() as u64 > limit {
            return Err(Self::error(
                "reading",
                &path,
                format!("larger than {limit} bytes"),
            ));
        }
        Ok(Some(bytes))
    }

    fn write(&self, record: Record, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path_of(record);
        let limit = self.limit(record);
        if bytes.len() as u64 > limit {
            return Err(Self::error(
                "writing",
                &path,
                format!(
                    "{} bytes is larger than the {limit} a record holds",
                    bytes.len()
                ),
            ));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| Self::error("creating", &self.dir, e))?;
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
