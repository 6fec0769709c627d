//! One agent connection: connect and say `Hello`, then read and write until it ends.
//!
//! The agent offers the newest protocol version it speaks; a server that speaks only v1
//! (every release before v2) cannot read a v2 `Hello` and closes the connection as a protocol
//! violation, or refuses the version: the agent then connects again at once with a v1 `Hello`
//! (docs/wire.md, Versions and negotiation). Every message after the handshake is encoded and
//! decoded in the connection's version.
//!
//! The reader applies `Ack`s to the outbox and forwards everything else to the agent's
//! driver (a pool it cannot accept as `InvalidPool`). The writer sends the control messages
//! the driver hands over and drains the outbox: unacknowledged batches of earlier connections
//! first, then new ones, within the window of unacknowledged batches. The connection ends
//! when the *reader* ends, so every `Ack` the server wrote before finishing its stream is
//! applied before the agent hangs up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use probermesh_core::link::{Capabilities, FromAgent, FromServer, ToAgent};
use probermesh_core::ports::LinkError;
use probermesh_core::wire::{
    Answer, FromServerError, Hello, ProtocolVersion, RefusalV1, WireError, WireSecret,
    decode_answer, decode_from_server, encode_hello, encode_to_server,
};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::sync::{mpsc, watch};

use super::agent::AgentShared;
use super::close::{CloseCode, close, link_error};
use super::config::{AgentLinkConfig, MAX_HELLO_FRAME_LEN};
use super::framed::{FrameError, FrameReader, WriteFrameError, read_first_body};
use super::handshake::refused;

/// A connection that passed the handshake.
#[derive(Debug)]
pub(crate) struct Session {
    /// Kept for the connection's lifetime (the socket it runs on).
    endpoint: Endpoint,
    pub(crate) conn: Connection,
    send: SendStream,
    recv: RecvStream,
    pub(crate) observed_addr: SocketAddr,
    pub(crate) server_version: String,
    /// The connection's protocol version and the server's features.
    pub(crate) capabilities: Capabilities,
}

/// How a session ended.
#[derive(Debug)]
pub(crate) enum SessionEnd {
    /// The server finished its stream (it is shutting down); not an error.
    ServerFinished,
    /// The agent is stopping.
    Stopped,
    /// The connection failed.
    Failed(LinkError),
}

/// Connects to the server and runs the handshake, all within the handshake timeout.
pub(crate) async fn connect(
    config: &AgentLinkConfig,
    client: &quinn::ClientConfig,
) -> Result<Session, LinkError> {
    let timeout = config.limits.handshake_timeout;
    match tokio::time::timeout(timeout, connect_inner(config, client)).await {
        Ok(result) => result,
        Err(_) => Err(LinkError::Io {
            detail: format!(
                "connecting to {} timed out after {timeout:?}",
                config.server_addr
            ),
        }),
    }
}

/// Connects offering the newest version; falls back to v1 at once when the server speaks only
/// v1.
async fn connect_inner(
    config: &AgentLinkConfig,
    client: &quinn::ClientConfig,
) -> Result<Session, LinkError> {
    let offered = config.max_protocol;
    match connect_offering(config, client, offered).await {
        Err(Attempt::OnlyV1(why)) if offered != ProtocolVersion::V1 => {
            tracing::info!(
                server = %config.server_addr,
                answer = %why,
                "the server speaks protocol v1 only; connecting again in v1 (tasks, upgrades and traces need a v2 server)"
            );
            connect_offering(config, client, ProtocolVersion::V1)
                .await
                .map_err(Attempt::into_error)
        }
        other => other.map_err(Attempt::into_error),
    }
}

/// How one connection attempt failed.
enum Attempt {
    /// The server cannot read this version's `Hello` (it speaks only v1); why it said so.
    OnlyV1(String),
    /// Any other failure.
    Failed(LinkError),
}

impl Attempt {
    fn into_error(self) -> LinkError {
        match self {
            Self::OnlyV1(why) => LinkError::Protocol {
                detail: format!("the server does not accept this agent's protocol: {why}"),
            },
            Self::Failed(error) => error,
        }
    }
}

impl From<LinkError> for Attempt {
    fn from(error: LinkError) -> Self {
        Self::Failed(error)
    }
}

