//! The v1 messages after the handshake, to and from the domain conversation
//! ([`crate::link`]). Coming in, every payload goes through the validating conversions of
//! [`super::convert`]; going out cannot fail.

use std::time::Duration;

use super::convert::{pool_into_domain, results_into_domain};
use super::v1::{AgentMessage, ProbeConfigV1, ProbeResultV1, ServerMessage, UpgradeStateV1};
use super::{MAX_TEXT_LEN, WireError, cut_to};
use crate::link::{FromAgent, ToAgent, UpgradeState};
use crate::model::time::duration_millis;
use crate::model::{AgentId, UnixMillis};
use crate::ports::{TaskOutput, TaskSpec, UpgradePlan};

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
                UpgradeStateV1::Downloading => UpgradeState::Downloading,
                UpgradeStateV1::Verified => UpgradeState::Verified,
                UpgradeStateV1::Applied => UpgradeState::Applied,
                UpgradeStateV1::Failed { reason } => UpgradeState::Failed { reason },
            },
        },
    })
}

/// The v1 message for a domain message from an agent.
#[must_use]
pub fn to_server_v1(message: &FromAgent) -> AgentMessage {
    match message {
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
                UpgradeState::Downloading => UpgradeStateV1::Downloading,
                UpgradeState::Verified => UpgradeStateV1::Verified,
                UpgradeState::Applied => UpgradeStateV1::Applied,
                UpgradeState::Failed { reason } => UpgradeStateV1::Failed {
                    reason: reason.clone(),
                },
            },
        },
    }
}

/// The v1 message for a domain message to an agent.
#[must_use]
pub fn to_agent_v1(message: &ToAgent) -> ServerMessage {
    match message {
        ToAgent::Pool { revision, configs } => ServerMessage::TargetPool {
            revision: *revision,
            configs: configs.iter().map(ProbeConfigV1::from).collect(),
        },
        ToAgent::Ack { seq } => ServerMessage::Ack { seq: *seq },
        ToAgent::Task(task) => ServerMessage::Task {
            task_id: task.id,
            command: task.command.clone(),
            timeout_ms: duration_millis(task.timeout),
            output_limit_bytes: u32::try_from(task.output_limit_bytes).unwrap_or(u32::MAX),
        },
        ToAgent::UpgradeOffer { offer_id, plan } => ServerMessage::UpgradeOffer {
            offer_id: *offer_id,
            version: plan.version.clone(),
            url: plan.url.clone(),
            sha256: plan.sha256,
        },
    }
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
        ServerMessage::Task {
            task_id,
            command,
            timeout_ms,
            output_limit_bytes,
        } => ToAgent::Task(TaskSpec {
            id: task_id,
            command,
            timeout: Duration::from_millis(timeout_ms),
            output_limit_bytes: usize::try_from(output_limit_bytes).unwrap_or(usize::MAX),
        }),
        ServerMessage::UpgradeOffer {
            offer_id,
            version,
            url,
            sha256,
        } => ToAgent::UpgradeOffer {
            offer_id,
            plan: UpgradePlan {
                version,
                url,
                sha256,
            },
        },
    })
}
