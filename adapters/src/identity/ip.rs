//! Which IP address an agent reports as its own: the address other agents ping and the
//! server lists it under.
//!
//! `-agent.ip` overrides everything. Otherwise `-agent.icmp.network-type` decides:
//! `intranet` is the local address of the interface that routes to the server (a connected
//! UDP socket's local address: the kernel picks it, no packet is sent, IPv4 or IPv6), instead
//! of Go's "first non-loopback IPv4 in interface order", which could be `docker0`. `public` is
//! the address the server sees the agent connect from, when the caller knows it; else an echo
//! service's answer, validated as an IP (Go used curl's output verbatim); else the intranet
//! address, with a warning.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::time::Duration;

use hyper::Method;

use super::fetch::{FetchError, fetch};

/// The default echo service for `public` mode: answers with the caller's address.
pub const DEFAULT_ECHO_URL: &str = "http://ifconfig.me/ip";

/// The default time limit of the echo request (as Go's 1 s curl).
pub const DEFAULT_ECHO_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest echo answer read, in bytes (an IPv6 address is at most 45 characters).
pub const MAX_ECHO_ANSWER: usize = 1024;

/// How the agent's address is chosen (`-agent.icmp.network-type`).
#[derive(Clone, Copy, Debug, Default, Eq, Hash, PartialEq)]
pub enum NetworkType {
    /// The local address towards the server (the default).
    #[default]
    Intranet,
    /// The address the outside world sees.
    Public,
}

/// A network type other than `intranet` or `public`.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error(
    "-agent.icmp.network-type is {value:?}; expected \"intranet\" (the local address towards the server) or \"public\" (the address the server sees)"
)]
pub struct NetworkTypeError {
    /// The value as given.
    pub value: String,
}

impl FromStr for NetworkType {
    type Err = NetworkTypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "intranet" => Ok(Self::Intranet),
            "public" => Ok(Self::Public),
            _ => Err(NetworkTypeError {
                value: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for NetworkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Intranet => "intranet",
            Self::Public => "public",
        })
    }
}

/// What [`agent_ip`] needs to know.
#[derive(Clone, Debug)]
pub struct IpOptions {
    /// `-agent.ip`: used as is when given.
    pub override_ip: Option<IpAddr>,
    /// `-agent.icmp.network-type`.
    pub network_type: NetworkType,
    /// The server's address (resolved), for the intranet route.
    pub server: SocketAddr,
    /// The address the server saw the agent connect from (the link's welcome), if known.
    pub observed: Option<IpAddr>,
    /// The echo service asked in `public` mode when `observed` is unknown.
    pub echo_url: String,
    /// The echo request's time limit.
    pub echo_timeout: Duration,
}

impl IpOptions {
    /// Options for `network_type` towards `server`, with no override, no observed address
    /// and the default echo service.
    #[must_use]
    pub fn new(network_type: NetworkType, server: SocketAddr) -> Self {
        Self {
            override_ip: None,
            network_type,
            server,
            observed: None,
            echo_url: DEFAULT_ECHO_URL.to_owned(),
            echo_timeout: DEFAULT_ECHO_TIMEOUT,
        }
    }

    /// Whether the agent's address is the one the server sees it connect from, followed
    /// when that changes (decision 12): in `public` mode without `-agent.ip`.
    #[must_use]
    pub fn follows_server_view(&self) -> bool {
        self.network_type == NetworkType::Public && self.override_ip.is_none()
    }
}

/// Where the agent's address came from.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum IpSource {
    /// The `-agent.ip` flag.
    Override,
    /// The local address towards the server (`intranet` mode).
    Intranet,
    /// The address the server saw (`public` mode).
    ServerObserved,
    /// The echo service (`public` mode, the server's view unknown).
    Echo,
    /// `public` mode, but neither the server's view nor the echo service gave an address.
    IntranetFallback,
}

/// The agent's address and where it came from.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct AgentIp {
    /// The address.
    pub ip: IpAddr,
    /// Its source.
    pub source: IpSource,
}

/// No local address routes to the server.
#[derive(Debug, thiserror::Error)]
#[error("cannot find the local address that routes to the server {server}: {cause}; set -agent.ip")]
pub struct IntranetIpError {
    /// The server's address.
    pub server: SocketAddr,
    /// The socket error (in the message, not a `source`: a chain says it once).
    pub cause: std::io::Error,
}

