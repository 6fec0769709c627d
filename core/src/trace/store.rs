//! The server's memory of finished traces, for `/api/v1/traces` and the pair page: a ring per
//! pair under a global cap in count and in bytes, the newest kept, queried by pair and time.
//! Bounded whatever agents send: a report holds at most 255 hops, and the byte cap holds
//! whatever the number of pairs.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;

use super::blame::Verdict;
use super::{Direction, RegionPair, TraceReason};
use crate::link::{TraceHop, TraceReport};
use crate::model::{AgentId, Region, UnixMillis};

/// How a trace ended.
#[derive(Clone, Debug, PartialEq)]
pub enum TraceOutcome {
    /// The agent reported it; its verdict.
    Reported {
        /// What the agent found.
        report: TraceReport,
        /// What it blames.
        verdict: Verdict,
    },
    /// The agent answered without tracing (refused, out of its bounds, no socket): its error.
    /// Nothing is judged, so no hop is blamed.
    Failed {
        /// Why, in the agent's words.
        error: String,
    },
    /// No report came within the desk's timeout.
    TimedOut,
    /// The agent disconnected before reporting.
    Abandoned,
}

impl TraceOutcome {
    /// The bounded name in JSON and logs.
    #[must_use]
    pub const fn label(&self) -> &'static str {
        match self {
            Self::Reported { .. } => "reported",
            Self::Failed { .. } => "failed",
            Self::TimedOut => "timed_out",
            Self::Abandoned => "abandoned",
        }
    }
}

/// One finished trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceRecord {
    /// The trace id (the request's and the report's).
    pub id: u64,
    /// The pair it was run for (`None`: an operator's trace outside any pair).
    pub pair: Option<RegionPair>,
    /// Why it ran.
    pub reason: TraceReason,
    /// Which way along the pair (`None` outside any pair).
    pub direction: Option<Direction>,
    /// Who ran it.
    pub agent: AgentId,
    /// Where it traced to.
    pub target: IpAddr,
    /// When the request was sent.
    pub started_at: UnixMillis,
    /// When the report came (or the trace was given up).
    pub ended_at: UnixMillis,
    /// How it ended.
    pub outcome: TraceOutcome,
}

impl TraceRecord {
    /// What the record costs the store: its fixed size plus its hops and texts. An estimate
    /// (allocator overhead aside), stable for a record, so the cap is deterministic.
    #[must_use]
    pub fn size_bytes(&self) -> usize {
        let fixed = size_of::<Self>();
        match &self.outcome {
            TraceOutcome::Reported { report, verdict } => {
                fixed
                    + report.hops.len() * size_of::<TraceHop>()
                    + report.error.as_ref().map_or(0, String::len)
                    + verdict.reason.len()
                    + verdict.rate_limited_ttls.len()
                    + verdict.silent_ttls.len()
            }
            TraceOutcome::Failed { error } => fixed + error.len(),
            TraceOutcome::TimedOut | TraceOutcome::Abandoned => fixed,
        }
    }
}

/// The store's limits.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct StoreLimits {
    /// Records kept per pair (and for operator traces outside any pair) (20).
    pub per_pair: usize,
    /// Records kept in all (2,000).
    pub max_records: usize,
    /// Bytes kept in all, by [`TraceRecord::size_bytes`] (16 MiB): 2,000 full 30-hop
    /// traces take about 5 MiB.
    pub max_bytes: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            per_pair: 20,
            max_records: 2_000,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// What to look up; every field narrows.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct TraceQuery {
    /// Only this pair's traces (`Some(None)`: only operator traces outside any pair).
    pub pair: Option<Option<RegionPair>>,
    /// Only traces that ended at or after this instant.
    pub since: Option<UnixMillis>,
    /// Only traces that ended before this instant.
    pub until: Option<UnixMillis>,
    /// Only traces of pairs from this source region.
    pub source: Option<Region>,
    /// Only traces of pairs to this target region.
    pub target: Option<Region>,
    /// Only traces this agent ran.
    pub agent: Option<AgentId>,
    /// Only the trace of this id.
    pub id: Option<u64>,
    /// At most this many, newest first (`None`: all that match).
    pub limit: Option<usize>,
}

/// The bounded store of finished traces.
#[derive(Clone, Debug)]
pub struct TraceStore {
    limits: StoreLimits,
    /// Every record by insertion number (oldest first).
    records: BTreeMap<u64, TraceRecord>,
    /// Insertion numbers per pair, oldest first.
    by_pair: BTreeMap<Option<RegionPair>, VecDeque<u64>>,
    next_seq: u64,
    bytes: usize,
    evicted_total: u64,
}

