//! The product as a user runs it: a `probermesh` server and four agents in two regions as real
//! processes on loopback (each agent with its own 127.0.0.x address), scraped series by
//! series, checked by `promtool`, scraped by a real Prometheus, with agents killed and a broken
//! probe file reloaded. Short windows (2 s) keep it fast; every wait is a bounded poll.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use probermesh_tests::harness::{
    Process, TempDir, agent_alive_reads, free_tcp_port, free_udp_port, http, sample,
    server_fingerprint, wait_for,
};

mod common;

use common::{BIN, TOKEN, start_agent, start_server, temp_dir};

struct Mesh {
    http: SocketAddr,
    link_port: u16,
    fingerprint: String,
    server: Process,
    agents: Vec<(String, Process)>,
    probe_file: PathBuf,
    _dir: TempDir,
}

fn mesh(name: &str, legacy_server: bool) -> Mesh {
    let (server, http, link_port, probe_file, dir) = start_server(
        name,
        legacy_server,
        "prober_configs:\n  - prober_type: icmp\n    region: virtual\n    targets: [127.0.0.99]\n",
    );
    let fingerprint = server_fingerprint(&dir.path().join("data"));
    let agents = [
        ("eu", "127.0.0.11"),
        ("eu", "127.0.0.12"),
        ("us", "127.0.0.21"),
        ("us", "127.0.0.22"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (region, ip))| {
        (
            (*ip).to_owned(),
            start_agent(region, ip, link_port, &fingerprint, i % 2 == 0),
        )
    })
    .collect();
    Mesh {
        http,
        link_port,
        fingerprint,
        server,
        agents,
        probe_file,
        _dir: dir,
    }
}

fn metrics(mesh: &Mesh) -> String {
    http("GET", mesh.http, "/metrics", None)
        .map(|(_, b)| b)
        .unwrap_or_default()
}

const EU_US: &str = r#"{source_region="eu",target_region="us"}"#;
const US_EU: &str = r#"{source_region="us",target_region="eu"}"#;

