//! What a certificate says, and why one is refused, in words an operator can act on.
//!
//! rustls and webpki name a certificate failure with an enum (`CaUsedAsEndEntity`,
//! `UnknownIssuer`, …) and nothing else. An operator needs to know *which* certificate (its
//! subject and SHA-256 fingerprint), *why* (expired on which date, which name was expected and
//! which the certificate lists) and *what to do* (issue a leaf, pin the fingerprint, add the
//! CA). [`CertificateFacts`] reads those facts from the DER bytes; [`CertificateRefusal`] is the
//! agent's refusal, whose text travels in the QUIC close frame, so the server logs it as well;
//! [`CertificateFacts::start_warnings`] tells the server at start what agents will refuse.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use rustls::pki_types::{ServerName, UnixTime};
use rustls::{CertificateError, OtherError};
use x509_parser::extensions::GeneralName;

use super::fingerprint::Sha256Fingerprint;

/// A certificate that expires within this many days draws a warning at server start.
const EXPIRY_WARNING_DAYS: i64 = 30;
/// Longest text taken from a certificate or a peer into a message, in characters.
const MAX_QUOTED_CHARS: usize = 200;
/// Most subjectAltNames listed in a message.
const MAX_LISTED_NAMES: usize = 16;
/// Longest close reason from a peer quoted in the server's log, in characters.
const MAX_PEER_REASON_CHARS: usize = 1_200;

/// `text` fit for a log line: control characters escaped (`\n`), cut to
/// [`MAX_QUOTED_CHARS`]. Certificates and close reasons come from peers, which could
/// otherwise forge log lines.
fn printable(text: &str) -> String {
    printable_within(text, MAX_QUOTED_CHARS)
}

fn printable_within(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    for c in text.chars() {
        let piece: Vec<char> = if c.is_control() {
            c.escape_default().collect()
        } else {
            vec![c]
        };
        if count + piece.len() > max_chars {
            out.push('…');
            break;
        }
        count += piece.len();
        out.extend(piece);
    }
    out
}

/// The facts of one certificate an operator needs to recognise and fix it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct CertificateFacts {
    /// The subject, as openssl prints it (`CN=pm`).
    pub subject: String,
    /// The issuer.
    pub issuer: String,
    /// The SHA-256 fingerprint of the DER bytes (what `-agent.tls.server-fingerprint` pins).
    pub fingerprint: Sha256Fingerprint,
    /// Start of validity, Unix seconds.
    pub not_before_unix_secs: i64,
    /// End of validity, Unix seconds.
    pub not_after_unix_secs: i64,
    /// The subjectAltName entries (`DNS:name`, `IP:address`), in certificate order.
    pub alt_names: Vec<String>,
    /// `basicConstraints CA:TRUE`.
    pub is_ca: bool,
}

impl CertificateFacts {
    /// Reads the facts of a DER certificate; `None` when it does not parse as X.509.
    #[must_use]
    pub fn of_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let alt_names = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .take(MAX_LISTED_NAMES)
                    .filter_map(|name| match name {
                        GeneralName::DNSName(dns) => Some(format!("DNS:{}", printable(dns))),
                        GeneralName::IPAddress(bytes) => {
                            ip_from_bytes(bytes).map(|ip| format!("IP:{ip}"))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            subject: printable(&cert.subject().to_string()),
            issuer: printable(&cert.issuer().to_string()),
            fingerprint: Sha256Fingerprint::of_der(der),
            not_before_unix_secs: cert.validity().not_before.timestamp(),
            not_after_unix_secs: cert.validity().not_after.timestamp(),
            alt_names,
            is_ca: cert.is_ca(),
        })
    }

    /// Whether `ip` is among the certificate's IP subjectAltNames.
    #[must_use]
    pub fn lists_ip(&self, ip: IpAddr) -> bool {
        self.alt_names.iter().any(|name| {
            name.strip_prefix("IP:")
                .and_then(|text| text.parse::<IpAddr>().ok())
                == Some(ip)
        })
    }

    /// `subject "CN=pm", SHA-256 AB:CD:…`: how every message names the certificate.
    #[must_use]
    pub fn named(&self) -> String {
        let subject = if self.subject.is_empty() {
            "(empty)"
        } else {
            &self.subject
        };
        format!("subject \"{subject}\", SHA-256 {}", self.fingerprint)
    }

