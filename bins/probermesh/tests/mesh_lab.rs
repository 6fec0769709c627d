//! The mesh lab: a server and agents of several regions, each in its own network namespace on
//! one L2 segment (198.18.0.0/24, `probermesh_tests::lab`), with faults injected per host, and
//! the server's numbers checked against the injected truth. Windows are 2 s; the server is
//! scraped from inside its namespace. Needs root (as CI has); fails loudly without it.
//!
//! Tolerances are five standard errors of the packets behind each number plus a stated
//! allowance for the userspace responder's timer, so a chance failure is below one in a million.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use probermesh_tests::harness::{TempDir, agent_alive_reads, sample, server_fingerprint, wait_for};
use probermesh_tests::lab::Lab;

const BIN: &str = env!("CARGO_BIN_EXE_probermesh");
const TOKEN: &str = "lab-token-0123456789";
const SERVER: &str = "198.18.0.1";

/// The echo responder, built next to this binary by `cargo test --workspace`.
fn responder() -> PathBuf {
    let path = Path::new(BIN).with_file_name("icmp-responder");
    assert!(
        path.exists(),
        "{} is missing: run the lab through `cargo test --workspace` (scripts/test.sh)",
        path.display()
    );
    path
}

/// How [`Mesh::replace_server`] stops the running server.
#[derive(Clone, Copy)]
enum Stop {
    /// SIGTERM.
    Graceful,
    /// SIGKILL.
    Crash,
}

