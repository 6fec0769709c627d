//! `POST /-/trace` (an operator's path trace, issue 17) and `GET /api/v1/traces` (the
//! finished traces with their blame), so an operator in an incident can ask the mesh to trace
//! a failing pair and read where the loss starts without logging into an agent.
//!
//! - `POST /-/trace` (or `PUT`), modelled on `/-/task`: the admin bearer token first (401
//!   without it, nothing sent), a bounded body, the envelope `{code,msg,data}`. The body is
//!   `{"agent": "<region>/<ip>"}` or `{"source_region": "..", "target_region": ".."}`, with
//!   optional `"target"` (an IP address), `"rounds"` and `"max_hops"` (within what the wire
//!   carries). Answers 202 with `{id, agent, target, status}`, 400 naming the field, 404 when
//!   no such agent or no agent that takes traces (or no address to trace to), 409 when the
//!   agent (every candidate) has a trace in flight, 503 when tracing is off. Every request,
//!   refused ones included, is logged as an audit line with its actor and peer; the desk
//!   counts runs and refusals (`prober_server_trace_*`).
//! - `GET /api/v1/traces?source_region=&target_region=&agent=&id=&limit=`: records newest
//!   first with their verdict and hops, and the matching traces still in flight; under the
//!   mesh data's access rule (`-server.mesh.require-token`). `limit` is at most
//!   [`MAX_TRACES_LIMIT`]; with `id`, 404 when the server neither keeps nor runs it. With
//!   tracing off the answer is empty with `"tracing": false` (so the pair page makes no
//!   failed request), and 404 for an `id`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use probermesh_core::link::TraceHop;
use probermesh_core::model::{AgentId, Region, UnixMillis};
use probermesh_core::server::{OperatorAsk, OperatorTraceError};
use probermesh_core::trace::blame::Blame;
use probermesh_core::trace::store::{TraceOutcome, TraceQuery, TraceRecord};
use probermesh_core::trace::trigger::{InFlight, PickError, TraceShape};
use probermesh_core::trace::{MAX_HOPS, MAX_ROUNDS};
use serde::Deserialize;

use super::task::{actor_of, json, json_unauthorized};
use super::{Endpoints, authorize};
use crate::log_limit::{UNTRUSTED_MAX_BYTES, untrusted};

/// The largest `/-/trace` request body, in bytes (a few names and numbers).
pub const MAX_TRACE_REQUEST_BYTES: usize = 4 * 1024;
/// The most records one `/api/v1/traces` answer holds.
pub const MAX_TRACES_LIMIT: usize = 100;
/// Records an answer holds without `limit`.
pub const DEFAULT_TRACES_LIMIT: usize = 20;
/// The longest query `/api/v1/traces` reads.
const MAX_TRACES_QUERY_BYTES: usize = 1024;
/// The version of the `/api/v1/traces` JSON.
pub const TRACES_API_VERSION: u32 = 1;

/// A trace the server sent.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TraceAccepted {
    /// Its id (`GET /api/v1/traces?id=`).
    pub id: u64,
    /// Who runs it.
    pub agent: AgentId,
    /// Where to.
    pub target: IpAddr,
}

/// The kept records a query selects (newest first) and the traces in flight, by id.
pub type TraceListing = (Vec<TraceRecord>, Vec<(u64, InFlight)>);

/// What the trace endpoints ask of the server.
#[async_trait::async_trait]
pub trait TraceApi: Send + Sync {
    /// The shape a trace gets without `rounds` and `max_hops` (`None`: tracing is off).
    fn trace_shape(&self) -> Option<TraceShape>;
    /// Sends an operator's trace (counted by the desk; the endpoint logs the audit line).
    async fn request_trace(&self, ask: OperatorAsk) -> Result<TraceAccepted, OperatorTraceError>;
    /// The kept records `query` selects, newest first, and the traces in flight (by id)
    /// (`None`: tracing is off).
    fn trace_records(&self, query: &TraceQuery) -> Option<TraceListing>;
    /// The server's clock.
    fn now(&self) -> UnixMillis;
}

