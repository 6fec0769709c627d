//! The server's probe file on disk (port `PoolSource`): read at start and at every reload,
//! parsed and validated by `core::probe_file`, whose errors name the file, line and field.
//!
//! The files an `http:` block names (`bearer_token_file`, `basic_auth.password_file`,
//! `tls_config`'s `ca_file`, `cert_file`, `key_file`) are read here, by the server, at the same
//! time: regular files only, bounded (a secret at most `MAX_TEXT_LEN`, a PEM file at most
//! `MAX_PEM_FILE_LEN`), a relative path taken from the probe file's directory (as Prometheus
//! does). Their contents travel to the agents over the encrypted link; no agent opens a path
//! the server names. A file that cannot be read fails the load, naming the block, the key
//! and the path, so a reload keeps the previous pool.

use std::io::Read;
use std::path::{Path, PathBuf};

use probermesh_core::model::http_module::Secret;
use probermesh_core::model::setting::{MAX_PEM_FILE_LEN, MAX_TEXT_LEN};
use probermesh_core::model::{ProbeConfig, ProbeModule};
use probermesh_core::wire::MAX_POOL_FILES;

use crate::bounded_read::{Links, read_regular_file};
use probermesh_core::ports::{PoolSource, PoolSourceError};
use probermesh_core::probe_file::{MAX_PROBE_FILE_BYTES, parse_probe_file};

/// A probe file at a path.
#[derive(Clone, Debug)]
pub struct ProbeFileOnDisk {
    path: PathBuf,
    /// Files and directories of the server's own that no block may name.
    private: Vec<PathBuf>,
}

impl ProbeFileOnDisk {
    /// The probe file at `path` (read at each `load`).
    #[must_use]
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            private: Vec::new(),
        }
    }

    /// Refuses blocks naming these files, or anything in these directories (the server's
    /// generated key, the token files, the given key): what the server reads for agents goes to every
    /// URL the probe file names, so whoever edits the probe file could otherwise have the
    /// agents send the server's key or tokens away.
    #[must_use]
    pub fn keeping_private(mut self, paths: impl IntoIterator<Item = PathBuf>) -> Self {
        self.private.extend(paths);
        self
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
        let mut file =
            parse_probe_file(&name, &yaml).map_err(|e| PoolSourceError(e.to_string()))?;
        let base = self.path.parent().unwrap_or_else(|| Path::new("."));
        read_referenced_files(&mut file.configs, &name, base, &self.private)?;
        Ok(file.configs)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Reads every file the blocks of `configs` name into them; `name` is the probe file's name
/// for errors and `base` the directory relative paths start from.
fn read_referenced_files(
    configs: &mut [ProbeConfig],
    name: &str,
    base: &Path,
    private: &[PathBuf],
) -> Result<(), PoolSourceError> {
    // Compared after resolving links and `..`, on both sides.
    let private: Vec<PathBuf> = private
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let mut tls_files = std::collections::HashSet::new();
    // Each file is read once per load and shared by every block naming it.
    let mut read: std::collections::HashMap<std::path::PathBuf, Secret> =
        std::collections::HashMap::new();
    for (index, config) in configs.iter_mut().enumerate() {
        let ProbeModule::Http(http) = &mut config.module else {
            continue;
        };
        // Freshly parsed, so not shared: no copy is made.
        let http = std::sync::Arc::make_mut(http);
        for (key, file) in http.client.files_mut() {
            let is_pem = key.starts_with("http_client_config.tls_config.");
            let max_bytes = if is_pem {
                MAX_PEM_FILE_LEN
            } else {
                MAX_TEXT_LEN
            };
            let path = base.join(file.path());
            let failed = |cause: String| {
                PoolSourceError(format!(
                    "probe file {name}: prober_configs[{index}].http.{key}: {:?}: {cause}",
                    file.path()
                ))
            };
            if let Ok(resolved) = std::fs::canonicalize(&path)
                && let Some(own) = private.iter().find(|own| resolved.starts_with(own))
            {
                return Err(failed(format!(
                    "is the server's own {} (a token or its key); a probe file may not send \
                     the server's secrets to agents",
                    own.display()
                )));
            }
            let contents = match read.get(&path) {
                Some(contents) => contents.clone(),
                None => {
                    let bytes = read_regular_file(&path, max_bytes as u64, Links::Follow)
                        .map_err(|e| failed(format!("cannot be read by the server: {e}")))?;
                    let text =
                        String::from_utf8(bytes).map_err(|_| failed("is not UTF-8 text".into()))?;
                    let contents = Secret::new(text);
                    read.insert(path.clone(), contents.clone());
                    contents
                }
            };
            // A secret file read for a PEM key (or the other way) is held to its own limit.
            if contents.expose().len() > max_bytes {
                return Err(failed(format!(
                    "cannot be read by the server: it is {} bytes long; the limit is {max_bytes} bytes",
                    contents.expose().len()
                )));
            }
            if is_pem {
                tls_files.insert(file.path().to_owned());
            }
            file.set_contents(contents);
        }
    }
    if tls_files.len() > MAX_POOL_FILES {
        return Err(PoolSourceError(format!(
            "probe file {name}: the blocks name {} different tls_config files; the limit is {MAX_POOL_FILES}",
            tls_files.len()
        )));
    }
    Ok(())
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
