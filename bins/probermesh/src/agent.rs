//! `probermesh agent`: wires the QUIC agent link, the ICMP engine, the HTTP prober and DNS
//! timing, and runs the probe rounds of core's plan over the latest target pool. The link
//! buffers results while the server is away and delivers them once; the agent keeps probing
//! with its last pool.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use probermesh_adapters::dns::HickoryDns;
use probermesh_adapters::http::HyperProber;
use probermesh_adapters::icmp::IcmpEngine;
use probermesh_adapters::identity::{
    DetectionTimeouts, IpOptions, MetadataEndpoint, NetworkType, agent_ip, detect_region,
};
use probermesh_adapters::link::{
    AgentIdentity, AgentLink, AgentLinkConfig, AgentLinkStats, ServerVerification,
    Sha256Fingerprint, Token,
};
use probermesh_core::agent::{PlannedProbe, ProbeHow, plan_rest_of_round, round_start};
use probermesh_core::model::{AgentId, AgentVersion, ProbeOutcome, ProbeResult, UnixMillis};
use probermesh_core::ports::{DnsResolver, HttpProber, IcmpPinger, ServerLink};
use probermesh_core::wire::{AgentMessage, ProbeResultV1, ServerMessage};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cli::AgentArgs;
use crate::logging;
use crate::server::{now, resolve_addr};

/// The probers an agent runs.
pub(crate) struct Probers {
    pub(crate) dns: Arc<dyn DnsResolver>,
    pub(crate) icmp: Arc<dyn IcmpPinger>,
    pub(crate) http: Arc<dyn HttpProber>,
}

impl Probers {
    /// The real ones: the ICMP engine (its socket opened now, so a permission problem shows at
    /// start), hickory DNS from the system configuration, the hyper HTTP prober.
    pub(crate) fn system() -> Result<Self> {
        let dns: Arc<dyn DnsResolver> =
            Arc::new(HickoryDns::from_system_conf().context("setting up DNS")?);
        let engine = IcmpEngine::default();
        match engine.open_for(IpAddr::from([127, 0, 0, 1])) {
            Ok(kind) => tracing::info!(?kind, "ICMP ready"),
            Err(error) => tracing::error!(
                %error,
                "ICMP probes will fail with reason `permission`; HTTP probes keep running"
            ),
        }
        Ok(Self {
            http: Arc::new(HyperProber::new(Arc::clone(&dns))),
            dns,
            icmp: Arc::new(engine),
        })
    }
}

/// Runs one planned probe and stamps its result.
pub(crate) async fn run_probe(probers: &Probers, me: &AgentId, probe: PlannedProbe) -> ProbeResult {
    let outcome = match &probe.how {
        ProbeHow::Icmp(settings) => {
            let host = match probe.target.destination() {
                probermesh_core::model::Destination::Icmp(host) => host.clone(),
                probermesh_core::model::Destination::Http(url) => url.host.clone(),
            };
            ProbeOutcome::Icmp(
                probermesh_core::probe::icmp(
                    probers.dns.as_ref(),
                    probers.icmp.as_ref(),
                    &host,
                    settings,
                )
                .await,
            )
        }
        ProbeHow::Http { url, module } => {
            ProbeOutcome::Http(probers.http.probe(url, module, probe.timeout).await)
        }
    };
    ProbeResult {
        source: me.clone(),
        target_region: probe.target_region,
        target: probe.target.raw().to_owned(),
        round_start: probe.round_start,
        outcome,
    }
}

/// Runs probe rounds for ever over `pool()` (the shared latest pool, not a copy), sending
/// each result to `results` and counting it in `produced`. Once `stopping` turns true, probes
/// not started yet are dropped; those in flight finish and send their result.
async fn probe_rounds(
    probers: Arc<Probers>,
    me: AgentId,
    interval: Duration,
    pool: impl Fn() -> Arc<Vec<probermesh_core::model::ProbeConfig>>,
    results: mpsc::Sender<ProbeResult>,
    produced: Arc<AtomicU64>,
    stopping: watch::Receiver<bool>,
) {
    loop {
        let woke = now();
        let round = round_start(woke, interval);
        let plan = plan_rest_of_round(&pool(), &me, woke, interval);
        tracing::debug!(
            round = round.as_millis(),
            probes = plan.len(),
            "probe round"
        );
        for probe in plan {
            let (probers, me, results) = (Arc::clone(&probers), me.clone(), results.clone());
            let (produced, mut stopping) = (Arc::clone(&produced), stopping.clone());
            tokio::spawn(async move {
                tokio::select! {
                    biased;
                    _ = stopping.wait_for(|stop| *stop) => return,
                    () = sleep_until(probe.start_at) => {}
                }
                let result = run_probe(&probers, &me, probe).await;
                produced.fetch_add(1, Ordering::Relaxed);
                let _ = results.send(result).await;
            });
        }
        let next =
            UnixMillis(round.as_millis() + u64::try_from(interval.as_millis()).unwrap_or(u64::MAX));
        sleep_until(next).await;
    }
}

