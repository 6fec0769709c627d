//! Tests of the wire protocol as a whole: property round trips through framing and through the
//! domain conversions, robustness against arbitrary bytes, the golden bytes of
//! `fixtures/wire/v1/` and `fixtures/wire/v2/` (our compatibility promise), the replay of
//! `fixtures/wire/corpus/`, and one test per `into_domain` validation with its error text.
//! The tests of protocol v2 and the handshake are in `tests/v2.rs`.

mod borrowed;
mod v2;

use crate::model::http_module::FileRef;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use proptest::collection::{btree_set, vec};
use proptest::option;
use proptest::prelude::*;
use regex::Regex;

use super::handoff::{OPEN_WINDOWS_FORMAT, OPEN_WINDOWS_MAGIC, OpenWindowsV1, SourceResultsV1};
use super::*;
use crate::model::http_module::{
    BasicAuth, Compression, HeaderMatch, HttpClientConfig, HttpVersion, IpProtocol, Secret,
    SecretSource, TlsConfig, TlsMinVersion,
};
use crate::model::{
    AgentId, HttpFailure, HttpModule, HttpPhases, HttpResult, IcmpFailure, IcmpModule, IcmpResult,
    MAX_PROBE_INTERVAL, ProbeConfig, ProbeModule, ProbeOutcome, ProbeResult, Region, Target,
    TlsInfo, TlsVersion, UnixMillis,
};

// === Strategies for the DTOs (any value, valid or not) ===

fn arb_text() -> impl Strategy<Value = String> {
    ".{0,12}"
}

fn arb_ip() -> impl Strategy<Value = IpAddrV1> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddrV1::V4),
        any::<[u8; 16]>().prop_map(IpAddrV1::V6)
    ]
}

fn arb_secret() -> impl Strategy<Value = WireSecret> {
    arb_text().prop_map(WireSecret::new)
}

fn arb_outcome() -> impl Strategy<Value = OutcomeV1> {
    let icmp = (
        any::<u64>(),
        option::of(prop_oneof![
            Just(IcmpFailureV1::Resolve),
            Just(IcmpFailureV1::Permission),
            Just(IcmpFailureV1::Send)
        ]),
        any::<u32>(),
        any::<u32>(),
        option::of(
            any::<[u64; 4]>().prop_map(|[mean_ns, min_ns, max_ns, stddev_ns]| RttSummaryV1 {
                mean_ns,
                min_ns,
                max_ns,
                stddev_ns,
            }),
        ),
        vec(any::<u64>(), 0..24),
        any::<u128>(),
    )
        .prop_map(
            |(
                resolve_ns,
                failure,
                packets_sent,
                packets_received,
                rtt,
                histogram_counts,
                histogram_sum_ns,
            )| {
                OutcomeV1::Icmp {
                    resolve_ns,
                    failure,
                    packets_sent,
                    packets_received,
                    rtt,
                    histogram_counts,
                    histogram_sum_ns,
                }
            },
        );
    let http = (
        any::<[u64; 5]>(),
        option::of(any::<u16>()),
        option::of((arb_tls_version(), any::<i64>()).prop_map(
            |(version, earliest_expiry_unix_secs)| TlsInfoV1 {
                version,
                earliest_expiry_unix_secs,
            },
        )),
        option::of(arb_http_failure()),
    )
        .prop_map(|(phases_ns, status_code, tls, failure)| {
            let [resolve_ns, connect_ns, tls_ns, processing_ns, transfer_ns] = phases_ns;
            OutcomeV1::Http {
                phases: HttpPhasesV1 {
                    resolve_ns,
                    connect_ns,
                    tls_ns,
                    processing_ns,
                    transfer_ns,
                },
                status_code,
                tls,
                failure,
            }
        });
    prop_oneof![icmp, http]
}

fn arb_tls_version() -> impl Strategy<Value = TlsVersionV1> {
    prop_oneof![
        Just(TlsVersionV1::Tls10),
        Just(TlsVersionV1::Tls11),
        Just(TlsVersionV1::Tls12),
        Just(TlsVersionV1::Tls13),
        Just(TlsVersionV1::Unknown),
    ]
}

const ALL_HTTP_FAILURES_BUT_STATUS: [HttpFailure; 18] = [
    HttpFailure::Resolve,
    HttpFailure::ConnectRefused,
    HttpFailure::ConnectTimeout,
    HttpFailure::Connect,
    HttpFailure::TlsHandshake,
    HttpFailure::CertificateInvalid,
    HttpFailure::Timeout,
    HttpFailure::BodyRegexp,
    HttpFailure::HeaderRegexp,
    HttpFailure::HttpVersion,
    HttpFailure::SslRequired,
    HttpFailure::SslForbidden,
    HttpFailure::Compression,
    HttpFailure::BodyTooLarge,
    HttpFailure::BodyRead,
    HttpFailure::TooManyRedirects,
    HttpFailure::BadRedirect,
    HttpFailure::Request,
];

fn arb_http_failure() -> impl Strategy<Value = HttpFailureV1> {
    prop_oneof![
        any::<u16>().prop_map(HttpFailureV1::InvalidStatus),
        proptest::sample::select(&ALL_HTTP_FAILURES_BUT_STATUS[..]).prop_map(HttpFailureV1::from),
    ]
}

fn arb_result() -> impl Strategy<Value = ProbeResultV1> {
    (arb_text(), arb_text(), any::<u64>(), arb_outcome()).prop_map(
        |(target_region, target, round_start_ms, outcome)| ProbeResultV1 {
            target_region,
            target,
            round_start_ms,
            outcome,
        },
    )
}

fn arb_secret_source() -> impl Strategy<Value = SecretSourceV1> {
    prop_oneof![
        arb_secret().prop_map(SecretSourceV1::Inline),
        arb_text().prop_map(SecretSourceV1::File)
    ]
}

fn arb_header_match() -> impl Strategy<Value = HeaderMatchV1> {
    (arb_text(), arb_text(), any::<bool>()).prop_map(|(header, regexp, allow_missing)| {
        HeaderMatchV1 {
            header,
            regexp,
            allow_missing,
        }
    })
}

