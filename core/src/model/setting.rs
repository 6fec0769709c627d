//! The one validation of every probe setting. The probe file (`probe_file`) and the wire
//! decoder (`wire`, the pool an agent receives) both build [`HttpModule`]s, [`IcmpModule`]s and
//! [`ProbeConfig`]s through the checks here and end with [`HttpModule::validate`],
//! [`IcmpModule::validate`] and [`ProbeConfig::validate`], so a setting the server accepts is
//! a setting every agent accepts: same limits, same messages. The callers only add where the
//! value was (a file line and column, or a wire field path).

use std::fmt;
use std::time::Duration;

use regex::{Regex, RegexBuilder};

use super::http_module::{
    BasicAuth, FileRef, HeaderMatch, HttpClientConfig, SecretSource, TlsConfig,
};
use super::icmp_settings::{DEFAULT_PROBE_INTERVAL, MAX_PROBE_INTERVAL, probe_timeout};
use super::{HttpModule, IcmpModule, ProbeConfig, ProbeModule};

/// Longest short text setting (header names and values, regex sources, paths, user names,
/// secrets, URLs), in bytes.
pub const MAX_TEXT_LEN: usize = 8 * 1024;
/// Longest HTTP request body, in bytes.
pub const MAX_REQUEST_BODY_LEN: usize = 1024 * 1024;
/// Longest `tls_config` PEM file (`ca_file`, `cert_file`, `key_file`), in bytes: a large CA
/// bundle is a few hundred KiB.
pub const MAX_PEM_FILE_LEN: usize = 1024 * 1024;
/// Most entries in a list of an HTTP module (status codes, versions, headers, regexes).
pub const MAX_LIST_LEN: usize = 1024;
/// Largest compiled size of one regular expression (and of its lazy DFA cache), in bytes.
pub const MAX_REGEX_SIZE_BYTES: usize = 1 << 20;
/// Most targets in one block.
pub const MAX_TARGETS_PER_CONFIG: usize = 100_000;
/// Most blocks in one pool (so in one probe file).
pub const MAX_CONFIGS_PER_POOL: usize = 10_000;
/// The status codes a module may accept (RFC 9110 §15: 100–599).
pub const STATUS_CODES: std::ops::RangeInclusive<u16> = 100..=599;

/// A setting that is not acceptable, in words; the caller says where it was.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct SettingError {
    /// Where inside the checked value, relative to it (`headers[2]`, `client.proxy_url`);
    /// empty for the value itself.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl SettingError {
    /// An error about the value itself.
    #[must_use]
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            field: String::new(),
            message: message.into(),
        }
    }

    /// The same error, located inside `field` of the enclosing value.
    #[must_use]
    pub fn within(mut self, field: &str) -> Self {
        self.field = if self.field.is_empty() {
            field.to_owned()
        } else if self.field.starts_with('[') {
            format!("{field}{}", self.field)
        } else {
            format!("{field}.{}", self.field)
        };
        self
    }
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for SettingError {}

type Checked<T = ()> = Result<T, SettingError>;

/// Cuts long user text in messages to a readable length (80 characters).
#[must_use]
pub fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 80;
    if text.chars().count() <= MAX_CHARS {
        text.to_owned()
    } else {
        let head: String = text.chars().take(MAX_CHARS).collect();
        format!("{head}...")
    }
}

/// A text setting of at most [`MAX_TEXT_LEN`] bytes.
///
/// # Errors
/// When it is longer.
pub fn text(value: &str) -> Checked {
    if value.len() > MAX_TEXT_LEN {
        return Err(SettingError::new(format!(
            "{} bytes long; the limit is {MAX_TEXT_LEN} bytes",
            value.len()
        )));
    }
    Ok(())
}

/// A list of at most [`MAX_LIST_LEN`] entries.
///
/// # Errors
/// When it is longer.
pub fn list_len(len: usize) -> Checked {
    if len > MAX_LIST_LEN {
        return Err(SettingError::new(format!(
            "{len} entries; at most {MAX_LIST_LEN} are allowed"
        )));
    }
    Ok(())
}

