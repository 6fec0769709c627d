//! The mesh page in a real browser (Debian's chromium, driven through chromedriver's W3C
//! WebDriver HTTP API by a tiny client below), against a live mesh of real processes on
//! loopback: a server and seven agents of five regions. An nftables rule scoped to two
//! addresses drops their echo requests: the only host of region `echo` (every pair to it
//! fails) and one of the three hosts of `charlie` (the robust aggregation leaves it out: pairs
//! to `charlie` are partial); one agent is stopped (region `delta`'s row goes dark), and a
//! hostile URL is probed. Checked: regions² cells in the right states, a click on a cell
//! shows its history and its path traces section, the hostile URL is shown as text (no element injected),
//! no console errors (CSP violations are errors); a screenshot goes to
//! `target/mesh-view/mesh-page.png`. Every wait is a bounded wait on a condition.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, TOKEN, start_agent_with, temp_dir};
use probermesh_tests::harness::{
    self, Process, TempDir, free_tcp_port, free_udp_port, http, server_fingerprint, wait_for,
};
use serde_json::{Value, json};

/// The agents' regions and addresses (unusual loopback addresses, so the nftables rule
/// touches no other test's traffic).
const AGENTS: [(&str, &str); 7] = [
    ("alpha", "127.0.77.1"),
    ("bravo", "127.0.77.2"),
    ("charlie", "127.0.77.3"),
    ("charlie", "127.0.77.5"),
    ("charlie", "127.0.77.6"),
    ("delta", "127.0.77.4"),
    ("echo", "127.0.77.7"),
];
/// The regions, as the page sorts them.
const REGIONS: [&str; 5] = ["alpha", "bravo", "charlie", "delta", "echo"];
/// Whose echo requests are dropped: one host of charlie (partial), echo's only host (failed).
const DROPPED: &str = "127.0.77.3, 127.0.77.7";
/// The agent stopped to darken its region.
const DELTA: usize = 5;
/// A URL written to break out of markup; probed on the discard port, so it fails.
const HOSTILE_URL: &str =
    "http://127.0.0.1:9/<img/src=x/onerror=alert(1)>?q=\"'&r=</td><script>alert(2)</script>";

/// An nftables table that drops echo requests to one address, removed when dropped.
struct DropRule(String);

impl DropRule {
    fn install(addr: &str) -> Self {
        let name = format!("probermesh_mesh_page_{}", std::process::id());
        let rules = format!(
            "table ip {name} {{\n chain input {{\n type filter hook input priority 0;\n ip daddr {{ {addr} }} icmp type echo-request drop\n }}\n}}\n"
        );
        let mut nft = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft runs (apt-get install nftables; needs root)");
        nft.stdin
            .take()
            .expect("nft's stdin")
            .write_all(rules.as_bytes())
            .expect("the rules reach nft");
        assert!(nft.wait().expect("nft ends").success(), "nft took the rule");
        Self(name)
    }
}

impl Drop for DropRule {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.0])
            .status();
    }
}

/// A tiny W3C WebDriver client over chromedriver's HTTP port.
struct Driver {
    addr: SocketAddr,
    session: String,
    _process: Process,
}

fn webdriver(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Option<Value> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    // chromedriver may keep the connection open: read the headers, then Content-Length bytes.
    let mut answer = Vec::new();
    let mut buf = [0u8; 65_536];
    let (head_len, body_len) = loop {
        let n = tcp.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        answer.extend_from_slice(&buf[..n]);
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())?;
            break (end + 4, length);
        }
    };
    while answer.len() < head_len + body_len {
        let n = tcp.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    serde_json::from_slice(answer.get(head_len..head_len + body_len)?).ok()
}

