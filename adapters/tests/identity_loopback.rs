//! Region detection and the agent IP against fakes on loopback. No test sends anything
//! beyond 127.0.0.1 and ::1: every metadata endpoint and echo URL here is a local fake, and
//! no test calls detection with `MetadataEndpoint::production()`.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use probermesh_adapters::identity::{
    CloudProvider, DetectionTimeouts, IpOptions, IpSource, MetadataEndpoint, NetworkType,
    RegionSource, agent_ip, detect_region, intranet_ip,
};

/// What a fake answers to one request.
#[derive(Clone, Debug)]
struct Reply {
    delay: Duration,
    status: u16,
    body: String,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        delay: Duration::ZERO,
        status,
        body: body.to_owned(),
    }
}

fn slow(delay_ms: u64, status: u16, body: &str) -> Reply {
    Reply {
        delay: Duration::from_millis(delay_ms),
        ..reply(status, body)
    }
}

/// The head of a request a fake received: the request line and the headers, lowercased
/// header names.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(&Seen) -> Option<Reply> + Send + Sync;

/// An HTTP/1.1 responder on 127.0.0.1 (one thread per connection, `Connection: close`);
/// the handler's `None` means "never answer". It records every request and stops accepting
/// when dropped.
struct Fake {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections the client closed while waiting for an answer that never came.
    abandoned: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Fake {
    fn start(handler: impl Fn(&Seen) -> Option<Reply> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("its address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let abandoned = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (seen_in, abandoned_in, stop_in) =
            (Arc::clone(&seen), Arc::clone(&abandoned), Arc::clone(&stop));
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop_in.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (handler, seen, abandoned) = (
                    Arc::clone(&handler),
                    Arc::clone(&seen_in),
                    Arc::clone(&abandoned_in),
                );
                thread::spawn(move || serve(stream, &*handler, &seen, &abandoned));
            }
        });
        Self {
            addr,
            seen,
            abandoned,
            stop,
        }
    }

    /// Always the same reply.
    fn answering(reply: Reply) -> Self {
        Self::start(move |_| Some(reply.clone()))
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("the fake's log").clone()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(
    mut stream: TcpStream,
    handler: &Handler,
    seen: &Mutex<Vec<Seen>>,
    abandoned: &AtomicUsize,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let request = Seen {
        method: request_line.next().unwrap_or_default().to_owned(),
        path: request_line.next().unwrap_or_default().to_owned(),
        headers: lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect(),
    };
    seen.lock().expect("the fake's log").push(request.clone());
    let Some(reply) = handler(&request) else {
        // Never answer: hold the connection until the client gives up.
        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        abandoned.fetch_add(1, Ordering::SeqCst);
        return;
    };
    thread::sleep(reply.delay);
    let response = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{}",
        reply.status,
        reply.body.len(),
        reply.body
    );
    let _ = stream.write_all(response.as_bytes());
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn endpoint(provider: CloudProvider, fake: &Fake) -> MetadataEndpoint {
    MetadataEndpoint::new(provider, fake.base_url())
}

/// A base URL on loopback where nothing listens (connections are refused at once).
fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("its address");
    drop(listener);
    format!("http://{addr}")
}

fn timeouts(per_request_ms: u64, overall_ms: u64) -> DetectionTimeouts {
    DetectionTimeouts {
        per_request: Duration::from_millis(per_request_ms),
        overall: Duration::from_millis(overall_ms),
    }
}

// ---------------------------------------------------------------------------------------
// Region

#[test]
fn the_flag_wins_over_everything() {
    let metadata = Fake::answering(reply(200, "cn-hangzhou"));
    let detected = runtime()
        .block_on(detect_region(
            Some("eu-west"),
            Some("from-env".into()),
            &[endpoint(CloudProvider::Aliyun, &metadata)],
            DetectionTimeouts::default(),
        ))
        .expect("a valid flag");
    assert_eq!(detected.region.as_str(), "eu-west");
    assert_eq!(detected.source, RegionSource::Flag);
    assert!(metadata.seen().is_empty(), "metadata must not be asked");
}

#[test]
fn the_environment_wins_over_metadata_and_is_trimmed() {
    let metadata = Fake::answering(reply(200, "cn-hangzhou"));
    let detected = runtime()
        .block_on(detect_region(
            Some(""),
            Some(" node-7\n".into()),
            &[endpoint(CloudProvider::Aliyun, &metadata)],
            DetectionTimeouts::default(),
        ))
        .expect("a valid environment value");
    assert_eq!(detected.region.as_str(), "node-7");
    assert_eq!(detected.source, RegionSource::Env);
    assert!(metadata.seen().is_empty(), "metadata must not be asked");
}

