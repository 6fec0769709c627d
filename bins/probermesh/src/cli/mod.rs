//! The command line: the argh subcommands, their options, and their validation into typed
//! settings. Every option has a Go-style spelling too (see [`legacy`]); the defaults are the
//! Go system's, except `--log-dir` (empty: stderr only).

pub(crate) mod go_duration;
pub(crate) mod legacy;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use argh::FromArgs;
use probermesh_core::agent::InFlightLimits;
use probermesh_core::aggregate::AggregationMethod;
use probermesh_core::model::{MAX_PROBE_INTERVAL, MIN_PROBE_INTERVAL};
use probermesh_core::pool::Discovery;
use probermesh_core::task::book::TaskSettings;
use probermesh_core::task::command::CommandPolicy;
use probermesh_core::task::runs::TaskPolicy;
use probermesh_core::trace::store::StoreLimits;
use probermesh_core::trace::trigger::{Thresholds, TraceShape, TriggerConfig};
use probermesh_core::trace::{MAX_HOPS as MAX_TRACE_TTL, MAX_ROUNDS as MAX_TRACE_ROUNDS};

/// Run the ProberMesh server: pools what agents measure, serves it at /metrics.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "server")]
pub(crate) struct ServerArgs {
    /// probe file (YAML); required with --icmp-discovery static
    #[argh(option)]
    pub(crate) probe_file: Option<PathBuf>,
    /// static (targets from the file) or dynamic (agents' own addresses; default)
    #[argh(option, default = "String::from(\"dynamic\")")]
    pub(crate) icmp_discovery: String,
    /// address agents connect to (QUIC; default localhost:6000)
    #[argh(option, default = "String::from(\"localhost:6000\")")]
    pub(crate) rpc_listen_addr: String,
    /// HTTP address of /metrics and /-/* (default localhost:6001)
    #[argh(option, default = "String::from(\"localhost:6001\")")]
    pub(crate) http_listen_addr: String,
    /// aggregation window (Go duration, 1s to 24h, default 15s)
    #[argh(option, default = "String::from(\"15s\")")]
    pub(crate) aggregation_interval: String,
    /// robust (default) or mean (the Go math)
    #[argh(option, default = "String::from(\"robust\")")]
    pub(crate) aggregation_method: String,
    /// series expire after this many windows without data (default 5)
    #[argh(option, default = "5")]
    pub(crate) series_cache_ratio: u32,
    /// enable remote tasks (/-/task)
    #[argh(switch)]
    pub(crate) task: bool,
    /// task result directory (default ./task_meta/)
    #[argh(option, default = "PathBuf::from(\"./task_meta/\")")]
    pub(crate) task_meta_dir: PathBuf,
    /// agents a task may reach without "confirm": true (default 50)
    #[argh(option, default = "50")]
    pub(crate) task_max_agents: usize,
    /// how long a task waits for matching agents to connect (Go duration, default 5m)
    #[argh(option, default = "String::from(\"5m\")")]
    pub(crate) task_lifetime: String,
    /// longest a task's command may run (Go duration, default 30s)
    #[argh(option, default = "String::from(\"30s\")")]
    pub(crate) task_timeout: String,
    /// task results older than this are removed (Go duration, default 168h)
    #[argh(option, default = "String::from(\"168h\")")]
    pub(crate) task_retention: String,
    /// release public key file (minisign or bare ed25519): every upgrade must be signed by it
    #[argh(option)]
    pub(crate) upgrade_pubkey: Option<PathBuf>,
    /// accept an upgrade request checked by md5 alone (the Go request; no sha256)
    #[argh(switch)]
    pub(crate) upgrade_allow_md5: bool,
    /// most bytes of releases sent to agents per second, all agents together (0: no cap)
    #[argh(option, default = "0")]
    pub(crate) upgrade_max_bytes_per_second: u64,
    /// agents also probe targets of their own region
    #[argh(switch)]
    pub(crate) probe_self: bool,
    /// server certificate (PEM); generated into --data-dir when absent
    #[argh(option)]
    pub(crate) tls_cert_file: Option<PathBuf>,
    /// server private key (PEM)
    #[argh(option)]
    pub(crate) tls_key_file: Option<PathBuf>,
    /// directory for the generated certificate and the restart handoff, created 0700;
    /// refused when other users may write it (default ./probermesh-data)
    #[argh(option, default = "PathBuf::from(\"./probermesh-data\")")]
    pub(crate) data_dir: PathBuf,
    /// file holding the agents' shared token (else env PROBERMESH_TOKEN)
    #[argh(option)]
    pub(crate) auth_token_file: Option<PathBuf>,
    /// file holding the bearer token of /-/reload, /-/task, /-/upgrade (else the agents')
    #[argh(option)]
    pub(crate) admin_token_file: Option<PathBuf>,
    /// the mesh view's data (/api/v1/mesh) needs the admin token (default: public)
    #[argh(switch)]
    pub(crate) mesh_require_token: bool,
    /// turn path tracing off: no automatic traces, /-/trace answers 503 (-server.trace=false)
    #[argh(switch)]
    pub(crate) trace_off: bool,
    /// loss ratio a pair's window must reach to count bad for tracing (default 0.05)
    #[argh(option, default = "0.05")]
    pub(crate) trace_loss_enter: f64,
    /// loss ratio a degraded pair's window must stay under to count clear (default 0.01)
    #[argh(option, default = "0.01")]
    pub(crate) trace_loss_leave: f64,
    /// consecutive bad windows before a pair is traced (K, default 3)
    #[argh(option, default = "3")]
    pub(crate) trace_windows: u32,
    /// consecutive clear windows before a degraded pair has recovered (default 3)
    #[argh(option, default = "3")]
    pub(crate) trace_clear_windows: u32,
    /// least time between two automatic traces of one pair (Go duration, default 10m)
    #[argh(option, default = "String::from(\"10m\")")]
    pub(crate) trace_cooldown: String,
    /// automatic trace runs in any hour (0: operators only; default 30)
    #[argh(option, default = "30")]
    pub(crate) trace_budget: u32,
    /// a trace without a report after this is given up (Go duration, default 2m)
    #[argh(option, default = "String::from(\"2m\")")]
    pub(crate) trace_timeout: String,
    /// probes per hop of a trace (default 20)
    #[argh(option, default = "20")]
    pub(crate) trace_rounds: u16,
    /// highest TTL a trace tries (default 30)
    #[argh(option, default = "30")]
    pub(crate) trace_max_hops: u8,
    /// finished traces kept per region pair (default 20)
    #[argh(option, default = "20")]
    pub(crate) trace_store_per_pair: usize,
    /// finished traces kept in all (default 2000)
    #[argh(option, default = "2000")]
    pub(crate) trace_store_max_records: usize,
    /// bytes of finished traces kept in all (default 16777216)
    #[argh(option, default = "16777216")]
    pub(crate) trace_store_max_bytes: usize,
    /// log directory for daily files; empty (default) logs to stderr only
    #[argh(option, default = "String::new()")]
    pub(crate) log_dir: String,
    /// log level: 0 panic, 1 fatal, 2 error, 3 warn (default), 4 info, 5 debug, 6 trace
    #[argh(option, default = "3")]
    pub(crate) log_level: u8,
}

