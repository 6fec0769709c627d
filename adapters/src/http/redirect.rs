//! Following redirects as Go's client (and so blackbox_exporter) does: at most 10 hops, the
//! `Location` resolved against the current URL, 301/302/303 turning a non-GET/HEAD request
//! into a GET without body, 307/308 keeping method and body, and credentials dropped when the
//! redirect leaves the host.

use probermesh_core::model::HttpUrl;
use probermesh_core::model::target::Scheme;

/// Most redirects followed before the probe fails with `too many redirects`.
pub(crate) const MAX_REDIRECTS: u32 = 10;

/// Whether `status` is a redirect we follow.
pub(crate) fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// The method (and whether the body is kept) after a redirect with `status`.
pub(crate) fn method_after(status: u16, method: &str) -> (String, bool) {
    match status {
        307 | 308 => (method.to_owned(), true),
        303 if method != "HEAD" => ("GET".to_owned(), false),
        301 | 302 if method != "GET" && method != "HEAD" => ("GET".to_owned(), false),
        _ => (method.to_owned(), false),
    }
}

/// Resolves `location` against `base`. `None` when it is not a usable http(s) URL.
pub(crate) fn resolve(base: &HttpUrl, location: &str) -> Option<HttpUrl> {
    let location = location.trim();
    if location.is_empty() {
        return None;
    }
    let lower = location.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return HttpUrl::parse(location).ok();
    }
    if lower.contains("://") {
        return None;
    }
    let origin = format!("{}://{}", base.scheme.as_str(), authority(base));
    if let Some(rest) = location.strip_prefix("//") {
        return HttpUrl::parse(&format!("{}://{rest}", base.scheme.as_str())).ok();
    }
    let path = if location.starts_with('/') {
        location.to_owned()
    } else if location.starts_with('?') {
        let path = base.path_and_query.split('?').next().unwrap_or("/");
        format!("{path}{location}")
    } else {
        let path = base.path_and_query.split('?').next().unwrap_or("/");
        let directory = path.rsplit_once('/').map_or("", |(dir, _)| dir);
        format!("{directory}/{location}")
    };
    HttpUrl::parse(&format!("{origin}{path}")).ok()
}

fn authority(url: &HttpUrl) -> String {
    let default = match url.scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    };
    let host = url.host_header();
    if url.explicit_port || url.port == default {
        host
    } else {
        format!("{host}:{}", url.port)
    }
}

/// Whether credentials may follow a redirect from `from` to `to` (same host).
pub(crate) fn same_host(from: &HttpUrl, to: &HttpUrl) -> bool {
    from.host == to.host
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> HttpUrl {
        HttpUrl::parse(s).unwrap()
    }

    #[test]
    fn locations_resolve_like_a_browser() {
        let base = url("http://a.lab:8080/x/y?q=1");
        assert_eq!(resolve(&base, "/z").unwrap(), url("http://a.lab:8080/z"));
        assert_eq!(resolve(&base, "w").unwrap(), url("http://a.lab:8080/x/w"));
        assert_eq!(
            resolve(&base, "?p=2").unwrap(),
            url("http://a.lab:8080/x/y?p=2")
        );
        assert_eq!(
            resolve(&base, "https://b.lab/").unwrap(),
            url("https://b.lab/")
        );
        assert_eq!(resolve(&base, "//c.lab/p").unwrap(), url("http://c.lab/p"));
        assert!(resolve(&base, "ftp://x/").is_none());
        assert!(resolve(&base, "").is_none());
    }

    #[test]
    fn methods_change_as_in_go() {
        assert_eq!(method_after(302, "POST"), ("GET".into(), false));
        assert_eq!(method_after(303, "PUT"), ("GET".into(), false));
        assert_eq!(method_after(307, "POST"), ("POST".into(), true));
        assert_eq!(method_after(301, "HEAD"), ("HEAD".into(), false));
        assert!(is_redirect(308) && !is_redirect(304));
    }
}