/// Sleeps until the wall-clock instant `at`.
pub(crate) async fn sleep_until(at: UnixMillis) {
    let wait = at.as_millis().saturating_sub(now().as_millis());
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

/// Runs the agent until SIGINT or SIGTERM.
pub(crate) async fn run(args: AgentArgs) -> Result<()> {
    let choices = args.choices()?;
    let _log = logging::init("agent", args.log_level, &args.log_dir)?;
    let detected = detect_region(
        Some(args.region.as_str()).filter(|r| !r.is_empty()),
        std::env::var("PROBER_REGION").ok(),
        &MetadataEndpoint::production(),
        DetectionTimeouts::default(),
    )
    .await?;
    tracing::warn!(region = %detected.region, source = ?detected.source, "agent region");
    let network_type: NetworkType = args.icmp_network_type.parse()?;
    let override_ip: Option<IpAddr> = match &args.ip {
        Some(ip) => Some(
            ip.parse()
                .with_context(|| format!("invalid value {ip:?} for flag -agent.ip"))?,
        ),
        None => None,
    };
    let server_addr = resolve_addr("agent.rpc.report.addr", &args.rpc_report_addr).await?;
    let token = Token::load(args.auth_token_file.as_deref()).context("the agent's token")?;
    let verification = if let Some(ca) = &args.tls_ca_file {
        ServerVerification::CaFile(ca.clone())
    } else if let Some(pin) = &args.tls_server_fingerprint {
        ServerVerification::PinnedSha256(
            pin.parse::<Sha256Fingerprint>()
                .map_err(|e| anyhow::anyhow!("-agent.tls.server-fingerprint: {e}"))?,
        )
    } else {
        ServerVerification::Insecure
    };
    let mut ip_options = IpOptions::new(network_type, server_addr);
    ip_options.override_ip = override_ip;
    let start_link = |ip: IpAddr| -> Result<(AgentId, Arc<AgentLink>)> {
        let me = AgentId::new(detected.region.clone(), ip);
        let identity = AgentIdentity::new(me.clone(), AgentVersion::new(env!("CARGO_PKG_VERSION")))
            .map_err(|e| anyhow::anyhow!("no randomness for the instance id: {e}"))?;
        let mut config = AgentLinkConfig::new(
            args.rpc_report_addr.clone(),
            verification.clone(),
            token.clone(),
            identity,
        );
        config.heartbeat_interval = choices.probe_interval;
        Ok((
            me,
            Arc::new(AgentLink::start(config).context("starting the agent link")?),
        ))
    };
    let mut chosen = agent_ip(&ip_options).await?;
    let (mut me, mut link) = start_link(chosen.ip)?;
    if network_type == NetworkType::Public && override_ip.is_none() {
        // The public address is the one the server sees: learn it from the first Welcome,
        // then reconnect under it (decision 12).
        let welcome = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Ok(ServerMessage::Welcome { observed_addr, .. }) = link.recv().await {
                    return observed_addr;
                }
            }
        })
        .await;
        if let Ok(observed) = welcome {
            ip_options.observed = Some(std::net::SocketAddr::from(observed).ip());
            chosen = agent_ip(&ip_options).await?;
            if chosen.ip != me.ip {
                link.close().await;
                (me, link) = start_link(chosen.ip)?;
            }
        }
    }
    tracing::warn!(agent = %me, ip_source = ?chosen.source, server = %args.rpc_report_addr, "agent started");

    if args.upgrade {
        tracing::warn!(
            interval = %args.upgrade_interval,
            "-agent.upgrade: self-upgrade is not implemented in this version; the flag is accepted and ignored"
        );
    }
    let probers = Arc::new(Probers::system()?);
    let loops = AgentLoops::spawn(
        Arc::clone(&link),
        probers,
        me,
        choices.probe_interval,
        choices.sync_interval,
    );
    wait_for_stop().await?;
    tracing::warn!("shutting down: finishing the probes in flight and delivering their results");
    let report = loops
        .stop(
            &link,
            choices.probe_interval + IN_FLIGHT_GRACE,
            DRAIN_TIMEOUT,
        )
        .await;
    link.close().await;
    let outbox = report.link.outbox;
    tracing::warn!(
        produced = report.produced,
        acknowledged = outbox.acked_results,
        dropped_full = outbox.dropped_results,
        dropped_unencodable = outbox.unencodable_results,
        unsent = report.unsent(),
        "agent stopped"
    );
    Ok(())
}

/// How much longer than a probe interval a graceful stop waits for the probes in flight (a
/// probe's timeout is at most its interval; the ICMP engine adds its reply timeout).
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(3);

/// How long a graceful stop waits for the server to acknowledge the last results.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What an agent did over its life, logged when it stops.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StopReport {
    /// Results its probes produced.
    pub(crate) produced: u64,
    /// The link's counters after the drain.
    pub(crate) link: AgentLinkStats,
}

