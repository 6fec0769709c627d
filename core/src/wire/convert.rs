//! Conversions between the v1 DTOs and the domain types.
//! Outgoing conversions (`From<&Domain>`) cannot fail. Incoming ones (`into_domain`) treat the
//! DTO as untrusted network input: every value the domain constrains is parsed through the
//! domain's own constructor, and every probe setting goes through the same validation the
//! probe file runs (`model::setting`), so a pool the server built from an accepted file is
//! accepted here. Every error names the field that is wrong.

use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use super::v1::{
    BasicAuthV1, CompressionV1, HeaderMatchV1, HeaderV1, HttpClientConfigV1, HttpFailureV1,
    HttpModuleV1, HttpPhasesV1, HttpVersionV1, IcmpFailureV1, IcmpModuleV1, IpProtocolV1,
    OutcomeV1, ProbeConfigV1, ProbeKindV1, ProbeResultV1, RttSummaryV1, SecretSourceV1,
    TlsConfigV1, TlsInfoV1, TlsMinVersionV1, TlsVersionV1, WireSecret,
};
use super::{
    HISTOGRAM_LEN, MAX_CONFIGS_PER_POOL, MAX_RESULTS_PER_BATCH, MAX_TARGETS_PER_CONFIG, WireError,
    check_len,
};
use crate::model::http_module::{
    BasicAuth, Compression, FileRef, HeaderMatch, HttpClientConfig, HttpVersion, IpProtocol,
    Secret, SecretSource, TlsConfig, TlsMinVersion,
};
use crate::model::setting::{self, SettingError};
use crate::model::time::duration_nanos;
use crate::model::{
    AgentId, HttpFailure, HttpModule, HttpPhases, HttpResult, IcmpFailure, IcmpModule, IcmpResult,
    ProbeConfig, ProbeKind, ProbeModule, ProbeOutcome, ProbeResult, Region, Target, TlsInfo,
    TlsVersion, UnixMillis,
};
use crate::stats::{RttHistogram, RttSummary};

/// The status codes a received response can carry (three digits; a module's accepted codes
/// are the narrower `setting::STATUS_CODES`).
const RESPONSE_STATUS_CODES: std::ops::RangeInclusive<u16> = 100..=999;

/// Converts a whole `ResultBatch` payload from agent `source`.
///
/// # Errors
/// [`WireError::Invalid`] for more than [`MAX_RESULTS_PER_BATCH`] results or for the first
/// invalid result, with its index in the field path (`results[3].outcome.rtt`).
pub fn results_into_domain(
    results: Vec<ProbeResultV1>,
    source: &AgentId,
) -> Result<Vec<ProbeResult>, WireError> {
    check_len("results", results.len(), MAX_RESULTS_PER_BATCH)?;
    // Allocated once: collecting `Result`s would grow the vector by doubling, moving every
    // result (a few hundred bytes each) several times per batch.
    let mut domain = Vec::with_capacity(results.len());
    for (result_idx, result) in results.into_iter().enumerate() {
        domain.push(
            result
                .into_domain(source.clone())
                .map_err(|e| e.within(&format!("results[{result_idx}]")))?,
        );
    }
    Ok(domain)
}

/// Converts a whole `TargetPool` payload.
///
/// # Errors
/// [`WireError::Invalid`] for more than [`MAX_CONFIGS_PER_POOL`] blocks or for the first invalid
/// block, with its index in the field path (`configs[2].targets[0]`).
pub fn pool_into_domain(configs: Vec<ProbeConfigV1>) -> Result<Vec<ProbeConfig>, WireError> {
    check_len("configs", configs.len(), MAX_CONFIGS_PER_POOL)?;
    configs
        .into_iter()
        .enumerate()
        .map(|(config_idx, config)| {
            config
                .into_domain()
                .map_err(|e| e.within(&format!("configs[{config_idx}]")))
        })
        .collect()
}

// === impl ProbeResultV1 ===

