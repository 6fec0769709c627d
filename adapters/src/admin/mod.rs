//! The server's HTTP endpoints (`-server.http.listen.addr`): `/metrics` for Prometheus, the
//! Go system's `/-/reload` and `/-/targets`, `/-/healthy` and `/-/ready` for probes of the
//! server itself, and the mesh page with its JSON API (the `mesh` submodule: `/`, `/mesh`,
//! `/api/v1/mesh`). The answers come from an [`AdminApi`] the server implements; this module
//! only speaks HTTP: routing, the bearer token of admin endpoints, and limits.
//!
//! Admin endpoints (`/-/reload`, `/-/task` and `GET /-/task/<id>` (the `task` submodule),
//! `/-/upgrade` and its controls (the `upgrade` submodule), `/-/trace` (the `trace`
//! submodule, which also serves `GET /api/v1/traces` under the mesh data's rule)) need
//! `Authorization: Bearer <token>` when a token is configured (the scheme in any case, as
//! RFC 7235 says); the token is compared in constant time ([`Token::matches`]) and never
//! logged. `/-/reload` reloads on `POST` and `PUT` only, as Prometheus does.
//!
//! Limits, so that no peer can take `/metrics` away from Prometheus:
//! - at most [`AdminLimits::max_connections`] connections; one more closes the oldest
//!   connection that is not in a request (one that is, when all are, is refused at once), so
//!   idle connections cannot lock a scrape out;
//! - an accept that fails (out of descriptors: `EMFILE`, `ENFILE`) closes the oldest idle
//!   connection and retries 1 ms later; when there is none to close, after a pause of 10 ms
//!   doubling to 1 s, instead of retrying at once forever;
//! - a request's headers within [`AdminLimits::header_read_timeout`] (an idle keep-alive
//!   connection included), in at most 64 KiB;
//! - `/-/targets` is rendered off the async workers, one rendering at a time, and kept while
//!   the server's [`AdminApi::targets_generation`] stays: parallel requests share one;
//! - what strangers cause in the log (refusals, closed connections, accept errors) is at most
//!   one line per [`AdminLimits::log_interval`] and kind, with the count of the lines left out,
//!   and names the peer's address; text they sent is escaped and cut short.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::errno::Errno;
use probermesh_core::model::{ProbeConfig, Region};
use probermesh_core::server::PoolRefusal;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

mod mesh;
mod task;
mod trace;
mod upgrade;

pub use mesh::{MESH_API_VERSION, MESH_CSP, mesh_json, pair_json};

pub use task::{MAX_TASK_REQUEST_BYTES, TaskApi, TaskView, view_json};
pub use trace::{
    DEFAULT_TRACES_LIMIT, MAX_TRACE_REQUEST_BYTES, MAX_TRACES_LIMIT, TRACES_API_VERSION,
    TraceAccepted, TraceApi, TraceListing, record_json, traces_json,
};
pub use upgrade::{
    MAX_UPGRADE_REQUEST_BYTES, UpgradeApi, UpgradeIntake, UpgradeRefusal, rollout_json,
};

use crate::log_limit::{LogLimit, UNTRUSTED_MAX_BYTES, untrusted};
use crate::secret::Token;

