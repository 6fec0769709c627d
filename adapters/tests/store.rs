//! The file store (port `Store`) on a real directory, and the restart handoff over it: the
//! atomic-write, owner-only, size-limit and damaged-record rules.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::TempDir;
use probermesh_adapters::store::FileStore;
use probermesh_core::aggregate::{Aggregator, AggregatorConfig};
use probermesh_core::model::{AgentId, IcmpResult, ProbeOutcome, ProbeResult, Region, UnixMillis};
use probermesh_core::pool::{Discovery, TargetPool};
use probermesh_core::ports::{Record, Store};
use probermesh_core::server::ServerState;
use probermesh_core::server::handoff::{self, Resumed};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn a_record_is_written_owner_only_read_back_and_removed() {
    let dir = TempDir::new("pm-store-record");
    let data = dir.path().join("data");
    let store = FileStore::new(&data);
    assert_eq!(store.read(Record::OpenWindows), Ok(None));
    store.write(Record::OpenWindows, b"first").expect("written");
    store
        .write(Record::OpenWindows, b"second")
        .expect("replaced");
    let file = store.path_of(Record::OpenWindows);
    assert_eq!(file, data.join("open-windows.bin"));
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(
        store.read(Record::OpenWindows),
        Ok(Some(b"second".to_vec()))
    );
    assert!(
        !data.join("open-windows.bin.tmp").exists(),
        "no temporary left"
    );
    store.remove(Record::OpenWindows).expect("removed");
    assert_eq!(store.read(Record::OpenWindows), Ok(None));
    store.remove(Record::OpenWindows).expect("none is fine");
}

#[test]
fn a_record_over_its_limit_is_neither_written_nor_read() {
    let dir = TempDir::new("pm-store-limit");
    let store = FileStore::new(dir.path()).with_max_bytes(8);
    store
        .write(Record::OpenWindows, b"12345678")
        .expect("at the limit");
    let refused = store
        .write(Record::OpenWindows, b"123456789")
        .expect_err("over it");
    assert!(refused.to_string().contains("larger than"), "{refused}");
    assert_eq!(
        store.read(Record::OpenWindows),
        Ok(Some(b"12345678".to_vec())),
        "the previous record stays"
    );
    std::fs::write(store.path_of(Record::OpenWindows), b"123456789").expect("grown by hand");
    let error = store
        .read(Record::OpenWindows)
        .expect_err("too large to read");
    assert!(error.to_string().contains("open-windows.bin"), "{error}");
}

#[test]
fn an_unwritable_directory_is_named() {
    let dir = TempDir::new("pm-store-unwritable");
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"a file").expect("a file");
    let store = FileStore::new(&blocker.join("data"));
    let error = store
        .write(Record::OpenWindows, b"x")
        .expect_err("a file is in the way");
    assert!(error.to_string().contains("not-a-dir"), "{error}");
}

fn server(window: Duration, now: UnixMillis) -> ServerState {
    let config = AggregatorConfig {
        window,
        ..AggregatorConfig::default()
    };
    ServerState::new(
        Aggregator::new(config, now).expect("aggregator"),
        TargetPool::new(Vec::new(), Discovery::Dynamic, false),
    )
}

#[test]
fn a_restart_hands_the_unsettled_windows_over_through_the_directory() {
    let dir = TempDir::new("pm-store-handoff");
    let store = FileStore::new(dir.path());
    let now = UnixMillis(1_800_000_000_000);
    let window = Duration::from_secs(60);
    let result = ProbeResult {
        source: AgentId::new(Region::new("a").expect("region"), [198, 18, 0, 1].into()),
        target_region: Region::new("b").expect("region"),
        target: "198.18.0.2".to_owned(),
        round_start: now,
        outcome: ProbeOutcome::Icmp(IcmpResult::measured(
            Duration::ZERO,
            4,
            &[Duration::from_millis(3)],
        )),
    };
    let mut first = server(window, now);
    first.resume_results(now, vec![result.clone()]);
    let written =
        handoff::hand_over(&store, now, window, first.take_open_results()).expect("saved");
    assert_eq!(written.written, 1);

    let mut second = server(window, now);
    let resumed = handoff::resume(&mut second, &store, now).expect("read");
    assert!(
        matches!(resumed, Resumed::Filed { offered: 1, .. }),
        "{resumed:?}"
    );
    handoff::finish_resume(&store, &resumed).expect("removed");
    assert!(!store.path_of(Record::OpenWindows).exists());
    assert_eq!(second.take_open_results(), vec![result]);

    // A damaged file is named and moved aside.
    std::fs::write(store.path_of(Record::OpenWindows), b"not a handoff file").expect("written");
    let mut third = server(window, now);
    let damaged = handoff::resume(&mut third, &store, now).expect("read");
    let Resumed::Damaged { error, moved_to } = damaged else {
        panic!("{damaged:?}");
    };
    assert!(error.to_string().contains("magic"), "{error}");
    let moved_to = moved_to.expect("moved");
    assert!(moved_to.ends_with("open-windows.bin.bad"), "{moved_to}");
    assert!(!store.path_of(Record::OpenWindows).exists());
    assert!(dir.path().join("open-windows.bin.bad").exists());
}