fn arb_client() -> impl Strategy<Value = HttpClientConfigV1> {
    (
        option::of(
            (arb_text(), option::of(arb_secret_source()))
                .prop_map(|(username, password)| BasicAuthV1 { username, password }),
        ),
        option::of(arb_secret_source()),
        (
            option::of(arb_text()),
            option::of(arb_text()),
            option::of(arb_text()),
            option::of(arb_text()),
            any::<bool>(),
            option::of(prop_oneof![
                Just(TlsMinVersionV1::Tls12),
                Just(TlsMinVersionV1::Tls13)
            ]),
        )
            .prop_map(
                |(ca_file, cert_file, key_file, server_name, insecure_skip_verify, min_version)| {
                    TlsConfigV1 {
                        ca_file,
                        cert_file,
                        key_file,
                        server_name,
                        insecure_skip_verify,
                        min_version,
                    }
                },
            ),
        option::of(arb_text()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(basic_auth, bearer_token, tls, proxy_url, follow_redirects, enable_http2)| {
                HttpClientConfigV1 {
                    basic_auth,
                    bearer_token,
                    tls,
                    proxy_url,
                    follow_redirects,
                    enable_http2,
                }
            },
        )
}

fn arb_http_module() -> impl Strategy<Value = HttpModuleV1> {
    let flags = any::<[bool; 5]>();
    let lists = (
        vec(any::<u16>(), 0..4),
        vec(
            prop_oneof![
                Just(HttpVersionV1::Http10),
                Just(HttpVersionV1::Http11),
                Just(HttpVersionV1::Http2)
            ],
            0..4,
        ),
        vec(
            (arb_text(), arb_text()).prop_map(|(name, value)| HeaderV1 { name, value }),
            0..3,
        ),
        vec(arb_text(), 0..3),
        vec(arb_text(), 0..3),
        vec(arb_header_match(), 0..3),
        vec(arb_header_match(), 0..3),
    );
    let rest = (
        prop_oneof![Just(IpProtocolV1::Ip4), Just(IpProtocolV1::Ip6)],
        arb_text(),
        option::of(arb_text()),
        prop_oneof![
            Just(CompressionV1::Identity),
            Just(CompressionV1::Gzip),
            Just(CompressionV1::Deflate),
            Just(CompressionV1::Brotli)
        ],
        option::of(any::<u64>()),
        arb_client(),
    );
    (flags, lists, rest).prop_map(
        |(
            [
                ip_protocol_fallback,
                skip_resolve_phase_with_proxy,
                no_follow_redirects,
                fail_if_ssl,
                fail_if_not_ssl,
            ],
            (
                valid_status_codes,
                valid_http_versions,
                headers,
                fail_if_body_matches_regexp,
                fail_if_body_not_matches_regexp,
                fail_if_header_matches,
                fail_if_header_not_matches,
            ),
            (preferred_ip_protocol, method, body, compression, body_size_limit, client),
        )| HttpModuleV1 {
            valid_status_codes,
            valid_http_versions,
            preferred_ip_protocol,
            ip_protocol_fallback,
            skip_resolve_phase_with_proxy,
            no_follow_redirects,
            fail_if_ssl,
            fail_if_not_ssl,
            method,
            headers,
            body,
            fail_if_body_matches_regexp,
            fail_if_body_not_matches_regexp,
            fail_if_header_matches,
            fail_if_header_not_matches,
            compression,
            body_size_limit,
            client,
        },
    )
}

fn arb_config() -> impl Strategy<Value = ProbeConfigV1> {
    (
        arb_text(),
        prop_oneof![Just(ProbeKindV1::Icmp), Just(ProbeKindV1::Http)],
        vec(arb_text(), 0..4),
        option::of(any::<(u32, u64, u32)>().prop_map(
            |(packet_count, interval_ns, payload_size)| IcmpModuleV1 {
                packet_count,
                interval_ns,
                payload_size,
            },
        )),
        option::of(arb_http_module()),
    )
        .prop_map(|(region, kind, targets, icmp, http)| ProbeConfigV1 {
            region,
            kind,
            targets,
            icmp,
            http,
        })
}

fn arb_agent_message() -> impl Strategy<Value = AgentMessage> {
    prop_oneof![
        (
            any::<u16>(),
            arb_text(),
            arb_text(),
            arb_ip(),
            any::<u64>(),
            arb_secret()
        )
            .prop_map(
                |(protocol_version, agent_version, region, ip, instance_id, token)| {
                    AgentMessage::Hello {
                        protocol_version,
                        agent_version,
                        region,
                        ip,
                        instance_id,
                        token,
                    }
                }
            ),
        any::<u64>().prop_map(|sent_at_ms| AgentMessage::Heartbeat { sent_at_ms }),
        (any::<u64>(), vec(arb_result(), 0..4))
            .prop_map(|(seq, results)| AgentMessage::ResultBatch { seq, results }),
        any::<u64>().prop_map(|known_revision| AgentMessage::PoolRequest { known_revision }),
        (
            any::<u64>(),
            option::of(any::<i32>()),
            any::<bool>(),
            vec(any::<u8>(), 0..32),
            vec(any::<u8>(), 0..32),
            any::<bool>(),
            any::<u64>()
        )
            .prop_map(
                |(task_id, exit_code, timed_out, stdout, stderr, truncated, duration_ms)| {
                    AgentMessage::TaskResult {
                        task_id,
                        exit_code,
                        timed_out,
                        stdout,
                        stderr,
                        truncated,
                        duration_ms,
                    }
                }
            ),
        (
            any::<u64>(),
            arb_text(),
            prop_oneof![
                Just(UpgradeStateV1::Downloading),
                Just(UpgradeStateV1::Verified),
                Just(UpgradeStateV1::Applied),
                arb_text().prop_map(|reason| UpgradeStateV1::Failed { reason }),
            ]
        )
            .prop_map(|(offer_id, version, state)| AgentMessage::UpgradeStatus {
                offer_id,
                version,
                state
            }),
        (any::<u64>(), arb_text(), arb_text()).prop_map(|(revision, field, reason)| {
            AgentMessage::PoolRefused {
                revision,
                field,
                reason,
            }
        }),
    ]
}

fn arb_server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        (any::<u16>(), arb_text(), arb_ip(), any::<u16>()).prop_map(
            |(protocol_version, server_version, ip, port)| {
                ServerMessage::Welcome {
                    protocol_version,
                    server_version,
                    observed_addr: SocketAddrV1 { ip, port },
                }
            }
        ),
        prop_oneof![
            Just(RefusalV1::BadToken),
            any::<(u16, u16)>()
                .prop_map(|(server, agent)| RefusalV1::VersionMismatch { server, agent }),
            arb_text().prop_map(RefusalV1::Other),
        ]
        .prop_map(|reason| ServerMessage::Refused { reason }),
        (any::<u64>(), vec(arb_config(), 0..3))
            .prop_map(|(revision, configs)| ServerMessage::TargetPool { revision, configs }),
        any::<u64>().prop_map(|seq| ServerMessage::Ack { seq }),
        (any::<u64>(), arb_text(), any::<u64>(), any::<u32>()).prop_map(
            |(task_id, command, timeout_ms, output_limit_bytes)| ServerMessage::Task {
                task_id,
                command,
                timeout_ms,
                output_limit_bytes,
            }
        ),
        (any::<u64>(), arb_text(), arb_text(), any::<[u8; 32]>()).prop_map(
            |(offer_id, version, url, sha256)| {
                ServerMessage::UpgradeOffer {
                    offer_id,
                    version,
                    url,
                    sha256,
                }
            }
        ),
    ]
}

// === Strategies for valid domain values ===

fn arb_region() -> impl Strategy<Value = Region> {
    "[a-z][a-z0-9._:-]{0,15}".prop_map(|name| Region::new(&name).unwrap())
}

fn arb_icmp_target() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<IpAddr>().prop_map(|ip| ip.to_string()),
        "[a-z][a-z0-9]{0,8}(\\.[a-z][a-z0-9]{0,8}){0,2}"
    ]
}

fn arb_http_target() -> impl Strategy<Value = String> {
    "(https?://)?[a-z][a-z0-9]{0,8}\\.(com|net)(:[1-9][0-9]{0,3})?(/[a-z0-9]{0,6})?(\\?q=[0-9]{1,3})?"
}

fn arb_duration() -> impl Strategy<Value = Duration> {
    any::<u64>().prop_map(Duration::from_nanos)
}

fn arb_icmp_result() -> impl Strategy<Value = IcmpResult> {
    let failed = (
        arb_duration(),
        prop_oneof![
            Just(IcmpFailure::Resolve),
            Just(IcmpFailure::Permission),
            Just(IcmpFailure::Send)
        ],
    )
        .prop_map(|(resolve, failure)| IcmpResult::failed(resolve, failure));
    let measured = (arb_duration(), 1u32..100)
        .prop_flat_map(|(resolve, packets_sent)| {
            (
                Just(resolve),
                Just(packets_sent),
                vec(0u64..30_000_000_000, 0..=packets_sent as usize),
            )
        })
        .prop_map(|(resolve, packets_sent, rtts_ns)| {
            let rtts: Vec<Duration> = rtts_ns.into_iter().map(Duration::from_nanos).collect();
            IcmpResult::measured(resolve, packets_sent, &rtts)
        });
    prop_oneof![failed, measured]
}

fn arb_domain_http_failure() -> impl Strategy<Value = HttpFailure> {
    prop_oneof![
        (100u16..=999).prop_map(HttpFailure::InvalidStatus),
        proptest::sample::select(&ALL_HTTP_FAILURES_BUT_STATUS[..]),
    ]
}

fn arb_http_result() -> impl Strategy<Value = HttpResult> {
    (
        [
            arb_duration(),
            arb_duration(),
            arb_duration(),
            arb_duration(),
            arb_duration(),
        ],
        option::of(100u16..=999),
        option::of((arb_tls_version(), any::<i64>())),
        option::of(arb_domain_http_failure()),
    )
        .prop_map(
            |([resolve, connect, tls, processing, transfer], status_code, tls_info, failure)| {
                HttpResult {
                    phases: HttpPhases {
                        resolve,
                        connect,
                        tls,
                        processing,
                        transfer,
                    },
                    status_code,
                    tls: tls_info.map(|(version, earliest_expiry_unix_secs)| TlsInfo {
                        version: TlsVersion::from(version),
                        earliest_expiry_unix_secs,
                    }),
                    failure,
                }
            },
        )
}

fn arb_probe_result() -> impl Strategy<Value = ProbeResult> {
    let icmp = (arb_icmp_target(), arb_icmp_result())
        .prop_map(|(target, r)| (target, ProbeOutcome::Icmp(r)));
    let http = (arb_http_target(), arb_http_result())
        .prop_map(|(target, r)| (target, ProbeOutcome::Http(r)));
    (
        arb_region(),
        any::<IpAddr>(),
        arb_region(),
        any::<u64>(),
        prop_oneof![icmp, http],
    )
        .prop_map(
            |(source_region, source_ip, target_region, round_start_ms, (target, outcome))| {
                ProbeResult {
                    source: AgentId::new(source_region, source_ip),
                    target_region,
                    target,
                    round_start: UnixMillis(round_start_ms),
                    outcome,
                }
            },
        )
}

const REGEX_SOURCES: [&str; 6] = ["^ok$", "[a-z]+", "foo|bar", "(?i)error", "\\d{3}", ""];

fn arb_regex() -> impl Strategy<Value = Regex> {
    proptest::sample::select(&REGEX_SOURCES[..]).prop_map(|source| Regex::new(source).unwrap())
}

fn arb_domain_header_match() -> impl Strategy<Value = HeaderMatch> {
    ("[A-Za-z-]{1,12}", arb_regex(), any::<bool>()).prop_map(|(header, regexp, allow_missing)| {
        HeaderMatch {
            header,
            regexp,
            allow_missing,
        }
    })
}

fn arb_domain_secret_source() -> impl Strategy<Value = SecretSource> {
    prop_oneof![
        arb_text().prop_map(|s| SecretSource::Inline(Secret::new(s))),
        "/[a-z/]{1,20}".prop_map(|path| SecretSource::File(FileRef::named(path))),
    ]
}

