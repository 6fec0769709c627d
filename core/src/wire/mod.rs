//! The agent↔server protocol: the only serde boundary of ProberMesh (an **API Boundary**).
//!
//! Agents and servers of different versions meet in the field, so the bytes defined here are a
//! compatibility promise, pinned by the golden files in `fixtures/wire/v1/` and
//! `fixtures/wire/v2/`.
//!
//! - [`v1`]: the v1 message types ([`AgentMessage`], [`ServerMessage`]) and the DTOs they carry.
//!   They are separate from the domain types in [`crate::model`], which never derive serde.
//! - [`v2`]: the v2 message types ([`AgentMessageV2`], [`ServerMessageV2`]); they carry v1's
//!   payload DTOs.
//! - [`hello`]: the handshake ([`Hello`], [`Welcome`], refusals), whatever the version:
//!   [`decode_hello`] reads the version a hello offers before decoding it.
//! - [`frame`]: a frame is a 4-byte big-endian body length followed by a postcard body;
//!   [`encode_frame`] writes one, [`FrameDecoder`] splits a byte stream into messages.
//! - [`handoff`]: the file a gracefully stopping server leaves for the next one (the results of
//!   its unsettled windows), in v1 DTOs.
//! - [`borrowed`]: a `ResultBatch` read in place (strings borrowed from the frame, the
//!   histogram in a fixed array), the same bytes as the owned messages; the server's
//!   [`decode_from_agent`] reads batches this way.
//! - [`convert`]: conversions between DTOs and domain types. Going out (`From<&Domain>`) cannot
//!   fail; coming in (`into_domain`) validates everything, because the bytes come from the network.
//! - [`messages`]: whole messages after the handshake, to and from the domain conversation
//!   ([`crate::link`]), per version ([`from_agent_v1`], [`to_agent_v2`], …) and dispatching on
//!   the version of the connection ([`encode_to_agent`], [`decode_from_agent`],
//!   [`encode_to_server`], [`decode_from_server`]), so the adapters never match on versions.
//!
//! # Versions
//! A connection speaks one [`ProtocolVersion`], chosen by the agent's hello: the agent offers
//! the newest it speaks, and a server that speaks it answers in it (`docs/wire.md`, Versions and
//! negotiation). The first two fields of every version's `Hello` (variant index 0, then the
//! `u16` protocol version) are frozen forever.
//!
//! # Evolving the protocol
//! postcard is not self-describing: a message is its fields in order, an enum is its variant
//! index. So every version's message enums are closed:
//! - never reorder, remove or change the type of a field or variant;
//! - a change of a message is a new protocol version: a new module (`v3`) with new message
//!   enums that keep the unchanged variants at their index, a new [`ProtocolVersion`] variant,
//!   and conversions beside the others in [`messages`]; payload DTOs are shared while they
//!   do not change;
//! - a new optional behaviour within a version is a feature name, not a version;
//! - regenerate the golden files (`UPDATE_GOLDEN=1`, see `fixtures/wire/README.md`) only for a
//!   new version's new files; a changed golden file of a released version means a broken promise.
//!
//! # Receiving
//! Cut frames out of the stream with [`FrameDecoder::next_body`], read the first one with
//! [`decode_hello`] (server) or [`decode_answer`] (agent), and every later one with
//! [`decode_from_agent`] / [`decode_from_server`] in the version of the connection: they
//! decode, call `check_limits` and convert the payload with the `into_domain` functions of
//! [`convert`]. Each step returns a [`WireError`] naming the offending field.

pub mod borrowed;
pub mod convert;
pub mod frame;
pub mod handoff;
pub mod hello;
pub mod messages;
pub mod task_book;
pub mod upgrade_book;
pub mod v1;
pub mod v2;

#[cfg(test)]
mod tests;

