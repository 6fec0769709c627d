//! The HTTP prober against local origins (`probermesh_tests::http_origin`): every option of
//! the probe file's `http:` module, every failure reason the origins can provoke, phases
//! against injected delays, and phases against `curl -w` on the same URLs.
//!
//! Timing assertions compare medians over several probes with a 2 ms tolerance, so a busy
//! machine moves both sides alike instead of failing the test by chance.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use probermesh_adapters::dns::HickoryDns;
use probermesh_adapters::http::HyperProber;
use probermesh_core::fake::FakeDns;
use probermesh_core::model::http_module::{
    BasicAuth, Compression, FileRef, HeaderMatch, HttpVersion, IpProtocol, Secret, SecretSource,
    TlsConfig, TlsMinVersion,
};
use probermesh_core::model::{HttpFailure, HttpModule, HttpResult, HttpUrl, TlsVersion};
use probermesh_core::ports::{DnsResolver, HttpProber, Resolution};
use probermesh_tests::dns_stub::DnsStub;
use probermesh_tests::harness::raise_timing_priority;
use probermesh_tests::http_origin::{LEAF_NOT_AFTER_UNIX_SECS, Origin, Proxy, Security, TestPki};
use regex::Regex;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The curl comparisons run alone (write lock); every other test shares (read lock), so a
/// timing comparison never competes with this file's other tests for the two cores.
static EXCLUSIVE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    EXCLUSIVE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    EXCLUSIVE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A resolver that knows `localhost` (instantly), like /etc/hosts.
fn local_dns() -> Arc<dyn DnsResolver> {
    let dns = FakeDns::new();
    dns.answer(
        "localhost",
        Ok(Resolution {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            elapsed: Duration::ZERO,
        }),
    );
    Arc::new(dns)
}

fn probe_with(dns: Arc<dyn DnsResolver>, url: &str, module: &HttpModule) -> HttpResult {
    let prober = HyperProber::new(dns);
    let url = HttpUrl::parse(url).expect("a valid test URL");
    runtime().block_on(prober.probe(&url, module, TIMEOUT))
}

fn probe(url: &str, module: &HttpModule) -> HttpResult {
    probe_with(local_dns(), url, module)
}

fn trusting(pki: &TestPki) -> HttpModule {
    let mut module = HttpModule::default();
    module.client.tls.ca_file = Some(shipped(&pki.ca_pem));
    module
}

fn body_must_match(module: &mut HttpModule, patterns: &[&str]) {
    module.fail_if_body_not_matches_regexp = patterns
        .iter()
        .map(|p| Regex::new(p).expect("a valid test regex"))
        .collect();
}

