//! The mesh page and its API on the server's HTTP port (issue 16): `GET /` and `/mesh` (the
//! page), `/mesh.js` and `/mesh.css` (embedded, no CDN), `GET /api/v1/mesh` (the view as
//! versioned JSON) and `GET /api/v1/mesh/pair?source=..&target=..` (a pair's history and
//! breakdown). Read-only. Public like `/metrics`, unless `AdminLimits::mesh_requires_token`.
//!
//! Safety: every answer carries a strict Content-Security-Policy and `nosniff`; the page's
//! script builds the DOM with `textContent` only, so names, URLs and reasons that came from
//! outside are never markup. The view is core's (`probermesh_core::mesh`); this module only
//! turns it into JSON.

use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use probermesh_core::aggregate::{IcmpMember, IcmpOutlier};
use probermesh_core::mesh::{
    CellState, HistoryPoint, HttpRow, MeshCell, MeshView, PairView, THRESHOLDS, stale_after,
};
use probermesh_core::model::Region;
use serde::Serialize;

use super::{Endpoints, authorize, text};

/// The version of the JSON (`"version"` in every answer); a change that removes or renames a
/// field bumps it and moves the API to `/api/v2/`.
pub const MESH_API_VERSION: u32 = 1;

/// The Content-Security-Policy of every mesh answer.
pub const MESH_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                            connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                            form-action 'none'; frame-ancestors 'none'";

const PAGE_HTML: &str = include_str!("assets/mesh.html");
const PAGE_JS: &str = include_str!("assets/mesh.js");
const PAGE_CSS: &str = include_str!("assets/mesh.css");

/// The longest query `/api/v1/mesh/pair` reads: two region names percent-encoded at worst
/// (three bytes a byte), their keys, and some slack for other parameters.
const MAX_PAIR_QUERY_BYTES: usize = 2 * (3 * probermesh_core::model::region::MAX_REGION_LEN) + 64;

/// Whether `path` is one of this module's.
pub(super) fn is_mesh_path(path: &str) -> bool {
    matches!(
        path,
        "/" | "/mesh" | "/mesh.js" | "/mesh.css" | "/api/v1/mesh" | "/api/v1/mesh/pair"
    )
}

fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

#[derive(Serialize)]
struct CellJson<'a> {
    source: &'a str,
    target: &'a str,
    state: &'static str,
    left_out: usize,
    loss_ratio: Option<f64>,
    rtt_seconds: Option<f64>,
    rtt_p50_seconds: Option<f64>,
    rtt_p90_seconds: Option<f64>,
    jitter_seconds: Option<f64>,
    failed_results: u64,
    updated_at_unix_ms: Option<u64>,
}

impl<'a> From<&'a MeshCell> for CellJson<'a> {
    fn from(cell: &'a MeshCell) -> Self {
        Self {
            source: cell.source.as_str(),
            target: cell.target.as_str(),
            state: cell.state.as_str(),
            left_out: match cell.state {
                CellState::Partial { left_out } => left_out,
                _ => 0,
            },
            loss_ratio: cell.metrics.loss_ratio,
            rtt_seconds: secs(cell.metrics.rtt),
            rtt_p50_seconds: secs(cell.metrics.rtt_p50),
            rtt_p90_seconds: secs(cell.metrics.rtt_p90),
            jitter_seconds: secs(cell.metrics.jitter),
            failed_results: cell.failed_results,
            updated_at_unix_ms: cell.updated_at.map(|t| t.as_millis()),
        }
    }
}

#[derive(Serialize)]
struct PhasesJson {
    resolve: f64,
    connect: f64,
    tls: f64,
    processing: f64,
    transfer: f64,
}

#[derive(Serialize)]
struct HttpJson<'a> {
    source: &'a str,
    target_region: &'a str,
    url: &'a str,
    phases_seconds: Option<PhasesJson>,
    status_code: u16,
    failed_results: u64,
    failure_reason: &'a str,
    tls_version: Option<&'static str>,
    cert_expiry_unix_seconds: Option<i64>,
    left_out: &'a [String],
    stale: bool,
    updated_at_unix_ms: u64,
}

impl<'a> From<&'a HttpRow> for HttpJson<'a> {
    fn from(row: &'a HttpRow) -> Self {
        Self {
            source: row.source.as_str(),
            target_region: row.target_region.as_str(),
            url: &row.url,
            phases_seconds: row.phases.map(|p| PhasesJson {
                resolve: p[0].as_secs_f64(),
                connect: p[1].as_secs_f64(),
                tls: p[2].as_secs_f64(),
                processing: p[3].as_secs_f64(),
                transfer: p[4].as_secs_f64(),
            }),
            status_code: row.status_code,
            failed_results: row.failed_results,
            failure_reason: &row.failure_reason,
            tls_version: row.tls_version,
            cert_expiry_unix_seconds: row.cert_expiry_unix_seconds,
            left_out: &row.left_out,
            stale: row.stale,
            updated_at_unix_ms: row.updated_at.as_millis(),
        }
    }
}

