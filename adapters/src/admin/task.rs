//! `/-/task` (the Go task dispatch, kept compatible and made safe) and `GET /-/task/<id>`.
//!
//! - `POST` (or `PUT`) `/-/task` with the Go JSON `{"region","expr","cmd"}`, plus optional
//!   `"timeout"` and `"ttl"` (seconds), `"confirm": true`, and for a signed task the parts
//!   its operator signed (`"id"`, `"expires_at_ms"`, `"timeout_ms"`, `"output_limit_bytes"`,
//!   `"signature"`, 128 hex digits). The admin bearer token is required first: without it the
//!   answer is 401 and nothing is dispatched; every submission, refused ones included, is
//!   audited and counted.
//! - The answer keeps the Go envelope `{code,msg,data}` (`msg` is `success` when accepted, as
//!   in Go), with real HTTP status codes, and `data` naming the task id and the agents it
//!   matched with their first states.
//! - `GET /-/task/<id>` (admin token too: outputs can be sensitive): each matched agent's
//!   state and output.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use probermesh_core::link::Signature;
use probermesh_core::model::{AgentId, UnixMillis};
use probermesh_core::task::book::{BookTask, SignedParts, Submission, SubmitError, Submitted};
use probermesh_core::task::signing::decode_hex;
use probermesh_core::task::{AuditAction, AuditEntry, TaskRecord, TaskState};
use serde::{Deserialize, Serialize};

use super::{Endpoints, authorize, text};
use crate::log_limit::{UNTRUSTED_MAX_BYTES, untrusted};

/// The largest `/-/task` request body, in bytes (a 64 KiB command and its JSON).
pub const MAX_TASK_REQUEST_BYTES: usize = 256 * 1024;

/// What `GET /-/task/<id>` shows: the book's entry (while the server keeps it) and the runs
/// filed in the archive.
#[derive(Clone, Debug)]
pub struct TaskView {
    /// The task in the book.
    pub task: Option<BookTask>,
    /// The finished runs, by agent.
    pub records: Vec<TaskRecord>,
}