/// The request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceBody {
    agent: Option<String>,
    source_region: Option<String>,
    target_region: Option<String>,
    target: Option<String>,
    rounds: Option<serde_json::Value>,
    max_hops: Option<serde_json::Value>,
}

/// `"<region>/<ip>"`, as agents are named everywhere.
fn parse_agent(text: &str) -> Option<AgentId> {
    let (region, ip) = text.trim().rsplit_once('/')?;
    Some(AgentId::new(Region::new(region).ok()?, ip.parse().ok()?))
}

/// A whole number in `1..=max` named `field`.
fn count(field: &str, value: Option<&serde_json::Value>, max: u64) -> Result<Option<u64>, String> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .filter(|n| (1..=max).contains(n))
            .map(Some)
            .ok_or_else(|| format!("{field}: a whole number from 1 to {max}")),
    }
}

/// What the body asks for, or what is wrong with it (naming the field).
fn ask_of(body: TraceBody, default: TraceShape) -> Result<OperatorAsk, String> {
    let region = |field: &str, value: Option<String>| {
        value
            .map(|v| Region::new(v.trim()).map_err(|e| format!("{field}: {e}")))
            .transpose()
    };
    let agent = body
        .agent
        .map(|text| {
            parse_agent(&text).ok_or_else(|| {
                "agent: expected <region>/<ip>, as /api/v1/mesh names agents".to_owned()
            })
        })
        .transpose()?;
    let source_region = region("source_region", body.source_region)?;
    let target_region = region("target_region", body.target_region)?;
    let target = body
        .target
        .map(|t| {
            t.trim()
                .parse::<IpAddr>()
                .map_err(|_| "target: not an IP address".to_owned())
        })
        .transpose()?;
    match (&agent, &source_region) {
        (Some(_), Some(_)) => {
            return Err("source_region: give either agent or source_region, not both".into());
        }
        (None, None) => return Err("source_region: missing (give agent or source_region)".into()),
        _ => {}
    }
    if let (Some(agent), Some(target)) = (&agent, target)
        && agent.ip == target
    {
        return Err("target: the agent's own address".into());
    }
    if target.is_none() && target_region.is_none() {
        return Err("target_region: missing (give target_region or target)".into());
    }
    let rounds = count("rounds", body.rounds.as_ref(), u64::from(MAX_ROUNDS))?;
    let max_hops = count("max_hops", body.max_hops.as_ref(), u64::from(MAX_HOPS))?;
    let shape = (rounds.is_some() || max_hops.is_some()).then(|| TraceShape {
        rounds: rounds
            .and_then(|n| u16::try_from(n).ok())
            .unwrap_or(default.rounds),
        max_hops: max_hops
            .and_then(|n| u8::try_from(n).ok())
            .unwrap_or(default.max_hops),
        ..default
    });
    Ok(OperatorAsk {
        agent,
        source_region,
        target_region,
        target,
        shape,
    })
}

fn audit(actor: &str, remote: SocketAddr, outcome: &str) {
    tracing::warn!(
        actor,
        %remote,
        outcome = %untrusted(outcome.as_bytes(), UNTRUSTED_MAX_BYTES),
        "/-/trace"
    );
}

