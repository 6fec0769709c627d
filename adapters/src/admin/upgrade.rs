//! `/-/upgrade` (the Go self-upgrade, kept compatible and made safe).
//!
//! - `POST` (or `PUT`) `/-/upgrade` with the Go JSON `{"downloadURL","md5Check","version","force"}`
//!   and our optional fields: `"sha256"` (64 hex digits), `"signature"` (a minisign `.minisig`
//!   text or 128 hex digits of a bare ed25519 signature over the binary), `"strategy"`
//!   (`{"canary": 1, "batch": 2 or "25%", "max_failures": 0, "soak": "30s"}`) and
//!   `"region"`/`"expr"` (which agents, as `/-/task` matches them). The server downloads and
//!   checks the binary before answering; the answer is the rollout.
//! - `GET /-/upgrade`: the rollout and every agent's state.
//! - `POST /-/upgrade/pause`, `/-/upgrade/resume`, `/-/upgrade/abort`.
//!
//! Every one needs the admin bearer token (a status shows the fleet's versions and reasons).
//! The answers keep the Go envelope `{code,msg,data}` with real HTTP status codes.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use probermesh_core::matcher::RegionMatcher;
use probermesh_core::probe_file::parse_duration;
use probermesh_core::task::signing::decode_hex;
use probermesh_core::upgrade::rollout::{BatchSize, Control, Strategy};
use probermesh_core::upgrade::version::Version;
use serde::Deserialize;

use super::task::{actor_of, json, json_unauthorized};
use super::{Endpoints, authorize};
use crate::log_limit::{UNTRUSTED_MAX_BYTES, untrusted};

/// The largest `/-/upgrade` request body, in bytes.
pub const MAX_UPGRADE_REQUEST_BYTES: usize = 64 * 1024;
/// The longest download URL taken.
pub(super) const MAX_URL_LEN: usize = 4096;
/// The most canaries a strategy may name.
pub(super) const MAX_CANARIES: u32 = 100;
/// The longest soak a strategy may name.
pub(super) const MAX_SOAK: Duration = Duration::from_secs(24 * 3600);

/// A checked `/-/upgrade` request.
#[derive(Clone, Debug)]
pub struct UpgradeIntake {
    /// Where the server downloads the binary (http or https).
    pub download_url: String,
    /// The version the binary must report.
    pub version: Version,
    /// The Go `md5Check`, lowercase hex (accepted alone only with `-server.upgrade.allow-md5`).
    pub md5: Option<String>,
    /// The binary's SHA-256.
    pub sha256: Option<[u8; 32]>,
    /// The release's signature text.
    pub signature: Option<String>,
    /// Install on agents that are not older too (once each).
    pub force: bool,
    /// How the rollout proceeds.
    pub strategy: Strategy,
    /// Which agents; `None`: all.
    pub regions: Option<RegionMatcher>,
    /// Who asks (the credential's identity).
    pub actor: String,
    /// From where.
    pub remote: String,
}

/// Why the server did not start or change a rollout: the status to answer and what to say.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct UpgradeRefusal {
    /// The HTTP status.
    pub status: StatusCode,
    /// What is wrong, for the operator.
    pub detail: String,
}

/// What the upgrade endpoints ask of the server.
#[async_trait::async_trait]
pub trait UpgradeApi: Send + Sync {
    /// Downloads and checks the binary, then starts the rollout: its JSON view.
    async fn start_upgrade(
        &self,
        intake: UpgradeIntake,
    ) -> Result<serde_json::Value, UpgradeRefusal>;
    /// The current (or last) rollout's JSON view; `null` when there has been none.
    async fn upgrade_status(&self) -> serde_json::Value;
    /// Pauses, resumes or aborts the rollout: its JSON view after.
    async fn control_upgrade(
        &self,
        control: Control,
        actor: String,
        remote: String,
    ) -> Result<serde_json::Value, UpgradeRefusal>;
}

/// The Go request, and our optional fields.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpgradeRequest {
    #[serde(rename = "downloadURL")]
    download_url: Option<String>,
    md5_check: Option<String>,
    version: Option<String>,
    #[serde(default)]
    force: bool,
    sha256: Option<String>,
    signature: Option<String>,
    strategy: Option<StrategyRequest>,
    region: Option<String>,
    expr: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StrategyRequest {
    canary: Option<u32>,
    batch: Option<serde_json::Value>,
    max_failures: Option<u32>,
    soak: Option<serde_json::Value>,
}