/// Run a ProberMesh agent: probes its region's targets and reports to the server.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "agent")]
pub(crate) struct AgentArgs {
    /// server address (default localhost:6000)
    #[argh(option, default = "String::from(\"localhost:6000\")")]
    pub(crate) rpc_report_addr: String,
    /// probe round period (Go duration, 1s to 24h, default 15s)
    #[argh(option, default = "String::from(\"15s\")")]
    pub(crate) probe_interval: String,
    /// target pool refresh period (1s to 24h, default 1m)
    #[argh(option, default = "String::from(\"1m\")")]
    pub(crate) sync_interval: String,
    /// most ICMP probes running at once (default 16384); later ones wait, or are skipped
    #[argh(option, default = "InFlightLimits::DEFAULT_ICMP")]
    pub(crate) probe_icmp_max_in_flight: usize,
    /// most HTTP probes running at once (default 256); later ones wait, or are skipped
    #[argh(option, default = "InFlightLimits::DEFAULT_HTTP")]
    pub(crate) probe_http_max_in_flight: usize,
    /// region; else env PROBER_REGION, cloud metadata, cn-shanghai
    #[argh(option, default = "String::new()")]
    pub(crate) region: String,
    /// intranet (address routing to the server, default) or public (as the server sees it)
    #[argh(option, default = "String::from(\"intranet\")")]
    pub(crate) icmp_network_type: String,
    /// the IP to report, overriding detection
    #[argh(option)]
    pub(crate) ip: Option<String>,
    /// enable self-upgrade
    #[argh(switch)]
    pub(crate) upgrade: bool,
    /// accepted for the Go command line: offers are pushed over the link (1s to 24h)
    #[argh(option, default = "String::from(\"1m\")")]
    pub(crate) upgrade_interval: String,
    /// release public key file: only binaries it signed are installed (needs --upgrade)
    #[argh(option)]
    pub(crate) upgrade_pubkey: Option<PathBuf>,
    /// after an upgrade: exec (default, same pid) or exit (a supervisor restarts it)
    #[argh(option, default = "String::from(\"exec\")")]
    pub(crate) upgrade_restart: String,
    /// rounds whose results must be acknowledged before a new version commits (default 3)
    #[argh(option, default = "3")]
    pub(crate) upgrade_probation: u32,
    /// a new version not committed within this is rolled back (Go duration, default 3m)
    #[argh(option, default = "String::from(\"3m\")")]
    pub(crate) upgrade_deadline: String,
    /// refuse the path traces the server asks for (they run by default; -agent.trace=false)
    #[argh(switch)]
    pub(crate) trace_off: bool,
    /// run the tasks the server sends (off by default: every task is refused)
    #[argh(switch)]
    pub(crate) task: bool,
    /// run tasks through /bin/sh -c, any command (the Go behaviour; warns at every start)
    #[argh(switch)]
    pub(crate) task_shell: bool,
    /// programs tasks may run, comma-separated (default mtr,traceroute,tracepath,ping,dig,curl)
    #[argh(option)]
    pub(crate) task_allow: Option<String>,
    /// file holding the ed25519 task public key: only tasks it signed run
    #[argh(option)]
    pub(crate) task_pubkey: Option<PathBuf>,
    /// longest a task may run on this agent (Go duration, default 30s)
    #[argh(option, default = "String::from(\"30s\")")]
    pub(crate) task_timeout: String,
    /// CA certificate (PEM) that signed the server's certificate
    #[argh(option)]
    pub(crate) tls_ca_file: Option<PathBuf>,
    /// pinned SHA-256 fingerprint of the server certificate (hex, colons optional)
    #[argh(option)]
    pub(crate) tls_server_fingerprint: Option<String>,
    /// do not verify the server (labs only; warns at every start)
    #[argh(switch)]
    pub(crate) tls_insecure: bool,
    /// file holding the shared token (else env PROBERMESH_TOKEN)
    #[argh(option)]
    pub(crate) auth_token_file: Option<PathBuf>,
    /// log directory for daily files; empty (default) logs to stderr only
    #[argh(option, default = "String::new()")]
    pub(crate) log_dir: String,
    /// log level: 0 panic, 1 fatal, 2 error, 3 warn (default), 4 info, 5 debug, 6 trace
    #[argh(option, default = "3")]
    pub(crate) log_level: u8,
}