/// `POST /-/trace`.
pub(super) async fn route(
    request: Request<Incoming>,
    remote: SocketAddr,
    endpoints: &Endpoints,
) -> Response<Bytes> {
    if !matches!(*request.method(), Method::POST | Method::PUT) {
        let mut response = json(
            StatusCode::METHOD_NOT_ALLOWED,
            "error",
            "POST /-/trace asks for a trace; GET /api/v1/traces shows them",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST, PUT"));
        return response;
    }
    if let Err(why) = authorize(request.headers(), endpoints.token.as_ref()) {
        return json_unauthorized(endpoints, remote, "/-/trace", why);
    }
    let actor = actor_of(endpoints);
    let Some(shape) = endpoints
        .api
        .trace_api()
        .and_then(|api| api.trace_shape().map(|shape| (api, shape)))
    else {
        audit(&actor, remote, "disabled: path tracing is off");
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            "error",
            "path tracing is off on this server (-server.trace=false)",
        );
    };
    let (api, default_shape) = shape;
    let body = match Limited::new(request.into_body(), MAX_TRACE_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            audit(&actor, remote, "bad_request: unreadable or too large body");
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                "error",
                format!(
                    "the body could not be read within {MAX_TRACE_REQUEST_BYTES} bytes: {error}"
                ),
            );
        }
    };
    let parsed = serde_json::from_slice::<TraceBody>(&body)
        .map_err(|e| e.to_string())
        .and_then(|body| ask_of(body, default_shape));
    let ask = match parsed {
        Ok(ask) => ask,
        Err(why) => {
            audit(&actor, remote, &format!("bad_request: {why}"));
            return json(StatusCode::BAD_REQUEST, "error", why);
        }
    };
    match api.request_trace(ask).await {
        Ok(accepted) => {
            audit(
                &actor,
                remote,
                &format!(
                    "accepted: trace {} sent to {} towards {}",
                    accepted.id, accepted.agent, accepted.target
                ),
            );
            json(
                StatusCode::ACCEPTED,
                "success",
                serde_json::json!({
                    "id": accepted.id,
                    "agent": accepted.agent.to_string(),
                    "target": accepted.target.to_string(),
                    "status": format!("/api/v1/traces?id={}", accepted.id),
                }),
            )
        }
        Err(error) => {
            let status = match error {
                OperatorTraceError::Off => StatusCode::SERVICE_UNAVAILABLE,
                OperatorTraceError::Pick(PickError::Busy) => StatusCode::CONFLICT,
                OperatorTraceError::Pick(PickError::NoTracer | PickError::NoTarget) => {
                    StatusCode::NOT_FOUND
                }
            };
            audit(&actor, remote, &format!("refused: {error}"));
            json(status, "error", error.to_string())
        }
    }
}

fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

fn hop_json(hop: &TraceHop) -> serde_json::Value {
    #[allow(clippy::cast_precision_loss)]
    let loss = (hop.sent > 0).then(|| 1.0 - f64::from(hop.received) / f64::from(hop.sent));
    serde_json::json!({
        "ttl": hop.ttl,
        "host": hop.addr.map(|a| a.to_string()),
        "sent": hop.sent,
        "received": hop.received,
        "loss_ratio": loss,
        "rtt_best_seconds": secs(hop.rtt_best),
        "rtt_mean_seconds": secs(hop.rtt_mean),
        "rtt_worst_seconds": secs(hop.rtt_worst),
        "rtt_stddev_seconds": secs(hop.rtt_stddev),
    })
}

/// One record as `/api/v1/traces` shows it (documented in docs/operations.md).
#[must_use]
pub fn record_json(record: &TraceRecord) -> serde_json::Value {
    let mut value = serde_json::json!({
        "id": record.id,
        "state": "done",
        "source_region": record.pair.as_ref().map(|p| p.source.as_str()),
        "target_region": record.pair.as_ref().map(|p| p.target.as_str()),
        "reason": record.reason.label(),
        "direction": record.direction.map(|d| d.label()),
        "agent": record.agent.to_string(),
        "target": record.target.to_string(),
        "started_at_unix_ms": record.started_at.as_millis(),
        "ended_at_unix_ms": record.ended_at.as_millis(),
        "outcome": record.outcome.label(),
        "error": null,
        "blame": null,
        "hops": [],
    });
    if let TraceOutcome::Failed { error } = &record.outcome {
        value["error"] = error.clone().into();
    }
    if let TraceOutcome::Reported { report, verdict } = &record.outcome {
        let (ttl, address, loss_ratio, last) = match &verdict.blame {
            Blame::Hop {
                ttl,
                address,
                loss_ratio,
            } => (
                Some(*ttl),
                Some(address.to_string()),
                Some(*loss_ratio),
                None,
            ),
            Blame::Unreachable {
                last_responding_ttl,
            } => (None, None, Some(1.0), *last_responding_ttl),
            Blame::Clean | Blame::RateLimitedOnly => (None, None, Some(0.0), None),
        };
        value["error"] = report.error.clone().into();
        value["blame"] = serde_json::json!({
            "kind": verdict.blame.label(),
            "hop": ttl,
            "address": address,
            "loss_ratio": loss_ratio,
            "last_responding_ttl": last,
            "reached_destination": verdict.reached_destination,
            "rate_limited_ttls": verdict.rate_limited_ttls,
            "silent_ttls": verdict.silent_ttls,
            "explanation": verdict.reason,
        });
        value["hops"] = report.hops.iter().map(hop_json).collect();
    }
    value
}

