//! `probermesh server`: builds the agent link (QUIC), the store, the probe file source, the
//! exporter and the HTTP endpoints, and starts the server's driver over them. Reload on SIGHUP
//! or `/-/reload`; graceful stop on SIGINT/SIGTERM. Wiring only: every decision is in
//! `core::server`, every loop in `adapters::driver::server`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use probermesh_adapters::admin::{AdminLimits, AdminServer};
use probermesh_adapters::clock::SystemClock;
use probermesh_adapters::driver::server::{
    ServerDriver, ServerHandle, ServerParts as DriverParts, StopReport,
};
use probermesh_adapters::fd_limit;
use probermesh_adapters::link::{CertificateSource, ReportServer, ServerConfig};
use probermesh_adapters::metrics::PrometheusExporter;
use probermesh_adapters::probe_file::ProbeFileOnDisk;
use probermesh_adapters::secret::Token;
use probermesh_adapters::store::FileStore;
use probermesh_adapters::task_archive::{ArchiveLimits, FileTaskArchive};
use probermesh_core::aggregate::{Aggregator, AggregatorConfig};
use probermesh_core::pool::TargetPool;
use probermesh_core::ports::TaskArchive;
use probermesh_core::ports::{Clock, PoolSource, Store};
use probermesh_core::server::{ServerState, check_pool_fits};
use probermesh_core::task::book::{TaskBook, TaskSettings};
use probermesh_core::trace::store::{StoreLimits, TraceStore};
use probermesh_core::trace::trigger::{TraceDesk, TriggerConfig};
use probermesh_core::upgrade::rollout::{RolloutSettings, UpgradeDesk};

use crate::cli::ServerArgs;
use crate::logging;
use probermesh_adapters::driver::upgrade::ReleaseIntake;
use probermesh_adapters::upgrade::release_key::ReleaseKey;

/// Resolves `host:port` (the Go default `localhost:6000` included) to one socket address;
/// errors name the flag `-{flag}`.
pub(crate) async fn resolve_addr(flag: &str, addr: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("invalid value {addr:?} for flag -{flag}"))?
        .next()
        .with_context(|| format!("-{flag} {addr:?} resolves to no address"))
}

/// The bandwidth cap of `-server.upgrade.max-bytes-per-second` (0: none). Under 64 KiB/s a
/// batch's agents would wait minutes per 256 KiB chunk and give up (an agent asks six times,
/// 30 s apart), so such a cap is refused.
fn upgrade_cap(bytes_per_second: u64) -> Result<Option<u64>> {
    const LEAST: u64 = 64 * 1024;
    match bytes_per_second {
        0 => Ok(None),
        n if n < LEAST => anyhow::bail!(
            "invalid value {n} for flag -server.upgrade.max-bytes-per-second: 0 (no cap) or at least {LEAST} (agents give up on a chunk after 3 minutes)"
        ),
        n => Ok(Some(n)),
    }
}

/// What a server is started from (the flags, or the demo's choices).
pub(crate) struct ServerParts {
    pub(crate) link: ServerConfig,
    pub(crate) aggregator: AggregatorConfig,
    pub(crate) pool: TargetPool,
    /// The probe file, read again at every reload.
    pub(crate) probe_file: Option<ProbeFileOnDisk>,
    pub(crate) http_listen_addr: String,
    pub(crate) admin_token: Option<Token>,
    /// `-server.mesh.require-token`.
    pub(crate) mesh_requires_token: bool,
    /// The line the mesh page shows (the demo's simulated-WAN label).
    pub(crate) mesh_notice: Option<String>,
    /// The data directory whose store receives the unsettled windows at stop (`None`: they
    /// are dropped, as the demo does).
    pub(crate) data_dir: Option<PathBuf>,
    /// Remote tasks (`-server.task`): their settings and `-server.task.meta.dir`.
    pub(crate) tasks: Option<(TaskSettings, PathBuf)>,
    /// How upgrade releases are taken (`-server.upgrade.*`); its `dir` is set from the data
    /// directory.
    pub(crate) releases: ReleaseIntake,
    /// The rollout's limits (`-server.upgrade.max-bytes-per-second`).
    pub(crate) rollouts: RolloutSettings,
    /// Path tracing (`-server.trace.*`; `None`: off).
    pub(crate) traces: Option<(TriggerConfig, StoreLimits)>,
}

/// A started server: its link, driver and endpoints.
pub(crate) struct RunningServer {
    link: Arc<ReportServer>,
    driver: ServerDriver<ReportServer>,
    admin: AdminServer,
}

