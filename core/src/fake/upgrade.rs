//! [`FakeInstaller`]: an [`Installer`] that stages in memory and answers its checks from the
//! test's script.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::lock;
use crate::link::UpgradePlan;
use crate::ports::{InstallError, Installer};

/// An [`Installer`] over memory: staging keeps the bytes per offer (reopening resumes),
/// `write` refuses an offset that is not the length, `check` compares the length with the
/// plan's and then answers what [`FakeInstaller::fail_check`] set (passing by default), and
/// `commit` records the offer. Every call is recorded.
#[derive(Debug, Default)]
pub struct FakeInstaller {
    state: Mutex<InstallerState>,
}

#[derive(Debug, Default)]
struct InstallerState {
    staged: BTreeMap<u64, Vec<u8>>,
    check_failure: Option<String>,
    stage_failure: Option<String>,
    committed: Vec<u64>,
    calls: Vec<String>,
}

impl FakeInstaller {
    /// An installer with nothing staged whose checks pass.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later `check` fail with `reason`.
    pub fn fail_check(&self, reason: &str) {
        lock(&self.state).check_failure = Some(reason.to_owned());
    }

    /// Makes every later `stage` fail with `reason`.
    pub fn fail_stage(&self, reason: &str) {
        lock(&self.state).stage_failure = Some(reason.to_owned());
    }

    /// Puts `bytes` in the staging of `offer_id`, as a download cut short would have left.
    pub fn preload(&self, offer_id: u64, bytes: &[u8]) {
        lock(&self.state).staged.insert(offer_id, bytes.to_vec());
    }

    /// The bytes staged for `offer_id`.
    #[must_use]
    pub fn staged(&self, offer_id: u64) -> Option<Vec<u8>> {
        lock(&self.state).staged.get(&offer_id).cloned()
    }

    /// The offers committed.
    #[must_use]
    pub fn committed(&self) -> Vec<u64> {
        lock(&self.state).committed.clone()
    }

    /// Every call, as `stage 3`, `write 3 @0 +262144`, `check 3`, `commit 3`.
    #[must_use]
    pub fn calls(&self) -> Vec<String> {
        lock(&self.state).calls.clone()
    }
}

#[async_trait::async_trait]
impl Installer for FakeInstaller {
    async fn stage(&self, offer_id: u64, _plan: &UpgradePlan) -> Result<u64, InstallError> {
        let mut state = lock(&self.state);
        state.calls.push(format!("stage {offer_id}"));
        if let Some(reason) = state.stage_failure.clone() {
            return Err(InstallError {
                operation: "staging the binary",
                reason,
            });
        }
        Ok(state.staged.entry(offer_id).or_default().len() as u64)
    }

    async fn write(&self, offer_id: u64, offset: u64, bytes: &[u8]) -> Result<u64, InstallError> {
        let mut state = lock(&self.state);
        state
            .calls
            .push(format!("write {offer_id} @{offset} +{}", bytes.len()));
        let staged = state.staged.entry(offer_id).or_default();
        if staged.len() as u64 != offset {
            return Err(InstallError {
                operation: "writing the binary",
                reason: format!("offset {offset} is not the staged length {}", staged.len()),
            });
        }
        staged.extend_from_slice(bytes);
        Ok(staged.len() as u64)
    }

    async fn check(&self, offer_id: u64, plan: &UpgradePlan) -> Result<(), InstallError> {
        let mut state = lock(&self.state);
        state.calls.push(format!("check {offer_id}"));
        let len = state.staged.get(&offer_id).map_or(0, Vec::len) as u64;
        if len != plan.size_bytes {
            return Err(InstallError {
                operation: "checking the binary",
                reason: format!("{len} bytes staged, {} offered", plan.size_bytes),
            });
        }
        match state.check_failure.clone() {
            Some(reason) => {
                state.staged.remove(&offer_id);
                Err(InstallError {
                    operation: "checking the binary",
                    reason,
                })
            }
            None => Ok(()),
        }
    }

    async fn commit(&self, offer_id: u64) -> Result<(), InstallError> {
        let mut state = lock(&self.state);
        state.calls.push(format!("commit {offer_id}"));
        state.committed.push(offer_id);
        Ok(())
    }
}