fn arb_domain_client() -> impl Strategy<Value = HttpClientConfig> {
    (
        option::of(
            ("[a-z]{0,8}", option::of(arb_domain_secret_source()))
                .prop_map(|(username, password)| BasicAuth { username, password }),
        ),
        option::of(arb_domain_secret_source()),
        (
            option::of("/[a-z/]{1,20}"),
            option::of("/[a-z/]{1,20}"),
            option::of("/[a-z/]{1,20}"),
            option::of("[a-z.]{1,20}"),
            any::<bool>(),
            option::of(prop_oneof![
                Just(TlsMinVersion::Tls12),
                Just(TlsMinVersion::Tls13)
            ]),
        ),
        option::of("http://[a-z]{1,8}:[1-9][0-9]{1,3}"),
        any::<[bool; 2]>(),
    )
        .prop_map(
            |(basic_auth, bearer_token, tls, proxy_url, [follow_redirects, enable_http2])| {
                let (ca_file, cert_file, key_file, server_name, insecure_skip_verify, min_version) =
                    tls;
                // What a probe file can say: one credential, a client certificate with its key.
                let bearer_token = bearer_token.filter(|_| basic_auth.is_none());
                let key_file = key_file.filter(|_| cert_file.is_some());
                let key_file = if cert_file.is_some() && key_file.is_none() {
                    Some("/key.pem".to_owned())
                } else {
                    key_file
                };
                HttpClientConfig {
                    basic_auth,
                    bearer_token,
                    tls: TlsConfig {
                        ca_file: ca_file.map(FileRef::named),
                        cert_file: cert_file.map(FileRef::named),
                        key_file: key_file.map(FileRef::named),
                        server_name,
                        insecure_skip_verify,
                        min_version,
                    },
                    proxy_url,
                    follow_redirects,
                    enable_http2,
                }
            },
        )
}

fn arb_domain_http_module() -> impl Strategy<Value = HttpModule> {
    let lists = (
        vec(100u16..=599, 0..4),
        vec(
            prop_oneof![
                Just(HttpVersion::Http10),
                Just(HttpVersion::Http11),
                Just(HttpVersion::Http2)
            ],
            0..3,
        ),
        vec(("[A-Za-z-]{1,12}", "[ -~]{0,16}"), 0..3),
        vec(arb_regex(), 0..3),
        vec(arb_regex(), 0..3),
        vec(arb_domain_header_match(), 0..3),
        vec(arb_domain_header_match(), 0..3),
    );
    let rest = (
        any::<[bool; 5]>(),
        prop_oneof![Just(IpProtocol::Ip4), Just(IpProtocol::Ip6)],
        "[A-Z]{1,7}",
        option::of(".{0,32}"),
        prop_oneof![
            Just(Compression::Identity),
            Just(Compression::Gzip),
            Just(Compression::Deflate),
            Just(Compression::Brotli)
        ],
        option::of(1u64..),
        arb_domain_client(),
    );
    (lists, rest).prop_map(
        |(
            (
                valid_status_codes,
                valid_http_versions,
                headers,
                fail_if_body_matches_regexp,
                fail_if_body_not_matches_regexp,
                fail_if_header_matches,
                fail_if_header_not_matches,
            ),
            (flags, preferred_ip_protocol, method, body, compression, body_size_limit, client),
        )| {
            let [
                ip_protocol_fallback,
                skip_resolve_phase_with_proxy,
                no_follow_redirects,
                fail_if_ssl,
                fail_if_not_ssl,
            ] = flags;
            // Header names are unique, ignoring case, as in a probe file.
            let mut headers: Vec<(String, String)> = headers;
            let mut seen = std::collections::HashSet::new();
            headers.retain(|(name, _)| seen.insert(name.to_ascii_lowercase()));
            HttpModule {
                valid_status_codes,
                valid_http_versions,
                preferred_ip_protocol,
                ip_protocol_fallback,
                skip_resolve_phase_with_proxy,
                no_follow_redirects,
                fail_if_ssl,
                fail_if_not_ssl,
                method,
                headers,
                body: body.map(Into::into),
                fail_if_body_matches_regexp,
                fail_if_body_not_matches_regexp,
                fail_if_header_matches,
                fail_if_header_not_matches,
                compression,
                body_size_limit,
                client,
            }
        },
    )
}

fn arb_probe_config() -> impl Strategy<Value = ProbeConfig> {
    // Valid modules: the echoes leave within the longest probe timeout (`setting::echo_span`).
    let longest_ns =
        crate::model::time::duration_nanos(crate::model::probe_timeout(MAX_PROBE_INTERVAL));
    let icmp = (
        (1..=IcmpModule::MAX_PACKET_COUNT)
            .prop_flat_map(move |packet_count| {
                let gaps = u64::from(packet_count.saturating_sub(1)).max(1);
                (
                    Just(packet_count),
                    (1..longest_ns / gaps).prop_map(Duration::from_nanos),
                    IcmpModule::MIN_PAYLOAD_SIZE..=IcmpModule::MAX_PAYLOAD_SIZE,
                )
            })
            .prop_map(|(packet_count, interval, payload_size)| {
                ProbeModule::Icmp(IcmpModule {
                    packet_count,
                    interval,
                    payload_size,
                })
            }),
        btree_set(arb_icmp_target(), 0..6),
    );
    let http = (
        arb_domain_http_module().prop_map(|m| ProbeModule::Http(m.into())),
        btree_set(arb_http_target(), 0..6),
    );
    (arb_region(), prop_oneof![icmp, http]).prop_map(|(region, (module, raw_targets))| {
        let targets = raw_targets
            .iter()
            .map(|raw| Target::parse(module.kind(), raw).unwrap())
            .collect();
        ProbeConfig {
            region,
            module,
            targets,
        }
    })
}

// === Helpers ===

/// Feeds `bytes` to a decoder in the given chunk sizes (cycled) and collects every message.
fn decode_in_chunks<T: serde::de::DeserializeOwned>(bytes: &[u8], chunk_sizes: &[usize]) -> Vec<T> {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let mut messages = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunk_sizes.iter().cycle();
    while !rest.is_empty() {
        let n = sizes.next().copied().unwrap_or(1).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        decoder.push(chunk);
        while let Some(msg) = decoder.next_frame::<T>().unwrap() {
            messages.push(msg);
        }
    }
    assert_eq!(decoder.buffered_len(), 0);
    messages
}

/// Cuts whatever `bytes` hold into frames and reads every body in every way a peer does: as a
/// hello, as an answer to one and as a message from agent and server, in every protocol
/// version, converting whatever decodes; used by the no-panic properties and the corpus replay.
/// Returns how many times a body decoded as one of the four message enums.
fn replay(bytes: &[u8], max_frame_len: usize) -> usize {
    let mut n_messages = 0;
    let source = AgentId::new(Region::new("replay").unwrap(), IpAddr::from([127, 0, 0, 1]));
    let mut decoder = FrameDecoder::new(max_frame_len);
    decoder.push(bytes);
    while let Ok(Some(body)) = decoder.next_body() {
        n_messages += usize::from(decode_frame::<AgentMessage>(body).is_ok())
            + usize::from(decode_frame::<ServerMessage>(body).is_ok())
            + usize::from(decode_frame::<AgentMessageV2>(body).is_ok())
            + usize::from(decode_frame::<ServerMessageV2>(body).is_ok());
        let _ = decode_hello(body);
        for version in ProtocolVersion::ALL {
            let _ = decode_from_agent(version, body, &source);
            let _ = decode_from_server(version, body);
            let _ = decode_answer(version, body);
        }
        assert!(decoder.buffered_len() <= bytes.len());
    }
    n_messages
}

fn source() -> AgentId {
    AgentId::new(
        Region::new("cn-shanghai").unwrap(),
        IpAddr::from([10, 0, 0, 1]),
    )
}

// === Round trips ===

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn agent_messages_survive_framing_in_any_chunking(
        msgs in vec(arb_agent_message(), 1..4),
        chunk_sizes in vec(1usize..64, 1..8),
    ) {
        let mut stream = Vec::new();
        for msg in &msgs {
            stream.extend(encode_frame(msg, DEFAULT_MAX_FRAME_LEN).unwrap());
        }
        prop_assert_eq!(decode_in_chunks::<AgentMessage>(&stream, &chunk_sizes), msgs);
    }

    #[test]
    fn a_borrowed_batch_encodes_like_the_owned_one(
        seq in any::<u64>(),
        results in vec(arb_result(), 0..4),
        split in any::<prop::sample::Index>(),
    ) {
        let split = split.index(results.len() + 1);
        let borrowed =
            encode_result_batch_frame(seq, &results[..split], &results[split..], DEFAULT_MAX_FRAME_LEN)
                .unwrap();
        let owned = encode_frame(&AgentMessage::ResultBatch { seq, results }, DEFAULT_MAX_FRAME_LEN)
            .unwrap();
        prop_assert_eq!(borrowed, owned);
    }

    #[test]
    fn server_messages_survive_framing_in_any_chunking(
        msgs in vec(arb_server_message(), 1..4),
        chunk_sizes in vec(1usize..64, 1..8),
    ) {
        let mut stream = Vec::new();
        for msg in &msgs {
            stream.extend(encode_frame(msg, DEFAULT_MAX_FRAME_LEN).unwrap());
        }
        prop_assert_eq!(decode_in_chunks::<ServerMessage>(&stream, &chunk_sizes), msgs);
    }

    #[test]
    fn domain_results_survive_the_wire(results in vec(arb_probe_result(), 1..4)) {
        let agent = results[0].source.clone();
        let results: Vec<ProbeResult> = results.into_iter().map(|r| ProbeResult { source: agent.clone(), ..r }).collect();
        let msg = AgentMessage::ResultBatch { seq: 1, results: results.iter().map(ProbeResultV1::from).collect() };
        let frame = encode_frame(&msg, DEFAULT_MAX_FRAME_LEN).unwrap();
        let Ok(AgentMessage::ResultBatch { results: decoded, .. }) = decode_frame(&frame[LEN_PREFIX_BYTES..]) else {
            panic!("not a result batch");
        };
        prop_assert_eq!(results_into_domain(decoded, &agent).unwrap(), results);
    }

    #[test]
    fn domain_configs_survive_the_wire(configs in vec(arb_probe_config(), 1..3)) {
        let msg = ServerMessage::TargetPool { revision: 1, configs: configs.iter().map(ProbeConfigV1::from).collect() };
        let frame = encode_frame(&msg, DEFAULT_MAX_FRAME_LEN).unwrap();
        let Ok(ServerMessage::TargetPool { configs: decoded, .. }) = decode_frame(&frame[LEN_PREFIX_BYTES..]) else {
            panic!("not a target pool");
        };
        prop_assert_eq!(pool_into_domain(decoded).unwrap(), configs);
    }

    #[test]
    fn arbitrary_dtos_convert_or_fail_without_panicking(result in arb_result(), config in arb_config()) {
        let _ = result.into_domain(source());
        let _ = config.into_domain();
    }
}