impl RunningServer {
    /// Binds the link, starts the driver (which files a previous server's windows), then the
    /// endpoints.
    pub(crate) async fn start(parts: ServerParts) -> Result<Self> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        // The data directory is checked (and created) before anything is read from it.
        let store = match parts.data_dir.as_deref() {
            Some(dir) => Some(Arc::new(FileStore::open(dir)?) as Arc<dyn Store>),
            None => None,
        };
        let link = Arc::new(ReportServer::bind(parts.link).context("starting the agent link")?);
        let aggregator =
            Aggregator::new(parts.aggregator, clock.now()).context("the aggregation settings")?;
        let mut state = ServerState::new(aggregator, parts.pool)
            .with_upgrades(UpgradeDesk::new(parts.rollouts));
        if let Some(notice) = parts.mesh_notice {
            state = state.with_mesh_notice(notice);
        }
        if let Some((config, limits)) = parts.traces {
            let desk = TraceDesk::new(config, clock.now()).context("the -server.trace settings")?;
            state = state.with_traces(desk, TraceStore::new(limits));
        }
        let mut task_archive = None;
        if let Some((settings, meta_dir)) = parts.tasks {
            let limits = ArchiveLimits {
                retention: settings.retention,
                ..ArchiveLimits::default()
            };
            let archive = FileTaskArchive::open(&meta_dir, limits)
                .with_context(|| format!("-server.task.meta.dir {}", meta_dir.display()))?;
            task_archive = Some(Arc::new(archive) as Arc<dyn TaskArchive>);
            state = state.with_tasks(TaskBook::new(settings));
        }
        let driver = ServerDriver::start(DriverParts {
            link: Arc::clone(&link),
            state,
            clock,
            exporter: Arc::new(PrometheusExporter::new()),
            pool_source: parts
                .probe_file
                .map(|file| Arc::new(file) as Arc<dyn PoolSource>),
            store,
            task_archive,
            releases: ReleaseIntake {
                dir: parts.data_dir.as_ref().map(|dir| dir.join("upgrade")),
                ..parts.releases
            },
        });
        let admin = match AdminServer::start_with(
            &parts.http_listen_addr,
            Arc::new(driver.handle()),
            parts.admin_token,
            AdminLimits {
                mesh_requires_token: parts.mesh_requires_token,
                ..AdminLimits::default()
            },
        )
        .await
        {
            Ok(admin) => admin,
            Err(error) => {
                driver.abandon();
                link.shutdown().await;
                return Err(error.into());
            }
        };
        driver.started();
        Ok(Self {
            link,
            driver,
            admin,
        })
    }

    /// The agent link's address.
    pub(crate) fn link_addr(&self) -> SocketAddr {
        self.link.local_addr()
    }

    /// The SHA-256 fingerprint agents pin.
    pub(crate) fn fingerprint(&self) -> String {
        self.link.fingerprint().to_string()
    }

    /// The HTTP endpoints' address.
    pub(crate) fn http_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// The server as the endpoints see it.
    pub(crate) fn handle(&self) -> ServerHandle<ReportServer> {
        self.driver.handle()
    }

    /// Stops the endpoints, then the driver (which hands the unsettled windows over).
    pub(crate) async fn stop(self) -> StopReport {
        self.admin.stop();
        self.driver.stop().await
    }
}

