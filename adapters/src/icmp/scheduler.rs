//! The one thread of an ICMP socket: when each echo request leaves, reading what came back,
//! when each unanswered one is given up, and when a probe's time is over. It owns the socket's
//! in-flight table (`flight`), so nothing is locked per packet.
//!
//! Three queues, so each costs what it must:
//! - `sends`, a heap of the next packet of every running probe (one entry per probe);
//! - `expiries`, a FIFO: every packet is given up `reply_timeout` after it left, and packets
//!   leave in time order, so expiries come due in the order they were queued;
//! - `deadlines`, a heap with one entry per probe: at its timeout a probe stops sending and its
//!   outstanding packets are lost.
//!
//! **Batching.** A wake-up costs more than a packet, so the thread does as much as it can per
//! wake-up and wakes as seldom as the timing allows, within one `batch_window` (2 ms by
//! default):
//! - it sends every packet due within the window at once, with one `sendmmsg` (a packet leaves
//!   at most one window early, never late because of batching; at most half its probe's
//!   interval early, so one target's echoes stay apart). The send time of each packet is
//!   interpolated between the clock reads before and after the call, by its place in it;
//! - it reads every queued datagram with `recvmmsg`. Replies keep their kernel receive stamp
//!   (`SO_TIMESTAMPNS`), so reading them later does not change their RTT;
//! - expiries and deadlines wait for the next wake-up at least one window after the last;
//! - while busy (the last wake-up handled more than one packet), it sleeps out the rest of the
//!   window instead of waking for each reply; when not, it waits in `ppoll` on the socket and
//!   an eventfd that `ping` signals, so a lone reply or a new probe is handled at once.
//!
//! Sends also pass a token bucket ([`Pacer`]) whose burst is at least a window's worth of the
//! rate. When it is empty the thread waits for the next window rather than the next token.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{MultiHeaders, SockaddrStorage};
use nix::sys::time::TimeSpec;
use probermesh_core::model::IcmpSettings;

use super::flight::{Flight, Matched, echo_error};
use super::packet::{self, Family, Incoming, PayloadTag};
use super::socket::{IcmpSocket, ReceiveBatch, SocketKind};
use super::{IcmpEngineConfig, StartProbe, stopped};

/// Packets per `sendmmsg` at most.
const SEND_BATCH: usize = 64;
/// `recvmmsg` calls per wake-up at most, so a flood cannot hold the timers.
const RECEIVES_PER_WAKE: usize = 32;
/// Bytes an echo reply brings beyond its payload: IPv4 header (with options) and ICMP header.
const REPLY_OVERHEAD: usize = 60 + packet::ICMP_HEADER_LEN + 20;

/// How `ping` wakes the thread: an eventfd it polls, written only when no wake-up is already
/// pending, so a burst of new probes costs one write.
#[derive(Debug)]
pub(super) struct Waker {
    fd: EventFd,
    pending: AtomicBool,
    stop: AtomicBool,
}

impl Waker {
    pub(super) fn new() -> std::io::Result<Self> {
        Ok(Self {
            fd: EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?,
            pending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        })
    }

    /// Wakes the thread (a command was queued).
    pub(super) fn wake(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            // A full counter (never, at one per wake-up) still leaves the fd readable.
            let _ = self.fd.write(1);
        }
    }

    /// Asks the thread to stop, and wakes it.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.fd.write(1);
    }

    /// Consumes the pending wake-up (before the thread drains its commands).
    fn take(&self) {
        let _ = self.fd.read();
        self.pending.store(false, Ordering::SeqCst);
    }
}

/// The sending plan of one probe, known only to the scheduler.
#[derive(Clone, Copy, Debug)]
struct Plan {
    started: Instant,
    count: u32,
    interval: Duration,
    payload_len: usize,
    ttl: u8,
}

