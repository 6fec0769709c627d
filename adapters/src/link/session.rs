//! One agent connection: connect and say `Hello`, then read and write until it ends.
//!
//! The reader applies `Ack`s to the outbox, keeps the latest valid target pool and forwards
//! what the agent driver wants (`TargetPool`, `Task`, `UpgradeOffer`). The writer asks for the
//! pool, sends heartbeats and control messages, and drains the outbox: unacknowledged batches
//! of earlier connections first, then new ones, within the window of unacknowledged batches.
//! The connection ends when the *reader* ends, so every `Ack` the server wrote before finishing
//! its stream is applied before the agent hangs up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use probermesh_core::link::FromServer;
use probermesh_core::ports::LinkError;
use probermesh_core::wire::{
    AgentMessage, PROTOCOL_VERSION, ServerMessage, WireError, WireSecret, from_server_v1,
};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::sync::{mpsc, watch};

use super::agent::AgentShared;
use super::close::{CloseCode, close, link_error};
use super::config::{AgentLinkConfig, MAX_HELLO_FRAME_LEN};
use super::framed::{FrameError, FrameReader, WriteFrameError, read_first_frame, write_message};
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

async fn connect_inner(
    config: &AgentLinkConfig,
    client: &quinn::ClientConfig,
) -> Result<Session, LinkError> {
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
    let hello = AgentMessage::Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: identity.version.to_string(),
        region: identity.agent.region.to_string(),
        ip: identity.agent.ip.into(),
        instance_id: identity.instance_id,
        token: WireSecret::new(config.token.expose().to_owned()),
    };
    write_message(&mut send, &hello, MAX_HELLO_FRAME_LEN)
        .await
        .map_err(|e| write_error(&conn, &e))?;
    let reply = read_first_frame::<ServerMessage>(&mut recv, MAX_HELLO_FRAME_LEN)
        .await
        .map_err(|e| read_error(&conn, e))?;
    if let Err(e) = reply.check_limits() {
        close(&conn, CloseCode::Protocol, &e.to_string());
        return Err(LinkError::Protocol {
            detail: format!("bad answer to Hello: {e}"),
        });
    }
    match reply {
        ServerMessage::Welcome {
            server_version,
            observed_addr,
            ..
        } => Ok(Session {
            endpoint,
            conn,
            send,
            recv,
            observed_addr: observed_addr.into(),
            server_version,
        }),
        ServerMessage::Refused { reason } => {
            close(&conn, CloseCode::Done, "refused");
            Err(refused(&reason))
        }
        other => {
            close(&conn, CloseCode::Protocol, "expected Welcome or Refused");
            Err(LinkError::Protocol {
                detail: format!("expected Welcome or Refused, got {}", kind(&other)),
            })
        }
    }
}

/// The name of a message kind, for errors (never its content).
fn kind(msg: &ServerMessage) -> &'static str {
    match msg {
        ServerMessage::Welcome { .. } => "Welcome",
        ServerMessage::Refused { .. } => "Refused",
        ServerMessage::TargetPool { .. } => "TargetPool",
        ServerMessage::Ack { .. } => "Ack",
        ServerMessage::Task { .. } => "Task",
        ServerMessage::UpgradeOffer { .. } => "UpgradeOffer",
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
        control: &mut mpsc::Receiver<AgentMessage>,
        stop: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let Self {
            endpoint: _endpoint,
            conn,
            send,
            recv,
            ..
        } = self;
        let reader = read_loop(shared, config, &conn, recv);
        let writer = write_loop(shared, config, send, control);
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
) -> SessionEnd {
    let mut reader = FrameReader::new(recv, config.limits.max_frame_len_bytes);
    loop {
        let msg = match reader.next::<ServerMessage>().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return SessionEnd::ServerFinished,
            Err(e) => return SessionEnd::Failed(read_error(conn, e)),
        };
        if let Err(e) = msg.check_limits() {
            return SessionEnd::Failed(LinkError::Protocol {
                detail: format!("bad message from the server: {e}"),
            });
        }
        match msg {
            ServerMessage::Ack { seq } => {
                shared.outbox().ack(seq);
                shared.outbox_changed.notify_one();
            }
            ServerMessage::Welcome { .. } | ServerMessage::Refused { .. } => {
                return SessionEnd::Failed(LinkError::Protocol {
                    detail: format!("unexpected {} after the handshake", kind(&msg)),
                });
            }
            ServerMessage::TargetPool { revision, .. } => match from_server_v1(msg) {
                Ok(pool) => shared.forward(Ok(FromServer::Message(pool))),
                // The agent keeps its previous pool and tells the server (AgentState).
                Err(error) => {
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
            },
            other @ (ServerMessage::Task { .. } | ServerMessage::UpgradeOffer { .. }) => {
                match from_server_v1(other) {
                    Ok(message) => shared.forward(Ok(FromServer::Message(message))),
                    Err(e) => {
                        return SessionEnd::Failed(LinkError::Protocol {
                            detail: format!("bad message from the server: {e}"),
                        });
                    }
                }
            }
        }
    }
}

async fn write_loop(
    shared: &AgentShared,
    config: &AgentLinkConfig,
    mut send: SendStream,
    control: &mut mpsc::Receiver<AgentMessage>,
) -> WriteFrameError {
    let max_frame_len = config.limits.max_frame_len_bytes;
    loop {
        loop {
            let batch = shared.outbox().next_frame();
            let Some(batch) = batch else { break };
            if batch.resend {
                tracing::debug!(
                    seq = batch.seq,
                    n_results = batch.n_results,
                    "resending batch"
                );
            }
            if let Err(e) = send.write_all(&batch.frame).await {
                return e.into();
            }
        }
        let msg = tokio::select! {
            biased;
            msg = control.recv() => match msg {
                Some(msg) => msg,
                None => return WriteFrameError::Write(quinn::WriteError::ClosedStream),
            },
            _ = shared.outbox_changed.notified() => continue,
        };
        if let Err(e) = write_message(&mut send, &msg, max_frame_len).await {
            return e;
        }
    }
}
