//! The server's side of a self-upgrade: one staged rollout at a time, armed only by a POST
//! (the Go server offered its own version to every agent forever, spec §9). Canaries first,
//! then batches; a batch starts only when the one before it is settled (every agent of it
//! committed, rolled back, failed or skipped) and has soaked; more failures than the strategy
//! allows halt the rollout with the rest untouched. Sans-IO: the driver downloads and checks the
//! binary before [`UpgradeDesk::start`], serves the chunks this grants, and persists the bytes
//! of [`UpgradeDesk::to_record`] whenever [`UpgradeDesk::is_dirty`].
//!
//! An agent is identified by its [`AgentId`] (region and address), which survives its
//! restarts; its process (`instance`) tells the old process from the new one.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::MemberState;
use super::budget::ByteBudget;
use super::version::Version;
use crate::link::{ToAgent, UpgradePlan, UpgradeState};
use crate::matcher::RegionMatcher;
use crate::model::{AgentId, UnixMillis};

/// Bytes of the binary one [`ToAgent::BinaryChunk`] carries at most.
pub const CHUNK_LEN: u64 = 256 * 1024;

/// How many agents a batch takes.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum BatchSize {
    /// This many agents (at least 1).
    Agents(u32),
    /// This share of the rollout's agents, rounded up (at least 1).
    Percent(u8),
}

impl BatchSize {
    /// The batch's size in a rollout of `members` agents.
    #[must_use]
    pub fn of(self, members: usize) -> usize {
        match self {
            Self::Agents(n) => usize::try_from(n).unwrap_or(usize::MAX).max(1),
            Self::Percent(p) => (members * usize::from(p)).div_ceil(100).max(1),
        }
    }
}

impl fmt::Display for BatchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Agents(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for BatchSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Some(percent) = text.strip_suffix('%') {
            match percent.trim().parse::<u8>() {
                Ok(p @ 1..=100) => Ok(Self::Percent(p)),
                _ => Err(format!("{text:?}: a percentage is 1% to 100%")),
            }
        } else {
            match text.parse::<u32>() {
                Ok(n @ 1..) => Ok(Self::Agents(n)),
                _ => Err(format!(
                    "{text:?}: a batch is a number of agents (1 or more) or a percentage (25%)"
                )),
            }
        }
    }
}

/// How a rollout proceeds (the request's `strategy`; every field has a default).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Strategy {
    /// Agents upgraded first, alone (0: none).
    pub canary: u32,
    /// The size of each later batch.
    pub batch: BatchSize,
    /// Failures (rolled back or failed) tolerated; one more halts the rollout.
    pub max_failures: u32,
    /// How long a settled batch is watched before the next one starts.
    pub soak: Duration,
}

impl Default for Strategy {
    /// One canary, then batches of a quarter of the agents, halting at the first failure,
    /// 30 s of soak after each batch: a mesh of ten agents is through in about five batches.
    fn default() -> Self {
        Self {
            canary: 1,
            batch: BatchSize::Percent(25),
            max_failures: 0,
            soak: Duration::from_secs(30),
        }
    }
}

/// The server's limits on how long an agent may take.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct RolloutSettings {
    /// An agent offered the release must show progress (a chunk asked for, a status) at
    /// least this often until it restarts, or it has failed.
    pub progress_timeout: Duration,
    /// An agent that restarted must be back, committed (or report its rollback), within this.
    pub restart_timeout: Duration,
    /// The most bytes of releases sent per second over all agents (a token bucket with a
    /// burst of one second, at least one chunk); `None`: as fast as agents ask.
    pub max_bytes_per_second: Option<u64>,
}

impl Default for RolloutSettings {
    fn default() -> Self {
        Self {
            progress_timeout: Duration::from_secs(120),
            restart_timeout: Duration::from_secs(300),
            max_bytes_per_second: None,
        }
    }
}

