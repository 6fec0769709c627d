//! The in-flight table of one socket: every running probe, its packets' send times and what
//! came back. The socket's thread (`scheduler`) owns it: it adds probes, records sends,
//! replies, errors and expiries, and completes a probe when its last packet is resolved.
//!
//! Memory is what is in flight: per probe 8 bytes per packet (send time) plus the RTTs
//! received so far, and nothing once the probe completes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use probermesh_core::ports::{EchoError, EchoErrorKind, EchoSeries, PingError};
use tokio::sync::oneshot;

/// Where one packet stands. `Sent` holds the monotonic send time, in nanoseconds since the
/// engine's epoch (never 0 for a sent packet).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Packet {
    NotSent,
    Sent { at_ns: u64 },
    Resolved,
}

/// One `ping` call in progress.
#[derive(Debug)]
pub(crate) struct Probe {
    pub(crate) addr: IpAddr,
    pub(crate) count: u32,
    pub(crate) base_sequence: u16,
    packets: Vec<Packet>,
    /// Packets sent and not yet resolved.
    outstanding: u32,
    /// Whether the scheduler will send no more (all sent, or the probe deadline passed).
    sending_done: bool,
    packets_sent: u32,
    rtts: Vec<Duration>,
    errors: Vec<EchoError>,
    duplicates: u32,
    last_send_error: Option<String>,
    done: Option<oneshot::Sender<Result<EchoSeries, PingError>>>,
}

impl Probe {
    pub(crate) fn new(
        addr: IpAddr,
        count: u32,
        base_sequence: u16,
        done: oneshot::Sender<Result<EchoSeries, PingError>>,
    ) -> Self {
        Self {
            addr,
            count,
            base_sequence,
            packets: vec![Packet::NotSent; usize::try_from(count).unwrap_or(0)],
            outstanding: 0,
            sending_done: count == 0,
            packets_sent: 0,
            rtts: Vec::new(),
            errors: Vec::new(),
            duplicates: 0,
            last_send_error: None,
            done: Some(done),
        }
    }

    /// The sequence number of packet `index`.
    pub(crate) fn sequence_of(&self, index: u32) -> u16 {
        // Truncation intended: sequences wrap at 2^16.
        self.base_sequence.wrapping_add(index as u16)
    }

    fn is_complete(&self) -> bool {
        self.sending_done && self.outstanding == 0
    }

    fn finish(mut self) {
        let result = if self.packets_sent == 0 {
            Err(PingError::Send {
                detail: self
                    .last_send_error
                    .take()
                    .unwrap_or_else(|| "no echo request could be sent".to_owned()),
            })
        } else {
            Ok(EchoSeries {
                packets_sent: self.packets_sent,
                rtts: std::mem::take(&mut self.rtts),
                errors: std::mem::take(&mut self.errors),
            })
        };
        if self.duplicates > 0 {
            tracing::debug!(target_addr = %self.addr, duplicates = self.duplicates, "duplicate echo replies ignored");
        }
        if let Some(done) = self.done.take() {
            // The caller may have stopped waiting (its future was dropped): nothing to do.
            let _ = done.send(result);
        }
    }
}

/// Every probe in flight on one socket, by probe id, plus the sequence → probe index used to
/// attribute ICMP errors that quote too little of our payload to carry the tag.
#[derive(Debug)]
pub(crate) struct Flight {
    probes: HashMap<u64, Probe>,
    sequence_owner: Vec<u64>,
    next_probe_id: u64,
    next_sequence: u16,
}

impl Default for Flight {
    fn default() -> Self {
        Self {
            probes: HashMap::new(),
            sequence_owner: vec![0; 1 << 16],
            next_probe_id: 1,
            next_sequence: 0,
        }
    }
}

/// How a reply or error was taken.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(crate) enum Matched {
    /// It resolved a sent packet.
    Resolved,
    /// That packet was already resolved.
    Duplicate,
    /// It matches no packet we are waiting for.
    Stray,
}

