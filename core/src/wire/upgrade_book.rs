//! The upgrade record: what a server keeps in its store of the rollout under way, so that a
//! restarted server resumes it (the same batches, the same agents' states) instead of starting
//! it again or forgetting it. Like the task book, part of the compatibility promise: postcard
//! DTOs behind a magic and a format number; `fixtures/wire/v2/upgrade_book.hex` pins the bytes.
//! The binary itself is in the server's data directory, named by its SHA-256.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{IpAddrV1, MAX_TEXT_LEN, WireError, check_len};
use crate::matcher::RegionMatcher;
use crate::model::time::duration_millis;
use crate::model::{AgentId, Region, UnixMillis};
use crate::upgrade::MemberState;
use crate::upgrade::rollout::{BatchSize, Member, Phase, Release, Rollout, Strategy};

/// First bytes of every upgrade record.
pub const UPGRADE_BOOK_MAGIC: [u8; 8] = *b"PMUPGRD\0";
/// The format written after the magic (a big-endian `u16`).
pub const UPGRADE_BOOK_FORMAT: u16 = 1;
/// Agents a rollout record holds at most.
pub const MAX_ROLLOUT_MEMBERS: usize = 100_000;
/// Largest upgrade record, in bytes: 100,000 agents with reasons of up to 8 KiB would be more,
/// but a reason is a line; 64 MiB holds 100,000 agents with 600-byte reasons.
pub const MAX_UPGRADE_BOOK_BYTES: u64 = 64 * 1024 * 1024;

/// The body of an upgrade record.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct UpgradeBookV1 {
    /// The largest rollout id given so far.
    pub last_id: u64,
    /// The current or last rollout.
    pub rollout: Option<RolloutV1>,
}

/// One rollout.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct RolloutV1 {
    /// Its id.
    pub id: u64,
    /// The release's version.
    pub version: String,
    /// The release's length.
    pub size_bytes: u64,
    /// The release's SHA-256.
    pub sha256: [u8; 32],
    /// The release's signature text.
    pub signature: Option<String>,
    /// Where it came from.
    pub source: String,
    /// Whether it is forced.
    pub force: bool,
    /// Canaries.
    pub canary: u32,
    /// Batch size in agents (0 when a percentage is used).
    pub batch_agents: u32,
    /// Batch size as a percentage (0 when a count is used).
    pub batch_percent: u8,
    /// Failures tolerated.
    pub max_failures: u32,
    /// Soak per batch, in milliseconds.
    pub soak_ms: u64,
    /// The region operator, when regions were selected.
    pub region_op: Option<String>,
    /// The region pattern.
    pub region_pattern: String,
    /// Who started it.
    pub actor: String,
    /// From where.
    pub remote: String,
    /// When, in Unix milliseconds.
    pub started_at_ms: u64,
    /// The phase's label.
    pub phase: String,
    /// Why it halted.
    pub halt_reason: Option<String>,
    /// When it finished, in Unix milliseconds.
    pub finished_at_ms: Option<u64>,
    /// Batches started.
    pub batches_started: u32,
    /// When the last batch settled, in Unix milliseconds.
    pub batch_settled_at_ms: Option<u64>,
    /// Its agents.
    pub members: Vec<MemberV1>,
}

/// One agent of a rollout.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct MemberV1 {
    /// The agent's region.
    pub region: String,
    /// The agent's address.
    pub ip: IpAddrV1,
    /// Its state's label.
    pub state: String,
    /// The version it ran.
    pub from_version: String,
    /// Why it was skipped, failed or rolled back.
    pub reason: Option<String>,
    /// Its batch.
    pub batch: Option<u32>,
    /// Bytes it had.
    pub received_bytes: u64,
    /// When its state last moved, in Unix milliseconds.
    pub updated_at_ms: u64,
    /// Its place in the order.
    pub order: u64,
}

/// The record of a desk with `last_id` and `rollout`.
#[must_use]
pub fn encode(last_id: u64, rollout: Option<&Rollout>) -> Vec<u8> {
    let body = UpgradeBookV1 {
        last_id,
        rollout: rollout.map(|r| {
            let (batch_agents, batch_percent) = match r.strategy.batch {
                BatchSize::Agents(n) => (n, 0),
                BatchSize::Percent(p) => (0, p),
            };
            RolloutV1 {
                id: r.id,
                version: r.release.version.to_string(),
                size_bytes: r.release.size_bytes,
                sha256: r.release.sha256,
                signature: r.release.signature.clone(),
                source: r.release.source.clone(),
                force: r.force,
                canary: r.strategy.canary,
                batch_agents,
                batch_percent,
                max_failures: r.strategy.max_failures,
                soak_ms: duration_millis(r.strategy.soak),
                region_op: r.regions.as_ref().map(|m| m.op().as_str().to_owned()),
                region_pattern: r
                    .regions
                    .as_ref()
                    .map(|m| m.pattern().to_owned())
                    .unwrap_or_default(),
                actor: r.actor.clone(),
                remote: r.remote.clone(),
                started_at_ms: r.started_at.as_millis(),
                phase: r.phase.label().to_owned(),
                halt_reason: match &r.phase {
                    Phase::Halted { reason } => Some(reason.clone()),
                    _ => None,
                },
                finished_at_ms: r.finished_at.map(UnixMillis::as_millis),
                batches_started: r.batches_started,
                batch_settled_at_ms: r.batch_settled_at.map(UnixMillis::as_millis),
                members: r
                    .members
                    .iter()
                    .map(|(agent, m)| MemberV1 {
                        region: agent.region.as_str().to_owned(),
                        ip: agent.ip.into(),
                        state: m.state.label().to_owned(),
                        from_version: m.from_version.clone(),
                        reason: m.reason.clone(),
                        batch: m.batch,
                        received_bytes: m.received_bytes,
                        updated_at_ms: m.updated_at.as_millis(),
                        order: m.order,
                    })
                    .collect(),
            }
        }),
    };
    let mut bytes = UPGRADE_BOOK_MAGIC.to_vec();
    bytes.extend(UPGRADE_BOOK_FORMAT.to_be_bytes());
    postcard::to_extend(&body, bytes).unwrap_or_default()
}