/// The content type of a scrape answer: the Prometheus text format 0.0.4, which the
/// `metrics` adapter renders.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The first pause after a failed accept.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The pause after a failed accept that closed an idle connection: time for that connection's
/// task to give its descriptor back.
const ACCEPT_RETRY_AFTER_CLOSE: Duration = Duration::from_millis(1);
/// The longest pause between accepts that keep failing.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The most a request's headers may take, in bytes (hyper's read buffer).
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// What the HTTP endpoints ask of the server.
#[async_trait::async_trait]
pub trait AdminApi: Send + Sync {
    /// The `/metrics` body (Prometheus text format).
    fn metrics(&self) -> Vec<u8>;
    /// A number that changes whenever [`Self::targets_json`] would answer something else; two
    /// calls answering the same number promise the same JSON. Cheap (no rendering): asked at
    /// every `/-/targets` request.
    fn targets_generation(&self) -> u64;
    /// The `/-/targets` JSON and the [`Self::targets_generation`] it is of. Costly with a big
    /// pool (blocking): the endpoints call it off the async workers, one call at a time, and
    /// keep its answer while the generation stays.
    fn targets_json(&self) -> (u64, String);
    /// Re-reads the probe file; `Err` names the problem, and the running pool stays.
    async fn reload(&self) -> Result<(), String>;
    /// Whether the server is ready (its listeners are up and the first pool is loaded).
    fn ready(&self) -> bool;
    /// The task endpoints' side of the server (`None`: `/-/task` answers 404).
    fn task_api(&self) -> Option<Arc<dyn TaskApi>> {
        None
    }
    /// The upgrade endpoints' side of the server (`None`: `/-/upgrade` answers 404).
    fn upgrade_api(&self) -> Option<Arc<dyn UpgradeApi>> {
        None
    }
    /// The trace endpoints' side of the server (`None`: `/-/trace` and `/api/v1/traces`
    /// answer 503, as with tracing off).
    fn trace_api(&self) -> Option<Arc<dyn TraceApi>> {
        None
    }
    /// A number that changes whenever the mesh's underlying state changed in a way the view
    /// shows at once (a window settled, series expired, an agent connected or went away).
    /// Cheap (no building): asked at every `/api/v1/mesh` request. The endpoints keep the
    /// view's JSON while the number stays, and for at most [`MESH_MAX_AGE`].
    fn mesh_generation(&self) -> u64 {
        0
    }
    /// The mesh view now (`None`: `/api/v1/mesh` answers 404). Costly with a big mesh
    /// (blocking, under the server's lock): the endpoints call it off the async workers, one
    /// call at a time, at most once per [`Self::mesh_generation`] and per [`MESH_MAX_AGE`].
    fn mesh_view(&self) -> Option<probermesh_core::mesh::MeshView> {
        None
    }
    /// One pair's page now; `None` when a region is unknown.
    fn mesh_pair(
        &self,
        _source: &Region,
        _target: &Region,
    ) -> Option<probermesh_core::mesh::PairView> {
        None
    }
}

/// The limits of the HTTP endpoints.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct AdminLimits {
    /// Connections open at once. One more closes the oldest connection that is not in a
    /// request; when every one is in a request, the new one is closed. Keep it well under
    /// the open-files limit (see `fd_limit`): 256 by default.
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers, idle time before them
    /// included (10 s by default).
    pub header_read_timeout: Duration,
    /// At most one log line per this interval for each kind of line strangers can cause
    /// (1 s by default).
    pub log_interval: Duration,
    /// Whether the mesh view's data (`/api/v1/mesh*`) needs the admin bearer token (false by
    /// default: public like `/metrics`; the page and its assets hold no data and stay public).
    pub mesh_requires_token: bool,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
            log_interval: Duration::from_secs(1),
            mesh_requires_token: false,
        }
    }
}

/// Why the HTTP endpoints could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for HTTP on {addr}: {cause}")]
pub struct AdminBindError {
    addr: String,
    /// In the message, not a `source`: a chain says it once.
    cause: std::io::Error,
}