/// A status code a module accepts: 100 to 599.
///
/// # Errors
/// Outside that range.
pub fn status_code(code: i128) -> Checked<u16> {
    u16::try_from(code)
        .ok()
        .filter(|c| STATUS_CODES.contains(c))
        .ok_or_else(|| SettingError::new(format!("status code {code} is not between 100 and 599")))
}

/// An HTTP token (RFC 9110 `tchar`s): the syntax of methods and header names.
#[must_use]
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `text` as an HTTP token of at most [`MAX_TEXT_LEN`] bytes, naming it `what` otherwise.
fn token(text_value: &str, what: &str) -> Checked {
    text(text_value)?;
    if !is_token(text_value) {
        return Err(SettingError::new(format!(
            "{:?} is not a valid {what} (letters, digits and !#$%&'*+-.^_`|~ only)",
            shorten(text_value)
        )));
    }
    Ok(())
}

/// A request method.
///
/// # Errors
/// Not an HTTP token, or too long.
pub fn method(method: &str) -> Checked {
    token(method, "HTTP method")
}

/// A header name.
///
/// # Errors
/// Not an HTTP token, or too long.
pub fn header_name(name: &str) -> Checked {
    token(name, "header name")
}

/// A header value.
///
/// # Errors
/// A line break or NUL inside, or too long.
pub fn header_value(value: &str) -> Checked {
    text(value)?;
    if value.contains(['\r', '\n', '\0']) {
        return Err(SettingError::new(
            "a header value must not contain line breaks (CR, LF) or NUL characters",
        ));
    }
    Ok(())
}

/// The request headers: valid names and values, no name twice (names ignore case).
///
/// # Errors
/// The first bad entry, located at its index (`[2]`).
pub fn headers(headers: &[(String, String)]) -> Checked {
    list_len(headers.len())?;
    for (index, (name, value)) in headers.iter().enumerate() {
        let at = format!("[{index}]");
        header_name(name).map_err(|e| e.within(&format!("{at}.name")))?;
        header_value(value).map_err(|e| e.within(&format!("{at}.value")))?;
        if let Some(first) = headers[..index]
            .iter()
            .position(|(other, _)| other.eq_ignore_ascii_case(name))
        {
            return Err(SettingError::new(format!(
                "header {name:?} is set twice (header names ignore case; first as entry {first})"
            ))
            .within(&at));
        }
    }
    Ok(())
}

/// A request body of at most [`MAX_REQUEST_BODY_LEN`] bytes.
///
/// # Errors
/// When it is longer.
pub fn body(body: &str) -> Checked {
    if body.len() > MAX_REQUEST_BODY_LEN {
        return Err(SettingError::new(format!(
            "the request body is {} bytes long; the limit is {MAX_REQUEST_BODY_LEN} bytes (1 MiB)",
            body.len()
        )));
    }
    Ok(())
}

/// Compiles a regular expression within [`MAX_REGEX_SIZE_BYTES`] (compiled program and lazy
/// DFA cache), its source at most [`MAX_TEXT_LEN`] bytes.
///
/// # Errors
/// A syntax error, a source too long, or a program too large, in one line.
pub fn regex(pattern: &str) -> Checked<Regex> {
    text(pattern)?;
    RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_SIZE_BYTES)
        .dfa_size_limit(MAX_REGEX_SIZE_BYTES)
        .build()
        .map_err(|e| {
            SettingError::new(format!(
                "invalid regular expression {:?}: {}",
                shorten(pattern),
                regex_reason(&e)
            ))
        })
}

