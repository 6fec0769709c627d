//! # probermesh-core
//!
//! The pure domain of ProberMesh. (Crate docs with a runnable example are written with the
//! aggregator.)

pub mod aggregate;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod matcher;
pub mod model;
pub mod pool;
pub mod ports;
pub mod probe_file;
pub mod snapshot;
pub mod stats;
pub mod wire;