impl Flight {
    /// Adds a probe of `count` packets and returns its id.
    pub(crate) fn add(
        &mut self,
        addr: IpAddr,
        count: u32,
        done: oneshot::Sender<Result<EchoSeries, PingError>>,
    ) -> u64 {
        let id = self.next_probe_id;
        self.next_probe_id += 1;
        let base = self.next_sequence;
        // Truncation intended: sequences wrap.
        self.next_sequence = base.wrapping_add(count as u16);
        let probe = Probe::new(addr, count, base, done);
        if probe.is_complete() {
            probe.finish();
        } else {
            self.probes.insert(id, probe);
        }
        id
    }

    /// The probe `id`, if still running.
    pub(crate) fn get(&self, id: u64) -> Option<&Probe> {
        self.probes.get(&id)
    }

    /// Records that packet `index` of probe `id` left at `at_ns`.
    pub(crate) fn sent(&mut self, id: u64, index: u32, at_ns: u64) {
        let Some(probe) = self.probes.get_mut(&id) else {
            return;
        };
        let Some(packet) = probe.packets.get_mut(index as usize) else {
            return;
        };
        *packet = Packet::Sent {
            at_ns: at_ns.max(1),
        };
        probe.outstanding += 1;
        probe.packets_sent += 1;
        let sequence = probe.sequence_of(index);
        self.sequence_owner[usize::from(sequence)] = id;
    }

    /// Records that packet `index` of probe `id` could not be sent.
    pub(crate) fn send_failed(&mut self, id: u64, error: String) {
        if let Some(probe) = self.probes.get_mut(&id) {
            probe.last_send_error = Some(error);
        }
    }

    /// The scheduler will send no more packets of probe `id`.
    pub(crate) fn sending_done(&mut self, id: u64) {
        if let Some(probe) = self.probes.get_mut(&id) {
            probe.sending_done = true;
        }
        self.complete_if_done(id);
    }

    /// A reply to packet `tag_index` of probe `id` came from `from` with `sequence`, at
    /// `now_ns`; `kernel_lag` is how long before `now_ns` the kernel stamped it.
    pub(crate) fn reply(
        &mut self,
        id: u64,
        index: u32,
        from: IpAddr,
        sequence: u16,
        now_ns: u64,
        kernel_lag: Option<Duration>,
    ) -> Matched {
        let Some(probe) = self.probes.get_mut(&id) else {
            return Matched::Stray;
        };
        if probe.addr != from || index >= probe.count || probe.sequence_of(index) != sequence {
            return Matched::Stray;
        }
        let matched = match probe.packets[index as usize] {
            Packet::Sent { at_ns } => {
                let user_rtt = Duration::from_nanos(now_ns.saturating_sub(at_ns));
                // The kernel's receive stamp is earlier than our wakeup; use it when it is
                // consistent (a wall-clock step would make it nonsense).
                let rtt = match kernel_lag {
                    Some(lag) if lag <= user_rtt => user_rtt - lag,
                    _ => user_rtt,
                };
                probe.rtts.push(rtt);
                probe.packets[index as usize] = Packet::Resolved;
                probe.outstanding -= 1;
                Matched::Resolved
            }
            Packet::Resolved => {
                probe.duplicates += 1;
                Matched::Duplicate
            }
            Packet::NotSent => Matched::Stray,
        };
        self.complete_if_done(id);
        matched
    }

    /// An ICMP error about one of our requests. `tag` carries the probe and packet when the
    /// error quoted our payload; otherwise the sequence number finds them.
    pub(crate) fn error(
        &mut self,
        tag: Option<(u64, u32)>,
        original_destination: IpAddr,
        sequence: u16,
        error: EchoError,
    ) -> Matched {
        let (id, index) = match tag {
            Some(tagged) => tagged,
            None => {
                let id = self.sequence_owner[usize::from(sequence)];
                let Some(probe) = self.probes.get(&id) else {
                    return Matched::Stray;
                };
                (id, u32::from(sequence.wrapping_sub(probe.base_sequence)))
            }
        };
        let Some(probe) = self.probes.get_mut(&id) else {
            return Matched::Stray;
        };
        if probe.addr != original_destination
            || index >= probe.count
            || probe.sequence_of(index) != sequence
        {
            return Matched::Stray;
        }
        let matched = match probe.packets[index as usize] {
            Packet::Sent { .. } => {
                probe.errors.push(error);
                probe.packets[index as usize] = Packet::Resolved;
                probe.outstanding -= 1;
                Matched::Resolved
            }
            Packet::Resolved => Matched::Duplicate,
            Packet::NotSent => Matched::Stray,
        };
        self.complete_if_done(id);
        matched
    }

