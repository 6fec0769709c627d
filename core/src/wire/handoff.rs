//! The open-windows handoff file: what a server that stops gracefully writes so that the next
//! server on the same data directory aggregates the results it had already acknowledged but
//! not yet settled (the current window and the one before it).
//!
//! Without it a restart would lose up to two windows of acknowledged results: agents forget a
//! result once it is acknowledged, and the stopping server never settles those windows. The
//! file is part of the compatibility promise like the frames (a server of the next release
//! reads what this one wrote), so it is postcard DTOs of protocol v1 behind a magic and a
//! format number; `fixtures/wire/v1/open_windows.hex` pins its bytes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{IpAddrV1, ProbeResultV1, WireError};
use crate::model::time::duration_millis;
use crate::model::{AgentId, ProbeResult, Region, UnixMillis};

/// First bytes of every handoff file.
pub const OPEN_WINDOWS_MAGIC: [u8; 8] = *b"PMOPENW\0";
/// The format written after the magic (a big-endian `u16`).
pub const OPEN_WINDOWS_FORMAT: u16 = 1;
/// Windows a handoff file holds: the unsettled ones, the current window and the one before.
pub const OPEN_WINDOWS_KEPT: usize = 2;
/// Most results of one window a handoff file holds: 2,000 agents each probing 1,000 targets,
/// far above any mesh we know of.
pub const MAX_RESULTS_PER_OPEN_WINDOW: usize = 2_000_000;
/// Most results a handoff file may hold: [`OPEN_WINDOWS_KEPT`] ×
/// [`MAX_RESULTS_PER_OPEN_WINDOW`].
pub const MAX_OPEN_WINDOW_RESULTS: usize = OPEN_WINDOWS_KEPT * MAX_RESULTS_PER_OPEN_WINDOW;
/// What one result may take in a handoff file on average, in bytes. Measured: about 100 bytes
/// for an ICMP result (IPv4 target, 64 echoes in the histogram), about 125 for an HTTPS result
/// with a 50-character URL; 256 leaves room for URLs of about 180 characters on average. The
/// largest single result is about 2.5 KB (a 2 KiB target); allowing that for every result
/// would allow a 10 GB file, which no server could hold in memory decoded.
pub const OPEN_WINDOWS_BYTES_PER_RESULT: u64 = 256;
/// Largest handoff file, in bytes: [`MAX_OPEN_WINDOW_RESULTS`] ×
/// [`OPEN_WINDOWS_BYTES_PER_RESULT`] = 1,024,000,000 (under 1 GiB). A store reads no more (it checks the file's
/// length before reading a byte) and `server::handoff::hand_over` writes no more: when the
/// results do not fit, the oldest rounds are left out.
pub const MAX_OPEN_WINDOWS_BYTES: u64 =
    MAX_OPEN_WINDOW_RESULTS as u64 * OPEN_WINDOWS_BYTES_PER_RESULT;

/// The body of a handoff file.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct OpenWindowsV1 {
    /// When the stopping server wrote it, in Unix milliseconds.
    pub saved_at_ms: u64,
    /// The stopping server's aggregation window, in milliseconds (a server with another
    /// window does not take the results: its windows hold other rounds).
    pub window_ms: u64,
    /// The results, grouped by the agent that probed them.
    pub sources: Vec<SourceResultsV1>,
}

/// The results of one agent.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct SourceResultsV1 {
    /// The agent's region.
    pub region: String,
    /// The agent's address.
    pub ip: IpAddrV1,
    /// Its results.
    pub results: Vec<ProbeResultV1>,
}

/// What a handoff file held.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenWindows {
    /// When it was written.
    pub saved_at: UnixMillis,
    /// The aggregation window of the server that wrote it.
    pub window: Duration,
    /// The results, validated like those of a `ResultBatch`.
    pub results: Vec<ProbeResult>,
}

