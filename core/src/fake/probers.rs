//! Fakes of the probe engines: DNS, ICMP, HTTP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use super::lock;
use crate::model::{HttpFailure, HttpModule, HttpPhases, HttpResult, HttpUrl, IcmpSettings};
use crate::ports::{
    DnsFailure, DnsFailureKind, DnsResolver, EchoSeries, HttpProber, IcmpPinger, IpPreference,
    PingError, Resolution,
};

// === FakeDns ===

/// A [`DnsResolver`] answering from a per-host script; unknown hosts are
/// [`DnsFailureKind::NotFound`]. The answer does not depend on the preference, which is
/// recorded so tests can check it.
#[derive(Debug, Default)]
pub struct FakeDns {
    answers: Mutex<HashMap<String, Result<Resolution, DnsFailure>>>,
    calls: Mutex<Vec<(String, IpPreference)>>,
}

impl FakeDns {
    /// A resolver that knows no host yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers `answer` for `host` from now on.
    pub fn answer(&self, host: &str, answer: Result<Resolution, DnsFailure>) {
        lock(&self.answers).insert(host.to_owned(), answer);
    }

    /// Resolves `host` to `addr` instantly.
    pub fn resolves_to(&self, host: &str, addr: IpAddr) {
        self.answer(
            host,
            Ok(Resolution {
                addr,
                elapsed: Duration::ZERO,
            }),
        );
    }

    /// Every lookup so far: (host, preference), in call order.
    #[must_use]
    pub fn calls(&self) -> Vec<(String, IpPreference)> {
        lock(&self.calls).clone()
    }
}

#[async_trait::async_trait]
impl DnsResolver for FakeDns {
    async fn resolve(
        &self,
        host: &str,
        preference: IpPreference,
    ) -> Result<Resolution, DnsFailure> {
        lock(&self.calls).push((host.to_owned(), preference));
        lock(&self.answers).get(host).cloned().unwrap_or_else(|| {
            Err(DnsFailure {
                kind: DnsFailureKind::NotFound,
                elapsed: Duration::ZERO,
                detail: format!("FakeDns has no answer for {host:?}"),
            })
        })
    }
}

// === FakePinger ===

/// An [`IcmpPinger`] answering from a per-address script; unknown addresses answer 100 % loss
/// of `settings.module.packet_count` echoes.
#[derive(Debug, Default)]
pub struct FakePinger {
    answers: Mutex<HashMap<IpAddr, Result<EchoSeries, PingError>>>,
    calls: Mutex<Vec<(IpAddr, IcmpSettings)>>,
}

impl FakePinger {
    /// A pinger for which every address is down.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers `answer` for `addr` from now on.
    pub fn answer(&self, addr: IpAddr, answer: Result<EchoSeries, PingError>) {
        lock(&self.answers).insert(addr, answer);
    }

    /// Every ping so far: (address, settings), in call order.
    #[must_use]
    pub fn calls(&self) -> Vec<(IpAddr, IcmpSettings)> {
        lock(&self.calls).clone()
    }
}

#[async_trait::async_trait]
impl IcmpPinger for FakePinger {
    async fn ping(&self, addr: IpAddr, settings: &IcmpSettings) -> Result<EchoSeries, PingError> {
        lock(&self.calls).push((addr, *settings));
        lock(&self.answers)
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| Ok(EchoSeries::lost(settings.module.packet_count)))
    }
}

// === FakeHttpProber ===

/// One call of [`FakeHttpProber`].
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct HttpCall {
    /// The URL probed.
    pub url: HttpUrl,
    /// The module it was probed with.
    pub module: HttpModule,
    /// The timeout given.
    pub timeout: Duration,
}

/// An [`HttpProber`] answering from a per-URL script; unknown URLs fail with
/// [`HttpFailure::Resolve`] and no response.
///
/// URLs are keyed by their normalised form (`example.com` and `http://example.com/` are the
/// same), as [`HttpUrl`] prints it.
#[derive(Debug, Default)]
pub struct FakeHttpProber {
    answers: Mutex<HashMap<String, HttpResult>>,
    calls: Mutex<Vec<HttpCall>>,
}

impl FakeHttpProber {
    /// A prober for which no URL resolves.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers `result` for `url` from now on.
    pub fn answer(&self, url: &str, result: HttpResult) {
        lock(&self.answers).insert(normalise_url(url), result);
    }

    /// A successful result with `status_code` and zero-length phases, for scripts.
    #[must_use]
    pub fn success(status_code: u16) -> HttpResult {
        HttpResult {
            phases: HttpPhases::default(),
            status_code: Some(status_code),
            tls: None,
            failure: None,
        }
    }

    /// Every probe so far, in call order.
    #[must_use]
    pub fn calls(&self) -> Vec<HttpCall> {
        lock(&self.calls).clone()
    }
}