/// The binary a rollout installs, as the server downloaded and checked it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Release {
    /// The version it must report.
    pub version: Version,
    /// Its length.
    pub size_bytes: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// Its signature text (minisign or bare ed25519), passed on to agents that pin a key.
    pub signature: Option<String>,
    /// Where the server downloaded it from (userinfo and query removed), for the view.
    pub source: String,
}

/// A rollout as an operator asked for it.
#[derive(Clone, Debug)]
pub struct RolloutRequest {
    /// What to install.
    pub release: Release,
    /// Install on agents that run the same or a newer version too (once each).
    pub force: bool,
    /// How.
    pub strategy: Strategy,
    /// Which agents (by region); `None`: all.
    pub regions: Option<RegionMatcher>,
    /// Who asked (the credential's identity).
    pub actor: String,
    /// From where.
    pub remote: String,
}

/// A connected agent, as its handshake described it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Candidate {
    /// The agent.
    pub agent: AgentId,
    /// The version it runs.
    pub version: String,
    /// Its process.
    pub instance: u64,
    /// The connection's protocol version.
    pub protocol_version: u16,
    /// Whether it named the `upgrade` feature (`-agent.upgrade`).
    pub takes_upgrades: bool,
}

/// One agent of a rollout.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Member {
    /// Where it stands.
    pub state: MemberState,
    /// The version it ran when it joined the rollout.
    pub from_version: String,
    /// Why it was skipped, failed or rolled back.
    pub reason: Option<String>,
    /// Its batch (0 is the canaries when there are any), once it was offered the release.
    pub batch: Option<u32>,
    /// Bytes of the binary it said it has.
    pub received_bytes: u64,
    /// When its state last moved (or it last showed progress).
    pub updated_at: UnixMillis,
    /// Its place in the order agents are picked in (a hash of the rollout and the agent).
    pub order: u64,
}

/// Where a rollout stands.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Phase {
    /// Batches start as the ones before settle.
    Running,
    /// No new batch starts (agents under way finish); `resume` goes on.
    Paused,
    /// Too many failures: no new batch starts; agents not reached keep their version.
    Halted {
        /// Why.
        reason: String,
    },
    /// Stopped by the operator; agents not reached keep their version.
    Aborted,
    /// Every agent is committed, skipped, failed or rolled back.
    Completed,
}

impl Phase {
    /// The phase's name in JSON and logs.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Halted { .. } => "halted",
            Self::Aborted => "aborted",
            Self::Completed => "completed",
        }
    }

    /// Whether the rollout can still start batches (running or paused).
    #[must_use]
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }
}

/// One rollout.
#[derive(Clone, Debug)]
pub struct Rollout {
    /// Its id (also the `offer_id` agents see).
    pub id: u64,
    /// What it installs.
    pub release: Release,
    /// Whether it installs on agents that are not older.
    pub force: bool,
    /// How.
    pub strategy: Strategy,
    /// Which regions.
    pub regions: Option<RegionMatcher>,
    /// Who started it.
    pub actor: String,
    /// From where.
    pub remote: String,
    /// When.
    pub started_at: UnixMillis,
    /// Where it stands.
    pub phase: Phase,
    /// When it completed, halted or was aborted.
    pub finished_at: Option<UnixMillis>,
    /// Batches started so far.
    pub batches_started: u32,
    /// When the last started batch settled (its soak runs from here).
    pub batch_settled_at: Option<UnixMillis>,
    /// Its agents.
    pub members: BTreeMap<AgentId, Member>,
}

impl Rollout {
    /// The offer agents get.
    #[must_use]
    pub fn offer(&self) -> ToAgent {
        ToAgent::UpgradeOffer {
            offer_id: self.id,
            plan: UpgradePlan {
                version: self.release.version.to_string(),
                size_bytes: self.release.size_bytes,
                sha256: self.release.sha256,
                signature: self.release.signature.clone(),
                force: self.force,
            },
        }
    }

