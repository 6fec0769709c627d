//! The agent↔server protocol: the only serde boundary of ProberMesh (an **API Boundary**).
//!
//! Agents and servers of different versions meet in the field, so the bytes defined here are a
//! compatibility promise, pinned by the golden files in `fixtures/wire/v1/`.
//!
//! - [`v1`]: the message types ([`AgentMessage`], [`ServerMessage`]) and the DTOs they carry.
//!   They are separate from the domain types in [`crate::model`], which never derive serde.
//! - [`frame`]: a frame is a 4-byte big-endian body length followed by a postcard body;
//!   [`encode_frame`] writes one, [`FrameDecoder`] splits a byte stream into messages.
//! - [`handoff`]: the file a gracefully stopping server leaves for the next one (the results of
//!   its unsettled windows), in v1 DTOs.
//! - [`convert`]: conversions between DTOs and domain types. Going out (`From<&Domain>`) cannot
//!   fail; coming in (`into_domain`) validates everything, because the bytes come from the network.
//! - [`messages`]: whole messages after the handshake, to and from the domain conversation
//!   ([`crate::link`]).
//!
//! # Evolving the protocol
//! postcard is not self-describing: a message is its fields in order, an enum is its variant
//! index. So both message enums are closed and only grow at the end:
//! - never reorder, remove or change the type of a field or variant;
//! - append new variants at the end of an enum and new fields at the end of a struct, and bump
//!   [`PROTOCOL_VERSION`] when you do (a peer speaking the old version cannot decode them);
//! - regenerate the golden files (`UPDATE_GOLDEN=1`, see `fixtures/wire/README.md`) only for a
//!   new version's new files; a changed v1 golden file means a broken promise.
//!
//! # Receiving
//! Decode with [`FrameDecoder`], call [`AgentMessage::check_limits`] /
//! [`ServerMessage::check_limits`] on the message, then convert its payload with the `into_domain`
//! functions of [`convert`]. Each step returns a [`WireError`] naming the offending field.

pub mod convert;
pub mod frame;
pub mod handoff;
pub mod messages;
pub mod v1;

#[cfg(test)]
mod tests;

pub use convert::{pool_into_domain, results_into_domain};
pub use frame::{
    DEFAULT_MAX_FRAME_LEN, FrameDecoder, LEN_PREFIX_BYTES, decode_frame, encode_frame,
    encode_result_batch_frame,
};
pub use handoff::{OpenWindows, decode_open_windows, encode_open_windows};
pub use messages::{from_agent_v1, from_server_v1, to_agent_v1, to_server_v1};
pub use v1::{
    AgentMessage, BasicAuthV1, CompressionV1, HeaderMatchV1, HeaderV1, HttpClientConfigV1,
    HttpFailureV1, HttpModuleV1, HttpPhasesV1, HttpVersionV1, IcmpFailureV1, IcmpModuleV1,
    IpAddrV1, IpProtocolV1, OutcomeV1, ProbeConfigV1, ProbeKindV1, ProbeResultV1, RefusalV1,
    ResultBatchRef, RttSummaryV1, SecretSourceV1, ServerMessage, SocketAddrV1, TlsConfigV1,
    TlsInfoV1, TlsMinVersionV1, TlsVersionV1, UpgradeStateV1, WireSecret,
};

/// The protocol version this build speaks, sent in `Hello` and `Welcome`.
pub const PROTOCOL_VERSION: u16 = 1;

/// Entries of `OutcomeV1::Icmp::histogram_counts`: the 19 finite buckets plus +Inf.
pub const HISTOGRAM_LEN: usize = crate::stats::BUCKET_COUNT + 1;

/// Most results in one `ResultBatch`.
pub const MAX_RESULTS_PER_BATCH: usize = 100_000;
/// Longest `Task` command, in bytes.
pub const MAX_COMMAND_LEN: usize = 64 * 1024;
// The limits of probe settings are the probe file's too: one definition, in `model::setting`.
pub use crate::model::setting::{
    MAX_CONFIGS_PER_POOL, MAX_LIST_LEN, MAX_REGEX_SIZE_BYTES, MAX_REQUEST_BODY_LEN,
    MAX_TARGETS_PER_CONFIG, MAX_TEXT_LEN,
};
/// Longest captured `TaskResult` output (stdout and stderr each), in bytes.
pub const MAX_TASK_OUTPUT_LEN: usize = 4 * 1024 * 1024;

