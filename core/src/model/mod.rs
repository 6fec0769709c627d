//! Domain types: regions, agents, targets, probe settings and probe results.
//! They are plain values: not serialisable (the wire and the probe file have their own types)
//! and free of I/O.

pub mod agent;
pub mod http_module;
pub mod icmp_settings;
pub mod probe_config;
pub mod region;
pub mod result;
pub mod setting;
pub mod target;
pub mod time;

pub use agent::{AgentId, AgentVersion};
pub use http_module::HttpModule;
pub use icmp_settings::{
    DEFAULT_PROBE_INTERVAL, IcmpModule, IcmpSettings, MAX_PROBE_INTERVAL, MIN_PROBE_INTERVAL,
    probe_timeout,
};
pub use probe_config::{ProbeConfig, ProbeModule};
pub use region::{Region, RegionError};
pub use result::{
    HttpFailure, HttpPhases, HttpResult, IcmpFailure, IcmpResult, ProbeOutcome, ProbeResult,
    TlsInfo, TlsVersion,
};
pub use target::{Destination, Host, HttpUrl, ProbeKind, Scheme, Target, TargetError};
pub use time::UnixMillis;
