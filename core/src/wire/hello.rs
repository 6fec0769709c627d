//! The handshake, whatever the protocol version: the agent's [`Hello`], the server's
//! [`Welcome`] or refusal.
//!
//! The agent offers the newest version it speaks; the server reads the offered version from
//! the hello's first bytes ([`decode_hello`]) and answers in it. This works for every version
//! because the first two fields of `Hello` are frozen: the body starts with postcard's varint
//! variant index 0 (`Hello`), then the varint `u16` `protocol_version`. No future version may
//! change either. `Refused` has v1's bytes in every version, so any agent can read why it was
//! refused.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use super::frame::{DEFAULT_MAX_FRAME_LEN, decode_frame, encode_frame};
use super::v1::{AgentMessage, RefusalV1, ServerMessage, WireSecret};
use super::v2::{AgentMessageV2, ServerMessageV2};
use super::{ProtocolVersion, WireError};
use crate::link::Capabilities;

/// An agent's hello, in the version it offers.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Hello {
    /// The version the agent offers (and speaks on the connection if the server does).
    pub protocol_version: ProtocolVersion,
    /// The agent's own version (the `version` label).
    pub agent_version: String,
    /// The agent's resolved region.
    pub region: String,
    /// The address the agent reports.
    pub ip: IpAddr,
    /// Random per process start, so the server can tell a reconnect from a second process.
    pub instance_id: u64,
    /// The shared authentication token.
    pub token: WireSecret,
    /// The features the agent takes (`crate::link::feature`); always empty in v1, which
    /// cannot carry them.
    pub features: BTreeSet<String>,
}

impl Hello {
    /// What the agent speaks on this connection.
    #[must_use]
    pub fn capabilities(&self) -> Capabilities {
        capabilities(self.protocol_version, &self.features)
    }
}

/// A server's welcome, in the version of the connection.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Welcome {
    /// The version of the connection (the one the agent offered).
    pub protocol_version: ProtocolVersion,
    /// The server's version.
    pub server_version: String,
    /// The address the server sees the agent connect from.
    pub observed_addr: SocketAddr,
    /// The features the server offers; always empty in v1.
    pub features: BTreeSet<String>,
}

impl Welcome {
    /// What the server speaks on this connection.
    #[must_use]
    pub fn capabilities(&self) -> Capabilities {
        capabilities(self.protocol_version, &self.features)
    }
}

/// The server's answer to a hello.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Answer {
    /// Accepted.
    Welcome(Welcome),
    /// Refused; the server closes the connection.
    Refused(RefusalV1),
}

/// Why a hello could not be read.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum HelloError {
    /// A well-formed hello start offering a version this build does not speak: answer
    /// [`HelloError::refusal`] (`VersionMismatch`).
    #[error("the agent offers protocol version {version}, which this build does not speak")]
    UnsupportedVersion {
        /// The offered version number.
        version: u16,
    },
    /// Not a hello, or a hello that does not decode or breaks a limit.
    #[error(transparent)]
    Wire(#[from] WireError),
}

impl HelloError {
    /// The refusal to answer with: `VersionMismatch` naming this build's newest version for an
    /// unsupported version, `None` for bytes that are not a hello (close the connection).
    #[must_use]
    pub fn refusal(&self) -> Option<RefusalV1> {
        match self {
            Self::UnsupportedVersion { version } => Some(RefusalV1::VersionMismatch {
                server: ProtocolVersion::LATEST.as_u16(),
                agent: *version,
            }),
            Self::Wire(_) => None,
        }
    }
}

/// The capabilities of a peer that speaks `version` and named `features` (v1: none).
#[must_use]
pub fn capabilities(version: ProtocolVersion, features: &BTreeSet<String>) -> Capabilities {
    Capabilities {
        protocol_version: version.as_u16(),
        features: match version {
            ProtocolVersion::V1 => BTreeSet::new(),
            ProtocolVersion::V2 => features.clone(),
        },
    }
}

/// The hello as a whole frame in its version (v1 cannot carry features and drops them).
///
/// # Errors
/// [`WireError::Invalid`] for a field over its limit (the server would refuse it),
/// [`WireError::Encode`] / [`WireError::FrameTooLarge`] as [`encode_frame`].
pub fn encode_hello(hello: &Hello) -> Result<Vec<u8>, WireError> {
    let protocol_version = hello.protocol_version.as_u16();
    let agent_version = hello.agent_version.clone();
    let region = hello.region.clone();
    let ip = hello.ip.into();
    let token = hello.token.clone();
    match hello.protocol_version {
        ProtocolVersion::V1 => {
            let message = AgentMessage::Hello {
                protocol_version,
                agent_version,
                region,
                ip,
                instance_id: hello.instance_id,
                token,
            };
            message.check_limits()?;
            encode_frame(&message, DEFAULT_MAX_FRAME_LEN)
        }
        ProtocolVersion::V2 => {
            let message = AgentMessageV2::Hello {
                protocol_version,
                agent_version,
                region,
                ip,
                instance_id: hello.instance_id,
                token,
                features: hello.features.iter().cloned().collect(),
            };
            message.check_limits()?;
            encode_frame(&message, DEFAULT_MAX_FRAME_LEN)
        }
    }
}

/// The protocol version a frame body offers, read from its first bytes only: the varint
/// variant index must be 0 (`Hello`) and the next varint is the `u16` version.
fn offered_version(body: &[u8]) -> Result<u16, WireError> {
    let (variant, rest) = postcard::take_from_bytes::<u32>(body).map_err(WireError::Decode)?;
    if variant != 0 {
        return Err(WireError::invalid(
            "hello",
            format!("the first message must be a Hello (variant 0), not variant {variant}"),
        ));
    }
    let (version, _) = postcard::take_from_bytes::<u16>(rest).map_err(WireError::Decode)?;
    Ok(version)
}

