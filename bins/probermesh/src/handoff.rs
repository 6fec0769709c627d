//! The open-windows handoff file on disk (format in `core::wire::handoff`): a server that
//! stops gracefully writes the results of its unsettled windows to
//! `<data dir>/open-windows.bin`, and the next server on that directory files them before it
//! takes any result from the link, so a restart loses no acknowledged result. The file is
//! removed only once the new server has started, so a failed start keeps it for the next try.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{Context, Result, bail};
use probermesh_core::model::{ProbeResult, UnixMillis};
use probermesh_core::wire::handoff::MAX_OPEN_WINDOW_RESULTS;
use probermesh_core::wire::{OpenWindows, decode_open_windows, encode_open_windows};

/// The file's name inside the data directory.
pub(crate) const FILE_NAME: &str = "open-windows.bin";

/// Largest handoff file read (two windows of 4 million results fit well below it).
const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// The handoff file of `data_dir`.
pub(crate) fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Reads the handoff file at `path` (remove it with [`remove`] once it is filed). `Ok(None)`
/// when there is none. A file that cannot be read back is moved aside to `<path>.bad` (kept
/// for a post-mortem, never read again) and the error names it.
pub(crate) fn read(path: &Path) -> Result<Option<OpenWindows>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", path.display()));
        }
    };
    let decoded = read_limited(file).and_then(|bytes| {
        decode_open_windows(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    });
    match decoded {
        Ok(windows) => Ok(Some(windows)),
        Err(error) => {
            let aside = path.with_extension("bin.bad");
            let moved = std::fs::rename(path, &aside);
            Err(error).with_context(|| match moved {
                Ok(()) => format!("ignoring the handoff file (moved to {})", aside.display()),
                Err(e) => format!("ignoring the handoff file (cannot move it aside: {e})"),
            })
        }
    }
}

/// Removes the handoff file at `path` once its results are filed (none is fine).
pub(crate) fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("removing {}", path.display())),
    }
}

fn read_limited(file: std::fs::File) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        bail!("larger than {MAX_FILE_BYTES} bytes");
    }
    Ok(bytes)
}

/// Writes `results` of a server aggregating over `window` to `path` atomically (a temporary
/// file renamed over it, then the directory synced), readable by the owner only, creating the
/// directory (mode 0700) when needed. Returns how many results it left out: beyond the
/// format's limit, the oldest rounds go.
pub(crate) fn save(
    path: &Path,
    saved_at: UnixMillis,
    window: Duration,
    results: &mut Vec<ProbeResult>,
) -> Result<usize> {
    let left_out = results.len().saturating_sub(MAX_OPEN_WINDOW_RESULTS);
    if left_out > 0 {
        results.sort_by_key(|r| std::cmp::Reverse(r.round_start));
        results.truncate(MAX_OPEN_WINDOW_RESULTS);
    }
    let bytes = encode_open_windows(saved_at, window, results)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let temporary = path.with_extension("bin.tmp");
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        // A leftover from an interrupted stop would keep its old mode: start afresh.
        match std::fs::remove_file(&temporary) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().with_context(|| format!("writing {}", path.display()))?;
    Ok(left_out)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Duration;

    use probermesh_core::model::{AgentId, IcmpResult, ProbeOutcome, Region};
    use probermesh_tests::harness::TempDir;

    use super::*;

    fn result() -> ProbeResult {
        ProbeResult {
            source: AgentId::new(Region::new("a").unwrap(), IpAddr::from([10, 0, 0, 1])),
            target_region: Region::new("b").unwrap(),
            target: "10.0.0.2".to_owned(),
            round_start: UnixMillis(1_700_000_000_000),
            outcome: ProbeOutcome::Icmp(IcmpResult::measured(
                Duration::ZERO,
                4,
                &[Duration::from_millis(3)],
            )),
        }
    }

    #[test]
    fn a_saved_file_is_read_until_removed() {
        let dir = TempDir::new("pm-handoff-saved");
        let path = path_in(&dir.path().join("data"));
        let window = Duration::from_secs(15);
        assert_eq!(
            save(&path, UnixMillis(5), window, &mut vec![result()]).unwrap(),
            0
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let read_back = read(&path).unwrap().unwrap();
        assert_eq!(read_back.saved_at, UnixMillis(5));
        assert_eq!(read_back.window, window);
        assert_eq!(read_back.results, vec![result()]);
        assert!(path.exists(), "kept until removed");
        remove(&path).unwrap();
        assert!(read(&path).unwrap().is_none());
        remove(&path).unwrap();
    }

    #[test]
    fn a_damaged_file_is_named_and_moved_aside() {
        let dir = TempDir::new("pm-handoff-damaged");
        let path = path_in(dir.path());
        std::fs::write(&path, b"not a handoff file").unwrap();
        let error = format!("{:#}", read(&path).unwrap_err());
        assert!(error.contains("open-windows.bin"), "{error}");
        assert!(error.contains("magic"), "{error}");
        assert!(error.contains("bin.bad"), "{error}");
        assert!(!path.exists());
        assert!(dir.path().join("open-windows.bin.bad").exists());
    }
}
