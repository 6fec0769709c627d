//! `probermesh agent`: works out who the agent is (region, address), builds the QUIC agent
//! link, the ICMP engine, the HTTP prober and DNS timing, and runs the agent's driver
//! (`probermesh_adapters::driver::agent`) over core's `AgentState` until SIGINT or SIGTERM.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use probermesh_adapters::bounded_read::{Links, read_regular_file};
use probermesh_adapters::clock::SystemClock;
use probermesh_adapters::dns::HickoryDns;
use probermesh_adapters::driver::agent::{self as driver, StopBounds};
use probermesh_adapters::http::HyperProber;
use probermesh_adapters::icmp::{IcmpEngine, IcmpTracer};
use probermesh_adapters::identity::{
    DetectionTimeouts, IpOptions, MetadataEndpoint, NetworkType, agent_ip, detect_region,
};
use probermesh_adapters::link::{
    AgentIdentity, AgentLink, AgentLinkConfig, ServerVerification, Sha256Fingerprint,
};
use probermesh_adapters::secret::Token;
use probermesh_adapters::task_runner::ProcessTaskRunner;
use probermesh_adapters::version::VERSION;
use probermesh_core::task::signing::TaskPublicKey;

/// The longest task key file read, in bytes.
const MAX_KEY_FILE_LEN: u64 = 4096;
use probermesh_core::agent::{AgentConfig, AgentState};
use probermesh_core::model::{AgentId, AgentVersion};
use probermesh_core::ports::{Clock, DnsResolver};
use probermesh_core::probe::Probers;
use probermesh_core::trace::agent::TracePolicy;
use tokio::sync::watch;

use crate::cli::AgentArgs;
use crate::logging;
use crate::server::resolve_addr;
use probermesh_adapters::upgrade::handover::{self, Handover, HandoverEnd, RestartMode, hand_over};
use probermesh_adapters::upgrade::installer::FileInstaller;
use probermesh_adapters::upgrade::release_key::ReleaseKey;
use probermesh_adapters::upgrade::state_file::Outcome;
use probermesh_adapters::upgrade::trial;
use probermesh_core::link::UpgradeState;
use probermesh_core::upgrade::agent::{Probation, UpgradePolicy, UpgradeReport, UpgradeSetup};

/// The real probers: the ICMP engine (its socket opened now, so a permission problem shows at
/// start), hickory DNS from the system configuration, the hyper HTTP prober.
pub(crate) fn system_probers() -> Result<Probers> {
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
    Ok(Probers {
        http: Arc::new(HyperProber::new(Arc::clone(&dns))),
        dns,
        icmp: Arc::new(engine),
    })
}

/// What every link of this agent is made of: a re-identification starts another.
struct LinkRecipe {
    server_addr: String,
    verification: ServerVerification,
    token: Token,
    /// The features named in the hello (`task` with `-agent.task`).
    features: std::collections::BTreeSet<String>,
}

impl LinkRecipe {
    /// Starts a link for agent `me`.
    fn start(&self, me: &AgentId) -> Result<Arc<AgentLink>, String> {
        let identity = AgentIdentity::new(me.clone(), AgentVersion::new(VERSION))
            .map_err(|e| format!("no randomness for the instance id: {e}"))?;
        let mut config = AgentLinkConfig::new(
            self.server_addr.clone(),
            self.verification.clone(),
            self.token.clone(),
            identity,
        );
        config.features.clone_from(&self.features);
        AgentLink::start(config)
            .map(Arc::new)
            .map_err(|e| format!("starting the agent link: {e}"))
    }
}