fn ok(result: &HttpResult) {
    assert_eq!(result.failure, None, "{result:?}");
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

// === phases ===

#[test]
fn processing_and_transfer_match_the_injected_delays() {
    let _guard = alone();
    raise_timing_priority();
    let origin = Origin::start(Security::Plain, None);
    let url = origin.url("/delay?headers_ms=50&chunks=4&chunk_ms=20&chunk_bytes=100");
    let results: Vec<HttpResult> = (0..5)
        .map(|_| probe(&url, &HttpModule::default()))
        .collect();
    results.iter().for_each(ok);
    // The origin's timers run a little late on a busy machine: compare with what it really
    // did (its own clock), and check that this is the delay asked for, give or take 10 ms.
    let truth = origin.delay_timings();
    assert_eq!(truth.len(), 5);
    let processing = median(
        results
            .iter()
            .map(|r| millis(r.phases.processing))
            .collect(),
    );
    let transfer = median(results.iter().map(|r| millis(r.phases.transfer)).collect());
    let true_processing = median(truth.iter().map(|t| millis(t.headers_after)).collect());
    let true_transfer = median(truth.iter().map(|t| millis(t.body_span)).collect());
    assert!(
        (processing - true_processing).abs() <= 2.0,
        "processing {processing:.2} ms, injected {true_processing:.2} ms (asked 50)"
    );
    assert!(
        (transfer - true_transfer).abs() <= 2.0,
        "transfer {transfer:.2} ms, injected {true_transfer:.2} ms (asked 4 × 20)"
    );
    assert!((true_processing - 50.0).abs() <= 10.0 && (true_transfer - 80.0).abs() <= 10.0);
    assert!(results.iter().all(|r| r.phases.tls.is_zero()));
}

/// curl's phases for `url`, `runs` times: connect, tls, processing, transfer (ms).
///
/// One curl process makes `runs + 1` transfers, each on a new connection (`Connection:
/// close`) without TLS session resumption, and the first is dropped: a fresh curl loads its
/// CA store and builds its TLS context inside the `tls` phase, a cost of the tool, not of the
/// network, that our long-running prober does not pay per probe.
fn curl_phases(url: &str, ca: Option<&std::path::Path>, runs: usize) -> Vec<[f64; 4]> {
    let mut command = std::process::Command::new("curl");
    command.args([
        "-s",
        "--http1.1",
        "--no-sessionid",
        "-H",
        "Connection: close",
        "-w",
        "%{time_namelookup} %{time_connect} %{time_appconnect} %{time_pretransfer} \
         %{time_starttransfer} %{time_total}\n",
    ]);
    if let Some(ca) = ca {
        command.arg("--cacert").arg(ca);
    }
    for _ in 0..=runs {
        command.args(["-o", "/dev/null", url]);
    }
    let output = command.output().expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let phases: Vec<[f64; 4]> = text
        .lines()
        .map(|line| {
            let t: Vec<f64> = line
                .split_whitespace()
                .map(|v| v.parse::<f64>().expect("curl prints seconds") * 1e3)
                .collect();
            assert_eq!(t.len(), 6, "curl printed {line:?}");
            let [lookup, connect, app, pre, start, total] = [t[0], t[1], t[2], t[3], t[4], t[5]];
            let tls = if app > 0.0 { app - connect } else { 0.0 };
            [connect - lookup, tls, start - pre, total - start]
        })
        .collect();
    assert_eq!(phases.len(), runs + 1, "curl printed {text:?}");
    phases[1..].to_vec()
}

/// Runs our prober and curl alternately on `url` (so a change in the machine's load hits
/// both) and compares the medians of each phase. Processing and transfer are compared after
/// subtracting what the origin itself took for that request (its timers run late under
/// load), so only the tools' own measurement differs. The test raised its priority first
/// (`raise_timing_priority`), so background load delays neither tool much.
fn compare_with_curl(
    origin: &Origin,
    url: &str,
    module: &HttpModule,
    ca: Option<&std::path::Path>,
) {
    let runs = 9;
    let mut ours: [Vec<f64>; 4] = Default::default();
    let mut curl: [Vec<f64>; 4] = Default::default();
    for _ in 0..runs {
        let result = probe(url, module);
        ok(&result);
        let truth = origin
            .delay_timings()
            .last()
            .cloned()
            .expect("the origin timed the request");
        let p = &result.phases;
        ours[0].push(millis(p.connect));
        ours[1].push(millis(p.tls));
        ours[2].push(millis(p.processing) - millis(truth.headers_after));
        ours[3].push(millis(p.transfer) - millis(truth.body_span));
        let theirs = curl_phases(url, ca, 1)[0];
        let truth = origin
            .delay_timings()
            .last()
            .cloned()
            .expect("the origin timed the request");
        curl[0].push(theirs[0]);
        curl[1].push(theirs[1]);
        curl[2].push(theirs[2] - millis(truth.headers_after));
        curl[3].push(theirs[3] - millis(truth.body_span));
    }
    for (i, name) in ["connect", "tls", "processing − origin", "transfer − origin"]
        .iter()
        .enumerate()
    {
        let (a, b) = (median(ours[i].clone()), median(curl[i].clone()));
        assert!(
            (a - b).abs() <= 2.0,
            "{name}: ours {a:.3} ms, curl {b:.3} ms, medians of {runs} each (ours {:?}, curl \
             {:?}; {url})",
            ours[i],
            curl[i]
        );
    }
}

#[test]
fn every_phase_is_within_2_ms_of_curl_over_http() {
    let _guard = alone();
    raise_timing_priority();
    let origin = Origin::start(Security::Plain, None);
    let url = origin.url("/delay?headers_ms=30&chunks=3&chunk_ms=10&chunk_bytes=100");
    compare_with_curl(&origin, &url, &HttpModule::default(), None);
}

#[test]
fn every_phase_is_within_2_ms_of_curl_over_https() {
    let _guard = alone();
    raise_timing_priority();
    let pki = TestPki::new();
    let origin = Origin::start(Security::Tls, Some(&pki));
    let url = origin.url("/delay?headers_ms=30&chunks=3&chunk_ms=10&chunk_bytes=100");
    let mut module = trusting(&pki);
    module.client.enable_http2 = false; // curl is told --http1.1
    compare_with_curl(&origin, &url, &module, Some(&pki.ca_pem));
}

#[test]
fn the_resolve_phase_is_timed_and_a_lookup_failure_is_resolve() {
    let _guard = shared();
    let stub = DnsStub::start(
        &[("origin.lab", Ipv4Addr::LOCALHOST)],
        Duration::from_millis(30),
    )
    .expect("a DNS stub");
    let dns: Arc<dyn DnsResolver> = Arc::new(
        HickoryDns::with_name_servers(&[stub.addr()], Duration::from_secs(2)).expect("a resolver"),
    );
    let origin = Origin::start(Security::Plain, None);
    let url = format!("http://origin.lab:{}/status/200", origin.addr().port());
    let result = probe_with(Arc::clone(&dns), &url, &HttpModule::default());
    ok(&result);
    assert!(
        result.phases.resolve >= Duration::from_millis(30),
        "{result:?}"
    );
    let missing = probe_with(dns, "http://nowhere.lab/", &HttpModule::default());
    assert_eq!(missing.failure, Some(HttpFailure::Resolve));
    assert!(missing.phases.resolve >= Duration::from_millis(30));
}

#[test]
fn the_timeout_bounds_the_probe_and_keeps_the_phases_so_far() {
    let _guard = shared();
    let origin = Origin::start(Security::Plain, None);
    let prober = HyperProber::new(local_dns());
    let url = HttpUrl::parse(&origin.url("/delay?headers_ms=3000")).unwrap();
    let started = std::time::Instant::now();
    let result =
        runtime().block_on(prober.probe(&url, &HttpModule::default(), Duration::from_millis(300)));
    assert_eq!(result.failure, Some(HttpFailure::Timeout));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(result.phases.connect > Duration::ZERO);
}

// === failures ===

#[test]
fn a_refused_port_and_a_404_have_their_reasons() {
    let _guard = shared();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = probe(&format!("http://127.0.0.1:{port}/"), &HttpModule::default());
    assert_eq!(refused.failure, Some(HttpFailure::ConnectRefused));
    assert_eq!(refused.status_code, None);

    let origin = Origin::start(Security::Plain, None);
    let missing = probe(&origin.url("/status/404"), &HttpModule::default());
    assert_eq!(missing.failure, Some(HttpFailure::InvalidStatus(404)));
    assert_eq!(missing.failure.unwrap().reason(), "invalid resp code: 404");
    assert_eq!(missing.status_code, Some(404));
}

#[test]
fn valid_status_codes_accept_what_is_listed_and_empty_means_2xx() {
    let _guard = shared();
    let origin = Origin::start(Security::Plain, None);
    let module = HttpModule {
        valid_status_codes: vec![404],
        ..HttpModule::default()
    };
    ok(&probe(&origin.url("/status/404"), &module));
    let any_2xx = HttpModule {
        valid_status_codes: vec![],
        ..HttpModule::default()
    };
    ok(&probe(&origin.url("/status/204"), &any_2xx));
    assert_eq!(
        probe(&origin.url("/status/500"), &any_2xx).failure,
        Some(HttpFailure::InvalidStatus(500))
    );
}

// === redirects ===

#[test]
fn redirects_are_followed_and_their_phases_summed() {
    let _guard = shared();
    let origin = Origin::start(Security::Plain, None);
    // The fastest of five single connects: one sample may be slowed by the machine's load.
    let single = (0..5)
        .map(|_| {
            probe(&origin.url("/redirect/0"), &HttpModule::default())
                .phases
                .connect
        })
        .min()
        .unwrap_or_default();
    let four_hops = probe(&origin.url("/redirect/3"), &HttpModule::default());
    ok(&four_hops);
    assert_eq!(four_hops.status_code, Some(200));
    // Four connections were made: connect time adds up (each hop dials anew), so it is more
    // than the fastest single connect.
    assert!(
        four_hops.phases.connect > single,
        "{four_hops:?} vs the fastest single connect {single:?}"
    );

    let too_many = probe(&origin.url("/redirect/11"), &HttpModule::default());
    assert_eq!(too_many.failure, Some(HttpFailure::TooManyRedirects));

    let no_follow = HttpModule {
        no_follow_redirects: true,
        ..HttpModule::default()
    };
    let first = probe(&origin.url("/redirect/3"), &no_follow);
    assert_eq!(first.status_code, Some(302));
    assert_eq!(first.failure, Some(HttpFailure::InvalidStatus(302)));
    let mut client_off = HttpModule::default();
    client_off.client.follow_redirects = false;
    assert_eq!(
        probe(&origin.url("/redirect/1"), &client_off).status_code,
        Some(302)
    );
}

// === request options ===

#[test]
fn method_headers_body_and_user_agent_are_sent() {
    let _guard = shared();
    let origin = Origin::start(Security::Plain, None);
    let mut module = HttpModule {
        method: "POST".into(),
        headers: vec![("X-Probe".into(), "mesh".into())],
        body: Some("ping-body".into()),
        ..HttpModule::default()
    };
    body_must_match(
        &mut module,
        &[
            "method=POST",
            "x-probe: mesh",
            "ping-body",
            "user-agent: probermesh/",
        ],
    );
    ok(&probe(&origin.url("/echo"), &module));
    // A configured User-Agent wins.
    let mut custom = HttpModule {
        headers: vec![("User-Agent".into(), "dashboard-check".into())],
        ..HttpModule::default()
    };
    body_must_match(&mut custom, &["user-agent: dashboard-check"]);
    ok(&probe(&origin.url("/echo"), &custom));
}

#[test]
fn basic_auth_and_bearer_tokens_inline_and_from_files() {
    let _guard = shared();
    let origin = Origin::start(Security::Plain, None);
    let mut basic = HttpModule::default();
    basic.client.basic_auth = Some(BasicAuth {
        username: "prober".into(),
        password: Some(SecretSource::Inline(Secret::new("s3cret".into()))),
    });
    // base64("prober:s3cret")
    body_must_match(&mut basic, &["authorization: Basic cHJvYmVyOnMzY3JldA=="]);
    ok(&probe(&origin.url("/echo"), &basic));

    let token_file = std::env::temp_dir().join(format!("pm-token-{}", std::process::id()));
    std::fs::write(&token_file, "tok-from-file\n").unwrap();
    // As the server ships a `bearer_token_file` it read: the contents, one newline dropped.
    let mut bearer = HttpModule::default();
    bearer.client.bearer_token = Some(SecretSource::File(shipped(&token_file)));
    body_must_match(&mut bearer, &["authorization: Bearer tok-from-file\n"]);
    ok(&probe(&origin.url("/echo"), &bearer));

    // A path without contents (from a server too old to send them) is never opened, though
    // the file exists here: the probe fails before any request leaves.
    let mut named_only = HttpModule::default();
    named_only.client.bearer_token = Some(SecretSource::File(FileRef::named(
        token_file.display().to_string(),
    )));
    let before = origin.connections();
    let result = probe(&origin.url("/echo"), &named_only);
    let _ = std::fs::remove_file(&token_file);
    assert_eq!(result.failure, Some(HttpFailure::Request), "{result:?}");
    assert_eq!(origin.connections(), before, "no connection was made");
}

/// A file as the server ships it: its path and the contents it read.
fn shipped(path: &std::path::Path) -> FileRef {
    FileRef::with_contents(
        path.display().to_string(),
        Secret::new(std::fs::read_to_string(path).expect("a test file")),
    )
}

#[test]
fn body_regexps_pass_and_fail() {
    let _guard = shared();
    let origin = Origin::start(Security::Plain, None);
    let matches = HttpModule {
        fail_if_body_matches_regexp: vec![Regex::new("status 200").unwrap()],
        ..HttpModule::default()
    };
    assert_eq!(
        probe(&origin.url("/status/200"), &matches).failure,
        Some(HttpFailure::BodyRegexp)
    );
    let mut not_matches = HttpModule::default();
    body_must_match(&mut not_matches, &["healthy"]);
    assert_eq!(
        probe(&origin.url("/status/200"), &not_matches).failure,
        Some(HttpFailure::BodyRegexp)
    );
}

#[test]
fn header_regexps_pass_and_fail() {
    let _guard = shared();
    let origin = Origin::start(Security::Plain, None);
    let url = origin.url("/header?x-env=production");
    let rule = |header: &str, re: &str, allow_missing| HeaderMatch {
        header: header.into(),
        regexp: Regex::new(re).unwrap(),
        allow_missing,
    };
    let fail_on_prod = HttpModule {
        fail_if_header_matches: vec![rule("X-Env", "^prod", false)],
        ..HttpModule::default()
    };
    assert_eq!(
        probe(&url, &fail_on_prod).failure,
        Some(HttpFailure::HeaderRegexp)
    );
    let require_staging = HttpModule {
        fail_if_header_not_matches: vec![rule("x-env", "staging", false)],
        ..HttpModule::default()
    };
    assert_eq!(
        probe(&url, &require_staging).failure,
        Some(HttpFailure::HeaderRegexp)
    );
    let optional = HttpModule {
        fail_if_header_not_matches: vec![rule("x-absent", "x", true)],
        ..HttpModule::default()
    };
    ok(&probe(&url, &optional));
}

#[test]
fn gzip_bodies_are_requested_and_decoded() {
    let _guard = shared();
    let origin = Origin::start(Security::Plain, None);
    let mut gzip = HttpModule {
        compression: Compression::Gzip,
        ..HttpModule::default()
    };
    body_must_match(&mut gzip, &["^hello gzip$"]);
    ok(&probe(&origin.url("/gzip"), &gzip));
    let mut plain = HttpModule::default();
    body_must_match(&mut plain, &["^hello plain$"]);
    ok(&probe(&origin.url("/gzip"), &plain));
}

#[test]
fn body_size_limit_fails_a_larger_body() {
    let _guard = shared();
    let origin = Origin::start(Security::Plain, None);
    let limited = HttpModule {
        body_size_limit: Some(1_000),
        ..HttpModule::default()
    };
    assert_eq!(
        probe(&origin.url("/big?bytes=2000"), &limited).failure,
        Some(HttpFailure::BodyTooLarge)
    );
    ok(&probe(&origin.url("/big?bytes=1000"), &limited));
}

#[test]
fn the_ip_protocol_preference_reaches_the_resolver() {
    let _guard = shared();
    let dns = Arc::new(FakeDns::new());
    dns.answer(
        "v6.lab",
        Ok(Resolution {
            addr: "::1".parse().unwrap(),
            elapsed: Duration::ZERO,
        }),
    );
    let module = HttpModule {
        preferred_ip_protocol: IpProtocol::Ip6,
        ip_protocol_fallback: false,
        ..HttpModule::default()
    };
    let _ = probe_with(dns.clone(), "http://v6.lab:9/", &module);
    let calls = dns.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1.preferred, IpProtocol::Ip6);
    assert!(!calls[0].1.fallback);
}

