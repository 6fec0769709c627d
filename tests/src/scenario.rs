//! The aggregation scenario format and its runner.
//!
//! A scenario is a YAML file: a mesh of named agents (`a-1` is agent 1 of region `a`, at
//! `198.18.<region index>.<n>`), the aggregation methods to run it under, and time-ordered steps.
//! Times are relative to an aligned epoch `T0` and written `30s` or `1500ms`.
//! Before each step the runner calls `handle_timeout(T0 + at)`; then the step acts:
//! - `heartbeats: [a-1, ...]`;
//! - `mesh_round:` every agent of `from` probes every agent of each *other* region in `to` (ICMP,
//!   as dynamic discovery without `-server.probe.self` does) with the `icmp` default cell, and `overrides` change the cells of one source (`from`)
//!   or one target (`to`) or both;
//! - `results:` explicit ICMP or HTTP results;
//! - `expect:` series values (`value`, within `tolerance`), histogram counts, or `absent: true`.
//!
//! Unknown keys are errors, so a typo in a fixture fails loudly.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use probermesh_core::aggregate::{AggregationMethod, Aggregator, AggregatorConfig};
use probermesh_core::model::{
    AgentId, AgentVersion, HttpFailure, HttpPhases, HttpResult, IcmpResult, ProbeOutcome,
    ProbeResult, Region, TlsInfo, TlsVersion, UnixMillis,
};
use probermesh_core::snapshot::SeriesValue;
use serde::Deserialize;

/// The aligned instant scenario times are relative to.
pub const T0: UnixMillis = UnixMillis(1_800_000_000_000);

/// One scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario shows.
    pub description: String,
    /// Methods to run it under (each run must meet every expectation).
    pub methods: Vec<String>,
    /// Window length (default 15s).
    #[serde(default)]
    pub window: Option<String>,
    /// Series TTL ratio (default 5).
    #[serde(default)]
    pub ratio: Option<u32>,
    /// Agents per region.
    pub regions: BTreeMap<String, u8>,
    /// The steps, in time order.
    pub steps: Vec<Step>,
}

