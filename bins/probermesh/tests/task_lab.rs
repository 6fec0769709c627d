//! Remote tasks end to end, with real processes on loopback: a server with `-server.task`
//! and four agents of four regions, each with its own task policy (default, shell mode, no
//! opt-in, signed tasks only). What an operator would try, checked against what the agents
//! really ran: the four operators, the opt-in, the command policy, both streams, the
//! timeout killing a forked tree, truncation, a task waiting for a disconnected agent, a
//! server restart running nothing twice, signatures, the Go CLI's JSON, and no token.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{BIN, TOKEN, start_agent_with, temp_dir};
use probermesh_core::link::TaskSpec;
use probermesh_core::matcher::MatchOp;
use probermesh_core::model::UnixMillis;
use probermesh_core::task::signing::{TaskSigningKey, encode_hex};
use probermesh_core::wire::task_signing_bytes;
use probermesh_tests::harness;
use probermesh_tests::harness::{
    Process, TempDir, free_tcp_port, free_udp_port, http, http_with_body, server_fingerprint,
    wait_for,
};
use serde_json::Value;

struct Lab {
    http: SocketAddr,
    link_port: u16,
    dir: TempDir,
    server: Option<Process>,
}

impl Lab {
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn meta_dir(&self) -> PathBuf {
        self.dir.path().join("task_meta")
    }

    fn start_server(&mut self) {
        let child = Command::new(BIN)
            .args([
                "-mode",
                "server",
                &format!("-server.rpc.listen.addr=127.0.0.1:{}", self.link_port),
                &format!("-server.http.listen.addr={}", self.http),
                "-server.aggregation.interval=2s",
                "-server.task",
                &format!("-server.task.meta.dir={}", self.meta_dir().display()),
                "-server.task.lifetime=60s",
                "-server.task.timeout=10s",
                &format!("-server.data.dir={}", self.data_dir().display()),
            ])
            .env("PROBERMESH_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the server starts");
        self.server = Some(Process(child));
        let http_addr = self.http;
        wait_for("the server to be ready", Duration::from_secs(20), || {
            http("GET", http_addr, "/-/ready", None).filter(|(s, _)| *s == 200)
        });
    }

    fn stop_server(&mut self) {
        if let Some(mut server) = self.server.take() {
            terminate(&mut server);
        }
    }

    fn start_agent(&self, region: &str, ip: &str, extra: &[&str]) -> Process {
        let fingerprint = server_fingerprint(&self.data_dir());
        start_agent_with(region, ip, self.link_port, &fingerprint, false, extra)
    }

    /// Submits `body` with `bearer`: the status and the JSON answer.
    fn post(&self, body: &str, bearer: Option<&str>) -> (u16, Value) {
        let (status, answer) = http_with_body(
            "POST",
            self.http,
            "/-/task",
            bearer,
            body,
            Duration::from_secs(10),
        )
        .expect("an answer");
        (status, serde_json::from_str(&answer).unwrap_or(Value::Null))
    }

    fn submit(&self, op: &str, pattern: &str, cmd: &str, extra: &str) -> (u64, Vec<String>) {
        let body = format!(
            "{{\"region\":{},\"expr\":{},\"cmd\":{}{extra}}}",
            serde_json::to_string(pattern).expect("JSON text"),
            serde_json::to_string(op).expect("JSON text"),
            serde_json::to_string(cmd).expect("JSON text")
        );
        let (status, reply) = self.post(&body, Some(TOKEN));
        assert_eq!(status, 200, "{body}: {reply}");
        assert_eq!(reply["msg"], "success");
        let id = reply["data"]["task_id"].as_u64().expect("a task id");
        let mut ips: Vec<String> = reply["data"]["matched"]
            .as_array()
            .expect("matched agents")
            .iter()
            .map(|a| a["ip"].as_str().expect("an ip").to_owned())
            .collect();
        ips.sort();
        (id, ips)
    }

    fn status(&self, id: u64) -> Value {
        let (code, body) =
            http("GET", self.http, &format!("/-/task/{id}"), Some(TOKEN)).expect("an answer");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<Value>(&body).expect("JSON")["data"].clone()
    }

