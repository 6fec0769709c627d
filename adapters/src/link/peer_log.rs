//! Log lines that unauthenticated peers cause, kept few and harmless: a flood of connection
//! attempts must not become a flood of log lines, and nothing a peer sends may forge a line.
//!
//! Each kind of line ([`PeerLine`]) is written at most once per interval (default 10 s); a
//! line carries `suppressed`, the lines of its kind left out since the previous one, and the
//! server's accept loop writes a summary for a kind whose interval passed with lines left out
//! ([`PeerLog::due_summaries`]), so every count reaches the log. Text a peer controls goes
//! through [`peer_text`]: escaped and cut by [`crate::log_limit::untrusted`]. The limiting
//! itself is [`crate::log_limit::LogLimit`], one per kind.

use std::time::{Duration, Instant};

use crate::log_limit::{LogLimit, untrusted};

/// Longest piece of peer-controlled text in a log line, in bytes (before escaping).
pub const MAX_PEER_TEXT_BYTES: usize = 100;

/// `text` fit for a log line: non-printable bytes, quotes and backslashes escaped, cut to
/// [`MAX_PEER_TEXT_BYTES`] (saying how many bytes were left out).
#[must_use]
pub fn peer_text(text: &str) -> String {
    untrusted(text.as_bytes(), MAX_PEER_TEXT_BYTES).to_string()
}

/// The kinds of lines unauthenticated peers cause.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum PeerLine {
    /// An attempt refused because `max_connections` agents are connected (WARN).
    RefusedCapacity,
    /// An attempt refused because the handshake budget is spent (WARN).
    RefusedBusy,
    /// An attempt refused because its source started too many handshakes (WARN).
    RefusedRateLimited,
    /// Attempts answered with a Retry: address validation is on (INFO).
    Retry,
    /// A handshake that failed or timed out before a `Hello` (INFO).
    HandshakeFailed,
    /// A peer that refused the server's certificate (WARN).
    CertificateRefused,
    /// A `Hello` refused: bad token, version, region (WARN).
    HelloRefused,
}

impl PeerLine {
    const ALL: [Self; 7] = [
        Self::RefusedCapacity,
        Self::RefusedBusy,
        Self::RefusedRateLimited,
        Self::Retry,
        Self::HandshakeFailed,
        Self::CertificateRefused,
        Self::HelloRefused,
    ];

    fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }

    /// What a summary line says about the lines it stands for.
    #[must_use]
    pub fn summary(self) -> &'static str {
        match self {
            Self::RefusedCapacity => "connection attempts refused: too many connections",
            Self::RefusedBusy => "connection attempts refused: too many handshakes at once",
            Self::RefusedRateLimited => {
                "connection attempts refused: a source started too many handshakes"
            }
            Self::Retry => "connection attempts answered with a Retry (address validation)",
            Self::HandshakeFailed => "handshakes failed or timed out before a Hello",
            Self::CertificateRefused => "peers refused this server's certificate",
            Self::HelloRefused => "agents refused at their Hello",
        }
    }

    /// Whether the kind is a warning (else information).
    #[must_use]
    pub fn is_warning(self) -> bool {
        !matches!(self, Self::Retry | Self::HandshakeFailed)
    }
}

/// The rate limit of peer-caused lines: one line per kind per interval.
#[derive(Debug)]
pub struct PeerLog {
    interval: Duration,
    kinds: [LogLimit; PeerLine::ALL.len()],
}

impl PeerLog {
    /// At most one line per kind per `interval`.
    #[must_use]
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            kinds: std::array::from_fn(|_| LogLimit::new(interval)),
        }
    }

    /// Whether a line of `kind` may be written at `now`: `Some(lines left out since the
    /// previous one)`, or `None` (then it is counted as left out).
    pub fn admit(&self, kind: PeerLine, now: Instant) -> Option<u64> {
        self.kinds[kind.index()].admit(now)
    }

    /// The kinds whose interval has passed with lines left out, with their counts; each
    /// summary is its kind's line for the interval.
    pub fn due_summaries(&self, now: Instant) -> Vec<(PeerLine, u64)> {
        PeerLine::ALL
            .into_iter()
            .filter_map(|kind| {
                self.kinds[kind.index()]
                    .due_summary(now)
                    .map(|suppressed| (kind, suppressed))
            })
            .collect()
    }

    /// Writes the due summaries.
    pub fn write_due_summaries(&self, now: Instant) {
        for (kind, suppressed) in self.due_summaries(now) {
            let interval_secs = self.interval.as_secs_f64();
            if kind.is_warning() {
                tracing::warn!(suppressed, interval_secs, "{}", kind.summary());
            } else {
                tracing::info!(suppressed, interval_secs, "{}", kind.summary());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval_and_every_count_arrives() {
        let log = PeerLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(log.admit(PeerLine::RefusedBusy, at(0)), Some(0));
        for ms in 1..=1_000 {
            assert_eq!(log.admit(PeerLine::RefusedBusy, at(ms)), None);
        }
        // Another kind has its own interval.
        assert_eq!(log.admit(PeerLine::HelloRefused, at(5)), Some(0));
        assert!(log.due_summaries(at(9_999)).is_empty());
        assert_eq!(
            log.due_summaries(at(10_000)),
            vec![(PeerLine::RefusedBusy, 1_000)]
        );
        // The summary was this interval's line.
        assert_eq!(log.admit(PeerLine::RefusedBusy, at(10_001)), None);
        assert_eq!(log.admit(PeerLine::RefusedBusy, at(20_000)), Some(1));
        assert!(log.due_summaries(at(40_000)).is_empty());
    }

    #[test]
    fn peer_text_is_escaped_and_cut() {
        assert_eq!(peer_text("eu-west"), "eu-west");
        assert_eq!(peer_text("a\nb\"c\u{1b}[31m"), "a\\nb\\\"c\\x1b[31m");
        let long = peer_text(&"x".repeat(10_000));
        assert_eq!(
            long,
            format!("{}…(+9900 bytes)", "x".repeat(MAX_PEER_TEXT_BYTES))
        );
    }
}
