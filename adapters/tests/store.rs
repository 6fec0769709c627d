//! The file store (port `Store`) on a real directory, and the restart handoff over it: the
//! atomic-write, owner-only, size-limit and damaged-record rules, and what it refuses: a record
//! too large to read (judged by its length, before reading), a record that is not a regular
//! file (a FIFO must not hang the start), a data directory others could plant records in.

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
        .expect_err("too large to read")
        .to_string();
    assert!(error.contains("open-windows.bin"), "{error}");
    assert!(
        error.contains("the file is 9 bytes, over the limit of 8 bytes"),
        "{error}"
    );
}

/// The process's peak resident memory so far (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line")
}

/// A sparse file of `len_bytes` at `path` (no block of it is allocated).
fn sparse_file(path: &std::path::Path, len_bytes: u64) {
    let file = std::fs::File::create(path).expect("created");
    file.set_len(len_bytes).expect("a sparse file");
}

#[test]
fn a_record_larger_than_its_limit_is_refused_by_its_length_without_being_read() {
    let dir = TempDir::new("pm-store-sparse");
    // A cap of 256 MiB: reading up to it (as a read that only counted the bytes it read would)
    // would raise the peak memory by that much.
    let cap_bytes: u64 = 256 * 1024 * 1024;
    let store = FileStore::new(dir.path()).with_max_bytes(cap_bytes);
    let file = store.path_of(Record::OpenWindows);
    let huge_bytes: u64 = 64 * 1024 * 1024 * 1024;
    sparse_file(&file, huge_bytes);
    let before_kib = peak_rss_kib();
    let error = store
        .read(Record::OpenWindows)
        .expect_err("far over the limit")
        .to_string();
    let grown_kib = peak_rss_kib().saturating_sub(before_kib);
    assert!(
        grown_kib < 64 * 1024,
        "the peak memory grew by {grown_kib} KiB: {error}"
    );
    assert!(error.contains(&file.display().to_string()), "{error}");
    // The length is the file's (from its metadata: nothing was read to learn it) and the limit
    // is said.
    assert!(
        error.contains(&format!(
            "the file is {huge_bytes} bytes, over the limit of {cap_bytes} bytes"
        )),
        "{error}"
    );
    assert!(file.exists(), "refused, not removed");

    // Without a cap, the record's own limit, derived from the server's, is named.
    let store = FileStore::new(dir.path());
    let limit = Record::OpenWindows.max_bytes();
    sparse_file(&file, limit + 1);
    let error = store
        .read(Record::OpenWindows)
        .expect_err("one byte over the limit")
        .to_string();
    assert!(
        error.contains(&format!(
            "the file is {} bytes, over the limit of {limit} bytes for open-windows.bin (2 \
             unsettled windows × 2,000,000 results × 256 bytes a result",
            limit + 1
        )),
        "{error}"
    );
    assert!(limit < 2 * 1024 * 1024 * 1024, "below the former 2 GiB");
}

#[test]
fn a_fifo_or_a_link_in_place_of_a_record_is_refused_without_hanging() {
    let dir = TempDir::new("pm-store-fifo");
    let store = FileStore::new(dir.path());
    let file = store.path_of(Record::OpenWindows);
    nix::unistd::mkfifo(&file, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let (done, outcome) = std::sync::mpsc::channel();
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || {
            let _ = done.send(store.read(Record::OpenWindows));
        })
    };
    let read = match outcome.recv_timeout(Duration::from_secs(60)) {
        Ok(read) => read,
        Err(_) => {
            // Unblock the reader (it waits for a writer) before failing.
            drop(std::fs::OpenOptions::new().write(true).open(&file));
            let _ = reader.join();
            panic!("reading a FIFO hung");
        }
    };
    reader.join().expect("the reader ends");
    let error = read.expect_err("a FIFO is not a record").to_string();
    assert!(error.contains(&file.display().to_string()), "{error}");
    assert!(
        error.contains("it is a FIFO (named pipe), not a regular file"),
        "{error}"
    );
    // The next stop's record replaces it.
    store
        .write(Record::OpenWindows, b"record")
        .expect("written");
    assert_eq!(
        store.read(Record::OpenWindows),
        Ok(Some(b"record".to_vec()))
    );

    // A symbolic link is not followed.
    let elsewhere = dir.path().join("elsewhere.bin");
    std::fs::write(&elsewhere, b"planted").expect("written");
    std::fs::remove_file(&file).expect("removed");
    std::os::unix::fs::symlink(&elsewhere, &file).expect("a link");
    let error = store
        .read(Record::OpenWindows)
        .expect_err("a link is not a record")
        .to_string();
    assert!(
        error.contains("it is a symbolic link, not a regular file"),
        "{error}"
    );
}

fn chmod(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn a_data_directory_others_may_write_is_refused_and_one_its_group_may_write_is_warned_about() {
    let dir = TempDir::new("pm-store-perms");
    for mode in [0o777, 0o1777, 0o773] {
        let data = dir.path().join(format!("data-{mode:o}"));
        std::fs::create_dir(&data).expect("created");
        chmod(&data, mode);
        let refused = FileStore::open(&data)
            .expect_err("every user may write it")
            .to_string();
        assert!(
            refused.contains(&data.display().to_string())
                && refused.contains(&format!("every user may write it (mode {mode:04o})")),
            "{refused}"
        );
        let store = FileStore::new(&data);
        assert!(store.write(Record::OpenWindows, b"x").is_err());
        assert!(store.read(Record::OpenWindows).is_err());
        assert!(
            !store.path_of(Record::OpenWindows).exists(),
            "nothing written"
        );
    }

    let group = dir.path().join("data-group");
    std::fs::create_dir(&group).expect("created");
    chmod(&group, 0o770);
    let (logs, guard) = common::capture_logs();
    let store = FileStore::open(&group).expect("a group's directory is allowed");
    store.write(Record::OpenWindows, b"x").expect("written");
    drop(guard);
    let warnings = logs.text();
    assert_eq!(
        warnings.matches("group may write it").count(),
        1,
        "warned once: {warnings}"
    );
    assert!(
        warnings.contains(&group.display().to_string()),
        "{warnings}"
    );
}

#[test]
fn a_data_directory_that_is_a_file_or_a_dangling_link_says_what_it_is() {
    let dir = TempDir::new("pm-store-not-a-dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("written");
    let error = FileStore::open(&file).expect_err("a file").to_string();
    assert!(
        error.contains(&file.display().to_string())
            && error.contains("it is a regular file, not a directory"),
        "{error}"
    );
    assert!(!error.contains("File exists"), "{error}");

    let link = dir.path().join("a-link");
    let nowhere = dir.path().join("nowhere");
    std::os::unix::fs::symlink(&nowhere, &link).expect("a link");
    let error = FileStore::open(&link)
        .expect_err("a dangling link")
        .to_string();
    assert!(
        error.contains(&format!(
            "it is a symbolic link to {}, which does not exist",
            nowhere.display()
        )),
        "{error}"
    );
    let error = FileStore::new(&link)
        .write(Record::OpenWindows, b"x")
        .expect_err("a dangling link")
        .to_string();
    assert!(error.contains("which does not exist"), "{error}");

    // A link to a directory is followed.
    std::fs::create_dir(&nowhere).expect("created");
    chmod(&nowhere, 0o700);
    FileStore::open(&link).expect("a link to a directory");
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