// === Robustness ===

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_never_buffer_past_the_limit(
        bytes in vec(any::<u8>(), 0..512),
        chunk in 1usize..64,
    ) {
        const MAX_FRAME_LEN: usize = 64;
        replay(&bytes, MAX_FRAME_LEN);
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        for piece in bytes.chunks(chunk) {
            decoder.push(piece);
            prop_assert!(decoder.buffered_len() <= LEN_PREFIX_BYTES + MAX_FRAME_LEN + chunk);
            while let Ok(Some(_)) = decoder.next_frame::<AgentMessage>() {}
        }
    }

    #[test]
    fn mutated_frames_never_panic(
        msg in arb_agent_message(),
        reply in arb_server_message(),
        mutations in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        for mut frame in [
            encode_frame(&msg, DEFAULT_MAX_FRAME_LEN).unwrap(),
            encode_frame(&reply, DEFAULT_MAX_FRAME_LEN).unwrap(),
        ] {
            for (idx, byte) in &mutations {
                let at = idx.index(frame.len());
                frame[at] = *byte;
            }
            replay(&frame, DEFAULT_MAX_FRAME_LEN);
            replay(&frame[..cut.index(frame.len())], DEFAULT_MAX_FRAME_LEN);
        }
    }
}

#[test]
fn secrets_never_show_in_debug_output() {
    let hello = golden_hello();
    let text = format!("{hello:?}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("WireSecret(<redacted>)"), "{text}");
}

#[test]
fn addresses_convert_both_ways() {
    for text in ["10.1.2.3:80", "[2001:db8::1]:4433"] {
        let addr: SocketAddr = text.parse().unwrap();
        assert_eq!(SocketAddr::from(SocketAddrV1::from(addr)), addr);
    }
}

// === Golden bytes and corpus ===

fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/wire"))
}

fn update_golden() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

fn golden_hello() -> AgentMessage {
    AgentMessage::Hello {
        protocol_version: 1,
        agent_version: "0.1.0".into(),
        region: "cn-shanghai".into(),
        ip: IpAddrV1::V4([10, 0, 0, 1]),
        instance_id: 0x0123_4567_89ab_cdef,
        token: WireSecret::new("s3cret".into()),
    }
}

fn golden_icmp_result() -> ProbeResultV1 {
    let mut histogram_counts = vec![0; HISTOGRAM_LEN];
    histogram_counts[5] = 2; // (800 µs, 1.6 ms]
    histogram_counts[6] = 1; // (1.6 ms, 3.2 ms]
    ProbeResultV1 {
        target_region: "cn-beijing".into(),
        target: "10.0.1.1".into(),
        round_start_ms: 1_700_000_000_000,
        outcome: OutcomeV1::Icmp {
            resolve_ns: 0,
            failure: None,
            packets_sent: 4,
            packets_received: 3,
            rtt: Some(RttSummaryV1 {
                mean_ns: 1_500_000,
                min_ns: 1_000_000,
                max_ns: 2_500_000,
                stddev_ns: 707_106,
            }),
            histogram_counts,
            histogram_sum_ns: 4_500_000,
        },
    }
}

fn golden_http_result() -> ProbeResultV1 {
    ProbeResultV1 {
        target_region: "cn-beijing".into(),
        target: "https://www.example.com/health".into(),
        round_start_ms: 1_700_000_000_000,
        outcome: OutcomeV1::Http {
            phases: HttpPhasesV1 {
                resolve_ns: 1_000_000,
                connect_ns: 2_000_000,
                tls_ns: 3_000_000,
                processing_ns: 4_000_000,
                transfer_ns: 500_000,
            },
            status_code: Some(503),
            tls: Some(TlsInfoV1 {
                version: TlsVersionV1::Tls13,
                earliest_expiry_unix_secs: 1_800_000_000,
            }),
            failure: Some(HttpFailureV1::InvalidStatus(503)),
        },
    }
}

fn golden_result_batch() -> AgentMessage {
    AgentMessage::ResultBatch {
        seq: 42,
        results: vec![golden_icmp_result(), golden_http_result()],
    }
}

fn golden_http_config() -> ProbeConfigV1 {
    ProbeConfigV1 {
        region: "cn-beijing".into(),
        kind: ProbeKindV1::Http,
        targets: vec![
            "https://www.example.com/health".into(),
            "www.example.org".into(),
        ],
        icmp: None,
        http: Some(HttpModuleV1 {
            valid_status_codes: vec![200, 204],
            valid_http_versions: vec![HttpVersionV1::Http11, HttpVersionV1::Http2],
            preferred_ip_protocol: IpProtocolV1::Ip6,
            ip_protocol_fallback: true,
            skip_resolve_phase_with_proxy: false,
            no_follow_redirects: false,
            fail_if_ssl: false,
            fail_if_not_ssl: true,
            method: "POST".into(),
            headers: vec![HeaderV1 {
                name: "Accept".into(),
                value: "application/json".into(),
            }],
            body: Some("{}".into()),
            fail_if_body_matches_regexp: vec!["(?i)error".into()],
            fail_if_body_not_matches_regexp: vec!["ok".into()],
            fail_if_header_matches: vec![HeaderMatchV1 {
                header: "Server".into(),
                regexp: "^old".into(),
                allow_missing: true,
            }],
            fail_if_header_not_matches: Vec::new(),
            compression: CompressionV1::Gzip,
            body_size_limit: Some(1_048_576),
            client: HttpClientConfigV1 {
                basic_auth: Some(BasicAuthV1 {
                    username: "probe".into(),
                    password: Some(SecretSourceV1::Inline(WireSecret::new("pw".into()))),
                }),
                bearer_token: Some(SecretSourceV1::File("/etc/probermesh/token".into())),
                tls: TlsConfigV1 {
                    ca_file: Some("/etc/probermesh/ca.pem".into()),
                    cert_file: None,
                    key_file: None,
                    server_name: Some("www.example.com".into()),
                    insecure_skip_verify: false,
                    min_version: Some(TlsMinVersionV1::Tls12),
                },
                proxy_url: None,
                follow_redirects: true,
                enable_http2: true,
            },
        }),
    }
}

/// The golden HTTP block made valid for the domain: a probe file can set one credential only,
/// and the golden bytes pin both (the v1 encoding of either must not change).
fn valid_http_config() -> ProbeConfigV1 {
    let mut config = golden_http_config();
    if let Some(http) = &mut config.http {
        http.client.bearer_token = None;
    }
    config
}

fn golden_target_pool() -> ServerMessage {
    ServerMessage::TargetPool {
        revision: 7,
        configs: vec![golden_http_config()],
    }
}

/// The golden frames: file stem, the `#` comment describing the value, and the frame.
fn golden_frames() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let agent = |msg: AgentMessage| encode_frame(&msg, DEFAULT_MAX_FRAME_LEN).unwrap();
    let server = |msg: ServerMessage| encode_frame(&msg, DEFAULT_MAX_FRAME_LEN).unwrap();
    vec![
        (
            "hello",
            "AgentMessage::Hello { protocol_version: 1, agent_version: \"0.1.0\", region: \"cn-shanghai\", ip: 10.0.0.1, instance_id: 0x0123456789abcdef, token: \"s3cret\" }",
            agent(golden_hello()),
        ),
        (
            "heartbeat",
            "AgentMessage::Heartbeat { sent_at_ms: 1700000000000 }",
            agent(AgentMessage::Heartbeat {
                sent_at_ms: 1_700_000_000_000,
            }),
        ),
        (
            "result_batch",
            "AgentMessage::ResultBatch { seq: 42, results: [ICMP cn-beijing 10.0.1.1 at 1700000000000: 4 sent, 3 received, rtt mean/min/max/stddev 1.5/1/2.5/0.707106 ms, buckets 5:2 6:1, sum 4.5 ms; HTTP cn-beijing https://www.example.com/health at 1700000000000: phases 1/2/3/4/0.5 ms, status 503, TLS 1.3 expiring 1800000000, failure InvalidStatus(503)] } (see golden_result_batch in core/src/wire/tests.rs)",
            agent(golden_result_batch()),
        ),
        (
            "welcome",
            "ServerMessage::Welcome { protocol_version: 1, server_version: \"0.1.0\", observed_addr: [2001:db8::1]:4433 }",
            server(ServerMessage::Welcome {
                protocol_version: 1,
                server_version: "0.1.0".into(),
                observed_addr: "[2001:db8::1]:4433".parse::<SocketAddr>().unwrap().into(),
            }),
        ),
        (
            "target_pool",
            "ServerMessage::TargetPool { revision: 7, configs: [HTTP cn-beijing, targets https://www.example.com/health and www.example.org, POST with every module field set (see golden_http_config in core/src/wire/tests.rs)] }",
            server(golden_target_pool()),
        ),
        (
            "ack",
            "ServerMessage::Ack { seq: 42 }",
            server(ServerMessage::Ack { seq: 42 }),
        ),
        (
            "pool_refused",
            "AgentMessage::PoolRefused { revision: 7, field: \"configs[0].http.method\", reason: \"bad\" } (appended to v1: variant 6)",
            agent(AgentMessage::PoolRefused {
                revision: 7,
                field: "configs[0].http.method".into(),
                reason: "bad".into(),
            }),
        ),
    ]
}

