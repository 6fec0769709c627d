//! The `probermesh` binary as a user runs it: exit codes and the error texts they read.
//! The ICMP permission cases run in a fresh network namespace (`unshare -n`) as user nobody
//! (`setpriv`), so they do not depend on this machine's `ping_group_range`; they need root to
//! set that up, as CI has.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_probermesh");

fn fixture(path: &str) -> String {
    format!("{}/../../fixtures/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs `sh -c script` in a new network namespace; `$BIN` is the binary.
fn in_fresh_netns(script: &str) -> Output {
    Command::new("unshare")
        .args(["-n", "sh", "-c", script])
        .env("BIN", BIN)
        .output()
        .expect("unshare (util-linux) runs")
}

const AS_NOBODY: &str = "setpriv --reuid=65534 --regid=65534 --clear-groups";

#[test]
fn without_icmp_permission_the_error_says_how_to_fix_it() {
    let output = in_fresh_netns(&format!("{AS_NOBODY} \"$BIN\" ping -c 1 127.0.0.1"));
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(64), "{stdout}{stderr}");
    assert!(stdout.contains("CAP_NET_RAW"), "{stdout}");
    assert!(stdout.contains("net.ipv4.ping_group_range"), "{stdout}");
    assert!(stderr.contains("could not be probed"), "{stderr}");
}

#[test]
fn unprivileged_datagram_sockets_work_when_the_group_range_allows() {
    let output = in_fresh_netns(&format!(
        "ip link set lo up && sysctl -q -w net.ipv4.ping_group_range='0 2147483647' && \
         {AS_NOBODY} \"$BIN\" ping --socket datagram -c 3 -i 5 --json 127.0.0.1 ::1"
    ));
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for line in lines {
        assert!(line.contains("\"sent\":3,\"received\":3"), "{line}");
    }
}

#[test]
fn ping_rejects_bad_arguments_with_a_message() {
    for (args, expected) in [
        (vec!["ping", "-c", "0", "127.0.0.1"], "-c 0 is out of range"),
        (vec!["ping", "-s", "8", "127.0.0.1"], "-s 8 is out of range"),
        (
            vec!["ping", "--socket", "magic", "127.0.0.1"],
            "\"magic\" is not one of",
        ),
        (vec!["ping", "bad host!"], "target \"bad host!\""),
        (vec!["ping"], "name at least one target"),
    ] {
        let output = Command::new(BIN).args(&args).output().unwrap();
        let (_, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn check_probe_file_accepts_the_go_example_and_names_the_error_place() {
    let ok = Command::new(BIN)
        .args([
            "check-probe-file",
            &fixture("probe-files/valid/go-readme-example.yaml"),
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&ok);
    assert!(ok.status.success(), "{stderr}");
    assert!(stdout.contains("ok, 2 blocks, 4 targets"), "{stdout}");

    let bad_file = fixture("probe-files/invalid/yaml-syntax.yaml");
    let bad = Command::new(BIN)
        .args(["check-probe-file", &bad_file])
        .output()
        .unwrap();
    let (_, stderr) = text(&bad);
    assert_eq!(bad.status.code(), Some(64));
    assert!(stderr.contains("yaml-syntax.yaml:5:11"), "{stderr}");

    let missing = Command::new(BIN)
        .args(["check-probe-file", "/nonexistent/probe.yaml"])
        .output()
        .unwrap();
    let (_, stderr) = text(&missing);
    assert_eq!(missing.status.code(), Some(64));
    assert!(stderr.contains("/nonexistent/probe.yaml"), "{stderr}");
}

/// Runs `probermesh server` on loopback ports with `args`; it must fail at start.
fn failed_server_start(args: &[&str]) -> String {
    let output = Command::new(BIN)
        .args(["server", "--rpc-listen-addr", "127.0.0.1:0"])
        .args(["--http-listen-addr", "127.0.0.1:0"])
        .args(args)
        .env("PROBERMESH_TOKEN", "test-token-0123456789abc")
        .output()
        .expect("the binary runs");
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(64), "{args:?}: {stdout}{stderr}");
    stderr
}

#[test]
fn a_start_error_says_each_cause_once() {
    let dir = probermesh_tests::harness::TempDir::new("pm-cli-causes");
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    for args in [
        vec!["--auth-token-file", "/nonexistent/token"],
        vec![
            "--tls-cert-file",
            "/nonexistent/cert.pem",
            "--tls-key-file",
            "/nonexistent/key.pem",
        ],
    ] {
        let mut args = args;
        args.extend(["--data-dir", &data_arg]);
        let stderr = failed_server_start(&args);
        assert!(stderr.contains("/nonexistent/"), "{args:?}: {stderr}");
        assert_eq!(
            stderr.matches("No such file or directory").count(),
            1,
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_data_directory_that_is_a_file_or_others_may_write_is_refused_saying_why() {
    let dir = probermesh_tests::harness::TempDir::new("pm-cli-data-dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").expect("written");
    let stderr = failed_server_start(&["--data-dir", &file.display().to_string()]);
    assert!(
        stderr.contains(&format!(
            "{}: it is a regular file, not a directory; remove it or choose another data \
             directory (-server.data.dir)",
            file.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("File exists"), "{stderr}");

    let open = dir.path().join("open");
    std::fs::create_dir(&open).expect("created");
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let stderr = failed_server_start(&["--data-dir", &open.display().to_string()]);
    assert!(
        stderr.contains("every user may write it (mode 0777)"),
        "{stderr}"
    );
    assert!(
        !open.join("server-key.pem").exists(),
        "no key generated there"
    );
}

#[test]
fn the_demo_shows_a_region_table_and_serves_http() {
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--interval-s",
            "1",
            "--duration-s",
            "7",
            "--http-listen-addr",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the demo runs");
    let mut errors = child.stderr.take().expect("piped");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut errors, &mut text);
        text
    });
    // While it runs: its server traces (simulated traces, said so), read from the printed URL.
    let mut stdout = String::new();
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut traces_url = None;
    while traces_url.is_none() {
        let mut line = String::new();
        if lines.read_line(&mut line).expect("stdout") == 0 {
            break;
        }
        traces_url = line
            .split_once("http://")
            .filter(|_| line.contains("Path traces"))
            .and_then(|(_, url)| url.trim().strip_suffix("/api/v1/traces"))
            .map(str::to_owned);
        stdout.push_str(&line);
    }
    let addr = traces_url
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the traces URL is printed: {stdout}"));
    let (status, body) = probermesh_tests::harness::http("GET", addr, "/api/v1/traces", None)
        .expect("/api/v1/traces answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"tracing\":true"), "{body}");
    std::io::Read::read_to_string(&mut lines, &mut stdout).expect("stdout");
    let status = child.wait().expect("the demo ends");
    let stderr = stderr.join().unwrap_or_default();
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("path traces are simulated"), "{stdout}");
    assert!(
        stdout.contains(" ms / 0.0 %"),
        "RTT and loss cells: {stdout}"
    );
    assert!(stdout.contains("agents alive: 6"), "{stdout}");
    assert!(stdout.contains("/-/healthy: status 200"), "{stdout}");
}

#[test]
fn without_icmp_permission_the_demo_says_how_and_keeps_http() {
    let output = in_fresh_netns(&format!(
        "ip link set lo up && {AS_NOBODY} \"$BIN\" demo --interval-s 1 --duration-s 7 \
         --http-listen-addr 127.0.0.1:0"
    ));
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("ping_group_range"),
        "the fix is shown: {stdout}"
    );
    assert!(
        stdout.contains("/-/healthy: status 200"),
        "HTTP keeps running: {stdout}"
    );
}

#[test]
fn upgrade_limits_that_cannot_work_are_refused_saying_why() {
    let dir = probermesh_tests::harness::TempDir::new("pm-cli-upgrade-limits");
    let data_arg = dir.path().join("data").display().to_string();
    let stderr = failed_server_start(&[
        "--upgrade-max-bytes-per-second",
        "1000",
        "--data-dir",
        &data_arg,
    ]);
    assert!(
        stderr.contains("-server.upgrade.max-bytes-per-second") && stderr.contains("65536"),
        "{stderr}"
    );
    // The agent's probation deadline must fit in the server's 5 minutes for a restart.
    let output = Command::new(BIN)
        .args([
            "agent",
            "--region",
            "eu",
            "--rpc-report-addr",
            "127.0.0.1:9",
        ])
        .args(["--tls-server-fingerprint", &"AB".repeat(32)])
        .args(["--upgrade", "--upgrade-deadline", "10m"])
        .env("PROBERMESH_TOKEN", "test-token-0123456789abc")
        .output()
        .expect("the binary runs");
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(64), "{stdout}{stderr}");
    assert!(stderr.contains("-agent.upgrade.deadline"), "{stderr}");
}