/// Why the echo service gave no address.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    /// The request failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The service answered with an HTTP error.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The echo URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The answer is not an IP address.
    #[error("{url} answered {answer:?}, which is not an IP address")]
    NotAnIp {
        /// The echo URL.
        url: String,
        /// The answer (cut to 64 characters).
        answer: String,
    },
}

/// Works out the agent's address: the override, else by network type (see the module
/// documentation). Only the echo request touches the network.
///
/// # Errors
/// [`IntranetIpError`] when the intranet address is needed (intranet mode, or public mode
/// with nothing better) and no local address routes to the server.
pub async fn agent_ip(options: &IpOptions) -> Result<AgentIp, IntranetIpError> {
    if let Some(ip) = options.override_ip {
        return Ok(AgentIp {
            ip,
            source: IpSource::Override,
        });
    }
    if options.network_type == NetworkType::Intranet {
        return Ok(AgentIp {
            ip: intranet_ip(options.server)?,
            source: IpSource::Intranet,
        });
    }
    if let Some(observed) = options.observed {
        return Ok(AgentIp {
            ip: observed.to_canonical(),
            source: IpSource::ServerObserved,
        });
    }
    match echo_ip(&options.echo_url, options.echo_timeout).await {
        Ok(ip) => Ok(AgentIp {
            ip,
            source: IpSource::Echo,
        }),
        Err(error) => {
            let ip = intranet_ip(options.server)?;
            tracing::warn!(
                %error,
                intranet_ip = %ip,
                "public network type, but the public address is unknown; reporting the intranet address"
            );
            Ok(AgentIp {
                ip,
                source: IpSource::IntranetFallback,
            })
        }
    }
}

/// The local address the kernel would send from towards `server`: a UDP socket connected to
/// it (which sends nothing) and its local address.
///
/// # Errors
/// [`IntranetIpError`] when there is no route (or no address of that family).
pub fn intranet_ip(server: SocketAddr) -> Result<IpAddr, IntranetIpError> {
    let error = |cause| IntranetIpError { server, cause };
    let unspecified: IpAddr = match server {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(unspecified, 0)).map_err(error)?;
    socket.connect(server).map_err(error)?;
    let local = socket.local_addr().map_err(error)?.ip();
    if local.is_unspecified() {
        return Err(error(std::io::Error::other(
            "the kernel chose no source address",
        )));
    }
    Ok(local)
}

/// Asks the echo service at `url` for the agent's address.
///
/// # Errors
/// [`EchoError`] when the request fails, the status is not 200 or the trimmed answer is not
/// an IP address (or is unspecified).
pub async fn echo_ip(url: &str, timeout: Duration) -> Result<IpAddr, EchoError> {
    let answer = fetch(Method::GET, url, &[], MAX_ECHO_ANSWER, timeout).await?;
    if answer.status != 200 {
        return Err(EchoError::Status {
            url: url.to_owned(),
            status: answer.status,
        });
    }
    let text = String::from_utf8_lossy(&answer.body);
    let text = text.trim();
    match text.parse::<IpAddr>() {
        Ok(ip) if !ip.is_unspecified() => Ok(ip.to_canonical()),
        _ => Err(EchoError::NotAnIp {
            url: url.to_owned(),
            answer: text.chars().take(64).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_types_parse_and_print() {
        for name in ["intranet", "public"] {
            assert_eq!(name.parse::<NetworkType>().unwrap().to_string(), name);
        }
        assert_eq!(NetworkType::default(), NetworkType::Intranet);
    }

    #[test]
    fn an_unknown_network_type_is_an_error_naming_it() {
        for bad in ["Public", "internet", "", " intranet"] {
            let error = bad.parse::<NetworkType>().unwrap_err();
            assert_eq!(error.value, bad);
            let text = error.to_string();
            assert!(
                text.contains(&format!("{bad:?}"))
                    && text.contains("-agent.icmp.network-type")
                    && text.contains("\"intranet\"")
                    && text.contains("\"public\""),
                "{text}"
            );
        }
    }
}
