//! Timed resolution (the `resolve` phase) against a name server on loopback with a known
//! answer delay, and an ICMP probe of a name end to end: resolve, then ping.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use probermesh_adapters::dns::HickoryDns;
use probermesh_adapters::icmp::IcmpEngine;
use probermesh_core::model::{Host, IcmpFailure, IcmpModule, IcmpSettings};
use probermesh_core::ports::{DnsFailureKind, DnsResolver, IpPreference};
use probermesh_tests::dns_stub::DnsStub;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

const DELAY: Duration = Duration::from_millis(40);

#[test]
fn every_lookup_is_a_real_timed_query() {
    let stub = DnsStub::start(&[("db.lab", Ipv4Addr::new(198, 18, 9, 9))], DELAY).unwrap();
    let dns = HickoryDns::with_name_servers(&[stub.addr()], Duration::from_secs(2)).unwrap();
    let rt = runtime();
    for round in 0..3 {
        let resolution = rt
            .block_on(dns.resolve("db.lab", IpPreference::default()))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(resolution.addr, IpAddr::from(Ipv4Addr::new(198, 18, 9, 9)));
        // The stub answers after DELAY: a lookup cannot be faster, and the cache is off, so
        // the second and third rounds are not either.
        assert!(
            resolution.elapsed >= DELAY,
            "round {round}: {:?}",
            resolution.elapsed
        );
    }
    assert!(stub.queries() >= 3, "{} queries", stub.queries());
}

#[test]
fn an_unknown_name_is_not_found_and_its_time_is_kept() {
    let stub = DnsStub::start(&[], DELAY).unwrap();
    let dns = HickoryDns::with_name_servers(&[stub.addr()], Duration::from_secs(2)).unwrap();
    let failure = runtime()
        .block_on(dns.resolve("nowhere.lab", IpPreference::default()))
        .unwrap_err();
    assert_eq!(failure.kind, DnsFailureKind::NotFound, "{failure}");
    assert!(failure.elapsed >= DELAY, "{:?}", failure.elapsed);
    assert!(failure.to_string().contains("nowhere.lab"), "{failure}");
}

#[test]
fn a_silent_server_is_a_timeout() {
    // A bound socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns =
        HickoryDns::with_name_servers(&[silent.local_addr().unwrap()], Duration::from_millis(200))
            .unwrap();
    let failure = runtime()
        .block_on(dns.resolve("db.lab", IpPreference::default()))
        .unwrap_err();
    assert_eq!(failure.kind, DnsFailureKind::Timeout, "{failure}");
}

#[test]
fn address_literals_are_not_looked_up() {
    let stub = DnsStub::start(&[], DELAY).unwrap();
    let dns = HickoryDns::with_name_servers(&[stub.addr()], Duration::from_secs(2)).unwrap();
    let rt = runtime();
    for literal in ["127.0.0.1", "::1", "[::1]"] {
        let resolution = rt
            .block_on(dns.resolve(literal, IpPreference::default()))
            .unwrap();
        assert_eq!(resolution.elapsed, Duration::ZERO);
    }
    assert_eq!(stub.queries(), 0);
}

#[test]
fn an_icmp_probe_of_a_name_times_the_lookup_then_pings() {
    let stub = DnsStub::start(&[("loop.lab", Ipv4Addr::new(127, 0, 0, 3))], DELAY).unwrap();
    let dns = HickoryDns::with_name_servers(&[stub.addr()], Duration::from_secs(2)).unwrap();
    let engine = IcmpEngine::default();
    let settings = IcmpSettings::new(
        IcmpModule {
            packet_count: 4,
            interval: Duration::from_millis(5),
            payload_size: 56,
        },
        Duration::from_secs(15),
    );
    let rt = runtime();
    let known = rt.block_on(probermesh_core::probe::icmp(
        &dns,
        &engine,
        &Host::Name("loop.lab".into()),
        &settings,
    ));
    assert_eq!(known.failure, None);
    assert!(known.resolve >= DELAY, "{:?}", known.resolve);
    assert_eq!((known.packets_sent, known.packets_received), (4, 4));

    let unknown = rt.block_on(probermesh_core::probe::icmp(
        &dns,
        &engine,
        &Host::Name("nowhere.lab".into()),
        &settings,
    ));
    assert_eq!(unknown.failure, Some(IcmpFailure::Resolve));
    assert_eq!(unknown.packets_sent, 0);
    assert!(unknown.resolve >= DELAY);
}