async fn connect_offering(
    config: &AgentLinkConfig,
    client: &quinn::ClientConfig,
    offered: ProtocolVersion,
) -> Result<Session, Attempt> {
    let io = |detail: String| LinkError::Io { detail };
    let server = tokio::net::lookup_host(config.server_addr.as_str())
        .await
        .map_err(|e| io(format!("cannot resolve {}: {e}", config.server_addr)))?
        .next()
        .ok_or_else(|| io(format!("{} has no address", config.server_addr)))?;
    let bind = match server {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let endpoint =
        Endpoint::client(bind).map_err(|e| io(format!("cannot open a UDP socket: {e}")))?;
    let conn = endpoint
        .connect_with(client.clone(), server, &config.effective_server_name())
        .map_err(|e| io(format!("cannot connect to {server}: {e}")))?
        .await
        .map_err(|e| match link_error(&e) {
            LinkError::Io { detail } => io(format!("connecting to {server} failed: {detail}")),
            other => other,
        })?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| link_error(&e))?;
    let identity = &config.identity;
    let hello = Hello {
        protocol_version: offered,
        agent_version: identity.version.to_string(),
        region: identity.agent.region.to_string(),
        ip: identity.agent.ip,
        instance_id: identity.instance_id,
        token: WireSecret::new(config.token.expose().to_owned()),
        features: config.features.clone(),
    };
    let frame = encode_hello(&hello).map_err(|e| LinkError::Protocol {
        detail: format!("cannot encode the Hello: {e}"),
    })?;
    send.write_all(&frame)
        .await
        .map_err(|e| write_error(&conn, &WriteFrameError::Write(e)))?;
    let reply = match read_first_body(&mut recv, MAX_HELLO_FRAME_LEN).await {
        Ok(reply) => reply,
        Err(error) => {
            // A server that speaks only v1 cannot decode a v2 Hello: it closes the connection
            // as a protocol violation before any answer.
            if offered != ProtocolVersion::V1
                && let Some(reason) = conn.close_reason()
                && let Some((CloseCode::Protocol, why)) = CloseCode::of_error(&reason)
            {
                return Err(Attempt::OnlyV1(why));
            }
            return Err(read_error(&conn, error).into());
        }
    };
    let answer = decode_answer(offered, &reply).map_err(|e| {
        close(&conn, CloseCode::Protocol, &e.to_string());
        LinkError::Protocol {
            detail: format!("bad answer to Hello: {e}"),
        }
    })?;
    match answer {
        Answer::Welcome(welcome) => Ok(Session {
            endpoint,
            conn,
            send,
            recv,
            observed_addr: welcome.observed_addr,
            server_version: welcome.server_version.clone(),
            capabilities: welcome.capabilities(),
        }),
        Answer::Refused(reason) => {
            close(&conn, CloseCode::Done, "refused");
            match reason {
                RefusalV1::VersionMismatch { server, .. }
                    if offered != ProtocolVersion::V1 && server == ProtocolVersion::V1.as_u16() =>
                {
                    Err(Attempt::OnlyV1(super::handshake::describe_refusal(&reason)))
                }
                other => Err(refused(&other).into()),
            }
        }
    }
}

/// A read error, preferring the server's close reason when the connection is closed.
fn read_error(conn: &Connection, err: FrameError) -> LinkError {
    if let Some(reason) = conn.close_reason() {
        return link_error(&reason);
    }
    match err {
        FrameError::Read(e) => LinkError::Io {
            detail: e.to_string(),
        },
        other => {
            close(conn, CloseCode::Protocol, &other.to_string());
            LinkError::Protocol {
                detail: other.to_string(),
            }
        }
    }
}

fn write_error(conn: &Connection, err: &WriteFrameError) -> LinkError {
    conn.close_reason().map_or_else(
        || LinkError::Io {
            detail: err.to_string(),
        },
        |reason| link_error(&reason),
    )
}