/// Runs the agent until SIGINT or SIGTERM.
pub(crate) async fn run(args: AgentArgs) -> Result<()> {
    let choices = args.choices()?;
    let log_guard = logging::init("agent", args.log_level, &args.log_dir)?;
    // Taken before anything can replace the file: the path upgrades replace and restart.
    let exe = std::env::current_exe().context("finding the agent's own executable")?;
    let upgrade = upgrade_setup(&args, &choices, &exe)?;
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
    let mut task_policy = choices.tasks.clone();
    if let (Some(policy), Some(path)) = (&mut task_policy, &args.task_pubkey) {
        let text = read_regular_file(path, MAX_KEY_FILE_LEN, Links::Follow)
            .with_context(|| format!("-agent.task.pubkey {}", path.display()))?;
        let text = String::from_utf8(text)
            .with_context(|| format!("-agent.task.pubkey {}: not UTF-8 text", path.display()))?;
        policy.key = Some(
            TaskPublicKey::parse(&text)
                .with_context(|| format!("-agent.task.pubkey {}", path.display()))?,
        );
    }
    match &task_policy {
        None => tracing::info!(
            "tasks off: every task the server sends is refused (-agent.task turns them on)"
        ),
        Some(policy) if policy.command.shell => tracing::warn!(
            signed_only = policy.key.is_some(),
            "-agent.task.shell: tasks run through /bin/sh -c, any command, as this agent's user"
        ),
        Some(policy) => tracing::warn!(
            policy = %policy.command,
            signed_only = policy.key.is_some(),
            max_timeout = ?policy.max_timeout,
            "tasks on"
        ),
    }
    let trace_policy = (!args.trace_off).then(TracePolicy::default);
    if trace_policy.is_none() {
        tracing::info!("path traces off: every trace the server asks for is refused (--trace-off)");
    }
    let recipe = LinkRecipe {
        server_addr: args.rpc_report_addr.clone(),
        verification,
        token,
        features: task_policy
            .iter()
            .map(|_| probermesh_core::link::feature::TASK.to_owned())
            .chain(
                upgrade
                    .setup
                    .policy
                    .iter()
                    .map(|_| probermesh_core::link::feature::UPGRADE.to_owned()),
            )
            .chain(
                trace_policy
                    .iter()
                    .map(|_| probermesh_core::link::feature::TRACE.to_owned()),
            )
            .collect(),
    };
    let chosen = agent_ip(&ip_options).await?;
    let me = AgentId::new(detected.region.clone(), chosen.ip);
    let link = recipe.start(&me).map_err(anyhow::Error::msg)?;
    let relink: driver::Relink<AgentLink> = Box::new(move |me| recipe.start(me));
    tracing::warn!(agent = %me, ip_source = ?chosen.source, server = %args.rpc_report_addr, "agent started");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let state = AgentState::new(
        AgentConfig {
            me,
            probe_interval: choices.probe_interval,
            sync_interval: choices.sync_interval,
            heartbeat_interval: choices.probe_interval,
            follow_observed_ip: ip_options.follows_server_view(),
            in_flight_limits: choices.in_flight_limits,
            tasks: task_policy,
            upgrade: upgrade.setup.clone(),
            traces: trace_policy,
        },
        clock.now(),
    );
    let (stop, stopping) = watch::channel(false);
    let signals = tokio::spawn(async move {
        let result = wait_for_stop().await;
        let _ = stop.send(true);
        result
    });
    let run = driver::run(
        state,
        link,
        relink,
        system_probers()?,
        Arc::new(ProcessTaskRunner::new()),
        Arc::new(IcmpTracer::default()),
        upgrade
            .installer
            .clone()
            .map(|installer| installer as Arc<dyn probermesh_core::ports::Installer>),
        clock,
        stopping,
        StopBounds::for_interval(choices.probe_interval),
    )
    .await;
    if run.handover.is_some() {
        // The run ended for a hand-over, not a signal: nothing will wake the handler.
        signals.abort();
    } else {
        signals.await.context("the signal handler")??;
    }
    let outbox = run.link.stats().outbox;
    let produced = run.state.produced();
    let unsent = produced
        .saturating_sub(outbox.acked_results + outbox.dropped_results + outbox.unencodable_results);
    tracing::warn!(
        produced,
        acknowledged = outbox.acked_results,
        dropped_full = outbox.dropped_results,
        dropped_unencodable = outbox.unencodable_results,
        unsent,
        "agent stopped"
    );
    if let (Some((offer_id, plan)), Some(installer), Some(choices)) =
        (run.handover, &upgrade.installer, &choices.upgrade)
    {
        let staged = installer
            .checked(offer_id)
            .context("the checked binary of the upgrade is gone")?;
        let mode = if choices.exit_for_supervisor {
            RestartMode::Exit
        } else {
            RestartMode::Exec
        };
        tracing::warn!(version = %plan.version, staged = %staged.display(), ?mode, deadline = ?choices.deadline, "handing over to the new version: it runs on trial while this process waits");
        // The file log's writer keeps lines in memory; an exec would lose them.
        drop(log_guard);
        let handover = Handover {
            offer_id,
            version: plan.version.clone(),
            from_version: VERSION.to_owned(),
            probation_deadline: choices.deadline,
        };
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        match hand_over(&exe, &staged, handover, args, mode).await {
            Ok(HandoverEnd::ExitForSupervisor) => {
                tracing::warn!(
                    "the new version is installed; exiting for the supervisor to start it"
                );
            }
            Err(error) => return Err(error).context("restarting after the upgrade"),
        }
    }
    Ok(())
}

