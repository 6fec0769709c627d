//! `POST /-/trace` and `GET /api/v1/traces` over real HTTP, in front of a real `ServerState`
//! with fake connected agents (one that takes traces, one that does not): the token first,
//! 400 naming the field, 404, 409, 503 with tracing off (the list empty, saying so), 202
//! and the trace in flight, a reported trace with its blame and hops, the filters, and the
//! mesh data's access rule.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use probermesh_adapters::admin::{
    AdminApi, AdminLimits, AdminServer, TraceAccepted, TraceApi, TraceListing,
};
use probermesh_adapters::secret::Token;
use probermesh_core::aggregate::{Aggregator, AggregatorConfig};
use probermesh_core::link::{Capabilities, FromAgent, ToAgent, TraceHop, TraceReport, feature};
use probermesh_core::model::{AgentId, AgentVersion, Region, UnixMillis};
use probermesh_core::pool::{Discovery, TargetPool};
use probermesh_core::ports::{ConnectionId, LinkEvent};
use probermesh_core::server::{OperatorAsk, OperatorTraceError, ServerState};
use probermesh_core::trace::store::{StoreLimits, TraceQuery, TraceStore};
use probermesh_core::trace::trigger::{TraceDesk, TraceShape, TriggerConfig};

const T0: u64 = 1_800_000_000_000;
const TOKEN: &str = "admin-token-0123456789";

fn agent(region: &str, ip: &str) -> AgentId {
    AgentId::new(
        Region::new(region).expect("the test's fixture"),
        ip.parse().expect("the test's fixture"),
    )
}

/// A server whose state is a real `ServerState`; `sent` keeps what it would send.
struct StateApi {
    state: Mutex<ServerState>,
    sent: Mutex<Vec<(ConnectionId, ToAgent)>>,
}

impl StateApi {
    fn new(tracing: bool) -> Arc<Self> {
        let aggregator = Aggregator::new(AggregatorConfig::default(), UnixMillis(T0))
            .expect("the test's fixture");
        let mut state = ServerState::new(
            aggregator,
            TargetPool::new(Vec::new(), Discovery::Dynamic, false),
        );
        if tracing {
            state = state.with_traces(
                TraceDesk::new(TriggerConfig::default(), UnixMillis(T0))
                    .expect("the test's fixture"),
                TraceStore::new(StoreLimits::default()),
            );
        }
        for (id, who, features) in [
            (
                1,
                agent("eu", "198.18.1.1"),
                vec![feature::TRACE.to_owned()],
            ),
            (2, agent("eu", "198.18.1.2"), Vec::new()),
            (
                3,
                agent("us", "198.18.2.1"),
                vec![feature::TRACE.to_owned()],
            ),
        ] {
            state.handle_event(
                UnixMillis(T0),
                LinkEvent::Connected {
                    connection: ConnectionId(id),
                    agent: who.clone(),
                    version: AgentVersion::new("2.0.0"),
                    observed_addr: SocketAddr::new(who.ip, 40_000),
                    capabilities: Capabilities {
                        protocol_version: 2,
                        features: features.into_iter().collect(),
                    },
                    instance: id,
                },
            );
        }
        Arc::new(Self {
            state: Mutex::new(state),
            sent: Mutex::new(Vec::new()),
        })
    }

    /// `who` on connection `connection` reports trace `id`: 30 % lost from hop 2 on.
    fn report(&self, connection: u64, who: &AgentId, id: u64, target: IpAddr) {
        let hop = |ttl: u8, received: u32| TraceHop {
            ttl,
            addr: Some(if ttl == 3 {
                target
            } else {
                IpAddr::from([10, 0, 0, ttl])
            }),
            sent: 20,
            received,
            rtt_best: Some(Duration::from_millis(1)),
            rtt_mean: Some(Duration::from_millis(2)),
            rtt_worst: Some(Duration::from_millis(3)),
            rtt_stddev: Some(Duration::from_micros(500)),
        };
        let report = TraceReport {
            id,
            target,
            hops: vec![hop(1, 20), hop(2, 14), hop(3, 14)],
            error: None,
        };
        self.state.lock().expect("the test's fixture").handle_event(
            UnixMillis(T0 + 30_000),
            LinkEvent::Message {
                connection: ConnectionId(connection),
                agent: who.clone(),
                message: FromAgent::TraceResult(report),
            },
        );
    }
}

/// The endpoints' side: shares the state with the test.
struct Endpoint(Arc<StateApi>);

