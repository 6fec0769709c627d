//! The agent↔server conversation in domain terms: what an agent tells its server and what a
//! server tells its agents after the handshake, whatever protocol version carries it.
//!
//! `core::wire` converts every protocol version's messages to and from these (and validates
//! what comes in); the link ports carry them, so the server's and the agent's logic never
//! sees a DTO. The handshake (`Hello`, `Welcome`, `Refused`) belongs to the link.

use std::sync::Arc;

use crate::model::{ProbeConfig, ProbeResult, UnixMillis};
use crate::ports::{TaskOutput, TaskSpec, UpgradePlan};

/// What an agent sends its server.
#[derive(Clone, Debug, PartialEq)]
pub enum FromAgent {
    /// The agent is alive (`prober_agent_is_alive`); its wall clock when it sent this.
    Heartbeat {
        /// The agent's clock.
        sent_at: UnixMillis,
    },
    /// Probe results, numbered per agent process for acknowledgement and deduplication.
    Results {
        /// The batch's sequence number.
        seq: u64,
        /// The results, validated, each with the agent of the connection as its source.
        results: Vec<ProbeResult>,
    },
    /// Asks for the target pool unless the agent holds `known_revision` (0: none).
    PoolRequest {
        /// The revision the agent holds.
        known_revision: u64,
    },
    /// The agent refused the pool with this revision and keeps probing its previous one.
    PoolRefused {
        /// The refused revision.
        revision: u64,
        /// Where in the pool (`configs[2].http.method`).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// What a task did.
    TaskResult {
        /// The task it answers.
        task_id: u64,
        /// Its outcome.
        output: TaskOutput,
    },
    /// Where an upgrade stands.
    UpgradeStatus {
        /// The offer it reports on.
        offer_id: u64,
        /// The version being installed.
        version: String,
        /// The state.
        state: UpgradeState,
    },
}

impl FromAgent {
    /// The message's kind, for logs (never its content).
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Heartbeat { .. } => "Heartbeat",
            Self::Results { .. } => "Results",
            Self::PoolRequest { .. } => "PoolRequest",
            Self::PoolRefused { .. } => "PoolRefused",
            Self::TaskResult { .. } => "TaskResult",
            Self::UpgradeStatus { .. } => "UpgradeStatus",
        }
    }
}

/// Where an upgrade stands on an agent.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum UpgradeState {
    /// The binary is being downloaded.
    Downloading,
    /// The download matched the offered digest.
    Verified,
    /// The running executable was replaced; the new version starts next.
    Applied,
    /// The upgrade was abandoned.
    Failed {
        /// Why.
        reason: String,
    },
}

/// What a server sends one of its agents.
#[derive(Clone, Debug, PartialEq)]
pub enum ToAgent {
    /// The agent's target pool (shared between the agents of a region).
    Pool {
        /// Changes with every change of the pool.
        revision: u64,
        /// The blocks.
        configs: Arc<Vec<ProbeConfig>>,
    },
    /// The results batch `seq` is filed; the agent may forget it.
    Ack {
        /// The acknowledged batch.
        seq: u64,
    },
    /// A task to run (only on agents that opted in).
    Task(TaskSpec),
    /// A new agent binary to install.
    UpgradeOffer {
        /// Identifies the status reports.
        offer_id: u64,
        /// What to install.
        plan: UpgradePlan,
    },
}

impl ToAgent {
    /// The message's kind, for logs (never its content).
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Pool { .. } => "Pool",
            Self::Ack { .. } => "Ack",
            Self::Task(_) => "Task",
            Self::UpgradeOffer { .. } => "UpgradeOffer",
        }
    }
}

/// What an agent's link reports from its server.
#[derive(Clone, Debug, PartialEq)]
pub enum FromServer {
    /// A connection passed the handshake (at every reconnection).
    Welcomed {
        /// The server's version.
        server_version: String,
        /// The address the server sees this agent connect from (its public IP, decision 12).
        observed_addr: std::net::SocketAddr,
    },
    /// A message (acknowledgements stay in the link, which delivers results reliably).
    Message(ToAgent),
    /// The server sent a pool this agent cannot accept (another version's settings): the
    /// agent keeps its previous one.
    InvalidPool {
        /// The refused revision.
        revision: u64,
        /// Where in the pool (`configs[2].http.method`).
        field: String,
        /// What is wrong.
        reason: String,
    },
}
