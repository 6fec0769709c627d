//! The path-tracing lab (issue 17): a server and three agents on a routed path of namespaces,
//! a fault injected at the middle router, and the server's automatic traces checked against
//! it. Needs root (as CI has); fails loudly without it.
//!
//! ```text
//!   west (A, server)  R1 ── R2 ── R3 ── east (B)
//!        └─────────────┘│
//!                  north (C, a leaf off R1)
//! ```
//!
//! - R3 drops its own Time Exceeded replies from the start (what a router that rate-limits
//!   ICMP, or filters it, looks like): it is silent in every trace and must never be blamed.
//! - A healthy phase: no trace runs.
//! - Then R2 drops echo requests, deterministically for the traces' probes (every probe of an
//!   odd round: its sequence number carries the round in its high byte, `icmp::trace`) and at
//!   random for the agents' pings (half of them; they leave with TTL 64, the traces' with at
//!   most 30). So every pair across R2 fails, and a trace across R2 loses exactly half of its
//!   probes from TTL 2 on: the verdict cannot depend on chance.
//! - Every automatic trace must blame hop 2 at R2's address (seen from its prober's side), and
//!   none may run for the pairs that do not cross R2 (west ↔ north).
//! - The fault flaps (off, on, off) under a budget of 8 automatic runs an hour and a 10 s
//!   cooldown: the runs never pass the budget and the ones it holds back are counted.
//! - The operator's client traces the same path and prints the table.
//!
//! The time from the fault to the first finished trace is printed (the issue's
//! trigger-to-result time): K bad windows of 2 s, then a 20-round trace at one round a second.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use probermesh_tests::chain::Chain;
use probermesh_tests::harness::{
    TempDir, sample, server_fingerprint, wait_for, wait_for_explained,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_probermesh");
const TOKEN: &str = "lab-token-0123456789";
const ADMIN: &str = "admin-token-0123456789abcdef";
/// The server's hourly budget of automatic traces: the first wave (four failing pairs, each
/// traced forward and back) fits in it; with a 10 s cooldown per pair, the traces the
/// flapping fault asks for next (recoveries, new episodes) do not.
const BUDGET: u32 = 8;

/// Node indexes of the chain.
const WEST: usize = 0;
const R2: usize = 2;
const R3: usize = 3;

struct TraceLab {
    /// Dropped last (after the processes it holds are stopped with it).
    chain: Chain,
    dir: TempDir,
    server: Ipv4Addr,
    east: Ipv4Addr,
    north: Ipv4Addr,
}

impl TraceLab {
    fn start() -> Self {
        let mut chain = Chain::with_leaves(3, &[1]).expect("a routed chain (needs root)");
        let dir = TempDir::new("pm-trace-lab");
        let server = chain.first_addr();
        let east = chain.last_addr();
        let north = chain.leaf_addr(0);
        let admin_file = dir.path().join("admin-token");
        std::fs::write(&admin_file, ADMIN).expect("the admin token file");
        // The path is routed both ways between every two of the three hosts.
        let last = chain.last();
        let hosts = [
            (chain.node(WEST), server),
            (chain.node(last), east),
            (chain.leaf(0), north),
        ];
        for (from, _) in &hosts {
            for (_, to) in &hosts {
                from.exec(&["ping", "-c", "1", "-W", "2", &to.to_string()])
                    .unwrap_or_else(|e| panic!("{} cannot reach {to}: {e}", from.name()));
            }
        }
        // R3 never answers with Time Exceeded.
        chain
            .node(R3)
            .nft(
                "table inet lab {\n  chain out {\n    type filter hook output priority 0;\n    \
                 icmp type time-exceeded drop\n  }\n}\n",
            )
            .expect("R3's filter");
        let data_dir = dir.path().to_owned();
        chain
            .node_mut(WEST)
            .spawn_logged(
                "server",
                &[
                    BIN,
                    "-mode",
                    "server",
                    &format!("-server.rpc.listen.addr={server}:6000"),
                    &format!("-server.http.listen.addr={server}:6001"),
                    "-server.aggregation.interval=2s",
                    &format!("-server.trace.budget={BUDGET}"),
                    "-server.trace.cooldown=10s",
                    "-log.level=4",
                    &format!("-server.data.dir={}", data_dir.display()),
                    &format!("-server.admin.token-file={}", admin_file.display()),
                ],
                &[("PROBERMESH_TOKEN", TOKEN)],
                &data_dir.join("server.log"),
            )
            .expect("the server starts");
        let lab = Self {
            chain,
            dir,
            server,
            east,
            north,
        };
        wait_for("the server", Duration::from_secs(20), || {
            lab.curl("/-/ready")
        });
        let fingerprint = server_fingerprint(lab.dir.path());
        let log = |name: &str| lab.dir.path().join(format!("agent-{name}.log"));
        let (west_log, east_log, north_log) = (log("west"), log("east"), log("north"));
        let mut lab = lab;
        let start = |ns: &mut probermesh_tests::netns::Namespace,
                     region: &str,
                     ip: Ipv4Addr,
                     log: &Path| {
            ns.spawn_logged(
                "agent",
                &[
                    BIN,
                    "-mode",
                    "agent",
                    &format!("-agent.region={region}"),
                    &format!("-agent.ip={ip}"),
                    &format!("-agent.rpc.report.addr={server}:6000"),
                    "-agent.probe.interval=2s",
                    "-log.level=4",
                    &format!("-agent.tls.server-fingerprint={fingerprint}"),
                ],
                &[("PROBERMESH_TOKEN", TOKEN)],
                log,
            )
            .expect("an agent starts");
        };
        start(lab.chain.node_mut(WEST), "west", server, &west_log);
        let last = lab.chain.last();
        start(lab.chain.node_mut(last), "east", east, &east_log);
        start(lab.chain.leaf_mut(0), "north", north, &north_log);
        lab
    }

    /// The body of `curl -sf --max-time 5 http://<server>:6001<path>` from the server's node.
    fn curl(&self, path: &str) -> Option<String> {
        let url = format!("http://{}:6001{path}", self.server);
        let output = self
            .chain
            .node(WEST)
            .exec(&["curl", "-sf", "--max-time", "5", &url])
            .ok()?;
        Some(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// What a failing check prints: the traces API, the trace metrics, the logs' tails.
    fn diagnose(&self) -> String {
        let mut out = format!(
            "traces: {}\ntargets: {}\n",
            self.curl("/api/v1/traces?limit=100").unwrap_or_default(),
            self.curl("/-/targets").unwrap_or_default()
        );
        for line in self.metrics().lines() {
            if line.starts_with("prober_server_trace")
                || line.starts_with("prober_icmp_packet_loss_rate")
                || line.starts_with("prober_server_dropped_points_total")
                || line.starts_with("prober_server_receive_points")
            {
                out.push_str(line);
                out.push('\n');
            }
        }
        // What the system's ping sees between the hosts now.
        let last = self.chain.last();
        let hosts = [
            ("west", self.chain.node(WEST)),
            ("east", self.chain.node(last)),
            ("north", self.chain.leaf(0)),
        ];
        for (label, ns) in hosts {
            for target in [self.server, self.east, self.north] {
                let summary = ns
                    .exec(&["ping", "-c", "2", "-W", "1", &target.to_string()])
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_else(|e| e.to_string());
                let summary = summary
                    .lines()
                    .find(|l| l.contains("packet loss"))
                    .unwrap_or(&summary)
                    .to_owned();
                out.push_str(&format!("ping from {label} to {target}: {summary}\n"));
            }
        }
        for name in [
            "server.log",
            "agent-west.log",
            "agent-east.log",
            "agent-north.log",
        ] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(25).collect();
            out.push_str(&format!("--- {name}\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// [`wait_for_explained`] with [`Self::diagnose`].
    fn wait<T>(&self, what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
        wait_for_explained(what, timeout, check, || self.diagnose())
    }

    fn metrics(&self) -> String {
        self.curl("/metrics").unwrap_or_default()
    }

    /// Every finished trace the server holds.
    fn traces(&self) -> Vec<Value> {
        let Some(body) = self.curl("/api/v1/traces?limit=100") else {
            return Vec::new();
        };
        let value: Value = serde_json::from_str(&body).expect("the traces API answers JSON");
        value["traces"].as_array().cloned().unwrap_or_default()
    }

    /// Runs the operator's client from the server's node.
    fn client(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let token_file = self.dir.path().join("admin-token");
        let server = format!("http://{}:6001", self.server);
        let mut command = vec![
            "ip".to_owned(),
            "netns".to_owned(),
            "exec".to_owned(),
            self.chain.node(WEST).name().to_owned(),
            BIN.to_owned(),
            "trace".to_owned(),
            "--server".to_owned(),
            server,
            "--token-file".to_owned(),
            token_file.display().to_string(),
        ];
        command.extend(args.iter().map(|a| (*a).to_owned()));
        let output = Command::new(&command[0])
            .args(&command[1..])
            .output()
            .expect("the client runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// The address R2 answers with to the prober `agent_ip`: toward the first end, except for
    /// the agent at the last end.
    fn r2_toward(&self, agent_ip: &str) -> String {
        if agent_ip == self.east.to_string() {
            self.chain.toward_last(R2).to_string()
        } else {
            self.chain.toward_first(R2).to_string()
        }
    }
}

/// R2's fault: every probe of a trace's odd rounds (TTL under 40; the round is the high byte
/// of the sequence) and half of the pings (TTL 64) at random.
const R2_FAULT: &str = "table inet lab {\n  chain pre {\n    type filter hook prerouting priority 0;\n    \
     icmp type echo-request ip ttl < 40 icmp sequence & 0x100 == 0x100 drop\n    \
     icmp type echo-request ip ttl >= 40 numgen random mod 2 == 0 drop\n  }\n}\n";

/// `prober_server_trace_runs_total{reason="operator"}`.
fn operator_runs(metrics: &str) -> f64 {
    sample(
        metrics,
        "prober_server_trace_runs_total{reason=\"operator\"}",
    )
    .unwrap_or(0.0)
}

/// The sum of `prober_server_trace_runs_total` over its reasons.
fn runs_total(metrics: &str) -> f64 {
    ["loss", "latency", "recovery", "operator"]
        .iter()
        .filter_map(|reason| {
            sample(
                metrics,
                &format!("prober_server_trace_runs_total{{reason=\"{reason}\"}}"),
            )
        })
        .sum()
}

/// The agent address of a trace record (`"agent": "<region>/<ip>"` or the address alone).
fn agent_ip(record: &Value) -> String {
    let agent = record["agent"].as_str().unwrap_or_default();
    agent
        .rsplit(['/', ' ', '@'])
        .next()
        .unwrap_or(agent)
        .to_owned()
}

#[test]
fn automatic_traces_blame_the_router_where_loss_starts_and_spare_the_healthy_pairs() {
    let lab = TraceLab::start();
    // Healthy: every pair of the three regions has data, and no trace runs.
    let pairs = [
        ("west", "east"),
        ("east", "west"),
        ("west", "north"),
        ("north", "west"),
        ("north", "east"),
        ("east", "north"),
    ];
    lab.wait("every pair to be measured", Duration::from_secs(60), || {
        let metrics = lab.metrics();
        pairs
            .iter()
            .all(|(source, target)| {
                sample(
                    &metrics,
                    &format!(
                        "prober_icmp_packet_loss_rate{{source_region=\"{source}\",target_region=\"{target}\"}}"
                    ),
                )
                .is_some()
            })
            .then_some(())
    });
    // Six more windows of health (twice the K that would trigger).
    std::thread::sleep(Duration::from_secs(12));
    let metrics = lab.metrics();
    assert_eq!(
        runs_total(&metrics),
        0.0,
        "a healthy mesh was traced:\n{metrics}"
    );
    assert!(lab.traces().is_empty());

    // The fault at R2.
    let fault_at = Instant::now();
    lab.chain.node(R2).nft(R2_FAULT).expect("R2's fault");
    let west_ip = lab.server.to_string();
    let east_ip = lab.east.to_string();
    let mut first_result: Option<Duration> = None;
    // Both ends of west ↔ east traced: west's agent toward east, east's toward west.
    let records = lab.wait(
        "traces from both ends of west-east",
        Duration::from_secs(180),
        || {
            let records = lab.traces();
            if first_result.is_none() && !records.is_empty() {
                first_result = Some(fault_at.elapsed());
            }
            let probers: BTreeSet<String> = records
                .iter()
                .filter(|r| r["outcome"] == "reported" && r["error"].is_null())
                .map(agent_ip)
                .collect();
            (probers.contains(&west_ip) && probers.contains(&east_ip)).then_some(records)
        },
    );
    let trigger_to_result = first_result.expect("a first trace");
    eprintln!(
        "trigger to result: {:.1} s from the fault to the first finished trace",
        trigger_to_result.as_secs_f64()
    );
    for record in &records {
        eprintln!("{}", serde_json::to_string(record).unwrap_or_default());
        let pair = (
            record["source_region"].as_str().unwrap_or_default(),
            record["target_region"].as_str().unwrap_or_default(),
        );
        assert!(
            pair != ("west", "north") && pair != ("north", "west"),
            "a pair that does not cross R2 was traced: {record}"
        );
        let prober = agent_ip(record);
        let blame = &record["blame"];
        assert_eq!(blame["kind"], "hop", "{record}");
        assert_eq!(blame["hop"], 2, "{record}");
        assert_eq!(
            blame["address"].as_str(),
            Some(lab.r2_toward(&prober).as_str()),
            "{record}"
        );
        // R3 is silent (its Time Exceeded replies are dropped), never blamed.
        let r3_ttl = if prober == east_ip { 1 } else { 3 };
        let silent: Vec<u64> = blame["silent_ttls"]
            .as_array()
            .map(|ttls| ttls.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        assert!(silent.contains(&r3_ttl), "R3 not silent: {record}");
        // Exactly half of the probes from TTL 2 on were dropped.
        let hops = record["hops"].as_array().expect("hops");
        let destination = hops.last().expect("a destination hop");
        assert_eq!(destination["host"].as_str(), record["target"].as_str());
        assert_eq!(
            destination["received"].as_u64().map(|r| r * 2),
            destination["sent"].as_u64(),
            "{record}"
        );
    }
    let metrics = lab.metrics();
    assert!(runs_total(&metrics) >= 2.0, "{metrics}");

    // The fault flaps: off, on, off. Each pair's recovery asks for traces again, and the
    // budget holds them back: never more than BUDGET automatic runs, and refusals counted.
    let automatic = |metrics: &str| runs_total(metrics) - operator_runs(metrics);
    for (on, what) in [(false, "off"), (true, "on"), (false, "off again")] {
        let ruleset = if on { R2_FAULT } else { "flush ruleset\n" };
        lab.chain.node(R2).nft(ruleset).expect("R2's fault flaps");
        let until = Instant::now() + Duration::from_secs(14);
        while Instant::now() < until {
            let metrics = lab.metrics();
            assert!(
                automatic(&metrics) <= f64::from(BUDGET),
                "the budget did not hold with the fault {what}:\n{}",
                lab.diagnose()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let refused = lab.wait(
        "a run held back by the budget",
        Duration::from_secs(60),
        || {
            let metrics = lab.metrics();
            assert!(automatic(&metrics) <= f64::from(BUDGET), "{metrics}");
            sample(
                &metrics,
                "prober_server_trace_refusals_total{reason=\"budget\"}",
            )
            .filter(|refused| *refused >= 1.0)
        },
    );
    eprintln!(
        "after the flapping: {} automatic runs (budget {BUDGET}), {refused} held back by the budget",
        automatic(&lab.metrics())
    );
    lab.chain.node(R2).nft(R2_FAULT).expect("R2's fault again");

    // The operator's trace from north's agent toward east, as an operator runs it.
    let north_agent = format!("north/{}", lab.north);
    let command = [
        "--agent",
        &north_agent,
        "--target",
        &east_ip,
        "--rounds",
        "10",
        "--wait",
    ];
    // The agent may still be busy with an automatic trace: the client then says so ("a trace
    // in flight", exit 2); ask again once it is free.
    let (code, stdout) = lab.wait(
        "north's agent to take the operator's trace",
        Duration::from_secs(120),
        || {
            let (code, stdout, stderr) = lab.client(&command);
            eprintln!("probermesh trace {}\n{stdout}{stderr}", command.join(" "));
            if stderr.contains("in flight") {
                std::thread::sleep(Duration::from_secs(1));
                return None;
            }
            Some((code, stdout))
        },
    );
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains(&lab.chain.toward_leaf(0).to_string()),
        "{stdout}"
    );
    assert!(
        stdout.contains(&lab.chain.toward_first(R2).to_string()),
        "{stdout}"
    );
    assert!(stdout.contains("???"), "R3 silent: {stdout}");
    assert!(
        stdout.contains(&format!(
            "blame: hop 2 ({}, 50.0% loss)",
            lab.chain.toward_first(R2)
        )),
        "the blame line: {stdout}"
    );
}
