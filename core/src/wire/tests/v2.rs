//! Tests of protocol v2 and of the handshake of every version: the golden values of
//! `fixtures/wire/v2/` (checked with the v1 ones by `golden_frames_are_the_promised_bytes`),
//! the bytes v2 shares with v1, `decode_hello` / `decode_answer`, round trips of every domain
//! message through both versions, v1's refusal of v2-only messages and the new limits. The
//! golden task signing bytes are checked in `tests.rs` with the other golden files, so that
//! `UPDATE_GOLDEN=1 cargo test … wire::tests::golden` writes them all.

use crate::wire::v2::PoolFileV2;
use std::collections::BTreeSet;
use std::sync::Arc;

use super::*;
use crate::link::{
    Capabilities, FromAgent, Signature, TaskOutput, TaskSpec, ToAgent, TraceHop, TraceProtocol,
    TraceReport, TraceRequest, UpgradePlan, UpgradeState, feature,
};
use crate::matcher::MatchOp;

// === Golden values ===

fn features() -> Vec<String> {
    vec!["task".into(), "trace".into(), "upgrade".into()]
}

fn golden_hello() -> AgentMessageV2 {
    AgentMessageV2::Hello {
        protocol_version: 2,
        agent_version: "0.2.0".into(),
        region: "cn-shanghai".into(),
        ip: IpAddrV1::V4([10, 0, 0, 1]),
        instance_id: 0x0123_4567_89ab_cdef,
        token: WireSecret::new("s3cret".into()),
        features: features(),
    }
}

fn golden_welcome() -> ServerMessageV2 {
    ServerMessageV2::Welcome {
        protocol_version: 2,
        server_version: "0.2.0".into(),
        observed_addr: "[2001:db8::1]:4433".parse::<SocketAddr>().unwrap().into(),
        features: features(),
    }
}

fn golden_signature() -> Vec<u8> {
    (0u8..64).collect()
}

fn golden_task() -> ServerMessageV2 {
    ServerMessageV2::Task {
        task_id: 9,
        command: "uptime".into(),
        timeout_ms: 30_000,
        output_limit_bytes: 65_536,
        expires_at_ms: 1_700_000_060_000,
        region_op: "=~".into(),
        region_pattern: "eu-.*".into(),
        signature: Some(golden_signature()),
    }
}

fn golden_trace_result() -> AgentMessageV2 {
    AgentMessageV2::TraceResult {
        trace_id: 5,
        target: IpAddrV1::V4([192, 0, 2, 1]),
        hops: vec![
            TraceHopV2 {
                ttl: 1,
                addr: Some(IpAddrV1::V4([10, 0, 0, 254])),
                sent: 3,
                received: 3,
                rtt_best_ns: Some(1_000_000),
                rtt_mean_ns: Some(1_200_000),
                rtt_worst_ns: Some(1_500_000),
                rtt_stddev_ns: Some(200_000),
            },
            TraceHopV2 {
                ttl: 2,
                addr: None,
                sent: 3,
                received: 0,
                rtt_best_ns: None,
                rtt_mean_ns: None,
                rtt_worst_ns: None,
                rtt_stddev_ns: None,
            },
            TraceHopV2 {
                ttl: 3,
                addr: Some(IpAddrV1::V6([
                    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
                ])),
                sent: 3,
                received: 2,
                rtt_best_ns: Some(9_000_000),
                rtt_mean_ns: Some(9_500_000),
                rtt_worst_ns: Some(10_000_000),
                rtt_stddev_ns: Some(3_000_000),
            },
        ],
        error: Some("no answer after ttl 3".into()),
    }
}

fn golden_result_batch_v2() -> AgentMessageV2 {
    AgentMessageV2::ResultBatch {
        seq: 42,
        results: vec![golden_icmp_result(), golden_http_result()],
    }
}

fn golden_target_pool_v2() -> ServerMessageV2 {
    ServerMessageV2::TargetPool {
        revision: 7,
        configs: vec![golden_http_config()],
        // The contents of the block's `ca_file`, as the server read it.
        files: vec![PoolFileV2 {
            path: "/etc/probermesh/ca.pem".into(),
            contents: WireSecret::new(
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            ),
        }],
    }
}

/// The v2 golden agent messages: file stem, comment, value.
fn golden_agent_messages() -> Vec<(&'static str, &'static str, AgentMessageV2)> {
    vec![
        (
            "hello",
            "AgentMessageV2::Hello { protocol_version: 2, agent_version: \"0.2.0\", region: \"cn-shanghai\", ip: 10.0.0.1, instance_id: 0x0123456789abcdef, token: \"s3cret\", features: [\"task\", \"trace\", \"upgrade\"] }",
            golden_hello(),
        ),
        (
            "heartbeat",
            "AgentMessageV2::Heartbeat { sent_at_ms: 1700000000000 } (v1's bytes)",
            AgentMessageV2::Heartbeat {
                sent_at_ms: 1_700_000_000_000,
            },
        ),
        (
            "result_batch",
            "AgentMessageV2::ResultBatch { seq: 42, results: the two golden v1 results } (v1's bytes; see golden_result_batch in core/src/wire/tests.rs)",
            golden_result_batch_v2(),
        ),
        (
            "pool_request",
            "AgentMessageV2::PoolRequest { known_revision: 7 } (v1's bytes)",
            AgentMessageV2::PoolRequest { known_revision: 7 },
        ),
        (
            "task_result",
            "AgentMessageV2::TaskResult { task_id: 9, exit_code: Some(0), timed_out: false, stdout: b\"hello\\n\", stderr: b\"\", truncated: false, duration_ms: 12 } (v1's bytes)",
            AgentMessageV2::TaskResult {
                task_id: 9,
                exit_code: Some(0),
                timed_out: false,
                stdout: b"hello\n".to_vec(),
                stderr: Vec::new(),
                truncated: false,
                duration_ms: 12,
            },
        ),
        (
            "task_refused",
            "AgentMessageV2::TaskRefused { task_id: 9, reason: \"no\" } (variant 9)",
            AgentMessageV2::TaskRefused {
                task_id: 9,
                reason: "no".into(),
            },
        ),
        (
            "upgrade_status",
            "AgentMessageV2::UpgradeStatus { offer_id: 3, version: \"0.3.0\", state: Downloading { received_bytes: 1048576 } }",
            AgentMessageV2::UpgradeStatus {
                offer_id: 3,
                version: "0.3.0".into(),
                state: UpgradeStateV2::Downloading {
                    received_bytes: 1_048_576,
                },
            },
        ),
        (
            "upgrade_status_rolled_back",
            "AgentMessageV2::UpgradeStatus { offer_id: 3, version: \"0.3.0\", state: RolledBack { reason: \"probation failed\" } } (UpgradeStateV2 variant 5)",
            AgentMessageV2::UpgradeStatus {
                offer_id: 3,
                version: "0.3.0".into(),
                state: UpgradeStateV2::RolledBack {
                    reason: "probation failed".into(),
                },
            },
        ),
        (
            "pool_refused",
            "AgentMessageV2::PoolRefused { revision: 7, field: \"configs[0].http.method\", reason: \"bad\" } (v1's bytes)",
            AgentMessageV2::PoolRefused {
                revision: 7,
                field: "configs[0].http.method".into(),
                reason: "bad".into(),
            },
        ),
        (
            "chunk_request",
            "AgentMessageV2::ChunkRequest { offer_id: 3, offset: 1048576 }",
            AgentMessageV2::ChunkRequest {
                offer_id: 3,
                offset: 1_048_576,
            },
        ),
        (
            "trace_result",
            "AgentMessageV2::TraceResult { trace_id: 5, target: 192.0.2.1, hops: [ttl 1 from 10.0.0.254, 3 sent, 3 received, rtt 1/1.2/1.5 ms; ttl 2 no answer, 3 sent; ttl 3 from 2001:db8::1, 3 sent, 2 received, rtt 9/9.5/10 ms], error: Some(\"no answer after ttl 3\") }",
            golden_trace_result(),
        ),
    ]
}

