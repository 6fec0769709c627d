//! Pure statistics: per-probe RTT summaries, loss, and the mergeable RTT histogram.
//! Nothing here fails or allocates per sample beyond its inputs.

pub mod histogram;
pub mod rtt;

pub use histogram::{BUCKET_COUNT, RttHistogram, bucket_bounds_nanos, bucket_bounds_seconds};
pub use rtt::{RttSummary, loss_percent};
