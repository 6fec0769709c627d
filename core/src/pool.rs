//! The server's target pool: which targets every region's agents probe (spec §6.1).
//!
//! The pool is the probe file's blocks, keyed by region then probe kind, combined with the live
//! agents when ICMP discovery is dynamic. It is a pure function of those two inputs: nothing
//! discovered is stored, so a reload of the file can never wipe discovered targets (the Go
//! server wiped them until its next one-minute tick), and an agent's death shows in the very
//! next call instead of one to three minutes later. Who is alive is the caller's business.
//!
//! The rules, kept from the Go system except where marked:
//! - **Static discovery:** the pool is the file; live agents are never targets.
//! - **Dynamic discovery:** every region with live agents gets an ICMP block listing their IPs
//!   (sorted, without duplicates) with the default ICMP module (the Go block had no module and
//!   crashed 0.0.9 agents). It replaces the file's ICMP block of that region; the file's HTTP
//!   block of that region is kept.
//! - File ICMP blocks of regions without live agents stay, and every agent probes them:
//!   this is how "virtual" regions are made.
//!   Deviation: when every agent of a region has died, that region's file ICMP block (if it had
//!   one) comes back; the Go server deleted it until the next reload.
//! - **What an agent receives:** every region except its own, for ICMP and HTTP alike, unless
//!   `-server.probe.self` is on. With it on, agents also ping their own region, their own IP
//!   included (there is no self-exclusion, as in Go).
//! - Output is deterministic: regions in order, ICMP before HTTP.
//!
//! [`TargetPool::revision`] fingerprints the output so the server can push the pool to agents
//! exactly when it changed.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::model::http_module::{
    BasicAuth, Compression, FileRef, HeaderMatch, HttpClientConfig, HttpVersion, IpProtocol,
    SecretSource, TlsConfig, TlsMinVersion,
};
use crate::model::{
    AgentId, HttpModule, IcmpModule, ProbeConfig, ProbeKind, ProbeModule, Region, Target,
};

/// How ICMP targets are found (`-server.icmp.discovery`).
#[derive(Clone, Copy, Debug, Default, Eq, Hash, PartialEq)]
pub enum Discovery {
    /// ICMP targets come from the probe file only.
    Static,
    /// Live agents are pinged by the other regions (the default).
    #[default]
    Dynamic,
}

impl Discovery {
    /// The flag spelling: `static` or `dynamic`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Dynamic => "dynamic",
        }
    }
}

impl fmt::Display for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Discovery {
    type Err = DiscoveryError;

    /// Parses the flag value. Unlike Go, which silently treated any unknown value as static,
    /// anything other than `static` or `dynamic` is refused.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "static" => Ok(Self::Static),
            "dynamic" => Ok(Self::Dynamic),
            _ => Err(DiscoveryError {
                given: text.to_owned(),
            }),
        }
    }
}

/// An unknown `-server.icmp.discovery` value.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("unknown ICMP discovery mode {given:?}; expected \"static\" or \"dynamic\"")]
pub struct DiscoveryError {
    /// The value as given.
    pub given: String,
}

/// A fingerprint of the pool's output (see [`TargetPool::revision`]).
///
/// It is a 64-bit FNV-1a hash over a canonical, length-prefixed rendering of every block,
/// stable across processes and Rust versions.
/// It is derived from every setting, secrets from the probe file included, so treat it as a
/// change detector for trusted parties rather than as public data.
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct PoolRevision(pub u64);

impl fmt::Display for PoolRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The target pool: the probe file's blocks plus the discovery rules.
#[derive(Clone, Debug)]
pub struct TargetPool {
    discovery: Discovery,
    probe_self: bool,
    file: BTreeMap<Region, FileBlocks>,
}

impl TargetPool {
    /// A pool over the probe file's blocks.
    ///
    /// A second block with the same region and kind replaces the first, as in Go (the probe
    /// file loader is expected to have warned about it).
    #[must_use]
    pub fn new(file_configs: Vec<ProbeConfig>, discovery: Discovery, probe_self: bool) -> Self {
        Self {
            discovery,
            probe_self,
            file: index_file(file_configs),
        }
    }