impl ProbeResultV1 {
    /// The domain result, probed by `source` (the agent of the authenticated connection).
    ///
    /// # Errors
    /// [`WireError::Invalid`] naming the field: a bad region or target, more packets received
    /// than sent, a histogram that is not [`HISTOGRAM_LEN`] counts adding up to the packets
    /// received, an RTT summary present without replies (or missing with them, or with min above
    /// max), a status code outside 100..=999.
    pub fn into_domain(self, source: AgentId) -> Result<ProbeResult, WireError> {
        let target_region = Region::new(&self.target_region)
            .map_err(|e| WireError::invalid("target_region", e.to_string()))?;
        let outcome = self
            .outcome
            .into_domain()
            .map_err(|e| e.within("outcome"))?;
        Target::parse(outcome.kind(), &self.target)
            .map_err(|e| WireError::invalid("target", e.to_string()))?;
        Ok(ProbeResult {
            source,
            target_region,
            target: self.target,
            round_start: UnixMillis(self.round_start_ms),
            outcome,
        })
    }
}

impl From<&ProbeResult> for ProbeResultV1 {
    fn from(result: &ProbeResult) -> Self {
        Self {
            target_region: result.target_region.as_str().to_owned(),
            target: result.target.clone(),
            round_start_ms: result.round_start.as_millis(),
            outcome: OutcomeV1::from(&result.outcome),
        }
    }
}

// === impl OutcomeV1 ===

impl OutcomeV1 {
    fn into_domain(self) -> Result<ProbeOutcome, WireError> {
        match self {
            Self::Icmp {
                resolve_ns,
                failure,
                packets_sent,
                packets_received,
                rtt,
                histogram_counts,
                histogram_sum_ns,
            } => icmp_outcome(IcmpFields {
                resolve_ns,
                failure,
                packets_sent,
                packets_received,
                rtt,
                histogram_counts: &histogram_counts,
                histogram_len: histogram_counts.len(),
                histogram_sum_ns,
            }),
            Self::Http {
                phases,
                status_code,
                tls,
                failure,
            } => http_outcome(phases, status_code, tls, failure),
        }
    }
}

/// The fields of an ICMP outcome as decoded, owned or borrowed (`wire::borrowed`).
pub(super) struct IcmpFields<'a> {
    pub(super) resolve_ns: u64,
    pub(super) failure: Option<IcmpFailureV1>,
    pub(super) packets_sent: u32,
    pub(super) packets_received: u32,
    pub(super) rtt: Option<RttSummaryV1>,
    /// The counts kept (all of them when `histogram_len` is [`HISTOGRAM_LEN`]).
    pub(super) histogram_counts: &'a [u64],
    /// How many counts the message held.
    pub(super) histogram_len: usize,
    pub(super) histogram_sum_ns: u128,
}

/// Validates and converts an ICMP outcome: the one conversion of both decoders.
pub(super) fn icmp_outcome(fields: IcmpFields<'_>) -> Result<ProbeOutcome, WireError> {
    let IcmpFields {
        resolve_ns,
        failure,
        packets_sent,
        packets_received,
        rtt,
        histogram_counts,
        histogram_len,
        histogram_sum_ns,
    } = fields;
    if packets_received > packets_sent {
        return Err(WireError::invalid(
            "packets_received",
            format!("{packets_received} is more than the {packets_sent} packets sent"),
        ));
    }
    let counts: [u64; HISTOGRAM_LEN] = histogram_counts
        .try_into()
        .ok()
        .filter(|_| histogram_len == HISTOGRAM_LEN)
        .ok_or_else(|| {
            WireError::invalid(
                "histogram_counts",
                format!("holds {histogram_len} buckets; exactly {HISTOGRAM_LEN} are expected"),
            )
        })?;
    let n_observed: u128 = counts.iter().map(|c| u128::from(*c)).sum();
    if n_observed != u128::from(packets_received) {
        return Err(WireError::invalid(
            "histogram_counts",
            format!(
                "buckets add up to {n_observed}, not to the {packets_received} packets received"
            ),
        ));
    }
    let rtt = match (rtt, packets_received) {
        (None, 0) => None,
        (Some(rtt), received) if received > 0 => {
            if rtt.min_ns > rtt.max_ns {
                return Err(WireError::invalid(
                    "rtt",
                    format!("min_ns {} is above max_ns {}", rtt.min_ns, rtt.max_ns),
                ));
            }
            Some(rtt.into())
        }
        (Some(_), _) => {
            return Err(WireError::invalid(
                "rtt",
                "present although no packet was received",
            ));
        }
        (None, _) => {
            return Err(WireError::invalid(
                "rtt",
                "missing although packets were received",
            ));
        }
    };
    Ok(ProbeOutcome::Icmp(IcmpResult {
        resolve: Duration::from_nanos(resolve_ns),
        failure: failure.map(IcmpFailure::from),
        packets_sent,
        packets_received,
        rtt,
        histogram: RttHistogram::from_parts(counts, histogram_sum_ns),
    }))
}