/// Validated server durations and choices.
#[derive(Clone, Debug)]
pub(crate) struct ServerChoices {
    pub(crate) window: Duration,
    pub(crate) method: AggregationMethod,
    pub(crate) discovery: Discovery,
    /// Remote tasks (`-server.task.*`), used when `-server.task` is on.
    pub(crate) tasks: TaskSettings,
    /// Path tracing (`-server.trace.*`); `None` with `-server.trace=false`.
    pub(crate) traces: Option<(TriggerConfig, StoreLimits)>,
}

/// How an agent takes upgrades (`-agent.upgrade.*`), when `-agent.upgrade` is on.
#[derive(Clone, Debug)]
pub(crate) struct AgentUpgradeChoices {
    /// Exit for a supervisor rather than exec the new version.
    pub(crate) exit_for_supervisor: bool,
    /// Acknowledged rounds a new version needs.
    pub(crate) probation_rounds: u32,
    /// A new version not committed within this is rolled back.
    pub(crate) deadline: Duration,
}

impl ServerArgs {
    /// Checks the options that have a fixed vocabulary or range.
    pub(crate) fn choices(&self) -> Result<ServerChoices> {
        let window = go_duration::parse(
            "server.aggregation.interval",
            &self.aggregation_interval,
            MIN_PROBE_INTERVAL,
            MAX_PROBE_INTERVAL,
        )?;
        let method = match self.aggregation_method.as_str() {
            "robust" => AggregationMethod::Robust,
            "mean" => AggregationMethod::Mean,
            other => bail!(
                "invalid value {other:?} for flag -server.aggregation.method: use robust or mean"
            ),
        };
        let discovery = match self.icmp_discovery.as_str() {
            "dynamic" => Discovery::Dynamic,
            "static" => Discovery::Static,
            other => bail!(
                "invalid value {other:?} for flag -server.icmp.discovery: use static or dynamic"
            ),
        };
        if discovery == Discovery::Static && self.probe_file.is_none() {
            bail!("-server.icmp.discovery=static needs -server.probe.file");
        }
        if self.series_cache_ratio == 0 {
            bail!("invalid value 0 for flag -server.series.cache.ratio: at least 1");
        }
        if self.log_level > 6 {
            bail!(
                "invalid value {} for flag -log.level: 0..=6",
                self.log_level
            );
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            bail!("-server.tls.cert-file and -server.tls.key-file go together");
        }
        let defaults = TaskSettings::default();
        let second = Duration::from_secs(1);
        let tasks = TaskSettings {
            lifetime: go_duration::parse(
                "server.task.lifetime",
                &self.task_lifetime,
                second,
                defaults.max_lifetime,
            )?,
            timeout: go_duration::parse(
                "server.task.timeout",
                &self.task_timeout,
                second,
                Duration::from_secs(3600),
            )?,
            retention: go_duration::parse(
                "server.task.retention",
                &self.task_retention,
                Duration::from_secs(60),
                Duration::from_secs(3650 * 24 * 3600),
            )?,
            max_agents: self.task_max_agents,
            ..defaults
        };
        if self.task_max_agents == 0 {
            bail!("invalid value 0 for flag -server.task.max-agents: at least 1");
        }
        Ok(ServerChoices {
            window,
            method,
            discovery,
            tasks,
            traces: if self.trace_off {
                None
            } else {
                Some(self.trace_choices()?)
            },
        })
    }

