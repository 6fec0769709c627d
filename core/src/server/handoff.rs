//! The restart handoff as decisions over the [`Store`] port: a server that stops gracefully
//! hands the results of its unsettled windows to the next server on the same store, which
//! files them before it takes any result from the link, so a restart loses no acknowledged
//! result. The record is removed only once the new server has started
//! ([`finish_resume`]), so a failed start keeps it for the next try; a damaged record is set
//! aside (kept for a post-mortem, never read again). The bytes are `core::wire::handoff`'s.

use std::time::Duration;

use super::ServerState;
use crate::aggregate::Intake;
use crate::model::{ProbeResult, UnixMillis};
use crate::ports::{Record, Store, StoreError};
use crate::wire::handoff::MAX_OPEN_WINDOW_RESULTS;
use crate::wire::{WireError, decode_open_windows, encode_open_windows};

/// What [`hand_over`] wrote.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct HandedOver {
    /// Results written.
    pub written: usize,
    /// Results left out because the record holds at most `MAX_OPEN_WINDOW_RESULTS` results in
    /// at most `Record::max_bytes` bytes: the oldest rounds go.
    pub left_out: usize,
}

/// Why the unsettled windows could not be handed over; their results are lost.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum HandoffError {
    /// They could not be encoded.
    #[error("encoding the unsettled windows: {0}")]
    Encode(WireError),
    /// The store refused them.
    #[error(transparent)]
    Store(StoreError),
}

/// Writes `open`, the results of a stopping server's unsettled windows (aggregated over
/// `window`), to `store`. Nothing to hand over writes nothing. The record holds at most
/// `MAX_OPEN_WINDOW_RESULTS` results in at most [`Record::max_bytes`] bytes: the oldest rounds
/// are left out of a larger one (counted in [`HandedOver::left_out`]), so the next server can
/// read what this one wrote.
///
/// # Errors
/// [`HandoffError`] when the record could not be written.
pub fn hand_over(
    store: &dyn Store,
    now: UnixMillis,
    window: Duration,
    open: Vec<ProbeResult>,
) -> Result<HandedOver, HandoffError> {
    hand_over_within(store, now, window, open, Record::OpenWindows.max_bytes())
}

/// [`hand_over`] in a record of at most `max_bytes`.
fn hand_over_within(
    store: &dyn Store,
    now: UnixMillis,
    window: Duration,
    mut open: Vec<ProbeResult>,
    max_bytes: u64,
) -> Result<HandedOver, HandoffError> {
    if open.is_empty() {
        return Ok(HandedOver::default());
    }
    let offered = open.len();
    // Newest first: what does not fit is the oldest rounds.
    open.sort_by_key(|r| std::cmp::Reverse(r.round_start));
    open.truncate(MAX_OPEN_WINDOW_RESULTS);
    let mut bytes = encode_open_windows(now, window, &open).map_err(HandoffError::Encode)?;
    while bytes.len() as u64 > max_bytes && !open.is_empty() {
        // Keep the share that should fit, with a sixteenth to spare; at least one fewer.
        let share = u128::from(max_bytes) * 15 / 16 * open.len() as u128 / bytes.len() as u128;
        let keep = usize::try_from(share)
            .unwrap_or(usize::MAX)
            .min(open.len() - 1);
        open.truncate(keep);
        bytes = encode_open_windows(now, window, &open).map_err(HandoffError::Encode)?;
    }
    if !open.is_empty() {
        store
            .write(Record::OpenWindows, &bytes)
            .map_err(HandoffError::Store)?;
    }
    Ok(HandedOver {
        written: open.len(),
        left_out: offered - open.len(),
    })
}

/// What [`resume`] found in the store.
#[derive(Clone, Debug, PartialEq)]
pub enum Resumed {
    /// No handoff record.
    Nothing,
    /// The previous server aggregated over another window: its results are not filed (they
    /// would land in windows of another length), and the record goes once started.
    OtherWindow {
        /// Results in the record.
        results: usize,
        /// The previous server's window.
        theirs: Duration,
        /// This server's window.
        ours: Duration,
    },
    /// The results were filed; the record goes once started.
    Filed {
        /// When the previous server wrote them.
        saved_at: UnixMillis,
        /// Results in the record.
        offered: usize,
        /// What filing them did.
        intake: Intake,
    },
    /// The record could not be decoded: it was set aside.
    Damaged {
        /// What is wrong with it.
        error: WireError,
        /// Where it went (or why it could not be moved).
        moved_to: Result<String, StoreError>,
    },
}

impl Resumed {
    /// Whether the record must be removed once the server has started.
    #[must_use]
    pub const fn remove_once_started(&self) -> bool {
        matches!(self, Self::OtherWindow { .. } | Self::Filed { .. })
    }
}

/// Files the results a previous server left in `store` into `state`, before any result
/// comes over the link.
///
/// # Errors
/// [`StoreError`] when the record exists but cannot be read; it stays for the next try.
pub fn resume(
    state: &mut ServerState,
    store: &dyn Store,
    now: UnixMillis,
) -> Result<Resumed, StoreError> {
    let Some(bytes) = store.read(Record::OpenWindows)? else {
        return Ok(Resumed::Nothing);
    };
    let windows = match decode_open_windows(&bytes) {
        Ok(windows) => windows,
        Err(error) => {
            return Ok(Resumed::Damaged {
                error,
                moved_to: store.set_aside(Record::OpenWindows),
            });
        }
    };
    let ours = state.window();
    if windows.window != ours {
        return Ok(Resumed::OtherWindow {
            results: windows.results.len(),
            theirs: windows.window,
            ours,
        });
    }
    let offered = windows.results.len();
    let intake = state.resume_results(now, windows.results);
    Ok(Resumed::Filed {
        saved_at: windows.saved_at,
        offered,
        intake,
    })
}