    /// Waits until every matched agent of task `id` is final; each agent's run by IP.
    fn finished(&self, id: u64) -> std::collections::BTreeMap<String, Value> {
        wait_for(
            &format!("task {id} to end on every agent"),
            Duration::from_secs(40),
            || {
                let data = self.status(id);
                let agents = data["agents"].as_array()?.clone();
                // Final in the book and filed in the archive (the record, which carries the
                // output, is written just after the book changes).
                let done = agents.iter().all(|a| {
                    !matches!(a["state"].as_str(), Some("pending" | "running"))
                        && a["finished_at_ms"].is_u64()
                });
                done.then(|| {
                    agents
                        .into_iter()
                        .map(|a| (a["ip"].as_str().unwrap_or_default().to_owned(), a))
                        .collect()
                })
            },
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_server();
    }
}

/// Stops a process gracefully (SIGTERM, bounded) and reaps it.
fn terminate(process: &mut Process) {
    harness::terminate(&mut process.0);
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("a time")
}

/// The JSON fields of a task signed with `key` for `op pattern`.
fn signed_fields(key: &TaskSigningKey, id: u64, op: MatchOp, pattern: &str, cmd: &str) -> String {
    let spec = TaskSpec {
        id,
        command: cmd.to_owned(),
        timeout: Duration::from_secs(5),
        output_limit_bytes: 65_536,
        expires_at: UnixMillis(now_ms() + 60_000),
        region_op: op,
        region_pattern: pattern.to_owned(),
        signature: None,
    };
    let signature = key.sign(&task_signing_bytes(&spec));
    format!(
        ",\"id\":{id},\"expires_at_ms\":{},\"timeout_ms\":5000,\"output_limit_bytes\":65536,\"signature\":\"{}\"",
        spec.expires_at.as_millis(),
        encode_hex(&signature.0)
    )
}

/// Processes whose command line is exactly `argv`.
fn processes_running(argv: &[&str]) -> usize {
    let wanted: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == wanted))
        .count()
}

