//! The server's probe file on disk (port `PoolSource`): read at start and at every reload,
//! parsed and validated by `core::probe_file`, whose errors name the file, line and field.

use std::io::Read;
use std::path::{Path, PathBuf};

use probermesh_core::model::ProbeConfig;
use probermesh_core::ports::{PoolSource, PoolSourceError};
use probermesh_core::probe_file::{MAX_PROBE_FILE_BYTES, parse_probe_file};

/// A probe file at a path.
#[derive(Clone, Debug)]
pub struct ProbeFileOnDisk {
    path: PathBuf,
}

impl ProbeFileOnDisk {
    /// The probe file at `path` (read at each `load`).
    #[must_use]
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }
}

impl PoolSource for ProbeFileOnDisk {
    fn load(&self) -> Result<Vec<ProbeConfig>, PoolSourceError> {
        let name = self.path.display().to_string();
        let failed = |cause: String| PoolSourceError(format!("reading probe file {name}: {cause}"));
        let file = std::fs::File::open(&self.path).map_err(|e| failed(e.to_string()))?;
        // One byte over the limit is enough for the parser to say the file is too large.
        let mut bytes = Vec::new();
        file.take(MAX_PROBE_FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| failed(e.to_string()))?;
        let yaml = String::from_utf8(bytes).map_err(|e| {
            failed(format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ))
        })?;
        let file = parse_probe_file(&name, &yaml).map_err(|e| PoolSourceError(e.to_string()))?;
        Ok(file.configs)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
