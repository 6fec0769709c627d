//! `probermesh traceroute` against mtr, on a path of real routers: four network namespaces
//! A – R1 – R2 – B (the routers forward, addresses from 198.18.0.0/15 only), the trace run
//! from A in raw and in datagram mode while `mtr -r -n` runs there at the same time. Checked:
//! the same hop addresses in the same order, the destination last; 50 % of the echo requests
//! R2 forwards dropped by nftables shows as loss from hop 3 on (not at R1 or R2); R1 dropping
//! its own Time Exceeded shows as a silent first hop while later hops answer; an unreachable
//! target fails with a clear error; on the wire (an nftables set on R1), every probe of a
//! trace has one (checksum, identifier), where the ping engine's echoes each have their own.
//!
//! Needs root (network namespaces) and mtr (scripts/test-packages.sh installs mtr-tiny);
//! fails loudly without them. ICMP rate limiting is off on the routers (`icmp_ratelimit=0`,
//! `icmp_ratemask=0`), so loss is only what a test injects; the loss bounds (10–90 % over 40
//! rounds at p = 0.5) fail by chance less than once in ten million runs.

use std::net::Ipv4Addr;
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use probermesh_tests::netns::{Namespace, remove_stale, run};

/// Numbers the namespaces of the paths alive at once in this process (tests run in parallel).
static NEXT: AtomicU32 = AtomicU32::new(900);

const BIN: &str = env!("CARGO_BIN_EXE_probermesh");

const R1: &str = "198.18.101.1";
const R2: &str = "198.18.102.2";
const B: &str = "198.18.103.2";

/// A – R1 – R2 – B. Dropping it removes every namespace (and so every veth pair).
struct Path {
    a: Namespace,
    r1: Namespace,
    r2: Namespace,
    b: Namespace,
}

fn veth(left: &Namespace, left_name: &str, right: &Namespace, right_name: &str) {
    run(
        "ip",
        &[
            "link",
            "add",
            "name",
            left_name,
            "netns",
            left.name(),
            "type",
            "veth",
            "peer",
            "name",
            right_name,
            "netns",
            right.name(),
        ],
    )
    .expect("a veth pair");
}

fn up(ns: &Namespace, dev: &str, addr: &str) {
    ns.exec(&["ip", "addr", "add", addr, "dev", dev])
        .expect("an address");
    ns.exec(&["ip", "link", "set", dev, "up"]).expect("link up");
}

impl Path {
    fn new() -> Self {
        remove_stale();
        let pid = std::process::id();
        // Named as tests/src/netns.rs names its own, so an interrupted run's are removed.
        let ns = |_: u32| {
            let index = NEXT.fetch_add(1, Ordering::Relaxed);
            Namespace::create(format!("pm{pid}n{index}")).expect("a namespace (needs root)")
        };
        let path = Self {
            a: ns(0),
            r1: ns(1),
            r2: ns(2),
            b: ns(3),
        };
        veth(&path.a, "a0", &path.r1, "r1a");
        veth(&path.r1, "r1b", &path.r2, "r2a");
        veth(&path.r2, "r2b", &path.b, "b0");
        for ns in [&path.a, &path.r1, &path.r2, &path.b] {
            ns.exec(&["ip", "link", "set", "lo", "up"]).expect("lo up");
        }
        up(&path.a, "a0", "198.18.101.2/24");
        up(&path.r1, "r1a", "198.18.101.1/24");
        up(&path.r1, "r1b", "198.18.102.1/24");
        up(&path.r2, "r2a", "198.18.102.2/24");
        up(&path.r2, "r2b", "198.18.103.1/24");
        up(&path.b, "b0", "198.18.103.2/24");
        path.a
            .exec(&["ip", "route", "add", "default", "via", "198.18.101.1"])
            .expect("A's route");
        path.r1
            .exec(&[
                "ip",
                "route",
                "add",
                "198.18.103.0/24",
                "via",
                "198.18.102.2",
            ])
            .expect("R1's route");
        path.r2
            .exec(&[
                "ip",
                "route",
                "add",
                "198.18.101.0/24",
                "via",
                "198.18.102.1",
            ])
            .expect("R2's route");
        path.b
            .exec(&["ip", "route", "add", "default", "via", "198.18.103.1"])
            .expect("B's route");
        for router in [&path.r1, &path.r2, &path.b] {
            router
                .sysctl("net.ipv4.ip_forward", "1")
                .expect("forwarding");
            router
                .sysctl("net.ipv4.icmp_ratelimit", "0")
                .expect("no ICMP rate limit");
            router
                .sysctl("net.ipv4.icmp_ratemask", "0")
                .expect("no ICMP rate mask");
        }
        // Datagram mode: root's group may open ping sockets in A.
        path.a
            .sysctl("net.ipv4.ping_group_range", "0 2147483647")
            .expect("ping sockets");
        path
    }
}