    /// The `-server.trace.*` settings, each checked here so the error names its flag.
    fn trace_choices(&self) -> Result<(TriggerConfig, StoreLimits)> {
        let ratio_ok = |r: f64| r.is_finite() && r > 0.0 && r <= 1.0;
        if !ratio_ok(self.trace_loss_enter) {
            bail!(
                "invalid value {} for flag -server.trace.loss-enter: a loss ratio above 0 and at most 1",
                self.trace_loss_enter
            );
        }
        if !ratio_ok(self.trace_loss_leave) || self.trace_loss_leave > self.trace_loss_enter {
            bail!(
                "invalid value {} for flag -server.trace.loss-leave: a loss ratio above 0 and at most -server.trace.loss-enter ({})",
                self.trace_loss_leave,
                self.trace_loss_enter
            );
        }
        for (flag, windows) in [
            ("server.trace.windows", self.trace_windows),
            ("server.trace.clear-windows", self.trace_clear_windows),
        ] {
            if !(1..=1000).contains(&windows) {
                bail!("invalid value {windows} for flag -{flag}: 1 to 1000 windows");
            }
        }
        if self.trace_rounds == 0 || self.trace_rounds > MAX_TRACE_ROUNDS {
            bail!(
                "invalid value {} for flag -server.trace.rounds: 1 to {MAX_TRACE_ROUNDS}",
                self.trace_rounds
            );
        }
        if self.trace_max_hops == 0 || self.trace_max_hops > MAX_TRACE_TTL {
            bail!(
                "invalid value {} for flag -server.trace.max-hops: 1 to {MAX_TRACE_TTL}",
                self.trace_max_hops
            );
        }
        for (flag, value) in [
            ("server.trace.store.per-pair", self.trace_store_per_pair),
            (
                "server.trace.store.max-records",
                self.trace_store_max_records,
            ),
            ("server.trace.store.max-bytes", self.trace_store_max_bytes),
        ] {
            if value == 0 {
                bail!("invalid value 0 for flag -{flag}: at least 1");
            }
        }
        let defaults = TriggerConfig::default();
        let config = TriggerConfig {
            loss_ratio: Thresholds {
                trigger: self.trace_loss_enter,
                clear: self.trace_loss_leave,
            },
            windows_to_trigger: self.trace_windows,
            windows_to_clear: self.trace_clear_windows,
            cooldown: go_duration::parse(
                "server.trace.cooldown",
                &self.trace_cooldown,
                Duration::ZERO,
                Duration::from_secs(7 * 24 * 3600),
            )?,
            budget_per_hour: self.trace_budget,
            trace_timeout: go_duration::parse(
                "server.trace.timeout",
                &self.trace_timeout,
                Duration::from_secs(1),
                Duration::from_secs(3600),
            )?,
            shape: TraceShape {
                rounds: self.trace_rounds,
                max_hops: self.trace_max_hops,
                ..defaults.shape
            },
            ..defaults
        };
        let limits = StoreLimits {
            per_pair: self.trace_store_per_pair,
            max_records: self.trace_store_max_records,
            max_bytes: self.trace_store_max_bytes,
        };
        Ok((config, limits))
    }
}

