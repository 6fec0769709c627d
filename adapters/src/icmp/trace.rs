//! The ICMP path tracer: core's [`PathTracer`] port over an ICMP socket of its own per trace
//! (issue 17). It exists because no library did what the mesh needs (trippy-core was
//! evaluated and rejected: no Paris-style ICMP, no unprivileged datagram sockets, a polling
//! loop), and because a trace must never disturb the ping engine's shared sockets.
//!
//! How a trace runs:
//! - one socket per trace, raw or datagram per the tracer's [`SocketMode`]
//!   ([`IcmpSocket::open_for_trace`]);
//! - `rounds` rounds, [`IcmpTracerConfig::round_interval`] apart; each sends TTL 1 up to
//!   `max_hops`, or up to the destination's TTL once the destination answered in an earlier
//!   round; the TTL is set by `setsockopt` (`IP_TTL` / `IPV6_UNICAST_HOPS`) before each send;
//! - Paris-style: every probe of a trace has one identifier (raw sockets; a datagram socket's
//!   kernel sets its own, also constant) and one ICMP checksum, kept by a compensating payload
//!   word ([`packet::build_paris_echo_request`]), so per-flow ECMP hashing keeps one path; the
//!   sequence number encodes (round, TTL) ([`sequence_of`]);
//! - raw sockets match a Time Exceeded or Destination Unreachable quoting our identifier and
//!   sequence toward the target, and the target's echo reply; datagram sockets get echo
//!   replies on the normal queue and routers' errors on the error queue (`IP_RECVERR`), with
//!   the router in `SO_EE_OFFENDER`;
//! - a probe is lost after [`IcmpTracerConfig::reply_timeout`]; round trips use the kernel's
//!   receive stamp (`SO_TIMESTAMPNS`) as the ping engine does;
//! - a trace whose `(rounds − 1) × interval + reply_timeout` exceeds
//!   [`IcmpTracerConfig::max_duration`] (default 120 s) is refused, not clipped: the report
//!   says so and has no hops.
//!
//! Grouping the probes into hops is core's ([`probermesh_core::trace::hops::summarize`]).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use probermesh_core::link::{TraceProtocol, TraceReport, TraceRequest};
use probermesh_core::ports::PathTracer;
use probermesh_core::trace::hops::{Answer, ProbeOutcome, destination_ttl, summarize};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::packet::{self, Family, Incoming, PayloadTag};
use super::socket::{
    IcmpSocket, OpenError, SocketKind, SocketMode, control_buffer, error_control_buffer,
};

/// Datagrams read from one queue of the socket per wake-up before the trace's round and
/// deadline checks run again.
const MAX_READS_PER_WAKE: usize = 64;

/// Payload bytes of each probe (as ping's default).
const PAYLOAD_LEN: usize = 56;

/// The tracer's settings.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct IcmpTracerConfig {
    /// Raw, datagram, or raw-then-datagram.
    pub socket_mode: SocketMode,
    /// Time between the starts of two rounds (default 1 s).
    pub round_interval: Duration,
    /// How long a probe may wait for its answer (default 2 s).
    pub reply_timeout: Duration,
    /// The longest a trace may take; longer requests are refused (default 120 s).
    pub max_duration: Duration,
}

impl Default for IcmpTracerConfig {
    fn default() -> Self {
        Self {
            socket_mode: SocketMode::Auto,
            round_interval: Duration::from_secs(1),
            reply_timeout: Duration::from_secs(2),
            max_duration: Duration::from_secs(120),
        }
    }
}