/// The key of a URL: its normalised form when it parses, else the text itself.
fn normalise_url(url: &str) -> String {
    HttpUrl::parse(url).map_or_else(|_| url.to_owned(), |parsed| parsed.to_string())
}

#[async_trait::async_trait]
impl HttpProber for FakeHttpProber {
    async fn probe(&self, url: &HttpUrl, module: &HttpModule, timeout: Duration) -> HttpResult {
        lock(&self.calls).push(HttpCall {
            url: url.clone(),
            module: module.clone(),
            timeout,
        });
        lock(&self.answers)
            .get(&url.to_string())
            .cloned()
            .unwrap_or(HttpResult {
                phases: HttpPhases::default(),
                status_code: None,
                tls: None,
                failure: Some(HttpFailure::Resolve),
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pollster::block_on;

    use super::*;
    use crate::model::http_module::IpProtocol;
    use crate::model::{IcmpFailure, IcmpModule};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn dns_answers_from_the_script_and_records_preferences() {
        let dns = FakeDns::new();
        dns.resolves_to("a.example", ip("192.0.2.1"));
        let timeout = DnsFailure {
            kind: DnsFailureKind::Timeout,
            elapsed: Duration::from_secs(5),
            detail: "no answer".into(),
        };
        dns.answer("slow.example", Err(timeout.clone()));
        let v6_only = IpPreference {
            preferred: IpProtocol::Ip6,
            fallback: false,
        };
        let found = block_on(dns.resolve("a.example", v6_only)).unwrap();
        assert_eq!(found.addr, ip("192.0.2.1"));
        assert_eq!(
            block_on(dns.resolve("slow.example", IpPreference::default())),
            Err(timeout)
        );
        let missing = block_on(dns.resolve("b.example", IpPreference::default())).unwrap_err();
        assert_eq!(missing.kind, DnsFailureKind::NotFound);
        assert_eq!(
            dns.calls(),
            [
                ("a.example".to_owned(), v6_only),
                ("slow.example".to_owned(), IpPreference::default()),
                ("b.example".to_owned(), IpPreference::default()),
            ]
        );
    }

    #[test]
    fn pinger_answers_scripts_and_loses_everything_else() {
        let pinger = FakePinger::new();
        let up = EchoSeries {
            packets_sent: 3,
            rtts: vec![Duration::from_millis(2); 3],
            errors: Vec::new(),
        };
        pinger.answer(ip("10.0.0.1"), Ok(up.clone()));
        let denied = PingError::Permission {
            how_to_fix: "setcap cap_net_raw+ep".into(),
        };
        pinger.answer(ip("10.0.0.2"), Err(denied.clone()));
        let settings = IcmpSettings::new(
            IcmpModule {
                packet_count: 7,
                ..IcmpModule::default()
            },
            Duration::from_secs(15),
        );
        assert_eq!(block_on(pinger.ping(ip("10.0.0.1"), &settings)), Ok(up));
        let err = block_on(pinger.ping(ip("10.0.0.2"), &settings)).unwrap_err();
        assert_eq!(err.failure(), IcmpFailure::Permission);
        assert_eq!(
            block_on(pinger.ping(ip("10.0.0.3"), &settings)),
            Ok(EchoSeries::lost(7))
        );
        let calls = pinger.calls();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[2], (ip("10.0.0.3"), settings));
    }

    #[test]
    fn http_prober_keys_normalised_urls_and_records_calls() {
        let prober = FakeHttpProber::new();
        prober.answer("example.com", FakeHttpProber::success(204));
        let url = HttpUrl::parse("http://example.com/").unwrap();
        let module = HttpModule::default();
        let timeout = Duration::from_secs(3);
        let result = block_on(prober.probe(&url, &module, timeout));
        assert_eq!(result.status_code, Some(204));
        assert!(!result.is_failed());
        let other = HttpUrl::parse("https://example.com/").unwrap();
        let result = block_on(prober.probe(&other, &module, timeout));
        assert_eq!(result.failure, Some(HttpFailure::Resolve));
        assert_eq!(result.status_code, None);
        let calls = prober.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            calls[0],
            HttpCall {
                url,
                module,
                timeout
            }
        );
    }

    #[test]
    fn a_poisoned_fake_still_answers() {
        let dns = Arc::new(FakeDns::new());
        let poisoner = Arc::clone(&dns);
        let joined = std::thread::spawn(move || {
            let _guard = poisoner.calls.lock();
            panic!("poison the call record");
        })
        .join();
        assert!(joined.is_err());
        assert!(dns.calls.is_poisoned());
        let _ = block_on(dns.resolve("x.example", IpPreference::default()));
        assert_eq!(dns.calls().len(), 1);
    }
}
