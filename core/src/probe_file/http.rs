//! The `http:` block of a probe-file entry, checked key by key into a [`HttpModule`]: the
//! blackbox_exporter http-module options and the prometheus/common `http_client_config`
//! subset probermesh implements. Options we do not implement are refused by name, so a
//! migrated file never silently loses a setting.

use regex::Regex;

use super::node::{Fields, Node, Pos, Problem, join, shorten};
use super::size::parse_base2_bytes;
use crate::model::HttpModule;
use crate::model::http_module::{
    BasicAuth, Compression, FileRef, HeaderMatch, HttpClientConfig, HttpVersion, IpProtocol,
    Secret, SecretSource, TlsConfig, TlsMinVersion,
};
use crate::model::setting::{self, SettingError};

/// A failed shared check, at `at` and `path`.
pub(super) fn problem(at: Pos, path: &str, error: SettingError) -> Problem {
    let error = error.within(path);
    Problem::at(at, &error.field, error.message)
}

const HTTP_KEYS: &[&str] = &[
    "valid_status_codes",
    "valid_http_versions",
    "preferred_ip_protocol",
    "ip_protocol_fallback",
    "skip_resolve_phase_with_proxy",
    "no_follow_redirects",
    "fail_if_ssl",
    "fail_if_not_ssl",
    "method",
    "headers",
    "body",
    "fail_if_body_matches_regexp",
    "fail_if_body_not_matches_regexp",
    "fail_if_header_matches",
    "fail_if_header_not_matches",
    "compression",
    "body_size_limit",
    "http_client_config",
];

/// blackbox_exporter http-module options newer than the Go system's copy of it.
const HTTP_UNSUPPORTED: &[(&str, &str)] = &[
    ("body_file", "put the request body inline with `body`"),
    (
        "fail_if_body_json_matches_cel",
        "use fail_if_body_matches_regexp",
    ),
    (
        "fail_if_body_json_not_matches_cel",
        "use fail_if_body_not_matches_regexp",
    ),
];

const CLIENT_KEYS: &[&str] = &[
    "basic_auth",
    "bearer_token",
    "bearer_token_file",
    "tls_config",
    "proxy_url",
    "follow_redirects",
    "enable_http2",
];

/// prometheus/common `HTTPClientConfig` options probermesh does not implement.
const CLIENT_UNSUPPORTED: &[(&str, &str)] = &[
    (
        "authorization",
        "use bearer_token or bearer_token_file for a Bearer token, or basic_auth",
    ),
    (
        "oauth2",
        "fetch the token out of band and use bearer_token_file",
    ),
    (
        "no_proxy",
        "give the targets that must not use the proxy their own block without proxy_url",
    ),
    ("proxy_from_environment", "set proxy_url explicitly"),
    (
        "proxy_connect_header",
        "HTTPS targets are not tunnelled through proxies",
    ),
    (
        "http_headers",
        "set request headers with the `headers` key of the http block",
    ),
];

const BASIC_AUTH_KEYS: &[&str] = &["username", "password", "password_file"];
const BASIC_AUTH_UNSUPPORTED: &[(&str, &str)] = &[
    (
        "username_file",
        "write the user name inline with `username`",
    ),
    ("username_ref", "write the user name inline with `username`"),
    ("password_ref", "use password or password_file"),
];

const TLS_KEYS: &[&str] = &[
    "ca_file",
    "cert_file",
    "key_file",
    "server_name",
    "insecure_skip_verify",
    "min_version",
];
const TLS_UNSUPPORTED: &[(&str, &str)] = &[
    (
        "max_version",
        "the highest version rustls speaks (TLS 1.3) is always offered",
    ),
    ("ca", "put the CA certificates in a file and use ca_file"),
    (
        "cert",
        "put the client certificate in a file and use cert_file",
    ),
    ("key", "put the client key in a file and use key_file"),
    ("ca_ref", "use ca_file"),
    ("cert_ref", "use cert_file"),
    ("key_ref", "use key_file"),
];

