//! The server driver's side of self-upgrades: the intake of `POST /-/upgrade` (the policy on
//! digests and signatures, the one download of the release, its checks), the chunks of the
//! release sent to downloading agents, and the rollout's record written before any offer.
//! Every decision on who gets the release and when is `core::upgrade::rollout`'s.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::StatusCode;
use probermesh_core::link::ToAgent;
use probermesh_core::ports::{Record, ReportSource};
use probermesh_core::upgrade::rollout::{
    Control, ControlError, Release, RolloutRequest, StartError,
};

use super::server::{ServerHandle, Shared};
use crate::admin::{UpgradeApi, UpgradeIntake, UpgradeRefusal, rollout_json};
use crate::upgrade::fetch::{self, FetchLimits};
use crate::upgrade::release_key::ReleaseKey;
use crate::upgrade::{hex, parse_hex};

/// How the server takes releases (`-server.upgrade.*`).
#[derive(Clone, Debug, Default)]
pub struct ReleaseIntake {
    /// Where downloaded releases are kept (`<data dir>/upgrade`); `None`: `/-/upgrade`
    /// refuses (the demo has no data directory).
    pub dir: Option<PathBuf>,
    /// `-server.upgrade.pubkey`: every release must be signed by it.
    pub key: Option<ReleaseKey>,
    /// `-server.upgrade.allow-md5`: a Go request checked by md5 alone is taken.
    pub allow_md5: bool,
    /// The download's bounds.
    pub limits: FetchLimits,
}

impl ReleaseIntake {
    /// The file of the release with `sha256`.
    #[must_use]
    pub fn release_path(&self, sha256: &[u8; 32]) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|dir| dir.join(format!("{}.bin", hex(sha256))))
    }
}

fn refusal(status: StatusCode, detail: impl Into<String>) -> UpgradeRefusal {
    UpgradeRefusal {
        status,
        detail: detail.into(),
    }
}

/// What the request must carry, before anything is downloaded.
fn check_policy(intake: &UpgradeIntake, releases: &ReleaseIntake) -> Result<(), UpgradeRefusal> {
    if releases.dir.is_none() {
        return Err(refusal(
            StatusCode::FORBIDDEN,
            "this server keeps no releases (it has no data directory)",
        ));
    }
    if intake.sha256.is_none() {
        match (&intake.md5, releases.allow_md5) {
            (Some(_), true) => {}
            (Some(_), false) => {
                return Err(refusal(
                    StatusCode::BAD_REQUEST,
                    "sha256: missing; md5Check alone is accepted only with -server.upgrade.allow-md5 \
                     (md5 does not stop a forged binary)",
                ));
            }
            (None, _) => {
                return Err(refusal(
                    StatusCode::BAD_REQUEST,
                    "sha256: missing (the SHA-256 of the binary, 64 hex digits)",
                ));
            }
        }
    }
    if releases.key.is_some() && intake.signature.is_none() {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "signature: missing; this server takes only releases signed by its \
             -server.upgrade.pubkey",
        ));
    }
    Ok(())
}

impl<R: ReportSource> Shared<R> {
    /// Sends the chunks the state granted, read from the release file (off the async workers).
    pub(super) async fn send_chunks(
        &self,
        chunks: Vec<(probermesh_core::ports::ConnectionId, u64, u64, u64)>,
    ) {
        if chunks.is_empty() {
            return;
        }
        let Some(rollout_sha) = self.state().upgrades().rollout().map(|r| r.release.sha256) else {
            return;
        };
        let Some(path) = self.releases.release_path(&rollout_sha) else {
            return;
        };
        for (connection, offer_id, offset, len) in chunks {
            let reading = path.clone();
            let read = tokio::task::spawn_blocking(move || {
                fetch::read_chunk(&reading, offset, usize::try_from(len).unwrap_or(usize::MAX))
            })
            .await;
            match read {
                Ok(Ok(bytes)) if !bytes.is_empty() => {
                    let chunk = ToAgent::BinaryChunk {
                        offer_id,
                        offset,
                        bytes: Arc::from(bytes),
                    };
                    if let Err(error) = self.link.send_to(connection, chunk).await {
                        tracing::debug!(%connection, %error, "sending a chunk of the release failed");
                    }
                }
                Ok(Ok(_)) => {
                    tracing::error!(path = %path.display(), offset, "the release file is shorter than the release")
                }
                Ok(Err(error)) => {
                    tracing::error!(path = %path.display(), %error, "cannot read the release file; agents cannot download it")
                }
                Err(error) => tracing::error!(%error, "reading the release file failed"),
            }
        }
    }

    /// Writes the rollout's record (before any offer is sent: a restarted server knows who was
    /// offered the release).
    pub(super) async fn keep_upgrade(&self, bytes: Option<Vec<u8>>) {
        let (Some(bytes), Some(store)) = (bytes, self.store.clone()) else {
            return;
        };
        let written =
            tokio::task::spawn_blocking(move || store.write(Record::Upgrade, &bytes)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot write the rollout's record: a restarted server would not resume it")
            }
            Err(error) => tracing::error!(%error, "writing the rollout's record failed"),
        }
    }

    /// Removes the releases of earlier rollouts.
    fn prune_releases(dir: &Path, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path != keep
                && path.extension().is_some_and(|e| e == "bin")
                && let Err(error) = std::fs::remove_file(&path)
            {
                tracing::warn!(path = %path.display(), %error, "cannot remove an old release");
            }
        }
    }
}

