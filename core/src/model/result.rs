//! What a probe saw. A failed probe is a result with a failure, never an `Err`: failing is data
//! (the `*_failed` gauges count it).

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use super::{AgentId, ProbeKind, Region, UnixMillis};
use crate::stats::{RttHistogram, RttSummary, loss_percent};

/// Why an ICMP probe produced no usable measurement.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum IcmpFailure {
    /// The host name did not resolve.
    Resolve,
    /// The agent may not send ICMP (no CAP_NET_RAW and no `ping_group_range`).
    Permission,
    /// The echo requests could not be sent (no route, socket error).
    Send,
}

impl IcmpFailure {
    /// A stable short name for logs and the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Resolve => "resolve",
            Self::Permission => "permission",
            Self::Send => "send",
        }
    }
}

/// One ICMP probe: `packet_count` echoes to one target.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct IcmpResult {
    /// Time spent resolving the target name (zero for IP literals).
    pub resolve: Duration,
    /// Set when the probe could not measure at all.
    pub failure: Option<IcmpFailure>,
    /// Echo requests sent.
    pub packets_sent: u32,
    /// Distinct echo replies received before the deadline (duplicates excluded).
    pub packets_received: u32,
    /// Summary of the received echoes; `None` when none came back.
    pub rtt: Option<RttSummary>,
    /// Every received echo's RTT, bucketed.
    pub histogram: RttHistogram,
}

impl IcmpResult {
    /// A probe that measured `rtts` out of `packets_sent` echoes.
    #[must_use]
    pub fn measured(resolve: Duration, packets_sent: u32, rtts: &[Duration]) -> Self {
        let mut histogram = RttHistogram::new();
        rtts.iter().for_each(|rtt| histogram.observe(*rtt));
        let received = u32::try_from(rtts.len())
            .unwrap_or(u32::MAX)
            .min(packets_sent);
        Self {
            resolve,
            failure: None,
            packets_sent,
            packets_received: received,
            rtt: RttSummary::from_rtts(rtts),
            histogram,
        }
    }

    /// A probe that could not measure.
    #[must_use]
    pub fn failed(resolve: Duration, failure: IcmpFailure) -> Self {
        Self {
            resolve,
            failure: Some(failure),
            packets_sent: 0,
            packets_received: 0,
            rtt: None,
            histogram: RttHistogram::new(),
        }
    }

    /// Loss in percent, `None` when nothing was sent.
    #[must_use]
    pub fn loss_percent(&self) -> Option<f64> {
        loss_percent(self.packets_sent, self.packets_received)
    }

    /// Failed: it could not measure, or no echo came back (100 % loss is a failure, decision 1).
    #[must_use]
    pub fn is_failed(&self) -> bool {
        self.failure.is_some() || self.rtt.is_none()
    }
}

/// The five HTTP phases, summed over redirect hops as blackbox_exporter does.
#[derive(Clone, Copy, Debug, Default, Eq, Hash, PartialEq)]
pub struct HttpPhases {
    /// DNS resolution.
    pub resolve: Duration,
    /// TCP connect.
    pub connect: Duration,
    /// TLS handshake (zero for plain HTTP).
    pub tls: Duration,
    /// Request written to first response byte.
    pub processing: Duration,
    /// First response byte to end of body.
    pub transfer: Duration,
}

impl HttpPhases {
    /// The phase names, in label order.
    pub const NAMES: [&'static str; 5] = ["resolve", "connect", "tls", "processing", "transfer"];

    /// The phases in [`Self::NAMES`] order.
    #[must_use]
    pub fn as_array(&self) -> [Duration; 5] {
        [
            self.resolve,
            self.connect,
            self.tls,
            self.processing,
            self.transfer,
        ]
    }

    /// All phases together.
    #[must_use]
    pub fn total(&self) -> Duration {
        self.as_array().iter().sum()
    }
}

/// The negotiated TLS version (the `version` label of the expiry gauge).
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub enum TlsVersion {
    /// `TLS 1.0`.
    Tls10,
    /// `TLS 1.1`.
    Tls11,
    /// `TLS 1.2`.
    Tls12,
    /// `TLS 1.3`.
    Tls13,
    /// `unknown`.
    Unknown,
}

impl TlsVersion {
    /// The label value, spelled as the Go system did.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tls10 => "TLS 1.0",
            Self::Tls11 => "TLS 1.1",
            Self::Tls12 => "TLS 1.2",
            Self::Tls13 => "TLS 1.3",
            Self::Unknown => "unknown",
        }
    }
}

/// TLS facts of a successful HTTPS probe.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct TlsInfo {
    /// Negotiated version.
    pub version: TlsVersion,
    /// Earliest `NotAfter` over the peer chain, in Unix seconds.
    pub earliest_expiry_unix_secs: i64,
}

/// Why an HTTP probe failed: a bounded set, so `failed_reason` cannot explode in cardinality.
/// The raw error goes to the agent's log, never to a label.
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub enum HttpFailure {
    /// The status code is not accepted (`invalid resp code: N`, the Go spelling).
    InvalidStatus(u16),
    /// DNS resolution failed or found no usable address.
    Resolve,
    /// The TCP connection was refused.
    ConnectRefused,
    /// The TCP connection timed out.
    ConnectTimeout,
    /// Any other connect error (unreachable network or host).
    Connect,
    /// The TLS handshake failed for a reason other than the certificate.
    TlsHandshake,
    /// The server certificate did not verify.
    CertificateInvalid,
    /// The probe deadline passed.
    Timeout,
    /// A `fail_if_body_*` check failed.
    BodyRegexp,
    /// A `fail_if_header_*` check failed.
    HeaderRegexp,
    /// The protocol version is not in `valid_http_versions`.
    HttpVersion,
    /// `fail_if_not_ssl` and the final response was not over TLS.
    SslRequired,
    /// `fail_if_ssl` and the final response was over TLS.
    SslForbidden,
    /// The body could not be decoded with `compression`.
    Compression,
    /// The body exceeded `body_size_limit`.
    BodyTooLarge,
    /// The connection broke while reading the response.
    BodyRead,
    /// More than 10 redirects.
    TooManyRedirects,
    /// A redirect `Location` was missing or unusable.
    BadRedirect,
    /// The request could not be built or sent (bad header, proxy refused).
    Request,
}

