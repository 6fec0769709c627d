//! `probermesh server`: wires the QUIC report server, core's [`ServerState`] (aggregation,
//! pools) and the HTTP endpoints, and runs the two loops that feed the state: link events,
//! and the window timer. Reload on SIGHUP or `/-/reload`; graceful stop on SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use probermesh_adapters::admin::{AdminApi, AdminServer};
use probermesh_adapters::link::{CertificateSource, ReportServer, ServerConfig, Token};
use probermesh_adapters::metrics::PrometheusExporter;
use probermesh_core::aggregate::{Aggregator, AggregatorConfig, Counters, SnapshotPart};
use probermesh_core::model::{ProbeConfig, ProbeResult, UnixMillis};
use probermesh_core::pool::TargetPool;
use probermesh_core::ports::{LinkError, ReportSource};
use probermesh_core::probe_file::parse_probe_file;
use probermesh_core::server::{Actions, ServerState, check_pool_fits};
use serde::Serialize;

use crate::cli::ServerArgs;
use crate::handoff;
use crate::logging;

/// The wall clock as core wants it.
pub(crate) fn now() -> UnixMillis {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    UnixMillis(millis)
}

/// Reads and validates a probe file.
pub(crate) fn load_probe_file(path: &Path) -> Result<Vec<ProbeConfig>> {
    let name = path.display().to_string();
    let yaml =
        std::fs::read_to_string(path).with_context(|| format!("reading probe file {name}"))?;
    let file = parse_probe_file(&name, &yaml).map_err(anyhow::Error::new)?;
    Ok(file.configs)
}

/// Resolves `host:port` (the Go default `localhost:6000` included) to one socket address;
/// errors name the flag `-{flag}`.
pub(crate) async fn resolve_addr(flag: &str, addr: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("invalid value {addr:?} for flag -{flag}"))?
        .next()
        .with_context(|| format!("-{flag} {addr:?} resolves to no address"))
}

/// Everything the loops and the endpoints share.
struct Shared {
    state: Mutex<ServerState>,
    link: Arc<ReportServer>,
    probe_file: Option<PathBuf>,
    /// Holds the settled families (per pair, per URL) published once per window by the
    /// timer loop; a scrape adds only the live families (liveness, counters).
    exporter: PrometheusExporter,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes the settled families again (after a window settled or series expired).
    fn refresh_settled_text(&self) {
        let snapshot = self.state().snapshot_part(now(), SnapshotPart::Settled);
        self.exporter.publish(&snapshot);
    }

    /// The `/metrics` body: the published settled part and the live part rendered now.
    fn scrape(&self) -> Vec<u8> {
        let live = self.state().snapshot_part(now(), SnapshotPart::Live);
        self.exporter.scrape(&live)
    }

    async fn perform(&self, actions: Actions) {
        for (connection, reason) in actions.close {
            tracing::warn!(%connection, %reason, "protocol violation; closing the connection");
            self.link.close(connection, &reason);
        }
        let intake = actions.intake;
        if intake.dropped_late + intake.dropped_future > 0 {
            tracing::info!(
                late = intake.dropped_late,
                future = intake.dropped_future,
                "results outside the open windows dropped (check the agents' clocks)"
            );
        }
        for refusal in &actions.refused {
            let block = refusal
                .block
                .as_ref()
                .map(|(region, kind)| format!("{region} {kind}"));
            tracing::error!(
                agent = %refusal.agent,
                revision = refusal.revision,
                block = block.as_deref().unwrap_or("-"),
                "an agent refused its target pool and keeps probing its previous one: {refusal}"
            );
        }
        for (connection, message) in actions.send {
            match self.link.send_to(connection, message).await {
                Ok(()) => {}
                // The message cannot be encoded (a pool over the frame limit): loud.
                Err(error @ LinkError::Protocol { .. }) => {
                    tracing::error!(%connection, %error, "a message to an agent could not be sent");
                }
                Err(error) => tracing::debug!(%connection, %error, "sending to an agent failed"),
            }
        }
    }

