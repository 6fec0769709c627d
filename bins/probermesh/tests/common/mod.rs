//! The `probermesh` processes the product tests start: a server (Go-style or subcommand flags)
//! with a probe file in a fresh directory, and agents pinned to its certificate.

#![allow(dead_code, reason = "each test file uses part of it")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use probermesh_tests::harness::{Process, TempDir, free_tcp_port, free_udp_port, http, wait_for};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_probermesh");
pub(crate) const TOKEN: &str = "lab-token-0123456789";

pub(crate) fn temp_dir(name: &str) -> TempDir {
    TempDir::new(&format!("pm-product-{name}"))
}

/// Starts a server on loopback with `probe_file_text` and waits until it is ready: the
/// process, its HTTP address, its link port, the probe file and the directory.
pub(crate) fn start_server(
    name: &str,
    legacy: bool,
    probe_file_text: &str,
) -> (Process, SocketAddr, u16, PathBuf, TempDir) {
    let dir = temp_dir(name);
    let probe_file = dir.path().join("probe.yaml");
    std::fs::write(&probe_file, probe_file_text).expect("writing the probe file");
    let http_port = free_tcp_port();
    let link_port = free_udp_port();
    let data_dir = dir.path().join("data");
    let mut command = Command::new(BIN);
    if legacy {
        command.args([
            "-mode",
            "server",
            &format!("-server.rpc.listen.addr=127.0.0.1:{link_port}"),
            &format!("-server.http.listen.addr=127.0.0.1:{http_port}"),
            "-server.aggregation.interval=2s",
            "-server.series.cache.ratio=3",
            &format!("-server.probe.file={}", probe_file.display()),
            &format!("-server.data.dir={}", data_dir.display()),
        ]);
    } else {
        command.args([
            "server",
            "--rpc-listen-addr",
            &format!("127.0.0.1:{link_port}"),
            "--http-listen-addr",
            &format!("127.0.0.1:{http_port}"),
            "--aggregation-interval",
            "2s",
            "--series-cache-ratio",
            "3",
            "--probe-file",
            &probe_file.display().to_string(),
            "--data-dir",
            &data_dir.display().to_string(),
        ]);
    }
    let child = command
        .env("PROBERMESH_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the server starts");
    let server = Process(child);
    let http_addr: SocketAddr = format!("127.0.0.1:{http_port}")
        .parse()
        .expect("an address");
    wait_for("the server to be ready", Duration::from_secs(20), || {
        http("GET", http_addr, "/-/ready", None).filter(|(s, _)| *s == 200)
    });
    (server, http_addr, link_port, probe_file, dir)
}

/// Starts an agent of `region` at `ip` pinned to the server's `fingerprint`.
pub(crate) fn start_agent(
    region: &str,
    ip: &str,
    link_port: u16,
    fingerprint: &str,
    legacy: bool,
) -> Process {
    start_agent_with(region, ip, link_port, fingerprint, legacy, &[])
}

/// [`start_agent`] with `extra` arguments after the usual ones (in the style `legacy` says).
pub(crate) fn start_agent_with(
    region: &str,
    ip: &str,
    link_port: u16,
    fingerprint: &str,
    legacy: bool,
    extra: &[&str],
) -> Process {
    let mut command = Command::new(BIN);
    if legacy {
        command.args([
            "-mode",
            "agent",
            &format!("-agent.region={region}"),
            &format!("-agent.ip={ip}"),
            &format!("-agent.rpc.report.addr=127.0.0.1:{link_port}"),
            "-agent.probe.interval=2s",
            &format!("-agent.tls.server-fingerprint={fingerprint}"),
        ]);
    } else {
        command.args([
            "agent",
            "--region",
            region,
            "--ip",
            ip,
            "--rpc-report-addr",
            &format!("127.0.0.1:{link_port}"),
            "--probe-interval",
            "2s",
            "--tls-server-fingerprint",
            fingerprint,
        ]);
    }
    command.args(extra);
    Process(
        command
            .env("PROBERMESH_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("an agent starts"),
    )
}