/// The running endpoints.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl AdminServer {
    /// Binds `addr` (`host:port`) and serves `api` with the default [`AdminLimits`] until
    /// dropped or [`AdminServer::stop`]. `admin_token` protects the admin endpoints when set.
    ///
    /// # Errors
    /// When the address cannot be bound (the message names it).
    pub async fn start(
        addr: &str,
        api: Arc<dyn AdminApi>,
        admin_token: Option<Token>,
    ) -> Result<Self, AdminBindError> {
        Self::start_with(addr, api, admin_token, AdminLimits::default()).await
    }

    /// [`AdminServer::start`] with other limits.
    ///
    /// # Errors
    /// When the address cannot be bound (the message names it).
    pub async fn start_with(
        addr: &str,
        api: Arc<dyn AdminApi>,
        admin_token: Option<Token>,
        limits: AdminLimits,
    ) -> Result<Self, AdminBindError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|cause| AdminBindError {
                addr: addr.to_owned(),
                cause,
            })?;
        let local_addr = listener.local_addr().map_err(|cause| AdminBindError {
            addr: addr.to_owned(),
            cause,
        })?;
        let (stop, stopped) = watch::channel(false);
        let endpoints = Arc::new(Endpoints {
            api,
            token: admin_token,
            targets: Arc::new(tokio::sync::Mutex::new(None)),
            mesh: Arc::new(tokio::sync::Mutex::new(None)),
            logs: Logs::new(limits.log_interval),
            mesh_requires_token: limits.mesh_requires_token,
        });
        let connections = Arc::new(Connections::new(limits.max_connections));
        tokio::spawn(accept_loop(
            listener,
            endpoints,
            connections,
            limits,
            stopped,
        ));
        Ok(Self { local_addr, stop })
    }

    /// The bound address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts connections until stopped: within the connection cap, pausing after errors.
