//! The upgrade lab: a real server and six agents on loopback, each running its own copy of
//! this build (version A), and a version B built by the test (`PROBERMESH_VERSION`), served
//! over HTTP on loopback. In order:
//! 1. refused before any agent changes: a wrong SHA-256, a wrong signature (the server pins a
//!    release key);
//! 2. a binary announced as B that reports A: the canary's preflight fails, the rollout halts;
//! 3. a B that exits at start: the canary rolls back to A by itself, the rollout halts, every
//!    agent stays on A;
//! 4. the rollout of B with one canary and batches of two, the server restarted after the
//!    canary (the rollout resumes), two of the agents under a supervisor-style wrapper
//!    (`--upgrade-restart exit`): all six end on B, their executables report B, `.prev` holds A;
//! 5. A offered again without force: a downgrade, refused for every agent.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use probermesh_core::task::signing::{TaskSigningKey, encode_hex};
use probermesh_tests::harness::{
    self, TempDir, free_tcp_port, free_udp_port, http, http_with_body, server_fingerprint, wait_for,
};
use serde_json::Value;

mod common;
use common::{BIN, TOKEN};

/// The version the test builds as B (newer than any version of this crate).
const VERSION_B: &str = "9.0.0";
/// Agents of the lab: (region, ip, under a supervisor-style wrapper).
const AGENTS: [(&str, &str, bool); 6] = [
    ("r1", "127.0.0.11", false),
    ("r1", "127.0.0.12", true),
    ("r2", "127.0.0.13", false),
    ("r2", "127.0.0.14", false),
    ("r3", "127.0.0.15", true),
    ("r3", "127.0.0.16", false),
];
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(240);
/// The server's bandwidth cap (`--upgrade-max-bytes-per-second`): 8 MiB/s, so the 40 MB
/// stripped B takes about 5 s per agent, where uncapped loopback takes well under one.
const MAX_BYTES_PER_SECOND: u64 = 8 * 1024 * 1024;
/// The link's chunk (`core::upgrade::rollout::CHUNK_LEN`).
const CHUNK_LEN: u64 = 256 * 1024;

/// The whole lab's bound: past it the watchdog kills every group and fails the test, so a
/// hung step cannot hold CI (a hang here once did).
const LAB_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Process groups the lab started, for the watchdog.
static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn kill_group(pgid: u32) {
    // `--`: without it, kill(1) takes the negative group id for a signal.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
}

/// Fails the test (exit 101, as a failed test does) and kills every group after `limit`.
fn arm_watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("upgrade lab: not done after {limit:?}; killing its processes");
        let groups = GROUPS.lock().map(|g| g.clone()).unwrap_or_default();
        groups.into_iter().for_each(kill_group);
        std::process::exit(101);
    });
}

/// A process group killed when dropped: an agent, its trial child, its wrapper.
struct Group(Child);

