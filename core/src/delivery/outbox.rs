//! The agent's outbox: results wait here until the server has acknowledged them.
//!
//! Results are pushed as they are measured. [`Outbox::next_frame`] cuts the oldest ones into a
//! `ResultBatch` with the next sequence number and keeps the batch until [`Outbox::ack`] names
//! its `seq`. After a reconnect ([`Outbox::reconnected`]) every unacknowledged batch is sent again,
//! oldest first and with its original `seq`, before any new batch; the server's
//! [`super::Deduplicator`] drops what it already has. Memory is bounded by
//! [`OutboxConfig::capacity_results`]: when it is exceeded, the oldest results go first (from
//! the oldest unacknowledged batch, then from the results not yet batched), and they are counted
//! in [`OutboxStats::dropped_results`].

use std::collections::VecDeque;

use serde::Serialize;

use crate::wire::{
    DEFAULT_MAX_FRAME_LEN, MAX_RESULTS_PER_BATCH, ProbeResultV1, WireError,
    encode_result_batch_frame,
};

/// Sizes of an [`Outbox`].
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct OutboxConfig {
    /// Most results held, batched or not (at least 1). The default, 100,000, holds 25 minutes
    /// of an agent probing 1,000 targets every 15 s.
    pub capacity_results: usize,
    /// Most results in one batch (1 to [`MAX_RESULTS_PER_BATCH`]).
    pub max_batch_results: usize,
    /// Largest frame body the server accepts, in bytes; a batch that would be larger is cut.
    pub max_frame_len_bytes: usize,
    /// Most batches sent on one connection and not acknowledged yet (at least 1): the flow
    /// control window.
    pub max_unacked_batches: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            capacity_results: 100_000,
            max_batch_results: 1_000,
            max_frame_len_bytes: DEFAULT_MAX_FRAME_LEN,
            max_unacked_batches: 32,
        }
    }
}

/// Counters of an [`Outbox`], for logs and metrics.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct OutboxStats {
    /// Results held now (batched and not).
    pub buffered_results: usize,
    /// Batches waiting for their acknowledgement.
    pub unacked_batches: usize,
    /// Results dropped because the outbox was full, since it was created.
    pub dropped_results: u64,
    /// Results dropped because even alone they do not fit in a frame.
    pub unencodable_results: u64,
    /// Results acknowledged by the server.
    pub acked_results: u64,
    /// Batch frames produced, resends included.
    pub sent_batches: u64,
    /// Batch frames produced again after a reconnect.
    pub resent_batches: u64,
}

/// One batch waiting for its acknowledgement.
#[derive(Debug)]
struct Batch<R> {
    seq: u64,
    results: Vec<R>,
}

/// A frame [`Outbox::next_frame`] wants sent.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct OutgoingBatch {
    /// The batch's sequence number.
    pub seq: u64,
    /// How many results it holds.
    pub n_results: usize,
    /// Whether it was produced before (this is a resend after a reconnect).
    pub resend: bool,
    /// The encoded frame (length prefix and body).
    pub frame: Vec<u8>,
}

/// The agent's bounded buffer of results, with sequence numbers and acknowledgements.
///
/// `R` is what it holds: anything that serialises as a [`ProbeResultV1`] does, the DTO itself
/// or a domain result in a [`crate::wire::borrowed::OutgoingResult`] (the agent's link, which
/// so encodes its results without converting them first).
#[derive(Debug)]
pub struct Outbox<R = ProbeResultV1> {
    config: OutboxConfig,
    /// Results not in a batch yet, oldest first.
    pending: VecDeque<R>,
    /// Batches produced and not acknowledged, by ascending `seq`.
    unacked: VecDeque<Batch<R>>,
    /// Results inside `unacked`.
    unacked_results: usize,
    /// `unacked[..in_flight]` were produced on the current connection.
    in_flight: usize,
    /// The `seq` of the next new batch (the first is 1).
    next_seq: u64,
    stats: OutboxStats,
}

impl<R: Serialize> Outbox<R> {
    /// An empty outbox; zero sizes are raised to 1 and the batch size is capped at
    /// [`MAX_RESULTS_PER_BATCH`].
    #[must_use]
    pub fn new(config: OutboxConfig) -> Self {
        let config = OutboxConfig {
            capacity_results: config.capacity_results.max(1),
            max_batch_results: config.max_batch_results.clamp(1, MAX_RESULTS_PER_BATCH),
            max_frame_len_bytes: config.max_frame_len_bytes,
            max_unacked_batches: config.max_unacked_batches.max(1),
        };
        Self {
            config,
            pending: VecDeque::new(),
            unacked: VecDeque::new(),
            unacked_results: 0,
            in_flight: 0,
            next_seq: 1,
            stats: OutboxStats::default(),
        }
    }

