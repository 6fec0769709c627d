//! The agent's side of a self-upgrade, sans-IO: whether to take an offer, the download of the
//! binary in chunks over the link (one request in flight, resumed after a reconnect from what
//! is on disk), the hand-over once the adapter has checked it, and the probation of the new
//! version (committed once its results were acknowledged in enough rounds).
//!
//! The driver carries out each [`UpgradeStep`] and reports back: [`AgentUpgrades::staged`]
//! after opening the staging file, [`AgentUpgrades::written`] after each chunk,
//! [`AgentUpgrades::installed`] or [`AgentUpgrades::failed`] after the checks.

use std::sync::Arc;
use std::time::Duration;

use super::version::Version;
use crate::link::{FromAgent, UpgradePlan, UpgradeState};
use crate::model::UnixMillis;

/// Chunk requests repeated without an answer before the download is given up.
pub const MAX_CHUNK_RETRIES: u32 = 5;
/// A "downloading" status is sent at least every this many bytes.
pub const PROGRESS_REPORT_BYTES: u64 = 4 * 1024 * 1024;

/// How this agent takes upgrades (`-agent.upgrade`).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct UpgradePolicy {
    /// The version running.
    pub running: Version,
    /// Rounds whose results must be acknowledged before a new version commits.
    pub probation_rounds: u32,
    /// A chunk asked for and not received within this is asked for again.
    pub chunk_timeout: Duration,
    /// The largest binary taken.
    pub max_binary_bytes: u64,
}

impl UpgradePolicy {
    /// The defaults for an agent running `running`: 3 probation rounds, chunks within 30 s,
    /// binaries up to 512 MiB.
    #[must_use]
    pub fn new(running: Version) -> Self {
        Self {
            running,
            probation_rounds: 3,
            chunk_timeout: Duration::from_secs(30),
            max_binary_bytes: 512 * 1024 * 1024,
        }
    }
}

/// This process is the trial of a new version, started by the previous one.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Probation {
    /// The offer that brought it.
    pub offer_id: u64,
    /// Its version.
    pub version: String,
    /// Acknowledged rounds needed.
    pub rounds_needed: u32,
}

/// What the previous process of this agent has to tell the server (read from the adapter's
/// state file at start).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct UpgradeReport {
    /// The offer.
    pub offer_id: u64,
    /// The version it was about.
    pub version: String,
    /// How it ended (committed, rolled back, failed).
    pub state: UpgradeState,
}

/// How an agent process starts with respect to upgrades.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct UpgradeSetup {
    /// `-agent.upgrade`: `None` refuses every offer (and the hello does not name the feature).
    pub policy: Option<UpgradePolicy>,
    /// This process is the trial of a new version.
    pub probation: Option<Probation>,
    /// The previous process's outcome to report.
    pub report: Option<UpgradeReport>,
}

/// What the agent's driver must do for an upgrade.
#[derive(Clone, Debug, PartialEq)]
pub enum UpgradeStep {
    /// Send this to the server.
    Send(FromAgent),
    /// Open (or reopen) the staging file for `plan` and report its length with
    /// [`AgentUpgrades::staged`].
    Stage {
        /// The offer.
        offer_id: u64,
        /// What is downloaded.
        plan: UpgradePlan,
    },
    /// Append `bytes` at `offset` of the staging file and report with
    /// [`AgentUpgrades::written`].
    Write {
        /// The offer.
        offer_id: u64,
        /// Where they go.
        offset: u64,
        /// The bytes.
        bytes: Arc<[u8]>,
    },
    /// The whole binary is on disk: check its digest, its signature (with the agent's own key)
    /// and its version, then report [`AgentUpgrades::installed`] or [`AgentUpgrades::failed`].
    Install {
        /// The offer.
        offer_id: u64,
        /// What was downloaded.
        plan: UpgradePlan,
    },
    /// Checked: stop probing, drain the link and hand over to the new binary (its trial).
    HandOver {
        /// The offer.
        offer_id: u64,
        /// What is installed.
        plan: UpgradePlan,
    },
    /// This trial passed its probation: tell the previous process (the adapter's marker), which
    /// installs the new binary and restarts into it; that process reports the outcome.
    Commit {
        /// The offer.
        offer_id: u64,
    },
}

#[derive(Clone, Debug)]
struct Download {
    offer_id: u64,
    plan: UpgradePlan,
    /// The staging file is open (its length is known).
    staged: bool,
    received: u64,
    /// The chunk asked for and when.
    awaiting: Option<(u64, UnixMillis)>,
    retries: u32,
    reported: u64,
    /// Checks under way, or handed over.
    installing: bool,
}

#[derive(Clone, Debug)]
struct ProbationRun {
    probation: Probation,
    rounds: u32,
    acked_at_last_round: Option<u64>,
    acked: u64,
}

/// The agent's upgrades between events.
#[derive(Clone, Debug, Default)]
pub struct AgentUpgrades {
    policy: Option<UpgradePolicy>,
    download: Option<Download>,
    probation: Option<ProbationRun>,
    /// What the previous process of this agent has to report (committed, rolled back).
    report: Option<FromAgent>,
}

