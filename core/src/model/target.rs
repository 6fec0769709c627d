//! What is probed: a target as written in the probe file (or discovered), with its kind and the
//! parsed address. The raw string is kept verbatim because it is the `target_addr` label users'
//! dashboards select on (`www.example.com` and `http://www.example.com` are different series).

use std::fmt;
use std::net::IpAddr;

/// The two probe kinds; their names are the `prober_type` label values.
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub enum ProbeKind {
    /// ICMP echo: region to region.
    Icmp,
    /// HTTP(S) request with per-phase timing: region to URL.
    Http,
}

impl ProbeKind {
    /// The `prober_type` label value and probe-file spelling.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Icmp => "icmp",
            Self::Http => "http",
        }
    }
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest accepted target string, in bytes.
pub const MAX_TARGET_LEN: usize = 2048;

/// Why a target string was rejected.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum TargetError {
    /// The string is empty or only whitespace.
    #[error("target is empty")]
    Empty,
    /// The string is longer than [`MAX_TARGET_LEN`].
    #[error("target is {len} bytes long; the limit is {MAX_TARGET_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// An ICMP target that is neither an IP address nor a host name.
    #[error("ICMP target {0:?} is neither an IP address nor a valid host name{hint}", hint = non_ascii_hint(.0))]
    BadHost(String),
    /// An HTTP target that is not a valid http(s) URL.
    #[error("HTTP target {target:?} is not a valid URL: {why}")]
    BadUrl {
        /// The rejected target.
        target: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// What to do about a host name with non-ASCII characters (empty for others).
fn non_ascii_hint(host: &str) -> &'static str {
    if host.is_ascii() {
        ""
    } else {
        "; write an internationalised name in its ASCII (punycode, xn--) form"
    }
}

/// Where an ICMP probe goes.
#[derive(Clone, Debug, Eq, Hash, PartialEq)]
pub enum Host {
    /// An address literal: nothing to resolve.
    Ip(IpAddr),
    /// A DNS name, resolved (and timed) before each probe.
    Name(String),
}

