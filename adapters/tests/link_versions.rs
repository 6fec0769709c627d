//! Protocol versions on the real link (127.0.0.1): the new server serves v1 agents exactly
//! as before (the v1 golden frames of `fixtures/wire/v1/` decoded by it and its answers in
//! v1 bytes; a whole v1 agent session) and v2 agents in v2, and a v2 agent meeting a server
//! that speaks only v1 falls back to v1 at once.

use std::sync::Arc;
use std::time::Duration;

use probermesh_adapters::link::AgentLink;
use probermesh_adapters::secret::Token;
use probermesh_core::link::{Capabilities, FromAgent, FromServer, TaskSpec, ToAgent};
use probermesh_core::model::{
    IcmpModule, ProbeConfig, ProbeKind, ProbeModule, Region, Target, UnixMillis,
};
use probermesh_core::ports::{ConnectionId, LinkError, LinkEvent, ReportSource, ServerLink};
use probermesh_core::wire::{ProtocolVersion, ServerMessage, decode_frame};

mod common;

use common::link::*;
use common::{TempDir, capture_logs};

/// A golden frame of `fixtures/wire/v1/` (hex text, `#` comment lines).
fn golden_v1(stem: &str) -> Vec<u8> {
    let path = format!(
        "{}/../fixtures/wire/v1/{stem}.hex",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .map(|pair| u8::from_str_radix(pair, 16).expect("hex"))
        .collect()
}

fn pool() -> ToAgent {
    ToAgent::Pool {
        revision: 3,
        configs: Arc::new(vec![ProbeConfig {
            region: Region::new("us").expect("region"),
            targets: vec![Target::parse(ProbeKind::Icmp, "198.18.0.9").expect("target")],
            module: ProbeModule::Icmp(IcmpModule::default()),
        }]),
    }
}

fn task() -> ToAgent {
    ToAgent::Task(TaskSpec {
        id: 1,
        command: "mtr 198.18.0.9".into(),
        timeout: Duration::from_secs(30),
        output_limit_bytes: 1024,
        expires_at: UnixMillis(1_800_000_000_000),
        region_op: probermesh_core::matcher::MatchOp::Re,
        region_pattern: ".*".into(),
        signature: None,
    })
}

fn connection_of(recorded: &Recorded) -> Option<(ConnectionId, Capabilities)> {
    recorded.events().iter().find_map(|event| match event {
        LinkEvent::Connected {
            connection,
            capabilities,
            ..
        } => Some((*connection, capabilities.clone())),
        _ => None,
    })
}

#[tokio::test]
async fn the_new_server_decodes_the_v1_golden_frames_and_answers_in_v1_bytes() {
    let dir = TempDir::new("golden-v1");
    // The golden hello carries the token "s3cret".
    let mut config = server_config(dir.path(), "127.0.0.1:0".parse().expect("addr"));
    config.token = Token::new("s3cret", "test").expect("token");
    let server = start_server(config).await;
    let (recorded, _task) = record(&server);
    let mut raw = raw_client(&server).await;

    raw.write(&golden_v1("hello")).await;
    let ServerMessage::Welcome {
        protocol_version, ..
    } = decode_frame(&raw.read_frame().await[4..]).expect("a v1 message")
    else {
        panic!("expected a v1 Welcome");
    };
    assert_eq!(protocol_version, 1);
    eventually("Connected", || connection_of(&recorded).is_some()).await;
    let (connection, capabilities) = connection_of(&recorded).expect("connected");
    assert_eq!(capabilities, Capabilities::v1());
    assert_eq!(
        recorded.connected()[0].0,
        agent_id("cn-shanghai", "10.0.0.1")
    );

    for stem in ["heartbeat", "result_batch", "pool_refused"] {
        raw.write(&golden_v1(stem)).await;
    }
    // The batch's acknowledgement is the golden v1 `Ack { seq: 42 }`, byte for byte.
    assert_eq!(raw.read_frame().await, golden_v1("ack"));
    eventually("the three messages", || {
        recorded
            .events()
            .iter()
            .filter(|e| matches!(e, LinkEvent::Message { .. }))
            .count()
            == 3
    })
    .await;
    let messages: Vec<FromAgent> = recorded
        .events()
        .into_iter()
        .filter_map(|e| match e {
            LinkEvent::Message { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(
        messages[0],
        FromAgent::Heartbeat {
            sent_at: UnixMillis(1_700_000_000_000)
        }
    );
    assert!(
        matches!(&messages[1], FromAgent::Results { seq: 42, results } if results.len() == 2),
        "{:?}",
        messages[1]
    );
    assert!(
        matches!(&messages[2], FromAgent::PoolRefused { revision: 7, field, .. } if field == "configs[0].http.method"),
        "{:?}",
        messages[2]
    );

    // A v1 agent gets its pool in v1, and nothing v1 cannot carry.
    server.send_to(connection, pool()).await.expect("a pool");
    assert!(matches!(
        decode_frame::<ServerMessage>(&raw.read_frame().await[4..]),
        Ok(ServerMessage::TargetPool { revision: 3, .. })
    ));
    let refused = server
        .send_to(connection, task())
        .await
        .expect_err("a task is v2 only");
    assert!(
        matches!(&refused, LinkError::Protocol { detail } if detail.contains("not part of protocol v1")),
        "{refused}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_v1_agent_keeps_working_against_the_new_server() {
    let dir = TempDir::new("v1-agent");
    let server = new_server(&dir).await;
    let (recorded, _task) = record(&server);
    let mut config = agent_config(server.local_addr(), "eu", pinned(&server));
    config.max_protocol = ProtocolVersion::V1;
    let agent = start_agent(config);
    let welcomed = guarded("Welcome", agent.recv()).await.expect("welcome");
    assert!(
        matches!(&welcomed, FromServer::Welcomed { capabilities, .. } if *capabilities == Capabilities::v1()),
        "{welcomed:?}"
    );
    eventually("Connected", || connection_of(&recorded).is_some()).await;
    let (connection, capabilities) = connection_of(&recorded).expect("connected");
    assert_eq!(capabilities.protocol_version, 1);

    agent.enqueue_results(results(1..101));
    agent
        .send(FromAgent::PoolRequest { known_revision: 0 })
        .await
        .expect("sent");
    eventually("the results", || recorded.result_ids().len() == 100).await;
    eventually("their acks", || agent.stats().outbox.buffered_results == 0).await;
    server.send_to(connection, pool()).await.expect("a pool");
    assert_eq!(
        guarded("the pool", agent.recv()).await.expect("pool"),
        FromServer::Message(pool())
    );
    assert!(server.send_to(connection, task()).await.is_err());
    assert!(recorded.events().iter().any(|e| matches!(
        e,
        LinkEvent::Message {
            message: FromAgent::PoolRequest { known_revision: 0 },
            ..
        }
    )));
    agent.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_v2_agent_speaks_v1_to_a_server_that_speaks_only_v1() {
    let (logs, _guard) = capture_logs();
    let dir = TempDir::new("v1-server");
    let mut config = server_config(dir.path(), "127.0.0.1:0".parse().expect("addr"));
    // Reads hellos as every release before v2 did: a v2 hello is a protocol violation.
    config.max_protocol = ProtocolVersion::V1;
    let server = start_server(config).await;
    let (recorded, _task) = record(&server);
    let agent: AgentLink = start_agent(agent_config(server.local_addr(), "eu", pinned(&server)));
    let welcomed = guarded("Welcome", agent.recv())
        .await
        .expect("welcome, in v1");
    assert!(
        matches!(&welcomed, FromServer::Welcomed { capabilities, .. } if capabilities.protocol_version == 1),
        "{welcomed:?}"
    );
    agent.enqueue_results(results(1..11));
    eventually("the results", || recorded.result_ids().len() == 10).await;
    assert_eq!(
        connection_of(&recorded).expect("connected").1,
        Capabilities::v1()
    );
    assert_eq!(
        server.stats().protocol_errors,
        0,
        "the v2 hello is not a session's error"
    );
    let log = logs.text();
    assert!(log.contains("the server speaks protocol v1 only"), "{log}");
    agent.close().await;
    server.shutdown().await;
}
