//! [`FileInstaller`]: core's `Installer` port over the files beside the running executable:
//! the staging file of the offer being downloaded, its checks (SHA-256, the agent's pinned
//! release key, the preflight of the new binary's version), and a trial's commit marker.
//! The checked binary's path is kept for the hand-over ([`FileInstaller::checked`]).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use probermesh_core::link::UpgradePlan;
use probermesh_core::ports::{InstallError, Installer};

use super::release_key::ReleaseKey;
use super::staging::Staging;
use super::{preflight, swap, trial};

/// How long the new binary's `version` may take.
pub const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent's installer (see the module's first lines).
#[derive(Debug)]
pub struct FileInstaller {
    exe: PathBuf,
    key: Option<ReleaseKey>,
    state: Mutex<InstallerState>,
}

#[derive(Debug, Default)]
struct InstallerState {
    /// The offer being staged and its file.
    staging: Option<(u64, Staging)>,
    /// The offer checked and its binary (`<exe>.new`).
    checked: Option<(u64, PathBuf)>,
}

impl FileInstaller {
    /// Stages beside `exe` (the running executable, taken at start), checking signatures with
    /// `key` when the agent pins one (`-agent.upgrade.pubkey`).
    #[must_use]
    pub fn new(exe: PathBuf, key: Option<ReleaseKey>) -> Self {
        Self {
            exe,
            key,
            state: Mutex::new(InstallerState::default()),
        }
    }

    /// The checked binary of `offer_id`, for the hand-over.
    #[must_use]
    pub fn checked(&self, offer_id: u64) -> Option<PathBuf> {
        self.state()
            .checked
            .as_ref()
            .filter(|(id, _)| *id == offer_id)
            .map(|(_, path)| path.clone())
    }

    fn state(&self) -> MutexGuard<'_, InstallerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn failed(operation: &'static str, reason: impl std::fmt::Display) -> InstallError {
    InstallError {
        operation,
        reason: reason.to_string(),
    }
}

#[async_trait::async_trait]
impl Installer for FileInstaller {
    async fn stage(&self, offer_id: u64, plan: &UpgradePlan) -> Result<u64, InstallError> {
        swap::check_supported(&self.exe).map_err(|e| failed("replacing the executable", e))?;
        if self.key.is_some() && plan.signature.is_none() {
            return Err(failed(
                "checking the signature",
                "the release is not signed, and this agent installs only releases signed by \
                 its -agent.upgrade.pubkey",
            ));
        }
        let mut state = self.state();
        if let Some((id, staging)) = &state.staging
            && *id == offer_id
        {
            return Ok(staging.received_bytes());
        }
        let staging = Staging::open(&self.exe, plan.sha256, plan.size_bytes)
            .map_err(|e| failed("staging the binary", e))?;
        let received = staging.received_bytes();
        state.staging = Some((offer_id, staging));
        Ok(received)
    }

    async fn write(&self, offer_id: u64, offset: u64, bytes: &[u8]) -> Result<u64, InstallError> {
        let mut state = self.state();
        let Some((_, staging)) = state.staging.as_mut().filter(|(id, _)| *id == offer_id) else {
            return Err(failed(
                "writing the binary",
                "no download of this offer is open",
            ));
        };
        staging
            .append(offset, bytes)
            .map_err(|e| failed("writing the binary", e))?;
        Ok(staging.received_bytes())
    }

    async fn check(&self, offer_id: u64, plan: &UpgradePlan) -> Result<(), InstallError> {
        let staging = {
            let mut state = self.state();
            match state.staging.take() {
                Some((id, staging)) if id == offer_id => staging,
                other => {
                    state.staging = other;
                    return Err(failed(
                        "checking the binary",
                        "no download of this offer is open",
                    ));
                }
            }
        };
        let staged = staging
            .finish()
            .map_err(|e| failed("checking the digest", e))?;
        let remove = |path: &Path| {
            let _ = std::fs::remove_file(path);
        };
        if let Some(key) = &self.key {
            let signature = plan.signature.as_deref().unwrap_or_default();
            if let Err(error) = key.verify_file(&staged.path, signature) {
                remove(&staged.path);
                return Err(failed("checking the signature", error));
            }
        }
        if let Err(error) =
            preflight::preflight(&staged.path, &plan.version, PREFLIGHT_TIMEOUT).await
        {
            remove(&staged.path);
            return Err(failed("running the new binary's version", error));
        }
        self.state().checked = Some((offer_id, staged.path));
        Ok(())
    }

    async fn commit(&self, _offer_id: u64) -> Result<(), InstallError> {
        let marker = trial::trial_marker_from_env()
            .ok_or_else(|| failed("committing", "this process is not on trial"))?;
        trial::mark_committed(&marker).map_err(|e| failed("committing", e))
    }
}
