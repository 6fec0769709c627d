//! The wall clock (port `Clock`): the system's, and one that follows tokio's clock, so a
//! driver under test runs in tokio's paused, virtual time.

use std::time::{SystemTime, UNIX_EPOCH};

use probermesh_core::model::UnixMillis;
use probermesh_core::ports::Clock;

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

/// A wall clock that starts at a given instant and advances with tokio's clock: in a test on
/// a paused runtime (`start_paused`), time moves only when the runtime is idle, and every
/// driver reading this clock sees the same virtual time.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    start: UnixMillis,
    started: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start` now.
    #[must_use]
    pub fn starting_at(start: UnixMillis) -> Self {
        Self {
            start,
            started: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> UnixMillis {
        let elapsed = self.started.elapsed();
        UnixMillis(
            self.start
                .as_millis()
                .saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}
