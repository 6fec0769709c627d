//! The Grafana dashboards against a real Prometheus: a server, four agents of three regions,
//! an HTTPS origin and Prometheus (the Debian package's binary, scraping every second) run as
//! real processes in a network namespace of their own (loopback only; an nftables rule drops
//! the echoes to the static region "dark", so failure panels have failures to show). Every
//! query of every panel and variable of `packaging/grafana/*.json`, and every query of the
//! Go ProberMesh's dashboards (`fixtures/grafana-go/queries.tsv`), must return data with the
//! variables at All (".*"): a bounded wait until all do, then the failing ones are named.
//! Needs root (network namespaces), as CI runs it.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{BIN, TOKEN, temp_dir};
use probermesh_tests::netns::{Namespace, remove_stale};
use serde_json::Value;

const LINK: &str = "127.0.0.1:6000";
const HTTP: &str = "127.0.0.1:6001";
const PROMETHEUS: &str = "127.0.0.1:9090";
const ORIGIN: &str = "127.0.0.1:8443";
const AGENTS: [(&str, &str); 4] = [
    ("eu", "127.0.0.11"),
    ("eu", "127.0.0.12"),
    ("us", "127.0.0.21"),
    ("ap", "127.0.0.31"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One query a dashboard runs: where it comes from, and whether it is a variable's
/// `label_values(...)` or a panel's PromQL.
#[derive(Debug)]
struct Query {
    origin: String,
    variable: bool,
    text: String,
}

/// The queries of a Grafana dashboard: its variables' and every panel's targets (rows
/// included).
fn dashboard_queries(path: &Path) -> Vec<Query> {
    let name = path
        .file_name()
        .expect("a file")
        .to_string_lossy()
        .into_owned();
    let text = std::fs::read_to_string(path).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    // The shape every dashboard must have: current schema, a Prometheus datasource variable
    // that every panel uses.
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "{name}: schemaVersion"
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(
        variables.iter().any(|v| v["type"] == "datasource"
            && v["name"] == "datasource"
            && v["query"] == "prometheus"),
        "{name}: a datasource variable"
    );
    let mut queries = Vec::new();
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let text = variable["query"]["query"]
            .as_str()
            .or_else(|| variable["query"].as_str())
            .expect("a variable query");
        assert_eq!(
            variable["allValue"], ".*",
            "{name}: variable {}",
            variable["name"]
        );
        assert_eq!(
            variable["includeAll"], true,
            "{name}: variable {}",
            variable["name"]
        );
        queries.push(Query {
            origin: format!("{name} variable {}", variable["name"]),
            variable: true,
            text: text.to_owned(),
        });
    }
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = panels.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner);
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{name}: panel {} must use the datasource variable",
            panel["title"]
        );
        let targets = panel["targets"].as_array().expect("panel targets");
        assert!(
            !targets.is_empty(),
            "{name}: panel {} has no query",
            panel["title"]
        );
        for target in targets {
            queries.push(Query {
                origin: format!("{name} panel {} ({})", panel["title"], target["refId"]),
                variable: false,
                text: target["expr"].as_str().expect("a PromQL expr").to_owned(),
            });
        }
    }
    queries
}

/// The Go dashboards' queries (`fixtures/grafana-go/queries.tsv`).
fn go_queries() -> Vec<Query> {
    let path = repo().join("fixtures/grafana-go/queries.tsv");
    std::fs::read_to_string(&path)
        .expect("the Go dashboards' queries")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 4, "queries.tsv: {line}");
            Query {
                origin: format!("Go {} {} {}", fields[0], fields[1], fields[2]),
                variable: fields[1] == "variable",
                text: fields[3].to_owned(),
            }
        })
        .collect()
}

/// The query as Grafana sends it with every variable at All and its built-in intervals.
fn substitute(query: &str) -> String {
    let mut text = query
        .replace("$__rate_interval", "30s")
        .replace("$__interval", "2s")
        .replace("$__range", "5m");
    for name in [
        "source_region",
        "target_region",
        "project",
        "target_addr",
        "region",
    ] {
        text = text
            .replace(&format!("${{{name}}}"), ".*")
            .replace(&format!("${name}"), ".*");
    }
    assert!(!text.contains('$'), "a variable left in {query}");
    text
}

/// `label_values(expr, label)` → (expr, label); `label_values(label)` → ("", label).
fn label_values(text: &str) -> (String, String) {
    let inner = text
        .trim()
        .strip_prefix("label_values(")
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or_else(|| panic!("a variable must be label_values(...): {text}"));
    match inner.rsplit_once(',') {
        Some((expr, label)) => (expr.trim().to_owned(), label.trim().to_owned()),
        None => (String::new(), inner.trim().to_owned()),
    }
}

struct Mesh {
    ns: Namespace,
    _dir: probermesh_tests::harness::TempDir,
}

impl Mesh {
    /// Asks Prometheus (through curl in the namespace); the JSON answer.
    fn ask(&self, args: &[&str]) -> Option<Value> {
        let mut command = vec!["curl", "-s", "--max-time", "5", "--get"];
        command.extend_from_slice(args);
        let output = self.ns.exec(&command).ok()?;
        serde_json::from_slice(&output.stdout).ok()
    }

