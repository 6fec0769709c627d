//! The server's memory of which result batches it delivered, per agent instance.
//!
//! An agent numbers its batches 1, 2, 3, … per process start (its `instance_id`) and resends an
//! unacknowledged batch with the same number after a reconnect. [`SeqWindow`] answers "is this
//! the first time I see `seq`?" in bounded memory: everything at or below a floor counts as
//! seen, and the numbers above it are kept in a set of at most `max_above` entries. The floor
//! rises over contiguous numbers at once, and past the oldest entries when the set is full; a
//! gap left behind that way (a batch the agent dropped for lack of room, or one arriving more
//! than `max_above` batches late) then counts as seen. Agents send batches in order on one
//! stream, so in practice the set holds only the numbers above a gap.
//!
//! [`Deduplicator`] keeps one window per agent instance, for at most `max_instances` instances;
//! the least recently used one is forgotten first.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

/// The batch numbers of one agent instance seen so far, in bounded memory.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct SeqWindow {
    /// Every `seq` at or below this counts as seen.
    floor: u64,
    /// Seen numbers above `floor`, never `floor + 1`.
    above: BTreeSet<u64>,
    /// Most entries of `above`.
    max_above: usize,
}

impl SeqWindow {
    /// A window that has seen nothing but `seq` 0 (agents start at 1), remembering at most
    /// `max_above` (at least 1) numbers above its floor.
    #[must_use]
    pub fn new(max_above: usize) -> Self {
        Self {
            floor: 0,
            above: BTreeSet::new(),
            max_above: max_above.max(1),
        }
    }

    /// Records `seq`; returns `true` the first time, `false` for a number seen (or counted as
    /// seen) before.
    pub fn first_delivery(&mut self, seq: u64) -> bool {
        if seq <= self.floor || !self.above.insert(seq) {
            return false;
        }
        self.compact();
        while self.above.len() > self.max_above {
            if let Some(oldest) = self.above.pop_first() {
                self.floor = oldest;
            }
            self.compact();
        }
        true
    }

    /// Every `seq` at or below this counts as seen.
    #[must_use]
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Numbers remembered above the floor.
    #[must_use]
    pub fn len_above(&self) -> usize {
        self.above.len()
    }

    fn compact(&mut self) {
        while self.above.first() == Some(&(self.floor + 1)) {
            self.above.pop_first();
            self.floor += 1;
        }
    }
}

/// One [`SeqWindow`] per agent instance, for a bounded number of instances.
#[derive(Clone, Debug)]
pub struct Deduplicator<K> {
    instances: HashMap<K, (SeqWindow, u64)>,
    max_instances: usize,
    window_len: usize,
    /// Increases with every use; the second field of an entry is its last use.
    clock: u64,
}

impl<K: Clone + Eq + Hash> Deduplicator<K> {
    /// Remembers at most `max_instances` (at least 1) instances, each with a window of
    /// `window_len` numbers.
    #[must_use]
    pub fn new(max_instances: usize, window_len: usize) -> Self {
        Self {
            instances: HashMap::new(),
            max_instances: max_instances.max(1),
            window_len,
            clock: 0,
        }
    }

    /// Records batch `seq` of instance `key`; `true` the first time.
    pub fn first_delivery(&mut self, key: &K, seq: u64) -> bool {
        self.clock += 1;
        if let Some((window, last_used)) = self.instances.get_mut(key) {
            *last_used = self.clock;
            return window.first_delivery(seq);
        }
        if self.instances.len() >= self.max_instances
            && let Some(oldest) = self
                .instances
                .iter()
                .min_by_key(|(_, (_, last_used))| *last_used)
                .map(|(k, _)| k.clone())
        {
            self.instances.remove(&oldest);
        }
        let mut window = SeqWindow::new(self.window_len);
        let first = window.first_delivery(seq);
        self.instances.insert(key.clone(), (window, self.clock));
        first
    }

    /// Instances remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether no instance is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn each_seq_is_delivered_once_in_any_order() {
        let mut window = SeqWindow::new(16);
        assert!(window.first_delivery(2));
        assert!(window.first_delivery(1));
        assert!(!window.first_delivery(1));
        assert!(!window.first_delivery(2));
        assert_eq!((window.floor(), window.len_above()), (2, 0));
        assert!(window.first_delivery(5));
        assert!(!window.first_delivery(5));
        assert!(window.first_delivery(3));
        assert_eq!((window.floor(), window.len_above()), (3, 1));
        assert!(!window.first_delivery(0), "agents start at 1");
    }

    #[test]
    fn memory_stays_bounded_over_gaps() {
        let mut window = SeqWindow::new(4);
        // Every other batch was dropped by the agent: gaps everywhere.
        for seq in (2..1_000).step_by(2) {
            assert!(window.first_delivery(seq));
            assert!(window.len_above() <= 4);
        }
        assert!(!window.first_delivery(998));
        assert!(window.floor() >= 990);
        // A gap far behind counts as seen.
        assert!(!window.first_delivery(3));
    }

    #[test]
    fn instances_are_independent_and_the_least_recently_used_is_forgotten() {
        let mut dedup = Deduplicator::new(2, 8);
        assert!(dedup.first_delivery(&"a", 1));
        assert!(dedup.first_delivery(&"b", 1));
        assert!(!dedup.first_delivery(&"a", 1));
        assert!(dedup.first_delivery(&"c", 1)); // forgets b
        assert_eq!(dedup.len(), 2);
        assert!(!dedup.first_delivery(&"a", 1));
        assert!(dedup.first_delivery(&"b", 1), "b was forgotten");
    }

    proptest! {
        /// Batches resent after reconnects (any prefix of the unacknowledged ones again, in
        /// order) are delivered exactly once when the window is at least the resend depth.
        #[test]
        fn resends_are_delivered_exactly_once(
            resend_points in proptest::collection::vec((1u64..200, 0u64..20), 0..20),
        ) {
            let mut window = SeqWindow::new(32);
            let mut delivered = HashSet::new();
            let mut next = 1u64;
            let mut points = resend_points.into_iter();
            while next <= 200 {
                if window.first_delivery(next) {
                    prop_assert!(delivered.insert(next));
                }
                next += 1;
                if let Some((at, depth)) = points.next()
                    && at < next
                {
                    // Reconnect: resend the last `depth` batches.
                    next = next.saturating_sub(depth).max(1);
                }
            }
            prop_assert_eq!(delivered.len(), 200);
        }
    }
}