impl Plan {
    /// How early a packet of this probe may leave: a window, or half the probe's interval.
    fn send_ahead(&self, window: Duration) -> Duration {
        window.min(self.interval / 2)
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
struct Pacer {
    tokens: f64,
    burst: f64,
    rate: f64,
    updated: Instant,
}

impl Pacer {
    fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            tokens: burst,
            burst,
            rate: f64::from(rate.max(1)),
            updated: now,
        }
    }

    /// Takes a token, or says when the next one will be there.
    fn take(&mut self, now: Instant) -> Result<(), Instant> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// The burst of the pacer: the configured one, or a window's worth of the rate if more, so
/// pacing never caps the rate below `max_packets_per_second` when sends come in windows.
fn pacer_burst(config: &IcmpEngineConfig) -> u32 {
    let per_window = f64::from(config.max_packets_per_second) * config.batch_window.as_secs_f64();
    // Saturating float-to-int conversion intended.
    config.max_burst.max(per_window.ceil() as u32)
}

/// One packet of the send batch being built.
#[derive(Debug)]
struct Outgoing {
    probe_id: u64,
    index: u32,
    addr: IpAddr,
    /// The probe sends no more after this packet.
    last: bool,
}

/// The thread's state: the socket, what is in flight, and the queues.
#[derive(Debug)]
pub(super) struct Scheduler {
    socket: IcmpSocket,
    family: Family,
    token: u64,
    identifier: u16,
    /// Monotonic zero of the `*_ns` times.
    epoch: Instant,
    config: IcmpEngineConfig,
    commands: mpsc::Receiver<StartProbe>,
    waker: Arc<Waker>,
    flight: Flight,
    sends: BinaryHeap<Reverse<(Instant, u64, u32)>>,
    expiries: VecDeque<(Instant, u64, u32)>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    plans: HashMap<u64, Plan>,
    pacer: Pacer,
    /// No send before this instant (the pacer ran dry).
    paced_until: Option<Instant>,
    ttl: u8,
    receive: ReceiveBatch,
    send_headers: MultiHeaders<SockaddrStorage>,
    /// The batch being built: packet bytes (one buffer per slot, reused), targets, packets.
    packets: Vec<Vec<u8>>,
    targets: Vec<Option<SockaddrStorage>>,
    outgoing: Vec<Outgoing>,
}

/// What the thread needs to start; the scheduler itself is built on the thread (its
/// `recvmmsg`/`sendmmsg` headers hold pointers and stay where they were made).
#[derive(Debug)]
pub(super) struct Start {
    pub(super) socket: IcmpSocket,
    pub(super) family: Family,
    pub(super) token: u64,
    pub(super) identifier: u16,
    pub(super) config: IcmpEngineConfig,
    pub(super) commands: mpsc::Receiver<StartProbe>,
    pub(super) waker: Arc<Waker>,
}

impl Scheduler {
    fn new(start: Start) -> Self {
        let Start {
            socket,
            family,
            token,
            identifier,
            config,
            commands,
            waker,
        } = start;
        let now = Instant::now();
        Self {
            socket,
            family,
            token,
            identifier,
            epoch: now,
            pacer: Pacer::new(config.max_packets_per_second, pacer_burst(&config), now),
            config,
            commands,
            waker,
            flight: Flight::default(),
            sends: BinaryHeap::new(),
            expiries: VecDeque::new(),
            deadlines: BinaryHeap::new(),
            plans: HashMap::new(),
            paced_until: None,
            ttl: IcmpSettings::DEFAULT_TTL,
            receive: ReceiveBatch::new(0),
            send_headers: MultiHeaders::preallocate(SEND_BATCH, None),
            packets: (0..SEND_BATCH).map(|_| Vec::with_capacity(128)).collect(),
            targets: Vec::with_capacity(SEND_BATCH),
            outgoing: Vec::with_capacity(SEND_BATCH),
        }
    }