/// The last id and the rollout a record holds, validated.
///
/// # Errors
/// [`WireError`] for another magic or format, undecodable bytes, or a field that is wrong or
/// over its limit (naming it, `rollout.members[2].state`).
pub fn decode(bytes: &[u8]) -> Result<(u64, Option<Rollout>), WireError> {
    let Some(body) = bytes.strip_prefix(&UPGRADE_BOOK_MAGIC[..]) else {
        return Err(WireError::invalid("upgrade_book", "not an upgrade record"));
    };
    let format = body
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| WireError::invalid("upgrade_book", "no format number"))?;
    if format != UPGRADE_BOOK_FORMAT {
        return Err(WireError::invalid(
            "upgrade_book",
            format!("format {format}, this server reads format {UPGRADE_BOOK_FORMAT}"),
        ));
    }
    let book: UpgradeBookV1 = postcard::from_bytes(&body[2..])
        .map_err(|e| WireError::invalid("upgrade_book", format!("undecodable: {e}")))?;
    let Some(r) = book.rollout else {
        return Ok((book.last_id, None));
    };
    let bad = |field: &str, why: String| WireError::invalid(format!("rollout.{field}"), why);
    check_len("rollout.members", r.members.len(), MAX_ROLLOUT_MEMBERS)?;
    for (name, len) in [
        ("version", r.version.len()),
        ("source", r.source.len()),
        ("region_pattern", r.region_pattern.len()),
        ("actor", r.actor.len()),
        ("remote", r.remote.len()),
        ("signature", r.signature.as_ref().map_or(0, String::len)),
        ("halt_reason", r.halt_reason.as_ref().map_or(0, String::len)),
    ] {
        check_len(&format!("rollout.{name}"), len, MAX_TEXT_LEN)?;
    }
    let version = r
        .version
        .parse()
        .map_err(|e: crate::upgrade::version::VersionError| bad("version", e.to_string()))?;
    let batch = match (r.batch_agents, r.batch_percent) {
        (n @ 1.., 0) => BatchSize::Agents(n),
        (0, p @ 1..=100) => BatchSize::Percent(p),
        _ => return Err(bad("batch", "neither a count nor a percentage".into())),
    };
    let regions = r
        .region_op
        .map(|op| RegionMatcher::new(&op, &r.region_pattern))
        .transpose()
        .map_err(|e| bad("region_op", e.to_string()))?;
    let phase = match (r.phase.as_str(), r.halt_reason) {
        ("running", _) => Phase::Running,
        ("paused", _) => Phase::Paused,
        ("halted", reason) => Phase::Halted {
            reason: reason.unwrap_or_default(),
        },
        ("aborted", _) => Phase::Aborted,
        ("completed", _) => Phase::Completed,
        (other, _) => return Err(bad("phase", format!("{other:?} is not a phase"))),
    };
    let mut members = BTreeMap::new();
    for (i, m) in r.members.into_iter().enumerate() {
        let field = |name: &str| format!("members[{i}].{name}");
        let region = Region::new(&m.region).map_err(|e| bad(&field("region"), e.to_string()))?;
        let state = MemberState::ALL
            .into_iter()
            .find(|s| s.label() == m.state)
            .ok_or_else(|| bad(&field("state"), format!("{:?} is not a state", m.state)))?;
        check_len(
            &format!("rollout.{}", field("from_version")),
            m.from_version.len(),
            MAX_TEXT_LEN,
        )?;
        check_len(
            &format!("rollout.{}", field("reason")),
            m.reason.as_ref().map_or(0, String::len),
            MAX_TEXT_LEN,
        )?;
        members.insert(
            AgentId::new(region, m.ip.into()),
            Member {
                state,
                from_version: m.from_version,
                reason: m.reason,
                batch: m.batch,
                received_bytes: m.received_bytes,
                updated_at: UnixMillis(m.updated_at_ms),
                order: m.order,
            },
        );
    }
    Ok((
        book.last_id,
        Some(Rollout {
            id: r.id,
            release: Release {
                version,
                size_bytes: r.size_bytes,
                sha256: r.sha256,
                signature: r.signature,
                source: r.source,
            },
            force: r.force,
            strategy: Strategy {
                canary: r.canary,
                batch,
                max_failures: r.max_failures,
                soak: Duration::from_millis(r.soak_ms),
            },
            regions,
            actor: r.actor,
            remote: r.remote,
            started_at: UnixMillis(r.started_at_ms),
            phase,
            finished_at: r.finished_at_ms.map(UnixMillis),
            batches_started: r.batches_started,
            batch_settled_at: r.batch_settled_at_ms.map(UnixMillis),
            members,
        }),
    ))
}