    /// Replaces the probe file's blocks (`/-/reload`). Discovered targets are not affected:
    /// they come from the live agents given to every query.
    pub fn replace_file_configs(&mut self, configs: Vec<ProbeConfig>) {
        self.file = index_file(configs);
    }

    /// The discovery mode.
    #[must_use]
    pub fn discovery(&self) -> Discovery {
        self.discovery
    }

    /// Whether agents also probe their own region (`-server.probe.self`).
    #[must_use]
    pub fn probe_self(&self) -> bool {
        self.probe_self
    }

    /// The whole pool (what `/-/targets` shows): each region's blocks, ICMP before HTTP.
    #[must_use]
    pub fn regions(&self, live_agents: &[AgentId]) -> BTreeMap<Region, Vec<ProbeConfig>> {
        self.view(live_agents)
            .into_iter()
            .map(|(region, blocks)| (region.clone(), blocks.to_owned_configs()))
            .collect()
    }

    /// What an agent of `agent_region` probes: the blocks of every other region (of every
    /// region with `probe_self`), regions in order, ICMP before HTTP.
    #[must_use]
    pub fn targets_for(&self, agent_region: &Region, live_agents: &[AgentId]) -> Vec<ProbeConfig> {
        self.view(live_agents)
            .into_iter()
            .filter(|(region, _)| self.probe_self || *region != agent_region)
            .flat_map(|(_, blocks)| blocks.to_owned_configs())
            .collect()
    }

    /// A fingerprint of [`TargetPool::regions`] for these live agents.
    ///
    /// Equal outputs give equal revisions whatever the order of the inputs, and any change of
    /// the output (a target, a module setting, a region) changes it, so the server can push
    /// the pool when, and only when, it changed.
    #[must_use]
    pub fn revision(&self, live_agents: &[AgentId]) -> PoolRevision {
        let mut fingerprint = Fingerprint::new();
        for (region, blocks) in self.view(live_agents) {
            fingerprint.str(region.as_str());
            blocks.write_to(&mut fingerprint);
        }
        PoolRevision(fingerprint.finish())
    }

    /// A fingerprint of [`TargetPool::targets_for`] `agent_region`: it changes only when what
    /// agents of that region receive changes.
    #[must_use]
    pub fn revision_for(&self, agent_region: &Region, live_agents: &[AgentId]) -> PoolRevision {
        let mut fingerprint = Fingerprint::new();
        for (region, blocks) in self.view(live_agents) {
            if self.probe_self || region != agent_region {
                fingerprint.str(region.as_str());
                blocks.write_to(&mut fingerprint);
            }
        }
        PoolRevision(fingerprint.finish())
    }

    /// Every region's effective blocks, borrowed where they come from the file.
    fn view<'a>(&'a self, live_agents: &'a [AgentId]) -> BTreeMap<&'a Region, RegionBlocks<'a>> {
        let mut view: BTreeMap<&Region, RegionBlocks<'_>> = self
            .file
            .iter()
            .map(|(region, blocks)| {
                let borrowed = RegionBlocks {
                    icmp: blocks.icmp.as_ref().map(Cow::Borrowed),
                    http: blocks.http.as_ref(),
                };
                (region, borrowed)
            })
            .collect();
        if self.discovery == Discovery::Dynamic {
            let mut ips_by_region: BTreeMap<&Region, BTreeSet<IpAddr>> = BTreeMap::new();
            for agent in live_agents {
                ips_by_region
                    .entry(&agent.region)
                    .or_default()
                    .insert(agent.ip);
            }
            for (region, ips) in ips_by_region {
                let discovered = ProbeConfig {
                    region: region.clone(),
                    module: ProbeModule::Icmp(IcmpModule::default()),
                    targets: ips.into_iter().map(Target::icmp_ip).collect(),
                };
                view.entry(region).or_default().icmp = Some(Cow::Owned(discovered));
            }
        }
        view
    }
}

// === impl FileBlocks, RegionBlocks ===