    /// Agents by state (every state present).
    #[must_use]
    pub fn counts(&self) -> BTreeMap<MemberState, usize> {
        let mut counts: BTreeMap<MemberState, usize> =
            MemberState::ALL.iter().map(|s| (*s, 0)).collect();
        for member in self.members.values() {
            *counts.entry(member.state).or_default() += 1;
        }
        counts
    }

    /// Agents that failed or rolled back.
    #[must_use]
    pub fn failures(&self) -> usize {
        self.members
            .values()
            .filter(|m| matches!(m.state, MemberState::Failed | MemberState::RolledBack))
            .count()
    }

    fn selects(&self, agent: &AgentId) -> bool {
        self.regions
            .as_ref()
            .is_none_or(|m| m.matches(&agent.region))
    }
}

/// Why a rollout was not started.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum StartError {
    /// Another rollout is running or paused.
    #[error("rollout {id} is {phase}: abort it (POST /-/upgrade/abort) before starting another")]
    Busy {
        /// Its id.
        id: u64,
        /// Its phase.
        phase: &'static str,
    },
    /// No connected agent's region is selected.
    #[error("no connected agent matches {selector}")]
    NoAgents {
        /// The selector, as written.
        selector: String,
    },
}

/// Why a control request was refused.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum ControlError {
    /// There is no rollout.
    #[error("there is no rollout")]
    NoRollout,
    /// The rollout's phase does not allow it.
    #[error("rollout {id} is {phase}: cannot {action} it")]
    WrongPhase {
        /// Its id.
        id: u64,
        /// Its phase.
        phase: &'static str,
        /// What was asked.
        action: &'static str,
    },
}

/// An operator's control of the rollout.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Control {
    /// Start no new batch.
    Pause,
    /// Go on after a pause.
    Resume,
    /// Stop for good: agents not reached are skipped.
    Abort,
}

impl Control {
    /// The control's name (the path `/-/upgrade/<name>`).
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Abort => "abort",
        }
    }
}

/// What the driver must do after a change: offer the release to these agent processes.
#[derive(Debug, Default, PartialEq)]
pub struct DeskChanges {
    /// (agent, its process, the offer).
    pub offers: Vec<(AgentId, u64, ToAgent)>,
    /// Lines for the log (batch started, halted, completed).
    pub events: Vec<String>,
    /// Chunks asked for earlier and held back by the bandwidth cap, now granted.
    pub chunks: Vec<ChunkGrant>,
}

/// A range of the release to send to one agent process.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ChunkGrant {
    /// The agent.
    pub agent: AgentId,
    /// Its process.
    pub instance: u64,
    /// The offer (the rollout's id).
    pub offer_id: u64,
    /// Where the range starts.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// A chunk asked for and held back by the bandwidth cap.
#[derive(Clone, Debug, Eq, PartialEq)]
struct ChunkAsk {
    agent: AgentId,
    /// The process that asked: a held-back ask is granted only to it (a new process of the
    /// agent asks again itself).
    instance: Option<u64>,
    offer_id: u64,
    offset: u64,
}

/// The server's upgrades: the current (or last) rollout and the agents connected now.
#[derive(Debug, Default)]
pub struct UpgradeDesk {
    settings: RolloutSettings,
    rollout: Option<Rollout>,
    last_id: u64,
    connected: BTreeMap<AgentId, Candidate>,
    dirty: bool,
    /// The bandwidth cap's bucket, made at the first chunk asked for.
    budget: Option<ByteBudget>,
    /// Asks held back by the cap, first come first served, at most one per agent.
    waiting: VecDeque<ChunkAsk>,
    /// Bytes of releases granted since this desk was made.
    sent_bytes: u64,
}

impl UpgradeDesk {
    /// A desk with no rollout.
    #[must_use]
    pub fn new(settings: RolloutSettings) -> Self {
        Self {
            settings,
            ..Self::default()
        }
    }

