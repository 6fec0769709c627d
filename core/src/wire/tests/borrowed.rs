//! The in-place reader and writer of result batches (`wire::borrowed`): the same bytes and
//! the same outcomes, errors included, as the owned messages.

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::link::FromAgent;
use crate::wire::borrowed::{OutcomeRef, OutgoingResult, ProbeResultRef, ResultBatchBodyRef};

/// What `decode_from_agent` answered before batches were read in place: the owned message,
/// its limits, its conversion.
fn decode_owned(version: ProtocolVersion, body: &[u8]) -> Result<FromAgent, WireError> {
    match version {
        ProtocolVersion::V1 => {
            let message: AgentMessage = decode_frame(body)?;
            message.check_limits()?;
            from_agent_v1(message, &source())
        }
        ProtocolVersion::V2 => from_agent_v2(decode_frame::<AgentMessageV2>(body)?, &source()),
    }
}

/// `result` as read in place: a histogram longer than [`HISTOGRAM_LEN`] keeps its first
/// counts and its length (which the conversion refuses), every other field as it was.
fn kept(result: &ProbeResultV1) -> ProbeResultV1 {
    let mut result = result.clone();
    if let OutcomeV1::Icmp {
        histogram_counts, ..
    } = &mut result.outcome
    {
        histogram_counts.truncate(HISTOGRAM_LEN);
    }
    result
}

fn batch_body(seq: u64, results: Vec<ProbeResultV1>) -> Vec<u8> {
    let frame = encode_frame(
        &AgentMessage::ResultBatch { seq, results },
        DEFAULT_MAX_FRAME_LEN,
    )
    .unwrap();
    frame[LEN_PREFIX_BYTES..].to_vec()
}