fn to_hex(comment: &str, bytes: &[u8]) -> String {
    let mut text = format!("# {comment}\n");
    for line in bytes.chunks(16) {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        text.push_str(&hex.join(" "));
        text.push('\n');
    }
    text
}

fn from_hex(text: &str) -> Vec<u8> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .map(|pair| u8::from_str_radix(pair, 16).unwrap())
        .collect()
}

/// Malformed seeds for the corpus: each is a name and its bytes.
fn malformed_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let hello = encode_frame(&golden_hello(), DEFAULT_MAX_FRAME_LEN).unwrap();
    let ack = encode_frame(&ServerMessage::Ack { seq: 42 }, DEFAULT_MAX_FRAME_LEN).unwrap();
    let mut trailing = ack.clone();
    trailing.push(0);
    trailing[3] += 1;
    let mut short_histogram = golden_icmp_result();
    if let OutcomeV1::Icmp {
        histogram_counts, ..
    } = &mut short_histogram.outcome
    {
        histogram_counts.pop();
    }
    let bad_result = encode_frame(
        &AgentMessage::ResultBatch {
            seq: 1,
            results: vec![short_histogram],
        },
        1024,
    )
    .unwrap();
    let mut icmp_with_http = golden_http_config();
    icmp_with_http.kind = ProbeKindV1::Icmp;
    let bad_pool = encode_frame(
        &ServerMessage::TargetPool {
            revision: 1,
            configs: vec![icmp_with_http],
        },
        4096,
    )
    .unwrap();
    vec![
        (
            "malformed-oversized-prefix",
            vec![0xff, 0xff, 0xff, 0xff, 0, 1, 2, 3],
        ),
        (
            "malformed-truncated-hello",
            hello[..hello.len() - 3].to_vec(),
        ),
        (
            "malformed-garbage-body",
            vec![0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
        ("malformed-trailing-byte", trailing),
        ("malformed-unknown-variant", vec![0, 0, 0, 2, 0x7f, 0]),
        ("malformed-short-histogram", bad_result),
        ("malformed-icmp-config-with-http-module", bad_pool),
        (
            "malformed-huge-vec-length",
            vec![0, 0, 0, 7, 2, 1, 0xff, 0xff, 0xff, 0xff, 0x0f],
        ),
    ]
}

/// Golden frames: file stem, the `#` comment describing the value, and the frame.
type GoldenFrames = Vec<(&'static str, &'static str, Vec<u8>)>;

/// The golden frames of every version: its folder in `fixtures/wire/`, the prefix of its files
/// in the corpus, and its frames.
fn golden_frames_by_version() -> Vec<(&'static str, &'static str, GoldenFrames)> {
    vec![
        ("v1", "golden-", golden_frames()),
        ("v2", "golden-v2-", v2::golden_frames()),
    ]
}

#[test]
fn golden_frames_are_the_promised_bytes() {
    let corpus_dir = fixtures_dir().join("corpus");
    if update_golden() {
        std::fs::create_dir_all(&corpus_dir).unwrap();
        for (version, corpus_prefix, frames) in golden_frames_by_version() {
            let dir = fixtures_dir().join(version);
            std::fs::create_dir_all(&dir).unwrap();
            for (stem, comment, frame) in frames {
                std::fs::write(dir.join(format!("{stem}.hex")), to_hex(comment, &frame)).unwrap();
                std::fs::write(
                    corpus_dir.join(format!("{corpus_prefix}{stem}.bin")),
                    &frame,
                )
                .unwrap();
            }
        }
        for (stem, bytes) in malformed_seeds().into_iter().chain(v2::malformed_seeds()) {
            std::fs::write(corpus_dir.join(format!("{stem}.bin")), bytes).unwrap();
        }
    }
    for (version, _, frames) in golden_frames_by_version() {
        for (stem, _, frame) in frames {
            let path = fixtures_dir().join(version).join(format!("{stem}.hex"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                text.starts_with("# "),
                "{} must start with a # comment line",
                path.display()
            );
            assert_eq!(
                from_hex(&text),
                frame,
                "{version}/{stem}: the encoding changed; {version} bytes are a compatibility promise (see fixtures/wire/README.md)"
            );
        }
    }
}

#[test]
fn golden_frames_decode_to_their_values() {
    let v1_dir = fixtures_dir().join("v1");
    let read = |stem: &str| {
        from_hex(&std::fs::read_to_string(v1_dir.join(format!("{stem}.hex"))).unwrap())
    };
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.push(&read("hello"));
    decoder.push(&read("result_batch"));
    assert_eq!(
        decoder.next_frame::<AgentMessage>().unwrap(),
        Some(golden_hello())
    );
    assert_eq!(
        decoder.next_frame::<AgentMessage>().unwrap(),
        Some(golden_result_batch())
    );
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.push(&read("target_pool"));
    decoder.push(&read("ack"));
    assert_eq!(
        decoder.next_frame::<ServerMessage>().unwrap(),
        Some(golden_target_pool())
    );
    assert_eq!(
        decoder.next_frame::<ServerMessage>().unwrap(),
        Some(ServerMessage::Ack { seq: 42 })
    );
    // The golden values are valid domain values too, but for the second credential of the
    // pool's block, which a probe file cannot set and the one validation refuses.
    let AgentMessage::ResultBatch { results, .. } = golden_result_batch() else {
        unreachable!()
    };
    assert_eq!(results_into_domain(results, &source()).unwrap().len(), 2);
    assert_eq!(
        pool_into_domain(vec![valid_http_config()]).unwrap()[0]
            .targets
            .len(),
        2
    );
    assert_eq!(
        pool_into_domain(vec![golden_http_config()])
            .unwrap_err()
            .to_string(),
        "invalid configs[0].http.http_client_config: set at most one of basic_auth, bearer_token and bearer_token_file"
    );
}

#[test]
fn corpus_replays_without_panicking() {
    let mut n_files = 0;
    let mut n_messages = 0;
    for entry in std::fs::read_dir(fixtures_dir().join("corpus")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            n_files += 1;
            n_messages += replay(&std::fs::read(&path).unwrap(), DEFAULT_MAX_FRAME_LEN);
        }
    }
    let n_golden = golden_frames().len() + v2::golden_frames().len();
    assert!(
        n_files >= n_golden + malformed_seeds().len() + v2::malformed_seeds().len(),
        "corpus has only {n_files} files"
    );
    assert!(n_messages >= n_golden, "only {n_messages} messages decoded");
}

// === Validation: one test per rule, with the error text ===

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(res: Result<T, WireError>, expected: &str) {
    let err = res.unwrap_err();
    assert!(matches!(err, WireError::Invalid { .. }), "{err:?}");
    assert_eq!(err.to_string(), expected);
}

fn with_icmp(
    result: ProbeResultV1,
    edit: impl FnOnce(&mut u32, &mut u32, &mut Option<RttSummaryV1>, &mut Vec<u64>),
) -> ProbeResultV1 {
    let mut result = result;
    if let OutcomeV1::Icmp {
        packets_sent,
        packets_received,
        rtt,
        histogram_counts,
        ..
    } = &mut result.outcome
    {
        edit(packets_sent, packets_received, rtt, histogram_counts);
    }
    result
}

#[test]
fn result_region_and_target_are_parsed() {
    let mut r = golden_icmp_result();
    r.target_region = "cn beijing".into();
    assert_invalid(
        r.into_domain(source()),
        "invalid target_region: region name \"cn beijing\" holds ' '; allowed are letters, digits, '-', '_', '.' and ':'",
    );
    let mut r = golden_icmp_result();
    r.target = "not a host".into();
    assert_invalid(
        r.into_domain(source()),
        "invalid target: ICMP target \"not a host\" is neither an IP address nor a valid host name",
    );
    let mut r = golden_http_result();
    r.target = "ftp://x".into();
    assert_invalid(
        r.into_domain(source()),
        "invalid target: HTTP target \"ftp://x\" is not a valid URL: only http:// and https:// are supported",
    );
}

#[test]
fn icmp_packets_received_cannot_exceed_packets_sent() {
    let r = with_icmp(golden_icmp_result(), |sent, _, _, _| *sent = 2);
    assert_invalid(
        r.into_domain(source()),
        "invalid outcome.packets_received: 3 is more than the 2 packets sent",
    );
}

#[test]
fn icmp_histogram_has_exactly_twenty_buckets() {
    let r = with_icmp(golden_icmp_result(), |_, _, _, counts| counts.push(0));
    assert_invalid(
        r.into_domain(source()),
        "invalid outcome.histogram_counts: holds 21 buckets; exactly 20 are expected",
    );
    let r = with_icmp(golden_icmp_result(), |_, _, _, counts| counts.truncate(19));
    assert_invalid(
        r.into_domain(source()),
        "invalid outcome.histogram_counts: holds 19 buckets; exactly 20 are expected",
    );
}

#[test]
fn icmp_histogram_counts_add_up_to_packets_received() {
    let r = with_icmp(golden_icmp_result(), |_, _, _, counts| counts[0] = 1);
    assert_invalid(
        r.into_domain(source()),
        "invalid outcome.histogram_counts: buckets add up to 4, not to the 3 packets received",
    );
    // Counts that would overflow a u64 sum are still compared exactly.
    let r = with_icmp(golden_icmp_result(), |_, _, _, counts| {
        counts.fill(u64::MAX)
    });
    assert_invalid(
        r.into_domain(source()),
        "invalid outcome.histogram_counts: buckets add up to 368934881474191032300, not to the 3 packets received",
    );
}

#[test]
fn icmp_rtt_summary_matches_the_replies() {
    let r = with_icmp(golden_icmp_result(), |_, received, _, counts| {
        *received = 0;
        counts.fill(0);
    });
    assert_invalid(
        r.into_domain(source()),
        "invalid outcome.rtt: present although no packet was received",
    );
    let r = with_icmp(golden_icmp_result(), |_, _, rtt, _| *rtt = None);
    assert_invalid(
        r.into_domain(source()),
        "invalid outcome.rtt: missing although packets were received",
    );
    let r = with_icmp(golden_icmp_result(), |_, _, rtt, _| {
        if let Some(rtt) = rtt {
            rtt.min_ns = rtt.max_ns + 1;
        }
    });
    assert_invalid(
        r.into_domain(source()),
        "invalid outcome.rtt: min_ns 2500001 is above max_ns 2500000",
    );
}

#[test]
fn http_status_codes_have_three_digits() {
    let mut r = golden_http_result();
    if let OutcomeV1::Http { status_code, .. } = &mut r.outcome {
        *status_code = Some(99);
    }
    assert_invalid(
        r.into_domain(source()),
        "invalid outcome.status_code: 99 is not a status code from 100 to 999",
    );
    let mut r = golden_http_result();
    if let OutcomeV1::Http { failure, .. } = &mut r.outcome {
        *failure = Some(HttpFailureV1::InvalidStatus(1000));
    }
    assert_invalid(
        r.into_domain(source()),
        "invalid outcome.failure.invalid_status: 1000 is not a status code from 100 to 999",
    );
}

#[test]
fn batch_errors_name_the_result_and_batches_are_bounded() {
    let mut bad = golden_http_result();
    bad.target = String::new();
    assert_invalid(
        results_into_domain(vec![golden_icmp_result(), bad], &source()),
        "invalid results[1].target: target is empty",
    );
    let too_many = vec![golden_icmp_result(); MAX_RESULTS_PER_BATCH + 1];
    assert_invalid(
        results_into_domain(too_many, &source()),
        "invalid results: length 100001 exceeds the limit of 100000",
    );
}

#[test]
fn config_region_and_kind_module_consistency() {
    let mut c = valid_http_config();
    c.region = String::new();
    assert_invalid(c.into_domain(), "invalid region: region name is empty");
    let mut c = valid_http_config();
    c.kind = ProbeKindV1::Icmp;
    assert_invalid(c.into_domain(), "invalid http: present in an ICMP config");
    let mut c = valid_http_config();
    c.http = None;
    assert_invalid(c.into_domain(), "invalid http: missing in an HTTP config");
    let mut c = valid_http_config();
    c.icmp = Some(IcmpModuleV1 {
        packet_count: 1,
        interval_ns: 1,
        payload_size: 64,
    });
    assert_invalid(c.into_domain(), "invalid icmp: present in an HTTP config");
    let mut c = valid_http_config();
    (c.kind, c.http, c.targets) = (ProbeKindV1::Icmp, None, Vec::new());
    assert_invalid(c.into_domain(), "invalid icmp: missing in an ICMP config");
}

#[test]
fn config_targets_are_parsed_unique_and_bounded() {
    let mut c = valid_http_config();
    c.targets.push("mailto:x://y".into());
    assert_invalid(
        c.into_domain(),
        "invalid targets[2]: HTTP target \"mailto:x://y\" is not a valid URL: only http:// and https:// are supported",
    );
    let mut c = valid_http_config();
    c.targets.push("www.example.org".into());
    assert_invalid(
        c.into_domain(),
        "invalid targets[2]: \"www.example.org\" repeats targets[1]",
    );
    let mut c = valid_http_config();
    c.targets = vec![String::new(); MAX_TARGETS_PER_CONFIG + 1];
    assert_invalid(
        c.into_domain(),
        "invalid targets: length 100001 exceeds the limit of 100000",
    );
}

#[test]
fn icmp_module_values_are_in_range() {
    let icmp_config = |packet_count, payload_size| ProbeConfigV1 {
        region: "r".into(),
        kind: ProbeKindV1::Icmp,
        targets: vec!["10.0.0.1".into()],
        icmp: Some(IcmpModuleV1 {
            packet_count,
            interval_ns: 15_000_000,
            payload_size,
        }),
        http: None,
    };
    assert!(icmp_config(64, 64).into_domain().is_ok());
    assert_invalid(
        icmp_config(0, 64).into_domain(),
        "invalid icmp.packet_count: 0 packets per probe; at least 1 is needed",
    );
    assert_invalid(
        icmp_config(10_001, 64).into_domain(),
        "invalid icmp.packet_count: 10001 packets per probe is too many; the maximum is 10000",
    );
    assert_invalid(
        icmp_config(64, 23).into_domain(),
        "invalid icmp.payload_size: 23 bytes is too small; the minimum is 24 (an 8-byte timestamp and a 16-byte probe token)",
    );
}

fn with_http(edit: impl FnOnce(&mut HttpModuleV1)) -> Result<ProbeConfig, WireError> {
    let mut c = valid_http_config();
    if let Some(http) = &mut c.http {
        edit(http);
    }
    c.into_domain()
}

#[test]
fn http_module_lists_and_texts_are_bounded() {
    assert_invalid(
        with_http(|h| h.valid_status_codes.push(1000)),
        "invalid http.valid_status_codes[2]: status code 1000 is not between 100 and 599",
    );
    assert_invalid(
        with_http(|h| h.valid_status_codes = vec![200; MAX_LIST_LEN + 1]),
        "invalid http.valid_status_codes: 1025 entries; at most 1024 are allowed",
    );
    assert_invalid(
        with_http(|h| h.valid_http_versions = vec![HttpVersionV1::Http11; MAX_LIST_LEN + 1]),
        "invalid http.valid_http_versions: 1025 entries; at most 1024 are allowed",
    );
    assert_invalid(
        with_http(|h| h.method.clear()),
        "invalid http.method: \"\" is not a valid HTTP method (letters, digits and !#$%&'*+-.^_`|~ only)",
    );
    assert_invalid(
        with_http(|h| h.method = "X".repeat(MAX_TEXT_LEN + 1)),
        "invalid http.method: 8193 bytes long; the limit is 8192 bytes",
    );
    assert_invalid(
        with_http(|h| {
            h.headers = vec![
                HeaderV1 {
                    name: "a".into(),
                    value: "b".into()
                };
                MAX_LIST_LEN + 1
            ]
        }),
        "invalid http.headers: 1025 entries; at most 1024 are allowed",
    );
    assert_invalid(
        with_http(|h| h.headers[0].name = "n".repeat(MAX_TEXT_LEN + 1)),
        "invalid http.headers[0].name: 8193 bytes long; the limit is 8192 bytes",
    );
    assert_invalid(
        with_http(|h| h.headers[0].value = "v".repeat(MAX_TEXT_LEN + 1)),
        "invalid http.headers[0].value: 8193 bytes long; the limit is 8192 bytes",
    );
    assert_invalid(
        with_http(|h| h.body = Some("b".repeat(MAX_REQUEST_BODY_LEN + 1))),
        "invalid http.body: the request body is 1048577 bytes long; the limit is 1048576 bytes (1 MiB)",
    );
    assert_invalid(
        with_http(|h| h.fail_if_header_matches[0].header = "h".repeat(MAX_TEXT_LEN + 1)),
        "invalid http.fail_if_header_matches[0].header: 8193 bytes long; the limit is 8192 bytes",
    );
}

#[test]
fn http_module_regexes_compile_within_limits() {
    let err = with_http(|h| h.fail_if_body_matches_regexp.push("(".into()))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "invalid http.fail_if_body_matches_regexp[1]: invalid regular expression \"(\": "
        ),
        "{err}"
    );
    assert!(err.contains("unclosed group"), "{err}");
    let err = with_http(|h| h.fail_if_body_not_matches_regexp[0] = "\\w{1000}".into())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "invalid http.fail_if_body_not_matches_regexp[0]: invalid regular expression "
        ),
        "{err}"
    );
    assert!(err.contains("more than the 1024 KiB allowed"), "{err}");
    let err = with_http(|h| h.fail_if_header_matches[0].regexp = "[".into())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "invalid http.fail_if_header_matches[0].regexp: invalid regular expression "
        ),
        "{err}"
    );
    assert_invalid(
        with_http(|h| {
            h.fail_if_header_not_matches = vec![HeaderMatchV1 {
                header: "h".into(),
                regexp: "x".repeat(MAX_TEXT_LEN + 1),
                allow_missing: false,
            }]
        }),
        "invalid http.fail_if_header_not_matches[0].regexp: 8193 bytes long; the limit is 8192 bytes",
    );
    assert_invalid(
        with_http(|h| h.fail_if_body_matches_regexp = vec![String::new(); MAX_LIST_LEN + 1]),
        "invalid http.fail_if_body_matches_regexp: 1025 entries; at most 1024 are allowed",
    );
}