/// Reads the first frame body of a connection as a hello of any version this build speaks,
/// validated ([`AgentMessage::check_limits`] / [`AgentMessageV2::check_limits`]).
///
/// # Errors
/// [`HelloError::UnsupportedVersion`] for a hello offering another version (answer it with
/// [`HelloError::refusal`]); [`HelloError::Wire`] for anything else: not a hello, not
/// decodable in its version (trailing bytes included), or over a limit.
pub fn decode_hello(body: &[u8]) -> Result<Hello, HelloError> {
    let number = offered_version(body)?;
    let version = ProtocolVersion::from_u16(number)
        .ok_or(HelloError::UnsupportedVersion { version: number })?;
    match version {
        ProtocolVersion::V1 => {
            let message: AgentMessage = decode_frame(body)?;
            message.check_limits()?;
            let AgentMessage::Hello {
                agent_version,
                region,
                ip,
                instance_id,
                token,
                ..
            } = message
            else {
                return Err(WireError::invalid("hello", "not a Hello").into());
            };
            Ok(Hello {
                protocol_version: version,
                agent_version,
                region,
                ip: ip.into(),
                instance_id,
                token,
                features: BTreeSet::new(),
            })
        }
        ProtocolVersion::V2 => {
            let message: AgentMessageV2 = decode_frame(body)?;
            message.check_limits()?;
            let AgentMessageV2::Hello {
                agent_version,
                region,
                ip,
                instance_id,
                token,
                features,
                ..
            } = message
            else {
                return Err(WireError::invalid("hello", "not a Hello").into());
            };
            Ok(Hello {
                protocol_version: version,
                agent_version,
                region,
                ip: ip.into(),
                instance_id,
                token,
                features: features.into_iter().collect(),
            })
        }
    }
}

/// The welcome as a whole frame in its version (v1 cannot carry features and drops them).
///
/// # Errors
/// [`WireError::Invalid`] for a field over its limit, [`WireError::Encode`] /
/// [`WireError::FrameTooLarge`] as [`encode_frame`].
pub fn encode_welcome(welcome: &Welcome) -> Result<Vec<u8>, WireError> {
    let protocol_version = welcome.protocol_version.as_u16();
    let server_version = welcome.server_version.clone();
    let observed_addr = welcome.observed_addr.into();
    match welcome.protocol_version {
        ProtocolVersion::V1 => {
            let message = ServerMessage::Welcome {
                protocol_version,
                server_version,
                observed_addr,
            };
            message.check_limits()?;
            encode_frame(&message, DEFAULT_MAX_FRAME_LEN)
        }
        ProtocolVersion::V2 => {
            let message = ServerMessageV2::Welcome {
                protocol_version,
                server_version,
                observed_addr,
                features: welcome.features.iter().cloned().collect(),
            };
            message.check_limits()?;
            encode_frame(&message, DEFAULT_MAX_FRAME_LEN)
        }
    }
}

/// A refusal as a whole frame: v1's bytes, which every version reads (`Refused` is variant 1
/// with the same payload in every version). A text over `MAX_TEXT_LEN` is cut.
///
/// # Errors
/// [`WireError::Encode`] as [`encode_frame`].
pub fn encode_refused(reason: &RefusalV1) -> Result<Vec<u8>, WireError> {
    let reason = match reason {
        RefusalV1::Other(text) => {
            RefusalV1::Other(super::cut_to(text.clone(), super::MAX_TEXT_LEN))
        }
        other => other.clone(),
    };
    encode_frame(&ServerMessage::Refused { reason }, DEFAULT_MAX_FRAME_LEN)
}

/// Reads the server's answer to a hello offering `version`.
///
/// # Errors
/// [`WireError::Invalid`] for any message but `Welcome` and `Refused`, for a welcome in another
/// version than the one offered, or for a field over its limit; [`WireError::Decode`] /
/// [`WireError::TrailingBytes`] for bytes that are not a message of `version`.
pub fn decode_answer(version: ProtocolVersion, body: &[u8]) -> Result<Answer, WireError> {
    let (welcome_version, server_version, observed_addr, features) = match version {
        ProtocolVersion::V1 => {
            let message: ServerMessage = decode_frame(body)?;
            message.check_limits()?;
            match message {
                ServerMessage::Welcome {
                    protocol_version,
                    server_version,
                    observed_addr,
                } => (
                    protocol_version,
                    server_version,
                    observed_addr,
                    BTreeSet::new(),
                ),
                ServerMessage::Refused { reason } => return Ok(Answer::Refused(reason)),
                _ => return Err(not_an_answer()),
            }
        }
        ProtocolVersion::V2 => {
            let message: ServerMessageV2 = decode_frame(body)?;
            message.check_limits()?;
            match message {
                ServerMessageV2::Welcome {
                    protocol_version,
                    server_version,
                    observed_addr,
                    features,
                } => (
                    protocol_version,
                    server_version,
                    observed_addr,
                    features.into_iter().collect(),
                ),
                ServerMessageV2::Refused { reason } => return Ok(Answer::Refused(reason)),
                _ => return Err(not_an_answer()),
            }
        }
    };
    if welcome_version != version.as_u16() {
        return Err(WireError::invalid(
            "welcome.protocol_version",
            format!("{welcome_version} in answer to a {version} hello"),
        ));
    }
    Ok(Answer::Welcome(Welcome {
        protocol_version: version,
        server_version,
        observed_addr: observed_addr.into(),
        features,
    }))
}

/// The error for a first server message that is neither `Welcome` nor `Refused`.
fn not_an_answer() -> WireError {
    WireError::invalid(
        "message",
        "the answer to a hello must be Welcome or Refused",
    )
}
