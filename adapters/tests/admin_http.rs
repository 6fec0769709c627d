//! The server's HTTP endpoints under strangers' load, on loopback: idle connections past the
//! open-files limit (the server runs in a child process of this test binary with a soft limit
//! of 1,024, as systemd starts services), parallel `/-/targets` over a big pool, and
//! `/-/reload`'s methods and bearer scheme (its log lines: `admin_logs.rs`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::admin::{FixedApi, TOKEN, request};
use probermesh_adapters::admin::{AdminApi, AdminLimits, AdminServer};
use probermesh_adapters::clock::SystemClock;
use probermesh_adapters::driver::server::{ServerDriver, ServerHandle, ServerParts};
use probermesh_adapters::fd_limit::raise_open_files_limit;
use probermesh_adapters::secret::Token;
use probermesh_core::aggregate::{Aggregator, AggregatorConfig};
use probermesh_core::fake::{CapturingExporter, FakeReportSource};
use probermesh_core::model::{IcmpModule, ProbeConfig, ProbeKind, ProbeModule, Region, Target};
use probermesh_core::pool::{Discovery, TargetPool};
use probermesh_core::ports::Clock;
use probermesh_core::server::ServerState;

/// Set in the child process: the connection cap its endpoints run with.
const CHILD_MAX_CONNECTIONS: &str = "PROBERMESH_TEST_ADMIN_CHILD_MAX_CONNECTIONS";
/// The child's soft open-files limit: systemd's default.
const CHILD_FD_LIMIT: u64 = 1_024;
/// Idle connections the tests open: more than the child can hold descriptors for.
const IDLE_CONNECTIONS: usize = 1_100;
/// How long `/metrics` may take while the idle connections are open (it takes milliseconds).
const SCRAPE_BOUND: Duration = Duration::from_secs(5);
/// The child's header-read timeout: longer than the test, so that no idle connection times
/// out meanwhile and only the cap or the back-off can let a scrape in. (Before them, the 10 s
/// default was what freed descriptors: a scrape waited until then.)
const CHILD_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// The child's CPU time over the measuring window may be at most this share of the window
/// (a spinning accept loop takes a whole core or more).
const MAX_CPU_SHARE: f64 = 0.3;
/// The measuring window, from the moment every idle connection is open.
const CPU_WINDOW: Duration = Duration::from_secs(3);

// === idle connections past the descriptor limit ===

#[test]
fn idle_connections_past_the_fd_limit_neither_lock_out_a_scrape_nor_spin() {
    // The cap (256 by default) is under the limit: each connection past it closes the
    // oldest idle one, and no accept fails.
    descriptor_attack(
        "idle_connections_past_the_fd_limit_neither_lock_out_a_scrape_nor_spin",
        AdminLimits::default().max_connections,
        "closed the oldest idle connection",
    );
}

#[test]
fn accepts_failing_for_want_of_descriptors_back_off_and_free_an_idle_connection() {
    // A cap above the limit: accepts fail with EMFILE, and the endpoints pause and close an
    // idle connection instead of retrying at once.
    descriptor_attack(
        "accepts_failing_for_want_of_descriptors_back_off_and_free_an_idle_connection",
        4_096,
        "cannot accept a connection",
    );
}

