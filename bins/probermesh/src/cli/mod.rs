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
    /// upgrade poll period (1s to 24h, default 1m)
    #[argh(option, default = "String::from(\"1m\")")]
    pub(crate) upgrade_interval: String,
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
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServerChoices {
    pub(crate) window: Duration,
    pub(crate) method: AggregationMethod,
    pub(crate) discovery: Discovery,
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
        Ok(ServerChoices {
            window,
            method,
            discovery,
        })
    }
}

/// Validated agent durations.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AgentChoices {
    pub(crate) probe_interval: Duration,
    pub(crate) sync_interval: Duration,
    pub(crate) in_flight_limits: InFlightLimits,
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
        Ok(AgentChoices {
            probe_interval,
            sync_interval,
            in_flight_limits: InFlightLimits {
                icmp: self.probe_icmp_max_in_flight,
                http: self.probe_http_max_in_flight,
            },
        })
    }
}
