//! The log lines strangers can cause at the HTTP endpoints: each names the peer, each kind
//! at most once a second with the count of the others, and text a stranger sent is escaped
//! and cut short. Its own test binary, so that no other test's thread meets the same log
//! call sites without a subscriber while this one captures them (tracing caches, per call
//! site, whether anyone listens).

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::admin::{FixedApi, TOKEN, request};
use probermesh_adapters::admin::{AdminLimits, AdminServer};
use probermesh_adapters::secret::Token;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn refusals_are_logged_with_the_peers_address_at_most_once_a_second_per_kind() {
    let (logs, _guard) = common::capture_logs();
    let api = Arc::new(FixedApi::default());
    let token = Token::new(TOKEN, "the test").expect("a token");
    let interval = AdminLimits::default().log_interval;
    let server = AdminServer::start("127.0.0.1:0", Arc::clone(&api) as _, Some(token))
        .await
        .expect("the endpoints");
    let addr = server.local_addr();

    // A burst of wrong tokens, then one more after the interval: every attempt is a line or
    // counted in a later line's `suppressed`.
    const BURST: usize = 30;
    let burst_start = Instant::now();
    for _ in 0..BURST {
        let (status, _, _) = request(addr, "POST", "/-/reload", Some("Bearer wrong")).await;
        assert_eq!(status, 401);
    }
    let burst = burst_start.elapsed();
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    let mut last = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let last_peer = last.local_addr().expect("its address");
    last.write_all(
        b"POST /-/reload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n\
          Connection: close\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .expect("write");
    last.read_to_end(&mut Vec::new()).await.expect("read");

    let text = logs.text();
    let refusals: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("/-/reload refused: missing or wrong bearer token"))
        .collect();
    let allowed = (burst.as_secs_f64() / interval.as_secs_f64()).ceil() as usize + 2;
    assert!(
        (2..=allowed).contains(&refusals.len()),
        "{} refusal lines for {} attempts in {burst:?}:\n{text}",
        refusals.len(),
        BURST + 1
    );
    let suppressed: usize = refusals
        .iter()
        .map(|l| field(l, "suppressed").parse::<usize>().expect("a count"))
        .sum();
    assert_eq!(refusals.len() + suppressed, BURST + 1, "{text}");
    for line in &refusals {
        assert!(field(line, "remote").starts_with("127.0.0.1:"), "{line}");
        assert!(line.contains("wrong bearer token"), "{line}");
    }
    assert_eq!(
        field(refusals.last().expect("a line"), "remote"),
        last_peer.to_string()
    );

    // Another kind has its own limit; a stranger's method is escaped and cut short.
    let long_method = "X".repeat(4_000);
    let (status, _, _) = request(addr, &long_method, "/-/reload", None).await;
    assert_eq!(status, 405);
    let text = logs.text();
    let method_line = text
        .lines()
        .find(|l| l.contains("reloads on POST or PUT only"))
        .unwrap_or_else(|| panic!("a 405 line:\n{text}"));
    assert!(
        field(method_line, "remote").starts_with("127.0.0.1:"),
        "{method_line}"
    );
    assert!(method_line.contains("…(+3936 bytes)"), "{method_line}");
    assert!(method_line.len() < 400, "{method_line}");
    assert_eq!(api.reloads.load(Ordering::SeqCst), 0);
}

/// The value of `name=value` in a log line.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {line}"))
}