const MATCHER_KEYS: &[&str] = &["header", "regexp", "allow_missing"];

/// Builds the module of an `http:` block at `path`, starting from [`HttpModule::default`].
pub(super) fn http_module(node: &Node, path: &str) -> Result<HttpModule, Problem> {
    let fields = node.fields(path, HTTP_KEYS, HTTP_UNSUPPORTED)?;
    let mut module = HttpModule::default();
    let key = |name: &str| join(path, name);

    if let Some(node) = fields.get("valid_status_codes") {
        let path = key("valid_status_codes");
        module.valid_status_codes = indexed(node.list(&path)?, &path)
            .map(|(item, item_path)| {
                let code = item.integer(&item_path)?;
                setting::status_code(code).map_err(|e| problem(item.at, &item_path, e))
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(node) = fields.get("valid_http_versions") {
        let path = key("valid_http_versions");
        module.valid_http_versions = indexed(node.list(&path)?, &path)
            .map(|(item, item_path)| {
                let text = item.string(&item_path)?;
                HttpVersion::parse(&text).ok_or_else(|| {
                    Problem::at(
                        item.at,
                        &item_path,
                        format!("unknown HTTP version {:?}; expected HTTP/1.0, HTTP/1.1, HTTP/2 or HTTP/2.0", shorten(&text)),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(node) = fields.get("preferred_ip_protocol") {
        let path = key("preferred_ip_protocol");
        module.preferred_ip_protocol = match node.string(&path)?.as_str() {
            "ip4" => IpProtocol::Ip4,
            "ip6" => IpProtocol::Ip6,
            other => {
                return Err(Problem::at(
                    node.at,
                    &path,
                    format!(
                        "unknown IP protocol {:?}; expected ip4 or ip6",
                        shorten(other)
                    ),
                ));
            }
        };
    }
    for (name, flag) in [
        ("ip_protocol_fallback", &mut module.ip_protocol_fallback),
        (
            "skip_resolve_phase_with_proxy",
            &mut module.skip_resolve_phase_with_proxy,
        ),
        ("no_follow_redirects", &mut module.no_follow_redirects),
        ("fail_if_ssl", &mut module.fail_if_ssl),
        ("fail_if_not_ssl", &mut module.fail_if_not_ssl),
    ] {
        if let Some(node) = fields.get(name) {
            *flag = node.boolean(&key(name))?;
        }
    }
    if let Some(node) = fields.get("method") {
        let path = key("method");
        let method = node.string(&path)?;
        setting::method(&method).map_err(|e| problem(node.at, &path, e))?;
        module.method = method;
    }
    if let Some(node) = fields.get("headers") {
        module.headers = headers(node, &key("headers"))?;
    }
    if let Some(node) = fields.get("body") {
        let path = key("body");
        let body = node.string(&path)?;
        setting::body(&body).map_err(|e| problem(node.at, &path, e))?;
        module.body = Some(body.into());
    }
    if let Some(node) = fields.get("fail_if_body_matches_regexp") {
        module.fail_if_body_matches_regexp = regex_list(node, &key("fail_if_body_matches_regexp"))?;
    }
    if let Some(node) = fields.get("fail_if_body_not_matches_regexp") {
        module.fail_if_body_not_matches_regexp =
            regex_list(node, &key("fail_if_body_not_matches_regexp"))?;
    }
    if let Some(node) = fields.get("fail_if_header_matches") {
        module.fail_if_header_matches = header_matchers(node, &key("fail_if_header_matches"))?;
    }
    if let Some(node) = fields.get("fail_if_header_not_matches") {
        module.fail_if_header_not_matches =
            header_matchers(node, &key("fail_if_header_not_matches"))?;
    }
    if let Some(node) = fields.get("compression") {
        let path = key("compression");
        module.compression = match node.string(&path)?.as_str() {
            "" | "identity" => Compression::Identity,
            "gzip" => Compression::Gzip,
            "br" => Compression::Brotli,
            "deflate" => Compression::Deflate,
            other => {
                return Err(Problem::at(
                    node.at,
                    &path,
                    format!(
                        "unknown compression {:?}; expected gzip, br, deflate, identity or \"\"",
                        shorten(other)
                    ),
                ));
            }
        };
    }
    if let Some(node) = fields.get("body_size_limit") {
        let path = key("body_size_limit");
        let limit_bytes =
            parse_base2_bytes(&node.string(&path)?).map_err(|e| Problem::at(node.at, &path, e))?;
        module.body_size_limit = (limit_bytes > 0).then_some(limit_bytes);
    }
    if let Some(node) = fields.get("http_client_config") {
        module.client = client_config(node, &key("http_client_config"))?;
    }
    // Everything above checked its own key with its place; this is the same whole-module
    // validation the wire decoder runs, so what passes here passes on every agent.
    module.validate().map_err(|e| problem(node.at, path, e))?;
    Ok(module)
}

/// The items of a list with their paths (`path[i]`).
fn indexed<'a>(items: &'a [Node], path: &'a str) -> impl Iterator<Item = (&'a Node, String)> + 'a {
    items
        .iter()
        .enumerate()
        .map(move |(i, item)| (item, format!("{path}[{i}]")))
}

fn headers(node: &Node, path: &str) -> Result<Vec<(String, String)>, Problem> {
    let mut headers: Vec<(String, String, Pos)> = Vec::new();
    for (name, name_at, value_node) in node.entries(path)? {
        let header_path = format!("{path}.{name}");
        setting::header_name(&name).map_err(|e| problem(name_at, path, e))?;
        if let Some((_, _, first_at)) = headers
            .iter()
            .find(|(other, _, _)| other.eq_ignore_ascii_case(&name))
        {
            return Err(Problem::at(
                name_at,
                path,
                format!(
                    "header {name:?} is set twice (header names ignore case; first at {first_at})"
                ),
            ));
        }
        let value = if value_node.is_null() {
            String::new()
        } else {
            value_node.string(&header_path)?
        };
        setting::header_value(&value).map_err(|e| problem(value_node.at, &header_path, e))?;
        headers.push((name, value, name_at));
    }
    Ok(headers
        .into_iter()
        .map(|(name, value, _)| (name, value))
        .collect())
}

fn compile_regex(node: &Node, path: &str) -> Result<Regex, Problem> {
    setting::regex(&node.string(path)?).map_err(|e| problem(node.at, path, e))
}

fn regex_list(node: &Node, path: &str) -> Result<Vec<Regex>, Problem> {
    indexed(node.list(path)?, path)
        .map(|(item, item_path)| compile_regex(item, &item_path))
        .collect()
}

fn header_matchers(node: &Node, path: &str) -> Result<Vec<HeaderMatch>, Problem> {
    indexed(node.list(path)?, path)
        .map(|(item, item_path)| {
            let fields = item.fields(&item_path, MATCHER_KEYS, &[])?;
            let header_node = required(&fields, &item_path, "header")?;
            let header_path = join(&item_path, "header");
            let header = header_node.string(&header_path)?;
            setting::header_name(&header).map_err(|e| problem(header_node.at, &header_path, e))?;
            let regexp = compile_regex(
                required(&fields, &item_path, "regexp")?,
                &join(&item_path, "regexp"),
            )?;
            let allow_missing = fields
                .get("allow_missing")
                .map(|n| n.boolean(&join(&item_path, "allow_missing")))
                .transpose()?;
            Ok(HeaderMatch {
                header,
                regexp,
                allow_missing: allow_missing.unwrap_or(false),
            })
        })
        .collect()
}

/// The value of a key that must be present (and not null).
pub(super) fn required<'a>(
    fields: &Fields<'a>,
    path: &str,
    key: &str,
) -> Result<&'a Node, Problem> {
    fields.get(key).ok_or_else(|| {
        let at = fields.key_at(key).unwrap_or(fields.at);
        Problem::at(at, path, format!("the key `{key}` is required"))
    })
}

/// A string option where `""` means "not set", as in prometheus/common.
fn optional_string(fields: &Fields<'_>, path: &str, key: &str) -> Result<Option<String>, Problem> {
    match fields.get(key) {
        Some(node) => Ok(Some(node.string(&join(path, key))?).filter(|s| !s.is_empty())),
        None => Ok(None),
    }
}

fn client_config(node: &Node, path: &str) -> Result<HttpClientConfig, Problem> {
    let fields = node.fields(path, CLIENT_KEYS, CLIENT_UNSUPPORTED)?;
    let mut client = HttpClientConfig::default();
    if let Some(node) = fields.get("basic_auth") {
        client.basic_auth = Some(basic_auth(node, &join(path, "basic_auth"))?);
    }
    let token = optional_string(&fields, path, "bearer_token")?;
    let token_file = optional_string(&fields, path, "bearer_token_file")?;
    client.bearer_token = match (token, token_file) {
        (Some(_), Some(_)) => {
            let at = fields.key_at("bearer_token_file").unwrap_or(fields.at);
            return Err(Problem::at(
                at,
                path,
                "set at most one of bearer_token and bearer_token_file",
            ));
        }
        (Some(token), None) => Some(SecretSource::Inline(Secret::new(token))),
        (None, Some(file)) => Some(SecretSource::File(FileRef::named(file))),
        (None, None) => None,
    };
    if let Err(e) =
        setting::one_credential(client.basic_auth.is_some(), client.bearer_token.is_some())
    {
        let at = fields.key_at("basic_auth").unwrap_or(fields.at);
        return Err(problem(at, path, e));
    }
    if let Some(node) = fields.get("tls_config") {
        client.tls = tls_config(node, &join(path, "tls_config"))?;
    }
    if let Some(proxy_url) = optional_string(&fields, path, "proxy_url")? {
        let at = fields.key_at("proxy_url").unwrap_or(fields.at);
        setting::proxy_url(&proxy_url).map_err(|e| problem(at, &join(path, "proxy_url"), e))?;
        client.proxy_url = Some(proxy_url);
    }
    for (name, flag) in [
        ("follow_redirects", &mut client.follow_redirects),
        ("enable_http2", &mut client.enable_http2),
    ] {
        if let Some(node) = fields.get(name) {
            *flag = node.boolean(&join(path, name))?;
        }
    }
    Ok(client)
}

fn basic_auth(node: &Node, path: &str) -> Result<BasicAuth, Problem> {
    let fields = node.fields(path, BASIC_AUTH_KEYS, BASIC_AUTH_UNSUPPORTED)?;
    let username = required(&fields, path, "username")?.string(&join(path, "username"))?;
    let password = optional_string(&fields, path, "password")?;
    let password_file = optional_string(&fields, path, "password_file")?;
    let password = match (password, password_file) {
        (Some(_), Some(_)) => {
            let at = fields.key_at("password_file").unwrap_or(fields.at);
            return Err(Problem::at(
                at,
                path,
                "set at most one of password and password_file",
            ));
        }
        (Some(password), None) => Some(SecretSource::Inline(Secret::new(password))),
        (None, Some(file)) => Some(SecretSource::File(FileRef::named(file))),
        (None, None) => None,
    };
    Ok(BasicAuth { username, password })
}

fn tls_config(node: &Node, path: &str) -> Result<TlsConfig, Problem> {
    let fields = node.fields(path, TLS_KEYS, TLS_UNSUPPORTED)?;
    let mut tls = TlsConfig {
        ca_file: optional_string(&fields, path, "ca_file")?.map(FileRef::named),
        cert_file: optional_string(&fields, path, "cert_file")?.map(FileRef::named),
        key_file: optional_string(&fields, path, "key_file")?.map(FileRef::named),
        server_name: optional_string(&fields, path, "server_name")?,
        ..TlsConfig::default()
    };
    if let Err(e) = setting::client_certificate(tls.cert_file.is_some(), tls.key_file.is_some()) {
        let key = if tls.cert_file.is_some() {
            "cert_file"
        } else {
            "key_file"
        };
        let at = fields.key_at(key).unwrap_or(fields.at);
        return Err(problem(at, path, e));
    }
    if let Some(node) = fields.get("insecure_skip_verify") {
        tls.insecure_skip_verify = node.boolean(&join(path, "insecure_skip_verify"))?;
    }
    if let Some(node) = fields.get("min_version") {
        let version_path = join(path, "min_version");
        tls.min_version = match node.string(&version_path)?.as_str() {
            "" => None,
            "TLS12" => Some(TlsMinVersion::Tls12),
            "TLS13" => Some(TlsMinVersion::Tls13),
            old @ ("TLS10" | "TLS11") => {
                return Err(Problem::at(
                    node.at,
                    &version_path,
                    format!(
                        "{old} is not supported by probermesh (its TLS library speaks only TLS12 and TLS13)"
                    ),
                ));
            }
            other => {
                return Err(Problem::at(
                    node.at,
                    &version_path,
                    format!(
                        "unknown TLS version {:?}; expected TLS12 or TLS13",
                        shorten(other)
                    ),
                ));
            }
        };
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(yaml: &str) -> Result<HttpModule, Problem> {
        let mut node: Node = serde_saphyr::from_str(yaml).unwrap();
        node.attach_text(yaml);
        http_module(&node, "http")
    }

    fn message(yaml: &str) -> String {
        let problem = module(yaml).unwrap_err();
        format!(
            "{}:{}: {}",
            problem.at.line, problem.at.column, problem.message
        )
    }

    #[test]
    fn every_field_is_read() {
        let m = module(
            "valid_status_codes: [200, 301]\nvalid_http_versions: [HTTP/1.1, HTTP/2.0]\npreferred_ip_protocol: ip6\n\
             ip_protocol_fallback: false\nskip_resolve_phase_with_proxy: true\nno_follow_redirects: true\n\
             fail_if_ssl: false\nfail_if_not_ssl: true\nmethod: POST\nheaders:\n  Host: example.com\n  X-N: 1\n\
             body: '{}'\nfail_if_body_matches_regexp: [a+]\nfail_if_body_not_matches_regexp: [b]\n\
             fail_if_header_matches:\n  - {header: Server, regexp: nginx, allow_missing: true}\n\
             fail_if_header_not_matches:\n  - {header: Content-Type, regexp: json}\ncompression: gzip\n\
             body_size_limit: 1MB\nhttp_client_config:\n  bearer_token_file: /t\n  follow_redirects: false\n\
             \x20 enable_http2: false\n  proxy_url: http://proxy:3128\n  tls_config:\n    ca_file: /ca\n\
             \x20   cert_file: /c\n    key_file: /k\n    server_name: s\n    insecure_skip_verify: true\n\
             \x20   min_version: TLS13\n",
        )
        .unwrap();
        assert_eq!(m.valid_status_codes, [200, 301]);
        assert_eq!(
            m.valid_http_versions,
            [HttpVersion::Http11, HttpVersion::Http2]
        );
        assert_eq!(m.preferred_ip_protocol, IpProtocol::Ip6);
        assert!(
            !m.ip_protocol_fallback && m.skip_resolve_phase_with_proxy && m.no_follow_redirects
        );
        assert!(!m.fail_if_ssl && m.fail_if_not_ssl);
        assert_eq!(m.method, "POST");
        assert_eq!(
            m.headers,
            [
                ("Host".to_owned(), "example.com".to_owned()),
                ("X-N".to_owned(), "1".to_owned())
            ]
        );
        assert_eq!(m.body.as_deref(), Some("{}"));
        assert_eq!(m.fail_if_body_matches_regexp[0].as_str(), "a+");
        assert_eq!(m.fail_if_body_not_matches_regexp[0].as_str(), "b");
        assert_eq!(m.fail_if_header_matches[0].header, "Server");
        assert!(m.fail_if_header_matches[0].allow_missing);
        assert!(!m.fail_if_header_not_matches[0].allow_missing);
        assert_eq!(m.compression, Compression::Gzip);
        assert_eq!(m.body_size_limit, Some(1 << 20));
        assert_eq!(
            m.client.bearer_token,
            Some(SecretSource::File(FileRef::named("/t")))
        );
        assert!(!m.client.follow_redirects && !m.client.enable_http2 && !m.follows_redirects());
        assert_eq!(m.client.proxy_url.as_deref(), Some("http://proxy:3128"));
        assert_eq!(
            m.client.tls.ca_file.as_ref().map(FileRef::path),
            Some("/ca")
        );
        assert_eq!(m.client.tls.min_version, Some(TlsMinVersion::Tls13));
        assert!(m.client.tls.insecure_skip_verify);
    }

    #[test]
    fn empty_block_values_keep_defaults() {
        assert_eq!(
            module("method: ~\nbody_size_limit: 0\ncompression: ''\n").unwrap(),
            HttpModule::default()
        );
        assert_eq!(
            module("valid_status_codes: []\n")
                .unwrap()
                .valid_status_codes,
            Vec::<u16>::new()
        );
    }

    #[test]
    fn errors_name_key_and_place() {
        for (yaml, expected) in [
            (
                "valid_status_codes: [200, 600]",
                "1:27: http.valid_status_codes[1]: status code 600 is not between 100 and 599",
            ),
            (
                "valid_status_codes: 200",
                "1:21: http.valid_status_codes: expected a list, found the integer 200",
            ),
            (
                "valid_http_versions: [HTTP/3]",
                "1:23: http.valid_http_versions[0]: unknown HTTP version \"HTTP/3\"",
            ),
            (
                "preferred_ip_protocol: ipv4",
                "1:24: http.preferred_ip_protocol: unknown IP protocol \"ipv4\"; expected ip4 or ip6",
            ),
            (
                "fail_if_ssl: maybe",
                "1:14: http.fail_if_ssl: expected true or false, found the string \"maybe\"",
            ),
            (
                "method: 'GE T'",
                "1:9: http.method: \"GE T\" is not a valid HTTP method",
            ),
            (
                "headers:\n  'X Y': 1",
                "2:3: http.headers: \"X Y\" is not a valid header name",
            ),
            (
                "headers:\n  A: \"x\\ny\"",
                "2:6: http.headers.A: a header value must not contain line breaks",
            ),
            (
                "headers:\n  Host: a\n  host: b",
                "3:3: http.headers: header \"host\" is set twice (header names ignore case; first at line 2, column 3)",
            ),
            (
                "fail_if_body_matches_regexp: ['(']",
                "1:31: http.fail_if_body_matches_regexp[0]: invalid regular expression \"(\": unclosed group",
            ),
            (
                "fail_if_body_matches_regexp: ['a{1000}{1000}']",
                "http.fail_if_body_matches_regexp[0]: invalid regular expression \"a{1000}{1000}\": it compiles to more than the 1024 KiB allowed",
            ),
            (
                "fail_if_header_matches: [{regexp: x}]",
                "1:26: http.fail_if_header_matches[0]: the key `header` is required",
            ),
            (
                "fail_if_header_matches: [{header: A, regexp: x, bogus: 1}]",
                "1:49: http.fail_if_header_matches[0]: unknown key `bogus`",
            ),
            (
                "compression: zstd",
                "1:14: http.compression: unknown compression \"zstd\"",
            ),
            (
                "body_size_limit: 1mb",
                "1:18: http.body_size_limit: unknown unit \"mb\" in size \"1mb\"",
            ),
            (
                "bogus: 1",
                "1:1: http: unknown key `bogus`; the keys allowed here are: valid_status_codes,",
            ),
            (
                "body_file: /x",
                "1:1: http.body_file: this option is not supported by probermesh",
            ),
            (
                "http_client_config:\n  authorization: {type: Bearer}",
                "2:3: http.http_client_config.authorization: this option is not supported by probermesh; use bearer_token",
            ),
            (
                "http_client_config:\n  oauth2: {}",
                "2:3: http.http_client_config.oauth2: this option is not supported by probermesh",
            ),
            (
                "http_client_config:\n  no_proxy: x",
                "2:3: http.http_client_config.no_proxy: this option is not supported by probermesh",
            ),
            (
                "http_client_config:\n  proxy_from_environment: true",
                "2:3: http.http_client_config.proxy_from_environment: this option is not supported by probermesh",
            ),
            (
                "http_client_config:\n  proxy_connect_header: {}",
                "2:3: http.http_client_config.proxy_connect_header: this option is not supported by probermesh",
            ),
            (
                "http_client_config:\n  http_headers: {}",
                "2:3: http.http_client_config.http_headers: this option is not supported by probermesh",
            ),
            (
                "http_client_config:\n  tls_config:\n    max_version: TLS13",
                "3:5: http.http_client_config.tls_config.max_version: this option is not supported by probermesh",
            ),
            (
                "http_client_config:\n  tls_config:\n    min_version: TLS11",
                "3:18: http.http_client_config.tls_config.min_version: TLS11 is not supported by probermesh",
            ),
            (
                "http_client_config:\n  tls_config:\n    min_version: SSL3",
                "3:18: http.http_client_config.tls_config.min_version: unknown TLS version \"SSL3\"",
            ),
            (
                "http_client_config:\n  tls_config:\n    cert_file: /c",
                "3:5: http.http_client_config.tls_config: cert_file is set without key_file",
            ),
            (
                "http_client_config:\n  tls_config:\n    key_file: /k",
                "3:5: http.http_client_config.tls_config: key_file is set without cert_file",
            ),
            (
                "http_client_config:\n  proxy_url: https://p",
                "2:3: http.http_client_config.proxy_url: \"https://p\" is not supported: only http:// proxies",
            ),
            (
                "http_client_config:\n  proxy_url: http://",
                "2:3: http.http_client_config.proxy_url: \"http://\" is not a valid proxy URL: the host is empty",
            ),
            (
                "http_client_config:\n  bearer_token: a\n  bearer_token_file: b",
                "3:3: http.http_client_config: set at most one of bearer_token and bearer_token_file",
            ),
            (
                "http_client_config:\n  basic_auth: {username: u}\n  bearer_token: a",
                "2:3: http.http_client_config: set at most one of basic_auth, bearer_token and bearer_token_file",
            ),
            (
                "http_client_config:\n  basic_auth: {password: p}",
                "2:15: http.http_client_config.basic_auth: the key `username` is required",
            ),
            (
                "http_client_config:\n  basic_auth: {username: u, password: p, password_file: f}",
                "2:42: http.http_client_config.basic_auth: set at most one of password and password_file",
            ),
        ] {
            let text = message(yaml);
            assert!(
                text.contains(expected),
                "{yaml:?}\n  got:      {text}\n  expected: {expected}"
            );
        }
    }

    #[test]
    fn secrets_are_kept_as_secrets() {
        let m = module("http_client_config:\n  basic_auth: {username: u, password: hunter2}\n")
            .unwrap();
        let auth = m.client.basic_auth.unwrap();
        assert_eq!(
            auth.password,
            Some(SecretSource::Inline(Secret::new("hunter2".into())))
        );
        assert!(!format!("{auth:?}").contains("hunter2"));
    }
}
