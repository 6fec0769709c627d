//! Logging for `server`, `agent` and `demo`: tracing to stderr and, with `-log.dir`, to a
//! daily file `probermesh-<mode>.log.YYYY-MM-DD` in that directory. `-log.level` keeps the Go
//! system's numbers (0 panic .. 3 warn .. 6 trace); other crates log at warn and above.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

/// Keeps the file writer flushing; drop it last.
#[derive(Debug)]
pub(crate) struct LogGuard(#[allow(dead_code)] Option<WorkerGuard>);

/// Installs the global subscriber for `mode` at the Go `level`.
pub(crate) fn init(mode: &str, level: u8, dir: &str) -> Result<LogGuard> {
    let level = match level {
        0..=2 => "error",
        3 => "warn",
        4 => "info",
        5 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_new(format!(
        "warn,probermesh={level},probermesh_adapters={level},probermesh_core={level}"
    ))
    .context("building the log filter")?;
    let stderr_ansi = std::io::stderr().is_terminal();
    if dir.is_empty() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(stderr_ansi)
            .try_init()
            .map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
        return Ok(LogGuard(None));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating -log.dir {dir}"))?;
    let file = tracing_appender::rolling::daily(Path::new(dir), format!("probermesh-{mode}.log"));
    let (file, guard) = tracing_appender::non_blocking(file);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr.and(file))
        .with_ansi(false)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
    Ok(LogGuard(Some(guard)))
}