#[async_trait::async_trait]
impl AdminApi for Endpoint {
    fn metrics(&self) -> Vec<u8> {
        Vec::new()
    }
    fn targets_generation(&self) -> u64 {
        0
    }
    fn targets_json(&self) -> (u64, String) {
        (0, "{}".into())
    }
    async fn reload(&self) -> Result<(), String> {
        Ok(())
    }
    fn ready(&self) -> bool {
        true
    }
    fn trace_api(&self) -> Option<Arc<dyn TraceApi>> {
        Some(Arc::new(Endpoint(Arc::clone(&self.0))))
    }
}

#[async_trait::async_trait]
impl TraceApi for Endpoint {
    fn trace_shape(&self) -> Option<TraceShape> {
        let state = self.0.state.lock().expect("the test's fixture");
        state.trace_desk().map(|desk| desk.config().shape)
    }
    async fn request_trace(&self, ask: OperatorAsk) -> Result<TraceAccepted, OperatorTraceError> {
        let result = self
            .0
            .state
            .lock()
            .expect("the test's fixture")
            .request_operator_trace(UnixMillis(T0 + 1_000), ask);
        let (request, agent, actions) = result?;
        self.0
            .sent
            .lock()
            .expect("the test's fixture")
            .extend(actions.send);
        Ok(TraceAccepted {
            id: request.id,
            agent,
            target: request.target,
        })
    }
    fn trace_records(&self, query: &TraceQuery) -> Option<TraceListing> {
        let state = self.0.state.lock().expect("the test's fixture");
        let records = state.traces()?.query(query).into_iter().cloned().collect();
        let in_flight = state
            .trace_desk()?
            .in_flight()
            .iter()
            .filter(|(_, f)| query.agent.as_ref().is_none_or(|a| &f.agent == a))
            .map(|(id, f)| (*id, f.clone()))
            .collect();
        Some((records, in_flight))
    }
    fn now(&self) -> UnixMillis {
        UnixMillis(T0 + 60_000)
    }
}

async fn start(tracing: bool, requires_token: bool) -> (AdminServer, Arc<StateApi>) {
    let api = StateApi::new(tracing);
    let server = AdminServer::start_with(
        "127.0.0.1:0",
        Arc::new(Endpoint(Arc::clone(&api))) as Arc<dyn AdminApi>,
        Some(Token::new(TOKEN, "the test").expect("the test's fixture")),
        AdminLimits {
            mesh_requires_token: requires_token,
            ..AdminLimits::default()
        },
    )
    .await
    .expect("the test's fixture");
    (server, api)
}

/// One request: the status and the body parsed as JSON (`Null` when it is not).
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let (status, _, body) =
        common::admin::request_with_body(addr, method, path, authorization.as_deref(), body).await;
    (status, serde_json::from_str(&body).unwrap_or_default())
}