struct Mesh {
    /// Dropped first: stops every process, then removes the namespaces.
    lab: Lab,
    server: usize,
    /// The server's data directory, the logs, Prometheus' files (removed when dropped).
    dir: TempDir,
    fingerprint: String,
    /// (host index, region, name) of every agent.
    agents: Vec<(usize, &'static str, String)>,
}

fn start_server(lab: &mut Lab, host: usize, data_dir: &Path, method: &str) {
    start_server_with(lab, host, data_dir, method, None);
}

fn start_server_with(
    lab: &mut Lab,
    host: usize,
    data_dir: &Path,
    method: &str,
    probe_file: Option<&Path>,
) {
    let mut command: Vec<String> = vec![
        BIN.to_owned(),
        "-mode".to_owned(),
        "server".to_owned(),
        format!("-server.rpc.listen.addr={SERVER}:6000"),
        format!("-server.http.listen.addr={SERVER}:6001"),
        "-server.aggregation.interval=2s".to_owned(),
        "-server.series.cache.ratio=3".to_owned(),
        format!("-server.aggregation.method={method}"),
        format!("-server.data.dir={}", data_dir.display()),
    ];
    if let Some(path) = probe_file {
        command.push(format!("-server.probe.file={}", path.display()));
    }
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    // Each start logs to its own file: server-1.log, server-2.log, …
    let starts = (1..)
        .find(|n| !data_dir.join(format!("server-{n}.log")).exists())
        .unwrap_or(1);
    lab.host_mut(host)
        .spawn_logged(
            "server",
            &command,
            &[("PROBERMESH_TOKEN", TOKEN)],
            &data_dir.join(format!("server-{starts}.log")),
        )
        .expect("the server starts");
}

impl Mesh {
    /// A server at 198.18.0.1 and agents at `198.18.0.<octet>` of the given regions.
    fn start(name: &str, method: &str, agents: &[(&'static str, u8)]) -> Self {
        Self::start_with(name, method, agents, |_, _| None)
    }

    /// As [`Mesh::start`]; `setup` runs after the server host exists and before anything
    /// starts, and may return a probe file for the server.
    fn start_with(
        name: &str,
        method: &str,
        agents: &[(&'static str, u8)],
        setup: impl FnOnce(&mut Lab, &Path) -> Option<PathBuf>,
    ) -> Self {
        let mut lab = Lab::new().expect("a lab (needs root)");
        let server = lab.add_host(1).expect("the server host");
        let dir = TempDir::new(&format!("pm-lab-{name}"));
        let probe_file = setup(&mut lab, dir.path());
        start_server_with(&mut lab, server, dir.path(), method, probe_file.as_deref());
        let mut mesh = Self {
            lab,
            server,
            fingerprint: String::new(),
            dir,
            agents: Vec::new(),
        };
        mesh.wait_ready();
        mesh.fingerprint = server_fingerprint(mesh.data_dir());
        for (region, octet) in agents {
            let host = mesh.lab.add_host(*octet).expect("an agent host");
            // Names resolve through the lab's DNS server, when there is one (198.18.0.60).
            mesh.lab
                .host(host)
                .set_resolver(std::net::Ipv4Addr::new(198, 18, 0, 60))
                .expect("the agent's resolver");
            mesh.agents
                .push((host, region, format!("198.18.0.{octet}")));
        }
        for (host, region, _) in mesh.agents.clone() {
            mesh.start_agent(host, region);
        }
        mesh
    }

    fn start_agent(&mut self, host: usize, region: &str) {
        let fingerprint = self.fingerprint.clone();
        let log = self.agent_log(host);
        self.lab
            .host_mut(host)
            .spawn_logged(
                "agent",
                &[
                    BIN,
                    "-mode",
                    "agent",
                    &format!("-agent.region={region}"),
                    &format!("-agent.rpc.report.addr={SERVER}:6000"),
                    "-agent.probe.interval=2s",
                    &format!("-agent.tls.server-fingerprint={fingerprint}"),
                ],
                &[("PROBERMESH_TOKEN", TOKEN)],
                &log,
            )
            .expect("an agent starts");
    }

    /// The standard error of the agent on `host`.
    fn agent_log(&self, host: usize) -> PathBuf {
        self.data_dir().join(format!("agent-{host}.log"))
    }

    fn host_of(&self, ip: &str) -> usize {
        self.agents
            .iter()
            .find(|(_, _, a)| a == ip)
            .map(|(h, _, _)| *h)
            .expect("a known agent")
    }

    /// The server's data directory.
    fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `path` of the server's HTTP endpoints.
    fn curl(&self, path: &str) -> Option<String> {
        self.fetch(&[&format!("http://{SERVER}:6001{path}")])
    }

    /// The body `curl -sf --max-time 5 <args>` gets from inside the server's namespace; `None`
    /// when it fails.
    fn fetch(&self, args: &[&str]) -> Option<String> {
        let mut command = vec!["curl", "-sf", "--max-time", "5"];
        command.extend_from_slice(args);
        let output = self.lab.host(self.server).exec(&command).ok()?;
        Some(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts Prometheus in the server's namespace, scraping it every second.
    fn start_prometheus(&mut self) {
        let config = self.data_dir().join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: probermesh\n    static_configs:\n      - targets: ['{SERVER}:6001']\n"),
        )
        .expect("the Prometheus configuration");
        let storage = self.data_dir().join("tsdb");
        let server = self.server;
        self.lab
            .host_mut(server)
            .spawn(
                "prometheus",
                &[
                    "prometheus",
                    &format!("--config.file={}", config.display()),
                    &format!("--storage.tsdb.path={}", storage.display()),
                    &format!("--web.listen-address={SERVER}:9090"),
                ],
                &[],
            )
            .expect("prometheus starts (Debian package prometheus)");
    }

    /// The first value of an instant query to the lab's Prometheus (waits until it answers).
    fn query(&self, promql: &str) -> f64 {
        wait_for(
            &format!("Prometheus to answer {promql}"),
            Duration::from_secs(30),
            || {
                let body = self.fetch(&[
                    "--get",
                    "--data-urlencode",
                    &format!("query={promql}"),
                    &format!("http://{SERVER}:9090/api/v1/query"),
                ])?;
                let value = body.split("\"value\":[").nth(1)?.split(',').nth(1)?;
                let value: f64 = value
                    .trim_start_matches('"')
                    .split('"')
                    .next()?
                    .parse()
                    .ok()?;
                value.is_finite().then_some(value)
            },
        )
    }

    /// Waits until every agent is in the server's pool (connected and heard from).
    fn wait_all_in_pool(&self) {
        self.wait_all_in_pool_within(Duration::from_secs(30));
    }

    fn wait_all_in_pool_within(&self, timeout: Duration) {
        wait_for(
            &format!("every agent in the pool within {timeout:?}"),
            timeout,
            || {
                let targets = self.curl("/-/targets")?;
                self.agents
                    .iter()
                    .all(|(_, _, ip)| targets.contains(ip.as_str()))
                    .then_some(())
            },
        );
    }

    /// Stops the server 1 s into a window and starts another with `method` on the same data
    /// directory; returns when the stop began, once the new server is ready. The new server
    /// settles nothing during its first window, so what the agents buffered meanwhile arrives
    /// in time.
    fn replace_server(&mut self, stop: Stop, method: &str) -> Instant {
        sleep_until_window_phase(Duration::from_millis(1_000));
        let stopped_at = Instant::now();
        let host = self.lab.host_mut(self.server);
        match stop {
            Stop::Graceful => host.terminate("server"),
            Stop::Crash => host.kill("server"),
        }
        let (data_dir, server) = (self.data_dir().to_owned(), self.server);
        start_server(&mut self.lab, server, &data_dir, method);
        self.wait_ready();
        stopped_at
    }

    fn wait_ready(&self) {
        wait_for("the server", Duration::from_secs(20), || {
            self.curl("/-/ready")
        });
    }

    fn metrics(&self) -> String {
        self.curl("/metrics").unwrap_or_default()
    }
}

fn pair(name: &str, source: &str, target: &str) -> String {
    format!("{name}{{source_region=\"{source}\",target_region=\"{target}\"}}")
}

fn phase(name: &str, phase: &str, source: &str, target: &str) -> String {
    format!("{name}{{phase=\"{phase}\",source_region=\"{source}\",target_region=\"{target}\"}}")
}

/// `windows` values of each series, one per 2-second window, after all are present.
fn collect(mesh: &Mesh, series: &[String], windows: usize) -> Vec<Vec<f64>> {
    wait_for("every series", Duration::from_secs(60), || {
        let text = mesh.metrics();
        series
            .iter()
            .all(|s| sample(&text, s).is_some())
            .then_some(())
    });
    let mut values = vec![Vec::new(); series.len()];
    for _ in 0..windows {
        std::thread::sleep(Duration::from_millis(2_000));
        let text = mesh.metrics();
        for (i, s) in series.iter().enumerate() {
            if let Some(v) = sample(&text, s) {
                values[i].push(v);
            }
        }
    }
    values
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

#[test]
fn loss_delay_and_jitter_match_the_injected_faults_and_a_dark_region_expires() {
    let mut mesh = Mesh::start(
        "truth",
        "robust",
        &[
            ("a", 11),
            ("a", 12),
            ("b", 21),
            ("b", 22),
            ("c", 31),
            ("c", 32),
        ],
    );
    // A real Prometheus scrapes the server all along, as a user's would; the main figures
    // are read back through its query API too.
    mesh.start_prometheus();
    // Region c drops one echo request in ten; region b answers after 5 ms ± 2 ms (uniform).
    for ip in ["198.18.0.31", "198.18.0.32"] {
        mesh.lab
            .host(mesh.host_of(ip))
            .nft("table inet lab {\n chain input {\n type filter hook input priority 0;\n icmp type echo-request numgen random mod 10 == 0 drop\n }\n}\n")
            .expect("the loss rule");
    }
    let responder = responder();
    for ip in ["198.18.0.21", "198.18.0.22"] {
        let host = mesh.host_of(ip);
        mesh.lab
            .host(host)
            .sysctl("net.ipv4.icmp_echo_ignore_all", "1")
            .expect("sysctl");
        mesh.lab
            .host_mut(host)
            .spawn(
                "responder",
                &[&responder.display().to_string(), "5", "2"],
                &[],
            )
            .expect("the responder");
    }
    let series = vec![
        pair("prober_icmp_packet_loss_rate", "a", "c"),
        pair("prober_icmp_packet_loss_rate", "b", "c"),
        phase("prober_icmp_duration_seconds", "rtt", "a", "b"),
        phase("prober_icmp_duration_seconds", "rtt", "c", "b"),
        pair("prober_icmp_jitter_stddev_seconds", "a", "b"),
        pair("prober_icmp_packet_loss_rate", "b", "a"),
    ];
    let windows = 6;
    // Skip the first windows: they may hold rounds from before the faults were in place.
    std::thread::sleep(Duration::from_secs(6));
    let values = collect(&mesh, &series, windows);

    // Loss: 2 sources × 2 targets × 64 echoes per window; SE of the mean over the windows.
    let packets = 256.0 * values[0].len() as f64;
    let loss_tolerance = 100.0 * 5.0 * (0.1 * 0.9 / packets).sqrt();
    for (i, name) in [(0, "a→c"), (1, "b→c")] {
        let measured = mean(&values[i]);
        assert!(
            (measured - 10.0).abs() <= loss_tolerance,
            "{name} loss {measured:.2} %, injected 10 ± {loss_tolerance:.2}"
        );
    }
    // RTT: uniform ± 2 ms has σ = 1.155 ms; 256 echoes a window; plus 0.5 ms for the
    // responder's timer and the path.
    let sigma = 2.0 / 3f64.sqrt();
    let echoes = 256.0 * values[2].len() as f64;
    let rtt_tolerance = 5.0 * sigma / echoes.sqrt() + 0.5;
    for (i, name) in [(2, "a→b"), (3, "c→b")] {
        let measured = mean(&values[i]) * 1e3;
        assert!(
            (measured - 5.0).abs() <= rtt_tolerance,
            "{name} RTT {measured:.3} ms, injected 5 ± {rtt_tolerance:.3}"
        );
    }
    // Jitter (mean of per-probe population stddev over 64 echoes): σ, within 0.4 ms.
    let jitter = mean(&values[4]) * 1e3;
    assert!(
        (jitter - sigma).abs() <= 0.4,
        "a→b jitter {jitter:.3} ms, injected {sigma:.3}"
    );
    // An untouched path stays clean.
    assert!(mean(&values[5]) <= 1.0, "b→a loss {:?}", values[5]);

    // The same through Prometheus, as a dashboard reads them.
    let loss = mesh.query(
        r#"avg_over_time(prober_icmp_packet_loss_rate{source_region="a",target_region="c"}[12s])"#,
    );
    assert!(
        (loss - 10.0).abs() <= loss_tolerance,
        "Prometheus a→c loss {loss:.2} %"
    );
    let rtt = mesh.query(r#"avg_over_time(prober_icmp_duration_seconds{phase="rtt",source_region="a",target_region="b"}[12s])"#) * 1e3;
    assert!(
        (rtt - 5.0).abs() <= rtt_tolerance,
        "Prometheus a→b RTT {rtt:.3} ms"
    );
    // The histogram holds every echo: its median lies in the bucket holding 5 ms (3.2–6.4 ms).
    let median = mesh.query(r#"histogram_quantile(0.5, sum by (le) (rate(prober_icmp_duration_seconds_total_bucket{source_region="a",target_region="b"}[20s])))"#) * 1e3;
    assert!(
        (3.2..=6.4).contains(&median),
        "Prometheus a→b median RTT {median:.3} ms"
    );

    // Region c goes dark: its agents stop and its hosts answer nothing.
    let dark_at = Instant::now();
    for ip in ["198.18.0.31", "198.18.0.32"] {
        let host = mesh.host_of(ip);
        mesh.lab.host_mut(host).kill("agent");
        mesh.lab
            .host(host)
            .nft("table inet lab {\n chain input {\n type filter hook input priority 0;\n policy drop;\n }\n}\n")
            .expect("the blackout rule");
    }
    // Within two windows (plus the one a window takes to settle): 100 % loss and failures.
    let (loss, failed) = wait_for("a→c total loss", Duration::from_secs(10), || {
        let text = mesh.metrics();
        let loss = sample(&text, &pair("prober_icmp_packet_loss_rate", "a", "c"))?;
        let failed = sample(&text, &pair("prober_icmp_failed", "a", "c"))?;
        (loss == 100.0 && failed > 0.0).then_some((loss, failed))
    });
    assert!(
        dark_at.elapsed() <= Duration::from_secs(8),
        "{loss} {failed} after {:?}",
        dark_at.elapsed()
    );
    // Its agents turn not-alive after ratio × window (6 s), and its own series expire then.
    wait_for(
        "c's agents to turn not-alive",
        Duration::from_secs(20),
        || agent_alive_reads(&mesh.metrics(), "198.18.0.31", 0).then_some(()),
    );
    wait_for("c→a to expire", Duration::from_secs(20), || {
        sample(
            &mesh.metrics(),
            &pair("prober_icmp_packet_loss_rate", "c", "a"),
        )
        .is_none()
        .then_some(())
    });
    assert!(
        dark_at.elapsed() >= Duration::from_secs(5),
        "expired before ratio × window: {:?}",
        dark_at.elapsed()
    );
}

#[test]
fn one_broken_host_moves_the_mean_but_not_the_robust_estimate() {
    let mut mesh = Mesh::start(
        "broken",
        "robust",
        &[
            ("a", 11),
            ("a", 12),
            ("a", 13),
            ("b", 21),
            ("b", 22),
            ("b", 23),
        ],
    );
    // 198.18.0.13's network loses every ICMP packet that comes to it (echo requests from
    // others, and the replies to its own probes); its link to the server is fine.
    mesh.lab
        .host(mesh.host_of("198.18.0.13"))
        .nft("table inet lab {\n chain input {\n type filter hook input priority 0;\n meta l4proto icmp drop\n }\n}\n")
        .expect("the broken host");
    std::thread::sleep(Duration::from_secs(6));
    let series = vec![
        pair("prober_icmp_packet_loss_rate", "b", "a"),
        pair("prober_icmp_packet_loss_rate", "a", "b"),
    ];
    let robust = collect(&mesh, &series, 4);
    for (values, name) in robust.iter().zip(["b→a", "a→b"]) {
        assert!(
            mean(values) <= 2.0,
            "robust {name} loss {values:?} should stay at the true 0 %"
        );
    }
    let text = mesh.metrics();
    assert!(
        text.lines()
            .any(|l| l.starts_with("prober_icmp_outlier{") && l.contains("host=\"198.18.0.13\"")),
        "the broken host is reported: {text}"
    );

    // The same mesh under the Go math: restart the server (same certificate) with `mean`;
    // the agents reconnect on their own.
    let received_before =
        sample(&text, "prober_server_receive_points{prober_type=\"icmp\"}").unwrap_or(0.0);
    // A graceful restart (SIGTERM): the server closes every connection, so agents reconnect
    // at once.
    mesh.replace_server(Stop::Graceful, "mean");
    // The new server knows an agent as a target only once that agent has reconnected: wait
    // for all six in the pool, then for the windows of full rounds to settle.
    mesh.wait_all_in_pool();
    std::thread::sleep(Duration::from_secs(6));
    let mean_values = collect(&mesh, &series, 4);
    for (values, name) in mean_values.iter().zip(["b→a", "a→b"]) {
        // One path in three is fully lost: 33.3 %, give or take the odd lost echo.
        let measured = mean(values);
        assert!(
            (measured - 33.3).abs() <= 3.0,
            "mean {name} loss {measured:.1} % should show the broken host"
        );
    }
    let text = mesh.metrics();
    let duplicates = sample(
        &text,
        "prober_server_dropped_points_total{reason=\"duplicate\"}",
    )
    .unwrap_or(0.0);
    assert_eq!(duplicates, 0.0, "nothing counted twice across the restart");
    let received_after =
        sample(&text, "prober_server_receive_points{prober_type=\"icmp\"}").unwrap_or(0.0);
    assert!(received_after > 0.0 && received_before > 0.0);
}

/// The numeric `key=value` fields of every line of `log` holding `message`.
fn logged(log: &Path, message: &str) -> Vec<std::collections::HashMap<String, u64>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|line| line.contains(message))
        .map(|line| {
            line.split_whitespace()
                .filter_map(|field| {
                    let (key, value) = field.split_once('=')?;
                    Some((key.to_owned(), value.parse().ok()?))
                })
                .collect()
        })
        .collect()
}

/// The one line of `log` holding `message`, as fields (fails naming the log otherwise).
fn logged_once(log: &Path, message: &str) -> std::collections::HashMap<String, u64> {
    let mut lines = logged(log, message);
    assert_eq!(
        lines.len(),
        1,
        "one {message:?} line expected in {}:\n{}",
        log.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
    lines.remove(0)
}

/// Sleeps until `phase` into the next 2 s window of the wall clock.
fn sleep_until_window_phase(phase: Duration) {
    let window_ms = 2_000u128;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis();
    let into = now_ms % window_ms;
    let target = phase.as_millis() % window_ms;
    let wait = (target + window_ms - into) % window_ms;
    std::thread::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0)));
}

#[test]
fn a_restarted_server_loses_no_result_and_counts_none_twice() {
    let mut mesh = Mesh::start(
        "restart",
        "robust",
        &[("a", 31), ("a", 32), ("b", 41), ("b", 42)],
    );
    mesh.wait_all_in_pool();
    std::thread::sleep(Duration::from_secs(5));

    // Graceful restart: the stopping server hands its two unsettled windows to the next
    // through the data directory; agents resend what was not acknowledged.
    let stopped_at = mesh.replace_server(Stop::Graceful, "robust");
    mesh.wait_all_in_pool();
    let outage = stopped_at.elapsed();
    let data_dir = mesh.data_dir().to_owned();
    std::thread::sleep(Duration::from_secs(6));

    // Stop every agent gracefully: each finishes its probes in flight and waits for their
    // acknowledgement. Then let the last windows settle.
    for (host, _, _) in mesh.agents.clone() {
        mesh.lab.host_mut(host).terminate("agent");
    }
    std::thread::sleep(Duration::from_secs(4));
    let metrics = mesh.metrics();
    mesh.lab.host_mut(mesh.server).terminate("server");

    let mut produced = 0;
    for (host, _, ip) in &mesh.agents {
        let agent = logged_once(&mesh.agent_log(*host), "agent stopped");
        assert_eq!(
            (agent["unsent"], agent["dropped_full"]),
            (0, 0),
            "agent {ip} delivered everything: {agent:?}"
        );
        assert_eq!(
            agent["produced"], agent["acknowledged"],
            "agent {ip}: {agent:?}"
        );
        assert!(agent["produced"] > 0, "agent {ip} probed: {agent:?}");
        produced += agent["produced"];
    }
    let first = logged_once(&data_dir.join("server-1.log"), "server stopped");
    let second = logged_once(&data_dir.join("server-2.log"), "server stopped");
    let resumed = logged_once(
        &data_dir.join("server-2.log"),
        "resumed the previous server's unsettled windows",
    );
    assert!(
        first["handed_over"] > 0,
        "the first server stopped with open windows: {first:?}"
    );
    assert_eq!(
        (resumed["resumed"], resumed["late"], resumed["stale"]),
        (first["handed_over"], 0, 0),
        "the second server filed everything handed over (outage {outage:?}): {resumed:?}"
    );
    for server in [&first, &second] {
        assert_eq!(
            (server["dropped_late"], server["dropped_future"]),
            (0, 0),
            "no result missed its window (outage {outage:?}): {server:?}"
        );
    }
    // Every result produced was filed exactly once: those received twice (their ack lost
    // with the first server's connections) were recognised as duplicates.
    let filed_first = first["received_icmp"] - first["dropped_duplicate"];
    let filed_second = second["received_icmp"] - second["dropped_duplicate"];
    assert_eq!(
        filed_first + filed_second,
        produced,
        "results filed once vs produced by the agents: first server {first:?}, second {second:?}"
    );
    // And every result filed was settled or handed over: the first server's filed results
    // are in its settled windows or in the file; the second's, with those it resumed, in its
    // settled windows or its own file.
    assert_eq!(
        first["settled"] + first["handed_over"],
        filed_first,
        "first server: {first:?}"
    );
    assert_eq!(resumed["offered"], first["handed_over"], "{resumed:?}");
    assert_eq!(
        second["settled"] + second["handed_over"],
        filed_second + resumed["resumed"],
        "second server: {second:?}, resumed {resumed:?}"
    );
    // The exposition agrees with the log.
    assert_eq!(
        sample(
            &metrics,
            "prober_server_receive_points{prober_type=\"icmp\"}"
        ),
        Some(second["received_icmp"] as f64)
    );
    eprintln!(
        "restart: outage {outage:?}, {produced} results produced, {} handed over, duplicates {} + {}",
        first["handed_over"], first["dropped_duplicate"], second["dropped_duplicate"]
    );
}

#[test]
fn agents_of_a_crashed_server_reconnect_to_its_replacement_at_once() {
    let mut mesh = Mesh::start("crash", "robust", &[("a", 51), ("b", 61)]);
    mesh.wait_all_in_pool();
    std::thread::sleep(Duration::from_secs(3));

    // SIGKILL: no connection is closed. The replacement derives its stateless-reset and
    // connection-ID keys from the same certificate, so it resets the agents' old connections
    // at their next packet instead of leaving them to the link's 30 s idle timeout.
    let crashed_at = mesh.replace_server(Stop::Crash, "robust");
    mesh.wait_all_in_pool_within(Duration::from_secs(15));
    let outage = crashed_at.elapsed();
    std::thread::sleep(Duration::from_secs(4));
    for (host, _, _) in mesh.agents.clone() {
        mesh.lab.host_mut(host).terminate("agent");
    }
    for (host, _, ip) in &mesh.agents {
        let log = mesh.agent_log(*host);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            text.lines()
                .any(|l| l.contains("lost the connection to the server")
                    && l.contains("reset by peer")),
            "agent {ip} saw its connection reset by the replacement (outage {outage:?}):\n{text}"
        );
        // Whatever the crashed server had not acknowledged was resent to the replacement.
        let agent = logged_once(&log, "agent stopped");
        assert_eq!(
            agent["produced"], agent["acknowledged"],
            "agent {ip}: {agent:?}"
        );
        assert_eq!(agent["unsent"], 0, "agent {ip}: {agent:?}");
    }
    eprintln!("crash: agents back after {outage:?}");
}

/// The medians of the header delay and body span the lab's plain origin really applied to
/// the `/delay` requests so far, in milliseconds (from its `/timings`).
fn origin_delays(mesh: &Mesh) -> (f64, f64) {
    let text = mesh
        .fetch(&["http://198.18.0.60:8080/timings"])
        .expect("the origin's timings");
    let (mut headers, mut bodies): (Vec<f64>, Vec<f64>) = text
        .lines()
        .filter_map(|line| {
            let (h, b) = line.split_once(' ')?;
            Some((h.parse::<f64>().ok()? / 1e3, b.parse::<f64>().ok()? / 1e3))
        })
        .unzip();
    assert!(headers.len() >= 5, "the origin served /delay: {text:?}");
    headers.sort_by(f64::total_cmp);
    bodies.sort_by(f64::total_cmp);
    (headers[headers.len() / 2], bodies[bodies.len() / 2])
}

/// The value of `name` with exactly these labels (in any order).
fn labelled(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (label_text, value) = rest.rsplit_once("} ")?;
        let all = labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
        let count = label_text.matches("=\"").count();
        (all && count == labels.len())
            .then(|| value.parse().ok())
            .flatten()
    })
}

#[test]
fn http_phases_dns_status_certificates_and_failures_from_two_regions() {
    let services_bin = Path::new(BIN).with_file_name("lab_services");
    assert!(
        services_bin.exists(),
        "{} is missing: run through `cargo test --workspace`",
        services_bin.display()
    );
    const PLAIN: &str =
        "http://origin.lab:8080/delay?headers_ms=40&chunks=3&chunk_ms=20&chunk_bytes=100";
    const MISSING: &str = "http://origin.lab:8080/status/404";
    const REFUSED: &str = "http://198.18.0.60:9/";
    const TLS: &str = "https://origin.lab:8443/status/200";
    let mesh = Mesh::start_with(
        "http",
        "robust",
        &[("a", 11), ("a", 12), ("b", 21), ("b", 22)],
        |lab, dir| {
            let services = lab.add_host(60).expect("the services host");
            let pki_dir = dir.join("pki");
            lab.host_mut(services)
                .spawn(
                    "services",
                    &[
                        &services_bin.display().to_string(),
                        "198.18.0.60",
                        &pki_dir.display().to_string(),
                        "30",
                    ],
                    &[],
                )
                .expect("the lab services");
            let probe_file = dir.join("probe.yaml");
            std::fs::write(
            &probe_file,
            format!(
                "prober_configs:\n  - prober_type: http\n    region: web\n    targets:\n      - {PLAIN}\n      - {MISSING}\n      - {REFUSED}\n  - prober_type: http\n    region: web-tls\n    http:\n      http_client_config:\n        tls_config:\n          ca_file: {}\n    targets:\n      - {TLS}\n",
                pki_dir.join("ca.pem").display()
            ),
        )
        .expect("the probe file");
            Some(probe_file)
        },
    );
    // Every series, from both regions.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = mesh.metrics();
        let ready = ["a", "b"].iter().all(|r| {
            let url = |target: &'static str, region: &'static str| {
                [
                    ("source_region", *r),
                    ("target_addr", target),
                    ("target_region", region),
                ]
            };
            let [s, a, t] = url(PLAIN, "web");
            labelled(
                &text,
                "prober_http_duration_seconds",
                &[("phase", "processing"), s, a, t],
            )
            .is_some()
                && {
                    let [s, a, t] = url(TLS, "web-tls");
                    labelled(
                        &text,
                        "prober_http_ssl_earliest_cert_expiry",
                        &[s, a, t, ("version", "TLS 1.3")],
                    )
                    .is_some()
                }
                && {
                    let [s, a, t] = url(REFUSED, "web");
                    labelled(
                        &text,
                        "prober_http_failed",
                        &[("failed_reason", "connect refused"), s, a, t],
                    )
                    .is_some()
                }
        });
        if ready {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "HTTP series from both regions never came: {}",
            text.lines()
                .filter(|l| l.starts_with("prober_http") || l.starts_with("prober_agent"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // The phases: the median over five windows, against the median of what the origin
    // really applied (its timers run late on a busy machine; `/timings` tells by how much).
    let mut scrapes = vec![text.clone()];
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(2));
        scrapes.push(mesh.metrics());
    }
    let (origin_headers_ms, origin_body_ms) = origin_delays(&mesh);
    for region in ["a", "b"] {
        let phase = |name: &str| {
            let mut values: Vec<f64> = scrapes
                .iter()
                .filter_map(|scrape| {
                    labelled(
                        scrape,
                        "prober_http_duration_seconds",
                        &[
                            ("phase", name),
                            ("source_region", region),
                            ("target_addr", PLAIN),
                            ("target_region", "web"),
                        ],
                    )
                })
                .collect();
            assert!(!values.is_empty(), "{name} from {region}: {text}");
            values.sort_by(f64::total_cmp);
            values[values.len() / 2] * 1e3
        };
        // Within 5 ms of what the origin applied: the agent timestamps the first byte when its
        // task reads it, so its own scheduling adds to the phase (about 1 ms here; up to 4.4 ms
        // measured with two CPU spinners on the two cores). The origin did apply the fault.
        let (processing, transfer, resolve) =
            (phase("processing"), phase("transfer"), phase("resolve"));
        eprintln!(
            "http from {region}: processing {processing:.2} ms (origin {origin_headers_ms:.2}), transfer {transfer:.2} ms (origin {origin_body_ms:.2}), resolve {resolve:.2} ms"
        );
        assert!(
            (processing - origin_headers_ms).abs() <= 5.0
                && (origin_headers_ms - 40.0).abs() <= 10.0,
            "{region} processing {processing:.2} ms; origin applied {origin_headers_ms:.2}, asked 40"
        );
        assert!(
            (transfer - origin_body_ms).abs() <= 5.0 && (origin_body_ms - 60.0).abs() <= 10.0,
            "{region} transfer {transfer:.2} ms; origin applied {origin_body_ms:.2}, asked 3 × 20"
        );
        // A lookup cannot beat the server's delay; the resolver's own work (hickory builds
        // and parses the messages, a UDP round trip through the lab) adds a few milliseconds.
        assert!(
            (29.0..=45.0).contains(&resolve),
            "{region} resolve {resolve:.2} ms, injected DNS delay 30"
        );
        assert_eq!(
            labelled(
                &text,
                "prober_http_status_code",
                &[
                    ("source_region", region),
                    ("target_addr", PLAIN),
                    ("target_region", "web")
                ]
            ),
            Some(200.0)
        );
        assert_eq!(
            labelled(
                &text,
                "prober_http_status_code",
                &[
                    ("source_region", region),
                    ("target_addr", MISSING),
                    ("target_region", "web")
                ]
            ),
            Some(404.0)
        );
        assert!(
            labelled(
                &text,
                "prober_http_failed",
                &[
                    ("failed_reason", "invalid resp code: 404"),
                    ("source_region", region),
                    ("target_addr", MISSING),
                    ("target_region", "web")
                ]
            )
            .is_some_and(|v| v >= 1.0),
            "{text}"
        );
        assert!(
            labelled(
                &text,
                "prober_http_failed",
                &[
                    ("failed_reason", "connect refused"),
                    ("source_region", region),
                    ("target_addr", REFUSED),
                    ("target_region", "web")
                ]
            )
            .is_some_and(|v| v >= 1.0)
        );
        assert_eq!(
            labelled(
                &text,
                "prober_http_ssl_earliest_cert_expiry",
                &[
                    ("source_region", region),
                    ("target_addr", TLS),
                    ("target_region", "web-tls"),
                    ("version", "TLS 1.3")
                ]
            ),
            Some(probermesh_tests::http_origin::LEAF_NOT_AFTER_UNIX_SECS as f64)
        );
        assert_eq!(
            labelled(
                &text,
                "prober_http_failed",
                &[
                    ("failed_reason", "success"),
                    ("source_region", region),
                    ("target_addr", TLS),
                    ("target_region", "web-tls")
                ]
            ),
            Some(0.0)
        );
    }
}
