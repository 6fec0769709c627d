//! The mesh view's API and page over real HTTP: golden JSON of `/api/v1/mesh` and
//! `/api/v1/mesh/pair` (fixtures/mesh/), hostile URLs and reasons escaped, the page's security
//! headers, read-only routes, the token option, and a script that never writes markup.
//!
//! Regenerate the golden files with `PROBERMESH_BLESS=1 cargo test -p probermesh-adapters
//! --test mesh_api` and review the diff.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use probermesh_adapters::admin::{
    AdminApi, AdminLimits, AdminServer, MESH_CSP, MESH_MAX_AGE, MESH_MIN_INTERVAL, mesh_json,
    pair_json,
};
use probermesh_adapters::secret::Token;
use probermesh_core::aggregate::{AggregationMethod, Aggregator, AggregatorConfig};
use probermesh_core::mesh::{self, HistoryLimits, MeshHistory, MeshView, PairView};
use probermesh_core::model::{
    AgentId, AgentVersion, HttpFailure, HttpPhases, HttpResult, IcmpResult, ProbeOutcome,
    ProbeResult, Region, TlsInfo, TlsVersion, UnixMillis,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WINDOW: Duration = Duration::from_secs(15);
const WINDOW_MS: u64 = 15_000;
const START_MS: u64 = 120_000 * WINDOW_MS;
/// A URL made to break out of an HTML attribute, a table cell and a script.
const HOSTILE_URL: &str =
    "http://evil.example/\"><img src=x onerror=alert(1)><script>alert(2)</script>?a=1&b=</td>";

fn region(name: &str) -> Region {
    Region::new(name).expect("a valid region name")
}

fn agent(region_name: &str, last_octet: u8) -> AgentId {
    AgentId::new(
        region(region_name),
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last_octet)),
    )
}

fn icmp(source: &AgentId, target_region: &str, target: &str, received: usize) -> ProbeResult {
    ProbeResult {
        source: source.clone(),
        target_region: region(target_region),
        target: target.to_owned(),
        round_start: UnixMillis(START_MS + 100),
        outcome: ProbeOutcome::Icmp(IcmpResult::measured(
            Duration::from_micros(50),
            10,
            &vec![Duration::from_millis(12); received],
        )),
    }
}

