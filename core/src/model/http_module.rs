//! The probe file's `http:` block, validated: the blackbox_exporter `http` module options the
//! HTTP prober honours. Built by `probe_file` (from YAML) and by `wire` (from the pool an agent
//! receives); every field is already checked, so the prober never has to.

use std::fmt;
use std::sync::Arc;

use regex::Regex;

/// Which address family to resolve first.
#[derive(Clone, Copy, Debug, Default, Eq, Hash, PartialEq)]
pub enum IpProtocol {
    /// IPv4 (`ip4`, the default).
    #[default]
    Ip4,
    /// IPv6 (`ip6`).
    Ip6,
}

/// Response-body decoding the prober applies (`compression:`).
#[derive(Clone, Copy, Debug, Default, Eq, Hash, PartialEq)]
pub enum Compression {
    /// No decoding and no `Accept-Encoding` (`""` or `identity`).
    #[default]
    Identity,
    /// `gzip`.
    Gzip,
    /// `deflate`.
    Deflate,
    /// `br`.
    Brotli,
}

impl Compression {
    /// The `compression:` spelling.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Gzip => "gzip",
            Self::Deflate => "deflate",
            Self::Brotli => "br",
        }
    }
}

/// HTTP protocol versions accepted by `valid_http_versions`.
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub enum HttpVersion {
    /// `HTTP/1.0`.
    Http10,
    /// `HTTP/1.1`.
    Http11,
    /// `HTTP/2.0` (blackbox spelling; `HTTP/2` is accepted too).
    Http2,
}

impl HttpVersion {
    /// Parses the blackbox spellings.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "HTTP/1.0" => Some(Self::Http10),
            "HTTP/1.1" => Some(Self::Http11),
            "HTTP/2" | "HTTP/2.0" => Some(Self::Http2),
            _ => None,
        }
    }

    /// The canonical spelling.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Http10 => "HTTP/1.0",
            Self::Http11 => "HTTP/1.1",
            Self::Http2 => "HTTP/2.0",
        }
    }
}

/// TLS protocol versions (`min_version:`); rustls speaks only these two.
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub enum TlsMinVersion {
    /// `TLS12`.
    Tls12,
    /// `TLS13`.
    Tls13,
}

/// A secret from the probe file (password, bearer token, a file's contents). `Debug` never
/// shows it, so it cannot reach a log by accident. Shared, not copied, when cloned: a CA
/// bundle named by many blocks is held once.
#[derive(Clone, Eq, Hash, PartialEq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value.
    #[must_use]
    pub fn new(value: String) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that sends it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A file the probe file names (`bearer_token_file`, `password_file`, and `tls_config`'s
/// `ca_file`, `cert_file` and `key_file`): its path as written, and its contents once the
/// **server** has read it. The server reads every such file when it loads the probe file and
/// ships the contents over the encrypted link; an agent never opens a path the server names
/// (a hostile or mistaken probe file could otherwise make every agent send its own secrets to
/// a URL, or hang on a FIFO). A reference without contents (from a server too old to send
/// them) makes the probes that need it fail, and the agent says why.
#[derive(Clone, Debug, Eq, Hash, PartialEq)]
pub struct FileRef {
    path: String,
    contents: Option<Secret>,
}

impl FileRef {
    /// A file named by the probe file, not read yet.
    #[must_use]
    pub fn named(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            contents: None,
        }
    }

    /// A file with the contents the server read.
    #[must_use]
    pub fn with_contents(path: impl Into<String>, contents: Secret) -> Self {
        Self {
            path: path.into(),
            contents: Some(contents),
        }
    }

    /// The path as the probe file wrote it.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What the server read, if it did.
    #[must_use]
    pub fn contents(&self) -> Option<&Secret> {
        self.contents.as_ref()
    }

    /// Records what the server read.
    pub fn set_contents(&mut self, contents: Secret) {
        self.contents = Some(contents);
    }
}

/// `text` without one trailing line end (`\n` or `\r\n`): how a secret is read from a file,
/// here and for the link's token.
#[must_use]
pub fn without_line_end(text: &str) -> &str {
    text.strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text)
}

/// A secret given inline or as a file (read by the server, see [`FileRef`]).
#[derive(Clone, Debug, Eq, Hash, PartialEq)]
pub enum SecretSource {
    /// The value itself.
    Inline(Secret),
    /// A file whose content (trimmed of one trailing newline) is the secret.
    File(FileRef),
}

impl SecretSource {
    /// The secret, trimmed of one trailing newline for a file; `None` for a file whose
    /// contents did not come.
    #[must_use]
    pub fn value(&self) -> Option<&str> {
        match self {
            Self::Inline(secret) => Some(secret.expose()),
            Self::File(file) => file
                .contents()
                .map(|contents| without_line_end(contents.expose())),
        }
    }
}

/// `basic_auth:` of `http_client_config`.
#[derive(Clone, Debug, Eq, Hash, PartialEq)]
pub struct BasicAuth {
    /// User name.
    pub username: String,
    /// Password (`password` or `password_file`); may be absent.
    pub password: Option<SecretSource>,
}