/// Validates and converts an HTTP outcome: the one conversion of both decoders.
pub(super) fn http_outcome(
    phases: HttpPhasesV1,
    status_code: Option<u16>,
    tls: Option<TlsInfoV1>,
    failure: Option<HttpFailureV1>,
) -> Result<ProbeOutcome, WireError> {
    if let Some(code) = status_code {
        check_status_code("status_code", code)?;
    }
    if let Some(HttpFailureV1::InvalidStatus(code)) = failure {
        check_status_code("failure.invalid_status", code)?;
    }
    Ok(ProbeOutcome::Http(HttpResult {
        phases: phases.into(),
        status_code,
        tls: tls.map(TlsInfo::from),
        failure: failure.map(HttpFailure::from),
    }))
}

impl From<&ProbeOutcome> for OutcomeV1 {
    fn from(outcome: &ProbeOutcome) -> Self {
        match outcome {
            ProbeOutcome::Icmp(icmp) => Self::Icmp {
                resolve_ns: duration_nanos(icmp.resolve),
                failure: icmp.failure.map(IcmpFailureV1::from),
                packets_sent: icmp.packets_sent,
                packets_received: icmp.packets_received,
                rtt: icmp.rtt.map(RttSummaryV1::from),
                histogram_counts: icmp.histogram.counts().to_vec(),
                histogram_sum_ns: icmp.histogram.sum_nanos(),
            },
            ProbeOutcome::Http(http) => Self::Http {
                phases: http.phases.into(),
                status_code: http.status_code,
                tls: http.tls.map(TlsInfoV1::from),
                failure: http.failure.map(HttpFailureV1::from),
            },
        }
    }
}

fn check_status_code(field: &str, code: u16) -> Result<(), WireError> {
    if RESPONSE_STATUS_CODES.contains(&code) {
        Ok(())
    } else {
        Err(WireError::invalid(
            field,
            format!("{code} is not a status code from 100 to 999"),
        ))
    }
}

// === Small result types ===

impl From<IcmpFailure> for IcmpFailureV1 {
    fn from(failure: IcmpFailure) -> Self {
        match failure {
            IcmpFailure::Resolve => Self::Resolve,
            IcmpFailure::Permission => Self::Permission,
            IcmpFailure::Send => Self::Send,
        }
    }
}

impl From<IcmpFailureV1> for IcmpFailure {
    fn from(failure: IcmpFailureV1) -> Self {
        match failure {
            IcmpFailureV1::Resolve => Self::Resolve,
            IcmpFailureV1::Permission => Self::Permission,
            IcmpFailureV1::Send => Self::Send,
        }
    }
}

impl From<RttSummary> for RttSummaryV1 {
    fn from(rtt: RttSummary) -> Self {
        Self {
            mean_ns: duration_nanos(rtt.mean),
            min_ns: duration_nanos(rtt.min),
            max_ns: duration_nanos(rtt.max),
            stddev_ns: duration_nanos(rtt.stddev),
        }
    }
}

impl From<RttSummaryV1> for RttSummary {
    fn from(rtt: RttSummaryV1) -> Self {
        Self {
            mean: Duration::from_nanos(rtt.mean_ns),
            min: Duration::from_nanos(rtt.min_ns),
            max: Duration::from_nanos(rtt.max_ns),
            stddev: Duration::from_nanos(rtt.stddev_ns),
        }
    }
}