#[test]
fn a_mesh_of_real_processes_exposes_the_go_metrics_and_survives_faults() {
    let mut mesh = mesh("main", true);
    let text = wait_for(
        "eu→us and us→eu series",
        Duration::from_secs(40),
        || {
            let text = metrics(&mesh);
            (sample(&text, &format!("prober_icmp_packet_loss_rate{EU_US}")).is_some()
                && sample(&text, &format!("prober_icmp_packet_loss_rate{US_EU}")).is_some())
            .then_some(text)
        },
    );

    // Series by series (spec §3.1 with decisions.md's fixes).
    for pair in [EU_US, US_EU] {
        assert_eq!(
            sample(&text, &format!("prober_icmp_packet_loss_rate{pair}")),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, &format!("prober_icmp_failed{pair}")),
            Some(0.0)
        );
        let jitter =
            sample(&text, &format!("prober_icmp_jitter_stddev_seconds{pair}")).expect("jitter");
        assert!((0.0..0.05).contains(&jitter), "jitter {jitter}");
        let inner = &pair[1..pair.len() - 1];
        for phase in ["resolve", "rtt", "min", "max"] {
            let v = sample(
                &text,
                &format!("prober_icmp_duration_seconds{{phase=\"{phase}\",{inner}}}"),
            )
            .unwrap_or_else(|| panic!("phase {phase} of {pair}: {text}"));
            assert!((0.0..0.05).contains(&v), "{phase} {v}");
        }
        let inf = sample(
            &text,
            &format!("prober_icmp_duration_seconds_total_bucket{{{inner},le=\"+Inf\"}}"),
        )
        .expect("+Inf bucket");
        let count = sample(
            &text,
            &format!("prober_icmp_duration_seconds_total_count{{{inner}}}"),
        )
        .expect("count");
        assert_eq!(inf, count);
        assert!(count >= 64.0, "at least one probe's echoes: {count}");
    }
    assert!(text.contains("# TYPE prober_icmp_duration_seconds_total histogram"));
    assert!(text.contains("# TYPE prober_server_receive_points counter"));
    assert_eq!(text.matches("prober_icmp_duration_seconds_total_bucket{source_region=\"eu\",target_region=\"us\",le=").count(), 20);
    let received = sample(&text, r#"prober_server_receive_points{prober_type="icmp"}"#)
        .expect("receive points");
    assert!(received >= 4.0);
    for (_, ip) in [
        ("eu", "127.0.0.11"),
        ("eu", "127.0.0.12"),
        ("us", "127.0.0.21"),
        ("us", "127.0.0.22"),
    ] {
        assert!(agent_alive_reads(&text, ip, 1), "agent {ip} alive: {text}");
    }
    assert_eq!(sample(&text, "prober_server_task_enabled"), Some(0.0));
    assert_eq!(sample(&text, "prober_server_probe_self_enabled"), Some(0.0));
    // The virtual region of the file is probed by every region.
    assert!(text.contains("target_region=\"virtual\""), "{text}");

    // promtool: only the two inherited lint findings may appear.
    let scrape_dir = temp_dir("scrape");
    let scrape = scrape_dir.path().join("metrics.txt");
    std::fs::write(&scrape, &text).expect("writing the scrape");
    let promtool = Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", scrape.display()))
        .output()
        .expect("promtool runs (Debian package prometheus)");
    let findings = String::from_utf8_lossy(&promtool.stdout).to_string()
        + &String::from_utf8_lossy(&promtool.stderr);
    let unexpected: Vec<&str> = findings
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.contains("prober_server_receive_points counter metrics should have \"_total\" suffix"))
        .filter(|l| !l.contains("prober_icmp_duration_seconds_total non-counter metrics should not have \"_total\" suffix"))
        .collect();
    assert!(unexpected.is_empty(), "promtool: {findings}");

    // /-/targets keeps the Go shape.
    let (status, targets) = http("GET", mesh.http, "/-/targets", None).expect("targets");
    assert_eq!(status, 200);
    assert!(
        targets.contains(r#""virtual":[{"prober_type":"icmp","targets":["127.0.0.99"]}]"#),
        "{targets}"
    );

    // A broken probe file: reload refuses with the place of the error; the pool stays.
    std::fs::write(
        &mesh.probe_file,
        "prober_configs:\n  - prober_type: icmp\n    regin: oops\n",
    )
    .expect("breaking the file");
    let (status, answer) = http("POST", mesh.http, "/-/reload", Some(TOKEN)).expect("reload");
    assert_eq!(status, 500, "{answer}");
    assert!(answer.contains("probe.yaml:3"), "{answer}");
    assert_eq!(
        http("POST", mesh.http, "/-/reload", None).map(|r| r.0),
        Some(401)
    );
    let (_, targets) = http("GET", mesh.http, "/-/targets", None).expect("targets");
    assert!(
        targets.contains("127.0.0.99"),
        "the old pool stays: {targets}"
    );
    // Dynamic targets survive, and a fixed file reloads.
    assert!(targets.contains("127.0.0.21"), "{targets}");
    std::fs::write(
        &mesh.probe_file,
        "prober_configs:\n  - prober_type: icmp\n    region: virtual\n    targets: [127.0.0.98]\n",
    )
    .expect("fixing the file");
    let (status, _) = http("POST", mesh.http, "/-/reload", Some(TOKEN)).expect("reload");
    assert_eq!(status, 200);
    let (_, targets) = http("GET", mesh.http, "/-/targets", None).expect("targets");
    assert!(
        targets.contains("127.0.0.98") && !targets.contains("127.0.0.99"),
        "{targets}"
    );

    // Killing both US agents: they turn not-alive, and the pairs they fed expire on time
    // (ratio 3 × window 2 s = 6 s after their last update, plus the settling of a window).
    let killed_at = Instant::now();
    mesh.agents.retain(|(ip, _)| !ip.starts_with("127.0.0.2"));
    wait_for(
        "the US agents to turn not-alive",
        Duration::from_secs(30),
        || agent_alive_reads(&metrics(&mesh), "127.0.0.21", 0).then_some(()),
    );
    wait_for("us→eu series to expire", Duration::from_secs(30), || {
        sample(
            &metrics(&mesh),
            &format!("prober_icmp_packet_loss_rate{US_EU}"),
        )
        .is_none()
        .then_some(())
    });
    let expired_after = killed_at.elapsed();
    assert!(
        expired_after >= Duration::from_secs(4),
        "expired too early: {expired_after:?}"
    );
    let _ = (&mesh.server, mesh.link_port, &mesh.fingerprint);
}