impl Session {
    /// Reads and writes until the connection ends, the server finishes, or `stop` fires.
    pub(crate) async fn run(
        self,
        shared: &Arc<AgentShared>,
        config: &AgentLinkConfig,
        control: &mut mpsc::Receiver<FromAgent>,
        stop: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let Self {
            endpoint: _endpoint,
            conn,
            send,
            recv,
            capabilities,
            ..
        } = self;
        let protocol =
            ProtocolVersion::from_u16(capabilities.protocol_version).unwrap_or(ProtocolVersion::V1);
        let reader = read_loop(shared, config, &conn, recv, protocol);
        let writer = write_loop(shared, config, send, control, protocol);
        tokio::pin!(reader, writer);
        let end = tokio::select! {
            end = &mut reader => end,
            write_err = &mut writer => {
                // The write side failed (stopped or lost): the reader tells how it ends, after
                // applying every Ack still on the way.
                tracing::debug!(error = ?write_err, "writing to the server stopped");
                tokio::select! {
                    end = &mut reader => end,
                    _ = stop.changed() => SessionEnd::Stopped,
                }
            }
            _ = stop.changed() => SessionEnd::Stopped,
        };
        match &end {
            SessionEnd::ServerFinished => close(&conn, CloseCode::Done, "server finished"),
            SessionEnd::Stopped => close(&conn, CloseCode::Done, "agent stopping"),
            SessionEnd::Failed(LinkError::Protocol { detail }) if conn.close_reason().is_none() => {
                close(&conn, CloseCode::Protocol, detail);
            }
            SessionEnd::Failed(_) => {}
        }
        end
    }
}

async fn read_loop(
    shared: &AgentShared,
    config: &AgentLinkConfig,
    conn: &Connection,
    recv: RecvStream,
    protocol: ProtocolVersion,
) -> SessionEnd {
    let mut reader = FrameReader::new(recv, config.limits.max_frame_len_bytes);
    loop {
        let decoded = match reader
            .next(|body| Ok::<_, WireError>(decode_from_server(protocol, body)))
            .await
        {
            Ok(Some(decoded)) => decoded,
            Ok(None) => return SessionEnd::ServerFinished,
            Err(e) => return SessionEnd::Failed(read_error(conn, e)),
        };
        match decoded {
            Ok(ToAgent::Ack { seq }) => {
                shared.outbox().ack(seq);
                shared.outbox_changed.notify_one();
            }
            Ok(message) => shared.forward(Ok(FromServer::Message(message))),
            // The agent keeps its previous pool and tells the server (AgentState).
            Err(FromServerError::InvalidPool { revision, error }) => {
                let (field, reason) = match error {
                    WireError::Invalid { field, reason } => (field, reason),
                    other => (String::new(), other.to_string()),
                };
                shared.forward(Ok(FromServer::InvalidPool {
                    revision,
                    field,
                    reason,
                }));
            }
            Err(FromServerError::Wire(e)) => {
                return SessionEnd::Failed(LinkError::Protocol {
                    detail: format!("bad message from the server: {e}"),
                });
            }
        }
    }
}

async fn write_loop(
    shared: &AgentShared,
    config: &AgentLinkConfig,
    mut send: SendStream,
    control: &mut mpsc::Receiver<FromAgent>,
    protocol: ProtocolVersion,
) -> WriteFrameError {
    let max_frame_len = config.limits.max_frame_len_bytes;
    // New results wait up to `result_linger` for more, so a busy agent sends a frame per
    // linger rather than per probe (and is acknowledged as often); a full batch goes at once.
    // Control messages never wait.
    let mut hold_until: Option<tokio::time::Instant> = None;
    loop {
        if hold_until.is_some_and(|until| tokio::time::Instant::now() >= until)
            || shared.outbox().batch_is_full()
        {
            hold_until = None;
        }
        while hold_until.is_none() {
            let batch = shared.outbox().next_frame();
            let Some(batch) = batch else { break };
            if batch.resend {
                tracing::debug!(
                    seq = batch.seq,
                    n_results = batch.n_results,
                    "resending batch"
                );
            }
            // A result batch has the same bytes in every protocol version.
            if let Err(e) = send.write_all(&batch.frame).await {
                return e.into();
            }
        }
        let held = async {
            match hold_until {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        };
        let msg = tokio::select! {
            biased;
            msg = control.recv() => match msg {
                Some(msg) => msg,
                None => return WriteFrameError::Write(quinn::WriteError::ClosedStream),
            },
            () = shared.outbox_changed.notified() => {
                if hold_until.is_none() && !config.result_linger.is_zero() {
                    hold_until = Some(tokio::time::Instant::now() + config.result_linger);
                }
                continue;
            }
            () = held => continue,
        };
        let frame = match encode_to_server(protocol, &msg, max_frame_len) {
            Ok(frame) => frame,
            // Not in this connection's version (a v2 message on a v1 link) or too large:
            // dropped, the connection goes on.
            Err(e) => {
                tracing::warn!(kind = msg.kind(), %protocol, error = %e, "a message to the server could not be sent");
                continue;
            }
        };
        if let Err(e) = send.write_all(&frame).await {
            return e.into();
        }
    }
}