    async fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.probe_file else {
            return Err("no -server.probe.file to reload".to_owned());
        };
        let reloaded = load_probe_file(path).and_then(|configs| {
            let blocks = configs.len();
            let actions = self
                .state()
                .reload(now(), configs)
                .with_context(|| format!("probe file {}", path.display()))?;
            Ok((blocks, actions))
        });
        match reloaded {
            Ok((blocks, actions)) => {
                self.perform(actions).await;
                tracing::warn!(file = %path.display(), blocks, "probe file reloaded");
                Ok(())
            }
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "reload failed; the running pool stays");
                Err(format!("{error:#}"))
            }
        }
    }
}

/// The Go `/-/targets` shape: `{region: [{"prober_type": "icmp", "targets": [...]}]}`, plus
/// `refused_by` on a block that agents refused (absent otherwise, so the Go shape is kept).
#[derive(Serialize)]
struct TargetsEntry<'a> {
    prober_type: &'a str,
    targets: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    refused_by: Vec<RefusedBy>,
}

/// An agent that refused a block: who, and why.
#[derive(Serialize)]
struct RefusedBy {
    agent: String,
    revision: u64,
    error: String,
}

struct Admin(Arc<Shared>);

#[async_trait::async_trait]
impl AdminApi for Admin {
    fn metrics(&self) -> Vec<u8> {
        self.0.scrape()
    }

    fn targets_json(&self) -> String {
        let state = self.0.state();
        let regions = state.targets(now());
        let refusals = state.pool_refusals();
        let shaped: BTreeMap<&str, Vec<TargetsEntry<'_>>> = regions
            .iter()
            .map(|(region, configs)| {
                let entries = configs
                    .iter()
                    .map(|config| TargetsEntry {
                        prober_type: config.kind().as_str(),
                        targets: config.targets.iter().map(|t| t.raw()).collect(),
                        refused_by: refusals
                            .iter()
                            .filter(|r| {
                                r.block.as_ref() == Some(&(config.region.clone(), config.kind()))
                            })
                            .map(|r| RefusedBy {
                                agent: r.agent.to_string(),
                                revision: r.revision,
                                error: r.to_string(),
                            })
                            .collect(),
                    })
                    .collect();
                (region.as_str(), entries)
            })
            .collect();
        serde_json::to_string(&shaped).unwrap_or_else(|_| "{}".to_owned())
    }

    async fn reload(&self) -> Result<(), String> {
        self.0.reload().await
    }

    fn ready(&self) -> bool {
        true
    }
}

/// A started server: its link, endpoints and loops.
pub(crate) struct RunningServer {
    shared: Arc<Shared>,
    admin: AdminServer,
    events: tokio::task::JoinHandle<()>,
    timer: tokio::task::JoinHandle<()>,
    handoff_file: Option<PathBuf>,
}

/// What a server did over its life, logged when it stops.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StopReport {
    /// Results received and dropped, by the aggregator's counters.
    pub(crate) counters: Counters,
    /// Result batches sent again by agents and recognised by the link.
    pub(crate) duplicate_batches: u64,
    /// Results of the unsettled windows written to the handoff file.
    pub(crate) handed_over: usize,
}

/// What a server is started from (the flags, or the demo's choices).
pub(crate) struct ServerParts {
    pub(crate) link: ServerConfig,
    pub(crate) aggregator: AggregatorConfig,
    pub(crate) pool: TargetPool,
    pub(crate) probe_file: Option<PathBuf>,
    pub(crate) http_listen_addr: String,
    pub(crate) admin_token: Option<Token>,
    /// Where unsettled windows are handed to the next server (`None`: they are dropped at
    /// stop, as the demo does).
    pub(crate) handoff_file: Option<PathBuf>,
}