#[test]
fn subcommand_flags_start_the_same_server_and_prometheus_can_query_it() {
    let mesh = mesh("prom", false);
    wait_for("eu→us series", Duration::from_secs(40), || {
        sample(
            &metrics(&mesh),
            &format!("prober_icmp_packet_loss_rate{EU_US}"),
        )
    });
    let dir = temp_dir("prometheus");
    let prom_port = free_tcp_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: probermesh\n    static_configs:\n      - targets: ['{}']\n",
            mesh.http
        ),
    )
    .expect("a Prometheus configuration");
    let _prometheus = Process(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (Debian package prometheus)"),
    );
    let prom: SocketAddr = format!("127.0.0.1:{prom_port}")
        .parse()
        .expect("an address");
    let query = |q: &str| -> Option<f64> {
        let encoded: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = http("GET", prom, &format!("/api/v1/query?query={encoded}"), None)?;
        if status != 200 || !body.contains("\"status\":\"success\"") {
            return None;
        }
        // The first sample value: ..."value":[<ts>,"<v>"]...
        let value = body.split("\"value\":[").nth(1)?.split(',').nth(1)?;
        value
            .trim_start_matches('"')
            .split('"')
            .next()?
            .parse()
            .ok()
    };
    let loss = wait_for(
        "Prometheus to answer the loss",
        Duration::from_secs(40),
        || query(r#"prober_icmp_packet_loss_rate{source_region="eu",target_region="us"}"#),
    );
    assert!((0.0..=100.0).contains(&loss), "loss {loss}");
    let p90 = wait_for(
        "Prometheus to answer the RTT quantile",
        Duration::from_secs(60),
        || {
            query("histogram_quantile(0.9, rate(prober_icmp_duration_seconds_total_bucket[1m]))")
                .filter(|v| v.is_finite())
        },
    );
    assert!(p90 > 0.0 && p90 < 0.05, "p90 RTT on loopback {p90} s");
}

