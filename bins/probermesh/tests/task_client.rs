//! The operator's client, `probermesh task` (and `targets`, `task-key`), as the binary an
//! operator runs, against a real server with `-server.task` and three agents on loopback:
//! one that runs tasks, one without the opt-in, one that runs only tasks signed by a key
//! `probermesh task-key` made. Exit codes, what it prints, the Go CLI's spellings, and what
//! the server does with a signed request's own `timeout` and `ttl` (the signed parts win).

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, TOKEN, start_agent_with, temp_dir};
use probermesh_adapters::admin_client::{TaskRequest, now_unix_millis, read_signing_key};
use probermesh_tests::harness::{
    Process, free_tcp_port, free_udp_port, http, http_with_body, sample, server_fingerprint,
    wait_for,
};
use serde_json::Value;

/// The admin token (`-server.admin.token-file`), not the agents' [`TOKEN`].
const ADMIN: &str = "admin-token-abcdef0123456789";

/// What a run of the client did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout:\n{}--- stderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `probermesh args…` with no token in its environment but `env`; killed (and the test
/// failed) if it has not ended after 90 s.
fn client(args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("PROBERMESH_ADMIN_TOKEN")
        .env_remove("PROBERMESH_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = Process(command.spawn().expect("the client starts"));
    let drain = |stream: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(
        child
            .0
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .0
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("waiting for the client") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "probermesh {args:?} did not end within 90 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Ran {
        code: status.code(),
        stdout: stdout.join().expect("stdout"),
        stderr: stderr.join().expect("stderr"),
    }
}

/// `POST /-/task` with `body` and the admin token: the status and the JSON answer.
fn post(addr: SocketAddr, body: &str) -> (u16, Value) {
    let (status, answer) = http_with_body(
        "POST",
        addr,
        "/-/task",
        Some(ADMIN),
        body,
        Duration::from_secs(10),
    )
    .expect("an answer");
    (status, serde_json::from_str(&answer).unwrap_or(Value::Null))
}

/// `GET /-/task/<id>`'s data once every agent's run is final and filed.
fn finished(addr: SocketAddr, id: u64) -> Value {
    wait_for(
        &format!("task {id} to be filed on every agent"),
        Duration::from_secs(60),
        || {
            let (code, body) = http("GET", addr, &format!("/-/task/{id}"), Some(ADMIN))?;
            assert_eq!(code, 200, "{body}");
            let data = serde_json::from_str::<Value>(&body).ok()?["data"].clone();
            let filed = data["agents"].as_array()?.iter().all(|a| {
                !matches!(a["state"].as_str(), Some("pending" | "running"))
                    && a["finished_at_ms"].is_u64()
            });
            filed.then_some(data)
        },
    )
}

fn start_server(dir: &Path, http_addr: SocketAddr, link_port: u16, admin: &Path) -> Process {
    let child = Command::new(BIN)
        .args([
            "-mode",
            "server",
            &format!("-server.rpc.listen.addr=127.0.0.1:{link_port}"),
            &format!("-server.http.listen.addr={http_addr}"),
            "-server.aggregation.interval=2s",
            "-server.task",
            &format!("-server.task.meta.dir={}", dir.join("task_meta").display()),
            &format!("-server.admin.token-file={}", admin.display()),
            &format!("-server.data.dir={}", dir.join("data").display()),
        ])
        .env("PROBERMESH_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the server starts");
    let server = Process(child);
    wait_for("the server to be ready", Duration::from_secs(30), || {
        http("GET", http_addr, "/-/ready", None).filter(|(s, _)| *s == 200)
    });
    server
}

#[test]
#[allow(clippy::too_many_lines, reason = "one lab, its cases in order")]
fn the_task_client_submits_waits_prints_and_exits_by_the_outcome() {
    let dir = temp_dir("task-client");
    let admin = dir.path().join("admin-token");
    std::fs::write(&admin, format!("{ADMIN}\n")).expect("the admin token file");
    let http_addr: SocketAddr = format!("127.0.0.1:{}", free_tcp_port())
        .parse()
        .expect("an address");
    let server_url = http_addr.to_string();
    let server_url = server_url.as_str();
    let link_port = free_udp_port();

    // A key pair from the client, the public half for the signed-only agent.
    let key: PathBuf = dir.path().join("task.key");
    let key_arg = key.display().to_string();
    let made = client(&["task-key", "--out", &key_arg], &[]);
    assert_eq!(made.code, Some(0), "{made:?}");
    let pubkey = dir.path().join("task.key.pub");
    assert!(
        made.stdout.contains(&pubkey.display().to_string()),
        "{made:?}"
    );

    let _server = start_server(dir.path(), http_addr, link_port, &admin);
    let fingerprint = server_fingerprint(&dir.path().join("data"));
    let agent = |region: &str, ip: &str, extra: &[&str]| {
        start_agent_with(region, ip, link_port, &fingerprint, false, extra)
    };
    let _west = agent("eu-west", "127.0.0.41", &["--task"]);
    let _east = agent("eu-east", "127.0.0.42", &[]);
    let _ap = agent(
        "ap-south",
        "127.0.0.43",
        &["--task", "--task-pubkey", &pubkey.display().to_string()],
    );
    let metrics = || {
        http("GET", http_addr, "/metrics", None)
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    wait_for("three agents alive", Duration::from_secs(40), || {
        (metrics().matches("prober_agent_is_alive{").count() >= 3).then_some(())
    });
    let meta = dir.path().join("task_meta");
    let ping = "ping -c 1 127.0.0.1";

    // (a) No token: exit 2, the server's 401 on stderr, nothing dispatched. A wrong token
    // (the agents', not the admin's) is no better.
    let ran = client(
        &["task", "--server-http-url", server_url, "--cmd", ping],
        &[],
    );
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(
        ran.stderr
            .contains("401 unauthorized: no Authorization header"),
        "{ran:?}"
    );
    assert!(!ran.stdout.contains("matched"), "{ran:?}");
    let ran = client(
        &["task", "--server-http-url", server_url, "--cmd", ping],
        &[("PROBERMESH_TOKEN", TOKEN)],
    );
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(ran.stderr.contains("401 unauthorized"), "{ran:?}");
    assert!(!meta.join("by-task").exists(), "nothing was dispatched");
    let exposed = metrics();
    assert_eq!(
        sample(
            &exposed,
            "prober_server_task_submissions_total{outcome=\"accepted\"}"
        ),
        Some(0.0),
        "{exposed}"
    );
    assert_eq!(
        sample(
            &exposed,
            "prober_server_task_submissions_total{outcome=\"unauthorized\"}"
        ),
        Some(2.0),
        "{exposed}"
    );

    // (b) One agent, a diagnostic it may run: exit 0, its output printed.
    let task = |selector: &[&str], cmd: &str, extra: &[&str]| {
        let mut args = vec![
            "task",
            "--server-http-url",
            server_url,
            "--token-file",
            admin.to_str().expect("a UTF-8 path"),
            "--wait-timeout",
            "60",
        ];
        args.extend(selector);
        args.extend(["--cmd", cmd]);
        args.extend(extra);
        client(&args, &[])
    };
    let ran = task(&["--region-match", "eu-west", "--operator", "="], ping, &[]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(ran.stdout.contains("matched 1 agent(s)\n"), "{ran:?}");
    assert!(
        ran.stdout.contains("== eu-west 127.0.0.41: done (exit 0, "),
        "{ran:?}"
    );
    assert!(ran.stdout.contains("-- stdout:\nPING 127.0.0.1"), "{ran:?}");
    assert!(ran.stdout.contains("1 received"), "{ran:?}");

    // Both eu agents: one runs it, one has no opt-in and refuses: exit 1, both printed.
    let ran = task(&["--region-match", "eu-.*"], ping, &[]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.stdout.contains("matched 2 agent(s)\n"), "{ran:?}");
    assert!(
        ran.stdout.contains("== eu-west 127.0.0.41: done (exit 0, "),
        "{ran:?}"
    );
    assert!(
        ran.stdout
            .contains("== eu-east 127.0.0.42: refused (exit -, ")
            && ran
                .stdout
                .contains("ms): the agent does not run tasks (it was started without -agent.task)"),
        "{ran:?}"
    );

    // (c) A program outside the allow-list: refused, the reason printed, exit 1.
    let ran = task(
        &["--region-match", "eu-west", "--operator", "="],
        "cat /etc/hostname",
        &[],
    );
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(
        ran.stdout.contains("== eu-west 127.0.0.41: refused")
            && ran
                .stdout
                .contains("\"cat\" is not a program this agent runs for tasks"),
        "{ran:?}"
    );
    assert!(!ran.stdout.contains("-- stdout:"), "nothing ran: {ran:?}");

    // (d) The Go CLI's command lines, the token from the environment.
    let ran = client(
        &[
            "task",
            &format!("--server.http.url={server_url}"),
            "--region.match",
            "eu-west",
            "--operator",
            "=",
            "--cmd",
            ping,
        ],
        &[("PROBERMESH_ADMIN_TOKEN", ADMIN)],
    );
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(
        ran.stdout.contains("== eu-west 127.0.0.41: done (exit 0, ")
            && ran.stdout.contains("1 received"),
        "{ran:?}"
    );
    let ran = client(
        &[
            "target",
            "--server.http.url",
            server_url,
            "--region.match",
            "eu-.*",
            "--prober.type",
            "icmp",
        ],
        &[("PROBERMESH_ADMIN_TOKEN", ADMIN)],
    );
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let targets: Value = serde_json::from_str(&ran.stdout).expect("the targets as JSON");
    let mut regions: Vec<&String> = targets.as_object().expect("by region").keys().collect();
    regions.sort();
    assert_eq!(regions, ["eu-east", "eu-west"], "{ran:?}");

    // (e) The signed-only agent: a task signed with the key runs, an unsigned one is refused.
    let ap = ["--region-match", "ap-south", "--operator", "="];
    let ran = task(&ap, ping, &["--key", &key_arg]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(
        ran.stdout.contains("matched 1 agent(s) (signed)\n"),
        "{ran:?}"
    );
    assert!(
        ran.stdout
            .contains("== ap-south 127.0.0.43: done (exit 0, ")
            && ran.stdout.contains("1 received"),
        "{ran:?}"
    );
    let ran = task(&ap, ping, &[]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(
        ran.stdout.contains("== ap-south 127.0.0.43: refused") && ran.stdout.contains("unsigned"),
        "{ran:?}"
    );

    // A signed request that also says `"timeout": 1` and `"ttl": 1`: the server keeps the
    // signed timeout (20 s) and expiry, so a 3 s ping is not cut at 1 s.
    let mut request = TaskRequest {
        region: "ap-south".into(),
        expr: "=".into(),
        cmd: "ping -c 4 127.0.0.1".into(),
        timeout: Some(20.0),
        ..TaskRequest::default()
    };
    let signing = read_signing_key(&key).expect("the key task-key wrote");
    request
        .sign(&signing, (1 << 52) + 7, now_unix_millis())
        .expect("signed");
    let signed_expiry = request.expires_at_ms.expect("an expiry");
    assert_eq!(request.timeout_ms, Some(20_000));
    let mut body = serde_json::to_value(&request).expect("JSON");
    body["timeout"] = 1.into();
    body["ttl"] = 1.into();
    let (status, reply) = post(http_addr, &body.to_string());
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["data"]["task_id"], (1_u64 << 52) + 7, "{reply}");
    assert_eq!(reply["data"]["expires_at_ms"], signed_expiry, "{reply}");
    let data = finished(http_addr, (1 << 52) + 7);
    assert_eq!(data["timeout_ms"], 20_000, "{data}");
    assert_eq!(data["expires_at_ms"], signed_expiry, "{data}");
    let run = &data["agents"][0];
    assert_eq!(run["state"], "done", "{data}");
    assert!(
        run["duration_ms"].as_u64().is_some_and(|d| d >= 2_000),
        "ran past the request's 1 s: {data}"
    );
    assert!(
        run["stdout"]
            .as_str()
            .is_some_and(|s| s.contains("4 received")),
        "{data}"
    );
}
