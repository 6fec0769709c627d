//! The server certificates operators really make, against an agent that verifies with a CA file
//! (or a pin): made by the `openssl` command line (Debian's OpenSSL 3, as docs/link.md tells
//! operators to) and by rcgen. Each case starts a real `ReportServer` with the PEM files and a
//! real `AgentLink` on 127.0.0.1, and checks that the agent connects, or that both sides say in
//! plain words which certificate, why, and what to do.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use probermesh_adapters::link::{
    AgentIdentity, AgentLink, AgentLinkConfig, BackoffConfig, CertificateSource, ReportServer,
    ServerConfig, ServerVerification, Sha256Fingerprint,
};
use probermesh_adapters::secret::Token;
use probermesh_core::link::FromServer;
use probermesh_core::model::{AgentId, AgentVersion, Region};
use probermesh_core::ports::{LinkError, ServerLink};

mod common;

use common::{TempDir, capture_logs};

const TOKEN: &str = "cert-test-token";
const HANG_GUARD: Duration = Duration::from_secs(30);

/// Runs `openssl` with `args` in `dir`; panics with its stderr when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command (Debian package openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A server certificate and key as PEM files, and the CA file an agent is given.
struct Setup {
    cert_file: PathBuf,
    key_file: PathBuf,
    ca_file: PathBuf,
}

/// The certificates the openssl command line makes, with the commands docs/link.md gives.
mod by_openssl {
    use super::*;

    const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

    /// `openssl req -x509`: self-signed, and OpenSSL 3 marks it `CA:TRUE` (unless told not to).
    pub(super) fn self_signed(dir: &Path, san: &str, ca: bool) -> Setup {
        let mut args = vec!["req", "-x509"];
        args.extend(EC);
        let san = format!("subjectAltName={san}");
        args.extend([
            "-nodes", "-days", "365", "-subj", "/CN=pm", "-addext", &san, "-keyout", "key.pem",
            "-out", "cert.pem",
        ]);
        if !ca {
            args.extend(["-addext", "basicConstraints=critical,CA:FALSE"]);
        }
        openssl(dir, &args);
        Setup {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            ca_file: dir.join("cert.pem"),
        }
    }

    /// A CA (`ca.pem`) and a leaf it signs, valid for `days` (negative: already expired).
    pub(super) fn ca_and_leaf(dir: &Path, san: &str, days: i32) -> Setup {
        let mut ca = vec!["req", "-x509"];
        ca.extend(EC);
        ca.extend([
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=ProberMesh CA",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
        ]);
        openssl(dir, &ca);
        let mut csr = vec!["req"];
        csr.extend(EC);
        csr.extend([
            "-nodes",
            "-subj",
            "/CN=pm-server",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
        ]);
        openssl(dir, &csr);
        std::fs::write(
            dir.join("leaf.ext"),
            format!("basicConstraints=critical,CA:FALSE\nsubjectAltName={san}\n"),
        )
        .expect("extensions file");
        let days = days.to_string();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-days",
                &days,
                "-extfile",
                "leaf.ext",
                "-out",
                "cert.pem",
            ],
        );
        Setup {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            ca_file: dir.join("ca.pem"),
        }
    }
}

/// The same certificates made by rcgen.
mod by_rcgen {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, date_time_ymd,
    };

    fn params(cn: &str, names: &[&str]) -> CertificateParams {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params
    }

    fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("PEM file");
        path
    }

    pub(super) fn self_signed(dir: &Path, name: &str, ca: bool) -> Setup {
        let mut params = params("pm", &[name]);
        params.is_ca = if ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("certificate");
        let cert_file = write(dir, "cert.pem", &cert.pem());
        Setup {
            ca_file: cert_file.clone(),
            cert_file,
            key_file: write(dir, "key.pem", &key.serialize_pem()),
        }
    }

    pub(super) fn ca_and_leaf(dir: &Path, name: &str, expired: bool) -> Setup {
        let mut ca_params = params("ProberMesh CA", &[]);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("key");
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let mut leaf = params("pm-server", &[name]);
        leaf.is_ca = IsCa::ExplicitNoCa;
        if expired {
            leaf.not_before = date_time_ymd(2020, 1, 1);
            leaf.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let cert = leaf.signed_by(&key, &issuer).expect("leaf");
        Setup {
            cert_file: write(dir, "cert.pem", &cert.pem()),
            key_file: write(dir, "key.pem", &key.serialize_pem()),
            ca_file: write(dir, "ca.pem", &ca.pem()),
        }
    }
}

/// What happened when an agent verifying with `verification` met a server with `setup`.
struct Outcome {
    /// `Ok` when the agent got its `Welcome`; else the agent's error.
    agent: Result<(), String>,
    /// Everything both sides logged.
    logs: String,
}

