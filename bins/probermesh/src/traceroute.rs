//! `probermesh traceroute`: the agent's ICMP path tracer on the command line, for operators
//! (which path does this host take to that one, and where does it lose packets) and for the
//! lab test that compares it with mtr. Prints an `mtr -r` table (core's
//! `trace::hops::render_table`).

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use argh::FromArgs;
use probermesh_adapters::icmp::{IcmpTracer, IcmpTracerConfig, SocketMode, local_host_name};
use probermesh_core::link::{TraceProtocol, TraceRequest};
use probermesh_core::ports::PathTracer;
use probermesh_core::trace::hops::render_table;

use crate::print_line;

/// Trace the path to an address with Paris-style ICMP echo requests of rising TTL and print
/// an mtr-like report: per hop, who answered, loss, probes sent and RTT avg/best/worst/stddev.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "traceroute")]
pub(crate) struct Traceroute {
    /// rounds of probes (default 10)
    #[argh(option, default = "10")]
    rounds: u16,
    /// highest TTL tried (default 30)
    #[argh(option, default = "30")]
    max_hops: u8,
    /// milliseconds between two rounds (default 1000)
    #[argh(option, default = "1000")]
    interval: u64,
    /// milliseconds to wait for each probe's answer (default 2000)
    #[argh(option, default = "2000")]
    reply_timeout: u64,
    /// socket: auto (raw, else datagram), raw or datagram (default auto)
    #[argh(option, default = "String::from(\"auto\")")]
    socket: String,
    /// the target: an IP address
    #[argh(positional)]
    target: String,
}

pub(crate) fn run(args: &Traceroute) -> Result<()> {
    let socket_mode = match args.socket.as_str() {
        "auto" => SocketMode::Auto,
        "raw" => SocketMode::Raw,
        "datagram" => SocketMode::Datagram,
        other => bail!("traceroute: --socket {other:?} is not one of auto, raw, datagram"),
    };
    let target: IpAddr = args
        .target
        .parse()
        .with_context(|| format!("traceroute: target {:?} is not an IP address", args.target))?;
    let tracer = IcmpTracer::new(IcmpTracerConfig {
        socket_mode,
        round_interval: Duration::from_millis(args.interval),
        reply_timeout: Duration::from_millis(args.reply_timeout),
        ..IcmpTracerConfig::default()
    });
    let request = TraceRequest {
        id: 1,
        target,
        protocol: TraceProtocol::Icmp,
        max_hops: args.max_hops,
        rounds: args.rounds,
    };
    tracer.check(&request).context("traceroute")?;
    let report = crate::block_on(Some(1), async { Ok(tracer.trace(&request).await) })?;
    if !report.hops.is_empty() {
        print_line(render_table(&local_host_name(), &report).trim_end())?;
    }
    if let Some(error) = &report.error {
        bail!("traceroute to {target}: {error}");
    }
    if report.hops.last().and_then(|h| h.addr) != Some(target) {
        bail!(
            "traceroute: {target} did not answer (not reachable within {} hops)",
            args.max_hops
        );
    }
    Ok(())
}