/// A region's blocks in the probe file.
#[derive(Clone, Debug, Default)]
struct FileBlocks {
    icmp: Option<ProbeConfig>,
    http: Option<ProbeConfig>,
}

/// Keys the file's blocks by region then kind; a later block replaces an earlier one.
fn index_file(configs: Vec<ProbeConfig>) -> BTreeMap<Region, FileBlocks> {
    let mut file: BTreeMap<Region, FileBlocks> = BTreeMap::new();
    for config in configs {
        let blocks = file.entry(config.region.clone()).or_default();
        match config.kind() {
            ProbeKind::Icmp => blocks.icmp = Some(config),
            ProbeKind::Http => blocks.http = Some(config),
        }
    }
    file
}

/// A region's effective blocks: the ICMP one may be discovered (owned) or from the file.
#[derive(Debug, Default)]
struct RegionBlocks<'a> {
    icmp: Option<Cow<'a, ProbeConfig>>,
    http: Option<&'a ProbeConfig>,
}

impl RegionBlocks<'_> {
    /// The blocks in output order: ICMP, then HTTP.
    fn iter(&self) -> impl Iterator<Item = &ProbeConfig> {
        self.icmp.as_deref().into_iter().chain(self.http)
    }

    fn to_owned_configs(&self) -> Vec<ProbeConfig> {
        self.iter().cloned().collect()
    }

    fn write_to(&self, fingerprint: &mut Fingerprint) {
        let blocks: Vec<&ProbeConfig> = self.iter().collect();
        fingerprint.list(&blocks, |f, config| write_config(f, config));
    }
}

// === canonical rendering ===

/// FNV-1a (64-bit) over a length-prefixed rendering, so distinct renderings never meet by
/// concatenation; only a hash collision (about 2^-64) can hide a change.
#[derive(Debug)]
struct Fingerprint(u64);

impl Fingerprint {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Self(Self::OFFSET_BASIS)
    }

    fn finish(&self) -> u64 {
        self.0
    }

    fn raw(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn tag(&mut self, tag: u8) {
        self.raw(&[tag]);
    }

    fn bool(&mut self, value: bool) {
        self.tag(u8::from(value));
    }

    fn u64(&mut self, value: u64) {
        self.raw(&value.to_le_bytes());
    }

    fn len(&mut self, len: usize) {
        self.u64(u64::try_from(len).unwrap_or(u64::MAX));
    }

    fn str(&mut self, text: &str) {
        self.len(text.len());
        self.raw(text.as_bytes());
    }

    fn duration(&mut self, duration: Duration) {
        self.u64(duration.as_secs());
        self.u64(u64::from(duration.subsec_nanos()));
    }

    fn option<T>(&mut self, value: Option<&T>, write: impl FnOnce(&mut Self, &T)) {
        match value {
            None => self.tag(0),
            Some(value) => {
                self.tag(1);
                write(self, value);
            }
        }
    }

    fn list<T>(&mut self, items: &[T], write: impl Fn(&mut Self, &T)) {
        self.len(items.len());
        for item in items {
            write(self, item);
        }
    }
}

fn write_config(f: &mut Fingerprint, config: &ProbeConfig) {
    let ProbeConfig {
        region,
        module,
        targets,
    } = config;
    f.str(region.as_str());
    match module {
        ProbeModule::Icmp(icmp) => {
            f.tag(0);
            write_icmp_module(f, icmp);
        }
        ProbeModule::Http(http) => {
            f.tag(1);
            write_http_module(f, http);
        }
    }
    // A target is its raw text parsed for the module's kind, so the text says it all.
    f.list(targets, |f, target| f.str(target.raw()));
}

fn write_icmp_module(f: &mut Fingerprint, module: &IcmpModule) {
    let IcmpModule {
        packet_count,
        interval,
        payload_size,
    } = module;
    f.u64(u64::from(*packet_count));
    f.duration(*interval);
    f.u64(u64::from(*payload_size));
}