/// As the parent: starts this test again as the child (the endpoints under a soft limit of
/// 1,024 descriptors, capped at `max_connections`, idle connections never timing out), opens 1,100 idle connections to it, then
/// checks that a scrape is answered within [`SCRAPE_BOUND`], that the child did not spin, and
/// that it logged `expected_line`, rate-limited. As the child: serves.
fn descriptor_attack(test_name: &str, max_connections: usize, expected_line: &str) {
    if let Ok(max) = std::env::var(CHILD_MAX_CONNECTIONS) {
        return child(max.parse().expect("a connection cap"));
    }
    let limit = raise_open_files_limit().expect("the open-files limit");
    assert!(
        limit.now > 2 * IDLE_CONNECTIONS as u64,
        "this test opens {IDLE_CONNECTIONS} connections and needs a hard open-files limit \
         over {}; it is {limit:?}",
        2 * IDLE_CONNECTIONS
    );
    let child = ChildServer::start(test_name, max_connections);
    let started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS {
        idle.push(
            TcpStream::connect_timeout(&child.addr, Duration::from_secs(10)).expect("connect"),
        );
    }

    let window_start = Instant::now();
    let cpu_start = child.cpu_time();
    let scrape = std_get(child.addr, "/metrics", SCRAPE_BOUND);
    let scrape_took = window_start.elapsed();
    while window_start.elapsed() < CPU_WINDOW {
        std::thread::sleep(Duration::from_millis(50));
    }
    let cpu = child.cpu_time() - cpu_start;
    let window = window_start.elapsed();
    let share = cpu.as_secs_f64() / window.as_secs_f64();
    eprintln!(
        "{IDLE_CONNECTIONS} idle connections, soft limit {CHILD_FD_LIMIT}, cap \
         {max_connections}: /metrics in {scrape_took:?}; child CPU {cpu:?} over {window:?} \
         ({:.0} %)",
        share * 100.0
    );
    drop(idle);
    let lived = started.elapsed();
    let log = child.stop();

    let scrape = scrape.unwrap_or_else(|error| {
        panic!("/metrics unanswered after {scrape_took:?} with {IDLE_CONNECTIONS} idle connections: {error}")
    });
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    assert!(scrape.contains("prober_server_receive_points"), "{scrape}");
    assert!(
        scrape_took < SCRAPE_BOUND,
        "/metrics took {scrape_took:?} with {IDLE_CONNECTIONS} idle connections"
    );
    assert!(
        share < MAX_CPU_SHARE,
        "the child used {cpu:?} of CPU in {window:?} with idle connections open: it spins"
    );
    let lines = log.lines().filter(|l| l.contains(expected_line)).count();
    let allowed = lived.as_secs() as usize + 2;
    assert!(
        (1..=allowed).contains(&lines),
        "{lines} lines {expected_line:?} in {lived:?} (at most one a second):\n{log}"
    );
}

/// The child: the endpoints over a fake server under a soft limit of 1,024 descriptors,
/// until its standard input closes.
fn child(max_connections: usize) {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        CHILD_FD_LIMIT,
        hard,
    )
    .expect("setrlimit");
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .finish();
    let _log = tracing::subscriber::set_global_default(subscriber);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let server = runtime.block_on(async {
        AdminServer::start_with(
            "127.0.0.1:0",
            Arc::new(FixedApi::default()),
            None,
            AdminLimits {
                max_connections,
                header_read_timeout: CHILD_HEADER_READ_TIMEOUT,
                ..AdminLimits::default()
            },
        )
        .await
        .expect("the endpoints")
    });
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ADMIN_ADDR={}", server.local_addr()).expect("stdout");
    stdout.flush().expect("stdout");
    // Until the parent closes our standard input (or dies).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(server);
    runtime.shutdown_timeout(Duration::from_secs(1));
}