fn hex_digest<const N: usize>(field: &str, text: &str) -> Result<[u8; N], String> {
    decode_hex(text.trim())
        .filter(|bytes| bytes.len() == N)
        .and_then(|bytes| <[u8; N]>::try_from(bytes.as_slice()).ok())
        .ok_or_else(|| format!("{field}: expected {} hexadecimal digits", N * 2))
}

/// The intake a request asks for, or what is wrong with it (naming the field).
fn intake_of(
    request: UpgradeRequest,
    actor: String,
    remote: String,
) -> Result<UpgradeIntake, String> {
    let download_url = request
        .download_url
        .filter(|u| !u.trim().is_empty())
        .ok_or("downloadURL: missing (the Go request is {\"downloadURL\",\"md5Check\",\"version\",\"force\"})")?;
    let download_url = download_url.trim().to_owned();
    if download_url.len() > MAX_URL_LEN {
        return Err(format!("downloadURL: longer than {MAX_URL_LEN} bytes"));
    }
    let rest = download_url
        .strip_prefix("https://")
        .or_else(|| download_url.strip_prefix("http://"))
        .ok_or("downloadURL: not an http:// or https:// URL")?;
    if rest.split(['/', '?', '#']).next().is_none_or(str::is_empty) {
        return Err("downloadURL: no host".into());
    }
    let version = request
        .version
        .ok_or("version: missing (the version the new binary reports)")?
        .parse::<Version>()
        .map_err(|e| format!("version: {e}"))?;
    let md5 = request
        .md5_check
        .filter(|m| !m.trim().is_empty())
        .map(|m| hex_digest::<16>("md5Check", &m).map(|_| m.trim().to_ascii_lowercase()))
        .transpose()?;
    let sha256 = request
        .sha256
        .filter(|s| !s.trim().is_empty())
        .map(|s| hex_digest::<32>("sha256", &s))
        .transpose()?;
    let signature = request.signature.filter(|s| !s.trim().is_empty());
    if signature
        .as_ref()
        .is_some_and(|s| s.len() > probermesh_core::wire::MAX_TEXT_LEN)
    {
        return Err("signature: longer than 8 KiB".into());
    }
    let mut strategy = Strategy::default();
    if let Some(asked) = request.strategy {
        if let Some(canary) = asked.canary {
            if canary > MAX_CANARIES {
                return Err(format!("strategy.canary: at most {MAX_CANARIES}"));
            }
            strategy.canary = canary;
        }
        if let Some(batch) = asked.batch {
            strategy.batch = match &batch {
                serde_json::Value::Number(n) => n
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .map(BatchSize::Agents)
                    .ok_or("strategy.batch: a number of agents is 1 or more")?,
                serde_json::Value::String(text) => text
                    .parse::<BatchSize>()
                    .map_err(|e| format!("strategy.batch: {e}"))?,
                _ => {
                    return Err(
                        "strategy.batch: a number of agents or a percentage (\"25%\")".into(),
                    );
                }
            };
        }
        if let Some(max) = asked.max_failures {
            strategy.max_failures = max;
        }
        if let Some(soak) = asked.soak {
            strategy.soak = match &soak {
                serde_json::Value::String(text) => {
                    parse_duration(text).map_err(|e| format!("strategy.soak: {e}"))?
                }
                serde_json::Value::Number(n) => n
                    .as_f64()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or("strategy.soak: a number of seconds")?,
                _ => return Err("strategy.soak: a duration (\"30s\") or seconds".into()),
            };
            if strategy.soak > MAX_SOAK {
                return Err("strategy.soak: at most 24h".into());
            }
        }
    }
    let regions = match (request.region, request.expr) {
        (None, None) => None,
        (Some(pattern), op) => Some(
            RegionMatcher::new(op.as_deref().unwrap_or("=~"), &pattern)
                .map_err(|e| format!("region: {e}"))?,
        ),
        (None, Some(_)) => return Err("region: expr is given without a region".into()),
    };
    Ok(UpgradeIntake {
        download_url,
        version,
        md5,
        sha256,
        signature,
        force: request.force,
        strategy,
        regions,
        actor,
        remote,
    })
}

