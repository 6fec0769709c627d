//! # probermesh-adapters
//!
//! The I/O half of ProberMesh: each module implements one port of [`probermesh_core::ports`]
//! with a real network library (ICMP over socket2, DNS timing over hickory-resolver, HTTP timing
//! over hyper-util, the agent↔server link over quinn, metrics export for Prometheus).
//!
//! The adapters arrive with their own issues (ICMP, HTTP, QUIC link, product); until then this
//! crate only fixes the dependency direction `bins → adapters → core`.

pub use probermesh_core as core;