/// Why a trace stopped short (its text goes into [`TraceReport::error`]).
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Only ICMP is built.
    #[error("protocol {0} is not supported")]
    Protocol(&'static str),
    /// Nothing to do.
    #[error("a trace needs at least one round and one hop (rounds {rounds}, max hops {max_hops})")]
    Empty {
        /// Requested rounds.
        rounds: u16,
        /// Requested hops.
        max_hops: u8,
    },
    /// Too many rounds for the sequence number's round byte.
    #[error("a trace runs at most 256 rounds, {0} were asked")]
    TooManyRounds(u16),
    /// The request would run too long.
    #[error(
        "a trace of {rounds} rounds {interval:?} apart takes {needed:?}, more than the \
         tracer's limit of {limit:?} (max_duration); ask for fewer rounds"
    )]
    TooLong {
        /// Requested rounds.
        rounds: u16,
        /// The round interval.
        interval: Duration,
        /// What the request needs.
        needed: Duration,
        /// The limit.
        limit: Duration,
    },
    /// No socket.
    #[error("opening the trace socket: {0}")]
    Open(#[from] OpenError),
    /// A socket option failed.
    #[error("setting TTL {ttl} on the trace socket: {source}")]
    SetTtl {
        /// The TTL.
        ttl: u8,
        /// Why.
        source: io::Error,
    },
    /// A send failed.
    #[error("sending the probe with TTL {ttl} to {target}: {source}")]
    Send {
        /// The TTL.
        ttl: u8,
        /// The target.
        target: IpAddr,
        /// Why.
        source: io::Error,
    },
    /// Receiving failed.
    #[error("receiving on the trace socket: {0}")]
    Receive(io::Error),
    /// Registering with tokio failed.
    #[error("registering the trace socket with the runtime: {0}")]
    Register(io::Error),
}

/// The ICMP [`PathTracer`]: one socket per trace, Paris-style probes (see the module
/// documentation).
#[derive(Debug, Clone)]
pub struct IcmpTracer {
    config: IcmpTracerConfig,
}

impl IcmpTracer {
    /// A tracer with `config`; nothing is opened until a trace runs.
    #[must_use]
    pub fn new(config: IcmpTracerConfig) -> Self {
        Self { config }
    }

    /// Its settings.
    #[must_use]
    pub fn config(&self) -> IcmpTracerConfig {
        self.config
    }

    /// Checks a request against the limits (protocol, rounds, duration).
    ///
    /// # Errors
    /// The [`TraceError`] a report of this request would carry.
    pub fn check(&self, request: &TraceRequest) -> Result<(), TraceError> {
        match request.protocol {
            TraceProtocol::Icmp => {}
            TraceProtocol::Udp => return Err(TraceError::Protocol("udp")),
            TraceProtocol::Tcp => return Err(TraceError::Protocol("tcp")),
        }
        if request.rounds == 0 || request.max_hops == 0 {
            return Err(TraceError::Empty {
                rounds: request.rounds,
                max_hops: request.max_hops,
            });
        }
        if request.rounds > 256 {
            return Err(TraceError::TooManyRounds(request.rounds));
        }
        let needed = self
            .config
            .round_interval
            .saturating_mul(u32::from(request.rounds - 1))
            .saturating_add(self.config.reply_timeout);
        if needed > self.config.max_duration {
            return Err(TraceError::TooLong {
                rounds: request.rounds,
                interval: self.config.round_interval,
                needed,
                limit: self.config.max_duration,
            });
        }
        Ok(())
    }