#[test]
fn a_blank_environment_value_falls_through_to_metadata() {
    let metadata = Fake::answering(reply(200, "cn-hangzhou\n"));
    let detected = runtime()
        .block_on(detect_region(
            None,
            Some("  ".into()),
            &[endpoint(CloudProvider::Aliyun, &metadata)],
            DetectionTimeouts::default(),
        ))
        .expect("detection");
    assert_eq!(detected.region.as_str(), "cn-hangzhou");
    assert_eq!(
        detected.source,
        RegionSource::Metadata {
            provider: CloudProvider::Aliyun
        }
    );
    let seen = metadata.seen();
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path, "/latest/meta-data/region-id");
}

#[test]
fn the_first_valid_metadata_answer_wins_over_faster_error_pages() {
    let not_found = Fake::answering(reply(404, "not-found"));
    let html = Fake::answering(reply(200, "<html><body>gateway error</body></html>"));
    let valid = Fake::answering(slow(300, 200, "ap-guangzhou-3\n"));
    let detected = runtime()
        .block_on(detect_region(
            None,
            None,
            &[
                endpoint(CloudProvider::Aliyun, &not_found),
                endpoint(CloudProvider::Volcengine, &html),
                endpoint(CloudProvider::Tencent, &valid),
            ],
            timeouts(1000, 2000),
        ))
        .expect("detection");
    assert_eq!(detected.region.as_str(), "ap-guangzhou-3");
    assert_eq!(
        detected.source,
        RegionSource::Metadata {
            provider: CloudProvider::Tencent
        }
    );
    assert_eq!(html.seen()[0].path, "/latest/region_id");
    assert_eq!(valid.seen()[0].path, "/latest/meta-data/placement/zone");
}

#[test]
fn a_late_valid_answer_is_dropped_safely() {
    let fast = Fake::answering(slow(50, 200, "cn-beijing"));
    let late = Fake::answering(slow(400, 200, "us-east-1"));
    let rt = runtime();
    let detected = rt
        .block_on(detect_region(
            None,
            None,
            &[
                endpoint(CloudProvider::Volcengine, &late),
                endpoint(CloudProvider::Aliyun, &fast),
            ],
            timeouts(1000, 2000),
        ))
        .expect("detection");
    assert_eq!(detected.region.as_str(), "cn-beijing");
    // The late answer arrives while the runtime keeps running: nothing may panic.
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(600)).await });
    assert_eq!(late.seen().len(), 1, "the late service was asked");
    let again = rt
        .block_on(detect_region(
            None,
            None,
            &[endpoint(CloudProvider::Aliyun, &fast)],
            timeouts(1000, 2000),
        ))
        .expect("detection still works");
    assert_eq!(again.region.as_str(), "cn-beijing");
}

#[test]
fn gcp_answers_a_zone_path_and_needs_the_flavor_header() {
    let gcp = Fake::start(|seen| {
        Some(if seen.header("metadata-flavor") == Some("Google") {
            reply(200, "projects/123456789/zones/us-central1-a")
        } else {
            reply(403, "Missing Metadata-Flavor:Google header.")
        })
    });
    let detected = runtime()
        .block_on(detect_region(
            None,
            None,
            &[endpoint(CloudProvider::Gcp, &gcp)],
            DetectionTimeouts::default(),
        ))
        .expect("detection");
    assert_eq!(detected.region.as_str(), "us-central1-a");
    assert_eq!(
        detected.source,
        RegionSource::Metadata {
            provider: CloudProvider::Gcp
        }
    );
    assert_eq!(gcp.seen()[0].path, "/computeMetadata/v1/instance/zone");
}

#[test]
fn huawei_answers_json_with_an_availability_zone() {
    let huawei = Fake::answering(reply(
        200,
        r#"{"uuid": "0b5d9a0e", "availability_zone": "cn-north-4a", "hostname": "ecs-1", "public_keys": {"k": "ssh-ed25519 AAAA"}}"#,
    ));
    let detected = runtime()
        .block_on(detect_region(
            None,
            None,
            &[endpoint(CloudProvider::Huawei, &huawei)],
            DetectionTimeouts::default(),
        ))
        .expect("detection");
    assert_eq!(detected.region.as_str(), "cn-north-4a");
    assert_eq!(huawei.seen()[0].path, "/openstack/latest/meta_data.json");
}

