//! DNS timing: core's [`DnsResolver`] over hickory-resolver, the `resolve` phase of ICMP and
//! HTTP probes.
//!
//! Honest timing: hickory's answer cache is **off** (`cache_size = 0`), so every probe's
//! resolve phase is a real query to the configured name server, as the Go system's and
//! blackbox_exporter's per-probe lookups are. What the name server itself caches is part of
//! what a client in that region experiences, so it stays in the measurement. Host-file
//! entries (`/etc/hosts`) and address literals are answered locally and take ~0.
//!
//! Family: the preferred family first and, when allowed, the other one if the preferred has
//! no address (hickory's `Ipv4thenIpv6` / `Ipv6thenIpv4`), so a fallback's time includes the
//! failed first query; without fallback only the preferred family is asked.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};
use probermesh_core::model::http_module::IpProtocol;
use probermesh_core::ports::{DnsFailure, DnsFailureKind, DnsResolver, IpPreference, Resolution};

/// Why the resolver could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the DNS resolver: {0}")]
pub struct DnsSetupError(String);

/// A timed resolver: one hickory resolver per lookup strategy, sharing one configuration.
#[derive(Debug)]
pub struct HickoryDns {
    v4_then_v6: TokioResolver,
    v6_then_v4: TokioResolver,
    v4_only: TokioResolver,
    v6_only: TokioResolver,
}

impl HickoryDns {
    /// Uses the system's configuration (`/etc/resolv.conf`, `/etc/hosts`).
    ///
    /// # Errors
    /// When the system configuration cannot be read.
    pub fn from_system_conf() -> Result<Self, DnsSetupError> {
        let (config, options) = hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| DnsSetupError(format!("reading /etc/resolv.conf: {e}")))?;
        Self::build(&config, options)
    }

    /// Asks only `servers` over UDP (labs, tests, a dedicated resolver), with `timeout` per
    /// attempt and two attempts.
    ///
    /// # Errors
    /// When the resolver cannot be built.
    pub fn with_name_servers(
        servers: &[SocketAddr],
        timeout: Duration,
    ) -> Result<Self, DnsSetupError> {
        let name_servers = servers
            .iter()
            .map(|server| {
                let mut config = NameServerConfig::udp(server.ip());
                for connection in &mut config.connections {
                    connection.port = server.port();
                }
                config
            })
            .collect();
        let config = ResolverConfig::from_name_servers(name_servers);
        let mut options = ResolverOpts::default();
        options.timeout = timeout;
        options.attempts = 2;
        Self::build(&config, options)
    }

    fn build(config: &ResolverConfig, options: ResolverOpts) -> Result<Self, DnsSetupError> {
        let make = |strategy| -> Result<TokioResolver, DnsSetupError> {
            let mut options = options.clone();
            options.cache_size = 0;
            options.ip_strategy = strategy;
            Resolver::builder_with_config(config.clone(), TokioRuntimeProvider::default())
                .with_options(options)
                .build()
                .map_err(|e| DnsSetupError(e.to_string()))
        };
        Ok(Self {
            v4_then_v6: make(LookupIpStrategy::Ipv4thenIpv6)?,
            v6_then_v4: make(LookupIpStrategy::Ipv6thenIpv4)?,
            v4_only: make(LookupIpStrategy::Ipv4Only)?,
            v6_only: make(LookupIpStrategy::Ipv6Only)?,
        })
    }

    fn resolver(&self, preference: IpPreference) -> &TokioResolver {
        match (preference.preferred, preference.fallback) {
            (IpProtocol::Ip4, true) => &self.v4_then_v6,
            (IpProtocol::Ip6, true) => &self.v6_then_v4,
            (IpProtocol::Ip4, false) => &self.v4_only,
            (IpProtocol::Ip6, false) => &self.v6_only,
        }
    }
}

#[async_trait::async_trait]
impl DnsResolver for HickoryDns {
    async fn resolve(
        &self,
        host: &str,
        preference: IpPreference,
    ) -> Result<Resolution, DnsFailure> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(addr) = literal.parse::<IpAddr>() {
            return Ok(Resolution {
                addr,
                elapsed: Duration::ZERO,
            });
        }
        let started = Instant::now();
        let lookup = self.resolver(preference).lookup_ip(host).await;
        let elapsed = started.elapsed();
        match lookup {
            Ok(lookup) => {
                let wanted = |addr: &IpAddr| match preference.preferred {
                    IpProtocol::Ip4 => addr.is_ipv4(),
                    IpProtocol::Ip6 => addr.is_ipv6(),
                };
                let addrs: Vec<IpAddr> = lookup.iter().collect();
                let chosen = addrs
                    .iter()
                    .copied()
                    .find(wanted)
                    .or_else(|| addrs.first().copied().filter(|_| preference.fallback));
                chosen
                    .map(|addr| Resolution { addr, elapsed })
                    .ok_or_else(|| DnsFailure {
                        kind: DnsFailureKind::NoAddressOfFamily,
                        elapsed,
                        detail: format!("{host} has no address of the wanted family"),
                    })
            }
            Err(error) => Err(DnsFailure {
                kind: failure_kind(&error),
                elapsed,
                detail: format!("{host}: {error}"),
            }),
        }
    }
}

fn failure_kind(error: &NetError) -> DnsFailureKind {
    if error.is_nx_domain() {
        DnsFailureKind::NotFound
    } else if error.is_no_records_found() {
        DnsFailureKind::NoAddressOfFamily
    } else if matches!(error, NetError::Timeout) {
        DnsFailureKind::Timeout
    } else {
        DnsFailureKind::Other
    }
}
