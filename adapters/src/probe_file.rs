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
            PoolSourceError(not_utf8(&name, e.as_bytes(), e.utf8_error().valid_up_to()))
        })?;
        let file = parse_probe_file(&name, &yaml).map_err(|e| PoolSourceError(e.to_string()))?;
        Ok(file.configs)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// The message for a file that is not UTF-8 at byte `offset` of `bytes`: where (line and
/// column, as the parser's errors say it; the column counts characters), which byte, and what
/// to do.
fn not_utf8(name: &str, bytes: &[u8], offset: usize) -> String {
    let before = bytes.get(..offset).unwrap_or(bytes);
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |newline| newline + 1);
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    // Everything before `offset` is valid UTF-8.
    let column = String::from_utf8_lossy(before.get(line_start..).unwrap_or_default())
        .chars()
        .count()
        + 1;
    let byte = bytes.get(offset).copied().unwrap_or_default();
    format!(
        "{name}:{line}:{column}: the probe file is not UTF-8 text: byte 0x{byte:02X} (offset \
         {offset}) is not valid UTF-8 there; save the file as UTF-8"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_utf8_is_refused_naming_the_line_column_and_byte() {
        let dir = std::env::temp_dir().join(format!("pm-probe-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("created");
        let path = dir.join("latin1.yaml");
        // "café" in Latin-1 in a comment on line 4, after "é" in UTF-8 on the same line.
        std::fs::write(
            &path,
            b"prober_configs:\n  - prober_type: icmp\n    region: eu\n    # \xc3\xa9 caf\xe9\n",
        )
        .expect("written");
        let error = ProbeFileOnDisk::new(&path).load().expect_err("not UTF-8").0;
        std::fs::remove_dir_all(&dir).expect("removed");
        assert_eq!(
            error,
            format!(
                "{}:4:12: the probe file is not UTF-8 text: byte 0xE9 (offset 65) is not valid \
                 UTF-8 there; save the file as UTF-8",
                path.display()
            )
        );
    }
}
