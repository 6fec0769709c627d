//! Shared helpers for ProberMesh's cross-crate tests.
//!
//! [`scenario`] runs the data-driven aggregation scenarios of `fixtures/aggregation/`: reports
//! go in, the aggregator's snapshot is checked series by series.
//! [`harness`] has what every test of the binary needs (polling, samples, fingerprints).
//! [`http_origin`] serves HTTP(S) test origins with injected delays and a known certificate.
//! [`chain`] builds a routed line of namespaces (end hosts, routers, leaves) for path tracing.
//! [`lab`] builds a multi-host mesh lab on one L2 segment of namespaces.
//! [`netns`] builds ground-truth hosts in network namespaces; [`dns_stub`] is a name server on
//! loopback with a known answer delay.

pub mod chain;
pub mod dns_stub;
pub mod harness;
pub mod http_origin;
pub mod lab;
pub mod netns;
pub mod scenario;

use std::path::PathBuf;

/// The repository's `fixtures/` folder.
#[must_use]
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
}
