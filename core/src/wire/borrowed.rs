//! A `ResultBatch` decoded in place: the same bytes as [`AgentMessage::ResultBatch`] (and
//! [`super::AgentMessageV2::ResultBatch`], byte for byte v1's), read without one heap
//! allocation per result.
//!
//! postcard encodes a `String` as a varint length and its bytes, and a `Vec<u64>` as a varint
//! length and varints; [`ProbeResultRef`] reads the strings as `&str` into the frame body and
//! the histogram into a fixed array ([`HistogramCounts`]), so it decodes exactly the bytes a
//! [`ProbeResultV1`] encodes to (`borrowed_results_decode_every_owned_encoding`, a property
//! test in `core/src/wire/tests/borrowed.rs`). No protocol version changes: this is a reader, the
//! schema stays v1's.
//!
//! The server's [`super::decode_from_agent`] takes this path for a body whose first byte is
//! the `ResultBatch` variant index; [`results_ref_into_domain`] then validates each result as
//! [`super::results_into_domain`] does, with the same errors, and shares one [`Region`] per
//! distinct target region of the batch instead of allocating one per result.
//!
//! [`AgentMessage::ResultBatch`]: super::AgentMessage::ResultBatch

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeStruct as _, SerializeStructVariant as _, Serializer};
use serde::{Deserialize, Serialize};

use super::convert::{IcmpFields, http_outcome, icmp_outcome};
use super::v1::{
    HttpFailureV1, HttpPhasesV1, IcmpFailureV1, ProbeResultV1, RttSummaryV1, TlsInfoV1,
};
use super::{HISTOGRAM_LEN, MAX_RESULTS_PER_BATCH, WireError, check_len};
use crate::model::time::duration_nanos;
use crate::model::{AgentId, ProbeOutcome, ProbeResult, Region, Target, UnixMillis};

/// The variant index of `ResultBatch` in [`super::AgentMessage`] and
/// [`super::AgentMessageV2`] (one varint byte).
pub const RESULT_BATCH_VARIANT: u8 = 2;

/// The fields of a `ResultBatch` after its variant index, borrowed from the frame body.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq)]
pub struct ResultBatchBodyRef<'a> {
    /// Per-instance sequence number.
    pub seq: u64,
    /// The results.
    #[serde(borrow)]
    pub results: Vec<ProbeResultRef<'a>>,
}

/// A [`ProbeResultV1`] read in place: its strings borrowed from the frame body, its histogram
/// in a fixed array.
#[derive(Clone, Copy, Debug, Deserialize, Eq, PartialEq)]
pub struct ProbeResultRef<'a> {
    /// The pool region of the target.
    pub target_region: &'a str,
    /// The target as configured.
    pub target: &'a str,
    /// When the probe's round started, in Unix milliseconds.
    pub round_start_ms: u64,
    /// What was measured.
    pub outcome: OutcomeRef,
}

/// A [`super::OutcomeV1`] with its histogram in a fixed array; same variants, same fields.
#[derive(Clone, Copy, Debug, Deserialize, Eq, PartialEq)]
pub enum OutcomeRef {
    /// An ICMP probe.
    Icmp {
        /// Time spent resolving the target, in nanoseconds.
        resolve_ns: u64,
        /// Set when the probe could not measure.
        failure: Option<IcmpFailureV1>,
        /// Echo requests sent.
        packets_sent: u32,
        /// Distinct echo replies received.
        packets_received: u32,
        /// Summary of the received echoes.
        rtt: Option<RttSummaryV1>,
        /// Per-bucket RTT counts.
        histogram_counts: HistogramCounts,
        /// Sum of the received RTTs, in nanoseconds.
        histogram_sum_ns: u128,
    },
    /// An HTTP probe.
    Http {
        /// The five phase durations.
        phases: HttpPhasesV1,
        /// Status code of the final response.
        status_code: Option<u16>,
        /// TLS facts of the final response.
        tls: Option<TlsInfoV1>,
        /// `None` on success.
        failure: Option<HttpFailureV1>,
    },
}