/// `/-/upgrade` and `/-/upgrade/<control>`.
pub(super) async fn route(
    request: Request<Incoming>,
    remote: SocketAddr,
    endpoints: &Endpoints,
) -> Response<Bytes> {
    let Some(api) = endpoints.api.upgrade_api() else {
        return json(StatusCode::NOT_FOUND, "error", "no upgrades in this server");
    };
    let path = request.uri().path().to_owned();
    let control = match path.strip_prefix("/-/upgrade/") {
        None => None,
        Some("pause") => Some(Control::Pause),
        Some("resume") => Some(Control::Resume),
        Some("abort") => Some(Control::Abort),
        Some(_) => {
            return json(
                StatusCode::NOT_FOUND,
                "error",
                "/-/upgrade/<pause|resume|abort>",
            );
        }
    };
    let reading = control.is_none() && matches!(*request.method(), Method::GET | Method::HEAD);
    if !reading && !matches!(*request.method(), Method::POST | Method::PUT) {
        let mut response = json(
            StatusCode::METHOD_NOT_ALLOWED,
            "error",
            "POST /-/upgrade starts a rollout; GET /-/upgrade shows it; POST /-/upgrade/<pause|resume|abort> controls it",
        );
        let allow = if control.is_some() {
            "POST, PUT"
        } else {
            "GET, HEAD, POST, PUT"
        };
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        return response;
    }
    if let Err(why) = authorize(request.headers(), endpoints.token.as_ref()) {
        return json_unauthorized(endpoints, remote, &path, why);
    }
    let actor = actor_of(endpoints);
    if reading {
        return json(StatusCode::OK, "success", api.upgrade_status().await);
    }
    if let Some(control) = control {
        return match api
            .control_upgrade(control, actor, remote.to_string())
            .await
        {
            Ok(view) => json(StatusCode::OK, "success", view),
            Err(refusal) => json(refusal.status, "error", refusal.detail),
        };
    }
    let body = match Limited::new(request.into_body(), MAX_UPGRADE_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                "upgrade json decode failed",
                format!(
                    "the body could not be read within {MAX_UPGRADE_REQUEST_BYTES} bytes: {error}"
                ),
            );
        }
    };
    let parsed = serde_json::from_slice::<UpgradeRequest>(&body)
        .map_err(|e| e.to_string())
        .and_then(|request| intake_of(request, actor.clone(), remote.to_string()));
    let intake = match parsed {
        Ok(intake) => intake,
        Err(why) => {
            tracing::info!(%remote, why = %untrusted(why.as_bytes(), UNTRUSTED_MAX_BYTES), "/-/upgrade refused");
            return json(StatusCode::BAD_REQUEST, "upgrade json decode failed", why);
        }
    };
    match api.start_upgrade(intake).await {
        Ok(view) => json(StatusCode::OK, "success", view),
        Err(refusal) => json(refusal.status, "error", refusal.detail),
    }
}