#[test]
fn http_client_texts_are_bounded_and_secrets_stay_out_of_errors() {
    let long = "s".repeat(MAX_TEXT_LEN + 1);
    let res = with_http(|h| {
        h.client.bearer_token = Some(SecretSourceV1::Inline(WireSecret::new(long.clone())))
    });
    let err = res.unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid http.http_client_config.bearer_token: longer than 8192 bytes"
    );
    assert_invalid(
        with_http(|h| {
            if let Some(auth) = &mut h.client.basic_auth {
                auth.password = Some(SecretSourceV1::File(long.clone()));
            }
        }),
        "invalid http.http_client_config.basic_auth.password: 8193 bytes long; the limit is 8192 bytes",
    );
    assert_invalid(
        with_http(|h| {
            if let Some(auth) = &mut h.client.basic_auth {
                auth.username = long.clone();
            }
        }),
        "invalid http.http_client_config.basic_auth.username: 8193 bytes long; the limit is 8192 bytes",
    );
    assert_invalid(
        with_http(|h| h.client.tls.ca_file = Some(long.clone())),
        "invalid http.http_client_config.tls_config.ca_file: 8193 bytes long; the limit is 8192 bytes",
    );
    assert_invalid(
        with_http(|h| h.client.proxy_url = Some(long.clone())),
        "invalid http.http_client_config.proxy_url: 8193 bytes long; the limit is 8192 bytes",
    );
}