/// The regex error on one line: the syntax error's last line ("error: unclosed group") or the
/// size-limit explanation.
fn regex_reason(error: &regex::Error) -> String {
    match error {
        regex::Error::Syntax(text) => text
            .lines()
            .rev()
            .find_map(|line| line.trim().strip_prefix("error: "))
            .unwrap_or_else(|| text.trim())
            .to_owned(),
        regex::Error::CompiledTooBig(_) => format!(
            "it compiles to more than the {} KiB allowed; simplify it",
            MAX_REGEX_SIZE_BYTES / 1024
        ),
        other => other.to_string().replace('\n', " "),
    }
}

/// A list of regexes (their sources already compiled by [`regex`]).
fn regexes(list: &[Regex]) -> Checked {
    list_len(list.len())?;
    for (index, regex) in list.iter().enumerate() {
        text(regex.as_str()).map_err(|e| e.within(&format!("[{index}]")))?;
    }
    Ok(())
}

fn header_matches(list: &[HeaderMatch]) -> Checked {
    list_len(list.len())?;
    for (index, matcher) in list.iter().enumerate() {
        let at = format!("[{index}]");
        header_name(&matcher.header).map_err(|e| e.within(&format!("{at}.header")))?;
        text(matcher.regexp.as_str()).map_err(|e| e.within(&format!("{at}.regexp")))?;
    }
    Ok(())
}

/// An `http://` proxy URL.
///
/// # Errors
/// Another scheme, no host, or a URL that does not parse.
pub fn proxy_url(proxy_url: &str) -> Checked {
    text(proxy_url)?;
    let has_http_scheme = proxy_url
        .get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"));
    if !has_http_scheme {
        return Err(SettingError::new(format!(
            "{:?} is not supported: only http:// proxies are (no https:// or socks5://)",
            shorten(proxy_url)
        )));
    }
    if proxy_url.len() == "http://".len() {
        return Err(SettingError::new(format!(
            "{proxy_url:?} is not a valid proxy URL: the host is empty"
        )));
    }
    match super::HttpUrl::parse(proxy_url) {
        Ok(_) => Ok(()),
        Err(super::TargetError::BadUrl { why, .. }) => Err(SettingError::new(format!(
            "{:?} is not a valid proxy URL: {why}",
            shorten(proxy_url)
        ))),
        Err(other) => Err(SettingError::new(other.to_string())),
    }
}

/// A secret: inline (its length only is checked, and never shown) or a file (its path, and
/// its contents when read, which must be a secret's size too).
fn secret(source: &SecretSource) -> Checked {
    let too_long = |_| SettingError::new(format!("longer than {MAX_TEXT_LEN} bytes"));
    match source {
        SecretSource::Inline(secret) => text(secret.expose()).map_err(too_long),
        SecretSource::File(file) => {
            text(file.path())?;
            match file.contents() {
                Some(contents) => text(contents.expose()).map_err(|_| {
                    SettingError::new(format!(
                        "{:?} holds more than {MAX_TEXT_LEN} bytes, too long for a secret",
                        shorten(file.path())
                    ))
                }),
                None => Ok(()),
            }
        }
    }
}

/// A PEM file of `tls_config`: its path, and its contents when read, at most
/// [`MAX_PEM_FILE_LEN`].
fn pem_file(file: &FileRef) -> Checked {
    text(file.path())?;
    match file.contents() {
        Some(contents) if contents.expose().len() > MAX_PEM_FILE_LEN => {
            Err(SettingError::new(format!(
                "{:?} is {} bytes long; the limit is {MAX_PEM_FILE_LEN} bytes (1 MiB)",
                shorten(file.path()),
                contents.expose().len()
            )))
        }
        _ => Ok(()),
    }
}

fn basic_auth(auth: &BasicAuth) -> Checked {
    text(&auth.username).map_err(|e| e.within("username"))?;
    if let Some(password) = &auth.password {
        secret(password).map_err(|e| e.within("password"))?;
    }
    Ok(())
}