pub use convert::{pool_into_domain, results_into_domain};
pub use frame::{
    DEFAULT_MAX_FRAME_LEN, FrameDecoder, LEN_PREFIX_BYTES, decode_frame, decode_frame_borrowed,
    encode_frame, encode_result_batch_frame,
};
pub use handoff::{OpenWindows, decode_open_windows, encode_open_windows};
pub use hello::{
    Answer, Hello, HelloError, Welcome, capabilities, decode_answer, decode_hello, encode_hello,
    encode_refused, encode_welcome,
};
pub use messages::{
    FromServerError, TASK_SIGNING_PREFIX, decode_from_agent, decode_from_server, encode_to_agent,
    encode_to_server, from_agent_v1, from_agent_v2, from_server_v1, from_server_v2,
    task_signing_bytes, to_agent_v1, to_agent_v2, to_server_v1, to_server_v2,
};
pub use v1::{
    AgentMessage, BasicAuthV1, CompressionV1, HeaderMatchV1, HeaderV1, HttpClientConfigV1,
    HttpFailureV1, HttpModuleV1, HttpPhasesV1, HttpVersionV1, IcmpFailureV1, IcmpModuleV1,
    IpAddrV1, IpProtocolV1, OutcomeV1, ProbeConfigV1, ProbeKindV1, ProbeResultV1, RefusalV1,
    ResultBatchRef, RttSummaryV1, SecretSourceV1, ServerMessage, SocketAddrV1, TlsConfigV1,
    TlsInfoV1, TlsMinVersionV1, TlsVersionV1, UpgradeStateV1, WireSecret,
};
pub use v2::{
    AgentMessageV2, MAX_POOL_FILES, PoolFileV2, ServerMessageV2, TraceHopV2, TraceProtocolV2,
    UpgradeStateV2,
};

/// A protocol version this build speaks.
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub enum ProtocolVersion {
    /// Protocol v1: probing only (pools, results, acks).
    V1,
    /// Protocol v2: v1 plus features, tasks, upgrades over the link and traces.
    V2,
}

impl ProtocolVersion {
    /// The newest version this build speaks, the one an agent offers.
    pub const LATEST: Self = Self::V2;
    /// Every version this build speaks, oldest first.
    pub const ALL: [Self; 2] = [Self::V1, Self::V2];

    /// The number on the wire (`protocol_version` of `Hello` and `Welcome`).
    #[must_use]
    pub const fn as_u16(self) -> u16 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }

    /// The version with this number, if this build speaks it.
    #[must_use]
    pub const fn from_u16(number: u16) -> Option<Self> {
        match number {
            1 => Some(Self::V1),
            2 => Some(Self::V2),
            _ => None,
        }
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}", self.as_u16())
    }
}

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
/// Most features one hello or welcome names (v2).
pub const MAX_FEATURES: usize = 32;
/// Longest feature name, in bytes (v2).
pub const MAX_FEATURE_LEN: usize = 64;
/// Longest `BinaryChunk`, in bytes: 1 MiB (v2).
pub const MAX_CHUNK_LEN: usize = 1024 * 1024;
/// Most hops in one `TraceResult` (one per TTL) (v2).
pub const MAX_TRACE_HOPS: usize = 255;
/// Highest `max_hops` of a `Trace` (v2); the lowest is 1.
pub const MAX_TRACE_TTL: u8 = 64;
/// Most `rounds` of a `Trace` (v2); the fewest is 1.
pub const MAX_TRACE_ROUNDS: u16 = 1000;
/// Bytes of a task's ed25519 signature (v2).
pub const TASK_SIGNATURE_LEN: usize = 64;

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

/// An error naming `field` unless `value` is within `min..=max`.
fn check_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), WireError> {
    if value < min || value > max {
        return Err(WireError::invalid(
            field,
            format!("{value} is outside {min}..={max}"),
        ));
    }
    Ok(())
}

/// Checks a feature list: at most [`MAX_FEATURES`] names of at most [`MAX_FEATURE_LEN`] bytes.
pub(crate) fn check_features(field: &str, features: &[String]) -> Result<(), WireError> {
    check_len(field, features.len(), MAX_FEATURES)?;
    for (i, feature) in features.iter().enumerate() {
        check_len(&format!("{field}[{i}]"), feature.len(), MAX_FEATURE_LEN)?;
    }
    Ok(())
}