    async fn run(
        &self,
        request: &TraceRequest,
        probes: &mut Vec<ProbeOutcome>,
    ) -> Result<(), TraceError> {
        self.check(request)?;
        let family = Family::of(request.target);
        let socket = IcmpSocket::open_for_trace(family, self.config.socket_mode)?;
        let kind = socket.kind();
        let has_ip_header = socket.has_ip_header();
        // The safe constructor is deprecated for `unsafe fn register_with_interest` (I/O
        // safety), which this crate cannot call (`unsafe_code` is forbidden). Its condition
        // holds: the socket owns its descriptor and always returns that one.
        #[expect(deprecated, reason = "the replacement is unsafe; see above")]
        let socket = AsyncFd::with_interest(socket, Interest::READABLE | Interest::ERROR)
            .map_err(TraceError::Register)?;
        let flow = Flow::random();
        let mut pending: HashMap<u16, Pending> = HashMap::new();
        let mut packet = Vec::with_capacity(ICMP_BUFFER);
        let mut buf = vec![0u8; ICMP_BUFFER];
        let mut control = control_buffer();
        let mut error_control = error_control_buffer();
        let start = Instant::now();
        let hard_deadline = start + self.config.max_duration;
        let mut round: u16 = 0;
        let mut next_round = start;
        loop {
            let now = Instant::now();
            if round < request.rounds && now >= next_round {
                let top = destination_ttl(request.target, probes)
                    .unwrap_or(request.max_hops)
                    .min(request.max_hops);
                for ttl in 1..=top {
                    let sequence = sequence_of(round, ttl);
                    flow.build(&mut packet, family, request.id, sequence);
                    socket
                        .get_ref()
                        .set_ttl(ttl)
                        .map_err(|source| TraceError::SetTtl { ttl, source })?;
                    let sent =
                        send(socket.get_ref(), &packet, request.target).map_err(|source| {
                            TraceError::Send {
                                ttl,
                                target: request.target,
                                source,
                            }
                        })?;
                    // A sequence of 256 rounds ago, if still waiting, stays lost (a round
                    // interval times 256 exceeds any sensible reply timeout).
                    pending.insert(
                        sequence,
                        Pending {
                            index: probes.len(),
                            sent,
                            deadline: sent + self.config.reply_timeout,
                        },
                    );
                    probes.push(ProbeOutcome {
                        round,
                        ttl,
                        answer: None,
                    });
                }
                round += 1;
                next_round = start + self.config.round_interval.saturating_mul(u32::from(round));
                continue;
            }
            pending.retain(|_, p| p.deadline > now);
            if (round >= request.rounds && pending.is_empty()) || now >= hard_deadline {
                return Ok(());
            }
            let mut wake = hard_deadline;
            if round < request.rounds {
                wake = wake.min(next_round);
            }
            if let Some(first) = pending.values().map(|p| p.deadline).min() {
                wake = wake.min(first);
            }
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {}
                ready = socket.ready(Interest::READABLE | Interest::ERROR) => {
                    let mut guard = ready.map_err(TraceError::Receive)?;
                    let context = Context {
                        target: request.target,
                        family,
                        kind,
                        has_ip_header,
                        flow: &flow,
                    };
                    // At most MAX_READS_PER_WAKE datagrams per queue, then back to the
                    // round and deadline checks: a flood of ICMP cannot hold the trace here.
                    let mut drained = false;
                    for _ in 0..MAX_READS_PER_WAKE {
                        match socket.get_ref().receive(&mut buf, &mut control) {
                            Ok(received) => {
                                let datagram = &buf[..received.len.min(buf.len())];
                                if let Some((sequence, from)) =
                                    context.match_datagram(datagram, received.from)
                                {
                                    answer(&mut pending, probes, sequence, from,
                                        received.kernel_time);
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                drained = true;
                                break;
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            // An ICMP error about an earlier probe, reported once as the
                            // socket's pending error (the message itself is delivered too:
                            // raw sockets get it, datagram ones queue it): consumed, go on.
                            Err(e) if is_reported_icmp_error(&e) => {}
                            Err(e) => return Err(TraceError::Receive(e)),
                        }
                    }
                    if kind == SocketKind::Datagram {
                        let mut errors_drained = false;
                        for _ in 0..MAX_READS_PER_WAKE {
                            match socket.get_ref().receive_error(&mut buf, &mut error_control) {
                                Ok(Some(queued)) => {
                                    let quoted = &buf[..queued.len.min(buf.len())];
                                    if let (Some(sequence), Some(from), true) = (
                                        context.match_queued(quoted),
                                        queued.offender,
                                        is_route_error(family, queued.icmp_type),
                                    ) {
                                        answer(&mut pending, probes, sequence, from,
                                            queued.kernel_time);
                                    }
                                }
                                Ok(None) => {}
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                    errors_drained = true;
                                    break;
                                }
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                Err(e) => return Err(TraceError::Receive(e)),
                            }
                        }
                        drained &= errors_drained;
                    }
                    // Readiness is cleared only once both queues are empty; otherwise the
                    // next wait returns at once and reading goes on after the checks.
                    if drained {
                        guard.clear_ready();
                    }
                }
            }
        }
    }
}

impl Default for IcmpTracer {
    fn default() -> Self {
        Self::new(IcmpTracerConfig::default())
    }
}