/// The v2 golden server messages: file stem, comment, value.
fn golden_server_messages() -> Vec<(&'static str, &'static str, ServerMessageV2)> {
    vec![
        (
            "welcome",
            "ServerMessageV2::Welcome { protocol_version: 2, server_version: \"0.2.0\", observed_addr: [2001:db8::1]:4433, features: [\"task\", \"trace\", \"upgrade\"] }",
            golden_welcome(),
        ),
        (
            "refused",
            "ServerMessageV2::Refused { reason: VersionMismatch { server: 2, agent: 3 } } (v1's bytes, readable by every agent)",
            ServerMessageV2::Refused {
                reason: RefusalV1::VersionMismatch {
                    server: 2,
                    agent: 3,
                },
            },
        ),
        (
            "target_pool",
            "ServerMessageV2::TargetPool { revision: 7, configs: [the golden v1 HTTP block], files: [its ca_file's contents] } (v1's bytes, then the files; see golden_http_config in core/src/wire/tests.rs)",
            golden_target_pool_v2(),
        ),
        (
            "ack",
            "ServerMessageV2::Ack { seq: 42 } (v1's bytes)",
            ServerMessageV2::Ack { seq: 42 },
        ),
        (
            "task",
            "ServerMessageV2::Task { task_id: 9, command: \"uptime\", timeout_ms: 30000, output_limit_bytes: 65536, expires_at_ms: 1700000060000, signature: Some(bytes 0x00 to 0x3f) }",
            golden_task(),
        ),
        (
            "upgrade_offer",
            "ServerMessageV2::UpgradeOffer { offer_id: 3, version: \"0.3.0\", size_bytes: 4, sha256: bytes 0x00 to 0x1f, signature: Some(\"untrusted comment: signature\\nRWQ=\\n\"), force: false }",
            ServerMessageV2::UpgradeOffer {
                offer_id: 3,
                version: "0.3.0".into(),
                size_bytes: 4,
                sha256: std::array::from_fn(|i| u8::try_from(i).unwrap()),
                signature: Some("untrusted comment: signature\nRWQ=\n".into()),
                force: false,
            },
        ),
        (
            "binary_chunk",
            "ServerMessageV2::BinaryChunk { offer_id: 3, offset: 0, bytes: b\"\\x7fELF\" }",
            ServerMessageV2::BinaryChunk {
                offer_id: 3,
                offset: 0,
                bytes: b"\x7fELF".to_vec(),
            },
        ),
        (
            "trace",
            "ServerMessageV2::Trace { trace_id: 5, target: 192.0.2.1, protocol: Udp, max_hops: 30, rounds: 3 }",
            ServerMessageV2::Trace {
                trace_id: 5,
                target: IpAddrV1::V4([192, 0, 2, 1]),
                protocol: TraceProtocolV2::Udp,
                max_hops: 30,
                rounds: 3,
            },
        ),
    ]
}

/// The v2 golden frames: file stem, the `#` comment describing the value, and the frame.
pub(super) fn golden_frames() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let agent = golden_agent_messages()
        .into_iter()
        .map(|(stem, comment, msg)| (stem, comment, frame_of(&msg)));
    let server = golden_server_messages()
        .into_iter()
        .map(|(stem, comment, msg)| (stem, comment, frame_of(&msg)));
    agent
        .chain(server)
        .chain([(
            "upgrade_book",
            "upgrade record (not a frame): rollout 1 of 1.1.0 over eu/198.18.0.1 (downloading) and eu/198.18.0.2 (pending), canary 1, batches of 25%",
            golden_upgrade_book(),
        )])
        .collect()
}

/// A server's upgrade record mid-rollout (`crate::wire::upgrade_book`).
fn golden_upgrade_book() -> Vec<u8> {
    use crate::upgrade::rollout::{Candidate, Release, RolloutRequest, Strategy, UpgradeDesk};
    let t0 = crate::model::UnixMillis::from_secs(1_800_000_000);
    let mut desk = UpgradeDesk::default();
    for n in [1, 2] {
        desk.connected(
            t0,
            Candidate {
                agent: crate::model::AgentId::new(
                    crate::model::Region::new("eu").unwrap(),
                    std::net::IpAddr::from([198, 18, 0, n]),
                ),
                version: "1.0.0".into(),
                instance: u64::from(n),
                protocol_version: 2,
                takes_upgrades: true,
            },
        );
    }
    desk.start(
        t0,
        RolloutRequest {
            release: Release {
                version: "1.1.0".parse().unwrap(),
                size_bytes: 4,
                sha256: [9; 32],
                signature: Some("untrusted comment: sig\nRWQ=\n".into()),
                source: "http://198.18.0.9/probermesh".into(),
            },
            force: false,
            strategy: Strategy::default(),
            regions: Some(crate::matcher::RegionMatcher::new("=~", "e.*").unwrap()),
            actor: "admin".into(),
            remote: "127.0.0.1:4000".into(),
        },
    )
    .unwrap();
    desk.to_record()
}

fn frame_of<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    encode_frame(msg, DEFAULT_MAX_FRAME_LEN).unwrap()
}

/// Malformed v2 seeds for the corpus.
pub(super) fn malformed_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut short_signature = golden_task();
    if let ServerMessageV2::Task { signature, .. } = &mut short_signature {
        *signature = Some(vec![0; 63]);
    }
    let zero_hops = ServerMessageV2::Trace {
        trace_id: 1,
        target: IpAddrV1::V4([192, 0, 2, 1]),
        protocol: TraceProtocolV2::Icmp,
        max_hops: 0,
        rounds: 1,
    };
    let mut hello_v3 = frame_of(&golden_hello());
    hello_v3[LEN_PREFIX_BYTES + 1] = 3;
    vec![
        ("malformed-v2-hello-version-3", hello_v3),
        (
            "malformed-v2-task-short-signature",
            frame_of(&short_signature),
        ),
        ("malformed-v2-trace-zero-hops", frame_of(&zero_hops)),
    ]
}

