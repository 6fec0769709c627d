//! Why a link connection closed: the application close codes the two ends send each other,
//! and the translation of quinn's connection errors into core's [`LinkError`].

use probermesh_core::ports::LinkError;
use quinn::{Connection, ConnectionError, VarInt};

use super::cert_check::readable_tls_text;

/// Longest close reason sent, in bytes (a QUIC close frame must fit one packet).
const MAX_REASON_LEN_BYTES: usize = 512;

/// The application error code of a closed link connection.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum CloseCode {
    /// A normal end (the agent stops, or hangs up after the server finished its stream).
    Done,
    /// The peer sent a frame that is oversized, undecodable, over a limit, or unexpected.
    Protocol,
    /// The server refused the agent (bad token, version mismatch, invalid hello).
    Refused,
    /// The peer did not complete the handshake in time.
    HandshakeTimeout,
    /// The server is shutting down.
    ServerShutdown,
    /// The agent does not read what the server sends (its send queue overflowed).
    SlowReader,
}

impl CloseCode {
    const ALL: [Self; 6] = [
        Self::Done,
        Self::Protocol,
        Self::Refused,
        Self::HandshakeTimeout,
        Self::ServerShutdown,
        Self::SlowReader,
    ];

    /// The code on the wire.
    #[must_use]
    pub const fn code(self) -> u32 {
        match self {
            Self::Done => 0,
            Self::Protocol => 1,
            Self::Refused => 2,
            Self::HandshakeTimeout => 3,
            Self::ServerShutdown => 4,
            Self::SlowReader => 5,
        }
    }

    /// The code for a wire value, if it is one of ours.
    #[must_use]
    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|c| u64::from(c.code()) == code)
    }

    /// The close code quinn reports for `err`, when the peer closed with one of ours.
    #[must_use]
    pub fn of_error(err: &ConnectionError) -> Option<(Self, String)> {
        match err {
            ConnectionError::ApplicationClosed(close) => {
                Self::from_code(close.error_code.into_inner())
                    .map(|code| (code, String::from_utf8_lossy(&close.reason).into_owned()))
            }
            _ => None,
        }
    }
}

/// Closes `conn` with `code` and `reason` (cut to fit a packet).
pub(crate) fn close(conn: &Connection, code: CloseCode, reason: &str) {
    let mut end = reason.len().min(MAX_REASON_LEN_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    conn.close(VarInt::from_u32(code.code()), &reason.as_bytes()[..end]);
}

/// core's view of a lost connection.
pub(crate) fn link_error(err: &ConnectionError) -> LinkError {
    if let Some((code, reason)) = CloseCode::of_error(err) {
        return match code {
            CloseCode::Refused => LinkError::Refused { reason },
            CloseCode::Protocol | CloseCode::HandshakeTimeout | CloseCode::SlowReader => {
                LinkError::Protocol {
                    detail: format!("the peer closed the connection: {reason}"),
                }
            }
            CloseCode::Done | CloseCode::ServerShutdown => LinkError::Disconnected,
        };
    }
    match err {
        ConnectionError::LocallyClosed => LinkError::Disconnected,
        // This end's TLS refused the peer (the agent refused the server's certificate): the
        // refusal's own sentence, without rustls' wrapping.
        ConnectionError::TransportError(e) if (0x100..0x200).contains(&u64::from(e.code)) => {
            LinkError::Io {
                detail: format!("TLS handshake failed: {}", readable_tls_text(&e.reason)),
            }
        }
        other => LinkError::Io {
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(u64::from(code.code())), Some(code));
        }
        assert_eq!(CloseCode::from_code(99), None);
    }

    #[test]
    fn connection_errors_map_to_link_errors() {
        let closed = |code: CloseCode, reason: &str| {
            ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: VarInt::from_u32(code.code()),
                reason: reason.as_bytes().to_vec().into(),
            })
        };
        assert_eq!(
            link_error(&closed(CloseCode::Refused, "bad token")),
            LinkError::Refused {
                reason: "bad token".into()
            }
        );
        assert!(matches!(
            link_error(&closed(CloseCode::Protocol, "frame too large")),
            LinkError::Protocol { detail } if detail.contains("frame too large")
        ));
        assert_eq!(
            link_error(&closed(CloseCode::ServerShutdown, "")),
            LinkError::Disconnected
        );
        assert!(matches!(
            link_error(&ConnectionError::TimedOut),
            LinkError::Io { .. }
        ));
    }
}