fn start_refusal(error: &StartError) -> UpgradeRefusal {
    let status = match error {
        StartError::Busy { .. } => StatusCode::CONFLICT,
        StartError::NoAgents { .. } => StatusCode::UNPROCESSABLE_ENTITY,
    };
    refusal(status, error.to_string())
}

#[async_trait::async_trait]
impl<R: ReportSource + 'static> UpgradeApi for ServerHandle<R> {
    async fn start_upgrade(
        &self,
        intake: UpgradeIntake,
    ) -> Result<serde_json::Value, UpgradeRefusal> {
        let shared = &self.shared;
        check_policy(&intake, &shared.releases)?;
        // Refused now rather than after a download in vain (the state checks again).
        if let Some(rollout) = shared.state().upgrades().rollout()
            && rollout.phase.is_open()
        {
            return Err(start_refusal(&StartError::Busy {
                id: rollout.id,
                phase: rollout.phase.label(),
            }));
        }
        let source = fetch::redact(&intake.download_url);
        let dir = shared.releases.dir.clone().unwrap_or_default();
        if let Err(error) = tokio::fs::create_dir_all(&dir).await {
            return Err(refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot create {}: {error}", dir.display()),
            ));
        }
        tracing::warn!(actor = %intake.actor, remote = %intake.remote, url = %source, version = %intake.version, "upgrade requested: downloading the release");
        let fetched = fetch::fetch_release(&intake.download_url, shared.releases.limits, &dir)
            .await
            .map_err(|e| refusal(StatusCode::BAD_GATEWAY, e.to_string()))?;
        let discard = |why: String| {
            let _ = std::fs::remove_file(&fetched.path);
            refusal(StatusCode::UNPROCESSABLE_ENTITY, why)
        };
        if let Some(expected) = intake.sha256
            && expected != fetched.sha256
        {
            return Err(discard(format!(
                "sha256: the download's SHA-256 is {}, the request says {}",
                hex(&fetched.sha256),
                hex(&expected)
            )));
        }
        if let Some(expected) = &intake.md5
            && parse_hex::<16>(expected) != Some(fetched.md5)
        {
            return Err(discard(format!(
                "md5Check: the download's md5 is {}, the request says {expected}",
                hex(&fetched.md5)
            )));
        }
        if let (Some(key), Some(signature)) = (&shared.releases.key, &intake.signature) {
            let (key, signature, path) = (key.clone(), signature.clone(), fetched.path.clone());
            let verified =
                tokio::task::spawn_blocking(move || key.verify_file(&path, &signature)).await;
            match verified {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(discard(format!("signature: {error}"))),
                Err(error) => return Err(discard(format!("signature: the check failed: {error}"))),
            }
        }
        let request = RolloutRequest {
            release: Release {
                version: intake.version.clone(),
                size_bytes: fetched.size_bytes,
                sha256: fetched.sha256,
                signature: intake.signature.clone(),
                source,
            },
            force: intake.force,
            strategy: intake.strategy.clone(),
            regions: intake.regions.clone(),
            actor: intake.actor.clone(),
            remote: intake.remote.clone(),
        };
        let now = shared.clock.now();
        let started = shared.state().start_rollout(now, request);
        match started {
            Ok(actions) => {
                Shared::<R>::prune_releases(&dir, &fetched.path);
                let view = rollout_json(shared.state().upgrades().rollout());
                tracing::warn!(rollout = %view["rollout_id"], version = %intake.version, agents = view["agents"].as_array().map_or(0, Vec::len), "rollout started");
                shared.perform(actions).await;
                Ok(view)
            }
            Err(error) => {
                tracing::warn!(%error, "rollout refused");
                Err(start_refusal(&error))
            }
        }
    }

    async fn upgrade_status(&self) -> serde_json::Value {
        rollout_json(self.shared.state().upgrades().rollout())
    }

    async fn control_upgrade(
        &self,
        control: Control,
        actor: String,
        remote: String,
    ) -> Result<serde_json::Value, UpgradeRefusal> {
        let now = self.shared.clock.now();
        let controlled = self.shared.state().control_rollout(now, control);
        match controlled {
            Ok(actions) => {
                tracing::warn!(%actor, %remote, control = control.label(), "rollout controlled");
                self.shared.perform(actions).await;
                Ok(rollout_json(self.shared.state().upgrades().rollout()))
            }
            Err(error) => {
                let status = match error {
                    ControlError::NoRollout => StatusCode::NOT_FOUND,
                    ControlError::WrongPhase { .. } => StatusCode::CONFLICT,
                };
                Err(refusal(status, error.to_string()))
            }
        }
    }
}
