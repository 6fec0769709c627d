//! Whole messages after the handshake, to and from the domain conversation ([`crate::link`]).
//!
//! - [`v1`] and [`v2`]: the conversions of each version (`from_agent_v1`, `to_server_v2`, …).
//!   Coming in, every payload goes through the validating conversions of
//!   [`crate::wire::convert`]; going out fails for what the version cannot carry (v1: tasks,
//!   upgrades, chunks, traces) or a peer would refuse.
//! - The frame functions here dispatch on the version of the connection, so the adapters
//!   never match on versions: [`encode_to_agent`], [`decode_from_agent`] (server side),
//!   [`encode_to_server`], [`decode_from_server`] (agent side). A `ResultBatch` has the same
//!   bytes in both versions, so [`crate::wire::encode_result_batch_frame`] serves both.
//! - [`task_signing_bytes`]: what an operator signs for a task.

pub mod v1;
pub mod v2;

use std::sync::Arc;

pub use v1::{from_agent_v1, from_server_v1, to_agent_v1, to_server_v1};
pub use v2::{from_agent_v2, from_server_v2, to_agent_v2, to_server_v2};

use super::borrowed::{RESULT_BATCH_VARIANT, ResultBatchBodyRef, results_ref_into_domain};
use super::frame::{decode_frame, decode_frame_borrowed, encode_frame};
use super::v1::{AgentMessage, ProbeConfigV1, ServerMessage};
use super::v2::{AgentMessageV2, ServerMessageV2};
use super::{MAX_RESULTS_PER_BATCH, ProtocolVersion, WireError, check_len, pool_into_domain};
use crate::link::{FromAgent, TaskSpec, ToAgent};
use crate::model::AgentId;
use crate::model::time::duration_millis;

/// Why a frame from the server could not become a domain message.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum FromServerError {
    /// A `TargetPool` that decoded but whose configs this agent cannot accept (another
    /// version's settings): the agent keeps its previous pool and reports the revision back
    /// (`PoolRefused`) with the field and reason of `error`.
    #[error("target pool revision {revision} refused: {error}")]
    InvalidPool {
        /// The refused revision.
        revision: u64,
        /// What is wrong, naming the field (`configs[2].http.method`).
        error: WireError,
    },
    /// Any other frame that is not a valid message of the connection's version.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// A message to an agent as a whole frame in the connection's `version`.
///
/// # Errors
/// [`WireError::Invalid`] for a message the version cannot carry (a task over v1) or the
/// agent would refuse, [`WireError::FrameTooLarge`] for a body over `max_frame_len`.
pub fn encode_to_agent(
    version: ProtocolVersion,
    message: &ToAgent,
    max_frame_len: usize,
) -> Result<Vec<u8>, WireError> {
    match version {
        ProtocolVersion::V1 => encode_frame(&to_agent_v1(message)?, max_frame_len),
        ProtocolVersion::V2 => encode_frame(&to_agent_v2(message)?, max_frame_len),
    }
}

/// A frame body from agent `source` as the domain message: decoded in the connection's
/// `version` (exactly one message, no trailing bytes), checked against the limits and
/// converted.
///
/// # Errors
/// [`WireError::Decode`] / [`WireError::TrailingBytes`] for bytes that are not one message of
/// `version`, [`WireError::Invalid`] naming the field for a limit or a payload rule (and for a
/// second `Hello`).
pub fn decode_from_agent(
    version: ProtocolVersion,
    body: &[u8],
    source: &AgentId,
) -> Result<FromAgent, WireError> {
    // A result batch (the same bytes in both versions) is read in place: no allocation per
    // result, the same checks and errors as the owned messages (`wire::borrowed`).
    if let Some((&RESULT_BATCH_VARIANT, batch)) = body.split_first() {
        let batch: ResultBatchBodyRef<'_> = decode_frame_borrowed(batch)?;
        check_len(
            "result_batch.results",
            batch.results.len(),
            MAX_RESULTS_PER_BATCH,
        )?;
        return Ok(FromAgent::Results {
            seq: batch.seq,
            results: results_ref_into_domain(&batch.results, source)?,
        });
    }
    match version {
        ProtocolVersion::V1 => {
            let message: AgentMessage = decode_frame(body)?;
            message.check_limits()?;
            from_agent_v1(message, source)
        }
        // `from_agent_v2` checks the limits itself.
        ProtocolVersion::V2 => from_agent_v2(decode_frame::<AgentMessageV2>(body)?, source),
    }
}