    /// Packet `index` of probe `id` got no answer in time: it is lost.
    pub(crate) fn expire(&mut self, id: u64, index: u32) {
        let Some(probe) = self.probes.get_mut(&id) else {
            return;
        };
        if let Some(packet @ Packet::Sent { .. }) = probe.packets.get_mut(index as usize) {
            *packet = Packet::Resolved;
            probe.outstanding -= 1;
        }
        self.complete_if_done(id);
    }

    /// Probe `id` reached its timeout: it sends no more and every packet still outstanding
    /// is lost.
    pub(crate) fn time_out(&mut self, id: u64) {
        if let Some(probe) = self.probes.get_mut(&id) {
            for packet in &mut probe.packets {
                if matches!(packet, Packet::Sent { .. }) {
                    *packet = Packet::Resolved;
                }
            }
            probe.outstanding = 0;
            probe.sending_done = true;
        }
        self.complete_if_done(id);
    }

    /// Probes still running.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.probes.len()
    }

    /// Ends every probe with `error` (the engine is stopping).
    pub(crate) fn abort_all(&mut self, error: &PingError) {
        for (_, mut probe) in self.probes.drain() {
            if let Some(done) = probe.done.take() {
                let _ = done.send(Err(error.clone()));
            }
        }
    }

    fn complete_if_done(&mut self, id: u64) {
        if self.probes.get(&id).is_some_and(Probe::is_complete)
            && let Some(probe) = self.probes.remove(&id)
        {
            probe.finish();
        }
    }
}

