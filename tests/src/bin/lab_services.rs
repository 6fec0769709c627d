//! The lab's service host, run inside a namespace by `bins/probermesh/tests/mesh_lab.rs`:
//! a plain HTTP origin on `<ip>:8080`, an HTTPS origin (HTTP/1.1 and HTTP/2, leaf expiring at
//! `LEAF_NOT_AFTER_UNIX_SECS`) on `<ip>:8443` whose test CA is written to `<dir>/ca.pem`, and a
//! DNS server on `<ip>:53` answering `origin.lab` with `<ip>` after `<dns_delay_ms>`.
//!
//! Usage: `lab_services IP DIR DNS_DELAY_MS`; runs until killed.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use probermesh_tests::dns_stub::DnsStub;
use probermesh_tests::http_origin::{Origin, Security, TestPki};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(ip), Some(dir), Some(delay)) = (
        args.first().and_then(|a| a.parse::<Ipv4Addr>().ok()),
        args.get(1).map(PathBuf::from),
        args.get(2).and_then(|a| a.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: lab_services IP DIR DNS_DELAY_MS");
        return ExitCode::from(2);
    };
    let pki = TestPki::in_dir(dir);
    let _plain = Origin::start_on(Security::Plain, None, SocketAddr::from((ip, 8080)));
    let _tls = Origin::start_on(Security::Tls, Some(&pki), SocketAddr::from((ip, 8443)));
    let _dns = match DnsStub::start_on(
        &[("origin.lab", ip)],
        Duration::from_millis(delay),
        SocketAddr::from((ip, 53)),
    ) {
        Ok(dns) => dns,
        Err(e) => {
            eprintln!("lab_services: DNS on {ip}:53: {e}");
            return ExitCode::from(1);
        }
    };
    loop {
        std::thread::park();
    }
}
