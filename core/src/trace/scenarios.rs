//! Runs every data-driven blame scenario of `fixtures/trace/` (a hop table in, the expected
//! verdict out) and fails with every unmet expectation of every file. The format is at the
//! top of each file and in `fixtures/README.md`.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::blame::{Blame, BlameThresholds, Verdict, judge};
use crate::link::{TraceHop, TraceReport};

/// One scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    /// What it proves, in prose.
    description: String,
    /// The trace's target (the destination).
    target: IpAddr,
    /// `"ttl address sent received"`, address `*` for a hop that never answered.
    hops: Vec<String>,
    /// Why the trace stopped short, as an agent would say.
    #[serde(default)]
    error: Option<String>,
    expect: Expect,
}

/// The expected verdict; fields left out are not checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// `hop`, `rate_limited_only`, `clean` or `unreachable`.
    blame: String,
    /// The blamed hop's TTL, or the last responding TTL when unreachable (`0`: none).
    #[serde(default)]
    ttl: Option<u8>,
    #[serde(default)]
    address: Option<IpAddr>,
    #[serde(default)]
    loss_percent: Option<f64>,
    #[serde(default)]
    reached: Option<bool>,
    #[serde(default)]
    rate_limited: Option<Vec<u8>>,
    #[serde(default)]
    silent: Option<Vec<u8>>,
    /// Words the reason must hold.
    #[serde(default)]
    reason_contains: Vec<String>,
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/trace"))
}

fn parse_hop(line: &str) -> Result<TraceHop, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [ttl, addr, sent, received] = fields[..] else {
        return Err(format!("{line:?}: want \"ttl address sent received\""));
    };
    let number = |text: &str| {
        text.parse::<u32>()
            .map_err(|e| format!("{line:?}: {text:?}: {e}"))
    };
    Ok(TraceHop {
        ttl: ttl.parse().map_err(|e| format!("{line:?}: ttl: {e}"))?,
        addr: match addr {
            "*" => None,
            text => Some(
                text.parse()
                    .map_err(|e| format!("{line:?}: address: {e}"))?,
            ),
        },
        sent: number(sent)?,
        received: number(received)?,
        rtt_best: None,
        rtt_mean: None,
        rtt_worst: None,
        rtt_stddev: None,
    })
}

/// The unmet expectations of one scenario's text.
fn check(text: &str) -> Result<Vec<String>, String> {
    let scenario: Scenario = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    if scenario.description.trim().is_empty() {
        return Err("a scenario says what it proves (description)".into());
    }
    let hops = scenario
        .hops
        .iter()
        .map(|line| parse_hop(line))
        .collect::<Result<Vec<_>, _>>()?;
    let report = TraceReport {
        id: 1,
        target: scenario.target,
        hops,
        error: scenario.error,
    };
    let verdict = judge(&report, &BlameThresholds::default());
    Ok(unmet(&scenario.expect, &verdict))
}

fn unmet(expect: &Expect, verdict: &Verdict) -> Vec<String> {
    let mut unmet = Vec::new();
    let got = verdict.blame.label();
    if got != expect.blame {
        unmet.push(format!(
            "blame: want {}, got {got} ({})",
            expect.blame, verdict.reason
        ));
    }
    let (ttl, address, loss_ratio) = match verdict.blame {
        Blame::Hop {
            ttl,
            address,
            loss_ratio,
        } => (Some(ttl), Some(address), Some(loss_ratio)),
        Blame::Unreachable {
            last_responding_ttl,
        } => (Some(last_responding_ttl.unwrap_or(0)), None, None),
        Blame::RateLimitedOnly | Blame::Clean => (None, None, None),
    };
    if expect.ttl.is_some() && expect.ttl != ttl {
        unmet.push(format!("ttl: want {:?}, got {ttl:?}", expect.ttl));
    }
    if expect.address.is_some() && expect.address != address {
        unmet.push(format!(
            "address: want {:?}, got {address:?}",
            expect.address
        ));
    }
    if let Some(want) = expect.loss_percent {
        let got = loss_ratio.map(|r| r * 100.0);
        if got.is_none_or(|got| (got - want).abs() > 1e-9) {
            unmet.push(format!("loss_percent: want {want}, got {got:?}"));
        }
    }
    if expect
        .reached
        .is_some_and(|reached| reached != verdict.reached_destination)
    {
        unmet.push(format!("reached: got {}", verdict.reached_destination));
    }
    if let Some(want) = &expect.rate_limited
        && want != &verdict.rate_limited_ttls
    {
        unmet.push(format!(
            "rate_limited: want {want:?}, got {:?}",
            verdict.rate_limited_ttls
        ));
    }
    if let Some(want) = &expect.silent
        && want != &verdict.silent_ttls
    {
        unmet.push(format!(
            "silent: want {want:?}, got {:?}",
            verdict.silent_ttls
        ));
    }
    for words in &expect.reason_contains {
        if !verdict.reason.contains(words.as_str()) {
            unmet.push(format!("reason lacks {words:?}: {}", verdict.reason));
        }
    }
    unmet
}

#[test]
fn every_trace_scenario_holds() {
    let dir = fixtures_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 8,
        "expected the scenario set in {}, found {files:?}",
        dir.display()
    );
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        match check(&text) {
            Ok(unmet) => failures.extend(unmet.into_iter().map(|u| format!("{name}: {u}"))),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} unmet expectations:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_wrong_expectation_and_a_typo_are_reported() {
    let yaml = "
description: a deliberately wrong expectation
target: 198.18.0.9
hops:
  - 1 198.18.0.1 20 20
  - 2 198.18.0.9 20 20
expect: {blame: hop, ttl: 2, reason_contains: [nonsense]}
";
    let unmet = check(yaml).unwrap();
    assert_eq!(unmet.len(), 3, "{unmet:?}");
    assert!(unmet[0].contains("want hop, got clean"), "{unmet:?}");
    let typo = yaml.replace("reason_contains", "reason_contain");
    assert!(check(&typo).is_err());
    let bad_hop = yaml.replace("2 198.18.0.9 20 20", "2 198.18.0.9 20");
    assert!(
        check(&bad_hop)
            .unwrap_err()
            .contains("ttl address sent received")
    );
}