/// The child process, killed on drop.
struct ChildServer {
    process: Child,
    addr: SocketAddr,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl ChildServer {
    fn start(test_name: &str, max_connections: usize) -> Self {
        let mut process = Command::new(std::env::current_exe().expect("this test binary"))
            .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
            .env(CHILD_MAX_CONNECTIONS, max_connections.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the child");
        let mut stderr = process.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut child = Self {
            process,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr: Some(stderr),
        };
        let stdout = child.process.stdout.take().expect("stdout");
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("the child's output");
            // The test harness may have begun the line (`test name ... `).
            if let Some((_, addr)) = line.split_once("ADMIN_ADDR=") {
                child.addr = addr.parse().expect("an address");
                return child;
            }
        }
        panic!("the child ended without serving: {}", child.stop());
    }

    /// User and system CPU time of every thread of the child so far.
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.id()))
            .expect("the child's /proc stat");
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("a stat line")
            .1
            .split_whitespace()
            .collect();
        // utime and stime (fields 14 and 15), in USER_HZ: 100 a second on Linux.
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        Duration::from_millis(ticks * 10)
    }

    /// Closes the child's input, waits for it (killing it after 10 s) and returns its log.
    fn stop(mut self) -> String {
        drop(self.process.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.process.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A GET with the standard library (the parent runs no runtime); the whole answer.
fn std_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<String> {
    let mut tcp = TcpStream::connect_timeout(&addr, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer)?;
    Ok(answer)
}

// === /-/targets over a big pool ===

/// The server driver's handle, counting renderings; a rendering waits for the gate to open.
struct GatedRenders {
    handle: ServerHandle<FakeReportSource>,
    renders: AtomicUsize,
    gate: (Mutex<bool>, Condvar),
}

impl GatedRenders {
    fn open_gate(&self) {
        *self.gate.0.lock().expect("gate") = true;
        self.gate.1.notify_all();
    }
}

#[async_trait::async_trait]
impl AdminApi for GatedRenders {
    fn metrics(&self) -> Vec<u8> {
        self.handle.metrics()
    }
    fn targets_generation(&self) -> u64 {
        self.handle.targets_generation()
    }
    fn targets_json(&self) -> (u64, String) {
        self.renders.fetch_add(1, Ordering::SeqCst);
        let open = self.gate.0.lock().expect("gate");
        // Bounded, so a broken test fails instead of hanging.
        let _open = self
            .gate
            .1
            .wait_timeout_while(open, Duration::from_secs(10), |open| !*open)
            .expect("gate");
        self.handle.targets_json()
    }
    async fn reload(&self) -> Result<(), String> {
        self.handle.reload().await
    }
    fn ready(&self) -> bool {
        true
    }
}

/// `regions` ICMP blocks of `per_region` targets each (`h<region>x<n>` host names).
fn big_pool(regions: usize, per_region: usize) -> Vec<ProbeConfig> {
    (0..regions)
        .map(|r| ProbeConfig {
            region: Region::new(&format!("r{r}")).expect("region"),
            targets: (0..per_region)
                .map(|n| Target::parse(ProbeKind::Icmp, &format!("h{r}x{n}")).expect("target"))
                .collect(),
            module: ProbeModule::Icmp(IcmpModule::default()),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_targets_requests_share_one_rendering_made_off_the_async_workers() {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let aggregator = Aggregator::new(AggregatorConfig::default(), clock.now()).expect("aggregator");
    // 200,000 targets: about 2.4 MB of JSON.
    let pool = TargetPool::new(big_pool(4, 50_000), Discovery::Static, false);
    let driver = ServerDriver::start(ServerParts {
        link: Arc::new(FakeReportSource::new()),
        state: ServerState::new(aggregator, pool),
        clock,
        exporter: Arc::new(CapturingExporter::new()),
        pool_source: None,
        store: None,
        task_archive: None,
        releases: Default::default(),
    });
    let api = Arc::new(GatedRenders {
        handle: driver.handle(),
        renders: AtomicUsize::new(0),
        gate: (Mutex::new(false), Condvar::new()),
    });
    let server = AdminServer::start("127.0.0.1:0", Arc::clone(&api) as _, None)
        .await
        .expect("the endpoints");
    let addr = server.local_addr();

    // Twenty requests at once; the first rendering waits at the gate.
    const PARALLEL: usize = 20;
    let requests: Vec<_> = (0..PARALLEL)
        .map(|_| tokio::spawn(request(addr, "GET", "/-/targets", None)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.renders.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no rendering started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // While it renders, the endpoints answer (two workers, twenty requests waiting).
    for _ in 0..3 {
        let healthy = tokio::time::timeout(
            Duration::from_secs(5),
            request(addr, "GET", "/-/healthy", None),
        )
        .await
        .expect("/-/healthy answered while /-/targets renders");
        assert_eq!(healthy.0, 200);
    }
    api.open_gate();
    let mut bodies = Vec::new();
    for handle in requests {
        let (status, _, body) = handle.await.expect("a request");
        assert_eq!(status, 200);
        bodies.push(body);
    }
    assert_eq!(
        api.renders.load(Ordering::SeqCst),
        1,
        "one rendering for all"
    );
    assert!(bodies.windows(2).all(|pair| pair[0] == pair[1]));
    assert!(bodies[0].len() > 2_000_000, "{} bytes", bodies[0].len());
    assert!(bodies[0].contains(r#""r3":[{"prober_type":"icmp","targets":["h3x0","#));
    // Nothing changed: the kept rendering.
    let (_, _, again) = request(addr, "GET", "/-/targets", None).await;
    assert_eq!(again, bodies[0]);
    assert_eq!(api.renders.load(Ordering::SeqCst), 1);

    // A new pool: the next request renders it.
    driver
        .handle()
        .set_file_configs(big_pool(1, 3))
        .await
        .expect("a new pool");
    let (_, _, changed) = request(addr, "GET", "/-/targets", None).await;
    assert_eq!(
        changed,
        r#"{"r0":[{"prober_type":"icmp","targets":["h0x0","h0x1","h0x2"]}]}"#
    );
    assert_eq!(api.renders.load(Ordering::SeqCst), 2);
    server.stop();
    driver.stop().await;
}

// === /-/reload ===

#[tokio::test]
async fn reload_takes_post_or_put_and_the_bearer_scheme_in_any_case() {
    let api = Arc::new(FixedApi::default());
    let token = Token::new(TOKEN, "the test").expect("a token");
    let server = AdminServer::start("127.0.0.1:0", Arc::clone(&api) as _, Some(token))
        .await
        .expect("the endpoints");
    let addr = server.local_addr();
    let good = format!("Bearer {TOKEN}");

    for method in ["GET", "HEAD", "TRACE", "DELETE", "OPTIONS", "PATCH"] {
        let (status, head, _) = request(addr, method, "/-/reload", Some(&good)).await;
        assert_eq!(status, 405, "{method}: {head}");
        assert!(head.contains("allow: POST, PUT"), "{method}: {head}");
    }
    assert_eq!(
        api.reloads.load(Ordering::SeqCst),
        0,
        "no method but POST and PUT reloads"
    );

    for (method, authorization) in [
        ("POST", good.clone()),
        ("PUT", good.clone()),
        ("POST", format!("bearer {TOKEN}")),
        ("POST", format!("BEARER {TOKEN}")),
        ("POST", format!("Bearer    {TOKEN}")),
        ("PUT", format!("bEaReR \t {TOKEN} ")),
    ] {
        let (status, head, body) = request(addr, method, "/-/reload", Some(&authorization)).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "ok"),
            "{method} {authorization:?}: {head}"
        );
    }
    assert_eq!(api.reloads.load(Ordering::SeqCst), 6);

    for authorization in [
        None,
        Some("Bearer wrong-token".to_owned()),
        Some(format!("Basic {TOKEN}")),
        Some(format!("Bearer{TOKEN}")),
        Some(TOKEN.to_owned()),
    ] {
        let (status, head, _) = request(addr, "POST", "/-/reload", authorization.as_deref()).await;
        assert_eq!(status, 401, "{authorization:?}: {head}");
        assert!(head.contains("www-authenticate: Bearer"), "{head}");
    }
    assert_eq!(api.reloads.load(Ordering::SeqCst), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_scrape_of_a_large_answer_is_not_closed_for_newer_connections() {
    const BODY_BYTES: usize = 32 << 20;
    let server = AdminServer::start_with(
        "127.0.0.1:0",
        // A `/metrics` answer far larger than the socket buffers.
        Arc::new(FixedApi {
            metrics: vec![b'#'; BODY_BYTES],
            ..FixedApi::default()
        }),
        None,
        AdminLimits {
            max_connections: 2,
            ..AdminLimits::default()
        },
    )
    .await
    .expect("the endpoints start");
    let addr = server.local_addr();
    let scrape = tokio::task::spawn_blocking(move || {
        let mut slow = TcpStream::connect(addr).expect("connect");
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("write");
        // A slow scraper: the answer waits in the server while newer connections arrive.
        std::thread::sleep(Duration::from_millis(1_500));
        let mut answer = Vec::new();
        slow.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("a timeout");
        let _ = slow.read_to_end(&mut answer);
        answer
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Newer connections beyond the cap of 2: each closes the oldest idle one, never the
    // connection still sending its answer.
    let mut newer = Vec::new();
    for _ in 0..4 {
        newer.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = scrape.await.expect("the scrape");
    let body_len = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |head| answer.len() - head - 4);
    assert_eq!(
        body_len, BODY_BYTES,
        "the scrape got {body_len} of {BODY_BYTES} bytes"
    );
    drop(newer);
}