/// Why bytes could not become a message, or a message could not become domain values.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum WireError {
    /// A frame body is longer than the receiver accepts (or than a `u32` can announce).
    #[error("frame body of {len} bytes exceeds the limit of {max_frame_len} bytes")]
    FrameTooLarge {
        /// The announced or encoded body length.
        len: u64,
        /// The limit in force.
        max_frame_len: usize,
    },
    /// The message could not be serialised.
    #[error("cannot encode message: {0}")]
    Encode(postcard::Error),
    /// The frame body is not a valid postcard message of the expected type.
    #[error("cannot decode frame: {0}")]
    Decode(postcard::Error),
    /// The frame body holds bytes after a complete message.
    #[error("frame holds {n_trailing} bytes after the message")]
    TrailingBytes {
        /// Bytes left over.
        n_trailing: usize,
    },
    /// A decoded message holds a value the protocol does not allow.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Path of the offending field, for example `configs[2].http.method`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl WireError {
    /// An [`WireError::Invalid`] for `field`.
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes the field path of an [`WireError::Invalid`] with `outer` (`results[3]` +
    /// `target` = `results[3].target`); other errors are returned unchanged.
    #[must_use]
    pub fn within(self, outer: &str) -> Self {
        match self {
            Self::Invalid { field, reason } => Self::Invalid {
                field: format!("{outer}.{field}"),
                reason,
            },
            other => other,
        }
    }
}

// === Limits of the messages ===

impl AgentMessage {
    /// Checks the size limits of the fields the server keeps as text or bytes (the probe
    /// results are checked by [`results_into_domain`]).
    ///
    /// # Errors
    /// [`WireError::Invalid`] naming the field that is too long.
    pub fn check_limits(&self) -> Result<(), WireError> {
        match self {
            Self::Hello {
                agent_version,
                region,
                token,
                ..
            } => {
                check_len("hello.agent_version", agent_version.len(), MAX_TEXT_LEN)?;
                check_len("hello.region", region.len(), MAX_TEXT_LEN)?;
                check_len("hello.token", token.expose().len(), MAX_TEXT_LEN)
            }
            Self::ResultBatch { results, .. } => {
                check_len("result_batch.results", results.len(), MAX_RESULTS_PER_BATCH)
            }
            Self::TaskResult { stdout, stderr, .. } => {
                check_len("task_result.stdout", stdout.len(), MAX_TASK_OUTPUT_LEN)?;
                check_len("task_result.stderr", stderr.len(), MAX_TASK_OUTPUT_LEN)
            }
            Self::UpgradeStatus { version, state, .. } => {
                check_len("upgrade_status.version", version.len(), MAX_TEXT_LEN)?;
                match state {
                    UpgradeStateV1::Failed { reason } => {
                        check_len("upgrade_status.state.reason", reason.len(), MAX_TEXT_LEN)
                    }
                    UpgradeStateV1::Downloading
                    | UpgradeStateV1::Verified
                    | UpgradeStateV1::Applied => Ok(()),
                }
            }
            Self::PoolRefused { field, reason, .. } => {
                check_len("pool_refused.field", field.len(), MAX_TEXT_LEN)?;
                check_len("pool_refused.reason", reason.len(), MAX_TEXT_LEN)
            }
            Self::Heartbeat { .. } | Self::PoolRequest { .. } => Ok(()),
        }
    }
}

/// `text` cut to at most `max_bytes` bytes, at a character boundary.
pub(crate) fn cut_to(mut text: String, max_bytes: usize) -> String {
    if text.len() > max_bytes {
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

impl ServerMessage {
    /// Checks the size limits of the fields the agent keeps as text (the pool is checked by
    /// [`pool_into_domain`]).
    ///
    /// # Errors
    /// [`WireError::Invalid`] naming the field that is too long.
    pub fn check_limits(&self) -> Result<(), WireError> {
        match self {
            Self::Welcome { server_version, .. } => {
                check_len("welcome.server_version", server_version.len(), MAX_TEXT_LEN)
            }
            Self::Refused {
                reason: RefusalV1::Other(text),
            } => check_len("refused.reason", text.len(), MAX_TEXT_LEN),
            Self::TargetPool { configs, .. } => {
                check_len("target_pool.configs", configs.len(), MAX_CONFIGS_PER_POOL)
            }
            Self::Task { command, .. } => check_len("task.command", command.len(), MAX_COMMAND_LEN),
            Self::UpgradeOffer { version, url, .. } => {
                check_len("upgrade_offer.version", version.len(), MAX_TEXT_LEN)?;
                check_len("upgrade_offer.url", url.len(), MAX_TEXT_LEN)
            }
            Self::Refused { .. } | Self::Ack { .. } => Ok(()),
        }
    }
}

/// An error naming `field` when `len` exceeds `max`.
pub(crate) fn check_len(field: &str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::invalid(
            field,
            format!("length {len} exceeds the limit of {max}"),
        ));
    }
    Ok(())
}