impl HttpFailure {
    /// The `failed_reason` label value.
    #[must_use]
    pub fn reason(&self) -> Cow<'static, str> {
        match self {
            Self::InvalidStatus(code) => Cow::Owned(format!("invalid resp code: {code}")),
            Self::Resolve => Cow::Borrowed("resolve"),
            Self::ConnectRefused => Cow::Borrowed("connect refused"),
            Self::ConnectTimeout => Cow::Borrowed("connect timeout"),
            Self::Connect => Cow::Borrowed("connect"),
            Self::TlsHandshake => Cow::Borrowed("tls handshake"),
            Self::CertificateInvalid => Cow::Borrowed("certificate invalid"),
            Self::Timeout => Cow::Borrowed("timeout"),
            Self::BodyRegexp => Cow::Borrowed("body regexp"),
            Self::HeaderRegexp => Cow::Borrowed("header regexp"),
            Self::HttpVersion => Cow::Borrowed("http version"),
            Self::SslRequired => Cow::Borrowed("ssl required"),
            Self::SslForbidden => Cow::Borrowed("ssl forbidden"),
            Self::Compression => Cow::Borrowed("compression"),
            Self::BodyTooLarge => Cow::Borrowed("body too large"),
            Self::BodyRead => Cow::Borrowed("body read"),
            Self::TooManyRedirects => Cow::Borrowed("too many redirects"),
            Self::BadRedirect => Cow::Borrowed("bad redirect"),
            Self::Request => Cow::Borrowed("request"),
        }
    }
}

impl fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason())
    }
}

/// One HTTP probe of one URL (all redirect hops).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct HttpResult {
    /// Phase durations, summed over hops; phases not reached are zero.
    pub phases: HttpPhases,
    /// Status code of the final response; `None` when no response came.
    pub status_code: Option<u16>,
    /// TLS facts of the final response, when it came over TLS.
    pub tls: Option<TlsInfo>,
    /// `None` on success.
    pub failure: Option<HttpFailure>,
}

impl HttpResult {
    /// Whether the probe failed.
    #[must_use]
    pub fn is_failed(&self) -> bool {
        self.failure.is_some()
    }
}

/// What one probe measured.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum ProbeOutcome {
    /// An ICMP probe.
    Icmp(IcmpResult),
    /// An HTTP probe.
    Http(HttpResult),
}

impl ProbeOutcome {
    /// The kind of probe.
    #[must_use]
    pub fn kind(&self) -> ProbeKind {
        match self {
            Self::Icmp(_) => ProbeKind::Icmp,
            Self::Http(_) => ProbeKind::Http,
        }
    }

    /// Whether the probe counts as failed.
    #[must_use]
    pub fn is_failed(&self) -> bool {
        match self {
            Self::Icmp(r) => r.is_failed(),
            Self::Http(r) => r.is_failed(),
        }
    }
}

/// One probe of one target by one agent in one round: the unit the server aggregates.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ProbeResult {
    /// The agent that probed (the server sets this from the authenticated connection).
    pub source: AgentId,
    /// The pool region the target belongs to.
    pub target_region: Region,
    /// The target as configured or discovered (the `target_addr` label for HTTP; the target
    /// host for ICMP).
    pub target: String,
    /// When the probe's round started: the server files the result in the window holding it.
    pub round_start: UnixMillis,
    /// What was measured.
    pub outcome: ProbeOutcome,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_loss_is_a_failure_not_a_zero_latency() {
        let r = IcmpResult::measured(Duration::ZERO, 64, &[]);
        assert!(r.is_failed());
        assert_eq!(r.loss_percent(), Some(100.0));
        assert_eq!(r.rtt, None);
    }

    #[test]
    fn partial_loss_is_a_measurement() {
        let rtts = vec![Duration::from_millis(1); 60];
        let r = IcmpResult::measured(Duration::from_micros(5), 64, &rtts);
        assert!(!r.is_failed());
        assert_eq!(r.packets_received, 60);
        assert_eq!(r.histogram.count(), 60);
        assert!((r.loss_percent().unwrap() - 6.25).abs() < 1e-12);
    }

    #[test]
    fn failure_reasons_are_the_decided_strings() {
        assert_eq!(
            HttpFailure::InvalidStatus(404).reason(),
            "invalid resp code: 404"
        );
        assert_eq!(HttpFailure::ConnectRefused.reason(), "connect refused");
        assert_eq!(
            HttpFailure::CertificateInvalid.to_string(),
            "certificate invalid"
        );
    }

    #[test]
    fn phases_total_and_order() {
        let p = HttpPhases {
            resolve: Duration::from_millis(1),
            connect: Duration::from_millis(2),
            tls: Duration::from_millis(3),
            processing: Duration::from_millis(4),
            transfer: Duration::from_millis(5),
        };
        assert_eq!(p.total(), Duration::from_millis(15));
        assert_eq!(p.as_array()[3], Duration::from_millis(4));
        assert_eq!(HttpPhases::NAMES[3], "processing");
    }
}
