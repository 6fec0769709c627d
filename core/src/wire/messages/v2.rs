//! The v2 messages after the handshake, to and from the domain conversation
//! ([`crate::link`]). Coming in, every message is checked against its limits and every payload
//! goes through the validating conversions of [`crate::wire::convert`]; going out, free texts
//! are cut to their limits and anything else over a limit is an error (a peer would refuse it).

use std::sync::Arc;
use std::time::Duration;

use crate::link::{
    FromAgent, Signature, TaskOutput, TaskSpec, ToAgent, TraceHop, TraceProtocol, TraceReport,
    TraceRequest, UpgradePlan, UpgradeState,
};
use crate::model::setting::MAX_PEM_FILE_LEN;
use crate::model::time::{duration_millis, duration_nanos};
use crate::model::{AgentId, ProbeConfig, ProbeModule, UnixMillis};
use crate::wire::convert::{pool_into_domain, results_into_domain};
use crate::wire::v1::{ProbeConfigV1, ProbeResultV1, WireSecret};
use crate::wire::v2::{
    AgentMessageV2, MAX_POOL_FILES, PoolFileV2, ServerMessageV2, TraceHopV2, TraceProtocolV2,
    UpgradeStateV2,
};
use crate::wire::{
    MAX_TASK_OUTPUT_LEN, MAX_TEXT_LEN, MAX_TRACE_HOPS, TASK_SIGNATURE_LEN, WireError, cut_to,
};

