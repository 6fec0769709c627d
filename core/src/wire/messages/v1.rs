//! The v1 messages after the handshake, to and from the domain conversation
//! ([`crate::link`]). Coming in, every payload goes through the validating conversions of
//! [`crate::wire::convert`]; going out fails only for what v1 cannot carry.

use std::time::Duration;

use crate::link::{FromAgent, TaskOutput, ToAgent, UpgradeState};
use crate::model::time::duration_millis;
use crate::model::{AgentId, UnixMillis};
use crate::wire::convert::{pool_into_domain, results_into_domain};
use crate::wire::v1::{AgentMessage, ProbeConfigV1, ProbeResultV1, ServerMessage, UpgradeStateV1};
use crate::wire::{MAX_TEXT_LEN, WireError, cut_to};

/// A v1 message from agent `source` as the domain message, validated.
///
/// # Errors
/// [`WireError::Invalid`] for a handshake message (`Hello`) after the handshake, or for an
/// invalid payload (naming the field, `results[3].target_region`).
pub fn from_agent_v1(message: AgentMessage, source: &AgentId) -> Result<FromAgent, WireError> {
    Ok(match message {
        AgentMessage::Hello { .. } => {
            return Err(WireError::invalid("hello", "a second Hello"));
        }
        AgentMessage::Heartbeat { sent_at_ms } => FromAgent::Heartbeat {
            sent_at: UnixMillis(sent_at_ms),
        },
        AgentMessage::ResultBatch { seq, results } => FromAgent::Results {
            seq,
            results: results_into_domain(results, source)?,
        },
        AgentMessage::PoolRequest { known_revision } => FromAgent::PoolRequest { known_revision },
        AgentMessage::PoolRefused {
            revision,
            field,
            reason,
        } => FromAgent::PoolRefused {
            revision,
            field,
            reason,
        },
        AgentMessage::TaskResult {
            task_id,
            exit_code,
            timed_out,
            stdout,
            stderr,
            truncated,
            duration_ms,
        } => FromAgent::TaskResult {
            task_id,
            output: TaskOutput {
                exit_code,
                stdout,
                stderr,
                truncated,
                timed_out,
                duration: Duration::from_millis(duration_ms),
            },
        },
        AgentMessage::UpgradeStatus {
            offer_id,
            version,
            state,
        } => FromAgent::UpgradeStatus {
            offer_id,
            version,
            state: match state {
                UpgradeStateV1::Downloading => UpgradeState::Downloading { received_bytes: 0 },
                UpgradeStateV1::Verified => UpgradeState::Verified,
                UpgradeStateV1::Applied => UpgradeState::Applied,
                UpgradeStateV1::Failed { reason } => UpgradeState::Failed { reason },
            },
        },
    })
}

/// The error for a message protocol v1 cannot carry.
fn not_in_v1(kind: &str) -> WireError {
    WireError::invalid(kind, "not part of protocol v1 (the peer speaks v1 only)")
}

/// The v1 message for a domain message from an agent.
///
/// # Errors
/// [`WireError::Invalid`] for a message only v2 carries (a chunk request, a trace result,
/// an upgrade state v1 has no word for).
pub fn to_server_v1(message: &FromAgent) -> Result<AgentMessage, WireError> {
    Ok(match message {
        FromAgent::Heartbeat { sent_at } => AgentMessage::Heartbeat {
            sent_at_ms: sent_at.as_millis(),
        },
        FromAgent::Results { seq, results } => AgentMessage::ResultBatch {
            seq: *seq,
            results: results.iter().map(ProbeResultV1::from).collect(),
        },
        FromAgent::PoolRequest { known_revision } => AgentMessage::PoolRequest {
            known_revision: *known_revision,
        },
        FromAgent::PoolRefused {
            revision,
            field,
            reason,
        } => AgentMessage::PoolRefused {
            revision: *revision,
            field: cut_to(field.clone(), MAX_TEXT_LEN),
            reason: cut_to(reason.clone(), MAX_TEXT_LEN),
        },
        FromAgent::TaskResult { task_id, output } => AgentMessage::TaskResult {
            task_id: *task_id,
            exit_code: output.exit_code,
            timed_out: output.timed_out,
            stdout: output.stdout.clone(),
            stderr: output.stderr.clone(),
            truncated: output.truncated,
            duration_ms: duration_millis(output.duration),
        },
        FromAgent::UpgradeStatus {
            offer_id,
            version,
            state,
        } => AgentMessage::UpgradeStatus {
            offer_id: *offer_id,
            version: version.clone(),
            state: match state {
                UpgradeState::Downloading { .. } => UpgradeStateV1::Downloading,
                UpgradeState::Verified => UpgradeStateV1::Verified,
                UpgradeState::Applied => UpgradeStateV1::Applied,
                UpgradeState::Failed { reason } => UpgradeStateV1::Failed {
                    reason: reason.clone(),
                },
                UpgradeState::Committed | UpgradeState::RolledBack { .. } => {
                    return Err(not_in_v1("upgrade_status.state"));
                }
            },
        },
        FromAgent::ChunkRequest { .. }
        | FromAgent::TraceResult(_)
        | FromAgent::TaskRefused { .. } => {
            return Err(not_in_v1(message.kind()));
        }
    })
}

/// The v1 message for a domain message to an agent.
///
/// # Errors
/// [`WireError::Invalid`] for a message only v2 carries: tasks, upgrades, chunks and traces
/// (v1 has `Task` and `UpgradeOffer` variants, but no v1 agent ever acted on them, and they
/// lack the expiry, signature and size v2 requires).
pub fn to_agent_v1(message: &ToAgent) -> Result<ServerMessage, WireError> {
    Ok(match message {
        ToAgent::Pool { revision, configs } => ServerMessage::TargetPool {
            revision: *revision,
            configs: configs.iter().map(ProbeConfigV1::from).collect(),
        },
        ToAgent::Ack { seq } => ServerMessage::Ack { seq: *seq },
        ToAgent::Task(_)
        | ToAgent::UpgradeOffer { .. }
        | ToAgent::BinaryChunk { .. }
        | ToAgent::Trace(_) => return Err(not_in_v1(message.kind())),
    })
}

/// A v1 message from the server as the domain message, validated (a pool through
/// [`pool_into_domain`]).
///
/// # Errors
/// [`WireError::Invalid`] for a handshake message (`Welcome`, `Refused`) after the handshake,
/// or for an invalid pool (naming the field, `configs[2].http.method`).
pub fn from_server_v1(message: ServerMessage) -> Result<ToAgent, WireError> {
    Ok(match message {
        ServerMessage::Welcome { .. } | ServerMessage::Refused { .. } => {
            return Err(WireError::invalid(
                "message",
                "a handshake message after the handshake",
            ));
        }
        ServerMessage::TargetPool { revision, configs } => ToAgent::Pool {
            revision,
            configs: std::sync::Arc::new(pool_into_domain(configs)?),
        },
        ServerMessage::Ack { seq } => ToAgent::Ack { seq },
        ServerMessage::Task { .. } | ServerMessage::UpgradeOffer { .. } => {
            return Err(not_in_v1(message_kind_v1(&message)));
        }
    })
}

fn message_kind_v1(message: &ServerMessage) -> &'static str {
    match message {
        ServerMessage::Welcome { .. } => "welcome",
        ServerMessage::Refused { .. } => "refused",
        ServerMessage::TargetPool { .. } => "target_pool",
        ServerMessage::Ack { .. } => "ack",
        ServerMessage::Task { .. } => "task",
        ServerMessage::UpgradeOffer { .. } => "upgrade_offer",
    }
}