fn flight_json(id: u64, flight: &InFlight) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "state": "running",
        "source_region": flight.pair.as_ref().map(|p| p.source.as_str()),
        "target_region": flight.pair.as_ref().map(|p| p.target.as_str()),
        "reason": flight.reason.label(),
        "direction": flight.direction.map(|d| d.label()),
        "agent": flight.agent.to_string(),
        "target": flight.request.target.to_string(),
        "started_at_unix_ms": flight.started_at.as_millis(),
    })
}

/// The `/api/v1/traces` query, or the parameter that is wrong.
fn query_of(query: &str) -> Result<(TraceQuery, Option<u64>), String> {
    let value = |name: &str| super::mesh::query_value(query, name).filter(|v| !v.is_empty());
    let region = |name: &str| {
        value(name)
            .map(|v| Region::new(&v).map_err(|e| format!("{name}: {e}")))
            .transpose()
    };
    let agent = value("agent")
        .map(|v| parse_agent(&v).ok_or_else(|| "agent: expected <region>/<ip>".to_owned()))
        .transpose()?;
    let id = value("id")
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| "id: a trace id is a number".to_owned())
        })
        .transpose()?;
    let limit = value("limit")
        .map(|v| {
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_TRACES_LIMIT).contains(n))
                .ok_or_else(|| format!("limit: 1 to {MAX_TRACES_LIMIT}"))
        })
        .transpose()?
        .unwrap_or(DEFAULT_TRACES_LIMIT);
    let source = region("source_region")?;
    let target = region("target_region")?;
    Ok((
        TraceQuery {
            source,
            target,
            agent,
            limit: Some(limit),
            ..TraceQuery::default()
        },
        id,
    ))
}

/// The `/api/v1/traces` JSON of `records` and `in_flight`.
#[must_use]
pub fn traces_json(
    now: UnixMillis,
    records: &[TraceRecord],
    in_flight: &[(u64, InFlight)],
) -> String {
    let value = serde_json::json!({
        "version": TRACES_API_VERSION,
        "tracing": true,
        "generated_at_unix_ms": now.as_millis(),
        "traces": records.iter().map(record_json).collect::<Vec<_>>(),
        "in_flight": in_flight
            .iter()
            .map(|(id, flight)| flight_json(*id, flight))
            .collect::<Vec<_>>(),
    });
    super::mesh::html_safe(value.to_string())
}