/// `tls_config:` of `http_client_config`.
#[derive(Clone, Debug, Default, Eq, Hash, PartialEq)]
pub struct TlsConfig {
    /// PEM file of CA certificates that replace the system roots.
    pub ca_file: Option<FileRef>,
    /// PEM client certificate (needs `key_file`).
    pub cert_file: Option<FileRef>,
    /// PEM client key (needs `cert_file`).
    pub key_file: Option<FileRef>,
    /// SNI and verification name instead of the URL host.
    pub server_name: Option<String>,
    /// Accept any server certificate (labs only).
    pub insecure_skip_verify: bool,
    /// Lowest TLS version offered.
    pub min_version: Option<TlsMinVersion>,
}

/// `http_client_config:` (the prometheus/common subset we support).
#[derive(Clone, Debug, Eq, Hash, PartialEq)]
pub struct HttpClientConfig {
    /// `basic_auth:`.
    pub basic_auth: Option<BasicAuth>,
    /// `bearer_token:` or `bearer_token_file:`.
    pub bearer_token: Option<SecretSource>,
    /// `tls_config:`.
    pub tls: TlsConfig,
    /// `proxy_url:` (an http:// proxy).
    pub proxy_url: Option<String>,
    /// `follow_redirects:` (default true).
    pub follow_redirects: bool,
    /// `enable_http2:` (default true).
    pub enable_http2: bool,
}

impl HttpClientConfig {
    /// Every file the block names, with its key as the probe file spells it under `http:`
    /// (`http_client_config.tls_config.ca_file`), for the server to read them.
    pub fn files_mut(&mut self) -> Vec<(&'static str, &mut FileRef)> {
        let mut files = Vec::new();
        if let Some(SecretSource::File(file)) = &mut self.bearer_token {
            files.push(("http_client_config.bearer_token_file", file));
        }
        if let Some(BasicAuth {
            password: Some(SecretSource::File(file)),
            ..
        }) = &mut self.basic_auth
        {
            files.push(("http_client_config.basic_auth.password_file", file));
        }
        files.extend(self.tls.files_mut());
        files
    }
}

impl HttpClientConfig {
    /// Every file the block names.
    #[must_use]
    pub fn files(&self) -> Vec<&FileRef> {
        let secrets = [
            self.bearer_token.as_ref(),
            self.basic_auth
                .as_ref()
                .and_then(|auth| auth.password.as_ref()),
        ];
        secrets
            .into_iter()
            .flatten()
            .filter_map(|source| match source {
                SecretSource::File(file) => Some(file),
                SecretSource::Inline(_) => None,
            })
            .chain(self.tls.files())
            .collect()
    }
}

impl TlsConfig {
    /// The PEM files (`ca_file`, `cert_file`, `key_file`) set, with their keys under `http:`.
    pub fn files_mut(&mut self) -> impl Iterator<Item = (&'static str, &mut FileRef)> {
        [
            (
                "http_client_config.tls_config.ca_file",
                self.ca_file.as_mut(),
            ),
            (
                "http_client_config.tls_config.cert_file",
                self.cert_file.as_mut(),
            ),
            (
                "http_client_config.tls_config.key_file",
                self.key_file.as_mut(),
            ),
        ]
        .into_iter()
        .filter_map(|(key, file)| file.map(|file| (key, file)))
    }

    /// The PEM files set.
    pub fn files(&self) -> impl Iterator<Item = &FileRef> {
        [&self.ca_file, &self.cert_file, &self.key_file]
            .into_iter()
            .flatten()
    }
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        Self {
            basic_auth: None,
            bearer_token: None,
            tls: TlsConfig::default(),
            proxy_url: None,
            follow_redirects: true,
            enable_http2: true,
        }
    }
}

/// One `fail_if_header_matches` / `fail_if_header_not_matches` entry.
#[derive(Clone, Debug)]
pub struct HeaderMatch {
    /// Header name (matched case-insensitively).
    pub header: String,
    /// Unanchored regular expression applied to each value of the header.
    pub regexp: Regex,
    /// A missing header passes instead of failing.
    pub allow_missing: bool,
}

impl PartialEq for HeaderMatch {
    fn eq(&self, other: &Self) -> bool {
        self.header == other.header
            && self.regexp.as_str() == other.regexp.as_str()
            && self.allow_missing == other.allow_missing
    }
}

impl Eq for HeaderMatch {}