#[derive(Serialize)]
struct AgentJson {
    region: String,
    ip: String,
    version: String,
    alive: bool,
    last_heartbeat_unix_ms: u64,
}

#[derive(Serialize)]
struct ThresholdsJson {
    loss_ratio: [f64; 3],
    rtt_seconds: [f64; 3],
    jitter_seconds: [f64; 3],
}

fn thresholds() -> ThresholdsJson {
    ThresholdsJson {
        loss_ratio: THRESHOLDS.loss_ratio,
        rtt_seconds: THRESHOLDS.rtt.map(|d| d.as_secs_f64()),
        jitter_seconds: THRESHOLDS.jitter.map(|d| d.as_secs_f64()),
    }
}

#[derive(Serialize)]
struct MeshJson<'a> {
    version: u32,
    generated_at_unix_ms: u64,
    window_seconds: f64,
    stale_after_seconds: f64,
    notice: Option<&'a str>,
    thresholds: ThresholdsJson,
    regions: Vec<&'a str>,
    cells: Vec<CellJson<'a>>,
    http: Vec<HttpJson<'a>>,
    agents: Vec<AgentJson>,
}

/// `<`, `>` and `&` escaped as `\u003c`, `\u003e` and `\u0026`: still the same JSON (they
/// only occur inside strings), and no markup even if something reads it as HTML.
pub(super) fn html_safe(json: String) -> String {
    if !json.contains(['<', '>', '&']) {
        return json;
    }
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// `/api/v1/mesh`: the view as JSON (documented in docs/mesh.md).
#[must_use]
pub fn mesh_json(view: &MeshView) -> String {
    let json = MeshJson {
        version: MESH_API_VERSION,
        generated_at_unix_ms: view.generated_at.as_millis(),
        window_seconds: view.window.as_secs_f64(),
        stale_after_seconds: stale_after(view.window).as_secs_f64(),
        notice: view.notice.as_deref(),
        thresholds: thresholds(),
        regions: view.regions.iter().map(Region::as_str).collect(),
        cells: view.cells.iter().map(CellJson::from).collect(),
        http: view.http.iter().map(HttpJson::from).collect(),
        agents: view
            .agents
            .iter()
            .map(|a| AgentJson {
                region: a.agent.region.to_string(),
                ip: a.agent.ip.to_string(),
                version: a.version.to_string(),
                alive: a.alive,
                last_heartbeat_unix_ms: a.last_heartbeat.as_millis(),
            })
            .collect(),
    };
    html_safe(serde_json::to_string(&json).unwrap_or_else(|_| String::from("{}")))
}

#[derive(Serialize)]
struct PointJson {
    at_unix_ms: u64,
    loss_ratio: Option<f64>,
    rtt_seconds: Option<f64>,
    rtt_p50_seconds: Option<f64>,
    rtt_p90_seconds: Option<f64>,
    jitter_seconds: Option<f64>,
    failed_results: u64,
    left_out: usize,
}

impl From<&HistoryPoint> for PointJson {
    fn from(p: &HistoryPoint) -> Self {
        Self {
            at_unix_ms: p.at.as_millis(),
            loss_ratio: p.loss_ratio,
            rtt_seconds: secs(p.rtt),
            rtt_p50_seconds: secs(p.rtt_p50),
            rtt_p90_seconds: secs(p.rtt_p90),
            jitter_seconds: secs(p.jitter),
            failed_results: p.failed_results,
            left_out: p.left_out,
        }
    }
}

#[derive(Serialize)]
struct MemberJson<'a> {
    role: &'static str,
    host: &'a str,
    loss_ratio: Option<f64>,
    rtt_seconds: Option<f64>,
    left_out: bool,
}

impl<'a> From<&'a IcmpMember> for MemberJson<'a> {
    fn from(m: &'a IcmpMember) -> Self {
        let (role, host) = match &m.member {
            IcmpOutlier::Source(host) => ("source", host.as_str()),
            IcmpOutlier::Target(host) => ("target", host.as_str()),
        };
        Self {
            role,
            host,
            loss_ratio: m.loss_ratio,
            rtt_seconds: m.rtt_seconds,
            left_out: m.left_out,
        }
    }
}

#[derive(Serialize)]
struct PairJson<'a> {
    version: u32,
    window_seconds: f64,
    cell: CellJson<'a>,
    history_capacity: usize,
    history: Vec<PointJson>,
    members: Vec<MemberJson<'a>>,
}