fn read_golden(version: &str, stem: &str) -> Vec<u8> {
    let path = fixtures_dir().join(version).join(format!("{stem}.hex"));
    from_hex(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn body(frame: &[u8]) -> &[u8] {
    &frame[LEN_PREFIX_BYTES..]
}

#[test]
fn golden_v2_frames_decode_to_their_values() {
    for (stem, _, value) in golden_agent_messages() {
        let frame = read_golden("v2", stem);
        assert_eq!(
            decode_frame::<AgentMessageV2>(body(&frame)).unwrap(),
            value,
            "{stem}"
        );
        assert!(value.check_limits().is_ok(), "{stem}");
    }
    for (stem, _, value) in golden_server_messages() {
        let frame = read_golden("v2", stem);
        assert_eq!(
            decode_frame::<ServerMessageV2>(body(&frame)).unwrap(),
            value,
            "{stem}"
        );
        assert!(value.check_limits().is_ok(), "{stem}");
    }
}

#[test]
fn the_variants_v2_keeps_have_the_v1_bytes() {
    for stem in ["heartbeat", "result_batch", "pool_refused", "ack"] {
        assert_eq!(read_golden("v2", stem), read_golden("v1", stem), "{stem}");
    }
    // v2's pool is v1's, then the files its blocks name.
    let (v1_pool, v2_pool) = (
        read_golden("v1", "target_pool"),
        read_golden("v2", "target_pool"),
    );
    assert!(body(&v2_pool).starts_with(body(&v1_pool)));
    assert!(body(&v2_pool).len() > body(&v1_pool).len());
    let v1_refused = frame_of(&ServerMessage::Refused {
        reason: RefusalV1::VersionMismatch {
            server: 2,
            agent: 3,
        },
    });
    assert_eq!(read_golden("v2", "refused"), v1_refused);
    assert_eq!(
        read_golden("v2", "pool_request"),
        frame_of(&AgentMessage::PoolRequest { known_revision: 7 })
    );
    let task_result = decode_frame::<AgentMessageV2>(body(&read_golden("v2", "task_result")));
    let AgentMessageV2::TaskResult {
        task_id,
        exit_code,
        timed_out,
        stdout,
        stderr,
        truncated,
        duration_ms,
    } = task_result.unwrap()
    else {
        panic!("not a task result");
    };
    assert_eq!(
        read_golden("v2", "task_result"),
        frame_of(&AgentMessage::TaskResult {
            task_id,
            exit_code,
            timed_out,
            stdout,
            stderr,
            truncated,
            duration_ms,
        })
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_borrowed_batch_encodes_like_the_owned_v2_one(
        seq in any::<u64>(),
        results in vec(arb_result(), 0..4),
        split in any::<prop::sample::Index>(),
    ) {
        let split = split.index(results.len() + 1);
        let borrowed =
            encode_result_batch_frame(seq, &results[..split], &results[split..], DEFAULT_MAX_FRAME_LEN)
                .unwrap();
        let owned = frame_of(&AgentMessageV2::ResultBatch { seq, results });
        prop_assert_eq!(borrowed, owned);
    }
}

#[test]
fn a_v1_only_server_cannot_decode_a_v2_hello() {
    // What every release before v2 does with the first frame: decode it as a v1 message.
    let frame = read_golden("v2", "hello");
    assert!(matches!(
        decode_frame::<AgentMessage>(body(&frame)),
        Err(WireError::TrailingBytes { .. })
    ));
}

// === Versions ===

#[test]
fn protocol_versions_have_their_numbers_and_names() {
    for (version, number, name) in [
        (ProtocolVersion::V1, 1, "v1"),
        (ProtocolVersion::V2, 2, "v2"),
    ] {
        assert_eq!(version.as_u16(), number);
        assert_eq!(ProtocolVersion::from_u16(number), Some(version));
        assert_eq!(version.to_string(), name);
    }
    assert_eq!(ProtocolVersion::from_u16(0), None);
    assert_eq!(ProtocolVersion::from_u16(3), None);
    assert_eq!(ProtocolVersion::LATEST, ProtocolVersion::V2);
    assert!(ProtocolVersion::V1 < ProtocolVersion::V2);
}

// === The handshake ===

fn domain_hello(version: ProtocolVersion) -> Hello {
    Hello {
        protocol_version: version,
        agent_version: if version == ProtocolVersion::V1 {
            "0.1.0".into()
        } else {
            "0.2.0".into()
        },
        region: "cn-shanghai".into(),
        ip: IpAddr::from([10, 0, 0, 1]),
        instance_id: 0x0123_4567_89ab_cdef,
        token: WireSecret::new("s3cret".into()),
        features: features().into_iter().collect(),
    }
}

#[test]
fn hellos_encode_to_the_golden_frames_of_their_version() {
    // v1 cannot carry features: they are dropped.
    assert_eq!(
        encode_hello(&domain_hello(ProtocolVersion::V1)).unwrap(),
        read_golden("v1", "hello")
    );
    assert_eq!(
        encode_hello(&domain_hello(ProtocolVersion::V2)).unwrap(),
        read_golden("v2", "hello")
    );
}

#[test]
fn decode_hello_reads_the_version_offered() {
    let v1 = decode_hello(body(&read_golden("v1", "hello"))).unwrap();
    assert_eq!(
        v1,
        Hello {
            features: BTreeSet::new(),
            ..domain_hello(ProtocolVersion::V1)
        }
    );
    assert_eq!(v1.capabilities(), Capabilities::v1());

    let v2 = decode_hello(body(&read_golden("v2", "hello"))).unwrap();
    assert_eq!(v2, domain_hello(ProtocolVersion::V2));
    let capabilities = v2.capabilities();
    assert_eq!(capabilities.protocol_version, 2);
    for name in [feature::TASK, feature::UPGRADE, feature::TRACE] {
        assert!(capabilities.has(name), "{name}");
    }
}

#[test]
fn decode_hello_refuses_other_versions_and_other_messages() {
    // Variant 0, version 3, then whatever a v3 hello holds: only the first two fields count.
    let err = decode_hello(&[0, 3, 0xde, 0xad, 0xbe, 0xef]).unwrap_err();
    assert_eq!(err, HelloError::UnsupportedVersion { version: 3 });
    assert_eq!(
        err.refusal(),
        Some(RefusalV1::VersionMismatch {
            server: 2,
            agent: 3
        })
    );
    // Version 300 is the varint ac 02.
    assert_eq!(
        decode_hello(&[0, 0xac, 0x02]),
        Err(HelloError::UnsupportedVersion { version: 300 })
    );
    assert_eq!(
        decode_hello(&[0, 0]),
        Err(HelloError::UnsupportedVersion { version: 0 })
    );

    let heartbeat = read_golden("v1", "heartbeat");
    let err = decode_hello(body(&heartbeat)).unwrap_err();
    assert!(
        matches!(&err, HelloError::Wire(WireError::Invalid { field, .. }) if field == "hello"),
        "{err:?}"
    );
    assert_eq!(err.refusal(), None);
    assert_eq!(
        err.to_string(),
        "invalid hello: the first message must be a Hello (variant 0), not variant 1"
    );

    for bad in [&[][..], &[0][..], &[0, 0x80][..]] {
        assert!(
            matches!(
                decode_hello(bad),
                Err(HelloError::Wire(WireError::Decode(_)))
            ),
            "{bad:?}"
        );
    }
    // A v2 hello claiming version 1 has v2's trailing features.
    let mut mislabelled = golden_hello();
    if let AgentMessageV2::Hello {
        protocol_version, ..
    } = &mut mislabelled
    {
        *protocol_version = 1;
    }
    assert!(matches!(
        decode_hello(body(&frame_of(&mislabelled))),
        Err(HelloError::Wire(WireError::TrailingBytes { .. }))
    ));
    // A truncated v2 hello.
    let frame = read_golden("v2", "hello");
    assert!(matches!(
        decode_hello(&body(&frame)[..20]),
        Err(HelloError::Wire(WireError::Decode(_)))
    ));
}

#[test]
fn decode_hello_checks_the_limits() {
    let mut hello = golden_hello();
    if let AgentMessageV2::Hello { features, .. } = &mut hello {
        features.push("x".repeat(MAX_FEATURE_LEN + 1));
    }
    let err = decode_hello(body(&frame_of(&hello))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid hello.features[3]: length 65 exceeds the limit of 64"
    );
    let mut long = domain_hello(ProtocolVersion::V2);
    long.features.insert("y".repeat(MAX_FEATURE_LEN + 1));
    assert!(matches!(
        encode_hello(&long),
        Err(WireError::Invalid { field, .. }) if field.starts_with("hello.features[")
    ));
}

fn domain_welcome(version: ProtocolVersion) -> Welcome {
    Welcome {
        protocol_version: version,
        server_version: if version == ProtocolVersion::V1 {
            "0.1.0".into()
        } else {
            "0.2.0".into()
        },
        observed_addr: "[2001:db8::1]:4433".parse().unwrap(),
        features: features().into_iter().collect(),
    }
}

#[test]
fn welcomes_encode_to_the_golden_frames_and_decode_as_answers() {
    assert_eq!(
        encode_welcome(&domain_welcome(ProtocolVersion::V1)).unwrap(),
        read_golden("v1", "welcome")
    );
    assert_eq!(
        encode_welcome(&domain_welcome(ProtocolVersion::V2)).unwrap(),
        read_golden("v2", "welcome")
    );
    let Answer::Welcome(v1) =
        decode_answer(ProtocolVersion::V1, body(&read_golden("v1", "welcome"))).unwrap()
    else {
        panic!("not a welcome");
    };
    assert_eq!(
        v1,
        Welcome {
            features: BTreeSet::new(),
            ..domain_welcome(ProtocolVersion::V1)
        }
    );
    assert_eq!(v1.capabilities(), Capabilities::v1());
    let Answer::Welcome(v2) =
        decode_answer(ProtocolVersion::V2, body(&read_golden("v2", "welcome"))).unwrap()
    else {
        panic!("not a welcome");
    };
    assert_eq!(v2, domain_welcome(ProtocolVersion::V2));
    assert!(v2.capabilities().has(feature::UPGRADE));
}

#[test]
fn refusals_are_readable_in_every_version() {
    for reason in [
        RefusalV1::BadToken,
        RefusalV1::VersionMismatch {
            server: 1,
            agent: 2,
        },
        RefusalV1::Other("maintenance".into()),
    ] {
        let frame = encode_refused(&reason).unwrap();
        for version in ProtocolVersion::ALL {
            assert_eq!(
                decode_answer(version, body(&frame)).unwrap(),
                Answer::Refused(reason.clone()),
                "{version}"
            );
        }
    }
    assert_eq!(
        encode_refused(&RefusalV1::VersionMismatch {
            server: 2,
            agent: 3
        })
        .unwrap(),
        read_golden("v2", "refused")
    );
    // A long text is cut, not refused.
    let frame = encode_refused(&RefusalV1::Other("é".repeat(MAX_TEXT_LEN))).unwrap();
    let Ok(Answer::Refused(RefusalV1::Other(text))) =
        decode_answer(ProtocolVersion::V2, body(&frame))
    else {
        panic!("not a refusal");
    };
    assert_eq!(text.len(), MAX_TEXT_LEN);
}

#[test]
fn answers_are_only_welcome_or_refused_in_the_offered_version() {
    let ack = read_golden("v2", "ack");
    for version in ProtocolVersion::ALL {
        assert_eq!(
            decode_answer(version, body(&ack)).unwrap_err().to_string(),
            "invalid message: the answer to a hello must be Welcome or Refused"
        );
    }
    // A v1 welcome to a v2 hello (or the other way round) is not an answer.
    assert!(matches!(
        decode_answer(ProtocolVersion::V2, body(&read_golden("v1", "welcome"))),
        Err(WireError::Decode(_))
    ));
    assert!(matches!(
        decode_answer(ProtocolVersion::V1, body(&read_golden("v2", "welcome"))),
        Err(WireError::TrailingBytes { .. })
    ));
    let mut mislabelled = golden_welcome();
    if let ServerMessageV2::Welcome {
        protocol_version, ..
    } = &mut mislabelled
    {
        *protocol_version = 3;
    }
    assert_eq!(
        decode_answer(ProtocolVersion::V2, body(&frame_of(&mislabelled)))
            .unwrap_err()
            .to_string(),
        "invalid welcome.protocol_version: 3 in answer to a v2 hello"
    );
}

#[test]
fn capabilities_of_v1_never_have_features() {
    let names: BTreeSet<String> = features().into_iter().collect();
    assert_eq!(
        capabilities(ProtocolVersion::V1, &names),
        Capabilities::v1()
    );
    assert_eq!(
        capabilities(ProtocolVersion::V2, &names),
        Capabilities {
            protocol_version: 2,
            features: names,
        }
    );
}

// === Domain messages through both versions ===

fn arb_text_up_to(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!(".{{0,{max}}}")).unwrap()
}

fn arb_upgrade_state() -> impl Strategy<Value = UpgradeState> {
    prop_oneof![
        any::<u64>().prop_map(|received_bytes| UpgradeState::Downloading { received_bytes }),
        Just(UpgradeState::Verified),
        Just(UpgradeState::Applied),
        arb_text().prop_map(|reason| UpgradeState::Failed { reason }),
        Just(UpgradeState::Committed),
        arb_text().prop_map(|reason| UpgradeState::RolledBack { reason }),
    ]
}

fn arb_trace_hop() -> impl Strategy<Value = TraceHop> {
    (
        any::<u8>(),
        option::of(any::<IpAddr>()),
        any::<u32>(),
        any::<u32>(),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
    )
        .prop_map(
            |(ttl, addr, sent, received, best, mean, worst, stddev)| TraceHop {
                ttl,
                addr,
                sent,
                received,
                rtt_best: best.map(Duration::from_nanos),
                rtt_mean: mean.map(Duration::from_nanos),
                rtt_worst: worst.map(Duration::from_nanos),
                rtt_stddev: stddev.map(Duration::from_nanos),
            },
        )
}

fn arb_from_agent() -> impl Strategy<Value = FromAgent> {
    prop_oneof![
        any::<u64>().prop_map(|ms| FromAgent::Heartbeat {
            sent_at: UnixMillis(ms)
        }),
        (any::<u64>(), vec(arb_probe_result(), 0..3)).prop_map(|(seq, results)| {
            // The source of a result is the connection's agent.
            let results = results
                .into_iter()
                .map(|r| ProbeResult {
                    source: source(),
                    ..r
                })
                .collect();
            FromAgent::Results { seq, results }
        }),
        any::<u64>().prop_map(|known_revision| FromAgent::PoolRequest { known_revision }),
        (any::<u64>(), arb_text(), arb_text()).prop_map(|(revision, field, reason)| {
            FromAgent::PoolRefused {
                revision,
                field,
                reason,
            }
        }),
        (
            any::<u64>(),
            option::of(any::<i32>()),
            vec(any::<u8>(), 0..32),
            vec(any::<u8>(), 0..32),
            any::<[bool; 2]>(),
            0..u64::MAX / 2,
        )
            .prop_map(
                |(task_id, exit_code, stdout, stderr, [truncated, timed_out], ms)| {
                    FromAgent::TaskResult {
                        task_id,
                        output: TaskOutput {
                            exit_code,
                            stdout,
                            stderr,
                            truncated,
                            timed_out,
                            duration: Duration::from_millis(ms),
                        },
                    }
                }
            ),
        (any::<u64>(), arb_text(), arb_upgrade_state()).prop_map(|(offer_id, version, state)| {
            FromAgent::UpgradeStatus {
                offer_id,
                version,
                state,
            }
        }),
        any::<(u64, u64)>()
            .prop_map(|(offer_id, offset)| FromAgent::ChunkRequest { offer_id, offset }),
        (
            any::<u64>(),
            any::<IpAddr>(),
            vec(arb_trace_hop(), 0..5),
            option::of(arb_text())
        )
            .prop_map(
                |(id, target, hops, error)| FromAgent::TraceResult(TraceReport {
                    id,
                    target,
                    hops,
                    error
                })
            ),
    ]
}

fn arb_task() -> impl Strategy<Value = TaskSpec> {
    (
        any::<u64>(),
        arb_text(),
        0..u64::MAX / 2,
        0..=MAX_TASK_OUTPUT_LEN,
        any::<u64>(),
        option::of(vec(any::<u8>(), TASK_SIGNATURE_LEN)),
        (0usize..4, arb_text()),
    )
        .prop_map(
            |(
                id,
                command,
                timeout_ms,
                output_limit_bytes,
                expires_at_ms,
                signature,
                (op, pattern),
            )| TaskSpec {
                id,
                command,
                timeout: Duration::from_millis(timeout_ms),
                output_limit_bytes,
                expires_at: UnixMillis(expires_at_ms),
                region_op: [MatchOp::Eq, MatchOp::Ne, MatchOp::Re, MatchOp::NotRe][op],
                region_pattern: pattern,
                signature: signature.map(|bytes| Signature(bytes.try_into().unwrap())),
            },
        )
}

fn arb_to_agent() -> impl Strategy<Value = ToAgent> {
    prop_oneof![
        (any::<u64>(), vec(arb_probe_config(), 0..3)).prop_map(|(revision, configs)| {
            ToAgent::Pool {
                revision,
                configs: Arc::new(configs),
            }
        }),
        any::<u64>().prop_map(|seq| ToAgent::Ack { seq }),
        arb_task().prop_map(ToAgent::Task),
        (
            any::<u64>(),
            arb_text(),
            any::<u64>(),
            any::<[u8; 32]>(),
            option::of(arb_text_up_to(40)),
            any::<bool>(),
        )
            .prop_map(
                |(offer_id, version, size_bytes, sha256, signature, force)| {
                    ToAgent::UpgradeOffer {
                        offer_id,
                        plan: UpgradePlan {
                            version,
                            size_bytes,
                            sha256,
                            signature,
                            force,
                        },
                    }
                }
            ),
        (any::<u64>(), any::<u64>(), vec(any::<u8>(), 0..64)).prop_map(
            |(offer_id, offset, bytes)| ToAgent::BinaryChunk {
                offer_id,
                offset,
                bytes: Arc::from(bytes),
            }
        ),
        (
            any::<u64>(),
            any::<IpAddr>(),
            prop_oneof![
                Just(TraceProtocol::Icmp),
                Just(TraceProtocol::Udp),
                Just(TraceProtocol::Tcp)
            ],
            1..=MAX_TRACE_TTL,
            1..=MAX_TRACE_ROUNDS
        )
            .prop_map(|(id, target, protocol, max_hops, rounds)| {
                ToAgent::Trace(TraceRequest {
                    id,
                    target,
                    protocol,
                    max_hops,
                    rounds,
                })
            }),
    ]
}

/// Whether v1 carries the message from an agent, and as what it arrives.
fn through_v1(message: &FromAgent) -> Option<FromAgent> {
    match message {
        FromAgent::ChunkRequest { .. } | FromAgent::TraceResult(_) => None,
        FromAgent::UpgradeStatus {
            state: UpgradeState::Committed | UpgradeState::RolledBack { .. },
            ..
        } => None,
        // v1 does not say how far a download is.
        FromAgent::UpgradeStatus {
            offer_id,
            version,
            state: UpgradeState::Downloading { .. },
        } => Some(FromAgent::UpgradeStatus {
            offer_id: *offer_id,
            version: version.clone(),
            state: UpgradeState::Downloading { received_bytes: 0 },
        }),
        other => Some(other.clone()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn messages_from_agents_survive_both_versions(message in arb_from_agent()) {
        let frame = encode_to_server(ProtocolVersion::V2, &message, DEFAULT_MAX_FRAME_LEN).unwrap();
        let back = decode_from_agent(ProtocolVersion::V2, body(&frame), &source()).unwrap();
        prop_assert_eq!(&back, &message);

        let v1 = encode_to_server(ProtocolVersion::V1, &message, DEFAULT_MAX_FRAME_LEN);
        match through_v1(&message) {
            Some(expected) => {
                let back = decode_from_agent(ProtocolVersion::V1, body(&v1.unwrap()), &source()).unwrap();
                prop_assert_eq!(back, expected);
            }
            None => {
                let err = v1.unwrap_err();
                prop_assert!(
                    err.to_string().ends_with("not part of protocol v1 (the peer speaks v1 only)"),
                    "{}", err
                );
            }
        }
    }

    #[test]
    fn messages_to_agents_survive_both_versions(message in arb_to_agent()) {
        // As a server sends it: every file the pool names read.
        let message = with_tls_contents(message, true);
        let frame = encode_to_agent(ProtocolVersion::V2, &message, DEFAULT_MAX_FRAME_LEN).unwrap();
        let back = decode_from_server(ProtocolVersion::V2, body(&frame)).unwrap();
        prop_assert_eq!(&back, &message);

        let v1 = encode_to_agent(ProtocolVersion::V1, &message, DEFAULT_MAX_FRAME_LEN);
        if matches!(message, ToAgent::Pool { .. } | ToAgent::Ack { .. }) {
            let back = decode_from_server(ProtocolVersion::V1, body(&v1.unwrap())).unwrap();
            // v1 carries the TLS files' paths only.
            prop_assert_eq!(back, with_tls_contents(message, false));
        } else {
            let err = v1.unwrap_err();
            prop_assert_eq!(
                err,
                WireError::Invalid {
                    field: message.kind().into(),
                    reason: "not part of protocol v1 (the peer speaks v1 only)".into(),
                }
            );
        }
    }

    #[test]
    fn a_task_signs_what_the_agent_receives(task in arb_task()) {
        let frame = encode_to_agent(ProtocolVersion::V2, &ToAgent::Task(task.clone()), DEFAULT_MAX_FRAME_LEN).unwrap();
        let Ok(ToAgent::Task(received)) = decode_from_server(ProtocolVersion::V2, body(&frame)) else {
            panic!("not a task");
        };
        prop_assert_eq!(task_signing_bytes(&received), task_signing_bytes(&task));
        prop_assert!(task_signing_bytes(&task).starts_with(TASK_SIGNING_PREFIX));
    }
}

#[test]
fn v1_refuses_the_v2_only_messages_by_name() {
    let task = ToAgent::Task(TaskSpec {
        id: 1,
        command: "true".into(),
        timeout: Duration::from_secs(1),
        output_limit_bytes: 1,
        expires_at: UnixMillis(1),
        region_op: MatchOp::Re,
        region_pattern: ".*".into(),
        signature: None,
    });
    let chunk = ToAgent::BinaryChunk {
        offer_id: 1,
        offset: 0,
        bytes: Arc::from(&b""[..]),
    };
    for (message, name) in [(&task, "Task"), (&chunk, "BinaryChunk")] {
        assert_eq!(
            encode_to_agent(ProtocolVersion::V1, message, DEFAULT_MAX_FRAME_LEN)
                .unwrap_err()
                .to_string(),
            format!("invalid {name}: not part of protocol v1 (the peer speaks v1 only)")
        );
    }
    let trace = FromAgent::TraceResult(TraceReport {
        id: 1,
        target: IpAddr::from([192, 0, 2, 1]),
        hops: Vec::new(),
        error: None,
    });
    assert_eq!(
        encode_to_server(ProtocolVersion::V1, &trace, DEFAULT_MAX_FRAME_LEN)
            .unwrap_err()
            .to_string(),
        "invalid TraceResult: not part of protocol v1 (the peer speaks v1 only)"
    );
    let committed = FromAgent::UpgradeStatus {
        offer_id: 1,
        version: "0.3.0".into(),
        state: UpgradeState::Committed,
    };
    assert_eq!(
        encode_to_server(ProtocolVersion::V1, &committed, DEFAULT_MAX_FRAME_LEN)
            .unwrap_err()
            .to_string(),
        "invalid upgrade_status.state: not part of protocol v1 (the peer speaks v1 only)"
    );
    // Coming in, a v1 Task (which no server ever sent) is refused too.
    let v1_task = frame_of(&ServerMessage::Task {
        task_id: 1,
        command: "true".into(),
        timeout_ms: 1,
        output_limit_bytes: 1,
    });
    assert_eq!(
        decode_from_server(ProtocolVersion::V1, body(&v1_task))
            .unwrap_err()
            .to_string(),
        "invalid task: not part of protocol v1 (the peer speaks v1 only)"
    );
}

#[test]
fn handshake_messages_after_the_handshake_are_refused() {
    for version in ProtocolVersion::ALL {
        let hello = if version == ProtocolVersion::V1 {
            read_golden("v1", "hello")
        } else {
            read_golden("v2", "hello")
        };
        assert_eq!(
            decode_from_agent(version, body(&hello), &source())
                .unwrap_err()
                .to_string(),
            "invalid hello: a second Hello"
        );
        let welcome = read_golden(&version.to_string(), "welcome");
        assert_eq!(
            decode_from_server(version, body(&welcome))
                .unwrap_err()
                .to_string(),
            "invalid message: a handshake message after the handshake"
        );
    }
}

#[test]
fn frames_in_the_wrong_version_or_with_trailing_bytes_are_refused() {
    let mut frame = read_golden("v2", "chunk_request");
    frame.push(0);
    assert_eq!(
        decode_from_agent(ProtocolVersion::V2, body(&frame), &source()),
        Err(WireError::TrailingBytes { n_trailing: 1 })
    );
    // Variant 7 does not exist in v1's AgentMessage.
    assert!(matches!(
        decode_from_agent(
            ProtocolVersion::V1,
            body(&read_golden("v2", "chunk_request")),
            &source()
        ),
        Err(WireError::Decode(_))
    ));
    assert!(matches!(
        decode_from_server(ProtocolVersion::V1, body(&read_golden("v2", "trace"))),
        Err(FromServerError::Wire(WireError::Decode(_)))
    ));
}

#[test]
fn an_invalid_pool_names_its_revision_in_both_versions() {
    let v1 = read_golden("v1", "target_pool");
    let v2 = read_golden("v2", "target_pool");
    for (version, frame) in [(ProtocolVersion::V1, &v1), (ProtocolVersion::V2, &v2)] {
        let err = decode_from_server(version, body(frame)).unwrap_err();
        let FromServerError::InvalidPool { revision, error } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(*revision, 7);
        assert!(
            matches!(error, WireError::Invalid { field, .. } if field == "configs[0].http.http_client_config"),
            "{error:?}"
        );
        assert!(
            err.to_string().starts_with(
                "target pool revision 7 refused: invalid configs[0].http.http_client_config"
            ),
            "{err}"
        );
    }
    // A v2 pool must bring the contents of the files it names: the agent does not read them.
    let without_file = ServerMessageV2::TargetPool {
        revision: 8,
        configs: vec![valid_http_config()],
        files: Vec::new(),
    };
    let err = decode_from_server(ProtocolVersion::V2, body(&frame_of(&without_file))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "target pool revision 8 refused: invalid configs[0].http.http_client_config.tls_config.ca_file: \
         the server sent no contents for \"/etc/probermesh/ca.pem\" (an agent does not read files the server names)"
    );
    let valid = ServerMessageV2::TargetPool {
        revision: 8,
        configs: vec![valid_http_config()],
        files: vec![PoolFileV2 {
            path: "/etc/probermesh/ca.pem".into(),
            contents: WireSecret::new("PEM".into()),
        }],
    };
    let Ok(ToAgent::Pool {
        revision: 8,
        configs,
    }) = decode_from_server(ProtocolVersion::V2, body(&frame_of(&valid)))
    else {
        panic!("a valid v2 pool");
    };
    let crate::model::ProbeModule::Http(http) = &configs[0].module else {
        panic!("an HTTP block");
    };
    let ca_file = http.client.tls.ca_file.as_ref().unwrap();
    assert_eq!(ca_file.contents().map(|c| c.expose()), Some("PEM"));
}

// === Limits ===

#[track_caller]
fn assert_limit(ok: Result<(), WireError>, over: Result<(), WireError>, expected: &str) {
    assert_eq!(ok, Ok(()), "at the limit");
    assert_invalid(over, expected);
}

fn hello_with(features: Vec<String>) -> AgentMessageV2 {
    let AgentMessageV2::Hello {
        protocol_version,
        agent_version,
        region,
        ip,
        instance_id,
        token,
        ..
    } = golden_hello()
    else {
        unreachable!()
    };
    AgentMessageV2::Hello {
        protocol_version,
        agent_version,
        region,
        ip,
        instance_id,
        token,
        features,
    }
}

fn welcome_with(features: Vec<String>) -> ServerMessageV2 {
    ServerMessageV2::Welcome {
        protocol_version: 2,
        server_version: "0.2.0".into(),
        observed_addr: SocketAddrV1 {
            ip: IpAddrV1::V4([10, 0, 0, 1]),
            port: 4433,
        },
        features,
    }
}

fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("f{i}")).collect()
}

#[test]
fn feature_lists_are_bounded() {
    assert_limit(
        hello_with(numbered(MAX_FEATURES)).check_limits(),
        hello_with(numbered(MAX_FEATURES + 1)).check_limits(),
        "invalid hello.features: length 33 exceeds the limit of 32",
    );
    assert_limit(
        hello_with(vec!["x".repeat(MAX_FEATURE_LEN)]).check_limits(),
        hello_with(vec!["x".repeat(MAX_FEATURE_LEN + 1)]).check_limits(),
        "invalid hello.features[0]: length 65 exceeds the limit of 64",
    );
    assert_limit(
        welcome_with(numbered(MAX_FEATURES)).check_limits(),
        welcome_with(numbered(MAX_FEATURES + 1)).check_limits(),
        "invalid welcome.features: length 33 exceeds the limit of 32",
    );
    assert_limit(
        welcome_with(vec!["a".into(), "x".repeat(MAX_FEATURE_LEN)]).check_limits(),
        welcome_with(vec!["a".into(), "x".repeat(MAX_FEATURE_LEN + 1)]).check_limits(),
        "invalid welcome.features[1]: length 65 exceeds the limit of 64",
    );
}

fn task_with(edit: impl FnOnce(&mut String, &mut u32, &mut Option<Vec<u8>>)) -> ServerMessageV2 {
    let mut task = golden_task();
    if let ServerMessageV2::Task {
        command,
        output_limit_bytes,
        signature,
        ..
    } = &mut task
    {
        edit(command, output_limit_bytes, signature);
    }
    task
}

#[test]
fn task_fields_are_bounded() {
    let max_output = u32::try_from(MAX_TASK_OUTPUT_LEN).unwrap();
    assert_limit(
        task_with(|c, _, _| *c = "x".repeat(MAX_COMMAND_LEN)).check_limits(),
        task_with(|c, _, _| *c = "x".repeat(MAX_COMMAND_LEN + 1)).check_limits(),
        "invalid task.command: length 65537 exceeds the limit of 65536",
    );
    assert_limit(
        task_with(|_, limit, _| *limit = max_output).check_limits(),
        task_with(|_, limit, _| *limit = max_output + 1).check_limits(),
        "invalid task.output_limit_bytes: length 4194305 exceeds the limit of 4194304",
    );
    assert_eq!(task_with(|_, _, s| *s = None).check_limits(), Ok(()));
    assert_limit(
        task_with(|_, _, s| *s = Some(vec![0; 64])).check_limits(),
        task_with(|_, _, s| *s = Some(vec![0; 65])).check_limits(),
        "invalid task.signature: length 65 is not the 64 bytes of an ed25519 signature",
    );
    assert_invalid(
        task_with(|_, _, s| *s = Some(vec![0; 63])).check_limits(),
        "invalid task.signature: length 63 is not the 64 bytes of an ed25519 signature",
    );
    // Coming in, a bad signature is refused before it reaches the domain.
    assert_invalid(
        from_server_v2(task_with(|_, _, s| *s = Some(Vec::new()))),
        "invalid task.signature: length 0 is not the 64 bytes of an ed25519 signature",
    );
    // Going out, nothing of a task is cut: it is refused.
    let long = ToAgent::Task(TaskSpec {
        id: 1,
        command: "x".repeat(MAX_COMMAND_LEN + 1),
        timeout: Duration::from_secs(1),
        output_limit_bytes: 1,
        expires_at: UnixMillis(1),
        region_op: MatchOp::Re,
        region_pattern: ".*".into(),
        signature: None,
    });
    assert_invalid(
        to_agent_v2(&long),
        "invalid task.command: length 65537 exceeds the limit of 65536",
    );
}

#[test]
fn binary_chunks_are_bounded() {
    let chunk = |len: usize| ServerMessageV2::BinaryChunk {
        offer_id: 1,
        offset: 0,
        bytes: vec![0; len],
    };
    assert_limit(
        chunk(MAX_CHUNK_LEN).check_limits(),
        chunk(MAX_CHUNK_LEN + 1).check_limits(),
        "invalid binary_chunk.bytes: length 1048577 exceeds the limit of 1048576",
    );
    let frame = frame_of(&chunk(MAX_CHUNK_LEN));
    assert!(decode_from_server(ProtocolVersion::V2, body(&frame)).is_ok());
    let too_long = ToAgent::BinaryChunk {
        offer_id: 1,
        offset: 0,
        bytes: Arc::from(vec![0; MAX_CHUNK_LEN + 1]),
    };
    assert!(matches!(
        encode_to_agent(ProtocolVersion::V2, &too_long, DEFAULT_MAX_FRAME_LEN),
        Err(WireError::Invalid { field, .. }) if field == "binary_chunk.bytes"
    ));
}

#[test]
fn upgrade_texts_are_bounded() {
    let offer = |signature: usize| ServerMessageV2::UpgradeOffer {
        offer_id: 1,
        version: "0.3.0".into(),
        size_bytes: 1,
        sha256: [0; 32],
        signature: Some("s".repeat(signature)),
        force: false,
    };
    assert_limit(
        offer(MAX_TEXT_LEN).check_limits(),
        offer(MAX_TEXT_LEN + 1).check_limits(),
        "invalid upgrade_offer.signature: length 8193 exceeds the limit of 8192",
    );
    let status = |reason: usize| AgentMessageV2::UpgradeStatus {
        offer_id: 1,
        version: "0.3.0".into(),
        state: UpgradeStateV2::RolledBack {
            reason: "r".repeat(reason),
        },
    };
    assert_limit(
        status(MAX_TEXT_LEN).check_limits(),
        status(MAX_TEXT_LEN + 1).check_limits(),
        "invalid upgrade_status.state.reason: length 8193 exceeds the limit of 8192",
    );
}

fn hop(ttl: u8) -> TraceHopV2 {
    TraceHopV2 {
        ttl,
        addr: None,
        sent: 1,
        received: 0,
        rtt_best_ns: None,
        rtt_mean_ns: None,
        rtt_worst_ns: None,
        rtt_stddev_ns: None,
    }
}

#[test]
fn traces_are_bounded() {
    let result = |n_hops: usize, error: usize| AgentMessageV2::TraceResult {
        trace_id: 1,
        target: IpAddrV1::V4([192, 0, 2, 1]),
        hops: (0..n_hops)
            .map(|i| hop(u8::try_from(i % 256).unwrap()))
            .collect(),
        error: Some("e".repeat(error)),
    };
    assert_limit(
        result(MAX_TRACE_HOPS, 0).check_limits(),
        result(MAX_TRACE_HOPS + 1, 0).check_limits(),
        "invalid trace_result.hops: length 256 exceeds the limit of 255",
    );
    assert_limit(
        result(1, MAX_TEXT_LEN).check_limits(),
        result(1, MAX_TEXT_LEN + 1).check_limits(),
        "invalid trace_result.error: length 8193 exceeds the limit of 8192",
    );
    let trace = |max_hops: u8, rounds: u16| ServerMessageV2::Trace {
        trace_id: 1,
        target: IpAddrV1::V4([192, 0, 2, 1]),
        protocol: TraceProtocolV2::Icmp,
        max_hops,
        rounds,
    };
    assert_limit(
        trace(1, 1).check_limits(),
        trace(0, 1).check_limits(),
        "invalid trace.max_hops: 0 is outside 1..=64",
    );
    assert_limit(
        trace(MAX_TRACE_TTL, 1).check_limits(),
        trace(MAX_TRACE_TTL + 1, 1).check_limits(),
        "invalid trace.max_hops: 65 is outside 1..=64",
    );
    assert_limit(
        trace(1, 1).check_limits(),
        trace(1, 0).check_limits(),
        "invalid trace.rounds: 0 is outside 1..=1000",
    );
    assert_limit(
        trace(1, MAX_TRACE_ROUNDS).check_limits(),
        trace(1, MAX_TRACE_ROUNDS + 1).check_limits(),
        "invalid trace.rounds: 1001 is outside 1..=1000",
    );
    // Coming in, a trace out of range is refused; going out too.
    assert_invalid(
        from_server_v2(trace(0, 1)),
        "invalid trace.max_hops: 0 is outside 1..=64",
    );
    let request = ToAgent::Trace(TraceRequest {
        id: 1,
        target: IpAddr::from([192, 0, 2, 1]),
        protocol: TraceProtocol::Tcp,
        max_hops: 30,
        rounds: 0,
    });
    assert_invalid(
        to_agent_v2(&request),
        "invalid trace.rounds: 0 is outside 1..=1000",
    );
}

#[test]
fn going_out_an_agent_cuts_its_texts_and_lists() {
    let refused = FromAgent::PoolRefused {
        revision: 1,
        field: "f".repeat(MAX_TEXT_LEN + 1),
        reason: "é".repeat(MAX_TEXT_LEN),
    };
    let Ok(AgentMessageV2::PoolRefused { field, reason, .. }) = to_server_v2(&refused) else {
        panic!("not a refusal");
    };
    assert_eq!(field.len(), MAX_TEXT_LEN);
    assert_eq!(reason.len(), MAX_TEXT_LEN);
    let report = FromAgent::TraceResult(TraceReport {
        id: 1,
        target: IpAddr::from([192, 0, 2, 1]),
        hops: (0..300)
            .map(|i| TraceHop::from(hop(u8::try_from(i % 256).unwrap())))
            .collect(),
        error: Some("e".repeat(MAX_TEXT_LEN + 1)),
    });
    let Ok(AgentMessageV2::TraceResult { hops, error, .. }) = to_server_v2(&report) else {
        panic!("not a trace result");
    };
    assert_eq!(hops.len(), MAX_TRACE_HOPS);
    assert_eq!(error.map(|e| e.len()), Some(MAX_TEXT_LEN));
    let output = FromAgent::TaskResult {
        task_id: 1,
        output: TaskOutput {
            stdout: vec![b'o'; MAX_TASK_OUTPUT_LEN + 1],
            ..TaskOutput::default()
        },
    };
    let Ok(AgentMessageV2::TaskResult {
        stdout, truncated, ..
    }) = to_server_v2(&output)
    else {
        panic!("not a task result");
    };
    assert_eq!(stdout.len(), MAX_TASK_OUTPUT_LEN);
    assert!(truncated);
    let status = FromAgent::UpgradeStatus {
        offer_id: 1,
        version: "0.3.0".into(),
        state: UpgradeState::RolledBack {
            reason: "r".repeat(MAX_TEXT_LEN + 1),
        },
    };
    let Ok(AgentMessageV2::UpgradeStatus {
        state: UpgradeStateV2::RolledBack { reason },
        ..
    }) = to_server_v2(&status)
    else {
        panic!("not a rollback");
    };
    assert_eq!(reason.len(), MAX_TEXT_LEN);
}

// === Task signing bytes ===

/// The task of the golden `task.hex`, in domain terms.
pub(super) fn golden_task_spec() -> TaskSpec {
    let Ok(ToAgent::Task(task)) = from_server_v2(golden_task()) else {
        panic!("not a task");
    };
    task
}

/// `message` with every `tls_config` file of its pool given contents (`read`) or none.
fn with_tls_contents(message: ToAgent, read: bool) -> ToAgent {
    let ToAgent::Pool { revision, configs } = message else {
        return message;
    };
    let configs = configs
        .iter()
        .cloned()
        .map(|mut config| {
            if let crate::model::ProbeModule::Http(http) = &mut config.module {
                let http = std::sync::Arc::make_mut(http);
                for (_, file) in http.client.tls.files_mut() {
                    *file = if read {
                        crate::model::http_module::FileRef::with_contents(
                            file.path(),
                            crate::model::http_module::Secret::new(format!(
                                "PEM of {}",
                                file.path()
                            )),
                        )
                    } else {
                        crate::model::http_module::FileRef::named(file.path())
                    };
                }
            }
            config
        })
        .collect();
    ToAgent::Pool {
        revision,
        configs: std::sync::Arc::new(configs),
    }
}