async fn accept_loop(
    listener: TcpListener,
    endpoints: Arc<Endpoints>,
    connections: Arc<Connections>,
    limits: AdminLimits,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => return,
        };
        match accepted {
            Ok((tcp, remote)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                match Connections::admit(&connections, remote) {
                    Some((registration, closed)) => {
                        if let Some(closed) = closed
                            && let Some(suppressed) = endpoints.logs.cap.admit(Instant::now())
                        {
                            tracing::warn!(
                                %remote,
                                %closed,
                                max_connections = limits.max_connections,
                                suppressed,
                                "HTTP endpoints at their connection cap: closed the oldest idle connection"
                            );
                        }
                        tokio::spawn(serve(
                            tcp,
                            remote,
                            registration,
                            Arc::clone(&endpoints),
                            limits,
                        ));
                    }
                    None => {
                        drop(tcp);
                        if let Some(suppressed) = endpoints.logs.cap.admit(Instant::now()) {
                            tracing::warn!(
                                %remote,
                                max_connections = limits.max_connections,
                                suppressed,
                                "HTTP endpoints at their connection cap, every connection in a request: closed the new one"
                            );
                        }
                    }
                }
            }
            Err(error) => {
                let out_of_descriptors = error.raw_os_error().is_some_and(|code| {
                    [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM]
                        .iter()
                        .any(|errno| *errno as i32 == code)
                });
                let closed_idle = out_of_descriptors && connections.close_oldest_idle().is_some();
                // Closing an idle connection frees a descriptor: try again soon. Otherwise
                // wait longer each time, so a lasting shortage costs no CPU.
                let pause = if closed_idle {
                    ACCEPT_RETRY_AFTER_CLOSE
                } else {
                    backoff
                };
                if let Some(suppressed) = endpoints.logs.accept.admit(Instant::now()) {
                    tracing::warn!(
                        %error,
                        closed_idle,
                        retry_in_ms = pause.as_millis(),
                        suppressed,
                        "HTTP endpoints cannot accept a connection; retrying"
                    );
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stopped.changed() => return,
                }
                if !closed_idle {
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }
}

/// Serves one connection until it ends or is closed for a newer one.
async fn serve(
    tcp: TcpStream,
    remote: SocketAddr,
    registration: Registration,
    endpoints: Arc<Endpoints>,
    limits: AdminLimits,
) {
    let slot = Arc::clone(&registration.slot);
    let service = hyper::service::service_fn(move |request| {
        let endpoints = Arc::clone(&endpoints);
        let in_request = InRequest::begin(&slot);
        async move {
            let response = route(request, remote, &endpoints).await;
            // The connection stays "in a request" until hyper has written the whole body
            // (it drops the body then), so a slow scrape is never closed for a newer one.
            Ok::<_, Infallible>(response.map(|body| GuardedBody::new(body, in_request)))
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(tcp), service);
    tokio::select! {
        _ = connection => {}
        () = registration.slot.closed.notified() => {}
    }
}

/// The open connections, oldest first, up to the cap.
#[derive(Debug)]
struct Connections {
    max: usize,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: BTreeMap<u64, Arc<Slot>>,
}

/// One open connection, as the table sees it.
#[derive(Debug)]
struct Slot {
    /// The peer.
    remote: SocketAddr,
    /// Whether a request is being answered (otherwise the connection waits for one).
    in_request: AtomicBool,
    /// Closes the connection (the table has already forgotten it).
    closed: Notify,
}

impl Connections {
    fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            table: Mutex::new(Table::default()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a new connection from `remote`, and the peer of the idle connection closed
    /// for it, if one was; `None` when the table is full of connections in a request.
    fn admit(this: &Arc<Self>, remote: SocketAddr) -> Option<(Registration, Option<SocketAddr>)> {
        let mut table = this.table();
        let mut closed = None;
        if table.open.len() >= this.max {
            closed = Some(Self::close_oldest_idle_in(&mut table)?);
        }
        let id = table.next_id;
        table.next_id += 1;
        let slot = Arc::new(Slot {
            remote,
            in_request: AtomicBool::new(false),
            closed: Notify::new(),
        });
        table.open.insert(id, Arc::clone(&slot));
        Some((
            Registration {
                connections: Arc::clone(this),
                id,
                slot,
            },
            closed,
        ))
    }

    /// Closes the oldest connection not in a request; its peer, if there was one.
    fn close_oldest_idle(&self) -> Option<SocketAddr> {
        Self::close_oldest_idle_in(&mut self.table())
    }

    fn close_oldest_idle_in(table: &mut Table) -> Option<SocketAddr> {
        let oldest_idle = table
            .open
            .iter()
            .find(|(_, slot)| !slot.in_request.load(Ordering::Acquire))
            .map(|(id, _)| *id);
        let slot = oldest_idle.and_then(|id| table.open.remove(&id))?;
        // `notify_one` keeps the wake-up for a connection task not yet waiting.
        slot.closed.notify_one();
        Some(slot.remote)
    }
}

/// A connection's place in the table, given back when its task ends.
#[derive(Debug)]
struct Registration {
    connections: Arc<Connections>,
    id: u64,
    slot: Arc<Slot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.connections.table().open.remove(&self.id);
    }
}

/// Marks a connection as in a request while alive.
struct InRequest(Arc<Slot>);

impl InRequest {
    fn begin(slot: &Arc<Slot>) -> Self {
        slot.in_request.store(true, Ordering::Release);
        Self(Arc::clone(slot))
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.in_request.store(false, Ordering::Release);
    }
}

/// Bytes of a response handed to hyper at a time: it asks for the next piece only once it
/// has written the previous one, so the body lasts as long as its sending.
const RESPONSE_PIECE_BYTES: usize = 64 * 1024;

/// A response body that keeps its connection marked as in a request until its last piece is
/// taken for sending, so a slow scrape of a large `/metrics` or `/-/targets` is never the
/// "idle" connection closed for a newer one.
struct GuardedBody {
    rest: Bytes,
    _in_request: InRequest,
}

impl GuardedBody {
    fn new(rest: Bytes, in_request: InRequest) -> Self {
        Self {
            rest,
            _in_request: in_request,
        }
    }
}

impl hyper::body::Body for GuardedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let piece = this
            .rest
            .split_to(this.rest.len().min(RESPONSE_PIECE_BYTES));
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

/// What every connection's requests share.
struct Endpoints {
    api: Arc<dyn AdminApi>,
    token: Option<Token>,
    /// The last `/-/targets` rendering and its generation; held while rendering, so there is
    /// one rendering at a time and the requests waiting share it.
    targets: Arc<tokio::sync::Mutex<Option<(u64, Bytes)>>>,
    /// The last `/api/v1/mesh` rendering; held while building, so there is one build at a
    /// time and the requests waiting share it.
    mesh: Arc<tokio::sync::Mutex<Option<KeptMesh>>>,
    logs: Logs,
    /// `AdminLimits::mesh_requires_token`.
    mesh_requires_token: bool,
}

/// The longest an `/api/v1/mesh` answer is served from the kept rendering: past it, the next
/// request builds the view again even if [`AdminApi::mesh_generation`] stayed (heartbeat times
/// and liveness move between the state's changes). So the view is at most this old, and is
/// built at most once per this interval plus once per generation.
pub const MESH_MAX_AGE: Duration = Duration::from_secs(1);
/// The shortest time between two builds of the mesh view, whatever changed: a storm of agent
/// connects (each one moves the generation) during a flood of requests costs at most one
/// build per this interval.
pub const MESH_MIN_INTERVAL: Duration = Duration::from_millis(250);

/// The kept `/api/v1/mesh` rendering: `None` as body when the server has no mesh view.
struct KeptMesh {
    generation: u64,
    built: tokio::time::Instant,
    body: Option<Bytes>,
}

/// One limit per kind of log line strangers can cause.
struct Logs {
    unauthorized: LogLimit,
    method: LogLimit,
    cap: LogLimit,
    accept: LogLimit,
}

impl Logs {
    fn new(interval: Duration) -> Self {
        Self {
            unauthorized: LogLimit::new(interval),
            method: LogLimit::new(interval),
            cap: LogLimit::new(interval),
            accept: LogLimit::new(interval),
        }
    }
}

impl Endpoints {
    /// The `/-/targets` body: the kept rendering while the generation stays, else a new one
    /// made off the async workers (it is kept even if this request goes away meanwhile).
    async fn targets_body(&self) -> Result<Bytes, tokio::task::JoinError> {
        let mut kept = Arc::clone(&self.targets).lock_owned().await;
        let generation = self.api.targets_generation();
        if let Some((kept_generation, body)) = kept.as_ref()
            && *kept_generation == generation
        {
            return Ok(body.clone());
        }
        let api = Arc::clone(&self.api);
        tokio::task::spawn_blocking(move || {
            let (generation, json) = api.targets_json();
            let body = Bytes::from(json);
            *kept = Some((generation, body.clone()));
            body
        })
        .await
    }

    /// The `/api/v1/mesh` body (`None`: the server has no mesh view): the kept rendering while
    /// the generation stays and it is younger than [`MESH_MAX_AGE`], else a new one built off
    /// the async workers (the view under the server's lock, its JSON after the lock is
    /// released; kept even if this request goes away meanwhile).
    async fn mesh_body(&self) -> Result<Option<Bytes>, tokio::task::JoinError> {
        let mut kept = Arc::clone(&self.mesh).lock_owned().await;
        // Read before building: a change after this read makes the next request build again.
        let generation = self.api.mesh_generation();
        if let Some(mesh) = kept.as_ref()
            && ((mesh.generation == generation && mesh.built.elapsed() < MESH_MAX_AGE)
                || mesh.built.elapsed() < MESH_MIN_INTERVAL)
        {
            return Ok(mesh.body.clone());
        }
        let api = Arc::clone(&self.api);
        tokio::task::spawn_blocking(move || {
            let built = tokio::time::Instant::now();
            let body = api
                .mesh_view()
                .map(|view| Bytes::from(mesh::mesh_json(&view)));
            *kept = Some(KeptMesh {
                generation,
                built,
                body: body.clone(),
            });
            body
        })
        .await
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Bytes> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Why a request was not authorized.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(super) enum Unauthorized {
    NoCredential,
    NotBearer,
    WrongToken,
}

impl Unauthorized {
    fn as_str(self) -> &'static str {
        match self {
            Self::NoCredential => "no Authorization header",
            Self::NotBearer => "not a Bearer credential",
            Self::WrongToken => "wrong bearer token",
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value: the scheme in any case (RFC 7235
/// §2.1), any spaces or tabs around the token.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value
        .trim_start_matches([' ', '\t'])
        .split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_matches([' ', '\t']))
}

fn authorize(headers: &HeaderMap, token: Option<&Token>) -> Result<(), Unauthorized> {
    let Some(token) = token else {
        return Ok(());
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(Unauthorized::NoCredential)?;
    let presented = value
        .to_str()
        .ok()
        .and_then(bearer_token)
        .ok_or(Unauthorized::NotBearer)?;
    if token.matches(presented) {
        Ok(())
    } else {
        Err(Unauthorized::WrongToken)
    }
}

async fn route(
    request: Request<Incoming>,
    remote: SocketAddr,
    endpoints: &Endpoints,
) -> Response<Bytes> {
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, endpoints.api.metrics());
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        "/-/targets" => match endpoints.targets_body().await {
            Ok(body) => {
                let mut response = text(StatusCode::OK, body);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(error) => {
                tracing::error!(%error, "rendering /-/targets failed");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "rendering the targets failed\n",
                )
            }
        },
        "/-/healthy" => text(StatusCode::OK, "ProberMesh is healthy.\n"),
        "/-/ready" => {
            if endpoints.api.ready() {
                text(StatusCode::OK, "ProberMesh is ready.\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ProberMesh is not ready.\n",
                )
            }
        }
        "/-/reload" => reload(&request, remote, endpoints).await,
        path if path == "/-/task" || path.starts_with("/-/task/") => {
            task::route(request, remote, endpoints).await
        }
        path if path == "/-/upgrade" || path.starts_with("/-/upgrade/") => {
            upgrade::route(request, remote, endpoints).await
        }
        "/-/trace" => trace::route(request, remote, endpoints).await,
        "/api/v1/traces" => traces(&request, remote, endpoints),
        path if mesh::is_mesh_path(path) => mesh::route(request, remote, endpoints).await,
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

/// `GET /api/v1/traces`: read-only, under the mesh data's access rule.
fn traces(
    request: &Request<Incoming>,
    remote: SocketAddr,
    endpoints: &Endpoints,
) -> Response<Bytes> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the traces are read-only: GET only (POST /-/trace asks for one)\n",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if let Some(refused) = mesh::refuse_data(request, remote, endpoints) {
        return refused;
    }
    trace::list(request, endpoints)
}

/// `/-/reload`: `POST` or `PUT` (as Prometheus), with the admin token.
async fn reload(
    request: &Request<Incoming>,
    remote: SocketAddr,
    endpoints: &Endpoints,
) -> Response<Bytes> {
    if !matches!(*request.method(), Method::POST | Method::PUT) {
        if let Some(suppressed) = endpoints.logs.method.admit(Instant::now()) {
            tracing::warn!(
                %remote,
                method = %untrusted(request.method().as_str().as_bytes(), UNTRUSTED_MAX_BYTES),
                suppressed,
                "/-/reload refused: it reloads on POST or PUT only"
            );
        }
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "/-/reload needs a POST or PUT request\n",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST, PUT"));
        return response;
    }
    if let Err(why) = authorize(request.headers(), endpoints.token.as_ref()) {
        if let Some(suppressed) = endpoints.logs.unauthorized.admit(Instant::now()) {
            tracing::warn!(
                %remote,
                reason = why.as_str(),
                suppressed,
                "/-/reload refused: missing or wrong bearer token"
            );
        }
        let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    match endpoints.api.reload().await {
        Ok(()) => text(StatusCode::OK, "ok"),
        Err(problem) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("one or more reloader reload failed: {problem}\n"),
        ),
    }
}

/// The Go `/-/targets` JSON: `{region: [{"prober_type": "icmp", "targets": [...]}]}`, plus
/// `refused_by` on a block that agents refused (absent otherwise, so the Go shape is kept).
#[must_use]
pub fn targets_json(
    regions: &BTreeMap<Region, Vec<ProbeConfig>>,
    refusals: &[&PoolRefusal],
) -> String {
    #[derive(Serialize)]
    struct Entry<'a> {
        prober_type: &'a str,
        targets: Vec<&'a str>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        refused_by: Vec<RefusedBy>,
    }
    #[derive(Serialize)]
    struct RefusedBy {
        agent: String,
        revision: u64,
        error: String,
    }
    let shaped: BTreeMap<&str, Vec<Entry<'_>>> = regions
        .iter()
        .map(|(region, configs)| {
            let entries = configs
                .iter()
                .map(|config| Entry {
                    prober_type: config.kind().as_str(),
                    targets: config.targets.iter().map(|t| t.raw()).collect(),
                    refused_by: refusals
                        .iter()
                        .filter(|r| {
                            r.block.as_ref() == Some(&(config.region.clone(), config.kind()))
                        })
                        .map(|r| RefusedBy {
                            agent: r.agent.to_string(),
                            revision: r.revision,
                            error: r.to_string(),
                        })
                        .collect(),
                })
                .collect();
            (region.as_str(), entries)
        })
        .collect();
    serde_json::to_string(&shaped).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Fake {
        reload_ok: AtomicBool,
    }

    #[async_trait::async_trait]
    impl AdminApi for Fake {
        fn metrics(&self) -> Vec<u8> {
            b"prober_server_receive_points{prober_type=\"icmp\"} 1\n".to_vec()
        }
        fn targets_generation(&self) -> u64 {
            0
        }
        fn targets_json(&self) -> (u64, String) {
            (0, "{}".into())
        }
        async fn reload(&self) -> Result<(), String> {
            if self.reload_ok.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("probe.yaml:3:5: unknown key `intervall`".into())
            }
        }
        fn ready(&self) -> bool {
            true
        }
    }

    async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let auth = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        tcp.write_all(format!("POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn routes_tokens_and_errors() {
        let api = Arc::new(Fake {
            reload_ok: AtomicBool::new(false),
        });
        let token = Token::new("s3cret", "the test").unwrap();
        let server = AdminServer::start("127.0.0.1:0", api.clone(), Some(token))
            .await
            .unwrap();
        let addr = server.local_addr();
        let metrics = get(addr, "/metrics", None).await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("text/plain; version=0.0.4"));
        assert!(get(addr, "/-/targets", None).await.ends_with("{}"));
        assert!(
            get(addr, "/-/healthy", None)
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(
            get(addr, "/-/ready", None)
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(get(addr, "/nope", None).await.starts_with("HTTP/1.1 404"));
        assert!(
            get(addr, "/-/reload", None)
                .await
                .starts_with("HTTP/1.1 401")
        );
        assert!(
            get(addr, "/-/reload", Some("wrong"))
                .await
                .starts_with("HTTP/1.1 401")
        );
        let failed = get(addr, "/-/reload", Some("s3cret")).await;
        assert!(failed.starts_with("HTTP/1.1 500"), "{failed}");
        assert!(failed.contains("probe.yaml:3:5"), "{failed}");
        api.reload_ok.store(true, Ordering::Relaxed);
        assert!(get(addr, "/-/reload", Some("s3cret")).await.ends_with("ok"));
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case_with_any_spaces() {
        for (value, token) in [
            ("Bearer s3cret", Some("s3cret")),
            ("bearer s3cret", Some("s3cret")),
            ("BEARER s3cret", Some("s3cret")),
            ("bEaReR \t  s3cret  ", Some("s3cret")),
            ("  Bearer s3cret", Some("s3cret")),
            ("Bearer", None),
            ("Bearers3cret", None),
            ("Basic czNjcmV0", None),
            ("", None),
        ] {
            assert_eq!(bearer_token(value), token, "{value:?}");
        }
    }

    #[tokio::test]
    async fn a_taken_port_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let api = Arc::new(Fake {
            reload_ok: AtomicBool::new(true),
        });
        let error = AdminServer::start(&addr, api, None).await.unwrap_err();
        assert!(error.to_string().contains(&addr), "{error}");
    }
}