#[async_trait::async_trait]
impl PathTracer for IcmpTracer {
    async fn trace(&self, request: &TraceRequest) -> TraceReport {
        let mut probes = Vec::new();
        let outcome = self.run(request, &mut probes).await;
        if let Err(error) = &outcome {
            tracing::debug!(target = %request.target, %error, "trace stopped short");
        }
        TraceReport {
            id: request.id,
            target: request.target,
            hops: summarize(request.target, &probes),
            error: outcome.err().map(|e| e.to_string()),
        }
    }
}

/// This host's name (for a report's header), `localhost` when the kernel does not say.
#[must_use]
pub fn local_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Receive buffer size (an ICMP error quoting a full-size request fits).
const ICMP_BUFFER: usize = 64 * 1024;

/// Sends one probe, returning when it left.
///
/// The kernel also reports the last ICMP error about the socket's traffic as the socket's
/// pending error (datagram sockets with `IP_RECVERR`, raw sockets for the fatal codes of
/// Destination Unreachable), and the next send then fails with it without sending; the
/// message itself was delivered or queued, so such a send is retried. A lasting failure
/// (no route here) fails after a few attempts.
fn send(socket: &IcmpSocket, packet: &[u8], target: IpAddr) -> io::Result<Instant> {
    let mut attempts = 0;
    loop {
        let sent = Instant::now();
        match socket.send_to(packet, target) {
            Ok(_) => return Ok(sent),
            Err(e) if attempts < 4 && is_reported_icmp_error(&e) => {
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The errors an earlier ICMP error is reported as (linux `icmp_err_convert`).
fn is_reported_icmp_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::ConnectionRefused
    ) || matches!(
        error.raw_os_error(),
        // EPROTO, ENOPROTOOPT, EMSGSIZE, EACCES (prohibited), EOPNOTSUPP, EHOSTDOWN
        Some(71 | 92 | 90 | 13 | 95 | 112)
    )
}

/// A probe waiting for its answer.
#[derive(Clone, Copy, Debug)]
struct Pending {
    /// Its place in the trace's outcomes.
    index: usize,
    sent: Instant,
    deadline: Instant,
}

/// Records an answer to the pending probe `sequence`, if it is still waiting.
fn answer(
    pending: &mut HashMap<u16, Pending>,
    probes: &mut [ProbeOutcome],
    sequence: u16,
    from: IpAddr,
    kernel_time: Option<SystemTime>,
) {
    let Some(probe) = pending.remove(&sequence) else {
        return;
    };
    // The kernel stamped the packet; the time since then is our wakeup latency.
    let lag = kernel_time
        .and_then(|stamp| SystemTime::now().duration_since(stamp).ok())
        .unwrap_or_default();
    let rtt = probe.sent.elapsed().saturating_sub(lag);
    if let Some(outcome) = probes.get_mut(probe.index) {
        outcome.answer = Some(Answer { from, rtt });
    }
}

/// Whether an ICMP error type says something about the path: Time Exceeded (a router on it)
/// or Destination Unreachable (the last router, or the target).
fn is_route_error(family: Family, icmp_type: u8) -> bool {
    match family {
        Family::V4 => matches!(icmp_type, 3 | 11),
        Family::V6 => matches!(icmp_type, 1 | 3),
    }
}

/// The constant part of a trace's probes: identifier, checksum, payload token.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
struct Flow {
    identifier: u16,
    checksum: u16,
    token: u64,
}

impl Flow {
    fn random() -> Self {
        let mut random = [0u8; 12];
        // Without randomness the flow is still valid, only predictable.
        let _ = getrandom::fill(&mut random);
        let [t0, t1, t2, t3, t4, t5, t6, t7, i0, i1, c0, c1] = random;
        let checksum = u16::from_be_bytes([c0, c1]);
        Self {
            identifier: u16::from_be_bytes([i0, i1]),
            // No one's-complement sum gives 0xffff (see build_paris_echo_request).
            checksum: if checksum == 0xffff { 0x7fff } else { checksum },
            token: u64::from_be_bytes([t0, t1, t2, t3, t4, t5, t6, t7]),
        }
    }

    fn build(&self, out: &mut Vec<u8>, family: Family, trace_id: u64, sequence: u16) {
        let tag = PayloadTag {
            token: self.token,
            probe_id: trace_id,
            index: u32::from(sequence),
        };
        packet::build_paris_echo_request(
            out,
            family,
            self.identifier,
            sequence,
            tag,
            PAYLOAD_LEN,
            self.checksum,
        );
    }
}

/// The sequence number of the probe of `round` (0-based, modulo 256) with `ttl`.
#[must_use]
pub(crate) fn sequence_of(round: u16, ttl: u8) -> u16 {
    ((round % 256) << 8) | u16::from(ttl)
}

/// What a received datagram must match to answer one of our probes.
struct Context<'a> {
    target: IpAddr,
    family: Family,
    kind: SocketKind,
    has_ip_header: bool,
    flow: &'a Flow,
}

impl Context<'_> {
    /// The sequence a datagram from the normal queue answers, and who answered.
    fn match_datagram(&self, datagram: &[u8], from: IpAddr) -> Option<(u16, IpAddr)> {
        let raw = self.kind == SocketKind::Raw;
        match packet::classify(self.family, self.has_ip_header, datagram) {
            Incoming::Reply {
                identifier,
                sequence,
                tag,
            } => (tag.token == self.flow.token
                && (!raw || identifier == self.flow.identifier)
                && from == self.target)
                .then_some((sequence, from)),
            Incoming::Error {
                original_destination,
                identifier,
                sequence,
                tag,
                ..
            } => (original_destination == self.target
                && (!raw || identifier == self.flow.identifier)
                && tag.is_none_or(|t| t.token == self.flow.token))
            .then_some((sequence, from)),
            Incoming::Ignored => None,
        }
    }

    /// The sequence an error-queue message (our quoted request) is about.
    fn match_queued(&self, quoted: &[u8]) -> Option<u16> {
        let (_, sequence, tag) = packet::classify_queued_request(self.family, quoted)?;
        tag.is_none_or(|t| t.token == self.flow.token)
            .then_some(sequence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_probe_of_a_trace_has_one_identifier_and_one_checksum() {
        let flow = Flow::random();
        let mut packet = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for round in 0..20 {
            for ttl in 1..=30 {
                let sequence = sequence_of(round, ttl);
                flow.build(&mut packet, Family::V4, 77, sequence);
                assert_eq!(packet::internet_checksum(&packet), 0, "valid checksum");
                seen.insert((
                    u16::from_be_bytes([packet[2], packet[3]]),
                    u16::from_be_bytes([packet[4], packet[5]]),
                ));
                assert_eq!(u16::from_be_bytes([packet[6], packet[7]]), sequence);
            }
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            vec![(flow.checksum, flow.identifier)]
        );
    }

    #[test]
    fn the_sequence_encodes_round_and_ttl() {
        assert_eq!(sequence_of(0, 1), 1);
        assert_eq!(sequence_of(3, 30), 0x031e);
        assert_eq!(sequence_of(256, 2), 2);
    }

    fn request(protocol: TraceProtocol, rounds: u16) -> TraceRequest {
        TraceRequest {
            id: 1,
            target: "198.18.0.1".parse().expect("address"),
            protocol,
            max_hops: 30,
            rounds,
        }
    }

    #[tokio::test]
    async fn udp_and_tcp_are_refused_without_hops() {
        let tracer = IcmpTracer::default();
        let report = tracer.trace(&request(TraceProtocol::Udp, 3)).await;
        assert_eq!(
            report.error.as_deref(),
            Some("protocol udp is not supported")
        );
        assert!(report.hops.is_empty());
        let report = tracer.trace(&request(TraceProtocol::Tcp, 3)).await;
        assert_eq!(
            report.error.as_deref(),
            Some("protocol tcp is not supported")
        );
    }

    #[test]
    fn a_trace_longer_than_the_limit_is_refused() {
        let tracer = IcmpTracer::default();
        assert!(tracer.check(&request(TraceProtocol::Icmp, 119)).is_ok());
        let error = tracer
            .check(&request(TraceProtocol::Icmp, 200))
            .expect_err("too long");
        assert!(error.to_string().contains("max_duration"), "{error}");
        assert!(matches!(
            tracer.check(&request(TraceProtocol::Icmp, 0)),
            Err(TraceError::Empty { .. })
        ));
    }
}