/// `GET /api/v1/traces` (the access rule was checked by the caller).
pub(super) fn list(request: &Request<Incoming>, endpoints: &Endpoints) -> Response<Bytes> {
    let json =
        |status, body: String| super::mesh::secured(super::text(status, body), "application/json");
    let error = |status, message: &str| {
        json(
            status,
            serde_json::json!({ "version": TRACES_API_VERSION, "error": message }).to_string(),
        )
    };
    let query = request.uri().query().unwrap_or("");
    if query.len() > MAX_TRACES_QUERY_BYTES {
        return error(StatusCode::BAD_REQUEST, "query too long");
    }
    let (mut query, id) = match query_of(query) {
        Ok(parsed) => parsed,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    // One id: only its record is copied under the state's lock.
    query.id = id;
    let answer = endpoints
        .api
        .trace_api()
        .and_then(|api| Some((api.now(), api.trace_records(&query)?)));
    let Some((now, (mut records, mut in_flight))) = answer else {
        // Off: an empty answer that says so (the pair page shows it; no failed request).
        if let Some(id) = id {
            return error(
                StatusCode::NOT_FOUND,
                &format!("no trace {id}: path tracing is off on this server"),
            );
        }
        let body = serde_json::json!({
            "version": TRACES_API_VERSION,
            "tracing": false,
            "traces": [],
            "in_flight": [],
        });
        return json(StatusCode::OK, body.to_string());
    };
    if let Some(id) = id {
        records.retain(|r| r.id == id);
        records.truncate(1);
        in_flight.retain(|(i, _)| *i == id);
        if records.is_empty() && in_flight.is_empty() {
            return error(StatusCode::NOT_FOUND, &format!("no trace {id}"));
        }
    }
    json(StatusCode::OK, traces_json(now, &records, &in_flight))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> Result<OperatorAsk, String> {
        serde_json::from_str::<TraceBody>(text)
            .map_err(|e| e.to_string())
            .and_then(|b| ask_of(b, TraceShape::default()))
    }

    #[test]
    fn a_body_names_the_field_that_is_wrong() {
        for (text, field) in [
            (r#"{"agent":"nope"}"#, "agent:"),
            (
                r#"{"agent":"eu/198.18.1.1","source_region":"eu","target":"1.2.3.4"}"#,
                "source_region:",
            ),
            (r#"{}"#, "source_region:"),
            (r#"{"source_region":"eu"}"#, "target_region:"),
            (r#"{"agent":"eu/198.18.1.1"}"#, "target_region:"),
            (
                r#"{"agent":"eu/198.18.1.1","target":"198.18.1.1"}"#,
                "target:",
            ),
            (r#"{"source_region":"eu","target":"x"}"#, "target:"),
            (
                r#"{"source_region":"eu","target_region":"us","rounds":0}"#,
                "rounds:",
            ),
            (
                r#"{"source_region":"eu","target_region":"us","rounds":1001}"#,
                "rounds:",
            ),
            (
                r#"{"source_region":"eu","target_region":"us","rounds":"5"}"#,
                "rounds:",
            ),
            (
                r#"{"source_region":"eu","target_region":"us","max_hops":65}"#,
                "max_hops:",
            ),
            (
                r#"{"source_region":"eu","target_region":"us","max_hops":-1}"#,
                "max_hops:",
            ),
            (
                r#"{"source_region":"eu","target_region":"us","hops":3}"#,
                "hops",
            ),
        ] {
            let why = body(text).unwrap_err();
            assert!(why.contains(field), "{text}: {why}");
        }
    }

    #[test]
    fn a_good_body_becomes_an_ask() {
        let ask = body(r#"{"source_region":"eu","target_region":"us","rounds":5}"#).unwrap();
        assert_eq!(ask.source_region.unwrap().as_str(), "eu");
        assert_eq!(ask.target_region.unwrap().as_str(), "us");
        let shape = ask.shape.unwrap();
        assert_eq!((shape.rounds, shape.max_hops), (5, 30));
        let ask = body(r#"{"agent":"eu/198.18.1.1","target":"198.18.2.1"}"#).unwrap();
        assert_eq!(ask.agent.unwrap().to_string(), "eu/198.18.1.1");
        assert_eq!(ask.target, Some("198.18.2.1".parse().unwrap()));
        assert!(ask.shape.is_none());
    }

    #[test]
    fn a_query_is_bounded_and_names_the_parameter_that_is_wrong() {
        let (query, id) =
            query_of("source_region=eu&target_region=us&agent=eu%2F198.18.1.1&id=7&limit=3")
                .unwrap();
        assert_eq!(query.source.unwrap().as_str(), "eu");
        assert_eq!(query.agent.unwrap().to_string(), "eu/198.18.1.1");
        assert_eq!((id, query.limit), (Some(7), Some(3)));
        assert_eq!(query_of("").unwrap().0.limit, Some(DEFAULT_TRACES_LIMIT));
        for (text, name) in [
            ("limit=0", "limit:"),
            ("limit=101", "limit:"),
            ("id=x", "id:"),
            ("agent=x", "agent:"),
        ] {
            assert!(query_of(text).unwrap_err().contains(name), "{text}");
        }
    }
}
