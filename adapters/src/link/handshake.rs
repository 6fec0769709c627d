//! The link's handshake, server side, and the words both sides use for a refusal.
//!
//! After TLS, the agent opens the connection's one bidirectional stream and sends `Hello` as
//! its first frame; the server answers `Welcome` (with the address it sees) or `Refused`. The
//! whole exchange, TLS included, must finish within the handshake timeout. Before the `Hello`
//! is checked nothing the peer sends reaches the event queue, and the first frame may be at
//! most [`MAX_HELLO_FRAME_LEN`] bytes. A connection takes one of the `max_connections` places
//! only here, when its `Hello` is accepted. Every line a peer causes before that is
//! rate-limited and quotes what the peer sent only through `peer_text`
//! ([`super::peer_log`]).

use std::sync::Arc;

use probermesh_core::link::Capabilities;
use probermesh_core::model::region::MAX_REGION_LEN;
use probermesh_core::model::{AgentId, AgentVersion, Region, RegionError};
use probermesh_core::ports::LinkError;
use probermesh_core::wire::{
    AgentMessage, Hello, HelloError, ProtocolVersion, RefusalV1, Welcome, WireSecret, decode_frame,
    decode_hello, encode_refused, encode_welcome,
};
use quinn::{Connection, Incoming, RecvStream, SendStream};
use tokio::time::{Instant, timeout_at};

use super::cert_check::{describe_peer_alert, readable_tls_text};
use super::close::{CloseCode, close};
use super::config::MAX_HELLO_FRAME_LEN;
use super::framed::{FrameError, read_first_body};
use super::peer_log::{PeerLine, peer_text};
use super::server::{ConnectionSlot, Shared, bump};

/// How long the server waits, after sending `Refused`, for the agent to read it and hang up.
const REFUSAL_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// An authenticated agent connection.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub(crate) conn: Connection,
    pub(crate) send: SendStream,
    pub(crate) recv: RecvStream,
    pub(crate) hello: AcceptedHello,
    /// Its place among the `max_connections`.
    pub(crate) slot: ConnectionSlot,
}

/// What a valid `Hello` said, and the `Welcome` to answer.
#[derive(Debug)]
pub(crate) struct AcceptedHello {
    pub(crate) agent: AgentId,
    pub(crate) version: AgentVersion,
    pub(crate) instance_id: u64,
    /// The connection's protocol version and the agent's features.
    pub(crate) capabilities: Capabilities,
    pub(crate) welcome: Welcome,
}

/// The text of a refusal, for the agent's error and both sides' logs.
#[must_use]
pub fn describe_refusal(reason: &RefusalV1) -> String {
    match reason {
        RefusalV1::BadToken => "bad token: the server did not accept this agent's token".into(),
        RefusalV1::VersionMismatch { server, agent } => format!(
            "protocol version mismatch: the server speaks v{server}, the agent speaks v{agent}; \
             run the same protocol version on both"
        ),
        RefusalV1::Other(text) => text.clone(),
    }
}

/// The agent's error for a refusal.
#[must_use]
pub(crate) fn refused(reason: &RefusalV1) -> LinkError {
    LinkError::Refused {
        reason: describe_refusal(reason),
    }
}

/// The words for a handshake the agent ended with a TLS alert (it refused the server's
/// certificate, or speaks another protocol); `None` for other failures.
fn peer_tls_refusal(error: &quinn::ConnectionError, certificate_name: &str) -> Option<String> {
    let quinn::ConnectionError::ConnectionClosed(close) = error else {
        return None;
    };
    let code = u64::from(close.error_code);
    let alert = u8::try_from(code.checked_sub(0x100)?).ok()?;
    let reason = readable_tls_text(&String::from_utf8_lossy(&close.reason));
    Some(describe_peer_alert(alert, &reason, certificate_name))
}