/// The JSON of a rollout (`GET /-/upgrade`, and the answer to a POST): its release,
/// strategy, phase and every agent's state; `null` when there has been none.
#[must_use]
pub fn rollout_json(
    rollout: Option<&probermesh_core::upgrade::rollout::Rollout>,
) -> serde_json::Value {
    use probermesh_core::upgrade::rollout::Phase;
    let Some(r) = rollout else {
        return serde_json::Value::Null;
    };
    let mut counts = serde_json::Map::new();
    for (state, n) in r.counts() {
        counts.insert(state.label().into(), n.into());
    }
    let mut members: Vec<(
        &probermesh_core::model::AgentId,
        &probermesh_core::upgrade::rollout::Member,
    )> = r.members.iter().collect();
    // In the order they are (or will be) reached: batch, then place.
    members.sort_by_key(|(_, m)| (m.batch.unwrap_or(u32::MAX), m.order));
    let agents: Vec<serde_json::Value> = members
        .into_iter()
        .map(|(agent, m)| {
            serde_json::json!({
                "region": agent.region.as_str(),
                "ip": agent.ip.to_string(),
                "state": m.state.label(),
                "from_version": m.from_version,
                "reason": m.reason,
                "batch": m.batch,
                "received_bytes": m.received_bytes,
                "updated_at_ms": m.updated_at.as_millis(),
            })
        })
        .collect();
    serde_json::json!({
        "rollout_id": r.id,
        "version": r.release.version.to_string(),
        "phase": r.phase.label(),
        "reason": match &r.phase { Phase::Halted { reason } => Some(reason.as_str()), _ => None },
        "source": r.release.source,
        "size_bytes": r.release.size_bytes,
        "sha256": r.release.sha256.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "signed": r.release.signature.is_some(),
        "force": r.force,
        "strategy": {
            "canary": r.strategy.canary,
            "batch": r.strategy.batch.to_string(),
            "max_failures": r.strategy.max_failures,
            "soak": probermesh_core::probe_file::format_duration(r.strategy.soak),
        },
        "regions": r.regions.as_ref().map(|m| format!("{} {}", m.op(), m.pattern())),
        "actor": r.actor,
        "started_at_ms": r.started_at.as_millis(),
        "finished_at_ms": r.finished_at.map(probermesh_core::model::UnixMillis::as_millis),
        "batches_started": r.batches_started,
        "counts": counts,
        "agents": agents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<UpgradeIntake, String> {
        let request: UpgradeRequest = serde_json::from_str(body).map_err(|e| e.to_string())?;
        intake_of(request, "admin".into(), "127.0.0.1:1".into())
    }

    #[test]
    fn the_go_request_is_taken_with_defaults() {
        let intake = parse(r#"{"downloadURL":"http://198.18.0.1/probermesh","md5Check":"D41D8CD98F00B204E9800998ECF8427E","version":"0.0.10","force":false}"#)
            .expect("the Go shape");
        assert_eq!(
            intake.md5.as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(intake.version.to_string(), "0.0.10");
        assert_eq!(intake.strategy, Strategy::default());
        assert!(intake.regions.is_none() && intake.sha256.is_none() && !intake.force);
    }

    #[test]
    fn our_fields_are_read() {
        let intake = parse(&format!(
            r#"{{"downloadURL":"https://198.18.0.1/p","version":"v1.2.0","sha256":"{}","force":true,
               "strategy":{{"canary":2,"batch":"50%","max_failures":1,"soak":"1m"}},"region":"eu-.*"}}"#,
            "ab".repeat(32)
        ))
        .expect("ours");
        assert_eq!(intake.sha256, Some([0xab; 32]));
        assert_eq!(intake.strategy.canary, 2);
        assert_eq!(intake.strategy.batch, BatchSize::Percent(50));
        assert_eq!(intake.strategy.soak, Duration::from_secs(60));
        let regions = intake.regions.expect("regions");
        assert!(regions.matches(&probermesh_core::model::Region::new("eu-west").expect("region")));
        assert!(!regions.matches(&probermesh_core::model::Region::new("us-eu-x").expect("region")));
    }

    #[test]
    fn refusals_name_the_field() {
        for (body, expected) in [
            (r#"{"version":"1.0.0"}"#, "downloadURL: missing"),
            (
                r#"{"downloadURL":"ftp://x/y","version":"1.0.0"}"#,
                "downloadURL: not an http",
            ),
            (
                r#"{"downloadURL":"http:///y","version":"1.0.0"}"#,
                "downloadURL: no host",
            ),
            (r#"{"downloadURL":"http://h/y"}"#, "version: missing"),
            (
                r#"{"downloadURL":"http://h/y","version":"1.0"}"#,
                "version: \"1.0\" is not a semantic version",
            ),
            (
                r#"{"downloadURL":"http://h/y","version":"1.0.0","md5Check":"xyz"}"#,
                "md5Check: expected 32",
            ),
            (
                r#"{"downloadURL":"http://h/y","version":"1.0.0","sha256":"00"}"#,
                "sha256: expected 64",
            ),
            (
                r#"{"downloadURL":"http://h/y","version":"1.0.0","strategy":{"batch":0}}"#,
                "strategy.batch",
            ),
            (
                r#"{"downloadURL":"http://h/y","version":"1.0.0","strategy":{"soak":"forever"}}"#,
                "strategy.soak",
            ),
            (
                r#"{"downloadURL":"http://h/y","version":"1.0.0","strategy":{"canary":1000}}"#,
                "strategy.canary",
            ),
            (
                r#"{"downloadURL":"http://h/y","version":"1.0.0","strategy":{"batchsize":2}}"#,
                "unknown field `batchsize`",
            ),
            (
                r#"{"downloadURL":"http://h/y","version":"1.0.0","expr":"="}"#,
                "region: expr is given",
            ),
            (
                r#"{"downloadURL":"http://h/y","version":"1.0.0","region":"(","expr":"=~"}"#,
                "region: region pattern",
            ),
        ] {
            let error = parse(body).expect_err(body);
            assert!(error.contains(expected), "{body}: {error}");
        }
    }
}