/// The validated `http:` block. [`HttpModule::default`] is what a block without `http:` gets
/// (and every block starts from it afresh: defaults never leak between blocks).
#[derive(Clone, Debug)]
pub struct HttpModule {
    /// Accepted status codes; empty means any 2xx (default `[200]`, as the Go system).
    pub valid_status_codes: Vec<u16>,
    /// Accepted protocol versions; empty means any.
    pub valid_http_versions: Vec<HttpVersion>,
    /// Address family to try first (default `ip4`).
    pub preferred_ip_protocol: IpProtocol,
    /// Use the other family when the preferred one has no address (default true).
    pub ip_protocol_fallback: bool,
    /// Parsed and ignored, as in blackbox_exporter when no proxy is set.
    pub skip_resolve_phase_with_proxy: bool,
    /// Evaluate the first response instead of following redirects.
    pub no_follow_redirects: bool,
    /// Fail when the final response came over TLS.
    pub fail_if_ssl: bool,
    /// Fail when the final response did not come over TLS.
    pub fail_if_not_ssl: bool,
    /// Request method (default `GET`).
    pub method: String,
    /// Request headers in file order; a `Host` entry overrides the Host header and SNI.
    pub headers: Vec<(String, String)>,
    /// Request body, shared by every probe of the block and every request (it may be 1 MiB).
    pub body: Option<Arc<str>>,
    /// Fail when the body matches any of these.
    pub fail_if_body_matches_regexp: Vec<Regex>,
    /// Fail unless the body matches every one of these.
    pub fail_if_body_not_matches_regexp: Vec<Regex>,
    /// Fail when a header matches.
    pub fail_if_header_matches: Vec<HeaderMatch>,
    /// Fail when a header does not match.
    pub fail_if_header_not_matches: Vec<HeaderMatch>,
    /// Body decoding.
    pub compression: Compression,
    /// Largest body read, in bytes; `None` is unlimited (`0` in the file).
    pub body_size_limit: Option<u64>,
    /// `http_client_config:`.
    pub client: HttpClientConfig,
}

impl HttpModule {
    /// Whether the redirects are followed (neither `no_follow_redirects` nor
    /// `follow_redirects: false`).
    #[must_use]
    pub fn follows_redirects(&self) -> bool {
        !self.no_follow_redirects && self.client.follow_redirects
    }
}

impl Default for HttpModule {
    fn default() -> Self {
        Self {
            valid_status_codes: vec![200],
            valid_http_versions: Vec::new(),
            preferred_ip_protocol: IpProtocol::Ip4,
            ip_protocol_fallback: true,
            skip_resolve_phase_with_proxy: false,
            no_follow_redirects: false,
            fail_if_ssl: false,
            fail_if_not_ssl: false,
            method: "GET".to_owned(),
            headers: Vec::new(),
            body: None,
            fail_if_body_matches_regexp: Vec::new(),
            fail_if_body_not_matches_regexp: Vec::new(),
            fail_if_header_matches: Vec::new(),
            fail_if_header_not_matches: Vec::new(),
            compression: Compression::Identity,
            body_size_limit: None,
            client: HttpClientConfig::default(),
        }
    }
}

fn regex_sources(list: &[Regex]) -> impl Iterator<Item = &str> {
    list.iter().map(Regex::as_str)
}

impl PartialEq for HttpModule {
    fn eq(&self, other: &Self) -> bool {
        self.valid_status_codes == other.valid_status_codes
            && self.valid_http_versions == other.valid_http_versions
            && self.preferred_ip_protocol == other.preferred_ip_protocol
            && self.ip_protocol_fallback == other.ip_protocol_fallback
            && self.skip_resolve_phase_with_proxy == other.skip_resolve_phase_with_proxy
            && self.no_follow_redirects == other.no_follow_redirects
            && self.fail_if_ssl == other.fail_if_ssl
            && self.fail_if_not_ssl == other.fail_if_not_ssl
            && self.method == other.method
            && self.headers == other.headers
            && self.body == other.body
            && regex_sources(&self.fail_if_body_matches_regexp)
                .eq(regex_sources(&other.fail_if_body_matches_regexp))
            && regex_sources(&self.fail_if_body_not_matches_regexp)
                .eq(regex_sources(&other.fail_if_body_not_matches_regexp))
            && self.fail_if_header_matches == other.fail_if_header_matches
            && self.fail_if_header_not_matches == other.fail_if_header_not_matches
            && self.compression == other.compression
            && self.body_size_limit == other.body_size_limit
            && self.client == other.client
    }
}

impl Eq for HttpModule {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_output() {
        let auth = BasicAuth {
            username: "u".into(),
            password: Some(SecretSource::Inline(Secret::new("hunter2".into()))),
        };
        let text = format!("{auth:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("redacted"));
    }

    #[test]
    fn defaults_are_the_go_defaults() {
        let m = HttpModule::default();
        assert_eq!(m.valid_status_codes, vec![200]);
        assert_eq!(m.preferred_ip_protocol, IpProtocol::Ip4);
        assert!(m.ip_protocol_fallback && m.follows_redirects() && m.client.enable_http2);
        assert_eq!(m.method, "GET");
    }

    #[test]
    fn http_versions_accept_blackbox_spellings() {
        assert_eq!(HttpVersion::parse("HTTP/2"), Some(HttpVersion::Http2));
        assert_eq!(HttpVersion::parse("HTTP/2.0"), Some(HttpVersion::Http2));
        assert_eq!(HttpVersion::parse("HTTP/3"), None);
    }
}