impl Group {
    fn spawn(command: &mut Command, what: &str) -> Group {
        let child = command
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("{what} starts: {e}"));
        if let Ok(mut groups) = GROUPS.lock() {
            groups.push(child.id());
        }
        Group(child)
    }

    /// A graceful stop (SIGTERM, bounded); drop then kills what is left of the group.
    fn stop(mut self) {
        harness::terminate(&mut self.0);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        kill_group(self.0.id());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Version B of this binary, built once into `target/upgrade-lab` (scripts/test.sh builds it
/// before the tests; here it is then up to date), stripped, copied into `dir`.
fn build_version_b(dir: &Path) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = workspace.join("target/upgrade-lab");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--locked",
            "-p",
            "probermesh",
            "--bin",
            "probermesh",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .env("PROBERMESH_VERSION", VERSION_B)
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .status()
        .expect("running cargo to build version B");
    assert!(status.success(), "building version B failed");
    let b = dir.join("probermesh-b");
    std::fs::copy(target.join("debug/probermesh"), &b).expect("copying B");
    strip(&b);
    b
}

fn strip(path: &Path) {
    let status = Command::new("strip")
        .arg(path)
        .status()
        .expect("running strip (binutils)");
    assert!(status.success(), "strip {}", path.display());
}

fn version_of(binary: &Path) -> String {
    let out = Command::new(binary)
        .arg("version")
        .output()
        .expect("running version");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned()
}

struct Lab {
    dir: TempDir,
    http: SocketAddr,
    link_port: u16,
    files_port: u16,
    key: TaskSigningKey,
    server: Option<Group>,
    agents: Vec<Group>,
    _files: Group,
}

impl Lab {
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn files(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    fn start_server(&mut self) {
        let mut command = Command::new(BIN);
        command
            .args([
                "server",
                "--rpc-listen-addr",
                &format!("127.0.0.1:{}", self.link_port),
                "--http-listen-addr",
                &self.http.to_string(),
                "--aggregation-interval",
                "2s",
                "--data-dir",
                &self.data_dir().display().to_string(),
                "--upgrade-pubkey",
                &self.dir.path().join("release.pub").display().to_string(),
                "--upgrade-max-bytes-per-second",
                &MAX_BYTES_PER_SECOND.to_string(),
            ])
            .env("PROBERMESH_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.server = Some(Group::spawn(&mut command, "the server"));
        let http_addr = self.http;
        wait_for("the server to be ready", Duration::from_secs(30), || {
            http("GET", http_addr, "/-/ready", None).filter(|(s, _)| *s == 200)
        });
    }

    fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }

    fn agent_exe(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("agent{index}/probermesh"))
    }

    fn start_agent(&self, index: usize) -> Group {
        let (region, ip, supervised) = AGENTS[index];
        let fingerprint = server_fingerprint(&self.data_dir());
        let exe = self.agent_exe(index);
        let agent_args = [
            "agent".to_owned(),
            "--region".into(),
            region.into(),
            "--ip".into(),
            ip.into(),
            "--rpc-report-addr".into(),
            format!("127.0.0.1:{}", self.link_port),
            "--probe-interval".into(),
            "1s".into(),
            "--tls-server-fingerprint".into(),
            fingerprint,
            "--upgrade".into(),
            "--upgrade-pubkey".into(),
            self.dir.path().join("release.pub").display().to_string(),
            "--upgrade-probation".into(),
            "2".into(),
            "--upgrade-deadline".into(),
            "40s".into(),
            "--upgrade-restart".into(),
            if supervised { "exit" } else { "exec" }.into(),
        ];
        let mut command = if supervised {
            // What supervisord's autorestart or systemd's Restart=always do: start the same
            // path again whenever it exits.
            let mut command = Command::new("sh");
            command
                .arg("-c")
                .arg("while :; do \"$0\" \"$@\"; sleep 0.2; done")
                .arg(&exe)
                .args(&agent_args);
            command
        } else {
            let mut command = Command::new(&exe);
            command.args(&agent_args);
            command
        };
        command
            .env("PROBERMESH_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Group::spawn(&mut command, "an agent")
    }

    /// `body` to `path` with the admin token: the status and the envelope.
    fn request(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let (status, answer) = http_with_body(
            method,
            self.http,
            path,
            Some(TOKEN),
            body,
            Duration::from_secs(120),
        )
        .expect("an answer");
        (status, serde_json::from_str(&answer).unwrap_or(Value::Null))
    }

    /// Posts a rollout of `file` (served by the lab) announced as `version`, signed with
    /// `key` (the lab's own when `None`).
    fn post(
        &self,
        file: &str,
        version: &str,
        sha256: &str,
        key: Option<&TaskSigningKey>,
        extra: &str,
    ) -> (u16, Value) {
        let bytes = std::fs::read(self.files().join(file)).expect("the release file");
        let signature = encode_hex(&key.unwrap_or(&self.key).sign(&bytes).0);
        let body = format!(
            r#"{{"downloadURL":"http://127.0.0.1:{}/{file}","md5Check":"","version":"{version}","force":false,"sha256":"{sha256}","signature":"{signature}","strategy":{{"canary":1,"batch":2,"soak":"1s"}}{extra}}}"#,
            self.files_port
        );
        self.request("POST", "/-/upgrade", &body)
    }

    /// `probermesh upgrade` for `file` announced as `version`, signed with the lab's key,
    /// one canary then batches of two, following the rollout (its stdout to `output`).
    fn client(&self, file: &str, version: &str, output: &Path) -> Command {
        let bytes = std::fs::read(self.files().join(file)).expect("the release file");
        let signature = self.dir.path().join(format!("{file}.sig"));
        std::fs::write(&signature, encode_hex(&self.key.sign(&bytes).0)).expect("the signature");
        let mut command = Command::new(BIN);
        command
            .args([
                "upgrade",
                "--server-http-url",
                &self.http.to_string(),
                "--version",
                version,
                "--download-url",
                &format!("http://127.0.0.1:{}/{file}", self.files_port),
                "--sha256",
                &sha256_hex(&self.files().join(file)),
                "--signature-file",
            ])
            .arg(&signature)
            .args([
                "--canary",
                "1",
                "--batch",
                "2",
                "--soak",
                "1s",
                "--wait-timeout",
            ])
            .arg(ROLLOUT_TIMEOUT.as_secs().to_string())
            .env("PROBERMESH_TOKEN", TOKEN)
            .stdout(std::fs::File::create(output).expect("the client's output"))
            .stderr(Stdio::inherit());
        command
    }

    fn status(&self) -> Value {
        let (status, envelope) = self.request("GET", "/-/upgrade", "");
        assert_eq!(status, 200, "{envelope}");
        envelope["data"].clone()
    }

    /// Waits until the rollout is in one of `phases`; its view.
    fn wait_phase(&self, phases: &[&str]) -> Value {
        wait_for(
            &format!("the rollout to be {phases:?}"),
            ROLLOUT_TIMEOUT,
            || {
                let view = self.status();
                phases
                    .contains(&view["phase"].as_str().unwrap_or_default())
                    .then_some(view)
            },
        )
    }

    fn abort(&self) {
        let (status, envelope) = self.request("POST", "/-/upgrade/abort", "{}");
        assert_eq!(status, 200, "{envelope}");
    }

    /// Every agent's executable reports `version`, and the server sees them all on it.
    fn assert_all_on(&self, version: &str) {
        for index in 0..AGENTS.len() {
            assert_eq!(
                version_of(&self.agent_exe(index)),
                format!("probermesh {version}"),
                "agent {index}'s executable"
            );
        }
        let http_addr = self.http;
        wait_for(
            &format!("six agents connected on {version}"),
            Duration::from_secs(60),
            || {
                let (_, metrics) = http("GET", http_addr, "/metrics", None)?;
                metrics
                    .lines()
                    .any(|l| {
                        l == format!("prober_server_agent_versions{{version=\"{version}\"}} 6")
                    })
                    .then_some(())
            },
        );
    }
}

fn sha_b_size(lab: &Lab) -> u64 {
    std::fs::metadata(lab.files().join("probermesh-b"))
        .expect("B")
        .len()
}

/// Between any two views, the agents of batches 2 and 3 received at most one second of the
/// cap (its burst) plus the cap times the span (taken wide: from before the first request to
/// after the second), plus the chunk each of the three may have had in hand. And the cap is
/// what bound them: the three downloads took at least their bytes over the rate, less a burst.
fn assert_the_cap_held(samples: &[(std::time::Instant, std::time::Instant, u64)], size: u64) {
    let rate = MAX_BYTES_PER_SECOND as f64;
    for (i, (before_i, _, received_i)) in samples.iter().enumerate() {
        for (_, after_j, received_j) in &samples[i + 1..] {
            let span = after_j.duration_since(*before_i).as_secs_f64();
            let allowed = rate + rate * span + 3.0 * CHUNK_LEN as f64;
            let got = received_j.saturating_sub(*received_i) as f64;
            assert!(
                got <= allowed,
                "{got} bytes in {span:.2} s under a cap of {rate} B/s (allowed {allowed})"
            );
        }
    }
    let first_moving = samples.iter().position(|(_, _, r)| *r > 0);
    let done = samples.iter().position(|(_, _, r)| *r >= 3 * size);
    if let (Some(first), Some(done)) = (first_moving, done)
        && first > 0
    {
        // From the last view before anything moved to the first that saw all of it.
        let start = samples[first.saturating_sub(1)].0;
        let took = samples[done].1.duration_since(start).as_secs_f64();
        let least = (3.0 * size as f64 - rate) / rate;
        eprintln!(
            "batches 2 and 3: {} bytes in {took:.1} s under the cap",
            3 * size
        );
        assert!(
            took >= least,
            "3 × {size} bytes in {took:.2} s: faster than the cap allows ({least:.2} s)"
        );
    } else {
        panic!("the views never saw batches 2 and 3 start and finish: {samples:?}");
    }
}

/// When each batch of a completed rollout committed, from its start (for the closing note;
/// the assertions are above).
fn print_batch_times(view: &Value) {
    let started = view["started_at_ms"].as_u64().unwrap_or_default();
    let mut last: std::collections::BTreeMap<u64, u64> = Default::default();
    for agent in view["agents"].as_array().into_iter().flatten() {
        if let (Some(batch), Some(at)) = (agent["batch"].as_u64(), agent["updated_at_ms"].as_u64())
        {
            let slot = last.entry(batch).or_default();
            *slot = (*slot).max(at);
        }
    }
    for (batch, at) in last {
        eprintln!(
            "batch {batch} committed at +{:.1} s",
            at.saturating_sub(started) as f64 / 1000.0
        );
    }
}

fn states(view: &Value) -> Vec<(String, String, String)> {
    view["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["ip"].as_str().unwrap_or_default().to_owned(),
                a["state"].as_str().unwrap_or_default().to_owned(),
                a["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn agents_roll_out_halt_roll_back_and_resume_as_their_operator_says() {
    arm_watchdog(LAB_TIMEOUT);
    let dir = TempDir::new("pm-upgrade-lab");
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).expect("files dir");
    // A: this build, stripped (a debug build is 230 MB; 40 MB stripped).
    let a = files.join("probermesh-a");
    std::fs::copy(BIN, &a).expect("copying A");
    strip(&a);
    let version_a = version_of(&a)
        .strip_prefix("probermesh ")
        .expect("probermesh <version>")
        .to_owned();
    let b = build_version_b(&files);
    assert_eq!(version_of(&b), format!("probermesh {VERSION_B}"));
    // A broken B: it reports B (so the preflight passes) and exits 1 at start.
    let broken = files.join("probermesh-broken");
    std::fs::write(&broken, format!("#!/bin/sh\nif [ \"$1\" = version ]; then echo 'probermesh {VERSION_B}'; exit 0; fi\necho 'broken on purpose' >&2\nexit 1\n")).expect("the broken B");
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let key = TaskSigningKey::from_seed([7; 32]);
    std::fs::write(dir.path().join("release.pub"), key.public().to_hex()).expect("the release key");
    let files_port = free_tcp_port();
    let files_server = Group::spawn(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &files_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(&files)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "python3 -m http.server",
    );
    let files_addr: SocketAddr = format!("127.0.0.1:{files_port}").parse().expect("addr");
    wait_for("the file server", Duration::from_secs(20), || {
        // HEAD: the body is a binary, which `http` does not read as text.
        http("HEAD", files_addr, "/probermesh-a", None).filter(|(s, _)| *s == 200)
    });
    let mut lab = Lab {
        dir,
        http: format!("127.0.0.1:{}", free_tcp_port())
            .parse()
            .expect("addr"),
        link_port: free_udp_port(),
        files_port,
        key,
        server: None,
        agents: Vec::new(),
        _files: files_server,
    };
    lab.start_server();
    for index in 0..AGENTS.len() {
        let exe = lab.agent_exe(index);
        std::fs::create_dir_all(exe.parent().expect("a dir")).expect("agent dir");
        std::fs::copy(&a, &exe).expect("copying A for an agent");
        let agent = lab.start_agent(index);
        lab.agents.push(agent);
    }
    let http_addr = lab.http;
    wait_for("six agents connected on A", Duration::from_secs(60), || {
        let (_, metrics) = http("GET", http_addr, "/metrics", None)?;
        metrics
            .lines()
            .any(|l| l == format!("prober_server_agent_versions{{version=\"{version_a}\"}} 6"))
            .then_some(())
    });
    let sha_b = sha256_hex(&b);

    // 1. Refused before any agent changes.
    let (status, answer) = lab.post("probermesh-b", VERSION_B, &"00".repeat(32), None, "");
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["data"]
            .as_str()
            .unwrap_or_default()
            .contains("the download's SHA-256 is"),
        "{answer}"
    );
    let other = TaskSigningKey::from_seed([8; 32]);
    let (status, answer) = lab.post("probermesh-b", VERSION_B, &sha_b, Some(&other), "");
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["data"]
            .as_str()
            .unwrap_or_default()
            .starts_with("signature:"),
        "{answer}"
    );
    assert!(lab.status().is_null(), "no rollout was started");

    // 2. Announced as B, reports A: the canary's preflight refuses it.
    let (status, answer) = lab.post("probermesh-a", VERSION_B, &sha256_hex(&a), None, "");
    assert_eq!(status, 200, "{answer}");
    let view = lab.wait_phase(&["halted"]);
    let failed: Vec<_> = states(&view)
        .into_iter()
        .filter(|(_, s, _)| s == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{view}");
    assert!(
        failed[0].2.contains(&format!(
            "reports {version_a}, not the announced {VERSION_B}"
        )),
        "{view}"
    );
    assert_eq!(view["counts"]["pending"], 5, "{view}");
    lab.abort();

    // 3. A B that exits at start, through `probermesh upgrade`: the canary rolls back to A by
    // itself, the rollout halts, the client says so and exits 1.
    let output = lab.dir.path().join("client-broken.out");
    let mut client = Group::spawn(
        &mut lab.client("probermesh-broken", VERSION_B, &output),
        "probermesh upgrade",
    );
    let exit = wait_for("the client to exit", ROLLOUT_TIMEOUT, || {
        client.0.try_wait().ok().flatten()
    });
    let printed = std::fs::read_to_string(&output).unwrap_or_default();
    assert_eq!(exit.code(), Some(1), "the client on a halt: {printed}");
    assert!(printed.contains(": halted"), "{printed}");
    assert!(printed.contains("rolled_back"), "{printed}");
    let view = lab.status();
    assert_eq!(view["phase"], "halted", "{view}");
    let rolled: Vec<_> = states(&view)
        .into_iter()
        .filter(|(_, s, _)| s == "rolled_back")
        .collect();
    assert_eq!(rolled.len(), 1, "{view}");
    assert!(rolled[0].2.contains("exited with status 1"), "{view}");
    assert_eq!(view["counts"]["pending"], 5, "{view}");
    lab.abort();
    lab.assert_all_on(&version_a);

    // 4. The real rollout, followed by `probermesh upgrade`; the server restarts once the
    // canary committed, and both the rollout and the client go on.
    let output = lab.dir.path().join("client-b.out");
    let mut client = Group::spawn(
        &mut lab.client("probermesh-b", VERSION_B, &output),
        "probermesh upgrade",
    );
    let rollout_id = wait_for("the rollout of B", Duration::from_secs(60), || {
        let view = lab.status();
        (view["version"] == VERSION_B && view["phase"] != "aborted")
            .then(|| view["rollout_id"].clone())
    });
    wait_for("the canary to commit", ROLLOUT_TIMEOUT, || {
        (lab.status()["counts"]["committed"] == 1).then_some(())
    });
    lab.stop_server();
    lab.start_server();
    // Sampled while batches 2 and 3 (started by this server, from offset 0) download: the
    // bytes agents received, between the instants the views were taken at the latest.
    let mut samples: Vec<(std::time::Instant, std::time::Instant, u64)> = Vec::new();
    let view = wait_for("the rollout to end", ROLLOUT_TIMEOUT, || {
        let before = std::time::Instant::now();
        let view = lab.status();
        let received: u64 = view["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["batch"].as_u64().is_some_and(|b| b >= 2))
            .filter_map(|a| a["received_bytes"].as_u64())
            .sum();
        samples.push((before, std::time::Instant::now(), received));
        std::thread::sleep(Duration::from_millis(250));
        matches!(view["phase"].as_str(), Some("completed" | "halted")).then_some(view)
    });
    assert_eq!(
        view["rollout_id"], rollout_id,
        "the same rollout resumed: {view}"
    );
    assert_eq!(view["phase"], "completed", "{view}");
    assert_eq!(view["counts"]["committed"], 6, "{view}");
    let exit = wait_for("the client to exit", Duration::from_secs(60), || {
        client.0.try_wait().ok().flatten()
    });
    let printed = std::fs::read_to_string(&output).unwrap_or_default();
    assert_eq!(exit.code(), Some(0), "the client on completion: {printed}");
    assert!(printed.contains(": completed"), "{printed}");
    assert_eq!(printed.matches(": committed").count(), 6, "{printed}");
    print_batch_times(&view);
    assert_the_cap_held(&samples, sha_b_size(&lab));
    let mut batches: Vec<u64> = view["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["batch"].as_u64())
        .collect();
    batches.sort_unstable();
    assert_eq!(
        batches,
        [0, 1, 1, 2, 2, 3],
        "one canary, then batches of two: {view}"
    );
    lab.assert_all_on(VERSION_B);
    for index in 0..AGENTS.len() {
        let prev = lab.agent_exe(index).with_file_name("probermesh.prev");
        assert_eq!(
            version_of(&prev),
            format!("probermesh {version_a}"),
            "agent {index} kept A"
        );
    }

    // 5. A downgrade without force: nobody is offered it.
    let (status, answer) = lab.post("probermesh-a", &version_a, &sha256_hex(&a), None, "");
    assert_eq!(status, 200, "{answer}");
    let view = lab.wait_phase(&["completed"]);
    assert_eq!(view["counts"]["skipped"], 6, "{view}");
    for (_, _, reason) in states(&view) {
        assert!(
            reason.contains(&format!("runs {VERSION_B}, newer than {version_a}")),
            "{reason}"
        );
    }
    lab.assert_all_on(VERSION_B);
}