/// The `histogram_counts` sequence read without allocating: its first [`HISTOGRAM_LEN`]
/// counts and how many entries the sequence held. A longer sequence is read to its end (its
/// entries are bytes of the frame, so the work is bounded by the frame size) and kept as its
/// length only, so the conversion refuses it with the owned path's error ("holds 21 buckets;
/// exactly 20 are expected").
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct HistogramCounts {
    counts: [u64; HISTOGRAM_LEN],
    len: usize,
}

impl HistogramCounts {
    /// The counts, when the sequence held exactly [`HISTOGRAM_LEN`] of them.
    #[must_use]
    pub fn exact(&self) -> Option<&[u64; HISTOGRAM_LEN]> {
        (self.len == HISTOGRAM_LEN).then_some(&self.counts)
    }

    /// How many entries the sequence held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the sequence was empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries that were kept (all of them, up to [`HISTOGRAM_LEN`]).
    #[must_use]
    pub fn kept(&self) -> &[u64] {
        &self.counts[..self.len.min(HISTOGRAM_LEN)]
    }
}

impl<'de> Deserialize<'de> for HistogramCounts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountsVisitor;

        impl<'de> Visitor<'de> for CountsVisitor {
            type Value = HistogramCounts;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of histogram bucket counts")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut counts = [0u64; HISTOGRAM_LEN];
                let mut len = 0usize;
                while let Some(count) = seq.next_element::<u64>()? {
                    if let Some(slot) = counts.get_mut(len) {
                        *slot = count;
                    }
                    len = len
                        .checked_add(1)
                        .ok_or_else(|| de::Error::custom("histogram length overflows"))?;
                }
                Ok(HistogramCounts { counts, len })
            }
        }

        deserializer.deserialize_seq(CountsVisitor)
    }
}

// === Conversion ===

/// Regions already validated in one batch, shared between its results.
#[derive(Debug, Default)]
struct RegionCache<'a> {
    regions: HashMap<&'a str, Region>,
}

impl<'a> RegionCache<'a> {
    fn region(&mut self, name: &'a str) -> Result<Region, WireError> {
        if let Some(region) = self.regions.get(name) {
            return Ok(region.clone());
        }
        let region =
            Region::new(name).map_err(|e| WireError::invalid("target_region", e.to_string()))?;
        // Bounded by the batch: at most one entry per result.
        self.regions.insert(name, region.clone());
        Ok(region)
    }
}