    fn alt_names_text(&self) -> String {
        if self.alt_names.is_empty() {
            "no subjectAltName at all".to_owned()
        } else {
            format!("subjectAltName {}", self.alt_names.join(", "))
        }
    }

    /// What a server starting with this certificate should warn about, at `now_unix_secs`,
    /// listening on `listen_ip`: the reasons agents verifying it with a CA file will refuse it.
    /// Agents that pin the fingerprint accept it whatever these say.
    #[must_use]
    pub fn start_warnings(&self, listen_ip: IpAddr, now_unix_secs: i64) -> Vec<String> {
        let mut warnings = Vec::new();
        let name = self.named();
        if now_unix_secs > self.not_after_unix_secs {
            warnings.push(format!(
                "the server's certificate ({name}) expired on {}: agents that verify it with \
                 -agent.tls.ca-file refuse it; renew it (-server.tls.cert-file, \
                 -server.tls.key-file)",
                utc(self.not_after_unix_secs)
            ));
        } else if now_unix_secs < self.not_before_unix_secs {
            warnings.push(format!(
                "the server's certificate ({name}) is valid only from {}: agents that verify \
                 it with -agent.tls.ca-file refuse it until then; check this machine's clock",
                utc(self.not_before_unix_secs)
            ));
        } else if self.not_after_unix_secs - now_unix_secs < EXPIRY_WARNING_DAYS * 86_400 {
            warnings.push(format!(
                "the server's certificate ({name}) expires on {}: renew it before agents that \
                 verify it with -agent.tls.ca-file start refusing it",
                utc(self.not_after_unix_secs)
            ));
        }
        if self.alt_names.is_empty() {
            warnings.push(format!(
                "the server's certificate ({name}) has no subjectAltName: agents that verify it \
                 with -agent.tls.ca-file refuse it (the subject's CN is not used); issue it with \
                 subjectAltName=IP:<server address> or DNS:<server name>, or let agents pin \
                 its fingerprint"
            ));
        } else if !listen_ip.is_unspecified() && !self.lists_ip(listen_ip) {
            warnings.push(format!(
                "the server's certificate ({name}) does not list its listen address {listen_ip} \
                 ({}): agents that connect to {listen_ip} (rather than to a name it lists) and \
                 verify it with -agent.tls.ca-file refuse it; add subjectAltName=IP:{listen_ip}, \
                 or let agents pin its fingerprint",
                self.alt_names_text()
            ));
        }
        warnings
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// A Unix time as `Tue, 1 Jul 2003 10:52:37 +0000` (UTC).
fn utc(unix_secs: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(unix_secs)
        .ok()
        .and_then(|t| t.to_rfc2822().ok())
        .unwrap_or_else(|| format!("{unix_secs} (Unix time)"))
}

/// Why an agent refused the server's certificate.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum RefusalReason {
    /// A CA certificate (`CA:TRUE`) presented as the server's own, and not itself in the CA file.
    CaAsServerCertificate,
    /// Its validity ended before now.
    Expired,
    /// Its validity starts after now.
    NotYetValid,
    /// The name or address the agent connects to is not among its subjectAltNames.
    NameMismatch {
        /// What the agent connects to.
        expected: String,
    },
    /// No certificate of the CA file issued it.
    UnknownIssuer,
    /// Its fingerprint is not the pinned one.
    FingerprintMismatch {
        /// The pinned fingerprint.
        pinned: Sha256Fingerprint,
    },
    /// Anything else webpki found (a bad signature, an unsupported algorithm, …).
    Other(String),
}

/// An agent's refusal of the server's certificate: which certificate, why, and what to do.
/// Its text is the TLS error the agent logs and the reason of the QUIC close frame the server
/// receives, so both sides say the same thing.
#[derive(Clone, Eq, PartialEq)]
pub struct CertificateRefusal {
    /// The refused certificate; `None` when it does not even parse.
    pub facts: Option<CertificateFacts>,
    /// Its fingerprint (also when it does not parse).
    pub fingerprint: Sha256Fingerprint,
    /// Why.
    pub reason: RefusalReason,
    /// Whether the agent verified with a CA file (its path is not quoted: the text goes to
    /// the server, which may be an impostor).
    pub with_ca_file: bool,
    /// When the agent looked, Unix seconds.
    pub now_unix_secs: i64,
}

impl CertificateRefusal {
    /// A refusal of the certificate `der` at `now`.
    #[must_use]
    pub fn new(der: &[u8], reason: RefusalReason, with_ca_file: bool, now: UnixTime) -> Self {
        Self {
            facts: CertificateFacts::of_der(der),
            fingerprint: Sha256Fingerprint::of_der(der),
            reason,
            with_ca_file,
            now_unix_secs: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
        }
    }