/// A message to the server as a whole frame in the connection's `version`.
///
/// # Errors
/// [`WireError::Invalid`] for a message the version cannot carry (a trace result over v1) or
/// the server would refuse, [`WireError::FrameTooLarge`] for a body over `max_frame_len`.
pub fn encode_to_server(
    version: ProtocolVersion,
    message: &FromAgent,
    max_frame_len: usize,
) -> Result<Vec<u8>, WireError> {
    match version {
        ProtocolVersion::V1 => encode_frame(&to_server_v1(message)?, max_frame_len),
        ProtocolVersion::V2 => encode_frame(&to_server_v2(message)?, max_frame_len),
    }
}

/// A frame body from the server as the domain message: decoded in the connection's `version`
/// (exactly one message, no trailing bytes), checked against the limits and converted.
///
/// # Errors
/// [`FromServerError::InvalidPool`] for a `TargetPool` that decoded but does not validate
/// (the agent reports its revision back); [`FromServerError::Wire`] for everything else.
pub fn decode_from_server(
    version: ProtocolVersion,
    body: &[u8],
) -> Result<ToAgent, FromServerError> {
    match version {
        ProtocolVersion::V1 => match decode_frame::<ServerMessage>(body)? {
            ServerMessage::TargetPool { revision, configs } => pool_message(revision, configs),
            message => {
                message.check_limits()?;
                Ok(from_server_v1(message)?)
            }
        },
        ProtocolVersion::V2 => match decode_frame::<ServerMessageV2>(body)? {
            ServerMessageV2::TargetPool {
                revision,
                configs,
                files,
            } => match v2::pool_v2_into_domain(configs, files) {
                Ok(configs) => Ok(ToAgent::Pool {
                    revision,
                    configs: Arc::new(configs),
                }),
                Err(error) => Err(FromServerError::InvalidPool { revision, error }),
            },
            message => Ok(from_server_v2(message)?),
        },
    }
}

/// A decoded pool as the domain message; every failure (the block count included) is an
/// [`FromServerError::InvalidPool`] of `revision`.
fn pool_message(revision: u64, configs: Vec<ProbeConfigV1>) -> Result<ToAgent, FromServerError> {
    match pool_into_domain(configs) {
        Ok(configs) => Ok(ToAgent::Pool {
            revision,
            configs: Arc::new(configs),
        }),
        Err(error) => Err(FromServerError::InvalidPool { revision, error }),
    }
}

/// The domain-separation prefix of [`task_signing_bytes`].
pub const TASK_SIGNING_PREFIX: &[u8] = b"probermesh task v2\0";

/// The canonical bytes an operator signs with ed25519 for a task (and an agent verifies):
/// [`TASK_SIGNING_PREFIX`] (`probermesh task v2` and a NUL byte), then the postcard encoding
/// of the tuple `(id: u64, command: str, timeout_ms: u64, output_limit_bytes: u32,
/// expires_at_ms: u64, region_op: str, region_pattern: str)` with exactly the values the v2
/// `Task` message carries. The signature itself is not part of them.
#[must_use]
pub fn task_signing_bytes(task: &TaskSpec) -> Vec<u8> {
    let fields = (
        task.id,
        task.command.as_str(),
        duration_millis(task.timeout),
        v2::output_limit_on_wire(task.output_limit_bytes),
        task.expires_at.as_millis(),
        task.region_op.as_str(),
        task.region_pattern.as_str(),
    );
    postcard::to_extend(&fields, TASK_SIGNING_PREFIX.to_vec())
        .expect("integers and a string always serialise into a Vec")
}