    /// The current or last rollout.
    #[must_use]
    pub fn rollout(&self) -> Option<&Rollout> {
        self.rollout.as_ref()
    }

    /// The limits.
    #[must_use]
    pub fn settings(&self) -> &RolloutSettings {
        &self.settings
    }

    /// Whether the desk changed since [`Self::mark_saved`].
    #[must_use]
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The desk's bytes were written.
    pub fn mark_saved(&mut self) {
        self.dirty = false;
    }

    /// Starts a rollout at `now` among the connected agents `request.regions` selects.
    ///
    /// # Errors
    /// [`StartError::Busy`] while another rollout is open; [`StartError::NoAgents`] when no
    /// connected agent is selected. Nothing changes then.
    pub fn start(
        &mut self,
        now: UnixMillis,
        request: RolloutRequest,
    ) -> Result<DeskChanges, StartError> {
        if let Some(current) = &self.rollout
            && current.phase.is_open()
        {
            return Err(StartError::Busy {
                id: current.id,
                phase: current.phase.label(),
            });
        }
        let id = self.last_id + 1;
        let mut rollout = Rollout {
            id,
            release: request.release,
            force: request.force,
            strategy: request.strategy,
            regions: request.regions,
            actor: request.actor,
            remote: request.remote,
            started_at: now,
            phase: Phase::Running,
            finished_at: None,
            batches_started: 0,
            batch_settled_at: None,
            members: BTreeMap::new(),
        };
        for candidate in self.connected.values() {
            if rollout.selects(&candidate.agent) {
                let member = join(&rollout, candidate, now);
                rollout.members.insert(candidate.agent.clone(), member);
            }
        }
        if rollout.members.is_empty() {
            return Err(StartError::NoAgents {
                selector: rollout.regions.as_ref().map_or_else(
                    || "all regions".to_owned(),
                    |m| format!("region {} {:?}", m.op(), m.pattern()),
                ),
            });
        }
        self.last_id = id;
        self.rollout = Some(rollout);
        self.dirty = true;
        let mut changes = DeskChanges::default();
        self.advance(now, &mut changes);
        Ok(changes)
    }

    /// An agent process connected at `now`.
    pub fn connected(&mut self, now: UnixMillis, candidate: Candidate) -> DeskChanges {
        let mut changes = DeskChanges::default();
        self.connected
            .insert(candidate.agent.clone(), candidate.clone());
        let Some(rollout) = &mut self.rollout else {
            return changes;
        };
        let target = rollout.release.version.clone();
        let offer = rollout.offer();
        let open = !matches!(rollout.phase, Phase::Aborted | Phase::Completed);
        let joins = rollout.phase.is_open() && rollout.selects(&candidate.agent);
        match rollout.members.get_mut(&candidate.agent) {
            Some(member) => {
                let back_on_target = candidate
                    .version
                    .parse::<Version>()
                    .is_ok_and(|v| v.same_release(&target));
                let was_on_target = member
                    .from_version
                    .parse::<Version>()
                    .is_ok_and(|v| v.same_release(&target));
                let restarted = match member.state {
                    MemberState::Restarting => back_on_target,
                    // Its "applied" was lost with the old connection.
                    MemberState::Downloading | MemberState::Verified => {
                        back_on_target && !was_on_target
                    }
                    _ => false,
                };
                if restarted {
                    // A new process on the release: the trial, or the committed version.
                    member.state = MemberState::Probation;
                    member.updated_at = now;
                    self.dirty = true;
                } else if open
                    && matches!(
                        member.state,
                        MemberState::Downloading | MemberState::Verified
                    )
                {
                    // Cut off while downloading: offer again, it resumes where it was.
                    member.updated_at = now;
                    changes
                        .offers
                        .push((candidate.agent.clone(), candidate.instance, offer));
                }
            }
            None if joins => {
                let member = join(rollout, &candidate, now);
                rollout.members.insert(candidate.agent.clone(), member);
                self.dirty = true;
            }
            None => {}
        }
        self.advance(now, &mut changes);
        changes
    }