fn tls_config(tls: &TlsConfig) -> Checked {
    for (field, file) in [
        ("ca_file", &tls.ca_file),
        ("cert_file", &tls.cert_file),
        ("key_file", &tls.key_file),
    ] {
        if let Some(file) = file {
            pem_file(file).map_err(|e| e.within(field))?;
        }
    }
    if let Some(name) = &tls.server_name {
        text(name).map_err(|e| e.within("server_name"))?;
    }
    client_certificate(tls.cert_file.is_some(), tls.key_file.is_some())
}

/// A client certificate needs its key and the other way round.
///
/// # Errors
/// When only one of the two is set.
pub fn client_certificate(cert_file: bool, key_file: bool) -> Checked {
    match (cert_file, key_file) {
        (true, false) => Err(SettingError::new(
            "cert_file is set without key_file; a client certificate needs both",
        )),
        (false, true) => Err(SettingError::new(
            "key_file is set without cert_file; a client certificate needs both",
        )),
        _ => Ok(()),
    }
}

/// At most one way to authenticate.
///
/// # Errors
/// When both basic auth and a bearer token are set.
pub fn one_credential(basic_auth: bool, bearer_token: bool) -> Checked {
    if basic_auth && bearer_token {
        return Err(SettingError::new(
            "set at most one of basic_auth, bearer_token and bearer_token_file",
        ));
    }
    Ok(())
}

fn client_config(client: &HttpClientConfig) -> Checked {
    if let Some(auth) = &client.basic_auth {
        basic_auth(auth).map_err(|e| e.within("basic_auth"))?;
    }
    if let Some(token) = &client.bearer_token {
        secret(token).map_err(|e| e.within("bearer_token"))?;
    }
    one_credential(client.basic_auth.is_some(), client.bearer_token.is_some())?;
    tls_config(&client.tls).map_err(|e| e.within("tls_config"))?;
    if let Some(url) = &client.proxy_url {
        proxy_url(url).map_err(|e| e.within("proxy_url"))?;
    }
    Ok(())
}

impl HttpModule {
    /// Every constraint on an HTTP module, the same for the probe file and the wire: lists
    /// within [`MAX_LIST_LEN`], texts within [`MAX_TEXT_LEN`], the body within
    /// [`MAX_REQUEST_BODY_LEN`], status codes 100–599, tokens for the method and header names,
    /// no line break in a header value, no header twice, one credential, a client certificate
    /// with its key, an `http://` proxy.
    ///
    /// # Errors
    /// The first broken constraint, located by the field path inside the module.
    pub fn validate(&self) -> Checked {
        list_len(self.valid_status_codes.len()).map_err(|e| e.within("valid_status_codes"))?;
        for (index, code) in self.valid_status_codes.iter().enumerate() {
            status_code(i128::from(*code))
                .map_err(|e| e.within(&format!("valid_status_codes[{index}]")))?;
        }
        list_len(self.valid_http_versions.len()).map_err(|e| e.within("valid_http_versions"))?;
        method(&self.method).map_err(|e| e.within("method"))?;
        headers(&self.headers).map_err(|e| e.within("headers"))?;
        if let Some(text) = &self.body {
            body(text).map_err(|e| e.within("body"))?;
        }
        regexes(&self.fail_if_body_matches_regexp)
            .map_err(|e| e.within("fail_if_body_matches_regexp"))?;
        regexes(&self.fail_if_body_not_matches_regexp)
            .map_err(|e| e.within("fail_if_body_not_matches_regexp"))?;
        header_matches(&self.fail_if_header_matches)
            .map_err(|e| e.within("fail_if_header_matches"))?;
        header_matches(&self.fail_if_header_not_matches)
            .map_err(|e| e.within("fail_if_header_not_matches"))?;
        client_config(&self.client).map_err(|e| e.within("http_client_config"))
    }
}