#[test]
fn proxy_url_carries_http_and_tunnels_https() {
    let _guard = shared();
    let origin = Origin::start(Security::Plain, None);
    let proxy = Proxy::start();
    let mut module = HttpModule::default();
    module.client.proxy_url = Some(proxy.url());
    ok(&probe(&origin.url("/status/200"), &module));
    assert_eq!(proxy.served(), 1);

    let pki = TestPki::new();
    let tls_origin = Origin::start(Security::Tls, Some(&pki));
    let mut module = trusting(&pki);
    module.client.proxy_url = Some(proxy.url());
    let result = probe(&tls_origin.url("/status/200"), &module);
    ok(&result);
    assert!(result.tls.is_some());
    assert_eq!(proxy.served(), 2);
}

// === TLS ===

#[test]
fn tls_version_and_the_earliest_expiry_of_the_chain_are_reported() {
    let _guard = shared();
    let pki = TestPki::new();
    let origin = Origin::start(Security::Tls, Some(&pki));
    let result = probe(&origin.url("/status/200"), &trusting(&pki));
    ok(&result);
    let tls = result.tls.expect("TLS facts");
    assert_eq!(tls.version, TlsVersion::Tls13);
    // The CA lasts until 2040; the leaf's 2030-01-02 is the earliest.
    assert_eq!(tls.earliest_expiry_unix_secs, LEAF_NOT_AFTER_UNIX_SECS);
    assert!(result.phases.tls > Duration::ZERO);

    let mut tls12_min = trusting(&pki);
    tls12_min.client.tls.min_version = Some(TlsMinVersion::Tls13);
    ok(&probe(&origin.url("/status/200"), &tls12_min));
}