/// A v2 message from agent `source` as the domain message, validated (limits included).
///
/// # Errors
/// [`WireError::Invalid`] for a handshake message (`Hello`) after the handshake, for a field
/// over its limit, or for an invalid payload (naming the field, `results[3].target_region`).
pub fn from_agent_v2(message: AgentMessageV2, source: &AgentId) -> Result<FromAgent, WireError> {
    message.check_limits()?;
    Ok(match message {
        AgentMessageV2::Hello { .. } => {
            return Err(WireError::invalid("hello", "a second Hello"));
        }
        AgentMessageV2::Heartbeat { sent_at_ms } => FromAgent::Heartbeat {
            sent_at: UnixMillis(sent_at_ms),
        },
        AgentMessageV2::ResultBatch { seq, results } => FromAgent::Results {
            seq,
            results: results_into_domain(results, source)?,
        },
        AgentMessageV2::PoolRequest { known_revision } => FromAgent::PoolRequest { known_revision },
        AgentMessageV2::PoolRefused {
            revision,
            field,
            reason,
        } => FromAgent::PoolRefused {
            revision,
            field,
            reason,
        },
        AgentMessageV2::TaskResult {
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
        AgentMessageV2::UpgradeStatus {
            offer_id,
            version,
            state,
        } => FromAgent::UpgradeStatus {
            offer_id,
            version,
            state: match state {
                UpgradeStateV2::Downloading { received_bytes } => {
                    UpgradeState::Downloading { received_bytes }
                }
                UpgradeStateV2::Verified => UpgradeState::Verified,
                UpgradeStateV2::Applied => UpgradeState::Applied,
                UpgradeStateV2::Failed { reason } => UpgradeState::Failed { reason },
                UpgradeStateV2::Committed => UpgradeState::Committed,
                UpgradeStateV2::RolledBack { reason } => UpgradeState::RolledBack { reason },
            },
        },
        AgentMessageV2::ChunkRequest { offer_id, offset } => {
            FromAgent::ChunkRequest { offer_id, offset }
        }
        AgentMessageV2::TraceResult {
            trace_id,
            target,
            hops,
            error,
        } => FromAgent::TraceResult(TraceReport {
            id: trace_id,
            target: target.into(),
            hops: hops.into_iter().map(TraceHop::from).collect(),
            error,
        }),
        AgentMessageV2::TaskRefused { task_id, reason } => {
            FromAgent::TaskRefused { task_id, reason }
        }
    })
}

/// The v2 message for a domain message from an agent. Texts (the refused field and reason,
/// upgrade reasons, a trace's error) are cut to `MAX_TEXT_LEN`, task output to
/// `MAX_TASK_OUTPUT_LEN` (marking it truncated) and a trace to `MAX_TRACE_HOPS` hops.
///
/// # Errors
/// [`WireError::Invalid`] for what a server would refuse and cannot be cut: a batch of more
/// than `MAX_RESULTS_PER_BATCH` results, an upgrade version over `MAX_TEXT_LEN`.
pub fn to_server_v2(message: &FromAgent) -> Result<AgentMessageV2, WireError> {
    let text = |text: &str| cut_to(text.to_owned(), MAX_TEXT_LEN);
    let message = match message {
        FromAgent::Heartbeat { sent_at } => AgentMessageV2::Heartbeat {
            sent_at_ms: sent_at.as_millis(),
        },
        FromAgent::Results { seq, results } => AgentMessageV2::ResultBatch {
            seq: *seq,
            results: results.iter().map(ProbeResultV1::from).collect(),
        },
        FromAgent::PoolRequest { known_revision } => AgentMessageV2::PoolRequest {
            known_revision: *known_revision,
        },
        FromAgent::PoolRefused {
            revision,
            field,
            reason,
        } => AgentMessageV2::PoolRefused {
            revision: *revision,
            field: text(field),
            reason: text(reason),
        },
        FromAgent::TaskResult { task_id, output } => {
            let cut = |bytes: &[u8]| bytes[..bytes.len().min(MAX_TASK_OUTPUT_LEN)].to_vec();
            AgentMessageV2::TaskResult {
                task_id: *task_id,
                exit_code: output.exit_code,
                timed_out: output.timed_out,
                stdout: cut(&output.stdout),
                stderr: cut(&output.stderr),
                truncated: output.truncated
                    || output.stdout.len() > MAX_TASK_OUTPUT_LEN
                    || output.stderr.len() > MAX_TASK_OUTPUT_LEN,
                duration_ms: duration_millis(output.duration),
            }
        }
        FromAgent::TaskRefused { task_id, reason } => AgentMessageV2::TaskRefused {
            task_id: *task_id,
            reason: text(reason),
        },
        FromAgent::UpgradeStatus {
            offer_id,
            version,
            state,
        } => AgentMessageV2::UpgradeStatus {
            offer_id: *offer_id,
            version: version.clone(),
            state: match state {
                UpgradeState::Downloading { received_bytes } => UpgradeStateV2::Downloading {
                    received_bytes: *received_bytes,
                },
                UpgradeState::Verified => UpgradeStateV2::Verified,
                UpgradeState::Applied => UpgradeStateV2::Applied,
                UpgradeState::Failed { reason } => UpgradeStateV2::Failed {
                    reason: text(reason),
                },
                UpgradeState::Committed => UpgradeStateV2::Committed,
                UpgradeState::RolledBack { reason } => UpgradeStateV2::RolledBack {
                    reason: text(reason),
                },
            },
        },
        FromAgent::ChunkRequest { offer_id, offset } => AgentMessageV2::ChunkRequest {
            offer_id: *offer_id,
            offset: *offset,
        },
        FromAgent::TraceResult(report) => AgentMessageV2::TraceResult {
            trace_id: report.id,
            target: report.target.into(),
            hops: report
                .hops
                .iter()
                .take(MAX_TRACE_HOPS)
                .map(TraceHopV2::from)
                .collect(),
            error: report.error.as_deref().map(text),
        },
    };
    message.check_limits()?;
    Ok(message)
}

/// The v2 message for a domain message to an agent.
///
/// # Errors
/// [`WireError::Invalid`] naming the field for what an agent would refuse: a command over
/// `MAX_COMMAND_LEN`, an output limit over `MAX_TASK_OUTPUT_LEN`, an upgrade version or
/// signature over `MAX_TEXT_LEN`, a chunk over `MAX_CHUNK_LEN`, a trace's `max_hops` or
/// `rounds` out of range. None of these is cut: a cut command or signature would be another.
pub fn to_agent_v2(message: &ToAgent) -> Result<ServerMessageV2, WireError> {
    let message = match message {
        ToAgent::Pool { revision, configs } => ServerMessageV2::TargetPool {
            revision: *revision,
            configs: configs.iter().map(ProbeConfigV1::from).collect(),
            files: pool_files(configs)?,
        },
        ToAgent::Ack { seq } => ServerMessageV2::Ack { seq: *seq },
        ToAgent::Task(task) => ServerMessageV2::Task {
            task_id: task.id,
            command: task.command.clone(),
            timeout_ms: duration_millis(task.timeout),
            output_limit_bytes: output_limit_on_wire(task.output_limit_bytes),
            expires_at_ms: task.expires_at.as_millis(),
            region_op: task.region_op.as_str().to_owned(),
            region_pattern: task.region_pattern.clone(),
            signature: task.signature.map(|signature| signature.0.to_vec()),
        },
        ToAgent::UpgradeOffer { offer_id, plan } => ServerMessageV2::UpgradeOffer {
            offer_id: *offer_id,
            version: plan.version.clone(),
            size_bytes: plan.size_bytes,
            sha256: plan.sha256,
            signature: plan.signature.clone(),
            force: plan.force,
        },
        ToAgent::BinaryChunk {
            offer_id,
            offset,
            bytes,
        } => ServerMessageV2::BinaryChunk {
            offer_id: *offer_id,
            offset: *offset,
            bytes: bytes.to_vec(),
        },
        ToAgent::Trace(request) => ServerMessageV2::Trace {
            trace_id: request.id,
            target: request.target.into(),
            protocol: request.protocol.into(),
            max_hops: request.max_hops,
            rounds: request.rounds,
        },
    };
    message.check_limits()?;
    Ok(message)
}

/// A v2 message from the server as the domain message, validated (limits included; a pool
/// through [`pool_into_domain`]).
///
/// # Errors
/// [`WireError::Invalid`] for a handshake message (`Welcome`, `Refused`) after the handshake,
/// for a field over its limit or out of range (a task signature that is not 64 bytes, a trace
/// of 0 hops), or for an invalid pool (naming the field, `configs[2].http.method`).
pub fn from_server_v2(message: ServerMessageV2) -> Result<ToAgent, WireError> {
    message.check_limits()?;
    Ok(match message {
        ServerMessageV2::Welcome { .. } | ServerMessageV2::Refused { .. } => {
            return Err(WireError::invalid(
                "message",
                "a handshake message after the handshake",
            ));
        }
        ServerMessageV2::TargetPool {
            revision,
            configs,
            files,
        } => ToAgent::Pool {
            revision,
            configs: Arc::new(pool_v2_into_domain(configs, files)?),
        },
        ServerMessageV2::Ack { seq } => ToAgent::Ack { seq },
        ServerMessageV2::Task {
            task_id,
            command,
            timeout_ms,
            output_limit_bytes,
            expires_at_ms,
            region_op,
            region_pattern,
            signature,
        } => ToAgent::Task(TaskSpec {
            id: task_id,
            command,
            timeout: Duration::from_millis(timeout_ms),
            output_limit_bytes: usize::try_from(output_limit_bytes).unwrap_or(usize::MAX),
            expires_at: UnixMillis(expires_at_ms),
            region_op: region_op
                .parse()
                .map_err(|_| WireError::invalid("task.region_op", "not =, !=, =~ or !~"))?,
            region_pattern,
            signature: signature
                .map(|bytes| {
                    <[u8; TASK_SIGNATURE_LEN]>::try_from(bytes.as_slice())
                        .map(Signature)
                        .map_err(|_| WireError::invalid("task.signature", "not 64 bytes"))
                })
                .transpose()?,
        }),
        ServerMessageV2::UpgradeOffer {
            offer_id,
            version,
            size_bytes,
            sha256,
            signature,
            force,
        } => ToAgent::UpgradeOffer {
            offer_id,
            plan: UpgradePlan {
                version,
                size_bytes,
                sha256,
                signature,
                force,
            },
        },
        ServerMessageV2::BinaryChunk {
            offer_id,
            offset,
            bytes,
        } => ToAgent::BinaryChunk {
            offer_id,
            offset,
            bytes: Arc::from(bytes),
        },
        ServerMessageV2::Trace {
            trace_id,
            target,
            protocol,
            max_hops,
            rounds,
        } => ToAgent::Trace(TraceRequest {
            id: trace_id,
            target: target.into(),
            protocol: protocol.into(),
            max_hops,
            rounds,
        }),
    })
}

/// A task's output limit as the wire carries it (`u32`, saturating: anything above
/// `MAX_TASK_OUTPUT_LEN` is refused anyway).
pub(crate) fn output_limit_on_wire(output_limit_bytes: usize) -> u32 {
    u32::try_from(output_limit_bytes).unwrap_or(u32::MAX)
}

impl From<TraceHopV2> for TraceHop {
    fn from(hop: TraceHopV2) -> Self {
        Self {
            ttl: hop.ttl,
            addr: hop.addr.map(Into::into),
            sent: hop.sent,
            received: hop.received,
            rtt_best: hop.rtt_best_ns.map(Duration::from_nanos),
            rtt_mean: hop.rtt_mean_ns.map(Duration::from_nanos),
            rtt_worst: hop.rtt_worst_ns.map(Duration::from_nanos),
            rtt_stddev: hop.rtt_stddev_ns.map(Duration::from_nanos),
        }
    }
}

impl From<&TraceHop> for TraceHopV2 {
    fn from(hop: &TraceHop) -> Self {
        Self {
            ttl: hop.ttl,
            addr: hop.addr.map(Into::into),
            sent: hop.sent,
            received: hop.received,
            rtt_best_ns: hop.rtt_best.map(duration_nanos),
            rtt_mean_ns: hop.rtt_mean.map(duration_nanos),
            rtt_worst_ns: hop.rtt_worst.map(duration_nanos),
            rtt_stddev_ns: hop.rtt_stddev.map(duration_nanos),
        }
    }
}

impl From<TraceProtocolV2> for TraceProtocol {
    fn from(protocol: TraceProtocolV2) -> Self {
        match protocol {
            TraceProtocolV2::Icmp => Self::Icmp,
            TraceProtocolV2::Udp => Self::Udp,
            TraceProtocolV2::Tcp => Self::Tcp,
        }
    }
}

impl From<TraceProtocol> for TraceProtocolV2 {
    fn from(protocol: TraceProtocol) -> Self {
        match protocol {
            TraceProtocol::Icmp => Self::Icmp,
            TraceProtocol::Udp => Self::Udp,
            TraceProtocol::Tcp => Self::Tcp,
        }
    }
}

/// The `tls_config` files a pool's blocks name, with the contents the server read, once per
/// path (a file named by many blocks travels once).
///
/// # Errors
/// [`WireError::Invalid`] for more than [`MAX_POOL_FILES`] files (the server refuses such a
/// probe file at load, so this is a bug guard).
fn pool_files(configs: &[ProbeConfig]) -> Result<Vec<PoolFileV2>, WireError> {
    let mut files: Vec<PoolFileV2> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for config in configs {
        let ProbeModule::Http(http) = &config.module else {
            continue;
        };
        for file in http.client.tls.files() {
            if let Some(contents) = file.contents()
                && seen.insert(file.path().to_owned())
            {
                files.push(PoolFileV2 {
                    path: file.path().to_owned(),
                    contents: WireSecret::new(contents.expose().to_owned()),
                });
            }
        }
    }
    if files.len() > MAX_POOL_FILES {
        return Err(WireError::invalid(
            "target_pool.files",
            format!("{} files; the limit is {MAX_POOL_FILES}", files.len()),
        ));
    }
    Ok(files)
}

/// A v2 pool as the domain pool: the configs validated, each `tls_config` file they name
/// given the contents the server sent.
///
/// # Errors
/// [`WireError::Invalid`] naming the field for an invalid config, too many files, a file over
/// [`MAX_PEM_FILE_LEN`], or a file named with no contents sent.
pub(crate) fn pool_v2_into_domain(
    configs: Vec<ProbeConfigV1>,
    files: Vec<PoolFileV2>,
) -> Result<Vec<ProbeConfig>, WireError> {
    if files.len() > MAX_POOL_FILES {
        return Err(WireError::invalid(
            "files",
            format!("{} files; the limit is {MAX_POOL_FILES}", files.len()),
        ));
    }
    let mut contents = std::collections::HashMap::with_capacity(files.len());
    for (index, file) in files.into_iter().enumerate() {
        if file.contents.expose().len() > MAX_PEM_FILE_LEN {
            return Err(WireError::invalid(
                format!("files[{index}].contents"),
                format!(
                    "{} bytes; the limit is {MAX_PEM_FILE_LEN} bytes (1 MiB)",
                    file.contents.expose().len()
                ),
            ));
        }
        // One shared copy per file, whatever the number of blocks naming it.
        contents.insert(
            file.path,
            crate::model::http_module::Secret::new(file.contents.expose().to_owned()),
        );
    }
    let mut configs = pool_into_domain(configs)?;
    for (config_index, config) in configs.iter_mut().enumerate() {
        let ProbeModule::Http(http) = &mut config.module else {
            continue;
        };
        if http.client.tls.files().next().is_none() {
            continue;
        }
        // Fresh from the conversion, so not shared: no copy is made.
        let http = Arc::make_mut(http);
        for (key, file) in http.client.tls.files_mut() {
            let Some(sent) = contents.get(file.path()) else {
                return Err(WireError::invalid(
                    format!("configs[{config_index}].http.{key}"),
                    format!(
                        "the server sent no contents for {:?} (an agent does not read files the server names)",
                        crate::model::setting::shorten(file.path())
                    ),
                ));
            };
            file.set_contents(sent.clone());
        }
    }
    Ok(configs)
}