impl StopReport {
    /// Results produced but neither acknowledged nor counted as dropped: still buffered when
    /// the drain gave up (the server away), or never handed to the link.
    pub(crate) fn unsent(&self) -> u64 {
        let outbox = &self.link.outbox;
        self.produced.saturating_sub(
            outbox.acked_results + outbox.dropped_results + outbox.unencodable_results,
        )
    }
}

/// The loops of one agent over its link: probe rounds over the latest pool, batching of
/// their results into the link, a pool request every `sync_interval`, and the server's
/// messages. The agent and the demo run the same loops.
pub(crate) struct AgentLoops {
    rounds: JoinHandle<()>,
    batcher: JoinHandle<()>,
    /// The pool syncer and the receiver of server messages.
    others: Vec<JoinHandle<()>>,
    stopping: watch::Sender<bool>,
    produced: Arc<AtomicU64>,
}

impl AgentLoops {
    pub(crate) fn spawn(
        link: Arc<AgentLink>,
        probers: Arc<Probers>,
        me: AgentId,
        probe_interval: Duration,
        sync_interval: Duration,
    ) -> Self {
        let (results_tx, mut results_rx) = mpsc::channel::<ProbeResult>(4096);
        let (stopping, stopping_rx) = watch::channel(false);
        let produced = Arc::new(AtomicU64::new(0));
        let pool_link = Arc::clone(&link);
        let rounds = tokio::spawn(probe_rounds(
            probers,
            me,
            probe_interval,
            move || {
                pool_link
                    .latest_pool()
                    .map(|pool| pool.configs)
                    .unwrap_or_default()
            },
            results_tx,
            Arc::clone(&produced),
            stopping_rx,
        ));
        let sender_link = Arc::clone(&link);
        let batcher = tokio::spawn(async move {
            let mut batch = Vec::new();
            loop {
                let flush = tokio::time::sleep(Duration::from_millis(500));
                tokio::select! {
                    received = results_rx.recv() => match received {
                        Some(result) => batch.push(ProbeResultV1::from(&result)),
                        None => {
                            // Every probe has ended (a stop): hand over the rest.
                            sender_link.enqueue_results(std::mem::take(&mut batch));
                            return;
                        }
                    },
                    () = flush => {}
                }
                if !batch.is_empty() && (batch.len() >= 1_000 || results_rx.is_empty()) {
                    sender_link.enqueue_results(std::mem::take(&mut batch));
                }
            }
        });
        // Pools are pushed when they change; asking every sync interval as well covers a
        // push lost with a connection.
        let sync_link = Arc::clone(&link);
        let syncer = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(sync_interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let known_revision = sync_link.latest_pool().map_or(0, |pool| pool.revision);
                let _ = sync_link
                    .send(AgentMessage::PoolRequest { known_revision })
                    .await;
            }
        });
        let receiver = tokio::spawn(async move {
            loop {
                match link.recv().await {
                    Ok(ServerMessage::Welcome {
                        observed_addr,
                        server_version,
                        ..
                    }) => {
                        tracing::info!(%server_version, observed = ?observed_addr, "connected to the server");
                    }
                    Ok(ServerMessage::TargetPool { revision, configs }) => {
                        tracing::info!(revision, blocks = configs.len(), "target pool updated");
                    }
                    Ok(other) => {
                        tracing::debug!(?other, "server message not handled by this version");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "link to the server");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Self {
            rounds,
            batcher,
            others: vec![syncer, receiver],
            stopping,
            produced,
        }
    }

    /// Stops every loop at once: probes in flight and results not yet acknowledged are lost.
    pub(crate) fn abort(&self) {
        for task in [&self.rounds, &self.batcher]
            .into_iter()
            .chain(&self.others)
        {
            task.abort();
        }
    }

    /// Stops gracefully: starts no more probes, waits up to `in_flight_timeout` for those
    /// running to finish and hand their results to `link`, then up to `drain_timeout` for the
    /// server to acknowledge everything.
    pub(crate) async fn stop(
        self,
        link: &AgentLink,
        in_flight_timeout: Duration,
        drain_timeout: Duration,
    ) -> StopReport {
        let _ = self.stopping.send(true);
        self.rounds.abort();
        // The batcher returns once the last probe in flight has sent its result.
        let mut batcher = self.batcher;
        if tokio::time::timeout(in_flight_timeout, &mut batcher)
            .await
            .is_err()
        {
            tracing::warn!(
                ?in_flight_timeout,
                "probes still running at stop; their results are not sent"
            );
            batcher.abort();
        }
        let link_stats = link.drain(drain_timeout).await;
        for task in &self.others {
            task.abort();
        }
        StopReport {
            produced: self.produced.load(Ordering::Relaxed),
            link: link_stats,
        }
    }
}

async fn wait_for_stop() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = terminate.recv() => Ok(()),
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT"),
    }
}