#[test]
fn pool_errors_name_the_config_and_pools_are_bounded() {
    let mut bad = valid_http_config();
    if let Some(http) = &mut bad.http {
        http.method.clear();
    }
    assert_invalid(
        pool_into_domain(vec![valid_http_config(), bad]),
        "invalid configs[1].http.method: \"\" is not a valid HTTP method (letters, digits and !#$%&'*+-.^_`|~ only)",
    );
    let mut tiny = valid_http_config();
    tiny.http = None;
    assert_invalid(
        pool_into_domain(vec![tiny; MAX_CONFIGS_PER_POOL + 1]),
        "invalid configs: length 10001 exceeds the limit of 10000",
    );
}

#[test]
fn message_limits_name_the_field() {
    let task = ServerMessage::Task {
        task_id: 1,
        command: "x".repeat(MAX_COMMAND_LEN + 1),
        timeout_ms: 30_000,
        output_limit_bytes: 1024,
    };
    assert_invalid(
        task.check_limits(),
        "invalid task.command: length 65537 exceeds the limit of 65536",
    );
    let hello = AgentMessage::Hello {
        protocol_version: 1,
        agent_version: "0.1.0".into(),
        region: "r".into(),
        ip: IpAddrV1::V4([10, 0, 0, 1]),
        instance_id: 1,
        token: WireSecret::new("t".repeat(MAX_TEXT_LEN + 1)),
    };
    assert_invalid(
        hello.check_limits(),
        "invalid hello.token: length 8193 exceeds the limit of 8192",
    );
    let status = AgentMessage::UpgradeStatus {
        offer_id: 1,
        version: "0.2.0".into(),
        state: UpgradeStateV1::Failed {
            reason: "r".repeat(MAX_TEXT_LEN + 1),
        },
    };
    assert_invalid(
        status.check_limits(),
        "invalid upgrade_status.state.reason: length 8193 exceeds the limit of 8192",
    );
    let output = AgentMessage::TaskResult {
        task_id: 1,
        exit_code: Some(0),
        timed_out: false,
        stdout: vec![0; MAX_TASK_OUTPUT_LEN + 1],
        stderr: Vec::new(),
        truncated: false,
        duration_ms: 1,
    };
    assert_invalid(
        output.check_limits(),
        "invalid task_result.stdout: length 4194305 exceeds the limit of 4194304",
    );
    assert!(golden_hello().check_limits().is_ok());
    assert!(golden_result_batch().check_limits().is_ok());
    assert!(golden_target_pool().check_limits().is_ok());
}

// === The open-windows handoff file ===

/// Two agents' results: the golden batch from `source()` and its ICMP result from a second.
fn golden_open_windows() -> Vec<ProbeResult> {
    let AgentMessage::ResultBatch { results, .. } = golden_result_batch() else {
        unreachable!()
    };
    let other = AgentId::new(
        Region::new("cn-beijing").unwrap(),
        IpAddr::from([10, 0, 1, 1]),
    );
    let mut all = results_into_domain(results[..1].to_vec(), &other).unwrap();
    all.extend(results_into_domain(results, &source()).unwrap());
    all
}

#[test]
fn golden_open_windows_file_is_the_promised_bytes() {
    let path = fixtures_dir().join("v1").join("open_windows.hex");
    let bytes = encode_open_windows(
        UnixMillis(1_700_000_002_000),
        Duration::from_secs(15),
        &golden_open_windows(),
    )
    .unwrap();
    if update_golden() {
        std::fs::write(
            &path,
            to_hex(
                "open-windows file, format 1, saved at 1700000002000 by a server with 15 s windows: cn-beijing/10.0.1.1 with the golden ICMP result, cn-shanghai/10.0.0.1 with both golden results",
                &bytes,
            ),
        )
        .unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        from_hex(&text),
        bytes,
        "the handoff format changed; a server must read what the previous release wrote"
    );
    let back = decode_open_windows(&from_hex(&text)).unwrap();
    assert_eq!(back.saved_at, UnixMillis(1_700_000_002_000));
    assert_eq!(back.window, Duration::from_secs(15));
    assert_eq!(back.results, golden_open_windows());
}

#[test]
fn foreign_or_newer_handoff_files_are_refused_by_name() {
    let bytes = encode_open_windows(
        UnixMillis(1),
        Duration::from_secs(15),
        &golden_open_windows(),
    )
    .unwrap();
    let field_of = |bytes: &[u8]| match decode_open_windows(bytes) {
        Err(WireError::Invalid { field, .. }) => field,
        other => panic!("expected an invalid field, got {other:?}"),
    };
    assert_eq!(field_of(b"PK\x03\x04 a zip file"), "magic");
    assert_eq!(field_of(&[]), "magic");
    let mut newer = bytes.clone();
    newer[OPEN_WINDOWS_MAGIC.len() + 1] = 2;
    assert_eq!(field_of(&newer), "format");
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(
        decode_open_windows(&trailing),
        Err(WireError::TrailingBytes { n_trailing: 1 })
    );
    // A result that breaks a domain rule is named by its place in the file.
    let mut body = OpenWindowsV1 {
        saved_at_ms: 1,
        window_ms: 15_000,
        sources: vec![SourceResultsV1 {
            region: "cn-shanghai".into(),
            ip: IpAddrV1::from(IpAddr::from([10, 0, 0, 1])),
            results: vec![golden_icmp_result()],
        }],
    };
    body.sources[0].results[0].target_region = "no spaces allowed".into();
    let encode = |body: &OpenWindowsV1| {
        let mut bytes = OPEN_WINDOWS_MAGIC.to_vec();
        bytes.extend_from_slice(&OPEN_WINDOWS_FORMAT.to_be_bytes());
        postcard::to_extend(body, bytes).unwrap()
    };
    assert_eq!(
        field_of(&encode(&body)),
        "sources[0].results[0].target_region"
    );
    body.window_ms = 999;
    assert_eq!(field_of(&encode(&body)), "window_ms");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn results_survive_the_handoff_file(
        results in vec(arb_probe_result(), 0..6),
        saved_at in any::<u64>(),
        window_ms in 1_000u64..3_600_000,
    ) {
        let bytes = encode_open_windows(UnixMillis(saved_at), Duration::from_millis(window_ms), &results).unwrap();
        let back = decode_open_windows(&bytes).unwrap();
        prop_assert_eq!(back.saved_at, UnixMillis(saved_at));
        prop_assert_eq!(back.window, Duration::from_millis(window_ms));
        // Grouped by agent; a stable sort keeps each agent's results in their order.
        let mut expected = results;
        expected.sort_by(|a, b| a.source.cmp(&b.source));
        prop_assert_eq!(back.results, expected);
    }

    #[test]
    fn damaged_handoff_files_are_refused_without_panicking(
        cut in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let bytes = encode_open_windows(UnixMillis(7), Duration::from_secs(15), &golden_open_windows()).unwrap();
        prop_assert!(decode_open_windows(&bytes[..cut.index(bytes.len())]).is_err());
        let mut mutated = bytes.clone();
        mutated[at.index(bytes.len())] = byte;
        let _ = decode_open_windows(&mutated);
    }
}

// === The task signing bytes (v2) ===

