//! The sending thread of one socket: when each echo request leaves, when each unanswered one
//! is given up, and when a probe's time is over.
//!
//! Three queues, so each costs what it must:
//! - `sends`, a heap of the next packet of every running probe (one entry per probe);
//! - `expiries`, a FIFO: every packet is given up `reply_timeout` after it left, and packets
//!   leave in time order, so expiries come due in the order they were queued;
//! - `deadlines`, a heap with one entry per probe: at its timeout a probe stops sending and its
//!   outstanding packets are lost.
//!
//! Sends pass a token bucket ([`Pacer`]). When it is empty the thread sleeps until the next
//! token instead of re-queueing every due send, so a burst of 10,000 due probes costs 10,000
//! sends, not 10,000 × wakeups.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use probermesh_core::model::IcmpSettings;

use super::packet::{self, PayloadTag};
use super::{IcmpEngineConfig, Shared, StartProbe, stopped};

/// The sending plan of one probe, known only to the scheduler.
#[derive(Clone, Copy, Debug)]
struct Plan {
    started: Instant,
    count: u32,
    interval: Duration,
    payload_len: usize,
    ttl: u8,
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

#[derive(Debug)]
pub(super) struct Scheduler {
    shared: Arc<Shared>,
    config: IcmpEngineConfig,
    sends: BinaryHeap<Reverse<(Instant, u64, u32)>>,
    expiries: VecDeque<(Instant, u64, u32)>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    plans: HashMap<u64, Plan>,
    pacer: Pacer,
    /// No send before this instant (the pacer ran dry).
    paced_until: Option<Instant>,
    packet: Vec<u8>,
    ttl: u8,
}

impl Scheduler {
    pub(super) fn new(shared: Arc<Shared>, config: IcmpEngineConfig) -> Self {
        Self {
            shared,
            config,
            sends: BinaryHeap::new(),
            expiries: VecDeque::new(),
            deadlines: BinaryHeap::new(),
            plans: HashMap::new(),
            pacer: Pacer::new(
                config.max_packets_per_second,
                config.max_burst,
                Instant::now(),
            ),
            paced_until: None,
            packet: Vec::with_capacity(128),
            ttl: IcmpSettings::DEFAULT_TTL,
        }
    }

    /// Runs until the engine is dropped (the command channel closes).
    pub(super) fn run(mut self, inbox: &mpsc::Receiver<StartProbe>) {
        loop {
            let wait = self.next_wakeup().map_or(Duration::from_secs(3600), |at| {
                at.saturating_duration_since(Instant::now())
            });
            match inbox.recv_timeout(wait) {
                Ok(start) => {
                    self.start(start);
                    while let Ok(start) = inbox.try_recv() {
                        self.start(start);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.run_due(Instant::now());
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.flight().abort_all(&stopped());
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let send = self
            .sends
            .peek()
            .map(|Reverse((at, _, _))| self.paced_until.map_or(*at, |p| p.max(*at)));
        let expiry = self.expiries.front().map(|(at, _, _)| *at);
        let deadline = self.deadlines.peek().map(|Reverse((at, _))| *at);
        [send, expiry, deadline].into_iter().flatten().min()
    }

    fn start(&mut self, start: StartProbe) {
        let now = Instant::now();
        let probe_id = self
            .shared
            .flight()
            .add(start.addr, start.count, start.done);
        if start.count == 0 {
            return;
        }
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

    fn run_due(&mut self, now: Instant) {
        while let Some(&(at, probe_id, index)) = self.expiries.front() {
            if at > now {
                break;
            }
            self.expiries.pop_front();
            self.shared.flight().expire(probe_id, index);
        }
        while let Some(&Reverse((at, probe_id))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            // Its queued send, if any, finds no plan and is dropped.
            self.plans.remove(&probe_id);
            self.shared.flight().time_out(probe_id);
        }
        if self.paced_until.is_some_and(|until| until > now) {
            return;
        }
        self.paced_until = None;
        while let Some(&Reverse((at, probe_id, index))) = self.sends.peek() {
            if at > now {
                break;
            }
            if !self.plans.contains_key(&probe_id) {
                self.sends.pop();
                continue;
            }
            if let Err(next_token) = self.pacer.take(now) {
                self.paced_until = Some(next_token);
                break;
            }
            self.sends.pop();
            self.send(probe_id, index, at, now);
        }
    }

    fn send(&mut self, probe_id: u64, index: u32, due: Instant, now: Instant) {
        let Some(plan) = self.plans.get(&probe_id).copied() else {
            return;
        };
        if plan.ttl != self.ttl {
            match self.shared.socket.set_ttl(plan.ttl) {
                Ok(()) => self.ttl = plan.ttl,
                Err(e) => tracing::warn!(error = %e, ttl = plan.ttl, "cannot set the ICMP TTL"),
            }
        }
        let sent = {
            let mut flight = self.shared.flight();
            let Some(probe) = flight.get(probe_id) else {
                self.plans.remove(&probe_id);
                return;
            };
            let (addr, sequence) = (probe.addr, probe.sequence_of(index));
            packet::build_echo_request(
                &mut self.packet,
                self.shared.family,
                self.shared.identifier,
                sequence,
                PayloadTag {
                    token: self.shared.token,
                    probe_id,
                    index,
                },
                plan.payload_len,
            );
            // The send time is taken as late as possible, and recorded before the reply can
            // be processed (the receiver needs this lock).
            let at_ns = self.shared.now_ns();
            match self.shared.socket.send_to(&self.packet, addr) {
                Ok(_) => {
                    flight.sent(probe_id, index, at_ns);
                    true
                }
                Err(e) => {
                    tracing::debug!(target_addr = %addr, error = %e, "ICMP send failed");
                    flight.send_failed(probe_id, e.to_string());
                    false
                }
            }
        };
        if sent {
            self.expiries
                .push_back((now + self.config.reply_timeout, probe_id, index));
        }
        let next = index + 1;
        if next < plan.count {
            // Scheduled from the start, so pacing delays do not accumulate into drift.
            let nominal = plan.started + plan.interval.saturating_mul(next);
            self.sends.push(Reverse((nominal.max(due), probe_id, next)));
        } else {
            self.plans.remove(&probe_id);
            self.shared.flight().sending_done(probe_id);
        }
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
}