    /// The sizes in force.
    #[must_use]
    pub fn config(&self) -> OutboxConfig {
        self.config
    }

    /// Adds results; returns how many (old) results were dropped to make room.
    pub fn push(&mut self, results: impl IntoIterator<Item = R>) -> u64 {
        self.pending.extend(results);
        self.enforce_capacity()
    }

    /// The next batch frame to send on the current connection, or `None` when there is
    /// nothing to send or the window of unacknowledged batches is full.
    ///
    /// Unacknowledged batches of earlier connections come first, oldest first, with their
    /// original `seq`; then the oldest pending results become a new batch.
    pub fn next_frame(&mut self) -> Option<OutgoingBatch> {
        while self.in_flight < self.config.max_unacked_batches {
            if let Some(batch) = self.unacked.get(self.in_flight) {
                let seq = batch.seq;
                match encode_result_batch_frame(
                    seq,
                    &batch.results,
                    &[],
                    self.config.max_frame_len_bytes,
                ) {
                    Ok(frame) => {
                        let n_results = batch.results.len();
                        self.in_flight += 1;
                        self.stats.sent_batches += 1;
                        self.stats.resent_batches += 1;
                        return Some(OutgoingBatch {
                            seq,
                            n_results,
                            resend: true,
                            frame,
                        });
                    }
                    Err(_) => {
                        // It encoded before with at least these results; never expected.
                        if let Some(batch) = self.unacked.remove(self.in_flight) {
                            self.unacked_results -= batch.results.len();
                            self.stats.unencodable_results += batch.results.len() as u64;
                        }
                        continue;
                    }
                }
            }
            return self.new_batch();
        }
        None
    }

    /// Records the server's acknowledgement of `seq`; returns whether a held batch had it
    /// (`false` for a repeated or unknown `seq`).
    pub fn ack(&mut self, seq: u64) -> bool {
        let Ok(index) = self.unacked.binary_search_by_key(&seq, |batch| batch.seq) else {
            return false;
        };
        let Some(batch) = self.unacked.remove(index) else {
            return false;
        };
        self.unacked_results -= batch.results.len();
        self.stats.acked_results += batch.results.len() as u64;
        if index < self.in_flight {
            self.in_flight -= 1;
        }
        true
    }

    /// A new connection is up: every unacknowledged batch is to be sent again.
    pub fn reconnected(&mut self) {
        self.in_flight = 0;
    }