/// Every field is destructured, so a field added to the module fails to compile here until it
/// is part of the fingerprint.
fn write_http_module(f: &mut Fingerprint, module: &HttpModule) {
    let HttpModule {
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
    } = module;
    f.list(valid_status_codes, |f, code| f.u64(u64::from(*code)));
    f.list(valid_http_versions, |f, version| {
        f.tag(match version {
            HttpVersion::Http10 => 0,
            HttpVersion::Http11 => 1,
            HttpVersion::Http2 => 2,
        });
    });
    f.tag(match preferred_ip_protocol {
        IpProtocol::Ip4 => 4,
        IpProtocol::Ip6 => 6,
    });
    f.bool(*ip_protocol_fallback);
    f.bool(*skip_resolve_phase_with_proxy);
    f.bool(*no_follow_redirects);
    f.bool(*fail_if_ssl);
    f.bool(*fail_if_not_ssl);
    f.str(method);
    f.list(headers, |f, (name, value)| {
        f.str(name);
        f.str(value);
    });
    f.option(body.as_ref(), |f, body| f.str(body));
    f.list(fail_if_body_matches_regexp, |f, regex| {
        f.str(regex.as_str())
    });
    f.list(fail_if_body_not_matches_regexp, |f, regex| {
        f.str(regex.as_str());
    });
    f.list(fail_if_header_matches, write_header_match);
    f.list(fail_if_header_not_matches, write_header_match);
    f.tag(match compression {
        Compression::Identity => 0,
        Compression::Gzip => 1,
        Compression::Deflate => 2,
        Compression::Brotli => 3,
    });
    f.option(body_size_limit.as_ref(), |f, limit| f.u64(*limit));
    write_client_config(f, client);
}

fn write_header_match(f: &mut Fingerprint, header_match: &HeaderMatch) {
    let HeaderMatch {
        header,
        regexp,
        allow_missing,
    } = header_match;
    f.str(header);
    f.str(regexp.as_str());
    f.bool(*allow_missing);
}

fn write_client_config(f: &mut Fingerprint, client: &HttpClientConfig) {
    let HttpClientConfig {
        basic_auth,
        bearer_token,
        tls,
        proxy_url,
        follow_redirects,
        enable_http2,
    } = client;
    f.option(basic_auth.as_ref(), |f, auth| {
        let BasicAuth { username, password } = auth;
        f.str(username);
        f.option(password.as_ref(), write_secret);
    });
    f.option(bearer_token.as_ref(), write_secret);
    let TlsConfig {
        ca_file,
        cert_file,
        key_file,
        server_name,
        insecure_skip_verify,
        min_version,
    } = tls;
    for file in [ca_file, cert_file, key_file] {
        f.option(file.as_ref(), write_file);
    }
    f.option(server_name.as_ref(), |f, text| f.str(text));
    f.bool(*insecure_skip_verify);
    f.option(min_version.as_ref(), |f, version| {
        f.tag(match version {
            TlsMinVersion::Tls12 => 12,
            TlsMinVersion::Tls13 => 13,
        });
    });
    f.option(proxy_url.as_ref(), |f, url| f.str(url));
    f.bool(*follow_redirects);
    f.bool(*enable_http2);
}

fn write_secret(f: &mut Fingerprint, secret: &SecretSource) {
    match secret {
        SecretSource::Inline(secret) => {
            f.tag(0);
            f.str(secret.expose());
        }
        SecretSource::File(file) => {
            f.tag(1);
            write_file(f, file);
        }
    }
}