impl RunningServer {
    /// Binds the link and the endpoints and starts the loops.
    pub(crate) async fn start(parts: ServerParts) -> Result<Self> {
        let link = Arc::new(ReportServer::bind(parts.link).context("starting the agent link")?);
        let aggregator =
            Aggregator::new(parts.aggregator, now()).context("the aggregation settings")?;
        let mut state = ServerState::new(aggregator, parts.pool);
        let resumed = match &parts.handoff_file {
            Some(path) => resume_handoff(&mut state, path),
            None => false,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            link,
            probe_file: parts.probe_file,
            exporter: PrometheusExporter::new(),
        });
        let admin = AdminServer::start(
            &parts.http_listen_addr,
            Arc::new(Admin(Arc::clone(&shared))),
            parts.admin_token,
        )
        .await?;
        // Started: the handed-over results now live in this process.
        if let (true, Some(path)) = (resumed, &parts.handoff_file)
            && let Err(error) = handoff::remove(path)
        {
            tracing::error!(
                error = %format!("{error:#}"),
                "cannot remove the handoff file; remove it by hand, or the next start files its results again"
            );
        }
        let events = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                while let Some(event) = shared.link.next_event().await {
                    let actions = shared.state().handle_event(now(), event);
                    shared.perform(actions).await;
                }
            })
        };
        let timer = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                loop {
                    let due = shared.state().next_timeout();
                    let wait =
                        Duration::from_millis(due.as_millis().saturating_sub(now().as_millis()));
                    tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
                    let actions = shared.state().handle_timeout(now());
                    let renderer = Arc::clone(&shared);
                    // Off the async workers: a big mesh takes a few hundred milliseconds.
                    let _ =
                        tokio::task::spawn_blocking(move || renderer.refresh_settled_text()).await;
                    shared.perform(actions).await;
                }
            })
        };
        Ok(Self {
            shared,
            admin,
            events,
            timer,
            handoff_file: parts.handoff_file,
        })
    }

    /// The agent link's address.
    pub(crate) fn link_addr(&self) -> SocketAddr {
        self.shared.link.local_addr()
    }

    /// The SHA-256 fingerprint agents pin.
    pub(crate) fn fingerprint(&self) -> String {
        self.shared.link.fingerprint().to_string()
    }

    /// The HTTP endpoints' address.
    pub(crate) fn http_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// Replaces the probe-file blocks (the demo sets its own) and pushes the change.
    pub(crate) fn set_file_configs(&self, configs: Vec<ProbeConfig>) {
        match self.shared.state().reload(now(), configs) {
            Ok(actions) => {
                let shared = Arc::clone(&self.shared);
                tokio::spawn(async move { shared.perform(actions).await });
            }
            Err(error) => tracing::error!(%error, "the pool was not replaced"),
        }
    }

    /// The series the server would expose now.
    pub(crate) fn snapshot(&self) -> probermesh_core::snapshot::Snapshot {
        self.shared.state().snapshot(now())
    }

    /// Stops everything: agent connections are closed cleanly (every result handed to the
    /// state is acknowledged, the rest is resent by agents to the next server), then the
    /// results of the unsettled windows go to the handoff file.
    pub(crate) async fn stop(mut self) -> StopReport {
        self.admin.stop();
        self.timer.abort();
        self.shared.link.shutdown().await;
        // The event loop ends by itself once the link hands out nothing more; wait for it so
        // every acknowledged result is filed before the windows are taken.
        if tokio::time::timeout(Duration::from_secs(5), &mut self.events)
            .await
            .is_err()
        {
            tracing::error!("the event loop did not finish within 5 s; stopping it");
            self.events.abort();
        }
        let (counters, window, open) = {
            let mut state = self.shared.state();
            (state.counters(), state.window(), state.take_open_results())
        };
        let handed_over = match &self.handoff_file {
            Some(path) => hand_over(path, window, open),
            None => 0,
        };
        StopReport {
            counters,
            duplicate_batches: self.shared.link.stats().duplicate_batches,
            handed_over,
        }
    }
}

