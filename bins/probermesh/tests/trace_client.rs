//! `probermesh trace` and `probermesh traces` against a real server process: tracing on by
//! default (a trace with nobody to run it is a 404 the client names, exit 2; the list is
//! empty), the admin token required, and `-server.trace=false` answering 503.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{BIN, TOKEN, start_server, temp_dir};
use probermesh_tests::harness::{Process, free_tcp_port, free_udp_port, http, wait_for};

/// Runs `probermesh args…` with `token` (if any) as its only token variable.
fn client(args: &[&str], token: Option<&str>) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("PROBERMESH_ADMIN_TOKEN")
        .env_remove("PROBERMESH_TOKEN")
        .stdin(Stdio::null());
    if let Some(token) = token {
        command.env("PROBERMESH_ADMIN_TOKEN", token);
    }
    command.output().expect("the client runs")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout:\n{}--- stderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_trace_client_names_the_servers_refusal_and_lists_traces() {
    let (_server, addr, _, _, _dir) = start_server("trace-client", false, "");
    let server = addr.to_string();
    let ask = [
        "trace",
        "--server",
        &server,
        "--source-region",
        "eu",
        "--target-region",
        "us",
        "--wait",
    ];
    let refused = client(&ask, None);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("401"), "{}", text(&refused));
    let nobody = client(&ask, Some(TOKEN));
    assert_eq!(nobody.status.code(), Some(2), "{}", text(&nobody));
    assert!(
        text(&nobody).contains("404") && text(&nobody).contains("takes traces"),
        "{}",
        text(&nobody)
    );
    let bad = client(
        &[
            "trace",
            "--server",
            &server,
            "--agent",
            "eu/10.0.0.1",
            "--source-region",
            "eu",
            "--target",
            "10.0.0.2",
        ],
        Some(TOKEN),
    );
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(
        text(&bad).contains("--agent or --source-region"),
        "{}",
        text(&bad)
    );
    let listed = client(&["traces", "--server", &server], None);
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed));
    assert!(
        text(&listed).contains("no finished trace matches"),
        "{}",
        text(&listed)
    );
}

#[test]
fn with_tracing_off_a_trace_is_refused_as_unavailable() {
    let dir = temp_dir("trace-off");
    let http_addr: SocketAddr = format!("127.0.0.1:{}", free_tcp_port())
        .parse()
        .expect("an address");
    let child = Command::new(BIN)
        .args([
            "-mode",
            "server",
            &format!("-server.rpc.listen.addr=127.0.0.1:{}", free_udp_port()),
            &format!("-server.http.listen.addr={http_addr}"),
            "-server.trace=false",
            &format!("-server.data.dir={}", dir.path().join("data").display()),
        ])
        .env("PROBERMESH_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the server starts");
    let _server = Process(child);
    wait_for("the server to be ready", Duration::from_secs(20), || {
        http("GET", http_addr, "/-/ready", None).filter(|(s, _)| *s == 200)
    });
    let server = http_addr.to_string();
    let off = client(
        &[
            "trace",
            "--server",
            &server,
            "--agent",
            "eu/10.0.0.1",
            "--target",
            "10.0.0.2",
        ],
        Some(TOKEN),
    );
    assert_eq!(off.status.code(), Some(2), "{}", text(&off));
    assert!(
        text(&off).contains("503") && text(&off).contains("off"),
        "{}",
        text(&off)
    );
    let (status, body) = http("GET", http_addr, "/api/v1/traces", None).expect("an answer");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"tracing\":false"), "{body}");
}
