//! Running one probe end to end over the ports: resolve the target (timed), then measure it,
//! and fill core's result. Pure orchestration: the ports do the I/O, so the agent, the
//! `probermesh ping` command and tests with fakes all share these rules.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{PlannedProbe, ProbeHow};
use crate::model::{
    AgentId, Destination, Host, IcmpFailure, IcmpResult, IcmpSettings, ProbeOutcome, ProbeResult,
};
use crate::ports::{DnsResolver, EchoSeries, HttpProber, IcmpPinger, IpPreference};

/// The probers an agent runs its probes with.
#[derive(Clone)]
pub struct Probers {
    /// Name resolution (the `resolve` phase of both kinds).
    pub dns: Arc<dyn DnsResolver>,
    /// ICMP echoes.
    pub icmp: Arc<dyn IcmpPinger>,
    /// HTTP requests.
    pub http: Arc<dyn HttpProber>,
}

impl fmt::Debug for Probers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probers").finish_non_exhaustive()
    }
}

/// Runs one planned probe of agent `me` and stamps its result with its round and target.
pub async fn run(probers: &Probers, me: &AgentId, probe: PlannedProbe) -> ProbeResult {
    let outcome = match &probe.how {
        ProbeHow::Icmp(settings) => {
            let host = match probe.target.destination() {
                Destination::Icmp(host) => host.clone(),
                Destination::Http(url) => url.host.clone(),
            };
            ProbeOutcome::Icmp(
                icmp(probers.dns.as_ref(), probers.icmp.as_ref(), &host, settings).await,
            )
        }
        ProbeHow::Http { url, module } => {
            ProbeOutcome::Http(probers.http.probe(url, module, probe.timeout).await)
        }
    };
    ProbeResult {
        source: me.clone(),
        target_region: probe.target_region,
        target: probe.target.raw().to_owned(),
        round_start: probe.round_start,
        outcome,
    }
}

/// What one ICMP probe saw, before it is reduced to an [`IcmpResult`]: the resolved address,
/// the time the lookup took and every echo (or why there was none).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct IcmpEchoes {
    /// Time spent resolving (zero for an address literal).
    pub resolve: Duration,
    /// The address pinged, when the lookup succeeded.
    pub addr: Option<IpAddr>,
    /// The echoes, or the failure with its detail for the log.
    pub outcome: Result<EchoSeries, ProbeFailure>,
}

/// Why an ICMP probe measured nothing.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ProbeFailure {
    /// The bounded failure recorded in the result.
    pub failure: IcmpFailure,
    /// The resolver's or operating system's message.
    pub detail: String,
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.failure.as_str(), self.detail)
    }
}

impl IcmpEchoes {
    /// The probe result the agent reports.
    #[must_use]
    pub fn to_result(&self) -> IcmpResult {
        match &self.outcome {
            Ok(series) => series.to_result(self.resolve),
            Err(failure) => IcmpResult::failed(self.resolve, failure.failure),
        }
    }
}

/// One ICMP probe of `host`: the name is resolved (IPv4 preferred, IPv6 fallback, as the Go
/// system), then `settings.module.packet_count` echoes are sent within what the lookup left of
/// the probe's timeout, so the whole probe ends by its timeout (as an HTTP probe does).
///
/// Never fails: a lookup failure is [`IcmpFailure::Resolve`] with the time it took, a socket
/// problem is [`IcmpFailure::Permission`] or [`IcmpFailure::Send`], and loss (even 100 %) is
/// a measured result.
pub async fn icmp(
    dns: &dyn DnsResolver,
    pinger: &dyn IcmpPinger,
    host: &Host,
    settings: &IcmpSettings,
) -> IcmpResult {
    icmp_echoes(dns, pinger, host, settings).await.to_result()
}