impl AgentMessageV2 {
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
                features,
                ..
            } => {
                check_len("hello.agent_version", agent_version.len(), MAX_TEXT_LEN)?;
                check_len("hello.region", region.len(), MAX_TEXT_LEN)?;
                check_len("hello.token", token.expose().len(), MAX_TEXT_LEN)?;
                check_features("hello.features", features)
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
                    UpgradeStateV2::Failed { reason } | UpgradeStateV2::RolledBack { reason } => {
                        check_len("upgrade_status.state.reason", reason.len(), MAX_TEXT_LEN)
                    }
                    UpgradeStateV2::Downloading { .. }
                    | UpgradeStateV2::Verified
                    | UpgradeStateV2::Applied
                    | UpgradeStateV2::Committed => Ok(()),
                }
            }
            Self::PoolRefused { field, reason, .. } => {
                check_len("pool_refused.field", field.len(), MAX_TEXT_LEN)?;
                check_len("pool_refused.reason", reason.len(), MAX_TEXT_LEN)
            }
            Self::TraceResult { hops, error, .. } => {
                check_len("trace_result.hops", hops.len(), MAX_TRACE_HOPS)?;
                match error {
                    Some(error) => check_len("trace_result.error", error.len(), MAX_TEXT_LEN),
                    None => Ok(()),
                }
            }
            Self::TaskRefused { reason, .. } => {
                check_len("task_refused.reason", reason.len(), MAX_TEXT_LEN)
            }
            Self::Heartbeat { .. } | Self::PoolRequest { .. } | Self::ChunkRequest { .. } => Ok(()),
        }
    }
}

impl ServerMessageV2 {
    /// Checks the size limits of the fields the agent keeps as text or bytes, and the ranges
    /// of the numbers an agent acts on (the pool is checked by [`pool_into_domain`]).
    ///
    /// # Errors
    /// [`WireError::Invalid`] naming the field that is too long or out of range.
    pub fn check_limits(&self) -> Result<(), WireError> {
        match self {
            Self::Welcome {
                server_version,
                features,
                ..
            } => {
                check_len("welcome.server_version", server_version.len(), MAX_TEXT_LEN)?;
                check_features("welcome.features", features)
            }
            Self::Refused {
                reason: RefusalV1::Other(text),
            } => check_len("refused.reason", text.len(), MAX_TEXT_LEN),
            Self::TargetPool { configs, .. } => {
                check_len("target_pool.configs", configs.len(), MAX_CONFIGS_PER_POOL)
            }
            Self::Task {
                command,
                output_limit_bytes,
                region_op,
                region_pattern,
                signature,
                ..
            } => {
                check_len("task.command", command.len(), MAX_COMMAND_LEN)?;
                check_len("task.region_op", region_op.len(), MAX_TEXT_LEN)?;
                check_len("task.region_pattern", region_pattern.len(), MAX_TEXT_LEN)?;
                check_len(
                    "task.output_limit_bytes",
                    usize::try_from(*output_limit_bytes).unwrap_or(usize::MAX),
                    MAX_TASK_OUTPUT_LEN,
                )?;
                match signature {
                    Some(signature) if signature.len() != TASK_SIGNATURE_LEN => {
                        Err(WireError::invalid(
                            "task.signature",
                            format!(
                                "length {} is not the {TASK_SIGNATURE_LEN} bytes of an ed25519 signature",
                                signature.len()
                            ),
                        ))
                    }
                    _ => Ok(()),
                }
            }
            Self::UpgradeOffer {
                version, signature, ..
            } => {
                check_len("upgrade_offer.version", version.len(), MAX_TEXT_LEN)?;
                match signature {
                    Some(text) => check_len("upgrade_offer.signature", text.len(), MAX_TEXT_LEN),
                    None => Ok(()),
                }
            }
            Self::BinaryChunk { bytes, .. } => {
                check_len("binary_chunk.bytes", bytes.len(), MAX_CHUNK_LEN)
            }
            Self::Trace {
                max_hops, rounds, ..
            } => {
                check_range("trace.max_hops", *max_hops, 1, MAX_TRACE_TTL)?;
                check_range("trace.rounds", *rounds, 1, MAX_TRACE_ROUNDS)
            }
            Self::Refused { .. } | Self::Ack { .. } => Ok(()),
        }
    }
}