    /// An agent process disconnected.
    pub fn disconnected(&mut self, agent: &AgentId, instance: u64) {
        if self
            .connected
            .get(agent)
            .is_some_and(|c| c.instance == instance)
        {
            self.connected.remove(agent);
        }
    }

    /// Agent `agent` reported `state` of offer `offer_id` at `now`. A report on another offer,
    /// from an agent not in the rollout, or after the agent's state is final changes nothing.
    pub fn reported(
        &mut self,
        now: UnixMillis,
        agent: &AgentId,
        offer_id: u64,
        state: UpgradeState,
    ) -> DeskChanges {
        let mut changes = DeskChanges::default();
        let Some(rollout) = self.rollout.as_mut().filter(|r| r.id == offer_id) else {
            return changes;
        };
        let Some(member) = rollout.members.get_mut(agent) else {
            return changes;
        };
        if member.state.is_final() || member.batch.is_none() {
            return changes;
        }
        let (next, reason) = match state {
            UpgradeState::Downloading { received_bytes } => {
                member.received_bytes = received_bytes;
                (MemberState::Downloading, None)
            }
            UpgradeState::Verified => (MemberState::Verified, None),
            UpgradeState::Applied => (MemberState::Restarting, None),
            UpgradeState::Failed { reason } => (MemberState::Failed, Some(reason)),
            UpgradeState::Committed => (MemberState::Committed, None),
            UpgradeState::RolledBack { reason } => (MemberState::RolledBack, Some(reason)),
        };
        // Progress only moves forward (a late "downloading" after "restarting" is stale).
        if next.step() < member.state.step() && !next.is_final() {
            return changes;
        }
        member.state = next;
        member.reason = reason;
        member.updated_at = now;
        if next == MemberState::Committed {
            member.received_bytes = rollout.release.size_bytes;
        }
        self.dirty = true;
        self.advance(now, &mut changes);
        changes
    }

    /// Agent `agent` asks for the release's bytes from `offset` at `now`: the range to send
    /// (`offset`, length) now, or `None` when it is not downloading this offer now or when the
    /// bandwidth cap holds the ask back (then [`Self::tick`] grants it in
    /// [`DeskChanges::chunks`], in the order asked; a newer ask of the same agent replaces
    /// its older one).
    pub fn chunk(
        &mut self,
        now: UnixMillis,
        agent: &AgentId,
        offer_id: u64,
        offset: u64,
    ) -> Option<(u64, u64)> {
        let len = self.chunk_len(agent, offer_id, offset)?;
        if let Some(member) = self.rollout.as_mut().and_then(|r| r.members.get_mut(agent)) {
            // Progress (also when held back), not a change worth a write of the record.
            member.updated_at = now;
            member.received_bytes = offset;
        }
        let Some(rate) = self.settings.max_bytes_per_second else {
            self.sent_bytes = self.sent_bytes.saturating_add(len);
            return Some((offset, len));
        };
        let budget = self
            .budget
            .get_or_insert_with(|| ByteBudget::new(now, rate, CHUNK_LEN));
        if self.waiting.is_empty() && budget.try_take(now, len) {
            self.sent_bytes = self.sent_bytes.saturating_add(len);
            return Some((offset, len));
        }
        let ask = ChunkAsk {
            agent: agent.clone(),
            instance: self.connected.get(agent).map(|c| c.instance),
            offer_id,
            offset,
        };
        match self.waiting.iter_mut().find(|a| &a.agent == agent) {
            Some(older) => *older = ask,
            None => self.waiting.push_back(ask),
        }
        None
    }