/// Runs the server until SIGINT or SIGTERM.
pub(crate) async fn run(args: ServerArgs) -> Result<()> {
    let choices = args.choices()?;
    let _log = logging::init("server", args.log_level, &args.log_dir)?;
    let open_files = match fd_limit::raise_open_files_limit() {
        Ok(limit) => {
            if limit.raised() {
                tracing::info!(
                    from = limit.before,
                    to = limit.now,
                    "open-files limit raised to the hard limit"
                );
            }
            Some(limit.now)
        }
        Err(error) => {
            tracing::warn!(%error, "the open-files limit stays");
            None
        }
    };
    // The server's own secrets, which no block may name (they would go to every URL): the
    // generated key in the data directory, the token files, the given key.
    let private = [
        Some(
            args.data_dir
                .join(probermesh_adapters::link::GENERATED_KEY_FILE),
        ),
        args.auth_token_file.clone(),
        args.admin_token_file.clone(),
        args.tls_key_file.clone(),
    ];
    let probe_file = args
        .probe_file
        .as_deref()
        .map(|path| ProbeFileOnDisk::new(path).keeping_private(private.into_iter().flatten()));
    let file_configs = match &probe_file {
        Some(file) => file.load()?,
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
            max_agents = choices.tasks.max_agents,
            lifetime = ?choices.tasks.lifetime,
            "-server.task: remote tasks on; /-/task needs the admin bearer token and runs only on agents started with -agent.task"
        );
    }
    match &choices.traces {
        Some((config, limits)) => tracing::info!(
            loss_enter = config.loss_ratio.trigger,
            loss_leave = config.loss_ratio.clear,
            windows = config.windows_to_trigger,
            cooldown = ?config.cooldown,
            budget_per_hour = config.budget_per_hour,
            store_max_records = limits.max_records,
            "path tracing on; POST /-/trace needs the admin bearer token; only agents that take traces run them"
        ),
        None => tracing::info!("-server.trace=false: path tracing off"),
    }
    let releases = ReleaseIntake {
        key: args
            .upgrade_pubkey
            .as_deref()
            .map(|path| {
                ReleaseKey::load(path)
                    .with_context(|| format!("-server.upgrade.pubkey {}", path.display()))
            })
            .transpose()?,
        allow_md5: args.upgrade_allow_md5,
        ..ReleaseIntake::default()
    };
    if releases.allow_md5 {
        tracing::warn!(
            "-server.upgrade.allow-md5: upgrade requests checked by md5 alone are taken (md5 does not stop a forged binary; give sha256)"
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
        probe_file,
        http_listen_addr: args.http_listen_addr.clone(),
        admin_token: Some(admin_token),
        mesh_requires_token: args.mesh_require_token,
        mesh_notice: None,
        data_dir: Some(args.data_dir.clone()),
        tasks: args
            .task
            .then(|| (choices.tasks.clone(), args.task_meta_dir.clone())),
        releases,
        rollouts: RolloutSettings {
            max_bytes_per_second: upgrade_cap(args.upgrade_max_bytes_per_second)?,
            ..RolloutSettings::default()
        },
        traces: choices.traces.clone(),
    })
    .await?;
    tracing::warn!(
        link = %server.link_addr(),
        fingerprint = %server.fingerprint(),
        http = %server.http_addr(),
        method = choices.method.as_str(),
        open_files_limit = open_files,
        "server started; agents pin the fingerprint with -agent.tls.server-fingerprint"
    );
    wait_for_signals(&server.handle()).await?;
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
async fn wait_for_signals(server: &ServerHandle<ReportServer>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = hangup.recv() => { let _ = server.reload().await; }
            _ = terminate.recv() => return Ok(()),
            result = tokio::signal::ctrl_c() => return result.context("waiting for SIGINT"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::Path;
    use std::time::Duration;

    use probermesh_core::model::{AgentId, IcmpResult, ProbeOutcome, ProbeResult, Region};
    use probermesh_core::pool::Discovery;
    use probermesh_core::ports::Record;
    use probermesh_core::server::handoff;
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
            mesh_requires_token: false,
            mesh_notice: None,
            data_dir: Some(dir.to_owned()),
            tasks: None,
            rollouts: RolloutSettings::default(),
            traces: None,
            releases: Default::default(),
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
            round_start: SystemClock.now(),
            outcome: ProbeOutcome::Icmp(IcmpResult::measured(
                Duration::ZERO,
                4,
                &[Duration::from_millis(3)],
            )),
        }
    }

    #[tokio::test]
    async fn unsettled_windows_survive_a_failed_start_and_a_stop() {
        let dir = TempDir::new("pm-server-handoff");
        let store = FileStore::new(dir.path());
        let file = store.path_of(Record::OpenWindows);
        handoff::hand_over(
            &store,
            SystemClock.now(),
            Duration::from_secs(60),
            vec![result()],
        )
        .expect("a previous server's windows");

        // A start that fails after reading the file (its HTTP port is taken) keeps it.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let busy = taken.local_addr().expect("its address").to_string();
        assert!(
            RunningServer::start(parts(dir.path(), &busy))
                .await
                .is_err()
        );
        assert!(file.exists(), "kept for the next start");

        let server = RunningServer::start(parts(dir.path(), "127.0.0.1:0"))
            .await
            .expect("a server");
        assert!(!file.exists(), "removed once started");
        let report = server.stop().await;
        assert_eq!(report.handed_over, 1, "the resumed window is handed on");
        assert!(file.exists());
    }
}