/// Runs the server side of the handshake; `None` when the connection was refused or failed
/// (it is closed, logged and counted then).
pub(crate) async fn accept(shared: &Arc<Shared>, incoming: Incoming) -> Option<Accepted> {
    let remote = incoming.remote_address();
    let deadline = Instant::now() + shared.config.limits.handshake_timeout;
    let failed = |what: &str, detail: &dyn std::fmt::Display| {
        bump(&shared.counters.handshake_failures);
        if let Some(suppressed) = shared.peer_line(PeerLine::HandshakeFailed) {
            let error = peer_text(&detail.to_string());
            tracing::info!(%remote, %error, suppressed, "{what}");
        }
    };
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            failed("connection attempt failed", &e);
            return None;
        }
    };
    let conn = match timeout_at(deadline, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            if let Some(refusal) = peer_tls_refusal(&e, &shared.certificate_name) {
                bump(&shared.counters.handshake_failures);
                if let Some(suppressed) = shared.peer_line(PeerLine::CertificateRefused) {
                    tracing::warn!(%remote, suppressed, "{refusal}");
                }
            } else {
                failed("TLS handshake failed", &e);
            }
            return None;
        }
        Err(_) => {
            failed("TLS handshake timed out", &"timeout");
            return None;
        }
    };
    let timed_out = |conn: &Connection, what: &str| {
        failed(what, &"timeout");
        close(conn, CloseCode::HandshakeTimeout, what);
    };
    let (mut send, mut recv) = match timeout_at(deadline, conn.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            failed("the agent opened no stream", &e);
            return None;
        }
        Err(_) => {
            timed_out(&conn, "no stream opened within the handshake timeout");
            return None;
        }
    };
    let first = match timeout_at(deadline, read_first_body(&mut recv, MAX_HELLO_FRAME_LEN)).await {
        Ok(Ok(msg)) => msg,
        Ok(Err(FrameError::Read(e))) => {
            failed("the agent left before its Hello", &e);
            return None;
        }
        Ok(Err(e)) => {
            failed("bad first frame", &e);
            close(
                &conn,
                CloseCode::Protocol,
                &format!("protocol violation: {e}"),
            );
            return None;
        }
        Err(_) => {
            timed_out(&conn, "no Hello within the handshake timeout");
            return None;
        }
    };
    let checked =
        check_hello(shared, first, remote).and_then(|hello| {
            match ConnectionSlot::try_take(shared) {
                Some(slot) => Ok((hello, slot)),
                None => Err(at_capacity(shared, remote)),
            }
        });
    match checked {
        Ok((hello, slot)) => Some(Accepted {
            conn,
            send,
            recv,
            hello,
            slot,
        }),
        Err(Rejection::Protocol(detail)) => {
            failed("bad first frame", &detail);
            close(
                &conn,
                CloseCode::Protocol,
                &format!("protocol violation: {detail}"),
            );
            None
        }
        Err(Rejection::Refused(reason)) => {
            let text = describe_refusal(&reason);
            if let Ok(frame) = encode_refused(&reason)
                && send.write_all(&frame).await.is_ok()
            {
                let _ = send.finish();
                // Let the agent read the refusal and hang up itself.
                let _ = tokio::time::timeout(REFUSAL_READ_TIMEOUT, conn.closed()).await;
            }
            close(&conn, CloseCode::Refused, &text);
            None
        }
    }
}

/// The refusal of a valid `Hello` when `max_connections` agents are connected (they
/// completed their handshakes together); counted and logged like a refused attempt.
fn at_capacity(shared: &Shared, remote: std::net::SocketAddr) -> Rejection {
    bump(&shared.counters.refused_capacity);
    let max_connections = shared.config.admission.max_connections;
    if let Some(suppressed) = shared.peer_line(PeerLine::RefusedCapacity) {
        tracing::warn!(%remote, max_connections, suppressed, "agent refused: too many connections");
    }
    Rejection::Refused(RefusalV1::Other(format!(
        "the server has its maximum of {max_connections} agents connected; try again later"
    )))
}

/// Why a first frame was not accepted.
enum Rejection {
    /// Not a valid `Hello` at all: closed without an answer.
    Protocol(String),
    /// A `Hello` the server says no to, with `Refused`.
    Refused(RefusalV1),
}