impl From<HttpPhases> for HttpPhasesV1 {
    fn from(phases: HttpPhases) -> Self {
        Self {
            resolve_ns: duration_nanos(phases.resolve),
            connect_ns: duration_nanos(phases.connect),
            tls_ns: duration_nanos(phases.tls),
            processing_ns: duration_nanos(phases.processing),
            transfer_ns: duration_nanos(phases.transfer),
        }
    }
}

impl From<HttpPhasesV1> for HttpPhases {
    fn from(phases: HttpPhasesV1) -> Self {
        Self {
            resolve: Duration::from_nanos(phases.resolve_ns),
            connect: Duration::from_nanos(phases.connect_ns),
            tls: Duration::from_nanos(phases.tls_ns),
            processing: Duration::from_nanos(phases.processing_ns),
            transfer: Duration::from_nanos(phases.transfer_ns),
        }
    }
}

impl From<TlsInfo> for TlsInfoV1 {
    fn from(tls: TlsInfo) -> Self {
        Self {
            version: tls.version.into(),
            earliest_expiry_unix_secs: tls.earliest_expiry_unix_secs,
        }
    }
}

impl From<TlsInfoV1> for TlsInfo {
    fn from(tls: TlsInfoV1) -> Self {
        Self {
            version: tls.version.into(),
            earliest_expiry_unix_secs: tls.earliest_expiry_unix_secs,
        }
    }
}

impl From<TlsVersion> for TlsVersionV1 {
    fn from(version: TlsVersion) -> Self {
        match version {
            TlsVersion::Tls10 => Self::Tls10,
            TlsVersion::Tls11 => Self::Tls11,
            TlsVersion::Tls12 => Self::Tls12,
            TlsVersion::Tls13 => Self::Tls13,
            TlsVersion::Unknown => Self::Unknown,
        }
    }
}

impl From<TlsVersionV1> for TlsVersion {
    fn from(version: TlsVersionV1) -> Self {
        match version {
            TlsVersionV1::Tls10 => Self::Tls10,
            TlsVersionV1::Tls11 => Self::Tls11,
            TlsVersionV1::Tls12 => Self::Tls12,
            TlsVersionV1::Tls13 => Self::Tls13,
            TlsVersionV1::Unknown => Self::Unknown,
        }
    }
}

impl From<HttpFailure> for HttpFailureV1 {
    fn from(failure: HttpFailure) -> Self {
        match failure {
            HttpFailure::InvalidStatus(code) => Self::InvalidStatus(code),
            HttpFailure::Resolve => Self::Resolve,
            HttpFailure::ConnectRefused => Self::ConnectRefused,
            HttpFailure::ConnectTimeout => Self::ConnectTimeout,
            HttpFailure::Connect => Self::Connect,
            HttpFailure::TlsHandshake => Self::TlsHandshake,
            HttpFailure::CertificateInvalid => Self::CertificateInvalid,
            HttpFailure::Timeout => Self::Timeout,
            HttpFailure::BodyRegexp => Self::BodyRegexp,
            HttpFailure::HeaderRegexp => Self::HeaderRegexp,
            HttpFailure::HttpVersion => Self::HttpVersion,
            HttpFailure::SslRequired => Self::SslRequired,
            HttpFailure::SslForbidden => Self::SslForbidden,
            HttpFailure::Compression => Self::Compression,
            HttpFailure::BodyTooLarge => Self::BodyTooLarge,
            HttpFailure::BodyRead => Self::BodyRead,
            HttpFailure::TooManyRedirects => Self::TooManyRedirects,
            HttpFailure::BadRedirect => Self::BadRedirect,
            HttpFailure::Request => Self::Request,
        }
    }
}