#[test]
fn aws_asks_with_an_imdsv2_token() {
    const TOKEN: &str = "AQAEAFakeToken==";
    let aws = Fake::start(|seen| {
        Some(match (seen.method.as_str(), seen.path.as_str()) {
            ("PUT", "/latest/api/token")
                if seen.header("x-aws-ec2-metadata-token-ttl-seconds") == Some("21600") =>
            {
                reply(200, TOKEN)
            }
            ("GET", "/latest/meta-data/placement/region")
                if seen.header("x-aws-ec2-metadata-token") == Some(TOKEN) =>
            {
                reply(200, "eu-central-1")
            }
            _ => reply(401, "Unauthorized"),
        })
    });
    let detected = runtime()
        .block_on(detect_region(
            None,
            None,
            &[endpoint(CloudProvider::Aws, &aws)],
            DetectionTimeouts::default(),
        ))
        .expect("detection");
    assert_eq!(detected.region.as_str(), "eu-central-1");
    assert_eq!(
        detected.source,
        RegionSource::Metadata {
            provider: CloudProvider::Aws
        }
    );
    let methods: Vec<String> = aws.seen().into_iter().map(|s| s.method).collect();
    assert_eq!(methods, ["PUT", "GET"]);
}

#[test]
fn aws_falls_back_to_imdsv1_when_the_token_is_refused() {
    let aws = Fake::start(|seen| {
        Some(match seen.method.as_str() {
            "PUT" => reply(405, "Method Not Allowed"),
            _ if seen.header("x-aws-ec2-metadata-token").is_none() => reply(200, "ap-south-1"),
            _ => reply(400, "unexpected token"),
        })
    });
    let detected = runtime()
        .block_on(detect_region(
            None,
            None,
            &[endpoint(CloudProvider::Aws, &aws)],
            DetectionTimeouts::default(),
        ))
        .expect("detection");
    assert_eq!(detected.region.as_str(), "ap-south-1");
}

#[test]
fn when_every_service_fails_the_region_is_cn_shanghai() {
    let not_found = Fake::answering(reply(404, "Not Found"));
    let blank = Fake::answering(reply(200, " \n"));
    let garbage = Fake::answering(reply(200, "region: eu west"));
    let huge = Fake::answering(reply(200, &"a".repeat(10_000)));
    let bad_json = Fake::answering(reply(200, "{\"availability_zone\": null}"));
    let detected = runtime()
        .block_on(detect_region(
            None,
            None,
            &[
                endpoint(CloudProvider::Aliyun, &not_found),
                endpoint(CloudProvider::Tencent, &blank),
                endpoint(CloudProvider::Volcengine, &garbage),
                endpoint(CloudProvider::Gcp, &huge),
                endpoint(CloudProvider::Huawei, &bad_json),
                MetadataEndpoint::new(CloudProvider::Aws, closed_port_url()),
            ],
            DetectionTimeouts::default(),
        ))
        .expect("detection");
    assert_eq!(detected.region.as_str(), "cn-shanghai");
    assert_eq!(detected.source, RegionSource::Default);
}