fn icmp_dto(histogram_counts: Vec<u64>) -> ProbeResultV1 {
    let packets_received = histogram_counts.iter().sum::<u64>() as u32;
    ProbeResultV1 {
        target_region: "eu-west".into(),
        target: "10.0.0.9".into(),
        round_start_ms: 1_000,
        outcome: OutcomeV1::Icmp {
            resolve_ns: 0,
            failure: None,
            packets_sent: packets_received.max(1),
            packets_received,
            rtt: (packets_received > 0).then_some(RttSummaryV1 {
                mean_ns: 1,
                min_ns: 1,
                max_ns: 1,
                stddev_ns: 0,
            }),
            histogram_counts,
            histogram_sum_ns: 1,
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Wire compatibility: every owned result postcard encodes reads back in place with
    /// equal fields, alone and inside a batch.
    #[test]
    fn borrowed_results_decode_every_owned_encoding(
        seq in any::<u64>(),
        results in vec(arb_result(), 0..6),
    ) {
        for result in &results {
            let bytes = postcard::to_allocvec(result).unwrap();
            let borrowed: ProbeResultRef<'_> = decode_frame_borrowed(&bytes).unwrap();
            prop_assert_eq!(&borrowed.to_owned_dto(), &kept(result));
            if let (
                OutcomeV1::Icmp { histogram_counts, .. },
                OutcomeRef::Icmp { histogram_counts: read, .. },
            ) = (&result.outcome, borrowed.outcome)
            {
                prop_assert_eq!(read.len(), histogram_counts.len());
            }
        }
        let body = batch_body(seq, results.clone());
        prop_assert_eq!(body[0], crate::wire::borrowed::RESULT_BATCH_VARIANT);
        let batch: ResultBatchBodyRef<'_> = decode_frame_borrowed(&body[1..]).unwrap();
        prop_assert_eq!(batch.seq, seq);
        let back: Vec<ProbeResultV1> = batch.results.iter().map(ProbeResultRef::to_owned_dto).collect();
        prop_assert_eq!(back, results.iter().map(kept).collect::<Vec<_>>());
    }

    /// The server's answer to any batch, valid or not (random texts, histograms of 0 to 23
    /// counts), is the owned path's, error for error, in both versions.
    #[test]
    fn the_in_place_decoder_answers_as_the_owned_one(
        seq in any::<u64>(),
        results in vec(arb_result(), 0..6),
    ) {
        let body = batch_body(seq, results);
        for version in ProtocolVersion::ALL {
            prop_assert_eq!(
                decode_from_agent(version, &body, &source()),
                decode_owned(version, &body)
            );
        }
    }

    /// Valid results (from the domain) convert to the same domain results both ways.
    #[test]
    fn valid_batches_convert_as_before(
        seq in any::<u64>(),
        results in vec(arb_probe_result(), 0..8),
    ) {
        let dtos: Vec<ProbeResultV1> = results.iter().map(ProbeResultV1::from).collect();
        let body = batch_body(seq, dtos);
        for version in ProtocolVersion::ALL {
            let decoded = decode_from_agent(version, &body, &source());
            prop_assert_eq!(&decoded, &decode_owned(version, &body));
            let Ok(FromAgent::Results { results: back, .. }) = decoded else {
                return Err(TestCaseError::fail("a valid batch did not decode"));
            };
            prop_assert_eq!(back.len(), results.len());
        }
    }

    /// Malformed input (any bytes after the batch index, or a valid batch cut short or
    /// with one byte changed) is an error or the owned path's answer, never a panic.
    #[test]
    fn malformed_batches_are_errors_like_the_owned_path(
        tail in vec(any::<u8>(), 0..256),
        results in vec(arb_result(), 1..4),
        cut in any::<prop::sample::Index>(),
        flip in any::<(prop::sample::Index, u8)>(),
    ) {
        let mut garbage = vec![crate::wire::borrowed::RESULT_BATCH_VARIANT];
        garbage.extend(&tail);
        let body = batch_body(7, results);
        let short = &body[..cut.index(body.len())];
        let mut flipped = body.clone();
        let at = flip.0.index(flipped.len());
        flipped[at] ^= flip.1 | 1;
        for version in ProtocolVersion::ALL {
            for bytes in [&garbage[..], short, &flipped[..]] {
                prop_assert_eq!(decode_from_agent(version, bytes, &source()), decode_owned(version, bytes));
            }
        }
    }

    /// A domain result wrapped for the outbox encodes to its DTO's bytes, alone and in a
    /// batch frame.
    #[test]
    fn an_outgoing_result_encodes_like_its_dto(
        seq in any::<u64>(),
        results in vec(arb_probe_result(), 0..6),
        split in any::<prop::sample::Index>(),
    ) {
        let dtos: Vec<ProbeResultV1> = results.iter().map(ProbeResultV1::from).collect();
        for (result, dto) in results.iter().zip(&dtos) {
            prop_assert_eq!(
                postcard::to_allocvec(&OutgoingResult(result.clone())).unwrap(),
                postcard::to_allocvec(dto).unwrap()
            );
        }
        let wrapped: Vec<OutgoingResult> = results.into_iter().map(OutgoingResult).collect();
        let split = split.index(wrapped.len() + 1);
        prop_assert_eq!(
            encode_result_batch_frame(seq, &wrapped[..split], &wrapped[split..], DEFAULT_MAX_FRAME_LEN).unwrap(),
            encode_result_batch_frame(seq, &dtos, &[], DEFAULT_MAX_FRAME_LEN).unwrap()
        );
    }
}

#[test]
fn a_histogram_longer_than_the_limit_is_refused_naming_its_length() {
    for len in [HISTOGRAM_LEN - 1, HISTOGRAM_LEN + 1, 10_000] {
        let body = batch_body(1, vec![icmp_dto(vec![0; len])]);
        for version in ProtocolVersion::ALL {
            let err = decode_from_agent(version, &body, &source()).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid results[0].outcome.histogram_counts: holds {len} buckets; exactly {HISTOGRAM_LEN} are expected"
                )
            );
            assert_eq!(Err(err), decode_owned(version, &body));
        }
    }
    let mut counts = vec![0; HISTOGRAM_LEN];
    counts[3] = 2;
    assert!(
        decode_from_agent(
            ProtocolVersion::V1,
            &batch_body(1, vec![icmp_dto(counts)]),
            &source()
        )
        .is_ok()
    );
}

#[test]
fn too_many_results_are_refused_before_any_is_converted() {
    let results = vec![icmp_dto(vec![0; HISTOGRAM_LEN]); MAX_RESULTS_PER_BATCH + 1];
    let body = batch_body(1, results);
    for version in ProtocolVersion::ALL {
        let err = decode_from_agent(version, &body, &source()).unwrap_err();
        assert!(err.to_string().contains("result_batch.results"), "{err}");
        assert_eq!(Err(err), decode_owned(version, &body));
    }
}

#[test]
fn results_of_one_target_region_share_its_name() {
    let body = batch_body(1, vec![icmp_dto(vec![0; HISTOGRAM_LEN]); 3]);
    let Ok(FromAgent::Results { results, .. }) =
        decode_from_agent(ProtocolVersion::V2, &body, &source())
    else {
        panic!("a valid batch");
    };
    assert_eq!(results[0].target_region.as_str(), "eu-west");
    assert!(
        results
            .iter()
            .all(|r| r.target_region == results[0].target_region)
    );
    assert!(
        results
            .windows(2)
            .all(|w| std::ptr::eq(w[0].target_region.as_str(), w[1].target_region.as_str()))
    );
}