/// Writes `open`, the results of a stopping server's unsettled windows, to the handoff file
/// at `path`; returns how many it wrote (the errors are logged: the process is ending).
fn hand_over(path: &Path, window: Duration, mut open: Vec<ProbeResult>) -> usize {
    if open.is_empty() {
        return 0;
    }
    match handoff::save(path, now(), window, &mut open) {
        Ok(left_out) => {
            if left_out > 0 {
                tracing::error!(
                    left_out,
                    "more unsettled results than a handoff file holds; the oldest are lost"
                );
            }
            tracing::info!(file = %path.display(), results = open.len(), "unsettled windows handed over to the next server");
            open.len()
        }
        Err(error) => {
            tracing::error!(
                error = %format!("{error:#}"),
                lost = open.len(),
                "cannot hand the unsettled windows over; their results are lost"
            );
            0
        }
    }
}

/// Files the results a previous server left in `path`, before any result comes over the link;
/// true when the file should go once the server has started (it was read, or its windows
/// do not fit this server's).
fn resume_handoff(state: &mut ServerState, path: &Path) -> bool {
    let window = state.window();
    match handoff::read(path) {
        Ok(None) => false,
        Ok(Some(windows)) if windows.window != window => {
            tracing::warn!(
                file = %path.display(),
                results = windows.results.len(),
                their_window = ?windows.window,
                our_window = ?window,
                "the previous server aggregated over another window; its unsettled windows are not resumed"
            );
            true
        }
        Ok(Some(windows)) => {
            let offered = windows.results.len();
            let intake = state.resume_results(now(), windows.results);
            tracing::warn!(
                file = %path.display(),
                saved_at_ms = windows.saved_at.as_millis(),
                resumed = intake.accepted,
                late = intake.dropped_late,
                stale = intake.dropped_stale,
                duplicate = intake.dropped_duplicate,
                offered,
                "resumed the previous server's unsettled windows"
            );
            true
        }
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "previous server's windows not resumed");
            false
        }
    }
}

/// Runs the server until SIGINT or SIGTERM.
pub(crate) async fn run(args: ServerArgs) -> Result<()> {
    let choices = args.choices()?;
    let _log = logging::init("server", args.log_level, &args.log_dir)?;
    let file_configs = match &args.probe_file {
        Some(path) => load_probe_file(path)?,
        None => Vec::new(),
    };
    let token = Token::load(args.auth_token_file.as_deref()).context("the agents' token")?;
    let admin_token = match &args.admin_token_file {
        Some(path) => Token::from_file(path).context("the admin token")?,
        None => token.clone(),
    };
    if args.task {
        tracing::warn!(
            meta_dir = %args.task_meta_dir.display(),
            "-server.task: remote tasks are not implemented in this version; /-/task answers 404"
        );
    }
    let listen = resolve_addr("server.rpc.listen.addr", &args.rpc_listen_addr).await?;
    let certificate = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert_file), Some(key_file)) => CertificateSource::Files {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        },
        _ => CertificateSource::Generated {
            data_dir: args.data_dir.clone(),
            names: vec!["localhost".to_owned(), listen.ip().to_string()],
        },
    };
    let server = RunningServer::start(ServerParts {
        link: ServerConfig::new(listen, certificate, token),
        aggregator: AggregatorConfig {
            window: choices.window,
            series_ttl_ratio: args.series_cache_ratio,
            method: choices.method,
            task_enabled: args.task,
            probe_self_enabled: args.probe_self,
            ..AggregatorConfig::default()
        },
        pool: {
            let pool = TargetPool::new(file_configs, choices.discovery, args.probe_self);
            if let Some(path) = &args.probe_file {
                check_pool_fits(&pool, &[])
                    .with_context(|| format!("probe file {}", path.display()))?;
            }
            pool
        },
        probe_file: args.probe_file.clone(),
        http_listen_addr: args.http_listen_addr.clone(),
        admin_token: Some(admin_token),
        handoff_file: Some(handoff::path_in(&args.data_dir)),
    })
    .await?;
    tracing::warn!(
        link = %server.link_addr(),
        fingerprint = %server.fingerprint(),
        http = %server.http_addr(),
        method = choices.method.as_str(),
        "server started; agents pin the fingerprint with -agent.tls.server-fingerprint"
    );
    wait_for_signals(&server.shared).await?;
    tracing::warn!("shutting down");
    let report = server.stop().await;
    let c = report.counters;
    tracing::warn!(
        received_icmp = c.received_icmp,
        received_http = c.received_http,
        dropped_late = c.dropped_late,
        dropped_future = c.dropped_future,
        dropped_duplicate = c.dropped_duplicate,
        settled = c.settled_results,
        duplicate_batches = report.duplicate_batches,
        handed_over = report.handed_over,
        "server stopped"
    );
    Ok(())
}