impl From<HttpFailureV1> for HttpFailure {
    fn from(failure: HttpFailureV1) -> Self {
        match failure {
            HttpFailureV1::InvalidStatus(code) => Self::InvalidStatus(code),
            HttpFailureV1::Resolve => Self::Resolve,
            HttpFailureV1::ConnectRefused => Self::ConnectRefused,
            HttpFailureV1::ConnectTimeout => Self::ConnectTimeout,
            HttpFailureV1::Connect => Self::Connect,
            HttpFailureV1::TlsHandshake => Self::TlsHandshake,
            HttpFailureV1::CertificateInvalid => Self::CertificateInvalid,
            HttpFailureV1::Timeout => Self::Timeout,
            HttpFailureV1::BodyRegexp => Self::BodyRegexp,
            HttpFailureV1::HeaderRegexp => Self::HeaderRegexp,
            HttpFailureV1::HttpVersion => Self::HttpVersion,
            HttpFailureV1::SslRequired => Self::SslRequired,
            HttpFailureV1::SslForbidden => Self::SslForbidden,
            HttpFailureV1::Compression => Self::Compression,
            HttpFailureV1::BodyTooLarge => Self::BodyTooLarge,
            HttpFailureV1::BodyRead => Self::BodyRead,
            HttpFailureV1::TooManyRedirects => Self::TooManyRedirects,
            HttpFailureV1::BadRedirect => Self::BadRedirect,
            HttpFailureV1::Request => Self::Request,
        }
    }
}

// === impl ProbeConfigV1 ===