    /// The rustls error carrying this refusal (reported as TLS alert `certificate_unknown`).
    #[must_use]
    pub fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }

    fn pin_hint(&self) -> String {
        format!(
            "or pin exactly this certificate with -agent.tls.server-fingerprint={}",
            self.fingerprint
        )
    }

    fn ca_file_text(&self) -> &'static str {
        if self.with_ca_file {
            "the agent's CA file (-agent.tls.ca-file)"
        } else {
            "the CA file"
        }
    }
}

impl fmt::Display for CertificateRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let named = self.facts.as_ref().map_or_else(
            || format!("unparsable, SHA-256 {}", self.fingerprint),
            CertificateFacts::named,
        );
        write!(f, "the server's certificate ({named}) is refused: ")?;
        let ca_file = self.ca_file_text();
        let pin = self.pin_hint();
        match (&self.reason, &self.facts) {
            (RefusalReason::CaAsServerCertificate, _) => write!(
                f,
                "it is a CA certificate (basicConstraints CA:TRUE) presented as the server's own, \
                 and it is not itself in {ca_file}. Fix: put this certificate in \
                 -agent.tls.ca-file (an exact copy is trusted as it is), issue the server a leaf \
                 certificate (CA:FALSE) signed by a CA in that file, {pin}"
            ),
            (RefusalReason::Expired, Some(facts)) => write!(
                f,
                "it expired on {} (the agent's clock reads {}). Fix: renew the server's \
                 certificate (-server.tls.cert-file and -server.tls.key-file), or check the \
                 agent's clock; {pin}",
                utc(facts.not_after_unix_secs),
                utc(self.now_unix_secs)
            ),
            (RefusalReason::NotYetValid, Some(facts)) => write!(
                f,
                "it is valid only from {} (the agent's clock reads {}). Fix: check the clocks \
                 of the agent and of the machine that issued it (NTP), or reissue it; {pin}",
                utc(facts.not_before_unix_secs),
                utc(self.now_unix_secs)
            ),
            (RefusalReason::NameMismatch { expected }, facts) => {
                let listed = facts.as_ref().map_or_else(
                    || "no readable names".to_owned(),
                    CertificateFacts::alt_names_text,
                );
                let kind = if expected.parse::<IpAddr>().is_ok() {
                    "IP"
                } else {
                    "DNS"
                };
                write!(
                    f,
                    "it is not valid for {expected}, the address this agent connects to \
                     (-agent.rpc.report.addr); it lists {listed}. Fix: reissue it with \
                     subjectAltName={kind}:{expected}, connect to a name it lists, {pin}"
                )
            }
            (RefusalReason::UnknownIssuer, facts) => {
                let issuer = facts.as_ref().map_or_else(
                    || "an unreadable issuer".to_owned(),
                    |f| format!("\"{}\"", f.issuer),
                );
                write!(
                    f,
                    "it is issued by {issuer}, and no certificate in {ca_file} issued it (nor is \
                     it itself in that file). Fix: add the CA that issued it to \
                     -agent.tls.ca-file (with any intermediate in the server's \
                     -server.tls.cert-file after the leaf), {pin}"
                )
            }
            (RefusalReason::FingerprintMismatch { pinned }, _) => write!(
                f,
                "its fingerprint is not the pinned {pinned}. Fix: pin the fingerprint the \
                 server prints at start (or `openssl x509 -noout -fingerprint -sha256 -in \
                 <cert>`) with -agent.tls.server-fingerprint; if the server's certificate \
                 changed on purpose, pin the new one"
            ),
            (RefusalReason::Expired | RefusalReason::NotYetValid, None) => write!(
                f,
                "it is outside its validity period. Fix: renew it, or check the clocks; {pin}"
            ),
            (RefusalReason::Other(detail), _) => write!(
                f,
                "{detail}. Fix: issue the server a standard certificate (ECDSA P-256 or RSA, \
                 SHA-256), {pin}"
            ),
        }
    }
}

/// quinn and rustls report TLS errors with `Debug`: make that the readable sentence too.
impl fmt::Debug for CertificateRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for CertificateRefusal {}