fn http(source: &AgentId, url: &str, result: HttpResult) -> ProbeResult {
    ProbeResult {
        source: source.clone(),
        target_region: region("web"),
        target: url.to_owned(),
        round_start: UnixMillis(START_MS + 100),
        outcome: ProbeOutcome::Http(result),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A server one window after a round where a→b is healthy, c→b has a broken agent, a→c lost
/// everything, and region a probes two URLs, one hostile and failing.
fn server() -> (Mesh, UnixMillis) {
    let config = AggregatorConfig {
        window: WINDOW,
        method: AggregationMethod::Robust,
        ..AggregatorConfig::default()
    };
    let mut aggregator =
        Aggregator::new(config, UnixMillis(START_MS)).expect("a valid configuration");
    let (a1, c1, c2, c3, b1) = (
        agent("a", 1),
        agent("c", 11),
        agent("c", 12),
        agent("c", 13),
        agent("b", 21),
    );
    let version = AgentVersion::new("2.1.0");
    let hello_at = UnixMillis(START_MS + 100);
    let mut results = vec![
        icmp(&a1, "b", "10.0.0.21", 10),
        icmp(&c1, "b", "10.0.0.21", 10),
        icmp(&c2, "b", "10.0.0.21", 10),
        icmp(&c3, "b", "10.0.0.21", 0),
        icmp(&a1, "c", "10.0.0.11", 0),
    ];
    results.push(http(
        &a1,
        "https://ok.example/",
        HttpResult {
            phases: HttpPhases {
                resolve: ms(1),
                connect: ms(2),
                tls: ms(3),
                processing: ms(4),
                transfer: ms(5),
            },
            status_code: Some(200),
            tls: Some(TlsInfo {
                version: TlsVersion::Tls13,
                earliest_expiry_unix_secs: 1_900_000_000,
            }),
            failure: None,
        },
    ));
    results.push(http(
        &a1,
        HOSTILE_URL,
        HttpResult {
            phases: HttpPhases::default(),
            status_code: Some(500),
            tls: None,
            failure: Some(HttpFailure::InvalidStatus(500)),
        },
    ));
    for who in [&a1, &c1, &c2, &c3, &b1] {
        aggregator.handle_heartbeat(hello_at, who, &version);
    }
    aggregator.handle_results(hello_at, results);
    let settled = UnixMillis(START_MS + 2 * WINDOW_MS);
    // What the server's tick does: settle, then record the history.
    aggregator.handle_timeout(settled);
    let mut history = MeshHistory::new(WINDOW, HistoryLimits::default());
    history.record(settled, &aggregator);
    (
        Mesh {
            aggregator,
            history,
        },
        settled,
    )
}

/// The aggregator and history a server holds.
struct Mesh {
    aggregator: Aggregator,
    history: MeshHistory,
}

impl Mesh {
    fn mesh_view(&self, now: UnixMillis) -> MeshView {
        mesh::build(&self.aggregator, &self.history, None, now)
    }

    fn mesh_pair(&self, now: UnixMillis, source: &Region, target: &Region) -> Option<PairView> {
        mesh::pair(&self.aggregator, &self.history, source, target, now)
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/mesh")
        .join(name)
}

/// Compares `json` with the golden file `name` (as JSON values, so formatting is free).
fn golden(name: &str, json: &str) {
    let value: serde_json::Value = serde_json::from_str(json).expect("the answer is JSON");
    let path = fixture(name);
    if std::env::var_os("PROBERMESH_BLESS").is_some() {
        std::fs::create_dir_all(fixture("")).expect("the fixtures directory");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&value).expect("JSON") + "\n",
        )
        .expect("the golden file is written");
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (PROBERMESH_BLESS=1 writes it)", path.display()));
    let expected: serde_json::Value = serde_json::from_str(&text).expect("golden JSON");
    assert_eq!(
        value,
        expected,
        "{} differs; the answer was:\n{}",
        path.display(),
        serde_json::to_string_pretty(&value).expect("JSON")
    );
}

#[test]
fn the_mesh_json_is_the_golden_one() {
    let (state, settled) = server();
    golden("view.json", &mesh_json(&state.mesh_view(settled)));
    let pair = state
        .mesh_pair(settled, &region("c"), &region("b"))
        .expect("the pair c → b");
    golden("pair-c-b.json", &pair_json(&pair));
}

#[test]
fn hostile_urls_and_reasons_reach_the_json_as_text_and_never_as_markup() {
    let (state, settled) = server();
    let body = mesh_json(&state.mesh_view(settled));
    for raw in ['<', '>', '&'] {
        assert!(!body.contains(raw), "{raw:?} is escaped: {body}");
    }
    let value: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let http = value["http"].as_array().expect("the HTTP rows");
    let hostile = http
        .iter()
        .find(|row| row["url"] == HOSTILE_URL)
        .expect("the hostile URL comes back exactly");
    assert_eq!(hostile["failure_reason"], "invalid resp code: 500");
    assert_eq!(hostile["status_code"], 500);
}

#[test]
fn the_script_builds_the_page_with_text_only() {
    let script = include_str!("../src/admin/assets/mesh.js");
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "setAttribute(\"on",
        "setAttribute(\"style",
        "setAttribute(\"href",
    ] {
        assert!(!script.contains(sink), "mesh.js uses {sink}");
    }
    assert!(script.contains("textContent"));
    let page = include_str!("../src/admin/assets/mesh.html");
    assert!(
        !page.contains("<script>"),
        "no inline script (the CSP forbids it)"
    );
    assert!(
        !page.contains("style="),
        "no inline style (the CSP forbids it)"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external asset"
    );
}

/// The endpoints' side of a server that has only a mesh. Counts its builds; the view of
/// build n is generated n milliseconds after the first, so a rebuild shows in the bytes.
struct MeshOnly {
    view: MeshView,
    pair: PairView,
    builds: AtomicUsize,
    generation: AtomicU64,
}

impl MeshOnly {
    /// The view of the `n`th build (0 the first).
    fn view_of_build(&self, n: usize) -> MeshView {
        let mut view = self.view.clone();
        view.generated_at = UnixMillis(view.generated_at.as_millis() + n as u64);
        view
    }
}

#[async_trait::async_trait]
impl AdminApi for MeshOnly {
    fn metrics(&self) -> Vec<u8> {
        Vec::new()
    }
    fn targets_generation(&self) -> u64 {
        0
    }
    fn targets_json(&self) -> (u64, String) {
        (0, "{}".to_owned())
    }
    async fn reload(&self) -> Result<(), String> {
        Ok(())
    }
    fn ready(&self) -> bool {
        true
    }
    fn mesh_generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
    fn mesh_view(&self) -> Option<MeshView> {
        let n = self.builds.fetch_add(1, Ordering::SeqCst);
        Some(self.view_of_build(n))
    }
    fn mesh_pair(&self, source: &Region, target: &Region) -> Option<PairView> {
        (source == &self.pair.cell.source && target == &self.pair.cell.target)
            .then(|| self.pair.clone())
    }
}

async fn start(requires_token: bool) -> AdminServer {
    start_with_api(requires_token).await.0
}

async fn start_with_api(requires_token: bool) -> (AdminServer, Arc<MeshOnly>) {
    start_with_token(
        requires_token,
        Some(Token::new("s3cret", "the test").expect("a token")),
    )
    .await
}

/// The endpoints over the fixture's view, with `token` as the admin token.
async fn start_with_token(
    requires_token: bool,
    token: Option<Token>,
) -> (AdminServer, Arc<MeshOnly>) {
    let (state, settled) = server();
    let api = Arc::new(MeshOnly {
        view: state.mesh_view(settled),
        pair: state
            .mesh_pair(settled, &region("c"), &region("b"))
            .expect("the pair c → b"),
        builds: AtomicUsize::new(0),
        generation: AtomicU64::new(0),
    });
    let server = AdminServer::start_with(
        "127.0.0.1:0",
        Arc::clone(&api) as Arc<dyn AdminApi>,
        token,
        AdminLimits {
            mesh_requires_token: requires_token,
            ..AdminLimits::default()
        },
    )
    .await
    .expect("the endpoints start");
    (server, api)
}

/// One request; the whole answer (status line, headers, body) with the headers lower-cased.
async fn request(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the endpoints accept");
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    tcp.write_all(head.as_bytes())
        .await
        .expect("the request is sent");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer)
        .await
        .expect("the answer is read");
    let (headers, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    format!("{}\r\n\r\n{body}", headers.to_ascii_lowercase())
}

#[tokio::test]
async fn every_mesh_answer_is_read_only_and_carries_the_strict_policy() {
    let server = start(false).await;
    let addr = server.local_addr();
    for (path, content_type) in [
        ("/", "text/html"),
        ("/mesh", "text/html"),
        ("/mesh.js", "text/javascript"),
        ("/mesh.css", "text/css"),
        ("/api/v1/mesh", "application/json"),
        ("/api/v1/mesh/pair?source=c&target=b", "application/json"),
    ] {
        let answer = request(addr, "GET", path, None).await;
        assert!(answer.starts_with("http/1.1 200"), "{path}: {answer}");
        assert!(
            answer.contains(&format!("content-type: {content_type}")),
            "{path}: {answer}"
        );
        assert!(
            answer.contains(&format!(
                "content-security-policy: {}",
                MESH_CSP.to_ascii_lowercase()
            )),
            "{path}"
        );
        assert!(answer.contains("x-content-type-options: nosniff"), "{path}");
        let post = request(addr, "POST", path, None).await;
        assert!(post.starts_with("http/1.1 405"), "{path}: {post}");
    }
    let page = request(addr, "GET", "/", None).await;
    assert!(page.contains("<script src=\"/mesh.js\" defer></script>"));
    let bad = request(addr, "GET", "/api/v1/mesh/pair?source=c", None).await;
    assert!(bad.starts_with("http/1.1 400"), "{bad}");
    let bad = request(
        addr,
        "GET",
        "/api/v1/mesh/pair?source=%3Cx%3E&target=b",
        None,
    )
    .await;
    assert!(bad.starts_with("http/1.1 400"), "{bad}");
    let unknown = request(addr, "GET", "/api/v1/mesh/pair?source=b&target=c", None).await;
    assert!(unknown.starts_with("http/1.1 404"), "{unknown}");
}

#[tokio::test]
async fn with_the_option_the_data_needs_the_admin_token_and_the_page_does_not() {
    let open = start(false).await;
    let answer = request(open.local_addr(), "GET", "/api/v1/mesh", None).await;
    assert!(answer.starts_with("http/1.1 200"), "public by default");

    let closed = start(true).await;
    let addr = closed.local_addr();
    for path in ["/api/v1/mesh", "/api/v1/mesh/pair?source=c&target=b"] {
        let refused = request(addr, "GET", path, None).await;
        assert!(refused.starts_with("http/1.1 401"), "{path}: {refused}");
        let wrong = request(addr, "GET", path, Some("nope")).await;
        assert!(wrong.starts_with("http/1.1 401"), "{path}: {wrong}");
        let allowed = request(addr, "GET", path, Some("s3cret")).await;
        assert!(allowed.starts_with("http/1.1 200"), "{path}: {allowed}");
    }
    let page = request(addr, "GET", "/mesh", None).await;
    assert!(page.starts_with("http/1.1 200"), "the page holds no data");
}

/// The body of an answer from [`request`].
fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[tokio::test]
async fn the_mesh_json_is_built_once_per_generation_and_served_from_the_kept_bytes() {
    let (server, api) = start_with_api(false).await;
    let addr = server.local_addr();
    // Before the first build: an instant no later than it.
    let before_first_build = std::time::Instant::now();
    let first = request(addr, "GET", "/api/v1/mesh", None).await;
    assert!(first.starts_with("http/1.1 200"), "{first}");
    // The kept bytes are exactly the JSON of the view built (the golden content).
    assert_eq!(body(&first), mesh_json(&api.view_of_build(0)));
    // Many requests between two changes: one build, the same bytes.
    let many: Vec<String> = futures_join(addr, 8).await;
    for answer in &many {
        assert_eq!(body(answer), body(&first), "served from the kept rendering");
    }
    let head = request(addr, "HEAD", "/api/v1/mesh", None).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // One build for the 10 requests, when they all came within the kept answer's age (a
    // loaded machine may take longer; then one more build per second passed at most).
    let took = before_first_build.elapsed();
    let builds = api.builds.load(Ordering::SeqCst);
    if took < MESH_MAX_AGE {
        assert_eq!(builds, 1, "one build for 10 requests");
    } else {
        assert!(
            builds as u128 <= 1 + took.as_millis() / MESH_MAX_AGE.as_millis(),
            "{builds} builds in {took:?}"
        );
    }
    // A change of the state (a window settled, an agent connected) within the minimum
    // interval between builds: still the kept bytes (a connect storm costs no build each).
    let base = api.builds.load(Ordering::SeqCst);
    let kept = request(addr, "GET", "/api/v1/mesh", None).await;
    api.generation.fetch_add(1, Ordering::SeqCst);
    let within = request(addr, "GET", "/api/v1/mesh", None).await;
    // Checked only when this request surely came within the interval (a slow machine may
    // take longer than it for the requests above).
    if before_first_build.elapsed() < MESH_MIN_INTERVAL {
        assert_eq!(body(&within), body(&kept), "within the minimum interval");
        assert_eq!(api.builds.load(Ordering::SeqCst), base);
    }
    // Past it: built again, once.
    tokio::time::sleep(MESH_MIN_INTERVAL).await;
    let before = api.builds.load(Ordering::SeqCst);
    let after_change = request(addr, "GET", "/api/v1/mesh", None).await;
    let built_at = std::time::Instant::now();
    let rebuilt = api.builds.load(Ordering::SeqCst);
    assert_eq!(rebuilt, before + 1, "the generation moved: one build");
    assert_eq!(body(&after_change), mesh_json(&api.view_of_build(before)));
    assert_ne!(body(&after_change), body(&first));
    let again = request(addr, "GET", "/api/v1/mesh", None).await;
    if built_at.elapsed() < MESH_MIN_INTERVAL {
        assert_eq!(body(&again), body(&after_change));
        assert_eq!(api.builds.load(Ordering::SeqCst), rebuilt);
    }
    // No change, but older than the bound: built again.
    tokio::time::sleep(MESH_MAX_AGE + Duration::from_millis(100)).await;
    let before = api.builds.load(Ordering::SeqCst);
    let aged = request(addr, "GET", "/api/v1/mesh", None).await;
    assert_eq!(api.builds.load(Ordering::SeqCst), before + 1);
    assert_eq!(body(&aged), mesh_json(&api.view_of_build(before)));
}

/// `n` concurrent requests for `/api/v1/mesh`.
async fn futures_join(addr: SocketAddr, n: usize) -> Vec<String> {
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(async move { request(addr, "GET", "/api/v1/mesh", None).await }))
        .collect();
    let mut answers = Vec::with_capacity(n);
    for task in tasks {
        answers.push(task.await.expect("the request task"));
    }
    answers
}

