//! `probermesh demo`: a whole mesh on one machine with no setup. A server and six agents of
//! three regions run in this process on loopback, each agent with its own 127.0.0.x address,
//! over the real QUIC link (pinned certificate, token); they ping each other and probe the
//! server's own HTTP endpoint. Every window a region × region table of RTT and loss is
//! printed, and `/metrics` and the mesh page are served as in production.
//!
//! The ICMP results go through a simulated WAN (`core::simulated_wan`, labelled simulated in
//! the terminal and on the page): per region pair delays and jitter, one lossy pair, and one
//! broken agent that the robust aggregation leaves out.
//!
//! Path tracing is on (issue 17): the server's trace desk traces the pairs it finds degraded,
//! as in production, but the agents trace with `SimulatedTracer` over the same simulated WAN
//! (on one loopback a real trace has one hop and nothing to place); its traces are labelled
//! simulated too. The desk's settings suit a demo of minutes: a short cooldown, and 100
//! rounds a trace (the simulated tracer answers at once) judged from 5 % loss, which 100
//! probes can place, so the 8 % pair is blamed at its WAN router.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use argh::FromArgs;
use probermesh_adapters::link::{
    AgentIdentity, AgentLink, AgentLinkConfig, CertificateSource, ServerConfig, ServerVerification,
};
use probermesh_adapters::secret::Token;
use probermesh_adapters::version::VERSION;
use probermesh_core::aggregate::{self as families, AggregationMethod, AggregatorConfig};
use probermesh_core::model::{
    AgentId, AgentVersion, HttpModule, ProbeConfig, ProbeKind, ProbeModule, Region, Target,
};
use probermesh_core::pool::{Discovery, TargetPool};
use probermesh_core::snapshot::Snapshot;

use probermesh_adapters::clock::SystemClock;
use probermesh_adapters::driver::agent as driver;
use probermesh_core::agent::{AgentConfig, AgentState};
use probermesh_core::ports::Clock;
use probermesh_core::probe::Probers;
use probermesh_core::simulated_wan::{SimulatedTracer, SimulatedWan, WanLink, WanModel};
use probermesh_core::trace::agent::TracePolicy;
use probermesh_core::trace::blame::BlameThresholds;
use probermesh_core::trace::store::StoreLimits;
use probermesh_core::trace::trigger::{TraceShape, TriggerConfig};

use crate::agent::system_probers;
use crate::print_line;
use crate::server::{RunningServer, ServerParts};

/// Run a demo mesh on this machine: a server and agents of three regions on loopback, with a
/// live region × region table of RTT and loss, and /metrics served.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "demo")]
pub(crate) struct DemoArgs {
    /// where /metrics is served (default 127.0.0.1:6001)
    #[argh(option, default = "String::from(\"127.0.0.1:6001\")")]
    http_listen_addr: String,
    /// probe interval and aggregation window in seconds (default 5)
    #[argh(option, default = "5")]
    interval_s: u64,
    /// stop after this many seconds (default: run until Ctrl-C)
    #[argh(option)]
    duration_s: Option<u64>,
}

const REGIONS: [&str; 3] = ["cn-beijing", "eu-frankfurt", "us-virginia"];
/// Agents per region: three in the first, so the robust aggregation can tell its broken agent
/// from the other two; six in all.
const AGENTS_PER_REGION: [u8; 3] = [3, 2, 1];
/// The simulated WAN's broken agent (the third of the first region).
const BROKEN_AGENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 13);
/// The simulated lossy pair and its loss.
const LOSSY_PAIR: (&str, &str, f64) = ("eu-frankfurt", "us-virginia", 0.08);

/// The demo's simulated network: (source, target, one-way-ish added RTT in ms, jitter in ms).
const WAN_DELAYS: [(&str, &str, u64, u64); 3] = [
    ("cn-beijing", "eu-frankfurt", 120, 6),
    ("cn-beijing", "us-virginia", 180, 10),
    ("eu-frankfurt", "us-virginia", 40, 3),
];

/// The label of everything the simulated WAN changes, in the terminal and on the page.
fn simulated_notice() -> String {
    format!(
        "SIMULATED WAN (demo): the delays, jitter and loss are simulated on top of real loopback \
         probes; {} → {} loses {:.0} %, agent {BROKEN_AGENT} is broken (the robust aggregation \
         leaves it out); path traces are simulated",
        LOSSY_PAIR.0,
        LOSSY_PAIR.1,
        LOSSY_PAIR.2 * 100.0
    )
}

/// The demo server's trace desk: the defaults but for a demo of minutes (see the module
/// documentation): a set per pair at most every 2 minutes, within the default budget.
fn trace_settings() -> (TriggerConfig, StoreLimits) {
    let defaults = TriggerConfig::default();
    let config = TriggerConfig {
        cooldown: Duration::from_secs(120),
        shape: TraceShape {
            rounds: 100,
            ..TraceShape::default()
        },
        blame: BlameThresholds {
            min_loss_ratio: 0.05,
            ..defaults.blame
        },
        ..defaults
    };
    (config, StoreLimits::default())
}