/// Reloads on SIGHUP; returns on SIGINT or SIGTERM.
async fn wait_for_signals(shared: &Shared) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = hangup.recv() => { let _ = shared.reload().await; }
            _ = terminate.recv() => return Ok(()),
            result = tokio::signal::ctrl_c() => return result.context("waiting for SIGINT"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use probermesh_core::model::{AgentId, IcmpResult, ProbeOutcome, ProbeResult, Region};
    use probermesh_core::pool::Discovery;
    use probermesh_tests::harness::TempDir;

    use super::*;

    fn parts(dir: &Path, http_listen_addr: &str) -> ServerParts {
        ServerParts {
            link: ServerConfig::new(
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                CertificateSource::Generated {
                    data_dir: dir.to_owned(),
                    names: vec!["localhost".to_owned()],
                },
                Token::new("test-token-0123456789", "test").expect("a token"),
            ),
            aggregator: AggregatorConfig {
                window: Duration::from_secs(60),
                ..AggregatorConfig::default()
            },
            pool: TargetPool::new(Vec::new(), Discovery::Dynamic, false),
            probe_file: None,
            http_listen_addr: http_listen_addr.to_owned(),
            admin_token: None,
            handoff_file: Some(handoff::path_in(dir)),
        }
    }

    fn result() -> ProbeResult {
        ProbeResult {
            source: AgentId::new(
                Region::new("a").expect("a region"),
                IpAddr::from([10, 0, 0, 1]),
            ),
            target_region: Region::new("b").expect("a region"),
            target: "10.0.0.2".to_owned(),
            round_start: now(),
            outcome: ProbeOutcome::Icmp(IcmpResult::measured(
                Duration::ZERO,
                4,
                &[Duration::from_millis(3)],
            )),
        }
    }

    #[tokio::test]
    async fn unsettled_windows_survive_a_stop_and_a_failed_start() {
        let dir = TempDir::new("pm-server-handoff");
        let file = handoff::path_in(dir.path());

        let first = RunningServer::start(parts(dir.path(), "127.0.0.1:0"))
            .await
            .expect("a server");
        let handed = result();
        let intake = first
            .shared
            .state()
            .resume_results(now(), vec![handed.clone()]);
        assert_eq!(intake.accepted, 1);
        let report = first.stop().await;
        assert_eq!(report.handed_over, 1);
        assert!(file.exists());

        // A start that fails after reading the file (its HTTP port is taken) keeps it.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let busy = taken.local_addr().expect("its address").to_string();
        assert!(
            RunningServer::start(parts(dir.path(), &busy))
                .await
                .is_err()
        );
        assert!(file.exists(), "kept for the next start");

        let second = RunningServer::start(parts(dir.path(), "127.0.0.1:0"))
            .await
            .expect("a server");
        assert!(!file.exists(), "removed once started");
        assert_eq!(second.shared.state().take_open_results(), vec![handed]);
        let report = second.stop().await;
        assert_eq!(report.handed_over, 0, "taken out above");
    }
}