/// The reason for a rustls certificate error of webpki's chain verification.
#[must_use]
pub fn reason_of(error: &rustls::Error, server_name: &ServerName<'_>) -> RefusalReason {
    let rustls::Error::InvalidCertificate(error) = error else {
        return RefusalReason::Other(error.to_string());
    };
    match error {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            RefusalReason::Expired
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            RefusalReason::NotYetValid
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            RefusalReason::NameMismatch {
                expected: server_name_text(server_name),
            }
        }
        CertificateError::UnknownIssuer => RefusalReason::UnknownIssuer,
        other if format!("{other:?}").contains("CaUsedAsEndEntity") => {
            RefusalReason::CaAsServerCertificate
        }
        other => RefusalReason::Other(other.to_string()),
    }
}

/// The name or address as the operator wrote it.
#[must_use]
pub fn server_name_text(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(dns) => dns.as_ref().to_owned(),
        ServerName::IpAddress(ip) => IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// The sentence of a [`CertificateRefusal`] inside a rustls or quinn error text (which wraps it
/// as `invalid peer certificate: Other(OtherError(<sentence>))`); other texts unchanged.
#[must_use]
pub fn readable_tls_text(text: &str) -> String {
    match text.find("the server's certificate (") {
        Some(start) => text[start..].trim_end_matches(')').to_owned(),
        None => text.to_owned(),
    }
}

/// The words for a TLS alert an agent sent the server, for the server's log: which side must
/// change what. `reason` is the close frame's reason, which a current agent fills with its
/// [`CertificateRefusal`]; older or foreign clients send only the alert.
#[must_use]
pub fn describe_peer_alert(alert: u8, reason: &str, server_cert: &str) -> String {
    let reason = printable_within(reason, MAX_PEER_REASON_CHARS);
    if !reason.is_empty() && reason.contains("the server's certificate") {
        return format!("an agent refused this server's certificate; the agent says: {reason}");
    }
    let why = match alert {
        42 => {
            "bad_certificate: the agent found the certificate malformed or not valid for the \
               address it connects to (its subjectAltName must list that IP or name)"
        }
        45 => {
            "certificate_expired: the certificate is outside its validity period, or a clock \
               is wrong"
        }
        46 => "certificate_unknown: the agent refused the certificate; its log says why",
        48 => {
            "unknown_ca: the agent does not trust the certificate's issuer; give agents the \
               CA that issued it (-agent.tls.ca-file), or let them pin its fingerprint"
        }
        120 => {
            "no_application_protocol: the peer does not speak the probermesh link protocol \
                (ALPN probermesh/1)"
        }
        _ => "the handshake failed",
    };
    let detail = if reason.is_empty() {
        String::new()
    } else {
        format!(" (the peer says: {reason})")
    };
    format!(
        "an agent refused the TLS handshake with TLS alert {alert}, {why}; this server's certificate: {server_cert}{detail}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(params: rcgen::CertificateParams) -> (Vec<u8>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.der().to_vec(), key)
    }

    #[test]
    fn facts_name_the_subject_the_names_and_the_constraints() {
        let mut params =
            rcgen::CertificateParams::new(vec!["server.lab".into(), "198.18.0.1".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pm");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let (der, _) = cert(params);
        let facts = CertificateFacts::of_der(&der).unwrap();
        assert_eq!(facts.subject, "CN=pm");
        assert_eq!(facts.alt_names, ["DNS:server.lab", "IP:198.18.0.1"]);
        assert!(facts.is_ca);
        assert!(facts.lists_ip("198.18.0.1".parse().unwrap()));
        assert!(!facts.lists_ip("198.18.0.2".parse().unwrap()));
        assert_eq!(facts.fingerprint, Sha256Fingerprint::of_der(&der));
        assert!(CertificateFacts::of_der(b"not a certificate").is_none());
    }

    #[test]
    fn the_server_warns_about_what_agents_will_refuse() {
        let now = 1_800_000_000;
        let mut params = rcgen::CertificateParams::new(vec!["198.18.0.1".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let (der, _) = cert(params);
        let facts = CertificateFacts::of_der(&der).unwrap();
        let warnings = facts.start_warnings("198.18.0.1".parse().unwrap(), now);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("expired on Fri, 01 Jan 2021"),
            "{warnings:?}"
        );

        let (der, _) = cert(rcgen::CertificateParams::new(vec!["198.18.0.1".into()]).unwrap());
        let facts = CertificateFacts::of_der(&der).unwrap();
        let fresh_now = facts.not_before_unix_secs + 60;
        assert!(
            facts
                .start_warnings("198.18.0.1".parse().unwrap(), fresh_now)
                .is_empty()
        );
        assert!(
            facts
                .start_warnings("0.0.0.0".parse().unwrap(), fresh_now)
                .is_empty()
        );
        let other = facts.start_warnings("198.18.0.9".parse().unwrap(), fresh_now);
        assert_eq!(other.len(), 1);
        assert!(
            other[0].contains("does not list its listen address 198.18.0.9")
                && other[0].contains("subjectAltName=IP:198.18.0.9"),
            "{other:?}"
        );

        let (der, _) = cert(rcgen::CertificateParams::new(Vec::<String>::new()).unwrap());
        let facts = CertificateFacts::of_der(&der).unwrap();
        let none =
            facts.start_warnings("0.0.0.0".parse().unwrap(), facts.not_before_unix_secs + 60);
        assert!(
            none.iter().any(|w| w.contains("no subjectAltName")),
            "{none:?}"
        );
    }

    #[test]
    fn every_refusal_names_the_certificate_the_cause_and_a_fix() {
        let mut params = rcgen::CertificateParams::new(vec!["198.18.0.1".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pm");
        let (der, _) = cert(params);
        let fingerprint = Sha256Fingerprint::of_der(&der).to_string();
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_800_000_000));
        for (reason, expected) in [
            (RefusalReason::CaAsServerCertificate, "CA:TRUE"),
            (RefusalReason::Expired, "expired on"),
            (RefusalReason::NotYetValid, "valid only from"),
            (
                RefusalReason::NameMismatch {
                    expected: "10.0.0.1".into(),
                },
                "not valid for 10.0.0.1, the address this agent connects to (-agent.rpc.report.addr); it lists subjectAltName IP:198.18.0.1. Fix: reissue it with subjectAltName=IP:10.0.0.1",
            ),
            (
                RefusalReason::UnknownIssuer,
                "issued by \"CN=pm\", and no certificate in the agent's CA file (-agent.tls.ca-file) issued it",
            ),
            (
                RefusalReason::FingerprintMismatch {
                    pinned: Sha256Fingerprint([7; 32]),
                },
                "its fingerprint is not the pinned 07:07",
            ),
            (
                RefusalReason::Other("bad signature".into()),
                "bad signature",
            ),
        ] {
            let refusal = CertificateRefusal::new(&der, reason.clone(), true, now);
            let text = refusal.to_string();
            assert!(text.contains("subject \"CN=pm\""), "{text}");
            assert!(text.contains(&fingerprint), "{text}");
            assert!(text.contains(expected), "{reason:?}: {text}");
            assert!(text.contains("Fix:"), "{text}");
            // quinn reports the rustls error with Debug: it must read the same.
            let rustls_text = format!("{:?}", refusal.clone().into_rustls());
            assert!(rustls_text.contains(expected), "{rustls_text}");
        }
    }

    #[test]
    fn alerts_from_older_agents_are_explained_too() {
        let text = describe_peer_alert(48, "", "subject \"CN=pm\"");
        assert!(
            text.contains("unknown_ca") && text.contains("-agent.tls.ca-file"),
            "{text}"
        );
        let text = describe_peer_alert(
            46,
            "invalid peer certificate: the server's certificate (x) is refused: it expired",
            "s",
        );
        assert!(
            text.starts_with(
                "an agent refused this server's certificate; the agent says: invalid peer"
            ),
            "{text}"
        );
        // A peer cannot forge log lines or flood the log.
        let long = format!("the server's certificate\nFAKE LINE{}", "x".repeat(5_000));
        let forged = describe_peer_alert(46, &long, "s");
        assert!(
            !forged.contains('\n') && forged.contains("\\nFAKE LINE"),
            "{forged}"
        );
        assert!(forged.chars().count() < 1_300, "{}", forged.len());
    }

    #[test]
    fn certificate_texts_from_a_peer_are_escaped_and_cut() {
        let mut params = rcgen::CertificateParams::new(vec!["evil.example".into()]).unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("x\nFAKE{}", "y".repeat(500)),
        );
        let (der, _) = cert(params);
        let facts = CertificateFacts::of_der(&der).unwrap();
        assert!(!facts.subject.contains('\n'), "{}", facts.subject);
        assert!(facts.subject.chars().count() <= MAX_QUOTED_CHARS + 1);
    }
}