#[test]
fn golden_task_signing_bytes_are_the_promised_bytes() {
    let path = fixtures_dir().join("v2").join("task_signing_bytes.hex");
    let bytes = task_signing_bytes(&v2::golden_task_spec());
    if update_golden() {
        std::fs::write(
            &path,
            to_hex(
                "task_signing_bytes of the golden task.hex (id 9, \"uptime\", 30000 ms, 65536 bytes, expires 1700000060000, =~ \"eu-.*\"): \"probermesh task v2\\0\" then postcard (u64, str, u64, u32, u64, str, str)",
                &bytes,
            ),
        )
        .unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        from_hex(&text),
        bytes,
        "the task signing bytes changed: every signed task would fail verification"
    );
    // Spelled out: the prefix, then id 9, "uptime", 30000 (b0 ea 01), 65536 (80 80 04) and
    // 1700000060000 as varints.
    let mut expected = b"probermesh task v2\0".to_vec();
    expected.extend([9, 6]);
    expected.extend(b"uptime");
    expected.extend([0xb0, 0xea, 0x01, 0x80, 0x80, 0x04]);
    expected.extend(postcard::to_allocvec(&1_700_000_060_000_u64).unwrap());
    expected.extend([2]);
    expected.extend(b"=~");
    expected.extend([5]);
    expected.extend(b"eu-.*");
    assert_eq!(bytes, expected);
    // The signature is not signed; every other field is.
    let mut unsigned = v2::golden_task_spec();
    unsigned.signature = None;
    assert_eq!(task_signing_bytes(&unsigned), bytes);
    let mut other = v2::golden_task_spec();
    other.expires_at = UnixMillis(1_700_000_060_001);
    assert_ne!(task_signing_bytes(&other), bytes);
    let mut widened = v2::golden_task_spec();
    widened.region_pattern = ".*".into();
    assert_ne!(
        task_signing_bytes(&widened),
        bytes,
        "the region selector is signed"
    );
}

// === What the probe file accepts, every agent accepts ===

/// `text` as a YAML double-quoted scalar (any character, control characters escaped).
fn yaml_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Texts near every limit and every rule of the settings: mostly plain, sometimes empty,
/// with odd characters or line breaks, or just under and over the length limit.
fn arb_setting_text() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => "[ -~]{1,12}",
        1 => "\\PC{0,6}",
        1 => Just(String::new()),
        1 => Just("a\r\nb".to_owned()),
        1 => Just("x".repeat(MAX_TEXT_LEN)),
        1 => Just("x".repeat(MAX_TEXT_LEN + 1)),
    ]
}

/// A short name (YAML mapping keys longer than 1,024 characters are not even YAML).
fn arb_setting_name() -> impl Strategy<Value = String> {
    prop_oneof![30 => "[A-Za-z-]{1,10}", 1 => "\\PC{0,6}", 1 => Just("a\r\nb".to_owned())]
}

/// Regexes from tiny to over the compiled-size limit, including the Unicode classes that
/// compile large (between 256 KiB and 1 MiB, where the file and the wire used to disagree)
/// and syntax errors.
fn arb_setting_regex() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => Just("ok".to_owned()),
        10 => Just(r"\w{20}".to_owned()),
        6 => Just(r"\w{60}".to_owned()),
        1 => Just(r"\w{200}".to_owned()),
        1 => Just("a{1000}{1000}".to_owned()),
        1 => Just("(".to_owned()),
        1 => arb_setting_text(),
    ]
}

/// Some of the time, a value.
fn sometimes<T: std::fmt::Debug>(
    strategy: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    option::weighted(0.3, strategy)
}

/// An `http:` block as YAML: every key, with values mostly valid and sometimes not.
fn arb_http_block() -> impl Strategy<Value = String> {
    let first = (
        vec(prop_oneof![20 => 100i64..600, 1 => -10i64..1_100], 0..4),
        prop_oneof![12 => "GET|POST|[A-Z]{1,7}", 1 => arb_setting_text()],
        vec((arb_setting_name(), arb_setting_text()), 0..3),
        sometimes(prop_oneof![
            3 => Just(0usize),
            3 => Just(10),
            1 => Just(MAX_REQUEST_BODY_LEN),
            1 => Just(MAX_REQUEST_BODY_LEN + 1)
        ]),
        vec(arb_setting_regex(), 0..3),
        vec((arb_setting_name(), arb_setting_regex()), 0..2),
    );
    let client = (
        sometimes(arb_setting_text()),
        option::weighted(0.1, arb_setting_text()),
        prop_oneof![
            12 => Just((None, None)),
            6 => ("/[a-z]{1,8}", "/[a-z]{1,8}").prop_map(|(c, k)| (Some(c), Some(k))),
            1 => arb_setting_text().prop_map(|c| (Some(c), None)),
            1 => arb_setting_text().prop_map(|k| (None, Some(k))),
        ],
        sometimes(prop_oneof![
            4 => "http://[a-z]{1,8}(:[0-9]{1,6})?".boxed(),
            1 => arb_setting_text().boxed()
        ]),
    );
    (first, client).prop_map(
        |((codes, method, headers, body_len, body_regexes, header_matches), client)| {
            let (username, bearer_token, (cert_file, key_file), proxy_url) = client;
            let mut yaml = String::from("    http:\n");
            yaml.push_str(&format!(
                "      valid_status_codes: [{}]\n",
                codes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            yaml.push_str(&format!("      method: {}\n", yaml_quoted(&method)));
            if !headers.is_empty() {
                yaml.push_str("      headers:\n");
                for (name, value) in &headers {
                    yaml.push_str(&format!(
                        "        {}: {}\n",
                        yaml_quoted(name),
                        yaml_quoted(value)
                    ));
                }
            }
            if let Some(len) = body_len {
                yaml.push_str(&format!("      body: {}\n", yaml_quoted(&"b".repeat(len))));
            }
            if !body_regexes.is_empty() {
                yaml.push_str("      fail_if_body_matches_regexp:\n");
                for regex in &body_regexes {
                    yaml.push_str(&format!("        - {}\n", yaml_quoted(regex)));
                }
            }
            if !header_matches.is_empty() {
                yaml.push_str("      fail_if_header_matches:\n");
                for (header, regex) in &header_matches {
                    yaml.push_str(&format!(
                        "        - {{header: {}, regexp: {}}}\n",
                        yaml_quoted(header),
                        yaml_quoted(regex)
                    ));
                }
            }
            yaml.push_str("      http_client_config:\n        follow_redirects: true\n");
            if let Some(username) = &username {
                yaml.push_str(&format!(
                    "        basic_auth: {{username: {}, password: pw}}\n",
                    yaml_quoted(username)
                ));
            }
            if let Some(token) = &bearer_token {
                yaml.push_str(&format!("        bearer_token: {}\n", yaml_quoted(token)));
            }
            if let Some(url) = &proxy_url {
                yaml.push_str(&format!("        proxy_url: {}\n", yaml_quoted(url)));
            }
            yaml.push_str("        tls_config:\n          insecure_skip_verify: false\n");
            if let Some(file) = &cert_file {
                yaml.push_str(&format!("          cert_file: {}\n", yaml_quoted(file)));
            }
            if let Some(file) = &key_file {
                yaml.push_str(&format!("          key_file: {}\n", yaml_quoted(file)));
            }
            yaml
        },
    )
}

/// An `icmp:` block as YAML, values mostly in range and sometimes not.
fn arb_icmp_block() -> impl Strategy<Value = String> {
    (
        prop_oneof![20 => 0i64..200, 1 => -5i64..20_000],
        prop_oneof![20 => 0i64..2_000, 1 => -5i64..100, 1 => 60_000i64..70_000],
        prop_oneof![
            4 => Just("0s"),
            4 => Just("1ms"),
            4 => Just("15ms"),
            4 => Just("2s"),
            1 => Just("-1s"),
            4 => Just("")
        ],
    )
        .prop_map(|(packet_count, payload_size, interval)| {
            format!(
                "    icmp:\n      packet_count: {packet_count}\n      payload_size: {payload_size}\n      interval: {}\n",
                yaml_quoted(interval)
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The bug this guards against: a body regexp compiling to between 256 KiB and 1 MiB
    /// passed the probe file and was refused by every agent, which then kept its old pool.
    #[test]
    fn anything_the_probe_file_accepts_every_agent_accepts(
        http in arb_http_block(),
        icmp in arb_icmp_block(),
    ) {
        let yaml = format!(
            "prober_configs:\n  - prober_type: http\n    region: web\n    targets: [http://198.18.0.9/]\n{http}  - prober_type: icmp\n    region: eu\n    targets: [198.18.0.1]\n{icmp}"
        );
        let Ok(file) = crate::probe_file::parse_probe_file("probe.yaml", &yaml) else {
            return Ok(());
        };
        let pool: Vec<ProbeConfigV1> = file.configs.iter().map(ProbeConfigV1::from).collect();
        let msg = ServerMessage::TargetPool { revision: 1, configs: pool };
        let frame = encode_frame(&msg, DEFAULT_MAX_FRAME_LEN).unwrap();
        let Ok(ServerMessage::TargetPool { configs, .. }) = decode_frame(&frame[LEN_PREFIX_BYTES..]) else {
            panic!("not a target pool");
        };
        match pool_into_domain(configs) {
            Ok(decoded) => prop_assert_eq!(decoded, file.configs),
            Err(e) => prop_assert!(false, "the probe file accepted what an agent refuses: {e}\n{yaml}"),
        }
    }
}

#[test]
fn the_regex_that_split_file_and_wire_is_accepted_by_both() {
    let yaml = "prober_configs:\n  - prober_type: http\n    region: web\n    targets: [http://198.18.0.9/]\n    http:\n      fail_if_body_matches_regexp: ['\\w{20}']\n";
    let file = crate::probe_file::parse_probe_file("probe.yaml", yaml).unwrap();
    let pool: Vec<ProbeConfigV1> = file.configs.iter().map(ProbeConfigV1::from).collect();
    assert_eq!(pool_into_domain(pool).unwrap(), file.configs);
}