/// What the task endpoints ask of the server.
#[async_trait::async_trait]
pub trait TaskApi: Send + Sync {
    /// Whether `-server.task` is on.
    fn tasks_enabled(&self) -> bool;
    /// Dispatches an authorized submission (audited and counted by the server).
    async fn submit_task(&self, submission: Submission) -> Result<Submitted, SubmitError>;
    /// Counts and audits a submission refused before the book (`unauthorized`, `disabled`).
    async fn refuse_task(&self, label: &'static str, entry: AuditEntry);
    /// A task by id.
    async fn task(&self, id: u64) -> Option<TaskView>;
    /// The server's clock.
    fn now(&self) -> UnixMillis;
}

/// The Go request, and our optional fields.
#[derive(Debug, Default, Deserialize)]
struct TaskRequest {
    region: Option<String>,
    expr: Option<String>,
    cmd: Option<String>,
    /// Seconds (unsigned tasks).
    timeout: Option<f64>,
    /// Seconds (unsigned tasks).
    ttl: Option<f64>,
    #[serde(default)]
    confirm: bool,
    id: Option<u64>,
    expires_at_ms: Option<u64>,
    timeout_ms: Option<u64>,
    output_limit_bytes: Option<usize>,
    signature: Option<String>,
}

#[derive(Serialize)]
struct Envelope<T: Serialize> {
    code: i64,
    msg: &'static str,
    data: T,
}

pub(super) fn json<T: Serialize>(
    status: StatusCode,
    msg: &'static str,
    data: T,
) -> Response<Bytes> {
    let code = i64::from(status.as_u16());
    let body = serde_json::to_vec(&Envelope { code, msg, data }).unwrap_or_default();
    let mut response = text(status, body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A JSON endpoint's answer to a request without the right bearer token: logged (at most one
/// line per interval) and `401` with `WWW-Authenticate: Bearer`.
pub(super) fn json_unauthorized(
    endpoints: &Endpoints,
    remote: SocketAddr,
    path: &str,
    why: super::Unauthorized,
) -> Response<Bytes> {
    if let Some(suppressed) = endpoints.logs.unauthorized.admit(Instant::now()) {
        tracing::warn!(%remote, reason = why.as_str(), suppressed, "{path} refused: missing or wrong bearer token");
    }
    let mut response = json(StatusCode::UNAUTHORIZED, "unauthorized", why.as_str());
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Who a request authorized with the configured token is, for the audit and the log.
pub(super) fn actor_of(endpoints: &Endpoints) -> String {
    endpoints
        .token
        .as_ref()
        .map_or_else(|| "anonymous".to_owned(), crate::secret::Token::identity)
}

fn seconds(field: &'static str, value: Option<f64>) -> Result<Option<Duration>, String> {
    match value {
        None => Ok(None),
        Some(v) if v.is_finite() && v > 0.0 && v <= 1e9 => Ok(Some(Duration::from_secs_f64(v))),
        Some(v) => Err(format!("{field}: {v} is not a positive number of seconds")),
    }
}

/// The submission a request asks for, or what is wrong with it (naming the field).
fn submission_of(
    request: TaskRequest,
    actor: String,
    remote: String,
) -> Result<Submission, String> {
    let field = |name: &'static str, value: Option<String>| {
        value.ok_or_else(|| {
            format!("{name}: missing (the Go request is {{\"region\",\"expr\",\"cmd\"}})")
        })
    };
    let signed = match request.signature {
        None => None,
        Some(signature) => {
            let bytes = decode_hex(signature.trim())
                .filter(|b| b.len() == 64)
                .ok_or("signature: expected 128 hexadecimal digits (an ed25519 signature)")?;
            let mut signature = [0; 64];
            signature.copy_from_slice(&bytes);
            Some(SignedParts {
                id: request.id.ok_or("id: a signed task names its id")?,
                expires_at: UnixMillis(
                    request
                        .expires_at_ms
                        .ok_or("expires_at_ms: a signed task names its expiry")?,
                ),
                timeout: Duration::from_millis(
                    request
                        .timeout_ms
                        .ok_or("timeout_ms: a signed task names its timeout")?,
                ),
                output_limit_bytes: request
                    .output_limit_bytes
                    .ok_or("output_limit_bytes: a signed task names its output limit")?,
                signature: Signature(signature),
            })
        }
    };
    Ok(Submission {
        op: field("expr", request.expr)?,
        pattern: field("region", request.region)?,
        command: field("cmd", request.cmd)?,
        timeout: seconds("timeout", request.timeout)?,
        lifetime: seconds("ttl", request.ttl)?,
        confirm: request.confirm,
        signed,
        actor,
        remote,
    })
}

fn agent_json(agent: &AgentId) -> serde_json::Value {
    serde_json::json!({"region": agent.region.as_str(), "ip": agent.ip.to_string()})
}

fn audit_of(now: UnixMillis, actor: &str, remote: SocketAddr, outcome: &str) -> AuditEntry {
    AuditEntry {
        at: now,
        action: AuditAction::Refused,
        actor: actor.to_owned(),
        remote: remote.to_string(),
        task_id: None,
        selector: String::new(),
        command: String::new(),
        signed: false,
        matched: Vec::new(),
        outcome: outcome.to_owned(),
    }
}

/// `/-/task` and `/-/task/<id>`.
pub(super) async fn route(
    request: Request<Incoming>,
    remote: SocketAddr,
    endpoints: &Endpoints,
) -> Response<Bytes> {
    let Some(api) = endpoints.api.task_api() else {
        return json(
            StatusCode::NOT_FOUND,
            "error",
            "no task dispatch in this server",
        );
    };
    let path = request.uri().path().to_owned();
    let status_of = path.strip_prefix("/-/task/").map(str::to_owned);
    let allowed = if status_of.is_some() {
        matches!(*request.method(), Method::GET | Method::HEAD)
    } else {
        matches!(*request.method(), Method::POST | Method::PUT)
    };
    if !allowed {
        let mut response = json(
            StatusCode::METHOD_NOT_ALLOWED,
            "error",
            "POST /-/task submits a task; GET /-/task/<id> shows one",
        );
        let allow = if status_of.is_some() {
            "GET, HEAD"
        } else {
            "POST, PUT"
        };
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        return response;
    }
    if let Err(why) = authorize(request.headers(), endpoints.token.as_ref()) {
        if status_of.is_none() {
            let entry = audit_of(
                api.now(),
                "anonymous",
                remote,
                &format!("unauthorized: {}", why.as_str()),
            );
            api.refuse_task("unauthorized", entry).await;
        }
        return json_unauthorized(endpoints, remote, &path, why);
    }
    let actor = actor_of(endpoints);
    if let Some(id) = status_of {
        return status(api.as_ref(), &id).await;
    }
    if !api.tasks_enabled() {
        let entry = audit_of(api.now(), &actor, remote, "disabled: -server.task is off");
        api.refuse_task("disabled", entry).await;
        return json(
            StatusCode::FORBIDDEN,
            "error",
            "Interface not open, use -server.task to open func",
        );
    }
    let body = match Limited::new(request.into_body(), MAX_TASK_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            let entry = audit_of(
                api.now(),
                &actor,
                remote,
                "bad_request: unreadable or too large body",
            );
            api.refuse_task("bad_request", entry).await;
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                "task req json decode failed",
                format!(
                    "the body could not be read within {MAX_TASK_REQUEST_BYTES} bytes: {error}"
                ),
            );
        }
    };
    let parsed = serde_json::from_slice::<TaskRequest>(&body)
        .map_err(|e| e.to_string())
        .and_then(|request| submission_of(request, actor.clone(), remote.to_string()));
    let submission = match parsed {
        Ok(submission) => submission,
        Err(why) => {
            let entry = audit_of(api.now(), &actor, remote, &format!("bad_request: {why}"));
            api.refuse_task("bad_request", entry).await;
            tracing::info!(%remote, why = %untrusted(why.as_bytes(), UNTRUSTED_MAX_BYTES), "/-/task refused");
            return json(StatusCode::BAD_REQUEST, "task req json decode failed", why);
        }
    };
    match api.submit_task(submission).await {
        Ok(submitted) => {
            let matched: Vec<serde_json::Value> = submitted
                .matched
                .iter()
                .map(|(agent, state, reason)| {
                    let mut value = agent_json(agent);
                    value["state"] = state.as_str().into();
                    value["reason"] = reason.clone().into();
                    value
                })
                .collect();
            json(
                StatusCode::OK,
                "success",
                serde_json::json!({
                    "task_id": submitted.id,
                    "expires_at_ms": submitted.expires_at.as_millis(),
                    "matched": matched,
                    "status": format!("/-/task/{}", submitted.id),
                }),
            )
        }
        Err(error) => {
            let (status, msg) = match &error {
                SubmitError::BadRequest {
                    field: "region", ..
                } => (StatusCode::BAD_REQUEST, "regexp.Compile failed"),
                SubmitError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "error"),
                SubmitError::NoAgent { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "no agent matched")
                }
                SubmitError::TooManyAgents { .. } | SubmitError::DuplicateId { .. } => {
                    (StatusCode::CONFLICT, "error")
                }
                SubmitError::Full { .. } => (StatusCode::SERVICE_UNAVAILABLE, "error"),
            };
            json(status, msg, error.to_string())
        }
    }
}