/// Reads the first frame's body as a `Hello` of a version this server serves: v1 and v2, or
/// with `max_protocol` V1 exactly as the releases before v2 did (only a v1 `Hello` decodes).
fn read_hello(shared: &Shared, body: &[u8]) -> Result<Hello, HelloError> {
    if shared.config.max_protocol == ProtocolVersion::V1 {
        let first: AgentMessage = decode_frame(body).map_err(HelloError::Wire)?;
        first.check_limits().map_err(HelloError::Wire)?;
        let AgentMessage::Hello {
            protocol_version,
            agent_version,
            region,
            ip,
            instance_id,
            token,
        } = first
        else {
            return Err(HelloError::Wire(
                probermesh_core::wire::WireError::Invalid {
                    field: "message".into(),
                    reason: "the first message must be a Hello".into(),
                },
            ));
        };
        if protocol_version != ProtocolVersion::V1.as_u16() {
            return Err(HelloError::UnsupportedVersion {
                version: protocol_version,
            });
        }
        return Ok(Hello {
            protocol_version: ProtocolVersion::V1,
            agent_version,
            region,
            ip: ip.into(),
            instance_id,
            token,
            features: std::collections::BTreeSet::new(),
        });
    }
    decode_hello(body)
}

/// Checks the first message: a `Hello` within limits, a protocol version this server serves,
/// the right token, a valid region. Logs and counts refusals (never the token).
fn check_hello(
    shared: &Shared,
    first: Vec<u8>,
    remote: std::net::SocketAddr,
) -> Result<AcceptedHello, Rejection> {
    let hello = match read_hello(shared, &first) {
        Ok(hello) => hello,
        Err(HelloError::UnsupportedVersion { version }) => {
            bump(&shared.counters.refused_version);
            let reason = RefusalV1::VersionMismatch {
                server: shared.config.max_protocol.as_u16(),
                agent: version,
            };
            if let Some(suppressed) = shared.peer_line(PeerLine::HelloRefused) {
                tracing::warn!(%remote, suppressed, "agent refused: {}", describe_refusal(&reason));
            }
            return Err(Rejection::Refused(reason));
        }
        Err(HelloError::Wire(error)) => return Err(Rejection::Protocol(error.to_string())),
    };
    let Hello {
        protocol_version,
        agent_version,
        region,
        ip,
        instance_id,
        token,
        features,
    } = hello;
    let version = AgentVersion::new(&agent_version);
    if !shared.config.token.matches(WireSecret::expose(&token)) {
        bump(&shared.counters.refused_bad_token);
        if let Some(suppressed) = shared.peer_line(PeerLine::HelloRefused) {
            tracing::warn!(
                %remote,
                region = %peer_text(&region),
                agent_version = %version,
                suppressed,
                "agent refused: bad token"
            );
        }
        return Err(Rejection::Refused(RefusalV1::BadToken));
    }
    let region = match Region::new(&region) {
        Ok(region) => region,
        Err(e) => {
            bump(&shared.counters.refused_other);
            let text = format!("invalid region in Hello: {e}");
            if let Some(suppressed) = shared.peer_line(PeerLine::HelloRefused) {
                tracing::warn!(
                    %remote,
                    region = %peer_text(&region),
                    suppressed,
                    "agent refused: invalid region in Hello: {}",
                    region_fault(&e)
                );
            }
            return Err(Rejection::Refused(RefusalV1::Other(text)));
        }
    };
    let server_features = match protocol_version {
        ProtocolVersion::V1 => std::collections::BTreeSet::new(),
        ProtocolVersion::V2 => shared.config.features.clone(),
    };
    Ok(AcceptedHello {
        agent: AgentId::new(region, ip),
        version,
        instance_id,
        capabilities: probermesh_core::wire::capabilities(protocol_version, &features),
        welcome: Welcome {
            protocol_version,
            server_version: shared.config.server_version.clone(),
            observed_addr: remote,
            features: server_features,
        },
    })
}

/// What is wrong with a region, without quoting it (the log line quotes it cut).
fn region_fault(error: &RegionError) -> String {
    match error {
        RegionError::Empty => "it is empty".into(),
        RegionError::TooLong { len } => {
            format!("it is {len} bytes long; the limit is {MAX_REGION_LEN}")
        }
        RegionError::BadCharacter { character, .. } => {
            format!("it holds {character:?}; allowed are letters, digits, '-', '_', '.' and ':'")
        }
    }
}

/// The `Welcome` frame of an accepted hello.
pub(crate) fn welcome_frame(
    hello: &AcceptedHello,
) -> Result<Vec<u8>, probermesh_core::wire::WireError> {
    encode_welcome(&hello.welcome)
}