/// One row of a table: the hop's address (`None` for `???`), loss percent, sent.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    addr: Option<Ipv4Addr>,
    loss: f64,
    sent: u32,
}

/// The rows of an `mtr -r` table (ours or mtr's: `  1.|-- 198.18.101.1  0.0%  10 …`).
fn rows(table: &str) -> Vec<Row> {
    table
        .lines()
        .filter(|line| line.contains(".|--"))
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let addr = match words.get(1) {
                Some(&"???") => None,
                Some(word) => Some(
                    word.parse()
                        .unwrap_or_else(|_| panic!("an address: {line}")),
                ),
                None => panic!("a hop row: {line}"),
            };
            let loss = words
                .get(2)
                .and_then(|w| w.trim_end_matches('%').parse().ok())
                .unwrap_or_else(|| panic!("a loss: {line}"));
            let sent = words
                .get(3)
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("a count: {line}"));
            Row { addr, loss, sent }
        })
        .collect()
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs our traceroute (`socket` mode) and mtr from A at the same time; returns both tables.
fn trace_both(path: &Path, socket: &str, rounds: u32) -> (String, String) {
    let rounds_text = rounds.to_string();
    thread::scope(|scope| {
        let ours = scope.spawn(|| {
            path.a.exec(&[
                BIN,
                "traceroute",
                "--socket",
                socket,
                "--rounds",
                &rounds_text,
                "--interval",
                "100",
                "--reply-timeout",
                "1000",
                "--max-hops",
                "10",
                B,
            ])
        });
        let mtr = scope.spawn(|| {
            path.a.exec(&[
                "mtr",
                "-r",
                "-n",
                "-c",
                &rounds_text,
                "-i",
                "0.1",
                "-G",
                "1",
                "-m",
                "10",
                B,
            ])
        });
        let ours = ours.join().expect("the traceroute thread");
        let mtr = mtr.join().expect("the mtr thread");
        let ours = text(&ours.expect("probermesh traceroute succeeds"));
        let mtr = text(&mtr.expect("mtr runs (install mtr-tiny: scripts/test-packages.sh)"));
        eprintln!("probermesh traceroute --socket {socket}:\n{ours}\nmtr:\n{mtr}");
        (ours, mtr)
    })
}

fn addrs(rows: &[Row]) -> Vec<Option<Ipv4Addr>> {
    rows.iter().map(|r| r.addr).collect()
}

fn ip(s: &str) -> Option<Ipv4Addr> {
    Some(s.parse().expect("an address"))
}

#[test]
fn the_path_matches_mtr_in_raw_and_datagram_mode() {
    let path = Path::new();
    for socket in ["raw", "datagram"] {
        let (ours, mtr) = trace_both(&path, socket, 10);
        let (ours, mtr) = (rows(&ours), rows(&mtr));
        assert_eq!(addrs(&ours), vec![ip(R1), ip(R2), ip(B)], "{socket}");
        assert_eq!(addrs(&ours), addrs(&mtr), "{socket}: the same hops as mtr");
        for row in &ours {
            assert_eq!(row.sent, 10, "{socket}: {row:?}");
            assert!(
                row.loss == 0.0,
                "{socket}: no loss on a clean path: {row:?}"
            );
        }
    }
}

#[test]
fn loss_forwarded_by_r2_shows_from_the_hop_after_it() {
    let path = Path::new();
    // Half of the echo requests R2 forwards are dropped; those expiring at R2 are answered
    // (TTL expiry comes before the forward hook), so hops 1 and 2 lose nothing.
    path.r2
        .nft(
            "table inet lab {\n chain forward {\n type filter hook forward priority 0;\n \
             icmp type echo-request numgen random mod 2 == 0 drop\n }\n}\n",
        )
        .expect("the loss rule");
    for socket in ["raw", "datagram"] {
        let (ours, mtr) = trace_both(&path, socket, 40);
        let (ours, mtr) = (rows(&ours), rows(&mtr));
        assert_eq!(addrs(&ours), vec![ip(R1), ip(R2), ip(B)], "{socket}");
        assert_eq!(addrs(&ours), addrs(&mtr), "{socket}: the same hops as mtr");
        for table in [&ours, &mtr] {
            assert!(
                table[0].loss == 0.0 && table[1].loss == 0.0,
                "{socket}: {table:?}"
            );
            assert!(
                (10.0..=90.0).contains(&table[2].loss),
                "{socket}: about half lost past R2: {table:?}"
            );
        }
    }
}