#[test]
fn bad_flags_fail_with_a_message_and_a_nonzero_exit() {
    for (args, expected, code) in [
        (
            vec!["-server.nope=1"],
            "flag provided but not defined: -server.nope",
            2,
        ),
        (vec!["-mode", "proxy"], "-mode", 2),
        (
            vec!["-server.aggregation.method=median"],
            "robust or mean",
            64,
        ),
        (
            vec!["-server.aggregation.interval=fast"],
            "-server.aggregation.interval",
            64,
        ),
        (
            vec!["-mode", "agent", "-agent.region=eu"],
            "must verify the server",
            64,
        ),
        (
            vec![
                "-mode",
                "agent",
                "-agent.tls.insecure",
                "-agent.probe.interval=1",
            ],
            "-agent.probe.interval",
            64,
        ),
    ] {
        let output = Command::new(BIN)
            .args(&args)
            .env("PROBERMESH_TOKEN", TOKEN)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let version = Command::new(BIN).arg("-v").output().expect("runs");
    assert!(version.status.success());
    assert!(
        String::from_utf8_lossy(&version.stdout).contains(probermesh_adapters::version::VERSION)
    );
    let help = Command::new(BIN).arg("-h").output().expect("runs");
    assert!(String::from_utf8_lossy(&help.stdout).contains("-agent.rpc.report.addr"));
}

/// `openssl req -x509` as docs/link.md tells operators: a self-signed P-256 certificate for
/// `/CN=<cn>` (with `san` as its subjectAltName) in `dir`, as `cert.pem` and `key.pem`.
fn openssl_self_signed(dir: &std::path::Path, cn: &str, san: Option<&str>) {
    let subject = format!("/CN={cn}");
    let mut args = vec![
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "365",
        "-subj",
        &subject,
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
    ];
    let san = san.map(|san| format!("subjectAltName={san}"));
    if let Some(san) = &san {
        args.extend(["-addext", san]);
    }
    let status = Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .expect("the openssl command (Debian package openssl)");
    assert!(status.success(), "openssl {args:?}");
}

/// The setup of issue 11 as an operator makes it: a self-signed certificate from Debian's
/// `openssl req -x509` (it carries `CA:TRUE`), given to the server as its certificate and to
/// the agent as its CA file, with the Go-style flags. The agent connects; an agent given
/// another CA says which certificate it refused, why, and how to fix it.
#[test]
fn an_openssl_self_signed_certificate_serves_as_the_agents_ca_file() {
    let dir = temp_dir("openssl");
    openssl_self_signed(dir.path(), "pm", Some("IP:127.0.0.1"));
    let http_port = free_tcp_port();
    let link_port = free_udp_port();
    let server = Process(
        Command::new(BIN)
            .args([
                "-mode",
                "server",
                &format!("-server.rpc.listen.addr=127.0.0.1:{link_port}"),
                &format!("-server.http.listen.addr=127.0.0.1:{http_port}"),
                "-server.aggregation.interval=2s",
                &format!(
                    "-server.tls.cert-file={}",
                    dir.path().join("cert.pem").display()
                ),
                &format!(
                    "-server.tls.key-file={}",
                    dir.path().join("key.pem").display()
                ),
                &format!("-server.data.dir={}", dir.path().join("data").display()),
            ])
            .env("PROBERMESH_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the server starts"),
    );
    let http_addr: SocketAddr = format!("127.0.0.1:{http_port}")
        .parse()
        .expect("an address");
    wait_for("the server to be ready", Duration::from_secs(20), || {
        http("GET", http_addr, "/-/ready", None).filter(|(s, _)| *s == 200)
    });
    let agent = |ip: &str, ca_file: &std::path::Path, log: &std::path::Path| {
        Process(
            Command::new(BIN)
                .args([
                    "-mode",
                    "agent",
                    "-agent.region=eu",
                    &format!("-agent.ip={ip}"),
                    &format!("-agent.rpc.report.addr=127.0.0.1:{link_port}"),
                    &format!("-agent.tls.ca-file={}", ca_file.display()),
                ])
                .env("PROBERMESH_TOKEN", TOKEN)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).expect("a log file"))
                .spawn()
                .expect("an agent starts"),
        )
    };
    let trusting = agent(
        "127.0.0.11",
        &dir.path().join("cert.pem"),
        &dir.path().join("trusting.log"),
    );
    wait_for("the agent to be alive", Duration::from_secs(20), || {
        let text = http("GET", http_addr, "/metrics", None)?.1;
        agent_alive_reads(&text, "127.0.0.11", 1).then_some(())
    });
    // Another CA: the agent refuses the server's certificate and says why, in plain words.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).expect("a directory");
    openssl_self_signed(&other, "other", None);
    let refused_log = dir.path().join("refused.log");
    let refusing = agent("127.0.0.12", &other.join("cert.pem"), &refused_log);
    let line = wait_for("the agent's refusal", Duration::from_secs(20), || {
        std::fs::read_to_string(&refused_log)
            .ok()?
            .lines()
            .find(|l| l.contains("is refused"))
            .map(str::to_owned)
    });
    for needle in [
        "subject \"CN=pm\"",
        "CA:TRUE",
        "-agent.tls.server-fingerprint=",
        "Fix:",
    ] {
        assert!(line.contains(needle), "{needle:?} missing from {line}");
    }
    drop((trusting, refusing, server));
}
