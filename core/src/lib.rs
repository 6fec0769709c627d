//! # probermesh-core
//!
//! The pure domain of ProberMesh, a network mesh prober: agents in many regions ping each other
//! (ICMP, region to region) and probe URLs (HTTP, region to URL); one server pools what every
//! agent of a region saw and serves it to Prometheus.
//!
//! This crate holds everything that is *decided* rather than *done*:
//! - [`model`]: regions, agents, targets, probe settings and probe results;
//! - [`stats`]: loss, RTT summaries and the mergeable RTT histogram;
//! - [`aggregate`]: the server's aggregator, a sans-IO state machine producing a [`snapshot`];
//! - [`pool`]: the target pool (static and dynamic discovery) and what each agent receives;
//! - [`mesh`]: the built-in mesh view: region × region cells and their states, the bounded
//!   per-pair history, the HTTP table and the agent list;
//! - [`matcher`]: the task region matcher (`=`, `!=`, `=~`, `!~`);
//! - [`task`]: remote tasks: the command policy, signatures, the server's task book and the
//!   agent's runs;
//! - [`upgrade`]: agent self-upgrade: semantic versions, the server's staged rollout and the
//!   agent's download, hand-over and probation;
//! - [`trace`]: automatic path tracing on a failing region pair: the server's trigger desk,
//!   the blamed hop of a finished trace, the bounded store of results;
//! - [`probe_file`]: the server's probe file (the Go YAML schema);
//! - [`simulated_wan`]: the demo's simulated WAN, a decorator of the ICMP pinger port;
//! - [`wire`]: the agent↔server protocol messages and their framing;
//! - [`delivery`]: the agent's result outbox and the server's deduplication (sequence numbers,
//!   acknowledgements, bounded buffering);
//! - [`ports`]: the traits the I/O adapters implement; with the `fake` feature, the `fake`
//!   module holds hand-written fakes of each that record what they were asked.
//!
//! **Invariant:** core performs no I/O, reads no clock and depends on no runtime or network
//! crate. Time comes in as an argument ([`model::UnixMillis`]), so everything here runs in
//! virtual time in tests.
//!
//! ## Embedding: probe with fakes, aggregate, read the snapshot
//!
//! ```
//! # #[cfg(feature = "fake")] fn main() {
//! use std::net::IpAddr;
//! use std::time::Duration;
//!
//! use probermesh_core::aggregate::{Aggregator, AggregatorConfig, ICMP_LOSS};
//! use probermesh_core::fake::FakePinger;
//! use probermesh_core::model::*;
//! use probermesh_core::ports::{EchoSeries, IcmpPinger};
//!
//! // A pinger that answers 9 of 10 echoes from 10.0.0.2 in 12 ms.
//! let pinger = FakePinger::new();
//! let target: IpAddr = "10.0.0.2".parse().unwrap();
//! pinger.answer(target, Ok(EchoSeries { packets_sent: 10, rtts: vec![Duration::from_millis(12); 9], errors: vec![] }));
//!
//! // An agent of region "eu" probes it in the round that starts at t0.
//! let t0 = UnixMillis::from_secs(1_800_000_000);
//! let settings = IcmpSettings::new(IcmpModule { packet_count: 10, ..IcmpModule::default() }, Duration::from_secs(15));
//! let echoes = pollster::block_on(pinger.ping(target, &settings)).unwrap();
//! let result = ProbeResult {
//!     source: AgentId::new(Region::new("eu").unwrap(), "10.0.0.1".parse().unwrap()),
//!     target_region: Region::new("us").unwrap(),
//!     target: target.to_string(),
//!     round_start: t0,
//!     outcome: ProbeOutcome::Icmp(echoes.to_result(Duration::ZERO)),
//! };
//!
//! // The server files it in its window; the window settles one window after it ends.
//! let mut aggregator = Aggregator::new(AggregatorConfig::default(), t0).unwrap();
//! aggregator.handle_results(t0.saturating_add(Duration::from_secs(2)), [result]);
//! let settled = t0.saturating_add(Duration::from_secs(30));
//! aggregator.handle_timeout(settled);
//!
//! let snapshot = aggregator.snapshot(settled);
//! let loss = snapshot.number(ICMP_LOSS, &[("source_region", "eu"), ("target_region", "us")]);
//! assert_eq!(loss, Some(10.0));
//! assert_eq!(pinger.calls().len(), 1);
//! # }
//! # #[cfg(not(feature = "fake"))] fn main() {}
//! ```

pub mod agent;
pub mod aggregate;
pub mod delivery;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod link;
pub mod matcher;
pub mod mesh;
pub mod model;
pub mod pool;
pub mod ports;
pub mod probe;
pub mod probe_file;
pub mod server;
pub mod simulated_wan;
pub mod snapshot;
pub mod stats;
pub mod task;
pub mod trace;
pub mod upgrade;
pub mod wire;
