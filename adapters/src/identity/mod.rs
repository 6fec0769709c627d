//! Who an agent is: its region ([`detect_region`]) and the IP address it reports
//! ([`agent_ip`]). Both are worked out once at start-up and label everything the agent sends.
//!
//! Every network question here (cloud metadata, the public-IP echo) goes through one small
//! plain-HTTP client with a timeout and a cap on the answer, and every answer is trimmed and
//! validated before it is used. Endpoints and the environment are passed in, so tests talk
//! only to fakes on loopback.

mod fetch;
mod ip;
mod region;

pub use fetch::FetchError;
pub use ip::{
    AgentIp, DEFAULT_ECHO_TIMEOUT, DEFAULT_ECHO_URL, EchoError, IntranetIpError, IpOptions,
    IpSource, MAX_ECHO_ANSWER, NetworkType, NetworkTypeError, agent_ip, echo_ip, intranet_ip,
};
pub use region::{
    CloudProvider, DEFAULT_REGION, DetectedRegion, DetectionTimeouts, MAX_METADATA_ANSWER,
    MAX_METADATA_JSON, MetadataEndpoint, REGION_ENV, RegionConfigError, RegionSource,
    default_region, detect_region,
};