/// A packet count: 1 to [`IcmpModule::MAX_PACKET_COUNT`].
///
/// # Errors
/// Outside that range.
pub fn packet_count(count: i128) -> Checked<u32> {
    let max = IcmpModule::MAX_PACKET_COUNT;
    match u32::try_from(count) {
        Ok(count @ 1..) if count <= max => Ok(count),
        _ if count < 1 => Err(SettingError::new(format!(
            "{count} packets per probe; at least 1 is needed"
        ))),
        _ => Err(SettingError::new(format!(
            "{count} packets per probe is too many; the maximum is {max}"
        ))),
    }
}

/// A payload size: [`IcmpModule::MIN_PAYLOAD_SIZE`] to [`IcmpModule::MAX_PAYLOAD_SIZE`].
///
/// # Errors
/// Outside that range.
pub fn payload_size(size_bytes: i128) -> Checked<u32> {
    let (min, max) = (IcmpModule::MIN_PAYLOAD_SIZE, IcmpModule::MAX_PAYLOAD_SIZE);
    match u32::try_from(size_bytes) {
        Ok(size) if size < min => Err(SettingError::new(format!(
            "{size} bytes is too small; the minimum is {min} (an 8-byte timestamp and a 16-byte probe token)"
        ))),
        Ok(size) if size <= max => Ok(size),
        _ if size_bytes < 0 => Err(SettingError::new(format!("{size_bytes} is negative"))),
        _ => Err(SettingError::new(format!(
            "{size_bytes} bytes is too large; the maximum is {max} (what fits in an IPv4 packet)"
        ))),
    }
}

/// The time between two echoes of a probe: more than zero.
///
/// # Errors
/// When it is zero.
pub fn echo_interval(interval: Duration) -> Checked {
    if interval.is_zero() {
        return Err(SettingError::new(
            "the time between echoes must be more than 0",
        ));
    }
    Ok(())
}

/// The time the echoes of a probe take to leave, `(packet_count − 1) × interval`: shorter than
/// the longest probe timeout (that of [`MAX_PROBE_INTERVAL`]), since a probe ends at its
/// timeout and the echoes due after it are never sent. The real timeout is the agent's, ceil(0.8
/// × its probe interval), 12 s at the default 15 s, which the server does not know; the longest
/// one is the same for the server and every agent.
///
/// # Errors
/// When no agent could send them all.
pub fn echo_span(packet_count: u32, interval: Duration) -> Checked {
    let span = interval.saturating_mul(packet_count.saturating_sub(1));
    let longest = probe_timeout(MAX_PROBE_INTERVAL);
    if span < longest {
        return Ok(());
    }
    let show = crate::probe_file::format_duration;
    Err(SettingError::new(format!(
        "{packet_count} echoes {} apart take {} to send, but a probe ends at its timeout, \
         ceil(0.8 × -agent.probe.interval): {} at the default {}s, {} at the longest {}h; the \
         echoes due after it are never sent, so shorten the interval or send fewer echoes",
        show(interval),
        show(span),
        show(probe_timeout(DEFAULT_PROBE_INTERVAL)),
        DEFAULT_PROBE_INTERVAL.as_secs(),
        show(longest),
        MAX_PROBE_INTERVAL.as_secs() / 3600,
    )))
}

impl IcmpModule {
    /// Every constraint on an ICMP module, the same for the probe file and the wire.
    ///
    /// # Errors
    /// The first broken constraint, located by its field.
    pub fn validate(&self) -> Checked {
        packet_count(i128::from(self.packet_count)).map_err(|e| e.within("packet_count"))?;
        payload_size(i128::from(self.payload_size)).map_err(|e| e.within("payload_size"))?;
        echo_interval(self.interval).map_err(|e| e.within("interval"))?;
        echo_span(self.packet_count, self.interval).map_err(|e| e.within("interval"))
    }
}

