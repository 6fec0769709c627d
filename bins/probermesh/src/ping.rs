//! `probermesh ping`: the agent's ICMP engine on the command line, fping-style. For operators
//! (is this target reachable from here, with which RTT) and for the lab tests and the fping
//! benchmark, which read its `--json` lines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use argh::FromArgs;
use probermesh_adapters::dns::HickoryDns;
use probermesh_adapters::icmp::{IcmpEngine, IcmpEngineConfig, SocketMode};
use probermesh_core::model::{Host, IcmpModule, IcmpSettings};
use probermesh_core::ports::DnsResolver;
use probermesh_core::probe::{IcmpEchoes, icmp_echoes};
use probermesh_core::stats::RttSummary;
use serde::Serialize;

use crate::print_line;

/// Ping targets with the ProberMesh ICMP engine (one socket for all targets) and print, per
/// target, packets sent and received, loss and RTT min/avg/max/stddev.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "ping")]
pub(crate) struct Ping {
    /// echo requests per target (default 5)
    #[argh(option, short = 'c', default = "5")]
    count: u32,
    /// milliseconds between two requests to one target (default 1000)
    #[argh(option, short = 'i', default = "1000")]
    interval_ms: u64,
    /// payload bytes (default 56, as ping)
    #[argh(option, short = 's', default = "56")]
    size: u32,
    /// milliseconds to wait for each reply (default 2000)
    #[argh(option, short = 'W', default = "2000")]
    reply_timeout_ms: u64,
    /// seconds a whole probe may take (default: enough for every packet plus the reply timeout)
    #[argh(option)]
    timeout_s: Option<f64>,
    /// time to live (default 64)
    #[argh(option, default = "64")]
    ttl: u8,
    /// most requests per second over all targets (default 50000)
    #[argh(option, default = "50000")]
    max_pps: u32,
    /// socket: auto (raw, else datagram), raw or datagram (default auto)
    #[argh(option, default = "String::from(\"auto\")")]
    socket: String,
    /// resolve names with this DNS server (ip:port) instead of /etc/resolv.conf
    #[argh(option)]
    dns_server: Option<SocketAddr>,
    /// print one JSON object per target, with every RTT in nanoseconds
    #[argh(switch)]
    json: bool,
    /// targets: IP addresses or host names
    #[argh(positional)]
    targets: Vec<String>,
}

/// One target's line of `--json` output.
#[derive(Debug, Serialize)]
struct JsonLine<'a> {
    target: &'a str,
    addr: Option<String>,
    resolve_ns: u128,
    sent: u32,
    received: usize,
    loss_percent: Option<f64>,
    rtts_ns: Vec<u128>,
    errors: Vec<String>,
    failure: Option<String>,
}