    /// The length of the range from `offset` that `agent` may have now, if any.
    fn chunk_len(&self, agent: &AgentId, offer_id: u64, offset: u64) -> Option<u64> {
        let rollout = self.rollout.as_ref().filter(|r| r.id == offer_id)?;
        if rollout.phase == Phase::Aborted {
            return None;
        }
        let size = rollout.release.size_bytes;
        let member = rollout.members.get(agent)?;
        if member.batch.is_none()
            || !matches!(
                member.state,
                MemberState::Downloading | MemberState::Verified
            )
            || offset >= size
        {
            return None;
        }
        Some(CHUNK_LEN.min(size - offset))
    }

    /// Grants the asks held back by the cap that the bucket allows at `now`, in order; drops
    /// those that no longer stand (the agent left, failed or finished, the rollout ended).
    fn grant_waiting(&mut self, now: UnixMillis, changes: &mut DeskChanges) {
        while let Some(ask) = self.waiting.front().cloned() {
            let instance = self
                .connected
                .get(&ask.agent)
                .map(|c| c.instance)
                .filter(|now_connected| Some(*now_connected) == ask.instance);
            let (Some(len), Some(instance)) = (
                self.chunk_len(&ask.agent, ask.offer_id, ask.offset),
                instance,
            ) else {
                self.waiting.pop_front();
                continue;
            };
            let Some(budget) = self.budget.as_mut() else {
                return;
            };
            if !budget.try_take(now, len) {
                return;
            }
            self.waiting.pop_front();
            self.sent_bytes = self.sent_bytes.saturating_add(len);
            if let Some(member) = self
                .rollout
                .as_mut()
                .and_then(|r| r.members.get_mut(&ask.agent))
            {
                member.updated_at = now;
            }
            changes.chunks.push(ChunkGrant {
                agent: ask.agent,
                instance,
                offer_id: ask.offer_id,
                offset: ask.offset,
                len,
            });
        }
    }

    /// Bytes of releases granted since the desk was made
    /// (`prober_server_upgrade_sent_bytes_total`).
    #[must_use]
    pub fn sent_bytes(&self) -> u64 {
        self.sent_bytes
    }

    /// Chunks held back by the bandwidth cap now (`prober_server_upgrade_chunks_waiting`).
    #[must_use]
    pub fn chunks_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// An operator's control at `now`.
    ///
    /// # Errors
    /// [`ControlError`] when there is no rollout or its phase does not allow it.
    pub fn control(
        &mut self,
        now: UnixMillis,
        control: Control,
    ) -> Result<DeskChanges, ControlError> {
        let rollout = self.rollout.as_mut().ok_or(ControlError::NoRollout)?;
        let refused = ControlError::WrongPhase {
            id: rollout.id,
            phase: rollout.phase.label(),
            action: control.label(),
        };
        match (control, &rollout.phase) {
            (Control::Pause, Phase::Running) => rollout.phase = Phase::Paused,
            (Control::Resume, Phase::Paused) => rollout.phase = Phase::Running,
            (Control::Abort, Phase::Running | Phase::Paused | Phase::Halted { .. }) => {
                rollout.phase = Phase::Aborted;
                rollout.finished_at = Some(now);
                for member in rollout.members.values_mut() {
                    if member.state == MemberState::Pending {
                        member.state = MemberState::Skipped;
                        member.reason = Some("the rollout was aborted before this agent".into());
                        member.updated_at = now;
                    }
                }
            }
            _ => return Err(refused),
        }
        self.dirty = true;
        let mut changes = DeskChanges::default();
        changes
            .events
            .push(format!("rollout {}: {}", rollout.id, control.label()));
        self.advance(now, &mut changes);
        Ok(changes)
    }