#[tokio::test]
async fn a_trace_needs_the_admin_token_first() {
    let (server, api) = start(true, false).await;
    let addr = server.local_addr();
    let body = r#"{"agent":"eu/198.18.1.1","target":"198.18.2.1"}"#;
    for token in [None, Some("wrong")] {
        let (status, json) = call(addr, "POST", "/-/trace", token, body).await;
        assert_eq!(status, 401, "{json}");
        assert_eq!(json["msg"], "unauthorized");
    }
    // Not even a bad body is read without it.
    let (status, _) = call(addr, "POST", "/-/trace", None, "{").await;
    assert_eq!(status, 401);
    assert!(api.sent.lock().unwrap().is_empty(), "nothing was sent");
    let (status, _) = call(addr, "GET", "/-/trace", Some(TOKEN), "").await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn a_trace_is_sent_refused_and_reported_with_the_right_status() {
    let (server, api) = start(true, false).await;
    let addr = server.local_addr();
    let post = |body: &'static str| call(addr, "POST", "/-/trace", Some(TOKEN), body);
    // 400 naming the field.
    for (body, field) in [
        (
            r#"{"agent":"eu/198.18.1.1","target":"198.18.2.1","rounds":0}"#,
            "rounds",
        ),
        (
            r#"{"agent":"eu/198.18.1.1","target":"198.18.2.1","max_hops":99}"#,
            "max_hops",
        ),
        (r#"{"agent":"eu/198.18.1.1","target":"nowhere"}"#, "target"),
        (r#"{"agent":"eu"}"#, "agent"),
        (r#"{"target":"198.18.2.1"}"#, "source_region"),
        ("not json", "expected"),
    ] {
        let (status, json) = post(body).await;
        assert_eq!(status, 400, "{body}: {json}");
        assert!(
            json["data"].as_str().unwrap().contains(field),
            "{body}: {json}"
        );
    }
    // 404: not connected, or connected without the trace feature.
    for body in [
        r#"{"agent":"eu/198.18.1.9","target":"198.18.2.1"}"#,
        r#"{"agent":"eu/198.18.1.2","target":"198.18.2.1"}"#,
    ] {
        let (status, json) = post(body).await;
        assert_eq!(status, 404, "{body}: {json}");
    }
    // 202 by region pair: the one EU tracer, to the US agent (the mesh knows no other host).
    let (status, json) = post(r#"{"source_region":"eu","target_region":"us","rounds":5}"#).await;
    assert_eq!(status, 202, "{json}");
    assert_eq!(json["data"]["agent"], "eu/198.18.1.1");
    assert_eq!(json["data"]["target"], "198.18.2.1");
    let id = json["data"]["id"].as_u64().unwrap();
    let sent = api.sent.lock().unwrap().clone();
    match sent.as_slice() {
        [(ConnectionId(1), ToAgent::Trace(request))] => {
            assert_eq!((request.id, request.rounds, request.max_hops), (id, 5, 30));
        }
        other => panic!("{other:?}"),
    }
    // 409: its agent is busy.
    let (status, json) = post(r#"{"agent":"eu/198.18.1.1","target":"198.18.2.1"}"#).await;
    assert_eq!(status, 409, "{json}");
    // In flight, then reported with its blame and hops.
    let path = format!("/api/v1/traces?id={id}");
    let (status, json) = call(addr, "GET", &path, None, "").await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["in_flight"][0]["state"], "running");
    assert_eq!(json["traces"].as_array().unwrap().len(), 0);
    api.report(
        1,
        &agent("eu", "198.18.1.1"),
        id,
        "198.18.2.1".parse().unwrap(),
    );
    let (status, json) = call(addr, "GET", &path, None, "").await;
    assert_eq!(status, 200, "{json}");
    let trace = &json["traces"][0];
    assert_eq!(trace["id"], id);
    assert_eq!(trace["reason"], "operator");
    assert_eq!(trace["source_region"], "eu");
    assert_eq!(trace["target_region"], "us");
    assert_eq!(trace["outcome"], "reported");
    assert_eq!(trace["blame"]["kind"], "hop");
    assert_eq!(trace["blame"]["hop"], 2);
    assert!(trace["blame"]["explanation"].as_str().unwrap().len() > 5);
    assert_eq!(trace["hops"].as_array().unwrap().len(), 3);
    assert_eq!(trace["hops"][1]["sent"], 20);
    assert!((trace["hops"][1]["loss_ratio"].as_f64().unwrap() - 0.3).abs() < 1e-9);
    // The filters.
    for (query, count) in [
        ("source_region=eu", 1),
        ("source_region=us", 0),
        ("target_region=us&source_region=eu", 1),
        ("agent=eu%2F198.18.1.1", 1),
        ("agent=us%2F198.18.2.1", 0),
        ("limit=1", 1),
    ] {
        let (status, json) = call(addr, "GET", &format!("/api/v1/traces?{query}"), None, "").await;
        assert_eq!(status, 200, "{query}: {json}");
        assert_eq!(
            json["traces"].as_array().unwrap().len(),
            count,
            "{query}: {json}"
        );
    }
    for query in ["limit=0", "limit=1000", "id=x", "source_region=%20"] {
        let (status, json) = call(addr, "GET", &format!("/api/v1/traces?{query}"), None, "").await;
        assert_eq!(status, 400, "{query}: {json}");
    }
    let (status, _) = call(addr, "GET", "/api/v1/traces?id=12345", None, "").await;
    assert_eq!(status, 404);
    let (status, _) = call(addr, "POST", "/api/v1/traces", Some(TOKEN), "").await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn with_tracing_off_a_trace_is_503_and_the_list_says_off() {
    let (server, api) = start(false, false).await;
    let addr = server.local_addr();
    let (status, json) = call(
        addr,
        "POST",
        "/-/trace",
        Some(TOKEN),
        r#"{"agent":"eu/198.18.1.1","target":"198.18.2.1"}"#,
    )
    .await;
    assert_eq!(status, 503, "{json}");
    assert!(json["data"].as_str().unwrap().contains("off"), "{json}");
    let (status, json) = call(addr, "GET", "/api/v1/traces", None, "").await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["tracing"], false);
    assert_eq!(json["traces"].as_array().unwrap().len(), 0);
    let (status, _) = call(addr, "GET", "/api/v1/traces?id=1", None, "").await;
    assert_eq!(status, 404);
    assert!(api.sent.lock().unwrap().is_empty());
    // The token still comes first.
    let (status, _) = call(addr, "POST", "/-/trace", None, "{}").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_traces_follow_the_mesh_datas_access_rule() {
    let (server, _api) = start(true, true).await;
    let addr = server.local_addr();
    for token in [None, Some("wrong")] {
        let (status, _) = call(addr, "GET", "/api/v1/traces", token, "").await;
        assert_eq!(status, 401);
    }
    let (status, json) = call(addr, "GET", "/api/v1/traces", Some(TOKEN), "").await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["version"], 1);
}