    /// Whether nothing is held (everything pushed was acknowledged or dropped).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.unacked.is_empty()
    }

    /// Whether enough results wait to fill a batch (a sender holding results back for
    /// company sends now).
    #[must_use]
    pub fn batch_is_full(&self) -> bool {
        self.pending.len() >= self.config.max_batch_results
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> OutboxStats {
        OutboxStats {
            buffered_results: self.buffered(),
            unacked_batches: self.unacked.len(),
            ..self.stats
        }
    }

    fn buffered(&self) -> usize {
        self.pending.len() + self.unacked_results
    }

    /// Cuts a new batch from the oldest pending results, halving it while its frame is too
    /// large; a result that does not fit alone is dropped and counted.
    fn new_batch(&mut self) -> Option<OutgoingBatch> {
        let mut n_results = self.pending.len().min(self.config.max_batch_results);
        while n_results > 0 {
            let seq = self.next_seq;
            let (front, back) = self.pending.as_slices();
            let head = &front[..n_results.min(front.len())];
            let tail = &back[..n_results - head.len()];
            match encode_result_batch_frame(seq, head, tail, self.config.max_frame_len_bytes) {
                Ok(frame) => {
                    let results: Vec<R> = self.pending.drain(..n_results).collect();
                    self.unacked.push_back(Batch { seq, results });
                    self.unacked_results += n_results;
                    self.in_flight += 1;
                    self.next_seq += 1;
                    self.stats.sent_batches += 1;
                    return Some(OutgoingBatch {
                        seq,
                        n_results,
                        resend: false,
                        frame,
                    });
                }
                Err(WireError::FrameTooLarge { .. } | WireError::Encode(_)) if n_results > 1 => {
                    n_results /= 2;
                }
                Err(_) => {
                    self.pending.pop_front();
                    self.stats.unencodable_results += 1;
                    n_results = self.pending.len().min(self.config.max_batch_results);
                }
            }
        }
        None
    }

    /// Drops the oldest results until the bound holds; returns how many went.
    fn enforce_capacity(&mut self) -> u64 {
        let mut dropped = 0;
        while self.buffered() > self.config.capacity_results {
            let excess = self.buffered() - self.config.capacity_results;
            if let Some(front) = self.unacked.front_mut() {
                if front.results.len() <= excess {
                    let n = front.results.len();
                    self.unacked.pop_front();
                    self.unacked_results -= n;
                    self.in_flight = self.in_flight.saturating_sub(1);
                    dropped += n;
                } else {
                    // The batch keeps its seq: if the server already has it, the resend is
                    // recognised as a duplicate; if not, the server gets the newer part.
                    front.results.drain(..excess);
                    self.unacked_results -= excess;
                    dropped += excess;
                }
            } else {
                let n = excess.min(self.pending.len());
                self.pending.drain(..n);
                dropped += n;
            }
        }
        let dropped = dropped as u64;
        self.stats.dropped_results += dropped;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::wire::{AgentMessage, FrameDecoder, HISTOGRAM_LEN, OutcomeV1};

    /// A result whose `round_start_ms` is its id.
    fn result(id: u64) -> ProbeResultV1 {
        ProbeResultV1 {
            target_region: "eu".into(),
            target: "10.0.0.1".into(),
            round_start_ms: id,
            outcome: OutcomeV1::Icmp {
                resolve_ns: 0,
                failure: None,
                packets_sent: 1,
                packets_received: 0,
                rtt: None,
                histogram_counts: vec![0; HISTOGRAM_LEN],
                histogram_sum_ns: 0,
            },
        }
    }

    fn ids(range: std::ops::Range<u64>) -> Vec<ProbeResultV1> {
        range.map(result).collect()
    }

    /// Decodes a batch frame into its seq and result ids.
    fn decode(batch: &OutgoingBatch) -> (u64, Vec<u64>) {
        let mut decoder = FrameDecoder::new(usize::MAX);
        decoder.push(&batch.frame);
        match decoder.next_frame::<AgentMessage>().unwrap() {
            Some(AgentMessage::ResultBatch { seq, results }) => {
                (seq, results.iter().map(|r| r.round_start_ms).collect())
            }
            other => panic!("not a batch: {other:?}"),
        }
    }

    fn outbox(capacity_results: usize, max_batch_results: usize, window: usize) -> Outbox {
        Outbox::new(OutboxConfig {
            capacity_results,
            max_batch_results,
            max_frame_len_bytes: DEFAULT_MAX_FRAME_LEN,
            max_unacked_batches: window,
        })
    }

    #[test]
    fn batches_are_cut_in_order_with_increasing_seq() {
        let mut outbox = outbox(100, 3, 10);
        outbox.push(ids(0..7));
        let batches: Vec<_> = std::iter::from_fn(|| outbox.next_frame()).collect();
        let decoded: Vec<_> = batches.iter().map(decode).collect();
        assert_eq!(
            decoded,
            [(1, vec![0, 1, 2]), (2, vec![3, 4, 5]), (3, vec![6])]
        );
        assert!(batches.iter().all(|b| !b.resend));
        assert_eq!(outbox.stats().buffered_results, 7);
        assert_eq!(outbox.stats().unacked_batches, 3);
        assert!(outbox.ack(2));
        assert!(!outbox.ack(2), "a repeated ack changes nothing");
        assert!(!outbox.ack(99));
        assert_eq!(outbox.stats().buffered_results, 4);
        assert_eq!(outbox.stats().acked_results, 3);
    }

    #[test]
    fn the_window_limits_unacknowledged_batches() {
        let mut outbox = outbox(100, 1, 2);
        outbox.push(ids(0..5));
        assert!(outbox.next_frame().is_some());
        assert!(outbox.next_frame().is_some());
        assert_eq!(outbox.next_frame(), None, "window full");
        outbox.ack(1);
        assert_eq!(decode(&outbox.next_frame().unwrap()), (3, vec![2]));
    }

    #[test]
    fn after_a_reconnect_unacked_batches_are_resent_first_with_their_seq() {
        let mut outbox = outbox(100, 2, 10);
        outbox.push(ids(0..6));
        for _ in 0..3 {
            outbox.next_frame().unwrap();
        }
        outbox.ack(2);
        outbox.push(ids(6..7));
        outbox.reconnected();
        let again: Vec<_> = std::iter::from_fn(|| outbox.next_frame()).collect();
        let decoded: Vec<_> = again.iter().map(decode).collect();
        assert_eq!(decoded, [(1, vec![0, 1]), (3, vec![4, 5]), (4, vec![6])]);
        assert_eq!(
            again.iter().map(|b| b.resend).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert_eq!(outbox.stats().resent_batches, 2);
    }

    #[test]
    fn when_full_the_oldest_results_go_first_and_are_counted() {
        let mut outbox = outbox(5, 2, 10);
        outbox.push(ids(0..4));
        let first = outbox.next_frame().unwrap(); // seq 1 holds 0, 1
        assert_eq!(decode(&first).1, [0, 1]);
        assert_eq!(outbox.push(ids(4..7)), 2, "7 held, 5 allowed");
        assert_eq!(outbox.stats().dropped_results, 2);
        assert_eq!(outbox.stats().unacked_batches, 0, "batch 1 dropped whole");
        let rest: Vec<_> = std::iter::from_fn(|| outbox.next_frame())
            .map(|b| decode(&b))
            .collect();
        assert_eq!(rest, [(2, vec![2, 3]), (3, vec![4, 5]), (4, vec![6])]);

        // An unacked batch larger than the excess loses only its oldest results.
        let mut outbox = self::outbox(4, 4, 10);
        outbox.push(ids(0..4));
        outbox.next_frame().unwrap();
        assert_eq!(outbox.push(ids(4..5)), 1);
        outbox.reconnected();
        assert_eq!(decode(&outbox.next_frame().unwrap()), (1, vec![1, 2, 3]));
    }

    #[test]
    fn a_batch_too_large_for_a_frame_is_cut_and_a_result_too_large_alone_is_dropped() {
        let one = encode_result_batch_frame(1, &ids(0..1), &[], usize::MAX)
            .unwrap()
            .len();
        let mut outbox = Outbox::new(OutboxConfig {
            capacity_results: 100,
            max_batch_results: 8,
            // Room for about two results per frame.
            max_frame_len_bytes: 2 * one,
            max_unacked_batches: 100,
        });
        outbox.push(ids(0..8));
        let sizes: Vec<_> = std::iter::from_fn(|| outbox.next_frame())
            .map(|b| decode(&b).1.len())
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 8);
        assert!(sizes.iter().all(|&n| n <= 2), "{sizes:?}");

        let mut tiny = Outbox::new(OutboxConfig {
            max_frame_len_bytes: 4,
            ..OutboxConfig::default()
        });
        tiny.push(ids(0..3));
        assert_eq!(tiny.next_frame(), None);
        assert_eq!(tiny.stats().unencodable_results, 3);
        assert!(tiny.is_empty());
    }

    proptest! {
        /// Batches cut from a ring buffer that has wrapped around carry the results in order.
        #[test]
        fn batches_carry_results_in_order_across_the_ring(
            chunks in proptest::collection::vec(1u64..40, 1..40),
            batch in 1usize..16,
        ) {
            let mut outbox = outbox(10_000, batch, 1_000);
            let mut next_id = 0;
            let mut seen = Vec::new();
            for n in chunks {
                outbox.push(ids(next_id..next_id + n));
                next_id += n;
                // Take one batch per push, so the deque's head moves and it wraps.
                if let Some(b) = outbox.next_frame() {
                    let (seq, got) = decode(&b);
                    outbox.ack(seq);
                    seen.extend(got);
                }
            }
            while let Some(b) = outbox.next_frame() {
                seen.extend(decode(&b).1);
            }
            prop_assert_eq!(seen, (0..next_id).collect::<Vec<_>>());
        }
    }

    proptest! {
        /// Whatever happens (pushes, sends, acks, reconnects), every result is either held,
        /// acknowledged or counted as dropped, and the bound always holds.
        #[test]
        fn results_are_conserved_and_bounded(
            ops in proptest::collection::vec((0u8..4, 0usize..20), 1..200),
            capacity in 1usize..60,
            batch in 1usize..10,
            window in 1usize..5,
        ) {
            let mut outbox = outbox(capacity, batch, window);
            let mut next_id = 0u64;
            let mut sent_seqs = Vec::new();
            for (op, n) in ops {
                match op {
                    0 => {
                        outbox.push(ids(next_id..next_id + n as u64));
                        next_id += n as u64;
                    }
                    1 => {
                        if let Some(b) = outbox.next_frame() {
                            sent_seqs.push(b.seq);
                        }
                    }
                    2 => {
                        if let Some(&seq) = sent_seqs.get(n % sent_seqs.len().max(1)) {
                            outbox.ack(seq);
                        }
                    }
                    _ => outbox.reconnected(),
                }
                let stats = outbox.stats();
                prop_assert!(stats.buffered_results <= capacity);
                prop_assert_eq!(
                    stats.buffered_results as u64 + stats.acked_results + stats.dropped_results,
                    next_id
                );
            }
        }
    }
}