#[test]
fn a_router_dropping_its_time_exceeded_is_a_silent_hop() {
    let path = Path::new();
    path.r1
        .nft(
            "table inet lab {\n chain output {\n type filter hook output priority 0;\n \
             icmp type time-exceeded drop\n }\n}\n",
        )
        .expect("the silence rule");
    for socket in ["raw", "datagram"] {
        let (ours_text, mtr) = trace_both(&path, socket, 10);
        let (ours, mtr) = (rows(&ours_text), rows(&mtr));
        assert_eq!(addrs(&ours), vec![None, ip(R2), ip(B)], "{socket}");
        assert_eq!(addrs(&ours), addrs(&mtr), "{socket}: the same hops as mtr");
        assert!(ours[0].loss == 100.0, "{socket}: {ours:?}");
        assert!(ours_text.contains("1.|-- ???"), "{ours_text}");
        assert!(
            ours[1].loss == 0.0 && ours[2].loss == 0.0,
            "{socket}: {ours:?}"
        );
    }
}

#[test]
fn an_unreachable_target_fails_with_a_clear_error() {
    let path = Path::new();
    // R1 has no route to 198.19.0.0/16: it answers every probe with Net Unreachable.
    for socket in ["raw", "datagram"] {
        let error = path
            .a
            .exec(&[
                BIN,
                "traceroute",
                "--socket",
                socket,
                "--rounds",
                "3",
                "--interval",
                "100",
                "--reply-timeout",
                "500",
                "--max-hops",
                "5",
                "198.19.0.1",
            ])
            .expect_err("an unreachable target fails")
            .to_string();
        assert!(
            error.contains("198.19.0.1 did not answer"),
            "{socket}: {error}"
        );
    }
}

#[test]
fn every_probe_of_a_trace_has_one_identifier_and_checksum_on_the_wire() {
    let path = Path::new();
    // R1 records the (checksum, identifier) of every echo request it receives.
    path.r1
        .nft(
            "table inet lab {\n set flows {\n typeof icmp checksum . icmp id\n flags dynamic\n }\n \
             chain prerouting {\n type filter hook prerouting priority 0;\n \
             icmp type echo-request add @flows { icmp checksum . icmp id }\n }\n}\n",
        )
        .expect("the flow recorder");
    for socket in ["raw", "datagram"] {
        path.r1
            .exec(&["nft", "flush", "set", "inet", "lab", "flows"])
            .expect("an empty set");
        let table = text(
            &path
                .a
                .exec(&[
                    BIN,
                    "traceroute",
                    "--socket",
                    socket,
                    "--rounds",
                    "5",
                    "--interval",
                    "100",
                    "--max-hops",
                    "10",
                    B,
                ])
                .expect("probermesh traceroute succeeds"),
        );
        assert_eq!(
            addrs(&rows(&table)),
            vec![ip(R1), ip(R2), ip(B)],
            "{socket}"
        );
        let set = text(
            &path
                .r1
                .exec(&["nft", "list", "set", "inet", "lab", "flows"])
                .expect("the set"),
        );
        eprintln!("{socket}: {set}");
        // 5 rounds × 3 TTLs (10 in the first) reached R1, all of one flow.
        assert_eq!(
            flows(&set),
            1,
            "{socket}: one (checksum, identifier) for every probe: {set}"
        );
    }
    // The control: the ping engine's echoes differ in sequence, so in checksum.
    path.r1
        .exec(&["nft", "flush", "set", "inet", "lab", "flows"])
        .expect("an empty set");
    path.a
        .exec(&[BIN, "ping", "-c", "3", "-i", "50", B])
        .expect("probermesh ping succeeds");
    let set = text(
        &path
            .r1
            .exec(&["nft", "list", "set", "inet", "lab", "flows"])
            .expect("the set"),
    );
    assert_eq!(
        flows(&set),
        3,
        "the recorder sees each ping's checksum: {set}"
    );
}

/// The elements of an `nft list set` listing.
fn flows(set: &str) -> usize {
    set.split("elements = {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .map_or(0, |elements| {
            elements.split(',').filter(|e| !e.trim().is_empty()).count()
        })
}