async fn status(api: &dyn TaskApi, id: &str) -> Response<Bytes> {
    let Ok(id) = id.parse::<u64>() else {
        return json(StatusCode::NOT_FOUND, "error", "a task id is a number");
    };
    let Some(view) = api.task(id).await else {
        return json(StatusCode::NOT_FOUND, "error", format!("no task {id}"));
    };
    json(StatusCode::OK, "success", view_json(id, &view))
}

/// The JSON of a task: what the book knows and each agent's run, with its output once filed.
#[must_use]
pub fn view_json(id: u64, view: &TaskView) -> serde_json::Value {
    let mut agents: Vec<serde_json::Value> = Vec::new();
    let record_of = |agent: &AgentId| view.records.iter().find(|r| &r.agent == agent);
    let mut seen: Vec<&AgentId> = Vec::new();
    if let Some(task) = &view.task {
        for (agent, run) in &task.runs {
            seen.push(agent);
            agents.push(run_json(
                agent,
                run.state,
                run.reason.as_deref(),
                record_of(agent),
            ));
        }
    }
    for record in &view.records {
        if !seen.contains(&&record.agent) {
            agents.push(run_json(
                &record.agent,
                record.state,
                record.reason.as_deref(),
                Some(record),
            ));
        }
    }
    let mut counts = serde_json::Map::new();
    for state in TaskState::ALL {
        let n = agents
            .iter()
            .filter(|a| a["state"] == state.as_str())
            .count();
        counts.insert(state.as_str().into(), n.into());
    }
    let mut value = serde_json::json!({
        "task_id": id,
        "agents": agents,
        "counts": counts,
    });
    if let Some(task) = &view.task {
        value["command"] = task.spec.command.clone().into();
        value["expr"] = task.spec.region_op.as_str().into();
        value["region"] = task.spec.region_pattern.clone().into();
        value["signed"] = task.spec.signature.is_some().into();
        value["actor"] = task.actor.clone().into();
        value["submitted_at_ms"] = task.submitted_at.as_millis().into();
        value["expires_at_ms"] = task.spec.expires_at.as_millis().into();
        value["timeout_ms"] = u64::try_from(task.spec.timeout.as_millis())
            .unwrap_or(u64::MAX)
            .into();
        value["finished"] = task.finished_at.is_some().into();
    } else if let Some(record) = view.records.first() {
        value["command"] = record.command.clone().into();
        value["finished"] = true.into();
    }
    value
}

fn run_json(
    agent: &AgentId,
    state: TaskState,
    reason: Option<&str>,
    record: Option<&TaskRecord>,
) -> serde_json::Value {
    let mut value = agent_json(agent);
    value["state"] = state.as_str().into();
    value["reason"] = reason.into();
    if let Some(record) = record {
        let output = &record.output;
        value["exit_code"] = output.exit_code.into();
        value["timed_out"] = output.timed_out.into();
        value["truncated"] = output.truncated.into();
        value["duration_ms"] = u64::try_from(output.duration.as_millis())
            .unwrap_or(u64::MAX)
            .into();
        value["stdout"] = String::from_utf8_lossy(&output.stdout).into_owned().into();
        value["stderr"] = String::from_utf8_lossy(&output.stderr).into_owned().into();
        value["finished_at_ms"] = record.finished_at.as_millis().into();
    }
    value
}
