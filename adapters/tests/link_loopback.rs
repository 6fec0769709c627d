//! The QUIC link end to end on 127.0.0.1: real agents (`AgentLink`) and hand-made QUIC clients
//! against a real `ReportServer`. Each test asserts what reaches the server's event queue,
//! what the agent sees, and how bad peers are closed; timeouts are only hang guards.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use probermesh_adapters::link::{
    AgentLink, CertificateSource, CloseCode, ReportServer, ServerVerification, Sha256Fingerprint,
    describe_refusal,
};
use probermesh_adapters::secret::Token;
use probermesh_core::link::{
    Capabilities, FromAgent, FromServer, Signature, TaskOutput, TaskSpec, ToAgent, TraceHop,
    TraceProtocol, TraceReport, TraceRequest, UpgradePlan, UpgradeState,
};
use probermesh_core::model::AgentId;
use probermesh_core::model::{
    IcmpModule, ProbeConfig, ProbeKind, ProbeModule, Region, Target, UnixMillis,
};
use probermesh_core::ports::{LinkError, LinkEvent, ReportSource, ServerLink};
use probermesh_core::wire::{
    AgentMessage, Hello, ProtocolVersion, RefusalV1, ServerMessage, decode_hello, encode_frame,
};

mod common;

use common::link::*;
use common::{TempDir, capture_logs};

// === the happy path ===