/// Removes the handoff record once the server that resumed it has started (when
/// [`Resumed::remove_once_started`]).
///
/// # Errors
/// [`StoreError`] when it cannot be removed (the next start would file its results again).
pub fn finish_resume(store: &dyn Store, resumed: &Resumed) -> Result<(), StoreError> {
    if resumed.remove_once_started() {
        store.remove(Record::OpenWindows)?;
    }
    Ok(())
}

#[cfg(all(test, feature = "fake"))]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::aggregate::{Aggregator, AggregatorConfig};
    use crate::fake::MemoryStore;
    use crate::model::{AgentId, IcmpResult, ProbeOutcome, Region};
    use crate::pool::{Discovery, TargetPool};

    const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

    fn state(window_secs: u64) -> ServerState {
        let config = AggregatorConfig {
            window: Duration::from_secs(window_secs),
            ..AggregatorConfig::default()
        };
        ServerState::new(
            Aggregator::new(config, NOW).expect("a valid aggregator"),
            TargetPool::new(Vec::new(), Discovery::Dynamic, false),
        )
    }

    fn result(round_start: UnixMillis) -> ProbeResult {
        ProbeResult {
            source: AgentId::new(
                Region::new("a").expect("region"),
                IpAddr::from([198, 18, 0, 1]),
            ),
            target_region: Region::new("b").expect("region"),
            target: "198.18.0.2".to_owned(),
            round_start,
            outcome: ProbeOutcome::Icmp(IcmpResult::measured(
                Duration::ZERO,
                4,
                &[Duration::from_millis(3)],
            )),
        }
    }

    #[test]
    fn handed_over_results_are_filed_by_the_next_server_and_removed_once_it_started() {
        let store = MemoryStore::new();
        let mut first = state(60);
        first.resume_results(NOW, vec![result(NOW)]);
        let open = first.take_open_results();
        let written = hand_over(&store, NOW, first.window(), open).expect("written");
        assert_eq!(
            written,
            HandedOver {
                written: 1,
                left_out: 0
            }
        );

        let mut second = state(60);
        let resumed = resume(&mut second, &store, NOW).expect("read");
        assert!(
            matches!(&resumed, Resumed::Filed { offered: 1, intake, .. } if intake.accepted == 1),
            "{resumed:?}"
        );
        assert!(
            store.read(Record::OpenWindows).expect("read").is_some(),
            "kept until started"
        );
        finish_resume(&store, &resumed).expect("removed");
        assert_eq!(store.read(Record::OpenWindows), Ok(None));
        assert_eq!(second.take_open_results(), vec![result(NOW)]);
    }

    #[test]
    fn another_window_is_not_filed_and_a_damaged_record_is_set_aside() {
        let store = MemoryStore::new();
        hand_over(&store, NOW, Duration::from_secs(15), vec![result(NOW)]).expect("written");
        let mut other = state(60);
        let resumed = resume(&mut other, &store, NOW).expect("read");
        assert_eq!(
            resumed,
            Resumed::OtherWindow {
                results: 1,
                theirs: Duration::from_secs(15),
                ours: Duration::from_secs(60),
            }
        );
        assert!(resumed.remove_once_started());
        assert!(other.take_open_results().is_empty());

        store.put(Record::OpenWindows, b"not a handoff file".to_vec());
        let damaged = resume(&mut other, &store, NOW).expect("read");
        let Resumed::Damaged { error, moved_to } = &damaged else {
            panic!("{damaged:?}");
        };
        assert!(error.to_string().contains("magic"), "{error}");
        assert!(moved_to.as_ref().is_ok_and(|to| to.ends_with(".bad")));
        assert!(!damaged.remove_once_started());
        assert_eq!(store.read(Record::OpenWindows), Ok(None));
        assert_eq!(store.set_aside_records().len(), 1);
    }

    #[test]
    fn results_over_the_record_size_leave_the_oldest_rounds_out() {
        let store = MemoryStore::new();
        let older = UnixMillis(NOW.as_millis() - 60_000);
        let open: Vec<ProbeResult> = (0..100)
            .map(|i| result(if i % 2 == 0 { older } else { NOW }))
            .collect();
        let all = encode_open_windows(NOW, Duration::from_secs(60), &open).expect("encoded");
        // Room for about half of them.
        let max_bytes = all.len() as u64 / 2 + 16;
        let written = hand_over_within(&store, NOW, Duration::from_secs(60), open, max_bytes)
            .expect("written");
        assert!(written.left_out >= 50, "{written:?}");
        assert_eq!(written.written + written.left_out, 100);
        let bytes = store
            .read(Record::OpenWindows)
            .expect("read")
            .expect("a record");
        assert!(bytes.len() as u64 <= max_bytes, "{} bytes", bytes.len());
        let kept = decode_open_windows(&bytes).expect("decoded").results;
        assert_eq!(kept.len(), written.written);
        assert!(
            kept.iter().all(|r| r.round_start == NOW),
            "the oldest round goes first"
        );
        assert!(Record::OpenWindows.max_bytes() <= 1 << 30, "1 GiB at most");
    }

    #[test]
    fn a_store_that_cannot_write_loses_nothing_silently() {
        let store = MemoryStore::new();
        store.fail_writes(true);
        let error = hand_over(&store, NOW, Duration::from_secs(60), vec![result(NOW)])
            .expect_err("the write fails");
        assert!(error.to_string().contains("no space left"), "{error}");
        assert_eq!(
            hand_over(&store, NOW, Duration::from_secs(60), Vec::new()),
            Ok(HandedOver::default()),
            "nothing to hand over writes nothing"
        );
    }
}