/// The simulated network of the demo's agents.
fn wan_model(agents: &[(Region, IpAddr)]) -> Result<WanModel> {
    let mut model = WanModel::default();
    for (source, target, delay_ms, jitter_ms) in WAN_DELAYS {
        let link = WanLink {
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::from_millis(jitter_ms),
            loss_ratio: 0.0,
        };
        model
            .links
            .insert((Region::new(source)?, Region::new(target)?), link);
        model
            .links
            .insert((Region::new(target)?, Region::new(source)?), link);
    }
    let lossy = (Region::new(LOSSY_PAIR.0)?, Region::new(LOSSY_PAIR.1)?);
    if let Some(link) = model.links.get_mut(&lossy) {
        link.loss_ratio = LOSSY_PAIR.2;
    }
    model.regions = agents.iter().map(|(r, ip)| (*ip, r.clone())).collect();
    model.broken_hosts = vec![IpAddr::V4(BROKEN_AGENT)];
    model.broken = WanLink {
        delay: Duration::from_millis(150),
        jitter: Duration::from_millis(40),
        loss_ratio: 0.6,
    };
    Ok(model)
}

/// Runs the demo.
pub(crate) async fn run(args: DemoArgs) -> Result<()> {
    let _log = crate::logging::init("demo", 3, "")?;
    let interval = Duration::from_secs(args.interval_s.max(1));
    let data_dir = std::env::temp_dir().join(format!("probermesh-demo-{}", std::process::id()));
    let token = Token::new(&random_token()?, "the demo").context("a demo token")?;
    let server = RunningServer::start(ServerParts {
        link: ServerConfig::new(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            CertificateSource::Generated {
                data_dir: data_dir.clone(),
                names: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            },
            token.clone(),
        ),
        aggregator: AggregatorConfig {
            window: interval,
            method: AggregationMethod::Robust,
            ..AggregatorConfig::default()
        },
        pool: TargetPool::new(Vec::new(), Discovery::Dynamic, false),
        probe_file: None,
        http_listen_addr: args.http_listen_addr.clone(),
        admin_token: None,
        mesh_requires_token: false,
        mesh_notice: Some(simulated_notice()),
        data_dir: None,
        tasks: None,
        releases: Default::default(),
        rollouts: Default::default(),
        traces: Some(trace_settings()),
    })
    .await?;
    // The agents also probe the server's own health endpoint, as a URL target of region `web`.
    let health = format!("http://{}/-/healthy", server.http_addr());
    server
        .handle()
        .set_file_configs(vec![ProbeConfig {
            region: Region::new("web")?,
            targets: vec![Target::parse(ProbeKind::Http, &health)?],
            module: ProbeModule::Http(HttpModule::default().into()),
        }])
        .await
        .map_err(|e| anyhow::anyhow!("the demo's pool: {e}"))?;
    let fingerprint = server
        .fingerprint()
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let probers = system_probers()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut members = Vec::new();
    for (r, region) in REGIONS.iter().enumerate() {
        for n in 1..=AGENTS_PER_REGION[r] {
            // 127.0.0.11, .12, .13 for the first region, .21, .22 for the second, …
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, (r as u8 + 1) * 10 + n));
            members.push((Region::new(region)?, ip));
        }
    }
    let model = Arc::new(wan_model(&members)?);
    let mut agents = Vec::new();
    for (seed, (region, ip)) in (1u64..).zip(members) {
        {
            let probers = Probers {
                icmp: Arc::new(SimulatedWan::new(
                    Arc::clone(&probers.icmp),
                    Arc::clone(&model),
                    region.clone(),
                    ip,
                    seed,
                )),
                ..probers.clone()
            };
            let tracer = Arc::new(SimulatedTracer::new(
                Arc::clone(&model),
                region.clone(),
                ip,
                seed,
            ));
            let me = AgentId::new(region, ip);
            let identity = AgentIdentity::new(me.clone(), AgentVersion::new(VERSION))
                .map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let mut config = AgentLinkConfig::new(
                server.link_addr().to_string(),
                ServerVerification::PinnedSha256(fingerprint),
                token.clone(),
                identity,
            );
            // The hello says the agent takes traces, or the server's desk never asks it.
            config
                .features
                .insert(probermesh_core::link::feature::TRACE.to_owned());
            let link = Arc::new(AgentLink::start(config).context("starting a demo agent")?);
            let state = AgentState::new(
                AgentConfig {
                    me,
                    probe_interval: interval,
                    sync_interval: Duration::from_secs(60),
                    heartbeat_interval: interval,
                    follow_observed_ip: false,
                    in_flight_limits: probermesh_core::agent::InFlightLimits::default(),
                    tasks: None,
                    upgrade: Default::default(),
                    traces: Some(TracePolicy::default()),
                },
                clock.now(),
            );
            // Demo agents keep their loopback addresses: there is nothing to re-identify.
            let relink: driver::Relink<AgentLink> =
                Box::new(|_| Err("demo agents keep their addresses".to_owned()));
            agents.push(tokio::spawn(driver::run(
                state,
                link,
                relink,
                probers.clone(),
                Arc::new(probermesh_adapters::task_runner::ProcessTaskRunner::new()),
                tracer,
                None,
                Arc::clone(&clock),
                stopping.clone(),
                // The demo ends when asked: what is in flight then does not matter.
                driver::StopBounds {
                    in_flight: Duration::from_millis(500),
                    drain: Duration::from_millis(500),
                },
            )));
        }
    }
    print_line(&format!(
        "ProberMesh demo: {} agents in {} regions on loopback, window {}s; /metrics at http://{}/metrics",
        agents.len(),
        REGIONS.len(),
        interval.as_secs(),
        server.http_addr()
    ))?;
    print_line(&format!(
        "The mesh page: http://{}/  (JSON: http://{}/api/v1/mesh)",
        server.http_addr(),
        server.http_addr()
    ))?;
    print_line(&format!(
        "Path traces of degraded pairs (simulated): http://{}/api/v1/traces",
        server.http_addr()
    ))?;
    print_line(&simulated_notice())?;
    print_line("The first numbers appear after two windows. Ctrl-C stops.")?;

    let started = tokio::time::Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let table = render_table(&server.handle().snapshot());
        if tty {
            print_line("\x1b[2J\x1b[H")?;
        }
        print_line(&simulated_notice())?;
        print_line(&table)?;
        if args
            .duration_s
            .is_some_and(|limit| started.elapsed() >= Duration::from_secs(limit))
        {
            break;
        }
    }
    // Every agent stops gracefully (its probes in flight finish) and closes its link.
    let _ = stop.send(true);
    for agent in agents {
        let _ = agent.await;
    }
    server.stop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The region × region table of mean RTT and loss, plus the HTTP line and live agents.