#[tokio::test]
async fn results_flow_with_acks_pool_sync_heartbeats_and_the_observed_address() {
    let dir = TempDir::new("flow");
    let server = new_server(&dir).await;
    let (recorded, _task) = record(&server);
    let agent = start_agent(agent_config(server.local_addr(), "eu", pinned(&server)));

    // The agent introduces itself; the server sees its address and tells it.
    eventually("Connected", || !recorded.connected().is_empty()).await;
    let (id, observed) = recorded.connected()[0].clone();
    assert_eq!(id, agent_id("eu", "10.0.0.1"));
    assert_eq!(observed.ip(), "127.0.0.1".parse::<IpAddr>().expect("ip"));
    let welcome = guarded("Welcome", agent.recv()).await.expect("welcome");
    assert_eq!(
        welcome,
        FromServer::Welcomed {
            server_version: "0.1.0-test".into(),
            // Both ends speak v2; the server offers no feature yet.
            capabilities: Capabilities {
                protocol_version: 2,
                ..Capabilities::default()
            },
            observed_addr: observed,
        }
    );

    // It asks for the pool and says it is alive (what it says and when is AgentState's).
    agent
        .send(FromAgent::PoolRequest { known_revision: 0 })
        .await
        .expect("send a pool request");
    agent
        .send(FromAgent::Heartbeat {
            sent_at: UnixMillis(1),
        })
        .await
        .expect("send a heartbeat");
    eventually("PoolRequest and Heartbeat", || {
        let events = recorded.events();
        let has = |f: fn(&FromAgent) -> bool| {
            events
                .iter()
                .any(|e| matches!(e, LinkEvent::Message { message, .. } if f(message)))
        };
        has(|m| matches!(m, FromAgent::PoolRequest { known_revision: 0 }))
            && has(|m| matches!(m, FromAgent::Heartbeat { .. }))
    })
    .await;

    // The server pushes a pool; the agent gets it, validated.
    let connection = match &recorded.events()[0] {
        LinkEvent::Connected { connection, .. } => *connection,
        other => panic!("first event is not Connected: {other:?}"),
    };
    let config = |interval: Duration| ProbeConfig {
        region: Region::new("us").expect("region"),
        targets: vec![Target::parse(ProbeKind::Icmp, "10.0.1.1").expect("target")],
        module: ProbeModule::Icmp(IcmpModule {
            packet_count: 3,
            interval,
            payload_size: 56,
        }),
    };
    let configs = vec![config(Duration::from_secs(1))];
    server
        .send_to(
            connection,
            ToAgent::Pool {
                revision: 7,
                configs: Arc::new(configs.clone()),
            },
        )
        .await
        .expect("push the pool");
    let pushed = guarded("TargetPool", agent.recv()).await.expect("pool");
    assert_eq!(
        pushed,
        FromServer::Message(ToAgent::Pool {
            revision: 7,
            configs: Arc::new(configs.clone()),
        })
    );

    // A pool the agent cannot accept (an echo interval of zero): it keeps the previous one
    // and tells the server which field is wrong.
    server
        .send_to(
            connection,
            ToAgent::Pool {
                revision: 8,
                configs: Arc::new(vec![config(Duration::ZERO)]),
            },
        )
        .await
        .expect("push the bad pool");
    // The link says which field is wrong; the agent tells the server (AgentState decides).
    let refused = guarded("the invalid pool", agent.recv())
        .await
        .expect("an invalid pool");
    let FromServer::InvalidPool {
        revision: 8,
        field,
        reason,
    } = refused
    else {
        panic!("expected InvalidPool for revision 8, got {refused:?}");
    };
    assert_eq!(field, "configs[0].icmp.interval");
    assert!(reason.contains("more than 0"), "{reason}");
    agent
        .send(FromAgent::PoolRefused {
            revision: 8,
            field,
            reason,
        })
        .await
        .expect("send the refusal");
    eventually("the agent's PoolRefused", || {
        recorded.events().iter().any(|e| {
            matches!(
                e,
                LinkEvent::Message {
                    message: FromAgent::PoolRefused { revision: 8, field, .. },
                    ..
                } if field == "configs[0].icmp.interval"
            )
        })
    })
    .await;

    // Results arrive once each, in batches with increasing seq, and are acknowledged.
    agent.enqueue_results(results(0..2_500));
    eventually("2,500 results", || recorded.result_ids().len() >= 2_500).await;
    eventually("every batch acknowledged", || {
        agent.stats().outbox.buffered_results == 0
    })
    .await;
    assert_eq!(recorded.result_ids(), (0..2_500).collect::<Vec<_>>());
    let seqs: Vec<u64> = recorded
        .events()
        .iter()
        .filter_map(|e| match e {
            LinkEvent::Message {
                message: FromAgent::Results { seq, .. },
                ..
            } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    let stats = agent.stats();
    assert_eq!(stats.outbox.acked_results, 2_500);
    assert_eq!(stats.outbox.dropped_results, 0);
    assert!(stats.connected);

    // Control messages go through `send`; the link's own messages do not.
    agent
        .send(FromAgent::PoolRequest { known_revision: 7 })
        .await
        .expect("send");
    assert!(matches!(
        agent
            .send(FromAgent::Results {
                seq: 1,
                results: vec![]
            })
            .await,
        Err(LinkError::Protocol { .. })
    ));
    eventually("the second PoolRequest", || {
        recorded.events().iter().any(|e| {
            matches!(
                e,
                LinkEvent::Message {
                    message: FromAgent::PoolRequest { known_revision: 7 },
                    ..
                }
            )
        })
    })
    .await;

    // Task, upgrade, chunk and trace messages (v2) are carried both ways, unchanged.
    let task = ToAgent::Task(TaskSpec {
        id: 9,
        command: "mtr -c 10 198.18.0.9".into(),
        timeout: Duration::from_secs(30),
        output_limit_bytes: 4_096,
        expires_at: UnixMillis(1_800_000_000_000),
        region_op: probermesh_core::matcher::MatchOp::Re,
        region_pattern: ".*".into(),
        signature: Some(Signature([5; 64])),
    });
    server
        .send_to(connection, task.clone())
        .await
        .expect("task");
    assert_eq!(
        guarded("Task", agent.recv()).await.expect("task"),
        FromServer::Message(task)
    );
    let offer = ToAgent::UpgradeOffer {
        offer_id: 3,
        plan: UpgradePlan {
            version: "0.2.0".into(),
            size_bytes: 4,
            sha256: [7; 32],
            signature: Some("untrusted comment: test\nRWQ=\n".into()),
            force: true,
        },
    };
    let chunk = ToAgent::BinaryChunk {
        offer_id: 3,
        offset: 0,
        bytes: Arc::from(&b"\x7fELF"[..]),
    };
    let trace = ToAgent::Trace(TraceRequest {
        id: 11,
        target: "198.18.0.9".parse().expect("ip"),
        protocol: TraceProtocol::Icmp,
        max_hops: 30,
        rounds: 10,
    });
    for message in [&offer, &chunk, &trace] {
        server
            .send_to(connection, message.clone())
            .await
            .expect("sent");
        assert_eq!(
            guarded(message.kind(), agent.recv())
                .await
                .expect("received"),
            FromServer::Message(message.clone())
        );
    }
    let task_result = FromAgent::TaskResult {
        task_id: 9,
        output: TaskOutput {
            exit_code: Some(0),
            stdout: b"up 3 days".to_vec(),
            stderr: vec![],
            truncated: false,
            timed_out: false,
            duration: Duration::from_millis(12),
        },
    };
    let status = FromAgent::UpgradeStatus {
        offer_id: 3,
        version: "0.2.0".into(),
        state: UpgradeState::Downloading { received_bytes: 4 },
    };
    let chunk_request = FromAgent::ChunkRequest {
        offer_id: 3,
        offset: 4,
    };
    let trace_result = FromAgent::TraceResult(TraceReport {
        id: 11,
        target: "198.18.0.9".parse().expect("ip"),
        hops: vec![TraceHop {
            ttl: 1,
            addr: Some("198.18.0.1".parse().expect("ip")),
            sent: 10,
            received: 10,
            rtt_best: Some(Duration::from_micros(80)),
            rtt_mean: Some(Duration::from_micros(95)),
            rtt_worst: Some(Duration::from_micros(130)),
            rtt_stddev: Some(Duration::from_micros(20)),
        }],
        error: None,
    });
    let sent = [&task_result, &status, &chunk_request, &trace_result];
    for message in sent {
        agent.send(message.clone()).await.expect("sent");
    }
    eventually(
        "TaskResult, UpgradeStatus, ChunkRequest and TraceResult",
        || {
            let events = recorded.events();
            sent.iter().all(|wanted| {
                events
                    .iter()
                    .any(|e| matches!(e, LinkEvent::Message { message, .. } if message == *wanted))
            })
        },
    )
    .await;

    // A clean close is a Disconnected event.
    agent.close().await;
    eventually("Disconnected", || {
        recorded
            .events()
            .iter()
            .any(|e| matches!(e, LinkEvent::Disconnected { .. }))
    })
    .await;
    assert_eq!(server.stats().accepted, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_ca_file_verifies_the_server_by_name() {
    let dir = TempDir::new("ca");
    let server = new_server(&dir).await;
    let (recorded, _task) = record(&server);
    // The generated certificate is self-signed: it is its own CA.
    let ca_file = dir.path().join("server-cert.pem");
    let mut config = agent_config(
        server.local_addr(),
        "ca",
        ServerVerification::CaFile(ca_file.clone()),
    );
    config.server_name = Some("localhost".into());
    let agent = start_agent(config);
    agent.enqueue_results(results(0..10));
    eventually("results over a CA-verified link", || {
        recorded.result_ids().len() == 10
    })
    .await;
    agent.close().await;

    // A name the certificate does not hold fails.
    let mut wrong = agent_config(
        server.local_addr(),
        "ca",
        ServerVerification::CaFile(ca_file),
    );
    wrong.server_name = Some("elsewhere.example".into());
    let agent = start_agent(wrong);
    let err = guarded("a TLS failure", agent.recv())
        .await
        .expect_err("must fail");
    assert!(
        matches!(err, LinkError::Io { ref detail } if detail.contains("certificate")),
        "{err}"
    );
    server.shutdown().await;
}

// === security ===

#[tokio::test]
async fn a_wrong_or_missing_token_is_refused_on_both_sides_and_nothing_is_delivered() {
    let (logs, _guard) = capture_logs();
    let dir = TempDir::new("token");
    let server = new_server(&dir).await;
    let (recorded, _task) = record(&server);

    let mut config = agent_config(server.local_addr(), "intruder", pinned(&server));
    config.token = Token::new("not-the-token", "test").expect("token");
    let intruder = start_agent(config);
    intruder.enqueue_results(results(0..100));
    let err = guarded("the refusal", intruder.recv())
        .await
        .expect_err("refused");
    assert!(
        matches!(err, LinkError::Refused { ref reason } if reason.contains("bad token")),
        "{err}"
    );
    assert!(!intruder.stats().connected);
    assert_eq!(
        intruder.stats().outbox.buffered_results,
        100,
        "kept, not sent"
    );
    intruder.close().await;

    // No token at all (a hand-made Hello with an empty one).
    let mut raw = raw_client(&server).await;
    raw.say(&hello(ProtocolVersion::V1.as_u16(), "")).await;
    assert_eq!(
        raw.read().await,
        ServerMessage::Refused {
            reason: RefusalV1::BadToken
        }
    );
    let (code, reason) = raw.closed().await;
    assert_eq!(code, CloseCode::Refused);
    assert!(reason.contains("bad token"), "{reason}");

    eventually("both refusals counted", || {
        server.stats().refused_bad_token >= 2
    })
    .await;
    // Nothing of theirs was delivered: the first event is the next good agent's.
    healthy_agent_delivers(&server, &recorded, 1_000, 10).await;
    let first = recorded.events().first().cloned().expect("an event");
    assert!(
        matches!(first, LinkEvent::Connected { ref agent, .. } if agent.region.as_str() == "healthy"),
        "{first:?}"
    );
    assert!(!recorded.result_ids().iter().any(|id| *id < 1_000));

    let text = logs.text();
    assert!(text.contains("agent refused: bad token"), "{text}");
    assert!(
        text.contains("the server refused this agent: bad token"),
        "{text}"
    );
    assert!(
        !text.contains("not-the-token"),
        "the token leaked into the log"
    );
    assert!(!text.contains(TOKEN), "the token leaked into the log");
    server.shutdown().await;
}

#[tokio::test]
async fn a_wrong_pinned_fingerprint_fails_before_any_token_is_sent() {
    let dir = TempDir::new("pin");
    let server = new_server(&dir).await;
    let (recorded, _task) = record(&server);
    let wrong = Sha256Fingerprint::of_der(b"some other certificate");
    let agent = start_agent(agent_config(
        server.local_addr(),
        "pinned",
        ServerVerification::PinnedSha256(wrong),
    ));
    agent.enqueue_results(results(0..5));
    let err = guarded("the TLS failure", agent.recv())
        .await
        .expect_err("must fail");
    let LinkError::Io { detail } = &err else {
        panic!("expected an I/O error, got {err}");
    };
    assert!(
        detail.contains("its fingerprint is not the pinned"),
        "{detail}"
    );
    assert!(detail.contains(&wrong.to_string()), "{detail}");
    assert!(
        detail.contains(&server.fingerprint().to_string()),
        "{detail}"
    );
    agent.close().await;
    eventually("the failed handshake counted", || {
        server.stats().handshake_failures >= 1
    })
    .await;
    healthy_agent_delivers(&server, &recorded, 1_000, 10).await;
    assert_eq!(server.stats().accepted, 1, "only the healthy agent");
    server.shutdown().await;
}

#[tokio::test]
async fn insecure_mode_warns_at_every_start() {
    let (logs, _guard) = capture_logs();
    let dir = TempDir::new("insecure");
    let server = new_server(&dir).await;
    let (recorded, _task) = record(&server);
    for round in 0..2 {
        let agent = start_agent(agent_config(
            server.local_addr(),
            "lab",
            ServerVerification::Insecure,
        ));
        agent.enqueue_results(results(round * 10..round * 10 + 10));
        eventually("results over an insecure link", || {
            recorded.result_ids().len() as u64 == (round + 1) * 10
        })
        .await;
        agent.close().await;
    }
    assert_eq!(
        logs.text()
            .matches("is NOT verified (insecure mode)")
            .count(),
        2
    );
    server.shutdown().await;
}

// === protocol ===

#[tokio::test]
async fn a_version_mismatch_is_refused_naming_both_versions_on_both_sides() {
    let (logs, _guard) = capture_logs();
    let dir = TempDir::new("version");
    let server = new_server(&dir).await;
    let (recorded, _task) = record(&server);
    let served = ProtocolVersion::LATEST.as_u16();
    let newer = served + 1;
    let mut raw = raw_client(&server).await;
    // A hello's variant and version come first in every version, so the server can read
    // the version of a hello it cannot decode.
    raw.say(&hello(newer, TOKEN)).await;
    let reason = match raw.read().await {
        ServerMessage::Refused { reason } => reason,
        other => panic!("expected Refused, got {other:?}"),
    };
    assert_eq!(
        reason,
        RefusalV1::VersionMismatch {
            server: served,
            agent: newer
        }
    );
    // What the agent reports for it.
    let text = describe_refusal(&reason);
    assert!(text.contains(&format!("server speaks v{served}")), "{text}");
    assert!(text.contains(&format!("agent speaks v{newer}")), "{text}");
    let (code, close_reason) = raw.closed().await;
    assert_eq!(code, CloseCode::Refused);
    assert_eq!(close_reason, text);
    let log = logs.text();
    assert!(
        log.contains(&format!(
            "server speaks v{served}, the agent speaks v{newer}"
        )),
        "{log}"
    );
    assert_eq!(server.stats().refused_version, 1);
    assert!(recorded.events().is_empty());
    server.shutdown().await;
}

/// The agent's side of a version mismatch: a stand-in server speaking the next protocol
/// version refuses our agent, which reports both versions.
#[tokio::test]
async fn an_agent_refused_for_its_version_names_both_versions() {
    let (logs, _guard) = capture_logs();
    let dir = TempDir::new("agent-version");
    let cert = probermesh_adapters::link::ServerCertificate::load(&CertificateSource::Generated {
        data_dir: dir.path().to_owned(),
        names: vec!["localhost".into()],
    })
    .expect("certificate");
    let crypto = probermesh_adapters::link::server_crypto(&cert).expect("server crypto");
    let config = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(crypto).expect("quic server crypto"),
    ));
    let endpoint =
        quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let addr = endpoint.local_addr().expect("addr");
    let ours = ProtocolVersion::LATEST.as_u16();
    let newer = ours + 1;
    let stand_in = tokio::spawn(async move {
        let conn = endpoint
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("handshake");
        let (mut send, mut recv) = conn.accept_bi().await.expect("stream");
        let mut prefix = [0u8; 4];
        recv.read_exact(&mut prefix).await.expect("prefix");
        let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
        recv.read_exact(&mut body).await.expect("hello");
        let hello: Hello = decode_hello(&body).expect("a hello");
        let refusal = ServerMessage::Refused {
            reason: RefusalV1::VersionMismatch {
                server: newer,
                agent: hello.protocol_version.as_u16(),
            },
        };
        send.write_all(&encode_frame(&refusal, usize::MAX).expect("encode"))
            .await
            .expect("write");
        let _ = send.finish();
        conn.closed().await;
        endpoint
    });
    let agent = start_agent(agent_config(
        addr,
        "old",
        ServerVerification::PinnedSha256(cert.fingerprint()),
    ));
    let err = guarded("the refusal", agent.recv())
        .await
        .expect_err("refused");
    let LinkError::Refused { reason } = &err else {
        panic!("expected a refusal, got {err}");
    };
    assert!(
        reason.contains(&format!("the server speaks v{newer}")),
        "{reason}"
    );
    assert!(
        reason.contains(&format!("the agent speaks v{ours}")),
        "{reason}"
    );
    agent.close().await;
    drop(
        guarded("the stand-in server", stand_in)
            .await
            .expect("stand-in"),
    );
    let text = logs.text();
    assert!(
        text.contains("the server refused this agent: protocol version mismatch"),
        "{text}"
    );
}

#[tokio::test]
async fn an_oversized_frame_closes_only_that_connection() {
    let dir = TempDir::new("oversized");
    let mut config = server_config(dir.path(), "127.0.0.1:0".parse().expect("addr"));
    config.limits.max_frame_len_bytes = 64 * 1024;
    let server = start_server(config).await;
    let (recorded, _task) = record(&server);
    let healthy = start_agent(agent_config(
        server.local_addr(),
        "healthy",
        pinned(&server),
    ));
    healthy.enqueue_results(results(0..10));
    eventually("results before", || recorded.result_ids().len() == 10).await;

    // An authenticated peer announces a frame above the limit.
    let mut raw = raw_client(&server).await;
    raw.say(&hello(ProtocolVersion::V1.as_u16(), TOKEN)).await;
    assert!(matches!(raw.read().await, ServerMessage::Welcome { .. }));
    raw.write(&(64 * 1024 + 1u32).to_be_bytes()).await;
    raw.write(&[0u8; 1024]).await;
    let (code, reason) = raw.closed().await;
    assert_eq!(code, CloseCode::Protocol);
    assert!(
        reason.contains("exceeds the limit of 65536 bytes"),
        "{reason}"
    );

    // A Hello larger than the pre-authentication limit is refused the same way.
    let mut raw = raw_client(&server).await;
    raw.write(&(1u32 << 20).to_be_bytes()).await;
    let (code, reason) = raw.closed().await;
    assert_eq!(code, CloseCode::Protocol);
    assert!(reason.contains("exceeds the limit"), "{reason}");

    // Everyone else goes on.
    healthy.enqueue_results(results(10..20));
    eventually("results after", || recorded.result_ids().len() == 20).await;
    assert_eq!(recorded.result_ids(), (0..20).collect::<Vec<_>>());
    assert_eq!(
        healthy.stats().connections,
        1,
        "the healthy agent was never disconnected"
    );
    assert!(server.stats().protocol_errors >= 1);
    healthy.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn garbage_bytes_close_only_that_connection() {
    let dir = TempDir::new("garbage");
    let server = new_server(&dir).await;
    let (recorded, _task) = record(&server);
    let healthy = start_agent(agent_config(
        server.local_addr(),
        "healthy",
        pinned(&server),
    ));
    healthy.enqueue_results(results(0..10));
    eventually("results before", || recorded.result_ids().len() == 10).await;

    // Garbage instead of a Hello.
    let mut raw = raw_client(&server).await;
    raw.write(&[0, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0x99]).await;
    let (code, reason) = raw.closed().await;
    assert_eq!(code, CloseCode::Protocol);
    assert!(reason.contains("cannot decode frame"), "{reason}");

    // A valid Hello, then garbage.
    let mut raw = raw_client(&server).await;
    raw.say(&hello(ProtocolVersion::V1.as_u16(), TOKEN)).await;
    assert!(matches!(raw.read().await, ServerMessage::Welcome { .. }));
    raw.write(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await;
    let (code, reason) = raw.closed().await;
    assert_eq!(code, CloseCode::Protocol);
    assert!(reason.contains("protocol violation"), "{reason}");

    // A valid frame over a limit (`check_limits`): a huge batch is refused as a whole.
    let mut raw = raw_client(&server).await;
    raw.say(&hello(ProtocolVersion::V1.as_u16(), TOKEN)).await;
    assert!(matches!(raw.read().await, ServerMessage::Welcome { .. }));
    raw.say(&AgentMessage::UpgradeStatus {
        offer_id: 1,
        version: "x".repeat(probermesh_core::wire::MAX_TEXT_LEN + 1),
        state: probermesh_core::wire::UpgradeStateV1::Verified,
    })
    .await;
    let (code, reason) = raw.closed().await;
    assert_eq!(code, CloseCode::Protocol);
    assert!(reason.contains("upgrade_status.version"), "{reason}");

    healthy.enqueue_results(results(10..20));
    eventually("results after", || recorded.result_ids().len() == 20).await;
    assert_eq!(healthy.stats().connections, 1);
    // The raw peers that passed the Hello connected and disconnected, and delivered nothing.
    let raw_messages = recorded
        .events()
        .iter()
        .filter(|e| matches!(e, LinkEvent::Message { agent, .. } if agent.region.as_str() == "raw"))
        .count();
    assert_eq!(raw_messages, 0);
    assert_eq!(server.stats().protocol_errors, 2);
    assert_eq!(server.stats().handshake_failures, 1);
    healthy.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_silent_peer_is_closed_at_the_handshake_timeout() {
    let dir = TempDir::new("silent");
    let mut config = server_config(dir.path(), "127.0.0.1:0".parse().expect("addr"));
    config.limits.handshake_timeout = Duration::from_millis(300);
    let server = start_server(config).await;
    let raw = raw_client(&server).await; // opens a stream but never writes
    let (code, reason) = raw.closed().await;
    assert_eq!(code, CloseCode::HandshakeTimeout);
    assert!(reason.contains("within the handshake timeout"), "{reason}");
    server.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_maximum_are_refused() {
    let dir = TempDir::new("max");
    let mut config = server_config(dir.path(), "127.0.0.1:0".parse().expect("addr"));
    config.admission.max_connections = 1;
    let server = start_server(config).await;
    let (recorded, _task) = record(&server);
    let first = start_agent(agent_config(server.local_addr(), "first", pinned(&server)));
    eventually("the first agent", || recorded.connected().len() == 1).await;
    let second = start_agent(agent_config(server.local_addr(), "second", pinned(&server)));
    let err = guarded("the refusal", async {
        loop {
            match second.recv().await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        }
    })
    .await;
    assert!(
        matches!(err, LinkError::Io { ref detail } if detail.contains("refused")),
        "{err}"
    );
    assert!(server.stats().refused_capacity >= 1);
    // When the first leaves, the second gets in (it keeps retrying).
    first.close().await;
    eventually("the second agent", || recorded.connected().len() == 2).await;
    second.close().await;
    server.shutdown().await;
}

// === resilience ===

/// Where a server will run later: a free UDP port (taken, then left, so nothing listens there
/// yet) and the fingerprint of the certificate generated now into `dir`, for agents to pin.
fn absent_server(dir: &TempDir) -> (SocketAddr, Sha256Fingerprint) {
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port");
    let cert = probermesh_adapters::link::ServerCertificate::load(&CertificateSource::Generated {
        data_dir: dir.path().to_owned(),
        names: vec!["localhost".into()],
    })
    .expect("certificate");
    (addr, cert.fingerprint())
}

#[tokio::test]
async fn results_made_while_the_server_is_away_are_delivered_when_it_comes_back() {
    let dir = TempDir::new("away");
    let (addr, fingerprint) = absent_server(&dir);
    let mut config = agent_config(
        addr,
        "patient",
        ServerVerification::PinnedSha256(fingerprint),
    );
    config.limits.handshake_timeout = Duration::from_millis(500);
    let agent = start_agent(config);
    agent.enqueue_results(results(0..3_000));
    eventually("a failed attempt", || agent.stats().failures >= 1).await;
    assert_eq!(agent.stats().outbox.buffered_results, 3_000);
    // A drain while the server is away gives up at its timeout, reporting what is held.
    let drained = guarded("a drain", agent.drain(Duration::from_millis(300))).await;
    assert_eq!(
        (
            drained.outbox.buffered_results,
            drained.outbox.acked_results
        ),
        (3_000, 0)
    );

    let server = start_server(server_config(dir.path(), addr)).await;
    let (recorded, _task) = record(&server);
    eventually("the buffered results", || {
        recorded.result_ids().len() == 3_000
    })
    .await;
    assert_eq!(recorded.result_ids(), (0..3_000).collect::<Vec<_>>());
    // A drain returns once everything is acknowledged.
    let drained = guarded("a drain", agent.drain(Duration::from_secs(20))).await;
    assert_eq!(
        (
            drained.outbox.buffered_results,
            drained.outbox.acked_results
        ),
        (0, 3_000)
    );

    // (The agent keeps its pool while the server is away: AgentState's job, tested there.)
    agent.close().await;
}

#[tokio::test]
async fn a_full_buffer_drops_the_oldest_results_and_counts_them() {
    let dir = TempDir::new("full");
    let (addr, fingerprint) = absent_server(&dir);
    let mut config = agent_config(addr, "full", ServerVerification::PinnedSha256(fingerprint));
    config.outbox.capacity_results = 1_000;
    config.limits.handshake_timeout = Duration::from_millis(500);
    let agent = start_agent(config);
    agent.enqueue_results(results(0..1_500));
    let stats = agent.stats().outbox;
    assert_eq!(
        (stats.buffered_results, stats.dropped_results),
        (1_000, 500)
    );

    let server = start_server(server_config(dir.path(), addr)).await;
    let (recorded, _task) = record(&server);
    eventually("the kept results", || recorded.result_ids().len() == 1_000).await;
    assert_eq!(
        recorded.result_ids(),
        (500..1_500).collect::<Vec<_>>(),
        "the newest are kept"
    );
    agent.close().await;
    server.shutdown().await;
}

/// What a restart in the middle of a stream did to the results.
struct RestartOutcome {
    duplicated: usize,
    lost: usize,
    delivered_by_first: usize,
    delivered_by_second: usize,
}

/// Three agents stream results without pause; the first server stops (cleanly, or at once as
/// in a crash) in the middle, and a second one (as empty as a new process) takes over on the
/// same address with the same certificate. Counts every result id over both servers.
async fn restart_mid_stream(graceful: bool) -> RestartOutcome {
    const AGENTS: u64 = 3;
    const PER_AGENT: u64 = 20_000;
    const CHUNK: u64 = 100;
    let dir = TempDir::new("restart");
    let first = new_server(&dir).await;
    let addr = first.local_addr();
    let (recorded_first, task_first) = record(&first);

    let mut agents = Vec::new();
    let mut producers = Vec::new();
    for a in 0..AGENTS {
        let mut config = agent_config(addr, &format!("r{a}"), pinned(&first));
        config.outbox.max_batch_results = 250;
        let agent = Arc::new(start_agent(config));
        let producer = {
            let agent = Arc::clone(&agent);
            tokio::spawn(async move {
                let base = a * 1_000_000;
                for start in (0..PER_AGENT).step_by(CHUNK as usize) {
                    agent.enqueue_results(results(base + start..base + start + CHUNK));
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        agents.push(agent);
        producers.push(producer);
    }

    // Stop once the first server has taken part of the stream.
    eventually("part of the stream", || {
        recorded_first.result_ids().len() >= 5_000
    })
    .await;
    if graceful {
        first.shutdown().await;
        guarded("the first recorder", task_first)
            .await
            .expect("recorder");
    } else {
        // A crash: the driver stops taking events and the server goes away at once.
        task_first.abort();
        let _ = task_first.await;
    }
    drop(first);
    let second = start_server(server_config(dir.path(), addr)).await;
    let (recorded_second, _task) = record(&second);

    for producer in producers {
        guarded("the producers", producer).await.expect("producer");
    }
    let total = AGENTS * PER_AGENT;
    eventually("every result acknowledged", || {
        agents
            .iter()
            .all(|a| a.stats().outbox.buffered_results == 0)
    })
    .await;

    let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
    for id in recorded_first
        .result_ids()
        .into_iter()
        .chain(recorded_second.result_ids())
    {
        *counts.entry(id).or_default() += 1;
    }
    let expected: HashSet<u64> = (0..AGENTS)
        .flat_map(|a| (0..PER_AGENT).map(move |n| a * 1_000_000 + n))
        .collect();
    assert!(
        counts.keys().all(|id| expected.contains(id)),
        "an unknown id"
    );
    assert_eq!(expected.len() as u64, total);
    for agent in &agents {
        let stats = agent.stats();
        assert_eq!(stats.outbox.dropped_results, 0);
        assert!(stats.connections >= 2, "every agent reconnected");
    }
    for agent in agents {
        agent.close().await;
    }
    second.shutdown().await;
    RestartOutcome {
        duplicated: counts.values().filter(|n| **n > 1).count(),
        lost: expected
            .iter()
            .filter(|id| !counts.contains_key(id))
            .count(),
        delivered_by_first: recorded_first.result_ids().len(),
        delivered_by_second: recorded_second.result_ids().len(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_stream_loses_nothing_and_duplicates_nothing() {
    let outcome = restart_mid_stream(true).await;
    assert_eq!(outcome.lost, 0, "results lost");
    assert_eq!(outcome.duplicated, 0, "results delivered twice");
    assert!(outcome.delivered_by_first > 0 && outcome.delivered_by_second > 0);
}

/// A crash cannot be exactly-once (an Ack in flight dies with the server), but nothing is
/// lost: every batch the crashed server did not acknowledge is resent to the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_crash_mid_stream_loses_nothing() {
    let outcome = restart_mid_stream(false).await;
    assert_eq!(outcome.lost, 0, "results lost");
    assert!(outcome.delivered_by_first > 0 && outcome.delivered_by_second > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_agents_deliver_concurrently() {
    const AGENTS: u64 = 200;
    const PER_AGENT: u64 = 100;
    let dir = TempDir::new("many");
    let server = new_server(&dir).await;
    let (recorded, _task) = record(&server);
    let agents: Vec<AgentLink> = (0..AGENTS)
        .map(|a| {
            let mut config =
                agent_config(server.local_addr(), &format!("region-{a}"), pinned(&server));
            config.identity.agent.ip = format!("10.1.{}.{}", a / 256, a % 256).parse().expect("ip");
            let agent = start_agent(config);
            agent.enqueue_results(results(a * 1_000..a * 1_000 + PER_AGENT));
            agent
        })
        .collect();
    eventually("every result", || {
        recorded.result_ids().len() as u64 >= AGENTS * PER_AGENT
    })
    .await;
    let ids = recorded.result_ids();
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!(ids.len() as u64, AGENTS * PER_AGENT);
    assert_eq!(distinct.len(), ids.len());
    let connected: HashSet<AgentId> = recorded.connected().into_iter().map(|(id, _)| id).collect();
    assert_eq!(connected.len() as u64, AGENTS);
    assert_eq!(server.stats().open_connections, AGENTS);
    for agent in &agents {
        eventually("acks", || agent.stats().outbox.buffered_results == 0).await;
    }
    for agent in agents {
        agent.close().await;
    }
    server.shutdown().await;
}

#[test]
fn starting_outside_a_runtime_is_an_error_not_a_panic() {
    let config = agent_config(
        "127.0.0.1:9".parse().expect("addr"),
        "eu",
        ServerVerification::Insecure,
    );
    assert!(matches!(
        AgentLink::start(config),
        Err(probermesh_adapters::link::AgentSetupError::NoRuntime)
    ));
    let dir = TempDir::new("no-runtime");
    let err = ReportServer::bind(server_config(
        dir.path(),
        "127.0.0.1:0".parse().expect("addr"),
    ))
    .expect_err("no runtime");
    assert!(err.to_string().contains("runtime"), "{err}");
}

/// How many result frames the server handed out.
fn result_frames(recorded: &Recorded) -> usize {
    recorded
        .events()
        .iter()
        .filter(|e| {
            matches!(
                e,
                LinkEvent::Message {
                    message: FromAgent::Results { .. },
                    ..
                }
            )
        })
        .count()
}

#[tokio::test]
async fn results_made_one_by_one_wait_for_each_other_within_the_linger() {
    let dir = TempDir::new("linger");
    let server = new_server(&dir).await;
    let (recorded, _task) = record(&server);
    let mut config = agent_config(server.local_addr(), "lingering", pinned(&server));
    config.result_linger = Duration::from_secs(2);
    let agent = start_agent(config);
    eventually("the connection", || agent.stats().connected).await;
    // Twenty results 10 ms apart, as probes finish: without the linger each is its own frame
    // (the writer runs between them).
    for id in 0..20 {
        agent.enqueue_results(results(id..id + 1));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eventually("the results", || recorded.result_ids().len() == 20).await;
    assert_eq!(recorded.result_ids(), (0..20).collect::<Vec<_>>());
    let frames = result_frames(&recorded);
    assert!(
        frames <= 3,
        "{frames} frames for 20 results made within one linger"
    );
    agent.close().await;
}

#[tokio::test]
async fn a_full_batch_does_not_wait_for_the_linger() {
    let dir = TempDir::new("linger-full");
    let server = new_server(&dir).await;
    let (recorded, _task) = record(&server);
    let mut config = agent_config(server.local_addr(), "lingering", pinned(&server));
    // Longer than the hang guard: a held batch fails the test.
    config.result_linger = Duration::from_secs(120);
    let batch = config.outbox.max_batch_results;
    let agent = start_agent(config);
    eventually("the connection", || agent.stats().connected).await;
    let batch = u64::try_from(batch).expect("a batch size");
    agent.enqueue_results(results(0..batch));
    eventually("the full batch", || {
        recorded.result_ids().len() == usize::try_from(batch).expect("fits")
    })
    .await;
    agent.close().await;
}