#[test]
fn a_silent_service_does_not_hold_detection_past_the_bound() {
    let silent = Fake::start(|_| None);
    let rt = runtime();
    let started = Instant::now();
    let detected = rt
        .block_on(detect_region(
            None,
            None,
            &[
                endpoint(CloudProvider::Aliyun, &silent),
                endpoint(CloudProvider::Aws, &silent),
            ],
            // The per-request timeout is longer than the bound: the bound must cut it.
            timeouts(10_000, 300),
        ))
        .expect("detection");
    let took = started.elapsed();
    assert_eq!(detected.source, RegionSource::Default);
    assert!(took < Duration::from_secs(3), "detection took {took:?}");
    let asked = silent.seen().len();
    assert!(asked > 0, "the silent fake was asked");
    // The abandoned queries close their connections while the runtime lives on: no socket
    // lingers waiting for a late answer.
    rt.block_on(async {
        for _ in 0..100 {
            if silent.abandoned.load(Ordering::SeqCst) == asked {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    assert_eq!(silent.abandoned.load(Ordering::SeqCst), asked);
}

// ---------------------------------------------------------------------------------------
// IP

fn loopback(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("an address literal"), 6000)
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address literal")
}

#[test]
fn intranet_towards_loopback_is_loopback_in_both_families() {
    assert_eq!(
        intranet_ip(loopback("127.0.0.1")).expect("a v4 route"),
        ip("127.0.0.1")
    );
    assert_eq!(intranet_ip(loopback("::1")).expect("a v6 route"), ip("::1"));
    let chosen = runtime()
        .block_on(agent_ip(&IpOptions::new(
            NetworkType::Intranet,
            loopback("127.0.0.1"),
        )))
        .expect("an address");
    assert_eq!(
        (chosen.ip, chosen.source),
        (ip("127.0.0.1"), IpSource::Intranet)
    );
}

#[test]
fn public_uses_the_address_the_server_observed() {
    let echo = Fake::answering(reply(200, "198.51.100.1"));
    let options = IpOptions {
        observed: Some(ip("::ffff:203.0.113.9")),
        echo_url: format!("{}/ip", echo.base_url()),
        ..IpOptions::new(NetworkType::Public, loopback("127.0.0.1"))
    };
    let chosen = runtime().block_on(agent_ip(&options)).expect("an address");
    assert_eq!(
        (chosen.ip, chosen.source),
        (ip("203.0.113.9"), IpSource::ServerObserved)
    );
    assert!(echo.seen().is_empty(), "the echo service must not be asked");
}

#[test]
fn public_without_the_servers_view_asks_the_echo_service() {
    let echo = Fake::answering(reply(200, "203.0.113.7\n"));
    let options = IpOptions {
        echo_url: format!("{}/ip", echo.base_url()),
        ..IpOptions::new(NetworkType::Public, loopback("127.0.0.1"))
    };
    let chosen = runtime().block_on(agent_ip(&options)).expect("an address");
    assert_eq!(
        (chosen.ip, chosen.source),
        (ip("203.0.113.7"), IpSource::Echo)
    );
    assert_eq!(echo.seen()[0].path, "/ip");

    let v6 = Fake::answering(reply(200, "2001:db8::7"));
    let options = IpOptions {
        echo_url: v6.base_url(),
        ..options
    };
    let chosen = runtime().block_on(agent_ip(&options)).expect("an address");
    assert_eq!(chosen.ip, ip("2001:db8::7"));
}

#[test]
fn an_echo_answering_garbage_falls_back_to_intranet() {
    for bad in [
        reply(200, "<html>rate limited</html>"),
        reply(200, "0.0.0.0"),
        reply(500, "203.0.113.7"),
        reply(200, &"1".repeat(5000)),
    ] {
        let echo = Fake::answering(bad.clone());
        let options = IpOptions {
            echo_url: echo.base_url(),
            ..IpOptions::new(NetworkType::Public, loopback("127.0.0.1"))
        };
        let chosen = runtime().block_on(agent_ip(&options)).expect("an address");
        assert_eq!(
            (chosen.ip, chosen.source),
            (ip("127.0.0.1"), IpSource::IntranetFallback),
            "{bad:?}"
        );
    }
    let options = IpOptions {
        echo_url: closed_port_url(),
        ..IpOptions::new(NetworkType::Public, loopback("::1"))
    };
    let chosen = runtime().block_on(agent_ip(&options)).expect("an address");
    assert_eq!(
        (chosen.ip, chosen.source),
        (ip("::1"), IpSource::IntranetFallback)
    );
}

#[test]
fn the_override_wins_in_both_modes() {
    let echo = Fake::answering(reply(200, "203.0.113.7"));
    for network_type in [NetworkType::Intranet, NetworkType::Public] {
        let options = IpOptions {
            override_ip: Some(ip("192.0.2.44")),
            observed: Some(ip("198.51.100.1")),
            echo_url: echo.base_url(),
            ..IpOptions::new(network_type, loopback("127.0.0.1"))
        };
        let chosen = runtime().block_on(agent_ip(&options)).expect("an address");
        assert_eq!(
            (chosen.ip, chosen.source),
            (ip("192.0.2.44"), IpSource::Override)
        );
    }
    assert!(echo.seen().is_empty());
}

#[test]
fn a_bad_network_type_says_what_is_accepted() {
    let error = "internet"
        .parse::<NetworkType>()
        .expect_err("not a network type")
        .to_string();
    assert_eq!(
        error,
        "-agent.icmp.network-type is \"internet\"; expected \"intranet\" (the local address towards the server) or \"public\" (the address the server sees)"
    );
}