fn go_result_files(meta: &Path, region: &str) -> usize {
    std::fs::read_dir(meta)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{region}_"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn tasks_reach_exactly_the_agents_that_may_run_them_and_run_once() {
    let mut lab = Lab {
        http: format!("127.0.0.1:{}", free_tcp_port())
            .parse()
            .expect("an address"),
        link_port: free_udp_port(),
        dir: temp_dir("tasks"),
        server: None,
    };
    lab.start_server();
    let key = TaskSigningKey::from_seed([42; 32]);
    let pubkey = lab.dir.path().join("task.pub");
    std::fs::write(&pubkey, format!("# lab key\n{}\n", key.public().to_hex())).expect("the key");
    let mut west = Some(lab.start_agent("eu-west", "127.0.0.31", &["--task"]));
    let _east = lab.start_agent("eu-east", "127.0.0.32", &["--task", "--task-shell"]);
    let _us = lab.start_agent("us-east", "127.0.0.33", &[]);
    let _ap = lab.start_agent(
        "ap-south",
        "127.0.0.34",
        &["--task", "--task-pubkey", &pubkey.display().to_string()],
    );
    let metrics = |lab: &Lab| {
        http("GET", lab.http, "/metrics", None)
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    wait_for("four agents alive", Duration::from_secs(30), || {
        (metrics(&lab).matches("prober_agent_is_alive{").count() >= 4).then_some(())
    });

    // No token: 401, audited, nothing dispatched.
    let (status, reply) = lab.post(
        r#"{"region":".*","expr":"=~","cmd":"ping -c1 127.0.0.1"}"#,
        None,
    );
    assert_eq!(status, 401, "{reply}");
    let (status, _) = lab.post(
        r#"{"region":".*","expr":"=~","cmd":"ping -c1 127.0.0.1"}"#,
        Some("wrong-token-0123456789"),
    );
    assert_eq!(status, 401);
    assert!(!lab.meta_dir().join("by-task").exists(), "nothing ran");

    // The four operators, anchored, against the region only.
    let ping = "ping -c1 -W2 127.0.0.1";
    let (eq, at) = lab.submit("=", "eu-west", ping, "");
    assert_eq!(at, ["127.0.0.31"]);
    assert_eq!(
        lab.submit("!=", "eu-west", ping, "").1,
        ["127.0.0.32", "127.0.0.33", "127.0.0.34"]
    );
    assert_eq!(
        lab.submit("=~", "eu-.*", ping, "").1,
        ["127.0.0.31", "127.0.0.32"]
    );
    let (not_eu, at) = lab.submit("!~", "eu-.*", ping, "");
    assert_eq!(at, ["127.0.0.33", "127.0.0.34"]);
    let (status, reply) = lab.post(
        r#"{"region":"eu","expr":"=~","cmd":"ping -c1 127.0.0.1"}"#,
        Some(TOKEN),
    );
    assert_eq!(
        (status, reply["msg"].as_str()),
        (422, Some("no agent matched")),
        "{reply}"
    );
    let runs = lab.finished(eq);
    assert_eq!(runs["127.0.0.31"]["state"], "done", "{runs:?}");
    assert!(
        runs["127.0.0.31"]["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("1 received")
    );
    let runs = lab.finished(not_eu);
    assert_eq!(runs["127.0.0.33"]["state"], "refused", "no opt-in");
    assert!(
        runs["127.0.0.33"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("-agent.task")
    );
    assert_eq!(runs["127.0.0.34"]["state"], "refused", "unsigned");
    assert!(
        runs["127.0.0.34"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("unsigned")
    );

    // Shell syntax: refused without the shell, run with it; both streams are kept.
    let (id, _) = lab.submit("=~", "eu-.*", "echo out; echo err >&2", "");
    let runs = lab.finished(id);
    assert_eq!(runs["127.0.0.31"]["state"], "refused");
    assert!(
        runs["127.0.0.31"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("without a shell")
    );
    assert_eq!(runs["127.0.0.32"]["state"], "done", "{runs:?}");
    assert_eq!(runs["127.0.0.32"]["stdout"], "out\n");
    assert_eq!(runs["127.0.0.32"]["stderr"], "err\n");

    // A forked tree outliving the timeout leaves nothing behind.
    let (id, _) = lab.submit(
        "=",
        "eu-east",
        "sleep 317 & sleep 317 & echo started; sleep 317",
        ",\"timeout\":2",
    );
    let runs = lab.finished(id);
    assert_eq!(runs["127.0.0.32"]["state"], "timed_out", "{runs:?}");
    assert_eq!(runs["127.0.0.32"]["stdout"], "started\n");
    wait_for("no sleep left", Duration::from_secs(5), || {
        (processes_running(&["sleep", "317"]) == 0).then_some(())
    });

    // Output over the cap is cut and marked, in the JSON and in the Go file.
    let (id, _) = lab.submit("=", "eu-east", "head -c 200000 /dev/zero | tr '\\0' a", "");
    let runs = lab.finished(id);
    assert_eq!(
        runs["127.0.0.32"]["stdout"].as_str().map(str::len),
        Some(65_536)
    );
    assert_eq!(runs["127.0.0.32"]["truncated"], true);
    let marked = std::fs::read_dir(lab.meta_dir())
        .expect("the meta dir")
        .filter_map(Result::ok)
        .any(|e| {
            std::fs::read_to_string(e.path()).is_ok_and(|t| {
                t.starts_with("commond:\nhead -c 200000") && t.contains("[output truncated")
            })
        });
    assert!(marked, "the Go result file marks the cut");

    // Signed tasks: a wrong key is refused, the right one runs.
    let wrong = signed_fields(
        &TaskSigningKey::from_seed([7; 32]),
        1 << 52,
        MatchOp::Eq,
        "ap-south",
        ping,
    );
    let (id, _) = lab.submit("=", "ap-south", ping, &wrong);
    let runs = lab.finished(id);
    assert_eq!(runs["127.0.0.34"]["state"], "refused");
    assert!(
        runs["127.0.0.34"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("does not verify")
    );
    let right = signed_fields(&key, (1 << 52) + 1, MatchOp::Eq, "ap-south", ping);
    let (id, _) = lab.submit("=", "ap-south", ping, &right);
    assert_eq!(lab.finished(id)["127.0.0.34"]["state"], "done");

    // A task posted while an agent is away reaches it when it comes back.
    if let Some(mut agent) = west.take() {
        terminate(&mut agent);
    }
    std::thread::sleep(Duration::from_secs(1));
    let (away, at) = lab.submit("=", "eu-west", ping, "");
    assert_eq!(at, ["127.0.0.31"]);
    assert_eq!(lab.status(away)["agents"][0]["state"], "pending");
    let _west = lab.start_agent("eu-west", "127.0.0.31", &["--task"]);
    assert_eq!(lab.finished(away)["127.0.0.31"]["state"], "done");

    // A server restart while a task runs: it runs once, and its answer still arrives.
    let once = lab.dir.path().join("once.txt");
    let cmd = format!("echo ran >> {}; sleep 3; echo finished", once.display());
    let (id, _) = lab.submit("=", "eu-east", &cmd, "");
    wait_for("the task to start", Duration::from_secs(10), || {
        once.exists().then_some(())
    });
    lab.stop_server();
    lab.start_server();
    let runs = lab.finished(id);
    assert_eq!(runs["127.0.0.32"]["state"], "done", "{runs:?}");
    assert_eq!(
        std::fs::read_to_string(&once).expect("the marker"),
        "ran\n",
        "run once"
    );

    // The Go CLI's request, as it sends it (field order and all), with a token added.
    let (status, reply) = lab.post(
        r#"{"region":".*","cmd":"ls -lh /tmp","expr":"=~"}"#,
        Some(TOKEN),
    );
    assert_eq!(
        (status, reply["code"].as_i64(), reply["msg"].as_str()),
        (200, Some(200), Some("success")),
        "{reply}"
    );
    assert_eq!(reply["data"]["matched"].as_array().map(Vec::len), Some(4));

    // What an operator reads later: the Go files, the JSON records, the audit log, metrics.
    assert!(go_result_files(&lab.meta_dir(), "eu-east") >= 4);
    let audit = std::fs::read_to_string(lab.meta_dir().join("audit.jsonl")).expect("the audit log");
    assert!(
        audit.lines().any(|l| l.contains("\"unauthorized")),
        "{audit}"
    );
    assert!(
        audit
            .lines()
            .filter(|l| l.contains("\"submitted\""))
            .count()
            >= 10
    );
    assert!(
        !audit.contains(TOKEN),
        "the token never reaches the audit log"
    );
    let exposed = metrics(&lab);
    assert!(
        exposed.contains("prober_server_task_submissions_total{outcome=\"accepted\"}"),
        "{exposed}"
    );
    assert!(exposed.contains("prober_server_task_runs_total{state=\"refused\"}"));
}