    /// Advances to `now`: agents that took too long have failed; batches start, the rollout
    /// halts or completes.
    pub fn tick(&mut self, now: UnixMillis) -> DeskChanges {
        let mut changes = DeskChanges::default();
        let settings = self.settings.clone();
        if let Some(rollout) = &mut self.rollout {
            let target = rollout.release.version.to_string();
            for member in rollout.members.values_mut() {
                let (limit, why) = match member.state {
                    MemberState::Downloading | MemberState::Verified => (
                        settings.progress_timeout,
                        "no progress (no chunk asked for, no status)",
                    ),
                    MemberState::Restarting | MemberState::Probation => {
                        (settings.restart_timeout, "not committed on the new version")
                    }
                    _ => continue,
                };
                if now.saturating_duration_since(member.updated_at) > limit {
                    member.state = MemberState::Failed;
                    member.reason = Some(format!(
                        "{why} within {}s of its last step towards {target}",
                        limit.as_secs()
                    ));
                    member.updated_at = now;
                    self.dirty = true;
                }
            }
        }
        self.advance(now, &mut changes);
        self.grant_waiting(now, &mut changes);
        changes
    }

    /// When [`Self::tick`] is due next.
    #[must_use]
    pub fn next_timeout(&self) -> Option<UnixMillis> {
        let rollout = self.rollout.as_ref()?;
        let mut due: Option<UnixMillis> = None;
        let mut earliest = |at: UnixMillis| due = Some(due.map_or(at, |d| d.min(at)));
        for member in rollout.members.values() {
            match member.state {
                MemberState::Downloading | MemberState::Verified => earliest(
                    member
                        .updated_at
                        .saturating_add(self.settings.progress_timeout)
                        .saturating_add(Duration::from_millis(1)),
                ),
                MemberState::Restarting | MemberState::Probation => earliest(
                    member
                        .updated_at
                        .saturating_add(self.settings.restart_timeout)
                        .saturating_add(Duration::from_millis(1)),
                ),
                _ => {}
            }
        }
        if rollout.phase == Phase::Running
            && let Some(settled) = rollout.batch_settled_at
        {
            earliest(settled.saturating_add(rollout.strategy.soak));
        }
        if !self.waiting.is_empty()
            && let Some(budget) = &self.budget
        {
            earliest(budget.ready_at(CHUNK_LEN));
        }
        due
    }