/// Builds the [`EchoError`] of an ICMP error message.
pub(crate) fn echo_error(v6: bool, icmp_type: u8, code: u8, from: IpAddr) -> EchoError {
    let kind = match (v6, icmp_type) {
        (false, 3) | (true, 1) => EchoErrorKind::Unreachable { code },
        (false, 11) | (true, 3) => EchoErrorKind::TimeExceeded,
        _ => EchoErrorKind::Other { icmp_type, code },
    };
    EchoError { from, kind }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> IpAddr {
        "198.18.0.2".parse().unwrap()
    }

    fn probe(
        flight: &mut Flight,
        count: u32,
    ) -> (u64, oneshot::Receiver<Result<EchoSeries, PingError>>) {
        let (tx, rx) = oneshot::channel();
        (flight.add(addr(), count, tx), rx)
    }

    #[test]
    fn replies_complete_the_probe_with_kernel_corrected_rtts() {
        let mut flight = Flight::default();
        let (id, mut rx) = probe(&mut flight, 2);
        let base = flight.get(id).unwrap().base_sequence;
        flight.sent(id, 0, 1_000);
        flight.sent(id, 1, 2_000);
        flight.sending_done(id);
        let lag = Some(Duration::from_nanos(100));
        assert_eq!(
            flight.reply(id, 0, addr(), base, 11_000, lag),
            Matched::Resolved
        );
        assert_eq!(
            flight.reply(id, 0, addr(), base, 12_000, lag),
            Matched::Duplicate
        );
        assert!(rx.try_recv().is_err(), "one packet still outstanding");
        // A lag longer than the user-space RTT is nonsense (clock step): ignored.
        let bogus = Some(Duration::from_secs(5));
        assert_eq!(
            flight.reply(id, 1, addr(), base.wrapping_add(1), 7_000, bogus),
            Matched::Resolved
        );
        let series = rx.try_recv().unwrap().unwrap();
        assert_eq!(series.packets_sent, 2);
        assert_eq!(
            series.rtts,
            vec![Duration::from_nanos(9_900), Duration::from_nanos(5_000)]
        );
        assert_eq!(flight.len(), 0);
    }

    #[test]
    fn replies_from_the_wrong_host_or_sequence_are_stray() {
        let mut flight = Flight::default();
        let (id, _rx) = probe(&mut flight, 3);
        let base = flight.get(id).unwrap().base_sequence;
        flight.sent(id, 0, 1);
        let other: IpAddr = "198.18.0.3".parse().unwrap();
        assert_eq!(flight.reply(id, 0, other, base, 5, None), Matched::Stray);
        assert_eq!(
            flight.reply(id, 0, addr(), base.wrapping_add(9), 5, None),
            Matched::Stray
        );
        assert_eq!(
            flight.reply(id, 1, addr(), base.wrapping_add(1), 5, None),
            Matched::Stray,
            "not sent yet"
        );
        assert_eq!(
            flight.reply(id, 7, addr(), base.wrapping_add(7), 5, None),
            Matched::Stray
        );
        assert_eq!(
            flight.reply(id + 1, 0, addr(), base, 5, None),
            Matched::Stray
        );
    }

    #[test]
    fn a_lost_packet_and_an_error_end_the_probe_early() {
        let mut flight = Flight::default();
        let (id, mut rx) = probe(&mut flight, 3);
        let base = flight.get(id).unwrap().base_sequence;
        for index in 0..3 {
            flight.sent(id, index, 10);
        }
        flight.sending_done(id);
        let router: IpAddr = "198.18.0.1".parse().unwrap();
        // An error quoting only 8 bytes is found by its sequence number.
        let unreachable = echo_error(false, 3, 1, router);
        assert_eq!(
            flight.error(None, addr(), base.wrapping_add(1), unreachable),
            Matched::Resolved
        );
        flight.expire(id, 2);
        assert_eq!(
            flight.reply(id, 0, addr(), base, 30, None),
            Matched::Resolved
        );
        let series = rx.try_recv().unwrap().unwrap();
        assert_eq!(series.packets_sent, 3);
        assert_eq!(series.rtts.len(), 1);
        assert_eq!(series.errors, vec![unreachable]);
    }

    #[test]
    fn the_probe_timeout_loses_what_is_outstanding() {
        let mut flight = Flight::default();
        let (id, mut rx) = probe(&mut flight, 5);
        let base = flight.get(id).unwrap().base_sequence;
        flight.sent(id, 0, 10);
        flight.sent(id, 1, 20);
        assert_eq!(
            flight.reply(id, 0, addr(), base, 30, None),
            Matched::Resolved
        );
        flight.time_out(id);
        let series = rx.try_recv().unwrap().unwrap();
        assert_eq!((series.packets_sent, series.rtts.len()), (2, 1));
        // A late reply finds nothing.
        assert_eq!(
            flight.reply(id, 1, addr(), base.wrapping_add(1), 40, None),
            Matched::Stray
        );
    }

    #[test]
    fn a_probe_that_sent_nothing_is_a_send_error() {
        let mut flight = Flight::default();
        let (id, mut rx) = probe(&mut flight, 2);
        flight.send_failed(id, "Network is unreachable".into());
        flight.sending_done(id);
        let error = rx.try_recv().unwrap().unwrap_err();
        assert!(
            error.to_string().contains("Network is unreachable"),
            "{error}"
        );
    }

    #[test]
    fn sequences_are_contiguous_per_probe_and_wrap() {
        let mut flight = Flight::default();
        let (a, _ra) = probe(&mut flight, 65_530);
        let (b, _rb) = probe(&mut flight, 10);
        assert_eq!(flight.get(a).unwrap().base_sequence, 0);
        let b_probe = flight.get(b).unwrap();
        assert_eq!(b_probe.base_sequence, 65_530);
        assert_eq!(b_probe.sequence_of(9), 3);
    }

    #[test]
    fn abort_tells_every_waiter() {
        let mut flight = Flight::default();
        let (_id, mut rx) = probe(&mut flight, 2);
        flight.abort_all(&PingError::Send {
            detail: "engine stopped".into(),
        });
        assert!(rx.try_recv().unwrap().is_err());
        assert_eq!(flight.len(), 0);
    }
}
