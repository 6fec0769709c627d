//! Shared helpers for ProberMesh's cross-crate tests.
//!
//! [`scenario`] runs the data-driven aggregation scenarios of `fixtures/aggregation/`: reports
//! go in, the aggregator's snapshot is checked series by series.

pub mod scenario;

use std::path::PathBuf;

/// The repository's `fixtures/` folder.
#[must_use]
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
}