impl TraceStore {
    /// An empty store under `limits` (each at least 1).
    #[must_use]
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            limits: StoreLimits {
                per_pair: limits.per_pair.max(1),
                max_records: limits.max_records.max(1),
                max_bytes: limits.max_bytes.max(1),
            },
            records: BTreeMap::new(),
            by_pair: BTreeMap::new(),
            next_seq: 0,
            bytes: 0,
            evicted_total: 0,
        }
    }

    /// Keeps `record`, dropping its pair's oldest past the ring and then the oldest of all
    /// past the global caps; the record just kept is never dropped (so one record larger
    /// than the byte cap is kept alone).
    pub fn insert(&mut self, record: TraceRecord) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += record.size_bytes();
        let ring = self.by_pair.entry(record.pair.clone()).or_default();
        ring.push_back(seq);
        let mut dropped = Vec::new();
        while ring.len() > self.limits.per_pair {
            if let Some(oldest) = ring.pop_front() {
                dropped.push(oldest);
            }
        }
        self.records.insert(seq, record);
        for oldest in dropped {
            self.forget(oldest, false);
        }
        while self.records.len() > self.limits.max_records || self.bytes > self.limits.max_bytes {
            let Some((&oldest, _)) = self.records.first_key_value() else {
                break;
            };
            if oldest == seq {
                break;
            }
            self.forget(oldest, true);
        }
    }

    /// Drops record `seq`, also from its pair's ring when `from_ring`.
    fn forget(&mut self, seq: u64, from_ring: bool) {
        let Some(record) = self.records.remove(&seq) else {
            return;
        };
        self.bytes -= record.size_bytes();
        self.evicted_total += 1;
        if from_ring && let Some(ring) = self.by_pair.get_mut(&record.pair) {
            ring.retain(|s| *s != seq);
            if ring.is_empty() {
                self.by_pair.remove(&record.pair);
            }
        }
    }

    /// The records `query` selects, newest first.
    #[must_use]
    pub fn query(&self, query: &TraceQuery) -> Vec<&TraceRecord> {
        let in_time = |record: &&TraceRecord| {
            let pair = record.pair.as_ref();
            query.since.is_none_or(|since| record.ended_at >= since)
                && query.until.is_none_or(|until| record.ended_at < until)
                && query
                    .source
                    .as_ref()
                    .is_none_or(|source| pair.is_some_and(|p| &p.source == source))
                && query
                    .target
                    .as_ref()
                    .is_none_or(|target| pair.is_some_and(|p| &p.target == target))
                && query
                    .agent
                    .as_ref()
                    .is_none_or(|agent| &record.agent == agent)
        };
        let limit = query.limit.unwrap_or(usize::MAX);
        if let Some(id) = query.id {
            return self
                .get(id)
                .filter(in_time)
                .into_iter()
                .take(limit)
                .collect();
        }
        match &query.pair {
            Some(pair) => self
                .by_pair
                .get(pair)
                .into_iter()
                .flat_map(|ring| ring.iter().rev())
                .filter_map(|seq| self.records.get(seq))
                .filter(in_time)
                .take(limit)
                .collect(),
            None => self
                .records
                .values()
                .rev()
                .filter(in_time)
                .take(limit)
                .collect(),
        }
    }

    /// The record of trace `id`, if kept.
    #[must_use]
    pub fn get(&self, id: u64) -> Option<&TraceRecord> {
        self.records.values().rev().find(|record| record.id == id)
    }

    /// The newest record of `pair`.
    #[must_use]
    pub fn latest(&self, pair: &RegionPair) -> Option<&TraceRecord> {
        let ring = self.by_pair.get(&Some(pair.clone()))?;
        ring.back().and_then(|seq| self.records.get(seq))
    }

    /// The pairs with a record kept, in order (operator traces outside any pair aside).
    pub fn pairs(&self) -> impl Iterator<Item = &RegionPair> {
        self.by_pair.keys().flatten()
    }

    /// Records kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether none is kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes kept, by [`TraceRecord::size_bytes`].
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records dropped to stay within the limits, since start.
    #[must_use]
    pub fn evicted_total(&self) -> u64 {
        self.evicted_total
    }

    /// The limits.
    #[must_use]
    pub fn limits(&self) -> StoreLimits {
        self.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::TraceHop;
    use proptest::prelude::*;

    fn pair(n: u8) -> RegionPair {
        RegionPair::new(
            Region::new(&format!("r{n}")).unwrap(),
            Region::new("dst").unwrap(),
        )
    }

    fn record(id: u64, pair: Option<RegionPair>, ended_ms: u64, hops: usize) -> TraceRecord {
        let target: IpAddr = "198.18.0.1".parse().unwrap();
        let report = TraceReport {
            id,
            target,
            hops: (0..hops)
                .map(|i| TraceHop {
                    ttl: u8::try_from(i + 1).unwrap_or(u8::MAX),
                    addr: Some(target),
                    sent: 10,
                    received: 10,
                    rtt_best: None,
                    rtt_mean: None,
                    rtt_worst: None,
                    rtt_stddev: None,
                })
                .collect(),
            error: None,
        };
        let verdict = super::super::blame::judge(&report, &Default::default());
        TraceRecord {
            id,
            pair,
            reason: TraceReason::Loss,
            direction: Some(Direction::Forward),
            agent: AgentId::new(Region::new("r0").unwrap(), "198.18.0.2".parse().unwrap()),
            target,
            started_at: UnixMillis(ended_ms.saturating_sub(20_000)),
            ended_at: UnixMillis(ended_ms),
            outcome: TraceOutcome::Reported { report, verdict },
        }
    }

    #[test]
    fn a_pair_keeps_its_newest_and_queries_by_pair_and_time() {
        let mut store = TraceStore::new(StoreLimits {
            per_pair: 3,
            ..StoreLimits::default()
        });
        for id in 1..=5 {
            store.insert(record(id, Some(pair(1)), id * 1000, 3));
        }
        store.insert(record(6, Some(pair(2)), 6000, 3));
        store.insert(record(7, None, 7000, 3));
        let ids = |records: Vec<&TraceRecord>| records.iter().map(|r| r.id).collect::<Vec<_>>();
        let of_pair = |p: Option<RegionPair>| TraceQuery {
            pair: Some(p),
            ..TraceQuery::default()
        };
        assert_eq!(ids(store.query(&of_pair(Some(pair(1))))), vec![5, 4, 3]);
        assert_eq!(ids(store.query(&of_pair(None))), vec![7]);
        assert_eq!(
            ids(store.query(&TraceQuery::default())),
            vec![7, 6, 5, 4, 3]
        );
        let window = TraceQuery {
            since: Some(UnixMillis(4000)),
            until: Some(UnixMillis(7000)),
            limit: Some(2),
            ..TraceQuery::default()
        };
        assert_eq!(ids(store.query(&window)), vec![6, 5]);
        let by_region = TraceQuery {
            source: Some(pair(2).source),
            ..TraceQuery::default()
        };
        assert_eq!(ids(store.query(&by_region)), vec![6]);
        let by_target = TraceQuery {
            target: Some(pair(1).target),
            limit: Some(2),
            ..TraceQuery::default()
        };
        assert_eq!(ids(store.query(&by_target)), vec![6, 5]);
        let by_agent = TraceQuery {
            agent: Some(store.get(6).unwrap().agent.clone()),
            ..TraceQuery::default()
        };
        assert!(ids(store.query(&by_agent)).contains(&6));
        assert_eq!(store.latest(&pair(1)).map(|r| r.id), Some(5));
        assert_eq!(store.get(4).map(|r| r.id), Some(4));
        assert!(store.get(1).is_none());
        assert_eq!(store.evicted_total(), 2);
    }

    #[test]
    fn a_record_larger_than_the_byte_cap_is_kept_alone() {
        let mut store = TraceStore::new(StoreLimits {
            per_pair: 10,
            max_records: 10,
            max_bytes: 1,
        });
        store.insert(record(1, Some(pair(1)), 1000, 2));
        store.insert(record(2, Some(pair(2)), 2000, 2));
        assert_eq!(store.len(), 1);
        assert_eq!(store.get(2).map(|r| r.id), Some(2));
        assert!(
            store
                .query(&TraceQuery {
                    pair: Some(Some(pair(1))),
                    ..TraceQuery::default()
                })
                .is_empty()
        );
    }

    proptest! {
        /// Whatever is inserted, the store stays within its caps (one oversized newest record
        /// aside), every ring within its size, the newest record always kept, the byte count
        /// exact, and each pair's ring holds exactly its newest kept records.
        #[test]
        fn the_store_stays_bounded_and_keeps_the_newest(
            inserts in proptest::collection::vec((0u8..6, 0usize..40), 1..200),
            per_pair in 1usize..6,
            max_records in 1usize..20,
            max_bytes in 1_000usize..20_000,
        ) {
            let limits = StoreLimits { per_pair, max_records, max_bytes };
            let mut store = TraceStore::new(limits);
            for (idx, (pair_n, hops)) in inserts.iter().enumerate() {
                let id = idx as u64;
                let p = (*pair_n > 0).then(|| pair(*pair_n));
                store.insert(record(id, p, id * 10, *hops));
                prop_assert!(store.get(id).is_some());
                prop_assert!(store.len() <= max_records);
                prop_assert!(store.len() == 1 || store.bytes() <= max_bytes);
                let total: usize = store.records.values().map(TraceRecord::size_bytes).sum();
                prop_assert_eq!(total, store.bytes());
                let ringed: usize = store.by_pair.values().map(VecDeque::len).sum();
                prop_assert_eq!(ringed, store.len());
                for ring in store.by_pair.values() {
                    prop_assert!(ring.len() <= per_pair);
                    prop_assert!(ring.iter().zip(ring.iter().skip(1)).all(|(a, b)| a < b));
                }
            }
        }
    }
}