    /// Halts, completes or starts the next batch, as the rollout's state allows at `now`.
    fn advance(&mut self, now: UnixMillis, changes: &mut DeskChanges) {
        let Some(rollout) = &mut self.rollout else {
            return;
        };
        if rollout.phase != Phase::Running {
            return;
        }
        let failures = rollout.failures();
        let max_failures = usize::try_from(rollout.strategy.max_failures).unwrap_or(usize::MAX);
        if failures > max_failures {
            let untouched = rollout
                .members
                .values()
                .filter(|m| m.state == MemberState::Pending)
                .count();
            let reason = format!(
                "{failures} agent(s) failed or rolled back, more than max_failures {max_failures}; \
                 {untouched} agent(s) not reached keep their version"
            );
            changes
                .events
                .push(format!("rollout {} halted: {reason}", rollout.id));
            rollout.phase = Phase::Halted { reason };
            rollout.finished_at = Some(now);
            self.dirty = true;
            return;
        }
        let under_way = rollout
            .members
            .values()
            .any(|m| m.batch.is_some() && !m.state.is_final());
        if under_way {
            rollout.batch_settled_at = None;
            return;
        }
        let mut pending: Vec<(u64, AgentId)> = rollout
            .members
            .iter()
            .filter(|(_, m)| m.state == MemberState::Pending)
            .map(|(a, m)| (m.order, a.clone()))
            .collect();
        if pending.is_empty() {
            rollout.phase = Phase::Completed;
            rollout.finished_at = Some(now);
            let counts = rollout.counts();
            changes.events.push(format!(
                "rollout {} completed: {} committed, {} skipped",
                rollout.id,
                counts.get(&MemberState::Committed).copied().unwrap_or(0),
                counts.get(&MemberState::Skipped).copied().unwrap_or(0)
            ));
            self.dirty = true;
            return;
        }
        if rollout.batches_started > 0 {
            let settled = *rollout.batch_settled_at.get_or_insert(now);
            if now < settled.saturating_add(rollout.strategy.soak) {
                return;
            }
        }
        pending.sort();
        let eligible = rollout
            .members
            .values()
            .filter(|m| m.state != MemberState::Skipped)
            .count();
        let canary_batch = rollout.batches_started == 0 && rollout.strategy.canary > 0;
        let size = if canary_batch {
            usize::try_from(rollout.strategy.canary).unwrap_or(usize::MAX)
        } else {
            rollout.strategy.batch.of(eligible)
        };
        let chosen: Vec<(AgentId, u64)> = pending
            .iter()
            .filter_map(|(_, agent)| {
                self.connected
                    .get(agent)
                    .map(|c| (agent.clone(), c.instance))
            })
            .take(size)
            .collect();
        if chosen.is_empty() {
            // The agents left are away; they are offered the release when they come back.
            return;
        }
        let batch = rollout.batches_started;
        rollout.batches_started += 1;
        rollout.batch_settled_at = None;
        let offer = rollout.offer();
        for (agent, instance) in &chosen {
            if let Some(member) = rollout.members.get_mut(agent) {
                member.state = MemberState::Downloading;
                member.batch = Some(batch);
                member.updated_at = now;
            }
            changes
                .offers
                .push((agent.clone(), *instance, offer.clone()));
        }
        changes.events.push(format!(
            "rollout {}: {} {} started with {}",
            rollout.id,
            if canary_batch {
                "canary batch"
            } else {
                "batch"
            },
            batch,
            chosen
                .iter()
                .map(|(a, _)| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        self.dirty = true;
    }

    /// The desk as its store record (`core::wire::upgrade_book`).
    #[must_use]
    pub fn to_record(&self) -> Vec<u8> {
        crate::wire::upgrade_book::encode(self.last_id, self.rollout.as_ref())
    }

    /// A desk with `settings` and what a previous server kept.
    ///
    /// # Errors
    /// [`crate::wire::WireError`] naming what is wrong in the record.
    pub fn from_record(
        settings: RolloutSettings,
        bytes: &[u8],
    ) -> Result<Self, crate::wire::WireError> {
        let (last_id, rollout) = crate::wire::upgrade_book::decode(bytes)?;
        Ok(Self {
            settings,
            rollout,
            last_id,
            connected: BTreeMap::new(),
            ..Self::default()
        })
    }
}

/// `candidate` joins `rollout` at `now`: pending, or skipped with the reason.
fn join(rollout: &Rollout, candidate: &Candidate, now: UnixMillis) -> Member {
    let target = &rollout.release.version;
    let skip = if candidate.protocol_version < 2 {
        Some("speaks protocol v1, which carries no upgrades: upgrade it by hand".to_owned())
    } else if !candidate.takes_upgrades {
        Some("did not opt in to upgrades (start it with -agent.upgrade)".to_owned())
    } else {
        match candidate.version.parse::<Version>() {
            _ if rollout.force => None,
            Ok(running) if target.is_newer_than(&running) => None,
            Ok(running) if running.same_release(target) => Some(format!("already runs {target}")),
            Ok(running) => Some(format!(
                "runs {running}, newer than {target} (a downgrade needs force)"
            )),
            Err(error) => Some(format!("{error} (force installs anyway)")),
        }
    };
    Member {
        state: if skip.is_some() {
            MemberState::Skipped
        } else {
            MemberState::Pending
        },
        from_version: candidate.version.clone(),
        reason: skip,
        batch: None,
        received_bytes: 0,
        updated_at: now,
        order: order_key(rollout.id, &candidate.agent),
    }
}

/// A stable pseudo-random place for `agent` in rollout `id` (FNV-1a): canaries differ from one
/// rollout to the next, and a restarted server picks the same order.
fn order_key(id: u64, agent: &AgentId) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let text = format!("{id}/{agent}");
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