/// Converts a borrowed `ResultBatch` payload from agent `source`: the same checks, errors and
/// domain results as [`super::results_into_domain`] of the owned payload.
///
/// # Errors
/// [`WireError::Invalid`] for more than [`MAX_RESULTS_PER_BATCH`] results or for the first
/// invalid result, with its index in the field path (`results[3].outcome.rtt`).
pub fn results_ref_into_domain(
    results: &[ProbeResultRef<'_>],
    source: &AgentId,
) -> Result<Vec<ProbeResult>, WireError> {
    check_len("results", results.len(), MAX_RESULTS_PER_BATCH)?;
    let mut regions = RegionCache::default();
    let mut domain = Vec::with_capacity(results.len());
    for (result_idx, result) in results.iter().copied().enumerate() {
        domain.push(
            result
                .into_domain(source, &mut regions)
                .map_err(|e| e.within(&format!("results[{result_idx}]")))?,
        );
    }
    Ok(domain)
}

impl<'a> ProbeResultRef<'a> {
    /// The domain result, probed by `source`; as [`ProbeResultV1::into_domain`].
    fn into_domain(
        self,
        source: &AgentId,
        regions: &mut RegionCache<'a>,
    ) -> Result<ProbeResult, WireError> {
        let target_region = regions.region(self.target_region)?;
        let outcome = self.outcome.to_domain().map_err(|e| e.within("outcome"))?;
        Target::parse(outcome.kind(), self.target)
            .map_err(|e| WireError::invalid("target", e.to_string()))?;
        Ok(ProbeResult {
            source: source.clone(),
            target_region,
            target: self.target.to_owned(),
            round_start: UnixMillis(self.round_start_ms),
            outcome,
        })
    }

    /// The owned DTO with the same fields (for tests and tools; the server does not need it).
    #[must_use]
    pub fn to_owned_dto(&self) -> ProbeResultV1 {
        ProbeResultV1 {
            target_region: self.target_region.to_owned(),
            target: self.target.to_owned(),
            round_start_ms: self.round_start_ms,
            outcome: match self.outcome {
                OutcomeRef::Icmp {
                    resolve_ns,
                    failure,
                    packets_sent,
                    packets_received,
                    rtt,
                    histogram_counts,
                    histogram_sum_ns,
                } => super::OutcomeV1::Icmp {
                    resolve_ns,
                    failure,
                    packets_sent,
                    packets_received,
                    rtt,
                    histogram_counts: histogram_counts.kept().to_vec(),
                    histogram_sum_ns,
                },
                OutcomeRef::Http {
                    phases,
                    status_code,
                    tls,
                    failure,
                } => super::OutcomeV1::Http {
                    phases,
                    status_code,
                    tls,
                    failure,
                },
            },
        }
    }
}

impl OutcomeRef {
    /// As `OutcomeV1::into_domain`: the same conversion, check for check.
    fn to_domain(self) -> Result<ProbeOutcome, WireError> {
        match self {
            Self::Icmp {
                resolve_ns,
                failure,
                packets_sent,
                packets_received,
                rtt,
                histogram_counts,
                histogram_sum_ns,
            } => icmp_outcome(IcmpFields {
                resolve_ns,
                failure,
                packets_sent,
                packets_received,
                rtt,
                histogram_counts: histogram_counts.kept(),
                histogram_len: histogram_counts.len(),
                histogram_sum_ns,
            }),
            Self::Http {
                phases,
                status_code,
                tls,
                failure,
            } => http_outcome(phases, status_code, tls, failure),
        }
    }
}

// === Going out: domain results encoded in place ===

/// A domain result as the agent holds it until it is acknowledged: it serialises to exactly
/// the bytes of `ProbeResultV1::from(&result)` (`an_outgoing_result_encodes_like_its_dto`, a
/// property test in `core/src/wire/tests/borrowed.rs`), without building that DTO (three heap
/// allocations per result) first. Domain types stay free of serde: this wrapper is the wire's.
#[derive(Clone, Debug, PartialEq)]
pub struct OutgoingResult(pub ProbeResult);

impl Serialize for OutgoingResult {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Field for field `ProbeResultV1`, in its order.
        let result = &self.0;
        let mut record = serializer.serialize_struct("ProbeResultV1", 4)?;
        record.serialize_field("target_region", result.target_region.as_str())?;
        record.serialize_field("target", result.target.as_str())?;
        record.serialize_field("round_start_ms", &result.round_start.as_millis())?;
        record.serialize_field("outcome", &OutcomeView(&result.outcome))?;
        record.end()
    }
}

/// A domain outcome serialised as its [`super::OutcomeV1`] (variant for variant, field for
/// field).
struct OutcomeView<'a>(&'a ProbeOutcome);

impl Serialize for OutcomeView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            ProbeOutcome::Icmp(icmp) => {
                let mut variant = serializer.serialize_struct_variant("OutcomeV1", 0, "Icmp", 7)?;
                variant.serialize_field("resolve_ns", &duration_nanos(icmp.resolve))?;
                variant.serialize_field("failure", &icmp.failure.map(IcmpFailureV1::from))?;
                variant.serialize_field("packets_sent", &icmp.packets_sent)?;
                variant.serialize_field("packets_received", &icmp.packets_received)?;
                variant.serialize_field("rtt", &icmp.rtt.map(RttSummaryV1::from))?;
                // A slice, not the array: a sequence with its length, as the DTO's `Vec`.
                variant.serialize_field("histogram_counts", &icmp.histogram.counts()[..])?;
                variant.serialize_field("histogram_sum_ns", &icmp.histogram.sum_nanos())?;
                variant.end()
            }
            ProbeOutcome::Http(http) => {
                let mut variant = serializer.serialize_struct_variant("OutcomeV1", 1, "Http", 4)?;
                variant.serialize_field("phases", &HttpPhasesV1::from(http.phases))?;
                variant.serialize_field("status_code", &http.status_code)?;
                variant.serialize_field("tls", &http.tls.map(TlsInfoV1::from))?;
                variant.serialize_field("failure", &http.failure.map(HttpFailureV1::from))?;
                variant.end()
            }
        }
    }
}
