//! A 100-region mesh for the mesh view's bench and page fixture: one agent per region, every
//! region pinging every region (10,000 cells), 20 URLs from every region, one settled window
//! plus a history of 60 windows, a few pairs failing and a region dark.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use probermesh_core::aggregate::{AggregationMethod, Aggregator, AggregatorConfig};
use probermesh_core::mesh::{HistoryLimits, MeshHistory};
use probermesh_core::model::{
    AgentId, AgentVersion, HttpPhases, HttpResult, IcmpResult, ProbeOutcome, ProbeResult, Region,
    TlsInfo, TlsVersion, UnixMillis,
};

const REGIONS: u8 = 100;
const URLS: u32 = 20;
const T0: u64 = 1_800_000_000_000;
const WINDOW: Duration = Duration::from_secs(15);

fn agent(region: u8) -> AgentId {
    AgentId::new(
        Region::new(&format!("region-{region:03}")).expect("a valid region"),
        IpAddr::V4(Ipv4Addr::new(10, region, 0, 1)),
    )
}

/// The aggregator and history after `windows` windows, and the instant just after the last.
pub(crate) fn mesh(windows: u64) -> (Aggregator, MeshHistory, UnixMillis) {
    let window_ms = WINDOW.as_millis() as u64;
    let mut aggregator = Aggregator::new(
        AggregatorConfig {
            window: WINDOW,
            method: AggregationMethod::Robust,
            ..AggregatorConfig::default()
        },
        UnixMillis(T0),
    )
    .expect("a valid configuration");
    let mut history = MeshHistory::new(WINDOW, HistoryLimits::default());
    let http = ProbeOutcome::Http(HttpResult {
        phases: HttpPhases {
            resolve: Duration::from_millis(2),
            connect: Duration::from_millis(10),
            tls: Duration::from_millis(20),
            processing: Duration::from_millis(30),
            transfer: Duration::from_millis(5),
        },
        status_code: Some(200),
        tls: Some(TlsInfo {
            version: TlsVersion::Tls13,
            earliest_expiry_unix_secs: 1_900_000_000,
        }),
        failure: None,
    });
    let web = Region::new("web").expect("a valid region");
    let version = AgentVersion::new("1.0.0");
    let mut now = UnixMillis(T0);
    for w in 0..windows {
        let round = T0 + w * window_ms + 1_000;
        let mut results = Vec::new();
        for source in 0..REGIONS {
            // Region 99 went dark before the last window.
            if source == REGIONS - 1 && w + 1 == windows {
                continue;
            }
            aggregator.handle_heartbeat(UnixMillis(round), &agent(source), &version);
            for target in 0..REGIONS {
                let rtt = Duration::from_micros(
                    500 + 1_000 * u64::from(source.abs_diff(target)) + (w * 37) % 900,
                );
                let received = if target == 7 { 0 } else { 10 };
                results.push(ProbeResult {
                    source: agent(source),
                    target_region: agent(target).region,
                    target: agent(target).ip.to_string(),
                    round_start: UnixMillis(round),
                    outcome: ProbeOutcome::Icmp(IcmpResult::measured(
                        Duration::ZERO,
                        10,
                        &vec![rtt; received],
                    )),
                });
            }
            for url in 0..URLS {
                results.push(ProbeResult {
                    source: agent(source),
                    target_region: web.clone(),
                    target: format!("https://service-{url:03}.example.org/health"),
                    round_start: UnixMillis(round),
                    outcome: http.clone(),
                });
            }
        }
        aggregator.handle_results(UnixMillis(round), results);
        now = UnixMillis(T0 + (w + 2) * window_ms);
        aggregator.handle_timeout(now);
        history.record(now, &aggregator);
    }
    (aggregator, history, now)
}