impl AgentUpgrades {
    /// Upgrades as `setup` says.
    #[must_use]
    pub fn new(setup: UpgradeSetup) -> Self {
        Self {
            policy: setup.policy,
            download: None,
            probation: setup.probation.map(|probation| ProbationRun {
                probation,
                rounds: 0,
                acked_at_last_round: None,
                acked: 0,
            }),
            report: setup.report.map(|r| FromAgent::UpgradeStatus {
                offer_id: r.offer_id,
                version: r.version,
                state: r.state,
            }),
        }
    }

    /// Whether upgrades are on (the `upgrade` feature is named in the hello).
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.policy.is_some()
    }

    /// Whether this process is a trial that has not committed yet.
    #[must_use]
    pub fn in_probation(&self) -> bool {
        self.probation.is_some()
    }

    /// The connection passed its handshake: the previous process's report goes out (at every
    /// connection: the server ignores a repeated one), and a download under way asks again.
    pub fn welcomed(&mut self, now: UnixMillis) -> Vec<UpgradeStep> {
        let mut steps: Vec<UpgradeStep> =
            self.report.iter().cloned().map(UpgradeStep::Send).collect();
        if let Some(download) = &mut self.download
            && download.staged
            && !download.installing
        {
            download.awaiting = Some((download.received, now));
            steps.push(request(download));
        }
        steps
    }

    /// The server offered `plan` as `offer_id` at `now`.
    pub fn offered(
        &mut self,
        now: UnixMillis,
        offer_id: u64,
        plan: UpgradePlan,
    ) -> Vec<UpgradeStep> {
        let refuse = |reason: String| {
            vec![status(
                offer_id,
                &plan.version,
                UpgradeState::Failed { reason },
            )]
        };
        let Some(policy) = &self.policy else {
            return refuse("upgrades are off on this agent (start it with -agent.upgrade)".into());
        };
        if let Some(download) = &mut self.download
            && download.offer_id == offer_id
        {
            // Offered again (a reconnect): go on from where the download is.
            if download.staged && !download.installing {
                download.awaiting = Some((download.received, now));
                return vec![request(download)];
            }
            return Vec::new();
        }
        if self.probation.is_some() {
            return refuse("this process is itself the trial of a new version".into());
        }
        let offered = match plan.version.parse::<Version>() {
            Ok(version) => version,
            Err(error) => return refuse(error.to_string()),
        };
        if !plan.force && !offered.is_newer_than(&policy.running) {
            return refuse(format!(
                "offered {offered} is not newer than the running {} (a downgrade or a reinstall \
                 needs force)",
                policy.running
            ));
        }
        if plan.size_bytes == 0 || plan.size_bytes > policy.max_binary_bytes {
            return refuse(format!(
                "the binary's size {} bytes is not within 1 to {} bytes",
                plan.size_bytes, policy.max_binary_bytes
            ));
        }
        self.download = Some(Download {
            offer_id,
            plan: plan.clone(),
            staged: false,
            received: 0,
            awaiting: None,
            retries: 0,
            reported: 0,
            installing: false,
        });
        vec![UpgradeStep::Stage { offer_id, plan }]
    }

    /// The staging file of `offer_id` is open with `received` bytes in it already.
    pub fn staged(&mut self, now: UnixMillis, offer_id: u64, received: u64) -> Vec<UpgradeStep> {
        let Some(download) = self.download.as_mut().filter(|d| d.offer_id == offer_id) else {
            return Vec::new();
        };
        download.staged = true;
        download.received = received.min(download.plan.size_bytes);
        download.reported = download.received;
        let mut steps = vec![status(
            offer_id,
            &download.plan.version,
            UpgradeState::Downloading {
                received_bytes: download.received,
            },
        )];
        steps.extend(next_after_write(download, now));
        steps
    }

    /// A chunk of `offer_id` arrived at `now`: written if it is the one asked for.
    pub fn chunk(&mut self, offer_id: u64, offset: u64, bytes: Arc<[u8]>) -> Vec<UpgradeStep> {
        let Some(download) = self.download.as_mut().filter(|d| d.offer_id == offer_id) else {
            return Vec::new();
        };
        let expected = download.awaiting.map(|(offset, _)| offset);
        let fits = offset
            .checked_add(bytes.len() as u64)
            .is_some_and(|end| end <= download.plan.size_bytes);
        if download.installing || expected != Some(offset) || bytes.is_empty() || !fits {
            // Stale (asked for again since) or out of range: dropped; the request repeats.
            return Vec::new();
        }
        download.awaiting = None;
        download.retries = 0;
        vec![UpgradeStep::Write {
            offer_id,
            offset,
            bytes,
        }]
    }

    /// The staging file of `offer_id` holds `received` bytes now.
    pub fn written(&mut self, now: UnixMillis, offer_id: u64, received: u64) -> Vec<UpgradeStep> {
        let Some(download) = self.download.as_mut().filter(|d| d.offer_id == offer_id) else {
            return Vec::new();
        };
        download.received = received.min(download.plan.size_bytes);
        let mut steps = Vec::new();
        let complete = download.received == download.plan.size_bytes;
        if complete || download.received - download.reported >= PROGRESS_REPORT_BYTES {
            download.reported = download.received;
            steps.push(status(
                offer_id,
                &download.plan.version,
                UpgradeState::Downloading {
                    received_bytes: download.received,
                },
            ));
        }
        steps.extend(next_after_write(download, now));
        steps
    }

    /// The upgrade of `offer_id` cannot go on (staging, a check, the preflight): the server is
    /// told why and the agent keeps its version.
    pub fn failed(&mut self, offer_id: u64, reason: String) -> Vec<UpgradeStep> {
        let Some(download) = self.download.take_if(|d| d.offer_id == offer_id) else {
            return Vec::new();
        };
        vec![status(
            offer_id,
            &download.plan.version,
            UpgradeState::Failed { reason },
        )]
    }

    /// The binary of `offer_id` passed every check: hand over to it.
    pub fn installed(&mut self, offer_id: u64) -> Vec<UpgradeStep> {
        let Some(download) = self.download.as_ref().filter(|d| d.offer_id == offer_id) else {
            return Vec::new();
        };
        let plan = download.plan.clone();
        vec![
            status(offer_id, &plan.version, UpgradeState::Verified),
            status(offer_id, &plan.version, UpgradeState::Applied),
            UpgradeStep::HandOver { offer_id, plan },
        ]
    }

    /// The link has had `acked` results acknowledged in all (a count that only grows, restarted
    /// by a new link).
    pub fn acknowledged(&mut self, acked: u64) {
        if let Some(run) = &mut self.probation {
            run.acked = acked;
        }
    }

    /// A probe round ended: a trial whose results were acknowledged during it moves one round
    /// closer to committing.
    pub fn round_ended(&mut self) -> Vec<UpgradeStep> {
        let Some(run) = &mut self.probation else {
            return Vec::new();
        };
        let acked_before = run.acked_at_last_round.replace(run.acked);
        if acked_before.is_some_and(|before| run.acked > before)
            || (acked_before.is_none() && run.acked > 0)
        {
            run.rounds += 1;
        }
        if run.rounds < run.probation.rounds_needed.max(1) {
            return Vec::new();
        }
        let Some(run) = self.probation.take() else {
            return Vec::new();
        };
        // No `committed` status from here: the previous process swaps the executable once it
        // sees the commit, and the process it restarts reports the outcome (committed, or
        // failed when the swap did not happen), so the server never reads "committed" while
        // the old binary is still in place.
        vec![UpgradeStep::Commit {
            offer_id: run.probation.offer_id,
        }]
    }

    /// Advances to `now`: a chunk not answered in time is asked for again, and the download is
    /// given up after [`MAX_CHUNK_RETRIES`].
    pub fn tick(&mut self, now: UnixMillis) -> Vec<UpgradeStep> {
        let Some(policy) = &self.policy else {
            return Vec::new();
        };
        let timeout = policy.chunk_timeout;
        let Some(download) = &mut self.download else {
            return Vec::new();
        };
        let Some((_, asked_at)) = download.awaiting else {
            return Vec::new();
        };
        if now.saturating_duration_since(asked_at) < timeout {
            return Vec::new();
        }
        download.retries += 1;
        if download.retries > MAX_CHUNK_RETRIES {
            let offer_id = download.offer_id;
            return self.failed(
                offer_id,
                format!(
                    "the server sent no bytes of the binary for {MAX_CHUNK_RETRIES} requests of \
                     {}s each",
                    timeout.as_secs()
                ),
            );
        }
        download.awaiting = Some((download.received, now));
        vec![request(download)]
    }

    /// When [`Self::tick`] is due next.
    #[must_use]
    pub fn next_timeout(&self) -> Option<UnixMillis> {
        let timeout = self.policy.as_ref()?.chunk_timeout;
        let (_, asked_at) = self.download.as_ref()?.awaiting?;
        Some(asked_at.saturating_add(timeout))
    }
}

/// After a write (or the staging): the next chunk, or the checks when complete.
fn next_after_write(download: &mut Download, now: UnixMillis) -> Vec<UpgradeStep> {
    if download.received >= download.plan.size_bytes {
        download.installing = true;
        download.awaiting = None;
        return vec![UpgradeStep::Install {
            offer_id: download.offer_id,
            plan: download.plan.clone(),
        }];
    }
    download.awaiting = Some((download.received, now));
    vec![request(download)]
}

fn request(download: &Download) -> UpgradeStep {
    UpgradeStep::Send(FromAgent::ChunkRequest {
        offer_id: download.offer_id,
        offset: download.received,
    })
}

fn status(offer_id: u64, version: &str, state: UpgradeState) -> UpgradeStep {
    UpgradeStep::Send(FromAgent::UpgradeStatus {
        offer_id,
        version: version.to_owned(),
        state,
    })
}