impl ProbeConfigV1 {
    /// The domain block.
    ///
    /// # Errors
    /// [`WireError::Invalid`] naming the field: a bad region, too many targets, a target that
    /// does not parse as the block's kind or repeats an earlier one, a module missing for the
    /// kind or present for the other kind, or any setting the probe file would refuse too
    /// ([`ProbeConfig::validate`]: lengths, status codes, regexes that do not compile within
    /// [`setting::MAX_REGEX_SIZE_BYTES`], …).
    pub fn into_domain(self) -> Result<ProbeConfig, WireError> {
        let region =
            Region::new(&self.region).map_err(|e| WireError::invalid("region", e.to_string()))?;
        check_len("targets", self.targets.len(), MAX_TARGETS_PER_CONFIG)?;
        let module = match (self.kind, self.icmp, self.http) {
            (ProbeKindV1::Icmp, Some(icmp), None) => {
                ProbeModule::Icmp(icmp.into_domain().map_err(|e| e.within("icmp"))?)
            }
            (ProbeKindV1::Http, None, Some(http)) => {
                ProbeModule::Http(Arc::new(http.into_domain().map_err(|e| e.within("http"))?))
            }
            (ProbeKindV1::Icmp, _, Some(_)) => {
                return Err(WireError::invalid("http", "present in an ICMP config"));
            }
            (ProbeKindV1::Http, Some(_), _) => {
                return Err(WireError::invalid("icmp", "present in an HTTP config"));
            }
            (ProbeKindV1::Icmp, None, None) => {
                return Err(WireError::invalid("icmp", "missing in an ICMP config"));
            }
            (ProbeKindV1::Http, None, None) => {
                return Err(WireError::invalid("http", "missing in an HTTP config"));
            }
        };
        let kind = module.kind();
        let targets = self
            .targets
            .iter()
            .enumerate()
            .map(|(target_idx, raw)| {
                Target::parse(kind, raw).map_err(|e| {
                    WireError::invalid(format!("targets[{target_idx}]"), e.to_string())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let config = ProbeConfig {
            region,
            module,
            targets,
        };
        // The one validation the probe file also runs: what the server accepted, we accept.
        config.validate().map_err(setting_error)?;
        Ok(config)
    }
}

impl From<&ProbeConfig> for ProbeConfigV1 {
    fn from(config: &ProbeConfig) -> Self {
        let (kind, icmp, http) = match &config.module {
            ProbeModule::Icmp(icmp) => (ProbeKindV1::Icmp, Some(IcmpModuleV1::from(icmp)), None),
            ProbeModule::Http(http) => (
                ProbeKindV1::Http,
                None,
                Some(HttpModuleV1::from(http.as_ref())),
            ),
        };
        Self {
            region: config.region.as_str().to_owned(),
            kind,
            targets: config.targets.iter().map(|t| t.raw().to_owned()).collect(),
            icmp,
            http,
        }
    }
}

impl From<ProbeKind> for ProbeKindV1 {
    fn from(kind: ProbeKind) -> Self {
        match kind {
            ProbeKind::Icmp => Self::Icmp,
            ProbeKind::Http => Self::Http,
        }
    }
}

impl From<ProbeKindV1> for ProbeKind {
    fn from(kind: ProbeKindV1) -> Self {
        match kind {
            ProbeKindV1::Icmp => Self::Icmp,
            ProbeKindV1::Http => Self::Http,
        }
    }
}

// === impl IcmpModuleV1 ===

impl IcmpModuleV1 {
    fn into_domain(self) -> Result<IcmpModule, WireError> {
        let module = IcmpModule {
            packet_count: self.packet_count,
            interval: Duration::from_nanos(self.interval_ns),
            payload_size: self.payload_size,
        };
        module.validate().map_err(setting_error)?;
        Ok(module)
    }
}

impl From<&IcmpModule> for IcmpModuleV1 {
    fn from(icmp: &IcmpModule) -> Self {
        Self {
            packet_count: icmp.packet_count,
            interval_ns: duration_nanos(icmp.interval),
            payload_size: icmp.payload_size,
        }
    }
}

// === impl HttpModuleV1 ===

impl HttpModuleV1 {
    /// The domain module: regexes compiled with the shared limits, then the one validation
    /// the probe file also runs ([`HttpModule::validate`]).
    fn into_domain(self) -> Result<HttpModule, WireError> {
        // Bound the work before compiling anything.
        for (field, len) in [
            ("valid_status_codes", self.valid_status_codes.len()),
            ("valid_http_versions", self.valid_http_versions.len()),
            ("headers", self.headers.len()),
            (
                "fail_if_body_matches_regexp",
                self.fail_if_body_matches_regexp.len(),
            ),
            (
                "fail_if_body_not_matches_regexp",
                self.fail_if_body_not_matches_regexp.len(),
            ),
            ("fail_if_header_matches", self.fail_if_header_matches.len()),
            (
                "fail_if_header_not_matches",
                self.fail_if_header_not_matches.len(),
            ),
        ] {
            setting::list_len(len).map_err(|e| setting_error(e.within(field)))?;
        }
        let module = HttpModule {
            valid_status_codes: self.valid_status_codes,
            valid_http_versions: self
                .valid_http_versions
                .into_iter()
                .map(HttpVersion::from)
                .collect(),
            preferred_ip_protocol: self.preferred_ip_protocol.into(),
            ip_protocol_fallback: self.ip_protocol_fallback,
            skip_resolve_phase_with_proxy: self.skip_resolve_phase_with_proxy,
            no_follow_redirects: self.no_follow_redirects,
            fail_if_ssl: self.fail_if_ssl,
            fail_if_not_ssl: self.fail_if_not_ssl,
            method: self.method,
            headers: self
                .headers
                .into_iter()
                .map(|h| (h.name, h.value))
                .collect(),
            body: self.body.map(Into::into),
            fail_if_body_matches_regexp: compile_regexes(
                "fail_if_body_matches_regexp",
                &self.fail_if_body_matches_regexp,
            )?,
            fail_if_body_not_matches_regexp: compile_regexes(
                "fail_if_body_not_matches_regexp",
                &self.fail_if_body_not_matches_regexp,
            )?,
            fail_if_header_matches: header_matches_into_domain(
                "fail_if_header_matches",
                self.fail_if_header_matches,
            )?,
            fail_if_header_not_matches: header_matches_into_domain(
                "fail_if_header_not_matches",
                self.fail_if_header_not_matches,
            )?,
            compression: self.compression.into(),
            body_size_limit: self.body_size_limit,
            client: self.client.into_domain(),
        };
        module.validate().map_err(setting_error)?;
        Ok(module)
    }
}

impl From<&HttpModule> for HttpModuleV1 {
    fn from(http: &HttpModule) -> Self {
        Self {
            valid_status_codes: http.valid_status_codes.clone(),
            valid_http_versions: http
                .valid_http_versions
                .iter()
                .map(|v| HttpVersionV1::from(*v))
                .collect(),
            preferred_ip_protocol: http.preferred_ip_protocol.into(),
            ip_protocol_fallback: http.ip_protocol_fallback,
            skip_resolve_phase_with_proxy: http.skip_resolve_phase_with_proxy,
            no_follow_redirects: http.no_follow_redirects,
            fail_if_ssl: http.fail_if_ssl,
            fail_if_not_ssl: http.fail_if_not_ssl,
            method: http.method.clone(),
            headers: http
                .headers
                .iter()
                .map(|(name, value)| HeaderV1 {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            body: http.body.as_deref().map(str::to_owned),
            fail_if_body_matches_regexp: regex_sources(&http.fail_if_body_matches_regexp),
            fail_if_body_not_matches_regexp: regex_sources(&http.fail_if_body_not_matches_regexp),
            fail_if_header_matches: http
                .fail_if_header_matches
                .iter()
                .map(HeaderMatchV1::from)
                .collect(),
            fail_if_header_not_matches: http
                .fail_if_header_not_matches
                .iter()
                .map(HeaderMatchV1::from)
                .collect(),
            compression: http.compression.into(),
            body_size_limit: http.body_size_limit,
            client: HttpClientConfigV1::from(&http.client),
        }
    }
}

fn regex_sources(regexes: &[Regex]) -> Vec<String> {
    regexes.iter().map(|r| r.as_str().to_owned()).collect()
}

/// A failed shared check as a wire error naming the field.
fn setting_error(error: SettingError) -> WireError {
    WireError::invalid(error.field, error.message)
}

fn compile_regexes(field: &str, sources: &[String]) -> Result<Vec<Regex>, WireError> {
    sources
        .iter()
        .enumerate()
        .map(|(regex_idx, source)| {
            setting::regex(source)
                .map_err(|e| setting_error(e.within(&format!("{field}[{regex_idx}]"))))
        })
        .collect()
}

fn header_matches_into_domain(
    field: &str,
    matches: Vec<HeaderMatchV1>,
) -> Result<Vec<HeaderMatch>, WireError> {
    matches
        .into_iter()
        .enumerate()
        .map(|(match_idx, header_match)| {
            let regexp = setting::regex(&header_match.regexp)
                .map_err(|e| setting_error(e.within(&format!("{field}[{match_idx}].regexp"))))?;
            Ok(HeaderMatch {
                header: header_match.header,
                regexp,
                allow_missing: header_match.allow_missing,
            })
        })
        .collect()
}

impl From<&HeaderMatch> for HeaderMatchV1 {
    fn from(header_match: &HeaderMatch) -> Self {
        Self {
            header: header_match.header.clone(),
            regexp: header_match.regexp.as_str().to_owned(),
            allow_missing: header_match.allow_missing,
        }
    }
}

impl From<HttpVersion> for HttpVersionV1 {
    fn from(version: HttpVersion) -> Self {
        match version {
            HttpVersion::Http10 => Self::Http10,
            HttpVersion::Http11 => Self::Http11,
            HttpVersion::Http2 => Self::Http2,
        }
    }
}

impl From<HttpVersionV1> for HttpVersion {
    fn from(version: HttpVersionV1) -> Self {
        match version {
            HttpVersionV1::Http10 => Self::Http10,
            HttpVersionV1::Http11 => Self::Http11,
            HttpVersionV1::Http2 => Self::Http2,
        }
    }
}

impl From<IpProtocol> for IpProtocolV1 {
    fn from(protocol: IpProtocol) -> Self {
        match protocol {
            IpProtocol::Ip4 => Self::Ip4,
            IpProtocol::Ip6 => Self::Ip6,
        }
    }
}

impl From<IpProtocolV1> for IpProtocol {
    fn from(protocol: IpProtocolV1) -> Self {
        match protocol {
            IpProtocolV1::Ip4 => Self::Ip4,
            IpProtocolV1::Ip6 => Self::Ip6,
        }
    }
}

impl From<Compression> for CompressionV1 {
    fn from(compression: Compression) -> Self {
        match compression {
            Compression::Identity => Self::Identity,
            Compression::Gzip => Self::Gzip,
            Compression::Deflate => Self::Deflate,
            Compression::Brotli => Self::Brotli,
        }
    }
}

impl From<CompressionV1> for Compression {
    fn from(compression: CompressionV1) -> Self {
        match compression {
            CompressionV1::Identity => Self::Identity,
            CompressionV1::Gzip => Self::Gzip,
            CompressionV1::Deflate => Self::Deflate,
            CompressionV1::Brotli => Self::Brotli,
        }
    }
}

// === impl HttpClientConfigV1 ===

impl HttpClientConfigV1 {
    /// The domain settings, checked by [`HttpModule::validate`] with the rest of the module.
    fn into_domain(self) -> HttpClientConfig {
        let tls = self.tls;
        HttpClientConfig {
            basic_auth: self
                .basic_auth
                .map(|BasicAuthV1 { username, password }| BasicAuth {
                    username,
                    password: password.map(SecretSourceV1::into_domain),
                }),
            bearer_token: self.bearer_token.map(SecretSourceV1::into_domain),
            tls: TlsConfig {
                // Paths only: a v2 pool brings their contents beside the configs.
                ca_file: tls.ca_file.map(FileRef::named),
                cert_file: tls.cert_file.map(FileRef::named),
                key_file: tls.key_file.map(FileRef::named),
                server_name: tls.server_name,
                insecure_skip_verify: tls.insecure_skip_verify,
                min_version: tls.min_version.map(TlsMinVersion::from),
            },
            proxy_url: self.proxy_url,
            follow_redirects: self.follow_redirects,
            enable_http2: self.enable_http2,
        }
    }
}

impl From<&HttpClientConfig> for HttpClientConfigV1 {
    fn from(client: &HttpClientConfig) -> Self {
        Self {
            basic_auth: client.basic_auth.as_ref().map(|auth| BasicAuthV1 {
                username: auth.username.clone(),
                password: auth.password.as_ref().map(SecretSourceV1::from),
            }),
            bearer_token: client.bearer_token.as_ref().map(SecretSourceV1::from),
            tls: TlsConfigV1 {
                // Paths only: a v2 pool carries their contents beside the configs; an agent
                // of v1 reads them itself (as it always did).
                ca_file: client.tls.ca_file.as_ref().map(|f| f.path().to_owned()),
                cert_file: client.tls.cert_file.as_ref().map(|f| f.path().to_owned()),
                key_file: client.tls.key_file.as_ref().map(|f| f.path().to_owned()),
                server_name: client.tls.server_name.clone(),
                insecure_skip_verify: client.tls.insecure_skip_verify,
                min_version: client.tls.min_version.map(TlsMinVersionV1::from),
            },
            proxy_url: client.proxy_url.clone(),
            follow_redirects: client.follow_redirects,
            enable_http2: client.enable_http2,
        }
    }
}

impl SecretSourceV1 {
    fn into_domain(self) -> SecretSource {
        match self {
            Self::Inline(secret) => SecretSource::Inline(Secret::new(secret.expose().to_owned())),
            Self::File(path) => SecretSource::File(FileRef::named(path)),
        }
    }
}

impl From<&SecretSource> for SecretSourceV1 {
    fn from(source: &SecretSource) -> Self {
        match source {
            SecretSource::Inline(secret) => {
                Self::Inline(WireSecret::new(secret.expose().to_owned()))
            }
            // What the server read travels as the value, so no agent opens the file.
            SecretSource::File(file) => match source.value() {
                Some(value) => Self::Inline(WireSecret::new(value.to_owned())),
                None => Self::File(file.path().to_owned()),
            },
        }
    }
}

impl From<TlsMinVersion> for TlsMinVersionV1 {
    fn from(version: TlsMinVersion) -> Self {
        match version {
            TlsMinVersion::Tls12 => Self::Tls12,
            TlsMinVersion::Tls13 => Self::Tls13,
        }
    }
}

impl From<TlsMinVersionV1> for TlsMinVersion {
    fn from(version: TlsMinVersionV1) -> Self {
        match version {
            TlsMinVersionV1::Tls12 => Self::Tls12,
            TlsMinVersionV1::Tls13 => Self::Tls13,
        }
    }
}