/// The agent's upgrade choices at start: the policy (`-agent.upgrade`), whether this process
/// is a trial, the previous process's outcome to report, and the installer.
struct AgentUpgrade {
    setup: UpgradeSetup,
    installer: Option<Arc<FileInstaller>>,
}

fn upgrade_setup(
    args: &AgentArgs,
    choices: &crate::cli::AgentChoices,
    exe: &std::path::Path,
) -> Result<AgentUpgrade> {
    let Some(up) = &choices.upgrade else {
        return Ok(AgentUpgrade {
            setup: UpgradeSetup::default(),
            installer: None,
        });
    };
    let key = args
        .upgrade_pubkey
        .as_deref()
        .map(|path| {
            ReleaseKey::load(path)
                .with_context(|| format!("-agent.upgrade.pubkey {}", path.display()))
        })
        .transpose()?;
    let report = handover::at_start(exe).map(|record| UpgradeReport {
        offer_id: record.offer_id,
        version: record.version,
        state: match record.outcome {
            Outcome::Committed => UpgradeState::Committed,
            Outcome::RolledBack { reason } => UpgradeState::RolledBack { reason },
            Outcome::Failed { reason } => UpgradeState::Failed { reason },
        },
    });
    if let Some(report) = &report {
        tracing::warn!(offer = report.offer_id, version = %report.version, state = ?report.state, "the last upgrade's outcome; reported to the server");
    }
    let probation = trial::trial_marker_from_env().map(|_| Probation {
        offer_id: trial::trial_offer_from_env().unwrap_or_default(),
        version: VERSION.to_owned(),
        rounds_needed: up.probation_rounds,
    });
    if probation.is_some() {
        tracing::warn!(
            rounds = up.probation_rounds,
            "this process is the trial of a new version: it commits once its results are acknowledged in that many rounds"
        );
    }
    let mut policy = UpgradePolicy::new(
        VERSION
            .parse()
            .with_context(|| format!("this build's version {VERSION:?}"))?,
    );
    policy.probation_rounds = up.probation_rounds;
    tracing::warn!(
        exe = %exe.display(),
        signed_only = key.is_some(),
        restart = if up.exit_for_supervisor { "exit" } else { "exec" },
        "-agent.upgrade: upgrades the server offers are installed (a newer version, or force)"
    );
    Ok(AgentUpgrade {
        setup: UpgradeSetup {
            policy: Some(policy),
            probation,
            report,
        },
        installer: Some(Arc::new(FileInstaller::new(exe.to_owned(), key))),
    })
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