    /// Builds the scheduler and runs it until the engine is dropped.
    pub(super) fn run(start: Start) {
        let mut scheduler = Self::new(start);
        loop {
            let woke = Instant::now();
            if !scheduler.take_commands(woke) {
                break;
            }
            // Read before expiring: a reply that came in time is never counted lost because
            // it was read late.
            let received = scheduler.receive_all();
            scheduler.expire_due(woke);
            let sent = scheduler.send_due(woke);
            // More than one packet handled: more are likely within the window.
            scheduler.wait(woke, received + sent > 1);
        }
        scheduler.flight.abort_all(&stopped());
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Starts the queued probes; `false` once the engine is gone.
    fn take_commands(&mut self, now: Instant) -> bool {
        if self.waker.stop.load(Ordering::SeqCst) {
            return false;
        }
        loop {
            match self.commands.try_recv() {
                Ok(start) => self.start(start, now),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn start(&mut self, start: StartProbe, now: Instant) {
        let probe_id = self.flight.add(start.addr, start.count, start.done);
        if start.count == 0 {
            return;
        }
        self.receive
            .fit(start.payload_len.saturating_add(REPLY_OVERHEAD));
        self.plans.insert(
            probe_id,
            Plan {
                started: now,
                count: start.count,
                interval: start.interval,
                payload_len: start.payload_len,
                ttl: start.ttl,
            },
        );
        self.sends.push(Reverse((now, probe_id, 0)));
        self.deadlines
            .push(Reverse((now + start.timeout, probe_id)));
    }

    // === Waiting ===

    /// Waits for the next thing to do: not before `woke + batch_window` while busy, else
    /// until a datagram, a new probe, or the next timer (expiries and deadlines no earlier
    /// than one window after `woke`, sends at their time).
    fn wait(&self, woke: Instant, busy: bool) {
        let window_end = woke + self.config.batch_window;
        let now = Instant::now();
        if busy && now < window_end {
            thread::sleep(window_end - now);
            return;
        }
        let timeout = self
            .next_wakeup(window_end)
            .map(|at| TimeSpec::from_duration(at.saturating_duration_since(now)));
        let mut fds = [
            PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.waker.fd.as_fd(), PollFlags::POLLIN),
        ];
        match ppoll(&mut fds, timeout, None) {
            Ok(_) => {
                if fds[1]
                    .revents()
                    .is_some_and(|events| events.contains(PollFlags::POLLIN))
                {
                    self.waker.take();
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::warn!(error = %e, "ICMP engine: poll failed");
                thread::sleep(self.config.batch_window);
            }
        }
    }

    fn next_wakeup(&self, window_end: Instant) -> Option<Instant> {
        let send = self
            .sends
            .peek()
            .map(|Reverse((at, _, _))| match self.paced_until {
                Some(paced) => paced.max(*at).max(window_end),
                None => *at,
            });
        let expiry = self.expiries.front().map(|(at, _, _)| *at);
        let deadline = self.deadlines.peek().map(|Reverse((at, _))| *at);
        let timer = [expiry, deadline]
            .into_iter()
            .flatten()
            .min()
            .map(|at| at.max(window_end));
        [send, timer].into_iter().flatten().min()
    }

    // === Receiving ===

    /// Reads every queued datagram; returns how many were read.
    fn receive_all(&mut self) -> usize {
        let mut total = 0;
        for _ in 0..RECEIVES_PER_WAKE {
            let read = match self.socket.receive_batch(&mut self.receive) {
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "ICMP receive failed");
                    break;
                }
            };
            total += read;
            if read == 0 {
                break;
            }
            // One clock pair per batch: each datagram's kernel stamp says how long before
            // this moment it arrived.
            let now_ns = self.now_ns();
            let wall_now = SystemTime::now();
            let has_ip_header = self.socket.has_ip_header();
            let check_identifier = self.socket.kind() == SocketKind::Raw;
            let v6 = self.family == Family::V6;
            for (received, datagram) in self.receive.datagrams() {
                let kernel_lag = received
                    .kernel_time
                    .and_then(|stamp| wall_now.duration_since(stamp).ok());
                match packet::classify(self.family, has_ip_header, datagram) {
                    Incoming::Reply {
                        identifier,
                        sequence,
                        tag,
                    } => {
                        if tag.token != self.token
                            || (check_identifier && identifier != self.identifier)
                        {
                            continue;
                        }
                        let matched = self.flight.reply(
                            tag.probe_id,
                            tag.index,
                            received.from,
                            sequence,
                            now_ns,
                            kernel_lag,
                        );
                        if matched == Matched::Stray {
                            tracing::trace!(from = %received.from, sequence, "stray echo reply");
                        }
                    }
                    Incoming::Error {
                        icmp_type,
                        code,
                        original_destination,
                        identifier,
                        sequence,
                        tag,
                    } => {
                        if check_identifier && identifier != self.identifier {
                            continue;
                        }
                        let tag = tag
                            .filter(|tag| tag.token == self.token)
                            .map(|tag| (tag.probe_id, tag.index));
                        let error = echo_error(v6, icmp_type, code, received.from);
                        self.flight
                            .error(tag, original_destination, sequence, error);
                    }
                    Incoming::Ignored => {}
                }
            }
            if read < self.receive.capacity() {
                break;
            }
        }
        total
    }

    // === Timers ===

    fn expire_due(&mut self, now: Instant) {
        while let Some(&(at, probe_id, index)) = self.expiries.front() {
            if at > now {
                break;
            }
            self.expiries.pop_front();
            self.flight.expire(probe_id, index);
        }
        while let Some(&Reverse((at, probe_id))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            // Its queued send, if any, finds no plan and is dropped.
            self.plans.remove(&probe_id);
            self.flight.time_out(probe_id);
        }
    }

    // === Sending ===

    /// Sends every packet due by `now` plus its send-ahead, in batches; returns how many were
    /// handed to the kernel.
    fn send_due(&mut self, now: Instant) -> usize {
        if self.paced_until.is_some_and(|until| until > now) {
            return 0;
        }
        self.paced_until = None;
        let mut sent = 0;
        while let Some(&Reverse((at, probe_id, index))) = self.sends.peek() {
            let Some(plan) = self.plans.get(&probe_id).copied() else {
                self.sends.pop();
                continue;
            };
            if at > now + plan.send_ahead(self.config.batch_window) {
                break;
            }
            if let Err(next_token) = self.pacer.take(now) {
                self.paced_until = Some(next_token);
                break;
            }
            self.sends.pop();
            if plan.ttl != self.ttl {
                sent += self.flush(now);
                match self.socket.set_ttl(plan.ttl) {
                    Ok(()) => self.ttl = plan.ttl,
                    Err(e) => tracing::warn!(error = %e, ttl = plan.ttl, "cannot set the ICMP TTL"),
                }
            }
            self.queue(probe_id, index, &plan, at);
            if self.outgoing.len() == SEND_BATCH {
                sent += self.flush(now);
            }
        }
        sent + self.flush(now)
    }

    /// Builds packet `index` of `probe_id` into the batch and plans the probe's next one.
    fn queue(&mut self, probe_id: u64, index: u32, plan: &Plan, due: Instant) {
        let Some(probe) = self.flight.get(probe_id) else {
            self.plans.remove(&probe_id);
            return;
        };
        let (addr, sequence) = (probe.addr, probe.sequence_of(index));
        let slot = self.outgoing.len();
        packet::build_echo_request(
            &mut self.packets[slot],
            self.family,
            self.identifier,
            sequence,
            PayloadTag {
                token: self.token,
                probe_id,
                index,
            },
            plan.payload_len,
        );
        self.targets
            .push(Some(SockaddrStorage::from(SocketAddr::new(addr, 0))));
        let next = index + 1;
        let last = next >= plan.count;
        self.outgoing.push(Outgoing {
            probe_id,
            index,
            addr,
            last,
        });
        if last {
            self.plans.remove(&probe_id);
        } else {
            // Scheduled from the start, so pacing delays do not accumulate into drift.
            let nominal = plan.started + plan.interval.saturating_mul(next);
            self.sends.push(Reverse((nominal.max(due), probe_id, next)));
        }
    }

    /// Sends the batch built so far; returns how many packets the kernel took.
    fn flush(&mut self, now: Instant) -> usize {
        let total = self.outgoing.len();
        let mut first = 0;
        let mut sent = 0;
        while first < total {
            let packets: Vec<&[u8]> = self.packets[first..total]
                .iter()
                .map(Vec::as_slice)
                .collect();
            let before_ns = self.now_ns();
            let result =
                self.socket
                    .send_batch(&mut self.send_headers, &packets, &self.targets[first..]);
            let after_ns = self.now_ns();
            match result {
                Ok(taken) if taken > 0 => {
                    let span_ns = after_ns.saturating_sub(before_ns);
                    for (place, outgoing) in self.outgoing[first..first + taken].iter().enumerate()
                    {
                        // Packet `place` of `taken` left about `place / taken` into the call.
                        let offset_ns = span_ns.saturating_mul(place as u64)
                            / u64::try_from(taken).unwrap_or(1);
                        self.flight
                            .sent(outgoing.probe_id, outgoing.index, before_ns + offset_ns);
                        self.expiries.push_back((
                            now + self.config.reply_timeout,
                            outgoing.probe_id,
                            outgoing.index,
                        ));
                    }
                    first += taken;
                    sent += taken;
                }
                Ok(_) => {
                    self.fail(first, "the kernel took no packet of the batch");
                    first += 1;
                }
                Err(e) => {
                    self.fail(first, &e.to_string());
                    first += 1;
                }
            }
        }
        for outgoing in &self.outgoing {
            if outgoing.last {
                self.flight.sending_done(outgoing.probe_id);
            }
        }
        self.outgoing.clear();
        self.targets.clear();
        sent
    }

    fn fail(&mut self, place: usize, error: &str) {
        let outgoing = &self.outgoing[place];
        tracing::debug!(target_addr = %outgoing.addr, error, "ICMP send failed");
        self.flight.send_failed(outgoing.probe_id, error.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut pacer = Pacer::new(1_000, 3, start);
        for _ in 0..3 {
            assert!(pacer.take(start).is_ok());
        }
        let next = pacer.take(start).unwrap_err();
        assert_eq!(next.duration_since(start), Duration::from_millis(1));
        assert!(pacer.take(next).is_ok());
        // Saved-up tokens are capped at the burst.
        let later = start + Duration::from_secs(10);
        let granted = (0..10).filter(|_| pacer.take(later).is_ok()).count();
        assert_eq!(granted, 3);
    }

    #[test]
    fn the_burst_covers_a_window_of_the_rate() {
        let config = IcmpEngineConfig {
            max_packets_per_second: 50_000,
            max_burst: 64,
            batch_window: Duration::from_millis(2),
            ..IcmpEngineConfig::default()
        };
        assert_eq!(pacer_burst(&config), 100);
        let slow = IcmpEngineConfig {
            max_packets_per_second: 1_000,
            ..config
        };
        assert_eq!(pacer_burst(&slow), 64);
    }

    #[test]
    fn a_packet_leaves_at_most_half_its_interval_early() {
        let plan = |interval_ms| Plan {
            started: Instant::now(),
            count: 5,
            interval: Duration::from_millis(interval_ms),
            payload_len: 56,
            ttl: 64,
        };
        let window = Duration::from_millis(2);
        assert_eq!(plan(15).send_ahead(window), window);
        assert_eq!(plan(1).send_ahead(window), Duration::from_micros(500));
        assert_eq!(plan(0).send_ahead(window), Duration::ZERO);
    }
}