/// `/api/v1/mesh/pair`: a pair's cell, history (oldest first) and breakdown as JSON.
#[must_use]
pub fn pair_json(page: &PairView) -> String {
    let json = PairJson {
        version: MESH_API_VERSION,
        window_seconds: page.window.as_secs_f64(),
        cell: CellJson::from(&page.cell),
        history_capacity: page.history_capacity,
        history: page.history.iter().map(PointJson::from).collect(),
        members: page.members.iter().map(MemberJson::from).collect(),
    };
    html_safe(serde_json::to_string(&json).unwrap_or_else(|_| String::from("{}")))
}

/// The mesh answers' headers: CSP, nosniff, no caching of data, no referrer.
pub(super) fn secured(
    mut response: Response<Bytes>,
    content_type: &'static str,
) -> Response<Bytes> {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(MESH_CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The value of `name` in a query string (percent-decoded; `+` is a space).
pub(super) fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers a mesh path (see [`is_mesh_path`]).
pub(super) async fn route(
    request: Request<Incoming>,
    remote: std::net::SocketAddr,
    endpoints: &Endpoints,
) -> Response<Bytes> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the mesh view is read-only: GET only\n",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return secured(response, "text/plain; charset=utf-8");
    }
    let path = request.uri().path();
    match path {
        "/" | "/mesh" => {
            return secured(text(StatusCode::OK, PAGE_HTML), "text/html; charset=utf-8");
        }
        "/mesh.js" => {
            return secured(
                text(StatusCode::OK, PAGE_JS),
                "text/javascript; charset=utf-8",
            );
        }
        "/mesh.css" => {
            return secured(text(StatusCode::OK, PAGE_CSS), "text/css; charset=utf-8");
        }
        _ => {}
    }
    if let Some(refused) = refuse_data(&request, remote, endpoints) {
        return refused;
    }
    let json = |status, body: String| secured(text(status, body), "application/json");
    let error = |status, message: &str| {
        json(
            status,
            serde_json::json!({ "version": MESH_API_VERSION, "error": message }).to_string(),
        )
    };
    if path == "/api/v1/mesh" {
        return match endpoints.mesh_body().await {
            Ok(Some(body)) => secured(text(StatusCode::OK, body), "application/json"),
            Ok(None) => error(StatusCode::NOT_FOUND, "this server has no mesh view"),
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "building the view failed",
            ),
        };
    }
    // Bounded before any decoding or lookup: two region names, percent-encoded at worst.
    let query = request.uri().query().unwrap_or("");
    if query.len() > MAX_PAIR_QUERY_BYTES {
        return error(StatusCode::BAD_REQUEST, "query too long");
    }
    let region = |name: &'static str| {
        query_value(query, name)
            .and_then(|value| Region::new(&value).ok())
            .ok_or(name)
    };
    let (source, target) = match (region("source"), region("target")) {
        (Ok(source), Ok(target)) => (source, target),
        (Err(name), _) | (_, Err(name)) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("{name}: missing or not a region name"),
            );
        }
    };
    match endpoints.api.mesh_pair(&source, &target) {
        Some(page) => json(StatusCode::OK, pair_json(&page)),
        None => error(StatusCode::NOT_FOUND, "no such region pair"),
    }
}

/// The mesh data's access rule (`/api/v1/mesh*`, `/api/v1/traces`): behind the admin token
/// when the server was asked to (and refused when no token is configured at all, rather than
/// served as if none were asked for). Refusals are logged, at most one line per interval, as
/// the other admin endpoints do. `None`: served.
pub(super) fn refuse_data(
    request: &Request<Incoming>,
    remote: std::net::SocketAddr,
    endpoints: &Endpoints,
) -> Option<Response<Bytes>> {
    let refused = endpoints
        .mesh_requires_token
        .then(|| match endpoints.token.as_ref() {
            Some(token) => authorize(request.headers(), Some(token))
                .err()
                .map(|why| why.as_str()),
            None => Some("no admin token is configured"),
        });
    if let Some(Some(why)) = refused {
        if let Some(suppressed) = endpoints.logs.unauthorized.admit(std::time::Instant::now()) {
            tracing::warn!(
                %remote,
                reason = why,
                suppressed,
                "mesh data refused: -server.mesh.require-token and no valid bearer token"
            );
        }
        let mut response = text(StatusCode::UNAUTHORIZED, "{\"error\":\"unauthorized\"}");
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Some(secured(response, "application/json"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            query_value("source=eu%2Dwest&target=us+1", "source").as_deref(),
            Some("eu-west")
        );
        assert_eq!(
            query_value("source=eu&target=us+1", "target").as_deref(),
            Some("us 1")
        );
        assert_eq!(query_value("a=%zz%", "a").as_deref(), Some("%zz%"));
        assert_eq!(query_value("a=1", "b"), None);
    }
}
