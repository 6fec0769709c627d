//! `probermesh traceroute` against mtr, on a path of real routers: four network namespaces
//! A – R1 – R2 – B (a `probermesh_tests::chain::Chain` of two routers; addresses from
//! 198.18.0.0/15 only), the trace run from A in raw and in datagram mode while `mtr -r -n`
//! runs there at the same time. Checked: the same hop addresses in the same order, the
//! destination last; 50 % of the echo requests R2 forwards dropped by nftables shows as loss
//! from hop 3 on (not at R1 or R2); R1 dropping its own Time Exceeded shows as a silent first
//! hop while later hops answer; an unreachable target fails with a clear error; on the wire
//! (an nftables set on R1), every probe of a trace has one (checksum, identifier), where the
//! ping engine's echoes each have their own.
//!
//! Needs root (network namespaces) and mtr (scripts/test-packages.sh installs mtr-tiny);
//! fails loudly without them. ICMP rate limiting is off on the routers (`icmp_ratelimit=0`,
//! `icmp_ratemask=0`), so loss is only what a test injects; the loss bounds (10–90 % over 40
//! rounds at p = 0.5) fail by chance less than once in ten million runs.

use std::net::Ipv4Addr;
use std::process::Output;
use std::thread;

use probermesh_tests::chain::Chain;
use probermesh_tests::netns::Namespace;

const BIN: &str = env!("CARGO_BIN_EXE_probermesh");

/// A – R1 – R2 – B: a [`Chain`] of two routers, with A allowed to open ping sockets
/// (datagram mode) as root's group.
struct Path {
    chain: Chain,
}

impl Path {
    fn new() -> Self {
        let chain = Chain::new(2).expect("a routed path (needs root)");
        chain
            .node(0)
            .sysctl("net.ipv4.ping_group_range", "0 2147483647")
            .expect("ping sockets");
        Self { chain }
    }

    fn a(&self) -> &Namespace {
        self.chain.node(0)
    }

    fn r1(&self) -> &Namespace {
        self.chain.node(1)
    }

    fn r2(&self) -> &Namespace {
        self.chain.node(2)
    }

    /// R1's address as A sees it.
    fn r1_addr(&self) -> Option<Ipv4Addr> {
        Some(self.chain.toward_first(1))
    }

    /// R2's address as A sees it.
    fn r2_addr(&self) -> Option<Ipv4Addr> {
        Some(self.chain.toward_first(2))
    }

    /// B, the destination.
    fn b(&self) -> String {
        self.chain.last_addr().to_string()
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
    let b = path.b();
    thread::scope(|scope| {
        let ours = scope.spawn(|| {
            path.a().exec(&[
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
                &b,
            ])
        });
        let mtr = scope.spawn(|| {
            path.a().exec(&[
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
                &b,
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
        assert_eq!(
            addrs(&ours),
            vec![path.r1_addr(), path.r2_addr(), ip(&path.b())],
            "{socket}"
        );
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
    path.r2()
        .nft(
            "table inet lab {\n chain forward {\n type filter hook forward priority 0;\n \
             icmp type echo-request numgen random mod 2 == 0 drop\n }\n}\n",
        )
        .expect("the loss rule");
    for socket in ["raw", "datagram"] {
        let (ours, mtr) = trace_both(&path, socket, 40);
        let (ours, mtr) = (rows(&ours), rows(&mtr));
        assert_eq!(
            addrs(&ours),
            vec![path.r1_addr(), path.r2_addr(), ip(&path.b())],
            "{socket}"
        );
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
    path.r1()
        .nft(
            "table inet lab {\n chain output {\n type filter hook output priority 0;\n \
             icmp type time-exceeded drop\n }\n}\n",
        )
        .expect("the silence rule");
    for socket in ["raw", "datagram"] {
        let (ours_text, mtr) = trace_both(&path, socket, 10);
        let (ours, mtr) = (rows(&ours_text), rows(&mtr));
        assert_eq!(
            addrs(&ours),
            vec![None, path.r2_addr(), ip(&path.b())],
            "{socket}"
        );
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
    // A sends everything else to R1, which has no route to 198.19.0.0/16: it answers every
    // probe with Net Unreachable.
    path.a()
        .exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &path.r1_addr().expect("R1").to_string(),
        ])
        .expect("A's default route");
    for socket in ["raw", "datagram"] {
        let error = path
            .a()
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
    let b = path.b();
    // R1 records the (checksum, identifier) of every echo request it receives.
    path.r1()
        .nft(
            "table inet lab {\n set flows {\n typeof icmp checksum . icmp id\n flags dynamic\n }\n \
             chain prerouting {\n type filter hook prerouting priority 0;\n \
             icmp type echo-request add @flows { icmp checksum . icmp id }\n }\n}\n",
        )
        .expect("the flow recorder");
    for socket in ["raw", "datagram"] {
        path.r1()
            .exec(&["nft", "flush", "set", "inet", "lab", "flows"])
            .expect("an empty set");
        let table = text(
            &path
                .a()
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
                    &b,
                ])
                .expect("probermesh traceroute succeeds"),
        );
        assert_eq!(
            addrs(&rows(&table)),
            vec![path.r1_addr(), path.r2_addr(), ip(&path.b())],
            "{socket}"
        );
        let set = text(
            &path
                .r1()
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
    path.r1()
        .exec(&["nft", "flush", "set", "inet", "lab", "flows"])
        .expect("an empty set");
    path.a()
        .exec(&[BIN, "ping", "-c", "3", "-i", "50", &path.b()])
        .expect("probermesh ping succeeds");
    let set = text(
        &path
            .r1()
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