impl Driver {
    fn start(dir: &TempDir) -> Self {
        let port = free_tcp_port();
        let process = Process(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver runs (apt-get install chromium chromium-driver)"),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
        wait_for("chromedriver to be ready", Duration::from_secs(30), || {
            webdriver(addr, "GET", "/status", None)
                .filter(|v| v["value"]["ready"] == true)
                .map(|_| ())
        });
        let profile = dir.path().join("chromium-profile");
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1100",
                         format!("--user-data-dir={}", profile.display())],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        }}});
        let created = webdriver(addr, "POST", "/session", Some(&capabilities))
            .expect("chromedriver answers the new session");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a session: {created}"))
            .to_owned();
        Self {
            addr,
            session,
            _process: process,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let answer = webdriver(self.addr, method, &path, body)
            .unwrap_or_else(|| panic!("chromedriver answers {method} {path}"));
        assert!(
            answer["value"]["error"].is_null(),
            "{method} {path}: {answer}"
        );
        answer["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({ "url": url })));
    }

    fn script(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    fn click(&self, css: &str) {
        let element = self.call(
            "POST",
            "/element",
            Some(&json!({ "using": "css selector", "value": css })),
        );
        let id = element
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("an element reference")
            .to_owned();
        self.call("POST", &format!("/element/{id}/click"), Some(&json!({})));
    }

    /// The browser's console since the last call.
    fn console(&self) -> Vec<Value> {
        let path = format!("/session/{}/se/log", self.session);
        let body = json!({ "type": "browser" });
        let answer = webdriver(self.addr, "POST", &path, Some(&body))
            .filter(|a| a["value"].is_array())
            .or_else(|| {
                let path = format!("/session/{}/log", self.session);
                webdriver(self.addr, "POST", &path, Some(&body))
            })
            .expect("chromedriver gives the browser log");
        answer["value"].as_array().cloned().unwrap_or_default()
    }

    fn screenshot(&self) -> Vec<u8> {
        let encoded = self.call("GET", "/screenshot", None);
        base64_decode(encoded.as_str().expect("base64 PNG"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = webdriver(self.addr, "DELETE", &path, None);
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let sextets: Vec<u8> = text.bytes().filter_map(value).collect();
    sextets
        .chunks(4)
        .flat_map(|chunk| {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, s)| n | u32::from(*s) << (18 - 6 * i));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            bytes.into_iter().take(chunk.len().saturating_sub(1))
        })
        .collect()
}

/// The cells the page shows: (source, target) → state.
fn cells(driver: &Driver) -> Vec<(String, String, String)> {
    let value = driver.script(
        "return Array.from(document.querySelectorAll('#matrix td.cell')).map(function (td) {
           return [td.getAttribute('data-source'), td.getAttribute('data-target'), td.getAttribute('data-state')];
         });",
    );
    value
        .as_array()
        .map(|cells| {
            cells
                .iter()
                .map(|c| {
                    let s = |i: usize| c[i].as_str().unwrap_or_default().to_owned();
                    (s(0), s(1), s(2))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn state_of(cells: &[(String, String, String)], source: &str, target: &str) -> Option<String> {
    cells
        .iter()
        .find(|(s, t, _)| s == source && t == target)
        .map(|(_, _, state)| state.clone())
}

fn screenshot_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent()
        .map_or(tmp.clone(), PathBuf::from)
        .join("mesh-view")
}

#[test]
fn the_page_shows_the_mesh_its_faults_and_a_pairs_history_in_a_real_browser() {
    let dir = temp_dir("mesh-page");
    let data_dir = dir.path().join("data");
    let probe_file = dir.path().join("probes.yaml");
    std::fs::write(
        &probe_file,
        format!(
            "prober_configs:\n  - prober_type: http\n    region: web\n    targets: [{}]\n",
            serde_json::to_string(HOSTILE_URL).expect("JSON is YAML")
        ),
    )
    .expect("the probe file");
    let http_addr: SocketAddr = format!("127.0.0.1:{}", free_tcp_port())
        .parse()
        .expect("an address");
    let link_port = free_udp_port();
    let _rule = DropRule::install(DROPPED);
    let mut server = Process(
        Command::new(BIN)
            .args([
                "server",
                "--rpc-listen-addr",
                &format!("127.0.0.1:{link_port}"),
                "--http-listen-addr",
                &http_addr.to_string(),
                "--aggregation-interval",
                "2s",
                "--probe-file",
                &probe_file.display().to_string(),
                "--data-dir",
                &data_dir.display().to_string(),
            ])
            .env("PROBERMESH_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the server starts"),
    );
    wait_for("the server to be ready", Duration::from_secs(30), || {
        http("GET", http_addr, "/-/ready", None).filter(|(s, _)| *s == 200)
    });
    let fingerprint = server_fingerprint(&data_dir);
    let mut agents: Vec<Option<Process>> = AGENTS
        .iter()
        .map(|(region, ip)| {
            Some(start_agent_with(
                region,
                ip,
                link_port,
                &fingerprint,
                false,
                &[],
            ))
        })
        .collect();

    let driver = Driver::start(&dir);
    driver.goto(&format!("http://{http_addr}/"));
    let n = REGIONS.len();
    // Healthy, partial and failed pairs, from the page's own refreshes (no reload).
    let seen = wait_for(
        "healthy, partial and failed cells on the page",
        Duration::from_secs(90),
        || {
            let cells = cells(&driver);
            let is =
                |s: &str, t: &str, state: &str| state_of(&cells, s, t).as_deref() == Some(state);
            (cells.len() == n * n
                && is("alpha", "bravo", "healthy")
                && is("bravo", "alpha", "healthy")
                && is("charlie", "alpha", "healthy")
                && is("delta", "alpha", "healthy")
                && is("alpha", "charlie", "partial")
                && is("bravo", "charlie", "partial")
                && is("alpha", "echo", "failed")
                && is("delta", "echo", "failed"))
            .then_some(cells)
        },
    );
    let rows = driver.script("return Array.from(document.querySelectorAll('#matrix tbody th')).map(function (th) { return th.textContent; });");
    assert_eq!(rows, json!(REGIONS), "one row per region, sorted");
    let partial = driver.script(
        "return document.querySelector(\"#matrix td[data-source='alpha'][data-target='charlie']\").textContent;",
    );
    assert!(
        partial.as_str().is_some_and(|t| t.contains("(1 out)")),
        "the partial cell says how many were left out: {partial}"
    );
    for region in REGIONS {
        assert_eq!(
            state_of(&seen, region, region).as_deref(),
            Some("no_data"),
            "a region does not probe itself"
        );
    }

    // The hostile URL is text in its cell, and nothing it holds became an element.
    wait_for(
        "the HTTP table shows the URL",
        Duration::from_secs(30),
        || {
            let shown = driver.script(
            "return Array.from(document.querySelectorAll('#http td')).map(function (td) { return td.textContent; });",
        );
            shown
                .as_array()
                .is_some_and(|t| t.iter().any(|c| c.as_str() == Some(HOSTILE_URL)))
                .then_some(())
        },
    );
    let injected = driver.script(
        "return document.querySelectorAll('img, main script, #http script, [onerror]').length;",
    );
    assert_eq!(injected, json!(0), "no element came from the URL");

    // A click on a cell shows its history.
    driver.click("#matrix td[data-source='alpha'][data-target='bravo']");
    wait_for("the pair's history", Duration::from_secs(30), || {
        let rows = driver.script(
            "var p = document.getElementById('pair');
             return p.hidden ? -1 : document.querySelectorAll('#pair-history tbody tr').length;",
        );
        (rows.as_i64().unwrap_or(-1) >= 1).then_some(())
    });
    let title = driver.script("return document.getElementById('pair-title').textContent;");
    assert_eq!(title, json!("Pair alpha → bravo"));
    let members =
        driver.script("return document.querySelectorAll('#pair-members tbody tr').length;");
    assert_eq!(members, json!(2), "one source agent and one target host");
    // Its path traces section says something (tracing is on by default): a trace, one
    // running, or none yet.
    wait_for("the pair's path traces", Duration::from_secs(30), || {
        let said = driver.script(
            "return document.getElementById('pair-traces-status').textContent + '|' +
                    document.querySelectorAll('#pair-traces .trace').length;",
        );
        let said = said.as_str().unwrap_or("").to_owned();
        (!said.starts_with("|0") && !said.contains("could not")).then_some(())
    });

    // A dark region: delta's agent stops; its row goes stale, then has no data.
    if let Some(mut delta) = agents[DELTA].take() {
        harness::terminate(&mut delta.0);
    }
    wait_for(
        "delta's row dark on the page",
        Duration::from_secs(60),
        || {
            let cells = cells(&driver);
            let dark = AGENTS
                .iter()
                .filter(|(r, _)| *r != "delta")
                .all(|(target, _)| {
                    matches!(
                        state_of(&cells, "delta", target).as_deref(),
                        Some("stale" | "no_data")
                    )
                });
            (cells.len() == n * n && dark).then_some(())
        },
    );
    let cells = cells(&driver);
    assert_eq!(
        state_of(&cells, "alpha", "bravo").as_deref(),
        Some("healthy")
    );

    let dir_out = screenshot_dir();
    std::fs::create_dir_all(&dir_out).expect("the screenshot directory");
    let png = driver.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(dir_out.join("mesh-page.png"), &png).expect("the screenshot is written");

    let errors: Vec<Value> = driver
        .console()
        .into_iter()
        .filter(|entry| entry["level"] == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");

    drop(driver);
    for agent in agents.iter_mut().flatten() {
        harness::terminate(&mut agent.0);
    }
    harness::terminate(&mut server.0);
}