async fn guarded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {HANG_GUARD:?}"))
}

async fn connect(setup: &Setup, verification: ServerVerification) -> Outcome {
    let (logs, _guard) = capture_logs();
    let server = ReportServer::bind(ServerConfig::new(
        "127.0.0.1:0".parse::<SocketAddr>().expect("addr"),
        CertificateSource::Files {
            cert_file: setup.cert_file.clone(),
            key_file: setup.key_file.clone(),
        },
        Token::new(TOKEN, "test").expect("token"),
    ))
    .expect("the server starts with the certificate");
    let identity = AgentIdentity::new(
        AgentId::new(
            Region::new("eu").expect("region"),
            "10.0.0.1".parse().expect("ip"),
        ),
        AgentVersion::new("0.1.0"),
    )
    .expect("randomness");
    let mut config = AgentLinkConfig::new(
        server.local_addr().to_string(),
        verification,
        Token::new(TOKEN, "test").expect("token"),
        identity,
    );
    config.backoff = BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
        jitter_fraction: 0.2,
    };
    let agent = AgentLink::start(config).expect("agent link");
    let agent_outcome = match guarded("the agent's first answer", agent.recv()).await {
        Ok(FromServer::Welcomed { .. }) => Ok(()),
        Ok(other) => panic!("expected a Welcome first, got {other:?}"),
        Err(LinkError::Io { detail }) => Err(detail),
        Err(other) => panic!("expected a TLS failure, got {other}"),
    };
    if agent_outcome.is_err() {
        // The server logs the refusal when the agent's close frame arrives.
        guarded("the server's log of the refusal", async {
            while !logs
                .text()
                .contains("an agent refused this server's certificate")
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    agent.close().await;
    server.shutdown().await;
    Outcome {
        agent: agent_outcome,
        logs: logs.text(),
    }
}

fn fingerprint_of(cert_file: &Path) -> String {
    let pem = std::fs::read_to_string(cert_file).expect("certificate");
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM");
    Sha256Fingerprint::of_der(&der).to_string()
}

use rustls::pki_types::pem::PemObject as _;

fn assert_connects(case: &str, outcome: &Outcome) {
    assert!(
        outcome.agent.is_ok(),
        "{case}: the agent must connect, got {:?}\nlogs:\n{}",
        outcome.agent,
        outcome.logs
    );
}

/// The agent's error and the server's log both hold every one of `expected`, the refused
/// certificate's fingerprint, and a fix.
fn assert_refused(case: &str, setup: &Setup, outcome: &Outcome, expected: &[&str]) {
    let agent = outcome
        .agent
        .as_ref()
        .expect_err(&format!("{case}: the agent must refuse the certificate"));
    let fingerprint = fingerprint_of(&setup.cert_file);
    let server_line = outcome
        .logs
        .lines()
        .find(|l| l.contains("an agent refused this server's certificate"))
        .unwrap_or_else(|| panic!("{case}: the server logs the refusal:\n{}", outcome.logs));
    for text in [agent.as_str(), server_line] {
        for needle in expected.iter().chain(&[fingerprint.as_str(), "Fix:"]) {
            assert!(
                text.contains(needle),
                "{case}: {needle:?} missing from:\n{text}"
            );
        }
        assert!(
            !text.contains("OtherError"),
            "{case}: rustls' wrapping left in: {text}"
        );
    }
    eprintln!("{case}: {agent}");
}

fn ca_file(setup: &Setup) -> ServerVerification {
    ServerVerification::CaFile(setup.ca_file.clone())
}

#[tokio::test]
async fn self_signed_certificates_in_the_ca_file_are_trusted_whatever_their_constraints() {
    for (case, ca) in [("CA:TRUE", true), ("CA:FALSE", false)] {
        let dir = TempDir::new(&format!("pm-cert-openssl-self-{ca}"));
        let setup = by_openssl::self_signed(dir.path(), "IP:127.0.0.1", ca);
        assert_connects(
            &format!("openssl self-signed {case}"),
            &connect(&setup, ca_file(&setup)).await,
        );

        let dir = TempDir::new(&format!("pm-cert-rcgen-self-{ca}"));
        let setup = by_rcgen::self_signed(dir.path(), "127.0.0.1", ca);
        assert_connects(
            &format!("rcgen self-signed {case}"),
            &connect(&setup, ca_file(&setup)).await,
        );
    }
}

#[tokio::test]
async fn a_leaf_signed_by_the_ca_of_the_ca_file_is_trusted() {
    let dir = TempDir::new("pm-cert-openssl-leaf");
    let setup = by_openssl::ca_and_leaf(dir.path(), "IP:127.0.0.1", 365);
    assert_connects(
        "openssl CA and leaf",
        &connect(&setup, ca_file(&setup)).await,
    );
    let dir = TempDir::new("pm-cert-rcgen-leaf");
    let setup = by_rcgen::ca_and_leaf(dir.path(), "127.0.0.1", false);
    assert_connects("rcgen CA and leaf", &connect(&setup, ca_file(&setup)).await);
}

#[tokio::test]
async fn an_expired_leaf_is_refused_in_plain_words_on_both_sides() {
    let dir = TempDir::new("pm-cert-openssl-expired");
    let setup = by_openssl::ca_and_leaf(dir.path(), "IP:127.0.0.1", -1);
    let outcome = connect(&setup, ca_file(&setup)).await;
    assert_refused(
        "openssl expired leaf",
        &setup,
        &outcome,
        &["subject \"CN=pm-server\"", "expired on", "renew"],
    );
    assert!(
        outcome.logs.contains("expired on") && outcome.logs.contains("refuse it; renew it"),
        "the server warned at start:\n{}",
        outcome.logs
    );

    let dir = TempDir::new("pm-cert-rcgen-expired");
    let setup = by_rcgen::ca_and_leaf(dir.path(), "127.0.0.1", true);
    let outcome = connect(&setup, ca_file(&setup)).await;
    assert_refused(
        "rcgen expired leaf",
        &setup,
        &outcome,
        &["expired on Fri, 01 Jan 2021", "renew"],
    );
}

#[tokio::test]
async fn a_leaf_for_another_address_is_refused_naming_both() {
    let dir = TempDir::new("pm-cert-openssl-san");
    let setup = by_openssl::ca_and_leaf(dir.path(), "IP:10.9.9.9", 365);
    let outcome = connect(&setup, ca_file(&setup)).await;
    assert_refused(
        "openssl SAN mismatch",
        &setup,
        &outcome,
        &[
            "not valid for 127.0.0.1",
            "IP:10.9.9.9",
            "subjectAltName=IP:127.0.0.1",
        ],
    );
    assert!(
        outcome
            .logs
            .contains("does not list its listen address 127.0.0.1"),
        "the server warned at start:\n{}",
        outcome.logs
    );
    // An exact copy in the CA file is still checked for its names.
    let dir = TempDir::new("pm-cert-rcgen-san");
    let setup = by_rcgen::self_signed(dir.path(), "server.example", true);
    let outcome = connect(&setup, ca_file(&setup)).await;
    assert_refused(
        "rcgen self-signed for another name",
        &setup,
        &outcome,
        &["not valid for 127.0.0.1", "DNS:server.example"],
    );
}

#[tokio::test]
async fn a_certificate_no_ca_of_the_file_issued_is_refused() {
    // The agent holds another CA than the one that signed the server's leaf.
    let dir = TempDir::new("pm-cert-unknown-issuer");
    let mut setup = by_openssl::ca_and_leaf(dir.path(), "IP:127.0.0.1", 365);
    let other = TempDir::new("pm-cert-unknown-issuer-other");
    setup.ca_file = by_rcgen::self_signed(other.path(), "127.0.0.1", true).ca_file;
    let outcome = connect(&setup, ca_file(&setup)).await;
    assert_refused(
        "unknown issuer",
        &setup,
        &outcome,
        &[
            "issued by \"CN=ProberMesh CA\"",
            "add the CA that issued it",
        ],
    );

    // A self-signed CA:TRUE certificate that is not itself in the file.
    let dir = TempDir::new("pm-cert-ca-as-leaf");
    let mut setup = by_openssl::self_signed(dir.path(), "IP:127.0.0.1", true);
    setup.ca_file = by_rcgen::self_signed(other.path(), "127.0.0.1", true).ca_file;
    let outcome = connect(&setup, ca_file(&setup)).await;
    assert_refused(
        "CA as server certificate",
        &setup,
        &outcome,
        &[
            "CA:TRUE",
            "put this certificate in -agent.tls.ca-file",
            "-agent.tls.server-fingerprint=",
        ],
    );
}

#[tokio::test]
async fn a_pin_accepts_any_of_these_and_a_wrong_pin_names_both_fingerprints() {
    let dir = TempDir::new("pm-cert-pin");
    let setup = by_openssl::ca_and_leaf(dir.path(), "IP:10.9.9.9", -1);
    let pin: Sha256Fingerprint = fingerprint_of(&setup.cert_file)
        .parse()
        .expect("fingerprint");
    // Expired and for another address: a pin checks neither.
    assert_connects(
        "pinned",
        &connect(&setup, ServerVerification::PinnedSha256(pin)).await,
    );
    let wrong = Sha256Fingerprint([0xAB; 32]);
    let outcome = connect(&setup, ServerVerification::PinnedSha256(wrong)).await;
    assert_refused(
        "wrong pin",
        &setup,
        &outcome,
        &[&format!("not the pinned {wrong}")],
    );
}