/// The bytes of a handoff file holding `results` of a server aggregating over `window`,
/// written at `saved_at`.
///
/// # Errors
/// [`WireError::Invalid`] (`results`) for more than [`MAX_OPEN_WINDOW_RESULTS`] results, which
/// the reader would refuse; [`WireError::Encode`] when postcard cannot serialise (it does not
/// for these types).
pub fn encode_open_windows(
    saved_at: UnixMillis,
    window: Duration,
    results: &[ProbeResult],
) -> Result<Vec<u8>, WireError> {
    if results.len() > MAX_OPEN_WINDOW_RESULTS {
        return Err(WireError::invalid(
            "results",
            format!(
                "{} results exceed the limit of {MAX_OPEN_WINDOW_RESULTS}",
                results.len()
            ),
        ));
    }
    let mut sources: Vec<SourceResultsV1> = Vec::new();
    let mut sorted: Vec<&ProbeResult> = results.iter().collect();
    sorted.sort_by(|a, b| a.source.cmp(&b.source));
    for result in sorted {
        let same_source = sources.last().is_some_and(|last| {
            last.region == result.source.region.as_str()
                && std::net::IpAddr::from(last.ip) == result.source.ip
        });
        if !same_source {
            sources.push(SourceResultsV1 {
                region: result.source.region.as_str().to_owned(),
                ip: result.source.ip.into(),
                results: Vec::new(),
            });
        }
        if let Some(last) = sources.last_mut() {
            last.results.push(ProbeResultV1::from(result));
        }
    }
    let body = OpenWindowsV1 {
        saved_at_ms: saved_at.as_millis(),
        window_ms: duration_millis(window),
        sources,
    };
    let mut bytes = OPEN_WINDOWS_MAGIC.to_vec();
    bytes.extend_from_slice(&OPEN_WINDOWS_FORMAT.to_be_bytes());
    postcard::to_extend(&body, bytes).map_err(WireError::Encode)
}

/// Reads a handoff file's bytes back into validated results.
///
/// # Errors
/// [`WireError::Invalid`] naming `magic` or `format` for a file that is not one of ours (or of
/// a newer format), or the offending field (`sources[1].results[4].outcome`); `Decode` or
/// `TrailingBytes` for a damaged body.
pub fn decode_open_windows(bytes: &[u8]) -> Result<OpenWindows, WireError> {
    let header_len = OPEN_WINDOWS_MAGIC.len() + 2;
    if bytes.len() < header_len || bytes[..OPEN_WINDOWS_MAGIC.len()] != OPEN_WINDOWS_MAGIC {
        return Err(WireError::invalid(
            "magic",
            "not a ProberMesh open-windows file",
        ));
    }
    let format = u16::from_be_bytes([bytes[header_len - 2], bytes[header_len - 1]]);
    if format != OPEN_WINDOWS_FORMAT {
        return Err(WireError::invalid(
            "format",
            format!("format {format} is not {OPEN_WINDOWS_FORMAT}, the one this version reads"),
        ));
    }
    let (body, rest): (OpenWindowsV1, &[u8]) =
        postcard::take_from_bytes(&bytes[header_len..]).map_err(WireError::Decode)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes {
            n_trailing: rest.len(),
        });
    }
    if body.window_ms < 1_000 {
        return Err(WireError::invalid(
            "window_ms",
            format!("{} ms is shorter than the 1 s minimum", body.window_ms),
        ));
    }
    let total: usize = body.sources.iter().map(|s| s.results.len()).sum();
    if total > MAX_OPEN_WINDOW_RESULTS {
        return Err(WireError::invalid(
            "sources",
            format!("{total} results exceed the limit of {MAX_OPEN_WINDOW_RESULTS}"),
        ));
    }
    let mut results = Vec::with_capacity(total);
    for (source_idx, group) in body.sources.into_iter().enumerate() {
        let region = Region::new(&group.region).map_err(|e| {
            WireError::invalid(format!("sources[{source_idx}].region"), e.to_string())
        })?;
        let source = AgentId::new(region, group.ip.into());
        for (result_idx, result) in group.results.into_iter().enumerate() {
            results.push(
                result.into_domain(source.clone()).map_err(|e| {
                    e.within(&format!("sources[{source_idx}].results[{result_idx}]"))
                })?,
            );
        }
    }
    Ok(OpenWindows {
        saved_at: UnixMillis(body.saved_at_ms),
        window: Duration::from_millis(body.window_ms),
        results,
    })
}