impl Host {
    /// Parses an IP literal (IPv6 with or without brackets) or a DNS host name.
    ///
    /// # Errors
    /// [`TargetError::BadHost`] for anything else.
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        let unbracketed = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        if is_host_name(text) {
            Ok(Self::Name(text.to_ascii_lowercase()))
        } else {
            Err(TargetError::BadHost(text.to_owned()))
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// A DNS name: dot-separated labels of 1 to 63 letters, digits, `-` or `_`, 253 bytes at most,
/// an optional trailing dot.
fn is_host_name(text: &str) -> bool {
    let name = text.strip_suffix('.').unwrap_or(text);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The scheme of an HTTP target.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Scheme {
    /// Plain HTTP (default port 80).
    Http,
    /// HTTP over TLS (default port 443).
    Https,
}

impl Scheme {
    /// The port used when the URL names none.
    #[must_use]
    pub const fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }

    /// `http` or `https`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// An http(s) URL, parsed enough to dial it ourselves: resolve `host`, connect to `port`,
/// send `path_and_query` with the original host in `Host` and SNI.
#[derive(Clone, Debug, Eq, Hash, PartialEq)]
pub struct HttpUrl {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// The host, without brackets for IPv6 literals.
    pub host: Host,
    /// The explicit port, or the scheme's default.
    pub port: u16,
    /// Whether the URL spelled the port out (then the `Host` header carries it).
    pub explicit_port: bool,
    /// Path and query, starting with `/`; fragments are dropped.
    pub path_and_query: String,
}

impl HttpUrl {
    /// Parses a target the way the Go system does: `http://` is prepended when the string has
    /// no `http://` or `https://` prefix.
    ///
    /// # Errors
    /// [`TargetError::BadUrl`] naming what is wrong.
    pub fn parse(target: &str) -> Result<Self, TargetError> {
        let bad = |why| TargetError::BadUrl {
            target: target.to_owned(),
            why,
        };
        // Compared as bytes: a character after the scheme may be several bytes long, so a
        // string slice at a fixed length could fall inside it.
        let has_scheme = |scheme: &str| {
            target
                .as_bytes()
                .get(..scheme.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(scheme.as_bytes()))
        };
        let (scheme, rest) = if has_scheme("https://") {
            (Scheme::Https, target.get(8..).unwrap_or_default())
        } else if has_scheme("http://") {
            (Scheme::Http, target.get(7..).unwrap_or_default())
        } else if target.contains("://") {
            return Err(bad("only http:// and https:// are supported"));
        } else {
            (Scheme::Http, target)
        };
        if rest
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad("it contains whitespace or control characters"));
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let split_at = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split_at);
        if authority.contains('@') {
            return Err(bad(
                "credentials in the URL are not supported; use basic_auth",
            ));
        }
        let (host_text, port_text) =
            split_host_port(authority).ok_or_else(|| bad("the host is malformed"))?;
        if host_text.is_empty() {
            return Err(bad("the host is empty"));
        }
        if !host_text.is_ascii() {
            return Err(bad(
                "the host has non-ASCII characters; write an internationalised name in its \
                 ASCII (punycode, xn--) form",
            ));
        }
        let host = Host::parse(host_text)
            .map_err(|_| bad("the host is neither an IP address nor a host name"))?;
        let port = match port_text {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
            None => scheme.default_port(),
        };
        let path_and_query = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        Ok(Self {
            scheme,
            host,
            port,
            explicit_port: port_text.is_some(),
            path_and_query,
        })
    }

    /// The `Host` header value: the host, with the port when the URL named one.
    #[must_use]
    pub fn host_header(&self) -> String {
        let host = match &self.host {
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
            other => other.to_string(),
        };
        if self.explicit_port {
            format!("{host}:{}", self.port)
        } else {
            host
        }
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.host_header(),
            self.path_and_query
        )
    }
}

/// Splits `host[:port]` or `[v6]:port`; `None` when brackets are unbalanced.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => after.strip_prefix(':').map(|port| (host, Some(port))),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, Some(port))),
        Some(_) => None,
        None => Some((authority, None)),
    }
}

/// The parsed destination of a target.
#[derive(Clone, Debug, Eq, Hash, PartialEq)]
pub enum Destination {
    /// An ICMP host.
    Icmp(Host),
    /// An HTTP URL.
    Http(HttpUrl),
}

/// One target of the pool: the string as configured (the `target_addr` label) and where it goes.
#[derive(Clone, Debug, Eq, Hash, PartialEq)]
pub struct Target {
    raw: String,
    destination: Destination,
}

impl Target {
    /// Parses `raw` as a target of `kind`; surrounding whitespace is an error, not trimmed,
    /// because the raw string becomes a label.
    ///
    /// # Errors
    /// [`TargetError`] naming what is wrong.
    pub fn parse(kind: ProbeKind, raw: &str) -> Result<Self, TargetError> {
        if raw.trim().is_empty() {
            return Err(TargetError::Empty);
        }
        if raw.len() > MAX_TARGET_LEN {
            return Err(TargetError::TooLong { len: raw.len() });
        }
        let destination = match kind {
            ProbeKind::Icmp => Destination::Icmp(Host::parse(raw)?),
            ProbeKind::Http => Destination::Http(HttpUrl::parse(raw)?),
        };
        Ok(Self {
            raw: raw.to_owned(),
            destination,
        })
    }

    /// An ICMP target for a discovered agent address.
    #[must_use]
    pub fn icmp_ip(ip: IpAddr) -> Self {
        Self {
            raw: ip.to_string(),
            destination: Destination::Icmp(Host::Ip(ip)),
        }
    }

    /// The string as configured: the `target_addr` label.
    #[must_use]
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The probe kind.
    #[must_use]
    pub fn kind(&self) -> ProbeKind {
        match self.destination {
            Destination::Icmp(_) => ProbeKind::Icmp,
            Destination::Http(_) => ProbeKind::Http,
        }
    }