pub(crate) fn run(args: &Ping) -> Result<()> {
    if args.targets.is_empty() {
        bail!("ping: name at least one target");
    }
    if args.count == 0 || args.count > IcmpModule::MAX_PACKET_COUNT {
        bail!(
            "ping: -c {} is out of range 1..={}",
            args.count,
            IcmpModule::MAX_PACKET_COUNT
        );
    }
    if !(IcmpModule::MIN_PAYLOAD_SIZE..=IcmpModule::MAX_PAYLOAD_SIZE).contains(&args.size) {
        bail!(
            "ping: -s {} is out of range {}..={}",
            args.size,
            IcmpModule::MIN_PAYLOAD_SIZE,
            IcmpModule::MAX_PAYLOAD_SIZE
        );
    }
    let socket_mode = match args.socket.as_str() {
        "auto" => SocketMode::Auto,
        "raw" => SocketMode::Raw,
        "datagram" => SocketMode::Datagram,
        other => bail!("ping: --socket {other:?} is not one of auto, raw, datagram"),
    };
    let hosts = args
        .targets
        .iter()
        .map(|t| Host::parse(t).with_context(|| format!("ping: target {t:?}")))
        .collect::<Result<Vec<_>>>()?;
    let interval = Duration::from_millis(args.interval_ms);
    let reply_timeout = Duration::from_millis(args.reply_timeout_ms);
    let timeout = match args.timeout_s {
        Some(seconds) if seconds.is_finite() && seconds > 0.0 => Duration::from_secs_f64(seconds),
        Some(seconds) => bail!("ping: --timeout-s {seconds} must be a positive number"),
        None => interval.saturating_mul(args.count) + reply_timeout,
    };
    let settings = IcmpSettings {
        module: IcmpModule {
            packet_count: args.count,
            interval,
            payload_size: args.size,
        },
        ttl: args.ttl,
        timeout,
    };
    let engine = Arc::new(IcmpEngine::new(IcmpEngineConfig {
        socket_mode,
        reply_timeout,
        max_packets_per_second: args.max_pps,
        ..IcmpEngineConfig::default()
    }));
    // Two workers are plenty for a one-shot command.
    let results = crate::block_on(Some(2), async {
        let dns: Arc<dyn DnsResolver> = Arc::new(match args.dns_server {
            Some(server) => HickoryDns::with_name_servers(&[server], Duration::from_secs(2))?,
            None => HickoryDns::from_system_conf()?,
        });
        let mut tasks = Vec::with_capacity(hosts.len());
        for host in hosts {
            let (engine, dns) = (Arc::clone(&engine), Arc::clone(&dns));
            tasks.push(tokio::spawn(async move {
                icmp_echoes(dns.as_ref(), engine.as_ref(), &host, &settings).await
            }));
        }
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(task.await.context("a probe task failed")?);
        }
        anyhow::Ok(results)
    })?;
    let mut any_failed = false;
    for (target, echoes) in args.targets.iter().zip(&results) {
        any_failed |= echoes.outcome.is_err();
        let line = if args.json {
            serde_json::to_string(&json_line(target, echoes)).context("encoding JSON")?
        } else {
            text_line(target, echoes)
        };
        print_line(&line)?;
    }
    if any_failed {
        bail!("ping: some targets could not be probed (see above)");
    }
    Ok(())
}

fn json_line<'a>(target: &'a str, echoes: &IcmpEchoes) -> JsonLine<'a> {
    let result = echoes.to_result();
    let (rtts_ns, errors, failure) = match &echoes.outcome {
        Ok(series) => (
            series.rtts.iter().map(Duration::as_nanos).collect(),
            series.errors.iter().map(ToString::to_string).collect(),
            None,
        ),
        Err(failure) => (Vec::new(), Vec::new(), Some(failure.to_string())),
    };
    JsonLine {
        target,
        addr: echoes.addr.map(|a| a.to_string()),
        resolve_ns: echoes.resolve.as_nanos(),
        sent: result.packets_sent,
        received: rtts_ns.len(),
        loss_percent: result.loss_percent(),
        rtts_ns,
        errors,
        failure,
    }
}

fn text_line(target: &str, echoes: &IcmpEchoes) -> String {
    let series = match &echoes.outcome {
        Ok(series) => series,
        Err(failure) => return format!("{target} : {failure}"),
    };
    let received = series.rtts.len();
    let loss = echoes.to_result().loss_percent().unwrap_or(100.0);
    let mut line = format!(
        "{target} : xmt/rcv/%loss = {}/{received}/{loss:.0}%",
        series.packets_sent
    );
    if let Some(summary) = RttSummary::from_rtts(&series.rtts) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        line.push_str(&format!(
            ", min/avg/max/mdev = {:.3}/{:.3}/{:.3}/{:.3} ms",
            ms(summary.min),
            ms(summary.mean),
            ms(summary.max),
            ms(summary.stddev)
        ));
    }
    if let Some(first) = series.errors.first() {
        line.push_str(&format!(
            ", {} ICMP errors (first: {first})",
            series.errors.len()
        ));
    }
    line
}