/// [`icmp`], keeping every echo (for `probermesh ping` and tests).
pub async fn icmp_echoes(
    dns: &dyn DnsResolver,
    pinger: &dyn IcmpPinger,
    host: &Host,
    settings: &IcmpSettings,
) -> IcmpEchoes {
    let (addr, resolve) = match host {
        Host::Ip(addr) => (*addr, Duration::ZERO),
        Host::Name(name) => match dns.resolve(name, IpPreference::default()).await {
            Ok(resolution) => (resolution.addr, resolution.elapsed),
            Err(failure) => {
                return IcmpEchoes {
                    resolve: failure.elapsed,
                    addr: None,
                    outcome: Err(ProbeFailure {
                        failure: IcmpFailure::Resolve,
                        detail: failure.to_string(),
                    }),
                };
            }
        },
    };
    let remaining = settings.timeout.saturating_sub(resolve);
    if remaining.is_zero() {
        return IcmpEchoes {
            resolve,
            addr: Some(addr),
            outcome: Err(ProbeFailure {
                failure: IcmpFailure::Resolve,
                detail: format!(
                    "the lookup took {resolve:?}, the whole probe timeout of {:?}",
                    settings.timeout
                ),
            }),
        };
    }
    let budget = IcmpSettings {
        timeout: remaining,
        ..*settings
    };
    let outcome = pinger
        .ping(addr, &budget)
        .await
        .map_err(|error| ProbeFailure {
            failure: error.failure(),
            detail: error.to_string(),
        });
    IcmpEchoes {
        resolve,
        addr: Some(addr),
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeDns, FakePinger};
    use crate::model::IcmpModule;
    use crate::ports::{DnsFailure, DnsFailureKind, EchoSeries, PingError, Resolution};

    fn settings() -> IcmpSettings {
        IcmpSettings::new(IcmpModule::default(), Duration::from_secs(15))
    }

    #[test]
    fn a_name_is_resolved_then_pinged_and_the_lookup_time_kept() {
        let dns = FakeDns::new();
        let addr = "198.18.0.7".parse().unwrap();
        dns.answer(
            "db.example",
            Ok(Resolution {
                addr,
                elapsed: Duration::from_millis(3),
            }),
        );
        let pinger = FakePinger::new();
        pinger.answer(
            addr,
            Ok(EchoSeries {
                packets_sent: 4,
                rtts: vec![Duration::from_millis(10); 3],
                errors: vec![],
            }),
        );
        let host = Host::Name("db.example".into());
        let result = pollster::block_on(icmp(&dns, &pinger, &host, &settings()));
        assert_eq!(result.resolve, Duration::from_millis(3));
        assert_eq!((result.packets_sent, result.packets_received), (4, 3));
        assert_eq!(result.failure, None);
    }

    #[test]
    fn a_failed_lookup_is_a_resolve_failure_and_nothing_is_sent() {
        let dns = FakeDns::new();
        dns.answer(
            "nowhere.invalid",
            Err(DnsFailure {
                kind: DnsFailureKind::NotFound,
                elapsed: Duration::from_millis(8),
                detail: "NXDOMAIN".into(),
            }),
        );
        let pinger = FakePinger::new();
        let host = Host::Name("nowhere.invalid".into());
        let result = pollster::block_on(icmp(&dns, &pinger, &host, &settings()));
        assert_eq!(result.failure, Some(IcmpFailure::Resolve));
        assert_eq!(result.resolve, Duration::from_millis(8));
        assert!(pinger.calls().is_empty());
    }

    #[test]
    fn the_lookup_time_comes_out_of_the_probe_timeout() {
        let dns = FakeDns::new();
        let addr = "198.18.0.7".parse().unwrap();
        let lookup = |elapsed| Resolution { addr, elapsed };
        let pinger = FakePinger::new();
        pinger.answer(
            addr,
            Ok(EchoSeries {
                packets_sent: 1,
                rtts: vec![Duration::from_millis(1)],
                errors: vec![],
            }),
        );
        let host = Host::Name("slow.example".into());
        dns.answer("slow.example", Ok(lookup(Duration::from_secs(5))));
        let result = pollster::block_on(icmp(&dns, &pinger, &host, &settings()));
        assert_eq!(result.failure, None);
        // 12 s for the probe, 5 s of it spent on the lookup: the echoes get 7 s.
        assert_eq!(pinger.calls()[0].1.timeout, Duration::from_secs(7));

        dns.answer("slow.example", Ok(lookup(Duration::from_secs(12))));
        let result = pollster::block_on(icmp(&dns, &pinger, &host, &settings()));
        assert_eq!(result.failure, Some(IcmpFailure::Resolve));
        assert_eq!(
            pinger.calls().len(),
            1,
            "no echo after a lookup that took the whole timeout"
        );
    }

    #[test]
    fn a_permission_problem_is_a_failure_not_loss() {
        let dns = FakeDns::new();
        let pinger = FakePinger::new();
        let addr = "127.0.0.2".parse().unwrap();
        pinger.answer(
            addr,
            Err(PingError::Permission {
                how_to_fix: "grant CAP_NET_RAW".into(),
            }),
        );
        let result = pollster::block_on(icmp(&dns, &pinger, &Host::Ip(addr), &settings()));
        assert_eq!(result.failure, Some(IcmpFailure::Permission));
        assert_eq!(result.packets_sent, 0);
    }
}