    /// Why `query` returns no data, or `None` when it does (at least one finite sample, or
    /// one label value).
    fn no_data(&self, query: &Query) -> Option<String> {
        let text = substitute(&query.text);
        if query.variable {
            let (expr, label) = label_values(&text);
            let url = format!("http://{PROMETHEUS}/api/v1/label/{label}/values");
            let matcher = format!("match[]={expr}");
            let mut args = vec![url.as_str()];
            if !expr.is_empty() {
                args.extend(["--data-urlencode", matcher.as_str()]);
            }
            let answer = self.ask(&args)?;
            let values = answer["data"].as_array().map_or(0, Vec::len);
            return (answer["status"] != "success" || values == 0).then(|| format!("{answer}"));
        }
        let url = format!("http://{PROMETHEUS}/api/v1/query");
        let query_arg = format!("query={text}");
        let Some(answer) = self.ask(&[&url, "--data-urlencode", &query_arg]) else {
            return Some("no answer".to_owned());
        };
        let finite = answer["data"]["result"].as_array().is_some_and(|series| {
            series.iter().any(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            })
        });
        (answer["status"] != "success" || !finite).then(|| format!("{answer}"))
    }
}

fn start_mesh() -> Mesh {
    remove_stale();
    let dir = temp_dir("dashboards");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let mut ns = Namespace::create(format!("pm{}ndash", std::process::id()))
        .expect("a network namespace (run as root)");
    ns.exec(&["ip", "link", "set", "lo", "up"]).expect("lo up");
    ns.nft(
        "table inet pmdash {\n chain out {\n  type filter hook output priority 0;\n  ip daddr 127.0.0.99 icmp type echo-request drop\n }\n}\n",
    )
    .expect("the nftables rule");
    // The HTTPS origin: a self-signed certificate (the probe skips verification; the expiry
    // is still reported).
    probermesh_tests::netns::run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &path("origin.key"),
            "-out",
            &path("origin.pem"),
            "-days",
            "30",
            "-subj",
            "/CN=localhost",
        ],
    )
    .expect("openssl makes the origin's certificate");
    ns.spawn(
        "origin",
        &[
            "openssl",
            "s_server",
            "-quiet",
            "-www",
            "-accept",
            ORIGIN,
            "-cert",
            &path("origin.pem"),
            "-key",
            &path("origin.key"),
        ],
        &[],
    )
    .expect("openssl s_server");
    std::fs::write(
        dir.path().join("probe.yaml"),
        format!(
            "prober_configs:\n  - prober_type: icmp\n    region: dark\n    targets: [127.0.0.99]\n  - prober_type: http\n    region: web\n    http:\n      http_client_config:\n        tls_config:\n          insecure_skip_verify: true\n    targets: ['https://{ORIGIN}/', 'http://{HTTP}/-/healthy', 'http://{HTTP}/nope']\n"
        ),
    )
    .expect("the probe file");
    std::fs::write(dir.path().join("token"), TOKEN).expect("the token file");
    let data = dir.path().join("data");
    ns.spawn_logged(
        "server",
        &[
            BIN,
            "server",
            "--rpc-listen-addr",
            LINK,
            "--http-listen-addr",
            HTTP,
            "--aggregation-interval",
            "2s",
            "--probe-file",
            &path("probe.yaml"),
            "--data-dir",
            &data.display().to_string(),
            "--auth-token-file",
            &path("token"),
        ],
        &[],
        &dir.path().join("server.log"),
    )
    .expect("the server starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !data.join("server-cert.pem").exists() {
        assert!(Instant::now() < deadline, "the server made no certificate");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    let fingerprint = probermesh_tests::harness::server_fingerprint(&data);
    for (region, ip) in AGENTS {
        ns.spawn_logged(
            &format!("agent {ip}"),
            &[
                BIN,
                "agent",
                "--region",
                region,
                "--ip",
                ip,
                "--rpc-report-addr",
                LINK,
                "--probe-interval",
                "2s",
                "--tls-server-fingerprint",
                &fingerprint,
                "--auth-token-file",
                &path("token"),
            ],
            &[],
            &dir.path().join(format!("agent-{ip}.log")),
        )
        .expect("an agent starts");
    }
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: probermesh\n    static_configs:\n      - targets: ['{HTTP}']\n"
        ),
    )
    .expect("the Prometheus configuration");
    ns.spawn_logged(
        "prometheus",
        &[
            "prometheus",
            &format!("--config.file={}", path("prometheus.yml")),
            &format!("--storage.tsdb.path={}", path("tsdb")),
            &format!("--web.listen-address={PROMETHEUS}"),
        ],
        &[],
        &dir.path().join("prometheus.log"),
    )
    .expect("prometheus starts (Debian package prometheus)");
    Mesh { ns, _dir: dir }
}

#[test]
fn every_query_of_our_dashboards_and_of_the_go_dashboards_returns_data() {
    let mut queries = Vec::new();
    for name in [
        "probermesh-icmp.json",
        "probermesh-http.json",
        "probermesh-agents.json",
    ] {
        let found = dashboard_queries(&repo().join("packaging/grafana").join(name));
        assert!(found.len() >= 10, "{name}: {} queries", found.len());
        queries.extend(found);
    }
    let go = go_queries();
    assert!(go.len() >= 40, "the Go dashboards' queries: {}", go.len());
    queries.extend(go);
    let mesh = start_mesh();
    // Bounded: the mesh needs a few windows (2 s) for every series, rate() two scrapes.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut failing: Vec<(&Query, String)> = queries.iter().map(|q| (q, String::new())).collect();
    loop {
        failing = failing
            .into_iter()
            .filter_map(|(q, _)| mesh.no_data(q).map(|why| (q, why)))
            .collect();
        if failing.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let report: Vec<String> = failing
        .iter()
        .map(|(q, why)| format!("{}: {}\n    -> {why}", q.origin, q.text))
        .collect();
    assert!(
        report.is_empty(),
        "{} of {} queries return no data after 120 s:\n{}",
        report.len(),
        queries.len(),
        report.join("\n")
    );
    eprintln!("{} dashboard queries return data", queries.len());
}