/// Validated agent durations.
#[derive(Clone, Debug)]
pub(crate) struct AgentChoices {
    pub(crate) probe_interval: Duration,
    pub(crate) sync_interval: Duration,
    pub(crate) in_flight_limits: InFlightLimits,
    /// How tasks run, without the pinned key (read by the agent at start); `None` without
    /// `-agent.task`.
    pub(crate) tasks: Option<TaskPolicy>,
    /// How upgrades are taken; `None` without `-agent.upgrade`.
    pub(crate) upgrade: Option<AgentUpgradeChoices>,
}

impl AgentArgs {
    /// Checks the options that have a fixed vocabulary or range.
    pub(crate) fn choices(&self) -> Result<AgentChoices> {
        let (min, max) = (MIN_PROBE_INTERVAL, MAX_PROBE_INTERVAL);
        let probe_interval =
            go_duration::parse("agent.probe.interval", &self.probe_interval, min, max)?;
        let sync_interval =
            go_duration::parse("agent.sync.interval", &self.sync_interval, min, max)?;
        go_duration::parse("agent.upgrade.interval", &self.upgrade_interval, min, max)?;
        let exit_for_supervisor = match self.upgrade_restart.as_str() {
            "exec" => false,
            "exit" => true,
            other => {
                bail!("invalid value {other:?} for flag -agent.upgrade.restart: use exec or exit")
            }
        };
        // At most 4m: the server gives an agent 5 minutes (RolloutSettings::restart_timeout)
        // from its restart to its report of the commit, which comes after the probation, the
        // trial's stop and the restart into the new binary.
        let deadline = go_duration::parse(
            "agent.upgrade.deadline",
            &self.upgrade_deadline,
            Duration::from_secs(10),
            Duration::from_secs(240),
        )?;
        if !(1..=100).contains(&self.upgrade_probation) {
            bail!(
                "invalid value {} for flag -agent.upgrade.probation: 1 to 100 rounds",
                self.upgrade_probation
            );
        }
        if !self.upgrade && self.upgrade_pubkey.is_some() {
            bail!("-agent.upgrade.pubkey needs -agent.upgrade (without it nothing is installed)");
        }
        let upgrade = self.upgrade.then_some(AgentUpgradeChoices {
            exit_for_supervisor,
            probation_rounds: self.upgrade_probation,
            deadline,
        });
        if self.log_level > 6 {
            bail!(
                "invalid value {} for flag -log.level: 0..=6",
                self.log_level
            );
        }
        let pins = usize::from(self.tls_ca_file.is_some())
            + usize::from(self.tls_server_fingerprint.is_some())
            + usize::from(self.tls_insecure);
        if pins == 0 {
            bail!(
                "the agent must verify the server: give -agent.tls.ca-file, \
                 -agent.tls.server-fingerprint (printed by the server at start), or, in a lab \
                 only, -agent.tls.insecure"
            );
        }
        if pins > 1 {
            bail!(
                "give only one of -agent.tls.ca-file, -agent.tls.server-fingerprint and \
                 -agent.tls.insecure"
            );
        }
        if !self.rpc_report_addr.contains(':') {
            bail!(
                "invalid value {:?} for flag -agent.rpc.report.addr: expected host:port",
                self.rpc_report_addr
            );
        }
        for (flag, limit) in [
            (
                "agent.probe.icmp-max-in-flight",
                self.probe_icmp_max_in_flight,
            ),
            (
                "agent.probe.http-max-in-flight",
                self.probe_http_max_in_flight,
            ),
        ] {
            if limit == 0 {
                bail!("invalid value 0 for flag -{flag}: at least 1");
            }
        }
        let task_timeout = go_duration::parse(
            "agent.task.timeout",
            &self.task_timeout,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )?;
        if !self.task
            && (self.task_shell || self.task_allow.is_some() || self.task_pubkey.is_some())
        {
            bail!(
                "-agent.task.shell, -agent.task.allow and -agent.task.pubkey need -agent.task \
                 (without it the agent runs no task at all)"
            );
        }
        let tasks = self.task.then(|| {
            let mut command = CommandPolicy {
                shell: self.task_shell,
                ..CommandPolicy::default()
            };
            if let Some(list) = &self.task_allow {
                command.allowed = list
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
            TaskPolicy {
                command,
                max_timeout: task_timeout,
                ..TaskPolicy::default()
            }
        });
        if let Some(policy) = &tasks
            && policy.command.allowed.is_empty()
            && !policy.command.shell
        {
            bail!("invalid value for flag -agent.task.allow: no program named");
        }
        Ok(AgentChoices {
            probe_interval,
            sync_interval,
            tasks,
            upgrade,
            in_flight_limits: InFlightLimits {
                icmp: self.probe_icmp_max_in_flight,
                http: self.probe_http_max_in_flight,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(words: &[&str]) -> ServerArgs {
        ServerArgs::from_args(&["server"], words).expect("parses")
    }

    #[test]
    fn tracing_is_on_by_default_with_the_cores_defaults() {
        let choices = server(&[]).choices().unwrap();
        let (config, limits) = choices.traces.expect("on by default");
        assert_eq!(config, TriggerConfig::default());
        assert_eq!(limits, StoreLimits::default());
        assert!(server(&["--trace-off"]).choices().unwrap().traces.is_none());
    }

    #[test]
    fn trace_flags_reach_the_settings() {
        let choices = server(&[
            "--trace-loss-enter",
            "0.2",
            "--trace-loss-leave",
            "0.1",
            "--trace-windows",
            "5",
            "--trace-clear-windows",
            "4",
            "--trace-cooldown",
            "1m30s",
            "--trace-budget",
            "0",
            "--trace-timeout",
            "45s",
            "--trace-rounds",
            "10",
            "--trace-max-hops",
            "16",
            "--trace-store-per-pair",
            "3",
            "--trace-store-max-records",
            "50",
            "--trace-store-max-bytes",
            "65536",
        ])
        .choices()
        .unwrap();
        let (config, limits) = choices.traces.unwrap();
        assert_eq!(config.loss_ratio.trigger, 0.2);
        assert_eq!(config.loss_ratio.clear, 0.1);
        assert_eq!((config.windows_to_trigger, config.windows_to_clear), (5, 4));
        assert_eq!(config.cooldown, Duration::from_secs(90));
        assert_eq!(config.budget_per_hour, 0);
        assert_eq!(config.trace_timeout, Duration::from_secs(45));
        assert_eq!((config.shape.rounds, config.shape.max_hops), (10, 16));
        assert_eq!(
            limits,
            StoreLimits {
                per_pair: 3,
                max_records: 50,
                max_bytes: 65536
            }
        );
        // Whatever the flags allow, the desk takes.
        assert!(
            probermesh_core::trace::trigger::TraceDesk::new(
                config,
                probermesh_core::model::UnixMillis(0)
            )
            .is_ok()
        );
    }

    #[test]
    fn bad_trace_flags_are_refused_naming_the_flag() {
        for (words, flag) in [
            (vec!["--trace-loss-enter", "0"], "-server.trace.loss-enter"),
            (
                vec!["--trace-loss-enter", "1.5"],
                "-server.trace.loss-enter",
            ),
            (
                vec!["--trace-loss-enter", "NaN"],
                "-server.trace.loss-enter",
            ),
            (
                vec!["--trace-loss-leave", "0.5"],
                "-server.trace.loss-leave",
            ),
            (vec!["--trace-windows", "0"], "-server.trace.windows"),
            (
                vec!["--trace-clear-windows", "0"],
                "-server.trace.clear-windows",
            ),
            (vec!["--trace-cooldown", "soon"], "-server.trace.cooldown"),
            (vec!["--trace-timeout", "0s"], "-server.trace.timeout"),
            (vec!["--trace-rounds", "0"], "-server.trace.rounds"),
            (vec!["--trace-rounds", "1001"], "-server.trace.rounds"),
            (vec!["--trace-max-hops", "65"], "-server.trace.max-hops"),
            (
                vec!["--trace-store-per-pair", "0"],
                "-server.trace.store.per-pair",
            ),
            (
                vec!["--trace-store-max-records", "0"],
                "-server.trace.store.max-records",
            ),
            (
                vec!["--trace-store-max-bytes", "0"],
                "-server.trace.store.max-bytes",
            ),
        ] {
            let error = server(&words).choices().unwrap_err().to_string();
            assert!(error.contains(flag), "{words:?}: {error}");
        }
        // Off, the trace flags are not read.
        assert!(
            server(&["--trace-off", "--trace-windows", "0"])
                .choices()
                .is_ok()
        );
    }
}
