//! Log lines a stranger can cause, kept harmless: [`LogLimit`] writes at most one line per
//! interval of each kind (saying how many it left out), and [`untrusted`] shows text a peer
//! sent escaped and cut short, so a peer can neither flood the log nor write into it.
//!
//! Not an adapter: a leaf any adapter facing unauthenticated peers may use (the HTTP
//! endpoints today; the QUIC link's refusals can use it too).

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How much of a peer's text a log line shows by default.
pub const UNTRUSTED_MAX_BYTES: usize = 64;

/// At most one log line per `interval` for one kind of event.
///
/// ```
/// # use probermesh_adapters::log_limit::LogLimit;
/// # use std::time::{Duration, Instant};
/// static REFUSED: LogLimit = LogLimit::new(Duration::from_secs(1));
/// if let Some(suppressed) = REFUSED.admit(Instant::now()) {
///     tracing::warn!(suppressed, "refused");
/// }
/// ```
#[derive(Debug)]
pub struct LogLimit {
    interval: Duration,
    state: Mutex<LimitState>,
}

#[derive(Debug)]
struct LimitState {
    last_line: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// A limit of one line per `interval`.
    #[must_use]
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(LimitState {
                last_line: None,
                suppressed: 0,
            }),
        }
    }

    /// Whether an event at `now` may write its line: `Some(n)` when it may, `n` being how many
    /// events since the last line wrote none (put it in the line); `None` when it may not
    /// (the event is counted for the next line).
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let due = state
            .last_line
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if due {
            state.last_line = Some(now);
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed = state.suppressed.saturating_add(1);
            None
        }
    }
}

impl LogLimit {
    /// For a kind whose interval has passed with events left out: their count, to write as a
    /// summary line, which counts as the interval's line. So every count reaches the log even
    /// when the events stop.
    pub fn due_summary(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let passed = state
            .last_line
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if state.suppressed > 0 && passed {
            state.last_line = Some(now);
            Some(std::mem::take(&mut state.suppressed))
        } else {
            None
        }
    }
}

/// Text from a peer, for a log line: see [`untrusted`].
#[derive(Clone, Copy, Debug)]
pub struct Untrusted<'a> {
    bytes: &'a [u8],
    max_bytes: usize,
}

/// Shows `bytes` a peer sent in a log line: the first `max_bytes` bytes, every byte that is not
/// printable ASCII escaped (`\n`, `\x1b`, `\xc3`; quotes and backslashes too), and how many
/// bytes were left out. So a line stays one line of bounded length whatever the peer sent.
#[must_use]
pub fn untrusted(bytes: &[u8], max_bytes: usize) -> Untrusted<'_> {
    Untrusted { bytes, max_bytes }
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.bytes[..self.bytes.len().min(self.max_bytes)];
        write!(f, "{}", shown.escape_ascii())?;
        let left_out = self.bytes.len() - shown.len();
        if left_out > 0 {
            write!(f, "…(+{left_out} bytes)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_count_of_the_others() {
        let limit = LogLimit::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(limit.admit(at(0)), Some(0));
        for ms in [1, 10, 500, 999] {
            assert_eq!(limit.admit(at(ms)), None, "{ms} ms");
        }
        assert_eq!(limit.admit(at(1_000)), Some(4));
        assert_eq!(limit.admit(at(1_500)), None);
        assert_eq!(limit.admit(at(5_000)), Some(1));
        assert_eq!(limit.admit(at(6_000)), Some(0));
        // A clock read before the last line (another thread) is not a panic.
        assert_eq!(limit.admit(at(5_999)), None);
    }

    #[test]
    fn a_peers_text_is_escaped_and_cut_short() {
        let text = b"GET\r\nWARN forged line \x1b[31m\xc3\xa9\"\\";
        assert_eq!(
            untrusted(text, 100).to_string(),
            r#"GET\r\nWARN forged line \x1b[31m\xc3\xa9\"\\"#
        );
        assert_eq!(untrusted(text, 3).to_string(), "GET…(+28 bytes)");
        let long = vec![b'a'; 8 * 1024];
        let shown = untrusted(&long, UNTRUSTED_MAX_BYTES).to_string();
        assert_eq!(shown, format!("{}…(+8128 bytes)", "a".repeat(64)));
        assert_eq!(untrusted(b"", 10).to_string(), "");
    }
}