#[test]
fn an_untrusted_certificate_fails_unless_verification_is_skipped() {
    let _guard = shared();
    let pki = TestPki::new();
    let origin = Origin::start(Security::Tls, Some(&pki));
    let untrusted = probe(&origin.url("/status/200"), &HttpModule::default());
    assert_eq!(untrusted.failure, Some(HttpFailure::CertificateInvalid));
    let mut insecure = HttpModule::default();
    insecure.client.tls.insecure_skip_verify = true;
    ok(&probe(&origin.url("/status/200"), &insecure));
}

#[test]
fn server_name_and_the_host_header_choose_sni() {
    let _guard = shared();
    let pki = TestPki::new();
    let origin = Origin::start(Security::Tls, Some(&pki));
    let by_ip = format!("https://127.0.0.1:{}/status/200", origin.addr().port());
    let mut wrong = trusting(&pki);
    wrong.client.tls.server_name = Some("wrong.lab".into());
    assert_eq!(
        probe(&by_ip, &wrong).failure,
        Some(HttpFailure::CertificateInvalid)
    );
    let mut right = trusting(&pki);
    right.client.tls.server_name = Some("localhost".into());
    ok(&probe(&by_ip, &right));
    let mut host = trusting(&pki);
    host.headers = vec![("Host".into(), "wrong.lab".into())];
    assert_eq!(
        probe(&by_ip, &host).failure,
        Some(HttpFailure::CertificateInvalid)
    );
}