impl ProbeConfig {
    /// Every constraint on a block: its module's, at most [`MAX_TARGETS_PER_CONFIG`] targets,
    /// each of the block's kind and none twice.
    ///
    /// # Errors
    /// The first broken constraint, located by its field (`http.method`, `targets[3]`).
    pub fn validate(&self) -> Checked {
        match &self.module {
            ProbeModule::Icmp(icmp) => icmp.validate().map_err(|e| e.within("icmp"))?,
            ProbeModule::Http(http) => http.validate().map_err(|e| e.within("http"))?,
        }
        if self.targets.len() > MAX_TARGETS_PER_CONFIG {
            return Err(SettingError::new(format!(
                "{} targets in one block; at most {MAX_TARGETS_PER_CONFIG} are allowed",
                self.targets.len()
            ))
            .within("targets"));
        }
        let kind = self.module.kind();
        let mut seen = std::collections::HashMap::with_capacity(self.targets.len());
        for (index, target) in self.targets.iter().enumerate() {
            let at = format!("targets[{index}]");
            if target.kind() != kind {
                return Err(SettingError::new(format!(
                    "{:?} is not a {} target",
                    shorten(target.raw()),
                    kind.as_str()
                ))
                .within(&at));
            }
            if let Some(first) = seen.insert(target.raw(), index) {
                return Err(SettingError::new(format!(
                    "{:?} repeats targets[{first}]",
                    shorten(target.raw())
                ))
                .within(&at));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(is_token("GET") && is_token("X-Custom_1") && is_token("M-SEARCH"));
        assert!(!is_token("") && !is_token("GE T") && !is_token("a:b") && !is_token("é"));
    }

    #[test]
    fn field_paths_nest() {
        let error = SettingError::new("bad")
            .within("[2]")
            .within("headers")
            .within("http");
        assert_eq!(error.to_string(), "http.headers[2]: bad");
    }

    #[test]
    fn a_regex_that_compiles_large_is_accepted_up_to_the_one_limit() {
        // Unicode classes compile large: this one lies between 256 KiB and 1 MiB, the range
        // where the probe file and the wire used to disagree.
        assert!(regex(r"\w{20}").is_ok());
        let too_big = regex("a{1000}{1000}").unwrap_err();
        assert!(
            too_big.message.contains("more than the 1024 KiB allowed"),
            "{too_big}"
        );
    }

    #[test]
    fn status_codes_are_those_of_http() {
        assert_eq!(status_code(100), Ok(100));
        assert_eq!(status_code(599), Ok(599));
        for bad in [0, 99, 600, 999, -1, 70_000] {
            assert!(status_code(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn icmp_ranges() {
        assert!(packet_count(0).is_err() && packet_count(10_001).is_err());
        assert_eq!(packet_count(1), Ok(1));
        assert!(payload_size(23).is_err() && payload_size(65_508).is_err());
        assert!(payload_size(-1).is_err());
        assert_eq!(payload_size(24), Ok(24));
        assert!(echo_interval(Duration::ZERO).is_err());
    }

    #[test]
    fn echoes_that_no_probe_timeout_covers_are_refused() {
        let hour = Duration::from_secs(3600);
        assert_eq!(echo_span(64, Duration::from_millis(15)), Ok(()));
        assert_eq!(echo_span(1, 2_562_047 * hour), Ok(()), "a single echo");
        // 19 h 12 min is the longest timeout: 19 gaps of an hour fit, 20 do not.
        assert_eq!(echo_span(20, hour), Ok(()));
        let error = echo_span(21, hour).unwrap_err();
        assert_eq!(
            error.message,
            "21 echoes 1h apart take 20h to send, but a probe ends at its timeout, ceil(0.8 × \
             -agent.probe.interval): 12s at the default 15s, 19h12m at the longest 24h; the \
             echoes due after it are never sent, so shorten the interval or send fewer echoes"
        );
        let huge = IcmpModule {
            interval: 2_562_047 * hour,
            ..IcmpModule::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(huge.field, "interval");
        assert!(
            huge.message.starts_with("64 echoes 106751d23h apart"),
            "{huge}"
        );
    }
}