#[tokio::test]
async fn the_pair_endpoint_is_bounded() {
    let (server, api) = start_with_api(false).await;
    let addr = server.local_addr();
    let long = "a".repeat(1000);
    let answer = request(
        addr,
        "GET",
        &format!("/api/v1/mesh/pair?source={long}&target=b"),
        None,
    )
    .await;
    assert!(answer.starts_with("http/1.1 400"), "{answer}");
    let padded = format!("/api/v1/mesh/pair?source=c&target=b&x={}", "y".repeat(1000));
    let answer = request(addr, "GET", &padded, None).await;
    assert!(answer.starts_with("http/1.1 400"), "{answer}");
    assert!(answer.contains("query too long"), "{answer}");
    let answer = request(addr, "GET", "/api/v1/mesh/pair?source=x&target=y", None).await;
    assert!(answer.starts_with("http/1.1 404"), "{answer}");
    let answer = request(addr, "GET", "/api/v1/mesh/pair?source=c&target=b", None).await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert_eq!(body(&answer), pair_json(&api.pair));
    assert_eq!(
        api.builds.load(Ordering::SeqCst),
        0,
        "the pair builds no view"
    );
}

/// Asked to require a token but given none to check against: the data is refused, not served
/// as if no token were asked for.
#[tokio::test]
async fn require_token_without_a_token_refuses_the_data() {
    let (server, api) = start_with_token(true, None).await;
    let addr = server.local_addr();
    for path in ["/api/v1/mesh", "/api/v1/mesh/pair?source=c&target=b"] {
        let answer = request(addr, "GET", path, Some("anything")).await;
        assert!(answer.starts_with("http/1.1 401"), "{path}: {answer}");
    }
    let page = request(addr, "GET", "/", None).await;
    assert!(
        page.starts_with("http/1.1 200"),
        "the page stays public: {page}"
    );
    assert_eq!(api.builds.load(Ordering::SeqCst), 0, "nothing was built");
}