#[test]
fn client_certificates_are_presented_when_configured() {
    let _guard = shared();
    let pki = TestPki::new();
    let origin = Origin::start(Security::MutualTls, Some(&pki));
    let without = probe(&origin.url("/status/200"), &trusting(&pki));
    assert!(without.failure.is_some(), "{without:?}");
    let mut with = trusting(&pki);
    with.client.tls = TlsConfig {
        cert_file: Some(shipped(&pki.client_cert_pem)),
        key_file: Some(shipped(&pki.client_key_pem)),
        ..with.client.tls.clone()
    };
    ok(&probe(&origin.url("/status/200"), &with));
}

#[test]
fn ssl_required_and_forbidden() {
    let _guard = shared();
    let pki = TestPki::new();
    let tls_origin = Origin::start(Security::Tls, Some(&pki));
    let plain_origin = Origin::start(Security::Plain, None);
    let mut forbid = trusting(&pki);
    forbid.fail_if_ssl = true;
    assert_eq!(
        probe(&tls_origin.url("/status/200"), &forbid).failure,
        Some(HttpFailure::SslForbidden)
    );
    ok(&probe(&plain_origin.url("/status/200"), &forbid));
    let mut require = trusting(&pki);
    require.fail_if_not_ssl = true;
    assert_eq!(
        probe(&plain_origin.url("/status/200"), &require).failure,
        Some(HttpFailure::SslRequired)
    );
    ok(&probe(&tls_origin.url("/status/200"), &require));
}

#[test]
fn http2_is_negotiated_by_alpn_and_checked_by_valid_http_versions() {
    let _guard = shared();
    let pki = TestPki::new();
    let origin = Origin::start(Security::Tls, Some(&pki));
    let mut h2_only = trusting(&pki);
    h2_only.valid_http_versions = vec![HttpVersion::Http2];
    body_must_match(&mut h2_only, &["HTTP/2"]);
    ok(&probe(&origin.url("/version"), &h2_only));

    let mut h2_disabled = h2_only.clone();
    h2_disabled.client.enable_http2 = false;
    h2_disabled.fail_if_body_not_matches_regexp.clear();
    assert_eq!(
        probe(&origin.url("/version"), &h2_disabled).failure,
        Some(HttpFailure::HttpVersion)
    );
    let mut h11 = trusting(&pki);
    h11.valid_http_versions = vec![HttpVersion::Http11];
    body_must_match(&mut h11, &["HTTP/1.1"]);
    ok(&probe(&origin.url("/version"), &h11));
}
