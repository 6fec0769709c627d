//! # probermesh-adapters
//!
//! The I/O half of ProberMesh: each module implements one port of [`probermesh_core::ports`]
//! with a real network library.
//!
//! - [`icmp`]: the ICMP engine ([`icmp::IcmpEngine`], port `IcmpPinger`), one socket per
//!   address family for every target, over socket2 (and nix for kernel timestamps).
//! - [`dns`]: timed name resolution ([`dns::HickoryDns`], port `DnsResolver`) over
//!   hickory-resolver.
//!
//! - [`link`]: the agent↔server link over QUIC and TLS 1.3 ([`link::AgentLink`], port
//!   `ServerLink`; [`link::ReportServer`], port `ReportSource`), over quinn and rustls (ring).
//!
//! HTTP timing (hyper-util) and the metrics export arrive with their own issues.

pub mod dns;
pub mod icmp;
pub mod link;

pub use probermesh_core as core;