    /// Where the probe goes.
    #[must_use]
    pub fn destination(&self) -> &Destination {
        &self.destination
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_targets_are_ips_or_names() {
        assert_eq!(
            Host::parse("10.0.0.1").unwrap(),
            Host::Ip("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            Host::parse("[::1]").unwrap(),
            Host::Ip("::1".parse().unwrap())
        );
        assert_eq!(
            Host::parse("WWW.Example.com.").unwrap(),
            Host::Name("www.example.com.".into())
        );
        assert!(Host::parse("bad host").is_err());
        assert!(Host::parse("-a.com").is_err());
        assert!(Host::parse("http://x").is_err());
    }

    #[test]
    fn http_targets_get_http_prepended_and_keep_the_raw_label() {
        let t = Target::parse(ProbeKind::Http, "www.baidu.com").unwrap();
        assert_eq!(t.raw(), "www.baidu.com");
        let Destination::Http(url) = t.destination() else {
            panic!("not http")
        };
        assert_eq!(url.to_string(), "http://www.baidu.com/");
        assert_eq!(url.port, 80);
    }

    #[test]
    fn http_urls_parse_ports_paths_and_v6() {
        let url = HttpUrl::parse("HTTPS://[::1]:8443/a/b?q=1#frag").unwrap();
        assert_eq!(url.scheme, Scheme::Https);
        assert_eq!(url.host, Host::Ip("::1".parse().unwrap()));
        assert_eq!((url.port, url.explicit_port), (8443, true));
        assert_eq!(url.path_and_query, "/a/b?q=1");
        assert_eq!(url.host_header(), "[::1]:8443");
        let url = HttpUrl::parse("example.com?x=y").unwrap();
        assert_eq!(url.path_and_query, "/?x=y");
        assert_eq!(url.host_header(), "example.com");
    }

    #[test]
    fn bad_urls_say_why() {
        for (input, why) in [
            ("ftp://x", "only http"),
            ("http://:80/", "host is empty"),
            ("http://a:0/", "port"),
            ("http://a:99999/", "port"),
            ("http://u:p@a/", "credentials"),
            ("http://[::1/", "malformed"),
            ("http://a b/", "whitespace"),
        ] {
            let err = HttpUrl::parse(input).unwrap_err().to_string();
            assert!(err.contains(why), "{input}: {err}");
        }
    }

    #[test]
    fn a_non_ascii_host_is_named_as_such_whatever_its_scheme_and_bytes() {
        // "é" is two bytes: the eighth byte of "http://éxample.com/" is inside it.
        for input in [
            "http://éxample.com/",
            "HTTP://éxample.com/",
            "https://éxample.com/",
            "https://日本.example/",
            "éxample.com",
        ] {
            let err = HttpUrl::parse(input).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{input:?}")) && err.contains("non-ASCII characters"),
                "{input}: {err}"
            );
            assert!(!err.contains("only http"), "{input}: {err}");
        }
        // Scheme and bytes of every length near the prefix: no panic, a reason each.
        for input in ["h", "http:/", "http://", "https:/é", "httpé://x", "é://x"] {
            let _ = HttpUrl::parse(input);
        }
        assert!(
            HttpUrl::parse("httpé://x")
                .unwrap_err()
                .to_string()
                .contains("only http")
        );
        let icmp = Target::parse(ProbeKind::Icmp, "éxample.com")
            .unwrap_err()
            .to_string();
        assert!(icmp.contains("punycode"), "{icmp}");
    }

    #[test]
    fn targets_reject_blank_and_huge_strings() {
        assert_eq!(
            Target::parse(ProbeKind::Icmp, "  "),
            Err(TargetError::Empty)
        );
        let long = "a".repeat(MAX_TARGET_LEN + 1);
        assert!(matches!(
            Target::parse(ProbeKind::Http, &long),
            Err(TargetError::TooLong { .. })
        ));
    }
}