pub(crate) fn render_table(snapshot: &Snapshot) -> String {
    let mut cells: BTreeMap<(String, String), (Option<f64>, Option<f64>)> = BTreeMap::new();
    if let Some(rtt) = snapshot.family(families::ICMP_DURATION) {
        for series in &rtt.series {
            if let ([phase, source, target], Some(v)) = (&series.label_values[..], series.number())
                && phase == "rtt"
            {
                cells.entry((source.clone(), target.clone())).or_default().0 = Some(v);
            }
        }
    }
    if let Some(loss) = snapshot.family(families::ICMP_LOSS) {
        for series in &loss.series {
            if let ([source, target], Some(v)) = (&series.label_values[..], series.number()) {
                cells.entry((source.clone(), target.clone())).or_default().1 = Some(v);
            }
        }
    }
    let mut out = String::from("ICMP: mean RTT / loss, source (rows) → target (columns)\n");
    out.push_str(&format!("{:<14}", ""));
    for target in REGIONS {
        out.push_str(&format!("{target:>22}"));
    }
    out.push('\n');
    for source in REGIONS {
        out.push_str(&format!("{source:<14}"));
        for target in REGIONS {
            let cell = match cells.get(&(source.to_owned(), target.to_owned())) {
                Some((Some(rtt), Some(loss))) => format!("{:.3} ms / {loss:.1} %", rtt * 1e3),
                Some((None, Some(loss))) => format!("— / {loss:.1} %"),
                _ if source == target => "(own region)".to_owned(),
                _ => "…".to_owned(),
            };
            out.push_str(&format!("{cell:>22}"));
        }
        out.push('\n');
    }
    let failed = snapshot.family(families::ICMP_FAILED).map_or(0.0, |f| {
        f.series.iter().filter_map(|s| s.number()).sum::<f64>()
    });
    if failed > 0.0 {
        out.push_str(&format!(
            "ICMP failures in the last window: {failed} (no ICMP permission? run as root, or \
             `sudo setcap cap_net_raw+ep <binary>`, or `sudo sysctl -w \
             net.ipv4.ping_group_range=\"0 2147483647\"`)\n"
        ));
    }
    if let Some(http) = snapshot.family(families::HTTP_STATUS) {
        for series in &http.series {
            if let ([source, url, _], Some(code)) = (&series.label_values[..], series.number()) {
                out.push_str(&format!("HTTP {source} → {url}: status {code}\n"));
            }
        }
    }
    let alive = snapshot.family(families::AGENT_ALIVE).map_or(0, |f| {
        f.series.iter().filter(|s| s.number() == Some(1.0)).count()
    });
    out.push_str(&format!("agents alive: {alive}\n"));
    out
}