/// A referenced file by path and contents: a changed file that the server re-read at a reload
/// makes a new revision, which reaches the agents.
fn write_file(f: &mut Fingerprint, file: &FileRef) {
    f.str(file.path());
    f.option(file.contents(), |f, contents| f.str(contents.expose()));
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::http_module::Secret;

    fn region(name: &str) -> Region {
        Region::new(name).unwrap()
    }

    fn agent(region_name: &str, ip: &str) -> AgentId {
        AgentId::new(region(region_name), ip.parse().unwrap())
    }

    fn icmp_block(region_name: &str, targets: &[&str]) -> ProbeConfig {
        icmp_block_with(region_name, IcmpModule::default(), targets)
    }

    fn icmp_block_with(region_name: &str, module: IcmpModule, targets: &[&str]) -> ProbeConfig {
        ProbeConfig {
            region: region(region_name),
            module: ProbeModule::Icmp(module),
            targets: targets
                .iter()
                .map(|t| Target::parse(ProbeKind::Icmp, t).unwrap())
                .collect(),
        }
    }

    fn http_block(region_name: &str, targets: &[&str]) -> ProbeConfig {
        http_block_with(region_name, HttpModule::default(), targets)
    }

    fn http_block_with(region_name: &str, module: HttpModule, targets: &[&str]) -> ProbeConfig {
        ProbeConfig {
            region: region(region_name),
            module: ProbeModule::Http(module.into()),
            targets: targets
                .iter()
                .map(|t| Target::parse(ProbeKind::Http, t).unwrap())
                .collect(),
        }
    }

    /// The pool rendered compactly: one `region kind target,target` line per block.
    fn render(configs: &[ProbeConfig]) -> Vec<String> {
        configs
            .iter()
            .map(|config| {
                let targets: Vec<&str> = config.targets.iter().map(Target::raw).collect();
                format!("{} {} {}", config.region, config.kind(), targets.join(","))
            })
            .collect()
    }

    fn render_regions(pool: &TargetPool, live: &[AgentId]) -> Vec<String> {
        let all: Vec<ProbeConfig> = pool.regions(live).into_values().flatten().collect();
        render(&all)
    }

    fn file() -> Vec<ProbeConfig> {
        vec![
            http_block("eu", &["https://eu.example.com"]),
            icmp_block("eu", &["10.9.9.9"]),
            icmp_block("virtual", &["192.0.2.1", "example.net"]),
            http_block("us", &["us.example.com"]),
        ]
    }

    #[test]
    fn discovery_parses_the_flag_values_only() {
        assert_eq!("static".parse(), Ok(Discovery::Static));
        assert_eq!("dynamic".parse(), Ok(Discovery::Dynamic));
        assert_eq!(Discovery::default(), Discovery::Dynamic);
        for bad in ["", "Static", "DYNAMIC", "dynamic ", "file"] {
            let err = bad.parse::<Discovery>().unwrap_err();
            assert_eq!(err.given, bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn static_pool_is_the_file_and_ignores_agents() {
        let pool = TargetPool::new(file(), Discovery::Static, false);
        let live = [agent("eu", "10.0.0.1"), agent("ap", "10.0.0.2")];
        let expected = [
            "eu icmp 10.9.9.9",
            "eu http https://eu.example.com",
            "us http us.example.com",
            "virtual icmp 192.0.2.1,example.net",
        ];
        assert_eq!(render_regions(&pool, &live), expected);
        assert_eq!(render_regions(&pool, &[]), expected);
        assert_eq!(pool.revision(&live), pool.revision(&[]));
    }

    #[test]
    fn dynamic_agents_replace_the_file_icmp_block_and_keep_http() {
        let pool = TargetPool::new(file(), Discovery::Dynamic, false);
        let live = [
            agent("eu", "10.0.0.9"),
            agent("eu", "10.0.0.10"),
            agent("eu", "10.0.0.9"),
            agent("eu", "::1"),
            agent("ap", "10.1.0.1"),
        ];
        assert_eq!(
            render_regions(&pool, &live),
            [
                "ap icmp 10.1.0.1",
                "eu icmp 10.0.0.9,10.0.0.10,::1",
                "eu http https://eu.example.com",
                "us http us.example.com",
                "virtual icmp 192.0.2.1,example.net",
            ]
        );
        let eu = &pool.regions(&live)[&region("eu")];
        assert_eq!(eu[0].module, ProbeModule::Icmp(IcmpModule::default()));
        assert_eq!(eu[0].region, region("eu"));
    }

    #[test]
    fn virtual_regions_are_probed_by_every_agent() {
        let pool = TargetPool::new(file(), Discovery::Dynamic, false);
        let live = [agent("eu", "10.0.0.1"), agent("us", "10.0.0.2")];
        for agent_region in ["eu", "us", "ap"] {
            let targets = render(&pool.targets_for(&region(agent_region), &live));
            assert!(
                targets.contains(&"virtual icmp 192.0.2.1,example.net".to_owned()),
                "{agent_region}: {targets:?}"
            );
        }
    }

    #[test]
    fn agents_skip_their_own_region_for_icmp_and_http() {
        let pool = TargetPool::new(file(), Discovery::Dynamic, false);
        let live = [agent("eu", "10.0.0.1"), agent("us", "10.0.0.2")];
        assert_eq!(
            render(&pool.targets_for(&region("eu"), &live)),
            [
                "us icmp 10.0.0.2",
                "us http us.example.com",
                "virtual icmp 192.0.2.1,example.net",
            ]
        );
        assert_eq!(
            render(&pool.targets_for(&region("us"), &live)),
            [
                "eu icmp 10.0.0.1",
                "eu http https://eu.example.com",
                "virtual icmp 192.0.2.1,example.net",
            ]
        );
    }

    #[test]
    fn probe_self_includes_the_own_region_and_the_own_ip() {
        let pool = TargetPool::new(file(), Discovery::Dynamic, true);
        let live = [agent("eu", "10.0.0.1"), agent("us", "10.0.0.2")];
        let eu = render(&pool.targets_for(&region("eu"), &live));
        assert_eq!(eu, render_regions(&pool, &live));
        assert!(eu.contains(&"eu icmp 10.0.0.1".to_owned()));
        assert!(eu.contains(&"eu http https://eu.example.com".to_owned()));
        assert!(pool.probe_self());
        assert_eq!(
            pool.revision_for(&region("eu"), &live),
            pool.revision(&live)
        );
    }

    #[test]
    fn reload_keeps_discovered_targets() {
        let mut pool = TargetPool::new(file(), Discovery::Dynamic, false);
        let live = [agent("eu", "10.0.0.1"), agent("ap", "10.1.0.1")];
        pool.replace_file_configs(vec![http_block("eu", &["eu2.example.com"])]);
        assert_eq!(
            render_regions(&pool, &live),
            [
                "ap icmp 10.1.0.1",
                "eu icmp 10.0.0.1",
                "eu http eu2.example.com",
            ]
        );
        pool.replace_file_configs(Vec::new());
        assert_eq!(
            render_regions(&pool, &live),
            ["ap icmp 10.1.0.1", "eu icmp 10.0.0.1"]
        );
    }

    #[test]
    fn a_dead_region_loses_its_discovered_icmp_but_keeps_its_file_http() {
        let pool = TargetPool::new(
            vec![
                http_block("us", &["us.example.com"]),
                icmp_block("eu", &["10.9.9.9"]),
            ],
            Discovery::Dynamic,
            false,
        );
        let before = [agent("us", "10.0.0.2"), agent("ap", "10.1.0.1")];
        assert_eq!(
            render_regions(&pool, &before),
            [
                "ap icmp 10.1.0.1",
                "eu icmp 10.9.9.9",
                "us icmp 10.0.0.2",
                "us http us.example.com",
            ]
        );
        // Every agent of `us` and `ap` died: `us` keeps its file HTTP block, `ap` is gone.
        let after = [agent("eu", "10.0.0.1")];
        assert_eq!(
            render_regions(&pool, &after),
            ["eu icmp 10.0.0.1", "us http us.example.com"]
        );
        // And when `eu`'s agents die too, its file block (a virtual region again) comes back.
        assert_eq!(
            render_regions(&pool, &[]),
            ["eu icmp 10.9.9.9", "us http us.example.com"]
        );
    }

    #[test]
    fn a_later_file_block_of_the_same_region_and_kind_replaces_the_first() {
        let pool = TargetPool::new(
            vec![
                icmp_block("eu", &["10.0.0.1"]),
                http_block("eu", &["a.example.com"]),
                icmp_block("eu", &["10.0.0.2"]),
            ],
            Discovery::Static,
            false,
        );
        assert_eq!(
            render_regions(&pool, &[]),
            ["eu icmp 10.0.0.2", "eu http a.example.com"]
        );
    }

    #[test]
    fn revision_follows_the_output() {
        let mut pool = TargetPool::new(file(), Discovery::Dynamic, false);
        let live = [agent("eu", "10.0.0.1")];
        let base = pool.revision(&live);
        // Same output, same revision: duplicates, order, a reload with the same file.
        assert_eq!(
            pool.revision(&[agent("eu", "10.0.0.1"), agent("eu", "10.0.0.1")]),
            base
        );
        pool.replace_file_configs(file().into_iter().rev().collect());
        assert_eq!(pool.revision(&live), base);
        // The file's ICMP block of `eu` is hidden by discovery, so changing it changes nothing.
        let mut hidden_change = file();
        hidden_change[1] = icmp_block("eu", &["10.8.8.8"]);
        pool.replace_file_configs(hidden_change);
        assert_eq!(pool.revision(&live), base);
        pool.replace_file_configs(file());

        // Any visible change moves it.
        let mut seen = BTreeSet::from([base]);
        let mut changed = |revision: PoolRevision, what: &str| {
            assert!(seen.insert(revision), "{what} kept an earlier revision");
        };
        changed(pool.revision(&[]), "agent gone");
        changed(pool.revision(&[agent("eu", "10.0.0.2")]), "agent moved");
        changed(pool.revision(&[agent("ap", "10.0.0.1")]), "agent's region");
        changed(
            pool.revision(&[agent("eu", "10.0.0.1"), agent("eu", "10.0.0.2")]),
            "agent added",
        );
        let mut variants: Vec<(&str, ProbeConfig)> = vec![
            ("icmp target", icmp_block("virtual", &["192.0.2.1"])),
            (
                "icmp module",
                icmp_block_with(
                    "virtual",
                    IcmpModule {
                        packet_count: 10,
                        ..IcmpModule::default()
                    },
                    &["192.0.2.1", "example.net"],
                ),
            ),
            ("http target", http_block("us", &["http://us.example.com"])),
        ];
        let mut module = HttpModule::default();
        module.client.bearer_token = Some(SecretSource::Inline(Secret::new("token-1".into())));
        variants.push((
            "bearer token",
            http_block_with("us", module.clone(), &["us.example.com"]),
        ));
        module.client.bearer_token = Some(SecretSource::Inline(Secret::new("token-2".into())));
        variants.push((
            "bearer token value",
            http_block_with("us", module.clone(), &["us.example.com"]),
        ));
        module.fail_if_body_matches_regexp = vec![regex::Regex::new("down").unwrap()];
        variants.push((
            "body regexp",
            http_block_with("us", module, &["us.example.com"]),
        ));
        for (what, replacement) in variants {
            let index = file()
                .iter()
                .position(|c| c.region == replacement.region && c.kind() == replacement.kind())
                .unwrap();
            let mut configs = file();
            configs[index] = replacement;
            pool.replace_file_configs(configs);
            changed(pool.revision(&live), what);
        }
    }

    #[test]
    fn revision_for_ignores_the_own_region_without_probe_self() {
        let pool = TargetPool::new(file(), Discovery::Dynamic, false);
        let eu = region("eu");
        let one = [agent("eu", "10.0.0.1"), agent("us", "10.0.0.2")];
        let two = [agent("eu", "10.0.0.3"), agent("us", "10.0.0.2")];
        assert_eq!(pool.revision_for(&eu, &one), pool.revision_for(&eu, &two));
        assert_ne!(
            pool.revision_for(&region("us"), &one),
            pool.revision_for(&region("us"), &two)
        );
        assert_ne!(pool.revision(&one), pool.revision(&two));
    }

    #[test]
    fn revision_is_stable_across_processes() {
        // Pinned: the fingerprint must not depend on a random hasher or the Rust version.
        let pool = TargetPool::new(file(), Discovery::Dynamic, false);
        let revision = pool.revision(&[agent("eu", "10.0.0.1")]);
        assert_eq!(revision, PoolRevision(REVISION_OF_THE_TEST_FILE));
        assert_eq!(revision.to_string().len(), 16);
    }

    /// Update this only for a deliberate change of the rendering (a new module field, say).
    const REVISION_OF_THE_TEST_FILE: u64 = 0xdc7a_8042_8d47_dc07;

    // === property tests ===

    const REGIONS: [&str; 4] = ["ap", "eu", "us", "virtual"];

    fn arb_agent() -> impl Strategy<Value = AgentId> {
        (0..REGIONS.len(), 1..6_u8)
            .prop_map(|(r, host)| agent(REGIONS[r], &format!("10.0.0.{host}")))
    }

    fn arb_block() -> impl Strategy<Value = ProbeConfig> {
        (
            0..REGIONS.len(),
            any::<bool>(),
            prop::collection::btree_set(1..5_u8, 0..3),
        )
            .prop_map(|(r, is_icmp, hosts)| {
                let targets: Vec<String> = hosts.iter().map(|h| format!("192.0.2.{h}")).collect();
                let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
                if is_icmp {
                    icmp_block(REGIONS[r], &targets)
                } else {
                    http_block(REGIONS[r], &targets)
                }
            })
    }

    /// File blocks with at most one block per (region, kind), so their order does not matter.
    fn arb_file() -> impl Strategy<Value = Vec<ProbeConfig>> {
        prop::collection::vec(arb_block(), 0..6).prop_map(|blocks| {
            let mut seen = BTreeSet::new();
            blocks
                .into_iter()
                .filter(|b| seen.insert((b.region.clone(), b.kind())))
                .collect()
        })
    }

    fn arb_inputs() -> impl Strategy<Value = (Vec<ProbeConfig>, Vec<AgentId>)> {
        (arb_file(), prop::collection::vec(arb_agent(), 0..8))
    }

    proptest! {
        #[test]
        fn input_order_does_not_matter(
            (file, live) in arb_inputs(),
            dynamic in any::<bool>(),
            probe_self in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let discovery = if dynamic { Discovery::Dynamic } else { Discovery::Static };
            let shuffled_file = shuffle(file.clone(), seed);
            let shuffled_live = shuffle(live.clone(), seed.rotate_left(17));
            let a = TargetPool::new(file, discovery, probe_self);
            let b = TargetPool::new(shuffled_file, discovery, probe_self);
            prop_assert_eq!(a.regions(&live), b.regions(&shuffled_live));
            prop_assert_eq!(a.revision(&live), b.revision(&shuffled_live));
            for name in REGIONS {
                let r = region(name);
                prop_assert_eq!(a.targets_for(&r, &live), b.targets_for(&r, &shuffled_live));
                prop_assert_eq!(a.revision_for(&r, &live), b.revision_for(&r, &shuffled_live));
            }
        }

        #[test]
        fn revision_changes_exactly_when_the_output_does(
            (file_a, live_a) in arb_inputs(),
            (file_b, live_b) in arb_inputs(),
            agents_only in any::<bool>(),
        ) {
            // Half the cases share the file, so equal outputs are common.
            let file_b = if agents_only { file_a.clone() } else { file_b };
            let a = TargetPool::new(file_a, Discovery::Dynamic, false);
            let b = TargetPool::new(file_b, Discovery::Dynamic, false);
            let same_output = a.regions(&live_a) == b.regions(&live_b);
            prop_assert_eq!(same_output, a.revision(&live_a) == b.revision(&live_b));
            for name in REGIONS {
                let r = region(name);
                let same_targets = a.targets_for(&r, &live_a) == b.targets_for(&r, &live_b);
                prop_assert_eq!(
                    same_targets,
                    a.revision_for(&r, &live_a) == b.revision_for(&r, &live_b)
                );
            }
        }
    }

    /// A deterministic Fisher–Yates shuffle driven by a xorshift generator.
    fn shuffle<T>(mut items: Vec<T>, seed: u64) -> Vec<T> {
        let mut state = seed | 1;
        for i in (1..items.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let j = usize::try_from(state % (i as u64 + 1)).unwrap();
            items.swap(i, j);
        }
        items
    }
}