/// One step.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// When, relative to T0.
    pub at: String,
    #[serde(default)]
    heartbeats: Vec<String>,
    #[serde(default)]
    mesh_round: Option<MeshRound>,
    #[serde(default)]
    results: Vec<ResultSpec>,
    #[serde(default)]
    expect: Vec<Expectation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeshRound {
    start: String,
    from: Vec<String>,
    to: Vec<String>,
    icmp: IcmpSpec,
    #[serde(default)]
    overrides: Vec<Override>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Override {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    icmp: IcmpSpec,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IcmpSpec {
    sent: u32,
    received: u32,
    /// RTTs cycled over the received echoes.
    #[serde(default)]
    rtt_ms: Vec<f64>,
    #[serde(default)]
    resolve_ms: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultSpec {
    from: String,
    target_region: String,
    target: String,
    round: String,
    #[serde(default)]
    icmp: Option<IcmpSpec>,
    #[serde(default)]
    http: Option<HttpSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSpec {
    #[serde(default)]
    status: Option<u16>,
    /// resolve, connect, tls, processing, transfer.
    #[serde(default)]
    phases_ms: Vec<f64>,
    #[serde(default)]
    tls_version: Option<String>,
    #[serde(default)]
    tls_expiry: Option<i64>,
    /// One of the failure names: invalid_status, resolve, connect_refused, timeout, body_regexp.
    #[serde(default)]
    failure: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    metric: String,
    labels: BTreeMap<String, String>,
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    tolerance: Option<f64>,
    #[serde(default)]
    histogram_count: Option<u64>,
    #[serde(default)]
    absent: bool,
}

/// Parses `30s` or `1500ms`.
fn millis(text: &str) -> Result<u64, String> {
    let parse = |digits: &str, scale: u64| {
        digits
            .parse::<u64>()
            .map(|n| n * scale)
            .map_err(|e| format!("bad time {text:?}: {e}"))
    };
    if let Some(ms) = text.strip_suffix("ms") {
        parse(ms, 1)
    } else if let Some(s) = text.strip_suffix('s') {
        parse(s, 1000)
    } else {
        Err(format!("bad time {text:?}: use 30s or 1500ms"))
    }
}

/// Agent `r-n` of the scenario.
fn agent(regions: &BTreeMap<String, u8>, name: &str) -> Result<AgentId, String> {
    let (region_name, number) = name
        .rsplit_once('-')
        .ok_or_else(|| format!("agent {name:?} is not region-n"))?;
    let number: u8 = number
        .parse()
        .map_err(|_| format!("agent {name:?} is not region-n"))?;
    let index = regions
        .keys()
        .position(|r| r == region_name)
        .ok_or_else(|| format!("agent {name:?}: unknown region"))?;
    if number == 0 || number > regions[region_name] {
        return Err(format!(
            "agent {name:?}: region {region_name} has {} agents",
            regions[region_name]
        ));
    }
    let region = Region::new(region_name).map_err(|e| e.to_string())?;
    let index = u8::try_from(index).map_err(|_| "too many regions".to_owned())?;
    Ok(AgentId::new(
        region,
        IpAddr::V4(Ipv4Addr::new(198, 18, index, number)),
    ))
}

fn agents_of(regions: &BTreeMap<String, u8>, region: &str) -> Result<Vec<AgentId>, String> {
    let count = *regions
        .get(region)
        .ok_or_else(|| format!("unknown region {region:?}"))?;
    (1..=count)
        .map(|n| agent(regions, &format!("{region}-{n}")))
        .collect()
}

fn icmp_result(spec: &IcmpSpec) -> IcmpResult {
    let received = spec.received.min(spec.sent) as usize;
    let rtts: Vec<Duration> = if spec.rtt_ms.is_empty() {
        vec![Duration::from_millis(10); received]
    } else {
        spec.rtt_ms
            .iter()
            .cycle()
            .take(received)
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
            .collect()
    };
    IcmpResult::measured(
        Duration::from_secs_f64(spec.resolve_ms / 1000.0),
        spec.sent,
        &rtts,
    )
}

fn http_result(spec: &HttpSpec) -> Result<HttpResult, String> {
    let ms =
        |i: usize| Duration::from_secs_f64(spec.phases_ms.get(i).copied().unwrap_or(0.0) / 1000.0);
    let failure = match spec.failure.as_deref() {
        None => None,
        Some("invalid_status") => Some(HttpFailure::InvalidStatus(spec.status.unwrap_or(0))),
        Some("resolve") => Some(HttpFailure::Resolve),
        Some("connect_refused") => Some(HttpFailure::ConnectRefused),
        Some("timeout") => Some(HttpFailure::Timeout),
        Some("body_regexp") => Some(HttpFailure::BodyRegexp),
        Some(other) => return Err(format!("unknown failure {other:?}")),
    };
    let tls = match (spec.tls_version.as_deref(), spec.tls_expiry) {
        (Some(version), Some(expiry)) => Some(TlsInfo {
            version: match version {
                "TLS 1.2" => TlsVersion::Tls12,
                "TLS 1.3" => TlsVersion::Tls13,
                other => return Err(format!("unknown TLS version {other:?}")),
            },
            earliest_expiry_unix_secs: expiry,
        }),
        (None, None) => None,
        _ => return Err("tls_version and tls_expiry go together".to_owned()),
    };
    Ok(HttpResult {
        phases: HttpPhases {
            resolve: ms(0),
            connect: ms(1),
            tls: ms(2),
            processing: ms(3),
            transfer: ms(4),
        },
        status_code: spec.status,
        tls,
        failure,
    })
}

impl Scenario {
    /// Parses a scenario file.
    ///
    /// # Errors
    /// The YAML error, with its location.
    pub fn parse(yaml: &str) -> Result<Self, String> {
        serde_saphyr::from_str(yaml).map_err(|e| e.to_string())
    }

    /// Runs the scenario under every listed method; returns every unmet expectation.
    ///
    /// # Errors
    /// A malformed scenario (unknown agent, bad time).
    pub fn run(&self) -> Result<Vec<String>, String> {
        let mut failures = Vec::new();
        for method in &self.methods {
            let method: AggregationMethod = method
                .parse()
                .map_err(|e: probermesh_core::aggregate::UnknownMethod| e.to_string())?;
            failures.extend(
                self.run_with(method)?
                    .into_iter()
                    .map(|f| format!("[{method}] {f}")),
            );
        }
        Ok(failures)
    }

    fn run_with(&self, method: AggregationMethod) -> Result<Vec<String>, String> {
        let config = AggregatorConfig {
            window: Duration::from_millis(millis(self.window.as_deref().unwrap_or("15s"))?),
            series_ttl_ratio: self.ratio.unwrap_or(5),
            method,
            ..AggregatorConfig::default()
        };
        let mut aggregator = Aggregator::new(config, T0).map_err(|e| e.to_string())?;
        let version = AgentVersion::new("0.1.0");
        let mut failures = Vec::new();
        let window_ms = millis(self.window.as_deref().unwrap_or("15s"))?;
        let mut next_tick = T0.as_millis() + window_ms;
        for step in &self.steps {
            let now = UnixMillis(T0.as_millis() + millis(&step.at)?);
            // Tick at every window boundary in between, as the server's driver does.
            while next_tick <= now.as_millis() {
                aggregator.handle_timeout(UnixMillis(next_tick));
                next_tick += window_ms;
            }
            aggregator.handle_timeout(now);
            for name in &step.heartbeats {
                aggregator.handle_heartbeat(now, &agent(&self.regions, name)?, &version);
            }
            if let Some(round) = &step.mesh_round {
                let results = self.mesh_results(round)?;
                aggregator.handle_results(now, results);
            }
            let explicit: Result<Vec<ProbeResult>, String> =
                step.results.iter().map(|r| self.result(r)).collect();
            aggregator.handle_results(now, explicit?);
            let snapshot = aggregator.snapshot(now);
            for expectation in &step.expect {
                let labels: Vec<(&str, &str)> = expectation
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let found = snapshot
                    .family(&expectation.metric)
                    .and_then(|f| f.find(&labels));
                let place = format!(
                    "at {}: {}{:?}",
                    step.at, expectation.metric, expectation.labels
                );
                match (found, expectation) {
                    (None, Expectation { absent: true, .. }) => {}
                    (Some(series), Expectation { absent: true, .. }) => {
                        failures.push(format!("{place} should be absent, is {:?}", series.value));
                    }
                    (None, _) => failures.push(format!("{place} is missing")),
                    (Some(series), _) => {
                        if let Some(want) = expectation.value {
                            let tolerance = expectation.tolerance.unwrap_or(1e-9);
                            match series.value {
                                SeriesValue::Number(got) if (got - want).abs() <= tolerance => {}
                                ref other => failures.push(format!(
                                    "{place} = {other:?}, want {want} ± {tolerance}"
                                )),
                            }
                        }
                        if let Some(want) = expectation.histogram_count {
                            match &series.value {
                                SeriesValue::Histogram(h) if h.count == want => {}
                                other => {
                                    failures.push(format!("{place} = {other:?}, want count {want}"))
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(failures)
    }

    fn mesh_results(&self, round: &MeshRound) -> Result<Vec<ProbeResult>, String> {
        let start = UnixMillis(T0.as_millis() + millis(&round.start)?);
        let mut results = Vec::new();
        for from_region in &round.from {
            for to_region in round.to.iter().filter(|to| *to != from_region) {
                let target_region = Region::new(to_region).map_err(|e| e.to_string())?;
                for source in agents_of(&self.regions, from_region)? {
                    for target in agents_of(&self.regions, to_region)? {
                        let mut spec = &round.icmp;
                        for o in &round.overrides {
                            let from_matches = o
                                .from
                                .as_ref()
                                .map(|n| agent(&self.regions, n))
                                .transpose()?
                                .is_none_or(|a| a == source);
                            let to_matches =
                                o.to.as_ref()
                                    .map(|n| agent(&self.regions, n))
                                    .transpose()?
                                    .is_none_or(|a| a == target);
                            if from_matches && to_matches {
                                spec = &o.icmp;
                            }
                        }
                        results.push(ProbeResult {
                            source: source.clone(),
                            target_region: target_region.clone(),
                            target: target.ip.to_string(),
                            round_start: start,
                            outcome: ProbeOutcome::Icmp(icmp_result(spec)),
                        });
                    }
                }
            }
        }
        Ok(results)
    }

    fn result(&self, spec: &ResultSpec) -> Result<ProbeResult, String> {
        let outcome = match (&spec.icmp, &spec.http) {
            (Some(icmp), None) => ProbeOutcome::Icmp(icmp_result(icmp)),
            (None, Some(http)) => ProbeOutcome::Http(http_result(http)?),
            _ => return Err("a result has exactly one of icmp: or http:".to_owned()),
        };
        Ok(ProbeResult {
            source: agent(&self.regions, &spec.from)?,
            target_region: Region::new(&spec.target_region).map_err(|e| e.to_string())?,
            target: spec.target.clone(),
            round_start: UnixMillis(T0.as_millis() + millis(&spec.round)?),
            outcome,
        })
    }
}
